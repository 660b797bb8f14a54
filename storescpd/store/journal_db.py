"""The receipt journal's database, as the rest of storescpd sees it: the interface, times, cursors.

``JournalDatabase`` is the interface (the writer, ``journal rebuild`` and the API use nothing
else); ``journal_sqlite.SqliteJournal`` implements it with the statements of ``journal_sql``, and
a PostgreSQL backend would implement the same methods with the same statements. This module
imports no database driver: a process that stores objects (one per connection with --inetd)
never loads one unless it writes the journal itself.
"""

from __future__ import annotations

import base64
import os
import re
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Protocol, Sequence

from storescpd.store import journal_sql as sql

SCHEMA_VERSION = len(sql.MIGRATIONS)
Record = dict[str, Any]  # one line of the spool: {"op": "receipt" | "moved" | "study_ended", ...}

_TIME = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")


# ---- times and cursors ------------------------------------------------------------------------
def utc_text(seconds: float) -> str:
    """``2024-05-01T14:02:00.123Z``: how the journal writes a time (UTC, milliseconds)."""
    whole = int(seconds)
    millis = int((seconds - whole) * 1000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole)) + f".{millis:03d}Z"


def parse_time(text: str) -> str:
    """An ISO 8601 date or time (``2024-05-01``, ``2024-05-01T14:02``, ``...Z``, ``...+02:00``) as
    the journal writes times; one without an offset is UTC. ValueError names what is wrong."""
    value = text.strip()
    if value[-1:] in ("Z", "z"):
        value = value[:-1] + "+00:00"
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise ValueError(f"'{text}' is not an ISO 8601 date or time (e.g. 2024-05-01T14:02:00Z)") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return utc_text(moment.timestamp())


def encode_cursor(when: str, key: str | int) -> str:
    """An opaque cursor: where the next page starts (after this time and tie-breaking key)."""
    return base64.urlsafe_b64encode(f"{when}|{key}".encode()).decode().rstrip("=")


def decode_cursor(cursor: str, integer_key: bool) -> tuple[str, str | int]:
    """(time, key) of a cursor this module made; ValueError for anything else."""
    try:
        text = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        when, key = text.split("|", 1)
        if not _TIME.fullmatch(when):
            raise ValueError
        return when, (int(key) if integer_key else key)
    except ValueError:  # binascii.Error and UnicodeDecodeError are ValueErrors too
        raise ValueError("not a cursor of this journal (use next_cursor of the previous page)") from None


# ---- the interface --------------------------------------------------------------------------------
class JournalUnavailable(Exception):
    """The journal cannot be read now; the message says why and what to do."""


@dataclass
class ReceiptQuery:
    """A page of GET /receipts: equality filters (columns of journal_sql.FILTERS), a window."""

    filters: dict[str, str] = field(default_factory=dict)
    since: str | None = None
    until: str | None = None
    cursor: str | None = None
    limit: int = 100


class JournalDatabase(Protocol):
    """What storescpd needs of the database holding the journal."""

    def migrate(self) -> int:
        """Create or update the schema; the version now."""

    def apply(self, records: Sequence[Record], spool: str | None = None, done: int = 0) -> None:
        """Write records in one transaction, with the progress ``done`` of spool file ``spool``."""

    def spool_done(self, name: str) -> int:
        """How many bytes of spool file ``name`` are in the journal already."""

    def forget_spools(self, gone: Callable[[str], bool], before: str) -> None:
        """Drop the progress of spool files untouched since ``before`` that are ``gone``."""

    def prune(self, before: str, limit: int) -> int:
        """Remove up to ``limit`` of the oldest receipts received before ``before``; how many."""

    def path_known(self, path: str) -> bool:
        """Whether a receipt names this file."""

    def clear(self) -> None:
        """Remove every receipt and study."""

    def receipts(self, query: ReceiptQuery) -> tuple[list[dict[str, Any]], str | None]:
        """A page of receipts, newest first, and the cursor of the next page."""

    def latest(self, sop_instance_uid: str) -> dict[str, Any] | None:
        """The newest receipt of a SOP instance."""

    def studies(self, since: str | None, cursor: str | None, limit: int) -> tuple[list[dict[str, Any]], str | None]:
        """A page of studies, the most recently active first, and the next cursor."""

    def close(self) -> None: ...


def sqlite_path(configured: str | os.PathLike[str]) -> Path:
    """The journal file for the ``journal`` setting (relative to the working directory)."""
    return Path(os.path.abspath(configured))
