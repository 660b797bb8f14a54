"""Study folder names as DCMTK storescp writes them (-ss, -su, -sp), and creating a folder durably.

The names are pure functions of the values a peer sends; ``ensure_folder`` runs in the process
that stores the object (a worker, or the single process), never in the supervisor.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from pathlib import Path

from storescpd.dicom.sop_classes import file_prefix
from storescpd.store.storage import UnsafeName, fsync_dir

LOG = logging.getLogger("storescpd.studies")

MAX_FOLDER_NAME = 255  # bytes in one path component (ext4, xfs)
MAX_PATIENT_PART = MAX_FOLDER_NAME - len("_YYYYMMDD_HHMMSSPPP") - 8  # room for the timestamp

# DCMTK storescp's ASCII spelling of Latin-1 letters 0xC0..0xFF (measured on 3.6.7); "_" for
# the others (multiplication and division signs, thorn).
_LATIN1_LETTERS = (
    "A A A A Ae A A C E E E E I I I I D N O O O O Oe _ O U U U Ue Y _ ss "
    "a a a a ae a a c e e e e i i i i d n o o o o oe _ o u u u ue y _ y"
).split()
# Characters DCMTK keeps in a Study Instance UID folder name; others become "_" (measured).
_UID_FOLDER_CHARS = frozenset("0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ.-_:")


def patient_folder_part(raw: bytes | None, charset: str | None) -> str:
    """DCMTK's -sp spelling of Patient's Name: ASCII letters and digits, Latin-1 letters
    transliterated, every other byte "_"; "ANONYMOUS" when empty or absent.

    Only the first value counts; trailing spaces are padding. A character set other than
    Latin-1 is read as Latin-1, with DCMTK's warning.
    """
    value = (raw or b"").split(b"\\", 1)[0].rstrip(b" ")
    if not value:
        return "ANONYMOUS"
    if (charset or "").strip() != "ISO_IR 100" and any(b > 0x7F for b in value):
        LOG.warning("Patient name not in Latin-1 (charset: %s), ASCII dir name may be broken", charset or "")
    name = "".join(_ascii(b) for b in value)
    return name[:MAX_PATIENT_PART]


def _ascii(byte: int) -> str:
    if byte < 0x80 and chr(byte).isalnum():
        return chr(byte)
    if byte >= 0xC0:
        return _LATIN1_LETTERS[byte - 0xC0]
    return "_"


def study_uid_folder_part(uid: str) -> str:
    """The Study Instance UID as DCMTK's -su puts it in a folder name ("/" and other unusual
    characters become "_")."""
    cleaned = "".join(c if c in _UID_FOLDER_CHARS else "_" for c in uid)
    if cleaned != uid:
        LOG.warning('Sanitized unusual characters in Study Instance UID, converted from "%s" to "%s".',
                    uid, cleaned)
    return cleaned


def timestamp(wall: float) -> str:
    """[YYYYMMDD]_[HHMMSSPPP] in local time, as DCMTK names study folders."""
    lt = time.localtime(wall)
    return time.strftime("%Y%m%d_%H%M%S", lt) + f"{int(wall * 1000) % 1000:03d}"


def folder_name(mode: str, prefix: str, study_uid: str, patient: str, wall: float) -> str:
    """The folder of a new study: [prefix]_[YYYYMMDD]_[HHMMSSPPP], [prefix]_[StudyInstanceUID]
    or [PatientName]_[YYYYMMDD]_[HHMMSSPPP] ("_" omitted after an empty prefix)."""
    if mode == "concurrent":
        name = f"{prefix}_{timestamp(wall)}" if prefix else timestamp(wall)
    elif mode == "studyuid":
        part = study_uid_folder_part(study_uid)
        name = f"{prefix}_{part}" if prefix else part
    elif mode == "patientname":
        name = f"{patient}_{timestamp(wall)}"
    else:
        raise ValueError(f"unknown sort mode {mode!r}")
    check_folder(name)
    return name


def check_folder(name: str) -> None:
    """UnsafeName unless ``name`` is exactly one ordinary path component."""
    if (not name or name in (".", "..") or "/" in name or "\0" in name
            or len(name.encode("utf-8", "surrogateescape")) > MAX_FOLDER_NAME):
        raise UnsafeName(f"study folder name {name!r} would not be a folder inside the output directory")


def renamed_prefix(sop_class_uid: str) -> str:
    """The 2-letter kind -rns puts before the number: DCMTK takes the first two characters of
    the file name, i.e. of the modality prefix (CT, MR, UN for UNKNOWN, DX for DXm...)."""
    return file_prefix(sop_class_uid)[:2]


# Study folders whose directory entry this process has made durable (the most recent few).
_durable_folders: OrderedDict[Path, None] = OrderedDict()
DURABLE_FOLDERS_KEPT = 64


def ensure_folder(output_dir: Path, folder: str, fsync: bool) -> Path:
    """Create the study folder; its directory entry is made durable before any object in it
    is acknowledged, also when another worker created it a moment ago and may not have
    synced it yet (one fsync of the output directory per folder and process)."""
    check_folder(folder)
    path = output_dir / folder
    try:
        path.mkdir()
        LOG.info("created new subdirectory for study: %s", path)
        _durable_folders.pop(path, None)  # created again (a hook moved it away): not durable yet
    except FileExistsError:
        if not path.is_dir() or path.is_symlink():
            raise UnsafeName(f"{path} exists and is not a folder: cannot store the study there") from None
    if fsync and path not in _durable_folders:
        fsync_dir(output_dir)
        _durable_folders[path] = None
        if len(_durable_folders) > DURABLE_FOLDERS_KEPT:
            _durable_folders.popitem(last=False)
    return path
