"""The receipt journal in an SQLite file: ``journal_db.JournalDatabase`` on ``journal_sql``'s statements.

One process writes (the journal writer: see ``journal``), any number read. SQLite runs in WAL
mode, so readers never wait for the writer nor the writer for them.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Sequence
from urllib.parse import quote

from storescpd.store import journal_sql as sql
from storescpd.store.journal_db import (SCHEMA_VERSION, JournalUnavailable, ReceiptQuery, Record, decode_cursor,
                                        encode_cursor, utc_text)

LOG = logging.getLogger("storescpd.journal")

LOGGED_BAD_RECORDS = 10  # per batch: a bug that spoils every record must not flood the log


class SqliteJournal:
    """The journal in an SQLite file (WAL mode)."""

    def __init__(self, path: str | os.PathLike[str], readonly: bool = False, busy_timeout: float = 5.0) -> None:
        self.path = str(path)
        if readonly:
            if not os.path.exists(self.path):
                raise JournalUnavailable(f"the journal {self.path} does not exist yet (the daemon creates it "
                                         "when it starts, storescpd journal rebuild when it runs)")
            uri = f"file:{quote(os.path.abspath(self.path))}?mode=ro"
            self.db = sqlite3.connect(uri, uri=True, timeout=busy_timeout, isolation_level=None,
                                      check_same_thread=False)
            self.db.execute("PRAGMA query_only = ON")
            self._check_version()
        else:
            self.db = sqlite3.connect(self.path, timeout=busy_timeout, isolation_level=None)
            self.db.execute("PRAGMA journal_mode = WAL")
            # Committed batches survive any process's death without a sync of their own; a power
            # loss may take the last ones (and what the spool had): journal rebuild adds them again.
            self.db.execute("PRAGMA synchronous = NORMAL")

    def close(self) -> None:
        self.db.close()

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        self.db.execute("BEGIN IMMEDIATE")
        try:
            yield self.db
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        self.db.execute("COMMIT")

    # -- schema -----------------------------------------------------------------------------
    def version(self) -> int:
        try:
            row = self.db.execute(sql.SCHEMA_VERSION).fetchone()
        except sqlite3.OperationalError as exc:
            if "no such table" in str(exc):
                return 0
            raise
        return int(row[0]) if row else 0

    def _check_version(self) -> None:
        try:
            version = self.version()
        except sqlite3.DatabaseError as exc:
            raise JournalUnavailable(f"cannot read the journal {self.path}: {exc} (restore it from a backup or "
                                     "move it away and run storescpd journal rebuild)") from None
        if version == 0:
            raise JournalUnavailable(f"the journal {self.path} has no tables yet (the daemon creates them when "
                                     "it starts)")
        if version > SCHEMA_VERSION:
            raise self._too_new(version)

    def _too_new(self, version: int) -> JournalUnavailable:
        return JournalUnavailable(f"the journal {self.path} has schema version {version}, newer than this storescpd "
                                  f"knows ({SCHEMA_VERSION}): run the storescpd that wrote it")

    def migrate(self) -> int:
        self.db.execute(sql.SCHEMA_VERSION_TABLE)
        while True:
            # The version is read in the migration's own transaction: two processes starting
            # together (--inetd) migrate once.
            with self._transaction() as db:
                version = self.version()
                if version > SCHEMA_VERSION:
                    raise self._too_new(version)
                if version == SCHEMA_VERSION:
                    return version
                for statement in sql.MIGRATIONS[version]:
                    db.execute(statement)
                db.execute(sql.SCHEMA_VERSION_SET if version else sql.SCHEMA_VERSION_FIRST, (version + 1,))
            LOG.info("journal %s: schema version %d", self.path, version + 1)

    # -- writing ------------------------------------------------------------------------------
    def apply(self, records: Sequence[Record], spool: str | None = None, done: int = 0) -> None:
        try:
            self._write(records, spool, done, one_by_one=False)
        except _BAD_RECORD:
            # One bad record (a bug, a spool line of a future version, a file name that is no
            # UTF-8) must not hold up the records behind it: again, each record on its own.
            self._write(records, spool, done, one_by_one=True)

    def _write(self, records: Sequence[Record], spool: str | None, done: int, one_by_one: bool) -> None:
        left_out = 0
        with self._transaction() as db:
            if not one_by_one:
                _write_records(db, records, clean=False)
            for record in records if one_by_one else ():
                db.execute("SAVEPOINT record")
                try:
                    _write_records(db, [record], clean=True)
                except _BAD_RECORD as exc:
                    db.execute("ROLLBACK TO record")
                    left_out += 1
                    if left_out <= LOGGED_BAD_RECORDS:
                        LOG.error("journal: record left out (%s: %s): %.300r", type(exc).__name__, exc, record)
                db.execute("RELEASE record")
            if left_out > LOGGED_BAD_RECORDS:
                LOG.error("journal: %d more records of this batch left out", left_out - LOGGED_BAD_RECORDS)
            if spool is not None:
                db.execute(sql.SPOOL_PROGRESS, (spool, done, utc_text(time.time())))

    def spool_done(self, name: str) -> int:
        row = self.db.execute(sql.SPOOL_DONE, (name,)).fetchone()
        return int(row[0]) if row else 0

    def forget_spools(self, gone: Callable[[str], bool], before: str) -> None:
        names = [row[0] for row in self.db.execute(sql.SPOOL_OLD, (before,))]
        forgotten = [(name,) for name in names if gone(name)]
        if forgotten:
            with self._transaction() as db:
                db.executemany(sql.SPOOL_FORGET, forgotten)

    def prune(self, before: str, limit: int) -> int:
        with self._transaction() as db:
            rows = db.execute(sql.OLDEST_BEFORE, (before, limit)).fetchall()
            db.executemany(sql.DELETE_RECEIPT, [(row[0],) for row in rows])
            for study in sorted({row[1] for row in rows if row[1]}):
                _recount_study(db, study)
        return len(rows)

    def path_known(self, path: str) -> bool:
        return self.db.execute(sql.PATH_KNOWN, (_text(path),)).fetchone() is not None

    def clear(self) -> None:
        with self._transaction() as db:
            for statement in sql.CLEAR:
                db.execute(statement)

    # -- reading ---------------------------------------------------------------------------------
    def receipts(self, query: ReceiptQuery) -> tuple[list[dict[str, Any]], str | None]:
        filters = tuple(query.filters)
        params: list[Any] = list(query.filters.values())
        params += [value for value in (query.since, query.until) if value is not None]
        if query.cursor is not None:
            when, key = decode_cursor(query.cursor, integer_key=True)
            params += [when, when, key]
        statement = sql.receipts_query(filters, query.since is not None, query.until is not None,
                                       query.cursor is not None)
        rows = self.db.execute(statement, (*params, query.limit + 1)).fetchall()
        page = [_receipt(row) for row in rows[:query.limit]]
        more = len(rows) > query.limit
        return page, (encode_cursor(rows[query.limit - 1][1], rows[query.limit - 1][0]) if more else None)

    def latest(self, sop_instance_uid: str) -> dict[str, Any] | None:
        row = self.db.execute(sql.LATEST_RECEIPT, (sop_instance_uid,)).fetchone()
        return _receipt(row) if row else None

    def studies(self, since: str | None, cursor: str | None, limit: int) -> tuple[list[dict[str, Any]], str | None]:
        params: list[Any] = [since] if since is not None else []
        if cursor is not None:
            when, key = decode_cursor(cursor, integer_key=False)
            params += [when, when, key]
        rows = self.db.execute(sql.studies_query(since is not None, cursor is not None),
                               (*params, limit + 1)).fetchall()
        page = [dict(zip(sql.STUDY_COLUMNS, row)) for row in rows[:limit]]
        senders: dict[str, list[str]] = {study["study_instance_uid"]: [] for study in page}
        if page:
            for uid, calling_ae in self.db.execute(sql.senders_of(len(page)), tuple(senders)):
                senders[uid].append(calling_ae)
        for study in page:
            study["calling_aes"] = senders[study["study_instance_uid"]]
            study["ended"] = bool(study["ended"])
        more = len(rows) > limit
        last = page[-1] if page else None
        return page, (encode_cursor(last["last_received"], last["study_instance_uid"]) if more and last else None)


def _receipt(row: Sequence[Any]) -> dict[str, Any]:
    return dict(zip(sql.RECEIPT_COLUMNS, row[1:]))


_BAD_RECORD = (sqlite3.IntegrityError, sqlite3.InterfaceError, sqlite3.ProgrammingError, ValueError, TypeError,
               KeyError)  # UnicodeEncodeError is a ValueError


def _write_records(db: sqlite3.Connection, records: Sequence[Record], clean: bool) -> None:
    """Records in their order; a run of receipts goes in with one statement of each kind."""
    receipts: list[Record] = []
    for record in records:
        if record.get("op") == "receipt":
            receipts.append(record)
            continue
        _insert_receipts(db, receipts, clean)
        receipts = []
        if record.get("op") == "moved":
            db.executemany(sql.MOVE_PATH, [(_text(new), _text(old)) if clean else (new, old)
                                           for old, new in record["moves"]])
        elif record.get("op") == "study_ended":
            db.execute(sql.STUDY_ENDED, (record["study_instance_uid"],))
        else:
            raise ValueError(f"unknown record kind {record.get('op')!r}")
    _insert_receipts(db, receipts, clean)


@dataclass
class _StudyChange:
    """What a run of receipts adds to one study (journal_sql.UPSERT_STUDY's parameters)."""

    objects: int = 0
    bytes: int = 0
    first: str = "~"  # after every time
    last: str = ""
    directory: str | None = None
    patient_id: str | None = None


def _insert_receipts(db: sqlite3.Connection, records: list[Record], clean: bool) -> None:
    if not records:
        return
    text = _text if clean else _same
    rows = []
    studies: dict[str, _StudyChange] = {}
    newest: dict[tuple[str, str], tuple[str, int]] = {}  # (study, instance): its newest receipt so far
    senders: set[tuple[str, str]] = set()
    for record in records:
        _check(record)
        rows.append(tuple(text(record.get(column)) for column in sql.RECEIPT_COLUMNS) if clean
                    else tuple(map(record.get, sql.RECEIPT_COLUMNS)))
        study = record.get("study_instance_uid")
        if not study:
            continue
        received_at, size = record["received_at"], record.get("size") or 0
        key = (study, record["sop_instance_uid"])
        previous = newest.get(key) or db.execute(sql.LATEST_IN_STUDY, key).fetchone()
        change = studies.setdefault(study, _StudyChange())
        if previous is None:  # an instance new to the study
            change.objects += 1
            change.bytes += size
        elif received_at >= previous[0]:  # a newer copy: its size counts now
            change.bytes += size - (previous[1] or 0)
        if previous is None or received_at >= previous[0]:
            newest[key] = (received_at, size)
        change.first = min(change.first, received_at)
        if received_at >= change.last:
            path = record.get("path")
            change.last, change.directory = received_at, text(os.path.dirname(path) if path else None)
            change.patient_id = text(record.get("patient_id")) or change.patient_id
        if record.get("calling_ae"):
            senders.add((study, text(record["calling_ae"])))
    db.executemany(sql.INSERT_RECEIPT, rows)
    db.executemany(sql.UPSERT_STUDY, [(study, c.patient_id, c.objects, c.bytes, c.first, c.last, c.directory)
                                      for study, c in studies.items()])
    db.executemany(sql.ADD_SENDER, sorted(senders))


def _check(record: Record) -> None:
    for required in ("received_at", "sop_class_uid", "sop_instance_uid"):
        if not isinstance(record.get(required), str) or not record[required]:
            raise ValueError(f"{required} missing")
    if not isinstance(record.get("status"), int):
        raise ValueError("status missing")


def _recount_study(db: sqlite3.Connection, study: str) -> None:
    count, first, last = db.execute(sql.STUDY_TIMES, (study,)).fetchone()
    db.execute(sql.SENDERS_DELETE, (study,))
    if not count:
        db.execute(sql.STUDY_DELETE, (study,))
        return
    objects, size = db.execute(sql.STUDY_OBJECTS, (study,)).fetchone()
    db.execute(sql.STUDY_RECOUNT, (objects, size, first, last, study))
    db.execute(sql.SENDERS_RECOUNT, (study,))


def _same(value: Any) -> Any:
    return value


def _text(value: Any) -> Any:
    """A string SQLite can store as UTF-8: a file name that is no UTF-8 (surrogate escapes) keeps
    its other characters, the undecodable bytes become U+FFFD."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return value.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
    return value


def open_for_writing(path: str | os.PathLike[str]) -> SqliteJournal:
    """The journal at ``path``, created or migrated to this version's schema."""
    journal = SqliteJournal(path)
    try:
        journal.migrate()
    except BaseException:
        journal.close()
        raise
    return journal
