"""The same contract over every backend of a driver kind that can run here.

sim everywhere; gpiozero on a MockFactory; pymodbus against a real loopback server;
pyscard against a real pcscd + vpcd with a virtual card.
"""

from __future__ import annotations

import math

import pytest

from drivers.base import BuildContext, CardReader, EvPresentInput, Meter, MeterReading, PilotPwm, Relay
from tests.drivers.conftest import until
from tests.drivers.modbus_server import words

# --- relays ------------------------------------------------------------------------------------


@pytest.fixture(params=["sim", "gpiozero"])
def relay(request):
    if request.param == "sim":
        from drivers.sim import SimRelay

        yield SimRelay(aux_feedback=True)
        return
    from drivers.gpio import GpioRelay

    pins = request.getfixturevalue("connected_pins")
    # The coil output drives the aux input, like a healthy contactor's auxiliary contact.
    pins.pin(5, input_pin=pins.pin(23))
    r = GpioRelay(5, active_high=False, feedback_pin=23, pin_factory=pins, connector_id=1)
    yield r
    r.close_driver()


def test_relay_contract(relay):
    assert isinstance(relay, Relay)
    assert relay.commanded is False  # always initialised open
    assert relay.feedback() is False
    relay.set(True)
    assert relay.commanded is True and relay.feedback() is True
    relay.set(False)
    assert relay.commanded is False and relay.feedback() is False
    relay.set(True)
    relay.close_driver()
    assert relay.commanded is False


# --- meters ------------------------------------------------------------------------------------


@pytest.fixture(params=["sim", "modbus"])
async def meter(request, modbus_tcp):
    if request.param == "sim":
        from drivers.sim import SimMeter

        m = SimMeter(lambda: 11040.0, energy_wh=1000.0)
        yield m
        await m.close()
        return
    from drivers.modbus import build_meters

    regs = {4: {0x0000: words("f", 230.0) * 3, 0x0006: words("f", 16.0) * 3, 0x0034: words("f", 11040.0),
                0x0046: words("f", 50.0), 0x0048: words("f", 1.0)}}
    port = await modbus_tcp(regs)
    built = await build_meters({"transport": "tcp", "host": "127.0.0.1", "port": port, "model": "sdm630", "shared": True},
                               [1], BuildContext())
    yield built[1]
    await built[1].close()


async def test_meter_contract(meter):
    assert isinstance(meter, Meter)
    first = await meter.read()
    assert isinstance(first, MeterReading)
    assert math.isfinite(first.energy_wh) and first.energy_wh >= 0
    assert first.power_w == pytest.approx(11040.0)
    assert first.voltage_v == pytest.approx(230.0)
    second = await meter.read()
    assert second.energy_wh >= first.energy_wh  # an import register never goes backwards


# --- card readers --------------------------------------------------------------------------------


@pytest.fixture(params=["sim", pytest.param("pcsc", marks=pytest.mark.pcsc)])
async def reader_and_card(request):
    """(reader, present(uid_bytes), remove())."""
    if request.param == "sim":
        from drivers.sim import SimCardReader

        r = SimCardReader()
        yield r, lambda uid: r.tap(uid.hex().upper()), lambda: None
        return
    request.getfixturevalue("pcscd")
    from drivers.pcsc import build_reader
    from tests.drivers.fake_vicc import FakeCard

    r = (await build_reader({"reader": "Virtual PCD 00 00"}, [0], BuildContext()))[0]
    cards = []

    def present(uid: bytes) -> None:
        cards.append(FakeCard(uid))
        cards[-1].insert()

    def remove() -> None:
        while cards:
            cards.pop().remove()

    yield r, present, remove
    remove()
    await r.stop()


async def test_reader_contract(reader_and_card):
    reader, present, remove = reader_and_card
    assert isinstance(reader, CardReader)
    taps: list[str] = []
    await reader.start(taps.append)
    present(bytes.fromhex("04a1b2c3d4e5f6"))
    await until(lambda: taps, what="a tap")
    assert taps == ["04A1B2C3D4E5F6"]
    remove()
    await reader.stop()


# --- EV-present inputs ---------------------------------------------------------------------------


@pytest.fixture(params=["sim", "gpiozero"])
def ev_input(request):
    """(input, plug(), unplug())."""
    if request.param == "sim":
        from drivers.sim import SimEvPresentInput

        i = SimEvPresentInput()
        return i, lambda: i.set_present(True), lambda: i.set_present(False)
    from drivers.gpio import GpioEvPresentInput

    pins = request.getfixturevalue("pins")
    i = GpioEvPresentInput(17, pull_up=True, bounce_s=None, pin_factory=pins, connector_id=1)
    return i, pins.pin(17).drive_low, pins.pin(17).drive_high  # opto pulls the line low when an EV is there


async def test_ev_present_contract(ev_input):
    inp, plug, unplug = ev_input
    assert isinstance(inp, EvPresentInput)
    seen: list[bool] = []
    await inp.start(seen.append)
    plug()
    await until(lambda: seen == [True], what="plug")
    unplug()
    await until(lambda: seen == [True, False], what="unplug")
    await inp.stop()


# --- pilots ------------------------------------------------------------------------------------


@pytest.fixture(params=["sim", "gpiozero"])
def pilot(request):
    """(pilot, observed_duty())."""
    if request.param == "sim":
        from drivers.sim import SimPilotPwm

        p = SimPilotPwm()
        return p, lambda: p.duty
    from drivers.gpio import GpioPilotPwm

    pins = request.getfixturevalue("pins")
    p = GpioPilotPwm(12, active_high=True, frequency_hz=1000, pin_factory=pins, connector_id=1)
    return p, lambda: pins.pin(12).state


def test_pilot_contract(pilot):
    p, duty = pilot
    assert isinstance(p, PilotPwm)
    assert duty() == 1.0  # no PWM until a limit is set: charging not available
    p.set_current_limit(16)
    assert duty() == pytest.approx(16 / 0.6 / 100)
    p.set_current_limit(0)
    assert duty() == 1.0
    p.set_current_limit(32)
    p.close_driver()
    assert p.duty == 1.0
