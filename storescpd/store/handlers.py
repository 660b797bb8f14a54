"""C-ECHO and C-STORE: plain functions of an event and the association's state."""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

from storescpd.config.settings import Config
from storescpd.store import journal
from storescpd.store.convert import Encoding, convert, encoding_for
from storescpd.dicom.filemeta import file_meta_bytes
from storescpd.store.studies import process_client as process_study_client
from storescpd.store.storage import (
    Identifiers,
    Incomplete,
    Naming,
    StagingFile,
    UnsafeName,
    inspect_dataset,
    publish,
    publish_new,
)
from storescpd.messages import Event

LOG = logging.getLogger("storescpd")

STATUS_SUCCESS = 0x0000
STATUS_OUT_OF_RESOURCES = 0xA700
STATUS_DATASET_DOES_NOT_MATCH_SOP_CLASS = 0xA900
STATUS_CANNOT_UNDERSTAND = 0xC000

EventSink = Callable[[str, dict[str, Any]], None]
PROGRESS_INTERVAL = 0.5  # seconds between progress events of a running association


def _no_events(kind: str, data: dict[str, Any]) -> None:
    pass


@dataclass
class StoreContext:
    """Everything the handlers of one association share; the engine's ``Receiver``."""

    config: Config
    output_dir: Path
    staging_dir: Path
    calling_ae: str = ""
    called_ae: str = ""
    peer: str = ""
    emit: EventSink = _no_events
    abort: Callable[[], None] = lambda: None
    current: StagingFile | None = None
    objects: int = 0
    failures: int = 0
    bytes_received: int = 0
    last_sop_class: str = ""
    started: float = field(default_factory=time.monotonic)
    _fragments_in_message: int = 0
    _next_progress: float = 0.0
    begin_error: Exception | None = None  # why the data set has no staging file (OSError: no room)
    # Study folders and hooks (-ss/-su/-sp, -xcr, -xcs): this process's StudyClient, or None.
    studies: Any = field(default_factory=process_study_client)

    @property
    def naming(self) -> Naming:
        return Naming(self.config.filenames, self.config.filename_extension, self.config.timenames)

    # -- the engine's Receiver: a C-STORE-RQ's data set, fragment by fragment --
    def begin(self, command: Any, context: Any) -> None:
        self.begin_dataset(command, context.transfer_syntax)

    def fragment(self, data: memoryview) -> None:
        staged = self.current
        if staged is not None and not staged.closed:
            staged.write(data)
        self.dataset_fragment(len(data))

    def end(self, command: Any, context: Any) -> int:
        return handle_store(StoreRequest(command, context), self)

    def drop(self) -> None:
        _drop(self)

    def begin_dataset(self, command: Any, transfer_syntax: str) -> StagingFile | None:
        self._fragments_in_message = 0
        if self.current is not None:
            self.current.discard()
        self.current = None
        self.begin_error = None
        if self.config.ignore:
            return None
        try:
            staged = StagingFile(self.staging_dir, early_writeback=self.config.fsync,
                                 digest=journal.digest_for(self.config))
        except OSError as exc:
            # The data set is still drained (nowhere); handle_store answers Out of Resources.
            self.begin_error = exc
            LOG.error("cannot create a staging file in %s: %s", self.staging_dir, exc.strerror or exc)
            return None
        try:
            if self.config.write_file_format:
                meta = file_meta_bytes(_clean_uid(command.AffectedSOPClassUID),
                                       _clean_uid(command.AffectedSOPInstanceUID), transfer_syntax, self.calling_ae)
                staged.write(meta)
            staged.start_dataset()
        except OSError:
            staged.discard()
            raise
        except ValueError as exc:  # a command UID no file meta can hold: drained, then refused
            staged.discard()
            self.begin_error = exc
            return None
        self.current = staged
        return staged

    def dataset_fragment(self, size: int) -> None:
        self.bytes_received += size
        self._fragments_in_message += 1
        now = time.monotonic()
        if now >= self._next_progress:
            self._next_progress = now + PROGRESS_INTERVAL
            self.emit(Event.PROGRESS, {"bytes": self.bytes_received, "objects": self.objects})
        if self.config.abort_during and self._fragments_in_message == 1:
            LOG.info("ABORT initiated (due to command line options)")
            if self.current is not None:
                self.current.discard()
            self.abort()
            return
        if self.config.sleep_during:
            time.sleep(self.config.sleep_during)


@dataclass
class StoreRequest:
    """What handle_store reads of a C-STORE request (the shape of a pynetdicom event)."""

    request: Any  # the command: AffectedSOPClassUID, AffectedSOPInstanceUID, message_id
    context: Any  # the presentation context: context_id, abstract_syntax, transfer_syntax


def _clean_uid(value: Any) -> str:
    return str(value or "").rstrip("\0 ")


def handle_store(event: Any, ctx: StoreContext) -> int:
    """Publish the staged data set under its final name; success only once it is durable."""
    started = time.monotonic()
    request = event.request
    sop_class = _clean_uid(request.AffectedSOPClassUID)
    sop_instance = _clean_uid(request.AffectedSOPInstanceUID)
    ctx.last_sop_class = sop_class
    if ctx.config.abort_after:
        LOG.info("ABORT initiated (due to command line options)")
        _drop(ctx)
        ctx.abort()
        return STATUS_OUT_OF_RESOURCES  # never sent: the association is aborted
    status, path = _store(event, ctx, sop_class, sop_instance)
    if ctx.studies is not None and status == STATUS_SUCCESS:
        ctx.studies.stored(ctx, path, sop_class)  # never raises: a hook cannot change the status
    if ctx.config.sleep_after:
        time.sleep(ctx.config.sleep_after)
    outcome = "success" if status == STATUS_SUCCESS else "failure"
    if status == STATUS_SUCCESS:
        ctx.objects += 1
    else:
        ctx.failures += 1
    ctx.emit(Event.STORED, {
        "status": outcome, "sop_class": sop_class, "path": str(path) if path else None,
        "duration": time.monotonic() - started,
    })
    return status


def _store(event: Any, ctx: StoreContext, sop_class: str, sop_instance: str) -> tuple[int, Path | None]:
    staged = ctx.current
    ctx.current = None
    if ctx.config.ignore:
        return STATUS_SUCCESS, None
    if staged is None and isinstance(ctx.begin_error, ValueError):
        LOG.error("%.80s... was not stored: %s; answering 0xC000", sop_instance, ctx.begin_error)
        return STATUS_CANNOT_UNDERSTAND, None
    if staged is None:  # nowhere to write it: never acknowledge what is not on disk
        LOG.error("%s was not stored (%s); answering Out of Resources", sop_instance,
                  getattr(ctx.begin_error, "strerror", None) or ctx.begin_error or "no staging file")
        return STATUS_OUT_OF_RESOURCES, None
    transfer_syntax = str(event.context.transfer_syntax)
    encoding = encoding_for(ctx.config, transfer_syntax)
    try:
        # A file that is about to be written again in another encoding need not be durable itself.
        staged.finish(ctx.config.fsync and encoding is None)
    except OSError as exc:
        staged.discard()
        LOG.error("cannot write %s: %s; answering Out of Resources", sop_instance, exc.strerror or exc)
        return STATUS_OUT_OF_RESOURCES, None
    try:
        ids = inspect_dataset(staged.path, staged.dataset_offset, transfer_syntax,
                              staged.head, staged.head_is_whole_dataset)
    except ValueError as exc:  # Incomplete among them
        staged.discard()
        kind = "is incomplete" if isinstance(exc, Incomplete) else "cannot be understood"
        LOG.error("the data set of %s from %s %s: %s; answering 0xC000, nothing stored",
                  sop_instance, ctx.calling_ae, kind, exc)
        return STATUS_CANNOT_UNDERSTAND, None
    mismatch = _mismatch(ids, sop_class, sop_instance, ctx.config.uid_padding)
    if mismatch:
        staged.discard()
        LOG.error("%s; answering 0xA900 (data set does not match SOP class), nothing stored", mismatch)
        return STATUS_DATASET_DOES_NOT_MATCH_SOP_CLASS, None
    if encoding is not None:
        converted, status = _reencode(ctx, staged, transfer_syntax, encoding, sop_class, sop_instance)
        if converted is None:
            return status, None
        staged = converted
    try:
        folder = ctx.studies.place(ctx, ids) if ctx.studies is not None else None
        final = _final_path(ctx, sop_class, sop_instance, folder)
    except UnsafeName as exc:
        staged.discard()
        LOG.error("%s (from %s at %s); answering 0xC000, nothing stored", exc, ctx.calling_ae, ctx.peer)
        return STATUS_CANNOT_UNDERSTAND, None
    try:
        if ctx.naming.timenames:  # a new name per object: never replace, whatever on_duplicate says
            stored = publish_new(staged, _time_names(final), ctx.config.fsync)
        elif ctx.config.on_duplicate == "unique":  # taken, even by a worker storing it right now: a new name
            unique = final.with_name(ctx.naming.unique_variant(sop_class))
            stored = publish_new(staged, [final, unique], ctx.config.fsync)
        else:
            stored = publish(staged, final, ctx.config.on_duplicate, ctx.config.fsync)
    except OSError as exc:
        staged.discard()
        LOG.error("cannot store %s: %s; answering Out of Resources", final, exc.strerror or exc)
        return STATUS_OUT_OF_RESOURCES, None
    # Durable now: the receipt goes to the journal's spool before the response goes out.
    journal.received(ctx, ids, stored or final, staged if stored else None,
                     encoding.transfer_syntax if encoding else transfer_syntax)
    if stored is None:
        LOG.warning("file %s already exists, keeping the first copy (on_duplicate = keep-first)", final)
        return STATUS_SUCCESS, final
    LOG.info("storing DICOM file: %s", stored)
    return STATUS_SUCCESS, stored


def _reencode(ctx: StoreContext, staged: StagingFile, received: str, encoding: Encoding,
              sop_class: str, sop_instance: str) -> tuple[StagingFile | None, int]:
    """Write the staged data set again as the output options ask (a second staging file)."""
    head = (file_meta_bytes(sop_class, sop_instance, encoding.transfer_syntax, ctx.calling_ae)
            if ctx.config.write_file_format else b"")
    converted = StagingFile(ctx.staging_dir)
    try:
        convert(staged.path, staged.dataset_offset, received, converted.file, encoding, head)
        converted.finish(ctx.config.fsync)
    except OSError as exc:
        converted.discard()
        staged.discard()
        LOG.error("cannot write %s: %s; answering Out of Resources", converted.path, exc.strerror or exc)
        return None, STATUS_OUT_OF_RESOURCES
    except Exception as exc:  # pydicom raises many kinds on data it cannot encode
        converted.discard()
        staged.discard()
        LOG.error("cannot write the data set in %s: %s; answering 0xC000, nothing stored",
                  encoding.transfer_syntax, exc)
        return None, STATUS_CANNOT_UNDERSTAND
    staged.discard()
    return converted, STATUS_SUCCESS


def _mismatch(ids: Identifiers, sop_class: str, sop_instance: str, uid_padding: bool) -> str | None:
    def norm(uid: str | None) -> str | None:
        return uid.rstrip(" ") if (uid is not None and uid_padding) else uid

    if norm(ids.sop_class_uid) != norm(sop_class):
        return f"SOP Class UID of the data set ({ids.sop_class_uid}) differs from the C-STORE request ({sop_class})"
    if norm(ids.sop_instance_uid) != norm(sop_instance):
        return (f"SOP Instance UID of the data set ({ids.sop_instance_uid}) differs from the C-STORE "
                f"request ({sop_instance})")
    return None


def _final_path(ctx: StoreContext, sop_class: str, sop_instance: str, folder: str | None = None) -> Path:
    directory = ctx.output_dir / folder if folder else ctx.output_dir
    name = ctx.naming.name(sop_class, sop_instance)
    path = directory / name
    leaves = folder is not None and (directory.parent != ctx.output_dir or folder in (".", ".."))
    if leaves or path.parent != directory or os.sep in name or name in (".", ".."):
        raise UnsafeName(f"file name {name!r} would leave the output directory")
    return path


def _time_names(first: Path) -> Iterator[Path]:
    """DCMTK's -tn: a second file in the same millisecond gets _0000, _0001, ..."""
    yield first
    stamp, rest = first.name.split(".", 1)
    for serial in range(10000):
        yield first.with_name(f"{stamp}_{serial:04d}.{rest}")


def _drop(ctx: StoreContext) -> None:
    if ctx.current is not None:
        ctx.current.discard()
        ctx.current = None
