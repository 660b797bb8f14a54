"""The receipt journal: one row per acknowledged object, in a database that needs no server.

How a receipt travels, and why:

1. The process that stored the object appends the receipt, one JSON line, to the *spool*
   (``<journal>.spool/records``, a file every process of the daemon appends to under an
   ``flock``) before the C-STORE-RSP goes out. A ``write`` that returned survives a SIGKILL of
   any process: no acknowledged object is missing from the journal afterwards. It costs one
   ``write`` and takes no database lock, so the journal never slows or fails an object; when
   even the spool cannot be written (its disk is full) the record waits in memory and the
   failure is logged and counted (``storescpd_journal_errors_total``).
2. The *journal writer*, the one process that writes the database, claims the spool (renames
   it; appenders move on to a new file) and writes its records in batches, one transaction
   each, with how far it got. A writer killed half-way resumes there; a database that cannot
   be written (locked, full, corrupt) leaves the records in the spool until it can. In the
   pre-fork and --fork modes the writer is a child of the supervisor (which never touches the
   database); in --single-process and --inetd it is a thread of the process.
3. End of study renames files (``-rns``): the process that renames appends a "moved" record,
   and the receipts' paths follow in the same order as everything else.

``storescpd journal rebuild`` (``journal_rebuild``) makes receipts from the files of an output tree.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import logging
import os
import signal
import threading
import time
from collections import deque
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Protocol

from storescpd.config.settings import Config
from storescpd.messages import Ask, Event
from storescpd.store.journal_db import JournalDatabase, Record, sqlite_path, utc_text

LOG = logging.getLogger("storescpd.journal")

SPOOL_SUFFIX = ".spool"
SPOOL_FILE = "records"
CLAIMED_PREFIX = "claimed-"
DRAIN_LOCK = "writer.lock"
BATCH_RECORDS = 2000  # records per transaction
BATCH_BYTES = 4 << 20
MEMORY_RECORDS = 100_000  # records kept in memory while the spool cannot be written, at most
POLL_SECONDS = 0.5  # how often the writer looks at the spool (bigger batches write fewer pages)
RETRY_FIRST, RETRY_MAX = 1.0, 30.0  # seconds before writing again after a database error
PRUNE_EVERY = 60.0  # seconds between retention runs
PRUNE_BATCH = 500  # receipts removed per transaction: the writer never holds the database long
SPOOL_PROGRESS_KEPT = 24 * 3600.0  # seconds the progress of a finished spool file is remembered
READ_CHUNK = 1 << 20
LOCK_SECONDS = 0.2  # an append waits this long at most for the spool's lock, then the record waits in memory

# Statuses that acknowledge an object (PS3.7 C: success, and the warnings of C-STORE).
WARNING_STATUSES = frozenset({0x0001, 0x0107, 0x0116, 0xB000, 0xB006, 0xB007})

Emit = Callable[[str, dict[str, Any]], None]


def _no_events(kind: str, data: dict[str, Any]) -> None:
    pass


def is_receipt(status: int) -> bool:
    """Success or a warning: the object was acknowledged (a refusal is no receipt)."""
    return status == 0 or status in WARNING_STATUSES


def spool_directory(journal: str | os.PathLike[str]) -> Path:
    return Path(str(sqlite_path(journal)) + SPOOL_SUFFIX)


def digest_for(config: Config) -> str | None:
    """The hash a staging file computes while the data set streams in (None: none)."""
    if getattr(config, "journal", None) and getattr(config, "journal_digest", "none") == "sha256":
        return "sha256"
    return None


# ---- the spool --------------------------------------------------------------------------------
class Spool:
    """The file of records on their way to the database, shared by every process of a daemon.

    Appenders hold an exclusive ``flock`` on the file while they write and check, under the lock,
    that the name still leads to the file they hold: the writer claims the file by renaming it,
    then takes the lock once itself, so that the append in progress (if any) is complete before
    it reads and every later append goes to a new file.
    """

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.path = directory / SPOOL_FILE
        self._fd: int | None = None
        self._id: tuple[int, int] | None = None
        self._pid = 0

    def append(self, data: bytes) -> None:
        """Append whole lines, all or nothing; OSError when they cannot be written now."""
        give_up = time.monotonic() + LOCK_SECONDS
        while time.monotonic() < give_up:
            fd = self._file()
            if not self._lock(fd):
                if not self._is_current():
                    self.close()  # claimed, and the writer holds its lock: no need to wait for it
                else:
                    time.sleep(0.0002)  # another process is appending
                continue
            try:
                if self._is_current():
                    _write_whole(fd, data)
                    return
            finally:
                fcntl.flock(fd, fcntl.LOCK_UN)
            self.close()  # the writer claimed it meanwhile
        raise OSError(errno.EAGAIN, f"the journal spool was locked for {LOCK_SECONDS} s (a stopped process?)")

    @staticmethod
    def _lock(fd: int) -> bool:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        return True

    def _file(self) -> int:
        if self._fd is not None and self._pid == os.getpid():
            return self._fd
        self._fd = None  # a descriptor inherited over fork shares its lock with the parent's: a new one
        self.directory.mkdir(mode=0o750, exist_ok=True)
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o640)
        st = os.fstat(fd)
        self._fd, self._id, self._pid = fd, (st.st_dev, st.st_ino), os.getpid()
        return fd

    def _is_current(self) -> bool:
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return False
        return (st.st_dev, st.st_ino) == self._id

    def close(self) -> None:
        if self._fd is not None and self._pid == os.getpid():
            os.close(self._fd)
        self._fd = None

    # -- the writer's side ---------------------------------------------------------------------
    def claim(self) -> None:
        """Move what was appended so far out of the appenders' way (nothing if nothing was)."""
        try:
            if os.stat(self.path).st_size == 0:
                return
        except FileNotFoundError:
            return
        claimed = self.directory / f"{CLAIMED_PREFIX}{time.time_ns():020d}-{os.getpid()}"
        os.rename(self.path, claimed)
        fd = os.open(claimed, os.O_RDONLY | os.O_CLOEXEC)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)  # an append that began before the rename has ended
        finally:
            os.close(fd)

    def claimed(self) -> list[Path]:
        """Claimed files not yet in the database, oldest first."""
        try:
            return sorted(p for p in self.directory.iterdir() if p.name.startswith(CLAIMED_PREFIX))
        except FileNotFoundError:
            return []

    def pending(self) -> bool:
        """Whether anything waits to be written (cheap: a stat or two)."""
        try:
            if os.stat(self.path).st_size > 0:
                return True
        except FileNotFoundError:
            pass
        return bool(self.claimed())


def _write_whole(fd: int, data: bytes) -> None:
    written = 0
    try:
        written = os.write(fd, data)
        if written != len(data):
            raise OSError(errno.ENOSPC, "no room for the whole journal record")
    except OSError:
        if written:  # never leave half a line for the next record to be glued to
            try:
                os.ftruncate(fd, os.fstat(fd).st_size - written)
            except OSError:
                pass
        raise


def read_records(path: Path, start: int) -> Iterator[tuple[list[Record], int]]:
    """Batches of the records of a spool file from byte ``start``, each with the offset after it."""
    batch: list[Record] = []
    size = 0
    with open(path, "rb") as fh:
        fh.seek(start)
        offset = start
        rest = b""
        while chunk := fh.read(READ_CHUNK):
            lines = (rest + chunk).split(b"\n")
            rest = lines.pop()
            for line in lines:
                offset += len(line) + 1
                if line.strip():
                    try:
                        batch.append(json.loads(line))
                    except ValueError:
                        LOG.error("journal: %s: an unreadable record at byte %d is left out", path.name,
                                  offset - len(line) - 1)
                    size += len(line)
                if len(batch) >= BATCH_RECORDS or size >= BATCH_BYTES:
                    yield batch, offset
                    batch, size = [], 0
        if rest.strip():  # no newline: cut short by a crash before it was acknowledged
            LOG.warning("journal: %s ends in an incomplete record; it is left out", path.name)
        offset += len(rest)
    if batch or offset != start:
        yield batch, offset


# ---- what the storing process records -----------------------------------------------------------
class Recorder:
    """Turns stored objects and end-of-study renames into spool records; never raises."""

    def __init__(self, journal: str | os.PathLike[str], association: Callable[[], str] | None = None,
                 emit: Emit = _no_events) -> None:
        self.spool = Spool(spool_directory(journal))
        self.association = association or _LocalAssociations()
        self.emit = emit
        self.waiting: deque[bytes] = deque()  # lines the spool refused, oldest first
        self._context: Any = None
        self._association_id: str | None = None

    def receipt(self, ctx: Any, ids: Any, path: Path, staged: Any, transfer_syntax: str, status: int = 0) -> None:
        """An object acknowledged with ``status``, now in ``path``; ``staged`` is the staging file
        that became it (None when an existing file was kept instead)."""
        try:
            record = self._receipt(ctx, ids, path, staged, transfer_syntax, status)
        except Exception:  # nothing here may change the C-STORE's status
            LOG.exception("journal: cannot make the receipt of %s", path)
            self.emit(Event.JOURNAL_ERROR, {"kind": "spool"})
            return
        self.append(record)

    def _receipt(self, ctx: Any, ids: Any, path: Path, staged: Any, transfer_syntax: str,
                 status: int) -> Record:
        size = sha256 = None
        try:
            size = os.stat(path).st_size
        except OSError:
            pass
        if digest_for(ctx.config):
            streamed = getattr(staged, "digest", None) if staged is not None else None
            sha256 = streamed.hexdigest() if streamed is not None else file_sha256(path)
        return {
            "op": "receipt", "received_at": utc_text(time.time()), "association_id": self._association_of(ctx),
            "calling_ae": ctx.calling_ae, "called_ae": ctx.called_ae, "peer": ctx.peer,
            "sop_class_uid": ids.sop_class_uid, "sop_instance_uid": ids.sop_instance_uid,
            "study_instance_uid": ids.study_instance_uid,
            "series_instance_uid": getattr(ids, "series_instance_uid", None),
            "patient_id": _decoded(getattr(ids, "patient_id", None), ids.specific_character_set),
            "modality": getattr(ids, "modality", None), "transfer_syntax_uid": transfer_syntax,
            "status": status, "path": str(path), "size": size, "sha256": sha256,
        }

    def _association_of(self, ctx: Any) -> str | None:
        if ctx is not self._context:
            try:
                self._association_id = self.association()
            except Exception as exc:  # the supervisor went away: the receipt goes on without it
                LOG.warning("journal: no association id (%s)", exc)
                self._association_id = None
            self._context = ctx
        return self._association_id

    def moved(self, moves: list[tuple[str, str]]) -> None:
        """Files renamed (old path, new path): their receipts follow."""
        if moves:
            self.append({"op": "moved", "moves": moves})

    def study_ended(self, study_instance_uid: str) -> None:
        self.append({"op": "study_ended", "study_instance_uid": study_instance_uid})

    def append(self, record: Record) -> None:
        line = json.dumps(record, separators=(",", ":")).encode() + b"\n"
        if self.waiting:
            self.retry()
        if self.waiting:
            self._wait(line)
            return
        try:
            self.spool.append(line)
        except OSError as exc:
            LOG.error("journal: cannot write to the spool %s: %s; the record waits in memory (a SIGKILL "
                      "now would lose it: free space there, then storescpd journal rebuild)",
                      self.spool.directory, exc.strerror or exc)
            self.emit(Event.JOURNAL_ERROR, {"kind": "spool"})
            self._wait(line)

    def _wait(self, line: bytes) -> None:
        if len(self.waiting) >= MEMORY_RECORDS:
            self.waiting.popleft()
            LOG.error("journal: %d records wait in memory for the spool; the oldest is dropped", MEMORY_RECORDS)
        self.waiting.append(line)

    def retry(self) -> None:
        """Move the records waiting in memory to the spool, in order, if it can take them now."""
        try:
            self.spool.append(b"".join(self.waiting))
        except OSError:
            self.emit(Event.JOURNAL_ERROR, {"kind": "spool"})
            return
        LOG.warning("journal: the spool is writable again: %d waiting records written", len(self.waiting))
        self.waiting.clear()


class _LocalAssociations:
    """Association ids where no supervisor gives them (one process): ``<pid>-<serial>``."""

    def __init__(self) -> None:
        self.serial = 0

    def __call__(self) -> str:
        self.serial += 1
        return f"{os.getpid()}-{self.serial}"


def _decoded(raw: bytes | str | None, charset: str | None) -> str | None:
    """A text value (Patient ID, one value) in the data set's character set."""
    if raw is None or isinstance(raw, str):
        return raw
    value = raw.strip(b"\0 ")
    if not value:
        return None
    try:
        from pydicom.charset import convert_encodings, decode_bytes

        return decode_bytes(value, convert_encodings([charset or "ISO_IR 6"]), set())
    except Exception:  # an unknown character set: the bytes, read as Latin-1
        return value.decode("latin-1")


def file_sha256(path: Path) -> str | None:
    """The SHA-256 of a file read back (only for files not written from the data stream: a
    re-encoded object, a duplicate kept by on_duplicate = keep-first)."""
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as fh:
            while chunk := fh.read(1 << 20):
                digest.update(chunk)
    except OSError:
        return None
    return digest.hexdigest()


# ---- this process's recorder: what the handlers and the study code call ---------------------------
_recorder: Recorder | None = None


def use(new: Recorder | None) -> None:
    global _recorder
    _recorder = new


def received(ctx: Any, ids: Any, path: Path, staged: Any, transfer_syntax: str, status: int = 0) -> None:
    """The C-STORE handler's one call, after the object is durable and before its response."""
    if _recorder is not None and is_receipt(status):
        _recorder.receipt(ctx, ids, path, staged, transfer_syntax, status)


def moved(directory: Path, renames: list[tuple[str, str]]) -> None:
    """End of study renamed files of ``directory`` (old name, new name)."""
    if _recorder is not None:
        _recorder.moved([(str(directory / old), str(directory / new)) for old, new in renames])


def study_ended(study_instance_uid: str) -> None:
    if _recorder is not None:
        _recorder.study_ended(study_instance_uid)


# ---- the writer -----------------------------------------------------------------------------------
class JournalWriter:
    """Moves spooled records into the database and applies retention; the one writer."""

    def __init__(self, journal: str | os.PathLike[str], retention_days: int = 0, emit: Emit = _no_events,
                 opener: Callable[[Path], JournalDatabase] | None = None) -> None:
        self.path = sqlite_path(journal)
        self.spool = Spool(spool_directory(journal))
        self.retention_days = retention_days
        self.emit = emit
        self.opener = opener or _open_sqlite
        self.db: JournalDatabase | None = None
        self.failing_since: float | None = None
        self.retry_at = 0.0
        self.backoff = RETRY_FIRST
        self.next_prune = 0.0
        self.written = 0

    def step(self) -> None:
        """Write what is spooled, prune when it is time; errors are logged, counted and retried."""
        now = time.monotonic()
        if now < self.retry_at:
            return
        try:
            self._database()  # made or migrated at once: a journal that cannot be is reported at start
            self.drain()
            if self.retention_days and now >= self.next_prune:
                self.next_prune = now + PRUNE_EVERY
                self.prune()
        except Exception as exc:  # sqlite3.Error, OSError, and whatever a broken file makes of them
            self._failed(exc)
        else:
            self._recovered()

    def drain(self) -> None:
        if not self.spool.pending():
            return
        lock = _try_lock(self.spool.directory / DRAIN_LOCK)
        if lock is None:
            return  # another process drains now (--inetd: each connection's process may)
        try:
            db = self._database()
            self.spool.claim()
            for claimed in self.spool.claimed():
                self._write_file(db, claimed)
            db.forget_spools(lambda name: not (self.spool.directory / name).exists(),
                             utc_text(time.time() - SPOOL_PROGRESS_KEPT))
        finally:
            os.close(lock)

    def _write_file(self, db: JournalDatabase, claimed: Path) -> None:
        name = claimed.name
        done = db.spool_done(name)
        for records, offset in read_records(claimed, done):
            db.apply(records, name, offset)
            self.written += len(records)
        claimed.unlink()  # its progress stays recorded a while: a replay after a crash skips it

    def prune(self) -> None:
        before = utc_text(time.time() - self.retention_days * 86400)
        db = self._database()
        total = 0
        while (removed := db.prune(before, PRUNE_BATCH)) > 0:
            total += removed
            if removed < PRUNE_BATCH:
                break
            time.sleep(0.01)  # readers and rebuild get the database between batches
        if total:
            LOG.info("journal: %d receipts older than %d days removed", total, self.retention_days)

    def _database(self) -> JournalDatabase:
        if self.db is None:
            self.db = self.opener(self.path)
        return self.db

    def _failed(self, exc: BaseException) -> None:
        self.emit(Event.JOURNAL_ERROR, {"kind": "database"})
        if self.failing_since is None:
            self.failing_since = time.monotonic()
            LOG.error("journal: cannot write %s: %s; received objects are still acknowledged, their receipts "
                      "wait in %s and are written when it works again (check its disk space and permissions)",
                      self.path, exc, self.spool.directory)
        self.close()
        self.retry_at = time.monotonic() + self.backoff
        self.backoff = min(RETRY_MAX, self.backoff * 2)

    def _recovered(self) -> None:
        if self.failing_since is not None:
            LOG.warning("journal: %s is writable again after %.0f s", self.path, time.monotonic() - self.failing_since)
        self.failing_since = None
        self.backoff = RETRY_FIRST

    def close(self) -> None:
        if self.db is not None:
            try:
                self.db.close()
            except Exception:
                pass
            self.db = None

    def run(self, stop: threading.Event, going_on: Callable[[], bool] = lambda: True) -> None:
        """Until ``stop`` is set or ``going_on()`` is false; then write what is left once more."""
        while not stop.is_set() and going_on():
            self.step()
            stop.wait(POLL_SECONDS)
        self.retry_at = 0.0
        self.step()
        self.close()


def _open_sqlite(path: Path) -> JournalDatabase:
    # Imported here: a process that only spools receipts (a worker) never loads the database driver.
    from storescpd.store.journal_sqlite import open_for_writing

    return open_for_writing(path)


def _try_lock(path: Path) -> int | None:
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o640)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


# ---- wiring: the supervisor's writer child, a worker's recorder, one process ---------------------
class _SupervisorLike(Protocol):
    config: Config
    stopping: str | None
    children: Mapping[int, Any]
    associations: Any  # .of_worker(pid) -> the association a worker runs, with its .id
    ask_handlers: dict[str, Callable[..., Any]]
    event_hooks: list[Callable[..., None]]
    tick_hooks: list[Callable[[float], None]]

    def fork(self, kind: str, target: Callable[[Any], None], keep: Any = None) -> Any: ...

    def emit(self, kind: Event, data: Mapping[str, Any], child: Any) -> None: ...


class SupervisorJournal:
    """In the supervisor: answers workers' "association_id", keeps one writer child alive (it
    never opens the database itself), records the renames its study service makes."""

    def __init__(self, supervisor: _SupervisorLike, channel: Callable[[Any], Any]) -> None:
        self.supervisor = supervisor
        self.channel = channel  # wraps the writer child's end of its channel: .emit(kind, data)
        self.journal = supervisor.config.journal
        self.retention_days = supervisor.config.journal_retention_days
        self.pid: int | None = None
        self.next_start = 0.0
        self.backoff = RETRY_FIRST
        self.started = 0.0
        self.stopping_sent = False
        self.replacing = False
        supervisor.ask_handlers[Ask.ASSOCIATION_ID] = self.association_id
        supervisor.event_hooks.append(self.on_event)
        supervisor.tick_hooks.append(self.keep_alive)
        use(Recorder(self.journal, emit=lambda kind, data: supervisor.emit(Event(kind), data, None)))

    def association_id(self, message: Mapping[str, Any], child: Any) -> str | None:
        """Answers a worker's "association_id": the id /associations shows for its association."""
        info = self.supervisor.associations.of_worker(child.pid)
        return info.id if info is not None else None

    def on_event(self, kind: str, data: dict[str, Any], child: Any) -> None:
        if kind == Event.RELOADED and self.supervisor.config.journal_retention_days != self.retention_days:
            self.retention_days = self.supervisor.config.journal_retention_days
            self.replacing = True  # a new writer with the new retention takes over at once
            self._signal(signal.SIGTERM)

    def keep_alive(self, now: float) -> None:
        sup = self.supervisor
        if sup.stopping:
            # Once no worker is left to store anything, it writes what is left and exits (or sees
            # the supervisor gone, if that comes first).
            workers = any(c.kind in ("worker", "fork") for c in sup.children.values())
            if not workers and not self.stopping_sent:
                self.stopping_sent = True
                self._signal(signal.SIGTERM)
            return
        if self.pid is not None and self.pid in sup.children:
            return
        mono = time.monotonic()
        if self.pid is not None and not self.replacing:  # it died: start another, later each time
            if mono - self.started >= PRUNE_EVERY:
                self.backoff = RETRY_FIRST
            LOG.warning("journal: the writer process %d exited; starting another in %.0f s", self.pid, self.backoff)
            self.next_start = mono + self.backoff
            self.backoff = min(RETRY_MAX, self.backoff * 2)
        self.pid, self.replacing = None, False
        if mono < self.next_start:
            return
        self.started = mono
        child = sup.fork("journal", self._writer_main)
        if child is not None:
            self.pid = child.pid

    def _signal(self, sig: int) -> None:
        if self.pid is not None:
            try:
                os.kill(self.pid, sig)
            except ProcessLookupError:
                pass

    def _writer_main(self, channel: Any) -> None:
        """The writer child (forked by the supervisor; ends with os._exit)."""
        stop = threading.Event()
        signal.signal(signal.SIGTERM, lambda signum, frame: stop.set())
        signal.signal(signal.SIGINT, lambda signum, frame: stop.set())
        use(None)
        parent = os.getppid()
        writer = JournalWriter(self.journal, self.retention_days, self.channel(channel).emit)
        writer.run(stop, lambda: os.getppid() == parent)
        logging.shutdown()
        os._exit(0)


def install(supervisor: _SupervisorLike, channel: Callable[[Any], Any]) -> SupervisorJournal | None:
    """The supervisor's journal, when ``journal`` is set."""
    if not supervisor.config.journal:
        return None
    return SupervisorJournal(supervisor, channel)


def use_worker(config: Config, channel: Any) -> None:
    """In a worker: receipts carry the association id the supervisor gave the association."""
    if config.journal:
        use(Recorder(config.journal, lambda: channel.ask(Ask.ASSOCIATION_ID, {}), channel.emit))


class LocalJournal:
    """One process (--single-process, --inetd): it records, and a thread of it writes. A context
    manager: leaving it writes out what is left."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.writer = JournalWriter(config.journal, config.journal_retention_days)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.writer.run, args=(self.stop,), name="journal",
                                       daemon=True)

    def __enter__(self) -> "LocalJournal":
        use(Recorder(self.config.journal))
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(30)


def local(config: Config) -> LocalJournal | contextlib.nullcontext[None]:
    """The journal of a process that serves alone (nothing without ``journal``)."""
    return LocalJournal(config) if config.journal else contextlib.nullcontext()
