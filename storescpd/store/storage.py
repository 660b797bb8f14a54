"""Where received objects go: staging files, DCMTK-compatible names, atomic durable publish.

A staging file lives in ``<output>/.storescpd-staging/`` (same filesystem as every final
name, so publishing is one ``rename``). Nothing under a final name is ever partial.
"""

from __future__ import annotations

import errno
import hashlib
import logging
import os
import re
import socket
import struct
import threading
import time
from collections.abc import Iterable, MutableSequence
from typing import BinaryIO
from dataclasses import dataclass
from pathlib import Path

from pydicom.uid import generate_uid

from storescpd import UID_ROOT
from storescpd.dicom.sop_classes import file_prefix
from storescpd.dicom.transfer_syntaxes import DEFLATED_LE as _DEFLATED
from storescpd.dicom.transfer_syntaxes import EXPLICIT_BE as _EXPLICIT_BE
from storescpd.dicom.transfer_syntaxes import IMPLICIT_LE as _IMPLICIT_LE

LOG = logging.getLogger("storescpd.storage")

STAGING_DIR_NAME = ".storescpd-staging"
# A staging file is named <worker pid>-<serial>-<attempt>.<host>.part. Instances on several hosts may
# share the output tree (docs/scale-out.md), and a pid only means something on its own host: each
# instance removes only the leftovers of its own host's dead processes, never another host's transfer.
STAGING_HOST = re.sub(r"[^A-Za-z0-9.-]", "_", socket.gethostname()).strip(".") or "localhost"
_STAGING_NAME = re.compile(r"(\d+)-\d+-\d+(?:\.(.+))?\.part")
# What a peer's SOP Instance UID may not bring into a file name: the path separator (DCMTK's
# Debian patch for CVE-2022-2119 replaces it by '_'), NUL and control characters.
_UNSAFE_IN_NAME = re.compile(r"[/\x00-\x1f\x7f]")
MAX_UID_IN_NAME = 200  # file names are limited to 255 bytes
EARLY_WRITEBACK = 8 << 20  # bytes between writeback starts while a big object arrives
HEAD_BYTES = 64 << 10  # the start of each data set kept in memory, where its identifiers are


class UnsafeName(ValueError):
    """A peer-supplied value that cannot become a name inside the output directory."""


def safe_uid_component(uid: str) -> str:
    """The UID as DCMTK puts it in a file name: '/' (and control characters) become '_'.

    The result is always one ordinary file-name component once the prefix ("CT.") is in
    front of it; an empty or absurdly long UID raises UnsafeName.
    """
    uid = uid.rstrip("\0 ")
    if not uid:
        raise UnsafeName("the C-STORE request has no SOP Instance UID to name the file")
    if len(uid.encode("utf-8", "replace")) > MAX_UID_IN_NAME:
        raise UnsafeName(f"SOP Instance UID of {len(uid)} characters is too long to name a file")
    sanitized = _UNSAFE_IN_NAME.sub("_", uid)
    if sanitized != uid:
        LOG.warning('Sanitized unusual characters in SOP Instance UID, converted from "%s" to "%s".',
                    uid.encode("unicode_escape").decode(), sanitized)
    return sanitized


class StagingFile:
    """A file being received; becomes visible only through ``publish``."""

    def __init__(self, staging_dir: Path, early_writeback: bool = False, digest: str | None = None) -> None:
        fd, name = _mkstemp(staging_dir)
        self.path = Path(name)
        self.file = os.fdopen(fd, "wb", buffering=1 << 20)
        self.dataset_offset = 0
        self.closed = False
        self.error: OSError | None = None
        # With fsync on, start writing big objects back while they still arrive, so that the
        # final fsync finds little left to do (and the page cache does not fill with them).
        self._writeback_from = 0 if early_writeback else None
        self._written = 0
        self.head = bytearray()  # the first HEAD_BYTES of the data set, once start_dataset is called
        self._head_room = 0
        # The receipt journal's hash of the file (journal_digest), fed with every byte written.
        self.digest = hashlib.new(digest) if digest else None

    def start_dataset(self) -> None:
        """What is written from now on is the data set (before it: the file meta)."""
        self.dataset_offset = self._written
        self._head_room = HEAD_BYTES

    @property
    def head_is_whole_dataset(self) -> bool:
        return self._written - self.dataset_offset == len(self.head)

    def write(self, data: bytes | memoryview) -> None:
        """Append received bytes; a write error (disk full) is kept for ``finish`` to raise, and
        the rest of the data set is drained unwritten so the peer still gets a response."""
        if self.error is not None:
            return
        if self._head_room:
            kept = data[:self._head_room]
            self.head += kept
            self._head_room -= len(kept)
        if self.digest is not None:
            self.digest.update(data)
        try:
            self._written += self.file.write(data)
            if self._writeback_from is not None and self._written - self._writeback_from >= EARLY_WRITEBACK:
                self._start_writeback()
        except OSError as exc:
            self.error = exc

    def _start_writeback(self) -> None:
        self.file.flush()
        end = self._written
        # DONTNEED starts asynchronous writeback of the dirty range (and drops what is clean).
        os.posix_fadvise(self.file.fileno(), self._writeback_from, end - self._writeback_from,
                         os.POSIX_FADV_DONTNEED)
        self._writeback_from = end

    def finish(self, fsync: bool) -> None:
        """Flush (and fsync) the content; raises OSError on any write failure."""
        if self.error is not None:
            raise self.error
        if self.closed:
            return
        try:
            self.file.flush()
            if fsync:
                os.fsync(self.file.fileno())
        finally:
            self.closed = True
            self.file.close()

    def discard(self) -> None:
        if not self.closed:
            self.closed = True
            try:
                self.file.close()
            except OSError:
                pass
        try:
            self.path.unlink()
        except FileNotFoundError:
            pass


_counter_lock = threading.Lock()
_counter = 0


def _mkstemp(staging_dir: Path) -> tuple[int, str]:
    global _counter
    with _counter_lock:
        _counter += 1
        n = _counter
    for attempt in range(100):
        name = staging_dir / f"{os.getpid()}-{n}-{attempt}.{STAGING_HOST}.part"
        try:
            fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
            return fd, str(name)
        except FileExistsError:
            continue
    raise OSError(errno.EEXIST, f"cannot create a staging file in {staging_dir}")


def prepare_staging_dir(output_dir: Path) -> Path:
    """Create the staging folder and remove what a crashed process of ours left there."""
    staging = output_dir / STAGING_DIR_NAME
    staging.mkdir(mode=0o700, exist_ok=True)
    for leftover in staging.glob("*.part"):
        pid = own_staging_pid(leftover.name)
        if pid is not None and not _pid_alive(pid):
            try:
                leftover.unlink()
            except OSError:
                pass
    return staging


def own_staging_pid(name: str) -> int | None:
    """The pid of this host's process that wrote the staging file ``name``; None for another host's
    (or a name that is no staging file). A name without a host is from an older storescpd: ours."""
    match = _STAGING_NAME.fullmatch(name)
    if match is None or match.group(2) not in (None, STAGING_HOST):
        return None
    return int(match.group(1))


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@dataclass
class Naming:
    """DCMTK storescp's file naming (-uf, +uf, -tn, -fe)."""

    mode: str = "default"  # -uf "default" or +uf "unique"
    extension: str = ""
    timenames: bool = False  # -tn, a switch of its own: -tn -uf names by time

    def name(self, sop_class_uid: str, sop_instance_uid: str) -> str:
        prefix = file_prefix(sop_class_uid)
        if self.mode == "unique":
            return f"{prefix}.X.{generate_uid(prefix=UID_ROOT)}{self.extension}"
        if self.timenames:
            return f"{_timestamp()}.{prefix}{self.extension}"
        return f"{prefix}.{safe_uid_component(sop_instance_uid)}{self.extension}"

    def unique_variant(self, sop_class_uid: str) -> str:
        return Naming("unique", self.extension).name(sop_class_uid, "")


def _timestamp() -> str:
    now = time.time()
    lt = time.localtime(now)
    return time.strftime("%Y%m%d%H%M%S", lt) + f"{int(now * 1000) % 1000:03d}"


def publish(staged: StagingFile, final: Path, on_duplicate: str, fsync: bool) -> Path | None:
    """Give the staged file its final name; returns the path, or None if an existing file was kept.

    overwrite: atomic replace (DCMTK's behaviour). keep-first: never replace. The caller
    chooses another name for "unique" before calling.
    """
    if on_duplicate == "keep-first":
        if not _claim(staged, final):
            staged.discard()
            if fsync:  # the kept copy may have been linked a moment ago by another worker
                fsync_dir(final.parent)
            return None
    else:
        if final.exists():
            LOG.warning("file %s already exists, overwriting", final)
        os.replace(staged.path, final)
    if fsync:
        fsync_dir(final.parent)
    return final


def publish_new(staged: StagingFile, names: Iterable[Path], fsync: bool) -> Path:
    """Give the staged file the first of ``names`` no file has yet (-tn: several workers may
    choose the same time name in the same millisecond; the name is claimed, never replaced)."""
    for final in names:
        if _claim(staged, final):
            if fsync:
                fsync_dir(final.parent)
            return final
    raise FileExistsError(errno.EEXIST, "every candidate name is taken", str(final))


def _claim(staged: StagingFile, final: Path) -> bool:
    """Link the staged file to ``final`` unless that name exists (atomic), then drop the
    staging name; False if ``final`` was taken."""
    try:
        os.link(staged.path, final)
    except FileExistsError:
        return False
    staged.path.unlink()
    return True


def fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@dataclass
class Identifiers:
    """The few data set attributes storage decisions need, read from a staged file."""

    sop_class_uid: str | None
    sop_instance_uid: str | None
    study_instance_uid: str | None
    patient_name: bytes | None
    specific_character_set: str | None
    # for the receipt journal
    series_instance_uid: str | None = None
    patient_id: bytes | None = None
    modality: str | None = None


_LAST_TAG_NEEDED = 0x0020000E
_DEFLATED_PEEK = 4 << 20


_WANTED = {0x00080005: "specific_character_set", 0x00080016: "sop_class_uid", 0x00080018: "sop_instance_uid",
           0x00100010: "patient_name", 0x0020000D: "study_instance_uid",
           0x0020000E: "series_instance_uid", 0x00100020: "patient_id", 0x00080060: "modality"}
_DESCRIPTIVE = frozenset({"series_instance_uid", "patient_id", "modality"})  # the journal's: never refuse for them
_LONG_VRS = {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"}
_SCAN_WINDOW = 1 << 20


def _identifiers_from(found: dict[str, bytes]) -> Identifiers:
    """The identifying elements from their raw top-level values."""

    def text(key: str) -> str | None:
        raw = found.get(key)
        if raw is None:
            return None
        # latin-1 keeps every byte distinct, so a UID with stray bytes never equals another one;
        # a UID is compared whole (a second value is no UID of this object).
        value = raw.decode("latin-1").rstrip("\0 ")
        if not value:
            return None
        if key == "specific_character_set" and "\\" in value:
            return value.split("\\")[0].strip("\0 ")
        return value.lstrip()

    return Identifiers(
        sop_class_uid=text("sop_class_uid"), sop_instance_uid=text("sop_instance_uid"),
        study_instance_uid=text("study_instance_uid"), patient_name=found.get("patient_name") or None,
        specific_character_set=text("specific_character_set"),
        series_instance_uid=text("series_instance_uid"), patient_id=found.get("patient_id") or None,
        modality=text("modality"),
    )


_UNDEFINED = 0xFFFFFFFF
_ITEM, _ITEM_END, _SEQUENCE_END = 0xFFFEE000, 0xFFFEE00D, 0xFFFEE0DD
_MAX_NESTING = 64
_MAX_IDENTIFIER = 1 << 16
_INFLATE_CHUNK = 1 << 20


class Incomplete(ValueError):
    """The data set's own structure says bytes are missing (or it is not a data set)."""


def inspect_dataset(path: Path, offset: int, transfer_syntax: str, head: bytes | bytearray | None = None,
                    head_is_whole: bool = False) -> Identifiers:
    """The identifying elements of the staged data set, read in the one walk that proves it whole.

    Raises Incomplete unless every element's value is there, every sequence and item of undefined
    length is closed and nothing is left over; ValueError if it cannot be read. Only element
    headers (and the few identifying values) are read: from ``head``, the start of the data set
    kept in memory as it arrived (``head_is_whole``: all of it), then from the file. A deflated
    data set must be a complete deflate stream; its identifiers come from its first 1 MiB."""
    if transfer_syntax == _DEFLATED:
        with open(path, "rb") as fh:
            _check_deflate_stream(fh, offset)
        return _identifiers_by_pydicom(path, offset, transfer_syntax)
    implicit, little = transfer_syntax == _IMPLICIT_LE, transfer_syntax != _EXPLICIT_BE
    if head_is_whole and head is not None:
        data = bytes(head)
        walk = _StructureWalk(None, 0, data, len(data), implicit, little)
        walk.elements(0, len(data), False, 0)
        return _identifiers_from(walk.found)
    with open(path, "rb") as fh:
        size = os.fstat(fh.fileno()).st_size - offset
        walk = _StructureWalk(fh, offset, bytes(head or b""), size, implicit, little)
        walk.elements(0, size, False, 0)
    return _identifiers_from(walk.found)


def _check_deflate_stream(fh: BinaryIO, offset: int) -> None:
    import zlib

    fh.seek(offset)
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    try:
        while chunk := fh.read(_INFLATE_CHUNK):
            data = chunk
            while data:  # bounded output per call: a deflate bomb costs time, never memory
                inflater.decompress(data, _INFLATE_CHUNK)
                data = inflater.unconsumed_tail
            if inflater.eof:
                break
    except zlib.error as exc:
        raise Incomplete(f"deflated data set is corrupt: {exc}") from exc
    if not inflater.eof:
        raise Incomplete("deflated data set ends before its deflate stream does")


class _StructureWalk:
    """The element headers of a data set, read from the in-memory head, then 64 KiB at a time
    from the file (``fh`` None: the head is the whole data set)."""

    def __init__(self, fh: BinaryIO | None, offset: int, head: bytes, size: int, implicit: bool,
                 little: bool) -> None:
        self.fh, self.offset, self.size, self.implicit = fh, offset, size, implicit
        self.data, self.base = head, 0  # self.data holds the data set's bytes from self.base on
        self.found: dict[str, bytes] = {}  # the raw values of the identifying top-level elements
        order = "<" if little else ">"
        self.tag_length = struct.Struct(order + "HHL").unpack_from
        self.short_length = struct.Struct(order + "H").unpack_from
        self.long_length = struct.Struct(order + "L").unpack_from

    def _at(self, pos: int, n: int, what: str) -> int:
        """The index of ``pos`` in self.data, with ``n`` bytes from there in it."""
        i = pos - self.base
        if 0 <= i and i + n <= len(self.data):
            return i
        if pos + n > self.size:
            raise Incomplete(f"the data set ends inside {what} (at byte {pos} of {self.size})")
        assert self.fh is not None  # without a file, the head is the whole data set
        self.fh.seek(self.offset + pos)
        self.data, self.base = self.fh.read(max(n, 1 << 16)), pos
        return 0

    def elements(self, pos: int, end: int, in_item: bool, depth: int, implicit: bool | None = None) -> int:
        """Walk elements from ``pos``; returns where they end (the item's delimiter included)."""
        implicit = self.implicit if implicit is None else implicit
        if depth > _MAX_NESTING:
            raise Incomplete(f"sequences nested deeper than {_MAX_NESTING}")
        at, tag_length, size = self._at, self.tag_length, self.size
        while pos < end or in_item:
            i = at(pos, 8, "an element header")
            data = self.data
            group, element, length = tag_length(data, i)
            if group == 0xFFFE:
                if element == 0xE00D and in_item:
                    return pos + 8
                raise Incomplete(f"item tag ({group:04X},{element:04X}) where an element belongs (byte {pos})")
            vr = None
            if implicit:
                pos += 8
            else:
                vr = data[i + 4:i + 6]
                if vr in _LONG_VRS:
                    i = at(pos, 12, "an element header")
                    length = self.long_length(self.data, i + 8)[0]
                    pos += 12
                else:
                    length = self.short_length(data, i + 6)[0]
                    pos += 8
            if length == _UNDEFINED:
                # Contents of an undefined-length UN are implicit VR little endian (PS3.5 6.2.2).
                pos = self.sequence(pos, depth + 1, implicit=implicit or vr == b"UN")
                continue
            if pos + length > size:
                raise Incomplete(f"the data set ends inside the value of ({group:04X},{element:04X}) "
                                 f"({length} bytes, at byte {pos} of {size})")
            if depth == 0 and (name := _WANTED.get(group << 16 | element)) and name not in self.found:
                if length > _MAX_IDENTIFIER:  # no UID, name or character set is this long
                    if name not in _DESCRIPTIVE:
                        raise ValueError(f"({group:04X},{element:04X}) of {length} bytes cannot identify an object")
                else:
                    i = at(pos, length, "a value")  # a repeated element: the first counts, as in DCMTK
                    self.found[name] = bytes(self.data[i:i + length])
            pos += length
        if pos != end:
            raise Incomplete(f"an element runs past the end of its item (byte {pos})")
        return pos

    def sequence(self, pos: int, depth: int, implicit: bool) -> int:
        """Items up to the sequence delimiter; returns the position after it."""
        while True:
            i = self._at(pos, 8, "an unclosed sequence")
            group, element, length = self.tag_length(self.data, i)
            tag = group << 16 | element
            pos += 8
            if tag == _SEQUENCE_END:
                return pos
            if tag != _ITEM:
                raise Incomplete(f"({group:04X},{element:04X}) where a sequence item belongs (byte {pos - 8})")
            if length == _UNDEFINED:
                pos = self.elements(pos, self.size, in_item=True, depth=depth, implicit=implicit)
            elif pos + length > self.size:
                raise Incomplete(f"the data set ends inside an item of {length} bytes (at byte {pos} of {self.size})")
            else:  # a defined-length item, or a fragment of encapsulated pixel data
                pos += length


def _identifiers_by_pydicom(path: Path, offset: int, transfer_syntax: str) -> Identifiers:
    import zlib
    from io import BytesIO

    from pydicom.filereader import read_dataset
    from pydicom.uid import UID

    with open(path, "rb") as fh:
        fh.seek(offset)
        ts = UID(transfer_syntax)
        stream = fh
        if ts == _DEFLATED:  # the identifiers lie at the start: inflate no more than a window of it
            inflater = zlib.decompressobj(-zlib.MAX_WBITS)
            try:
                inflated = inflater.decompress(fh.read(_DEFLATED_PEEK), _SCAN_WINDOW)
            except zlib.error as exc:
                raise ValueError(f"deflated data set cannot be inflated: {exc}") from exc
            stream = BytesIO(inflated)  # type: ignore[assignment]
        try:
            ds = read_dataset(
                stream,
                ts.is_implicit_VR if ts.is_transfer_syntax else False,
                ts.is_little_endian if ts.is_transfer_syntax else True,
                stop_when=lambda tag, vr, length: tag > _LAST_TAG_NEEDED,
                defer_size=4096,
            )
        except Exception as exc:  # pydicom raises many kinds on garbage
            raise ValueError(f"data set cannot be parsed: {exc}") from exc

    def text(keyword: str) -> str | None:
        try:
            value = ds.get(keyword)
        except Exception as exc:
            raise ValueError(f"{keyword} cannot be decoded: {exc}") from exc
        if value in (None, ""):
            return None
        if not isinstance(value, str) and isinstance(value, MutableSequence):  # pydicom's MultiValue
            value = value[0]
        return str(value).rstrip("\0 ")

    raw_name = ds.get_item(0x00100010)
    raw_id = ds.get_item(0x00100020)
    return Identifiers(
        sop_class_uid=text("SOPClassUID"),
        sop_instance_uid=text("SOPInstanceUID"),
        study_instance_uid=text("StudyInstanceUID"),
        patient_name=bytes(raw_name.value) if raw_name is not None and raw_name.value else None,
        specific_character_set=text("SpecificCharacterSet"),
        series_instance_uid=text("SeriesInstanceUID"), modality=text("Modality"),
        patient_id=bytes(raw_id.value) if raw_id is not None and raw_id.value else None,
    )
