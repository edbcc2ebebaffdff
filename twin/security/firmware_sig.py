"""Signed firmware (whitepaper use case L01): the signing certificate, checked before
SignedUpdateFirmware is answered, and the signature over the downloaded file.

The signing certificate (L01.FR.12, .24, .25):
- it must be issued directly by an installed ManufacturerRootCertificate, as the
  manufacturer "SHALL NOT use intermediate certificates" (L01 remarks), or be such a root
  itself (EVerest's conformance test signs with the root; its key is trusted either way);
- it must be valid now, with KeyUsage digitalSignature and ExtendedKeyUsage codeSigning
  when those extensions are present, and a key of at least 112-bit strength;
- otherwise the answer is InvalidCertificate and InvalidFirmwareSigningCertificate is raised
  (L01.FR.02); a certificate listed as revoked is RevokedCertificate. OCPP 1.6 gives the
  station no revocation source (no CRL or OCSP), so the revoked list is what the caller
  passes: the firmware service passes ``[firmware] revoked_signing_certificates``.

The signature (L01.FR.04): over the entire file with SHA-256, Base64 in the request. The
whitepaper names RSA-PSS or ECSchnorr; the tools in use produce ``openssl dgst -sha256
-sign``, i.e. RSA PKCS#1 v1.5 or ECDSA over SHA-256, and OCTT takes whatever signature the
tester enters. So ECDSA-SHA256, RSA PKCS#1 v1.5-SHA256 and RSA-PSS-SHA256 are accepted;
``cryptography`` has no ECSchnorr. A bad signature is InvalidSignature plus
InvalidFirmwareSignature (L01.FR.03, OCTT TC_081).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from collections.abc import Collection, Iterable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed
from cryptography.x509.oid import ExtendedKeyUsageOID, ExtensionOID

from twin.security import pki
from twin.security.pki import CertificateError

INVALID_SIGNING_CERTIFICATE = "InvalidFirmwareSigningCertificate"
INVALID_SIGNATURE = "InvalidFirmwareSignature"
SIGNATURE_MAX_CHARS = 800  # SignedUpdateFirmware.req firmware.signature
CHUNK = 1 << 20


@dataclass(frozen=True)
class Verdict:
    """A status for the CSMS (SignedUpdateFirmware.conf or SignedFirmwareStatusNotification),
    the security event to raise (None for none) and why."""

    status: str
    event: str | None = None
    reason: str = ""

    @property
    def ok(self) -> bool:
        return self.event is None


def _signing_problem(cert: x509.Certificate, roots: list[x509.Certificate], now: datetime) -> str | None:
    if not roots:
        return "no ManufacturerRootCertificate installed"
    problem = (pki.validity_problem(cert, now) or pki.key_strength_problem(cert.public_key())
               or pki.signature_hash_problem(cert) or pki.extensions_problem(cert))
    if problem:
        return problem
    cert_id = pki.fingerprint(cert)
    if any(pki.fingerprint(root) == cert_id for root in roots):
        return None  # an installed root itself
    issuer = next((root for root in roots if pki.issued_by(cert, root)), None)
    if issuer is None:
        return "not issued by an installed ManufacturerRootCertificate"
    problem = pki.validity_problem(issuer, now)
    if problem:
        return f"its root is {problem}"
    for ext in cert.extensions:
        if ext.oid == ExtensionOID.KEY_USAGE and not ext.value.digital_signature:
            return "KeyUsage lacks digitalSignature"
        if ext.oid == ExtensionOID.EXTENDED_KEY_USAGE and not (
                {ExtendedKeyUsageOID.CODE_SIGNING, ExtendedKeyUsageOID.ANY_EXTENDED_KEY_USAGE} & set(ext.value)):
            return "ExtendedKeyUsage lacks codeSigning"
    return None


def check_signing_certificate(signing_certificate: str, manufacturer_roots: Iterable[x509.Certificate],
                              now: datetime, revoked: Collection[str] = ()) -> Verdict:
    """The SignedUpdateFirmware.conf status for ``signing_certificate`` (PEM): Accepted,
    InvalidCertificate or RevokedCertificate. ``revoked`` holds fingerprints
    (:func:`pki.fingerprint`) of signing certificates known to be revoked."""
    try:
        certs = pki.load_certificates(signing_certificate)
    except CertificateError as exc:
        return Verdict("InvalidCertificate", INVALID_SIGNING_CERTIFICATE, str(exc))
    if len(certs) != 1:
        return Verdict("InvalidCertificate", INVALID_SIGNING_CERTIFICATE,
                       f"{len(certs)} certificates given; the signing certificate alone is expected")
    cert = certs[0]
    problem = _signing_problem(cert, list(manufacturer_roots), now)
    if problem:
        return Verdict("InvalidCertificate", INVALID_SIGNING_CERTIFICATE, problem)
    if pki.fingerprint(cert) in revoked:
        return Verdict("RevokedCertificate", INVALID_SIGNING_CERTIFICATE, "the signing certificate is revoked")
    return Verdict("Accepted")


def _sha256_file(path: Path) -> bytes:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(CHUNK):
            digest.update(chunk)
    return digest.digest()


def _decode_signature(signature: str) -> bytes | None:
    if len(signature) > SIGNATURE_MAX_CHARS:
        return None
    try:
        return base64.b64decode("".join(signature.split()), validate=True)
    except (binascii.Error, ValueError):
        return None


def _verify_digest(public_key: object, signature: bytes, digest: bytes) -> bool:
    prehashed = Prehashed(hashes.SHA256())
    try:
        if isinstance(public_key, ec.EllipticCurvePublicKey):
            public_key.verify(signature, digest, ec.ECDSA(prehashed))
            return True
        if isinstance(public_key, rsa.RSAPublicKey):
            for scheme in (padding.PKCS1v15(), padding.PSS(mgf=padding.MGF1(hashes.SHA256()),
                                                           salt_length=padding.PSS.AUTO)):
                try:
                    public_key.verify(signature, digest, scheme, prehashed)
                    return True
                except InvalidSignature:
                    continue
    except InvalidSignature:
        return False
    return False


def verify_file_signature(firmware: Path | str, signature: str, signing_certificate: str) -> Verdict:
    """SignatureVerified when ``signature`` (Base64) is the signing certificate's key's
    SHA-256 signature over the whole ``firmware`` file, else InvalidSignature with
    InvalidFirmwareSignature. The file is hashed in chunks, so its size does not matter."""
    try:
        cert = pki.load_certificates(signing_certificate)[0]
    except CertificateError as exc:
        return Verdict("InvalidSignature", INVALID_SIGNATURE, f"signing certificate: {exc}")
    raw = _decode_signature(signature)
    if raw is None:
        return Verdict("InvalidSignature", INVALID_SIGNATURE, "the signature is not Base64 of at most 800 characters")
    try:
        digest = _sha256_file(Path(firmware))
    except OSError as exc:
        return Verdict("InvalidSignature", INVALID_SIGNATURE, f"cannot read the firmware file: {exc.strerror or exc}")
    if not _verify_digest(cert.public_key(), raw, digest):
        return Verdict("InvalidSignature", INVALID_SIGNATURE, "the signature does not match the file")
    return Verdict("SignatureVerified")


def sign_file(firmware: Path | str, private_key_pem: bytes, password: bytes | None = None) -> str:
    """The Base64 signature of a firmware file for SignedUpdateFirmware: ECDSA-SHA256 for
    an EC key, RSA PKCS#1 v1.5-SHA256 for an RSA key (what ``openssl dgst -sha256 -sign``
    makes). For tests and for building signed bundles."""
    try:
        key = serialization.load_pem_private_key(private_key_pem, password=password)
    except (ValueError, TypeError) as exc:
        raise ValueError("the signing key does not parse (PEM private key)") from exc
    problem = pki.key_strength_problem(key)
    if problem:
        raise ValueError(f"signing key: {problem}")
    digest = _sha256_file(Path(firmware))
    prehashed = Prehashed(hashes.SHA256())
    if isinstance(key, ec.EllipticCurvePrivateKey):
        raw = key.sign(digest, ec.ECDSA(prehashed))
    elif isinstance(key, rsa.RSAPrivateKey):
        raw = key.sign(digest, padding.PKCS1v15(), prehashed)
    else:  # not reached: key_strength_problem refuses other key types
        raise ValueError(f"unsupported signing key type {type(key).__name__}")
    return base64.b64encode(raw).decode("ascii")
