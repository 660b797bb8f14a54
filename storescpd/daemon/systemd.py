"""sd_notify, small and honest: a no-op without NOTIFY_SOCKET; children never inherit it.

The socket address is taken out of the environment once, at start, so that no child (worker,
API, hook) can speak for the daemon; each message is one datagram on a socket opened for it
(close-on-exec, never held across a fork), UTF-8 encoded. Written here rather than with the
``sdnotify`` package: docs/architecture.md ("Choices") says why.
"""

from __future__ import annotations

import os
import socket
import time

_notify_socket: str | None = None


def take_notify_socket() -> None:
    """Remember NOTIFY_SOCKET and remove it from the environment every child inherits."""
    global _notify_socket
    _notify_socket = os.environ.pop("NOTIFY_SOCKET", None)


def notify(*fields: str) -> bool:
    """Send fields like "READY=1" to systemd; False when not under systemd or on error."""
    if not _notify_socket:
        return False
    address = _notify_socket
    if address.startswith("@"):  # an abstract socket
        address = "\0" + address[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.connect(address)
            sock.sendall("\n".join(fields).encode())
        return True
    except OSError:
        return False


def reloading() -> bool:
    """RELOADING=1 with the MONOTONIC_USEC that systemd (Type=notify-reload) requires with it."""
    return notify("RELOADING=1", f"MONOTONIC_USEC={time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000}")


def watchdog_interval() -> float | None:
    """Half the WATCHDOG_USEC systemd expects, or None when no watchdog is set for us."""
    usec = os.environ.get("WATCHDOG_USEC")
    pid = os.environ.get("WATCHDOG_PID")
    if not usec or (pid and pid != str(os.getpid())):
        return None
    try:
        return int(usec) / 2_000_000
    except ValueError:
        return None
