"""GetLog (whitepaper N01) in FirmwareService: the security log or the diagnostics file,
uploaded to real HTTP and FTP (passive) servers on loopback, with LogStatusNotification
statuses recorded by the hooks."""

from __future__ import annotations

import asyncio
import io
import json
import tarfile
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from tests.firmware.servers import FtpServer, HttpServer, free_port
from tests.firmware.test_service import T0, Clock
from tests.firmware.test_signed_update import Hooks
from twin.firmware.service import FirmwareService
from twin.firmware.settings import FirmwareSettings
from twin.security.log import SecurityLog


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def hooks() -> Hooks:
    return Hooks()


@pytest.fixture
def security_log(tmp_path: Path) -> SecurityLog:
    seclog = SecurityLog(tmp_path / "data")
    seclog.append("StartupOfTheDevice", T0 - timedelta(hours=3), "power on")
    seclog.append("SettingSystemTime", T0 - timedelta(hours=2))
    seclog.append("InvalidFirmwareSignature", T0 - timedelta(hours=1), "SignedUpdateFirmware 3: mismatch")
    return seclog


def make(tmp_path: Path, hooks: Hooks, clock: Clock, **settings: Any) -> FirmwareService:
    logs = tmp_path / "data" / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    (logs / "twin.log").write_text(f"{T0.isoformat()} INFO twin.runtime: station CP1 up\n")
    service = FirmwareService(tmp_path / "data", hooks, log_files=lambda: sorted(logs.iterdir()), clock=clock,
                              sleep=clock.sleep, charge_point_id="CP1", settings=FirmwareSettings(**settings))
    hooks.service = service
    return service


@pytest.fixture
async def service(tmp_path: Path, hooks: Hooks, clock: Clock):
    svc = make(tmp_path, hooks, clock)
    yield svc
    await svc.close()


def lsn(hooks: Hooks) -> list[str]:
    return [e for e in hooks.events if e.startswith("LSN")]


async def test_tc_079_security_log_in_a_window_over_http_put(service: FirmwareService, hooks: Hooks,
                                                             http_server: HttpServer,
                                                             security_log: SecurityLog) -> None:
    seen: list[tuple[str, int | None]] = []
    original = hooks.send_log_status

    async def record(status: str, request_id: int | None) -> None:
        seen.append(service.log_state)
        await original(status, request_id)

    hooks.send_log_status = record  # type: ignore[method-assign]
    assert service.log_state == ("Idle", None)
    status, name = await service.get_log("SecurityLog", 5, http_server.url("logs/"), 0, 0,
                                         (T0 - timedelta(hours=2, minutes=30)).isoformat(), None,
                                         security_log=security_log)
    assert status == "Accepted" and name is not None and name.startswith("securitylog-CP1-")
    await service.wait_finished()
    assert lsn(hooks) == ["LSN Uploading 5", "LSN Uploaded 5"]
    assert seen == [("Uploading", 5), ("Uploaded", 5)]
    assert service.log_state == ("Idle", None)  # N01.FR.12: nothing runs
    headers, body = http_server.received[f"/logs/{name}"]
    entries = [json.loads(line) for line in body.decode().splitlines()]
    assert [e["type"] for e in entries] == ["SettingSystemTime", "InvalidFirmwareSignature"]  # the window
    assert not list((service.data_dir / "firmware" / "logs").iterdir())  # the file is not kept


async def test_security_log_over_ftp_passive(service: FirmwareService, hooks: Hooks, ftp_server: FtpServer,
                                             security_log: SecurityLog) -> None:
    status, name = await service.get_log("SecurityLog", 6, ftp_server.url("files/"), None, None, None, None,
                                         security_log=security_log)
    assert status == "Accepted"
    await service.wait_finished()
    assert lsn(hooks) == ["LSN Uploading 6", "LSN Uploaded 6"]
    lines = (ftp_server.home / "files" / name).read_text().splitlines()
    assert len(lines) == 3


async def test_no_entries_in_the_window_is_rejected(service: FirmwareService, hooks: Hooks,
                                                    security_log: SecurityLog, tmp_path: Path) -> None:
    status, name = await service.get_log("SecurityLog", 7, "http://127.0.0.1:1/", 0, 0,
                                         T0.isoformat(), (T0 + timedelta(hours=1)).isoformat(),
                                         security_log=security_log)
    assert (status, name) == ("Rejected", None)
    await service.wait_finished()
    assert hooks.events == []
    empty = SecurityLog(tmp_path / "empty")
    assert (await service.get_log("SecurityLog", 8, "http://127.0.0.1:1/", 0, 0, None, None,
                                  security_log=empty))[0] == "Rejected"


async def test_diagnostics_log(service: FirmwareService, hooks: Hooks, http_server: HttpServer) -> None:
    status, name = await service.get_log("DiagnosticsLog", 9, http_server.url("up"), 0, 0, None, None)
    assert status == "Accepted" and name.startswith("diagnostics-CP1-")
    await service.wait_finished()
    assert lsn(hooks) == ["LSN Uploading 9", "LSN Uploaded 9"]
    _headers, body = http_server.received[f"/up/{name}"]
    with tarfile.open(fileobj=io.BytesIO(body), mode="r:gz") as tar:
        members = {m.name: tar.extractfile(m).read() for m in tar}  # type: ignore[union-attr]
    assert b"station CP1 up" in members["logs/twin.log"]
    assert json.loads(members["diagnostics.json"])["chargePointId"] == "CP1"


async def test_the_upload_waits_for_the_answer(service: FirmwareService, hooks: Hooks, http_server: HttpServer,
                                               security_log: SecurityLog) -> None:
    replied = asyncio.get_running_loop().create_future()
    status, _name = await service.get_log("SecurityLog", 10, http_server.url("x/"), 0, 0, None, None,
                                          security_log=security_log, replied=replied)
    assert status == "Accepted"
    await asyncio.sleep(0.05)
    assert hooks.events == [] and service.log_state == ("Uploading", 10)
    replied.set_result(None)
    await service.wait_finished()
    assert lsn(hooks) == ["LSN Uploading 10", "LSN Uploaded 10"]


async def test_n01_fr_11_a_new_get_log_cancels_the_upload_accepted_canceled(
        service: FirmwareService, hooks: Hooks, http_server: HttpServer, security_log: SecurityLog) -> None:
    hold = asyncio.Event()
    original = hooks.send_log_status

    async def held(status: str, request_id: int | None) -> None:
        await original(status, request_id)
        if request_id == 1:
            await hold.wait()  # the first upload is "in progress" until cancelled

    hooks.send_log_status = held  # type: ignore[method-assign]
    assert (await service.get_log("SecurityLog", 1, http_server.url("a/"), 0, 0, None, None,
                                  security_log=security_log))[0] == "Accepted"
    while lsn(hooks) != ["LSN Uploading 1"]:
        await asyncio.sleep(0.01)
    status, name = await service.get_log("SecurityLog", 2, http_server.url("b/"), 0, 0, None, None,
                                         security_log=security_log)
    assert status == "AcceptedCanceled" and name
    await service.wait_finished()
    assert lsn(hooks) == ["LSN Uploading 1", "LSN Uploading 2", "LSN Uploaded 2"]
    assert [path.split("/")[1] for path in http_server.received] == ["b"]


async def test_ftp_write_refused_is_permission_denied_without_retries(
        service: FirmwareService, hooks: Hooks, clock: Clock, ftp_server: FtpServer,
        security_log: SecurityLog) -> None:
    # anonymous may only read: pyftpdlib answers 550 Not enough privileges.
    await service.get_log("SecurityLog", 11, ftp_server.url("files/", user=None), 3, 5, None, None,
                          security_log=security_log)
    await service.wait_finished()
    assert lsn(hooks) == ["LSN Uploading 11", "LSN PermissionDenied 11"]
    assert clock.sleeps == []  # retrying cannot fix a refusal


async def test_http_401_is_permission_denied(service: FirmwareService, hooks: Hooks,
                                             security_log: SecurityLog) -> None:
    with HttpServer(credentials=("fw", "pw")) as server:
        await service.get_log("SecurityLog", 12, server.url("x/"), 0, 0, None, None, security_log=security_log)
        await service.wait_finished()
    assert lsn(hooks) == ["LSN Uploading 12", "LSN PermissionDenied 12"]


@pytest.mark.parametrize(("location", "final"), [("sftp://127.0.0.1/logs/", "NotSupportedOperation"),
                                                 ("http://[::1/logs/", "BadMessage")])
async def test_unsupported_and_malformed_locations(service: FirmwareService, hooks: Hooks,
                                                   security_log: SecurityLog, location: str, final: str) -> None:
    await service.get_log("SecurityLog", 13, location, 2, 1, None, None, security_log=security_log)
    await service.wait_finished()
    assert lsn(hooks) == ["LSN Uploading 13", f"LSN {final} 13"]


async def test_an_unreachable_server_is_retried_then_upload_failure(
        service: FirmwareService, hooks: Hooks, clock: Clock, security_log: SecurityLog) -> None:
    await service.get_log("SecurityLog", 14, f"http://127.0.0.1:{free_port()}/x/", 2, 4, None, None,
                          security_log=security_log)
    await service.wait_finished()
    assert lsn(hooks) == ["LSN Uploading 14", "LSN UploadFailure 14"]
    assert clock.sleeps == [4, 4]
