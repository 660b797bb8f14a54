"""Supervisor <-> worker messages over a SOCK_SEQPACKET socketpair: one JSON object per packet.

Workers send ``{"event": kind, ...}`` (fire and forget) and ``{"ask": kind, "id": n, ...}``
(answered by ``{"reply": n, "value": ...}``); the kinds and their payloads are
``storescpd.messages``. The supervisor hands a connection to a worker
as ``{"conn": {...}}`` with the socket's file descriptor attached (SCM_RIGHTS).
"""

from __future__ import annotations

import json
import os
import socket
import threading
from typing import Any, Mapping

from storescpd.messages import Ask

MAX_PACKET = 65536


def channel_pair() -> tuple[socket.socket, socket.socket]:
    """(supervisor end, worker end), both close-on-exec."""
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    return a, b


def send(sock: socket.socket, message: dict[str, Any], fds: list[int] | None = None) -> None:
    data = json.dumps(message, separators=(",", ":"), default=str).encode()
    if fds:
        socket.send_fds(sock, [data], fds)
    else:
        sock.send(data)


def receive(sock: socket.socket) -> tuple[dict[str, Any] | None, list[int]]:
    """One message and its fds; (None, []) when the peer has gone."""
    data, fds, _flags, _addr = socket.recv_fds(sock, MAX_PACKET, 4)
    if not data:
        for fd in fds:
            _close_fd(fd)
        return None, []
    return json.loads(data), fds


def _close_fd(fd: int) -> None:
    try:
        os.close(fd)
    except OSError:
        pass


class WorkerChannel:
    """The worker's end: events and questions to the supervisor, safe from any thread."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self._lock = threading.Lock()
        self._next_id = 0

    def emit(self, kind: str, data: Mapping[str, Any]) -> None:
        """Report an ``Event`` (typed ``str`` as the engine's ``emit`` callback is)."""
        try:
            with self._lock:
                send(self.sock, {"event": kind, **data})
        except OSError:
            pass  # the supervisor is gone; the worker will notice in its main loop

    def ask(self, kind: Ask, data: Mapping[str, Any], timeout: float = 10.0) -> Any:
        """A question only the supervisor can answer (it replies at once: it never blocks)."""
        with self._lock:
            self._next_id += 1
            ask_id = self._next_id
            send(self.sock, {"ask": kind, "id": ask_id, **data})
            self.sock.settimeout(timeout)
            try:
                while True:
                    message, fds = receive(self.sock)
                    if message is None:
                        raise ConnectionError("supervisor went away")
                    for fd in fds:
                        _close_fd(fd)
                    if message.get("reply") == ask_id:
                        return message.get("value")
            finally:
                self.sock.settimeout(None)
