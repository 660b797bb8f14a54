"""The control plane against a running daemon: REST API, live associations, metrics, ctl."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import stat
import statistics
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from tests.support.api import Api, api_daemon, sample
from tests.support.daemons import Daemon
from tests.support.dicomfiles import make_object
from tests.support.paths import DCMTK, ROOT, STORESCPD, TEST_FILES
from tests.support.peers import PEER_ENV, echoscu, require_dcmtk, storescu
from tests.support.processes import children_of, free_port, stop_process, wait_listening, wait_until

TOKEN = "0123456789abcdef0123456789abcdef"


def setup_module() -> None:
    require_dcmtk()


# ---- helpers -------------------------------------------------------------------------------------
def api_pid(d: Daemon) -> int:
    for pid in children_of(d.pid):
        try:
            if b"storescpd.control.api" in Path(f"/proc/{pid}/cmdline").read_bytes():
                return pid
        except OSError:
            pass
    raise AssertionError("no API process among the daemon's children")


def slow_storescu(port: int, path: Path) -> subprocess.Popen:
    return subprocess.Popen([str(DCMTK / "storescu"), "-pdu", "4096", "127.0.0.1", str(port), str(path)],
                            env=PEER_ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def wait_for_association(api: Api, timeout: float = 15.0) -> dict[str, Any]:
    """The first association in /associations, once it is established."""
    def established() -> dict[str, Any] | None:
        items = api.get("/associations").json()
        return items[0] if items and items[0]["state"] == "established" else None

    return wait_until(established, timeout, "an established association in /associations")


# ---- live associations -------------------------------------------------------------------------
def test_slow_transfer_shows_in_associations_with_growing_bytes(daemon_factory, tmp_path: Path) -> None:
    slow = make_object(tmp_path / "slow.dcm", 0, columns=8)  # 16 KB: four 4 KB PDUs, 1 s each
    d, api = api_daemon(daemon_factory, "--sleep-during", "1", "-pdu", "4096")
    peer = slow_storescu(d.port, slow)
    try:
        first = wait_for_association(api)
        assert re.fullmatch(r"127\.0\.0\.1:\d+", first["peer"])
        assert (first["calling_ae"], first["called_ae"]) == ("STORESCU", "ANY-SCP")
        assert first["worker_pid"] in children_of(d.pid)
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d[+-]\d{4}", first["started"])
        seen = []
        deadline = time.monotonic() + 30
        while peer.poll() is None and time.monotonic() < deadline:
            response = api.get(f"/associations/{first['id']}")
            if response.status_code == 200:
                seen.append(response.json()["bytes_received"])
            time.sleep(0.2)  # the sampling pace: a 4 s transfer gives about 20 samples
        assert peer.wait(30) == 0, peer.stdout.read() if peer.stdout else ""
    finally:
        if peer.poll() is None:
            peer.kill()
    growth = sorted(set(seen))
    assert len(growth) >= 3 and growth[0] > 0, f"bytes_received did not grow while running: {seen}"
    assert growth == sorted(growth) and seen == sorted(seen)
    assert api.get(f"/associations/{first['id']}").status_code == 404
    assert api.get("/associations").json() == []
    metrics = api.metrics()
    assert sample(metrics, "storescpd_received_bytes_total") >= max(seen)


def test_objects_stored_rises_by_exactly_n_and_metrics_parse(daemon_factory) -> None:
    d, api = api_daemon(daemon_factory, "--workers", "2")
    before = api.metrics()
    files = [TEST_FILES / n for n in ("CT_small.dcm", "MR_small.dcm", "rtplan.dcm")]
    assert storescu(d.port, files).returncode == 0
    assert storescu(d.port, files[:2]).returncode == 0
    assert echoscu(d.port).returncode == 0
    released = lambda metrics: sample(metrics, "storescpd_associations_total", outcome="released")  # noqa: E731
    # association_ended reaches the supervisor just after the peer's release
    wait_until(lambda: released(api.metrics()) - released(before) >= 3, 10,
               lambda: f"3 more released associations (got {released(api.metrics()) - released(before)})")
    after = api.metrics()
    delta = lambda name, **labels: sample(after, name, **labels) - sample(before, name, **labels)  # noqa: E731
    assert delta("storescpd_objects_stored_total", status="success") == 5
    assert delta("storescpd_objects_stored_total", status="failure") == 0
    assert delta("storescpd_associations_total", outcome="released") == 3
    assert delta("storescpd_store_duration_seconds_count") == 5
    assert delta("storescpd_received_bytes_total") >= sum(f.stat().st_size for f in files) * 0.8
    assert sample(after, "storescpd_workers") == 2
    assert sample(after, "storescpd_associations_active") == 0
    assert sample(after, "storescpd_config_last_reload_successful") == 1
    assert sample(after, "storescpd_output_free_bytes") > 0
    for name in ("storescpd_associations_rejected_total", "storescpd_worker_restarts_total",
                 "storescpd_config_reloads_total", "storescpd_tls_handshake_failures_total"):
        assert any(key[0] == name for key in after), name
    status = api.get("/status").json()
    assert status["totals"]["objects"]["success"] == 5 and status["process_mode"] == "prefork"
    assert len(status["workers"]) == 2 and sum(w["associations_served"] for w in status["workers"]) == 3
    # systemd's STATUS line reads the same count (the supervisor keeps none of its own)
    d.notify.wait_for("STATUS=0 associations, 2 workers, 5 objects stored", timeout=12)


def test_rejections_counted_by_fixed_reason(daemon_factory) -> None:
    d, api = api_daemon(daemon_factory, "--refuse")
    assert echoscu(d.port, "-aet", "SOME_AE_TITLE").returncode != 0
    wait_until(lambda: sample(api.metrics(), "storescpd_associations_rejected_total", reason="refused") >= 1, 10,
               lambda: f"a refused association counted:\n{api.get('/metrics').text}")
    text = api.get("/metrics").text
    assert "SOME_AE_TITLE" not in text
    assert sample(api.metrics(), "storescpd_associations_total", outcome="rejected") == 1


def test_delete_aborts_a_running_association(daemon_factory, tmp_path: Path) -> None:
    slow = make_object(tmp_path / "slow.dcm", 0, columns=32)  # 64 KB in 4 KB PDUs: 16 s if left alone
    d, api = api_daemon(daemon_factory, "--sleep-during", "1", "-pdu", "4096")
    assert api.client.delete("/associations/nope-1").status_code == 404
    peer = slow_storescu(d.port, slow)
    try:
        running = wait_for_association(api)
        started = time.monotonic()
        response = api.client.delete(f"/associations/{running['id']}")
        assert response.status_code == 202 and response.json()["id"] == running["id"]
        again = api.client.delete(f"/associations/{running['id']}")
        assert again.status_code in (404, 409), again.text  # already ending (or ended): no second signal
        output = peer.communicate(timeout=15)[0]
    finally:
        if peer.poll() is None:
            peer.kill()
    assert time.monotonic() - started < 10
    assert peer.returncode != 0
    assert "Abort" in output or "abort" in output, output
    wait_until(lambda: api.get("/associations").json() == [], 10, "the aborted association gone from /associations")
    assert d.stored_files() == []
    staging = d.output / ".storescpd-staging"
    assert not staging.exists() or list(staging.iterdir()) == []
    assert sample(api.metrics(), "storescpd_associations_total", outcome="aborted") == 1
    assert echoscu(d.port).returncode == 0  # and the daemon goes on serving


def test_reload_with_broken_config_answers_422_and_keeps_serving(daemon_factory, tmp_path: Path) -> None:
    cfg = tmp_path / "storescpd.toml"
    cfg.write_text('aetitle = "FIRST"\nworkers = 2\n')
    d, api = api_daemon(daemon_factory, "--config", str(cfg))
    ok = api.client.post("/reload")
    assert ok.status_code == 200 and ok.json()["result"] == "success"
    cfg.write_text("workers = 'many'\n")
    response = api.client.post("/reload")
    assert response.status_code == 422
    body = response.json()
    assert body["result"] == "failure" and "key 'workers' must be an integer" in body["message"]
    assert echoscu(d.port, "-aec", "FIRST").returncode == 0
    status = api.get("/status").json()
    assert status["last_reload"]["result"] == "failure" and status["config_file"] == str(cfg)
    metrics = api.metrics()
    assert sample(metrics, "storescpd_config_reloads_total", result="failure") == 1
    assert sample(metrics, "storescpd_config_reloads_total", result="success") == 1
    assert sample(metrics, "storescpd_config_last_reload_successful") == 0
    assert api.get("/readyz").status_code == 200


CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
MR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.4"


def test_objects_received_and_last_sop_class_update_while_running(daemon_factory) -> None:
    d, api = api_daemon(daemon_factory, "--sleep-after", "1")  # each store holds the association 1 s
    files = [TEST_FILES / n for n in ("MR_small.dcm", "CT_small.dcm", "CT_small.dcm")]
    peer = subprocess.Popen([str(DCMTK / "storescu"), "127.0.0.1", str(d.port), *map(str, files)],
                            env=PEER_ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        running = wait_for_association(api)
        seen: list[tuple[int, str]] = []
        deadline = time.monotonic() + 30
        while peer.poll() is None and time.monotonic() < deadline and len(seen) < 300:
            response = api.get(f"/associations/{running['id']}")
            if response.status_code == 200:
                body = response.json()
                seen.append((body["objects_received"], body["last_sop_class"]))
            time.sleep(0.1)  # the sampling pace: about 10 samples per object held 1 s
        assert peer.wait(30) == 0, peer.stdout.read() if peer.stdout else ""
    finally:
        if peer.poll() is None:
            peer.kill()
            peer.wait(5)
    assert (1, MR_IMAGE_STORAGE) in seen, f"first object not visible while running: {sorted(set(seen))}"
    assert (2, CT_IMAGE_STORAGE) in seen, f"second object not visible while running: {sorted(set(seen))}"
    counts = [n for n, _ in seen]
    assert counts == sorted(counts), f"objects_received went backwards: {counts}"
    assert api.get(f"/associations/{running['id']}").status_code == 404
    assert len(d.stored_files()) >= 2


def test_readyz_follows_the_output_directory(daemon_factory) -> None:
    d, api = api_daemon(daemon_factory)
    assert api.get("/readyz").json()["checks"]["output_writable"] is True

    def wait_ready(code: int) -> dict[str, Any]:
        def answer_if_code() -> dict[str, Any] | None:
            response = api.get("/readyz")
            return response.json() if response.status_code == code else None

        return wait_until(answer_if_code, 10, lambda: f"/readyz answering {code}: {api.get('/readyz').text}",
                          interval=0.1)

    shutil.rmtree(d.output)
    gone = wait_ready(503)
    assert gone["ready"] is False and gone["checks"]["output_writable"] is False
    assert gone["checks"]["listening"] is True and gone["checks"]["workers"] is True
    assert api.get("/healthz").status_code == 200  # the API process itself is fine
    d.output.mkdir()
    back = wait_ready(200)
    assert back["ready"] is True and back["checks"]["output_writable"] is True


# ---- security ----------------------------------------------------------------------------------
def test_token_required_for_mutating_calls(daemon_factory, tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    d, api = api_daemon(daemon_factory, "--api-token-file", str(token_file))
    assert api.get("/status").status_code == 200  # loopback: reads need no token
    assert api.get("/metrics").status_code == 200
    missing = api.client.post("/reload")
    assert missing.status_code == 401 and missing.headers["www-authenticate"] == "Bearer"
    assert api.client.post("/reload", headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert api.client.delete("/associations/1-1").status_code == 401
    good = api.client.post("/reload", headers={"Authorization": f"Bearer {TOKEN}"})
    assert good.status_code == 200
    d.wait_for_log("API: 401 for POST /reload from 127.0.0.1", 5)


def test_tcp_outside_loopback_needs_the_token_for_reads_but_not_probes(daemon_factory, tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    port = free_port()
    # "loopback" is decided by the bound address: 0.0.0.0 is exposed even when we connect via 127.0.0.1
    daemon_factory("--api", f"0.0.0.0:{port}", "--api-token-file", str(token_file))
    anonymous = Api(f"http://127.0.0.1:{port}").wait_up()
    authorized = Api(f"http://127.0.0.1:{port}", token=TOKEN)
    for path in ("/status", "/associations", "/metrics"):
        refused = anonymous.get(path)
        assert refused.status_code == 401 and refused.headers["www-authenticate"] == "Bearer", path
        assert anonymous.get(path, headers={"Authorization": "Bearer " + "x" * len(TOKEN)}).status_code == 401
        assert authorized.get(path).status_code == 200, path
    assert anonymous.get("/healthz").status_code == 200
    assert anonymous.get("/readyz").status_code == 200
    assert authorized.metrics()  # and what comes back with the token is real


def test_tcp_outside_loopback_without_token_refuses_to_start(tmp_path: Path) -> None:
    result = subprocess.run([STORESCPD, "--api", f"0.0.0.0:{free_port()}", "-od", str(tmp_path), str(free_port())],
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 1
    assert "outside loopback" in result.stderr and "api_token_file" in result.stderr


def test_unix_socket_mode_and_ctl(daemon_factory, tmp_path: Path) -> None:
    path = tmp_path / "api.sock"
    d = daemon_factory("--api", f"unix:{path}", "--run-directory", str(tmp_path / "run"))
    api = Api(uds=str(path)).wait_up()
    assert stat.S_IMODE(path.stat().st_mode) == 0o660
    assert stat.S_IMODE((tmp_path / "run" / "control.sock").stat().st_mode) == 0o600
    assert api.get("/healthz").json() == {"status": "ok"}

    def ctl(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([STORESCPD, "ctl", "--api", f"unix:{path}", *args], capture_output=True,
                              text=True, timeout=30)

    status = ctl("status")
    assert status.returncode == 0 and "prefork mode" in status.stdout and "PID" in status.stdout
    assert json.loads(ctl("status", "--json").stdout)["process_mode"] == "prefork"
    assert ctl("associations").stdout == "no associations running\n"
    assert json.loads(ctl("associations", "--json").stdout) == []
    missing = ctl("abort", "123-9")
    assert missing.returncode == 1 and "no running association" in missing.stderr
    assert ctl("reload").stdout.startswith("reload success")
    assert "storescpd_objects_stored_total" in ctl("metrics").stdout
    families = json.loads(ctl("metrics", "--json").stdout)
    assert families["storescpd_associations_active"]["type"] == "gauge"
    d.stop()
    assert not path.exists() and not (tmp_path / "run" / "control.sock").exists()


def test_ctl_shows_and_aborts_a_running_association(daemon_factory, tmp_path: Path) -> None:
    slow = make_object(tmp_path / "slow.dcm", 0, columns=32)
    d, api = api_daemon(daemon_factory, "--sleep-during", "1", "-pdu", "4096")
    address = str(api.client.base_url).replace("http://", "").rstrip("/")
    peer = slow_storescu(d.port, slow)
    try:
        running = wait_for_association(api)
        table = subprocess.run([STORESCPD, "ctl", "associations", "--api", address], capture_output=True,
                               text=True, timeout=30).stdout
        assert table.splitlines()[0].split()[:3] == ["ID", "PEER", "CALLING"]
        assert running["id"] in table and "STORESCU" in table
        aborted = subprocess.run([STORESCPD, "ctl", "abort", running["id"], "--api", address],
                                 capture_output=True, text=True, timeout=30)
        assert aborted.returncode == 0 and f"aborting association {running['id']}" in aborted.stdout
        assert peer.wait(15) != 0
    finally:
        if peer.poll() is None:
            peer.kill()


# ---- the API process is a supervised child ------------------------------------------------------
def test_api_process_restarted_and_stopped_with_the_daemon(daemon_factory) -> None:
    d, api = api_daemon(daemon_factory)
    first = api_pid(d)
    environ = Path(f"/proc/{first}/environ").read_bytes().split(b"\0")
    assert not any(v.startswith((b"NOTIFY_SOCKET=", b"LISTEN_FDS=")) for v in environ)
    os.kill(first, signal.SIGKILL)
    api.wait_up(timeout=20)
    second = api_pid(d)
    assert second != first
    assert sample(api.metrics(), "storescpd_api_restarts_total") == 1
    assert d.stop(signal.SIGTERM) == 0
    assert not Path(f"/proc/{second}").exists() or b"zombie" in Path(f"/proc/{second}/status").read_bytes()


def test_socket_activation_with_an_api_socket(tmp_path: Path) -> None:
    if shutil.which("systemd-socket-activate") is None:
        pytest.fail("systemd-socket-activate missing: apt-get install systemd (.ci/run does this)")
    out = tmp_path / "out"
    out.mkdir()
    dicom_port, api_port = free_port(), free_port()
    proc = subprocess.Popen(
        ["systemd-socket-activate", "-l", f"127.0.0.1:{dicom_port}", "-l", f"127.0.0.1:{api_port}",
         "--fdname=dicom:api", "-E", f"PATH={os.environ['PATH']}", STORESCPD, "-od", str(out), "--workers", "2"],
        stdout=subprocess.DEVNULL, stderr=open(tmp_path / "sa.log", "wb"))
    try:
        # systemd-socket-activate starts the daemon on the first connection to either socket;
        # it is not listening yet right after Popen returns.
        wait_listening(dicom_port)
        assert echoscu(dicom_port).returncode == 0, (tmp_path / "sa.log").read_text()
        api = Api(f"http://127.0.0.1:{api_port}").wait_up()
        assert api.get("/status").json()["process_mode"] == "prefork"
        assert storescu(dicom_port, [TEST_FILES / "CT_small.dcm"]).returncode == 0
        assert sample(api.metrics(), "storescpd_objects_stored_total", status="success") == 1
    finally:
        stop_process(proc)


def test_openapi_json_is_the_apps_schema() -> None:
    from storescpd.control.api.__main__ import openapi_text

    checked_in = (ROOT / "api" / "openapi.json").read_text()
    assert checked_in == openapi_text(), \
        "api/openapi.json differs from the app: regenerate with `python -m storescpd.control.api --print-openapi > api/openapi.json`"


# ---- churn -------------------------------------------------------------------------------------
CHURN_ASSOCIATIONS = 500
CHURN_BUDGET_SECONDS = 90.0


def dir_footprint(path: Path) -> tuple[int, int]:
    entries = list(path.rglob("*"))
    return len(entries), sum(p.lstat().st_size for p in entries)


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def test_churn_leaves_metrics_latency_and_run_directory_flat(daemon_factory, tmp_path: Path) -> None:
    from pynetdicom import AE

    run_dir = tmp_path / "run"
    d, api = api_daemon(daemon_factory, "--fork", "--run-directory", str(run_dir))
    ae = AE(ae_title="CHURN")
    ae.add_requested_context("1.2.840.10008.1.1")
    ae.acse_timeout = ae.network_timeout = ae.dimse_timeout = 10
    latency: list[float] = []
    footprint: list[tuple[int, int]] = []
    rss: list[int] = []
    started = time.monotonic()
    done = 0
    for i in range(CHURN_ASSOCIATIONS):
        assoc = ae.associate("127.0.0.1", d.port)
        assert assoc.is_established, f"association {i} failed"
        assert assoc.send_c_echo().Status == 0
        assoc.release()
        done += 1
        if i < 50 or i >= CHURN_ASSOCIATIONS - 50:
            t0 = time.perf_counter()
            assert api.get("/metrics").status_code == 200
            latency.append(time.perf_counter() - t0)
            footprint.append(dir_footprint(run_dir))
            rss.append(rss_kb(d.pid))
        assert time.monotonic() - started < CHURN_BUDGET_SECONDS, f"only {done} associations in the time budget"
    elapsed = time.monotonic() - started
    first, last = statistics.median(latency[:50]), statistics.median(latency[50:])
    report = (f"{done} fork-mode associations in {elapsed:.1f} s; /metrics median {first * 1000:.1f} ms "
              f"(first 50) vs {last * 1000:.1f} ms (last 50); run directory {footprint[0]} vs {footprint[-1]} "
              f"(entries, bytes); supervisor RSS {rss[0]} vs {rss[-1]} kB")
    print(report)
    (tmp_path / "churn.txt").write_text(report + "\n")
    assert last <= max(3 * first, first + 0.05), report
    assert footprint[-1] == footprint[0], report
    assert rss[-1] <= rss[0] * 1.25 + 4096, report
    wait_until(lambda: sample(api.metrics(), "storescpd_associations_total", outcome="released") >= done, 10,
               f"all {done} associations counted as released")
    assert len(api.metrics()) < 200  # the series do not multiply with associations or workers
