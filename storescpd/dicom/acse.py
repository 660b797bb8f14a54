"""A-ASSOCIATE-RQ parsing, presentation context negotiation and A-ASSOCIATE-AC/RJ encoding
(PS3.8 9.3.2-9.3.4, 7.1.1.13), for the common case: no role selection, no extended negotiation.

pynetdicom's PDU classes validate every UID they build: for a request with ~120 presentation
contexts (what DCMTK's storescu proposes) that costs 10-15 ms per association. This does the
same work with ``struct`` in well under a millisecond. Requests that carry SCP/SCU role
selection or SOP class extended negotiation, and ``-xf``/``-pm`` configurations, still go
through pynetdicom's negotiation (engine.py decides).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

APPLICATION_CONTEXT = "1.2.840.10008.3.1.1.1"
PROTOCOL_VERSION_1 = 0x0001  # bit 0 of the Protocol-version field (PS3.8 9.3.2)

RESULT_REJECTED_PERMANENT = 1
SOURCE_SERVICE_USER = 1
SOURCE_SERVICE_PROVIDER_ACSE = 2
REASON_APPLICATION_CONTEXT_NOT_SUPPORTED = 2  # with SOURCE_SERVICE_USER
REASON_PROTOCOL_VERSION_NOT_SUPPORTED = 2  # with SOURCE_SERVICE_PROVIDER_ACSE

RESULT_ACCEPTANCE = 0
RESULT_ABSTRACT_SYNTAX_NOT_SUPPORTED = 3
RESULT_TRANSFER_SYNTAXES_NOT_SUPPORTED = 4

_ITEM = struct.Struct(">BxH")


class MalformedRequest(ValueError):
    pass


@dataclass
class ProposedContext:
    context_id: int
    abstract_syntax: str = ""
    transfer_syntaxes: list[str] = field(default_factory=list)


@dataclass
class AssociateRequest:
    """What an SCP needs of an A-ASSOCIATE-RQ (attribute names as pynetdicom's A_ASSOCIATE)."""

    called_ae_title: str
    calling_ae_title: str
    protocol_version: int = PROTOCOL_VERSION_1
    application_context_name: str = ""
    contexts: list[ProposedContext] = field(default_factory=list)
    maximum_length_received: int = 0
    implementation_class_uid: str = ""
    implementation_version_name: str = ""
    has_role_selection: bool = False
    has_extended_negotiation: bool = False


def _text(raw: bytes | memoryview) -> str:
    return bytes(raw).decode("ascii", "replace").rstrip("\0 ").strip()


def _items(body: bytes | memoryview, offset: int) -> list[tuple[int, memoryview]]:
    view = memoryview(body)
    items = []
    while offset < len(view):
        if offset + 4 > len(view):
            raise MalformedRequest("truncated item header")
        item_type, length = _ITEM.unpack_from(view, offset)
        if offset + 4 + length > len(view):
            raise MalformedRequest(f"item 0x{item_type:02x} runs past the end of its PDU")
        items.append((item_type, view[offset + 4:offset + 4 + length]))
        offset += 4 + length
    return items


def parse_request(body: bytes | memoryview) -> AssociateRequest:
    """The variable part of an A-ASSOCIATE-RQ PDU (after its 6-byte header)."""
    if len(body) < 68:
        raise MalformedRequest("A-ASSOCIATE-RQ shorter than its fixed fields")
    request = AssociateRequest(called_ae_title=_text(body[4:20]), calling_ae_title=_text(body[20:36]),
                               protocol_version=struct.unpack_from(">H", body, 0)[0])
    for item_type, value in _items(body, 68):
        if item_type == 0x10:
            request.application_context_name = _text(value)
        elif item_type == 0x20:
            if len(value) < 4:
                raise MalformedRequest("presentation context item too short")
            context = ProposedContext(value[0])
            for sub_type, sub in _items(value, 4):
                if sub_type == 0x30:
                    context.abstract_syntax = _text(sub)
                elif sub_type == 0x40:
                    context.transfer_syntaxes.append(_text(sub))
            if not context.transfer_syntaxes:
                # DCMTK fails such a request too ("Presentation Context translation failure"); and a
                # request of empty items is cheap to send and was costly to answer.
                raise MalformedRequest(f"presentation context {context.context_id} proposes no transfer syntax")
            request.contexts.append(context)
        elif item_type == 0x50:
            _user_information(request, value)
    return request


def _user_information(request: AssociateRequest, value: memoryview) -> None:
    for sub_type, sub in _items(value, 0):
        if sub_type == 0x51 and len(sub) >= 4:
            request.maximum_length_received = struct.unpack_from(">L", sub)[0]
        elif sub_type == 0x52:
            request.implementation_class_uid = _text(sub)
        elif sub_type == 0x55:
            request.implementation_version_name = _text(sub)
        elif sub_type == 0x54:
            request.has_role_selection = True
        elif sub_type == 0x56:
            request.has_extended_negotiation = True


def rejection(request: AssociateRequest) -> tuple[int, int, int, str] | None:
    """(result, source, reason, cause) for a request DCMTK rejects before looking at its contexts."""
    if not request.protocol_version & PROTOCOL_VERSION_1:
        return (RESULT_REJECTED_PERMANENT, SOURCE_SERVICE_PROVIDER_ACSE, REASON_PROTOCOL_VERSION_NOT_SUPPORTED,
                f"protocol version 0x{request.protocol_version:04x} does not include version 1")
    if request.application_context_name != APPLICATION_CONTEXT:
        return (RESULT_REJECTED_PERMANENT, SOURCE_SERVICE_USER, REASON_APPLICATION_CONTEXT_NOT_SUPPORTED,
                f"application context name {request.application_context_name!r} is not {APPLICATION_CONTEXT}")
    return None


@dataclass
class ContextResult:
    context_id: int
    result: int
    transfer_syntax: str
    abstract_syntax: str


def negotiate(request: AssociateRequest, supported: dict[str, list[str]]) -> list[ContextResult]:
    """For each proposed context: our first preferred transfer syntax that the peer proposed.

    One result per context ID, as DCMTK 3.6.7 answers: a repeated ID is accepted if any of its
    proposals is. So the answer has at most 256 results however many items the request holds.
    """
    results: dict[int, ContextResult] = {}
    for proposed in request.contexts:
        earlier = results.get(proposed.context_id)
        if earlier is None or earlier.result != RESULT_ACCEPTANCE:
            results[proposed.context_id] = _negotiate_one(proposed, supported)
    return list(results.values())


def _negotiate_one(proposed: ProposedContext, supported: dict[str, list[str]]) -> ContextResult:
    ours = supported.get(proposed.abstract_syntax)
    first = proposed.transfer_syntaxes[0] if proposed.transfer_syntaxes else ""
    if ours is None:
        return ContextResult(proposed.context_id, RESULT_ABSTRACT_SYNTAX_NOT_SUPPORTED, first, proposed.abstract_syntax)
    chosen = next((ts for ts in ours if ts in proposed.transfer_syntaxes), None)
    if chosen is None:
        return ContextResult(proposed.context_id, RESULT_TRANSFER_SYNTAXES_NOT_SUPPORTED, first,
                             proposed.abstract_syntax)
    return ContextResult(proposed.context_id, RESULT_ACCEPTANCE, chosen, proposed.abstract_syntax)


def _item(item_type: int, value: bytes) -> bytes:
    return _ITEM.pack(item_type, len(value)) + value


def _uid(value: str) -> bytes:
    # PS3.8: UIDs in PDUs are not padded. A refused context echoes the peer's first transfer syntax,
    # read with "replace": any byte it sent comes back as "?", never as an encoding error.
    return value.encode("ascii", "replace")


def encode_accept(request: AssociateRequest, results: list[ContextResult], max_pdu: int,
                  implementation_class_uid: str, implementation_version_name: str) -> bytes:
    user = _item(0x51, struct.pack(">L", max_pdu)) + _item(0x52, _uid(implementation_class_uid))
    user += _item(0x55, implementation_version_name.encode("ascii"))
    body = b"".join([
        struct.pack(">HH", PROTOCOL_VERSION_1, 0),
        request.called_ae_title.encode("ascii", "replace").ljust(16)[:16],
        request.calling_ae_title.encode("ascii", "replace").ljust(16)[:16],
        bytes(32),
        _item(0x10, _uid(request.application_context_name or APPLICATION_CONTEXT)),
        *(_item(0x21, bytes([r.context_id, 0, r.result, 0]) + _item(0x40, _uid(r.transfer_syntax)))
          for r in results),
        _item(0x50, user),
    ])
    return struct.pack(">BxL", 0x02, len(body)) + body


def encode_reject(result: int, source: int, reason: int) -> bytes:
    return struct.pack(">BxLBBBB", 0x03, 4, 0, result, source, reason)
