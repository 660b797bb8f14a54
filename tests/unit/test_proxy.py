"""The PROXY protocol: the parser against haproxy's proxy-protocol.txt, and the pending stage that reads
a balancer's header off real loopback sockets (never blocking, the source handed on with the socket)."""

from __future__ import annotations

import ipaddress
import selectors
import socket
import struct
import threading
import time
from pathlib import Path
from typing import Iterator

import pytest

from storescpd.cli.main import main
from storescpd.config import cmdline as cli
from storescpd.daemon import proxy
from storescpd.daemon.pending import PendingConnections
from storescpd.daemon.proxy import Balancers, Header, Refusal, Wait, examine
from tests.support.pdus import associate_rq, closed_without_an_answer

SIG = proxy.V2_SIGNATURE


def v2(command: int = 0x1, family: int = 0x11, addresses: bytes = b"", tlvs: bytes = b"",
       version: int = 2, length: int | None = None) -> bytes:
    body = addresses + tlvs
    return SIG + bytes([version << 4 | command, family]) + struct.pack(">H", len(body) if length is None else length) + body


def v4_addresses(source: str = "192.0.2.7", destination: str = "198.51.100.1", sport: int = 51234,
                 dport: int = 11112) -> bytes:
    return (ipaddress.IPv4Address(source).packed + ipaddress.IPv4Address(destination).packed
            + struct.pack(">HH", sport, dport))


def tlv(kind: int, value: bytes) -> bytes:
    return struct.pack(">BH", kind, len(value)) + value


def with_crc32c(header: bytes) -> bytes:
    """The header with its CRC32C TLV (the last 7 bytes, zeroed) filled in, as a sender computes it."""
    return header[:-4] + struct.pack(">I", proxy.crc32c(header))


def parsed(data: bytes) -> Header | Wait | Refusal | None:
    return examine(data, from_balancer=True)


# ---- version 1 ------------------------------------------------------------------------------------
def test_v1_tcp4_names_the_source_and_its_length() -> None:
    line = b"PROXY TCP4 192.0.2.7 198.51.100.1 51234 11112\r\n"
    assert parsed(line + associate_rq()) == Header(1, len(line), ("192.0.2.7", 51234))


def test_v1_tcp6_and_unknown() -> None:
    line = b"PROXY TCP6 2001:db8::7 2001:db8::1 4000 104\r\n"
    assert parsed(line) == Header(1, len(line), ("2001:db8::7", 4000))
    assert parsed(b"PROXY UNKNOWN\r\n\x01") == Header(1, 15, None)
    longest = b"PROXY UNKNOWN " + b" ".join([b"ffff:" * 7 + b"ffff"] * 2) + b" 65535 65535\r\n"
    assert len(longest) == proxy.V1_MAX_LINE and parsed(longest) == Header(1, 107, None)


@pytest.mark.parametrize("line", [
    b"PROXY TCP4 192.0.2.07 198.51.100.1 51234 11112\r\n",  # a leading zero (octal?)
    b"PROXY TCP4 192.0.2.7 198.51.100.1 051234 11112\r\n",
    b"PROXY TCP4 192.0.2.7 198.51.100.1 65536 11112\r\n",
    b"PROXY TCP4 2001:db8::7 2001:db8::1 1 2\r\n",  # the family says IPv4
    b"PROXY TCP6 ::ffff:192.0.2.7 2001:db8::1 1 2\r\n",  # not the canonical hex form
    b"PROXY TCP6 fe80::1%eth0 2001:db8::1 1 2\r\n",
    b"PROXY TCP4 192.0.2.7 198.51.100.1 51234\r\n",
    b"PROXY TCP4  192.0.2.7 198.51.100.1 51234 11112\r\n",  # two spaces
    b"PROXY UDP4 192.0.2.7 198.51.100.1 51234 11112\r\n",
    b"PROXY TCP4 192.0.2.7 198.51.100.1 51234 11112\n\r\n",  # a lone LF
    b"PROXY \r\n",
    b"PROXY TCP4 192.0.2.7 198.51.100.1 51234 1111\xff\r\n",
])
def test_v1_lines_that_do_not_match_exactly_are_refused(line: bytes) -> None:
    verdict = parsed(line)
    assert isinstance(verdict, Refusal) and verdict.reason == "invalid", verdict


def test_v1_waits_for_its_crlf_but_not_past_107_bytes() -> None:
    assert parsed(b"PROXY TCP4 192.0.2.7") == Wait(21)
    verdict = parsed(b"PROXY UNKNOWN " + b"x" * 120)
    assert isinstance(verdict, Refusal) and "CRLF" in verdict.cause


# ---- version 2 ------------------------------------------------------------------------------------
def test_v2_ipv4_and_ipv6_sources() -> None:
    header = v2(addresses=v4_addresses())
    assert parsed(header + associate_rq()) == Header(2, 28, ("192.0.2.7", 51234))
    six = ipaddress.IPv6Address("2001:db8::7").packed + ipaddress.IPv6Address("2001:db8::1").packed
    assert parsed(v2(family=0x21, addresses=six + struct.pack(">HH", 4000, 104))) == Header(2, 52, ("2001:db8::7", 4000))
    mapped = ipaddress.IPv6Address("::ffff:192.0.2.9").packed + bytes(16)
    assert parsed(v2(family=0x21, addresses=mapped + bytes(4))) == Header(2, 52, ("192.0.2.9", 0))


def test_v2_local_and_the_families_not_relayed_are_the_balancers_own() -> None:
    assert parsed(v2(command=0x0, family=0x00)) == Header(2, 16, None)
    assert parsed(v2(command=0x0, family=0x11, addresses=v4_addresses())) == Header(2, 28, None)  # addresses ignored
    assert parsed(v2(family=0x00)) == Header(2, 16, None)  # PROXY with AF_UNSPEC
    assert parsed(v2(family=0x31, addresses=bytes(216))) == Header(2, 232, None)  # AF_UNIX falls back
    assert parsed(v2(family=0x12, addresses=v4_addresses())) == Header(2, 28, None)  # UDP falls back


def test_v2_tlvs_are_skipped_and_a_crc32c_is_checked() -> None:
    tlvs = tlv(0x04, b"") + tlv(0x02, b"pacs.example.org") + tlv(0x20, b"\x01" + bytes(4) + tlv(0x21, b"TLSv1.3"))
    header = v2(addresses=v4_addresses(), tlvs=tlvs)
    assert parsed(header) == Header(2, len(header), ("192.0.2.7", 51234))
    signed = with_crc32c(v2(addresses=v4_addresses(), tlvs=tlvs + tlv(0x03, bytes(4))))
    assert parsed(signed) == Header(2, len(signed), ("192.0.2.7", 51234))
    tampered = signed[:17] + b"\x01" + signed[18:]  # one bit of the source address
    verdict = parsed(tampered)
    assert isinstance(verdict, Refusal) and "CRC32C" in verdict.cause


def test_crc32c_is_castagnolis() -> None:
    assert proxy.crc32c(b"123456789") == 0xE3069283  # RFC 3720's check value


@pytest.mark.parametrize("header, words", [
    (v2(version=1, addresses=v4_addresses()), "version 1"),
    (v2(command=0x2, addresses=v4_addresses()), "command 0x2"),
    (v2(family=0x41, addresses=v4_addresses()), "0x41"),
    (v2(family=0x13, addresses=v4_addresses()), "0x13"),
    (v2(addresses=v4_addresses()[:8]), "8 address bytes"),
    (v2(addresses=v4_addresses(), tlvs=b"\x04\x00"), "stray bytes"),
    (v2(addresses=v4_addresses(), tlvs=b"\x05\x00\x09id"), "runs past"),
    (v2(addresses=v4_addresses(), tlvs=tlv(0x03, b"abc")), "CRC32C TLV of 3 bytes"),
    (SIG + b"\x21\x11\xff\xff", "at most 4096"),  # refused on its 16 bytes, without waiting for 64 KiB
])
def test_v2_headers_off_the_specification_are_refused(header: bytes, words: str) -> None:
    verdict = parsed(header)
    assert isinstance(verdict, Refusal) and verdict.reason == "invalid" and words in verdict.cause, verdict


def test_v2_waits_for_its_fixed_part_then_its_length() -> None:
    header = v2(addresses=v4_addresses(), tlvs=tlv(0x04, bytes(40)))
    assert parsed(header[:5]) == Wait(12)  # a beginning of the signature
    assert parsed(header[:14]) == Wait(16)
    assert parsed(header[:30]) == Wait(len(header))


# ---- who may send one -----------------------------------------------------------------------------
def test_a_balancer_must_send_a_header_and_nobody_else_may() -> None:
    rq = associate_rq()
    assert examine(rq, from_balancer=False) is None
    missing = examine(rq, from_balancer=True)
    assert isinstance(missing, Refusal) and missing.reason == "missing" and "send-proxy" in missing.cause
    for header in (b"PROXY TCP4 192.0.2.7 198.51.100.1 1 2\r\n", v2(addresses=v4_addresses())):
        spoofed = examine(header, from_balancer=False)
        assert isinstance(spoofed, Refusal) and spoofed.reason == "spoofed" and "proxy_protocol_from" in spoofed.cause
    assert examine(b"PRO", from_balancer=False) == Wait(6)  # could still be one: wait for its signature
    assert examine(b"\x16\x03\x01", from_balancer=False) is None  # a TLS ClientHello


def test_balancers_match_addresses_as_accept_reports_them() -> None:
    balancers = Balancers(["127.0.0.1/32", "10.0.0.0/8", "2001:db8::/32"])
    assert balancers.listed("10.9.8.7") and balancers.listed("::ffff:10.1.2.3") and balancers.listed("2001:db8::5")
    assert not balancers.listed("127.0.0.2") and not balancers.listed("") and not balancers.listed("fe80::1")
    assert not Balancers() and not Balancers().listed("127.0.0.1")


# ---- the setting ----------------------------------------------------------------------------------
def test_the_setting_from_the_command_line_and_its_checks(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["--proxy-protocol-from", "127.0.0.1/32", "--proxy-protocol-from", "10.0.0.0/8"]
    assert cli.parse(argv)[0]["proxy_protocol_from"] == ["127.0.0.1/32", "10.0.0.0/8"]
    for entry, words in (("10.0.0.5/8", "has host bits set: write the network (10.0.0.0/8) or one address"),
                         ("balancer.example", "is not an IP address or CIDR network"),
                         ("0.0.0.0/0", "lists every address")):
        assert main(["--proxy-protocol-from", entry, "-od", str(tmp_path), "--check-config", "104"]) == 1
        assert f"proxy_protocol_from entry '{entry}' {words}" in capsys.readouterr().err


# ---- the pending stage, on real loopback sockets --------------------------------------------------
class Stage:
    """A PendingConnections with a loopback listener, as the supervisor runs it (no processes)."""

    def __init__(self, balancers: list[str]) -> None:
        self.selector = selectors.DefaultSelector()
        self.refused: list[str] = []
        self.timed_out = 0
        self.stage = PendingConnections(self.selector, self._silent, self.refused.append, Balancers(balancers))
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(16)
        self.listener.setblocking(False)
        self.clients: list[socket.socket] = []

    def _silent(self) -> None:
        self.timed_out += 1

    def connect(self, source: str = "127.0.0.1") -> socket.socket:
        client = socket.socket()
        client.bind((source, 0))
        client.connect(self.listener.getsockname())
        self.clients.append(client)
        deadline = time.monotonic() + 5
        before = len(self.stage.waiting)
        while len(self.stage.waiting) == before and time.monotonic() < deadline:
            self.stage.accept(self.listener, self.role)
        return client

    role = "dicom"

    def turn(self, seconds: float = 0.3) -> None:
        """Run the selector as the supervisor's loop does, for about `seconds`."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            for key, _mask in self.selector.select(0.05):
                key.data(key.fileobj)

    def close(self) -> None:
        self.stage.close_all()
        for c in self.clients:
            c.close()
        self.listener.close()
        self.selector.close()


@pytest.fixture
def stage() -> Iterator[Stage]:
    s = Stage(["127.0.0.1/32"])
    yield s
    s.close()


def test_a_balancers_header_is_read_off_and_its_source_handed_on(stage: Stage) -> None:
    client = stage.connect()
    header = v2(addresses=v4_addresses("192.0.2.7", "127.0.0.1", 40000, 11112))
    rq = associate_rq()
    for piece in (header[:7], header[7:20], header[20:] + rq[:10], rq[10:]):  # in pieces: it waits between them
        assert not stage.stage.ready
        client.sendall(piece)
        stage.turn(0.2)
    (ready,) = stage.stage.ready
    assert ready.peer == ("192.0.2.7", 40000) and not stage.refused
    assert ready.sock.recv(len(rq) + 10, socket.MSG_DONTWAIT) == rq  # the header is gone, the request whole
    assert ready.sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT) == 1  # the worker reads as usual


def test_a_health_check_is_the_balancers_own_and_one_that_only_connects_is_closed(stage: Stage) -> None:
    check = stage.connect()
    check.sendall(b"PROXY UNKNOWN\r\n" + associate_rq())
    stage.turn(0.2)
    (ready,) = stage.stage.ready
    assert ready.peer[0] == "127.0.0.1"
    probe = stage.connect()
    probe.sendall(v2(command=0x0, family=0x00))
    probe.shutdown(socket.SHUT_WR)
    stage.turn(0.2)
    assert len(stage.stage.ready) == 1 and not stage.stage.waiting  # nothing for a worker to do
    assert closed_without_an_answer(probe)


@pytest.mark.parametrize("source, data, reason", [
    ("127.0.0.1", associate_rq(), "missing"),
    ("127.0.0.2", b"PROXY TCP4 10.1.2.3 127.0.0.1 1 2\r\n" + associate_rq(), "spoofed"),
    ("127.0.0.2", v2(addresses=v4_addresses()) + associate_rq(), "spoofed"),
    ("127.0.0.1", v2(version=3), "invalid"),
])
def test_refused_connections_are_closed_and_counted(stage: Stage, caplog: pytest.LogCaptureFixture,
                                                    source: str, data: bytes, reason: str) -> None:
    client = stage.connect(source)
    client.sendall(data)
    stage.turn(0.2)
    assert stage.refused == [reason] and not stage.stage.ready and not stage.stage.waiting
    assert closed_without_an_answer(client)
    assert f"refusing the connection from {source}:" in caplog.text


def test_other_peers_are_served_as_before(stage: Stage) -> None:
    client = stage.connect("127.0.0.2")
    client.sendall(associate_rq())
    stage.turn(0.2)
    (ready,) = stage.stage.ready
    assert ready.peer == ("127.0.0.2", client.getsockname()[1]) and not stage.refused


def test_a_balancer_silent_inside_its_header_times_out(stage: Stage, caplog: pytest.LogCaptureFixture) -> None:
    client = stage.connect()
    client.sendall(b"PROXY TCP4 192.0.2.7")
    stage.turn(0.2)
    assert stage.stage.waiting and not stage.stage.ready
    stage.stage.expire(0)  # the ACSE timeout, reached
    assert not stage.stage.waiting and stage.timed_out == 1
    assert "no complete PROXY protocol header within 0 s" in caplog.text


def test_a_balancer_that_closes_inside_its_header_is_closed_at_once(stage: Stage) -> None:
    client = stage.connect()
    client.sendall(SIG + b"\x21")
    client.shutdown(socket.SHUT_WR)
    stage.turn(0.3)
    assert not stage.stage.waiting and not stage.stage.ready and not stage.refused


def test_tls_waits_after_the_header_until_its_hello_arrives() -> None:
    s = Stage(["127.0.0.1/32"])
    s.role = "dicom-tls"
    try:
        client = s.connect()
        client.sendall(b"PROXY TCP4 192.0.2.7 127.0.0.1 999 2762\r\n")
        s.turn(0.2)
        assert not s.stage.ready and s.stage.waiting  # no worker for a silent connection
        client.sendall(b"\x16\x03\x01\x00\x05hello")
        s.turn(0.2)
        (ready,) = s.stage.ready
        assert ready.peer == ("192.0.2.7", 999) and ready.role == "dicom-tls"
    finally:
        s.close()


def test_read_header_on_a_blocking_socket() -> None:
    """Single-process and --inetd modes: the same checks, waiting in poll (bounded by the timeout)."""
    listener = socket.create_server(("127.0.0.1", 0))
    with listener, socket.create_connection(listener.getsockname()) as client:
        server, _addr = listener.accept()
        with server:
            assert proxy.read_header(server, True, 0.2) == Refusal(
                "timeout", "it sent no complete PROXY protocol header within 0.2 s")
            header = v2(addresses=v4_addresses())
            client.sendall(header[:22])
            sender = threading.Timer(0.2, lambda: client.sendall(header[22:] + associate_rq()))
            sender.start()
            start = time.monotonic()
            verdict = proxy.read_header(server, True, 5)
            sender.join()
            assert verdict == Header(2, 28, ("192.0.2.7", 51234)) and time.monotonic() - start < 4
            assert server.recv(6) == associate_rq()[:6]  # consumed: the request comes next
            missing = proxy.read_header(server, True, 1)
            assert isinstance(missing, Refusal) and missing.reason == "missing"
            rest = len(associate_rq()) - 6
            while rest:
                rest -= len(server.recv(rest))
            client.sendall(b"PROX")
            client.shutdown(socket.SHUT_WR)
            assert proxy.read_header(server, False, 5) == Refusal(
                "closed", "it closed the connection inside a PROXY protocol header")
            server.recv(4)
            assert proxy.read_header(server, False, 5) == Refusal("closed", "it closed the connection")
