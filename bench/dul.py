"""A minimal raw-socket DICOM Verification SCU, for latency measurements and readiness probes.

Written against PS3.8 directly (no pynetdicom) so that the client adds almost nothing to what
is measured: no threads, no polling, TCP_NODELAY on, one send() per PDU.
"""

from __future__ import annotations

import socket
import struct
import time

APPLICATION_CONTEXT = b"1.2.840.10008.3.1.1.1"
VERIFICATION_SOP_CLASS = b"1.2.840.10008.1.1"
IMPLICIT_VR_LITTLE_ENDIAN = b"1.2.840.10008.1.2"
IMPLEMENTATION_CLASS_UID = b"2.25.123975135410749328574513683049371923591"
IMPLEMENTATION_VERSION = b"STORESCPD_BENCH"

A_ASSOCIATE_RQ, A_ASSOCIATE_AC, A_ASSOCIATE_RJ = 0x01, 0x02, 0x03
P_DATA_TF, A_RELEASE_RQ, A_RELEASE_RP, A_ABORT = 0x04, 0x05, 0x06, 0x07
C_ECHO_RQ, C_ECHO_RSP = 0x0030, 0x8030
PC_ID = 1


class DicomProtocolError(Exception):
    pass


def _item(item_type: int, payload: bytes) -> bytes:
    return struct.pack(">BBH", item_type, 0, len(payload)) + payload


def _pdu(pdu_type: int, payload: bytes) -> bytes:
    return struct.pack(">BBI", pdu_type, 0, len(payload)) + payload


def _even(uid: bytes) -> bytes:
    return uid + b"\0" if len(uid) % 2 else uid


def associate_rq(called: bytes = b"STORESCP", calling: bytes = b"BENCH") -> bytes:
    pc = _item(0x20, bytes([PC_ID, 0, 0, 0])
               + _item(0x30, VERIFICATION_SOP_CLASS)
               + _item(0x40, IMPLICIT_VR_LITTLE_ENDIAN))
    user = _item(0x50, struct.pack(">BBHI", 0x51, 0, 4, 16384)
                 + _item(0x52, IMPLEMENTATION_CLASS_UID)
                 + _item(0x55, IMPLEMENTATION_VERSION))
    body = (struct.pack(">HH", 1, 0) + called.ljust(16) + calling.ljust(16) + bytes(32)
            + _item(0x10, APPLICATION_CONTEXT) + pc + user)
    return _pdu(A_ASSOCIATE_RQ, body)


def _element(element: int, value: bytes) -> bytes:
    return struct.pack("<HHI", 0x0000, element, len(value)) + value


def echo_rq(message_id: int) -> bytes:
    body = (_element(0x0002, _even(VERIFICATION_SOP_CLASS))
            + _element(0x0100, struct.pack("<H", C_ECHO_RQ))
            + _element(0x0110, struct.pack("<H", message_id))
            + _element(0x0800, struct.pack("<H", 0x0101)))
    command = _element(0x0000, struct.pack("<I", len(body))) + body
    pdv = struct.pack(">IBB", len(command) + 2, PC_ID, 0x03) + command
    return _pdu(P_DATA_TF, pdv)


RELEASE_RQ = _pdu(A_RELEASE_RQ, bytes(4))


def _parse_command(data: bytes) -> dict[int, bytes]:
    out, pos = {}, 0
    while pos + 8 <= len(data):
        _group, element, length = struct.unpack_from("<HHI", data, pos)
        out[element] = data[pos + 8:pos + 8 + length]
        pos += 8 + length
    return out


class Association:
    """One association to a Verification SCP: connect+associate, echo(), release()."""

    def __init__(self, host: str, port: int, timeout: float = 10.0) -> None:
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.message_id = 0
        try:
            self.sock.sendall(associate_rq())
            pdu_type, body = self._read_pdu()
            if pdu_type == A_ASSOCIATE_RJ:
                raise DicomProtocolError("association rejected")
            if pdu_type != A_ASSOCIATE_AC:
                raise DicomProtocolError(f"expected A-ASSOCIATE-AC, got PDU type {pdu_type:#x}")
            self._check_accepted(body)
        except BaseException:
            self.sock.close()
            raise

    def _recv_exact(self, n: int) -> bytes:
        chunks, remaining = [], n
        while remaining:
            chunk = self.sock.recv(remaining)
            if not chunk:
                raise DicomProtocolError("peer closed the connection")
            chunks.append(chunk)
            remaining -= len(chunk)
        return b"".join(chunks)

    def _read_pdu(self) -> tuple[int, bytes]:
        pdu_type, _, length = struct.unpack(">BBI", self._recv_exact(6))
        return pdu_type, self._recv_exact(length)

    @staticmethod
    def _check_accepted(body: bytes) -> None:
        pos = 68
        while pos + 4 <= len(body):
            item_type, _, length = struct.unpack_from(">BBH", body, pos)
            if item_type == 0x21:
                result = body[pos + 6]
                if result != 0:
                    raise DicomProtocolError(f"Verification presentation context refused ({result})")
                return
            pos += 4 + length
        raise DicomProtocolError("no presentation context in A-ASSOCIATE-AC")

    def echo(self) -> None:
        self.message_id += 1
        self.sock.sendall(echo_rq(self.message_id))
        command = b""
        while True:
            pdu_type, body = self._read_pdu()
            if pdu_type != P_DATA_TF:
                raise DicomProtocolError(f"expected P-DATA-TF, got PDU type {pdu_type:#x}")
            pos, last = 0, False
            while pos + 6 <= len(body):
                length, _pc, control = struct.unpack_from(">IBB", body, pos)
                command += body[pos + 6:pos + 4 + length]
                last = last or (control & 0x03) == 0x03
                pos += 4 + length
            if last:
                break
        fields = _parse_command(command)
        if struct.unpack("<H", fields.get(0x0100, b"\0\0"))[0] != C_ECHO_RSP:
            raise DicomProtocolError("response is not a C-ECHO-RSP")
        status = struct.unpack("<H", fields.get(0x0900, b"\xff\xff"))[0]
        if status != 0:
            raise DicomProtocolError(f"C-ECHO status {status:#06x}")

    def release(self) -> None:
        try:
            self.sock.sendall(RELEASE_RQ)
            pdu_type, _ = self._read_pdu()
            if pdu_type != A_RELEASE_RP:
                raise DicomProtocolError(f"expected A-RELEASE-RP, got PDU type {pdu_type:#x}")
        finally:
            self.sock.close()


def echo_once(host: str, port: int, timeout: float = 5.0) -> None:
    assoc = Association(host, port, timeout)
    assoc.echo()
    assoc.release()


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    k = min(len(ordered) - 1, max(0, round(p / 100 * (len(ordered) - 1))))
    return ordered[k]


def measure_latency(host: str, port: int, count: int, budget_s: float = 60.0) -> dict:
    """Association setup (connect -> A-ASSOCIATE-AC), C-ECHO round trip on one long
    association, and a whole connect-echo-release cycle; p50 and p99 in milliseconds."""
    setup, cycle, echo = [], [], []
    deadline = time.monotonic() + budget_s
    for _ in range(count):
        if time.monotonic() > deadline:
            break
        t0 = time.perf_counter()
        assoc = Association(host, port)
        t1 = time.perf_counter()
        assoc.echo()
        assoc.release()
        t2 = time.perf_counter()
        setup.append((t1 - t0) * 1e3)
        cycle.append((t2 - t0) * 1e3)
    assoc = Association(host, port)
    try:
        for _ in range(count):
            if time.monotonic() > deadline:
                break
            t0 = time.perf_counter()
            assoc.echo()
            echo.append((time.perf_counter() - t0) * 1e3)
    finally:
        assoc.release()
    return {
        "associations": len(setup), "echoes": len(echo),
        "setup_p50_ms": percentile(setup, 50), "setup_p99_ms": percentile(setup, 99),
        "echo_p50_ms": percentile(echo, 50), "echo_p99_ms": percentile(echo, 99),
        "cycle_p50_ms": percentile(cycle, 50), "cycle_p99_ms": percentile(cycle, 99),
    }
