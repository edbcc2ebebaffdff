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
