"""Entry point after configuration: pick the process mode and serve."""

from __future__ import annotations

import logging
import os
import select
import signal
import socket
import stat
import sys
from typing import Sequence

from . import studies, tls
from .config import Config, ConfigError
from .listeners import bind_listener, inherited_sockets
from .scp import serve_association
from .systemd import notify, take_notify_socket

LOG = logging.getLogger("storescpd")


def run(config: Config, argv: Sequence[str]) -> int:
    take_notify_socket()
    if config.inetd:
        studies.use_local(config)
        return run_inetd(config)
    inherited = inherited_sockets()
    if "connection" in inherited:
        studies.use_local(config)
        serve_association(inherited["connection"][0], config)
        return 0
    listeners = {role: socks for role, socks in inherited.items() if role != "connection"}
    api_sockets = listeners.pop("api", [])  # served by the API process, not by the DICOM accept loop
    if "dicom" not in listeners:
        if config.port is None:
            LOG.critical("no port given: name the TCP port to listen on (e.g. storescpd 11112), set port in "
                         "the configuration file, or start from a systemd socket")
            return 1
        try:
            listeners["dicom"] = [bind_listener(config.bind, config.port)]
        except OSError as exc:
            LOG.critical("cannot listen on %s port %d: %s", config.bind, config.port, exc.strerror)
            return 1
    tls_port = config.values.get("tls_port")
    if tls_port and "dicom-tls" not in listeners:
        listeners["dicom-tls"] = [bind_listener(config.bind, tls_port)]
    tls.note_listeners(listeners)  # a dicom-tls listener keeps the dicom one plain
    if config.process_mode == "single":
        studies.use_local(config)  # study state and hooks in this process, as in DCMTK
        return run_single(config, listeners["dicom"][0])
    from .control import ControlPlane
    from .supervisor import Supervisor

    supervisor = Supervisor(config, argv, listeners)
    studies.SupervisorStudies(supervisor)  # study state spans workers and associations
    try:
        ControlPlane(supervisor, api_sockets[0] if api_sockets else None).attach()
    except ConfigError as exc:
        LOG.critical("%s", exc)
        return 1
    return supervisor.run()


def run_inetd(config: Config) -> int:
    """inetd 'nowait': the association's socket is our stdin (and usually stdout and stderr too)."""
    sock = socket.socket(fileno=os.dup(sys.stdin.fileno()))
    _detach_from_socket_outputs()
    serve_association(sock, config)
    return 0


def _detach_from_socket_outputs() -> None:
    """A classic inetd hands the connection over as stdin, stdout *and* stderr: a log line there
    would land in the peer's DICOM stream. As DCMTK does, discard those (use -lc to log to a file
    or syslog); stdout/stderr that are not sockets (systemd's journal, a terminal) stay."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        for fd in (1, 2):
            try:
                if stat.S_ISSOCK(os.fstat(fd).st_mode):
                    os.dup2(devnull, fd)
            except OSError:
                continue
    finally:
        os.close(devnull)


def run_single(config: Config, listener: socket.socket) -> int:
    """DCMTK's default: one process, one association at a time.

    SIGTERM lets the running association finish, then exits 0; SIGHUP cannot reload here
    (there are no workers to replace) and says so instead of killing the process.
    """
    stopping: list[int] = []

    def stop(signum: int, frame: object) -> None:
        stopping.append(signum)
        if signum == signal.SIGINT:
            raise KeyboardInterrupt

    def no_reload(signum: int, frame: object) -> None:
        LOG.warning("SIGHUP ignored: reloading needs the pre-fork or --fork mode; restart to apply changes")

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGHUP, no_reload)
    LOG.info("listening on %s (single process)", listener.getsockname())
    notify("READY=1", "STATUS=listening, single process")
    try:
        while not stopping:
            ready, _, _ = select.select([listener], [], [], 1.0)
            if not ready:
                continue
            conn, _addr = listener.accept()
            try:
                serve_association(conn, config)
            except Exception:
                LOG.exception("association failed")
    except KeyboardInterrupt:
        pass
    notify("STOPPING=1")
    return 0
