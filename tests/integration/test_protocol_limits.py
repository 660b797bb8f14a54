"""Limits on what a peer can make us hold or compute, requests PS3.8 defines as invalid (answered
strictly, next to DCMTK's answers), and malformed input answered as DCMTK does.

Where DCMTK 3.6.7's storescp is the reference, each test sends it the same bytes and asserts the
same answer (A-ASSOCIATE-RJ with its result/source/reason, A-ABORT or A-RELEASE-RP).
"""

from __future__ import annotations

import socket
import struct
import time

import pytest

from storescpd.config import ps38_cases as ps38
from tests.support.paths import ROOT
from tests.support.pdus import CT, associate_rq, context, item, p_data, pdu, read_pdu, store_command
from tests.support.peers import echoscu, require_dcmtk
from tests.support.processes import wait_until

UNSUPPORTED = b"1.2.3.999"
A_ASSOCIATE_AC, A_ASSOCIATE_RJ, A_RELEASE_RP, A_ABORT = 0x02, 0x03, 0x06, 0x07


def setup_module() -> None:
    require_dcmtk()


def data_set(uid: bytes) -> bytes:
    """(0008,0016) and (0008,0018), explicit VR little endian: enough for a C-STORE."""
    def ui(element: int, value: bytes) -> bytes:
        value += b"\0" * (len(value) % 2)
        return struct.pack("<HH", 0x0008, element) + b"UI" + struct.pack("<H", len(value)) + value
    return ui(0x0016, CT) + ui(0x0018, uid)


def answer(sock: socket.socket, timeout: float = 10.0) -> tuple[int, bytes]:
    """The next PDU, or (-1, b"") if the connection closed or nothing came in time."""
    sock.settimeout(timeout)
    try:
        return read_pdu(sock)
    except (ConnectionResetError, socket.timeout):
        return -1, b""


def ask(port: int, request: bytes, timeout: float = 10.0) -> tuple[int, bytes]:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(request)
        return answer(sock, timeout)


def answered(port: int, request: bytes, timeout: float) -> str:
    """The first answer to ``request``, in the words of docs/conformance.md."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(request)
        sock.settimeout(timeout)
        try:
            kind, body = read_pdu(sock)
        except socket.timeout:
            return ps38.NO_ANSWER
        except ConnectionResetError:
            return "connection reset"
    return "connection closed" if kind == -1 else ps38.describe(kind, body)


def context_results(ac_body: bytes) -> list[tuple[int, int]]:
    """(context ID, result) of each presentation context item of an A-ASSOCIATE-AC."""
    results, offset = [], 68
    while offset + 4 <= len(ac_body):
        item_type, length = struct.unpack_from(">BxH", ac_body, offset)
        if item_type == 0x21:
            results.append((ac_body[offset + 4], ac_body[offset + 6]))
        offset += 4 + length
    return results


def associated(port: int, contexts: bytes | None = None) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.sendall(associate_rq(contexts))
    assert read_pdu(sock)[0] == A_ASSOCIATE_AC
    return sock


# ---- 1. command sets are bounded ----------------------------------------------------------------

def test_an_endless_command_set_is_aborted(daemon_factory) -> None:
    # DCMTK 3.6.7 parses command fragments as they come (zeros are empty (0000,0000) elements it
    # warns about and ignores), so its memory stays flat and it never answers; we abort instead.
    d = daemon_factory("--workers", "1")
    fragment = p_data(1, 0x01, bytes(16000))  # a command fragment that is never the last
    sock = associated(d.port)
    deadline, sent = time.monotonic() + 10, 0
    try:
        while sent < 256 and time.monotonic() < deadline:  # at most 4 MiB; the cap is 64 KiB
            sock.sendall(fragment * 16)
            sent += 16
    except (BrokenPipeError, ConnectionResetError):
        pass  # aborted while we were still sending
    kind, _ = answer(sock)
    sock.close()
    assert kind in (A_ABORT, -1)  # -1: the abort was lost in a reset of the unread data we sent
    log = d.wait_for_log("command set larger than")
    assert "command set larger than 65536 bytes" in log, log


# ---- 2. negotiation cost is bounded -------------------------------------------------------------

def test_a_megabyte_of_repeated_context_ids_is_rejected_at_once(daemon_factory, dcmtk_storescp) -> None:
    # 17,443 contexts with IDs 1, 3, ... 255, 1, 3, ...: every ID is repeated, so none is valid
    # (PS3.8 9.3.2.2). DCMTK 3.6.7 accepts it, with one result per ID.
    items, size = [], 0
    while size < (1 << 20) - 2000:
        items.append(context((2 * len(items) + 1) % 256))
        size += len(items[-1])
    request = associate_rq(b"".join(items))
    d = daemon_factory("--workers", "1")
    started = time.monotonic()
    kind, body = ask(d.port, request)
    took = time.monotonic() - started
    dcmtk_kind, dcmtk_body = ask(dcmtk_storescp().port, request, timeout=60)
    assert (kind, body) == (A_ASSOCIATE_RJ, bytes([0, 1, 2, 1]))  # permanent, service provider (ACSE), no reason
    assert (dcmtk_kind, context_results(dcmtk_body)) == (A_ASSOCIATE_AC, [(i, 0) for i in range(1, 256, 2)])
    assert took < 5, f"{took:.1f} s to answer one A-ASSOCIATE-RQ"
    assert "no presentation context has an ID PS3.8 9.3.2.2 allows: 1 (proposed 137 times)" in d.wait_for_log(
        "and 120 more")


# ---- 3. A-ASSOCIATE-RQs PS3.8 defines as invalid (docs/conformance.md lists them) -------------------

# The same requests reach each negotiation path (storescpd/dicom/acceptance.py): the common one, and
# pynetdicom's for role selection, -xf profiles and -pm. (daemon arguments, sub-items added to each request)
PATHS = {
    "common": ((), b""),
    "role selection": ((), ps38.ROLE_SELECTION),
    "-xf profile": (("-xf", str(ROOT / "etc" / "storescp.cfg"), "Default"), b""),
    "-pm": (("-pm",), b""),
}


@pytest.mark.parametrize("path", list(PATHS))
def test_each_invalid_request_gets_its_documented_answer_and_log_line(daemon_factory, path: str) -> None:
    args, extra = PATHS[path]
    d = daemon_factory("--workers", "1", *args)
    wrong = []
    for case in ps38.CASES:
        logged = len(d.log())
        got = answered(d.port, case.build(extra), timeout=5)
        if got != ps38.our_answer(case):
            wrong.append(f"{case.name}: {got}, documented {ps38.our_answer(case)}")
        else:
            try:
                wait_until(lambda: case.log in d.log()[logged:], 5, f"{case.log!r} in the log")
            except AssertionError as missing:
                wrong.append(f"{case.name}: {missing}")
    assert not wrong, "\n".join(wrong) + "\n" + d.log()
    assert "Traceback" not in d.log()
    assert echoscu(d.port).returncode == 0


def test_dcmtk_answers_each_invalid_request_as_documented(dcmtk_storescp) -> None:
    # The reference half of docs/conformance.md's table. DCMTK serves one association at a time: each
    # request it holds without an answer is closed after 2 s, which frees it for the next.
    reference = dcmtk_storescp()
    wrong = []
    for case in ps38.CASES:
        got = answered(reference.port, case.request, timeout=2)
        if got != case.dcmtk:
            wrong.append(f"{case.name}: {got}, documented {case.dcmtk}")
    assert not wrong, "\n".join(wrong)


def test_a_request_of_empty_presentation_contexts_is_aborted_at_once(daemon_factory) -> None:
    # The audit's request: 1 MiB of presentation context items with no sub-items cost 19 s of CPU.
    # DCMTK 3.6.7 fails it ("DUL Presentation Context translation failure") and leaves the peer
    # without an answer (measured: nothing within 20 s, even for one such item); we say A-ABORT.
    request = associate_rq(item(0x20, bytes([1, 0, 0, 0])) * ((1 << 20) // 8 - 100))
    d = daemon_factory("--workers", "1")
    started = time.monotonic()
    kind, _ = ask(d.port, request, timeout=30)
    took = time.monotonic() - started
    assert kind == A_ABORT
    assert took < 5, f"{took:.1f} s to refuse one A-ASSOCIATE-RQ"
    assert "presentation context 1 proposes no transfer syntax" in d.wait_for_log("proposes no")


# ---- 4. malformed input answered as DCMTK answers it --------------------------------------------

REJECTIONS = {
    # name: (request, A-ASSOCIATE-RJ result/source/reason, our log line)
    "application context 1.2.3": (associate_rq(application_context=b"1.2.3"), (1, 1, 2),
                                  "application context name '1.2.3' is not 1.2.840.10008.3.1.1.1"),
    "no application context item": (associate_rq(application_context=None), (1, 1, 2),
                                    "application context name '' is not"),
    "protocol version 0x0002": (associate_rq(protocol_version=2), (1, 2, 2),
                                "protocol version 0x0002 does not include version 1"),
}


@pytest.mark.parametrize("name", list(REJECTIONS))
def test_requests_dcmtk_rejects_are_rejected_alike(daemon_factory, dcmtk_storescp, name: str) -> None:
    request, (result, source, reason), cause = REJECTIONS[name]
    d = daemon_factory("--workers", "1")
    reference = dcmtk_storescp()
    expected = (A_ASSOCIATE_RJ, bytes([0, result, source, reason]))
    assert ask(reference.port, request) == expected
    assert ask(d.port, request) == expected
    assert cause in d.wait_for_log(cause)


def test_protocol_version_with_bit_0_and_others_is_accepted(daemon_factory, dcmtk_storescp) -> None:
    request = associate_rq(protocol_version=3)
    d = daemon_factory("--workers", "1")
    assert ask(dcmtk_storescp().port, request)[0] == ask(d.port, request)[0] == A_ASSOCIATE_AC


COMMAND = store_command(b"1.2.3.4.6")
DATA_SET = data_set(b"1.2.3.4.6")
TWO_CONTEXTS = context(1) + context(3)
ABORTS = {
    # name: (what the peer sends once associated with TWO_CONTEXTS, our log line); DCMTK's log line in comments
    "command fragments on two contexts": (  # "DIMSE: Different PresIDs inside Command Set: 3 != 1"
        [p_data(3, 0x01, COMMAND[:20]), p_data(1, 0x03, COMMAND[20:]), p_data(1, 0x02, DATA_SET)],
        "command set fragments on presentation contexts 3 and 1"),
    "P-DATA-TF without PDV items": (  # "PDU without any PDVs encountered"
        [pdu(0x04, b"")], "P-DATA-TF PDU without any PDV item"),
    "odd data fragment": (  # "DIMSE: Odd Fragment Length: 21"
        [p_data(1, 0x03, COMMAND), p_data(1, 0x00, DATA_SET[:21]), p_data(1, 0x02, DATA_SET[21:])],
        "PDV fragment of odd length 21"),
    "odd last data fragment": (  # "DIMSE: Odd Fragment Length: ..."
        [p_data(1, 0x03, COMMAND), p_data(1, 0x02, DATA_SET + b"\0")],
        f"PDV fragment of odd length {len(DATA_SET) + 1}"),
    "odd command fragment": (  # DCMTK cannot parse the command set: "Missing CommandField"
        [p_data(1, 0x01, COMMAND[:21]), p_data(1, 0x03, COMMAND[21:]), p_data(1, 0x02, DATA_SET)],
        "PDV fragment of odd length 21"),
}


@pytest.mark.parametrize("name", list(ABORTS))
def test_malformed_p_data_is_aborted_as_dcmtk_does(daemon_factory, dcmtk_storescp, name: str) -> None:
    steps, cause = ABORTS[name]
    d = daemon_factory("--workers", "1")
    reference = dcmtk_storescp()
    answers = []
    for port in (reference.port, d.port):
        with associated(port, TWO_CONTEXTS) as sock:
            sock.sendall(b"".join(steps))
            answers.append(answer(sock)[0])
    # DCMTK's A-ABORT says source 0 (service user), reason 0; ours source 2 (provider), as all ours do.
    assert answers == [A_ABORT, A_ABORT]
    assert cause in d.wait_for_log(cause)
    assert d.stored_files() == []


# ---- 5. A-RELEASE-RQ in the middle of a data set --------------------------------------------------

def test_release_in_the_middle_of_a_data_set_names_the_dropped_object(daemon_factory, dcmtk_storescp) -> None:
    d = daemon_factory("--workers", "1")
    reference = dcmtk_storescp()
    for port in (reference.port, d.port):
        with associated(port) as sock:
            sock.sendall(p_data(1, 0x03, store_command(b"1.2.3.4.50")) + p_data(1, 0x00, data_set(b"1.2.3.4.50")))
            # the first fragment is taken in (a staging file opened) before the release
            if port == d.port:
                d.wait_for_transfer()
            else:
                time.sleep(0.3)  # DCMTK shows nothing while it reads a data set: give it the time
            sock.sendall(pdu(0x05, bytes(4)))
            assert answer(sock)[0] == A_RELEASE_RP  # DCMTK: "Store SCP Failed: DUL Peer Requested Release"
    log = d.wait_for_log("1.2.3.4.50")
    assert "in the middle of the data set of the C-STORE-RQ of 1.2.3.4.50" in log, log
    assert reference.stored_files() == [] and d.stored_files() == []
    wait_until(lambda: not list(d.staging.glob("*")), 5,
               lambda: f"an empty staging directory: {list(d.staging.glob('*'))}")
