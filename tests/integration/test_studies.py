"""Study sorting, -rns, end of study and hooks through real associations, side by side with DCMTK.

DCMTK's storescp (single process) is the reference for the folder layout, the renamed names and
the hook calls; storescpd must give the same in every process mode (the supervisor tracks the
studies across workers). Timestamps in folder names are compared by pattern and named by the study the folder holds.
"""

from __future__ import annotations

import copy
import json
import re
import sys
import time
from pathlib import Path
from typing import Callable, Iterator

import pydicom
import pytest
from pydicom.data import get_testdata_file

from tests.support.peers import DcmtkStorescp, require_dcmtk, storescu
from tests.support.processes import wait_until

pytestmark = pytest.mark.timeout(300)

# (calling AE title, objects) per association, one after the other: study A spans two
# associations, the second association also starts study B, C ends B.
SCENARIO = [("SENDER1", ["A1", "A2"]), ("SENDER2", ["A3", "B1"]), ("SENDER3", ["B2"]), ("SENDER4", ["C1"])]
STUDIES = {"A": ("1.2.826.0.1.3680043.2.1143.77.1", "Doe^John"),
           "B": ("1.2.826.0.1.3680043.2.1143.77.2", "Müller^Jörg"),
           "C": ("1.2.826.0.1.3680043.2.1143.77.3", "")}
MODES = ["--single-process", "--prefork", "--fork"]
SORTS = {"ss": ["-ss", "PFX"], "su": ["-su", "PFX"], "sp": ["-sp"]}
TIMESTAMP = re.compile(r"\d{8}_\d{9}")

RECORDER = """#!{python}
import json, sys, time
with open({calls!r}, "a") as out:
    out.write(json.dumps({{"t": time.monotonic(), "argv": sys.argv[1:]}}) + "\\n")
"""


def make_objects(directory: Path) -> dict[str, Path]:
    directory.mkdir(parents=True, exist_ok=True)
    bases = {"CT": pydicom.dcmread(get_testdata_file("CT_small.dcm")),
             "MR": pydicom.dcmread(get_testdata_file("MR_small.dcm"))}
    files = {}
    for n, label in enumerate(["A1", "A2", "A3", "B1", "B2", "C1"]):
        ds = copy.deepcopy(bases["MR" if label in ("A3", "B2") else "CT"])
        uid = f"1.2.826.0.1.3680043.2.1143.78.{n + 1}"
        ds.SOPInstanceUID = uid
        ds.file_meta.MediaStorageSOPInstanceUID = uid
        study_uid, name = STUDIES[label[0]]
        ds.StudyInstanceUID = study_uid
        ds.SpecificCharacterSet = "ISO_IR 100"
        ds.PatientName = name
        files[label] = directory / f"{label}.dcm"
        ds.save_as(files[label], enforce_file_format=True)
    return files


def recorder(directory: Path, name: str) -> tuple[Path, Path]:
    calls = directory / f"{name}.jsonl"
    script = directory / f"{name}.py"
    script.write_text(RECORDER.format(python=sys.executable, calls=str(calls)))
    script.chmod(0o755)
    return script, calls


def send_scenario(port: int, files: dict[str, Path]) -> None:
    for ae, labels in SCENARIO:
        result = storescu(port, [files[label] for label in labels], "-aet", ae)
        assert result.returncode == 0, result.stderr


def recorded(calls: Path) -> list[dict]:
    """The hook calls the recorder wrote so far."""
    return [json.loads(line) for line in calls.read_text().splitlines()] if calls.exists() else []


def wait_calls(calls: Path, count: int, timeout: float = 15.0) -> list[dict]:
    """The recorded hook calls, once there are at least `count`."""
    def at_least_count() -> list[dict] | None:
        found = recorded(calls)
        return found if len(found) >= count else None

    return wait_until(at_least_count, timeout,
                      lambda: f"{calls.name}: {len(recorded(calls))} hook calls, expected {count}")


def study_in(folder: Path) -> str:
    """The label (A, B, C) of the study whose objects a sorted folder holds."""
    labels = {uid: label for label, (uid, _) in STUDIES.items()}
    found = {labels[pydicom.dcmread(f, stop_before_pixels=True).StudyInstanceUID]
             for f in folder.iterdir() if f.is_file()}
    assert len(found) == 1, f"{folder.name} holds studies {sorted(found)}"
    return found.pop()


def normalise(output: Path, calls: list[dict]) -> tuple[list[str], list[list[str]]]:
    """Layout and hook calls with each folder's timestamp replaced by the study it holds.

    Not by the order of the names: the wall clock can step back between two studies (a fresh
    machine's time synchronisation did, in CI), and then a later study's folder sorts first.
    """
    folders = [p for p in output.iterdir() if p.is_dir() and not p.name.startswith(".")]
    symbol = {folder.name: TIMESTAMP.sub(f"T{study_in(folder)}", folder.name) for folder in folders}

    def clean(text: str) -> str:
        text = text.replace(str(output), "OUT")
        for name, sym in symbol.items():
            text = text.replace(name, sym)
        return text

    layout = sorted(clean(str(p.relative_to(output))) for p in output.rglob("*")
                    if p.is_file() and ".storescpd-staging" not in p.parts)
    return layout, sorted([clean(a) for a in call["argv"]] for call in calls)


@pytest.fixture(scope="module")
def dcmtk_reference(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[[str], tuple]]:
    """DCMTK storescp's layout and hook calls for a sort option, measured once per module."""
    results: dict[str, tuple] = {}

    def run(sort: str) -> tuple:
        if sort not in results:
            require_dcmtk()
            work = tmp_path_factory.mktemp(f"dcmtk-{sort}")
            files = make_objects(work / "objects")
            script, calls = recorder(work, "hook")
            scp = DcmtkStorescp(work, [*SORTS[sort], "-rns", "-xcr", f"{script} xcr #p #f #a #c #r",
                                       "-xcs", f"{script} xcs #p"])
            try:
                send_scenario(scp.port, files)
                results[sort] = normalise(scp.output, wait_calls(calls, 8))
            finally:
                scp.stop()
        return results[sort]

    yield run


@pytest.mark.parametrize("sort", sorted(SORTS))
@pytest.mark.parametrize("mode", MODES)
def test_layout_renames_and_hooks_equal_dcmtk(mode: str, sort: str, daemon_factory, dcmtk_reference,
                                             tmp_path: Path) -> None:
    expected_layout, expected_calls = dcmtk_reference(sort)
    files = make_objects(tmp_path / "objects")
    script, calls = recorder(tmp_path, "hook")
    daemon = daemon_factory(mode, *SORTS[sort], "-rns", "-xcr", f"{script} xcr #p #f #a #c #r",
                            "-xcs", f"{script} xcs #p")
    send_scenario(daemon.port, files)
    layout, hook_calls = normalise(daemon.output, wait_calls(calls, 8))
    assert layout == expected_layout
    assert hook_calls == expected_calls
    # A and B ended and were renamed; C is the open study (DCMTK keeps the last one open too).
    assert sum(1 for name in layout if re.search(r"/(CT|MR)\d{6}$", name)) == 5
    time.sleep(0.3)  # an extra call would show up by now: its absence can only be waited for
    assert len(wait_calls(calls, 8)) == 8  # no extra call
    daemon.stop()
    assert "Traceback" not in daemon.log()


def test_end_of_study_hook_names_the_sender_of_the_study(daemon_factory, tmp_path: Path) -> None:
    # DCMTK 3.6.7 passes the calling AE title of the association that brought the *next* study
    # (measured: SENDER4 for study B); storescpd passes the one that sent the study's last object.
    files = make_objects(tmp_path / "objects")
    script, calls = recorder(tmp_path, "hook")
    daemon = daemon_factory("--prefork", "-ss", "", "-xcs", f"{script} #a #c #r #p")
    send_scenario(daemon.port, files)
    ends = wait_calls(calls, 2)
    assert [c["argv"][:3] for c in ends] == [["SENDER2", "ANY-SCP", "localhost"],
                                            ["SENDER3", "ANY-SCP", "localhost"]]
    assert all(TIMESTAMP.fullmatch(Path(c["argv"][3]).name) for c in ends)  # empty prefix: no "_"


@pytest.mark.parametrize("mode", ["--single-process", "--prefork", "--fork"])
def test_eostudy_timeout_fires_once_about_two_seconds_after_the_last_object(mode: str, daemon_factory,
                                                                           tmp_path: Path) -> None:
    files = make_objects(tmp_path / "objects")
    script, calls = recorder(tmp_path, "hook")
    daemon = daemon_factory(mode, "-ss", "P", "-tos", "2", "-rns", "-xcs", f"{script} #p")
    result = storescu(daemon.port, [files["A1"], files["A2"]])
    last = time.monotonic()  # CLOCK_MONOTONIC is system-wide: comparable with the hook's
    assert result.returncode == 0, result.stderr
    (call,) = wait_calls(calls, 1, timeout=10)
    assert 1.5 <= call["t"] - last <= 4.0
    folder = Path(call["argv"][0])
    assert folder.parent == daemon.output and re.fullmatch(r"P_\d{8}_\d{9}", folder.name)
    assert sorted(p.name for p in folder.iterdir()) == ["CT000001", "CT000002"]
    time.sleep(2.5)  # longer than -tos 2: a second timeout would have fired by now
    assert len(wait_calls(calls, 1)) == 1


SLOW_FAILING_HOOK = """#!{python}
import sys, time
time.sleep(1.0)
with open({stamp!r}, "w") as out:
    out.write(repr(time.monotonic()))
sys.exit(7)
"""


def slow_failing_hook(directory: Path) -> tuple[Path, Path]:
    """A hook that takes 1 s, writes when it finished (time.monotonic(), system-wide) and exits with status 7."""
    stamp = directory / "hook-finished"
    script = directory / "slow_failing_hook.py"
    script.write_text(SLOW_FAILING_HOOK.format(python=sys.executable, stamp=str(stamp)))
    script.chmod(0o755)
    return script, stamp


@pytest.mark.parametrize("mode", ["--single-process", "--prefork"])
def test_synchronous_failing_hook_runs_before_the_store_returns_and_its_status_is_logged(
        mode: str, daemon_factory, tmp_path: Path) -> None:
    files = make_objects(tmp_path / "objects")
    script, stamp = slow_failing_hook(tmp_path)
    daemon = daemon_factory(mode, "-xs", "-xcr", f"{script} #f")
    started = time.monotonic()
    result = storescu(daemon.port, [files["A1"]], "-v")
    returned = time.monotonic()
    elapsed = returned - started
    assert result.returncode == 0, result.stderr
    assert "Received Store Response (Success)" in result.stderr, result.stderr  # exit 7 changes nothing
    assert (daemon.output / "CT.1.2.826.0.1.3680043.2.1143.78.1").is_file()
    assert elapsed >= 1.0, f"the store returned after {elapsed:.2f} s: the hook did not run synchronously"
    assert stamp.exists() and float(stamp.read_text()) <= returned  # written before storescu returned
    daemon.wait_for_log("exited with status 7")
    assert re.search(r"--exec-on-reception \(pid \d+\) exited with status 7", daemon.log()), daemon.log()


def test_asynchronous_slow_hook_does_not_delay_the_store(daemon_factory, tmp_path: Path) -> None:
    files = make_objects(tmp_path / "objects")
    script, stamp = slow_failing_hook(tmp_path)
    daemon = daemon_factory("--prefork", "-xcr", f"{script} #f")
    started = time.monotonic()
    result = storescu(daemon.port, [files["A1"]])
    elapsed = time.monotonic() - started
    assert result.returncode == 0, result.stderr
    assert elapsed < 1.0, f"the store took {elapsed:.2f} s behind an asynchronous hook"
    daemon.wait_for_log("exited with status 7")


# ---- injection through real associations ---------------------------------------------------

EVIL_AE_TITLES = ['x";touch PWNED;"', "$(touch PWNED)", "`touch PWNED`", "-rf", "a;touch PWNED"]


def pynetdicom_send(port: int, calling_ae: str, dataset: pydicom.Dataset) -> int:
    from pynetdicom import AE

    ae = AE(ae_title=calling_ae)
    ae.add_requested_context(dataset.SOPClassUID, dataset.file_meta.TransferSyntaxUID)
    assoc = ae.associate("127.0.0.1", port, ae_title="STORESCP")
    assert assoc.is_established
    try:
        status = assoc.send_c_store(dataset)
        return int(status.Status) if status else -1
    finally:
        assoc.release()


@pytest.mark.parametrize("mode", ["--single-process", "--prefork", "--fork"])
def test_peer_values_reach_hooks_as_single_arguments_and_run_nothing(mode: str, daemon_factory,
                                                                     tmp_path: Path) -> None:
    files = make_objects(tmp_path / "objects")
    script, calls = recorder(tmp_path, "hook")
    # '--' first: a title such as '-rf' may begin an argument (without it the hook would not run).
    daemon = daemon_factory(mode, "-su", "", "-xcr", f"{script} -- #a #c #p #f", "-xcs", f"{script} end #a #p")
    dataset = pydicom.dcmread(files["A1"])
    for title in EVIL_AE_TITLES:
        assert pynetdicom_send(daemon.port, title, dataset) == 0x0000
    received = wait_calls(calls, len(EVIL_AE_TITLES))
    assert sorted(c["argv"] for c in received) == sorted(  # asynchronous hooks: any order
        ["--", title, "STORESCP", str(daemon.output / STUDIES["A"][0]), "CT.1.2.826.0.1.3680043.2.1143.78.1"]
        for title in EVIL_AE_TITLES)
    assert not list(tmp_path.rglob("PWNED")) and not Path("/PWNED").exists()


@pytest.mark.parametrize("mode", ["--single-process", "--prefork"])
def test_a_calling_ae_title_that_would_be_an_option_does_not_run_the_hook(mode: str, daemon_factory,
                                                                          tmp_path: Path) -> None:
    files = make_objects(tmp_path / "objects")
    script, calls = recorder(tmp_path, "hook")
    daemon = daemon_factory(mode, "-xcr", f"{script} #a #f")
    result = storescu(daemon.port, [files["A1"]], "-aet", "-rf")
    assert result.returncode == 0, result.stderr  # the C-STORE succeeds all the same
    assert (daemon.output / "CT.1.2.826.0.1.3680043.2.1143.78.1").is_file()
    assert storescu(daemon.port, [files["A2"]], "-aet", "SAFE").returncode == 0
    (call,) = wait_calls(calls, 1)  # only the second object's hook ran
    assert call["argv"][0] == "SAFE"
    daemon.wait_for_log("not run")
    assert "--exec-on-reception not run" in daemon.log() and "(#a) '-rf'" in daemon.log()
    assert len(wait_calls(calls, 1)) == 1


@pytest.mark.filterwarnings("ignore:Invalid value for VR UI")
@pytest.mark.parametrize("uid", ["1.2.3;touch PWNED", "1.2/../../PWNED", "..", "."])
def test_hostile_uids_never_leave_the_output_directory(uid: str, daemon_factory, tmp_path: Path) -> None:
    from pydicom import config as pydicom_config

    files = make_objects(tmp_path / "objects")
    script, calls = recorder(tmp_path, "hook")
    daemon = daemon_factory("--prefork", "-su", "", "-xcr", f"{script} #p #f")
    dataset = pydicom.dcmread(files["A1"])
    mode = pydicom_config.settings.writing_validation_mode
    pydicom_config.settings.writing_validation_mode = pydicom_config.IGNORE
    try:
        dataset.StudyInstanceUID = uid  # the study folder's name comes from it with -su ""
        study_status = pynetdicom_send(daemon.port, "SCU", dataset)
        dataset.StudyInstanceUID = STUDIES["A"][0]
        dataset.SOPInstanceUID = uid  # the file name comes from it
        dataset.file_meta.MediaStorageSOPInstanceUID = uid
        instance_status = pynetdicom_send(daemon.port, "SCU", dataset)
    finally:
        pydicom_config.settings.writing_validation_mode = mode
    assert instance_status == 0x0000  # stored, with '/' made '_' as DCMTK does
    sanitised = "CT." + uid.replace("/", "_")
    stored = [p for p in tmp_path.rglob("*") if p.is_file() and p.name.startswith("CT.")]
    assert all(daemon.output in p.parents for p in stored)
    assert (daemon.output / STUDIES["A"][0] / sanitised).is_file()
    if uid in (".", ".."):
        assert study_status == 0xC000  # DCMTK 3.6.7 stores a ".." study above -od with success
        expected_files = [sanitised]
    else:
        assert study_status == 0x0000
        expected_files = ["CT.1.2.826.0.1.3680043.2.1143.78.1", sanitised]
    # The hostile study's object (if stored), then the instance: "#p #f" is exactly two arguments.
    received = wait_calls(calls, len(expected_files))
    assert sorted(call["argv"][1:] for call in received) == sorted([name] for name in expected_files)
    assert all(len(call["argv"]) == 2 and Path(call["argv"][0]).parent == daemon.output for call in received)
    instance_call = next(call for call in received if call["argv"][1] == sanitised)
    assert (Path(instance_call["argv"][0]) / sanitised).is_file()
    time.sleep(0.3)  # an extra call would show up by now: its absence can only be waited for
    assert len(wait_calls(calls, len(expected_files))) == len(expected_files)  # no extra call
    assert not [p for p in tmp_path.rglob("*") if p.name == "PWNED"] and not Path("/PWNED").exists()
    assert not Path("PWNED").exists()  # nor in the test's working directory
    assert not (daemon.output.parent / "CT.1.2.826.0.1.3680043.2.1143.78.1").exists()
