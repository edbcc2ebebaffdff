"""The runtime's wiring of drivers to the core: contactor supervision, meter failure, storage failure."""

from __future__ import annotations

import asyncio

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


def _count_meter_steps(rt) -> list:
    """The meter loop stopped (the test reads the meters itself) and every meter event the
    core steps on recorded, as (kind, connector)."""
    for task in rt.tasks:
        if task.get_name() == "meters":
            task.cancel()
    seen, st = [], rt.station
    reading, failed = st.meter_reading, st.meter_failed

    def meter_reading(cid, value, now):
        seen.append(("reading", cid))
        return reading(cid, value, now)

    def meter_failed(cid, error, now):
        seen.append(("failed", cid))
        return failed(cid, error, now)

    st.meter_reading, st.meter_failed = meter_reading, meter_failed
    return seen


async def test_an_idle_meter_that_says_nothing_new_costs_no_core_step(station):
    """Idle (no car, no session, contactor open), a reading equal to the one the core holds is
    not stepped through the core: it would change nothing. A failure, the recovery after it and
    a reading that differs still reach the core at once."""
    import dataclasses

    rt = station.rt
    seen = _count_meter_steps(rt)
    meter = rt.drivers.meters[1]
    held = station.st.connectors[1].reading
    for _ in range(3):
        await rt._read_meters(3.0)
    assert seen == [] and station.st.connectors[1].reading is held

    good = meter.read

    async def dead():
        raise TimeoutError("meter silent")

    meter.read = dead
    await rt._read_meters(3.0)
    assert seen == [("failed", 1)]
    meter.read = good
    await rt._read_meters(3.0)
    assert seen[1:] == [("reading", 1)]  # the same values again, but the core must hear they are back
    assert station.st.connectors[1].reading is not held

    async def other_voltage():
        return dataclasses.replace(await good(), voltage_v=231.0)

    meter.read = other_voltage
    await rt._read_meters(3.0)
    assert seen[2:] == [("reading", 1)] and station.st.connectors[1].reading.voltage_v == 231.0
    meter.read = good


async def test_a_busy_connector_is_stepped_on_every_reading(station):
    rt = station.rt
    await station.plug(1)
    seen = _count_meter_steps(rt)
    await rt._read_meters(3.0)
    await rt._read_meters(3.0)
    # Plugged: every reading counts (status from measured power, samples), unchanged or not.
    assert seen == [("reading", 1), ("reading", 2)] * 2


async def test_no_firmware_job_thread_until_an_update_comes_and_a_persisted_one_resumes(
        make_station, tmp_path, monkeypatch):
    """After boot nothing is persisted: the firmware service's job thread is never started (one
    idle thread per member of a fleet). An UpdateFirmware starts it; after a restart the
    persisted request is resumed (re-armed for its retrieveDate) as before."""
    from datetime import datetime, timedelta, timezone

    from twin.firmware.service import FirmwareService

    resumed = []
    resume = FirmwareService.resume

    async def spy(self):
        await resume(self)
        resumed.append(self._update_task is not None)

    monkeypatch.setattr(FirmwareService, "resume", spy)
    data = tmp_path / "fw-station"
    first = await make_station(data_dir=data)
    await first.until(lambda: resumed, what="the post-boot look for a persisted update")
    assert resumed == [False] and first.rt.firmware._job_worker._threads == set()
    later = (datetime.now(timezone.utc) + timedelta(days=1)).isoformat().replace("+00:00", "Z")
    assert await first.csms.call("UpdateFirmware", {"location": "http://127.0.0.1:9/fw.bundle",
                                                    "retrieveDate": later}) == {}
    assert (data / "firmware" / "update.json").exists()
    await first.rt.shutdown(graceful=True)

    second = await make_station(data_dir=data)
    await second.until(lambda: second.rt.firmware._update_task is not None, what="the update resumed")
    await second.until(lambda: len(resumed) == 2, what="the second resume returned")
    assert resumed == [False, True]
    assert second.rt.firmware._job_worker._threads  # resume() read it on the job thread
