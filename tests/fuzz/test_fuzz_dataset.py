"""Fuzzing the data-set header walk (store.storage.inspect_dataset): the completeness check that
decides whether a received object may be acknowledged.

Properties: a data set cut anywhere but at the end of a top-level element is never complete, and
one cut there is (it is a whole data set); on any input only ValueError (Incomplete among them)
escapes; time and memory per input are bounded.
"""

from __future__ import annotations

import zlib
from pathlib import Path

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from storescpd.store.storage import Incomplete, inspect_dataset
from tests.support.fuzzing import (
    DEFLATED_LE,
    bounded,
    dataset_seeds,
    examples,
    mutated,
    whole_dataset_seeds,
)

SECONDS = 2.0
PEAK = 4 << 20  # the walk keeps element headers and 64 KiB windows, never a whole object

SEEDS = whole_dataset_seeds()


def _inspect(tmp: Path, data: bytes, transfer_syntax: str, head_size: int | None) -> object:
    """inspect_dataset as the store handler calls it: the head in memory (``head_size`` None: all of it),
    the rest read from the staged file, here after 10 bytes of something else (the file meta)."""
    path = tmp / "staged.part"
    path.write_bytes(b"META-BYTES" + data)
    if head_size is None:
        return inspect_dataset(path, 10, transfer_syntax, data, True)
    return inspect_dataset(path, 10, transfer_syntax, data[:head_size], head_size >= len(data))


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("inspect")


def test_the_seeds_are_whole_data_sets(workdir: Path) -> None:
    """The walk accepts each seed whole and finds the identifiers pydicom finds (else a cut proves nothing)."""
    assert len(SEEDS) >= 50
    for seed, _ in SEEDS:
        ids = _inspect(workdir, seed.data, seed.transfer_syntax, None)
        assert (ids.sop_class_uid, ids.sop_instance_uid) == (seed.sop_class_uid, seed.sop_instance_uid), seed.name


@settings(max_examples=examples(1500))
@given(choice=st.sampled_from(SEEDS), where=st.floats(0, 1, exclude_max=True),
       head=st.one_of(st.none(), st.integers(0, 1 << 13)))
def test_a_truncated_data_set_is_never_complete(workdir: Path, choice: tuple, where: float, head: int | None) -> None:
    seed, ends = choice
    cut = int(where * len(seed.data)) & ~1  # data elements have even lengths: cut where a PDV could end
    data = seed.data[:cut]
    with bounded(SECONDS, PEAK):
        try:
            _inspect(workdir, data, seed.transfer_syntax, head)
            complete = True
        except Incomplete:
            complete = False
    assert complete == (cut in ends), (
        f"{seed.name} cut at byte {cut} of {len(seed.data)} was called {'complete' if complete else 'incomplete'}"
        f" (top-level elements end at {[e for e in ends if abs(e - cut) < 200]}...)")


@settings(max_examples=examples(60))
@given(data=st.data())
def test_a_truncated_deflate_stream_is_never_complete(workdir: Path, data: st.DataObject) -> None:
    seeds = [s for s in dataset_seeds() if s.transfer_syntax == DEFLATED_LE]
    assert seeds, "pydicom's test files hold a deflated data set (image_dfl.dcm)"
    seed = data.draw(st.sampled_from(seeds))
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    inflater.decompress(seed.data)
    stream_end = len(seed.data) - len(inflater.unused_data)
    cut = data.draw(st.integers(0, stream_end - 1))
    with bounded(SECONDS, 8 << 20), pytest.raises(Incomplete):
        _inspect(workdir, seed.data[:cut], DEFLATED_LE, None)


TRANSFER_SYNTAXES = ["1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.2", "1.2.840.10008.1.2.4.50",
                     DEFLATED_LE]


@st.composite
def _mutated_seed(draw: st.DrawFn) -> tuple[bytes, str]:
    seed = draw(st.sampled_from(dataset_seeds()))
    # mostly the seed's own transfer syntax; sometimes another, so each walk meets the others' bytes
    syntax = draw(st.one_of(st.just(seed.transfer_syntax), st.sampled_from(TRANSFER_SYNTAXES)))
    return draw(mutated(seed.data, max_mutations=6)), syntax


@settings(max_examples=examples(500))
@given(case=st.one_of(_mutated_seed(),
                      st.tuples(st.binary(max_size=512), st.sampled_from(TRANSFER_SYNTAXES))),
       head=st.one_of(st.none(), st.integers(0, 4096)))
def test_any_input_is_refused_with_a_value_error_only(workdir: Path, case: tuple[bytes, str],
                                                      head: int | None) -> None:
    data, syntax = case
    with bounded(SECONDS, 8 << 20):
        try:
            _inspect(workdir, data, syntax, head)
        except ValueError:  # Incomplete, or identifiers that cannot be (the handler answers 0xC000)
            pass


@settings(max_examples=examples(150))
@given(depth=st.integers(1, 5000), implicit=st.booleans(), item_undefined=st.booleans())
def test_deep_nesting_is_bounded(workdir: Path, depth: int, implicit: bool, item_undefined: bool) -> None:
    """Sequences in items in sequences, unclosed or closed: refused past 64 levels, never a RecursionError."""
    import struct

    def sq_header() -> bytes:
        if implicit:
            return struct.pack("<HHL", 0x0008, 0x1115, 0xFFFFFFFF)
        return struct.pack("<HH2sHL", 0x0008, 0x1115, b"SQ", 0, 0xFFFFFFFF)

    item = struct.pack("<HHL", 0xFFFE, 0xE000, 0xFFFFFFFF if item_undefined else 0)
    opening = (sq_header() + item) * depth
    closing = (struct.pack("<HHL", 0xFFFE, 0xE00D, 0) + struct.pack("<HHL", 0xFFFE, 0xE0DD, 0)) * depth
    data = opening + (closing if item_undefined else b"")
    syntax = "1.2.840.10008.1.2" if implicit else "1.2.840.10008.1.2.1"
    assume(len(data) < 1 << 20)
    with bounded(SECONDS, PEAK):
        try:
            _inspect(workdir, data, syntax, None)
            complete = True
        except Incomplete:
            complete = False
    if item_undefined:
        assert complete == (depth <= 64)
