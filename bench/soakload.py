"""The soak's load: objects with unique UIDs, the ledger of what was sent and answered, the
senders (DCMTK storescu, pynetdicom) and the consumer that checks every published file.
Used by bench/soak.py (see its docstring and docs/reliability.md)."""

from __future__ import annotations

import hashlib
import itertools
import os
import random
import re
import shutil
import struct
import subprocess
import threading
import time
from collections import Counter
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path
from typing import Iterator

from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian

MIB = 1 << 20
HOST = "127.0.0.1"
STORESCU = "/usr/bin/storescu"  # absolute: the venv's pynetdicom installs its own `storescu`
STAGING = ".storescpd-staging"
CALLED_AE = "STORESCPD"
SUCCESS = 0x0000

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
MULTIFRAME_WORD_SC_STORAGE = "1.2.840.10008.5.1.4.1.1.7.3"


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
                if not assoc.is_established:
                    self.errors["association not established or lost"] += 1
                    break
                self.register(template, uid, self.clock.now())
                response = assoc.send_c_store(path)
                status = int(response.Status) if "Status" in response else None
                self.ledger.answer(uid, status, self.clock.now())
                if status is None:  # pynetdicom aborts, but may still call the association established
                    assoc.abort()
        finally:
            if assoc.is_established:
                assoc.release()
            ae.shutdown()
