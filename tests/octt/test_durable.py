"""OCTT cases of the durable transaction path (issue 3), end to end against the loopback CSMS.

A real station runtime (sim drivers, real SQLite store in the test's data dir, real
websocket link). A "power cycle" is a runtime stopped without any graceful step
(``shutdown(graceful=False)``: no StopTransaction, nothing sent) and a new runtime
on the same data dir: what survives is exactly what the store holds. The process
level kill -9 is tests/test_crash.py.

Sources: OCTT test case document (2024-04) TC_032_2, TC_034, TC_036, TC_037_1/2/3,
TC_038, TC_039; OCPP 1.6 §3.5.2 (LocalListConflict), §3.7 (ordering), §4.9,
errata 3.17 (StopTransactionOnInvalidId also online).
"""

from __future__ import annotations

import asyncio
from datetime import datetime, timezone

from twin.core.timeutil import parse_ts

QUIET = {"MeterValueSampleInterval": "0", "ClockAlignedDataInterval": "0"}
OFFLINE_AUTH = {**QUIET, "LocalAuthorizeOffline": "true", "LocalAuthListEnabled": "true",
                "AuthorizationCacheEnabled": "true", "AllowOfflineTxForUnknownId": "false",
                "MaxEnergyOnInvalidId": "0"}


def _tx_id(value: int):
    """A CSMS StartTransaction handler that hands out ``value`` and Accepted."""
    return lambda payload: {"transactionId": value, "idTagInfo": {"status": "Accepted"}}


def _energy(mv_payload: dict) -> float:
    (value,) = [sv["value"] for sv in mv_payload["meterValue"][0]["sampledValue"]
                if sv.get("measurand", "Energy.Active.Import.Register") == "Energy.Active.Import.Register"]
    return float(value)


def _statuses(csms, cid: int, after: int) -> list[str]:
    return [m.payload["status"] for m in csms.calls("StatusNotification", after=after) if m.payload["connectorId"] == cid]


async def _cut_power(station, csms) -> None:
    """The power goes: no StopTransaction, nothing sent or written on the way down."""
    await station.rt.shutdown(graceful=False)
    await csms.wait_disconnected()


async def _boot_again(make_station, csms, keys: dict):
    """Power back on: a new station on the same data dir. Returns it and the CSMS mark before its boot."""
    mark = csms.mark()
    return await make_station(keys=keys), mark


async def _charging(station, csms, tag: str = "TAG1", cid: int = 1):
    await station.plug(cid)
    await station.tap(tag)
    start = await csms.wait_for("StartTransaction", {"connectorId": cid, "idTag": tag})
    await csms.wait_for("StatusNotification", {"connectorId": cid, "status": "Charging"})
    return start


async def _local_list(csms, tag: str) -> None:
    result = await csms.call("SendLocalList", {"listVersion": 1, "updateType": "Full", "localAuthorizationList": [
        {"idTag": tag, "idTagInfo": {"status": "Accepted"}}]})
    assert result == {"status": "Accepted"}


async def _start_offline(station, tag: str, cid: int = 1) -> None:
    await station.offline()
    await station.plug(cid)
    await station.tap(tag)
    assert station.status(cid) == "Charging"
    assert station.rt.state()["connectors"][cid - 1]["contactorClosed"]


async def test_tc_032_2_power_failure_transaction_stopped_after_reboot_with_power_loss(make_station, csms):
    keys = {"MeterValueSampleInterval": "1", "ClockAlignedDataInterval": "0"}
    csms.on("StartTransaction", _tx_id(3201))
    station = await make_station(keys=keys)
    await _charging(station, csms)
    await csms.wait_for("MeterValues", timeout=5)
    await csms.wait_for("MeterValues", timeout=5)
    await _cut_power(station, csms)
    assert not csms.calls("StopTransaction")
    station, mark = await _boot_again(make_station, csms, keys)
    stop = await csms.wait_for("StopTransaction", timeout=10, after=mark)

    assert len(csms.calls("StopTransaction")) == 1
    assert stop.payload["reason"] == "PowerLoss" and stop.payload["transactionId"] == 3201
    # The last known meter value: the register of the last sample recorded before the
    # cut (samples still queued at the cut are delivered first, in order, §3.7).
    mvs = csms.calls("MeterValues")
    assert all(a.index < stop.index for a in mvs)
    last = max(mvs, key=lambda m: m.payload["meterValue"][0]["timestamp"])
    assert stop.payload["meterStop"] == round(_energy(last.payload))
    assert stop.payload["timestamp"] == last.payload["meterValue"][0]["timestamp"]
    # After reboot: BootNotification, then every connector; the EV is still plugged.
    assert csms.calls(after=mark)[0].action == "BootNotification"
    assert set(_statuses(csms, 1, mark)) <= {"Preparing", "Finishing", "Charging", "Unavailable", "Available"}
    assert _statuses(csms, 1, mark)[-1] == "Finishing"
    assert _statuses(csms, 0, mark) == ["Available"] and _statuses(csms, 2, mark) == ["Available"]
    assert not station.rt.state()["connectors"][0]["contactorClosed"]


async def test_tc_034_power_failure_with_unavailable_status(make_station, csms):
    station = await make_station()
    assert await csms.call("ChangeAvailability", {"connectorId": 0, "type": "Inoperative"}) == {"status": "Accepted"}
    for cid in (0, 1, 2):
        await csms.wait_for("StatusNotification", {"connectorId": cid, "status": "Unavailable"})
    await _cut_power(station, csms)
    station, mark = await _boot_again(make_station, csms, {})
    for cid in (0, 1, 2):
        assert _statuses(csms, cid, mark) == ["Unavailable"], cid
    assert station.status(1) == station.status(2) == "Unavailable"
    assert station.rt.state()["station"]["availability"] == "Inoperative"


async def test_tc_036_connection_loss_during_transaction(make_station, csms):
    interval = 2
    csms.on("StartTransaction", _tx_id(3601))
    station = await make_station(keys={"MeterValueSampleInterval": str(interval), "ClockAlignedDataInterval": "0"})
    await _charging(station, csms)
    await csms.wait_for("MeterValues", timeout=interval + 3)
    await station.offline()
    went_offline = datetime.now(timezone.utc)
    queued_mvs = lambda: sum(e.action == "MeterValues" for e in station.st.queue.entries)  # noqa: E731
    await station.until(lambda: queued_mvs() >= 3, timeout=4 * interval, what="three samples taken offline")
    await station.online()
    back = datetime.now(timezone.utc)
    await csms.wait_for("MeterValues", lambda p: parse_ts(p["meterValue"][0]["timestamp"]) > back,
                        timeout=2 * interval + 3)

    mvs = csms.calls("MeterValues")
    stamps = [parse_ts(m.payload["meterValue"][0]["timestamp"]) for m in mvs]
    # Queued samples are sent in chronological order, before any new one (§3.7).
    assert stamps == sorted(stamps) and len(set(stamps)) == len(stamps)
    offline = [t for t in stamps if went_offline < t < back]
    assert len(offline) >= 3
    # Sampling went on offline with its own timestamps: Δ = MeterValueSampleInterval.
    for a, b in zip(stamps, stamps[1:]):
        assert abs((b - a).total_seconds() - interval) <= 0.5, [t.isoformat() for t in stamps]
    assert all(m.payload["transactionId"] == 3601 for m in mvs)
    contexts = {sv["context"] for m in mvs for sv in m.payload["meterValue"][0]["sampledValue"]}
    assert contexts == {"Sample.Periodic"}
    energies = [_energy(m.payload) for m in mvs]
    assert energies == sorted(energies)


async def test_tc_037_1_offline_start_transaction_with_valid_id_tag(make_station, csms):
    csms.on("StartTransaction", _tx_id(3711))
    station = await make_station(keys=OFFLINE_AUTH)
    await _local_list(csms, "LISTED")
    await _start_offline(station, "LISTED")
    mark = csms.mark()
    await station.online()
    start = await csms.wait_for("StartTransaction", {"connectorId": 1, "idTag": "LISTED"})
    await csms.wait_for("StatusNotification", {"connectorId": 1, "status": "Charging"})  # still sent after reconnect
    assert not csms.calls("Authorize", after=mark)  # the transaction already runs: nothing to ask
    await station.until(lambda: station.rt.state()["connectors"][0]["transactionId"] == 3711, what="transactionId")
    assert start.payload["meterStart"] <= station.rt.state()["connectors"][0]["energyWh"]
    assert station.status(1) == "Charging"


async def test_tc_037_2_offline_start_invalid_id_tag_stop_on_invalid_false_suspends(make_station, csms):
    station = await make_station(keys={**OFFLINE_AUTH, "StopTransactionOnInvalidId": "false"})
    # Memory state IdTagCached: a session online fills the cache with CACHED: Accepted.
    await _charging(station, csms, "CACHED")
    await station.tap("CACHED")
    await csms.wait_for("StopTransaction", {"idTag": "CACHED"})
    await station.unplug(1)
    await csms.wait_for("StatusNotification", {"connectorId": 1, "status": "Available"})
    csms.id_tags["CACHED"] = {"status": "Invalid"}  # the CSMS has since blocked it
    await _start_offline(station, "CACHED")
    mark = csms.mark()
    await station.online()
    start = await csms.wait_for("StartTransaction", {"idTag": "CACHED"})
    await csms.wait_for("StatusNotification", {"connectorId": 1, "status": "Charging"})
    suspended = await csms.wait_for("StatusNotification", {"connectorId": 1, "status": "SuspendedEVSE"})
    assert suspended.index > start.index
    await asyncio.sleep(1)
    assert not csms.calls("StopTransaction", after=mark)  # the transaction is NOT stopped
    state = station.rt.state()["connectors"][0]
    assert state["transactionId"] is not None and not state["contactorClosed"]  # MaxEnergyOnInvalidId 0


async def test_tc_037_3_offline_start_invalid_id_tag_stop_on_invalid_true_deauthorizes(make_station, csms):
    station = await make_station(keys={**OFFLINE_AUTH, "StopTransactionOnInvalidId": "true"})
    await _local_list(csms, "LISTED")
    csms.id_tags["LISTED"] = {"status": "Invalid"}
    await _start_offline(station, "LISTED")
    mark = csms.mark()
    await station.online()
    start = await csms.wait_for("StartTransaction", {"idTag": "LISTED"})
    await csms.wait_for("StatusNotification", {"connectorId": 1, "status": "Charging"})
    stop = await csms.wait_for("StopTransaction", {"reason": "DeAuthorized"})
    finishing = await csms.wait_for("StatusNotification", {"connectorId": 1, "status": "Finishing"})
    assert start.index < stop.index and start.index < finishing.index
    conf = next(m for m in csms.messages if m.kind == "result" and m.unique_id == start.unique_id)
    assert stop.payload["transactionId"] == conf.payload["transactionId"]
    # §3.5.2: the local list said Accepted, the CSMS says Invalid -> LocalListConflict on connector 0.
    await csms.wait_for("StatusNotification", {"connectorId": 0, "errorCode": "LocalListConflict"}, after=mark)
    assert not station.rt.state()["connectors"][0]["contactorClosed"]


async def test_tc_038_offline_stop_transaction(make_station, csms):
    csms.on("StartTransaction", _tx_id(3801))
    station = await make_station(keys=QUIET)
    await _charging(station, csms)
    await station.offline()
    await station.tap("TAG1")
    stopped_at = datetime.now(timezone.utc)
    assert station.status(1) == "Finishing"
    await asyncio.sleep(0.5)
    await station.online()
    stop = await csms.wait_for("StopTransaction", timeout=10)
    await csms.wait_for("StatusNotification", {"connectorId": 1, "status": "Finishing"})
    assert stop.payload["transactionId"] == 3801
    assert stop.payload.get("reason", "Local") == "Local"
    # It carries the time it was stopped offline, not the time it was delivered.
    assert abs((parse_ts(stop.payload["timestamp"]) - stopped_at).total_seconds()) < 0.5


async def test_tc_039_offline_transaction(make_station, csms):
    csms.on("StartTransaction", _tx_id(3901))
    station = await make_station(keys={**QUIET, "AllowOfflineTxForUnknownId": "true", "LocalAuthorizeOffline": "true"})
    await station.offline()
    await station.plug(1)
    await station.tap("NEWCOMER")  # unknown locally: AllowOfflineTxForUnknownId lets it start
    assert station.status(1) == "Charging"
    await asyncio.sleep(0.5)
    await station.tap("NEWCOMER")
    await station.unplug(1)
    assert [e.action for e in station.st.queue.entries] == ["StartTransaction", "StopTransaction"]
    assert all("transactionId" not in e.payload for e in station.st.queue.entries)  # bound at send time only
    mark = csms.mark()
    await station.online()
    start = await csms.wait_for("StartTransaction", {"connectorId": 1, "idTag": "NEWCOMER"})
    stop = await csms.wait_for("StopTransaction")
    assert start.index < stop.index
    assert stop.payload["transactionId"] == 3901
    assert stop.payload.get("reason", "Local") == "Local"
    assert parse_ts(start.payload["timestamp"]) < parse_ts(stop.payload["timestamp"])
    await station.until(lambda: station.rt.state()["queue"]["length"] == 0, what="queue drained")
    # §4.9: after reconnect only the status now counts; it is the one last reported (Available).
    assert _statuses(csms, 1, mark) in ([], ["Available"])
    assert station.status(1) == "Available"
