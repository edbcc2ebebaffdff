"""The simulated EV (twin/sim/ev.py): what the sim meter asks it to draw."""

from __future__ import annotations

from dataclasses import dataclass

from twin.sim.ev import EvModel, SimulatedEv


@dataclass
class View:
    plugged: bool = True
    contactor_closed: bool = True
    offered_a: float = 32.0
    voltage: float = 230.0
    phases: int = 3
    energy_wh: float = 1000.0


def test_draws_its_demand_at_most_the_offer_and_nothing_behind_an_open_contactor():
    view = View()
    car = SimulatedEv(EvModel(max_power_w=11000.0), lambda: view)
    assert car.power_w() == 11000.0
    view.offered_a = 10.0
    assert car.power_w() == 10 * 230 * 3
    view.contactor_closed = False
    assert car.power_w() == 0.0


def test_soc_rises_with_the_energy_since_plug_and_a_full_battery_stops_drawing():
    view = View(energy_wh=5000.0)
    car = SimulatedEv(EvModel(battery_wh=10000.0, soc_start=50.0), lambda: view)
    assert car.soc() == 50.0
    view.energy_wh = 7500.0
    assert car.soc() == 75.0
    view.energy_wh = 10000.0
    assert car.soc() == 100.0 and car.power_w() == 0.0
    view.plugged = False
    assert car.soc() is None
    view.plugged, view.energy_wh = True, 10000.0  # the next car starts from its own SoC
    assert car.soc() == 50.0


def test_suspend_and_max_power():
    view = View()
    car = SimulatedEv(EvModel(), lambda: view)
    car.set(suspended=True)
    assert car.power_w() == 0.0
    car.set(suspended=False, max_power_w=3700.0)
    assert car.power_w() == 3700.0
    assert car.snapshot() == {"suspended": False, "maxPowerW": 3700.0}


def test_a_single_phase_car_draws_on_one_phase_of_a_three_phase_connector():
    view = View(offered_a=16.0, phases=3)
    car = SimulatedEv(EvModel(max_power_w=22000.0, phases=1), lambda: view)
    assert car.power_w() == 16 * 230 * 1
