"""Simulated backends: what the station drives when no hardware is present (fake-driver mode, CI).

They honour the same protocols as the real backends (the contract tests in
``tests/drivers/test_contract.py`` run over both) and add test hooks the control API
and tests use: ``SimRelay.weld()``, ``SimMeter.set_silent()``, ``SimCardReader.tap()``,
``SimEvPresentInput.set_present()``.
"""

from __future__ import annotations

import math
import time
from typing import Callable

from drivers.base import BuildContext, DriverConfigError, DriverError, MeterReading
from drivers.config import KindTable
from drivers.pilot import duty_for_current

# OCPP 1.6 IdToken is CiString20Type (spec 7.28).
ID_TAG_MAX_LEN = 20


def check_id_tag(id_tag: object) -> str:
    """Return ``id_tag`` if it is a valid OCPP idTag, else raise ValueError saying why."""
    if not isinstance(id_tag, str):
        raise ValueError(f"idTag must be a string, got {type(id_tag).__name__}")
    if not id_tag:
        raise ValueError("idTag is empty")
    if len(id_tag) > ID_TAG_MAX_LEN:
        raise ValueError(f"idTag {id_tag!r} is {len(id_tag)} chars; OCPP 1.6 allows at most {ID_TAG_MAX_LEN} (CiString20)")
    if not id_tag.isascii() or not id_tag.isprintable():
        raise ValueError(f"idTag {id_tag!r} must be printable ASCII (CiString)")
    return id_tag


class SimRelay:
    """A contactor in memory. With ``aux_feedback`` its auxiliary contact follows the coil,
    unless a test welds it (``weld()``) or makes it stick open (``stick_open()``).

    Its coil and contact change only through these calls, so it can tell the contactor
    supervision when they did (``watch``) instead of being polled four times a second: an
    idle simulated station (or a fleet of a thousand) then has no supervision timer at all."""

    __slots__ = ("name", "_aux", "_commanded", "_welded", "_stuck_open", "history", "_watchers")

    def __init__(self, *, aux_feedback: bool = True, name: str = "sim relay") -> None:
        self.name = name
        self._aux = aux_feedback
        self._commanded = False  # always initialised open, like the real backends
        self._welded = False
        self._stuck_open = False
        self.history: list[bool] = []  # every commanded state, for tests and the bench
        self._watchers: list[Callable[[], None]] = []

    def set(self, closed: bool) -> None:
        self._commanded = bool(closed)
        self.history.append(self._commanded)
        self._changed()

    def watch(self, on_change: Callable[[], None]) -> Callable[[], None]:
        """Call ``on_change()`` after every change of the coil or the aux contact, in the
        thread that made it (a loop watchdog opens contactors from its own thread). Returns
        the function that stops the calls (drivers.relay_check.RelaySupervisor)."""
        self._watchers.append(on_change)

        def unwatch() -> None:
            if on_change in self._watchers:
                self._watchers.remove(on_change)

        return unwatch

    def _changed(self) -> None:
        for on_change in tuple(self._watchers):
            on_change()

    @property
    def commanded(self) -> bool:
        return self._commanded

    def feedback(self) -> bool | None:
        if not self._aux:
            return None
        if self._welded:
            return True
        if self._stuck_open:
            return False
        return self._commanded

    def weld(self, welded: bool = True) -> None:
        """Test hook: the aux contact reads closed whatever the coil does (a welded pole)."""
        self._require_aux("weld()")
        self._welded = welded
        self._changed()

    def stick_open(self, stuck: bool = True) -> None:
        """Test hook: the aux contact never closes (coil or supply failure)."""
        self._require_aux("stick_open()")
        self._stuck_open = stuck
        self._changed()

    def _require_aux(self, hook: str) -> None:
        if not self._aux:
            raise ValueError(f"{self.name}: {hook} needs a simulated aux contact (aux_feedback=True)")

    def close_driver(self) -> None:
        self.set(False)

    def describe(self) -> str:
        return f"{self.name} ({'with' if self._aux else 'without'} simulated aux contact)"


class SimMeter:
    """A meter that integrates the power the station's EV model reports.

    The import register is monotonic: negative power (export) never decreases it
    (Energy.Active.Import.Register, OCPP errata 3.9: never reset per transaction).
    """

    def __init__(
        self,
        power_source: Callable[[], float],
        *,
        clock: Callable[[], float] = time.monotonic,
        voltage: float = 230.0,
        phases: int = 3,
        energy_wh: float = 0.0,
        soc_source: Callable[[], float | None] | None = None,
        frequency: float = 50.0,
        name: str = "sim meter",
    ) -> None:
        if phases not in (1, 3):
            raise ValueError(f"{name}: phases must be 1 or 3, got {phases!r}")
        if not (math.isfinite(voltage) and voltage > 0):
            raise ValueError(f"{name}: voltage must be a positive number, got {voltage!r}")
        if not (math.isfinite(energy_wh) and energy_wh >= 0):
            raise ValueError(f"{name}: energy_wh must be >= 0, got {energy_wh!r}")
        self.name = name
        self._power_source = power_source
        self._soc_source = soc_source
        self._clock = clock
        self._voltage = float(voltage)
        self._phases = phases
        self._frequency = float(frequency)
        self._energy_wh = float(energy_wh)
        self._last_t = clock()
        self._last_p: float | None = None
        self._silent = False
        self.last_good: MeterReading | None = None

    @property
    def energy_wh(self) -> float:
        """The import register as of the last integration step."""
        return self._energy_wh

    def set_silent(self, silent: bool = True) -> None:
        """Test hook: the meter stops answering (read raises DriverError); energy keeps counting."""
        self._silent = silent

    def _power(self) -> float:
        p = self._power_source()
        if not isinstance(p, (int, float)) or not math.isfinite(p):
            raise DriverError(f"{self.name}: power source returned {p!r}, not a finite number of watts")
        return float(p)

    def _integrate(self) -> float:
        now = self._clock()
        p = self._power()
        dt = max(0.0, now - self._last_t)  # a clock that steps back never un-counts energy
        prev = p if self._last_p is None else self._last_p
        # Trapezoid between the previous and this sample; export (negative) is not imported energy.
        self._energy_wh += max(0.0, (prev + p) / 2.0) * dt / 3600.0
        self._last_t, self._last_p = now, p
        return p

    async def read(self) -> MeterReading:
        p = self._integrate()
        if self._silent:
            raise DriverError(f"{self.name}: not answering (simulated silent meter)")
        amps = p / (self._voltage * self._phases)
        soc = self._soc_source() if self._soc_source is not None else None
        reading = MeterReading(
            energy_wh=self._energy_wh,
            power_w=p,
            current_a=amps,
            voltage_v=self._voltage,
            frequency_hz=self._frequency,
            soc_percent=soc,
            currents_a=(amps,) * self._phases,
            voltages_v=(self._voltage,) * self._phases,
        )
        self.last_good = reading
        return reading

    async def close(self) -> None:
        return None

    def describe(self) -> str:
        return f"{self.name} ({self._phases}-phase {self._voltage:g} V, register {self._energy_wh:.1f} Wh)"


class SimCardReader:
    """A card reader the control API taps: ``tap("04A1B2C3")``."""

    def __init__(self, name: str = "sim card reader") -> None:
        self.name = name
        self._on_tap: Callable[[str], None] | None = None

    async def start(self, on_tap: Callable[[str], None]) -> None:
        self._on_tap = on_tap

    async def stop(self) -> None:
        self._on_tap = None

    @property
    def started(self) -> bool:
        return self._on_tap is not None

    def tap(self, id_tag: str) -> None:
        """Present a card. Raises ValueError for a malformed idTag, DriverError when not started."""
        check_id_tag(id_tag)
        if self._on_tap is None:
            raise DriverError(f"{self.name}: not started, the tap of {id_tag!r} has nowhere to go")
        self._on_tap(id_tag)

    def describe(self) -> str:
        return f"{self.name} (taps via the control API)"


class SimEvPresentInput:
    """An EV-present input the control API or a test flips with ``set_present()``."""

    def __init__(self, name: str = "sim EV-present input") -> None:
        self.name = name
        self._present = False
        self._on_change: Callable[[bool], None] | None = None

    async def start(self, on_change: Callable[[bool], None]) -> None:
        self._on_change = on_change

    async def stop(self) -> None:
        self._on_change = None

    @property
    def present(self) -> bool:
        return self._present

    def set_present(self, present: bool) -> None:
        """Plug (True) or unplug (False); reports only real changes, like a debounced input."""
        present = bool(present)
        if present == self._present:
            return
        self._present = present
        if self._on_change is not None:
            self._on_change(present)

    def describe(self) -> str:
        return f"{self.name} ({'present' if self._present else 'absent'})"


class SimPilotPwm:
    """Records the duty cycle the station would put on the control pilot."""

    def __init__(self, name: str = "sim pilot") -> None:
        self.name = name
        self.duty = 1.0  # no PWM until a limit is set: charging not available
        self.history: list[float] = []
        self.closed = False

    def set_current_limit(self, amps: float | None) -> None:
        self.duty = duty_for_current(amps)
        self.history.append(self.duty)

    def close_driver(self) -> None:
        self.set_current_limit(None)
        self.closed = True

    def describe(self) -> str:
        return f"{self.name} (duty {self.duty * 100:.2f} %)"


# --- Factories: the built-in "sim" backend of every kind (see drivers.base.BuildContext) --------


def _zero_power() -> float:
    return 0.0


async def build_relays(table: dict, connectors: list[int], ctx: BuildContext) -> dict[int, SimRelay]:
    aux = KindTable("relay", table).get_bool("sim_feedback", True)
    return {c: SimRelay(aux_feedback=aux, name=f"sim relay {c}") for c in connectors}


build_relays.config_keys = frozenset({"sim_feedback"})  # type: ignore[attr-defined]


async def build_meters(table: dict, connectors: list[int], ctx: BuildContext) -> dict[int, SimMeter]:
    t = KindTable("meter", table)
    voltage = t.get_float("sim_voltage", 230.0, minimum=1.0)
    phases = t.get_int("sim_phases", 3, minimum=1, maximum=3)
    if phases == 2:
        raise DriverConfigError(f"{t.key('sim_phases')}: must be 1 or 3")
    if t.get_bool("shared", False):
        sources = [ctx.power_sources.get(c, _zero_power) for c in connectors]
        shared = SimMeter(
            lambda: sum(src() for src in sources),
            voltage=voltage,
            phases=phases,
            energy_wh=ctx.initial_energy_wh.get(connectors[0], 0.0) if connectors else 0.0,
            name="sim meter (shared)",
        )
        return {c: shared for c in connectors}
    return {
        c: SimMeter(
            ctx.power_sources.get(c, _zero_power),
            voltage=voltage,
            phases=phases,
            energy_wh=ctx.initial_energy_wh.get(c, 0.0),
            soc_source=ctx.soc_sources.get(c),
            name=f"sim meter {c}",
        )
        for c in connectors
    }


build_meters.config_keys = frozenset({"sim_voltage", "sim_phases", "shared"})  # type: ignore[attr-defined]


async def build_reader(table: dict, connectors: list[int], ctx: BuildContext) -> dict[int, SimCardReader]:
    return {0: SimCardReader()}


build_reader.config_keys = frozenset()  # type: ignore[attr-defined]


async def build_ev_inputs(table: dict, connectors: list[int], ctx: BuildContext) -> dict[int, SimEvPresentInput]:
    return {c: SimEvPresentInput(name=f"sim EV-present input {c}") for c in connectors}


build_ev_inputs.config_keys = frozenset()  # type: ignore[attr-defined]


async def build_pilots(table: dict, connectors: list[int], ctx: BuildContext) -> dict[int, SimPilotPwm]:
    return {c: SimPilotPwm(name=f"sim pilot {c}") for c in connectors}


build_pilots.config_keys = frozenset()  # type: ignore[attr-defined]
