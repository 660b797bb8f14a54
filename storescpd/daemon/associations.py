"""The live association table: what runs now, in which worker, and how far it got.

It follows the workers' events (requested, accepted, progress, stored, ended) and answers the
admission question (``--max-associations``). It keeps no totals: counting is the metrics' job
(``storescpd.control.metrics``), which hears the same events.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Iterator, Mapping, cast

from storescpd.messages import Event, Peer, Progress, Stored


@dataclass
class AssociationInfo:
    id: str
    worker_pid: int
    peer: str
    started: float
    calling_ae: str = ""
    called_ae: str = ""
    state: str = "negotiating"  # then "established"; "aborting" once an abort was asked for
    objects_received: int = 0
    bytes_received: int = 0
    last_sop_class: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.id, "peer": self.peer, "calling_ae": self.calling_ae, "called_ae": self.called_ae,
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(self.started)),
            "worker_pid": self.worker_pid, "state": self.state, "objects_received": self.objects_received,
            "bytes_received": self.bytes_received, "last_sop_class": self.last_sop_class,
        }


class AssociationTable(Mapping[str, AssociationInfo]):
    """Running associations by id (``<worker pid>-<serial>``); read-only for everyone but the
    supervisor, which feeds it events."""

    def __init__(self) -> None:
        self._live: dict[str, AssociationInfo] = {}
        self._by_worker: dict[int, str] = {}
        self._serial = 0

    def __getitem__(self, assoc_id: str) -> AssociationInfo:
        return self._live[assoc_id]

    def __iter__(self) -> Iterator[str]:
        return iter(self._live)

    def __len__(self) -> int:
        return len(self._live)

    def of_worker(self, pid: int) -> AssociationInfo | None:
        """The association a worker runs now, if any."""
        return self._live.get(self._by_worker.get(pid, ""))

    def on_event(self, kind: Event, data: Mapping[str, Any], pid: int) -> None:
        """Follow one event of the worker ``pid``."""
        if kind == Event.ASSOCIATION_REQUESTED:
            self._requested(cast(Peer, data), pid)
            return
        info = self.of_worker(pid)
        if info is None:
            return
        if kind == Event.ASSOCIATION_ACCEPTED:
            info.state = "established"
        elif kind == Event.PROGRESS:
            info.bytes_received = cast(Progress, data).get("bytes", info.bytes_received)
        elif kind == Event.STORED:
            info.objects_received += 1
            info.last_sop_class = cast(Stored, data).get("sop_class", "")
        elif kind == Event.ASSOCIATION_ENDED:
            self.forget_worker(pid)

    def forget_worker(self, pid: int) -> AssociationInfo | None:
        """The worker's association is over (ended, or the worker died): the one it ran, if any."""
        return self._live.pop(self._by_worker.pop(pid, ""), None)

    def admit(self, limit: int) -> str | None:
        """None to go on, or why the association just requested is refused (--max-associations)."""
        if limit and len(self._live) > limit:
            return f"{len(self._live) - 1} associations already running (max_associations = {limit})"
        return None

    def _requested(self, peer: Peer, pid: int) -> None:
        self.forget_worker(pid)  # a worker runs one association at a time
        self._serial += 1
        assoc_id = f"{pid}-{self._serial}"
        self._by_worker[pid] = assoc_id
        self._live[assoc_id] = AssociationInfo(assoc_id, pid, peer.get("peer", ""), time.time(),
                                               peer.get("calling_ae", ""), peer.get("called_ae", ""))
