"""The deadline property: after ``tick(now)``, ``next_deadline()`` is None or later than ``now``.

A deadline at or before ``now`` that a tick does not consume is a timer that never fires
and, in the runtime, a loop that never sleeps (a TriggerMessage(BootNotification) while a
BootNotification was unanswered did exactly that). Hypothesis drives random sequences of
station events, CSMS answers that come late or never, and clock movement.
"""

from __future__ import annotations

from datetime import timedelta

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.core.harness import Harness
from twin.core.timeutil import ts

TAGS = ["TAG1", "TAG2", "tag1", ""]

event = st.one_of(
    st.tuples(st.just("plug"), st.integers(1, 2)),
    st.tuples(st.just("unplug"), st.integers(1, 2)),
    st.tuples(st.just("tap"), st.sampled_from(TAGS)),
    st.tuples(st.just("advance"), st.floats(0, 400)),
    st.tuples(st.just("answer"), st.sampled_from(["ok", "error", "timeout", "pending", "rejected"])),
    st.tuples(st.just("link"), st.booleans()),
    st.tuples(st.just("trigger"), st.sampled_from(["BootNotification", "Heartbeat", "StatusNotification",
                                                   "MeterValues"])),
    st.tuples(st.just("csms"), st.sampled_from(["remote_start", "remote_stop", "reserve", "availability",
                                                "msd", "sample", "profile", "cto0", "cancel"])),
    st.tuples(st.just("step_clock"), st.sampled_from([-3600.0, -30.0, 45.0, 7200.0])),
)


def _csms(h: Harness, what: str) -> None:
    if what == "remote_start":
        h.csms("RemoteStartTransaction", {"connectorId": 1, "idTag": "TAG2"})
    elif what == "remote_stop":
        h.csms("RemoteStopTransaction", {"transactionId": 1})
    elif what == "reserve":
        h.csms("ReserveNow", {"connectorId": 1 if h.now.second % 2 else 2, "expiryDate": ts(h.now + timedelta(seconds=90)), "idTag": "TAG1",
                              "reservationId": 4})
    elif what == "availability":
        h.csms("ChangeAvailability", {"connectorId": 0, "type": "Inoperative"})
        h.csms("ChangeAvailability", {"connectorId": 0, "type": "Operative"})
    elif what == "msd":
        h.csms("ChangeConfiguration", {"key": "MinimumStatusDuration", "value": "5"})
    elif what == "sample":
        h.csms("ChangeConfiguration", {"key": "MeterValueSampleInterval", "value": "7"})
        h.csms("ChangeConfiguration", {"key": "ClockAlignedDataInterval", "value": "60"})
    elif what == "cto0":
        h.csms("ChangeConfiguration", {"key": "ConnectionTimeOut", "value": "0"})
    elif what == "cancel":
        h.csms("CancelReservation", {"reservationId": 4})
    elif what == "profile":
        h.csms("SetChargingProfile", {"connectorId": 0, "csChargingProfiles": {
            "chargingProfileId": 9, "stackLevel": 1, "chargingProfilePurpose": "ChargePointMaxProfile",
            "chargingProfileKind": "Absolute", "chargingSchedule": {
                "startSchedule": ts(h.now), "chargingRateUnit": "A", "chargingSchedulePeriod": [
                    {"startPeriod": 0, "limit": 16}, {"startPeriod": 30, "limit": 8}, {"startPeriod": 90, "limit": 20}]}}})


def _answer(h: Harness, how: str) -> None:
    if not h.outstanding:
        return
    ref, send = next(iter(h.outstanding.items()))
    del h.outstanding[ref]
    if how == "error":
        h.run(h.st.call_failed(ref, "CALLERROR InternalError", h.now))
    elif how == "timeout":
        h.run(h.st.call_timed_out(ref, h.now))
    elif send.action == "BootNotification" and how in ("pending", "rejected"):
        status = "Pending" if how == "pending" else "Rejected"
        h.run(h.st.call_result(ref, {"status": status, "currentTime": ts(h.now), "interval": 20}, h.now))
    else:
        h.run(h.st.call_result(ref, h.default_reply(send), h.now))


def _check(h: Harness) -> None:
    h.run(h.st.tick(h.now))
    deadline = h.st.next_deadline()
    assert deadline is None or deadline > h.now, f"deadline {deadline} not after now {h.now}"


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(event, min_size=1, max_size=40))
def test_next_deadline_is_after_now_once_ticked(events):
    h = Harness(auto=False).boot()
    online = True
    for kind, arg in events:
        if kind == "plug":
            h.plug(arg)
        elif kind == "unplug":
            h.unplug(arg)
        elif kind == "tap":
            h.tap(arg)
        elif kind == "advance":
            h.now += timedelta(seconds=arg)
        elif kind == "answer":
            _answer(h, arg)
        elif kind == "link":
            if arg and not online:
                h.go_online()
            elif not arg and online:
                h.go_offline()
            online = arg
        elif kind == "trigger":
            h.csms("TriggerMessage", {"requestedMessage": arg})
        elif kind == "csms":
            _csms(h, arg)
        elif kind == "step_clock":
            h.now += timedelta(seconds=arg)
            h.run(h.st.clock_stepped(arg, h.now))
        _check(h)
