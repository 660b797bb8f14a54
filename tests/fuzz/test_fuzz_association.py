"""Fuzzing a whole association: the real engine (dicom.engine.serve) and the store layer behind it,
fed over a socketpair with mutations of what DCMTK's echoscu and storescu send (tests/fuzz/seeds/)
and with data phases built element by element: PDU framing, PDV items, command sets, data sets.

Properties of every input: the engine ends the association without a bug of ours (no traceback
logged), in bounded time and memory; the peer gets well-formed PDUs in a legal order (AC, RJ or
A-ABORT first; then only P-DATA responses on accepted contexts, and an A-RELEASE-RP or A-ABORT
last); a C-STORE-RSP says 0x0000 only for an object published, whole, under the output directory;
nothing is written outside it and nothing is left in its staging folder.
"""

from __future__ import annotations

import struct
from functools import cache
from pathlib import Path

import pydicom
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pynetdicom.pdu import A_ASSOCIATE_AC, A_ASSOCIATE_RQ

from storescpd.store.storage import inspect_dataset
from tests.support import pdus
from tests.support.fuzzing import (
    CAPTURES,
    Served,
    bounded,
    captured,
    command_fields,
    dataset_seeds,
    examples,
    mutated,
    reply_pdus,
    serve_association,
    split_pdus,
)

SECONDS = 10.0  # one association, its files written and read back, on a loaded machine
PEAK = 24 << 20  # the engine's buffers (2 x max PDU + 256 KiB), one staged data set, pydicom's reading of it

AC, RJ, P_DATA, RELEASE_RP, ABORT = 0x02, 0x03, 0x04, 0x06, 0x07
C_STORE_RSP, C_ECHO_RSP = 0x8001, 0x8030
SUCCESS = 0x0000


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("association")


def check(stream: bytes, served: Served, ignore: bool = False) -> None:
    """The properties every association must have, whatever the peer sent (``ignore``: --ignore, where
    DCMTK and storescpd answer 0x0000 for objects received and not stored)."""
    assert not served.tracebacks, "the engine caught a bug of ours:\n" + "\n".join(served.tracebacks)
    assert not served.outside, f"written outside the output directory: {served.outside}"
    assert not served.staging_left, f"left in the staging folder: {served.staging_left}"
    assert all(p.is_file() and p.parent.name == "out" for p in served.published), served.published
    replies = reply_pdus(served.replies)
    first_length = struct.unpack_from(">L", stream, 2)[0] if len(stream) >= 6 else None
    if first_length is not None and 6 + first_length <= len(stream):
        assert replies, "a whole first PDU got no answer at all"
    if not replies:
        return
    kinds = [kind for kind, _ in replies]
    assert kinds[0] in (AC, RJ, ABORT), f"first answer is PDU type 0x{kinds[0]:02x}"
    if kinds[0] != AC:
        assert len(kinds) == 1, f"PDUs after an A-ASSOCIATE-RJ or A-ABORT: {kinds}"
        return
    accepted = _accepted_contexts(replies[0][1])
    assert all(kind == P_DATA for kind in kinds[1:-1]), kinds
    assert kinds[-1] in (AC, P_DATA, RELEASE_RP, ABORT), kinds
    stored = {p.name for p in served.published}
    if ignore:
        assert not stored, f"--ignore stored {sorted(stored)}"
    for kind, body in replies[1:]:
        if kind == P_DATA:
            _check_response(body, accepted, None if ignore else stored, served)


def _accepted_contexts(body: bytes) -> set[int]:
    ac = A_ASSOCIATE_AC()
    ac.decode(bytes([AC, 0]) + struct.pack(">L", len(body)) + body)  # pynetdicom reads our AC
    return {item.context_id for item in ac.variable_items if getattr(item, "item_type", None) == 0x21
            and item.result_reason == 0}


def _check_response(body: bytes, accepted: set[int], stored: set[str] | None, served: Served) -> None:
    length, context_id, header = struct.unpack_from(">LBB", body)
    assert 4 + length == len(body), "one PDV per response P-DATA-TF"
    assert header == 0x03, "a response is one command fragment, the last"
    assert context_id in accepted, f"response on context {context_id}, not accepted"
    fields = command_fields(body[6:])
    command, = struct.unpack("<H", fields[0x0100])
    status, = struct.unpack("<H", fields[0x0900])
    assert command in (C_STORE_RSP, C_ECHO_RSP)
    if command == C_STORE_RSP and status == SUCCESS and stored is not None:
        instance = fields[0x1000].decode("latin-1").rstrip("\0 ")
        names = [name for name in stored if name.endswith("." + instance)]
        assert names, f"0x0000 for {instance!r}, which is not in the output directory ({sorted(stored)})"
        _check_whole(served.published[0].parent / names[0])


def _check_whole(path: Path) -> None:
    """A published file is a whole Part 10 file: pydicom reads its meta, the walk finds its data set whole."""
    meta = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=[0x00080018])
    offset = 132 + 12 + meta.file_meta.FileMetaInformationGroupLength
    inspect_dataset(path, offset, str(meta.file_meta.TransferSyntaxUID))


def _serve(root: Path, stream: bytes, **config: object) -> Served:
    with bounded(SECONDS, PEAK):
        served = serve_association(root, stream, **config)
    check(stream, served, ignore=bool(config.get("ignore")))
    return served


def test_the_captures_are_served_whole(root: Path) -> None:
    """Unmutated, each capture is accepted and every object stored (the seeds reach the data phase)."""
    for name in CAPTURES:
        served = _serve(root, captured(name))
        kinds = [kind for kind, _ in reply_pdus(served.replies)]
        assert kinds[0] == AC and kinds[-1] == RELEASE_RP, (name, kinds)
        assert served.summary["outcome"] == "released", name
    assert len(_serve(root, captured("storescu-implicit-two")).published) == 2


# ---- mutations of the captures --------------------------------------------------------------------

@st.composite
def mutated_capture(draw: st.DrawFn) -> bytes:
    """A capture with PDUs dropped, repeated, swapped or replaced by a mutant of themselves, and
    sometimes byte-level mutations over the whole stream (lengths that lie included)."""
    units = split_pdus(captured(draw(st.sampled_from(CAPTURES))))
    for _ in range(draw(st.integers(1, 3))):
        at = draw(st.integers(0, len(units) - 1))
        kind = draw(st.sampled_from(["mutate", "mutate", "mutate", "drop", "repeat", "swap", "cut"]))
        if kind == "mutate":
            units[at] = draw(mutated(units[at]))
        elif kind == "drop" and len(units) > 1:
            del units[at]
        elif kind == "repeat":
            units.insert(at, units[at])
        elif kind == "swap" and at + 1 < len(units):
            units[at], units[at + 1] = units[at + 1], units[at]
        elif kind == "cut":
            del units[at + 1:]
    stream = b"".join(units)
    if draw(st.integers(0, 4)) == 0:
        stream = draw(mutated(stream))
    return stream


@settings(max_examples=examples(250))
@given(stream=mutated_capture())
def test_mutated_captures(root: Path, stream: bytes) -> None:
    _serve(root, stream)


@settings(max_examples=examples(40))
@given(stream=mutated_capture(), options=st.sampled_from([
    {"transfer_syntaxes": "all"}, {"promiscuous": True}, {"write_transfer_syntax": "big"},
    {"write_transfer_syntax": "implicit"}, {"write_transfer_syntax": "deflated"}, {"max_pdu": 4096},
    {"ignore": True}]))
def test_mutated_captures_other_configurations(root: Path, stream: bytes, options: dict) -> None:
    _serve(root, stream, **options)


# ---- data phases built element by element ---------------------------------------------------------

def _rq_from(name: str) -> bytes:
    return split_pdus(captured(name))[0]


@cache
def _proposed_ids(name: str, abstract_syntax: str) -> tuple[int, ...]:
    """The context IDs a capture's A-ASSOCIATE-RQ proposes for an abstract syntax (read by pynetdicom)."""
    rq = A_ASSOCIATE_RQ()
    rq.decode(_rq_from(name))
    return tuple(cx.context_id for cx in rq.to_primitive().presentation_context_definition_list
                 if cx.abstract_syntax == abstract_syntax)


ECHO = "1.2.840.10008.1.1"


def _command(fields: dict[int, bytes]) -> bytes:
    body = b"".join(pdus.element(number, value) for number, value in sorted(fields.items()))
    return pdus.element(0x0000, struct.pack("<I", len(body))) + body


@st.composite
def command_sets(draw: st.DrawFn, sop_class: str, sop_instance: str) -> bytes:
    """A C-STORE-RQ or C-ECHO-RQ with fields dropped, changed or added; or bytes."""
    if draw(st.integers(0, 9)) == 0:
        return draw(st.binary(max_size=128))
    store = draw(st.booleans())
    fields = {0x0002: (sop_class if store else ECHO).encode(), 0x0100: struct.pack("<H", 0x0001 if store else 0x0030),
              0x0110: struct.pack("<H", draw(st.integers(0, 0xFFFF))),
              0x0800: struct.pack("<H", 0x0000 if store else 0x0101)}
    if store:
        fields[0x0700] = struct.pack("<H", 0)
        fields[0x1000] = sop_instance.encode()
    for _ in range(draw(st.integers(0, 3))):
        number = draw(st.sampled_from([0x0002, 0x0100, 0x0110, 0x0700, 0x0800, 0x1000, 0x0120, 0x0900, 0x1030]))
        if draw(st.booleans()):
            fields.pop(number, None)
        else:
            fields[number] = draw(st.one_of(st.binary(max_size=70), st.sampled_from(
                [struct.pack("<H", v) for v in (0x0001, 0x0030, 0x0FFF, 0x0101, 0x0000, 0x8001, 0x0020)])))
    return _command(fields)


@st.composite
def data_phases(draw: st.DrawFn) -> bytes:
    """A real A-ASSOCIATE-RQ, then P-DATA-TF PDUs of PDV items drawn one by one: command sets and data
    set fragments (of a real object, or bytes), on accepted or other contexts, with any flags, split
    anywhere; then a release, an abort, another PDU or nothing."""
    seed = draw(st.sampled_from([s for s in dataset_seeds() if s.transfer_syntax in
                                 ("1.2.840.10008.1.2", "1.2.840.10008.1.2.1")]))
    # storescu proposes every common storage SOP class (in explicit and implicit VR little endian)
    ours = _proposed_ids("storescu-rtplan", seed.sop_class_uid)
    stream = [_rq_from("storescu-rtplan")]
    for _ in range(draw(st.integers(1, 6))):
        pdvs = []
        for _ in range(draw(st.integers(1, 4))):
            context_id = draw(st.sampled_from(ours) if ours and draw(st.integers(0, 3)) else
                              st.sampled_from([1, 3, 0, 2, 255]))
            flags = draw(st.sampled_from([0x00, 0x01, 0x02, 0x03]) | st.integers(0, 255))
            if flags & 1:
                value = draw(command_sets(seed.sop_class_uid, seed.sop_instance_uid))
                cut = draw(st.integers(0, len(value)))
                value = value[:cut] if draw(st.integers(0, 3)) == 0 else value
            else:
                start = draw(st.integers(0, len(seed.data)))
                value = draw(st.one_of(st.just(seed.data[start:]), st.just(seed.data[start:start + 512]),
                                       st.binary(max_size=64)))
            length = len(value) + 2
            if draw(st.integers(0, 7)) == 0:
                length = draw(st.sampled_from([0, 1, 2, length - 1, length + 1, 0xFFFFFFFF]))
            pdvs.append(struct.pack(">LBB", length & 0xFFFFFFFF, context_id, flags) + value)
        stream.append(pdus.pdu(0x04, b"".join(pdvs)))
    stream.append(draw(st.sampled_from([pdus.pdu(0x05, bytes(4)), pdus.pdu(0x07, bytes(4)), b"",
                                        pdus.pdu(0x01, bytes(4)), pdus.pdu(0x06, bytes(4))])))
    return b"".join(stream)


@settings(max_examples=examples(250))
@given(stream=data_phases())
def test_built_data_phases(root: Path, stream: bytes) -> None:
    _serve(root, stream)
