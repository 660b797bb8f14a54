"""Entry point after configuration: pick the process mode and serve."""

from __future__ import annotations

import functools
import logging
import os
import select
import signal
import socket
import stat
import sys
import threading
import time
from typing import Any, Sequence

from storescpd.store import journal, studies
from storescpd.store.study_service import SupervisorStudies
from storescpd.dicom import tls
from storescpd.config.cmdline import load_config
from storescpd.config.settings import Config, ConfigError
from storescpd.daemon.listeners import bind_listener, inherited_sockets
from storescpd.daemon.scp import serve_association
from storescpd.daemon.systemd import notify, take_notify_socket, watchdog_interval
from storescpd.messages import Event

LOG = logging.getLogger("storescpd")


def run(config: Config, argv: Sequence[str]) -> int:
    take_notify_socket()
    if config.inetd:
        studies.use_local(config)
        with journal.local(config):  # with a journal: its writer is a thread of this process
            return run_inetd(config)
    inherited = inherited_sockets()
    if "connection" in inherited:
        studies.use_local(config)
        with journal.local(config):
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
        with journal.local(config):
            return run_single(config, listeners)
    # Imported only here: the single-process and --inetd modes (a process per connection) never load them.
    from storescpd.control.plane import ControlPlane
    from storescpd.daemon import ipc
    from storescpd.daemon.supervisor import Supervisor

    supervisor = Supervisor(config, listeners, reload_config=functools.partial(reload_config, argv))
    SupervisorStudies(supervisor)  # study state spans workers and associations
    journal.install(supervisor, ipc.WorkerChannel)  # a writer child; workers spool receipts
    try:
        ControlPlane(supervisor, api_sockets[0] if api_sockets else None).attach()
    except ConfigError as exc:
        LOG.critical("%s", exc)
        return 1
    return supervisor.run()


def reload_config(argv: Sequence[str]) -> Config:
    """The configuration a reload applies: the same command line (and so the same file) read
    again, through the same validation."""
    config, control = load_config(argv)
    if control.get("_help") or control.get("_version") or control.get("_list_ciphers"):
        raise ConfigError("the command line (or a command file in it) now asks for help, the version or "
                          "the cipher list instead of a configuration; remove that option to reload")
    return config


def run_inetd(config: Config) -> int:
    """inetd 'nowait': the association's socket is our stdin (and usually stdout and stderr too)."""
    try:
        sock = socket.socket(fileno=os.dup(sys.stdin.fileno()))
    except OSError as exc:
        LOG.critical("--inetd: standard input is not a connected socket (%s): inetd or a systemd socket "
                     "with Accept=yes starts storescpd this way", exc.strerror)
        return 1
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


class _SingleProcess:
    """What --single-process tells systemd: STATUS, WATCHDOG=1 when asked, STOPPING=1 at once."""

    def __init__(self) -> None:
        self.associations = 0
        self.objects = 0
        self.running: Any = None  # the engine.Association being served, if any
        self.stopping = False
        self.drain_over = False  # --graceful-timeout passed: abort what runs, and what starts
        self._next_keepalive = 0.0

    def event(self, kind: str, data: dict[str, Any]) -> None:
        if kind == Event.STORED and data.get("status") == "success":
            self.objects += 1
        elif kind == Event.ASSOCIATION_ENDED:
            self.associations += 1
        self.keepalive()

    def keepalive(self, force: bool = False) -> None:
        now = time.monotonic()
        if force or now >= self._next_keepalive:
            interval = watchdog_interval()
            state = "stopping" if self.stopping else ("1 association" if self.running else "idle")
            notify(*(["WATCHDOG=1"] if interval else []),
                   f"STATUS={state}, single process, {self.associations} associations and "
                   f"{self.objects} objects served")
            self._next_keepalive = now + min(interval or 5.0, 5.0)


def _feed_watchdog(state: _SingleProcess, interval: float) -> None:
    while True:
        time.sleep(interval / 2)
        state.keepalive()


def run_single(config: Config, listeners: dict[str, list[socket.socket]]) -> int:
    """DCMTK's default: one process, one association at a time, from any DICOM listener
    (``dicom`` and, with --tls-port or a socket of that name, ``dicom-tls``).

    SIGTERM lets the running association finish, up to --graceful-timeout (then it is aborted),
    and exits 0; SIGHUP cannot reload here (there are no workers to replace) and says so instead
    of killing the process. Progress of the association keeps systemd's watchdog fed.
    """
    state = _SingleProcess()

    def stop(signum: int, frame: object) -> None:
        if not state.stopping:
            state.stopping = True
            notify("STOPPING=1")
            if signum == signal.SIGTERM:
                # Armed even between associations: a connection may be in its TLS handshake or
                # access check, with no association to abort yet. 0 means: abort at once.
                if config.graceful_timeout:
                    signal.setitimer(signal.ITIMER_REAL, config.graceful_timeout)
                else:
                    drain_expired(signum, frame)
        if signum == signal.SIGINT:
            raise KeyboardInterrupt

    def drain_expired(signum: int, frame: object) -> None:
        state.drain_over = True
        if state.running is not None:
            LOG.warning("graceful timeout (%s s): aborting the running association", config.graceful_timeout)
            state.running.abort_from_signal_handler()

    def no_reload(signum: int, frame: object) -> None:
        LOG.warning("SIGHUP ignored: reloading needs the pre-fork or --fork mode; restart to apply changes")

    def on_association(assoc: Any) -> None:
        state.running = assoc
        if state.drain_over:  # it got this far after the drain limit
            LOG.warning("graceful timeout (%s s): aborting the association", config.graceful_timeout)
            assoc.abort_from_signal_handler()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGALRM, drain_expired)
    signal.signal(signal.SIGHUP, no_reload)
    roles = {sock: role for role, socks in listeners.items() for sock in socks}
    for sock, role in roles.items():
        LOG.info("listening on %s (%s, single process)", sock.getsockname(), role)
    if config.api:
        LOG.warning("the control API (api = %s) runs only in the pre-fork and --fork modes: not started", config.api)
    notify("READY=1", "STATUS=listening, single process")
    interval = watchdog_interval()
    if interval:
        # An association may sit idle up to -ts/-td between messages; the one thread is then
        # blocked in recv. This thread keeps the watchdog fed meanwhile (it vouches for the
        # process, as the supervisor's tick does in the other modes).
        threading.Thread(target=_feed_watchdog, args=(state, interval), name="watchdog", daemon=True).start()
    try:
        while not state.stopping:
            state.keepalive()
            ready, _, _ = select.select(list(roles), [], [], 1.0)
            if not ready:
                continue
            try:
                conn, _addr = ready[0].accept()
            except OSError:  # the peer gave up before we took it (ECONNABORTED and alike)
                continue
            try:
                serve_association(conn, config, emit=state.event, on_association=on_association,
                                  role=roles[ready[0]])
            except Exception:
                LOG.exception("association failed")
            finally:
                state.running = None
    except KeyboardInterrupt:
        pass
    signal.setitimer(signal.ITIMER_REAL, 0)
    if not state.stopping:
        notify("STOPPING=1")
    return 0
