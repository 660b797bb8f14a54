"""The study service: a tracker with the power to act, and its place in the supervisor.

``StudyService`` answers "where does this object go" and "this object is stored", follows
association ends and times studies out, and carries out what the tracker decides
(``study_actions``). In the supervisor (``SupervisorStudies``) it never waits: every hook and
every rename is a child process that the supervisor's one reaper reaps, and with -xs the actions
an object causes go back to the worker that stored it, which carries them out and waits.
"""

from __future__ import annotations

import logging
import time
from typing import Any, Callable, Mapping, Protocol

from storescpd.config.commands import command_warnings
from storescpd.config.settings import Config
from storescpd.messages import Ask, Event
from storescpd.store import journal
from storescpd.store.hooks import HookRunner
from storescpd.store.storage import UnsafeName
from storescpd.store.study_actions import carry_out_here, child_request
from storescpd.store.study_tracker import END_OF_STUDY, Action, StudyTracker, TrackerSettings

LOG = logging.getLogger("storescpd.studies")


class StudyService:
    """A tracker that renames files, runs hooks and times studies out.

    ``in_supervisor``: each action is a child process, started and never waited for; otherwise
    (the single process) actions are carried out here, hooks waited for with -xs.
    """

    def __init__(self, config: Config, in_supervisor: bool, runner: HookRunner | None = None) -> None:
        self.config = config
        self.tracker = StudyTracker(TrackerSettings.from_config(config))
        self.runner = runner or HookRunner(timeout=config.hook_timeout)
        self.in_supervisor = in_supervisor
        self.deferred: dict[str, list[Action]] = {}

    def reconfigure(self, config: Config) -> None:
        """A reload: open studies keep their folders; later hooks get the new timeout."""
        self.config = config
        self.tracker.settings = TrackerSettings.from_config(config)
        self.runner.timeout = config.hook_timeout

    def place(self, sender: str, request: Mapping[str, Any]) -> dict[str, Any]:
        """Answer a "study_place" ({study_uid, patient, wall, output_directory, root}): {"folder"} or {"error"}."""
        try:
            folder, ended = self.tracker.place(sender, str(request.get("study_uid") or ""),
                                               str(request.get("patient") or ""), time.monotonic(),
                                               float(request["wall"]), request["output_directory"], request["root"])
        except UnsafeName as exc:
            return {"error": str(exc)}
        if ended:
            # Carried out once this sender's object is stored: DCMTK ends the previous study after
            # storing (and announcing) the first object of the next one.
            self.deferred.setdefault(sender, []).extend(ended)
        return {"folder": folder}

    def stored(self, sender: str, report: Mapping[str, Any], hand_back: bool = False) -> list[Action]:
        """A "study_stored" report; with ``hand_back`` (-xs) returns the actions for the sender to carry out."""
        actions = self.tracker.stored(sender, report.get("study_uid"), str(report.get("folder") or ""),
                                      str(report.get("file") or ""), str(report.get("prefix") or ""),
                                      dict(report.get("values") or {}), time.monotonic(),
                                      report["output_directory"], report["root"])
        actions += self.deferred.pop(sender, [])
        if hand_back:
            return actions
        self.carry_out(actions)
        return []

    def sender_done(self, sender: str) -> None:
        self.carry_out(self.deferred.pop(sender, []) + self.tracker.sender_done(sender, time.monotonic()))

    def tick(self) -> None:
        self.runner.poll()
        self.carry_out(self.tracker.tick(time.monotonic()))

    def carry_out(self, actions: list[Action]) -> None:
        if not self.in_supervisor:
            carry_out_here(self.config, self.runner, actions, wait=bool(self.config.exec_sync))
            return
        for action in actions:
            if action["action"] == END_OF_STUDY:
                journal.study_ended(action["study_uid"])  # the renames are the child's to journal
            request = child_request(self.config, action)
            if request is not None:
                self.runner.start(request)


class _SupervisorLike(Protocol):
    config: Config
    ask_handlers: dict[str, Callable[..., Any]]
    event_hooks: list[Callable[..., None]]
    tick_hooks: list[Callable[[float], None]]
    children: Mapping[int, Any]  # pid -> a child with its ``channel`` (None once closed)

    def read_child(self, child: Any) -> None: ...


class SupervisorStudies:
    """The supervisor's study service: answers "study_place" and "study_stored", follows
    association ends and child exits, times studies out, starts hooks and renames as children
    and has them reaped by the supervisor's single reaper (child_exited)."""

    def __init__(self, supervisor: _SupervisorLike) -> None:
        self.supervisor = supervisor
        self.service = StudyService(supervisor.config, in_supervisor=True)
        self._catching_up = False
        supervisor.ask_handlers[Ask.STUDY_PLACE] = self.ask_place
        supervisor.ask_handlers[Ask.STUDY_STORED] = self.ask_stored
        supervisor.event_hooks.append(self.on_event)
        supervisor.tick_hooks.append(self.on_tick)
        log_command_warnings(supervisor.config)

    def ask_place(self, message: Mapping[str, Any], child: Any) -> dict[str, Any]:
        self._catch_up(child)
        return self.service.place(str(child.pid), message)

    def ask_stored(self, message: Mapping[str, Any], child: Any) -> dict[str, Any]:
        return {"run": self.service.stored(str(child.pid), message, hand_back=True)}

    def on_event(self, kind: str, data: Mapping[str, Any], child: Any) -> None:
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
                if child is not asking and child.channel is not None:
                    self.supervisor.read_child(child)
        finally:
            self._catching_up = False


def log_command_warnings(config: Config) -> None:
    for command, option in ((config.exec_on_reception, "--exec-on-reception"),
                            (config.exec_on_eostudy, "--exec-on-eostudy")):
        for warning in command_warnings(command, option):
            LOG.warning("%s", warning)
