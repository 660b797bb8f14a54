"""storescpd run the way systemd runs it: the listening socket as fd 3 and a test NOTIFY_SOCKET."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Sequence

from tests.support.paths import STORESCPD
from tests.support.processes import wait_until

# Adopt a listening socket as fd 3 with LISTEN_PID set to the exec'd process, as systemd does.
_FD3_EXEC = (
    "import os,sys; os.dup2(int(sys.argv[1]), 3); os.environ['LISTEN_PID'] = str(os.getpid()); "
    "os.execv(sys.argv[2], sys.argv[2:])"
)


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
        """Every message that arrives until none has come for `timeout` s."""
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
        """Start it on a fresh listening socket; with `ready`, return once it sent READY=1."""
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

    @property
    def staging(self) -> Path:
        """Where data sets being received are written (``<worker pid>-<n>-<attempt>.part``)."""
        return self.output / ".storescpd-staging"

    def partial_files(self) -> list[Path]:
        """The data sets being received right now (or left behind by a worker that died)."""
        return sorted(self.staging.glob("*.part"))

    def wait_for_transfer(self, timeout: float = 10.0) -> list[Path]:
        """Return once a data set is being received: its staging file exists (the C-STORE began)."""
        return wait_until(self.partial_files, timeout, f"a transfer in progress (a .part file in {self.staging})")

    def wait_no_partial_files(self, timeout: float = 10.0) -> None:
        """Return once no staging file is left (a dropped transfer is cleaned up asynchronously)."""
        wait_until(lambda: not self.partial_files(), timeout, f"no .part file left in {self.staging}")

    def log(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def wait_for_log(self, text: str, timeout: float = 10.0) -> str:
        """The log once it contains `text`; fail with the log if it does not within `timeout` s."""
        def log_with_text() -> str:
            log = self.log()
            return log if text in log else ""

        return wait_until(log_with_text, timeout, lambda: f"{text!r} in the daemon log:\n{self.log()}")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> int:
        """Signal it, wait for its exit (SIGKILL after `timeout` s) and return its exit status."""
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
