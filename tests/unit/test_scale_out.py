"""What several instances need of one instance: a drain that stays ready-for-nothing before it closes,
and staging leftovers that only their own host removes."""

from __future__ import annotations

import functools
import os
import selectors
import socket
from pathlib import Path
from typing import Any

from storescpd.config import settings as cfg
from storescpd.control.status import readiness
from storescpd.daemon import supervisor as sup
from storescpd.daemon.children import Child, remove_staging_leftovers
from storescpd.store.storage import STAGING_DIR_NAME, STAGING_HOST, StagingFile, prepare_staging_dir


def make(tmp_path: Path, listener: socket.socket, **overrides: Any) -> sup.Supervisor:
    # --fork: the supervisor forks nothing until a connection is ready, so turn() runs here as is
    values = {**cfg.defaults(), "output_directory": str(tmp_path), "process_mode": "fork", **overrides}
    s = sup.Supervisor(cfg.Config(values), {"dicom": [listener]}, reload_config=lambda: cfg.Config(values))
    listener.setblocking(False)
    s.selector.register(listener, selectors.EVENT_READ, functools.partial(s.pending.accept, role="dicom"))  # as run()
    return s


def test_sigterm_with_a_drain_delay_is_unready_first_and_closes_later(tmp_path: Path) -> None:
    listener = socket.create_server(("127.0.0.1", 0))
    s = make(tmp_path, listener, drain_delay=30)
    try:
        assert readiness(s)["ready"] is True
        s.handle_term()
        s.turn()
        answer = readiness(s)
        assert answer["ready"] is False and answer["checks"]["accepting"] is False
        assert answer["checks"]["listening"] is True and not s.stopping and listener.fileno() >= 0
        assert s.draining_until is not None
        s.draining_until -= 30  # the delay is over
        s.turn()
        assert s.stopping == "graceful" and listener.fileno() == -1 and not s.listeners
    finally:
        listener.close()


def test_a_second_sigterm_does_not_wait_and_no_delay_closes_at_once(tmp_path: Path) -> None:
    for delay, terms in ((30, 2), (0, 1)):
        listener = socket.create_server(("127.0.0.1", 0))
        s = make(tmp_path, listener, drain_delay=delay)
        for _ in range(terms):
            s.handle_term()
        assert s.stopping == "graceful" and listener.fileno() == -1
        listener.close()


def test_staging_leftovers_of_another_host_are_never_removed(tmp_path: Path) -> None:
    staging = prepare_staging_dir(tmp_path)
    own = StagingFile(staging)
    assert own.path.name.endswith(f".{STAGING_HOST}.part")
    dead = 2 ** 22 + 1  # above pid_max's default: no process of this host has it
    mine, legacy, theirs = (staging / f"{dead}-1-0.{STAGING_HOST}.part", staging / f"{dead}-2-0.part",
                            staging / f"{dead}-3-0.other-host.example.part")
    for path in (mine, legacy, theirs):
        path.write_bytes(b"partial")
    prepare_staging_dir(tmp_path)
    assert not mine.exists() and not legacy.exists()
    assert theirs.exists() and own.path.exists()  # another host's transfer, and our live one
    (staging / f"{dead}-4-0.{STAGING_HOST}.part").write_bytes(b"partial")
    remove_staging_leftovers(Child(pid=dead, kind="worker", generation=0, output_directory=str(tmp_path)))
    assert sorted(p.name for p in (tmp_path / STAGING_DIR_NAME).iterdir()) == sorted([own.path.name, theirs.name])
    own.discard()
    assert os.listdir(staging) == [theirs.name]
