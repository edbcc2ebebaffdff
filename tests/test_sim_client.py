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


# ---------------------------------------------------------------- a real `twin run --sim` process
# Fault rules and the wire trace through the station process the pytest plugin starts
# (twin.pytest_plugin.TwinClient: `python -m twin run --sim` with its API on a loopback port),
# against the real CSMS on loopback (tests/conftest.py).


@pytest.fixture
async def real_station(csms, tmp_path: Path):
    from twin.pytest_plugin import TwinClient

    client = await asyncio.to_thread(TwinClient, csms.url, "CP-SIM", tmp_path / "station",
                                     keys={"HeartbeatInterval": 300, "MeterValueSampleInterval": 0})
    try:
        await csms.wait_for("StatusNotification", {"connectorId": 1}, timeout=30)
        yield client
    finally:
        await asyncio.to_thread(client.stop)


async def sim_json(client, capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, object, str]:
    code = await sim(None, *argv, port=client.port)
    out = capsys.readouterr()
    return code, (json.loads(out.out) if out.out.strip() else None), out.err


async def test_fault_rules_add_list_remove_clear_on_a_real_station(csms, real_station, capsys) -> None:
    code, rule, _ = await sim_json(real_station, capsys, "fault", "add", "--on", "RemoteStartTransaction",
                                   "--direction", "in", "--do", "reply", "--payload", '{"status": "Rejected"}',
                                   "--count", "1", "--id", "no-start")
    assert code == 0 and rule["id"] == "no-start" and rule["remaining"] == 1
    # The rule is live in the station: a canned Rejected, and nothing starts.
    assert await csms.call("RemoteStartTransaction", {"connectorId": 1, "idTag": "T1"}) == {"status": "Rejected"}
    code, rules, _ = await sim_json(real_station, capsys, "fault", "list")
    assert code == 0 and [(r["id"], r["fired"], r["remaining"]) for r in rules] == [("no-start", 1, 0)]
    code, answer, _ = await sim_json(real_station, capsys, "fault", "remove", "no-start")
    assert code == 0 and answer == {"removed": "no-start"}
    # --rule gives the whole rule; the options add to it (the --control after the subcommand too).
    code, rule, _ = await sim_json(real_station, capsys, "fault", "add", "--rule",
                                   '{"on": "Heartbeat", "direction": "out", "do": "delay", "seconds": 1}',
                                   "--probability", "0.5", "--seed", "3")
    assert code == 0 and (rule["on"], rule["do"], rule["seconds"], rule["probability"]) == ("Heartbeat", "delay",
                                                                                            1.0, 0.5)
    code, answer, _ = await sim_json(real_station, capsys, "fault", "clear")
    assert code == 0 and answer == {"cleared": True}
    code, rules, _ = await sim_json(real_station, capsys, "fault", "list")
    assert rules == []
    assert real_station.state()["connectors"][0]["status"] == "Available"


@pytest.mark.parametrize(("argv", "fragment"), [
    (["fault", "add", "--on", "StartTransaction", "--direction", "in", "--do", "drop"],
     "twin sim fault add: error: POST /api/faults: 400 fault do: drop keeps a station call off the wire"),
    (["fault", "add", "--on", "RemoteStartTransaction", "--direction", "in", "--do", "reply",
      "--payload", '{"status": "Maybe"}'], "not a valid RemoteStartTransaction.conf"),
    (["fault", "remove", "nope"], "twin sim fault remove: error: DELETE /api/faults/nope: 404 no fault rule 'nope'"),
    (["fault", "add", "--rule", "[1]", "--on", "Heartbeat"], "--rule must be a JSON object"),
])
async def test_fault_rule_errors_exit_1_with_the_station_message(real_station, capsys, argv, fragment) -> None:
    code, _, err = await sim_json(real_station, capsys, *argv)
    assert code == 1 and fragment in err, err


@pytest.mark.parametrize("argv", [
    ["sim", "fault", "add", "--payload", "{not json"],
    ["sim", "fault", "add", "--count", "many"],
    ["sim", "fault", "remove"],
    ["sim", "fault", "two", "GroundFailure"],
    ["sim", "fault", "1"],
])
def test_fault_usage_errors_exit_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    from twin.sim_client import parse_fault_args

    with pytest.raises(SystemExit) as exc:
        parse_fault_args(parser().parse_args(argv))
    assert exc.value.code == 2 and "error:" in capsys.readouterr().err


async def test_connector_faults_keep_their_form_on_a_real_station(real_station, capsys) -> None:
    code, _, _ = await sim_json(real_station, capsys, "fault", "2", "GroundFailure", "--info", "RCD")
    assert code == 0
    assert real_station.state()["connectors"][1]["status"] == "Faulted"
    assert (await sim_json(real_station, capsys, "clear-fault", "2"))[0] == 0


async def test_trace_prints_json_lines_and_since_skips_the_older_ones(csms, real_station, capsys) -> None:
    assert await sim(None, "trace", port=real_station.port) == 0
    records = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    numbers = [r["n"] for r in records]
    assert numbers == sorted(numbers) and numbers[0] == 1 and len(numbers) >= 4
    assert records[0]["frame"][2] == "BootNotification" and records[0]["dir"] == "out"
    assert await sim(None, "trace", "--since", str(numbers[-2]), port=real_station.port) == 0
    assert [json.loads(line)["n"] for line in capsys.readouterr().out.splitlines()][:2] == numbers[-2:]


async def test_trace_follow_prints_new_frames_across_a_reset_until_interrupted(csms, real_station) -> None:
    """--follow as the command line runs it: new frames appear as they come; a Reset restarts
    the station (its trace numbering starts at 1 again) and --follow goes on with the new
    records, none printed twice; Ctrl-C ends it with status 0."""
    import signal
    import sys

    from tests.conftest import twin_process_env

    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "twin", "sim", "--control", f"127.0.0.1:{real_station.port}", "trace", "--follow",
        "--interval", "0.1", stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=twin_process_env())
    seen: list[dict] = []

    async def until(check, what: str) -> None:
        async with asyncio.timeout(30):
            while not check():
                line = await proc.stdout.readline()
                assert line, f"twin sim trace --follow ended before {what}: {(await proc.stderr.read()).decode()}"
                seen.append(json.loads(line))

    try:
        await until(lambda: any(r["frame"][2:3] == ["BootNotification"] for r in seen), "the boot")
        await csms.call("TriggerMessage", {"requestedMessage": "Heartbeat"})
        await until(lambda: any(r["frame"][2:3] == ["Heartbeat"] for r in seen), "the triggered Heartbeat")
        before = len(seen)
        count = csms.connection_count
        assert (await csms.call("Reset", {"type": "Soft"}))["status"] == "Accepted"
        await csms.wait_connected(timeout=30, after=count)
        await until(lambda: any(r["frame"][2:3] == ["BootNotification"] for r in seen[before:]), "the new boot")
        proc.send_signal(signal.SIGINT)
        await asyncio.wait_for(proc.wait(), 10)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode == 0
    monos = [r["mono"] for r in seen]
    assert monos == sorted(monos) and len(set(monos)) == len(monos)  # nothing printed twice
    # The restarted station numbers its records from 1 again, and they were printed.
    reboot = next(i for i in range(before, len(seen)) if seen[i]["frame"][2:3] == ["BootNotification"])
    assert seen[reboot]["n"] < seen[before - 1]["n"]
