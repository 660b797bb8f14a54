"""The smallest inputs the fuzz tests found that broke a property, kept as plain tests."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest

from tests.support import pdus
from tests.support.fuzzing import reply_pdus, serve_association

RELEASE_RQ = pdus.pdu(0x05, bytes(4))
ROLE_SELECTION = pdus.item(0x54, struct.pack(">H", len(pdus.CT)) + pdus.CT + bytes([1, 0]))


def _rq(contexts: bytes, called: bytes = b"STORESCP", user: bytes = b"") -> bytes:
    user_information = pdus.item(0x50, struct.pack(">BBHI", 0x51, 0, 4, 16384) + pdus.item(0x52, b"1.2.3.4") + user)
    body = (struct.pack(">HH", 1, 0) + called.ljust(16) + b"ABUSER".ljust(16) + bytes(32)
            + pdus.item(0x10, pdus.APPLICATION_CONTEXT) + contexts + user_information)
    return pdus.pdu(0x01, body)


def _answers(tmp_path: Path, stream: bytes) -> list[int]:
    served = serve_association(tmp_path, stream + RELEASE_RQ)
    assert not served.tracebacks, "the engine caught a bug of ours:\n" + "\n".join(served.tracebacks)
    return [kind for kind, _ in reply_pdus(served.replies)]


def test_a_refused_context_with_a_non_ascii_transfer_syntax_gets_an_ac(tmp_path: Path) -> None:
    """acse.encode_accept echoed the refused context's first transfer syntax, decoded with 'replace'
    (U+FFFD), through str.encode('ascii'): UnicodeEncodeError, an internal error, an A-ABORT."""
    stream = _rq(pdus.context(1, pdus.CT) + pdus.context(3, b"1.2.3", b"1.2.\xff"))
    assert _answers(tmp_path, stream) == [0x02, 0x06]


@pytest.mark.parametrize("called,user", [
    (b"\x00NY-SCP", ROLE_SELECTION),  # pynetdicom: "must not contain control characters or backslashes"
    (b"STORE\\SCP", ROLE_SELECTION),
    (b"STORESCP", ROLE_SELECTION + pdus.item(0x55, b"\x00")),  # the implementation version name
], ids=["NUL in the called AE title", "backslash in the called AE title", "NUL as the version name"])
def test_a_request_pynetdicom_cannot_read_is_answered_without_an_internal_error(
        tmp_path: Path, called: bytes, user: bytes) -> None:
    """Role selection or extended negotiation sends the request through pynetdicom's A_ASSOCIATE_RQ,
    whose reading raises ValueError on an AE title or a version name with a control character or a
    backslash (the fast path reads them): an internal error and an A-ABORT."""
    assert _answers(tmp_path, _rq(pdus.context(1), called=called, user=user)) in ([0x02, 0x06], [0x03], [0x07])


def test_a_non_ascii_uid_read_by_pynetdicom_is_no_internal_error(tmp_path: Path) -> None:
    """pynetdicom decodes UIDs as ASCII: UnicodeDecodeError on any byte above 0x7F."""
    stream = _rq(pdus.context(1, pdus.CT, pdus.EXPLICIT_LE, b"1.2.\xff"), user=ROLE_SELECTION)
    assert _answers(tmp_path, stream) in ([0x02, 0x06], [0x03], [0x07])
