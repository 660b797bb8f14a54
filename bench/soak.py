#!/usr/bin/env python3
"""Soak storescpd under faults, black-box, and prove that nothing acknowledged is lost.

    sudo .venv/bin/python bench/soak.py [--duration 1800] [--out DIR] [--json PATH]

Four senders (two DCMTK storescu, two pynetdicom SCUs, so every object's status is known) send
objects of 3 KB to 64 MiB, each with its own SOP Instance UID, to a pre-fork storescpd for
--duration seconds while faults are injected through the daemon's public surfaces only:

- a reload every 30 s, alternately SIGHUP and POST /reload, the pool alternating between 4 and 5
  workers; every fourth one is a broken configuration file that must be refused (422) while the
  daemon keeps serving;
- SIGKILL of a random pool worker (busy ones preferred) every 45 s; the pool must be whole again;
- a period of a full output file system (the output directory is a tmpfs this script mounts; a
  filler keeps it full while the downstream consumer is "down");
- bursts of malformed associations over loopback (garbage, half-sent A-ASSOCIATE-RQ then close,
  RQs whose lengths lie, aborts and bad PDVs after the AC).

A consumer plays the downstream PACS: it checks every file the daemon publishes (the data set
after the file meta must be byte-identical to what was sent, its UID published once) and then
removes it, so a 30-minute run needs no more than the tmpfs. At the end the daemon is stopped
and the script checks: every object acknowledged 0x0000 was published exactly once and
identical; nothing else was published; `.storescpd-staging/` is empty; no zombie lingered; the
supervisor's descriptors are back to their start; fds, threads and RSS per process are flat
(least-squares slopes reported). Results: <out>/soak.json and a summary on stdout; the exit
status is 0 only when every check passed. Needs root (mount). See docs/reliability.md.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import asdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import dul  # noqa: E402  (bench/ siblings, as bench/run.py uses them)
from soakfaults import (MALFORMED, Daemon, Faults, Filler, Scratch, Settings, schedule,  # noqa: E402
                        write_config)
from soakload import (HOST, SIZE_CLASSES, STAGING, STORESCU, SUCCESS, Clock, Consumer, Ledger,  # noqa: E402
                      Sender, SentObject, Template, UidSource, build_template, log)
from soakwatch import Sampler, proc_stat, resource_summary  # noqa: E402

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent


# ------------------------------------------------------------------------------- the verdict

def object_summary(objects: list[SentObject], elapsed: float) -> dict:
    acked = [o for o in objects if o.status == SUCCESS]
    by_status = Counter("none" if o.status is None else f"0x{o.status:04X}" for o in objects)
    by_size = {s.name: {"sent": sum(1 for o in objects if o.size == s.name),
                        "acknowledged": sum(1 for o in acked if o.size == s.name)} for s in SIZE_CLASSES}
    by_tool = {tool: {"sent": sum(1 for o in objects if o.tool == tool),
                      "acknowledged": sum(1 for o in acked if o.tool == tool)}
               for tool in sorted({o.tool for o in objects})}
    acked_bytes = sum(o.nbytes for o in acked)
    return {"sent": len(objects), "acknowledged": len(acked), "by_status": dict(by_status),
            "published_not_acknowledged": sum(1 for o in objects if o.published and o.status != SUCCESS),
            "by_size": by_size, "by_tool": by_tool, "acknowledged_bytes": acked_bytes,
            "acknowledged_mb_per_s": round(acked_bytes / 1e6 / max(elapsed, 1e-9), 2)}


def _check(name: str, ok: bool, detail: str) -> dict:
    return {"name": name, "ok": bool(ok), "detail": detail}


def _first(items: list, n: int = 3) -> str:
    return ", ".join(str(i) for i in items[:n]) + (" ..." if len(items) > n else "")


def object_checks(objects: list[SentObject], ledger: Ledger, windows: list[dict], bursts: list[dict]) -> list[dict]:
    acked = [o for o in objects if o.status == SUCCESS]
    lost = [o.uid for o in acked if o.published != 1 or not o.identical]
    duplicated = [o.uid for o in objects if o.published > 1]
    failed_published = [o.uid for o in objects if o.published and o.status not in (None, SUCCESS)
                        and not 0xB000 <= o.status <= 0xBFFF]
    checks = [
        _check("acknowledged_on_disk_once_identical", acked and not lost,
               f"{len(acked)} acknowledged 0x0000; {len(lost)} not published exactly once and identical"
               + (f": {_first(lost)}" if lost else "")),
        _check("published_identical", not ledger.bad_files,
               f"{len(ledger.bad_files)} published files differ from what was sent {_first(ledger.bad_files)}"),
        _check("no_duplicates", not duplicated, f"{len(duplicated)} UIDs published more than once {_first(duplicated)}"),
        _check("nothing_else_published", not ledger.unknown_files,
               f"{len(ledger.unknown_files)} files not sent by the soak {_first(ledger.unknown_files)}"),
        _check("failures_not_published", not failed_published,
               f"{len(failed_published)} objects answered with a failure status were published {_first(failed_published)}"),
    ]
    for window in windows:
        end = window.get("end", math.inf)
        during = Counter(o.status for o in objects if window["t"] + 1 <= o.t_sent <= end - 1)
        refused = sum(n for st, n in during.items() if st is not None and st != SUCCESS)
        recovered = any(o.status == SUCCESS and o.t_sent > end for o in objects)
        window["statuses_during"] = {("none" if k is None else f"0x{k:04X}"): n for k, n in during.items()}
        checks.append(_check(f"disk_full_at_{window['t']:.0f}s", refused > 0 and recovered,
                             f"during: {window['statuses_during']}; a success after it: {recovered}"))
    for burst in bursts:
        recovered = any(o.status == SUCCESS and o.t_sent > burst["t"] + burst["took_s"] for o in objects)
        checks.append(_check(f"burst_at_{burst['t']:.0f}s_survived", recovered and burst["echo_after"] == "ok",
                             f"{burst['connections']} malformed connections; C-ECHO after: {burst['echo_after']}; "
                             f"a success after it: {recovered}"))
        invalid = {k.name for k in MALFORMED if not k.valid_rq}
        # each malformed request has one context at most: with none valid, an RJ or an A-ABORT is the answer
        accepted = {f"{kind}: {answer}": n for kind, answers in burst["answers"].items() if kind in invalid
                    for answer, n in answers.items() if answer.startswith("AC")}
        checks.append(_check(f"burst_at_{burst['t']:.0f}s_malformed_rq_never_accepted", not accepted,
                             f"malformed requests answered with an A-ASSOCIATE-AC: {accepted or 'none'} "
                             f"(PS3.8 9.3: RJ or A-ABORT)"))
    return checks


def resource_checks(res: dict, fds_start: list[str], fds_end: list[str], bursts: list[dict]) -> list[dict]:
    sup, workers = res["supervisor"], res["workers"]
    extra = Counter(fds_end) - Counter(fds_start)
    enough = sup.get("samples", 0) >= 30  # outside the warm-up and the bursts' windows
    too_few = f"only {sup.get('samples', 0)} samples outside the warm-up and the bursts: run longer"
    checks = [
        _check("supervisor_single_threaded", sup.get("threads_max") == 1, f"threads max {sup.get('threads_max')}"),
        _check("supervisor_fds_back_to_start", len(fds_end) <= len(fds_start),
               f"idle before the faults {len(fds_start)}, idle after the run {len(fds_end)}; "
               f"more at the end: {dict(extra) or 'none'}"),
        _check("supervisor_rss_flat", enough and abs(sup["rss_mib_per_min"]) < 0.5 and sup["rss_mib_growth"] < 4,
               f"{sup['rss_mib_per_min']:+} MiB/min, {sup['rss_mib_growth']:+} MiB from the first to the last "
               f"quarter ({sup['rss_mib_first']} -> {sup['rss_mib_last']} MiB)" if enough else too_few),
        _check("supervisor_fds_flat", enough and abs(sup["fds_per_min"]) < 1.0,
               f"{sup['fds_per_min']:+} fds/min" if enough else too_few),
        _check("worker_rss_bounded", workers["rss_mib_max"] < 160,
               f"max worker RSS {workers['rss_mib_max']} MiB for objects up to 64 MiB"),
        _check("worker_rss_flat_across_generations",
               None not in (workers["fresh_rss_mib_late"], workers["served_rss_mib_late"])
               and workers["fresh_rss_mib_late"] - workers["fresh_rss_mib_early"] < 2.0
               and workers["served_rss_mib_late"] - workers["served_rss_mib_early"] < 4.0,
               f"a fresh worker: {workers['fresh_rss_mib_early']} MiB in the first third of the run, "
               f"{workers['fresh_rss_mib_late']} MiB in the last; a worker that served: "
               f"{workers['served_rss_mib_early']} -> {workers['served_rss_mib_late']} MiB"),
        _check("no_lingering_zombie", res["longest_zombie_s"] < 5,
               f"longest zombie {res['longest_zombie_s']} s ({res['zombies_seen']} seen)"),
    ]
    for burst in bursts:
        back = burst["supervisor_fds_5s_after"] <= burst["supervisor_fds_before"] + 4
        checks.append(_check(f"burst_at_{burst['t']:.0f}s_resources_return", back and burst["supervisor_cpu_s_5s_after"] < 1.0,
                             f"supervisor fds {burst['supervisor_fds_before']} before, peak {burst['supervisor_fds_peak']}, "
                             f"{burst['supervisor_fds_1s_after']} 1 s and {burst['supervisor_fds_5s_after']} 5 s after; "
                             f"CPU {burst['supervisor_cpu_s_during']} s during, {burst['supervisor_cpu_s_5s_after']} s "
                             f"in the 5 s after"))
    return checks


def fault_checks(faults: Faults) -> list[dict]:
    failed_reloads = [r for r in faults.reloads if not r.get("ok")]
    failed_kills = [k for k in faults.kills if not k.get("ok")]
    return [
        _check("reloads", faults.reloads and not failed_reloads,
               f"{len(faults.reloads)} reloads, {len(failed_reloads)} not as expected {_first(failed_reloads, 2)}"),
        _check("killed_workers_replaced", faults.kills and not failed_kills,
               f"{len(faults.kills)} SIGKILLs, {len(failed_kills)} not replaced {_first(failed_kills, 2)}"),
        _check("faults_injected", not faults.errors, _first(faults.errors, 5) or "every scheduled fault ran"),
    ]


def daemon_log_summary(path: Path) -> dict:
    text = path.read_text(errors="replace") if path.exists() else ""
    levels = Counter(line[0] for line in text.splitlines() if len(line) > 1 and line[1] == ":")
    tracebacks = [i for i, line in enumerate(text.splitlines()) if line.startswith("Traceback")]
    errors = Counter(re.sub(r"\d+", "N", line)[:140] for line in text.splitlines() if line.startswith(("E:", "F:")))
    return {"lines_by_level": dict(levels), "tracebacks": len(tracebacks),
            "error_lines": dict(errors.most_common(12))}


def environment(note: str) -> dict:
    import platform

    import pydicom
    import pynetdicom

    def cmd(argv: list[str]) -> str:
        try:
            return subprocess.run(argv, capture_output=True, text=True, timeout=10).stdout.strip()
        except (OSError, subprocess.TimeoutExpired):
            return "?"
    return {"cpus": os.cpu_count(), "kernel": platform.release(), "python": platform.python_version(),
            "pydicom": pydicom.__version__, "pynetdicom": pynetdicom.__version__,
            "dcmtk": (cmd([STORESCU, "--version"]).splitlines() or ["?"])[0].strip("$ "),
            "storescpd_commit": cmd(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"]) or "?",
            "storescpd_dirty": bool(cmd(["git", "-C", str(REPO), "status", "--porcelain", "--", "storescpd"])),
            "load_average_start": os.getloadavg(), "note": note}


# ------------------------------------------------------------------------------- the run

def wait_idle(daemon: Daemon, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = daemon.status()
        if status["active_associations"] == 0 and all(w.get("state") != "busy" for w in status["workers"]):
            return True
        time.sleep(0.5)
    return False


class Soak:
    """One soak run: mount, start, load and break, stop, verify, report."""

    def __init__(self, s: Settings, rundir: Path, workdir: Path) -> None:
        self.s, self.rundir, self.workdir = s, rundir, workdir
        self.clock = Clock()
        self.ledger = Ledger()
        self.stop_senders = threading.Event()
        self.stop_faults = threading.Event()
        self.results: dict = {"settings": asdict(s), "schedule": schedule(s)}

    def run(self, note: str) -> dict:
        self.results["environment"] = environment(note)
        rng = random.Random(self.s.seed)
        log(f"templates: {', '.join(c.name for c in SIZE_CLASSES)}")
        templates = {c.name: build_template(c, rng) for c in SIZE_CLASSES}
        scratch = Scratch(self.workdir / "fs", self.s.fs_size_mib)
        daemon = None
        try:
            output = scratch.mountpoint / "out"
            output.mkdir()
            config = self.rundir / "storescpd.toml"
            write_config(config, self.s.workers[0])
            daemon = Daemon(self.rundir, self.workdir, output, config, self.s.log_level)
            daemon.start()
            log(f"storescpd pid {daemon.pid}: DICOM port {daemon.port}, API port {daemon.api_port}, output {output}")
            self.drive(daemon, templates, Filler(scratch.mountpoint / "filler"), rng)
        finally:
            self.stop_senders.set()
            self.stop_faults.set()
            try:
                if daemon is not None and daemon.alive():
                    daemon.stop(timeout=60)
            finally:
                scratch.close()
        return self.results

    def drive(self, daemon: Daemon, templates: dict[str, Template], filler: Filler, rng: random.Random) -> None:
        sampler = Sampler(self.clock, daemon.pid, self.s.sample_every)
        sampler.start()
        dul.echo_once(HOST, daemon.port, timeout=10)
        time.sleep(1)
        self.results["supervisor_fds_idle_start"] = sampler.idle_supervisor_fds()[1]
        self.results["workers_idle_start"] = daemon.status()["workers"]
        consumer = Consumer(daemon.output, self.ledger, templates, self.rundir / "findings")
        consumer.start()
        uids = UidSource(rng)
        tools = ("storescu", "pynetdicom")
        senders = [Sender(f"sender{i}-{tools[i % 2]}", tools[i % 2], daemon.port, self.clock, templates,
                          self.ledger, uids, self.workdir / "send", random.Random(f"{self.s.seed}/{i}"),
                          self.stop_senders) for i in range(self.s.senders)]
        faults = Faults(self.s, self.clock, daemon, sampler, consumer, filler, self.stop_faults)
        for thread in (*senders, faults):
            thread.start()
        self.progress(daemon)
        log("time is up: senders finish their association, faults stop")
        self.stop_senders.set()
        for sender in senders:
            sender.join(900)
        faults.join(120)
        self.stop_faults.set()
        for thread in faults.burst_threads:
            thread.join(120)
        elapsed = self.clock.now()
        self.finish(daemon, sampler, consumer, faults, senders, elapsed)

    def progress(self, daemon: Daemon) -> None:
        next_line = 0.0
        while self.clock.now() < self.s.duration and daemon.alive():
            if self.clock.now() >= next_line:
                objects = self.ledger.snapshot()
                acked = sum(1 for o in objects if o.status == SUCCESS)
                log(f"  {self.clock.now():6.0f} s: {len(objects)} objects sent, {acked} acknowledged")
                next_line += max(10.0, self.s.duration / 20)
            time.sleep(0.5)

    def finish(self, daemon: Daemon, sampler: Sampler, consumer: Consumer, faults: Faults,
               senders: list[Sender], elapsed: float) -> None:
        checks = [_check("daemon_alive_through_the_run", daemon.alive(), f"exit status {daemon.proc.poll()}")]
        if daemon.alive():
            checks.append(_check("idle_after_the_run", wait_idle(daemon, 60), "no association left running"))
            checks.append(_check("pool_as_at_the_start", faults.restore_pool(),
                                 f"{self.s.workers[0]} workers of one generation, as before the faults"))
        self.results["supervisor_fds_idle_end"] = sampler.idle_supervisor_fds()[1]
        self.results["workers_idle_end"] = daemon.status()["workers"] if daemon.alive() else []
        sampler.sample()
        sampler.stop()
        tree = [(pid, (proc_stat(pid) or [b""] * 20)[19]) for pid in sampler.tree.members() if pid != daemon.pid]
        zombies_at_end = sampler.lingering_zombies()
        stop_started = time.monotonic()
        exit_code = daemon.stop(timeout=60)
        stop_s = time.monotonic() - stop_started
        left = [pid for pid, started in tree if (proc_stat(pid) or [b""] * 20)[19] == started]
        for pid in left:  # a process of ours that outlived its supervisor: a finding, and stopped
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        consumer.stop()
        consumer.paused.set()
        consumer.scan()
        staging = daemon.output / STAGING
        leftovers = sorted(p.name for p in staging.iterdir()) if staging.exists() else []
        objects = self.ledger.snapshot()
        with open(self.rundir / "objects.jsonl", "w") as fh:
            for obj in objects:
                fh.write(json.dumps(asdict(obj)) + "\n")
        bursts = [(b["t"], b["t"] + b["took_s"] + 40.0) for b in faults.bursts]  # 40 s: past the ACSE timeout
        resources = resource_summary(sampler, min(60.0, max(20.0, 0.1 * self.s.duration)), bursts)
        checks += [
            _check("daemon_stopped_cleanly", exit_code == 0, f"exit status {exit_code} after SIGTERM, {stop_s:.1f} s"),
            _check("no_process_left", not left, f"left after the supervisor exited: {left}"),
            _check("no_zombie_at_end", not zombies_at_end, f"zombies: {zombies_at_end}"),
            _check("staging_empty", not leftovers, f"{len(leftovers)} files in {STAGING}/ {_first(leftovers)}"),
            _check("every_sender_progressed",
                   all(any(o.sender == s.name and o.status == SUCCESS for o in objects) for s in senders),
                   ", ".join(f"{s.name}: {s.associations} associations" for s in senders)),
        ]
        checks += object_checks(objects, self.ledger, faults.disk_full, faults.bursts)
        checks += resource_checks(resources, self.results["supervisor_fds_idle_start"],
                                  self.results["supervisor_fds_idle_end"], faults.bursts)
        checks += fault_checks(faults)
        race = (self.rundir / "pynetdicom.log").read_text(errors="replace").count("Received unexpected C-STORE")
        self.results.update(
            elapsed_s=elapsed, objects=object_summary(objects, elapsed),
            pynetdicom_responses_lost_to_its_reactor=race,
            consumer={"files_checked": consumer.checked, "bytes_checked": consumer.checked_bytes},
            senders={s.name: {"tool": s.tool, "associations": s.associations, "errors": dict(s.errors),
                              "longest_association_s": round(s.longest_s, 1), "slow_associations": s.slow}
                     for s in senders},
            faults={"reloads": faults.reloads, "kills": faults.kills, "disk_full": faults.disk_full,
                    "bursts": faults.bursts, "errors": faults.errors},
            resources=resources,
            daemon={"exit_code": exit_code, "stop_s": round(stop_s, 2), **daemon_log_summary(daemon.log_path)},
            checks=checks, ok=all(c["ok"] for c in checks), load_average_end=os.getloadavg())


def print_summary(results: dict) -> None:
    o, r = results["objects"], results["resources"]
    log(f"\n{results['elapsed_s']:.0f} s: {o['sent']} objects sent, {o['acknowledged']} acknowledged "
        f"({o['acknowledged_bytes'] / 1e9:.2f} GB, {o['acknowledged_mb_per_s']} MB/s); statuses {o['by_status']}")
    f = results["faults"]
    log(f"faults: {len(f['reloads'])} reloads, {len(f['kills'])} worker kills, {len(f['disk_full'])} disk-full "
        f"periods, {len(f['bursts'])} bursts ({sum(b['connections'] for b in f['bursts'])} malformed connections)")
    for kind in ("supervisor", "api"):
        x = r[kind]
        if x.get("samples"):
            log(f"{kind}: RSS {x['rss_mib_first']} -> {x['rss_mib_last']} MiB ({x['rss_mib_per_min']:+} MiB/min), "
                f"fds {x['fds_first']} -> {x['fds_last']} ({x['fds_per_min']:+}/min), threads max {x['threads_max']}")
    w = r["workers"]
    log(f"workers: {w['processes']} processes, RSS max {w['rss_mib_max']} MiB, per-process RSS slope median "
        f"{w['per_process_rss_mib_per_min_median']} max {w['per_process_rss_mib_per_min_max']} MiB/min, "
        f"fresh {w['fresh_rss_mib_early']} -> {w['fresh_rss_mib_late']} MiB, "
        f"served {w['served_rss_mib_early']} -> {w['served_rss_mib_late']} MiB")
    for c in results["checks"]:
        log(f"  {'ok  ' if c['ok'] else 'FAIL'} {c['name']}: {c['detail']}")
    log("PASSED" if results["ok"] else "FAILED")


def parse_args(argv: list[str] | None) -> tuple[Settings, argparse.Namespace]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    defaults = Settings(duration=1800)
    parser.add_argument("--duration", type=float, default=1800, help="seconds of load and faults (default: 1800)")
    for name in ("senders", "reload_every", "kill_every", "disk_full_every", "disk_full_for", "burst_every",
                 "burst_size", "burst_concurrency", "fs_size_mib", "sample_every", "log_level", "seed"):
        default = getattr(defaults, name)
        parser.add_argument("--" + name.replace("_", "-"), type=type(default), default=default,
                            help=f"(default: {default})")
    parser.add_argument("--out", type=Path, help="run directory (default: bench/out/soak-<time>)")
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--note", default="", help="recorded with the results (e.g. 'shared machine, nice 10')")
    parser.add_argument("--keep", action="store_true", help="keep the senders' scratch directory")
    args = parser.parse_args(argv)
    values = {k: getattr(args, k) for k in Settings.__dataclass_fields__ if k != "workers" and hasattr(args, k)}
    return Settings(**values), args


def main(argv: list[str] | None = None) -> int:
    settings, args = parse_args(argv)
    if os.geteuid() != 0:
        log("bench/soak.py mounts a tmpfs as the output directory (the disk-full period): run it as root")
        return 2
    rundir = (args.out or BENCH / "out" / time.strftime("soak-%Y%m%d-%H%M%S")).resolve()
    rundir.mkdir(parents=True, exist_ok=True)
    pynetdicom_log = logging.getLogger("pynetdicom")  # aborts happen by design: logged to a file, not printed
    pynetdicom_log.addHandler(logging.FileHandler(rundir / "pynetdicom.log"))
    pynetdicom_log.setLevel(logging.WARNING)
    pynetdicom_log.propagate = False
    for stale in Scratch.reap_stale():
        log(f"unmounted {stale}, left by a soak run that was killed")
    # SIGTERM ends the run like Ctrl-C: the daemon is stopped and the tmpfs unmounted on the way out
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    workdir = Path(tempfile.mkdtemp(prefix="storescpd-soak-"))
    log(f"soak for {settings.duration:.0f} s; results in {rundir}")
    try:
        results = Soak(settings, rundir, workdir).run(args.note)
    finally:
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    text = json.dumps(results, indent=1, default=str)
    (rundir / "soak.json").write_text(text)
    if args.json:
        args.json.write_text(text)
    print_summary(results)
    return 0 if results["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
