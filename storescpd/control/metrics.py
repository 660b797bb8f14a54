"""Prometheus metrics: the one count of what the daemon did.

Workers report events; the supervisor passes every event to its hooks and counts nothing
itself. The counters live in a registry of the supervisor process and are updated by an event
hook (``Metrics.on_event``); the gauges are read from the supervisor's state when scraped. The
sd_notify STATUS line, ``/status`` and the tests read their totals from here. Every label value
comes from a fixed set declared here: a peer can never create a time series (no AE titles, UIDs
or free text in labels), so the registry does not grow with traffic or churn.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any, Iterator, Mapping, cast

from prometheus_client import CollectorRegistry, Counter, Histogram, disable_created_metrics, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from storescpd.daemon.children import WORKER_KINDS, Child, is_restart
from storescpd.daemon.proxy import REFUSALS as PROXY_REFUSALS
from storescpd.dicom.tls import REASONS as TLS_FAILURE_REASONS
from storescpd.messages import (AssociationEnded, ChildExited, Event, JournalError, Progress, ProxyRefused,
                                 Stored, TlsHandshakeFailed)

if TYPE_CHECKING:
    from storescpd.daemon.supervisor import Supervisor

OUTCOMES = ("released", "aborted", "rejected")
STORE_STATUSES = ("success", "warning", "failure")
RELOAD_RESULTS = ("success", "failure")
JOURNAL_ERROR_KINDS = ("spool", "database")
# Why an association was rejected. The worker reports a sentence; it is mapped onto this set.
REJECT_REASONS = ("refused", "no_implementation_uid", "local_limit", "access_denied", "other")
_REJECT_PATTERNS = (("--refuse", "refused"), ("implementation class uid", "no_implementation_uid"),
                    ("max_associations", "local_limit"))
# Seconds from C-STORE request to response: fsync dominates small objects, size large ones.
STORE_DURATION_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


def reject_reason(text: str) -> str:
    """The label for a rejection sentence (one of REJECT_REASONS)."""
    lowered = (text or "").lower()
    return next((label for pattern, label in _REJECT_PATTERNS if pattern in lowered), "other")


def _one_of(value: Any, allowed: tuple[str, ...], fallback: str) -> str:
    return value if value in allowed else fallback


class Metrics:
    """The supervisor's registry. Attach with ``Metrics(supervisor).attach()``."""

    def __init__(self, supervisor: "Supervisor") -> None:
        self.supervisor = supervisor
        disable_created_metrics()  # *_created series double the output and no dashboard reads them
        self.registry = CollectorRegistry()
        r = self.registry
        self.associations = Counter("storescpd_associations", "Associations by how they ended",
                                    ["outcome"], registry=r)
        self.rejected = Counter("storescpd_associations_rejected", "Associations rejected, by reason",
                                ["reason"], registry=r)
        self.objects = Counter("storescpd_objects_stored", "C-STORE requests answered, by status class",
                               ["status"], registry=r)
        self.received_bytes = Counter("storescpd_received_bytes", "Data set bytes received (P-DATA payload)",
                                      registry=r)
        self.store_duration = Histogram("storescpd_store_duration_seconds",
                                        "C-STORE request to response (publish and fsync included)",
                                        buckets=STORE_DURATION_BUCKETS, registry=r)
        self.worker_restarts = Counter("storescpd_worker_restarts", "Pool workers replaced after they exited",
                                       registry=r)
        self.reloads = Counter("storescpd_config_reloads", "Configuration reloads, by result", ["result"],
                               registry=r)
        self.tls_failures = Counter("storescpd_tls_handshake_failures", "TLS handshakes that failed, by reason",
                                    ["reason"], registry=r)
        self.timed_out = Counter("storescpd_connections_timed_out",
                                 "Connections closed because no association request came within the ACSE timeout",
                                 registry=r)
        self.proxy_refused = Counter("storescpd_proxy_refused",
                                     "Connections refused for their PROXY protocol header: spoofed (from an address "
                                     "not in proxy_protocol_from), missing (a balancer sent none), invalid",
                                     ["reason"], registry=r)
        self.api_restarts = Counter("storescpd_api_restarts", "Control API processes restarted after exiting",
                                    registry=r)
        self.journal_errors = Counter("storescpd_journal_errors", "Receipt journal failures: a receipt not spooled "
                                      "(kept in memory) or the journal database not written (kept in the spool)",
                                      ["kind"], registry=r)
        for outcome in OUTCOMES:
            self.associations.labels(outcome)
        for reason in REJECT_REASONS:
            self.rejected.labels(reason)
        for status in STORE_STATUSES:
            self.objects.labels(status)
        for result in RELOAD_RESULTS:
            self.reloads.labels(result)
        for reason in TLS_FAILURE_REASONS:
            self.tls_failures.labels(reason)
        for reason in PROXY_REFUSALS:
            self.proxy_refused.labels(reason)
        for kind in JOURNAL_ERROR_KINDS:
            self.journal_errors.labels(kind)
        self.last_reload_ok = True
        # Bytes already counted per worker pid for its running association (progress is cumulative).
        self._bytes_seen: dict[int, int] = {}
        r.register(_StateCollector(self))

    def attach(self) -> "Metrics":
        self.supervisor.event_hooks.append(self.on_event)
        self.supervisor.status_hooks.append(self.status_text)
        return self

    def status_text(self) -> str:
        """The totals the sd_notify STATUS line shows after the supervisor's live state."""
        return f"{int(self.value('storescpd_objects_stored_total', status='success'))} objects stored"

    def text(self) -> bytes:
        """The Prometheus text exposition of everything."""
        return generate_latest(self.registry)

    def value(self, name: str, **labels: str) -> float:
        """A sample's current value (0 when absent): for /status totals and tests."""
        return self.registry.get_sample_value(name, labels) or 0.0

    # ---- the event hook --------------------------------------------------------
    def on_event(self, kind: Event, data: Mapping[str, Any], child: Child | None) -> None:
        handler = getattr(self, "_on_" + kind, None)
        if handler is not None:
            handler(data, child)

    def _on_association_requested(self, data: Mapping[str, Any], child: Child | None) -> None:
        if child is not None:
            self._bytes_seen[child.pid] = 0

    def _on_progress(self, data: Mapping[str, Any], child: Child | None) -> None:
        self._count_bytes(child, cast(Progress, data).get("bytes"))

    def _on_stored(self, data: Mapping[str, Any], child: Child | None) -> None:
        stored = cast(Stored, data)
        self.objects.labels(_one_of(stored.get("status"), STORE_STATUSES, "failure")).inc()
        duration = stored.get("duration")
        if isinstance(duration, (int, float)) and duration >= 0:
            self.store_duration.observe(duration)

    def _on_journal_error(self, data: Mapping[str, Any], child: Child | None) -> None:
        self.journal_errors.labels(_one_of(cast(JournalError, data).get("kind"), JOURNAL_ERROR_KINDS, "database")).inc()

    def _on_association_ended(self, payload: Mapping[str, Any], child: Child | None) -> None:
        data = cast(AssociationEnded, payload)
        outcome = _one_of(data.get("outcome"), OUTCOMES, "aborted")
        self.associations.labels(outcome).inc()
        if outcome == "rejected":
            code = data.get("reject_code")
            self.rejected.labels(code if code in REJECT_REASONS else reject_reason(data.get("reject_reason", ""))).inc()
        self._count_bytes(child, data.get("bytes"))
        if child is not None:
            self._bytes_seen.pop(child.pid, None)

    def _on_tls_handshake_failed(self, data: Mapping[str, Any], child: Child | None) -> None:
        reason = cast(TlsHandshakeFailed, data).get("reason")
        self.tls_failures.labels(_one_of(reason, TLS_FAILURE_REASONS, "other")).inc()

    def _on_proxy_refused(self, data: Mapping[str, Any], child: Child | None) -> None:
        self.proxy_refused.labels(_one_of(cast(ProxyRefused, data).get("reason"), PROXY_REFUSALS, "invalid")).inc()

    def _on_connection_timed_out(self, data: Mapping[str, Any], child: Child | None) -> None:
        self.timed_out.inc()

    def _on_reloaded(self, data: Mapping[str, Any], child: Child | None) -> None:
        self.reloads.labels("success").inc()
        self.last_reload_ok = True

    def _on_reload_failed(self, data: Mapping[str, Any], child: Child | None) -> None:
        self.reloads.labels("failure").inc()
        self.last_reload_ok = False

    def _on_child_exited(self, data: Mapping[str, Any], child: Child | None) -> None:
        """Called before the supervisor forgets the child: its association is still in the table."""
        sup = self.supervisor
        exited = cast(ChildExited, data)
        self._bytes_seen.pop(exited["pid"], None)
        if child is None:
            return
        if any(info.worker_pid == child.pid for info in sup.associations.values()):
            self.associations.labels("aborted").inc()  # the worker died mid-association
        if is_restart(child, exited["code"], sup.generation, bool(sup.stopping)):
            self.worker_restarts.inc()
        elif child.kind == "api" and not sup.stopping:
            self.api_restarts.inc()

    def _count_bytes(self, child: Child | None, total: Any) -> None:
        if child is None or not isinstance(total, int):
            return
        seen = self._bytes_seen.get(child.pid, 0)
        if total > seen:
            self.received_bytes.inc(total - seen)
            self._bytes_seen[child.pid] = total


class _StateCollector(Collector):
    """Gauges read from the supervisor's live state at scrape time (nothing to keep in sync)."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        sup = self.metrics.supervisor
        yield _gauge("storescpd_associations_active", "Associations running now", len(sup.associations))
        live = [c for c in sup.children.values() if c.kind in WORKER_KINDS]
        yield _gauge("storescpd_workers", "Worker processes alive (pool workers or fork children)", len(live))
        yield _gauge("storescpd_workers_busy", "Worker processes serving an association now",
                     sum(1 for c in live if c.busy))
        yield _gauge("storescpd_config_last_reload_successful",
                     "1 when the last reload succeeded (or none was tried), else 0",
                     1 if self.metrics.last_reload_ok else 0)
        yield _gauge("storescpd_config_loaded_timestamp_seconds", "When the running configuration was loaded",
                     sup.config_loaded)
        yield _gauge("storescpd_start_time_seconds", "When the supervisor started", sup.started)
        free = output_free_bytes(sup.config.output_directory)
        if free is not None:
            yield _gauge("storescpd_output_free_bytes", "Bytes available to storescpd in the output directory",
                         free)

    def describe(self) -> Iterator[GaugeMetricFamily]:
        return iter(())


def _gauge(name: str, documentation: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, documentation, value=value)


def output_free_bytes(directory: str | os.PathLike[str] | None) -> int | None:
    try:
        st = os.statvfs(directory or ".")
    except OSError:
        return None
    return st.f_bavail * st.f_frsize
