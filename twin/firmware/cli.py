"""``twin firmware ...``: build, verify, install and inspect firmware bundles.

The ``twin`` CLI calls :func:`add_firmware_subcommands` with its subparsers and
:func:`run_firmware_command` when the ``firmware`` command was chosen::

    twin firmware build [--version V] [--out DIR] [--source DIR] [--sign KEY.pem --cert CERT.pem]
    twin firmware verify BUNDLE [--signature SIG --cert CERT.pem [--root MFROOT.pem]]
    twin firmware status --data-dir D
    twin firmware install BUNDLE --data-dir D     # manual install (lab): next start runs it on trial

``build --sign`` signs the bundle for SignedUpdateFirmware (whitepaper L01): SHA-256
over the whole file, ECDSA for an EC key, RSA PKCS#1 v1.5 for an RSA key (what
``openssl dgst -sha256 -sign`` makes). Next to the bundle it writes ``<bundle>.sig``
(the Base64 signature), ``<bundle>.cert.pem`` (the signing certificate) and
``<bundle>.firmware.json`` (the request's ``firmware`` object without ``location``
and the dates), and prints a JSON naming them.

Exit codes: 0 ok, 1 the operation failed (message on stderr), 2 usage.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import twin
from twin.firmware import slots
from twin.firmware.bundle import BundleError, build_bundle, bump_version, verify_bundle
from twin.security import firmware_sig, pki
from twin.security.certs import CERT_MAX_CHARS

__all__ = ["add_firmware_subcommands", "run_firmware_command"]


def _default_source() -> Path:
    # The tree this `twin` was imported from: the working tree when run from a checkout.
    return Path(twin.__file__).resolve().parent.parent


def add_firmware_subcommands(subparsers: Any) -> argparse.ArgumentParser:
    parser = subparsers.add_parser("firmware", help="build, verify, install and inspect firmware bundles",
                                   description="Firmware bundles of ocpp-twin (docs/firmware.md).")
    commands = parser.add_subparsers(dest="firmware_command", metavar="COMMAND", required=True)

    build = commands.add_parser("build", help="build a release bundle from the working tree")
    build.add_argument("--version", help=f"version to stamp (default: {bump_version(twin.__version__)}, "
                                         "the running one with its last component bumped)")
    build.add_argument("--out", type=Path, default=Path("dist"), help="output directory (default: dist)")
    build.add_argument("--source", type=Path, default=None,
                       help="directory holding twin/ and drivers/ (default: where this twin is imported from)")
    build.add_argument("--sign", type=Path, metavar="KEY.pem",
                       help="sign the bundle with this private key (PEM, unencrypted) for SignedUpdateFirmware")
    build.add_argument("--cert", type=Path, metavar="CERT.pem", help="the signing certificate of --sign's key")

    verify = commands.add_parser("verify", help="check a bundle (and its signature) and print its manifest")
    verify.add_argument("bundle", type=Path)
    verify.add_argument("--signature", metavar="SIG",
                        help="the Base64 signature, or a file holding it (e.g. BUNDLE.sig)")
    verify.add_argument("--cert", type=Path, metavar="CERT.pem", help="the signing certificate")
    verify.add_argument("--root", type=Path, action="append", metavar="MFROOT.pem",
                        help="a ManufacturerRootCertificate the signing certificate must come from (repeatable)")

    status = commands.add_parser("status", help="show the firmware slots and any trial or pending report")
    status.add_argument("--data-dir", type=Path, required=True)

    install = commands.add_parser("install", help="install a bundle into a slot; the next start runs it on trial")
    install.add_argument("bundle", type=Path)
    install.add_argument("--data-dir", type=Path, required=True)
    return parser


def run_firmware_command(args: argparse.Namespace) -> int:
    try:
        if args.firmware_command == "build":
            if (args.sign is None) != (args.cert is None):
                print("twin firmware build: --sign and --cert go together", file=sys.stderr)
                return 2
            # Check the key and certificate before building: a bad pair wastes no build.
            signer = _load_signer(args.sign, args.cert) if args.sign is not None else None
            version = args.version or bump_version(twin.__version__)
            path = build_bundle(args.source or _default_source(), version, args.out)
            if signer is None:
                print(path)
            else:
                print(json.dumps(_sign_bundle(path, *signer), indent=2))
        elif args.firmware_command == "verify":
            if (args.signature is None) != (args.cert is None) or (args.root and args.signature is None):
                print("twin firmware verify: --signature and --cert go together (--root needs both)", file=sys.stderr)
                return 2
            manifest = verify_bundle(args.bundle)
            if args.signature is not None:
                problem = _signature_problem(args.bundle, args.signature, args.cert, args.root or [])
                if problem:
                    print(f"twin firmware verify: {args.bundle.name}: {problem}", file=sys.stderr)
                    return 1
            print(manifest.to_json(), end="")
        elif args.firmware_command == "status":
            print(json.dumps(_status(args.data_dir), indent=2))
        elif args.firmware_command == "install":
            manifest = slots.install_slot(args.data_dir, args.bundle)
            slots.switch_to_trial(args.data_dir, manifest.version)
            print(f"installed {manifest.version}; it runs on trial at the next start of the station")
        else:
            print(f"twin firmware: unknown command {args.firmware_command!r}", file=sys.stderr)
            return 2
    except (BundleError, slots.SlotError, pki.CertificateError, ValueError, OSError) as exc:
        print(f"twin firmware {args.firmware_command}: {exc}", file=sys.stderr)
        return 1
    return 0


def _load_signer(key_file: Path, cert_file: Path) -> tuple[bytes, str]:
    """(key PEM, certificate PEM), checked to belong together."""
    key_pem = key_file.read_bytes()
    cert_pem = cert_file.read_text(encoding="utf-8")
    certs = pki.load_certificates(cert_pem)
    if len(certs) != 1:
        raise ValueError(f"{cert_file}: {len(certs)} certificates; the signing certificate alone is expected")
    if len(cert_pem) > CERT_MAX_CHARS:
        raise ValueError(f"{cert_file}: longer than {CERT_MAX_CHARS} characters (SignedUpdateFirmware "
                         "signingCertificate)")
    from cryptography.hazmat.primitives import serialization

    try:
        key = serialization.load_pem_private_key(key_pem, password=None)
    except (ValueError, TypeError) as exc:
        raise ValueError(f"{key_file}: not an unencrypted PEM private key") from exc
    der = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    if key.public_key().public_bytes(*der) != certs[0].public_key().public_bytes(*der):
        raise ValueError(f"{key_file} is not the key of the certificate in {cert_file}")
    return key_pem, pki.load_certificates(cert_pem)[0].public_bytes(serialization.Encoding.PEM).decode("ascii")


def _sign_bundle(bundle: Path, key_pem: bytes, cert_pem: str) -> dict[str, Any]:
    signature = firmware_sig.sign_file(bundle, key_pem)
    verdict = firmware_sig.verify_file_signature(bundle, signature, cert_pem)
    if not verdict.ok:  # not expected: the key matches the certificate
        raise ValueError(f"the new signature does not verify: {verdict.reason}")
    firmware = {"signingCertificate": cert_pem, "signature": signature}
    files = {"signature_file": bundle.with_name(bundle.name + ".sig"),
             "certificate_file": bundle.with_name(bundle.name + ".cert.pem"),
             "firmware_file": bundle.with_name(bundle.name + ".firmware.json")}
    files["signature_file"].write_text(signature + "\n", encoding="ascii")
    files["certificate_file"].write_text(cert_pem, encoding="ascii")
    files["firmware_file"].write_text(json.dumps(firmware, indent=2) + "\n", encoding="ascii")
    return {"bundle": str(bundle), **{k: str(v) for k, v in files.items()}, "firmware": firmware}


def _signature_problem(bundle: Path, signature: str, cert_file: Path, root_files: list[Path]) -> str | None:
    """Why the bundle's signature would be refused by a station, or None when it is good."""
    candidate = Path(signature)
    try:
        if len(signature) < 4096 and candidate.is_file():
            signature = candidate.read_text(encoding="ascii").strip()
    except (OSError, UnicodeDecodeError) as exc:
        return f"cannot read the signature file {candidate}: {exc}"
    cert_pem = cert_file.read_text(encoding="utf-8")
    if root_files:
        roots = [cert for path in root_files for cert in pki.load_certificates(path.read_bytes())]
        from datetime import datetime, timezone

        verdict = firmware_sig.check_signing_certificate(cert_pem, roots, datetime.now(timezone.utc))
        if not verdict.ok:
            return f"signing certificate refused ({verdict.status}): {verdict.reason}"
    verdict = firmware_sig.verify_file_signature(bundle, signature, cert_pem)
    return None if verdict.ok else f"{verdict.status}: {verdict.reason}"


def _status(data_dir: Path) -> dict[str, Any]:
    state = slots.read_state(data_dir)
    slot_dir = slots.firmware_dir(data_dir) / "slots"
    installed = sorted(p.name for p in slot_dir.iterdir() if p.is_dir() and not p.name.startswith(".")) \
        if slot_dir.is_dir() else []
    return {"base_version": twin.__version__, **state.to_json(), "installed_slots": installed}
