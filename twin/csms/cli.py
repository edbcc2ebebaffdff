"""`python -m twin.csms`: a standalone CSMS that prints every message, to point a station at."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import ssl
import sys

from twin.csms.server import Csms


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="twin csms",
        description="Run a small OCPP 1.6J central system and log every message. "
        "A station connects to ws://HOST:PORT/<charge point id> with subprotocol ocpp1.6.",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1; 0.0.0.0 for all)")
    parser.add_argument("--port", type=int, default=9000, help="TCP port (default 9000)")
    parser.add_argument("--heartbeat-interval", type=int, default=30, help="interval in BootNotification.conf (s)")
    parser.add_argument("--boot-status", choices=["Accepted", "Pending", "Rejected"], default="Accepted")
    parser.add_argument("--password", help="require HTTP Basic auth with this password (security profile 1)")
    parser.add_argument("--charge-point-id", help="accept only this charge point identity")
    parser.add_argument("--tls-cert", help="PEM certificate chain: serve wss:// (security profile 2)")
    parser.add_argument("--tls-key", help="PEM private key for --tls-cert")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stdout)
    ssl_context = None
    if args.tls_cert:
        ssl_context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        try:
            ssl_context.load_cert_chain(args.tls_cert, args.tls_key)
        except (OSError, ssl.SSLError) as exc:
            print(f"twin csms: cannot load TLS certificate {args.tls_cert}: {exc}", file=sys.stderr)
            return 2
    csms = Csms(
        args.host,
        args.port,
        heartbeat_interval=args.heartbeat_interval,
        boot_status=args.boot_status,
        require_password=args.password,
        ssl_context=ssl_context,
        charge_point_id=args.charge_point_id,
    )
    try:
        asyncio.run(_serve(csms))
    except KeyboardInterrupt:
        pass
    except OSError as exc:
        print(f"twin csms: cannot listen on {args.host}:{args.port}: {exc}", file=sys.stderr)
        return 1
    return 0


async def _serve(csms: Csms) -> None:
    stopping = asyncio.Event()
    # systemd and `timeout` stop us with SIGTERM: close the listener cleanly.
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stopping.set)
    await csms.start()
    print(f"CSMS ready: point a station at {csms.url}/<charge point id>", flush=True)
    try:
        await stopping.wait()
    finally:
        await csms.stop()
