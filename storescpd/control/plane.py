"""The control plane inside the supervisor: the control socket, the metrics, the API process.

The control socket is a unix stream socket in the run directory, served from the
supervisor's selector without ever blocking it: non-blocking accept, reads and writes, a
size limit per request and a deadline per connection. One request per line, one JSON
object; one answer per line:

    {"cmd": "status"}                        -> {"ok": true, "data": {...}}
    {"cmd": "associations"}                  -> {"ok": true, "data": [{...}, ...]}
    {"cmd": "association", "id": "123-4"}    -> {"ok": true, "data": {...}}   or 404
    {"cmd": "abort", "id": "123-4"}          -> {"ok": true, "data": {...}}   (SIGUSR1 to its worker)
    {"cmd": "reload"}                        -> {"ok": true, "data": {"result": ..., "message": ...}}
    {"cmd": "metrics"}                       -> {"ok": true, "data": "<prometheus text>"}
    {"cmd": "ready"}                         -> {"ok": true, "data": {"ready": bool, "checks": {...}}}

Errors are ``{"ok": false, "code": 400|404|409, "error": "..."}``. The API process (exec'd
by the supervisor, see ``ApiProcess``) is the only intended client; the socket is 0600.
"""

from __future__ import annotations

import atexit
import ctypes
import errno
import json
import logging
import os
import selectors
import shutil
import signal
import socket
import stat
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from storescpd import __version__
from storescpd.config.settings import Config, ConfigError
from storescpd.daemon.listeners import bind_listener
from storescpd.config.api_address import ApiAddress, read_token, socket_is_loopback
from storescpd.control.metrics import Metrics, output_free_bytes

if TYPE_CHECKING:
    from storescpd.daemon.supervisor import Supervisor

LOG = logging.getLogger("storescpd.control")

CONTROL_SOCKET_NAME = "control.sock"
MAX_REQUEST_BYTES = 65536
MAX_CONNECTIONS = 64
CONNECTION_SECONDS = 10.0
API_BACKOFF_FIRST = 1.0
API_BACKOFF_MAX = 30.0
API_STABLE_SECONDS = 30.0  # an API process that lived this long resets the restart backoff
UNIX_API_MODE = 0o660
PR_SET_PDEATHSIG = 1


def iso(t: float | None) -> str | None:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(t)) if t else None


def bind_api(address: ApiAddress) -> socket.socket:
    if address.unix_path is None:
        return bind_listener(address.host, address.port)
    path = Path(address.unix_path)
    _remove_stale_socket(path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old = os.umask(0o117)
    try:
        sock.bind(str(path))
    finally:
        os.umask(old)
    os.chmod(path, UNIX_API_MODE)
    sock.listen(128)
    return sock


def _remove_stale_socket(path: Path) -> None:
    """Remove a socket file left by a dead process; refuse when something still answers on it."""
    try:
        if not stat.S_ISSOCK(path.lstat().st_mode):
            raise ConfigError(f"{path} exists and is not a socket: remove it or choose another path")
    except FileNotFoundError:
        return
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(str(path))
    except OSError:
        path.unlink(missing_ok=True)
        return
    finally:
        probe.close()
    raise ConfigError(f"{path} is in use by another process (another storescpd?): stop it or choose another path")


# ---- one control connection ------------------------------------------------------------
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
        _remove_stale_socket(path)
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old = os.umask(0o177)
        try:
            self.listener.bind(str(path))
        finally:
            os.umask(old)
        self.listener.listen(64)
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
        self.supervisor.selector.register(self.listener, selectors.EVENT_READ, ("cb", self._accept))
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
            self.supervisor.selector.register(sock, selectors.EVENT_READ, ("cb", self._readable))

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
        self.supervisor.selector.modify(conn.sock, selectors.EVENT_WRITE, ("cb", self._writable))
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
        child = sup.children.get(info.worker_pid) if info else None
        if info is None or child is None:
            raise ControlError(404, f"no running association {assoc_id!r}")
        if child.association != assoc_id or info.state == "aborting":
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


# ---- answers ------------------------------------------------------------------------------
def reload_result(result: dict[str, Any]) -> dict[str, Any]:
    return {**result, "time": iso(result.get("time"))}


def status(sup: "Supervisor", metrics: Metrics) -> dict[str, Any]:
    workers = [
        {"pid": c.pid, "kind": c.kind, "state": "busy" if c.busy else ("retiring" if c.retiring else "idle"),
         "associations_served": c.served,
         "generation": c.generation, "started": iso(c.started)}
        for c in sup.children.values() if c.kind in ("worker", "fork")
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
            "associations": {o: int(v("storescpd_associations_total", outcome=o))
                             for o in ("released", "aborted", "rejected")},
            "objects": {s: int(v("storescpd_objects_stored_total", status=s))
                        for s in ("success", "warning", "failure")},
            "received_bytes": int(v("storescpd_received_bytes_total")),
            "worker_restarts": int(v("storescpd_worker_restarts_total")),
        },
        "config_file": sup.config.source_file,
        "config_loaded": iso(sup.config_loaded),
        "output_directory": str(sup.config.output_directory),
        "last_reload": reload_result(sup.last_reload),
    }


def readiness(sup: "Supervisor") -> dict[str, Any]:
    out = sup.config.output_directory
    if sup.mode == "prefork":
        workers_up = any(c.kind == "worker" for c in sup.children.values())
    else:
        workers_up = not sup.boot_failed
    checks = {
        "listening": bool(sup.listeners) and not sup.stopping,
        "workers": workers_up,
        "output_writable": bool(sup.config.ignore) or os.access(out, os.W_OK | os.X_OK),
    }
    return {"ready": all(checks.values()), "checks": checks, "output_free_bytes": output_free_bytes(out)}


# ---- the API process ----------------------------------------------------------------------
class ApiProcess:
    """Keeps one API process (fork + exec of ``python -m storescpd.control.api``) alive, with backoff."""

    def __init__(self, supervisor: "Supervisor", listener: socket.socket, control_path: Path,
                 token_file: str | None, description: str) -> None:
        self.supervisor = supervisor
        self.listener = listener
        self.control_path = control_path
        self.token_file = token_file
        self.description = description
        self.pid: int | None = None
        self.started = 0.0
        self.backoff = API_BACKOFF_FIRST
        self.next_start = 0.0
        self.forking = False

    def attach(self) -> None:
        self.supervisor.tick_hooks.append(self.keep_alive)
        self.keep_alive(time.time())

    def keep_alive(self, now: float) -> None:
        sup = self.supervisor
        if sup.stopping or (self.pid is not None and self.pid in sup.children):
            return
        mono = time.monotonic()
        if self.pid is not None:  # it exited: the reaper has seen it
            self.pid = None
            if mono - self.started >= API_STABLE_SECONDS:
                self.backoff = API_BACKOFF_FIRST
            self.next_start = mono + self.backoff
            LOG.warning("the API process exited; starting another in %.0f s", self.backoff)
            self.backoff = min(API_BACKOFF_MAX, self.backoff * 2)
        if mono < self.next_start:
            return
        self.started = mono
        self.forking = True
        try:
            child = sup._fork("api", self._exec)
        finally:
            self.forking = False
        if child is None:
            self.next_start = mono + self.backoff
            return
        self.pid = child.pid
        LOG.info("API process %d serving on %s", child.pid, self.description)

    def argv(self) -> list[str]:
        level = self.supervisor.config.log_level
        # -P: never import from the working directory (the output directory may be below it).
        args = [sys.executable, "-P", "-m", "storescpd.control.api", "--fd", str(self.listener.fileno()),
                "--control", str(self.control_path), "--describe", self.description, "--log-level", level]
        if self.token_file:
            args += ["--api-token-file", self.token_file]
        if self.supervisor.config.journal:  # the API reads the receipt journal itself
            args += ["--journal", os.path.abspath(self.supervisor.config.journal)]
        return args

    def _exec(self, channel: socket.socket) -> None:
        """In the forked child: die with the supervisor, keep only the listener, exec."""
        _die_with_parent()
        os.set_inheritable(self.listener.fileno(), True)
        os.execv(sys.executable, self.argv())


def _die_with_parent() -> None:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    except (OSError, AttributeError):
        pass  # the API also polls its parent


# ---- wiring -------------------------------------------------------------------------------
class ControlPlane:
    """Everything the supervisor serves besides DICOM: metrics, and with an API configured the
    control socket and the API process."""

    def __init__(self, supervisor: "Supervisor", api_listener: socket.socket | None = None) -> None:
        config: Config = supervisor.config
        self.supervisor = supervisor
        self.owner = os.getpid()
        self.metrics = Metrics(supervisor).attach()
        self.api_address = ApiAddress.parse(config.api) if config.api and api_listener is None else None
        self.api_listener: socket.socket | None = None
        self.control: ControlServer | None = None
        self.api: ApiProcess | None = None
        self.run_directory: Path | None = None
        self._temporary = False
        if api_listener is None and self.api_address is None:
            return  # no API: the metrics still count, nobody asks
        try:
            self._prepare(api_listener)
        except BaseException:
            self.close()
            raise
        os.register_at_fork(after_in_child=self._after_fork_in_child)
        atexit.register(self.close)

    def _prepare(self, api_listener: socket.socket | None) -> None:
        config: Config = self.supervisor.config
        if api_listener is None:
            assert self.api_address is not None
            try:
                api_listener = bind_api(self.api_address)
            except OSError as exc:
                raise ConfigError(f"cannot listen for the API on {self.api_address}: {exc.strerror}") from None
        self.api_listener = api_listener
        description = str(self.api_address) if self.api_address else f"inherited socket {_sockname(api_listener)}"
        if not socket_is_loopback(api_listener) and not config.api_token_file:
            raise ConfigError(f"the API socket {description} is reachable outside loopback: set "
                              "api_token_file (--api-token-file) to a file holding a bearer token")
        if config.api_token_file:
            read_token(config.api_token_file)  # fail now, not in the API process
        self.run_directory, self._temporary = _run_directory(config.run_directory)
        self.control = ControlServer(self.supervisor, self.metrics, self.run_directory / CONTROL_SOCKET_NAME)
        self.api = ApiProcess(self.supervisor, api_listener, self.control.path, config.api_token_file, description)

    def attach(self) -> "ControlPlane":
        if self.control is not None:
            self.control.attach()
        if self.api is not None:
            self.api.attach()
        return self

    def _after_fork_in_child(self) -> None:
        """Children must not hold the control plane's sockets (the API child keeps its listener)."""
        if os.getpid() == self.owner or self.control is None:
            return
        keep = self.api_listener if self.api is not None and self.api.forking else None
        for sock in self.control.sockets() + ([self.api_listener] if self.api_listener else []):
            if sock is not keep and sock.fileno() >= 0:
                sock.close()
        self.control.connections.clear()

    def close(self) -> None:
        if os.getpid() != self.owner:
            return
        if self.control is not None:
            self.control.close()
            self.control = None
        if self.api_listener is not None:
            self.api_listener.close()
            self.api_listener = None
            if self.api_address is not None and self.api_address.unix_path:
                Path(self.api_address.unix_path).unlink(missing_ok=True)
        if self._temporary and self.run_directory is not None:
            shutil.rmtree(self.run_directory, ignore_errors=True)
            self._temporary = False


def _run_directory(configured: str | None) -> tuple[Path, bool]:
    if not configured:
        return Path(tempfile.mkdtemp(prefix="storescpd-")), True
    path = Path(configured)
    try:
        path.mkdir(mode=0o750, parents=True, exist_ok=True)
        st = os.lstat(path)
    except OSError as exc:
        raise ConfigError(f"cannot create the run directory {path}: {exc.strerror} "
                          "(set run_directory to a writable place, e.g. /run/storescpd)") from None
    # Whoever can replace the control socket in it can answer for the supervisor.
    if stat.S_ISLNK(st.st_mode) or not stat.S_ISDIR(st.st_mode):
        raise ConfigError(f"the run directory {path} is not a directory (a symbolic link?): name a real one")
    if st.st_uid != os.geteuid() or st.st_mode & 0o022:
        raise ConfigError(f"the run directory {path} must belong to this user (uid {os.geteuid()}) and not be "
                          f"writable by others (it is uid {st.st_uid}, mode {stat.S_IMODE(st.st_mode):o})")
    return path, False


def _sockname(sock: socket.socket) -> str:
    name = sock.getsockname()
    if isinstance(name, tuple):
        return f"{name[0]}:{name[1]}"
    return f"unix:{name}" if name else "unix:(unnamed)"


def control_request(path: str | os.PathLike[str], request: dict[str, Any], timeout: float = 10.0) -> dict[str, Any]:
    """A blocking client for the control socket (tests, tools; the API uses an asyncio one)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        sock.connect(str(path))
        sock.sendall(json.dumps(request).encode() + b"\n")
        data = bytearray()
        while not data.endswith(b"\n"):
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    if not data:
        raise ConnectionError(errno.ECONNRESET, "the supervisor closed the control connection")
    return json.loads(data)
