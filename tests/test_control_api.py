"""The bench control API against a real server on loopback, driven by real HTTP
clients (urllib in a worker thread) and raw sockets for malformed traffic. The
backend is the unit's collaborator (the station runtime) and is faked here."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import socket
import urllib.error
import urllib.request
from typing import Any

import pytest

from twin.control_api import FAULT_ERROR_CODES, MAX_BODY_BYTES, MAX_HEAD_BYTES, ApiError, ControlApi

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


async def raw_exchange(api: ControlApi, data: bytes, *, half_close: bool = False) -> bytes:
    """Send bytes on a raw socket and read until the server closes the connection."""
    reader, writer = await asyncio.open_connection("127.0.0.1", api.port)
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


@pytest.mark.parametrize("path", ["/", "/api", "/api/state/", "/api/connectors/1", "/api/connectors/1/explode", "/x" * 50])
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
    reply = await raw_exchange(api, f"{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
    [(status, headers, body)] = parse_responses(reply)
    assert status == 405 and headers["allow"] == allow
    assert method in body["error"] and allow in body["error"]
    assert backend.calls == []


async def test_query_string_and_absolute_form_are_routed(api: ControlApi) -> None:
    assert (await call(api, "GET", "/api/state?pretty=1"))[0] == 200
    reply = await raw_exchange(api, f"GET {api.url}/api/state HTTP/1.1\r\nConnection: close\r\n\r\n".encode())
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
        ("/api/network", {}, "missing field 'online'"),
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
    request = f"POST /api/rfid HTTP/1.1\r\nHost: x\r\n{ct}Content-Length: {len(raw)}\r\nConnection: close\r\n\r\n"
    [(status, _, body)] = parse_responses(await raw_exchange(api, request.encode() + raw))
    assert status == 415 and "application/json" in body["error"]
    assert backend.calls == []


async def test_json_content_type_with_utf8_charset_is_accepted(api: ControlApi, backend: FakeBackend) -> None:
    status, _ = await call(api, "POST", "/api/rfid", {"idTag": "Ä1"}, content_type="Application/JSON; charset=UTF-8")
    assert status == 200 and backend.calls == [("rfid", "Ä1")]


# ---------------------------------------------------------------- garbage on the wire


async def test_body_route_without_content_length_is_411(api: ControlApi, backend: FakeBackend) -> None:
    request = b"POST /api/rfid HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nConnection: close\r\n\r\n"
    [(status, _, body)] = parse_responses(await raw_exchange(api, request))
    assert status == 411 and "Content-Length" in body["error"]
    assert backend.calls == []


async def test_chunked_body_is_411_and_closes(api: ControlApi, backend: FakeBackend) -> None:
    request = (
        b"POST /api/rfid HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
        b'e\r\n{"idTag": "A"}\r\n0\r\n\r\n'
    )
    [(status, headers, body)] = parse_responses(await raw_exchange(api, request))
    assert status == 411 and headers["connection"] == "close" and "Transfer-Encoding" in body["error"]
    assert backend.calls == []


async def test_huge_body_is_413_without_reading_it(api: ControlApi, backend: FakeBackend) -> None:
    # Only the head is sent: the server must refuse from Content-Length alone and close.
    request = f"POST /api/rfid HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {10**9}\r\n\r\n"
    [(status, headers, body)] = parse_responses(await raw_exchange(api, request.encode()))
    assert status == 413 and headers["connection"] == "close" and str(MAX_BODY_BYTES) in body["error"]


async def test_huge_body_via_urllib_is_413(api: ControlApi) -> None:
    status, body = await call(api, "POST", "/api/rfid", raw=b" " * (MAX_BODY_BYTES + 1))
    assert status == 413


@pytest.mark.parametrize("value", ["abc", "-1", "+5", "1, 2", "5 5", "\xb2"])  # \xb2 is '²': str.isdigit() is True
async def test_invalid_content_length_is_400(api: ControlApi, value: str) -> None:
    request = f"POST /api/rfid HTTP/1.1\r\nHost: x\r\nContent-Length: {value}\r\n\r\n"
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
        (b"GET /api/state HTTP/1.1\r\nExpect: magic\r\nContent-Length: 2\r\n\r\n{}", 417),
        (b"GET /api/state HTTP/1.1\r\nExpect: magic\r\n\r\n", 417),
        (b"\r\n" * (MAX_HEAD_BYTES // 2 + 1), 414),  # endless empty lines before the request line
    ],
)
async def test_garbage_request_gets_an_error_and_the_server_survives(api: ControlApi, request_bytes: bytes, status: int) -> None:
    [(got, headers, body)] = parse_responses(await raw_exchange(api, request_bytes))
    assert got == status and headers["connection"] == "close" and body["error"]
    assert (await call(api, "GET", "/api/state"))[0] == 200


async def test_bare_lf_line_endings_are_accepted(api: ControlApi) -> None:
    reply = await raw_exchange(api, b"GET /api/state HTTP/1.1\nHost: x\nConnection: close\n\n")
    assert parse_responses(reply)[0][0] == 200


async def test_request_line_too_long_is_414(api: ControlApi) -> None:
    reply = await raw_exchange(api, b"GET /" + b"a" * (MAX_HEAD_BYTES + 10) + b" HTTP/1.1\r\n\r\n")
    assert parse_responses(reply)[0][0] == 414


@pytest.mark.parametrize(
    "headers",
    ["X-Big: " + "a" * (MAX_HEAD_BYTES + 10) + "\r\n", "".join(f"X-{i}: {'a' * 200}\r\n" for i in range(60)), "X: 1\r\n" * 65],
)
async def test_request_head_too_big_is_431(api: ControlApi, headers: str) -> None:
    reply = await raw_exchange(api, f"GET /api/state HTTP/1.1\r\n{headers}\r\n".encode())
    assert parse_responses(reply)[0][0] == 431


async def test_client_closing_mid_request_is_harmless(api: ControlApi) -> None:
    assert await raw_exchange(api, b"POST /api/rfid HTTP/1.1\r\nContent-Length: 50\r\n\r\n{", half_close=True) == b""
    assert await raw_exchange(api, b"GET /api/st", half_close=True) == b""
    assert (await call(api, "GET", "/api/state"))[0] == 200


async def test_stalled_client_gets_408_and_does_not_block_others(backend: FakeBackend) -> None:
    server = ControlApi(backend, port=0, request_timeout=1.0)
    await server.start()
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(b"POST /api/rfid HTTP/1.1\r\nContent-Length: 30\r\n\r\n{\"idT")  # then nothing
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
    one = b"POST /api/connectors/1/plug HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n"
    two = b'POST /api/rfid HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 14\r\n\r\n{"idTag": "A"}'
    bad = b"GET /nope HTTP/1.1\r\nHost: x\r\n\r\n"
    last = b"GET /api/state HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    replies = parse_responses(await raw_exchange(api, one + two + bad + last))
    assert [r[0] for r in replies] == [200, 200, 404, 200]
    assert [r[1]["connection"] for r in replies] == ["keep-alive", "keep-alive", "keep-alive", "close"]
    assert backend.calls == [("plug", 1), ("rfid", "A"), ("state",)]


async def test_http10_closes_unless_keep_alive(api: ControlApi) -> None:
    [(status, headers, _)] = parse_responses(await raw_exchange(api, b"GET /api/state HTTP/1.0\r\n\r\n"))
    assert status == 200 and headers["connection"] == "close"


async def test_expect_100_continue(api: ControlApi, backend: FakeBackend) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", api.port)
    writer.write(
        b"POST /api/network HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
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
        writer.write(b"GET /api/state HTTP/1.1\r\nHost: x\r\n\r\n")  # keep-alive: stays open
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
    writer.write(b"GET /api/state HTTP/1.1\r\nHost: x\r\n\r\n")
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
        b'POST /api/connectors/1/fault HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n'
        b'Content-Length: 44\r\n\r\n{"errorCode": "GroundFailure", "info": "x1"}',
        b"GET /api/state HTTP/1.1\r\nHost: x\r\n\r\n",
        b'POST /api/connectors/2/ev HTTP/1.1\r\nContent-Type: application/json\r\nContent-Length: 36\r\n\r\n'
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
