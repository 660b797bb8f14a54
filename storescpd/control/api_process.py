"""The API process: bound and kept alive by the supervisor, exec'd as its own program.

The supervisor binds the API's socket (or inherits it from systemd) and forks + execs
``python -m storescpd.control.api`` with that one descriptor; the API asks the supervisor
everything over the control socket. An API process that exits is started again after a
backoff that doubles up to 30 s (reset once one lived 30 s); it dies with the supervisor.
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import socket
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

from storescpd.config.api_address import ApiAddress
from storescpd.daemon.listeners import bind_listener, bind_unix

if TYPE_CHECKING:
    from storescpd.daemon.supervisor import Supervisor

LOG = logging.getLogger("storescpd.control")

API_BACKOFF_FIRST = 1.0
API_BACKOFF_MAX = 30.0
API_STABLE_SECONDS = 30.0  # an API process that lived this long resets the restart backoff
API_BACKLOG = 128
UNIX_API_MODE = 0o660
PR_SET_PDEATHSIG = 1


def bind_api(address: ApiAddress) -> socket.socket:
    """The API's listening socket (TCP, or a unix socket of mode 0660), bound by the supervisor."""
    if address.unix_path is None:
        return bind_listener(address.host, address.port)
    return bind_unix(Path(address.unix_path), UNIX_API_MODE, API_BACKLOG)


class ApiProcess:
    """Keeps one API process (fork + exec of ``python -m storescpd.control.api``) alive, with backoff."""

    def __init__(self, supervisor: "Supervisor", listener: socket.socket, control_path: Path,
                 token_file: str | None, description: str) -> None:
        self.supervisor = supervisor
        self.listener = listener
        self.control_path = control_path
        self.token_file = token_file
        self.description = description
        self.pid: int | None = None
        self.started = 0.0
        self.backoff = API_BACKOFF_FIRST
        self.next_start = 0.0
        self.forking = False

    def attach(self) -> None:
        self.supervisor.tick_hooks.append(self.keep_alive)
        self.keep_alive(time.time())

    def keep_alive(self, now: float) -> None:
        sup = self.supervisor
        if sup.stopping or (self.pid is not None and self.pid in sup.children):
            return
        mono = time.monotonic()
        if self.pid is not None:  # it exited: the reaper has seen it
            self.pid = None
            if mono - self.started >= API_STABLE_SECONDS:
                self.backoff = API_BACKOFF_FIRST
            self.next_start = mono + self.backoff
            LOG.warning("the API process exited; starting another in %.0f s", self.backoff)
            self.backoff = min(API_BACKOFF_MAX, self.backoff * 2)
        if mono < self.next_start:
            return
        self.started = mono
        self.forking = True
        try:
            child = sup.fork("api", self._exec)
        finally:
            self.forking = False
        if child is None:
            self.next_start = mono + self.backoff
            return
        self.pid = child.pid
        LOG.info("API process %d serving on %s", child.pid, self.description)

    def argv(self) -> list[str]:
        level = self.supervisor.config.log_level
        # -P: never import from the working directory (the output directory may be below it).
        args = [sys.executable, "-P", "-m", "storescpd.control.api", "--fd", str(self.listener.fileno()),
                "--control", str(self.control_path), "--describe", self.description, "--log-level", level]
        if self.token_file:
            args += ["--api-token-file", self.token_file]
        for name in self.supervisor.config.api_allowed_hosts or ():
            args += ["--allowed-host", name]
        if self.supervisor.config.journal:  # the API reads the receipt journal itself
            args += ["--journal", os.path.abspath(self.supervisor.config.journal)]
        return args

    def _exec(self, channel: socket.socket) -> None:
        """In the forked child: die with the supervisor, keep only the listener, exec."""
        _die_with_parent()
        os.set_inheritable(self.listener.fileno(), True)
        os.execv(sys.executable, self.argv())


def _die_with_parent() -> None:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    except (OSError, AttributeError):
        pass  # the API also polls its parent
