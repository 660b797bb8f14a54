"""The operator's console and the API docs in a real browser; Host validation; ctl with a URL.

One daemon (a token configured, loopback, one second of sleep per received PDU) and one headless
Chromium serve every test of this module. Screenshots go to the test's temporary directory; with
STORESCPD_SCREENSHOTS=DIR (``make screenshots``) they are also written there for docs/console.md.
"""

from __future__ import annotations

import os
import re
import subprocess
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import httpx
import pytest

from tests.support.daemons import Daemon
from tests.support.paths import DCMTK, STORESCPD, TEST_FILES
from tests.support.peers import PEER_ENV, require_dcmtk
from tests.support.processes import free_port
from tests.support.browser import (CHROMIUM_FLAGS, DESKTOP, PHONE, console_errors, foreign_requests,
                                   require_chromium, requested_urls, set_viewport, start_chromium)

TOKEN = "console-test-token-0123456789abcdef"
CALLING_AE = "CT_ROOM3"
MARKUP_AE = "<i>CT&3</i>"  # markup in a peer's value must show as text, never become markup
ALLOWED_NAME = "console.example"
# 39 kB and 10 kB: seven 8 kB PDUs, one second each
SLOW_FILES = (TEST_FILES / "CT_small.dcm", TEST_FILES / "MR_small.dcm")
APPEAR_SECONDS = 2.0


def setup_module() -> None:
    require_dcmtk()


class Api:
    def __init__(self, port: int, dicom_port: int) -> None:
        self.port = port
        self.dicom_port = dicom_port
        self.origin = f"http://127.0.0.1:{port}"
        self.http = httpx.Client(base_url=self.origin, timeout=10)


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Api]:
    workdir = tmp_path_factory.mktemp("console")
    token_file = workdir / "api.token"
    token_file.write_text(TOKEN + "\n")
    port = free_port()
    daemon = Daemon(workdir, ["--api", f"127.0.0.1:{port}", "--api-token-file", str(token_file),
                              "--api-allowed-host", ALLOWED_NAME, "--workers", "2",
                              "--sleep-during", "1", "-pdu", "8192"])
    daemon.start()
    try:
        client = Api(port, daemon.port)
        until(lambda: _ready(client), 20, "the API did not become ready")
        yield client
    finally:
        daemon.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    yield from start_chromium()


def _ready(api: Api) -> bool:
    try:
        return api.http.get("/readyz").status_code == 200
    except httpx.TransportError:
        return False


def until(condition: Callable[[], Any], seconds: float, message: str, step: float = 0.05) -> Any:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(step)
    raise AssertionError(f"{message} within {seconds:.0f} s")


def slow_sender(port: int, calling_ae: str = CALLING_AE) -> subprocess.Popen[str]:
    return subprocess.Popen([str(DCMTK / "storescu"), "-aet", calling_ae, "-pdu", "8192", "127.0.0.1", str(port),
                             *map(str, SLOW_FILES)], env=PEER_ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)


def association_rows(driver: Any) -> list[list[str]]:
    return driver.execute_script(
        "return Array.from(document.querySelectorAll('#associations tbody tr'),"
        " tr => Array.from(tr.cells, c => c.textContent));")


def parse_bytes(text: str) -> float:
    number, unit = text.split()
    return float(number) * {"B": 1, "kB": 1e3, "MB": 1e6, "GB": 1e9, "TB": 1e12}[unit]


def chart_shows_traffic(driver: Any) -> bool:
    return "peak 0.00" not in (driver.find_element("id", "chart-bytes").get_attribute("aria-label") or "peak 0.00")


def no_horizontal_scroll(driver: Any) -> bool:
    return driver.execute_script("return document.documentElement.scrollWidth <= window.innerWidth")


def screenshot(driver: Any, name: str, tmp_path: Path) -> Path:
    path = tmp_path / name
    assert driver.save_screenshot(str(path)), "the browser took no screenshot"
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 10_000
    target = os.environ.get("STORESCPD_SCREENSHOTS")
    if target:
        Path(target).mkdir(parents=True, exist_ok=True)
        (Path(target) / name).write_bytes(path.read_bytes())
    return path


# ---- the console ---------------------------------------------------------------------------------
def test_console_follows_a_slow_transfer(api: Api, browser: Any, tmp_path: Path) -> None:
    set_viewport(browser, DESKTOP)
    browser.get(api.origin + "/")
    until(lambda: browser.find_element("id", "connection").text.startswith("live"), 10,
          "the console did not show live data")
    assert browser.find_element("id", "version").text == api.http.get("/status").json()["version"]
    until(lambda: int(browser.find_element("id", "chart-bytes").get_attribute("data-points") or 0) > 0, 15,
          "the throughput chart got no point")

    peer = slow_sender(api.dicom_port)
    try:
        seen_by_api = seen_by_page = None
        deadline = time.monotonic() + 15
        while seen_by_page is None and time.monotonic() < deadline:
            if seen_by_api is None and api.http.get("/associations").json():
                seen_by_api = time.monotonic()
            if any(row[1] == CALLING_AE for row in association_rows(browser)):
                seen_by_page = time.monotonic()
            time.sleep(0.05)
        assert seen_by_page is not None, "the association never appeared in the console"
        assert seen_by_page - (seen_by_api or seen_by_page) <= APPEAR_SECONDS

        received: list[float] = []
        shot = phone_checked = False
        shot_shows_traffic = False
        while peer.poll() is None and time.monotonic() < deadline + 30:
            rows = [r for r in association_rows(browser) if r[1] == CALLING_AE]
            if rows:
                peer_cell, _, called, state, objects, size, rate, age, _ = rows[0]
                assert re.fullmatch(r"127\.0\.0\.1:\d+", peer_cell) and called == "ANY-SCP"
                received.append(parse_bytes(size))
            if rows and len(set(received)) >= 2:
                if not phone_checked:
                    assert no_horizontal_scroll(browser), "the console scrolls sideways at 1280x800"
                    set_viewport(browser, PHONE)
                    assert no_horizontal_scroll(browser), "the console scrolls sideways at phone width"
                    assert browser.find_element("css selector", "#associations tbody tr").is_displayed()
                    screenshot(browser, "console-phone.png", tmp_path)
                    set_viewport(browser, DESKTOP)
                    phone_checked = True
                # The picture for the docs: the running association, and the chart with it if it comes in time.
                traffic = chart_shows_traffic(browser)
                if not shot or (traffic and not shot_shows_traffic):
                    screenshot(browser, "console.png", tmp_path)
                    shot, shot_shows_traffic = True, traffic
            time.sleep(0.2)
        assert peer.wait(30) == 0, peer.stdout.read() if peer.stdout else ""
    finally:
        if peer.poll() is None:
            peer.kill()
            peer.wait()
    distinct = sorted(set(received))
    assert shot and len(distinct) >= 3, f"the byte count did not grow in the page: {received}"
    assert received == sorted(received) and distinct[-1] > 0  # it may show 0 B before the first PDU

    until(lambda: not association_rows(browser), 3, "the ended association stayed in the console")
    until(lambda: chart_shows_traffic(browser), 12, "the throughput chart did not show the transfer")
    assert console_errors(browser) == []
    assert foreign_requests(requested_urls(browser), api.origin) == []


def test_abort_asks_to_confirm_and_for_the_token(api: Api, browser: Any) -> None:
    browser.get(api.origin + "/")
    until(lambda: browser.find_element("id", "connection").text.startswith("live"), 10, "no live data")
    console_errors(browser)  # start from a clean log
    peer = slow_sender(api.dicom_port, MARKUP_AE)
    try:
        until(lambda: any(row[1] == MARKUP_AE for row in association_rows(browser)), 10,
              "the association did not appear with its calling AE as text")
        assert browser.find_elements("css selector", "#associations i") == [], "a peer's value became markup"
        button = until(lambda: browser.find_elements("css selector", "#associations button.abort"), 10,
                       "no abort button")[0]
        button.click()
        browser.switch_to.alert.dismiss()  # "no": nothing happens
        time.sleep(0.5)
        assert api.http.get("/associations").json()[0]["state"] == "established"
        button.click()
        browser.switch_to.alert.accept()
        dialog = until(lambda: browser.find_element("id", "token-dialog").is_displayed(), 5,
                       "the console did not ask for the token")
        assert dialog
        browser.find_element("id", "token-input").send_keys(TOKEN)
        browser.find_element("css selector", "#token-dialog button.primary").click()
        assert peer.wait(15) != 0, "the sender was not aborted"
    finally:
        if peer.poll() is None:
            peer.kill()
            peer.wait()
    until(lambda: not association_rows(browser), 3, "the aborted association stayed in the console")
    assert browser.execute_script("return sessionStorage.getItem('storescpd-token')") == TOKEN
    assert browser.execute_script("return localStorage.length") == 0
    assert TOKEN not in browser.current_url
    # The one expected complaint: the DELETE answered 401 before the token was given.
    errors = console_errors(browser)
    assert all("401" in e for e in errors) and len(errors) <= 1, errors
    assert foreign_requests(requested_urls(browser), api.origin) == []


# ---- the API documentation -------------------------------------------------------------------
def test_docs_and_redoc_render_with_nothing_from_another_host(api: Api, browser: Any) -> None:
    requested_urls(browser)
    console_errors(browser)
    browser.get(api.origin + "/docs")
    operations = until(lambda: browser.find_elements("css selector", ".swagger-ui .opblock"), 20,
                       "Swagger UI did not render")
    assert len(operations) >= 8
    browser.get(api.origin + "/redoc")
    until(lambda: "storescpd control API" in browser.execute_script(
        "const h = document.querySelector('.api-info h1'); return h ? h.textContent : ''"), 20,
        "ReDoc did not render")
    assert console_errors(browser) == []
    urls = requested_urls(browser)
    assert any(u.endswith("/static/docs/swagger-ui-bundle.js") for u in urls)
    assert any(u.endswith("/static/docs/redoc.standalone.js") for u in urls)
    assert foreign_requests(urls, api.origin) == []


NETNS_SCRIPT = """
set -e
ip link set lo up
"$STORESCPD" "$DICOM_PORT" -od "$OUT" --api "127.0.0.1:$API_PORT" 2>"$OUT/daemon.log" &
for i in $(seq 100); do curl -s -o /dev/null "127.0.0.1:$API_PORT/healthz" && break; sleep 0.1; done
for page in docs redoc; do
    chromium $FLAGS --user-data-dir="$PROFILE-$page" --virtual-time-budget=15000 --dump-dom \
        "http://127.0.0.1:$API_PORT/$page" >"$OUT/$page.html" 2>/dev/null
done
"""


def test_docs_render_in_a_network_namespace_with_no_network(tmp_path: Path) -> None:
    """The issue's own words: /docs works with the network namespace offline (only loopback up)."""
    if os.geteuid() != 0:
        pytest.skip("a network namespace needs root (CI runs as root)")
    require_chromium()
    env = {**os.environ, "STORESCPD": STORESCPD, "DICOM_PORT": "11112", "API_PORT": "8104", "OUT": str(tmp_path),
           "PROFILE": str(tmp_path / "profile"), "FLAGS": " ".join(f for f in CHROMIUM_FLAGS if "resolver" not in f)}
    # --pid --fork: when the script ends (or is killed), everything it started in there ends too.
    done = subprocess.run(["unshare", "--net", "--pid", "--fork", "--kill-child", "bash", "-c", NETNS_SCRIPT],
                          env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    swagger, redoc = (tmp_path / "docs.html").read_text(), (tmp_path / "redoc.html").read_text()
    assert swagger.count("opblock-summary-path") >= 8, "Swagger UI did not render offline"
    assert re.search(r"<h1[^>]*>storescpd control API", redoc), "ReDoc did not render offline"


# ---- Host validation and ctl -----------------------------------------------------------------
def every_route(api: Api) -> list[tuple[str, str]]:
    routes = [("GET", "/"), ("GET", "/docs"), ("GET", "/redoc"), ("GET", "/openapi.json"),
              ("GET", "/static/console.js"), ("GET", "/static/docs/swagger-ui.css"), ("GET", "/no-such-page")]
    for path, methods in api.http.get("/openapi.json").json()["paths"].items():
        routes += [(method.upper(), path.replace("{association_id}", "1-1")) for method in methods]
    return routes


def test_a_foreign_host_gets_400_on_every_route(api: Api) -> None:
    routes = every_route(api)
    assert len(routes) >= 14
    for method, path in routes:
        refused = api.http.request(method, path, headers={"Host": "attacker.example"})
        assert refused.status_code == 400, (method, path, refused.status_code)
        assert "api_allowed_hosts" in refused.json()["detail"]
        also_refused = api.http.request(method, path, headers={"Host": f"attacker.example:{api.port}"})
        assert also_refused.status_code == 400, (method, path)
    for host in (f"127.0.0.1:{api.port}", f"localhost:{api.port}", ALLOWED_NAME, f"{ALLOWED_NAME.upper()}.:80"):
        assert api.http.get("/status", headers={"Host": host}).status_code == 200, host
    assert api.http.get("/healthz", headers={"Host": ""}).status_code == 400
    # A page on another origin cannot make a browser send a write (a "simple" cross-site POST).
    forged = api.http.post("/reload", headers={"Origin": "http://attacker.example",
                                               "Authorization": f"Bearer {TOKEN}"})
    assert forged.status_code == 403


def test_ctl_takes_an_http_url(api: Api) -> None:
    for address in (f"http://127.0.0.1:{api.port}", f"http://127.0.0.1:{api.port}/", f"127.0.0.1:{api.port}",
                    f"http://localhost:{api.port}/"):
        done = subprocess.run([STORESCPD, "ctl", "--api", address, "status"], capture_output=True, text=True,
                              timeout=30)
        assert done.returncode == 0, (address, done.stderr)
        assert "prefork mode" in done.stdout and "generation 0" in done.stdout
    wrong = subprocess.run([STORESCPD, "ctl", "--api", f"https://127.0.0.1:{api.port}/", "status"],
                           capture_output=True, text=True, timeout=30)
    assert wrong.returncode == 2 and "plain http" in wrong.stderr
