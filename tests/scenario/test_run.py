"""Scenarios run against real CSMSs on loopback: every built-in one passes against the
built-in CSMS; broken CSMSs make the right ones fail, with a report that says where."""

from __future__ import annotations

import asyncio
import json
import sys
import xml.etree.ElementTree as ET

import pytest

from tests.conftest import twin_process_env
from twin.csms import NO_REPLY, Csms
from twin.scenario import library, parse
from twin.scenario.run import run_scenario


# The built-ins whose CSMS must send calls of its own are run by tests/scenario/test_csms_driven.py,
# which drives each one and checks that none is left out.
STATION_DRIVEN = [n for n in library.names() if not library.csms_sends(library.builtin(n))]


@pytest.mark.parametrize("name", STATION_DRIVEN)
async def test_every_builtin_scenario_passes_against_the_builtin_csms(name):
    scenario = library.builtin(name)
    csms = library.builtin_csms(scenario)
    await csms.start()
    try:
        result = await run_scenario(scenario, csms.url, "CP-" + name)
    finally:
        await csms.stop()
    assert result.passed, result.message + "\n" + "\n".join(json.dumps(f["frame"]) for f in result.frames)
    assert result.steps_done == len(scenario.steps) and csms.charge_point_id == "CP-" + name


async def _run_against(csms: Csms, name: str):
    await csms.start()
    try:
        return await run_scenario(library.builtin(name), csms.url)
    finally:
        await csms.stop()


async def test_start_transaction_without_transaction_id_fails_the_session_at_that_answer():
    csms = Csms(heartbeat_interval=300)
    csms.on("StartTransaction", lambda payload: {"idTagInfo": {"status": "Accepted"}})
    result = await _run_against(csms, "local-session")
    assert not result.passed and not result.error
    assert result.failed_step.number == 6  # the StartTransaction reply step
    assert "transactionId" in result.instead and "schema" in result.instead
    # The frames around it end with the wrong answer itself.
    last = result.frames[-1]["frame"]
    assert last[0] == 3 and last[2] == {"idTagInfo": {"status": "Accepted"}}


async def test_a_csms_that_never_answers_stop_transaction_fails_at_the_reply_step():
    csms = Csms(heartbeat_interval=300)
    csms.on("StopTransaction", lambda payload: NO_REPLY)
    scenario = library.builtin("local-session")
    await csms.start()
    try:
        result = await run_scenario(scenario, csms.url)
    finally:
        await csms.stop()
    assert not result.passed and result.failed_step.number == 11
    assert "no answer to that StopTransaction" in result.instead


async def test_a_csms_that_accepts_when_it_should_reject_fails_boot_rejected_only():
    csms = Csms(heartbeat_interval=300)  # Accepted, whatever the scenario needs
    await csms.start()
    try:
        rejected = await run_scenario(library.builtin("boot-rejected"), csms.url)
        accepted = await run_scenario(library.builtin("boot-accepted"), csms.url)
    finally:
        await csms.stop()
    assert accepted.passed
    assert not rejected.passed and rejected.failed_step.number == 1
    assert '"status":"Accepted"' in rejected.instead


async def test_cli_writes_junit_that_parses_and_exits_1_on_a_failure(tmp_path):
    csms = Csms(heartbeat_interval=300)
    csms.on("StartTransaction", lambda payload: NO_REPLY)  # a CSMS that never answers a start
    await csms.start()
    out = tmp_path / "reports" / "scenarios.xml"
    try:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "twin", "scenario", "run", "builtin:boot-accepted", "builtin:local-session",
            "--csms", csms.url, "--id", "CI-CP-1", "--junit", str(out),
            env=twin_process_env(), stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        stdout, stderr = await asyncio.wait_for(proc.communicate(), timeout=90)
    finally:
        await csms.stop()
    text = stdout.decode()
    assert proc.returncode == 1, (text, stderr.decode())
    assert "PASS  boot-accepted" in text and "FAIL  local-session" in text and "1/2 scenario(s) passed" in text
    suite = ET.parse(out).getroot()
    assert suite.tag == "testsuite" and suite.get("tests") == "2" and suite.get("failures") == "1"
    cases = {c.get("name"): c for c in suite.iter("testcase")}
    assert set(cases) == {"boot-accepted", "local-session"}
    assert cases["boot-accepted"].find("failure") is None
    failure = cases["local-session"].find("failure")
    assert failure is not None and failure.get("message").startswith("step 6: expected the answer to a StartTransaction")
    assert "failing step: 6" in failure.text and "CI-CP-1" in failure.text and "the CSMS must:" in failure.text
    frames = [json.loads(line) for line in cases["local-session"].find("system-out").text.splitlines()]
    assert 0 < len(frames) <= 20
    assert any(f["frame"][0] == 2 and f["frame"][2] == "StartTransaction" for f in frames)


async def test_cli_exit_0_when_all_pass_and_list_shows_the_library(tmp_path):
    csms = Csms(heartbeat_interval=300)
    await csms.start()
    try:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "twin", "scenario", "run", "builtin:boot-accepted", "--csms", csms.url,
            env=twin_process_env(), stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        stdout, _ = await asyncio.wait_for(proc.communicate(), timeout=60)
        listing = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "twin", "scenario", "list", env=twin_process_env(), stdout=asyncio.subprocess.PIPE)
        names, _ = await asyncio.wait_for(listing.communicate(), timeout=60)
    finally:
        await csms.stop()
    assert proc.returncode == 0, stdout.decode()
    assert listing.returncode == 0
    for name in library.names():
        assert f"builtin:{name}" in names.decode()


async def test_cli_broken_file_exits_2_naming_the_step(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text('[scenario]\nname = "b"\n[[step]]\nplug = "one"\n')
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "twin", "scenario", "run", str(bad), "--csms", "ws://127.0.0.1:9/ocpp",
        env=twin_process_env(), stderr=asyncio.subprocess.PIPE)
    _, stderr = await asyncio.wait_for(proc.communicate(), timeout=60)
    assert proc.returncode == 2 and f"{bad}: step 1: plug" in stderr.decode()


RESTARTS = """
[scenario]
name = "restarts"
[scenario.keys]
MeterValueSampleInterval = 0
ClockAlignedDataInterval = 0
[[step]]
expect = "StatusNotification"
match = {connectorId = 1, status = "Available"}
[[step]]
plug = 1
[[step]]
tap = "T1"
[[step]]
expect = "StartTransaction"
reply = true
capture = {tx = "transactionId"}
[[step]]
restart = "soft"
[[step]]
expect = "StopTransaction"
match = {transactionId = "${tx}", reason = "SoftReset"}
[[step]]
expect = "BootNotification"
[[step]]
restart = "hard"
[[step]]
expect = "BootNotification"
"""


async def test_soft_and_hard_restarts_boot_the_station_again(csms):
    result = await run_scenario(parse(RESTARTS, "restarts.toml"), csms.url, "CP-R")
    assert result.passed, result.message
    assert len(csms.calls("BootNotification")) == 3
    assert [m.payload["reason"] for m in csms.calls("StopTransaction")] == ["SoftReset"]


async def test_a_match_that_never_comes_reports_what_came_instead(csms):
    text = '[scenario]\nname = "m"\n[[step]]\nexpect = "BootNotification"\nmatch = {chargePointModel = "X"}\nwithin_s = 2\n'
    result = await run_scenario(parse(text, "m.toml"), csms.url)
    assert not result.passed and result.failed_step.number == 1
    assert result.instead.startswith("instead: out [2,") and '"chargePointModel":"iEVQC33"' in result.instead


async def test_a_reset_from_the_csms_restarts_the_station_within_the_scenario(csms):
    text = """
[scenario]
name = "reset"
[[step]]
expect = "StatusNotification"
match = {connectorId = 2}
[[step]]
expect = "BootNotification"
within_s = 20
"""
    task = asyncio.ensure_future(run_scenario(parse(text, "reset.toml"), csms.url, "CP-RESET"))
    await csms.wait_for("StatusNotification", {"connectorId": 2}, timeout=20)
    assert (await csms.call("Reset", {"type": "Soft"}))["status"] == "Accepted"
    result = await task
    assert result.passed, result.message
    assert len(csms.calls("BootNotification")) == 2


async def test_an_unreachable_csms_fails_the_first_step_and_says_why():
    from tests.conftest import free_port

    text = '[scenario]\nname = "u"\n[[step]]\nexpect = "BootNotification"\nwithin_s = 2\n'
    result = await run_scenario(parse(text, "u.toml"), f"ws://127.0.0.1:{free_port()}/ocpp")
    assert not result.passed and result.failed_step.number == 1
    assert "no frames at all" in result.instead and "the link:" in result.instead


FAULT_ACROSS_POWER_CUT = """
[scenario]
name = "a dropped StopTransaction after a power cut"
[scenario.keys]
MeterValueSampleInterval = 0
ClockAlignedDataInterval = 0
MessageTimeout = 2
TransactionMessageRetryInterval = 1
[[step]]
expect = "StatusNotification"
match = {connectorId = 1, status = "Available"}
[[step]]
fault = {on = "StopTransaction", direction = "out", do = "drop", count = 1}
[[step]]
plug = 1
[[step]]
tap = "T1"
[[step]]
expect = "StartTransaction"
reply = true
[[step]]
restart = "power"
[[step]]
expect = "BootNotification"
[[step]]
expect = "StopTransaction"
match = {reason = "PowerLoss"}
within_s = 90
"""


async def test_fault_rules_still_hold_after_a_restart(csms):
    """Rules a scenario installed are carried to the runtime a restart builds: the PowerLoss
    StopTransaction is dropped once on the new runtime, stays queued and comes again."""
    result = await run_scenario(parse(FAULT_ACROSS_POWER_CUT, "carry.toml"), csms.url, "CP-CARRY")
    assert result.passed, result.message
    stops = csms.calls("StopTransaction")
    assert len(stops) == 1  # the first copy never reached the wire
    dropped = [f for f in result.frames if f.get("do") == "drop"]
    assert dropped and dropped[0]["run"] == 2


async def test_an_absent_call_that_comes_fails_the_step_and_one_that_does_not_passes():
    text = """
[scenario]
name = "absent"
csms = {boot_status = "Pending", heartbeat_interval = 1}
[[step]]
expect = "BootNotification"
reply = true
[[step]]
expect = "Heartbeat"
absent = true
within_s = 1.5
[[step]]
expect = "BootNotification"
absent = true
within_s = 4
"""
    scenario = parse(text, "absent.toml")
    csms = library.builtin_csms(scenario)
    async with csms:
        result = await run_scenario(scenario, csms.url, "CP-ABSENT")
    assert not result.passed and result.failed_step.number == 3, result.message
    assert "it came" in result.message
    with pytest.raises(Exception, match="absent"):
        parse(text.replace("absent = true\nwithin_s = 1.5", "absent = true\nreply = true"), "bad.toml")
