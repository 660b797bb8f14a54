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


def test_reencoding_never_allocates_a_length_the_data_set_does_not_have(tmp_path: Path) -> None:
    """A first element whose VR bytes are not letters ("U\\0" for "UL") makes pydicom read implicit VR:
    VR and length together become a length of 1.4 GB, and a file's read(length) allocated all of it."""
    from storescpd.store.convert import read_staged
    from tests.support.fuzzing import bounded, dataset_seeds

    seed = next(s for s in dataset_seeds() if s.name == "ExplVR_BigEnd.dcm")
    assert seed.data[4:6] == b"UL"
    staged = tmp_path / "staged"
    staged.write_bytes(seed.data[:5] + b"\0" + seed.data[6:])
    with bounded(10.0, 16 << 20):
        try:
            read_staged(staged, 0, seed.transfer_syntax)
        except Exception:  # pydicom may refuse it: the handler answers 0xC000
            pass


def test_a_data_set_pydicom_would_read_in_the_other_vr_encoding_is_not_stored(tmp_path: Path) -> None:
    """With re-encoding (+ti), the same input: the walk read it as sent (explicit VR, complete, its UIDs
    matching), pydicom guessed implicit VR and re-encoded an empty data set, answered 0x0000."""
    from types import SimpleNamespace

    from storescpd.config import settings as cfg
    from storescpd.store.handlers import StoreContext, handle_store
    from storescpd.store.storage import prepare_staging_dir
    from tests.support.fuzzing import dataset_seeds, published_files

    seed = next(s for s in dataset_seeds() if s.name == "ExplVR_BigEnd.dcm")
    values = {**cfg.defaults(), "output_directory": str(tmp_path), "fsync": False, "write_transfer_syntax": "implicit"}
    ctx = StoreContext(config=cfg.Config(values), output_dir=tmp_path, staging_dir=prepare_staging_dir(tmp_path))
    command = SimpleNamespace(AffectedSOPClassUID=seed.sop_class_uid, AffectedSOPInstanceUID=seed.sop_instance_uid)
    assert ctx.begin_dataset(command, seed.transfer_syntax) is not None
    ctx.fragment(memoryview(seed.data[:5] + b"\0" + seed.data[6:]))
    event = SimpleNamespace(request=command, context=SimpleNamespace(transfer_syntax=seed.transfer_syntax))
    assert handle_store(event, ctx) == 0xC000
    assert published_files(tmp_path) == []
