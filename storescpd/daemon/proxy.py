"""The PROXY protocol (HAProxy's, versions 1 and 2): the header a load balancer sends ahead of the
data of a connection it relays, naming the client.

``proxy_protocol_from`` lists the balancers. A connection from one of them must begin with a header
(no guessing: without one it is refused) and the header's source address then stands for the peer
everywhere (``+ac``, logs, the API, hooks). A connection from anywhere else that begins with a header is
refused (no spoofing). A LOCAL (v2) or UNKNOWN (v1) header, and the address families storescpd does not
relay (AF_UNSPEC, AF_UNIX, datagrams), leave the balancer's own address, as the specification asks: that
is how health checks arrive.

``examine`` decides from the first bytes of a connection (peeked, never read), so the supervisor's
pending stage can wait for the rest without blocking; ``consume`` then reads the header off the socket.
``read_header`` does the same on a blocking socket (single-process and --inetd modes).

The format is haproxy's doc/proxy-protocol.txt: a v1 line has at most 107 bytes with its CRLF,
canonical addresses and ports without leading zeros; a v2 header has version 2, command LOCAL or PROXY,
a length that covers the addresses, and TLVs that are walked (bounds checked, a CRC32C one verified)
and otherwise ignored. storescpd accepts at most ``MAX_V2_HEADER`` bytes of it.
"""

from __future__ import annotations

import ipaddress
import re
import select
import socket
import time
from dataclasses import dataclass
from typing import Iterable

V1_SIGNATURE = b"PROXY "
V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
V1_MAX_LINE = 107  # the longest valid line, CRLF included ("PROXY UNKNOWN" with two IPv6 addresses)
V2_FIXED = 16  # signature, version and command, family and protocol, length
# HAProxy's headers are a few dozen bytes (a few hundred with TLS TLVs); more is not a balancer's.
MAX_V2_HEADER = 4096
PEEK_BYTES = MAX_V2_HEADER
REFUSALS = ("spoofed", "missing", "invalid")  # why a connection was refused (a bounded metric label)

_LOCAL, _PROXY = 0x0, 0x1
_AF_INET, _AF_INET6 = 0x1, 0x2
_STREAM = 0x1
_ADDRESS_BYTES = {0x1: 12, 0x2: 36, 0x3: 216}  # by family: two addresses and (for INET) two ports
_PP2_TYPE_CRC32C = 0x03
_PORT = re.compile(r"0|[1-9][0-9]{0,4}")

Address = tuple[str, int]


@dataclass(frozen=True)
class Header:
    """A valid header: ``length`` bytes to consume; ``source`` the client, or None when the connection is
    the balancer's own (LOCAL, UNKNOWN, a family storescpd does not relay)."""

    version: int
    length: int
    source: Address | None


@dataclass(frozen=True)
class Wait:
    """Too few bytes to decide: look again once ``needed`` bytes have arrived."""

    needed: int


@dataclass(frozen=True)
class Refusal:
    """The connection is refused: ``reason`` is one of REFUSALS (or, from ``read_header``, "timeout" or
    "closed"); ``cause`` says what the peer did and what to change, for the log."""

    reason: str
    cause: str


class HeaderError(ValueError):
    """A header that does not follow the specification (the message says where)."""


class Balancers:
    """The networks of ``proxy_protocol_from`` (validated by the configuration)."""

    def __init__(self, networks: Iterable[str] = ()) -> None:
        self.networks = tuple(ipaddress.ip_network(n, strict=False) for n in networks)

    def __bool__(self) -> bool:
        return bool(self.networks)

    def listed(self, host: str) -> bool:
        """Whether the address ``host`` (as accept() reports it) is a balancer's."""
        try:
            address = ipaddress.ip_address(host.split("%", 1)[0])
        except ValueError:
            return False  # a unix socket: no balancer
        mapped = getattr(address, "ipv4_mapped", None)  # a dual-stack listener sees ::ffff:a.b.c.d
        return any((mapped or address) in network for network in self.networks)


def examine(head: bytes, from_balancer: bool) -> Header | Wait | Refusal | None:
    """What to do with a connection that begins with ``head`` (not empty): None when no header is
    expected and none is there (go on), a Header to consume, Wait for more bytes, or a Refusal."""
    signature = _signature(head)
    if signature is None:
        if not from_balancer:
            return None
        return Refusal("missing", "it is listed in proxy_protocol_from but sent no PROXY protocol header "
                                  "(set send-proxy or send-proxy-v2 on the balancer's server lines, or take the "
                                  "address off proxy_protocol_from)")
    if len(head) < len(signature):
        return Wait(len(signature))
    if not from_balancer:
        return Refusal("spoofed", "it sent a PROXY protocol header but is not listed in proxy_protocol_from "
                                  "(only a listed load balancer may name another address; if this is one, add it)")
    try:
        return _parse_v1(head) if signature is V1_SIGNATURE else _parse_v2(head)
    except HeaderError as exc:
        return Refusal("invalid", f"its PROXY protocol header is invalid: {exc}")


def consume(sock: socket.socket, header: Header) -> bool:
    """Read the header off the socket, where it has been peeked whole; False if it is not all there."""
    try:
        return len(sock.recv(header.length, socket.MSG_DONTWAIT)) == header.length
    except OSError:
        return False


def read_header(sock: socket.socket, from_balancer: bool, timeout: float) -> Header | Refusal | None:
    """``examine`` on a blocking socket, waiting up to ``timeout`` seconds; a Header is consumed. Adds the
    refusals "timeout" (nothing decisive in time) and "closed" (the peer left first)."""
    deadline = time.monotonic() + timeout
    needed = 1
    try:
        while True:
            set_low_water_mark(sock, needed)
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not select.select([sock], [], [], remaining)[0]:
                what = "no complete PROXY protocol header" if from_balancer else "nothing"
                return Refusal("timeout", f"it sent {what} within {timeout:g} s")
            try:
                head = sock.recv(PEEK_BYTES, socket.MSG_PEEK | socket.MSG_DONTWAIT)
            except (BlockingIOError, InterruptedError):
                continue
            except OSError:
                head = b""
            verdict = examine(head, from_balancer) if head else Refusal("closed", "it closed the connection")
            if isinstance(verdict, Wait):
                if verdict.needed <= needed:  # readable with fewer bytes than the mark: end of file
                    return Refusal("closed", "it closed the connection inside a PROXY protocol header")
                needed = verdict.needed
                continue
            if isinstance(verdict, Header) and not consume(sock, verdict):
                return Refusal("closed", "it closed the connection inside a PROXY protocol header")
            return verdict
    finally:
        set_low_water_mark(sock, 1)


def peer_text(peer: Address) -> str:
    """host:port, or [host]:port for IPv6: a peer as the logs and the API show it."""
    host, port = peer
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def set_low_water_mark(sock: socket.socket, size: int) -> bool:
    """Make the socket readable only once ``size`` bytes are queued (or at end of file)."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT, size)
        return True
    except OSError:
        return False


def crc32c(data: bytes) -> int:
    """CRC-32C (Castagnoli), as RFC 4960 appendix B computes it: the v2 header's checksum TLV."""
    crc = 0xFFFFFFFF
    for byte in data:
        crc = _CRC32C_TABLE[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def _crc32c_table() -> tuple[int, ...]:
    table = []
    for n in range(256):
        for _ in range(8):
            n = (n >> 1) ^ 0x82F63B78 if n & 1 else n >> 1
        table.append(n)
    return tuple(table)


_CRC32C_TABLE = _crc32c_table()


# ---- the two formats ------------------------------------------------------------------------------
def _signature(head: bytes) -> bytes | None:
    """The signature ``head`` begins with, or is still a beginning of; None if neither."""
    for signature in (V1_SIGNATURE, V2_SIGNATURE):
        if head[:len(signature)] == signature[:len(head)]:
            return signature
    return None


def _parse_v1(data: bytes) -> Header | Wait:
    end = data.find(b"\r\n", 0, V1_MAX_LINE)
    if end < 0:
        if len(data) >= V1_MAX_LINE:
            raise HeaderError(f"a version 1 line without CRLF in its first {V1_MAX_LINE} bytes")
        return Wait(len(data) + 1)
    line = data[:end]
    if not line.isascii() or b"\r" in line or b"\n" in line:
        raise HeaderError(f"a version 1 line that is not one line of US-ASCII: {bytes(line)!r}")
    fields = line.decode("ascii").split(" ")
    if fields[1:2] == ["UNKNOWN"]:
        return Header(1, end + 2, None)  # the rest of an UNKNOWN line is ignored, as specified
    if len(fields) != 6 or fields[1] not in ("TCP4", "TCP6"):
        raise HeaderError(f"a version 1 line that is not 'PROXY TCP4|TCP6 source destination sport dport': "
                          f"{bytes(line)!r}")
    source = _v1_address(fields[2], fields[1])
    _v1_address(fields[3], fields[1])
    port = _v1_port(fields[4])
    _v1_port(fields[5])
    return Header(1, end + 2, (source, port))


def _v1_address(text: str, protocol: str) -> str:
    try:
        if protocol == "TCP4":
            return str(ipaddress.IPv4Address(text))  # rejects leading zeros, as the specification does
        if "%" in text or "." in text:  # a scope or an embedded IPv4 address: not the canonical form
            raise ValueError(text)
        return _text(ipaddress.IPv6Address(text))
    except ValueError:
        raise HeaderError(f"{text!r} is not an {'IPv4' if protocol == 'TCP4' else 'IPv6'} address") from None


def _v1_port(text: str) -> int:
    if not _PORT.fullmatch(text) or int(text) > 65535:
        raise HeaderError(f"{text!r} is not a port (0 to 65535, no leading zeros)")
    return int(text)


def _parse_v2(data: bytes) -> Header | Wait:
    if len(data) < V2_FIXED:
        return Wait(V2_FIXED)
    version, command = data[12] >> 4, data[12] & 0x0F
    family, protocol = data[13] >> 4, data[13] & 0x0F
    total = V2_FIXED + int.from_bytes(data[14:16], "big")
    if version != 2:
        raise HeaderError(f"version {version} (only version 2 has a binary header)")
    if command not in (_LOCAL, _PROXY):
        raise HeaderError(f"command {command:#x} (only LOCAL 0x0 and PROXY 0x1 exist)")
    if family > 3 or protocol > 2:
        raise HeaderError(f"address family and protocol {data[13]:#04x} (not in the specification)")
    if total > MAX_V2_HEADER:
        raise HeaderError(f"it announces {total} bytes (storescpd accepts at most {MAX_V2_HEADER})")
    if len(data) < total:
        return Wait(total)
    header = bytes(data[:total])
    addresses = _ADDRESS_BYTES.get(family, 0) if protocol else 0
    if total - V2_FIXED < addresses:
        raise HeaderError(f"{total - V2_FIXED} address bytes where family and protocol {data[13]:#04x} need "
                          f"{addresses}")
    _check_tlvs(header, V2_FIXED + addresses)
    if command == _LOCAL or protocol != _STREAM or family not in (_AF_INET, _AF_INET6):
        return Header(2, total, None)
    size = 4 if family == _AF_INET else 16
    source = ipaddress.ip_address(header[V2_FIXED:V2_FIXED + size])
    port_at = V2_FIXED + 2 * size
    return Header(2, total, (_text(source), int.from_bytes(header[port_at:port_at + 2], "big")))


def _check_tlvs(header: bytes, start: int) -> None:
    """Walk the TLVs after the addresses: each inside the header; a CRC32C one must match."""
    position, checksum_at = start, None
    while position < len(header):
        if position + 3 > len(header):
            raise HeaderError(f"{len(header) - position} stray bytes after the last TLV")
        kind, size = header[position], int.from_bytes(header[position + 1:position + 3], "big")
        if position + 3 + size > len(header):
            raise HeaderError(f"TLV {kind:#04x} of {size} bytes runs past the end of the header")
        if kind == _PP2_TYPE_CRC32C:
            if size != 4:
                raise HeaderError(f"a CRC32C TLV of {size} bytes (it has 4)")
            checksum_at = position + 3
        position += 3 + size
    if checksum_at is not None:
        sent = int.from_bytes(header[checksum_at:checksum_at + 4], "big")
        if crc32c(header[:checksum_at] + bytes(4) + header[checksum_at + 4:]) != sent:
            raise HeaderError("its CRC32C checksum does not match")


def _text(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str:
    mapped = getattr(address, "ipv4_mapped", None)
    return str(mapped or address)
