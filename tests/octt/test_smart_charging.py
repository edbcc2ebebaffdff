"""OCTT 1.6 Smart Charging cases (TC_056 to TC_082) against the loopback CSMS.

Rules: spec §3.13, §5.5, §5.7, §5.16, §7.13 and the errata; reference
../shared/reference/ocpp16-conformance.md §2, §3.3 item 15, §3.4 and §4.6.

Profiles that the cases describe as starting "now" are Absolute with a whole-second
``startSchedule`` taken just before they are sent; ``x`` is then the number of seconds
between that moment and the composite's ``scheduleStart``, so period starts are
checked as ``start - x`` exactly (GetCompositeSchedule is computed from the moment of
the request, errata 3.28/3.29). Limits are in A unless a test says otherwise.
"""

from __future__ import annotations

import asyncio
import math
from datetime import UTC, datetime

import pytest

from tests.octt.test_core import start_charging
from twin.core.timeutil import parse_ts

STATION_MAX_A = 32.0  # the twin's per-connector rating: the "local limit" of TC_067
VOLTS = 230.0


def now_s() -> int:
    return math.floor(datetime.now(UTC).timestamp())


def iso(epoch_s: int) -> str:
    return datetime.fromtimestamp(epoch_s, tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def profile(pid: int, purpose: str, periods: list[tuple[int, float]], *, stack: int = 0, start: int | None = None,
            duration: int | None = None, unit: str = "A", kind: str = "Absolute", tx: int | None = None,
            **extra) -> dict:
    schedule: dict = {"chargingRateUnit": unit,
                      "chargingSchedulePeriod": [{"startPeriod": s, "limit": lim} for s, lim in periods]}
    if duration is not None:
        schedule["duration"] = duration
    if kind == "Absolute":
        schedule["startSchedule"] = iso(now_s() if start is None else start)
    p = {"chargingProfileId": pid, "stackLevel": stack, "chargingProfilePurpose": purpose,
         "chargingProfileKind": kind, "chargingSchedule": schedule, **extra}
    if tx is not None:
        p["transactionId"] = tx
    return p


async def set_profile(csms, cid: int, prof: dict) -> str:
    return (await csms.call("SetChargingProfile", {"connectorId": cid, "csChargingProfiles": prof}))["status"]


async def composite(csms, cid: int, duration: int, unit: str | None = "A") -> dict:
    payload: dict = {"connectorId": cid, "duration": duration}
    if unit is not None:
        payload["chargingRateUnit"] = unit
    return await csms.call("GetCompositeSchedule", payload)


def periods(conf: dict) -> list[tuple[int, float]]:
    return [(p["startPeriod"], p["limit"]) for p in conf["chargingSchedule"]["chargingSchedulePeriod"]]


def offset(conf: dict, start: int) -> int:
    """x: seconds from the profiles' start to the composite's scheduleStart."""
    return math.floor(parse_ts(conf["scheduleStart"]).timestamp()) - start


def shifted(expected: list[tuple[int, float]], x: int) -> list[tuple[int, float]]:
    """OCTT's ``[0:a, s-x:b, ...]``: every period but the first moves x seconds earlier."""
    return [(0 if i == 0 else s - x, lim) for i, (s, lim) in enumerate(expected)]


def connector_state(station, cid: int) -> dict:
    return next(c for c in station.rt.state()["connectors"] if c["id"] == cid)


# --------------------------------------------------------------------------- TxDefault / TxProfile
@pytest.mark.parametrize("unit,limit", [("A", 6.0), ("W", 6000.0)])
async def test_tc_056_tx_default_profile_without_transaction(station, csms, unit, limit):
    start = now_s()
    prof = profile(1, "TxDefaultProfile", [(0, limit)], start=start, duration=300, unit=unit)
    assert await set_profile(csms, 1, prof) == "Accepted"
    conf = await composite(csms, 1, 300, unit)
    assert conf["status"] == "Accepted" and conf["connectorId"] == 1
    assert conf["chargingSchedule"]["duration"] == 300
    assert conf["chargingSchedule"]["chargingRateUnit"] == unit
    assert abs(parse_ts(conf["scheduleStart"]).timestamp() - datetime.now(UTC).timestamp()) <= 2
    x = offset(conf, start)
    # TxDefault for (300 - x) s, then (if x > 0, inside the window) nothing limits: the
    # connector's own rating.
    own = STATION_MAX_A if unit == "A" else STATION_MAX_A * VOLTS * 3
    assert periods(conf) == [p for p in shifted([(0, limit), (300, own)], x) if p[0] < 300]
    assert "startSchedule" not in conf["chargingSchedule"]  # errata 3.57


async def test_tc_057_tx_profile(station, csms):
    tid = await start_charging(station, csms)
    start = now_s()
    assert await set_profile(csms, 1, profile(2, "TxProfile", [(0, 6.0)], start=start, tx=tid)) == "Accepted"
    conf = await composite(csms, 1, 300)
    assert conf["status"] == "Accepted" and conf["chargingSchedule"]["duration"] == 300
    assert periods(conf) == [(0, 6.0)]
    await station.until(lambda: connector_state(station, 1)["limitA"] == 6.0, what="the 6 A limit applied")


async def test_tc_058_1_tx_profile_without_transaction_rejected(station, csms):
    assert await set_profile(csms, 1, profile(3, "TxProfile", [(0, 6.0)], tx=1)) == "Rejected"
    assert (await csms.call("ClearChargingProfile", {}))["status"] == "Unknown"  # nothing was installed


async def test_tc_058_2_tx_profile_wrong_transaction_id_rejected(station, csms):
    tid = await start_charging(station, csms)
    assert await set_profile(csms, 1, profile(4, "TxProfile", [(0, 6.0)], tx=tid + 1)) == "Rejected"
    assert periods(await composite(csms, 1, 60)) == [(0, STATION_MAX_A)]


async def test_tc_082_tx_default_applies_to_the_running_transaction(station, csms):
    await start_charging(station, csms)
    await station.until(lambda: connector_state(station, 1)["offeredA"] == STATION_MAX_A)
    start = now_s()
    assert await set_profile(csms, 1, profile(5, "TxDefaultProfile", [(0, 10.0)], start=start)) == "Accepted"
    assert periods(await composite(csms, 1, 120)) == [(0, 10.0)]
    # Errata 3.8: a new TxDefault applies to a running transaction that has no TxProfile.
    await station.until(lambda: connector_state(station, 1)["limitA"] == 10.0, what="the 10 A limit applied")
    assert connector_state(station, 1)["offeredA"] == 10.0


async def test_tc_059_remote_start_with_tx_profile(station, csms):
    start = now_s()
    prof = profile(6, "TxProfile", [(0, 7.0), (60, 9.0)], start=start, duration=120)
    r = await csms.call("RemoteStartTransaction", {"connectorId": 1, "idTag": "TAG1", "chargingProfile": prof})
    assert r["status"] == "Accepted"
    await station.plug(1)
    await csms.wait_for("StartTransaction", {"connectorId": 1, "idTag": "TAG1"})
    await csms.wait_for("StatusNotification", {"connectorId": 1, "status": "Charging"})
    conf = await composite(csms, 1, 200)
    x = offset(conf, start)
    # While the transaction has a TxProfile, TxDefault is out; after its 120 s nothing limits.
    assert periods(conf) == shifted([(0, 7.0), (60, 9.0), (120, STATION_MAX_A)], x)
    await station.until(lambda: connector_state(station, 1)["limitA"] == 7.0, what="the 7 A limit applied")


async def test_tc_060_remote_start_with_other_purpose_rejected(station, csms):
    prof = profile(7, "TxDefaultProfile", [(0, 7.0)])
    r = await csms.call("RemoteStartTransaction", {"connectorId": 1, "idTag": "TAG1", "chargingProfile": prof})
    assert r["status"] == "Rejected"
    await asyncio.sleep(0.3)
    assert not csms.calls("StartTransaction") and station.status(1) == "Available"


# --------------------------------------------------------------------------- stacking and the composite
async def test_tc_066_get_composite_schedule(station, csms):
    tid = await start_charging(station, csms)
    start = now_s()
    cp_max = profile(11, "ChargePointMaxProfile", [(0, 10.0)], start=start, duration=86400)
    tx_default = profile(12, "TxDefaultProfile", [(0, 6.0), (60, 10.0), (120, 8.0), (180, 15.0), (260, 8.0)],
                         start=start, duration=300)
    tx_profile = profile(13, "TxProfile", [(0, 8.0), (50, 11.0), (140, 16.0), (200, 6.0), (240, 12.0)],
                         start=start, duration=260, tx=tid)
    assert await set_profile(csms, 0, cp_max) == "Accepted"
    assert await set_profile(csms, 1, tx_default) == "Accepted"
    assert await set_profile(csms, 1, tx_profile) == "Accepted"
    conf = await composite(csms, 1, 400)
    assert conf["status"] == "Accepted" and conf["chargingSchedule"]["duration"] == 400
    x = offset(conf, start)
    # The spec-literal expectation OCTT lists (reference §3.4): a TxProfile overrules the
    # TxDefaultProfile for the whole transaction (§3.13.1), so after it ends at 260 only the
    # ChargePointMax (10 A) limits. libocpp's per-period merge would add 260:8 and 300:10.
    assert periods(conf) == shifted([(0, 8.0), (50, 10.0), (200, 6.0), (240, 10.0)], x)


async def test_tc_067_clear_charging_profile(station, csms):
    start = now_s()
    assert await set_profile(csms, 1, profile(21, "TxDefaultProfile", [(0, 6.0), (60, 8.0), (200, 10.0)],
                                              stack=1, start=start, duration=400)) == "Accepted"
    assert await set_profile(csms, 1, profile(22, "TxDefaultProfile", [(0, 7.0), (100, 9.0)],
                                              stack=0, start=start)) == "Accepted"
    assert await set_profile(csms, 0, profile(23, "ChargePointMaxProfile", [(0, 11.0), (200, 12.0)],
                                              start=start)) == "Accepted"
    assert (await csms.call("ClearChargingProfile", {"id": 21}))["status"] == "Accepted"
    conf = await composite(csms, 1, 350)
    assert periods(conf) == shifted([(0, 7.0), (100, 9.0)], offset(conf, start))
    r = await csms.call("ClearChargingProfile", {"chargingProfilePurpose": "TxDefaultProfile", "stackLevel": 0})
    assert r["status"] == "Accepted"
    conf = await composite(csms, 1, 350)
    assert periods(conf) == shifted([(0, 11.0), (200, 12.0)], offset(conf, start))
    assert (await csms.call("ClearChargingProfile", {}))["status"] == "Accepted"
    conf = await composite(csms, 1, 350)
    assert conf["status"] == "Accepted" and periods(conf) == [(0, STATION_MAX_A)]  # the local limit
    assert (await csms.call("ClearChargingProfile", {}))["status"] == "Unknown"  # nothing left


async def test_tc_072_stacking_falls_back_when_the_higher_stack_ends(station, csms):
    start = now_s()
    assert await set_profile(csms, 1, profile(31, "TxDefaultProfile", [(0, 6.0), (100, 8.0), (200, 10.0)],
                                              stack=0, start=start, duration=400)) == "Accepted"
    assert await set_profile(csms, 1, profile(32, "TxDefaultProfile", [(0, 7.0), (100, 9.0)],
                                              stack=1, start=start, duration=150)) == "Accepted"
    conf = await composite(csms, 1, 350)
    assert periods(conf) == shifted([(0, 7.0), (100, 9.0), (150, 8.0), (200, 10.0)], offset(conf, start))


async def test_get_composite_schedule_unknown_connector_rejected(station, csms):
    conf = await composite(csms, 3, 60)
    assert conf["status"] == "Rejected"


async def test_charge_point_max_profile_only_on_connector_zero(station, csms):
    assert await set_profile(csms, 1, profile(41, "ChargePointMaxProfile", [(0, 10.0)])) == "Rejected"
    assert await set_profile(csms, 0, profile(41, "ChargePointMaxProfile", [(0, 10.0)])) == "Accepted"


# --------------------------------------------------------------------------- the limit is applied
async def test_ev_draws_at_most_the_limit(station, csms):
    tid = await start_charging(station, csms)
    unlimited = STATION_MAX_A * VOLTS * 3
    await station.until(lambda: connector_state(station, 1)["powerW"] > 8 * VOLTS * 3 + 100,
                        what="the EV to draw more than 8 A before the limit")
    assert connector_state(station, 1)["powerW"] <= unlimited
    assert await set_profile(csms, 1, profile(51, "TxProfile", [(0, 8.0)], tx=tid)) == "Accepted"
    await station.until(lambda: connector_state(station, 1)["limitA"] == 8.0, what="the 8 A limit")
    await station.until(lambda: 0 < connector_state(station, 1)["powerW"] <= 8 * VOLTS * 3,
                        what="the EV to draw at most 8 A x 230 V x 3")
    assert connector_state(station, 1)["offeredA"] == 8.0


async def test_limit_zero_opens_the_contactor_and_suspends(station, csms):
    tid = await start_charging(station, csms)
    assert station.rt.drivers.relays[1].commanded is True
    assert await set_profile(csms, 1, profile(52, "TxProfile", [(0, 0.0)], tx=tid)) == "Accepted"
    await csms.wait_for("StatusNotification", {"connectorId": 1, "status": "SuspendedEVSE"})
    assert station.rt.drivers.relays[1].commanded is False
    await station.until(lambda: connector_state(station, 1)["powerW"] == 0, what="no power at 0 A")
    assert not csms.calls("StopTransaction")  # suspended, not stopped
    assert (await csms.call("ClearChargingProfile", {"id": 52}))["status"] == "Accepted"
    await csms.wait_for("StatusNotification", {"connectorId": 1, "status": "Charging"})
    assert station.rt.drivers.relays[1].commanded is True


async def test_charge_point_max_profile_is_shared_by_both_connectors(station, csms):
    await start_charging(station, csms, cid=1, tag="TAG1")
    assert await set_profile(csms, 0, profile(53, "ChargePointMaxProfile", [(0, 16.0)])) == "Accepted"
    await station.until(lambda: connector_state(station, 1)["limitA"] == 16.0, what="all 16 A to connector 1")
    await start_charging(station, csms, cid=2, tag="TAG2")
    # Two transactions share the station total: 8 A each, never 16 A each.
    await station.until(lambda: connector_state(station, 1)["limitA"] == 8.0
                        and connector_state(station, 2)["limitA"] == 8.0, what="8 A each")
    await station.until(lambda: 0 < connector_state(station, 1)["powerW"] <= 8 * VOLTS * 3
                        and 0 < connector_state(station, 2)["powerW"] <= 8 * VOLTS * 3, what="the EVs to follow")
    total = connector_state(station, 1)["powerW"] + connector_state(station, 2)["powerW"]
    assert total <= 16 * VOLTS * 3
    assert periods(await composite(csms, 0, 60)) == [(0, 16.0)]  # connector 0: the station total
    assert periods(await composite(csms, 1, 60)) == [(0, 8.0)]
    assert periods(await composite(csms, 2, 60)) == [(0, 8.0)]


async def test_tx_profile_removed_when_its_transaction_ends(station, csms):
    tid = await start_charging(station, csms)
    assert await set_profile(csms, 1, profile(54, "TxProfile", [(0, 6.0)], tx=tid)) == "Accepted"
    await station.tap("TAG1")
    await csms.wait_for("StopTransaction", {"transactionId": tid})
    assert periods(await composite(csms, 1, 60)) == [(0, STATION_MAX_A)]  # §3.13.1
    assert (await csms.call("ClearChargingProfile", {"id": 54}))["status"] == "Unknown"


async def test_profiles_persist_across_restart(station, csms, make_station, tmp_path):
    start = now_s()
    assert await set_profile(csms, 0, profile(61, "ChargePointMaxProfile", [(0, 20.0)], start=start)) == "Accepted"
    assert await set_profile(csms, 0, profile(62, "TxDefaultProfile", [(0, 12.0)], start=start,
                                              stack=2)) == "Accepted"
    await station.rt.shutdown(graceful=False)
    station = await make_station(data_dir=tmp_path / "data")  # errata 3.37
    assert periods(await composite(csms, 1, 60)) == [(0, 12.0)]
    assert periods(await composite(csms, 0, 60)) == [(0, 20.0)]
    await start_charging(station, csms)
    await station.until(lambda: connector_state(station, 1)["limitA"] == 12.0, what="the stored limit applied")
