"""The management API of a running daemon, as a client sees it."""

from __future__ import annotations

import time
from typing import Any, Callable

import httpx
from prometheus_client.parser import text_string_to_metric_families

from tests.support.daemons import Daemon
from tests.support.processes import free_port


class Api:
    """An HTTP client of the API (TCP or a Unix socket), optionally with a bearer token."""

    def __init__(self, base: str = "", uds: str | None = None, token: str | None = None) -> None:
        transport = httpx.HTTPTransport(uds=uds) if uds else None
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.client = httpx.Client(base_url=base or "http://storescpd", transport=transport, timeout=15,
                                   headers=headers)

    def get(self, path: str, **kw: Any) -> httpx.Response:
        return self.client.get(path, **kw)

    def wait_up(self, timeout: float = 20.0) -> "Api":
        """Return once /readyz answers 200."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if self.client.get("/readyz").status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        raise AssertionError("the API did not become ready")

    def metrics(self) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        """/metrics parsed: (name, sorted labels) -> value."""
        response = self.client.get("/metrics")
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/plain")
        return {(s.name, tuple(sorted(s.labels.items()))): s.value
                for family in text_string_to_metric_families(response.text) for s in family.samples}


def sample(metrics: dict, name: str, **labels: str) -> float:
    """One sample of Api.metrics(); 0 for a series not (yet) there."""
    return metrics.get((name, tuple(sorted(labels.items()))), 0.0)


def api_daemon(daemon_factory: Callable[..., Daemon], *args: str) -> tuple[Daemon, Api]:
    """A daemon with its API on a loopback port, and a client once the API is ready."""
    port = free_port()
    d = daemon_factory("--api", f"127.0.0.1:{port}", *args)
    return d, Api(f"http://127.0.0.1:{port}").wait_up()
