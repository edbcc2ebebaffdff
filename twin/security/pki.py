"""X.509 helpers shared by the certificate store, CertificateSigned and signed firmware.

Pure functions over ``cryptography`` objects. ``now`` is always passed in.

Path validation is done here, with ``Certificate.verify_directly_issued_by`` and explicit
checks of validity, BasicConstraints, KeyUsage and critical extensions (a subset of
RFC 5280 §6.1), not with ``cryptography.x509.verification``: that module enforces the web
PKI profile and refuses certificates without a subjectAltName, while OCPP certificates
carry the name in the CN and SHOULD NOT have a dNSName SAN (whitepaper A00.FR.511).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import dsa, ec, rsa
from cryptography.x509 import ocsp
from cryptography.x509.oid import ExtensionOID, NameOID

# CertificateUseEnumType of InstallCertificate / GetInstalledCertificateIds.
CENTRAL_SYSTEM_ROOT = "CentralSystemRootCertificate"
MANUFACTURER_ROOT = "ManufacturerRootCertificate"
CERTIFICATE_USES = (CENTRAL_SYSTEM_ROOT, MANUFACTURER_ROOT)

# HashAlgorithmEnumType of CertificateHashDataType.
HASH_ALGORITHMS: Mapping[str, type[hashes.HashAlgorithm]] = {
    "SHA256": hashes.SHA256, "SHA384": hashes.SHA384, "SHA512": hashes.SHA512}

# Whitepaper A00.FR.501-503: at least 112-bit security.
MIN_RSA_BITS = 2048
MIN_EC_BITS = 224

# A text made only of PEM certificate blocks and whitespace (RFC 7468 §5.1 labels).
_PEM_CERT = re.compile(r"-----BEGIN CERTIFICATE-----[A-Za-z0-9+/=\s]*?-----END CERTIFICATE-----")


class CertificateError(ValueError):
    """A certificate or chain that cannot be used; the message says why."""


def normalise_pem(text: str | bytes) -> bytes:
    """PEM text with LF line ends. OCTT sends PEM with CRLF line ends."""
    if isinstance(text, (bytes, bytearray, memoryview)):
        try:
            text = bytes(text).decode("ascii")
        except UnicodeDecodeError as exc:
            raise CertificateError("PEM text must be ASCII") from exc
    return text.replace("\r\n", "\n").replace("\r", "\n").strip().encode("ascii", errors="strict") + b"\n"


def load_certificates(text: str | bytes) -> list[x509.Certificate]:
    """Every certificate of a PEM text, in order. The text must hold nothing but
    CERTIFICATE blocks: a private key, a CSR or stray text is an error."""
    try:
        data = normalise_pem(text)
    except UnicodeEncodeError as exc:
        raise CertificateError("PEM text must be ASCII") from exc
    as_text = data.decode("ascii")
    blocks = _PEM_CERT.findall(as_text)
    if not blocks:
        raise CertificateError("no PEM certificate found")
    if _PEM_CERT.sub("", as_text).strip():
        raise CertificateError("the text holds something besides PEM certificates")
    try:
        certs = x509.load_pem_x509_certificates(data)
    except ValueError as exc:
        raise CertificateError(f"a certificate does not parse: {exc}") from exc
    for n, cert in enumerate(certs, 1):
        problem = _usable_problem(cert)
        if problem:
            raise CertificateError(f"certificate {n}: {problem}")
    return certs


SERIAL_MAX_OCTETS = 20  # RFC 5280 §4.1.2.2


def _usable_problem(cert: x509.Certificate) -> str | None:
    """What makes a certificate that parses unusable here, checked once where every PEM
    enters, so no later step meets it as an exception: a public key ``cryptography``
    cannot load (SM2, GOST ...), or a serial the CertificateHashData cannot carry
    (serialNumber is CiString40: 20 octets as hex)."""
    try:
        cert.public_key()
    except (UnsupportedAlgorithm, ValueError) as exc:
        return f"its public key cannot be used ({exc})"
    serial = cert.serial_number
    if serial <= 0:
        return "its serial number is not positive (RFC 5280 §4.1.2.2)"
    if serial.bit_length() > 8 * SERIAL_MAX_OCTETS:
        return f"its serial number is longer than {SERIAL_MAX_OCTETS} octets (RFC 5280 §4.1.2.2)"
    return None


def fingerprint(cert: x509.Certificate) -> str:
    """The SHA-256 fingerprint of the DER, lower-case hex: the store's id of a certificate."""
    return cert.fingerprint(hashes.SHA256()).hex()


def serial_hex(serial: int) -> str:
    """CertificateHashDataType.serialNumber: hex without leading zeros and without ``0x``
    (whitepaper edition 3; 4095 is ``fff``). Lower case: the field is a CiString."""
    if serial < 0:
        raise CertificateError("negative serial number (RFC 5280 §4.1.2.2 requires a positive one)")
    return format(serial, "x")


def hash_data(cert: x509.Certificate, issuer: x509.Certificate, algorithm: str = "SHA256") -> dict[str, str]:
    """CertificateHashDataType for ``cert`` issued by ``issuer`` (the certificate itself
    for a self-signed root).

    Edition 3 of the whitepaper defines the fields as RFC 6960 §4.1.1 CertID: issuerNameHash
    is the hash of the DER of the certificate's issuer Name; issuerKeyHash is the hash of the
    issuer's subjectPublicKey BIT STRING value (not the whole SubjectPublicKeyInfo, and
    without tag, length and unused-bits octet). ``cryptography``'s OCSP request builder
    computes exactly that CertID, from the certificate's own encoding."""
    if algorithm not in HASH_ALGORITHMS:
        raise ValueError(f"hashAlgorithm {algorithm!r} is not one of {', '.join(HASH_ALGORITHMS)}")
    request = ocsp.OCSPRequestBuilder().add_certificate(cert, issuer, HASH_ALGORITHMS[algorithm]()).build()
    return {
        "hashAlgorithm": algorithm,
        "issuerNameHash": request.issuer_name_hash.hex(),
        "issuerKeyHash": request.issuer_key_hash.hex(),
        "serialNumber": serial_hex(request.serial_number),
    }


def _normal_serial(text: str) -> str:
    return text.strip().lower().lstrip("0") or "0"


def same_hash_data(ours: Mapping[str, str], theirs: Mapping[str, object]) -> bool:
    """Whether a CertificateHashData from the CSMS names the certificate ``ours`` describes.
    Hex strings compare case-insensitively (CiString) and the serial also without leading
    zeros, since CSMSs differ in how they write it."""
    try:
        return (str(theirs["hashAlgorithm"]) == ours["hashAlgorithm"]
                and str(theirs["issuerNameHash"]).strip().lower() == ours["issuerNameHash"]
                and str(theirs["issuerKeyHash"]).strip().lower() == ours["issuerKeyHash"]
                and _normal_serial(str(theirs["serialNumber"])) == _normal_serial(ours["serialNumber"]))
    except KeyError:
        return False


def key_strength_problem(key: object) -> str | None:
    """Why a public (or private) key is too weak for OCPP, or None (A00.FR.501-503)."""
    if isinstance(key, (rsa.RSAPublicKey, rsa.RSAPrivateKey, dsa.DSAPublicKey, dsa.DSAPrivateKey)):
        if key.key_size < MIN_RSA_BITS:
            return f"{key.key_size}-bit RSA/DSA key, at least {MIN_RSA_BITS} needed"
        return None
    if isinstance(key, (ec.EllipticCurvePublicKey, ec.EllipticCurvePrivateKey)):
        if key.curve.key_size < MIN_EC_BITS:
            return f"{key.curve.key_size}-bit EC key, at least {MIN_EC_BITS} needed"
        return None
    # The whitepaper's key rules and cipher suites name RSA and EC keys only.
    return f"unsupported key type {type(key).__name__} (RSA or EC needed)"


def validity_problem(cert: x509.Certificate, now: datetime, *, allow_future: bool = False) -> str | None:
    """Why ``cert`` is not valid at ``now``, or None. With ``allow_future`` a certificate
    whose validity starts later is fine (CertificateSigned, whitepaper A02.FR.08)."""
    if now > cert.not_valid_after_utc:
        return f"expired on {cert.not_valid_after_utc.isoformat()}"
    if now < cert.not_valid_before_utc and not allow_future:
        return f"not valid before {cert.not_valid_before_utc.isoformat()}"
    return None


def issued_by(child: x509.Certificate, parent: x509.Certificate) -> bool:
    """Whether ``parent``'s key signed ``child`` and the names chain (RFC 5280 §6.1.3 a)."""
    try:
        child.verify_directly_issued_by(parent)
    except (ValueError, TypeError, InvalidSignature, UnsupportedAlgorithm):
        return False
    return True


def is_self_signed(cert: x509.Certificate) -> bool:
    return cert.subject == cert.issuer and issued_by(cert, cert)


def _extension(cert: x509.Certificate, oid: x509.ObjectIdentifier) -> x509.Extension | None:
    try:
        return cert.extensions.get_extension_for_oid(oid)
    except x509.ExtensionNotFound:
        return None


def extensions_problem(cert: x509.Certificate) -> str | None:
    """Extensions that do not parse, or an unrecognised critical one (RFC 5280 §4.2)."""
    try:
        extensions = cert.extensions
    except ValueError as exc:
        return f"an extension does not parse: {exc}"
    for ext in extensions:
        if ext.critical and isinstance(ext.value, x509.UnrecognizedExtension):
            return f"unrecognised critical extension {ext.oid.dotted_string}"
    return None


def ca_problem(cert: x509.Certificate) -> str | None:
    """Why ``cert`` may not issue certificates, or None. A CA has BasicConstraints cA=TRUE
    and, when KeyUsage is present, keyCertSign (RFC 5280 §4.2.1.3, §4.2.1.9). A version 1
    self-signed certificate has no extensions at all; it is taken as a CA, as OpenSSL does
    (X509_check_ca), since such roots are still in use (EVerest's CSMS test root is one)."""
    problem = extensions_problem(cert)
    if problem:
        return problem
    constraints = _extension(cert, ExtensionOID.BASIC_CONSTRAINTS)
    if constraints is None:
        if cert.version == x509.Version.v1 and is_self_signed(cert):
            return None
        return "not a CA certificate (no BasicConstraints)"
    if not constraints.value.ca:
        return "not a CA certificate (BasicConstraints cA is false)"
    usage = _extension(cert, ExtensionOID.KEY_USAGE)
    if usage is not None and not usage.value.key_cert_sign:
        return "KeyUsage lacks keyCertSign"
    return None


def signature_hash_problem(cert: x509.Certificate) -> str | None:
    """MD5 and SHA-1 signatures are refused (whitepaper A00.FR.506 asks for SHA-256)."""
    try:
        algorithm = cert.signature_hash_algorithm
    except UnsupportedAlgorithm as exc:
        return f"unsupported signature algorithm: {exc}"
    if isinstance(algorithm, (hashes.MD5, hashes.SHA1)):
        return f"signed with {algorithm.name}"
    return None


def _path_length(cert: x509.Certificate) -> int | None:
    constraints = _extension(cert, ExtensionOID.BASIC_CONSTRAINTS)
    return None if constraints is None else constraints.value.path_length


@dataclass(frozen=True)
class PathResult:
    """The result of :func:`validate_path`: the trust anchor that ends the path, or the problem."""

    anchor: x509.Certificate | None
    problem: str | None

    @property
    def ok(self) -> bool:
        return self.anchor is not None


def validate_path(chain: Sequence[x509.Certificate], anchors: Iterable[x509.Certificate], now: datetime,
                  *, allow_future_leaf: bool = False) -> PathResult:
    """Validate ``chain`` (leaf first, then the certificates that issued it, in order)
    up to one of ``anchors``, at ``now``.

    Each certificate must be valid now (the leaf may start later with
    ``allow_future_leaf``), not be signed with MD5/SHA-1, have no unknown critical
    extension, and be signed by the next one; every issuer must be a CA, and path length
    constraints hold. The path ends at the first certificate directly issued by an anchor,
    or at a copy of an anchor included in the chain."""
    anchors = list(anchors)
    if not chain:
        return PathResult(None, "empty chain")
    if not anchors:
        return PathResult(None, "no trust anchor installed")
    anchor_ids = {fingerprint(a): a for a in anchors}
    for position, cert in enumerate(chain):
        what = "certificate" if position == 0 else f"chain certificate {position + 1}"
        if position > 0 and fingerprint(cert) in anchor_ids:
            return _check_anchor(anchor_ids[fingerprint(cert)], position - 1, now)
        problem = (validity_problem(cert, now, allow_future=allow_future_leaf and position == 0)
                   or signature_hash_problem(cert) or extensions_problem(cert))
        if problem is None and position > 0:
            problem = ca_problem(cert)  # it issued the certificate before it
        if problem:
            return PathResult(None, f"{what}: {problem}")
        if position > 0:
            limit = _path_length(cert)
            if limit is not None and position - 1 > limit:
                return PathResult(None, f"{what}: path length constraint {limit} exceeded")
        for anchor in anchors:
            if issued_by(cert, anchor):
                return _check_anchor(anchor, position, now)
        if position + 1 == len(chain):
            return PathResult(None, f"{what}: not issued by an installed root")
        if not issued_by(cert, chain[position + 1]):
            return PathResult(None, f"{what}: not signed by chain certificate {position + 2}")
    return PathResult(None, "no path to an installed root")  # not reached: the loop returns


def _check_anchor(anchor: x509.Certificate, intermediates: int, now: datetime) -> PathResult:
    # OpenSSL checks the root's own validity and pathLenConstraint too; doing the same
    # keeps this and the TLS stack in agreement.
    problem = validity_problem(anchor, now)
    if problem:
        return PathResult(None, f"the root is {problem}")
    limit = _path_length(anchor)
    if limit is not None and intermediates > limit:
        return PathResult(None, f"the root's path length constraint {limit} is exceeded")
    return PathResult(anchor, None)


def subject_values(cert_or_csr: x509.Certificate | x509.CertificateSigningRequest,
                   oid: x509.ObjectIdentifier) -> list[str]:
    return [str(attr.value) for attr in cert_or_csr.subject.get_attributes_for_oid(oid)]


def common_name(cert_or_csr: x509.Certificate | x509.CertificateSigningRequest) -> str | None:
    values = subject_values(cert_or_csr, NameOID.COMMON_NAME)
    return values[0] if len(values) == 1 else None


def organization(cert_or_csr: x509.Certificate | x509.CertificateSigningRequest) -> str | None:
    values = subject_values(cert_or_csr, NameOID.ORGANIZATION_NAME)
    return values[0] if len(values) == 1 else None


def name_matches(cert: x509.Certificate, hostname: str) -> bool:
    """Whether the CSMS certificate names ``hostname``: the CN equals it (whitepaper
    A00.FR.308/412: the CN holds the CSMS FQDN), or a dNSName of the subjectAltName does.
    DNS names compare case-insensitively (RFC 4343); no wildcards."""
    wanted = hostname.rstrip(".").lower()
    names = [n.lower() for n in subject_values(cert, NameOID.COMMON_NAME)]
    san = _extension(cert, ExtensionOID.SUBJECT_ALTERNATIVE_NAME)
    if san is not None:
        names += [n.lower() for n in san.value.get_values_for_type(x509.DNSName)]
    return wanted in names
