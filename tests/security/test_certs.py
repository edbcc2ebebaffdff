"""The certificate store: InstallCertificate, GetInstalledCertificateIds, DeleteCertificate,
hash data against independent oracles, server chain validation, the charge point pairs,
file modes."""

from __future__ import annotations

import hashlib
import logging
import os
import stat
import subprocess
from datetime import timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from tests.security.private_ca import (CLIENT_AUTH, NOW, SERVER_AUTH, Ca, ec_key, key_pem, make_root, name, pem, rsa_key,
                                 validate)
from twin.security import pki
from twin.security.certs import CertificateStore, write_atomic
from twin.security.pki import CENTRAL_SYSTEM_ROOT as CS
from twin.security.pki import MANUFACTURER_ROOT as MF

# EVerest's CSMS test root (EVerest/EVerest tests/ocpp_tests/test_sets/everest-aux/certs/ca/csms/
# CSMS_ROOT_CA.pem, a version 1 self-signed RSA-2048 certificate valid until 2052) and the
# SHA256 hash data its OCPP 1.6 conformance test (test_chargepoint_install_certificate) expects.
EVEREST_CSMS_ROOT = """-----BEGIN CERTIFICATE-----
MIIC7zCCAdcCFFnSdVg5iSwTLqqaSa1scWOM6AErMA0GCSqGSIb3DQEBCwUAMDMx
CzAJBgNVBAYTAkRFMQ8wDQYDVQQKDAZQaW9uaXgxEzARBgNVBAMMCkNTTVNSb290
Q0EwIBcNMjQwOTIwMTMyNTUzWhgPMjA1MjAzMDExMzI1NTNaMDMxCzAJBgNVBAYT
AkRFMQ8wDQYDVQQKDAZQaW9uaXgxEzARBgNVBAMMCkNTTVNSb290Q0EwggEiMA0G
CSqGSIb3DQEBAQUAA4IBDwAwggEKAoIBAQDCAs2pQSpksFxtXcvt/Fnu+nQ/Vxfk
hdrPB1plrCOGdy+2HtbZ6hwHeKfdGmcCRt1eAlJPUrgLWiT3LIVMjrJ9qTtZOpfh
Ct0YOSD97ZP7vTVLE7bW/lSsRmuqMsvymxttAk3TIdGQpBQ0BZZENhDYCSbbCAcW
q948dtXKyNzX0BZdCSDkd1b0AbnY7LE0x0atQZFm9jHr9irbAgK6QZdYp9HMERew
Wxgta7jtDCusHDCit5Yt9ahtBfB5pS/pmk5gnRAlYpOEGhlbCdD5dTKQOLKbHmW9
4c6p0G7BTOl1EtN2CTW06KZxxZaipVQzqz2WGwGjYmcdnhVQMDU0hy+pAgMBAAEw
DQYJKoZIhvcNAQELBQADggEBAI085Iyhy9dLD4Dz5HEyY1sCrWZRcbwScCMOyjkI
yMQbWl3HNrwNvd57L18E/Co61qz8m+ZsvFh7VZMnw/tVxOAyzEyTK+iwsj2XLcs0
P93LeqNXemmO3OcyOjrjGToOCGTqIJVSrPzPsrTxSLPQyUt0llvfPGF2p9fid9eK
wBc2mE34lfdMl1dfWCDiMk8gngOo5cPOvnGob9Mc2m4U517iGyYbQAe/Ew6r6Mrg
GCh1uUaBIkW9Diiq+1Dox5Hp4jWPoSJ4laoTXk27zRxDmAaVCqCM/CtuZdNws6qA
Pa0mUpan/kSQO+RLbScnbFOE4gfBQJaCgxyeuFMJqRqoVhg=
-----END CERTIFICATE-----
"""
EVEREST_HASH_DATA = {
    "hashAlgorithm": "SHA256",
    "issuerNameHash": "d3768132ad54b8162680d1ba88966d189e5719d226524f6cd893c5f1c506f068",
    "issuerKeyHash": "7569e411948ceda3d815f04caab0d8548035c624116e1be688344ef095aea53b",
    "serialNumber": "59d2755839892c132eaa9a49ad6c71638ce8012b",
}


@pytest.fixture
def store(tmp_path: Path) -> CertificateStore:
    return CertificateStore(tmp_path)


def openssl_cert_id(tmp_path: Path, cert: x509.Certificate, issuer: x509.Certificate, algorithm: str) -> dict:
    """The OCSP CertID that the openssl CLI computes: an oracle independent of `cryptography`."""
    cert_file, issuer_file, req = tmp_path / "c.pem", tmp_path / "i.pem", tmp_path / "req.der"
    cert_file.write_text(pem(cert))
    issuer_file.write_text(pem(issuer))
    subprocess.run(["openssl", "ocsp", "-issuer", str(issuer_file), f"-{algorithm.lower()}", "-cert", str(cert_file),
                    "-no_nonce", "-reqout", str(req)], check=True, capture_output=True)
    text = subprocess.run(["openssl", "ocsp", "-reqin", str(req), "-req_text"], check=True, capture_output=True,
                          text=True).stdout.replace("\\\n", "")
    fields = {}
    for line in text.splitlines():
        label, _, value = line.strip().partition(": ")
        fields[label] = value.strip()
    return {"hashAlgorithm": algorithm, "issuerNameHash": fields["Issuer Name Hash"].lower(),
            "issuerKeyHash": fields["Issuer Key Hash"].lower(),
            "serialNumber": fields["Serial Number"].lower().lstrip("0") or "0"}


# -- hash data ---------------------------------------------------------------------------------


def test_everest_known_answer_vector_through_install_and_list(store: CertificateStore) -> None:
    assert store.install_root(CS, EVEREST_CSMS_ROOT, NOW, 20).status == "Accepted"
    assert store.installed_ids(CS) == [EVEREST_HASH_DATA]


@pytest.mark.parametrize("algorithm", ["SHA256", "SHA384", "SHA512"])
@pytest.mark.parametrize("key_kind", ["ec", "rsa"])
def test_hash_data_matches_openssl_for_roots_and_issued_certificates(tmp_path: Path, algorithm: str,
                                                                     key_kind: str) -> None:
    root = make_root("Hash Root", ec_key() if key_kind == "ec" else rsa_key())
    _key, leaf = root.leaf("CP-HASH", CLIENT_AUTH)
    assert pki.hash_data(root.cert, root.cert, algorithm) == openssl_cert_id(tmp_path, root.cert, root.cert, algorithm)
    assert pki.hash_data(leaf, root.cert, algorithm) == openssl_cert_id(tmp_path, leaf, root.cert, algorithm)


def test_issuer_key_hash_is_over_the_bit_string_not_the_spki() -> None:
    root = make_root("Key Hash Root")
    public = root.cert.public_key()
    point = public.public_bytes(serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)
    spki = public.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    data = pki.hash_data(root.cert, root.cert)
    assert data["issuerKeyHash"] == hashlib.sha256(point).hexdigest()
    assert data["issuerKeyHash"] != hashlib.sha256(spki).hexdigest()
    # and the name hash is over the issuer Name's DER (not OpenSSL's -issuer_hash)
    assert data["issuerNameHash"] == hashlib.sha256(root.cert.issuer.public_bytes()).hexdigest()
    rsa_root = make_root("RSA Key Hash Root", rsa_key())
    pkcs1 = rsa_root.cert.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.PKCS1)
    assert pki.hash_data(rsa_root.cert, rsa_root.cert)["issuerKeyHash"] == hashlib.sha256(pkcs1).hexdigest()


@pytest.mark.parametrize(("serial", "text"), [(4095, "fff"), (1, "1"), (0x00FF00, "ff00"),
                                              (0x8000000000000000, "8000000000000000")])
def test_serial_number_is_hex_without_leading_zeros(serial: int, text: str) -> None:
    root = make_root("Serial Root", serial=serial)
    assert pki.hash_data(root.cert, root.cert)["serialNumber"] == text


# -- InstallCertificate ----------------------------------------------------------------------


def test_install_accepts_a_root_and_raises_reconfiguration(store: CertificateStore) -> None:
    root = make_root()
    outcome = store.install_root(MF, root.pem, NOW, 20)
    assert (outcome.status, outcome.event) == ("Accepted", "ReconfigurationOfSecurityParameters")
    assert store.roots(MF) == [root.cert]
    assert store.roots(CS) == []


def test_install_accepts_crlf_pem(store: CertificateStore) -> None:
    root = make_root()
    assert store.install_root(CS, root.pem.replace("\n", "\r\n"), NOW, 20).status == "Accepted"
    assert store.roots(CS) == [root.cert]


def test_install_rejects_what_cannot_be_listed_or_trusted(store: CertificateStore) -> None:
    root = make_root()
    sub = root.sub_ca("Sub CA")
    _key, leaf = root.leaf("csms.example", SERVER_AUTH)
    not_ca = make_root("Not a CA", ca=False)
    weak = make_root("Weak", rsa_key(1024))
    cases = {
        "leaf": pem(leaf),
        "intermediate CA (issuer key not in the store)": sub.pem,
        "self-signed, not a CA": not_ca.pem,
        "expired": make_root("Old", start=timedelta(days=-10), days=5).pem,
        "not yet valid": make_root("Future", start=timedelta(days=1)).pem,
        "1024-bit RSA": weak.pem,
        "two certificates": root.pem + make_root("Other").pem,
        "a private key along": root.pem + key_pem(root.key).decode(),
        "garbage": "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
        "not PEM": "hello",
        "too long": root.pem + " " * 5500,
    }
    for what, text in cases.items():
        outcome = store.install_root(CS, text, NOW, 20)
        assert outcome.status == "Rejected", what
        assert outcome.reason, what
    assert store.roots(CS) == []


def test_install_counts_both_root_types_against_certificate_store_max_length(store: CertificateStore) -> None:
    first, second, third = make_root("A"), make_root("B"), make_root("C")
    assert store.install_root(CS, first.pem, NOW, 2).status == "Accepted"
    assert store.install_root(MF, second.pem, NOW, 2).status == "Accepted"
    assert store.install_root(CS, third.pem, NOW, 2).status == "Rejected"
    # installing one already there is not a new entry
    assert store.install_root(CS, first.pem, NOW, 2).status == "Accepted"
    assert store.root_count() == 2


def test_install_fails_when_the_certificate_cannot_be_stored(store: CertificateStore) -> None:
    store.root.mkdir(parents=True)
    (store.root / CS).write_text("a file where the directory should be")
    outcome = store.install_root(CS, make_root().pem, NOW, 20)
    assert outcome.status == "Failed"


def test_install_refuses_an_unknown_certificate_type(store: CertificateStore) -> None:
    with pytest.raises(ValueError, match="certificateType"):
        store.install_root("ChargePointCertificate", make_root().pem, NOW, 20)


# -- GetInstalledCertificateIds --------------------------------------------------------------


def test_installed_ids_response_validates_against_the_schema(store: CertificateStore) -> None:
    empty = store.installed_ids_response(CS)
    assert empty == {"status": "NotFound"}  # no certificateHashData: the schema has minItems 1
    validate("GetInstalledCertificateIds", empty, response=True)
    for root in (make_root("A"), make_root("B", rsa_key())):
        store.install_root(CS, root.pem, NOW, 20)
    full = store.installed_ids_response(CS)
    assert full["status"] == "Accepted" and len(full["certificateHashData"]) == 2
    validate("GetInstalledCertificateIds", full, response=True)
    assert store.installed_ids_response(MF) == {"status": "NotFound"}


# -- DeleteCertificate -----------------------------------------------------------------------


def test_delete_accepted_then_not_found(store: CertificateStore) -> None:
    root = make_root()
    store.install_root(MF, root.pem, NOW, 20)
    [hash_data] = store.installed_ids(MF)
    validate("DeleteCertificate", {"certificateHashData": hash_data}, response=False)
    outcome = store.delete(hash_data)
    assert (outcome.status, outcome.event) == ("Accepted", "ReconfigurationOfSecurityParameters")
    assert store.delete(hash_data).status == "NotFound"
    assert store.roots(MF) == []


def test_delete_uses_the_requests_algorithm_and_tolerates_case_and_leading_zeros(store: CertificateStore) -> None:
    root = make_root(serial=0xABC)
    store.install_root(CS, root.pem, NOW, 20)
    data = pki.hash_data(root.cert, root.cert, "SHA512")
    request = {"hashAlgorithm": "SHA512", "issuerNameHash": data["issuerNameHash"].upper(),
               "issuerKeyHash": data["issuerKeyHash"].upper(), "serialNumber": "0ABC"}
    assert store.delete(request).status == "Accepted"


def test_delete_refuses_the_root_that_validates_the_connection(store: CertificateStore) -> None:
    in_use, spare = make_root("In use"), make_root("Spare")
    for root in (in_use, spare):
        store.install_root(CS, root.pem, NOW, 20)
    _key, server = in_use.leaf("localhost", SERVER_AUTH)
    live = store.roots_in_use([server.public_bytes(serialization.Encoding.DER)], NOW)
    assert live == {pki.fingerprint(in_use.cert)}
    assert store.delete(pki.hash_data(in_use.cert, in_use.cert), in_use=live).status == "Failed"
    assert in_use.cert in store.roots(CS)
    assert store.delete(pki.hash_data(spare.cert, spare.cert), in_use=live).status == "Accepted"


def test_delete_allows_the_last_root_when_it_is_not_in_use(store: CertificateStore) -> None:
    root = make_root()
    store.install_root(CS, root.pem, NOW, 20)
    assert store.delete(pki.hash_data(root.cert, root.cert), in_use=set()).status == "Accepted"


def test_the_charge_point_certificate_is_never_found_for_deletion(store: CertificateStore) -> None:
    root = make_root()
    store.install_root(CS, root.pem, NOW, 20)
    key, leaf = root.leaf("CP001", CLIENT_AUTH)
    store.import_charge_point_credentials(pem(leaf), key_pem(key))
    assert store.delete(pki.hash_data(leaf, root.cert)).status == "NotFound"
    assert store.charge_point_credentials(NOW) is not None


def test_delete_with_an_unknown_algorithm_is_a_clear_error(store: CertificateStore) -> None:
    with pytest.raises(ValueError, match="hashAlgorithm"):
        store.delete({"hashAlgorithm": "MD5", "issuerNameHash": "", "issuerKeyHash": "", "serialNumber": "1"})


def test_roots_in_use_through_a_sub_ca(store: CertificateStore) -> None:
    root, other = make_root("Root"), make_root("Other")
    for r in (root, other):
        store.install_root(CS, r.pem, NOW, 20)
    sub = root.sub_ca("Sub")
    _key, server = sub.leaf("localhost", SERVER_AUTH)
    der = [c.public_bytes(serialization.Encoding.DER) for c in (server, sub.cert)]
    assert store.roots_in_use(der, NOW) == {pki.fingerprint(root.cert)}
    # Only the leaf (what Python < 3.13 gives): no root is attributable, all count as in use.
    assert store.roots_in_use(der[:1], NOW) == {pki.fingerprint(root.cert), pki.fingerprint(other.cert)}


# -- server chain validation -------------------------------------------------------------------


def test_validate_server_chain(store: CertificateStore) -> None:
    root = make_root()
    store.install_root(CS, root.pem, NOW, 20)
    sub = root.sub_ca("Sub", path_length=0)
    rogue = make_root()  # same subject, other key
    _k, good = root.leaf("localhost", SERVER_AUTH)
    _k, via_sub = sub.leaf("localhost", SERVER_AUTH)
    _k, san_only = root.leaf("Some CSMS", SERVER_AUTH, san=["csms.example"])
    _k, expired = root.leaf("localhost", SERVER_AUTH, start=timedelta(days=-3), days=1)
    _k, wrong_name = root.leaf("csms.example", SERVER_AUTH)
    _k, from_rogue = rogue.leaf("localhost", SERVER_AUTH)
    leaf_key, leaf_as_ca = root.leaf("not a CA", SERVER_AUTH)
    _k, under_leaf = Ca(leaf_key, leaf_as_ca).leaf("localhost", SERVER_AUTH)
    deeper = sub.sub_ca("Too deep")
    _k, too_deep = deeper.leaf("localhost", SERVER_AUTH)
    _k, critical_unknown = root.leaf("localhost", SERVER_AUTH, extra=[(
        x509.UnrecognizedExtension(x509.ObjectIdentifier("1.3.6.1.4.1.55555.1"), b"\x05\x00"), True)])

    def check(chain, host="localhost"):
        return store.validate_server_chain(chain, host, NOW)

    assert check([good]).anchor == root.cert
    assert check([via_sub, sub.cert]).ok
    assert check([via_sub, sub.cert, root.cert]).ok  # the root sent along
    assert check([san_only], "CSMS.example").ok
    assert check([good], "LOCALHOST").ok
    for what, chain, problem in [
        ("expired", [expired], "expired"),
        ("wrong name", [wrong_name], "does not name"),
        ("rogue root", [from_rogue], "not issued by an installed root"),
        ("sub-CA missing", [via_sub], "not issued by an installed root"),
        ("issuer is no CA", [under_leaf, leaf_as_ca], "not a CA"),
        ("path length", [too_deep, deeper.cert, sub.cert], "path length"),
        ("critical unknown extension", [critical_unknown], "unrecognised critical extension"),
    ]:
        result = check(chain)
        assert not result.ok, what
        assert problem in result.problem, (what, result.problem)


def test_a_root_that_has_expired_since_it_was_installed_no_longer_validates(store: CertificateStore) -> None:
    root = make_root(days=1)
    store.install_root(CS, root.pem, NOW, 20)
    _k, server = root.leaf("localhost", SERVER_AUTH)
    assert store.validate_server_chain([server], "localhost", NOW).ok
    later = store.validate_server_chain([server], "localhost", NOW + timedelta(days=2))
    assert not later.ok and "the root is expired" in later.problem


# -- charge point pairs and files ------------------------------------------------------------


def test_charge_point_credentials_newest_valid_wins_and_prune_keeps_a_fallback(store: CertificateStore) -> None:
    root = make_root()
    old_key, old = root.leaf("CP001", CLIENT_AUTH, start=timedelta(days=-40), days=400)
    new_key, new = root.leaf("CP001", CLIENT_AUTH, start=timedelta(days=-1))
    future_key, future = root.leaf("CP001", CLIENT_AUTH, start=timedelta(days=2), days=100)
    for key, cert in ((old_key, old), (new_key, new), (future_key, future)):
        store.import_charge_point_credentials(pem(cert), key_pem(key))
    assert store.charge_point_credentials(NOW).certificate == new
    assert store.fallback_charge_point_credentials(NOW).certificate == old
    assert store.charge_point_credentials(NOW + timedelta(days=3)).certificate == future
    assert store.prune_charge_point_certificates(NOW) == []  # the fallback is young
    removed = store.prune_charge_point_certificates(NOW + timedelta(days=40))
    assert set(removed) == {pki.fingerprint(old), pki.fingerprint(new)}
    assert [c.certificate for c in store.all_charge_point_credentials()] == [future]


def test_import_refuses_a_key_of_another_certificate(store: CertificateStore) -> None:
    root = make_root()
    _key, leaf = root.leaf("CP001", CLIENT_AUTH)
    with pytest.raises(ValueError, match="does not belong"):
        store.import_charge_point_credentials(pem(leaf), key_pem(ec_key()))


def test_file_modes_and_no_temp_files_left(store: CertificateStore, tmp_path: Path) -> None:
    root = make_root()
    store.install_root(CS, root.pem, NOW, 20)
    key, leaf = root.leaf("CP001", CLIENT_AUTH)
    creds = store.import_charge_point_credentials(pem(leaf), key_pem(key))
    store.put_pending_key(ec_key(), {"commonName": "CP001", "organization": "TestCPO"})
    mode = lambda p: stat.S_IMODE(os.stat(p).st_mode)  # noqa: E731
    assert mode(store.root) == 0o700
    assert mode(store.root / "chargepoint") == 0o700
    assert mode(creds.key_file) == 0o600
    assert mode(store.root / "chargepoint" / "pending.key.pem") == 0o600
    every = [p.name for p in store.root.rglob("*")]
    assert not [n for n in every if n.endswith(".tmp")]


def test_a_key_file_is_0600_whatever_the_umask(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        write_atomic(tmp_path / "k.pem", b"secret", 0o600)
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(tmp_path / "k.pem").st_mode) == 0o600


def test_private_keys_never_reach_the_log_or_a_repr(store: CertificateStore, caplog: pytest.LogCaptureFixture,
                                                    tmp_path: Path) -> None:
    caplog.set_level(logging.DEBUG)
    root = make_root()
    key, leaf = root.leaf("CP001", CLIENT_AUTH)
    secret = key_pem(key)
    creds = store.import_charge_point_credentials(pem(leaf), secret)
    store.install_root(CS, root.pem, NOW, 20)
    # a damaged pending key is reported without its content
    (store.root / "chargepoint" / "pending.key.pem").write_bytes(secret[:60] + b"garbage")
    (store.root / "chargepoint" / "pending.json").write_text("{}")
    assert store.pending() is None
    body = b"".join(secret.splitlines()[1:-1]).decode()
    texts = [r.getMessage() for r in caplog.records] + [repr(store), repr(creds)]
    assert not [t for t in texts if body[:40] in t or "PRIVATE KEY" in t]


def test_a_damaged_root_file_is_skipped(store: CertificateStore, caplog: pytest.LogCaptureFixture) -> None:
    root = make_root()
    store.install_root(CS, root.pem, NOW, 20)
    (store.root / CS / "junk.pem").write_text("not a certificate")
    assert store.roots(CS) == [root.cert]
    assert "junk.pem" in caplog.text


def test_name_helper_subjects() -> None:
    assert pki.common_name(make_root("X").cert) == "X"
    assert name("a", "b").rfc4514_string() == "CN=a,O=b"


def test_pending_key_records_when_it_was_requested_and_reads_the_first_layout(store: CertificateStore) -> None:
    import json

    assert store.pending_requested_at() is None
    store.put_pending_key(ec_key(), {"commonName": "CP001", "organization": "TestCPO"}, requested_at=NOW)
    assert store.pending_requested_at() == NOW
    assert store.pending()[1] == {"commonName": "CP001", "organization": "TestCPO"}
    # A pending.json written before the request time was kept: the subject alone.
    (store.root / "chargepoint" / "pending.json").write_text(json.dumps({"commonName": "CP9", "organization": "O"}))
    assert store.pending()[1] == {"commonName": "CP9", "organization": "O"}
    assert store.pending_requested_at() is None


def test_inventory_lists_certificates_and_never_reads_a_key(store: CertificateStore) -> None:
    root = make_root()
    store.install_root(CS, root.pem, NOW, 20)
    key, leaf = root.leaf("CP001", CLIENT_AUTH)
    store.import_charge_point_credentials(pem(leaf), key_pem(key))
    inventory = store.inventory()
    assert inventory.roots == {CS: [root.cert], MF: []}
    assert inventory.charge_point == [leaf] and inventory.pending is False
    # A damaged key file does not matter to the inventory: it lists certificates only.
    next((store.root / "chargepoint").glob("*.key.pem")).write_text("garbage")
    assert store.inventory().charge_point == [leaf]


# ---------------------------------------------------------------- certificates that parse but cannot be used
def _openssl_root(tmp_path, serial_hex: str) -> str:
    """A self-signed EC root made by openssl, which (unlike ``cryptography``) writes any serial."""
    import subprocess

    key, cert = tmp_path / f"{serial_hex[:6]}.key", tmp_path / f"{serial_hex[:6]}.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                    "-keyout", str(key), "-out", str(cert), "-days", "30", "-subj", "/CN=Serial Root",
                    "-set_serial", "0x" + serial_hex, "-addext", "basicConstraints=critical,CA:TRUE"],
                   check=True, capture_output=True)
    return cert.read_text()


def test_a_root_whose_serial_is_longer_than_20_octets_is_rejected_not_listed_out_of_schema(tmp_path):
    """serialNumber is CiString40 in CertificateHashDataType: a 24-octet serial (48 hex digits)
    would make every later GetInstalledCertificateIds.conf schema-invalid."""
    from datetime import datetime, timezone

    from twin.security.certs import CertificateStore

    store = CertificateStore(tmp_path / "data")
    now = datetime.now(timezone.utc)
    outcome = store.install_root("CentralSystemRootCertificate", _openssl_root(tmp_path, "7f" * 24), now, 20)
    assert outcome.status == "Rejected" and "20 octets" in (outcome.reason or "")
    assert store.installed_ids_response("CentralSystemRootCertificate") == {"status": "NotFound"}
    ok = store.install_root("CentralSystemRootCertificate", _openssl_root(tmp_path, "7f" + "ab" * 19), now, 20)
    assert ok.status == "Accepted"
    (entry,) = store.installed_ids_response("CentralSystemRootCertificate")["certificateHashData"]
    assert len(entry["serialNumber"]) == 40
