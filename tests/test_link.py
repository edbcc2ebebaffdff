"""The OCPP-J link: frame classification, Basic auth (security profile 1) and wss://
with server-certificate verification (profile 2), against the real CSMS on loopback."""

from __future__ import annotations

import asyncio
import contextlib
import ssl

import pytest

from tests.conftest import StationHandle, station_config
from tests.firmware.certs import make_tls_files
from twin.csms import Csms
from twin.link import InboundError, parse_inbound


@pytest.mark.parametrize("frame,code", [
    (b"\xff\xfe", "GenericError"),
    ("{not json", "GenericError"),
    ('{"a": 1}', "FormationViolation"),
    ('[2, "id"]', "FormationViolation"),
    ('[2, "", "Reset", {"type": "Soft"}]', "FormationViolation"),
    ('[2, "id", "Reset", []]', "FormationViolation"),
    ('[9, "id", "Reset", {}]', "FormationViolation"),
    ('[2, "id", "Reset", {}]', "FormationViolation"),
    ('[2, "id", "Reset", {"type": "Soft", "extra": 1}]', "FormationViolation"),
    ('[2, "id", "ChangeAvailability", {"connectorId": "1", "type": "Operative"}]', "TypeConstraintViolation"),
    ('[2, "id", "ChangeAvailability", {"connectorId": 1, "type": "Maybe"}]', "PropertyConstraintViolation"),
    ('[2, "id", "RemoteStartTransaction", {"idTag": "012345678901234567890"}]', "PropertyConstraintViolation"),
    ('[2, "id", "Heartbeat", {}]', "NotImplemented"),  # a CP->CSMS action sent the wrong way
    ('[2, "id", "GetLog", {}]', "FormationViolation"),  # a security action, checked by its schema
])
def test_malformed_frames_are_classified(frame, code):
    with pytest.raises(InboundError) as info:
        parse_inbound(frame)
    assert info.value.code == code


def test_well_formed_frames_parse():
    assert parse_inbound('[2, "a", "Reset", {"type": "Hard"}]') == ("call", "a", "Reset", {"type": "Hard"})
    assert parse_inbound('[3, "b", {"status": "Accepted"}]') == ("result", "b", {"status": "Accepted"})
    assert parse_inbound('[4, "c", "NotImplemented", "nope", {}]') == ("error", "c", "NotImplemented", "nope")


@contextlib.asynccontextmanager
async def running(csms: Csms, tmp_path, keys: dict | None = None, **attrs):
    """A CSMS started with its own settings and a station (sim drivers) pointed at it."""
    from twin.runtime import Runtime

    await csms.start()
    rt = Runtime(station_config(csms, tmp_path / "data", keys, **attrs), meter_poll_s=0.5)
    try:
        await rt.start()
        yield StationHandle(rt, csms)
    finally:
        await rt.shutdown(graceful=False)
        await csms.stop()


async def registered(station: StationHandle) -> None:
    await station.csms.wait_for("BootNotification", timeout=10)
    await station.until(lambda: station.st.registration == "Accepted")


async def refused(station: StationHandle, why: str) -> None:
    await station.until(lambda: station.rt.link.last_error is not None, timeout=10)
    assert why in station.rt.link.last_error
    await asyncio.sleep(0.2)
    assert not station.csms.calls("BootNotification") and station.st.registration == "None"


def profile(n: int, key: str | None = None) -> dict:
    return {"SecurityProfile": str(n), **({"AuthorizationKey": key} if key else {})}


async def test_basic_auth_password_is_sent_and_checked(tmp_path):
    async with running(Csms(require_password="s3cret-pass-1234"), tmp_path, profile(1, "s3cret-pass-1234")) as st:
        await registered(st)


async def test_wrong_password_is_refused_and_station_keeps_retrying(tmp_path):
    async with running(Csms(require_password="right-password-1234"), tmp_path,
                       profile(1, "wrong-password-1234")) as st:
        await refused(st, "401")


def _tls(directory) -> tuple:
    directory.mkdir()
    tls = make_tls_files(directory)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(tls.cert_file, tls.key_file)
    return tls, ctx


@contextlib.asynccontextmanager
async def running_tls(csms: Csms, tmp_path, ca_file, key: str):
    """A TLS CSMS and a profile 2 station whose csms.ca_file is ``ca_file`` (a wss:// URL
    needs its profile and credentials in the file: twin.config checks them at load)."""
    from tests.octt.test_security_transport import station_file
    from twin.config import load_config
    from twin.runtime import Runtime

    await csms.start()
    config = station_file(tmp_path, csms.url, {"SecurityProfile": 2, "AuthorizationKey": key}, ca_file=ca_file)
    rt = Runtime(load_config(config, {"data_dir": tmp_path / "data", "control": "127.0.0.1:0", "sim": True}),
                 meter_poll_s=0.5)
    try:
        await rt.start()
        yield StationHandle(rt, csms)
    finally:
        await rt.shutdown(graceful=False)
        await csms.stop()


async def test_wss_verifies_the_server_certificate(tmp_path):
    """Profile 2: csms.ca_file is installed as a CentralSystemRootCertificate, the only anchor."""
    tls, ctx = _tls(tmp_path / "tls")
    async with running_tls(Csms(ssl_context=ctx, require_password="s3cret-pass-1234"), tmp_path, tls.ca_file,
                           "s3cret-pass-1234") as st:
        assert st.csms.url.startswith("wss://")
        await registered(st)
        assert len(st.rt.certs.roots("CentralSystemRootCertificate")) == 1


async def test_wss_with_an_untrusted_certificate_does_not_connect(tmp_path):
    _, ctx = _tls(tmp_path / "tls")
    other, _ = _tls(tmp_path / "other")
    async with running_tls(Csms(ssl_context=ctx), tmp_path, other.ca_file, "s3cret-pass-1234") as st:
        await refused(st, "CERTIFICATE_VERIFY_FAILED")


async def test_reconnects_after_the_csms_drops_the_connection(station, csms):
    before = csms.connection_count
    await csms.drop_connection()
    await station.until(lambda: csms.connection_count > before and station.st.online, timeout=15)
    # Registration survives a reconnect: no new BootNotification, only changed statuses (§4.9).
    await station.plug(1)
    await csms.wait_for("StatusNotification", {"connectorId": 1, "status": "Preparing"})


def test_a_lone_surrogate_escape_is_refused_at_the_link():
    """JSON can escape a lone UTF-16 surrogate; it is no Unicode text and no store, log or
    CSMS could write it back. The fuzzer found an idTag "\\ud800" in SendLocalList making the
    store refuse a batch: the link now refuses such a frame before the core sees it."""
    frame = '[2, "s1", "SendLocalList", {"listVersion": 1, "updateType": "Full", ' \
            '"localAuthorizationList": [{"idTag": "\\ud800", "idTagInfo": {"status": "Accepted"}}]}]'
    with pytest.raises(InboundError) as err:
        parse_inbound(frame)
    assert err.value.code == "FormationViolation" and err.value.unique_id == "s1"
    # A reply holding one is a reply the station cannot use: a failed call, not a result.
    kind, uid, code, _desc = parse_inbound('[3, "r1", {"idTagInfo": {"status": "Accepted", "parentIdTag": "\\udfff"}}]')
    assert (kind, uid, code) == ("error", "r1", "FormationViolation")
    # Escaped characters that are valid Unicode (a surrogate pair included) pass.
    assert parse_inbound('[2, "s2", "RemoteStartTransaction", {"idTag": "\\ud83d\\udd0c"}]')[3]["idTag"] == "\U0001F50C"
