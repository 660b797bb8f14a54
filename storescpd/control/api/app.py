"""The FastAPI application: every answer comes from the supervisor over the control socket.

Besides the JSON endpoints it serves the operator's console (``GET /``, static files in
``static/``) and the API documentation (``/docs``, ``/redoc``) with every asset from this origin:
hospital networks are often air-gapped, and no page may load anything from another host.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hmac
import json
import logging
import os
import time
from collections import deque
from pathlib import Path
from typing import Any, AsyncIterator, Awaitable, Callable, Iterable, MutableMapping
from urllib.parse import urlsplit

import fastapi_offline
from fastapi import Depends, FastAPI, HTTPException, Request, Response
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, PlainTextResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from fastapi.staticfiles import StaticFiles
from prometheus_client import CONTENT_TYPE_LATEST
from pydantic import BaseModel, Field

from storescpd import __version__
from storescpd.config.api_address import host_name, read_token, split_host_port
from storescpd.config.settings import ConfigError
from storescpd.control.api import receipts

LOG = logging.getLogger("storescpd.api")

CONTROL_TIMEOUT_SECONDS = 10.0
CONTROL_READ_LIMIT = 64 * 1024 * 1024
STATIC = Path(__file__).parent / "static"
# Swagger UI and ReDoc as the fastapi-offline package ships them (pinned in pyproject.toml).
DOCS_ASSETS = Path(fastapi_offline.__file__).parent / "static"
THROUGHPUT_INTERVAL_SECONDS = 5.0
THROUGHPUT_WINDOW_SECONDS = 15 * 60.0
MAX_WARNED_HOSTS = 64
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
# The console: its own files and fetches to this origin, nothing inline, no frames around it.
CONSOLE_CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
               "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
# Swagger UI and ReDoc start from an inline script and inline styles, still only from this origin.
DOCS_CSP = ("default-src 'self'; script-src 'self' 'unsafe-inline'; style-src 'self' 'unsafe-inline'; "
            "img-src 'self' data:; worker-src 'self' blob:; base-uri 'none'; frame-ancestors 'none'")
DOCS_PAGES = ("/docs", "/redoc")
EMPTY_IMAGE = b"data:image/svg+xml,%3Csvg xmlns='http://www.w3.org/2000/svg'/%3E"


# ---- the contract (api/openapi.json is generated from these) ----------------------------------
class Health(BaseModel):
    status: str = Field(examples=["ok"])


class Readiness(BaseModel):
    ready: bool
    checks: dict[str, bool] = Field(description="listening, accepting (false while a stop drains), workers "
                                                "(of the current generation), output_writable")
    output_free_bytes: int | None = None


class Association(BaseModel):
    id: str = Field(description="stable while the association runs: worker pid and a serial number")
    peer: str = Field(description="address:port of the peer", examples=["192.0.2.7:51234"])
    calling_ae: str
    called_ae: str
    started: str = Field(description="ISO 8601, local time with offset")
    worker_pid: int
    state: str = Field(description="negotiating, established or aborting")
    objects_received: int
    bytes_received: int
    last_sop_class: str


class Worker(BaseModel):
    pid: int
    kind: str = Field(description="worker (pre-fork pool) or fork (one association)")
    state: str = Field(description="busy, idle, or retiring (reached --max-requests, exits)")
    associations_served: int
    generation: int = Field(description="configuration generation: grows with each successful reload")
    started: str | None


class Totals(BaseModel):
    associations: dict[str, int] = Field(description="by outcome: released, aborted, rejected")
    objects: dict[str, int] = Field(description="by status: success, warning, failure")
    received_bytes: int
    worker_restarts: int


class ReloadResult(BaseModel):
    result: str | None = Field(description="success, failure, or null when never reloaded")
    message: str
    time: str | None


class Status(BaseModel):
    version: str
    pid: int
    started: str | None
    uptime_seconds: float
    process_mode: str = Field(description="prefork, fork or single")
    stopping: str | None
    workers: list[Worker]
    active_associations: int
    totals: Totals
    config_file: str | None
    config_loaded: str | None
    output_directory: str
    output_free_bytes: int | None = Field(None, description="bytes available to storescpd there")
    generation: int = Field(0, description="configuration generation: grows with each successful reload")
    last_reload: ReloadResult
    journal: bool = Field(False, description="a receipt journal is kept (/receipts and /studies answer)")


class ThroughputPoint(BaseModel):
    time: float = Field(description="end of the interval, seconds since the epoch")
    seconds: float = Field(description="length of the interval")
    objects_per_second: float = Field(description="C-STORE requests answered (any status)")
    bytes_per_second: float = Field(description="data set bytes received")


class Throughput(BaseModel):
    interval_seconds: float
    window_seconds: float
    now: float = Field(description="the API's clock, seconds since the epoch")
    points: list[ThroughputPoint] = Field(description="oldest first; a gap where the supervisor did not answer")


class Problem(BaseModel):
    detail: str


# ---- the control socket ----------------------------------------------------------------------
class ControlClient:
    def __init__(self, path: str) -> None:
        self.path = path

    async def ask(self, cmd: str, **fields: Any) -> Any:
        try:
            return await asyncio.wait_for(self._ask(cmd, fields), CONTROL_TIMEOUT_SECONDS)
        except (OSError, asyncio.TimeoutError, ValueError) as exc:
            LOG.error("cannot reach the supervisor on %s: %s", self.path, exc or type(exc).__name__)
            raise HTTPException(503, "the supervisor does not answer on its control socket") from None

    async def _ask(self, cmd: str, fields: dict[str, Any]) -> Any:
        reader, writer = await asyncio.open_unix_connection(self.path, limit=CONTROL_READ_LIMIT)
        try:
            writer.write(json.dumps({"cmd": cmd, **fields}).encode() + b"\n")
            await writer.drain()
            line = await reader.readline()
        finally:
            writer.close()
        reply = json.loads(line)
        if not reply.get("ok"):
            raise HTTPException(reply.get("code", 500), reply.get("error", "error"))
        return reply["data"]


# ---- bearer tokens ---------------------------------------------------------------------------
class TokenCheck:
    """The token is re-read when its file changes, so it can be rotated without a restart."""

    def __init__(self, token_file: str | None, exposed: bool) -> None:
        self.token_file = token_file
        self.exposed = exposed
        self._mtime: float | None = None
        self._token: str | None = None
        if token_file:
            self._reload()

    def _reload(self) -> None:
        assert self.token_file
        try:
            mtime = os.stat(self.token_file).st_mtime
        except OSError:
            return  # keep the last token we read; read_token below names the problem at start
        if mtime != self._mtime:
            try:
                self._token = read_token(self.token_file)
                self._mtime = mtime
            except ConfigError as exc:
                LOG.error("%s; keeping the previous token", exc)
                if self._token is None:
                    raise

    def required(self, mutating: bool) -> bool:
        return bool(self.token_file) and (mutating or self.exposed)

    def valid(self, presented: str | None) -> bool:
        self._reload()
        return bool(presented and self._token) and hmac.compare_digest(presented.encode(), self._token.encode())


# ---- throughput over the last minutes -------------------------------------------------------
class ThroughputHistory:
    """Objects and bytes per second over a window, from the supervisor's totals sampled every interval.

    The supervisor counts; rates are only for people looking at the console, so the API process keeps
    them (a restarted API process starts an empty window). 180 samples: nothing to bound further.
    """

    def __init__(self, interval: float = THROUGHPUT_INTERVAL_SECONDS,
                 window: float = THROUGHPUT_WINDOW_SECONDS) -> None:
        self.interval = interval
        self.window = window
        # (wall clock, monotonic clock, objects answered, bytes received)
        self.samples: deque[tuple[float, float, int, int]] = deque(maxlen=int(window / interval) + 2)

    def add(self, status: dict[str, Any], wall: float, mono: float) -> None:
        totals = status["totals"]
        objects, received = sum(totals["objects"].values()), totals["received_bytes"]
        if self.samples and (objects < self.samples[-1][2] or received < self.samples[-1][3]):
            self.samples.clear()  # totals went down: another supervisor answers now
        self.samples.append((wall, mono, objects, received))

    def points(self, now: float) -> list[dict[str, float]]:
        out = []
        pairs = zip(list(self.samples), list(self.samples)[1:])
        for (_, mono0, objects0, bytes0), (wall1, mono1, objects1, bytes1) in pairs:
            seconds = mono1 - mono0
            if wall1 <= now - self.window or seconds <= 0:
                continue
            out.append({"time": round(wall1, 3), "seconds": round(seconds, 3),
                        "objects_per_second": round((objects1 - objects0) / seconds, 3),
                        "bytes_per_second": round((bytes1 - bytes0) / seconds, 1)})
        return out

    async def run(self, ask: Callable[[], Awaitable[Any]]) -> None:
        """Sample until cancelled; a sample the supervisor cannot give is a gap, not an error."""
        while True:
            try:
                self.add(await ask(), time.time(), time.monotonic())
            except HTTPException:
                pass
            await asyncio.sleep(self.interval)


# ---- Host validation, same-origin writes, security headers -----------------------------------
Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]


class RequestGuard:
    """ASGI middleware in front of every route, static files and 404s included.

    - ``Host`` must name this API (its address, ``localhost``, or ``api_allowed_hosts``): a DNS-rebinding
      page that made ``attacker.example`` resolve to us gets 400 and cannot read anything. ``allowed``
      None (a unix socket, reached through a local proxy or ctl) skips this check.
    - A mutating request from a browser must come from this origin (``Origin`` names the same host): a
      page elsewhere cannot POST /reload as a "simple" cross-site request.
    - Every answer says: no sniffing, no referrer, no framing; pages get a Content-Security-Policy
      that allows nothing but this origin.
    """

    def __init__(self, app: Callable[[Scope, Receive, Send], Awaitable[None]],
                 allowed: Iterable[str] | None) -> None:
        self.app = app
        self.allowed = None if allowed is None else frozenset(filter(None, map(host_name, allowed)))
        self.warned: set[str] = set()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        refusal = self.refusal(scope, headers)
        if refusal is not None:
            code, detail = refusal
            await JSONResponse({"detail": detail}, status_code=code)(scope, receive, send)
            return
        csp = DOCS_CSP if scope["path"] in DOCS_PAGES else CONSOLE_CSP

        async def send_with_headers(message: MutableMapping[str, Any]) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []),
                                      (b"x-content-type-options", b"nosniff"), (b"referrer-policy", b"no-referrer"),
                                      (b"x-frame-options", b"DENY"), (b"content-security-policy", csp.encode())]
            await send(message)

        await self.app(scope, receive, send_with_headers)

    def refusal(self, scope: Scope, headers: dict[str, str]) -> tuple[int, str] | None:
        raw_host = headers.get("host", "")
        host, _port = split_host_port(raw_host, default_port=80)
        name = host_name(host) if host else None
        if self.allowed is not None:
            server = scope.get("server")
            local = host_name(str(server[0])) if server else None
            if name is None or (name not in self.allowed and name != local):
                self._warn(raw_host, scope)
                return 400, (f"this API does not answer to the host name {raw_host!r}: open it by its address "
                             "or add the name to api_allowed_hosts")
        origin = headers.get("origin")
        if scope["method"] not in SAFE_METHODS and origin is not None:
            origin_name = host_name(urlsplit(origin).hostname or "") if origin != "null" else None
            if origin_name is None or origin_name != name:
                return 403, f"a {scope['method']} from another origin ({origin}) is refused"
        return None

    def _warn(self, raw_host: str, scope: Scope) -> None:
        if raw_host in self.warned or len(self.warned) >= MAX_WARNED_HOSTS:
            return  # one line per name: a rebinding page polling us must not flood the log
        self.warned.add(raw_host)
        client = scope.get("client")
        LOG.warning("API: 400 for Host %r from %s (not this API's address, localhost or api_allowed_hosts)",
                    raw_host, f"{client[0]}:{client[1]}" if client else "the unix socket")


def create_app(control_path: str, token_file: str | None = None, exposed: bool = False,
               allowed_hosts: Iterable[str] | None = None, journal: str | None = None) -> FastAPI:
    """The API on the supervisor's control socket ``control_path``.

    With ``token_file``, mutating calls need ``Authorization: Bearer <token>``; when
    ``exposed`` (TCP outside loopback) every call but the health probes and the console's
    static files needs it. ``allowed_hosts`` are the names a request's ``Host`` may carry
    (the connection's own address is always accepted); None accepts any (unix sockets).
    ``journal``: the receipt journal's file (/receipts, /studies), or None when there is none.
    """
    history = ThroughputHistory()

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        sampler = asyncio.create_task(history.run(lambda: control.ask("status")))
        try:
            yield
        finally:
            sampler.cancel()

    app = FastAPI(
        title="storescpd control API", version=__version__, docs_url=None, redoc_url=None, lifespan=lifespan,
        description="Live associations, status, reload and Prometheus metrics of a storescpd DICOM receiver. "
                    "`GET /` is the operator's console.",
    )
    app.add_middleware(RequestGuard, allowed=None if allowed_hosts is None else list(allowed_hosts))
    control = ControlClient(control_path)
    tokens = TokenCheck(token_file, exposed)
    bearer = HTTPBearer(auto_error=False, description="the token in api_token_file")
    unauthorized = {401: {"model": Problem, "description": "missing or wrong bearer token"}}

    def guard(mutating: bool) -> Any:
        async def check(request: Request,
                        credentials: HTTPAuthorizationCredentials | None = Depends(bearer)) -> None:
            if not tokens.required(mutating):
                return
            if credentials is not None and tokens.valid(credentials.credentials):
                return
            client = request.client
            LOG.warning("API: 401 for %s %s from %s: %s bearer token", request.method, request.url.path,
                        f"{client.host}:{client.port}" if client else "the unix socket",
                        "wrong" if credentials is not None else "no")
            raise HTTPException(401, "a valid bearer token is required", headers={"WWW-Authenticate": "Bearer"})
        return Depends(check)

    read, write = guard(False), guard(True)
    # The receipt journal: read from its SQLite file by this process (the supervisor never opens it).
    app.include_router(receipts.router(journal, Problem), dependencies=[read], responses=unauthorized)

    @app.get("/healthz", response_model=Health, tags=["probes"], summary="The API process is up")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz", response_model=Readiness, tags=["probes"],
             summary="Listening, workers up, output directory writable (503 otherwise)",
             responses={503: {"model": Readiness, "description": "not ready"}})
    async def readyz() -> Response:
        data = await control.ask("ready")
        return JSONResponse(data, status_code=200 if data["ready"] else 503)

    @app.get("/status", response_model=Status, dependencies=[read], responses=unauthorized, tags=["state"],
             summary="Version, uptime, workers, totals, configuration")
    async def get_status() -> Any:
        return await control.ask("status")

    @app.get("/associations", response_model=list[Association], dependencies=[read], responses=unauthorized,
             tags=["associations"], summary="Associations running now")
    async def list_associations() -> Any:
        return await control.ask("associations")

    @app.get("/associations/{association_id}", response_model=Association, dependencies=[read],
             responses={**unauthorized, 404: {"model": Problem, "description": "no such running association"}},
             tags=["associations"], summary="One running association")
    async def get_association(association_id: str) -> Any:
        return await control.ask("association", id=association_id)

    @app.delete("/associations/{association_id}", response_model=Association, status_code=202,
                dependencies=[write], tags=["associations"],
                responses={**unauthorized, 404: {"model": Problem, "description": "no such running association"},
                           409: {"model": Problem, "description": "the association is already ending"}},
                summary="Abort an association (A-ABORT to the peer; the object in transfer is discarded)")
    async def abort_association(association_id: str) -> Any:
        return await control.ask("abort", id=association_id)

    @app.post("/reload", response_model=ReloadResult, dependencies=[write], tags=["configuration"],
              responses={**unauthorized, 422: {"model": ReloadResult,
                                               "description": "invalid configuration: the running one stays"}},
              summary="Reload the configuration (the same path as SIGHUP)")
    async def reload() -> Response:
        data = await control.ask("reload")
        return JSONResponse(data, status_code=200 if data.get("result") == "success" else 422)

    @app.get("/metrics", response_class=PlainTextResponse, dependencies=[read], responses=unauthorized,
             tags=["metrics"], summary="Prometheus text format")
    async def metrics() -> Response:
        return Response(await control.ask("metrics"), media_type=CONTENT_TYPE_LATEST)

    @app.get("/throughput", response_model=Throughput, dependencies=[read], responses=unauthorized,
             tags=["metrics"], summary="Objects and bytes per second over the last 15 minutes (5 s steps)")
    async def throughput() -> Any:
        now = time.time()
        return {"interval_seconds": history.interval, "window_seconds": history.window, "now": round(now, 3),
                "points": history.points(now)}

    _console_and_docs(app)
    return app


@functools.cache
def redoc_script() -> bytes:
    """ReDoc's bundle without its one remote load: the "API docs by Redocly" logo from cdn.redoc.ly
    becomes an empty image (an air-gapped browser would try that host on every visit)."""
    script = (DOCS_ASSETS / "redoc.standalone.js").read_bytes()
    return script.replace(b"https://cdn.redoc.ly/redoc/logo-mini.svg", EMPTY_IMAGE)


def _console_and_docs(app: FastAPI) -> None:
    """``/`` (the console), ``/docs`` and ``/redoc``, and their files: public, no data in them."""

    @app.get("/static/docs/redoc.standalone.js", include_in_schema=False)
    async def redoc_js() -> Response:
        return Response(redoc_script(), media_type="text/javascript")

    app.mount("/static/docs", StaticFiles(directory=DOCS_ASSETS), name="docs-assets")
    app.mount("/static", StaticFiles(directory=STATIC), name="console-assets")
    revalidate = {"Cache-Control": "no-cache"}  # an upgraded daemon serves its new console at once

    @app.get("/", include_in_schema=False)
    async def console() -> FileResponse:
        return FileResponse(STATIC / "index.html", headers=revalidate)

    @app.get("/docs", include_in_schema=False)
    async def swagger_ui() -> HTMLResponse:
        return get_swagger_ui_html(openapi_url="/openapi.json", title=f"{app.title} - Swagger UI",
                                   swagger_js_url="/static/docs/swagger-ui-bundle.js",
                                   swagger_css_url="/static/docs/swagger-ui.css",
                                   swagger_favicon_url="/static/favicon.svg")

    @app.get("/redoc", include_in_schema=False)
    async def redoc() -> HTMLResponse:
        return get_redoc_html(openapi_url="/openapi.json", title=f"{app.title} - ReDoc",
                              redoc_js_url="/static/docs/redoc.standalone.js",
                              redoc_favicon_url="/static/favicon.svg", with_google_fonts=False)
