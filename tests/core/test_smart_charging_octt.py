"""OCTT 1.6 Smart Charging cases as pure-core tests with a fake ``now``.

``x`` is the time between the SetChargingProfile (the profiles' startSchedule) and the
GetCompositeSchedule, as in the OCTT test-case document.
"""

from __future__ import annotations

import pytest

from twin.core.smart_charging import SmartCharging, TxInfo

from .test_smart_charging import CPMAX, T0, TXDEFAULT, TXPROFILE, at, iso, periods_of, profile

X = 7  # seconds between the profiles' startSchedule and the GetCompositeSchedule


@pytest.fixture
def station() -> SmartCharging:
    return SmartCharging(2)


@pytest.mark.parametrize(("unit", "limit", "expected"), [("A", 6, 6.0), ("W", 6000, 6000.0)])
def test_tc_056_tx_default_profile_without_transaction(station: SmartCharging, unit: str, limit: float,
                                                       expected: float) -> None:
    assert station.set_profile(1, profile(1, TXDEFAULT, 0, [(0, limit)], unit=unit, duration=300), T0, {}) \
        == "Accepted"
    answer = station.composite(1, at(X), 300, unit, {})
    assert answer["scheduleStart"] == iso(at(X))
    assert answer["chargingSchedule"]["duration"] == 300
    assert answer["chargingSchedule"]["chargingRateUnit"] == unit
    assert "startSchedule" not in answer["chargingSchedule"]  # errata 3.57
    # The profile ends at 300 s from its start, i.e. 300 - x into the composite.
    assert periods_of(answer) == [(0, expected), (300 - X, 32.0 if unit == "A" else 22080.0)]


def test_tc_057_tx_profile(station: SmartCharging) -> None:
    txs = {1: TxInfo(42, at(-30))}
    assert station.set_profile(1, profile(1, TXPROFILE, 0, [(0, 6)], transactionId=42), T0, txs) == "Accepted"
    assert periods_of(station.composite(1, at(X), 300, "A", txs)) == [(0, 6.0)]
    assert station.limit_at(1, at(X), txs) == (6.0, 3)


def test_tc_058_1_tx_profile_without_transaction(station: SmartCharging) -> None:
    assert station.set_profile(1, profile(1, TXPROFILE, 0, [(0, 6)], transactionId=42), T0, {}) == "Rejected"
    assert station.installed() == []


def test_tc_058_2_tx_profile_with_a_wrong_transaction_id(station: SmartCharging) -> None:
    txs = {1: TxInfo(42, at(-30))}
    assert station.set_profile(1, profile(1, TXPROFILE, 0, [(0, 6)], transactionId=43), T0, txs) == "Rejected"
    assert station.installed() == []
    # and a TxProfile for connector 2, where no transaction runs, neither
    assert station.set_profile(2, profile(1, TXPROFILE, 0, [(0, 6)], transactionId=42), T0, txs) == "Rejected"


def test_tc_059_remote_start_with_a_tx_profile(station: SmartCharging) -> None:
    body = profile(1, TXPROFILE, 0, [(0, 6), (120, 10)], kind="Relative")
    assert station.set_tx_profile_from_remote_start(1, body) == "Accepted"
    station.bind_pending_tx_profile(1, 42)  # StartTransaction.conf gave transactionId 42
    txs = {1: TxInfo(42, T0)}
    assert periods_of(station.composite(1, at(X), 300, "A", txs)) == [(0, 6.0), (120 - X, 10.0)]


def test_tc_060_remote_start_with_a_non_tx_profile_is_rejected(station: SmartCharging) -> None:
    assert station.set_tx_profile_from_remote_start(1, profile(1, TXDEFAULT, 0, [(0, 6)])) == "Rejected"
    assert station.pending() == {} and station.installed() == []


def test_tc_066_get_composite_schedule(station: SmartCharging) -> None:
    txs = {1: TxInfo(42, at(-120))}
    assert station.set_profile(0, profile(1, CPMAX, 0, [(0, 10)], duration=86400), T0, txs) == "Accepted"
    assert station.set_profile(
        1, profile(2, TXDEFAULT, 0, [(0, 6), (60, 10), (120, 8), (180, 15), (260, 8)], duration=300), T0, txs
    ) == "Accepted"
    assert station.set_profile(
        1, profile(3, TXPROFILE, 0, [(0, 8), (50, 11), (140, 16), (200, 6), (240, 12)], duration=260,
                   transactionId=42), T0, txs
    ) == "Accepted"
    answer = station.composite(1, at(X), 400, "A", txs)
    assert answer["chargingSchedule"]["duration"] == 400
    # Spec-literal (spec §3.13.1; reference §3.4): once the TxProfile's 260 s are over only
    # the ChargePointMax (10 A) applies, the TxDefault's 8 A at 260 does not come back.
    assert periods_of(answer) == [(0, 8.0), (50 - X, 10.0), (200 - X, 6.0), (240 - X, 10.0)]


def test_tc_067_clear_charging_profile(station: SmartCharging) -> None:
    assert station.set_profile(1, profile(1, TXDEFAULT, 1, [(0, 6), (60, 8), (200, 10)], duration=400), T0, {}) \
        == "Accepted"
    assert station.set_profile(1, profile(2, TXDEFAULT, 0, [(0, 7), (100, 9)]), T0, {}) == "Accepted"
    assert station.set_profile(0, profile(3, CPMAX, 0, [(0, 11), (200, 12)]), T0, {}) == "Accepted"

    assert station.clear(id=1) == "Accepted"
    assert periods_of(station.composite(1, at(X), 350, "A", {})) == [(0, 7.0), (100 - X, 9.0)]

    assert station.clear(purpose=TXDEFAULT, stack_level=0) == "Accepted"
    assert periods_of(station.composite(1, at(X), 350, "A", {})) == [(0, 11.0), (200 - X, 12.0)]

    assert station.clear() == "Accepted"
    assert periods_of(station.composite(1, at(X), 350, "A", {})) == [(0, 32.0)]  # the station's own limit


def test_tc_072_stacking(station: SmartCharging) -> None:
    assert station.set_profile(1, profile(1, TXDEFAULT, 0, [(0, 6), (100, 8), (200, 10)], duration=400), T0, {}) \
        == "Accepted"
    assert station.set_profile(1, profile(2, TXDEFAULT, 1, [(0, 7), (100, 9)], duration=150), T0, {}) == "Accepted"
    # stack 1 ends at 150 and stack 0 shows through (errata 3.43)
    assert periods_of(station.composite(1, at(X), 350, "A", {})) \
        == [(0, 7.0), (100 - X, 9.0), (150 - X, 8.0), (200 - X, 10.0)]


def test_tc_082_tx_default_profile_with_an_ongoing_transaction(station: SmartCharging) -> None:
    txs = {1: TxInfo(42, at(-300))}
    assert periods_of(station.composite(1, at(X), 300, "A", txs)) == [(0, 32.0)]
    assert station.set_profile(1, profile(1, TXDEFAULT, 0, [(0, 6)]), T0, txs) == "Accepted"
    assert periods_of(station.composite(1, at(X), 300, "A", txs)) == [(0, 6.0)]
    assert station.limit_at(1, at(X), txs) == (6.0, 3)
