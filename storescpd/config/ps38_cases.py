"""The A-ASSOCIATE-RQs PS3.8 defines as invalid that docs/conformance.md lists, with both answers.

Each case is a request as bytes, the log line storescpd writes for it, and DCMTK 3.6.7's answer as
measured over a socket (``/usr/bin/storescp -od DIR PORT``, the request sent raw, the first PDU
read back). storescpd's answer is not written down: ``our_answer`` computes it with the code the
daemon runs. tests/integration/test_protocol_limits.py replays every case against a running
storescpd (each negotiation path) and against DCMTK's storescp, and fails when either answers
otherwise than this table says.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Callable

from storescpd.config.settings import Config, defaults
from storescpd.dicom import acceptance
from storescpd.dicom.dimse import ProtocolError

CT = b"1.2.840.10008.5.1.4.1.1.2"
EXPLICIT_LE = b"1.2.840.10008.1.2.1"
UNSUPPORTED = b"1.2.3.999"
APPLICATION_CONTEXT = b"1.2.840.10008.3.1.1.1"
NO_ANSWER = "no answer: the connection is held open"


def item(item_type: int, payload: bytes) -> bytes:
    return struct.pack(">BxH", item_type, len(payload)) + payload


def context(context_id: int, abstract_syntax: bytes = CT, *transfer_syntaxes: bytes) -> bytes:
    """A presentation context item (type 0x20) proposing ``abstract_syntax`` with explicit VR LE by default."""
    return item(0x20, bytes([context_id, 0, 0, 0]) + item(0x30, abstract_syntax)
                + b"".join(item(0x40, ts) for ts in transfer_syntaxes or (EXPLICIT_LE,)))


def with_uid_length(uid: bytes, rest: bytes = b"", announced: int | None = None) -> bytes:
    return struct.pack(">H", len(uid) if announced is None else announced) + uid + rest


MAXIMUM_LENGTH = item(0x51, struct.pack(">L", 16384))
IMPLEMENTATION_UID = item(0x52, b"1.2.3.4")


def request(contexts: bytes | None = None, user: bytes = MAXIMUM_LENGTH + IMPLEMENTATION_UID, *,
            extra_user: bytes = b"", tail: bytes = b"") -> bytes:
    """An A-ASSOCIATE-RQ PDU from ABUSER to STORESCP: ``contexts`` (one CT context by default), the user
    information ``user`` + ``extra_user``, and ``tail``, raw bytes after the last item."""
    body = (struct.pack(">HH", 1, 0) + b"STORESCP".ljust(16) + b"ABUSER".ljust(16) + bytes(32)
            + item(0x10, APPLICATION_CONTEXT) + (context(1) if contexts is None else contexts)
            + item(0x50, user + extra_user) + tail)
    return struct.pack(">BxL", 0x01, len(body)) + body


@dataclass(frozen=True)
class Case:
    name: str
    reference: str  # where PS3.8 (or PS3.7 Annex D) defines the field
    build: Callable[[bytes], bytes]  # the request, given more user information sub-items to carry
    dcmtk: str  # DCMTK 3.6.7's answer, as ``describe`` words it
    log: str  # what storescpd's log line says

    @property
    def request(self) -> bytes:
        return self.build(b"")


def _ac(*results: str) -> str:
    return "A-ASSOCIATE-AC: " + ", ".join(results)


def _contexts(contexts: bytes) -> Callable[[bytes], bytes]:
    return lambda extra: request(contexts, extra_user=extra)


def _user(*sub_items: bytes) -> Callable[[bytes], bytes]:
    return lambda extra: request(extra_user=b"".join(sub_items) + extra)


_ROLE = item(0x54, with_uid_length(CT, b"\1\1"))
_CONTEXT_ID = "PS3.8 9.3.2.2"
_ONLY = "no presentation context has an ID PS3.8 9.3.2.2 allows: "

CASES: tuple[Case, ...] = (
    Case("the only presentation context has ID 2 (even)", _CONTEXT_ID, _contexts(context(2)),
         _ac("2 accepted"), _ONLY + "2 (even)"),
    Case("the only presentation context has ID 0", _CONTEXT_ID, _contexts(context(0)), _ac("0 accepted"),
         _ONLY + "0 (zero)"),
    Case("ID 2 (even) beside a valid ID 1", _CONTEXT_ID, _contexts(context(2) + context(1)),
         _ac("2 accepted", "1 accepted"), "refusing presentation context 2: its ID is even"),
    Case("ID 1 proposed twice, and no other", _CONTEXT_ID, _contexts(context(1) + context(1)), _ac("1 accepted"),
         _ONLY + "1 (proposed 2 times)"),
    Case("ID 1 proposed twice (an unknown SOP class, then CT), and no other", _CONTEXT_ID,
         _contexts(context(1, UNSUPPORTED) + context(1)), _ac("1 accepted"), _ONLY + "1 (proposed 2 times)"),
    Case("ID 1 proposed twice beside a valid ID 3", _CONTEXT_ID, _contexts(context(1) + context(1) + context(3)),
         _ac("1 accepted", "3 accepted"), "refusing presentation context 1: its ID is proposed 2 times"),
    Case("no presentation context", "PS3.8 9.3.2", _contexts(b""), NO_ANSWER,
         "the A-ASSOCIATE-RQ proposes no presentation context"),
    Case("a presentation context without a transfer syntax", _CONTEXT_ID,
         _contexts(item(0x20, bytes([1, 0, 0, 0]) + item(0x30, CT))), NO_ANSWER,
         "presentation context 1 proposes no transfer syntax"),
    Case("two abstract syntax sub-items in one presentation context", _CONTEXT_ID,
         _contexts(item(0x20, bytes([1, 0, 0, 0]) + item(0x30, CT) + item(0x30, CT) + item(0x40, EXPLICIT_LE))),
         _ac("1 accepted"), "presentation context 1 has 2 abstract syntax sub-items"),
    Case("a transfer syntax UID of 65 bytes", _CONTEXT_ID, _contexts(context(1, CT, EXPLICIT_LE, b"1." + b"2" * 63)),
         NO_ANSWER, "transfer syntax of presentation context 1 has 65 bytes; a UID has at most 64"),
    Case("a presentation context item of 2 bytes", _CONTEXT_ID, _contexts(item(0x20, b"\1\0")), NO_ANSWER,
         "presentation context item of 2 bytes, shorter than its 4 fixed bytes"),
    Case("an abstract syntax sub-item that runs past its presentation context", _CONTEXT_ID,
         _contexts(item(0x20, bytes([1, 0, 0, 0]) + struct.pack(">BxH", 0x30, 200) + CT)), NO_ANSWER,
         "abstract syntax sub-item of 200 bytes runs past the end of the presentation context item 1"),
    Case("an item that runs past the end of the PDU", "PS3.8 9.3.2",
         lambda extra: request(extra_user=extra, tail=struct.pack(">BxH", 0x60, 100)), NO_ANSWER,
         "item of type 0x60 of 100 bytes runs past the end of the A-ASSOCIATE-RQ"),
    Case("2 bytes after the last item, too few for another", "PS3.8 9.3.2",
         lambda extra: request(extra_user=extra, tail=bytes(2)), NO_ANSWER,
         "2 bytes left at the end of the A-ASSOCIATE-RQ, too few for an item"),
    Case("a maximum length sub-item of 2 bytes", "PS3.8 D.1",
         lambda extra: request(user=item(0x51, b"\x40\x00") + IMPLEMENTATION_UID, extra_user=extra), _ac("1 accepted"),
         "maximum length sub-item of 2 bytes, where PS3.8 D.1 defines 4"),
    Case("a maximum length sub-item of 6 bytes", "PS3.8 D.1",
         lambda extra: request(user=item(0x51, bytes(2) + struct.pack(">L", 16384)) + IMPLEMENTATION_UID,
                               extra_user=extra), _ac("1 accepted"),
         "maximum length sub-item of 6 bytes, where PS3.8 D.1 defines 4"),
    Case("an asynchronous operations window sub-item of 2 bytes", "PS3.7 D.3.3.3", _user(item(0x53, b"\0\1")),
         _ac("1 accepted"), "asynchronous operations window sub-item of 2 bytes, where PS3.7 D.3.3.3 defines 4"),
    Case("an SCP/SCU role selection sub-item announcing a UID shorter than it holds", "PS3.7 D.3.3.4",
         _user(item(0x54, with_uid_length(CT, b"\1\1", announced=10))), _ac("1 accepted"),
         "SCP/SCU role selection sub-item of 29 bytes announces a UID of 10 bytes"),
    Case("an SCP/SCU role selection sub-item announcing a UID longer than it", "PS3.7 D.3.3.4",
         _user(item(0x54, with_uid_length(CT, b"\1\1", announced=100))), NO_ANSWER,
         "SCP/SCU role selection sub-item: its SOP class UID of 100 bytes runs past its end"),
    Case("an SCP/SCU role selection sub-item with an SCU role of 2", "PS3.7 D.3.3.4",
         _user(item(0x54, with_uid_length(CT, b"\2\1"))), _ac("1 accepted"),
         "SCP/SCU role selection sub-item for 1.2.840.10008.5.1.4.1.1.2 has roles 2 and 1; a role is 0 or 1"),
    Case("a SOP class extended negotiation sub-item announcing a UID longer than it", "PS3.7 D.3.3.5",
         _user(item(0x56, with_uid_length(CT, b"\1", announced=80))), NO_ANSWER,
         "SOP class extended negotiation sub-item: its SOP class UID of 80 bytes runs past its end"),
    Case("a SOP class common extended negotiation sub-item whose service class UID runs past it", "PS3.7 D.3.3.6",
         _user(item(0x57, with_uid_length(CT) + with_uid_length(b"1.2.840.10008.4.2", announced=40) + bytes(2))),
         _ac("1 accepted"),
         "SOP class common extended negotiation sub-item: its service class UID of 40 bytes runs past its end"),
    Case("a user identity sub-item whose primary field runs past it", "PS3.7 D.3.3.7",
         _user(item(0x58, b"\1\0" + with_uid_length(b"user", announced=50) + bytes(2))), NO_ANSWER,
         "user identity sub-item: its primary field of 50 bytes runs past its end"),
)
# With one of these added to its user information, a request is negotiated by pynetdicom (acceptance.py).
ROLE_SELECTION = _ROLE

# Words for the fields of the answers (PS3.8 9.3.3.2, 9.3.4, 9.3.8)
_CONTEXT_RESULTS = {0: "accepted", 1: "refused (user)", 2: "refused (provider)",
                    3: "refused (abstract syntax not supported)", 4: "refused (transfer syntaxes not supported)"}
_REJECT_SOURCES = {1: "service user", 2: "service provider (ACSE)", 3: "service provider (presentation)"}
_REJECT_REASONS = {(1, 1): "no reason given", (1, 2): "application context name not supported",
                   (2, 1): "no reason given", (2, 2): "protocol version not supported"}
_ABORT_REASONS = {0: "reason not specified", 2: "unexpected PDU", 6: "invalid PDU parameter value"}


def describe(pdu_type: int, body: bytes) -> str:
    """An answer in words, from its PDU type and its body after the 6-byte header."""
    if pdu_type == 0x02:
        results, offset = [], 68
        while offset + 4 <= len(body):
            item_type, length = struct.unpack_from(">BxH", body, offset)
            if item_type == 0x21:
                results.append(f"{body[offset + 4]} {_CONTEXT_RESULTS.get(body[offset + 6], body[offset + 6])}")
            offset += 4 + length
        return _ac(*results)
    if pdu_type == 0x03:
        result, source, reason = body[1:4]
        return (f"A-ASSOCIATE-RJ: {'permanent' if result == 1 else 'transient'}, {_REJECT_SOURCES.get(source, source)}, "
                f"{_REJECT_REASONS.get((source, reason), reason)}")
    if pdu_type == 0x07:
        return f"A-ABORT: {'service provider' if body[2] == 2 else 'service user'}, {_ABORT_REASONS.get(body[3], body[3])}"
    return f"PDU type 0x{pdu_type:02x}"


def our_answer(case: Case) -> str:
    """What storescpd answers ``case`` with its default configuration, computed by the daemon's code."""
    config = Config(defaults())
    try:
        answer = acceptance.answer(case.request[6:], config, lambda _request: None)
    except ProtocolError as exc:
        return describe(0x07, bytes([0, 0, 2, exc.reason]))
    return describe(answer.pdu[0], answer.pdu[6:])
