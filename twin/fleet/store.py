"""One SQLite database for a whole fleet process, with group commit (docs/fleet.md, "Storage").

A fleet of N members used to open N single-twin stores (twin/store.py): N files, N worker
threads, N connections with their page caches, and one fsync per batch per member.
:class:`SharedStore` is one file, ``<fleet data dir>/fleet.db``, one writer thread that owns
the only writing connection, and :class:`StationStore`, the per-member view the runtime
writes through (``apply``/``load``/``close``/``summary``/``path``, as :class:`twin.store.Store`).

Group commit: the writer takes every batch that is waiting when it wakes (at most
:data:`MAX_GROUP`), runs them in one ``BEGIN IMMEDIATE … COMMIT``, each inside its own
SAVEPOINT, so one fsync of the WAL covers all of them. None of the single store's
guarantees is weakened:

* **Durable when acknowledged.** WAL + ``synchronous=FULL``, as twin/store.py. A caller's
  future is resolved (on its event loop) only after COMMIT returned, so an acknowledged
  batch survives kill -9 and power loss.
* **Atomic per batch.** A batch that fails on its own (a constraint, a value SQLite refuses)
  is rolled back to its savepoint and only its caller gets the error; the others commit.
  An error that dooms the transaction (SQLITE_FULL, IOERR, a failed COMMIT) rolls back the
  whole group and fails every batch in it as retryable: nothing of any of them is applied,
  and each caller retries its own (every op is idempotent, so a COMMIT that reported an
  error but reached the WAL does no harm when retried).
* **Ordered.** One FIFO queue for every station: a station's batches commit in submission
  order (a group is a run of consecutive submissions).
* **Malformed ops** are refused with BadOpsError in the caller's thread, before the queue.
* **summary()** never touches SQLite: per-view counters, updated by the writer after COMMIT.
* **Nothing waits on a dead writer.** If the writer thread itself fails (MemoryError, a bug
  outside the guarded SQL), every job it held or had queued fails with a non-retryable
  StoreError naming the cause, summary() shows ``broken``, later calls are refused at once
  and close() returns. A queue over :data:`MAX_QUEUED` refuses apply() (retryable).
* **Foreign files refused, never repaired**: fleet.db has its own application_id
  (:data:`twin.store.FLEET_APPLICATION_ID`) and migrations, so a single twin's Store refuses a
  fleet.db and this store refuses a twin.db, a newer schema, a corrupted file.

Upgrade: a member whose data dir still holds ``twin.db`` from an earlier fleet version (one
file per member) has it imported, in one transaction, the first time its view opens; the
file (and its -wal/-shm) is then renamed ``twin.db.imported``. The ``stations`` table records
the import, so it never happens twice.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import queue as queue_module
import sqlite3
import threading
from pathlib import Path
from typing import Any, Callable

from twin.store import (
    FLEET_APPLICATION_ID, Effect, Statements, Stmt, Store, StoreCounters, StoreError, check_identity,
    compile_batch, dooms_transaction, fsync_dir, open_connection, open_snapshot_connection, queue_created_at,
    read_all, read_error, refusal, sqlite_error, validate_existing, wal_path,
)
from twin.store import SCHEMA_VERSION as SINGLE_SCHEMA_VERSION

log = logging.getLogger("twin.fleet.store")

FLEET_DB = "fleet.db"
LEGACY_DB = "twin.db"  # a member's own store, from fleet versions before the shared one
IMPORTED_SUFFIX = ".imported"
SCHEMA_VERSION = 1
# The largest group: bounds how long one transaction holds the write lock and how much a
# doomed group takes down with it; 256 batches of a few ops commit in a few milliseconds.
MAX_GROUP = 256
# The page cache of the one connection (KiB). 1,000 single stores had 1,000 caches of the
# SQLite default 2 MiB each (lazily filled); one 16 MiB cache holds every station's hot pages.
CACHE_KIB = 16 * 1024
# apply() refuses (retryable, nothing queued) beyond this many jobs waiting for the writer: a
# writer stuck on a hung disk must not grow the queue without end while every member's actor
# re-submits its held batch after each commit timeout. Normal load keeps about one batch per
# member waiting; 64 groups is far above that. The actor holds a refused batch in memory and
# retries it in order, as after any retryable error.
MAX_QUEUED = 64 * MAX_GROUP

# MIGRATIONS[v] brings a fleet store from version v-1 to v, like twin/store.py's. Append only.
# Every table is a single store's with the station id leading its primary key, so a
# station's rows are one contiguous range of the b-tree (its load is one range scan).
MIGRATIONS: dict[int, tuple[str, ...]] = {
    1: (
        f"PRAGMA application_id = {FLEET_APPLICATION_ID}",
        # One row per station that ever opened its view: `twin queue --station` tells an unknown
        # id from an empty queue, and imported_from makes the import of a legacy twin.db happen once.
        "CREATE TABLE stations (station TEXT NOT NULL PRIMARY KEY, registered_at TEXT NOT NULL,"
        " imported_from TEXT) WITHOUT ROWID",
        "CREATE TABLE kv (station TEXT NOT NULL, ns TEXT NOT NULL, key NOT NULL, value TEXT NOT NULL,"
        " PRIMARY KEY (station, ns, key)) WITHOUT ROWID",
        "CREATE TABLE transactions (station TEXT NOT NULL, local_id NOT NULL, record TEXT NOT NULL,"
        " PRIMARY KEY (station, local_id)) WITHOUT ROWID",
        "CREATE TABLE queue (station TEXT NOT NULL, seq INTEGER NOT NULL, entry TEXT NOT NULL,"
        " PRIMARY KEY (station, seq)) WITHOUT ROWID",
        "CREATE TABLE discarded (station TEXT NOT NULL, seq INTEGER NOT NULL, entry TEXT NOT NULL,"
        " reason TEXT NOT NULL, discarded_at TEXT NOT NULL, PRIMARY KEY (station, seq)) WITHOUT ROWID",
    ),
}
IDENTITY = {"application_id": FLEET_APPLICATION_ID, "schema_version": SCHEMA_VERSION, "kind": "ocpp-twin fleet store"}

# The single store's statements with the station as the first parameter (the scope).
STATEMENTS = Statements(
    kv_put="INSERT INTO kv (station, ns, key, value) VALUES (?, ?, ?, ?)"
           " ON CONFLICT (station, ns, key) DO UPDATE SET value = excluded.value",
    kv_del="DELETE FROM kv WHERE station = ? AND ns = ? AND key = ?",
    kv_clear="DELETE FROM kv WHERE station = ? AND ns = ?",
    tx_put="INSERT INTO transactions (station, local_id, record) VALUES (?, ?, ?)"
           " ON CONFLICT (station, local_id) DO UPDATE SET record = excluded.record",
    q_put="INSERT INTO queue (station, seq, entry) VALUES (?, ?, ?)"
          " ON CONFLICT (station, seq) DO UPDATE SET entry = excluded.entry",
    q_del="DELETE FROM queue WHERE station = ? AND seq = ?",
    # Parameters: station, reason, discarded_at, seq (the scope first, then the op's order).
    q_discard_copy="INSERT OR REPLACE INTO discarded (station, seq, entry, reason, discarded_at)"
                   " SELECT station, seq, entry, ?2, ?3 FROM queue WHERE station = ?1 AND seq = ?4",
    select_kv="SELECT ns, key, value FROM kv WHERE station = ? ORDER BY ns, key",
    select_transactions="SELECT local_id, record FROM transactions WHERE station = ?",
    select_queue="SELECT seq, entry FROM queue WHERE station = ? ORDER BY seq",
    select_discarded="SELECT seq, entry, reason, discarded_at FROM discarded WHERE station = ? ORDER BY seq",
)
_NOW = "strftime('%Y-%m-%dT%H:%M:%fZ')"  # UTC, milliseconds: the stamp twin.store writes
_SQL_REGISTER = f"INSERT OR IGNORE INTO stations (station, registered_at) VALUES (?, {_NOW})"


class _Batch:
    """One apply() waiting for the writer."""

    __slots__ = ("view", "stmts", "effects", "count", "future", "loop", "internal")

    def __init__(self, view: "StationStore", stmts: list[Stmt], effects: list[Effect], count: int,
                 future: asyncio.Future, loop: asyncio.AbstractEventLoop, internal: bool = False):
        self.view, self.stmts, self.effects, self.count = view, stmts, effects, count
        self.future, self.loop, self.internal = future, loop, internal


class _Call:
    """Anything else the writer does (open, load, a view's import, close): alone, in queue order."""

    __slots__ = ("fn", "args", "future", "loop")

    def __init__(self, fn: Callable[..., Any], args: tuple, future: asyncio.Future, loop: asyncio.AbstractEventLoop):
        self.fn, self.args, self.future, self.loop = fn, args, future, loop


_STOP = object()


def _settle(outcomes: list[tuple[asyncio.Future, Any, BaseException | None]]) -> None:
    # Runs on the callers' event loop: one callback per group, not one per batch.
    for future, result, error in outcomes:
        if future.done():
            # Cancelled: the caller gave up waiting; what it submitted is idempotent either way.
            # Already settled: a dying writer fails its in-flight jobs, some of which it may
            # have answered just before; the first answer stands.
            continue
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)


def check_station(station: Any) -> str:
    """``station`` if it can be a station id here, else ValueError saying why. Looser than
    OCPP's charge point identity (twin.config.check_charge_point_id), which every id the fleet
    makes satisfies; it only refuses what SQLite cannot store as TEXT (a lone surrogate, as
    Python decodes an argv byte that is not UTF-8) and control characters, which no identity
    in a URL path (OCPP-J 1.6 section 3.1) can hold and no terminal shows."""
    if not isinstance(station, str) or not station or station != station.strip():
        raise ValueError(f"station id must be a non-empty str without surrounding blanks, got {station!r}")
    try:
        station.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError(f"station id must be valid text (UTF-8), got {station!r}") from None
    if any(ord(c) < 0x20 or 0x7F <= ord(c) < 0xA0 for c in station):
        raise ValueError(f"station id must not hold control characters, got {station!r}")
    return station


class SharedStore:
    """The fleet's one store; create with ``await SharedStore.open(path)``, then one view per
    member with ``await store.station(id, legacy_dir)``."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self._jobs: queue_module.SimpleQueue = queue_module.SimpleQueue()
        self._thread = threading.Thread(target=self._writer, name="twin-fleet-store", daemon=True)
        self._conn: sqlite3.Connection | None = None  # the writer thread's alone
        self._closed = False
        self._views_open = 0  # the loop's
        # Set, under _gate, once the writer takes no more jobs (closed, or dead): from then on
        # every submission is refused at once instead of waiting on a queue nobody reads.
        self._gate = threading.Lock()
        self._dead: str | None = None
        self._broken: str | None = None  # why the writer thread died, if it did
        # Written by the writer thread under the lock; summary() reads them.
        self._lock = threading.Lock()
        self._commits = 0  # write transactions committed: one WAL fsync each (groups and imports)
        self._batches = 0  # apply() batches committed
        self._batch_failures = 0  # batches that failed alone (rolled back to their savepoint)
        self._group_failures = 0  # groups rolled back whole (disk full, I/O error, a failed COMMIT)
        self._largest_group = 0
        self._imports = 0
        self._last_error: str | None = None

    # ------------------------------------------------------------------ lifecycle
    @classmethod
    async def open(cls, path: Path) -> "SharedStore":
        store = cls(path)
        store._thread.start()
        try:
            await store._call(store._open_sync)
        except BaseException:
            store._closed = True
            store._jobs.put(_STOP)
            await asyncio.to_thread(store._thread.join)
            raise
        return store

    async def close(self) -> None:
        """Close the database after every batch already submitted has been committed. Views
        still open refuse further applies (StoreError, as a closed Store does)."""
        if self._closed:
            return
        self._closed = True
        try:
            await self._call(self._close_sync)
        except StoreError:
            if self._broken is None:
                raise
            # The writer died (and closed the connection on its way out): already reported to
            # every caller and in summary(); closing what is left must not fail or hang.
        finally:
            self._jobs.put(_STOP)  # a dead writer never reads it: harmless
            await asyncio.to_thread(self._thread.join)

    def _open_sync(self) -> None:
        try:
            self._conn = open_connection(self.path, MIGRATIONS, cache_kib=CACHE_KIB, **IDENTITY)
        except OSError as exc:  # stat, mkdir, fsync of the directory...
            raise StoreError(f"{self.path}: cannot open: {exc}", path=self.path, retryable=True) from None

    def _close_sync(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()  # the last connection checkpoints the WAL into the main file

    # ------------------------------------------------------------------ views
    async def station(self, station: str, legacy_dir: Path | None = None) -> "StationStore":
        """The view of ``station``. ``legacy_dir``: the member's data dir, where a ``twin.db``
        of an earlier fleet version is imported from (once) if the shared store has nothing
        for this station yet."""
        check_station(station)
        if self._closed or self._dead is not None:
            raise StoreError(f"{self.path}: {self._dead or 'store is closed'}", path=self.path)
        view = StationStore(self, station)
        registered = await self._call(self._open_view_sync, view, None if legacy_dir is None else Path(legacy_dir))
        if not registered:
            # A new station: its row goes through group commit with everyone's batches, so a
            # thousand members starting at once do not cost a thousand fsyncs.
            await self._submit(view, [(_SQL_REGISTER, (station,))], [], 0, internal=True)
        self._views_open += 1
        return view

    def _open_view_sync(self, view: "StationStore", legacy_dir: Path | None) -> bool:
        conn = self._require_conn(view.where)
        try:
            row = conn.execute("SELECT imported_from FROM stations WHERE station = ?", (view.station,)).fetchone()
            if legacy_dir is not None:
                row = self._legacy_sync(conn, view, legacy_dir, row) or row
            conn.execute("BEGIN")
            try:
                queue = queue_created_at(conn.execute(STATEMENTS.select_queue, (view.station,)), self.path)
                tx_ids = {r[0] for r in conn.execute("SELECT local_id FROM transactions WHERE station = ?",
                                                     (view.station,))}
                discarded = conn.execute("SELECT count(*) FROM discarded WHERE station = ?",
                                         (view.station,)).fetchone()[0]
            finally:
                if conn.in_transaction:
                    conn.execute("COMMIT")
        except sqlite3.Error as exc:
            raise sqlite_error(self.path, exc, "open", where=view.where) from None
        view._counters.reset(queue, tx_ids, discarded)
        return row is not None

    # ------------------------------------------------------------------ upgrade from per-member files
    def _legacy_sync(self, conn: sqlite3.Connection, view: "StationStore", legacy_dir: Path,
                     row: tuple | None) -> tuple | None:
        """Import ``legacy_dir/twin.db`` if this station has nothing here; finish the renaming of
        an import that a crash interrupted. Returns the station's row when it made one."""
        legacy = legacy_dir / LEGACY_DB
        imported = legacy_dir / (LEGACY_DB + IMPORTED_SUFFIX)
        recorded = self._relative(legacy)
        try:
            present = legacy.exists()
            orphan_wal = not present and wal_path(legacy).exists() and wal_path(legacy).stat().st_size > 0
            imported_present = imported.exists()
        except OSError as exc:
            raise StoreError(f"{view.where}: cannot read {legacy_dir}: {exc}", path=self.path, retryable=True) from None
        recorded_path, identity = _import_record(row[0] if row is not None else None)
        if row is not None and recorded_path == recorded:
            # Imported from this path. Still there (or its -wal/-shm): the process died between
            # the import's COMMIT and the end of the renaming; finish it -- but only if it is the
            # very file imported. A twin.db written since (an earlier fleet version, `twin run` on
            # the member's dir) holds data the fleet's store has never seen: hiding it unread
            # would lose its queued transaction messages.
            if present and imported_present:
                raise self._conflict(view, legacy, f"and so is {imported.name}, the file it was imported from")
            if present or self._sidecars(legacy):
                try:
                    same = identity is not None and _legacy_identity(legacy, present) == \
                        {k: identity.get(k) for k in (("db", "wal") if present else ("wal",))}
                except OSError as exc:
                    raise StoreError(f"{view.where}: cannot read {legacy_dir}: {exc}", path=self.path,
                                     retryable=True) from None
                if not same:
                    raise self._conflict(
                        view, legacy if present else wal_path(legacy),
                        "and it is not the file imported from there into " + self.path.name
                        + (f" (now {imported.name})" if imported_present else "")
                        + (": its size, mtime or inode differ, so it was written after the import"
                           if identity is not None else ": that import recorded nothing to tell them apart"))
                self._rename_legacy(view, legacy, imported)
            return None
        if orphan_wal:
            raise StoreError(
                f"{view.where}: {legacy} is missing but {wal_path(legacy).name} is there (it may hold the "
                "station's unsent transactions); refusing to start the station without it: restore the "
                "database file, or move the WAL aside", path=self.path)
        if row is not None:
            if present:
                raise self._conflict(view, legacy, "")
            return None
        if not present:
            return None
        if imported_present:
            raise StoreError(
                f"{view.where}: both {legacy.name} and {imported.name} are in {legacy_dir}; refusing to import "
                f"{legacy.name} over an earlier import (move one of them aside)", path=self.path)
        try:
            # Taken before reading: a file changed while it is read no longer matches, so it is
            # refused later rather than renamed away with rows the import did not see.
            identity = _legacy_identity(legacy, True)
        except OSError as exc:
            raise StoreError(f"{view.where}: cannot read {legacy_dir}: {exc}", path=self.path, retryable=True) from None
        rows = _read_legacy(legacy)
        station = view.station
        try:
            conn.execute("BEGIN IMMEDIATE")
            conn.execute(f"INSERT INTO stations (station, registered_at, imported_from) VALUES (?, {_NOW}, ?)",
                         (station, json.dumps({"path": recorded, **identity})))
            # Plain INSERTs: the station had no row, so it has nothing here; a conflict would
            # mean it had, and the import is refused whole rather than merged.
            conn.executemany("INSERT INTO kv (station, ns, key, value) VALUES (?, ?, ?, ?)",
                             ((station, *r) for r in rows["kv"]))
            conn.executemany("INSERT INTO transactions (station, local_id, record) VALUES (?, ?, ?)",
                             ((station, *r) for r in rows["transactions"]))
            conn.executemany("INSERT INTO queue (station, seq, entry) VALUES (?, ?, ?)",
                             ((station, *r) for r in rows["queue"]))
            conn.executemany("INSERT INTO discarded (station, seq, entry, reason, discarded_at) VALUES (?, ?, ?, ?, ?)",
                             ((station, *r) for r in rows["discarded"]))
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            try:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
            except sqlite3.Error:
                pass
            raise sqlite_error(self.path, exc, f"import of {legacy}; rolled back, nothing imported",
                               where=view.where) from None
        with self._lock:
            self._commits += 1
            self._imports += 1
        log.warning("station %s: imported %s (%d queued, %d transactions) into %s", station, legacy,
                    len(rows["queue"]), len(rows["transactions"]), self.path)
        self._rename_legacy(view, legacy, imported)
        return (recorded,)

    def _relative(self, legacy: Path) -> str:
        try:
            return str(legacy.absolute().relative_to(self.path.parent.absolute()))
        except ValueError:
            return str(legacy.absolute())

    @staticmethod
    def _sidecars(legacy: Path) -> list[Path]:
        return [p for p in (Path(str(legacy) + "-wal"), Path(str(legacy) + "-shm")) if p.exists()]

    def _conflict(self, view: "StationStore", legacy: Path, more: str) -> StoreError:
        return StoreError(
            f"{view.where}: the station is already in the fleet's store, but {legacy} is there too"
            + (f" {more}" if more else "") + "; refusing to guess which one holds its data: move the file aside "
            f"(it can be read with `twin queue --data-dir {legacy.parent}`)", path=self.path)

    def _rename_legacy(self, view: "StationStore", legacy: Path, imported: Path) -> None:
        # The main file first: a twin.db-wal left alone is refused by every store (the file
        # it belongs to is gone), so a half-done rename can never be mistaken for a store.
        try:
            if legacy.exists():
                os.replace(legacy, imported)
            for suffix in ("-wal", "-shm"):
                side = Path(str(legacy) + suffix)
                if side.exists():
                    os.replace(side, Path(str(imported) + suffix))
            fsync_dir(legacy.parent)
        except OSError as exc:
            raise StoreError(f"{view.where}: imported {legacy}, but cannot rename it to {imported.name}: {exc} "
                             "(the next start finishes it)", path=self.path, retryable=True) from None

    # ------------------------------------------------------------------ the queue to the writer
    def _require_conn(self, where: str) -> sqlite3.Connection:
        if self._conn is None:
            raise StoreError(f"{where}: store is closed", path=self.path)
        return self._conn

    def _enqueue(self, job: "_Batch | _Call", where: str) -> None:
        # Under the gate: the writer marks itself gone under it before its last drain, so a job
        # is either drained (and answered) or refused here; none is left behind unanswered.
        with self._gate:
            if self._dead is not None:
                raise StoreError(f"{where}: {self._dead}", path=self.path)
            self._jobs.put(job)

    def _call(self, fn: Callable[..., Any], *args: Any) -> "asyncio.Future[Any]":
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self._enqueue(_Call(fn, args, future, loop), str(self.path))
        return future

    def _submit(self, view: "StationStore", stmts: list[Stmt], effects: list[Effect], count: int, *,
                internal: bool = False) -> "asyncio.Future[None]":
        # Put on the queue synchronously, in the caller's order: that order is the commit order.
        if not internal and self._jobs.qsize() >= MAX_QUEUED:
            raise StoreError(f"{view.where}: {self._jobs.qsize()} jobs already waiting for the store's writer "
                             f"(at most {MAX_QUEUED}): is the disk hung? nothing queued, retry later",
                             path=self.path, retryable=True)
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self._enqueue(_Batch(view, stmts, effects, count, future, loop, internal), view.where)
        return future

    # ------------------------------------------------------------------ the writer thread
    def _writer(self) -> None:
        held = None  # a job taken while gathering a group, run after it
        in_flight: list = []  # the jobs taken and not answered yet
        try:
            while True:
                job = held if held is not None else self._jobs.get()
                held = None
                if job is _STOP:
                    break
                in_flight = [job]
                if isinstance(job, _Call):
                    self._run_call(job)
                else:
                    while len(in_flight) < MAX_GROUP:
                        try:
                            more = self._jobs.get_nowait()
                        except queue_module.Empty:
                            break
                        if isinstance(more, _Batch):
                            in_flight.append(more)
                        else:
                            held = more
                            break
                    self._commit_group(in_flight)
                in_flight = []
        except BaseException as exc:  # noqa: BLE001 - nothing may be left waiting on a dead writer
            self._die(exc, in_flight + ([held] if held is not None and held is not _STOP else []))
            return
        # Closed: anything submitted after close() (a race the views guard against) fails, never hangs.
        self._shut("store is closed", [])

    def _die(self, exc: BaseException, in_flight: list) -> None:
        """The writer thread is going down (MemoryError, a bug outside the guarded SQL): answer
        every job it holds or will never read, and leave a store that refuses at once. A job in
        flight may have committed (the failure can follow COMMIT): an op is idempotent, so a
        caller that retries elsewhere, or after a restart, does no harm."""
        cause = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        self._broken = cause
        reason = f"the store's writer thread died ({cause}); the store is unusable until the process restarts"
        with self._lock:
            self._last_error = reason
        log.critical("%s: %s", self.path, reason, exc_info=(type(exc), exc, exc.__traceback__))
        conn, self._conn = self._conn, None
        try:
            if conn is not None:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")  # release the write lock of a group cut short
                conn.close()
        except BaseException:  # noqa: BLE001 - the connection is being abandoned anyway
            pass
        self._shut(reason, in_flight)

    def _shut(self, reason: str, in_flight: list) -> None:
        with self._gate:
            self._dead = reason
        jobs = list(in_flight)
        while True:
            try:
                job = self._jobs.get_nowait()
            except queue_module.Empty:
                break
            if job is not _STOP:
                jobs.append(job)
        for job in jobs:
            where = job.view.where if isinstance(job, _Batch) else str(self.path)
            error = StoreError(f"{where}: {reason}", path=self.path)  # retryable=False: retrying here cannot help
            try:
                # Not through _deliver: it may be what failed.
                job.loop.call_soon_threadsafe(_settle, [(job.future, None, error)])
            except BaseException:  # noqa: BLE001 - that loop is closed: nobody is waiting any more
                pass

    def _run_call(self, job: _Call) -> None:
        try:
            outcome = (job, job.fn(*job.args), None)
        except BaseException as exc:  # noqa: BLE001 - handed to the caller, the writer goes on
            if not isinstance(exc, StoreError):
                exc = sqlite_error(self.path, exc, getattr(job.fn, "__name__", "a store call").strip("_"))
            outcome = (job, None, exc)
        self._deliver([outcome])

    def _commit_group(self, group: list[_Batch]) -> None:
        conn = self._conn
        errors: list[StoreError | None] = [None] * len(group)
        doomed: BaseException | None = None
        if conn is None:
            doomed = sqlite3.OperationalError("store is closed")
        else:
            try:
                conn.execute("BEGIN IMMEDIATE")
            except Exception as exc:  # noqa: BLE001
                doomed = exc
        if doomed is None:
            for i, batch in enumerate(group):
                try:
                    conn.execute("SAVEPOINT batch")
                    for sql, params in batch.stmts:
                        conn.execute(sql, params)
                    conn.execute("RELEASE batch")
                except Exception as exc:  # noqa: BLE001
                    if dooms_transaction(exc) or not conn.in_transaction:
                        doomed = exc
                        break
                    try:
                        conn.execute("ROLLBACK TO batch")  # this batch's statements only
                        conn.execute("RELEASE batch")
                    except Exception as again:  # noqa: BLE001
                        doomed = again
                        break
                    errors[i] = sqlite_error(self.path, exc, f"apply of {batch.count} op(s); rolled back, "
                                             "nothing written", where=batch.view.where)
            if doomed is None:
                try:
                    conn.execute("COMMIT")
                except Exception as exc:  # noqa: BLE001
                    doomed = exc
        if doomed is not None:
            # SQLite rolls back by itself after some errors (SQLITE_FULL, IOERR...); otherwise
            # do it here, so the connection is clean for the callers' retries.
            try:
                if conn is not None and conn.in_transaction:
                    conn.execute("ROLLBACK")
            except sqlite3.Error:
                pass
            errors = [sqlite_error(self.path, doomed, f"group commit of {len(group)} batch(es) (this one: "
                                   f"{b.count} op(s)); rolled back, nothing written", where=b.view.where)
                      for b in group]
        outcomes = []
        with self._lock:
            if doomed is None:
                self._commits += 1
                self._largest_group = max(self._largest_group, len(group))
            else:
                self._group_failures += 1
            for batch, error in zip(group, errors):
                if error is None:
                    self._batches += 1
                else:
                    self._batch_failures += doomed is None
                    self._last_error = str(error)
                outcomes.append((batch, None, error))
            if doomed is None and not any(errors):
                self._last_error = None
        for batch, error in zip(group, errors):
            if batch.internal:
                continue
            if error is None:
                batch.view._counters.committed(batch.effects)
            else:
                batch.view._counters.failed(error)
        self._deliver(outcomes)

    @staticmethod
    def _deliver(outcomes: list[tuple[Any, Any, BaseException | None]]) -> None:
        by_loop: dict[asyncio.AbstractEventLoop, list] = {}
        for job, result, error in outcomes:
            by_loop.setdefault(job.loop, []).append((job.future, result, error))
        for loop, items in by_loop.items():
            try:
                loop.call_soon_threadsafe(_settle, items)
            except RuntimeError:
                pass  # that loop is closed: nobody is waiting any more

    def _load_sync(self, view: "StationStore") -> dict:
        conn = self._require_conn(view.where)
        try:
            return read_all(conn, self.path, STATEMENTS, (view.station,))
        except sqlite3.Error as exc:
            raise sqlite_error(self.path, exc, "load", where=view.where) from None

    # ------------------------------------------------------------------ diagnostics
    def summary(self) -> dict:
        """Counts for diagnostics; never touches SQLite. ``commits`` is one WAL fsync each:
        ``commits / batches`` is what group commit saves; ``queued``: jobs (batches, loads...)
        waiting for the writer thread, not counting the group it is committing."""
        with self._lock:
            return {"path": str(self.path), "schema_version": SCHEMA_VERSION,
                    "open": not self._closed and self._dead is None, "broken": self._broken,
                    "views_open": self._views_open, "queued": self._jobs.qsize(), "commits": self._commits, "batches": self._batches,
                    "batch_failures": self._batch_failures, "group_failures": self._group_failures,
                    "largest_group": self._largest_group, "imports": self._imports,
                    "last_error": self._last_error}

    # ------------------------------------------------------------------ twin queue --station
    @staticmethod
    def snapshot(data_dir: Path, station: str) -> tuple[dict, Path]:
        """Read one station of the fleet whose data dir is ``data_dir``, without a running
        fleet (for ``twin queue --station``): read-only (``mode=ro``), safe while the fleet
        runs. Returns the data in the shape of ``load()`` and the file it was read from: the
        fleet's store, or the member's own twin.db that an earlier fleet version left and this
        one has not imported yet. ValueError for an id that cannot be a station's
        (:func:`check_station`)."""
        check_station(station)
        data_dir = Path(data_dir)
        path = data_dir / FLEET_DB
        legacy = data_dir / station / LEGACY_DB if station and "/" not in station and station not in (".", "..") else None
        try:
            has_fleet_db = path.is_file()
            has_legacy = legacy is not None and legacy.is_file()
            is_single = (data_dir / LEGACY_DB).exists()
        except OSError as exc:
            raise StoreError(f"{path}: cannot read: {exc}", path=path) from None
        if not has_fleet_db:
            if is_single:
                raise StoreError(f"{data_dir}: a single twin's data dir (it holds {LEGACY_DB}): --station is for "
                                 "a fleet's data dir; leave it out", path=path)
            if has_legacy:
                return Store.snapshot(legacy), legacy
            raise StoreError(f"{data_dir}: not a fleet's data dir (no {FLEET_DB}; has the fleet run with this "
                             "--data-dir?)", path=path)
        try:
            conn = open_snapshot_connection(path) if path.stat().st_size else None
        except OSError as exc:
            raise StoreError(f"{path}: cannot read: {exc}", path=path) from None
        try:
            if conn is None or check_identity(conn, path, **IDENTITY) == 0:
                known: list[str] = []
                count = 0
            else:
                if conn.execute("SELECT 1 FROM stations WHERE station = ?", (station,)).fetchone():
                    return read_all(conn, path, STATEMENTS, (station,)), path
                count = conn.execute("SELECT count(*) FROM stations").fetchone()[0]
                known = [r[0] for r in conn.execute("SELECT station FROM stations ORDER BY station LIMIT 5")]
        except sqlite3.Error as exc:
            raise read_error(path, exc) from None
        finally:
            if conn is not None:
                conn.close()
        if has_legacy:  # a member that has not started since the upgrade: its own file is still its store
            return Store.snapshot(legacy), legacy
        listed = ", ".join(known) + (", …" if count > len(known) else "")
        raise StoreError(f"{path}: no station {station!r} in this fleet's store ({count} station(s)"
                         + (f": {listed}" if known else "") + ")", path=path)


def _file_identity(path: Path, empty_is_none: bool = False) -> list[int] | None:
    """[size, mtime_ns, inode] of ``path``, None when it is absent (or empty, if asked)."""
    try:
        st = path.stat()
    except FileNotFoundError:
        return None
    if empty_is_none and st.st_size == 0:
        return None
    return [st.st_size, st.st_mtime_ns, st.st_ino]


def _legacy_identity(legacy: Path, with_db: bool) -> dict[str, list[int] | None]:
    # The -wal too: a member killed with unsent transactions leaves them there, the main file untouched.
    wal = {"wal": _file_identity(wal_path(legacy), empty_is_none=True)}
    return {"db": _file_identity(legacy), **wal} if with_db else wal


def _import_record(value: str | None) -> tuple[str | None, dict | None]:
    """``stations.imported_from``: the imported file's path (relative to the fleet's dir) and its
    identity, as JSON; a bare path from before identities were recorded."""
    if value is None:
        return None, None
    try:
        record = json.loads(value)
    except ValueError:
        return value, None
    if isinstance(record, dict) and isinstance(record.get("path"), str):
        return record["path"], record
    return value, None


def _read_legacy(legacy: Path) -> dict[str, list[tuple]]:
    """The raw rows of a single twin's store, read-only; refuses (untouched) a file that is not
    a healthy one, exactly as Store.open would."""
    rows: dict[str, list[tuple]] = {"kv": [], "transactions": [], "queue": [], "discarded": []}
    if legacy.stat().st_size == 0:
        return rows  # created, never written
    validate_existing(legacy)
    conn = open_snapshot_connection(legacy)
    try:
        version = check_identity(conn, legacy)
        if version == 0:
            return rows
        if version != SINGLE_SCHEMA_VERSION:
            raise refusal(legacy, f"schema version {version}: this version imports version {SINGLE_SCHEMA_VERSION} only")
        conn.execute("BEGIN")
        try:
            rows["kv"] = conn.execute("SELECT ns, key, value FROM kv").fetchall()
            rows["transactions"] = conn.execute("SELECT local_id, record FROM transactions").fetchall()
            rows["queue"] = conn.execute("SELECT seq, entry FROM queue").fetchall()
            rows["discarded"] = conn.execute("SELECT seq, entry, reason, discarded_at FROM discarded").fetchall()
        finally:
            if conn.in_transaction:
                conn.execute("COMMIT")
    except sqlite3.Error as exc:
        raise read_error(legacy, exc) from None
    finally:
        conn.close()
    return rows


class StationStore:
    """One station's view of a :class:`SharedStore`: what the runtime writes through, with the
    interface of :class:`twin.store.Store` (``apply``, ``load``, ``close``, ``summary``, ``path``).
    ``close()`` closes this view only."""

    def __init__(self, shared: SharedStore, station: str):
        self.shared = shared
        self.station = station
        self.path = shared.path
        self.where = f"{shared.path} [station {station}]"
        self._counters = StoreCounters()
        self._closed = False

    def _check_open(self) -> None:
        if self._closed or self.shared._closed or self.shared._dead is not None:
            raise StoreError(f"{self.where}: {self.shared._dead or 'store is closed'}", path=self.path)

    async def apply(self, ops: list[tuple]) -> None:
        """Apply ``ops`` atomically; durable when this returns (its group's COMMIT returned).

        As :meth:`twin.store.Store.apply`: BadOpsError before anything is queued for a malformed
        op; a retryable StoreError, with nothing of the batch applied, when the group it was
        committed with failed (disk full, I/O error); a non-retryable one when SQLite refused
        this batch alone. Idempotent ops: retrying, or being cancelled while waiting, is safe.
        """
        self._check_open()
        stmts, effects = compile_batch(self.path, ops, STATEMENTS, (self.station,), where=self.where)
        if not stmts:
            return
        await self.shared._submit(self, stmts, effects, len(ops))

    async def load(self) -> dict:
        """This station's data, in the shape of :meth:`twin.store.Store.load`."""
        self._check_open()
        return await self.shared._call(self.shared._load_sync, self)

    async def close(self) -> None:
        """Close this view once its batches already submitted are committed; the shared store
        stays open for the other members."""
        if self._closed:
            return
        self._closed = True
        self.shared._views_open -= 1
        if self.shared._closed or self.shared._dead is not None:
            return
        try:
            await self.shared._call(lambda: None)  # a barrier: the queue is FIFO
        except StoreError:
            if self.shared._dead is None:
                raise
            # The writer is gone: what this view submitted has been answered (failed); nothing to wait for.

    def summary(self) -> dict:
        """The single store's summary keys (this station's counts), plus the station and the
        shared store's group-commit counters. Never touches SQLite."""
        return {"path": str(self.path), "station": self.station, "schema_version": SCHEMA_VERSION,
                "open": not (self._closed or self.shared._closed or self.shared._dead is not None),
                **self._counters.summary(),
                "shared": self.shared.summary()}


__all__ = ["FLEET_DB", "MAX_GROUP", "MAX_QUEUED", "SharedStore", "StationStore", "check_station"]
