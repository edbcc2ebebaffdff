"""The EVSE: what is physically true of each connector, and the outputs that drive it.

Owns, per connector: the cable (plugged, or the EV gone while its transaction goes on),
the contactor and the control pilot as last commanded, the last good meter reading and
whether the EV draws power behind a closed contactor, the current limit smart charging
applies and the phases in use, and hardware faults; plus the Charge Point's own fault
(connector 0) and the highest register seen per connector (kept across restarts, so a
power loss does not lose energy). The OCPP layer maps these facts to the nine statuses
(§4.9, twin.core.status); nothing here knows about transactions beyond "energise or not".
Rules: the pilot offers at most the connector rating and the smart-charging limit
(§3.13); below 6 A an EV cannot be told to charge (IEC 61851-1).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from twin.core.actions import Action, SetPilot, SetRelay
from twin.core.limits import MIN_CHARGING_CURRENT_A
from twin.core.ops import StationKey, station_put
from twin.core.smart_charging import SmartCharging, TxInfo
from twin.core.spec import StationSpec

log = logging.getLogger("twin.station")

# Measured power behind a closed contactor: at or above ON the EV charges, below OFF it does
# not (SuspendedEV), in between it stays as it was (an EV balancing near one threshold would
# flap). An on-board charger's standby load stays well under OFF; 6 A on one phase is 1380 W.
# For GRACE seconds from the first reading after the contactor closes a low reading is not
# believed: it may have been sampled before the close, or the car is still ramping up.
EV_DRAWING_ON_W = 150.0
EV_DRAWING_OFF_W = 50.0
EV_DRAWING_GRACE_S = 10.0

Fault = tuple[str, str | None]  # (errorCode, info)


@dataclass
class EvseFacts:
    """One connector's physical state."""

    plugged: bool = False
    ev_disconnected: bool = False  # the EV unplugged while its transaction continues (§4.10)
    relay: bool = False
    pilot: float | None = None
    reading: Any = None  # last good drivers.base.MeterReading
    # Is the EV drawing? Measured after the contactor closed (the meter's power), None until
    # then: a car is taken to charge when the contactor closes, like any AC charger reports it.
    ev_drawing: bool | None = None
    drawing_grace_from: datetime | None = None  # the first reading after the contactor closed
    limit_a: float | None = None
    phases: int = 3
    fault: Fault | None = None  # Faulted
    meter_error: str | None = None  # a non-fatal error: reported as PowerMeterFailure


@dataclass
class EvseView:
    """What an EV on a connector can see of the station (the simulated EV reads it)."""

    plugged: bool
    contactor_closed: bool
    offered_a: float
    voltage: float
    phases: int
    energy_wh: float


class Evse:
    def __init__(self, spec: StationSpec, station_kv: dict, smart: SmartCharging):
        self.spec = spec  # rating, voltage and phases, read when used
        self.smart = smart
        self.facts: dict[int, EvseFacts] = {cid: EvseFacts(phases=spec.phases) for cid in range(1, spec.connectors + 1)}
        for cid, plugged in (station_kv.get(StationKey.PLUGGED) or {}).items():
            if int(cid) in self.facts:
                self.facts[int(cid)].plugged = bool(plugged)
        self.meter_floor: dict[int, float] = {
            int(k): v for k, v in (station_kv.get(StationKey.METER_ENERGY) or {}).items()}
        self.station_fault: Fault | None = None
        self.limit_change_at: datetime | None = None  # next smart-charging limit change (a deadline)

    # ------------------------------------------------------------------ energy
    def has_energy(self, cid: int) -> bool:
        reading = self.facts[cid].reading
        return reading is not None and getattr(reading, "energy_wh", None) is not None

    def energy(self, cid: int) -> float:
        """The register: the meter's, else the highest seen (a meter that has not answered yet)."""
        if self.has_energy(cid):
            return float(self.facts[cid].reading.energy_wh)
        return float(self.meter_floor.get(cid, 0.0))

    def floor_ops(self, cid: int, meter: float) -> list[tuple]:
        self.meter_floor[cid] = max(self.meter_floor.get(cid, 0.0), meter)
        return [station_put(StationKey.METER_ENERGY, {str(k): v for k, v in self.meter_floor.items()})]

    def offered_a(self, cid: int) -> float:
        limit = self.spec.max_current_a
        if self.facts[cid].limit_a is not None:
            limit = min(limit, self.facts[cid].limit_a)
        return max(0.0, limit)

    def limited_below_charging(self, cid: int) -> bool:
        """The limit is under what a pilot can offer for charging (SuspendedEVSE)."""
        limit = self.facts[cid].limit_a
        return limit is not None and limit < MIN_CHARGING_CURRENT_A

    def usable(self, cid: int) -> bool:
        """No fault on the connector or the Charge Point."""
        return self.facts[cid].fault is None and self.station_fault is None

    def view(self, cid: int) -> EvseView:
        f = self.facts[cid]
        return EvseView(plugged=f.plugged, contactor_closed=f.relay,
                        offered_a=self.offered_a(cid) if f.relay else 0.0, voltage=self.spec.voltage,
                        phases=f.phases, energy_wh=self.energy(cid))

    # ------------------------------------------------------------------ inputs
    def plug(self, cid: int) -> bool:
        """A cable was plugged; False if it already was."""
        if self.facts[cid].plugged:
            return False
        self.facts[cid].plugged = True
        return True

    def unplug(self, cid: int) -> None:
        self.facts[cid].plugged = False

    def plugged_op(self) -> tuple:
        return station_put(StationKey.PLUGGED, {str(cid): f.plugged for cid, f in self.facts.items()})

    def ev_left(self, cid: int) -> None:
        """Unplugged with StopTransactionOnEVSideDisconnect false: the transaction goes on (§4.10)."""
        self.facts[cid].ev_disconnected = True

    def ev_back(self, cid: int) -> None:
        self.facts[cid].ev_disconnected = False

    def fault(self, cid: int, code: str, info: str | None) -> None:
        if cid == 0:
            self.station_fault = (code, info)
        else:
            self.facts[cid].fault = (code, info)

    def clear_fault(self, cid: int) -> None:
        if cid == 0:
            self.station_fault = None
        else:
            self.facts[cid].fault = None

    def reading(self, cid: int, reading: Any, now: datetime) -> None:
        f = self.facts[cid]
        if f.meter_error is not None:
            log.info("connector %s: meter answers again", cid, extra={"connector": cid})
            f.meter_error = None
        f.reading = reading
        if f.relay:
            if f.drawing_grace_from is None:
                f.drawing_grace_from = now
            # Charging vs SuspendedEV (§4.9) from what the meter measures, not from a model of the car.
            f.ev_drawing = _drawing(f, getattr(reading, "power_w", None), now)

    def shift(self, delta: timedelta) -> None:
        """The wall clock was stepped: a grace time keeps what it had left."""
        for f in self.facts.values():
            if f.drawing_grace_from is not None:
                f.drawing_grace_from += delta

    def meter_failed(self, cid: int, error: str) -> None:
        """The meter stopped answering: PowerMeterFailure; the last good register stays for billing."""
        f = self.facts[cid]
        if f.meter_error is None:
            log.error("connector %s: meter failure: %s", cid, error, extra={"connector": cid})
        f.meter_error = (error or "meter not answering")[:50]

    # ------------------------------------------------------------------ outputs
    def refresh_limits(self, now: datetime, txs: dict[int, TxInfo]) -> None:
        """The limit smart charging applies now to each connector, and when it next changes."""
        self.limit_change_at = None
        try:
            for cid, f in self.facts.items():
                f.limit_a, phases = self.smart.limit_at(cid, now, txs)
                f.phases = phases or self.spec.phases
            change = self.smart.next_change(now, txs)
            # Kept as state, so next_deadline() needs no clock; a change not after `now` would
            # be a smart-charging bug and must not become a deadline that never passes.
            self.limit_change_at = change if change is not None and change > now else None
        except Exception:  # noqa: BLE001 - a smart-charging bug must never stop charging control
            log.exception("smart charging limit evaluation failed; charging unconstrained")

    def drive(self, cid: int, energise: bool, in_transaction: bool) -> list[Action]:
        """Command the contactor and the pilot to ``energise`` (or not), if they differ."""
        f = self.facts[cid]
        acts: list[Action] = []
        if energise != f.relay:
            f.relay = energise
            f.ev_drawing = None  # to be measured anew behind this contactor state
            f.drawing_grace_from = None
            acts.append(SetRelay(cid, energise))
        pilot = self.offered_a(cid) if in_transaction and energise else None
        if pilot != f.pilot:
            f.pilot = pilot
            acts.append(SetPilot(cid, pilot))
        return acts

    def transaction_ended(self, cid: int) -> list[Action]:
        """Open the contactor at once (before the commit: twin.core.effects)."""
        f = self.facts[cid]
        f.ev_disconnected = False
        if not f.relay:
            return []
        f.relay = False
        f.ev_drawing = None
        return [SetRelay(cid, False)]

    def outputs_reset(self) -> None:
        """Something outside the core opened the contactors: the next drive commands them again."""
        for f in self.facts.values():
            f.relay = False
            f.pilot = None


def _drawing(f: EvseFacts, power: Any, now: datetime) -> bool | None:
    """Is the EV drawing, from one measured power, with hysteresis and the grace time?"""
    try:
        watts = float(power)
    except (TypeError, ValueError):
        return f.ev_drawing
    if not math.isfinite(watts):
        return f.ev_drawing  # a broken register says nothing about the car
    if watts >= EV_DRAWING_ON_W:
        return True
    if watts >= EV_DRAWING_OFF_W:
        return f.ev_drawing
    if f.drawing_grace_from is not None and now - f.drawing_grace_from < timedelta(seconds=EV_DRAWING_GRACE_S):
        return f.ev_drawing
    return False
