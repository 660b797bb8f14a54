"""Peak RSS of a process and all its descendants, sampled from /proc.

The kernel here has no /proc/PID/task/TID/children, so the tree is rebuilt from the parent pid
in /proc/PID/stat. To keep the sampler cheap (it shares 2 cores with sender and receiver),
each pid's parent is read once, when the pid first appears; only the tree's members have
their RSS read on every sample.
"""

from __future__ import annotations

import os
import threading
import time

PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")


def _ppid(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            stat = fh.read()
    except OSError:
        return None
    # comm may contain spaces and parentheses: the fields after the last ')' are fixed.
    return int(stat[stat.rindex(b")") + 2:].split()[1])


CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def tree_cpu_seconds(root: int) -> float:
    """CPU time (user + system) of the process tree so far: its members' own, and what the root
    collected from children it reaped (a worker or hook that came and went)."""
    total = 0
    for pid in ProcessTree(root).members():
        try:
            with open(f"/proc/{pid}/stat", "rb") as fh:
                fields = fh.read().rsplit(b")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12]) + (int(fields[13]) + int(fields[14]) if pid == root else 0)
    return total / CLOCK_TICKS


def _rss_bytes(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/statm", "rb") as fh:
            return int(fh.read().split()[1]) * PAGE_SIZE
    except (OSError, IndexError, ValueError):
        return 0


class ProcessTree:
    """Tracks the descendants of one root pid."""

    def __init__(self, root: int) -> None:
        self.root = root
        self.parent: dict[int, int | None] = {}

    def members(self) -> list[int]:
        alive = {int(name) for name in os.listdir("/proc") if name.isdigit()}
        for pid in list(self.parent):
            if pid not in alive:
                del self.parent[pid]
        for pid in alive:
            if pid not in self.parent:
                self.parent[pid] = _ppid(pid)
        children: dict[int, list[int]] = {}
        for pid, ppid in self.parent.items():
            if ppid is not None:
                children.setdefault(ppid, []).append(pid)
        if self.root not in alive:
            return []
        out, stack = [], [self.root]
        while stack:
            pid = stack.pop()
            out.append(pid)
            stack.extend(children.get(pid, ()))
        return out


class RssSampler(threading.Thread):
    """Samples the tree every `interval` seconds until stop(); keeps the peaks."""

    def __init__(self, root: int, interval: float = 0.05) -> None:
        super().__init__(daemon=True)
        self.tree = ProcessTree(root)
        self.interval = interval
        self._stop_event = threading.Event()
        self.peak_total = 0
        self.peak_single = 0
        self.peak_processes = 0
        self.samples = 0

    def sample(self) -> None:
        pids = self.tree.members()
        sizes = [_rss_bytes(pid) for pid in pids]
        self.samples += 1
        self.peak_total = max(self.peak_total, sum(sizes))
        self.peak_single = max(self.peak_single, max(sizes, default=0))
        self.peak_processes = max(self.peak_processes, len(pids))

    def run(self) -> None:
        while not self._stop_event.is_set():
            self.sample()
            self._stop_event.wait(self.interval)

    def stop(self) -> None:
        self._stop_event.set()
        self.join(timeout=5)
        self.sample()


def descendants(root: int) -> list[int]:
    """The root's descendants (not the root itself), deepest last."""
    return [pid for pid in ProcessTree(root).members() if pid != root]
