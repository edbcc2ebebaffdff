"""The durable SQLite store: a dumb map the core writes through ``Persist(ops)``.

Contract (docs/architecture.md, "Store"): the core owns the data shapes and assigns
the ids; the runtime awaits ``store.apply(ops)`` *before* it executes the actions
that follow (the contactor closes only once the transaction and its
StartTransaction are on disk). One ``apply`` is one SQLite transaction.

Why these settings (issue 3, "Crash and power loss"):

* ``journal_mode=WAL`` + ``synchronous=FULL``: a commit returns only after the WAL
  frames are fsync'ed, so an acknowledged batch survives kill -9 *and* power loss,
  and readers (``twin queue`` via :meth:`Store.snapshot`) never block the writer.
* ``BEGIN IMMEDIATE``: the write lock is taken up front, so a batch never fails
  half-way on a lock upgrade.
* Every op is idempotent (upserts, deletes of what may already be gone): a batch
  whose COMMIT reported an I/O error may in fact have reached the WAL, and the
  caller retries it — the retry must not fail or double anything.
* A file that is not a healthy ocpp-twin store (random bytes, truncated, another
  application's database, a newer schema) is refused with a :class:`StoreError`
  and left byte-identical: it may be the only copy of unsent transactions, so we
  refuse, never "repair" by recreating it.

All blocking SQLite calls run in one dedicated worker thread that owns the
connection; ``apply`` calls run in submission order (a single-thread executor is a
FIFO queue).

The pieces a store of another table layout needs (twin.fleet.store, one database for a
fleet's stations) are public: :func:`compile_batch` and :func:`read_all` parameterised by
a :class:`Statements` set and a scope, :func:`open_connection`, :func:`check_identity`,
:func:`sqlite_error` and :class:`StoreCounters`. They carry the guarantees above, so a
second store built on them cannot drift from this one.
"""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
import threading
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, NamedTuple
from urllib.parse import quote

# "OCPT": PRAGMA application_id marks the file as ours, so pointing the data dir at
# some other SQLite database is refused instead of being written into.
APPLICATION_ID = 0x4F435054
SCHEMA_VERSION = 1
# "OCPF": a fleet's shared database (twin.fleet.store). Known here so that each kind of
# file refuses the other by name instead of as "some other application's database".
FLEET_APPLICATION_ID = 0x4F435046
KNOWN_APPLICATION_IDS = {
    APPLICATION_ID: "a single twin's store (twin.db)",
    FLEET_APPLICATION_ID: "a fleet's shared store (fleet.db; read it with `twin queue --station ID`)",
}

# MIGRATIONS[v] brings a store from version v-1 to v. Each step runs in its own
# transaction together with the PRAGMA user_version bump, so a crash mid-migration
# leaves the previous version intact. Append only: never edit a released step.
MIGRATIONS: dict[int, tuple[str, ...]] = {
    1: (
        f"PRAGMA application_id = {APPLICATION_ID}",
        # Keys keep their Python type (no column affinity): the core may key a
        # namespace by connector id (int) or by idTag (str).
        "CREATE TABLE kv (ns TEXT NOT NULL, key NOT NULL, value TEXT NOT NULL,"
        " PRIMARY KEY (ns, key)) WITHOUT ROWID",
        "CREATE TABLE transactions (local_id PRIMARY KEY, record TEXT NOT NULL) WITHOUT ROWID",
        "CREATE TABLE queue (seq INTEGER PRIMARY KEY, entry TEXT NOT NULL)",
        "CREATE TABLE discarded (seq INTEGER PRIMARY KEY, entry TEXT NOT NULL,"
        " reason TEXT NOT NULL, discarded_at TEXT NOT NULL)",
    ),
}

_SQL_KV_PUT = "INSERT INTO kv (ns, key, value) VALUES (?, ?, ?) ON CONFLICT (ns, key) DO UPDATE SET value = excluded.value"
_SQL_KV_DEL = "DELETE FROM kv WHERE ns = ? AND key = ?"
_SQL_KV_CLEAR = "DELETE FROM kv WHERE ns = ?"
_SQL_TX_PUT = "INSERT INTO transactions (local_id, record) VALUES (?, ?) ON CONFLICT (local_id) DO UPDATE SET record = excluded.record"
_SQL_Q_PUT = "INSERT INTO queue (seq, entry) VALUES (?, ?) ON CONFLICT (seq) DO UPDATE SET entry = excluded.entry"
_SQL_Q_DEL = "DELETE FROM queue WHERE seq = ?"
# q_discard = these two statements. A seq no longer queued (already discarded by a
# batch that is being retried) moves nothing: the op stays idempotent.
_SQL_Q_DISCARD_COPY = (
    "INSERT OR REPLACE INTO discarded (seq, entry, reason, discarded_at)"
    " SELECT seq, entry, ?, ? FROM queue WHERE seq = ?"
)



class Statements(NamedTuple):
    """The SQL behind every op and behind :func:`read_all`, for one table layout.

    Every statement takes the scope's parameters first (none for a single twin's store, the
    station id for a fleet's), then the op's; a layout whose parameters are not in that
    order numbers them (``?1``, ``?2``...).
    """

    kv_put: str
    kv_del: str
    kv_clear: str
    tx_put: str
    q_put: str
    q_del: str
    q_discard_copy: str  # parameters: reason, discarded_at, seq
    select_kv: str  # -> ns, key, value ordered by ns, key
    select_transactions: str  # -> local_id, record
    select_queue: str  # -> seq, entry ordered by seq
    select_discarded: str  # -> seq, entry, reason, discarded_at ordered by seq


SINGLE_STATEMENTS = Statements(
    kv_put=_SQL_KV_PUT,
    kv_del=_SQL_KV_DEL,
    kv_clear=_SQL_KV_CLEAR,
    tx_put=_SQL_TX_PUT,
    q_put=_SQL_Q_PUT,
    q_del=_SQL_Q_DEL,
    q_discard_copy=_SQL_Q_DISCARD_COPY,
    select_kv="SELECT ns, key, value FROM kv ORDER BY ns, key",
    select_transactions="SELECT local_id, record FROM transactions",
    select_queue="SELECT seq, entry FROM queue ORDER BY seq",
    select_discarded="SELECT seq, entry, reason, discarded_at FROM discarded ORDER BY seq",
)

_INT64 = (-(2**63), 2**63 - 1)


class StoreError(Exception):
    """The store cannot do what was asked; the message names the file and the problem.

    ``retryable`` is True when the same call may succeed later (disk full, I/O error,
    database busy) and False when retrying cannot help (bad ops, corrupted or foreign
    file, newer schema, closed store).
    """

    def __init__(self, message: str, *, path: Path | None = None, retryable: bool = False):
        super().__init__(message)
        self.path = path
        self.retryable = retryable


class BadOpsError(StoreError):
    """A batch was refused before touching the database: an op is malformed."""


def _utc_now_text() -> str:
    # The store is an adapter (not the pure core), so it may read the clock: only to
    # stamp discarded_at when the core did not pass one.
    now = datetime.now(timezone.utc)
    return now.strftime("%Y-%m-%dT%H:%M:%S.") + f"{now.microsecond // 1000:03d}Z"


# ---------------------------------------------------------------------------
# Turning ops into statements (runs in the caller's thread: pure, no SQLite)
# ---------------------------------------------------------------------------

def _json(value: Any, what: str) -> str:
    try:
        # allow_nan=False: NaN/Infinity are not JSON and would not round-trip to a CSMS.
        return json.dumps(value, separators=(",", ":"), allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{what} is not JSON-serialisable ({exc})") from None


def _text(value: Any, what: str) -> str:
    if not isinstance(value, str) or not value:
        raise ValueError(f"{what} must be a non-empty str, got {value!r}")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError(f"{what} is not valid UTF-8 text: {value!r}") from None
    return value


def _int64(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not _INT64[0] <= value <= _INT64[1]:
        raise ValueError(f"{what} must be a 64-bit int, got {value!r}")
    return value


def _key(value: Any, what: str) -> int | str:
    # A key may be any text, the empty string included: the core keys some namespaces by
    # values a CSMS chose (an idTag may legally be ""), and a key the store refused would
    # lose the whole batch with it.
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise ValueError(f"{what} is not valid UTF-8 text: {value!r}") from None
        return value
    return _int64(value, f"{what} (str or int)")


def _dict(value: Any, what: str) -> dict:
    if not isinstance(value, dict):
        raise ValueError(f"{what} must be a dict, got {type(value).__name__}")
    return value


# A compiled op: SQL statements with their parameters, plus how to update the
# in-memory counters behind summary() once the batch is committed. _compile_op names
# the statements (fields of Statements); compile_batch turns the names into a layout's SQL.
Stmt = tuple[str, tuple]
Effect = tuple[str, Any, Any]


def _compile_op(op: Any) -> tuple[list[Stmt], Effect | None]:
    if not isinstance(op, (tuple, list)) or not op:
        raise ValueError(f"op must be a tuple like ('q_put', seq, entry), got {op!r}")
    name, args = op[0], tuple(op[1:])

    def arity(*allowed: int) -> None:
        if len(args) not in allowed:
            want = " or ".join(str(n) for n in allowed)
            raise ValueError(f"{name!r} takes {want} argument(s), got {len(args)}")

    if name == "kv_put":
        arity(3)
        ns, key = _text(args[0], "namespace"), _key(args[1], "key")
        return [("kv_put", (ns, key, _json(args[2], "value")))], None
    if name == "kv_del":
        arity(2)
        return [("kv_del", (_text(args[0], "namespace"), _key(args[1], "key")))], None
    if name == "kv_clear":
        arity(1)
        return [("kv_clear", (_text(args[0], "namespace"),))], None
    if name == "tx_put":
        arity(2)
        local_id = _key(args[0], "local_id")
        record = _json(_dict(args[1], "record"), "record")
        return [("tx_put", (local_id, record))], ("tx", local_id, None)
    if name == "q_put":
        arity(2)
        seq = _int64(args[0], "seq")
        entry = _dict(args[1], "entry")
        return [("q_put", (seq, _json(entry, "entry")))], ("q_put", seq, entry.get("created_at"))
    if name == "q_del":
        arity(1)
        seq = _int64(args[0], "seq")
        return [("q_del", (seq,))], ("q_del", seq, None)
    if name == "q_discard":
        # Optional 4th element: discarded_at, for a core that wants its own `now`.
        arity(2, 3)
        seq = _int64(args[0], "seq")
        reason = _text(args[1], "reason")
        at = _text(args[2], "discarded_at") if len(args) == 3 else _utc_now_text()
        return [("q_discard_copy", (reason, at, seq)), ("q_del", (seq,))], ("q_discard", seq, None)
    raise ValueError(f"unknown op {name!r} (known: kv_put kv_del kv_clear tx_put q_put q_del q_discard)")


def invalid_ops(ops: list) -> list[tuple[int, str]]:
    """The ops of a batch that :meth:`Store.apply` would refuse, as (index, problem). Pure."""
    bad: list[tuple[int, str]] = []
    for index, op in enumerate(ops):
        try:
            _compile_op(op)
        except ValueError as exc:
            bad.append((index, str(exc)))
    return bad


def compile_batch(path: Path, ops: Any, statements: Statements = SINGLE_STATEMENTS, scope: tuple = (),
                  *, where: str | None = None) -> tuple[list[Stmt], list[Effect]]:
    """The SQL statements of a batch for the layout ``statements``, each with ``scope``'s
    parameters first, and the effects on :class:`StoreCounters`. Pure (no SQLite), so it runs
    in the caller's thread; a malformed op raises :class:`BadOpsError` naming ``where``
    (default: ``path``) before anything touches the database."""
    where = str(path) if where is None else where
    if not isinstance(ops, (list, tuple)):
        raise BadOpsError(f"{where}: ops must be a list of tuples, got {type(ops).__name__}", path=path)
    stmts: list[Stmt] = []
    effects: list[Effect] = []
    for index, op in enumerate(ops):
        try:
            op_stmts, effect = _compile_op(op)
        except ValueError as exc:
            shown = repr(op)
            shown = shown if len(shown) <= 120 else shown[:117] + "..."
            raise BadOpsError(
                f"{where}: batch refused, nothing written: op #{index} {shown}: {exc}", path=path
            ) from None
        stmts.extend((getattr(statements, name), scope + params) for name, params in op_stmts)
        if effect is not None:
            effects.append(effect)
    return stmts, effects


# ---------------------------------------------------------------------------
# SQLite helpers shared by the worker connection and snapshot()
# ---------------------------------------------------------------------------

_TRANSIENT = {"SQLITE_FULL", "SQLITE_IOERR", "SQLITE_BUSY", "SQLITE_LOCKED", "SQLITE_NOMEM", "SQLITE_CANTOPEN", "SQLITE_PROTOCOL"}
_CORRUPT = {"SQLITE_NOTADB", "SQLITE_CORRUPT"}


def _errname(exc: BaseException) -> str:
    return getattr(exc, "sqlite_errorname", None) or type(exc).__name__


def _primary(errname: str) -> str:
    # SQLITE_IOERR_WRITE -> SQLITE_IOERR, SQLITE_CORRUPT_VTAB -> SQLITE_CORRUPT ...
    for base in _TRANSIENT | _CORRUPT | {"SQLITE_READONLY"}:
        if errname == base or errname.startswith(base + "_"):
            return base
    return errname


def refusal(path: Path, problem: str) -> StoreError:
    """The non-retryable refusal of a file that is not a healthy store: it is left untouched."""
    return StoreError(
        f"{path}: {problem}; refusing to open it. The file was left untouched (it may hold "
        "unsent transactions): move it aside to start with an empty store, or restore a backup.",
        path=path,
    )


def read_error(path: Path, exc: sqlite3.Error) -> StoreError:
    """The StoreError of a failed read: a refusal for a damaged file, else retryable."""
    name = _errname(exc)
    if _primary(name) in _CORRUPT:
        return refusal(path, f"not a valid SQLite database, or corrupted ({exc})")
    return StoreError(f"{path}: cannot read: {exc} ({name})", path=path, retryable=True)


def check_identity(conn: sqlite3.Connection, path: Path, *, application_id: int | None = None,
                   schema_version: int | None = None, kind: str = "ocpp-twin store") -> int:
    """Return the schema version of the store at ``conn``; refuse foreign or newer files.

    ``application_id``/``schema_version`` default to a single twin's store (read when called,
    so a test may raise SCHEMA_VERSION); ``kind`` names the expected file in the refusal."""
    application_id = APPLICATION_ID if application_id is None else application_id
    schema_version = SCHEMA_VERSION if schema_version is None else schema_version
    app_id = conn.execute("PRAGMA application_id").fetchone()[0]
    version = conn.execute("PRAGMA user_version").fetchone()[0]
    tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_schema WHERE type = 'table' ORDER BY name")]
    if app_id == 0 and version == 0 and not tables:
        return 0  # an empty SQLite file: a brand-new store
    if app_id != application_id:
        known = KNOWN_APPLICATION_IDS.get(app_id)
        raise refusal(path, f"not an {kind} (application_id={app_id:#x}, tables: {', '.join(tables) or 'none'})"
                       + (f": it is {known}" if known else ""))
    if version > schema_version:
        raise refusal(
            path,
            f"written by a newer ocpp-twin (schema version {version}; this version reads up to "
            f"{schema_version}) — upgrade ocpp-twin instead",
        )
    return version


def _loads(text: str, where: str, path: Path) -> Any:
    try:
        return json.loads(text)
    except (TypeError, ValueError) as exc:
        raise StoreError(f"{path}: corrupted row in {where}: {exc}", path=path) from None


def read_all(conn: sqlite3.Connection, path: Path, statements: Statements = SINGLE_STATEMENTS,
             scope: tuple = ()) -> dict:
    """Everything in the store (of ``scope``), in the shape of Store.load(); one read transaction."""
    conn.execute("BEGIN")
    try:
        kv: dict[str, dict] = {}
        for ns, key, value in conn.execute(statements.select_kv, scope):
            kv.setdefault(ns, {})[key] = _loads(value, f"kv {ns}/{key}", path)
        transactions = {
            local_id: _loads(record, f"transactions {local_id!r}", path)
            for local_id, record in conn.execute(statements.select_transactions, scope)
        }
        queue = [
            {**_loads(entry, f"queue seq {seq}", path), "seq": seq}
            for seq, entry in conn.execute(statements.select_queue, scope)
        ]
        discarded = [
            {**_loads(entry, f"discarded seq {seq}", path), "seq": seq, "reason": reason, "discarded_at": at}
            for seq, entry, reason, at in conn.execute(statements.select_discarded, scope)
        ]
    finally:
        if conn.in_transaction:
            conn.execute("COMMIT")
    return {"kv": kv, "transactions": transactions, "queue": queue, "discarded": discarded}


def empty() -> dict:
    return {"kv": {}, "transactions": {}, "queue": [], "discarded": []}


def fsync_dir(directory: Path) -> None:
    # A new file is durable only once its directory entry is: without this, a power
    # cut right after the first commit could lose the whole database file.
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def wal_path(path: Path) -> Path:
    """The -wal file SQLite keeps beside ``path``."""
    return Path(str(path) + "-wal")


def _ro_uri(path: Path, *, immutable: bool = False) -> str:
    # immutable=1 reads the main file alone and creates no -wal/-shm beside it; it is
    # only right when no -wal exists (otherwise committed data may sit in the WAL).
    return "file:" + quote(str(path.absolute())) + ("?mode=ro&immutable=1" if immutable else "?mode=ro")


def validate_existing(path: Path, **identity: Any) -> None:
    """Check an existing file read-only (mode=ro never writes, checkpoints or repairs);
    ``identity``: what :func:`check_identity` expects (default: a single twin's store).

    Without a -wal beside it (clean shutdown, or a file that is not ours at all) the
    check opens it immutable, so a refused file does not even gain sidecar files.
    """
    try:
        conn = sqlite3.connect(_ro_uri(path, immutable=not wal_path(path).exists()), uri=True, isolation_level=None)
    except sqlite3.Error as exc:
        raise read_error(path, exc) from None
    try:
        check_identity(conn, path, **identity)
        # quick_check reads every page: it catches truncation and torn pages now, at
        # startup, rather than as a failed apply() in the middle of a transaction.
        problems = [r[0] for r in conn.execute("PRAGMA quick_check(5)")]
        if problems != ["ok"]:
            raise refusal(path, "corrupted (integrity check: " + "; ".join(problems) + ")")
    except sqlite3.Error as exc:
        raise read_error(path, exc) from None
    finally:
        conn.close()


def open_snapshot_connection(path: Path) -> sqlite3.Connection:
    """A read-only connection for a snapshot (``mode=ro``: safe beside a running writer)."""
    try:
        conn = sqlite3.connect(_ro_uri(path), uri=True, isolation_level=None)
    except sqlite3.Error as exc:
        raise read_error(path, exc) from None
    try:
        conn.execute("PRAGMA schema_version").fetchone()  # the first read really opens the file
        return conn
    except sqlite3.Error as exc:
        conn.close()
        # mode=ro still has to create -shm/-wal when the station is stopped. A user who
        # cannot write the data dir can read a cleanly closed store (no -wal: all of it
        # is in the main file) as immutable instead.
        if wal_path(path).exists() or _primary(_errname(exc)) not in {"SQLITE_CANTOPEN", "SQLITE_READONLY"}:
            raise read_error(path, exc) from None
    return sqlite3.connect(_ro_uri(path, immutable=True), uri=True, isolation_level=None)


# ---------------------------------------------------------------------------
# Opening a store file, mapping SQLite errors, the counters behind summary()
# ---------------------------------------------------------------------------

def sqlite_error(path: Path, exc: BaseException, doing: str, *, where: str | None = None) -> StoreError:
    """The StoreError for ``exc`` raised while ``doing``: disk full, I/O error, busy... are
    retryable (the same call may succeed later); corruption, read-only, bugs are not.
    ``where`` prefixes the message (default: ``path``)."""
    where = str(path) if where is None else where
    if not isinstance(exc, sqlite3.Error):
        return StoreError(f"{where}: unexpected error during {doing} ({type(exc).__name__}: {exc})", path=path)
    name = _errname(exc)
    base = _primary(name)
    if base == "SQLITE_FULL":
        text = "disk full"
    elif base == "SQLITE_IOERR":
        text = "I/O error"
    elif base in _CORRUPT:
        text = "database corrupted"
    elif base == "SQLITE_READONLY":
        text = "database is read-only"
    else:
        text = "SQLite error"
    return StoreError(f"{where}: {text} during {doing} ({name}: {exc})", path=path, retryable=base in _TRANSIENT)


def dooms_transaction(exc: BaseException) -> bool:
    """True when ``exc``, raised by a statement, leaves the enclosing transaction unusable:
    SQLite may already have rolled it back (SQLITE_FULL, IOERR, NOMEM, BUSY...: the
    transient errors) or the file is damaged. A constraint or a too-big value is not: rolling
    back to a savepoint undoes that statement's batch alone, and so does an exception raised
    before SQLite ran the statement (binding a parameter); the caller still checks
    ``conn.in_transaction``, since any error may have ended the transaction."""
    if not isinstance(exc, sqlite3.Error):
        return False
    base = _primary(_errname(exc))
    return base in _TRANSIENT or base in _CORRUPT or base == "SQLITE_READONLY"


def migrate(conn: sqlite3.Connection, path: Path, migrations: dict[int, tuple[str, ...]], **identity: Any) -> int:
    """Bring the store at ``conn`` to ``identity['schema_version']`` (default: a single twin's
    SCHEMA_VERSION), one step per transaction; returns the version reached."""
    target = identity.get("schema_version")
    target = SCHEMA_VERSION if target is None else target
    while True:
        conn.execute("BEGIN IMMEDIATE")
        try:
            version = check_identity(conn, path, **identity)
            if version == target:
                conn.execute("COMMIT")
                return version
            for statement in migrations[version + 1]:
                conn.execute(statement)
            conn.execute(f"PRAGMA user_version = {version + 1}")
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise


def open_connection(path: Path, migrations: dict[int, tuple[str, ...]] | None = None, *,
                    cache_kib: int | None = None, **identity: Any) -> sqlite3.Connection:
    """Open (or create) the store file at ``path`` for writing: refuse what is not a healthy
    store of ``identity`` (default: a single twin's, with MIGRATIONS), switch to WAL +
    synchronous=FULL, migrate, and fsync the directory of a new file. Raises StoreError
    (OSError from the filesystem checks passes through: the caller says what it was doing)."""
    migrations = MIGRATIONS if migrations is None else migrations
    if path.is_dir():
        raise StoreError(f"{path}: is a directory, not a store file", path=path)
    directory = path.parent
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise StoreError(f"{path}: cannot create directory {directory}: {exc.strerror or exc}", path=path) from None
    # SQLite in WAL mode creates <file>-wal and <file>-shm beside the database, so
    # the directory itself must be writable, not only the file.
    if not os.access(directory, os.W_OK | os.X_OK):
        raise StoreError(f"{path}: directory {directory} is not writable (read-only filesystem or permissions)", path=path)
    exists = path.exists()
    if not exists and wal_path(path).exists() and wal_path(path).stat().st_size > 0:
        # SQLite would replay this WAL into a fresh file: refuse rather than resurrect
        # half a database; the WAL may be all that is left of unsent transactions.
        raise StoreError(
            f"{path}: the database file is missing but {wal_path(path).name} is there; refusing to "
            "start an empty store over it (restore the database file, or move the WAL aside)",
            path=path,
        )
    if exists and not os.access(path, os.R_OK | os.W_OK):
        raise StoreError(f"{path}: file is not readable and writable by this user", path=path)
    if exists and path.stat().st_size > 0:
        validate_existing(path, **identity)
    try:
        conn = sqlite3.connect(str(path), isolation_level=None, cached_statements=64)
    except sqlite3.Error as exc:
        raise StoreError(f"{path}: cannot open: {exc} ({_errname(exc)})", path=path) from None
    try:
        mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        if mode != "wal":
            raise StoreError(f"{path}: the filesystem does not support WAL mode (journal_mode={mode})", path=path)
        conn.execute("PRAGMA synchronous = FULL")
        # A reader (twin queue) never blocks a WAL writer; this only covers the
        # brief exclusive moments of WAL recovery by another process.
        conn.execute("PRAGMA busy_timeout = 5000")
        if cache_kib is not None:
            conn.execute(f"PRAGMA cache_size = -{int(cache_kib)}")
        migrate(conn, path, migrations, **identity)
        if not exists:
            fsync_dir(directory)
    except sqlite3.Error as exc:
        conn.close()
        raise sqlite_error(path, exc, "open") from None
    except BaseException:
        conn.close()
        raise
    return conn


class StoreCounters:
    """What ``summary()`` reports, kept in memory: summary() is called from the event loop
    and must never touch SQLite. Written by the thread that commits, under ``lock``."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.queue_created: dict[int, Any] = {}
        self.tx_ids: set = set()
        self.discarded = 0
        self.applies = 0
        self.failures = 0
        self.last_error: str | None = None

    def reset(self, queue_created: dict[int, Any], tx_ids: set, discarded: int) -> None:
        """The state of a store just opened: {seq: created_at}, the transaction ids, how many discarded."""
        with self.lock:
            self.queue_created, self.tx_ids, self.discarded = queue_created, tx_ids, discarded

    def committed(self, effects: list[Effect]) -> None:
        """A batch with these effects is on disk."""
        with self.lock:
            self.applies += 1
            self.last_error = None
            for kind, key, created_at in effects:
                if kind == "q_put":
                    self.queue_created[key] = created_at
                elif kind == "q_del":
                    self.queue_created.pop(key, None)
                elif kind == "q_discard":
                    if self.queue_created.pop(key, _MISSING) is not _MISSING:
                        self.discarded += 1
                else:
                    self.tx_ids.add(key)

    def failed(self, error: StoreError) -> None:
        with self.lock:
            self.failures += 1
            self.last_error = str(error)

    def summary(self) -> dict:
        """``queue_oldest_*`` describe the head of the queue (lowest seq: the message
        waiting longest), not the smallest ``created_at`` — a Pi without RTC may have
        stamped early entries before NTP set the clock."""
        with self.lock:
            head = min(self.queue_created) if self.queue_created else None
            return {
                "queue_length": len(self.queue_created),
                "queue_oldest_seq": head,
                "queue_oldest_created_at": self.queue_created[head] if head is not None else None,
                "transactions": len(self.tx_ids),
                "discarded": self.discarded,
                "applies": self.applies,
                "apply_failures": self.failures,
                "last_error": self.last_error,
            }


def queue_created_at(rows: Any, path: Path) -> dict[int, Any]:
    """{seq: created_at} of (seq, entry JSON) rows, for :meth:`StoreCounters.reset`."""
    queue = {}
    for seq, entry in rows:
        value = _loads(entry, f"queue seq {seq}", path)
        queue[seq] = value.get("created_at") if isinstance(value, dict) else None
    return queue


# ---------------------------------------------------------------------------
# The store
# ---------------------------------------------------------------------------

class Store:
    """Durable store; create with ``await Store.open(path)``."""

    def __init__(self, path: Path, executor: ThreadPoolExecutor):
        self.path = path
        self._executor = executor
        self._conn: sqlite3.Connection | None = None  # touched only in the worker thread
        self._closed = False
        self._schema_version = 0
        self._counters = StoreCounters()

    # -- lifecycle ---------------------------------------------------------

    @classmethod
    async def open(cls, path: Path) -> "Store":
        path = Path(path)
        executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="twin-store")
        store = cls(path, executor)
        try:
            await store._run(store._open_guarded)
        except BaseException:
            await store._run(store._close_sync)
            executor.shutdown(wait=False)
            raise
        return store

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            await self._run(self._close_sync)
        finally:
            self._executor.shutdown(wait=False)

    def _open_guarded(self) -> None:
        try:
            self._open_sync()
        except OSError as exc:  # stat, mkdir, fsync of the directory...
            raise StoreError(f"{self.path}: cannot open: {exc}", path=self.path, retryable=True) from None

    def _open_sync(self) -> None:
        # SCHEMA_VERSION and MIGRATIONS are read now, not at import: a test raises them.
        self._conn = conn = open_connection(self.path, MIGRATIONS, schema_version=SCHEMA_VERSION)
        self._schema_version = SCHEMA_VERSION
        try:
            self._init_mirrors(conn)
        except sqlite3.Error as exc:
            raise self._error(exc, "open") from None

    def _init_mirrors(self, conn: sqlite3.Connection) -> None:
        queue = queue_created_at(conn.execute("SELECT seq, entry FROM queue ORDER BY seq"), self.path)
        tx_ids = {r[0] for r in conn.execute("SELECT local_id FROM transactions")}
        discarded = conn.execute("SELECT count(*) FROM discarded").fetchone()[0]
        self._counters.reset(queue, tx_ids, discarded)

    def _close_sync(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()  # the last connection checkpoints the WAL into the main file

    # -- the worker thread ---------------------------------------------------

    def _run(self, fn: Callable[..., Any], *args: Any) -> "asyncio.Future[Any]":
        # Submitted synchronously, so calls execute in the order they were made.
        return asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    def _error(self, exc: BaseException, doing: str) -> StoreError:
        return sqlite_error(self.path, exc, doing)

    def _apply_sync(self, stmts: list[Stmt], effects: list[Effect], count: int) -> None:
        conn = self._conn
        if conn is None:
            raise StoreError(f"{self.path}: store is closed", path=self.path)
        try:
            conn.execute("BEGIN IMMEDIATE")
            for sql, params in stmts:
                conn.execute(sql, params)
            conn.execute("COMMIT")
        except Exception as exc:
            # SQLite rolls back by itself after some errors (SQLITE_FULL, IOERR...);
            # otherwise do it here, so the connection is clean for the retry.
            try:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
            except sqlite3.Error:
                pass
            error = self._error(exc, f"apply of {count} op(s); rolled back, nothing written")
            self._counters.failed(error)
            raise error from None
        self._counters.committed(effects)

    def _load_sync(self) -> dict:
        if self._conn is None:
            raise StoreError(f"{self.path}: store is closed", path=self.path)
        try:
            return read_all(self._conn, self.path)
        except sqlite3.Error as exc:
            raise self._error(exc, "load") from None

    # -- public API ------------------------------------------------------------

    async def apply(self, ops: list[tuple]) -> None:
        """Apply ``ops`` atomically in one SQLite transaction; durable when this returns.

        Raises :class:`BadOpsError` (nothing written) for a malformed op, and
        :class:`StoreError` with ``retryable=True`` for disk full / I/O errors, after
        which nothing of the batch is applied: keep the ops and call again later.
        Every op is idempotent, so re-applying a batch is always safe — which is also
        the answer for a caller cancelled while awaiting: the batch may or may not have
        been committed by the worker thread.
        """
        if self._closed:
            raise StoreError(f"{self.path}: store is closed", path=self.path)
        stmts, effects = compile_batch(self.path, ops)
        if not stmts:
            return
        await self._run(self._apply_sync, stmts, effects, len(ops))

    async def load(self) -> dict:
        """``{"kv": {ns: {key: value}}, "transactions": {local_id: record},
        "queue": [entry + {"seq"}] by seq, "discarded": [entry + {"seq", "reason", "discarded_at"}]}``."""
        if self._closed:
            raise StoreError(f"{self.path}: store is closed", path=self.path)
        return await self._run(self._load_sync)

    @staticmethod
    def snapshot(path: Path) -> dict:
        """Read the store at ``path`` without a running Store (for ``twin queue``).

        Synchronous and read-only (SQLite ``mode=ro``): safe while the station runs,
        since a WAL reader sees the last committed state and never blocks the writer.
        """
        path = Path(path)
        try:
            if not path.is_file():
                raise StoreError(f"{path}: no store file here (has the station run with this data dir?)", path=path)
            if path.stat().st_size == 0:
                return empty()
        except OSError as exc:
            raise StoreError(f"{path}: cannot read: {exc}", path=path) from None
        conn = open_snapshot_connection(path)
        try:
            if check_identity(conn, path) == 0:
                return empty()
            return read_all(conn, path)
        except sqlite3.Error as exc:
            raise read_error(path, exc) from None
        finally:
            conn.close()

    def summary(self) -> dict:
        """Counts for diagnostics and ``GET /api/state``; cheap, never touches SQLite
        (see :meth:`StoreCounters.summary`)."""
        return {"path": str(self.path), "schema_version": self._schema_version, "open": not self._closed,
                **self._counters.summary()}


_MISSING = object()
