"""File names chosen by several associations at once: every object keeps its own file.

DCMTK names a second -tn file of the same millisecond with _0000, _0001, ...; in one process that
is a check then a write. Several workers store at the same time here, so a name is claimed
atomically (a file is never replaced by another object's file that chose the same name); the
same holds for on_duplicate = unique when the same instance arrives on two associations at once.
"""

from __future__ import annotations

import concurrent.futures
import copy
from pathlib import Path

import pydicom
import pytest
from pydicom.data import get_testdata_file

from tests.support.peers import require_dcmtk, storescu

pytestmark = pytest.mark.timeout(300)

ASSOCIATIONS = 4
OBJECTS_EACH = 150


def setup_module() -> None:
    require_dcmtk()


def small_objects(directory: Path, count: int, first: int, patient: str = "") -> list[Path]:
    """Small CT objects, each with its own SOP Instance UID, pixel data dropped."""
    base = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    del base.PixelData
    base.PatientName = patient
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for n in range(first, first + count):
        ds = copy.deepcopy(base)
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = f"1.2.826.0.1.3680043.2.1143.79.{n}"
        paths.append(directory / f"{n}.dcm")
        ds.save_as(paths[-1], enforce_file_format=True)
    return paths


@pytest.mark.parametrize("mode", ["--prefork", "--fork"])
def test_parallel_associations_lose_no_object_under_time_names(mode: str, daemon_factory, tmp_path: Path) -> None:
    batches = [small_objects(tmp_path / f"batch{i}", OBJECTS_EACH, i * OBJECTS_EACH) for i in range(ASSOCIATIONS)]
    daemon = daemon_factory(mode, "--workers", str(ASSOCIATIONS), "-tn", "--no-fsync")
    with concurrent.futures.ThreadPoolExecutor(ASSOCIATIONS) as pool:
        results = list(pool.map(lambda batch: storescu(daemon.port, batch), batches))
    assert all(r.returncode == 0 for r in results), [r.stderr[-500:] for r in results]
    stored = [p for p in daemon.output.iterdir() if p.is_file()]
    uids = {pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID for p in stored}
    assert len(uids) == ASSOCIATIONS * OBJECTS_EACH, (
        f"{ASSOCIATIONS * OBJECTS_EACH - len(uids)} objects acknowledged but not on disk; "
        f"{sum('overwriting' in line for line in daemon.log().splitlines())} overwrites logged")
    assert len(stored) == len(uids)
    assert all(p.name[:17].isdigit() and p.name.split(".")[1] == "CT" for p in stored)


def test_the_same_instances_on_parallel_associations_are_all_kept_under_unique(daemon_factory,
                                                                             tmp_path: Path) -> None:
    """Each association sends the same 100 SOP Instance UIDs (its own Patient Name).

    The race this guards against (a check for the name, then a rename over it) has a window of
    microseconds and is rarely hit here; the claim with link() closes it by construction, and
    this test holds the outcome: every copy kept."""
    count = 100
    batches = [small_objects(tmp_path / f"batch{i}", count, 0, patient=f"SENDER{i}") for i in range(ASSOCIATIONS)]
    daemon = daemon_factory("--workers", str(ASSOCIATIONS), "--on-duplicate", "unique", "--no-fsync")
    with concurrent.futures.ThreadPoolExecutor(ASSOCIATIONS) as pool:
        results = list(pool.map(lambda batch: storescu(daemon.port, batch), batches))
    assert all(r.returncode == 0 for r in results), [r.stderr[-500:] for r in results]
    kept = {(str(ds.SOPInstanceUID), str(ds.PatientName))
            for ds in (pydicom.dcmread(p, stop_before_pixels=True) for p in daemon.output.iterdir() if p.is_file())}
    assert len(kept) == ASSOCIATIONS * count, f"{ASSOCIATIONS * count - len(kept)} objects acknowledged and lost"


@pytest.mark.parametrize("flags", [("--fork", "-ss", "P", "-rns"), ("--workers", "2", "--max-requests", "1")],
                         ids=["fork-sorting", "prefork-recycling"])
def test_many_short_associations_at_once_never_stop_the_supervisor(flags: tuple[str, ...], daemon_factory,
                                                                  tmp_path: Path) -> None:
    """A worker's channel can close (EOF read while another worker's question is answered, or
    after its last "idle") before the worker is reaped: nothing may read it or hand it work then."""
    parallel, rounds = 16, 3
    objects = small_objects(tmp_path / "objects", parallel * rounds, 0)
    daemon = daemon_factory(*flags, "--no-fsync")
    for r in range(rounds):
        batch = objects[r * parallel:(r + 1) * parallel]
        with concurrent.futures.ThreadPoolExecutor(parallel) as pool:
            results = list(pool.map(lambda path: storescu(daemon.port, [path]), batch))
        assert all(res.returncode == 0 for res in results), [res.stderr[-300:] for res in results] + [daemon.log()[-3000:]]
    assert daemon.proc.poll() is None, daemon.log()[-3000:]
    stored = [p for p in daemon.output.rglob("*") if p.is_file() and ".storescpd-staging" not in p.parts]
    assert len(stored) == parallel * rounds
    assert "Traceback" not in daemon.log()
