"""One association on an already-accepted socket: the unit of work of every worker."""

from __future__ import annotations

import logging
import os
import socket
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from pynetdicom import AE, _config, evt
from pynetdicom._globals import MODE_ACCEPTOR
from pynetdicom.association import Association
from pynetdicom.transport import AddressInformation, AssociationSocket

from . import IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME, engine, receive, tls
from .config import Config
from .handlers import EventSink, StoreContext, _no_events, handle_echo, handle_store
from .negotiation import acceptor_contexts, answer_extended_negotiation, extended_negotiation
from .storage import prepare_staging_dir

LOG = logging.getLogger("storescpd")

# The association engine: "storescpd" (engine.py, the default) or "pynetdicom" (its own
# Association and DUL threads). STORESCPD_ENGINE exists so benchmarks can compare the two.
ENGINE = os.environ.get("STORESCPD_ENGINE", "storescpd")

# A-ASSOCIATE-RJ (result, source, reason) as DCMTK storescp sends them.
REJECT_REFUSED = (0x01, 0x01, 0x01)  # rejected-permanent, service-user, no-reason-given
REJECT_NO_IMPLEMENTATION_UID = (0x01, 0x01, 0x01)
REJECT_LOCAL_LIMIT = (0x02, 0x03, 0x02)  # rejected-transient, service-provider (presentation), local-limit-exceeded

_installed = False
_ae_cache: dict[int, AE] = {}


def application_entity(config: Config) -> AE:
    """The AE for a configuration, built once per process and configuration."""
    key = id(config)
    ae = _ae_cache.get(key)
    if ae is None:
        _ae_cache.clear()
        ae = AE(ae_title=config.aetitle)
        ae.implementation_class_uid = IMPLEMENTATION_CLASS_UID
        ae.implementation_version_name = IMPLEMENTATION_VERSION_NAME
        ae.maximum_pdu_size = config.max_pdu
        ae.acse_timeout = config.acse_timeout
        ae.dimse_timeout = config.dimse_timeout or None
        ae.network_timeout = config.socket_timeout or None
        ae.maximum_associations = 1 << 20
        ae.require_called_aet = False
        for abstract, syntaxes, scu_role, scp_role in acceptor_contexts(config):
            ae.add_supported_context(abstract, syntaxes, scu_role=scu_role, scp_role=scp_role)
        _ae_cache[key] = ae
    return ae


def serve_association(sock: socket.socket, config: Config, emit: EventSink = _no_events,
                      admit: Any = None, role: str = "dicom", on_association: Any = None) -> dict[str, Any]:
    """Serve one DICOM association on ``sock`` until it ends; returns its summary.

    ``admit`` (optional) is called with the association before negotiation and returns
    None to accept or a reason string to reject with local-limit-exceeded. ``role`` names
    the listener the connection came from ("dicom" or "dicom-tls"). ``on_association``
    (optional) receives the pynetdicom Association before it starts (to abort it later).
    """
    global _installed
    if not _installed:
        receive.install()
        _installed = True
    _config.UNRESTRICTED_STORAGE_SERVICE = bool(config.promiscuous)
    _tune(sock)
    if tls.applies(config, role):
        sock, failed = _tls_handshake(sock, config, emit)
        if failed is not None:
            return failed
    output_dir = Path(config.output_directory).resolve()
    staging_dir = prepare_staging_dir(output_dir) if not config.ignore else output_dir
    if ENGINE == "storescpd":
        return _serve_with_engine(sock, config, emit, admit, on_association, output_dir, staging_dir)
    ae = application_entity(config)
    assoc = _make_association(ae, sock)
    peer = _peer_text(sock)
    ctx = StoreContext(config=config, output_dir=output_dir, staging_dir=staging_dir, peer=peer, emit=emit)
    ctx.abort = lambda: assoc.abort(block=False)
    assoc.storescpd_receiver = ctx  # type: ignore[attr-defined]
    summary: dict[str, Any] = {"peer": peer, "outcome": "aborted"}

    def on_requested(event: Any) -> None:
        rq = event.assoc.requestor
        primitive = rq.primitive
        ctx.calling_ae = str(getattr(primitive, "calling_ae_title", "") or "").strip()
        ctx.called_ae = str(getattr(primitive, "called_ae_title", "") or "").strip()
        emit("association_requested", {"calling_ae": ctx.calling_ae, "called_ae": ctx.called_ae, "peer": peer})
        reason = _rejection(config, rq, admit, event.assoc)
        if reason is not None:
            result, source, diag, text = reason
            LOG.warning("rejecting association from %s (%s): %s", ctx.calling_ae, peer, text)
            summary["outcome"] = "rejected"
            summary["reject_reason"] = text
            event.assoc.acse.send_reject(result, source, diag)

    def on_accepted(event: Any) -> None:
        summary["outcome"] = "accepted"
        emit("association_accepted", {"calling_ae": ctx.calling_ae, "called_ae": ctx.called_ae, "peer": peer})
        if config.verbose_pc:
            for cx in event.assoc.accepted_contexts:
                LOG.info("  accepted context %s: %s with %s", cx.context_id, cx.abstract_syntax,
                         cx.transfer_syntax[0])

    def on_released(event: Any) -> None:
        summary["outcome"] = "released"

    def on_aborted(event: Any) -> None:
        summary["outcome"] = "aborted"

    handlers = [
        (evt.EVT_REQUESTED, on_requested),
        (evt.EVT_ACCEPTED, on_accepted),
        (evt.EVT_RELEASED, on_released),
        (evt.EVT_ABORTED, on_aborted),
        (evt.EVT_C_ECHO, handle_echo),
        (evt.EVT_C_STORE, handle_store, [ctx]),
    ]
    extended = extended_negotiation(config)
    if extended:
        handlers.append((evt.EVT_SOP_EXTENDED, answer_extended_negotiation, [extended]))
    for event, *handler in handlers:
        assoc.bind(event, *handler)
    if on_association is not None:
        on_association(assoc)
    evt.trigger(assoc, evt.EVT_CONN_OPEN, {"address": _remote_tuple(sock)})
    started = time.monotonic()
    try:
        assoc.start()
        assoc.join()
    finally:
        if ctx.current is not None:
            ctx.current.discard()
            ctx.current = None
        _close(assoc, sock)
    if summary["outcome"] == "accepted":
        summary["outcome"] = "released" if assoc.is_released else "aborted"
    summary.update(
        calling_ae=ctx.calling_ae, called_ae=ctx.called_ae, objects=ctx.objects, failures=ctx.failures,
        bytes=ctx.bytes_received, duration=time.monotonic() - started,
    )
    _log_summary(summary)
    emit("association_ended", summary)
    return summary


def _serve_with_engine(sock: socket.socket, config: Config, emit: EventSink, admit: Any, on_association: Any,
                       output_dir: Path, staging_dir: Path) -> dict[str, Any]:
    peer = _peer_text(sock)
    ctx = StoreContext(config=config, output_dir=output_dir, staging_dir=staging_dir, peer=peer, emit=emit)
    try:
        summary = engine.serve(sock, config, ctx, emit,
                               lambda primitive: _rejection(config, primitive, admit, None), on_association)
    finally:
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        sock.close()
    summary.update(calling_ae=ctx.calling_ae, called_ae=ctx.called_ae, objects=ctx.objects,
                   failures=ctx.failures, bytes=ctx.bytes_received)
    _log_summary(summary)
    emit("association_ended", summary)
    return summary


def _tls_handshake(sock: socket.socket, config: Config,
                   emit: EventSink) -> tuple[socket.socket, dict[str, Any] | None]:
    """The TLS server handshake, in this worker and bounded by -ta: (TLS socket, None), or
    (closed socket, summary) when it fails."""
    peer = _peer_text(sock)
    try:
        return tls.handshake(sock, config), None
    except tls.HandshakeFailed as failed:
        LOG.warning("TLS handshake with %s failed: %s", peer, failed.cause)
        emit("tls_handshake_failed", {"reason": failed.reason, "peer": peer})
        sock.close()
        return sock, {"peer": peer, "outcome": "tls_failed", "tls_failure": failed.reason}


def _rejection(config: Config, requestor: Any, admit: Any, assoc: Any) -> tuple[int, int, int, str] | None:
    if config.refuse:
        return (*REJECT_REFUSED, "refusing association (--refuse)")
    if config.reject_without_implementation_uid and not requestor.implementation_class_uid:
        return (*REJECT_NO_IMPLEMENTATION_UID, "no implementation class UID (--reject)")
    if admit is not None:
        reason = admit(assoc)
        if reason:
            return (*REJECT_LOCAL_LIMIT, reason)
    return None


def _make_association(ae: AE, sock: socket.socket) -> Association:
    assoc = Association(ae, MODE_ACCEPTOR)
    assoc.name = f"AcceptorThread@{datetime.now():%Y%m%d%H%M%S}"
    assoc.set_socket(AssociationSocket(assoc, client_socket=sock))
    assoc.acceptor.maximum_length = ae.maximum_pdu_size
    assoc.acceptor.ae_title = ae.ae_title
    assoc.acceptor.address_info = AddressInformation.from_tuple(sock.getsockname())
    assoc.acceptor.implementation_class_uid = ae.implementation_class_uid
    assoc.acceptor.implementation_version_name = ae.implementation_version_name
    assoc.acceptor.supported_contexts = ae.supported_contexts
    assoc.requestor.address_info = AddressInformation.from_tuple(_remote_tuple(sock))
    return assoc


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


def _peer_text(sock: socket.socket) -> str:
    host, port = _remote_tuple(sock)
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _close(assoc: Association, sock: socket.socket) -> None:
    try:
        if assoc.dul.is_alive():
            assoc.kill()
    except Exception:  # the association is over either way
        pass
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    sock.close()


def _log_summary(s: dict[str, Any]) -> None:
    LOG.info(
        "association from %s (%s) to %s: %s, %d objects stored, %d failed, %d bytes, %.3f s, worker %d",
        s.get("calling_ae") or "?", s["peer"], s.get("called_ae") or "?", s["outcome"], s["objects"],
        s["failures"], s["bytes"], s["duration"], os.getpid(),
    )
