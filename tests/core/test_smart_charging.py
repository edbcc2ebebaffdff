"""SetChargingProfile / ClearChargingProfile / RemoteStart-profile rules and persistence.

The helpers at the top are shared by the other ``test_smart_charging_*`` modules.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Any

import pytest

from twin.core.smart_charging import ProfileError, SmartCharging, TxInfo

T0 = datetime(2024, 5, 1, 12, 0, 0, tzinfo=timezone.utc)
CPMAX, TXDEFAULT, TXPROFILE = "ChargePointMaxProfile", "TxDefaultProfile", "TxProfile"


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def iso(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def profile(pid: int, purpose: str, level: int, periods: list[tuple[int, float]] | list[tuple[int, float, int]], *,
            unit: str = "A", kind: str = "Absolute", start: datetime | None = T0, duration: int | None = None,
            **extra: Any) -> dict[str, Any]:
    """A csChargingProfiles dict; periods are (startPeriod, limit[, numberPhases])."""
    schedule: dict[str, Any] = {
        "chargingRateUnit": unit,
        "chargingSchedulePeriod": [
            {"startPeriod": p[0], "limit": p[1], **({"numberPhases": p[2]} if len(p) > 2 else {})} for p in periods
        ],
    }
    if start is not None and kind != "Relative":
        schedule["startSchedule"] = iso(start)
    if duration is not None:
        schedule["duration"] = duration
    return {"chargingProfileId": pid, "stackLevel": level, "chargingProfilePurpose": purpose,
            "chargingProfileKind": kind, "chargingSchedule": schedule, **extra}


def periods_of(answer: dict[str, Any] | None) -> list[tuple[int, float]]:
    assert answer is not None and answer["status"] == "Accepted"
    return [(p["startPeriod"], p["limit"]) for p in answer["chargingSchedule"]["chargingSchedulePeriod"]]


def tx(transaction_id: int | None = 42, started: float = -60) -> TxInfo:
    return TxInfo(transaction_id, at(started))


def ids(station: SmartCharging) -> list[int]:
    return sorted(e["chargingProfile"]["chargingProfileId"] for e in station.installed())


@pytest.fixture
def station() -> SmartCharging:
    return SmartCharging(2)


# ---------------------------------------------------------------- purpose and connector placement

def test_charge_point_max_only_on_connector_zero(station: SmartCharging) -> None:
    assert station.set_profile(1, profile(1, CPMAX, 0, [(0, 10)]), T0, {}) == "Rejected"
    assert "connectorId 0" in (station.last_reason or "")
    assert station.set_profile(0, profile(1, CPMAX, 0, [(0, 10)]), T0, {}) == "Accepted"


def test_tx_profile_never_on_connector_zero(station: SmartCharging) -> None:
    assert station.set_profile(0, profile(1, TXPROFILE, 0, [(0, 10)]), T0, {1: tx()}) == "Rejected"


def test_tx_profile_without_transaction_id_binds_to_the_running_transaction(station: SmartCharging) -> None:
    assert station.set_profile(1, profile(1, TXPROFILE, 0, [(0, 9)]), T0, {1: tx()}) == "Accepted"
    assert periods_of(station.composite(1, T0, 60, "A", {1: tx()})) == [(0, 9.0)]


def test_tx_default_on_zero_applies_to_every_connector(station: SmartCharging) -> None:
    station.set_profile(0, profile(1, TXDEFAULT, 0, [(0, 12)]), T0, {})
    assert periods_of(station.composite(1, T0, 60, "A", {})) == [(0, 12.0)]
    assert periods_of(station.composite(2, T0, 60, "A", {})) == [(0, 12.0)]


def test_connector_tx_default_replaces_connector_zero_at_the_same_level_only(station: SmartCharging) -> None:
    station.set_profile(0, profile(1, TXDEFAULT, 0, [(0, 12)]), T0, {})
    station.set_profile(2, profile(2, TXDEFAULT, 0, [(0, 20)]), T0, {})
    assert periods_of(station.composite(1, T0, 60, "A", {})) == [(0, 12.0)]
    assert periods_of(station.composite(2, T0, 60, "A", {})) == [(0, 20.0)]
    # A higher stack level on connector 0 still wins over the connector's lower one.
    station.set_profile(0, profile(3, TXDEFAULT, 1, [(0, 7)], duration=30), T0, {})
    assert periods_of(station.composite(2, T0, 60, "A", {})) == [(0, 7.0), (30, 20.0)]


def test_a_new_tx_default_applies_to_a_running_transaction(station: SmartCharging) -> None:
    # Errata 3.8.
    txs = {1: tx()}
    assert station.limit_at(1, T0, txs) == (None, 3)
    station.set_profile(1, profile(1, TXDEFAULT, 0, [(0, 11)]), T0, txs)
    assert station.limit_at(1, T0, txs) == (11.0, 3)
    station.clear(id=1)
    assert station.limit_at(1, T0, txs) == (None, 3)


# ---------------------------------------------------------------- replacement

def test_same_id_replaces_wherever_it_is(station: SmartCharging) -> None:
    station.set_profile(1, profile(5, TXDEFAULT, 0, [(0, 10)]), T0, {})
    station.set_profile(2, profile(5, TXDEFAULT, 3, [(0, 8)]), T0, {})
    assert [(e["connectorId"], e["chargingProfile"]["stackLevel"]) for e in station.installed()] == [(2, 3)]


def test_same_purpose_and_stack_level_on_the_same_connector_replaces(station: SmartCharging) -> None:
    station.set_profile(1, profile(1, TXDEFAULT, 2, [(0, 10)]), T0, {})
    station.set_profile(1, profile(2, TXDEFAULT, 2, [(0, 8)]), T0, {})
    station.set_profile(2, profile(3, TXDEFAULT, 2, [(0, 6)]), T0, {})  # other connector: stacks beside
    station.set_profile(1, profile(4, TXDEFAULT, 1, [(0, 6)]), T0, {})  # other level: stacks
    assert ids(station) == [2, 3, 4]
    assert periods_of(station.composite(1, T0, 10, "A", {})) == [(0, 8.0)]


# ---------------------------------------------------------------- configured limits

def test_charge_profile_max_stack_level() -> None:
    station = SmartCharging(2, max_stack_level=3)
    assert station.set_profile(1, profile(1, TXDEFAULT, 3, [(0, 10)]), T0, {}) == "Accepted"
    assert station.set_profile(1, profile(2, TXDEFAULT, 4, [(0, 10)]), T0, {}) == "Rejected"
    assert "ChargeProfileMaxStackLevel" in (station.last_reason or "")


def test_charging_schedule_max_periods() -> None:
    station = SmartCharging(2, max_periods=24)
    assert station.set_profile(1, profile(1, TXDEFAULT, 0, [(i * 10, 6) for i in range(24)]), T0, {}) == "Accepted"
    assert station.set_profile(1, profile(2, TXDEFAULT, 1, [(i * 10, 6) for i in range(25)]), T0, {}) == "Rejected"
    assert "ChargingScheduleMaxPeriods" in (station.last_reason or "")


def test_max_charging_profiles_installed_counts_replacements_and_held_profiles() -> None:
    station = SmartCharging(2, max_installed=3)
    for pid in range(3):
        assert station.set_profile(1, profile(pid, TXDEFAULT, pid, [(0, 6)]), T0, {}) == "Accepted"
    assert station.set_profile(1, profile(9, TXDEFAULT, 5, [(0, 6)]), T0, {}) == "Rejected"
    assert "MaxChargingProfilesInstalled" in (station.last_reason or "")
    assert station.set_profile(1, profile(9, TXDEFAULT, 2, [(0, 7)]), T0, {}) == "Accepted"  # replaces level 2
    assert station.set_tx_profile_from_remote_start(2, profile(10, TXPROFILE, 0, [(0, 6)], kind="Relative")) \
        == "Rejected"
    station.clear(id=0)
    assert station.set_tx_profile_from_remote_start(2, profile(10, TXPROFILE, 0, [(0, 6)], kind="Relative")) \
        == "Accepted"
    assert station.set_profile(0, profile(11, CPMAX, 0, [(0, 6)]), T0, {}) == "Rejected"  # the held one counts


def test_unit_not_allowed_is_a_property_constraint_violation() -> None:
    # Errata 3.24 / 3.38 / 3.88: ChargingScheduleAllowedChargingRateUnit = Current only.
    station = SmartCharging(2, allowed_units=("A",))
    with pytest.raises(ProfileError) as raised:
        station.set_profile(1, profile(1, TXDEFAULT, 0, [(0, 6000)], unit="W"), T0, {})
    assert raised.value.code == "PropertyConstraintViolation"
    with pytest.raises(ProfileError):
        station.composite(1, T0, 60, "W", {})
    assert station.composite(1, T0, 60, None, {})["chargingSchedule"]["chargingRateUnit"] == "A"


# ---------------------------------------------------------------- malformed input: CALLERROR codes

@pytest.mark.parametrize(
    ("mutate", "code"),
    [
        (lambda p: p.pop("stackLevel"), "OccurenceConstraintViolation"),
        (lambda p: p["chargingSchedule"].pop("chargingSchedulePeriod"), "OccurenceConstraintViolation"),
        (lambda p: p.update(stackLevel="1"), "TypeConstraintViolation"),
        (lambda p: p.update(chargingProfileId=True), "TypeConstraintViolation"),
        (lambda p: p["chargingSchedule"].update(chargingSchedulePeriod={"startPeriod": 0}), "TypeConstraintViolation"),
        (lambda p: p["chargingSchedule"]["chargingSchedulePeriod"][0].update(limit="6"), "TypeConstraintViolation"),
        (lambda p: p.update(chargingProfilePurpose="Boost"), "PropertyConstraintViolation"),
        (lambda p: p.update(chargingProfileKind="Sometimes"), "PropertyConstraintViolation"),
        (lambda p: p.update(recurrencyKind="Monthly"), "PropertyConstraintViolation"),
        (lambda p: p["chargingSchedule"].update(chargingRateUnit="kW"), "PropertyConstraintViolation"),
        (lambda p: p.update(stackLevel=-1), "PropertyConstraintViolation"),
        (lambda p: p["chargingSchedule"].update(duration=-5), "PropertyConstraintViolation"),
        (lambda p: p["chargingSchedule"]["chargingSchedulePeriod"][0].update(limit=-1), "PropertyConstraintViolation"),
        (lambda p: p["chargingSchedule"]["chargingSchedulePeriod"][0].update(limit=float("nan")),
         "PropertyConstraintViolation"),
        (lambda p: p["chargingSchedule"]["chargingSchedulePeriod"][0].update(numberPhases=4),
         "PropertyConstraintViolation"),
        (lambda p: p["chargingSchedule"].update(startSchedule="yesterday"), "PropertyConstraintViolation"),
        (lambda p: p.update(validFrom=""), "PropertyConstraintViolation"),
        (lambda p: p.update(colour="red"), "FormationViolation"),
    ],
)
def test_malformed_profiles_raise_the_matching_callerror(station: SmartCharging, mutate, code: str) -> None:
    body = profile(1, TXDEFAULT, 0, [(0, 6)])
    mutate(body)
    with pytest.raises(ProfileError) as raised:
        station.set_profile(1, body, T0, {})
    assert raised.value.code == code
    assert raised.value.message
    assert station.installed() == []


def test_not_an_object_is_a_type_constraint_violation(station: SmartCharging) -> None:
    with pytest.raises(ProfileError) as raised:
        station.set_profile(1, ["not", "a", "profile"], T0, {})  # type: ignore[arg-type]
    assert raised.value.code == "TypeConstraintViolation"


@pytest.mark.parametrize(("connector", "code"), [(3, "PropertyConstraintViolation"), (-1, "PropertyConstraintViolation"),
                                                 ("1", "TypeConstraintViolation")])
def test_invalid_connector_id_is_a_callerror(station: SmartCharging, connector: Any, code: str) -> None:
    # Errata 3.38.
    with pytest.raises(ProfileError) as raised:
        station.set_profile(connector, profile(1, TXDEFAULT, 0, [(0, 6)]), T0, {})
    assert raised.value.code == code


# ---------------------------------------------------------------- well-formed but Rejected

@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (profile(1, TXDEFAULT, 0, [(0, 6)], recurrencyKind="Daily"), "errata 3.56"),
        (profile(1, TXDEFAULT, 0, [(0, 6)], kind="Recurring"), "recurrencyKind"),
        (profile(1, TXDEFAULT, 0, [(0, 6)], kind="Recurring", start=None, recurrencyKind="Daily"), "startSchedule"),
        (profile(1, TXDEFAULT, 0, [(5, 6)]), "startPeriod 0"),
        (profile(1, TXDEFAULT, 0, [(0, 6), (60, 8), (60, 9)]), "increase"),
        (profile(1, TXDEFAULT, 0, []), "empty"),
        (profile(1, TXDEFAULT, 0, [(0, 6)], transactionId=42), "transactionId"),
        (profile(1, TXDEFAULT, 0, [(0, 6)], validFrom=iso(at(100)), validTo=iso(at(100))), "validTo"),
        (profile(1, TXDEFAULT, 0, [(0, 6)], validTo=iso(at(0))), "past"),
    ],
)
def test_inconsistent_profiles_are_rejected(station: SmartCharging, body: dict, reason: str) -> None:
    assert station.set_profile(1, body, T0, {}) == "Rejected"
    assert reason in (station.last_reason or "")
    assert station.installed() == []


def test_relative_charge_point_max_is_rejected(station: SmartCharging) -> None:
    assert station.set_profile(0, profile(1, CPMAX, 0, [(0, 6)], kind="Relative"), T0, {}) == "Rejected"


def test_absolute_charge_point_max_without_start_is_anchored_on_arrival(station: SmartCharging) -> None:
    assert station.set_profile(0, profile(1, CPMAX, 0, [(0, 6), (100, 9)], start=None), at(50), {}) == "Accepted"
    stored = station.installed()[0]["chargingProfile"]["chargingSchedule"]
    assert stored["startSchedule"] == iso(at(50))
    assert periods_of(station.composite(1, at(80), 200, "A", {})) == [(0, 6.0), (70, 9.0)]


def test_naive_now_is_refused() -> None:
    with pytest.raises(ValueError):
        SmartCharging(2).set_profile(1, profile(1, TXDEFAULT, 0, [(0, 6)]), datetime(2024, 5, 1), {})


# ---------------------------------------------------------------- ClearChargingProfile (errata 3.25 / 3.26)

def _three(station: SmartCharging) -> None:
    station.set_profile(0, profile(1, CPMAX, 0, [(0, 30)]), T0, {})
    station.set_profile(0, profile(2, TXDEFAULT, 0, [(0, 10)]), T0, {})
    station.set_profile(1, profile(3, TXDEFAULT, 1, [(0, 8)]), T0, {})


def test_clear_without_fields_clears_all(station: SmartCharging) -> None:
    _three(station)
    assert station.clear() == "Accepted"
    assert station.installed() == []
    assert station.clear() == "Unknown"


def test_clear_by_id_ignores_the_other_fields(station: SmartCharging) -> None:
    _three(station)
    assert station.clear(id=3, connector_id=0, purpose=CPMAX, stack_level=7) == "Accepted"
    assert ids(station) == [1, 2]
    assert station.clear(id=99, purpose=CPMAX) == "Unknown"
    assert ids(station) == [1, 2]


def test_clear_fields_are_anded(station: SmartCharging) -> None:
    _three(station)
    assert station.clear(purpose=TXDEFAULT, stack_level=1, connector_id=0) == "Unknown"
    assert station.clear(connector_id=0, purpose=TXDEFAULT) == "Accepted"
    assert ids(station) == [1, 3]
    assert station.clear(stack_level=1) == "Accepted"
    assert ids(station) == [1]


def test_transaction_end_deletes_only_that_connectors_tx_profiles(station: SmartCharging) -> None:
    txs = {1: tx(1), 2: tx(2)}
    station.set_profile(1, profile(1, TXPROFILE, 0, [(0, 6)]), T0, txs)
    station.set_profile(2, profile(2, TXPROFILE, 0, [(0, 6)]), T0, txs)
    station.set_profile(1, profile(3, TXDEFAULT, 0, [(0, 6)]), T0, txs)
    station.on_transaction_end(1)
    assert ids(station) == [2, 3]


# ---------------------------------------------------------------- RemoteStartTransaction profile (errata 3.41 / 3.42)

def test_remote_start_profile_is_held_then_bound_to_the_transaction(station: SmartCharging) -> None:
    body = profile(7, TXPROFILE, 1, [(0, 6), (100, 16)], kind="Relative")
    assert station.set_tx_profile_from_remote_start(1, body) == "Accepted"
    assert station.installed() == [] and 1 in station.pending()
    station.bind_pending_tx_profile(1, 42)
    assert station.pending() == {}
    assert station.installed()[0]["chargingProfile"]["transactionId"] == 42
    txs = {1: TxInfo(42, at(-40))}
    assert periods_of(station.composite(1, T0, 200, "A", txs)) == [(0, 6.0), (60, 16.0)]


def test_remote_start_profile_purpose_and_transaction_id(station: SmartCharging) -> None:
    assert station.set_tx_profile_from_remote_start(1, profile(1, TXDEFAULT, 0, [(0, 6)])) == "Rejected"
    assert station.set_tx_profile_from_remote_start(1, profile(1, TXPROFILE, 0, [(0, 6)], transactionId=5)) \
        == "Rejected"
    assert station.set_tx_profile_from_remote_start(0, profile(1, TXPROFILE, 0, [(0, 6)])) == "Rejected"
    assert station.pending() == {}
    with pytest.raises(ProfileError):
        station.set_tx_profile_from_remote_start(1, {"chargingProfileId": 1})


def test_later_set_profile_with_same_stack_level_replaces_the_remote_start_one(station: SmartCharging) -> None:
    station.set_tx_profile_from_remote_start(1, profile(7, TXPROFILE, 1, [(0, 6)], kind="Relative"))
    station.bind_pending_tx_profile(1, 42)
    txs = {1: tx(42)}
    assert station.set_profile(1, profile(8, TXPROFILE, 1, [(0, 9)], transactionId=42), T0, txs) == "Accepted"
    assert ids(station) == [8]
    # another stack level stacks on top of it instead
    assert station.set_profile(1, profile(9, TXPROFILE, 2, [(0, 4)], transactionId=42, duration=30), T0, txs) \
        == "Accepted"
    assert ids(station) == [8, 9]
    assert periods_of(station.composite(1, T0, 60, "A", txs)) == [(0, 4.0), (30, 9.0)]


def test_remote_start_profile_bound_before_the_transaction_id_is_known(station: SmartCharging) -> None:
    station.set_tx_profile_from_remote_start(2, profile(7, TXPROFILE, 0, [(0, 6)], kind="Relative"))
    station.bind_pending_tx_profile(2, None)
    assert "transactionId" not in station.installed()[0]["chargingProfile"]
    assert station.limit_at(2, T0, {2: TxInfo(None, at(-5))}) == (6.0, 3)
    assert station.limit_at(2, T0, {2: TxInfo(77, at(-5))}) == (6.0, 3)


def test_discarding_and_clearing_held_profiles(station: SmartCharging) -> None:
    station.set_tx_profile_from_remote_start(1, profile(7, TXPROFILE, 0, [(0, 6)], kind="Relative"))
    station.discard_pending_tx_profile(1)
    station.bind_pending_tx_profile(1, 42)  # nothing held: no-op
    assert station.pending() == {} and station.installed() == []
    station.set_tx_profile_from_remote_start(1, profile(7, TXPROFILE, 0, [(0, 6)], kind="Relative"))
    assert station.clear(purpose=TXPROFILE) == "Accepted"
    assert station.pending() == {}


# ---------------------------------------------------------------- persistence (errata 3.37)

def test_profiles_survive_a_restart(station: SmartCharging) -> None:
    txs = {1: tx(42, -100)}
    station.set_profile(0, profile(1, CPMAX, 0, [(0, 20), (300, 12)], start=None), T0, txs)
    station.set_profile(0, profile(2, TXDEFAULT, 0, [(0, 10), (60, 14)], kind="Relative"), T0, txs)
    station.set_profile(1, profile(3, TXPROFILE, 1, [(0, 16), (120, 6)], transactionId=42), T0, txs)
    station.set_tx_profile_from_remote_start(2, profile(4, TXPROFILE, 0, [(0, 8)], kind="Relative"))
    saved = station.to_json()

    restarted = SmartCharging(2)
    assert restarted.load_json(saved) == []
    assert restarted.to_json() == saved
    for connector in (0, 1, 2):
        assert restarted.composite(connector, at(30), 600, "W", txs) == station.composite(connector, at(30), 600, "W", txs)
    restarted.bind_pending_tx_profile(2, 43)
    assert restarted.limit_at(2, at(30), {**txs, 2: tx(43)})[0] == 8.0


def test_damaged_stored_profiles_are_skipped_with_a_reason(station: SmartCharging) -> None:
    station.set_profile(1, profile(1, TXDEFAULT, 0, [(0, 10)]), T0, {})
    good = station.to_json()[0]
    data = [good, {"connectorId": 9, "chargingProfile": good["chargingProfile"]}, "junk",
            {"connectorId": 1, "chargingProfile": {"chargingProfileId": 2}},
            {"connectorId": 1, "chargingProfile": profile(3, CPMAX, 0, [(0, 6)])}]
    restarted = SmartCharging(2)
    problems = restarted.load_json(data)
    assert len(problems) == 4 and all("skipped" in p for p in problems)
    assert ids(restarted) == [1]
    assert restarted.load_json({"not": "a list"}) != []  # type: ignore[arg-type]
    assert restarted.installed() == []


# ---------------------------------------------------------------- GetCompositeSchedule arguments

def test_composite_for_an_unknown_connector_is_none(station: SmartCharging) -> None:
    assert station.composite(3, T0, 60, None, {}) is None
    assert station.composite(-1, T0, 60, None, {}) is None


@pytest.mark.parametrize("duration", [-1, "60", 1.5, 366 * 86_400 + 1, 10**12])
def test_composite_with_a_bad_duration_is_a_callerror(station: SmartCharging, duration: Any) -> None:
    with pytest.raises(ProfileError) as raised:
        station.composite(1, T0, duration, None, {})
    assert raised.value.code == "PropertyConstraintViolation"


def test_a_year_long_composite_of_a_daily_profile_stays_cheap(station: SmartCharging) -> None:
    body = profile(1, TXDEFAULT, 0, [(i * 3600, 6 + i % 3) for i in range(24)], kind="Recurring",
                   recurrencyKind="Daily")
    station.set_profile(0, body, T0, {})
    answer = station.composite(1, T0, 366 * 86_400, "A", {1: tx()})
    assert len(answer["chargingSchedule"]["chargingSchedulePeriod"]) == 366 * 24


def test_composite_with_a_bad_unit_is_a_callerror(station: SmartCharging) -> None:
    # Errata 3.24.
    with pytest.raises(ProfileError) as raised:
        station.composite(1, T0, 60, "kW", {})
    assert raised.value.code == "PropertyConstraintViolation"


def test_composite_shape_and_inner_start_schedule_flag(station: SmartCharging) -> None:
    answer = station.composite(1, at(0.7), 60, "A", {})
    assert answer == {"status": "Accepted", "connectorId": 1, "scheduleStart": iso(T0),
                      "chargingSchedule": {"duration": 60, "chargingRateUnit": "A",
                                           "chargingSchedulePeriod": [{"startPeriod": 0, "limit": 32.0,
                                                                       "numberPhases": 3}]}}
    station.composite_start_schedule = True  # compatibility flag (errata 3.57 says omit)
    assert station.composite(1, T0, 60, "A", {})["chargingSchedule"]["startSchedule"] == iso(T0)


def test_composite_with_duration_zero_reports_the_limit_in_force(station: SmartCharging) -> None:
    # libocpp #1169 answered duration 0 with the hardware default instead of the profile.
    station.set_profile(0, profile(1, CPMAX, 0, [(0, 30000)], unit="W"), T0, {})
    answer = station.composite(0, T0, 0, "W", {})
    assert answer["chargingSchedule"]["duration"] == 0
    assert periods_of(answer) == [(0, 30000.0)]
    # Above what both connectors can draw (2 x 32 A x 3 x 230 V = 44160 W), the total is the hardware.
    station.set_profile(0, profile(1, CPMAX, 0, [(0, 50000)], unit="W"), T0, {})
    assert periods_of(station.composite(0, T0, 0, "W", {})) == [(0, 44160.0)]
