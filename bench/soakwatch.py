"""The soak's watch on the daemon: every process of its tree sampled from /proc (RSS, fds,
threads, state, CPU) and the least-squares slopes that say whether they stay flat."""

from __future__ import annotations

import os
import statistics
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

sys.path.insert(0, str(Path(__file__).resolve().parent))
from procmon import ProcessTree  # noqa: E402  (a bench/ sibling, as bench/run.py uses it)
from soakload import MIB, Clock  # noqa: E402

PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


# ------------------------------------------------------------------------------- the processes

def read_proc(path: str) -> bytes | None:
    try:
        with open(path, "rb") as fh:
            return fh.read()
    except OSError:
        return None


@dataclass
class ProcSeries:
    """One process's samples: time, RSS (bytes), open descriptors, threads."""

    pid: int
    kind: str
    started: str
    t: list[float] = field(default_factory=list)
    rss: list[int] = field(default_factory=list)
    fds: list[int] = field(default_factory=list)
    threads: list[int] = field(default_factory=list)


def proc_stat(pid: int) -> list[bytes] | None:
    stat = read_proc(f"/proc/{pid}/stat")
    if stat is None:
        return None
    return stat[stat.rindex(b")") + 2:].split()  # comm may hold spaces: fields after the last ')'


class Sampler(threading.Thread):
    """Samples every process of the daemon's tree from /proc: RSS, fds, threads, state, CPU."""

    def __init__(self, clock: Clock, root: int, interval: float) -> None:
        super().__init__(daemon=True, name="sampler")
        self.clock, self.root, self.interval = clock, root, interval
        self.tree = ProcessTree(root)
        self.root_cmdline = read_proc(f"/proc/{root}/cmdline") or b""
        self.series: dict[tuple[int, str], ProcSeries] = {}
        self.process_count: list[tuple[float, int]] = []
        self.zombie_since: dict[tuple[int, str], float] = {}
        self.longest_zombie_s = 0.0
        self.lock = threading.Lock()
        self._done = threading.Event()

    def kind(self, pid: int) -> str:
        if pid == self.root:
            return "supervisor"
        cmdline = read_proc(f"/proc/{pid}/cmdline") or b""
        if b"storescpd.control.api" in cmdline or b"storescpd.api" in cmdline:
            return "api"
        return "worker" if cmdline == self.root_cmdline else "other"

    def sample(self) -> None:
        now = self.clock.now()
        members = self.tree.members()
        with self.lock:
            self.process_count.append((now, len(members)))
            for pid in members:
                self._sample_one(pid, now)

    def _sample_one(self, pid: int, now: float) -> None:
        stat = proc_stat(pid)
        statm = read_proc(f"/proc/{pid}/statm")
        if stat is None or statm is None:
            return
        key = (pid, stat[19].decode())
        if stat[0] == b"Z":
            first = self.zombie_since.setdefault(key, now)
            self.longest_zombie_s = max(self.longest_zombie_s, now - first)
            return
        try:
            fds = len(os.listdir(f"/proc/{pid}/fd"))
        except OSError:
            return
        series = self.series.get(key)
        if series is None:
            series = self.series[key] = ProcSeries(pid, self.kind(pid), key[1])
        series.t.append(now)
        series.rss.append(int(statm.split()[1]) * PAGE_SIZE)
        series.fds.append(fds)
        series.threads.append(int(stat[17]))

    def supervisor_cpu_s(self) -> float:
        stat = proc_stat(self.root)
        return (int(stat[11]) + int(stat[12])) / CLOCK_TICKS if stat else float("nan")

    def supervisor_fds(self) -> int:
        try:
            return len(os.listdir(f"/proc/{self.root}/fd"))
        except OSError:
            return -1

    def supervisor_fd_list(self) -> list[str]:
        """The supervisor's descriptors, described: a file's path, a pipe, or a socket's kind and state."""
        sockets = _socket_table()
        out = []
        try:
            names = os.listdir(f"/proc/{self.root}/fd")
        except OSError:
            return []
        for name in names:
            try:
                target = os.readlink(f"/proc/{self.root}/fd/{name}")
            except OSError:
                continue
            if target.startswith("socket:["):
                target = sockets.get(target[8:-1], "socket (other)")
            elif target.startswith("pipe:["):
                target = "pipe"
            out.append(target)
        return sorted(out)

    def idle_supervisor_fds(self, seconds: float = 3.0) -> tuple[int, list[str]]:
        """The fewest descriptors seen over a few seconds of idleness (an API call in flight holds one)."""
        best: tuple[int, list[str]] = (1 << 30, [])
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            fds = self.supervisor_fd_list()
            if len(fds) < best[0]:
                best = (len(fds), fds)
            time.sleep(0.25)
        return best

    def run(self) -> None:
        while not self._done.wait(self.interval):
            self.sample()

    def stop(self) -> None:
        self._done.set()
        self.join(10)

    def lingering_zombies(self) -> list[int]:
        """Zombies of the tree right now."""
        return [pid for pid in self.tree.members() if (proc_stat(pid) or [b"?"])[0] == b"Z"]


_TCP_STATES = {"01": "established", "06": "time-wait", "08": "close-wait", "0A": "listening"}


def _socket_table() -> dict[str, str]:
    """Socket inode -> "tcp listening", "tcp close-wait", "unix /path", ... from /proc/net."""
    table: dict[str, str] = {}
    for proto in ("tcp", "tcp6"):
        for line in (read_proc(f"/proc/net/{proto}") or b"").decode().splitlines()[1:]:
            fields = line.split()
            table[fields[9]] = f"tcp {_TCP_STATES.get(fields[3], fields[3])}"
    for line in (read_proc("/proc/net/unix") or b"").decode().splitlines()[1:]:
        fields = line.split()
        kind = {"0001": "stream", "0002": "dgram", "0005": "seqpacket"}.get(fields[4], fields[4])
        path = fields[7] if len(fields) > 7 else ""
        table[fields[6]] = f"unix {kind} {Path(path).name if path else '(unnamed)'}"
    return table


def slope_per_minute(t: list[float], values: list[float]) -> float:
    """Least-squares slope of values against t (seconds), per minute; 0 with fewer than 3 points."""
    if len(t) < 3 or max(t) - min(t) <= 0:
        return 0.0
    mt, mv = statistics.fmean(t), statistics.fmean(values)
    den = sum((x - mt) ** 2 for x in t)
    return sum((x - mt) * (y - mv) for x, y in zip(t, values)) / den * 60.0


Window = tuple[float, float]


def _outside(t: float, since: float, excluded: list[Window]) -> bool:
    return t >= since and not any(a <= t <= b for a, b in excluded)


def _growth(values: list[float]) -> float:
    """Median of the last quarter minus median of the first: a step the slope would spread thin."""
    quarter = max(1, len(values) // 4)
    return statistics.median(values[-quarter:]) - statistics.median(values[:quarter])


def _trend(series: ProcSeries, since: float, excluded: list[Window]) -> dict:
    keep = [i for i, t in enumerate(series.t) if _outside(t, since, excluded)]
    if not keep:
        return {"samples": 0}
    t = [series.t[i] for i in keep]
    rss = [series.rss[i] / MIB for i in keep]
    fds = [series.fds[i] for i in keep]
    threads = [series.threads[i] for i in keep]
    return {
        "pid": series.pid, "samples": len(keep), "span_s": round(t[-1] - t[0], 1),
        "rss_mib_first": round(rss[0], 2), "rss_mib_last": round(rss[-1], 2), "rss_mib_max": round(max(rss), 2),
        "rss_mib_per_min": round(slope_per_minute(t, rss), 4), "rss_mib_growth": round(_growth(rss), 3),
        "fds_first": fds[0], "fds_last": fds[-1], "fds_max": max(series.fds),
        "fds_per_min": round(slope_per_minute(t, fds), 4),
        "threads_max": max(series.threads), "threads_per_min": round(slope_per_minute(t, threads), 4),
    }


def _round(value: float | None, digits: int = 4) -> float | None:
    return None if value is None else round(value, digits)


def _early_late(points: list[tuple[float, float]], pick: Callable) -> tuple[float | None, float | None]:
    """`pick` (min, median) of the values of the first and of the last third of (time, value) points."""
    points = sorted(points)
    third = max(1, len(points) // 3)
    if not points:
        return None, None
    return pick(v for _, v in points[:third]), pick(v for _, v in points[-third:])


def _generations(workers: list[ProcSeries]) -> list[list[ProcSeries]]:
    """Workers forked together (first seen within 2 s of each other): a reload's pool, or a replacement."""
    groups: list[list[ProcSeries]] = []
    for series in sorted((s for s in workers if s.t), key=lambda s: s.t[0]):
        if groups and series.t[0] - groups[-1][0].t[0] <= 2.0:
            groups[-1].append(series)
        else:
            groups.append([series])
    return groups


def worker_summary(workers: list[ProcSeries], since: float, excluded: list[Window]) -> dict:
    """Workers live one reload period each, so their own slopes mostly show their first association
    after the fork. Across generations two sizes show a leak that outlives a worker: a generation's
    fresh size (its lowest sample: the fork before any association; it follows the supervisor) and
    what a worker holds once it has served (its last sample, in workers that grew by over 1 MiB)."""
    lived = [x for x in (_trend(s, since, excluded) for s in workers) if x["samples"] >= 5 and x["span_s"] >= 15]
    fresh = [(g[0].t[0], min(min(s.rss) for s in g) / MIB) for g in _generations(workers) if g[0].t[0] >= since]
    served = [(s.t[0], s.rss[-1] / MIB) for s in workers
              if s.t and s.t[0] >= since and max(s.rss) - min(s.rss) > MIB]
    fresh_early, fresh_late = _early_late(fresh, min)  # a generation may have no worker sampled unused
    served_early, served_late = _early_late(served, statistics.median)

    def most(key: str, pick: Callable = max) -> float | None:
        return _round(pick(x[key] for x in lived)) if lived else None
    return {
        "processes": len(workers), "long_lived_processes": len(lived), "generations": len(fresh),
        "rss_mib_max": round(max((max(s.rss) for s in workers if s.rss), default=0) / MIB, 2),
        "fds_max": max((max(s.fds) for s in workers if s.fds), default=0),
        "threads_max": max((max(s.threads) for s in workers if s.threads), default=0),
        "per_process_rss_mib_per_min_median": most("rss_mib_per_min", statistics.median),
        "per_process_rss_mib_per_min_max": most("rss_mib_per_min"),
        "per_process_fds_per_min_max": most("fds_per_min"),
        "per_process_threads_per_min_max": most("threads_per_min"),
        "fresh_rss_mib_early": _round(fresh_early, 2), "fresh_rss_mib_late": _round(fresh_late, 2),
        "fresh_rss_mib_per_min": round(slope_per_minute([a for a, _ in fresh], [b for _, b in fresh]), 4),
        "served_rss_mib_early": _round(served_early, 2), "served_rss_mib_late": _round(served_late, 2),
        "served_rss_mib_per_min": round(slope_per_minute([a for a, _ in served], [b for _, b in served]), 4),
    }


def resource_summary(sampler: Sampler, warmup: float, excluded: list[Window]) -> dict:
    """Slopes after the warm-up and outside the `excluded` windows (malformed bursts and the
    seconds after them, which their own check covers): the long-lived supervisor and API per
    process, the workers per process and across generations."""
    with sampler.lock:
        series = list(sampler.series.values())
        counts = list(sampler.process_count)
    out: dict = {"warmup_s": warmup, "excluded_windows": excluded}
    for kind in ("supervisor", "api"):
        longest = max((s for s in series if s.kind == kind), key=lambda s: len(s.t), default=None)
        out[kind] = _trend(longest, warmup, excluded) if longest else {"samples": 0}
        out[f"{kind}_processes"] = sum(1 for s in series if s.kind == kind)
    out["workers"] = worker_summary([s for s in series if s.kind == "worker"], warmup, excluded)
    after = [(t, n) for t, n in counts if _outside(t, warmup, excluded)]
    out["process_count"] = {"max": max((n for _, n in counts), default=0),
                            "per_min": round(slope_per_minute([a for a, _ in after], [b for _, b in after]), 4)}
    out["longest_zombie_s"] = round(sampler.longest_zombie_s, 2)
    out["zombies_seen"] = len(sampler.zombie_since)
    return out
