"""Helpers to run DCMTK storescp/storescu side by side (loopback only, processes stopped by PID)."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import pydicom

STORESCP = "/usr/bin/storescp"
STORESCU = "/usr/bin/storescu"
ECHOSCU = "/usr/bin/echoscu"
DCMDUMP = "/usr/bin/dcmdump"
PY = sys.executable  # the project venv's python: run these scripts with .venv/bin/python
TEST_FILES = str(Path(pydicom.__file__).parent / "data" / "test_files")


def free_port() -> int:
    for port in range(int(os.environ.get("PORT_BASE", "21000")), 29999):
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port")


def wait_listening(port: int, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    needle = f":{port:04X}"
    while time.monotonic() < deadline:
        with open("/proc/net/tcp") as f:
            if any(line.split()[1].endswith(needle) and line.split()[3] == "0A" for line in f if ":" in line.split()[1]):
                return
        time.sleep(0.05)
    raise RuntimeError(f"storescp did not listen on {port}")


@contextmanager
def storescp(args: list[str], port: int | None = None, log: str | None = None) -> Iterator[tuple[int, subprocess.Popen]]:
    """Start `storescp ARGS PORT`; yields (port, proc); output goes to LOG (file) if given."""
    port = port or free_port()
    out = open(log, "w") if log else subprocess.DEVNULL
    proc = subprocess.Popen([STORESCP, *args, str(port)], stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_listening(port)
        yield port, proc
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if log:
            out.close()


def run(cmd: list[str], timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
