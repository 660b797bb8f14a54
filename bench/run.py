#!/usr/bin/env python3
"""Benchmark DICOM Storage SCPs on loopback with DCMTK's storescu as the one sender.

    .venv/bin/python bench/run.py [--quick] [--receivers ID ...] [--datasets ct tiny big]
                                  [--associations 1 4] [--repeat 3]

Every run is verified (each object on disk exactly once, PixelData SHA-256 equal to the sent
one); a receiver that does not start, times out or fails verification is reported as FAILED in
its row and the run goes on. Results: bench/out/<run>/results.{json,md}; plot: bench/plot.py.
See docs/performance.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

import pydicom

import datasets
import dul
import limits
from procmon import RssSampler, descendants, tree_cpu_seconds

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
VENV_BIN = REPO / ".venv" / "bin"
PYTHON = str(VENV_BIN / "python")
STORESCPD = str(VENV_BIN / "storescpd")
STORESCP = "/usr/bin/storescp"  # absolute: the venv's pynetdicom installs its own `storescp`
STORESCU = "/usr/bin/storescu"
HOST = "127.0.0.1"
# Debian's DCMTK leaves Nagle on unless TCP_NODELAY=1 is set (about 44 ms per response
# otherwise); every process gets it, so DCMTK is measured at its best.
NODELAY_ENV = {"TCP_NODELAY": "1"}


@dataclass(frozen=True)
class Receiver:
    """One receiver configuration. argv may use {port}, {out} (the output directory) and
    {journal} (a receipt journal made fresh for each run, and checked after it)."""

    id: str
    label: str
    argv: tuple[str, ...]
    stores: bool = True  # False: receives and discards (a sender ceiling, not verified)
    default: bool = True  # part of a run without --receivers
    env: dict[str, str] = field(default_factory=dict)
    base: str | None = None  # a variant of this receiver: the table gives the ratio to it, same cell

    @property
    def journal(self) -> bool:
        return any("{journal}" in a for a in self.argv)


# The receivers. Adding a variant (say `storescpd --workers 8`) is one line here.
RECEIVERS: list[Receiver] = [
    Receiver("dcmtk-B", "DCMTK storescp +B", (STORESCP, "+B", "-od", "{out}", "{port}")),
    Receiver("dcmtk-fork", "DCMTK storescp --fork", (STORESCP, "--fork", "-od", "{out}", "{port}")),
    Receiver("pynetdicom-app", "pynetdicom 3.0.4 storescp app",
             (PYTHON, "-m", "pynetdicom", "storescp", "{port}", "-od", "{out}")),
    Receiver("storescpd", "storescpd", (STORESCPD, "{port}", "-od", "{out}")),
    Receiver("storescpd-fork", "storescpd --fork", (STORESCPD, "--fork", "{port}", "-od", "{out}")),
    Receiver("storescpd-prefork", "storescpd --prefork",  # the default mode, spelled out
             (STORESCPD, "--prefork", "{port}", "-od", "{out}"), default=False),
    Receiver("storescpd-nofsync", "storescpd --no-fsync",
             (STORESCPD, "--no-fsync", "{port}", "-od", "{out}")),
    Receiver("storescpd-journal", "storescpd --journal",
             (STORESCPD, "{port}", "-od", "{out}", "--journal", "{journal}"), base="storescpd"),
    Receiver("storescpd-journal-sha256", "storescpd --journal --journal-digest sha256",
             (STORESCPD, "{port}", "-od", "{out}", "--journal", "{journal}", "--journal-digest", "sha256"),
             default=False, base="storescpd"),
    Receiver("dcmtk-ignore", "DCMTK storescp --ignore (sender ceiling)",
             (STORESCP, "--ignore", "-od", "{out}", "{port}"), stores=False),
]
RECEIVER_BY_ID = {r.id: r for r in RECEIVERS}
BASELINES = ("dcmtk-B", "dcmtk-fork")  # ratios in the table are against these, same run

READY_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 10.0


class RunFailed(Exception):
    """A receiver failed in a way the table reports (start, timeout, verification)."""


def log(msg: str) -> None:
    print(msg, flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def _start_time(pid: int) -> str | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            stat = fh.read()
        return stat[stat.rindex(b")") + 2:].split()[19].decode()
    except (OSError, IndexError):
        return None


class RunningReceiver:
    """A started receiver process; stop() ends it and any descendants it left, by pid."""

    def __init__(self, receiver: Receiver, outdir: Path, logfile: Path) -> None:
        self.port = free_port()
        self.journal = logfile.parent / "journal.sqlite"
        remove_journal(self.journal)
        argv = [a.format(port=self.port, out=outdir, journal=self.journal) for a in receiver.argv]
        self.logfile = logfile
        self._log = open(logfile, "wb")
        env = {**os.environ, **NODELAY_ENV, **receiver.env}
        try:
            self.proc = subprocess.Popen(argv, stdout=self._log, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, env=env,
                                         cwd=logfile.parent, start_new_session=True)
        except OSError as exc:
            self._log.close()
            raise RunFailed(f"cannot start {argv[0]}: {exc}") from exc
        self.note = ""

    def log_tail(self, lines: int = 3) -> str:
        try:
            text = self.logfile.read_text(errors="replace").strip().splitlines()
        except OSError:
            return ""
        return " | ".join(text[-lines:])[-300:]

    def wait_ready(self) -> None:
        """Ready when a C-ECHO succeeds; if the port accepts connections but C-ECHO keeps
        failing for 5 s, proceed anyway (the store runs will tell)."""
        deadline = time.monotonic() + READY_TIMEOUT_S
        connected_since = None
        last_error = "no connection"
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RunFailed(f"exited with status {self.proc.returncode} at start: {self.log_tail()}")
            try:
                dul.echo_once(HOST, self.port, timeout=2.0)
                return
            except ConnectionRefusedError:
                pass
            except (OSError, dul.DicomProtocolError) as exc:
                last_error = str(exc) or type(exc).__name__
                connected_since = connected_since or time.monotonic()
                if time.monotonic() - connected_since > 5.0:
                    self.note = f"C-ECHO fails: {last_error}"
                    return
            time.sleep(0.05)
        raise RunFailed(f"not ready after {READY_TIMEOUT_S:.0f} s ({last_error}): {self.log_tail()}")

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self) -> None:
        leftovers = [(pid, _start_time(pid)) for pid in descendants(self.proc.pid)] if self.alive() else []
        if self.alive():
            self.proc.terminate()
            try:
                self.proc.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        for pid, started in leftovers:
            if started is not None and _start_time(pid) == started:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        self._log.close()


def send(port: int, files: list[Path], associations: int, timeout: float, logdir: Path) -> float:
    """Send `files` with `associations` parallel storescu processes; return the wall time."""
    chunks = [files[i::associations] for i in range(associations)]
    env = {**os.environ, **NODELAY_ENV}
    senders, logs = [], []
    start = time.perf_counter()
    try:
        for i, chunk in enumerate(chunks):
            logs.append(open(logdir / f"storescu-{i}.log", "wb"))
            senders.append(subprocess.Popen(
                [STORESCU, "-ta", "120", HOST, str(port), *map(str, chunk)],
                stdout=logs[-1], stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env))
        deadline = time.monotonic() + timeout
        for proc in senders:
            proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        elapsed = time.perf_counter() - start
    except subprocess.TimeoutExpired:
        raise RunFailed(f"timeout: sender not done after {timeout:.0f} s")
    finally:
        for proc in senders:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        for fh in logs:
            fh.close()
    failed = [(i, p.returncode) for i, p in enumerate(senders) if p.returncode != 0]
    if failed:
        i, rc = failed[0]
        tail = (logdir / f"storescu-{i}.log").read_text(errors="replace").strip().splitlines()[-2:]
        raise RunFailed(f"storescu exit status {rc}: {' | '.join(tail)[-300:]}")
    return elapsed


def verify(outdir: Path, manifest: dict) -> list[str]:
    """Problems with what the receiver stored; empty when every object is on disk exactly
    once with the sent PixelData. Files are fully parsed and PixelData hashed."""
    expected = {f["sop_instance_uid"]: f["pixel_sha256"] for f in manifest["files"]}
    seen: Counter[str] = Counter()
    unreadable, unknown, wrong_pixels = [], [], []
    for path in sorted(p for p in outdir.rglob("*") if p.is_file()):
        try:
            ds = pydicom.dcmread(path)
            uid = str(ds.SOPInstanceUID)
            pixels = ds.PixelData
        except Exception as exc:  # any unreadable file is a finding, not a crash
            unreadable.append(f"{path.name} ({type(exc).__name__})")
            continue
        seen[uid] += 1
        if uid not in expected:
            unknown.append(path.name)
        elif datasets.pixel_hash(pixels) != expected[uid]:
            wrong_pixels.append(path.name)
        del ds, pixels
    problems = []
    missing = [uid for uid in expected if uid not in seen]
    duplicated = [uid for uid, n in seen.items() if n > 1]
    for label, items in (("missing", missing), ("stored more than once", duplicated),
                         ("PixelData differs", wrong_pixels), ("unknown SOP Instance UID", unknown),
                         ("unreadable/stray file", unreadable)):
        if items:
            problems.append(f"{len(items)} {label} (e.g. {items[0]})")
    return problems


def verify_journal(journal: Path, manifest: dict, timeout: float = 20.0) -> list[str]:
    """Problems with the receipt journal: one receipt per object sent, no other. Its writer writes
    a moment after the responses: wait for it (the wall time does not include this wait)."""
    import sqlite3

    expected = {f["sop_instance_uid"] for f in manifest["files"]}
    deadline = time.monotonic() + timeout
    rows: list[str] = []
    while time.monotonic() < deadline:
        try:
            with sqlite3.connect(f"file:{journal}?mode=ro", uri=True) as db:
                rows = [r[0] for r in db.execute("SELECT sop_instance_uid FROM receipts")]
        except sqlite3.Error:
            rows = []
        if len(rows) >= len(expected):
            break
        time.sleep(0.2)
    if sorted(rows) == sorted(expected):
        return []
    return [f"journal: {len(rows)} receipts for {len(expected)} objects"
            f" ({len(expected - set(rows))} missing, {len(rows) - len(set(rows))} twice)"]


def remove_journal(journal: Path) -> None:
    for path in (journal, *journal.parent.glob(journal.name + "-*")):
        path.unlink(missing_ok=True)
    spool = journal.with_name(journal.name + ".spool")
    if spool.is_dir():
        clear_directory(spool)
        spool.rmdir()


def clear_directory(directory: Path) -> None:
    for path in sorted(directory.rglob("*"), key=lambda p: len(p.parts), reverse=True):
        if path.is_dir() and not path.is_symlink():
            path.rmdir()
        else:
            path.unlink()


def send_timeout(manifest: dict) -> float:
    """Generous: 44 ms per object (a Nagle-bound receiver) plus 5 MB/s, plus 30 s."""
    return 30 + 0.05 * len(manifest["files"]) + manifest["total_bytes"] / 5e6


def run_once(receiver: Receiver, manifest: dict, associations: int, rundir: Path,
             keep: bool) -> dict:
    name = f"{receiver.id}-{manifest['spec']['name']}-a{associations}"
    outdir = rundir / "recv" / name
    logdir = rundir / "logs" / name
    outdir.mkdir(parents=True, exist_ok=True)
    logdir.mkdir(parents=True, exist_ok=True)
    clear_directory(outdir)
    files = [Path(manifest["directory"]) / f["path"] for f in manifest["files"]]
    result = {"status": "FAILED", "error": "", "wall_s": None,
              "peak_rss_total": None, "peak_rss_single": None, "peak_processes": None}
    os.sync()  # earlier runs' dirty pages must not be written back during this one
    running = None
    sampler = None
    try:
        running = RunningReceiver(receiver, outdir, logdir / "receiver.log")
        running.wait_ready()
        sampler = RssSampler(running.proc.pid)
        sampler.start()
        cpu_before = tree_cpu_seconds(running.proc.pid)
        wall = send(running.port, files, associations, send_timeout(manifest), logdir)
        sampler.stop()
        result.update(wall_s=wall, peak_rss_total=sampler.peak_total,
                      peak_rss_single=sampler.peak_single, peak_processes=sampler.peak_processes)
        if not running.alive():
            raise RunFailed(f"receiver exited with status {running.proc.returncode}: {running.log_tail()}")
        if receiver.stores:
            problems = verify(outdir, manifest)
            if receiver.journal:
                problems += verify_journal(running.journal, manifest)
            if problems:
                raise RunFailed("verification: " + "; ".join(problems))
        # After the checks: what the receiver still did after the last response (a journal's
        # writer writing its last batch) counts too.
        result["cpu_s"] = tree_cpu_seconds(running.proc.pid) - cpu_before
        result["status"] = "ok"
        result["error"] = running.note
    except RunFailed as exc:
        result["error"] = str(exc)
    finally:
        if sampler is not None and sampler.is_alive():
            sampler.stop()
        if running is not None:
            running.stop()
        if not keep:
            clear_directory(outdir)
    return result


def measure_latency(receiver: Receiver, count: int, rundir: Path) -> dict:
    outdir = rundir / "recv" / f"{receiver.id}-latency"
    logdir = rundir / "logs" / f"{receiver.id}-latency"
    outdir.mkdir(parents=True, exist_ok=True)
    logdir.mkdir(parents=True, exist_ok=True)
    running = None
    try:
        running = RunningReceiver(receiver, outdir, logdir / "receiver.log")
        running.wait_ready()
        return {"status": "ok", **dul.measure_latency(HOST, running.port, count)}
    except (RunFailed, OSError, dul.DicomProtocolError) as exc:
        return {"status": "FAILED", "error": str(exc) or type(exc).__name__}
    finally:
        if running is not None:
            running.stop()


# ---------------------------------------------------------------------------------- report

def summarize(runs: list[dict]) -> list[dict]:
    """One row per (dataset, associations, receiver): medians over repeats, and ratios."""
    cells: dict[tuple, list[dict]] = {}
    for run in runs:
        cells.setdefault((run["dataset"], run["associations"], run["receiver"]), []).append(run)
    rows = []
    for (dataset, associations, receiver), group in cells.items():
        ok = [r for r in group if r["status"] == "ok"]
        failed = [r for r in group if r["status"] != "ok"]
        row = {"dataset": dataset, "associations": associations, "receiver": receiver,
               "runs": len(group), "ok_runs": len(ok),
               "status": "ok" if not failed else f"FAILED {len(failed)}/{len(group)}",
               "error": (failed[0]["error"] if failed else next((r["error"] for r in ok if r["error"]), "")),
               "objects": group[0]["objects"], "bytes": group[0]["bytes"]}
        if ok:
            walls = [r["wall_s"] for r in ok]
            wall = statistics.median(walls)
            cpu = [r["cpu_s"] for r in ok if r.get("cpu_s") is not None]
            row.update(cpu_s=statistics.median(cpu) if cpu else None)
            row.update(wall_s=wall, wall_min_s=min(walls), wall_max_s=max(walls),
                       objects_per_s=row["objects"] / wall, mb_per_s=row["bytes"] / wall / 1e6,
                       peak_rss_total=max(r["peak_rss_total"] for r in ok),
                       peak_rss_single=max(r["peak_rss_single"] for r in ok),
                       peak_processes=max(r["peak_processes"] for r in ok))
        rows.append(row)
    by_key = {(r["dataset"], r["associations"], r["receiver"]): r for r in rows}
    for row in rows:
        variant_of = RECEIVER_BY_ID[row["receiver"]].base if row["receiver"] in RECEIVER_BY_ID else None
        for base in (*BASELINES, *([variant_of] if variant_of else [])):
            ref = by_key.get((row["dataset"], row["associations"], base))
            if ref and ref.get("wall_s") and row.get("wall_s"):
                row[f"ratio_{base}"] = ref["wall_s"] / row["wall_s"]
    return rows


def _mb(value: int | None) -> str:
    return "" if value is None else f"{value / 1e6:.0f}"


def _f(value: float | None, fmt: str) -> str:
    return "" if value is None else format(value, fmt)


def markdown(results: dict) -> str:
    out = []
    env = results["environment"]
    out.append(f"Run {results['run_id']} ({'quick' if results['quick'] else 'full'}), "
               f"repeat {results['repeat']}; {env['cpus']} CPUs, kernel {env['kernel']}, "
               f"{env['dcmtk']}, pydicom {env['pydicom']}, pynetdicom {env['pynetdicom']}, "
               f"storescpd {env['storescpd_commit']}.")
    out.append("")
    specs = results["datasets"]
    out.append("| data set | objects | size each | total |")
    out.append("|---|---|---|---|")
    for name, m in specs.items():
        n = len(m["files"])
        out.append(f"| {name} | {n} | {m['total_bytes'] / n / 1e6:.3g} MB | {m['total_bytes'] / 1e6:.0f} MB |")
    out.append("")
    out.append("Throughput (wall time = first storescu started .. last storescu exited; median of the "
               "verified runs; `range` = fastest..slowest of them, for the noise). `x +B` / `x fork`: this "
               "receiver's speed divided by DCMTK `storescp +B` / "
               "`--fork` in the same cell of this run. RSS: peak over the run of the receiver's whole "
               "process tree (sum) and of its largest single process.")
    out.append("")
    out.append("| data set | assoc | receiver | status | wall s | range s | obj/s | MB/s | x +B | x fork "
               "| peak RSS tree MB | peak RSS 1 proc MB | procs |")
    out.append("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    order = {r.id: i for i, r in enumerate(RECEIVERS)}
    rows = sorted(results["rows"], key=lambda r: (list(specs).index(r["dataset"]), r["associations"],
                                                   order.get(r["receiver"], 99)))
    for r in rows:
        status = r["status"]
        if r["status"] != "ok" or r["error"]:
            status += f": {r['error']}".replace("|", "/")[:160]
        label = RECEIVER_BY_ID[r["receiver"]].label if r["receiver"] in RECEIVER_BY_ID else r["receiver"]
        out.append(
            f"| {r['dataset']} | {r['associations']} | {label} | {status} | {_f(r.get('wall_s'), '.3f')} "
            f"| {_f(r.get('wall_min_s'), '.2f')}..{_f(r.get('wall_max_s'), '.2f')} "
            f"| {_f(r.get('objects_per_s'), '.0f')} | {_f(r.get('mb_per_s'), '.0f')} "
            f"| {_f(r.get('ratio_dcmtk-B'), '.2f')} | {_f(r.get('ratio_dcmtk-fork'), '.2f')} "
            f"| {_mb(r.get('peak_rss_total'))} | {_mb(r.get('peak_rss_single'))} "
            f"| {r.get('peak_processes', '')} |")
    variants = [(r, RECEIVER_BY_ID[r["receiver"]].base) for r in rows
                if r["receiver"] in RECEIVER_BY_ID and RECEIVER_BY_ID[r["receiver"]].base]
    if variants:
        out.append("")
        out.append("Variants against the receiver they vary (same cell of this run): its wall time divided by the "
                   "variant's, i.e. the variant's speed as a fraction of the base's (1.00 = no cost); CPU: "
                   "user + system seconds of the receiver's process tree over the run (median), which "
                   "other load on the machine disturbs far less than wall time.")
        out.append("")
        out.append("| data set | assoc | variant | base | x base | wall s | base wall s | CPU s | base CPU s "
                   "| CPU per object, more |")
        out.append("|---|---|---|---|---|---|---|---|---|---|")
        for r, base in variants:
            ref = next((b for b in rows if (b["dataset"], b["associations"], b["receiver"])
                        == (r["dataset"], r["associations"], base)), {})
            extra = (f"{(r['cpu_s'] - ref['cpu_s']) / r['objects'] * 1e6:.0f} us"
                     if r.get("cpu_s") is not None and ref.get("cpu_s") is not None else "")
            out.append(f"| {r['dataset']} | {r['associations']} | {RECEIVER_BY_ID[r['receiver']].label} "
                       f"| {RECEIVER_BY_ID[base].label} | {_f(r.get(f'ratio_{base}'), '.2f')} "
                       f"| {_f(r.get('wall_s'), '.3f')} | {_f(ref.get('wall_s'), '.3f')} "
                       f"| {_f(r.get('cpu_s'), '.2f')} | {_f(ref.get('cpu_s'), '.2f')} | {extra} |")
    if results.get("latency"):
        out.append("")
        out.append("Latency (raw-socket SCU, TCP_NODELAY): association setup = connect until "
                   "A-ASSOCIATE-AC; C-ECHO = round trip on one open association; cycle = connect, "
                   "associate, echo, release. Milliseconds.")
        out.append("")
        out.append("| receiver | status | setup p50 | setup p99 | C-ECHO p50 | C-ECHO p99 | cycle p50 | cycle p99 | n |")
        out.append("|---|---|---|---|---|---|---|---|---|")
        for rid, lat in results["latency"].items():
            label = RECEIVER_BY_ID[rid].label if rid in RECEIVER_BY_ID else rid
            if lat["status"] != "ok":
                out.append(f"| {label} | FAILED: {lat['error'][:160]} | | | | | | | |")
                continue
            out.append(f"| {label} | ok | {lat['setup_p50_ms']:.2f} | {lat['setup_p99_ms']:.2f} "
                       f"| {lat['echo_p50_ms']:.2f} | {lat['echo_p99_ms']:.2f} "
                       f"| {lat['cycle_p50_ms']:.2f} | {lat['cycle_p99_ms']:.2f} "
                       f"| {lat['associations']}/{lat['echoes']} |")
    if results.get("limits"):
        out.append("")
        out.append("Machine limits (median of 3; min..max):")
        out.append("")
        out.append("| limit | median | min | max |")
        out.append("|---|---|---|---|")
        for key, value in results["limits"].items():
            if isinstance(value, dict) and "median" in value:
                out.append(f"| {key} | {value['median']:.0f} | {value['min']:.0f} | {value['max']:.0f} |")
    return "\n".join(out) + "\n"


# ---------------------------------------------------------------------------------- main

def environment() -> dict:
    def cmd(argv: list[str]) -> str:
        try:
            return subprocess.run(argv, capture_output=True, text=True, timeout=10).stdout.strip()
        except (OSError, subprocess.TimeoutExpired):
            return "?"
    import pynetdicom
    return {
        "cpus": os.cpu_count(), "kernel": platform.release(), "python": platform.python_version(),
        "dcmtk": (cmd([STORESCP, "--version"]).splitlines() or ["?"])[0].strip("$ "),
        "pydicom": pydicom.__version__, "pynetdicom": pynetdicom.__version__,
        "storescpd_commit": cmd(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"]) or "uncommitted",
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true",
                        help="small data sets (100 ct, 500 tiny, 2 x 32 MiB big): a couple of minutes")
    parser.add_argument("--receivers", nargs="+", metavar="ID",
                        help="receiver ids (default: all marked default); see --list")
    parser.add_argument("--datasets", nargs="+", choices=list(datasets.DATASETS),
                        default=list(datasets.DATASETS))
    parser.add_argument("--associations", nargs="+", type=int, default=[1, 4],
                        help="parallel storescu processes splitting the file list (default: 1 4)")
    parser.add_argument("--repeat", type=int, default=3, help="runs per cell; the median is reported")
    parser.add_argument("--echo-count", type=int, default=200, help="associations and echoes for latency")
    parser.add_argument("--no-latency", action="store_true")
    parser.add_argument("--no-limits", action="store_true")
    parser.add_argument("--max-minutes", type=float, default=90.0,
                        help="stop starting new runs after this long; the rest is reported SKIPPED")
    parser.add_argument("--keep", action="store_true", help="keep received files under bench/out")
    parser.add_argument("--out", type=Path, help="output directory (default: bench/out/<run id>)")
    parser.add_argument("--list", action="store_true", help="list the receivers and exit")
    args = parser.parse_args(argv)
    if args.list:
        for r in RECEIVERS:
            print(f"{r.id:20} {'default' if r.default else '       '}  {' '.join(r.argv)}")
        sys.exit(0)
    ids = args.receivers or [r.id for r in RECEIVERS if r.default]
    unknown = [i for i in ids if i not in RECEIVER_BY_ID]
    if unknown:
        parser.error(f"unknown receiver(s) {', '.join(unknown)}; known: {', '.join(RECEIVER_BY_ID)}")
    args.receivers = [RECEIVER_BY_ID[i] for i in ids]
    if args.repeat < 1 or any(a < 1 for a in args.associations):
        parser.error("--repeat and --associations must be >= 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    run_id = time.strftime("%Y%m%d-%H%M%S") + ("-quick" if args.quick else "")
    rundir = (args.out or BENCH / "out" / run_id).resolve()
    rundir.mkdir(parents=True, exist_ok=True)
    deadline = time.monotonic() + args.max_minutes * 60
    log(f"run {run_id}: output in {rundir}")

    results: dict = {"run_id": run_id, "quick": args.quick, "repeat": args.repeat,
                     "receivers": [asdict(r) for r in args.receivers],
                     "environment": environment(), "datasets": {}, "runs": [], "rows": [],
                     "latency": {}, "limits": {}}

    def save() -> None:
        results["rows"] = summarize(results["runs"])
        (rundir / "results.json").write_text(json.dumps(results, indent=1, default=str))
        (rundir / "results.md").write_text(markdown(results))

    log("data sets:")
    manifests = {}
    for name in args.datasets:
        manifests[name] = datasets.ensure_dataset(datasets.spec_for(name, args.quick), BENCH / "data", log)
        m = manifests[name]
        log(f"  {name}: {len(m['files'])} objects, {m['total_bytes'] / 1e6:.0f} MB in {m['directory']}")
        results["datasets"][name] = {k: v for k, v in m.items() if k != "files"} | {
            "files": [{"size": f["size"]} for f in m["files"]]}

    if not args.no_limits:
        log("machine limits:")
        results["limits"] = limits.measure(rundir / "limits", args.quick, log=log)
        save()

    broken: dict[str, str] = {}  # receiver id -> why it is skipped from now on
    for name, manifest in manifests.items():
        datasets.warm_page_cache(manifest)
        for associations in args.associations:
            effective = min(associations, len(manifest["files"]))
            timed_out: set[str] = set()
            for rep in range(args.repeat):
                for receiver in args.receivers:  # interleaved, so noise spreads over receivers
                    base = {"dataset": name, "associations": effective, "receiver": receiver.id,
                            "repeat": rep, "objects": len(manifest["files"]),
                            "bytes": manifest["total_bytes"]}
                    if receiver.id in broken or receiver.id in timed_out:
                        why = broken.get(receiver.id) or "skipped after a timeout in this cell"
                        results["runs"].append(base | {"status": "FAILED", "error": why, "wall_s": None})
                        continue
                    if time.monotonic() > deadline:
                        results["runs"].append(base | {"status": "SKIPPED", "error": "time budget",
                                                       "wall_s": None})
                        continue
                    result = run_once(receiver, manifest, effective, rundir, args.keep)
                    results["runs"].append(base | result)
                    shown = (f"{result['wall_s']:.3f} s, {manifest['total_bytes'] / result['wall_s'] / 1e6:.0f} MB/s, "
                             f"peak RSS {result['peak_rss_total'] / 1e6:.0f} MB"
                             if result["wall_s"] else "")
                    log(f"  {name} a{effective} #{rep + 1} {receiver.id:18} {result['status']} {shown} "
                        f"{result['error'][:200]}")
                    if result["status"] != "ok":
                        if "at start" in result["error"] or "not ready" in result["error"] \
                                or "cannot start" in result["error"]:
                            broken[receiver.id] = "did not start: " + result["error"]
                        elif result["error"].startswith("timeout"):
                            timed_out.add(receiver.id)
                save()

    if not args.no_latency:
        log("latency:")
        for receiver in args.receivers:
            if receiver.id in broken:
                results["latency"][receiver.id] = {"status": "FAILED", "error": broken[receiver.id]}
                continue
            lat = measure_latency(receiver, args.echo_count, rundir)
            results["latency"][receiver.id] = lat
            log(f"  {receiver.id:18} {lat['status']} "
                + (f"setup p50 {lat['setup_p50_ms']:.2f} ms, echo p50 {lat['echo_p50_ms']:.2f} ms"
                   if lat["status"] == "ok" else lat["error"]))
        save()

    save()
    latest = BENCH / "out" / "latest"
    try:
        if latest.is_symlink() or latest.exists():
            latest.unlink()
        latest.symlink_to(rundir)
    except OSError:
        pass
    print()
    print((rundir / "results.md").read_text())
    log(f"results: {rundir / 'results.json'}  (plot: .venv/bin/python bench/plot.py {rundir / 'results.json'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
