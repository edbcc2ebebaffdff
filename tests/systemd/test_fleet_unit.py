"""systemd/ocpp-twin-fleet@.service: an instance verifies clean, is hardened at least as
well as the single station's unit (exposure <= 2.0), and its ExecStart, expanded the way
systemd expands it (%i, the instance's env file, $TWIN_FLEET_ARGS split at whitespace),
runs a real `twin fleet` that speaks the unit's Type=notify contract: one READY=1 from the
fleet once its control API answers, nothing from its members (not on a fleet reboot either,
and no WATCHDOG=1: the unit has no WatchdogSec=), STOPPING=1 and exit 0 on SIGTERM."""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from tests.service.dgram import DatagramSink
from tests.systemd.unitfile import HOST_UNITS, parse_unit, security
from twin.fleet.loopback import LoopbackCsms

REPO = Path(__file__).resolve().parents[2]
TEMPLATE = REPO / "systemd" / "ocpp-twin-fleet@.service"
SINGLE = REPO / "systemd" / "ocpp-twin.service"
TEXT = TEMPLATE.read_text()
SERVICE = parse_unit(TEXT)["Service"]


def _one(key: str) -> str:
    return SERVICE[key][-1]


def verify_instance(unit_text: str, root: Path, instance: str = "3") -> subprocess.CompletedProcess[str]:
    """`systemd-analyze verify` of ocpp-twin-fleet@<instance>.service with the template under a
    throwaway --root (stock units copied in, an executable stand-in at ExecStart's path), as
    tests/systemd/unitfile.py does for the single unit."""
    units = root / "usr/lib/systemd/system"
    if not units.exists():
        units.parent.mkdir(parents=True, exist_ok=True)
        shutil.copytree(HOST_UNITS, units, symlinks=True)
    binary = root / "opt/ocpp-twin/venv/bin/twin"
    binary.parent.mkdir(parents=True, exist_ok=True)
    binary.write_text("#!/bin/sh\nexit 0\n")
    binary.chmod(0o755)
    target = root / "etc/systemd/system/ocpp-twin-fleet@.service"
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(unit_text)
    return subprocess.run(["systemd-analyze", "verify", "--man=no", f"--root={root}",
                           f"ocpp-twin-fleet@{instance}.service"], capture_output=True, text=True, timeout=60,
                          check=False)


def test_an_instance_verifies_without_any_output(tmp_path: Path) -> None:
    result = verify_instance(TEXT, tmp_path)
    assert (result.returncode, result.stdout + result.stderr) == (0, "")


def test_verify_harness_does_report_problems_of_the_template(tmp_path: Path) -> None:
    broken = TEXT.replace("ProtectSystem=strict", "ProtectSytem=strict").replace("LimitNOFILE=65536",
                                                                                 "LimitNOFILE=lots")
    result = verify_instance(broken, tmp_path)
    assert "Unknown key 'ProtectSytem'" in result.stderr
    assert "Failed to parse resource value, ignoring: lots" in result.stderr


def _exposure(path: Path, threshold: int) -> tuple[int, float]:
    result = security(path, threshold=threshold)
    match = re.search(r"Overall exposure level for \S+: (\d+\.\d)", result.stdout)
    assert match, result.stdout + result.stderr
    return result.returncode, float(match.group(1))


def test_exposure_is_at_most_the_single_units_threshold_and_no_worse_than_it(tmp_path: Path) -> None:
    instance = tmp_path / "ocpp-twin-fleet@1.service"  # as systemd loads it: %i resolved
    instance.write_text(TEXT)
    status, fleet = _exposure(instance, threshold=20)
    assert status == 0
    assert fleet <= 2.0
    assert fleet <= _exposure(SINGLE, threshold=20)[1]
    assert _exposure(instance, threshold=5)[0] != 0  # the gate is not vacuous


def test_notify_restart_and_resource_contract() -> None:
    assert _one("Type") == "notify"
    assert _one("NotifyAccess") == "main"  # the fleet process itself notifies; its members never do
    assert "WatchdogSec" not in SERVICE  # nothing in a fleet pings WATCHDOG=1
    assert _one("Restart") == "on-failure"
    assert _one("KillMode") == "mixed"
    assert _one("EnvironmentFile") == "/etc/ocpp-twin/fleet/%i.env"  # no '-': a missing file fails the start
    assert _one("ExecStart") == ("/opt/ocpp-twin/venv/bin/twin fleet --data-dir /var/lib/ocpp-twin-fleet/%i "
                                 "$TWIN_FLEET_ARGS")
    assert _one("StateDirectory") == "ocpp-twin-fleet/%i"
    assert _one("WorkingDirectory") == "/var/lib/ocpp-twin-fleet/%i"
    assert _one("User") == "ocpp-twin"
    assert _one("Slice") == "ocpp-twin-fleet.slice"
    # A descriptor per member (its websocket; measured, see the unit's comments): tens of thousands per shard.
    assert int(_one("LimitNOFILE")) >= 50_000
    # Simulated members only: every device hidden, no device group.
    assert _one("PrivateDevices") == "yes"
    assert "SupplementaryGroups" not in SERVICE and "DeviceAllow" not in SERVICE


def test_the_restart_exit_code_matches_the_runtime() -> None:
    from twin.runtime import RESTART_EXIT_CODE

    assert str(RESTART_EXIT_CODE) in _one("RestartForceExitStatus").split()


# --- the instance's ExecStart, run for real -----------------------------------------------------

def expand_exec_start(instance: str, env_file: Path) -> list[str]:
    """ExecStart= as systemd runs it for ``instance`` (systemd.service(5), "Command lines";
    systemd.unit(5), "Specifiers"): %i -> the instance, $NAME -> the env file's value split at
    whitespace (an unbraced variable standing alone as a word)."""
    env = {}
    for line in env_file.read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, _, value = line.partition("=")
            env[key.strip()] = value.strip()
    words = []
    for word in _one("ExecStart").replace("%i", instance).split():
        words += env.get(word[1:], "").split() if word.startswith("$") else [word]
    return words


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _request(port: int, path: str, body: dict[str, object] | None = None) -> dict:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=data, method="GET" if body is None else "POST",
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as answer:
        return json.loads(answer.read())


async def _messages(sink: DatagramSink, seconds: float) -> list[str]:
    out: list[str] = []
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        try:
            out.append(await sink.arecv_text(left))
        except TimeoutError:
            break
    return out


async def _until(check, timeout: float, what: str) -> None:  # noqa: ANN001 - a zero-argument callable
    deadline = time.monotonic() + timeout
    while not await asyncio.to_thread(check):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.3)


@pytest.mark.slow
async def test_the_instances_exec_start_runs_a_fleet_that_notifies_once_and_stops_cleanly(tmp_path: Path) -> None:
    csms = LoopbackCsms()
    await csms.start()
    sink = DatagramSink()
    port = _free_port()
    env_file = tmp_path / "7.env"
    env_file.write_text(f"# shard 7\nTWIN_FLEET_ARGS=--csms {csms.url} --id-prefix SH- --first 41 --count 3 "
                        f"--id-width 5 --control 127.0.0.1:{port}\n")
    argv = expand_exec_start("7", env_file)
    assert argv[:4] == ["/opt/ocpp-twin/venv/bin/twin", "fleet", "--data-dir", "/var/lib/ocpp-twin-fleet/7"]
    assert argv[-2:] == ["--control", f"127.0.0.1:{port}"]
    # Here: this checkout's twin, and the data dir under tmp_path.
    argv = [sys.executable, "-m", "twin", *argv[1:3], str(tmp_path / "var/lib/ocpp-twin-fleet/7"), *argv[4:]]
    env = {k: v for k, v in os.environ.items() if k not in ("JOURNAL_STREAM", "LISTEN_FDS")}
    # As systemd passes them to a Type=notify main process; the fleet must keep both from its members.
    env.update(NOTIFY_SOCKET=sink.address, WATCHDOG_USEC="1000000", PYTHONPATH=str(REPO))
    stderr = open(tmp_path / "stderr.log", "wb")
    proc = await asyncio.create_subprocess_exec(*argv, cwd=REPO, env=env, stdout=asyncio.subprocess.DEVNULL,
                                                stderr=stderr)
    try:
        try:
            first = await sink.arecv_text(60)
        except TimeoutError:
            pytest.fail("no notification from the fleet; stderr:\n" + (tmp_path / "stderr.log").read_text())
        assert first.split("\n")[0] == "READY=1", first
        assert first.split("\n")[1] == f"STATUS=fleet of 3 stations, control API http://127.0.0.1:{port}", first
        # READY means the control API answers; then every member registers.
        assert (await asyncio.to_thread(_request, port, "/api/stations"))["count"] == 3
        await _until(lambda: _request(port, "/api/stations")["registered"] == 3, 30, "3 members registered")
        assert sorted(csms.boots) == ["SH-00041", "SH-00042", "SH-00043"]
        # A boot storm: every member stops and starts again in the process. None of it reaches systemd
        # (a member's STOPPING=1 would make systemd stop the whole shard).
        assert (await asyncio.to_thread(_request, port, "/api/fleet/reboot", {"rolling": False}))["batches"] == 1
        await _until(lambda: _request(port, "/api/stations")["reboot"]["finished"], 30, "the reboot")
        await _until(lambda: _request(port, "/api/stations")["registered"] == 3, 30, "3 members registered again")
        assert min(csms.boots.values()) == 2
        # ... nor any WATCHDOG=1 over two of the watchdog intervals a member would use.
        assert await _messages(sink, 2.5) == []

        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), timeout=30) == 0
        assert await _messages(sink, 0.5) == ["STOPPING=1"]
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        stderr.close()
        sink.close()
        await csms.stop()
