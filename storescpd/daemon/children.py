"""The supervisor's children: what it knows of each, how one is forked, read and reaped.

Every child (pool worker, ``--fork`` child, API process) is forked from the single-threaded
supervisor with a channel back to it (``ipc``), read from the supervisor's selector, and reaped
by one ``waitpid(-1)`` loop that also reaps the hooks started elsewhere: a per-pid wait would
leave the children nobody asked about as zombies. What a child's exit means (a restart, a crash
loop, a boot failure) is the supervisor's to decide.
"""

from __future__ import annotations

import functools
import logging
import os
import selectors
import signal
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

from storescpd.daemon import ipc
from storescpd.daemon.worker import WORKER_BOOT_ERROR
from storescpd.store.storage import STAGING_DIR_NAME

LOG = logging.getLogger("storescpd.supervisor")

WORKER_KINDS = ("worker", "fork")  # the children that serve associations
STOPPED_WITH_THE_DAEMON = ("worker", "fork", "api")  # hooks run to their own end
CRASH_WINDOW_SECONDS = 10.0
CRASH_LIMIT = 10  # worker deaths without any association served in the window: stop re-forking


@dataclass
class Child:
    pid: int
    kind: str  # "worker" (pool), "fork" (one association), "api"
    generation: int  # the configuration it was forked with (a reload adds one)
    channel: socket.socket | None = None  # the supervisor's end; None once the child closed it
    busy: bool = False
    retiring: bool = False  # reached --max-requests or told to stop: takes no more connections
    served: int = 0
    started: float = field(default_factory=time.time)
    output_directory: str = ""  # -od when it was forked: where its staging files are


def is_restart(child: Child, code: int, generation: int, stopping: bool) -> bool:
    """A pool worker of the running generation that ended on its own: not a reload, a stop,
    a boot failure, nor recycling (--max-requests, or retired as surplus: exit 0)."""
    return (child.kind == "worker" and not stopping and child.generation == generation
            and code != WORKER_BOOT_ERROR and not (child.retiring and code == 0))


class Children(Mapping[int, Child]):
    """Every live child by pid, its channel registered in the supervisor's selector; what comes
    on a channel goes to ``on_message``. Read-only as a mapping: children come from ``fork``
    (or ``add``) and leave through ``reaped``."""

    def __init__(self, selector: selectors.BaseSelector, on_message: Callable[[Child, dict[str, Any]], None]) -> None:
        self.selector = selector
        self.on_message = on_message
        self._by_pid: dict[int, Child] = {}

    def __getitem__(self, pid: int) -> Child:
        return self._by_pid[pid]

    def __iter__(self) -> Iterator[int]:
        return iter(self._by_pid)

    def __len__(self) -> int:
        return len(self._by_pid)

    def fork(self, kind: str, target: Callable[[socket.socket], None], generation: int, output_directory: str,
             close_in_child: Callable[[], None]) -> Child | None:
        """Fork a child that runs ``target(channel)`` after ``close_in_child()`` and never returns;
        None (logged) when the system cannot fork now."""
        parent_end, child_end = ipc.channel_pair()
        try:
            pid = os.fork()
        except OSError as exc:
            LOG.error("cannot fork a %s: %s", kind, exc.strerror)
            parent_end.close()
            child_end.close()
            return None
        if pid == 0:
            try:
                parent_end.close()
                for other in self._by_pid.values():
                    if other.channel is not None:
                        other.channel.close()
                close_in_child()
                target(child_end)
            finally:
                os._exit(1)
        child_end.close()
        parent_end.setblocking(False)
        return self.add(Child(pid, kind, generation, parent_end, output_directory=output_directory))

    def add(self, child: Child) -> Child:
        self._by_pid[child.pid] = child
        if child.channel is not None:
            self.selector.register(child.channel, selectors.EVENT_READ, functools.partial(self._readable, child))
        return child

    def reaped(self) -> Iterator[tuple[int, int, Child | None]]:
        """(pid, exit code, the child if it was ours) of every child that has ended, whatever its
        kind (hooks too); negative codes are signals. A child's last reports are read first, so
        they count before its exit."""
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            child = self._by_pid.pop(pid, None)
            if child is not None:
                while self.read(child, limit=1000):  # its channel holds a few hundred at most
                    pass
                self.close_channel(child)
            yield pid, os.waitstatus_to_exitcode(status), child

    def read(self, child: Child, limit: int = 100) -> bool:
        """Handle up to ``limit`` messages of a child (a turn of the loop serves every child);
        True if more may be waiting."""
        if child.channel is None:  # closed earlier in this turn (EOF seen while catching up)
            return False
        for _ in range(limit):
            try:
                message, fds = ipc.receive(child.channel)
            except OSError:  # nothing more now (EAGAIN), or the channel broke: the reaper sees the rest
                return False
            for fd in fds:
                os.close(fd)
            if message is None:
                self.close_channel(child)
                return False
            self.on_message(child, message)
        return True

    def close_channel(self, child: Child) -> None:
        if child.channel is not None:
            self.selector.unregister(child.channel)
            child.channel.close()
            child.channel = None

    def retire(self, child: Child) -> None:
        """Stop a worker: it is handed no connection from now on (it would drop it)."""
        child.retiring = True
        kill(child.pid, signal.SIGTERM)

    def signal_all(self, kinds: tuple[str, ...], sig: int) -> None:
        for child in list(self._by_pid.values()):
            if child.kind in kinds:
                kill(child.pid, sig)

    def _readable(self, child: Child, channel: socket.socket) -> None:
        self.read(child)


def kill(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


def reset_signals(names: tuple[str, ...]) -> None:
    """In a new child: the supervisor's handlers and wakeup descriptor are not its own."""
    signal.set_wakeup_fd(-1)
    for name in names:
        signal.signal(getattr(signal, name), signal.SIG_DFL)


def remove_staging_leftovers(child: Child) -> None:
    """A dead child's partial files, in the output directory it was started with (a reload may
    have changed -od since)."""
    staging = Path(child.output_directory) / STAGING_DIR_NAME
    for leftover in staging.glob(f"{child.pid}-*.part"):
        try:
            leftover.unlink()
            LOG.info("removed %s left by worker %d", leftover.name, child.pid)
        except OSError:
            pass


class CrashGuard:
    """Workers that die without serving anything, counted over a window: past the limit the
    supervisor waits instead of re-forking in a loop."""

    def __init__(self) -> None:
        self.crashes: list[float] = []

    def record(self) -> None:
        self.crashes.append(time.monotonic())

    def looping(self) -> bool:
        horizon = time.monotonic() - CRASH_WINDOW_SECONDS
        self.crashes = [t for t in self.crashes if t > horizon]
        if len(self.crashes) >= CRASH_LIMIT:
            LOG.error("%d workers died within %d s without serving: waiting before forking again",
                      len(self.crashes), CRASH_WINDOW_SECONDS)
            return True
        return False
