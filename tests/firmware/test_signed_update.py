"""SignedUpdateFirmware (whitepaper L01) in FirmwareService, against a real HTTP server,
with recording hooks (the runtime boundary). Signatures and certificates are real:
a private manufacturer root made with `cryptography` (tests/security/private_ca.py)."""

from __future__ import annotations

import asyncio
import json
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

from tests.firmware.conftest import Bundles
from tests.firmware.servers import HttpServer
from tests.firmware.test_service import Clock
from tests.firmware.test_service import Hooks as PlainHooks
from tests.security.private_ca import CODE_SIGNING, key_pem, make_root, pem, rsa_key
from twin.firmware import slots
from twin.firmware.service import FirmwareService
from twin.firmware.settings import FirmwareSettings
from twin.security import firmware_sig, pki

# The signing certificates are valid from a few minutes before the real now on.
T0 = datetime.now(timezone.utc).replace(microsecond=0)


class Hooks(PlainHooks):
    """Also records signed statuses and security events; ``on_restart`` runs inside restart()."""

    def __init__(self) -> None:
        super().__init__()
        self.on_restart: Any = None

    async def send_signed_firmware_status(self, status: str, request_id: int | None) -> None:
        self.events.append(f"SFSN {status} {request_id}")

    async def send_log_status(self, status: str, request_id: int | None) -> None:
        self.events.append(f"LSN {status} {request_id}")

    async def security_event(self, name: str, tech_info: str | None) -> None:
        self.events.append(f"SEC {name}")

    async def restart(self) -> None:
        if self.on_restart is not None:
            await self.on_restart()
        await super().restart()


class Signer:
    """A manufacturer root and a code-signing certificate it issued, with the key."""

    def __init__(self, cn: str = "XJ Power MF Root", key_factory=None) -> None:
        self.root = make_root(cn, key_factory() if key_factory else None)
        self.key, self.cert = self.root.leaf("XJ Firmware Signing", CODE_SIGNING,
                                             key=key_factory() if key_factory else None, o="XJ Power")

    @property
    def cert_pem(self) -> str:
        return pem(self.cert)

    def sign(self, data: bytes, tmp_path: Path) -> str:
        path = tmp_path / "to-sign.bin"
        path.write_bytes(data)
        return firmware_sig.sign_file(path, key_pem(self.key))


@pytest.fixture(scope="module")
def signer() -> Signer:
    return Signer()


@pytest.fixture
def clock() -> Clock:
    clock = Clock()
    clock.now = T0
    return clock


@pytest.fixture
def hooks() -> Hooks:
    return Hooks()


def make(tmp_path: Path, hooks: Hooks, clock: Clock, **settings: Any) -> FirmwareService:
    service = FirmwareService(tmp_path / "data", hooks, log_files=lambda: [], clock=clock, sleep=clock.sleep,
                              charge_point_id="CP1", settings=FirmwareSettings(**settings))
    hooks.service = service
    return service


@pytest.fixture
async def service(tmp_path: Path, hooks: Hooks, clock: Clock):
    svc = make(tmp_path, hooks, clock)
    yield svc
    await svc.close()


async def signed(service: FirmwareService, signer: Signer, url: str, signature: str, *, request_id: int = 7,
                 retrieve=T0, install=None, retries: int | None = 0, interval: int | None = 0,
                 roots: list | None = None, replied: asyncio.Future | None = None) -> str:
    return await service.signed_update_firmware(
        request_id, url, retrieve, install, signer.cert_pem, signature, retries, interval,
        manufacturer_roots=[signer.root.cert] if roots is None else roots, replied=replied)


def sfsn(hooks: Hooks) -> list[str]:
    return [e for e in hooks.events if e.startswith(("SFSN", "SEC", "FSN"))]


async def test_tc_080_a_good_signature_is_installed_and_reported_with_the_request_id(
        service: FirmwareService, hooks: Hooks, http_server: HttpServer, bundles: Bundles, signer: Signer,
        tmp_path: Path) -> None:
    data = bundles.good["1.11"].read_bytes()
    http_server.files["/fw.tar.gz"] = data
    assert service.signed_firmware_state == ("Idle", None)
    assert await signed(service, signer, http_server.url("fw.tar.gz"), signer.sign(data, tmp_path)) == "Accepted"
    await service.wait_finished()
    assert hooks.events == ["SFSN Downloading 7", "SFSN Downloaded 7", "SFSN SignatureVerified 7",
                            "SFSN Installing 7", "wait_until_idle", "SFSN InstallRebooting 7", "restart"]
    assert service.firmware_status == "Idle"  # TriggerMessage(FSN) reports only plain updates
    assert service.signed_firmware_state == ("InstallRebooting", 7)
    state = slots.read_state(tmp_path / "data")
    assert (state.active, state.trial) == ("1.11", "1.11")
    # After the restart the new version's BootNotification is Accepted: the report names the request.
    assert slots.mark_boot_ok(tmp_path / "data", "1.11")
    assert slots.pending_outcome(tmp_path / "data", consume=False) == slots.PendingReport("Installed", True, 7, "1.11")
    assert slots.pending_report(tmp_path / "data") == "Installed"
    assert slots.pending_outcome(tmp_path / "data") is None


async def test_tc_081_one_flipped_byte_is_invalid_signature_and_the_slots_stay(
        service: FirmwareService, hooks: Hooks, http_server: HttpServer, bundles: Bundles, signer: Signer,
        tmp_path: Path) -> None:
    data = bundles.good["1.11"].read_bytes()
    signature = signer.sign(data, tmp_path)
    flipped = bytearray(data)
    flipped[len(flipped) // 2] ^= 0x01
    http_server.files["/fw.tar.gz"] = bytes(flipped)
    assert await signed(service, signer, http_server.url("fw.tar.gz"), signature) == "Accepted"
    await service.wait_finished()
    assert hooks.events == ["SFSN Downloading 7", "SFSN Downloaded 7", "SFSN InvalidSignature 7",
                            "SEC InvalidFirmwareSignature", "end_maintenance"]
    assert service.signed_firmware_state == ("InvalidSignature", 7)  # L01.FR.29: the last one sent
    assert slots.read_state(tmp_path / "data").active == slots.BASE
    assert not (tmp_path / "data" / "firmware" / "slots").exists()  # never unpacked
    assert not (tmp_path / "data" / "firmware" / "update.json").exists()


async def test_a_signature_by_another_key_is_invalid_too(service: FirmwareService, hooks: Hooks,
                                                         http_server: HttpServer, bundles: Bundles,
                                                         signer: Signer, tmp_path: Path) -> None:
    data = bundles.good["1.11"].read_bytes()
    http_server.files["/fw.tar.gz"] = data
    other = Signer("Other MF", rsa_key)
    assert await signed(service, signer, http_server.url("fw.tar.gz"), other.sign(data, tmp_path)) == "Accepted"
    await service.wait_finished()
    assert "SFSN InvalidSignature 7" in hooks.events and "SEC InvalidFirmwareSignature" in hooks.events
    assert "SFSN Installing 7" not in hooks.events


@pytest.mark.parametrize("roots", ["foreign", "none"])
async def test_a_signing_certificate_from_a_foreign_root_or_no_root_is_invalid_certificate(
        service: FirmwareService, hooks: Hooks, signer: Signer, roots: str, tmp_path: Path) -> None:
    installed = [Signer("Foreign MF Root").root.cert] if roots == "foreign" else []
    replied = asyncio.get_running_loop().create_future()
    status = await signed(service, signer, "http://127.0.0.1:1/fw.tar.gz", "AAAA", roots=installed, replied=replied)
    assert status == "InvalidCertificate"
    await asyncio.sleep(0.05)
    assert hooks.events == []  # the event waits for the answer to go out first
    replied.set_result(None)
    await service.wait_finished()
    assert hooks.events == ["SEC InvalidFirmwareSigningCertificate"]
    assert not (tmp_path / "data" / "firmware" / "update.json").exists()  # nothing scheduled


async def test_a_revoked_signing_certificate_is_revoked_certificate(tmp_path: Path, hooks: Hooks, clock: Clock,
                                                                   signer: Signer) -> None:
    service = make(tmp_path, hooks, clock, revoked_signing_certificates=(pki.fingerprint(signer.cert),))
    try:
        assert await signed(service, signer, "http://127.0.0.1:1/fw", "AAAA") == "RevokedCertificate"
        await service.wait_finished()
    finally:
        await service.close()
    assert hooks.events == ["SEC InvalidFirmwareSigningCertificate"]


async def test_an_invalid_certificate_leaves_a_running_update_alone(
        tmp_path: Path, hooks: Hooks, clock: Clock, signer: Signer) -> None:
    gate = asyncio.Event()

    async def held_sleep(seconds: float) -> None:
        await gate.wait()

    service = make(tmp_path, hooks, clock)
    service._sleep = held_sleep  # type: ignore[method-assign]
    try:
        assert await signed(service, signer, "http://127.0.0.1:1/a", "AAAA", request_id=1,
                            retrieve=T0 + timedelta(days=1)) == "Accepted"
        assert await signed(service, signer, "http://127.0.0.1:1/b", "AAAA", request_id=2, roots=[]) \
            == "InvalidCertificate"
        await asyncio.sleep(0.05)
        assert json.loads((tmp_path / "data/firmware/update.json").read_text())["signed_request_id"] == 1
        assert sorted(hooks.events) == ["SEC InvalidFirmwareSigningCertificate", "SFSN DownloadScheduled 1"]
    finally:
        await service.close()


async def test_l01_fr_26_a_new_request_cancels_a_scheduled_one_accepted_canceled(
        tmp_path: Path, hooks: Hooks, clock: Clock, http_server: HttpServer, bundles: Bundles,
        signer: Signer) -> None:
    gate = asyncio.Event()

    async def sleep(seconds: float) -> None:
        if seconds >= 3600:  # the first request's retrieveDateTime, a day away: held
            await gate.wait()
        await clock.sleep(seconds)

    service = make(tmp_path, hooks, clock)
    service._sleep = sleep  # type: ignore[method-assign]
    data = bundles.good["1.12"].read_bytes()
    http_server.files["/fw.tar.gz"] = data
    try:
        assert await signed(service, signer, http_server.url("fw.tar.gz"), signer.sign(data, tmp_path),
                            request_id=1, retrieve=T0 + timedelta(days=1)) == "Accepted"
        await asyncio.sleep(0.05)
        assert hooks.events == ["SFSN DownloadScheduled 1"]
        assert service.signed_firmware_state == ("DownloadScheduled", 1)
        assert await signed(service, signer, http_server.url("fw.tar.gz"), signer.sign(data, tmp_path),
                            request_id=2) == "AcceptedCanceled"
        await service.wait_finished()
    finally:
        await service.close()
    assert hooks.events == ["SFSN DownloadScheduled 1", "end_maintenance", "SFSN Downloading 2",
                            "SFSN Downloaded 2", "SFSN SignatureVerified 2", "SFSN Installing 2", "wait_until_idle",
                            "SFSN InstallRebooting 2", "restart"]
    assert slots.read_state(tmp_path / "data").report_for == {"signed": True, "requestId": 2}


async def test_l01_fr_27_while_switching_slots_a_new_request_is_rejected(
        service: FirmwareService, hooks: Hooks, http_server: HttpServer, bundles: Bundles, signer: Signer,
        tmp_path: Path) -> None:
    data = bundles.good["1.11"].read_bytes()
    http_server.files["/fw.tar.gz"] = data
    answers: list[str] = []

    async def during_restart() -> None:
        answers.append(await signed(service, signer, http_server.url("fw.tar.gz"), signer.sign(data, tmp_path),
                                    request_id=8))

    hooks.on_restart = during_restart
    assert await signed(service, signer, http_server.url("fw.tar.gz"), signer.sign(data, tmp_path)) == "Accepted"
    await service.wait_finished()
    assert answers == ["Rejected"]
    assert not any(" 8" in e for e in hooks.events)
    assert slots.read_state(tmp_path / "data").report_for == {"signed": True, "requestId": 7}


async def test_install_date_in_the_future_is_install_scheduled(
        service: FirmwareService, hooks: Hooks, clock: Clock, http_server: HttpServer, bundles: Bundles,
        signer: Signer, tmp_path: Path) -> None:
    data = bundles.good["1.11"].read_bytes()
    http_server.files["/fw.tar.gz"] = data
    assert await signed(service, signer, http_server.url("fw.tar.gz"), signer.sign(data, tmp_path),
                        retrieve=T0 + timedelta(seconds=90), install=T0 + timedelta(seconds=600)) == "Accepted"
    await service.wait_finished()
    assert hooks.events[:6] == ["SFSN DownloadScheduled 7", "SFSN Downloading 7", "SFSN Downloaded 7",
                                "SFSN SignatureVerified 7", "SFSN InstallScheduled 7", "SFSN Installing 7"]
    assert clock.sleeps == [90, 510]  # until retrieveDateTime, then until installDateTime


async def test_retries_apply_to_the_download(service: FirmwareService, hooks: Hooks, clock: Clock,
                                             http_server: HttpServer, signer: Signer) -> None:
    assert await signed(service, signer, http_server.url("missing.tar.gz"), "AAAA", retries=2, interval=9) \
        == "Accepted"
    await service.wait_finished()
    assert clock.sleeps == [9, 9]
    assert hooks.events == ["SFSN Downloading 7", "SFSN DownloadFailed 7", "end_maintenance"]
    assert service.signed_firmware_state == ("DownloadFailed", 7)


async def test_a_signed_file_that_is_no_bundle_is_install_verification_failed(
        service: FirmwareService, hooks: Hooks, http_server: HttpServer, signer: Signer, tmp_path: Path) -> None:
    junk = b"MZ\x90\x00 not an ocpp-twin bundle" * 50
    http_server.files["/fw.bin"] = junk
    assert await signed(service, signer, http_server.url("fw.bin"), signer.sign(junk, tmp_path)) == "Accepted"
    await service.wait_finished()
    assert hooks.events == ["SFSN Downloading 7", "SFSN Downloaded 7", "SFSN SignatureVerified 7",
                            "SFSN Installing 7", "SFSN InstallVerificationFailed 7", "end_maintenance"]
    assert slots.read_state(tmp_path / "data").active == slots.BASE


async def test_accepted_means_persisted_and_the_first_status_waits_for_the_answer(
        tmp_path: Path, hooks: Hooks, clock: Clock, signer: Signer) -> None:
    """A confirmed update survives a power cut: it is in update.json when the answer goes out,
    and a restarted service resumes it with the same requestId."""
    gate = asyncio.Event()

    async def held_sleep(seconds: float) -> None:
        await gate.wait()

    service = make(tmp_path, hooks, clock)
    service._sleep = held_sleep  # type: ignore[method-assign]
    replied = asyncio.get_running_loop().create_future()
    try:
        assert await signed(service, signer, "http://127.0.0.1:1/fw", "c2ln", request_id=42,
                            retrieve=T0 + timedelta(hours=5), install=T0 + timedelta(hours=6),
                            replied=replied) == "Accepted"
        job = json.loads((tmp_path / "data/firmware/update.json").read_text())
        assert (job["signed_request_id"], job["signature"], job["signing_certificate"]) == (42, "c2ln",
                                                                                             signer.cert_pem)
        assert datetime.fromisoformat(job["install_date"]) == T0 + timedelta(hours=6)
        await asyncio.sleep(0.05)
        assert hooks.events == []  # SignedUpdateFirmware.conf first
        replied.set_result(None)
        await asyncio.sleep(0.05)
        assert hooks.events == ["SFSN DownloadScheduled 42"]
    finally:
        await service.close()  # a power cut, as far as the job is concerned

    hooks2 = Hooks()
    again = make(tmp_path, hooks2, clock)
    again._sleep = held_sleep  # type: ignore[method-assign]
    try:
        await again.resume()
        await asyncio.sleep(0.05)
        assert hooks2.events == ["SFSN DownloadScheduled 42"]
    finally:
        await again.close()


async def test_a_plain_update_still_reports_with_firmware_status_notification(
        service: FirmwareService, hooks: Hooks, http_server: HttpServer) -> None:
    service.update_firmware(http_server.url("missing"), T0, 0, 0)
    await service.wait_finished()
    assert hooks.events == ["FSN Downloading", "FSN DownloadFailed", "end_maintenance"]
    assert service.signed_firmware_state == ("Idle", None)


def test_signed_firmware_state_is_idle_after_installed(tmp_path: Path) -> None:
    service = FirmwareService(tmp_path, Hooks(), log_files=lambda: [])
    service.signed_status_sent("InstallationFailed", 3)
    assert service.signed_firmware_state == ("InstallationFailed", 3)
    service.signed_status_sent("Installed", 4)
    assert service.signed_firmware_state == ("Idle", None)  # L01.FR.28


def test_a_rollback_keeps_the_request_of_the_signed_update(bundles: Bundles, tmp_path: Path) -> None:
    slots.install_slot(tmp_path, bundles.good["1.11"])
    slots.switch_to_trial(tmp_path, "1.11", signed_request_id=12)
    assert slots.rollback(tmp_path, "did not boot") == slots.BASE
    assert slots.pending_outcome(tmp_path) == slots.PendingReport("InstallationFailed", True, 12, slots.BASE)
    slots.install_slot(tmp_path, bundles.good["1.12"])
    slots.switch_to_trial(tmp_path, "1.12")  # a plain update (or manual install) after it
    assert slots.mark_boot_ok(tmp_path, "1.12")
    assert slots.pending_outcome(tmp_path) == slots.PendingReport("Installed", False, None, "1.12")


def test_settings_switches() -> None:
    settings = FirmwareSettings.from_table({"secure_update_only": True,
                                            "revoked_signing_certificates": ["AB:" * 31 + "AB"]})
    assert settings.secure_update_only is True
    assert settings.revoked_signing_certificates == ("ab" * 32,)
    assert FirmwareSettings().secure_update_only is False
    from twin.firmware.settings import SettingsError

    with pytest.raises(SettingsError, match="true or false"):
        FirmwareSettings.from_table({"secure_update_only": "yes"})
    with pytest.raises(SettingsError, match="64 hex digits"):
        FirmwareSettings.from_table({"revoked_signing_certificates": ["abc"]})
