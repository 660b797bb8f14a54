#!/usr/bin/env python3
"""The receipt journal's queries on a journal of a million receipts.

    .venv/bin/python bench/journal_query.py [--rows 1000000] [--repeat 200] [--no-api]

Builds the journal once with the writer's own code (SqliteJournal.apply, batches of 2000) and
keeps it in bench/data/ (about 600 MB for a million rows); then times each query the API makes
directly on the database, and the same through a running storescpd's HTTP API (GET /receipts?...
with uvicorn, FastAPI and a fresh read-only connection per request, as an operator sees it).
Receipts are synthetic but shaped like a busy site: studies of 50..1500 objects from 12 AE
titles, a patient per 2 studies, 40 days of traffic, UIDs as long as real ones.
Results: bench/out/journal-query-<time>.{json,md}. See docs/performance.md.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
sys.path.insert(0, str(REPO))

from storescpd.store.journal_db import ReceiptQuery, SqliteJournal, open_for_writing, utc_text  # noqa: E402

STORESCPD = str(REPO / ".venv" / "bin" / "storescpd")
ROOT_UID = "1.2.826.0.1.3680043.8.498."
START = 1_700_000_000.0
DAYS = 40
AE_TITLES = [f"MODALITY{n:02d}" for n in range(12)]


def log(message: str) -> None:
    print(message, flush=True)


def build(path: Path, rows: int, seed: int = 1) -> None:
    """A journal of `rows` receipts, written by the writer's code path."""
    rng = random.Random(seed)
    db = open_for_writing(path)
    made, study_n = 0, 0
    batch: list[dict[str, Any]] = []
    started = time.monotonic()
    span = DAYS * 86400
    while made < rows:
        study_n += 1
        study = f"{ROOT_UID}1.{study_n}.{rng.getrandbits(48)}"
        size = min(rng.randint(50, 1500), rows - made)
        at = START + span * made / rows
        ae = rng.choice(AE_TITLES)
        patient = f"PAT{study_n // 2:07d}"
        modality = "CT" if ae < "MODALITY06" else "MR"
        for n in range(size):
            series = f"{ROOT_UID}2.{study_n}.{n // 200}"
            uid = f"{ROOT_UID}3.{study_n}.{n}.{rng.getrandbits(40)}"
            batch.append({
                "op": "receipt", "received_at": utc_text(at + n * 0.05), "association_id": f"{1000 + study_n % 50}-{study_n}",
                "calling_ae": ae, "called_ae": "STORESCP", "peer": f"10.0.{study_n % 200}.{n % 250}:4{n % 1000:03d}",
                "sop_class_uid": "1.2.840.10008.5.1.4.1.1.2", "sop_instance_uid": uid, "study_instance_uid": study,
                "series_instance_uid": series, "patient_id": patient, "modality": modality,
                "transfer_syntax_uid": "1.2.840.10008.1.2.1", "status": 0,
                "path": f"/var/lib/storescpd/incoming/S_{study_n}/{modality}.{uid}", "size": 525_000 + n,
                "sha256": None,
            })
            if len(batch) >= 2000:
                db.apply(batch)
                batch = []
        made += size
        if study_n % 500 == 0:
            log(f"  {made} receipts, {made / (time.monotonic() - started):.0f}/s")
    if batch:
        db.apply(batch)
    db.close()
    log(f"  built {made} receipts of {study_n} studies in {time.monotonic() - started:.0f} s")


def samples(path: Path, rng: random.Random, count: int) -> dict[str, list[Any]]:
    """Values to query for: real studies, instances, patients and times of the journal."""
    import sqlite3

    with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as db:
        total = db.execute("SELECT MAX(id) FROM receipts").fetchone()[0]
        picks = [db.execute("SELECT study_instance_uid, sop_instance_uid, patient_id, series_instance_uid, "
                            "received_at, calling_ae FROM receipts WHERE id = ?",
                            (rng.randint(1, total),)).fetchone() for _ in range(count)]
    return {"study": [p[0] for p in picks], "instance": [p[1] for p in picks], "patient": [p[2] for p in picks],
            "series": [p[3] for p in picks], "time": [p[4] for p in picks], "calling": [p[5] for p in picks]}


def hour_after(when: str) -> str:
    from datetime import datetime

    moment = datetime.fromisoformat(when.replace("Z", "+00:00"))
    return utc_text(moment.timestamp() + 3600)


def queries(values: dict[str, list[Any]]) -> dict[str, Callable[[int], tuple[dict[str, Any], str]]]:
    """Name -> (i -> (ReceiptQuery fields, the same as an API query string))."""
    def by(name: str, column: str, param: str) -> Callable[[int], tuple[dict[str, Any], str]]:
        return lambda i: ({"filters": {column: values[name][i]}}, f"/receipts?{param}={values[name][i]}")

    return {
        "by study (GET /receipts?study_uid=)": by("study", "study_instance_uid", "study_uid"),
        "by patient": by("patient", "patient_id", "patient_id"),
        "by series": by("series", "series_instance_uid", "series_uid"),
        "by SOP instance": by("instance", "sop_instance_uid", "sop_instance_uid"),
        "calling AE within an hour": lambda i: (
            {"filters": {"calling_ae": values["calling"][i]}, "since": values["time"][i],
             "until": hour_after(values["time"][i])},
            f"/receipts?calling_ae={values['calling'][i]}&since={values['time'][i]}&until={hour_after(values['time'][i])}"),
        "newest 100, no filter": lambda i: ({}, "/receipts"),
        "newest before a time (page deep in the past)": lambda i: (
            {"until": values["time"][i]}, f"/receipts?until={values['time'][i]}"),
    }


def time_db(path: Path, values: dict[str, list[Any]], repeat: int) -> dict[str, dict[str, float]]:
    results = {}
    for name, make in queries(values).items():
        took = []
        for i in range(repeat):
            fields, _ = make(i)
            started = time.perf_counter()
            db = SqliteJournal(path, readonly=True)  # as the API: a connection per request
            page, _cursor = db.receipts(ReceiptQuery(**fields))
            db.close()
            took.append((time.perf_counter() - started) * 1000)
        results[name] = stats(took)
        log(f"  db   {name:48} p50 {results[name]['p50_ms']:7.2f} ms  p99 {results[name]['p99_ms']:7.2f} ms")
    took = []
    for i in range(repeat):
        started = time.perf_counter()
        db = SqliteJournal(path, readonly=True)
        db.latest(values["instance"][i])
        db.studies(None, None, 100)
        db.close()
        took.append((time.perf_counter() - started) * 1000)
    results["latest receipt + a page of studies"] = stats(took)
    return results


def time_api(path: Path, values: dict[str, list[Any]], repeat: int, workdir: Path) -> dict[str, dict[str, float]]:
    import httpx

    port, api = free_port(), free_port()
    out = workdir / "out"
    out.mkdir(parents=True, exist_ok=True)
    with open(workdir / "daemon.log", "wb") as daemon_log:
        daemon = subprocess.Popen([STORESCPD, str(port), "-od", str(out), "--journal", str(path), "--api",
                                   f"127.0.0.1:{api}", "--workers", "1"], stdout=subprocess.DEVNULL,
                                  stderr=daemon_log, start_new_session=True)
    results = {}
    try:
        client = httpx.Client(base_url=f"http://127.0.0.1:{api}", timeout=30)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                if client.get("/receipts", params={"limit": 1}).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        for name, make in queries(values).items():
            took = []
            for i in range(repeat):
                _, url = make(i)
                started = time.perf_counter()
                response = client.get(url)
                took.append((time.perf_counter() - started) * 1000)
                assert response.status_code == 200, response.text
            results[name] = stats(took)
            log(f"  http {name:48} p50 {results[name]['p50_ms']:7.2f} ms  p99 {results[name]['p99_ms']:7.2f} ms")
    finally:
        daemon.terminate()
        daemon.wait(30)
    return results


def stats(took: list[float]) -> dict[str, float]:
    ordered = sorted(took)
    return {"p50_ms": statistics.median(ordered), "p99_ms": ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))],
            "max_ms": ordered[-1], "n": len(ordered)}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def markdown(results: dict[str, Any]) -> str:
    lines = [f"Journal of {results['rows']} receipts ({results['size_mb']:.0f} MB, {results['studies']} studies); "
             f"{results['repeat']} queries each, random values taken from the journal; 100 rows a page. "
             "Milliseconds.", "", "| query | db p50 | db p99 | HTTP p50 | HTTP p99 |", "|---|---|---|---|---|"]
    for name, db in results["db"].items():
        http = results.get("http", {}).get(name, {})
        over_http = f"{http['p50_ms']:.2f} | {http['p99_ms']:.2f}" if http else " | "
        lines.append(f"| {name} | {db['p50_ms']:.2f} | {db['p99_ms']:.2f} | {over_http} |")
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=200)
    parser.add_argument("--no-api", action="store_true", help="time the database only")
    args = parser.parse_args()
    path = BENCH / "data" / f"journal-{args.rows}.sqlite"
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.exists():
        log(f"building {path}")
        partial = path.with_name(path.name + ".part")
        for leftover in partial.parent.glob(partial.name + "*"):
            leftover.unlink()
        build(partial, args.rows)
        for suffix in ("-wal", "-shm"):
            Path(str(partial) + suffix).unlink(missing_ok=True)
        partial.rename(path)
    run = time.strftime("%Y%m%d-%H%M%S")
    workdir = BENCH / "out" / f"journal-query-{run}"
    workdir.mkdir(parents=True, exist_ok=True)
    values = samples(path, random.Random(7), args.repeat)
    import sqlite3

    with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as db:
        rows = db.execute("SELECT COUNT(*) FROM receipts").fetchone()[0]
        studies = db.execute("SELECT COUNT(*) FROM studies").fetchone()[0]
    results: dict[str, Any] = {"rows": rows, "studies": studies, "size_mb": path.stat().st_size / 1e6,
                               "repeat": args.repeat, "cpus": os.cpu_count()}
    log("database:")
    results["db"] = time_db(path, values, args.repeat)
    if not args.no_api:
        log("HTTP API:")
        results["http"] = time_api(path, values, args.repeat, workdir)
    (workdir / "results.json").write_text(json.dumps(results, indent=1))
    (workdir / "results.md").write_text(markdown(results))
    print()
    print(markdown(results))
    log(f"results: {workdir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
