"""The built-ins a CSMS must drive (remote start/stop, firmware, diagnostics, reservations,
local lists, smart charging): each runs
green when twin.csms sends the calls the scenario expects, and fails, at the step that
says why, when the CSMS misbehaves in the way the scenario checks.

A station cannot make a CSMS send a call: a scenario states what must come
(``direction = "in"``), and here the test's CSMS sends it, as a CSMS team's CI would
trigger it through their own API. Firmware and diagnostics go over real HTTP and FTP
servers on loopback (tests/firmware/servers.py)."""

from __future__ import annotations

import asyncio
import json
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

import twin
from tests.conftest import ROOT, free_port
from tests.firmware.servers import FtpServer, HttpServer
from twin.core.timeutil import ts
from twin.csms import Csms
from twin.firmware.bundle import build_bundle
from twin.scenario import library
from twin.scenario.run import Result, run_scenario


async def _run(name: str, csms: Csms, drive) -> Result:
    """Run builtin:NAME against ``csms`` while ``drive(csms)`` plays the CSMS's part."""
    scenario = library.builtin(name)
    task = asyncio.ensure_future(run_scenario(scenario, csms.url, "CP-" + name))
    try:
        await asyncio.wait_for(drive(csms), 90)
    except BaseException:
        task.cancel()
        raise
    return await asyncio.wait_for(task, 120)


def _frames(result: Result) -> str:
    return result.message + "\n" + "\n".join(json.dumps(f["frame"]) for f in result.frames)


def test_every_builtin_the_csms_must_drive_is_driven_here():
    driven = {n for n in library.names() if library.csms_sends(library.builtin(n))}
    assert driven == {"remote-session", "remote-start-rejected", "firmware-update", "diagnostics-upload",
                      "reservation", "local-list", "smart-charging"}
    assert library.csms_sends(library.builtin("remote-session")) == ["RemoteStartTransaction",
                                                                     "RemoteStopTransaction"]
    assert library.csms_sends(library.builtin("local-session")) == []
    assert library.csms_sends(library.builtin("reservation")) == ["ReserveNow", "CancelReservation"]
    assert library.csms_sends(library.builtin("local-list")) == ["SendLocalList", "GetLocalListVersion"]
    assert library.csms_sends(library.builtin("smart-charging")) == ["SetChargingProfile", "GetCompositeSchedule",
                                                                     "ClearChargingProfile"]


# ---------------------------------------------------------------- remote start and stop
async def _remote_session(csms: Csms, *, wrong_id: bool = False) -> None:
    await csms.wait_for("StatusNotification", {"connectorId": 1, "status": "Preparing"}, timeout=30)
    answer = await csms.call("RemoteStartTransaction", {"connectorId": 1, "idTag": "TWIN-REMOTE-1"})
    assert answer == {"status": "Accepted"}
    start = await csms.wait_for("StartTransaction", {"idTag": "TWIN-REMOTE-1"}, timeout=20)
    await csms.wait_for("StatusNotification", {"connectorId": 1, "status": "Charging"}, timeout=20)
    tid = csms.reply_to(start).payload["transactionId"]
    await csms.call("RemoteStopTransaction", {"transactionId": tid + 1000 if wrong_id else tid})


async def test_remote_session_passes_when_the_csms_starts_and_stops_it(csms):
    result = await _run("remote-session", csms, _remote_session)
    assert result.passed, _frames(result)
    (stop,) = csms.calls("StopTransaction")
    assert stop.payload["reason"] == "Remote" and stop.payload["transactionId"] == \
        csms.reply_to(csms.calls("StartTransaction")[0]).payload["transactionId"]


async def test_remote_session_fails_at_once_when_the_csms_stops_another_transaction(csms):
    result = await _run("remote-session", csms, lambda c: _remote_session(c, wrong_id=True))
    assert not result.passed and not result.error
    assert result.failed_step.number == 11 and result.seconds < 30, _frames(result)
    assert "the next RemoteStopTransaction" in result.expected and "RemoteStopTransaction" in result.instead
    assert not csms.calls("StopTransaction")  # the station refused to stop an unknown id


async def _remote_start_refused(csms: Csms, *, then_stop: bool = False) -> None:
    await csms.wait_for("StatusNotification", {"connectorId": 1, "status": "Available"}, timeout=30)
    answer = await csms.call("RemoteStartTransaction", {"connectorId": 1, "idTag": "TWIN-REMOTE-2"})
    assert answer == {"status": "Rejected"}  # the canned reply the scenario installed
    if then_stop:  # a CSMS that believes the session runs anyway
        await asyncio.sleep(0.5)
        await csms.call("RemoteStopTransaction", {"transactionId": 1})


async def test_remote_start_rejected_passes_and_nothing_starts(csms):
    result = await _run("remote-start-rejected", csms, _remote_start_refused)
    assert result.passed, _frames(result)
    assert not csms.calls("StartTransaction") and not csms.calls("Authorize")
    rejected = [f for f in result.frames if f.get("do") == "reply"]
    assert len(rejected) == 1 and rejected[0]["frame"][2] == {"status": "Rejected"}


async def test_remote_start_rejected_fails_when_the_csms_stops_a_session_that_never_began(csms):
    result = await _run("remote-start-rejected", csms, lambda c: _remote_start_refused(c, then_stop=True))
    assert not result.passed and result.failed_step.number == 7, _frames(result)
    assert "it came" in result.instead and "RemoteStopTransaction" in result.instead


# ---------------------------------------------------------------- firmware
@pytest.fixture(scope="module")
def same_version_bundle(tmp_path_factory) -> Path:
    """A bundle of this tree at the running version: the in-process station reboots into the
    same code, so the trial of that version ends well (twin/firmware/slots.py)."""
    return build_bundle(ROOT, twin.__version__, tmp_path_factory.mktemp("bundle"))


async def _update_firmware(csms: Csms, location: str) -> None:
    await csms.wait_for("StatusNotification", {"connectorId": 1, "status": "Available"}, timeout=30)
    answer = await csms.call("UpdateFirmware", {"location": location, "retries": 0,
                                                "retrieveDate": ts(datetime.now(timezone.utc))})
    assert answer == {}


async def test_firmware_update_passes_through_download_install_reboot_installed(csms, same_version_bundle):
    with HttpServer() as http:
        http.files["/fw/bundle.tar.gz"] = same_version_bundle.read_bytes()
        result = await _run("firmware-update", csms, lambda c: _update_firmware(c, http.url("fw/bundle.tar.gz")))
        assert ("GET", "/fw/bundle.tar.gz") in [(m, p) for m, p, _ in http.requests]
    assert result.passed, _frames(result)
    statuses = [m.payload["status"] for m in csms.calls("FirmwareStatusNotification")]
    assert statuses == ["Downloading", "Downloaded", "Installing", "Installed"]
    boots = csms.calls("BootNotification")
    assert len(boots) == 2 and boots[1].index < csms.calls("FirmwareStatusNotification")[-1].index
    assert result.frames[-1]["run"] == 2  # the last frames are the rebooted station's


async def test_firmware_update_fails_at_once_when_the_location_serves_nothing(csms):
    with HttpServer() as http:  # no file: 404
        result = await _run("firmware-update", csms, lambda c: _update_firmware(c, http.url("fw/missing.tar.gz")))
    assert not result.passed and result.failed_step.number == 6, _frames(result)
    assert '"status":"DownloadFailed"' in result.instead and result.seconds < 60
    assert len(csms.calls("BootNotification")) == 1  # no reboot


# ---------------------------------------------------------------- diagnostics
async def _get_diagnostics(csms: Csms, location: str) -> None:
    await csms.wait_for("StatusNotification", {"connectorId": 1, "status": "Available"}, timeout=30)
    answer = await csms.call("GetDiagnostics", {"location": location, "retries": 0})
    assert answer["fileName"].startswith("diagnostics-CP-diagnostics-upload-")


async def test_diagnostics_upload_passes_and_the_file_arrives(csms, tmp_path):
    with FtpServer(tmp_path / "ftp") as ftp:
        result = await _run("diagnostics-upload", csms, lambda c: _get_diagnostics(c, ftp.url("files/")))
        uploaded = sorted(p.name for p in (ftp.home / "files").iterdir())
    assert result.passed, _frames(result)
    assert [m.payload["status"] for m in csms.calls("DiagnosticsStatusNotification")] == ["Uploading", "Uploaded"]
    file_name = csms.reply_to(csms.messages[[m.action for m in csms.messages].index("GetDiagnostics")]).payload
    assert uploaded == [file_name["fileName"]]


async def test_diagnostics_upload_fails_at_once_when_the_location_takes_nothing(csms):
    closed = f"ftp://127.0.0.1:{free_port()}/files/"  # nothing listens there
    result = await _run("diagnostics-upload", csms, lambda c: _get_diagnostics(c, closed))
    assert not result.passed and result.failed_step.number == 6, _frames(result)
    assert '"status":"UploadFailed"' in result.instead and result.seconds < 60


# ---------------------------------------------------------------- reservations
def _in(seconds: float) -> str:
    return ts(datetime.now(timezone.utc) + timedelta(seconds=seconds))


async def _reservations(csms: Csms, *, cancel_offset: int = 0) -> None:
    await csms.wait_for("StatusNotification", {"connectorId": 1, "status": "Available"}, timeout=30)
    answer = await csms.call("ReserveNow", {"connectorId": 1, "expiryDate": _in(300), "idTag": "TWIN-RESERVED-1",
                                            "reservationId": 101})
    assert answer == {"status": "Accepted"}
    await csms.wait_for("StopTransaction", timeout=30)
    await csms.wait_for("StatusNotification", {"connectorId": 1, "status": "Available"}, timeout=20)
    answer = await csms.call("ReserveNow", {"connectorId": 1, "expiryDate": _in(300), "idTag": "TWIN-RESERVED-2",
                                            "reservationId": 102})
    assert answer == {"status": "Accepted"}
    await csms.wait_for("StatusNotification", {"connectorId": 1, "status": "Reserved"}, timeout=20)
    cancelled = await csms.call("CancelReservation", {"reservationId": 102 + cancel_offset})
    if cancel_offset:  # a CSMS that cancels a reservation it never made
        assert cancelled == {"status": "Rejected"}
        return
    await csms.wait_for("StatusNotification", {"connectorId": 1, "status": "Available"}, timeout=20)
    answer = await csms.call("ReserveNow", {"connectorId": 1, "expiryDate": _in(3), "idTag": "TWIN-RESERVED-3",
                                            "reservationId": 103})
    assert answer == {"status": "Accepted"}


async def test_reservation_passes_used_cancelled_and_expired(csms):
    result = await _run("reservation", csms, _reservations)
    assert result.passed, _frames(result)
    (start,) = csms.calls("StartTransaction")
    assert start.payload["idTag"] == "TWIN-RESERVED-1" and start.payload["reservationId"] == 101
    assert [m.payload["idTag"] for m in csms.calls("Authorize")] == ["TWIN-RESERVED-1"]  # the other card: none
    statuses = [m.payload["status"] for m in csms.calls("StatusNotification") if m.payload["connectorId"] == 1]
    assert statuses[-5:] == ["Available", "Reserved", "Available", "Reserved", "Available"], statuses
    assert result.seconds < 20, result.seconds


async def test_reservation_fails_at_once_when_the_csms_cancels_another_reservation(csms):
    result = await _run("reservation", csms, lambda c: _reservations(c, cancel_offset=1))
    assert not result.passed and not result.error
    assert result.failed_step.number == 23 and result.seconds < 20, _frames(result)
    assert "the next CancelReservation" in result.expected and '"reservationId":103' in result.instead
    # The station kept the reservation the CSMS failed to cancel.
    statuses = [m.payload["status"] for m in csms.calls("StatusNotification") if m.payload["connectorId"] == 1]
    assert statuses[-1] == "Reserved"


# ---------------------------------------------------------------- local list
async def _local_list(csms: Csms, *, differential_version: int = 6, remove: bool = True) -> None:
    await csms.wait_for("StatusNotification", {"connectorId": 1, "status": "Available"}, timeout=30)
    answer = await csms.call("SendLocalList", {"listVersion": 5, "updateType": "Full", "localAuthorizationList": [
        {"idTag": "TWIN-LOCAL-1", "idTagInfo": {"status": "Accepted"}},
        {"idTag": "TWIN-LOCAL-2", "idTagInfo": {"status": "Accepted"}}]})
    assert answer == {"status": "Accepted"}
    assert await csms.call("GetLocalListVersion", {}) == {"listVersion": 5}
    await csms.wait_for("StopTransaction", timeout=40)
    entry = {"idTag": "TWIN-LOCAL-1"} if remove else {"idTag": "TWIN-LOCAL-1", "idTagInfo": {"status": "Accepted"}}
    await csms.call("SendLocalList", {"listVersion": differential_version, "updateType": "Differential",
                                      "localAuthorizationList": [entry]})


async def test_local_list_passes_listed_card_offline_unlisted_refused_removed_refused(csms):
    result = await _run("local-list", csms, _local_list)
    assert result.passed, _frames(result)
    (start,) = csms.calls("StartTransaction")
    assert start.payload["idTag"] == "TWIN-LOCAL-1" and not csms.calls("Authorize")
    assert result.seconds < 30, result.seconds


async def test_local_list_fails_at_once_on_a_differential_update_whose_version_is_not_higher(csms):
    result = await _run("local-list", csms, lambda c: _local_list(c, differential_version=5))
    assert not result.passed and not result.error
    assert result.failed_step.number == 21 and result.seconds < 30, _frames(result)
    assert '"status":"VersionMismatch"' in result.instead


async def test_local_list_fails_when_the_differential_update_keeps_the_card(csms):
    result = await _run("local-list", csms, lambda c: _local_list(c, remove=False))
    assert not result.passed and not result.error
    assert result.failed_step.number == 28 and result.seconds < 30, _frames(result)
    assert '"status":"Charging"' in result.instead  # the card still started offline


# ---------------------------------------------------------------- smart charging
def _sampled(payload: dict) -> dict[str, str]:
    return {sv.get("measurand"): sv["value"] for mv in payload.get("meterValue", []) for sv in mv["sampledValue"]}


def _offered(payload: dict) -> str | None:
    return _sampled(payload).get("Current.Offered")


def _drawing(amps: str, watts: str):
    return lambda p: _sampled(p) == {"Current.Offered": amps, "Power.Active.Import": watts}


async def _smart_charging(csms: Csms, *, tx_offset: int = 0, clear_id: int = 7) -> None:
    start = await csms.wait_for("StartTransaction", {"idTag": "TWIN-SMART-1"}, timeout=30)
    await csms.wait_for("StatusNotification", {"connectorId": 1, "status": "Charging"}, timeout=20)
    tid = csms.reply_to(start).payload["transactionId"]
    await csms.wait_for("MeterValues", _drawing("32", "11000"), timeout=20)
    profile = {"chargingProfileId": 7, "transactionId": tid + tx_offset, "stackLevel": 0,
               "chargingProfilePurpose": "TxProfile", "chargingProfileKind": "Relative",
               "chargingSchedule": {"chargingRateUnit": "A", "chargingSchedulePeriod": [
                   {"startPeriod": 0, "limit": 10.0, "numberPhases": 3}]}}
    answer = await csms.call("SetChargingProfile", {"connectorId": 1, "csChargingProfiles": profile})
    if tx_offset:  # a TxProfile for a transaction that does not run there (OCTT TC_058_2)
        assert answer == {"status": "Rejected"}
        return
    assert answer == {"status": "Accepted"}
    composite = await csms.call("GetCompositeSchedule", {"connectorId": 1, "duration": 300, "chargingRateUnit": "A"})
    assert composite["chargingSchedule"]["chargingSchedulePeriod"][0]["limit"] == 10.0
    # A sample taken after the GetCompositeSchedule answer that shows the EV held to the limit.
    await csms.wait_for("MeterValues", _drawing("10", "6900"), timeout=20, after=len(csms.messages))
    await csms.call("ClearChargingProfile", {"id": clear_id})


async def test_smart_charging_passes_limit_applied_reported_and_cleared(csms):
    result = await _run("smart-charging", csms, _smart_charging)
    assert result.passed, _frames(result)
    offered = [_offered(m.payload) for m in csms.calls("MeterValues")]
    assert "32" in offered and "10" in offered and offered[-1] == "32", offered
    assert offered.index("10") > offered.index("32") and result.seconds < 20


async def test_smart_charging_fails_at_once_when_the_tx_profile_names_another_transaction(csms):
    result = await _run("smart-charging", csms, lambda c: _smart_charging(c, tx_offset=1000))
    assert not result.passed and not result.error
    assert result.failed_step.number == 9 and result.seconds < 20, _frames(result)
    assert '"status":"Rejected"' in result.instead
    assert "10" not in [_offered(m.payload) for m in csms.calls("MeterValues")]


async def test_smart_charging_fails_at_once_when_the_csms_clears_a_profile_it_never_set(csms):
    result = await _run("smart-charging", csms, lambda c: _smart_charging(c, clear_id=8))
    assert not result.passed and not result.error
    assert result.failed_step.number == 14 and result.seconds < 20, _frames(result)
    assert '"status":"Unknown"' in result.instead
