"""twin.security.transport: what each connection attempt uses (URL, Basic header, TLS
context) for the committed and pending security settings, and what a failed attempt means.
The store is a real one with a private CA; the handshakes themselves are in test_tls.py and
tests/octt/test_security_transport.py."""

from __future__ import annotations

import base64
import ssl
from pathlib import Path

import pytest
from websockets.exceptions import InvalidStatus
from websockets.http11 import Response

from tests.security.private_ca import CLIENT_AUTH, NOW, Pki, key_pem, pem
from twin.core.security import SecurityConnection
from twin.security.certs import CertificateStore
from twin.security.pki import CENTRAL_SYSTEM_ROOT as CS
from twin.security.transport import Attempt, Endpoints, Monitor, plan, scheme_problem, static_attempt

KEY_HEX = "4F43415F4F4354545F61646D696E5F74657374"  # TC_073: the 19 bytes OCA_OCTT_admin_test
KEY_TEXT = "plain-text-key-16"
ENDPOINTS = Endpoints("ws://csms.example:9000/ocpp", {2: "wss://csms.example:8443/ocpp/",
                                                      3: "wss://csms.example:8444/ocpp"})


@pytest.fixture
def store(tmp_path: Path) -> CertificateStore:
    pki = Pki(tmp_path)
    store = CertificateStore(tmp_path / "data")
    assert store.install_root(CS, pki.root.pem, NOW, 20).status == "Accepted"
    key, cert = pki.root.leaf("SERIAL-1", CLIENT_AUTH)
    store.import_charge_point_credentials(pem(cert), key_pem(key))
    return store


def basic(user: bytes, password: bytes) -> str:
    return "Basic " + base64.b64encode(user + b":" + password).decode()


def test_the_url_scheme_follows_the_profile():
    assert [ENDPOINTS.url_for(n, "CP1") for n in range(4)] == [
        "ws://csms.example:9000/ocpp/CP1", "ws://csms.example:9000/ocpp/CP1",
        "wss://csms.example:8443/ocpp/CP1", "wss://csms.example:8444/ocpp/CP1"]
    # A wss:// url serves 2 and 3 only; 0 and 1 have no endpoint then.
    assert [Endpoints("wss://h/ocpp").base(n) for n in range(4)] == [None, None, "wss://h/ocpp", "wss://h/ocpp"]
    assert scheme_problem("ws://h", 2) and scheme_problem("wss://h", 1) and not scheme_problem("wss://h", 3)
    assert Endpoints("ws://h", {2: "ws://h:1"}).problems() == [
        "2: security profile 2 connects with wss://, but the URL is ws:// (TLS on profile 2)"]


@pytest.mark.parametrize(("key", "wire"), [(KEY_HEX, b"OCA_OCTT_admin_test"), (KEY_TEXT, KEY_TEXT.encode()),
                                           ("00ff" * 8, b"\x00\xff" * 8)])
def test_profile_1_sends_basic_auth_from_the_decoded_key(store, key, wire):
    attempt = plan(SecurityConnection(1, key), ENDPOINTS, "CP1", store, NOW)
    assert attempt.url == "ws://csms.example:9000/ocpp/CP1" and attempt.ssl is None and attempt.problem is None
    # user = the identity at the end of the URL (A00.FR.204), password = the key's bytes (A00.FR.205)
    assert attempt.headers == {"Authorization": basic(b"CP1", wire)}
    assert key not in repr(attempt) and "Basic" not in repr(attempt)


def test_profile_0_sends_nothing(store):
    attempt = plan(SecurityConnection(0, KEY_TEXT), ENDPOINTS, "CP1", store, NOW)
    assert attempt.headers == {} and attempt.ssl is None and attempt.profile == 0


def test_profile_2_is_tls_with_basic_auth(store):
    attempt = plan(SecurityConnection(2, KEY_HEX), ENDPOINTS, "CP1", store, NOW)
    assert attempt.url == "wss://csms.example:8443/ocpp/CP1"
    assert attempt.headers == {"Authorization": basic(b"CP1", b"OCA_OCTT_admin_test")}
    ctx = attempt.ssl
    assert isinstance(ctx, ssl.SSLContext) and ctx.minimum_version == ssl.TLSVersion.TLSv1_2
    assert ctx.check_hostname and ctx.cert_store_stats()["x509_ca"] == 1  # the installed root only


def test_profile_3_is_tls_with_the_client_certificate_and_no_header(store):
    attempt = plan(SecurityConnection(3, KEY_HEX), ENDPOINTS, "CP1", store, NOW)
    assert attempt.url == "wss://csms.example:8444/ocpp/CP1" and attempt.headers == {}
    assert attempt.ssl is not None and attempt.problem is None


def test_a_pending_profile_and_key_are_tried_first(store):
    conn = SecurityConnection(1, KEY_TEXT, pending_profile=2, pending_key=KEY_HEX)
    attempt = plan(conn, ENDPOINTS, "CP1", store, NOW)
    assert (attempt.profile, attempt.trying, attempt.used_pending_key) == (2, frozenset({"profile", "key"}), True)
    assert attempt.headers["Authorization"] == basic(b"CP1", b"OCA_OCTT_admin_test")
    only_key = plan(SecurityConnection(1, KEY_TEXT, pending_key=KEY_HEX), ENDPOINTS, "CP1", store, NOW)
    assert (only_key.profile, only_key.trying) == (1, frozenset({"key"}))
    # Profile 3 sends no Basic header: a pending key is not what the attempt tries.
    to_3 = plan(SecurityConnection(2, KEY_TEXT, pending_profile=3, pending_key=KEY_HEX), ENDPOINTS, "CP1", store, NOW)
    assert (to_3.profile, to_3.trying, to_3.headers) == (3, frozenset({"profile"}), {})


def test_a_pending_profile_not_above_the_committed_one_is_ignored(store):
    attempt = plan(SecurityConnection(2, KEY_TEXT, pending_profile=1), ENDPOINTS, "CP1", store, NOW)
    assert attempt.profile == 2 and attempt.trying == frozenset()  # never lower (A05.FR.09)


@pytest.mark.parametrize(("conn", "endpoints", "problem"), [
    (SecurityConnection(2, KEY_TEXT), Endpoints("ws://h/ocpp"), "no wss:// endpoint for security profile 2"),
    (SecurityConnection(1, ""), ENDPOINTS, "security profile 1 needs a valid AuthorizationKey"),
    (SecurityConnection(2, "short"), ENDPOINTS, "security profile 2 needs a valid AuthorizationKey"),
])
def test_an_attempt_that_cannot_be_made_says_why(store, conn, endpoints, problem):
    attempt = plan(conn, endpoints, "CP1", store, NOW)
    assert attempt.problem is not None and problem in attempt.problem


def test_tls_without_a_root_or_a_certificate_cannot_be_attempted(tmp_path):
    empty = CertificateStore(tmp_path / "empty")
    assert "CentralSystemRootCertificate" in plan(SecurityConnection(2, KEY_TEXT), ENDPOINTS, "CP1", empty, NOW).problem
    assert "charge point certificate" in plan(SecurityConnection(3, ""), ENDPOINTS, "CP1", empty, NOW).problem


def _401() -> InvalidStatus:
    return InvalidStatus(Response(401, "Unauthorized", {}))


def test_a_failed_pending_attempt_falls_back_and_raises_its_event_once_per_run(store):
    monitor = Monitor()
    pending = plan(SecurityConnection(1, KEY_TEXT, pending_key=KEY_HEX), ENDPOINTS, "CP1", store, NOW)
    failure = monitor.failed(pending, _401())
    assert failure.fallbacks == ("key",) and failure.event == "FailedToAuthenticationAtCentralSystem"
    assert "401" in failure.tech_info and "OCA_OCTT" not in failure.tech_info
    committed = plan(SecurityConnection(1, KEY_TEXT), ENDPOINTS, "CP1", store, NOW)
    again = monitor.failed(committed, _401())
    assert again.fallbacks == () and again.event is None  # the same event in the same run: once
    assert monitor.connected(committed) == (1, False)
    assert monitor.failed(committed, _401()).event == "FailedToAuthenticationAtCentralSystem"  # a new run


@pytest.mark.parametrize("status", [401, 403])
def test_a_pending_key_falls_back_only_when_the_csms_refuses_the_credentials(store, status):
    pending = plan(SecurityConnection(1, KEY_TEXT, pending_key=KEY_HEX), ENDPOINTS, "CP1", store, NOW)
    refused = InvalidStatus(Response(status, "No", {}))
    assert Monitor().failed(pending, refused).fallbacks == ("key",)
    wrapped = ConnectionError("handshake failed")
    wrapped.__cause__ = refused
    assert Monitor().failed(pending, wrapped).fallbacks == ("key",)


@pytest.mark.parametrize("error", [ConnectionRefusedError(111, "Connection refused"), TimeoutError("timed out"),
                                   InvalidStatus(Response(503, "Service Unavailable", {})),
                                   ssl.SSLCertVerificationError(1, "certificate verify failed"),
                                   ConnectionResetError(104, "reset")])
def test_a_pending_key_survives_any_other_failure(store, error):
    # A01.FR.03: the CSMS may already take the new key only; a CSMS restarting for 2 s or a
    # refused connection proves nothing about the key. It is retried with the normal backoff.
    pending = plan(SecurityConnection(1, KEY_TEXT, pending_key=KEY_HEX), ENDPOINTS, "CP1", store, NOW)
    assert Monitor().failed(pending, error).fallbacks == ()
    # With a pending profile, the profile still falls back (A05.FR.08); the key stays pending.
    both = plan(SecurityConnection(1, KEY_TEXT, pending_profile=2, pending_key=KEY_HEX), ENDPOINTS, "CP1", store, NOW)
    assert Monitor().failed(both, error).fallbacks == ("profile",)
    assert Monitor().failed(both, _401()).fallbacks == ("key", "profile")


def test_the_plan_key_tells_plans_apart_without_the_tls_context(store):
    conn = SecurityConnection(2, KEY_TEXT)
    first, second = plan(conn, ENDPOINTS, "CP1", store, NOW), plan(conn, ENDPOINTS, "CP1", store, NOW)
    assert first.ssl is not second.ssl and first.plan_key == second.plan_key
    assert plan(SecurityConnection(2, KEY_HEX), ENDPOINTS, "CP1", store, NOW).plan_key != first.plan_key
    assert plan(SecurityConnection(1, KEY_TEXT), ENDPOINTS, "CP1", store, NOW).plan_key != first.plan_key


def test_a_certificate_failure_maps_to_its_event(store):
    monitor = Monitor()
    attempt = plan(SecurityConnection(2, KEY_TEXT), ENDPOINTS, "CP1", store, NOW)
    error = ssl.SSLCertVerificationError(1, "certificate verify failed: certificate has expired")
    assert monitor.failed(attempt, error).event == "InvalidCentralSystemCertificate"
    assert monitor.failed(attempt, ConnectionRefusedError(111, "refused")).event is None  # not a security event


def test_an_impossible_attempt_raises_no_security_event_but_falls_back(store):
    attempt = plan(SecurityConnection(1, KEY_TEXT, pending_profile=2), Endpoints("ws://h/ocpp"), "CP1", store, NOW)
    failure = Monitor().failed(attempt, ConnectionError(attempt.problem))
    assert failure.event is None and failure.fallbacks == ("profile",)


def test_a_used_pending_key_is_reported_on_success(store):
    attempt = plan(SecurityConnection(1, KEY_TEXT, pending_key=KEY_HEX), ENDPOINTS, "CP1", store, NOW)
    assert Monitor().connected(attempt) == (1, True)


def test_the_static_attempt_of_a_bare_link(tmp_path):
    pki = Pki(tmp_path)
    ca = pki.write("ca.pem", pki.root.pem)
    attempt = static_attempt("wss://localhost:1/ocpp/CP1", KEY_HEX, str(ca))
    assert attempt.headers == {"Authorization": basic(b"CP1", b"OCA_OCTT_admin_test")}
    assert attempt.ssl.cert_store_stats()["x509_ca"] == 1
    assert static_attempt("ws://h/CP1") == Attempt("ws://h/CP1", 0)
    with pytest.raises(ValueError):
        static_attempt("ws://h/CP1", "short")  # not an AuthorizationKey: refused, not sent as typed
