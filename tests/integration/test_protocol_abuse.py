"""A peer that breaks the protocol gets an A-ABORT (or a closed socket), never a crashed daemon."""

from __future__ import annotations

import socket
import struct

import pytest

from tests.support.paths import TEST_FILES
from tests.support.pdus import CT, associate_rq, element, p_data, pdu, read_pdu, store_command
from tests.support.peers import echoscu, require_dcmtk
from tests.support.processes import wait_until


def setup_module() -> None:
    require_dcmtk()


# name: (what the peer sends, what it must get back: 0x07 = A-ABORT, -1 = the connection closed)
ABUSES = {
    "garbage instead of A-ASSOCIATE-RQ": ([b"GET / HTTP/1.1\r\nHost: x\r\n\r\n" + bytes(64)], 0x07),
    "P-DATA before association": ([p_data(1, 0x03, store_command())], 0x07),
    "200 MiB A-ASSOCIATE-RQ announced": ([struct.pack(">BBI", 0x01, 0, 200 << 20) + b"\0" * 20], 0x07),
    "unknown PDU type": (["ASSOC", pdu(0x42, b"\0" * 10)], 0x07),
    "PDV item longer than its PDU": (["ASSOC", pdu(0x04, struct.pack(">IBB", 5000, 1, 0x03) + b"xx")], 0x07),
    "message on a context never accepted": (["ASSOC", p_data(7, 0x03, store_command())], 0x07),
    "command set without command field": (["ASSOC", p_data(1, 0x03, element(0x0002, CT))], 0x07),
    "data set without a command": (["ASSOC", p_data(1, 0x02, b"\x08\x00\x18\x00UI\x02\x001\x00")], 0x07),
    "malformed command element lengths": (["ASSOC", p_data(1, 0x03, struct.pack("<HHI", 0, 0x100, 0xFFFFFF) + b"x")],
                                          0x07),
    "4 GiB PDU announced": (["ASSOC", struct.pack(">BBI", 0x04, 0, 0xFFFFFFF0) + b"\0" * 20], 0x07),
    "P-DATA far over the negotiated maximum": (["ASSOC", struct.pack(">BBI", 0x04, 0, 200 << 20) + b"\0" * 20],
                                               0x07),
    "data set on another context than its command": (["ASSOC", p_data(1, 0x03, store_command()),
                                                      p_data(3, 0x02, b"\x08\x00" * 8)], 0x07),
    "truncated A-ASSOCIATE-RQ, then silence": ([associate_rq()[:40]], -1),
    "connection dropped mid data set": (["ASSOC", p_data(1, 0x03, store_command()),
                                         p_data(1, 0x00, b"\x08\x00" * 50), "CLOSE"], None),
}


@pytest.mark.parametrize("name", list(ABUSES))
def test_protocol_abuse_never_crashes_the_daemon(daemon_factory, name: str) -> None:
    d = daemon_factory("--workers", "2", "-ta", "3")
    steps, expected = ABUSES[name]
    sock = socket.create_connection(("127.0.0.1", d.port), timeout=10)
    answers = []
    try:
        for step in steps:
            if step == "ASSOC":
                sock.sendall(associate_rq())
                kind, _ = read_pdu(sock)
                assert kind == 0x02, "the association should be accepted first"
            elif step == "CLOSE":
                sock.close()
                break
            else:
                sock.sendall(step)
        else:
            sock.settimeout(10)
            try:
                answers.append(read_pdu(sock)[0])
            except (ConnectionResetError, socket.timeout):
                answers.append(-1)
    finally:
        sock.close()
    if expected is not None:
        assert answers == [expected], f"{name}: expected {expected}, got {answers}"
    # the daemon and its pool are fine: a real peer still gets through, and no partial file is left
    wait_until(lambda: echoscu(d.port).returncode == 0, 10, lambda: f"daemon usable after: {name}\n{d.log()}",
               interval=0.2)
    assert d.proc is not None and d.proc.poll() is None
    assert d.stored_files() == []
    d.wait_no_partial_files(5)
    assert "Traceback" not in d.log()


def test_command_data_set_type_zero_still_stores(daemon_factory) -> None:
    """0x0000 is a legal Command Data Set Type ("a data set follows"): the object must be stored."""
    import pydicom
    from pydicom.filebase import DicomBytesIO
    from pydicom.filewriter import write_dataset

    d = daemon_factory()
    ds = pydicom.dcmread(TEST_FILES / "CT_small.dcm")
    ds.SOPInstanceUID = "1.2.3.4.5"
    body = DicomBytesIO()
    body.is_little_endian, body.is_implicit_VR = True, False
    write_dataset(body, ds)
    with socket.create_connection(("127.0.0.1", d.port), timeout=10) as sock:
        sock.sendall(associate_rq())
        assert read_pdu(sock)[0] == 0x02
        data = body.getvalue()
        fragments = [data[i:i + 16000] for i in range(0, len(data), 16000)]
        sock.sendall(p_data(1, 0x03, store_command()) + b"".join(
            p_data(1, 0x02 if i == len(fragments) - 1 else 0x00, f) for i, f in enumerate(fragments)))
        kind, response = read_pdu(sock)
        assert kind == 0x04
        assert struct.pack("<HHIH", 0, 0x0900, 2, 0x0000) in response  # Status: success
        sock.sendall(pdu(0x05, bytes(4)))
        assert read_pdu(sock)[0] == 0x06
    assert [p.name for p in d.stored_files()] == ["CT.1.2.3.4.5"]
