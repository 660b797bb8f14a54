"""The control socket: the supervisor's answers to the API process, served without ever blocking.

A unix stream socket in the run directory (mode 0600), served from the supervisor's selector:
non-blocking accept, reads and writes, a size limit per request and a deadline per connection.
One request per line, one JSON object; one answer per line:

    {"cmd": "status"}                        -> {"ok": true, "data": {...}}
    {"cmd": "associations"}                  -> {"ok": true, "data": [{...}, ...]}
    {"cmd": "association", "id": "123-4"}    -> {"ok": true, "data": {...}}   or 404
    {"cmd": "abort", "id": "123-4"}          -> {"ok": true, "data": {...}}   (SIGUSR1 to its worker)
    {"cmd": "reload"}                        -> {"ok": true, "data": {"result": ..., "message": ...}}
    {"cmd": "metrics"}                       -> {"ok": true, "data": "<prometheus text>"}
    {"cmd": "ready"}                         -> {"ok": true, "data": {"ready": bool, "checks": {...}}}

Errors are ``{"ok": false, "code": 400|404|409, "error": "..."}``. The API process (exec'd by
the supervisor, ``storescpd.control.api_process``) is the only intended client.
"""

from __future__ import annotations

import json
import logging
import os
import selectors
import signal
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from storescpd.control.metrics import Metrics
from storescpd.control.status import readiness, reload_result, status
from storescpd.daemon.listeners import bind_unix

if TYPE_CHECKING:
    from storescpd.daemon.supervisor import Supervisor

LOG = logging.getLogger("storescpd.control")

CONTROL_SOCKET_MODE = 0o600  # whoever can connect can abort associations and reload
MAX_REQUEST_BYTES = 65536
MAX_CONNECTIONS = 64
CONNECTION_SECONDS = 10.0


@dataclass
class _Connection:
    sock: socket.socket
    deadline: float
    inbox: bytearray = field(default_factory=bytearray)
    outbox: bytearray = field(default_factory=bytearray)


class ControlServer:
    """Serves the control socket from the supervisor's selector; never blocks."""

    def __init__(self, supervisor: "Supervisor", metrics: Metrics, path: Path) -> None:
        self.supervisor = supervisor
        self.metrics = metrics
        self.path = path
        self.connections: dict[int, _Connection] = {}
        self.listener = bind_unix(path, CONTROL_SOCKET_MODE, MAX_CONNECTIONS)
        self.listener.setblocking(False)
        self.commands: dict[str, Callable[[dict[str, Any]], Any]] = {
            "status": lambda rq: status(self.supervisor, self.metrics),
            "associations": lambda rq: [a.as_dict() for a in self.supervisor.associations.values()],
            "association": self._association,
            "abort": self._abort,
            "reload": lambda rq: reload_result(self.supervisor.reload()),
            "metrics": lambda rq: self.metrics.text().decode(),
            "ready": lambda rq: readiness(self.supervisor),
        }

    def attach(self) -> None:
        self.supervisor.selector.register(self.listener, selectors.EVENT_READ, self._accept)
        self.supervisor.tick_hooks.append(self._expire)

    def sockets(self) -> list[socket.socket]:
        return [self.listener, *(c.sock for c in self.connections.values())]

    def close(self) -> None:
        for conn in list(self.connections.values()):
            self._drop(conn)
        try:
            self.supervisor.selector.unregister(self.listener)
        except (KeyError, ValueError, RuntimeError):
            pass
        self.listener.close()
        self.path.unlink(missing_ok=True)

    # -- I/O, all non-blocking ---------------------------------------------------------
    def _accept(self, listener: socket.socket) -> None:
        for _ in range(16):
            try:
                sock, _addr = listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                LOG.warning("control socket: cannot accept: %s", exc.strerror)
                return
            if len(self.connections) >= MAX_CONNECTIONS:
                sock.close()
                continue
            sock.setblocking(False)
            conn = _Connection(sock, time.monotonic() + CONNECTION_SECONDS)
            self.connections[sock.fileno()] = conn
            self.supervisor.selector.register(sock, selectors.EVENT_READ, self._readable)

    def _readable(self, sock: socket.socket) -> None:
        conn = self.connections.get(sock.fileno())
        if conn is None:
            return
        try:
            data = sock.recv(MAX_REQUEST_BYTES)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            self._drop(conn)
            return
        conn.inbox += data
        if b"\n" not in conn.inbox:
            if len(conn.inbox) > MAX_REQUEST_BYTES:
                self._answer(conn, {"ok": False, "code": 400, "error": "request too long"})
            return
        line = bytes(conn.inbox.split(b"\n", 1)[0])
        self._answer(conn, self.handle(line))

    def _answer(self, conn: _Connection, reply: dict[str, Any]) -> None:
        conn.outbox += json.dumps(reply, separators=(",", ":"), default=str).encode() + b"\n"
        self.supervisor.selector.modify(conn.sock, selectors.EVENT_WRITE, self._writable)
        self._writable(conn.sock)

    def _writable(self, sock: socket.socket) -> None:
        conn = self.connections.get(sock.fileno())
        if conn is None:
            return
        try:
            sent = sock.send(conn.outbox)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._drop(conn)
            return
        del conn.outbox[:sent]
        if not conn.outbox:
            self._drop(conn)

    def _drop(self, conn: _Connection) -> None:
        self.connections.pop(conn.sock.fileno(), None)
        try:
            self.supervisor.selector.unregister(conn.sock)
        except (KeyError, ValueError):
            pass
        conn.sock.close()

    def _expire(self, now: float) -> None:
        mono = time.monotonic()
        for conn in [c for c in self.connections.values() if c.deadline < mono]:
            self._drop(conn)

    # -- requests ---------------------------------------------------------------------
    def handle(self, line: bytes) -> dict[str, Any]:
        try:
            request = json.loads(line)
            command = self.commands[request["cmd"]]
        except (ValueError, KeyError, TypeError, RecursionError):  # RecursionError: nesting too deep
            return {"ok": False, "code": 400, "error": f"unknown request (commands: {', '.join(self.commands)})"}
        try:
            return {"ok": True, "data": command(request)}
        except ControlError as exc:
            return {"ok": False, "code": exc.code, "error": str(exc)}
        except Exception as exc:  # a bug must not take the supervisor down
            LOG.exception("control request %r failed", request.get("cmd"))
            return {"ok": False, "code": 500, "error": f"internal error: {exc}"}

    def _association(self, request: dict[str, Any]) -> dict[str, Any]:
        info = self.supervisor.associations.get(str(request.get("id")))
        if info is None:
            raise ControlError(404, f"no running association {request.get('id')!r}")
        return info.as_dict()

    def _abort(self, request: dict[str, Any]) -> dict[str, Any]:
        sup = self.supervisor
        assoc_id = str(request.get("id"))
        info = sup.associations.get(assoc_id)
        if info is None or info.worker_pid not in sup.children:
            raise ControlError(404, f"no running association {assoc_id!r}")
        if info.state == "aborting":
            raise ControlError(409, f"association {assoc_id} is ending")
        LOG.warning("aborting association %s from %s (%s) on request (worker %d)", assoc_id,
                    info.calling_ae or "?", info.peer, info.worker_pid)
        os.kill(info.worker_pid, signal.SIGUSR1)
        info.state = "aborting"
        return info.as_dict()


class ControlError(Exception):
    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code
