"""The daemon as systemd runs it: process modes, sd_notify, signals, reload, faults."""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

import pydicom
import pytest

from tests.support.daemons import Daemon, NotifyListener
from tests.support.dicomfiles import make_object
from tests.support.paths import DCMTK, STORESCPD, TEST_FILES
from tests.support.pdus import associate_rq
from tests.support.peers import PEER_ENV, echoscu, require_dcmtk, start_storescu, storescu
from tests.support.processes import children_of, free_port, stop_process, wait_listening, wait_until


def setup_module() -> None:
    require_dcmtk()


def worker_pids_in_log(log: str) -> list[int]:
    return [int(m) for m in re.findall(r"objects stored.*worker (\d+)", log)]


def test_ready_then_stopping_and_clean_exit(daemon_factory) -> None:
    d = daemon_factory("-v")
    assert echoscu(d.port).returncode == 0
    assert d.stop(signal.SIGTERM) == 0
    messages = "\n".join(d.notify.drain())
    assert messages.index("READY=1") < messages.index("STOPPING=1")
    assert "MAINPID=" in messages


def test_notify_sequence_through_a_reload(daemon_factory) -> None:
    """What systemd sees over a life: READY, RELOADING (with MONOTONIC_USEC), READY, STOPPING."""
    d = daemon_factory("--workers", "2")
    os.kill(d.pid, signal.SIGHUP)
    d.notify.wait_for("READY=1", after="RELOADING=1")
    assert echoscu(d.port).returncode == 0
    assert d.stop(signal.SIGTERM) == 0
    fields = [field.split("=", 1)[0] for m in d.notify.messages for field in m.split("\n")
              if field.split("=", 1)[0] in ("READY", "RELOADING", "STOPPING", "MONOTONIC_USEC")]
    assert fields[:5] == ["READY", "RELOADING", "MONOTONIC_USEC", "READY", "STOPPING"], fields


@pytest.mark.parametrize("mode", [("--workers", "4"), ("--fork",)])
def test_eight_parallel_senders_all_files_stored(daemon_factory, tmp_path: Path, mode: tuple[str, ...]) -> None:
    d = daemon_factory("-v", *mode)
    files = []
    for i in range(8):
        src = pydicom.dcmread(TEST_FILES / "CT_small.dcm")
        src.SOPInstanceUID = f"1.2.3.4.{i}"
        src.file_meta.MediaStorageSOPInstanceUID = src.SOPInstanceUID
        path = tmp_path / f"in{i}.dcm"
        src.save_as(path)
        files.append(path)
    senders = [subprocess.Popen([str(DCMTK / "storescu"), "127.0.0.1", str(d.port), str(f)], env=PEER_ENV,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE) for f in files]
    codes = [p.wait(60) for p in senders]
    assert codes == [0] * 8
    assert {p.name for p in d.stored_files()} == {f"CT.1.2.3.4.{i}" for i in range(8)}
    d.stop()
    pids = worker_pids_in_log(d.log())
    assert len(pids) == 8
    assert d.pid not in pids
    if mode == ("--fork",):
        assert len(set(pids)) == 8  # one process per association
    else:
        assert 1 < len(set(pids)) <= 4


def test_idle_connections_do_not_block_an_echo(daemon_factory) -> None:
    d = daemon_factory("--workers", "2")
    idle = []
    try:
        for _ in range(20):
            s = socket.create_connection(("127.0.0.1", d.port), timeout=5)
            idle.append(s)
        started = time.monotonic()
        result = echoscu(d.port, timeout=10)
        elapsed = time.monotonic() - started
        assert result.returncode == 0, result.stderr
        assert elapsed < 2.0, f"C-ECHO took {elapsed:.2f} s behind 20 idle connections"
    finally:
        for s in idle:
            s.close()


class SlowSender:
    """Sends the start of an A-ASSOCIATE-RQ a byte at a time (a slow-loris peer), in a thread."""

    def __init__(self, port: int, interval: float) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=30)
        self.request = associate_rq()
        self.interval = interval
        self.closed_after: float | None = None
        self.sent = 0
        self.started = time.monotonic()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        for byte in self.request[:-1]:  # never the whole request
            try:
                self.sock.sendall(bytes([byte]))
            except OSError:
                break
            self.sent += 1
            time.sleep(self.interval)  # the pacing is the point: a peer that is slow, not silent
            if time.monotonic() - self.started > 30:
                break
        self.closed_after = time.monotonic() - self.started

    def close(self) -> None:
        self.sock.close()
        self.thread.join(35)


@pytest.mark.parametrize("mode", [("--workers", "2"), ("--fork",)], ids=["prefork", "fork"])
def test_slow_association_requests_never_hold_the_workers(daemon_factory, mode: tuple[str, ...]) -> None:
    d = daemon_factory(*mode, "--max-associations", "2", "-ta", "3")
    slow = [SlowSender(d.port, 0.5) for _ in range(4)]
    try:
        wait_until(lambda: all(peer.sent >= 3 for peer in slow), 10, "every slow peer has sent a few bytes")
        started = time.monotonic()
        result = echoscu(d.port, timeout=20)
        elapsed = time.monotonic() - started
        assert result.returncode == 0, result.stderr + d.log()
        assert elapsed < 2.0, f"C-ECHO took {elapsed:.2f} s behind 4 slow association requests"
        for peer in slow:  # -ta bounds the whole request, however steadily the bytes come
            peer.thread.join(15)
            assert peer.closed_after is not None and peer.closed_after < 8, peer.closed_after
    finally:
        for peer in slow:
            peer.close()


def test_single_process_acse_timeout_bounds_the_whole_request(daemon_factory) -> None:
    d = daemon_factory("--single-process", "-ta", "2")
    peer = SlowSender(d.port, 0.3)
    try:
        peer.thread.join(15)
        assert peer.closed_after is not None and peer.closed_after < 6, peer.closed_after
        assert echoscu(d.port, timeout=20).returncode == 0
    finally:
        peer.close()


def test_idle_connection_closed_after_acse_timeout(daemon_factory) -> None:
    d = daemon_factory("-ta", "1")
    s = socket.create_connection(("127.0.0.1", d.port), timeout=10)
    try:
        started = time.monotonic()
        assert s.recv(1) == b""  # closed by the daemon
        assert time.monotonic() - started < 8
    finally:
        s.close()


def _cpu_seconds(pid: int) -> float:
    """utime + stime of one process (its children not included), from /proc/<pid>/stat."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


@pytest.mark.parametrize("mode", [("--workers", "2"), ("--fork",)], ids=["prefork", "fork"])
def test_half_sent_requests_are_closed_at_once(daemon_factory, mode: tuple[str, ...]) -> None:
    """A peer that sends part of its A-ASSOCIATE-RQ and closes: the pending connection ends in the
    same turn of the loop (no spinning on a socket that stays readable at end of file)."""
    d = daemon_factory(*mode)  # ACSE timeout 30 s: only the end of file can close them in time
    baseline_fds, cpu_before = _open_fds(d.pid), _cpu_seconds(d.pid)
    half = associate_rq()[:20]  # the header announces the whole request; 14 bytes of it follow
    peers = []
    try:
        for _ in range(100):
            peer = socket.create_connection(("127.0.0.1", d.port), timeout=5)
            peer.sendall(half)
            peers.append(peer)
    finally:
        for peer in peers:
            peer.close()
    wait_until(lambda: _open_fds(d.pid) <= baseline_fds, 1.0,
               f"the supervisor's descriptors back to {baseline_fds} after 100 half-sent requests", interval=0.02)
    time.sleep(1.0)  # a supervisor spinning on end of file would burn this second
    spent = _cpu_seconds(d.pid) - cpu_before
    assert spent < 0.5, f"the supervisor spent {spent:.2f} s of CPU on 100 half-sent requests"
    assert echoscu(d.port).returncode == 0


def test_sigkill_worker_mid_transfer(daemon_factory, tmp_path: Path) -> None:
    big = make_object(tmp_path / "big.dcm", 200)
    small = TEST_FILES / "CT_small.dcm"
    d = daemon_factory("--workers", "3", "-v")
    sender = start_storescu(d.port, big)
    staging = d.staging

    def worker_20_mib_into_it() -> int | None:
        return next((worker_of(part) for part in d.partial_files() if part.stat().st_size > 20 << 20), None)

    victim = wait_until(worker_20_mib_into_it, 30, "the big transfer 20 MiB in")
    os.kill(victim, signal.SIGKILL)
    assert sender.wait(30) != 0  # the peer sees the association end
    other = storescu(d.port, [small])
    assert other.returncode == 0, other.stderr
    names = [p.name for p in d.stored_files()]
    assert names == ["CT.1.3.6.1.4.1.5962.1.1.1.1.1.20040119072730.12322"]
    wait_until(lambda: not list(staging.glob(f"{victim}-*.part")), 10, "the killed worker's partial file removed")
    wait_until(lambda: len(children_of(d.pid)) >= 3, 10, "the killed worker replaced")
    assert len(children_of(d.pid)) == 3 and victim not in children_of(d.pid)


def worker_of(part: Path) -> int:
    """The PID of the worker receiving into a staging file (``<pid>-<n>-<attempt>.part``)."""
    return int(part.name.split("-")[0])


def wait_new_staging_pid(d: Daemon, known: set[int], timeout: float = 10.0) -> int:
    """The worker of a transfer that started beside those of the `known` workers."""
    new = wait_until(lambda: {worker_of(p) for p in d.partial_files()} - known, timeout,
                     f"a new transfer in {d.staging} (known workers {known})")
    return new.pop()


def test_sigkill_worker_spares_the_association_running_beside_it(daemon_factory, tmp_path: Path) -> None:
    # Both transfers are slow (16 KB in 4 KB PDUs, 1 s each): both are mid-transfer at the kill.
    victim_file = make_object(tmp_path / "victim.dcm", 0, columns=8, seed=1)
    other_file = make_object(tmp_path / "other.dcm", 0, columns=8, seed=2)
    d = daemon_factory("--workers", "3", "-pdu", "4096", "--sleep-during", "1", "-v")
    victim_sender = start_storescu(d.port, victim_file)
    try:
        victim = wait_new_staging_pid(d, set())
        other_sender = start_storescu(d.port, other_file)
        try:
            other_worker = wait_new_staging_pid(d, {victim})
            assert other_sender.poll() is None and victim_sender.poll() is None
            os.kill(victim, signal.SIGKILL)
            assert victim_sender.wait(30) != 0  # its peer sees the association end
            assert other_sender.wait(30) == 0, other_sender.stderr.read().decode() + d.log()
        finally:
            stop_process(other_sender)
    finally:
        stop_process(victim_sender)
    (stored,) = d.stored_files()
    expected = pydicom.dcmread(other_file)
    received = pydicom.dcmread(stored)
    assert stored.name == f"SC.{expected.SOPInstanceUID}"
    assert received.PixelData == expected.PixelData
    d.wait_no_partial_files()  # the killed worker's partial file is gone
    assert other_worker in children_of(d.pid) and victim not in children_of(d.pid)


def test_worker_that_cannot_boot_stops_the_daemon(daemon_factory, tmp_path: Path) -> None:
    out = tmp_path / "vanishing"
    out.mkdir()
    d = daemon_factory("--workers", "2", output=out, ready=False)
    d.notify.wait_for("READY=1")
    # Make the output directory unusable: new workers fail their boot check.
    os.chmod(out, 0o500)
    try:
        if os.geteuid() == 0:
            shutil.rmtree(out)
        for pid in children_of(d.pid):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        assert d.proc is not None
        code = d.proc.wait(20)
        assert code != 0
        assert "stopping instead of re-forking" in d.log()
    finally:
        if out.exists():
            os.chmod(out, 0o700)


def write_config(path: Path, **values: object) -> Path:
    lines = []
    for k, v in values.items():
        lines.append(f'{k} = "{v}"' if isinstance(v, str) else f"{k} = {str(v).lower()}")
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.mark.parametrize("breakage,reason", [
    ("toml", "key 'workers' must be an integer"),
    ("command-file", "--no-such-option"),
    ("help", "asks for help"),
])
def test_reload_with_broken_config_keeps_serving(daemon_factory, tmp_path: Path, breakage: str,
                                                 reason: str) -> None:
    first, elsewhere = tmp_path / "first", tmp_path / "elsewhere"
    first.mkdir()
    elsewhere.mkdir()
    cfg = write_config(tmp_path / "storescpd.toml", output_directory=str(first), workers=2)
    args = tmp_path / "args"  # a DCMTK command file, read again on reload
    args.write_text(f"--config {cfg}\n")
    d = daemon_factory(f"@{args}", od=False, output=first)
    if breakage == "toml":
        cfg.write_text(f"output_directory = '{elsewhere}'\nworkers = 'many'\n")
    else:
        write_config(cfg, output_directory=str(elsewhere), workers=2)
        args.write_text(f"--config {cfg} {'--no-such-option' if breakage == 'command-file' else '--help'}\n")
    os.kill(d.pid, signal.SIGHUP)
    d.notify.wait_for("RELOADING=1")
    d.notify.wait_for("READY=1", after="RELOADING=1")
    messages = "\n".join(d.notify.drain())
    assert "reload failed" in messages and reason in messages, messages
    assert d.proc is not None and d.proc.poll() is None, d.log()
    # The old configuration is still the one in force: the object lands in the first directory.
    assert storescu(d.port, [TEST_FILES / "CT_small.dcm"]).returncode == 0
    assert [p.parent for p in d.stored_files()] == [first]
    assert list(elsewhere.iterdir()) == []
    assert "reload failed, keeping the running configuration" in d.log()


def test_reload_changes_output_directory_for_new_associations(daemon_factory, tmp_path: Path) -> None:
    first, second = tmp_path / "first", tmp_path / "second"
    first.mkdir()
    second.mkdir()
    cfg = write_config(tmp_path / "storescpd.toml", output_directory=str(first), workers=2, max_pdu=4096,
                       sleep_during=1)
    slow = make_object(tmp_path / "slow.dcm", 0, columns=8)  # 16 KB: four 4 KB PDUs, 1 s each
    d = daemon_factory("--config", str(cfg), output=first, od=False)
    running = start_storescu(d.port, slow)
    d.wait_for_transfer()  # begun under the first configuration
    write_config(cfg, output_directory=str(second), workers=2)
    os.kill(d.pid, signal.SIGHUP)
    d.notify.wait_for("RELOADING=1")
    d.notify.wait_for("READY=1", after="RELOADING=1")
    assert storescu(d.port, [TEST_FILES / "CT_small.dcm"]).returncode == 0
    assert running.wait(60) == 0
    assert [p.name for p in second.iterdir() if p.is_file()] == ["CT.1.3.6.1.4.1.5962.1.1.1.1.1.20040119072730.12322"]
    assert len([p for p in first.iterdir() if p.is_file()]) == 1


def test_reload_applies_a_new_log_level(daemon_factory, tmp_path: Path) -> None:
    out = tmp_path / "out"
    cfg = write_config(tmp_path / "storescpd.toml", output_directory=str(out), workers=1, log_level="warn")
    d = daemon_factory("--config", str(cfg), output=out, od=False)
    assert echoscu(d.port).returncode == 0
    write_config(cfg, output_directory=str(out), workers=1, log_level="info")
    os.kill(d.pid, signal.SIGHUP)
    d.notify.wait_for("READY=1", after="RELOADING=1")
    assert echoscu(d.port).returncode == 0
    log = d.wait_for_log("association from ECHOSCU")
    assert log.count("association from ECHOSCU") == 1, log  # the second one only: warn, then info
    assert "configuration reloaded" in log


def test_sigterm_during_transfer_lets_it_complete(daemon_factory, tmp_path: Path) -> None:
    slow = make_object(tmp_path / "slow.dcm", 0, columns=8)
    d = daemon_factory("--workers", "2", "-pdu", "4096", "--sleep-during", "1")
    running = start_storescu(d.port, slow)
    d.wait_for_transfer()
    assert d.stop(signal.SIGTERM, timeout=60) == 0
    assert running.wait(30) == 0
    assert len(d.stored_files()) == 1


def test_graceful_timeout_aborts_what_is_still_running(daemon_factory, tmp_path: Path) -> None:
    slow = make_object(tmp_path / "slow.dcm", 0, columns=8)  # 16 KB in 4 KB PDUs, 1 s each
    d = daemon_factory("--workers", "2", "-pdu", "4096", "--sleep-during", "1", "--graceful-timeout", "1")
    running = start_storescu(d.port, slow)
    d.wait_for_transfer()
    started = time.monotonic()
    assert d.stop(signal.SIGTERM, timeout=30) == 0
    assert time.monotonic() - started < 4, "the stop waited for the whole transfer"
    assert running.wait(30) != 0
    assert d.stored_files() == []
    assert list((d.output / ".storescpd-staging").glob("*.part")) == []
    assert "graceful timeout" in d.log()


def _socket_activate(args: list[str], tmp_path: Path, port: int, extra: list[str] | None = None) -> subprocess.Popen:
    notify_path = tmp_path / "sa-notify.sock"
    return subprocess.Popen(
        ["systemd-socket-activate", "-l", f"127.0.0.1:{port}", *(extra or []),
         "-E", f"NOTIFY_SOCKET={notify_path}", "-E", f"PATH={os.environ['PATH']}", STORESCPD, *args],
        stdout=subprocess.DEVNULL, stderr=open(tmp_path / "sa.log", "wb"),
    )


@pytest.mark.parametrize("extra,args", [
    ([], ["--workers", "2"]),
    (["--fdname=dicom"], ["--fork"]),
    (["--accept", "--fdname=connection"], []),
    (["--accept", "--inetd"], ["--inetd"]),
])
def test_socket_activation(tmp_path: Path, extra: list[str], args: list[str]) -> None:
    if shutil.which("systemd-socket-activate") is None:
        pytest.fail("systemd-socket-activate missing: apt-get install systemd (.ci/run does this)")
    out = tmp_path / "out"
    out.mkdir()
    port = free_port()
    notify = NotifyListener(tmp_path / "sa-notify.sock")  # the NOTIFY_SOCKET _socket_activate passes
    proc = _socket_activate(["-od", str(out), *args], tmp_path, port, extra)
    try:
        wait_listening(port)
        for name in ["CT_small.dcm", "MR_small.dcm"]:
            result = storescu(port, [TEST_FILES / name])
            assert result.returncode == 0, result.stderr + (tmp_path / "sa.log").read_text()
        assert sorted(p.name.split(".")[0] for p in out.iterdir() if p.is_file()) == ["CT", "MR"]
        if "--accept" not in extra:  # a daemon on systemd's listening socket tells systemd it is up
            notify.wait_for("READY=1", timeout=10)
    finally:
        stop_process(proc)
        notify.close()


def test_max_associations_rejects_transient_local_limit(daemon_factory, tmp_path: Path) -> None:
    slow = make_object(tmp_path / "slow.dcm", 0, columns=8)
    d = daemon_factory("--workers", "3", "--max-associations", "1", "-pdu", "4096", "--sleep-during", "1")
    running = start_storescu(d.port, slow)
    try:
        d.wait_for_transfer()  # the association holds the one place
        result = echoscu(d.port, "-v")
        assert result.returncode != 0
        assert "Association Rejected" in result.stderr and "Transient" in result.stderr, result.stderr
        assert "Local Limit Exceeded" in result.stderr, result.stderr
    finally:
        assert running.wait(60) == 0
    assert echoscu(d.port).returncode == 0  # the limit frees up when the transfer ends


def test_max_requests_recycles_a_pool_worker(daemon_factory) -> None:
    d = daemon_factory("--workers", "1", "--max-requests", "2", "-v")
    for _ in range(3):
        assert storescu(d.port, [TEST_FILES / "CT_small.dcm"]).returncode == 0
    d.stop()
    pids = worker_pids_in_log(d.log())
    assert len(pids) == 3
    assert pids[0] == pids[1] != pids[2]


def test_watchdog_pings_when_systemd_asks(daemon_factory) -> None:
    d = daemon_factory(env={"WATCHDOG_USEC": "1000000"})
    messages = d.notify.wait_for("WATCHDOG=1", timeout=5)
    assert any("WATCHDOG=1" in m for m in messages)


def test_sigint_is_a_quick_stop(daemon_factory, tmp_path: Path) -> None:
    slow = make_object(tmp_path / "slow.dcm", 0, columns=8)
    d = daemon_factory("--workers", "2", "-pdu", "4096", "--sleep-during", "2")
    running = start_storescu(d.port, slow)
    d.wait_for_transfer()
    started = time.monotonic()
    assert d.stop(signal.SIGINT, timeout=30) == 0
    assert time.monotonic() - started < 5  # does not wait for the transfer (about 8 s more)
    assert running.wait(30) != 0
    assert d.stored_files() == []
    assert list((d.output / ".storescpd-staging").glob("*.part")) == []


def _worker_resources(pids: list[int]) -> tuple[int, int]:
    """(open file descriptors, RSS in kB) summed over the given processes."""
    fds = sum(len(os.listdir(f"/proc/{pid}/fd")) for pid in pids)
    rss = 0
    for pid in pids:
        status = Path(f"/proc/{pid}/status").read_text()
        rss += int(next(line for line in status.splitlines() if line.startswith("VmRSS")).split()[1])
    return fds, rss


def test_pool_workers_do_not_leak_over_many_associations(daemon_factory, tmp_path: Path) -> None:
    """300 associations through a 2-worker pool: descriptors and memory stay flat."""
    from pynetdicom import AE

    d = daemon_factory("--workers", "2", "--max-pdu", "16384")
    ds = pydicom.dcmread(TEST_FILES / "CT_small.dcm")
    ae = AE(ae_title="SOAK")
    ae.add_requested_context(ds.SOPClassUID, ds.file_meta.TransferSyntaxUID)
    ae.add_requested_context("1.2.840.10008.1.1")

    def run(count: int) -> None:
        for i in range(count):
            assoc = ae.associate("127.0.0.1", d.port)
            assert assoc.is_established
            ds.SOPInstanceUID = f"1.2.3.{i}"
            assert assoc.send_c_echo().Status == 0
            assert assoc.send_c_store(ds).Status == 0
            assoc.release()

    run(50)  # warm up: imports, caches, first allocations
    workers = children_of(d.pid)
    assert len(workers) == 2
    before = _worker_resources(workers)
    run(250)
    assert children_of(d.pid) == workers  # nobody crashed or was replaced
    after = _worker_resources(workers)
    print(f"workers' descriptors {before[0]} -> {after[0]}, RSS {before[1]} -> {after[1]} kB")
    assert after[0] <= before[0], f"open descriptors grew: {before[0]} -> {after[0]}"
    assert after[1] < before[1] + 8 * 1024, f"RSS grew: {before[1]} -> {after[1]} kB"
    assert list((d.output / ".storescpd-staging").iterdir()) == []


def test_inetd_mode_never_writes_logs_into_the_connection(tmp_path: Path) -> None:
    """Classic inetd: the connection is stdin, stdout and stderr at once."""
    out = tmp_path / "out"
    out.mkdir()
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    port = listener.getsockname()[1]
    sender = subprocess.Popen([str(DCMTK / "storescu"), "-v", "127.0.0.1", str(port), str(TEST_FILES / "CT_small.dcm")],
                              env=PEER_ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    conn, _ = listener.accept()
    listener.close()
    with conn:
        daemon = subprocess.Popen([STORESCPD, "--inetd", "-v", "-d", "-od", str(out)],
                                  stdin=conn.fileno(), stdout=conn.fileno(), stderr=conn.fileno())
    try:
        assert daemon.wait(30) == 0
        output, _ = sender.communicate(timeout=30)
    finally:
        stop_process(daemon)
        stop_process(sender)
    assert sender.returncode == 0, output
    assert [p.name for p in out.iterdir() if p.is_file()] == ["CT.1.3.6.1.4.1.5962.1.1.1.1.1.20040119072730.12322"]


def test_single_process_feeds_the_watchdog_and_reports_status(daemon_factory) -> None:
    d = daemon_factory("--single-process", env={"WATCHDOG_USEC": "1000000"})
    d.notify.wait_for("WATCHDOG=1", timeout=5)
    assert storescu(d.port, [TEST_FILES / "CT_small.dcm"]).returncode == 0
    deadline = time.monotonic() + 10
    while not any("1 associations and 1 objects served" in m for m in d.notify.drain()):
        assert time.monotonic() < deadline, d.notify.messages[-5:]


@pytest.mark.parametrize("limit", ["1", "0"])  # 0: abort at once, as in the pool
def test_single_process_graceful_timeout_cuts_a_long_association(limit: str, daemon_factory, tmp_path: Path) -> None:
    slow = make_object(tmp_path / "slow.dcm", 0, columns=16)  # 32 KB in 4 KB PDUs, 1 s each
    d = daemon_factory("--single-process", "-pdu", "4096", "--sleep-during", "1", "--graceful-timeout", limit)
    running = start_storescu(d.port, slow)
    d.wait_for_transfer()
    started = time.monotonic()
    assert d.stop(signal.SIGTERM, timeout=30) == 0
    assert time.monotonic() - started < 4, "the stop waited for the whole transfer"
    assert running.wait(30) != 0  # the peer lost its association
    assert d.stored_files() == []
    assert list((d.output / ".storescpd-staging").glob("*.part")) == []
    assert "graceful timeout" in d.log()
    assert any("STOPPING=1" in m for m in d.notify.messages)


def test_single_process_sigterm_finishes_the_association_and_sighup_is_harmless(daemon_factory,
                                                                               tmp_path: Path) -> None:
    slow = make_object(tmp_path / "slow.dcm", 0, columns=8)
    d = daemon_factory("--single-process", "-pdu", "4096", "--sleep-during", "1")
    os.kill(d.pid, signal.SIGHUP)
    assert echoscu(d.port).returncode == 0  # still serving
    running = start_storescu(d.port, slow)
    d.wait_for_transfer()
    assert d.stop(signal.SIGTERM, timeout=60) == 0
    assert running.wait(30) == 0
    assert len(d.stored_files()) == 1
    assert "SIGHUP ignored" in d.log()
