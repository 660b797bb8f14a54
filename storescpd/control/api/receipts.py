"""``/receipts`` and ``/studies``: the receipt journal, read by the API process from its SQLite file.

Each request opens the journal read-only, reads one page and closes it; SQLite's WAL mode lets
it read while the journal writer writes. The handlers are plain functions, which FastAPI runs
in its thread pool, so a query never holds up the event loop.
"""

from __future__ import annotations

import sqlite3
from contextlib import contextmanager
from typing import Any, Iterator

from fastapi import APIRouter, HTTPException, Query
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, Field

from storescpd.store.journal_db import JournalUnavailable, ReceiptQuery, decode_cursor, parse_time
from storescpd.store.journal_sqlite import SqliteJournal

DEFAULT_LIMIT = 100
MAX_LIMIT = 1000
NO_JOURNAL = ("this storescpd runs without a receipt journal: set journal (e.g. journal = "
              '"/var/lib/storescpd/journal.sqlite", or --journal PATH) and restart it')
UTC_TIME = "UTC, ISO 8601 with milliseconds"


class Receipt(BaseModel):
    received_at: str = Field(description=f"when the object was acknowledged: {UTC_TIME}",
                             examples=["2024-05-01T14:02:00.123Z"])
    association_id: str | None = Field(description="the association's id as /associations showed it; null "
                                                   "for rows made by storescpd journal rebuild")
    calling_ae: str | None
    called_ae: str | None
    peer: str | None = Field(description="address:port of the sender", examples=["192.0.2.7:51234"])
    sop_class_uid: str
    sop_instance_uid: str
    study_instance_uid: str | None
    series_instance_uid: str | None
    patient_id: str | None
    modality: str | None
    transfer_syntax_uid: str | None = Field(description="of the stored file")
    status: int = Field(description="the C-STORE-RSP status sent: 0 (success) or a warning")
    path: str | None = Field(description="absolute path of the file now (follows end-of-study renames)")
    size: int | None = Field(description="bytes of the file")
    sha256: str | None = Field(description="hex SHA-256 of the file, with journal_digest = \"sha256\"")


class ReceiptPage(BaseModel):
    receipts: list[Receipt] = Field(description="newest first")
    next_cursor: str | None = Field(description="pass as cursor for the next (older) page; null: no more")


class Study(BaseModel):
    study_instance_uid: str
    patient_id: str | None
    objects: int = Field(description="distinct SOP instances received")
    bytes: int = Field(description="size of their files (the newest copy of each)")
    first_received: str = Field(description=UTC_TIME)
    last_received: str = Field(description=UTC_TIME)
    calling_aes: list[str] = Field(description="every AE title that sent objects of it")
    directory: str | None = Field(description="folder of its newest object")
    ended: bool = Field(description="end of study seen (tracked with -ss/-su/-sp, -rns or -xcs)")


class StudyPage(BaseModel):
    studies: list[Study] = Field(description="the most recently active first")
    next_cursor: str | None = Field(description="pass as cursor for the next page; null: no more")


def _invalid(parameter: str, message: str, value: str) -> RequestValidationError:
    """A 422 in FastAPI's own shape, naming the query parameter."""
    return RequestValidationError([{"type": "value_error", "loc": ("query", parameter), "msg": message,
                                    "input": value}])


def _time(parameter: str, value: str | None) -> str | None:
    if value is None:
        return None
    try:
        return parse_time(value)
    except ValueError as exc:
        raise _invalid(parameter, str(exc), value) from None


def _cursor(value: str | None, integer_key: bool) -> str | None:
    if value is not None:
        try:
            decode_cursor(value, integer_key)
        except ValueError as exc:
            raise _invalid("cursor", str(exc), value) from None
    return value


def router(journal: str | None, problem: type[BaseModel]) -> APIRouter:
    """The journal's endpoints on the file ``journal`` (None: every call answers 503)."""
    routes = APIRouter(tags=["journal"])
    unavailable = {503: {"model": problem, "description": "no journal, or it cannot be read now"}}

    @contextmanager
    def reading() -> Iterator[SqliteJournal]:
        if journal is None:
            raise HTTPException(503, NO_JOURNAL)
        try:
            db = SqliteJournal(journal, readonly=True)
        except JournalUnavailable as exc:
            raise HTTPException(503, str(exc)) from None
        except sqlite3.Error as exc:
            raise HTTPException(503, f"cannot open the journal {journal}: {exc}") from None
        try:
            yield db
        except sqlite3.Error as exc:
            raise HTTPException(503, f"cannot read the journal {journal}: {exc} (restore it from a backup or run "
                                     "storescpd journal rebuild)") from None
        finally:
            db.close()

    def limit_query() -> Any:
        return Query(DEFAULT_LIMIT, ge=1, le=MAX_LIMIT, description=f"rows per page (at most {MAX_LIMIT})")

    def cursor_query() -> Any:
        return Query(None, description="next_cursor of the previous page")

    @routes.get("/receipts", response_model=ReceiptPage, responses=unavailable,
                summary="Acknowledged objects, newest first (filters combine with AND)")
    def list_receipts(
        study_uid: str | None = Query(None, description="Study Instance UID"),
        series_uid: str | None = Query(None, description="Series Instance UID"),
        sop_instance_uid: str | None = Query(None, description="SOP Instance UID"),
        patient_id: str | None = Query(None, description="Patient ID"),
        calling_ae: str | None = Query(None, description="the sender's AE title"),
        since: str | None = Query(None, description="received at or after: ISO 8601 (without an offset: UTC)",
                                  examples=["2024-05-01T14:00:00Z"]),
        until: str | None = Query(None, description="received before: ISO 8601 (without an offset: UTC)"),
        limit: int = limit_query(),
        cursor: str | None = cursor_query(),
    ) -> Any:
        filters = {"study_instance_uid": study_uid, "series_instance_uid": series_uid,
                   "sop_instance_uid": sop_instance_uid, "patient_id": patient_id, "calling_ae": calling_ae}
        query = ReceiptQuery({column: value for column, value in filters.items() if value is not None},
                             _time("since", since), _time("until", until), _cursor(cursor, True), limit)
        with reading() as db:
            page, next_cursor = db.receipts(query)
        return {"receipts": page, "next_cursor": next_cursor}

    @routes.get("/receipts/{sop_instance_uid}", response_model=Receipt,
                responses={**unavailable, 404: {"model": problem, "description": "no receipt of this instance"}},
                summary="The newest receipt of one SOP instance")
    def get_receipt(sop_instance_uid: str) -> Any:
        with reading() as db:
            found = db.latest(sop_instance_uid)
        if found is None:
            raise HTTPException(404, f"no receipt of SOP instance {sop_instance_uid!r} in the journal")
        return found

    @routes.get("/studies", response_model=StudyPage, responses=unavailable,
                summary="Studies received, the most recently active first")
    def list_studies(
        since: str | None = Query(None, description="with an object received at or after: ISO 8601 (UTC "
                                                    "without an offset)"),
        limit: int = limit_query(),
        cursor: str | None = cursor_query(),
    ) -> Any:
        since_text = _time("since", since)
        with reading() as db:
            page, next_cursor = db.studies(since_text, _cursor(cursor, False), limit)
        return {"studies": page, "next_cursor": next_cursor}

    return routes
