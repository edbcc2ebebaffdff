"""Contactor feedback supervision (pure check + the polling supervisor)."""

from __future__ import annotations

from drivers.relay_check import FeedbackCheck, RelaySupervisor
from drivers.sim import SimRelay


def test_mismatch_inside_the_settle_time_is_not_a_fault():
    c = FeedbackCheck(1, timeout_s=0.5)
    assert c.observe(True, False, now=0.0) is None
    assert c.observe(True, False, now=0.49) is None
    assert c.observe(True, True, now=0.5) is None  # closed in time


def test_weld_is_latched_until_reset():
    c = FeedbackCheck(2, timeout_s=0.5)
    c.observe(False, True, now=0.0)
    fault = c.observe(False, True, now=0.6)
    assert fault is not None and fault.kind == "welded" and fault.connector_id == 2
    assert fault.error_code == "PowerSwitchFailure" and fault.vendor_error_code == "ContactorWelded"
    assert c.observe(False, False, now=1.0) is fault  # even if the contact opens later
    assert c.observe(True, True, now=2.0) is fault  # and across new commands
    c.reset()
    assert c.observe(False, False, now=3.0) is None


def test_failed_to_close_clears_when_the_contact_agrees():
    c = FeedbackCheck(1, timeout_s=0.5)
    c.observe(True, False, now=0.0)
    assert c.observe(True, False, now=0.5).kind == "failed_to_close"
    assert c.observe(False, False, now=0.6) is None


def test_a_new_command_restarts_the_settle_time():
    c = FeedbackCheck(1, timeout_s=0.5)
    c.observe(True, False, now=0.0)
    c.observe(False, True, now=0.4)  # commanded open; the contact is still closed
    assert c.observe(False, True, now=0.8) is None  # 0.4 s since the new command
    assert c.observe(False, True, now=0.9).kind == "welded"


def test_no_aux_contact_nothing_to_supervise():
    c = FeedbackCheck(1)
    assert c.observe(True, None, now=99.0) is None


def test_supervisor_reports_appearance_and_reset_once():
    now = [0.0]
    relays = {1: SimRelay(), 2: SimRelay(aux_feedback=False)}
    events = []
    sup = RelaySupervisor(relays, lambda cid, f: events.append((cid, f and f.kind)), timeout_s=0.1, clock=lambda: now[0])
    relays[1].weld()
    for t in (0.0, 0.05, 0.2, 0.3):
        now[0] = t
        sup.poll_once()
    assert events == [(1, "welded")]
    assert list(sup.faults) == [1]
    sup.reset(1)
    sup.reset(1)  # nothing latched any more: no second event
    assert events == [(1, "welded"), (1, None)]


def test_a_failing_fault_handler_does_not_stop_supervision():
    now = [0.0]
    r = SimRelay()
    r.weld()

    def boom(cid, fault):
        raise RuntimeError("handler bug")

    sup = RelaySupervisor({1: r}, boom, timeout_s=0.0, clock=lambda: now[0])
    sup.poll_once()  # logs, does not raise
    assert sup.faults[1].kind == "welded"


# --- the supervisor on a running loop: watched (sim) relays and polled ones -----------------------

import asyncio  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402

from tests.drivers.conftest import until  # noqa: E402


def _timers(loop) -> int:
    return sum(1 for h in loop._scheduled if not h.cancelled())


async def test_a_watched_relay_needs_no_timer_while_nothing_is_settling():
    """A simulated relay says when it changes: an idle station keeps no supervision timer
    and no task (a thousand in one fleet would otherwise poll 4,000 times a second)."""
    loop = asyncio.get_running_loop()
    relays = {1: SimRelay(), 2: SimRelay()}
    events = []
    sup = RelaySupervisor(relays, lambda cid, f: events.append((cid, f and f.kind)), timeout_s=0.1)
    before = _timers(loop)
    await sup.start()
    relays[1].set(True)  # a healthy contactor: the contact follows at once, nothing settles
    await asyncio.sleep(0.05)
    assert sup._task is None and _timers(loop) == before
    await asyncio.sleep(0.3)
    assert events == [] and sup.faults == {}
    await sup.stop()


async def test_a_weld_on_a_watched_relay_is_reported_once_it_has_lasted_the_timeout():
    relays = {1: SimRelay(), 2: SimRelay()}
    events = []
    sup = RelaySupervisor(relays, lambda cid, f: events.append((cid, f and f.kind, time.monotonic())), timeout_s=0.2)
    await sup.start()
    t0 = time.monotonic()
    relays[2].weld()
    await asyncio.sleep(0.1)
    assert events == []  # still inside the settle time
    await until(lambda: events, what="the weld report")
    cid, kind, at = events[0]
    assert (cid, kind) == (2, "welded")
    assert 0.2 <= at - t0 < 0.2 + 0.2  # never before the timeout (and soon after it)
    sup.reset(2)  # a person reset it, but the pole is still welded: found again after the timeout
    assert events[-1][:2] == (2, None)
    await until(lambda: len(events) == 3, what="the weld found again")
    assert events[2][:2] == (2, "welded")
    await sup.stop()


async def test_failed_to_close_on_a_watched_relay_clears_when_the_coil_opens():
    relay = SimRelay()
    events = []
    sup = RelaySupervisor({1: relay}, lambda cid, f: events.append(f and f.kind), timeout_s=0.05)
    await sup.start()
    relay.stick_open()
    relay.set(True)
    await until(lambda: events == ["failed_to_close"], what="failed to close")
    relay.set(False)
    await until(lambda: events == ["failed_to_close", None], what="the fault clearing")
    await sup.stop()


async def test_a_change_from_another_thread_is_sampled_on_the_loop():
    """The loop watchdog opens contactors from its own thread: the report still comes on the
    loop (the station's handler posts to its actor, which only the loop may do)."""
    relay = SimRelay()
    seen = []
    sup = RelaySupervisor({1: relay}, lambda cid, f: seen.append((f and f.kind, threading.get_ident())),
                          timeout_s=0.05)
    await sup.start()
    relay.set(True)
    thread = threading.Thread(target=lambda: (relay.weld(), relay.set(False)))
    thread.start()
    thread.join()
    await until(lambda: seen, what="the weld report")
    assert seen[0] == ("welded", threading.get_ident())
    await sup.stop()


async def test_a_weld_before_the_start_is_found():
    relay = SimRelay()
    relay.weld()
    events = []
    sup = RelaySupervisor({1: relay}, lambda cid, f: events.append(f and f.kind), timeout_s=0.05)
    await sup.start()
    await until(lambda: events == ["welded"], what="the weld report")
    await sup.stop()


async def test_after_stop_a_watched_relay_reports_nothing():
    relay = SimRelay()
    events = []
    sup = RelaySupervisor({1: relay}, lambda cid, f: events.append(f), timeout_s=0.01)
    await sup.start()
    await sup.stop()
    relay.weld()
    await asyncio.sleep(0.1)
    assert events == [] and relay._watchers == []


class _PolledRelay:
    """A relay whose aux contact can change by itself (a real input): no ``watch``."""

    def __init__(self) -> None:
        self.commanded = False
        self.aux = False

    def set(self, closed: bool) -> None:
        self.commanded = closed

    def feedback(self) -> bool | None:
        return self.aux

    def close_driver(self) -> None:
        self.set(False)


async def test_a_relay_without_watch_is_still_polled():
    relay = _PolledRelay()
    events = []
    sup = RelaySupervisor({1: relay}, lambda cid, f: events.append(f and f.kind), timeout_s=0.05, poll_s=0.02)
    await sup.start()
    assert sup._task is not None
    relay.aux = True  # welded, and nothing told the supervisor
    await until(lambda: events == ["welded"], what="the polled weld")
    await sup.stop()
