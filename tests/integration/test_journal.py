"""The receipt journal with real peers: what DCMTK's storescu sent is what /receipts, /studies and
``storescpd ctl`` say arrived, where it is, and nothing else; across renames, restarts, kills and a
journal that cannot be written; ``storescpd journal rebuild`` over a tree DCMTK's storescp wrote."""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import sqlite3
import subprocess
import time
from pathlib import Path
from typing import Any

import pydicom
import pytest
from pydicom.uid import generate_uid
from pynetdicom import AE

from tests.support.api import Api, api_daemon, sample
from tests.support.daemons import Daemon
from tests.support.dicomfiles import crafted_file, make_object
from tests.support.paths import STORESCPD, TEST_FILES
from tests.support.peers import require_dcmtk, send_raw, start_storescu, storescu
from tests.support.processes import children_of, wait_until

STATUS_SUCCESS = 0x0000
STATUS_DATASET_DOES_NOT_MATCH = 0xA900
TIME = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")


def setup_module() -> None:
    require_dcmtk()


# ---- helpers ---------------------------------------------------------------------------------------
def series_of(directory: Path, source: str, count: int, study: str | None = None) -> list[Path]:
    """`count` objects of one new study and series (copies of a pydicom test file with new UIDs)."""
    directory.mkdir(parents=True, exist_ok=True)
    study, series = study or generate_uid(), generate_uid()
    paths = []
    for n in range(count):
        ds = pydicom.dcmread(TEST_FILES / source)
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID = study, series, generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.PatientID = "PAT-" + source.split("_")[0]
        path = directory / f"{source}-{n}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def journal_daemon(daemon_factory: Any, journal: Path, *args: str) -> tuple[Daemon, Api]:
    return api_daemon(daemon_factory, "--journal", str(journal), *args)


def receipts(api: Api, **query: Any) -> list[dict[str, Any]]:
    """Every receipt matching `query`, following the cursors."""
    found: list[dict[str, Any]] = []
    cursor = None
    for _ in range(100):
        response = api.get("/receipts", params={**query, **({"cursor": cursor} if cursor else {})})
        assert response.status_code == 200, response.text
        page = response.json()
        found += page["receipts"]
        cursor = page["next_cursor"]
        if cursor is None:
            return found
    raise AssertionError("more than 100 pages")


def wait_for_receipts(api: Api, count: int, timeout: float = 20.0, **query: Any) -> list[dict[str, Any]]:
    """The receipts once there are `count` of them (the writer writes them a moment after the response)."""
    def enough() -> list[dict[str, Any]]:
        found = receipts(api, **query)
        assert len(found) <= count, f"more receipts than objects acknowledged: {found}"
        return found if len(found) == count else []

    return wait_until(enough, timeout, f"{count} receipts")


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def ctl(api: Api, *args: str) -> subprocess.CompletedProcess[str]:
    address = f"{api.client.base_url.host}:{api.client.base_url.port}"
    return subprocess.run([STORESCPD, "ctl", "--api", address, *args], capture_output=True, text=True, timeout=30)


def writer_pid(d: Daemon, journal: Path) -> int:
    """The journal writer: the daemon's child that holds the journal open."""
    def find() -> int:
        for pid in children_of(d.pid):
            try:
                if any(os.readlink(f"/proc/{pid}/fd/{fd}") == str(journal.resolve())
                       for fd in os.listdir(f"/proc/{pid}/fd")):
                    return pid
            except OSError:
                continue
        return 0

    return wait_until(find, 10, "a child of the daemon with the journal open")


def read_journal(journal: Path) -> list[dict[str, Any]]:
    with sqlite3.connect(f"file:{journal}?mode=ro", uri=True) as db:
        db.row_factory = sqlite3.Row
        return [dict(row) for row in db.execute("SELECT * FROM receipts ORDER BY id")]


# ---- what arrived, from whom, where it is --------------------------------------------------------------
def test_receipts_are_exactly_the_acknowledged_objects_with_the_files_facts(daemon_factory, tmp_path: Path) -> None:
    journal = tmp_path / "journal.sqlite"
    d, api = journal_daemon(daemon_factory, journal, "--journal-digest", "sha256")
    room3 = [TEST_FILES / "CT_small.dcm", TEST_FILES / "MR_small.dcm"]
    mr1 = series_of(tmp_path / "mr1", "MR_small.dcm", 3)
    first = storescu(d.port, room3, "-aet", "ROOM3")
    second = storescu(d.port, mr1, "-aet", "MR1", "-aec", "ARCHIVE")
    assert first.returncode == 0 and second.returncode == 0, first.stderr + second.stderr
    # DCMTK's storescu takes the UIDs from the data set: pynetdicom sends this one as its meta says.
    mismatched = crafted_file(tmp_path / "bad.dcm", command_uid="1.2.3.4", dataset_uid="1.2.3.5")
    assert send_raw(d.port, mismatched) == STATUS_DATASET_DOES_NOT_MATCH

    found = wait_for_receipts(api, 5)
    sent = {pydicom.dcmread(p).SOPInstanceUID: (p, ae) for ae, paths in (("ROOM3", room3), ("MR1", mr1))
            for p in paths}
    assert {r["sop_instance_uid"] for r in found} == set(sent)  # the refused one is no receipt
    assert [r["received_at"] for r in found] == sorted((r["received_at"] for r in found), reverse=True)
    by_sender: dict[str, set[str]] = {}
    for r in found:
        source, calling = sent[r["sop_instance_uid"]]
        original, stored = pydicom.dcmread(source), Path(r["path"])
        on_disk = pydicom.dcmread(stored)
        assert stored.is_absolute() and stored.parent == d.output.resolve()
        assert r["size"] == stored.stat().st_size and r["sha256"] == sha256(stored)
        assert (r["calling_ae"], r["called_ae"]) == (calling, "ARCHIVE" if calling == "MR1" else "ANY-SCP")
        assert r["peer"].startswith("127.0.0.1:") and TIME.fullmatch(r["received_at"]) and r["status"] == 0
        assert (r["sop_class_uid"], r["study_instance_uid"], r["series_instance_uid"], r["patient_id"],
                r["modality"]) == (original.SOPClassUID, original.StudyInstanceUID, original.SeriesInstanceUID,
                                   original.PatientID, original.Modality)
        assert r["transfer_syntax_uid"] == on_disk.file_meta.TransferSyntaxUID
        assert re.fullmatch(r"\d+-\d+", r["association_id"])
        by_sender.setdefault(calling, set()).add(r["association_id"])
    assert len(by_sender["ROOM3"]) == len(by_sender["MR1"]) == 1 and by_sender["ROOM3"] != by_sender["MR1"]

    uid = pydicom.dcmread(mr1[1]).SOPInstanceUID
    assert api.get(f"/receipts/{uid}").json()["path"] == next(r["path"] for r in found if r["sop_instance_uid"] == uid)
    for missing in ("1.2.3.4", "1.2.3.5"):
        assert api.get(f"/receipts/{missing}").status_code == 404
    study = pydicom.dcmread(mr1[0]).StudyInstanceUID
    assert {r["sop_instance_uid"] for r in receipts(api, study_uid=study)} == {
        pydicom.dcmread(p).SOPInstanceUID for p in mr1}
    assert len(receipts(api, calling_ae="ROOM3")) == 2 and receipts(api, patient_id="PAT-MR") != []
    assert receipts(api, since="2999-01-01") == [] and receipts(api, until="2000-01-01T00:00:00+01:00") == []
    assert len(receipts(api, limit=2)) == 5  # three pages

    assert api.get("/status").json()["journal"] is True  # the console shows receipts and studies
    studies = {s["study_instance_uid"]: s for s in api.get("/studies").json()["studies"]}
    assert len(studies) == 3
    assert studies[study]["objects"] == 3 and studies[study]["calling_aes"] == ["MR1"]
    assert studies[study]["bytes"] == sum(r["size"] for r in found if r["study_instance_uid"] == study)
    assert studies[study]["directory"] == str(d.output.resolve()) and studies[study]["ended"] is False


def test_malformed_parameters_are_a_422_that_names_them(daemon_factory, tmp_path: Path) -> None:
    _d, api = journal_daemon(daemon_factory, tmp_path / "journal.sqlite")
    for path, parameter, value in (("/receipts", "since", "yesterday"), ("/receipts", "until", "2024-13-01"),
                                   ("/receipts", "limit", "5000"), ("/receipts", "limit", "ten"),
                                   ("/receipts", "cursor", "xyz"), ("/studies", "since", "now"),
                                   ("/studies", "cursor", "xyz"), ("/studies", "limit", "0")):
        response = api.get(path, params={parameter: value})
        assert response.status_code == 422, (path, parameter, response.text)
        assert [e["loc"] for e in response.json()["detail"]] == [["query", parameter]]


def test_ctl_receipts_and_studies(daemon_factory, tmp_path: Path) -> None:
    d, api = journal_daemon(daemon_factory, tmp_path / "journal.sqlite")
    files = series_of(tmp_path / "ct", "CT_small.dcm", 3)
    assert storescu(d.port, files, "-aet", "ROOM3").returncode == 0
    found = wait_for_receipts(api, 3)
    study = found[0]["study_instance_uid"]
    table = ctl(api, "receipts", "--study", study)
    assert table.returncode == 0, table.stderr
    assert table.stdout.splitlines()[0].split()[:3] == ["RECEIVED", "CALLING", "MOD"]
    assert all(r["sop_instance_uid"] in table.stdout and r["path"] in table.stdout for r in found)
    assert json.loads(ctl(api, "receipts", "--json").stdout) == api.get("/receipts").json()
    paged = ctl(api, "receipts", "--limit", "2")
    assert len(paged.stdout.splitlines()) == 4 and "--cursor" in paged.stdout.splitlines()[-1]
    cursor = paged.stdout.split("--cursor ")[1].split(")")[0]
    assert len(ctl(api, "receipts", "--limit", "2", "--cursor", cursor).stdout.splitlines()) == 2
    assert ctl(api, "receipts", "--since", "2999-01-01T00:00").stdout == "no receipts\n"
    studies = ctl(api, "studies")
    assert study in studies.stdout and "ROOM3" in studies.stdout and studies.stdout.startswith("LAST RECEIVED")
    assert json.loads(ctl(api, "studies", "--json").stdout)["studies"][0]["objects"] == 3
    bad = ctl(api, "receipts", "--since", "yesterday")
    assert bad.returncode == 1 and "since:" in bad.stderr and "ISO 8601" in bad.stderr


def test_association_id_is_the_one_associations_showed(daemon_factory, tmp_path: Path) -> None:
    d, api = journal_daemon(daemon_factory, tmp_path / "journal.sqlite")
    ae = AE(ae_title="LIVE")
    ae.add_requested_context(pydicom.dcmread(TEST_FILES / "CT_small.dcm").SOPClassUID)
    ae.add_requested_context(pydicom.dcmread(TEST_FILES / "MR_small.dcm").SOPClassUID)
    assoc = ae.associate("127.0.0.1", d.port)
    assert assoc.is_established
    assert assoc.send_c_store(TEST_FILES / "CT_small.dcm").Status == STATUS_SUCCESS
    live = api.get("/associations").json()
    assert assoc.send_c_store(TEST_FILES / "MR_small.dcm").Status == STATUS_SUCCESS
    assoc.release()
    assert [a["calling_ae"] for a in live] == ["LIVE"]
    assert {r["association_id"] for r in wait_for_receipts(api, 2)} == {live[0]["id"]}


def test_without_a_journal_the_endpoints_say_how_to_get_one(daemon_factory, tmp_path: Path) -> None:
    _d, api = api_daemon(daemon_factory)
    assert api.get("/status").json()["journal"] is False
    for path in ("/receipts", "/receipts/1.2.3", "/studies"):
        response = api.get(path)
        assert response.status_code == 503 and "journal" in response.json()["detail"], path
    answer = ctl(api, "studies")
    assert answer.returncode == 1 and "503" in answer.stderr and "--journal" in answer.stderr


# ---- paths that follow the files ----------------------------------------------------------------------
def test_receipts_follow_the_files_end_of_study_renames(daemon_factory, tmp_path: Path) -> None:
    journal = tmp_path / "journal.sqlite"
    d, api = journal_daemon(daemon_factory, journal, "-ss", "S", "-rns", "-tos", "1")
    study_a = series_of(tmp_path / "a", "CT_small.dcm", 2)
    study_b = series_of(tmp_path / "b", "MR_small.dcm", 1)
    assert storescu(d.port, study_a).returncode == 0
    assert storescu(d.port, study_b).returncode == 0  # ends study A; B ends after -tos 1

    def renamed() -> list[dict[str, Any]]:
        found = receipts(api)
        names = sorted(Path(r["path"]).name for r in found)
        return found if names == ["CT000001", "CT000002", "MR000001"] else []

    found = wait_until(renamed, 20, "receipts with the renamed paths")
    for r in found:
        path = Path(r["path"])
        assert path.is_file() and pydicom.dcmread(path).SOPInstanceUID == r["sop_instance_uid"]
        assert path.parent.parent == d.output.resolve() and path.parent.name.startswith("S_")
    studies = wait_until(lambda: [s for s in api.get("/studies").json()["studies"] if s["ended"]], 10, "ended")
    assert len(studies) == 2 and {s["directory"] for s in studies} == {str(Path(r["path"]).parent) for r in found}


# ---- nothing lost ---------------------------------------------------------------------------------------
def test_receipts_survive_a_restart_and_a_sigkill_of_every_process(daemon_factory, tmp_path: Path) -> None:
    journal = tmp_path / "journal.sqlite"
    d, api = journal_daemon(daemon_factory, journal)
    assert storescu(d.port, [TEST_FILES / "CT_small.dcm"]).returncode == 0
    wait_for_receipts(api, 1)
    assert d.stop() == 0
    # The next one: its writer is stopped, so acknowledged receipts are only in the spool when
    # every process of the daemon is killed.
    d, api = journal_daemon(daemon_factory, journal)
    assert [r["path"] for r in receipts(api)] == [str(d.output.resolve() / "CT.1.3.6.1.4.1.5962.1.1.1.1.1.20040119072730.12322")]
    writer = writer_pid(d, journal)
    os.kill(writer, signal.SIGSTOP)
    files = series_of(tmp_path / "more", "MR_small.dcm", 4)
    assert storescu(d.port, files).returncode == 0
    for pid in [*children_of(d.pid), d.pid]:
        os.kill(pid, signal.SIGKILL)
    d.stop()
    assert len(read_journal(journal)) == 1
    d, api = journal_daemon(daemon_factory, journal)
    assert len(wait_for_receipts(api, 5)) == 5


def test_a_worker_killed_mid_transfer_leaves_no_receipt(daemon_factory, tmp_path: Path) -> None:
    big = make_object(tmp_path / "big.dcm", 256)
    d, api = journal_daemon(daemon_factory, tmp_path / "journal.sqlite", "--journal-digest", "sha256")
    sender = start_storescu(d.port, big)
    staging = d.output / ".storescpd-staging"

    def transferring() -> int:
        return next((int(p.name.split("-")[0]) for p in staging.glob("*.part") if p.stat().st_size > 32 << 20), 0)

    try:
        victim = wait_until(transferring, 60, "the 256 MiB transfer under way")
        os.kill(victim, signal.SIGKILL)
        assert sender.wait(60) != 0
    finally:
        if sender.poll() is None:
            sender.kill()
            sender.wait(10)
    assert storescu(d.port, [TEST_FILES / "CT_small.dcm"]).returncode == 0
    (only,) = wait_for_receipts(api, 1)
    assert only["sop_instance_uid"] == "1.3.6.1.4.1.5962.1.1.1.1.1.20040119072730.12322"
    time.sleep(1)  # a receipt of the killed transfer would have been written by now
    assert len(receipts(api)) == 1 and api.get(f"/receipts/{pydicom.dcmread(big, stop_before_pixels=True).SOPInstanceUID}").status_code == 404


def test_an_unwritable_journal_fails_no_object_and_catches_up(daemon_factory, tmp_path: Path) -> None:
    journal = tmp_path / "journal.sqlite"
    journal.write_bytes(b"this is no SQLite database; an operator's mistake " * 100)
    d, api = journal_daemon(daemon_factory, journal)
    files = series_of(tmp_path / "ct", "CT_small.dcm", 3)
    assert storescu(d.port, files).returncode == 0
    assert len(d.stored_files()) == 3
    d.wait_for_log("cannot write")
    assert api.get("/receipts").status_code == 503
    assert sample(api.metrics(), "storescpd_journal_errors_total", kind="database") >= 1
    journal.rename(tmp_path / "broken.sqlite")  # the writer makes a new one at its next attempt
    wait_until(lambda: api.get("/receipts").status_code == 200, 40, "a new journal")
    assert len(wait_for_receipts(api, 3)) == 3
    d.wait_for_log("writable again")


def test_a_locked_journal_delays_no_object(daemon_factory, tmp_path: Path) -> None:
    journal = tmp_path / "journal.sqlite"
    d, api = journal_daemon(daemon_factory, journal)
    wait_until(lambda: journal.exists() and api.get("/receipts").status_code == 200, 10, "the journal made")
    holder = sqlite3.connect(journal, isolation_level=None, timeout=10)
    holder.execute("BEGIN EXCLUSIVE")
    try:
        # Every object is acknowledged while nothing can write the journal: the response never waits for it.
        sent = storescu(d.port, series_of(tmp_path / "ct", "CT_small.dcm", 5), timeout=60)
        assert sent.returncode == 0, sent.stderr
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert len(wait_for_receipts(api, 5, timeout=40)) == 5


# ---- the modes without a supervisor, retention, rebuild ---------------------------------------------------
def test_single_process_writes_its_journal_itself(daemon_factory, tmp_path: Path) -> None:
    journal = tmp_path / "journal.sqlite"
    d = daemon_factory("--single-process", "--journal", str(journal))
    assert storescu(d.port, series_of(tmp_path / "ct", "CT_small.dcm", 3)).returncode == 0
    assert storescu(d.port, [TEST_FILES / "MR_small.dcm"]).returncode == 0
    assert d.stop() == 0
    rows = read_journal(journal)
    assert len(rows) == 4 and all(Path(r["path"]).is_file() for r in rows)
    assert [r["association_id"].split("-")[0] for r in rows] == [str(d.pid)] * 4
    assert len({r["association_id"] for r in rows}) == 2


def test_retention_removes_old_receipts_from_a_reload_on(daemon_factory, tmp_path: Path) -> None:
    from storescpd.store.journal_db import utc_text
    from storescpd.store.journal_sqlite import open_for_writing

    journal = tmp_path / "journal.sqlite"
    db = open_for_writing(journal)
    old = {"op": "receipt", "received_at": utc_text(time.time() - 3 * 86400), "sop_class_uid": "1.2.840.10008.5.1.4.1.1.2",
           "sop_instance_uid": "1.2.3.old", "study_instance_uid": "1.2.3", "status": 0, "path": "/gone"}
    db.apply([old])
    db.close()
    config = tmp_path / "storescpd.toml"
    config.write_text(f'log_level = "info"\njournal = "{journal}"\njournal_retention_days = 0\n')
    d, api = api_daemon(daemon_factory, "--config", str(config))
    assert storescu(d.port, [TEST_FILES / "CT_small.dcm"]).returncode == 0
    assert len(wait_for_receipts(api, 2)) == 2  # kept forever
    config.write_text(f'log_level = "info"\njournal = "{journal}"\njournal_retention_days = 2\n')
    os.kill(d.pid, signal.SIGHUP)
    d.wait_for_log("configuration reloaded")
    (kept,) = wait_until(lambda: receipts(api) if len(receipts(api)) == 1 else [], 20, "the old receipt removed")
    assert kept["sop_instance_uid"] == "1.3.6.1.4.1.5962.1.1.1.1.1.20040119072730.12322"
    assert "1.2.3" not in {s["study_instance_uid"] for s in api.get("/studies").json()["studies"]}


def test_rebuild_lists_every_file_dcmtk_storescp_wrote(dcmtk_storescp, tmp_path: Path) -> None:
    scp = dcmtk_storescp("-su", "S")
    files = [TEST_FILES / name for name in ("CT_small.dcm", "MR_small.dcm", "rtplan.dcm")]
    files += series_of(tmp_path / "ct", "CT_small.dcm", 3)
    sent = storescu(scp.port, files, "-aet", "ROOM3")
    assert sent.returncode == 0, sent.stderr
    scp.stop()
    written = scp.stored_files()
    assert len(written) == len(files)
    journal = tmp_path / "journal.sqlite"

    def rebuild() -> subprocess.CompletedProcess[str]:
        return subprocess.run([STORESCPD, "journal", "rebuild", "--journal", str(journal), "-od", str(scp.output),
                               "--journal-digest", "sha256"], capture_output=True, text=True, timeout=120)

    first = rebuild()
    assert first.returncode == 0, first.stderr
    assert first.stdout.startswith(f"{journal}: {len(files)} receipts added from {len(files)} files")
    rows = {Path(r["path"]): r for r in read_journal(journal)}
    assert set(rows) == {p.resolve() for p in written}
    for path, row in rows.items():
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        assert row["sop_instance_uid"] == ds.SOPInstanceUID and row["study_instance_uid"] == ds.StudyInstanceUID
        assert row["size"] == path.stat().st_size and row["sha256"] == sha256(path)
        assert row["calling_ae"] == "ROOM3" and row["transfer_syntax_uid"] == ds.file_meta.TransferSyntaxUID
    again = rebuild()
    assert again.returncode == 0 and f"0 receipts added from {len(files)} files" in again.stdout
    assert len(read_journal(journal)) == len(files)
