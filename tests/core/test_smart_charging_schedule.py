"""Schedule kinds, validity, durations, units and phases, the ChargePointMax split,
``limit_at`` and ``next_change``."""

from __future__ import annotations

from datetime import timedelta

import pytest

from twin.core.smart_charging import NEXT_CHANGE_HORIZON, SmartCharging, TxInfo

from .test_smart_charging import CPMAX, T0, TXDEFAULT, TXPROFILE, at, iso, periods_of, profile

DAY = 86_400


@pytest.fixture
def station() -> SmartCharging:
    return SmartCharging(2)


def comp(station: SmartCharging, start: float, duration: int, txs: dict | None = None, connector: int = 1,
         unit: str = "A") -> list[tuple[int, float]]:
    return periods_of(station.composite(connector, at(start), duration, unit, txs or {}))


# ---------------------------------------------------------------- Absolute and duration

def test_absolute_before_its_start_falls_through(station: SmartCharging) -> None:
    station.set_profile(1, profile(1, TXDEFAULT, 0, [(0, 10)]), T0, {})
    station.set_profile(1, profile(2, TXDEFAULT, 1, [(0, 6), (60, 8)], start=at(100), duration=120), T0, {})
    assert comp(station, 0, 400) == [(0, 10.0), (100, 6.0), (160, 8.0), (220, 10.0)]


def test_without_duration_the_last_period_holds_forever(station: SmartCharging) -> None:
    station.set_profile(1, profile(1, TXDEFAULT, 0, [(0, 6), (60, 8)]), T0, {})
    assert comp(station, 10 * DAY, 3600) == [(0, 8.0)]


def test_duration_zero_is_read_as_no_duration(station: SmartCharging) -> None:
    # Documented choice (parse.py): a zero-length schedule would make an Accepted profile
    # do nothing; CSMSs that serialise an unset integer send 0.
    station.set_profile(1, profile(1, TXDEFAULT, 0, [(0, 0)], duration=0), T0, {})
    assert comp(station, 5000, 3600) == [(0, 0.0)]


def test_duration_longer_than_the_periods_keeps_the_last_limit_until_it_ends(station: SmartCharging) -> None:
    station.set_profile(1, profile(1, TXDEFAULT, 0, [(0, 6), (60, 8)], duration=500), T0, {})
    assert comp(station, 0, 600) == [(0, 6.0), (60, 8.0), (500, 32.0)]


def test_valid_from_and_valid_to(station: SmartCharging) -> None:
    body = profile(1, TXDEFAULT, 0, [(0, 6)], validFrom=iso(at(100)), validTo=iso(at(250)))
    station.set_profile(1, body, T0, {})
    assert comp(station, 0, 400) == [(0, 32.0), (100, 6.0), (250, 32.0)]


def test_a_future_valid_from_update_replaces_at_once(station: SmartCharging) -> None:
    # Spec §3.13.2: the replaced profile is gone, default behaviour applies until validFrom.
    station.set_profile(1, profile(1, TXDEFAULT, 0, [(0, 6)]), T0, {})
    station.set_profile(1, profile(2, TXDEFAULT, 0, [(0, 9)], validFrom=iso(at(100))), T0, {})
    assert comp(station, 0, 200) == [(0, 32.0), (100, 9.0)]


# ---------------------------------------------------------------- Relative

def test_relative_counts_from_the_transaction_start(station: SmartCharging) -> None:
    station.set_profile(1, profile(1, TXDEFAULT, 0, [(0, 6), (150, 10)], kind="Relative", duration=400), T0, {})
    txs = {1: TxInfo(1, at(-100))}
    assert comp(station, 0, 400, txs) == [(0, 6.0), (50, 10.0), (300, 32.0)]


def test_relative_without_a_transaction_counts_from_now(station: SmartCharging) -> None:
    station.set_profile(1, profile(1, TXDEFAULT, 0, [(0, 6), (150, 10)], kind="Relative"), T0, {})
    assert comp(station, 1000, 400) == [(0, 6.0), (150, 10.0)]
    assert station.limit_at(1, at(5000), {}) == (6.0, 3)


def test_absolute_without_start_schedule_is_relative_to_the_transaction(station: SmartCharging) -> None:
    # Spec §7.13 ChargingSchedule.startSchedule: "If absent the schedule will be relative to start of charging."
    txs = {1: TxInfo(1, at(-30))}
    station.set_profile(1, profile(1, TXPROFILE, 0, [(0, 6), (100, 12)], start=None), T0, txs)
    assert comp(station, 0, 200, txs) == [(0, 6.0), (70, 12.0)]


# ---------------------------------------------------------------- Recurring (errata 3.79, 3.44/3.45)

def test_daily_recurrence_counts_from_start_schedule(station: SmartCharging) -> None:
    origin = T0 - timedelta(days=3, hours=1)  # 11:00, three days ago
    body = profile(1, TXDEFAULT, 0, [(0, 6), (7200, 16)], kind="Recurring", start=origin, recurrencyKind="Daily")
    station.set_profile(1, body, T0, {})
    # now 12:00 is 1 h into today's run: 6 A until 13:00, then 16 A until 11:00 tomorrow
    assert comp(station, 0, DAY) == [(0, 6.0), (3600, 16.0), (DAY - 3600, 6.0)]


def test_recurrence_cuts_off_periods_beyond_its_length(station: SmartCharging) -> None:
    body = profile(1, TXDEFAULT, 0, [(0, 6), (DAY + 100, 20)], kind="Recurring", start=T0, recurrencyKind="Daily")
    station.set_profile(1, body, T0, {})
    assert comp(station, 0, 2 * DAY) == [(0, 6.0)]


def test_recurrence_with_a_short_duration_falls_through_between_runs(station: SmartCharging) -> None:
    body = profile(1, TXDEFAULT, 1, [(0, 6)], kind="Recurring", start=T0, recurrencyKind="Daily", duration=3600)
    station.set_profile(1, body, T0, {})
    station.set_profile(1, profile(2, TXDEFAULT, 0, [(0, 10)]), T0, {})
    assert comp(station, 0, 2 * DAY) == [(0, 6.0), (3600, 10.0), (DAY, 6.0), (DAY + 3600, 10.0)]


def test_weekly_recurrence_and_nothing_before_its_first_start(station: SmartCharging) -> None:
    body = profile(1, TXDEFAULT, 0, [(0, 6), (DAY, 12)], kind="Recurring", start=at(DAY), recurrencyKind="Weekly")
    station.set_profile(1, body, T0, {})
    assert comp(station, 0, 9 * DAY) == [(0, 32.0), (DAY, 6.0), (2 * DAY, 12.0), (8 * DAY, 6.0)]


# ---------------------------------------------------------------- units and phases (errata 3.69, 3.34)

def test_watts_are_converted_with_the_period_phases(station: SmartCharging) -> None:
    station.set_profile(1, profile(1, TXDEFAULT, 0, [(0, 6900), (60, 6900, 1)], unit="W"), T0, {})
    assert comp(station, 0, 120) == [(0, 10.0), (60, 30.0)]
    answer = station.composite(1, T0, 120, "W", {})["chargingSchedule"]["chargingSchedulePeriod"]
    assert answer == [{"startPeriod": 0, "limit": 6900.0, "numberPhases": 3},
                      {"startPeriod": 60, "limit": 6900.0, "numberPhases": 1}]


def test_the_smallest_number_of_phases_in_force_wins(station: SmartCharging) -> None:
    # 16 A on 1 phase under a 3-phase 11040 W (16 A) station max: 16 A on 1 phase = 3680 W,
    # which stays under both profiles in A and in W.
    station.set_profile(0, profile(1, CPMAX, 0, [(0, 11040)], unit="W"), T0, {})
    station.set_profile(1, profile(2, TXDEFAULT, 0, [(0, 20, 1)]), T0, {})
    assert station.limit_at(1, T0, {}) == (16.0, 1)
    assert periods_of(station.composite(1, T0, 60, "W", {})) == [(0, 3680.0)]


def test_limits_are_rounded_down_to_a_tenth(station: SmartCharging) -> None:
    station.set_profile(1, profile(1, TXDEFAULT, 0, [(0, 5000)], unit="W"), T0, {})  # 7.246... A
    assert station.limit_at(1, T0, {}) == (7.2, 3)
    assert comp(station, 0, 60, unit="W") == [(0, 5000.0)]


def test_the_hardware_rating_caps_every_limit() -> None:
    station = SmartCharging(2, station_max_amps=16)
    station.set_profile(1, profile(1, TXDEFAULT, 0, [(0, 40)]), T0, {})
    assert station.limit_at(1, T0, {}) == (16.0, 3)
    assert comp(station, 0, 60) == [(0, 16.0)]


# ---------------------------------------------------------------- ChargePointMax across connectors (§3.13.1)

def test_a_lone_charging_connector_gets_the_whole_station_limit(station: SmartCharging) -> None:
    station.set_profile(0, profile(1, CPMAX, 0, [(0, 10)]), T0, {})
    txs = {1: TxInfo(1, T0)}
    assert station.limit_at(1, T0, txs) == (10.0, 3)
    assert station.limit_at(2, T0, txs) == (5.0, 3)  # were it to start, it would share


def test_two_charging_connectors_share_the_station_limit(station: SmartCharging) -> None:
    station.set_profile(0, profile(1, CPMAX, 0, [(0, 10)]), T0, {})
    txs = {1: TxInfo(1, T0), 2: TxInfo(2, T0)}
    assert [station.limit_at(c, T0, txs) for c in (1, 2)] == [(5.0, 3), (5.0, 3)]
    assert comp(station, 0, 60, txs, connector=0) == [(0, 10.0)]


def test_what_a_connector_cannot_use_goes_to_the_other(station: SmartCharging) -> None:
    station.set_profile(0, profile(1, CPMAX, 0, [(0, 10)]), T0, {})
    txs = {1: TxInfo(1, T0), 2: TxInfo(2, T0)}
    station.set_profile(1, profile(2, TXPROFILE, 0, [(0, 0), (60, 2)], transactionId=1), T0, txs)
    assert comp(station, 0, 120, txs, connector=1) == [(0, 0.0), (60, 2.0)]
    assert comp(station, 0, 120, txs, connector=2) == [(0, 10.0), (60, 8.0)]


def test_uneven_split_is_rounded_down(station: SmartCharging) -> None:
    three = SmartCharging(3)
    three.set_profile(0, profile(1, CPMAX, 0, [(0, 10)]), T0, {})
    txs = {c: TxInfo(c, T0) for c in (1, 2, 3)}
    assert [three.limit_at(c, T0, txs)[0] for c in (1, 2, 3)] == [3.3, 3.3, 3.3]


def test_connector_zero_reports_the_station_total(station: SmartCharging) -> None:
    assert comp(station, 0, 60, connector=0) == [(0, 64.0)]  # 2 connectors x 32 A, nothing limits
    station.set_profile(0, profile(1, TXDEFAULT, 0, [(0, 10)]), T0, {})
    assert comp(station, 0, 60, connector=0) == [(0, 20.0)]
    station.set_profile(0, profile(2, CPMAX, 0, [(0, 16), (60, 30)]), T0, {})
    assert comp(station, 0, 120, connector=0) == [(0, 16.0), (60, 20.0)]
    assert station.limit_at(0, T0, {}) == (16.0, 3)


# ---------------------------------------------------------------- limit_at and next_change

def test_limit_at_is_none_when_nothing_limits(station: SmartCharging) -> None:
    assert station.limit_at(1, T0, {}) == (None, 3)
    with pytest.raises(ValueError):
        station.limit_at(3, T0, {})


def test_limit_zero(station: SmartCharging) -> None:
    txs = {1: TxInfo(1, T0)}
    station.set_profile(1, profile(1, TXPROFILE, 0, [(0, 0)]), T0, txs)
    assert station.limit_at(1, T0, txs) == (0.0, 3)


def test_next_change_follows_the_running_transactions(station: SmartCharging) -> None:
    txs = {1: TxInfo(1, at(-10))}
    assert station.next_change(T0, txs) is None  # no profiles
    station.set_profile(1, profile(1, TXDEFAULT, 0, [(0, 6), (100, 8)], duration=300), T0, txs)
    assert station.next_change(at(0.5), txs) == at(100)
    assert station.next_change(at(100), txs) == at(300)
    assert station.next_change(at(300), txs) == at(NEXT_CHANGE_HORIZON + 300)  # nothing more: look again later
    assert station.next_change(T0, {}) is None  # no transaction, nothing is applied


def test_next_change_sees_the_other_connectors_share_changing(station: SmartCharging) -> None:
    station.set_profile(0, profile(1, CPMAX, 0, [(0, 10)]), T0, {})
    txs = {1: TxInfo(1, T0), 2: TxInfo(2, T0)}
    station.set_profile(2, profile(2, TXPROFILE, 0, [(0, 2)], transactionId=2, duration=50), T0, txs)
    assert station.limit_at(1, T0, txs) == (8.0, 3)
    assert station.next_change(T0, txs) == at(50)
    assert station.limit_at(1, at(50), txs) == (5.0, 3)
