"""Streaming receive of C-STORE data sets straight into a staging file.

pynetdicom's own chunked receive (``STORE_RECV_CHUNKED_DATASET``) writes to the system
temporary directory with pynetdicom's file meta, flushes after every PDU and never deletes
the file. We replace ``DIMSEMessage.decode_msg`` in the worker with this version, which
asks the association's ``Receiver`` for the destination, so the data lands once, in a
staging file on the output filesystem, with our file meta. Pinned to pynetdicom 3.0.4
(see pyproject.toml); tests/unit/test_receive.py checks it against the library.
"""

from __future__ import annotations

import struct
from io import BytesIO
from typing import TYPE_CHECKING, Any, Protocol, cast

from pydicom.filewriter import write_file_meta_info
from pynetdicom.dimse_messages import _MESSAGE_TYPES, C_STORE_RQ, DIMSEMessage
from pynetdicom.dsutils import decode
from pynetdicom.pdu_primitives import P_DATA

from . import IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME
from .storage import StagingFile

if TYPE_CHECKING:  # pragma: no cover
    from pynetdicom.association import Association


class Receiver(Protocol):
    """What the decode hook needs from the association being served."""

    def begin_dataset(self, command: Any, transfer_syntax: str) -> StagingFile | None: ...

    def dataset_fragment(self, size: int) -> None: ...


def _decode_msg(self: DIMSEMessage, primitive: P_DATA, assoc: "Association | None" = None) -> bool:
    if primitive.__class__ != P_DATA or primitive is None:
        return False
    for context_id, data in primitive.presentation_data_value_list:
        header = data[0]
        if header & 1:
            self.encoded_command_set.write(data[1:])
            if header & 2:
                self.context_id = context_id
                self.command_set = decode(self.encoded_command_set, True, True)
                self.__class__ = _MESSAGE_TYPES[cast(int, self.command_set.CommandField)][1]
                if self.command_set.CommandDataSetType == 0x0101:
                    return True
                receiver: Receiver | None = getattr(assoc, "storescpd_receiver", None)
                if receiver is not None and isinstance(self, C_STORE_RQ):
                    cx = assoc._accepted_cx[context_id]  # type: ignore[union-attr]
                    staged = receiver.begin_dataset(self.command_set, str(cx.transfer_syntax[0]))
                    # pynetdicom requires a (here empty) data_set to treat the message as valid.
                    self._data_set_file = staged  # type: ignore[assignment]
                    if staged is not None:
                        self._data_set_path = staged.path
                    else:
                        self.storescpd_discard = True  # type: ignore[attr-defined]
        else:
            staged = cast("StagingFile | None", self._data_set_file)
            if staged is not None:
                if not staged.closed:
                    staged.write(data[1:])
            elif self.data_set is not None and not getattr(self, "storescpd_discard", False):
                self.data_set.write(data[1:])
            receiver = getattr(assoc, "storescpd_receiver", None)
            if receiver is not None:
                receiver.dataset_fragment(len(data) - 1)
            if header & 2:
                return True
    return False


def install() -> None:
    """Route every C-STORE data set of this process through its association's Receiver."""
    DIMSEMessage.decode_msg = _decode_msg  # type: ignore[method-assign]


def file_meta_bytes(sop_class: str, sop_instance: str, transfer_syntax: str, source_ae: str) -> bytes:
    """Preamble, 'DICM' and the file meta group (explicit VR little endian), encoded directly:
    this runs once per object, and pydicom's validating writer costs a millisecond."""

    def short(element: int, vr: bytes, value: bytes, pad: bytes) -> bytes:
        if len(value) % 2:
            value += pad
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


def write_meta(staged: StagingFile, meta: Any) -> None:
    """Preamble, 'DICM' and the file meta group; records where the data set starts."""
    buf = BytesIO()
    buf.write(b"\x00" * 128 + b"DICM")
    write_file_meta_info(buf, meta, enforce_standard=True)  # type: ignore[arg-type]
    staged.write(buf.getvalue())
    staged.dataset_offset = buf.tell()

