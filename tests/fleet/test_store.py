"""twin/fleet/store.py on real SQLite files: group commit, per-station isolation, a batch failing
alone, a doomed group (real ENOSPC on a small tmpfs, a real EFBIG past RLIMIT_FSIZE), the import
of an earlier fleet's per-member twin.db, refusing foreign files both ways, SIGKILL at random
moments (child processes), and ``twin queue --station`` through the real CLI."""

from __future__ import annotations

import asyncio
import json
import os
import random
import shutil
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import pytest

from tests.test_store_faults import check_crash_invariant, child_env, fill, tmpfs
import twin.fleet.store as fleet_store
from twin.fleet.store import FLEET_DB, MAX_GROUP, SharedStore, StationStore, check_station
from twin.store import FLEET_APPLICATION_ID, BadOpsError, Store, StoreError

REPO = Path(__file__).resolve().parents[2]


def entry(n: int, **extra) -> dict:
    return {"action": "MeterValues", "payload": {"connectorId": 1, "n": n}, "tx_local_id": 1,
            "created_at": f"2026-05-09T07:00:{n % 60:02d}.000Z", "attempts": 0, "next_attempt_at": None, **extra}


@pytest.fixture
async def shared(tmp_path: Path):
    store = await SharedStore.open(tmp_path / "fleet" / FLEET_DB)
    yield store
    await store.close()


async def views(store: SharedStore, count: int, prefix: str = "P") -> list[StationStore]:
    return list(await asyncio.gather(*(store.station(f"{prefix}{i:04d}") for i in range(1, count + 1))))


async def until(check, timeout: float = 4.0) -> None:
    async with asyncio.timeout(timeout):
        while not check():
            await asyncio.sleep(0.002)


@contextmanager
def write_lock(path: Path) -> Iterator[None]:
    """Another connection holds the database's write lock: the writer waits at BEGIN IMMEDIATE
    (busy_timeout) and every batch submitted meanwhile queues up behind it."""
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield
    finally:
        conn.execute("ROLLBACK")
        conn.close()


async def one_group(store: SharedStore, barrier: StationStore, applies: list,
                    before_release=None) -> tuple[BaseException | None, list]:
    """Run the ``applies`` (coroutines) as one group: a first batch (the barrier) takes the writer
    to BEGIN IMMEDIATE, where the write lock held elsewhere stops it until every apply is queued.
    The barrier commits alone, in a group of its own. Returns its outcome and the applies'."""
    with write_lock(store.path):
        first = asyncio.ensure_future(barrier.apply([("kv_put", "barrier", "n", time.time())]))
        await asyncio.sleep(0)  # the task's first step puts the batch on the writer's queue
        await until(lambda: store.summary()["queued"] == 0)  # the writer took it and is waiting for the lock
        tasks = [asyncio.ensure_future(a) for a in applies]
        await until(lambda: store.summary()["queued"] == len(tasks))
        if before_release is not None:
            before_release()
    [barrier_outcome] = await asyncio.gather(first, return_exceptions=True)
    return barrier_outcome, await asyncio.gather(*tasks, return_exceptions=True)


def sql(path: Path, *statements: str) -> None:
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        for statement in statements:
            conn.execute(statement)
    finally:
        conn.close()


# --- group commit -------------------------------------------------------------------------------


async def test_batches_queued_together_commit_with_one_fsync(shared: SharedStore):
    members = await views(shared, 65)
    barrier, stations = members[0], members[1:]
    before = shared.summary()
    outcome, results = await one_group(shared, barrier, [v.apply([("q_put", 1, entry(i)), ("tx_put", 1, {"i": i})])
                                                         for i, v in enumerate(stations)])
    assert outcome is None and results == [None] * 64
    after = shared.summary()
    # The barrier's commit, then the 64 batches in one: two WAL fsyncs for 65 batches.
    assert after["commits"] - before["commits"] == 2
    assert after["batches"] - before["batches"] == 65
    for i, v in enumerate(stations):
        data = await v.load()
        assert data["transactions"] == {1: {"i": i}} and [e["payload"]["n"] for e in data["queue"]] == [i]
        assert v.summary()["applies"] == 1 and v.summary()["queue_length"] == 1


async def test_a_group_is_bounded(shared: SharedStore):
    members = await views(shared, 1)
    barrier = members[0]
    view = await shared.station("BIG")
    before = shared.summary()["commits"]
    # One station's 300 batches, queued together: ceil(300 / MAX_GROUP) groups, in order.
    outcome, results = await one_group(shared, barrier, [view.apply([("kv_put", "station", "last", i), ("q_put", i, entry(i))])
                                                         for i in range(300)])
    assert outcome is None and results == [None] * 300
    assert shared.summary()["commits"] - before == 1 + -(-300 // MAX_GROUP)
    assert shared.summary()["largest_group"] == MAX_GROUP
    data = await view.load()
    assert data["kv"]["station"]["last"] == 299 and [e["seq"] for e in data["queue"]] == list(range(300))


async def test_stations_applying_at_once_share_commits_without_any_help(shared: SharedStore):
    """No lock held: while the writer waits for one fsync, the next batches queue up by themselves."""
    members = await views(shared, 200)
    before = shared.summary()

    async def member(v: StationStore) -> None:
        for n in range(5):
            await v.apply([("q_put", n, entry(n)), ("kv_put", "meter", 1, n)])

    await asyncio.gather(*(member(v) for v in members))
    after = shared.summary()
    batches, commits = after["batches"] - before["batches"], after["commits"] - before["commits"]
    assert batches == 1000
    assert commits <= batches // 4, (commits, batches)


async def test_each_station_s_batches_commit_in_submission_order(shared: SharedStore):
    a, b = await views(shared, 2)
    tasks = []
    for i in range(300):
        # Interleaved puts and deletes of the same rows: only submission order gives this end state.
        for v in (a, b):
            tasks.append(v.apply([("kv_put", "station", "last", i), ("q_put", i, entry(i))]))
            if i % 2:
                tasks.append(v.apply([("q_del", i - 1)]))
    await asyncio.gather(*tasks)
    for v in (a, b):
        data = await v.load()
        assert data["kv"]["station"]["last"] == 299
        assert [e["seq"] for e in data["queue"]] == [s for s in range(300) if s % 2 or s == 299]


# --- isolation ----------------------------------------------------------------------------------


async def test_one_station_never_sees_another_s_rows(shared: SharedStore):
    a, b = await views(shared, 2)
    # The same seq, local_id, namespace and keys in both stations.
    for v, who in ((a, "a"), (b, "b")):
        await v.apply([("q_put", 1, entry(1, who=who)), ("q_put", 2, entry(2, who=who)), ("tx_put", 7, {"who": who}),
                       ("kv_put", "config", "HeartbeatInterval", who), ("kv_put", "availability", 0, who)])
    await a.apply([("q_discard", 1, "timeout", "2026-05-09T08:00:00.000Z"), ("q_del", 2), ("kv_clear", "availability"),
                   ("kv_del", "config", "HeartbeatInterval")])
    data_a, data_b = await a.load(), await b.load()
    assert data_a == {"kv": {}, "transactions": {7: {"who": "a"}}, "queue": [],
                      "discarded": [{**entry(1, who="a"), "seq": 1, "reason": "timeout",
                                     "discarded_at": "2026-05-09T08:00:00.000Z"}]}
    assert data_b == {"kv": {"config": {"HeartbeatInterval": "b"}, "availability": {0: "b"}},
                      "transactions": {7: {"who": "b"}},
                      "queue": [{**entry(1, who="b"), "seq": 1}, {**entry(2, who="b"), "seq": 2}], "discarded": []}
    assert (a.summary()["queue_length"], a.summary()["discarded"]) == (0, 1)
    assert (b.summary()["queue_length"], b.summary()["discarded"], b.summary()["queue_oldest_seq"]) == (2, 0, 1)
    # Closing a view closes that view only.
    await a.close()
    with pytest.raises(StoreError, match=r"\[station P0001\]: store is closed"):
        await a.apply([("q_put", 3, entry(3))])
    await b.apply([("q_put", 3, entry(3))])
    assert [e["seq"] for e in (await b.load())["queue"]] == [1, 2, 3]


async def test_a_view_reopened_finds_its_counts(tmp_path: Path):
    path = tmp_path / FLEET_DB
    store = await SharedStore.open(path)
    v = await store.station("CP1")
    await v.apply([("q_put", s, entry(s)) for s in (4, 5)] + [("tx_put", 1, {}), ("q_discard", 4, "r")])
    await store.close()
    store = await SharedStore.open(path)
    try:
        again = await store.station("CP1")
        s = again.summary()
        assert (s["queue_length"], s["queue_oldest_seq"], s["transactions"], s["discarded"], s["applies"]) == (1, 5, 1, 1, 0)
        assert (await store.station("CP2")).summary()["queue_length"] == 0
    finally:
        await store.close()


# --- failures -----------------------------------------------------------------------------------


async def test_a_malformed_op_is_refused_before_the_queue(shared: SharedStore):
    [v] = await views(shared, 1)
    before = shared.summary()
    with pytest.raises(BadOpsError, match=r"\[station P0001\]: batch refused, nothing written: op #1"):
        await v.apply([("q_put", 1, entry(1)), ("q_put", "x", {})])
    assert shared.summary()["batches"] == before["batches"] and (await v.load())["queue"] == []
    with pytest.raises(ValueError):
        await shared.station("")


async def test_a_batch_sqlite_refuses_fails_alone_in_its_group(tmp_path: Path):
    path = tmp_path / FLEET_DB
    store = await SharedStore.open(path)
    members = await views(store, 6)
    await store.close()
    # A constraint of the database itself (as a CHECK or a trigger of a later schema would be):
    # the batch that breaks it must fail alone, the others in its group commit.
    sql(path, "CREATE TRIGGER refuse_poison BEFORE INSERT ON queue WHEN NEW.entry LIKE '%poison%'"
              " BEGIN SELECT RAISE(ABORT, 'poisoned entry'); END")
    store = await SharedStore.open(path)
    try:
        members = await views(store, 6)
        barrier, good, bad = members[0], members[1:5], members[5]
        applies = [v.apply([("kv_put", "k", "v", i), ("q_put", 1, entry(i))]) for i, v in enumerate(good[:2])]
        # The poisoned batch's first op succeeds before its second fails: both must be undone.
        applies.append(bad.apply([("kv_put", "k", "v", "bad"), ("q_put", 1, entry(9, note="poison"))]))
        applies += [v.apply([("kv_put", "k", "v", i), ("q_put", 1, entry(i))]) for i, v in enumerate(good[2:], 2)]
        before = store.summary()
        outcome, results = await one_group(store, barrier, applies)
        error = results[2]
        assert outcome is None
        assert isinstance(error, StoreError) and not error.retryable
        assert "[station P0006]" in str(error) and "poisoned entry" in str(error) and "nothing written" in str(error)
        assert results[:2] + results[3:] == [None] * 4
        after = store.summary()
        assert after["commits"] - before["commits"] == 2 and after["batch_failures"] - before["batch_failures"] == 1
        assert await bad.load() == {"kv": {}, "transactions": {}, "queue": [], "discarded": []}
        assert bad.summary()["apply_failures"] == 1 and "poisoned" in bad.summary()["last_error"]
        for i, v in enumerate(good):
            data = await v.load()
            assert data["kv"] == {"k": {"v": i}} and [e["payload"]["n"] for e in data["queue"]] == [i]
    finally:
        await store.close()


@pytest.mark.needs_root("mounts a tmpfs for a real ENOSPC")
async def test_disk_full_fails_the_whole_group_retryably_and_nothing_is_half_applied(tmp_path: Path):
    with tmpfs(tmp_path / "small", "size=2m") as mounted:
        path = mounted / FLEET_DB
        store = await SharedStore.open(path)
        try:
            members = await views(store, 5)
            barrier, stations = members[0], members[1:]
            for i, v in enumerate(stations):
                await v.apply([("tx_put", 1, {"meterStart": i}), ("q_put", 1, entry(1))])
            # Small batches beside one that cannot fit: the group's COMMIT fails, so none of them is on disk.
            batches = [[("q_put", 2, entry(2, pad="m" * (300_000 if i == 2 else 10))), ("tx_put", 1, {"meterStart": i, "stopped": True})]
                       for i in range(len(stations))]
            before = store.summary()
            fillers = []
            outcome, results = await one_group(store, barrier, [v.apply(b) for v, b in zip(stations, batches)],
                                               before_release=lambda: fillers.append(fill(mounted)))
            [filler] = fillers
            for v, error in zip(stations, results):
                assert isinstance(error, StoreError) and error.retryable, error
                message = str(error)
                assert f"[station {v.station}]" in message and "disk full" in message and "nothing written" in message
                assert "group commit of 4 batch(es)" in message
                assert v.summary()["apply_failures"] == 1 and "disk full" in v.summary()["last_error"]
            # The four in one group that failed whole (the tiny barrier, alone before them, may have fitted).
            assert store.summary()["group_failures"] - before["group_failures"] == 1 + (outcome is not None)
            for i, v in enumerate(stations):
                data = await v.load()
                assert [e["seq"] for e in data["queue"]] == [1] and data["transactions"] == {1: {"meterStart": i}}

            filler.unlink()  # space is back: every caller retries its own batch
            await asyncio.gather(*(v.apply(b) for v, b in zip(stations, batches)))
            assert all(v.summary()["last_error"] is None for v in stations)
        finally:
            await store.close()
        store = await SharedStore.open(path)
        try:
            for i in range(1, 5):
                data = await (await store.station(f"P{i + 1:04d}")).load()
                assert [e["seq"] for e in data["queue"]] == [1, 2]
                assert data["transactions"] == {1: {"meterStart": i - 1, "stopped": True}}
        finally:
            await store.close()


# A failing write() that is not ENOSPC (EFBIG past RLIMIT_FSIZE, a stand-in for a dying disk):
# it works without root, in a child so the limit stays there.
RLIMIT_CHILD = textwrap.dedent(
    """
    import asyncio, json, os, resource, signal, sqlite3, sys, time
    from pathlib import Path
    from twin.fleet.store import SharedStore
    from twin.store import StoreError

    async def main(path):
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # get EFBIG instead of being killed
        store = await SharedStore.open(Path(path))
        barrier, *views = await asyncio.gather(*(store.station(f"S{i}") for i in range(5)))
        await asyncio.gather(*(v.apply([("q_put", 1, {"created_at": "t1"})]) for v in views))
        out = {}
        soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
        lock = sqlite3.connect(path, isolation_level=None)
        lock.execute("BEGIN IMMEDIATE")
        first = asyncio.ensure_future(barrier.apply([("kv_put", "b", "n", 1)]))
        await asyncio.sleep(0)  # the task's first step puts the batch on the writer's queue
        while store.summary()["queued"]:
            await asyncio.sleep(0.002)
        batches = [[("q_put", 2, {"created_at": "t2", "pad": "p" * (400_000 if i == 0 else 10)}), ("q_del", 1)]
                   for i in range(len(views))]
        tasks = [asyncio.ensure_future(v.apply(b)) for v, b in zip(views, batches)]
        while store.summary()["queued"] < len(tasks):
            await asyncio.sleep(0.002)
        # Room for the barrier's few pages, not for the 400 kB batch.
        limit = max(os.path.getsize(path), os.path.getsize(path + "-wal")) + 64 * 1024
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, hard))
        lock.execute("ROLLBACK")
        await first
        results = await asyncio.gather(*tasks, return_exceptions=True)
        out["errors"] = [str(r) if isinstance(r, StoreError) else repr(r) for r in results]
        out["retryable"] = [getattr(r, "retryable", None) for r in results]
        out["queues_after_failure"] = [[e["seq"] for e in (await v.load())["queue"]] for v in views]
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        await asyncio.gather(*(v.apply(b) for v, b in zip(views, batches)))
        out["queues_after_retry"] = [[e["seq"] for e in (await v.load())["queue"]] for v in views]
        out["summary"] = store.summary()
        await store.close()
        print(json.dumps(out))

    asyncio.run(main(sys.argv[1]))
    """
)


def test_a_write_error_fails_the_whole_group_retryably_and_the_store_keeps_working(tmp_path: Path):
    script = tmp_path / "rlimit_child.py"
    script.write_text(RLIMIT_CHILD)
    path = tmp_path / FLEET_DB
    done = subprocess.run([sys.executable, str(script), str(path)], capture_output=True, text=True, env=child_env(),
                          timeout=60)
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    assert out["retryable"] == [True] * 4, out["errors"]
    for i, message in enumerate(out["errors"]):
        assert f"[station S{i + 1}]" in message and "nothing written" in message, message
        assert "disk full" in message or "I/O error" in message
    assert out["queues_after_failure"] == [[1]] * 4
    assert out["queues_after_retry"] == [[2]] * 4
    assert out["summary"]["group_failures"] == 1
    for i in range(1, 5):
        assert [e["seq"] for e in SharedStore.snapshot(tmp_path, f"S{i}")[0]["queue"]] == [2]


# --- a dead writer, a hung one ------------------------------------------------------------------------


@pytest.mark.parametrize("where", ["bookkeeping", "delivery"])
async def test_a_dead_writer_fails_every_pending_and_later_call_and_close_returns(tmp_path: Path, where: str):
    """Anything raised outside the guarded SQL (MemoryError, a bug in the bookkeeping after
    COMMIT or in handing the outcomes back) kills the writer thread: nothing may wait for it."""
    store = await SharedStore.open(tmp_path / "fleet" / FLEET_DB)
    barrier, a, b, c = await views(store, 4)

    def boom(*_args):
        raise MemoryError("simulated")

    if where == "bookkeeping":
        a._counters.committed = boom  # after the group's COMMIT, before anyone is answered
    else:
        store._deliver = boom  # the barrier's own answer is the first to go through it
    with write_lock(store.path):
        first = asyncio.ensure_future(barrier.apply([("kv_put", "barrier", "n", 1)]))
        await asyncio.sleep(0)
        await until(lambda: store.summary()["queued"] == 0)  # the writer waits for the lock
        # A group (b, a, c), a call behind it (it ends the group), more batches behind that.
        pending = [asyncio.ensure_future(v.apply([("q_put", 1, entry(i))])) for i, v in enumerate((b, a, c))]
        pending.append(asyncio.ensure_future(b.load()))
        pending += [asyncio.ensure_future(v.apply([("q_put", 2, entry(9))])) for v in (c, b)]
        await until(lambda: store.summary()["queued"] == len(pending))
    async with asyncio.timeout(1):
        outcomes = await asyncio.gather(first, *pending, return_exceptions=True)
    failed = outcomes if where == "delivery" else outcomes[1:]
    assert outcomes[0] is None or where == "delivery"
    for outcome in failed:
        assert isinstance(outcome, StoreError) and not outcome.retryable, outcome
        assert "writer thread died (MemoryError: simulated)" in str(outcome)
    summary = store.summary()
    assert summary["open"] is False and summary["broken"] == "MemoryError: simulated"
    assert "MemoryError" in summary["last_error"] and summary["queued"] == 0
    assert b.summary()["open"] is False
    async with asyncio.timeout(1):
        with pytest.raises(StoreError, match="writer thread died") as later:
            await c.apply([("q_put", 3, entry(3))])
        assert not later.value.retryable
        with pytest.raises(StoreError, match="writer thread died"):
            await a.load()
        with pytest.raises(StoreError, match="writer thread died"):
            await store.station("P0404")
        await b.close()
        await store.close()
    assert not store._thread.is_alive()
    # The dead writer rolled back and closed its connection: the file is free and healthy.
    again = await SharedStore.open(store.path)
    try:
        view = await again.station("P0001")
        await view.apply([("kv_put", "after", "n", 2)])
        assert (await view.load())["kv"]["after"] == {"n": 2}
    finally:
        await again.close()


async def test_a_queue_past_its_bound_refuses_applies_retryably_and_keeps_order(tmp_path: Path, monkeypatch):
    monkeypatch.setattr(fleet_store, "MAX_QUEUED", 5)
    store = await SharedStore.open(tmp_path / "fleet" / FLEET_DB)
    try:
        barrier, view = await views(store, 2)
        with write_lock(store.path):  # a hung disk: the writer waits at BEGIN IMMEDIATE
            first = asyncio.ensure_future(barrier.apply([("kv_put", "barrier", "n", 1)]))
            await asyncio.sleep(0)
            await until(lambda: store.summary()["queued"] == 0)
            queued = [asyncio.ensure_future(view.apply([("q_put", i, entry(i))])) for i in range(1, 6)]
            await until(lambda: store.summary()["queued"] == 5)
            with pytest.raises(StoreError, match="5 jobs already waiting") as refused:
                await view.apply([("q_put", 6, entry(6))])
            assert refused.value.retryable and store.summary()["queued"] == 5  # nothing of it queued
            closing = asyncio.ensure_future(view.close())  # a close is never refused: it waits its turn
            await until(lambda: store.summary()["queued"] == 6)
        assert await asyncio.gather(first, *queued, closing) == [None] * 7
        view = await store.station("P0002")
        await view.apply([("q_put", 6, entry(6))])  # the refused batch, retried, after the others
        assert [e["seq"] for e in (await view.load())["queue"]] == [1, 2, 3, 4, 5, 6]
    finally:
        await store.close()


# --- refusing what is not a fleet store ---------------------------------------------------------------


async def test_a_fleet_store_and_a_single_store_refuse_each_other(tmp_path: Path):
    fleet_path = tmp_path / "f" / FLEET_DB
    store = await SharedStore.open(fleet_path)
    await (await store.station("P1")).apply([("q_put", 1, entry(1))])
    await store.close()
    single_path = tmp_path / "s" / "twin.db"
    single = await Store.open(single_path)
    await single.apply([("q_put", 1, entry(1))])
    await single.close()
    fleet_bytes, single_bytes = fleet_path.read_bytes(), single_path.read_bytes()

    with pytest.raises(StoreError, match=r"not an ocpp-twin store \(application_id=0x4f435046.*it is a fleet's shared store"):
        await Store.open(fleet_path)
    with pytest.raises(StoreError, match=r"not an ocpp-twin fleet store \(application_id=0x4f435054.*it is a single twin's store"):
        await SharedStore.open(single_path)
    assert fleet_path.read_bytes() == fleet_bytes and single_path.read_bytes() == single_bytes
    assert sorted(p.name for p in fleet_path.parent.iterdir()) == [FLEET_DB]


@pytest.mark.parametrize("make", ["newer", "foreign", "garbage", "truncated"])
async def test_an_unhealthy_file_is_refused_and_left_byte_identical(tmp_path: Path, make: str):
    path = tmp_path / FLEET_DB
    if make in ("newer", "truncated"):
        store = await SharedStore.open(path)
        await (await store.station("P1")).apply([("q_put", i, entry(i, pad="x" * 500)) for i in range(300)])
        await store.close()
        if make == "newer":
            sql(path, "PRAGMA user_version = 99")
        else:
            path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    elif make == "foreign":
        sql(path, "CREATE TABLE photos (id INTEGER PRIMARY KEY)")
    else:
        path.write_bytes(b"definitely not sqlite " * 300)
    before = path.read_bytes()
    expected = {"newer": "written by a newer ocpp-twin", "foreign": r"not an ocpp-twin fleet store \(application_id=0x0, tables: photos\)",
                "garbage": "not a valid SQLite database", "truncated": "corrupted|not a valid SQLite"}[make]
    with pytest.raises(StoreError, match=expected) as info:
        await SharedStore.open(path)
    assert not info.value.retryable and "left untouched" in str(info.value)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == [FLEET_DB]


async def test_a_fleet_whose_store_is_refused_starts_no_member(tmp_path: Path):
    from twin.config import load_config
    from twin.fleet import Fleet

    data = tmp_path / "fleet"
    data.mkdir()
    (data / FLEET_DB).write_bytes(b"not a database" * 200)
    fleet = Fleet(load_config(None, {"csms_url": "ws://127.0.0.1:9/ocpp", "data_dir": data}), 3, data_dir=data,
                  metrics=None)
    with pytest.raises(StoreError, match="not a valid SQLite database"):
        await fleet.start()
    assert all(s.task is None for s in fleet.slots.values())
    assert (data / FLEET_DB).read_bytes() == b"not a database" * 200


# --- upgrade from one twin.db per member ------------------------------------------------------------

# What a member of an earlier fleet version leaves: its own twin.db, and a WAL that was never
# checkpointed (the process died: os._exit skips closing the connection).
LEGACY_CHILD = textwrap.dedent(
    """
    import asyncio, os, sys
    from twin.store import Store

    async def main(path):
        store = await Store.open(path)
        await store.apply([("kv_put", "config", "HeartbeatInterval", 300), ("kv_put", "availability", 1, "Inoperative"),
                           ("kv_put", "auth_cache", "", {"status": "Accepted"}),
                           ("tx_put", 1, {"connectorId": 1, "transactionId": 42}), ("tx_put", "offline-2", {"connectorId": 2}),
                           ("q_put", 1, {"action": "StartTransaction", "created_at": "t1", "seq": "kept as written"}),
                           ("q_put", 2, {"action": "MeterValues", "created_at": "t2"}),
                           ("q_put", 3, {"action": "StopTransaction", "created_at": "t3"})])
        await store.apply([("q_discard", 2, "timeout", "2026-05-09T08:00:00.000Z")])
        os._exit(0)

    asyncio.run(main(sys.argv[1]))
    """
)


def make_legacy(tmp_path: Path, member_dir: Path) -> dict:
    script = tmp_path / "legacy_child.py"
    script.write_text(LEGACY_CHILD)
    member_dir.mkdir(parents=True, exist_ok=True)
    done = subprocess.run([sys.executable, str(script), str(member_dir / "twin.db")], capture_output=True, text=True,
                          env=child_env(), timeout=60)
    assert done.returncode == 0, done.stderr
    assert (member_dir / "twin.db-wal").stat().st_size > 0  # the data is (also) in the WAL
    return Store.snapshot(member_dir / "twin.db")


async def test_an_earlier_fleet_s_member_store_is_imported_once(tmp_path: Path):
    data = tmp_path / "fleet"
    member = data / "P0001"
    legacy = make_legacy(tmp_path, member)
    assert legacy["queue"][0]["seq"] == 1 and len(legacy["queue"]) == 2 and len(legacy["discarded"]) == 1

    store = await SharedStore.open(data / FLEET_DB)
    try:
        view = await store.station("P0001", member)
        assert await view.load() == legacy
        assert view.summary()["queue_length"] == 2 and view.summary()["transactions"] == 2
        assert store.summary()["imports"] == 1
        assert sorted(p.name for p in member.iterdir() if "twin.db" in p.name) == \
            ["twin.db.imported", "twin.db.imported-shm", "twin.db.imported-wal"]
        # The renamed file is still a readable store: nothing was lost on the way.
        assert Store.snapshot(member / "twin.db.imported") == legacy
        await view.apply([("q_del", 1)])
        await view.close()
        # A second view of the same station (a member's restart): nothing imported again.
        again = await store.station("P0001", member)
        assert [e["seq"] for e in (await again.load())["queue"]] == [3] and store.summary()["imports"] == 1
        # Another station with no file of its own: nothing to import.
        other = await store.station("P0002", data / "P0002")
        assert await other.load() == {"kv": {}, "transactions": {}, "queue": [], "discarded": []}
        await again.close()
        await other.close()
    finally:
        await store.close()
    assert SharedStore.snapshot(data, "P0001")[0]["queue"] == [{**legacy["queue"][1]}]


async def test_an_import_interrupted_before_the_rename_is_finished_not_repeated(tmp_path: Path):
    data = tmp_path / "fleet"
    member = data / "P0001"
    legacy = make_legacy(tmp_path, member)
    store = await SharedStore.open(data / FLEET_DB)
    await store.station("P0001", member)
    await store.close()
    # The state a kill -9 between the import's COMMIT and the rename leaves: the old files are still there.
    for name in ("twin.db", "twin.db-wal", "twin.db-shm"):
        os.replace(member / name.replace("twin.db", "twin.db.imported"), member / name)
    store = await SharedStore.open(data / FLEET_DB)
    try:
        view = await store.station("P0001", member)
        assert await view.load() == legacy and store.summary()["imports"] == 0
        assert not (member / "twin.db").exists() and (member / "twin.db.imported").exists()
    finally:
        await store.close()


@pytest.mark.parametrize("how", ["new file", "written in place", "no identity recorded"])
async def test_a_member_file_written_after_its_import_is_refused_not_hidden(tmp_path: Path, how: str):
    """A twin.db where one was imported from is renamed away only if it is the very file
    imported (an interrupted rename); one written since holds rows fleet.db never saw."""
    data = tmp_path / "fleet"
    member = data / "P0001"
    make_legacy(tmp_path, member)
    store = await SharedStore.open(data / FLEET_DB)
    imported = await (await store.station("P0001", member)).load()
    await store.close()
    if how == "new file":  # the operator tidied up, then an earlier fleet version ran again
        for name in ("twin.db.imported", "twin.db.imported-wal", "twin.db.imported-shm"):
            (member / name).unlink(missing_ok=True)
    else:  # the rename looks interrupted (the files back where they were)...
        for name in ("twin.db", "twin.db-wal", "twin.db-shm"):
            if (member / name.replace("twin.db", "twin.db.imported")).exists():
                os.replace(member / name.replace("twin.db", "twin.db.imported"), member / name)
    if how == "no identity recorded":  # ...but the import was recorded by a version that kept the path only
        sql(data / FLEET_DB, "UPDATE stations SET imported_from = 'P0001/twin.db'")
    else:  # ...but a member run by hand wrote to it since
        old = await Store.open(member / "twin.db")
        await old.apply([("q_put", 77, entry(77, action="StopTransaction"))])
        await old.close()
    before = {p.name: p.read_bytes() for p in member.iterdir()}
    store = await SharedStore.open(data / FLEET_DB)
    try:
        with pytest.raises(StoreError, match=r"already in the fleet's store, but .*P0001/twin.db is there too and it is "
                                             r"not the file imported from there into fleet.db") as info:
            await store.station("P0001", member)
        assert not info.value.retryable and "move the file aside" in str(info.value)
        assert {p.name: p.read_bytes() for p in member.iterdir()} == before  # nothing renamed, nothing read into
        assert await (await store.station("P0001")).load() == imported
    finally:
        await store.close()
    if how != "no identity recorded":
        assert 77 in [e["seq"] for e in Store.snapshot(member / "twin.db")["queue"]]


async def test_a_member_file_beside_a_station_already_in_the_fleet_store_is_refused(tmp_path: Path):
    data = tmp_path / "fleet"
    member = data / "P0001"
    store = await SharedStore.open(data / FLEET_DB)
    try:
        view = await store.station("P0001", member)
        await view.apply([("q_put", 1, entry(1))])
        await view.close()
        make_legacy(tmp_path, member)  # say, `twin run --data-dir fleet/P0001` was run by hand
        before = (member / "twin.db").read_bytes()
        with pytest.raises(StoreError, match=r"already in the fleet's store, but .*twin.db is there too") as info:
            await store.station("P0001", member)
        assert not info.value.retryable
        assert (member / "twin.db").read_bytes() == before and not (member / "twin.db.imported").exists()
        assert [e["seq"] for e in (await (await store.station("P0001")).load())["queue"]] == [1]
    finally:
        await store.close()


async def test_a_member_file_that_is_not_a_healthy_store_is_refused_and_not_imported(tmp_path: Path):
    data = tmp_path / "fleet"
    member = data / "P0001"
    member.mkdir(parents=True)
    (member / "twin.db").write_bytes(b"garbage " * 1000)
    store = await SharedStore.open(data / FLEET_DB)
    try:
        with pytest.raises(StoreError, match="twin.db: not a valid SQLite database"):
            await store.station("P0001", member)
        assert (member / "twin.db").read_bytes() == b"garbage " * 1000
        assert store.summary()["imports"] == 0
        with pytest.raises(StoreError, match="no station 'P0002'"):
            SharedStore.snapshot(data, "P0002")  # nothing registered either
        # A -wal without its database may be all that is left of the member's transactions.
        (member / "twin.db").unlink()
        (member / "twin.db-wal").write_bytes(b"w" * 100)
        with pytest.raises(StoreError, match="is missing but twin.db-wal is there"):
            await store.station("P0001", member)
    finally:
        await store.close()


async def test_a_fleet_upgraded_in_place_keeps_every_member_s_queue(tmp_path: Path):
    """The fleet itself: members of an earlier version had a twin.db each; the new fleet imports
    them as its members start, and their queues come back whole."""
    from twin.config import load_config
    from twin.fleet import Fleet

    data = tmp_path / "fleet"
    legacies = {}
    for n, cp in enumerate(("P0001", "P0002")):
        # What an earlier version's member leaves: queued MeterValues (its CSMS was unreachable) and
        # connector 2 set Inoperative by a ChangeAvailability, in its own store.
        old = await Store.open(data / cp / "twin.db")
        await old.apply([("kv_put", "availability", "2", "Inoperative")] + [
            ("q_put", seq, {"action": "MeterValues", "tx_local_id": None, "created_at": f"2026-05-09T07:00:0{seq}.000Z",
                            "attempts": 0, "next_attempt_at": None,
                            "payload": {"connectorId": 1, "meterValue": [{"timestamp": f"2026-05-09T07:00:0{seq}.000Z",
                                                                         "sampledValue": [{"value": str(seq * 10)}]}]}})
            for seq in range(1, 3 + n)])
        await old.close()
        legacies[cp] = Store.snapshot(data / cp / "twin.db")
    blueprint = load_config(None, {"csms_url": "ws://127.0.0.1:9/ocpp", "data_dir": data})
    fleet = Fleet(blueprint, 3, data_dir=data, metrics=None)
    await fleet.start()
    try:
        await until(lambda: all(s.phase == "up" for s in fleet.slots.values()), timeout=20)
        for cp, legacy in legacies.items():
            rt = fleet.member(cp)
            assert rt.store.summary()["station"] == cp and rt.store.path == data / FLEET_DB
            assert [e.seq for e in rt.station.queue.entries] == [e["seq"] for e in legacy["queue"]]
            assert rt.station.availability.connectors[2].availability == "Inoperative"
            assert SharedStore.snapshot(data, cp)[0]["queue"] == legacy["queue"]
            assert (data / cp / "twin.db.imported").exists() and not (data / cp / "twin.db").exists()
        assert fleet.member("P0003").station.queue.entries == []
        assert fleet.store.summary()["imports"] == 2
    finally:
        await fleet.stop()
    assert fleet.store is None


# --- crash safety ---------------------------------------------------------------------------------

# Many stations at once, each doing test_store_faults' all-or-nothing batch i (its counter,
# transaction i and its queue entry, the previous entries confirmed, bulky rows that replace the
# previous batch's): after any crash each station's data is a function of its counter alone.
CRASH_CHILD = textwrap.dedent(
    """
    import asyncio, random, sys
    from pathlib import Path
    from twin.fleet.store import SharedStore

    async def station(store, sid, rng):
        view = await store.station(sid)
        data = await view.load()
        n = data["kv"].get("station", {}).get("counter", -1)
        prev_m = data["transactions"][n]["m"] if n >= 0 else 0
        while True:
            n += 1
            m = rng.choice([0, 0, 1, 5, 20])
            ops = [("tx_put", n, {"n": n, "m": m}), ("q_put", n, {"action": "MeterValues", "created_at": str(n), "payload": {"n": n}})]
            ops += [("kv_put", "bulk", f"{n}:{j}", "x" * 2000) for j in range(m)]
            ops += [("kv_del", "bulk", f"{n - 1}:{j}") for j in range(prev_m)]
            if n >= 2:
                ops.append(("q_del", n - 2))
            ops.append(("kv_put", "station", "counter", n))
            await view.apply(ops)
            print(sid, n, flush=True)  # acknowledged: apply() returned
            prev_m = m

    async def main(path, seed, count):
        rng = random.Random(seed)
        store = await SharedStore.open(Path(path))
        await asyncio.gather(*(station(store, f"S{i:02d}", random.Random(rng.random())) for i in range(count)))

    asyncio.run(main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3])))
    """
)
CRASH_STATIONS = 12


async def test_every_acknowledged_batch_of_every_station_survives_sigkill_and_none_is_half_applied(tmp_path: Path):
    seed = int(os.environ.get("STORE_CRASH_SEED", random.randrange(1 << 30)))
    print(f"crash test seed: {seed} (rerun with STORE_CRASH_SEED={seed})")
    rng = random.Random(seed)
    script = tmp_path / "crash_child.py"
    script.write_text(CRASH_CHILD)
    data = tmp_path / "fleet"
    path = data / FLEET_DB
    stations = [f"S{i:02d}" for i in range(CRASH_STATIONS)]
    acked_max = {s: -1 for s in stations}
    kills_mid_run = 0
    for round_no in range(8):
        child = subprocess.Popen([sys.executable, str(script), str(path), str(rng.randrange(1 << 30)), str(CRASH_STATIONS)],
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=child_env(), bufsize=0)
        if round_no % 3 == 2:
            time.sleep(rng.uniform(0.0, 0.25))  # kill early: while the child opens, recovers the WAL, registers
        else:
            # Unbuffered (bufsize=0): readline() takes one line off the pipe and no more, so what
            # communicate() reads from the pipe next starts at the following line, not mid-line.
            first = child.stdout.readline().decode()
            assert first, f"child died before its first batch: {child.stderr.read()}"
            sid, n = first.split()
            acked_max[sid] = max(acked_max[sid], int(n))
            time.sleep(rng.uniform(0.0, 0.15))
            kills_mid_run += 1
        child.send_signal(signal.SIGKILL)
        out, err = (b.decode(errors="replace") for b in child.communicate(timeout=30))
        assert child.returncode == -signal.SIGKILL, err
        lines = out.split("\n")[:-1]  # the last piece is a line cut by the kill, or empty
        for line in lines:
            sid, n = line.split()
            acked_max[sid] = max(acked_max[sid], int(n))

        # A reader sees the same thing before any writer reopens (the WAL left by the kill).
        snapshots = {}
        if path.exists() and path.stat().st_size:
            for sid in stations:
                try:
                    snapshots[sid] = SharedStore.snapshot(data, sid)[0]
                except StoreError as e:
                    assert "no station" in str(e) and acked_max[sid] == -1, (sid, e)
        store = await SharedStore.open(path)
        try:
            for sid in stations:
                loaded = await (await store.station(sid)).load()
                n = check_crash_invariant(loaded)
                assert n >= acked_max[sid], f"round {round_no}: {sid} acknowledged {acked_max[sid]}, the store ends at {n}"
                if sid in snapshots:
                    assert snapshots[sid] == loaded
                acked_max[sid] = n
        finally:
            await store.close()
    assert kills_mid_run >= 5 and sum(acked_max.values()) >= kills_mid_run


# --- twin queue --station -----------------------------------------------------------------------------


def twin_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "twin", *args], capture_output=True, text=True, env=child_env(),
                          cwd=REPO, timeout=60)


async def test_twin_queue_station_reads_one_member_of_a_running_fleet(tmp_path: Path):
    data = tmp_path / "fleet"
    store = await SharedStore.open(data / FLEET_DB)
    try:
        a, b, empty_one = await views(store, 3)
        await a.apply([("q_put", 1, entry(1, action="StartTransaction")), ("q_put", 2, entry(2))])
        await b.apply([("q_put", 1, entry(7)), ("q_put", 2, entry(8)), ("q_put", 3, entry(9))])
        await b.apply([("q_discard", 1, "CALLERROR InternalError", "2026-05-09T08:00:00.000Z")])
        # The fleet is still running (the store open, its WAL not checkpointed): read-only snapshot.
        done = await asyncio.to_thread(twin_cli, "queue", "--data-dir", str(data), "--station", "P0002", "--json",
                                       "--discarded")
        assert done.returncode == 0, done.stderr
        out = json.loads(done.stdout)
        loaded = await b.load()
        assert out == {"queue": loaded["queue"], "discarded": loaded["discarded"]}
        assert [e["seq"] for e in out["queue"]] == [2, 3]

        text = await asyncio.to_thread(twin_cli, "queue", "--data-dir", str(data), "--station", "P0001")
        assert text.returncode == 0, text.stderr
        assert f"2 queued transaction message(s) of station P0001 in {data / FLEET_DB}" in text.stdout
        assert "StartTransaction" in text.stdout
        assert SharedStore.snapshot(data, "P0003")[0] == await empty_one.load() == \
            {"kv": {}, "transactions": {}, "queue": [], "discarded": []}  # known, nothing queued: not "no station"

        unknown = await asyncio.to_thread(twin_cli, "queue", "--data-dir", str(data), "--station", "P0404")
        assert unknown.returncode == 1 and "no station 'P0404'" in unknown.stderr and "P0001" in unknown.stderr
        bare = await asyncio.to_thread(twin_cli, "queue", "--data-dir", str(data))
        assert bare.returncode == 1 and "--station" in bare.stderr
    finally:
        await store.close()

    single = tmp_path / "single"
    s = await Store.open(single / "twin.db")
    await s.close()
    wrong = await asyncio.to_thread(twin_cli, "queue", "--data-dir", str(single), "--station", "P0001")
    assert wrong.returncode == 1 and "single twin's data dir" in wrong.stderr


def test_snapshot_of_a_member_not_imported_yet_reads_its_own_file(tmp_path: Path):
    data = tmp_path / "fleet"
    legacy = make_legacy(tmp_path, data / "P0009")
    snap, source = SharedStore.snapshot(data, "P0009")  # no fleet.db yet: an earlier version's data dir
    assert snap == legacy and source == data / "P0009" / "twin.db"
    shutil.rmtree(data / "P0009")
    with pytest.raises(StoreError, match="not a fleet's data dir"):
        SharedStore.snapshot(data, "P0009")


def test_the_application_id_is_the_fleet_s():
    assert FLEET_APPLICATION_ID.to_bytes(4, "big") == b"OCPF"


async def test_odd_station_ids_are_refused_clearly(tmp_path: Path):
    for good in ("P0001", "CP-1.a_b~Z", "Ladesäule 3"):  # OCPP identities, and any other printable text
        assert check_station(good) == good
    # "\udcff": what Python makes of an argv byte that is not UTF-8 ($'\xff').
    for bad, why in (("\udcff", "valid text"), ("a\x00b", "control"), ("a\nb", "control"), ("\x7f", "control"),
                     ("", "non-empty"), (" P1", "blanks")):
        with pytest.raises(ValueError, match=why):
            check_station(bad)
    data = tmp_path / "fleet"
    store = await SharedStore.open(data / FLEET_DB)
    try:
        await store.station("P0001")
        with pytest.raises(ValueError, match="valid text"):
            await store.station("\udcff")
        with pytest.raises(ValueError, match="control"):
            SharedStore.snapshot(data, "P\x1b[2J")
        for args, code, message in ((("--station", "\udcff"), 2, "--station: station id must be valid text"),
                                    (("--station", "P\t1"), 2, "must not hold control characters")):
            done = await asyncio.to_thread(twin_cli, "queue", "--data-dir", str(data), *args)
            assert done.returncode == code and message in done.stderr and "Traceback" not in done.stderr, done.stderr
        # A member's own dir, for a member that never had a twin.db: point to the fleet's.
        (data / "P0001").mkdir()
        member = await asyncio.to_thread(twin_cli, "queue", "--data-dir", str(data / "P0001"))
        assert member.returncode == 1 and f"twin queue --data-dir {data} --station P0001" in member.stderr, member.stderr
    finally:
        await store.close()
