"""Bench control HTTP/JSON API: how the bench rig, the dashboard and test scripts
drive the twin (plug, unplug, present a card, inject faults, steer the EV, cut the
CSMS link). The routes are a public, stable interface (issue 2, "Bench control
API"); they are documented in ``docs/control-api.md``.

The HTTP/1.1 server is deliberately small and written on ``asyncio.start_server``
so the station needs no web framework. It is built to survive whatever reaches
it: head and body sizes are capped, every request must arrive within
``request_timeout`` (a stalled client cannot hold a connection), the number of
connections is capped, and every failure becomes a JSON ``{"error": "..."}``
answer, never an exception that could take the station down.

It can switch a contactor and bill a card, so every request, on every route,
passes four checks first, in this order:

1. ``Host`` names this server: the bind address, the address the connection
   arrived at, or localhost, with the port the connection arrived at. Anything
   else is a DNS-rebinding page or a misdirected client: 421.
2. An ``Origin`` header (a browser always sends one on a cross-origin POST or
   DELETE, RFC 6454 §7.3 and the Fetch standard) must be in ``allowed_origins``
   (empty by default): 403 otherwise. Allowed origins get CORS answers.
3. With a token, ``Authorization: Bearer <token>`` (RFC 6750 §2.1): 401 otherwise.
4. A body must be ``application/json`` (415), which a page cannot send
   cross-origin without a preflight. A request without a body stays valid.

Validation lives here, before the backend is called, so the station runtime
only ever sees well-formed values.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import ipaddress
import json
import logging
import math
import re
import time
from collections.abc import Iterable
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any, Awaitable, Callable, Protocol
from urllib.parse import urlsplit

from ocpp.v16.enums import ChargePointErrorCode

log = logging.getLogger(__name__)

# Bodies here are a few dozen bytes; the caps only keep garbage from costing memory.
MAX_HEAD_BYTES = 8192
MAX_HEADERS = 64
MAX_BODY_BYTES = 8192

# OCPP 1.6 §7.6/7.7: idTag is an IdToken = CiString20Type; StatusNotification.info
# is CiString50Type.
ID_TAG_MAX_LEN = 20
INFO_MAX_LEN = 50
# NoError is not a fault: clearing is DELETE /api/connectors/{id}/fault.
FAULT_ERROR_CODES: tuple[str, ...] = tuple(
    code.value for code in ChargePointErrorCode if code is not ChargePointErrorCode.no_error
)
DEBUG_BLOCK_MAX_SECONDS = 600.0

_REQUEST_LINE = re.compile(r"([!#$%&'*+.^_`|~0-9A-Za-z-]+) (\S+) HTTP/(\d)\.(\d)")
_HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_CONNECTOR_PATH = re.compile(r"/api/connectors/([^/]*)/(plug|unplug|fault|ev)")

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


class ApiError(Exception):
    """An answer other than 200. The backend may raise it too (e.g. 409 when the
    station cannot do what was asked in its current state)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class _CloseAfter(ApiError):
    """An ApiError after which the connection cannot be reused (framing is lost)."""


class ControlBackend(Protocol):
    """Implemented by the station runtime. Arguments arrive already validated."""

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


# ---------------------------------------------------------------- HTTP framing


@dataclass
class _Request:
    method: str
    path: str
    version: tuple[int, int]
    headers: dict[str, str]  # lower-case names; repeated headers joined with ", "
    body: bytes = b""
    has_length: bool = False  # a Content-Length header was sent
    # The authority of an absolute-form target; RFC 9112 §3.2.2: it then replaces Host.
    target_authority: str | None = None

    @property
    def authority(self) -> str | None:
        return self.target_authority if self.target_authority is not None else self.headers.get("host")

    def wants_close(self) -> bool:
        tokens = {t.strip().lower() for t in self.headers.get("connection", "").split(",")}
        if self.version >= (1, 1):
            return "close" in tokens
        return "keep-alive" not in tokens


def _response(status: int, payload: Any, *, close: bool, extra: dict[str, str] | None = None) -> bytes:
    # RFC 9110 §15.3.5: a 204 (the answer to a CORS preflight) has no content.
    body = b"" if status == 204 else json.dumps(payload, ensure_ascii=False, allow_nan=False).encode("utf-8")
    lines = [f"HTTP/1.1 {status} {HTTPStatus(status).phrase}"]
    if status != 204:
        lines.append("Content-Type: application/json")
    lines += [
        f"Content-Length: {len(body)}",
        "Cache-Control: no-store",
        f"Connection: {'close' if close else 'keep-alive'}",
    ]
    lines += [f"{name}: {value}" for name, value in (extra or {}).items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


async def _read_line(reader: asyncio.StreamReader, budget: int, too_long: ApiError) -> bytes:
    """One head line without its line ending. Bare LF is accepted (RFC 9112 §2.2)."""
    try:
        line = await reader.readuntil(b"\n")
    except asyncio.LimitOverrunError:
        raise too_long from None
    if len(line) > budget:
        raise too_long
    return line.rstrip(b"\r\n") if line.endswith(b"\r\n") else line[:-1]


async def _read_request(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> _Request:
    """Read and frame one request. Raises asyncio.IncompleteReadError on EOF and
    _CloseAfter for anything that leaves the byte stream unusable."""
    budget = MAX_HEAD_BYTES
    uri_too_long = _CloseAfter(414, f"request line longer than {MAX_HEAD_BYTES} bytes")
    line = b""
    while not line:  # RFC 9112 §2.2: ignore empty lines before the request line
        line = await _read_line(reader, budget, uri_too_long)
        budget -= len(line) + 2
        if budget < 0:
            raise uri_too_long
    try:
        text = line.decode("ascii")
    except UnicodeDecodeError:
        raise _CloseAfter(400, "request line is not ASCII") from None
    match = _REQUEST_LINE.fullmatch(text)
    if match is None:
        raise _CloseAfter(400, "malformed request line; expected 'METHOD /path HTTP/1.1'")
    method, target, major, minor = match.groups()
    if major != "1":
        raise _CloseAfter(505, f"HTTP/{major}.{minor} is not supported; use HTTP/1.1")

    headers: dict[str, str] = {}
    head_too_big = _CloseAfter(431, f"request head larger than {MAX_HEAD_BYTES} bytes")
    count = 0
    while True:
        line = await _read_line(reader, budget, head_too_big)
        budget -= len(line) + 2
        if budget < 0:
            raise head_too_big
        if not line:
            break
        count += 1
        if count > MAX_HEADERS:
            raise _CloseAfter(431, f"more than {MAX_HEADERS} header fields")
        name_bytes, sep, value_bytes = line.partition(b":")
        name = name_bytes.decode("latin-1")
        # RFC 9112 §5.1/§5.2: no whitespace before the colon, no obsolete line folding.
        if not sep or not _HEADER_NAME.fullmatch(name):
            raise _CloseAfter(400, f"malformed header line: {line[:60]!r}")
        key, value = name.lower(), value_bytes.decode("latin-1").strip(" \t")
        if key == "host" and key in headers:  # RFC 9112 §3.2
            raise _CloseAfter(400, "more than one Host header field")
        headers[key] = f"{headers[key]}, {value}" if key in headers else value

    authority = None
    if target.lower().startswith(("http://", "https://")):  # absolute-form, RFC 9112 §3.2.2
        parts = target.split("/", 3)
        authority = parts[2]
        target = "/" + parts[3] if len(parts) > 3 else "/"
    request = _Request(method, target.split("?", 1)[0], (1, int(minor)), headers, target_authority=authority)
    expect = headers.get("expect", "").lower()
    if expect and expect != "100-continue":
        raise _CloseAfter(417, f"unsupported Expect: {headers['expect']!r}")
    if "transfer-encoding" in headers:
        raise _CloseAfter(411, "Transfer-Encoding is not supported; send the body with a Content-Length")
    if "content-length" in headers:
        request.has_length = True
        values = {v.strip() for v in headers["content-length"].split(",")}
        if len(values) != 1 or not (length_text := values.pop()).isdigit() or not length_text.isascii():
            raise _CloseAfter(400, f"invalid Content-Length: {headers['content-length']!r}")
        length = int(length_text)
        if length > MAX_BODY_BYTES:
            raise _CloseAfter(413, f"request body of {length} bytes exceeds the {MAX_BODY_BYTES}-byte limit")
        if expect == "100-continue" and length:
            writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        request.body = await reader.readexactly(length)
    return request


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


def _json_object(request: _Request, allowed: set[str], *, body_required: bool) -> dict[str, Any]:
    """The request body as a JSON object holding only ``allowed`` fields."""
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
    unknown = sorted(set(data) - allowed)
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


# ---------------------------------------------------------------- the server


_Handler = Callable[[_Request, int], Awaitable[dict]]

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
        self._server: asyncio.Server | None = None
        self._connections: set[asyncio.Task[None]] = set()
        self._refusal_logged_at = -math.inf
        self._refusals_not_logged = 0

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

    async def start(self) -> None:
        if self._server is not None:
            raise RuntimeError("control API already started")
        try:
            self._server = await asyncio.start_server(
                self._on_connection, self.host, self.port, limit=MAX_HEAD_BYTES
            )
        except OSError as exc:
            raise OSError(exc.errno, f"control API cannot listen on {self.host}:{self.port}: {exc.strerror}") from exc
        # With a host that resolves to several addresses and port 0, each socket gets
        # its own port; the first one is the advertised one.
        self.port = self._server.sockets[0].getsockname()[1]
        log.info("control API listening on %s", self.url)

    async def stop(self) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        server.close()
        # Python 3.11's wait_closed() does not wait for open connections: end them here.
        for task in list(self._connections):
            task.cancel()
        await asyncio.gather(*self._connections, return_exceptions=True)
        await server.wait_closed()

    # -- connections

    async def _on_connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._connections.add(task)
        try:
            if len(self._connections) > self.max_connections:
                await self._send(writer, _response(503, {"error": "too many connections"}, close=True))
                return
            await self._serve(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError, TimeoutError):
            pass  # the peer went away or stopped reading; nothing to answer
        except asyncio.CancelledError:
            pass  # stop()
        except Exception:
            log.exception("control API: unexpected error on a connection")
        finally:
            self._connections.discard(task)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        local = writer.get_extra_info("sockname")
        peer = writer.get_extra_info("peername")
        arrival = _Arrival(frozenset(_host_key(name) for name in (*LOOPBACK_NAMES, self.host, local[0])),
                           int(local[1]), str(peer[0]) if peer else "?")
        while True:
            try:
                async with asyncio.timeout(self.request_timeout):
                    request = await _read_request(reader, writer)
            except TimeoutError:
                # RFC 9110 §15.5.9: 408 also tells an idle keep-alive client why we close.
                message = f"request not received within {self.request_timeout:g} s"
                await self._send(writer, _response(408, {"error": message}, close=True))
                return
            except asyncio.IncompleteReadError:
                return  # clean EOF between requests, or the client gave up mid-request
            except _CloseAfter as exc:
                await self._send(writer, _response(exc.status, {"error": exc.message}, close=True))
                return
            close = request.wants_close()
            status, payload, extra = await self._dispatch(request, arrival)
            await self._send(writer, _response(status, payload, close=close, extra=extra))
            if close:
                return

    async def _send(self, writer: asyncio.StreamWriter, data: bytes) -> None:
        writer.write(data)
        async with asyncio.timeout(self.request_timeout):
            await writer.drain()

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

    def _guard(self, request: _Request, arrival: _Arrival) -> tuple[int, Any, dict[str, str] | None] | None:
        """The refusal for a request that is not let through, or None. Runs before routing."""
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
        if origin is not None and origin.lower() not in self.allowed_origins:
            return self._refuse(request, peer, 403, f"requests from web pages are refused: Origin {origin[:100]!r} is "
                                                    "not in [control] allowed_origins")
        if origin is not None and request.method == "OPTIONS" and "access-control-request-method" in request.headers:
            # A CORS preflight carries no credentials (Fetch standard): answer it before the token check.
            return 204, None, {"Access-Control-Allow-Methods": CORS_METHODS,
                               "Access-Control-Allow-Headers": CORS_HEADERS,
                               "Access-Control-Max-Age": str(CORS_MAX_AGE_S)}
        if self._token is not None:
            scheme, _, credentials = request.headers.get("authorization", "").partition(" ")
            if scheme.lower() != "bearer" or not credentials.strip():
                return self._refuse(request, peer, 401, "a bearer token is required: send 'Authorization: Bearer "
                                                        "<token>' with the token from [control] token_file",
                                    {"WWW-Authenticate": f'Bearer realm="{BEARER_REALM}"'})
            if not hmac.compare_digest(credentials.strip().encode("latin-1"), self._token):
                return self._refuse(request, peer, 401, "the bearer token is wrong",
                                    {"WWW-Authenticate": f'Bearer realm="{BEARER_REALM}", error="invalid_token"'})
        return None

    # -- routing

    async def _dispatch(self, request: _Request, arrival: _Arrival) -> tuple[int, Any, dict[str, str] | None]:
        status, payload, extra = self._guard(request, arrival) or await self._call(request)
        origin = (request.headers.get("origin") or "").lower()
        if origin in self.allowed_origins:
            extra = {**(extra or {}), "Access-Control-Allow-Origin": origin, "Vary": "Origin"}
        return status, payload, extra

    async def _call(self, request: _Request) -> tuple[int, Any, dict[str, str] | None]:
        try:
            methods, connector_id = self._route(request.path)
            handler = methods.get(request.method)
            if handler is None:
                allowed = ", ".join(sorted(methods))
                return (
                    405,
                    {"error": f"method {request.method} not allowed on {request.path}; allowed: {allowed}"},
                    {"Allow": allowed},
                )
            # The debug route blocks on purpose (the systemd watchdog test): give it its time.
            extra_time = DEBUG_BLOCK_MAX_SECONDS if handler == self._debug_block else 0.0
            async with asyncio.timeout(self.backend_timeout + extra_time):
                result = await handler(request, connector_id)
            if not isinstance(result, dict):
                raise TypeError(f"backend returned {type(result).__name__}, not a dict")
            json.dumps(result, allow_nan=False)  # fail here, as a 500, not half-way through a response
            return 200, result, None
        except ApiError as exc:
            status = exc.status if 400 <= exc.status <= 599 else 500
            return status, {"error": exc.message}, None
        except TimeoutError:
            message = f"the station did not answer within {self.backend_timeout:g} s"
            log.error("control API: %s %s: %s", request.method, request.path, message)
            return 504, {"error": message}, None
        except Exception as exc:
            log.exception("control API: %s %s failed", request.method, request.path)
            return 500, {"error": f"internal error: {type(exc).__name__}: {exc}"}, None

    def _route(self, path: str) -> tuple[dict[str, _Handler], int]:
        """The handlers by method for ``path``, and the connector id it names (0: none)."""
        if path == "/api/state":
            return {"GET": self._state}, 0
        if path == "/api/rfid":
            return {"POST": self._rfid}, 0
        if path == "/api/network":
            return {"POST": self._network}, 0
        if path == "/api/tamper":
            return {"POST": self._tamper}, 0
        if path == "/api/debug/block" and self.debug:
            return {"POST": self._debug_block}, 0
        match = _CONNECTOR_PATH.fullmatch(path)
        if match is None:
            raise ApiError(404, f"no such route: {path}")
        raw_id, action = match.groups()
        count = self.backend.connector_count
        # Connector 0 is the whole station: it can be faulted (OCTT SetChargePointFaulted), not plugged.
        lowest = 0 if action == "fault" else 1
        if not (raw_id.isdigit() and lowest <= int(raw_id) <= count):
            raise ApiError(404, f"no connector {raw_id!r}: connector ids are integers {lowest}..{count}")
        routes: dict[str, dict[str, _Handler]] = {
            "plug": {"POST": self._plug},
            "unplug": {"POST": self._unplug},
            "fault": {"POST": self._fault, "DELETE": self._clear_fault},
            "ev": {"POST": self._ev},
        }
        return routes[action], int(raw_id)

    # -- handlers: validate, then call the backend

    async def _state(self, request: _Request, _: int) -> dict:
        _json_object(request, set(), body_required=False)
        return self.backend.state()

    async def _plug(self, request: _Request, connector_id: int) -> dict:
        _json_object(request, set(), body_required=False)
        return await self.backend.plug(connector_id)

    async def _unplug(self, request: _Request, connector_id: int) -> dict:
        _json_object(request, set(), body_required=False)
        return await self.backend.unplug(connector_id)

    async def _clear_fault(self, request: _Request, connector_id: int) -> dict:
        _json_object(request, set(), body_required=False)
        return await self.backend.clear_fault(connector_id)

    async def _rfid(self, request: _Request, _: int) -> dict:
        data = _json_object(request, {"idTag"}, body_required=True)
        id_tag = _text("idTag", _required(data, "idTag"), ID_TAG_MAX_LEN, allow_empty=False)
        return await self.backend.rfid(id_tag)

    async def _fault(self, request: _Request, connector_id: int) -> dict:
        data = _json_object(request, {"errorCode", "info"}, body_required=True)
        code = _required(data, "errorCode")
        if code not in FAULT_ERROR_CODES:  # also rejects non-strings: they are never in the tuple
            raise ApiError(400, f"'errorCode' must be one of {', '.join(FAULT_ERROR_CODES)}; got {json.dumps(code)}")
        info = _text("info", data["info"], INFO_MAX_LEN, allow_empty=True) if "info" in data else None
        return await self.backend.fault(connector_id, code, info)

    async def _ev(self, request: _Request, connector_id: int) -> dict:
        data = _json_object(request, {"suspended", "maxPowerW"}, body_required=True)
        if not data:
            raise ApiError(400, "give at least one of 'suspended' and 'maxPowerW'")
        suspended = _boolean("suspended", data["suspended"]) if "suspended" in data else None
        max_power = _number("maxPowerW", data["maxPowerW"], minimum=0.0) if "maxPowerW" in data else None
        return await self.backend.ev(connector_id, suspended, max_power)

    async def _network(self, request: _Request, _: int) -> dict:
        data = _json_object(request, {"online"}, body_required=True)
        return await self.backend.network(_boolean("online", _required(data, "online")))

    async def _tamper(self, request: _Request, _: int) -> dict:
        """The enclosure's tamper switch: TamperDetectionActivated, a critical security event."""
        data = _json_object(request, {"info"}, body_required=False)
        info = _text("info", data["info"], INFO_MAX_LEN, allow_empty=True) if "info" in data else None
        return await self.backend.tamper(info)

    async def _debug_block(self, request: _Request, _: int) -> dict:
        data = _json_object(request, {"seconds"}, body_required=True)
        seconds = _number(
            "seconds", _required(data, "seconds"), minimum=0.0, maximum=DEBUG_BLOCK_MAX_SECONDS, exclusive_min=True
        )
        return await self.backend.debug_block(seconds)
