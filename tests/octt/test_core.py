"""OCTT 1.6 Core test cases (charge point as SUT) against a real CSMS on loopback.

Each test is named after its case in ../shared/reference/ocpp16-conformance.md §2 and
follows its sequence. The station runs with its real store, link and control API;
only the hardware is simulated. StatusNotification(Charging)<->StartTransaction and
(Finishing)<->StopTransaction may swap (OCTT §1.2): waits use ``wait_for``, which finds
messages whatever their order, and order is asserted only where the case demands it.
"""

from __future__ import annotations

import asyncio
import pytest

from twin.csms import NO_REPLY


async def start_charging(station, csms, cid: int = 1, tag: str = "TAG1") -> int:
    """OCTT reusable state Charging (local start). Returns the transactionId."""
    await station.plug(cid)
    await csms.wait_for("StatusNotification", {"connectorId": cid, "status": "Preparing"})
    await station.tap(tag)
    st = await csms.wait_for("StartTransaction", {"connectorId": cid, "idTag": tag})
    await csms.wait_for("StatusNotification", {"connectorId": cid, "status": "Charging"})
    await station.until(lambda: station.st.connectors[cid].tx is not None and
                        station.st.txs[station.st.connectors[cid].tx].get("transaction_id") is not None)
    return station.st.txs[station.st.connectors[cid].tx]["transaction_id"]


async def restart(station, make_station, tmp_path, **kw):
    """After a Reset the runtime exits with the restart code; start it again on the same data dir."""
    from twin.runtime import RESTART_EXIT_CODE

    code = await asyncio.wait_for(station.rt.wait(), timeout=15)
    assert code == RESTART_EXIT_CODE
    await station.rt.shutdown(graceful=False)
    return await make_station(data_dir=tmp_path / "data", **kw)


# --------------------------------------------------------------------------- booting
async def test_tc_001_cold_boot_rejected_then_accepted(make_station, csms):
    boots = []

    def boot(payload):
        boots.append(payload)
        if len(boots) == 1:
            return {"status": "Rejected", "currentTime": "2026-11-24T12:00:00Z", "interval": 2}
        return {"status": "Accepted", "currentTime": "2026-11-24T12:00:00Z", "interval": 2}

    csms.on("BootNotification", boot)
    station = await make_station(wait=False)
    first = await csms.wait_for("BootNotification")
    assert first.payload["chargePointVendor"] == "XJ Power Co., Ltd."
    assert first.payload["chargePointModel"] == "iEVQC33"
    second = await csms.wait_for("BootNotification", timeout=10)
    assert second.t - first.t >= 1.9  # not before the Rejected interval
    for cid in (0, 1, 2):
        await csms.wait_for("StatusNotification", {"connectorId": cid, "status": "Available"})
    hb1 = await csms.wait_for("Heartbeat", timeout=5)
    hb2 = await csms.wait_for("Heartbeat", timeout=5)
    assert 1.5 <= hb2.t - hb1.t <= 3.0  # heartbeat period = the Accepted interval
    assert station.st.registration == "Accepted"


async def test_tc_002_cold_boot_pending(make_station, csms):
    csms.boot_status = "Pending"
    csms.heartbeat_interval = 3
    station = await make_station(wait=False)
    await csms.wait_for("BootNotification")
    await station.until(lambda: station.st.registration == "Pending")
    config = await csms.call("GetConfiguration", {})
    assert config["configurationKey"]
    assert (await csms.call("ChangeConfiguration", {"key": "MeterValueSampleInterval", "value": "7"}))[
        "status"] == "Accepted"
    assert not csms.calls("StatusNotification")  # nothing unsolicited while Pending (§4.2)
    csms.boot_status = "Accepted"
    await csms.wait_for("BootNotification", timeout=6)
    for cid in (0, 1, 2):
        await csms.wait_for("StatusNotification", {"connectorId": cid})
    await csms.wait_for("Heartbeat", timeout=6)


# --------------------------------------------------------------------------- charging sessions
async def test_tc_003_regular_charging_session_plugin_first(station, csms):
    await station.plug(1)
    await csms.wait_for("StatusNotification", {"connectorId": 1, "status": "Preparing"})
    await station.tap("TAG1")
    await csms.wait_for("Authorize", {"idTag": "TAG1"})
    st = await csms.wait_for("StartTransaction", {"connectorId": 1, "idTag": "TAG1"})
    assert isinstance(st.payload["meterStart"], int)
    await csms.wait_for("StatusNotification", {"connectorId": 1, "status": "Charging"})
    assert station.rt.drivers.relays[1].commanded is True


async def test_tc_004_1_identification_first(make_station, csms):
    station = await make_station()
    await station.configure(MeterValueSampleInterval=10)
    await station.tap("TAG1")
    await csms.wait_for("Authorize", {"idTag": "TAG1"})
    await csms.wait_for("StatusNotification", {"connectorId": 1, "status": "Preparing"})
    await station.plug(1)
    await csms.wait_for("StartTransaction", {"connectorId": 1})
    await csms.wait_for("StatusNotification", {"connectorId": 1, "status": "Charging"})


async def test_tc_004_2_identification_first_connection_timeout(station, csms):
    await station.configure(ConnectionTimeOut=2)
    await station.tap("TAG1")
    await csms.wait_for("StatusNotification", {"connectorId": 1, "status": "Preparing"})
    await csms.wait_for("StatusNotification", {"connectorId": 1, "status": "Available"}, timeout=5)
    assert not csms.calls("StartTransaction")


async def test_tc_005_1_ev_side_disconnect_stop_and_unlock(station, csms):
    await station.configure(MinimumStatusDuration=0, StopTransactionOnEVSideDisconnect="true")
    await start_charging(station, csms)
    await station.unplug(1)
    stop = await csms.wait_for("StopTransaction")
    assert stop.payload["reason"] == "EVDisconnected"
    await csms.wait_for("StatusNotification", {"connectorId": 1, "status": "Finishing"})


async def test_tc_005_2_ev_side_disconnect_then_unlock_connector(station, csms):
    await station.configure(StopTransactionOnEVSideDisconnect="true")
    await start_charging(station, csms)
    await station.unplug(1)
    assert (await csms.wait_for("StopTransaction")).payload["reason"] == "EVDisconnected"
    result = await csms.call("UnlockConnector", {"connectorId": 1})
    assert result["status"] in ("Unlocked", "NotSupported")  # fixed cable: NotSupported


async def test_tc_005_3_ev_side_disconnect_without_stop(station, csms):
    await station.configure(StopTransactionOnEVSideDisconnect="false")
    tid = await start_charging(station, csms)
    await station.unplug(1)
    sn = await csms.wait_for("StatusNotification", {"connectorId": 1, "status": "SuspendedEV"})
    assert sn.payload["info"] == "EV side disconnected"
    assert not csms.calls("StopTransaction")
    assert station.rt.drivers.relays[1].commanded is False
    assert (await csms.call("RemoteStopTransaction", {"transactionId": tid}))["status"] == "Accepted"
    assert (await csms.wait_for("StopTransaction")).payload["reason"] == "Remote"
    await csms.wait_for("StatusNotification", {"connectorId": 1, "status": "Available"})


async def test_tc_007_start_with_cached_id(station, csms):
    await station.configure(AuthorizationCacheEnabled="true", AuthorizeRemoteTxRequests="true",
                            LocalPreAuthorize="true")
    # Memory state IdTagCached: charge, stop with the same tag (SpT.conf fills the cache), unplug.
    await start_charging(station, csms)
    await station.tap("TAG1")
    await csms.wait_for("StopTransaction")
    await station.unplug(1)
    await csms.wait_for("StatusNotification", {"connectorId": 1, "status": "Available"})
    mark = csms.mark()
    await station.plug(1)
    await csms.wait_for("StatusNotification", {"connectorId": 1, "status": "Preparing"})
    assert (await csms.call("RemoteStartTransaction", {"connectorId": 1, "idTag": "TAG1"}))["status"] == "Accepted"
    await csms.wait_for("StartTransaction", {"idTag": "TAG1"})
    await csms.wait_for("StatusNotification", {"connectorId": 1, "status": "Charging"})
    assert not csms.calls("Authorize", after=mark)


async def test_tc_010_remote_start_cable_first(station, csms):
    await station.plug(1)
    await csms.wait_for("StatusNotification", {"connectorId": 1, "status": "Preparing"})
    assert (await csms.call("RemoteStartTransaction", {"connectorId": 1, "idTag": "TAG1"}))["status"] == "Accepted"
    await csms.wait_for("Authorize", {"idTag": "TAG1"})  # AuthorizeRemoteTxRequests=true on the iEVQC33
    await csms.wait_for("StartTransaction", {"connectorId": 1, "idTag": "TAG1"})
    await csms.wait_for("StatusNotification", {"connectorId": 1, "status": "Charging"})


async def test_tc_011_1_remote_start_remote_first(station, csms):
    assert (await csms.call("RemoteStartTransaction", {"connectorId": 1, "idTag": "TAG1"}))["status"] == "Accepted"
    await csms.wait_for("StatusNotification", {"connectorId": 1, "status": "Preparing"})
    assert not csms.calls("StartTransaction")
    await station.plug(1)
    await csms.wait_for("StartTransaction", {"connectorId": 1})
    await csms.wait_for("StatusNotification", {"connectorId": 1, "status": "Charging"})


async def test_tc_011_2_remote_start_time_out(station, csms):
    await station.configure(ConnectionTimeOut=2)
    assert (await csms.call("RemoteStartTransaction", {"connectorId": 1, "idTag": "TAG1"}))["status"] == "Accepted"
    await csms.wait_for("StatusNotification", {"connectorId": 1, "status": "Preparing"})
    await csms.wait_for("StatusNotification", {"connectorId": 1, "status": "Available"}, timeout=5)
    assert not csms.calls("StartTransaction")


async def test_tc_012_remote_stop(station, csms):
    tid = await start_charging(station, csms)
    assert (await csms.call("RemoteStopTransaction", {"transactionId": tid}))["status"] == "Accepted"
    stop = await csms.wait_for("StopTransaction", {"transactionId": tid})
    assert stop.payload["reason"] == "Remote"
    await csms.wait_for("StatusNotification", {"connectorId": 1, "status": "Finishing"})


# --------------------------------------------------------------------------- reset
@pytest.mark.parametrize("kind", ["Hard", "Soft"])
async def test_tc_013_014_reset_without_transaction_keeps_unavailable(station, csms, make_station, tmp_path, kind):
    assert (await csms.call("ChangeAvailability", {"connectorId": 1, "type": "Inoperative"}))["status"] == "Accepted"
    await csms.wait_for("StatusNotification", {"connectorId": 1, "status": "Unavailable"})
    assert (await csms.call("Reset", {"type": kind}))["status"] == "Accepted"
    mark = csms.mark()
    station = await restart(station, make_station, tmp_path)
    await csms.wait_for("StatusNotification", {"connectorId": 1, "status": "Unavailable"}, after=mark)
    await csms.wait_for("StatusNotification", {"connectorId": 2, "status": "Available"}, after=mark)
    assert (await csms.call("ChangeAvailability", {"connectorId": 1, "type": "Operative"}))["status"] == "Accepted"
    await csms.wait_for("StatusNotification", {"connectorId": 1, "status": "Available"})


async def test_tc_015_hard_reset_with_transaction(station, csms, make_station, tmp_path):
    tid = await start_charging(station, csms)
    assert (await csms.call("Reset", {"type": "Hard"}))["status"] == "Accepted"
    mark = csms.mark()
    station = await restart(station, make_station, tmp_path)
    stop = await csms.wait_for("StopTransaction", after=mark)
    assert stop.payload["reason"] == "HardReset" and stop.payload["transactionId"] == tid
    boot_index = csms.calls("BootNotification", after=mark)[0].index
    assert stop.index > boot_index  # stopped after the new BootNotification
    sn = await csms.wait_for("StatusNotification", {"connectorId": 1}, after=mark)
    assert sn.payload["status"] in ("Finishing", "Preparing")
    await csms.wait_for("StatusNotification", {"connectorId": 2, "status": "Available"}, after=mark)


async def test_tc_016_soft_reset_with_transaction(station, csms, make_station, tmp_path):
    await start_charging(station, csms)
    mark = csms.mark()
    assert (await csms.call("Reset", {"type": "Soft"}))["status"] == "Accepted"
    stop = await csms.wait_for("StopTransaction", after=mark)
    assert stop.payload["reason"] == "SoftReset"
    await csms.wait_for("StatusNotification", {"connectorId": 1, "status": "Finishing"}, after=mark)
    boots = csms.calls("BootNotification", after=mark)
    assert not boots or boots[0].index > stop.index  # the stop goes out before the restart
    await restart(station, make_station, tmp_path)


# --------------------------------------------------------------------------- unlock
async def test_tc_017_1_unlock_no_session_socket_outlet(make_station, csms):
    await make_station(fixed_cable=False)
    assert (await csms.call("UnlockConnector", {"connectorId": 1}))["status"] == "Unlocked"


async def test_tc_017_2_unlock_no_session_fixed_cable(station, csms):
    assert (await csms.call("UnlockConnector", {"connectorId": 1}))["status"] == "NotSupported"


async def test_tc_018_1_unlock_with_session_socket_outlet(make_station, csms):
    station = await make_station(fixed_cable=False)
    await start_charging(station, csms)
    assert (await csms.call("UnlockConnector", {"connectorId": 1}))["status"] == "Unlocked"
    assert (await csms.wait_for("StopTransaction")).payload["reason"] == "UnlockCommand"
    await csms.wait_for("StatusNotification", {"connectorId": 1, "status": "Finishing"})
    await station.unplug(1)
    await csms.wait_for("StatusNotification", {"connectorId": 1, "status": "Available"})


async def test_tc_018_2_unlock_with_session_fixed_cable(station, csms):
    await start_charging(station, csms)
    assert (await csms.call("UnlockConnector", {"connectorId": 1}))["status"] == "NotSupported"
    await asyncio.sleep(0.3)
    assert not csms.calls("StopTransaction") and station.status(1) == "Charging"


# --------------------------------------------------------------------------- configuration
REQUIRED_CORE_KEYS = {  # OCTT Table 25 (reference §4.8): key -> allowed readonly values
    "AuthorizeRemoteTxRequests": {True, False}, "ClockAlignedDataInterval": {False}, "ConnectionTimeOut": {False},
    "ConnectorPhaseRotation": {False}, "GetConfigurationMaxKeys": {True}, "HeartbeatInterval": {False},
    "LocalAuthorizeOffline": {False}, "LocalPreAuthorize": {False}, "MeterValuesAlignedData": {False},
    "MeterValuesSampledData": {False}, "MeterValueSampleInterval": {False}, "NumberOfConnectors": {True},
    "ResetRetries": {False}, "StopTransactionOnInvalidId": {False}, "StopTxnAlignedData": {False},
    "StopTxnSampledData": {False}, "SupportedFeatureProfiles": {True}, "TransactionMessageAttempts": {False},
    "TransactionMessageRetryInterval": {False}, "UnlockConnectorOnEVSideDisconnect": {True, False},
}


async def test_tc_019_retrieve_configuration(station, csms):
    profiles = await csms.call("GetConfiguration", {"key": ["SupportedFeatureProfiles"]})
    assert profiles["configurationKey"][0]["value"].split(",") == [
        "Core", "FirmwareManagement", "LocalAuthListManagement", "Reservation", "SmartCharging", "RemoteTrigger"]
    everything = await csms.call("GetConfiguration", {})
    assert not everything.get("unknownKey")
    keys = {k["key"]: k for k in everything["configurationKey"]}
    for key, readonly in REQUIRED_CORE_KEYS.items():
        assert key in keys, key
        assert keys[key]["readonly"] in readonly, key
    max_keys = int((await csms.call("GetConfiguration", {"key": ["GetConfigurationMaxKeys"]}))[
        "configurationKey"][0]["value"])
    names = sorted(keys)[:min(max_keys, len(keys))]
    answer = await csms.call("GetConfiguration", {"key": names})
    assert sorted(k["key"] for k in answer["configurationKey"]) == names
    assert not answer.get("unknownKey")


async def test_tc_021_change_configuration(station, csms):
    assert (await csms.call("ChangeConfiguration", {"key": "MeterValueSampleInterval", "value": "17"}))[
        "status"] == "Accepted"
    got = await csms.call("GetConfiguration", {"key": ["MeterValueSampleInterval"]})
    assert got["configurationKey"][0]["value"] == "17"


async def test_keys_persist_across_restart(station, csms, make_station, tmp_path):
    await station.configure(MeterValueSampleInterval=23)
    await station.rt.shutdown(graceful=False)
    await make_station(data_dir=tmp_path / "data")
    got = await csms.call("GetConfiguration", {"key": ["MeterValueSampleInterval"]})
    assert got["configurationKey"][0]["value"] == "23"


async def test_tc_040_1_configuration_key_not_supported(station, csms):
    assert (await csms.call("ChangeConfiguration", {"key": "Testing", "value": "true"}))["status"] == "NotSupported"


async def test_tc_040_2_configuration_key_invalid_value(station, csms):
    assert (await csms.call("ChangeConfiguration", {"key": "MeterValueSampleInterval", "value": "-1"}))[
        "status"] == "Rejected"


# --------------------------------------------------------------------------- authorization
async def test_tc_023_start_authorize_invalid(station, csms):
    await station.configure(MinimumStatusDuration=10, LocalPreAuthorize="true")
    csms.id_tags["BAD"] = {"status": "Invalid"}
    await station.plug(1)
    await csms.wait_for("StatusNotification", {"connectorId": 1, "status": "Preparing"}, timeout=15)
    mark = csms.mark()
    await station.tap("BAD")
    await csms.wait_for("Authorize", {"idTag": "BAD"})
    await asyncio.sleep(1.0)
    assert not csms.calls("StartTransaction") and not csms.calls("StatusNotification", after=mark)


async def test_tc_061_clear_authorization_cache(station, csms):
    await station.configure(AuthorizationCacheEnabled="true", LocalPreAuthorize="true", ConnectionTimeOut=2)
    await station.tap("TAG1")
    await csms.wait_for("Authorize", {"idTag": "TAG1"})
    await csms.wait_for("StatusNotification", {"connectorId": 1, "status": "Preparing"})
    await csms.wait_for("StatusNotification", {"connectorId": 1, "status": "Available"}, timeout=5)
    assert (await csms.call("ClearCache", {}))["status"] == "Accepted"
    mark = csms.mark()
    await station.tap("TAG1")
    await csms.wait_for("Authorize", {"idTag": "TAG1"}, after=mark)


async def test_tc_068_stop_with_the_start_tag_only(station, csms):
    await start_charging(station, csms)
    mark = csms.mark()
    await station.tap("TAG2")
    await asyncio.sleep(0.5)
    assert not csms.calls("Authorize", after=mark) and not csms.calls("StopTransaction", after=mark)
    await station.tap("TAG1")
    stop = await csms.wait_for("StopTransaction")
    assert stop.payload["idTag"] == "TAG1"
    await csms.wait_for("StatusNotification", {"connectorId": 1, "status": "Finishing"})
    assert not csms.calls("Authorize", after=mark)


async def test_tc_069_stop_with_same_parent_id_tag(station, csms):
    csms.id_tags["TAG1"] = {"status": "Accepted", "parentIdTag": "PARENT"}
    csms.id_tags["TAG2"] = {"status": "Accepted", "parentIdTag": "PARENT"}
    await start_charging(station, csms)
    mark = csms.mark()
    await station.tap("TAG2")
    await csms.wait_for("Authorize", {"idTag": "TAG2"}, after=mark)
    stop = await csms.wait_for("StopTransaction")
    assert stop.payload["idTag"] == "TAG2"
    await csms.wait_for("StatusNotification", {"connectorId": 1, "status": "Finishing"})


# --------------------------------------------------------------------------- remote start/stop rejections
async def test_tc_026_remote_start_rejected_on_busy_connector(station, csms):
    await station.configure(LocalPreAuthorize="false")
    await start_charging(station, csms)
    assert (await csms.call("RemoteStartTransaction", {"connectorId": 1, "idTag": "TAG1"}))["status"] == "Rejected"


async def test_tc_027_remote_start_connector_zero_rejected(station, csms):
    assert (await csms.call("RemoteStartTransaction", {"connectorId": 0, "idTag": "TAG1"}))["status"] == "Rejected"


async def test_tc_028_remote_stop_unknown_transaction_rejected(station, csms):
    tid = await start_charging(station, csms)
    assert (await csms.call("RemoteStopTransaction", {"transactionId": tid + 100}))["status"] == "Rejected"
    await asyncio.sleep(0.3)
    assert not csms.calls("StopTransaction")


async def test_tc_031_unlock_unknown_connector(station, csms):
    assert (await csms.call("UnlockConnector", {"connectorId": 3}))["status"] == "NotSupported"


async def test_tc_062_data_transfer_unknown_vendor(station, csms):
    assert (await csms.call("DataTransfer", {"vendorId": "com.example"}))["status"] == "UnknownVendorId"


# --------------------------------------------------------------------------- meter values
async def test_tc_070_sampled_meter_values(station, csms):
    await station.configure(MeterValueSampleInterval=2, ClockAlignedDataInterval=0)
    measurands = (await csms.call("GetConfiguration", {"key": ["MeterValuesSampledData"]}))[
        "configurationKey"][0]["value"].split(",")
    tid = await start_charging(station, csms)
    mvs = [await csms.wait_for("MeterValues", {"transactionId": tid}, timeout=5) for _ in range(3)]
    stamps = [mv.payload["meterValue"][0]["timestamp"] for mv in mvs]
    from twin.core.timeutil import parse_ts

    gaps = [(parse_ts(b) - parse_ts(a)).total_seconds() for a, b in zip(stamps, stamps[1:])]
    assert all(1.0 <= g <= 3.0 for g in gaps), gaps
    for mv in mvs:
        values = mv.payload["meterValue"][0]["sampledValue"]
        assert {v["context"] for v in values} == {"Sample.Periodic"}
        assert {v["measurand"] for v in values} == set(measurands)


async def test_tc_071_clock_aligned_meter_values(station, csms):
    await station.configure(MeterValueSampleInterval=0, ClockAlignedDataInterval=2)
    tid = await start_charging(station, csms)
    mvs = [await csms.wait_for("MeterValues", {"transactionId": tid}, timeout=5) for _ in range(2)]
    from twin.core.timeutil import parse_ts

    for mv in mvs:
        when = parse_ts(mv.payload["meterValue"][0]["timestamp"])
        assert when.second % 2 == 0 and when.microsecond == 0  # on the clock grid
        assert mv.payload["meterValue"][0]["sampledValue"][0]["context"] == "Sample.Clock"


async def test_changing_unsupported_measurand_is_rejected(station, csms):
    r = await csms.call("ChangeConfiguration", {"key": "MeterValuesSampledData", "value": "Energy.Reactive.Export.Interval"})
    assert r["status"] == "Rejected"


# --------------------------------------------------------------------------- malformed CSMS frames
@pytest.mark.parametrize("frame,code", [
    ('[2,"m1","RemoteStartTransaction",{"connectorId":1}]', "FormationViolation"),
    ('[2,"m2","RemoteStartTransaction",{"idTag":5}]', "TypeConstraintViolation"),
    ('[2,"m3","Reset",{"type":"Sideways"}]', "PropertyConstraintViolation"),
    ('[2,"m4","FlyToTheMoon",{}]', "NotImplemented"),
    ('[2,"m5","InstallCertificate",{}]', "FormationViolation"),  # a security call, now schema-checked
    ('[2,"m6","Reset"]', "FormationViolation"),
])
async def test_malformed_frames_get_the_right_callerror_and_station_carries_on(station, csms, frame, code):
    await csms.send_raw(frame)
    uid = frame.split('"')[1]
    reply = await csms.wait_reply(uid)
    assert reply.kind == "error" and reply.payload["errorCode"] == code
    assert (await csms.call("DataTransfer", {"vendorId": "x"}))["status"] == "UnknownVendorId"
    _expect_only_raw_frame_notes(csms)


def _expect_only_raw_frame_notes(csms):
    # The CSMS notes a reply to a frame it did not send as a well-formed call; that is the test's doing.
    assert all("unknown uniqueId" in e or "raw" in e for e in csms.schema_errors), csms.schema_errors
    csms.schema_errors.clear()


async def test_garbage_frame_gets_generic_error(station, csms):
    await csms.send_raw("this is not json")
    reply = await csms.wait_frame(lambda m: m.kind == "error", after=0)
    assert reply.payload["errorCode"] == "GenericError"
    assert (await csms.call("DataTransfer", {"vendorId": "x"}))["status"] == "UnknownVendorId"
    _expect_only_raw_frame_notes(csms)


async def test_silent_csms_does_not_block_status_notifications(station, csms):
    csms.on("Authorize", lambda p: NO_REPLY)
    await station.configure(MessageTimeout=1)
    await station.plug(1)
    await station.tap("TAG1")
    await csms.wait_for("Authorize")
    await station.until(lambda: station.st.connectors[1].authorizing is None, timeout=5)
