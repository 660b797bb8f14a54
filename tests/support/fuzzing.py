"""Property-based fuzzing with Hypothesis: profiles, per-input bounds, seeds and the mutations of them.

Profiles (``STORESCPD_FUZZ_PROFILE``): ``ci`` (the default, also under ``CI=true``: a few minutes for
the whole fuzz set, derandomized so that a run is reproducible) and ``long`` (``make fuzz``: many
times the examples, random, failures kept in ``.hypothesis/`` and replayed first next time). A test
asks for ``examples(n)``: n in the ci profile, ``LONG_FACTOR`` times n in the long one.
"""

from __future__ import annotations

import logging
import os
import struct
import time
import tracemalloc
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Iterator

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.database import DirectoryBasedExampleDatabase

from tests.support.paths import ROOT, TEST_FILES

PROFILE_VARIABLE = "STORESCPD_FUZZ_PROFILE"
LONG_FACTOR = 50
SEEDS = ROOT / "tests" / "fuzz" / "seeds"

_COMMON = dict(deadline=None,  # per-input time is asserted by bounded(), with bounds meant for a loaded CI box
               suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                      HealthCheck.function_scoped_fixture, HealthCheck.filter_too_much],
               print_blob=True)
settings.register_profile("ci", derandomize=True, database=None, **_COMMON)
settings.register_profile("long", database=DirectoryBasedExampleDatabase(str(ROOT / ".hypothesis")), **_COMMON)


def profile() -> str:
    """The profile in force: the environment variable's, else ``ci``."""
    name = os.environ.get(PROFILE_VARIABLE, "").strip() or "ci"
    if name not in ("ci", "long"):
        raise ValueError(f"{PROFILE_VARIABLE}={name!r}: use 'ci' or 'long'")
    return name


settings.load_profile(profile())


def examples(n: int) -> int:
    """How many examples a fuzz test runs: ``n`` in the ci profile."""
    return n * LONG_FACTOR if profile() == "long" else n


# ---- bounds per input -------------------------------------------------------------------------

@dataclass
class Usage:
    seconds: float = 0.0
    peak_bytes: int = 0


@contextmanager
def bounded(seconds: float, peak_bytes: int) -> Iterator[Usage]:
    """Run the block under tracemalloc; fail if it took longer than ``seconds`` of wall time or its
    Python allocations peaked above ``peak_bytes`` (both generous: a loaded 2-core box must pass)."""
    usage = Usage()
    was_tracing = tracemalloc.is_tracing()
    if not was_tracing:
        tracemalloc.start()
    tracemalloc.reset_peak()
    base = tracemalloc.get_traced_memory()[0]
    started = time.monotonic()
    try:
        yield usage
    finally:
        usage.seconds = time.monotonic() - started
        usage.peak_bytes = tracemalloc.get_traced_memory()[1] - base
        if not was_tracing:
            tracemalloc.stop()
    assert usage.seconds <= seconds, f"one input took {usage.seconds:.2f} s (bound {seconds} s)"
    assert usage.peak_bytes <= peak_bytes, \
        f"one input peaked at {usage.peak_bytes >> 10} KiB of allocations (bound {peak_bytes >> 10} KiB)"


# ---- seeds ------------------------------------------------------------------------------------

def captured(name: str) -> bytes:
    """A committed capture of what a DCMTK client sent (tests/fuzz/seeds/capture.py made it)."""
    return (SEEDS / f"{name}.bin").read_bytes()


CAPTURES = ("echoscu", "storescu-rtplan", "storescu-implicit-two", "storescu-roles-extneg")


def split_pdus(stream: bytes) -> list[bytes]:
    """A byte stream of whole PDUs cut into them (header included)."""
    pdus, offset = [], 0
    while offset + 6 <= len(stream):
        length = struct.unpack_from(">L", stream, offset + 2)[0]
        pdus.append(stream[offset:offset + 6 + length])
        offset += 6 + length
    assert offset == len(stream), "a capture ends inside a PDU"
    return pdus


@dataclass(frozen=True)
class DatasetSeed:
    """A data set taken from one of pydicom's test files, without its file meta."""

    name: str
    transfer_syntax: str
    data: bytes
    sop_class_uid: str
    sop_instance_uid: str


def _file_meta_end(raw: bytes) -> tuple[int, str] | None:
    """(offset of the data set, transfer syntax) of a Part 10 file, from its group 0002 elements."""
    if raw[128:132] != b"DICM":
        return None
    offset, syntax = 132, ""
    while offset + 8 <= len(raw):
        group, element, vr = struct.unpack_from("<HH2s", raw, offset)
        if group != 2:
            break
        if vr in (b"OB", b"OW", b"UN", b"SQ", b"UT", b"UC", b"UR"):
            length, header = struct.unpack_from("<L", raw, offset + 8)[0], 12
        else:
            length, header = struct.unpack_from("<H", raw, offset + 6)[0], 8
        if element == 0x0010:
            syntax = raw[offset + header:offset + header + length].decode("ascii").rstrip("\0 ")
        offset += header + length
    return (offset, syntax) if syntax else None


@cache
def dataset_seeds(max_size: int = 64 << 10) -> tuple[DatasetSeed, ...]:
    """The data sets of pydicom's small Part 10 test files (every transfer syntax they use)."""
    import warnings

    import pydicom

    seeds = []
    for path in sorted(TEST_FILES.glob("*.dcm")):
        raw = path.read_bytes()
        found = _file_meta_end(raw) if len(raw) <= max_size else None
        if found is None:
            continue
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                ds = pydicom.dcmread(path, stop_before_pixels=True)
            sop_class, sop_instance = str(ds.SOPClassUID), str(ds.SOPInstanceUID)
        except Exception:  # a test file of broken things: not a seed of a valid object
            continue
        offset, syntax = found
        seeds.append(DatasetSeed(path.name, syntax, raw[offset:], sop_class, sop_instance))
    assert len(seeds) >= 20, f"only {len(seeds)} data sets among pydicom's test files in {TEST_FILES}"
    return tuple(seeds)


# ---- mutations ----------------------------------------------------------------------------------

INTERESTING_16 = (0, 1, 2, 3, 4, 0x7F, 0x80, 0xFF, 0x100, 0x7FFF, 0x8000, 0xFFFE, 0xFFFF)
INTERESTING_32 = (0, 1, 2, 4, 6, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFE, 0xFFFFFFFF, 0x10000, 0x100000)


@st.composite
def mutated(draw: st.DrawFn, seed: bytes, max_mutations: int = 4) -> bytes:
    """``seed`` with a few of the mutations fuzzers find bugs with: bit flips, interesting 16/32-bit
    values over length fields (either byte order), deleted, duplicated or inserted runs, a cut."""
    data = bytearray(seed)
    for _ in range(draw(st.integers(1, max_mutations))):
        kind = draw(st.sampled_from(["flip", "byte", "int16", "int32", "delete", "duplicate", "insert", "cut"]))
        if not data:
            data += draw(st.binary(min_size=1, max_size=16))
            continue
        at = draw(st.integers(0, len(data) - 1))
        if kind == "flip":
            data[at] ^= 1 << draw(st.integers(0, 7))
        elif kind == "byte":
            data[at] = draw(st.integers(0, 255))
        elif kind in ("int16", "int32"):
            size = 2 if kind == "int16" else 4
            value = draw(st.sampled_from(INTERESTING_16 if size == 2 else INTERESTING_32))
            order = draw(st.sampled_from("<>"))
            data[at:at + size] = struct.pack(order + ("H" if size == 2 else "L"), value)[:len(data) - at]
        elif kind == "delete":
            del data[at:at + draw(st.integers(1, 64))]
        elif kind == "duplicate":
            run = data[at:at + draw(st.integers(1, 256))]
            data[at:at] = run
        elif kind == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=32))
        else:
            del data[at:]
    return bytes(data)


def published_files(output: Path) -> list[Path]:
    """Every file under ``output`` but the staging folder, and each directory that is not ours."""
    return sorted(p for p in output.rglob("*") if ".storescpd-staging" not in p.relative_to(output).parts)


IMPLICIT_LE = "1.2.840.10008.1.2"
EXPLICIT_BE = "1.2.840.10008.1.2.2"
DEFLATED_LE = "1.2.840.10008.1.2.1.99"


def top_level_ends(seed: DatasetSeed) -> list[int] | None:
    """Where each top-level element of the seed ends (0 first), as pydicom's reader walks it: the only
    offsets at which a cut leaves a whole data set. None if pydicom finds the seed itself cut short."""
    import warnings
    from io import BytesIO

    from pydicom.filereader import data_element_generator

    fp = BytesIO(seed.data)
    ends = [0]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # pydicom warns where it guesses (implicit VR in an explicit data set)
        try:
            for element in data_element_generator(fp, seed.transfer_syntax == IMPLICIT_LE,
                                                  seed.transfer_syntax != EXPLICIT_BE, defer_size=None):
                length = getattr(element, "length", None)  # a sequence comes parsed (a DataElement)
                if length is not None and length != 0xFFFFFFFF and len(element.value or b"") != length:
                    return None
                ends.append(fp.tell())
        except UserWarning:
            return None
    if seed.transfer_syntax != IMPLICIT_LE and not all(seed.data[end + 4:end + 6].isalpha() for end in ends[:-1]):
        return None  # pydicom switched to implicit VR (without a word) for a data set labelled explicit
    return ends if ends[-1] == len(seed.data) else None


@cache
def whole_dataset_seeds() -> tuple[tuple[DatasetSeed, tuple[int, ...]], ...]:
    """The data set seeds pydicom reads to their end, not deflated, with their top-level ends."""
    found = []
    for seed in dataset_seeds():
        if seed.transfer_syntax != DEFLATED_LE and (ends := top_level_ends(seed)) is not None:
            found.append((seed, tuple(ends)))
    return tuple(found)


# ---- one association, served by the real engine over a socketpair -------------------------------

STAGING_DIR_NAME = ".storescpd-staging"


@dataclass
class Served:
    """What a fuzzed association left: the peer's view, the engine's summary, the logs, the disk."""

    replies: bytes  # every byte the engine sent the peer
    summary: dict
    tracebacks: list[str]  # log records that carry an exception: a bug of ours the engine caught
    outside: list[Path]  # anything that appeared in the output's parent directory
    published: list[Path]  # files and folders under the output directory, staging folder excluded
    staging_left: list[Path]  # what is still in the staging folder after the association


class Tracebacks(logging.Handler):
    """Keeps the log records of storescpd's loggers that carry an exception: a bug of ours that the
    engine or a handler caught (``with Tracebacks() as caught: ...; assert not caught.found``)."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.found: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.exc_info:
            self.found.append(f"{record.getMessage()}: {logging.Formatter().formatException(record.exc_info)}")

    def __enter__(self) -> "Tracebacks":
        logging.getLogger("storescpd").addHandler(self)
        return self

    def __exit__(self, *exc: object) -> None:
        logging.getLogger("storescpd").removeHandler(self)


def serve_association(root: Path, stream: bytes, **settings_values: object) -> Served:
    """``stream`` sent by a peer (then its write side shut) to the engine serving one association
    over a socketpair, with a StoreContext writing under ``root``/out; the output of ``root`` is
    emptied first so that each example starts alike."""
    import shutil
    import socket
    import threading

    from storescpd.config import settings as cfg
    from storescpd.dicom import engine
    from storescpd.store.handlers import StoreContext
    from storescpd.store.storage import prepare_staging_dir

    output = root / "out"
    shutil.rmtree(output, ignore_errors=True)
    for stray in root.iterdir():
        raise AssertionError(f"{stray} appeared beside the output directory")
    output.mkdir()
    values = {**cfg.defaults(), "output_directory": str(output), "fsync": False, "acse_timeout": 10,
              "socket_timeout": 10, **settings_values}
    config = cfg.Config(values)
    ctx = StoreContext(config=config, output_dir=output, staging_dir=prepare_staging_dir(output), peer="fuzz")
    ours, theirs = socket.socketpair()
    received = bytearray()

    def peer() -> None:
        try:
            theirs.sendall(stream)
            theirs.shutdown(socket.SHUT_WR)
        except OSError:  # the engine stopped reading (an abort): what it said is still to be read
            pass
        try:
            while data := theirs.recv(65536):
                received.extend(data)
        except OSError:
            pass

    sender = threading.Thread(target=peer, daemon=True)
    sender.start()
    try:
        with Tracebacks() as tracebacks:
            summary = engine.serve(ours, config, ctx, lambda kind, data: None, lambda request: None, None)
    finally:
        ours.close()
        sender.join(10)
        theirs.close()
    assert not sender.is_alive(), "the peer thread did not finish"
    staging = output / STAGING_DIR_NAME
    return Served(bytes(received), summary, tracebacks.found,
                  [p for p in root.iterdir() if p != output], published_files(output),
                  sorted(staging.iterdir()) if staging.exists() else [])


def reply_pdus(replies: bytes) -> list[tuple[int, bytes]]:
    """(type, body) of each PDU the engine sent; the stream must hold whole PDUs only."""
    return [(pdu[0], pdu[6:]) for pdu in split_pdus(replies)]


def command_fields(command_set: bytes) -> dict[int, bytes]:
    """Element number -> value of a group 0000 command set (implicit VR little endian)."""
    fields, offset = {}, 0
    while offset + 8 <= len(command_set):
        group, element, length = struct.unpack_from("<HHL", command_set, offset)
        assert group == 0, f"element ({group:04X},{element:04X}) in a command set we sent"
        fields[element] = command_set[offset + 8:offset + 8 + length]
        offset += 8 + length
    assert offset == len(command_set), "a command set we sent ends inside an element"
    return fields
