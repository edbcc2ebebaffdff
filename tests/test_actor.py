"""The core's one owner (twin/actor.py), with the real core and the real SQLite store.

The sink stands in for the hardware and the link: it records what the actor asks of them,
in order, next to every store commit.
"""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from twin.actor import CoreActor
from twin.core import actions as A
from twin.core.keys import ConfigKeys
from twin.core.smart_charging import SmartCharging
from twin.core.station import STORAGE_FAULT, Station, StationSpec
from twin.store import Store, StoreError

T0 = datetime(2026, 12, 1, 12, 0, tzinfo=timezone.utc)


class Clock:
    def __init__(self):
        self.wall = T0
        self.mono = 1000.0

    def now(self) -> datetime:
        return self.wall

    def monotonic(self) -> float:
        return self.mono

    def advance(self, seconds: float) -> None:
        self.wall += timedelta(seconds=seconds)
        self.mono += seconds


class Sink:
    def __init__(self, log: list):
        self.log = log
        self.calls: dict[int, A.Send] = {}

    def drive(self, output):
        self.log.append(("relay" if isinstance(output, A.SetRelay) else "pilot", output))

    def reply(self, reply):
        self.log.append(("reply", reply))

    def send(self, call):
        self.calls[call.ref] = call
        self.log.append(("send", call))

    def control(self, request):
        self.log.append(("control", request))

    def sent(self, action: str) -> list[A.Send]:
        return [c for kind, c in self.log if kind == "send" and c.action == action]


class RecordingStore:
    """The real store, with every commit written into the sink's log (and a switch to slow it)."""

    def __init__(self, store: Store, log: list):
        self.store = store
        self.log = log
        self.delay = 0.0
        self.failing = False
        self.applies = 0

    async def apply(self, ops):
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.failing:
            raise StoreError("disk full (test)", retryable=True)
        await self.store.apply(ops)
        self.applies += 1
        self.log.append(("commit", list(ops)))


@pytest.fixture
async def rig(tmp_path: Path):
    log: list = []
    store = await Store.open(tmp_path / "twin.db")
    rec = RecordingStore(store, log)
    clock = Clock()
    station = Station(StationSpec(), ConfigKeys(), SmartCharging(2), await store.load())
    sink = Sink(log)
    actor = CoreActor(station, rec, sink, clock=clock.now, monotonic=clock.monotonic)
    actor.start()
    await actor.call(station.boot)
    await actor.call(station.link_up)
    boot = sink.sent("BootNotification")[0]
    await actor.call(station.call_result, boot.ref, {"status": "Accepted", "currentTime": "2026-12-01T12:00:00Z",
                                                    "interval": 300})
    yield station, actor, sink, rec, clock, log
    await actor.close()
    await store.close()


async def answer_all(actor, station, sink):
    """Play a CSMS that accepts everything outstanding, also what the answers lead to."""
    answered: set[int] = set()
    while todo := [(r, c) for r, c in sink.calls.items() if r in station.pending_calls and r not in answered]:
        ref, call = todo[0]
        answered.add(ref)
        payload = {}
        if call.action == "Authorize":
            payload = {"idTagInfo": {"status": "Accepted"}}
        elif call.action == "StartTransaction":
            payload = {"transactionId": 77, "idTagInfo": {"status": "Accepted"}}
        await actor.call(station.call_result, ref, payload)


async def charging(actor, station, sink):
    await actor.call(station.plug, 1)
    await actor.call(station.tap, "TAG1")
    await answer_all(actor, station, sink)
    assert station.connectors[1].tx is not None and station.connectors[1].relay


async def test_a_caller_timeout_does_not_cancel_the_step(rig):
    """A.7: the control API's timeout landed while the step awaited the store; the actions after
    it were dropped, the core believed the contactor closed and the queue stalled."""
    station, actor, sink, rec, clock, log = rig
    await actor.call(station.plug, 1)
    await actor.call(station.tap, "TAG1")
    auth = sink.sent("Authorize")[-1]
    rec.delay = 0.3
    with pytest.raises(asyncio.TimeoutError):
        await asyncio.wait_for(actor.call(station.call_result, auth.ref, {"idTagInfo": {"status": "Accepted"}}), 0.05)
    await asyncio.sleep(0.6)
    rec.delay = 0.0
    assert ("relay", A.SetRelay(1, True)) in log  # the step went on to close the contactor
    assert sink.sent("StartTransaction"), "the StartTransaction after the commit was sent"


async def test_one_commit_per_event_and_channel_order(rig):
    station, actor, sink, rec, clock, log = rig
    await charging(actor, station, sink)
    before, mark = rec.applies, len(log)
    await actor.call(station.tap, "TAG1")  # stops the session
    assert rec.applies - before == 1  # one SQLite transaction, one fsync
    kinds = [k for k, _ in log[mark:]]
    assert kinds.index("relay") < kinds.index("commit") < kinds.index("send"), kinds
    assert sink.sent("StopTransaction")


async def test_reply_leaves_after_the_commit_it_confirms(rig):
    station, actor, sink, rec, clock, log = rig
    mark = len(log)
    await actor.call(station.csms_call, "u1", "ChangeAvailability", {"connectorId": 2, "type": "Inoperative"})
    kinds = [k for k, _ in log[mark:]]
    assert kinds.index("commit") < kinds.index("reply"), kinds


async def test_contactor_does_not_close_when_the_commit_fails_and_the_station_faults(rig):
    station, actor, sink, rec, clock, log = rig
    await actor.call(station.plug, 1)
    await actor.call(station.tap, "TAG1")
    rec.failing = True
    await answer_all(actor, station, sink)
    assert ("relay", A.SetRelay(1, True)) not in log
    assert station.station_fault == STORAGE_FAULT
    assert actor.unsaved
    # The disk recovers: the held data is saved in order and the fault clears by itself.
    rec.failing = False
    clock.advance(3)
    await actor.call(station.tick)
    assert not actor.unsaved and station.station_fault is None
    saved = await rec.store.load()
    assert any(e["action"] == "StartTransaction" for e in saved["queue"]) or saved["transactions"]


async def test_an_op_the_store_would_refuse_is_dropped_alone_and_latches_nothing(rig, caplog):
    """A.3: one refused op lost the whole batch and latched a fault nothing cleared."""
    station, actor, sink, rec, clock, log = rig
    from twin.core.effects import Effects

    fx = Effects(persist=[("kv_put", "station", "ok", 1), ("kv_put", "", "bad namespace", 1),
                          ("kv_put", "station", "also_ok", 2)])
    await actor.execute(fx)
    saved = await rec.store.load()
    assert saved["kv"]["station"]["ok"] == 1 and saved["kv"]["station"]["also_ok"] == 2
    assert station.station_fault is None and not actor.unsaved
    assert "BUG: store op refused" in caplog.text


async def test_a_stale_deadline_cannot_starve_the_event_loop_or_the_inbox(rig, monkeypatch):
    """A.1's second half: even a core whose deadline stays in the past lets other tasks run,
    and the actor still processes its events (asyncio.wait_for(get(), 0) times out even with
    events queued: a legal ConnectionTimeOut 0 on a reserved, plugged connector did this)."""
    station, actor, sink, rec, clock, log = rig
    monkeypatch.setattr(station, "next_deadline", lambda: clock.now() - timedelta(seconds=1))
    progress = 0

    async def other():
        nonlocal progress
        for _ in range(20):
            progress += 1
            await asyncio.sleep(0)

    await asyncio.wait_for(other(), timeout=2)
    assert progress == 20
    mark = len(log)
    await asyncio.wait_for(actor.call(station.csms_call, "g1", "GetConfiguration", {}), timeout=2)
    assert any(kind == "reply" and r.unique_id == "g1" for kind, r in log[mark:])


async def test_a_core_failure_outside_a_step_does_not_stop_the_actor(rig, monkeypatch):
    station, actor, sink, rec, clock, log = rig
    calls = 0
    real = station.next_deadline

    def flaky():
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("boom")
        return real()

    monkeypatch.setattr(station, "next_deadline", flaky)
    actor.post(station.plug, 1)  # wakes the actor into the failing deadline
    await asyncio.sleep(0.1)
    assert not actor.task.done()
    await asyncio.wait_for(actor.call(station.plug, 2), timeout=3)
    assert station.connectors[2].plugged


async def test_replies_wait_for_the_commit_when_the_disk_fails(rig):
    """A reply never confirms what a power cut could lose: with the disk failing, the
    ChangeAvailability.conf is held, and sent once the data is on disk."""
    station, actor, sink, rec, clock, log = rig
    rec.failing = True
    await actor.call(station.csms_call, "ca1", "ChangeAvailability", {"connectorId": 2, "type": "Inoperative"})
    assert not any(kind == "reply" and r.unique_id == "ca1" for kind, r in log)
    rec.failing = False
    clock.advance(3)
    await actor.call(station.tick)
    kinds = [(k, getattr(x, "unique_id", None)) for k, x in log]
    assert ("reply", "ca1") in kinds
    last_commit = max(i for i, (k, _) in enumerate(kinds) if k == "commit")
    assert kinds.index(("reply", "ca1")) > last_commit - 1


async def test_recovery_is_not_reported_while_data_is_still_held(rig):
    """The backlog flushed, then the event's own commit failed: the storage fault must stay."""
    station, actor, sink, rec, clock, log = rig
    rec.failing = True
    await actor.call(station.plug, 1)
    assert station.station_fault == STORAGE_FAULT and len(actor.unsaved) == 1
    real_apply = RecordingStore.apply
    applied = 0

    async def once(self, ops):
        nonlocal applied
        applied += 1
        if applied > 1:
            raise StoreError("disk full again (test)", retryable=True)
        self.failing = False
        try:
            await real_apply(self, ops)
        finally:
            self.failing = True

    RecordingStore.apply = once
    try:
        await actor.call(station.plug, 2)  # flushes the held batch, then its own commit fails
    finally:
        RecordingStore.apply = real_apply
    assert actor.unsaved and station.station_fault == STORAGE_FAULT
    clock.advance(3)  # the retry timer: the disk still fails, so nothing was recovered
    await actor.call(station.tick)
    assert actor.unsaved and station.station_fault == STORAGE_FAULT


async def test_a_hung_commit_is_bounded_and_held(rig, monkeypatch):
    import twin.actor as actor_module

    station, actor, sink, rec, clock, log = rig
    monkeypatch.setattr(actor_module, "COMMIT_TIMEOUT_S", 0.2)
    rec.delay = 5.0
    t0 = asyncio.get_running_loop().time()
    await asyncio.wait_for(actor.call(station.plug, 1), timeout=3)
    assert asyncio.get_running_loop().time() - t0 < 2
    assert actor.unsaved and station.station_fault == STORAGE_FAULT


async def test_a_backward_wall_clock_step_keeps_the_heartbeat_interval(rig):
    station, actor, sink, rec, clock, log = rig
    due = station.next_heartbeat_at
    clock.wall -= timedelta(hours=1)  # NTP steps the wall clock; monotonic time goes on
    clock.mono += 0.5
    await actor.call(station.tick)
    # 0.5 s really passed while the wall clock went back 3600 s: the wait left is 0.5 s shorter.
    assert station.next_heartbeat_at == due - timedelta(seconds=3600.5)


async def test_events_after_close_are_ignored(rig):
    station, actor, sink, rec, clock, log = rig
    await actor.close()
    assert actor.post(station.plug, 1) is None
    assert await actor.call(station.plug, 1) is None
    assert not station.connectors[1].plugged


async def test_the_inbox_keeps_order_and_loses_nothing_to_a_cancelled_wait():
    from twin.actor import _Inbox

    inbox = _Inbox()
    waiting = asyncio.ensure_future(inbox.get())
    await asyncio.sleep(0)
    inbox.put_nowait("a")
    inbox.put_nowait("b")
    assert await waiting == "a"  # woken by the first put
    # A wait that times out just as an item arrives leaves the item for the next get.
    late = asyncio.ensure_future(inbox.get())
    assert inbox.get_nowait() == "b" and inbox.empty()
    await asyncio.sleep(0)
    inbox.put_nowait("c")
    late.cancel()
    with pytest.raises(asyncio.CancelledError):
        await late
    assert inbox.qsize() == 1 and await inbox.get() == "c"
    with pytest.raises(IndexError):
        inbox.get_nowait()


async def test_an_idle_actor_waits_without_a_task_of_its_own(rig):
    """Waiting for the next event or deadline creates no helper Task (wait_for would, for
    every event: a fleet of a thousand stations makes thousands a second)."""
    station, actor, *_ = rig

    def helpers() -> list:
        return [t for t in asyncio.all_tasks() if t is not actor.task and t is not asyncio.current_task()]

    for _ in range(3):
        await asyncio.sleep(0)
    assert helpers() == []
    await actor.call(station.tick)
    for _ in range(3):
        await asyncio.sleep(0)
    assert helpers() == []
