"""Scenario files: what parses, and errors that name the file, the step and the field."""

from __future__ import annotations

import pytest

from twin.scenario import ScenarioError, library, parse

GOOD = """
[scenario]
name = "demo"
description = "a demo"
[scenario.keys]
MeterValueSampleInterval = 5
LocalAuthorizeOffline = true

[[step]]
plug = 1
[[step]]
tap = "TAG1"
[[step]]
fault = {on = "StartTransaction", direction = "out", do = "drop", count = 1}
[[step]]
network = {latency_ms = 200, close_code = 1001}
[[step]]
restart = "power"
[[step]]
wait_s = 0.5
[[step]]
expect = "StartTransaction"
direction = "out"
reply = true
match = {idTagInfo = {status = "Accepted"}}
capture = {tx = "transactionId"}
within_s = 3
"""


def test_a_good_file_parses_into_steps():
    sc = parse(GOOD, "demo.toml")
    assert sc.name == "demo" and sc.keys == {"MeterValueSampleInterval": "5", "LocalAuthorizeOffline": "true"}
    assert [s.kind for s in sc.steps] == ["plug", "tap", "fault", "network", "restart", "wait_s", "expect"]
    last = sc.steps[-1]
    assert (last.number, last.action, last.direction, last.reply, last.within_s) == (7, "StartTransaction", "out",
                                                                                     True, 3.0)
    assert last.match == {"idTagInfo": {"status": "Accepted"}} and last.capture == {"tx": "transactionId"}


@pytest.mark.parametrize("step, field, words", [
    ('plug = 0', "plug", "connector number"),
    ('plug = 1\ntap = "X"', "tap", "one thing"),
    ('expect = "Heartbeat"\nplug = 1', "plug", "one thing"),
    ('expect = "Heartbeat"\ndirection = "sideways"', "direction", '"out"'),
    ('expect = "Heartbeat"\nwithin_s = -1', "within_s", "seconds"),
    ('expect = "Heartbeat"\nmatch = 3', "match", "subset"),
    ('expect = "Heartbeat"\nreply = "yes"', "reply", "true or false"),
    ('expect = "Heartbeat"\nwhatever = 1', "whatever", "unknown field"),
    ('restart = "warm"', "restart", "soft"),
    ('network = {speed = 3}', "network.speed", "unknown network field"),
    ('network = {drop_rate = true}', "network.drop_rate", "wrong type"),
    ('fault = {on = "Heartbeat"}', "fault", "rule"),
    ('tap = "012345678901234567890"', "tap", "20"),
    ('plug = 1\nwithin_s = 3', "within_s", "only on expect"),
    ('expect = "Heartbeat"\nnext = 1', "next", "true or false"),
    ('expect = "Heartbeat"\nreply = true\nnext = true', "next", "not for an answer"),
    ('expect = "Heartbeat"\nabsent = true\nnext = true', "next", "not for an answer"),
    ('nothing = 1', None, "needs one of"),
])
def test_errors_name_file_step_and_field(step, field, words):
    text = f'[scenario]\nname = "x"\n[[step]]\nwait_s = 1\n[[step]]\n{step}\n'
    with pytest.raises(ScenarioError) as info:
        parse(text, "mine.toml")
    err = info.value
    assert (err.file, err.step, err.field) == ("mine.toml", 2, field)
    assert str(err).startswith("mine.toml: step 2") and words in str(err)


@pytest.mark.parametrize("text, field", [
    ('[[step]]\nwait_s = 1', "scenario"),
    ('[scenario]\nname = ""\n[[step]]\nwait_s = 1', "scenario.name"),
    ('[scenario]\nname = "x"', "step"),
    ('[scenario]\nname = "x"\ncsms = {boot_status = 1}\n[[step]]\nwait_s = 1', "scenario.csms.boot_status"),
    ('[scenario]\nname = "x"\n[scenario.keys]\nA = [1]\n[[step]]\nwait_s = 1', "scenario.keys.A"),
])
def test_header_errors_name_the_field(text, field):
    with pytest.raises(ScenarioError) as info:
        parse(text, "h.toml")
    assert info.value.field == field and info.value.step is None


def test_not_toml_names_the_file():
    with pytest.raises(ScenarioError, match=r"^bad.toml: not valid TOML"):
        parse("[scenario\n", "bad.toml")


def test_every_builtin_parses_and_says_what_the_csms_must_do():
    names = library.names()
    assert {"boot-accepted", "boot-pending", "boot-rejected", "local-session", "offline-late-ids",
            "discarded-start", "retry-cadence", "reconnect-storm", "power-loss", "remote-session",
            "remote-start-rejected", "firmware-update", "diagnostics-upload"} <= set(names)
    for name in names:
        sc = library.builtin(name)
        assert sc.source == f"builtin:{name}" and sc.name == name
        assert sc.description and sc.csms_behaviour, name
    with pytest.raises(ScenarioError, match="no built-in scenario"):
        library.resolve("builtin:nope")
