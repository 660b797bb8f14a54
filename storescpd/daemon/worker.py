"""A worker process: receives connections from the supervisor, serves one association at a time."""

from __future__ import annotations

import logging
import os
import select
import signal
import socket
import sys
from typing import Any

from storescpd.daemon import ipc
from storescpd.store import journal, studies
from storescpd.config.settings import Config
from storescpd.daemon.scp import serve_association
from storescpd.messages import Ask, Event

LOG = logging.getLogger("storescpd.worker")

WORKER_OK = 0
WORKER_BOOT_ERROR = 3  # the supervisor stops instead of re-forking in a loop
PARENT_CHECK_SECONDS = 1.0


class Worker:
    """Runs in the forked child. Never returns: ends the process with a named exit code."""

    def __init__(self, config: Config, channel: socket.socket, generation: int, max_requests: int) -> None:
        self.config = config
        self.channel = ipc.WorkerChannel(channel)
        self.generation = generation
        self.max_requests = max_requests
        self.stopping = False
        self.served = 0
        self.parent = os.getppid()
        self.current: Any = None
        studies.use_worker_client(config, self.channel)  # folders and hooks come from the supervisor
        journal.use_worker(config, self.channel)  # receipts, with the association ids the supervisor gives

    def run(self) -> None:
        code = WORKER_OK
        try:
            self._install_signals()
            self._boot_check()
        except Exception as exc:  # the supervisor must see a boot failure, not a crash loop
            LOG.error("worker %d cannot start: %s", os.getpid(), exc)
            os._exit(WORKER_BOOT_ERROR)
        try:
            self._loop()
        except Exception:
            LOG.exception("worker %d failed", os.getpid())
            code = 1
        finally:
            logging.shutdown()
        os._exit(code)

    def _install_signals(self) -> None:
        signal.signal(signal.SIGTERM, self._graceful)
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
        signal.signal(signal.SIGINT, self._quick)
        signal.signal(signal.SIGQUIT, self._quick)
        signal.signal(signal.SIGUSR1, self._abort_current)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)

    def _boot_check(self) -> None:
        if not self.config.ignore and not os.access(self.config.output_directory, os.W_OK | os.X_OK):
            raise OSError(f"output directory {self.config.output_directory} is not writable")

    def _graceful(self, signum: int, frame: Any) -> None:
        self.stopping = True

    def _quick(self, signum: int, frame: Any) -> None:
        self.stopping = True
        self._abort_current(signum, frame)
        if self.current is None:
            os._exit(WORKER_OK)

    def _abort_current(self, signum: int, frame: Any) -> None:
        # SIGUSR1 from the supervisor names the association it believes we run. It cannot hit the
        # next one: the supervisor hands us a new connection only after reading our "idle" event,
        # i.e. after it sent this signal, and a pending signal runs before we read that message.
        assoc = self.current
        if assoc is not None:
            LOG.warning("aborting the running association on request")
            assoc.abort_from_signal_handler()

    def _loop(self) -> None:
        sock = self.channel.sock
        while not self.stopping:
            if os.getppid() != self.parent:
                return  # orphaned: the supervisor died
            ready, _, _ = select.select([sock], [], [], PARENT_CHECK_SECONDS)
            if not ready:
                continue
            message, fds = ipc.receive(sock)
            if message is None:
                return
            if "conn" in message and fds:
                self._serve(fds[0], message["conn"])
                if self._retiring():
                    return

    def _serve(self, fd: int, meta: dict[str, Any]) -> None:
        conn = socket.socket(fileno=fd)
        self.served += 1
        try:
            serve_association(conn, self.config, emit=self.channel.emit, admit=self._admit,
                              role=meta.get("role", "dicom"), on_association=self._track, peer=_peer(meta))
        except Exception:
            LOG.exception("association failed in worker %d", os.getpid())
        finally:
            self.current = None
            # A worker at its --max-requests says so: a connection handed to it now would be lost.
            self.channel.emit(Event.IDLE, {"served": self.served, "retiring": self._retiring()})

    def _retiring(self) -> bool:
        return bool(self.max_requests) and self.served >= self.max_requests

    def _track(self, assoc: Any) -> None:
        self.current = assoc

    def _admit(self, assoc: Any) -> str | None:
        try:
            return self.channel.ask(Ask.ADMIT, {})
        except (OSError, ConnectionError) as exc:
            return f"supervisor unavailable ({exc})"


def _peer(meta: dict[str, Any]) -> tuple[str, int] | None:
    """The client's address as the supervisor handed it over (its pending stage read any PROXY header)."""
    peer = meta.get("peer")
    return (str(peer[0]), int(peer[1])) if isinstance(peer, (list, tuple)) and len(peer) == 2 else None


def start_worker(config: Config, channel: socket.socket, generation: int, max_requests: int) -> None:
    """Entry in a pool worker right after fork."""
    sys.stdin.close()
    Worker(config, channel, generation, max_requests).run()


def serve_one(config: Config, channel: socket.socket, generation: int, conn: socket.socket, role: str,
              peer: tuple[str, int]) -> None:
    """Entry in a --fork child right after fork: serve the one connection, then exit."""
    worker = Worker(config, channel, generation, 1)
    worker._install_signals()
    worker._serve(conn.detach(), {"role": role, "peer": peer})
    os._exit(WORKER_OK)
