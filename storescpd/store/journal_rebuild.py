"""``storescpd journal rebuild``: receipts made from the files of an output tree.

For a journal that lost its last receipts (a power loss between a receipt's spooling and its
writing), or for a tree that DCMTK's storescp (or an older storescpd) wrote. Every DICOM file gets
a receipt unless one already names its path, so running it again adds nothing. What only the
association knew is left empty: association id, called AE title and peer; received_at is the
file's modification time, calling_ae the Source AE Title of its file meta (which storescpd and
DCMTK's storescp set to the calling AE title) and status 0.
"""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import MutableSequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

from storescpd.store.journal import file_sha256
from storescpd.store.journal_db import JournalDatabase, Record, utc_text
from storescpd.store.journal_sqlite import open_for_writing

LOG = logging.getLogger("storescpd.journal")

BATCH = 500  # receipts per transaction: a daemon writing the same journal meanwhile waits little


@dataclass
class RebuildResult:
    files: int = 0  # regular files looked at
    added: int = 0  # receipts written
    known: int = 0  # files a receipt already named
    skipped: int = 0  # not DICOM, or without SOP class and instance UIDs


def rebuild(journal: str | os.PathLike[str], output_dir: str | os.PathLike[str], digest: bool = False,
            replace: bool = False, opener: Callable[[Path], JournalDatabase] = open_for_writing) -> RebuildResult:
    """Add a receipt for every DICOM file under ``output_dir`` that has none (``replace``: remove
    every receipt and study first)."""
    result = RebuildResult()
    db = opener(Path(journal))
    try:
        if replace:
            db.clear()
        batch: list[Record] = []
        for path in _files(Path(output_dir).resolve(), Path(journal).resolve()):
            result.files += 1
            if not replace and db.path_known(str(path)):
                result.known += 1
                continue
            record = _receipt_of(path, digest)
            if record is None:
                result.skipped += 1
                continue
            batch.append(record)
            if len(batch) >= BATCH:
                db.apply(batch)
                result.added += len(batch)
                batch = []
        if batch:
            db.apply(batch)
            result.added += len(batch)
    finally:
        db.close()
    return result


def _files(root: Path, journal: Path) -> Iterator[Path]:
    """Regular files below ``root`` in a stable order; hidden ones (the staging folder) and the
    journal's own files are not received objects."""
    for directory, folders, names in os.walk(root):
        folders[:] = sorted(f for f in folders if not f.startswith("."))
        for name in sorted(names):
            path = Path(directory) / name
            if name.startswith(".") or str(path).startswith(str(journal)) or not path.is_file():
                continue
            yield path


def _receipt_of(path: Path, digest: bool) -> Record | None:
    from pydicom import dcmread
    from pydicom.errors import InvalidDicomError

    try:
        with warnings.catch_warnings():  # pydicom's guesses about what is no DICOM: the summary says enough
            warnings.simplefilter("ignore")
            try:
                ds = dcmread(path, stop_before_pixels=True, defer_size=1024)
            except InvalidDicomError:  # no preamble: a bare data set, as storescp -F writes it
                ds = dcmread(path, stop_before_pixels=True, defer_size=1024, force=True)
        meta = getattr(ds, "file_meta", None)
        values = {
            "sop_class_uid": _text(meta, "MediaStorageSOPClassUID") or _text(ds, "SOPClassUID"),
            "sop_instance_uid": _text(meta, "MediaStorageSOPInstanceUID") or _text(ds, "SOPInstanceUID"),
            "study_instance_uid": _text(ds, "StudyInstanceUID"),
            "series_instance_uid": _text(ds, "SeriesInstanceUID"),
            "patient_id": _text(ds, "PatientID"),
            "modality": _text(ds, "Modality"),
            "transfer_syntax_uid": _text(meta, "TransferSyntaxUID"),
            "calling_ae": _text(meta, "SourceApplicationEntityTitle"),
        }
        st = path.stat()
    except Exception as exc:  # pydicom raises many kinds on what is not DICOM
        LOG.warning("%s left out: not a DICOM file (%s)", path, exc)
        return None
    if not values["sop_class_uid"] or not values["sop_instance_uid"]:
        LOG.warning("%s left out: it names no SOP class and instance", path)
        return None
    return {"op": "receipt", "received_at": utc_text(st.st_mtime), "association_id": None, "called_ae": None,
            "peer": None, **values, "status": 0, "path": str(path), "size": st.st_size,
            "sha256": file_sha256(path) if digest else None}


def _text(ds: Any, keyword: str) -> str | None:
    value = ds.get(keyword) if ds is not None else None
    if isinstance(value, MutableSequence):  # pydicom's MultiValue: the first value
        value = value[0] if value else None
    if value is None or value == "":
        return None
    return str(value).strip("\0 ") or None
