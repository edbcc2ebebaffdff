"""`twin sim ...` and sim_client.request() against the real control API server on
loopback (with the same fake station backend as tests/test_control_api.py)."""

from __future__ import annotations

import argparse
import asyncio
import json
import socket

import pytest

# The fixtures are shared with the server's tests: a real ControlApi on an ephemeral
# loopback port in front of the fake station backend.
from tests.test_control_api import FakeBackend, api, backend  # noqa: F401  (pytest fixtures)
from twin.control_api import ControlApi
from twin.sim_client import SimClientError, add_sim_subcommands, control_url, request, run_sim_command


def parser() -> argparse.ArgumentParser:
    """The `twin` CLI as the integrator builds it: a top parser with subcommands."""
    top = argparse.ArgumentParser(prog="twin")
    add_sim_subcommands(top.add_subparsers(dest="command", required=True))
    return top


async def sim(api: ControlApi | None, *argv: str, port: int | None = None) -> int:
    """Run `twin sim --control 127.0.0.1:PORT ARGV...` in a thread (the server shares this loop)."""
    args = parser().parse_args(["sim", "--control", f"127.0.0.1:{port or api.port}", *argv])
    return await asyncio.to_thread(run_sim_command, args)


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---------------------------------------------------------------- request()


async def test_request_returns_the_json_answer(api: ControlApi, backend: FakeBackend) -> None:
    answer = await asyncio.to_thread(request, api.url, "POST", "/api/rfid", {"idTag": "CAFE"})
    assert answer == {"ok": True, "call": "rfid"} and backend.calls == [("rfid", "CAFE")]


async def test_request_raises_with_the_server_message_and_status(api: ControlApi) -> None:
    with pytest.raises(SimClientError) as err:
        await asyncio.to_thread(request, api.url + "/", "POST", "/api/connectors/7/plug")
    assert err.value.status == 404
    assert "404" in err.value.message and "connector ids are integers 1..2" in err.value.message


def test_request_to_an_unreachable_server() -> None:
    port = closed_port()
    with pytest.raises(SimClientError, match=f"cannot reach the control API at http://127.0.0.1:{port}") as err:
        request(f"http://127.0.0.1:{port}", "GET", "/api/state", timeout=2)
    assert err.value.status is None


async def _one_shot_server(reply: bytes) -> asyncio.Server:
    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(reply)
        await writer.drain()
        writer.close()

    return await asyncio.start_server(answer, "127.0.0.1", 0)


@pytest.mark.parametrize(
    ("reply", "fragment"),
    [
        (b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\n<html>", "did not answer JSON"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n[]", "expected a JSON object, got list"),
        (b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 7\r\n\r\nupstrm!", "502 upstrm!"),
        (b"garbage\r\n\r\n", "did not answer valid HTTP: BadStatusLine"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 50\r\n\r\n{", "did not answer valid HTTP: IncompleteRead"),
    ],
)
async def test_request_reports_a_server_that_is_not_the_control_api(reply: bytes, fragment: str) -> None:
    server = await _one_shot_server(reply)
    port = server.sockets[0].getsockname()[1]
    try:
        with pytest.raises(SimClientError, match=fragment):
            await asyncio.to_thread(request, f"http://127.0.0.1:{port}", "GET", "/api/state", timeout=5)
    finally:
        server.close()
        await server.wait_closed()


def test_request_ignores_proxy_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    # A proxy from the environment would swallow loopback traffic; the error must name our address.
    monkeypatch.setenv("http_proxy", "http://127.0.0.1:9")
    port = closed_port()
    with pytest.raises(SimClientError, match=f"127.0.0.1:{port}: .*[Rr]efused"):
        request(f"http://127.0.0.1:{port}", "GET", "/api/state", timeout=2)


# ---------------------------------------------------------------- twin sim


@pytest.mark.parametrize(
    ("argv", "call"),
    [
        (["plug", "1"], ("plug", 1)),
        (["unplug", "2"], ("unplug", 2)),
        (["rfid", "04A2B3C4"], ("rfid", "04A2B3C4")),
        (["fault", "1", "GroundFailure"], ("fault", 1, "GroundFailure", None)),
        (["fault", "2", "OverVoltage", "--info", "253 V"], ("fault", 2, "OverVoltage", "253 V")),
        (["clear-fault", "1"], ("clear_fault", 1)),
        (["ev", "1", "--suspended", "true"], ("ev", 1, True, None)),
        (["ev", "2", "--suspended", "False", "--max-power-w", "3680"], ("ev", 2, False, 3680.0)),
        (["ev", "1", "--max-power-w", "0"], ("ev", 1, None, 0.0)),
        (["network", "offline"], ("network", False)),
        (["network", "online"], ("network", True)),
    ],
)
async def test_sim_commands(
    api: ControlApi, backend: FakeBackend, capsys: pytest.CaptureFixture[str], argv: list[str], call: tuple
) -> None:
    assert await sim(api, *argv) == 0
    assert backend.calls == [call]
    assert json.loads(capsys.readouterr().out) == {"ok": True, "call": call[0]}


async def test_sim_state_prints_the_state(api: ControlApi, capsys: pytest.CaptureFixture[str]) -> None:
    assert await sim(api, "state") == 0
    assert json.loads(capsys.readouterr().out)["registration"] == "Accepted"


async def test_control_may_follow_the_subcommand(api: ControlApi, backend: FakeBackend) -> None:
    args = parser().parse_args(["sim", "plug", "2", "--control", f"127.0.0.1:{api.port}"])
    assert await asyncio.to_thread(run_sim_command, args) == 0
    assert backend.calls == [("plug", 2)]


@pytest.mark.parametrize(
    ("argv", "fragment"),
    [
        (["plug", "9"], "404 no connector '9': connector ids are integers 1..2"),
        (["fault", "1", "NoError"], "400 'errorCode' must be one of"),
        (["rfid", "X" * 21], "400 'idTag' is 21 characters; the maximum is 20"),
        (["ev", "1"], "400 give at least one of 'suspended' and 'maxPowerW'"),
        (["ev", "1", "--max-power-w", "-5"], "400 'maxPowerW' must be >= 0"),
        (["ev", "1", "--max-power-w", "nan"], "400 malformed JSON body: NaN is not valid JSON"),
    ],
)
async def test_sim_errors_exit_1_with_the_server_message(
    api: ControlApi, backend: FakeBackend, capsys: pytest.CaptureFixture[str], argv: list[str], fragment: str
) -> None:
    assert await sim(api, *argv) == 1
    out = capsys.readouterr()
    assert out.out == "" and fragment in out.err and out.err.startswith(f"twin sim {argv[0]}: error: ")
    assert backend.calls == []


async def test_sim_against_no_server_exits_1(capsys: pytest.CaptureFixture[str]) -> None:
    port = closed_port()
    assert await sim(None, "state", port=port) == 1
    assert f"cannot reach the control API at http://127.0.0.1:{port}" in capsys.readouterr().err


def test_default_control_address() -> None:
    args = parser().parse_args(["sim", "state"])
    assert (args.control, args.timeout, args.sim_command) == ("http://127.0.0.1:8180", 5.0, "state")


@pytest.mark.parametrize(
    ("address", "url"),
    [("127.0.0.1:8180", "http://127.0.0.1:8180"), ("[::1]:9000", "http://[::1]:9000"), ("http://pi.local:8180/", "http://pi.local:8180")],
)
def test_control_url(address: str, url: str) -> None:
    assert control_url(address) == url


@pytest.mark.parametrize(
    "argv",
    [
        ["sim", "--control", "8180", "state"],
        ["sim", "--control", "host:0", "state"],
        ["sim", "--control", "host:http", "state"],
        ["sim", "ev", "1", "--suspended", "maybe"],
        ["sim", "network", "down"],
        ["sim", "plug", "one"],
        ["sim"],
    ],
)
def test_usage_errors_are_argparse_errors(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        parser().parse_args(argv)
    assert exc.value.code == 2
    assert "error:" in capsys.readouterr().err
