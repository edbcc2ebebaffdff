"""Connector state and the status it reports (OCPP 1.6 §4.9, §7.7, errata 3.19/3.20).

Rather than a transition table, the status is *derived* from the facts (plugged,
transaction, fault, availability, reservation, ...) after every event. That way the
nine statuses and the errata transitions (B6 Preparing→Finishing on ConnectionTimeOut
with a cable plugged, Finishing→Available on unplug) cannot disagree with the facts.
Precedence (§4.9, §7.7): Faulted > transaction states (SuspendedEVSE > SuspendedEV >
Charging) > Unavailable > Finishing > Reserved (until the reserved identity is presented)
> Preparing > Available. Unavailable
never interrupts a transaction: ChangeAvailability is Scheduled until it ends (§5.2).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any


Status = tuple[str, str, str | None]  # (status, errorCode, info)


@dataclass
class Pending:
    """An authorized identifier waiting for a cable (ConnectionTimeOut, §9.1.6)."""

    id_tag: str
    info: dict | None
    deadline: datetime
    remote: bool = False
    reservation_id: int | None = None
    bound: bool = False  # True: remote start with an explicit connectorId, cannot move


@dataclass
class Connector:
    id: int
    availability: str = "Operative"
    scheduled: str | None = None  # ChangeAvailability waiting for the transaction to end
    fault: tuple[str, str | None] | None = None  # (errorCode, info): Faulted
    meter_error: str | None = None  # a non-fatal error: reported as PowerMeterFailure
    plugged: bool = False
    tx: int | None = None  # local id of the running transaction
    finishing: bool = False
    pending: Pending | None = None
    authorizing: str | None = None  # idTag whose Authorize.conf we wait for
    plug_deadline: datetime | None = None  # plugged, waiting for identification
    ev_disconnected: bool = False  # EV unplugged while the transaction continues (§4.10)
    relay: bool = False
    pilot: float | None = None
    reading: Any = None  # last good drivers.base.MeterReading
    # Is the EV drawing? Measured after the contactor closed (the meter's power), None until
    # then: a car is taken to charge when the contactor closes, like any AC charger reports it.
    ev_drawing: bool | None = None
    limit_a: float | None = None
    phases: int = 3
    # status bookkeeping (MinimumStatusDuration, §4.9)
    current: Status | None = None
    since: datetime | None = None
    reported: Status | None = None
    reported_at: datetime | None = None

    def idle(self) -> bool:
        return self.tx is None and self.pending is None and self.authorizing is None


def error_code(c: Connector) -> tuple[str, str | None]:
    if c.fault:
        return c.fault
    if c.meter_error:
        return ("PowerMeterFailure", c.meter_error)
    return ("NoError", None)


def derive(c: Connector, *, operative: bool, station_fault: tuple[str, str | None] | None,
           reserved: bool, evse_suspended: bool, ev_drawing: bool) -> Status:
    code, info = error_code(c)
    if c.fault or station_fault:
        code, info = c.fault or station_fault
        return ("Faulted", code, info)
    if c.tx is not None:
        if evse_suspended:
            return ("SuspendedEVSE", code, info)
        if c.ev_disconnected:
            return ("SuspendedEV", code, "EV side disconnected")
        if not ev_drawing:
            return ("SuspendedEV", code, info)
        return ("Charging", code, info)
    if not operative:
        return ("Unavailable", code, info)
    if c.finishing and c.plugged:
        return ("Finishing", code, info)
    if reserved and c.pending is None:
        # §4.9: Reserved -> Preparing only when the reserved identity is presented; a cable
        # plugged into a reserved connector is not a transition out of Reserved.
        return ("Reserved", code, info)
    if c.plugged or c.pending is not None:
        return ("Preparing", code, info)
    return ("Available", code, info)


def derive_station(availability: str, station_fault: tuple[str, str | None] | None) -> Status:
    """Connector 0 may only be Available, Unavailable or Faulted (§4.9)."""
    if station_fault:
        return ("Faulted", station_fault[0], station_fault[1])
    if availability != "Operative":
        return ("Unavailable", "NoError", None)
    return ("Available", "NoError", None)
