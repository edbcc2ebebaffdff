"""From an OCPP ``csChargingProfiles`` JSON dict to a validated :class:`Profile`.

Two kinds of failure, as the errata sort them:

* :class:`ProfileError` (the caller answers with a CALLERROR): missing required fields,
  wrong JSON types, values outside an enum or a range (errata 3.38: an invalid enum or
  connectorId is a PropertyConstraintViolation);
* :class:`ProfileRejected` (the caller answers ``Rejected``): well-formed profiles whose
  combination of fields makes no sense (errata 3.56: recurrencyKind only with Recurring).
"""

from __future__ import annotations

import math
from datetime import datetime, timezone
from typing import Any

from .model import (
    ABSOLUTE,
    CHARGE_POINT_MAX,
    DEFAULT_PHASES,
    KINDS,
    PURPOSES,
    RECURRENCE_SECONDS,
    RECURRING,
    RELATIVE,
    TX_PROFILE,
    UNITS,
    Period,
    Profile,
    ProfileError,
    ProfileRejected,
)

_PROFILE_KEYS = {
    "chargingProfileId", "transactionId", "stackLevel", "chargingProfilePurpose",
    "chargingProfileKind", "recurrencyKind", "validFrom", "validTo", "chargingSchedule",
}
_PROFILE_REQUIRED = ("chargingProfileId", "stackLevel", "chargingProfilePurpose",
                     "chargingProfileKind", "chargingSchedule")
_SCHEDULE_KEYS = {"duration", "startSchedule", "chargingRateUnit", "chargingSchedulePeriod",
                  "minChargingRate"}
_PERIOD_KEYS = {"startPeriod", "limit", "numberPhases"}


def epoch(moment: datetime) -> int:
    """Whole UTC epoch seconds of an aware datetime (floored)."""
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise ValueError("smart charging needs an aware datetime (UTC), got a naive one")
    return math.floor(moment.timestamp())


def format_epoch(seconds: int) -> str:
    """OCPP dateTime of a whole second, e.g. ``2024-05-01T12:00:00Z``."""
    return datetime.fromtimestamp(seconds, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_datetime(value: Any, where: str) -> int:
    if not isinstance(value, str):
        raise ProfileError("TypeConstraintViolation", f"{where} must be a dateTime string")
    text = value.strip()
    try:
        moment = datetime.fromisoformat(text[:-1] + "+00:00" if text[-1:] in "zZ" else text)
    except ValueError:
        raise ProfileError("PropertyConstraintViolation", f"{where} is not an ISO 8601 dateTime: {value!r}") from None
    if moment.tzinfo is None:
        # OCPP-J requires UTC; a missing offset is read as UTC rather than refused.
        moment = moment.replace(tzinfo=timezone.utc)
    return epoch(moment)


def _integer(value: Any, where: str, minimum: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ProfileError("TypeConstraintViolation", f"{where} must be an integer, got {value!r}")
    if minimum is not None and value < minimum:
        raise ProfileError("PropertyConstraintViolation", f"{where} must be >= {minimum}, got {value}")
    return value


def _number(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ProfileError("TypeConstraintViolation", f"{where} must be a number, got {value!r}")
    if not math.isfinite(value) or value < 0:
        raise ProfileError("PropertyConstraintViolation", f"{where} must be a finite number >= 0, got {value!r}")
    return float(value)


def _enum(value: Any, allowed: tuple[str, ...], where: str) -> str:
    if not isinstance(value, str):
        raise ProfileError("TypeConstraintViolation", f"{where} must be a string, got {value!r}")
    if value not in allowed:
        raise ProfileError("PropertyConstraintViolation", f"{where} must be one of {', '.join(allowed)}, got {value!r}")
    return value


def _object(value: Any, keys: set[str], required: tuple[str, ...], where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ProfileError("TypeConstraintViolation", f"{where} must be an object")
    unknown = sorted(set(value) - keys)
    if unknown:
        raise ProfileError("FormationViolation", f"{where} has unknown field(s): {', '.join(map(str, unknown))}")
    missing = [key for key in required if key not in value]
    if missing:
        raise ProfileError("OccurenceConstraintViolation", f"{where} lacks required field(s): {', '.join(missing)}")
    return value


def check_unit(unit: Any, allowed_units: tuple[str, ...], where: str) -> str:
    """Errata 3.24 / 3.38: a unit outside the enum, or one the station does not support
    (ChargingScheduleAllowedChargingRateUnit, errata 3.88), is a PropertyConstraintViolation."""
    unit = _enum(unit, UNITS, where)
    if unit not in allowed_units:
        raise ProfileError("PropertyConstraintViolation",
                           f"{where} {unit!r} is not allowed (ChargingScheduleAllowedChargingRateUnit)")
    return unit


def parse_profile(raw: Any, *, voltage: float, allowed_units: tuple[str, ...],
                  received_at: int | None) -> Profile:
    """Validate ``raw`` and convert it to core units.

    ``received_at`` anchors an Absolute ChargePointMaxProfile that has no startSchedule.
    """
    body = _object(raw, _PROFILE_KEYS, _PROFILE_REQUIRED, "csChargingProfiles")
    profile_id = _integer(body["chargingProfileId"], "chargingProfileId")
    stack_level = _integer(body["stackLevel"], "stackLevel", minimum=0)
    purpose = _enum(body["chargingProfilePurpose"], PURPOSES, "chargingProfilePurpose")
    kind = _enum(body["chargingProfileKind"], KINDS, "chargingProfileKind")
    recurrency = (_enum(body["recurrencyKind"], tuple(RECURRENCE_SECONDS), "recurrencyKind")
                  if "recurrencyKind" in body else None)
    transaction_id = _integer(body["transactionId"], "transactionId") if "transactionId" in body else None
    valid_from = parse_datetime(body["validFrom"], "validFrom") if "validFrom" in body else None
    valid_to = parse_datetime(body["validTo"], "validTo") if "validTo" in body else None

    schedule = _object(body["chargingSchedule"], _SCHEDULE_KEYS,
                       ("chargingRateUnit", "chargingSchedulePeriod"), "chargingSchedule")
    unit = check_unit(schedule["chargingRateUnit"], allowed_units, "chargingRateUnit")
    duration = _integer(schedule["duration"], "duration", minimum=0) if "duration" in schedule else None
    start_schedule = (parse_datetime(schedule["startSchedule"], "startSchedule")
                      if "startSchedule" in schedule else None)
    if "minChargingRate" in schedule:
        _number(schedule["minChargingRate"], "minChargingRate")  # accepted, not used by the station
    raw_periods = schedule["chargingSchedulePeriod"]
    if not isinstance(raw_periods, list):
        raise ProfileError("TypeConstraintViolation", "chargingSchedulePeriod must be an array")
    periods: list[Period] = []
    for index, item in enumerate(raw_periods):
        where = f"chargingSchedulePeriod[{index}]"
        entry = _object(item, _PERIOD_KEYS, ("startPeriod", "limit"), where)
        start = _integer(entry["startPeriod"], f"{where}.startPeriod", minimum=0)
        limit = _number(entry["limit"], f"{where}.limit")
        phases = DEFAULT_PHASES
        if "numberPhases" in entry:
            phases = _integer(entry["numberPhases"], f"{where}.numberPhases", minimum=1)
            if phases > 3:
                raise ProfileError("PropertyConstraintViolation", f"{where}.numberPhases must be 1, 2 or 3")
        # Errata 3.69: W <-> A with the supply voltage times the number of phases.
        amps = limit if unit == "A" else limit / (voltage * phases)
        periods.append(Period(start, amps, phases))

    # --- well-formed from here on; what follows decides Accepted vs Rejected ---
    if not periods:
        raise ProfileRejected("chargingSchedulePeriod is empty")
    if periods[0].start != 0:
        raise ProfileRejected("the first chargingSchedulePeriod must have startPeriod 0")
    if any(b.start <= a.start for a, b in zip(periods, periods[1:])):
        raise ProfileRejected("startPeriod values must increase strictly")
    if kind == RECURRING and recurrency is None:
        raise ProfileRejected("a Recurring profile needs recurrencyKind")
    if kind != RECURRING and recurrency is not None:
        raise ProfileRejected("recurrencyKind is only allowed with chargingProfileKind Recurring (errata 3.56)")
    if kind == RECURRING and start_schedule is None:
        raise ProfileRejected("a Recurring profile needs startSchedule: it recurs from there (errata 3.79)")
    if transaction_id is not None and purpose != TX_PROFILE:
        raise ProfileRejected("transactionId is only valid with purpose TxProfile (spec §7.8)")
    if purpose == CHARGE_POINT_MAX and kind == RELATIVE:
        # There is no single transaction start to be relative to for the whole station.
        raise ProfileRejected("a ChargePointMaxProfile cannot be Relative")
    if valid_from is not None and valid_to is not None and valid_to <= valid_from:
        raise ProfileRejected("validTo must be after validFrom")

    stored = dict(body)
    if kind == ABSOLUTE and start_schedule is None and purpose == CHARGE_POINT_MAX:
        # Spec §7.13 reads an absent startSchedule as "relative to the start of charging",
        # which has no meaning for the whole station: anchor it where it arrived instead,
        # and store that so it means the same after a restart (errata 3.37).
        if received_at is None:
            raise ProfileRejected("an Absolute ChargePointMaxProfile without startSchedule")
        start_schedule = received_at
        stored["chargingSchedule"] = {**schedule, "startSchedule": format_epoch(received_at)}
    if kind == RELATIVE:
        start_schedule = None  # spec §7.9: Relative counts from the transaction start, not startSchedule
    # From here, start_schedule None means "relative": to the transaction start, or to the
    # evaluation moment when the connector has no transaction (spec §7.9, §7.13).

    return Profile(
        id=profile_id,
        stack_level=stack_level,
        purpose=purpose,
        kind=kind,
        recurrence=RECURRENCE_SECONDS[recurrency] if recurrency else None,
        valid_from=valid_from,
        valid_to=valid_to,
        start_schedule=start_schedule,
        # duration=0 is read as "no duration" (the last period holds), not as an empty
        # schedule: a zero-length schedule would make an Accepted profile do nothing, and
        # CSMSs that serialise an unset integer send 0. A pause (limit 0) with duration 0
        # therefore pauses until replaced, which the CSMS can see (SuspendedEVSE) and undo.
        duration=duration or None,
        unit=unit,
        periods=tuple(periods),
        period_starts=tuple(p.start for p in periods),
        transaction_id=transaction_id,
        raw=stored,
    )
