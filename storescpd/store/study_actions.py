"""Carrying out the tracker's actions: the hook each runs, and where the -rns rename happens.

A reception action runs -xcr; an end-of-study action renames the study's files (-rns), then runs
-xcs. In the supervisor (``child_request``) an action is one child process, started and never
waited for: the rename is the prelude of the -xcs hook in that child, so the hook starts once the
rename is durable. A process that may block (a worker running -xs, the single process) carries
the actions out itself (``carry_out_here``).
"""

from __future__ import annotations

from pathlib import Path

from storescpd.config.commands import split_command
from storescpd.config.settings import Config
from storescpd.store import journal
from storescpd.store.hooks import HookRequest, HookRunner, environment, substitute
from storescpd.store.study_rename import rename_prelude, rename_study
from storescpd.store.study_tracker import END_OF_STUDY, RECEPTION, Action

HOOK_OPTIONS = {RECEPTION: "--exec-on-reception", END_OF_STUDY: "--exec-on-eostudy"}
RENAME_OPTION = "--rename-on-eostudy"


def hook_request(config: Config, action: Action) -> HookRequest | None:
    """The argument vector and environment of the action's hook under ``config`` (None: no hook)."""
    command = config.exec_on_reception if action["action"] == RECEPTION else config.exec_on_eostudy
    if not command:
        return None
    values = _values(action)
    return HookRequest(HOOK_OPTIONS[action["action"]], substitute(split_command(command), values),
                       environment(values, action["action"]))


def _values(action: Action) -> dict[str, str]:
    values = dict(action["values"])
    if action["action"] == END_OF_STUDY:
        values.pop("file", None)  # #f is not available at the end of a study (DCMTK leaves it)
    return values


def child_request(config: Config, action: Action) -> HookRequest | None:
    """The action as one child of the supervisor: the hook, with the rename as its prelude."""
    hook = hook_request(config, action)
    if action["action"] != END_OF_STUDY or not action["files"]:
        return hook
    request = hook or HookRequest(RENAME_OPTION, [], environment(_values(action), END_OF_STUDY))
    request.prelude = rename_prelude(action["directory"], action["files"], config.fsync, config.log_level,
                                     config.log_config, request.label, request.argv, config.journal)
    return request


def carry_out_here(config: Config, runner: HookRunner, actions: list[Action], wait: bool) -> None:
    """Rename in this process, then run each hook to its end (``wait``, -xs) or start it."""
    for action in actions:
        if action["action"] == END_OF_STUDY:
            if action["files"]:
                renames = rename_study(action["directory"], action["files"], config.fsync)
                journal.moved(Path(action["directory"]), renames)  # the receipts' paths follow the files
            journal.study_ended(action["study_uid"])
        request = hook_request(config, action)
        if request is None:
            continue
        if wait:
            runner.run_sync(request)
        else:
            runner.start(request)
