"""The association engine: a single-threaded DICOM upper layer for the SCP role.

Establishment reads the A-ASSOCIATE-RQ under one deadline (``-ta``) and sends what ``acceptance``
answers. The data phase is the hot path and is ours: one thread, ``recv_into`` a reused buffer,
PDV items parsed with ``struct``, each data fragment handed to the ``Receiver`` as a memoryview
slice, each response encoded from a handful of fields (``dimse``) and sent in one ``sendall``.
No queues, no polling threads: per-object cost is a few system calls plus the fsyncs that
durability requires.
"""

from __future__ import annotations

import logging
import socket
import ssl
import threading
import time
from typing import Any, Callable, Protocol

from storescpd.dicom import acceptance
from storescpd.dicom.acceptance import Rejection
from storescpd.dicom.acse import AssociateRequest
from storescpd.dicom.dimse import (
    ABORT_SERVICE_PROVIDER, ABORT_SERVICE_USER, C_CANCEL_RQ, C_ECHO_RQ, C_ECHO_RSP, C_STORE_RQ, C_STORE_RSP,
    MAX_ASSOCIATE_PDU, MAX_COMMAND_SET, NO_DATA_SET, PDU_ABORT, PDU_ASSOCIATE_RQ, PDU_HEADER, PDU_P_DATA,
    PDU_RELEASE_RQ, PDV_HEADER, REASON_INVALID_PARAMETER, REASON_NOT_SPECIFIED, RELEASE_RP, STATUS_SUCCESS, Command,
    Context, ProtocolError, abort_pdu, command_pdu, decode_command, encode_response,
)
from storescpd.messages import Event

LOG = logging.getLogger("storescpd")

READ_AHEAD = 256 << 10  # bytes asked of each recv_into beyond the PDU being read

class Settings(acceptance.Settings, Protocol):
    """What the engine reads of the configuration (storescpd.config.settings.Config has it all)."""

    acse_timeout: int
    socket_timeout: int
    dimse_timeout: int


class Receiver(Protocol):
    """Who the engine hands an association's events and each C-STORE data set to: the store layer's
    ``StoreContext``. The engine owns the protocol; the receiver owns the staging file."""

    peer: str
    calling_ae: str
    called_ae: str
    abort: Callable[[], None]  # set by ``serve``: aborts the running association

    def emit(self, kind: str, data: dict[str, Any]) -> None: ...

    def begin(self, command: Command, context: Context) -> None:
        """A C-STORE-RQ announced a data set: open where it goes."""

    def fragment(self, data: memoryview) -> None:
        """The next data set fragment, in order."""

    def end(self, command: Command, context: Context) -> int:
        """The last fragment arrived: store it; the DIMSE status to answer (0x0000 only once durable)."""

    def drop(self) -> None:
        """The data set will not be completed (release, abort, error): forget it."""


class PeerGone(Exception):
    """The connection ended or timed out; the association is over."""


def prepare(config: Settings) -> None:
    """Build the per-configuration negotiation tables now, so that forked children inherit them
    instead of each spending milliseconds on it (the supervisor calls this; it speaks no DICOM)."""
    acceptance.prepare(config)


class Association:
    """One association on a connected socket, served to its end in the calling thread."""

    def __init__(self, sock: socket.socket, config: Settings, ctx: Receiver,
                 on_requested: Callable[[AssociateRequest], Rejection | None]) -> None:
        self.sock = sock
        self.config = config
        self.ctx = ctx
        self.on_requested = on_requested
        self.contexts: dict[int, Context] = {}
        self.outcome = "aborted"
        self.established = False
        self._buffer = bytearray(2 * config.max_pdu + READ_AHEAD)
        self._view = memoryview(self._buffer)
        self._pos = self._end = 0
        self._send_lock = threading.Lock()
        self._aborted_locally = False
        self._owner = threading.get_ident()  # the thread that reads and writes the association
        self._deadline: float | None = None  # while set, all reads together must end by then
        self.request: AssociateRequest | None = None
        self.rejection: Rejection | None = None

    # ---- socket I/O ---------------------------------------------------------
    def _recv_exact(self, n: int) -> memoryview:
        """The next n bytes, read ahead in large chunks (fewer system calls than PDUs).

        The view stays valid until the next call: callers consume a PDU before reading the next.
        """
        if self._end - self._pos < n:
            self._refill(n)
        start = self._pos
        self._pos += n
        return self._view[start:start + n]

    def _refill(self, n: int) -> None:
        pending = self._end - self._pos
        if n > len(self._buffer) - self._pos:
            # Move what is unread to the front; a new buffer if even that is too small (a buffer
            # with views handed out cannot be resized).
            size = max(len(self._buffer), n + READ_AHEAD)
            fresh = bytearray(size) if size > len(self._buffer) else self._buffer
            fresh[:pending] = self._buffer[self._pos:self._end]
            self._buffer, self._view = fresh, memoryview(fresh)
            self._pos, self._end = 0, pending
        while self._end - self._pos < n:
            if self._deadline is not None:
                remaining = self._deadline - time.monotonic()
                if remaining <= 0:
                    raise PeerGone("timed out waiting for the peer")
                self.sock.settimeout(remaining)
            try:
                k = self.sock.recv_into(self._view[self._end:], len(self._buffer) - self._end)
            except socket.timeout:
                raise PeerGone("timed out waiting for the peer") from None
            except OSError as exc:
                raise PeerGone(f"connection error: {exc}") from None
            if k == 0:
                raise PeerGone("connection closed by the peer")
            self._end += k

    def read_pdu(self) -> tuple[int, memoryview]:
        header = self._recv_exact(6)
        pdu_type, length = PDU_HEADER.unpack(header)
        # Bounded before anything is allocated: the A-ASSOCIATE-RQ by a generous constant, P-DATA
        # by the maximum length we announced (PS3.8 9.3.1; twice that, for lenient senders).
        limit = 2 * self.config.max_pdu if self.established else MAX_ASSOCIATE_PDU
        if length > limit:
            raise ProtocolError(f"PDU of {length} bytes announced, more than the {limit} accepted",
                                REASON_INVALID_PARAMETER)
        return pdu_type, self._recv_exact(length)

    def send(self, data: bytes) -> None:
        with self._send_lock:
            try:
                self.sock.sendall(data)
            except OSError as exc:
                raise PeerGone(f"cannot send: {exc}") from None

    def send_abort(self, source: int, reason: int) -> None:
        try:
            self.send(abort_pdu(source, reason))
        except PeerGone:
            pass

    def abort(self) -> None:
        """Abort from another thread (the control API): A-ABORT, then unblock the reader.

        An SSL connection cannot be written by one thread while another reads it (OpenSSL's
        objects are not thread-safe): there the TCP connection is just shut down.
        """
        self._aborted_locally = True
        if not isinstance(self.sock, ssl.SSLSocket) or threading.get_ident() == self._owner:
            self.send_abort(ABORT_SERVICE_USER, REASON_NOT_SPECIFIED)
        try:
            socket.socket.shutdown(self.sock, socket.SHUT_RDWR)
        except OSError:
            pass

    def abort_from_signal_handler(self) -> None:
        """abort() for a signal handler that interrupted the serving thread: in a thread of its
        own, because the interrupted code may hold the send lock."""
        threading.Thread(target=self.abort, daemon=True).start()

    # ---- association establishment ------------------------------------------
    def establish(self) -> bool:
        # -ta bounds the whole A-ASSOCIATE-RQ, not each read: a byte now and then does not hold us.
        self.sock.settimeout(self.config.acse_timeout)
        if self.config.acse_timeout:
            self._deadline = time.monotonic() + self.config.acse_timeout
        try:
            pdu_type, body = self.read_pdu()
        finally:
            self._deadline = None
        if pdu_type != PDU_ASSOCIATE_RQ:
            raise ProtocolError(f"expected A-ASSOCIATE-RQ, got PDU type 0x{pdu_type:02x}")
        answer = acceptance.answer(body, self.config, self.on_requested)
        self.request = request = answer.request
        self.ctx.calling_ae, self.ctx.called_ae = request.calling_ae_title, request.called_ae_title
        for note in answer.notes:
            LOG.warning("association from %s (%s): %s", request.calling_ae_title, self.ctx.peer, note)
        if answer.rejection is not None:
            LOG.warning("rejecting association from %s (%s): %s", request.calling_ae_title, self.ctx.peer,
                        answer.rejection[3])
            self.rejection = answer.rejection
            self.send(answer.pdu)
            self.outcome = "rejected"
            return False
        self.contexts = answer.contexts
        self.send(answer.pdu)
        self.established = True
        self.outcome = "aborted"
        return True

    # ---- data transfer --------------------------------------------------------
    def serve(self) -> None:
        timeout = min(t for t in (self.config.socket_timeout, self.config.dimse_timeout, 1 << 30) if t and t > 0) or None
        self.sock.settimeout(None if timeout == 1 << 30 else timeout)
        command_buf = bytearray()
        command_context_id: int | None = None  # of the first fragment of the command set being read
        command: Command | None = None
        context: Context | None = None
        receiving = False
        while True:
            pdu_type, body = self.read_pdu()
            if pdu_type == PDU_RELEASE_RQ:
                if receiving and command is not None:
                    # DCMTK answers A-RELEASE-RP here too; the object was never acknowledged.
                    LOG.warning("A-RELEASE-RQ from %s in the middle of the data set of the C-STORE-RQ of %s "
                                "(message %d): the partial object is dropped", self.ctx.peer,
                                command.AffectedSOPInstanceUID or "an unnamed SOP instance", command.message_id)
                    self._drop_partial_object()
                self.send(RELEASE_RP)
                self.outcome = "released"
                return
            if pdu_type == PDU_ABORT:
                self.outcome = "aborted"
                LOG.info("association aborted by the peer")
                return
            if pdu_type != PDU_P_DATA:
                raise ProtocolError(f"unexpected PDU type 0x{pdu_type:02x} during data transfer")
            offset, end = 0, len(body)
            if end == 0:
                raise ProtocolError("P-DATA-TF PDU without any PDV item", REASON_INVALID_PARAMETER)
            while offset < end:
                if offset + 6 > end:
                    raise ProtocolError("truncated PDV item", REASON_INVALID_PARAMETER)
                item_length, context_id, header = PDV_HEADER.unpack_from(body, offset)
                value = body[offset + 6:offset + 4 + item_length]
                offset += 4 + item_length
                if item_length < 2 or offset > end:
                    raise ProtocolError("PDV item length out of range", REASON_INVALID_PARAMETER)
                if len(value) % 2:
                    # Data elements have even lengths; DCMTK aborts too ("Odd Fragment Length").
                    raise ProtocolError(f"PDV fragment of odd length {len(value)} on presentation context "
                                        f"{context_id}", REASON_INVALID_PARAMETER)
                if header & 1:  # command fragment
                    if receiving:
                        raise ProtocolError("command fragment inside a data set")
                    if command_context_id is None:
                        command_context_id = context_id
                    elif context_id != command_context_id:
                        raise ProtocolError(f"command set fragments on presentation contexts {command_context_id} "
                                            f"and {context_id}", REASON_INVALID_PARAMETER)
                    if len(command_buf) + len(value) > MAX_COMMAND_SET:
                        raise ProtocolError(f"command set larger than {MAX_COMMAND_SET} bytes (no real command "
                                            f"set is)", REASON_INVALID_PARAMETER)
                    command_buf += value
                    if header & 2:
                        context = self.contexts.get(context_id)
                        if context is None:
                            raise ProtocolError(f"message on presentation context {context_id}, which was not accepted")
                        command = decode_command(command_buf)
                        command_buf = bytearray()
                        command_context_id = None
                        if command.data_set_type == NO_DATA_SET:
                            self.dispatch(command, context)
                            command = None
                        elif command.command_field == C_STORE_RQ:
                            self.ctx.begin(command, context)
                            receiving = True
                        else:
                            raise ProtocolError(f"unsupported DIMSE command 0x{command.command_field:04x}")
                else:  # data set fragment
                    if not receiving or command is None or context is None:
                        raise ProtocolError("data set fragment without a C-STORE-RQ command")
                    if context_id != context.context_id:
                        raise ProtocolError(f"data set on presentation context {context_id}, its command on "
                                            f"{context.context_id}")
                    self.ctx.fragment(value)
                    if self._aborted_locally:
                        raise PeerGone("aborted locally")
                    if header & 2:
                        receiving = False
                        self.dispatch(command, context)
                        command = None

    def _drop_partial_object(self) -> None:
        self.ctx.drop()

    def dispatch(self, command: Command, context: Context) -> None:
        if command.command_field == C_ECHO_RQ:
            self.send_response(context, encode_response(C_ECHO_RSP, command.message_id, STATUS_SUCCESS,
                                                        command.AffectedSOPClassUID, None))
        elif command.command_field == C_STORE_RQ:
            status = self.ctx.end(command, context)
            if self._aborted_locally:
                raise PeerGone("aborted locally")
            self.send_response(context, encode_response(C_STORE_RSP, command.message_id, status,
                                                        command.AffectedSOPClassUID,
                                                        command.AffectedSOPInstanceUID))
        elif command.command_field == C_CANCEL_RQ:
            return
        else:
            raise ProtocolError(f"unsupported DIMSE command 0x{command.command_field:04x}")

    def send_response(self, context: Context, command_set: bytes) -> None:
        # One PDV (command, last fragment) in one P-DATA-TF, sent in one call: no Nagle stalls.
        self.send(command_pdu(context.context_id, command_set))

    def run(self) -> None:
        """Establish, serve, and end the association whatever happens; never raises."""
        started = time.monotonic()
        try:
            if self.establish():
                self.ctx.emit(Event.ASSOCIATION_ACCEPTED, {"calling_ae": self.ctx.calling_ae,
                                                       "called_ae": self.ctx.called_ae, "peer": self.ctx.peer})
                self.serve()
        except ProtocolError as exc:
            LOG.warning("aborting the association with %s: %s", self.ctx.peer, exc)
            self.send_abort(ABORT_SERVICE_PROVIDER, exc.reason)
            self.outcome = "aborted"
        except PeerGone as exc:
            if self.established and self.outcome not in ("released",):
                level = logging.INFO if self._aborted_locally else logging.WARNING
                LOG.log(level, "association with %s ended: %s", self.ctx.peer, exc)
                if not self._aborted_locally and "timed out" in str(exc):
                    self.send_abort(ABORT_SERVICE_PROVIDER, REASON_NOT_SPECIFIED)
            elif not self.established and self.outcome != "rejected":
                LOG.info("connection from %s ended before an association: %s", self.ctx.peer, exc)
                self.outcome = "aborted"
        except Exception:  # a bug of ours: this association ends, the worker and the others go on
            LOG.exception("internal error in the association with %s; aborting it", self.ctx.peer)
            self.send_abort(ABORT_SERVICE_PROVIDER, REASON_NOT_SPECIFIED)
            self.outcome = "aborted"
        finally:
            self._drop_partial_object()
            self.duration = time.monotonic() - started


def serve(sock: socket.socket, config: Settings, ctx: Receiver, emit: Callable[[str, dict[str, Any]], None],
          rejection: Callable[[AssociateRequest], Rejection | None],
          on_association: Callable[[Any], None] | None) -> dict[str, Any]:
    """Serve one association with the engine; returns its summary (as scp.serve_association does).

    ``rejection`` applies the caller's rules (--refuse, --reject, admission) to a valid request.
    """
    summary: dict[str, Any] = {"peer": ctx.peer, "outcome": "aborted"}

    def on_requested(request: AssociateRequest) -> Rejection | None:
        ctx.calling_ae, ctx.called_ae = request.calling_ae_title, request.called_ae_title
        emit(Event.ASSOCIATION_REQUESTED, {"calling_ae": ctx.calling_ae, "called_ae": ctx.called_ae, "peer": ctx.peer})
        return rejection(request)

    assoc = Association(sock, config, ctx, on_requested)
    ctx.abort = assoc.abort
    if on_association is not None:
        on_association(assoc)
    assoc.run()
    if assoc.rejection is not None:
        summary["reject_reason"], summary["reject_code"] = assoc.rejection[3:]
    summary["outcome"] = assoc.outcome
    summary["duration"] = assoc.duration
    return summary
