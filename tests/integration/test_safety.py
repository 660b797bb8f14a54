"""Nothing lost, nothing let in: hostile or broken input through real associations."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pydicom
import pytest

from tests.support.ci import skip_or_fail
from tests.support.dicomfiles import crafted_file, make_object
from tests.support.paths import TEST_FILES
from tests.support.peers import require_dcmtk, send_raw, storescu

STATUS_SUCCESS = 0x0000
STATUS_OUT_OF_RESOURCES = 0xA700
STATUS_DATASET_DOES_NOT_MATCH = 0xA900
STATUS_CANNOT_UNDERSTAND = 0xC000


def setup_module() -> None:
    require_dcmtk()


def all_files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file())


@pytest.mark.parametrize("uid,name", [
    ("../../escaped", ".._.._escaped"), ("1.2/../../escaped", "1.2_.._.._escaped"), ("..", ".."),
    ("/tmp/x", "_tmp_x"),
])
@pytest.mark.filterwarnings("ignore:Invalid value for VR UI")  # the test writes them on purpose
def test_path_traversal_in_sop_instance_uid_is_sanitised(daemon_factory, tmp_path: Path, uid: str, name: str) -> None:
    """CVE-2022-2119: the UID names a file; '/' becomes '_' as in Debian's DCMTK, inside -od."""
    root = tmp_path / "root"
    out = root / "a" / "b" / "out"
    out.mkdir(parents=True)
    d = daemon_factory(output=out)
    status = send_raw(d.port, crafted_file(tmp_path / "evil.dcm", uid, uid))
    assert status == STATUS_SUCCESS
    assert [p.relative_to(root) for p in all_files(root) if ".storescpd-staging" not in p.parts] == [
        Path("a/b/out") / f"CT.{name}"]
    if "/" in uid:
        assert "Sanitized unusual characters in SOP Instance UID" in d.log()


def test_empty_sop_instance_uid_is_refused(daemon_factory, tmp_path: Path) -> None:
    d = daemon_factory()
    assert send_raw(d.port, crafted_file(tmp_path / "empty.dcm", "", "")) in (STATUS_CANNOT_UNDERSTAND,
                                                                            STATUS_DATASET_DOES_NOT_MATCH)
    assert d.stored_files() == []


def test_command_and_dataset_uids_differ(daemon_factory, tmp_path: Path) -> None:
    d = daemon_factory()
    status = send_raw(d.port, crafted_file(tmp_path / "x.dcm", "1.2.3.4", "1.2.3.5"))
    assert status == STATUS_DATASET_DOES_NOT_MATCH
    assert d.stored_files() == []
    assert "differs from the C-STORE request" in d.log()


def space_padded_file(path: Path, uid: str, padded: str) -> Path:
    """The C-STORE command (from the meta) carries `uid`, the data set's SOP Instance UID `padded`."""
    assert len(uid) % 2 == 1 and len(padded) == len(uid) + 1  # pydicom pads `uid` with one NUL
    data = crafted_file(path, uid, uid).read_bytes()
    assert data.count(uid.encode() + b"\0") == 2
    at = data.rindex(uid.encode() + b"\0")  # the data set's copy comes after the meta's
    path.write_bytes(data[:at] + padded.encode() + data[at + len(padded):])
    return path


PADDED_UID = "1.2.826.0.1.3680043.10.5.77"


@pytest.mark.parametrize("padded", [PADDED_UID + " ", " " + PADDED_UID], ids=["trailing", "leading"])
@pytest.mark.parametrize("flags", [(), ("-up",)], ids=["default", "uid-padding"])
def test_space_padded_dataset_uid_is_treated_as_dcmtk_does(daemon_factory, dcmtk_storescp, tmp_path: Path,
                                                            flags: tuple[str, ...], padded: str) -> None:
    # DCMTK 3.6.7 strips the spaces whether or not -up is given (dcmdata's automatic input data
    # correction is on by default), answers Success and names the file by the unpadded UID.
    path = space_padded_file(tmp_path / "padded.dcm", PADDED_UID, padded)
    ours, theirs = daemon_factory(*flags), dcmtk_storescp(*flags)
    assert send_raw(theirs.port, path) == STATUS_SUCCESS
    assert [p.name for p in theirs.stored_files()] == [f"CT.{PADDED_UID}"]
    assert send_raw(ours.port, path) == STATUS_SUCCESS, ours.log()
    assert [p.name for p in ours.stored_files()] == [f"CT.{PADDED_UID}"]


def test_command_and_dataset_sop_classes_differ(daemon_factory, tmp_path: Path) -> None:
    ct, mr = "1.2.840.10008.5.1.4.1.1.2", "1.2.840.10008.5.1.4.1.1.4"  # same length: patched in place
    path = crafted_file(tmp_path / "class.dcm", "1.2.3.4", "1.2.3.4")
    data = path.read_bytes()
    path.write_bytes(data.replace(ct.encode() + b"\0", mr.encode() + b"\0", 1))  # the meta's copy only
    assert pydicom.dcmread(path).SOPClassUID == ct
    d = daemon_factory()
    assert send_raw(d.port, path) == STATUS_DATASET_DOES_NOT_MATCH
    assert d.stored_files() == []
    assert "SOP Class UID of the data set" in d.log()


def test_disk_full_answers_out_of_resources_and_recovers(daemon_factory, tmp_path: Path) -> None:
    if os.geteuid() != 0:
        skip_or_fail("mounting a small tmpfs needs root (.ci/run runs as root)")
    small = tmp_path / "small-fs"
    small.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(small)], check=True)
    try:
        big = make_object(tmp_path / "big.dcm", 4)
        d = daemon_factory(output=small)
        result = storescu(d.port, [big], "-v")
        assert "Received Store Response (Refused: OutOfResources)" in result.stderr, result.stderr
        assert d.stored_files() == []
        assert list((small / ".storescpd-staging").iterdir()) == []
        assert "answering Out of Resources" in d.log()
        ok = storescu(d.port, [TEST_FILES / "CT_small.dcm"])
        assert ok.returncode == 0, ok.stderr
        assert [p.name for p in d.stored_files()] == ["CT.1.3.6.1.4.1.5962.1.1.1.1.1.20040119072730.12322"]
    finally:
        subprocess.run(["umount", "-l", str(small)], check=False)


def _variant(tmp_path: Path, name: str, patient: str) -> Path:
    ds = pydicom.dcmread(TEST_FILES / "CT_small.dcm")
    ds.PatientName = patient
    path = tmp_path / name
    ds.save_as(path)
    return path


@pytest.mark.parametrize("policy,expected_files,kept", [
    ("overwrite", 1, "SECOND"),
    ("keep-first", 1, "FIRST"),
    ("unique", 2, None),
])
def test_same_instance_twice(daemon_factory, tmp_path: Path, policy: str, expected_files: int, kept: str | None) -> None:
    d = daemon_factory("--on-duplicate", policy)
    first, second = _variant(tmp_path, "1.dcm", "FIRST"), _variant(tmp_path, "2.dcm", "SECOND")
    assert storescu(d.port, [first]).returncode == 0
    assert storescu(d.port, [second]).returncode == 0
    files = d.stored_files()
    assert len(files) == expected_files
    if kept:
        assert str(pydicom.dcmread(files[0]).PatientName) == kept
    else:
        assert {str(pydicom.dcmread(f).PatientName) for f in files} == {"FIRST", "SECOND"}
        assert any(".X." in f.name for f in files)
    if policy == "overwrite":
        assert "already exists, overwriting" in d.log()


@pytest.mark.parametrize("flags,shown", [((), True), (("-q",), False)], ids=["default", "quiet"])
def test_quiet_hides_the_overwrite_warning(daemon_factory, flags: tuple[str, ...], shown: bool) -> None:
    d = daemon_factory(*flags)
    for _ in range(2):
        result = storescu(d.port, [TEST_FILES / "CT_small.dcm"])
        assert result.returncode == 0, result.stderr
    assert len(d.stored_files()) == 1
    assert ("already exists, overwriting" in d.log()) is shown, d.log()


@pytest.mark.parametrize("flags", [(), ("+B",)], ids=["default", "bit-preserving"])
def test_big_object_memory_stays_flat(daemon_factory, tmp_path: Path, flags: tuple[str, ...]) -> None:
    """A 256 MiB object must not cost 256 MiB of memory in the process that receives it."""
    big = make_object(tmp_path / "big.dcm", 256)
    d = daemon_factory("--single-process", *flags)
    result = storescu(d.port, [big], timeout=300)
    assert result.returncode == 0, result.stderr
    status = Path(f"/proc/{d.pid}/status").read_text()
    peak_kb = int(next(line for line in status.splitlines() if line.startswith("VmHWM")).split()[1])
    assert peak_kb < 120 * 1024, f"peak RSS {peak_kb} kB for a 256 MiB object"
    (stored,) = d.stored_files()
    assert stored.stat().st_size > 256 << 20
    big.unlink()


def test_access_control_drops_a_denied_peer(daemon_factory, tmp_path: Path) -> None:
    allow, deny = tmp_path / "hosts.allow", tmp_path / "hosts.deny"
    allow.write_text("storescp: 10.0.0.0/8\n")
    deny.write_text("ALL: ALL\n")
    d = daemon_factory("+ac", "-dhl", "--hosts-allow", str(allow), "--hosts-deny", str(deny))
    result = storescu(d.port, [TEST_FILES / "CT_small.dcm"])
    assert result.returncode != 0
    assert d.stored_files() == []
    assert "access denied to 127.0.0.1" in d.log()
    allow.write_text("storescp: 127.0.0.1\n")  # rules are read per connection, as libwrap does
    ok = storescu(d.port, [TEST_FILES / "CT_small.dcm"])
    assert ok.returncode == 0, ok.stderr
