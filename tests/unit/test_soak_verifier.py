"""The soak's verdict rests on its verifier (bench/soakload.py, bench/soakwatch.py): it must see a
changed byte, a cut file, pixels under the wrong UID, a lost response and a growing process; and its
malformed requests (bench/soakfaults.py) must be malformed."""

from __future__ import annotations

import random
import sys
from pathlib import Path

import pydicom
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
import dul  # noqa: E402
import soakfaults  # noqa: E402
import soakload  # noqa: E402
import soakwatch  # noqa: E402


@pytest.fixture(scope="module")
def template() -> soakload.Template:
    return soakload.build_template(soakload.SIZE_CLASSES[1], random.Random(7))


def stored(template: soakload.Template, uid: str, tmp_path: Path) -> tuple[bytes, int]:
    path = tmp_path / "object.dcm"
    soakload.write_object(template, uid, path)
    data = path.read_bytes()
    return data, soakload.split_part10(data)[1]


def test_an_object_is_a_valid_file_with_its_own_uid_and_token(template: soakload.Template, tmp_path: Path) -> None:
    uids = soakload.UidSource(random.Random(1))
    first, second = uids.next(), uids.next()
    assert first != second and len(first) == len(second) == len(soakload.UidSource.placeholder())
    soakload.write_object(template, first, tmp_path / "a.dcm")
    ds = pydicom.dcmread(tmp_path / "a.dcm")
    assert ds.SOPInstanceUID == ds.file_meta.MediaStorageSOPInstanceUID == first
    assert ds.PixelData[:soakload.TOKEN_BYTES] == soakload.object_token(first)
    assert len(ds.PixelData) == template.size.pixel_bytes


def test_the_data_set_matches_only_when_byte_identical(template: soakload.Template, tmp_path: Path) -> None:
    uid = soakload.UidSource(random.Random(2)).next()
    data, start = stored(template, uid, tmp_path)
    assert soakload.dataset_matches(template, uid, memoryview(data)[start:])
    flipped = bytearray(data)
    flipped[len(data) // 2] ^= 0x01
    assert not soakload.dataset_matches(template, uid, memoryview(bytes(flipped))[start:])
    assert not soakload.dataset_matches(template, uid, memoryview(data)[start:-1])  # cut by one byte
    assert not soakload.dataset_matches(template, uid, memoryview(data + b"\0\0")[start:])


def test_pixels_of_another_object_do_not_match(template: soakload.Template, tmp_path: Path) -> None:
    uids = soakload.UidSource(random.Random(3))
    mine, other = uids.next(), uids.next()
    data, start = stored(template, other, tmp_path)
    swapped = data.replace(other.encode(), mine.encode())  # the right UIDs, the other object's pixels
    assert soakload._uid_value(soakload.split_part10(swapped)[0][0x0003]) == mine
    assert not soakload.dataset_matches(template, mine, memoryview(swapped)[start:])


def test_split_part10_refuses_what_is_not_a_part10_file() -> None:
    with pytest.raises(ValueError):
        soakload.split_part10(bytes(200))


def test_storescu_log_gives_each_file_its_status_and_none_to_the_unanswered() -> None:
    log = "\n".join([
        "I: Sending file: /s/a.dcm", "D: DIMSE Status                  : 0x0000: Success",
        "I: Sending file: /s/b.dcm", "D: DIMSE Status                  : 0xa700: Refused: OutOfResources",
        "I: Sending file: /s/c.dcm", "E: Store SCU Failed: 0006:0207 Association Aborted",
    ])
    assert soakload.parse_storescu_log(log) == {"/s/a.dcm": 0x0000, "/s/b.dcm": 0xA700}


def test_slope_and_growth_see_a_leak_and_only_a_leak() -> None:
    t = [float(i) for i in range(120)]
    assert soakwatch.slope_per_minute(t, [5.0] * 120) == 0
    assert soakwatch.slope_per_minute(t, [i / 60 for i in range(120)]) == pytest.approx(1.0)
    series = soakwatch.ProcSeries(1, "supervisor", "0", t=t, rss=[(40 << 20) + i * 100_000 for i in range(120)],
                                  fds=[10] * 120, threads=[1] * 120)
    trend = soakwatch._trend(series, since=20, excluded=[(50.0, 70.0)])
    assert trend["samples"] == 100 - 21
    assert trend["rss_mib_per_min"] == pytest.approx(100_000 * 60 / (1 << 20), rel=1e-3)
    assert trend["rss_mib_growth"] > 5 and trend["fds_per_min"] == 0


def test_the_overrun_case_always_overruns() -> None:
    """An overrun of exactly the User Information item's length frames a valid-looking request
    (see docs/reliability.md): the malformed case must never draw it."""
    offset = 6 + 68 + 4 + len(dul.APPLICATION_CONTEXT)  # the presentation context item's header
    base = soakfaults.associate_rq()
    assert base[offset] == 0x20
    claimed = {int.from_bytes(soakfaults._pc_overrun(random.Random(seed))[offset + 2:offset + 4], "big")
               - int.from_bytes(base[offset + 2:offset + 4], "big") for seed in range(2000)}
    assert claimed <= set(range(1, 201)) and len(claimed) > 150
    assert len(soakfaults._user_item()) not in claimed


def _worker(start: float, fresh_mib: float, served_mib: float) -> soakwatch.ProcSeries:
    t = [start + i for i in range(20)]
    rss = [int(fresh_mib * (1 << 20))] * 2 + [int(served_mib * (1 << 20))] * 18
    return soakwatch.ProcSeries(0, "worker", "0", t=t, rss=rss, fds=[5] * 20, threads=[1] * 20)


@pytest.mark.parametrize("leak_per_generation_mib, flat", [(0.0, True), (1.0, False)])
def test_worker_sizes_across_generations_show_a_leak_that_outlives_workers(leak_per_generation_mib: float,
                                                                           flat: bool) -> None:
    workers = [_worker(30.0 * g + 0.1 * i, 34 + g * leak_per_generation_mib, 41 + g * leak_per_generation_mib)
               for g in range(9) for i in range(4)]
    workers.append(_worker(95.0, 30.0, 30.0))  # a replacement never sampled unused in this generation
    summary = soakwatch.worker_summary(workers, since=0.0, excluded=[])
    assert summary["generations"] == 10
    grew = (summary["fresh_rss_mib_late"] - summary["fresh_rss_mib_early"],
            summary["served_rss_mib_late"] - summary["served_rss_mib_early"])
    assert (grew[0] < 2 and grew[1] < 4) == flat, (summary, grew)
