"""The soak's faults, through the daemon's public surfaces only: the daemon started as systemd
would (its sockets as fds 3 and 4, NOTIFY_SOCKET), reloads, SIGKILL of workers, a full output
file system, bursts of malformed associations."""

from __future__ import annotations

import errno
import http.client
import json
import os
import random
import shutil
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

sys.path.insert(0, str(Path(__file__).resolve().parent))
import dul  # noqa: E402  (a bench/ sibling)
from soakload import CALLED_AE, HOST, Clock, Consumer  # noqa: E402
from soakwatch import Sampler, proc_stat, read_proc  # noqa: E402

STORESCPD = str(Path(sys.executable).parent / "storescpd")

# Adopt the listening sockets as fds 3 and 4 with LISTEN_PID set to the exec'd process, as systemd does
# (through fresh duplicates, so that neither lands on the other; the originals are closed). The daemon
# is stopped (SIGTERM) if the soak dies without stopping it.
_ADOPT_EXEC = (
    "import os,sys; a, b = int(sys.argv[1]), int(sys.argv[2]); c, d = os.dup(a), os.dup(b); "
    "os.dup2(c, 3); os.dup2(d, 4); [os.close(fd) for fd in {a, b, c, d} - {3, 4}]; "
    "os.set_inheritable(3, True); os.set_inheritable(4, True); "
    "import ctypes; ctypes.CDLL(None).prctl(1, 15); "  # PR_SET_PDEATHSIG: SIGTERM when the soak dies
    "os.environ['LISTEN_PID'] = str(os.getpid()); os.execv(sys.argv[3], sys.argv[3:])"
)


# ------------------------------------------------------------------------------- the daemon

class NotifyListener(threading.Thread):
    """A NOTIFY_SOCKET: keeps every message the daemon sends to "systemd"."""

    def __init__(self, path: Path) -> None:
        super().__init__(daemon=True, name="notify")
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        path.unlink(missing_ok=True)
        self.sock.bind(str(path))
        self.sock.settimeout(0.2)
        self.path = path
        self.messages: list[str] = []
        self.changed = threading.Condition()
        self._done = threading.Event()

    def run(self) -> None:
        while not self._done.is_set():
            try:
                message = self.sock.recv(65536).decode(errors="replace")
            except socket.timeout:
                continue
            except OSError:
                return
            with self.changed:
                self.messages.append(message)
                self.changed.notify_all()

    def mark(self) -> int:
        with self.changed:
            return len(self.messages)

    def wait_for(self, field: str, since: int, timeout: float) -> str | None:
        """The first message after index `since` that carries `field` (a whole line), or None."""
        deadline = time.monotonic() + timeout
        with self.changed:
            while True:
                for message in self.messages[since:]:
                    if field in message.split("\n"):
                        return message
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return None
                self.changed.wait(remaining)

    def close(self) -> None:
        self._done.set()
        self.join(2)
        self.sock.close()


class Daemon:
    """storescpd in pre-fork mode, handed its DICOM and API sockets as systemd would."""

    def __init__(self, rundir: Path, workdir: Path, output: Path, config_path: Path, log_level: str) -> None:
        self.rundir = rundir
        self.output = output
        self.config_path = config_path
        self.log_level = log_level
        self.log_path = rundir / "daemon.log"
        self.notify = NotifyListener(workdir / "notify.sock")  # short: a unix socket path has 107 bytes
        self.proc: subprocess.Popen[bytes] | None = None
        self.port = self.api_port = 0

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self, timeout: float = 60.0) -> None:
        dicom, api = socket.socket(), socket.socket()
        for sock, backlog in ((dicom, 128), (api, 64)):
            sock.bind((HOST, 0))
            sock.listen(backlog)
        self.port, self.api_port = dicom.getsockname()[1], api.getsockname()[1]
        self.notify.start()
        env = {**os.environ, "LISTEN_FDS": "2", "LISTEN_FDNAMES": "dicom:api",
               "NOTIFY_SOCKET": str(self.notify.path)}
        argv = [sys.executable, "-c", _ADOPT_EXEC, str(dicom.fileno()), str(api.fileno()), STORESCPD,
                "--config", str(self.config_path), "-od", str(self.output), "--log-level", self.log_level]
        with open(self.log_path, "wb") as err:
            self.proc = subprocess.Popen(argv, env=env, pass_fds=(dicom.fileno(), api.fileno()), stderr=err,
                                         stdout=subprocess.DEVNULL, stdin=subprocess.DEVNULL, cwd=self.rundir)
        dicom.close()
        api.close()
        if self.notify.wait_for("READY=1", 0, timeout) is None:
            raise RuntimeError(f"storescpd did not report READY=1 within {timeout:.0f} s; see {self.log_path}")

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def api(self, method: str, path: str, timeout: float = 15.0) -> tuple[int, dict]:
        conn = http.client.HTTPConnection(HOST, self.api_port, timeout=timeout)
        try:
            conn.request(method, path)
            response = conn.getresponse()
            body = response.read()
            try:
                return response.status, json.loads(body or b"{}")
            except ValueError:
                return response.status, {"text": body.decode(errors="replace")[:500]}
        finally:
            conn.close()

    def status(self) -> dict:
        code, body = self.api("GET", "/status")
        if code != 200:
            raise RuntimeError(f"GET /status answered {code}")
        return body

    def stop(self, timeout: float) -> int | None:
        """SIGTERM (graceful), SIGKILL after `timeout`; the exit status, None if it had to be killed."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
                self.notify.close()
                return None
        self.notify.close()
        return self.proc.returncode


def write_config(path: Path, workers: int, broken: bool = False) -> None:
    """The daemon's TOML file; a broken one names an invalid worker count."""
    path.write_text(f"# written by bench/soak.py\nworkers = {0 if broken else workers}\n"
                    f"graceful_timeout = 30\n")


class Filler:
    """Keeps a file system full: fills it to within a few KiB, and again whenever space frees up."""

    KEEP_FREE = 32 * 1024
    TOP_UP_ABOVE = 256 * 1024

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.files: list[Path] = []
        directory.mkdir(exist_ok=True)

    @staticmethod
    def free_bytes(path: Path) -> int:
        st = os.statvfs(path)
        return st.f_bavail * st.f_frsize

    def top_up(self) -> None:
        free = self.free_bytes(self.directory)
        if free <= self.TOP_UP_ABOVE:
            return
        path = self.directory / f"filler-{len(self.files)}"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        self.files.append(path)
        try:
            want = free - self.KEEP_FREE
            while want > self.KEEP_FREE:
                try:
                    os.posix_fallocate(fd, 0, want)
                    break
                except OSError as exc:  # space went to a staging file meanwhile: take what is left
                    if exc.errno != errno.ENOSPC:
                        raise
                    want //= 2
        finally:
            os.close(fd)

    def release(self) -> None:
        for path in self.files:
            path.unlink(missing_ok=True)
        self.files.clear()


class Scratch:
    """The output file system: a tmpfs this script mounts, unmounted on close (whatever happened).

    A run killed outright (SIGKILL) cannot unmount: its mount names its owner, and the next run
    unmounts any whose owner is gone (`reap_stale`)."""

    SOURCE = "storescpd-soak"  # the mount's source in /proc/mounts

    def __init__(self, mountpoint: Path, size_mib: int) -> None:
        self.mountpoint = mountpoint
        mountpoint.mkdir(parents=True)
        (mountpoint.parent / "owner").write_text(_identity(os.getpid()))
        subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_mib}m,mode=0755", self.SOURCE, str(mountpoint)],
                       check=True, capture_output=True, text=True, timeout=30)

    def close(self) -> None:
        _unmount(self.mountpoint)
        self.mountpoint.rmdir()

    @classmethod
    def reap_stale(cls) -> list[str]:
        """Unmount and remove the scratch of earlier runs whose process is gone; what was reaped."""
        reaped = []
        for line in (read_proc("/proc/mounts") or b"").decode().splitlines():
            source, mountpoint = line.split()[:2]
            owner = Path(mountpoint).parent / "owner"
            if source != cls.SOURCE or not owner.exists():
                continue
            pid = int(owner.read_text().split()[0])
            if _identity(pid) != owner.read_text():
                _unmount(Path(mountpoint))
                shutil.rmtree(Path(mountpoint).parent, ignore_errors=True)
                reaped.append(mountpoint)
        return reaped


def _identity(pid: int) -> str:
    """A process's pid and start time: a pid alone may be reused."""
    stat = proc_stat(pid)
    return f"{pid} {stat[19].decode() if stat else '-'}"


def _unmount(mountpoint: Path) -> None:
    result = subprocess.run(["umount", str(mountpoint)], capture_output=True, text=True, timeout=60)
    if result.returncode != 0:  # something still holds it: detach now, freed when released
        subprocess.run(["umount", "-l", str(mountpoint)], capture_output=True, timeout=60)


# ------------------------------------------------------------------------------- malformed peers

def _item(item_type: int, payload: bytes) -> bytes:
    return struct.pack(">BBH", item_type, 0, len(payload)) + payload


def _user_item(max_length_item: bytes | None = None) -> bytes:
    max_length = max_length_item if max_length_item is not None else _item(0x51, struct.pack(">I", 16384))
    return _item(0x50, max_length + _item(0x52, dul.IMPLEMENTATION_CLASS_UID))


def associate_rq(pc_id: int = 1, contexts: bool = True, max_length_item: bytes | None = None,
                 pc_length_delta: int = 0, pdu_length_delta: int = 0) -> bytes:
    """An A-ASSOCIATE-RQ for Verification, with the defects the arguments ask for."""
    pc_body = (bytes([pc_id, 0, 0, 0]) + _item(0x30, dul.VERIFICATION_SOP_CLASS)
               + _item(0x40, dul.IMPLICIT_VR_LITTLE_ENDIAN))
    pc = struct.pack(">BBH", 0x20, 0, len(pc_body) + pc_length_delta) + pc_body
    body = (struct.pack(">HH", 1, 0) + CALLED_AE.encode().ljust(16) + b"SOAKMALFORMED".ljust(16) + bytes(32)
            + _item(0x10, dul.APPLICATION_CONTEXT) + (pc if contexts else b"") + _user_item(max_length_item))
    return struct.pack(">BBI", 0x01, 0, len(body) + pdu_length_delta) + body


@dataclass(frozen=True)
class Malformed:
    """One kind of malformed peer: what it sends, then whether it waits for the answer."""

    name: str
    payload: Callable[[random.Random], bytes]
    then: str = "read"  # read: wait up to 2 s for an answer; close; reset (RST); hold: 3 s then close
    after_ac: bytes = b""  # sent once an A-ASSOCIATE-AC arrived
    valid_rq: bool = False  # an AC accepting a context is a correct answer only to a valid request


def _pc_overrun(rng: random.Random) -> bytes:
    """A presentation context item claiming 1-200 bytes more than it holds. One delta is left out:
    the user information item's exact length, which turns the request into a well-framed one whose
    context holds the user information item and which lacks one at the top (an AC from storescpd and
    DCMTK alike; see docs/reliability.md), not a length that overruns."""
    boundary = len(_user_item())
    return associate_rq(pc_length_delta=rng.choice([d for d in range(1, 201) if d != boundary]))


def _half(rng: random.Random) -> bytes:
    rq = associate_rq()
    return rq[:rng.randint(1, len(rq) - 1)]


BAD_PDV = struct.pack(">BBI", 0x04, 0, 10) + struct.pack(">IBB", 5000, 1, 0x03) + b"\0\0\0\0"
A_ABORT = struct.pack(">BBI", 0x07, 0, 4) + bytes(4)

MALFORMED = (
    Malformed("garbage", lambda rng: rng.randbytes(rng.randint(1, 2048))),
    Malformed("http", lambda rng: b"GET / HTTP/1.1\r\nHost: storescpd\r\n\r\n"),
    Malformed("half_rq_close", _half, then="close"),
    Malformed("half_rq_reset", _half, then="reset"),
    Malformed("half_rq_hold", _half, then="hold"),
    Malformed("pdu_length_claims_more", lambda rng: associate_rq(pdu_length_delta=rng.randint(1, 4000)), then="close"),
    Malformed("pdu_length_claims_less", lambda rng: associate_rq(pdu_length_delta=-rng.randint(1, 40))),
    Malformed("huge_pdu_length", lambda rng: b"\x01\x00\xff\xff\xff\xff" + rng.randbytes(100), then="close"),
    Malformed("pc_item_overruns", _pc_overrun),
    Malformed("max_length_subitem_len2", lambda rng: associate_rq(max_length_item=_item(0x51, b"\x40\x00"))),
    Malformed("even_pc_id", lambda rng: associate_rq(pc_id=2)),
    Malformed("pc_id_zero", lambda rng: associate_rq(pc_id=0)),
    Malformed("no_presentation_context", lambda rng: associate_rq(contexts=False)),
    Malformed("abort_after_ac", lambda rng: associate_rq(), after_ac=A_ABORT, valid_rq=True),
    Malformed("bad_pdv_after_ac", lambda rng: associate_rq(), after_ac=BAD_PDV, valid_rq=True),
)
PDU_NAMES = {0x02: "AC", 0x03: "RJ", 0x04: "P-DATA", 0x06: "RELEASE-RP", 0x07: "ABORT"}


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            break
        data += chunk
    return data


def _accepts_a_context(ac_body: bytes) -> bool:
    """Whether an A-ASSOCIATE-AC accepts any presentation context (item 0x21, result 0)."""
    pos = 68
    while pos + 8 <= len(ac_body):
        item_type, _, length = struct.unpack_from(">BBH", ac_body, pos)
        if item_type == 0x21 and ac_body[pos + 6] == 0:
            return True
        pos += 4 + length
    return False


def _answer(sock: socket.socket, timeout: float) -> str:
    """The daemon's answer: the PDU it sent ("AC" when it accepted a context, "AC refusing all"
    when it accepted none), "closed", "reset" or "no answer"."""
    sock.settimeout(timeout)
    try:
        header = _recv_exact(sock, 6)
        if len(header) < 6:
            return "closed" if not header else "short PDU"
        body = _recv_exact(sock, min(struct.unpack(">I", header[2:])[0], 1 << 20))
    except socket.timeout:
        return "no answer"
    except ConnectionResetError:
        return "reset"
    if header[0] == 0x02 and not _accepts_a_context(body):
        return "AC refusing all"
    return PDU_NAMES.get(header[0], f"0x{header[0]:02x}")


def malformed_peer(port: int, kind: Malformed, rng: random.Random) -> str:
    """One malformed connection; what the daemon answered ("AC", "RJ", "ABORT", "closed", ...)."""
    with socket.create_connection((HOST, port), timeout=5) as sock:
        sock.sendall(kind.payload(rng))
        if kind.then == "close":
            return "-"
        if kind.then == "reset":
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            return "-"
        if kind.then == "hold":
            time.sleep(3)
            return "-"
        answer = _answer(sock, 2.0)
        if answer == "AC" and kind.after_ac:
            sock.sendall(kind.after_ac)
            answer += " then " + _answer(sock, 2.0)
        return answer


def malformed_burst(port: int, count: int, concurrency: int, budget_s: float, seed: int) -> dict:
    """`count` malformed connections from `concurrency` clients; answers by kind."""
    deadline = time.monotonic() + budget_s
    jobs = iter(range(count))
    lock = threading.Lock()
    answers: dict[str, Counter[str]] = {k.name: Counter() for k in MALFORMED}

    def client(index: int) -> None:
        rng = random.Random(f"{seed}/{index}")
        while time.monotonic() < deadline:
            with lock:
                n = next(jobs, None)
            if n is None:
                return
            kind = MALFORMED[n % len(MALFORMED)]
            try:
                answer = malformed_peer(port, kind, rng)
            except OSError as exc:
                answer = f"error {type(exc).__name__}"
            with lock:
                answers[kind.name][answer] += 1

    threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(max(0.1, deadline - time.monotonic() + 10))
    return {"connections": sum(sum(c.values()) for c in answers.values()),
            "answers": {k: dict(c) for k, c in answers.items()}}


# ------------------------------------------------------------------------------- the faults

@dataclass
class Settings:
    """What a soak run does (the command line)."""

    duration: float
    senders: int = 4
    workers: tuple[int, int] = (4, 5)
    reload_every: float = 30.0
    kill_every: float = 45.0
    disk_full_every: float = 600.0
    disk_full_for: float = 20.0
    burst_every: float = 300.0
    burst_size: int = 500
    burst_concurrency: int = 16
    fs_size_mib: int = 1024
    sample_every: float = 1.0
    log_level: str = "warn"
    seed: int = 20240808


def schedule(s: Settings) -> list[tuple[float, str]]:
    """The faults and when (seconds from the start), in order."""
    events: list[tuple[float, str]] = []

    def every(period: float, first: float, name: str) -> None:
        t = first
        while period > 0 and t < s.duration:
            events.append((t, name))
            t += period
    every(s.reload_every, s.reload_every, "reload")
    every(s.kill_every, s.kill_every, "kill")
    disk_period = min(s.duration, s.disk_full_every)
    every(disk_period, 0.3 * disk_period, "disk_full_begin")
    events += [(t + s.disk_full_for, "disk_full_end") for t, n in list(events) if n == "disk_full_begin"]
    burst_period = min(s.duration, s.burst_every)
    every(burst_period, 0.5 * burst_period, "burst")  # CI: disk full at 54-74 s, burst at 90 s
    return sorted((t, n) for t, n in events if t < s.duration or n == "disk_full_end")


class Faults(threading.Thread):
    """Injects the scheduled faults, one at a time, and records what each did."""

    def __init__(self, s: Settings, clock: Clock, daemon: Daemon, sampler: Sampler, consumer: Consumer,
                 filler: Filler, stop: threading.Event) -> None:
        super().__init__(daemon=True, name="faults")
        self.s, self.clock, self.daemon, self.sampler, self.consumer = s, clock, daemon, sampler, consumer
        self.filler, self.stop_event = filler, stop
        self.rng = random.Random(f"{s.seed}/faults")
        self.workers = s.workers[0]
        self.reloads: list[dict] = []
        self.kills: list[dict] = []
        self.disk_full: list[dict] = []
        self.bursts: list[dict] = []
        self.errors: list[str] = []
        self.burst_threads: list[threading.Thread] = []

    def run(self) -> None:
        pending = schedule(self.s)
        while pending and not self.stop_event.is_set():
            if self.filler.files:
                self.filler.top_up()
            if self.clock.now() < pending[0][0]:
                time.sleep(0.2)
                continue
            _, name = pending.pop(0)
            try:
                getattr(self, f"do_{name}")()
            except Exception as exc:  # noqa: BLE001 - recorded and checked; the soak goes on
                self.errors.append(f"{self.clock.now():.0f}s {name}: {type(exc).__name__}: {exc}")
        if self.filler.files:
            self.do_disk_full_end()

    # -- reload: SIGHUP and POST /reload in turn; every fourth a broken file that must be refused
    def do_reload(self) -> None:
        n = len(self.reloads) + 1
        record: dict = {"t": self.clock.now(), "n": n}
        config = self.daemon.config_path
        if n % 4 == 0:
            write_config(config, self.workers, broken=True)
            try:
                code, body = self.daemon.api("POST", "/reload", timeout=60)
            finally:
                write_config(config, self.workers)
            record.update(via="api", broken=True, http=code, result=body.get("result"),
                          ok=code == 422 and body.get("result") == "failure")
        else:
            self.workers = self.s.workers[1] if self.workers == self.s.workers[0] else self.s.workers[0]
            write_config(config, self.workers)
            record.update(workers=self.workers, **(self._reload_signal() if n % 2 else self._reload_api()))
            record["pool_ok"], record["pool"] = self.wait_pool(self.workers, set())
            record["ok"] = record["ok"] and record["pool_ok"]
        record["took_s"] = round(self.clock.now() - record["t"], 2)
        self.reloads.append(record)

    def _reload_signal(self) -> dict:
        mark = self.daemon.notify.mark()
        os.kill(self.daemon.pid, signal.SIGHUP)
        ready = self.daemon.notify.wait_for("READY=1", mark, 60)
        return {"via": "SIGHUP", "ok": ready is not None}

    def _reload_api(self) -> dict:
        code, body = self.daemon.api("POST", "/reload", timeout=60)
        return {"via": "api", "http": code, "result": body.get("result"), "ok": code == 200}

    def wait_pool(self, expected: int, gone: set[int], timeout: float = 20.0) -> tuple[bool, list[int]]:
        """Whether the newest generation has `expected` live workers (none of `gone`) within timeout."""
        deadline = time.monotonic() + timeout
        pids: list[int] = []
        while time.monotonic() < deadline:
            workers = [w for w in self.daemon.status()["workers"] if w.get("kind") == "worker"]
            newest = max((w["generation"] for w in workers), default=0)
            pids = [w["pid"] for w in workers if w["generation"] == newest and w["pid"] not in gone]
            if len(pids) >= expected and not (gone & {w["pid"] for w in workers}):
                return True, pids
            time.sleep(0.25)
        return False, pids

    def restore_pool(self, timeout: float = 30.0) -> bool:
        """Back to the first pool size, the old generation gone: the fd count compares with the start."""
        if self.workers != self.s.workers[0]:
            self.workers = self.s.workers[0]
            write_config(self.daemon.config_path, self.workers)
            if not self._reload_signal()["ok"]:
                return False
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            workers = [w for w in self.daemon.status()["workers"] if w.get("kind") == "worker"]
            if len(workers) == self.workers and len({w["generation"] for w in workers}) == 1:
                return True
            time.sleep(0.25)
        return False

    # -- SIGKILL of a pool worker of the daemon (busy ones preferred), which must be replaced
    def do_kill(self) -> None:
        workers = [w for w in self.daemon.status()["workers"] if w.get("kind") == "worker"]
        busy = [w for w in workers if w.get("state") == "busy"]
        victim = self.rng.choice(busy if busy and self.rng.random() < 0.75 else workers)
        stat = proc_stat(victim["pid"])
        record: dict = {"t": self.clock.now(), "pid": victim["pid"], "state": victim.get("state"),
                        "generation": victim.get("generation")}
        if stat is None or int(stat[1]) != self.daemon.pid:  # only ever a child of our supervisor
            record.update(ok=False, note="not a child of the supervisor any more")
        else:
            os.kill(victim["pid"], signal.SIGKILL)
            record["pool_ok"], record["pool"] = self.wait_pool(self.workers, {victim["pid"]})
            record["ok"] = record["pool_ok"]
        record["took_s"] = round(self.clock.now() - record["t"], 2)
        self.kills.append(record)

    # -- a full output file system while the downstream consumer is down
    def do_disk_full_begin(self) -> None:
        self.consumer.paused.set()
        record: dict = {"t": self.clock.now()}
        deadline = time.monotonic() + 10  # staging files race the filler for the space: fill until full
        while Filler.free_bytes(self.filler.directory) > Filler.TOP_UP_ABOVE and time.monotonic() < deadline:
            self.filler.top_up()
        record["full_after_s"] = round(self.clock.now() - record["t"], 2)
        record["free_bytes_after_fill"] = Filler.free_bytes(self.filler.directory)
        code, body = self.daemon.api("GET", "/readyz")
        record["readyz"] = {"http": code, **body}
        self.disk_full.append(record)

    def do_disk_full_end(self) -> None:
        self.filler.release()
        self.consumer.paused.clear()
        if self.disk_full:
            self.disk_full[-1]["end"] = self.clock.now()

    # -- a burst of malformed associations, in its own thread (it takes seconds); the daemon is
    #    watched for the CPU it spends and the descriptors it holds during and after the burst
    def do_burst(self) -> None:
        thread = threading.Thread(target=self._burst, daemon=True, name="burst")
        self.burst_threads.append(thread)
        thread.start()

    def _burst(self) -> None:
        record: dict = {"t": self.clock.now(), "supervisor_fds_before": self.sampler.supervisor_fds()}
        cpu0 = self.sampler.supervisor_cpu_s()
        peak = [0]
        watching = threading.Event()

        def watch() -> None:
            while not watching.wait(0.1):
                peak[0] = max(peak[0], self.sampler.supervisor_fds())
        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        record.update(malformed_burst(self.daemon.port, self.s.burst_size, self.s.burst_concurrency,
                                      budget_s=60, seed=self.s.seed + len(self.bursts)))
        record["took_s"] = round(self.clock.now() - record["t"], 2)
        record["supervisor_cpu_s_during"] = round(self.sampler.supervisor_cpu_s() - cpu0, 2)
        cpu1 = self.sampler.supervisor_cpu_s()
        time.sleep(1)
        record["supervisor_fds_1s_after"] = self.sampler.supervisor_fds()
        time.sleep(4)
        record["supervisor_fds_5s_after"] = self.sampler.supervisor_fds()
        record["supervisor_cpu_s_5s_after"] = round(self.sampler.supervisor_cpu_s() - cpu1, 2)
        watching.set()
        watcher.join(2)
        record["supervisor_fds_peak"] = peak[0]
        try:
            dul.echo_once(HOST, self.daemon.port, timeout=10)
            record["echo_after"] = "ok"
        except (OSError, dul.DicomProtocolError) as exc:
            record["echo_after"] = f"failed: {exc}"
        self.bursts.append(record)
