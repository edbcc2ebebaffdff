"""Real TLS handshakes on loopback for security profiles 2 and 3, and each failure mapped to
its security event.

The CSMS here is a `websockets` server on blocking sockets in a thread: a failed handshake
there sends its TLS alert before closing, as nginx or a Java CSMS do. (An asyncio TLS
server aborts the connection instead, and the client only sees a reset.) The client is the
twin's: `websockets`' asyncio client with the context from twin.security.tls, built from
a real certificate store.
"""

from __future__ import annotations

import asyncio
import base64
import ssl
import threading
import warnings
from datetime import timedelta
from http import HTTPStatus
from pathlib import Path

import pytest
from websockets.asyncio.client import connect
from websockets.sync.server import ServerConnection, serve

from tests.security.private_ca import CLIENT_AUTH, NOW, Pki, key_pem, make_root, pem, rsa_key
from twin.security import tls
from twin.security.auth_key import basic_auth_headers
from twin.security.certs import CertificateStore
from twin.security.pki import CENTRAL_SYSTEM_ROOT as CS

CP_ID = "CP001"
KEY = "4F43415F4F4354545F61646D696E5F74657374"  # OCTT TC_073's AuthorizationKey


class Csms:
    """A TLS websockets CSMS on 127.0.0.1 that records each accepted connection."""

    def __init__(self, ctx: ssl.SSLContext, password: bytes | None = None):
        self.ctx = ctx
        self.password = password
        self.seen: list[dict] = []

    def _check(self, connection: ServerConnection, request):
        if self.password is None:
            return None
        value = request.headers.get("Authorization", "")
        user, _, password = base64.b64decode(value.removeprefix("Basic ")).partition(b":")
        identity = request.path.rsplit("/", 1)[-1].encode()
        if value.startswith("Basic ") and user == identity and password == self.password:
            return None
        return connection.respond(HTTPStatus.UNAUTHORIZED, "bad credentials\n")

    def _handler(self, ws: ServerConnection) -> None:
        sock = ws.socket
        self.seen.append({"version": sock.version(), "cipher": sock.cipher()[0], "peer": sock.getpeercert(),
                          "auth": ws.request.headers.get("Authorization")})
        ws.send("welcome")
        try:
            ws.recv(timeout=5)
        except Exception:  # noqa: BLE001 - the client closes; nothing to check
            pass

    def __enter__(self) -> Csms:
        self.server = serve(self._handler, "127.0.0.1", 0, ssl=self.ctx, process_request=self._check,
                            open_timeout=5, close_timeout=1)
        self.port = self.server.socket.getsockname()[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.thread.join(timeout=10)

    @property
    def url(self) -> str:
        return f"wss://localhost:{self.port}/ocpp/{CP_ID}"


def server_ctx(*pairs: tuple[Path, Path], minimum=ssl.TLSVersion.TLSv1_2, maximum=None, ciphers: str | None = None,
               client_ca: str | None = None) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    with warnings.catch_warnings():  # TLS 1.0/1.1 are deprecated: the point of one test
        warnings.simplefilter("ignore", DeprecationWarning)
        ctx.minimum_version = minimum
        if maximum is not None:
            ctx.maximum_version = maximum
    if ciphers:
        ctx.set_ciphers(ciphers)
    for cert_file, key_file in pairs:
        ctx.load_cert_chain(cert_file, key_file)
    if client_ca is not None:
        ctx.verify_mode = ssl.CERT_REQUIRED  # profile 3
        ctx.load_verify_locations(cadata=client_ca)
    return ctx


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    return Pki(tmp_path)


@pytest.fixture
def store(tmp_path: Path, pki: Pki) -> CertificateStore:
    store = CertificateStore(tmp_path / "data")
    assert store.install_root(CS, pki.root.pem, NOW, 20).status == "Accepted"
    return store


def give_client_certificate(store: CertificateStore, pki: Pki, cn: str = CP_ID, ca=None) -> None:
    key, cert = (ca or pki.root).leaf(cn, CLIENT_AUTH, o="TestCPO")
    store.import_charge_point_credentials(pem(cert), key_pem(key))


async def attempt(url: str, ctx: ssl.SSLContext, headers: dict | None = None) -> BaseException | None:
    """Connect as the twin would; None on success (after reading the CSMS's first message)."""
    try:
        async with connect(url, ssl=ctx, additional_headers=headers, open_timeout=5) as ws:
            assert await asyncio.wait_for(ws.recv(), 5) == "welcome"
    except Exception as exc:  # noqa: BLE001 - the error is what the test looks at
        return exc
    return None


# -- the context ---------------------------------------------------------------------------------


def test_context_trusts_only_the_installed_roots(store: CertificateStore, pki: Pki) -> None:
    ctx = tls.context_from_store(store, 2, NOW)
    assert ctx.cert_store_stats()["x509_ca"] == 1  # not the system's CAs
    assert [c["subject"] for c in ctx.get_ca_certs()] == [((("organizationName", "TestCPO"),),
                                                           (("commonName", "CSMS Root"),))]
    assert ctx.minimum_version == ssl.TLSVersion.TLSv1_2
    assert ctx.check_hostname and ctx.verify_mode == ssl.CERT_REQUIRED
    assert ctx.options & ssl.OP_NO_COMPRESSION
    tls12 = [c["name"] for c in ctx.get_ciphers() if c["protocol"] == "TLSv1.2"]
    assert sorted(tls12) == sorted(tls.TLS12_CIPHERS)  # exactly the whitepaper's four


def test_context_needs_what_the_profile_needs(tmp_path: Path, store: CertificateStore) -> None:
    with pytest.raises(tls.TlsConfigError, match="CentralSystemRootCertificate"):
        tls.context_from_store(CertificateStore(tmp_path / "empty"), 2, NOW)
    with pytest.raises(tls.TlsConfigError, match="charge point certificate"):
        tls.context_from_store(store, 3, NOW)  # missing client certificate: no connection attempt at all
    with pytest.raises(tls.TlsConfigError, match="does not use TLS"):
        tls.context_from_store(store, 1, NOW)


# -- profile 2 -----------------------------------------------------------------------------------


async def test_profile_2_connects_with_basic_auth(store: CertificateStore, pki: Pki) -> None:
    with Csms(server_ctx(pki.server_pair("srv")), password=b"OCA_OCTT_admin_test") as csms:
        assert await attempt(csms.url, tls.context_from_store(store, 2, NOW), basic_auth_headers(csms.url, KEY)) is None
    [seen] = csms.seen
    assert seen["version"] == "TLSv1.3" and seen["peer"] is None  # no client certificate under profile 2
    assert seen["auth"] == basic_auth_headers(csms.url, KEY)["Authorization"]


async def test_profile_2_wrong_password_is_failed_authentication(store: CertificateStore, pki: Pki) -> None:
    with Csms(server_ctx(pki.server_pair("srv")), password=b"another password") as csms:
        exc = await attempt(csms.url, tls.context_from_store(store, 2, NOW), basic_auth_headers(csms.url, KEY))
    assert tls.security_event_for_connect_error(exc, 2) == "FailedToAuthenticationAtCentralSystem"


@pytest.mark.parametrize("suite", tls.TLS12_CIPHERS)
async def test_each_mandated_tls12_suite_is_offered(store: CertificateStore, pki: Pki, suite: str) -> None:
    pairs = (pki.server_pair("srv-ec"), pki.server_pair("srv-rsa", key=rsa_key()))
    with Csms(server_ctx(*pairs, maximum=ssl.TLSVersion.TLSv1_2, ciphers=suite)) as csms:
        assert await attempt(csms.url, tls.context_from_store(store, 2, NOW)) is None
    assert csms.seen[0]["version"] == "TLSv1.2" and csms.seen[0]["cipher"] == suite


# -- failures, each mapped to its event ---------------------------------------------------------


async def failure(store: CertificateStore, ctx: ssl.SSLContext, profile: int = 2, host: str = "localhost"):
    with Csms(ctx) as csms:
        exc = await attempt(csms.url.replace("localhost", host), tls.context_from_store(store, profile, NOW))
    assert exc is not None, "the connection should have failed"
    assert csms.seen == []
    return exc, tls.security_event_for_connect_error(exc, profile)


@pytest.mark.parametrize(("rogue_name", "message"), [
    ("CSMS Root", "certificate signature failure"),  # TC_078: the same name, another key
    ("Rogue Root", "unable to get local issuer"),
])
async def test_unknown_root(store: CertificateStore, pki: Pki, rogue_name: str, message: str) -> None:
    rogue = make_root(rogue_name)
    exc, event = await failure(store, server_ctx(pki.server_pair("rogue", ca=rogue)))
    assert isinstance(exc, ssl.SSLCertVerificationError) and message in str(exc)
    assert event == "InvalidCentralSystemCertificate"


async def test_expired_certificate(store: CertificateStore, pki: Pki) -> None:
    pair = pki.server_pair("old", start=timedelta(days=-3), days=1)
    exc, event = await failure(store, server_ctx(pair))
    assert "certificate has expired" in str(exc)
    assert event == "InvalidCentralSystemCertificate"


async def test_wrong_name(store: CertificateStore, pki: Pki) -> None:
    exc, event = await failure(store, server_ctx(pki.server_pair("other", cn="csms.example")))
    assert "Hostname mismatch" in str(exc)
    assert event == "InvalidCentralSystemCertificate"


async def test_an_ip_address_url_does_not_match_a_cn_only_certificate(store: CertificateStore, pki: Pki) -> None:
    exc, event = await failure(store, server_ctx(pki.server_pair("srv")), host="127.0.0.1")
    assert "IP address mismatch" in str(exc)
    assert event == "InvalidCentralSystemCertificate"


async def test_tls_1_1_only(store: CertificateStore, pki: Pki) -> None:
    ctx = server_ctx(pki.server_pair("srv"), minimum=ssl.TLSVersion.TLSv1, maximum=ssl.TLSVersion.TLSv1_1,
                     ciphers="DEFAULT:@SECLEVEL=0")
    exc, event = await failure(store, ctx)
    assert isinstance(exc, ssl.SSLError) and exc.reason == "TLSV1_ALERT_PROTOCOL_VERSION"
    assert event == "InvalidTLSVersion"


async def test_no_shared_cipher(store: CertificateStore, pki: Pki) -> None:
    pairs = (pki.server_pair("srv-ec"), pki.server_pair("srv-rsa", key=rsa_key()))
    # A strong suite, but not one the whitepaper lists: the twin does not offer it.
    ctx = server_ctx(*pairs, maximum=ssl.TLSVersion.TLSv1_2, ciphers="ECDHE-RSA-AES128-GCM-SHA256:"
                     "ECDHE-ECDSA-CHACHA20-POLY1305")
    exc, event = await failure(store, ctx)
    assert isinstance(exc, ssl.SSLError) and exc.reason == "SSLV3_ALERT_HANDSHAKE_FAILURE"
    assert event == "InvalidTLSCipherSuite"


# -- profile 3 -----------------------------------------------------------------------------------


async def test_profile_3_presents_the_charge_point_certificate(store: CertificateStore, pki: Pki) -> None:
    give_client_certificate(store, pki)
    with Csms(server_ctx(pki.server_pair("srv"), client_ca=pki.root.pem)) as csms:
        assert await attempt(csms.url, tls.context_from_store(store, 3, NOW)) is None
    subject = dict(item for rdn in csms.seen[0]["peer"]["subject"] for item in rdn)
    assert subject == {"organizationName": "TestCPO", "commonName": CP_ID}
    assert csms.seen[0]["peer"]["serialNumber"]


async def test_profile_3_uses_a_new_certificate_from_the_next_connection(store: CertificateStore, pki: Pki) -> None:
    give_client_certificate(store, pki, cn="OLD-CN")
    with Csms(server_ctx(pki.server_pair("srv"), client_ca=pki.root.pem)) as csms:
        ctx = tls.context_from_store(store, 3, NOW)  # this connection's context
        give_client_certificate(store, pki, cn="NEW-CN")  # e.g. CertificateSigned arrives meanwhile
        assert await attempt(csms.url, ctx) is None
        assert await attempt(csms.url, tls.context_from_store(store, 3, NOW + timedelta(seconds=1))) is None
    names = [dict(i for rdn in s["peer"]["subject"] for i in rdn)["commonName"] for s in csms.seen]
    assert names == ["OLD-CN", "NEW-CN"]


async def test_profile_3_client_certificate_from_an_unknown_ca(store: CertificateStore, pki: Pki) -> None:
    give_client_certificate(store, pki, ca=make_root("Unknown CA"))
    for maximum in (ssl.TLSVersion.TLSv1_2, None):
        ctx = server_ctx(pki.server_pair("srv"), maximum=maximum, client_ca=pki.root.pem)
        _exc, event = await failure(store, ctx, profile=3)
        assert event == "FailedToAuthenticationAtCentralSystem", maximum


async def test_missing_client_certificate_on_a_profile_3_server(store: CertificateStore, pki: Pki) -> None:
    """The station connects without a certificate (its profile 2 context) to a CSMS that
    requires one. Under TLS 1.3 the server's refusal comes after the handshake, as the
    connection closing before any HTTP response."""
    _exc, event = await failure(store, server_ctx(pki.server_pair("srv"), client_ca=pki.root.pem), profile=2)
    assert event == "FailedToAuthenticationAtCentralSystem"


# -- not security events -------------------------------------------------------------------------


async def test_refused_connection_is_not_a_security_event(store: CertificateStore) -> None:
    with Csms(server_ctx()) as csms:  # a server to learn a free port from, then gone
        url = csms.url
    exc = await attempt(url, tls.context_from_store(store, 2, NOW))
    assert isinstance(exc, OSError)
    assert tls.security_event_for_connect_error(exc, 2) is None


def test_other_errors_are_not_security_events() -> None:
    assert tls.security_event_for_connect_error(TimeoutError(), 3) is None
    assert tls.security_event_for_connect_error(ConnectionResetError(), 3) is None
    assert tls.security_event_for_connect_error(ssl.SSLError(1, "[SSL] something else"), 3) is None
