"""gpiozero backends on MockFactory pins (injected per device, reset between tests)."""

from __future__ import annotations

import pytest

from drivers.base import BuildContext, DriverConfigError, DriverError
from drivers.gpio import GpioPilotPwm, GpioRelay, build_ev_inputs, build_pilots, build_relays
from drivers.relay_check import RelaySupervisor
from tests.drivers.conftest import until


def test_active_low_relay_initialises_open_with_pin_high(pins):
    r = GpioRelay(5, active_high=False, pin_factory=pins, connector_id=1)
    assert pins.pin(5).state == 1  # active-low board: HIGH = coil off
    assert pins.pin(5).function == "output"
    r.set(True)
    assert pins.pin(5).state == 0
    r.set(False)
    assert pins.pin(5).state == 1
    r.close_driver()
    assert pins.pin(5).function == "input"  # released


def test_active_high_relay_initialises_open_with_pin_low(pins):
    r = GpioRelay(6, active_high=True, pin_factory=pins, connector_id=2)
    assert pins.pin(6).state == 0
    r.set(True)
    assert pins.pin(6).state == 1
    assert [s.state for s in pins.pin(6).states] == [0, 1]  # never high before the command
    r.close_driver()
    r.close_driver()  # idempotent


def test_relay_without_aux_contact_has_no_feedback(pins):
    r = GpioRelay(5, active_high=False, pin_factory=pins)
    assert r.feedback() is None
    assert "no aux contact" in r.describe()
    r.close_driver()


def test_weld_on_a_mock_feedback_pin_is_reported(pins):
    """The aux contact reads closed (pulled LOW) while the coil is off: a welded contactor."""
    r = GpioRelay(5, active_high=False, feedback_pin=23, pin_factory=pins, connector_id=1)
    faults = []
    now = [0.0]
    sup = RelaySupervisor({1: r}, lambda cid, f: faults.append((cid, f)), timeout_s=0.25, clock=lambda: now[0])
    sup.poll_once()
    assert faults == []  # coil off, aux open: healthy
    pins.pin(23).drive_low()  # the welded pole keeps the aux contact closed
    sup.poll_once()
    now[0] = 0.2
    sup.poll_once()
    assert faults == []  # still inside the settle time
    now[0] = 0.3
    sup.poll_once()
    assert len(faults) == 1
    cid, fault = faults[0]
    assert cid == 1 and fault.kind == "welded" and fault.error_code == "PowerSwitchFailure"
    assert "welded" in fault.info and len(fault.info) <= 50
    r.close_driver()


def test_contactor_that_does_not_close_is_reported(pins):
    r = GpioRelay(5, active_high=False, feedback_pin=23, pin_factory=pins, connector_id=1)
    faults = []
    now = [0.0]
    sup = RelaySupervisor({1: r}, lambda cid, f: faults.append(f), timeout_s=0.25, clock=lambda: now[0])
    r.set(True)  # nothing drives the aux pin: it stays open (pull-up HIGH)
    sup.poll_once()
    now[0] = 0.5
    sup.poll_once()
    assert [f.kind for f in faults] == ["failed_to_close"]
    r.set(False)  # the station opens it: the contact agrees again, the fault clears
    sup.poll_once()
    assert faults[-1] is None
    r.close_driver()


async def test_build_relays_uses_default_pin_map(pins):
    relays = await build_relays({}, [1, 2], BuildContext(pin_factory=pins))
    assert (relays[1].pin, relays[1].feedback_pin, relays[2].pin, relays[2].feedback_pin) == (5, 23, 6, 24)
    assert pins.pin(5).state == 1 and pins.pin(6).state == 1  # active-low default, both open
    for r in relays.values():
        r.close_driver()


async def test_build_relays_feedback_can_be_disabled(pins):
    relays = await build_relays({"feedback_pins": {}, "active_high": True, "pins": {"1": 20}}, [1],
                                BuildContext(pin_factory=pins))
    assert relays[1].feedback() is None and relays[1].pin == 20
    relays[1].close_driver()


@pytest.mark.parametrize("table, key", [
    ({"pins": {"1": 5, "2": 5}}, "drivers.relay.pins.2"),
    ({"pins": {"1": 5, "2": 6}, "feedback_pins": {"1": 6}}, "drivers.relay.feedback_pins.1"),
    ({"pins": {"1": 40}}, "drivers.relay.pins.1"),
    ({"pins": {"1": "five"}}, "drivers.relay.pins.1"),
    ({"pins": {"x": 5}}, "drivers.relay.pins.x"),
    ({"active_high": "yes"}, "drivers.relay.active_high"),
])
async def test_bad_relay_config_names_the_key(pins, table, key):
    with pytest.raises(DriverConfigError, match=key.replace(".", r"\.")):
        await build_relays(table, [1, 2], BuildContext(pin_factory=pins))


async def test_third_connector_needs_a_pin(pins):
    with pytest.raises(DriverConfigError, match=r"drivers\.relay\.pins\.3: no pin for connector 3"):
        await build_relays({}, [1, 2, 3], BuildContext(pin_factory=pins))


async def test_a_failed_build_releases_pins_already_claimed(pins):
    pins.pin(6)  # claimed by someone else as an output
    from gpiozero import OutputDevice

    squatter = OutputDevice(24, pin_factory=pins)  # connector 2's aux pin is taken
    with pytest.raises(DriverConfigError, match="feedback_pins.2"):
        await build_relays({}, [1, 2], BuildContext(pin_factory=pins))
    squatter.close()
    relays = await build_relays({}, [1, 2], BuildContext(pin_factory=pins))  # connector 1's pins were freed
    for r in relays.values():
        r.close_driver()


async def test_mock_pins_from_the_environment_are_not_real_gpio(monkeypatch):
    from gpiozero import Device

    monkeypatch.setenv("GPIOZERO_PIN_FACTORY", "mock")
    monkeypatch.setattr(Device, "pin_factory", None)
    with pytest.raises(DriverError, match="mock pins, no real GPIO"):
        await build_relays({}, [1], BuildContext())
    Device.pin_factory.reset()


async def test_no_gpio_at_all_says_so(gpio_env_unset):
    with pytest.raises(DriverError, match=r"GPIO5 \(drivers\.relay\.pins\.1\): no GPIO available"):
        await build_relays({}, [1], BuildContext())


async def test_ev_present_input_reports_changes_and_initial_state(pins):
    inputs = await build_ev_inputs({"bounce_s": 0}, [1, 2], BuildContext(pin_factory=pins))
    pins.pin(27).drive_low()  # connector 2: an EV is already plugged in at start-up
    seen: list[tuple[int, bool]] = []
    for cid, inp in inputs.items():
        await inp.start(lambda present, cid=cid: seen.append((cid, present)))
    await until(lambda: seen == [(2, True)], what="initial state of connector 2")
    pins.pin(17).drive_low()
    pins.pin(17).drive_low()  # no change, no event
    await until(lambda: (1, True) in seen, what="plug on connector 1")
    pins.pin(17).drive_high()
    await until(lambda: seen[-1] == (1, False), what="unplug on connector 1")
    assert seen == [(2, True), (1, True), (1, False)]
    for inp in inputs.values():
        await inp.stop()


async def test_ev_present_only_on_connectors_with_a_pin(pins):
    inputs = await build_ev_inputs({"pins": {"2": 22}}, [1, 2], BuildContext(pin_factory=pins))
    assert list(inputs) == [2]
    await inputs[2].stop()


async def test_pilot_pwm_is_1khz_and_follows_the_limit(pins):
    pilots = await build_pilots({}, [1, 2], BuildContext(pin_factory=pins))
    p = pilots[1]
    assert isinstance(p, GpioPilotPwm)
    pin = pins.pin(12)
    assert pin.frequency == 1000
    assert pin.state == 1.0  # constant: no charging offered yet
    p.set_current_limit(16)
    assert pin.state == pytest.approx(0.26667, abs=1e-4)
    p.set_current_limit(32)
    assert pin.state == pytest.approx(0.53333, abs=1e-4)
    p.set_current_limit(None)
    assert pin.state == 1.0
    for p in pilots.values():
        p.close_driver()
    assert pins.pin(12).function == "input"
