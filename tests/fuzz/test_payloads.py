"""The payload generator: schema-valid, accepted by the link, reaching the edges, seeded."""

from __future__ import annotations

import json
import random
from datetime import datetime, timezone

import pytest

from tests.fuzz import payloads
from tests.fuzz.payloads import CSMS_ACTIONS, PayloadGen, World, is_unicode, validation_errors
from twin.link import InboundError, parse_inbound

NOW = datetime(2026, 11, 24, 12, 0, tzinfo=timezone.utc)
STATION_CALLS = ("Authorize", "BootNotification", "DataTransfer", "DiagnosticsStatusNotification",
                 "FirmwareStatusNotification", "Heartbeat", "MeterValues", "StartTransaction",
                 "StatusNotification", "StopTransaction")


def world() -> World:
    return World(now=NOW, transaction_ids=[1000, 1001], running={1: 1000})


def draws(seeds: range, action: str) -> list[dict]:
    out = []
    for seed in seeds:
        gen = PayloadGen(random.Random(seed), world())
        out += [gen.call(action) for _ in range(3)]
    return out


@pytest.mark.parametrize("action", CSMS_ACTIONS)
def test_every_generated_call_is_schema_valid_and_passes_the_link(action: str) -> None:
    for payload in draws(range(150), action):
        assert validation_errors(action, payload) == [], payload
        frame = json.dumps([2, "u1", action, payload])
        if not is_unicode(payload):
            # A lone surrogate: the link may take the call, or refuse it with a clear CALLERROR.
            try:
                parse_inbound(frame)
            except InboundError as e:
                assert e.code == "FormationViolation", e
            continue
        kind, uid, parsed_action, parsed = parse_inbound(frame)
        assert (kind, parsed_action) == ("call", action)


@pytest.mark.parametrize("action", STATION_CALLS)
def test_every_generated_reply_is_schema_valid(action: str) -> None:
    for seed in range(150):
        reply = PayloadGen(random.Random(seed), world(), edge=0.5).response(action)
        assert validation_errors(action, reply, response=True) == [], reply


def test_edge_values_are_reached() -> None:
    tags = [p["idTag"] for p in draws(range(300), "RemoteStartTransaction")]
    tags += [e["idTag"] for p in draws(range(300), "SendLocalList") for e in p.get("localAuthorizationList", [])]
    assert "" in tags
    assert any(len(t) == 20 for t in tags)
    assert any(not t.isascii() for t in tags)
    assert "tag-0001" in tags  # a known tag (TAG-0001) in another letter case: IdToken is case-insensitive
    assert any("\ud800" in t for t in tags)  # legal JSON text, not valid UTF-8

    connectors = {p["connectorId"] for p in draws(range(300), "ChangeAvailability")}
    assert {0, 1, 2, -1, 2**31 - 1} <= connectors
    assert any(c >= 2**63 for c in connectors)

    expiries = [p["expiryDate"] for p in draws(range(300), "ReserveNow")]
    assert any(e.startswith(("0001-", "1970-")) for e in expiries)
    assert any(e.startswith("9999-") for e in expiries)
    assert any(e.endswith(":60Z") for e in expiries)  # a leap second (RFC 3339 §5.7)

    vendors = [p["vendorId"] for p in draws(range(300), "DataTransfer")]
    assert any(len(v) == 255 for v in vendors)  # maxLength of the schema

    periods = [len(p["csChargingProfiles"]["chargingSchedule"]["chargingSchedulePeriod"])
               for p in draws(range(300), "SetChargingProfile")]
    assert 0 in periods and max(periods) > 24  # beyond ChargingScheduleMaxPeriods


def test_realistic_values_reach_the_deep_paths() -> None:
    starts = draws(range(300), "RemoteStartTransaction")
    plain = [p for p in starts if p["idTag"] in world().id_tags and p.get("connectorId") in (1, 2)]
    assert len(plain) > len(starts) / 3
    profiles = [p["csChargingProfiles"] for p in draws(range(300), "SetChargingProfile")]
    assert any(p.get("transactionId") == 1000 and p["chargingProfilePurpose"] == "TxProfile" for p in profiles)
    stops = [p["transactionId"] for p in draws(range(100), "RemoteStopTransaction")]
    assert stops.count(1000) > len(stops) / 3  # the running transaction


def test_a_seed_gives_the_same_payloads() -> None:
    def sequence(seed: int) -> list[dict]:
        gen = PayloadGen(random.Random(seed), world())
        return [gen.call(a) for a in CSMS_ACTIONS for _ in range(5)]

    assert sequence(42) == sequence(42)
    assert sequence(42) != sequence(43)


def test_a_rule_that_breaks_the_schema_is_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(payloads.FIELD_RULES, ("*", "connectorId"), lambda g, s: "one")
    with pytest.raises(AssertionError, match="not schema-valid"):
        PayloadGen(random.Random(1), world()).call("UnlockConnector")
