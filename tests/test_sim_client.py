"""`twin sim ...` and sim_client.request() against the real control API server on
loopback (with the same fake station backend as tests/test_control_api.py)."""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
from pathlib import Path

import pytest

# The fixtures are shared with the server's tests: a real ControlApi on an ephemeral
# loopback port in front of the fake station backend.
from tests.test_control_api import TOKEN, FakeBackend, api, backend, locked  # noqa: F401  (pytest fixtures)
from twin.control_api import ControlApi
from twin.sim_client import TOKEN_FILE_ENV, SimClientError, add_sim_subcommands, control_url, request, run_sim_command


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


# ---------------------------------------------------------------- a station with a token


@pytest.fixture
def token_path(tmp_path: Path) -> Path:
    path = tmp_path / "control-token"
    path.write_text(TOKEN + "\n")
    path.chmod(0o600)
    return path


@pytest.fixture(autouse=True)
def no_token_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(TOKEN_FILE_ENV, raising=False)


async def test_request_sends_the_token_and_json_content_type_with_bodies() -> None:
    heads: list[bytes] = []

    async def record(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        heads.append(head)
        length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length:")), 0)
        await reader.readexactly(length)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(record, "127.0.0.1", 0)
    url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    try:
        await asyncio.to_thread(request, url, "POST", "/api/rfid", {"idTag": "A"}, 5, TOKEN)
        await asyncio.to_thread(request, url, "POST", "/api/connectors/1/plug", None, 5, TOKEN)
    finally:
        server.close()
        await server.wait_closed()
    with_body, bodyless = (head.decode("latin-1").lower() for head in heads)
    assert "content-type: application/json\r\n" in with_body
    assert "content-type" not in bodyless
    for head in (with_body, bodyless):
        assert f"authorization: bearer {TOKEN}\r\n" in head


async def test_sim_with_token_file(locked: ControlApi, backend: FakeBackend, token_path: Path) -> None:
    assert await sim(locked, "--token-file", str(token_path), "plug", "1") == 0
    # Also accepted after the subcommand, like --control.
    assert await sim(locked, "rfid", "CAFE", "--token-file", str(token_path)) == 0
    assert backend.calls == [("plug", 1), ("rfid", "CAFE")]


async def test_sim_takes_the_token_file_from_the_environment(
    locked: ControlApi, backend: FakeBackend, token_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(TOKEN_FILE_ENV, str(token_path))
    assert await sim(locked, "state") == 0
    # The option wins over the environment.
    wrong = tmp_path / "wrong-token"
    wrong.write_text("not-the-token-at-all\n")
    assert await sim(locked, "--token-file", str(wrong), "plug", "2") == 1
    assert backend.calls == [("state",)]


async def test_sim_without_the_token_exits_1_with_the_server_message(
    locked: ControlApi, backend: FakeBackend, capsys: pytest.CaptureFixture[str]
) -> None:
    assert await sim(locked, "plug", "1") == 1
    assert "401 a bearer token is required" in capsys.readouterr().err
    assert backend.calls == []


@pytest.mark.parametrize(("content", "fragment"), [(None, "cannot read the token file"), ("", "is empty"),
                                                   ("two words\n", "more than one word")])
async def test_sim_with_an_unusable_token_file_exits_1(
    locked: ControlApi, backend: FakeBackend, tmp_path: Path, capsys: pytest.CaptureFixture[str],
    content: str | None, fragment: str,
) -> None:
    path = tmp_path / "token"
    if content is not None:
        path.write_text(content)
    assert await sim(locked, "--token-file", str(path), "state") == 1
    err = capsys.readouterr().err
    assert err.startswith("twin sim state: error: ") and fragment in err and str(path) in err
    assert backend.calls == []
