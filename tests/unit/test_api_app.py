"""The API's address rules, its request guard (Host, Origin, headers) and throughput history, without a daemon."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from fastapi import HTTPException
from fastapi.testclient import TestClient

from storescpd.config.api_address import ApiAddress, api_problems, host_name
from storescpd.config.load import validate
from storescpd.config.settings import defaults
from storescpd.control import ctl
from storescpd.control.api.app import CONSOLE_CSP, DOCS_CSP, ThroughputHistory, create_app, redoc_script


# ---- addresses -----------------------------------------------------------------------------------
@pytest.mark.parametrize("text, host, port", [
    ("127.0.0.1:8104", "127.0.0.1", 8104),
    ("http://127.0.0.1:8104", "127.0.0.1", 8104),
    ("http://127.0.0.1:8104/", "127.0.0.1", 8104),
    ("HTTP://api.example.org:8104/", "api.example.org", 8104),
    ("http://localhost/", "localhost", 80),
    ("[::1]:8104", "::1", 8104),
    ("http://[::1]:8104/", "::1", 8104),
    ("http://[fe80::1]", "fe80::1", 80),
])
def test_api_address_accepts_urls_and_host_port(text: str, host: str, port: int) -> None:
    address = ApiAddress.parse(text)
    assert (address.unix_path, address.host, address.port) == (None, host, port)


def test_api_address_unix_and_how_it_prints() -> None:
    assert ApiAddress.parse("unix:/run/storescpd/api.sock").unix_path == "/run/storescpd/api.sock"
    assert str(ApiAddress.parse("http://[::1]:8104/")) == "[::1]:8104"
    assert str(ApiAddress.parse("http://127.0.0.1:8104")) == "127.0.0.1:8104"


@pytest.mark.parametrize("text, says", [
    ("https://127.0.0.1:8104/", "plain http"),
    ("http://127.0.0.1:8104/api", "without a path"),
    ("http://user@127.0.0.1:8104", "without a path"),
    ("http://127.0.0.1:8104/?x=1", "without a path"),
    ("127.0.0.1", "HOST:PORT"),
    ("127.0.0.1:0", "HOST:PORT"),
    ("127.0.0.1:65536", "HOST:PORT"),
    ("127.0.0.1:http", "HOST:PORT"),
    ("::1:8104", "[v6]:PORT"),
    ("[::1]8104", "HOST:PORT"),
    ("[not-v6]:8104", "HOST:PORT"),
    (":8104", "HOST:PORT"),
    ("unix:relative.sock", "absolute"),
])
def test_api_address_refuses_with_the_fix(text: str, says: str) -> None:
    with pytest.raises(ValueError, match=says.replace("[", r"\[").replace("?", r"\?")):
        ApiAddress.parse(text)


def test_host_names_compare_canonically() -> None:
    assert host_name("LocalHost.") == "localhost"
    assert host_name("[::0001]") == "::1" == host_name("0:0:0:0:0:0:0:1")
    assert host_name("10.1.2.3") == "10.1.2.3"
    for bad in ("", "a b", "*.example.org", "example.org:80", "-x.example", "http://x", "x..y"):
        assert host_name(bad) is None, bad


def test_api_allowed_hosts_are_validated() -> None:
    assert api_problems({"api_allowed_hosts": ["pacs.example.org", "10.1.2.3", "::1"]}) == []
    problems = api_problems({"api_allowed_hosts": ["pacs.example.org:8104"]})
    assert len(problems) == 1 and "api_allowed_hosts" in problems[0] and "no scheme, port or wildcard" in problems[0]
    values = {**defaults(), "api_allowed_hosts": ["*"], "output_directory": "."}
    assert any("api_allowed_hosts" in p for p in validate(values))


def test_ctl_reports_a_bad_url_as_usage() -> None:
    with pytest.raises(ctl.CtlError) as caught:
        ctl.ApiClient("https://127.0.0.1:8104", None, 1.0)
    assert caught.value.code == ctl.EXIT_USAGE and "--api" in str(caught.value)
    assert ctl.ApiClient("http://127.0.0.1:8104/", None, 1.0).address.port == 8104


# ---- the request guard -----------------------------------------------------------------------------
def client(allowed: list[str] | None) -> TestClient:
    # The test client connects "from" testclient:50000 "to" testserver:80.
    return TestClient(create_app("/nonexistent", allowed_hosts=allowed), base_url="http://127.0.0.1:8104")


@pytest.mark.parametrize("host", ["127.0.0.1:8104", "localhost:8104", "LOCALHOST.", "pacs.example.org",
                                  "pacs.example.org:443", "[::1]:8104"])
def test_hosts_that_name_the_api_pass(host: str) -> None:
    c = client(["localhost", "127.0.0.1", "::1", "pacs.example.org"])
    assert c.get("/healthz", headers={"Host": host}).status_code == 200


def test_the_address_a_connection_arrived_on_passes() -> None:
    # A wildcard bind (0.0.0.0) lists no address: the one each connection reached is accepted.
    c = client(["localhost"])
    assert c.get("/healthz", headers={"Host": "127.0.0.1:8104"}).status_code == 200
    assert c.get("/healthz", headers={"Host": "127.0.0.2:8104"}).status_code == 400


@pytest.mark.parametrize("path", ["/healthz", "/", "/docs", "/static/console.js", "/openapi.json", "/nothing"])
@pytest.mark.parametrize("host", ["attacker.example", "attacker.example:8104", "127.0.0.2:8104", "", "[::1",
                                  "pacs.example.org.attacker.example"])
def test_other_hosts_get_400_everywhere(path: str, host: str) -> None:
    c = client(["localhost", "127.0.0.1", "pacs.example.org"])
    response = c.get(path, headers={"Host": host})
    assert response.status_code == 400
    assert "api_allowed_hosts" in response.json()["detail"]


def test_a_unix_socket_api_accepts_any_host() -> None:
    assert client(None).get("/healthz", headers={"Host": "whatever.example"}).status_code == 200


def test_writes_from_another_origin_are_refused_before_any_work() -> None:
    c = client(["localhost", "127.0.0.1"])
    for method, path in (("POST", "/reload"), ("DELETE", "/associations/1-1")):
        refused = c.request(method, path, headers={"Origin": "http://attacker.example"})
        assert refused.status_code == 403 and "another origin" in refused.json()["detail"]
        assert c.request(method, path, headers={"Origin": "null"}).status_code == 403
    # Same origin (a different port does not matter) and no Origin (curl, ctl) reach the route,
    # which then cannot reach the supervisor here: 503, not 403.
    assert c.post("/reload", headers={"Origin": "http://127.0.0.1:8104"}).status_code == 503
    assert c.post("/reload").status_code == 503
    assert c.get("/healthz", headers={"Origin": "http://attacker.example"}).status_code == 200


def test_security_headers_and_csp() -> None:
    c = client(["127.0.0.1"])
    page = c.get("/")
    assert page.status_code == 200 and page.headers["content-security-policy"] == CONSOLE_CSP
    assert page.headers["cache-control"] == "no-cache"
    assert page.headers["x-frame-options"] == "DENY" and page.headers["x-content-type-options"] == "nosniff"
    assert c.get("/docs").headers["content-security-policy"] == DOCS_CSP
    assert c.get("/redoc").headers["content-security-policy"] == DOCS_CSP
    assert c.get("/healthz").headers["referrer-policy"] == "no-referrer"


def test_no_page_names_another_host() -> None:
    c = client(["127.0.0.1"])
    for path in ("/", "/docs", "/redoc", "/static/console.js", "/static/console.css"):
        text = c.get(path).text
        assert "https://" not in text and "http://" not in text.replace("http://www.w3.org/2000/svg", ""), path
    assert b"cdn.redoc.ly" not in redoc_script()
    assert c.get("/static/docs/redoc.standalone.js").content == redoc_script()
    assert c.get("/static/docs/swagger-ui-bundle.js").status_code == 200


def test_console_never_writes_markup_from_data() -> None:
    script = client(["127.0.0.1"]).get("/static/console.js").text
    assert "innerHTML" not in script and "outerHTML" not in script and "insertAdjacentHTML" not in script
    assert "localStorage" not in script and "sessionStorage" in script  # the token: this tab only


# ---- throughput ------------------------------------------------------------------------------------
def status(objects: int, received: int) -> dict[str, Any]:
    return {"totals": {"objects": {"success": objects, "warning": 0, "failure": 0}, "received_bytes": received}}


def test_throughput_rates_between_samples() -> None:
    history = ThroughputHistory(interval=5, window=900)
    history.add(status(0, 0), 1000.0, 10.0)
    assert history.points(1000.0) == []
    history.add(status(10, 5_000_000), 1005.0, 15.0)
    history.add(status(10, 5_000_000), 1010.0, 20.0)
    assert history.points(1010.0) == [
        {"time": 1005.0, "seconds": 5.0, "objects_per_second": 2.0, "bytes_per_second": 1_000_000.0},
        {"time": 1010.0, "seconds": 5.0, "objects_per_second": 0.0, "bytes_per_second": 0.0},
    ]


def test_throughput_keeps_fifteen_minutes_and_restarts_on_a_new_supervisor() -> None:
    history = ThroughputHistory(interval=5, window=900)
    for i in range(400):
        history.add(status(i, i * 100), 1000.0 + 5 * i, 5.0 * i)
    points = history.points(1000.0 + 5 * 399)
    assert len(points) == 180 and all(p["objects_per_second"] == 0.2 for p in points)
    assert len(history.samples) <= 182
    history.add(status(0, 0), 3000.0, 3000.0)  # totals went down: not a negative rate
    assert history.points(3000.0) == []


def test_throughput_sampler_treats_an_absent_supervisor_as_a_gap() -> None:
    history = ThroughputHistory(interval=0.001, window=1)
    answers = iter([status(1, 1), HTTPException(503), status(2, 2)])

    async def ask() -> Any:
        answer = next(answers)
        if isinstance(answer, Exception):
            raise answer
        return answer

    async def run() -> None:
        task = asyncio.create_task(history.run(ask))
        while len(history.samples) < 2:
            await asyncio.sleep(0.001)
        task.cancel()

    asyncio.run(asyncio.wait_for(run(), 5))
    assert [s[2] for s in history.samples] == [1, 2]


def test_the_api_process_allows_its_bound_address_and_localhost(tmp_path: Path) -> None:
    import socket

    from storescpd.control.api.__main__ import allowed_hosts

    with socket.socket() as bound:
        bound.bind(("127.0.0.1", 0))
        assert allowed_hosts(bound, ["pacs.example.org"]) == ["localhost", "127.0.0.1", "pacs.example.org"]
    with socket.socket() as wildcard:
        wildcard.bind(("0.0.0.0", 0))
        assert allowed_hosts(wildcard, []) == ["localhost"]
    with socket.socket(socket.AF_UNIX) as unix:
        unix.bind(str(tmp_path / "api.sock"))
        assert allowed_hosts(unix, ["pacs.example.org"]) is None
