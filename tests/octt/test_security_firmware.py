"""OCTT security cases TC_079 (GetLog SecurityLog), TC_080 (secure firmware update) and
TC_081 (secure firmware update, invalid signature), against the loopback CSMS with the
station's real adapters (in-process runtime). The ManufacturerRootCertificate gets in
with InstallCertificate, as OCTT does it. They run on security profile 1 (Basic auth over
ws://), the lowest profile on which security events are sent.

Rules: security whitepaper edition 3, use cases L01 and N01; the restart into the new
firmware and the Installed after it are covered with a real `twin run` process in
tests/firmware/test_e2e_signed.py (an in-process station cannot restart itself).
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path

import pytest

import twin
from tests.firmware.servers import FtpServer, HttpServer
from tests.security.private_ca import CODE_SIGNING, Ca, key_pem, make_root, pem
from twin.core.timeutil import ts
from twin.firmware import slots
from twin.firmware.bundle import build_bundle, bump_version
from twin.firmware.launcher import RESTART_EXIT_CODE
from twin.security import firmware_sig

REPO = Path(__file__).resolve().parents[2]
NEW = bump_version(twin.__version__)
from tests.octt.security_common import KEY, csms  # noqa: F401 - csms is the fixture
PROFILE_1 = {"SecurityProfile": "1", "AuthorizationKey": KEY}


@pytest.fixture
async def station(make_station):
    return await make_station(keys=PROFILE_1)


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_bundle(REPO, NEW, tmp_path_factory.mktemp("bundle"))


@pytest.fixture(scope="module")
def manufacturer() -> tuple[Ca, object, str]:
    root = make_root("XJ Power Manufacturer Root")
    key, cert = root.leaf("XJ Power Firmware Signing", CODE_SIGNING, o="XJ Power")
    return root, key, pem(cert)


def now() -> str:
    return ts(datetime.now(timezone.utc))


async def install_manufacturer_root(csms, root: Ca, station) -> None:
    reply = await csms.install_certificate("ManufacturerRootCertificate", root.pem)
    assert reply == {"status": "Accepted"}


def signed_statuses(csms, after: int, request_id: int) -> list[str]:
    msgs = csms.calls("SignedFirmwareStatusNotification", after=after)
    assert all(m.payload.get("requestId") == request_id for m in msgs), [m.payload for m in msgs]
    return [m.payload["status"] for m in msgs]


def conf_index(csms, action: str, after: int) -> int:
    return next(m.index for m in csms.messages[after:]
                if m.direction == "in" and m.kind == "result" and m.action == action)


async def test_tc_079_get_security_log(station, csms, tmp_path: Path) -> None:
    with FtpServer(tmp_path / "ftp") as ftp:
        mark = csms.mark()
        reply = await csms.get_log(ftp.url("files/"), log_type="SecurityLog", request_id=79)
        assert reply["status"] == "Accepted" and reply["filename"]
        await csms.wait_for("LogStatusNotification", {"status": "Uploaded", "requestId": 79}, timeout=30, after=mark)
        statuses = [(m.payload["status"], m.payload["requestId"])
                    for m in csms.calls("LogStatusNotification", after=mark)]
        uploaded = (ftp.home / "files" / reply["filename"]).read_text()
    assert statuses == [("Uploading", 79), ("Uploaded", 79)]
    assert conf_index(csms, "GetLog", mark) < csms.calls("LogStatusNotification", after=mark)[0].index
    entries = [json.loads(line) for line in uploaded.splitlines()]
    assert "StartupOfTheDevice" in [entry["type"] for entry in entries]  # raised at boot
    assert all(entry["timestamp"].endswith("Z") for entry in entries)
    # Nothing runs now: a triggered LogStatusNotification is Idle without requestId (N01.FR.12).
    mark = csms.mark()
    assert (await csms.extended_trigger_message("LogStatusNotification"))["status"] == "Accepted"
    idle = await csms.wait_for("LogStatusNotification", timeout=10, after=mark)
    assert idle.payload == {"status": "Idle"}


async def test_get_log_with_nothing_in_the_window_is_rejected(station, csms) -> None:
    reply = await csms.get_log("http://127.0.0.1:1/logs/", log_type="SecurityLog", request_id=5,
                               oldest_timestamp="2001-01-01T00:00:00Z", latest_timestamp="2001-01-02T00:00:00Z")
    assert reply == {"status": "Rejected"}


async def test_tc_080_secure_firmware_update(station, csms, bundle: Path, manufacturer) -> None:
    root, key, cert_pem = manufacturer
    await install_manufacturer_root(csms, root, station)
    signature = firmware_sig.sign_file(bundle, key_pem(key))
    with HttpServer() as http:
        http.files["/" + bundle.name] = bundle.read_bytes()
        mark = csms.mark()
        reply = await csms.signed_update_firmware(http.url(bundle.name), now(), cert_pem, signature,
                                                  request_id=80, retries=0)
        assert reply == {"status": "Accepted"}
        await csms.wait_for("SignedFirmwareStatusNotification", {"status": "InstallRebooting"}, timeout=60,
                            after=mark)
        assert await station.rt.wait() == RESTART_EXIT_CODE  # the launcher starts the new slot on trial
    assert signed_statuses(csms, mark, 80) == ["Downloading", "Downloaded", "SignatureVerified", "Installing",
                                               "InstallRebooting"]
    assert conf_index(csms, "SignedUpdateFirmware", mark) < \
        csms.calls("SignedFirmwareStatusNotification", after=mark)[0].index
    state = slots.read_state(station.rt.cfg.data_dir)
    assert (state.active, state.trial, state.report_for) == (NEW, NEW, {"signed": True, "requestId": 80})


async def test_tc_081_secure_firmware_update_invalid_signature(station, csms, bundle: Path, manufacturer,
                                                               tmp_path: Path) -> None:
    root, key, cert_pem = manufacturer
    await install_manufacturer_root(csms, root, station)
    signature = firmware_sig.sign_file(bundle, key_pem(key))
    tampered = bytearray(bundle.read_bytes())
    tampered[len(tampered) // 3] ^= 0x01  # one flipped byte
    with HttpServer() as http:
        http.files["/fw.tar.gz"] = bytes(tampered)
        mark = csms.mark()
        reply = await csms.signed_update_firmware(http.url("fw.tar.gz"), now(), cert_pem, signature,
                                                  request_id=81, retries=0)
        assert reply == {"status": "Accepted"}
        await csms.wait_for("SignedFirmwareStatusNotification", {"status": "InvalidSignature", "requestId": 81},
                            timeout=60, after=mark)
        event = await csms.wait_for("SecurityEventNotification", {"type": "InvalidFirmwareSignature"}, timeout=30,
                                    after=mark)
    assert signed_statuses(csms, mark, 81) == ["Downloading", "Downloaded", "InvalidSignature"]
    assert "81" in event.payload.get("techInfo", "")
    state = slots.read_state(station.rt.cfg.data_dir)
    assert (state.active, state.trial) == (slots.BASE, None)
    assert not (Path(station.rt.cfg.data_dir) / "firmware" / "slots").exists()
    # L01.FR.29: a triggered SignedFirmwareStatusNotification repeats the last status sent.
    mark = csms.mark()
    assert (await csms.extended_trigger_message("FirmwareStatusNotification"))["status"] == "Accepted"
    again = await csms.wait_for("SignedFirmwareStatusNotification", timeout=10, after=mark)
    assert again.payload == {"status": "InvalidSignature", "requestId": 81}


async def test_signing_certificate_of_a_foreign_root_is_invalid_certificate(station, csms, manufacturer) -> None:
    await install_manufacturer_root(csms, manufacturer[0], station)
    foreign = make_root("Someone Else's Root")
    _key, cert = foreign.leaf("Firmware Signing", CODE_SIGNING)
    mark = csms.mark()
    reply = await csms.signed_update_firmware("http://127.0.0.1:1/fw.tar.gz", now(), pem(cert), "AAAA",
                                              request_id=82)
    assert reply == {"status": "InvalidCertificate"}
    event = await csms.wait_for("SecurityEventNotification", {"type": "InvalidFirmwareSigningCertificate"},
                                timeout=30, after=mark)
    assert event.index > conf_index(csms, "SignedUpdateFirmware", mark)
    assert csms.calls("SignedFirmwareStatusNotification", after=mark) == []


async def test_l01_fr_20_secure_update_only_refuses_plain_update_firmware(make_station, csms) -> None:
    from twin.csms import CallErrorReceived

    await make_station(keys=PROFILE_1, firmware={"secure_update_only": True})
    with pytest.raises(CallErrorReceived) as refused:
        await csms.call("UpdateFirmware", {"location": "http://127.0.0.1:1/fw", "retrieveDate": now()})
    assert refused.value.code == "NotSupported"
