"""Bench control HTTP/JSON API: how the bench rig, the dashboard, test scripts and CSMS test
suites drive the twin (plug, unplug, present a card, station faults, steer the EV, cut or
impair the CSMS link, inject protocol faults, read the wire trace, follow the event stream).
The routes are a public, stable interface; they are documented in ``docs/control-api.md`` and
served as an OpenAPI 3.1 document at ``GET /api/openapi.json``.

The HTTP/1.1 server is aiohttp (a maintained asyncio web framework): it owns the request
parser. What the station adds on top is built to survive whatever reaches it: the request
line, header fields, the whole head and the body are capped, every request must arrive within
``request_timeout`` (a stalled or trickling client cannot hold a connection), the number of
connections is capped, and every failure, parse errors included, becomes a JSON
``{"error": "..."}`` answer, never an exception that could take the station down.

It can switch a contactor and bill a card, so every request, on every route, passes four
checks first (one aiohttp middleware), in this order:

1. ``Host`` names this server: the bind address, the address the connection arrived at, or
   localhost, with the port the connection arrived at. Anything else is a DNS-rebinding page
   or a misdirected client: 421.
2. An ``Origin`` header (a browser always sends one on a cross-origin POST or DELETE,
   RFC 6454 §7.3 and the Fetch standard) must be in ``allowed_origins`` (empty by default):
   403 otherwise. Allowed origins get CORS answers.
3. With a token, ``Authorization: Bearer <token>`` (RFC 6750 §2.1): 401 otherwise.
4. A body must be ``application/json`` (415), which a page cannot send cross-origin without a
   preflight. A request without a body stays valid.

Validation lives here, before the backend is called, so the station runtime only ever sees
well-formed values.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import inspect
import ipaddress
import json
import logging
import math
import re
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any, Protocol
from urllib.parse import urlsplit

from aiohttp import web
from aiohttp.http_exceptions import LineTooLong
from ocpp.v16.enums import ChargePointErrorCode

log = logging.getLogger(__name__)

# Bodies here are a few hundred bytes; the caps only keep garbage from costing memory.
MAX_HEAD_BYTES = 8192
MAX_HEADERS = 64
MAX_BODY_BYTES = 8192
# aiohttp's parser caps the request line and each header field separately; the field limit is
# one byte less so that a LineTooLong says which of the two it was (414 or 431).
_MAX_LINE = MAX_HEAD_BYTES
_MAX_FIELD = MAX_HEAD_BYTES - 1

# OCPP 1.6 §7.6/7.7: idTag is an IdToken = CiString20Type; StatusNotification.info
# is CiString50Type.
ID_TAG_MAX_LEN = 20
INFO_MAX_LEN = 50
# NoError is not a fault: clearing is DELETE /api/connectors/{id}/fault.
FAULT_ERROR_CODES: tuple[str, ...] = tuple(
    code.value for code in ChargePointErrorCode if code is not ChargePointErrorCode.no_error
)
DEBUG_BLOCK_MAX_SECONDS = 600.0
# POST /api/network impairment bounds (the contract of the fault-injection toolkit).
NETWORK_MAX_DELAY_MS = 60000.0
CLOSE_CODE_MIN, CLOSE_CODE_MAX = 1000, 4999  # RFC 6455 §7.4: the codes an endpoint may send
SEED_MAX = 2**63 - 1
FAULT_ID_MAX_LEN = 64
# GET /api/events: a comment line this often keeps proxies and idle timers from cutting the stream.
SSE_KEEPALIVE_S = 15.0

# Host names a local client may use whatever the bind address (RFC 6761 §6.3: localhost is loopback).
LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")
# RFC 6750 §2.1 b64token: what may follow "Bearer " in an Authorization header.
BEARER_TOKEN_RE = re.compile(r"[A-Za-z0-9\-._~+/]+=*")
BEARER_REALM = "ocpp-twin control API"
# What a CORS preflight from an allowed origin is told (Fetch standard, CORS protocol).
CORS_METHODS = "GET, POST, DELETE"
CORS_HEADERS = "Authorization, Content-Type"
CORS_MAX_AGE_S = 600
# At most one "refused" log line per this many seconds: a page retrying in a loop must not flood the journal.
REFUSAL_LOG_INTERVAL_S = 10.0
_JSON = "application/json"
# The bench dashboard (twin/dashboard/): its files, served as they are (no build step, no CDN).
DASHBOARD_FILES = {"index.html": "text/html; charset=utf-8", "app.js": "text/javascript; charset=utf-8",
                   "style.css": "text/css; charset=utf-8"}
# The page loads only its own files and talks only to this server; no frame may embed it (a
# page that can switch a contactor must not be clickjacked), and no Referer carries a URL out.
DASHBOARD_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
                               "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff", "X-Frame-Options": "DENY", "Referrer-Policy": "no-referrer",
}
# GET /api/events only: EventSource cannot send an Authorization header (WHATWG HTML §9.2), so
# the dashboard sends the token as this query parameter (RFC 6750 §2.3) on that read-only route.
EVENTS_TOKEN_PARAM = "access_token"


class ApiError(Exception):
    """An answer other than 200. The backend may raise it too (e.g. 409 when the
    station cannot do what was asked in its current state)."""

    def __init__(self, status: int, message: str, *, close: bool = False,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.close = close  # the byte stream is not reusable after this answer
        self.headers = headers


class ControlBackend(Protocol):
    """Implemented by the station runtime. Arguments arrive already validated. The toolkit
    methods (``add_fault``, ``faults``, ``remove_fault``, ``clear_faults``, ``trace_since``, the
    impairment keywords of ``network``) and ``events`` are optional: a route whose method is
    missing answers 501. They raise ``ValueError`` for input they refuse (400)."""

    connector_count: int

    def state(self) -> dict: ...
    async def plug(self, connector_id: int) -> dict: ...
    async def unplug(self, connector_id: int) -> dict: ...
    async def rfid(self, id_tag: str) -> dict: ...
    async def fault(self, connector_id: int, error_code: str, info: str | None) -> dict: ...
    async def clear_fault(self, connector_id: int) -> dict: ...
    async def ev(self, connector_id: int, suspended: bool | None, max_power_w: float | None) -> dict: ...
    async def network(self, online: bool) -> dict: ...
    async def tamper(self, info: str | None) -> dict: ...
    async def debug_block(self, seconds: float) -> dict: ...


# ---------------------------------------------------------------- requests and raw answers


@dataclass
class _Request:
    """What the checks and the validators look at, taken from the aiohttp request."""

    method: str
    path: str
    headers: dict[str, str]  # lower-case names; repeated headers joined with ", "
    body: bytes = b""
    has_length: bool = False  # a Content-Length header was sent
    # The authority of an absolute-form target; RFC 9112 §3.2.2: it then replaces Host.
    target_authority: str | None = None
    query: dict[str, str] = field(default_factory=dict)

    @property
    def authority(self) -> str | None:
        return self.target_authority if self.target_authority is not None else self.headers.get("host")


def _response(status: int, payload: Any, *, close: bool, extra: dict[str, str] | None = None) -> bytes:
    """A whole HTTP/1.1 answer as bytes, for the few written on the raw transport (408, 503),
    where no request (and so no aiohttp response) exists."""
    body = json.dumps(payload, ensure_ascii=False, allow_nan=False).encode("utf-8")
    lines = [f"HTTP/1.1 {status} {HTTPStatus(status).phrase}", f"Content-Type: {_JSON}",
             f"Content-Length: {len(body)}", "Cache-Control: no-store",
             f"Connection: {'close' if close else 'keep-alive'}"]
    lines += [f"{name}: {value}" for name, value in (extra or {}).items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def _query(req: _Request, allowed: tuple[str, ...]) -> dict[str, str]:
    """The request's query parameters, refused with 400 if one is not in ``allowed``."""
    unknown = sorted(set(req.query) - set(allowed))
    if unknown:
        raise ApiError(400, f"unknown query parameter(s) {', '.join(map(repr, unknown))}; "
                            f"allowed: {', '.join(map(repr, allowed))}")
    return req.query


def _query_integer(query: dict[str, str], name: str, minimum: int, maximum: int, what: str = "") -> int | None:
    """An integer query parameter in [minimum, maximum], None when absent; 400 otherwise."""
    raw = query.get(name)
    if raw is None:
        return None
    # The length first: int() of a 5,000-digit string raises (the interpreter's digit limit).
    if not (raw.isascii() and raw.isdigit() and len(raw) <= 18) or not minimum <= int(raw) <= maximum:
        raise ApiError(400, f"{name!r} must be {what or f'an integer from {minimum} to {maximum}'}, "
                            f"got {raw[:40]!r}")
    return int(raw)


def _conditional(req: _Request, resp: web.Response) -> web.Response:
    """A strong ETag on a GET's JSON answer, and 304 Not Modified when the client already
    holds that body (RFC 9110 §13.1.2: If-None-Match, a list of tags or "*"). A poller (the
    fleet list of a dashboard, a script) then costs the server the body it builds, not the
    bytes it sends, while nothing changes."""
    body = resp.body if isinstance(resp.body, bytes) else b""
    tag = '"' + hashlib.blake2b(body, digest_size=12).hexdigest() + '"'
    resp.headers["ETag"] = tag
    wanted = req.headers.get("if-none-match")
    if wanted is not None:
        tags = {t.strip().removeprefix("W/") for t in wanted.split(",")}  # weak comparison (§13.1.2)
        if tag in tags or "*" in tags:
            return web.Response(status=304, headers={"ETag": tag})
    return resp


def _json_response(status: int, payload: Any, headers: dict[str, str] | None = None) -> web.Response:
    if status == 204:  # RFC 9110 §15.3.5: no content
        return web.Response(status=204, headers=headers)
    body = json.dumps(payload, ensure_ascii=False, allow_nan=False).encode("utf-8")
    return web.Response(status=status, body=body, content_type=_JSON, headers=headers)


def _error(status: int, message: str, headers: dict[str, str] | None = None, *, close: bool = False) -> web.Response:
    resp = _json_response(status, {"error": message}, headers)
    if close:
        resp.force_close()
    return resp


# Where the middleware leaves the checked request for the handlers (RequestKey: aiohttp >= 3.12).
_TWIN: Any = web.RequestKey("twin", _Request) if hasattr(web, "RequestKey") else "twin"


# ---------------------------------------------------------------- body validation


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise ValueError(f"duplicate field {key!r}")
        result[key] = value
    return result


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _json_object(request: _Request, allowed: set[str] | None, *, body_required: bool) -> dict[str, Any]:
    """The request body as a JSON object holding only ``allowed`` fields (None: any)."""
    if body_required and not request.has_length:
        raise ApiError(411, "this route needs a JSON body sent with a Content-Length header")
    content_type = request.headers.get("content-type")
    if request.body or content_type is not None:
        # Requiring application/json also keeps a web page from driving the bench
        # with a cross-site "simple" request: browsers preflight this type.
        media, _, params = (content_type or "").partition(";")
        charset = re.search(r"charset\s*=\s*\"?([^\";\s]+)", params, re.IGNORECASE)
        if media.strip().lower() != "application/json" or (
            charset and charset.group(1).lower() not in ("utf-8", "utf8")
        ):
            raise ApiError(
                415, f"Content-Type must be application/json, got {content_type!r} (curl: use --json)"
            )
    if not request.body:
        if body_required:
            raise ApiError(400, "request body must be a JSON object")
        return {}
    try:
        text = request.body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ApiError(400, f"request body is not valid UTF-8 ({exc.reason} at byte {exc.start})") from None
    try:
        data = json.loads(text, object_pairs_hook=_no_duplicate_keys, parse_constant=_reject_constant)
    except (ValueError, RecursionError) as exc:
        raise ApiError(400, f"malformed JSON body: {exc}") from None
    if not isinstance(data, dict):
        raise ApiError(400, f"request body must be a JSON object, got {type(data).__name__}")
    unknown = sorted(set(data) - allowed) if allowed is not None else []
    if unknown:
        known = ", ".join(sorted(allowed)) or "none"
        raise ApiError(400, f"unknown field(s) {', '.join(map(repr, unknown))}; allowed: {known}")
    return data


def _required(data: dict[str, Any], name: str) -> Any:
    if name not in data:
        raise ApiError(400, f"missing field {name!r}")
    return data[name]


def _boolean(name: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise ApiError(400, f"{name!r} must be true or false, got {json.dumps(value)}")
    return value


def _text(name: str, value: Any, max_len: int, *, allow_empty: bool) -> str:
    if not isinstance(value, str):
        raise ApiError(400, f"{name!r} must be a string, got {json.dumps(value)}")
    if not value and not allow_empty:
        raise ApiError(400, f"{name!r} must not be empty")
    if len(value) > max_len:
        raise ApiError(400, f"{name!r} is {len(value)} characters; the maximum is {max_len}")
    if not value.isprintable():
        raise ApiError(400, f"{name!r} must contain printable characters only")
    return value


def _number(name: str, value: Any, *, minimum: float, maximum: float = math.inf, exclusive_min: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ApiError(400, f"{name!r} must be a number, got {json.dumps(value)}")
    number = float(value)
    too_low = number <= minimum if exclusive_min else number < minimum
    if too_low or number > maximum or not math.isfinite(number):
        bound = f"> {minimum:g}" if exclusive_min else f">= {minimum:g}"
        upper = f" and <= {maximum:g}" if math.isfinite(maximum) else ""
        raise ApiError(400, f"{name!r} must be {bound}{upper}, got {value}")
    return number


# ---------------------------------------------------------------- who may ask


@dataclass(frozen=True)
class _Arrival:
    """Where a connection came in: the host names it may use for us, the port, and who it is."""

    hosts: frozenset[str]
    port: int
    peer: str


def _host_key(host: str) -> str:
    """A host as compared here: an IP address in its compressed form, a name in lower case."""
    try:
        address = ipaddress.ip_address(host.split("%", 1)[0])  # without an IPv6 zone
    except ValueError:
        return host.lower()
    mapped = getattr(address, "ipv4_mapped", None)  # a v4 client on a dual-stack socket
    return str(mapped or address)


def split_authority(text: str) -> tuple[str, int | None] | None:
    """``host[:port]`` or ``[v6]:port`` (RFC 9110 §7.2, RFC 3986 §3.2.2) -> (host key, port or
    None), or None when it is malformed."""
    if text.startswith("["):
        host, bracket, rest = text[1:].partition("]")
        if not bracket or (rest and not rest.startswith(":")):
            return None
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            return None
        port_text = rest[1:] if rest else ""
    else:
        host, _, port_text = text.partition(":")
    if not host or not all(c.isascii() and c.isprintable() and c not in " ,/@" for c in host):
        return None
    if port_text and not (port_text.isascii() and port_text.isdigit() and int(port_text) <= 65535):
        return None
    return _host_key(host), int(port_text) if port_text else None  # RFC 3986 §3.2.3: an empty port is the default


def normalize_origin(text: str) -> str:
    """An origin as a browser serializes it in the Origin header (RFC 6454 §6.2): lower-case
    scheme and host, no default port, no path. ValueError with the problem otherwise."""
    if text.strip() in ("*", "null"):
        raise ValueError(f"{text!r} is not allowed: name each origin, like http://127.0.0.1:8080")
    try:
        parts = urlsplit(text)
        port = parts.port
    except ValueError as exc:
        raise ValueError(f"{text!r} is not an origin ({exc})") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"{text!r} is not an origin: expected http(s)://HOST[:PORT]")
    if parts.path not in ("", "/") or parts.query or parts.fragment or parts.username is not None:
        raise ValueError(f"{text!r} is not an origin: only scheme, host and port, no path, query or user")
    host = parts.hostname.lower()
    host = f"[{host}]" if ":" in host else host
    default_port = {"http": 80, "https": 443}[parts.scheme]
    return f"{parts.scheme}://{host}" + (f":{port}" if port is not None and port != default_port else "")


def _same_origin(origin: str, authority: str) -> bool:
    """The page's own origin: what a browser sends on a fetch POST from the dashboard this
    server served (Fetch standard: Origin on every non-GET request). The server speaks plain
    HTTP and ``authority`` is a Host already checked to name it (loopback, the bind or the
    arrival address, our port), so ``http://<Host>`` is exactly our origin: a DNS-rebinding
    page never gets this far (its Host is its own name: 421), and a page on another port or
    scheme differs from it (RFC 6454 §5)."""
    try:
        return normalize_origin(origin) == normalize_origin(f"http://{authority}")
    except ValueError:
        return False


def _integer(name: str, value: Any, *, minimum: int, maximum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ApiError(400, f"{name!r} must be an integer, got {json.dumps(value)}")
    if not minimum <= value <= maximum:
        raise ApiError(400, f"{name!r} must be >= {minimum} and <= {maximum}, got {value}")
    return value


# ---------------------------------------------------------------- the connection


class _Protocol(web.RequestHandler):
    """aiohttp's connection handler with the station's limits: a deadline for each request
    (aiohttp has none for a head that never completes), a cap on connections, and parse
    errors answered as JSON (aiohttp answers them in text/plain)."""

    def __init__(self, manager: Any, api: ControlApi, **kwargs: Any) -> None:
        super().__init__(manager, **kwargs)
        self._api = api
        self.deadline = 0.0  # loop time by which the current request must have fully arrived
        self.busy = False  # a request is being handled (its own timeouts apply)
        self._deadline_handle: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self._api._protocols.add(self)
        if len(self._api._protocols) > self._api.max_connections:
            self._abort(503, "too many connections")
            return
        self._arm()

    def connection_lost(self, exc: BaseException | None) -> None:
        self._api._protocols.discard(self)
        if self._deadline_handle is not None:
            self._deadline_handle.cancel()
            self._deadline_handle = None
        super().connection_lost(exc)

    def _arm(self) -> None:
        loop = asyncio.get_running_loop()
        self.deadline = loop.time() + self._api.request_timeout
        self._deadline_handle = loop.call_at(self.deadline, self._expired)

    def request_started(self) -> None:
        self.busy = True
        if self._deadline_handle is not None:
            self._deadline_handle.cancel()
            self._deadline_handle = None

    def request_done(self) -> None:
        self.busy = False
        if self.transport is not None and not self.transport.is_closing():
            self._arm()  # the next request on this connection gets its own deadline

    def _expired(self) -> None:
        self._deadline_handle = None
        if self.busy or getattr(self, "_messages", None):
            return  # a complete request is being (or about to be) handled
        # RFC 9110 §15.5.9: 408 also tells an idle keep-alive client why we close.
        self._abort(408, f"request not received within {self._api.request_timeout:g} s")

    def _abort(self, status: int, message: str) -> None:
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        transport.write(_response(status, {"error": message}, close=True))
        self.force_close()
        transport.close()  # after the buffered answer is written

    def handle_error(self, request: Any, status: int = 500, exc: BaseException | None = None,
                     message: str | None = None) -> web.StreamResponse:
        """A request aiohttp could not parse (or an error that escaped the middleware): a JSON
        answer, and the connection is closed since the byte stream cannot be trusted."""
        text = (message or (str(exc) if exc else "") or HTTPStatus(status).phrase).splitlines()[0][:200]
        if isinstance(exc, LineTooLong):
            too_long_line = len(exc.args) > 1 and exc.args[1] == _MAX_LINE
            status, text = ((414, f"request line longer than {MAX_HEAD_BYTES} bytes") if too_long_line else
                            (431, f"a header field is longer than {_MAX_FIELD} bytes"))
        elif "Too many headers" in text:
            status, text = 431, f"more than {MAX_HEADERS} header fields"
        elif "Missing 'Host'" in text:
            text = "a Host header is required (RFC 9112 §3.2)"
        elif "Duplicate 'Host'" in text:
            text = "more than one Host header field (RFC 9112 §3.2)"
        elif status == 500:
            log.error("control API: unexpected error on a connection", exc_info=exc)
            text = "internal error"
        else:
            text = f"malformed request: {text}"
        if status != 500:
            log.debug("control API: unparseable request: %d %s", status, text)
        if request.writer.output_size > 0:  # an answer is already on its way: nothing to add
            raise ConnectionError("the answer was already sent")
        resp = _error(status, text, {"Connection": "close", "Cache-Control": "no-store"}, close=True)
        return resp


async def _no_expect(request: web.Request) -> None:
    """Expect is handled in the middleware, after the size checks (so 100 Continue is never
    sent for a body that would be refused) and with a JSON 417."""
    return None


# ---------------------------------------------------------------- the routes


@dataclass(frozen=True)
class _Route:
    method: str
    path: str  # as in the OpenAPI document: {id} for a path parameter
    handler: Callable[[web.Request], Awaitable[Any]]
    summary: str
    body: dict | None = None  # JSON Schema of the request body
    body_required: bool = False
    status: int = 200
    result: dict | None = None  # JSON Schema of the success answer (None: a 204 without content)
    errors: tuple[int, ...] = ()
    params: tuple[dict, ...] = ()
    content: str = _JSON
    tag: str = "station"


def _metrics_content_type() -> str:
    """The media type GET /metrics answers with (prometheus_client's text format)."""
    try:
        from prometheus_client import CONTENT_TYPE_LATEST
    except ImportError:  # the route answers 503 then; the document still names the format
        return "text/plain; version=1.0.0; charset=utf-8"
    return CONTENT_TYPE_LATEST


_STATE_SCHEMA = {"type": "object", "description": "the station state, as GET /api/state answers it",
                 "additionalProperties": True}
_NETWORK_FIELDS = ("online", "latency_ms", "jitter_ms", "drop_rate", "half_open", "close_code", "seed")


# ---------------------------------------------------------------- the server


class ControlApi:
    """The bench control API server. ``port=0`` binds an ephemeral port; read
    ``port``/``url`` after ``start()``.

    ``token``: when set, every request needs ``Authorization: Bearer <token>``.
    ``allowed_origins``: the web origins (``http://host:port``) whose pages may call
    the API; a request from any other page (an ``Origin`` header) is refused."""

    def __init__(
        self,
        backend: ControlBackend,
        host: str = "127.0.0.1",
        port: int = 8180,
        *,
        debug: bool = False,
        token: str | None = None,
        allowed_origins: Iterable[str] = (),
        request_timeout: float = 10.0,
        backend_timeout: float = 30.0,
        max_connections: int = 32,
        sse_keepalive_s: float = SSE_KEEPALIVE_S,
    ) -> None:
        if token is not None and not BEARER_TOKEN_RE.fullmatch(token):
            raise ValueError("the token must be 1 or more of A-Z a-z 0-9 - . _ ~ + / then any '=' (RFC 6750 b64token)")
        self.backend = backend
        self.host = host
        self.port = port
        self.debug = debug
        self.allowed_origins = frozenset(normalize_origin(origin) for origin in allowed_origins)
        self._token = token.encode("ascii") if token is not None else None
        self.request_timeout = request_timeout
        self.backend_timeout = backend_timeout
        self.max_connections = max_connections
        self.sse_keepalive_s = sse_keepalive_s
        self.app: web.Application | None = None
        self._runner: web.AppRunner | None = None
        self._server: asyncio.Server | None = None
        self._protocols: set[_Protocol] = set()
        self._streams: set[Any] = set()  # the open GET /api/events subscriptions
        self._refusal_logged_at = -math.inf
        self._refusals_not_logged = 0
        self.routes = self._route_table()

    @classmethod
    def from_config(cls, backend: ControlBackend, cfg: Any) -> ControlApi:
        """The API as a StationConfig (twin.config) describes it: address, debug routes,
        token and allowed origins. Only for a config whose control API is enabled."""
        if not cfg.control_enabled:
            raise ValueError("the control API is disabled in this config ([control] enabled = false)")
        return cls(backend, cfg.control_host, cfg.control_port, debug=cfg.control_debug,
                   token=cfg.control_token, allowed_origins=cfg.control_allowed_origins)

    @property
    def token_required(self) -> bool:
        return self._token is not None

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    # -- lifecycle

    def make_app(self) -> web.Application:
        """The aiohttp application: every route of the table behind the checks."""
        app = web.Application(middlewares=[self._middleware], client_max_size=MAX_BODY_BYTES)
        for route in self.routes:
            router_path = route.path.replace("/connectors/{id}/", "/connectors/{id:[^/]*}/")
            app.router.add_route(route.method, router_path, route.handler, expect_handler=_no_expect)
        app.on_response_prepare.append(self._on_prepare)
        return app

    async def start(self) -> None:
        if self._server is not None:
            raise RuntimeError("control API already started")
        self.app = self.make_app()
        runner = web.AppRunner(self.app, access_log=None, handle_signals=False, shutdown_timeout=5.0)
        await runner.setup()
        loop = asyncio.get_running_loop()
        kwargs = dict(loop=loop, access_log=None, max_line_size=_MAX_LINE, max_field_size=_MAX_FIELD,
                      max_headers=MAX_HEADERS, lingering_time=0, keepalive_timeout=self.request_timeout + 60)
        try:
            self._server = await loop.create_server(lambda: _Protocol(runner.server, self, **kwargs),
                                                    self.host, self.port)
        except OSError as exc:
            await runner.cleanup()
            raise OSError(exc.errno, f"control API cannot listen on {self.host}:{self.port}: {exc.strerror}") from exc
        self._runner = runner
        # With a host that resolves to several addresses and port 0, each socket gets
        # its own port; the first one is the advertised one.
        self.port = self._server.sockets[0].getsockname()[1]
        log.info("control API listening on %s (dashboard: %s/)", self.url, self.url)

    async def stop(self) -> None:
        server, self._server = self._server, None
        runner, self._runner = self._runner, None
        if server is None:
            return
        server.close()
        for stream in list(self._streams):
            stream.close()  # every event stream ends cleanly (its last chunk is written)
        if runner is not None:
            await runner.cleanup()
        for proto in list(self._protocols):  # idle keep-alive connections
            if proto.transport is not None:
                proto.transport.close()
        await server.wait_closed()

    # -- the route table: the router and the OpenAPI document are both made from it

    def _route_table(self) -> list[_Route]:
        obj = {"type": "object", "additionalProperties": False}
        empty = {**obj, "properties": {}, "description": "no body, or an empty JSON object"}
        conn = ({"name": "id", "in": "path", "required": True, "schema": {"type": "integer", "minimum": 1},
                 "description": "connector id, 1..connectors"},)
        conn0 = ({"name": "id", "in": "path", "required": True, "schema": {"type": "integer", "minimum": 0},
                  "description": "connector id; 0 is the whole station"},)
        info = {"type": "string", "maxLength": INFO_MAX_LEN}
        delay = {"type": "number", "minimum": 0, "maximum": NETWORK_MAX_DELAY_MS}
        rule = {"type": "object", "additionalProperties": True, "required": ["id"],
                "properties": {"id": {"type": "string"}}, "description": "a fault rule, with its id"}
        rule_in = {"type": "object", "required": ["on", "direction", "do"], "additionalProperties": False,
                   "properties": {
                       "on": {"type": "string", "description": "an OCPP action name, or \"*\""},
                       "direction": {"enum": ["in", "out"]},
                       "do": {"enum": ["reply", "callerror", "silence", "delay", "duplicate", "garble",
                                       "invalid", "drop"]},
                       "payload": {"type": "object"}, "code": {"type": "string"},
                       "description": {"type": "string"}, "seconds": {"type": "number", "minimum": 0},
                       "count": {"type": "integer", "minimum": 1},
                       "probability": {"type": "number", "minimum": 0, "maximum": 1},
                       "seed": {"type": "integer"}}}
        routes = [
            _Route("GET", "/api/state", self._state, "The station state", result=_STATE_SCHEMA),
            _Route("POST", "/api/connectors/{id}/plug", self._plug, "Plug the EV in", body=empty,
                   result=_STATE_SCHEMA, errors=(404,), params=conn),
            _Route("POST", "/api/connectors/{id}/unplug", self._unplug, "Unplug the EV", body=empty,
                   result=_STATE_SCHEMA, errors=(404,), params=conn),
            _Route("POST", "/api/rfid", self._rfid, "Present a card", body_required=True, result=_STATE_SCHEMA,
                   body={**obj, "required": ["idTag"],
                         "properties": {"idTag": {"type": "string", "minLength": 1, "maxLength": ID_TAG_MAX_LEN}}}),
            _Route("POST", "/api/connectors/{id}/fault", self._fault, "Raise a connector or station fault",
                   body_required=True, result=_STATE_SCHEMA, errors=(404,), params=conn0,
                   body={**obj, "required": ["errorCode"],
                         "properties": {"errorCode": {"enum": list(FAULT_ERROR_CODES)}, "info": info}}),
            _Route("DELETE", "/api/connectors/{id}/fault", self._clear_fault, "Clear the fault",
                   result=_STATE_SCHEMA, errors=(404,), params=conn0),
            _Route("POST", "/api/connectors/{id}/ev", self._ev, "Steer the simulated EV", body_required=True,
                   result=_STATE_SCHEMA, errors=(404,), params=conn,
                   body={**obj, "minProperties": 1, "properties": {"suspended": {"type": "boolean"},
                                                                   "maxPowerW": {"type": "number", "minimum": 0}}}),
            _Route("POST", "/api/network", self._network, "Cut, restore or impair the CSMS link", tag="link",
                   body_required=True, errors=(501,),
                   result={"type": "object", "additionalProperties": True},
                   body={**obj, "minProperties": 1, "properties": {
                       "online": {"type": "boolean"}, "latency_ms": delay, "jitter_ms": delay,
                       "drop_rate": {"type": "number", "minimum": 0, "maximum": 1},
                       "half_open": {"type": "boolean"},
                       "close_code": {"type": "integer", "minimum": CLOSE_CODE_MIN, "maximum": CLOSE_CODE_MAX},
                       "seed": {"type": "integer", "minimum": 0, "maximum": SEED_MAX}}}),
            _Route("POST", "/api/tamper", self._tamper, "Trip the tamper switch (TamperDetectionActivated)",
                   body={**obj, "properties": {"info": info}}, result=_STATE_SCHEMA),
            _Route("POST", "/api/faults", self._add_fault, "Install a protocol fault rule", tag="faults",
                   body=rule_in, body_required=True, status=201, result=rule, errors=(501,)),
            _Route("GET", "/api/faults", self._list_faults, "The installed fault rules", tag="faults",
                   result={"type": "array", "items": rule}, errors=(501,)),
            _Route("DELETE", "/api/faults", self._clear_faults, "Remove every fault rule", tag="faults",
                   status=204, errors=(501,)),
            _Route("DELETE", "/api/faults/{id}", self._remove_fault, "Remove one fault rule", tag="faults",
                   status=204, errors=(404, 501),
                   params=({"name": "id", "in": "path", "required": True, "schema": {"type": "string"}},)),
            _Route("GET", "/api/trace", self._trace, "Recent wire frames from the trace ring buffer", tag="link",
                   errors=(501,),
                   params=({"name": "since", "in": "query", "required": False,
                            "schema": {"type": "integer", "minimum": 0, "default": 0},
                            "description": "the first frame number wanted (the previous answer's next)"},),
                   result={"type": "object", "required": ["next", "frames"],
                           "properties": {"next": {"type": "integer"},
                                          "frames": {"type": "array", "items": {"type": "object"}}}}),
            _Route("GET", "/api/events", self._events, "Server-Sent Events: state changes and wire frames",
                   tag="events", content="text/event-stream", errors=(501,),
                   result={"type": "string", "description": "event: <type>\\ndata: <json>\\n\\n per event; a "
                           "comment line every 15 s; types: state, frame, overflow"}),
            _Route("GET", "/api/openapi.json", self._openapi, "This document", tag="meta",
                   result={"type": "object"}),
            _Route("GET", "/", self._dashboard, "The bench dashboard (docs/dashboard.md)", tag="dashboard",
                   content="text/html", result={"type": "string", "description": "the dashboard's HTML page"}),
            _Route("GET", "/dashboard/{name}", self._dashboard_file, "A file of the dashboard (script, style)",
                   tag="dashboard", content="text/*", errors=(404,),
                   params=({"name": "name", "in": "path", "required": True,
                            "schema": {"enum": sorted(DASHBOARD_FILES)}},),
                   result={"type": "string", "description": "the file, as it ships in twin/dashboard/"}),
            _Route("GET", "/metrics", self._metrics, "Prometheus metrics (text exposition format)", tag="metrics",
                   content=_metrics_content_type(), errors=(501, 503),
                   result={"type": "string", "description": "the Prometheus text format; the metric names are in "
                           "docs/control-api.md"}),
        ]
        if self.debug:
            routes.append(_Route("POST", "/api/debug/block", self._debug_block,
                                 "Block the event loop (watchdog test; [control] debug only)", tag="debug",
                                 body_required=True, result={"type": "object"},
                                 body={**obj, "required": ["seconds"], "properties": {
                                     "seconds": {"type": "number", "exclusiveMinimum": 0,
                                                 "maximum": DEBUG_BLOCK_MAX_SECONDS}}}))
        return routes

    def openapi(self) -> dict:
        """The OpenAPI 3.1 document of this server's routes (the debug route only when enabled)."""
        import twin

        error = {"description": "an error", "content": {_JSON: {"schema": {"$ref": "#/components/schemas/Error"}}}}
        common = {400: "invalid input", 401: "no or a wrong bearer token", 403: "a web page's Origin not allowed",
                  404: "no such connector, rule or route", 405: "method not allowed", 408: "request too slow",
                  411: "a body needs a Content-Length", 413: "body too large", 415: "not application/json",
                  421: "Host is not this server", 501: "the station runtime lacks this feature",
                  503: "not ready: ask again shortly",
                  504: "the station did not answer in time"}
        paths: dict[str, dict] = {}
        for route in self.routes:
            responses: dict[str, Any] = {}
            if route.status == 204:
                responses["204"] = {"description": "done"}
            else:
                responses[str(route.status)] = {"description": "success",
                                                "content": {route.content: {"schema": route.result or {}}}}
            for code in sorted({400, 401, 403, 421, *((415, 413) if route.body else ()), *route.errors}):
                responses[str(code)] = {**error, "description": common.get(code, "error")}
            op: dict[str, Any] = {"operationId": route.handler.__name__.strip("_").replace("_", "-"),
                                  "summary": route.summary, "tags": [route.tag], "responses": responses}
            if route.tag == "dashboard":
                op["security"] = [{}]  # the page's files need no token: the page asks for it
            if route.params:
                op["parameters"] = list(route.params)
            if route.body is not None:
                op["requestBody"] = {"required": route.body_required,
                                     "content": {_JSON: {"schema": route.body}}}
            paths.setdefault(route.path, {})[route.method.lower()] = op
        bearer = [{"bearerAuth": []}]
        return {
            "openapi": "3.1.0",
            "info": {"title": "ocpp-twin bench control API", "version": twin.__version__,
                     "description": "Drive a running OCPP 1.6J charge-point twin; see docs/control-api.md."},
            "paths": paths,
            "components": {
                "schemas": {"Error": {"type": "object", "required": ["error"],
                                      "properties": {"error": {"type": "string"}}}},
                "securitySchemes": {"bearerAuth": {
                    "type": "http", "scheme": "bearer",
                    "description": "the token from [control] token_file (RFC 6750); needed on every route "
                                   "when one is set"}},
            },
            # With a token every route needs it; without one, no credentials (the empty requirement).
            "security": bearer if self._token is not None else [{}, *bearer],
        }

    # -- the middleware: framing limits, who may ask, then the route

    @web.middleware
    async def _middleware(self, request: web.Request, handler: Callable[[web.Request], Awaitable[Any]]) -> web.StreamResponse:
        proto = request.protocol
        if isinstance(proto, _Protocol):
            proto.request_started()
        try:
            try:
                req = await self._frame(request, proto)
            except ApiError as exc:
                return _error(exc.status, exc.message, close=exc.close)
            request[_TWIN] = req
            peer = request.transport.get_extra_info("peername") if request.transport else None
            local = request.transport.get_extra_info("sockname") if request.transport else None
            arrival = _Arrival(frozenset(_host_key(name) for name in (*LOOPBACK_NAMES, self.host,
                                                                      *(local[:1] if local else ()))),
                               int(local[1]) if local else self.port, str(peer[0]) if peer else "?")
            # The dashboard's own files (the routed handler, not a path prefix: no spelling of a
            # path reaches another route through this) hold no station data and switch nothing:
            # a browser must load them before the page can ask for the token.
            public = getattr(request.match_info, "handler", None) in (self._dashboard, self._dashboard_file)
            refusal = self._guard(req, arrival, public=public)
            if refusal is not None:
                status, payload, extra = refusal
                return _json_response(status, payload, extra)
            return await self._call(request, req, handler)
        finally:
            if isinstance(proto, _Protocol):
                proto.request_done()

    async def _frame(self, request: web.Request, proto: Any) -> _Request:
        """The limits aiohttp's parser does not apply, and the body, read within the deadline."""
        version = request.version
        if version.major != 1:
            if version.major == 0:  # HTTP/0.9: a request line without a version
                raise ApiError(400, "malformed request line; expected 'METHOD /path HTTP/1.1'", close=True)
            raise ApiError(505, f"HTTP/{version.major}.{version.minor} is not supported; use HTTP/1.1", close=True)
        headers: dict[str, str] = {}
        head_size = len(request.method) + len(request.raw_path) + 12
        for raw_name, raw_value in request.raw_headers:
            head_size += len(raw_name) + len(raw_value) + 4
            key, value = raw_name.decode("latin-1").lower(), raw_value.decode("latin-1")
            headers[key] = f"{headers[key]}, {value}" if key in headers else value
        if head_size > MAX_HEAD_BYTES:
            raise ApiError(431, f"request head larger than {MAX_HEAD_BYTES} bytes", close=True)
        target, authority = request.raw_path, None
        if target.lower().startswith(("http://", "https://")):  # absolute-form, RFC 9112 §3.2.2
            parts = target.split("/", 3)
            authority = parts[2]
        path = request.rel_url.raw_path
        req = _Request(request.method, path, headers, target_authority=authority,
                       query={k: v for k, v in request.rel_url.query.items()})
        expect = headers.get("expect", "").lower()
        if expect and expect != "100-continue":
            raise ApiError(417, f"unsupported Expect: {headers['expect'][:100]!r}", close=True)
        if "transfer-encoding" in headers:
            raise ApiError(411, "Transfer-Encoding is not supported; send the body with a Content-Length", close=True)
        if "content-length" in headers:
            req.has_length = True
            length = request.content_length or 0
            if length > MAX_BODY_BYTES:
                raise ApiError(413, f"request body of {length} bytes exceeds the {MAX_BODY_BYTES}-byte limit",
                               close=True)
            if length:
                if expect == "100-continue":
                    await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
                deadline = proto.deadline if isinstance(proto, _Protocol) else (
                    asyncio.get_running_loop().time() + self.request_timeout)
                try:
                    async with asyncio.timeout_at(deadline):
                        req.body = await request.read()
                except TimeoutError:
                    raise ApiError(408, f"request not received within {self.request_timeout:g} s", close=True) from None
                except Exception as exc:  # noqa: BLE001 - the client went away mid-body
                    raise ApiError(400, f"the request body ended early ({type(exc).__name__})", close=True) from None
        return req

    async def _on_prepare(self, request: web.Request, resp: web.StreamResponse) -> None:
        """Every answer: no caching, an explicit Connection, CORS for an allowed page, and JSON
        even where aiohttp made the answer itself."""
        resp.headers["Server"] = "ocpp-twin"
        resp.headers.setdefault("Cache-Control", "no-store")
        keep_alive = resp.keep_alive if resp.keep_alive is not None else request.keep_alive
        resp.headers["Connection"] = "keep-alive" if keep_alive else "close"
        origin = (request.headers.get("Origin") or "").lower()
        if origin and origin in self.allowed_origins:
            resp.headers["Access-Control-Allow-Origin"] = origin
            resp.headers["Vary"] = "Origin"
        if (isinstance(resp, web.Response) and resp.status >= 400 and resp.content_type != _JSON
                and not resp.prepared):
            resp.body = json.dumps({"error": resp.reason or HTTPStatus(resp.status).phrase}).encode()
            resp.content_type = _JSON
            resp.charset = None

    # -- who may ask

    def _refuse(self, request: _Request, peer: str, status: int, message: str,
                extra: dict[str, str] | None = None) -> tuple[int, Any, dict[str, str] | None]:
        now = time.monotonic()
        if now - self._refusal_logged_at >= REFUSAL_LOG_INTERVAL_S:
            more = f" ({self._refusals_not_logged} more refused since the last report)" if self._refusals_not_logged else ""
            # The message never holds the Authorization header; Host and Origin are shown escaped.
            log.warning("control API: refused %s %r from %s: %d %s%s", request.method, request.path[:80], peer,
                        status, message, more)
            self._refusal_logged_at, self._refusals_not_logged = now, 0
        else:
            self._refusals_not_logged += 1
        return status, {"error": message}, extra

    def _guard(self, request: _Request, arrival: _Arrival, *,
               public: bool = False) -> tuple[int, Any, dict[str, str] | None] | None:
        """The refusal for a request that is not let through, or None. Runs before the handler.
        ``public``: Host and Origin are checked, the bearer token is not (the dashboard's files)."""
        peer, port = arrival.peer, arrival.port
        authority = request.authority
        if not authority:
            return self._refuse(request, peer, 400, "a Host header is required (RFC 9112 §3.2)")
        parsed = split_authority(authority)
        if parsed is None:
            return self._refuse(request, peer, 400, f"malformed Host {authority[:100]!r}")
        # DNS rebinding: a page from evil.example whose name now resolves to this station
        # reaches it with "Host: evil.example". RFC 9110 §15.5.20: 421, this server does not
        # answer for that name. (403 would say "not allowed", suggesting credentials would help.)
        name, given_port = parsed
        if name not in arrival.hosts or (given_port if given_port is not None else 80) != port:
            return self._refuse(request, peer, 421, f"Host {authority[:100]!r} is not this control API; use "
                                                    f"localhost:{port} or the address it listens on")
        origin = request.headers.get("origin")
        if origin is not None and origin.lower() not in self.allowed_origins and not _same_origin(origin, authority):
            return self._refuse(request, peer, 403, f"requests from web pages are refused: Origin {origin[:100]!r} is "
                                                    "not in [control] allowed_origins")
        if origin is not None and request.method == "OPTIONS" and "access-control-request-method" in request.headers:
            # A CORS preflight carries no credentials (Fetch standard): answer it before the token check.
            return 204, None, {"Access-Control-Allow-Methods": CORS_METHODS,
                               "Access-Control-Allow-Headers": CORS_HEADERS,
                               "Access-Control-Max-Age": str(CORS_MAX_AGE_S)}
        if self._token is not None and not public:
            scheme, _, credentials = request.headers.get("authorization", "").partition(" ")
            query_token = request.query.get(EVENTS_TOKEN_PARAM)
            if (query_token is not None and not credentials.strip() and request.method == "GET"
                    and self._is_event_stream(request.path)):
                # RFC 6750 §2.3 (URI query parameter), on the read-only event stream only: an
                # EventSource cannot send headers. Everywhere else the parameter is ignored.
                scheme, credentials = "bearer", query_token
            if scheme.lower() != "bearer" or not credentials.strip():
                return self._refuse(request, peer, 401, "a bearer token is required: send 'Authorization: Bearer "
                                                        "<token>' with the token from [control] token_file",
                                    {"WWW-Authenticate": f'Bearer realm="{BEARER_REALM}"'})
            if not hmac.compare_digest(credentials.strip().encode("utf-8", "replace"), self._token):
                return self._refuse(request, peer, 401, "the bearer token is wrong",
                                    {"WWW-Authenticate": f'Bearer realm="{BEARER_REALM}", error="invalid_token"'})
        return None

    # -- routing

    async def _call(self, request: web.Request, req: _Request,
                    handler: Callable[[web.Request], Awaitable[Any]]) -> web.StreamResponse:
        route_handler = getattr(request.match_info, "handler", None)
        try:
            if route_handler == self._events or self._is_event_stream(request.path):
                # A stream (a fleet member's too): its own keepalive and write timeouts.
                return await handler(request)
            # The debug route blocks on purpose (the systemd watchdog test): give it its time.
            extra_time = DEBUG_BLOCK_MAX_SECONDS if route_handler == self._debug_block else 0.0
            async with asyncio.timeout(self.backend_timeout + extra_time):
                result = await handler(request)
            if isinstance(result, web.StreamResponse):
                return result
            if not isinstance(result, dict):
                raise TypeError(f"backend returned {type(result).__name__}, not a dict")
            resp = _json_response(200, result)  # json.dumps fails here, as a 500, not mid-answer
            return _conditional(req, resp) if req.method in ("GET", "HEAD") else resp
        except web.HTTPMethodNotAllowed as exc:
            allowed = ", ".join(sorted(exc.allowed_methods))
            return _error(405, f"method {req.method} not allowed on {req.path}; allowed: {allowed}", {"Allow": allowed})
        except web.HTTPNotFound:
            return _error(404, f"no such route: {req.path}")
        except web.HTTPException as exc:
            return _error(exc.status, exc.reason)
        except ApiError as exc:
            status = exc.status if 400 <= exc.status <= 599 else 500
            return _error(status, exc.message, exc.headers, close=exc.close)
        except TimeoutError:
            message = f"the station did not answer within {self.backend_timeout:g} s"
            log.error("control API: %s %s: %s", req.method, req.path, message)
            return _error(504, message)
        except Exception as exc:
            log.exception("control API: %s %s failed", req.method, req.path)
            return _error(500, f"internal error: {type(exc).__name__}: {exc}")

    async def _contract(self, name: str, what: str, *args: Any, **kwargs: Any) -> Any:
        """Call a toolkit method of the backend: 501 while the runtime lacks it, 400 for the
        ValueError it raises on input it refuses."""
        method = getattr(self.backend, name, None)
        if method is None:
            raise ApiError(501, f"{what} is not available: the station runtime has no {name}()")
        try:
            result = method(*args, **kwargs)
            if inspect.isawaitable(result):
                result = await result
        except ValueError as exc:
            raise ApiError(400, str(exc) or f"{name}: invalid input") from None
        return result

    def _connector(self, request: web.Request, *, station_ok: bool = False) -> int:
        """The connector id in the path, as sent (no percent-decoding: '%31' is not '1')."""
        raw_id = request[_TWIN].path.split("/")[3]
        count = self.backend.connector_count
        # Connector 0 is the whole station: it can be faulted (OCTT SetChargePointFaulted), not plugged.
        lowest = 0 if station_ok else 1
        if not (raw_id.isascii() and raw_id.isdigit() and lowest <= int(raw_id) <= count):
            raise ApiError(404, f"no connector {raw_id!r}: connector ids are integers {lowest}..{count}")
        return int(raw_id)

    # -- handlers: validate, then call the backend

    async def _state(self, request: web.Request) -> dict:
        _json_object(request[_TWIN], set(), body_required=False)
        return self.backend.state()

    async def _plug(self, request: web.Request) -> dict:
        connector_id = self._connector(request)
        _json_object(request[_TWIN], set(), body_required=False)
        return await self.backend.plug(connector_id)

    async def _unplug(self, request: web.Request) -> dict:
        connector_id = self._connector(request)
        _json_object(request[_TWIN], set(), body_required=False)
        return await self.backend.unplug(connector_id)

    async def _clear_fault(self, request: web.Request) -> dict:
        connector_id = self._connector(request, station_ok=True)
        _json_object(request[_TWIN], set(), body_required=False)
        return await self.backend.clear_fault(connector_id)

    async def _rfid(self, request: web.Request) -> dict:
        data = _json_object(request[_TWIN], {"idTag"}, body_required=True)
        id_tag = _text("idTag", _required(data, "idTag"), ID_TAG_MAX_LEN, allow_empty=False)
        return await self.backend.rfid(id_tag)

    async def _fault(self, request: web.Request) -> dict:
        connector_id = self._connector(request, station_ok=True)
        data = _json_object(request[_TWIN], {"errorCode", "info"}, body_required=True)
        code = _required(data, "errorCode")
        if code not in FAULT_ERROR_CODES:  # also rejects non-strings: they are never in the tuple
            raise ApiError(400, f"'errorCode' must be one of {', '.join(FAULT_ERROR_CODES)}; got {json.dumps(code)}")
        info = _text("info", data["info"], INFO_MAX_LEN, allow_empty=True) if "info" in data else None
        return await self.backend.fault(connector_id, code, info)

    async def _ev(self, request: web.Request) -> dict:
        connector_id = self._connector(request)
        data = _json_object(request[_TWIN], {"suspended", "maxPowerW"}, body_required=True)
        if not data:
            raise ApiError(400, "give at least one of 'suspended' and 'maxPowerW'")
        suspended = _boolean("suspended", data["suspended"]) if "suspended" in data else None
        max_power = _number("maxPowerW", data["maxPowerW"], minimum=0.0) if "maxPowerW" in data else None
        return await self.backend.ev(connector_id, suspended, max_power)

    async def _network(self, request: web.Request) -> dict:
        """The CSMS link: on/off (the original body), and impairment (latency, jitter, drops,
        a half-open socket, a close with a code), seeded so a run can be repeated."""
        data = _json_object(request[_TWIN], set(_NETWORK_FIELDS), body_required=True)
        if not data:
            raise ApiError(400, f"give at least one of {', '.join(map(repr, _NETWORK_FIELDS))}")
        online = _boolean("online", data["online"]) if "online" in data else None
        impair: dict[str, Any] = {}
        for name in ("latency_ms", "jitter_ms"):
            if name in data:
                impair[name] = _number(name, data[name], minimum=0.0, maximum=NETWORK_MAX_DELAY_MS)
        if "drop_rate" in data:
            impair["drop_rate"] = _number("drop_rate", data["drop_rate"], minimum=0.0, maximum=1.0)
        if "half_open" in data:
            impair["half_open"] = _boolean("half_open", data["half_open"])
        if "close_code" in data:
            impair["close_code"] = _integer("close_code", data["close_code"], minimum=CLOSE_CODE_MIN,
                                            maximum=CLOSE_CODE_MAX)
        if "seed" in data:
            impair["seed"] = _integer("seed", data["seed"], minimum=0, maximum=SEED_MAX)
        if not impair:
            return await self.backend.network(online)
        try:
            params = inspect.signature(self.backend.network).parameters
        except (TypeError, ValueError):
            params = {}
        takes_all = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
        missing = [name for name in impair if name not in params and not takes_all]
        if missing:
            raise ApiError(501, f"network impairment is not available: the station runtime's network() does not "
                                f"take {', '.join(missing)}")
        return await self._contract("network", "network impairment", online, **impair)

    async def _tamper(self, request: web.Request) -> dict:
        """The enclosure's tamper switch: TamperDetectionActivated, a critical security event."""
        data = _json_object(request[_TWIN], {"info"}, body_required=False)
        info = _text("info", data["info"], INFO_MAX_LEN, allow_empty=True) if "info" in data else None
        return await self.backend.tamper(info)

    async def _debug_block(self, request: web.Request) -> dict:
        data = _json_object(request[_TWIN], {"seconds"}, body_required=True)
        seconds = _number(
            "seconds", _required(data, "seconds"), minimum=0.0, maximum=DEBUG_BLOCK_MAX_SECONDS, exclusive_min=True
        )
        return await self.backend.debug_block(seconds)

    async def _add_fault(self, request: web.Request) -> web.Response:
        # The rule's fields are the fault module's to validate (one parser for API, CLI and TOML).
        data = _json_object(request[_TWIN], None, body_required=True)
        rule = await self._contract("add_fault", "fault injection", data)
        if not isinstance(rule, dict):
            raise TypeError(f"add_fault returned {type(rule).__name__}, not a dict")
        return _json_response(201, rule)

    async def _list_faults(self, request: web.Request) -> web.Response:
        _json_object(request[_TWIN], set(), body_required=False)
        rules = await self._contract("faults", "fault injection")
        if not isinstance(rules, list):
            raise TypeError(f"faults returned {type(rules).__name__}, not a list")
        return _json_response(200, rules)

    async def _clear_faults(self, request: web.Request) -> web.Response:
        _json_object(request[_TWIN], set(), body_required=False)
        await self._contract("clear_faults", "fault injection")
        return _json_response(204, None)

    async def _remove_fault(self, request: web.Request) -> web.Response:
        _json_object(request[_TWIN], set(), body_required=False)
        rule_id = _text("id", request.match_info["id"], FAULT_ID_MAX_LEN, allow_empty=False)
        if not await self._contract("remove_fault", "fault injection", rule_id):
            raise ApiError(404, f"no fault rule {rule_id!r}")
        return _json_response(204, None)

    async def _trace(self, request: web.Request) -> dict:
        req = request[_TWIN]
        _json_object(req, set(), body_required=False)
        since = _query_integer(_query(req, ("since",)), "since", 0, 10**18 - 1, "a frame number >= 0")
        return await self._contract("trace_since", "the wire trace", since or 0)

    async def _openapi(self, request: web.Request) -> dict:
        _json_object(request[_TWIN], set(), body_required=False)
        return self.openapi()

    async def _dashboard(self, request: web.Request) -> web.Response:
        return await self._dashboard_file(request, "index.html")

    async def _dashboard_file(self, request: web.Request, name: str | None = None) -> web.Response:
        """One of the dashboard's own files, by its exact name (no path is ever built from the
        request beyond that lookup). Every check of the middleware has run: Host, Origin, token."""
        _json_object(request[_TWIN], set(), body_required=False)
        name = name if name is not None else request.match_info["name"]
        content_type = DASHBOARD_FILES.get(name)
        if content_type is None:
            raise ApiError(404, f"no dashboard file {name[:64]!r}")
        from importlib import resources

        try:
            body = await asyncio.to_thread(resources.files("twin").joinpath("dashboard", name).read_bytes)
        except OSError as exc:
            raise ApiError(404, f"dashboard file {name!r} is not installed ({exc.strerror or exc})") from None
        return web.Response(status=200, body=body, headers={"Content-Type": content_type, **DASHBOARD_HEADERS})

    async def _metrics(self, request: web.Request) -> web.Response:
        """Prometheus scrapes this (twin.metrics): the registry in its text format. The checks
        of every route apply: a scrape config sends the token (``authorization`` /
        ``credentials_file``) and the Host of the address it scrapes."""
        _json_object(request[_TWIN], set(), body_required=False)
        if not hasattr(self.backend, "metrics"):
            raise ApiError(501, "metrics are not available: the station runtime has no metrics")
        metrics = self.backend.metrics
        if metrics is None:
            raise ApiError(503, "the station's metrics are not running (starting up, or prometheus-client is "
                                "not installed)", headers={"Retry-After": "1"})
        return web.Response(status=200, body=metrics.exposition(), headers={"Content-Type": metrics.content_type})

    async def _events(self, request: web.Request) -> web.StreamResponse:
        """Server-Sent Events (WHATWG HTML §9.2): ``event: <type>`` and ``data: <json>`` per event,
        a comment line every ``sse_keepalive_s``; the stream ends when the server stops."""
        req = request[_TWIN]
        _json_object(req, set(), body_required=False)
        hub = getattr(self.backend, "events", None)
        if hub is None:
            raise ApiError(501, "the event stream is not available: the station runtime has no event hub")
        sub = hub.subscribe()
        self._streams.add(sub)
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-store",
                                           "X-Accel-Buffering": "no"})
        try:
            await resp.prepare(request)
            # A first comment, so a client knows the stream is open before any event.
            await self._sse_write(resp, b": ocpp-twin events\n\n")
            while True:
                try:
                    async with asyncio.timeout(self.sse_keepalive_s):
                        event = await sub.get()
                except TimeoutError:
                    await self._sse_write(resp, b": keepalive\n\n")
                    continue
                if event is None:
                    break  # the server is stopping
                kind = re.sub(r"[^A-Za-z0-9_.-]", "_", str(event.get("type", "message")))[:40]
                try:
                    data = json.dumps(event.get("data"), ensure_ascii=False, allow_nan=False, default=str)
                except (TypeError, ValueError) as exc:
                    log.warning("control API: event %r is not JSON (%s); skipped", kind, exc)
                    continue
                await self._sse_write(resp, f"event: {kind}\ndata: {data}\n\n".encode())
            await resp.write_eof()
        except (ConnectionError, TimeoutError):
            pass  # the reader went away or stopped reading: its subscription ends here
        finally:
            sub.close()
            self._streams.discard(sub)
        return resp

    def _is_event_stream(self, path: str) -> bool:
        """The read-only event stream's path: the one route that takes the token as a query parameter."""
        return path == "/api/events"

    async def _sse_write(self, resp: web.StreamResponse, data: bytes) -> None:
        async with asyncio.timeout(self.request_timeout):  # a reader that stops reading is let go
            await resp.write(data)
