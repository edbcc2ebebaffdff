"""The built-ins a CSMS must drive (remote start/stop, firmware, diagnostics): each runs
green when twin.csms sends the calls the scenario expects, and fails, at the step that
says why, when the CSMS misbehaves in the way the scenario checks.

A station cannot make a CSMS send a call: a scenario states what must come
(``direction = "in"``), and here the test's CSMS sends it, as a CSMS team's CI would
trigger it through their own API. Firmware and diagnostics go over real HTTP and FTP
servers on loopback (tests/firmware/servers.py)."""

from __future__ import annotations

import asyncio
import json
from datetime import datetime, timezone
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


@pytest.fixture
async def csms():
    server = Csms(heartbeat_interval=300)
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


def test_every_builtin_the_csms_must_drive_is_driven_here():
    driven = {n for n in library.names() if library.csms_sends(library.builtin(n))}
    assert driven == {"remote-session", "remote-start-rejected", "firmware-update", "diagnostics-upload"}
    assert library.csms_sends(library.builtin("remote-session")) == ["RemoteStartTransaction",
                                                                     "RemoteStopTransaction"]
    assert library.csms_sends(library.builtin("local-session")) == []


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
