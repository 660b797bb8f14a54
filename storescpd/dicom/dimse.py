"""The bytes of the data phase: PDU and PDV framing, DIMSE command sets, A-RELEASE and A-ABORT.

Command sets are decoded and encoded directly (implicit VR little endian, group 0000, PS3.7 E.1):
an SCP needs a handful of their fields, and a response is six elements. Everything here is a
pure function of bytes; the association loop (``engine``) does the reading and writing.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

PDU_ASSOCIATE_RQ = 0x01
PDU_ASSOCIATE_AC = 0x02
PDU_ASSOCIATE_RJ = 0x03
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

# A-ABORT source and reason (PS3.8 9.3.8)
ABORT_SERVICE_USER = 0x00
ABORT_SERVICE_PROVIDER = 0x02
REASON_NOT_SPECIFIED = 0x00
REASON_UNEXPECTED_PDU = 0x02
REASON_INVALID_PARAMETER = 0x06

MAX_ASSOCIATE_PDU = 1 << 20  # an A-ASSOCIATE-RQ larger than this is an abort, not an allocation
# A command set holds a few bounded elements (UIDs of at most 64 bytes, AE titles, US/UL values):
# a C-STORE-RQ is under 300 bytes, and even an N-GET listing 10,000 attribute tags (0000,1005) stays
# under 41 KiB. Beyond 64 KiB the peer is not sending a command but filling our memory.
MAX_COMMAND_SET = 64 << 10

PDU_HEADER = struct.Struct(">BxL")  # type, reserved, length
PDV_HEADER = struct.Struct(">LBB")  # item length, presentation context ID, message control header
_ELEMENT = struct.Struct("<HHL")

RELEASE_RP = bytes([PDU_RELEASE_RP, 0, 0, 0, 0, 4, 0, 0, 0, 0])


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
    """An accepted presentation context."""

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
    """A response command set: Affected SOP Class (and Instance) UID, fields, no data set, status."""
    body = _element(0x0002, sop_class.encode())
    body += _element(0x0100, struct.pack("<H", command_field))
    body += _element(0x0120, struct.pack("<H", responding_to))
    body += _element(0x0800, struct.pack("<H", NO_DATA_SET))
    body += _element(0x0900, struct.pack("<H", status))
    if sop_instance is not None:
        body += _element(0x1000, sop_instance.encode())
    return _element(0x0000, struct.pack("<L", len(body))) + body


def command_pdu(context_id: int, command_set: bytes) -> bytes:
    """A whole command set as one PDV (command, last fragment) in one P-DATA-TF PDU."""
    pdv = PDV_HEADER.pack(len(command_set) + 2, context_id, 0x03) + command_set
    return PDU_HEADER.pack(PDU_P_DATA, len(pdv)) + pdv


def abort_pdu(source: int, reason: int) -> bytes:
    return PDU_HEADER.pack(PDU_ABORT, 4) + bytes([0, 0, source, reason])
