"""Hooks (-xcr, -xcs): commands run as argument vectors, never through a shell.

DCMTK storescp substitutes the placeholders into the command string and hands it to
``/bin/sh -c``, so a calling AE title such as ``x";touch PWNED;"`` runs a command
(CVE-2026-5663). Here the configured command is split into arguments once (``shlex``, at
configuration time); each placeholder is replaced inside its own argument, so a value from
the peer is always exactly one argument, whatever it contains, and reaches the hook as DCMTK
passes it, a value beginning with '-' included (docs/hooks.md says why). The values are also
passed in the environment (``ENVIRONMENT``).

A hook starts with stdin on /dev/null, stdout and stderr on a pipe we read (the tail is
logged with the exit status), no inherited descriptors, no ``NOTIFY_SOCKET``/``LISTEN_*``,
default signal dispositions, in its own process group (so a timeout kills what it started).
A hook may come with a ``Prelude``: a program that runs first in the hook's own process and
then executes the hook (the end-of-study rename, ``storescpd.store.study_rename``), so that
the supervisor starts one child and never waits for the file system. A hook never changes the
status of a C-STORE.
"""

from __future__ import annotations

import errno
import logging
import os
import re
import select
import shlex
import signal
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Callable

from storescpd.config.commands import PLACEHOLDER_PATTERN

LOG = logging.getLogger("storescpd.hooks")

PLACEHOLDERS = {"#p": "path", "#f": "file", "#a": "calling_ae", "#c": "called_ae", "#r": "peer"}
ENVIRONMENT = {
    "path": "STORESCPD_PATH",
    "file": "STORESCPD_FILE",
    "calling_ae": "STORESCPD_CALLING_AE",
    "called_ae": "STORESCPD_CALLED_AE",
    "peer": "STORESCPD_PEER",
}
EVENT_VARIABLE = "STORESCPD_EVENT"  # "reception" or "end-of-study"
# Never handed to a hook: systemd's channels belong to the daemon alone.
_PRIVATE_VARIABLES = ("NOTIFY_SOCKET", "LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES", "WATCHDOG_USEC",
                      "WATCHDOG_PID")
_RESET_SIGNALS = frozenset(s for s in signal.Signals if s not in (signal.SIGKILL, signal.SIGSTOP))

HOOK_TIMEOUT_SECONDS = 600.0  # a hook still running after this is killed (with its process group)
MAX_RUNNING = 32  # asynchronous hooks at once; more wait in order
OUTPUT_TAIL_BYTES = 2048


def substitute(argv: tuple[str, ...] | list[str], values: dict[str, str]) -> list[str]:
    """Each placeholder replaced inside its own argument, in one pass (a value is never re-read).

    A placeholder whose value is not given stays as written (DCMTK leaves #f of -xcs alone).
    """
    def one(match: re.Match[str]) -> str:
        value = values.get(PLACEHOLDERS[match.group(0)])
        return match.group(0) if value is None else _argument_safe(value)

    return [PLACEHOLDER_PATTERN.sub(one, arg) for arg in argv]


def _argument_safe(value: str) -> str:
    return value.replace("\0", "")  # exec cannot pass NUL; nothing else needs care without a shell


def environment(values: dict[str, str], event: str, base: dict[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in (os.environ if base is None else base).items() if k not in _PRIVATE_VARIABLES}
    for name, variable in ENVIRONMENT.items():
        env.pop(variable, None)
        if values.get(name) is not None:
            env[variable] = _argument_safe(values[name])
    env[EVENT_VARIABLE] = event
    return env


@dataclass
class RunningHook:
    pid: int
    label: str
    started: float
    deadline: float  # monotonic; inf without a timeout
    output: int  # read end of the stdout/stderr pipe
    quiet: bool = False  # a prelude without a hook: its success is only worth a debug line
    tail: bytearray = field(default_factory=bytearray)
    killed: bool = False


@dataclass
class Prelude:
    """A program run first in the hook's process: ``data`` is its stdin, the hook's output pipe
    its descriptor ``PRELUDE_OUTPUT_FD``; it ends by executing the hook (an empty ``argv`` of
    the request: it just exits). Its own log goes where the daemon's does."""

    argv: list[str]
    data: bytes


PRELUDE_OUTPUT_FD = 3
# Blocked in a prelude until it ignores them: a stop must not cut it halfway (a study half renamed).
PRELUDE_BLOCKED_SIGNALS = frozenset({signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT})


@dataclass
class HookRequest:
    label: str  # "--exec-on-reception", "--exec-on-eostudy" or "--rename-on-eostudy" (a prelude alone)
    argv: list[str]
    env: dict[str, str]
    prelude: Prelude | None = None


def spawn(request: HookRequest) -> tuple[int, int]:
    """Start the hook (or its prelude); returns (pid, read end of its output pipe). Raises OSError."""
    read_end, write_end = os.pipe2(os.O_CLOEXEC)
    actions: list[tuple] = [(os.POSIX_SPAWN_CLOSE, fd) for fd in _inheritable_fds() if fd > 2]
    stdin = None
    try:
        if request.prelude is None:
            argv, blocked = request.argv, frozenset()
            actions += [(os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
                        (os.POSIX_SPAWN_DUP2, write_end, 1), (os.POSIX_SPAWN_DUP2, write_end, 2)]
        else:
            argv, blocked = request.prelude.argv, PRELUDE_BLOCKED_SIGNALS
            stdin = _memory_file(request.prelude.data)
            actions += [(os.POSIX_SPAWN_DUP2, stdin, 0), (os.POSIX_SPAWN_DUP2, write_end, PRELUDE_OUTPUT_FD)]
        pid = os.posix_spawnp(argv[0], argv, request.env, file_actions=actions,
                              setpgroup=0, setsigdef=_RESET_SIGNALS, setsigmask=blocked)
    except BaseException:
        os.close(read_end)
        raise
    finally:
        os.close(write_end)
        if stdin is not None:
            os.close(stdin)
    os.set_blocking(read_end, False)
    return pid, read_end


def _memory_file(data: bytes) -> int:
    """A descriptor reading ``data`` from its start: memory, no file system, no size limit (an
    argument vector has one), and no pipe the supervisor would have to feed."""
    fd = os.memfd_create("storescpd-prelude", os.MFD_CLOEXEC)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.lseek(fd, 0, os.SEEK_SET)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _inheritable_fds() -> list[int]:
    """Descriptors an exec would pass on (ours are close-on-exec; anything else is closed)."""
    found = []
    try:
        names = os.listdir("/proc/self/fd")
    except OSError:
        return found
    for name in names:
        fd = int(name)
        try:
            if os.get_inheritable(fd):
                found.append(fd)
        except OSError:
            pass  # the listing's own descriptor, already closed
    return found


class HookRunner:
    """Starts hooks and follows them until they exit: output tail, timeout, exit status.

    Asynchronous hooks are reaped by whoever owns the process's children: the supervisor's
    single reaper calls ``exited``; a process without one calls ``reap``. ``run_sync``
    waits for its own child (the worker's -xs).
    """

    def __init__(self, timeout: float = HOOK_TIMEOUT_SECONDS, max_running: int = MAX_RUNNING,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.timeout = timeout
        self.max_running = max_running
        self.clock = clock
        self.running: dict[int, RunningHook] = {}
        self.queue: deque[HookRequest] = deque()

    def start(self, request: HookRequest) -> int | None:
        """Start now, or queue when MAX_RUNNING run already; returns the pid if started."""
        if len(self.running) >= self.max_running:
            if not self.queue:
                LOG.warning("%d hooks are running: further hooks wait their turn", len(self.running))
            self.queue.append(request)
            return None
        return self._start(request)

    def _spawn(self, request: HookRequest) -> RunningHook | None:
        """Start the hook; None (and the reason logged) when it cannot be executed."""
        try:
            pid, output = spawn(request)
        except OSError as exc:
            program = request.prelude.argv if request.prelude is not None else request.argv
            LOG.error("cannot execute %s command %r: %s", request.label, program[0], exc.strerror or exc)
            return None
        now = self.clock()
        # The timeout in force when the hook starts: a reload changes it for later hooks only.
        deadline = now + self.timeout if self.timeout else float("inf")
        return RunningHook(pid, request.label, now, deadline, output, quiet=not request.argv)

    def _start(self, request: HookRequest) -> int | None:
        hook = self._spawn(request)
        if hook is None:
            return None
        self.running[hook.pid] = hook
        _log_start(request, hook.pid, "")
        return hook.pid

    def poll(self) -> None:
        """Read what hooks wrote, kill the overdue ones, start queued ones."""
        now = self.clock()
        for hook in list(self.running.values()):
            _read_available(hook)
            if not hook.killed and now >= hook.deadline:
                _kill_overdue(hook, now)
        while self.queue and len(self.running) < self.max_running:
            self._start(self.queue.popleft())

    def exited(self, pid: int, code: int) -> bool:
        """The reaper saw ``pid`` end: True if it was one of our hooks."""
        hook = self.running.pop(pid, None)
        if hook is None:
            return False
        _read_available(hook)
        os.close(hook.output)
        _log_exit(hook, code, self.clock())
        self.poll()
        return True

    def reap(self) -> None:
        """Reap our own hooks (only where no other reaper runs: single process, inetd)."""
        for pid in list(self.running):
            try:
                done, status = os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                done, status = pid, 0
            if done:
                self.exited(pid, os.waitstatus_to_exitcode(status))

    def run_sync(self, request: HookRequest) -> int | None:
        """Run to completion (bounded by the timeout); returns the exit code (None: not started)."""
        hook = self._spawn(request)
        if hook is None:
            return None
        _log_start(request, hook.pid, " synchronously")
        try:
            code = self._wait(hook)
        finally:
            os.close(hook.output)
        _log_exit(hook, code, self.clock())
        return code

    def _wait(self, hook: RunningHook) -> int:
        open_output = True
        while True:
            done, status = os.waitpid(hook.pid, os.WNOHANG)
            if done:
                _read_available(hook)
                return os.waitstatus_to_exitcode(status)
            now = self.clock()
            left = min(hook.deadline - now, 0.2)
            if left <= 0 and not hook.killed:
                _kill_overdue(hook, now)
            if open_output:
                readable, _, _ = select.select([hook.output], [], [], min(max(left, 0.01), 0.2))
                if readable and not _read_available(hook):
                    open_output = False  # EOF: the hook closed its output, wait for its exit
            else:
                time.sleep(0.02)


def _read_available(hook: RunningHook) -> bool:
    """Append what can be read now to the tail; False once the pipe is at end of file."""
    while True:
        try:
            chunk = os.read(hook.output, 65536)
        except BlockingIOError:
            return True
        except OSError as exc:
            if exc.errno == errno.EINTR:
                continue
            return False
        if not chunk:
            return False
        hook.tail += chunk
        del hook.tail[:-OUTPUT_TAIL_BYTES]


def _kill_overdue(hook: RunningHook, now: float) -> None:
    LOG.warning("%s (pid %d) still running after %d s: killing it", hook.label, hook.pid,
                round(now - hook.started))
    hook.killed = True
    _kill_group(hook.pid)


def _kill_group(pid: int) -> None:
    for kill in (os.killpg, os.kill):
        try:
            kill(pid, signal.SIGKILL)
            return
        except (ProcessLookupError, PermissionError):
            continue


def _log_start(request: HookRequest, pid: int, how: str) -> None:
    if not request.argv:
        LOG.debug("%s%s (pid %d)", request.label, how, pid)
        return
    after = " once the study's files are renamed" if request.prelude is not None else ""
    LOG.info("executing %s%s (pid %d)%s: %s", request.label, how, pid, after, shlex.join(request.argv))


def _log_exit(hook: RunningHook, code: int, now: float) -> None:
    output = hook.tail.decode("utf-8", "replace").strip()
    tail = f"; output: {output[-OUTPUT_TAIL_BYTES:]!r}" if output else ""
    elapsed = now - hook.started
    if hook.killed:
        LOG.warning("%s (pid %d) killed after %.1f s (timeout)%s", hook.label, hook.pid, elapsed, tail)
    elif code != 0:
        what = f"was killed by signal {-code}" if code < 0 else f"exited with status {code}"
        LOG.warning("%s (pid %d) %s after %.1f s%s", hook.label, hook.pid, what, elapsed, tail)
    else:
        LOG.log(logging.DEBUG if hook.quiet else logging.INFO, "%s (pid %d) finished after %.1f s%s",
                hook.label, hook.pid, elapsed, tail)
