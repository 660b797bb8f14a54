"""The FastAPI application: every answer comes from the supervisor over the control socket."""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import os
from typing import Any

from fastapi import Depends, FastAPI, HTTPException, Request, Response
from fastapi.responses import JSONResponse, PlainTextResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from prometheus_client import CONTENT_TYPE_LATEST
from pydantic import BaseModel, Field

from storescpd import __version__
from storescpd.config.settings import ConfigError
from storescpd.config.api_address import read_token
from storescpd.control.api import receipts

LOG = logging.getLogger("storescpd.api")

CONTROL_TIMEOUT_SECONDS = 10.0
CONTROL_READ_LIMIT = 64 * 1024 * 1024


# ---- the contract (api/openapi.json is generated from these) ----------------------------------
class Health(BaseModel):
    status: str = Field(examples=["ok"])


class Readiness(BaseModel):
    ready: bool
    checks: dict[str, bool] = Field(description="listening, workers, output_writable")
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
    last_reload: ReloadResult


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


def create_app(control_path: str, token_file: str | None = None, exposed: bool = False,
               journal: str | None = None) -> FastAPI:
    """The API on the supervisor's control socket ``control_path``.

    With ``token_file``, mutating calls need ``Authorization: Bearer <token>``; when
    ``exposed`` (TCP outside loopback) every call but the health probes needs it. ``journal``: the
    receipt journal's file (/receipts, /studies), or None when the daemon runs without one.
    """
    app = FastAPI(
        title="storescpd control API", version=__version__,
        description="Live associations, status, reload and Prometheus metrics of a storescpd DICOM receiver.",
    )
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

    return app
