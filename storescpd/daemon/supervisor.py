"""The arbiter: single-threaded, owns the listening sockets, never speaks DICOM.

It accepts connections but hands each to a worker only once the peer has sent something
(the A-ASSOCIATE-RQ, or a TLS ClientHello): idle TCP connections cost one descriptor here
and are closed after the ACSE timeout, so they can never occupy the workers a real peer
needs. Workers report events; the supervisor keeps the association table and the counters,
answers their questions (admission, studies) and the control socket, and reaps every child.
"""

from __future__ import annotations

import errno
import logging
import os
import select
import selectors
import signal
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from storescpd.dicom import engine
from storescpd.daemon import ipc
from storescpd.config.settings import SETTINGS, Config, ConfigError
from storescpd.config.logs import setup_logging
from storescpd.store.storage import STAGING_DIR_NAME
from storescpd.daemon.systemd import notify, reloading, watchdog_interval
from storescpd.daemon.worker import WORKER_BOOT_ERROR, start_worker
from storescpd.messages import Ask, Event

LOG = logging.getLogger("storescpd.supervisor")

TICK_SECONDS = 0.5
HANDLED_SIGNALS = ("SIGTERM", "SIGINT", "SIGQUIT", "SIGHUP", "SIGCHLD", "SIGTTIN", "SIGTTOU")
CRASH_WINDOW_SECONDS = 10.0
INTERNAL_ERROR_LIMIT, INTERNAL_ERROR_WINDOW = 20, 10  # errors, seconds: then the supervisor gives up
MAX_PENDING = 512  # silent connections held at once; past this the oldest is closed
# A plain DICOM connection goes to a worker once its whole A-ASSOCIATE-RQ has arrived (or this much
# of it): a peer that sends its request a byte at a time waits here, not in a worker.
REQUEST_PEEK = 64 << 10
CRASH_LIMIT = 10  # worker deaths without any association served in the window: stop re-forking
EXIT_OK = 0
EXIT_FAILURE = 1


@dataclass
class Child:
    pid: int
    kind: str  # "worker" (pool), "fork" (one association) or "hook"/"api"
    generation: int
    channel: socket.socket | None = None
    busy: bool = False
    retiring: bool = False  # reached --max-requests or told to stop: takes no more connections
    served: int = 0
    started: float = field(default_factory=time.time)
    association: str | None = None
    output_directory: str = ""  # -od when it was forked: where its staging files are


def is_restart(supervisor: Any, child: Child, code: int) -> bool:
    """A pool worker of the running generation that ended on its own: not a reload, a stop,
    a boot failure, nor recycling (--max-requests, or retired as surplus: exit 0)."""
    return (child.kind == "worker" and not supervisor.stopping and child.generation == supervisor.generation
            and code != WORKER_BOOT_ERROR and not (child.retiring and code == 0))


@dataclass
class Pending:
    sock: socket.socket
    role: str
    since: float


@dataclass
class AssociationInfo:
    id: str
    worker_pid: int
    peer: str
    started: float
    calling_ae: str = ""
    called_ae: str = ""
    state: str = "negotiating"
    objects_received: int = 0
    bytes_received: int = 0
    last_sop_class: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.id, "peer": self.peer, "calling_ae": self.calling_ae, "called_ae": self.called_ae,
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(self.started)),
            "worker_pid": self.worker_pid, "state": self.state, "objects_received": self.objects_received,
            "bytes_received": self.bytes_received, "last_sop_class": self.last_sop_class,
        }


def _peer_closed(sock: socket.socket) -> bool:
    """Whether the peer has shut its side down (end of file) or the connection failed; data may
    still be queued, so a peeking read cannot tell."""
    poller = select.poll()
    poller.register(sock, select.POLLRDHUP)
    return any(events & (select.POLLRDHUP | select.POLLHUP | select.POLLERR) for _fd, events in poller.poll(0))


class Supervisor:
    def __init__(self, config: Config, argv: Sequence[str], listeners: dict[str, list[socket.socket]],
                 reload_config: Callable[[], Config] | None = None) -> None:
        self.config = config
        self.argv = list(argv)
        self.listeners = listeners
        self.reload_config = reload_config or self._load_from_argv
        self.mode = config.process_mode
        self.generation = 0
        self.children: dict[int, Child] = {}
        self.pending: dict[int, Pending] = {}
        self.ready_queue: list[Pending] = []
        self.associations: dict[str, AssociationInfo] = {}
        self.counters: dict[str, int] = {}
        self.signal_queue: list[int] = []
        self.stopping: str | None = None  # "graceful" or "quick"
        self.stop_deadline = 0.0
        self.crashes: list[float] = []
        self.boot_failed = False
        self.started = time.time()
        self.config_loaded = time.time()
        self.last_reload: dict[str, Any] = {"result": None, "message": "", "time": None}
        self.selector = selectors.DefaultSelector()
        self.event_hooks: list[Callable[[str, dict[str, Any], Child], None]] = []
        self.ask_handlers: dict[str, Callable[[dict[str, Any], Child], Any]] = {Ask.ADMIT: self._ask_admit}
        self.tick_hooks: list[Callable[[float], None]] = []  # called every turn of the loop with time.time()
        self._assoc_serial = 0
        self._wakeup_r, self._wakeup_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._next_watchdog = 0.0

    # ---- main loop -------------------------------------------------------
    def run(self) -> int:
        self._install_signals()
        for role, socks in self.listeners.items():
            for sock in socks:
                sock.setblocking(False)
                self.selector.register(sock, selectors.EVENT_READ, ("listener", role))
        self.selector.register(self._wakeup_r, selectors.EVENT_READ, ("wakeup", None))
        engine.prepare(self.config)
        self.manage_workers()
        addresses = ", ".join(f"{role} {s.getsockname()}" for role, socks in self.listeners.items() for s in socks)
        LOG.info("listening on %s (%s mode)", addresses, self.mode)
        notify("READY=1", f"STATUS={self.status_line()}", f"MAINPID={os.getpid()}")
        return self.loop()

    def loop(self) -> int:
        errors: list[float] = []
        while True:
            try:
                code = self.turn()
            except Exception:
                # A bug of ours in one turn must not take the running associations down with the
                # supervisor; a bug that repeats every turn must not spin either.
                LOG.exception("internal error in the supervisor (continuing)")
                now = time.monotonic()
                errors = [t for t in errors if t > now - INTERNAL_ERROR_WINDOW] + [now]
                if len(errors) < INTERNAL_ERROR_LIMIT:
                    continue
                LOG.critical("%d internal errors within %d s: stopping", len(errors), INTERNAL_ERROR_WINDOW)
                self.stop_all(signal.SIGKILL)
                return EXIT_FAILURE
            if code is not None:
                return code

    def turn(self) -> int | None:
        """One turn of the loop; the exit code once the daemon is done."""
        self.wait_for_events()
        self.handle_signals()
        self.reap_children()
        if self.boot_failed:
            LOG.error("a worker could not start; stopping instead of re-forking (see the messages above)")
            self.stop_all(signal.SIGKILL)
            return EXIT_FAILURE
        if self.stopping and self.drained():
            notify("STATUS=stopped")
            LOG.info("stopped")
            return EXIT_OK
        self.expire_pending()
        self.dispatch_ready()
        self.manage_workers()
        self.keepalive()
        now = time.time()
        for tick in self.tick_hooks:
            tick(now)
        return None

    def wait_for_events(self) -> None:
        for key, _mask in self.selector.select(TICK_SECONDS):
            kind, data = key.data
            if kind == "listener":
                self.accept(key.fileobj, data)  # type: ignore[arg-type]
            elif kind == "pending":
                self.connection_readable(key.fileobj)  # type: ignore[arg-type]
            elif kind == "child":
                self.read_child(data)
            elif kind == "wakeup":
                self._drain_wakeup()
            elif callable(data):
                data(key.fileobj)

    # ---- signals: handlers only enqueue; the loop dispatches handle_<name> ---
    def _install_signals(self) -> None:
        for name in HANDLED_SIGNALS:
            signal.signal(getattr(signal, name), self._enqueue_signal)
        signal.set_wakeup_fd(self._wakeup_w, warn_on_full_buffer=False)

    def _enqueue_signal(self, signum: int, frame: Any) -> None:
        if len(self.signal_queue) < 20:
            self.signal_queue.append(signum)

    def _drain_wakeup(self) -> None:
        try:
            while os.read(self._wakeup_r, 512):
                pass
        except BlockingIOError:
            pass

    def handle_signals(self) -> None:
        while self.signal_queue:
            signum = self.signal_queue.pop(0)
            handler = getattr(self, "handle_" + signal.Signals(signum).name[3:].lower(), None)
            if handler:
                handler()

    def handle_chld(self) -> None:
        pass  # reap_children runs every turn of the loop

    def handle_ttin(self) -> None:
        self.config = self.config.replace(workers=self.config.workers + 1)

    def handle_ttou(self) -> None:
        self.config = self.config.replace(workers=max(1, self.config.workers - 1))

    def handle_term(self) -> None:
        self.begin_stop("graceful")

    def handle_int(self) -> None:
        self.begin_stop("quick")

    def handle_quit(self) -> None:
        self.begin_stop("quick")

    def handle_hup(self) -> None:
        self.reload()

    # ---- stopping ----------------------------------------------------------
    def begin_stop(self, how: str) -> None:
        if self.stopping == "quick" or self.stopping == how:
            return
        self.stopping = how
        self.stop_deadline = time.monotonic() + (self.config.graceful_timeout if how == "graceful" else 0)
        notify("STOPPING=1", f"STATUS=stopping ({how}), {len(self.associations)} associations running")
        LOG.info("stopping (%s): %d associations running", how, len(self.associations))
        for role, socks in self.listeners.items():
            for sock in socks:
                self.selector.unregister(sock)
                sock.close()
        self.listeners = {}
        for p in list(self.pending.values()) + self.ready_queue:
            self._drop_pending(p)
        self.ready_queue = []
        sig = signal.SIGTERM if how == "graceful" else signal.SIGINT
        self.stop_all(sig)

    def stop_all(self, sig: int) -> None:
        for child in list(self.children.values()):
            if child.kind in ("worker", "fork", "api"):
                self._kill(child.pid, sig)

    def drained(self) -> bool:
        live = [c for c in self.children.values() if c.kind in ("worker", "fork", "api")]
        if not live:
            return True
        if time.monotonic() >= self.stop_deadline:
            if self.stopping == "graceful" and any(c.busy for c in live):
                LOG.warning("graceful timeout: aborting %d running associations", sum(c.busy for c in live))
            for child in live:
                self._kill(child.pid, signal.SIGKILL)
            self.stop_deadline = time.monotonic() + 5
        return False

    # ---- connections ---------------------------------------------------------
    def accept(self, listener: socket.socket, role: str) -> None:
        for _ in range(64):
            try:
                conn, _addr = listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                if exc.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    # Out of descriptors: make room by closing the oldest silent connection,
                    # rather than spinning on a listener that stays readable.
                    LOG.error("cannot accept a connection: %s", exc.strerror)
                    self._drop_oldest_pending()
                    return
                raise
            conn.setblocking(False)
            if len(self.pending) >= MAX_PENDING:
                self._drop_oldest_pending()
            pending = Pending(conn, role, time.monotonic())
            self.pending[conn.fileno()] = pending
            self.selector.register(conn, selectors.EVENT_READ, ("pending", None))

    def _drop_oldest_pending(self) -> None:
        if self.pending:
            oldest = min(self.pending.values(), key=lambda p: p.since)
            LOG.warning("%d connections wait silently for their association request: closing the oldest",
                        len(self.pending))
            self._close_silent(oldest)

    def connection_readable(self, conn: socket.socket) -> None:
        pending = self.pending.get(conn.fileno())
        if pending is None or pending.sock is not conn:
            return  # closed earlier in this batch of events (the oldest silent one, dropped for room)
        if pending.role == "dicom" and not self._request_arrived(pending):
            return
        del self.pending[conn.fileno()]
        self.selector.unregister(conn)
        self.ready_queue.append(pending)

    def _request_arrived(self, p: Pending) -> bool:
        """Whether the connection's first PDU is all here (peeked, not read). Until it is, the
        socket's receive low-water mark makes it readable only once the rest can be."""
        try:
            head = p.sock.recv(REQUEST_PEEK, socket.MSG_PEEK)
        except (BlockingIOError, InterruptedError):
            return False
        except OSError:
            head = b""
        if not head:  # closed (or reset) before sending a request: nothing for a worker to do
            self._drop_pending(p)
            return False
        if head[0] != engine.PDU_ASSOCIATE_RQ:
            return True  # not an association request: the worker answers it with an A-ABORT now
        announced = int.from_bytes(head[2:6], "big") if len(head) >= 6 else 0
        if announced > engine.MAX_ASSOCIATE_PDU:
            return True  # a request too large to accept: the worker aborts it now
        needed = 6 if len(head) < 6 else min(6 + announced, REQUEST_PEEK)
        complete = len(head) >= needed
        if not complete and _peer_closed(p.sock):
            # Part of a request, then end of file: the rest can never come, and the socket would
            # stay readable (and the loop spin on it) until the ACSE timeout.
            LOG.info("closing a connection that ended inside its association request (%d bytes)", len(head))
            self._drop_pending(p)
            return False
        try:
            p.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT, 1 if complete else needed)
        except OSError:
            return True  # cannot wait for the rest here: the worker's deadline still bounds it
        return complete

    def expire_pending(self) -> None:
        limit = time.monotonic() - self.config.acse_timeout
        for p in [p for p in self.pending.values() if p.since < limit]:
            LOG.info("closing a connection that sent no association request within %d s", self.config.acse_timeout)
            self._close_silent(p)

    def _close_silent(self, p: Pending) -> None:
        self.count("connections_timed_out")
        for hook in self.event_hooks:
            hook(Event.CONNECTION_TIMED_OUT, {}, None)  # type: ignore[arg-type]
        self._drop_pending(p)

    def _drop_pending(self, p: Pending) -> None:
        if self.pending.pop(p.sock.fileno(), None) is not None:
            self.selector.unregister(p.sock)
        p.sock.close()

    def dispatch_ready(self) -> None:
        while self.ready_queue:
            p = self.ready_queue[0]
            if self.mode == "fork":
                self.spawn_fork_child(p)
            else:
                idle = next((c for c in self.children.values()
                             if c.kind == "worker" and not c.busy and not c.retiring
                             and c.generation == self.generation
                             and c.channel is not None), None)  # a closed channel: it is exiting
                if idle is None:
                    return
                if not self.hand_over(idle, p):
                    continue  # that worker is gone: the connection waits for another
            self.ready_queue.pop(0)

    def hand_over(self, child: Child, p: Pending) -> bool:
        assert child.channel is not None
        try:
            ipc.send(child.channel, {"conn": {"role": p.role}}, [p.sock.fileno()])
        except OSError as exc:
            LOG.warning("cannot hand a connection to worker %d (%s): another worker takes it", child.pid, exc)
            self._retire(child)  # gone, or its channel is stuck: either way it is replaced
            return False
        child.busy = True
        p.sock.close()
        return True

    # ---- children ------------------------------------------------------------
    def manage_workers(self) -> None:
        if self.stopping or self.mode != "prefork":
            return
        current = [c for c in self.children.values()
                   if c.kind == "worker" and c.generation == self.generation and not c.retiring]
        for _ in range(self.config.workers - len(current)):
            if not self.spawn_worker():
                return
        surplus = [c for c in current if not c.busy][: max(0, len(current) - self.config.workers)]
        for child in surplus:
            self._retire(child)

    def _retire(self, child: Child) -> None:
        """Stop an idle worker: it is handed no connection from now on (it would drop it)."""
        child.retiring = True
        self._kill(child.pid, signal.SIGTERM)

    def spawn_worker(self) -> bool:
        if self._crash_looping():
            return False
        return self._fork("worker", lambda channel: start_worker(self.config, channel, self.generation,
                                                                 self.config.max_requests)) is not None

    def spawn_fork_child(self, p: Pending) -> None:
        def child_main(channel: socket.socket) -> None:
            from storescpd.daemon.worker import Worker

            worker = Worker(self.config, channel, self.generation, 1)
            worker._install_signals()
            fd = os.dup(p.sock.fileno())
            worker._serve(fd, {"role": p.role})
            os._exit(0)

        child = self._fork("fork", child_main, keep=p.sock)
        if child is not None:
            child.busy = True
        p.sock.close()

    def _fork(self, kind: str, target: Callable[[socket.socket], None], keep: socket.socket | None = None) -> Child | None:
        parent_end, child_end = ipc.channel_pair()
        try:
            pid = os.fork()
        except OSError as exc:
            LOG.error("cannot fork a %s: %s", kind, exc.strerror)
            parent_end.close()
            child_end.close()
            return None
        if pid == 0:  # child
            try:
                parent_end.close()
                self._become_child(keep)
                target(child_end)
            finally:
                os._exit(1)
        child_end.close()
        child = Child(pid, kind, self.generation, parent_end, output_directory=str(self.config.output_directory))
        self.children[pid] = child
        parent_end.setblocking(False)
        self.selector.register(parent_end, selectors.EVENT_READ, ("child", child))
        return child

    def _become_child(self, keep: socket.socket | None) -> None:
        signal.set_wakeup_fd(-1)
        for name in HANDLED_SIGNALS:
            signal.signal(getattr(signal, name), signal.SIG_DFL)
        for socks in self.listeners.values():
            for sock in socks:
                sock.close()
        for p in self.pending.values():
            if p.sock is not keep:
                p.sock.close()
        for p in self.ready_queue:
            if p.sock is not keep:
                p.sock.close()
        for child in self.children.values():
            if child.channel is not None:
                child.channel.close()
        self.selector.close()
        os.close(self._wakeup_r)
        os.close(self._wakeup_w)

    def reap_children(self) -> None:
        """One reaper for every kind of child (workers, fork children, hooks, API)."""
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            code = os.waitstatus_to_exitcode(status)
            child = self.children.pop(pid, None)
            if child is not None:
                self._drain_child(child)  # its last reports (a stored object) count before its exit
            for hook in self.event_hooks:
                hook(Event.CHILD_EXITED, {"pid": pid, "code": code}, child)  # type: ignore[arg-type]
            if child is None:
                continue
            self._child_gone(child, code)

    def _child_gone(self, child: Child, code: int) -> None:
        self._drain_child(child)
        if child.channel is not None:
            self.selector.unregister(child.channel)
            child.channel.close()
            child.channel = None
        self._remove_staging_leftovers(child)
        for assoc_id, info in list(self.associations.items()):
            if info.worker_pid == child.pid:
                LOG.warning("worker %d ended (exit %d) during the association of %s: counted as aborted",
                            child.pid, code, info.peer)
                self.associations.pop(assoc_id)
                self.count("associations_total.aborted")
        if code == WORKER_BOOT_ERROR and child.kind in ("worker", "fork"):
            self.boot_failed = True
            return
        if code != 0 and not self.stopping:
            LOG.warning("%s %d exited with %d", child.kind, child.pid, code)
            if child.served == 0 and child.kind in ("worker", "fork"):  # an API crash must not stop workers
                self.crashes.append(time.monotonic())
        if is_restart(self, child, code):
            self.count("worker_restarts")

    def _crash_looping(self) -> bool:
        horizon = time.monotonic() - CRASH_WINDOW_SECONDS
        self.crashes = [t for t in self.crashes if t > horizon]
        if len(self.crashes) >= CRASH_LIMIT:
            LOG.error("%d workers died within %d s without serving: waiting before forking again",
                      len(self.crashes), CRASH_WINDOW_SECONDS)
            return True
        return False

    def _remove_staging_leftovers(self, child: Child) -> None:
        """A dead child's partial files, in the output directory it was started with (a reload
        may have changed -od since)."""
        pid = child.pid
        staging = Path(child.output_directory or self.config.output_directory) / STAGING_DIR_NAME
        for leftover in staging.glob(f"{pid}-*.part"):
            try:
                leftover.unlink()
                LOG.info("removed %s left by worker %d", leftover.name, pid)
            except OSError:
                pass

    def _kill(self, pid: int, sig: int) -> None:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass

    # ---- worker messages -----------------------------------------------------
    def read_child(self, child: Child, limit: int = 100) -> bool:
        """Handle up to ``limit`` messages of a child (a turn of the loop serves every child);
        True if more may be waiting."""
        if child.channel is None:  # closed earlier in this turn (EOF seen while catching up)
            return False
        for _ in range(limit):
            try:
                message, fds = ipc.receive(child.channel)
            except (BlockingIOError, InterruptedError):
                return False
            except OSError:
                return False
            for fd in fds:
                os.close(fd)
            if message is None:
                self.selector.unregister(child.channel)
                child.channel.close()
                child.channel = None
                return False
            self.on_message(child, message)
        return True

    def _drain_child(self, child: Child) -> None:
        """Every report a dead child left (its channel holds a few hundred at most)."""
        while self.read_child(child, limit=1000):
            pass

    def on_message(self, child: Child, message: dict[str, Any]) -> None:
        if "ask" in message:
            handler = self.ask_handlers.get(message["ask"])
            value = handler(message, child) if handler else None
            if child.channel is not None:
                try:
                    ipc.send(child.channel, {"reply": message["id"], "value": value})
                except OSError:
                    pass
            return
        kind = message.pop("event", "")
        self.on_event(kind, message, child)

    def on_event(self, kind: str, data: dict[str, Any], child: Child) -> None:
        if kind == Event.ASSOCIATION_REQUESTED:
            self._assoc_serial += 1
            assoc_id = f"{child.pid}-{self._assoc_serial}"
            child.association = assoc_id
            self.associations[assoc_id] = AssociationInfo(
                assoc_id, child.pid, data.get("peer", ""), time.time(), data.get("calling_ae", ""),
                data.get("called_ae", ""))
        elif kind == Event.ASSOCIATION_ACCEPTED:
            info = self._info(child)
            if info:
                info.state = "established"
        elif kind == Event.STORED:
            info = self._info(child)
            if info:
                info.objects_received += 1
                info.last_sop_class = data.get("sop_class", "")
            self.count(f"objects_stored.{data.get('status', 'failure')}")
        elif kind == Event.PROGRESS:
            info = self._info(child)
            if info:
                info.bytes_received = data.get("bytes", info.bytes_received)
        elif kind == Event.ASSOCIATION_ENDED:
            outcome = data.get("outcome", "aborted")
            self.count(f"associations_total.{outcome}")
            self.count_bytes(data.get("bytes", 0))
            if child.association:
                self.associations.pop(child.association, None)
            child.association = None
        elif kind == Event.IDLE:
            child.busy = False
            child.retiring = child.retiring or bool(data.get("retiring"))
            child.served = data.get("served", child.served)
            if self.stopping or child.generation != self.generation:
                self._retire(child)
        for hook in self.event_hooks:
            hook(kind, data, child)

    def _info(self, child: Child) -> AssociationInfo | None:
        return self.associations.get(child.association or "")

    def _ask_admit(self, message: dict[str, Any], child: Child) -> str | None:
        limit = self.config.max_associations
        if limit and len(self.associations) > limit:
            self.count("associations_rejected.local_limit")
            return f"{len(self.associations) - 1} associations already running (max_associations = {limit})"
        return None

    def count(self, name: str, n: int = 1) -> None:
        self.counters[name] = self.counters.get(name, 0) + n

    def count_bytes(self, n: int) -> None:
        self.count("received_bytes", int(n or 0))

    # ---- reload --------------------------------------------------------------
    def _load_from_argv(self) -> Config:
        from storescpd.config.cmdline import load_config

        config, control = load_config(self.argv)
        if control.get("_help") or control.get("_version") or control.get("_list_ciphers"):
            raise ConfigError("the command line (or a command file in it) now asks for help, the version or "
                              "the cipher list instead of a configuration; remove that option to reload")
        return config

    def reload(self) -> dict[str, Any]:
        """nginx's reload: validate completely; on failure keep the old configuration and say why."""
        if self.stopping:
            LOG.warning("reload ignored: the daemon is stopping")
            return {"result": "failure", "message": "the daemon is stopping: nothing to reload", "time": time.time()}
        reloading()
        try:
            new = self.reload_config()
        except (ConfigError, OSError, ValueError) as exc:
            failure: str | None = str(exc) or type(exc).__name__
        except Exception as exc:  # a bug of ours must not stop a running daemon either
            LOG.exception("internal error while reading the new configuration")
            failure = f"internal error while reading the new configuration: {type(exc).__name__}: {exc}"
        else:
            failure = None
        if failure is not None:
            message = failure
            LOG.error("reload failed, keeping the running configuration: %s", message)
            self.last_reload = {"result": "failure", "message": message, "time": time.time()}
            self.count("config_reloads.failure")
            for hook in self.event_hooks:
                hook(Event.RELOAD_FAILED, {"message": message}, None)  # type: ignore[arg-type]
            notify("READY=1", f"STATUS=reload failed: {message.splitlines()[0][:200]}; {self.status_line()}")
            return self.last_reload
        fixed = [s.name for s in SETTINGS
                 if not s.reloadable and new.values.get(s.name) != self.config.values.get(s.name)]
        if fixed:
            LOG.warning("reload: %s cannot change without a restart; keeping the running value(s)", ", ".join(fixed))
            new = new.replace(**{name: self.config.values[name] for name in fixed})
        if new.log_level != self.config.log_level:
            setup_logging(new.log_level, new.log_config)  # here, and in the workers forked from now on
        self.config = new
        engine.prepare(new)
        self.generation += 1
        self.config_loaded = time.time()
        for child in list(self.children.values()):
            if child.kind == "worker" and not child.busy:
                self._retire(child)
        self.manage_workers()
        message = "configuration reloaded" + (f" ({', '.join(fixed)} need a restart)" if fixed else "")
        LOG.info(message)
        self.last_reload = {"result": "success", "message": message, "time": time.time()}
        self.count("config_reloads.success")
        for hook in self.event_hooks:
            hook(Event.RELOADED, {}, None)  # type: ignore[arg-type]
        notify("READY=1", f"STATUS={self.status_line()}")
        return self.last_reload

    # ---- status ----------------------------------------------------------------
    def status_line(self) -> str:
        workers = sum(1 for c in self.children.values() if c.kind in ("worker", "fork"))
        return ((f"stopping ({self.stopping}), " if self.stopping else "")
                + f"{len(self.associations)} associations, {workers} workers, "
                + f"{self.counters.get('objects_stored.success', 0)} objects stored")

    def keepalive(self) -> None:
        interval = watchdog_interval()
        now = time.monotonic()
        if now >= self._next_watchdog:
            notify(*(["WATCHDOG=1"] if interval else []), f"STATUS={self.status_line()}")
            self._next_watchdog = now + (interval or 5.0)
