"""Transaction-message queue policy against a fake clock (OCPP 1.6 §3.7, §3.7.1, §4.2; errata 3.18).

Two layers: ``TxQueue`` itself (ordering, retry schedule, discard, pause while
offline, round trip through store records), then the same rules as the station core
applies them (gating on BootNotification, late binding of transactionId, other
messages overtaking a message in backoff), driven by ``tests.core.harness``. A
restart goes through the real SQLite store, as the runtime's does.
"""

from __future__ import annotations

from datetime import timedelta

import pytest

from tests.core.harness import T0, Harness
from twin.core.txqueue import Entry, TxQueue
from twin.store import Store


def _queue_with(*actions: str) -> tuple[TxQueue, list[Entry]]:
    q = TxQueue()
    entries = [q.append(action, {"n": i}, 7, "2026-11-24T12:00:00.000Z")[0] for i, action in enumerate(actions)]
    return q, entries


def _fail(q: TxQueue, entry: Entry, at_s: float, **kw) -> tuple[bool, list[tuple]]:
    q.mark_sent(entry)
    kw = {"max_attempts": 3, "retry_interval": 5, "reason": "CALLERROR InternalError: boom"} | kw
    return q.fail(entry, T0 + timedelta(seconds=at_s), **kw)


# ---------------------------------------------------------------- TxQueue alone
def test_append_numbers_entries_and_returns_the_durable_op():
    q = TxQueue()
    entry, ops = q.append("StartTransaction", {"connectorId": 1}, 3, "2026-11-24T12:00:00.000Z")
    assert entry.seq == 1 and len(q) == 1
    assert ops == [("q_put", 1, {"action": "StartTransaction", "payload": {"connectorId": 1}, "tx_local_id": 3,
                                 "created_at": "2026-11-24T12:00:00.000Z", "attempts": 0, "next_attempt_at": None})]
    assert q.append("MeterValues", {}, 3, "2026-11-24T12:00:01.000Z")[0].seq == 2


def test_only_the_head_is_ever_ready_and_an_in_flight_head_blocks_the_rest():
    # §3.7: chronological order, one at a time; a new message waits for those before it.
    q, (start, mv, stop) = _queue_with("StartTransaction", "MeterValues", "StopTransaction")
    assert q.ready(T0) is start
    q.mark_sent(start)
    assert q.ready(T0) is None and q.next_deadline() is None
    assert q.confirm(start) == [("q_del", start.seq)]
    assert q.ready(T0) is mv
    q.mark_sent(mv)
    q.confirm(mv)
    assert q.ready(T0) is stop and q.oldest_created_at() == stop.created_at


def test_retry_schedule_is_interval_times_k_then_discard_with_defaults():
    # §3.7.1 with TransactionMessageAttempts=3, TransactionMessageRetryInterval=5:
    # send, wait 5 s, resend, wait 10 s, resend, discard.
    q, (start, after) = _queue_with("StartTransaction", "MeterValues")
    discarded, ops = _fail(q, start, 0)
    assert not discarded and start.attempts == 1 and start.next_attempt_at == T0 + timedelta(seconds=5)
    assert ops == [("q_put", start.seq, start.to_record())]  # the attempt count is durable
    assert q.ready(T0 + timedelta(seconds=4.999)) is None
    assert q.next_deadline() == T0 + timedelta(seconds=5)
    assert q.ready(T0 + timedelta(seconds=5)) is start
    discarded, _ = _fail(q, start, 5)
    assert not discarded and start.next_attempt_at == T0 + timedelta(seconds=15)
    assert q.ready(T0 + timedelta(seconds=14.9)) is None and q.ready(T0 + timedelta(seconds=15)) is start
    discarded, ops = _fail(q, start, 15)
    assert discarded and start.attempts == 3
    # The final count is written before the move, so the kept copy says "3 attempts".
    assert ops == [("q_put", start.seq, start.to_record()), ("q_discard", start.seq, "CALLERROR InternalError: boom")]
    assert q.head() is after and q.ready(T0 + timedelta(seconds=15)) is after  # and on with the next


@pytest.mark.parametrize("attempts", [0, 1])
def test_zero_or_one_attempts_means_a_single_transmission(attempts):
    q, (start,) = _queue_with("StartTransaction")
    discarded, ops = _fail(q, start, 0, max_attempts=attempts)
    assert discarded and ops[-1][0] == "q_discard" and len(q) == 0


def test_going_offline_pauses_the_backoff_clock_and_the_attempt_count():
    q, (start,) = _queue_with("StartTransaction")
    _fail(q, start, 0)  # next attempt due at +5 s
    q.link_lost(T0 + timedelta(seconds=1))  # 4 s left
    q.link_restored(T0 + timedelta(seconds=100))
    assert start.attempts == 1
    assert start.next_attempt_at == T0 + timedelta(seconds=104)
    assert q.ready(T0 + timedelta(seconds=103.9)) is None and q.ready(T0 + timedelta(seconds=104)) is start


def test_a_lost_link_with_the_message_in_flight_is_not_a_failed_attempt():
    q, (start,) = _queue_with("StartTransaction")
    q.mark_sent(start)
    q.link_lost(T0)
    q.link_restored(T0 + timedelta(seconds=30))
    assert start.attempts == 0 and start.next_attempt_at is None
    assert q.ready(T0 + timedelta(seconds=30)) is start  # resent at once: at-least-once delivery


def test_records_round_trip_so_a_restart_resumes_order_attempts_and_schedule():
    q, (start, mv) = _queue_with("StartTransaction", "MeterValues")
    _fail(q, start, 0)
    records = [{**e.to_record(), "seq": e.seq} for e in reversed(q.entries)]  # any order from the store
    q2 = TxQueue([Entry.from_record(r) for r in records])
    assert [e.seq for e in q2.entries] == [start.seq, mv.seq]
    assert q2.head().attempts == 1 and q2.head().next_attempt_at == T0 + timedelta(seconds=5)
    assert not q2.head().in_flight
    assert q2.append("StopTransaction", {}, 7, "2026-11-24T12:00:09.000Z")[0].seq == mv.seq + 1


def test_sequence_numbers_never_reuse_a_confirmed_one_within_a_run():
    q, (start,) = _queue_with("StartTransaction")
    q.mark_sent(start)
    q.confirm(start)
    assert q.append("MeterValues", {}, 7, "2026-11-24T12:00:01.000Z")[0].seq == start.seq + 1


# ---------------------------------------------------------------- the policy as the station core applies it
def _charging_offline(h: Harness, tag: str = "TAG1") -> None:
    """Boot online, go offline, start a transaction on a locally known tag (AllowOfflineTxForUnknownId)."""
    h.boot()
    h.go_offline()
    h.meter(1, 1000)
    h.plug(1)
    h.tap(tag)
    assert h.status(1) == "Charging"


def test_nothing_queued_goes_out_before_boot_accepted_nor_while_pending():
    # §4.2: no unsolicited requests before Accepted; queued messages wait while Pending.
    h = Harness({"AllowOfflineTxForUnknownId": "true"}, auto=False)
    h.boot(online=False)
    h.plug(1)
    h.tap("TAG1")  # offline: starts locally, StartTransaction queued
    assert len(h.st.queue) == 1 and h.sent == []
    h.go_online()
    assert [s.action for s in h.sent] == ["BootNotification"]
    h.answer("BootNotification", {"status": "Pending", "currentTime": "2026-11-24T12:00:00Z", "interval": 10})
    h.advance(9)
    assert [s.action for s in h.sent] == ["BootNotification"]
    h.advance(1)
    h.answer("BootNotification", {"status": "Accepted", "currentTime": "2026-11-24T12:00:10Z", "interval": 300})
    assert "StartTransaction" in [s.action for s in h.sent]


def test_stop_and_meter_values_created_while_start_is_queued_get_its_id_at_send_time():
    h = Harness({"MeterValueSampleInterval": "10", "AllowOfflineTxForUnknownId": "true"})
    _charging_offline(h)
    h.meter(1, 1500)
    h.advance(10)
    h.tap("TAG1")
    queued = [e.action for e in h.st.queue.entries]
    assert queued == ["StartTransaction", "MeterValues", "StopTransaction"]
    # Nothing is stored with a placeholder id: the queued payloads have no transactionId at all.
    assert all("transactionId" not in e.payload for e in h.st.queue.entries)
    assert not any(op[0] == "q_put" and "transactionId" in op[2]["payload"] for op in h.ops)
    h.scripts["StartTransaction"] = lambda p: {"transactionId": 4242, "idTagInfo": {"status": "Accepted"}}
    h.go_online()
    tx_calls = [s for s in h.sent if s.action in ("StartTransaction", "MeterValues", "StopTransaction")]
    assert [s.action for s in tx_calls] == ["StartTransaction", "MeterValues", "StopTransaction"]
    assert [s.payload.get("transactionId") for s in tx_calls[1:]] == [4242, 4242]
    assert len(h.st.queue) == 0


def test_after_start_is_discarded_later_messages_carry_transaction_id_minus_one():
    # Errata 3.18: the StartTransaction was finally discarded -> transactionId -1.
    h = Harness({"MeterValueSampleInterval": "10"})
    h.scripts["StartTransaction"] = lambda p: RuntimeError("InternalError")
    h.boot()
    h.meter(1, 1000)
    h.plug(1)
    h.tap("TAG1")
    h.advance(10)  # one MeterValues queued behind the failing start (t=10)
    h.advance(5)   # third StartTransaction at t=15 fails: discarded
    starts = h.calls("StartTransaction")
    assert len(starts) == 3
    mv = h.calls("MeterValues")
    assert mv and all(m.payload["transactionId"] == -1 for m in mv)
    h.tap("TAG1")
    assert h.calls("StopTransaction")[0].payload["transactionId"] == -1
    assert h.st.discarded_count == 1
    assert [op for op in h.ops if op[0] == "q_discard"][0][2].startswith("CALLERROR")


def test_other_messages_overtake_a_transaction_message_in_backoff():
    h = Harness()
    h.scripts["StartTransaction"] = lambda p: RuntimeError("InternalError")
    h.boot()
    h.plug(1)
    h.tap("TAG1")
    m = h.mark()
    h.plug(2)  # StatusNotification Preparing on 2 goes out at once, while the start waits 5 s
    assert [s.action for s in h.calls(since=m)] == ["StatusNotification"]
    h.advance(5)
    assert [s.action for s in h.calls(since=m)] == ["StatusNotification", "StartTransaction"]


def _manual_start(h: Harness) -> None:
    """Manual answers: boot Accepted, then TAG1 on connector 1, its StartTransaction left outstanding."""
    h.boot()
    h.answer("BootNotification")
    while h.outstanding:
        h.answer(next(iter(h.outstanding.values())).action)
    h.plug(1)
    h.tap("TAG1")
    h.answer("Authorize")


def test_new_transaction_messages_wait_until_the_queue_has_drained():
    h = Harness(auto=False)
    _manual_start(h)
    h.plug(2)
    h.tap("TAG2")
    h.answer("Authorize")
    # Two starts queued; only the first is on the wire until it is confirmed.
    assert [s.payload["idTag"] for s in h.calls("StartTransaction")] == ["TAG1"]
    h.answer("StartTransaction")
    assert [s.payload["idTag"] for s in h.calls("StartTransaction")] == ["TAG1", "TAG2"]


def test_response_timeout_is_a_failed_attempt():
    h = Harness(auto=False)
    _manual_start(h)
    h.fail("StartTransaction", "timeout")
    assert h.st.queue.head().attempts == 1
    assert h.st.queue.head().next_attempt_at == h.now + timedelta(seconds=5)


def test_link_lost_during_backoff_keeps_attempt_count_and_remaining_wait():
    h = Harness()
    h.scripts["StartTransaction"] = lambda p: RuntimeError("InternalError")
    h.boot()
    h.plug(1)
    h.tap("TAG1")  # attempt 1 fails at t0 -> due at t0+5
    h.advance(1)
    h.go_offline()
    h.advance(60)  # offline: no retries, the clock is paused
    assert len(h.calls("StartTransaction")) == 1
    h.go_online()
    back = h.now
    h.advance(3.9)
    assert len(h.calls("StartTransaction")) == 1
    h.advance(0.2)  # 4 s after reconnect: attempt 2
    assert len(h.calls("StartTransaction")) == 2 and h.st.queue.head().attempts == 2
    assert h.now - back >= timedelta(seconds=4)


async def test_restart_from_the_real_store_resumes_the_backoff_and_attempt_count(tmp_path):
    h = Harness()
    h.scripts["StartTransaction"] = lambda p: RuntimeError("InternalError")
    h.boot()
    h.plug(1)
    h.tap("TAG1")
    h.advance(5)  # attempt 2 fails at t0+5 -> due at t0+15
    store = await Store.open(tmp_path / "twin.db")
    try:
        await store.apply(h.ops)
        state = await store.load()
    finally:
        await store.close()
    (entry,) = state["queue"]
    assert entry["action"] == "StartTransaction" and entry["attempts"] == 2
    h2 = Harness(state=state, now=h.now + timedelta(seconds=2))
    h2.scripts["StartTransaction"] = lambda p: RuntimeError("InternalError")
    h2.boot()
    stop = h2.calls("StopTransaction")
    assert stop == []  # the PowerLoss stop is queued behind the start, not sent
    assert [e.action for e in h2.st.queue.entries] == ["StartTransaction", "StopTransaction"]
    h2.advance(7.9)
    assert h2.calls("StartTransaction") == []
    h2.advance(0.2)  # t0+15: the third and last attempt, then discard; the stop follows with -1
    assert len(h2.calls("StartTransaction")) == 1
    assert h2.calls("StopTransaction")[0].payload["transactionId"] == -1
    assert h2.calls("StopTransaction")[0].payload["reason"] == "PowerLoss"
