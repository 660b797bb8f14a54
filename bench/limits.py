"""Machine limits: loopback TCP throughput, fsync'd sequential write, small-file creation rate.

Run as a module function from run.py; the TCP sink runs in a separate Python process so the
pump measures two cores, like a sender and a receiver, not one GIL.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

MIB = 1024 * 1024

_SINK = r"""
import socket, sys
srv = socket.socket(); srv.bind(("127.0.0.1", 0)); srv.listen(1)
print(srv.getsockname()[1], flush=True)
conn, _ = srv.accept()
buf = bytearray(1 << 20); view = memoryview(buf); total = 0
while True:
    n = conn.recv_into(view)
    if not n:
        break
    total += n
conn.sendall(str(total).encode()); conn.close()
"""


def loopback_tcp_mb_s(total_bytes: int, timeout: float = 60.0) -> float:
    """Pump total_bytes through 127.0.0.1 from this process to a Python sink process."""
    sink = subprocess.Popen([sys.executable, "-c", _SINK], stdout=subprocess.PIPE, text=True)
    try:
        port = int(sink.stdout.readline())
        chunk = memoryview(os.urandom(MIB))
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
            start = time.perf_counter()
            sent = 0
            while sent < total_bytes:
                sock.sendall(chunk)
                sent += len(chunk)
            sock.shutdown(socket.SHUT_WR)
            received = int(sock.recv(64))
            elapsed = time.perf_counter() - start
        if received != sent:
            raise RuntimeError(f"sink received {received} of {sent} bytes")
        return sent / elapsed / 1e6
    finally:
        try:
            sink.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            sink.kill()
            sink.wait()


def iperf3_mb_s(seconds: int = 3) -> float | None:
    """Loopback throughput from iperf3, when it is installed."""
    iperf = shutil.which("iperf3")
    if not iperf:
        return None
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = subprocess.Popen([iperf, "-s", "-1", "-B", "127.0.0.1", "-p", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        time.sleep(0.3)
        out = subprocess.run([iperf, "-c", "127.0.0.1", "-p", str(port), "-t", str(seconds), "-J"],
                             capture_output=True, text=True, timeout=seconds + 20)
        if out.returncode != 0:
            return None
        return json.loads(out.stdout)["end"]["sum_received"]["bits_per_second"] / 8 / 1e6
    finally:
        if server.poll() is None:
            server.kill()
        server.wait()


def fsync_write_mb_s(path: Path, total_bytes: int) -> float:
    """Sequential write of total_bytes in 1 MiB blocks, then fsync; includes the fsync.

    The caller deletes the file after all repeats: on this VM, rewriting blocks just freed by
    an unlink runs several times faster than writing new ones, which would flatter the disk.
    """
    chunk = os.urandom(MIB)
    os.sync()
    start = time.perf_counter()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        written = 0
        while written < total_bytes:
            written += os.write(fd, chunk)
        os.fsync(fd)
    finally:
        os.close(fd)
    return written / (time.perf_counter() - start) / 1e6


def small_files_per_s(directory: Path, count: int, size: int = 3000, durable: bool = True) -> float:
    """Create `count` files of `size` bytes. durable: write to a staging name, fsync the file,
    rename, fsync the directory -- what a durable receiver pays per object."""
    work = directory / f"limits-smallfiles-{'durable' if durable else 'plain'}"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    payload = os.urandom(size)
    try:
        dir_fd = os.open(work, os.O_RDONLY)
        start = time.perf_counter()
        for i in range(count):
            final = work / f"f{i:06d}"
            target = work / f".f{i:06d}.tmp" if durable else final
            fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            os.write(fd, payload)
            if durable:
                os.fsync(fd)
            os.close(fd)
            if durable:
                os.rename(target, final)
                os.fsync(dir_fd)
        elapsed = time.perf_counter() - start
        os.close(dir_fd)
        return count / elapsed
    finally:
        shutil.rmtree(work, ignore_errors=True)


def measure(directory: Path, quick: bool, repeat: int = 3, log=print) -> dict:
    directory.mkdir(parents=True, exist_ok=True)
    tcp_bytes = (1024 if quick else 4096) * MIB
    disk_bytes = (512 if quick else 1024) * MIB
    files = 300 if quick else 1000
    results: dict[str, object] = {}

    def runs(label: str, fn) -> None:
        values = []
        for _ in range(repeat):
            try:
                values.append(fn())
            except Exception as exc:  # a limit we cannot measure is reported, not fatal
                log(f"  {label}: failed: {exc}")
                return
        results[label] = {"median": statistics.median(values), "min": min(values), "max": max(values)}
        log(f"  {label}: median {statistics.median(values):.0f} (min {min(values):.0f}, max {max(values):.0f})")

    runs("loopback_tcp_python_MB_s", lambda: loopback_tcp_mb_s(tcp_bytes))
    if shutil.which("iperf3"):
        runs("loopback_tcp_iperf3_MB_s", lambda: iperf3_mb_s() or float("nan"))
    os.sync()
    seq_files = [directory / f"limits-seqwrite-{i}.bin" for i in range(repeat)]
    try:
        seq_iter = iter(seq_files)
        runs("fsync_seq_write_MB_s", lambda: fsync_write_mb_s(next(seq_iter), disk_bytes))
    finally:
        for path in seq_files:
            path.unlink(missing_ok=True)
    runs("files_3KB_durable_per_s", lambda: small_files_per_s(directory, files, durable=True))
    runs("files_3KB_plain_per_s", lambda: small_files_per_s(directory, files, durable=False))
    results["sizes"] = {"tcp_bytes": tcp_bytes, "disk_bytes": disk_bytes, "small_files": files}
    return results
