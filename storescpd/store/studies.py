"""Study folders and hooks as the process that stores sees them: ask for the folder, report the object.

Every association's ``StoreContext`` uses this process's ``StudyClient`` (``process_client``):
a worker's asks the supervisor (``RemoteStudies``); the single process and --inetd keep the
study service here (``LocalStudies``). The decisions are ``study_tracker``'s, the names
``study_folders``', the hooks and renames ``study_actions``' (docs/hooks.md).
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from pathlib import Path
from typing import Any, Protocol

from storescpd.config.settings import Config
from storescpd.messages import Ask, Event
from storescpd.store.hooks import HookRunner
from storescpd.store.storage import UnsafeName
from storescpd.store.study_actions import carry_out_here
from storescpd.store.study_folders import ensure_folder, patient_folder_part, renamed_prefix
from storescpd.store.study_service import StudyService, log_command_warnings
from storescpd.store.study_tracker import Action

LOG = logging.getLogger("storescpd.studies")


def wanted(config: Config) -> bool:
    """Whether any study or hook option is in use (otherwise nothing here runs)."""
    return bool(config.sort or config.exec_on_reception or config.exec_on_eostudy or config.rename_on_eostudy)


class StudyTransport(Protocol):
    def place(self, request: dict[str, Any]) -> dict[str, Any]: ...
    def stored(self, report: dict[str, Any], sync: bool) -> list[Action]: ...


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
        reply = self.transport.place({"study_uid": uid, "patient": patient, "wall": time.time(), **self._where(ctx)})
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

    def _where(self, ctx: Any) -> dict[str, str]:
        """Where this process stores: -od as configured (#p) and resolved (the tracker touches no file)."""
        return {"output_directory": str(self.config.output_directory), "root": str(ctx.output_dir)}

    def stored(self, ctx: Any, path: Path | None, sop_class: str) -> None:
        """Report a stored object (path None: --ignore); with -xs, carry out what it causes.
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
            "prefix": renamed_prefix(sop_class), "values": self.values(ctx), **self._where(ctx),
        }
        actions = self.transport.stored(report, bool(self.config.exec_sync))
        carry_out_here(self.config, self.runner, actions, wait=True)

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

    def stored(self, report: dict[str, Any], sync: bool) -> list[Action]:
        """Report the object; with ``sync`` (-xs) the reply is what this worker must carry out."""
        if not sync:
            self.channel.emit(Event.STUDY_STORED, report)
            return []
        try:
            reply = self.channel.ask(Ask.STUDY_STORED, report)
        except (OSError, ConnectionError) as exc:
            LOG.error("cannot report a stored object to the supervisor: %s", exc)
            return []
        return list((reply or {}).get("run") or [])


class LocalStudies:
    """Transport and service in one process (--single-process, --inetd): the tracker is here,
    a small timer thread ends silent studies (-tos) and reaps finished hooks. One association
    at a time: the sender is not tracked, -tos counts from the last object."""

    SENDER = ""
    TICK_SECONDS = 0.5

    def __init__(self, config: Config) -> None:
        self.service = StudyService(config, in_supervisor=False)
        self.lock = threading.Lock()
        self.client = StudyClient(config, self, self.service.runner)
        log_command_warnings(config)

    def place(self, request: dict[str, Any]) -> dict[str, Any]:
        with self.lock:
            return self.service.place(self.SENDER, request)

    def stored(self, report: dict[str, Any], sync: bool) -> list[Action]:
        with self.lock:
            self.service.stored(self.SENDER, report)  # carried out there, waited for with -xs
        return []

    def start_timer(self) -> None:
        threading.Thread(target=self._tick_forever, name="studies", daemon=True).start()

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


# The study client of this process, which every association's StoreContext uses: a worker's
# (set when it starts) or the in-process one (--single-process, --inetd).
_process_client: StudyClient | None = None


def use_worker_client(config: Config, channel: Any) -> None:
    """In a worker: folders and hooks come from the supervisor (nothing when no option asks)."""
    global _process_client
    _process_client = StudyClient(config, RemoteStudies(channel)) if wanted(config) else None


def use_local(config: Config) -> LocalStudies | None:
    """In the single process or --inetd: the study service lives here (None when no option asks)."""
    global _process_client
    local = LocalStudies(config) if wanted(config) else None
    if local is not None:
        local.start_timer()
    _process_client = local.client if local else None
    return local


def process_client() -> StudyClient | None:
    return _process_client
