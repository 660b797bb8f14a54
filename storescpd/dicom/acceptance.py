"""What storescpd answers to an A-ASSOCIATE-RQ: an A-ABORT, an A-ASSOCIATE-RJ, or an AC with one
result per proposed presentation context.

Every request is parsed strictly (``acse.parse_request``) and judged by the same rules before any
negotiation: a malformed request is aborted; one with a protocol version or application context
we do not speak, with no presentation context, or with no context whose ID PS3.8 allows, is
rejected; then the caller's own rules (``--refuse``, ``--reject``, admission). A context with an
ID PS3.8 does not allow is refused in the AC, whichever negotiation answers the others:

- the common request, by a table lookup per context (DCMTK's storescu proposes ~120);
- one with SCP/SCU role selection or SOP class extended negotiation, and every ``-xf``/``-pm``
  configuration, by pynetdicom's ``negotiate_as_acceptor``/``negotiate_unrestricted``, fed only
  the contexts with valid IDs and well-formed UIDs.

Either way ``acse.encode_accept`` writes the AC, results in the order the contexts were proposed.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from typing import Callable, Protocol

from pydicom.uid import UID
from pynetdicom.presentation import PresentationContext, negotiate_as_acceptor, negotiate_unrestricted

from storescpd import IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME
from storescpd.dicom import acse
from storescpd.dicom.acse import AssociateRequest, ContextResult, ProposedContext
from storescpd.dicom.dimse import REASON_INVALID_PARAMETER, Context, ProtocolError
from storescpd.dicom.negotiation import acceptor_contexts, extended_negotiation

LOG = logging.getLogger("storescpd")

RESULT_ACCEPTANCE = 0
RESULT_PROVIDER_REJECTION = 2  # "no-reason (provider rejection)": for an ID PS3.8 does not allow
RESULT_ABSTRACT_SYNTAX_NOT_SUPPORTED = 3
RESULT_TRANSFER_SYNTAXES_NOT_SUPPORTED = 4

# A-ASSOCIATE-RJ result, source and reason (PS3.8 9.3.4)
RESULT_REJECTED_PERMANENT = 1
SOURCE_SERVICE_USER = 1
SOURCE_SERVICE_PROVIDER_ACSE = 2
REASON_NO_REASON_GIVEN = 1
REASON_APPLICATION_CONTEXT_NOT_SUPPORTED = 2  # with SOURCE_SERVICE_USER
REASON_PROTOCOL_VERSION_NOT_SUPPORTED = 2  # with SOURCE_SERVICE_PROVIDER_ACSE

# (result, source, reason, the cause for the log, a code for the metrics)
Rejection = tuple[int, int, int, str, str]
_MALFORMED = (RESULT_REJECTED_PERMANENT, SOURCE_SERVICE_PROVIDER_ACSE, REASON_NO_REASON_GIVEN)
_UID = re.compile(r"[0-9.]{1,64}")  # what pynetdicom's PresentationContext takes without raising


class Settings(Protocol):
    """What negotiation reads of the configuration."""

    max_pdu: int
    verbose_pc: bool
    promiscuous: bool
    config_file: list[str] | None
    transfer_syntaxes: str


@dataclass
class Answer:
    """The PDU to send, the accepted contexts by ID, and what the log says about it."""

    pdu: bytes
    request: AssociateRequest
    contexts: dict[int, Context] = field(default_factory=dict)
    rejection: Rejection | None = None
    notes: list[str] = field(default_factory=list)  # refused context IDs, one line each


@dataclass
class Tables:
    """Our side of the negotiation for one configuration."""

    supported: dict[str, list[str]]  # abstract syntax: our transfer syntaxes, most preferred first
    extended: dict[str, bytes]  # SOP class: our extended negotiation answer (-xf)
    library: list[PresentationContext]  # the same contexts (with -xf roles), as pynetdicom takes them


_tables: tuple[Settings, Tables] | None = None


def tables(config: Settings) -> Tables:
    """The tables of ``config``, built once (the last configuration's are kept)."""
    global _tables
    if _tables is None or _tables[0] is not config:
        accepted = acceptor_contexts(config)
        library = []
        for i, (uid, syntaxes, scu_role, scp_role) in enumerate(accepted):
            cx = PresentationContext()
            cx.context_id = (2 * i + 1) % 256 or 1
            cx.abstract_syntax = uid
            cx.transfer_syntax = list(syntaxes)
            cx.scu_role, cx.scp_role = scu_role, scp_role
            library.append(cx)
        supported = {uid: list(syntaxes) for uid, syntaxes, _scu, _scp in accepted}
        _tables = (config, Tables(supported, extended_negotiation(config), library))
    return _tables[1]


def prepare(config: Settings) -> None:
    """Build the tables now, so that forked children inherit them instead of each spending
    milliseconds on them (the supervisor calls this; it speaks no DICOM)."""
    tables(config)


def answer(body: bytes | memoryview, config: Settings, decide: Callable[[AssociateRequest], Rejection | None]
           ) -> Answer:
    """Our answer to the A-ASSOCIATE-RQ ``body`` (after its 6-byte header); ProtocolError to abort.

    ``decide`` applies the caller's rules to a request PS3.8 finds valid: a Rejection, or None.
    """
    try:
        request = acse.parse_request(body)
    except acse.MalformedRequest as exc:
        raise ProtocolError(f"malformed A-ASSOCIATE-RQ: {exc}", REASON_INVALID_PARAMETER) from None
    rejection = protocol_rejection(request) or decide(request)
    if rejection is not None:
        return Answer(acse.encode_reject(*rejection[:3]), request, rejection=rejection)
    ours = tables(config)
    roles: list[tuple[str, bool, bool]] = []
    if request.has_role_selection or request.has_extended_negotiation or config.promiscuous or config.config_file:
        results, roles = _negotiate_with_pynetdicom(request, ours, config.promiscuous)
    else:
        results = negotiate(request, ours.supported)
    extended = [(uid, ours.extended[uid]) for uid in request.extended_negotiation if uid in ours.extended]
    pdu = acse.encode_accept(request, results, config.max_pdu, IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME,
                             roles, extended)
    if config.verbose_pc:
        for r in results:
            LOG.info("  context %d %s: %s", r.context_id, r.abstract_syntax,
                     f"accepted with {r.transfer_syntax}" if r.result == RESULT_ACCEPTANCE else f"refused ({r.result})")
    contexts = {r.context_id: Context(r.context_id, r.abstract_syntax, r.transfer_syntax)
                for r in results if r.result == RESULT_ACCEPTANCE}
    notes = [f"refusing presentation context {cid}: its ID is {why} (PS3.8 9.3.2.2: odd, 1 to 255, one per "
             "context)" for cid, why in request.invalid_ids.items()]
    return Answer(pdu, request, contexts, notes=notes)


def protocol_rejection(request: AssociateRequest) -> Rejection | None:
    """Why PS3.8 (or DCMTK, for the first two) rejects this request before looking at its contexts."""
    if not request.protocol_version & acse.PROTOCOL_VERSION_1:
        return (RESULT_REJECTED_PERMANENT, SOURCE_SERVICE_PROVIDER_ACSE, REASON_PROTOCOL_VERSION_NOT_SUPPORTED,
                f"protocol version 0x{request.protocol_version:04x} does not include version 1", "other")
    if request.application_context_name != acse.APPLICATION_CONTEXT:
        return (RESULT_REJECTED_PERMANENT, SOURCE_SERVICE_USER, REASON_APPLICATION_CONTEXT_NOT_SUPPORTED,
                f"application context name {request.application_context_name!r} is not {acse.APPLICATION_CONTEXT}",
                "other")
    if not request.contexts:
        return (*_MALFORMED, "the A-ASSOCIATE-RQ proposes no presentation context (PS3.8 9.3.2: one or more)",
                "other")
    if len(request.invalid_ids) == len({c.context_id for c in request.contexts}):
        listed = ", ".join(f"{cid} ({why})" for cid, why in list(request.invalid_ids.items())[:8])
        more = f" and {len(request.invalid_ids) - 8} more" if len(request.invalid_ids) > 8 else ""
        return (*_MALFORMED, f"no presentation context has an ID PS3.8 9.3.2.2 allows: {listed}{more}", "other")
    return None


def negotiate(request: AssociateRequest, supported: dict[str, list[str]]) -> list[ContextResult]:
    """For each valid context: our first preferred transfer syntax that the peer proposed."""
    return _in_proposed_order(request, {c.context_id: _negotiate_one(c, supported) for c in _valid(request)})


def _valid(request: AssociateRequest) -> list[ProposedContext]:
    return [c for c in request.contexts if c.context_id not in request.invalid_ids]


def _negotiate_one(proposed: ProposedContext, supported: dict[str, list[str]]) -> ContextResult:
    ours = supported.get(proposed.abstract_syntax)
    if ours is None:
        return _refused(proposed, RESULT_ABSTRACT_SYNTAX_NOT_SUPPORTED)
    chosen = next((ts for ts in ours if ts in proposed.transfer_syntaxes), None)
    if chosen is None:
        return _refused(proposed, RESULT_TRANSFER_SYNTAXES_NOT_SUPPORTED)
    return ContextResult(proposed.context_id, RESULT_ACCEPTANCE, chosen, proposed.abstract_syntax)


def _refused(proposed: ProposedContext, result: int) -> ContextResult:
    first = proposed.transfer_syntaxes[0] if proposed.transfer_syntaxes else ""
    return ContextResult(proposed.context_id, result, first, proposed.abstract_syntax)


def _in_proposed_order(request: AssociateRequest, answered: dict[int, ContextResult]) -> list[ContextResult]:
    """One result per proposed ID, in the order first proposed: ``answered`` for the valid IDs, a
    provider rejection for the others."""
    results: dict[int, ContextResult] = {}
    for proposed in request.contexts:
        if proposed.context_id not in results:
            results[proposed.context_id] = answered.get(proposed.context_id) or _refused(
                proposed, RESULT_PROVIDER_REJECTION)
    return list(results.values())


def _negotiate_with_pynetdicom(request: AssociateRequest, ours: Tables, promiscuous: bool
                               ) -> tuple[list[ContextResult], list[tuple[str, bool, bool]]]:
    """Role selection, extended negotiation, -xf and -pm: pynetdicom negotiates the valid contexts."""
    answered: dict[int, ContextResult] = {}
    proposed = []
    for context in _valid(request):
        syntaxes = [ts for ts in context.transfer_syntaxes if _UID.fullmatch(ts)]
        if not _UID.fullmatch(context.abstract_syntax):
            answered[context.context_id] = _refused(context, RESULT_ABSTRACT_SYNTAX_NOT_SUPPORTED)
        elif not syntaxes:
            answered[context.context_id] = _refused(context, RESULT_TRANSFER_SYNTAXES_NOT_SUPPORTED)
        else:
            cx = PresentationContext()
            cx.context_id, cx.abstract_syntax, cx.transfer_syntax = context.context_id, context.abstract_syntax, syntaxes
            proposed.append(cx)
    roles = {UID(uid): scu_scp for uid, scu_scp in request.roles.items() if _UID.fullmatch(uid)}
    negotiate_library = negotiate_unrestricted if promiscuous else negotiate_as_acceptor
    results, role_items = negotiate_library(proposed, ours.library, roles)
    for cx in results:
        answered[cx.context_id] = ContextResult(cx.context_id, cx.result,
                                                str(cx.transfer_syntax[0]) if cx.transfer_syntax else "",
                                                str(cx.abstract_syntax))
    replies = [(str(item.sop_class_uid), bool(item.scu_role), bool(item.scp_role)) for item in role_items]
    return _in_proposed_order(request, answered), replies
