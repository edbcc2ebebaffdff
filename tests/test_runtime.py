"""The runtime's wiring of drivers to the core: contactor supervision, meter failure, storage failure."""

from __future__ import annotations

from tests.octt.test_core import start_charging


async def test_welded_contactor_faults_the_connector_and_is_reported(station, csms):
    await start_charging(station, csms)
    await station.tap("TAG1")
    await csms.wait_for("StopTransaction")
    station.rt.drivers.relays[1].weld()  # aux contact closed while the coil is off
    sn = await csms.wait_for("StatusNotification", {"connectorId": 1, "status": "Faulted"}, timeout=10)
    assert sn.payload["errorCode"] == "PowerSwitchFailure" and "weld" in sn.payload["info"].lower()
    await station.unplug(1)
    await station.plug(1)
    await station.tap("TAG1")
    assert station.status(1) == "Faulted" and len(csms.calls("StartTransaction")) == 1  # refuses new sessions


async def test_meter_that_stops_answering_reports_power_meter_failure(station, csms):
    await start_charging(station, csms)
    meter = station.rt.drivers.meters[1]

    async def dead():
        raise TimeoutError("meter silent")

    good = meter.read
    meter.read = dead
    sn = await csms.wait_for("StatusNotification", {"connectorId": 1, "errorCode": "PowerMeterFailure"}, timeout=10)
    assert sn.payload["status"] == "Charging"
    last = station.st.connectors[1].reading.energy_wh
    await station.tap("TAG1")
    stop = await csms.wait_for("StopTransaction")
    assert stop.payload["meterStop"] == round(last)  # billed with the last good register
    meter.read = good
    await csms.wait_for("StatusNotification", {"connectorId": 1, "errorCode": "NoError"}, timeout=10)


async def test_store_failure_faults_the_station_keeps_data_and_recovers(station, csms):
    from tests.conftest import FlakyStore

    await station.plug(1)
    await csms.wait_for("StatusNotification", {"connectorId": 1, "status": "Preparing"})
    disk = FlakyStore(station.rt.store, "disk full")
    await station.tap("TAG1")
    # The transaction cannot be recorded: the contactor must not close, the station faults.
    await csms.wait_for("StatusNotification", {"connectorId": 0, "status": "Faulted"}, timeout=10)
    assert station.rt.drivers.relays[1].commanded is False
    assert station.rt.state()["store"]["ok"] is False
    disk.failing = False
    await csms.wait_for("StatusNotification", {"connectorId": 0, "status": "Available"}, timeout=15)
    await station.until(lambda: station.rt.state()["store"]["ok"])
    from twin.store import Store

    # Nothing was lost: the transaction that started while the disk was full, and its
    # stop (the storage fault stopped it), reached the store once it was writable again.
    saved = Store.snapshot(station.rt.store.path)
    txs = [tx for tx in saved["transactions"].values() if tx["id_tag"] == "TAG1"]
    assert len(txs) == 1 and txs[0]["stopped"] and txs[0]["stop_reason"] == "Other"
    assert [m.payload["reason"] for m in csms.calls("StopTransaction")] == ["Other"]


async def test_station_fault_through_the_control_api(station, csms):
    """OCTT SetChargePointFaulted: connector 0 can be faulted from the bench, not plugged."""
    import asyncio
    import json
    import urllib.error
    import urllib.request

    def post(path: str, body: bytes = b"", method: str = "POST") -> int:
        req = urllib.request.Request(station.rt.api.url + path, data=body, method=method,
                                     headers={"Content-Type": "application/json"})
        try:
            return urllib.request.urlopen(req, timeout=5).status
        except urllib.error.HTTPError as e:
            return e.code

    body = json.dumps({"errorCode": "OtherError", "info": "cabinet open"}).encode()
    assert await asyncio.to_thread(post, "/api/connectors/0/fault", body) == 200
    sn = await csms.wait_for("StatusNotification", {"connectorId": 0, "status": "Faulted"})
    assert sn.payload["info"] == "cabinet open"
    await csms.wait_for("StatusNotification", {"connectorId": 1, "status": "Faulted"})
    assert await asyncio.to_thread(post, "/api/connectors/0/plug") == 404
    assert await asyncio.to_thread(post, "/api/connectors/0/fault", b"", "DELETE") == 200
    await csms.wait_for("StatusNotification", {"connectorId": 0, "status": "Available"})


async def test_update_firmware_conf_goes_out_before_its_first_status(station, csms):
    """The reply waits until the request is on disk; the first FirmwareStatusNotification
    then waited for nothing and could reach the CSMS before UpdateFirmware.conf."""
    import socket

    with socket.socket() as s:  # a port nothing listens on: the download fails at once
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mark = csms.mark()
    await csms.call("UpdateFirmware", {"location": f"http://127.0.0.1:{port}/fw.bundle",
                                       "retrieveDate": "2000-01-01T00:00:00Z", "retries": 0})
    first = await csms.wait_for("FirmwareStatusNotification", timeout=10, after=mark)
    conf = next(m for m in csms.messages[mark:] if m.direction == "in" and m.kind == "result")
    assert conf.index < first.index, (conf.index, first.index, first.payload)
