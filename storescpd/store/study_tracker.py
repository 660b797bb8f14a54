"""The study decisions, pure: which folder an object goes to, when a study ends, what then happens.

``StudyTracker`` is fed with JSON-able values and returns JSON-able actions; it touches no file.
It lives where study state can span associations: in the supervisor (pre-fork and --fork: workers
ask it over ipc), or in the process itself (--single-process, --inetd).

DCMTK's rule for the end of a study is "an object of another study arrives, or -tos seconds
pass without an object". DCMTK serves one association at a time; here associations run side by
side, so the rule reads: a study ends once an object of another study has arrived after its last
object *and* no association that sent it is still open, or once it was silent for -tos seconds
after its last object and the end of the last association that sent it. With one association at
a time this is exactly DCMTK's rule; with concurrent senders of different studies it keeps each
study whole instead of starting a new folder at every switch.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from typing import Literal, TypedDict

from storescpd.config.settings import Config
from storescpd.store.storage import UnsafeName
from storescpd.store.study_folders import folder_name
from storescpd.store.study_rename import RenamedFile

LOG = logging.getLogger("storescpd.studies")

RECEPTION = "reception"
END_OF_STUDY = "end-of-study"


class ReceptionAction(TypedDict):
    """-xcr for one stored object; values: path, file, calling_ae, called_ae, peer."""

    action: Literal["reception"]
    values: dict[str, str]


class EndOfStudyAction(TypedDict):
    """A study ended: rename ``files`` in ``directory`` (-rns; empty: none), then -xcs with ``values``."""

    action: Literal["end-of-study"]
    study_uid: str
    directory: str  # absolute
    files: list[RenamedFile]
    values: dict[str, str]


Action = ReceptionAction | EndOfStudyAction


@dataclass
class Study:
    uid: str
    folder: str
    last: float  # monotonic time of the last object, or of the end of its last sender
    # Where it began, kept across a reload that changes -od: its files stay there, -rns renames
    # them there and #p names that folder. path is as configured (#p), directory absolute.
    path: str
    directory: str
    root: str  # the absolute output directory: with uid, its key among the open studies
    files: list[RenamedFile] = field(default_factory=list)
    senders: set[str] = field(default_factory=set)
    superseded: bool = False
    values: dict[str, str] = field(default_factory=dict)  # #a #c #r of its last object


@dataclass
class TrackerSettings:
    sort: str | None  # "concurrent", "studyuid", "patientname" or None
    prefix: str
    rename: bool
    timeout: float  # -tos seconds, 0: off
    on_reception: bool
    on_end_of_study: bool
    journal: bool = False  # the receipt journal hears of every end of study

    @classmethod
    def from_config(cls, config: Config) -> "TrackerSettings":
        sort = config.sort or [None, ""]
        return cls(sort[0], sort[1] if len(sort) > 1 else "", bool(config.rename_on_eostudy),
                   float(config.eostudy_timeout or 0), bool(config.exec_on_reception), bool(config.exec_on_eostudy),
                   bool(getattr(config, "journal", None)))


class StudyTracker:
    """Study state across associations; every input and output is JSON-able.

    Actions are returned in the order to carry them out (``Action``). A *sender* is one
    association (its worker's id); "" when there is only ever one at a time (one process): then
    nothing waits for an association to end. Where an object is stored is given twice: its
    ``output_directory`` as the storing process has it configured (#p is built from it, as
    DCMTK does) and ``root``, the same resolved to an absolute path by that process.
    """

    def __init__(self, settings: TrackerSettings) -> None:
        self.settings = settings
        # One open study per Study Instance UID and output directory: after a reload that changes
        # -od, an association begun before it keeps filling the old folder while new ones fill a
        # new folder; each ends on its own (a study never spans two directories).
        self.open: dict[tuple[str, str], Study] = {}

    def place(self, sender: str, study_uid: str, patient: str, now: float, wall: float,
              output_directory: str, root: str) -> tuple[str, list[Action]]:
        """The folder for an object of ``study_uid`` from ``sender``; the studies this ends."""
        if not study_uid:
            raise UnsafeName("element StudyInstanceUID (0020,000d) absent or empty in data set")
        if self.settings.sort is None:
            return "", []
        study = self.open.get((study_uid, root))
        if study is None:
            folder = self._new_folder(study_uid, patient, wall, root)
            study = self.open[(study_uid, root)] = Study(
                study_uid, folder, now, path=os.path.join(output_directory, folder),
                directory=os.path.join(root, folder), root=root)
        if sender:
            study.senders.add(sender)
        study.superseded = False  # an object of it arrived after whatever came before
        for other in self.open.values():
            if other is not study:
                other.superseded = True
                other.senders.discard(sender)  # this association has moved on to another study
        return study.folder, self._end_finished(now)

    def _new_folder(self, study_uid: str, patient: str, wall: float, root: str) -> str:
        in_use = {s.folder for s in self.open.values() if s.root == root}
        name = folder_name(self.settings.sort, self.settings.prefix, study_uid, patient, wall)  # type: ignore[arg-type]
        # Two studies beginning in the same millisecond (concurrent senders) get distinct folders.
        while name in in_use and self.settings.sort != "studyuid":
            wall += 0.001
            name = folder_name(self.settings.sort, self.settings.prefix, study_uid, patient, wall)  # type: ignore[arg-type]
        return name

    def stored(self, sender: str, study_uid: str | None, folder: str, file: str, prefix: str,
               values: dict[str, str], now: float, output_directory: str, root: str) -> list[Action]:
        """An object was stored as ``folder``/``file`` (file "" with --ignore)."""
        study = self.open.get((study_uid or "", root))
        if study is not None and study.folder == folder:
            study.last = now
            study.values = dict(values)
            if sender:
                study.senders.add(sender)
            if file and not any(f["file"] == file for f in study.files):
                study.files.append({"file": file, "prefix": prefix})
        if not self.settings.on_reception:
            return []
        path = (os.path.join(output_directory, folder) if folder else output_directory) if file else ""
        return [{"action": "reception", "values": {**values, "path": path, "file": file}}]

    def sender_done(self, sender: str, now: float) -> list[Action]:
        """The association ``sender`` ended (or its process did)."""
        for study in self.open.values():
            if sender in study.senders:
                study.senders.discard(sender)
                study.last = max(study.last, now)
        return self._end_finished(now)

    def tick(self, now: float) -> list[Action]:
        """-tos: end the studies silent for the timeout."""
        if not self.settings.timeout:
            return []
        actions: list[Action] = []
        for study in list(self.open.values()):
            if not study.senders and now - study.last >= self.settings.timeout:
                LOG.info("end of study %s (no object for %g s): %s", study.uid, self.settings.timeout, study.folder)
                actions.extend(self._end(study))
        return actions

    def _end_finished(self, now: float) -> list[Action]:
        actions: list[Action] = []
        for study in list(self.open.values()):
            if study.superseded and not study.senders:
                LOG.info("end of study %s (an object of another study arrived): %s", study.uid, study.folder)
                actions.extend(self._end(study))
        return actions

    def _end(self, study: Study) -> list[Action]:
        del self.open[(study.uid, study.root)]
        files = list(study.files) if self.settings.rename else []
        if not files and not self.settings.on_end_of_study and not self.settings.journal:
            return []
        return [{"action": "end-of-study", "study_uid": study.uid, "directory": study.directory, "files": files,
                 "values": {**study.values, "path": study.path}}]
