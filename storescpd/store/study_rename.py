"""-rns: an ended study's files renamed to [kind][000001...], here or in the end-of-study child.

A process that may block (a worker running -xs, the single process) calls ``rename_study``. The
supervisor never does: it starts this module as a program (``python -m
storescpd.store.study_rename``), the prelude of the study's -xcs hook (``hooks.Prelude``). The
child reads what to rename on stdin, renames, makes the folder durable, and only then becomes
the hook (exec: same pid, output pipe, process group and timeout, reaped by the supervisor's
one reaper), or exits when no -xcs is configured. The imports stay light: every ended study
starts a fresh interpreter.
"""

from __future__ import annotations

import errno
import itertools
import json
import logging
import os
import signal
import sys
from pathlib import Path
from typing import Iterator, TypedDict

from storescpd.config.logs import setup_logging
from storescpd.store import journal
from storescpd.store.hooks import PRELUDE_BLOCKED_SIGNALS, PRELUDE_OUTPUT_FD, Prelude

LOG = logging.getLogger("storescpd.studies")

JOB_MODULE = "storescpd.store.study_rename"  # this module, as ``python -m`` names it
EXIT_CANNOT_EXECUTE = 127  # the shell's code for a command that cannot be executed
_NO_HARD_LINKS = (errno.EPERM, errno.EOPNOTSUPP)  # link(2) on a file system without them


class RenamedFile(TypedDict):
    file: str  # its name as stored
    prefix: str  # the 2-letter kind -rns numbers it under


def rename_study(directory: str, files: list[RenamedFile], fsync: bool) -> list[tuple[str, str]]:
    """Rename a finished study's files to [prefix][000001...] in reception order.

    Unlike DCMTK (whose rename() replaces), an existing name is never overwritten: numbering
    continues after names already taken (a -su folder that received the study before), and
    each new name is claimed with link(2), so another rename running in the same folder cannot
    take it either.
    """
    try:
        folder = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as exc:
        LOG.warning("cannot rename the files of %s: %s", directory, exc.strerror)
        return []
    try:
        taken = set(os.listdir(folder))
        numbers = itertools.count(1)
        done = []
        for entry in files:
            new = _rename(folder, directory, entry, numbers, taken)
            if new is not None:
                done.append((entry["file"], new))
        if done and fsync:
            os.fsync(folder)
        return done
    finally:
        os.close(folder)


def _rename(folder: int, directory: str, entry: RenamedFile, numbers: Iterator[int], taken: set[str]) -> str | None:
    """The new name of ``entry`` (the next free number), or None (logged) if it cannot be renamed."""
    old = entry["file"]
    while True:
        new = f"{entry['prefix'][:2]}{next(numbers):06d}"
        if new in taken:
            continue
        taken.add(new)
        try:
            claimed = _claim(folder, old, new)
        except OSError as exc:
            LOG.warning("cannot rename file '%s' to '%s': %s", os.path.join(directory, old),
                        os.path.join(directory, new), exc.strerror)
            return None
        if claimed:
            taken.discard(old)
            return new


def _claim(folder: int, old: str, new: str) -> bool:
    """Move ``old`` to ``new`` unless ``new`` exists; False if it does."""
    try:
        os.link(old, new, src_dir_fd=folder, dst_dir_fd=folder, follow_symlinks=False)
    except FileExistsError:
        return False
    except OSError as exc:
        if exc.errno not in _NO_HARD_LINKS:
            raise
        if _exists(folder, new):
            return False
        os.rename(old, new, src_dir_fd=folder, dst_dir_fd=folder)  # checked, not atomic: no links here
        return True
    os.unlink(old, dir_fd=folder)
    return True


def _exists(folder: int, name: str) -> bool:
    try:
        os.stat(name, dir_fd=folder, follow_symlinks=False)
    except FileNotFoundError:
        return False
    return True


def rename_prelude(directory: str, files: list[RenamedFile], fsync: bool, log_level: str,
                   log_config: str | None, label: str, hook: list[str], journal_path: str | None = None) -> Prelude:
    """The end-of-study child's program and input: rename, then execute ``hook`` (if any)."""
    spec = {"directory": directory, "files": files, "fsync": fsync, "log_level": log_level,
            "log_config": log_config, "label": label, "hook": hook, "journal": journal_path}
    return Prelude([sys.executable, "-m", JOB_MODULE], json.dumps(spec).encode())


def main() -> int:
    """The end-of-study child: rename, then become the hook."""
    for signum in PRELUDE_BLOCKED_SIGNALS:  # spawned with them blocked: a pending stop is dropped
        signal.signal(signum, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_SETMASK, ())
    spec = json.load(sys.stdin)
    setup_logging(spec["log_level"], spec["log_config"])
    renames = rename_study(spec["directory"], spec["files"], spec["fsync"])
    if spec.get("journal"):  # the receipts' paths follow the files (spooled before the hook starts)
        journal.use(journal.Recorder(spec["journal"]))
        journal.moved(Path(spec["directory"]), renames)
    if not spec["hook"]:
        return 0
    return _become_hook(spec["hook"], spec["label"])


def _become_hook(argv: list[str], label: str) -> int:
    """Execute the hook as hooks.spawn would start it; returns only if it cannot be executed."""
    saved_stderr = os.dup(2)
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    os.dup2(PRELUDE_OUTPUT_FD, 1)
    os.dup2(PRELUDE_OUTPUT_FD, 2)
    os.close(PRELUDE_OUTPUT_FD)
    # Python ignores SIGPIPE and SIGXFSZ, and an ignored signal stays ignored across exec.
    for signum in (*PRELUDE_BLOCKED_SIGNALS, signal.SIGPIPE, signal.SIGXFSZ):
        signal.signal(signum, signal.SIG_DFL)
    try:
        os.execvp(argv[0], argv)
    except OSError as exc:
        os.dup2(saved_stderr, 2)
        LOG.error("cannot execute %s command %r: %s", label, argv[0], exc.strerror or exc)
    return EXIT_CANNOT_EXECUTE


if __name__ == "__main__":
    sys.exit(main())
