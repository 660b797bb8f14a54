#!/usr/bin/env python3
"""Soak storescpd under faults, black-box, and prove that nothing acknowledged is lost.

    sudo .venv/bin/python bench/soak.py [--duration 1800] [--out DIR] [--json PATH]

Four senders (two DCMTK storescu, two pynetdicom SCUs, so every object's status is known) send
objects of 3 KB to 64 MiB, each with its own SOP Instance UID, to a pre-fork storescpd for
--duration seconds while faults are injected through the daemon's public surfaces only:

- a reload every 30 s, alternately SIGHUP and POST /reload, the pool alternating between 4 and 5
  workers; every fourth one is a broken configuration file that must be refused (422) while the
  daemon keeps serving;
- SIGKILL of a random pool worker (busy ones preferred) every 45 s; the pool must be whole again;
- a period of a full output file system (the output directory is a tmpfs this script mounts; a
  filler keeps it full while the downstream consumer is "down");
- bursts of malformed associations over loopback (garbage, half-sent A-ASSOCIATE-RQ then close,
  RQs whose lengths lie, aborts and bad PDVs after the AC).

A consumer plays the downstream PACS: it checks every file the daemon publishes (the data set
after the file meta must be byte-identical to what was sent, its UID published once) and then
removes it, so a 30-minute run needs no more than the tmpfs. At the end the daemon is stopped
and the script checks: every object acknowledged 0x0000 was published exactly once and
identical; nothing else was published; `.storescpd-staging/` is empty; no zombie lingered; the
supervisor's descriptors are back to their start; fds, threads and RSS per process are flat
(least-squares slopes reported). Results: <out>/soak.json and a summary on stdout; the exit
status is 0 only when every check passed. Needs root (mount). See docs/reliability.md.
"""

from __future__ import annotations

import argparse
import errno
import hashlib
import http.client
import itertools
import json
import logging
import math
import os
import random
import re
import shutil
import signal
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from io import BytesIO
from pathlib import Path
from typing import Callable, Iterator

from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian

sys.path.insert(0, str(Path(__file__).resolve().parent))
import dul  # noqa: E402  (bench/ siblings, as bench/run.py uses them)
from procmon import ProcessTree  # noqa: E402

MIB = 1 << 20
HOST = "127.0.0.1"
BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
STORESCPD = str(Path(sys.executable).parent / "storescpd")
STORESCU = "/usr/bin/storescu"  # absolute: the venv's pynetdicom installs its own `storescu`
STAGING = ".storescpd-staging"
CALLED_AE = "STORESCPD"
SUCCESS = 0x0000
PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
MULTIFRAME_WORD_SC_STORAGE = "1.2.840.10008.5.1.4.1.1.7.3"

# Adopt the listening sockets as fds 3 and 4 with LISTEN_PID set to the exec'd process, as systemd does
# (through fresh duplicates, so that neither lands on the other; the originals are closed).
_ADOPT_EXEC = (
    "import os,sys; a, b = int(sys.argv[1]), int(sys.argv[2]); c, d = os.dup(a), os.dup(b); "
    "os.dup2(c, 3); os.dup2(d, 4); [os.close(fd) for fd in {a, b, c, d} - {3, 4}]; "
    "os.set_inheritable(3, True); os.set_inheritable(4, True); "
    "os.environ['LISTEN_PID'] = str(os.getpid()); os.execv(sys.argv[3], sys.argv[3:])"
)


def log(msg: str) -> None:
    print(msg, flush=True)


class Clock:
    """Seconds since the soak started; every timestamp in the results is on this clock."""

    def __init__(self) -> None:
        self.start = time.monotonic()

    def now(self) -> float:
        return round(time.monotonic() - self.start, 3)


# ------------------------------------------------------------------------------- the objects

@dataclass(frozen=True)
class SizeClass:
    """One kind of object in the mix: its pixel matrix and how often it is picked."""

    name: str
    rows: int
    columns: int
    frames: int
    weight: float

    @property
    def pixel_bytes(self) -> int:
        return self.rows * self.columns * self.frames * 2  # 16 bits allocated


SIZE_CLASSES = (
    SizeClass("3k", 32, 32, 1, 0.35),
    SizeClass("64k", 256, 128, 1, 0.20),
    SizeClass("512k", 512, 512, 1, 0.25),
    SizeClass("4m", 512, 512, 8, 0.12),
    SizeClass("16m", 512, 512, 32, 0.06),
    SizeClass("64m", 512, 512, 128, 0.02),
)
BATCH_MAX_OBJECTS = 12
BATCH_MAX_BYTES = 160 * MIB

UID_ROOT = "2.25."
UID_DIGITS = 30  # 2.25.<nonce: 20 digits><counter: 10 digits>: every UID has the same length
TOKEN_BYTES = 16  # per-object bytes at the start of PixelData: a pixel mix-up is caught too


def object_token(uid: str) -> bytes:
    return hashlib.sha256(uid.encode()).digest()[:TOKEN_BYTES]


class UidSource:
    """Unique SOP Instance UIDs of one fixed length, so they splice into a template in place."""

    def __init__(self, rng: random.Random) -> None:
        self.nonce = str(rng.randint(10 ** 19, 10 ** 20 - 1))
        self._counter = itertools.count(1)
        self._lock = threading.Lock()

    def next(self) -> str:
        with self._lock:
            n = next(self._counter)
        return f"{UID_ROOT}{self.nonce}{n:010d}"

    @staticmethod
    def placeholder() -> str:
        return UID_ROOT + "9" * UID_DIGITS


def split_part10(data: bytes | memoryview) -> tuple[dict[int, bytes], int]:
    """The file meta elements of a Part 10 file (by element number) and where its data set starts."""
    if len(data) < 132 or bytes(data[128:132]) != b"DICM":
        raise ValueError("not a DICOM Part 10 file (no DICM prefix)")
    meta: dict[int, bytes] = {}
    pos = 132
    while pos + 8 <= len(data):
        group, element = struct.unpack_from("<HH", data, pos)
        if group != 0x0002:
            break
        vr = bytes(data[pos + 4:pos + 6])
        if vr in (b"OB", b"OW", b"OF", b"SQ", b"UT", b"UN", b"UC", b"UR", b"OD", b"OL", b"OV", b"SV", b"UV"):
            length, header = struct.unpack_from("<I", data, pos + 8)[0], 12
        else:
            length, header = struct.unpack_from("<H", data, pos + 6)[0], 8
        meta[element] = bytes(data[pos + header:pos + header + length])
        pos += header + length
    return meta, pos


def _uid_value(raw: bytes) -> str:
    return raw.rstrip(b"\0 ").decode("ascii", "replace")


@dataclass
class Template:
    """A whole Part 10 file of one size class with a placeholder UID and token, spliced per object."""

    size: SizeClass
    sop_class: str
    data: bytes
    uid_at: tuple[int, int]  # the placeholder UID in the file meta and in the data set
    token_at: int  # the first bytes of the PixelData value
    meta_end: int

    def _parts(self, start: int, uid: str) -> list[memoryview | bytes]:
        view, raw_uid, length = memoryview(self.data), uid.encode(), len(UidSource.placeholder())
        cuts = [(at, raw_uid, length) for at in self.uid_at if at >= start]
        cuts.append((self.token_at, object_token(uid), TOKEN_BYTES))
        parts: list[memoryview | bytes] = []
        pos = start
        for at, value, width in cuts:
            parts += [view[pos:at], value]
            pos = at + width
        parts.append(view[pos:])
        return parts

    def file_parts(self, uid: str) -> list[memoryview | bytes]:
        """The object's whole file, as pieces (no 64 MiB copy per object)."""
        return self._parts(0, uid)

    def dataset_parts(self, uid: str) -> list[memoryview | bytes]:
        """What the data set after the file meta must be, byte for byte."""
        return self._parts(self.meta_end, uid)


def build_template(size: SizeClass, rng: random.Random) -> Template:
    """Encode one object of the size class with pydicom and locate the bytes that vary per object."""
    sop_class = CT_IMAGE_STORAGE if size.frames == 1 else MULTIFRAME_WORD_SC_STORAGE
    placeholder = UidSource.placeholder()
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = placeholder
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = placeholder
    ds.StudyInstanceUID = f"{UID_ROOT}{rng.randint(10 ** 30, 10 ** 31)}"
    ds.SeriesInstanceUID = f"{UID_ROOT}{rng.randint(10 ** 30, 10 ** 31)}"
    ds.PatientName, ds.PatientID, ds.Modality = f"SOAK^{size.name.upper()}", "SOAK", "CT" if size.frames == 1 else "OT"
    ds.StudyDate, ds.StudyTime, ds.AccessionNumber, ds.StudyID = "20240101", "120000", "SOAK1", "1"
    ds.SeriesNumber, ds.InstanceNumber = 1, 1
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.Rows, ds.Columns = size.rows, size.columns
    if size.frames > 1:
        ds.NumberOfFrames = size.frames
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    ds.PixelData = b"".join(rng.randbytes(min(16 * MIB, size.pixel_bytes - i))
                            for i in range(0, size.pixel_bytes, 16 * MIB))
    ds["PixelData"].VR = "OW"
    buffer = BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    data = buffer.getvalue()
    _, meta_end = split_part10(data)
    pixel_header = b"\xe0\x7f\x10\x00OW\x00\x00" + struct.pack("<I", size.pixel_bytes)
    token_at = data.index(pixel_header) + len(pixel_header)
    raw = placeholder.encode()
    first = data.index(raw, 0, token_at)
    second = data.index(raw, first + 1, token_at)
    if first >= meta_end or second < meta_end:
        raise RuntimeError("template: the placeholder UID is not once in the file meta and once in the data set")
    return Template(size, sop_class, data, (first, second), token_at, meta_end)


def write_object(template: Template, uid: str, path: Path) -> None:
    with open(path, "wb") as fh:
        for part in template.file_parts(uid):
            fh.write(part)


def dataset_matches(template: Template, uid: str, dataset: memoryview) -> bool:
    parts = template.dataset_parts(uid)
    if len(dataset) != sum(len(p) for p in parts):
        return False
    pos = 0
    for part in parts:
        if dataset[pos:pos + len(part)] != part:
            return False
        pos += len(part)
    return True


# ------------------------------------------------------------------------------- the ledger

@dataclass
class SentObject:
    """One object a sender sent, and what became of it."""

    uid: str
    size: str
    nbytes: int
    sender: str
    tool: str
    t_sent: float
    t_answer: float | None = None
    status: int | None = None  # None: no response (association aborted, worker killed, timeout)
    published: int = 0  # how many times a file with this UID appeared in the output
    identical: bool | None = None


class Ledger:
    """Every object sent, by UID; shared by the senders and the consumer."""

    def __init__(self) -> None:
        self.objects: dict[str, SentObject] = {}
        self.lock = threading.Lock()
        self.unknown_files: list[str] = []  # published, not from us (or unreadable)
        self.bad_files: list[str] = []  # ours, not byte-identical

    def register(self, obj: SentObject) -> None:
        with self.lock:
            self.objects[obj.uid] = obj

    def answer(self, uid: str, status: int | None, when: float) -> None:
        with self.lock:
            self.objects[uid].status = status
            self.objects[uid].t_answer = when

    def get(self, uid: str) -> SentObject | None:
        with self.lock:
            return self.objects.get(uid)

    def snapshot(self) -> list[SentObject]:
        with self.lock:
            return list(self.objects.values())


# ------------------------------------------------------------------------------- the daemon

class NotifyListener(threading.Thread):
    """A NOTIFY_SOCKET: keeps every message the daemon sends to "systemd"."""

    def __init__(self, path: Path) -> None:
        super().__init__(daemon=True, name="notify")
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        path.unlink(missing_ok=True)
        self.sock.bind(str(path))
        self.sock.settimeout(0.2)
        self.path = path
        self.messages: list[str] = []
        self.changed = threading.Condition()
        self._done = threading.Event()

    def run(self) -> None:
        while not self._done.is_set():
            try:
                message = self.sock.recv(65536).decode(errors="replace")
            except socket.timeout:
                continue
            except OSError:
                return
            with self.changed:
                self.messages.append(message)
                self.changed.notify_all()

    def mark(self) -> int:
        with self.changed:
            return len(self.messages)

    def wait_for(self, field: str, since: int, timeout: float) -> str | None:
        """The first message after index `since` that carries `field` (a whole line), or None."""
        deadline = time.monotonic() + timeout
        with self.changed:
            while True:
                for message in self.messages[since:]:
                    if field in message.split("\n"):
                        return message
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return None
                self.changed.wait(remaining)

    def close(self) -> None:
        self._done.set()
        self.join(2)
        self.sock.close()


class Daemon:
    """storescpd in pre-fork mode, handed its DICOM and API sockets as systemd would."""

    def __init__(self, rundir: Path, workdir: Path, output: Path, config_path: Path, log_level: str) -> None:
        self.rundir = rundir
        self.output = output
        self.config_path = config_path
        self.log_level = log_level
        self.log_path = rundir / "daemon.log"
        self.notify = NotifyListener(workdir / "notify.sock")  # short: a unix socket path has 107 bytes
        self.proc: subprocess.Popen[bytes] | None = None
        self.port = self.api_port = 0

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self, timeout: float = 60.0) -> None:
        dicom, api = socket.socket(), socket.socket()
        for sock, backlog in ((dicom, 128), (api, 64)):
            sock.bind((HOST, 0))
            sock.listen(backlog)
        self.port, self.api_port = dicom.getsockname()[1], api.getsockname()[1]
        self.notify.start()
        env = {**os.environ, "LISTEN_FDS": "2", "LISTEN_FDNAMES": "dicom:api",
               "NOTIFY_SOCKET": str(self.notify.path)}
        argv = [sys.executable, "-c", _ADOPT_EXEC, str(dicom.fileno()), str(api.fileno()), STORESCPD,
                "--config", str(self.config_path), "-od", str(self.output), "--log-level", self.log_level]
        with open(self.log_path, "wb") as err:
            self.proc = subprocess.Popen(argv, env=env, pass_fds=(dicom.fileno(), api.fileno()), stderr=err,
                                         stdout=subprocess.DEVNULL, stdin=subprocess.DEVNULL, cwd=self.rundir)
        dicom.close()
        api.close()
        if self.notify.wait_for("READY=1", 0, timeout) is None:
            raise RuntimeError(f"storescpd did not report READY=1 within {timeout:.0f} s; see {self.log_path}")

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def api(self, method: str, path: str, timeout: float = 15.0) -> tuple[int, dict]:
        conn = http.client.HTTPConnection(HOST, self.api_port, timeout=timeout)
        try:
            conn.request(method, path)
            response = conn.getresponse()
            body = response.read()
            try:
                return response.status, json.loads(body or b"{}")
            except ValueError:
                return response.status, {"text": body.decode(errors="replace")[:500]}
        finally:
            conn.close()

    def status(self) -> dict:
        code, body = self.api("GET", "/status")
        if code != 200:
            raise RuntimeError(f"GET /status answered {code}")
        return body

    def stop(self, timeout: float) -> int | None:
        """SIGTERM (graceful), SIGKILL after `timeout`; the exit status, None if it had to be killed."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
                self.notify.close()
                return None
        self.notify.close()
        return self.proc.returncode


def write_config(path: Path, workers: int, broken: bool = False) -> None:
    """The daemon's TOML file; a broken one names an invalid worker count."""
    path.write_text(f"# written by bench/soak.py\nworkers = {0 if broken else workers}\n"
                    f"graceful_timeout = 30\n")


# ------------------------------------------------------------------------------- the processes

def _read(path: str) -> bytes | None:
    try:
        with open(path, "rb") as fh:
            return fh.read()
    except OSError:
        return None


@dataclass
class ProcSeries:
    """One process's samples: time, RSS (bytes), open descriptors, threads."""

    pid: int
    kind: str
    started: str
    t: list[float] = field(default_factory=list)
    rss: list[int] = field(default_factory=list)
    fds: list[int] = field(default_factory=list)
    threads: list[int] = field(default_factory=list)


def _stat_fields(pid: int) -> list[bytes] | None:
    stat = _read(f"/proc/{pid}/stat")
    if stat is None:
        return None
    return stat[stat.rindex(b")") + 2:].split()  # comm may hold spaces: fields after the last ')'


class Sampler(threading.Thread):
    """Samples every process of the daemon's tree from /proc: RSS, fds, threads, state, CPU."""

    def __init__(self, clock: Clock, root: int, interval: float) -> None:
        super().__init__(daemon=True, name="sampler")
        self.clock, self.root, self.interval = clock, root, interval
        self.tree = ProcessTree(root)
        self.root_cmdline = _read(f"/proc/{root}/cmdline") or b""
        self.series: dict[tuple[int, str], ProcSeries] = {}
        self.process_count: list[tuple[float, int]] = []
        self.zombie_since: dict[tuple[int, str], float] = {}
        self.longest_zombie_s = 0.0
        self.lock = threading.Lock()
        self._done = threading.Event()

    def kind(self, pid: int) -> str:
        if pid == self.root:
            return "supervisor"
        cmdline = _read(f"/proc/{pid}/cmdline") or b""
        if b"storescpd.control.api" in cmdline or b"storescpd.api" in cmdline:
            return "api"
        return "worker" if cmdline == self.root_cmdline else "other"

    def sample(self) -> None:
        now = self.clock.now()
        members = self.tree.members()
        with self.lock:
            self.process_count.append((now, len(members)))
            for pid in members:
                self._sample_one(pid, now)

    def _sample_one(self, pid: int, now: float) -> None:
        stat = _stat_fields(pid)
        statm = _read(f"/proc/{pid}/statm")
        if stat is None or statm is None:
            return
        key = (pid, stat[19].decode())
        if stat[0] == b"Z":
            first = self.zombie_since.setdefault(key, now)
            self.longest_zombie_s = max(self.longest_zombie_s, now - first)
            return
        try:
            fds = len(os.listdir(f"/proc/{pid}/fd"))
        except OSError:
            return
        series = self.series.get(key)
        if series is None:
            series = self.series[key] = ProcSeries(pid, self.kind(pid), key[1])
        series.t.append(now)
        series.rss.append(int(statm.split()[1]) * PAGE_SIZE)
        series.fds.append(fds)
        series.threads.append(int(stat[17]))

    def supervisor_cpu_s(self) -> float:
        stat = _stat_fields(self.root)
        return (int(stat[11]) + int(stat[12])) / CLOCK_TICKS if stat else float("nan")

    def supervisor_fds(self) -> int:
        try:
            return len(os.listdir(f"/proc/{self.root}/fd"))
        except OSError:
            return -1

    def supervisor_fd_list(self) -> list[str]:
        """The supervisor's descriptors, described: a file's path, a pipe, or a socket's kind and state."""
        sockets = _socket_table()
        out = []
        try:
            names = os.listdir(f"/proc/{self.root}/fd")
        except OSError:
            return []
        for name in names:
            try:
                target = os.readlink(f"/proc/{self.root}/fd/{name}")
            except OSError:
                continue
            if target.startswith("socket:["):
                target = sockets.get(target[8:-1], "socket (other)")
            elif target.startswith("pipe:["):
                target = "pipe"
            out.append(target)
        return sorted(out)

    def idle_supervisor_fds(self, seconds: float = 3.0) -> tuple[int, list[str]]:
        """The fewest descriptors seen over a few seconds of idleness (an API call in flight holds one)."""
        best: tuple[int, list[str]] = (1 << 30, [])
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            fds = self.supervisor_fd_list()
            if len(fds) < best[0]:
                best = (len(fds), fds)
            time.sleep(0.25)
        return best

    def run(self) -> None:
        while not self._done.wait(self.interval):
            self.sample()

    def stop(self) -> None:
        self._done.set()
        self.join(10)

    def lingering_zombies(self) -> list[int]:
        """Zombies of the tree right now."""
        return [pid for pid in self.tree.members() if (_stat_fields(pid) or [b"?"])[0] == b"Z"]


_TCP_STATES = {"01": "established", "06": "time-wait", "08": "close-wait", "0A": "listening"}


def _socket_table() -> dict[str, str]:
    """Socket inode -> "tcp listening", "tcp close-wait", "unix /path", ... from /proc/net."""
    table: dict[str, str] = {}
    for proto in ("tcp", "tcp6"):
        for line in (_read(f"/proc/net/{proto}") or b"").decode().splitlines()[1:]:
            fields = line.split()
            table[fields[9]] = f"tcp {_TCP_STATES.get(fields[3], fields[3])}"
    for line in (_read("/proc/net/unix") or b"").decode().splitlines()[1:]:
        fields = line.split()
        kind = {"0001": "stream", "0002": "dgram", "0005": "seqpacket"}.get(fields[4], fields[4])
        path = fields[7] if len(fields) > 7 else ""
        table[fields[6]] = f"unix {kind} {Path(path).name if path else '(unnamed)'}"
    return table


def slope_per_minute(t: list[float], values: list[float]) -> float:
    """Least-squares slope of values against t (seconds), per minute; 0 with fewer than 3 points."""
    if len(t) < 3 or max(t) - min(t) <= 0:
        return 0.0
    mt, mv = statistics.fmean(t), statistics.fmean(values)
    den = sum((x - mt) ** 2 for x in t)
    return sum((x - mt) * (y - mv) for x, y in zip(t, values)) / den * 60.0


Window = tuple[float, float]


def _outside(t: float, since: float, excluded: list[Window]) -> bool:
    return t >= since and not any(a <= t <= b for a, b in excluded)


def _trend(series: ProcSeries, since: float, excluded: list[Window]) -> dict:
    keep = [i for i, t in enumerate(series.t) if _outside(t, since, excluded)]
    if not keep:
        return {"samples": 0}
    t = [series.t[i] for i in keep]
    rss = [series.rss[i] / MIB for i in keep]
    fds = [series.fds[i] for i in keep]
    threads = [series.threads[i] for i in keep]
    return {
        "pid": series.pid, "samples": len(keep), "span_s": round(t[-1] - t[0], 1),
        "rss_mib_first": round(rss[0], 2), "rss_mib_last": round(rss[-1], 2), "rss_mib_max": round(max(rss), 2),
        "rss_mib_per_min": round(slope_per_minute(t, rss), 4),
        "fds_first": fds[0], "fds_last": fds[-1], "fds_max": max(series.fds),
        "fds_per_min": round(slope_per_minute(t, fds), 4),
        "threads_max": max(series.threads), "threads_per_min": round(slope_per_minute(t, threads), 4),
    }


def _round(value: float | None, digits: int = 4) -> float | None:
    return None if value is None else round(value, digits)


def worker_summary(workers: list[ProcSeries], since: float, excluded: list[Window]) -> dict:
    """Workers live one reload period each: slopes per process, and across generations the RSS
    floor of each worker (its idle size) against when it started, where a leak that outlives a
    worker (shared or inherited state) would show."""
    lived = [x for x in (_trend(s, since, excluded) for s in workers) if x["samples"] >= 5 and x["span_s"] >= 15]
    floors = [(s.t[0], min(s.rss) / MIB) for s in workers if s.t and s.t[0] >= since]
    third = max(1, len(floors) // 3)
    early = statistics.median(f for _, f in floors[:third]) if floors else None
    late = statistics.median(f for _, f in floors[-third:]) if floors else None

    def most(key: str, pick: Callable = max) -> float | None:
        return _round(pick(x[key] for x in lived)) if lived else None
    return {
        "processes": len(workers), "long_lived_processes": len(lived),
        "rss_mib_max": round(max((max(s.rss) for s in workers if s.rss), default=0) / MIB, 2),
        "fds_max": max((max(s.fds) for s in workers if s.fds), default=0),
        "threads_max": max((max(s.threads) for s in workers if s.threads), default=0),
        "per_process_rss_mib_per_min_median": most("rss_mib_per_min", statistics.median),
        "per_process_rss_mib_per_min_max": most("rss_mib_per_min"),
        "per_process_fds_per_min_max": most("fds_per_min"),
        "per_process_threads_per_min_max": most("threads_per_min"),
        "floor_rss_mib_early": _round(early, 2), "floor_rss_mib_late": _round(late, 2),
        "floor_rss_mib_per_min": round(slope_per_minute([a for a, _ in floors], [b for _, b in floors]), 4),
    }


def resource_summary(sampler: Sampler, warmup: float, excluded: list[Window]) -> dict:
    """Slopes after the warm-up and outside the `excluded` windows (malformed bursts and the
    seconds after them, which their own check covers): the long-lived supervisor and API per
    process, the workers per process and across generations."""
    with sampler.lock:
        series = list(sampler.series.values())
        counts = list(sampler.process_count)
    out: dict = {"warmup_s": warmup, "excluded_windows": excluded}
    for kind in ("supervisor", "api"):
        longest = max((s for s in series if s.kind == kind), key=lambda s: len(s.t), default=None)
        out[kind] = _trend(longest, warmup, excluded) if longest else {"samples": 0}
        out[f"{kind}_processes"] = sum(1 for s in series if s.kind == kind)
    out["workers"] = worker_summary([s for s in series if s.kind == "worker"], warmup, excluded)
    after = [(t, n) for t, n in counts if _outside(t, warmup, excluded)]
    out["process_count"] = {"max": max((n for _, n in counts), default=0),
                            "per_min": round(slope_per_minute([a for a, _ in after], [b for _, b in after]), 4)}
    out["longest_zombie_s"] = round(sampler.longest_zombie_s, 2)
    out["zombies_seen"] = len(sampler.zombie_since)
    return out


# ------------------------------------------------------------------------------- the output

class Consumer(threading.Thread):
    """The downstream PACS: checks every published file against what was sent, then removes it.

    While paused (the disk-full period: "the PACS is down") it still checks, but removes nothing."""

    def __init__(self, output: Path, ledger: Ledger, templates: dict[str, Template], quarantine: Path) -> None:
        super().__init__(daemon=True, name="consumer")
        self.output, self.ledger, self.templates, self.quarantine = output, ledger, templates, quarantine
        self.paused = threading.Event()
        self._done = threading.Event()
        self.seen: dict[str, int] = {}  # path -> inode already counted (a paused file is seen again)
        self.checked = 0
        self.checked_bytes = 0

    def run(self) -> None:
        while not self._done.wait(0.5):
            self.scan()

    def stop(self) -> None:
        self._done.set()
        self.join(60)

    def published_files(self) -> Iterator[Path]:
        for root, dirs, files in os.walk(self.output):
            dirs[:] = [d for d in dirs if d != STAGING]
            for name in files:
                yield Path(root) / name

    def scan(self) -> None:
        remove = not self.paused.is_set()
        for path in self.published_files():
            try:
                inode = path.stat().st_ino
            except FileNotFoundError:
                continue
            if self.seen.get(str(path)) != inode:
                self.seen[str(path)] = inode
                self.check(path)
            if remove:
                path.unlink(missing_ok=True)
                self.seen.pop(str(path), None)

    def check(self, path: Path) -> None:
        data = memoryview(path.read_bytes())
        self.checked += 1
        self.checked_bytes += len(data)
        try:
            meta, start = split_part10(data)
            uid = _uid_value(meta.get(0x0003, b""))
        except (ValueError, struct.error):
            uid = ""
        obj = self.ledger.get(uid)
        if obj is None:
            self._keep(path, self.ledger.unknown_files)
            return
        identical = (meta.get(0x0010, b"").rstrip(b"\0") == ExplicitVRLittleEndian.encode()
                     and dataset_matches(self.templates[obj.size], uid, data[start:]))
        with self.ledger.lock:
            obj.published += 1
            obj.identical = identical if obj.identical is None else (obj.identical and identical)
        if not identical:
            self._keep(path, self.ledger.bad_files)

    def _keep(self, path: Path, where: list[str]) -> None:
        """A finding: copy the file out of the tmpfs for a person to look at (the first few)."""
        with self.ledger.lock:
            where.append(path.name)
            if len(where) <= 5:
                self.quarantine.mkdir(parents=True, exist_ok=True)
                shutil.copy(path, self.quarantine / path.name)


class Filler:
    """Keeps a file system full: fills it to within a few KiB, and again whenever space frees up."""

    KEEP_FREE = 32 * 1024
    TOP_UP_ABOVE = 256 * 1024

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.files: list[Path] = []
        directory.mkdir(exist_ok=True)

    @staticmethod
    def free_bytes(path: Path) -> int:
        st = os.statvfs(path)
        return st.f_bavail * st.f_frsize

    def top_up(self) -> None:
        free = self.free_bytes(self.directory)
        if free <= self.TOP_UP_ABOVE:
            return
        path = self.directory / f"filler-{len(self.files)}"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        self.files.append(path)
        try:
            want = free - self.KEEP_FREE
            while want > self.KEEP_FREE:
                try:
                    os.posix_fallocate(fd, 0, want)
                    break
                except OSError as exc:  # space went to a staging file meanwhile: take what is left
                    if exc.errno != errno.ENOSPC:
                        raise
                    want //= 2
        finally:
            os.close(fd)

    def release(self) -> None:
        for path in self.files:
            path.unlink(missing_ok=True)
        self.files.clear()


class Scratch:
    """The output file system: a tmpfs this script mounts, unmounted on close (whatever happened)."""

    def __init__(self, mountpoint: Path, size_mib: int) -> None:
        self.mountpoint = mountpoint
        mountpoint.mkdir(parents=True)
        subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_mib}m,mode=0755", "soak", str(mountpoint)],
                       check=True, capture_output=True, text=True, timeout=30)

    def close(self) -> None:
        result = subprocess.run(["umount", str(self.mountpoint)], capture_output=True, text=True, timeout=60)
        if result.returncode != 0:  # something still holds it: detach now, freed when released
            subprocess.run(["umount", "-l", str(self.mountpoint)], capture_output=True, timeout=60)
        self.mountpoint.rmdir()


# ------------------------------------------------------------------------------- the senders

def parse_storescu_log(text: str) -> dict[str, int]:
    """Per sent file, the DIMSE status of its C-STORE-RSP (storescu -d); files absent got none."""
    statuses: dict[str, int] = {}
    current = None
    for line in text.splitlines():
        if line.startswith("I: Sending file: "):
            current = line[len("I: Sending file: "):].strip()
        elif current is not None and (m := re.match(r"D: DIMSE Status\s*: 0x([0-9a-fA-F]{4})", line)):
            statuses[current] = int(m.group(1), 16)
            current = None
    return statuses


class Sender(threading.Thread):
    """One sender: associations of 1-12 objects of random sizes, one after the other, until stopped."""

    def __init__(self, name: str, tool: str, port: int, clock: Clock, templates: dict[str, Template],
                 ledger: Ledger, uids: UidSource, workdir: Path, rng: random.Random, stop: threading.Event) -> None:
        super().__init__(daemon=True, name=name)
        self.tool, self.port, self.clock, self.templates = tool, port, clock, templates
        self.ledger, self.uids, self.rng, self.stop_event = ledger, uids, rng, stop
        self.workdir = workdir / name
        self.workdir.mkdir(parents=True)
        self.associations = 0
        self.errors: Counter[str] = Counter()
        self.slow: list[tuple[float, float]] = []  # (start, seconds) of associations over 60 s
        self.longest_s = 0.0

    def batch(self) -> list[tuple[Template, str]]:
        names = [s.name for s in SIZE_CLASSES]
        weights = [s.weight for s in SIZE_CLASSES]
        out: list[tuple[Template, str]] = []
        total = 0
        for _ in range(self.rng.randint(1, BATCH_MAX_OBJECTS)):
            template = self.templates[self.rng.choices(names, weights)[0]]
            if out and total + len(template.data) > BATCH_MAX_BYTES:
                break
            out.append((template, self.uids.next()))
            total += len(template.data)
        return out

    def run(self) -> None:
        while not self.stop_event.is_set():
            batch = self.batch()
            files = []
            for template, uid in batch:
                path = self.workdir / f"{uid}.dcm"
                write_object(template, uid, path)
                files.append(path)
            started = self.clock.now()
            try:
                self.send(batch, files)
            except Exception as exc:  # noqa: BLE001 - a sender failure is a finding, not the end of the soak
                self.errors[f"{type(exc).__name__}: {exc}"[:120]] += 1
                time.sleep(1)
            finally:
                for path in files:
                    path.unlink(missing_ok=True)
            took = self.clock.now() - started
            self.longest_s = max(self.longest_s, took)
            if took > 60:
                self.slow.append((started, round(took, 1)))
            self.associations += 1

    def register(self, template: Template, uid: str, when: float) -> None:
        self.ledger.register(SentObject(uid, template.size.name, len(template.data), self.name, self.tool, when))

    def send(self, batch: list[tuple[Template, str]], files: list[Path]) -> None:
        if self.tool == "storescu":
            self.send_storescu(batch, files)
        else:
            self.send_pynetdicom(batch, files)

    def send_storescu(self, batch: list[tuple[Template, str]], files: list[Path]) -> None:
        started = self.clock.now()
        for template, uid in batch:
            self.register(template, uid, started)
        log_path = self.workdir / "storescu.log"
        with open(log_path, "wb") as out:
            result = subprocess.run([STORESCU, "-d", "-nh", "-aet", "SOAKDCMTK", "-aec", CALLED_AE,
                                     "-ta", "30", "-td", "120", HOST, str(self.port), *map(str, files)],
                                    stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    env={**os.environ, "TCP_NODELAY": "1"}, timeout=900)
        statuses = parse_storescu_log(log_path.read_text(errors="replace"))
        done = self.clock.now()
        for (_template, uid), path in zip(batch, files):
            self.ledger.answer(uid, statuses.get(str(path)), done)
        if result.returncode != 0:
            self.errors[f"storescu exit status {result.returncode}"] += 1

    def send_pynetdicom(self, batch: list[tuple[Template, str]], files: list[Path]) -> None:
        from pynetdicom import AE, _config

        _config.STORE_SEND_CHUNKED_DATASET = True  # sent from the file as it is, never re-encoded
        ae = AE(ae_title="SOAKPYNET")
        # a response lost to pynetdicom's reactor race (see docs/reliability.md) stalls the sender this long
        ae.acse_timeout, ae.dimse_timeout, ae.network_timeout = 30, 20, 60
        for sop_class in sorted({t.sop_class for t, _ in batch}):
            ae.add_requested_context(sop_class, ExplicitVRLittleEndian)
        assoc = ae.associate(HOST, self.port, ae_title=CALLED_AE)
        try:
            for (template, uid), path in zip(batch, files):
                if self.stop_event.is_set():  # time is up: the rest of the batch is never sent
                    break
                self.register(template, uid, self.clock.now())
                if not assoc.is_established:
                    self.errors["association not established or lost"] += 1
                    continue
                response = assoc.send_c_store(path)
                status = int(response.Status) if "Status" in response else None
                self.ledger.answer(uid, status, self.clock.now())
                if status is None:  # pynetdicom aborts, but may still call the association established
                    assoc.abort()
        finally:
            if assoc.is_established:
                assoc.release()
            ae.shutdown()


# ------------------------------------------------------------------------------- malformed peers

def _item(item_type: int, payload: bytes) -> bytes:
    return struct.pack(">BBH", item_type, 0, len(payload)) + payload


def associate_rq(pc_id: int = 1, contexts: bool = True, max_length_item: bytes | None = None,
                 pc_length_delta: int = 0, pdu_length_delta: int = 0) -> bytes:
    """An A-ASSOCIATE-RQ for Verification, with the defects the arguments ask for."""
    pc_body = (bytes([pc_id, 0, 0, 0]) + _item(0x30, dul.VERIFICATION_SOP_CLASS)
               + _item(0x40, dul.IMPLICIT_VR_LITTLE_ENDIAN))
    pc = struct.pack(">BBH", 0x20, 0, len(pc_body) + pc_length_delta) + pc_body
    max_length = max_length_item if max_length_item is not None else _item(0x51, struct.pack(">I", 16384))
    user = _item(0x50, max_length + _item(0x52, dul.IMPLEMENTATION_CLASS_UID))
    body = (struct.pack(">HH", 1, 0) + CALLED_AE.encode().ljust(16) + b"SOAKMALFORMED".ljust(16) + bytes(32)
            + _item(0x10, dul.APPLICATION_CONTEXT) + (pc if contexts else b"") + user)
    return struct.pack(">BBI", 0x01, 0, len(body) + pdu_length_delta) + body


@dataclass(frozen=True)
class Malformed:
    """One kind of malformed peer: what it sends, then whether it waits for the answer."""

    name: str
    payload: Callable[[random.Random], bytes]
    then: str = "read"  # read: wait up to 2 s for an answer; close; reset (RST); hold: 3 s then close
    after_ac: bytes = b""  # sent once an A-ASSOCIATE-AC arrived
    valid_rq: bool = False  # an AC accepting a context is a correct answer only to a valid request


def _half(rng: random.Random) -> bytes:
    rq = associate_rq()
    return rq[:rng.randint(1, len(rq) - 1)]


BAD_PDV = struct.pack(">BBI", 0x04, 0, 10) + struct.pack(">IBB", 5000, 1, 0x03) + b"\0\0\0\0"
A_ABORT = struct.pack(">BBI", 0x07, 0, 4) + bytes(4)

MALFORMED = (
    Malformed("garbage", lambda rng: rng.randbytes(rng.randint(1, 2048))),
    Malformed("http", lambda rng: b"GET / HTTP/1.1\r\nHost: storescpd\r\n\r\n"),
    Malformed("half_rq_close", _half, then="close"),
    Malformed("half_rq_reset", _half, then="reset"),
    Malformed("half_rq_hold", _half, then="hold"),
    Malformed("pdu_length_claims_more", lambda rng: associate_rq(pdu_length_delta=rng.randint(1, 4000)), then="close"),
    Malformed("pdu_length_claims_less", lambda rng: associate_rq(pdu_length_delta=-rng.randint(1, 40))),
    Malformed("huge_pdu_length", lambda rng: b"\x01\x00\xff\xff\xff\xff" + rng.randbytes(100), then="close"),
    Malformed("pc_item_overruns", lambda rng: associate_rq(pc_length_delta=rng.randint(1, 200))),
    Malformed("max_length_subitem_len2", lambda rng: associate_rq(max_length_item=_item(0x51, b"\x40\x00"))),
    Malformed("even_pc_id", lambda rng: associate_rq(pc_id=2)),
    Malformed("pc_id_zero", lambda rng: associate_rq(pc_id=0)),
    Malformed("no_presentation_context", lambda rng: associate_rq(contexts=False)),
    Malformed("abort_after_ac", lambda rng: associate_rq(), after_ac=A_ABORT, valid_rq=True),
    Malformed("bad_pdv_after_ac", lambda rng: associate_rq(), after_ac=BAD_PDV, valid_rq=True),
)
PDU_NAMES = {0x02: "AC", 0x03: "RJ", 0x04: "P-DATA", 0x06: "RELEASE-RP", 0x07: "ABORT"}


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            break
        data += chunk
    return data


def _accepts_a_context(ac_body: bytes) -> bool:
    """Whether an A-ASSOCIATE-AC accepts any presentation context (item 0x21, result 0)."""
    pos = 68
    while pos + 8 <= len(ac_body):
        item_type, _, length = struct.unpack_from(">BBH", ac_body, pos)
        if item_type == 0x21 and ac_body[pos + 6] == 0:
            return True
        pos += 4 + length
    return False


def _answer(sock: socket.socket, timeout: float) -> str:
    """The daemon's answer: the PDU it sent ("AC" when it accepted a context, "AC refusing all"
    when it accepted none), "closed", "reset" or "no answer"."""
    sock.settimeout(timeout)
    try:
        header = _recv_exact(sock, 6)
        if len(header) < 6:
            return "closed" if not header else "short PDU"
        body = _recv_exact(sock, min(struct.unpack(">I", header[2:])[0], 1 << 20))
    except socket.timeout:
        return "no answer"
    except ConnectionResetError:
        return "reset"
    if header[0] == 0x02 and not _accepts_a_context(body):
        return "AC refusing all"
    return PDU_NAMES.get(header[0], f"0x{header[0]:02x}")


def malformed_peer(port: int, kind: Malformed, rng: random.Random) -> str:
    """One malformed connection; what the daemon answered ("AC", "RJ", "ABORT", "closed", ...)."""
    with socket.create_connection((HOST, port), timeout=5) as sock:
        sock.sendall(kind.payload(rng))
        if kind.then == "close":
            return "-"
        if kind.then == "reset":
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            return "-"
        if kind.then == "hold":
            time.sleep(3)
            return "-"
        answer = _answer(sock, 2.0)
        if answer == "AC" and kind.after_ac:
            sock.sendall(kind.after_ac)
            answer += " then " + _answer(sock, 2.0)
        return answer


def malformed_burst(port: int, count: int, concurrency: int, budget_s: float, seed: int) -> dict:
    """`count` malformed connections from `concurrency` clients; answers by kind."""
    deadline = time.monotonic() + budget_s
    jobs = iter(range(count))
    lock = threading.Lock()
    answers: dict[str, Counter[str]] = {k.name: Counter() for k in MALFORMED}

    def client(index: int) -> None:
        rng = random.Random(f"{seed}/{index}")
        while time.monotonic() < deadline:
            with lock:
                n = next(jobs, None)
            if n is None:
                return
            kind = MALFORMED[n % len(MALFORMED)]
            try:
                answer = malformed_peer(port, kind, rng)
            except OSError as exc:
                answer = f"error {type(exc).__name__}"
            with lock:
                answers[kind.name][answer] += 1

    threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(max(0.1, deadline - time.monotonic() + 10))
    return {"connections": sum(sum(c.values()) for c in answers.values()),
            "answers": {k: dict(c) for k, c in answers.items()}}


# ------------------------------------------------------------------------------- the faults

@dataclass
class Settings:
    """What a soak run does (the command line)."""

    duration: float
    senders: int = 4
    workers: tuple[int, int] = (4, 5)
    reload_every: float = 30.0
    kill_every: float = 45.0
    disk_full_every: float = 600.0
    disk_full_for: float = 20.0
    burst_every: float = 300.0
    burst_size: int = 500
    burst_concurrency: int = 16
    fs_size_mib: int = 1024
    sample_every: float = 1.0
    log_level: str = "warn"
    seed: int = 20240808


def schedule(s: Settings) -> list[tuple[float, str]]:
    """The faults and when (seconds from the start), in order."""
    events: list[tuple[float, str]] = []

    def every(period: float, first: float, name: str) -> None:
        t = first
        while period > 0 and t < s.duration:
            events.append((t, name))
            t += period
    every(s.reload_every, s.reload_every, "reload")
    every(s.kill_every, s.kill_every, "kill")
    disk_period = min(s.duration, s.disk_full_every)
    every(disk_period, 0.3 * disk_period, "disk_full_begin")
    events += [(t + s.disk_full_for, "disk_full_end") for t, n in list(events) if n == "disk_full_begin"]
    burst_period = min(s.duration, s.burst_every)
    every(burst_period, 0.5 * burst_period, "burst")  # CI: disk full at 54-74 s, burst at 90 s
    return sorted((t, n) for t, n in events if t < s.duration or n == "disk_full_end")


class Faults(threading.Thread):
    """Injects the scheduled faults, one at a time, and records what each did."""

    def __init__(self, s: Settings, clock: Clock, daemon: Daemon, sampler: Sampler, consumer: Consumer,
                 filler: Filler, stop: threading.Event) -> None:
        super().__init__(daemon=True, name="faults")
        self.s, self.clock, self.daemon, self.sampler, self.consumer = s, clock, daemon, sampler, consumer
        self.filler, self.stop_event = filler, stop
        self.rng = random.Random(f"{s.seed}/faults")
        self.workers = s.workers[0]
        self.reloads: list[dict] = []
        self.kills: list[dict] = []
        self.disk_full: list[dict] = []
        self.bursts: list[dict] = []
        self.errors: list[str] = []
        self.burst_threads: list[threading.Thread] = []

    def run(self) -> None:
        pending = schedule(self.s)
        while pending and not self.stop_event.is_set():
            if self.filler.files:
                self.filler.top_up()
            if self.clock.now() < pending[0][0]:
                time.sleep(0.2)
                continue
            _, name = pending.pop(0)
            try:
                getattr(self, f"do_{name}")()
            except Exception as exc:  # noqa: BLE001 - recorded and checked; the soak goes on
                self.errors.append(f"{self.clock.now():.0f}s {name}: {type(exc).__name__}: {exc}")
        if self.filler.files:
            self.do_disk_full_end()

    # -- reload: SIGHUP and POST /reload in turn; every fourth a broken file that must be refused
    def do_reload(self) -> None:
        n = len(self.reloads) + 1
        record: dict = {"t": self.clock.now(), "n": n}
        config = self.daemon.config_path
        if n % 4 == 0:
            write_config(config, self.workers, broken=True)
            try:
                code, body = self.daemon.api("POST", "/reload", timeout=60)
            finally:
                write_config(config, self.workers)
            record.update(via="api", broken=True, http=code, result=body.get("result"),
                          ok=code == 422 and body.get("result") == "failure")
        else:
            self.workers = self.s.workers[1] if self.workers == self.s.workers[0] else self.s.workers[0]
            write_config(config, self.workers)
            record.update(workers=self.workers, **(self._reload_signal() if n % 2 else self._reload_api()))
            record["pool_ok"], record["pool"] = self.wait_pool(self.workers, set())
            record["ok"] = record["ok"] and record["pool_ok"]
        record["took_s"] = round(self.clock.now() - record["t"], 2)
        self.reloads.append(record)

    def _reload_signal(self) -> dict:
        mark = self.daemon.notify.mark()
        os.kill(self.daemon.pid, signal.SIGHUP)
        ready = self.daemon.notify.wait_for("READY=1", mark, 60)
        return {"via": "SIGHUP", "ok": ready is not None}

    def _reload_api(self) -> dict:
        code, body = self.daemon.api("POST", "/reload", timeout=60)
        return {"via": "api", "http": code, "result": body.get("result"), "ok": code == 200}

    def wait_pool(self, expected: int, gone: set[int], timeout: float = 20.0) -> tuple[bool, list[int]]:
        """Whether the newest generation has `expected` live workers (none of `gone`) within timeout."""
        deadline = time.monotonic() + timeout
        pids: list[int] = []
        while time.monotonic() < deadline:
            workers = [w for w in self.daemon.status()["workers"] if w.get("kind") == "worker"]
            newest = max((w["generation"] for w in workers), default=0)
            pids = [w["pid"] for w in workers if w["generation"] == newest and w["pid"] not in gone]
            if len(pids) >= expected and not (gone & {w["pid"] for w in workers}):
                return True, pids
            time.sleep(0.25)
        return False, pids

    def restore_pool(self, timeout: float = 30.0) -> bool:
        """Back to the first pool size, the old generation gone: the fd count compares with the start."""
        if self.workers != self.s.workers[0]:
            self.workers = self.s.workers[0]
            write_config(self.daemon.config_path, self.workers)
            if not self._reload_signal()["ok"]:
                return False
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            workers = [w for w in self.daemon.status()["workers"] if w.get("kind") == "worker"]
            if len(workers) == self.workers and len({w["generation"] for w in workers}) == 1:
                return True
            time.sleep(0.25)
        return False

    # -- SIGKILL of a pool worker of the daemon (busy ones preferred), which must be replaced
    def do_kill(self) -> None:
        workers = [w for w in self.daemon.status()["workers"] if w.get("kind") == "worker"]
        busy = [w for w in workers if w.get("state") == "busy"]
        victim = self.rng.choice(busy if busy and self.rng.random() < 0.75 else workers)
        stat = _stat_fields(victim["pid"])
        record: dict = {"t": self.clock.now(), "pid": victim["pid"], "state": victim.get("state"),
                        "generation": victim.get("generation")}
        if stat is None or int(stat[1]) != self.daemon.pid:  # only ever a child of our supervisor
            record.update(ok=False, note="not a child of the supervisor any more")
        else:
            os.kill(victim["pid"], signal.SIGKILL)
            record["pool_ok"], record["pool"] = self.wait_pool(self.workers, {victim["pid"]})
            record["ok"] = record["pool_ok"]
        record["took_s"] = round(self.clock.now() - record["t"], 2)
        self.kills.append(record)

    # -- a full output file system while the downstream consumer is down
    def do_disk_full_begin(self) -> None:
        self.consumer.paused.set()
        self.filler.top_up()
        record = {"t": self.clock.now(), "free_bytes_after_fill": Filler.free_bytes(self.filler.directory)}
        time.sleep(2)
        code, body = self.daemon.api("GET", "/readyz")
        record["readyz"] = {"http": code, **body}
        self.disk_full.append(record)

    def do_disk_full_end(self) -> None:
        self.filler.release()
        self.consumer.paused.clear()
        if self.disk_full:
            self.disk_full[-1]["end"] = self.clock.now()

    # -- a burst of malformed associations, in its own thread (it takes seconds); the daemon is
    #    watched for the CPU it spends and the descriptors it holds during and after the burst
    def do_burst(self) -> None:
        thread = threading.Thread(target=self._burst, daemon=True, name="burst")
        self.burst_threads.append(thread)
        thread.start()

    def _burst(self) -> None:
        record: dict = {"t": self.clock.now(), "supervisor_fds_before": self.sampler.supervisor_fds()}
        cpu0 = self.sampler.supervisor_cpu_s()
        peak = [0]
        watching = threading.Event()

        def watch() -> None:
            while not watching.wait(0.1):
                peak[0] = max(peak[0], self.sampler.supervisor_fds())
        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        record.update(malformed_burst(self.daemon.port, self.s.burst_size, self.s.burst_concurrency,
                                      budget_s=60, seed=self.s.seed + len(self.bursts)))
        record["took_s"] = round(self.clock.now() - record["t"], 2)
        record["supervisor_cpu_s_during"] = round(self.sampler.supervisor_cpu_s() - cpu0, 2)
        cpu1 = self.sampler.supervisor_cpu_s()
        time.sleep(1)
        record["supervisor_fds_1s_after"] = self.sampler.supervisor_fds()
        time.sleep(4)
        record["supervisor_fds_5s_after"] = self.sampler.supervisor_fds()
        record["supervisor_cpu_s_5s_after"] = round(self.sampler.supervisor_cpu_s() - cpu1, 2)
        watching.set()
        watcher.join(2)
        record["supervisor_fds_peak"] = peak[0]
        try:
            dul.echo_once(HOST, self.daemon.port, timeout=10)
            record["echo_after"] = "ok"
        except (OSError, dul.DicomProtocolError) as exc:
            record["echo_after"] = f"failed: {exc}"
        self.bursts.append(record)


# ------------------------------------------------------------------------------- the verdict

def object_summary(objects: list[SentObject], elapsed: float) -> dict:
    acked = [o for o in objects if o.status == SUCCESS]
    by_status = Counter("none" if o.status is None else f"0x{o.status:04X}" for o in objects)
    by_size = {s.name: {"sent": sum(1 for o in objects if o.size == s.name),
                        "acknowledged": sum(1 for o in acked if o.size == s.name)} for s in SIZE_CLASSES}
    by_tool = {tool: {"sent": sum(1 for o in objects if o.tool == tool),
                      "acknowledged": sum(1 for o in acked if o.tool == tool)}
               for tool in sorted({o.tool for o in objects})}
    acked_bytes = sum(o.nbytes for o in acked)
    return {"sent": len(objects), "acknowledged": len(acked), "by_status": dict(by_status),
            "published_not_acknowledged": sum(1 for o in objects if o.published and o.status != SUCCESS),
            "by_size": by_size, "by_tool": by_tool, "acknowledged_bytes": acked_bytes,
            "acknowledged_mb_per_s": round(acked_bytes / 1e6 / max(elapsed, 1e-9), 2)}


def _check(name: str, ok: bool, detail: str) -> dict:
    return {"name": name, "ok": bool(ok), "detail": detail}


def _first(items: list, n: int = 3) -> str:
    return ", ".join(str(i) for i in items[:n]) + (" ..." if len(items) > n else "")


def object_checks(objects: list[SentObject], ledger: Ledger, windows: list[dict], bursts: list[dict]) -> list[dict]:
    acked = [o for o in objects if o.status == SUCCESS]
    lost = [o.uid for o in acked if o.published != 1 or not o.identical]
    duplicated = [o.uid for o in objects if o.published > 1]
    failed_published = [o.uid for o in objects if o.published and o.status not in (None, SUCCESS)
                        and not 0xB000 <= o.status <= 0xBFFF]
    checks = [
        _check("acknowledged_on_disk_once_identical", acked and not lost,
               f"{len(acked)} acknowledged 0x0000; {len(lost)} not published exactly once and identical"
               + (f": {_first(lost)}" if lost else "")),
        _check("published_identical", not ledger.bad_files,
               f"{len(ledger.bad_files)} published files differ from what was sent {_first(ledger.bad_files)}"),
        _check("no_duplicates", not duplicated, f"{len(duplicated)} UIDs published more than once {_first(duplicated)}"),
        _check("nothing_else_published", not ledger.unknown_files,
               f"{len(ledger.unknown_files)} files not sent by the soak {_first(ledger.unknown_files)}"),
        _check("failures_not_published", not failed_published,
               f"{len(failed_published)} objects answered with a failure status were published {_first(failed_published)}"),
    ]
    for window in windows:
        end = window.get("end", math.inf)
        during = Counter(o.status for o in objects if window["t"] + 1 <= o.t_sent <= end - 1)
        refused = sum(n for st, n in during.items() if st is not None and st != SUCCESS)
        recovered = any(o.status == SUCCESS and o.t_sent > end for o in objects)
        window["statuses_during"] = {("none" if k is None else f"0x{k:04X}"): n for k, n in during.items()}
        checks.append(_check(f"disk_full_at_{window['t']:.0f}s", refused > 0 and recovered,
                             f"during: {window['statuses_during']}; a success after it: {recovered}"))
    for burst in bursts:
        recovered = any(o.status == SUCCESS and o.t_sent > burst["t"] + burst["took_s"] for o in objects)
        checks.append(_check(f"burst_at_{burst['t']:.0f}s_survived", recovered and burst["echo_after"] == "ok",
                             f"{burst['connections']} malformed connections; C-ECHO after: {burst['echo_after']}; "
                             f"a success after it: {recovered}"))
        invalid = {k.name for k in MALFORMED if not k.valid_rq}
        accepted = {kind: n for kind, answers in burst["answers"].items() if kind in invalid
                    for answer, n in answers.items() if answer.startswith("AC") and "refusing" not in answer}
        checks.append(_check(f"burst_at_{burst['t']:.0f}s_malformed_rq_never_accepted", not accepted,
                             f"an AC accepting a context answered: {accepted or 'none'} (PS3.8 9.3)"))
    return checks


def resource_checks(res: dict, fds_start: list[str], fds_end: list[str], bursts: list[dict]) -> list[dict]:
    sup, workers = res["supervisor"], res["workers"]
    extra = Counter(fds_end) - Counter(fds_start)
    checks = [
        _check("supervisor_single_threaded", sup.get("threads_max") == 1, f"threads max {sup.get('threads_max')}"),
        _check("supervisor_fds_back_to_start", len(fds_end) <= len(fds_start),
               f"idle before the faults {len(fds_start)}, idle after the run {len(fds_end)}; "
               f"more at the end: {dict(extra) or 'none'}"),
        _check("supervisor_rss_flat", abs(sup.get("rss_mib_per_min", 0)) < 0.5,
               f"{sup.get('rss_mib_per_min')} MiB/min ({sup.get('rss_mib_first')} -> {sup.get('rss_mib_last')} MiB)"),
        _check("supervisor_fds_flat", abs(sup.get("fds_per_min", 0)) < 1.0, f"{sup.get('fds_per_min')} fds/min"),
        _check("worker_rss_bounded", workers["rss_mib_max"] < 160,
               f"max worker RSS {workers['rss_mib_max']} MiB for objects up to 64 MiB"),
        _check("worker_rss_flat_across_generations",
               workers["floor_rss_mib_late"] is not None
               and workers["floor_rss_mib_late"] - workers["floor_rss_mib_early"] < 2.0,
               f"a worker's idle RSS: {workers['floor_rss_mib_early']} MiB (first third of the run), "
               f"{workers['floor_rss_mib_late']} MiB (last third), {workers['floor_rss_mib_per_min']:+} MiB/min"),
        _check("no_lingering_zombie", res["longest_zombie_s"] < 5,
               f"longest zombie {res['longest_zombie_s']} s ({res['zombies_seen']} seen)"),
    ]
    for burst in bursts:
        back = burst["supervisor_fds_5s_after"] <= burst["supervisor_fds_before"] + 4
        checks.append(_check(f"burst_at_{burst['t']:.0f}s_resources_return", back and burst["supervisor_cpu_s_5s_after"] < 1.0,
                             f"supervisor fds {burst['supervisor_fds_before']} before, peak {burst['supervisor_fds_peak']}, "
                             f"{burst['supervisor_fds_1s_after']} 1 s and {burst['supervisor_fds_5s_after']} 5 s after; "
                             f"CPU {burst['supervisor_cpu_s_during']} s during, {burst['supervisor_cpu_s_5s_after']} s "
                             f"in the 5 s after"))
    return checks


def fault_checks(faults: Faults) -> list[dict]:
    failed_reloads = [r for r in faults.reloads if not r.get("ok")]
    failed_kills = [k for k in faults.kills if not k.get("ok")]
    return [
        _check("reloads", faults.reloads and not failed_reloads,
               f"{len(faults.reloads)} reloads, {len(failed_reloads)} not as expected {_first(failed_reloads, 2)}"),
        _check("killed_workers_replaced", faults.kills and not failed_kills,
               f"{len(faults.kills)} SIGKILLs, {len(failed_kills)} not replaced {_first(failed_kills, 2)}"),
        _check("faults_injected", not faults.errors, _first(faults.errors, 5) or "every scheduled fault ran"),
    ]


def daemon_log_summary(path: Path) -> dict:
    text = path.read_text(errors="replace") if path.exists() else ""
    levels = Counter(line[0] for line in text.splitlines() if len(line) > 1 and line[1] == ":")
    tracebacks = [i for i, line in enumerate(text.splitlines()) if line.startswith("Traceback")]
    errors = Counter(re.sub(r"\d+", "N", line)[:140] for line in text.splitlines() if line.startswith(("E:", "F:")))
    return {"lines_by_level": dict(levels), "tracebacks": len(tracebacks),
            "error_lines": dict(errors.most_common(12))}


def environment(note: str) -> dict:
    import platform

    import pydicom
    import pynetdicom

    def cmd(argv: list[str]) -> str:
        try:
            return subprocess.run(argv, capture_output=True, text=True, timeout=10).stdout.strip()
        except (OSError, subprocess.TimeoutExpired):
            return "?"
    return {"cpus": os.cpu_count(), "kernel": platform.release(), "python": platform.python_version(),
            "pydicom": pydicom.__version__, "pynetdicom": pynetdicom.__version__,
            "dcmtk": (cmd([STORESCU, "--version"]).splitlines() or ["?"])[0].strip("$ "),
            "storescpd_commit": cmd(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"]) or "?",
            "storescpd_dirty": bool(cmd(["git", "-C", str(REPO), "status", "--porcelain", "--", "storescpd"])),
            "load_average_start": os.getloadavg(), "note": note}


# ------------------------------------------------------------------------------- the run

def wait_idle(daemon: Daemon, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = daemon.status()
        if status["active_associations"] == 0 and all(w.get("state") != "busy" for w in status["workers"]):
            return True
        time.sleep(0.5)
    return False


class Soak:
    """One soak run: mount, start, load and break, stop, verify, report."""

    def __init__(self, s: Settings, rundir: Path, workdir: Path) -> None:
        self.s, self.rundir, self.workdir = s, rundir, workdir
        self.clock = Clock()
        self.ledger = Ledger()
        self.stop_senders = threading.Event()
        self.stop_faults = threading.Event()
        self.results: dict = {"settings": asdict(s), "schedule": schedule(s)}

    def run(self, note: str) -> dict:
        self.results["environment"] = environment(note)
        rng = random.Random(self.s.seed)
        log(f"templates: {', '.join(c.name for c in SIZE_CLASSES)}")
        templates = {c.name: build_template(c, rng) for c in SIZE_CLASSES}
        scratch = Scratch(self.workdir / "fs", self.s.fs_size_mib)
        daemon = None
        try:
            output = scratch.mountpoint / "out"
            output.mkdir()
            config = self.rundir / "storescpd.toml"
            write_config(config, self.s.workers[0])
            daemon = Daemon(self.rundir, self.workdir, output, config, self.s.log_level)
            daemon.start()
            log(f"storescpd pid {daemon.pid}: DICOM port {daemon.port}, API port {daemon.api_port}, output {output}")
            self.drive(daemon, templates, Filler(scratch.mountpoint / "filler"), rng)
        finally:
            self.stop_senders.set()
            self.stop_faults.set()
            try:
                if daemon is not None and daemon.alive():
                    daemon.stop(timeout=60)
            finally:
                scratch.close()
        return self.results

    def drive(self, daemon: Daemon, templates: dict[str, Template], filler: Filler, rng: random.Random) -> None:
        sampler = Sampler(self.clock, daemon.pid, self.s.sample_every)
        sampler.start()
        dul.echo_once(HOST, daemon.port, timeout=10)
        time.sleep(1)
        self.results["supervisor_fds_idle_start"] = sampler.idle_supervisor_fds()[1]
        self.results["workers_idle_start"] = daemon.status()["workers"]
        consumer = Consumer(daemon.output, self.ledger, templates, self.rundir / "findings")
        consumer.start()
        uids = UidSource(rng)
        tools = ("storescu", "pynetdicom")
        senders = [Sender(f"sender{i}-{tools[i % 2]}", tools[i % 2], daemon.port, self.clock, templates,
                          self.ledger, uids, self.workdir / "send", random.Random(f"{self.s.seed}/{i}"),
                          self.stop_senders) for i in range(self.s.senders)]
        faults = Faults(self.s, self.clock, daemon, sampler, consumer, filler, self.stop_faults)
        for thread in (*senders, faults):
            thread.start()
        self.progress(daemon)
        log("time is up: senders finish their association, faults stop")
        self.stop_senders.set()
        for sender in senders:
            sender.join(900)
        faults.join(120)
        self.stop_faults.set()
        for thread in faults.burst_threads:
            thread.join(120)
        elapsed = self.clock.now()
        self.finish(daemon, sampler, consumer, faults, senders, elapsed)

    def progress(self, daemon: Daemon) -> None:
        next_line = 0.0
        while self.clock.now() < self.s.duration and daemon.alive():
            if self.clock.now() >= next_line:
                objects = self.ledger.snapshot()
                acked = sum(1 for o in objects if o.status == SUCCESS)
                log(f"  {self.clock.now():6.0f} s: {len(objects)} objects sent, {acked} acknowledged")
                next_line += max(10.0, self.s.duration / 20)
            time.sleep(0.5)

    def finish(self, daemon: Daemon, sampler: Sampler, consumer: Consumer, faults: Faults,
               senders: list[Sender], elapsed: float) -> None:
        checks = [_check("daemon_alive_through_the_run", daemon.alive(), f"exit status {daemon.proc.poll()}")]
        if daemon.alive():
            checks.append(_check("idle_after_the_run", wait_idle(daemon, 60), "no association left running"))
            checks.append(_check("pool_as_at_the_start", faults.restore_pool(),
                                 f"{self.s.workers[0]} workers of one generation, as before the faults"))
        self.results["supervisor_fds_idle_end"] = sampler.idle_supervisor_fds()[1]
        self.results["workers_idle_end"] = daemon.status()["workers"] if daemon.alive() else []
        sampler.sample()
        sampler.stop()
        tree = [(pid, (_stat_fields(pid) or [b""] * 20)[19]) for pid in sampler.tree.members() if pid != daemon.pid]
        zombies_at_end = sampler.lingering_zombies()
        stop_started = time.monotonic()
        exit_code = daemon.stop(timeout=60)
        stop_s = time.monotonic() - stop_started
        left = [pid for pid, started in tree if (_stat_fields(pid) or [b""] * 20)[19] == started]
        for pid in left:  # a process of ours that outlived its supervisor: a finding, and stopped
            os.kill(pid, signal.SIGKILL)
        consumer.stop()
        consumer.paused.set()
        consumer.scan()
        staging = daemon.output / STAGING
        leftovers = sorted(p.name for p in staging.iterdir()) if staging.exists() else []
        objects = self.ledger.snapshot()
        with open(self.rundir / "objects.jsonl", "w") as fh:
            for obj in objects:
                fh.write(json.dumps(asdict(obj)) + "\n")
        bursts = [(b["t"], b["t"] + b["took_s"] + 40.0) for b in faults.bursts]  # 40 s: past the ACSE timeout
        resources = resource_summary(sampler, min(60.0, max(20.0, 0.1 * self.s.duration)), bursts)
        checks += [
            _check("daemon_stopped_cleanly", exit_code == 0, f"exit status {exit_code} after SIGTERM, {stop_s:.1f} s"),
            _check("no_process_left", not left, f"left after the supervisor exited: {left}"),
            _check("no_zombie_at_end", not zombies_at_end, f"zombies: {zombies_at_end}"),
            _check("staging_empty", not leftovers, f"{len(leftovers)} files in {STAGING}/ {_first(leftovers)}"),
            _check("every_sender_progressed",
                   all(any(o.sender == s.name and o.status == SUCCESS for o in objects) for s in senders),
                   ", ".join(f"{s.name}: {s.associations} associations" for s in senders)),
        ]
        checks += object_checks(objects, self.ledger, faults.disk_full, faults.bursts)
        checks += resource_checks(resources, self.results["supervisor_fds_idle_start"],
                                  self.results["supervisor_fds_idle_end"], faults.bursts)
        checks += fault_checks(faults)
        race = (self.rundir / "pynetdicom.log").read_text(errors="replace").count("Received unexpected C-STORE")
        self.results.update(
            elapsed_s=elapsed, objects=object_summary(objects, elapsed),
            pynetdicom_responses_lost_to_its_reactor=race,
            consumer={"files_checked": consumer.checked, "bytes_checked": consumer.checked_bytes},
            senders={s.name: {"tool": s.tool, "associations": s.associations, "errors": dict(s.errors),
                              "longest_association_s": round(s.longest_s, 1), "slow_associations": s.slow}
                     for s in senders},
            faults={"reloads": faults.reloads, "kills": faults.kills, "disk_full": faults.disk_full,
                    "bursts": faults.bursts, "errors": faults.errors},
            resources=resources,
            daemon={"exit_code": exit_code, "stop_s": round(stop_s, 2), **daemon_log_summary(daemon.log_path)},
            checks=checks, ok=all(c["ok"] for c in checks), load_average_end=os.getloadavg())


def print_summary(results: dict) -> None:
    o, r = results["objects"], results["resources"]
    log(f"\n{results['elapsed_s']:.0f} s: {o['sent']} objects sent, {o['acknowledged']} acknowledged "
        f"({o['acknowledged_bytes'] / 1e9:.2f} GB, {o['acknowledged_mb_per_s']} MB/s); statuses {o['by_status']}")
    f = results["faults"]
    log(f"faults: {len(f['reloads'])} reloads, {len(f['kills'])} worker kills, {len(f['disk_full'])} disk-full "
        f"periods, {len(f['bursts'])} bursts ({sum(b['connections'] for b in f['bursts'])} malformed connections)")
    for kind in ("supervisor", "api"):
        x = r[kind]
        if x.get("samples"):
            log(f"{kind}: RSS {x['rss_mib_first']} -> {x['rss_mib_last']} MiB ({x['rss_mib_per_min']:+} MiB/min), "
                f"fds {x['fds_first']} -> {x['fds_last']} ({x['fds_per_min']:+}/min), threads max {x['threads_max']}")
    w = r["workers"]
    log(f"workers: {w['processes']} processes, RSS max {w['rss_mib_max']} MiB, per-process RSS slope median "
        f"{w['per_process_rss_mib_per_min_median']} max {w['per_process_rss_mib_per_min_max']} MiB/min, "
        f"idle floor {w['floor_rss_mib_early']} -> {w['floor_rss_mib_late']} MiB")
    for c in results["checks"]:
        log(f"  {'ok  ' if c['ok'] else 'FAIL'} {c['name']}: {c['detail']}")
    log("PASSED" if results["ok"] else "FAILED")


def parse_args(argv: list[str] | None) -> tuple[Settings, argparse.Namespace]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    defaults = Settings(duration=1800)
    parser.add_argument("--duration", type=float, default=1800, help="seconds of load and faults (default: 1800)")
    for name in ("senders", "reload_every", "kill_every", "disk_full_every", "disk_full_for", "burst_every",
                 "burst_size", "burst_concurrency", "fs_size_mib", "sample_every", "log_level", "seed"):
        default = getattr(defaults, name)
        parser.add_argument("--" + name.replace("_", "-"), type=type(default), default=default,
                            help=f"(default: {default})")
    parser.add_argument("--out", type=Path, help="run directory (default: bench/out/soak-<time>)")
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--note", default="", help="recorded with the results (e.g. 'shared machine, nice 10')")
    parser.add_argument("--keep", action="store_true", help="keep the senders' scratch directory")
    args = parser.parse_args(argv)
    values = {k: getattr(args, k) for k in Settings.__dataclass_fields__ if k != "workers" and hasattr(args, k)}
    return Settings(**values), args


def main(argv: list[str] | None = None) -> int:
    settings, args = parse_args(argv)
    if os.geteuid() != 0:
        log("bench/soak.py mounts a tmpfs as the output directory (the disk-full period): run it as root")
        return 2
    rundir = (args.out or BENCH / "out" / time.strftime("soak-%Y%m%d-%H%M%S")).resolve()
    rundir.mkdir(parents=True, exist_ok=True)
    pynetdicom_log = logging.getLogger("pynetdicom")  # aborts happen by design: logged to a file, not printed
    pynetdicom_log.addHandler(logging.FileHandler(rundir / "pynetdicom.log"))
    pynetdicom_log.setLevel(logging.WARNING)
    pynetdicom_log.propagate = False
    workdir = Path(tempfile.mkdtemp(prefix="storescpd-soak-"))
    log(f"soak for {settings.duration:.0f} s; results in {rundir}")
    try:
        results = Soak(settings, rundir, workdir).run(args.note)
    finally:
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    text = json.dumps(results, indent=1, default=str)
    (rundir / "soak.json").write_text(text)
    if args.json:
        args.json.write_text(text)
    print_summary(results)
    return 0 if results["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
