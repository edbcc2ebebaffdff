"""The small protocols the station talks to, whatever the hardware behind them.

Like gpiozero's pin factories: the station only knows these protocols; backends
(simulated, gpiozero, pymodbus, pyscard, or a lab's own plugin) are found through
the ``ocpp_twin.drivers`` entry-point group (see ``drivers.registry``).

All methods that may block on I/O are ``async``; cheap ones (GPIO writes) are sync.
Callbacks are invoked on the asyncio event loop thread (backends that use threads
must hop over with ``loop.call_soon_threadsafe``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Protocol, runtime_checkable


class DriverError(Exception):
    """A device is missing or misbehaves. The message names the device."""


@dataclass
class MeterReading:
    """One reading in engineering units. ``None`` means the meter does not measure it.

    ``energy_wh`` is the import energy register (Energy.Active.Import.Register), never
    reset per transaction (OCPP errata 3.9).
    """

    energy_wh: float
    power_w: float | None = None
    current_a: float | None = None  # average / per-phase L1 if single value
    voltage_v: float | None = None
    frequency_hz: float | None = None
    soc_percent: float | None = None
    currents_a: tuple[float, ...] | None = None  # per phase, if known
    voltages_v: tuple[float, ...] | None = None
    extra: dict[str, float] = field(default_factory=dict)


@runtime_checkable
class Relay(Protocol):
    """A contactor driven through a relay, with optional auxiliary feedback contact."""

    def set(self, closed: bool) -> None:
        """Command the contactor. Must never raise for a healthy device."""

    @property
    def commanded(self) -> bool:
        """The last commanded state (True = closed)."""

    def feedback(self) -> bool | None:
        """State of the auxiliary contact (True = closed), or None when not wired."""

    def close_driver(self) -> None:
        """Open the contactor and release the device (shutdown)."""


@runtime_checkable
class Meter(Protocol):
    async def read(self) -> MeterReading:
        """Read the meter; raises DriverError (or asyncio.TimeoutError) when it does not answer."""

    async def close(self) -> None: ...


@runtime_checkable
class CardReader(Protocol):
    async def start(self, on_tap: Callable[[str], None]) -> None:
        """Start watching; call ``on_tap(id_tag)`` once per card presentation (debounced)."""

    async def stop(self) -> None: ...


@runtime_checkable
class EvPresentInput(Protocol):
    async def start(self, on_change: Callable[[bool], None]) -> None:
        """Call ``on_change(present)`` when the EV is plugged (True) or unplugged (False)."""

    async def stop(self) -> None: ...


@runtime_checkable
class PilotPwm(Protocol):
    def set_current_limit(self, amps: float | None) -> None:
        """Follow the active limit: duty = A / 0.6 % (IEC 61851-1); None or 0 = no charging (100 % / state F)."""

    def close_driver(self) -> None: ...


# --- Additions (compatible): configuration errors and contactor faults ---------------------------


class DriverConfigError(Exception):
    """The ``[drivers]`` table is wrong. The message names the key, e.g. ``drivers.relay.pins.1``.

    Deliberately *not* a DriverError: ``auto`` falls back to sim when hardware is missing,
    but a typo in the config must never be papered over by a silent fallback.
    """


@dataclass(frozen=True)
class RelayFault:
    """A contactor whose auxiliary contact disagrees with the coil.

    ``error_code`` is the OCPP 1.6 ChargePointErrorCode the station reports in
    StatusNotification (spec 7.6: PowerSwitchFailure = "failure to control power switch");
    ``info`` fits StatusNotification.info (CiString50).
    """

    connector_id: int
    kind: str  # "welded" (aux closed, coil off) | "failed_to_close" (aux open, coil on)
    info: str
    error_code: str = "PowerSwitchFailure"
    vendor_error_code: str | None = None


@dataclass
class BuildContext:
    """What a backend factory gets besides its ``[drivers.<kind>]`` table.

    A backend factory (the value of an ``ocpp_twin.drivers`` entry point named
    ``<kind>.<backend>``) is ``async def factory(table: dict, connectors: list[int],
    ctx: BuildContext) -> dict[int, driver]``. It returns one driver per connector id
    (the same object under several ids for a shared device); the reader kind is called
    with ``connectors == [0]`` and returns ``{0: reader}``. It raises DriverError when
    the hardware or its library is missing (the station then refuses to start, or with
    ``auto`` falls back to sim with a warning) and
    DriverConfigError for a bad table. An optional ``config_keys`` attribute (a set of
    key names) lets the registry reject typos in that backend's table.
    """

    power_sources: dict[int, Callable[[], float]] = field(default_factory=dict)
    soc_sources: dict[int, Callable[[], float | None]] = field(default_factory=dict)
    # Import register to start the simulated meters from (the runtime restores it from the store).
    initial_energy_wh: dict[int, float] = field(default_factory=dict)
    # gpiozero pin factory to inject (tests: MockFactory; a lab: remote pigpio). None = gpiozero's default.
    pin_factory: object | None = None
    probe: bool = False  # building for `twin drivers --probe`: do one real read, don't keep state
