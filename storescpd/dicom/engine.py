"""The association engine: a single-threaded DICOM upper layer for the SCP role.

pynetdicom decodes and encodes the A-ASSOCIATE PDUs and negotiates the presentation contexts
(``pynetdicom.pdu``, ``pynetdicom.presentation``): those run once per association. The hot
path — P-DATA-TF PDUs carrying C-STORE data — is ours: one thread, ``recv_into`` a reused
buffer, each data fragment written to the staging file as a memoryview slice, the C-STORE
response encoded from a handful of fields and sent in one ``sendall``. No queues, no polling
threads: per-object cost is a few system calls plus the fsyncs that durability requires.
"""

from __future__ import annotations

import logging
import socket
import ssl
import struct
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Protocol

from pynetdicom.pdu import A_ASSOCIATE_AC, A_ASSOCIATE_RQ
from pynetdicom.pdu_primitives import (
    A_ASSOCIATE,
    ImplementationClassUIDNotification,
    ImplementationVersionNameNotification,
    MaximumLengthNotification,
    SCP_SCU_RoleSelectionNegotiation,
    SOPClassExtendedNegotiation,
)
from pynetdicom.presentation import PresentationContext, negotiate_as_acceptor, negotiate_unrestricted

from storescpd import IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME
from storescpd.dicom import acse
from storescpd.messages import Event

LOG = logging.getLogger("storescpd")

PDU_ASSOCIATE_RQ = 0x01
PDU_P_DATA = 0x04
PDU_RELEASE_RQ = 0x05
PDU_RELEASE_RP = 0x06
PDU_ABORT = 0x07

C_STORE_RQ = 0x0001
C_STORE_RSP = 0x8001
C_ECHO_RQ = 0x0030
C_ECHO_RSP = 0x8030
C_CANCEL_RQ = 0x0FFF
NO_DATA_SET = 0x0101
STATUS_SUCCESS = 0x0000

ABORT_SERVICE_USER = 0x00
ABORT_SERVICE_PROVIDER = 0x02
REASON_NOT_SPECIFIED = 0x00
REASON_UNEXPECTED_PDU = 0x02
REASON_INVALID_PARAMETER = 0x06

READ_AHEAD = 256 << 10  # bytes asked of each recv_into beyond the PDU being read
MAX_ASSOCIATE_PDU = 1 << 20  # an A-ASSOCIATE-RQ larger than this is an abort, not an allocation
# A command set holds a few bounded elements (UIDs of at most 64 bytes, AE titles, US/UL values):
# a C-STORE-RQ is under 300 bytes, and even an N-GET listing 10,000 attribute tags (0000,1005) stays
# under 41 KiB. Beyond 64 KiB the peer is not sending a command but filling our memory.
MAX_COMMAND_SET = 64 << 10
_HEADER = struct.Struct(">BxL")
_PDV_HEADER = struct.Struct(">LBB")
_ELEMENT = struct.Struct("<HHL")


class Settings(Protocol):
    """What the engine reads of the configuration (storescpd.config.settings.Config has it all)."""

    max_pdu: int
    acse_timeout: int
    socket_timeout: int
    dimse_timeout: int
    verbose_pc: bool
    promiscuous: bool
    config_file: list[str] | None
    transfer_syntaxes: str


class Receiver(Protocol):
    """Who the engine hands an association's events and each C-STORE data set to: the store layer's
    ``StoreContext``. The engine owns the protocol; the receiver owns the staging file."""

    peer: str
    calling_ae: str
    called_ae: str
    abort: Callable[[], None]  # set by ``serve``: aborts the running association

    def emit(self, kind: str, data: dict[str, Any]) -> None: ...

    def begin(self, command: "Command", context: "Context") -> None:
        """A C-STORE-RQ announced a data set: open where it goes."""

    def fragment(self, data: memoryview) -> None:
        """The next data set fragment, in order."""

    def end(self, command: "Command", context: "Context") -> int:
        """The last fragment arrived: store it; the DIMSE status to answer (0x0000 only once durable)."""

    def drop(self) -> None:
        """The data set will not be completed (release, abort, error): forget it."""


class PeerGone(Exception):
    """The connection ended or timed out; the association is over."""


class ProtocolError(Exception):
    """The peer broke the protocol; we abort with the reason given."""

    def __init__(self, message: str, reason: int = REASON_UNEXPECTED_PDU) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass
class Command:
    """The fields of a DIMSE request command set that an SCP needs."""

    command_field: int
    message_id: int
    data_set_type: int
    AffectedSOPClassUID: str = ""
    AffectedSOPInstanceUID: str = ""


@dataclass
class Context:
    context_id: int
    abstract_syntax: str
    transfer_syntax: str


def decode_command(data: bytes | bytearray) -> Command:
    """Implicit VR little endian group 0000 elements (PS3.7 E.1)."""
    fields: dict[int, bytes] = {}
    view = memoryview(data)
    offset, end = 0, len(data)
    while offset + 8 <= end:
        group, element, length = _ELEMENT.unpack_from(view, offset)
        offset += 8
        if group != 0 or offset + length > end:
            raise ProtocolError("malformed command set", REASON_INVALID_PARAMETER)
        fields[element] = bytes(view[offset:offset + length])
        offset += length

    def text(element: int) -> str:
        # latin-1: every byte stays distinct, so a stray byte never makes two UIDs look equal
        return fields.get(element, b"").decode("latin-1").rstrip("\0 ")

    def us(element: int) -> int | None:
        raw = fields.get(element)
        return struct.unpack("<H", raw[:2])[0] if raw and len(raw) >= 2 else None

    command_field, data_set_type = us(0x0100), us(0x0800)
    if command_field is None:
        raise ProtocolError("command set without Command Field", REASON_INVALID_PARAMETER)
    return Command(
        # Any Command Data Set Type but 0x0101 announces a data set (0x0000 is a valid one).
        command_field=command_field, message_id=us(0x0110) or 0,
        data_set_type=NO_DATA_SET if data_set_type is None else data_set_type,
        AffectedSOPClassUID=text(0x0002), AffectedSOPInstanceUID=text(0x1000),
    )


def _element(element: int, value: bytes) -> bytes:
    if len(value) % 2:
        value += b"\0"
    return _ELEMENT.pack(0, element, len(value)) + value


def encode_response(command_field: int, responding_to: int, status: int, sop_class: str,
                    sop_instance: str | None) -> bytes:
    body = _element(0x0002, sop_class.encode())
    body += _element(0x0100, struct.pack("<H", command_field))
    body += _element(0x0120, struct.pack("<H", responding_to))
    body += _element(0x0800, struct.pack("<H", NO_DATA_SET))
    body += _element(0x0900, struct.pack("<H", status))
    if sop_instance is not None:
        body += _element(0x1000, sop_instance.encode())
    return _element(0x0000, struct.pack("<L", len(body))) + body


_contexts_cache: dict[int, tuple[Settings, list[PresentationContext]]] = {}


def _presentation_contexts(config: Settings, accepted: list[tuple[str, list[str], bool | None, bool | None]]
                           ) -> list[PresentationContext]:
    """pynetdicom's validating PresentationContext objects, built once per configuration."""
    cached = _contexts_cache.get(id(config))
    if cached is not None and cached[0] is config:
        return cached[1]
    ours = []
    for i, (uid, syntaxes, scu_role, scp_role) in enumerate(accepted):
        cx = PresentationContext()
        cx.context_id = (2 * i + 1) % 256 or 1
        cx.abstract_syntax = uid
        cx.transfer_syntax = list(syntaxes)
        cx.scu_role, cx.scp_role = scu_role, scp_role
        ours.append(cx)
    _contexts_cache.clear()
    _contexts_cache[id(config)] = (config, ours)
    return ours


_table_cache: dict[int, tuple[Settings, dict[str, list[str]]]] = {}


def _supported_table(config: Settings, accepted: list[tuple[str, list[str], bool | None, bool | None]]
                     ) -> dict[str, list[str]]:
    """{abstract syntax: our transfer syntaxes, most preferred first}, once per configuration."""
    cached = _table_cache.get(id(config))
    if cached is not None and cached[0] is config:
        return cached[1]
    table = {uid: list(syntaxes) for uid, syntaxes, _scu, _scp in accepted}
    _table_cache.clear()
    _table_cache[id(config)] = (config, table)
    return table


def prepare(config: Settings) -> None:
    """Build the per-configuration negotiation tables now, so that forked children inherit them
    instead of each spending milliseconds on it (the supervisor calls this; it speaks no DICOM)."""
    from storescpd.dicom.negotiation import acceptor_contexts

    accepted = acceptor_contexts(config)
    _presentation_contexts(config, accepted)
    _supported_table(config, accepted)


def _one_result_per_id(results: list[PresentationContext]) -> list[PresentationContext]:
    """As acse.negotiate answers (and DCMTK 3.6.7): a repeated context ID once, accepted if any
    of its proposals is."""
    kept: dict[int, PresentationContext] = {}
    for cx in results:
        earlier = kept.get(cx.context_id)
        if earlier is None or earlier.result != acse.RESULT_ACCEPTANCE:
            kept[cx.context_id] = cx
    return list(kept.values())


class Association:
    """One association on a connected socket, served to its end in the calling thread."""

    def __init__(self, sock: socket.socket, config: Settings, ctx: Receiver,
                 on_requested: Callable[[acse.AssociateRequest], tuple[int, int, int, str, str] | None],
                 acceptor_contexts: list[tuple[str, list[str], bool | None, bool | None]],
                 extended: dict[str, bytes]) -> None:
        self.sock = sock
        self.config = config
        self.ctx = ctx
        self.on_requested = on_requested
        self.acceptor_contexts = acceptor_contexts
        self.extended = extended
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
        self.request: acse.AssociateRequest | None = None

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
        pdu_type, length = _HEADER.unpack(header)
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
            self.send(bytes([PDU_ABORT, 0]) + struct.pack(">L", 4) + bytes([0, 0, source, reason]))
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
        try:
            request = acse.parse_request(body)
        except acse.MalformedRequest as exc:
            raise ProtocolError(f"malformed A-ASSOCIATE-RQ: {exc}", REASON_INVALID_PARAMETER) from None
        self.request = request
        refused = acse.rejection(request)
        if refused is not None:
            self.ctx.calling_ae, self.ctx.called_ae = request.calling_ae_title, request.called_ae_title
            LOG.warning("rejecting association from %s (%s): %s", request.calling_ae_title, self.ctx.peer, refused[3])
            self.send(acse.encode_reject(*refused[:3]))
            self.outcome = "rejected"
            return False
        rejection = self.on_requested(request)
        if rejection is not None:
            self.send(acse.encode_reject(*rejection[:3]))
            self.outcome = "rejected"
            return False
        needs_library = (request.has_role_selection or request.has_extended_negotiation
                         or self.config.promiscuous or self.config.config_file)
        if needs_library:
            rq = A_ASSOCIATE_RQ()
            try:
                rq.decode(bytes([PDU_ASSOCIATE_RQ, 0]) + struct.pack(">L", len(body)) + bytes(body))
                primitive = rq.to_primitive()
            except (ValueError, struct.error, IndexError) as exc:  # pynetdicom validates what it reads
                raise ProtocolError(f"A-ASSOCIATE-RQ that pynetdicom cannot read: {exc}",
                                    REASON_INVALID_PARAMETER) from None
            self._accept(primitive)
        else:
            self._accept_directly(request)
        self.established = True
        self.outcome = "aborted"
        return True

    def _accept_directly(self, request: acse.AssociateRequest) -> None:
        results = acse.negotiate(request, _supported_table(self.config, self.acceptor_contexts))
        self.contexts = {r.context_id: Context(r.context_id, r.abstract_syntax, r.transfer_syntax)
                         for r in results if r.result == acse.RESULT_ACCEPTANCE}
        self.send(acse.encode_accept(request, results, self.config.max_pdu, IMPLEMENTATION_CLASS_UID,
                                     IMPLEMENTATION_VERSION_NAME))
        if self.config.verbose_pc:
            for r in results:
                LOG.info("  context %d %s: %s", r.context_id, r.abstract_syntax,
                         f"accepted with {r.transfer_syntax}" if r.result == 0 else f"refused ({r.result})")

    def _accept(self, rq: A_ASSOCIATE) -> None:
        ours = _presentation_contexts(self.config, self.acceptor_contexts)
        roles = {item.sop_class_uid: (item.scu_role, item.scp_role)
                 for item in rq.user_information if isinstance(item, SCP_SCU_RoleSelectionNegotiation)}
        negotiate = negotiate_unrestricted if self.config.promiscuous else negotiate_as_acceptor
        results, role_items = negotiate(rq.presentation_context_definition_list, ours, roles)
        results = _one_result_per_id(results)
        for cx in results:
            if cx.result == 0x00:
                self.contexts[cx.context_id] = Context(cx.context_id, str(cx.abstract_syntax),
                                                       str(cx.transfer_syntax[0]))
        ac = A_ASSOCIATE()
        ac.application_context_name = rq.application_context_name
        ac.calling_ae_title = rq.calling_ae_title
        ac.called_ae_title = rq.called_ae_title
        ac.result = 0x00
        ac.presentation_context_definition_results_list = results
        max_length = MaximumLengthNotification()
        max_length.maximum_length_received = self.config.max_pdu
        impl_uid = ImplementationClassUIDNotification()
        impl_uid.implementation_class_uid = IMPLEMENTATION_CLASS_UID
        impl_name = ImplementationVersionNameNotification()
        impl_name.implementation_version_name = IMPLEMENTATION_VERSION_NAME
        info: list[Any] = [max_length, impl_uid, impl_name, *role_items]
        for item in rq.user_information:
            if isinstance(item, SOPClassExtendedNegotiation) and str(item.sop_class_uid) in self.extended:
                answer = SOPClassExtendedNegotiation()
                answer.sop_class_uid = item.sop_class_uid
                answer.service_class_application_information = self.extended[str(item.sop_class_uid)]
                info.append(answer)
        ac.user_information = info
        pdu = A_ASSOCIATE_AC()
        pdu.from_primitive(ac)
        self.send(pdu.encode())
        if self.config.verbose_pc:
            for cx in results:
                LOG.info("  context %d %s: %s", cx.context_id, cx.abstract_syntax,
                         f"accepted with {cx.transfer_syntax[0]}" if cx.result == 0 else f"refused ({cx.result})")

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
                self.send(bytes([PDU_RELEASE_RP, 0, 0, 0, 0, 4, 0, 0, 0, 0]))
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
                item_length, context_id, header = _PDV_HEADER.unpack_from(body, offset)
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
        pdv = _PDV_HEADER.pack(len(command_set) + 2, context.context_id, 0x03) + command_set
        self.send(bytes([PDU_P_DATA, 0]) + struct.pack(">L", len(pdv)) + pdv)

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
          rejection: Callable[[acse.AssociateRequest], tuple[int, int, int, str, str] | None],
          on_association: Callable[[Any], None] | None) -> dict[str, Any]:
    """Serve one association with the engine; returns its summary (as scp.serve_association does)."""
    from storescpd.dicom.negotiation import acceptor_contexts, extended_negotiation

    summary: dict[str, Any] = {"peer": ctx.peer, "outcome": "aborted"}

    def on_requested(primitive: acse.AssociateRequest) -> tuple[int, int, int, str, str] | None:
        ctx.calling_ae = str(primitive.calling_ae_title or "").strip()
        ctx.called_ae = str(primitive.called_ae_title or "").strip()
        emit(Event.ASSOCIATION_REQUESTED, {"calling_ae": ctx.calling_ae, "called_ae": ctx.called_ae, "peer": ctx.peer})
        reason = rejection(primitive)
        if reason is not None:
            LOG.warning("rejecting association from %s (%s): %s", ctx.calling_ae, ctx.peer, reason[3])
            summary["reject_reason"], summary["reject_code"] = reason[3], reason[4]
        return reason

    assoc = Association(sock, config, ctx, on_requested, acceptor_contexts(config), extended_negotiation(config))
    ctx.abort = assoc.abort
    if on_association is not None:
        on_association(assoc)
    assoc.run()
    summary["outcome"] = assoc.outcome
    summary["duration"] = assoc.duration
    return summary
