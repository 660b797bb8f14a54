"""One association on an already-accepted socket: the unit of work of every worker."""

from __future__ import annotations

import logging
import os
import socket
from pathlib import Path
from typing import Any

from storescpd.daemon import access, proxy
from storescpd.dicom import engine
from storescpd.dicom import tls
from storescpd.config.settings import Config
from storescpd.store.handlers import EventSink, StoreContext, _no_events
from storescpd.store.storage import prepare_staging_dir
from storescpd.messages import Event

LOG = logging.getLogger("storescpd")

# A-ASSOCIATE-RJ (result, source, reason) as DCMTK storescp sends them.
REJECT_REFUSED = (0x01, 0x01, 0x01)  # rejected-permanent, service-user, no-reason-given
REJECT_NO_IMPLEMENTATION_UID = (0x01, 0x01, 0x01)
REJECT_LOCAL_LIMIT = (0x02, 0x03, 0x02)  # rejected-transient, service-provider (presentation), local-limit-exceeded


def serve_association(sock: socket.socket, config: Config, emit: EventSink = _no_events,
                      admit: Any = None, role: str = "dicom", on_association: Any = None,
                      peer: proxy.Address | None = None) -> dict[str, Any]:
    """Serve one DICOM association on ``sock`` until it ends; returns its summary.

    ``admit`` (optional) is called before negotiation and returns None to accept or a reason
    string to reject with local-limit-exceeded. ``role`` names the listener the connection
    came from ("dicom" or "dicom-tls"). ``on_association`` (optional) receives the running
    engine.Association (whose ``abort()`` works from another thread). ``peer`` is the client's
    address as the supervisor's pending stage found it (a balancer's PROXY header read); None
    (single-process and --inetd modes) reads such a header here.
    """
    _tune(sock)
    if peer is None:
        peer, refused = _proxy_header(sock, config)
        if refused is not None:
            return refused
    if config.access_control:
        denied = _access_denied(sock, peer, config, emit)
        if denied is not None:
            return denied
    if tls.applies(config, role):
        sock, failed = _tls_handshake(sock, peer, config, emit)
        if failed is not None:
            return failed
    output_dir = Path(config.output_directory).resolve()
    staging_dir = prepare_staging_dir(output_dir) if not config.ignore else output_dir
    ctx = StoreContext(config=config, output_dir=output_dir, staging_dir=staging_dir, peer=proxy.peer_text(peer),
                       emit=emit)
    try:
        summary = engine.serve(sock, config, ctx, emit,
                               lambda primitive: _rejection(config, primitive, admit), on_association)
    finally:
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        sock.close()
    summary.update(calling_ae=ctx.calling_ae, called_ae=ctx.called_ae, objects=ctx.objects,
                   failures=ctx.failures, bytes=ctx.bytes_received)
    _log_summary(summary)
    emit(Event.ASSOCIATION_ENDED, summary)
    return summary


def _proxy_header(sock: socket.socket, config: Config) -> tuple[proxy.Address, dict[str, Any] | None]:
    """The pending stage's PROXY protocol check, where there is none: (the peer, None), or (the peer,
    summary) when the connection is refused (and closed)."""
    peer = _remote_tuple(sock)
    if sock.family not in (socket.AF_INET, socket.AF_INET6):
        return peer, None
    verdict = proxy.read_header(sock, proxy.Balancers(config.proxy_protocol_from or ()).listed(peer[0]),
                                config.acse_timeout)
    if isinstance(verdict, proxy.Refusal):
        level = logging.WARNING if verdict.reason in proxy.REFUSALS else logging.INFO  # not: silent, or gone
        LOG.log(level, "refusing the connection from %s: %s", proxy.peer_text(peer), verdict.cause)
        sock.close()
        return peer, {"peer": proxy.peer_text(peer), "outcome": "rejected", "reject_code": "proxy_" + verdict.reason,
                      "reject_reason": verdict.cause, "objects": 0, "failures": 0, "bytes": 0, "duration": 0.0}
    if verdict is None or verdict.source is None:
        return peer, None
    return verdict.source, None


def _access_denied(sock: socket.socket, peer: proxy.Address, config: Config, emit: EventSink) -> dict[str, Any] | None:
    """+ac: the TCP-wrapper rules decide before a byte of DICOM is read; denied peers are dropped."""
    host = peer[0]
    try:
        client = access.client(host, lookup=not config.disable_host_lookup)
        if access.allowed(client, Path(config.hosts_allow), Path(config.hosts_deny)):
            return None
    except ValueError:  # not an IP address (a unix socket under inetd): rules cannot apply
        return None
    LOG.warning("access denied to %s%s by %s / %s (+ac)", host, f" ({client.name})" if client.name else "",
                config.hosts_allow, config.hosts_deny)
    sock.close()
    summary = {"peer": proxy.peer_text(peer), "outcome": "rejected", "reject_code": "access_denied",
               "reject_reason": "host access control", "objects": 0, "failures": 0, "bytes": 0, "duration": 0.0}
    emit(Event.ASSOCIATION_ENDED, summary)
    return summary


def _tls_handshake(sock: socket.socket, address: proxy.Address, config: Config,
                   emit: EventSink) -> tuple[socket.socket, dict[str, Any] | None]:
    """The TLS server handshake, in this worker and bounded by -ta: (TLS socket, None), or
    (closed socket, summary) when it fails."""
    peer = proxy.peer_text(address)
    try:
        return tls.handshake(sock, config), None
    except tls.HandshakeFailed as failed:
        LOG.warning("TLS handshake with %s failed: %s", peer, failed.cause)
        emit(Event.TLS_HANDSHAKE_FAILED, {"reason": failed.reason, "peer": peer})
        sock.close()
        return sock, {"peer": peer, "outcome": "tls_failed", "tls_failure": failed.reason}


def _rejection(config: Config, requestor: Any, admit: Any) -> tuple[int, int, int, str, str] | None:
    """(result, source, reason, sentence for the log, code for the metrics), or None to go on."""
    if config.refuse:
        return (*REJECT_REFUSED, "refusing association (--refuse)", "refused")
    if config.reject_without_implementation_uid and not requestor.implementation_class_uid:
        return (*REJECT_NO_IMPLEMENTATION_UID, "no implementation class UID (--reject)", "no_implementation_uid")
    if admit is not None:
        reason = admit(requestor)
        if reason:
            return (*REJECT_LOCAL_LIMIT, reason, "local_limit")
    return None


def _tune(sock: socket.socket) -> None:
    sock.setblocking(True)
    if sock.family in (socket.AF_INET, socket.AF_INET6):
        # A response written in pieces must not wait for a delayed ACK (see shared notes: 44 ms/object).
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def _remote_tuple(sock: socket.socket) -> tuple[str, int]:
    try:
        addr = sock.getpeername()
        return (addr[0], addr[1])
    except (OSError, IndexError, TypeError):
        return ("unknown", 0)


def _log_summary(s: dict[str, Any]) -> None:
    LOG.info(
        "association from %s (%s) to %s: %s, %d objects stored, %d failed, %d bytes, %.3f s, worker %d",
        s.get("calling_ae") or "?", s["peer"], s.get("called_ae") or "?", s["outcome"], s["objects"],
        s["failures"], s["bytes"], s["duration"], os.getpid(),
    )
