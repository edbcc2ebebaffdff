"""The simulated EV behind a connector: it draws what it wants, at most what is offered.

A real charge point does not know the car's battery; it sees a cable, a contactor and a
meter. So the EV lives here, beside the simulated drivers: the sim meter integrates the
power it draws and reports its SoC (as an ISO 15118 or DC charger would receive it), and
the station core derives Charging / SuspendedEV from that measured power alone.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Protocol


@dataclass
class EvModel:
    max_power_w: float = 11000.0
    battery_wh: float = 60000.0
    soc_start: float = 20.0
    phases: int = 3  # the on-board charger's phases: it draws on at most these
    suspended: bool = False

    def soc(self, gained_wh: float) -> float:
        return min(100.0, self.soc_start + 100.0 * max(0.0, gained_wh) / self.battery_wh)

    def demand_w(self, gained_wh: float) -> float:
        if self.suspended or self.soc(gained_wh) >= 100.0:
            return 0.0
        return self.max_power_w


class EvseView(Protocol):
    """What the car can see of the station: the cable, the contactor and the pilot's offer."""

    plugged: bool
    contactor_closed: bool
    offered_a: float
    voltage: float
    phases: int
    energy_wh: float


class SimulatedEv:
    """One connector's car. ``view()`` returns the station's current EvseView for it."""

    def __init__(self, model: EvModel, view: Callable[[], EvseView]):
        self.model = model
        self.view = view
        self.energy_at_plug: float | None = None

    def _gained(self, v: EvseView) -> float:
        if not v.plugged:
            self.energy_at_plug = None
            return 0.0
        if self.energy_at_plug is None:  # a new car arrives with the model's starting SoC
            self.energy_at_plug = v.energy_wh
        return v.energy_wh - self.energy_at_plug

    def power_w(self) -> float:
        v = self.view()
        gained = self._gained(v)
        if not v.contactor_closed:
            return 0.0
        offered_w = max(0.0, v.offered_a) * v.voltage * min(v.phases, self.model.phases)
        return max(0.0, min(self.model.demand_w(gained), offered_w))

    def soc(self) -> float | None:
        v = self.view()
        gained = self._gained(v)
        return self.model.soc(gained) if v.plugged else None

    def set(self, *, suspended: bool | None = None, max_power_w: float | None = None) -> None:
        if suspended is not None:
            self.model.suspended = suspended
        if max_power_w is not None:
            self.model.max_power_w = max_power_w

    def snapshot(self) -> dict:
        return {"suspended": self.model.suspended, "maxPowerW": self.model.max_power_w}
