"""Regressions for the independent review of commit 733ebda (the core's share of it).

Each test names the finding it pins down and states what the specification expects; the
regressions fail on 733ebda (checked), the companion checks that guard the other side of a
rule (a valid list entry still authorizes, a local stop keeps its tag, Pending may trigger)
pass there too. The ordering guarantees themselves are tested through the real actor and
store in tests/test_actor.py. The adapter-side findings (the actor, the link, transfers, the control
API, drivers) have their tests beside those modules.
"""

from __future__ import annotations

from datetime import timedelta

from tests.core.harness import Harness, Reading
from twin.core import actions as A
from twin.core.timeutil import ts


def _reserve(h: Harness, cid: int, tag: str, rid: int, **extra) -> str:
    payload = {"connectorId": cid, "expiryDate": ts(h.now + timedelta(minutes=10)), "idTag": tag,
               "reservationId": rid, **extra}
    return h.csms("ReserveNow", payload).payload["status"]


def _charging(h: Harness, tag: str = "TAG1", cid: int = 1) -> None:
    h.plug(cid)
    h.tap(tag)
    assert h.status(cid) == "Charging", h.status(cid)


# ----------------------------------------------------------------------------- A.1
def test_trigger_boot_notification_while_one_is_unanswered_leaves_no_stale_deadline():
    """TriggerMessage(BootNotification) while a BootNotification is in flight set a boot deadline
    that nothing consumed: next_deadline() stayed in the past and the timer loop spun for ever."""
    h = Harness(auto=False).boot()
    assert h.calls("BootNotification")  # in flight, unanswered
    r = h.csms("TriggerMessage", {"requestedMessage": "BootNotification"})
    assert r.payload["status"] == "Accepted"
    for _ in range(3):
        h.run(h.st.tick(h.now))
        deadline = h.st.next_deadline()
        assert deadline is None or deadline > h.now, (deadline, h.now)
    assert len(h.calls("BootNotification")) == 1  # the one in flight is the triggered message
    h.answer("BootNotification")
    assert h.st.registration == "Accepted"


def test_trigger_before_any_boot_notification_conf_sends_nothing_but_the_boot():
    """A.13.9: TriggerMessage(Heartbeat/StatusNotification) with registration None went out with
    force=True, so a Heartbeat could precede the BootNotification (§4.2)."""
    h = Harness(auto=False).boot()
    m = h.mark()
    r = h.csms("TriggerMessage", {"requestedMessage": "Heartbeat"})
    assert r.payload["status"] == "Rejected"
    assert not h.calls("Heartbeat", m)


def test_trigger_in_pending_may_send_status_notification():
    """§4.2: in Pending, TriggerMessage is how the CSMS lets the station send."""
    h = Harness(auto=False).boot()
    h.answer("BootNotification", {"status": "Pending", "currentTime": ts(h.now), "interval": 60})
    m = h.mark()
    assert h.csms("TriggerMessage", {"requestedMessage": "StatusNotification", "connectorId": 1}
                  ).payload["status"] == "Accepted"
    assert h.calls("StatusNotification", m)


# ----------------------------------------------------------------------------- A.3 and typed keys
def test_empty_id_tag_from_remote_start_is_stored_like_any_other():
    """RemoteStartTransaction {"idTag": ""} is schema-valid (no minLength). Its cache and
    transaction ops were refused by the store, faulting the station for good."""
    h = Harness().boot()
    h.plug(1)
    assert h.csms("RemoteStartTransaction", {"connectorId": 1, "idTag": ""}).payload["status"] == "Accepted"
    assert h.status(1) == "Charging"
    assert h.st.station_fault is None
    from twin.store import invalid_ops
    assert invalid_ops(h.ops) == [], invalid_ops(h.ops)


def test_id_tags_compare_case_insensitively():
    """A.13.3: IdToken is CiString20. A local-list entry the CSMS sent as "abcd1234" matches the
    reader's "ABCD1234"; a reservation for "tag1" admits "TAG1"."""
    h = Harness({"LocalAuthorizeOffline": "true"}).boot()
    h.csms("SendLocalList", {"listVersion": 1, "updateType": "Full", "localAuthorizationList": [
        {"idTag": "abcd1234", "idTagInfo": {"status": "Accepted"}}]})
    h.go_offline()
    h.plug(1)
    h.tap("ABCD1234")
    assert h.status(1) == "Charging"
    h.tap("AbCd1234")  # the same card stops it (§3.4)
    assert h.st.connectors[1].tx is None
    h.go_online()
    assert _reserve(h, 2, "tag9", 7) == "Accepted"
    h.plug(2)
    h.tap("TAG9")
    assert h.status(2) == "Charging"
    assert h.calls("StartTransaction")[-1].payload.get("reservationId") == 7


def test_differently_cased_tags_share_one_cache_entry():
    h = Harness().boot()
    h.tap("card-x")
    h.tap("card-x")  # authorize then cancel: cached
    h.tap("CARD-X")
    h.tap("CARD-X")
    assert len(h.st.cache.entries) == 1


def test_maximal_and_non_ascii_id_tags_are_stored():
    h = Harness().boot()
    for tag in ("A" * 20, "Ünïcödé-tag", "\U0001F50C"):
        h.tap(tag)
        h.tap(tag)
    from twin.store import invalid_ops
    assert invalid_ops(h.ops) == []


# ----------------------------------------------------------------------------- A.4
def test_reconnect_after_rejected_waits_for_the_interval():
    """§4.2: after Rejected, the next BootNotification waits for the interval, also when the
    CSMS closes the socket and the station reconnects at once."""
    h = Harness(auto=False).boot()
    h.answer("BootNotification", {"status": "Rejected", "currentTime": ts(h.now), "interval": 300})
    h.go_offline()
    h.now += timedelta(seconds=2)
    m = h.mark()
    h.go_online()
    h.advance(10)
    assert not h.calls("BootNotification", m)
    h.advance(300)
    assert h.calls("BootNotification", m)


def test_rejected_station_does_not_answer_calls_on_a_new_connection():
    h = Harness(auto=False).boot()
    h.answer("BootNotification", {"status": "Rejected", "currentTime": ts(h.now), "interval": 300})
    h.go_offline()
    h.go_online()
    assert h.csms("GetConfiguration", {}) is None  # §4.2: no answers while Rejected


# ----------------------------------------------------------------------------- A.5
def test_reply_comes_after_the_commit_of_what_it_confirms():
    """ChangeAvailability / SendLocalList replied before their Persist: a power cut in between
    lost a change the CSMS had been told was made. The effects order is commit, then reply."""
    h = Harness().boot()
    fx = h.st.csms_call("u1", "ChangeAvailability", {"connectorId": 1, "type": "Inoperative"}, h.now)
    kinds = [type(a).__name__ for a in fx]
    assert "Persist" in kinds and "Reply" in kinds
    assert kinds.index("Persist") < kinds.index("Reply"), kinds
    fx = h.st.csms_call("u2", "SendLocalList", {"listVersion": 5, "updateType": "Full", "localAuthorizationList": [
        {"idTag": "X", "idTagInfo": {"status": "Blocked"}}]}, h.now)
    kinds = [type(a).__name__ for a in fx]
    assert kinds.index("Persist") < kinds.index("Reply"), kinds


def test_one_event_is_one_commit():
    """A tap that stops a session produced two Persist batches (two fsyncs, not atomic)."""
    h = Harness().boot()
    _charging(h)
    fx = h.st.tap("TAG1", h.now)
    assert sum(isinstance(a, A.Persist) for a in fx) == 1
    # The contactor opens before the commit (safety never waits for the disk).
    kinds = [type(a).__name__ for a in fx]
    assert kinds.index("SetRelay") < kinds.index("Persist")


# ----------------------------------------------------------------------------- Reserved and a cable
def test_cable_plugged_into_a_reserved_connector_stays_reserved():
    """§4.9: Reserved -> Preparing only when the reserved identity is presented."""
    h = Harness().boot()
    assert _reserve(h, 1, "TAG1", 3) == "Accepted"
    m = h.mark()
    h.plug(1)
    assert h.status(1) == "Reserved"
    assert "Preparing" not in h.statuses(1, m)
    h.advance(120)  # ConnectionTimeOut does not make it Finishing either
    assert h.status(1) == "Reserved"
    h.tap("TAG1")
    assert h.status(1) == "Charging"
    assert h.calls("StartTransaction")[-1].payload["reservationId"] == 3


# ----------------------------------------------------------------------------- item 10: timeouts
def test_unanswered_transaction_message_on_a_live_link_is_not_an_attempt():
    """A call timeout is not a failure to process: only CALLERRORs count toward
    TransactionMessageAttempts, so a CSMS that drops answers never makes us discard billing data."""
    h = Harness({"TransactionMessageAttempts": "3", "TransactionMessageRetryInterval": "5"}, auto=False).boot()
    h.answer("BootNotification")
    h.answer_all()
    h.plug(1)
    h.auto = True
    h.scripts["StartTransaction"] = lambda p: "silence"
    h.tap("TAG1")
    for _ in range(6):
        ref = next(r for r, s in h.st.pending_calls.items() if s.action == "StartTransaction")
        h.outstanding.pop(ref, None)
        h.run(h.st.call_timed_out(ref, h.now))
        h.advance(6)
    head = h.st.queue.entries[0]
    assert h.st.discarded_count == 0 and head.action == "StartTransaction" and head.attempts == 0


# ----------------------------------------------------------------------------- item 11: fail closed
def test_authorize_callerror_from_a_connected_csms_does_not_authorize_an_unknown_tag():
    """A CALLERROR to Authorize is not "offline": AllowOfflineTxForUnknownId must not apply."""
    h = Harness({"AllowOfflineTxForUnknownId": "true"}).boot()
    h.scripts["Authorize"] = lambda p: RuntimeError("InternalError")
    h.plug(1)
    h.tap("UNKNOWN")
    assert h.st.connectors[1].tx is None and not h.calls("StartTransaction")


def test_authorize_callerror_still_accepts_a_valid_local_list_entry():
    h = Harness({"LocalAuthListEnabled": "true"}).boot()
    h.csms("SendLocalList", {"listVersion": 1, "updateType": "Full", "localAuthorizationList": [
        {"idTag": "LISTED", "idTagInfo": {"status": "Accepted"}}]})
    h.scripts["Authorize"] = lambda p: RuntimeError("InternalError")
    h.plug(1)
    h.tap("LISTED")
    assert h.status(1) == "Charging"


def test_malformed_authorize_conf_fails_closed():
    h = Harness({"AllowOfflineTxForUnknownId": "true"}).boot()
    h.scripts["Authorize"] = lambda p: {"idTagInfo": "yes"}
    h.plug(1)
    h.tap("UNKNOWN")
    assert h.st.connectors[1].tx is None


def test_link_lost_during_authorize_still_decides_offline():
    h = Harness({"AllowOfflineTxForUnknownId": "true"}, auto=False).boot()
    h.answer("BootNotification")
    h.answer_all()
    h.plug(1)
    h.tap("UNKNOWN")
    h.go_offline()  # the Authorize is aborted, not refused: §3.5.4 offline rules
    assert h.status(1) == "Charging"
    assert h.relays.get(1) is True  # A.13.7: the aborted Authorize settles the outputs at once


# ----------------------------------------------------------------------------- item 12: energy
def test_power_loss_stop_uses_the_register_read_at_boot():
    h = Harness({"MeterValueSampleInterval": "0"}).boot()
    h.meter(1, 1000.0)
    _charging(h)
    h.meter(1, 1500.0)
    state = _store_state(h)
    h2 = Harness(state=state)
    h2.run(h2.st.meter_reading(1, Reading(4200.0), h2.now))  # the real meter kept counting
    h2.boot()
    stop = h2.calls("StopTransaction")[-1]
    assert stop.payload["reason"] == "PowerLoss" and stop.payload["meterStop"] == 4200


def test_sim_register_is_persisted_while_charging_without_sample_interval():
    """With MeterValueSampleInterval 0 nothing persisted the register during a session, so a
    power loss billed meterStart."""
    h = Harness({"MeterValueSampleInterval": "0"}).boot()
    h.meter(1, 1000.0)
    _charging(h)
    for i in range(1, 4):
        h.now += timedelta(seconds=61)
        h.meter(1, 1000.0 + 500 * i)
    state = _store_state(h)
    h2 = Harness(state=state).boot()
    stop = h2.calls("StopTransaction")[-1]
    assert stop.payload["reason"] == "PowerLoss" and stop.payload["meterStop"] == 2500


# ----------------------------------------------------------------------------- A.13.10-12
def test_stop_nobody_requested_carries_no_id_tag():
    """§6.49: idTag is the identifier which requested the stop; a remote stop has none."""
    h = Harness().boot()
    _charging(h)
    tid = h.calls("StartTransaction")[-1]
    h.csms("RemoteStopTransaction", {"transactionId": 1})
    stop = h.calls("StopTransaction")[-1]
    assert stop.payload["reason"] == "Remote" and "idTag" not in stop.payload, (tid, stop.payload)


def test_local_stop_carries_the_presenting_tag():
    h = Harness().boot()
    _charging(h)
    h.tap("TAG1")
    stop = h.calls("StopTransaction")[-1]
    assert stop.payload.get("idTag") == "TAG1" and stop.payload.get("reason", "Local") == "Local"


def test_local_list_conflict_is_cleared_by_a_later_no_error():
    h = Harness({"LocalPreAuthorize": "false"}).boot()
    h.csms("SendLocalList", {"listVersion": 1, "updateType": "Full", "localAuthorizationList": [
        {"idTag": "C1", "idTagInfo": {"status": "Accepted"}}]})
    h.id_tags["C1"] = {"status": "Blocked"}
    m = h.mark()
    h.plug(1)
    h.tap("C1")
    sns = [s.payload for s in h.calls("StatusNotification", m) if s.payload["connectorId"] == 0]
    codes = [p["errorCode"] for p in sns]
    assert "LocalListConflict" in codes and codes[-1] == "NoError", codes


def test_start_after_the_reservation_was_cancelled_does_not_name_it():
    h = Harness().boot()
    assert _reserve(h, 1, "TAG1", 5) == "Accepted"
    h.tap("TAG1")  # authorized, waiting for the cable
    assert h.csms("CancelReservation", {"reservationId": 5}).payload["status"] == "Accepted"
    h.plug(1)
    start = h.calls("StartTransaction")[-1]
    assert "reservationId" not in start.payload


# ----------------------------------------------------------------------------- clock steps
def test_backward_clock_step_does_not_stall_heartbeats():
    h = Harness().boot()
    h.csms("ChangeConfiguration", {"key": "HeartbeatInterval", "value": "60"})
    m = h.mark()
    h.now -= timedelta(hours=1)  # NTP steps the clock back an hour
    h.run(h.st.clock_stepped(-3600.0, h.now))
    h.advance(61)
    assert h.calls("Heartbeat", m)


def _store_state(h: Harness) -> dict:
    from tests.core.test_station import _state_from_ops
    return _state_from_ops(h.ops)


# ----------------------------------------------------------------------------- profile quirks
def test_trigger_meter_values_for_connector_0_follows_the_profile_quirk():
    from twin.core.station import StationSpec

    h = Harness().boot()
    assert h.csms("TriggerMessage", {"requestedMessage": "MeterValues", "connectorId": 0}
                  ).payload["status"] == "Rejected"  # the iEVQC33 (§6.51 types connectorId > 0)
    h = Harness(spec=StationSpec(trigger_meter_values_connector_0=True)).boot()
    h.meter(1, 1000.0, 0.0)
    h.meter(2, 2500.0, 0.0)
    m = h.mark()
    assert h.csms("TriggerMessage", {"requestedMessage": "MeterValues", "connectorId": 0}
                  ).payload["status"] == "Accepted"
    mv = h.calls("MeterValues", m)[0].payload
    assert mv["connectorId"] == 0 and "transactionId" not in mv
    energy = [v for v in mv["meterValue"][0]["sampledValue"]
              if v.get("measurand", "Energy.Active.Import.Register") == "Energy.Active.Import.Register"]
    assert float(energy[0]["value"]) == 3500.0


# ----------------------------------------------------------------------------- A.9: the car is not in the core
def test_status_follows_the_measured_power_not_a_model_of_the_car():
    """A.9: on a real meter, a car that stops drawing kept reporting Charging and a car still
    drawing after 48 kWh flipped to SuspendedEV: both came from the simulated EV in the core."""
    h = Harness().boot()
    h.meter(1, 1000.0, 0.0)
    _charging(h)  # the contactor closes: Charging until the meter says otherwise
    h.meter(1, 1000.0, 7000.0)
    h.now += timedelta(seconds=11)  # past the grace time after the first reading behind the close
    h.meter(1, 1001.0, 0.0)  # the car draws nothing (battery full, or it paused)
    assert h.status(1) == "SuspendedEV"
    h.meter(1, 60000.0, 7000.0)  # 59 kWh later it still draws: Charging, whatever a model thinks
    assert h.status(1) == "Charging"


def test_soc_is_reported_only_when_the_meter_measures_it():
    h = Harness({"MeterValueSampleInterval": "10", "MeterValuesSampledData": "Energy.Active.Import.Register,SoC"}
                ).boot()
    _charging(h)
    h.meter(1, 500.0)
    h.advance(10)
    values = h.calls("MeterValues")[-1].payload["meterValue"][0]["sampledValue"]
    assert "SoC" not in {v.get("measurand") for v in values}
    reading = Reading(600.0, 7000.0)
    reading.soc_percent = 55.0  # a DC or ISO 15118 charger is told the SoC
    h.run(h.st.meter_reading(1, reading, h.now))
    h.advance(10)
    values = h.calls("MeterValues")[-1].payload["meterValue"][0]["sampledValue"]
    assert [v["value"] for v in values if v.get("measurand") == "SoC"] == ["55"]


# ----------------------------------------------------------------------------- a second review
def test_connection_timeout_0_on_a_reserved_plugged_connector_leaves_no_stale_deadline():
    """ConnectionTimeOut may be 0; a cable on a reserved connector re-armed its deadline at
    `now` on every tick, so the deadline never passed (the actor then ticked back to back)."""
    h = Harness().boot()
    h.csms("ChangeConfiguration", {"key": "ConnectionTimeOut", "value": "0"})
    assert _reserve(h, 1, "TAG1", 3) == "Accepted"
    h.plug(1)
    for _ in range(3):
        h.run(h.st.tick(h.now))
        deadline = h.st.next_deadline()
        assert deadline is None or deadline > h.now, (deadline, h.now)
    assert h.status(1) == "Reserved"


def test_connection_timeout_0_when_the_reservation_of_a_plugged_connector_expires():
    """Found by the core fuzzer (seed 20262088): the wait that starts when the reservation ends
    was armed in the settle step after tick(now) at `now` itself (ConnectionTimeOut 0), a
    deadline no tick would handle, so the timer loop spun on it."""
    h = Harness().boot()
    h.csms("ChangeConfiguration", {"key": "ConnectionTimeOut", "value": "0"})
    assert _reserve(h, 1, "TAG1", 4) == "Accepted"
    h.plug(1)
    h.now += timedelta(minutes=11)  # past the expiry
    h.run(h.st.tick(h.now))
    deadline = h.st.next_deadline()
    assert deadline is None or deadline > h.now, (deadline, h.now)
    assert h.status(1) == "Finishing"  # the wait for identification is over at once


def test_the_wait_for_identification_starts_when_the_reservation_ends():
    h = Harness({"ConnectionTimeOut": "60"}).boot()
    assert _reserve(h, 1, "TAG1", 3) == "Accepted"
    h.plug(1)
    h.advance(100)  # one ConnectionTimeOut passes while Reserved
    assert h.status(1) == "Reserved"
    h.csms("CancelReservation", {"reservationId": 3})
    assert h.status(1) == "Preparing"
    h.advance(50)
    assert h.status(1) == "Preparing"  # a whole ConnectionTimeOut from the end of the reservation
    h.advance(15)
    assert h.status(1) == "Finishing"


def test_a_reading_sampled_before_the_contactor_closed_does_not_make_it_suspended_ev():
    h = Harness().boot()
    h.meter(1, 1000.0, 0.0)
    _charging(h)
    m = h.mark()
    h.meter(1, 1000.0, 0.0)  # taken while the contactor was still open, processed after the close
    h.now += timedelta(seconds=1)
    h.meter(1, 1001.0, 7000.0)
    assert h.statuses(1, m) == [] and h.status(1) == "Charging"
    h.now += timedelta(seconds=30)
    h.meter(1, 1100.0, 0.0)  # after the grace time, a car that stops drawing is SuspendedEV
    assert h.status(1) == "SuspendedEV"


def test_power_near_the_threshold_does_not_flap():
    h = Harness().boot()
    _charging(h)
    h.now += timedelta(seconds=30)
    h.meter(1, 1000.0, 7000.0)
    m = h.mark()
    for i in range(10):
        h.now += timedelta(seconds=1)
        h.meter(1, 1000.0 + i, 95.0 if i % 2 else 105.0)
    assert h.statuses(1, m) == []
    h.meter(1, 1100.0, float("nan"))  # a broken register says nothing about the car
    assert h.status(1) == "Charging"


def test_energy_is_persisted_after_a_backward_clock_step():
    h = Harness({"MeterValueSampleInterval": "0"}).boot()
    h.meter(1, 1000.0)
    _charging(h)
    h.now -= timedelta(hours=1)
    h.run(h.st.clock_stepped(-3600.0, h.now))
    h.now += timedelta(seconds=61)
    h.meter(1, 2500.0)
    state = _store_state(h)
    assert state["transactions"][1]["last_meter_wh"] == 2500


def test_a_clock_jump_of_years_during_a_session_does_not_hang_the_sampler():
    import time as _time

    h = Harness({"MeterValueSampleInterval": "1"}).boot()
    _charging(h)
    h.now += timedelta(days=365 * 50)
    t0 = _time.monotonic()
    h.run(h.st.tick(h.now))
    assert _time.monotonic() - t0 < 1.0
    deadline = h.st.next_deadline()
    assert deadline is None or deadline > h.now
