"""The optional profiles' rules in the pure station core, against a fake clock.

Reservation (spec §5.13, §6.37; reference §4.5), Local Auth List Management (§5.10,
§5.15; reference §3.3 item 7), Remote Trigger (§5.17; errata 3.35) and how a smart
charging limit is applied (§3.13). The same cases run end to end in tests/octt/; here
the timing rules (expiry, "keeps one connector free") are pinned down exactly.
"""

from __future__ import annotations

from datetime import timedelta

from tests.core.harness import T0, Harness
from twin.core import actions as A
from twin.core.timeutil import ts

ZERO = {"ReserveConnectorZeroSupported": "true"}


def reserve(h: Harness, cid: int, tag: str = "TAG1", rid: int = 1, seconds: float = 600, **extra) -> str:
    payload = {"connectorId": cid, "expiryDate": ts(h.now + timedelta(seconds=seconds)), "idTag": tag,
               "reservationId": rid, **extra}
    return h.csms("ReserveNow", payload).payload["status"]


def start_of(h: Harness, since: int = 0) -> dict:
    return h.calls("StartTransaction", since)[-1].payload


# --------------------------------------------------------------------------- reservation: expiry
def test_reservation_expires_exactly_at_expiry_date_with_status_available():
    h = Harness().boot()
    assert reserve(h, 1, seconds=30) == "Accepted"
    assert h.status(1) == "Reserved"
    m = h.mark()
    h.advance(29.9)
    assert h.status(1) == "Reserved" and not h.calls(since=m)
    h.advance(0.1)
    assert h.statuses(1, m) == ["Available"]  # §5.13: SN that the connector is available
    assert not h.st.reservations.items
    assert ("kv_del", "reservations", "1") in h.ops


def test_expiry_is_a_deadline_of_the_core():
    h = Harness().boot()
    reserve(h, 2, seconds=45)
    assert h.st.next_deadline() <= T0 + timedelta(seconds=45)


def test_expired_reservation_no_longer_refuses_other_tags():
    h = Harness().boot()
    reserve(h, 1, seconds=5)
    h.advance(5)
    m = h.mark()
    h.plug(1)
    h.tap("TAG2")
    assert "reservationId" not in start_of(h, m) and h.status(1) == "Charging"


# --------------------------------------------------------------------------- reservation: use
def test_reserved_tag_starts_with_reservation_id_and_ends_the_reservation():
    h = Harness().boot()
    reserve(h, 1, rid=7)
    h.plug(1)
    h.tap("TAG1")
    assert start_of(h)["reservationId"] == 7 and start_of(h)["idTag"] == "TAG1"
    assert not h.st.reservations.items and h.status(1) == "Charging"


def test_other_tag_cannot_start_on_a_reserved_connector():
    h = Harness().boot()
    reserve(h, 1)
    h.plug(1)
    m = h.mark()
    h.tap("TAG2")
    assert not h.calls("StartTransaction") and not h.calls("Authorize", m)  # no parent to learn
    # §4.9: the cable alone does not leave Reserved; only the reserved identity does.
    assert h.status(1) == "Reserved" and h.st.reservations.items


def test_other_tag_taps_while_one_connector_is_reserved_goes_to_the_free_one():
    h = Harness().boot()
    reserve(h, 1)
    h.tap("TAG2")
    assert h.status(2) == "Preparing" and h.status(1) == "Reserved"
    h.plug(2)
    assert start_of(h)["connectorId"] == 2 and "reservationId" not in start_of(h)


def test_parent_id_tag_is_learned_with_authorize_before_choosing_the_connector():
    h = Harness().boot()
    h.id_tags["TAG2"] = {"status": "Accepted", "parentIdTag": "P"}
    reserve(h, 1, rid=3, parentIdTag="P")
    m = h.mark()
    h.tap("TAG2")
    assert [s.payload["idTag"] for s in h.calls("Authorize", m)] == ["TAG2"]
    assert h.status(1) == "Preparing"  # the reserved connector, not the free one
    h.plug(1)
    assert start_of(h)["reservationId"] == 3 and start_of(h)["idTag"] == "TAG2"


def test_parent_id_tag_from_the_local_list_needs_no_authorize():
    h = Harness({"LocalPreAuthorize": "true"}).boot()
    h.csms("SendLocalList", {"listVersion": 1, "updateType": "Full", "localAuthorizationList": [
        {"idTag": "TAG2", "idTagInfo": {"status": "Accepted", "parentIdTag": "P"}}]})
    reserve(h, 1, rid=4, parentIdTag="P")
    m = h.mark()
    h.plug(1)
    h.tap("TAG2")
    assert not h.calls("Authorize", m)
    assert start_of(h)["reservationId"] == 4


def test_tag_with_a_different_parent_is_refused_after_authorize():
    h = Harness().boot()
    h.id_tags["TAG3"] = {"status": "Accepted", "parentIdTag": "Q"}
    reserve(h, 1, parentIdTag="P")
    h.plug(1)
    h.tap("TAG3")
    assert h.calls("Authorize") and not h.calls("StartTransaction")


def test_remote_start_on_reserved_connector():
    h = Harness().boot()
    reserve(h, 1, rid=9)
    assert h.csms("RemoteStartTransaction", {"connectorId": 1, "idTag": "TAG2"}).payload["status"] == "Rejected"
    assert h.csms("RemoteStartTransaction", {"connectorId": 1, "idTag": "TAG1"}).payload["status"] == "Accepted"
    h.plug(1)
    assert start_of(h)["reservationId"] == 9


# --------------------------------------------------------------------------- reservation: statuses
def test_reserve_now_statuses():
    h = Harness().boot()
    assert reserve(h, 3) == "Rejected"  # no such connector
    assert reserve(h, 0) == "Rejected"  # ReserveConnectorZeroSupported=false (iEVQC33)
    h.plug(1)
    assert reserve(h, 1, rid=1) == "Occupied"
    h.run(h.st.fault(2, "GroundFailure", None, h.now))
    assert reserve(h, 2, rid=2) == "Faulted"
    h.run(h.st.clear_fault(2, h.now))
    h.csms("ChangeAvailability", {"connectorId": 2, "type": "Inoperative"})
    assert reserve(h, 2, rid=3) == "Unavailable"
    assert not h.st.reservations.items


def test_reserve_now_replaces_on_the_same_reservation_id():
    h = Harness().boot()
    assert reserve(h, 1, "TAG1", rid=5) == "Accepted"
    assert reserve(h, 2, "TAG9", rid=5) == "Accepted"
    assert h.status(1) == "Available" and h.status(2) == "Reserved"
    assert h.st.reservations.items[5].id_tag == "TAG9"
    assert reserve(h, 2, "TAG1", rid=6) == "Occupied"  # reserved under another id


def test_reserve_now_refused_without_the_reservation_profile():
    h = Harness({"SupportedFeatureProfiles": "Core,LocalAuthListManagement,SmartCharging"}).boot()
    assert reserve(h, 1) == "Rejected"


def test_cancel_reservation():
    h = Harness().boot()
    reserve(h, 1, rid=8)
    m = h.mark()
    assert h.csms("CancelReservation", {"reservationId": 9}).payload == {"status": "Rejected"}
    assert h.status(1) == "Reserved"
    assert h.csms("CancelReservation", {"reservationId": 8}).payload == {"status": "Accepted"}
    assert h.statuses(1, m) == ["Available"]


# --------------------------------------------------------------------------- reservation: ends on Faulted / Unavailable
def test_faulted_connector_ends_its_reservation():
    h = Harness().boot()
    reserve(h, 1)
    m = h.mark()
    h.run(h.st.fault(1, "GroundFailure", None, h.now))
    h.run(h.st.clear_fault(1, h.now))
    assert h.statuses(1, m) == ["Faulted", "Available"] and not h.st.reservations.items


def test_unavailable_connector_ends_its_reservation():
    h = Harness().boot()
    reserve(h, 2)
    h.csms("ChangeAvailability", {"connectorId": 2, "type": "Inoperative"})
    h.csms("ChangeAvailability", {"connectorId": 2, "type": "Operative"})
    assert h.status(2) == "Available" and not h.st.reservations.items


def test_station_fault_ends_every_reservation():
    h = Harness(ZERO).boot()
    reserve(h, 1, rid=1)
    reserve(h, 0, rid=2)
    h.run(h.st.fault(0, "OtherError", "station", h.now))
    h.run(h.st.clear_fault(0, h.now))
    assert not h.st.reservations.items
    assert h.status(1) == h.status(2) == "Available"


def test_station_unavailable_ends_every_reservation():
    h = Harness(ZERO).boot()
    reserve(h, 2, rid=1)
    reserve(h, 0, rid=2)
    h.csms("ChangeAvailability", {"connectorId": 0, "type": "Inoperative"})
    h.csms("ChangeAvailability", {"connectorId": 0, "type": "Operative"})
    assert not h.st.reservations.items
    assert h.status(1) == h.status(2) == "Available"


# --------------------------------------------------------------------------- reservation: connector 0
def test_connector_zero_reservation_keeps_one_connector_free():
    h = Harness(ZERO).boot()
    assert reserve(h, 0, "TAG1", rid=20) == "Accepted"
    assert h.status(1) == h.status(2) == "Available"  # two free, one is enough
    h.plug(1)
    h.tap("TAG2")  # someone else takes connector 1
    assert start_of(h)["idTag"] == "TAG2" and "reservationId" not in start_of(h)
    assert h.status(2) == "Reserved"  # the last free one is now kept for TAG1
    assert reserve(h, 0, "TAG3", rid=21) == "Occupied"
    assert reserve(h, 2, "TAG3", rid=22) == "Occupied"  # not even as a connector reservation
    m = h.mark()
    h.plug(2)
    h.tap("TAG3")
    assert not h.calls("StartTransaction", m)  # TAG3 may not take the kept connector
    h.tap("TAG1")
    assert start_of(h, m)["connectorId"] == 2 and start_of(h, m)["reservationId"] == 20
    assert not h.st.reservations.items


def test_connector_zero_reservation_holds_a_plugged_last_connector():
    h = Harness(ZERO).boot()
    h.csms("ChangeAvailability", {"connectorId": 2, "type": "Inoperative"})
    reserve(h, 0, "TAG1", rid=23)
    assert h.status(1) == "Reserved"
    h.plug(1)
    h.tap("TAG2")
    assert not h.calls("StartTransaction")  # the only connector left is kept for TAG1
    h.tap("TAG1")
    assert start_of(h)["reservationId"] == 23 and start_of(h)["idTag"] == "TAG1"


def test_connector_zero_reservation_used_while_two_connectors_are_free():
    # §5.13: the reservation ends when a transaction for its tag starts on any connector.
    h = Harness(ZERO).boot()
    reserve(h, 0, "TAG1", rid=24)
    h.tap("TAG1")
    h.plug(1)
    assert start_of(h)["reservationId"] == 24
    assert not h.st.reservations.items and h.status(2) == "Available"


def test_connector_zero_reservation_remote_start():
    h = Harness(ZERO).boot()
    h.csms("ChangeAvailability", {"connectorId": 2, "type": "Inoperative"})
    reserve(h, 0, "TAG1", rid=25)
    assert h.csms("RemoteStartTransaction", {"connectorId": 1, "idTag": "TAG2"}).payload["status"] == "Rejected"
    assert h.csms("RemoteStartTransaction", {"connectorId": 1, "idTag": "TAG1"}).payload["status"] == "Accepted"
    h.plug(1)
    assert start_of(h)["reservationId"] == 25


def test_connector_zero_reservation_statuses():
    h = Harness(ZERO).boot()
    h.plug(1)
    h.plug(2)
    assert reserve(h, 0, rid=1) == "Occupied"
    h.unplug(1)
    h.unplug(2)
    h.csms("ChangeAvailability", {"connectorId": 0, "type": "Inoperative"})
    assert reserve(h, 0, rid=2) == "Unavailable"
    h.csms("ChangeAvailability", {"connectorId": 0, "type": "Operative"})
    h.run(h.st.fault(0, "OtherError", None, h.now))
    assert reserve(h, 0, rid=3) == "Faulted"


def test_connector_zero_reservation_expires():
    h = Harness(ZERO).boot()
    h.csms("ChangeAvailability", {"connectorId": 2, "type": "Inoperative"})
    reserve(h, 0, rid=26, seconds=10)
    m = h.mark()
    h.advance(10)
    assert h.statuses(1, m) == ["Available"] and not h.st.reservations.items


# --------------------------------------------------------------------------- reservation: persistence
def test_reservations_survive_a_restart():
    h = Harness().boot()
    reserve(h, 2, rid=30, seconds=120)
    records = {op[2]: op[3] for op in h.ops if op[:2] == ("kv_put", "reservations")}
    h2 = Harness(state={"kv": {"reservations": records}}, now=h.now).boot()
    assert h2.status(2) == "Reserved"
    m = h2.mark()
    h2.advance(120)
    assert h2.statuses(2, m) == ["Available"]  # the stored expiry still holds


# --------------------------------------------------------------------------- local auth list
def sll(h: Harness, version: int, update: str = "Full", items: list | None = None) -> str:
    payload: dict = {"listVersion": version, "updateType": update}
    if items is not None:
        payload["localAuthorizationList"] = items
    return h.csms("SendLocalList", payload).payload["status"]


def test_local_list_version_rules():
    h = Harness().boot()
    assert h.csms("GetLocalListVersion", {}).payload == {"listVersion": 0}
    assert sll(h, 1, "Full") == "Accepted"
    assert h.csms("GetLocalListVersion", {}).payload == {"listVersion": 0}  # empty list reads 0
    assert sll(h, 2, "Full", [{"idTag": "A", "idTagInfo": {"status": "Accepted"}}]) == "Accepted"
    assert sll(h, 2, "Differential", [{"idTag": "B", "idTagInfo": {"status": "Accepted"}}]) == "VersionMismatch"
    assert sll(h, 1, "Full", [{"idTag": "C", "idTagInfo": {"status": "Accepted"}}]) == "Accepted"  # Full: any version
    assert h.csms("GetLocalListVersion", {}).payload == {"listVersion": 1}
    h.csms("ChangeConfiguration", {"key": "LocalAuthListEnabled", "value": "false"})
    assert h.csms("GetLocalListVersion", {}).payload == {"listVersion": -1}


def test_local_list_overflow_fails_and_changes_nothing():
    h = Harness({"SendLocalListMaxLength": "2", "LocalAuthListMaxLength": "3"}).boot()
    ok = [{"idTag": t, "idTagInfo": {"status": "Accepted"}} for t in ("A", "B")]
    assert sll(h, 1, "Full", ok) == "Accepted"
    before = len(h.ops)
    assert sll(h, 2, "Full", ok + [{"idTag": "C", "idTagInfo": {"status": "Accepted"}}]) == "Failed"
    more = [{"idTag": t, "idTagInfo": {"status": "Accepted"}} for t in ("C", "D")]
    assert sll(h, 2, "Differential", more) == "Failed"  # 4 > LocalAuthListMaxLength
    assert len(h.ops) == before  # nothing written
    assert set(h.st.local_list.entries) == {"A", "B"} and h.st.local_list.version == 1


def test_local_list_has_priority_over_cache_offline():
    h = Harness({"LocalAuthorizeOffline": "true"}).boot()
    h.csms("ChangeConfiguration", {"key": "LocalAuthListEnabled", "value": "false"})
    h.csms("SendLocalList", {"listVersion": 1, "updateType": "Full"})  # NotSupported while disabled
    h.tap("T")  # Authorize: Accepted -> cached
    h.tap("T")  # cancel
    assert h.st.cache.get("T")["status"] == "Accepted"
    h.csms("ChangeConfiguration", {"key": "LocalAuthListEnabled", "value": "true"})
    assert sll(h, 1, "Full", [{"idTag": "T", "idTagInfo": {"status": "Blocked"}}]) == "Accepted"
    assert h.st.cache.get("T") is None  # the list takes it over: listed ids are never cached
    h.go_offline()
    h.plug(1)
    h.tap("T")
    assert h.st.connectors[1].tx is None  # Blocked in the list wins


# --------------------------------------------------------------------------- remote trigger
def test_trigger_reply_comes_before_the_triggered_message():
    h = Harness().boot()
    acts = h.st.csms_call("u1", "TriggerMessage", {"requestedMessage": "StatusNotification", "connectorId": 1}, h.now)
    kinds = [type(a).__name__ for a in acts if isinstance(a, (A.Reply, A.Send))]
    assert kinds[:2] == ["Reply", "Send"]


def test_trigger_boot_notification_rejected_once_accepted():
    h = Harness().boot()
    m = h.mark()
    assert h.csms("TriggerMessage", {"requestedMessage": "BootNotification"}).payload == {"status": "Rejected"}
    assert not h.calls("BootNotification", m)


def test_trigger_diagnostics_and_firmware_status_idle_unless_busy():
    h = Harness().boot()
    m = h.mark()
    h.csms("TriggerMessage", {"requestedMessage": "DiagnosticsStatusNotification"})
    h.csms("TriggerMessage", {"requestedMessage": "FirmwareStatusNotification"})
    assert [s.payload for s in h.calls(since=m)] == [{"status": "Idle"}, {"status": "Idle"}]
    h.run(h.st.send_firmware_status("Downloading", h.now))
    h.run(h.st.send_diagnostics_status("Uploaded", h.now))
    m = h.mark()
    h.csms("TriggerMessage", {"requestedMessage": "FirmwareStatusNotification"})
    h.csms("TriggerMessage", {"requestedMessage": "DiagnosticsStatusNotification"})
    # Downloading is in progress; Uploaded is finished, so nothing is in progress: Idle.
    assert [s.payload for s in h.calls(since=m)] == [{"status": "Downloading"}, {"status": "Idle"}]


def test_trigger_rejects_unknown_connector():
    h = Harness().boot()
    for what in ("MeterValues", "StatusNotification"):
        r = h.csms("TriggerMessage", {"requestedMessage": what, "connectorId": 3})
        assert r.payload == {"status": "Rejected"}


# --------------------------------------------------------------------------- smart charging limit applied
def tx_profile(limit: float, pid: int = 1) -> dict:
    return {"connectorId": 1, "csChargingProfiles": {
        "chargingProfileId": pid, "stackLevel": 0, "chargingProfilePurpose": "TxProfile",
        "chargingProfileKind": "Relative",
        "chargingSchedule": {"chargingRateUnit": "A", "chargingSchedulePeriod": [{"startPeriod": 0, "limit": limit}]}}}


def test_limit_zero_opens_the_contactor_and_reports_suspended_evse():
    h = Harness().boot()
    h.plug(1)
    h.tap("TAG1")
    assert h.relays[1] is True
    m = h.mark()
    assert h.csms("SetChargingProfile", tx_profile(0.0)).payload == {"status": "Accepted"}
    assert h.relays[1] is False and h.statuses(1, m) == ["SuspendedEVSE"]
    assert h.st.evse_view(1).contactor_closed is False and h.st.evse_view(1).offered_a == 0.0
    assert not h.calls("StopTransaction", m)
    h.csms("ClearChargingProfile", {"id": 1})
    assert h.relays[1] is True and h.status(1) == "Charging"


def test_the_evse_view_offers_at_most_the_limit():
    """What the (simulated) EV sees: the pilot's offer follows the applied limit."""
    h = Harness().boot()
    h.plug(1)
    h.tap("TAG1")
    assert h.st.evse_view(1).offered_a == 32.0
    h.csms("SetChargingProfile", tx_profile(10.0))
    assert h.st.connectors[1].limit_a == 10.0 and h.st.evse_view(1).offered_a == 10.0


def test_relative_profile_ending_lifts_the_limit_at_the_right_second():
    h = Harness().boot()
    h.plug(1)
    h.tap("TAG1")
    prof = tx_profile(8.0)
    prof["csChargingProfiles"]["chargingSchedule"]["duration"] = 60
    h.csms("SetChargingProfile", prof)
    assert h.st.connectors[1].limit_a == 8.0
    h.advance(59)
    assert h.st.connectors[1].limit_a == 8.0
    h.advance(1)
    assert h.st.connectors[1].limit_a is None  # the schedule ended: nothing limits
