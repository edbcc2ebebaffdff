"""End to end, SignedUpdateFirmware (whitepaper L01): a real `twin run` process on security
profile 1 gets a bundle signed by `twin firmware build --sign`, checks the signing
certificate against the ManufacturerRootCertificate it was given with InstallCertificate,
verifies the signature, installs, restarts, and reports Installed with the request's
requestId from the new version, followed by the critical event FirmwareUpdated. A flipped
byte and a foreign signing certificate never touch the slots."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

import pytest

import twin
from tests.firmware import test_e2e as e2e
from tests.firmware.servers import HttpServer
from tests.security.private_ca import CODE_SIGNING, Ca, key_pem, make_root, pem
from twin.core.timeutil import ts
from twin.csms import Csms
from twin.firmware import slots
from twin.firmware.bundle import bump_version

REPO = Path(__file__).resolve().parents[2]
NEW = bump_version(twin.__version__)
KEY = "4F43415F4F4354545F61646D696E5F74657374"

pytestmark = pytest.mark.slow


@pytest.fixture
async def csms():
    server = Csms(require_password=KEY)
    await server.start()
    yield server
    await server.stop()


class Station(e2e.Station):
    """`twin run` on profile 1 (Basic auth over ws://), as the plain e2e tests start it."""

    def __init__(self, tmp_path: Path, csms: Csms) -> None:
        super().__init__(tmp_path, csms, settings=f'[csms]\npassword = "{KEY}"\n\n[keys]\nSecurityProfile = 1\n\n')


@pytest.fixture
def station_factory(tmp_path: Path):
    started: list[Station] = []

    def start(csms: Csms) -> Station:
        started.append(Station(tmp_path, csms))
        return started[-1]

    yield start
    for station in started:
        station.stop()


@pytest.fixture(scope="module")
def manufacturer(tmp_path_factory: pytest.TempPathFactory) -> tuple[Ca, Path, Path]:
    """The MF root, and the signing key and certificate as files for `twin firmware build --sign`."""
    directory = tmp_path_factory.mktemp("mf")
    root = make_root("XJ Power Manufacturer Root")
    key, cert = root.leaf("XJ Power Firmware Signing", CODE_SIGNING, o="XJ Power")
    (directory / "sign.key").write_bytes(key_pem(key))
    (directory / "sign.pem").write_text(pem(cert))
    return root, directory / "sign.key", directory / "sign.pem"


def build_signed(out: Path, key: Path, cert: Path) -> dict:
    done = subprocess.run([sys.executable, "-m", "twin", "firmware", "build", "--source", str(REPO), "--out",
                           str(out), "--sign", str(key), "--cert", str(cert)], cwd=REPO, capture_output=True,
                          text=True, check=False, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


async def registered(csms: Csms) -> str:
    boot = await csms.wait_for("BootNotification", timeout=60)
    await csms.wait_for("StatusNotification", timeout=30)
    return str(boot.payload["firmwareVersion"])


async def install_root(csms: Csms, station: Station, root: Ca) -> None:
    reply = await csms.install_certificate("ManufacturerRootCertificate", root.pem)
    assert reply == {"status": "Accepted"}


def signed_statuses(csms: Csms, after: int) -> list[tuple[str, int | None]]:
    return [(m.payload["status"], m.payload.get("requestId"))
            for m in csms.calls("SignedFirmwareStatusNotification", after=after)]


async def test_a_good_signature_is_installed_and_reported_after_the_restart(
        csms: Csms, station_factory, manufacturer, tmp_path: Path) -> None:
    root, key, cert = manufacturer
    signed = build_signed(tmp_path / "dist", key, cert)
    bundle = Path(signed["bundle"])
    with HttpServer() as http:
        http.files["/" + bundle.name] = bundle.read_bytes()
        station = station_factory(csms)
        assert await registered(csms) == f"V{twin.__version__}"
        await install_root(csms, station, root)
        mark = csms.mark()
        reply = await csms.signed_update_firmware(http.url(bundle.name), ts(datetime.now(timezone.utc)),
                                                  signed["firmware"]["signingCertificate"],
                                                  signed["firmware"]["signature"], request_id=80, retries=0)
        assert reply == {"status": "Accepted"}
        reboot = await csms.wait_for("BootNotification", {"firmwareVersion": f"V{NEW}"}, timeout=120, after=mark)
        installed = await csms.wait_for("SignedFirmwareStatusNotification", {"status": "Installed"}, timeout=60,
                                        after=mark)
        updated = await csms.wait_for("SecurityEventNotification", {"type": "FirmwareUpdated"}, timeout=60,
                                      after=reboot.index)
    assert signed_statuses(csms, mark) == [("Downloading", 80), ("Downloaded", 80), ("SignatureVerified", 80),
                                           ("Installing", 80), ("InstallRebooting", 80), ("Installed", 80)]
    assert reboot.index < installed.index
    assert updated.index > reboot.index
    assert csms.calls("FirmwareStatusNotification", after=mark) == []  # not the plain notification
    state = slots.read_state(station.data_dir)
    assert (state.active, state.trial, state.previous, state.report) == (NEW, None, slots.BASE, None)
    assert station.stop() == 0


async def test_bad_signature_and_foreign_certificate_leave_the_slots_alone(
        csms: Csms, station_factory, manufacturer, tmp_path: Path) -> None:
    root, key, cert = manufacturer
    signed = build_signed(tmp_path / "dist", key, cert)
    bundle = Path(signed["bundle"])
    flipped = bytearray(bundle.read_bytes())
    flipped[len(flipped) // 2] ^= 0x01
    foreign = make_root("Foreign Root")
    _foreign_key, foreign_cert = foreign.leaf("Foreign Signing", CODE_SIGNING)
    with HttpServer() as http:
        http.files["/fw.tar.gz"] = bytes(flipped)
        station = station_factory(csms)
        await registered(csms)
        await install_root(csms, station, root)

        mark = csms.mark()
        reply = await csms.signed_update_firmware(http.url("fw.tar.gz"), ts(datetime.now(timezone.utc)),
                                                  pem(foreign_cert), signed["firmware"]["signature"], request_id=1)
        assert reply == {"status": "InvalidCertificate"}
        await csms.wait_for("SecurityEventNotification", {"type": "InvalidFirmwareSigningCertificate"}, timeout=30,
                            after=mark)
        assert signed_statuses(csms, mark) == []
        assert http.requests == []  # nothing downloaded

        mark = csms.mark()
        reply = await csms.signed_update_firmware(http.url("fw.tar.gz"), ts(datetime.now(timezone.utc)),
                                                  signed["firmware"]["signingCertificate"],
                                                  signed["firmware"]["signature"], request_id=2, retries=0)
        assert reply == {"status": "Accepted"}
        await csms.wait_for("SecurityEventNotification", {"type": "InvalidFirmwareSignature"}, timeout=60,
                            after=mark)
        await csms.wait_for("SignedFirmwareStatusNotification", {"status": "InvalidSignature"}, timeout=60,
                            after=mark)
    assert signed_statuses(csms, mark) == [("Downloading", 2), ("Downloaded", 2), ("InvalidSignature", 2)]
    state = slots.read_state(station.data_dir)
    assert (state.active, state.trial) == (slots.BASE, None)
    assert not (station.data_dir / "firmware" / "slots").exists()
    assert station.proc.poll() is None  # still serving
    assert station.stop() == 0
