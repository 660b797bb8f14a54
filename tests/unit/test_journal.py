"""The receipt journal without a network: spool, writer, SQLite schema and queries, retention, rebuild."""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import sqlite3
import time
from pathlib import Path
from typing import Any

import pytest

from storescpd.store import journal
from storescpd.store import journal_sql as sql
from storescpd.store.journal import JournalWriter, Recorder, Spool, read_records, spool_directory
from storescpd.store.journal_db import (
    SCHEMA_VERSION,
    JournalUnavailable,
    ReceiptQuery,
    decode_cursor,
    encode_cursor,
    parse_time,
    utc_text,
)
from storescpd.store.journal_sqlite import SqliteJournal, open_for_writing
from storescpd.store.journal_rebuild import rebuild
from storescpd.store.storage import Identifiers, StagingFile

T0 = 1_700_000_000.0  # 2023-11-14T22:13:20Z


def receipt(n: int, study: str = "1.2.3", at: float | None = None, **fields: Any) -> dict[str, Any]:
    record = {
        "op": "receipt", "received_at": utc_text(T0 + n if at is None else at), "association_id": "10-1",
        "calling_ae": "ROOM3", "called_ae": "STORESCP", "peer": "192.0.2.7:51234",
        "sop_class_uid": "1.2.840.10008.5.1.4.1.1.2", "sop_instance_uid": f"1.2.3.4.{n}",
        "study_instance_uid": study, "series_instance_uid": study + ".1", "patient_id": "P1", "modality": "CT",
        "transfer_syntax_uid": "1.2.840.10008.1.2.1", "status": 0, "path": f"/data/in/CT.1.2.3.4.{n}",
        "size": 100 + n, "sha256": None,
    }
    record.update(fields)
    return record


@pytest.fixture
def db(tmp_path: Path) -> SqliteJournal:
    journal_db = open_for_writing(tmp_path / "j.sqlite")
    yield journal_db
    journal_db.close()


def all_receipts(db: SqliteJournal, **filters: str) -> list[dict[str, Any]]:
    page, cursor = db.receipts(ReceiptQuery(filters, limit=1000))
    assert cursor is None
    return page


# ---- times and cursors ---------------------------------------------------------------------------
@pytest.mark.parametrize("text, expected", [
    ("2024-05-01", "2024-05-01T00:00:00.000Z"),
    ("2024-05-01T14:02", "2024-05-01T14:02:00.000Z"),
    ("2024-05-01T14:02:03.5Z", "2024-05-01T14:02:03.500Z"),
    ("2024-05-01T16:02:03+02:00", "2024-05-01T14:02:03.000Z"),
    ("2024-05-01t14:02:03z", "2024-05-01T14:02:03.000Z"),
])
def test_times_are_read_as_iso_8601_and_written_in_utc(text: str, expected: str) -> None:
    assert parse_time(text) == expected


@pytest.mark.parametrize("text", ["yesterday", "2024-13-01", "", "1714572120", "2024-05-01 14:02 CET"])
def test_a_time_that_is_not_iso_8601_is_refused(text: str) -> None:
    with pytest.raises(ValueError, match="ISO 8601"):
        parse_time(text)


def test_utc_text_has_milliseconds_and_a_z() -> None:
    assert utc_text(T0 + 0.0429) == "2023-11-14T22:13:20.042Z"


def test_cursors_round_trip_and_foreign_ones_are_refused() -> None:
    assert decode_cursor(encode_cursor("2024-05-01T14:02:00.123Z", 42), True) == ("2024-05-01T14:02:00.123Z", 42)
    assert decode_cursor(encode_cursor("2024-05-01T14:02:00.123Z", "1.2|3"), False)[1] == "1.2|3"
    for foreign in ("abc", "", encode_cursor("yesterday", 1), encode_cursor("2024-05-01T14:02:00.123Z", "x")):
        with pytest.raises(ValueError, match="not a cursor"):
            decode_cursor(foreign, True)


# ---- schema ------------------------------------------------------------------------------------------
def test_a_new_journal_gets_every_migration_and_a_second_open_changes_nothing(tmp_path: Path) -> None:
    first = open_for_writing(tmp_path / "j.sqlite")
    assert first.version() == SCHEMA_VERSION == len(sql.MIGRATIONS)
    first.apply([receipt(1)])
    first.close()
    again = open_for_writing(tmp_path / "j.sqlite")
    assert again.version() == SCHEMA_VERSION and len(all_receipts(again)) == 1
    assert again.db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    again.close()


def test_a_journal_of_a_newer_version_is_refused_not_changed(tmp_path: Path) -> None:
    path = tmp_path / "j.sqlite"
    open_for_writing(path).close()
    with sqlite3.connect(path) as raw:
        raw.execute("UPDATE journal_schema SET version = ?", (SCHEMA_VERSION + 1,))
    with pytest.raises(JournalUnavailable, match="newer than this storescpd"):
        open_for_writing(path)
    with pytest.raises(JournalUnavailable, match="newer than this storescpd"):
        SqliteJournal(path, readonly=True)


def test_readers_are_told_why_they_cannot_read(tmp_path: Path) -> None:
    with pytest.raises(JournalUnavailable, match="does not exist yet"):
        SqliteJournal(tmp_path / "none.sqlite", readonly=True)
    (tmp_path / "garbage.sqlite").write_bytes(b"this is not a database, it is a text file" * 100)
    with pytest.raises(JournalUnavailable, match="cannot read the journal"):
        SqliteJournal(tmp_path / "garbage.sqlite", readonly=True)


def test_a_reader_cannot_write(db: SqliteJournal) -> None:
    reader = SqliteJournal(db.path, readonly=True)
    with pytest.raises(sqlite3.OperationalError):
        reader.db.execute("DELETE FROM receipts")
    reader.close()


# ---- receipts and studies ------------------------------------------------------------------------------
def test_receipts_newest_first_with_filters_and_a_time_window(db: SqliteJournal) -> None:
    db.apply([receipt(n, study="1.2.3" if n % 2 else "1.2.4", calling_ae="CT3" if n < 5 else "MR1")
              for n in range(10)])
    assert [r["sop_instance_uid"] for r in all_receipts(db)] == [f"1.2.3.4.{n}" for n in reversed(range(10))]
    assert [r["sop_instance_uid"] for r in all_receipts(db, study_instance_uid="1.2.4", calling_ae="MR1")] == \
        ["1.2.3.4.8", "1.2.3.4.6"]
    window, _ = db.receipts(ReceiptQuery(since=utc_text(T0 + 3), until=utc_text(T0 + 6)))
    assert [r["sop_instance_uid"] for r in window] == ["1.2.3.4.5", "1.2.3.4.4", "1.2.3.4.3"]
    assert all_receipts(db, patient_id="nobody") == []
    assert set(all_receipts(db)[0]) == set(sql.RECEIPT_COLUMNS)


def test_pages_follow_each_other_without_gaps_or_repeats(db: SqliteJournal) -> None:
    # Same millisecond for several receipts: the id breaks the tie.
    db.apply([receipt(n, at=T0 + n // 3) for n in range(11)])
    seen: list[str] = []
    cursor = None
    for _ in range(10):
        page, cursor = db.receipts(ReceiptQuery(cursor=cursor, limit=4))
        seen += [r["sop_instance_uid"] for r in page]
        if cursor is None:
            break
    assert len(seen) == 11 == len(set(seen))
    assert [r["sop_instance_uid"] for r in all_receipts(db)] == seen


def test_latest_receipt_of_an_instance(db: SqliteJournal) -> None:
    db.apply([receipt(1, at=T0), receipt(1, at=T0 + 5, path="/data/in/again"), receipt(2)])
    assert db.latest("1.2.3.4.1")["path"] == "/data/in/again"
    assert db.latest("9.9.9") is None


def test_a_study_counts_distinct_instances_their_newest_size_and_every_sender(db: SqliteJournal) -> None:
    db.apply([receipt(1), receipt(2, calling_ae="MR1")])
    db.apply([receipt(1, at=T0 + 10, size=500), receipt(3, study="9.9")])
    studies, cursor = db.studies(None, None, 10)
    assert cursor is None
    assert [s["study_instance_uid"] for s in studies] == ["1.2.3", "9.9"]  # most recently active first
    study = studies[0]
    assert study["objects"] == 2 and study["bytes"] == 500 + 102
    assert study["first_received"] == utc_text(T0 + 1) and study["last_received"] == utc_text(T0 + 10)
    assert study["calling_aes"] == ["MR1", "ROOM3"] and study["directory"] == "/data/in"
    assert study["patient_id"] == "P1" and study["ended"] is False
    db.apply([{"op": "study_ended", "study_instance_uid": "1.2.3"}])
    assert db.studies(None, None, 10)[0][0]["ended"] is True
    db.apply([receipt(4, at=T0 + 20)])  # an object after the end: the study is open again
    assert db.studies(None, None, 10)[0][0]["ended"] is False
    since, _ = db.studies(utc_text(T0 + 15), None, 10)
    assert [s["study_instance_uid"] for s in since] == ["1.2.3"]


def test_study_pages(db: SqliteJournal) -> None:
    db.apply([receipt(n, study=f"1.2.{n}") for n in range(5)])
    first, cursor = db.studies(None, None, 3)
    second, end = db.studies(None, cursor, 3)
    assert [s["study_instance_uid"] for s in first + second] == [f"1.2.{n}" for n in reversed(range(5))]
    assert end is None


def test_moved_files_take_their_receipts_along(db: SqliteJournal) -> None:
    db.apply([receipt(1), receipt(2)])
    db.apply([{"op": "moved", "moves": [["/data/in/CT.1.2.3.4.1", "/data/in/CT000001"]]}])
    assert {r["sop_instance_uid"]: r["path"] for r in all_receipts(db)} == {
        "1.2.3.4.1": "/data/in/CT000001", "1.2.3.4.2": "/data/in/CT.1.2.3.4.2"}


def test_peer_values_are_data_not_sql(db: SqliteJournal) -> None:
    hostile = "x'); DROP TABLE receipts; --"
    db.apply([receipt(1, calling_ae=hostile, patient_id=hostile, study_instance_uid=hostile)])
    assert all_receipts(db, calling_ae=hostile)[0]["patient_id"] == hostile
    assert db.studies(None, None, 10)[0][0]["study_instance_uid"] == hostile


def test_a_bad_record_is_left_out_and_the_rest_are_written(db: SqliteJournal, caplog: pytest.LogCaptureFixture) -> None:
    undecodable = "/data/in/caf\udce9"  # a file name that is no UTF-8, as os.fsdecode gives it
    db.apply([receipt(1), {"op": "receipt", "received_at": "x"}, {"op": "from-the-future"},
              receipt(2, path=undecodable), receipt(3)], spool="claimed-1", done=77)
    assert [r["sop_instance_uid"] for r in all_receipts(db)] == ["1.2.3.4.3", "1.2.3.4.2", "1.2.3.4.1"]
    assert all_receipts(db, sop_instance_uid="1.2.3.4.2")[0]["path"] == "/data/in/caf\ufffd"
    assert db.spool_done("claimed-1") == 77
    assert "record left out" in caplog.text


def test_retention_removes_old_receipts_in_batches_and_recounts_their_studies(db: SqliteJournal) -> None:
    db.apply([receipt(n, study="1.2.3" if n < 6 else "1.2.4", calling_ae=f"AE{n}") for n in range(10)])
    assert db.prune(utc_text(T0 + 4), 3) == 3
    assert db.prune(utc_text(T0 + 4), 3) == 1
    assert db.prune(utc_text(T0 + 4), 3) == 0
    assert [r["sop_instance_uid"] for r in all_receipts(db)][-1] == "1.2.3.4.4"
    study = {s["study_instance_uid"]: s for s in db.studies(None, None, 10)[0]}["1.2.3"]
    assert study["objects"] == 2 and study["bytes"] == 104 + 105
    assert study["first_received"] == utc_text(T0 + 4) and study["calling_aes"] == ["AE4", "AE5"]
    db.prune(utc_text(T0 + 7), 100)
    assert [s["study_instance_uid"] for s in db.studies(None, None, 10)[0]] == ["1.2.4"]


# ---- spool and writer ------------------------------------------------------------------------------
def spool_lines(spool: Spool, records: list[dict[str, Any]]) -> None:
    for record in records:
        spool.append(json.dumps(record).encode() + b"\n")


def test_the_writer_moves_spooled_records_into_the_journal(tmp_path: Path) -> None:
    path = tmp_path / "j.sqlite"
    spool = Spool(spool_directory(path))
    spool_lines(spool, [receipt(n) for n in range(5)])
    writer = JournalWriter(path)
    writer.step()
    assert writer.written == 5 and not spool.pending()
    spool_lines(spool, [receipt(5)])  # the appender moves on to a new file after the claim
    writer.step()
    writer.close()
    reader = SqliteJournal(path, readonly=True)
    assert len(all_receipts(reader)) == 6
    reader.close()


def _append_many(directory: str, worker: int, count: int) -> None:
    spool = Spool(Path(directory))
    for n in range(count):
        spool.append(json.dumps(receipt(worker * 100000 + n)).encode() + b"\n")


def test_appends_from_many_processes_while_the_writer_claims_are_each_written_once(tmp_path: Path) -> None:
    path = tmp_path / "j.sqlite"
    writer = JournalWriter(path)
    context = multiprocessing.get_context("fork")
    appenders = [context.Process(target=_append_many, args=(str(spool_directory(path)), w, 1500)) for w in range(4)]
    for process in appenders:
        process.start()
    deadline = time.monotonic() + 60
    while any(p.is_alive() for p in appenders) and time.monotonic() < deadline:
        writer.step()
        time.sleep(0.01)
    for process in appenders:
        process.join(10)
        assert process.exitcode == 0
    writer.step()
    rows = writer.db.db.execute("SELECT sop_instance_uid FROM receipts").fetchall()  # type: ignore[union-attr]
    writer.close()
    assert len(rows) == 6000 == len(set(rows))


def test_a_replay_cut_short_resumes_where_it_was_and_adds_nothing_twice(tmp_path: Path) -> None:
    path = tmp_path / "j.sqlite"
    spool = Spool(spool_directory(path))
    spool_lines(spool, [receipt(n) for n in range(journal.BATCH_RECORDS + 10)])
    spool.claim()
    claimed = spool.claimed()[0]
    db = open_for_writing(path)
    first_batch, offset = next(read_records(claimed, 0))
    db.apply(first_batch, claimed.name, offset)  # ... and the writer is killed here
    db.close()
    writer = JournalWriter(path)
    writer.step()
    assert writer.written == 10 and not claimed.exists()
    # Killed after the commit but before the file was gone: its progress says it is all in.
    spool_lines(spool, [receipt(99999)])
    spool.claim()
    again = spool.claimed()[0]
    writer.db.apply([receipt(99999)], again.name, again.stat().st_size)  # type: ignore[union-attr]
    writer.step()
    assert not again.exists()
    count = writer.db.db.execute("SELECT COUNT(*) FROM receipts").fetchone()[0]  # type: ignore[union-attr]
    writer.close()
    assert count == journal.BATCH_RECORDS + 11


def test_half_a_line_and_garbage_in_a_spool_file_are_left_out(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    claimed = tmp_path / "claimed-1"
    claimed.write_bytes(json.dumps(receipt(1)).encode() + b"\n{not json}\n\n" + json.dumps(receipt(2)).encode()
                        + b'\n{"op": "rec')
    batches = list(read_records(claimed, 0))
    assert [r["sop_instance_uid"] for batch, _ in batches for r in batch] == ["1.2.3.4.1", "1.2.3.4.2"]
    assert batches[-1][1] == claimed.stat().st_size
    assert "unreadable record" in caplog.text and "incomplete record" in caplog.text


def test_an_unwritable_journal_keeps_the_records_in_the_spool_until_it_can_be_written(tmp_path: Path) -> None:
    path = tmp_path / "j.sqlite"
    path.write_bytes(b"not a database " * 1000)  # corrupt
    events: list[tuple[str, dict]] = []
    spool = Spool(spool_directory(path))
    spool_lines(spool, [receipt(1), receipt(2)])
    writer = JournalWriter(path, emit=lambda kind, data: events.append((kind, data)))
    writer.step()
    assert events == [("journal_error", {"kind": "database"})] and spool.pending()
    writer.step()  # backing off: no second attempt at once
    assert len(events) == 1
    path.rename(tmp_path / "corrupt.sqlite")  # the operator moves it away
    writer.retry_at = 0
    writer.step()
    writer.close()
    assert not spool.pending()
    reader = SqliteJournal(path, readonly=True)
    assert len(all_receipts(reader)) == 2
    reader.close()


def test_a_locked_journal_is_written_once_the_lock_is_gone(tmp_path: Path) -> None:
    path = tmp_path / "j.sqlite"
    open_for_writing(path).close()
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    spool_lines(Spool(spool_directory(path)), [receipt(1)])
    writer = JournalWriter(path, opener=lambda p: SqliteJournal(p, busy_timeout=0.05))
    writer.step()
    assert writer.failing_since is not None
    holder.execute("ROLLBACK")
    holder.close()
    writer.retry_at = 0
    writer.step()
    assert writer.failing_since is None and writer.written == 1
    writer.close()


# ---- the recorder in the storing process --------------------------------------------------------------
class Ctx:
    def __init__(self, config: Any) -> None:
        self.config = config
        self.calling_ae, self.called_ae, self.peer = "ROOM3", "STORESCP", "192.0.2.7:51234"


class Conf:
    def __init__(self, journal_path: Path, digest: str = "sha256") -> None:
        self.journal = str(journal_path)
        self.journal_digest = digest


def test_a_receipt_carries_the_streamed_digest_and_the_files_size(tmp_path: Path) -> None:
    path = tmp_path / "j.sqlite"
    staged = StagingFile(tmp_path, digest=journal.digest_for(Conf(path)))  # type: ignore[arg-type]
    staged.write(b"\x00" * 128 + b"DICM")
    staged.write(memoryview(b"data set bytes, as they stream in"))
    staged.finish(fsync=False)
    final = tmp_path / "CT.1"
    staged.path.rename(final)
    ids = Identifiers("1.2.840.10008.5.1.4.1.1.2", "1.2.3.4.1", "1.2.3", None, "ISO_IR 100", "1.2.3.1",
                      b"M\xfcller ", "CT")
    associations = iter(["40-7", "40-8"])
    recorder = Recorder(path, association=lambda: next(associations))
    ctx = Ctx(Conf(path))
    recorder.receipt(ctx, ids, final, staged, "1.2.840.10008.5.1.4.1.1.2.1")
    recorder.receipt(ctx, ids, final, None, "1.2.840.10008.5.1.4.1.1.2.1")  # kept-first: read back
    recorder.receipt(Ctx(Conf(path)), ids, final, staged, "1.2.840.10008.5.1.4.1.1.2.1")  # next association
    recorder.spool.claim()
    (records, _), = read_records(recorder.spool.claimed()[0], 0)
    expected = hashlib.sha256(final.read_bytes()).hexdigest()
    assert [r["sha256"] for r in records] == [expected] * 3
    assert [r["association_id"] for r in records] == ["40-7", "40-7", "40-8"]
    first = records[0]
    assert first["size"] == final.stat().st_size and first["path"] == str(final)
    assert first["patient_id"] == "Müller" and first["modality"] == "CT" and first["series_instance_uid"] == "1.2.3.1"
    assert first["received_at"].endswith("Z") and first["status"] == 0


def test_no_digest_unless_asked(tmp_path: Path) -> None:
    assert journal.digest_for(Conf(tmp_path / "j.sqlite", "none")) is None  # type: ignore[arg-type]
    assert StagingFile(tmp_path, digest=None).digest is None


def test_a_spool_that_cannot_be_written_keeps_records_in_memory_in_order(tmp_path: Path) -> None:
    path = tmp_path / "j.sqlite"
    spool_directory(path).write_text("a file where the spool directory belongs")
    events: list[str] = []
    recorder = Recorder(path, emit=lambda kind, data: events.append(data["kind"]))
    recorder.study_ended("1.2.3")
    recorder.moved([("/a", "/b")])
    assert len(recorder.waiting) == 2 and events == ["spool", "spool"]
    spool_directory(path).unlink()
    recorder.study_ended("1.2.4")
    assert not recorder.waiting
    recorder.spool.claim()
    (records, _), = read_records(recorder.spool.claimed()[0], 0)
    assert [r["op"] for r in records] == ["study_ended", "moved", "study_ended"]


def test_refusals_are_no_receipts() -> None:
    assert journal.is_receipt(0) and journal.is_receipt(0xB000)
    assert not any(journal.is_receipt(status) for status in (0xA700, 0xA900, 0xC000, 0x0110))


# ---- rebuild ------------------------------------------------------------------------------------------
def test_rebuild_lists_every_dicom_file_once(tmp_path: Path) -> None:
    from pydicom.data import get_testdata_file

    out = tmp_path / "out"
    (out / "study").mkdir(parents=True)
    (out / ".storescpd-staging").mkdir()
    for name, target in (("CT_small.dcm", out / "CT.1"), ("MR_small.dcm", out / "study" / "MR.2")):
        target.write_bytes(Path(get_testdata_file(name)).read_bytes())
    (out / "notes.txt").write_text("not DICOM")
    (out / ".storescpd-staging" / "1-1-0.part").write_bytes(b"partial")
    path = tmp_path / "j.sqlite"
    result = rebuild(path, out, digest=True)
    assert (result.files, result.added, result.known, result.skipped) == (3, 2, 0, 1)
    assert rebuild(path, out).added == 0
    assert rebuild(path, out, replace=True).added == 2
    reader = SqliteJournal(path, readonly=True)
    rows = {r["path"]: r for r in all_receipts(reader)}
    reader.close()
    ct = rows[str((out / "CT.1").resolve())]
    assert ct["modality"] == "CT" and ct["sop_instance_uid"] == "1.3.6.1.4.1.5962.1.1.1.1.1.20040119072730.12322"
    assert ct["association_id"] is None and ct["status"] == 0 and ct["size"] == (out / "CT.1").stat().st_size
    assert ct["received_at"] == utc_text((out / "CT.1").stat().st_mtime)
    assert rows[str((out / "study" / "MR.2").resolve())]["sha256"] is None  # --replace ran without digest
