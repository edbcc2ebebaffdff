"""The pure station core against a fake clock: the OCTT Core flows, instantly.

The same cases also run end to end against the real CSMS on loopback in
tests/octt/; these pin down the rules themselves, including timing, exhaustively.
"""

from __future__ import annotations

from datetime import timedelta

import pytest

from tests.core.harness import Harness


def charging(h: Harness, cid: int = 1, tag: str = "TAG1") -> None:
    h.plug(cid)
    h.tap(tag)
    assert h.status(cid) == "Charging"


def test_boot_sends_status_for_connector_zero_and_every_connector():
    h = Harness().boot()
    assert h.calls()[0].action == "BootNotification"
    sn = [(s.payload["connectorId"], s.payload["status"]) for s in h.calls("StatusNotification")]
    assert sn == [(0, "Available"), (1, "Available"), (2, "Available")]  # errata 3.22


def test_nothing_is_sent_before_boot_is_accepted_and_pending_retries_after_interval():
    h = Harness(auto=False).boot()
    assert [s.action for s in h.sent] == ["BootNotification"]
    h.answer("BootNotification", {"status": "Pending", "currentTime": "2026-11-24T12:00:00Z", "interval": 7})
    h.plug(1)
    h.advance(6.9)
    assert [s.action for s in h.sent] == ["BootNotification"]  # §4.2: nothing unsolicited while Pending
    h.advance(0.2)
    assert [s.action for s in h.sent] == ["BootNotification", "BootNotification"]


def test_pending_answers_configuration_calls_but_rejects_remote_start():
    h = Harness(auto=False).boot()
    h.answer("BootNotification", {"status": "Pending", "currentTime": "2026-11-24T12:00:00Z", "interval": 60})
    r = h.csms("ChangeConfiguration", {"key": "MeterValueSampleInterval", "value": "10"})
    assert r.payload == {"status": "Accepted"}
    r = h.csms("RemoteStartTransaction", {"idTag": "T", "connectorId": 1})
    assert r.payload == {"status": "Rejected"}


def test_rejected_does_not_answer_csms_calls():
    h = Harness(auto=False).boot()
    h.answer("BootNotification", {"status": "Rejected", "currentTime": "2026-11-24T12:00:00Z", "interval": 60})
    assert h.csms("GetConfiguration", {}) is None
    h.advance(60)
    assert [s.action for s in h.sent] == ["BootNotification", "BootNotification"]


def test_tc003_plug_first_then_authorize_then_start():
    h = Harness().boot()
    m = h.mark()
    h.plug(1)
    h.tap("TAG1")
    assert [s.action for s in h.calls(since=m)] == [
        "StatusNotification", "Authorize", "StartTransaction", "StatusNotification"]
    assert h.statuses(1, m) == ["Preparing", "Charging"]
    assert h.relays[1] is True


def test_contactor_closes_only_after_the_transaction_is_persisted():
    h = Harness().boot()
    h.plug(1)
    order = []
    orig = h.run

    def spy(acts):
        for a in acts or []:
            order.append(type(a).__name__)
        orig(acts)

    h.run = spy
    h.tap("TAG1")
    assert order.index("SetRelay") > order.index("Persist")


def test_tc004_identification_first_and_connection_timeout():
    h = Harness({"ConnectionTimeOut": "30"}).boot()
    m = h.mark()
    h.tap("TAG1")
    assert [s.action for s in h.calls(since=m)] == ["Authorize", "StatusNotification"]
    assert h.statuses(1, m) == ["Preparing"]
    h.advance(29)
    assert h.status(1) == "Preparing"
    h.advance(1.5)
    assert h.statuses(1, m) == ["Preparing", "Available"]
    assert not h.calls("StartTransaction")


def test_tag_goes_to_the_next_connector_plugged():
    h = Harness().boot()
    h.tap("TAG1")
    assert h.status(1) == "Preparing"
    h.plug(2)
    assert h.status(2) == "Charging" and h.status(1) == "Available"
    assert h.calls("StartTransaction")[0].payload["connectorId"] == 2


def test_tc068_other_valid_tag_neither_authorizes_nor_stops():
    h = Harness().boot()
    charging(h)
    m = h.mark()
    h.tap("TAG2")
    assert not h.calls("Authorize", m) and not h.calls("StopTransaction", m)
    h.tap("TAG1")
    stop = h.calls("StopTransaction", m)[0].payload
    assert stop["idTag"] == "TAG1" and stop["reason"] == "Local"
    assert not h.calls("Authorize", m)  # same tag stops without Authorize (§3.4)
    assert h.statuses(1, m) == ["Finishing"]


def test_tc069_tag_with_same_parent_stops():
    h = Harness().boot()
    h.id_tags = {"TAG1": {"status": "Accepted", "parentIdTag": "P"},
                 "TAG2": {"status": "Accepted", "parentIdTag": "P"}}
    charging(h)
    m = h.mark()
    h.tap("TAG2")
    assert [s.payload["idTag"] for s in h.calls("Authorize", m)] == ["TAG2"]
    assert h.calls("StopTransaction", m)[0].payload["idTag"] == "TAG2"


def test_tc023_invalid_tag_starts_nothing_and_changes_no_status():
    h = Harness({"LocalPreAuthorize": "true"}).boot()
    h.id_tags = {"BAD": {"status": "Invalid"}}
    h.plug(1)
    m = h.mark()
    h.tap("BAD")
    assert [s.action for s in h.calls(since=m)] == ["Authorize"]
    assert h.status(1) == "Preparing"


def test_tc007_cached_tag_with_local_pre_authorize_starts_without_authorize():
    h = Harness({"LocalPreAuthorize": "true"}).boot()
    charging(h)
    h.tap("TAG1")  # stop: StopTransaction.conf fills the cache
    h.unplug(1)
    m = h.mark()
    h.plug(1)
    h.csms("RemoteStartTransaction", {"connectorId": 1, "idTag": "TAG1"})
    assert not h.calls("Authorize", m) and h.calls("StartTransaction", m)


def test_tc061_clear_cache_forces_authorize_again():
    h = Harness({"LocalPreAuthorize": "true"}).boot()
    h.tap("TAG1")  # Authorize fills the cache
    h.tap("TAG1")  # presented again: cancels the pending authorization
    assert h.status(1) == "Available"
    assert h.csms("ClearCache", {}).payload == {"status": "Accepted"}
    m = h.mark()
    h.tap("TAG1")
    assert h.calls("Authorize", m)


def test_cache_entry_expiring_now_is_not_valid():
    h = Harness({"LocalPreAuthorize": "true"}).boot()
    h.id_tags = {"T": {"status": "Accepted", "expiryDate": "2026-11-24T12:00:05Z"}}
    h.tap("T")
    h.tap("T")
    h.advance(5)
    m = h.mark()
    h.tap("T")
    assert h.calls("Authorize", m)  # expired by time => ask again


@pytest.mark.parametrize("stop_on_disconnect,expected", [("true", ["Finishing", "Available"]),
                                                         ("false", ["SuspendedEV"])])
def test_tc005_ev_side_disconnect(stop_on_disconnect, expected):
    h = Harness({"StopTransactionOnEVSideDisconnect": stop_on_disconnect}).boot()
    charging(h)
    m = h.mark()
    h.unplug(1)
    assert h.statuses(1, m) == expected
    if stop_on_disconnect == "true":
        assert h.calls("StopTransaction", m)[0].payload["reason"] == "EVDisconnected"
    else:
        sn = h.calls("StatusNotification", m)[0].payload
        assert sn["info"] == "EV side disconnected" and not h.calls("StopTransaction", m)
        assert h.relays[1] is False
        h.csms("RemoteStopTransaction", {"transactionId": 1})
        assert h.calls("StopTransaction", m)[0].payload["reason"] == "Remote"
        assert h.status(1) == "Available"


def test_remote_start_remote_first_and_timeout():
    h = Harness({"ConnectionTimeOut": "20"}).boot()
    r = h.csms("RemoteStartTransaction", {"connectorId": 1, "idTag": "T"})
    assert r.payload == {"status": "Accepted"}
    assert h.calls("Authorize")  # AuthorizeRemoteTxRequests=true (iEVQC33)
    assert h.status(1) == "Preparing"
    h.advance(21)
    assert h.status(1) == "Available" and not h.calls("StartTransaction")


@pytest.mark.parametrize("payload", [{"connectorId": 0, "idTag": "T"}, {"connectorId": 3, "idTag": "T"}])
def test_remote_start_bad_connector_rejected(payload):
    h = Harness().boot()
    assert h.csms("RemoteStartTransaction", payload).payload == {"status": "Rejected"}


def test_tc026_remote_start_on_busy_connector_rejected_and_tc028_unknown_stop():
    h = Harness({"LocalPreAuthorize": "false"}).boot()
    charging(h)
    assert h.csms("RemoteStartTransaction", {"connectorId": 1, "idTag": "X"}).payload["status"] == "Rejected"
    assert h.csms("RemoteStopTransaction", {"transactionId": 99}).payload["status"] == "Rejected"


def test_tc013_unavailable_persists_and_same_state_sends_nothing():
    h = Harness().boot()
    m = h.mark()
    assert h.csms("ChangeAvailability", {"connectorId": 1, "type": "Inoperative"}).payload["status"] == "Accepted"
    assert h.statuses(1, m) == ["Unavailable"]
    m = h.mark()
    assert h.csms("ChangeAvailability", {"connectorId": 1, "type": "Inoperative"}).payload["status"] == "Accepted"
    assert h.statuses(since=m) == []
    assert ("kv_put", "availability", "1", "Inoperative") in h.ops


def test_change_availability_during_transaction_is_scheduled():
    h = Harness().boot()
    charging(h)
    assert h.csms("ChangeAvailability", {"connectorId": 1, "type": "Inoperative"}).payload["status"] == "Scheduled"
    assert h.status(1) == "Charging"
    m = h.mark()
    h.tap("TAG1")
    h.unplug(1)
    assert h.statuses(1, m)[-1] == "Unavailable"


def test_change_availability_connector_zero_sets_all():
    h = Harness().boot()
    m = h.mark()
    h.csms("ChangeAvailability", {"connectorId": 0, "type": "Inoperative"})
    assert sorted((s.payload["connectorId"], s.payload["status"]) for s in h.calls("StatusNotification", m)) == [
        (0, "Unavailable"), (1, "Unavailable"), (2, "Unavailable")]


def test_power_loss_stops_the_transaction_after_reboot_with_last_meter_value():
    h = Harness({"MeterValueSampleInterval": "10"}).boot()
    h.meter(1, 1000)
    charging(h)
    h.meter(1, 1500)
    h.advance(10)
    state = _state_from_ops(h.ops)
    h2 = Harness(state=state, now=h.now + timedelta(minutes=5))
    h2.next_tx_id = 2
    h2.boot()
    stops = h2.calls("StopTransaction")
    assert len(stops) == 1
    assert stops[0].payload["reason"] == "PowerLoss"
    assert stops[0].payload["meterStop"] == 1500
    assert stops[0].payload["transactionId"] == 1


def test_hard_reset_stops_with_hard_reset_after_reboot():
    h = Harness().boot()
    charging(h)
    h.csms("Reset", {"type": "Hard"})
    assert h.restarts == ["Hard"] and not h.calls("StopTransaction")
    h2 = Harness(state=_state_from_ops(h.ops))
    h2.boot()
    assert h2.calls("StopTransaction")[0].payload["reason"] == "HardReset"
    assert h2.status(1) == "Finishing"  # the EV is still plugged (TC_015)


def test_soft_reset_stops_first():
    h = Harness().boot()
    charging(h)
    h.csms("Reset", {"type": "Soft"})
    assert h.calls("StopTransaction")[0].payload["reason"] == "SoftReset"
    assert h.restarts == ["Soft"]


def test_unlock_fixed_cable_not_supported_and_tx_continues():
    h = Harness().boot()
    charging(h)
    assert h.csms("UnlockConnector", {"connectorId": 1}).payload == {"status": "NotSupported"}
    assert h.status(1) == "Charging"
    assert h.csms("UnlockConnector", {"connectorId": 9}).payload == {"status": "NotSupported"}


def test_unlock_socket_outlet_stops_with_unlock_command():
    from twin.core.station import StationSpec

    h = Harness(spec=StationSpec(fixed_cable=False)).boot()
    charging(h)
    assert h.csms("UnlockConnector", {"connectorId": 1}).payload == {"status": "Unlocked"}
    assert h.calls("StopTransaction")[0].payload["reason"] == "UnlockCommand"


def test_data_transfer_unknown_vendor():
    h = Harness().boot()
    assert h.csms("DataTransfer", {"vendorId": "acme"}).payload == {"status": "UnknownVendorId"}


def test_sampled_meter_values_every_interval_with_configured_measurands():
    h = Harness({"MeterValueSampleInterval": "10"}).boot()
    h.meter(1, 100)
    charging(h)
    for k in range(3):
        h.meter(1, 200 + k * 50)
        h.advance(10)
    mvs = h.calls("MeterValues")
    assert len(mvs) == 3
    for mv in mvs:
        assert mv.payload["transactionId"] == 1
        values = mv.payload["meterValue"][0]["sampledValue"]
        assert {v["context"] for v in values} == {"Sample.Periodic"}
        measurands = {v["measurand"] for v in values}
        assert measurands >= {"Energy.Active.Import.Register", "Power.Active.Import", "Current.Import", "Voltage"}
        assert "SoC" not in measurands  # an AC meter does not measure it, and nothing is made up


def test_clock_aligned_meter_values_on_the_grid():
    h = Harness({"ClockAlignedDataInterval": "20", "MeterValueSampleInterval": "0"}).boot()
    h.advance(3)
    charging(h)
    h.advance(45)
    stamps = [m.payload["meterValue"][0]["timestamp"] for m in h.calls("MeterValues")]
    assert stamps == ["2026-11-24T12:00:20.000Z", "2026-11-24T12:00:40.000Z"]
    assert h.calls("MeterValues")[0].payload["meterValue"][0]["sampledValue"][0]["context"] == "Sample.Clock"


def test_unsupported_measurand_rejected():
    h = Harness().boot()
    r = h.csms("ChangeConfiguration", {"key": "MeterValuesSampledData", "value": "Energy.Reactive.Export.Interval"})
    assert r.payload == {"status": "Rejected"}


def test_stop_txn_sampled_data_goes_into_transaction_data():
    h = Harness({"MeterValueSampleInterval": "10", "StopTxnSampledData": "Energy.Active.Import.Register"}).boot()
    h.meter(1, 100)
    charging(h)
    h.meter(1, 150)
    h.advance(10)
    h.meter(1, 190)
    h.tap("TAG1")
    data = h.calls("StopTransaction")[0].payload["transactionData"]
    contexts = [d["sampledValue"][0]["context"] for d in data]
    assert contexts == ["Transaction.Begin", "Sample.Periodic", "Transaction.End"]


def test_stop_on_invalid_id_false_suspends_evse():
    h = Harness({"StopTransactionOnInvalidId": "false"}).boot()
    h.scripts["StartTransaction"] = lambda p: {"transactionId": 5, "idTagInfo": {"status": "Invalid"}}
    h.id_tags = {}
    h.plug(1)
    h.tap("TAG1")
    assert h.status(1) == "SuspendedEVSE"
    assert h.relays[1] is False and not h.calls("StopTransaction")


def test_stop_on_invalid_id_true_deauthorizes():
    h = Harness({"StopTransactionOnInvalidId": "true"}).boot()
    h.scripts["StartTransaction"] = lambda p: {"transactionId": 5, "idTagInfo": {"status": "Invalid"}}
    h.plug(1)
    h.tap("TAG1")
    assert h.calls("StopTransaction")[0].payload["reason"] == "DeAuthorized"


def test_minimum_status_duration_delays_and_suppresses_short_states():
    h = Harness({"MinimumStatusDuration": "10"}).boot()
    m = h.mark()
    h.plug(1)
    h.advance(5)
    assert h.statuses(1, m) == []
    h.advance(5)
    assert h.statuses(1, m) == ["Preparing"]
    h.unplug(1)
    h.plug(1)
    h.advance(20)
    assert h.statuses(1, m) == ["Preparing"]


def test_fault_reports_error_code_and_info_and_blocks_start():
    h = Harness().boot()
    m = h.mark()
    h.run(h.st.fault(1, "GroundFailure", "RCD tripped", h.now))
    sn = h.calls("StatusNotification", m)[0].payload
    assert (sn["status"], sn["errorCode"], sn["info"]) == ("Faulted", "GroundFailure", "RCD tripped")
    h.plug(1)
    h.tap("TAG1")
    assert not h.calls("StartTransaction")
    h.run(h.st.clear_fault(1, h.now))
    assert h.status(1) == "Preparing"


def test_meter_failure_reported_and_last_good_register_billed():
    h = Harness().boot()
    h.meter(1, 1000)
    charging(h)
    h.meter(1, 1200)
    m = h.mark()
    h.run(h.st.meter_failed(1, "timeout", h.now))
    assert h.calls("StatusNotification", m)[0].payload["errorCode"] == "PowerMeterFailure"
    h.tap("TAG1")
    assert h.calls("StopTransaction")[0].payload["meterStop"] == 1200


def test_get_configuration_and_change_configuration_statuses():
    h = Harness().boot()
    r = h.csms("GetConfiguration", {"key": ["HeartbeatInterval", "Nope"]})
    assert r.payload["unknownKey"] == ["Nope"]
    assert h.csms("ChangeConfiguration", {"key": "Testing", "value": "true"}).payload["status"] == "NotSupported"
    assert h.csms("ChangeConfiguration", {"key": "MeterValueSampleInterval", "value": "-1"}).payload[
        "status"] == "Rejected"
    assert h.csms("ChangeConfiguration", {"key": "NumberOfConnectors", "value": "3"}).payload["status"] == "Rejected"


def _state_from_ops(ops: list[tuple]) -> dict:
    """Replay persisted ops the way the store does (see tests/test_store.py for the real one)."""
    state: dict = {"kv": {}, "transactions": {}, "queue": [], "discarded": []}
    queue: dict = {}
    for op in ops:
        kind = op[0]
        if kind == "kv_put":
            state["kv"].setdefault(op[1], {})[op[2]] = op[3]
        elif kind == "kv_del":
            state["kv"].get(op[1], {}).pop(op[2], None)
        elif kind == "kv_clear":
            state["kv"][op[1]] = {}
        elif kind == "tx_put":
            state["transactions"][op[1]] = dict(op[2])
        elif kind == "q_put":
            queue[op[1]] = dict(op[2], seq=op[1])
        elif kind in ("q_del", "q_discard"):
            queue.pop(op[1], None)
    state["queue"] = [queue[k] for k in sorted(queue)]
    return state


def test_empty_stop_txn_sampled_data_means_no_transaction_data():
    h = Harness({"MeterValueSampleInterval": "10", "StopTxnSampledData": ""}).boot()
    h.meter(1, 100)
    charging(h)
    h.advance(25)
    h.tap("TAG1")
    assert "transactionData" not in h.calls("StopTransaction")[0].payload  # §3.16.5


def test_card_goes_to_the_connector_just_plugged_not_one_left_finishing():
    h = Harness().boot()
    charging(h, 1, "TAG1")
    h.tap("TAG1")  # connector 1 Finishing, cable still in
    h.plug(2)
    h.tap("TAG2")
    assert h.calls("StartTransaction")[-1].payload["connectorId"] == 2


def test_max_energy_on_invalid_id_allows_that_much_then_suspends():
    h = Harness({"StopTransactionOnInvalidId": "false", "MaxEnergyOnInvalidId": "500"}).boot()
    h.scripts["StartTransaction"] = lambda p: {"transactionId": 5, "idTagInfo": {"status": "Blocked"}}
    h.meter(1, 1000)
    h.plug(1)
    h.tap("TAG1")
    assert h.status(1) == "Charging" and h.relays[1] is True
    h.meter(1, 1400)
    assert h.status(1) == "Charging"
    h.meter(1, 1500)  # 500 Wh delivered after the refusal
    assert h.status(1) == "SuspendedEVSE" and h.relays[1] is False
    assert not h.calls("StopTransaction")
