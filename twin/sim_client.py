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
import time
import urllib.error
import urllib.parse
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
    """One call to the control API; returns the JSON object it answered with ({} for
    204 No Content, e.g. DELETE /api/faults). ``token``: sent as ``Authorization: Bearer
    <token>`` (RFC 6750 §2.1).

    Raises SimClientError with the server's ``error`` message on a 4xx/5xx, and
    with the cause when the server cannot be reached or answers garbage.
    """
    payload = request_json(base_url, method, path, body, timeout, token)
    if payload is None:
        return {}
    if not isinstance(payload, dict):
        raise SimClientError(f"{method} {path}: expected a JSON object, got {type(payload).__name__}")
    return payload


def request_json(base_url: str, method: str, path: str, body: dict | None = None, timeout: float = 5,
                 token: str | None = None) -> Any:
    """:func:`request` for routes that answer any JSON value (GET /api/faults: a list);
    None for 204 No Content (RFC 9110 §15.3.5)."""
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
            status = resp.status
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
    if status == 204 and not raw:
        return None
    try:
        return json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise SimClientError(f"{method} {path}: the server did not answer JSON: {raw[:100]!r}") from None


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
    fault = command("fault", "raise a fault on a connector (fault N CODE), or manage protocol fault rules "
                             "(fault add|list|remove|clear)")
    fault.add_argument("target", metavar="N|add|list|remove|clear",
                       help="a connector number (a station fault), or what to do with the fault rules")
    # The rest is parsed by the parser of the form ``target`` picked (_fault_call).
    fault.add_argument("rest", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    trace = command("trace", "print the wire trace: one JSON record a line (docs/faults-and-traces.md)")
    trace.add_argument("--since", type=_frame_number, default=0, metavar="N",
                       help="the records numbered N and later (default: all the station still holds)")
    trace.add_argument("--follow", action="store_true",
                       help="keep printing new records as they come, until interrupted (Ctrl-C)")
    trace.add_argument("--interval", type=_positive, default=0.5, metavar="S",
                       help="seconds between polls with --follow (default 0.5)")
    command("clear-fault", "clear a connector's fault").add_argument("connector", type=int)
    ev = command("ev", "change what the simulated EV does")
    ev.add_argument("connector", type=int)
    ev.add_argument("--suspended", type=_bool_word, metavar="true|false", help="the EV pauses (SuspendedEV) or resumes")
    ev.add_argument("--max-power-w", type=float, metavar="W", help="the most power the EV draws")
    command("network", "cut or restore the link to the CSMS").add_argument("state", choices=["online", "offline"])
    return sim


def _frame_number(text: str) -> int:
    if not (text.isascii() and text.isdigit()):
        raise argparse.ArgumentTypeError(f"expected a frame number >= 0, got {text!r}")
    return int(text)


def _positive(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, got {text!r}") from None
    if not 0.05 <= value <= 3600:
        raise argparse.ArgumentTypeError(f"expected 0.05..3600 seconds, got {text!r}")
    return value


def _json_value(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not JSON ({exc}): {text!r}") from None


RULE_ACTIONS = ("add", "list", "remove", "clear")


def _rule_parser(action: str) -> argparse.ArgumentParser:
    """The arguments of ``twin sim fault add|list|remove|clear``. The fields are the rule's
    (POST /api/faults); the station checks them, and its message is what an error shows."""
    parser = argparse.ArgumentParser(prog=f"twin sim fault {action}", description={
        "add": "install a protocol fault rule (POST /api/faults); prints it with its id",
        "list": "print the installed fault rules, with fired and remaining counts",
        "remove": "remove one fault rule by its id",
        "clear": "remove every fault rule",
    }[action])
    parser.add_argument("--control", type=control_url, default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    parser.add_argument("--token-file", metavar="FILE", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    if action == "remove":
        parser.add_argument("rule_id", metavar="ID", help="the rule's id (fault list shows it)")
    if action != "add":
        return parser
    parser.add_argument("--rule", type=_json_value, metavar="JSON",
                        help="the whole rule as a JSON object; the options below add to it or override it")
    parser.add_argument("--on", metavar="ACTION", help='an OCPP action, or "*"')
    parser.add_argument("--direction", choices=["in", "out"],
                        help="in: calls the CSMS sends the station; out: calls the station sends")
    parser.add_argument("--do", dest="do", metavar="KIND",
                        help="reply, callerror, silence, delay, duplicate, garble, invalid or drop")
    parser.add_argument("--payload", type=_json_value, metavar="JSON",
                        help="reply: the canned CALLRESULT payload; invalid: the broken payload to send")
    parser.add_argument("--code", help="callerror: an OCPP-J error code, e.g. NotSupported")
    parser.add_argument("--description", help="callerror: its text")
    parser.add_argument("--seconds", type=float, metavar="S", help="delay: how late")
    parser.add_argument("--count", type=int, metavar="N", help="how many matching messages (default: until removed)")
    parser.add_argument("--probability", type=float, metavar="P", help="fire with this probability (0, 1]")
    parser.add_argument("--seed", type=int, help="seeds the probability draws, so a run repeats")
    parser.add_argument("--id", dest="rule_id", metavar="ID", help="the rule's id (default: made up, f1, f2, ...)")
    return parser


def _connector_fault_parser(connector: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=f"twin sim fault {connector}",
                                     description="raise a fault on a connector (POST /api/connectors/N/fault)")
    parser.add_argument("--control", type=control_url, default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    parser.add_argument("--token-file", metavar="FILE", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    parser.add_argument("error_code", metavar="CODE", help="an OCPP 1.6 ChargePointErrorCode, e.g. GroundFailure")
    parser.add_argument("--info", help="free text for StatusNotification.info (max 50 characters)")
    return parser


def parse_fault_args(args: argparse.Namespace) -> argparse.Namespace:
    """Finish parsing ``twin sim fault``: ``N CODE [--info]`` (a station fault on connector
    N) or ``add|list|remove|clear ...`` (protocol fault rules). Usage errors exit 2, as
    argparse's own do. Options given after the subcommand (``--control``) are kept."""
    target = args.target
    if target in RULE_ACTIONS:
        more = _rule_parser(target).parse_args(args.rest)
        args.fault_form = target
    else:
        if not (target.isascii() and target.isdigit()):
            _connector_fault_parser(target).error(
                f"expected a connector number or one of {', '.join(RULE_ACTIONS)}; got {target!r}")
        more = _connector_fault_parser(target).parse_args(args.rest)
        args.fault_form = "connector"
        args.connector = int(target)
    for name, value in vars(more).items():
        setattr(args, name, value)
    return args


def _rule_body(args: argparse.Namespace) -> dict:
    body: dict[str, Any] = {}
    if args.rule is not None:
        if not isinstance(args.rule, dict):
            raise SimClientError(f"--rule must be a JSON object, got {type(args.rule).__name__}")
        body.update(args.rule)
    for name, field in (("on", "on"), ("direction", "direction"), ("do", "do"), ("payload", "payload"),
                        ("code", "code"), ("description", "description"), ("seconds", "seconds"),
                        ("count", "count"), ("probability", "probability"), ("seed", "seed"), ("rule_id", "id")):
        value = getattr(args, name)
        if value is not None:
            body[field] = value
    return body


def _call(args: argparse.Namespace) -> tuple[str, str, dict | None]:
    """The (method, path, body) a parsed ``twin sim`` command stands for."""
    name = args.sim_command
    if name == "fault" and getattr(args, "fault_form", "connector") != "connector":
        form = args.fault_form
        if form == "add":
            return "POST", "/api/faults", _rule_body(args)
        if form == "list":
            return "GET", "/api/faults", None
        if form == "remove":
            return "DELETE", f"/api/faults/{urllib.parse.quote(args.rule_id, safe='')}", None
        return "DELETE", "/api/faults", None
    if name == "trace":
        return "GET", f"/api/trace?since={args.since}", None
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
    label = args.sim_command
    if args.sim_command == "fault" and not hasattr(args, "fault_form"):
        parse_fault_args(args)
    if args.sim_command == "fault" and args.fault_form != "connector":
        label = f"fault {args.fault_form}"
    token_file = args.token_file or os.environ.get(TOKEN_FILE_ENV) or None
    try:
        token = read_token_file(token_file) if token_file else None
        method, path, body = _call(args)
        if args.sim_command == "trace":
            return _print_trace(args, token)
        result = request_json(args.control, method, path, body, timeout=args.timeout, token=token)
    except SimClientError as exc:
        print(f"twin sim {label}: error: {exc.message}", file=sys.stderr)
        return 1
    if result is None:  # 204: a rule removed, or all of them
        result = {"removed": args.rule_id} if getattr(args, "fault_form", None) == "remove" else {"cleared": True}
    print(json.dumps(result, indent=2, ensure_ascii=False))
    return 0


def _print_trace(args: argparse.Namespace, token: str | None) -> int:
    """``twin sim trace``: the records as JSON lines (a file ``twin trace show`` reads). With
    ``--follow`` it polls until interrupted; while the station cannot be reached (a Reset, a
    power cut) it keeps trying, and then prints the records newer than the last one it
    printed: a restarted station numbers its records from 1 again, so the monotonic time
    (``mono``) tells which are new."""
    try:
        return _follow_trace(args, token)
    except KeyboardInterrupt:  # the way to end --follow
        return 0


def _follow_trace(args: argparse.Namespace, token: str | None) -> int:
    since, last_mono, lost = args.since, None, False
    while True:
        path = f"/api/trace?since={0 if lost else since}"
        try:
            page = request(args.control, "GET", path, timeout=args.timeout, token=token)
        except SimClientError as exc:
            if not args.follow:
                raise
            if not lost:
                print(f"twin sim trace: {exc.message}; trying again", file=sys.stderr, flush=True)
            lost = True
        else:
            frames = page.get("frames")
            if not isinstance(frames, list):
                raise SimClientError(f"GET {path}: expected {{'next', 'frames'}}, got {json.dumps(page)[:200]}")
            for rec in frames:
                mono = rec.get("mono") if isinstance(rec, dict) else None
                if lost and isinstance(mono, (int, float)) and last_mono is not None and mono <= last_mono:
                    continue  # printed before the station went away
                print(json.dumps(rec, ensure_ascii=False, separators=(",", ":")), flush=True)
                if isinstance(mono, (int, float)):
                    last_mono = mono
            nxt = page.get("next")
            since = nxt if isinstance(nxt, int) and nxt >= 0 else since
            lost = False
            if not args.follow:
                return 0
        time.sleep(args.interval)
