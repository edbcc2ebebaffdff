"""An offline private PKI for the built-in CSMS, made with ``cryptography``.

One directory holds (private keys mode 0600, the directory 0700)::

    csms-root-ca.pem             the CentralSystemRootCertificate to install in stations
    csms-root-ca.key.pem
    csms-server-ecdsa.pem        server certificate, EC P-256   (ECDHE-ECDSA suites)
    csms-server-ecdsa.key.pem
    csms-server-rsa.pem          server certificate, RSA 2048   (TLS_RSA suites)
    csms-server-rsa.key.pem
    mf-root-ca.pem               a ManufacturerRootCertificate
    mf-root-ca.key.pem
    firmware-signing.pem         firmware signing certificate, issued directly by the
    firmware-signing.key.pem     manufacturer root (L01 remarks: no intermediates)

The server certificates carry O = the organisation and CN = the host name, and no
subjectAltName (A00.FR.509-511). Stations then match the host against the CN (OpenSSL's
fallback when there is no SAN), which works for DNS names but not for IP addresses: a
station must connect to ``wss://localhost:...`` or another name, never ``wss://127.0.0.1``.

The CSMS root also plays the CPO CA that answers SignCertificate: :meth:`CsmsPki.sign_csr`
issues a charge point certificate (clientAuth) for a PKCS#10 CSR, copying the CSR's
subject (O = CpoName, CN = serial number: A02.FR.13, A00.FR.405).

:meth:`CsmsPki.ensure` is idempotent: what exists, parses, is valid for at least another
day and fits the requested host is reused; anything else is made anew (a new CSMS root
also renews everything it signed).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from twin.security.certs import write_atomic
from twin.security.pki import key_strength_problem

ROOT_DAYS = 3650
SERVER_DAYS = 90
CLIENT_DAYS = 365
SIGNING_DAYS = 365
RENEW_BEFORE = timedelta(days=1)
BACKDATE = timedelta(minutes=5)  # tolerate clocks a little behind

PrivateKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey


class CsrError(ValueError):
    """A CSR the CA will not sign; the message says why."""


def _ec_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def _name(common_name: str, organization: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, organization),
                      x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _usage(*, ca: bool, key_encipherment: bool = False) -> x509.KeyUsage:
    return x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=key_encipherment,
                         data_encipherment=False, key_agreement=False, key_cert_sign=ca, crl_sign=ca,
                         encipher_only=False, decipher_only=False)


def _pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _key_pem(key: PrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _public_der(key: object) -> bytes:
    return key.public_bytes(serialization.Encoding.DER,  # type: ignore[attr-defined]
                            serialization.PublicFormat.SubjectPublicKeyInfo)


@dataclass(frozen=True)
class _Ca:
    key: PrivateKey
    cert: x509.Certificate


def _self_signed_ca(common_name: str, organization: str, now: datetime) -> _Ca:
    key = _ec_key()
    subject = _name(common_name, organization)
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - BACKDATE).not_valid_after(now + timedelta(days=ROOT_DAYS))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(_usage(ca=True), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(key, hashes.SHA256()))
    return _Ca(key, cert)


def _issue(ca: _Ca, subject: x509.Name, public_key: object, eku: x509.ObjectIdentifier, days: int,
           now: datetime, *, key_encipherment: bool = False) -> x509.Certificate:
    # Certificates are signed with SHA-256 (A00.FR.506) and have a serial (A00.FR.508).
    return (x509.CertificateBuilder().subject_name(subject).issuer_name(ca.cert.subject)
            .public_key(public_key)  # type: ignore[arg-type]
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - BACKDATE).not_valid_after(now + timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(_usage(ca=False, key_encipherment=key_encipherment), critical=True)
            .add_extension(x509.ExtendedKeyUsage([eku]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.cert.public_key()),  # type: ignore[arg-type]
                           critical=False)
            .sign(ca.key, hashes.SHA256()))


class CsmsPki:
    """The private PKI in ``directory`` for a CSMS reached as ``host``."""

    def __init__(self, directory: Path | str, host: str = "localhost", organization: str = "ocpp-twin CSMS",
                 manufacturer: str = "ocpp-twin Manufacturer"):
        self.directory = Path(directory)
        self.host = host
        self.organization = organization
        self.manufacturer = manufacturer
        self._csms_ca: _Ca | None = None

    # -- file names ------------------------------------------------------------------------
    def _path(self, stem: str) -> Path:
        return self.directory / f"{stem}.pem"

    def _key_path(self, stem: str) -> Path:
        return self.directory / f"{stem}.key.pem"

    @property
    def csms_root(self) -> Path:
        """The CentralSystemRootCertificate (PEM) a station installs."""
        return self._path("csms-root-ca")

    @property
    def server_pairs(self) -> list[tuple[Path, Path]]:
        """(certificate, key) of the ECDSA and the RSA server certificate."""
        return [(self._path(s), self._key_path(s)) for s in ("csms-server-ecdsa", "csms-server-rsa")]

    @property
    def manufacturer_root(self) -> Path:
        return self._path("mf-root-ca")

    @property
    def firmware_signing(self) -> tuple[Path, Path]:
        """(certificate, key) for signing firmware (SignedUpdateFirmware)."""
        return self._path("firmware-signing"), self._key_path("firmware-signing")

    def csms_root_pem(self) -> str:
        return self.csms_root.read_text(encoding="ascii")

    def manufacturer_root_pem(self) -> str:
        return self.manufacturer_root.read_text(encoding="ascii")

    # -- loading / writing -------------------------------------------------------------------
    def _write(self, stem: str, cert: x509.Certificate, key: PrivateKey) -> None:
        # The key first, 0600 from its first byte: a certificate without its key is useless.
        write_atomic(self._key_path(stem), _key_pem(key), 0o600)
        write_atomic(self._path(stem), _pem(cert), 0o644)

    def _load(self, stem: str, now: datetime) -> _Ca | None:
        """The pair if both files parse, belong together and stay valid for a while."""
        try:
            cert = x509.load_pem_x509_certificate(self._path(stem).read_bytes())
            key = serialization.load_pem_private_key(self._key_path(stem).read_bytes(), password=None)
        except (OSError, ValueError, TypeError):
            return None
        if not isinstance(key, (ec.EllipticCurvePrivateKey, rsa.RSAPrivateKey)):
            return None
        if _public_der(key.public_key()) != _public_der(cert.public_key()):
            return None
        if not cert.not_valid_before_utc <= now <= cert.not_valid_after_utc - RENEW_BEFORE:
            return None
        return _Ca(key, cert)

    @staticmethod
    def _issued_by(cert: x509.Certificate, ca: _Ca) -> bool:
        try:
            cert.verify_directly_issued_by(ca.cert)
        except (ValueError, TypeError, InvalidSignature):
            return False
        return True

    def _root(self, stem: str, common_name: str, organization: str, now: datetime) -> tuple[_Ca, bool]:
        existing = self._load(stem, now)
        if existing is not None:
            return existing, False
        ca = _self_signed_ca(common_name, organization, now)
        self._write(stem, ca.cert, ca.key)
        return ca, True

    def _leaf(self, stem: str, ca: _Ca, renewed_ca: bool, subject: x509.Name, eku: x509.ObjectIdentifier,
              days: int, make_key, now: datetime, **kw: bool) -> None:
        existing = None if renewed_ca else self._load(stem, now)
        if existing is not None and existing.cert.subject == subject and self._issued_by(existing.cert, ca):
            return
        key = make_key()
        self._write(stem, _issue(ca, subject, key.public_key(), eku, days, now, **kw), key)

    def ensure(self, now: datetime | None = None) -> CsmsPki:
        """Create (or complete, or renew) the PKI; reuse whatever is still good."""
        now = now or datetime.now(UTC)
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(self.directory, 0o700)
        csms, new_csms = self._root("csms-root-ca", f"{self.organization} Root CA", self.organization, now)
        server = _name(self.host, self.organization)
        self._leaf("csms-server-ecdsa", csms, new_csms, server, ExtendedKeyUsageOID.SERVER_AUTH, SERVER_DAYS,
                   _ec_key, now)
        # RSA key exchange (the TLS_RSA_* suites) encrypts with the server key: keyEncipherment.
        self._leaf("csms-server-rsa", csms, new_csms, server, ExtendedKeyUsageOID.SERVER_AUTH, SERVER_DAYS,
                   _rsa_key, now, key_encipherment=True)
        mf, new_mf = self._root("mf-root-ca", f"{self.manufacturer} Root CA", self.manufacturer, now)
        self._leaf("firmware-signing", mf, new_mf, _name(f"{self.manufacturer} Firmware Signing", self.manufacturer),
                   ExtendedKeyUsageOID.CODE_SIGNING, SIGNING_DAYS, _ec_key, now)
        self._csms_ca = csms
        return self

    def _ca(self) -> _Ca:
        if self._csms_ca is None:
            ca = self._load("csms-root-ca", datetime.now(UTC))
            if ca is None:
                raise FileNotFoundError(f"no usable CSMS root CA in {self.directory}: call ensure() first")
            self._csms_ca = ca
        return self._csms_ca

    # -- the CPO CA --------------------------------------------------------------------------
    def sign_csr(self, csr_pem: str | bytes, *, days: int = CLIENT_DAYS, now: datetime | None = None) -> str:
        """The certificate chain (PEM, leaf first) for a charge point's PKCS#10 CSR, as
        CertificateSigned.req ``certificateChain`` carries it. The root is the direct
        issuer and the station holds it as its CentralSystemRootCertificate, so the chain
        is the leaf alone. Raises :class:`CsrError` for a CSR that does not parse, is not
        signed by its own key, has a weak key, or lacks CN or O."""
        now = now or datetime.now(UTC)
        data = csr_pem.encode("ascii", errors="replace") if isinstance(csr_pem, str) else bytes(csr_pem)
        try:
            csr = x509.load_pem_x509_csr(data.replace(b"\r\n", b"\n"))
        except ValueError as exc:
            raise CsrError(f"the CSR does not parse as PEM PKCS#10: {exc}") from exc
        if not csr.is_signature_valid:
            raise CsrError("the CSR's signature does not verify with its own public key")
        problem = key_strength_problem(csr.public_key())
        if problem:
            raise CsrError(f"the CSR's key is too weak: {problem}")  # A00.FR.501-503
        for oid, field in ((NameOID.COMMON_NAME, "CN"), (NameOID.ORGANIZATION_NAME, "O (CpoName)")):
            if len(csr.subject.get_attributes_for_oid(oid)) != 1:
                raise CsrError(f"the CSR subject needs exactly one {field}")  # A02.FR.13, A00.FR.405
        ca = self._ca()
        leaf = _issue(ca, csr.subject, csr.public_key(), ExtendedKeyUsageOID.CLIENT_AUTH, days, now)
        return _pem(leaf).decode("ascii")
