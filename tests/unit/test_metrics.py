"""Metrics from fake worker events, and the control socket driven through a real selector."""

from __future__ import annotations

import json
import os
import selectors
import socket
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from storescpd.config.settings import Config, defaults
from storescpd.control.metrics import Metrics, reject_reason
from storescpd.control.server import ControlServer
from storescpd.daemon.associations import AssociationInfo
from storescpd.daemon.children import Child
from storescpd.daemon.worker import WORKER_BOOT_ERROR


def fake_supervisor(tmp_path: Path) -> Any:
    return SimpleNamespace(
        event_hooks=[], tick_hooks=[], status_hooks=[], associations={}, children={}, stopping=None, generation=0,
        config=Config({**defaults(), "output_directory": str(tmp_path)}), started=time.time() - 5,
        config_loaded=time.time(), last_reload={"result": None, "message": "", "time": None}, mode="prefork",
        listeners={"dicom": [object()]}, boot_failed=False, selector=selectors.DefaultSelector(),
    )


@pytest.fixture
def sup(tmp_path: Path) -> Any:
    return fake_supervisor(tmp_path)


@pytest.fixture
def metrics(sup: Any) -> Metrics:
    return Metrics(sup).attach()


def emit(sup: Any, kind: str, data: dict[str, Any], child: Child | None) -> None:
    for hook in sup.event_hooks:
        hook(kind, data, child)


def samples(m: Metrics) -> dict[tuple[str, tuple], float]:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for f in text_string_to_metric_families(m.text().decode()) for s in f.samples}


def test_an_association_counted_from_its_events(sup: Any, metrics: Metrics) -> None:
    child = Child(101, "worker", 0)
    emit(sup, "association_requested", {"calling_ae": "CT01", "called_ae": "ANY", "peer": "10.0.0.1:4000"}, child)
    emit(sup, "progress", {"bytes": 1000, "objects": 0}, child)
    emit(sup, "progress", {"bytes": 5000, "objects": 0}, child)
    emit(sup, "stored", {"status": "success", "sop_class": "1.2.3", "duration": 0.02}, child)
    emit(sup, "stored", {"status": "failure", "sop_class": "1.2.3", "duration": 0.5}, child)
    emit(sup, "association_ended", {"outcome": "released", "bytes": 8000, "objects": 1}, child)
    assert metrics.value("storescpd_received_bytes_total") == 8000  # progress deltas, then the rest at the end
    assert metrics.value("storescpd_objects_stored_total", status="success") == 1
    assert metrics.value("storescpd_objects_stored_total", status="failure") == 1
    assert metrics.value("storescpd_store_duration_seconds_count") == 2
    assert metrics.value("storescpd_store_duration_seconds_bucket", le="0.025") == 1
    assert metrics.value("storescpd_associations_total", outcome="released") == 1
    assert "CT01" not in metrics.text().decode() and "1.2.3" not in metrics.text().decode()


def test_label_values_come_from_fixed_sets(sup: Any, metrics: Metrics) -> None:
    child = Child(7, "fork", 0)
    emit(sup, "stored", {"status": "x" * 40}, child)
    emit(sup, "association_ended", {"outcome": "weird"}, child)
    emit(sup, "association_ended", {"outcome": "rejected", "reject_reason": "calling AE MALICIOUS_AE not known"}, child)
    emit(sup, "tls_handshake_failed", {"reason": "1.2.840.evil"}, None)
    emit(sup, "tls_handshake_failed", {"reason": "no_shared_cipher"}, None)
    s = samples(metrics)
    labels = {v for key in s for _k, v in key[1]}
    assert "weird" not in labels and "MALICIOUS_AE" not in str(labels) and "1.2.840.evil" not in labels
    assert metrics.value("storescpd_objects_stored_total", status="failure") == 1
    assert metrics.value("storescpd_associations_total", outcome="aborted") == 1
    assert metrics.value("storescpd_associations_rejected_total", reason="other") == 1
    assert metrics.value("storescpd_tls_handshake_failures_total", reason="other") == 1
    assert metrics.value("storescpd_tls_handshake_failures_total", reason="no_shared_cipher") == 1
    assert len(s) == len(samples(Metrics(fake_supervisor(Path("/")))))  # no series appeared from traffic


@pytest.mark.parametrize("text,label", [
    ("refusing association (--refuse)", "refused"),
    ("no implementation class UID (--reject)", "no_implementation_uid"),
    ("3 associations already running (max_associations = 3)", "local_limit"),
    ("", "other"),
])
def test_reject_reasons(text: str, label: str) -> None:
    assert reject_reason(text) == label


def test_worker_death_mid_association_restart_and_reloads(sup: Any, metrics: Metrics) -> None:
    child = Child(55, "worker", 0)
    sup.associations["55-1"] = AssociationInfo("55-1", 55, "10.0.0.1:4000", time.time())
    emit(sup, "child_exited", {"pid": 55, "code": -9}, child)
    assert metrics.value("storescpd_associations_total", outcome="aborted") == 1
    assert metrics.value("storescpd_worker_restarts_total") == 1
    sup.associations.clear()
    emit(sup, "child_exited", {"pid": 56, "code": WORKER_BOOT_ERROR}, Child(56, "worker", 0))
    emit(sup, "child_exited", {"pid": 57, "code": 0}, Child(57, "worker", -1))  # old generation after a reload
    emit(sup, "child_exited", {"pid": 58, "code": 1}, Child(58, "api", 0))
    assert metrics.value("storescpd_worker_restarts_total") == 1
    assert metrics.value("storescpd_api_restarts_total") == 1
    emit(sup, "reload_failed", {"message": "bad"}, None)
    assert metrics.value("storescpd_config_last_reload_successful") == 0
    emit(sup, "reloaded", {}, None)
    assert metrics.value("storescpd_config_last_reload_successful") == 1
    assert metrics.value("storescpd_config_reloads_total", result="failure") == 1
    assert metrics.value("storescpd_config_reloads_total", result="success") == 1


def test_gauges_read_live_state(sup: Any, metrics: Metrics) -> None:
    sup.children = {1: Child(1, "worker", 0, busy=True), 2: Child(2, "worker", 0), 3: Child(3, "api", 0)}
    sup.associations["1-1"] = AssociationInfo("1-1", 1, "x:1", time.time())
    assert metrics.value("storescpd_workers") == 2
    assert metrics.value("storescpd_workers_busy") == 1
    assert metrics.value("storescpd_associations_active") == 1
    assert metrics.value("storescpd_output_free_bytes") > 0
    assert not any(f.name.endswith("_created") for f in text_string_to_metric_families(metrics.text().decode()))


# ---- the control socket never blocks the supervisor --------------------------------------------
def serve(server: ControlServer, sup: Any, until: Any, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not until() and time.monotonic() < deadline:
        for key, _mask in sup.selector.select(0.05):
            key.data(key.fileobj)
        for tick in sup.tick_hooks:
            tick(time.time())


def ask(path: Path, request: bytes) -> socket.socket:
    client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    client.connect(str(path))
    client.sendall(request)
    client.setblocking(False)
    return client


def read_reply(client: socket.socket, box: bytearray) -> bool:
    try:
        while chunk := client.recv(65536):
            box += chunk
    except BlockingIOError:
        pass
    return box.endswith(b"\n")


def test_control_socket_answers_without_blocking(sup: Any, metrics: Metrics, tmp_path: Path) -> None:
    server = ControlServer(sup, metrics, tmp_path / "control.sock")
    server.attach()
    silent = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    silent.connect(str(server.path))  # connects and never writes: must not hold up anyone
    partial = ask(server.path, b'{"cmd": "sta')
    client = ask(server.path, b'{"cmd": "metrics"}\n')
    box = bytearray()
    serve(server, sup, lambda: read_reply(client, box))
    reply = json.loads(box)
    assert reply["ok"] and "storescpd_associations_active" in reply["data"]
    partial.sendall(b'tus"}\n')
    partial_box = bytearray()
    serve(server, sup, lambda: read_reply(partial, partial_box))
    assert json.loads(partial_box)["data"]["process_mode"] == "prefork"
    deep = ask(server.path, b"[" * 60000 + b"\n")  # json.loads raises RecursionError, not ValueError
    deep_box = bytearray()
    serve(server, sup, lambda: read_reply(deep, deep_box))
    assert json.loads(deep_box)["code"] == 400
    bad = ask(server.path, b'{"cmd": "rm -rf"}\n')
    bad_box = bytearray()
    serve(server, sup, lambda: read_reply(bad, bad_box))
    assert json.loads(bad_box)["code"] == 400
    missing = ask(server.path, b'{"cmd": "abort", "id": "9-9"}\n')
    missing_box = bytearray()
    serve(server, sup, lambda: read_reply(missing, missing_box))
    assert json.loads(missing_box)["code"] == 404
    assert len(server.connections) == 1  # only the silent one is left
    for conn in server.connections.values():
        conn.deadline = 0  # as if CONNECTION_SECONDS had passed
    serve(server, sup, lambda: not server.connections, timeout=2)
    assert server.connections == {}  # the silent one was dropped at its deadline
    for s in (silent, partial, client, bad, missing):
        s.close()
    server.close()
    assert not server.path.exists()


def test_dashboard_and_docs_use_only_metrics_that_exist(metrics: Metrics) -> None:
    import re

    root = Path(__file__).resolve().parents[2]
    families = list(text_string_to_metric_families(metrics.text().decode()))
    exposed = {f.name for f in families} | {s.name for f in families for s in f.samples}
    for doc in ("docs/grafana-dashboard.json", "docs/prometheus.yml", "docs/api.md"):
        used = set(re.findall(r"storescpd_[a-z_]+[a-z]", (root / doc).read_text()))
        assert used and used <= exposed, f"{doc} names metrics storescpd does not expose: {used - exposed}"
    json.loads((root / "docs/grafana-dashboard.json").read_text())


def test_recycled_workers_are_no_restarts(sup: Any, metrics: Metrics) -> None:
    recycled = Child(60, "worker", 0)
    recycled.retiring = True  # it said so in its last "idle" (--max-requests), or was retired as surplus
    emit(sup, "child_exited", {"pid": 60, "code": 0}, recycled)
    assert metrics.value("storescpd_worker_restarts_total") == 0
    crashed = Child(61, "worker", 0)
    crashed.retiring = True
    emit(sup, "child_exited", {"pid": 61, "code": 1}, crashed)  # it died instead of exiting
    assert metrics.value("storescpd_worker_restarts_total") == 1


def test_the_run_directory_must_be_ours_and_closed_to_others(tmp_path: Path) -> None:
    from storescpd.config.settings import ConfigError
    from storescpd.control.plane import _run_directory

    mine = tmp_path / "run"
    assert _run_directory(str(mine)) == (mine, False)  # created 0750
    (tmp_path / "link").symlink_to(mine)
    open_to_all = tmp_path / "open"
    open_to_all.mkdir()
    open_to_all.chmod(0o1777)
    cases = [tmp_path / "link", open_to_all]
    if os.geteuid() == 0:  # as root, a directory of another user can be made here
        theirs = tmp_path / "theirs"
        theirs.mkdir(mode=0o755)
        os.chown(theirs, 65534, 65534)
        cases.append(theirs)
    for path in cases:
        with pytest.raises(ConfigError, match="run directory"):
            _run_directory(str(path))
