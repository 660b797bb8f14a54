"""The supervisor's decisions with os.fork / os.waitpid / os.kill replaced by tables (no processes).

Counts are read from the metrics (``storescpd.control.metrics``), the one count users see: the
supervisor keeps none of its own."""

from __future__ import annotations

import os
import selectors
import signal
import socket
import time
from pathlib import Path
from typing import Any

import pytest

from storescpd.config import settings as cfg
from storescpd.control.metrics import Metrics
from storescpd.daemon import children, ipc, pending
from storescpd.daemon import supervisor as sup
from storescpd.daemon.children import Child
from storescpd.daemon.pending import Pending
from storescpd.daemon.worker import WORKER_BOOT_ERROR


class FakeOS:
    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.next_pid = 1000
        self.exits: list[tuple[int, int]] = []  # (pid, exit code) waitpid will report
        self.kills: list[tuple[int, int]] = []
        monkeypatch.setattr(sup.os, "fork", self.fork)
        monkeypatch.setattr(sup.os, "waitpid", self.waitpid)
        monkeypatch.setattr(sup.os, "kill", self.kill)

    def fork(self) -> int:
        self.next_pid += 1
        return self.next_pid

    def waitpid(self, pid: int, options: int) -> tuple[int, int]:
        if not self.exits:
            return (0, 0)
        pid, code = self.exits.pop(0)
        return (pid, (code & 0xFF) << 8)

    def kill(self, pid: int, sig: int) -> None:
        self.kills.append((pid, sig))


def make(tmp_path: Path, **overrides: Any) -> sup.Supervisor:
    values = {**cfg.defaults(), "output_directory": str(tmp_path), "workers": 3, **overrides}
    return sup.Supervisor(cfg.Config(values), {}, reload_config=lambda: cfg.Config(values))


def counted(s: sup.Supervisor) -> Metrics:
    """The metrics, attached as the control plane attaches them."""
    return Metrics(s).attach()


def workers(s: sup.Supervisor) -> list[int]:
    return sorted(pid for pid, c in s.children.items() if c.kind == "worker")


def fork_child_with_channel(s: sup.Supervisor, pid: int) -> tuple[Child, socket.socket]:
    """A --fork child as the supervisor knows it, and the child's end of its channel."""
    ours, theirs = ipc.channel_pair()
    ours.setblocking(False)
    child = s.children.add(Child(pid=pid, kind="fork", generation=s.generation, channel=ours,
                                 output_directory=str(s.config.output_directory)))
    return child, theirs


def test_pool_is_filled_and_refilled(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake = FakeOS(monkeypatch)
    s = make(tmp_path)
    metrics = counted(s)
    s.manage_workers()
    assert workers(s) == [1001, 1002, 1003]
    fake.exits = [(1002, 0)]
    s.reap_children()
    assert workers(s) == [1001, 1003]
    s.manage_workers()
    assert workers(s) == [1001, 1003, 1004]
    assert metrics.value("storescpd_worker_restarts_total") == 1


def test_worker_that_cannot_boot_stops_reforking(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake = FakeOS(monkeypatch)
    s = make(tmp_path)
    s.manage_workers()
    fake.exits = [(1001, WORKER_BOOT_ERROR)]
    s.reap_children()
    assert s.boot_failed


def test_crash_loop_guard(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake = FakeOS(monkeypatch)
    s = make(tmp_path, workers=1)
    for _ in range(children.CRASH_LIMIT):
        s.manage_workers()
        (pid,) = workers(s)
        fake.exits = [(pid, 1)]
        s.reap_children()
    s.manage_workers()
    assert workers(s) == []  # no fork while crashing in a loop


def test_unknown_children_are_reaped_too(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake = FakeOS(monkeypatch)
    s = make(tmp_path)
    seen: list[int] = []
    s.event_hooks.append(lambda kind, data, child: seen.append(data["pid"]) if kind == "child_exited" else None)
    fake.exits = [(4242, 0)]  # e.g. a hook process
    s.reap_children()
    assert seen == [4242]


def test_failed_reload_keeps_the_running_configuration(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    FakeOS(monkeypatch)
    s = make(tmp_path)

    def broken() -> cfg.Config:
        raise cfg.ConfigError("invalid configuration: workers must be at least 1, not 0")

    s.reload_config = broken
    before = s.config
    result = s.reload()
    assert result["result"] == "failure" and "workers must be at least 1" in result["message"]
    assert s.config is before and s.generation == 0


def test_reload_retires_idle_old_workers_and_keeps_busy_ones(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake = FakeOS(monkeypatch)
    s = make(tmp_path)
    s.manage_workers()
    s.children[1001].busy = True
    s.reload_config = lambda: s.config.replace(aetitle="NEW", port=999, tls_port=2762, api="127.0.0.1:9")
    result = s.reload()
    assert result["result"] == "success"
    assert s.config.aetitle == "NEW"
    # settings the table marks reloadable=False need a restart: the running values stay
    assert (s.config.port, s.config.tls_port, s.config.api) == (None, None, None)
    assert "(tls_port, port, api need a restart)" in result["message"]
    terminated = {pid for pid, sig in fake.kills if sig == signal.SIGTERM}
    assert terminated == {1002, 1003}
    assert sorted(c.generation for c in s.children.values()) == [0, 0, 0, 1, 1, 1]
    # the busy old worker is retired once it reports idle
    s.on_event("idle", {"served": 1}, s.children[1001])
    assert (1001, signal.SIGTERM) in fake.kills


def test_admission_over_the_limit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    FakeOS(monkeypatch)
    s = make(tmp_path, max_associations=1)
    metrics = counted(s)
    s.manage_workers()
    first, second = s.children[1001], s.children[1002]
    s.on_event("association_requested", {"peer": "a"}, first)
    assert s._ask_admit({}, first) is None
    s.on_event("association_requested", {"peer": "b"}, second)
    refusal = s._ask_admit({}, second)
    assert "max_associations = 1" in refusal
    s.on_event("association_ended", {"outcome": "rejected", "reject_reason": refusal}, second)  # the worker says so
    assert metrics.value("storescpd_associations_rejected_total", reason="local_limit") == 1
    assert s._ask_admit({}, first) is None  # the refused one no longer counts


def test_a_killed_worker_counts_its_association_as_aborted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake = FakeOS(monkeypatch)
    s = make(tmp_path)
    metrics = counted(s)
    s.manage_workers()
    staging = tmp_path / ".storescpd-staging"
    staging.mkdir()
    (staging / "1001-1-0.part").write_bytes(b"partial")
    s.on_event("association_requested", {"peer": "a"}, s.children[1001])
    fake.exits = [(1001, -signal.SIGKILL & 0xFF)]
    s.reap_children()
    assert len(s.associations) == 0
    assert metrics.value("storescpd_associations_total", outcome="aborted") == 1
    assert not (staging / "1001-1-0.part").exists()
    assert os.path.isdir(staging)


def test_silent_connections_are_bounded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    FakeOS(monkeypatch)
    monkeypatch.setattr(pending, "MAX_PENDING", 3)
    s = make(tmp_path)
    metrics = counted(s)
    listener = loopback_listener()
    clients = [socket.create_connection(listener.getsockname()) for _ in range(5)]
    try:
        deadline = time.monotonic() + 5
        while len(s.pending.waiting) < 3 and time.monotonic() < deadline:
            s.pending.accept(listener, "dicom")
        s.pending.accept(listener, "dicom")
        assert len(s.pending.waiting) == 3  # 5 accepted, the 2 oldest closed
        assert metrics.value("storescpd_connections_timed_out_total") == 2
        clients[0].settimeout(5)
        assert clients[0].recv(1) == b""  # the oldest was closed
    finally:
        for c in clients:
            c.close()
        s.pending.close_all()
        listener.close()


def loopback_listener() -> socket.socket:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    listener.setblocking(False)
    return listener


def test_a_connection_that_ends_inside_its_request_is_closed_at_once(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """Part of an A-ASSOCIATE-RQ, then end of file: closed in the turn that sees it, not at -ta."""
    FakeOS(monkeypatch)
    s = make(tmp_path)
    listener = loopback_listener()
    client = socket.create_connection(listener.getsockname())
    try:
        client.sendall(bytes([0x01, 0x00]) + (200).to_bytes(4, "big") + b"\x00\x01")  # 8 of 206 bytes
        deadline = time.monotonic() + 5
        while not s.pending.waiting and time.monotonic() < deadline:
            s.pending.accept(listener, "dicom")
        (waiting,) = s.pending.waiting.values()
        s.pending.readable(waiting.sock)
        assert s.pending.waiting and not s.pending.ready  # incomplete: it waits for the rest
        client.close()
        deadline = time.monotonic() + 5
        while s.pending.waiting and time.monotonic() < deadline:
            for key, _mask in s.selector.select(0.1):
                key.data(key.fileobj)
        assert not s.pending.waiting and not s.pending.ready
        assert waiting.sock.fileno() == -1  # closed, not handed to a worker
    finally:
        client.close()
        s.pending.close_all()
        listener.close()


def test_a_dead_childs_last_reports_count_before_its_exit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A fork child reports a stored object and exits before the supervisor read the report:
    the report is read first, so the study service sees the object before the sender's end."""
    fake = FakeOS(monkeypatch)
    s = make(tmp_path)
    metrics = counted(s)
    child, theirs = fork_child_with_channel(s, 4242)
    seen: list[str] = []
    s.event_hooks.append(lambda kind, data, c: seen.append(kind))
    ipc.send(theirs, {"event": "stored", "status": "success"})
    theirs.close()
    fake.exits = [(child.pid, 0)]
    s.reap_children()
    assert seen == ["stored", "child_exited"]
    assert metrics.value("storescpd_objects_stored_total", status="success") == 1
    assert child.channel is None


def test_a_worker_at_its_request_limit_is_never_handed_a_connection(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    fake = FakeOS(monkeypatch)
    s = make(tmp_path, workers=1)
    metrics = counted(s)
    s.manage_workers()
    (pid,) = workers(s)
    assert s.children[pid].channel is not None
    s.children[pid].busy = True
    s.on_event("idle", {"served": 1, "retiring": True}, s.children[pid])
    a, b = socket.socketpair()
    s.pending.ready.append(Pending(a, "dicom", 0.0))
    s.dispatch_ready()
    assert s.pending.ready and s.pending.ready[0].sock is a  # waits for the replacement
    s.manage_workers()
    assert len(workers(s)) == 2  # the replacement is forked while the old one exits
    fake.exits = [(pid, 0)]
    s.reap_children()
    assert metrics.value("storescpd_worker_restarts_total") == 0  # recycling is no restart
    b.close()
    a.close()


def test_an_internal_error_in_one_turn_does_not_stop_the_supervisor(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    s = make(tmp_path)
    outcomes: list[Any] = [KeyError(-1), ValueError("x"), 0]

    def turn() -> int | None:
        outcome = outcomes.pop(0)
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    monkeypatch.setattr(s, "turn", turn)
    assert s.loop() == 0 and outcomes == []


def test_an_internal_error_every_turn_stops_it_instead_of_spinning(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    fake = FakeOS(monkeypatch)
    s = make(tmp_path)
    s.manage_workers()
    turns = []

    def turn() -> None:
        turns.append(1)
        raise RuntimeError("always")

    monkeypatch.setattr(s, "turn", turn)
    assert s.loop() == sup.EXIT_FAILURE
    assert len(turns) == sup.INTERNAL_ERROR_LIMIT
    assert {pid for pid, sig in fake.kills if sig == signal.SIGKILL} == set(workers(s))


def test_a_silent_connection_dropped_for_room_is_not_read_later_in_the_batch(tmp_path: Path,
                                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    FakeOS(monkeypatch)
    s = make(tmp_path)
    a, b = socket.socketpair()
    a.setblocking(False)
    s.pending.waiting[a.fileno()] = Pending(a, "dicom", 0.0)
    s.selector.register(a, selectors.EVENT_READ, s.pending.readable)
    s.pending.drop_oldest()  # the listener's event came first in the batch
    s.pending.readable(a)  # then this connection's own event: closed, fileno -1
    assert s.pending.waiting == {} and not s.pending.ready
    b.close()


def test_a_surplus_worker_told_to_stop_gets_no_connection(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake = FakeOS(monkeypatch)
    s = make(tmp_path, workers=2)
    s.manage_workers()
    s.handle_ttou()
    s.manage_workers()
    stopped = [pid for pid, sig in fake.kills if sig == signal.SIGTERM]
    assert len(stopped) == 1 and len(workers(s)) == 2  # it exits when it will
    s.manage_workers()
    assert len([k for k in fake.kills if k[1] == signal.SIGTERM]) == 1  # not a second one
    sent: list[Any] = []
    monkeypatch.setattr(sup.ipc, "send", lambda sock, message, fds=None: sent.append(sock))
    a, b = socket.socketpair()
    s.pending.ready.append(Pending(a, "dicom", 0.0))
    s.dispatch_ready()
    (kept,) = set(workers(s)) - set(stopped)
    assert not s.pending.ready and sent == [s.children[kept].channel]
    b.close()


def test_a_connection_a_worker_cannot_take_waits_for_another(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake = FakeOS(monkeypatch)
    s = make(tmp_path, workers=2)
    s.manage_workers()
    first, second = workers(s)
    tried: list[Any] = []

    def send(sock: Any, message: Any, fds: Any = None) -> None:
        tried.append(sock)
        if sock is s.children[first].channel:
            raise BrokenPipeError(32, "Broken pipe")  # it died a moment ago

    monkeypatch.setattr(sup.ipc, "send", send)
    a, b = socket.socketpair()
    s.pending.ready.append(Pending(a, "dicom", 0.0))
    s.dispatch_ready()
    assert tried == [s.children[first].channel, s.children[second].channel]
    assert not s.pending.ready and s.children[second].busy and s.children[first].retiring
    assert (first, signal.SIGTERM) in fake.kills  # and it is told to go
    b.close()


def test_no_reload_while_stopping(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    FakeOS(monkeypatch)
    s = make(tmp_path)
    s.begin_stop("graceful")
    generation = s.generation
    assert s.reload()["result"] == "failure"
    assert s.generation == generation
    assert s.status_line().startswith("stopping (graceful), ")


def test_every_report_of_a_dead_child_is_read_before_its_exit_counts(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """More reports than one turn reads (100): the association must end as released, once."""
    fake = FakeOS(monkeypatch)
    s = make(tmp_path)
    metrics = counted(s)
    child, theirs = fork_child_with_channel(s, 4343)
    ipc.send(theirs, {"event": "association_requested", "peer": "127.0.0.1:1"})
    for n in range(250):
        ipc.send(theirs, {"event": "stored", "status": "success"})
    ipc.send(theirs, {"event": "association_ended", "outcome": "released", "bytes": 10})
    theirs.close()
    fake.exits = [(child.pid, 0)]
    s.reap_children()
    assert metrics.value("storescpd_associations_total", outcome="released") == 1
    assert metrics.value("storescpd_associations_total", outcome="aborted") == 0
    assert metrics.value("storescpd_objects_stored_total", status="success") == 250 and len(s.associations) == 0


def test_the_status_line_reads_the_metrics_users_see(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    FakeOS(monkeypatch)
    s = make(tmp_path)
    s.manage_workers()
    assert s.status_line() == "0 associations, 3 workers"  # no metrics (no control plane): the live state
    metrics = counted(s)
    worker = s.children[1001]
    s.on_event("association_requested", {"peer": "a"}, worker)
    for status in ("success", "success", "failure"):
        s.on_event("stored", {"status": status, "sop_class": "1.2", "path": None, "duration": 0.01}, worker)
    assert s.status_line() == "1 associations, 3 workers, 2 objects stored"
    assert metrics.value("storescpd_objects_stored_total", status="success") == 2


def test_an_event_nobody_declared_is_not_passed_on(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    FakeOS(monkeypatch)
    s = make(tmp_path)
    s.manage_workers()
    seen: list[str] = []
    s.event_hooks.append(lambda kind, data, child: seen.append(kind))
    s.on_event("stored_twice", {}, s.children[1001])
    s.on_event("idle", {"served": 1}, s.children[1001])
    assert seen == ["idle"]
