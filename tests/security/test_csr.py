"""SignCertificate's CSR and CertificateSigned's checks (whitepaper A02, OCTT TC_074/TC_077)."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

from tests.security.private_ca import CLIENT_AUTH, NOW, SERVER_AUTH, key_pem, make_root, name, pem, rsa_key, validate
from twin.security import csr as csr_mod
from twin.security.certs import CertificateStore
from twin.security.pki import CENTRAL_SYSTEM_ROOT as CS

CN, CPO = "XJ-IEVQC33-0001", "Test CPO"


@pytest.fixture
def store(tmp_path: Path) -> CertificateStore:
    return CertificateStore(tmp_path)


def sign_csr(ca, csr_pem: str, *, subject: x509.Name | None = None, eku=CLIENT_AUTH, **kw) -> x509.Certificate:
    """What the CSMS (here the test, playing OCTT's CA) does with the CSR."""
    request = x509.load_pem_x509_csr(csr_pem.encode())
    assert request.is_signature_valid
    return ca.issue(subject or request.subject, request.public_key(), eku, **kw)


def test_csr_subject_key_and_signature(store: CertificateStore) -> None:
    text = csr_mod.request_certificate(store, CN, CPO)
    validate("SignCertificate", {"csr": text}, response=False)
    request = x509.load_pem_x509_csr(text.encode())
    assert request.is_signature_valid
    assert isinstance(request.signature_hash_algorithm, hashes.SHA256)
    assert request.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == CN
    assert request.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)[0].value == CPO
    assert len(request.subject) == 2
    assert len(request.extensions) == 0  # no SAN (A00.FR.511)
    key = request.public_key()
    assert isinstance(key, ec.EllipticCurvePublicKey) and key.curve.name == "secp256r1"
    assert len(text) < 600  # a P-256 CSR is about 400 characters; the limit is 5500
    pending_key, subject = store.pending()
    assert subject == {"commonName": CN, "organization": CPO}
    assert pending_key.public_key().public_numbers() == key.public_numbers()


def test_rsa_csr_and_its_minimum(store: CertificateStore) -> None:
    request = x509.load_pem_x509_csr(csr_mod.request_certificate(store, CN, CPO, "rsa", 3072).encode())
    assert isinstance(request.public_key(), rsa.RSAPublicKey) and request.public_key().key_size == 3072
    with pytest.raises(ValueError, match="at least 2048"):
        csr_mod.generate_key("rsa", 1024)
    with pytest.raises(ValueError, match="'ec' or 'rsa'"):
        csr_mod.generate_key("dsa")


def test_every_request_gets_a_new_key(store: CertificateStore) -> None:
    first = x509.load_pem_x509_csr(csr_mod.request_certificate(store, CN, CPO).encode()).public_key()
    second = x509.load_pem_x509_csr(csr_mod.request_certificate(store, CN, CPO).encode()).public_key()
    assert first.public_numbers() != second.public_numbers()
    assert store.pending()[0].public_key().public_numbers() == second.public_numbers()


@pytest.mark.parametrize(("cn", "o"), [(CN, ""), (CN, "  "), ("", CPO), ("x" * 65, CPO)])
def test_no_csr_without_cpo_name_or_cn(store: CertificateStore, cn: str, o: str) -> None:
    with pytest.raises(ValueError, match="CSR subject"):
        csr_mod.request_certificate(store, cn, o)
    assert store.pending() is None


def test_certificate_signed_accepted_and_used_from_the_next_connection(store: CertificateStore) -> None:
    root = make_root("CPO Root", rsa_key())  # OCTT signs SHA256withRSA, PKCS#1 v1.5
    store.install_root(CS, root.pem, NOW, 20)
    old = root.leaf(CN, CLIENT_AUTH, o=CPO, start=timedelta(days=-10))
    store.import_charge_point_credentials(pem(old[1]), key_pem(old[0]))
    leaf = sign_csr(root, csr_mod.request_certificate(store, CN, CPO))
    chain = pem(leaf).replace("\n", "\r\n")  # OCTT sends CRLF
    validate("CertificateSigned", {"certificateChain": chain}, response=False)
    outcome = csr_mod.certificate_signed(store, chain, NOW, max_chain_size=10000)
    assert (outcome.status, outcome.event) == ("Accepted", "ReconfigurationOfSecurityParameters")
    validate("CertificateSigned", {"status": outcome.status}, response=True)
    assert store.pending() is None
    assert store.charge_point_credentials(NOW).certificate == leaf  # the next connection's
    assert store.fallback_charge_point_credentials(NOW).certificate == old[1]  # kept (A02.FR.10)
    # the same chain again: no pending key any more
    assert csr_mod.certificate_signed(store, chain, NOW).status == "Rejected"


def test_certificate_signed_through_a_sub_ca_and_in_the_future(store: CertificateStore) -> None:
    root = make_root("CPO Root")
    store.install_root(CS, root.pem, NOW, 20)
    sub = root.sub_ca("CPO Sub CA")
    leaf = sign_csr(sub, csr_mod.request_certificate(store, CN, CPO), start=timedelta(hours=2))
    outcome = csr_mod.certificate_signed(store, pem(leaf) + pem(sub.cert), NOW)
    assert outcome.status == "Accepted", outcome.reason
    assert store.charge_point_credentials(NOW) is None  # not valid yet (A02.FR.08)
    assert store.charge_point_credentials(NOW + timedelta(hours=3)).certificate == leaf


def test_certificate_signed_rejections_raise_invalid_charge_point_certificate(store: CertificateStore) -> None:
    root, rogue = make_root("CPO Root"), make_root("Rogue")
    store.install_root(CS, root.pem, NOW, 20)
    csr_text = csr_mod.request_certificate(store, CN, CPO)
    request = x509.load_pem_x509_csr(csr_text.encode())
    good = sign_csr(root, csr_text)
    other_key = root.leaf(CN, CLIENT_AUTH, o=CPO)[1]
    sub = root.sub_ca("Sub")
    cases = {
        "another key": (pem(other_key), "not for the key"),
        "wrong CN": (pem(sign_csr(root, csr_text, subject=name("someone else", CPO))), "CN"),
        "wrong O": (pem(sign_csr(root, csr_text, subject=name(CN, "Other CPO"))), "O "),
        "expired": (pem(sign_csr(root, csr_text, start=timedelta(days=-3), days=1)), "expired"),
        "unknown root": (pem(sign_csr(rogue, csr_text)), "not issued by an installed root"),
        "sub-CA missing": (pem(sign_csr(sub, csr_text)), "not issued by an installed root"),
        "a CA certificate": (pem(root.issue(request.subject, request.public_key(), CLIENT_AUTH, ca=True)), "CA"),
        "server use only": (pem(sign_csr(root, csr_text, eku=SERVER_AUTH)), "clientAuth"),
        "garbage": ("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----", "parse"),
        "empty": ("", "no PEM certificate"),
    }
    for what, (chain, reason) in cases.items():
        outcome = csr_mod.certificate_signed(store, chain, NOW)
        assert (outcome.status, outcome.event) == ("Rejected", "InvalidChargePointCertificate"), what
        assert reason in outcome.reason, (what, outcome.reason)
    assert store.all_charge_point_credentials() == []
    # the pending key survives the rejections: the right certificate is still taken
    assert csr_mod.certificate_signed(store, pem(good), NOW).status == "Accepted"


def test_certificate_signed_max_chain_size(store: CertificateStore) -> None:
    root = make_root("CPO Root")
    store.install_root(CS, root.pem, NOW, 20)
    chain = pem(sign_csr(root, csr_mod.request_certificate(store, CN, CPO)))
    outcome = csr_mod.certificate_signed(store, chain, NOW, max_chain_size=len(chain) - 1)
    assert (outcome.status, outcome.event) == ("Rejected", "InvalidChargePointCertificate")
    assert "CertificateSignedMaxChainSize" in outcome.reason
    assert csr_mod.certificate_signed(store, chain, NOW, max_chain_size=len(chain)).status == "Accepted"


def test_a_certificate_that_cannot_be_stored_is_rejected_without_the_event(store: CertificateStore) -> None:
    root = make_root("CPO Root")
    store.install_root(CS, root.pem, NOW, 20)
    chain = pem(sign_csr(root, csr_mod.request_certificate(store, CN, CPO)))
    fp = x509.load_pem_x509_certificate(chain.encode()).fingerprint(hashes.SHA256()).hex()
    (store.root / "chargepoint" / f"{fp}.key.pem").mkdir()  # the key file cannot be written
    outcome = csr_mod.certificate_signed(store, chain, NOW)
    assert (outcome.status, outcome.event) == ("Rejected", None)
    assert store.pending() is not None


def test_build_csr_is_usable_alone() -> None:
    key = csr_mod.generate_key()
    text = csr_mod.build_csr(key, CN, CPO)
    request = x509.load_pem_x509_csr(text.encode())
    assert request.public_key().public_bytes(serialization.Encoding.DER,
                                             serialization.PublicFormat.SubjectPublicKeyInfo) == \
        key.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
