"""Simulated backends and their test hooks."""

from __future__ import annotations

import pytest

from drivers.base import BuildContext, DriverConfigError, DriverError
from drivers.sim import SimCardReader, SimEvPresentInput, SimMeter, SimPilotPwm, SimRelay, build_meters


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


async def test_meter_integrates_power_over_time():
    clock, power = Clock(), [7360.0]
    m = SimMeter(lambda: power[0], clock=clock, energy_wh=500.0)
    first = await m.read()
    assert first.energy_wh == 500.0  # no time has passed
    clock.t += 3600
    r = await m.read()
    assert r.energy_wh == pytest.approx(500.0 + 7360.0)
    assert r.current_a == pytest.approx(7360.0 / (230.0 * 3))
    assert r.currents_a == pytest.approx((7360.0 / 690.0,) * 3)
    power[0] = 0.0
    clock.t += 3600
    r = await m.read()
    assert r.energy_wh == pytest.approx(500.0 + 7360.0 + 7360.0 / 2)  # trapezoid across the step


async def test_meter_register_never_decreases():
    clock, power = Clock(), [-3000.0]
    m = SimMeter(lambda: power[0], clock=clock, energy_wh=10.0)
    await m.read()
    clock.t += 3600
    assert (await m.read()).energy_wh == 10.0  # export is not import
    clock.t -= 100  # a clock that steps back
    assert (await m.read()).energy_wh == 10.0


async def test_meter_single_phase_and_soc():
    m = SimMeter(lambda: 2300.0, phases=1, voltage=230.0, soc_source=lambda: 42.0)
    r = await m.read()
    assert (r.current_a, r.soc_percent, r.voltages_v) == (pytest.approx(10.0), 42.0, (230.0,))


async def test_silent_meter_raises_but_keeps_counting():
    clock = Clock()
    m = SimMeter(lambda: 3600.0, clock=clock)
    good = await m.read()
    m.set_silent()
    clock.t += 3600
    with pytest.raises(DriverError, match="not answering"):
        await m.read()
    assert m.last_good == good
    m.set_silent(False)
    assert (await m.read()).energy_wh == pytest.approx(3600.0)


async def test_meter_rejects_a_broken_power_source():
    m = SimMeter(lambda: float("nan"))
    with pytest.raises(DriverError, match="power source returned nan"):
        await m.read()


def test_meter_arguments_are_checked():
    with pytest.raises(ValueError, match="phases must be 1 or 3"):
        SimMeter(lambda: 0.0, phases=2)
    with pytest.raises(ValueError, match="energy_wh must be >= 0"):
        SimMeter(lambda: 0.0, energy_wh=-1)


async def test_sim_meter_factory_shared_and_floors():
    ctx = BuildContext(power_sources={1: lambda: 1000.0, 2: lambda: 2000.0}, initial_energy_wh={1: 5.0, 2: 7.0})
    per = await build_meters({}, [1, 2], ctx)
    assert (per[1].energy_wh, per[2].energy_wh) == (5.0, 7.0)
    shared = await build_meters({"shared": True}, [1, 2], ctx)
    assert shared[1] is shared[2]
    assert (await shared[1].read()).power_w == 3000.0
    with pytest.raises(DriverConfigError, match=r"drivers\.meter\.sim_phases: must be 1 or 3"):
        await build_meters({"sim_phases": 2}, [1], ctx)


def test_relay_weld_and_stick_hooks():
    r = SimRelay()
    assert (r.commanded, r.feedback()) == (False, False)
    r.set(True)
    assert r.feedback() is True
    r.set(False)
    r.weld()
    assert (r.commanded, r.feedback()) == (False, True)
    r.weld(False)
    r.stick_open()
    r.set(True)
    assert r.feedback() is False
    assert r.history == [True, False, True]
    with pytest.raises(ValueError, match="needs a simulated aux contact"):
        SimRelay(aux_feedback=False).weld()
    assert SimRelay(aux_feedback=False).feedback() is None


async def test_card_reader_tap():
    reader = SimCardReader()
    with pytest.raises(DriverError, match="not started"):
        reader.tap("ABC")
    taps: list[str] = []
    await reader.start(taps.append)
    reader.tap("04A1B2C3")
    assert taps == ["04A1B2C3"]
    for bad, msg in [("", "empty"), ("X" * 21, "at most 20"), ("é", "printable ASCII"), (12, "must be a string")]:
        with pytest.raises(ValueError, match=msg):
            reader.tap(bad)
    await reader.stop()
    assert not reader.started


async def test_ev_input_reports_only_changes():
    inp = SimEvPresentInput()
    seen: list[bool] = []
    inp.set_present(True)  # before start: remembered, not reported
    await inp.start(seen.append)
    inp.set_present(True)
    inp.set_present(False)
    inp.set_present(False)
    assert seen == [False] and inp.present is False


def test_pilot_records_duty():
    p = SimPilotPwm()
    p.set_current_limit(16)
    p.close_driver()
    assert p.history == [pytest.approx(0.26667, abs=1e-5), 1.0] and p.closed
