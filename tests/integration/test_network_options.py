"""storescp's network options that change what a peer sees: --reject, the timeouts, the fault injections."""

from __future__ import annotations

import socket
import struct
import time

import pytest

from tests.support.paths import TEST_FILES
from tests.support.pdus import CT, EXPLICIT_LE, associate_rq, item, pdu, read_pdu
from tests.support.peers import require_dcmtk, storescu

PDU_ASSOCIATE_AC, PDU_ASSOCIATE_RJ, PDU_ABORT = 0x02, 0x03, 0x07
CT_SMALL = TEST_FILES / "CT_small.dcm"


def setup_module() -> None:
    require_dcmtk()


def associate_rq_without_implementation_uid() -> bytes:
    context = item(0x20, bytes([1, 0, 0, 0]) + item(0x30, CT) + item(0x40, EXPLICIT_LE))
    user = item(0x50, struct.pack(">BBHI", 0x51, 0, 4, 16384))  # maximum length only: no 0x52 item
    body = (struct.pack(">HH", 1, 0) + b"STORESCP".ljust(16) + b"NOIMPL".ljust(16) + bytes(32)
            + item(0x10, b"1.2.840.10008.3.1.1.1") + context + user)
    return pdu(0x01, body)


def answer_to(port: int, request: bytes) -> tuple[int, bytes]:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(request)
        return read_pdu(sock)


def test_reject_refuses_a_peer_without_implementation_class_uid(daemon_factory) -> None:
    d = daemon_factory("--reject")
    kind, body = answer_to(d.port, associate_rq_without_implementation_uid())
    assert kind == PDU_ASSOCIATE_RJ
    assert body[1:4] == bytes([0x01, 0x01, 0x01]), body.hex()  # permanent, service user, no reason given
    assert answer_to(d.port, associate_rq())[0] == PDU_ASSOCIATE_AC  # a peer that names itself is fine
    assert "no implementation class UID" in d.log()


def test_without_reject_a_peer_without_implementation_class_uid_is_accepted(daemon_factory) -> None:
    d = daemon_factory()
    assert answer_to(d.port, associate_rq_without_implementation_uid())[0] == PDU_ASSOCIATE_AC


@pytest.mark.parametrize("option", ["-td", "-ts"])
def test_idle_association_is_aborted_after_the_timeout(daemon_factory, option: str) -> None:
    d = daemon_factory(option, "2")
    with socket.create_connection(("127.0.0.1", d.port), timeout=15) as sock:
        sock.sendall(associate_rq())
        assert read_pdu(sock)[0] == PDU_ASSOCIATE_AC
        started = time.monotonic()
        try:
            kind = read_pdu(sock)[0]
        except ConnectionResetError:
            kind = -1
        waited = time.monotonic() - started
    assert kind in (PDU_ABORT, -1), kind
    assert 1.5 < waited < 8, f"idle association ended after {waited:.1f} s with {option} 2"


def test_no_timeout_keeps_an_idle_association(daemon_factory) -> None:
    d = daemon_factory("-ts", "0")  # and -td unset: unlimited (DCMTK refuses -td 0)
    with socket.create_connection(("127.0.0.1", d.port), timeout=3) as sock:
        sock.sendall(associate_rq())
        assert read_pdu(sock)[0] == PDU_ASSOCIATE_AC
        with pytest.raises(socket.timeout):
            read_pdu(sock)  # nothing comes for 3 s: the association stays open


@pytest.mark.parametrize("option", ["--abort-after", "--abort-during"])
def test_fault_injection_aborts_and_stores_nothing(daemon_factory, option: str) -> None:
    d = daemon_factory(option, "-v")  # DCMTK logs the injected abort at info level
    result = storescu(d.port, [CT_SMALL], "-v")
    assert "Association Aborted" in result.stderr or result.returncode != 0, result.stderr
    assert "Received Store Response" not in result.stderr, result.stderr
    assert d.stored_files() == []
    assert "ABORT initiated (due to command line options)" in d.log()
    d.wait_no_partial_files()
