"""The control plane, wired to the supervisor: the metrics always, the control socket and the
API process when an API is configured (``api``, or a systemd socket named "api").

``ControlPlane`` builds them, checks what must hold before anything starts (a token for an API
reachable outside loopback, a run directory only we can write), closes their sockets in every
forked child and removes what it created at exit. Its parts: ``metrics`` (the one count),
``server`` (the control socket), ``status`` (what it answers), ``api_process`` (the API).
"""

from __future__ import annotations

import atexit
import os
import shutil
import socket
import stat
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from storescpd.config.api_address import ApiAddress, read_token, socket_is_loopback
from storescpd.config.settings import Config, ConfigError
from storescpd.control.api_process import ApiProcess, bind_api
from storescpd.control.metrics import Metrics
from storescpd.control.server import ControlServer

if TYPE_CHECKING:
    from storescpd.daemon.supervisor import Supervisor

CONTROL_SOCKET_NAME = "control.sock"


class ControlPlane:
    """Everything the supervisor serves besides DICOM: metrics, and with an API configured the
    control socket and the API process."""

    def __init__(self, supervisor: "Supervisor", api_listener: socket.socket | None = None) -> None:
        config: Config = supervisor.config
        self.supervisor = supervisor
        self.owner = os.getpid()
        self.metrics = Metrics(supervisor).attach()
        self.api_address = ApiAddress.parse(config.api) if config.api and api_listener is None else None
        self.api_listener: socket.socket | None = None
        self.control: ControlServer | None = None
        self.api: ApiProcess | None = None
        self.run_directory: Path | None = None
        self._temporary = False
        if api_listener is None and self.api_address is None:
            return  # no API: the metrics still count, nobody asks
        try:
            self._prepare(api_listener)
        except BaseException:
            self.close()
            raise
        os.register_at_fork(after_in_child=self._after_fork_in_child)
        atexit.register(self.close)

    def _prepare(self, api_listener: socket.socket | None) -> None:
        config: Config = self.supervisor.config
        if api_listener is None:
            assert self.api_address is not None
            try:
                api_listener = bind_api(self.api_address)
            except OSError as exc:
                raise ConfigError(f"cannot listen for the API on {self.api_address}: {exc.strerror}") from None
        self.api_listener = api_listener
        description = str(self.api_address) if self.api_address else f"inherited socket {_sockname(api_listener)}"
        if not socket_is_loopback(api_listener) and not config.api_token_file:
            raise ConfigError(f"the API socket {description} is reachable outside loopback: set "
                              "api_token_file (--api-token-file) to a file holding a bearer token")
        if config.api_token_file:
            read_token(config.api_token_file)  # fail now, not in the API process
        self.run_directory, self._temporary = _run_directory(config.run_directory)
        self.control = ControlServer(self.supervisor, self.metrics, self.run_directory / CONTROL_SOCKET_NAME)
        self.api = ApiProcess(self.supervisor, api_listener, self.control.path, config.api_token_file, description)

    def attach(self) -> "ControlPlane":
        if self.control is not None:
            self.control.attach()
        if self.api is not None:
            self.api.attach()
        return self

    def _after_fork_in_child(self) -> None:
        """Children must not hold the control plane's sockets (the API child keeps its listener)."""
        if os.getpid() == self.owner or self.control is None:
            return
        keep = self.api_listener if self.api is not None and self.api.forking else None
        for sock in self.control.sockets() + ([self.api_listener] if self.api_listener else []):
            if sock is not keep and sock.fileno() >= 0:
                sock.close()
        self.control.connections.clear()

    def close(self) -> None:
        if os.getpid() != self.owner:
            return
        if self.control is not None:
            self.control.close()
            self.control = None
        if self.api_listener is not None:
            self.api_listener.close()
            self.api_listener = None
            if self.api_address is not None and self.api_address.unix_path:
                Path(self.api_address.unix_path).unlink(missing_ok=True)
        if self._temporary and self.run_directory is not None:
            shutil.rmtree(self.run_directory, ignore_errors=True)
            self._temporary = False


def _run_directory(configured: str | None) -> tuple[Path, bool]:
    if not configured:
        return Path(tempfile.mkdtemp(prefix="storescpd-")), True
    path = Path(configured)
    try:
        path.mkdir(mode=0o750, parents=True, exist_ok=True)
        st = os.lstat(path)
    except OSError as exc:
        raise ConfigError(f"cannot create the run directory {path}: {exc.strerror} "
                          "(set run_directory to a writable place, e.g. /run/storescpd)") from None
    # Whoever can replace the control socket in it can answer for the supervisor.
    if stat.S_ISLNK(st.st_mode) or not stat.S_ISDIR(st.st_mode):
        raise ConfigError(f"the run directory {path} is not a directory (a symbolic link?): name a real one")
    if st.st_uid != os.geteuid() or st.st_mode & 0o022:
        raise ConfigError(f"the run directory {path} must belong to this user (uid {os.geteuid()}) and not be "
                          f"writable by others (it is uid {st.st_uid}, mode {stat.S_IMODE(st.st_mode):o})")
    return path, False


def _sockname(sock: socket.socket) -> str:
    name = sock.getsockname()
    if isinstance(name, tuple):
        return f"{name[0]}:{name[1]}"
    return f"unix:{name}" if name else "unix:(unnamed)"
