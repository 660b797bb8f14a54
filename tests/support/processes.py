"""Ports, processes and bounded waits on what they show."""

from __future__ import annotations

import socket
import subprocess
import time
from typing import Callable, TypeVar

T = TypeVar("T")


def free_port() -> int:
    """A loopback port nobody listens on right now (for peers that cannot be handed a socket)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(condition: Callable[[], T], timeout: float, what: str | Callable[[], str],
               interval: float = 0.05) -> T:
    """Poll `condition` until it returns something true and return that; after `timeout` s fail naming
    `what` (a callable is asked then, e.g. for the daemon's log as it is at the failure)."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"not within {timeout:g} s: {what() if callable(what) else what}")
        time.sleep(interval)


def wait_listening(port: int, timeout: float = 10.0) -> None:
    """Wait until something accepts TCP connections on 127.0.0.1:port (e.g. systemd-socket-activate)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    raise AssertionError(f"nothing is listening on 127.0.0.1:{port} after {timeout:.0f} s")


def stop_process(proc: subprocess.Popen, timeout: float = 15.0) -> None:
    """SIGTERM, then SIGKILL if it does not end in time; always reaped."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def children_of(pid: int) -> list[int]:
    """The PIDs whose parent is `pid` (the daemon's workers, API process and hook runners)."""
    out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True, text=True).stdout
    return [int(x) for x in out.split()]
