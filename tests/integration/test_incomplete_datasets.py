"""A data set that arrives whole in PDU terms (last fragment flagged) but cut short in DICOM terms
is never acknowledged: 0xC000, nothing published, a good earlier copy kept, a log line naming
where it ends. (DCMTK 3.6.7 aborts the association here; an error status tells the peer the same
and keeps the association for its other objects.)"""

from __future__ import annotations

import socket
import struct

import pydicom
import pytest
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset

from tests.support.paths import TEST_FILES
from tests.support.pdus import associate_rq, p_data, pdu, read_pdu, store_command

UID = "1.2.3.4.5"  # what store_command() announces


def dataset_bytes() -> bytes:
    ds = pydicom.dcmread(TEST_FILES / "CT_small.dcm")
    ds.SOPInstanceUID = UID
    body = DicomBytesIO()
    body.is_little_endian, body.is_implicit_VR = True, False
    write_dataset(body, ds)
    return body.getvalue()


def store(sock: socket.socket, data: bytes) -> int:
    """One C-STORE of ``data``; the status of its response."""
    fragments = [data[i:i + 16000] for i in range(0, len(data), 16000)]
    sock.sendall(p_data(1, 0x03, store_command()) + b"".join(
        p_data(1, 0x02 if i == len(fragments) - 1 else 0x00, f) for i, f in enumerate(fragments)))
    kind, response = read_pdu(sock)
    assert kind == 0x04, f"expected a P-DATA response, got PDU type {kind}"
    at = response.index(struct.pack("<HHI", 0, 0x0900, 2))
    return struct.unpack_from("<H", response, at + 8)[0]


@pytest.mark.parametrize("cut", [2, 5000, 38000], ids=["last-two-bytes", "inside-pixel-data", "inside-the-header"])  # even: an odd PDV is an A-ABORT
def test_a_data_set_cut_short_is_refused_and_the_good_copy_kept(daemon_factory, cut: int) -> None:
    d = daemon_factory("--workers", "1")
    data = dataset_bytes()
    with socket.create_connection(("127.0.0.1", d.port), timeout=10) as sock:
        sock.sendall(associate_rq())
        assert read_pdu(sock)[0] == 0x02
        assert store(sock, data) == 0x0000
        (good,) = d.stored_files()
        before = good.read_bytes()
        assert store(sock, data[:len(data) - cut]) == 0xC000  # same instance, cut short
        assert store(sock, data) == 0x0000  # the association goes on
        sock.sendall(pdu(0x05, bytes(4)))
        assert read_pdu(sock)[0] == 0x06
    assert d.stored_files() == [good] and good.read_bytes() == before
    assert list((d.output / ".storescpd-staging").glob("*.part")) == []
    assert "is incomplete: the data set ends inside" in d.log()
