"""``twin certs``: the certificate store from the command line, with the station stopped
(or running: every write is atomic, and the station re-reads the store when it starts).

    twin certs list      --data-dir D [--json]
    twin certs import    --data-dir D --type CentralSystemRootCertificate|ManufacturerRootCertificate FILE
    twin certs import-cp --data-dir D --chain FILE [--key FILE]
    twin certs export    --data-dir D --type T --out DIR
    twin certs csr       --data-dir D --cpo-name X --cn Y --out FILE [--rsa BITS]

``import`` applies the checks of InstallCertificate (a valid self-signed CA with a strong
key, M05). ``import-cp`` installs the station's own key pair, e.g. one a lab provisioned;
without ``--key`` the chain must be for the key of the last ``csr`` (offline provisioning:
``csr``, have the CPO's CA sign it, ``import-cp --chain``). ``export`` writes certificates
only, never a private key (A02.FR.05). Exit status: 0 done, 1 refused (the reason is
printed), 2 bad usage or a file that cannot be read or written.
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization

from twin.security import csr as csr_mod
from twin.security import pki
from twin.security.certs import RECONFIGURATION, CertificateStore, write_atomic
from twin.security.pki import CERTIFICATE_USES, CertificateError

CHARGE_POINT = "ChargePointCertificate"  # export only: the station's own chains
MAX_INPUT_BYTES = 1 << 20  # a PEM file larger than this is not a certificate file


class CliError(Exception):
    """A clear message for stderr and an exit status."""

    def __init__(self, message: str, status: int = 2):
        super().__init__(message)
        self.status = status


def add_certs_subcommands(subparsers: Any) -> argparse.ArgumentParser:
    certs = subparsers.add_parser("certs", help="the certificate store (security whitepaper): list, import, export, CSR")
    certs.set_defaults(run_certs=run_certs_command)  # twin.cli dispatches through it
    sub = certs.add_subparsers(dest="certs_command", required=True)

    def data_dir(p: argparse.ArgumentParser) -> None:
        p.add_argument("--data-dir", type=Path, help="the station's data dir (default: from --config, else the default)")
        p.add_argument("--config", type=Path, help="station TOML file, to find the data dir")

    p = sub.add_parser("list", help="the installed roots and the station's certificates (no keys)")
    data_dir(p)
    p.add_argument("--json", action="store_true", help="print JSON")

    p = sub.add_parser("import", help="install a CentralSystemRootCertificate or ManufacturerRootCertificate")
    data_dir(p)
    p.add_argument("--type", required=True, choices=CERTIFICATE_USES, dest="certificate_type")
    p.add_argument("--max-length", type=int, default=20,
                   help="CertificateStoreMaxLength: roots of both types together (default 20)")
    p.add_argument("file", type=Path, help="PEM file holding one self-signed CA certificate")

    p = sub.add_parser("import-cp", help="install the station's own key pair and certificate chain")
    data_dir(p)
    p.add_argument("--chain", required=True, type=Path, help="PEM chain: the station's certificate first, then sub-CAs")
    p.add_argument("--key", type=Path, help="its PEM private key (unencrypted); without it, the key of the last `csr`")

    p = sub.add_parser("export", help="write the certificates of one type to a directory (never keys)")
    data_dir(p)
    p.add_argument("--type", required=True, choices=(*CERTIFICATE_USES, CHARGE_POINT), dest="certificate_type")
    p.add_argument("--out", required=True, type=Path, help="directory (created if missing)")

    p = sub.add_parser("csr", help="a new key pair (kept in the store) and its CSR, for offline provisioning")
    data_dir(p)
    p.add_argument("--cpo-name", required=True, help="the subject O (CpoName)")
    p.add_argument("--cn", required=True, help="the subject CN (the charge point serial number)")
    p.add_argument("--out", required=True, type=Path, help="where to write the PEM CSR")
    p.add_argument("--rsa", type=int, metavar="BITS", help="an RSA key of BITS (>= 2048) instead of ECDSA P-256")
    return certs


def run_certs_command(args: argparse.Namespace) -> int:
    commands = {"list": _list, "import": _import, "import-cp": _import_cp, "export": _export, "csr": _csr}
    try:
        return commands[args.certs_command](args)
    except CliError as exc:
        print(f"twin certs: {exc}", file=sys.stderr)
        return exc.status


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="twin")
    add_certs_subcommands(parser.add_subparsers(dest="command", required=True))
    return run_certs_command(parser.parse_args(argv))


# ------------------------------------------------------------------ helpers
def _now() -> datetime:
    return datetime.now(timezone.utc)


def _data_dir(args: argparse.Namespace) -> Path:
    if args.data_dir is not None:
        return Path(args.data_dir)
    from twin.config import ConfigError, load_config

    try:
        return Path(load_config(args.config).data_dir)
    except ConfigError as exc:
        raise CliError(f"configuration error: {exc}") from exc


def _store(args: argparse.Namespace) -> CertificateStore:
    directory = _data_dir(args)
    # A mistyped data dir must not become a new, empty store the station never reads.
    if not directory.exists():
        raise CliError(f"{directory}: no such data dir (the station creates it on its first start)")
    if not directory.is_dir():
        raise CliError(f"{directory}: is not a directory")
    return CertificateStore(directory)


def _read(path: Path, what: str) -> bytes:
    try:
        if path.stat().st_size > MAX_INPUT_BYTES:
            raise CliError(f"{path}: too large for a {what} ({path.stat().st_size} bytes)")
        return path.read_bytes()
    except FileNotFoundError:
        raise CliError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise CliError(f"{path}: is a directory, not a {what} file") from None
    except OSError as exc:
        raise CliError(f"{path}: cannot read: {exc.strerror or exc}") from None


def _text(path: Path, what: str) -> str:
    data = _read(path, what)
    try:
        return data.decode("ascii")
    except UnicodeDecodeError:
        raise CliError(f"{path}: not a PEM {what} (PEM is ASCII text; DER files must be converted)") from None


def _log_event(data_dir: Path, tech_info: str) -> None:
    """ReconfigurationOfSecurityParameters in the station's security log (A04.FR.04), as
    the station writes it for the same change over OCPP."""
    from twin.security.log import SecurityLog

    try:
        SecurityLog(data_dir).append(RECONFIGURATION, _now(), tech_info)
    except OSError as exc:
        print(f"twin certs: warning: cannot write the security log: {exc.strerror or exc}", file=sys.stderr)


def _guard(fn, *args):
    """Run a store write; a disk error becomes a clear message."""
    try:
        return fn(*args)
    except OSError as exc:
        raise CliError(f"cannot write the certificate store: {exc.strerror or exc}") from None


# ------------------------------------------------------------------ commands
def _list(args: argparse.Namespace) -> int:
    from twin.security.service import describe_inventory

    store = _store(args)
    try:
        snap = describe_inventory(store.inventory(), _now())
    except OSError as exc:
        raise CliError(f"cannot read the certificate store: {exc.strerror or exc}") from None
    if args.json:
        print(json.dumps(snap, indent=2))
        return 0
    print(f"certificate store {store.root}")
    for use, entries in snap["installedCertificates"].items():
        print(f"\n{use}: {len(entries)}")
        for e in entries:
            print(f"  {e['subject']}  valid {e['notBefore']} .. {e['notAfter']}")
            hd = e["hashData"] or {}
            print(f"    SHA256 issuerNameHash {hd.get('issuerNameHash')} issuerKeyHash {hd.get('issuerKeyHash')} "
                  f"serialNumber {hd.get('serialNumber')}")
    print(f"\ncharge point certificates: {len(snap['chargePointCertificates'])}")
    for e in snap["chargePointCertificates"]:
        print(f"  [{e['state']}] {e['subject']}  serial {e['serialNumber']}  issuer {e['issuer']}  "
              f"valid {e['notBefore']} .. {e['notAfter']}")
    pending = f"yes (since {snap['pendingCsrSince']})" if snap["pendingCsrSince"] else "yes"
    print(f"\npending CSR: {pending if snap['pendingCsr'] else 'no'}")
    return 0


def _import(args: argparse.Namespace) -> int:
    store = _store(args)
    text = _text(args.file, "certificate")
    outcome = _guard(store.install_root, args.certificate_type, text, _now(), args.max_length)
    if outcome.status == "Failed":
        raise CliError(f"{args.file}: {outcome.reason}", 1)
    if outcome.status != "Accepted":
        raise CliError(f"{args.file}: refused: {outcome.reason}", 1)
    if outcome.event:
        _log_event(store.root.parent, f"twin certs import: {outcome.reason}")
    print(f"{args.certificate_type}: {outcome.reason}")
    return 0


def _import_cp(args: argparse.Namespace) -> int:
    store = _store(args)
    chain_text = _text(args.chain, "certificate chain")
    try:
        chain = pki.load_certificates(chain_text)
    except CertificateError as exc:
        raise CliError(f"{args.chain}: {exc}", 1) from None
    leaf, now = chain[0], _now()
    problem = pki.validity_problem(leaf, now, allow_future=True) or pki.key_strength_problem(leaf.public_key())
    if problem is None and pki.ca_problem(leaf) is None:
        problem = "the first certificate is a CA certificate, not the station's own"
    if problem:
        raise CliError(f"{args.chain}: {problem}", 1)
    if args.key is not None:
        key_pem = _read(args.key, "private key")
        try:
            credentials = _guard(store.import_charge_point_credentials, chain_text, key_pem)
        except CertificateError as exc:
            raise CliError(f"{args.key}: {exc}", 1) from None
    else:
        pending = store.pending()
        if pending is None:
            raise CliError("no --key given and no pending key (run `twin certs csr` first)", 1)
        key, _subject = pending
        ours = key.public_key().public_bytes(serialization.Encoding.DER,  # type: ignore[attr-defined]
                                             serialization.PublicFormat.SubjectPublicKeyInfo)
        theirs = leaf.public_key().public_bytes(serialization.Encoding.DER,
                                                serialization.PublicFormat.SubjectPublicKeyInfo)
        if ours != theirs:
            raise CliError(f"{args.chain}: the certificate is not for the key of the last CSR", 1)
        credentials = _guard(store.promote_pending, chain, now)
    _log_event(store.root.parent, f"twin certs import-cp: charge point certificate "
                                  f"{pki.serial_hex(leaf.serial_number) if leaf.serial_number > 0 else '?'}")
    active = store.charge_point_credentials(now)
    state = "active from the next connection" if active and active.id == credentials.id else "stored"
    print(f"charge point certificate {leaf.subject.rfc4514_string()} (valid until "
          f"{leaf.not_valid_after_utc.isoformat()}): {state}")
    if now < leaf.not_valid_before_utc:
        print(f"note: valid only from {leaf.not_valid_before_utc.isoformat()}")
    return 0


def _export(args: argparse.Namespace) -> int:
    store = _store(args)
    out: Path = args.out
    if out.exists() and not out.is_dir():
        raise CliError(f"{out}: exists and is not a directory")
    if args.certificate_type == CHARGE_POINT:
        # The chain files hold certificates only; the key is a separate file, never read here.
        try:
            items = [(f"{c.id}.chain.pem", c.chain_file.read_bytes()) for c in store.all_charge_point_credentials()]
            for _name, data in items:
                pki.load_certificates(data)
        except (OSError, CertificateError) as exc:
            raise CliError(f"cannot read the charge point chains: {exc}") from None
    else:
        items = [(f"{pki.fingerprint(c)}.pem", c.public_bytes(serialization.Encoding.PEM))
                 for c in store.roots(args.certificate_type)]
    try:
        out.mkdir(parents=True, exist_ok=True)
        for name, data in items:
            write_atomic(out / name, data, 0o644)
    except OSError as exc:
        raise CliError(f"{out}: cannot write: {exc.strerror or exc}") from None
    print(f"{len(items)} {args.certificate_type} file(s) written to {out}")
    return 0


def _csr(args: argparse.Namespace) -> int:
    store = _store(args)
    out: Path = args.out
    if out.is_dir():
        raise CliError(f"{out}: is a directory; give a file name")
    algorithm, bits = ("rsa", args.rsa) if args.rsa is not None else ("ec", 2048)
    try:
        text = _guard(csr_mod.request_certificate, store, args.cn, args.cpo_name, algorithm, bits, _now())
    except ValueError as exc:
        raise CliError(str(exc)) from None
    try:
        write_atomic(out, text.encode("ascii"), 0o644)
    except OSError as exc:
        raise CliError(f"{out}: cannot write: {exc.strerror or exc}") from None
    print(f"CSR for CN={args.cn}, O={args.cpo_name} written to {out}; the key stays in {store.root / 'chargepoint'}")
    return 0
