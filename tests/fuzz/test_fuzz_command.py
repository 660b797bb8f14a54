"""Fuzzing the DIMSE command set decoder (dicom.engine.decode_command, PS3.7 E.1): element lists built
field by field with lengths that lie, mutations of the command sets DCMTK sent, and bytes.

Properties: only ProtocolError escapes; a decoded command has integer fields in range and text UIDs;
time and memory are bounded by the input (the engine caps a command set at MAX_COMMAND_SET bytes).
"""

from __future__ import annotations

import struct

from hypothesis import given, settings
from hypothesis import strategies as st

from storescpd.dicom import engine
from tests.support.fuzzing import CAPTURES, bounded, captured, command_fields, examples, mutated, split_pdus


def _captured_command_sets() -> list[bytes]:
    """The command sets (PDVs with bit 0 set) of every capture."""
    found = []
    for name in CAPTURES:
        for pdu in split_pdus(captured(name)):
            offset = 6
            while pdu[0] == 0x04 and offset < len(pdu):
                length, _, header = struct.unpack_from(">LBB", pdu, offset)
                if header & 1:
                    found.append(pdu[offset + 6:offset + 4 + length])
                offset += 4 + length
    return found


CAPTURED = _captured_command_sets()


@st.composite
def element_lists(draw: st.DrawFn) -> bytes:
    elements = []
    for _ in range(draw(st.integers(0, 12))):
        group = draw(st.sampled_from([0, 0, 0, 0, 2, 8, 0xFFFE]))
        number = draw(st.sampled_from([0x0000, 0x0002, 0x0100, 0x0110, 0x0120, 0x0700, 0x0800, 0x0900, 0x1000])
                      | st.integers(0, 0xFFFF))
        value = draw(st.one_of(st.binary(max_size=70), st.sampled_from(
            [b"", b"\x01", struct.pack("<H", 1), struct.pack("<H", 0x30), struct.pack("<H", 0x101),
             struct.pack("<L", 0xFFFFFFFF), b"1.2.840.10008.1.1\0"])))
        length = len(value)
        if draw(st.integers(0, 9)) == 0:
            length = draw(st.sampled_from([0, 1, len(value) + 1, 0xFFFFFFFF, 0x7FFFFFFF]))
        elements.append(struct.pack("<HHL", group, number, length) + value)
    return b"".join(elements)


@settings(max_examples=examples(800))
@given(data=st.one_of(element_lists(), st.sampled_from(CAPTURED).flatmap(mutated), st.binary(max_size=200)))
def test_decode_command_raises_only_protocol_errors(data: bytes) -> None:
    with bounded(1.0, 1 << 20):
        try:
            command = engine.decode_command(data)
        except engine.ProtocolError:
            return
    assert 0 <= command.command_field <= 0xFFFF and 0 <= command.message_id <= 0xFFFF
    assert 0 <= command.data_set_type <= 0xFFFF
    assert isinstance(command.AffectedSOPClassUID, str) and isinstance(command.AffectedSOPInstanceUID, str)


def test_the_captured_command_sets_decode_as_dcmtk_wrote_them() -> None:
    assert len(CAPTURED) >= 5
    for data in CAPTURED:
        fields = command_fields(data)
        command = engine.decode_command(data)
        assert command.command_field == struct.unpack("<H", fields[0x0100])[0]
        assert command.AffectedSOPClassUID == fields[0x0002].decode().rstrip("\0")
