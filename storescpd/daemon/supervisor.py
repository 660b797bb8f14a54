"""The arbiter: single-threaded, owns the listening sockets, never speaks DICOM.

One turn of its loop waits on the selector, runs the queued signals (handlers only enqueue),
reaps every child, closes silent connections, hands ready ones on, keeps the pool full and tells
systemd how it is. Accepted connections wait in the pending stage (``pending``) until the peer
has sent its request; workers report events and ask questions on their channels in the words of
``storescpd.messages``. The supervisor keeps the live association table (``associations``) and no
counters: its observers (the metrics, the study service) hear every event through
``event_hooks``, answer questions through ``ask_handlers``, run each turn through ``tick_hooks``,
and add their words to the sd_notify STATUS line through ``status_hooks``.
"""

from __future__ import annotations

import functools
import logging
import os
import selectors
import signal
import socket
import time
from typing import Any, Callable, Mapping, cast

from storescpd.config.logs import setup_logging
from storescpd.config.settings import SETTINGS, Config, ConfigError
from storescpd.daemon import ipc
from storescpd.daemon.associations import AssociationTable
from storescpd.daemon.children import (STOPPED_WITH_THE_DAEMON, WORKER_KINDS, Child, Children, CrashGuard,
                                       remove_staging_leftovers, reset_signals)
from storescpd.daemon.pending import Pending, PendingConnections
from storescpd.daemon.systemd import notify, reloading, watchdog_interval
from storescpd.daemon.worker import WORKER_BOOT_ERROR, serve_one, start_worker
from storescpd.dicom import engine
from storescpd.messages import Ask, ChildExited, Event, Idle, ReloadFailed

LOG = logging.getLogger("storescpd.supervisor")

TICK_SECONDS = 0.5
HANDLED_SIGNALS = ("SIGTERM", "SIGINT", "SIGQUIT", "SIGHUP", "SIGCHLD", "SIGTTIN", "SIGTTOU")
INTERNAL_ERROR_LIMIT, INTERNAL_ERROR_WINDOW = 20, 10  # errors, seconds: then the supervisor gives up
EXIT_OK = 0
EXIT_FAILURE = 1

# An observer of every event: (what happened, its payload, the child that reported it or None).
EventHook = Callable[[Event, Mapping[str, Any], Child | None], None]
AskHandler = Callable[[Mapping[str, Any], Child], Any]  # (the question, who asks) -> the answer


class Supervisor:
    """The process that owns the listeners and every child; ``run()`` returns the exit code."""

    def __init__(self, config: Config, listeners: dict[str, list[socket.socket]],
                 reload_config: Callable[[], Config]) -> None:
        self.config = config
        self.listeners = listeners
        self.reload_config = reload_config  # the new configuration, validated (SIGHUP, the API)
        self.mode = config.process_mode
        self.generation = 0
        self.selector = selectors.DefaultSelector()
        self.children = Children(self.selector, self.on_message)
        self.pending = PendingConnections(self.selector, self._silent_connection_closed)
        self.associations = AssociationTable()
        self.crash_guard = CrashGuard()
        self.signal_queue: list[int] = []
        self.stopping: str | None = None  # "graceful" or "quick"
        self.stop_deadline = 0.0
        self.boot_failed = False
        self.started = time.time()
        self.config_loaded = time.time()
        self.last_reload: dict[str, Any] = {"result": None, "message": "", "time": None}
        self.event_hooks: list[EventHook] = []
        self.ask_handlers: dict[str, AskHandler] = {Ask.ADMIT: self._ask_admit}
        self.tick_hooks: list[Callable[[float], None]] = []  # called every turn of the loop with time.time()
        self.status_hooks: list[Callable[[], str]] = []  # words added to the STATUS line
        self._wakeup_r, self._wakeup_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._next_watchdog = 0.0

    # ---- main loop -------------------------------------------------------
    def run(self) -> int:
        self._install_signals()
        for role, socks in self.listeners.items():
            for sock in socks:
                sock.setblocking(False)
                self.selector.register(sock, selectors.EVENT_READ, functools.partial(self.pending.accept, role=role))
        self.selector.register(self._wakeup_r, selectors.EVENT_READ, self._drain_wakeup)
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
        for key, _mask in self.selector.select(TICK_SECONDS):
            key.data(key.fileobj)  # every registration's data is its handler
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
        self.pending.expire(self.config.acse_timeout)
        self.dispatch_ready()
        self.manage_workers()
        self.keepalive()
        now = time.time()
        for tick in self.tick_hooks:
            tick(now)
        return None

    def emit(self, kind: Event, data: Mapping[str, Any], child: Child | None) -> None:
        """Tell every observer what happened."""
        for hook in self.event_hooks:
            hook(kind, data, child)

    # ---- signals: handlers only enqueue; the loop dispatches handle_<name> ---
    def _install_signals(self) -> None:
        for name in HANDLED_SIGNALS:
            signal.signal(getattr(signal, name), self._enqueue_signal)
        signal.set_wakeup_fd(self._wakeup_w, warn_on_full_buffer=False)

    def _enqueue_signal(self, signum: int, frame: Any) -> None:
        if len(self.signal_queue) < 20:
            self.signal_queue.append(signum)

    def _drain_wakeup(self, fd: int) -> None:
        try:
            while os.read(fd, 512):
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
        for socks in self.listeners.values():
            for sock in socks:
                self.selector.unregister(sock)
                sock.close()
        self.listeners = {}
        self.pending.close_all()
        self.stop_all(signal.SIGTERM if how == "graceful" else signal.SIGINT)

    def stop_all(self, sig: int) -> None:
        self.children.signal_all(STOPPED_WITH_THE_DAEMON, sig)

    def drained(self) -> bool:
        live = [c for c in self.children.values() if c.kind in STOPPED_WITH_THE_DAEMON]
        if not live:
            return True
        if time.monotonic() >= self.stop_deadline:
            if self.stopping == "graceful" and any(c.busy for c in live):
                LOG.warning("graceful timeout: aborting %d running associations", sum(c.busy for c in live))
            self.children.signal_all(STOPPED_WITH_THE_DAEMON, signal.SIGKILL)
            self.stop_deadline = time.monotonic() + 5
        return False

    # ---- connections ---------------------------------------------------------
    def _silent_connection_closed(self) -> None:
        self.emit(Event.CONNECTION_TIMED_OUT, {}, None)

    def dispatch_ready(self) -> None:
        ready = self.pending.ready
        while ready:
            p = ready[0]
            if self.mode == "fork":
                self.spawn_fork_child(p)
            else:
                idle = self._idle_worker()
                if idle is None:
                    return
                if not self.hand_over(idle, p):
                    continue  # that worker is gone: the connection waits for another
            ready.popleft()

    def _idle_worker(self) -> Child | None:
        return next((c for c in self.children.values()
                     if c.kind == "worker" and not c.busy and not c.retiring and c.generation == self.generation
                     and c.channel is not None), None)  # a closed channel: it is exiting

    def hand_over(self, child: Child, p: Pending) -> bool:
        assert child.channel is not None
        try:
            ipc.send(child.channel, {"conn": {"role": p.role}}, [p.sock.fileno()])
        except OSError as exc:
            LOG.warning("cannot hand a connection to worker %d (%s): another worker takes it", child.pid, exc)
            self.children.retire(child)  # gone, or its channel is stuck: either way it is replaced
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
            self.children.retire(child)

    def spawn_worker(self) -> bool:
        if self.crash_guard.looping():
            return False
        config, generation = self.config, self.generation
        return self.fork("worker", lambda channel: start_worker(config, channel, generation,
                                                                config.max_requests)) is not None

    def spawn_fork_child(self, p: Pending) -> None:
        config, generation = self.config, self.generation
        child = self.fork("fork", lambda channel: serve_one(config, channel, generation, p.sock, p.role), keep=p.sock)
        if child is not None:
            child.busy = True
        p.sock.close()

    def fork(self, kind: str, target: Callable[[socket.socket], None], keep: socket.socket | None = None) -> Child | None:
        """A new child running ``target(channel)``; it holds none of our descriptors but ``keep``."""
        return self.children.fork(kind, target, self.generation, str(self.config.output_directory),
                                  functools.partial(self._close_in_child, keep))

    def _close_in_child(self, keep: socket.socket | None) -> None:
        reset_signals(HANDLED_SIGNALS)
        for socks in self.listeners.values():
            for sock in socks:
                sock.close()
        for sock in self.pending.sockets():
            if sock is not keep:
                sock.close()
        self.selector.close()
        os.close(self._wakeup_r)
        os.close(self._wakeup_w)

    def reap_children(self) -> None:
        """One reaper for every kind of child (workers, fork children, hooks, API)."""
        for pid, code, child in self.children.reaped():  # its last reports were read first
            # Observers hear of it while its association is still in the table.
            self.emit(Event.CHILD_EXITED, ChildExited(pid=pid, code=code), child)
            if child is not None:
                self._child_gone(child, code)

    def _child_gone(self, child: Child, code: int) -> None:
        remove_staging_leftovers(child)
        info = self.associations.forget_worker(child.pid)
        if info is not None:
            LOG.warning("worker %d ended (exit %d) during the association of %s: counted as aborted",
                        child.pid, code, info.peer)
        if code == WORKER_BOOT_ERROR and child.kind in WORKER_KINDS:
            self.boot_failed = True
            return
        if code != 0 and not self.stopping:
            LOG.warning("%s %d exited with %d", child.kind, child.pid, code)
            if child.served == 0 and child.kind in WORKER_KINDS:  # an API crash must not stop workers
                self.crash_guard.record()

    # ---- worker messages -----------------------------------------------------
    def read_child(self, child: Child) -> None:
        """Handle what a child has said so far (the study service catches up before it decides)."""
        self.children.read(child)

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
        self.on_event(message.pop("event", ""), message, child)

    def on_event(self, kind: str, data: Mapping[str, Any], child: Child) -> None:
        try:
            event = Event(kind)
        except ValueError:
            LOG.warning("%s %d reported an event storescpd does not know (%r): ignored", child.kind, child.pid, kind)
            return
        self.associations.on_event(event, data, child.pid)
        if event == Event.IDLE:
            self._worker_idle(child, cast(Idle, data))
        self.emit(event, data, child)

    def _worker_idle(self, child: Child, idle: Idle) -> None:
        child.busy = False
        child.retiring = child.retiring or bool(idle.get("retiring"))
        child.served = idle.get("served", child.served)
        if self.stopping or child.generation != self.generation:
            self.children.retire(child)

    def _ask_admit(self, message: Mapping[str, Any], child: Child) -> str | None:
        return self.associations.admit(self.config.max_associations)

    # ---- reload --------------------------------------------------------------
    def reload(self) -> dict[str, Any]:
        """nginx's reload: validate completely; on failure keep the old configuration and say why."""
        if self.stopping:
            LOG.warning("reload ignored: the daemon is stopping")
            return {"result": "failure", "message": "the daemon is stopping: nothing to reload", "time": time.time()}
        reloading()
        try:
            new = self.reload_config()
        except (ConfigError, OSError, ValueError) as exc:
            return self._reload_failed(str(exc) or type(exc).__name__)
        except Exception as exc:  # a bug of ours must not stop a running daemon either
            LOG.exception("internal error while reading the new configuration")
            return self._reload_failed(f"internal error while reading the new configuration: {type(exc).__name__}: {exc}")
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
                self.children.retire(child)
        self.manage_workers()
        message = "configuration reloaded" + (f" ({', '.join(fixed)} need a restart)" if fixed else "")
        LOG.info(message)
        self.last_reload = {"result": "success", "message": message, "time": time.time()}
        self.emit(Event.RELOADED, {}, None)
        notify("READY=1", f"STATUS={self.status_line()}")
        return self.last_reload

    def _reload_failed(self, message: str) -> dict[str, Any]:
        LOG.error("reload failed, keeping the running configuration: %s", message)
        self.last_reload = {"result": "failure", "message": message, "time": time.time()}
        self.emit(Event.RELOAD_FAILED, ReloadFailed(message=message), None)
        notify("READY=1", f"STATUS=reload failed: {message.splitlines()[0][:200]}; {self.status_line()}")
        return self.last_reload

    # ---- status ----------------------------------------------------------------
    def status_line(self) -> str:
        """What sd_notify STATUS says: the live state, then what the status hooks add (the metrics'
        totals, when they are attached)."""
        workers = sum(1 for c in self.children.values() if c.kind in WORKER_KINDS)
        parts = [f"stopping ({self.stopping})"] if self.stopping else []
        parts += [f"{len(self.associations)} associations", f"{workers} workers"]
        return ", ".join(parts + [status() for status in self.status_hooks])

    def keepalive(self) -> None:
        interval = watchdog_interval()
        now = time.monotonic()
        if now >= self._next_watchdog:
            notify(*(["WATCHDOG=1"] if interval else []), f"STATUS={self.status_line()}")
            self._next_watchdog = now + (interval or 5.0)
