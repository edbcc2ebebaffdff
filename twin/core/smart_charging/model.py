"""Data shapes of the Smart Charging core: the parsed profile, the running-transaction view, the error.

Times inside the core are whole UTC epoch seconds (``int``). OCPP expresses every
schedule quantity (startPeriod, duration) in whole seconds, so flooring each instant
(startSchedule, validFrom/validTo, transaction start, ``now``) to the second keeps
the math exact and makes ``limit_at`` and ``composite`` agree to the second.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

PURPOSES = ("ChargePointMaxProfile", "TxDefaultProfile", "TxProfile")
CHARGE_POINT_MAX = "ChargePointMaxProfile"
TX_DEFAULT = "TxDefaultProfile"
TX_PROFILE = "TxProfile"

KINDS = ("Absolute", "Recurring", "Relative")
ABSOLUTE = "Absolute"
RECURRING = "Recurring"
RELATIVE = "Relative"

# Errata 3.79: Daily recurs every 24 h, Weekly every 7 days, counted from startSchedule.
RECURRENCE_SECONDS = {"Daily": 86_400, "Weekly": 7 * 86_400}

UNITS = ("A", "W")

# Spec §7.9 / errata 3.34: an absent numberPhases means 3.
DEFAULT_PHASES = 3


class ProfileError(Exception):
    """A request the station must answer with a CALLERROR.

    ``code`` is an OCPP-J 1.6 error code (``PropertyConstraintViolation``,
    ``TypeConstraintViolation``, ``OccurenceConstraintViolation`` (sic, the 1.6 spelling),
    ``FormationViolation``); ``message`` is meant for the CALLERROR description and the log.
    """

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


class ProfileRejected(Exception):
    """Well-formed but not acceptable here: the .conf status is ``Rejected``.

    Reference §3.4: where OCTT allows a .conf status or a CALLERROR, the .conf status is
    the safer choice, so everything that is not a schema/enum problem ends up here.
    """


@dataclass(frozen=True)
class TxInfo:
    """The running transaction of a connector, as far as smart charging cares."""

    transaction_id: int | None  # None until StartTransaction.conf gives the id
    start: datetime  # aware UTC; Relative schedules count from here (spec §7.9)


@dataclass(frozen=True)
class Period:
    start: int  # seconds from the schedule start
    amps: float  # per phase; W limits are converted with this period's phases (errata 3.69)
    phases: int


@dataclass(frozen=True, eq=False)
class Profile:
    """A validated charging profile, in core units (epoch seconds, amps per phase)."""

    id: int
    stack_level: int
    purpose: str
    kind: str
    recurrence: int | None  # cycle length in seconds, Recurring only
    valid_from: int | None
    valid_to: int | None
    start_schedule: int | None  # None = relative to the transaction start (spec §7.9, §7.13)
    duration: int | None  # None = the last period holds forever
    unit: str
    periods: tuple[Period, ...]
    period_starts: tuple[int, ...]  # for bisect
    transaction_id: int | None
    raw: dict[str, Any] = field(repr=False)  # the OCPP JSON as accepted (persisted verbatim)


# A value in force: (amps per phase, numberPhases). None = this source sets no limit.
Limit = tuple[float, int]
