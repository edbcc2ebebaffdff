"""The charge point certificate: a new key pair and CSR for SignCertificate, and the
checks on CertificateSigned (whitepaper use cases A02/A03).

- Every request gets a new key pair (A02.FR.02): ECDSA P-256 by default (it serves the
  ECDHE-ECDSA suites), RSA of at least 2048 bits on request (A00.FR.501-503).
- The CSR is PKCS#10 in PEM (A02.FR.03), signed with SHA-256, subject O = CpoName
  (A02.FR.13) and CN = the charge point's serial number (A00.FR.405/511), no SAN.
- CertificateSigned.req is Accepted only when the chain fits CertificateSignedMaxChainSize,
  parses, its leaf holds the pending key with the subject the CSR asked for, the leaf is
  not expired, and the chain leads to an installed CentralSystemRootCertificate
  (A02.FR.06). Otherwise Rejected, the certificate is discarded and
  InvalidChargePointCertificate is raised (A02.FR.07, OCTT TC_077).
- An accepted certificate is stored and used from the next connection on, once its
  validity has started (A02.FR.08); the current connection keeps the one it has.
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, ExtensionOID, NameOID

from twin.security import pki
from twin.security.certs import CERT_MAX_CHARS, RECONFIGURATION, CertificateStore, Outcome
from twin.security.pki import CENTRAL_SYSTEM_ROOT, CertificateError

INVALID_CP_CERTIFICATE = "InvalidChargePointCertificate"
CHAIN_MAX_CHARS = 10000  # CertificateSigned.req certificateChain
NAME_MAX = 64  # RFC 5280 ub-common-name and ub-organization-name

KeyAlgorithm = Literal["ec", "rsa"]


PrivateKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey


def generate_key(algorithm: KeyAlgorithm = "ec", rsa_bits: int = 2048) -> PrivateKey:
    """A new private key: ECDSA P-256, or RSA with ``rsa_bits`` (at least 2048)."""
    if algorithm == "ec":
        return ec.generate_private_key(ec.SECP256R1())
    if algorithm == "rsa":
        if rsa_bits < pki.MIN_RSA_BITS:
            raise ValueError(f"RSA keys need at least {pki.MIN_RSA_BITS} bits, not {rsa_bits}")
        return rsa.generate_private_key(public_exponent=65537, key_size=rsa_bits)
    raise ValueError(f"key algorithm {algorithm!r} is not 'ec' or 'rsa'")


def _subject(common_name: str, organization: str) -> dict[str, str]:
    for field, value in (("CN", common_name), ("O (CpoName)", organization)):
        if not value or not value.strip():
            raise ValueError(f"the CSR subject {field} must be set")
        if len(value) > NAME_MAX:
            raise ValueError(f"the CSR subject {field} is longer than {NAME_MAX} characters")
    return {"commonName": common_name, "organization": organization}


def build_csr(key: PrivateKey, common_name: str, organization: str) -> str:
    """A PKCS#10 CSR in PEM for ``key``, subject O = ``organization``, CN = ``common_name``."""
    subject = _subject(common_name, organization)
    name = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, subject["organization"]),
                      x509.NameAttribute(NameOID.COMMON_NAME, subject["commonName"])])
    csr = x509.CertificateSigningRequestBuilder().subject_name(name).sign(key, hashes.SHA256())
    return csr.public_bytes(serialization.Encoding.PEM).decode("ascii")


def request_certificate(store: CertificateStore, common_name: str, organization: str,
                        algorithm: KeyAlgorithm = "ec", rsa_bits: int = 2048, now: datetime | None = None) -> str:
    """The SignCertificate.req ``csr``: a new key pair, kept in the store as pending (with
    ``now`` as the time of the request), and its CSR. Raises ValueError without a CpoName
    (``organization``), so the trigger can be answered Rejected as libocpp does, and
    OSError if the key cannot be stored."""
    subject = _subject(common_name, organization)
    key = generate_key(algorithm, rsa_bits)
    csr = build_csr(key, common_name, organization)
    if len(csr) > CERT_MAX_CHARS:  # not reached with the keys above; the schema's limit
        raise ValueError(f"the CSR is longer than {CERT_MAX_CHARS} characters")
    store.put_pending_key(key, subject, requested_at=now)
    return csr


def _public_der(key: object) -> bytes:
    return key.public_bytes(serialization.Encoding.DER,  # type: ignore[attr-defined]
                            serialization.PublicFormat.SubjectPublicKeyInfo)


def _leaf_problem(leaf: x509.Certificate, subject: dict[str, str]) -> str | None:
    try:
        pki.serial_hex(leaf.serial_number)
    except CertificateError as exc:
        return str(exc)
    if pki.common_name(leaf) != subject.get("commonName"):
        return f"CN {pki.common_name(leaf)!r} is not the requested {subject.get('commonName')!r}"
    if pki.organization(leaf) != subject.get("organization"):
        return f"O {pki.organization(leaf)!r} is not the requested {subject.get('organization')!r}"
    problem = pki.key_strength_problem(leaf.public_key()) or pki.extensions_problem(leaf)
    if problem:
        return problem
    extensions = leaf.extensions
    for ext in extensions:
        if ext.oid == ExtensionOID.BASIC_CONSTRAINTS and ext.value.ca:
            return "a CA certificate, not a charge point certificate"
        if ext.oid == ExtensionOID.KEY_USAGE and not ext.value.digital_signature:
            return "KeyUsage lacks digitalSignature (needed for TLS client authentication)"
        if ext.oid == ExtensionOID.EXTENDED_KEY_USAGE and not (
                {ExtendedKeyUsageOID.CLIENT_AUTH, ExtendedKeyUsageOID.ANY_EXTENDED_KEY_USAGE} & set(ext.value)):
            return "ExtendedKeyUsage lacks clientAuth"
    return None


def check_certificate_signed(store: CertificateStore, certificate_chain: str, now: datetime,
                             max_chain_size: int = CHAIN_MAX_CHARS) -> tuple[list[x509.Certificate] | None, str]:
    """The parsed chain if CertificateSigned.req's ``certificate_chain`` is acceptable,
    else None, and why not."""
    limit = min(max_chain_size, CHAIN_MAX_CHARS)
    if len(certificate_chain) > limit:
        return None, f"chain of {len(certificate_chain)} characters exceeds CertificateSignedMaxChainSize {limit}"
    try:
        chain = pki.load_certificates(certificate_chain)
    except CertificateError as exc:
        return None, str(exc)
    pending = store.pending()
    if pending is None:
        return None, "no certificate was requested (no pending key)"
    key, subject = pending
    leaf = chain[0]
    if _public_der(leaf.public_key()) != _public_der(key.public_key()):  # type: ignore[attr-defined]
        return None, "the certificate is not for the key of the last CSR"
    problem = _leaf_problem(leaf, subject)
    if problem:
        return None, problem
    result = pki.validate_path(chain, store.roots(CENTRAL_SYSTEM_ROOT), now, allow_future_leaf=True)
    if not result.ok:
        return None, result.problem or "invalid chain"
    return chain, ""


def certificate_signed(store: CertificateStore, certificate_chain: str, now: datetime,
                       max_chain_size: int = CHAIN_MAX_CHARS) -> Outcome:
    """CertificateSigned.req: Accepted and stored for the next connection, or Rejected
    with InvalidChargePointCertificate to raise (and send: A02.FR.07)."""
    chain, problem = check_certificate_signed(store, certificate_chain, now, max_chain_size)
    if chain is None:
        return Outcome("Rejected", INVALID_CP_CERTIFICATE, problem)
    try:
        credentials = store.promote_pending(chain, now)
    except (OSError, CertificateError) as exc:
        # The certificate is fine; the station could not keep it. Not an invalid certificate.
        return Outcome("Rejected", reason=f"could not store the certificate: {exc}")
    return Outcome("Accepted", RECONFIGURATION,
                   f"new charge point certificate {pki.serial_hex(credentials.certificate.serial_number)}, "
                   f"valid from {credentials.certificate.not_valid_before_utc.isoformat()}")
