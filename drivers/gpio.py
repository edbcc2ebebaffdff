"""gpiozero backends: contactor relays with aux feedback, EV-present inputs, control-pilot PWM.

gpiozero is imported lazily (it is in the ``hw`` extra, not the light install). Every
device takes the pin factory from ``BuildContext.pin_factory`` when one is given (tests
inject a MockFactory per device instead of touching gpiozero's global), else gpiozero's
default (lgpio on a Pi 5 / Bookworm).

Pins are BCM numbers. Defaults: ``drivers.config.DEFAULT_PINS`` = hw-docs/pin-map.md.
"""

from __future__ import annotations

import asyncio
import logging
import warnings
from typing import Any, Callable

from drivers.base import BuildContext, DriverConfigError, DriverError
from drivers.config import DEFAULT_PINS, KindTable, check_distinct_pins
from drivers.pilot import PILOT_FREQUENCY_HZ, duty_for_current

log = logging.getLogger(__name__)

INSTALL_HINT = "pip install 'ocpp-twin[hw]'"


def _gpiozero() -> Any:
    try:
        import gpiozero
    except ImportError as exc:
        raise DriverError(f"the gpiozero package is not installed ({exc}); {INSTALL_HINT}") from exc
    return gpiozero


def _make(what: str, key: str, factory: Callable[..., Any], pin: int, **kwargs: Any) -> Any:
    """Create one gpiozero device, turning its exceptions into messages that name the pin and key."""
    gz = _gpiozero()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", gz.PinFactoryFallback)
        try:
            dev = factory(pin, **kwargs)
        except gz.BadPinFactory as exc:
            tried = "; ".join(str(w.message) for w in caught if issubclass(w.category, gz.PinFactoryFallback))
            raise DriverError(
                f"{what} on GPIO{pin} ({key}): no GPIO available, gpiozero could not load a pin factory "
                f"({tried or exc}). Is this a Raspberry Pi with /dev/gpiochip0 and lgpio installed?"
            ) from exc
        except gz.GPIOPinInUse as exc:
            raise DriverConfigError(f"{key}: GPIO{pin} for the {what} is already in use ({exc})") from exc
        except gz.PinInvalidPin as exc:
            raise DriverConfigError(f"{key}: GPIO{pin} is not a valid pin on this board ({exc})") from exc
        except (gz.GPIOZeroError, OSError) as exc:
            raise DriverError(f"{what} on GPIO{pin} ({key}): {type(exc).__name__}: {exc}") from exc
    if kwargs.get("pin_factory") is None and _is_mock(dev.pin_factory):
        # GPIOZERO_PIN_FACTORY=mock in the environment: nothing real would switch. An injected
        # MockFactory (tests) is a deliberate choice; one picked up from the environment on a
        # station is not, so it counts as "no GPIO" (a named backend refuses to start, auto falls
        # back to sim *with* a warning).
        dev.close()
        raise DriverError(f"{what} on GPIO{pin} ({key}): GPIOZERO_PIN_FACTORY selects gpiozero's mock pins, "
                          f"no real GPIO (unset GPIOZERO_PIN_FACTORY in the service's environment)")
    return dev


def _is_mock(pin_factory: Any) -> bool:
    from gpiozero.pins.mock import MockFactory

    return isinstance(pin_factory, MockFactory)


def _close_all(devices: list[Any]) -> None:
    for dev in devices:
        try:
            dev.close()
        except Exception as exc:
            log.error("closing %s failed: %s", dev, exc)


class GpioRelay:
    """A contactor coil driven through a relay-board channel, with an optional aux contact input.

    The output is always created with ``initial_value=False`` (the *inactive* level, i.e. HIGH on
    an active-low board) so claiming the pin can never close the contactor; ``None`` would keep
    whatever level the pin had, which can mean ON (hardware-and-ops.md section 4).
    """

    def __init__(
        self,
        pin: int,
        *,
        active_high: bool,
        feedback_pin: int | None = None,
        feedback_pull_up: bool = True,
        pin_factory: Any = None,
        connector_id: int = 0,
    ) -> None:
        gz = _gpiozero()
        self.connector_id = connector_id
        self.pin = pin
        self.feedback_pin = feedback_pin
        self._active_high = active_high
        self._commanded = False
        self._out = _make(f"connector {connector_id} contactor relay", f"drivers.relay.pins.{connector_id}",
                          gz.OutputDevice, pin, active_high=active_high, initial_value=False, pin_factory=pin_factory)
        self._aux = None
        if feedback_pin is not None:
            try:
                # pull_up=True: the aux contact switches the pin to GND, so "active" (closed) = LOW.
                self._aux = _make(f"connector {connector_id} contactor aux contact",
                                  f"drivers.relay.feedback_pins.{connector_id}", gz.DigitalInputDevice,
                                  feedback_pin, pull_up=feedback_pull_up, pin_factory=pin_factory)
            except BaseException:
                _close_all([self._out])
                raise

    def set(self, closed: bool) -> None:
        try:
            self._out.value = bool(closed)
        except Exception as exc:
            raise DriverError(f"connector {self.connector_id} relay GPIO{self.pin}: cannot switch: {exc}") from exc
        self._commanded = bool(closed)

    @property
    def commanded(self) -> bool:
        return self._commanded

    def feedback(self) -> bool | None:
        if self._aux is None:
            return None
        return bool(self._aux.is_active)

    def release(self) -> None:
        self.close_driver()

    def close_driver(self) -> None:
        """Open the contactor, then release the pins. After close the pin reverts to an input:
        on an active-low board that relies on the boot-time pull-up of GPIO0-8 (or an external one).
        Idempotent."""
        if self._out.closed:
            return
        try:
            self.set(False)
        finally:
            _close_all([d for d in (self._out, self._aux) if d is not None])

    def describe(self) -> str:
        board = "active-high" if self._active_high else "active-low"
        aux = f", aux contact GPIO{self.feedback_pin} {_open_closed(self.feedback())}" if self._aux else ", no aux contact"
        return f"connector {self.connector_id}: relay GPIO{self.pin} ({board}){aux}"


def _open_closed(state: bool | None) -> str:
    return "closed" if state else "open"


class GpioEvPresentInput:
    """An EV-present signal (e.g. an opto-coupler on CP state B/C, or a plug switch) on one GPIO."""

    def __init__(self, pin: int, *, pull_up: bool, bounce_s: float | None, pin_factory: Any = None, connector_id: int = 0) -> None:
        gz = _gpiozero()
        self.connector_id = connector_id
        self.pin = pin
        self._dev = _make(f"connector {connector_id} EV-present input", f"drivers.ev_present.pins.{connector_id}",
                          gz.DigitalInputDevice, pin, pull_up=pull_up, bounce_time=bounce_s or None, pin_factory=pin_factory)
        self._on_change: Callable[[bool], None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._last: bool | None = None

    @property
    def present(self) -> bool:
        return bool(self._dev.is_active)

    async def start(self, on_change: Callable[[bool], None]) -> None:
        self._loop = asyncio.get_running_loop()
        self._on_change = on_change
        # gpiozero calls these from its own thread (or the caller's, with mock pins): hop to the loop.
        self._dev.when_activated = lambda: self._post(True)
        self._dev.when_deactivated = lambda: self._post(False)
        if self.present:  # an EV already plugged in at start-up (the station boots assuming none)
            self._post(True)

    def _post(self, present: bool) -> None:
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._deliver, present)

    def _deliver(self, present: bool) -> None:
        if self._on_change is None or present == self._last:
            return
        self._last = present
        self._on_change(present)

    async def stop(self) -> None:
        self.release()

    def release(self) -> None:
        self._on_change = None
        _close_all([self._dev])

    def describe(self) -> str:
        return f"connector {self.connector_id}: EV-present GPIO{self.pin} ({'present' if self.present else 'absent'})"


class GpioPilotPwm:
    """The control-pilot PWM: 1 kHz, duty = A / 0.6 (IEC 61851-1). Feeds the +/-12 V op-amp stage.

    gpiozero's PWM is software-timed under lgpio: good enough for the twin and for a scope,
    not for a CP that a real EV must trust (hw-docs/safety.md).
    """

    def __init__(self, pin: int, *, active_high: bool, frequency_hz: float, pin_factory: Any = None, connector_id: int = 0) -> None:
        gz = _gpiozero()
        self.connector_id = connector_id
        self.pin = pin
        self.duty = duty_for_current(None)
        self._dev = _make(f"connector {connector_id} control-pilot PWM", f"drivers.pilot.pins.{connector_id}",
                          gz.PWMOutputDevice, pin, active_high=active_high, initial_value=self.duty,
                          frequency=frequency_hz, pin_factory=pin_factory)

    def set_current_limit(self, amps: float | None) -> None:
        self.duty = duty_for_current(amps)
        try:
            self._dev.value = self.duty
        except Exception as exc:
            raise DriverError(f"connector {self.connector_id} pilot GPIO{self.pin}: cannot set duty: {exc}") from exc

    def release(self) -> None:
        self.close_driver()

    def close_driver(self) -> None:
        if self._dev.closed:
            return
        try:
            self.set_current_limit(None)
        finally:
            _close_all([self._dev])

    def describe(self) -> str:
        return f"connector {self.connector_id}: pilot PWM GPIO{self.pin} {self._dev.frequency:g} Hz, duty {self.duty * 100:.2f} %"


# --- factories (see drivers.base.BuildContext) -----------------------------------------------


def _build_each(connectors: list[int], make: Callable[[int], Any]) -> dict[int, Any]:
    """Build one device per connector; if one fails, release those already claimed."""
    built: dict[int, Any] = {}
    try:
        for cid in connectors:
            dev = make(cid)
            if dev is not None:
                built[cid] = dev
    except BaseException:
        for dev in built.values():
            try:
                dev.release()
            except Exception as exc:
                log.error("releasing GPIO after a failed build: %s", exc)
        raise
    return built


async def build_relays(table: dict, connectors: list[int], ctx: BuildContext) -> dict[int, GpioRelay]:
    t = KindTable("relay", table)
    pins = t.pins("pins", connectors, DEFAULT_PINS["relay"], required=True)
    fb = t.pins("feedback_pins", connectors, DEFAULT_PINS["relay_feedback"], required=False)
    check_distinct_pins({t.key("pins"): pins, t.key("feedback_pins"): fb})
    active_high = t.get_bool("active_high", False)
    pull_up = t.get_bool("feedback_pull_up", True)
    t.get_float("feedback_timeout_s", 0.5, minimum=0.0)  # validated here, used by the DriverSet supervisor
    return _build_each(connectors, lambda c: GpioRelay(
        pins[c], active_high=active_high, feedback_pin=fb.get(c), feedback_pull_up=pull_up,
        pin_factory=ctx.pin_factory, connector_id=c))


build_relays.config_keys = frozenset(  # type: ignore[attr-defined]
    {"pins", "active_high", "feedback_pins", "feedback_pull_up", "feedback_timeout_s"})


def _optional_pins(t: KindTable, connectors: list[int]) -> dict[int, int]:
    """Pins of an optional per-connector signal: some connectors may lack it, but not all."""
    pins = t.pins("pins", connectors, DEFAULT_PINS[t.kind], required=False)
    if not pins:
        raise DriverConfigError(f"{t.key('pins')}: no pin for any connector")
    check_distinct_pins({t.key("pins"): pins})
    return pins


async def build_ev_inputs(table: dict, connectors: list[int], ctx: BuildContext) -> dict[int, GpioEvPresentInput]:
    """Connectors without a pin get no input (plug/unplug then comes from the control API)."""
    t = KindTable("ev_present", table)
    pins = _optional_pins(t, connectors)
    pull_up = t.get_bool("pull_up", True)
    bounce = t.get_float("bounce_s", 0.05, minimum=0.0)
    return _build_each([c for c in connectors if c in pins], lambda c: GpioEvPresentInput(
        pins[c], pull_up=pull_up, bounce_s=bounce, pin_factory=ctx.pin_factory, connector_id=c))


build_ev_inputs.config_keys = frozenset({"pins", "pull_up", "bounce_s"})  # type: ignore[attr-defined]


async def build_pilots(table: dict, connectors: list[int], ctx: BuildContext) -> dict[int, GpioPilotPwm]:
    t = KindTable("pilot", table)
    pins = _optional_pins(t, connectors)
    active_high = t.get_bool("active_high", True)
    freq = t.get_float("frequency_hz", float(PILOT_FREQUENCY_HZ), minimum=1.0)
    return _build_each([c for c in connectors if c in pins], lambda c: GpioPilotPwm(
        pins[c], active_high=active_high, frequency_hz=freq, pin_factory=ctx.pin_factory, connector_id=c))


build_pilots.config_keys = frozenset({"pins", "active_high", "frequency_hz"})  # type: ignore[attr-defined]
