"""Listening sockets: bound ourselves (TCP, or a unix socket file), or inherited from systemd (LISTEN_FDS)."""

from __future__ import annotations

import os
import socket
import stat
from pathlib import Path

from storescpd.config.settings import ConfigError

SD_LISTEN_FDS_START = 3


def bind_listener(host: str, port: int, backlog: int = 128) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if family == socket.AF_INET6:
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    sock.bind((host, port))
    sock.listen(backlog)
    sock.set_inheritable(False)
    return sock


def bind_unix(path: Path, mode: int, backlog: int) -> socket.socket:
    """A listening unix socket at ``path`` with file mode ``mode`` from the start (no moment
    where others could connect); a stale socket file of a dead process is replaced."""
    remove_stale_socket(path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old = os.umask(0o777 & ~mode)
    try:
        sock.bind(str(path))
    finally:
        os.umask(old)
    os.chmod(path, mode)
    sock.listen(backlog)
    return sock


def remove_stale_socket(path: Path) -> None:
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


def inherited_sockets() -> dict[str, list[socket.socket]]:
    """systemd's sockets by name (LISTEN_FDNAMES; unnamed ones are 'dicom').

    Only honoured when LISTEN_PID is ours; the variables are then removed so that no
    child believes they are meant for it. An Accept=yes connection is named 'connection'.
    """
    if os.environ.get("LISTEN_PID") != str(os.getpid()):
        return {}
    count = int(os.environ.get("LISTEN_FDS", "0") or 0)
    names = [n for n in os.environ.get("LISTEN_FDNAMES", "").split(":") if n]
    for var in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"):
        os.environ.pop(var, None)
    found: dict[str, list[socket.socket]] = {}
    for i in range(count):
        fd = SD_LISTEN_FDS_START + i
        os.set_inheritable(fd, False)
        sock = socket.socket(fileno=fd)
        name = names[i] if i < len(names) else ""
        if name in ("", "unknown", "stored"):
            name = "connection" if _is_connected(sock) else "dicom"
        found.setdefault(name, []).append(sock)
    return found


def _is_connected(sock: socket.socket) -> bool:
    try:
        sock.getpeername()
        return True
    except OSError:
        return False
