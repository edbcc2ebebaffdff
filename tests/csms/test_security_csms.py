"""The built-in CSMS's security side: Basic auth (profiles 1/2), TLS (profiles 2/3), its
private PKI, the security messages and their whitepaper checks, against real websockets
clients on loopback and the station's own TLS and CSR code."""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import os
import ssl
import stat
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, ExtensionOID, NameOID
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidMessage, InvalidStatus

from tests.security.private_ca import validate
from twin.csms import Csms
from twin.csms.basic_auth import check_basic_auth, decode_basic
from twin.csms.pki import CsmsPki, CsrError
from twin.csms.tls import MANDATED_TLS12_CIPHERS, server_context
from twin.security import csr as station_csr
from twin.security.auth_key import basic_auth_header
from twin.security.certs import CertificateStore
from twin.security.pki import CENTRAL_SYSTEM_ROOT, name_matches
from twin.security.tls import client_context

REPO = Path(__file__).resolve().parents[2]
HEX_KEY = "4F43415F4F4354545F61646D696E5F74657374"  # OCTT TC_073: the 19 bytes OCA_OCTT_admin_test
PLAIN_KEY = "plain-text-key-1234"


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> CsmsPki:
    return CsmsPki(tmp_path_factory.mktemp("pki") / "csms-pki").ensure()


def basic(user: str | bytes, password: bytes) -> dict[str, str]:
    return {"Authorization": basic_auth_header(user, password)}


async def open_and_close(url: str, **kwargs: Any) -> None:
    async with connect(url, subprotocols=["ocpp1.6"], open_timeout=5, **kwargs) as ws:
        await ws.send('[2,"1","Heartbeat",{}]')
        assert json.loads(await asyncio.wait_for(ws.recv(), 5))[0] == 3


def station_cert(pki: CsmsPki, directory: Path, serial: str = "SN-0001", cpo: str = "TestCPO") -> tuple[Path, Path]:
    """A station key pair the way the twin makes one (its CSR code), signed by the CSMS CA."""
    key = station_csr.generate_key()
    chain = pki.sign_csr(station_csr.build_csr(key, serial, cpo))
    cert, key_file = directory / f"{serial}.pem", directory / f"{serial}.key"
    cert.write_text(chain)
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert, key_file


# ------------------------------------------------------------------------ Basic auth


def test_basic_auth_compares_bytes_with_the_key_decoded_like_the_station_does() -> None:
    decoded = bytes.fromhex(HEX_KEY)
    assert check_basic_auth(basic_auth_header("CP1", decoded), "CP1", HEX_KEY) is None
    # The hex text of a hex key is the shiv3 trap: refused.
    assert check_basic_auth(basic_auth_header("CP1", HEX_KEY.encode()), "CP1", HEX_KEY) == "wrong password"
    assert check_basic_auth(basic_auth_header("CP1", PLAIN_KEY.encode()), "CP1", PLAIN_KEY) is None
    # A binary key with ":" and bytes that are not UTF-8: split at the first ":" only.
    binary = bytes([0x3A, 0xFF, 0x00]) + bytes(range(0x80, 0x91))
    assert check_basic_auth(basic_auth_header("CP1", binary), "CP1", binary.hex()) is None
    # A00.FR.204: the user name is the URL's identity.
    assert "identity" in check_basic_auth(basic_auth_header("CP2", decoded), "CP1", HEX_KEY)
    assert check_basic_auth(None, "CP1", HEX_KEY) == "no Authorization header"
    assert "scheme" in check_basic_auth("Bearer abc", "CP1", HEX_KEY)
    assert "base64" in check_basic_auth("Basic !!!", "CP1", HEX_KEY)
    assert "':'" in check_basic_auth("Basic " + base64.b64encode(b"CP1").decode(), "CP1", HEX_KEY)
    # Non-ASCII header bytes arrive from websockets as surrogate escapes: no crash, a reason.
    assert check_basic_auth("Basic \udcff\udcfe", "CP1", HEX_KEY) is not None
    assert decode_basic(basic_auth_header("CP1", b"a:b" + b"x" * 14)) == (b"CP1", b"a:b" + b"x" * 14)


@pytest.mark.parametrize("key, password", [(HEX_KEY, bytes.fromhex(HEX_KEY)), (PLAIN_KEY, PLAIN_KEY.encode())])
async def test_profile_1_accepts_the_right_bytes_and_answers_401_otherwise(key: str, password: bytes) -> None:
    async with Csms.for_profile(1, authorization_key=key) as csms:
        assert csms.url.startswith("ws://") and csms.security_profile == 1
        await open_and_close(f"{csms.url}/CP1", additional_headers=basic("CP1", password))
        facts = csms.last_handshake
        assert facts is not None and (facts.auth_user, facts.tls_version, facts.refused, facts.profile) == (
            "CP1", None, None, 1)
        assert key not in repr(facts)
        for headers in (basic("CP1", password + b"x"), basic("CP2", password), {}):
            with pytest.raises(InvalidStatus) as refused:
                await open_and_close(f"{csms.url}/CP1", additional_headers=headers)
            assert refused.value.response.status_code == 401
            assert csms.last_handshake.refused.startswith("401")
        assert csms.connection_count == 1 and len(csms.handshakes) == 4


def test_for_profile_refuses_incomplete_settings(pki: CsmsPki) -> None:
    with pytest.raises(ValueError, match="AuthorizationKey"):
        Csms.for_profile(2, pki=pki)
    with pytest.raises(ValueError, match="PKI"):
        Csms.for_profile(3)
    with pytest.raises(ValueError, match="0, 1, 2 or 3"):
        Csms.for_profile(4)


# ------------------------------------------------------------------------ the PKI


def test_pki_files_names_and_modes(pki: CsmsPki) -> None:
    assert stat.S_IMODE(pki.directory.stat().st_mode) == 0o700
    keys = sorted(pki.directory.glob("*.key.pem"))
    assert len(keys) == 5 and all(stat.S_IMODE(k.stat().st_mode) == 0o600 for k in keys)
    root = x509.load_pem_x509_certificate(pki.csms_root.read_bytes())
    assert root.extensions.get_extension_for_oid(ExtensionOID.BASIC_CONSTRAINTS).value.ca
    key_types = set()
    for cert_file, _key in pki.server_pairs:
        cert = x509.load_pem_x509_certificate(cert_file.read_bytes())
        cert.verify_directly_issued_by(root)
        # A00.FR.509-511: O = organisation, CN = the FQDN, no subjectAltName.
        assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "localhost"
        assert cert.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)
        with pytest.raises(x509.ExtensionNotFound):
            cert.extensions.get_extension_for_oid(ExtensionOID.SUBJECT_ALTERNATIVE_NAME)
        eku = cert.extensions.get_extension_for_oid(ExtensionOID.EXTENDED_KEY_USAGE).value
        assert list(eku) == [ExtendedKeyUsageOID.SERVER_AUTH] and name_matches(cert, "localhost")
        key_types.add(type(cert.public_key()).__name__)
        assert isinstance(cert.signature_hash_algorithm, hashes.SHA256)
    assert len(key_types) == 2  # one EC and one RSA server certificate
    signing, _ = pki.firmware_signing
    signer = x509.load_pem_x509_certificate(signing.read_bytes())
    signer.verify_directly_issued_by(x509.load_pem_x509_certificate(pki.manufacturer_root.read_bytes()))
    assert list(signer.extensions.get_extension_for_oid(ExtensionOID.EXTENDED_KEY_USAGE).value) == [
        ExtendedKeyUsageOID.CODE_SIGNING]
    # The station's certificate store takes both roots (self-signed CA certificates).
    store = CertificateStore(pki.directory.parent / "station")
    now = datetime.now(UTC)
    assert store.install_root(CENTRAL_SYSTEM_ROOT, pki.csms_root_pem(), now, 20).status == "Accepted"
    assert store.install_root("ManufacturerRootCertificate", pki.manufacturer_root_pem(), now, 20).status == "Accepted"


def test_pki_is_idempotent_and_repairs_or_renews_what_is_not_usable(tmp_path: Path) -> None:
    directory = tmp_path / "p"
    first = CsmsPki(directory).ensure()
    files = {p.name: p.read_bytes() for p in directory.iterdir()}
    CsmsPki(directory).ensure()
    assert {p.name: p.read_bytes() for p in directory.iterdir()} == files
    # Another host name: new server certificates under the same root.
    other = CsmsPki(directory, host="csms.example").ensure()
    assert other.csms_root.read_bytes() == files["csms-root-ca.pem"]
    server = x509.load_pem_x509_certificate(other.server_pairs[0][0].read_bytes())
    assert name_matches(server, "csms.example") and not name_matches(server, "localhost")
    # A damaged key is replaced; close to expiry, a certificate is renewed.
    first.server_pairs[1][1].write_text("garbage")
    CsmsPki(directory, host="csms.example").ensure()
    serialization.load_pem_private_key(first.server_pairs[1][1].read_bytes(), None)
    before = directory.joinpath("firmware-signing.pem").read_bytes()
    CsmsPki(directory, host="csms.example").ensure(now=datetime.now(UTC) + timedelta(days=400))
    assert directory.joinpath("firmware-signing.pem").read_bytes() != before
    assert directory.joinpath("csms-root-ca.pem").read_bytes() == files["csms-root-ca.pem"]


def test_sign_csr_issues_what_the_station_accepts_in_certificate_signed(pki: CsmsPki, tmp_path: Path) -> None:
    store = CertificateStore(tmp_path)
    now = datetime.now(UTC)
    store.install_root(CENTRAL_SYSTEM_ROOT, pki.csms_root_pem(), now, 20)
    request = station_csr.request_certificate(store, "SN-42", "MyCPO")
    chain = pki.sign_csr(request.replace("\n", "\r\n"))  # OCTT-style CRLF is fine
    leaf = x509.load_pem_x509_certificate(chain.encode())
    assert leaf.subject.rfc4514_string() == "CN=SN-42,O=MyCPO"
    assert list(leaf.extensions.get_extension_for_oid(ExtensionOID.EXTENDED_KEY_USAGE).value) == [
        ExtendedKeyUsageOID.CLIENT_AUTH]
    outcome = station_csr.certificate_signed(store, chain, now)
    assert outcome.status == "Accepted", outcome.reason


def test_sign_csr_refuses_bad_requests(pki: CsmsPki) -> None:
    with pytest.raises(CsrError, match="does not parse"):
        pki.sign_csr("-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n")
    weak = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    weak_csr = (x509.CertificateSigningRequestBuilder()
                .subject_name(x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "CPO"),
                                         x509.NameAttribute(NameOID.COMMON_NAME, "SN")]))
                .sign(weak, hashes.SHA256()).public_bytes(serialization.Encoding.PEM))
    with pytest.raises(CsrError, match="too weak"):
        pki.sign_csr(weak_csr)
    key = station_csr.generate_key()
    no_o = (x509.CertificateSigningRequestBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "SN")]))
            .sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM))
    with pytest.raises(CsrError, match="CpoName"):
        pki.sign_csr(no_o)


# ------------------------------------------------------------------------ TLS


async def test_profile_2_serves_wss_with_basic_to_the_stations_tls_context(pki: CsmsPki) -> None:
    station_tls = client_context(2, pki.csms_root_pem())  # the twin's own client context
    async with Csms.for_profile(2, pki=pki, authorization_key=HEX_KEY) as csms:
        assert csms.url.startswith("wss://localhost:") and csms.security_profile == 2
        await open_and_close(f"{csms.url}/CP1", ssl=station_tls,
                             additional_headers=basic("CP1", bytes.fromhex(HEX_KEY)))
        facts = csms.last_handshake
        assert facts.profile == 2 and facts.auth_user == "CP1" and facts.client_subject is None
        assert facts.tls_version in ("TLSv1.2", "TLSv1.3") and facts.cipher
        with pytest.raises(InvalidStatus) as refused:
            await open_and_close(f"{csms.url}/CP1", ssl=station_tls)
        assert refused.value.response.status_code == 401
        # Another root's station does not trust this CSMS.
        other = CsmsPki(pki.directory.parent / "other-pki").ensure()
        with pytest.raises(ssl.SSLCertVerificationError):
            await open_and_close(f"{csms.url}/CP1", ssl=client_context(2, other.csms_root_pem()),
                                 additional_headers=basic("CP1", bytes.fromhex(HEX_KEY)))


@pytest.mark.parametrize("cipher", MANDATED_TLS12_CIPHERS)
async def test_all_four_mandated_tls12_suites_negotiate(pki: CsmsPki, cipher: str) -> None:
    client = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    client.load_verify_locations(cafile=str(pki.csms_root))
    client.minimum_version = client.maximum_version = ssl.TLSVersion.TLSv1_2
    client.set_ciphers(cipher)
    async with Csms.for_profile(2, pki=pki, authorization_key=PLAIN_KEY) as csms:
        await open_and_close(f"{csms.url}/CP1", ssl=client, additional_headers=basic("CP1", PLAIN_KEY.encode()))
        assert (csms.last_handshake.tls_version, csms.last_handshake.cipher) == ("TLSv1.2", cipher)


@pytest.mark.filterwarnings("ignore:ssl.TLSVersion.TLSv1_1 is deprecated:DeprecationWarning")
async def test_tls_below_1_2_is_refused(pki: CsmsPki) -> None:
    client = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    client.load_verify_locations(cafile=str(pki.csms_root))
    client.minimum_version = ssl.TLSVersion.MINIMUM_SUPPORTED
    client.maximum_version = ssl.TLSVersion.TLSv1_1
    client.set_ciphers("ALL:@SECLEVEL=0")
    async with Csms.for_profile(2, pki=pki, authorization_key=PLAIN_KEY) as csms:
        with pytest.raises((ssl.SSLError, ConnectionError)):
            await open_and_close(f"{csms.url}/CP1", ssl=client, additional_headers=basic("CP1", PLAIN_KEY.encode()))
        assert csms.connection_count == 0


async def test_profile_3_requires_a_client_certificate_from_the_csms_ca(pki: CsmsPki, tmp_path: Path) -> None:
    cert, key = station_cert(pki, tmp_path, "SN-0001", "TestCPO")
    async with Csms.for_profile(3, pki=pki) as csms:
        assert csms.security_profile == 3
        await open_and_close(f"{csms.url}/CP1", ssl=client_context(3, pki.csms_root_pem(), str(cert), str(key)))
        facts = csms.last_handshake
        assert facts.profile == 3 and facts.client_subject == "CN=SN-0001,O=TestCPO" and facts.auth_user is None
        assert x509.load_der_x509_certificate(facts.client_certificate).subject.rfc4514_string() == facts.client_subject
        # No certificate, or one from another CA: the TLS handshake fails, no websocket opens.
        no_cert = client_context(2, pki.csms_root_pem())
        other = CsmsPki(tmp_path / "rogue").ensure()
        rogue_cert, rogue_key = station_cert(other, tmp_path, "SN-0002")
        rogue = client_context(3, pki.csms_root_pem(), str(rogue_cert), str(rogue_key))
        for ctx in (no_cert, rogue):
            with pytest.raises((ssl.SSLError, InvalidMessage, ConnectionError)):
                await open_and_close(f"{csms.url}/CP1", ssl=ctx)
        assert csms.connection_count == 1


def test_server_context_needs_a_certificate() -> None:
    with pytest.raises(ValueError):
        server_context([])


# ------------------------------------------------------------------------ the messages


class Raw:
    def __init__(self, ws: Any) -> None:
        self.ws = ws
        self.n = 0

    async def call(self, action: str, payload: dict[str, Any]) -> list[Any]:
        self.n += 1
        await self.ws.send(json.dumps([2, f"m{self.n}", action, payload]))
        return await self.recv()

    async def recv(self) -> list[Any]:
        return json.loads(await asyncio.wait_for(self.ws.recv(), 5))


NOW = "2026-01-01T00:00:00Z"


async def test_notifications_are_answered_and_checked_against_schema_and_whitepaper(csms: Csms) -> None:
    good = [
        ("SecurityEventNotification", {"type": "StartupOfTheDevice", "timestamp": NOW, "techInfo": "boot"}),
        ("LogStatusNotification", {"status": "Uploading", "requestId": 7}),
        ("LogStatusNotification", {"status": "UploadFailure", "requestId": 7}),
        ("LogStatusNotification", {"status": "Idle"}),
        ("SignedFirmwareStatusNotification", {"status": "SignatureVerified", "requestId": 3}),
        ("SignedFirmwareStatusNotification", {"status": "Idle"}),
    ]
    bad = [
        ("LogStatusNotification", {"status": "UploadFailed", "requestId": 7}, "schema"),  # WP3 text, not the enum
        ("LogStatusNotification", {"status": "Uploaded"}, "only Idle may omit it"),
        ("SignedFirmwareStatusNotification", {"status": "Downloading"}, "only Idle may omit it"),
        ("SignedFirmwareStatusNotification", {"status": "InvalidCertificate", "requestId": 1}, "schema"),
        ("SecurityEventNotification", {"type": "FailedToAuthenticateAtCsms", "timestamp": NOW},
         "FailedToAuthenticationAtCentralSystem"),
        ("SecurityEventNotification", {"type": "x" * 51, "timestamp": NOW}, "schema"),
    ]
    async with connect(f"{csms.url}/CP1", subprotocols=["ocpp1.6"]) as ws:
        cp = Raw(ws)
        for action, payload in good:
            reply = await cp.call(action, payload)
            assert reply[0] == 3 and reply[2] == {}
            validate(action, reply[2], response=True)
        assert csms.schema_errors == []
        for action, payload, why in bad:
            await cp.call(action, payload)
            assert why in csms.schema_errors[-1], csms.schema_errors
        assert len(csms.schema_errors) == len(bad)


async def test_sign_certificate_is_accepted_and_followed_by_certificate_signed(pki: CsmsPki, tmp_path: Path) -> None:
    store = CertificateStore(tmp_path)
    store.install_root(CENTRAL_SYSTEM_ROOT, pki.csms_root_pem(), datetime.now(UTC), 20)
    request = station_csr.request_certificate(store, "SN-7", "MyCPO")
    async with Csms(pki=pki) as csms, connect(f"{csms.url}/CP1", subprotocols=["ocpp1.6"]) as ws:
        cp = Raw(ws)
        assert (await cp.call("SignCertificate", {"csr": request}))[2] == {"status": "Accepted"}
        signed = await cp.recv()
        assert signed[0] == 2 and signed[2] == "CertificateSigned"
        validate("CertificateSigned", signed[3], response=False)
        # The station's own check of CertificateSigned.req (A02.FR.06) accepts it.
        outcome = station_csr.certificate_signed(store, signed[3]["certificateChain"], datetime.now(UTC))
        assert outcome.status == "Accepted", outcome.reason
        await ws.send(json.dumps([3, signed[1], {"status": "Accepted"}]))
        await csms.wait_until(lambda: csms.certificate_signed_results or None, 5, "the CertificateSigned result")
        assert csms.certificate_signed_results == [(signed[3]["certificateChain"], {"status": "Accepted"})]
        # A CSR the CA cannot sign: Rejected (A02.FR.12), nothing follows.
        assert (await cp.call("SignCertificate", {"csr": "not a csr"}))[2] == {"status": "Rejected"}
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(ws.recv(), 0.3)
    assert csms.schema_errors == ["SignCertificate breaks the security whitepaper: csr is not a PEM PKCS#10 "
                                  "request: " + csms.schema_errors[0].split("request: ", 1)[1]]


async def test_sign_certificate_without_a_ca_is_accepted_and_nothing_follows(csms: Csms, tmp_path: Path) -> None:
    request = station_csr.request_certificate(CertificateStore(tmp_path), "SN-8", "MyCPO")
    async with connect(f"{csms.url}/CP1", subprotocols=["ocpp1.6"]) as ws:
        assert (await Raw(ws).call("SignCertificate", {"csr": request}))[2] == {"status": "Accepted"}
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(ws.recv(), 0.3)
    assert csms.certificate_signed_results == [] and csms.schema_errors == []


async def test_csms_calls_of_the_security_extension_are_valid(csms: Csms, pki: CsmsPki,
                                                              caplog: pytest.LogCaptureFixture) -> None:
    hash_data = {"hashAlgorithm": "SHA256", "issuerNameHash": "ab" * 32, "issuerKeyHash": "cd" * 32,
                 "serialNumber": "fff"}
    requests = [
        (lambda: csms.install_certificate("CentralSystemRootCertificate", pki.csms_root_pem()), "InstallCertificate",
         {"status": "Accepted"}),
        (lambda: csms.get_installed_certificate_ids("ManufacturerRootCertificate"), "GetInstalledCertificateIds",
         {"status": "Accepted", "certificateHashData": [hash_data]}),
        (lambda: csms.delete_certificate(hash_data), "DeleteCertificate", {"status": "NotFound"}),
        (lambda: csms.extended_trigger_message("SignChargePointCertificate"), "ExtendedTriggerMessage",
         {"status": "Accepted"}),
        (lambda: csms.extended_trigger_message("StatusNotification", 1), "ExtendedTriggerMessage",
         {"status": "Accepted"}),
        (lambda: csms.get_log("ftp://u:p@127.0.0.1/logs", oldest_timestamp=NOW, retries=1, retry_interval=5),
         "GetLog", {"status": "Accepted", "filename": "security.log"}),
        (lambda: csms.signed_update_firmware("http://127.0.0.1/fw.bin", NOW, pki.firmware_signing[0].read_text(),
                                             "c2ln", install_date_time=NOW, retries=2),
         "SignedUpdateFirmware", {"status": "Accepted"}),
        (lambda: csms.certificate_signed(pki.csms_root_pem()), "CertificateSigned", {"status": "Rejected"}),
        (lambda: csms.change_configuration("AuthorizationKey", HEX_KEY), "ChangeConfiguration",
         {"status": "Accepted"}),
    ]
    caplog.set_level(logging.INFO, logger="twin.csms")
    async with connect(f"{csms.url}/CP1", subprotocols=["ocpp1.6"]) as ws:
        await csms.wait_connected()
        for send, action, conf in requests:
            task = asyncio.create_task(send())
            request = json.loads(await asyncio.wait_for(ws.recv(), 5))
            assert request[2] == action
            validate(action, request[3], response=False)
            await ws.send(json.dumps([3, request[1], conf]))
            assert await task == conf
        ids = [json.loads(m.raw)[3]["requestId"] for m in csms.messages if m.action in ("GetLog", "SignedUpdateFirmware")
               and m.kind == "call"]
        assert len(set(ids)) == 2
        # A reply the whitepaper forbids: Accepted without hash data.
        task = asyncio.create_task(csms.get_installed_certificate_ids("CentralSystemRootCertificate"))
        request = json.loads(await asyncio.wait_for(ws.recv(), 5))
        await ws.send(json.dumps([3, request[1], {"status": "Accepted"}]))
        await task
    assert csms.schema_errors == ["GetInstalledCertificateIds.conf breaks the security whitepaper: status Accepted "
                                  "without certificateHashData (M03.FR.02)"]
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert "ChangeConfiguration" in logged and HEX_KEY not in logged and "u:p@" not in logged


# ------------------------------------------------------------------------ the command line


async def _start(*args: str, cwd: Path) -> tuple[asyncio.subprocess.Process, list[str]]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "twin", "csms", "--port", "0", *args,
                                                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
                                                env=env, cwd=cwd)
    lines: list[str] = []
    assert proc.stdout is not None
    while not lines or "ManufacturerRootCertificate" not in lines[-1]:  # the last line printed with a PKI
        line = (await asyncio.wait_for(proc.stdout.readline(), 20)).decode()
        assert line, f"twin csms exited early: {''.join(lines)}"
        lines.append(line)
    return proc, lines


async def _stop(proc: asyncio.subprocess.Process) -> None:
    if proc.returncode is None:
        proc.terminate()
        try:
            await asyncio.wait_for(proc.wait(), 10)
        except TimeoutError:
            proc.kill()
            await proc.wait()


async def test_twin_csms_security_profile_2_prints_what_a_station_needs(tmp_path: Path) -> None:
    proc, lines = await _start("--security-profile", "2", "--pki", "pki", cwd=tmp_path)
    try:
        text = "".join(lines)
        url = text.split("point a station at ")[1].split("/<")[0]
        assert url.startswith("wss://localhost:")
        key = text.split("user = the charge point id): ")[1].split()[0]
        assert len(key) == 40 and "generated" in text
        root = Path(text.split("CentralSystemRootCertificate: ")[1].split()[0])
        assert root == (tmp_path / "pki" / "csms-root-ca.pem").resolve()
        await open_and_close(f"{url}/CP1", ssl=client_context(2, root.read_text()),
                             additional_headers=basic("CP1", bytes.fromhex(key)))
    finally:
        await _stop(proc)
    assert proc.returncode == 0


async def test_twin_csms_security_profile_3_and_sign_csr(tmp_path: Path) -> None:
    proc, lines = await _start("--security-profile", "3", "--pki", "pki", cwd=tmp_path)
    try:
        url = "".join(lines).split("point a station at ")[1].split("/<")[0]
        key = station_csr.generate_key()
        (tmp_path / "cp.csr").write_text(station_csr.build_csr(key, "SN-9", "MyCPO"))
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        signer = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "twin", "csms", "--pki", "pki", "--sign-csr", "cp.csr", cwd=tmp_path, env=env,
            stdout=asyncio.subprocess.PIPE)
        chain, _ = await asyncio.wait_for(signer.communicate(), 20)
        assert signer.returncode == 0
        (tmp_path / "cp.pem").write_bytes(chain)
        (tmp_path / "cp.key").write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                                            serialization.PrivateFormat.PKCS8,
                                                            serialization.NoEncryption()))
        root = (tmp_path / "pki" / "csms-root-ca.pem").read_text()
        await open_and_close(f"{url}/CP1", ssl=client_context(3, root, str(tmp_path / "cp.pem"),
                                                              str(tmp_path / "cp.key")))
    finally:
        await _stop(proc)
    assert proc.returncode == 0
