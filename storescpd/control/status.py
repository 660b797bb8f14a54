"""What the control socket answers about the daemon: status, readiness and reload results.

Plain functions of the supervisor's state and the metrics, so that the JSON ``/status``,
``/readyz`` and ``ctl`` show is the same count Prometheus scrapes.
"""

from __future__ import annotations

import os
import time
from typing import TYPE_CHECKING, Any

from storescpd import __version__
from storescpd.control.metrics import OUTCOMES, STORE_STATUSES, Metrics, output_free_bytes
from storescpd.daemon.children import WORKER_KINDS

if TYPE_CHECKING:
    from storescpd.daemon.supervisor import Supervisor


def iso(t: float | None) -> str | None:
    """A time for JSON: local ISO 8601 with the offset (None stays None)."""
    return time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(t)) if t else None


def reload_result(result: dict[str, Any]) -> dict[str, Any]:
    """The supervisor's reload outcome with its time in ISO 8601."""
    return {**result, "time": iso(result.get("time"))}


def status(sup: "Supervisor", metrics: Metrics) -> dict[str, Any]:
    """The daemon now: its workers, its live state and the metrics' totals."""
    workers = [
        {"pid": c.pid, "kind": c.kind, "state": "busy" if c.busy else ("retiring" if c.retiring else "idle"),
         "associations_served": c.served,
         "generation": c.generation, "started": iso(c.started)}
        for c in sup.children.values() if c.kind in WORKER_KINDS
    ]
    v = metrics.value
    return {
        "version": __version__,
        "pid": os.getpid(),
        "started": iso(sup.started),
        "uptime_seconds": round(time.time() - sup.started, 3),
        "process_mode": sup.mode,
        "stopping": sup.stopping,
        "workers": workers,
        "active_associations": len(sup.associations),
        "totals": {
            "associations": {o: int(v("storescpd_associations_total", outcome=o)) for o in OUTCOMES},
            "objects": {s: int(v("storescpd_objects_stored_total", status=s)) for s in STORE_STATUSES},
            "received_bytes": int(v("storescpd_received_bytes_total")),
            "worker_restarts": int(v("storescpd_worker_restarts_total")),
        },
        "config_file": sup.config.source_file,
        "config_loaded": iso(sup.config_loaded),
        "output_directory": str(sup.config.output_directory),
        "output_free_bytes": output_free_bytes(sup.config.output_directory),
        "generation": sup.generation,
        "last_reload": reload_result(sup.last_reload),
        "journal": bool(sup.config.journal),
    }


def readiness(sup: "Supervisor") -> dict[str, Any]:
    """Whether the daemon can take associations now, and each check that says so."""
    out = sup.config.output_directory
    if sup.mode == "prefork":  # the current generation's: after a reload the old one only finishes
        workers_up = any(c.kind == "worker" and c.generation == sup.generation and not c.retiring
                         for c in sup.children.values())
    else:
        workers_up = not sup.boot_failed
    checks = {
        "listening": bool(sup.listeners) and not sup.stopping,
        "accepting": not sup.stopping and sup.draining_until is None,  # false while a stop drains (drain_delay)
        "workers": workers_up,
        "output_writable": bool(sup.config.ignore) or os.access(out, os.W_OK | os.X_OK),
    }
    return {"ready": all(checks.values()), "checks": checks, "output_free_bytes": output_free_bytes(out)}
