"""FirmwareService against real FTP/HTTP servers, with fake hooks (the hooks are the
runtime boundary: OCPP sending, connectors, restart). The OCTT cases TC_044_1/2/3 and
TC_045_1/2 are checked as the sequence of notifications and hook calls."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import os
import shutil
import tarfile
import threading
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest

from tests.firmware.certs import TlsFiles
from tests.firmware.conftest import Bundles, paused_python, staging_dirs, wait_for
from tests.firmware.servers import FTP_PASSWORD, FtpServer, HttpServer, multipart_file
from twin.firmware import slots
from twin.firmware.service import FirmwareService
from twin.firmware.settings import FirmwareSettings

T0 = datetime(2026, 11, 24, 12, 0, 0, tzinfo=timezone.utc)


class Clock:
    """A clock the fake sleep advances: retry waits and retrieveDate take no real time."""

    def __init__(self) -> None:
        self.now = T0
        self.sleeps: list[float] = []

    def __call__(self) -> datetime:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += timedelta(seconds=seconds)
        await asyncio.sleep(0)


class Hooks:
    """Records what the service asks of the runtime, in order."""

    def __init__(self) -> None:
        self.events: list[str] = []
        self.progress_at_downloaded: dict[str, Any] | None = None
        self.service: FirmwareService | None = None
        self.extras: dict[str, Any] = {"config": {"ChargePointId": "CP1"}}

    async def send_firmware_status(self, status: str) -> None:
        self.events.append(f"FSN {status}")
        if status == "Downloaded" and self.service is not None:
            self.progress_at_downloaded = dict(self.service.progress["firmware"] or {})

    async def send_diagnostics_status(self, status: str) -> None:
        self.events.append(f"DSN {status}")

    async def wait_until_idle(self) -> None:
        self.events.append("wait_until_idle")

    async def end_maintenance(self) -> None:
        self.events.append("end_maintenance")

    async def restart(self) -> None:
        # Like the runtime: a clean shutdown, which closes the firmware service from
        # inside the very task that asked for the restart.
        self.events.append("restart")
        if self.service is not None:
            await self.service.close()

    def diagnostics_extras(self) -> dict:
        return self.extras


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def hooks() -> Hooks:
    return Hooks()


@pytest.fixture
def log_dir(tmp_path: Path) -> Path:
    logs = tmp_path / "data" / "logs"
    logs.mkdir(parents=True)
    return logs


def make_service(tmp_path: Path, hooks: Hooks, clock: Clock, log_dir: Path, **kw: Any) -> FirmwareService:
    service = FirmwareService(tmp_path / "data", hooks, log_files=lambda: sorted(log_dir.iterdir()),
                              clock=clock, sleep=clock.sleep, charge_point_id="CP1", **kw)
    hooks.service = service
    return service


@pytest.fixture
async def service(tmp_path: Path, hooks: Hooks, clock: Clock, log_dir: Path):
    svc = make_service(tmp_path, hooks, clock, log_dir)
    yield svc
    await svc.close()


# -- UpdateFirmware ---------------------------------------------------------------------


async def test_tc_044_1_download_and_install(service: FirmwareService, hooks: Hooks, ftp_server: FtpServer,
                                             bundles: Bundles, tmp_path: Path,
                                             caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level("INFO", logger="twin.firmware")
    size = len(bundles.good["1.11"].read_bytes())
    (ftp_server.home / "ocpp-twin-1.11.tar.gz").write_bytes(bundles.good["1.11"].read_bytes())
    assert service.firmware_status == "Idle"
    service.update_firmware(ftp_server.url("ocpp-twin-1.11.tar.gz"), T0, retries=0, retry_interval=0)
    await service.wait_finished()
    assert hooks.events == ["FSN Downloading", "FSN Downloaded", "FSN Installing", "wait_until_idle", "restart"]
    assert hooks.progress_at_downloaded is not None
    assert hooks.progress_at_downloaded["received"] == hooks.progress_at_downloaded["total"] == size
    assert FTP_PASSWORD not in hooks.progress_at_downloaded["location"]
    assert f"{size}/{size} bytes (100 %)" in caplog.text and FTP_PASSWORD not in caplog.text
    data = tmp_path / "data"
    state = slots.read_state(data)
    assert (state.active, state.trial, state.previous) == ("1.11", "1.11", slots.BASE)
    assert not (data / "firmware" / "update.json").exists()
    assert list((data / "firmware" / "download").iterdir()) == []  # the bundle is not kept

    # After the restart (launcher: trial child), the runtime's BootNotification is Accepted:
    assert slots.mark_boot_ok(data, "1.11")
    assert slots.pending_report(data) == "Installed"  # -> FSN Installed, after BN


async def test_tc_044_2_download_failed(service: FirmwareService, hooks: Hooks, ftp_server: FtpServer,
                                        tmp_path: Path) -> None:
    service.update_firmware(ftp_server.url("download_fail.fwi", user=None), T0, retries=0, retry_interval=0)
    await service.wait_finished()
    assert hooks.events == ["FSN Downloading", "FSN DownloadFailed", "end_maintenance"]
    assert service.firmware_status == "Idle" and service.progress["firmware"] is None
    assert slots.read_state(tmp_path / "data").active == slots.BASE


async def test_tc_044_3_installation_failed(service: FirmwareService, hooks: Hooks, ftp_server: FtpServer,
                                            tmp_path: Path) -> None:
    (ftp_server.home / "unsupported.fwi").write_bytes(b"MZ\x90\x00 not an ocpp-twin bundle" * 100)
    service.update_firmware(ftp_server.url("unsupported.fwi"), T0, retries=0, retry_interval=0)
    await service.wait_finished()
    # Verification happens before the connectors are touched: no wait, no restart.
    assert hooks.events == ["FSN Downloading", "FSN Downloaded", "FSN Installing", "FSN InstallationFailed",
                            "end_maintenance"]
    assert slots.read_state(tmp_path / "data").active == slots.BASE
    assert service.firmware_status == "Idle"


async def test_version_that_does_not_import_fails_before_the_connectors_are_touched(
        service: FirmwareService, hooks: Hooks, http_server: HttpServer, bundles: Bundles) -> None:
    http_server.files["/fw.tar.gz"] = bundles.broken_import.read_bytes()
    service.update_firmware(http_server.url("fw.tar.gz"), T0, retries=0, retry_interval=0)
    await service.wait_finished()
    assert hooks.events == ["FSN Downloading", "FSN Downloaded", "FSN Installing", "FSN InstallationFailed",
                            "end_maintenance"]


async def test_retries_are_retry_interval_apart(service: FirmwareService, hooks: Hooks, clock: Clock,
                                                http_server: HttpServer) -> None:
    service.update_firmware(http_server.url("fw.tar.gz"), T0, retries=2, retry_interval=7)
    await service.wait_finished()
    assert clock.sleeps == [7, 7]  # three attempts
    assert hooks.events == ["FSN Downloading", "FSN DownloadFailed", "end_maintenance"]


async def test_a_retry_that_succeeds(service: FirmwareService, hooks: Hooks, clock: Clock,
                                     http_server: HttpServer, bundles: Bundles) -> None:
    original = clock.sleep

    async def publish_then_sleep(seconds: float) -> None:
        http_server.files["/fw.tar.gz"] = bundles.good["1.12"].read_bytes()  # appears after attempt 1
        await original(seconds)

    service._sleep = publish_then_sleep  # type: ignore[method-assign]
    service.update_firmware(http_server.url("fw.tar.gz"), T0, retries=3, retry_interval=5)
    await service.wait_finished()
    assert clock.sleeps == [5]
    assert hooks.events[:3] == ["FSN Downloading", "FSN Downloaded", "FSN Installing"]


async def test_retrieve_date_is_waited_for_and_survives_a_restart(
        tmp_path: Path, hooks: Hooks, clock: Clock, log_dir: Path, http_server: HttpServer, bundles: Bundles) -> None:
    http_server.files["/fw.tar.gz"] = bundles.good["1.11"].read_bytes()
    never = asyncio.Event()

    async def sleep_forever(seconds: float) -> None:
        clock.sleeps.append(seconds)
        await never.wait()

    first = make_service(tmp_path, hooks, clock, log_dir)
    first._sleep = sleep_forever  # type: ignore[method-assign]
    first.update_firmware(http_server.url("fw.tar.gz"), T0 + timedelta(hours=2), retries=None, retry_interval=None)
    await asyncio.sleep(0.05)
    assert clock.sleeps == [3600.0]  # waiting in one-hour slices until retrieveDate
    assert hooks.events == [] and first.firmware_status == "Idle"  # scheduled is not "in progress"
    await first.close()  # the station stops
    assert hooks.events == ["end_maintenance"]  # every attempt that ends without a restart
    job = json.loads((tmp_path / "data/firmware/update.json").read_text())
    assert job["retrieve_date"] == "2026-11-24T14:00:00+00:00" and job["retries"] == 2  # the default

    hooks.events.clear()
    clock.sleeps.clear()
    second = make_service(tmp_path, hooks, clock, log_dir)
    await second.resume()
    await second.wait_finished()
    assert clock.sleeps == [3600.0, 3600.0]
    assert hooks.events == ["FSN Downloading", "FSN Downloaded", "FSN Installing", "wait_until_idle", "restart"]
    await second.resume()  # nothing left to resume
    assert hooks.events[-1] == "restart"


async def test_resume_after_the_switch_does_not_install_twice(
        tmp_path: Path, hooks: Hooks, clock: Clock, log_dir: Path, http_server: HttpServer, bundles: Bundles) -> None:
    http_server.files["/fw.tar.gz"] = bundles.good["1.11"].read_bytes()
    service = make_service(tmp_path, hooks, clock, log_dir)
    service.update_firmware(http_server.url("fw.tar.gz"), T0, retries=0, retry_interval=0)
    await service.wait_finished()
    # Simulate a power cut between the switch and dropping update.json:
    (tmp_path / "data/firmware/update.json").write_text(json.dumps(
        {"location": http_server.url("fw.tar.gz"), "retrieve_date": T0.isoformat(), "retries": 0,
         "retry_interval": 0, "staged_version": "1.11"}))
    hooks.events.clear()
    again = make_service(tmp_path, hooks, clock, log_dir)
    await again.resume()
    await again.wait_finished()
    assert hooks.events == []
    assert not (tmp_path / "data/firmware/update.json").exists()


async def test_a_new_update_replaces_a_scheduled_one(service: FirmwareService, hooks: Hooks,
                                                     http_server: HttpServer, bundles: Bundles) -> None:
    http_server.files["/new.tar.gz"] = bundles.good["1.12"].read_bytes()
    service.update_firmware(http_server.url("old.tar.gz"), T0 + timedelta(days=1000), retries=0, retry_interval=0)
    service.update_firmware(http_server.url("new.tar.gz"), T0, retries=0, retry_interval=0)
    await service.wait_finished()
    assert hooks.events == ["FSN Downloading", "FSN Downloaded", "FSN Installing", "wait_until_idle", "restart"]


async def test_hook_failures_do_not_stop_the_sequence(service: FirmwareService, hooks: Hooks,
                                                      ftp_server: FtpServer) -> None:
    async def offline(status: str) -> None:
        hooks.events.append(f"FSN {status}")
        raise ConnectionError("link down")

    hooks.send_firmware_status = offline  # type: ignore[method-assign]
    service.update_firmware(ftp_server.url("missing.bin"), T0, retries=0, retry_interval=0)
    await service.wait_finished()
    assert hooks.events == ["FSN Downloading", "FSN DownloadFailed", "end_maintenance"]


async def test_download_to_a_full_disk_fails_cleanly(tiny_disk: Path, hooks: Hooks, clock: Clock, log_dir: Path,
                                                     http_server: HttpServer, caplog: pytest.LogCaptureFixture) -> None:
    http_server.files["/fw.tar.gz"] = b"x" * 400_000
    service = FirmwareService(tiny_disk, hooks, log_files=list, clock=clock, sleep=clock.sleep)
    service.update_firmware(http_server.url("fw.tar.gz"), T0, retries=1, retry_interval=1)
    await service.wait_finished()
    assert hooks.events == ["FSN Downloading", "FSN DownloadFailed", "end_maintenance"]
    assert "disk full while writing" in caplog.text


async def until(condition: Any, what: str, timeout: float = 30) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, f"never happened: {what}"
        await asyncio.sleep(0.01)


FAILED_INSTALL = ["FSN Downloading", "FSN Downloaded", "FSN Installing", "FSN InstallationFailed", "end_maintenance"]


@pytest.mark.parametrize("crafted_path", [
    "{absolute}",                      # %2Ftmp%2F...%2Fvictim.txt: an absolute path
    "..%2F..%2F..%2Fvictim.txt",      # from data/firmware/download/ up to the victim
    "fw%2F..%2F..%2F..%2F..%2Fvictim.txt",
])
async def test_the_location_never_names_the_local_file(tmp_path: Path, hooks: Hooks, clock: Clock, log_dir: Path,
                                                       http_server: HttpServer, crafted_path: str) -> None:
    victim = tmp_path / "victim.txt"
    victim.write_text("the live store")
    path = "/" + crafted_path.format(absolute=quote(str(victim), safe=""))
    http_server.files[path] = b"attacker bytes, not a bundle"
    service = make_service(tmp_path, hooks, clock, log_dir)
    service.update_firmware(f"http://127.0.0.1:{http_server.port}{path}", T0, retries=0, retry_interval=0)
    await service.wait_finished()
    assert victim.read_text() == "the live store"  # not overwritten, then not deleted
    assert [p for _, p, _ in http_server.requests] == [path]  # the file was served, downloaded ...
    assert hooks.events == FAILED_INSTALL  # ... refused as a bundle, and deleted from download/
    assert list((tmp_path / "data" / "firmware" / "download").iterdir()) == []


async def test_a_download_dir_that_leads_outside_is_refused(tmp_path: Path, hooks: Hooks, clock: Clock,
                                                           log_dir: Path, http_server: HttpServer,
                                                           caplog: pytest.LogCaptureFixture) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (tmp_path / "data" / "firmware").mkdir(parents=True)
    (tmp_path / "data" / "firmware" / "download").symlink_to(elsewhere)
    http_server.files["/fw.tar.gz"] = b"x"
    service = make_service(tmp_path, hooks, clock, log_dir)
    service.update_firmware(http_server.url("fw.tar.gz"), T0, retries=0, retry_interval=0)
    await service.wait_finished()
    assert hooks.events == ["FSN Downloading", "FSN DownloadFailed", "end_maintenance"]
    assert "outside" in caplog.text and http_server.requests == []
    assert list(elsewhere.iterdir()) == []


async def test_a_download_over_the_size_cap_fails_and_leaves_nothing(
        tmp_path: Path, hooks: Hooks, clock: Clock, log_dir: Path, http_server: HttpServer,
        caplog: pytest.LogCaptureFixture) -> None:
    http_server.files["/fw.tar.gz"] = os.urandom(1024 * 1024 + 1)
    service = make_service(tmp_path, hooks, clock, log_dir, settings=FirmwareSettings(max_download_mib=1))
    for path in ("fw.tar.gz", "unsized/fw.tar.gz"):  # with and without a Content-Length
        hooks.events.clear()
        service.update_firmware(http_server.url(path), T0, retries=0, retry_interval=0)
        await service.wait_finished()
        assert hooks.events == ["FSN Downloading", "FSN DownloadFailed", "end_maintenance"]
        assert list((tmp_path / "data" / "firmware" / "download").iterdir()) == []
    assert "over the limit of 1 MiB" in caplog.text and "sent more than the limit of 1 MiB" in caplog.text


async def test_an_https_to_http_redirect_fails_the_download(tmp_path: Path, hooks: Hooks, clock: Clock,
                                                            log_dir: Path, tls: TlsFiles, https_server: HttpServer,
                                                            http_server: HttpServer, bundles: Bundles,
                                                            caplog: pytest.LogCaptureFixture) -> None:
    http_server.files["/fw.tar.gz"] = bundles.good["1.11"].read_bytes()
    https_server.redirects["/fw.tar.gz"] = (302, http_server.url("fw.tar.gz"))
    service = make_service(tmp_path, hooks, clock, log_dir, settings=FirmwareSettings(ca_file=tls.ca_file))
    service.update_firmware(https_server.url("fw.tar.gz"), T0, retries=0, retry_interval=0)
    await service.wait_finished()
    assert hooks.events == ["FSN Downloading", "FSN DownloadFailed", "end_maintenance"]
    assert "refused: it goes from https down to plain http" in caplog.text
    assert http_server.requests == []


async def test_a_replaced_update_gives_the_connectors_back(tmp_path: Path, hooks: Hooks, clock: Clock,
                                                           log_dir: Path, http_server: HttpServer,
                                                           bundles: Bundles) -> None:
    http_server.files["/fw.tar.gz"] = bundles.good["1.11"].read_bytes()
    long_transaction = asyncio.Event()  # never ends

    async def wait_for_the_transaction() -> None:
        hooks.events.append("wait_until_idle")
        await long_transaction.wait()

    hooks.wait_until_idle = wait_for_the_transaction  # type: ignore[method-assign]
    service = make_service(tmp_path, hooks, clock, log_dir)
    service.update_firmware(http_server.url("fw.tar.gz"), T0, retries=0, retry_interval=0)
    await until(lambda: "wait_until_idle" in hooks.events, "update #1 waits for the station to be idle")
    # The CSMS corrects the URL; the correction does not download.
    service.update_firmware(http_server.url("corrected.tar.gz"), T0, retries=0, retry_interval=0)
    await service.wait_finished()
    assert hooks.events == ["FSN Downloading", "FSN Downloaded", "FSN Installing", "wait_until_idle",
                            "end_maintenance",  # update #1 was replaced
                            "FSN Downloading", "FSN DownloadFailed", "end_maintenance"]
    assert service.firmware_status == "Idle"
    assert slots.read_state(tmp_path / "data").active == slots.BASE
    assert not (tmp_path / "data/firmware/update.json").exists()


async def test_a_replaced_install_leaves_the_slots_alone(tmp_path: Path, hooks: Hooks, clock: Clock,
                                                         log_dir: Path, http_server: HttpServer,
                                                         bundles: Bundles) -> None:
    python, started, go = paused_python(tmp_path, "import-test")
    http_server.files["/fw.tar.gz"] = bundles.good["1.11"].read_bytes()
    service = make_service(tmp_path, hooks, clock, log_dir, python=python)
    service.update_firmware(http_server.url("fw.tar.gz"), T0, retries=0, retry_interval=0)
    await asyncio.to_thread(wait_for, started)  # update #1 is in its import test, in a worker thread
    service.update_firmware(http_server.url("missing.tar.gz"), T0, retries=0, retry_interval=0)
    await service.wait_finished()
    assert hooks.events == ["FSN Downloading", "FSN Downloaded", "FSN Installing", "end_maintenance",
                            "FSN Downloading", "FSN DownloadFailed", "end_maintenance"]
    go.touch()  # update #1's worker goes on after its task was cancelled
    data = tmp_path / "data"
    await until(lambda: staging_dirs(data) == [], "the replaced install removes its staging directory")
    assert sorted(p.name for p in (data / "firmware" / "slots").iterdir()) == []  # and installs nothing
    assert list((data / "firmware" / "download").iterdir()) == []


async def test_requests_are_persisted_in_the_order_they_arrive(service: FirmwareService,
                                                               http_server: HttpServer) -> None:
    later = T0 + timedelta(days=1000)
    first = service.update_firmware(http_server.url("old.tar.gz"), later, retries=0, retry_interval=0)
    second = service.update_firmware(http_server.url("new.tar.gz"), later, retries=0, retry_interval=0)
    await asyncio.gather(first, second)
    job = json.loads((service.data_dir / "firmware" / "update.json").read_text())
    assert job["location"] == http_server.url("new.tar.gz")


async def test_an_update_that_arrives_while_restarting_runs_after_the_restart(
        tmp_path: Path, hooks: Hooks, clock: Clock, log_dir: Path, http_server: HttpServer, bundles: Bundles) -> None:
    http_server.files["/a.tar.gz"] = bundles.good["1.11"].read_bytes()
    http_server.files["/b.tar.gz"] = bundles.good["1.12"].read_bytes()
    service = make_service(tmp_path, hooks, clock, log_dir)
    restart = hooks.restart

    async def a_request_arrives_during_the_restart() -> None:
        await service.update_firmware(http_server.url("b.tar.gz"), T0, retries=0, retry_interval=0)
        await restart()

    hooks.restart = a_request_arrives_during_the_restart  # type: ignore[method-assign]
    service.update_firmware(http_server.url("a.tar.gz"), T0, retries=0, retry_interval=0)
    await service.wait_finished()
    assert hooks.events == ["FSN Downloading", "FSN Downloaded", "FSN Installing", "wait_until_idle", "restart"]
    data = tmp_path / "data"
    assert slots.read_state(data).active == "1.11"  # the switch was not undone
    assert json.loads((data / "firmware/update.json").read_text())["location"] == http_server.url("b.tar.gz")

    hooks.events.clear()
    hooks.restart = restart  # type: ignore[method-assign]
    after_restart = make_service(tmp_path, hooks, clock, log_dir)
    assert slots.mark_boot_ok(data, "1.11")
    await after_restart.resume()
    await after_restart.wait_finished()
    assert hooks.events == ["FSN Downloading", "FSN Downloaded", "FSN Installing", "wait_until_idle", "restart"]
    assert slots.read_state(data).active == "1.12"


async def test_disk_work_stays_off_the_event_loop(service: FirmwareService, hooks: Hooks, http_server: HttpServer,
                                                  ftp_server: FtpServer, bundles: Bundles,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    loop_thread = threading.current_thread()
    on_the_loop: list[str] = []
    called: set[str] = set()

    def spy(owner: Any, name: str) -> None:
        real = getattr(owner, name)

        def wrapper(*args: Any, **kwargs: Any) -> Any:
            called.add(name)
            if threading.current_thread() is loop_thread:
                on_the_loop.append(name)
            return real(*args, **kwargs)

        monkeypatch.setattr(owner, name, wrapper)

    for name in ("install_slot", "switch_to_trial", "write_json_atomic", "read_state"):
        spy(slots, name)
    spy(os, "fsync")
    spy(shutil, "rmtree")
    http_server.files["/fw.tar.gz"] = bundles.good["1.11"].read_bytes()
    service.update_firmware(http_server.url("fw.tar.gz"), T0, retries=0, retry_interval=0)
    await service.wait_finished()
    service.get_diagnostics(ftp_server.url("files/"), 0, 0, None, None)
    await service.wait_finished()
    assert on_the_loop == []
    assert hooks.events[-3:] == ["restart", "DSN Uploading", "DSN Uploaded"]
    assert called == {"install_slot", "switch_to_trial", "write_json_atomic", "read_state", "fsync", "rmtree"}


# -- GetDiagnostics ---------------------------------------------------------------------


LOG_LINES = [
    "2026-11-24T10:00:00.000Z INFO twin.link too early\n",
    "2026-11-24T11:00:00.000Z INFO twin.link in the window\n",
    "Traceback (most recent call last):\n",
    "  ValueError: belongs to the line before\n",
    "2026-11-24T11:30:00.000Z WARNING twin.runtime also in the window\n",
    "2026-11-24T13:00:00.000Z INFO twin.link too late\n",
]


def archive_members(data: bytes) -> dict[str, bytes]:
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
        return {m.name: tar.extractfile(m).read() for m in tar}  # type: ignore[union-attr]


async def test_tc_045_1_get_diagnostics(service: FirmwareService, hooks: Hooks, ftp_server: FtpServer,
                                        log_dir: Path) -> None:
    (log_dir / "twin.log").write_text("".join(LOG_LINES))
    hooks.extras = {"config": {"csms_url": "wss://cp:hunter2@csms.example/ocpp", "basic_auth_password": "hunter2",
                               "keys": [{"key": "AuthorizationKey", "value": "00112233"},
                                        {"key": "HeartbeatInterval", "value": "300"}]},
                    "store": {"transactions": 3}}
    name = service.get_diagnostics(ftp_server.url("files/"), retries=0, retry_interval=0,
                                   start_time="2026-11-24T10:30:00Z", stop_time=T0)
    assert name == "diagnostics-CP1-20261124T120000Z.tar.gz"
    await service.wait_finished()
    assert hooks.events == ["DSN Uploading", "DSN Uploaded"]
    assert service.diagnostics_status == "Idle"

    members = archive_members((ftp_server.home / "files" / name).read_bytes())
    assert members["logs/twin.log"].decode() == "".join(LOG_LINES[1:5])
    summary = json.loads(members["diagnostics.json"])
    assert summary["chargePointId"] == "CP1" and summary["startTime"] == "2026-11-24T10:30:00.000Z"
    assert summary["logs"] == [{"file": "twin.log", "lines": 4}]
    assert summary["station"]["store"] == {"transactions": 3}
    text = members["diagnostics.json"].decode()
    assert "hunter2" not in text and "00112233" not in text
    assert {"key": "HeartbeatInterval", "value": "300"} in summary["station"]["config"]["keys"]
    assert list((service.data_dir / "firmware" / "diagnostics").iterdir()) == []  # not kept locally


async def test_tc_045_2_upload_failed(service: FirmwareService, hooks: Hooks, ftp_server: FtpServer) -> None:
    name = service.get_diagnostics(ftp_server.url("files/failedLocation", user=None), retries=0, retry_interval=0,
                                   start_time=None, stop_time=None)
    assert name is not None
    await service.wait_finished()
    assert hooks.events == ["DSN Uploading", "DSN UploadFailed"]
    assert not (ftp_server.home / "files" / "failedLocation").exists()


async def test_diagnostics_upload_retries(service: FirmwareService, hooks: Hooks, clock: Clock,
                                          ftp_server: FtpServer) -> None:
    service.get_diagnostics(ftp_server.url("files/missing-dir/"), retries=1, retry_interval=9,
                            start_time=None, stop_time=None)
    await service.wait_finished()
    assert clock.sleeps == [9]
    assert hooks.events == ["DSN Uploading", "DSN UploadFailed"]


async def test_diagnostics_over_http_put(service: FirmwareService, hooks: Hooks, http_server: HttpServer) -> None:
    name = service.get_diagnostics(http_server.url("diag/"), retries=0, retry_interval=0,
                                   start_time=None, stop_time=None)
    await service.wait_finished()
    assert hooks.events == ["DSN Uploading", "DSN Uploaded"]
    _, body = http_server.received[f"/diag/{name}"]
    assert "diagnostics.json" in archive_members(body)


async def test_diagnostics_over_https_post(tmp_path: Path, hooks: Hooks, clock: Clock, log_dir: Path,
                                           https_server: HttpServer, tls) -> None:
    settings = FirmwareSettings(diagnostics_http_method="POST", ca_file=tls.ca_file)
    service = make_service(tmp_path, hooks, clock, log_dir, settings=settings)
    name = service.get_diagnostics(https_server.url("upload"), retries=0, retry_interval=0,
                                   start_time=None, stop_time=None)
    await service.wait_finished()
    assert hooks.events == ["DSN Uploading", "DSN Uploaded"]
    field, file_name, content = multipart_file(*https_server.received["/upload"])
    assert (field, file_name) == ("file", name)
    assert "diagnostics.json" in archive_members(content)


async def test_diagnostics_on_a_full_disk(tiny_disk: Path, hooks: Hooks, clock: Clock, tmp_path: Path,
                                          ftp_server: FtpServer, caplog: pytest.LogCaptureFixture) -> None:
    big_log = tmp_path / "twin.log"
    noise = base64.b64encode(os.urandom(1_500_000))  # does not compress below the 256 KiB disk
    big_log.write_bytes(b"".join(b"2026-11-24T11:00:00.000Z INFO x " + noise[i:i + 100] + b"\n"
                                 for i in range(0, len(noise), 100)))
    service = FirmwareService(tiny_disk, hooks, log_files=lambda: [big_log], clock=clock, sleep=clock.sleep)
    assert service.get_diagnostics(ftp_server.url("files/"), 0, 0, None, None) is not None
    await service.wait_finished()
    assert hooks.events == ["DSN Uploading", "DSN UploadFailed"]
    assert "cannot write diagnostics file" in caplog.text and "disk full" in caplog.text
    assert list(tiny_disk.rglob("*.tar.gz")) == []


async def test_no_file_when_the_data_dir_is_unusable(tmp_path: Path, hooks: Hooks, clock: Clock) -> None:
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("x")
    service = FirmwareService(not_a_dir, hooks, log_files=list, clock=clock, sleep=clock.sleep)
    assert service.get_diagnostics("ftp://127.0.0.1/files/", 0, 0, None, None) is None
    assert hooks.events == []


async def test_bad_extras_do_not_stop_the_upload(service: FirmwareService, hooks: Hooks,
                                                 ftp_server: FtpServer) -> None:
    def broken() -> dict:
        raise KeyError("store closed")

    hooks.diagnostics_extras = broken  # type: ignore[method-assign]
    name = service.get_diagnostics(ftp_server.url("files/"), 0, 0, None, None)
    await service.wait_finished()
    assert hooks.events == ["DSN Uploading", "DSN Uploaded"]
    summary = json.loads(archive_members((ftp_server.home / "files" / str(name)).read_bytes())["diagnostics.json"])
    assert "store closed" in summary["station"]["error"]


async def test_resume_after_an_early_update_firmware_does_not_start_it_twice(
        service: FirmwareService, hooks: Hooks, http_server: HttpServer, bundles: Bundles) -> None:
    # The CSMS may send UpdateFirmware before the runtime's post-boot resume() runs.
    http_server.files["/fw.tar.gz"] = bundles.good["1.11"].read_bytes()
    service.update_firmware(http_server.url("fw.tar.gz"), T0, retries=0, retry_interval=0)
    await service.resume()
    await service.wait_finished()
    assert hooks.events == ["FSN Downloading", "FSN Downloaded", "FSN Installing", "wait_until_idle", "restart"]
