"""Studies: sorting into study folders (-ss, -su, -sp), end of study (-tos), -rns and the hooks.

``StudyTracker`` is the decision logic, pure and fed with JSON-able values: which folder an
object goes to (DCMTK storescp's names), when a study ends, which files to rename and which
hooks to run with which values. It lives where study state can span associations: in the
supervisor (pre-fork and --fork: workers ask it over ipc), or in the process itself
(--single-process, --inetd).

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
import socket
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Protocol

from storescpd.config.settings import Config
from storescpd.config.commands import command_warnings, split_command
from storescpd.store import journal
from storescpd.store.hooks import HookRequest, HookRunner, OptionInjection, environment, substitute
from storescpd.dicom.sop_classes import file_prefix
from storescpd.store.storage import UnsafeName, fsync_dir
from storescpd.messages import Ask, Event

LOG = logging.getLogger("storescpd.studies")

RECEPTION = "reception"
END_OF_STUDY = "end-of-study"
HOOK_OPTIONS = {RECEPTION: "--exec-on-reception", END_OF_STUDY: "--exec-on-eostudy"}
VALUE_NAMES = {"#a": "calling AE title", "#c": "called AE title", "#r": "peer host name"}
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


# ---- names -------------------------------------------------------------------------------

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


def renamed_prefix(sop_class_uid: str) -> str:
    """The 2-letter kind -rns puts before the number: DCMTK takes the first two characters of
    the file name, i.e. of the modality prefix (CT, MR, UN for UNKNOWN, DX for DXm...)."""
    return file_prefix(sop_class_uid)[:2]


def rename_study(directory: Path, files: list[dict[str, str]], fsync: bool) -> list[tuple[str, str]]:
    """-rns: rename a finished study's files to [prefix][000001...] in reception order.

    Unlike DCMTK (whose rename() replaces), an existing name is never overwritten: numbering
    continues after names already taken (a -su folder that received the study before).
    """
    try:
        taken = set(os.listdir(directory))
    except OSError as exc:
        LOG.warning("cannot rename the files of %s: %s", directory, exc.strerror)
        return []
    done = []
    counter = 1
    for entry in files:
        old = entry["file"]
        while True:
            new = f"{entry['prefix'][:2]}{counter:06d}"
            counter += 1
            if new not in taken:
                break
        try:
            os.rename(directory / old, directory / new)
        except OSError as exc:
            LOG.warning("cannot rename file '%s' to '%s': %s", directory / old, directory / new, exc.strerror)
            continue
        taken.discard(old)
        taken.add(new)
        done.append((old, new))
    if done and fsync:
        fsync_dir(directory)
    journal.moved(directory, done)  # the receipts' paths follow the files
    return done


# ---- the tracker -----------------------------------------------------------------------

@dataclass
class Study:
    uid: str
    folder: str
    last: float  # monotonic time of the last object, or of the end of its last sender
    files: list[dict[str, str]] = field(default_factory=list)
    senders: set[str] = field(default_factory=set)
    superseded: bool = False
    values: dict[str, str] = field(default_factory=dict)  # #a #c #r of its last object
    # Where it began, kept across a reload that changes -od: its files stay there, -rns renames
    # them there and #p names that folder. output_directory is as configured (#p), directory absolute.
    output_directory: str = ""
    directory: str = ""
    root: str = ""  # the absolute output directory: with uid, its key among the open studies

    def as_dict(self) -> dict[str, Any]:
        return {"study_uid": self.uid, "folder": self.folder, "files": len(self.files),
                "senders": sorted(self.senders), "superseded": self.superseded}


@dataclass
class TrackerSettings:
    sort: str | None  # "concurrent", "studyuid", "patientname" or None
    prefix: str
    rename: bool
    timeout: float  # -tos seconds, 0: off
    output_directory: str  # as configured: #p is built from it, as DCMTK does
    on_reception: bool
    on_end_of_study: bool
    journal: bool = False  # the receipt journal hears of each end of study ("ended" action)

    @classmethod
    def from_config(cls, config: Config) -> "TrackerSettings":
        sort = config.sort or [None, ""]
        return cls(sort[0], sort[1] if len(sort) > 1 else "", bool(config.rename_on_eostudy),
                   float(config.eostudy_timeout or 0), str(config.output_directory),
                   bool(config.exec_on_reception), bool(config.exec_on_eostudy),
                   bool(getattr(config, "journal", None)))


class StudyTracker:
    """Study state across associations; every input and output is JSON-able.

    Actions returned: ``{"action": "rename", "folder": f, "files": [{"file", "prefix"}]}`` and
    ``{"action": "hook", "event": "reception"|"end-of-study", "values": {path, file,
    calling_ae, called_ae, peer}}``, in the order to carry them out (rename before the hook).
    A *sender* is one association (its worker's id); "" when there is only ever one at a time
    (one process): then nothing waits for an association to end.
    """

    def __init__(self, settings: TrackerSettings) -> None:
        self.settings = settings
        # One open study per Study Instance UID and output directory: after a reload that changes
        # -od, an association begun before it keeps filling the old folder while new ones fill a
        # new folder; each ends on its own (a study never spans two directories).
        self.open: dict[tuple[str, str], Study] = {}

    def place(self, sender: str, study_uid: str, patient: str, now: float, wall: float,
              output_directory: str | None = None) -> tuple[str, list[dict]]:
        """The folder for an object of ``study_uid`` from ``sender``; the studies this ends.

        ``output_directory`` (as configured) is where the asking process stores: a worker still
        serving an association begun before a reload keeps the old -od.
        """
        if output_directory is None:
            output_directory = self.settings.output_directory
        absolute = os.path.realpath(output_directory)  # as the worker's Path.resolve()
        if not study_uid:
            raise UnsafeName("element StudyInstanceUID (0020,000d) absent or empty in data set")
        if self.settings.sort is None:
            return "", []
        study = self.open.get((study_uid, absolute))
        if study is None:
            folder = self._new_folder(study_uid, patient, wall, absolute)
            study = self.open[(study_uid, absolute)] = Study(
                study_uid, folder, now, output_directory=output_directory,
                directory=os.path.join(absolute, folder), root=absolute)
        if sender:
            study.senders.add(sender)
        study.superseded = False  # an object of it arrived after whatever came before
        for other in self.open.values():
            if other is not study:
                other.superseded = True
                other.senders.discard(sender)  # this association has moved on to another study
        return study.folder, self._end_finished(now)

    def _new_folder(self, study_uid: str, patient: str, wall: float, absolute: str) -> str:
        in_use = {s.folder for s in self.open.values() if s.directory == os.path.join(absolute, s.folder)}
        name = folder_name(self.settings.sort, self.settings.prefix, study_uid, patient, wall)  # type: ignore[arg-type]
        # Two studies beginning in the same millisecond (concurrent senders) get distinct folders.
        while name in in_use and self.settings.sort != "studyuid":
            wall += 0.001
            name = folder_name(self.settings.sort, self.settings.prefix, study_uid, patient, wall)  # type: ignore[arg-type]
        return name

    def stored(self, sender: str, study_uid: str | None, folder: str, file: str, prefix: str,
               values: dict[str, str], now: float, output_directory: str | None = None) -> list[dict]:
        """An object was stored as ``folder``/``file`` (file "" with --ignore) under
        ``output_directory`` (as the storing process has it configured)."""
        actions = []
        root = os.path.realpath(self.settings.output_directory if output_directory is None else output_directory)
        study = self.open.get((study_uid or "", root))
        if study is not None and study.folder == folder:
            study.last = now
            study.values = dict(values)
            if sender:
                study.senders.add(sender)
            if file and not any(f["file"] == file for f in study.files):
                study.files.append({"file": file, "prefix": prefix})
        if self.settings.on_reception:
            if output_directory is None and study is not None and study.folder == folder:
                output_directory = study.output_directory
            path = self._path(folder, output_directory) if file else ""
            actions.append(_hook(RECEPTION, {**values, "path": path, "file": file}))
        return actions

    def sender_done(self, sender: str, now: float) -> list[dict]:
        """The association ``sender`` ended (or its process did)."""
        for study in self.open.values():
            if sender in study.senders:
                study.senders.discard(sender)
                study.last = max(study.last, now)
        return self._end_finished(now)

    def tick(self, now: float) -> list[dict]:
        """-tos: end the studies silent for the timeout."""
        if not self.settings.timeout:
            return []
        actions = []
        for study in list(self.open.values()):
            if not study.senders and now - study.last >= self.settings.timeout:
                LOG.info("end of study %s (no object for %g s): %s", study.uid, self.settings.timeout, study.folder)
                actions.extend(self._end(study))
        return actions

    def _end_finished(self, now: float) -> list[dict]:
        actions = []
        for study in list(self.open.values()):
            if study.superseded and not study.senders:
                LOG.info("end of study %s (an object of another study arrived): %s", study.uid, study.folder)
                actions.extend(self._end(study))
        return actions

    def _end(self, study: Study) -> list[dict]:
        del self.open[(study.uid, study.root)]
        actions: list[dict] = []
        if self.settings.rename and study.files:
            actions.append({"action": "rename", "folder": study.folder, "directory": study.directory,
                            "files": list(study.files)})
        if self.settings.on_end_of_study:
            actions.append(_hook(END_OF_STUDY, {**study.values,
                                                "path": self._path(study.folder, study.output_directory)}))
        if self.settings.journal:
            actions.append({"action": "ended", "study_uid": study.uid})
        return actions

    def _path(self, folder: str, output_directory: str | None = None) -> str:
        """#p: the output directory as configured (when the study began), plus the folder."""
        base = self.settings.output_directory if output_directory is None else output_directory
        return os.path.join(base, folder) if folder else base

    def snapshot(self) -> list[dict[str, Any]]:
        return [s.as_dict() for s in self.open.values()]


def _hook(event: str, values: dict[str, str]) -> dict[str, Any]:
    return {"action": "hook", "event": event, "values": values}


def wanted(config: Config) -> bool:
    """Whether any study or hook option is in use (otherwise nothing here runs)."""
    return bool(config.sort or config.exec_on_reception or config.exec_on_eostudy or config.rename_on_eostudy)


def hook_request(config: Config, action: dict[str, Any]) -> HookRequest | None:
    """The argument vector and environment of a hook action under ``config``."""
    command = config.exec_on_reception if action["event"] == RECEPTION else config.exec_on_eostudy
    if not command:
        return None
    values = dict(action["values"])
    if action["event"] == END_OF_STUDY:
        values.pop("file", None)  # #f is not available at the end of a study (DCMTK leaves it)
    label = HOOK_OPTIONS[action["event"]]
    try:
        argv = substitute(split_command(command), values)
    except OptionInjection as exc:
        program = split_command(command)[0]
        LOG.error("%s not run: the %s (%s) %r would begin the argument %r of %s, which would read "
                  "it as an option; write '--' before that argument (%s -- %s) if %s should accept "
                  "values beginning with '-'", label, VALUE_NAMES.get(exc.placeholder, exc.placeholder),
                  exc.placeholder, exc.value, exc.argument, program, program, exc.argument, program)
        return None
    return HookRequest(label, argv, environment(values, action["event"]))


# ---- carrying the actions out -------------------------------------------------------------

class StudyService:
    """A tracker with the power to act: renames files, starts hooks, times studies out.

    ``can_block`` is False in the supervisor: it never waits for a hook; with -xs the hooks an
    object causes go back to the worker that stored it, which runs them and waits.
    """

    def __init__(self, config: Config, can_block: bool, runner: HookRunner | None = None) -> None:
        self.config = config
        self.tracker = StudyTracker(TrackerSettings.from_config(config))
        self.runner = runner or HookRunner(timeout=config.hook_timeout)
        self.can_block = can_block
        self.deferred: dict[str, list[dict]] = {}

    def reconfigure(self, config: Config) -> None:
        """A reload: open studies keep their folders; later hooks get the new timeout."""
        self.config = config
        self.tracker.settings = TrackerSettings.from_config(config)
        self.runner.timeout = config.hook_timeout

    @property
    def output_dir(self) -> Path:
        return Path(self.config.output_directory).resolve()

    def place(self, sender: str, request: dict[str, Any]) -> dict[str, Any]:
        """Answer a worker's "study_place": {"folder"} or {"error"}."""
        try:
            folder, ended = self.tracker.place(sender, str(request.get("study_uid") or ""),
                                               str(request.get("patient") or ""), time.monotonic(),
                                               float(request.get("wall") or time.time()),
                                               request.get("output_directory"))
        except UnsafeName as exc:
            return {"error": str(exc)}
        if ended:
            # Carried out once this sender's object is stored: DCMTK ends the previous study after
            # storing (and announcing) the first object of the next one.
            self.deferred.setdefault(sender, []).extend(ended)
        return {"folder": folder}

    def stored(self, sender: str, report: dict[str, Any]) -> list[dict]:
        """A worker's "study_stored"; returns the hook actions it must run itself (-xs)."""
        actions = self.tracker.stored(sender, report.get("study_uid"), str(report.get("folder") or ""),
                                      str(report.get("file") or ""), str(report.get("prefix") or ""),
                                      dict(report.get("values") or {}), time.monotonic(),
                                      report.get("output_directory"))
        return self.carry_out(actions + self.deferred.pop(sender, []), report.get("sync", False))

    def sender_done(self, sender: str) -> None:
        actions = self.deferred.pop(sender, []) + self.tracker.sender_done(sender, time.monotonic())
        self.carry_out(actions)

    def tick(self) -> None:
        self.runner.poll()
        self.carry_out(self.tracker.tick(time.monotonic()))

    def carry_out(self, actions: list[dict], hand_back: bool = False) -> list[dict]:
        """Rename here; start hooks here, or run them here (-xs, where blocking is allowed), or
        hand them back to the worker that asked (-xs in the supervisor)."""
        handed_back = []
        for action in actions:
            if action["action"] == "rename":
                rename_study(Path(action["directory"]), action["files"], self.config.fsync)
                continue
            if action["action"] == "ended":
                journal.study_ended(action["study_uid"])
                continue
            if hand_back:
                handed_back.append(action)
                continue
            request = hook_request(self.config, action)
            if request is None:
                continue
            if self.config.exec_sync and self.can_block:
                self.runner.run_sync(request)
            else:
                self.runner.start(request)
        return handed_back


# ---- in the supervisor ------------------------------------------------------------------

class _SupervisorLike(Protocol):
    config: Config
    ask_handlers: dict[str, Callable[..., Any]]
    event_hooks: list[Callable[..., None]]
    tick_hooks: list[Callable[[float], None]]
    children: dict[int, Any]

    def read_child(self, child: Any) -> None: ...


class SupervisorStudies:
    """The supervisor's study service: answers "study_place" and "study_stored", follows
    association ends and child exits, times studies out, starts hooks and has them reaped by
    the supervisor's single reaper (child_exited)."""

    def __init__(self, supervisor: _SupervisorLike) -> None:
        self.supervisor = supervisor
        self.service = StudyService(supervisor.config, can_block=False)
        self._catching_up = False
        supervisor.ask_handlers[Ask.STUDY_PLACE] = self.ask_place
        supervisor.ask_handlers[Ask.STUDY_STORED] = self.ask_stored
        supervisor.event_hooks.append(self.on_event)
        supervisor.tick_hooks.append(self.on_tick)
        log_command_warnings(supervisor.config)

    def ask_place(self, message: dict[str, Any], child: Any) -> dict[str, Any]:
        self._catch_up(child)
        return self.service.place(str(child.pid), message)

    def ask_stored(self, message: dict[str, Any], child: Any) -> dict[str, Any]:
        return {"run": self.service.stored(str(child.pid), {**message, "sync": True})}

    def on_event(self, kind: str, data: dict[str, Any], child: Any) -> None:
        if kind == Event.STUDY_STORED:
            self.service.stored(str(child.pid), data)
        elif kind == Event.ASSOCIATION_ENDED and child is not None:
            self.service.sender_done(str(child.pid))
        elif kind == Event.CHILD_EXITED:
            if not self.service.runner.exited(data["pid"], data["code"]):
                self.service.sender_done(str(data["pid"]))
        elif kind == Event.RELOADED:
            self.service.reconfigure(self.supervisor.config)
            log_command_warnings(self.supervisor.config)

    def on_tick(self, now: float) -> None:
        self.service.tick()

    def _catch_up(self, asking: Any) -> None:
        """Read what the other workers already said before deciding: an object stored by one
        association just before another association's object arrived must count first."""
        if self._catching_up:
            return
        self._catching_up = True
        try:
            for child in list(self.supervisor.children.values()):
                if child is not asking and getattr(child, "channel", None) is not None:
                    self.supervisor.read_child(child)
        finally:
            self._catching_up = False


def install(supervisor: _SupervisorLike) -> SupervisorStudies | None:
    """Give the supervisor its study service when any study or hook option is in use."""
    if not wanted(supervisor.config):
        return None
    return SupervisorStudies(supervisor)


def log_command_warnings(config: Config) -> None:
    for command, option in ((config.exec_on_reception, "--exec-on-reception"),
                            (config.exec_on_eostudy, "--exec-on-eostudy")):
        for warning in command_warnings(command, option):
            LOG.warning("%s", warning)


# ---- in the process that stores (worker side) ---------------------------------------------

class StudyTransport(Protocol):
    def place(self, request: dict[str, Any]) -> dict[str, Any]: ...
    def stored(self, report: dict[str, Any], sync: bool) -> list[dict]: ...


class StudyClient:
    """What the C-STORE handler calls: ``place`` before publishing (the folder), ``stored``
    after (the report that feeds -rns, the end of study and the hooks)."""

    def __init__(self, config: Config, transport: StudyTransport, runner: HookRunner | None = None) -> None:
        self.config = config
        self.transport = transport
        self.runner = runner or HookRunner(timeout=config.hook_timeout)
        self._placed: tuple[str, str] | None = None
        self._host_cache: dict[str, str] = {}

    def place(self, ctx: Any, ids: Any) -> str | None:
        """The study folder for the object (None: no sorting); raises UnsafeName to refuse it."""
        self._placed = None
        if not self.config.sort:
            return None
        uid = ids.study_instance_uid or ""
        if not uid:
            raise UnsafeName("element StudyInstanceUID (0020,000d) absent or empty in data set")
        patient = ""
        if self.config.sort[0] == "patientname":
            patient = patient_folder_part(ids.patient_name, ids.specific_character_set)
        reply = self.transport.place({"study_uid": uid, "patient": patient, "wall": time.time(),
                                      "output_directory": str(self.config.output_directory)})
        if not reply or reply.get("error"):
            raise UnsafeName((reply or {}).get("error") or "no study folder (supervisor unavailable)")
        folder = reply["folder"]
        if folder:
            try:
                ensure_folder(ctx.output_dir, folder, self.config.fsync)
            except OSError as exc:  # DCMTK answers 0xC000 when it cannot create the folder
                raise UnsafeName(f"could not create subdirectory for study: {ctx.output_dir / folder}: "
                                 f"{exc.strerror or exc}") from None
        self._placed = (uid, folder)
        return folder or None

    def stored(self, ctx: Any, path: Path | None, sop_class: str) -> None:
        """Report a stored object (path None: --ignore); with -xs, run the hooks it causes.
        Never raises: nothing here may change the status of the C-STORE."""
        try:
            self._stored(ctx, path, sop_class)
        except Exception:
            LOG.exception("study bookkeeping or hook failed after storing %s", path)

    def _stored(self, ctx: Any, path: Path | None, sop_class: str) -> None:
        uid, folder = self._placed or (None, "")
        self._placed = None
        report = {
            "study_uid": uid, "folder": folder, "file": path.name if path else "",
            "prefix": renamed_prefix(sop_class), "values": self.values(ctx),
            "output_directory": str(self.config.output_directory),
        }
        sync = bool(self.config.exec_sync)
        for action in self.transport.stored(report, sync):
            request = hook_request(self.config, action)
            if request is not None:
                self.runner.run_sync(request)

    def values(self, ctx: Any) -> dict[str, str]:
        return {"calling_ae": ctx.calling_ae, "called_ae": ctx.called_ae, "peer": self._host(ctx.peer)}

    def _host(self, peer: str) -> str:
        """#r: the peer's host name (DCMTK looks it up unless -dhl), else its address."""
        host = peer.rsplit(":", 1)[0].strip("[]") if peer else ""
        if not host or self.config.disable_host_lookup:
            return host
        if host not in self._host_cache:
            try:
                self._host_cache[host] = socket.gethostbyaddr(host)[0]
            except (OSError, UnicodeError):
                self._host_cache[host] = host
        return self._host_cache[host]


class RemoteStudies:
    """Transport of a worker: the supervisor decides."""

    def __init__(self, channel: Any) -> None:
        self.channel = channel

    def place(self, request: dict[str, Any]) -> dict[str, Any]:
        try:
            return self.channel.ask(Ask.STUDY_PLACE, request)
        except (OSError, ConnectionError) as exc:
            return {"error": f"no study folder: supervisor unavailable ({exc})"}

    def stored(self, report: dict[str, Any], sync: bool) -> list[dict]:
        if not sync:
            self.channel.emit(Event.STUDY_STORED, report)
            return []
        try:
            reply = self.channel.ask(Ask.STUDY_STORED, report)
        except (OSError, ConnectionError) as exc:
            LOG.error("cannot report a stored object to the supervisor: %s", exc)
            return []
        return list((reply or {}).get("run") or [])


def worker_client(config: Config, channel: Any) -> StudyClient | None:
    """The study client of a worker process (None when no study or hook option is in use)."""
    return StudyClient(config, RemoteStudies(channel)) if wanted(config) else None


class LocalStudies:
    """Transport and service in one process (--single-process, --inetd): the tracker is here,
    a small timer thread ends silent studies (-tos) and reaps finished hooks. One association
    at a time: the sender is not tracked, -tos counts from the last object."""

    SENDER = ""
    TICK_SECONDS = 0.5

    def __init__(self, config: Config) -> None:
        self.service = StudyService(config, can_block=True)
        self.lock = threading.Lock()
        self.client = StudyClient(config, self, self.service.runner)
        self._timer: threading.Thread | None = None
        log_command_warnings(config)

    def place(self, request: dict[str, Any]) -> dict[str, Any]:
        with self.lock:
            return self.service.place(self.SENDER, request)

    def stored(self, report: dict[str, Any], sync: bool) -> list[dict]:
        with self.lock:
            self.service.stored(self.SENDER, report)
        return []

    def start_timer(self) -> None:
        if self._timer is None:
            self._timer = threading.Thread(target=self._tick_forever, name="studies", daemon=True)
            self._timer.start()

    def tick(self) -> None:
        with self.lock:
            self.service.runner.reap()
            self.service.tick()

    def _tick_forever(self) -> None:
        while True:
            time.sleep(self.TICK_SECONDS)
            try:
                self.tick()
            except Exception:  # the timer must outlive one bad turn
                LOG.exception("study timer")


def local_studies(config: Config) -> LocalStudies | None:
    """The in-process study service (None when no study or hook option is in use)."""
    if not wanted(config):
        return None
    local = LocalStudies(config)
    local.start_timer()
    return local


# The study client of this process, which every association's StoreContext uses: a worker's
# (set when it starts) or the in-process one (--single-process, --inetd).
_process_client: StudyClient | None = None


def use_worker_client(config: Config, channel: Any) -> None:
    global _process_client
    _process_client = worker_client(config, channel)


def use_local(config: Config) -> LocalStudies | None:
    global _process_client
    local = local_studies(config)
    _process_client = local.client if local else None
    return local


def process_client() -> StudyClient | None:
    return _process_client
