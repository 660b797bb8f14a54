"""DICOM upper-layer PDUs built byte by byte, for peers that break the protocol on purpose."""

from __future__ import annotations

import socket
import struct

CT = b"1.2.840.10008.5.1.4.1.1.2"
EXPLICIT_LE = b"1.2.840.10008.1.2.1"
APPLICATION_CONTEXT = b"1.2.840.10008.3.1.1.1"


def item(item_type: int, payload: bytes) -> bytes:
    return struct.pack(">BBH", item_type, 0, len(payload)) + payload


def pdu(pdu_type: int, payload: bytes) -> bytes:
    return struct.pack(">BBI", pdu_type, 0, len(payload)) + payload


def context(context_id: int, abstract_syntax: bytes = CT, *transfer_syntaxes: bytes) -> bytes:
    """A presentation context item (explicit VR little endian unless transfer syntaxes are given)."""
    syntaxes = transfer_syntaxes or (EXPLICIT_LE,)
    return item(0x20, bytes([context_id, 0, 0, 0]) + item(0x30, abstract_syntax)
                + b"".join(item(0x40, ts) for ts in syntaxes))


def associate_rq(contexts: bytes | None = None, application_context: bytes | None = APPLICATION_CONTEXT,
                 protocol_version: int = 1) -> bytes:
    """An A-ASSOCIATE-RQ from ABUSER to STORESCP; by default one context: CT in explicit VR little endian."""
    user = item(0x50, struct.pack(">BBHI", 0x51, 0, 4, 16384) + item(0x52, b"1.2.3.4"))
    body = (struct.pack(">HH", protocol_version, 0) + b"STORESCP".ljust(16) + b"ABUSER".ljust(16) + bytes(32)
            + (b"" if application_context is None else item(0x10, application_context))
            + (context(1) if contexts is None else contexts) + user)
    return pdu(0x01, body)


def element(number: int, value: bytes) -> bytes:
    """A command element (group 0000, implicit VR little endian)."""
    if len(value) % 2:
        value += b"\0"
    return struct.pack("<HHI", 0, number, len(value)) + value


def store_command(instance: bytes = b"1.2.3.4.5") -> bytes:
    """A C-STORE-RQ command set for a CT object, a data set following."""
    body = (element(0x0002, CT) + element(0x0100, struct.pack("<H", 0x0001)) + element(0x0110, struct.pack("<H", 1))
            + element(0x0700, struct.pack("<H", 0)) + element(0x0800, struct.pack("<H", 0x0000))
            + element(0x1000, instance))
    return element(0x0000, struct.pack("<I", len(body))) + body


def p_data(context_id: int, header: int, data: bytes) -> bytes:
    """A P-DATA-TF with one PDV (header: bit 0 command, bit 1 last fragment)."""
    return pdu(0x04, struct.pack(">IBB", len(data) + 2, context_id, header) + data)


def read_pdu(sock: socket.socket) -> tuple[int, bytes]:
    """(PDU type, body) of the next PDU; (-1, b"") if the connection closed before a whole header."""
    head = b""
    while len(head) < 6:
        chunk = sock.recv(6 - len(head))
        if not chunk:
            return -1, b""
        head += chunk
    pdu_type, length = struct.unpack(">BxI", head)
    body = b""
    while len(body) < length:
        chunk = sock.recv(length - len(body))
        if not chunk:
            break
        body += chunk
    return pdu_type, body
