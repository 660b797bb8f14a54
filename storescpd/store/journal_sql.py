"""Every SQL statement of the receipt journal, plain text with parameters, and the schema migrations.

The statements use ``?`` placeholders (qmark style, SQLite's); a backend whose driver wants
another style (psycopg: ``%s``) translates the placeholders, nothing else: no statement has a
literal ``?`` and every value, peer-chosen or not, is a bound parameter. Only the number of
placeholders in ``senders_of`` varies, never text taken from a value. The statements keep to
what SQLite (3.35 or later) and PostgreSQL both understand: ``ON CONFLICT`` upserts, ``CASE``
instead of two-argument ``MIN``/``MAX``, no ``INSERT OR ...``, no ``group_concat``.

Times are text, UTC, ISO 8601 with milliseconds and a ``Z`` (``2024-05-01T14:02:00.123Z``): one
fixed width, so that their order as text is their order in time, in either database.
"""

from __future__ import annotations

# ---- the schema, as a list of migrations ---------------------------------------------------
# A migration is applied once, in order, each in its own transaction, and journal_schema keeps the
# number of the last one applied. Never edit a released migration: append another.
# The DDL is SQLite's; a PostgreSQL backend keeps the same tables and columns with its own types
# (BIGINT GENERATED ALWAYS AS IDENTITY for receipts.id).

SCHEMA_VERSION_TABLE = "CREATE TABLE IF NOT EXISTS journal_schema (version INTEGER NOT NULL)"
SCHEMA_VERSION = "SELECT version FROM journal_schema"
SCHEMA_VERSION_FIRST = "INSERT INTO journal_schema (version) VALUES (?)"
SCHEMA_VERSION_SET = "UPDATE journal_schema SET version = ?"

MIGRATIONS: tuple[tuple[str, ...], ...] = (
    # 1: receipts, the per-study summary, the calling AE titles per study, spool replay progress
    (
        """CREATE TABLE receipts (
            id INTEGER PRIMARY KEY,
            received_at TEXT NOT NULL,
            association_id TEXT,
            calling_ae TEXT,
            called_ae TEXT,
            peer TEXT,
            sop_class_uid TEXT NOT NULL,
            sop_instance_uid TEXT NOT NULL,
            study_instance_uid TEXT,
            series_instance_uid TEXT,
            patient_id TEXT,
            modality TEXT,
            transfer_syntax_uid TEXT,
            status INTEGER NOT NULL,
            path TEXT,
            size INTEGER,
            sha256 TEXT
        )""",
        # Every filter of GET /receipts is an equality on one of these, then newest first.
        "CREATE INDEX receipts_received ON receipts (received_at)",
        "CREATE INDEX receipts_study ON receipts (study_instance_uid, received_at)",
        "CREATE INDEX receipts_series ON receipts (series_instance_uid, received_at)",
        "CREATE INDEX receipts_instance ON receipts (sop_instance_uid, received_at)",
        "CREATE INDEX receipts_patient ON receipts (patient_id, received_at)",
        "CREATE INDEX receipts_calling ON receipts (calling_ae, received_at)",
        "CREATE INDEX receipts_path ON receipts (path)",  # end of study renames a file: its rows follow
        """CREATE TABLE studies (
            study_instance_uid TEXT PRIMARY KEY,
            patient_id TEXT,
            objects INTEGER NOT NULL,
            bytes INTEGER NOT NULL,
            first_received TEXT NOT NULL,
            last_received TEXT NOT NULL,
            directory TEXT,
            ended INTEGER NOT NULL
        )""",
        "CREATE INDEX studies_last ON studies (last_received, study_instance_uid)",
        """CREATE TABLE study_senders (
            study_instance_uid TEXT NOT NULL,
            calling_ae TEXT NOT NULL,
            PRIMARY KEY (study_instance_uid, calling_ae)
        )""",
        # How far each spool file has been written into the journal (bytes), in the same
        # transaction as its rows: a replay cut short resumes there and never adds a row twice.
        """CREATE TABLE spool_progress (
            name TEXT PRIMARY KEY,
            done INTEGER NOT NULL,
            updated_at TEXT NOT NULL
        )""",
    ),
)

# ---- receipts ---------------------------------------------------------------------------------
RECEIPT_COLUMNS = (
    "received_at", "association_id", "calling_ae", "called_ae", "peer", "sop_class_uid", "sop_instance_uid",
    "study_instance_uid", "series_instance_uid", "patient_id", "modality", "transfer_syntax_uid", "status",
    "path", "size", "sha256",
)
_COLUMNS = ", ".join(RECEIPT_COLUMNS)

INSERT_RECEIPT = f"INSERT INTO receipts ({_COLUMNS}) VALUES ({', '.join('?' * len(RECEIPT_COLUMNS))})"

# The receipt of the same instance in the same study that is the newest so far (for the study's
# count of distinct objects and their bytes).
LATEST_IN_STUDY = ("SELECT received_at, size FROM receipts WHERE study_instance_uid = ? AND sop_instance_uid = ? "
                   "ORDER BY received_at DESC, id DESC LIMIT 1")

MOVE_PATH = "UPDATE receipts SET path = ? WHERE path = ?"

PATH_KNOWN = "SELECT 1 FROM receipts WHERE path = ? LIMIT 1"

LATEST_RECEIPT = (f"SELECT id, {_COLUMNS} FROM receipts WHERE sop_instance_uid = ? "
                  "ORDER BY received_at DESC, id DESC LIMIT 1")

# GET /receipts: equality filters from a fixed set of columns (FILTERS), then a time window and
# the cursor, newest first. receipts_query() puts the pieces together; values stay parameters.
FILTERS = ("study_instance_uid", "series_instance_uid", "sop_instance_uid", "patient_id", "calling_ae")


def receipts_query(filters: tuple[str, ...], since: bool, until: bool, after_cursor: bool) -> str:
    """The SELECT of one page of receipts; its parameters are, in order: the values of ``filters``,
    ``since``, ``until``, the cursor's (received_at, received_at, id), the row limit."""
    conditions = [f"{column} = ?" for column in filters if column in FILTERS]
    if len(conditions) != len(filters):
        raise ValueError(f"unknown filter among {filters}")
    if since:
        conditions.append("received_at >= ?")
    if until:
        conditions.append("received_at < ?")
    if after_cursor:
        # (received_at, id) < (?, ?), spelled so that either database ranges over the index
        conditions.append("received_at <= ? AND (received_at < ? OR id < ?)")
    where = f" WHERE {' AND '.join(conditions)}" if conditions else ""
    return f"SELECT id, {_COLUMNS} FROM receipts{where} ORDER BY received_at DESC, id DESC LIMIT ?"


# ---- studies ------------------------------------------------------------------------------------
# One receipt more: objects and bytes count distinct SOP instances (their newest receipt's size);
# the times widen; directory, patient and "ended" follow the newest object.
UPSERT_STUDY = """INSERT INTO studies
    (study_instance_uid, patient_id, objects, bytes, first_received, last_received, directory, ended)
    VALUES (?, ?, ?, ?, ?, ?, ?, 0)
    ON CONFLICT (study_instance_uid) DO UPDATE SET
        patient_id = COALESCE(excluded.patient_id, studies.patient_id),
        objects = studies.objects + excluded.objects,
        bytes = studies.bytes + excluded.bytes,
        first_received = CASE WHEN excluded.first_received < studies.first_received
                              THEN excluded.first_received ELSE studies.first_received END,
        last_received = CASE WHEN excluded.last_received > studies.last_received
                             THEN excluded.last_received ELSE studies.last_received END,
        directory = CASE WHEN excluded.last_received >= studies.last_received
                         THEN excluded.directory ELSE studies.directory END,
        ended = CASE WHEN excluded.last_received >= studies.last_received THEN 0 ELSE studies.ended END"""

ADD_SENDER = "INSERT INTO study_senders (study_instance_uid, calling_ae) VALUES (?, ?) ON CONFLICT DO NOTHING"

STUDY_ENDED = "UPDATE studies SET ended = 1 WHERE study_instance_uid = ?"

STUDY_COLUMNS = ("study_instance_uid", "patient_id", "objects", "bytes", "first_received", "last_received",
                 "directory", "ended")


def studies_query(since: bool, after_cursor: bool) -> str:
    """One page of studies, the most recently active first; parameters: ``since``, the cursor's
    (last_received, last_received, study_instance_uid), the row limit."""
    conditions = []
    if since:
        conditions.append("last_received >= ?")
    if after_cursor:
        conditions.append("last_received <= ? AND (last_received < ? OR study_instance_uid < ?)")
    where = f" WHERE {' AND '.join(conditions)}" if conditions else ""
    return (f"SELECT {', '.join(STUDY_COLUMNS)} FROM studies{where} "
            "ORDER BY last_received DESC, study_instance_uid DESC LIMIT ?")


def senders_of(count: int) -> str:
    """The calling AE titles of ``count`` studies (one placeholder per study)."""
    return ("SELECT study_instance_uid, calling_ae FROM study_senders WHERE study_instance_uid IN "
            f"({', '.join('?' * count)}) ORDER BY calling_ae")


# A study's summary computed again from its remaining receipts (after retention removed some).
STUDY_TIMES = "SELECT COUNT(*), MIN(received_at), MAX(received_at) FROM receipts WHERE study_instance_uid = ?"
STUDY_OBJECTS = """SELECT COUNT(*), COALESCE(SUM(r.size), 0) FROM receipts r
    WHERE r.study_instance_uid = ? AND NOT EXISTS (
        SELECT 1 FROM receipts n WHERE n.study_instance_uid = r.study_instance_uid
            AND n.sop_instance_uid = r.sop_instance_uid
            AND (n.received_at > r.received_at OR (n.received_at = r.received_at AND n.id > r.id)))"""
STUDY_RECOUNT = ("UPDATE studies SET objects = ?, bytes = ?, first_received = ?, last_received = ? "
                 "WHERE study_instance_uid = ?")
STUDY_DELETE = "DELETE FROM studies WHERE study_instance_uid = ?"
SENDERS_DELETE = "DELETE FROM study_senders WHERE study_instance_uid = ?"
SENDERS_RECOUNT = ("INSERT INTO study_senders (study_instance_uid, calling_ae) "
                   "SELECT DISTINCT study_instance_uid, calling_ae FROM receipts "
                   "WHERE study_instance_uid = ? AND calling_ae IS NOT NULL")

# ---- retention ------------------------------------------------------------------------------------
OLDEST_BEFORE = "SELECT id, study_instance_uid FROM receipts WHERE received_at < ? ORDER BY received_at LIMIT ?"
DELETE_RECEIPT = "DELETE FROM receipts WHERE id = ?"

# ---- journal rebuild --replace ---------------------------------------------------------------------
CLEAR = ("DELETE FROM receipts", "DELETE FROM studies", "DELETE FROM study_senders")

# ---- spool replay ----------------------------------------------------------------------------------
SPOOL_DONE = "SELECT done FROM spool_progress WHERE name = ?"
SPOOL_PROGRESS = """INSERT INTO spool_progress (name, done, updated_at) VALUES (?, ?, ?)
    ON CONFLICT (name) DO UPDATE SET done = excluded.done, updated_at = excluded.updated_at"""
SPOOL_OLD = "SELECT name FROM spool_progress WHERE updated_at < ?"
SPOOL_FORGET = "DELETE FROM spool_progress WHERE name = ?"
