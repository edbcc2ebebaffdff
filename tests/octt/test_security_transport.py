"""OCTT security transport cases against a real station: TC_073 (new AuthorizationKey),
TC_078 and the other connection failures, TC_083/084 (raising and lowering SecurityProfile),
TC_085-087 (Basic auth, TLS, the client certificate).

The station is a real Runtime (sim drivers) built from a station TOML file, so the
config's [csms] section, the transport plan, the link and the core's pending/committed
settings are all in play. Its CSMS is twin.csms.Csms on loopback (with TLS from a private
CA) where OCPP is needed; where the handshake itself is inspected, or a server must send
its TLS alert before closing (a TLS 1.1-only server, no shared suite, a refused client
certificate), it is a `websockets` server on blocking sockets in a thread (HandshakeServer;
an asyncio TLS server aborts a failed handshake without its alert). TLS URLs name
``localhost``: the CSMS certificates carry the name in the CN only (A00.FR.510).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import dataclasses
import json
import logging
import ssl
import threading
from datetime import timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from websockets.sync.server import serve as sync_serve

from tests.conftest import StationHandle, free_port
from tests.security.private_ca import CLIENT_AUTH, Pki, key_pem, make_root, pem, rsa_key
from tests.security.test_tls import server_ctx
from twin.config import load_config
from twin.csms import Csms
from twin.security.tls import TLS12_CIPHERS

CP_ID = "CP1"
SERIAL = "XJ-0001"  # BootNotification chargePointSerialNumber = the client certificate's CN (A00.FR.405)
KEY_HEX = "4F43415F4F4354545F61646D696E5F74657374"  # TC_073: the 19 bytes OCA_OCTT_admin_test
KEY_TEXT = "plain-text-key-0001"
INVALID_CSMS_CERT = "InvalidCentralSystemCertificate"
FAILED_AUTH = "FailedToAuthenticationAtCentralSystem"


def basic(user: bytes, password: bytes) -> str:
    return "Basic " + base64.b64encode(user + b":" + password).decode()


class HandshakeServer:
    """A websockets server on blocking sockets in a thread that records every upgrade
    request it gets (path, Authorization, TLS version, suite, client certificate) and then
    closes the connection. A failed TLS handshake sends its alert, as nginx does."""

    def __init__(self, ctx: ssl.SSLContext | None = None, port: int = 0):
        self.ctx, self.port = ctx, port
        self.seen: list[dict] = []

    def _record(self, connection, request):
        sock = connection.socket
        tls = isinstance(sock, ssl.SSLSocket)
        self.seen.append({"path": request.path, "auth": request.headers.get("Authorization"),
                          "version": sock.version() if tls else None, "cipher": sock.cipher()[0] if tls else None,
                          "peer_der": sock.getpeercert(binary_form=True) if tls else None})

    def _handler(self, ws) -> None:
        ws.close()

    def __enter__(self) -> HandshakeServer:
        self.server = sync_serve(self._handler, "127.0.0.1", self.port, ssl=self.ctx, process_request=self._record,
                                 subprotocols=["ocpp1.6"], open_timeout=5, close_timeout=1)
        self.port = self.server.socket.getsockname()[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.thread.join(timeout=10)


def station_file(directory: Path, url: str, keys: dict, *, profile_urls: dict | None = None,
                 ca_file: Path | None = None, client: tuple[Path, Path] | None = None) -> Path:
    lines = ["[station]", f'charge_point_id = "{CP_ID}"', "[identity]", f'chargePointSerialNumber = "{SERIAL}"',
             "[csms]", f'url = "{url}"']
    if ca_file is not None:
        lines.append(f'ca_file = "{ca_file}"')
    if client is not None:
        lines += [f'client_cert_file = "{client[0]}"', f'client_key_file = "{client[1]}"']
    if profile_urls:
        lines += ["[csms.profile_urls]"] + [f'{n} = "{u}"' for n, u in profile_urls.items()]
    lines += ["[keys]"] + [f'{k} = "{v}"' for k, v in keys.items()]
    path = directory / "station.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    (tmp_path / "pki").mkdir()
    return Pki(tmp_path / "pki")


@pytest.fixture
async def stations(tmp_path: Path):
    """``await stations(config_file)`` -> a started Runtime; shut down at the end."""
    from twin.runtime import Runtime

    started = []

    async def start(config: Path, data_dir: Path | None = None):
        cfg = load_config(config, {"data_dir": data_dir or tmp_path / "data", "control": "127.0.0.1:0", "sim": True})
        rt = Runtime(cfg, meter_poll_s=0.2)
        await rt.start()
        started.append(rt)
        rt.link.backoff_cap = 0.3  # retry within 0.3 s: the failure cases need several attempts
        rt.failed_attempts = []
        report = rt.link.on_connect_failed

        def counting(attempt, exc):
            rt.failed_attempts.append((attempt, exc))
            return report(attempt, exc)

        rt.link.on_connect_failed = counting
        return rt

    yield start
    for rt in started:
        await rt.shutdown(graceful=False)


async def until(check, timeout: float = 10.0, what: str = "condition") -> None:
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while not check():
        if loop.time() > end:
            raise TimeoutError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


async def registered(rt, csms: Csms) -> None:
    await csms.wait_for("BootNotification", timeout=10)
    await until(lambda: rt.station.registration == "Accepted" and rt.station.online, what="registration")


def logged(rt, name: str) -> list[dict]:
    return [entry for entry in rt.security_log.entries() if entry["type"] == name]


# ------------------------------------------------------------------------------------ TC_085-087


@pytest.mark.parametrize(("key", "wire"), [
    ("sixteen-chars-ok", b"sixteen-chars-ok"),  # plain text, 16-20 characters
    ("twenty-characters-ok", b"twenty-characters-ok"),
    ("00112233445566778899aabbccddeeff", bytes.fromhex("00112233445566778899aabbccddeeff")),  # hex, 32-40 digits
    (KEY_HEX + "2E", b"OCA_OCTT_admin_test."),
])
async def test_tc085_basic_auth_header(tmp_path, stations, caplog, key, wire):
    """Authorization: Basic b64(<identity at the end of the URL> ":" <decoded key bytes>)."""
    caplog.set_level(logging.DEBUG)
    with HandshakeServer() as server:
        rt = await stations(station_file(tmp_path, f"ws://127.0.0.1:{server.port}/ocpp/v16",
                                         {"SecurityProfile": 1, "AuthorizationKey": key}))
        await until(lambda: server.seen, what="a handshake")
    seen = server.seen[0]
    assert seen["path"] == f"/ocpp/v16/{CP_ID}"
    assert seen["auth"] == basic(CP_ID.encode(), wire)
    assert rt.link.attempt.profile == 1
    # Neither the key nor the header reaches the log; the clear-text warning does (A00.FR.201).
    text = "\n".join(r.getMessage() for r in caplog.records if r.name.startswith("twin"))  # the station's
    assert key not in text and seen["auth"].split()[1] not in text
    assert "travels in clear" in text


@pytest.mark.parametrize("maximum", [ssl.TLSVersion.TLSv1_2, None])
async def test_tc086_tls_with_the_mandated_suites_and_basic_auth(tmp_path, pki, stations, maximum):
    pairs = (pki.server_pair("srv-ec"), pki.server_pair("srv-rsa", key=rsa_key()))
    ca = pki.write("root.pem", pki.root.pem)
    with HandshakeServer(server_ctx(*pairs, maximum=maximum)) as server:
        rt = await stations(station_file(tmp_path, f"wss://localhost:{server.port}/ocpp",
                                         {"SecurityProfile": 2, "AuthorizationKey": KEY_HEX}, ca_file=ca))
        await until(lambda: server.seen, what="a TLS handshake")
    seen = server.seen[0]
    if maximum is not None:
        assert seen["version"] == "TLSv1.2" and seen["cipher"] in TLS12_CIPHERS
    else:
        assert seen["version"] == "TLSv1.3"  # >= 1.2; the TLS 1.2 offer is the four suites (test_tls.py)
    assert seen["auth"] == basic(CP_ID.encode(), b"OCA_OCTT_admin_test")
    assert seen["peer_der"] is None  # no client certificate under profile 2
    # The server certificate was checked against the installed root only (the negatives below).
    assert [c.subject for c in rt.certs.roots("CentralSystemRootCertificate")] == [pki.root.cert.subject]


async def test_tc087_profile_3_client_certificate(tmp_path, pki, stations):
    key = ec.generate_private_key(ec.SECP256R1())
    _, cert = pki.root.leaf(SERIAL, CLIENT_AUTH, key=key, o="TestCPO")
    chain, key_file = pki.write("cp.pem", pem(cert)), pki.write("cp.key", key_pem(key))
    ca = pki.write("root.pem", pki.root.pem)
    ctx = server_ctx(pki.server_pair("srv"), maximum=ssl.TLSVersion.TLSv1_2, client_ca=pki.root.pem)
    assert ctx.verify_mode == ssl.CERT_REQUIRED
    with HandshakeServer(ctx) as server:
        rt = await stations(station_file(tmp_path, f"wss://localhost:{server.port}/ocpp", {"SecurityProfile": 3},
                                         ca_file=ca, client=(chain, key_file)))
        await until(lambda: server.seen, what="a TLS handshake")
    seen = server.seen[0]
    assert seen["version"] == "TLSv1.2" and seen["cipher"] in TLS12_CIPHERS
    assert seen["auth"] is None  # profile 3: no Basic auth
    presented = x509.load_der_x509_certificate(seen["peer_der"])
    assert presented.serial_number > 0
    assert presented.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == SERIAL
    assert rt.station.spec.identity["chargePointSerialNumber"] == SERIAL
    assert isinstance(presented.public_key(), ec.EllipticCurvePublicKey) and presented.public_key().key_size >= 224
    stored = rt.certs.charge_point_credentials(presented.not_valid_before_utc + timedelta(seconds=1))
    assert stored.chain_file.read_text().startswith("-----BEGIN CERTIFICATE-----")  # kept and sent as PEM


# ---------------------------------------------------------------------------------------- TC_073


async def test_tc073_new_authorization_key_reconnects_and_a_refused_one_falls_back(tmp_path, stations):
    csms = Csms(require_password=KEY_TEXT)
    await csms.start()
    try:
        rt = await stations(station_file(tmp_path, csms.url, {"SecurityProfile": 1, "AuthorizationKey": KEY_TEXT}))
        await registered(rt, csms)
        for new in (KEY_HEX, "second-key-is-plain"):
            # A01.FR.03: from the Accepted on, the CSMS takes the new key only.
            csms.require_password = new
            before = csms.connection_count
            assert (await csms.call("ChangeConfiguration", {"key": "AuthorizationKey", "value": new}))["status"] \
                == "Accepted"  # the .conf arrived: it went out before the close (A05.FR.06)
            await until(lambda: csms.connection_count > before and rt.station.online, what="the reconnect")
            connection = rt.station.security.connection()
            assert connection.authorization_key == new and connection.pending_key is None
        # A key the CSMS does not take: refused, back to the last good key, one event.
        before = csms.connection_count
        assert (await csms.call("ChangeConfiguration", {"key": "AuthorizationKey", "value": KEY_HEX}))["status"] \
            == "Accepted"
        await until(lambda: csms.connection_count > before and rt.station.online, what="the fallback")
        connection = rt.station.security.connection()
        assert connection.authorization_key == "second-key-is-plain" and connection.pending_key is None
        assert "401" in str(rt.failed_attempts[-1][1])
        await until(lambda: logged(rt, FAILED_AUTH), what="the security event")
        assert len(logged(rt, FAILED_AUTH)) == 1
        assert not rt.link.attempt.used_pending_key
    finally:
        await csms.stop()


async def test_a_new_key_survives_a_failure_that_is_not_a_refusal(tmp_path, stations):
    """A01.FR.03: from the Accepted on, the CSMS may take the new key only. A refused TCP
    connection (a CSMS restarting) proves nothing about the key: it stays pending and is
    retried with the normal backoff, never swapped back for the old one."""
    csms = Csms(require_password=KEY_TEXT)
    await csms.start()
    try:
        rt = await stations(station_file(tmp_path, csms.url, {"SecurityProfile": 1, "AuthorizationKey": KEY_TEXT}))
        await registered(rt, csms)
        down = {"on": True}
        closed_url = f"ws://127.0.0.1:{free_port()}/ocpp/{CP_ID}"  # nothing listens: refused
        real_plan = rt.link.plan

        async def plan():
            attempt = await real_plan()
            return dataclasses.replace(attempt, url=closed_url) if down["on"] else attempt

        rt.link.plan = plan
        csms.require_password = KEY_HEX
        assert (await csms.call("ChangeConfiguration", {"key": "AuthorizationKey", "value": KEY_HEX}))["status"] \
            == "Accepted"
        await until(lambda: len([a for a, _ in rt.failed_attempts if a.used_pending_key]) >= 2,
                    what="refused attempts with the new key")
        assert all(isinstance(exc, OSError) for _, exc in rt.failed_attempts)
        assert rt.station.security.connection().pending_key == KEY_HEX  # kept
        before = csms.connection_count
        down["on"] = False
        await until(lambda: csms.connection_count > before and rt.station.online, what="the new key accepted")
        connection = rt.station.security.connection()
        assert connection.authorization_key == KEY_HEX and connection.pending_key is None
        assert not logged(rt, FAILED_AUTH)
    finally:
        await csms.stop()


async def test_a_fallback_that_did_not_run_asks_for_no_immediate_reconnect(tmp_path, stations):
    from twin.security.transport import Attempt

    rt = await stations(station_file(tmp_path, f"ws://127.0.0.1:{free_port()}/ocpp",
                                     {"SecurityProfile": 1, "AuthorizationKey": KEY_TEXT}))
    attempt = Attempt(f"ws://127.0.0.1:1/ocpp/{CP_ID}", 2, trying=frozenset({"profile"}))
    refused = ConnectionRefusedError(111, "Connection refused")
    # Nothing pending in the core: the fallback changes nothing, the same plan would follow.
    assert await rt._link_connect_failed(attempt, refused) is False
    # The actor is closed (shutting down): the fallback step cannot run at all.
    rt.station.security.raise_profile(2)
    await rt.actor.close()
    assert await rt._link_connect_failed(attempt, refused) is False


async def test_provisioning_from_the_config_happens_once_per_data_dir(tmp_path, pki, stations):
    """[csms] ca_file is installed at the first start only: a DeleteCertificate (M04) of it
    stays deleted across restarts; a ca_file naming a new root installs that one, once."""
    from twin.security.pki import CENTRAL_SYSTEM_ROOT, fingerprint, hash_data

    data = tmp_path / "data"
    ca = pki.write("root.pem", pki.root.pem)
    config = station_file(tmp_path, f"ws://127.0.0.1:{free_port()}/ocpp",
                          {"SecurityProfile": 1, "AuthorizationKey": KEY_TEXT},
                          profile_urls={2: f"wss://localhost:{free_port()}/"}, ca_file=ca)
    rt = await stations(config, data)
    assert [fingerprint(c) for c in rt.certs.roots(CENTRAL_SYSTEM_ROOT)] == [fingerprint(pki.root.cert)]
    marker = json.loads((data / "csms-provisioned.json").read_text())
    assert marker["ca_file"] == [fingerprint(pki.root.cert)]
    # What a DeleteCertificate.req does to the store.
    assert rt.certs.delete(hash_data(pki.root.cert, pki.root.cert, "SHA256")).status == "Accepted"
    await rt.shutdown(graceful=False)

    rt = await stations(config, data)
    assert rt.certs.roots(CENTRAL_SYSTEM_ROOT) == []  # not undone by the restart
    await rt.shutdown(graceful=False)

    other = make_root("Second CSMS Root")
    ca.write_text(pki.root.pem + other.pem)
    rt = await stations(config, data)
    assert [fingerprint(c) for c in rt.certs.roots(CENTRAL_SYSTEM_ROOT)] == [fingerprint(other.cert)]
    assert sorted(json.loads((data / "csms-provisioned.json").read_text())["ca_file"]) == sorted(
        [fingerprint(pki.root.cert), fingerprint(other.cert)])


# ---------------------------------------------------------------------------------- TC_083, TC_084


async def test_tc083_raise_to_profile_2_is_kept_and_never_undone(tmp_path, pki, stations):
    tls_ctx = server_ctx(pki.server_pair("srv"))
    tls_port = free_port()
    plain = Csms(require_password=KEY_HEX)
    secure = Csms(port=tls_port, ssl_context=tls_ctx, require_password=KEY_HEX)
    await plain.start()
    await secure.start()
    config = station_file(tmp_path, plain.url, {"SecurityProfile": 1, "AuthorizationKey": KEY_HEX},
                          profile_urls={2: f"wss://localhost:{tls_port}/"}, ca_file=pki.write("root.pem", pki.root.pem))
    try:
        rt = await stations(config)
        await registered(rt, plain)
        assert (await plain.call("ChangeConfiguration", {"key": "SecurityProfile", "value": "2"}))["status"] \
            == "Accepted"
        await until(lambda: secure.connected and rt.station.online, what="the reconnect on wss")
        assert rt.station.security.connection().profile == 2 and rt.link.attempt.url.startswith("wss://localhost")
        assert not plain.connected

        # Kept across a restart (TC_083 sends a Hard Reset next).
        await rt.shutdown(graceful=False)
        before = secure.connection_count
        rt = await stations(config)
        await until(lambda: secure.connection_count > before and rt.station.online, what="profile 2 after restart")
        await secure.wait_for("BootNotification", timeout=10)
        assert rt.link.attempt.profile == 2

        # Only the profile 1 server is up: the station must not go back to it (A05.FR.09).
        plain_before = plain.connection_count
        await secure.stop()
        failed = len(rt.failed_attempts)
        await until(lambda: len(rt.failed_attempts) >= failed + 3, what="attempts on wss")
        assert plain.connection_count == plain_before
        assert {attempt.profile for attempt, _ in rt.failed_attempts} == {2}

        secure = Csms(port=tls_port, ssl_context=tls_ctx, require_password=KEY_HEX)
        await secure.start()
        await until(lambda: secure.connected and rt.station.online, timeout=15, what="back on wss")
    finally:
        await plain.stop()
        await secure.stop()


async def test_tc084_lowering_the_profile_is_rejected_without_a_reconnect(tmp_path, pki, stations):
    csms = Csms(ssl_context=server_ctx(pki.server_pair("srv")), require_password=KEY_HEX)
    await csms.start()
    try:
        rt = await stations(station_file(tmp_path, f"wss://localhost:{csms.port}",
                                         {"SecurityProfile": 2, "AuthorizationKey": KEY_HEX},
                                         profile_urls={1: f"ws://127.0.0.1:{free_port()}"},
                                         ca_file=pki.write("root.pem", pki.root.pem)))
        await registered(rt, csms)
        session, count = rt.link.session, csms.connection_count
        for value in ("1", "0", "2"):
            result = await csms.call("ChangeConfiguration", {"key": "SecurityProfile", "value": value})
            assert result["status"] == "Rejected", value
        await csms.call("GetConfiguration", {"key": ["SecurityProfile"]})  # a round trip later: still the same link
        assert (rt.link.session, csms.connection_count) == (session, count)
        assert rt.station.security.connection().pending_profile is None
    finally:
        await csms.stop()


async def test_raising_with_the_new_endpoint_down_falls_back_to_the_old_profile(tmp_path, pki, stations):
    """A05.FR.08 in this run; the accepted raise is kept and tried again at the next start
    (TC_083: OCTT may serve only profile 1 at the first try, then sends Reset(Hard))."""
    csms = Csms(require_password=KEY_HEX)
    await csms.start()
    tls_port = free_port()
    secure = None
    config = station_file(tmp_path, csms.url, {"SecurityProfile": 1, "AuthorizationKey": KEY_HEX},
                          profile_urls={2: f"wss://localhost:{tls_port}/"},
                          ca_file=pki.write("root.pem", pki.root.pem))
    try:
        rt = await stations(config)
        await registered(rt, csms)
        before = csms.connection_count
        assert (await csms.call("ChangeConfiguration", {"key": "SecurityProfile", "value": "2"}))["status"] \
            == "Accepted"
        await until(lambda: csms.connection_count > before and rt.station.online, what="the fallback")
        connection = rt.station.security.connection()
        assert (connection.profile, connection.pending_profile) == (1, None)
        assert [a.profile for a, _ in rt.failed_attempts] == [2]  # one try on the new profile (A05.FR.08)
        assert isinstance(rt.failed_attempts[0][1], OSError)  # refused: no security event
        assert rt.link.attempt.profile == 1
        # Not again on every reconnect of this run (the link would alternate for ever) ...
        before = csms.connection_count
        await rt.link.reconnect("test")
        await until(lambda: csms.connection_count > before and rt.station.online, what="a plain reconnect")
        assert [a.profile for a, _ in rt.failed_attempts] == [2] and rt.link.attempt.profile == 1
        assert rt.station.security.pending_profile == 2  # ... but kept, persisted

        await rt.shutdown(graceful=False)
        secure = Csms(port=tls_port, ssl_context=server_ctx(pki.server_pair("srv")), require_password=KEY_HEX)
        await secure.start()
        rt = await stations(config)  # the same data dir: the next start tries profile 2 again
        await until(lambda: secure.connected and rt.station.online, what="profile 2 at the next start")
        connection = rt.station.security.connection()
        assert (connection.profile, connection.pending_profile) == (2, None)
    finally:
        await csms.stop()
        if secure is not None:
            await secure.stop()


# --------------------------------------------------------------------- TC_078 and the other failures


def _client(pki: Pki, ca=None) -> tuple[Path, Path]:
    key, cert = (ca or pki.root).leaf(SERIAL, CLIENT_AUTH)
    return pki.write("cp.pem", pem(cert)), pki.write("cp.key", key_pem(key))


# name -> (profile, event, the bad server's context or "password" for a 401 CSMS)
FAILURES = {
    "unknown root (TC_078)": (2, INVALID_CSMS_CERT, lambda pki: server_ctx(
        pki.server_pair("rogue", ca=make_root("CSMS Root")))),
    "expired server certificate": (2, INVALID_CSMS_CERT, lambda pki: server_ctx(
        pki.server_pair("old", start=timedelta(days=-3), days=1))),
    "wrong name": (2, INVALID_CSMS_CERT, lambda pki: server_ctx(pki.server_pair("other", cn="csms.example"))),
    "TLS 1.1 only": (2, "InvalidTLSVersion", lambda pki: server_ctx(
        pki.server_pair("srv"), minimum=ssl.TLSVersion.TLSv1, maximum=ssl.TLSVersion.TLSv1_1,
        ciphers="DEFAULT:@SECLEVEL=0")),
    "no shared cipher": (2, "InvalidTLSCipherSuite", lambda pki: server_ctx(
        pki.server_pair("srv"), pki.server_pair("srv-rsa", key=rsa_key()), maximum=ssl.TLSVersion.TLSv1_2,
        ciphers="ECDHE-RSA-AES128-GCM-SHA256:ECDHE-ECDSA-CHACHA20-POLY1305")),
    "client certificate required, none sent": (2, FAILED_AUTH, lambda pki: server_ctx(
        pki.server_pair("srv"), client_ca=pki.root.pem)),
    "profile 3, unknown client certificate": (3, FAILED_AUTH, lambda pki: server_ctx(
        pki.server_pair("srv"), client_ca=pki.root.pem)),
    "wrong password": (2, FAILED_AUTH, "password"),
}


@pytest.mark.parametrize("case", list(FAILURES))
async def test_connection_failures_raise_one_event_and_lose_nothing(tmp_path, pki, stations, case):
    profile, event, bad = FAILURES[case]
    other_ca = make_root("Other CP CA")
    # The good CSMS takes this station's certificate (from other_ca) under profile 3; the bad one does not.
    good_ctx = server_ctx(pki.server_pair("srv"), client_ca=pki.root.pem + other_ca.pem) if profile == 3 \
        else server_ctx(pki.server_pair("srv"))
    password = KEY_HEX if profile == 2 else None
    port = free_port()
    keys = {"SecurityProfile": profile, **({"AuthorizationKey": password} if password else {})}
    config = station_file(tmp_path, f"wss://localhost:{port}/", keys, ca_file=pki.write("root.pem", pki.root.pem),
                          client=_client(pki, other_ca) if profile == 3 else None)
    good = Csms(port=port, ssl_context=good_ctx, require_password=password)
    await good.start()
    try:
        rt = await stations(config)
        await registered(rt, good)
        st = StationHandle(rt, good)
        await st.plug(1)
        await st.tap("TAG1")
        await good.wait_for("StartTransaction", timeout=10)
        await good.wait_for("StatusNotification", {"connectorId": 1, "status": "Charging"}, timeout=10)
        await good.stop()
        await until(lambda: not rt.station.online, what="offline")

        failed = len(rt.failed_attempts)
        if bad == "password":
            bad_server = Csms(port=port, ssl_context=good_ctx, require_password="another-password-1")
            await bad_server.start()
            stop_bad = bad_server.stop
        else:
            handshake = HandshakeServer(bad(pki), port=port).__enter__()

            async def stop_bad():
                await asyncio.to_thread(handshake.__exit__, None, None, None)
        try:
            await until(lambda: len(rt.failed_attempts) >= failed + 2, what="failed attempts")
            await st.tap("TAG1")  # the transaction ends while the CSMS cannot be reached: queued
            await until(lambda: len(rt.failed_attempts) >= failed + 4, what="more failed attempts")
        finally:
            await stop_bad()
        assert rt.station.online is False and rt.registered_once
        await until(lambda: logged(rt, event), what=f"{event} in the security log")

        good = Csms(port=port, ssl_context=good_ctx, require_password=password)
        await good.start()
        stop = await good.wait_for("StopTransaction", timeout=15)  # queued before the failure, not lost
        assert stop.payload["idTag"] == "TAG1"
        if event == INVALID_CSMS_CERT:  # sent to the CSMS once it is back (TC_078)
            notification = await good.wait_for("SecurityEventNotification", {"type": event}, timeout=10)
            assert notification.payload.get("techInfo")
            await good.call("GetConfiguration", {"key": ["SecurityProfile"]})  # nothing else comes
            assert len([m for m in good.calls("SecurityEventNotification") if m.payload["type"] == event]) == 1
        # Once per run of failures, however many attempts failed (events.FailureRun).
        assert len(logged(rt, event)) == 1
        events = {e["type"] for e in rt.security_log.entries()}
        assert not events & ({INVALID_CSMS_CERT, "InvalidTLSVersion", "InvalidTLSCipherSuite", FAILED_AUTH} - {event})
    finally:
        with contextlib.suppress(Exception):
            await good.stop()


async def test_profile_3_without_a_certificate_makes_no_attempt_and_says_why(tmp_path, pki, stations):
    with HandshakeServer(server_ctx(pki.server_pair("srv"), client_ca=pki.root.pem)) as server:
        rt = await stations(station_file(tmp_path, f"wss://localhost:{server.port}", {"SecurityProfile": 3},
                                         ca_file=pki.write("root.pem", pki.root.pem)))
        await until(lambda: rt.link.last_error is not None, what="the link error")
        assert "needs a valid charge point certificate" in rt.link.last_error
        await until(lambda: len(rt.failed_attempts) >= 2, what="another attempt")
    assert server.seen == []  # nothing went on the wire
    assert rt.station.security.connection().profile == 3  # nothing lowered it
