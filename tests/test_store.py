"""twin/store.py on real SQLite files: ops, atomicity, ordering, refusal of bad files.

Crash-safety (SIGKILL) and disk-full/unwritable cases live in test_store_faults.py.
"""

from __future__ import annotations

import asyncio
import random
import sqlite3
import threading
from pathlib import Path

import pytest

from twin.store import APPLICATION_ID, SCHEMA_VERSION, BadOpsError, Store, StoreError

ENTRY = {
    "action": "MeterValues",
    "payload": {"connectorId": 1, "meterValue": [{"timestamp": "2026-05-09T07:35:25.000Z", "sampledValue": [{"value": "1234.5"}]}]},
    "tx_local_id": 7,
    "created_at": "2026-05-09T07:35:25.000Z",
    "attempts": 0,
    "next_attempt_at": None,
}


def entry(n: int, **extra) -> dict:
    return {**ENTRY, "created_at": f"2026-05-09T07:{n // 60 % 60:02d}:{n % 60:02d}.000Z", **extra}


@pytest.fixture
async def store(tmp_path: Path):
    s = await Store.open(tmp_path / "data" / "twin.db")
    yield s
    await s.close()


def sidecars(path: Path) -> list[str]:
    return sorted(p.name for p in path.parent.iterdir() if p.name != path.name and p.name.startswith(path.name))


# --- round trips ----------------------------------------------------------------


async def test_every_op_round_trips(store: Store):
    await store.apply(
        [
            ("kv_put", "config", "HeartbeatInterval", 300),
            ("kv_put", "config", "AuthorizationKey", None),
            ("kv_put", "availability", 0, "Operative"),
            ("kv_put", "availability", 1, "Inoperative"),
            ("kv_put", "auth_cache", "TAG1", {"status": "Accepted", "expiryDate": "2030-01-01T00:00:00Z"}),
            ("tx_put", 1, {"connectorId": 1, "idTag": "TAG1", "meterStart": 100, "transactionId": None}),
            ("tx_put", "offline-2", {"connectorId": 2}),
            ("q_put", 1, entry(1, action="StartTransaction")),
            ("q_put", 2, entry(2)),
            ("q_put", 3, entry(3)),
        ]
    )
    await store.apply([("q_del", 2), ("q_discard", 1, "CALLERROR InternalError x3"), ("kv_put", "station", "boot", ["a", 1.5, True])])
    data = await store.load()

    assert data["kv"] == {
        "config": {"HeartbeatInterval": 300, "AuthorizationKey": None},
        "availability": {0: "Operative", 1: "Inoperative"},
        "auth_cache": {"TAG1": {"status": "Accepted", "expiryDate": "2030-01-01T00:00:00Z"}},
        "station": {"boot": ["a", 1.5, True]},
    }
    assert data["transactions"] == {
        1: {"connectorId": 1, "idTag": "TAG1", "meterStart": 100, "transactionId": None},
        "offline-2": {"connectorId": 2},
    }
    assert data["queue"] == [{**entry(3), "seq": 3}]
    [discarded] = data["discarded"]
    assert discarded["discarded_at"].endswith("Z")
    assert discarded == {**entry(1, action="StartTransaction"), "seq": 1, "reason": "CALLERROR InternalError x3", "discarded_at": discarded["discarded_at"]}


async def test_upserts_replace_and_deletes_are_idempotent(store: Store):
    await store.apply([("kv_put", "config", "K", 1), ("tx_put", 5, {"v": 1}), ("q_put", 9, entry(9))])
    await store.apply([("kv_put", "config", "K", 2), ("tx_put", 5, {"v": 2}), ("q_put", 9, entry(9, attempts=1))])
    data = await store.load()
    assert data["kv"]["config"]["K"] == 2
    assert data["transactions"][5] == {"v": 2}
    assert data["queue"] == [{**entry(9, attempts=1), "seq": 9}]

    # A retried batch (its first COMMIT may have reached disk) must be harmless.
    for _ in range(2):
        await store.apply([("q_discard", 9, "timeout", "2026-05-09T08:00:00.000Z"), ("q_del", 9), ("kv_del", "config", "K"), ("kv_del", "config", "missing")])
    data = await store.load()
    assert data["queue"] == [] and data["kv"] == {}
    assert data["discarded"] == [{**entry(9, attempts=1), "seq": 9, "reason": "timeout", "discarded_at": "2026-05-09T08:00:00.000Z"}]


async def test_kv_clear_empties_only_its_namespace(store: Store):
    await store.apply([("kv_put", "local_list", f"TAG{i}", {"status": "Accepted"}) for i in range(50)] + [("kv_put", "config", "A", "x")])
    await store.apply([("kv_clear", "local_list"), ("kv_put", "local_list", "NEW", {"status": "Blocked"})])
    data = await store.load()
    assert data["kv"] == {"local_list": {"NEW": {"status": "Blocked"}}, "config": {"A": "x"}}


async def test_queue_is_loaded_in_seq_order(store: Store):
    seqs = [5, 1, 1000, 42, 3]
    await store.apply([("q_put", s, entry(s)) for s in seqs])
    assert [e["seq"] for e in (await store.load())["queue"]] == sorted(seqs)


async def test_empty_batch_is_a_no_op(store: Store):
    await store.apply([])
    assert await store.load() == {"kv": {}, "transactions": {}, "queue": [], "discarded": []}


# --- atomicity ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "bad_op, complaint",
    [
        (("q_put", "7", ENTRY), "seq must be a 64-bit int"),
        (("q_put", True, ENTRY), "seq must be a 64-bit int"),
        (("q_put", 2**63, ENTRY), "seq must be a 64-bit int"),
        (("q_put", 7, ["not", "a", "dict"]), "entry must be a dict"),
        (("tx_put", 1, {"when": object()}), "not JSON-serialisable"),
        (("kv_put", "config", "K", float("nan")), "not JSON-serialisable"),
        (("kv_put", "", "K", 1), "namespace must be a non-empty str"),
        (("kv_put", "config", "\udcff", 1), "not valid UTF-8"),
        (("kv_put", "config", "K"), "takes 3 argument(s), got 2"),
        (("q_discard", 1), "takes 2 or 3 argument(s)"),
        (("tx_del", 1), "unknown op 'tx_del'"),
        ("q_del", "op must be a tuple"),
    ],
)
async def test_a_malformed_op_refuses_the_whole_batch(store: Store, bad_op, complaint):
    await store.apply([("q_put", 1, entry(1))])
    with pytest.raises(BadOpsError) as info:
        await store.apply([("kv_put", "config", "K", 1), ("q_del", 1), bad_op, ("tx_put", 2, {})])
    message = str(info.value)
    assert str(store.path) in message and "op #2" in message and complaint in message
    assert not info.value.retryable
    assert await store.load() == {"kv": {}, "transactions": {}, "queue": [{**entry(1), "seq": 1}], "discarded": []}


async def test_a_failure_inside_the_transaction_leaves_nothing(store: Store):
    await store.apply([("q_put", 1, entry(1)), ("kv_put", "config", "K", "before")])
    # Make SQLite itself fail on the last op of a batch, after the others executed.
    with sqlite3.connect(store.path) as other:
        other.execute("CREATE TRIGGER boom BEFORE INSERT ON queue WHEN NEW.seq = 666 BEGIN SELECT RAISE(ABORT, 'boom'); END")
    batch = [("kv_put", "config", "K", "after"), ("q_del", 1), ("tx_put", 1, {"x": 1}), ("q_discard", 1, "r"), ("q_put", 666, entry(666))]
    with pytest.raises(StoreError, match="boom") as info:
        await store.apply(batch)
    assert str(store.path) in str(info.value) and "rolled back, nothing written" in str(info.value)
    assert await store.load() == {"kv": {"config": {"K": "before"}}, "transactions": {}, "queue": [{**entry(1), "seq": 1}], "discarded": []}
    assert store.summary()["queue_length"] == 1 and store.summary()["last_error"]

    # The connection is clean afterwards: the next batch goes through.
    await store.apply(batch[:-1])
    data = await store.load()
    assert data["kv"]["config"]["K"] == "after" and data["queue"] == [] and data["transactions"] == {1: {"x": 1}}
    assert store.summary()["last_error"] is None


# --- ordering and concurrency -------------------------------------------------------------


async def test_applies_run_in_submission_order(store: Store):
    main_thread = threading.get_ident()
    tasks = []
    for i in range(200):
        # Interleave puts and deletes of the same rows: only submission order gives the expected end state.
        tasks.append(store.apply([("kv_put", "station", "last", i), ("q_put", i, entry(i))]))
        if i % 2:
            tasks.append(store.apply([("q_del", i - 1)]))
    await asyncio.gather(*tasks)
    data = await store.load()
    assert data["kv"]["station"]["last"] == 199
    assert [e["seq"] for e in data["queue"]] == list(range(1, 200, 2))
    assert threading.get_ident() == main_thread


async def test_load_does_not_block_the_event_loop(store: Store):
    await store.apply([("q_put", i, entry(i)) for i in range(3000)])
    ticks = 0

    async def ticker():
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0)

    task = asyncio.create_task(ticker())
    await store.load()
    task.cancel()
    assert ticks > 1  # the loop kept running while the worker thread read


# --- lifecycle ---------------------------------------------------------------------------


async def test_reopen_after_close_keeps_everything(tmp_path: Path):
    path = tmp_path / "a" / "b" / "twin.db"
    store = await Store.open(path)
    await store.apply([("tx_put", 1, {"meterStart": 5}), ("q_put", 1, entry(1)), ("q_put", 2, entry(2)), ("q_discard", 2, "x", "t")])
    before = await store.load()
    await store.close()
    await store.close()  # idempotent
    with pytest.raises(StoreError, match="closed"):
        await store.apply([("q_del", 1)])

    again = await Store.open(path)
    try:
        assert await again.load() == before
        assert again.summary() | {"path": None} == {
            "path": None,
            "schema_version": SCHEMA_VERSION,
            "open": True,
            "queue_length": 1,
            "queue_oldest_seq": 1,
            "queue_oldest_created_at": entry(1)["created_at"],
            "transactions": 1,
            "discarded": 1,
            "applies": 0,
            "apply_failures": 0,
            "last_error": None,
        }
    finally:
        await again.close()


async def test_new_store_uses_wal_full_sync_and_marks_the_file(store: Store):
    sync = await store._run(lambda: store._conn.execute("PRAGMA synchronous").fetchone()[0])
    assert sync == 2  # FULL
    with sqlite3.connect(store.path) as other:
        assert other.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert other.execute("PRAGMA application_id").fetchone()[0] == APPLICATION_ID
        assert other.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION


async def test_an_empty_file_becomes_a_new_store(tmp_path: Path):
    path = tmp_path / "twin.db"
    path.touch()
    store = await Store.open(path)
    await store.apply([("q_put", 1, entry(1))])
    await store.close()
    assert [e["seq"] for e in Store.snapshot(path)["queue"]] == [1]


async def test_summary_tracks_the_queue_head_and_counts(store: Store):
    assert store.summary()["queue_length"] == 0 and store.summary()["queue_oldest_created_at"] is None
    await store.apply([("q_put", s, entry(s)) for s in (3, 4, 5)] + [("tx_put", 1, {}), ("tx_put", 2, {})])
    await store.apply([("q_del", 3), ("q_discard", 4, "r"), ("q_discard", 99, "not queued"), ("tx_put", 1, {"x": 1})])
    summary = store.summary()
    assert (summary["queue_length"], summary["queue_oldest_seq"], summary["queue_oldest_created_at"]) == (1, 5, entry(5)["created_at"])
    assert (summary["discarded"], summary["transactions"], summary["applies"]) == (1, 2, 2)


# --- refusing files that are not healthy stores ------------------------------------------------


async def _filled_store(path: Path) -> bytes:
    store = await Store.open(path)
    await store.apply([("q_put", i, entry(i, payload={"pad": "x" * 500})) for i in range(400)])
    await store.close()
    return path.read_bytes()


@pytest.mark.parametrize("damage", ["random-bytes", "truncated-header", "truncated-half", "garbled-page"])
async def test_a_corrupted_file_is_refused_and_left_byte_identical(tmp_path: Path, damage: str):
    path = tmp_path / "twin.db"
    good = await _filled_store(path)
    rng = random.Random(damage)
    if damage == "random-bytes":
        bad = rng.randbytes(64 * 1024)
    elif damage == "truncated-header":
        bad = good[:60]
    elif damage == "truncated-half":
        bad = good[: len(good) // 2]
    else:
        page = 4096
        bad = good[: 3 * page] + rng.randbytes(page) + good[4 * page :]
    path.write_bytes(bad)

    with pytest.raises(StoreError) as info:
        await Store.open(path)
    message = str(info.value)
    assert str(path) in message and "refusing to open it" in message and "left untouched" in message
    assert not info.value.retryable
    assert path.read_bytes() == bad
    assert sidecars(path) == []
    with pytest.raises(StoreError, match="corrupted|not a valid"):
        Store.snapshot(path)
    assert path.read_bytes() == bad


async def test_another_applications_database_is_refused(tmp_path: Path):
    path = tmp_path / "twin.db"
    with sqlite3.connect(path) as other:
        other.execute("CREATE TABLE photos (id INTEGER PRIMARY KEY)")
    other.close()
    before = path.read_bytes()
    with pytest.raises(StoreError, match=r"not an ocpp-twin store \(application_id=0x0, tables: photos\)"):
        await Store.open(path)
    assert path.read_bytes() == before


async def test_a_store_from_a_newer_schema_is_refused(tmp_path: Path):
    path = tmp_path / "twin.db"
    await _filled_store(path)
    with sqlite3.connect(path) as other:
        other.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    other.close()
    before = path.read_bytes()
    with pytest.raises(StoreError) as info:
        await Store.open(path)
    assert f"schema version {SCHEMA_VERSION + 1}" in str(info.value) and "newer ocpp-twin" in str(info.value)
    assert str(path) in str(info.value)
    assert path.read_bytes() == before
    with pytest.raises(StoreError, match="newer ocpp-twin"):
        Store.snapshot(path)


async def test_a_path_that_cannot_be_a_store_is_refused(tmp_path: Path):
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("I am a file")
    with pytest.raises(StoreError, match="cannot create directory"):
        await Store.open(blocker / "twin.db")
    with pytest.raises(StoreError, match="is a directory"):
        await Store.open(tmp_path)
    assert blocker.read_text() == "I am a file"


async def test_a_wal_without_its_database_is_refused(store: Store, tmp_path: Path):
    await store.apply([("q_put", 1, entry(1))])
    orphan = tmp_path / "elsewhere" / "twin.db"
    orphan.parent.mkdir()
    wal = Path(str(store.path) + "-wal")
    Path(str(orphan) + "-wal").write_bytes(wal.read_bytes())
    with pytest.raises(StoreError, match="database file is missing but twin.db-wal is there"):
        await Store.open(orphan)
    assert not orphan.exists()


# --- snapshot ------------------------------------------------------------------------------


def test_snapshot_of_a_missing_file_is_a_clear_error(tmp_path: Path):
    with pytest.raises(StoreError, match="no store file here"):
        Store.snapshot(tmp_path / "nowhere.db")
    assert not (tmp_path / "nowhere.db").exists()


async def test_snapshot_reads_a_consistent_state_while_the_store_writes(store: Store):
    stop = threading.Event()
    seen: list[dict] = []
    errors: list[BaseException] = []

    def reader():
        try:
            while not stop.is_set():
                seen.append(Store.snapshot(store.path))
        except BaseException as exc:  # surfaced by the assertion below
            errors.append(exc)

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        # Each batch adds a transaction and its queue entry together and confirms the previous entry.
        for i in range(5000):
            await store.apply([("tx_put", i, {"i": i}), ("q_put", i, entry(i))] + ([("q_del", i - 1)] if i else []))
            if i > 50 and len(seen) > 5:
                break
    finally:
        stop.set()
        thread.join()
    assert not errors, errors
    assert len(seen) > 5
    for snap in seen:
        n = len(snap["transactions"])
        assert set(snap["transactions"]) == set(range(n))
        assert [e["seq"] for e in snap["queue"]] == ([n - 1] if n else [])
    assert Store.snapshot(store.path) == await store.load()


def test_snapshot_of_an_empty_file_is_empty(tmp_path: Path):
    (tmp_path / "twin.db").touch()
    assert Store.snapshot(tmp_path / "twin.db") == {"kv": {}, "transactions": {}, "queue": [], "discarded": []}


async def test_paths_with_uri_special_characters_work(tmp_path: Path):
    path = tmp_path / "data dir?#%&=" / "twin.db"
    store = await Store.open(path)
    await store.apply([("q_put", 1, entry(1))])
    assert [e["seq"] for e in Store.snapshot(path)["queue"]] == [1]
    await store.close()
    store = await Store.open(path)  # the read-only check on reopen goes through a URI too
    await store.close()
    assert [e["seq"] for e in Store.snapshot(path)["queue"]] == [1]


# --- migrations --------------------------------------------------------------------------------


async def test_migrations_upgrade_an_existing_store_step_by_step(tmp_path: Path, monkeypatch):
    import twin.store as store_module

    path = tmp_path / "twin.db"
    await _filled_store(path)
    monkeypatch.setattr(store_module, "SCHEMA_VERSION", SCHEMA_VERSION + 1)
    monkeypatch.setitem(store_module.MIGRATIONS, SCHEMA_VERSION + 1, ("CREATE INDEX queue_entry ON queue (entry)",))
    store = await Store.open(path)
    try:
        assert store.summary()["schema_version"] == SCHEMA_VERSION + 1
        assert len((await store.load())["queue"]) == 400
    finally:
        await store.close()
    with sqlite3.connect(path) as other:
        assert other.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION + 1
        assert other.execute("SELECT name FROM sqlite_schema WHERE name = 'queue_entry'").fetchone()
    other.close()


async def test_a_failing_migration_leaves_the_previous_version_intact(tmp_path: Path, monkeypatch):
    import twin.store as store_module

    path = tmp_path / "twin.db"
    await _filled_store(path)
    monkeypatch.setattr(store_module, "SCHEMA_VERSION", SCHEMA_VERSION + 1)
    monkeypatch.setitem(
        store_module.MIGRATIONS, SCHEMA_VERSION + 1, ("CREATE INDEX queue_entry ON queue (entry)", "INSERT INTO no_such_table VALUES (1)")
    )
    with pytest.raises(StoreError, match="no such table") as info:
        await Store.open(path)
    assert str(path) in str(info.value)
    monkeypatch.undo()
    with sqlite3.connect(path) as other:
        assert other.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        assert other.execute("SELECT name FROM sqlite_schema WHERE name = 'queue_entry'").fetchone() is None
    other.close()
    assert len((await reopen_and_load(path))["queue"]) == 400


async def reopen_and_load(path: Path) -> dict:
    store = await Store.open(path)
    try:
        return await store.load()
    finally:
        await store.close()
