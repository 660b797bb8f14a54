"""The pending stage: accepted connections wait here until they are worth a worker.

A plain DICOM connection is *ready* once the peer's whole A-ASSOCIATE-RQ has arrived (peeked,
never read), or as soon as anything a worker must answer at once arrives (a TLS ClientHello,
another PDU type, a request too large to accept). Until then it costs one descriptor in the
supervisor and no worker: a slow, silent or byte-at-a-time peer can never occupy the workers a
real peer needs. Silent connections are closed at the ACSE timeout, the oldest first when too
many wait; a connection whose peer closes (or fails) before its request is whole is closed in
the same turn of the loop.
"""

from __future__ import annotations

import errno
import logging
import select
import selectors
import socket
import time
from collections import deque
from dataclasses import dataclass
from typing import Callable

from storescpd.dicom.engine import MAX_ASSOCIATE_PDU, PDU_ASSOCIATE_RQ

LOG = logging.getLogger("storescpd.supervisor")

MAX_PENDING = 512  # silent connections held at once; past this the oldest is closed
# A plain DICOM connection goes to a worker once its whole A-ASSOCIATE-RQ has arrived (or this much
# of it): a peer that sends its request a byte at a time waits here, not in a worker.
REQUEST_PEEK = 64 << 10
ACCEPTS_PER_EVENT = 64  # one listener's turn: the other sockets are served between batches
OUT_OF_RESOURCES = (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM)


@dataclass
class Pending:
    sock: socket.socket
    role: str  # the listener's name: "dicom" or "dicom-tls"
    since: float  # time.monotonic() at accept


class PendingConnections:
    """Connections accepted and waiting for their request (``waiting``), and those whose request
    is here (``ready``, oldest first) until the supervisor hands them on."""

    def __init__(self, selector: selectors.BaseSelector, on_silent_closed: Callable[[], None]) -> None:
        self.selector = selector
        self.on_silent_closed = on_silent_closed  # a silent connection was closed (timeout, or for room)
        self.waiting: dict[int, Pending] = {}
        self.ready: deque[Pending] = deque()

    def accept(self, listener: socket.socket, role: str) -> None:
        for _ in range(ACCEPTS_PER_EVENT):
            try:
                conn, _addr = listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                if exc.errno not in OUT_OF_RESOURCES:
                    raise
                # Out of descriptors: make room by closing the oldest silent connection,
                # rather than spinning on a listener that stays readable.
                LOG.error("cannot accept a connection: %s", exc.strerror)
                self.drop_oldest()
                return
            conn.setblocking(False)
            if len(self.waiting) >= MAX_PENDING:
                self.drop_oldest()
            self.waiting[conn.fileno()] = Pending(conn, role, time.monotonic())
            self.selector.register(conn, selectors.EVENT_READ, self.readable)

    def readable(self, conn: socket.socket) -> None:
        pending = self.waiting.get(conn.fileno())
        if pending is None or pending.sock is not conn:
            return  # closed earlier in this batch of events (the oldest silent one, dropped for room)
        if pending.role == "dicom" and not self._request_arrived(pending):
            return
        del self.waiting[conn.fileno()]
        self.selector.unregister(conn)
        self.ready.append(pending)

    def expire(self, acse_timeout: float) -> None:
        limit = time.monotonic() - acse_timeout
        for p in [p for p in self.waiting.values() if p.since < limit]:
            LOG.info("closing a connection that sent no association request within %d s", acse_timeout)
            self._close_silent(p)

    def drop_oldest(self) -> None:
        if self.waiting:
            oldest = min(self.waiting.values(), key=lambda p: p.since)
            LOG.warning("%d connections wait silently for their association request: closing the oldest",
                        len(self.waiting))
            self._close_silent(oldest)

    def close_all(self) -> None:
        for p in list(self.waiting.values()) + list(self.ready):
            self.drop(p)
        self.ready.clear()

    def sockets(self) -> list[socket.socket]:
        return [p.sock for p in (*self.waiting.values(), *self.ready)]

    def drop(self, p: Pending) -> None:
        if self.waiting.pop(p.sock.fileno(), None) is not None:
            self.selector.unregister(p.sock)
        p.sock.close()

    def _close_silent(self, p: Pending) -> None:
        self.on_silent_closed()
        self.drop(p)

    def _request_arrived(self, p: Pending) -> bool:
        """Whether the connection's first PDU is all here (peeked, not read). Until it is, the
        socket's receive low-water mark makes it readable only once the rest can be (or at end
        of file: then it is closed at once)."""
        try:
            head = p.sock.recv(REQUEST_PEEK, socket.MSG_PEEK)
        except (BlockingIOError, InterruptedError):
            return False
        except OSError:
            head = b""
        if not head:  # closed (or reset) before sending a request: nothing for a worker to do
            self.drop(p)
            return False
        if head[0] != PDU_ASSOCIATE_RQ:
            return True  # not an association request: the worker answers it with an A-ABORT now
        announced = int.from_bytes(head[2:6], "big") if len(head) >= 6 else 0
        if announced > MAX_ASSOCIATE_PDU:
            return True  # a request too large to accept: the worker aborts it now
        needed = 6 if len(head) < 6 else min(6 + announced, REQUEST_PEEK)
        complete = len(head) >= needed
        if not complete and peer_closed(p.sock):
            # Part of a request, then end of file: the rest can never come, and the socket would
            # stay readable (and the loop spin on it) until the ACSE timeout.
            LOG.info("closing a connection that ended inside its association request (%d bytes)", len(head))
            self.drop(p)
            return False
        try:
            p.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT, 1 if complete else needed)
        except OSError:
            return True  # cannot wait for the rest here: the worker's deadline still bounds it
        return complete


def peer_closed(sock: socket.socket) -> bool:
    """Whether the peer has shut its side down (end of file) or the connection failed. Data may
    still be queued, so a peeking read cannot tell."""
    poller = select.poll()
    poller.register(sock, select.POLLRDHUP)
    return any(events & (select.POLLRDHUP | select.POLLHUP | select.POLLERR) for _fd, events in poller.poll(0))
