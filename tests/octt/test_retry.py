"""Transaction-message retry (OCPP 1.6 §3.7.1, errata 3.18) end to end, in real time.

A real station runtime (sim drivers, real SQLite store, real websocket link) against
the loopback CSMS, which scripts CALLERRORs and silence for StartTransaction. The
gaps are measured on the CSMS's receive timestamps. With the spec defaults
(TransactionMessageAttempts 3, TransactionMessageRetryInterval 5) a failing message
is sent, resent after 5 s, resent after 10 s more, then discarded. Tolerance is
±1.5 s: wide enough for a loaded 2-core machine, far narrower than the 5 s step
between the two gaps. Each retransmission must carry a new message id.
"""

from __future__ import annotations

import asyncio
import time

from twin.csms import NO_REPLY, CsmsCallError

TOLERANCE_S = 1.5
QUIET = {"MeterValueSampleInterval": "0", "ClockAlignedDataInterval": "0"}


def _refuse(payload: dict) -> dict:
    raise CsmsCallError("InternalError", "scripted failure to process")


def _gaps(msgs) -> list[float]:
    return [b.t - a.t for a, b in zip(msgs, msgs[1:])]


def _assert_gaps(msgs, expected: list[float], tolerance: float = TOLERANCE_S) -> None:
    gaps = _gaps(msgs)
    assert len(gaps) == len(expected), gaps
    for gap, want in zip(gaps, expected):
        assert abs(gap - want) <= tolerance, f"gaps {gaps}, expected {expected} ±{tolerance}"


async def test_start_transaction_callerror_three_sends_then_discard_and_stop_with_minus_one(make_station, csms):
    csms.on("StartTransaction", _refuse)
    station = await make_station(keys=dict(QUIET))
    await station.plug(1)
    await station.tap("TAG1")
    await csms.wait_for("StartTransaction", timeout=10)
    await csms.wait_for("StartTransaction", timeout=5 + 5)
    # Stop during the 10 s backoff: the StopTransaction is created while its
    # StartTransaction is still queued, and must be completed only at send time.
    await station.tap("TAG1")
    await csms.wait_for("StartTransaction", timeout=10 + 5)
    stop = await csms.wait_for("StopTransaction", timeout=10)

    starts = csms.calls("StartTransaction")
    assert len(starts) == 3
    _assert_gaps(starts, [5, 10])
    assert len({m.unique_id for m in starts}) == 3  # a new message id per retransmission
    assert all(m.payload == starts[0].payload for m in starts)
    errors = [m for m in csms.messages if m.direction == "out" and m.kind == "error" and m.action == "StartTransaction"]
    assert len(errors) == 3
    assert stop.payload["transactionId"] == -1  # errata 3.18
    assert stop.payload["reason"] == "Local" and stop.index > errors[-1].index
    # Discarded, logged and kept in the store for diagnostics, with the whole message.
    (discarded,) = (await station.rt.store.load())["discarded"]
    assert discarded["action"] == "StartTransaction" and discarded["payload"] == starts[0].payload
    assert discarded["attempts"] == 3 and "CALLERROR" in discarded["reason"]
    await station.until(lambda: station.rt.state()["queue"]["length"] == 0, what="queue drained")
    assert station.rt.state()["queue"]["discarded"] == 1
    await asyncio.sleep(1)
    assert len(csms.calls("StartTransaction")) == 3  # exactly three, never a fourth


async def test_start_transaction_succeeds_on_third_attempt_and_later_messages_carry_its_id(make_station, csms):
    attempts = []

    def third_time_lucky(payload: dict) -> dict:
        attempts.append(payload)
        if len(attempts) < 3:
            raise CsmsCallError("InternalError", "scripted failure to process")
        return {"transactionId": 4242, "idTagInfo": {"status": "Accepted"}}

    csms.on("StartTransaction", third_time_lucky)
    station = await make_station(keys={"MeterValueSampleInterval": "3", "ClockAlignedDataInterval": "0"})
    await station.plug(1)
    await station.tap("TAG1")
    await csms.wait_for("StartTransaction", timeout=10)
    await csms.wait_for("StartTransaction", timeout=10)
    await asyncio.sleep(3.5)  # at least one MeterValues sample queued behind the unconfirmed start
    await station.tap("TAG1")
    third = await csms.wait_for("StartTransaction", timeout=15)
    stop = await csms.wait_for("StopTransaction", timeout=10)

    starts = csms.calls("StartTransaction")
    assert len(starts) == 3
    _assert_gaps(starts, [5, 10])
    assert stop.payload["transactionId"] == 4242 and stop.index > third.index
    mvs = csms.calls("MeterValues")
    assert mvs, "MeterValues sampled during the backoff"
    assert all(m.payload["transactionId"] == 4242 and m.index > third.index for m in mvs)
    assert all(m.index < stop.index for m in mvs)  # chronological order (§3.7)
    assert (await station.rt.store.load())["discarded"] == []


async def test_response_timeout_on_a_live_link_is_not_a_failed_attempt(make_station, csms):
    """Only CALLERRORs (and replies the station cannot use) count toward
    TransactionMessageAttempts (§3.7.1): a CSMS that does not answer on a link that still
    answers pings gets the message again after the retry interval, for as long as it takes,
    and nothing is discarded. (A dead link is found by the ping check: tests/test_link_liveness.py.)"""
    answered: list[dict] = []

    def start(payload):
        answered.append(payload)
        return NO_REPLY if len(answered) <= 4 else {"transactionId": 41, "idTagInfo": {"status": "Accepted"}}

    csms.on("StartTransaction", start)
    station = await make_station(keys={**QUIET, "MessageTimeout": "1", "TransactionMessageRetryInterval": "2",
                                       "TransactionMessageAttempts": "3"})
    connections = csms.connection_count
    await station.plug(1)
    await station.tap("TAG1")
    await station.until(lambda: len(answered) == 5, timeout=30, what="the fifth StartTransaction")
    starts = csms.calls("StartTransaction")
    # Gap = MessageTimeout (1 s) + RetryInterval (2 s), the same every time: no attempt is counted.
    _assert_gaps(starts, [3, 3, 3, 3])
    assert csms.connection_count == connections  # the same, live connection
    await station.until(lambda: station.st.txs and next(iter(station.st.txs.values())).get("transaction_id") == 41,
                        timeout=5, what="the late-bound id")
    assert station.rt.state()["queue"]["discarded"] == 0
    assert (await station.rt.store.load())["discarded"] == []


async def test_going_offline_during_backoff_pauses_the_clock_and_the_attempt_count(make_station, csms):
    interval = 3
    csms.on("StartTransaction", _refuse)
    station = await make_station(keys={**QUIET, "TransactionMessageRetryInterval": str(interval)})
    await station.plug(1)
    await station.tap("TAG1")
    first = await csms.wait_for("StartTransaction", timeout=10)
    await asyncio.sleep(0.5)
    cut_from = time.monotonic()
    await station.offline()
    cut_to = time.monotonic()
    await asyncio.sleep(interval + 1)  # offline well past the original due time
    await station.online()
    back = time.monotonic()
    second = await csms.wait_for("StartTransaction", timeout=10)
    # The wait left when the link went down is served after it comes back, not skipped.
    left_early, left_late = interval - (cut_to - first.t), interval - (cut_from - first.t)
    waited = second.t - back
    assert left_early - 1.0 <= waited <= left_late + 1.0, (waited, left_early, left_late)
    assert waited >= 1.0, "the retry must not fire at once on reconnect"
    # The lost link was not a failed attempt: two more sends (the 2nd and 3rd), not one.
    await csms.wait_for("StartTransaction", timeout=2 * interval + 5)
    await station.until(lambda: station.rt.state()["queue"]["discarded"] == 1, timeout=5, what="the discard")
    starts = csms.calls("StartTransaction")
    assert len(starts) == 3
    _assert_gaps(starts[1:], [2 * interval])


async def test_a_call_in_flight_when_the_link_drops_is_resent_and_not_counted(make_station, csms):
    # With TransactionMessageAttempts 1 a single failure would discard the message, so
    # a resend after reconnect proves the lost link did not count as one (§3.7.1).
    sent = []

    def silent_once(payload: dict):
        sent.append(payload)
        return NO_REPLY if len(sent) == 1 else {"transactionId": 77, "idTagInfo": {"status": "Accepted"}}

    csms.on("StartTransaction", silent_once)
    station = await make_station(keys={**QUIET, "TransactionMessageAttempts": "1"})
    await station.plug(1)
    await station.tap("TAG1")
    await csms.wait_for("StartTransaction", timeout=10)
    await station.offline()
    await station.online()
    again = await csms.wait_for("StartTransaction", timeout=10)
    assert again.payload == sent[0]
    await station.tap("TAG1")
    stop = await csms.wait_for("StopTransaction", timeout=10)
    assert stop.payload["transactionId"] == 77
    assert (await station.rt.store.load())["discarded"] == []
