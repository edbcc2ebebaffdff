"""Property tests (hypothesis) of the composite schedule and the applied limit.

The reference ("oracle") here evaluates the installed profiles' JSON at one instant,
the naive way: every profile, every time, straight from the OCPP fields. It shares no
code with the engine, which works on intervals.
"""

from __future__ import annotations

import math
from datetime import datetime, timedelta
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from twin.core.smart_charging import SmartCharging, TxInfo

from .test_smart_charging import CPMAX, T0, TXDEFAULT, TXPROFILE, iso

VOLTAGE = 230.0
RATING = 32.0
CYCLES = {"Daily": 86_400, "Weekly": 604_800}
EPS = 1e-6

# ---------------------------------------------------------------- the oracle


def _epoch(text: str) -> int:
    moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    return math.floor(moment.timestamp())


def _seconds(moment: datetime) -> int:
    return math.floor(moment.timestamp())


def oracle_profile(raw: dict[str, Any], t: int, anchor: int) -> tuple[float, int] | None:
    """(amps, phases) the profile sets at second t, or None if it is not in force."""
    if "validFrom" in raw and t < _epoch(raw["validFrom"]):
        return None
    if "validTo" in raw and t >= _epoch(raw["validTo"]):
        return None
    schedule = raw["chargingSchedule"]
    duration = schedule.get("duration") or None  # 0 = no duration (the engine's documented choice)
    if raw["chargingProfileKind"] == "Recurring":
        origin = _epoch(schedule["startSchedule"])
        if t < origin:
            return None
        offset = (t - origin) % CYCLES[raw["recurrencyKind"]]
    else:
        relative = raw["chargingProfileKind"] == "Relative" or "startSchedule" not in schedule
        offset = t - (anchor if relative else _epoch(schedule["startSchedule"]))
        if offset < 0:
            return None
    if duration is not None and offset >= duration:
        return None
    period = [p for p in schedule["chargingSchedulePeriod"] if p["startPeriod"] <= offset][-1]
    phases = period.get("numberPhases", 3)
    amps = period["limit"] if schedule["chargingRateUnit"] == "A" else period["limit"] / (VOLTAGE * phases)
    return amps, phases


def oracle_stack(raws: list[dict[str, Any]], t: int, anchor: int) -> tuple[float, int] | None:
    for raw in sorted(raws, key=lambda r: -r["stackLevel"]):
        value = oracle_profile(raw, t, anchor)
        if value is not None:
            return value
    return None


def oracle_own(station: SmartCharging, connector: int, t: int, txs: dict[int, TxInfo], anchor_no_tx: int):
    installed = station.installed()
    tx = txs.get(connector)
    anchor = _seconds(tx.start) if tx else anchor_no_tx
    if tx is not None:
        mine = [e["chargingProfile"] for e in installed
                if e["connectorId"] == connector and e["chargingProfile"]["chargingProfilePurpose"] == TXPROFILE
                and e["chargingProfile"].get("transactionId") in (None, tx.transaction_id)]
        if mine:
            return oracle_stack(mine, t, anchor)
    levels: dict[int, dict[str, Any]] = {}
    for where in (0, connector):
        for e in installed:
            if e["connectorId"] == where and e["chargingProfile"]["chargingProfilePurpose"] == TXDEFAULT:
                levels[e["chargingProfile"]["stackLevel"]] = e["chargingProfile"]
    return oracle_stack(list(levels.values()), t, anchor)


def oracle_cp_max(station: SmartCharging, t: int):
    return oracle_stack([e["chargingProfile"] for e in station.installed()
                         if e["chargingProfile"]["chargingProfilePurpose"] == CPMAX], t, t)


def floor_tenth(value: float) -> float:
    return math.floor(value * 10 + EPS) / 10


# ---------------------------------------------------------------- strategies

limits_a = st.sampled_from([0, 0.5, 6, 8.5, 10, 13.3, 16, 25, 32, 40])
limits_w = st.integers(0, 3000).map(lambda k: k * 10)


@st.composite
def profiles(draw, pid: int, purpose: str, txid: int | None) -> dict[str, Any]:
    unit = draw(st.sampled_from(["A", "W"]))
    gaps = draw(st.lists(st.integers(1, 400), max_size=4))
    starts = [0]
    for gap in gaps:
        starts.append(starts[-1] + gap)
    periods = []
    for start in starts:
        period = {"startPeriod": start, "limit": draw(limits_a if unit == "A" else limits_w)}
        phases = draw(st.sampled_from([None, 1, 2, 3]))
        if phases is not None:
            period["numberPhases"] = phases
        periods.append(period)
    schedule: dict[str, Any] = {"chargingRateUnit": unit, "chargingSchedulePeriod": periods}
    kinds = ["Absolute", "Recurring"] + ([] if purpose == CPMAX else ["Relative", "AbsoluteNoStart"])
    kind = draw(st.sampled_from(kinds))
    body: dict[str, Any] = {"chargingProfileId": pid, "stackLevel": draw(st.integers(0, 3)),
                            "chargingProfilePurpose": purpose}
    if kind == "Recurring":
        body["recurrencyKind"] = draw(st.sampled_from(["Daily", "Weekly"]))
        back = draw(st.integers(0, 8)) * CYCLES[body["recurrencyKind"]] // 4
        schedule["startSchedule"] = iso(T0 + timedelta(seconds=draw(st.integers(-1500, 1500)) - back))
    elif kind == "Absolute":
        schedule["startSchedule"] = iso(T0 + timedelta(seconds=draw(st.integers(-1500, 1500))))
    body["chargingProfileKind"] = "Absolute" if kind == "AbsoluteNoStart" else kind
    duration = draw(st.sampled_from([None, 0, "n"]))
    if duration == "n":
        duration = draw(st.integers(1, 1500))
    if duration is not None:
        schedule["duration"] = duration
    if draw(st.booleans()):
        body["validFrom"] = iso(T0 + timedelta(seconds=draw(st.integers(-2000, 2000))))
    if draw(st.booleans()):
        body["validTo"] = iso(T0 + timedelta(seconds=draw(st.integers(1, 4000))))
    if txid is not None and draw(st.booleans()):
        body["transactionId"] = txid
    body["chargingSchedule"] = schedule
    return body


@st.composite
def scenarios(draw) -> tuple[SmartCharging, dict[int, TxInfo], datetime, int]:
    station = SmartCharging(2, max_installed=30, station_max_amps=RATING, voltage=VOLTAGE)
    txs: dict[int, TxInfo] = {}
    for connector in (1, 2):
        if draw(st.booleans()):
            txs[connector] = TxInfo(draw(st.sampled_from([None, 100 + connector])),
                                    T0 - timedelta(seconds=draw(st.integers(0, 3000)), microseconds=draw(
                                        st.integers(0, 999_999))))
    count = draw(st.integers(0, 8))
    for pid in range(count):
        target = draw(st.sampled_from([(0, CPMAX), (0, TXDEFAULT), (1, TXDEFAULT), (2, TXDEFAULT),
                                       (1, TXPROFILE), (2, TXPROFILE)]))
        connector, purpose = target
        tx = txs.get(connector)
        body = draw(profiles(pid, purpose, tx.transaction_id if tx else None))
        # Some are Rejected (no transaction, validTo past...): the oracle reads what was installed.
        station.set_profile(connector, body, T0, txs)
    now = T0 + timedelta(seconds=draw(st.integers(0, 2000)), microseconds=draw(st.integers(0, 999_999)))
    duration = draw(st.integers(0, 1500))
    return station, txs, now, duration


def _periods(answer: dict[str, Any]) -> list[dict[str, Any]]:
    return answer["chargingSchedule"]["chargingSchedulePeriod"]


def _at(periods: list[dict[str, Any]], offset: int) -> dict[str, Any]:
    return [p for p in periods if p["startPeriod"] <= offset][-1]


def _instants(periods: list[dict[str, Any]], duration: int, extra: list[int]) -> list[int]:
    points = {0}
    for p in periods:
        points.update({p["startPeriod"], p["startPeriod"] - 1})
    points.update(extra)
    return sorted(o for o in points if 0 <= o < max(duration, 1))


PROPERTY = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
offsets = st.lists(st.integers(0, 1499), max_size=12)

# ---------------------------------------------------------------- properties


@PROPERTY
@given(scenarios(), offsets)
def test_periods_are_contiguous_start_at_zero_and_merge_equal_neighbours(scenario, _extra) -> None:
    station, txs, now, duration = scenario
    for connector in (0, 1, 2):
        for unit in ("A", "W"):
            answer = station.composite(connector, now, duration, unit, txs)
            periods = _periods(answer)
            assert periods[0]["startPeriod"] == 0
            starts = [p["startPeriod"] for p in periods]
            assert starts == sorted(set(starts))
            assert all(s < duration for s in starts[1:])
            pairs = [(p["limit"], p["numberPhases"]) for p in periods]
            assert all(a != b for a, b in zip(pairs, pairs[1:]))
            assert answer["chargingSchedule"]["duration"] == duration
            assert all(p["limit"] >= 0 and round(p["limit"] * 10) == p["limit"] * 10 for p in periods)


@PROPERTY
@given(scenarios(), offsets)
def test_composite_never_exceeds_any_prevailing_profile(scenario, extra) -> None:
    station, txs, now, duration = scenario
    t0 = _seconds(now)
    for connector in (1, 2):
        amps_periods = _periods(station.composite(connector, now, duration, "A", txs))
        watt_periods = _periods(station.composite(connector, now, duration, "W", txs))
        for offset in _instants(amps_periods + watt_periods, duration, extra):
            t = t0 + offset
            amps, watts = _at(amps_periods, offset), _at(watt_periods, offset)
            assert amps["limit"] <= RATING + EPS
            for prevailing in (oracle_own(station, connector, t, txs, t0), oracle_cp_max(station, t)):
                if prevailing is not None:
                    assert amps["limit"] <= prevailing[0] + EPS
                    assert watts["limit"] <= prevailing[0] * VOLTAGE * prevailing[1] + EPS
                    assert amps["numberPhases"] <= prevailing[1]
    station_periods = _periods(station.composite(0, now, duration, "A", txs))
    for offset in _instants(station_periods, duration, extra):
        cp_max = oracle_cp_max(station, t0 + offset)
        if cp_max is not None:
            assert _at(station_periods, offset)["limit"] <= cp_max[0] + EPS


@PROPERTY
@given(scenarios(), offsets)
def test_composite_equals_the_pointwise_reference_for_a_lone_connector(scenario, extra) -> None:
    """With no other connector charging, the connector's result is exactly
    min(own stack, ChargePointMax stack, rating) at every instant."""
    station, txs, now, duration = scenario
    t0 = _seconds(now)
    for connector in (1, 2):
        if set(txs) - {connector}:
            continue
        periods = _periods(station.composite(connector, now, duration, "A", txs))
        for offset in _instants(periods, duration, extra):
            own = oracle_own(station, connector, t0 + offset, txs, t0)
            cp_max = oracle_cp_max(station, t0 + offset)
            expected = min([RATING] + [v[0] for v in (own, cp_max) if v is not None])
            phases = min([v[1] for v in (own, cp_max) if v is not None], default=3)
            assert (_at(periods, offset)["limit"], _at(periods, offset)["numberPhases"]) \
                == (floor_tenth(expected), phases), offset


@PROPERTY
@given(scenarios(), st.lists(st.integers(0, 4000), min_size=1, max_size=12))
def test_charge_point_max_sum_across_connectors_is_never_exceeded(scenario, offsets_) -> None:
    station, txs, now, duration = scenario
    for offset in offsets_:
        moment = T0 + timedelta(seconds=offset)
        cp_max = oracle_cp_max(station, _seconds(moment))
        applied = [station.limit_at(c, moment, txs) for c in sorted(txs)]
        total = sum(RATING if amps is None else amps for amps, _ in applied)
        if cp_max is not None:
            assert total <= cp_max[0] + EPS
        assert total <= RATING * len(txs) + EPS
    # the composites of the charging connectors, read at the same offset, too
    composites = {c: _periods(station.composite(c, now, duration, "A", txs)) for c in txs}
    cuts = {p["startPeriod"] for periods in composites.values() for p in periods}
    for offset in cuts:
        cp_max = oracle_cp_max(station, _seconds(now) + offset)
        if cp_max is not None:
            assert sum(_at(periods, offset)["limit"] for periods in composites.values()) <= cp_max[0] + EPS


def _floating(station: SmartCharging, connector: int, txs: dict[int, TxInfo]) -> bool:
    return connector not in txs and any(
        e["chargingProfile"]["chargingProfilePurpose"] == TXDEFAULT and e["connectorId"] in (0, connector)
        and "startSchedule" not in e["chargingProfile"]["chargingSchedule"] for e in station.installed())


@PROPERTY
@given(scenarios(), offsets)
def test_limit_at_agrees_with_the_composite(scenario, extra) -> None:
    station, txs, now, duration = scenario
    t0 = _seconds(now)
    for connector in (0, 1, 2):
        periods = _periods(station.composite(connector, now, duration, "A", txs))
        # A Relative (or start-less) TxDefault on an idle connector counts from "now", so a
        # later limit_at starts it afresh: there only the first instant can agree.
        involved = (1, 2) if connector == 0 else (connector,)
        floating = any(_floating(station, c, txs) for c in involved)
        instants = [0] if floating else _instants(periods, duration, extra)
        for offset in instants:
            amps, phases = station.limit_at(connector, now + timedelta(seconds=offset), txs)
            expected = _at(periods, offset)
            rating = RATING * (2 if connector == 0 else 1)
            assert (rating if amps is None else amps, phases) == (expected["limit"], expected["numberPhases"])
            if amps is None:
                assert oracle_cp_max(station, t0 + offset) is None


@PROPERTY
@given(scenarios())
def test_persistence_round_trip_gives_the_same_answers(scenario) -> None:
    station, txs, now, duration = scenario
    restarted = SmartCharging(2, max_installed=30, station_max_amps=RATING, voltage=VOLTAGE)
    assert restarted.load_json(station.to_json()) == []
    for connector in (0, 1, 2):
        assert restarted.composite(connector, now, duration, "W", txs) == station.composite(connector, now, duration,
                                                                                            "W", txs)


@PROPERTY
@given(scenarios())
def test_limit_at_holds_until_next_change(scenario) -> None:
    station, txs, now, _duration = scenario
    moment = station.next_change(now, txs)
    if moment is None:
        assert not txs or not station.installed()
        return
    assert moment > now
    before = moment - timedelta(seconds=1)
    for c in txs:
        first = station.limit_at(c, now, txs)
        for probe in (now + (before - now) / 2, before):
            if probe >= now:
                assert station.limit_at(c, probe, txs) == first
