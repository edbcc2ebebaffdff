"""`python -m twin.csms` / `twin csms`: a standalone CSMS that prints every message, to point a station at.

``--security-profile N`` serves security profile N of the OCPP 1.6 security whitepaper:
1 = ws:// + HTTP Basic, 2 = wss:// + HTTP Basic, 3 = wss:// + TLS client certificate.
Profiles 2 and 3 use (and on first use create) the private PKI in ``--pki DIR``
(`twin.csms.pki`); the CSMS then also signs the CSRs of SignCertificate.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import secrets
import signal
import ssl
import sys
from pathlib import Path

from twin.csms.pki import CsmsPki, CsrError
from twin.csms.server import Csms
from twin.security.auth_key import AuthorizationKeyError, authorization_key_bytes

DEFAULT_PKI = Path("csms-pki")


def add_csms_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of `twin csms` (shared with twin/cli.py)."""
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1; 0.0.0.0 for all)")
    parser.add_argument("--port", type=int, default=9000, help="TCP port (default 9000)")
    parser.add_argument("--heartbeat-interval", type=int, default=30, help="interval in BootNotification.conf (s)")
    parser.add_argument("--boot-status", choices=["Accepted", "Pending", "Rejected"], default="Accepted")
    parser.add_argument("--charge-point-id", help="accept only this charge point identity")
    parser.add_argument("--security-profile", type=int, choices=[0, 1, 2, 3], default=None,
                        help="serve OCPP security profile N: 1 = ws + Basic, 2 = wss + Basic, 3 = wss + client "
                             "certificate (default: 0, or what --password/--tls-cert imply)")
    parser.add_argument("--authorization-key", metavar="KEY",
                        help="the AuthorizationKey (Basic password) of profiles 1 and 2: 32-40 hex digits or 16-20 "
                             "characters; a random one is made and printed when left out")
    parser.add_argument("--pki", type=Path, metavar="DIR",
                        help=f"private PKI directory for profiles 2 and 3, created on first use (default ./{DEFAULT_PKI})")
    parser.add_argument("--tls-host", default="localhost", metavar="NAME",
                        help="DNS name in the server certificate's CN and in the URL (default localhost; "
                             "not an IP address: stations match it against the CN)")
    parser.add_argument("--sign-csr", type=Path, metavar="FILE",
                        help="sign this PEM CSR with the PKI's CSMS root, print the certificate and exit "
                             "(provisions a profile 3 station out of band)")
    parser.add_argument("--password", help="older name of --authorization-key (HTTP Basic, profile 1)")
    parser.add_argument("--tls-cert", help="PEM certificate chain: serve wss:// (profile 2) with this instead of --pki")
    parser.add_argument("--tls-key", help="PEM private key for --tls-cert")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="twin csms",
        description="Run a small OCPP 1.6J central system and log every message. "
        "A station connects to ws(s)://HOST:PORT/<charge point id> with subprotocol ocpp1.6.",
    )
    add_csms_arguments(parser)
    return parser


def _fail(text: str, code: int = 2) -> int:
    print(f"twin csms: {text}", file=sys.stderr)
    return code


def main(argv: list[str] | None = None) -> int:
    return run(build_parser().parse_args(argv))


def run(args: argparse.Namespace) -> int:
    """Serve with parsed options (`add_csms_arguments`)."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stdout)
    key = args.authorization_key or args.password
    profile = args.security_profile
    pki_dir = args.pki or DEFAULT_PKI
    if args.sign_csr is not None:
        return _sign_csr(CsmsPki(pki_dir, args.tls_host), args.sign_csr)
    if profile is None:  # the older options alone
        profile = (2 if key else 0) if args.tls_cert else (1 if key else 0)
    generated = False
    if profile in (1, 2):
        if key is None:
            key, generated = secrets.token_hex(20).upper(), True  # 20 random bytes as 40 hex digits
        elif args.password is None:
            try:
                authorization_key_bytes(key)
            except AuthorizationKeyError as exc:
                return _fail(f"--authorization-key: {exc}")
    pki = None
    try:
        if args.tls_cert:
            if profile == 3:
                return _fail("--tls-cert serves profile 2; profile 3 uses --pki for the client CA")
            ssl_context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ssl_context.minimum_version = ssl.TLSVersion.TLSv1_2
            ssl_context.load_cert_chain(args.tls_cert, args.tls_key)
            csms = Csms(args.host, args.port, require_password=key if profile in (1, 2) else None,
                        ssl_context=ssl_context, url_host=args.tls_host,
                        heartbeat_interval=args.heartbeat_interval, boot_status=args.boot_status,
                        charge_point_id=args.charge_point_id)
        else:
            if profile in (2, 3) or args.pki is not None:
                pki = CsmsPki(pki_dir, args.tls_host).ensure()
            csms = Csms.for_profile(profile, pki=pki, authorization_key=key, host=args.host, port=args.port,
                                    heartbeat_interval=args.heartbeat_interval, boot_status=args.boot_status,
                                    charge_point_id=args.charge_point_id)
    except (OSError, ssl.SSLError, ValueError) as exc:
        return _fail(f"cannot set up security profile {profile}: {exc}")
    try:
        asyncio.run(_serve(csms, profile, pki, key, generated))
    except KeyboardInterrupt:
        pass
    except OSError as exc:
        return _fail(f"cannot listen on {args.host}:{args.port}: {exc}", 1)
    return 0


def _sign_csr(pki: CsmsPki, csr_file: Path) -> int:
    try:
        pki.ensure()
        chain = pki.sign_csr(csr_file.read_bytes())
    except (OSError, CsrError) as exc:
        return _fail(f"cannot sign {csr_file}: {exc}")
    sys.stdout.write(chain)
    return 0


def describe(csms: Csms, profile: int, pki: CsmsPki | None, key: str | None, generated: bool) -> str:
    """What a station needs to connect (printed at start)."""
    what = {0: "no authentication (ws://)", 1: "HTTP Basic over ws:// (trusted networks only, A00.FR.201)",
            2: "TLS server certificate + HTTP Basic (wss://)",
            3: "TLS server certificate + TLS client certificate (wss://)"}[profile]
    lines = [f"  security profile {profile}: {what}"]
    if profile in (1, 2):
        lines.append(f"  AuthorizationKey ({'generated; ' if generated else ''}the Basic password, "
                     f"user = the charge point id): {key}")
    if pki is not None and profile in (2, 3):
        lines.append(f"  CentralSystemRootCertificate: {pki.csms_root.resolve()}")
        lines.append("    install it in the station (InstallCertificate or its certificate store) before wss://")
    if profile == 3:
        lines.append(f"  client certificates must be issued by that root: `twin csms --pki {pki.directory if pki else ''} "
                     "--sign-csr station.csr`, or SignCertificate while on profile 2")
    if pki is not None:
        lines.append("  SignCertificate CSRs are signed with that root and sent back in CertificateSigned")
        lines.append(f"  ManufacturerRootCertificate (signed firmware): {pki.manufacturer_root.resolve()}")
    return "\n".join(lines)


async def _serve(csms: Csms, profile: int, pki: CsmsPki | None, key: str | None, generated: bool) -> None:
    stopping = asyncio.Event()
    # systemd and `timeout` stop us with SIGTERM: close the listener cleanly.
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stopping.set)
    await csms.start()
    print(f"CSMS ready: point a station at {csms.url}/<charge point id>", flush=True)
    print(describe(csms, profile, pki, key, generated), flush=True)
    try:
        await stopping.wait()
    finally:
        await csms.stop()
