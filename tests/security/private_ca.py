"""A private PKI for the security tests, made with `cryptography`: roots, a CSMS server
certificate (CN = localhost, no SAN, as OCPP wants), charge point and firmware-signing
certificates, and the broken variants the negative cases need."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from ocpp.messages import MessageType, get_validator

NOW = datetime.now(timezone.utc)
SERVER_AUTH = ExtendedKeyUsageOID.SERVER_AUTH
CLIENT_AUTH = ExtendedKeyUsageOID.CLIENT_AUTH
CODE_SIGNING = ExtendedKeyUsageOID.CODE_SIGNING


def name(cn: str, o: str = "TestCPO") -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, o), x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def ec_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def rsa_key(bits: int = 2048) -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=bits)


def pem(cert: x509.Certificate) -> str:
    return cert.public_bytes(serialization.Encoding.PEM).decode("ascii")


def key_pem(key) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _usage(*, cert_sign: bool) -> x509.KeyUsage:
    return x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                         data_encipherment=False, key_agreement=False, key_cert_sign=cert_sign, crl_sign=cert_sign,
                         encipher_only=False, decipher_only=False)


@dataclass
class Ca:
    """A CA: its key and certificate, and a method to issue certificates."""

    key: object
    cert: x509.Certificate
    pss: bool = False  # sign with RSA-PSS instead of PKCS#1 v1.5

    @property
    def pem(self) -> str:
        return pem(self.cert)

    def _sign(self, builder: x509.CertificateBuilder) -> x509.Certificate:
        if self.pss:
            return builder.sign(self.key, hashes.SHA256(),
                                rsa_padding=padding.PSS(mgf=padding.MGF1(hashes.SHA256()),
                                                        salt_length=padding.PSS.DIGEST_LENGTH))
        return builder.sign(self.key, hashes.SHA256())

    def issue(self, subject: x509.Name, public_key, eku=None, *, ca: bool = False, path_length: int | None = None,
              start: timedelta = timedelta(minutes=-5), days: float = 30, serial: int | None = None,
              key_usage: x509.KeyUsage | None = None, san: list[str] | None = None,
              extra: list[tuple[x509.ExtensionType, bool]] = ()) -> x509.Certificate:
        builder = (x509.CertificateBuilder().subject_name(subject).issuer_name(self.cert.subject)
                   .public_key(public_key).serial_number(serial if serial is not None else x509.random_serial_number())
                   .not_valid_before(NOW + start).not_valid_after(NOW + start + timedelta(days=days))
                   .add_extension(x509.BasicConstraints(ca=ca, path_length=path_length), critical=True)
                   .add_extension(key_usage or _usage(cert_sign=ca), critical=True))
        if eku is not None:
            builder = builder.add_extension(x509.ExtendedKeyUsage([eku]), critical=False)
        if san:
            builder = builder.add_extension(x509.SubjectAlternativeName([x509.DNSName(n) for n in san]), critical=False)
        for ext, critical in extra:
            builder = builder.add_extension(ext, critical=critical)
        return self._sign(builder)

    def sub_ca(self, cn: str, key=None, path_length: int | None = None) -> Ca:
        key = key or ec_key()
        return Ca(key, self.issue(name(cn), key.public_key(), ca=True, path_length=path_length))

    def leaf(self, cn: str, eku, key=None, o: str = "TestCPO", **kw) -> tuple[object, x509.Certificate]:
        key = key or ec_key()
        return key, self.issue(name(cn, o), key.public_key(), eku, **kw)


def make_root(cn: str = "Test Root", key=None, *, days: float = 365, start: timedelta = timedelta(minutes=-5),
              path_length: int | None = None, pss: bool = False, serial: int | None = None,
              ca: bool = True) -> Ca:
    key = key or ec_key()
    subject = name(cn)
    builder = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
               .serial_number(serial if serial is not None else x509.random_serial_number())
               .not_valid_before(NOW + start).not_valid_after(NOW + start + timedelta(days=days))
               .add_extension(x509.BasicConstraints(ca=ca, path_length=path_length), critical=True)
               .add_extension(_usage(cert_sign=ca), critical=True)
               .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False))
    root = Ca(key, None, pss=pss)  # type: ignore[arg-type]
    root.cert = root._sign(builder)
    return root


@dataclass
class Pki:
    """Everything the TLS tests need, also as files for ssl contexts."""

    directory: Path
    root: Ca = field(init=False)
    files: dict[str, Path] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.root = make_root("CSMS Root")

    def write(self, label: str, data: str | bytes) -> Path:
        path = self.directory / label
        path.write_bytes(data.encode() if isinstance(data, str) else data)
        self.files[label] = path
        return path

    def server_pair(self, label: str, ca: Ca | None = None, cn: str = "localhost", key=None,
                    **kw) -> tuple[Path, Path]:
        key, cert = (ca or self.root).leaf(cn, SERVER_AUTH, key=key, **kw)
        return self.write(f"{label}.pem", pem(cert)), self.write(f"{label}.key", key_pem(key))


def validate(action: str, payload: dict, *, response: bool) -> None:
    """Validate against the OCPP 1.6 security schemas shipped with the `ocpp` package."""
    kind = MessageType.CallResult if response else MessageType.Call
    get_validator(kind, action, "1.6").validate(payload)
