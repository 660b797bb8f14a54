"""The A-ASSOCIATE-RQ, read as strictly as PS3.8 9.3.2 and Annex D define it.

Every request goes through ``parse_request``, whichever negotiation answers it afterwards
(``acceptance``): a request whose items disagree with their own lengths is a ``MalformedRequest``
(the association is aborted), never a guess. ``struct`` does the work: pynetdicom's validating
PDU classes cost 10-15 ms for the ~120 presentation contexts DCMTK's storescu proposes, this
well under a millisecond. Presentation context IDs that PS3.8 9.3.2.2 does not allow (even, 0,
proposed twice) are recorded with the reason, for the negotiation to refuse.
"""

from __future__ import annotations

import struct
from collections import Counter
from dataclasses import dataclass, field
from typing import Sequence

APPLICATION_CONTEXT = "1.2.840.10008.3.1.1.1"
PROTOCOL_VERSION_1 = 0x0001  # bit 0 of the Protocol-version field (PS3.8 9.3.2)
MAX_UID = 64  # bytes (PS3.5 9.1)

APPLICATION_CONTEXT_ITEM = 0x10
PRESENTATION_CONTEXT_RQ = 0x20
PRESENTATION_CONTEXT_AC = 0x21
ABSTRACT_SYNTAX = 0x30
TRANSFER_SYNTAX = 0x40
USER_INFORMATION = 0x50
MAXIMUM_LENGTH = 0x51
IMPLEMENTATION_CLASS_UID = 0x52
ASYNCHRONOUS_OPERATIONS_WINDOW = 0x53
ROLE_SELECTION = 0x54
IMPLEMENTATION_VERSION_NAME = 0x55
SOP_CLASS_EXTENDED_NEGOTIATION = 0x56
SOP_CLASS_COMMON_EXTENDED_NEGOTIATION = 0x57
USER_IDENTITY = 0x58

ITEM_NAMES = {
    APPLICATION_CONTEXT_ITEM: "application context item", PRESENTATION_CONTEXT_RQ: "presentation context item",
    ABSTRACT_SYNTAX: "abstract syntax sub-item", TRANSFER_SYNTAX: "transfer syntax sub-item",
    USER_INFORMATION: "user information item", MAXIMUM_LENGTH: "maximum length sub-item",
    IMPLEMENTATION_CLASS_UID: "implementation class UID sub-item",
    ASYNCHRONOUS_OPERATIONS_WINDOW: "asynchronous operations window sub-item",
    ROLE_SELECTION: "SCP/SCU role selection sub-item", IMPLEMENTATION_VERSION_NAME: "implementation version name sub-item",
    SOP_CLASS_EXTENDED_NEGOTIATION: "SOP class extended negotiation sub-item",
    SOP_CLASS_COMMON_EXTENDED_NEGOTIATION: "SOP class common extended negotiation sub-item",
    USER_IDENTITY: "user identity sub-item",
}
# Sub-items whose length PS3.7 Annex D fixes
_FIXED_LENGTH = {MAXIMUM_LENGTH: (4, "PS3.8 D.1"), ASYNCHRONOUS_OPERATIONS_WINDOW: (4, "PS3.7 D.3.3.3")}

_ITEM = struct.Struct(">BxH")
_UINT16 = struct.Struct(">H")


class MalformedRequest(ValueError):
    """The request breaks PS3.8's encoding; the message names what and where."""


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
    roles: dict[str, tuple[bool, bool]] = field(default_factory=dict)  # SOP class: (SCU role, SCP role)
    extended_negotiation: list[str] = field(default_factory=list)  # SOP classes with extended negotiation
    invalid_ids: dict[int, str] = field(default_factory=dict)  # context ID: why PS3.8 does not allow it

    @property
    def has_role_selection(self) -> bool:
        return bool(self.roles)

    @property
    def has_extended_negotiation(self) -> bool:
        return bool(self.extended_negotiation)


def _name(item_type: int) -> str:
    return ITEM_NAMES.get(item_type, f"item of type 0x{item_type:02x}")


def _items(body: memoryview, offset: int, parent: str, number: int | None = None) -> list[tuple[int, memoryview]]:
    """The items that fill ``body`` from ``offset`` to its end exactly, else MalformedRequest (naming
    the ``parent`` item, and its ``number`` if it has one)."""
    items = []
    end = len(body)
    while offset < end:
        if offset + 4 > end:
            raise MalformedRequest(f"{end - offset} bytes left at the end of the {_numbered(parent, number)}, too "
                                   "few for an item")
        item_type, length = _ITEM.unpack_from(body, offset)
        if offset + 4 + length > end:
            raise MalformedRequest(f"{_name(item_type)} of {length} bytes runs past the end of the "
                                   f"{_numbered(parent, number)}")
        items.append((item_type, body[offset + 4:offset + 4 + length]))
        offset += 4 + length
    return items


def _numbered(parent: str, number: int | None) -> str:
    return parent if number is None else f"{parent} {number}"


def _text(raw: memoryview) -> str:
    return bytes(raw).decode("ascii", "replace").rstrip("\0 ").strip()


def _uid(raw: memoryview, what: str) -> str:
    if len(raw) > MAX_UID:
        raise _too_long(what, len(raw))
    return _text(raw)


def _too_long(what: str, length: int) -> MalformedRequest:
    return MalformedRequest(f"{what} has {length} bytes; a UID has at most {MAX_UID}")


def parse_request(body: bytes | memoryview) -> AssociateRequest:
    """The variable part of an A-ASSOCIATE-RQ PDU (after its 6-byte header)."""
    view = memoryview(body)
    if len(view) < 68:
        raise MalformedRequest("A-ASSOCIATE-RQ shorter than its fixed fields")
    request = AssociateRequest(called_ae_title=_text(view[4:20]), calling_ae_title=_text(view[20:36]),
                               protocol_version=_UINT16.unpack_from(view, 0)[0])
    for item_type, value in _items(view, 68, "A-ASSOCIATE-RQ"):
        if item_type == APPLICATION_CONTEXT_ITEM:
            request.application_context_name = _uid(value, "application context name")
        elif item_type == PRESENTATION_CONTEXT_RQ:
            request.contexts.append(_presentation_context(value))
        elif item_type == USER_INFORMATION:
            _user_information(request, value)
    request.invalid_ids = _invalid_ids(request.contexts)
    return request


def _presentation_context(value: memoryview) -> ProposedContext:
    if len(value) < 4:
        raise MalformedRequest(f"presentation context item of {len(value)} bytes, shorter than its 4 fixed bytes")
    context = ProposedContext(value[0])
    abstract_syntaxes = 0
    # This runs for every proposed context (storescu proposes ~120): messages are formatted only on error.
    for sub_type, sub in _items(value, 4, "presentation context item", context.context_id):
        if sub_type == ABSTRACT_SYNTAX or sub_type == TRANSFER_SYNTAX:
            if len(sub) > MAX_UID:
                kind = "abstract" if sub_type == ABSTRACT_SYNTAX else "transfer"
                raise _too_long(f"{kind} syntax of presentation context {context.context_id}", len(sub))
            if sub_type == ABSTRACT_SYNTAX:
                abstract_syntaxes += 1
                context.abstract_syntax = _text(sub)
            else:
                context.transfer_syntaxes.append(_text(sub))
    if abstract_syntaxes > 1:
        raise MalformedRequest(f"presentation context {context.context_id} has {abstract_syntaxes} abstract syntax "
                               "sub-items (PS3.8 9.3.2.2: one)")
    if not context.transfer_syntaxes:
        # DCMTK fails such a request too ("Presentation Context translation failure"); and a
        # request of empty items is cheap to send and was costly to answer.
        raise MalformedRequest(f"presentation context {context.context_id} proposes no transfer syntax")
    return context


def _user_information(request: AssociateRequest, value: memoryview) -> None:
    for sub_type, sub in _items(value, 0, "user information item"):
        fixed = _FIXED_LENGTH.get(sub_type)
        if fixed is not None and len(sub) != fixed[0]:
            raise MalformedRequest(f"{_name(sub_type)} of {len(sub)} bytes, where {fixed[1]} defines {fixed[0]}")
        if sub_type == MAXIMUM_LENGTH:
            request.maximum_length_received = struct.unpack_from(">L", sub)[0]
        elif sub_type == IMPLEMENTATION_CLASS_UID:
            request.implementation_class_uid = _uid(sub, "implementation class UID")
        elif sub_type == IMPLEMENTATION_VERSION_NAME:
            request.implementation_version_name = _text(sub)  # 16 bytes at most, but nothing depends on it
        elif sub_type == ROLE_SELECTION:
            uid, rest = _prefixed_uid(sub, sub_type, "SOP class UID")
            if len(rest) != 2:
                raise MalformedRequest(f"{_name(sub_type)} of {len(sub)} bytes announces a UID of "
                                       f"{len(sub) - 2 - len(rest)} bytes, which leaves {len(rest)} for its 2 role "
                                       "bytes (PS3.7 D.3.3.4)")
            if rest[0] > 1 or rest[1] > 1:
                raise MalformedRequest(f"{_name(sub_type)} for {uid} has roles {rest[0]} and {rest[1]}; a role is 0 "
                                       "or 1 (PS3.7 D.3.3.4)")
            request.roles[uid] = (bool(rest[0]), bool(rest[1]))
        elif sub_type == SOP_CLASS_EXTENDED_NEGOTIATION:
            request.extended_negotiation.append(_prefixed_uid(sub, sub_type, "SOP class UID")[0])
        elif sub_type == SOP_CLASS_COMMON_EXTENDED_NEGOTIATION:
            _check_common_extended_negotiation(sub)
        elif sub_type == USER_IDENTITY:
            _check_user_identity(sub)


def _prefixed_uid(data: memoryview, sub_type: int, what: str = "UID") -> tuple[str, memoryview]:
    """A UID preceded by its 2-byte length, and the bytes after it."""
    value, rest = _prefixed_field(data, sub_type, what)
    return _uid(value, f"the {what} of a {_name(sub_type)}"), rest


def _prefixed_field(data: memoryview, sub_type: int, what: str) -> tuple[memoryview, memoryview]:
    """A field preceded by its 2-byte length, and the bytes after it."""
    if len(data) < 2:
        raise MalformedRequest(f"{_name(sub_type)} ends before the length of its {what}")
    length = _UINT16.unpack_from(data)[0]
    if 2 + length > len(data):
        raise MalformedRequest(f"{_name(sub_type)}: its {what} of {length} bytes runs past its end")
    return data[2:2 + length], data[2 + length:]


def _check_common_extended_negotiation(sub: memoryview) -> None:
    """PS3.7 D.3.3.6: SOP class UID, service class UID, then a list of related general SOP class UIDs."""
    kind = SOP_CLASS_COMMON_EXTENDED_NEGOTIATION
    rest = _prefixed_uid(_prefixed_uid(sub, kind, "SOP class UID")[1], kind, "service class UID")[1]
    related, rest = _prefixed_field(rest, kind, "related general SOP classes")
    if len(rest):
        raise MalformedRequest(f"{_name(kind)} has {len(rest)} bytes after its related general SOP classes")
    while len(related):
        related = _prefixed_uid(related, kind, "related general SOP class UID")[1]


def _check_user_identity(sub: memoryview) -> None:
    """PS3.7 D.3.3.7.1: type, response requested, then the primary and secondary fields with their lengths."""
    if len(sub) < 2:
        raise MalformedRequest(f"{_name(USER_IDENTITY)} of {len(sub)} bytes, too short for its fields")
    rest = _prefixed_field(sub[2:], USER_IDENTITY, "primary field")[1]
    rest = _prefixed_field(rest, USER_IDENTITY, "secondary field")[1]
    if len(rest):
        raise MalformedRequest(f"{_name(USER_IDENTITY)} has {len(rest)} bytes after its secondary field")


def _invalid_ids(contexts: list[ProposedContext]) -> dict[int, str]:
    """Presentation context IDs PS3.8 9.3.2.2 does not allow ("odd integers between 1 and 255", one
    per context; the field is one byte, so none is above 255), with the reason."""
    invalid = {}
    for context_id, times in Counter(c.context_id for c in contexts).items():
        if context_id == 0 or context_id % 2 == 0:
            invalid[context_id] = "zero" if context_id == 0 else "even"
        elif times > 1:
            invalid[context_id] = f"proposed {times} times"
    return invalid


# ---- the answers: A-ASSOCIATE-AC and A-ASSOCIATE-RJ (PS3.8 9.3.3, 9.3.4) ---------------------------

@dataclass
class ContextResult:
    context_id: int
    result: int
    transfer_syntax: str
    abstract_syntax: str


def _item(item_type: int, value: bytes) -> bytes:
    return _ITEM.pack(item_type, len(value)) + value


def _encoded_uid(value: str) -> bytes:
    return value.encode("ascii")  # PS3.8: UIDs in PDUs are not padded


def _with_uid_length(uid: str, rest: bytes = b"") -> bytes:
    encoded = _encoded_uid(uid)
    return _UINT16.pack(len(encoded)) + encoded + rest


def encode_accept(request: AssociateRequest, results: list[ContextResult], max_pdu: int,
                  implementation_class_uid: str, implementation_version_name: str,
                  roles: Sequence[tuple[str, bool, bool]] = (), extended: Sequence[tuple[str, bytes]] = ()) -> bytes:
    """The A-ASSOCIATE-AC: one result per context, then our user information (sub-items in type order)."""
    user = b"".join([
        _item(MAXIMUM_LENGTH, struct.pack(">L", max_pdu)),
        _item(IMPLEMENTATION_CLASS_UID, _encoded_uid(implementation_class_uid)),
        *(_item(ROLE_SELECTION, _with_uid_length(uid, bytes([scu, scp]))) for uid, scu, scp in roles),
        _item(IMPLEMENTATION_VERSION_NAME, implementation_version_name.encode("ascii")),
        *(_item(SOP_CLASS_EXTENDED_NEGOTIATION, _with_uid_length(uid, info)) for uid, info in extended),
    ])
    body = b"".join([
        struct.pack(">HH", PROTOCOL_VERSION_1, 0),
        request.called_ae_title.encode("ascii", "replace").ljust(16)[:16],
        request.calling_ae_title.encode("ascii", "replace").ljust(16)[:16],
        bytes(32),
        _item(APPLICATION_CONTEXT_ITEM, _encoded_uid(request.application_context_name or APPLICATION_CONTEXT)),
        *(_item(PRESENTATION_CONTEXT_AC, bytes([r.context_id, 0, r.result, 0])
                + _item(TRANSFER_SYNTAX, _encoded_uid(r.transfer_syntax))) for r in results),
        _item(USER_INFORMATION, user),
    ])
    return struct.pack(">BxL", 0x02, len(body)) + body


def encode_reject(result: int, source: int, reason: int) -> bytes:
    return struct.pack(">BxLBBBB", 0x03, 4, 0, result, source, reason)
