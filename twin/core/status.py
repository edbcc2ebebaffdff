"""Connector status: derived from the facts, reported with MinimumStatusDuration.

Rather than a transition table, the status is *derived* from the facts (plugged,
transaction, fault, availability, reservation, ...) after every event. That way the nine
statuses and the errata transitions (B6 Preparing→Finishing on ConnectionTimeOut with a
cable plugged, Finishing→Available on unplug) cannot disagree with the facts.
Precedence (§4.9, §7.7): Faulted > transaction states (SuspendedEVSE > SuspendedEV >
Charging) > Unavailable > Finishing > Reserved (until the reserved identity is presented)
> Preparing > Available. Unavailable never interrupts a transaction: ChangeAvailability
is Scheduled until it ends (§5.2).

:class:`StatusReporter` owns what was last derived and last reported per connector (and
for connector 0), and sends StatusNotification (§4.9, §6.47): a state must last
MinimumStatusDuration (§9.1.20) before it is reported; after every BootNotification
Accepted every connector is reported (errata 3.22); a local-list conflict is reported on
connector 0 (§3.5.2) and cleared by the next report.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Protocol

from twin.core.actions import Action
from twin.core.calls import CallKind, Calls
from twin.core.timeutil import ts

log = logging.getLogger("twin.station")

Status = tuple[str, str, str | None]  # (status, errorCode, info)
Fault = tuple[str, str | None]


class ConnectorFacts(Protocol):
    """What the derivation reads of a connector (twin.core.connector.Connector)."""

    @property
    def fault(self) -> Fault | None: ...
    @property
    def meter_error(self) -> str | None: ...
    @property
    def tx(self) -> int | None: ...
    @property
    def ev_disconnected(self) -> bool: ...
    @property
    def finishing(self) -> bool: ...
    @property
    def plugged(self) -> bool: ...
    @property
    def pending(self) -> Any: ...


def error_code(c: ConnectorFacts) -> Fault:
    if c.fault:
        return c.fault
    if c.meter_error:
        return ("PowerMeterFailure", c.meter_error)
    return ("NoError", None)


def derive(c: ConnectorFacts, *, operative: bool, station_fault: Fault | None,
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


def derive_station(availability: str, station_fault: Fault | None) -> Status:
    """Connector 0 may only be Available, Unavailable or Faulted (§4.9)."""
    if station_fault:
        return ("Faulted", station_fault[0], station_fault[1])
    if availability != "Operative":
        return ("Unavailable", "NoError", None)
    return ("Available", "NoError", None)


def notification(cid: int, status: Status, now: datetime) -> dict:
    """StatusNotification.req for ``status`` (info is CiString50, §6.47)."""
    name, code, info = status
    payload = {"connectorId": cid, "errorCode": code, "status": name, "timestamp": ts(now)}
    if info:
        payload["info"] = info[:50]
    return payload


@dataclass
class StatusRecord:
    """What was derived and reported for one connector (MinimumStatusDuration, §4.9)."""

    current: Status | None = None
    since: datetime | None = None
    reported: Status | None = None
    reported_at: datetime | None = None


class StatusReporter:
    def __init__(self, connector_ids: list[int], calls: Calls):
        self.calls = calls
        self.records: dict[int, StatusRecord] = {cid: StatusRecord() for cid in connector_ids}
        self.station = StatusRecord()

    def of(self, cid: int) -> StatusRecord:
        return self.records[cid]

    def report(self, now: datetime, station: Status, statuses: dict[int, Status], *, connected: bool,
               min_duration_s: int, force_all: bool = False) -> list[Action]:
        """Note what the statuses are now and send what is due."""
        acts: list[Action] = []
        if station != self.station.current:
            self.station.current, self.station.since = station, now
        if connected and (force_all or station != self.station.reported):
            acts += self.calls.send("StatusNotification", notification(0, station, now), CallKind.STATUS)
            self.station.reported = station
        for cid, cur in statuses.items():
            r = self.records[cid]
            if cur != r.current:
                if r.current is not None:
                    log.info("connector %s: %s -> %s", cid, r.current[0], cur[0], extra={"connector": cid})
                r.current, r.since = cur, now
            if not connected:
                continue
            # MinimumStatusDuration (§4.9): a state must last this long before it is reported.
            due = force_all or (cur != r.reported and (
                min_duration_s <= 0 or now - r.since >= timedelta(seconds=min_duration_s)))
            if due:
                acts += self.calls.send("StatusNotification", notification(cid, cur, now), CallKind.STATUS)
                r.reported, r.reported_at = cur, now
        return acts

    def report_conflict(self, station: Status, info: str, now: datetime) -> list[Action]:
        """§3.5.2: the local list disagrees with the CSMS: LocalListConflict on connector 0."""
        conflict = (station[0], "LocalListConflict", info[:50])
        acts = self.calls.send("StatusNotification", notification(0, conflict, now), CallKind.STATUS)
        if acts:
            # The CSMS now holds connector 0 in LocalListConflict: the next status report
            # clears it with the real state (NoError), as for any other error code.
            self.station.reported = conflict
        return acts

    def next_deadlines(self, *, connected: bool, min_duration_s: int) -> list[datetime]:
        if not connected or min_duration_s <= 0:
            return []
        return [r.since + timedelta(seconds=min_duration_s) for r in self.records.values()
                if r.since and r.current != r.reported]

    def shift(self, delta: timedelta) -> None:
        """The wall clock was stepped: MinimumStatusDuration counts elapsed time."""
        for r in self.records.values():
            if r.since is not None:
                r.since += delta
