"""Registry: discovery (built-ins + real entry points), resolution, auto fallback, named backends failing closed,
probe, close."""

from __future__ import annotations

import logging
import re
import textwrap

import pytest

from drivers.base import DriverConfigError, DriverError
from drivers.registry import KINDS, build_drivers, describe, list_backends, probe
from drivers.sim import SimCardReader, SimMeter, SimRelay
from tests.drivers.conftest import until
from tests.drivers.modbus_server import words

NO_SOURCES = dict(power_sources={}, soc_sources={})


def test_builtin_backends_are_listed_without_installing():
    assert list_backends() == {
        "relay": ["sim", "gpiozero"], "meter": ["sim", "modbus"], "reader": ["sim", "pcsc"],
        "ev_present": ["sim", "gpiozero"], "pilot": ["sim", "gpiozero"],
    }


@pytest.fixture
def lab_plugin(tmp_path, monkeypatch):
    """A real installed distribution (dist-info + entry_points.txt) declaring a relay backend."""
    (tmp_path / "lab_relays.py").write_text(textwrap.dedent("""
        from drivers.sim import SimRelay

        class LabRelay(SimRelay):
            def describe(self):
                return "lab relay board"

        async def factory(table, connectors, ctx):
            return {c: LabRelay(name=f"lab {c}") for c in connectors}

        factory.config_keys = {"bus"}
    """))
    dist = tmp_path / "lab_relays-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: lab-relays\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text(
        "[ocpp_twin.drivers]\nrelay.labboard = lab_relays:factory\nbogus = lab_relays:factory\n")
    monkeypatch.syspath_prepend(str(tmp_path))


async def test_a_plugin_entry_point_is_discovered_and_used(lab_plugin, caplog):
    with caplog.at_level(logging.WARNING):
        assert "labboard" in list_backends()["relay"]
    assert "ignoring entry point 'bogus'" in caplog.text  # names must be <kind>.<backend>
    ds = await build_drivers({"relay": {"backend": "labboard", "bus": "i2c-1"}}, 2, **NO_SOURCES)
    assert type(ds.relays[1]).__name__ == "LabRelay"
    assert ds.reports[0].backend == "labboard" and ds.reports[0].reason == "lab relay board; lab relay board"
    with pytest.raises(DriverConfigError, match=r"drivers\.relay\.buss: unknown key"):
        await build_drivers({"relay": {"backend": "labboard", "buss": 1}}, 2, **NO_SOURCES)
    await ds.close()


@pytest.fixture
def broken_lab_plugins(tmp_path, monkeypatch):
    """Installed plugins that fail: one raises an undeclared exception, one cannot be imported."""
    (tmp_path / "lab_broken.py").write_text(textwrap.dedent("""
        async def factory(table, connectors, ctx):
            raise RuntimeError("i2c bus 1 answered NAK")
    """))
    dist = tmp_path / "lab_broken-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: lab-broken\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text(
        "[ocpp_twin.drivers]\nrelay.nakboard = lab_broken:factory\nmeter.gone = lab_not_installed:factory\n")
    monkeypatch.syspath_prepend(str(tmp_path))


@pytest.mark.parametrize("kind, backend, cause", [
    ("relay", "nakboard", "RuntimeError: i2c bus 1 answered NAK"),
    ("meter", "gone", "backend meter.gone cannot be imported: No module named 'lab_not_installed'"),
])
async def test_a_named_plugin_that_fails_stops_the_station(broken_lab_plugins, kind, backend, cause):
    with pytest.raises(DriverError) as raised:
        await build_drivers({kind: {"backend": backend}}, 2, **NO_SOURCES)
    assert str(raised.value).startswith(f'drivers.{kind}: backend = "{backend}" cannot start: {cause} -- ')


async def test_default_config_is_sim_everywhere_without_warnings(caplog):
    with caplog.at_level(logging.WARNING):
        ds = await build_drivers({}, 2, power_sources={1: lambda: 1000.0}, soc_sources={})
    assert [(r.kind, r.requested, r.backend, r.warning) for r in ds.reports] == [
        (k, "sim", "sim", None) for k in KINDS]
    assert caplog.text == "" and ds.warnings == []
    assert isinstance(ds.relays[2], SimRelay) and isinstance(ds.meters[1], SimMeter)
    assert ds.sim_reader is ds.reader and isinstance(ds.reader, SimCardReader)
    assert sorted(ds.ev_inputs) == sorted(ds.pilots) == [1, 2]
    assert (await ds.meters[1].read()).power_w == 1000.0
    await ds.close()


async def test_energy_floors_seed_the_simulated_registers():
    ds = await build_drivers({}, 2, **NO_SOURCES, energy_floors={1: 1234.0})
    assert (await ds.meters[1].read()).energy_wh == 1234.0
    assert (await ds.meters[2].read()).energy_wh == 0.0


async def test_auto_falls_back_to_sim_with_a_loud_warning(gpio_env_unset, tmp_path, caplog):
    cfg = {"relay": {"backend": "auto"}, "meter": {"backend": "auto", "device": str(tmp_path / "ttyUSB0"), "shared": True},
           "ev_present": {"backend": "auto"}}
    with caplog.at_level(logging.WARNING, logger="drivers.registry"):
        ds = await build_drivers(cfg, 2, **NO_SOURCES)
    relay, meter, _, ev, _ = ds.reports
    assert (relay.requested, relay.backend) == ("auto", "sim")
    assert "GPIO5" in relay.warning and "FALLING BACK TO THE SIMULATED RELAY" in relay.warning
    assert "not found (is the USB RS-485 adapter plugged in?)" in meter.warning
    assert (ev.requested, ev.backend) == ("auto", "sim") and ev.warning
    assert len(ds.warnings) == 3
    for w in ds.warnings:
        assert w in caplog.text
    assert all(rec.levelno == logging.WARNING for rec in caplog.records)
    await ds.close()


async def test_auto_with_strict_refuses_and_names_the_missing_device(gpio_env_unset):
    with pytest.raises(DriverError, match=r'drivers\.relay: backend = "auto" \(gpiozero\) with strict = true cannot '
                                          r"start: connector 1 contactor relay on GPIO5 .* no GPIO available"):
        await build_drivers({"relay": {"backend": "auto", "strict": True}}, 2, **NO_SOURCES)


# A named backend is that backend or nothing (no `strict` needed): a unit with real contactors
# must not go on switching sessions billed from a simulated meter.
@pytest.mark.parametrize("kind, table, cause", [
    ("relay", {}, r"connector 1 contactor relay on GPIO5 \(drivers\.relay\.pins\.1\): no GPIO available, gpiozero "
                  r"could not load a pin factory .* lgpio installed\?"),
    ("ev_present", {}, r"connector 1 EV-present input on GPIO17 .* no GPIO available"),
    ("pilot", {}, r"connector 1 control-pilot PWM on GPIO12 .* no GPIO available"),
    ("meter", {"transport": "rtu", "device": "/dev/ttyNOPE-not-here", "shared": True},
     r"serial device /dev/ttyNOPE-not-here not found \(is the USB RS-485 adapter plugged in\?\)"),
    ("meter", {"transport": "tcp", "host": "127.0.0.1", "port": 9, "timeout_s": 0.2, "shared": True},
     r"cannot open Modbus 127\.0\.0\.1:9 \(Modbus TCP\)"),
])
async def test_a_named_backend_that_cannot_start_stops_the_station(gpio_env_unset, kind, table, cause, caplog):
    backend = {"meter": "modbus"}.get(kind, "gpiozero")
    with caplog.at_level(logging.WARNING), pytest.raises(DriverError) as raised:
        await build_drivers({kind: {"backend": backend, **table}}, 2, **NO_SOURCES)
    message = str(raised.value)
    assert re.match(rf'drivers\.{kind}: backend = "{backend}" cannot start: {cause}', message), message
    assert "no fallback to the simulator" in message and "twin drivers --probe" in message
    assert 'set backend = "sim", or "auto"' in message
    assert "FALLING BACK" not in caplog.text


async def test_a_named_meter_that_does_not_answer_at_start_says_what_to_check(modbus_tcp):
    port = await modbus_tcp({4: {0x0000: [0, 0]}})  # a Modbus device, but not an SDM630
    with pytest.raises(DriverError) as raised:
        await build_drivers({"meter": {"backend": "modbus", "transport": "tcp", "host": "127.0.0.1", "port": port,
                                       "shared": True}}, 2, **NO_SOURCES)
    assert str(raised.value).startswith('drivers.meter: backend = "modbus" cannot start: shared meter: device 1 FC04 ')
    assert ("Modbus exception 2 (illegal data address); check the meter or gateway's power, the host and port, "
            "the device id, and that model matches the meter (hw-docs/meter-setup.md)") in str(raised.value)


async def test_strict_false_on_a_named_backend_does_not_bring_the_fallback_back(gpio_env_unset, caplog):
    with caplog.at_level(logging.WARNING), pytest.raises(DriverError, match=r'drivers\.relay: backend = "gpiozero" cannot start'):
        await build_drivers({"relay": {"backend": "gpiozero", "strict": False}}, 2, **NO_SOURCES)
    assert "drivers.relay.strict = false is ignored" in caplog.text
    rows = describe({"relay": {"backend": "gpiozero", "strict": False}}, 2)
    assert "the station refuses to start" in rows[0].reason and "strict = false is ignored" in rows[0].reason


async def test_a_named_backend_that_starts_has_no_warning(pins, caplog):
    with caplog.at_level(logging.WARNING):
        ds = await build_drivers({"relay": {"backend": "gpiozero", "strict": True}}, 2, **NO_SOURCES, pin_factory=pins)
    assert (ds.reports[0].backend, ds.reports[0].warning) == ("gpiozero", None) and caplog.text == ""
    await ds.close()


async def test_force_sim_overrides_everything_without_warnings(gpio_env_unset):
    ds = await build_drivers({"relay": {"backend": "auto", "strict": True}}, 2, **NO_SOURCES, force_sim=True)
    assert ds.reports[0].backend == "sim" and ds.reports[0].warning is None
    assert "fake-driver mode" in ds.reports[0].reason
    await ds.close()


@pytest.mark.parametrize("cfg, msg", [
    ({"relais": {}}, r"drivers\.relais: unknown driver kind"),
    ({"relay": {"backend": "gpio"}}, r"drivers\.relay\.backend: unknown backend 'gpio' \(known: auto, sim, gpiozero\)"),
    ({"relay": {"backend": "sim", "activ_high": True}}, r"drivers\.relay\.activ_high: unknown key"),
    ({"relay": {"strict": "yes"}}, r"drivers\.relay\.strict: must be true or false"),
    ({"meter": "sdm630"}, r"drivers\.meter: must be a table"),
    ({"relay": {"backend": "sim", "feedback_timeout_s": -1}}, r"drivers\.relay\.feedback_timeout_s: must be >= 0"),
])
async def test_config_errors_are_never_a_silent_fallback(cfg, msg):
    with pytest.raises(DriverConfigError, match=msg):
        await build_drivers(cfg, 2, **NO_SOURCES)
    with pytest.raises(DriverConfigError, match=msg):
        describe(cfg, 2)


def test_hardware_keys_are_accepted_while_on_sim():
    rows = describe({"relay": {"backend": "sim", "pins": {"1": 5}, "active_high": True}}, 1)
    assert rows[0].backend == "sim"


def test_describe_says_what_will_be_tried():
    rows = describe({"relay": {"backend": "auto", "strict": True}, "meter": {"backend": "auto"},
                     "reader": {"backend": "pcsc"}}, 2)
    assert rows[0].backend == "gpiozero" and "refuses to start" in rows[0].reason
    assert rows[1].backend == "modbus" and "falls back to sim" in rows[1].reason
    assert rows[2].backend == "pcsc" and "refuses to start" in rows[2].reason


async def test_gpiozero_drivers_through_the_registry(pins):
    cfg = {k: {"backend": "gpiozero"} for k in ("relay", "ev_present", "pilot")}
    ds = await build_drivers(cfg, 2, **NO_SOURCES, pin_factory=pins)
    assert [r.backend for r in ds.reports] == ["gpiozero", "sim", "sim", "gpiozero", "gpiozero"]
    ds.relays[1].set(True)
    ds.pilots[1].set_current_limit(16)
    assert pins.pin(5).state == 0
    await ds.close()
    assert pins.pin(5).function == "input" and pins.pin(12).function == "input"


async def test_a_failed_build_releases_what_was_built(pins, gpio_env_unset):
    cfg = {"relay": {"backend": "gpiozero"}, "meter": {"backend": "modbus", "strict": True, "transport": "tcp",
                                                       "host": "127.0.0.1", "port": 9, "timeout_s": 0.2,
                                                       "shared": True}}
    with pytest.raises(DriverError):
        await build_drivers(cfg, 2, **NO_SOURCES, pin_factory=pins)
    assert pins.pin(5).function == "input"  # the relays built before the meter failed were released
    ds = await build_drivers({"relay": {"backend": "gpiozero"}}, 2, **NO_SOURCES, pin_factory=pins)
    await ds.close()


async def test_relay_supervision_reports_a_weld(caplog):
    ds = await build_drivers({"relay": {"feedback_timeout_s": 0.05}}, 2, **NO_SOURCES)
    events = []
    await ds.start_supervision(lambda cid, fault: events.append((cid, fault)), loop_watchdog_s=None)
    ds.relays[2].weld()
    await until(lambda: events, what="the weld report")
    cid, fault = events[0]
    assert cid == 2 and fault.kind == "welded" and ds.relay_faults == {2: fault}
    ds.reset_relay_fault(2)
    assert events[-1] == (2, None) and ds.relay_faults == {}
    await ds.close()


async def test_close_opens_every_contactor_and_is_idempotent():
    ds = await build_drivers({}, 2, **NO_SOURCES)
    await ds.start_supervision(lambda cid, f: None, loop_watchdog_s=5.0)
    for r in ds.relays.values():
        r.set(True)
    await ds.close()
    await ds.close()
    assert not any(r.commanded for r in ds.relays.values())


async def test_probe_reports_without_falling_back(gpio_env_unset, modbus_tcp):
    port = await modbus_tcp({4: {0x0000: words("f", 230.0) * 3, 0x0006: words("f", 0.0) * 3,
                                 0x0034: words("f", 0.0), 0x0046: words("f", 50.0), 0x0048: words("f", 42.5)}})
    cfg = {"relay": {"backend": "auto"},
           "meter": {"backend": "modbus", "transport": "tcp", "host": "127.0.0.1", "port": port, "shared": True}}
    rows = await probe(cfg, 2)
    relay, meter, reader, _, _ = rows
    assert (relay.backend, relay.ok) == ("unavailable", False) and "GPIO5" in relay.warning
    assert (meter.backend, meter.ok) == ("modbus", True)
    assert "42.500 kWh" in meter.reason
    assert (reader.backend, reader.ok, reader.warning) == ("sim", True, None)


async def test_probe_flags_a_meter_that_stops_answering(modbus_tcp):
    port = await modbus_tcp({4: {0x0000: [0, 0]}})  # answers, but not the SDM630 registers
    rows = await probe({"meter": {"backend": "modbus", "transport": "tcp", "host": "127.0.0.1", "port": port,
                                  "shared": True}}, 1)
    assert rows[1].ok is False and "illegal data address" in rows[1].warning


async def test_light_install_without_hardware_libraries_falls_back(monkeypatch, tmp_path):
    """gpiozero, pymodbus and pyscard are optional extras: their absence is a missing device, not a crash."""
    import sys

    for name in ("gpiozero", "pymodbus", "pymodbus.client", "smartcard"):
        monkeypatch.setitem(sys.modules, name, None)  # makes `import name` raise ImportError
    cfg = {k: {"backend": "auto"} for k in KINDS}
    cfg["meter"]["shared"] = True
    ds = await build_drivers(cfg, 2, **NO_SOURCES)
    assert [r.backend for r in ds.reports] == ["sim"] * len(KINDS)
    for report, package in zip(ds.reports, ["gpiozero", "pymodbus", "pyscard", "gpiozero", "gpiozero"]):
        assert f"the {package} package is not installed" in report.warning
    await ds.close()


@pytest.mark.parametrize("kind, backend, package, install", [
    ("relay", "gpiozero", "gpiozero", "pip install 'ocpp-twin[hw]'"),
    ("meter", "modbus", "pymodbus", "pip install 'ocpp-twin[hw]'"),
    ("reader", "pcsc", "pyscard", "pip install 'ocpp-twin[pi]'"),
])
async def test_a_named_backend_without_its_library_says_what_to_install(monkeypatch, kind, backend, package, install):
    import sys

    for name in ("gpiozero", "pymodbus", "pymodbus.client", "smartcard"):
        monkeypatch.setitem(sys.modules, name, None)
    with pytest.raises(DriverError) as raised:
        await build_drivers({kind: {"backend": backend, "shared": True} if kind == "meter" else {"backend": backend}},
                            2, **NO_SOURCES)
    message = str(raised.value)
    assert message.startswith(f'drivers.{kind}: backend = "{backend}" cannot start: the {package} package is not installed')
    assert install in message
