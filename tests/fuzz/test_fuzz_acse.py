"""Fuzzing the A-ASSOCIATE-RQ parsers: dicom.acse.parse_request (the fast path) alone, and the whole
establishment through the engine, where a request with SCP/SCU role selection or SOP class extended
negotiation (or a -pm / -xf configuration) is read and negotiated by pynetdicom instead.

Requests are built item by item (PS3.8 9.3.2): any protocol version, AE titles of any bytes, the
application context, presentation contexts with any ID and any number of syntaxes, user information
with its sub-items; any item or sub-item may carry a length that lies. Properties: parse_request
raises only MalformedRequest; the peer always gets one A-ASSOCIATE-AC, -RJ or A-ABORT, an AC that
pynetdicom reads, and no traceback is logged; time and memory per request are bounded.
"""

from __future__ import annotations

import struct
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from storescpd.dicom import acse
from tests.support.fuzzing import (
    bounded,
    captured,
    examples,
    mutated,
    reply_pdus,
    serve_association,
    split_pdus,
)

UIDS = [b"1.2.840.10008.3.1.1.1", b"1.2.840.10008.1.1", b"1.2.840.10008.5.1.4.1.1.2", b"1.2.840.10008.5.1.4.1.1.7",
        b"1.2.840.10008.1.2", b"1.2.840.10008.1.2.1", b"1.2.840.10008.1.2.2", b"1.2.840.10008.1.2.4.50",
        b"1.2.840.10008.1.2.1.99", b"1.2.840.10008.5.1.4.1.2.1.1"]


def uids() -> st.SearchStrategy[bytes]:
    """Known UIDs, padded or not, and bytes."""
    return st.one_of(st.sampled_from(UIDS), st.sampled_from(UIDS).map(lambda u: u + b"\0"),
                     st.binary(max_size=70))


@st.composite
def items(draw: st.DrawFn, item_type: int, value: bytes) -> bytes:
    """An item (or sub-item): its length is the value's, or sometimes a lie."""
    length = len(value)
    if draw(st.integers(0, 15)) == 0:
        length = draw(st.sampled_from([0, 1, 2, max(length - 1, 0), length + 1, 0xFFFF]))
    return struct.pack(">BxH", item_type, length) + value


@st.composite
def presentation_contexts(draw: st.DrawFn) -> bytes:
    context_id = draw(st.sampled_from([1, 3, 5, 7]) | st.integers(0, 255))
    subs = [draw(items(0x30, draw(uids())))] if draw(st.integers(0, 9)) else []
    subs += [draw(items(0x40, draw(uids()))) for _ in range(draw(st.integers(0, 4)))]
    if draw(st.integers(0, 9)) == 0:
        subs.append(draw(items(draw(st.integers(0, 255)), draw(st.binary(max_size=16)))))
    if draw(st.booleans()):
        subs = draw(st.permutations(subs))
    header = bytes([context_id, draw(st.integers(0, 255)) if draw(st.integers(0, 9)) == 0 else 0, 0, 0])
    return draw(items(0x20, header + b"".join(subs)))


@st.composite
def user_information(draw: st.DrawFn) -> bytes:
    subs = []
    if draw(st.integers(0, 5)):
        subs.append(draw(items(0x51, struct.pack(">L", draw(st.sampled_from([0, 1, 4096, 16384, 0xFFFFFFFF])))
                               if draw(st.integers(0, 5)) else draw(st.binary(max_size=6)))))
    if draw(st.integers(0, 5)):
        subs.append(draw(items(0x52, draw(uids()))))
    if draw(st.booleans()):
        subs.append(draw(items(0x55, draw(st.binary(max_size=20)))))
    for _ in range(draw(st.integers(0, 3))):  # SCP/SCU role selection (PS3.7 D.3.3.4)
        uid = draw(uids())
        body = struct.pack(">H", len(uid) if draw(st.integers(0, 7)) else draw(st.integers(0, 0xFFFF))) + uid
        subs.append(draw(items(0x54, body + bytes(draw(st.lists(st.integers(0, 2), min_size=0, max_size=3))))))
    for _ in range(draw(st.integers(0, 2))):  # SOP class extended negotiation (PS3.7 D.3.3.5)
        uid = draw(uids())
        body = struct.pack(">H", len(uid) if draw(st.integers(0, 7)) else draw(st.integers(0, 0xFFFF))) + uid
        subs.append(draw(items(0x56, body + draw(st.binary(max_size=8)))))
    if draw(st.integers(0, 7)) == 0:  # asynchronous operations, user identity, or anything
        subs.append(draw(items(draw(st.sampled_from([0x53, 0x57, 0x58, 0x59]) | st.integers(0, 255)),
                               draw(st.binary(max_size=24)))))
    if draw(st.booleans()):
        subs = draw(st.permutations(subs))
    return draw(items(0x50, b"".join(subs)))


@st.composite
def associate_rq_bodies(draw: st.DrawFn) -> bytes:
    """The variable part of an A-ASSOCIATE-RQ (what follows the 6-byte PDU header)."""
    version = draw(st.sampled_from([1, 1, 1, 0, 2, 3, 0xFFFF]))

    def ae_title() -> bytes:
        return draw(st.one_of(st.just(b"STORESCP".ljust(16)), st.binary(min_size=16, max_size=16)))

    fixed = struct.pack(">HH", version, 0) + ae_title() + ae_title() + bytes(32)
    parts = []
    if draw(st.integers(0, 9)):
        parts.append(draw(items(0x10, draw(st.sampled_from(UIDS[:1]) | uids()))))
    parts += [draw(presentation_contexts()) for _ in range(draw(st.integers(0, 5)))]
    if draw(st.integers(0, 9)):
        parts.append(draw(user_information()))
    if draw(st.integers(0, 9)) == 0:
        parts.append(draw(items(draw(st.integers(0, 255)), draw(st.binary(max_size=16)))))
    if draw(st.integers(0, 4)) == 0:
        parts = draw(st.permutations(parts))
    return fixed + b"".join(parts)


def captured_rq_bodies() -> st.SearchStrategy[bytes]:
    """The requests DCMTK sent (tests/fuzz/seeds), mutated."""
    bodies = [split_pdus(captured(name))[0][6:] for name in ("echoscu", "storescu-roles-extneg", "storescu-rtplan")]
    return st.sampled_from(bodies).flatmap(lambda body: mutated(body, max_mutations=3))


@settings(max_examples=examples(800))
@given(body=st.one_of(associate_rq_bodies(), captured_rq_bodies(), st.binary(max_size=300)))
def test_parse_request_raises_only_malformed_request(body: bytes) -> None:
    with bounded(1.0, 2 << 20):
        try:
            acse.parse_request(body)
        except acse.MalformedRequest:
            pass


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("establishment")


def _establish(root: Path, body: bytes, **config: object) -> None:
    """One request to the engine; then a release, so that an accepted association ends at once."""
    stream = struct.pack(">BxL", 0x01, len(body)) + body + bytes([0x05, 0, 0, 0, 0, 4, 0, 0, 0, 0])
    with bounded(10.0, 24 << 20):
        served = serve_association(root, stream, **config)
    assert not served.tracebacks, "the engine caught a bug of ours:\n" + "\n".join(served.tracebacks)
    replies = reply_pdus(served.replies)
    assert replies, "no answer to a whole A-ASSOCIATE-RQ"
    kinds = [kind for kind, _ in replies]
    assert kinds in ([0x02, 0x06], [0x02, 0x07], [0x03], [0x07]), f"answers {kinds}"
    if kinds[0] == 0x02:
        from pynetdicom.pdu import A_ASSOCIATE_AC

        ac = A_ASSOCIATE_AC()
        body_ac = replies[0][1]
        ac.decode(bytes([0x02, 0]) + struct.pack(">L", len(body_ac)) + body_ac)
        proposed = {cx.context_id for cx in acse.parse_request(body).contexts}
        answered = [item.context_id for item in ac.variable_items if getattr(item, "item_type", None) == 0x21]
        assert len(answered) == len(set(answered)), f"context IDs answered twice: {answered}"
        assert set(answered) <= proposed, f"answers for contexts never proposed: {set(answered) - proposed}"


@settings(max_examples=examples(300))
@given(body=st.one_of(associate_rq_bodies(), captured_rq_bodies()))
def test_establishment_answers_every_request(root: Path, body: bytes) -> None:
    _establish(root, body)


@settings(max_examples=examples(100))
@given(body=st.one_of(associate_rq_bodies(), captured_rq_bodies()),
       options=st.sampled_from([{"promiscuous": True}, {"transfer_syntaxes": "all"}]))
def test_establishment_through_pynetdicom(root: Path, body: bytes, options: dict) -> None:
    """-pm sends every request through pynetdicom's reading and negotiation."""
    _establish(root, body, **options)
