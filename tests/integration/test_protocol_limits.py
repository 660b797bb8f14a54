"""Limits on what a peer can make us hold or compute, and malformed input answered as DCMTK does.

Where DCMTK 3.6.7's storescp is the reference, each test sends it the same bytes and asserts the
same answer (A-ASSOCIATE-RJ with its result/source/reason, A-ABORT or A-RELEASE-RP).
"""

from __future__ import annotations

import socket
import struct
import time

import pytest

from tests.support.pdus import CT, associate_rq, context, item, p_data, pdu, read_pdu, store_command
from tests.support.peers import require_dcmtk

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

def test_a_megabyte_of_presentation_contexts_is_answered_once_per_id_as_dcmtk_does(daemon_factory,
                                                                                 dcmtk_storescp) -> None:
    # 17,443 contexts with IDs 1, 3, ... 255, 1, 3, ...: DCMTK 3.6.7 accepts with one result per ID.
    items, size = [], 0
    while size < (1 << 20) - 2000:
        items.append(context((2 * len(items) + 1) % 256))
        size += len(items[-1])
    request = associate_rq(b"".join(items))
    d = daemon_factory("--workers", "1")
    reference = dcmtk_storescp()
    started = time.monotonic()
    kind, body = ask(d.port, request)
    took = time.monotonic() - started
    dcmtk_kind, dcmtk_body = ask(reference.port, request, timeout=60)
    assert (kind, dcmtk_kind) == (A_ASSOCIATE_AC, A_ASSOCIATE_AC)
    assert context_results(body) == context_results(dcmtk_body) == [(i, 0) for i in range(1, 256, 2)]
    assert took < 5, f"{took:.1f} s to answer one A-ASSOCIATE-RQ"


@pytest.mark.parametrize("name, contexts", [
    ("even context ID", context(2)),
    ("repeated ID, unsupported then CT", context(1, UNSUPPORTED) + context(1)),
    ("repeated ID, CT then unsupported", context(3) + context(1) + context(3, UNSUPPORTED)),
])
def test_odd_and_repeated_context_ids_are_answered_as_dcmtk_does(daemon_factory, dcmtk_storescp, name: str,
                                                                 contexts: bytes) -> None:
    d = daemon_factory("--workers", "1")
    reference = dcmtk_storescp()
    ours, theirs = ask(d.port, associate_rq(contexts)), ask(reference.port, associate_rq(contexts))
    assert ours[0] == theirs[0] == A_ASSOCIATE_AC
    assert context_results(ours[1]) == context_results(theirs[1]), name


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


# ---- 3. malformed input answered as DCMTK answers it --------------------------------------------

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


# ---- 4. A-RELEASE-RQ in the middle of a data set --------------------------------------------------

def test_release_in_the_middle_of_a_data_set_names_the_dropped_object(daemon_factory, dcmtk_storescp) -> None:
    d = daemon_factory("--workers", "1")
    reference = dcmtk_storescp()
    for port in (reference.port, d.port):
        with associated(port) as sock:
            sock.sendall(p_data(1, 0x03, store_command(b"1.2.3.4.50")) + p_data(1, 0x00, data_set(b"1.2.3.4.50")))
            time.sleep(0.3)  # the first fragment is taken in (a staging file opened) before the release
            sock.sendall(pdu(0x05, bytes(4)))
            assert answer(sock)[0] == A_RELEASE_RP  # DCMTK: "Store SCP Failed: DUL Peer Requested Release"
    log = d.wait_for_log("1.2.3.4.50")
    assert "in the middle of the data set of the C-STORE-RQ of 1.2.3.4.50" in log, log
    assert reference.stored_files() == [] and d.stored_files() == []
    deadline = time.monotonic() + 5
    while list((d.output / ".storescpd-staging").glob("*")) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert list((d.output / ".storescpd-staging").glob("*")) == []
