"""The file meta group written in front of every received data set."""

from __future__ import annotations

import struct

from storescpd import IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME


def file_meta_bytes(sop_class: str, sop_instance: str, transfer_syntax: str, source_ae: str) -> bytes:
    """Preamble, 'DICM' and the file meta group (explicit VR little endian), encoded directly:
    this runs once per object, and pydicom's validating writer costs a millisecond."""

    def short(element: int, vr: bytes, value: bytes, pad: bytes) -> bytes:
        if len(value) % 2:
            value += pad
        if len(value) > 0xFFFF:
            raise ValueError(f"a value of {len(value)} bytes does not fit (0002,{element:04X})")
        return struct.pack("<HH", 2, element) + vr + struct.pack("<H", len(value)) + value

    body = struct.pack("<HH", 2, 0x0001) + b"OB\0\0" + struct.pack("<L", 2) + b"\x00\x01"
    body += short(0x0002, b"UI", sop_class.encode(), b"\0")
    body += short(0x0003, b"UI", sop_instance.encode(), b"\0")
    body += short(0x0010, b"UI", transfer_syntax.encode(), b"\0")
    body += short(0x0012, b"UI", IMPLEMENTATION_CLASS_UID.encode(), b"\0")
    body += short(0x0013, b"SH", IMPLEMENTATION_VERSION_NAME.encode(), b" ")
    if source_ae:
        body += short(0x0016, b"AE", source_ae.encode("ascii", "replace"), b" ")
    group_length = struct.pack("<HH", 2, 0x0000) + b"UL" + struct.pack("<HL", 4, len(body))
    return b"\x00" * 128 + b"DICM" + group_length + body
