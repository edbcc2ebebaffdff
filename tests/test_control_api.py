"""The bench control API against a real server on loopback, driven by real HTTP
clients (urllib in a worker thread) and raw sockets for malformed traffic. The
backend is the unit's collaborator (the station runtime) and is faked here."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import re
import socket
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from twin.config import ConfigError, StationConfig, load_config, redacted
from twin.control_api import FAULT_ERROR_CODES, MAX_BODY_BYTES, MAX_HEAD_BYTES, ApiError, ControlApi, normalize_origin

_NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class FakeBackend:
    """Records every call; ``fail`` makes the next calls raise it."""

    connector_count = 2

    def __init__(self) -> None:
        self.calls: list[tuple[Any, ...]] = []
        self.fail: BaseException | None = None
        self.result: Any = None
        self.delay = 0.0

    async def _record(self, *call: Any) -> Any:
        self.calls.append(call)
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.fail is not None:
            raise self.fail
        return self.result if self.result is not None else {"ok": True, "call": call[0]}

    def state(self) -> dict:
        self.calls.append(("state",))
        if self.fail is not None:
            raise self.fail
        return {"registration": "Accepted", "online": True, "connectors": {"1": {"status": "Available"}}}

    async def plug(self, connector_id: int) -> dict:
        return await self._record("plug", connector_id)

    async def unplug(self, connector_id: int) -> dict:
        return await self._record("unplug", connector_id)

    async def rfid(self, id_tag: str) -> dict:
        return await self._record("rfid", id_tag)

    async def fault(self, connector_id: int, error_code: str, info: str | None) -> dict:
        return await self._record("fault", connector_id, error_code, info)

    async def clear_fault(self, connector_id: int) -> dict:
        return await self._record("clear_fault", connector_id)

    async def ev(self, connector_id: int, suspended: bool | None, max_power_w: float | None) -> dict:
        return await self._record("ev", connector_id, suspended, max_power_w)

    async def network(self, online: bool) -> dict:
        return await self._record("network", online)

    async def debug_block(self, seconds: float) -> dict:
        return await self._record("debug_block", seconds)


@pytest.fixture
def backend() -> FakeBackend:
    return FakeBackend()


@pytest.fixture
async def api(backend: FakeBackend):
    server = ControlApi(backend, port=0)
    await server.start()
    yield server
    await server.stop()


def _http(url: str, method: str, body: bytes | None, headers: dict[str, str]) -> tuple[int, dict, Any]:
    req = urllib.request.Request(url, data=body, method=method, headers=headers)
    try:
        with _NO_PROXY.open(req, timeout=10) as resp:
            return resp.status, dict(resp.headers), json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, dict(exc.headers), json.loads(exc.read())


async def call(
    api: ControlApi,
    method: str,
    path: str,
    body: Any = None,
    *,
    raw: bytes | None = None,
    content_type: str | None = "application/json",
) -> tuple[int, Any]:
    """A real HTTP request from urllib, run in a thread so the server's loop keeps going."""
    data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
    headers = {"Content-Type": content_type} if content_type and data is not None else {}
    status, resp_headers, payload = await asyncio.to_thread(_http, api.url + path, method, data, headers)
    assert resp_headers["Content-Type"] == "application/json"
    return status, payload


def host(api: ControlApi) -> bytes:
    """The Host header line (without its CRLF) of a client that connected to ``api`` on loopback."""
    return f"Host: 127.0.0.1:{api.port}".encode()


async def raw_exchange(api: ControlApi, data: bytes, *, half_close: bool = False) -> bytes:
    """Send bytes on a raw socket and read until the server closes the connection."""
    reader, writer = await asyncio.open_connection("127.0.0.1" if api.host == "0.0.0.0" else api.host, api.port)
    try:
        writer.write(data)
        await writer.drain()
        if half_close:
            writer.write_eof()
        return await asyncio.wait_for(reader.read(), 10)
    finally:
        writer.close()


async def read_response(reader: asyncio.StreamReader) -> tuple[int, dict[str, str], Any]:
    """Read exactly one response from a kept-alive connection."""
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    length = int(parse_responses(head)[0][1]["content-length"])
    return parse_responses(head + await asyncio.wait_for(reader.readexactly(length), 10))[0]


def parse_responses(data: bytes) -> list[tuple[int, dict[str, str], Any]]:
    """Split a byte stream of HTTP responses into (status, headers, json body)."""
    out = []
    while data:
        head, _, rest = data.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ")[1])
        headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
        length = int(headers.get("content-length", "0"))
        body, data = rest[:length], rest[length:]
        out.append((status, headers, json.loads(body) if body else None))
    return out


# ---------------------------------------------------------------- every route


async def test_get_state_returns_backend_state(api: ControlApi, backend: FakeBackend) -> None:
    status, body = await call(api, "GET", "/api/state")
    assert status == 200
    assert body["registration"] == "Accepted" and body["connectors"]["1"]["status"] == "Available"


@pytest.mark.parametrize("action", ["plug", "unplug"])
@pytest.mark.parametrize("connector", [1, 2])
async def test_plug_and_unplug(api: ControlApi, backend: FakeBackend, action: str, connector: int) -> None:
    status, body = await call(api, "POST", f"/api/connectors/{connector}/{action}")
    assert (status, body) == (200, {"ok": True, "call": action})
    assert backend.calls == [(action, connector)]


async def test_plug_accepts_an_empty_json_object(api: ControlApi, backend: FakeBackend) -> None:
    assert (await call(api, "POST", "/api/connectors/1/plug", {}))[0] == 200
    assert backend.calls == [("plug", 1)]


async def test_rfid(api: ControlApi, backend: FakeBackend) -> None:
    assert (await call(api, "POST", "/api/rfid", {"idTag": "A" * 20}))[0] == 200
    assert backend.calls == [("rfid", "A" * 20)]


async def test_fault_with_and_without_info(api: ControlApi, backend: FakeBackend) -> None:
    assert (await call(api, "POST", "/api/connectors/2/fault", {"errorCode": "GroundFailure", "info": "x" * 50}))[0] == 200
    assert (await call(api, "POST", "/api/connectors/1/fault", {"errorCode": "OtherError"}))[0] == 200
    assert backend.calls == [("fault", 2, "GroundFailure", "x" * 50), ("fault", 1, "OtherError", None)]


def test_fault_codes_are_the_ocpp16_codes_without_no_error() -> None:
    assert "NoError" not in FAULT_ERROR_CODES
    assert {"GroundFailure", "UnderVoltage", "WeakSignal", "OtherError"} <= set(FAULT_ERROR_CODES)
    assert len(FAULT_ERROR_CODES) == 15


async def test_clear_fault(api: ControlApi, backend: FakeBackend) -> None:
    assert (await call(api, "DELETE", "/api/connectors/1/fault"))[0] == 200
    assert backend.calls == [("clear_fault", 1)]


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ({"suspended": True}, ("ev", 1, True, None)),
        ({"maxPowerW": 7400}, ("ev", 1, None, 7400.0)),
        ({"suspended": False, "maxPowerW": 0}, ("ev", 1, False, 0.0)),
        ({"maxPowerW": 3680.5}, ("ev", 1, None, 3680.5)),
    ],
)
async def test_ev(api: ControlApi, backend: FakeBackend, body: dict, expected: tuple) -> None:
    assert (await call(api, "POST", "/api/connectors/1/ev", body))[0] == 200
    assert backend.calls == [expected]
    assert isinstance(backend.calls[0][3], (float, type(None)))


@pytest.mark.parametrize("online", [True, False])
async def test_network(api: ControlApi, backend: FakeBackend, online: bool) -> None:
    assert (await call(api, "POST", "/api/network", {"online": online}))[0] == 200
    assert backend.calls == [("network", online)]


async def test_debug_block_route_absent_unless_debug(api: ControlApi, backend: FakeBackend) -> None:
    status, body = await call(api, "POST", "/api/debug/block", {"seconds": 1})
    assert status == 404 and "no such route" in body["error"]
    assert backend.calls == []


async def test_debug_block_route_with_debug(backend: FakeBackend) -> None:
    server = ControlApi(backend, port=0, debug=True)
    await server.start()
    try:
        assert (await call(server, "POST", "/api/debug/block", {"seconds": 0.5}))[0] == 200
        for bad in (0, -1, 601, True, "1"):
            status, body = await call(server, "POST", "/api/debug/block", {"seconds": bad})
            assert status == 400 and "'seconds'" in body["error"]
    finally:
        await server.stop()
    assert backend.calls == [("debug_block", 0.5)]


# ---------------------------------------------------------------- routing errors


@pytest.mark.parametrize("connector", ["0", "3", "-1", "abc", "1.0", "99999999999999999999", "", "%31"])
async def test_bad_connector_id_is_404(api: ControlApi, backend: FakeBackend, connector: str) -> None:
    status, body = await call(api, "POST", f"/api/connectors/{connector}/plug")
    assert status == 404
    assert "connector" in body["error"] and "1..2" in body["error"]
    assert backend.calls == []


@pytest.mark.parametrize("path", ["/api", "/api/state/", "/api/connectors/1", "/api/connectors/1/explode", "/x" * 50])
async def test_unknown_path_is_404(api: ControlApi, path: str) -> None:
    status, body = await call(api, "GET", path)
    assert status == 404 and path in body["error"]


@pytest.mark.parametrize(
    ("method", "path", "allow"),
    [
        ("POST", "/api/state", "GET"),
        ("GET", "/api/rfid", "POST"),
        ("PUT", "/api/connectors/1/fault", "DELETE, POST"),
        ("DELETE", "/api/connectors/1/plug", "POST"),
        ("HEAD", "/api/network", "POST"),
    ],
)
async def test_wrong_method_is_405_with_allow(api: ControlApi, backend: FakeBackend, method: str, path: str, allow: str) -> None:
    reply = await raw_exchange(api, f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{api.port}\r\nConnection: close\r\n\r\n".encode())
    [(status, headers, body)] = parse_responses(reply)
    assert status == 405 and headers["allow"] == allow
    if method != "HEAD":  # RFC 9110 §9.3.2: an answer to HEAD carries no content (aiohttp omits it)
        assert method in body["error"] and allow in body["error"]
    assert backend.calls == []


async def test_query_string_and_absolute_form_are_routed(api: ControlApi) -> None:
    assert (await call(api, "GET", "/api/state?pretty=1"))[0] == 200
    # RFC 9112 §3.2: an HTTP/1.1 request carries Host even with an absolute-form target (aiohttp insists).
    reply = await raw_exchange(api, f"GET {api.url}/api/state HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
    assert parse_responses(reply)[0][0] == 200


# ---------------------------------------------------------------- body validation


@pytest.mark.parametrize(
    ("path", "body", "fragment"),
    [
        ("/api/rfid", {}, "missing field 'idTag'"),
        ("/api/rfid", {"idTag": ""}, "must not be empty"),
        ("/api/rfid", {"idTag": "A" * 21}, "maximum is 20"),
        ("/api/rfid", {"idTag": 123}, "must be a string"),
        ("/api/rfid", {"idTag": None}, "must be a string"),
        ("/api/rfid", {"idTag": "AB\nCD"}, "printable"),
        ("/api/rfid", {"idTag": "ABC", "connector": 1}, "unknown field(s) 'connector'"),
        ("/api/connectors/1/fault", {}, "missing field 'errorCode'"),
        ("/api/connectors/1/fault", {"errorCode": "NoError"}, "must be one of"),
        ("/api/connectors/1/fault", {"errorCode": "groundfailure"}, "must be one of"),
        ("/api/connectors/1/fault", {"errorCode": 3}, "must be one of"),
        ("/api/connectors/1/fault", {"errorCode": "GroundFailure", "info": "x" * 51}, "maximum is 50"),
        ("/api/connectors/1/fault", {"errorCode": "GroundFailure", "info": 5}, "'info' must be a string"),
        ("/api/connectors/1/fault", {"errorCode": "GroundFailure", "vendor": "x"}, "unknown field(s) 'vendor'"),
        ("/api/connectors/1/ev", {}, "at least one of"),
        ("/api/connectors/1/ev", {"suspended": "true"}, "'suspended' must be true or false"),
        ("/api/connectors/1/ev", {"suspended": 1}, "'suspended' must be true or false"),
        ("/api/connectors/1/ev", {"suspended": None}, "'suspended' must be true or false"),
        ("/api/connectors/1/ev", {"maxPowerW": -1}, "'maxPowerW' must be >= 0"),
        ("/api/connectors/1/ev", {"maxPowerW": "7400"}, "'maxPowerW' must be a number"),
        ("/api/connectors/1/ev", {"maxPowerW": True}, "'maxPowerW' must be a number"),
        ("/api/connectors/1/ev", {"suspended": True, "soc": 50}, "unknown field(s) 'soc'"),
        ("/api/network", {}, "give at least one of 'online', 'latency_ms'"),
        ("/api/network", {"online": "yes"}, "'online' must be true or false"),
        ("/api/network", {"online": 0}, "'online' must be true or false"),
        ("/api/connectors/1/plug", {"force": True}, "unknown field(s) 'force'; allowed: none"),
    ],
)
async def test_invalid_body_is_400(api: ControlApi, backend: FakeBackend, path: str, body: dict, fragment: str) -> None:
    status, payload = await call(api, "POST", path, body)
    assert status == 400
    assert fragment in payload["error"]
    assert backend.calls == []


@pytest.mark.parametrize(
    ("raw", "fragment"),
    [
        (b'{"idTag": "A"', "malformed JSON"),
        (b"idTag=A", "malformed JSON"),
        (b'["A"]', "must be a JSON object, got list"),
        (b'"A"', "must be a JSON object, got str"),
        (b'{"idTag": "A", "idTag": "B"}', "duplicate field 'idTag'"),
        (b'{"idTag": "\xff\xfe"}', "not valid UTF-8"),
        (b"[" * 4000 + b"]" * 4000, "malformed JSON"),
        (b"", "must be a JSON object"),
    ],
)
async def test_malformed_json_is_400(api: ControlApi, backend: FakeBackend, raw: bytes, fragment: str) -> None:
    status, payload = await call(api, "POST", "/api/rfid", raw=raw)
    assert status == 400
    assert fragment in payload["error"]
    assert backend.calls == []


async def test_number_overflowing_to_infinity_is_400(api: ControlApi, backend: FakeBackend) -> None:
    status, payload = await call(api, "POST", "/api/connectors/1/ev", raw=b'{"maxPowerW": 1e400}')
    assert status == 400 and "'maxPowerW' must be >= 0" in payload["error"]
    assert backend.calls == []


@pytest.mark.parametrize("constant", [b"NaN", b"Infinity", b"-Infinity"])
async def test_non_json_number_constants_are_400(api: ControlApi, backend: FakeBackend, constant: bytes) -> None:
    status, payload = await call(api, "POST", "/api/connectors/1/ev", raw=b'{"maxPowerW": ' + constant + b"}")
    assert status == 400 and "not valid JSON" in payload["error"]
    assert backend.calls == []


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded", "application/json; charset=latin-1", None])
async def test_non_json_content_type_is_415(api: ControlApi, backend: FakeBackend, content_type: str | None) -> None:
    raw = b'{"idTag": "A"}'
    ct = f"Content-Type: {content_type}\r\n" if content_type else ""
    request = f"POST /api/rfid HTTP/1.1\r\nHost: 127.0.0.1:{api.port}\r\n{ct}Content-Length: {len(raw)}\r\nConnection: close\r\n\r\n"
    [(status, _, body)] = parse_responses(await raw_exchange(api, request.encode() + raw))
    assert status == 415 and "application/json" in body["error"]
    assert backend.calls == []


async def test_json_content_type_with_utf8_charset_is_accepted(api: ControlApi, backend: FakeBackend) -> None:
    status, _ = await call(api, "POST", "/api/rfid", {"idTag": "Ä1"}, content_type="Application/JSON; charset=UTF-8")
    assert status == 200 and backend.calls == [("rfid", "Ä1")]


# ---------------------------------------------------------------- garbage on the wire


async def test_body_route_without_content_length_is_411(api: ControlApi, backend: FakeBackend) -> None:
    request = b"POST /api/rfid HTTP/1.1\r\n" + host(api) + b"\r\nContent-Type: application/json\r\nConnection: close\r\n\r\n"
    [(status, _, body)] = parse_responses(await raw_exchange(api, request))
    assert status == 411 and "Content-Length" in body["error"]
    assert backend.calls == []


async def test_chunked_body_is_411_and_closes(api: ControlApi, backend: FakeBackend) -> None:
    request = (
        b"POST /api/rfid HTTP/1.1\r\n" + host(api) + b"\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
        b'e\r\n{"idTag": "A"}\r\n0\r\n\r\n'
    )
    [(status, headers, body)] = parse_responses(await raw_exchange(api, request))
    assert status == 411 and headers["connection"] == "close" and "Transfer-Encoding" in body["error"]
    assert backend.calls == []


async def test_huge_body_is_413_without_reading_it(api: ControlApi, backend: FakeBackend) -> None:
    # Only the head is sent: the server must refuse from Content-Length alone and close.
    request = f"POST /api/rfid HTTP/1.1\r\nHost: 127.0.0.1:{api.port}\r\nContent-Type: application/json\r\nContent-Length: {10**9}\r\n\r\n"
    [(status, headers, body)] = parse_responses(await raw_exchange(api, request.encode()))
    assert status == 413 and headers["connection"] == "close" and str(MAX_BODY_BYTES) in body["error"]


async def test_huge_body_via_urllib_is_413(api: ControlApi) -> None:
    status, body = await call(api, "POST", "/api/rfid", raw=b" " * (MAX_BODY_BYTES + 1))
    assert status == 413


@pytest.mark.parametrize("value", ["abc", "-1", "+5", "1, 2", "5 5", "\xb2"])  # \xb2 is '²': str.isdigit() is True
async def test_invalid_content_length_is_400(api: ControlApi, value: str) -> None:
    request = f"POST /api/rfid HTTP/1.1\r\nHost: 127.0.0.1:{api.port}\r\nContent-Length: {value}\r\n\r\n"
    [(status, _, body)] = parse_responses(await raw_exchange(api, request.encode("latin-1")))
    assert status == 400 and "Content-Length" in body["error"]


@pytest.mark.parametrize(
    ("request_bytes", "status"),
    [
        (b"GET /api/state\r\n\r\n", 400),  # HTTP/0.9-style, no version
        (b"GET\r\n\r\n", 400),
        (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n", 400),  # a TLS ClientHello
        (b"\x00\xff\xfe garbage \x80\r\n\r\n", 400),
        (b"GET /api/state HTTP/2.0\r\n\r\n", 505),
        (b"GET  /api/state HTTP/1.1\r\n\r\n", 400),
        (b"G(T /api/state HTTP/1.1\r\n\r\n", 400),
        (b"GET /api/state HTTP/1.1\r\nNoColonHere\r\n\r\n", 400),
        (b"GET /api/state HTTP/1.1\r\nHost : x\r\n\r\n", 400),
        (b"GET /api/state HTTP/1.1\r\nX-A: 1\r\n folded\r\n\r\n", 400),
        (b"GET /api/state HTTP/1.1\r\nHost: localhost\r\nExpect: magic\r\nContent-Length: 2\r\n\r\n{}", 417),
        (b"GET /api/state HTTP/1.1\r\nHost: localhost\r\nExpect: magic\r\n\r\n", 417),
        (b"GET /api/state HTTP/1.1\n\n", 400),  # bare LF: aiohttp's parser refuses it (RFC 9112 §2.2 allows either)
    ],
)
async def test_garbage_request_gets_an_error_and_the_server_survives(api: ControlApi, request_bytes: bytes, status: int) -> None:
    [(got, headers, body)] = parse_responses(await raw_exchange(api, request_bytes))
    assert got == status and headers["connection"] == "close" and body["error"]
    assert (await call(api, "GET", "/api/state"))[0] == 200


async def test_bare_lf_line_endings_are_refused(api: ControlApi, backend: FakeBackend) -> None:
    # RFC 9112 §2.2 lets a server accept a bare LF; aiohttp's parser refuses it (a request-smuggling
    # vector behind proxies), which is the safer answer.
    [(status, headers, body)] = parse_responses(
        await raw_exchange(api, b"GET /api/state HTTP/1.1\n" + host(api) + b"\nConnection: close\n\n"))
    assert status == 400 and headers["connection"] == "close" and body["error"]
    assert backend.calls == []


async def test_endless_empty_lines_before_the_request_line_hit_the_deadline(backend: FakeBackend) -> None:
    # aiohttp skips empty lines before a request line (RFC 9112 §2.2) without counting them; the
    # request deadline still ends the connection.
    server = ControlApi(backend, port=0, request_timeout=0.5)
    await server.start()
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(b"\r\n" * (MAX_HEAD_BYTES // 2 + 1))
        [(status, headers, body)] = parse_responses(await asyncio.wait_for(reader.read(), 10))
        writer.close()
        assert status == 408 and headers["connection"] == "close" and "0.5 s" in body["error"]
    finally:
        await server.stop()


async def test_request_line_too_long_is_414(api: ControlApi) -> None:
    reply = await raw_exchange(api, b"GET /" + b"a" * (MAX_HEAD_BYTES + 10) + b" HTTP/1.1\r\n\r\n")
    assert parse_responses(reply)[0][0] == 414


@pytest.mark.parametrize(
    "headers",
    ["X-Big: " + "a" * (MAX_HEAD_BYTES + 10) + "\r\n", "".join(f"X-{i}: {'a' * 200}\r\n" for i in range(60)), "X: 1\r\n" * 65],
)
async def test_request_head_too_big_is_431(api: ControlApi, backend: FakeBackend, headers: str) -> None:
    reply = await raw_exchange(api, f"GET /api/state HTTP/1.1\r\nHost: 127.0.0.1:{api.port}\r\n{headers}\r\n".encode())
    assert parse_responses(reply)[0][0] == 431
    assert backend.calls == []


async def test_client_closing_mid_request_is_harmless(api: ControlApi) -> None:
    assert await raw_exchange(api, b"POST /api/rfid HTTP/1.1\r\n" + host(api) + b"\r\nContent-Length: 50\r\n\r\n{",
                              half_close=True) == b""
    assert await raw_exchange(api, b"GET /api/st", half_close=True) == b""
    assert (await call(api, "GET", "/api/state"))[0] == 200


async def test_stalled_client_gets_408_and_does_not_block_others(backend: FakeBackend) -> None:
    server = ControlApi(backend, port=0, request_timeout=1.0)
    await server.start()
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(b"POST /api/rfid HTTP/1.1\r\n" + host(server) + b"\r\nContent-Length: 30\r\n\r\n{\"idT")  # then nothing
        await writer.drain()
        # Another client is served while the first one stalls.
        assert (await call(server, "GET", "/api/state"))[0] == 200
        [(status, headers, body)] = parse_responses(await asyncio.wait_for(reader.read(), 10))
        writer.close()
        assert status == 408 and headers["connection"] == "close" and "1 s" in body["error"]
        assert backend.calls == [("state",)]
    finally:
        await server.stop()


async def test_slowloris_trickle_is_cut_at_the_request_deadline(backend: FakeBackend) -> None:
    """A client sending a byte at a time still has to finish its request within request_timeout."""
    server = ControlApi(backend, port=0, request_timeout=0.5)
    await server.start()
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        reply = asyncio.create_task(reader.read())
        trickle = b"GET /api/state HTTP/1.1\r\nX-Padding: " + b"a" * 1000  # 50 s at this pace
        for byte in trickle:
            if reply.done():
                break
            writer.write(bytes([byte]))
            with contextlib.suppress(ConnectionError):
                await writer.drain()
            await asyncio.sleep(0.05)
        [(status, _, body)] = parse_responses(await asyncio.wait_for(reply, 10))
        writer.close()
        assert status == 408 and "0.5 s" in body["error"]
        assert backend.calls == []
    finally:
        await server.stop()


# ---------------------------------------------------------------- connections


async def test_keep_alive_and_pipelining(api: ControlApi, backend: FakeBackend) -> None:
    one = b"POST /api/connectors/1/plug HTTP/1.1\r\n" + host(api) + b"\r\nContent-Length: 0\r\n\r\n"
    two = b'POST /api/rfid HTTP/1.1\r\n' + host(api) + b'\r\nContent-Type: application/json\r\nContent-Length: 14\r\n\r\n{"idTag": "A"}'
    bad = b"GET /nope HTTP/1.1\r\n" + host(api) + b"\r\n\r\n"
    last = b"GET /api/state HTTP/1.1\r\n" + host(api) + b"\r\nConnection: close\r\n\r\n"
    replies = parse_responses(await raw_exchange(api, one + two + bad + last))
    assert [r[0] for r in replies] == [200, 200, 404, 200]
    assert [r[1]["connection"] for r in replies] == ["keep-alive", "keep-alive", "keep-alive", "close"]
    assert backend.calls == [("plug", 1), ("rfid", "A"), ("state",)]


async def test_http10_closes_unless_keep_alive(api: ControlApi) -> None:
    [(status, headers, _)] = parse_responses(await raw_exchange(api, b"GET /api/state HTTP/1.0\r\n" + host(api) + b"\r\n\r\n"))
    assert status == 200 and headers["connection"] == "close"


async def test_expect_100_continue(api: ControlApi, backend: FakeBackend) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", api.port)
    writer.write(
        b"POST /api/network HTTP/1.1\r\n" + host(api) + b"\r\nContent-Type: application/json\r\n"
        b"Content-Length: 16\r\nExpect: 100-continue\r\nConnection: close\r\n\r\n"
    )
    assert await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10) == b"HTTP/1.1 100 Continue\r\n\r\n"
    writer.write(b'{"online": true}')
    [(status, _, _)] = parse_responses(await asyncio.wait_for(reader.read(), 10))
    writer.close()
    assert status == 200 and backend.calls == [("network", True)]


async def test_connection_cap_answers_503(backend: FakeBackend) -> None:
    server = ControlApi(backend, port=0, max_connections=1)
    await server.start()
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(b"GET /api/state HTTP/1.1\r\n" + host(server) + b"\r\n\r\n")  # keep-alive: stays open
        assert (await read_response(reader))[0] == 200
        status, body = await call(server, "GET", "/api/state")
        assert status == 503 and "too many connections" in body["error"]
        writer.close()
    finally:
        await server.stop()


async def test_stop_closes_idle_connections(backend: FakeBackend) -> None:
    server = ControlApi(backend, port=0)
    await server.start()
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    writer.write(b"GET /api/state HTTP/1.1\r\n" + host(server) + b"\r\n\r\n")
    assert (await read_response(reader))[0] == 200
    await asyncio.wait_for(server.stop(), 10)
    assert await asyncio.wait_for(reader.read(), 10) == b""
    writer.close()
    await server.stop()  # idempotent


async def test_start_twice_and_port_in_use(api: ControlApi, backend: FakeBackend) -> None:
    with pytest.raises(RuntimeError, match="already started"):
        await api.start()
    clash = ControlApi(backend, port=api.port)
    with pytest.raises(OSError, match=f"cannot listen on 127.0.0.1:{api.port}"):
        await clash.start()


async def test_url_and_ephemeral_port(api: ControlApi) -> None:
    assert api.port > 0 and api.url == f"http://127.0.0.1:{api.port}"
    assert ControlApi(FakeBackend(), host="::1", port=8180).url == "http://[::1]:8180"


# ---------------------------------------------------------------- backend failures


async def test_backend_api_error_status_is_passed_through(api: ControlApi, backend: FakeBackend) -> None:
    backend.fail = ApiError(409, "connector 1 is already plugged")
    status, body = await call(api, "POST", "/api/connectors/1/plug")
    assert (status, body) == (409, {"error": "connector 1 is already plugged"})


async def test_backend_api_error_with_a_non_error_status_becomes_500(api: ControlApi, backend: FakeBackend) -> None:
    backend.fail = ApiError(200, "confused")
    assert await call(api, "POST", "/api/connectors/1/plug") == (500, {"error": "confused"})


async def test_backend_exception_is_500_logged_and_server_keeps_running(
    api: ControlApi, backend: FakeBackend, caplog: pytest.LogCaptureFixture
) -> None:
    backend.fail = RuntimeError("relay driver exploded")
    with caplog.at_level(logging.ERROR, logger="twin.control_api"):
        status, body = await call(api, "POST", "/api/network", {"online": False})
        status_state, _ = await call(api, "GET", "/api/state")
    assert status == 500 and "RuntimeError: relay driver exploded" in body["error"]
    assert status_state == 500
    assert any("POST /api/network failed" in r.getMessage() and r.exc_info for r in caplog.records)
    backend.fail = None
    assert (await call(api, "GET", "/api/state"))[0] == 200


@pytest.mark.parametrize("result", [["not", "a", "dict"], {"power": float("nan")}, {"obj": object()}])
async def test_backend_returning_garbage_is_500(api: ControlApi, backend: FakeBackend, result: Any) -> None:
    backend.result = result
    status, body = await call(api, "POST", "/api/connectors/1/plug")
    assert status == 500 and "internal error" in body["error"]


async def test_stuck_backend_is_504(backend: FakeBackend) -> None:
    server = ControlApi(backend, port=0, backend_timeout=0.2)
    await server.start()
    try:
        backend.delay = 60
        status, body = await call(server, "POST", "/api/connectors/1/unplug")
        assert status == 504 and "did not answer within 0.2 s" in body["error"]
    finally:
        await server.stop()


def test_loopback_is_the_default_address() -> None:
    server = ControlApi(FakeBackend())
    assert (server.host, server.port, server.debug) == ("127.0.0.1", 8180, False)
    # The default must not be reachable from the network.
    assert socket.inet_aton(server.host)[0] == 127


async def test_mutated_requests_never_crash_the_server(
    api: ControlApi, backend: FakeBackend, caplog: pytest.LogCaptureFixture
) -> None:
    """Deterministic fuzz: valid requests with bytes flipped, cut, duplicated or inserted.
    Every reply must be well-formed HTTP with a JSON body; nothing may hit the
    'unexpected error' path."""
    rng = random.Random(20261124)
    seeds = [
        b'POST /api/connectors/1/fault HTTP/1.1\r\n' + host(api) + b'\r\nContent-Type: application/json\r\n'
        b'Content-Length: 44\r\n\r\n{"errorCode": "GroundFailure", "info": "x1"}',
        b"GET /api/state HTTP/1.1\r\n" + host(api) + b"\r\n\r\n",
        b'POST /api/connectors/2/ev HTTP/1.1\r\n' + host(api) + b'\r\nContent-Type: application/json\r\n'
        b'Content-Length: 36\r\n\r\n'
        b'{"suspended": true, "maxPowerW": 11}',
    ]
    with caplog.at_level(logging.ERROR, logger="twin.control_api"):
        for _ in range(300):
            data = bytearray(rng.choice(seeds))
            for _ in range(rng.randint(1, 4)):
                i = rng.randrange(len(data))
                op = rng.randrange(4)
                if op == 0:
                    data[i] = rng.randrange(256)
                elif op == 1:
                    del data[i:]
                    data += b"\r\n" if rng.random() < 0.5 else b""
                elif op == 2:
                    data[i:i] = data[i : i + rng.randint(1, 40)]
                else:
                    data[i:i] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 8)))
            for status, headers, body in parse_responses(await raw_exchange(api, bytes(data), half_close=True)):
                assert 200 <= status <= 599 and headers["content-type"] == "application/json"
                assert isinstance(body, dict)
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert (await call(api, "GET", "/api/state"))[0] == 200


# ---------------------------------------------------------------- who may ask: Host, Origin, token, Content-Type

TOKEN = "3f9c2a7be41d5c08a6f1e29b7d4c3a10"  # what `openssl rand -hex 16` prints


async def ask(
    api: ControlApi, method: str, path: str, headers: dict[str, str], body: bytes = b"", *, target: str | None = None
) -> tuple[int, dict[str, str], Any]:
    """One request on a raw socket, with exactly the header fields given (a browser's, a forger's)."""
    lines = [f"{method} {target or path} HTTP/1.1", *(f"{k}: {v}" for k, v in headers.items())]
    if body:
        lines.append(f"Content-Length: {len(body)}")
    lines.append("Connection: close")
    [reply] = parse_responses(await raw_exchange(api, ("\r\n".join(lines) + "\r\n\r\n").encode() + body))
    return reply


def here(api: ControlApi) -> str:
    return f"127.0.0.1:{api.port}"


@pytest.fixture
async def locked(backend: FakeBackend):
    """A ControlApi with a token and one allowed web origin."""
    server = ControlApi(backend, port=0, token=TOKEN, allowed_origins=["http://127.0.0.1:8080"])
    await server.start()
    yield server
    await server.stop()


# Every route, with a valid body where it needs one.
ROUTES = [
    ("GET", "/api/state", b""),
    ("POST", "/api/connectors/1/plug", b""),
    ("POST", "/api/connectors/2/unplug", b""),
    ("POST", "/api/rfid", b'{"idTag": "STOLEN-CARD"}'),
    ("POST", "/api/connectors/1/fault", b'{"errorCode": "GroundFailure"}'),
    ("DELETE", "/api/connectors/1/fault", b""),
    ("POST", "/api/connectors/1/ev", b'{"suspended": true}'),
    ("POST", "/api/network", b'{"online": false}'),
]


def _json_headers(body: bytes) -> dict[str, str]:
    return {"Content-Type": "application/json"} if body else {}


@pytest.mark.parametrize(("method", "path", "body"), ROUTES)
async def test_a_dns_rebinding_host_is_421_on_every_route(
    api: ControlApi, backend: FakeBackend, method: str, path: str, body: bytes
) -> None:
    # After rebinding, the attacker's page is same-origin with "rebind.example": the browser
    # sends that name as Host (and, for a GET, no Origin at all).
    status, headers, payload = await ask(api, method, path, {"Host": f"rebind.example:{api.port}",
                                                             **_json_headers(body)}, body)
    assert status == 421 and "is not this control API" in payload["error"]
    assert headers["content-type"] == "application/json"
    assert backend.calls == []


@pytest.mark.parametrize("name", ["127.0.0.1", "localhost", "LocalHost", "[::1]"])
async def test_loopback_names_with_the_port_are_served(api: ControlApi, backend: FakeBackend, name: str) -> None:
    status, _, _ = await ask(api, "POST", "/api/connectors/1/plug", {"Host": f"{name}:{api.port}"})
    assert status == 200 and backend.calls == [("plug", 1)]
    # The same name with another port is another server (a local dev server a page came from).
    other_port = api.port + 1 if api.port < 65535 else 1
    assert (await ask(api, "POST", "/api/connectors/1/plug", {"Host": f"{name}:{other_port}"}))[0] == 421
    assert backend.calls == [("plug", 1)]


@pytest.mark.parametrize("authority", ["127.0.0.1", "127.0.0.1:1", "localhost:8", "127.0.0.2:{port}",
                                       "127.0.0.1.rebind.example:{port}", "[::2]:{port}"])
async def test_a_host_with_another_port_or_address_is_421(api: ControlApi, backend: FakeBackend, authority: str) -> None:
    status, _, payload = await ask(api, "GET", "/api/state", {"Host": authority.format(port=api.port)})
    assert status == 421, payload
    assert backend.calls == []


@pytest.mark.parametrize(
    ("headers", "fragment"),
    [
        ({}, "a Host header is required"),
        ({"Host": ""}, "a Host header is required"),
        ({"Host": "[::1"}, "malformed Host"),
        ({"Host": "127.0.0.1:http"}, "malformed Host"),
        ({"Host": "127.0.0.1, evil.example"}, "malformed Host"),
        ({"Host": "user@127.0.0.1"}, "malformed Host"),  # RFC 9110 §7.2: no userinfo
    ],
)
async def test_a_missing_or_malformed_host_is_400(api: ControlApi, backend: FakeBackend, headers: dict, fragment: str) -> None:
    status, _, payload = await ask(api, "GET", "/api/state", headers)
    assert status == 400 and fragment in payload["error"]
    assert backend.calls == []


async def test_two_host_fields_are_400(api: ControlApi, backend: FakeBackend) -> None:
    request = f"GET /api/state HTTP/1.1\r\nHost: {here(api)}\r\nHost: evil.example\r\nConnection: close\r\n\r\n"
    [(status, headers, payload)] = parse_responses(await raw_exchange(api, request.encode()))
    assert status == 400 and "more than one Host" in payload["error"] and headers["connection"] == "close"
    assert backend.calls == []


async def test_an_absolute_form_target_names_the_host(api: ControlApi, backend: FakeBackend) -> None:
    # RFC 9112 §3.2.2: the target's authority wins over the Host field.
    status, _, _ = await ask(api, "GET", "/api/state", {"Host": here(api)}, target="http://evil.example/api/state")
    assert status == 421
    status, _, _ = await ask(api, "GET", "/api/state", {"Host": "evil.example"}, target=f"{api.url}/api/state")
    assert status == 200


async def test_the_bind_address_is_a_valid_host(backend: FakeBackend) -> None:
    server = ControlApi(backend, host="::1", port=0)
    await server.start()
    try:
        status, _, _ = await ask(server, "GET", "/api/state", {"Host": f"[::1]:{server.port}"})
        assert status == 200
        assert (await ask(server, "GET", "/api/state", {"Host": f"[::2]:{server.port}"}))[0] == 421
    finally:
        await server.stop()


async def test_on_a_wildcard_bind_the_address_a_client_connected_to_is_a_valid_host(backend: FakeBackend) -> None:
    # A bench PC reaches a 0.0.0.0-bound station by its LAN address; here 127.0.0.2 plays that address
    # (no traffic leaves loopback). The token keeps the wildcard socket closed to everyone else.
    server = ControlApi(backend, host="0.0.0.0", port=0, token=TOKEN)
    await server.start()
    try:
        for address, expected in (("127.0.0.2", 200), ("127.0.0.3", 421)):
            reader, writer = await asyncio.open_connection("127.0.0.2", server.port)
            writer.write(f"GET /api/state HTTP/1.1\r\nHost: {address}:{server.port}\r\nAuthorization: Bearer {TOKEN}"
                         "\r\nConnection: close\r\n\r\n".encode())
            [(status, _, _)] = parse_responses(await asyncio.wait_for(reader.read(), 10))
            writer.close()
            assert status == expected, address
    finally:
        await server.stop()


async def test_a_cross_origin_simple_post_is_403(api: ControlApi, backend: FakeBackend) -> None:
    """What a page on another site sends with fetch(url, {method: "POST", mode: "no-cors"}):
    a bodyless POST, no preflight, with the page's Origin."""
    headers = {"Host": here(api), "Origin": "http://evil.example", "Content-Length": "0",
               "Sec-Fetch-Mode": "no-cors", "Sec-Fetch-Site": "cross-site"}
    status, resp_headers, payload = await ask(api, "POST", "/api/connectors/1/plug", headers)
    assert status == 403 and "Origin 'http://evil.example' is not in [control] allowed_origins" in payload["error"]
    assert "access-control-allow-origin" not in resp_headers
    assert backend.calls == []


@pytest.mark.parametrize(("method", "path", "body"), ROUTES)
@pytest.mark.parametrize("origin", ["http://evil.example", "null", "http://127.0.0.1:8180"])
async def test_any_origin_not_allowed_is_403_on_every_route(
    api: ControlApi, backend: FakeBackend, method: str, path: str, body: bytes, origin: str
) -> None:
    # allowed_origins is empty by default: not even the API's own origin is a web page of ours.
    status, _, _ = await ask(api, method, path, {"Host": here(api), "Origin": origin, **_json_headers(body)}, body)
    assert status == 403
    assert backend.calls == []


async def test_an_allowed_origin_is_served_with_cors_headers(locked: ControlApi, backend: FakeBackend) -> None:
    headers = {"Host": here(locked), "Origin": "http://127.0.0.1:8080", "Authorization": f"Bearer {TOKEN}",
               "Content-Type": "application/json"}
    status, resp_headers, _ = await ask(locked, "POST", "/api/rfid", headers, b'{"idTag": "CAFE"}')
    assert status == 200 and backend.calls == [("rfid", "CAFE")]
    assert resp_headers["access-control-allow-origin"] == "http://127.0.0.1:8080"
    assert resp_headers["vary"] == "Origin"


async def test_a_preflight_from_an_allowed_origin_is_answered_without_the_token(locked: ControlApi, backend: FakeBackend) -> None:
    headers = {"Host": here(locked), "Origin": "http://127.0.0.1:8080", "Access-Control-Request-Method": "POST",
               "Access-Control-Request-Headers": "authorization, content-type"}
    status, resp_headers, payload = await ask(locked, "OPTIONS", "/api/rfid", headers)
    assert (status, payload) == (204, None)
    assert resp_headers["access-control-allow-origin"] == "http://127.0.0.1:8080"
    assert resp_headers["access-control-allow-methods"] == "GET, POST, DELETE"
    assert resp_headers["access-control-allow-headers"] == "Authorization, Content-Type"
    # RFC 9110 §8.6: a 204 carries neither content nor a Content-Length.
    assert "content-type" not in resp_headers and "content-length" not in resp_headers
    # The page still needs the token for the request itself, and can read why it was refused.
    status, resp_headers, _ = await ask(locked, "POST", "/api/connectors/1/plug",
                                        {"Host": here(locked), "Origin": "http://127.0.0.1:8080"})
    assert status == 401 and resp_headers["access-control-allow-origin"] == "http://127.0.0.1:8080"
    assert backend.calls == []


async def test_a_preflight_from_another_origin_is_403_and_options_alone_is_405(locked: ControlApi) -> None:
    preflight = {"Host": here(locked), "Origin": "http://evil.example", "Access-Control-Request-Method": "POST"}
    assert (await ask(locked, "OPTIONS", "/api/rfid", preflight))[0] == 403
    status, headers, _ = await ask(locked, "OPTIONS", "/api/rfid", {"Host": here(locked),
                                                                    "Authorization": f"Bearer {TOKEN}"})
    assert status == 405 and headers["allow"] == "POST"


@pytest.mark.parametrize(("method", "path", "body"), [*ROUTES, ("GET", "/no/such/route", b"")])
async def test_with_a_token_every_route_needs_it(locked: ControlApi, backend: FakeBackend, method: str, path: str, body: bytes) -> None:
    status, headers, payload = await ask(locked, method, path, {"Host": here(locked), **_json_headers(body)}, body)
    assert status == 401 and "Authorization: Bearer" in payload["error"]
    assert headers["www-authenticate"] == 'Bearer realm="ocpp-twin control API"'
    assert backend.calls == []
    status, _, _ = await ask(locked, method, path, {"Host": here(locked), "Authorization": f"Bearer {TOKEN}",
                                                    **_json_headers(body)}, body)
    assert status == (404 if path == "/no/such/route" else 200)


@pytest.mark.parametrize("authorization", [f"Bearer {TOKEN[:-1]}", f"Bearer {TOKEN}0", f"Bearer {TOKEN.upper()}",
                                           f"Basic {TOKEN}", TOKEN, "Bearer", "Bearer ", f"Bearer\t{TOKEN}"])
async def test_a_wrong_or_malformed_token_is_401(locked: ControlApi, backend: FakeBackend, authorization: str) -> None:
    status, headers, _ = await ask(locked, "POST", "/api/connectors/1/plug",
                                   {"Host": here(locked), "Authorization": authorization})
    assert status == 401 and headers["www-authenticate"].startswith('Bearer realm="ocpp-twin control API"')
    assert backend.calls == []


async def test_the_wrong_token_is_reported_as_invalid_token(locked: ControlApi) -> None:
    _, headers, payload = await ask(locked, "GET", "/api/state", {"Host": here(locked), "Authorization": "Bearer nope"})
    assert headers["www-authenticate"] == 'Bearer realm="ocpp-twin control API", error="invalid_token"'
    assert payload == {"error": "the bearer token is wrong"}


async def test_the_bearer_scheme_is_case_insensitive(locked: ControlApi, backend: FakeBackend) -> None:
    # RFC 9110 §11.1: the auth-scheme is case-insensitive.
    status, _, _ = await ask(locked, "GET", "/api/state", {"Host": here(locked), "Authorization": f"bearer {TOKEN}"})
    assert status == 200 and backend.calls == [("state",)]


async def test_a_curl_style_bodyless_post_is_valid(locked: ControlApi, backend: FakeBackend) -> None:
    """Exactly what `curl -X POST -H "Authorization: Bearer $(cat file)" URL` sends: no body,
    no Content-Length, no Content-Type."""
    request = (f"POST /api/connectors/2/plug HTTP/1.1\r\nHost: {here(locked)}\r\nUser-Agent: curl/7.88.1\r\n"
               f"Accept: */*\r\nAuthorization: Bearer {TOKEN}\r\n\r\n")
    reader, writer = await asyncio.open_connection("127.0.0.1", locked.port)
    writer.write(request.encode())
    status, _, payload = await read_response(reader)
    writer.close()
    assert (status, payload) == (200, {"ok": True, "call": "plug"}) and backend.calls == [("plug", 2)]


async def test_the_checks_run_in_order_host_origin_token_content_type(locked: ControlApi, backend: FakeBackend) -> None:
    body = b'{"idTag": "A"}'
    good = {"Host": here(locked), "Origin": "http://127.0.0.1:8080", "Authorization": f"Bearer {TOKEN}",
            "Content-Type": "application/json"}
    cases = [
        ({"Host": "evil.example", "Origin": "http://evil.example", "Authorization": "", "Content-Type": "text/plain"}, 421),
        ({"Origin": "http://evil.example", "Authorization": "", "Content-Type": "text/plain"}, 403),
        ({"Authorization": "Bearer wrong-token-here", "Content-Type": "text/plain"}, 401),
        ({"Content-Type": "text/plain"}, 415),
        ({}, 200),
    ]
    for change, status in cases:
        assert (await ask(locked, "POST", "/api/rfid", {**good, **change}, body))[0] == status, change
    assert backend.calls == [("rfid", "A")]


async def test_refusals_are_logged_without_the_token_and_throttled(
    locked: ControlApi, backend: FakeBackend, caplog: pytest.LogCaptureFixture
) -> None:
    wrong = "Bearer " + TOKEN[::-1]
    with caplog.at_level(logging.DEBUG):
        for _ in range(5):
            assert (await ask(locked, "GET", "/api/state", {"Host": here(locked), "Authorization": wrong}))[0] == 401
        assert (await ask(locked, "GET", "/api/state", {"Host": here(locked), "Authorization": f"Bearer {TOKEN}"}))[0] == 200
    refusals = [r.getMessage() for r in caplog.records if "refused" in r.getMessage()]
    assert len(refusals) == 1 and "401 the bearer token is wrong" in refusals[0]
    everything = "\n".join(r.getMessage() for r in caplog.records) + caplog.text
    assert TOKEN not in everything and TOKEN[::-1] not in everything


@pytest.mark.parametrize("token", ["", "two words", "tøken-tøken-tøken", "abc=def"])
def test_a_token_that_cannot_be_sent_is_refused(token: str) -> None:
    with pytest.raises(ValueError, match="b64token"):
        ControlApi(FakeBackend(), token=token)


@pytest.mark.parametrize(
    ("origin", "normalized"),
    [("http://127.0.0.1:8080", "http://127.0.0.1:8080"), ("HTTP://Bench.Example:80/", "http://bench.example"),
     ("https://[::1]:443", "https://[::1]"), ("https://dash.example:8443", "https://dash.example:8443")],
)
def test_normalize_origin(origin: str, normalized: str) -> None:
    assert normalize_origin(origin) == normalized


@pytest.mark.parametrize("origin", ["*", "null", "http://x/dash", "ftp://x", "http://", "x.example", "http://x?a=1",
                                    "http://u@x", "http://x:99999"])
def test_normalize_origin_refuses(origin: str) -> None:
    with pytest.raises(ValueError):
        normalize_origin(origin)


# ---------------------------------------------------------------- [control] in the station config


def control_config(tmp_path: Path, text: str, overrides: dict | None = None) -> StationConfig:
    path = tmp_path / "station.toml"
    path.write_text(text)
    return load_config(path, overrides, env={})


def token_file(tmp_path: Path, content: str = TOKEN + "\n", mode: int = 0o600, name: str = "control-token") -> Path:
    path = tmp_path / name
    path.write_text(content)
    path.chmod(mode)
    return path


def test_the_api_is_on_by_default_for_an_all_sim_station(tmp_path: Path) -> None:
    assert load_config(None, env={}).control_enabled is True
    assert control_config(tmp_path, '[drivers.relay]\nbackend = "sim"\n').control_enabled is True
    # "auto" falls back to the simulator when the hardware is missing (CI, a laptop).
    assert control_config(tmp_path, '[drivers.relay]\nbackend = "auto"\n').control_enabled is True


def test_enabled_false_switches_it_off(tmp_path: Path, backend: FakeBackend) -> None:
    cfg = control_config(tmp_path, "[control]\nenabled = false\n")
    assert cfg.control_enabled is False
    with pytest.raises(ValueError, match="disabled"):
        ControlApi.from_config(backend, cfg)
    # Off, it needs no token whatever its host.
    assert control_config(tmp_path, '[control]\nenabled = false\nhost = "0.0.0.0"\n').control_enabled is False


@pytest.mark.parametrize("drivers", ['[drivers.relay]\nbackend = "gpiozero"\npins = {1 = 5, 2 = 6}\n',
                                     '[drivers.meter]\nbackend = "modbus"\n', '[drivers.reader]\nbackend = "pcsc"\n'])
def test_a_station_naming_a_hardware_backend_has_it_off_unless_asked(tmp_path: Path, drivers: str) -> None:
    assert control_config(tmp_path, drivers).control_enabled is False
    assert control_config(tmp_path, drivers + "[control]\nenabled = true\n").control_enabled is True
    assert control_config(tmp_path, drivers, {"sim": True}).control_enabled is True  # --sim: nothing real
    # --control HOST:PORT asks for it, and flags win over the file.
    assert control_config(tmp_path, "[control]\nenabled = false\n" + drivers,
                          {"control": "127.0.0.1:8181"}).control_enabled is True


def test_token_file_is_read_relative_to_the_config_file(tmp_path: Path) -> None:
    token_file(tmp_path, TOKEN + "\r\n")
    cfg = control_config(tmp_path, '[control]\ntoken_file = "control-token"\n')
    assert cfg.control_token == TOKEN and cfg.control_token_file == tmp_path / "control-token"
    assert TOKEN not in repr(cfg)


@pytest.mark.parametrize(
    ("content", "mode", "fragment"),
    [
        (TOKEN, 0o640, "accessible to group or others (mode 0640): the token would not be secret; chmod 600"),
        (TOKEN, 0o604, "(mode 0604)"),
        (TOKEN, 0o620, "(mode 0620)"),
        ("", 0o600, "is empty"),
        ("\n", 0o600, "is empty"),
        ("short-token", 0o600, "at least 16 of"),
        (TOKEN + " " + TOKEN, 0o600, "does not hold a usable bearer token"),
        (TOKEN + "\n" + TOKEN + "\n", 0o600, "on one line"),
        ("ø" * 20, 0o600, "does not hold a usable bearer token"),
    ],
)
def test_a_bad_token_file_is_a_config_error_naming_file_key_and_problem(
    tmp_path: Path, content: str, mode: int, fragment: str
) -> None:
    path = token_file(tmp_path, content, mode)
    with pytest.raises(ConfigError) as err:
        control_config(tmp_path, f'[control]\ntoken_file = "{path}"\n')
    assert (err.value.file, err.value.key) == (str(tmp_path / "station.toml"), "control.token_file")
    assert str(path) in err.value.problem and fragment in err.value.problem
    assert TOKEN not in str(err.value)


@pytest.mark.parametrize(
    ("setup", "fragment"),
    [("missing", "cannot read"), ("under-a-file", "cannot read"), ("directory", "is not a regular file")],
)
def test_an_unreadable_token_file_is_a_config_error(tmp_path: Path, setup: str, fragment: str) -> None:
    (tmp_path / "a-file").write_text("x")
    (tmp_path / "a-dir").mkdir(mode=0o700)
    path = {"missing": tmp_path / "nope", "under-a-file": tmp_path / "a-file" / "token",
            "directory": tmp_path / "a-dir"}[setup]
    with pytest.raises(ConfigError, match=r"control\.token_file: .*" + fragment):
        control_config(tmp_path, f'[control]\ntoken_file = "{path}"\n')


def test_an_empty_token_file_name_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"control\.token_file: must not be empty"):
        control_config(tmp_path, '[control]\ntoken_file = " "\n')


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.0.2.10", "bench-pi.lan"])
def test_a_non_loopback_host_needs_a_token(tmp_path: Path, host: str) -> None:
    with pytest.raises(ConfigError) as err:
        control_config(tmp_path, f'[control]\nhost = "{host}"\n')
    assert err.value.key == "control.host" and "needs control.token_file" in err.value.problem
    path = token_file(tmp_path)
    cfg = control_config(tmp_path, f'[control]\nhost = "{host}"\ntoken_file = "{path.name}"\n')
    assert (cfg.control_host, cfg.control_token) == (host, TOKEN)


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.2", "::1", "localhost"])
def test_a_loopback_host_needs_no_token(tmp_path: Path, host: str) -> None:
    assert control_config(tmp_path, f'[control]\nhost = "{host}"\n').control_token is None


def test_a_non_loopback_control_flag_needs_a_token(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as err:
        control_config(tmp_path, "", {"control": "0.0.0.0:8180"})
    assert (err.value.file, err.value.key) == ("<command line>", "--control")
    path = token_file(tmp_path)
    cfg = control_config(tmp_path, f'[control]\ntoken_file = "{path.name}"\n', {"control": "0.0.0.0:8180"})
    assert (cfg.control_host, cfg.control_port, cfg.control_enabled) == ("0.0.0.0", 8180, True)


def test_allowed_origins_are_normalized(tmp_path: Path) -> None:
    cfg = control_config(tmp_path, '[control]\nallowed_origins = ["HTTP://Dash.Example:80/", "http://127.0.0.1:8080", '
                                   '"http://dash.example"]\n')
    assert cfg.control_allowed_origins == ("http://dash.example", "http://127.0.0.1:8080")
    assert load_config(None, env={}).control_allowed_origins == ()


@pytest.mark.parametrize(
    ("value", "key", "fragment"),
    [('"http://x"', "control.allowed_origins", "expected an array, got a string"),
     ("[5]", "control.allowed_origins[0]", "expected a string, got an integer"),
     ('["http://ok", "*"]', "control.allowed_origins[1]", "name each origin"),
     ('["http://x/dash"]', "control.allowed_origins[0]", "no path")],
)
def test_a_bad_allowed_origin_is_a_config_error(tmp_path: Path, value: str, key: str, fragment: str) -> None:
    with pytest.raises(ConfigError) as err:
        control_config(tmp_path, f"[control]\nallowed_origins = {value}\n")
    assert err.value.key == key and fragment in err.value.problem


def test_the_redacted_dump_shows_the_control_settings_but_not_the_token(tmp_path: Path) -> None:
    path = token_file(tmp_path)
    cfg = control_config(tmp_path, f'[control]\ntoken_file = "{path.name}"\nallowed_origins = ["http://127.0.0.1:8080"]\n')
    data = redacted(cfg)
    assert TOKEN not in repr(data) and data["control_token"] == "***"
    assert (data["control_enabled"], data["control_allowed_origins"]) == (True, ["http://127.0.0.1:8080"])
    assert redacted(load_config(None, env={}))["control_token"] is None


def test_the_example_file_documents_the_control_options() -> None:
    text = (Path(__file__).parent.parent / "twin" / "data" / "station.example.toml").read_text()
    for option in ("enabled", "token_file", "allowed_origins"):
        assert re.search(rf"^#? ?{option} = ", text, re.M), option


async def test_from_config_builds_the_api_the_config_describes(tmp_path: Path, backend: FakeBackend) -> None:
    path = token_file(tmp_path)
    cfg = control_config(tmp_path, f'[control]\nport = 0\ndebug = true\ntoken_file = "{path.name}"\n'
                                   'allowed_origins = ["http://127.0.0.1:8080"]\n')
    server = ControlApi.from_config(backend, cfg)
    await server.start()
    try:
        assert (server.host, server.debug, server.token_required) == ("127.0.0.1", True, True)
        assert (await ask(server, "GET", "/api/state", {"Host": here(server)}))[0] == 401
        headers = {"Host": here(server), "Origin": "http://127.0.0.1:8080", "Authorization": f"Bearer {TOKEN}",
                   "Content-Type": "application/json"}
        assert (await ask(server, "POST", "/api/debug/block", headers, b'{"seconds": 0.1}'))[0] == 200
    finally:
        await server.stop()
    assert backend.calls == [("debug_block", 0.1)]


# ---------------------------------------------------------------- the toolkit routes: faults, network, trace


class ToolkitBackend(FakeBackend):
    """The fault-injection toolkit's Runtime methods, as the contract names them."""

    def __init__(self) -> None:
        super().__init__()
        self.rules: dict[str, dict] = {}

    async def add_fault(self, rule: dict) -> dict:
        self.calls.append(("add_fault", rule))
        if rule.get("do") not in ("reply", "callerror", "silence", "delay", "duplicate", "garble", "invalid", "drop"):
            raise ValueError(f"'do' must be one of the fault kinds, got {rule.get('do')!r}")
        stored = {**rule, "id": f"f{len(self.rules) + 1}"}
        self.rules[stored["id"]] = stored
        return stored

    def faults(self) -> list[dict]:
        self.calls.append(("faults",))
        return list(self.rules.values())

    def remove_fault(self, rule_id: str) -> bool:
        self.calls.append(("remove_fault", rule_id))
        return self.rules.pop(rule_id, None) is not None

    def clear_faults(self) -> None:
        self.calls.append(("clear_faults",))
        self.rules.clear()

    async def network(self, online: bool | None = None, *, latency_ms: float | None = None,
                      jitter_ms: float | None = None, drop_rate: float | None = None, half_open: bool | None = None,
                      close_code: int | None = None, seed: int | None = None) -> dict:
        given = {k: v for k, v in dict(latency_ms=latency_ms, jitter_ms=jitter_ms, drop_rate=drop_rate,
                                       half_open=half_open, close_code=close_code, seed=seed).items() if v is not None}
        return await self._record("network", online, given)

    def trace_since(self, since: int) -> dict:
        self.calls.append(("trace_since", since))
        return {"next": since + 1, "frames": [{"n": since, "dir": "out", "frame": [2, "1", "Heartbeat", {}]}]}


@pytest.fixture
async def tk():
    backend = ToolkitBackend()
    server = ControlApi(backend, port=0)
    await server.start()
    yield server, backend
    await server.stop()


async def call_any(api: ControlApi, method: str, path: str, body: Any = None) -> tuple[int, dict, bytes]:
    data = None if body is None else json.dumps(body).encode()
    headers = {"Content-Type": "application/json"} if data is not None else {}

    def run() -> tuple[int, dict, bytes]:
        req = urllib.request.Request(api.url + path, data=data, method=method, headers=headers)
        try:
            with _NO_PROXY.open(req, timeout=10) as resp:
                return resp.status, dict(resp.headers), resp.read()
        except urllib.error.HTTPError as exc:
            with exc:
                return exc.code, dict(exc.headers), exc.read()

    return await asyncio.to_thread(run)


async def test_fault_rules_add_list_remove_clear(tk) -> None:
    api, backend = tk
    rule = {"on": "RemoteStartTransaction", "direction": "in", "do": "reply", "payload": {"status": "Rejected"}}
    status, body = await call(api, "POST", "/api/faults", rule)
    assert status == 201 and body == {**rule, "id": "f1"}
    assert (await call(api, "POST", "/api/faults", {"on": "*", "direction": "out", "do": "drop"}))[0] == 201
    status, body = await call(api, "GET", "/api/faults")
    assert status == 200 and [r["id"] for r in body] == ["f1", "f2"]
    status, headers, raw = await call_any(api, "DELETE", "/api/faults/f1")
    assert (status, raw) == (204, b"") and "Content-Type" not in headers
    status, body = await call(api, "DELETE", "/api/faults/f1")
    assert status == 404 and "no fault rule 'f1'" in body["error"]
    assert (await call_any(api, "DELETE", "/api/faults"))[0] == 204
    assert (await call(api, "GET", "/api/faults")) == (200, [])
    assert backend.calls[-1] == ("faults",) and ("clear_faults",) in backend.calls


async def test_a_fault_rule_the_backend_refuses_is_400_with_its_message(tk) -> None:
    api, backend = tk
    status, body = await call(api, "POST", "/api/faults", {"on": "*", "direction": "in", "do": "explode"})
    assert status == 400 and "'do' must be one of the fault kinds" in body["error"]
    for raw, fragment in ((b"[1]", "must be a JSON object"), (b'{"on": "a", "on": "b"}', "duplicate field")):
        assert (await call(api, "POST", "/api/faults", raw=raw)) == (400, {"error": ANY_WITH(fragment)})
    assert backend.rules == {}


class ANY_WITH(str):
    """Equal to any string containing this one."""

    def __eq__(self, other: object) -> bool:
        return isinstance(other, str) and str(self) in other

    __hash__ = str.__hash__


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ({"online": False}, ("network", False, {})),
        ({"latency_ms": 250, "jitter_ms": 50.5, "seed": 7}, ("network", None, {"latency_ms": 250.0, "jitter_ms": 50.5, "seed": 7})),
        ({"drop_rate": 0.25}, ("network", None, {"drop_rate": 0.25})),
        ({"half_open": True, "online": True}, ("network", True, {"half_open": True})),
        ({"close_code": 4000}, ("network", None, {"close_code": 4000})),
    ],
)
async def test_network_impairment_reaches_the_backend(tk, body: dict, expected: tuple) -> None:
    api, backend = tk
    assert (await call(api, "POST", "/api/network", body))[0] == 200
    assert backend.calls == [expected]


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        ({"latency_ms": -1}, "'latency_ms' must be >= 0 and <= 60000"),
        ({"jitter_ms": 60001}, "'jitter_ms' must be >= 0 and <= 60000"),
        ({"drop_rate": 1.5}, "'drop_rate' must be >= 0 and <= 1"),
        ({"drop_rate": "0.5"}, "'drop_rate' must be a number"),
        ({"half_open": 1}, "'half_open' must be true or false"),
        ({"close_code": 999}, "'close_code' must be >= 1000 and <= 4999"),
        ({"close_code": 1000.5}, "'close_code' must be an integer"),
        ({"seed": -1}, "'seed' must be >= 0"),
        ({"seed": True}, "'seed' must be an integer"),
        ({"latency": 5}, "unknown field(s) 'latency'"),
    ],
)
async def test_network_impairment_is_validated(tk, body: dict, fragment: str) -> None:
    api, backend = tk
    status, payload = await call(api, "POST", "/api/network", body)
    assert status == 400 and fragment in payload["error"]
    assert backend.calls == []


async def test_trace_since(tk) -> None:
    api, backend = tk
    assert (await call(api, "GET", "/api/trace?since=41"))[1]["next"] == 42
    assert (await call(api, "GET", "/api/trace"))[0] == 200
    for query, fragment in (("since=-1", "'since' must be a frame number"), ("since=x", "'since' must be"),
                            ("since=1&limit=2", "unknown query parameter(s) 'limit'")):
        status, body = await call(api, "GET", f"/api/trace?{query}")
        assert status == 400 and fragment in body["error"], query
    assert backend.calls == [("trace_since", 41), ("trace_since", 0)]


@pytest.mark.parametrize(
    ("method", "path", "body", "fragment"),
    [
        ("POST", "/api/faults", {"on": "*", "direction": "in", "do": "silence"}, "has no add_fault()"),
        ("GET", "/api/faults", None, "has no faults()"),
        ("DELETE", "/api/faults", None, "has no clear_faults()"),
        ("DELETE", "/api/faults/f1", None, "has no remove_fault()"),
        ("GET", "/api/trace?since=0", None, "has no trace_since()"),
        ("POST", "/api/network", {"latency_ms": 100}, "does not take latency_ms"),
        ("GET", "/api/events", None, "no event hub"),
    ],
)
async def test_a_toolkit_route_without_its_backend_method_is_501(
    api: ControlApi, backend: FakeBackend, method: str, path: str, body: Any, fragment: str
) -> None:
    status, payload = await call(api, method, path, body)
    assert status == 501 and fragment in payload["error"]
    assert backend.calls == []


async def test_tamper(api: ControlApi, backend: FakeBackend) -> None:
    async def tamper(info: str | None) -> dict:
        return await backend._record("tamper", info)

    backend.tamper = tamper  # type: ignore[attr-defined]
    assert (await call(api, "POST", "/api/tamper", {"info": "lid open"}))[0] == 200
    assert (await call(api, "POST", "/api/tamper"))[0] == 200
    assert (await call(api, "POST", "/api/tamper", {"info": "x" * 51}))[0] == 400
    assert backend.calls == [("tamper", "lid open"), ("tamper", None)]


async def test_the_head_as_a_whole_is_capped(api: ControlApi, backend: FakeBackend) -> None:
    # Each field is under aiohttp's per-field limit; together they pass MAX_HEAD_BYTES.
    fields = "".join(f"X-{i}: {'a' * 200}\r\n" for i in range(45))
    [(status, headers, body)] = parse_responses(await raw_exchange(
        api, f"GET /api/state HTTP/1.1\r\nHost: 127.0.0.1:{api.port}\r\n{fields}\r\n".encode()))
    assert status == 431 and headers["connection"] == "close" and str(MAX_HEAD_BYTES) in body["error"]
    assert backend.calls == []


# ---------------------------------------------------------------- the event stream (SSE)


class HubBackend(FakeBackend):
    def __init__(self) -> None:
        super().__init__()
        from twin.events import EventHub

        self.events = EventHub(queue_size=4)


async def read_sse(stream: asyncio.StreamReader) -> list[tuple[str, str]]:
    """One SSE block: its (field, value) lines up to the blank line; a comment is ('', text)."""
    lines = []
    while True:
        line = (await asyncio.wait_for(stream.readline(), 10)).decode()
        if line in ("\n", ""):
            if lines or line == "":
                return lines
            continue
        name, _, value = line.rstrip("\n").partition(":")
        lines.append((name, value.lstrip(" ")))


@pytest.fixture
async def hub_api():
    backend = HubBackend()
    server = ControlApi(backend, port=0, sse_keepalive_s=0.2, token=TOKEN)
    await server.start()
    yield server, backend
    await server.stop()


async def test_events_stream_state_and_frames_as_sse(hub_api) -> None:
    import aiohttp

    api, backend = hub_api
    async with aiohttp.ClientSession() as session:
        async with session.get(api.url + "/api/events", headers={"Authorization": f"Bearer {TOKEN}"}) as resp:
            assert resp.status == 200 and resp.headers["Content-Type"] == "text/event-stream"
            assert resp.headers["Cache-Control"] == "no-store"
            assert (await read_sse(resp.content)) == [("", "ocpp-twin events")]
            assert backend.events.subscribers == 1
            backend.events.publish("state", {"registration": "Accepted", "note": "two\nlines"})
            backend.events.publish("frame", {"n": 1, "dir": "out", "frame": [2, "1", "Heartbeat", {}]})
            assert await read_sse(resp.content) == [("event", "state"),
                                                    ("data", '{"registration": "Accepted", "note": "two\\nlines"}')]
            block = await read_sse(resp.content)
            assert block[0] == ("event", "frame") and json.loads(block[1][1])["frame"][2] == "Heartbeat"
            # Nothing to say: a comment keeps the stream alive.
            assert await read_sse(resp.content) == [("", "keepalive")]
    for _ in range(100):  # the server notices the reader left at its next write
        if backend.events.subscribers == 0:
            break
        await asyncio.sleep(0.05)
    assert backend.events.subscribers == 0


async def test_events_need_the_token_like_every_route(hub_api) -> None:
    api, backend = hub_api
    status, _, payload = await ask(api, "GET", "/api/events", {"Host": here(api)})
    assert status == 401 and backend.events.subscribers == 0


async def test_a_slow_reader_gets_an_overflow_marker(hub_api) -> None:
    import aiohttp

    api, backend = hub_api
    async with aiohttp.ClientSession() as session:
        async with session.get(api.url + "/api/events", headers={"Authorization": f"Bearer {TOKEN}"}) as resp:
            await read_sse(resp.content)
            # Published in one go, before the server's writer task runs: the queue (4) overflows.
            for n in range(10):
                backend.events.publish("frame", {"n": n})
            first = await read_sse(resp.content)
            assert first == [("event", "overflow"), ("data", '{"dropped": 6}')]
            got = [json.loads((await read_sse(resp.content))[1][1])["n"] for _ in range(4)]
            assert got == [6, 7, 8, 9]  # the newest are kept


async def test_stop_ends_the_event_stream_cleanly(hub_api) -> None:
    import aiohttp

    api, backend = hub_api
    async with aiohttp.ClientSession() as session:
        async with session.get(api.url + "/api/events", headers={"Authorization": f"Bearer {TOKEN}"}) as resp:
            await read_sse(resp.content)
            await asyncio.wait_for(api.stop(), 10)
            # The chunked body ends with its terminator: a clean EOF, not a reset.
            assert await asyncio.wait_for(resp.content.read(), 10) == b""
            assert resp.content.is_eof()
    assert backend.events.subscribers == 0


# ---------------------------------------------------------------- the OpenAPI document


def _router_routes(app) -> set[tuple[str, str]]:
    return {(route.method, resource.canonical) for resource in app.router.resources() for route in resource}


def _document_routes(doc: dict) -> set[tuple[str, str]]:
    return {(method.upper(), path) for path, ops in doc["paths"].items() for method in ops}


@pytest.mark.parametrize("debug", [False, True])
async def test_the_openapi_document_matches_the_real_router(backend: FakeBackend, debug: bool) -> None:
    server = ControlApi(backend, port=0, debug=debug, token=TOKEN)
    await server.start()
    try:
        status, _, doc = await ask(server, "GET", "/api/openapi.json",
                                   {"Host": here(server), "Authorization": f"Bearer {TOKEN}"})
        assert status == 200 and doc["openapi"].startswith("3.1")
        router = _router_routes(server.app)
        assert router == _document_routes(doc)
        assert ("POST", "/api/debug/block") in router if debug else ("POST", "/api/debug/block") not in router
        for expected in [("POST", "/api/faults"), ("GET", "/api/faults"), ("DELETE", "/api/faults"),
                         ("DELETE", "/api/faults/{id}"), ("GET", "/api/trace"), ("GET", "/api/events"),
                         ("POST", "/api/tamper"), ("GET", "/api/openapi.json")]:
            assert expected in router
        assert doc["components"]["securitySchemes"]["bearerAuth"] == {
            **doc["components"]["securitySchemes"]["bearerAuth"], "type": "http", "scheme": "bearer"}
        assert doc["security"] == [{"bearerAuth": []}]
        for path, ops in doc["paths"].items():
            for method, op in ops.items():
                assert op["responses"], (method, path)
                names = {p["name"] for p in op.get("parameters", []) if p["in"] == "path"}
                assert names == set(re.findall(r"{(\w+)}", path)), (method, path)
                if method == "post" and path != "/api/tamper" and "plug" not in path:
                    assert "requestBody" in op, (method, path)
        assert set(doc["paths"]["/api/faults"]["post"]["responses"]) >= {"201", "400", "401", "501"}
        assert "text/event-stream" in doc["paths"]["/api/events"]["get"]["responses"]["200"]["content"]
        assert doc["paths"]["/api/network"]["post"]["requestBody"]["content"]["application/json"]["schema"][
            "properties"]["drop_rate"] == {"type": "number", "minimum": 0, "maximum": 1}
    finally:
        await server.stop()


async def test_without_a_token_the_document_makes_auth_optional(api: ControlApi) -> None:
    status, doc = await call(api, "GET", "/api/openapi.json")
    assert status == 200 and doc["security"] == [{}, {"bearerAuth": []}]
