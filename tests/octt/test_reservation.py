"""OCTT 1.6 Reservation cases (TC_046_x to TC_053) against the loopback CSMS.

Rules: spec §5.13, §6.37, §9.3.1; reference ../shared/reference/ocpp16-conformance.md
§2, §3.3 item 8 and §4.5. The station runs with its real store and link; only the
hardware is simulated. Expiry times are a few seconds so the set stays fast.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import pytest

from twin.core.timeutil import ts

RESERVE_ZERO = {"ReserveConnectorZeroSupported": "true"}
PROFILES_WITHOUT_RESERVATION = "Core,FirmwareManagement,LocalAuthListManagement,SmartCharging,RemoteTrigger"


def expiry(seconds: float = 600) -> str:
    return ts(datetime.now(UTC) + timedelta(seconds=seconds))


async def reserve(csms, cid: int, tag: str = "TAG1", rid: int = 1, seconds: float = 600, **extra) -> str:
    payload = {"connectorId": cid, "expiryDate": expiry(seconds), "idTag": tag, "reservationId": rid, **extra}
    return (await csms.call("ReserveNow", payload))["status"]


async def set_unavailable(csms, cid: int) -> None:
    """OCTT reusable state SetConnectorUnavailable / SetChargePointUnavailable (cid 0)."""
    assert (await csms.call("ChangeAvailability", {"connectorId": cid, "type": "Inoperative"}))["status"] == "Accepted"
    await csms.wait_for("StatusNotification", {"connectorId": cid, "status": "Unavailable"})


async def started_with_reservation(csms, tag: str, rid: int, cid: int = 1) -> None:
    """StartTransaction on ``cid`` for ``tag``, carrying the reservation it ends (§4.8)."""
    st = await csms.wait_for("StartTransaction", {"connectorId": cid})
    assert st.payload["idTag"] == tag and st.payload["reservationId"] == rid


async def reserved(station, csms, cid: int = 1, tag: str = "TAG1", rid: int = 1, **extra) -> None:
    """OCTT reusable state Reserved."""
    assert await reserve(csms, cid, tag, rid, **extra) == "Accepted"
    await csms.wait_for("StatusNotification", {"connectorId": cid, "status": "Reserved"})


# --------------------------------------------------------------------------- reserve and use
async def test_tc_046_1_reserve_connector_local_start(station, csms):
    await set_unavailable(csms, 2)
    await reserved(station, csms, 1, "TAG1", rid=11)
    mark = csms.mark()
    await station.tap("TAG2")  # another identifier must not start on the reserved connector
    await asyncio.sleep(0.5)
    assert not csms.calls("StatusNotification", after=mark) and station.status(1) == "Reserved"
    await station.tap("TAG1")
    await csms.wait_for("StatusNotification", {"connectorId": 1, "status": "Preparing"})
    await station.plug(1)
    await started_with_reservation(csms, "TAG1", 11)
    await csms.wait_for("StatusNotification", {"connectorId": 1, "status": "Charging"})
    assert not station.st.reservations.items  # a transaction for the reserved tag ends it (§5.13)


async def test_tc_046_2_reserve_connector_remote_start(station, csms):
    await reserved(station, csms, 1, "TAG1", rid=12)
    mark = len(csms.messages)
    await station.plug(1)
    # §4.9: Reserved -> Preparing only when the reserved identity is presented, not on plug-in.
    await asyncio.sleep(0.3)
    assert station.status(1) == "Reserved"
    assert (await csms.call("RemoteStartTransaction", {"connectorId": 1, "idTag": "TAG1"}))["status"] == "Accepted"
    await started_with_reservation(csms, "TAG1", 12)
    await csms.wait_for("StatusNotification", {"connectorId": 1, "status": "Charging"})  # from Reserved (TC_046_2)
    assert not [m for m in csms.calls("StatusNotification", after=mark) if m.payload["connectorId"] == 1
                and m.payload["status"] == "Preparing"]


async def test_remote_start_for_another_tag_on_a_reserved_connector_is_rejected(station, csms):
    await reserved(station, csms, 1, "TAG1")
    r = await csms.call("RemoteStartTransaction", {"connectorId": 1, "idTag": "TAG2"})
    assert r["status"] == "Rejected" and station.status(1) == "Reserved"


async def test_tc_047_reservation_expires(station, csms):
    assert await reserve(csms, 1, "TAG1", rid=13, seconds=2) == "Accepted"
    reserved_sn = await csms.wait_for("StatusNotification", {"connectorId": 1, "status": "Reserved"})
    available = await csms.wait_for("StatusNotification", {"connectorId": 1, "status": "Available"}, timeout=5)
    assert available.t - reserved_sn.t >= 1.0  # not before the expiry
    assert not station.st.reservations.items
    # The connector is free for anyone again: a transaction with another tag, no reservationId.
    await station.plug(1)
    await station.tap("TAG2")
    st = await csms.wait_for("StartTransaction", {"connectorId": 1, "idTag": "TAG2"})
    assert "reservationId" not in st.payload


# --------------------------------------------------------------------------- refusals on a connector
async def test_tc_048_1_reserve_faulted_connector(station, csms):
    await station.rt.fault(1, "OtherError", "test fault")
    await csms.wait_for("StatusNotification", {"connectorId": 1, "status": "Faulted"})
    assert await reserve(csms, 1) == "Faulted"


async def test_tc_048_2_reserve_occupied_connector(station, csms):
    await station.plug(1)
    await csms.wait_for("StatusNotification", {"connectorId": 1, "status": "Preparing"})
    assert await reserve(csms, 1) == "Occupied"


async def test_reserve_connector_already_reserved_for_another_reservation_is_occupied(station, csms):
    await reserved(station, csms, 1, "TAG1", rid=1)
    assert await reserve(csms, 1, "TAG2", rid=2) == "Occupied"  # reference §4.5
    assert await reserve(csms, 1, "TAG1", rid=3) == "Occupied"  # also for the same tag
    assert set(station.st.reservations.items) == {1}


async def test_tc_048_3_reserve_unavailable_connector(station, csms):
    await set_unavailable(csms, 1)
    assert await reserve(csms, 1) == "Unavailable"


async def test_tc_048_4_reserve_without_reservation_profile(make_station, csms):
    # The station honours SupportedFeatureProfiles (R) for Reservation.
    await make_station(keys={"SupportedFeatureProfiles": PROFILES_WITHOUT_RESERVATION})
    assert await reserve(csms, 1) == "Rejected"


async def test_reserve_unknown_connector_is_rejected(station, csms):
    assert await reserve(csms, 3) == "Rejected"


# --------------------------------------------------------------------------- connector 0
async def test_tc_049_reserve_charge_point_connector_zero(make_station, csms):
    station = await make_station(keys=RESERVE_ZERO)
    await set_unavailable(csms, 2)
    assert await reserve(csms, 0, "TAG1", rid=21) == "Accepted"
    # One connector must stay free for TAG1; only connector 1 is free, so it shows Reserved.
    await csms.wait_for("StatusNotification", {"connectorId": 1, "status": "Reserved"})
    await station.plug(1)
    await asyncio.sleep(0.3)
    assert station.status(1) == "Reserved"  # §4.9: a cable does not leave Reserved
    await station.tap("TAG1")
    await started_with_reservation(csms, "TAG1", 21)
    await csms.wait_for("StatusNotification", {"connectorId": 1, "status": "Charging"})
    assert not station.st.reservations.items


async def test_tc_049_connector_zero_reservation_remote_start(make_station, csms):
    station = await make_station(keys=RESERVE_ZERO)
    await set_unavailable(csms, 2)
    assert await reserve(csms, 0, "TAG1", rid=22) == "Accepted"
    await csms.wait_for("StatusNotification", {"connectorId": 1, "status": "Reserved"})
    assert (await csms.call("RemoteStartTransaction", {"connectorId": 1, "idTag": "TAG1"}))["status"] == "Accepted"
    await station.plug(1)
    await started_with_reservation(csms, "TAG1", 22)


async def test_connector_zero_reservation_keeps_one_connector_free(make_station, csms):
    station = await make_station(keys=RESERVE_ZERO)
    assert await reserve(csms, 0, "TAG1", rid=23) == "Accepted"
    await asyncio.sleep(0.3)
    assert station.status(1) == station.status(2) == "Available"  # two free, one needed
    await station.plug(1)  # someone else takes connector 1 ...
    await station.tap("TAG2")
    await csms.wait_for("StartTransaction", {"connectorId": 1, "idTag": "TAG2"})
    # ... so connector 2 is the one kept for TAG1.
    await csms.wait_for("StatusNotification", {"connectorId": 2, "status": "Reserved"})
    assert await reserve(csms, 0, "TAG3", rid=24) == "Occupied"  # no second free connector


async def test_tc_050_1_reserve_charge_point_faulted(make_station, csms):
    station = await make_station(keys=RESERVE_ZERO)
    # SetChargePointFaulted: the control API faults connectors only (1..n), so the
    # station-wide fault goes through the runtime's own event path into the core.
    await station.rt.fault(0, "OtherError", "station fault")
    await csms.wait_for("StatusNotification", {"connectorId": 0, "status": "Faulted"})
    assert await reserve(csms, 0) == "Faulted"


async def test_tc_050_2_reserve_charge_point_occupied(make_station, csms):
    station = await make_station(keys=RESERVE_ZERO)
    for cid in (1, 2):
        await station.plug(cid)
        await csms.wait_for("StatusNotification", {"connectorId": cid, "status": "Preparing"})
    assert await reserve(csms, 0) == "Occupied"


async def test_tc_050_3_reserve_charge_point_unavailable(make_station, csms):
    await make_station(keys=RESERVE_ZERO)
    await set_unavailable(csms, 0)
    assert await reserve(csms, 0) == "Unavailable"


async def test_tc_050_4_reserve_connector_zero_not_supported(station, csms):
    # The iEVQC33 default: ReserveConnectorZeroSupported=false (R) => connector 0 Rejected (§5.13).
    assert await reserve(csms, 0) == "Rejected"
    assert not station.st.reservations.items


async def test_tc_050_4_reserve_connector_zero_without_reservation_profile(make_station, csms):
    await make_station(keys={"SupportedFeatureProfiles": PROFILES_WITHOUT_RESERVATION, **RESERVE_ZERO})
    assert await reserve(csms, 0) == "Rejected"


# --------------------------------------------------------------------------- cancel
async def test_tc_051_cancel_reservation(station, csms):
    await reserved(station, csms, 1, "TAG1", rid=31)
    assert (await csms.call("CancelReservation", {"reservationId": 31}))["status"] == "Accepted"
    await csms.wait_for("StatusNotification", {"connectorId": 1, "status": "Available"})
    await station.plug(1)
    await station.tap("TAG2")
    st = await csms.wait_for("StartTransaction", {"connectorId": 1, "idTag": "TAG2"})
    assert "reservationId" not in st.payload  # TC_051: the later ST omits it
    await csms.wait_for("StatusNotification", {"connectorId": 1, "status": "Charging"})


async def test_tc_052_cancel_reservation_rejected(station, csms):
    await reserved(station, csms, 1, "TAG1", rid=32)
    mark = csms.mark()
    assert (await csms.call("CancelReservation", {"reservationId": 33}))["status"] == "Rejected"
    await asyncio.sleep(0.3)
    assert station.status(1) == "Reserved" and set(station.st.reservations.items) == {32}
    assert not csms.calls("StatusNotification", after=mark)


# --------------------------------------------------------------------------- parentIdTag
async def test_tc_053_1_reserved_connector_used_via_parent_id_tag_local(station, csms):
    csms.id_tags["TAG2"] = {"status": "Accepted", "parentIdTag": "PARENT"}
    await reserved(station, csms, 1, "TAG1", rid=41, parentIdTag="PARENT")
    mark = csms.mark()
    await station.tap("TAG2")  # Authorized state with tag 2: the station must learn its parent
    await csms.wait_for("Authorize", {"idTag": "TAG2"}, after=mark)
    await csms.wait_for("StatusNotification", {"connectorId": 1, "status": "Preparing"})
    await station.plug(1)
    await started_with_reservation(csms, "TAG2", 41)
    await csms.wait_for("StatusNotification", {"connectorId": 1, "status": "Charging"})


@pytest.mark.parametrize("parent", ["PARENT", "OTHER"])
async def test_tc_053_1_parent_id_tag_cable_first(station, csms, parent):
    csms.id_tags["TAG2"] = {"status": "Accepted", "parentIdTag": parent}
    await reserved(station, csms, 1, "TAG1", rid=42, parentIdTag="PARENT")
    await station.plug(1)
    await station.tap("TAG2")
    await csms.wait_for("Authorize", {"idTag": "TAG2"})
    if parent == "PARENT":
        await started_with_reservation(csms, "TAG2", 42)
    else:  # another parent may not use the reservation
        await asyncio.sleep(0.3)
        assert not csms.calls("StartTransaction") and station.st.connectors[1].tx is None


async def test_tc_053_2_reserved_connector_used_via_parent_id_tag_remote(station, csms):
    csms.id_tags["TAG2"] = {"status": "Accepted", "parentIdTag": "PARENT"}
    await reserved(station, csms, 1, "TAG1", rid=43, parentIdTag="PARENT")
    assert (await csms.call("RemoteStartTransaction", {"connectorId": 1, "idTag": "TAG2"}))["status"] == "Accepted"
    await csms.wait_for("Authorize", {"idTag": "TAG2"})
    await station.plug(1)
    await started_with_reservation(csms, "TAG2", 43)


# --------------------------------------------------------------------------- lifecycle
async def test_reservation_replaced_on_the_same_reservation_id(station, csms):
    await reserved(station, csms, 1, "TAG1", rid=51)
    assert await reserve(csms, 2, "TAG1", rid=51) == "Accepted"
    await csms.wait_for("StatusNotification", {"connectorId": 2, "status": "Reserved"})
    await csms.wait_for("StatusNotification", {"connectorId": 1, "status": "Available"})
    assert [r.connector_id for r in station.st.reservations.items.values()] == [2]


async def test_faulted_connector_ends_its_reservation(station, csms):
    await reserved(station, csms, 1, "TAG1", rid=52)
    await station.rt.fault(1, "OtherError", "test fault")
    await csms.wait_for("StatusNotification", {"connectorId": 1, "status": "Faulted"})
    await station.rt.clear_fault(1)
    await csms.wait_for("StatusNotification", {"connectorId": 1, "status": "Available"})
    assert not station.st.reservations.items


async def test_unavailable_connector_ends_its_reservation(station, csms):
    await reserved(station, csms, 1, "TAG1", rid=53)
    await set_unavailable(csms, 1)
    assert (await csms.call("ChangeAvailability", {"connectorId": 1, "type": "Operative"}))["status"] == "Accepted"
    await csms.wait_for("StatusNotification", {"connectorId": 1, "status": "Available"})
    assert not station.st.reservations.items


async def test_reservations_persist_across_restart(station, csms, make_station, tmp_path):
    await reserved(station, csms, 2, "TAG1", rid=54)
    await station.rt.shutdown(graceful=False)
    mark = csms.mark()
    station = await make_station(data_dir=tmp_path / "data")
    await csms.wait_for("StatusNotification", {"connectorId": 2, "status": "Reserved"}, after=mark)
    assert (await csms.call("CancelReservation", {"reservationId": 54}))["status"] == "Accepted"
    await csms.wait_for("StatusNotification", {"connectorId": 2, "status": "Available"})
