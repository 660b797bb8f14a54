"""The words worker and supervisor speak: every event and question, and the payload each carries.

A worker reports events (fire and forget) and asks questions (answered at once) over its channel
(``storescpd.daemon.ipc``); the supervisor raises events of its own (a child exited, a reload) on
the same hooks, so that the metrics and the study tracker hear one vocabulary. This is the bottom
layer: every layer may use these names, and this module imports none of them.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Literal, TypedDict


class Event(StrEnum):
    """What happened. The value is the name on the wire (JSON) and of a handler ``_on_<value>``."""

    # reported by a worker (or the single-process loop) about its association
    ASSOCIATION_REQUESTED = "association_requested"
    ASSOCIATION_ACCEPTED = "association_accepted"
    PROGRESS = "progress"
    STORED = "stored"
    ASSOCIATION_ENDED = "association_ended"
    TLS_HANDSHAKE_FAILED = "tls_handshake_failed"
    STUDY_STORED = "study_stored"  # an object placed in a study folder (asynchronous hooks)
    IDLE = "idle"  # the worker finished a connection and can take the next one
    JOURNAL_ERROR = "journal_error"  # a receipt could not be spooled, or the journal not written (journal writer)
    # raised by the supervisor itself
    CONNECTION_TIMED_OUT = "connection_timed_out"  # a pending connection sent nothing in time
    PROXY_REFUSED = "proxy_refused"  # a pending connection refused for its PROXY protocol header (or its lack)
    CHILD_EXITED = "child_exited"
    RELOADED = "reloaded"
    RELOAD_FAILED = "reload_failed"


class Ask(StrEnum):
    """A question only the supervisor can answer."""

    ADMIT = "admit"  # None to go on, or why the association is refused (--max-associations)
    STUDY_PLACE = "study_place"  # which study folder an object goes to
    STUDY_STORED = "study_stored"  # an object is in its folder; the reply names hooks to run here
    ASSOCIATION_ID = "association_id"  # the id /associations shows for the asking worker's association


class Peer(TypedDict):
    calling_ae: str
    called_ae: str
    peer: str


class Progress(TypedDict):
    bytes: int
    objects: int


class Stored(TypedDict):
    status: Literal["success", "failure"]
    sop_class: str
    path: str | None
    duration: float


class AssociationEnded(TypedDict, total=False):
    peer: str
    outcome: str  # released, aborted, rejected, tls_failed
    calling_ae: str
    called_ae: str
    objects: int
    failures: int
    bytes: int
    duration: float
    reject_reason: str
    reject_code: str
    tls_failure: str


class TlsHandshakeFailed(TypedDict):
    reason: str
    peer: str


class Idle(TypedDict):
    served: int
    retiring: bool  # at --max-requests: hand it nothing more


class JournalError(TypedDict):
    kind: Literal["spool", "database"]  # the spool file could not be appended to / the database not written


class ChildExited(TypedDict):
    pid: int
    code: int


class ProxyRefused(TypedDict):
    reason: str  # spoofed (a header from elsewhere), missing (none from a balancer), invalid


class ReloadFailed(TypedDict):
    message: str
