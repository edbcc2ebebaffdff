"""Protocol fault injection (twin.faults applied by twin.link), against a real loopback CSMS,
each with its consequence on the station's state."""

from __future__ import annotations

import asyncio

import pytest

from twin.csms import Csms
from twin.csms.frames import CallErrorReceived, CsmsCallError
from twin.faults import FaultSet, invalid_payload, parse_rule

FAST = {"MessageTimeout": "1", "TransactionMessageRetryInterval": "1", "TransactionMessageAttempts": "5"}


def forget_violations(csms: Csms, *fragments: str) -> list[str]:
    """The CSMS's schema/frame violations that the test provoked on purpose, removed so
    the fixture's "every message validates" check applies to the rest."""
    mine = [e for e in csms.schema_errors if any(f in e for f in fragments)]
    csms.schema_errors[:] = [e for e in csms.schema_errors if e not in mine]
    return mine


# ------------------------------------------------------------------------------ rules
@pytest.mark.parametrize("rule, message", [
    ({"on": "Heartbeat", "direction": "out", "do": "reply", "payload": {}}, "direction 'in' only"),
    ({"on": "Reset", "direction": "in", "do": "drop"}, "direction 'out' only"),
    ({"on": "Reset", "direction": "in", "do": "reply", "payload": {"status": "Maybe"}}, "not a valid Reset.conf"),
    ({"on": "*", "direction": "in", "do": "reply", "payload": {"status": "Accepted"}}, "needs one action"),
    ({"on": "Reset", "direction": "in", "do": "callerror", "code": "Oops"}, "OCPP-J error code"),
    ({"on": "Reset", "direction": "in", "do": "delay"}, "needs seconds"),
    ({"on": "Reset", "direction": "in", "do": "explode"}, "is not one of"),
    ({"on": "Reset", "direction": "sideways", "do": "silence"}, "direction"),
    ({"on": "NoSuchThing", "direction": "in", "do": "silence"}, "not an OCPP 1.6 action"),
    ({"on": "Reset", "direction": "in", "do": "silence", "count": 0}, "count"),
    ({"on": "Reset", "direction": "in", "do": "silence", "probability": 1.5}, "probability"),
    ({"on": "Reset", "direction": "in", "do": "silence", "colour": "red"}, "unknown field"),
    ({"on": "Reset", "direction": "in", "do": "silence", "payload": {}}, "only for do = reply or invalid"),
])
def test_parse_rule_refuses_with_a_clear_message(rule, message):
    with pytest.raises(ValueError, match=message):
        parse_rule(rule)


def test_invalid_payloads_break_the_schema_and_a_reply_may_not():
    from twin.csms.schemas import schema_problem

    start = {"connectorId": 1, "idTag": "A", "meterStart": 0, "timestamp": "2024-01-01T00:00:00Z"}
    for kind, action, payload in (("call", "StartTransaction", start), ("call", "Heartbeat", {}),
                                  ("result", "RemoteStartTransaction", {"status": "Accepted"})):
        assert schema_problem(kind, action, payload) is None
        assert schema_problem(kind, action, invalid_payload(kind, action, payload)) is not None
    # do = invalid takes any payload, unchecked
    rule = parse_rule({"on": "Reset", "direction": "in", "do": "invalid", "payload": {"status": "Maybe"}})
    assert rule.payload == {"status": "Maybe"}


def test_count_probability_and_seed_repeat():
    def fired(seed: int) -> list[bool]:
        faults = FaultSet()
        faults.add(parse_rule({"on": "*", "direction": "out", "do": "drop", "probability": 0.5, "seed": seed}))
        return [faults.match("out", "Heartbeat") is not None for _ in range(40)]

    assert fired(7) == fired(7)
    assert 5 < sum(fired(7)) < 35
    faults = FaultSet()
    rule = faults.add(parse_rule({"on": "Heartbeat", "direction": "out", "do": "drop", "count": 2}))
    assert faults.match("out", "StatusNotification") is None
    assert faults.match("in", "Heartbeat") is None
    assert [faults.match("out", "Heartbeat") is rule for _ in range(3)] == [True, True, False]
    assert rule.to_dict()["remaining"] == 0
    with pytest.raises(ValueError, match="installed already"):
        faults.add(parse_rule({"id": rule.id, "on": "*", "direction": "out", "do": "drop"}))


# ------------------------------------------------------------------------------ direction in
async def test_canned_rejected_remote_start_starts_nothing(make_station, csms):
    s = await make_station()
    rule = s.rt.add_fault({"on": "RemoteStartTransaction", "direction": "in", "do": "reply",
                           "payload": {"status": "Rejected"}, "count": 1})
    assert rule["id"] and s.rt.faults()[0]["id"] == rule["id"]
    await s.plug(1)
    mark = csms.mark()
    assert await csms.call("RemoteStartTransaction", {"idTag": "TAG1", "connectorId": 1}) == {"status": "Rejected"}
    with pytest.raises(TimeoutError):
        await csms.wait_for("StartTransaction", timeout=1.5, after=mark)
    assert s.st.txlog.running == {} and s.status(1) != "Charging"
    # The rule is used up: the same call now reaches the core, which starts the transaction.
    assert await csms.call("RemoteStartTransaction", {"idTag": "TAG1", "connectorId": 1}) == {"status": "Accepted"}
    await csms.wait_for("StartTransaction", {"connectorId": 1}, timeout=10, after=mark)
    answers = [r for r in s.rt.trace_since(0)["frames"] if r["fault"] == rule["id"]]
    assert [a["frame"][2] for a in answers] == [{"status": "Rejected"}] and answers[0]["dir"] == "out"


async def test_a_canned_acceptance_is_acted_on_and_its_payload_replaces_the_answer(make_station, csms):
    """The issue's "answer this canned payload instead, and act on it": a canned Accepted to a
    ChangeConfiguration the station would refuse (a read-only key) is what the CSMS gets, and
    a canned Accepted RemoteStartTransaction starts the session."""
    s = await make_station()
    rule = s.rt.add_fault({"on": "ChangeConfiguration", "direction": "in", "do": "reply",
                           "payload": {"status": "Accepted"}, "count": 1})
    before = s.st.settings.get_int("GetConfigurationMaxKeys")
    assert await csms.call("ChangeConfiguration", {"key": "GetConfigurationMaxKeys", "value": "3"}) == {
        "status": "Accepted"}
    assert s.st.settings.get_int("GetConfigurationMaxKeys") == before  # the core refused it: read-only
    s.rt.add_fault({"on": "RemoteStartTransaction", "direction": "in", "do": "reply",
                    "payload": {"status": "Accepted"}, "count": 1})
    await s.plug(1)
    mark = csms.mark()
    assert await csms.call("RemoteStartTransaction", {"idTag": "TAG1", "connectorId": 1}) == {"status": "Accepted"}
    await csms.wait_for("StartTransaction", {"connectorId": 1}, timeout=10, after=mark)
    sent = [r for r in s.rt.trace_since(0)["frames"] if r["fault"] == rule["id"]]
    assert len(sent) == 1 and sent[0]["dir"] == "out" and sent[0]["frame"][2] == {"status": "Accepted"}


async def test_callerror_and_silence_never_reach_the_core(make_station, csms):
    s = await make_station()
    s.rt.add_fault({"on": "ChangeConfiguration", "direction": "in", "do": "callerror", "code": "InternalError",
                    "description": "injected", "count": 1})
    with pytest.raises(CallErrorReceived) as err:
        await csms.call("ChangeConfiguration", {"key": "HeartbeatInterval", "value": "77"})
    assert (err.value.code, err.value.description) == ("InternalError", "injected")
    assert s.st.settings.get_int("HeartbeatInterval") != 77
    silence = s.rt.add_fault({"on": "ChangeConfiguration", "direction": "in", "do": "silence", "count": 1})
    with pytest.raises(TimeoutError):
        await csms.call("ChangeConfiguration", {"key": "HeartbeatInterval", "value": "78"}, timeout=1.5)
    assert s.st.settings.get_int("HeartbeatInterval") != 78
    assert s.rt.remove_fault(silence["id"]) and not s.rt.remove_fault(silence["id"])
    assert (await csms.call("ChangeConfiguration", {"key": "HeartbeatInterval", "value": "79"}))["status"] == "Accepted"
    assert s.st.settings.get_int("HeartbeatInterval") == 79
    marked = [r for r in s.rt.trace_since(0)["frames"] if r["fault"] == silence["id"]]
    assert len(marked) == 1 and marked[0]["dir"] == "in" and marked[0]["do"] == "silence"


async def test_delayed_and_duplicated_answers_after_the_core_acted(make_station, csms):
    s = await make_station()
    s.rt.add_fault({"on": "ChangeConfiguration", "direction": "in", "do": "delay", "seconds": 0.6, "count": 1})
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    assert (await csms.call("ChangeConfiguration", {"key": "HeartbeatInterval", "value": "91"}))["status"] == "Accepted"
    assert loop.time() - t0 >= 0.6
    assert s.st.settings.get_int("HeartbeatInterval") == 91
    s.rt.add_fault({"on": "ChangeConfiguration", "direction": "in", "do": "duplicate", "count": 1})
    mark = len(csms.messages)
    await csms.call("ChangeConfiguration", {"key": "HeartbeatInterval", "value": "92"})
    call = next(m for m in csms.messages[mark:] if m.direction == "out" and m.kind == "call")
    await csms.wait_until(lambda: True if len([m for m in csms.messages[mark:] if m.direction == "in"
                                               and m.unique_id == call.unique_id]) == 2 else None, 5, "two answers")
    assert s.st.settings.get_int("HeartbeatInterval") == 92
    forget_violations(csms, "unknown uniqueId")  # the CSMS's view of the second copy


async def test_garbled_and_invalid_answers_and_the_station_carries_on(make_station, csms):
    s = await make_station()
    s.rt.add_fault({"on": "ChangeConfiguration", "direction": "in", "do": "garble", "count": 1})
    with pytest.raises(TimeoutError):  # the CSMS cannot read it, so its call stays unanswered
        await csms.call("ChangeConfiguration", {"key": "HeartbeatInterval", "value": "93"}, timeout=1.5)
    assert forget_violations(csms, "invalid frame"), "the CSMS got no garbled frame"
    s.rt.add_fault({"on": "ChangeConfiguration", "direction": "in", "do": "invalid", "count": 1})
    reply = await csms.call("ChangeConfiguration", {"key": "HeartbeatInterval", "value": "94"})
    assert "status" not in reply or reply.get("status") not in ("Accepted", "Rejected", "RebootRequired",
                                                                  "NotSupported")
    assert forget_violations(csms, "ChangeConfiguration.conf does not validate")
    # The station acted on both calls (only its answers were broken) and carries on.
    assert s.st.settings.get_int("HeartbeatInterval") == 94
    assert (await csms.call("ChangeConfiguration", {"key": "HeartbeatInterval", "value": "95"}))["status"] == "Accepted"


# ------------------------------------------------------------------------------ direction out
async def _start_transaction(s, csms, tag: str = "TAG1") -> int:
    mark = csms.mark()
    await s.plug(1)
    await s.tap(tag)
    start = await csms.wait_for("StartTransaction", {"connectorId": 1}, timeout=10, after=mark)
    await s.until(lambda: s.st.txlog.transaction_id(1) is not None, what="transactionId")
    assert start is not None
    return s.st.txlog.transaction_id(1)


async def test_dropped_stop_transaction_is_delivered_later_exactly_once(make_station, csms):
    s = await make_station(keys=FAST)
    tid = await _start_transaction(s, csms)
    rule = s.rt.add_fault({"on": "StopTransaction", "direction": "out", "do": "drop", "count": 1})
    mark = csms.mark()
    await s.tap("TAG1")  # the same card stops it (§3.4)
    stop = await csms.wait_for("StopTransaction", {"transactionId": tid}, timeout=15, after=mark)
    await s.until(lambda: len(s.st.queue) == 0, timeout=10, what="an empty queue")
    await asyncio.sleep(1.5)  # one more retry interval: nothing else may come
    assert len(csms.calls("StopTransaction", after=mark)) == 1
    dropped = [r for r in s.rt.trace_since(0)["frames"] if r["fault"] == rule["id"]]
    assert len(dropped) == 1 and dropped[0]["do"] == "drop" and dropped[0]["frame"][2] == "StopTransaction"
    assert dropped[0]["frame"][1] != stop.unique_id  # the retry is a new message (§3.7.1)
    assert s.rt.faults()[0]["remaining"] == 0


async def test_duplicate_call_seen_twice_with_one_id(make_station, csms):
    s = await make_station()
    s.rt.add_fault({"on": "Heartbeat", "direction": "out", "do": "duplicate", "count": 1})
    mark = csms.mark()
    assert (await csms.call("TriggerMessage", {"requestedMessage": "Heartbeat"}))["status"] == "Accepted"
    first = await csms.wait_for("Heartbeat", timeout=10, after=mark)
    await csms.wait_until(lambda: True if len(csms.calls("Heartbeat", after=mark)) == 2 else None, 5, "a copy")
    assert {m.unique_id for m in csms.calls("Heartbeat", after=mark)} == {first.unique_id}


async def test_garbled_and_invalid_calls_out_and_the_station_carries_on(make_station, csms):
    from twin.csms.schemas import schema_problem

    s = await make_station(keys=FAST)

    def strict(payload: dict) -> dict:  # a CSMS that checks what it gets (OCPP-J §4.2.3)
        if schema_problem("call", "StartTransaction", payload) is not None:
            raise CsmsCallError("FormationViolation", "StartTransaction does not validate")
        return {"transactionId": 4242, "idTagInfo": {"status": "Accepted"}}

    csms.on("StartTransaction", strict)
    invalid = s.rt.add_fault({"on": "StartTransaction", "direction": "out", "do": "invalid", "count": 1})
    tid = await _start_transaction(s, csms)
    # The broken StartTransaction got the CSMS's CALLERROR (an attempt, §3.7.1) and went again, valid.
    starts = [m for m in csms.messages if m.direction == "in" and m.kind == "call" and m.action == "StartTransaction"]
    assert len(starts) == 2 and tid == 4242
    error = csms.reply_to(starts[0])
    assert error is not None and error.kind == "error" and error.payload["errorCode"] == "FormationViolation"
    assert forget_violations(csms, "StartTransaction does not validate")
    assert [r["fault"] for r in s.rt.trace_since(0)["frames"] if r["fault"]] == [invalid["id"]]

    garble = s.rt.add_fault({"on": "Heartbeat", "direction": "out", "do": "garble", "count": 1})
    mark = csms.mark()
    await csms.call("TriggerMessage", {"requestedMessage": "Heartbeat"})
    await csms.wait_frame(lambda m: m.kind == "invalid", timeout=10, after=mark)
    assert forget_violations(csms, "invalid frame")
    # Unanswered (the CSMS could not read it): the call times out and the station goes on.
    await csms.call("TriggerMessage", {"requestedMessage": "Heartbeat"})
    await csms.wait_for("Heartbeat", timeout=10, after=mark)
    assert s.st.txlog.transaction_id(1) == 4242 and s.st.online
    assert any(r["fault"] == garble["id"] and isinstance(r["frame"], str) for r in s.rt.trace_since(0)["frames"])


async def test_delayed_call_goes_late(make_station, csms):
    s = await make_station()
    s.rt.add_fault({"on": "Heartbeat", "direction": "out", "do": "delay", "seconds": 0.7, "count": 1})
    mark = csms.mark()
    await csms.call("TriggerMessage", {"requestedMessage": "Heartbeat"})
    trigger = next(m for m in csms.messages[mark:] if m.action == "TriggerMessage" and m.kind == "call")
    beat = await csms.wait_for("Heartbeat", timeout=10, after=mark)
    assert beat.t - trigger.t >= 0.7
    s.rt.clear_faults()
    assert s.rt.faults() == []


async def test_faults_from_the_station_toml(tmp_path, csms):
    from twin.config import ConfigError, load_config

    toml = tmp_path / "station.toml"
    toml.write_text('[[faults]]\non = "RemoteStartTransaction"\ndirection = "in"\ndo = "reply"\n'
                    'payload = { status = "Rejected" }\n\n[[faults]]\non = "Heartbeat"\ndirection = "in"\n'
                    'do = "silence"\n', encoding="utf-8")
    with pytest.raises(ConfigError, match=r"faults\[1\].*CSMS sends"):
        load_config(toml)
    toml.write_text('[[faults]]\nid = "no-start"\non = "RemoteStartTransaction"\ndirection = "in"\ndo = "reply"\n'
                    'payload = { status = "Rejected" }\n', encoding="utf-8")
    from twin.runtime import Runtime

    cfg = load_config(toml, {"csms_url": csms.url, "charge_point_id": "CP1", "data_dir": tmp_path / "d",
                             "control": "127.0.0.1:0", "sim": True})
    assert cfg.faults[0]["id"] == "no-start"
    rt = Runtime(cfg, meter_poll_s=0.2)
    await rt.start()
    try:
        await csms.wait_for("BootNotification", timeout=10)
        assert [r["id"] for r in rt.faults()] == ["no-start"]
        assert await csms.call("RemoteStartTransaction", {"idTag": "T"}) == {"status": "Rejected"}
    finally:
        await rt.shutdown(graceful=False)


@pytest.mark.parametrize("bad", [{"x": 1}, True, 0, "", "a/b", " x", "\n"])
def test_a_rule_id_must_be_a_printable_string_usable_in_a_url(bad):
    with pytest.raises(ValueError, match="fault id"):
        parse_rule({"id": bad, "on": "*", "direction": "out", "do": "drop"})
