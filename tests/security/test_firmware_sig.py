"""Signed firmware: the signing certificate against the ManufacturerRootCertificates, and
the signature over the file, for RSA (PKCS#1 v1.5 and PSS) and ECDSA (OCTT TC_080/TC_081)."""

from __future__ import annotations

import base64
import os
import subprocess
from datetime import timedelta
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding

from tests.security.private_ca import CODE_SIGNING, NOW, SERVER_AUTH, ec_key, key_pem, make_root, pem, rsa_key, validate
from twin.security import firmware_sig as fw
from twin.security import pki


@pytest.fixture
def firmware(tmp_path: Path) -> Path:
    path = tmp_path / "fw.bin"
    path.write_bytes(os.urandom(3 * fw.CHUNK + 123))  # several hash chunks
    return path


@pytest.fixture(params=["ec", "rsa"])
def signer(request):
    """(MF root, signing key, signing certificate) for an EC and an RSA manufacturer."""
    make_key = ec_key if request.param == "ec" else rsa_key
    root = make_root(f"MF Root {request.param}", make_key())
    key, cert = root.leaf("Firmware Signing", CODE_SIGNING, key=make_key(), o="XJ Power")
    return root, key, cert


def flip_one_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))


def test_good_signature_verifies_and_a_flipped_byte_does_not(signer, firmware: Path) -> None:
    root, key, cert = signer
    assert fw.check_signing_certificate(pem(cert), [root.cert], NOW).status == "Accepted"
    signature = fw.sign_file(firmware, key_pem(key))
    validate("SignedUpdateFirmware", {"requestId": 1, "firmware": {
        "location": "https://fw.example/fw.bin", "retrieveDateTime": "2026-12-01T10:00:00.000Z",
        "signingCertificate": pem(cert), "signature": signature}}, response=False)
    assert fw.verify_file_signature(firmware, signature, pem(cert)) == fw.Verdict("SignatureVerified")
    flip_one_byte(firmware)
    verdict = fw.verify_file_signature(firmware, signature, pem(cert))
    assert (verdict.status, verdict.event) == ("InvalidSignature", "InvalidFirmwareSignature")


def test_a_signature_from_another_key_is_invalid(signer, firmware: Path) -> None:
    _root, key, cert = signer
    other_key = ec_key() if isinstance(key, ec.EllipticCurvePrivateKey) else rsa_key()
    signature = fw.sign_file(firmware, key_pem(other_key))
    assert fw.verify_file_signature(firmware, signature, pem(cert)).status == "InvalidSignature"


def test_openssl_dgst_signatures_verify(signer, firmware: Path, tmp_path: Path) -> None:
    """What the vendors' tools and OCTT testers make: openssl dgst -sha256 -sign (PKCS#1 v1.5 / ECDSA)."""
    _root, key, cert = signer
    key_file = tmp_path / "sign.key"
    key_file.write_bytes(key_pem(key))
    raw = subprocess.run(["openssl", "dgst", "-sha256", "-sign", str(key_file), str(firmware)],
                         check=True, capture_output=True).stdout
    signature = base64.b64encode(raw).decode()
    assert len(signature) <= 800
    assert fw.verify_file_signature(firmware, signature, pem(cert)).status == "SignatureVerified"


def test_rsa_pss_signatures_verify_too(firmware: Path) -> None:
    root = make_root("MF Root", rsa_key())
    key, cert = root.leaf("Firmware Signing", CODE_SIGNING, key=rsa_key(3072))
    raw = key.sign(firmware.read_bytes(), padding.PSS(mgf=padding.MGF1(hashes.SHA256()),
                                                      salt_length=padding.PSS.MAX_LENGTH), hashes.SHA256())
    assert fw.verify_file_signature(firmware, base64.b64encode(raw).decode(), pem(cert)).status == "SignatureVerified"


@pytest.mark.parametrize("signature", ["", "not base64!", "QUJD", "A" * 804])
def test_malformed_signatures_are_invalid_not_errors(signer, firmware: Path, signature: str) -> None:
    _root, _key, cert = signer
    assert fw.verify_file_signature(firmware, signature, pem(cert)).status == "InvalidSignature"


def test_a_missing_file_is_an_invalid_signature(signer, tmp_path: Path) -> None:
    _root, key, cert = signer
    verdict = fw.verify_file_signature(tmp_path / "gone.bin", "QUJD", pem(cert))
    assert verdict.status == "InvalidSignature" and "cannot read" in verdict.reason


def test_signing_certificate_checks(signer) -> None:
    root, key, cert = signer
    other_root = make_root("Other MF")
    sub = root.sub_ca("MF Sub CA")
    cases = {
        "no MF root installed": (pem(cert), [], "no ManufacturerRootCertificate"),
        "other manufacturer": (pem(cert), [other_root.cert], "not issued by"),
        "expired": (pem(root.leaf("FW", CODE_SIGNING, start=timedelta(days=-3), days=1)[1]), [root.cert],
                    "expired"),
        "not yet valid": (pem(root.leaf("FW", CODE_SIGNING, start=timedelta(days=1))[1]), [root.cert], "not valid"),
        "via an intermediate (L01: none allowed)": (pem(sub.leaf("FW", CODE_SIGNING)[1]), [root.cert],
                                                    "not issued by"),
        "TLS server certificate": (pem(root.leaf("FW", SERVER_AUTH)[1]), [root.cert], "codeSigning"),
        "weak key": (pem(root.leaf("FW", CODE_SIGNING, key=rsa_key(1024))[1]), [root.cert], "1024"),
        "garbage": ("nonsense", [root.cert], "no PEM"),
        "two certificates": (pem(cert) + root.pem, [root.cert], "alone"),
    }
    for what, (text, roots, reason) in cases.items():
        verdict = fw.check_signing_certificate(text, roots, NOW)
        assert (verdict.status, verdict.event) == ("InvalidCertificate", "InvalidFirmwareSigningCertificate"), what
        assert reason in verdict.reason, (what, verdict.reason)
        validate("SignedUpdateFirmware", {"status": verdict.status}, response=True)


def test_the_mf_root_itself_may_sign(signer, firmware: Path) -> None:
    root, _key, _cert = signer
    assert fw.check_signing_certificate(root.pem, [root.cert], NOW).status == "Accepted"
    signature = fw.sign_file(firmware, key_pem(root.key))
    assert fw.verify_file_signature(firmware, signature, root.pem).status == "SignatureVerified"


def test_revoked_signing_certificate(signer) -> None:
    root, _key, cert = signer
    verdict = fw.check_signing_certificate(pem(cert), [root.cert], NOW, revoked={pki.fingerprint(cert)})
    assert (verdict.status, verdict.event) == ("RevokedCertificate", "InvalidFirmwareSigningCertificate")
    validate("SignedUpdateFirmware", {"status": verdict.status}, response=True)


def test_sign_file_refuses_weak_or_bad_keys(firmware: Path) -> None:
    with pytest.raises(ValueError, match="1024"):
        fw.sign_file(firmware, key_pem(rsa_key(1024)))
    with pytest.raises(ValueError, match="does not parse"):
        fw.sign_file(firmware, b"not a key")
