"""The pending stage: accepted connections wait here until they are worth a worker.

A plain DICOM connection is *ready* once the peer's whole A-ASSOCIATE-RQ has arrived (peeked,
never read), or as soon as anything a worker must answer at once arrives (a TLS ClientHello,
another PDU type, a request too large to accept). Until then it costs one descriptor in the
supervisor and no worker: a slow, silent or byte-at-a-time peer can never occupy the workers a
real peer needs. Silent connections are closed at the ACSE timeout, the oldest first when too
many wait; a connection whose peer closes (or fails) before its request is whole is closed in
the same turn of the loop.

Before that, the PROXY protocol (``daemon.proxy``): a connection from a balancer listed in
``proxy_protocol_from`` must begin with a PROXY header, which is read off the socket here (within
the same ACSE timeout) and whose source address goes to the worker with the socket as the peer;
a connection from anywhere else that begins with one is refused, and so is a listed balancer's
without one. A connection that ends before its first byte (a port probe, a health check that only
connects) is closed here, whichever listener took it.
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

from storescpd.daemon import proxy
from storescpd.dicom.engine import MAX_ASSOCIATE_PDU, PDU_ASSOCIATE_RQ

LOG = logging.getLogger("storescpd.supervisor")

MAX_PENDING = 512  # silent connections held at once; past this the oldest is closed
# A plain DICOM connection goes to a worker once its whole A-ASSOCIATE-RQ has arrived (or this much
# of it): a peer that sends its request a byte at a time waits here, not in a worker.
REQUEST_PEEK = 64 << 10
ACCEPTS_PER_EVENT = 64  # one listener's turn: the other sockets are served between batches
OUT_OF_RESOURCES = (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM)


UNKNOWN_PEER = ("unknown", 0)  # a unix socket's peer has no address


@dataclass
class Pending:
    sock: socket.socket
    role: str  # the listener's name: "dicom" or "dicom-tls"
    since: float  # time.monotonic() at accept
    peer: proxy.Address = UNKNOWN_PEER  # the client: as accepted, then as its balancer's PROXY header names it
    balancer: bool = False  # from a balancer of proxy_protocol_from: a PROXY header must come first
    examined: bool = False  # the PROXY header is read (or none was there, and none was expected)


class PendingConnections:
    """Connections accepted and waiting for their request (``waiting``), and those whose request
    is here (``ready``, oldest first) until the supervisor hands them on."""

    def __init__(self, selector: selectors.BaseSelector, on_silent_closed: Callable[[], None],
                 on_refused: Callable[[str], None] = lambda reason: None,
                 balancers: proxy.Balancers | None = None) -> None:
        self.selector = selector
        self.on_silent_closed = on_silent_closed  # a silent connection was closed (timeout, or for room)
        self.on_refused = on_refused  # a connection was refused for its PROXY header (one of proxy.REFUSALS)
        self.balancers = balancers or proxy.Balancers()  # replaced on reload
        self.waiting: dict[int, Pending] = {}
        self.ready: deque[Pending] = deque()

    def accept(self, listener: socket.socket, role: str) -> None:
        for _ in range(ACCEPTS_PER_EVENT):
            try:
                conn, addr = listener.accept()
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
            peer = (str(addr[0]), int(addr[1])) if isinstance(addr, tuple) else UNKNOWN_PEER
            self.waiting[conn.fileno()] = Pending(conn, role, time.monotonic(), peer, self.balancers.listed(peer[0]))
            self.selector.register(conn, selectors.EVENT_READ, self.readable)

    def readable(self, conn: socket.socket) -> None:
        pending = self.waiting.get(conn.fileno())
        if pending is None or pending.sock is not conn:
            return  # closed earlier in this batch of events (the oldest silent one, dropped for room)
        if not pending.examined and not self._proxy_header_read(pending):
            return
        if pending.role == "dicom" and not self._request_arrived(pending):
            return
        del self.waiting[conn.fileno()]
        self.selector.unregister(conn)
        self.ready.append(pending)

    def expire(self, acse_timeout: float) -> None:
        limit = time.monotonic() - acse_timeout
        for p in [p for p in self.waiting.values() if p.since < limit]:
            if p.balancer and not p.examined:
                LOG.warning("closing the connection from balancer %s: no complete PROXY protocol header within "
                            "%d s", proxy.peer_text(p.peer), acse_timeout)
            else:
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

    def _proxy_header_read(self, p: Pending) -> bool:
        """Whether the connection may go on to its request: its balancer's PROXY header is read off
        the socket (its source is now the peer), or it has none and needs none. Until its first bytes
        decide, the low-water mark makes it readable only once they can; a refused one is closed."""
        head = self._peek(p, proxy.PEEK_BYTES)
        if not head:
            return False
        verdict = proxy.examine(head, p.balancer)
        if isinstance(verdict, proxy.Wait):
            if peer_closed(p.sock):
                LOG.warning("closing the connection from %s: it ended inside a PROXY protocol header (%d bytes)",
                            proxy.peer_text(p.peer), len(head))
                self.drop(p)
            elif not proxy.set_low_water_mark(p.sock, verdict.needed):
                p.examined = True  # cannot wait here: the worker refuses what is not DICOM (or TLS)
                return True
            return False
        if isinstance(verdict, proxy.Refusal):
            LOG.warning("refusing the connection from %s: %s", proxy.peer_text(p.peer), verdict.cause)
            self.on_refused(verdict.reason)
            self.drop(p)
            return False
        p.examined = True
        proxy.set_low_water_mark(p.sock, 1)  # a worker's blocking reads must not wait for a mark of ours
        if verdict is None:
            return True
        if not proxy.consume(p.sock, verdict):
            self.drop(p)
            return False
        if verdict.source is not None:
            LOG.debug("PROXY v%d header from balancer %s: the peer is %s", verdict.version, proxy.peer_text(p.peer),
                      proxy.peer_text(verdict.source))
            p.peer = verdict.source
        return bool(self._peek(p, 1))  # the request (or the TLS hello) may still be on its way

    def _peek(self, p: Pending, size: int) -> bytes | None:
        """Up to ``size`` bytes of what has arrived, left in place; None if nothing has yet. At end of
        file (or on an error) the connection is closed and b"" returned: nothing for a worker to do."""
        try:
            head = p.sock.recv(size, socket.MSG_PEEK)
        except (BlockingIOError, InterruptedError):
            return None
        except OSError:
            head = b""
        if not head:
            self.drop(p)
        return head

    def _request_arrived(self, p: Pending) -> bool:
        """Whether the connection's first PDU is all here (peeked, not read). Until it is, the
        socket's receive low-water mark makes it readable only once the rest can be (or at end
        of file: then it is closed at once)."""
        head = self._peek(p, REQUEST_PEEK)
        if not head:
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
        if not proxy.set_low_water_mark(p.sock, 1 if complete else needed):
            return True  # cannot wait for the rest here: the worker's deadline still bounds it
        return complete


def peer_closed(sock: socket.socket) -> bool:
    """Whether the peer has shut its side down (end of file) or the connection failed. Data may
    still be queued, so a peeking read cannot tell."""
    poller = select.poll()
    poller.register(sock, select.POLLRDHUP)
    return any(events & (select.POLLRDHUP | select.POLLHUP | select.POLLERR) for _fd, events in poller.poll(0))
