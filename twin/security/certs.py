"""The certificate store: CentralSystemRootCertificates, ManufacturerRootCertificates and
the charge point's own key pairs with their certificate chains, in ``<data_dir>/certs``.

Layout (directories mode 0700, private keys 0600, every file written to a temp file,
fsynced, renamed, and the directory fsynced, so a power cut leaves the old or the new
file)::

    certs/CentralSystemRootCertificate/<sha256>.pem   one root per file
    certs/ManufacturerRootCertificate/<sha256>.pem
    certs/chargepoint/pending.key.pem                  the key of the last CSR (0600)
    certs/chargepoint/pending.json                     the subject that CSR asked for
    certs/chargepoint/<sha256>.chain.pem               leaf first, then sub-CAs
    certs/chargepoint/<sha256>.key.pem                 its private key (0600)

``<sha256>`` is the SHA-256 fingerprint of the (leaf) certificate. Private keys are never
logged, never returned over OCPP (whitepaper A02.FR.05) and are not part of the
diagnostics file (which holds log files and redacted facts, not the data dir).

The operations follow the messages: :meth:`CertificateStore.install_root`
(InstallCertificate, whitepaper use case M05), :meth:`CertificateStore.installed_ids`
(GetInstalledCertificateIds, M03), :meth:`CertificateStore.delete` (DeleteCertificate,
M04). They return the OCPP status plus the security event the caller raises.

The store does not implement AdditionalRootCertificateCheck = true (M05.FR.08-13, a new
CentralSystemRootCertificate cross-signed by the old one, and the old one kept as a
fallback anchor): the twin reports that key as false.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import threading
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from twin.security import pki
from twin.security.pki import CENTRAL_SYSTEM_ROOT, CERTIFICATE_USES, CertificateError

log = logging.getLogger(__name__)

RECONFIGURATION = "ReconfigurationOfSecurityParameters"
CERT_MAX_CHARS = 5500  # InstallCertificate.req certificate, and SignCertificate.req csr
# A02.FR.10: keep the previous charge point certificate about a month as a fallback.
FALLBACK_KEEP = timedelta(days=31)


@dataclass(frozen=True)
class Outcome:
    """The answer to one certificate message: the OCPP ``status``, the security event the
    caller raises (None for none) and why, for the security log."""

    status: str
    event: str | None = None
    reason: str = ""


@dataclass(frozen=True)
class ChargePointCredentials:
    """One charge point key pair and its chain, as files for ``SSLContext.load_cert_chain``."""

    certificate: x509.Certificate
    chain_file: Path
    key_file: Path

    @property
    def id(self) -> str:
        return pki.fingerprint(self.certificate)

    def __repr__(self) -> str:  # names the files, never their content
        return f"ChargePointCredentials({self.id[:16]}..., {self.chain_file.name})"


@dataclass(frozen=True)
class Inventory:
    """The certificates in the store (see :meth:`CertificateStore.inventory`)."""

    roots: Mapping[str, list[x509.Certificate]]
    charge_point: list[x509.Certificate]  # the leaf of each pair, newest notBefore first
    pending: bool  # a CSR was sent and its certificate has not arrived
    pending_requested_at: datetime | None = None


def fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: Path, data: bytes, mode: int) -> None:
    """Write ``data`` so readers see the old or the new file, even across a power cut; the
    file has ``mode`` from its first byte (a key is never readable by others, not even
    for a moment)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        try:
            os.fchmod(fd, mode)  # the umask may have taken bits away; never added any
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
    fsync_dir(path.parent)


def _key_pem(key: object) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM,  # type: ignore[attr-defined]
                             serialization.PrivateFormat.PKCS8, serialization.NoEncryption())


def _public_der(key: object) -> bytes:
    return key.public_bytes(serialization.Encoding.DER,  # type: ignore[attr-defined]
                            serialization.PublicFormat.SubjectPublicKeyInfo)


def _check_use(certificate_type: str) -> None:
    if certificate_type not in CERTIFICATE_USES:
        raise ValueError(f"certificateType {certificate_type!r} is not one of {', '.join(CERTIFICATE_USES)}")


class CertificateStore:
    """The certificate store in ``<data_dir>/certs``. Every method blocks on file I/O
    (a few small files): call it off the event loop if that matters."""

    def __init__(self, data_dir: Path | str):
        self.root = Path(data_dir) / "certs"
        self._lock = threading.RLock()

    def __repr__(self) -> str:
        return f"CertificateStore({str(self.root)!r})"

    # -- directories ---------------------------------------------------------------

    def _dir(self, name: str) -> Path:
        path = self.root / name
        for directory in (self.root, path):
            directory.mkdir(mode=0o700, parents=True, exist_ok=True)
            os.chmod(directory, 0o700)
        return path

    def _cp_dir(self) -> Path:
        return self._dir("chargepoint")

    # -- roots -----------------------------------------------------------------------

    def roots(self, certificate_type: str) -> list[x509.Certificate]:
        """The installed roots of one type, oldest file first. A file that no longer parses
        (edited by hand) is skipped with a warning rather than stopping the station."""
        _check_use(certificate_type)
        directory = self.root / certificate_type
        with self._lock:
            if not directory.is_dir():
                return []
            found = []
            for path in directory.glob("*.pem"):
                try:
                    found.append((path.stat().st_mtime_ns, path.name, pki.load_certificates(path.read_bytes())[0]))
                except (OSError, CertificateError) as exc:
                    log.warning("certificate store: skipping %s: %s", path.name, exc)
        return [cert for _mtime, _name, cert in sorted(found, key=lambda entry: entry[:2])]

    def roots_pem(self, certificate_type: str) -> str:
        """The installed roots of one type as one PEM text (``SSLContext`` ``cadata``)."""
        return "".join(cert.public_bytes(serialization.Encoding.PEM).decode("ascii")
                       for cert in self.roots(certificate_type))

    def root_count(self) -> int:
        """Roots of both types: CertificateStoreMaxLength counts "Root/CA certificates
        installed" (whitepaper §7), so both uses share it."""
        return sum(len(self.roots(use)) for use in CERTIFICATE_USES)

    def install_root(self, certificate_type: str, pem: str, now: datetime, max_length: int) -> Outcome:
        """InstallCertificate (M05). Accepted when stored; Rejected when the text is not one
        valid CA certificate, is a weak key, or the store already holds ``max_length``
        roots (M05.FR.03/06); Failed when it is valid but could not be written (M05.FR.04).

        Only self-signed CA certificates are taken: a leaf or an intermediate could not be
        listed or deleted afterwards, as its issuer's key (needed for issuerKeyHash) is
        not in the store (the trap EVerest fell into)."""
        _check_use(certificate_type)
        if len(pem) > CERT_MAX_CHARS:
            return Outcome("Rejected", reason=f"certificate longer than {CERT_MAX_CHARS} characters")
        try:
            certs = pki.load_certificates(pem)
        except CertificateError as exc:
            return Outcome("Rejected", reason=str(exc))
        if len(certs) != 1:
            return Outcome("Rejected", reason=f"{len(certs)} certificates given, one expected")
        cert = certs[0]
        problem = self._root_problem(cert, now)
        if problem:
            return Outcome("Rejected", reason=problem)
        with self._lock:
            path = self.root / certificate_type / f"{pki.fingerprint(cert)}.pem"
            if path.exists():
                return Outcome("Accepted", reason="already installed")
            if self.root_count() >= max_length:
                return Outcome("Rejected", reason=f"the store is full (CertificateStoreMaxLength {max_length})")
            try:
                self._dir(certificate_type)
                write_atomic(path, cert.public_bytes(serialization.Encoding.PEM), 0o644)
            except OSError as exc:
                return Outcome("Failed", reason=f"could not store the certificate: {exc.strerror or exc}")
        return Outcome("Accepted", RECONFIGURATION, f"installed {certificate_type} {cert.subject.rfc4514_string()}")

    @staticmethod
    def _root_problem(cert: x509.Certificate, now: datetime) -> str | None:
        try:
            pki.serial_hex(cert.serial_number)  # the hash data needs a positive serial
        except CertificateError as exc:
            return str(exc)
        problem = (pki.ca_problem(cert) or pki.validity_problem(cert, now)
                   or pki.key_strength_problem(cert.public_key()))
        if problem:
            return problem
        if not pki.is_self_signed(cert):
            return "not a self-signed root certificate"
        return None

    def installed_ids(self, certificate_type: str, algorithm: str = "SHA256") -> list[dict[str, str]]:
        """CertificateHashData of every installed root of one type (M03.FR.02-04)."""
        return [pki.hash_data(cert, cert, algorithm) for cert in self.roots(certificate_type)]

    def installed_ids_response(self, certificate_type: str) -> dict[str, object]:
        """The GetInstalledCertificateIds.conf payload. With nothing installed it is
        NotFound *without* certificateHashData: the schema has minItems 1, so an empty list
        fails validation."""
        ids = self.installed_ids(certificate_type)
        if not ids:
            return {"status": "NotFound"}
        return {"status": "Accepted", "certificateHashData": ids}

    def find_root(self, hash_data: Mapping[str, object]) -> tuple[str, x509.Certificate] | None:
        """The installed root (type, certificate) that ``hash_data`` names, computing each
        root's hash data with the request's hashAlgorithm."""
        algorithm = str(hash_data.get("hashAlgorithm", ""))
        if algorithm not in pki.HASH_ALGORITHMS:
            raise ValueError(f"hashAlgorithm {algorithm!r} is not one of {', '.join(pki.HASH_ALGORITHMS)}")
        for use in CERTIFICATE_USES:
            for cert in self.roots(use):
                if pki.same_hash_data(pki.hash_data(cert, cert, algorithm), hash_data):
                    return use, cert
        return None

    def delete(self, hash_data: Mapping[str, object], in_use: Collection[str] = ()) -> Outcome:
        """DeleteCertificate (M04). ``in_use`` holds the ids (:func:`pki.fingerprint`) of the
        CentralSystemRootCertificates that validate the live connection (see
        :meth:`roots_in_use`): deleting one is Failed (M04.FR.06). Not found is NotFound
        (FR.04); the charge point's own certificate is never found here (FR.05). Deleting
        the last root that is not in use is allowed (M04 remarks)."""
        with self._lock:
            found = self.find_root(hash_data)
            if found is None:
                return Outcome("NotFound", reason="no installed root has that hash data")
            use, cert = found
            cert_id = pki.fingerprint(cert)
            if use == CENTRAL_SYSTEM_ROOT and cert_id in in_use:
                return Outcome("Failed", reason="the root validates the current connection")
            path = self.root / use / f"{cert_id}.pem"
            try:
                path.unlink()
                fsync_dir(path.parent)
            except OSError as exc:
                return Outcome("Failed", reason=f"could not delete the certificate: {exc.strerror or exc}")
        return Outcome("Accepted", RECONFIGURATION, f"deleted {use} {cert.subject.rfc4514_string()}")

    # -- the CSMS server certificate -------------------------------------------------------

    def validate_server_chain(self, chain: list[x509.Certificate], hostname: str, now: datetime) -> pki.PathResult:
        """Validate a CSMS server certificate chain (leaf first) against the installed
        CentralSystemRootCertificates only, never the system's CAs, and its name against
        ``hostname`` (A00.FR.307-308, 411-412)."""
        result = pki.validate_path(chain, self.roots(CENTRAL_SYSTEM_ROOT), now)
        if result.ok and not pki.name_matches(chain[0], hostname):
            return pki.PathResult(None, f"certificate does not name {hostname!r}")
        return result

    def roots_in_use(self, peer_chain_der: Iterable[bytes], now: datetime) -> set[str]:
        """The ids of the CentralSystemRootCertificates that validate the live connection,
        for :meth:`delete`. ``peer_chain_der`` is the server's chain, leaf first, as DER:
        ``SSLObject.get_verified_chain()`` on Python 3.13+, or only the leaf
        (``getpeercert(binary_form=True)``) before that. When no installed root validates
        what is given (a sub-CA the leaf alone does not show), every CentralSystemRoot
        counts as in use: refusing a deletion is better than cutting the connection off."""
        roots = self.roots(CENTRAL_SYSTEM_ROOT)
        try:
            chain = [x509.load_der_x509_certificate(der) for der in peer_chain_der]
        except ValueError:
            chain = []
        result = pki.validate_path(chain, roots, now) if chain else pki.PathResult(None, "no chain")
        if result.anchor is not None:
            return {pki.fingerprint(result.anchor)}
        return {pki.fingerprint(root) for root in roots}

    # -- the charge point's key pair ---------------------------------------------------------

    def put_pending_key(self, key: object, subject: Mapping[str, str], requested_at: datetime | None = None) -> None:
        """Keep the key of a CSR just sent, with the subject it asked for, until the
        matching certificate arrives (a restart in between loses nothing). A new request
        replaces it: every CSR gets a new key pair (A02.FR.02). ``requested_at`` is kept
        beside it, so the renewal timer asks at most once a day, across restarts too."""
        record: dict[str, object] = {"subject": dict(subject)}
        if requested_at is not None:
            record["requestedAt"] = requested_at.isoformat()
        with self._lock:
            directory = self._cp_dir()
            write_atomic(directory / "pending.key.pem", _key_pem(key), 0o600)
            write_atomic(directory / "pending.json", json.dumps(record, sort_keys=True).encode(), 0o600)

    def _pending_record(self) -> dict:
        record = json.loads((self.root / "chargepoint" / "pending.json").read_text(encoding="utf-8"))
        if not isinstance(record, dict):
            raise ValueError("pending.json is not an object")
        if "subject" not in record:  # the first layout held the subject alone
            record = {"subject": record}
        if not isinstance(record["subject"], dict):
            raise ValueError("pending.json has no subject object")
        return record

    def pending_requested_at(self) -> datetime | None:
        """When the pending CSR was made, or None (no pending key, or not recorded)."""
        try:
            value = self._pending_record().get("requestedAt")
            return datetime.fromisoformat(value) if isinstance(value, str) else None
        except (OSError, ValueError, TypeError):
            return None

    def pending(self) -> tuple[object, dict[str, str]] | None:
        """The pending (key, subject), or None."""
        directory = self.root / "chargepoint"
        try:
            key = serialization.load_pem_private_key((directory / "pending.key.pem").read_bytes(), password=None)
            subject = self._pending_record()["subject"]
        except FileNotFoundError:
            return None
        except (OSError, ValueError, TypeError) as exc:
            log.warning("certificate store: the pending key is unreadable (%s); a new CSR is needed",
                        type(exc).__name__)
            return None
        return key, {str(k): str(v) for k, v in subject.items()}

    def promote_pending(self, chain: list[x509.Certificate], now: datetime) -> ChargePointCredentials:
        """Store ``chain`` (leaf first) with the pending key as a charge point key pair and
        drop the pending key. The caller checked that the leaf matches that key. It is used
        from the next connection on (:meth:`charge_point_credentials`)."""
        with self._lock:
            pending = self.pending()
            if pending is None:
                raise CertificateError("no pending key")
            key, _subject = pending
            credentials = self._store_pair(chain, key)
            directory = self._cp_dir()
            for name in ("pending.key.pem", "pending.json"):
                with contextlib.suppress(FileNotFoundError):
                    (directory / name).unlink()
            fsync_dir(directory)
            self.prune_charge_point_certificates(now)
            return credentials

    def import_charge_point_credentials(self, chain_pem: str | bytes, key_pem: bytes) -> ChargePointCredentials:
        """Install a factory key pair and chain (leaf first) from outside OCPP, e.g. a
        bench's provisioning step. The key must match the leaf."""
        chain = pki.load_certificates(chain_pem)
        try:
            key = serialization.load_pem_private_key(key_pem, password=None)
        except (ValueError, TypeError) as exc:
            raise CertificateError("the private key does not parse (PEM, unencrypted)") from exc
        if _public_der(key.public_key()) != _public_der(chain[0].public_key()):
            raise CertificateError("the private key does not belong to the first certificate")
        with self._lock:
            return self._store_pair(chain, key)

    def _store_pair(self, chain: list[x509.Certificate], key: object) -> ChargePointCredentials:
        directory = self._cp_dir()
        cert_id = pki.fingerprint(chain[0])
        chain_file, key_file = directory / f"{cert_id}.chain.pem", directory / f"{cert_id}.key.pem"
        # The key first: a chain file without its key would be a pair that cannot be used.
        write_atomic(key_file, _key_pem(key), 0o600)
        write_atomic(chain_file, b"".join(c.public_bytes(serialization.Encoding.PEM) for c in chain), 0o644)
        return ChargePointCredentials(chain[0], chain_file, key_file)

    def all_charge_point_credentials(self) -> list[ChargePointCredentials]:
        """Every stored charge point pair, newest notBefore first."""
        directory = self.root / "chargepoint"
        if not directory.is_dir():
            return []
        found = []
        for chain_file in directory.glob("*.chain.pem"):
            key_file = chain_file.with_name(chain_file.name.removesuffix(".chain.pem") + ".key.pem")
            if not key_file.exists():
                continue
            try:
                leaf = pki.load_certificates(chain_file.read_bytes())[0]
            except (OSError, CertificateError) as exc:
                log.warning("certificate store: skipping %s: %s", chain_file.name, exc)
                continue
            try:
                stored_at = chain_file.stat().st_mtime_ns
            except OSError:
                continue
            found.append((leaf.not_valid_before_utc, stored_at, ChargePointCredentials(leaf, chain_file, key_file)))
        # Newest notBefore first; of equal ones the one stored last (a renewal within the second).
        found.sort(key=lambda entry: entry[:2], reverse=True)
        return [entry[2] for entry in found]

    def inventory(self) -> Inventory:
        """What the store holds, certificates only (no key is read): for the control API's
        state and ``twin certs list``."""
        with self._lock:
            return Inventory(roots={use: self.roots(use) for use in CERTIFICATE_USES},
                             charge_point=[c.certificate for c in self.all_charge_point_credentials()],
                             pending=(self.root / "chargepoint" / "pending.key.pem").exists(),
                             pending_requested_at=self.pending_requested_at())

    def charge_point_credentials(self, now: datetime) -> ChargePointCredentials | None:
        """The pair to present on the next connection: of those valid at ``now``, the one
        with the newest notBefore (A02.FR.08/09). A certificate stored by CertificateSigned
        is thus used from the next connection on, once its validity has started."""
        for credentials in self.all_charge_point_credentials():
            if pki.validity_problem(credentials.certificate, now) is None:
                return credentials
        return None

    def fallback_charge_point_credentials(self, now: datetime) -> ChargePointCredentials | None:
        """The next-newest valid pair, to try when the current one fails (A02.FR.10)."""
        valid = [c for c in self.all_charge_point_credentials() if pki.validity_problem(c.certificate, now) is None]
        return valid[1] if len(valid) > 1 else None

    def prune_charge_point_certificates(self, now: datetime) -> list[str]:
        """Remove expired pairs, and older pairs once the current one has been usable for
        a month (A02.FR.10). Returns the ids removed."""
        with self._lock:
            current = self.charge_point_credentials(now)
            removed = []
            for credentials in self.all_charge_point_credentials():
                if current is not None and credentials.id == current.id:
                    continue
                cert = credentials.certificate
                expired = now > cert.not_valid_after_utc
                superseded = (current is not None
                              and cert.not_valid_before_utc < current.certificate.not_valid_before_utc
                              and now >= current.certificate.not_valid_before_utc + FALLBACK_KEEP)
                if expired or superseded:
                    for path in (credentials.chain_file, credentials.key_file):
                        with contextlib.suppress(FileNotFoundError):
                            path.unlink()
                    removed.append(credentials.id)
            if removed:
                fsync_dir(self.root / "chargepoint")
            return removed
