"""Shared test harness: run storescpd the way systemd does (fd 3 + NOTIFY_SOCKET) and real peers."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator, Sequence

import pydicom
import pytest

ROOT = Path(__file__).resolve().parent.parent
VENV_BIN = Path(sys.executable).parent
STORESCPD = str(VENV_BIN / "storescpd")
DCMTK = Path("/usr/bin")
TEST_FILES = Path(pydicom.__file__).parent / "data" / "test_files"
PEER_ENV = {**os.environ, "TCP_NODELAY": "1"}

# Adopt a listening socket as fd 3 with LISTEN_PID set to the exec'd process, as systemd does.
_FD3_EXEC = (
    "import os,sys; os.dup2(int(sys.argv[1]), 3); os.environ['LISTEN_PID'] = str(os.getpid()); "
    "os.execv(sys.argv[2], sys.argv[2:])"
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


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


class NotifyListener:
    """A test NOTIFY_SOCKET: collects what the daemon tells systemd."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.messages: list[str] = []

    def wait_for(self, field: str, timeout: float = 20.0, after: str | None = None) -> list[str]:
        """Wait until `field` was sent (after the last message carrying `after`, if given)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            start = 0
            if after is not None:
                marks = [i for i, m in enumerate(self.messages) if after in m.split("\n")]
                start = marks[-1] + 1 if marks else len(self.messages)
                if marks and field in self.messages[marks[-1]].split("\n")[1:]:
                    return self.messages
            if any(field in m.split("\n") for m in self.messages[start:]):
                return self.messages
            self.sock.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                self.messages.append(self.sock.recv(4096).decode())
            except socket.timeout:
                break
        raise AssertionError(f"no {field} from the daemon within {timeout} s; got {self.messages}")

    def drain(self, timeout: float = 0.2) -> list[str]:
        if self.sock.fileno() < 0:
            return self.messages
        self.sock.settimeout(timeout)
        try:
            while True:
                self.messages.append(self.sock.recv(4096).decode())
        except socket.timeout:
            pass
        return self.messages

    def close(self) -> None:
        self.sock.close()


class Daemon:
    """storescpd on an ephemeral loopback port, handed over as systemd would."""

    def __init__(self, workdir: Path, args: Sequence[str], output: Path | None = None, od: bool = True) -> None:
        self.od = od
        self.workdir = workdir
        self.output = output or workdir / "out"
        self.output.mkdir(parents=True, exist_ok=True)
        self.args = list(args)
        self.proc: subprocess.Popen[bytes] | None = None
        self.port = 0
        self.notify = NotifyListener(workdir / f"notify-{id(self)}.sock")
        self.stderr_path = workdir / f"daemon-{id(self)}.log"

    def start(self, ready: bool = True, extra_env: dict[str, str] | None = None) -> "Daemon":
        listener = socket.socket()
        listener.bind(("127.0.0.1", 0))
        listener.listen(64)
        self.port = listener.getsockname()[1]
        env = {**os.environ, "LISTEN_FDS": "1", "LISTEN_FDNAMES": "dicom",
               "NOTIFY_SOCKET": str(self.notify.path), **(extra_env or {})}
        argv = [sys.executable, "-c", _FD3_EXEC, str(listener.fileno()), STORESCPD,
                *(["-od", str(self.output)] if self.od else []), *self.args]
        with open(self.stderr_path, "wb") as err:
            self.proc = subprocess.Popen(argv, env=env, pass_fds=(listener.fileno(),), stderr=err,
                                         stdout=subprocess.DEVNULL, stdin=subprocess.DEVNULL, cwd=self.workdir)
        listener.close()
        if ready:
            self.notify.wait_for("READY=1")
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def log(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> int:
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.notify.drain(0.05)
        self.notify.close()
        return self.proc.returncode

    def stored_files(self) -> list[Path]:
        return sorted(p for p in self.output.rglob("*") if p.is_file() and ".storescpd-staging" not in p.parts)


@pytest.fixture
def daemon_factory(tmp_path: Path) -> Iterator:
    started: list[Daemon] = []

    def make(*args: str, output: Path | None = None, ready: bool = True,
             env: dict[str, str] | None = None, od: bool = True) -> Daemon:
        d = Daemon(tmp_path, args, output=output, od=od)
        started.append(d)
        return d.start(ready=ready, extra_env=env)

    yield make
    for d in started:
        d.stop(signal.SIGKILL)


def stop_process(proc: subprocess.Popen, timeout: float = 15.0) -> None:
    """SIGTERM, then SIGKILL if it does not end in time; always reaped."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def storescu(port: int, files: Sequence[Path | str], *args: str, timeout: float = 120.0,
             host: str = "127.0.0.1") -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(DCMTK / "storescu"), *args, host, str(port), *map(str, files)],
                          capture_output=True, text=True, timeout=timeout, env=PEER_ENV)


def echoscu(port: int, *args: str, timeout: float = 30.0, host: str = "127.0.0.1") -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(DCMTK / "echoscu"), *args, host, str(port)],
                          capture_output=True, text=True, timeout=timeout, env=PEER_ENV)


class DcmtkStorescp:
    """DCMTK's own storescp with the same flags: the reference for differential tests."""

    def __init__(self, workdir: Path, args: Sequence[str]) -> None:
        self.output = workdir / "dcmtk-out"
        self.output.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.log_path = workdir / "dcmtk-storescp.log"
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen([str(DCMTK / "storescp"), "-od", str(self.output), *args, str(self.port)],
                                         stdout=log, stderr=subprocess.STDOUT, env=PEER_ENV, cwd=workdir)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if echoscu(self.port).returncode == 0:
                return
            time.sleep(0.05)
        self.stop()
        raise AssertionError("DCMTK storescp did not start")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)

    def stored_files(self) -> list[Path]:
        return sorted(p for p in self.output.rglob("*") if p.is_file())


@pytest.fixture
def dcmtk_storescp(tmp_path: Path) -> Iterator:
    started: list[DcmtkStorescp] = []

    def make(*args: str) -> DcmtkStorescp:
        s = DcmtkStorescp(tmp_path, args)
        started.append(s)
        return s

    yield make
    for s in started:
        s.stop()


def require_dcmtk() -> None:
    if not (DCMTK / "storescu").exists():
        pytest.fail("DCMTK is not installed: apt-get install dcmtk (.ci/run does this)")


def copy_test_file(name: str, dest: Path) -> Path:
    dest.mkdir(parents=True, exist_ok=True)
    target = dest / name
    shutil.copy(TEST_FILES / name, target)
    return target
