"""Client of the bench control API (``twin/control_api.py``): ``request()`` for
scripts, and the ``twin sim ...`` subcommands built on it.

Standard library only (urllib), so a bench script can use it from any Python
without the station's dependencies. Validation stays on the server: the client
sends what it was given and reports the server's message, so there is one rule
set, not two that can drift apart.

A station with ``[control] token_file`` needs the same token from its clients:
``--token-file FILE``, or the file named by ``$OCPP_TWIN_TOKEN_FILE``.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import sys
import urllib.error
import urllib.request
from typing import Any

DEFAULT_CONTROL = "127.0.0.1:8180"
TOKEN_FILE_ENV = "OCPP_TWIN_TOKEN_FILE"

# The control API lives on the station's own host or bench LAN: an http_proxy from
# the environment must not be used for it.
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class SimClientError(Exception):
    """The control API could not be reached or refused the request. ``status`` is
    the HTTP status, or None when no HTTP answer came back."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.status = status


def _error_message(raw: bytes) -> str:
    try:
        payload = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return raw.decode("utf-8", "replace").strip()[:200] or "(empty body)"
    if isinstance(payload, dict) and isinstance(payload.get("error"), str):
        return payload["error"]
    return json.dumps(payload)[:200]


def read_token_file(path: str) -> str:
    """The bearer token in ``path`` (its trailing newline dropped); SimClientError if unusable."""
    try:
        with open(path, encoding="utf-8") as file:
            token = file.read().rstrip("\r\n")
    except OSError as exc:
        raise SimClientError(f"cannot read the token file {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise SimClientError(f"the token file {path} is not UTF-8 text") from None
    if not token or any(c.isspace() for c in token):
        raise SimClientError(f"the token file {path} is empty or holds more than one word")
    return token


def request(base_url: str, method: str, path: str, body: dict | None = None, timeout: float = 5,
            token: str | None = None) -> dict:
    """One call to the control API; returns the JSON object it answered with. ``token``:
    sent as ``Authorization: Bearer <token>`` (RFC 6750 §2.1).

    Raises SimClientError with the server's ``error`` message on a 4xx/5xx, and
    with the cause when the server cannot be reached or answers garbage.
    """
    url = base_url.rstrip("/") + path
    data = None if body is None else json.dumps(body).encode("utf-8")
    req = urllib.request.Request(url, data=data, method=method)
    if data is not None:
        req.add_header("Content-Type", "application/json")
    if token is not None:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with _OPENER.open(req, timeout=timeout) as resp:
            raw = resp.read()
    except urllib.error.HTTPError as exc:
        with exc:
            message = _error_message(exc.read())
        raise SimClientError(f"{method} {path}: {exc.code} {message}", exc.code) from None
    except urllib.error.URLError as exc:
        raise SimClientError(f"cannot reach the control API at {base_url}: {exc.reason}") from None
    except http.client.HTTPException as exc:  # BadStatusLine, IncompleteRead, ...
        raise SimClientError(f"{base_url} did not answer valid HTTP: {type(exc).__name__}: {exc}") from None
    except (OSError, ValueError) as exc:  # timeouts, resets, a malformed URL
        raise SimClientError(f"cannot reach the control API at {base_url}: {exc}") from None
    try:
        payload = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise SimClientError(f"{method} {path}: the server did not answer JSON: {raw[:100]!r}") from None
    if not isinstance(payload, dict):
        raise SimClientError(f"{method} {path}: expected a JSON object, got {type(payload).__name__}")
    return payload


# ---------------------------------------------------------------- `twin sim`


def control_url(address: str) -> str:
    """``HOST:PORT`` (or ``[v6]:PORT``, or a full ``http://`` URL) -> base URL."""
    if address.startswith(("http://", "https://")):
        return address.rstrip("/")
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, e.g. {DEFAULT_CONTROL}; got {address!r}")
    return f"http://{host}:{port}"


def _bool_word(text: str) -> bool:
    words = {"true": True, "false": False}
    if text.lower() not in words:
        raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")
    return words[text.lower()]


def add_sim_subcommands(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add ``sim`` and its subcommands to the ``twin`` CLI; returns the ``sim``
    parser (the caller may ``set_defaults`` on it to dispatch to run_sim_command)."""
    sim = subparsers.add_parser(
        "sim", help="drive a running station through its bench control API",
        description="Drive a running station through its bench control API and print the JSON answer.",
    )
    control_help = f"control API address HOST:PORT (default {DEFAULT_CONTROL})"
    sim.add_argument("--control", type=control_url, default=control_url(DEFAULT_CONTROL), help=control_help)
    sim.add_argument("--timeout", type=float, default=5.0, help="seconds to wait for the answer (default 5)")
    token_help = f"file holding the station's bearer token ([control] token_file; default ${TOKEN_FILE_ENV})"
    sim.add_argument("--token-file", metavar="FILE", help=token_help)
    commands = sim.add_subparsers(dest="sim_command", metavar="COMMAND", required=True)

    def command(name: str, help_text: str) -> argparse.ArgumentParser:
        parser = commands.add_parser(name, help=help_text, description=help_text)
        # Also accepted after the subcommand; SUPPRESS keeps it from overriding one given before.
        parser.add_argument("--control", type=control_url, default=argparse.SUPPRESS, help=control_help)
        parser.add_argument("--token-file", metavar="FILE", default=argparse.SUPPRESS, help=token_help)
        return parser

    command("state", "print the station state")
    command("plug", "plug the EV into a connector").add_argument("connector", type=int)
    command("unplug", "unplug the EV (EV-side disconnect)").add_argument("connector", type=int)
    command("rfid", "present a card to the shared reader").add_argument("id_tag", metavar="TAG")
    fault = command("fault", "raise a fault on a connector")
    fault.add_argument("connector", type=int)
    fault.add_argument("error_code", metavar="CODE", help="an OCPP 1.6 ChargePointErrorCode, e.g. GroundFailure")
    fault.add_argument("--info", help="free text for StatusNotification.info (max 50 characters)")
    command("clear-fault", "clear a connector's fault").add_argument("connector", type=int)
    ev = command("ev", "change what the simulated EV does")
    ev.add_argument("connector", type=int)
    ev.add_argument("--suspended", type=_bool_word, metavar="true|false", help="the EV pauses (SuspendedEV) or resumes")
    ev.add_argument("--max-power-w", type=float, metavar="W", help="the most power the EV draws")
    command("network", "cut or restore the link to the CSMS").add_argument("state", choices=["online", "offline"])
    return sim


def _call(args: argparse.Namespace) -> tuple[str, str, dict | None]:
    """The (method, path, body) a parsed ``twin sim`` command stands for."""
    name = args.sim_command
    if name == "state":
        return "GET", "/api/state", None
    if name == "rfid":
        return "POST", "/api/rfid", {"idTag": args.id_tag}
    if name == "network":
        return "POST", "/api/network", {"online": args.state == "online"}
    connector = f"/api/connectors/{args.connector}"
    if name in ("plug", "unplug"):
        return "POST", f"{connector}/{name}", None
    if name == "clear-fault":
        return "DELETE", f"{connector}/fault", None
    if name == "fault":
        body: dict[str, Any] = {"errorCode": args.error_code}
        if args.info is not None:
            body["info"] = args.info
        return "POST", f"{connector}/fault", body
    if name == "ev":
        body = {}
        if args.suspended is not None:
            body["suspended"] = args.suspended
        if args.max_power_w is not None:
            body["maxPowerW"] = args.max_power_w
        return "POST", f"{connector}/ev", body
    raise ValueError(f"unknown sim command {name!r}")


def run_sim_command(args: argparse.Namespace) -> int:
    """Run a parsed ``twin sim`` command: print the JSON answer and return 0, or
    print the reason to stderr and return 1."""
    method, path, body = _call(args)
    token_file = args.token_file or os.environ.get(TOKEN_FILE_ENV) or None
    try:
        token = read_token_file(token_file) if token_file else None
        result = request(args.control, method, path, body, timeout=args.timeout, token=token)
    except SimClientError as exc:
        print(f"twin sim {args.sim_command}: error: {exc.message}", file=sys.stderr)
        return 1
    print(json.dumps(result, indent=2, ensure_ascii=False))
    return 0
