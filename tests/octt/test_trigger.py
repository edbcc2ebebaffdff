"""OCTT 1.6 Remote Trigger cases (TC_054, TC_055) against the loopback CSMS.

Rules: spec §4.2, §5.17, §6.51, §7.32; errata 3.35 and 3.46; reference
../shared/reference/ocpp16-conformance.md §2, §3.3 item 14 and §4.7.
"""

from __future__ import annotations

import asyncio

from tests.octt.test_core import start_charging


async def trigger(csms, what: str, cid: int | None = None) -> str:
    payload: dict = {"requestedMessage": what}
    if cid is not None:
        payload["connectorId"] = cid
    return (await csms.call("TriggerMessage", payload))["status"]


def trigger_conf_index(csms, after: int) -> int:
    """Index of the station's TriggerMessage.conf (a CALLRESULT it sent) at or after ``after``."""
    return next(m.index for m in csms.messages[after:]
                if m.direction == "in" and m.kind == "result" and m.action == "TriggerMessage")


async def sampled_measurands(csms) -> set[str]:
    conf = await csms.call("GetConfiguration", {"key": ["MeterValuesSampledData"]})
    return set(conf["configurationKey"][0]["value"].split(","))


# --------------------------------------------------------------------------- TC_054 step by step
async def test_tc_054_trigger_meter_values(station, csms):
    measurands = await sampled_measurands(csms)
    mark = csms.mark()
    assert await trigger(csms, "MeterValues", 1) == "Accepted"
    mv = await csms.wait_for("MeterValues", {"connectorId": 1})
    values = mv.payload["meterValue"][0]["sampledValue"]
    assert {v["context"] for v in values} == {"Trigger"}  # §7.35
    assert {v["measurand"] for v in values} == measurands - {"SoC"}  # no EV plugged: no SoC to report
    assert "transactionId" not in mv.payload
    assert trigger_conf_index(csms, mark) < mv.index  # the .conf goes out first (§5.17)


async def test_tc_054_trigger_meter_values_during_a_transaction(station, csms):
    measurands = await sampled_measurands(csms)
    tid = await start_charging(station, csms)
    await station.until(lambda: (station.rt.state()["connectors"][0]["powerW"] or 0) > 0, what="the EV to draw")
    mark = csms.mark()
    assert await trigger(csms, "MeterValues", 1) == "Accepted"
    mv = await csms.wait_for("MeterValues", {"connectorId": 1})
    assert mv.payload["transactionId"] == tid
    values = {v["measurand"]: v for v in mv.payload["meterValue"][0]["sampledValue"]}
    # Errata 3.46: the latest value of every MeterValuesSampledData measurand.
    assert set(values) == measurands
    assert {v["context"] for v in values.values()} == {"Trigger"}
    assert float(values["Power.Active.Import"]["value"]) > 0
    assert trigger_conf_index(csms, mark) < mv.index


async def test_tc_054_trigger_heartbeat(station, csms):
    mark = csms.mark()
    assert await trigger(csms, "Heartbeat") == "Accepted"
    hb = await csms.wait_for("Heartbeat")
    assert trigger_conf_index(csms, mark) < hb.index


async def test_trigger_heartbeat_ignores_an_irrelevant_connector_id(station, csms):
    assert await trigger(csms, "Heartbeat", 2) == "Accepted"  # §5.17: ignore it and still send
    await csms.wait_for("Heartbeat")


async def test_tc_054_trigger_status_notification(station, csms):
    await station.plug(2)
    await csms.wait_for("StatusNotification", {"connectorId": 2, "status": "Preparing"})
    mark = csms.mark()
    assert await trigger(csms, "StatusNotification", 2) == "Accepted"
    sn = await csms.wait_for("StatusNotification", {"connectorId": 2})
    assert sn.payload["status"] == "Preparing"
    assert trigger_conf_index(csms, mark) < sn.index
    await asyncio.sleep(0.2)
    assert len(csms.calls("StatusNotification", after=mark)) == 1  # only the one asked for


async def test_trigger_status_notification_without_connector_reports_all(station, csms):
    mark = csms.mark()
    assert await trigger(csms, "StatusNotification") == "Accepted"
    for cid in (0, 1, 2):  # §5.17: connector 0 (the Charge Point) plus every connector
        await csms.wait_for("StatusNotification", {"connectorId": cid, "status": "Available"})
    assert trigger_conf_index(csms, mark) < min(m.index for m in csms.calls("StatusNotification", after=mark))


async def test_trigger_status_notification_for_connector_zero(station, csms):
    assert await trigger(csms, "StatusNotification", 0) == "Accepted"
    await csms.wait_for("StatusNotification", {"connectorId": 0, "status": "Available"})


async def test_trigger_meter_values_without_connector_reports_every_connector(station, csms):
    assert await trigger(csms, "MeterValues") == "Accepted"
    for cid in (1, 2):
        mv = await csms.wait_for("MeterValues", {"connectorId": cid})
        assert mv.payload["meterValue"][0]["sampledValue"][0]["context"] == "Trigger"


async def test_tc_054_trigger_diagnostics_status_notification_idle(station, csms):
    mark = csms.mark()
    assert await trigger(csms, "DiagnosticsStatusNotification") == "Accepted"
    dsn = await csms.wait_for("DiagnosticsStatusNotification")
    assert dsn.payload == {"status": "Idle"}  # §4.4: nothing being uploaded
    assert trigger_conf_index(csms, mark) < dsn.index


async def test_tc_054_trigger_firmware_status_notification_idle(station, csms):
    mark = csms.mark()
    assert await trigger(csms, "FirmwareStatusNotification") == "Accepted"
    fsn = await csms.wait_for("FirmwareStatusNotification")
    assert fsn.payload == {"status": "Idle"}  # §4.5: no firmware update in progress
    assert trigger_conf_index(csms, mark) < fsn.index


# --------------------------------------------------------------------------- refusals
async def test_tc_055_trigger_message_rejected_for_unknown_connector(station, csms):
    mark = csms.mark()
    assert await trigger(csms, "MeterValues", 3) == "Rejected"  # NumberOfConnectors + 1
    assert await trigger(csms, "StatusNotification", 3) == "Rejected"
    await asyncio.sleep(0.3)
    assert not csms.calls("MeterValues", after=mark) and not csms.calls("StatusNotification", after=mark)


async def test_trigger_boot_notification_after_accepted_is_rejected(station, csms):
    mark = csms.mark()
    assert await trigger(csms, "BootNotification") == "Rejected"  # errata 3.35
    await asyncio.sleep(0.3)
    assert not csms.calls("BootNotification", after=mark)


async def test_trigger_in_pending_lets_the_station_send(make_station, csms):
    # §4.2: while Pending the station sends nothing unsolicited; TriggerMessage lets it.
    csms.boot_status = "Pending"
    station = await make_station(wait=False)
    await csms.wait_for("BootNotification")
    await station.until(lambda: station.st.registration == "Pending")
    assert await trigger(csms, "Heartbeat") == "Accepted"
    await csms.wait_for("Heartbeat")
    assert await trigger(csms, "StatusNotification", 1) == "Accepted"
    await csms.wait_for("StatusNotification", {"connectorId": 1})
    csms.boot_status = "Accepted"
    mark = csms.mark()
    assert await trigger(csms, "BootNotification") == "Accepted"  # allowed until Accepted
    boot = await csms.wait_for("BootNotification")
    assert trigger_conf_index(csms, mark) < boot.index
    await station.until(lambda: station.st.registration == "Accepted")
