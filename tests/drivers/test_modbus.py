"""pymodbus meters against a real pymodbus server: TCP on loopback and RTU over a socat pty pair.

The registers below are written by hand from the vendors' maps (hardware-and-ops.md section 3),
encoded with struct, not derived from drivers/meters/*.toml, so a wrong address, type, word
order or scale in a map file fails here.
"""

from __future__ import annotations

import asyncio
import time

import pytest

from drivers.base import BuildContext, DriverConfigError, DriverError
from drivers.modbus import ModbusBus, ModbusMeter, build_meters
from drivers.meter_map import load_model
from tests.drivers.conftest import free_port
from tests.drivers.modbus_server import words

F32 = "f"

MODELS = {
    "sdm630": (
        {4: {0x0000: words(F32, 230.1) + words(F32, 229.8) + words(F32, 231.0),
             0x0006: words(F32, 16.0) + words(F32, 15.9) + words(F32, 16.1),
             0x0034: words(F32, 11040.0), 0x0046: words(F32, 50.01), 0x0048: words(F32, 1234.5)}},
        dict(energy_wh=1234500.0, power_w=11040.0, voltages_v=(230.1, 229.8, 231.0), currents_a=(16.0, 15.9, 16.1),
             frequency_hz=50.01),
    ),
    "sdm120": (
        {4: {0x0000: words(F32, 230.4), 0x0006: words(F32, 10.0), 0x000C: words(F32, 2304.0),
             0x0046: words(F32, 49.98), 0x0048: words(F32, 12.25)}},
        dict(energy_wh=12250.0, power_w=2304.0, voltages_v=(230.4,), currents_a=(10.0,), frequency_hz=49.98),
    ),
    "abb_b23": (
        {3: {0x5000: words("Q", 123456),  # 1234.56 kWh in 0.01 kWh
             0x5B00: words("I", 2301) + words("I", 2298) + words("I", 2310),  # 0.1 V
             0x5B0C: words("I", 1600) + words("I", 1590) + words("I", 1610),  # 0.01 A
             0x5B14: words("i", -150000),  # -1500.00 W (export): signed
             0x5B2C: words("H", 5001)}},  # 0.01 Hz
        dict(energy_wh=1234560.0, power_w=-1500.0, voltages_v=(230.1, 229.8, 231.0), currents_a=(16.0, 15.9, 16.1),
             frequency_hz=50.01),
    ),
    "em340": (
        {4: {0x0000: words("i", 2301, little=True) + words("i", 2298, little=True) + words("i", 2310, little=True),
             0x000C: words("i", 16000, little=True) + words("i", 15900, little=True) + words("i", 16100, little=True),
             0x0028: words("i", 110400, little=True),  # 0.1 W
             0x0033: words("h", 500),  # 0.1 Hz, one register
             0x0034: words("i", 12345, little=True)}},  # 0.1 kWh
        dict(energy_wh=1234500.0, power_w=11040.0, voltages_v=(230.1, 229.8, 231.0), currents_a=(16.0, 15.9, 16.1),
             frequency_hz=50.0),
    ),
    "custom": (
        {3: {100: words("I", 987654) + words("i", -12345) + words("H", 2305) + words("H", 1234)},
         4: {200: words(F32, 50.0) + words("h", -55)}},
        dict(energy_wh=987654.0, power_w=-1234.5, voltages_v=(230.5,), currents_a=(12.34,), frequency_hz=50.0,
             extra={"temperature_c": -5.5}),
    ),
}


def assert_reading(reading, expected):
    for name, want in expected.items():
        got = getattr(reading, name)
        if isinstance(want, dict):
            assert got == pytest.approx(want), name
        else:
            assert got == pytest.approx(want, rel=1e-6), name


@pytest.mark.parametrize("model", sorted(MODELS))
async def test_each_model_map_reads_engineering_values_over_tcp(modbus_tcp, model):
    registers, expected = MODELS[model]
    port = await modbus_tcp(registers, device_id=7)
    meters = await build_meters({"model": model, "transport": "tcp", "host": "127.0.0.1", "port": port,
                                 "device_id": 7, "shared": True}, [1, 2], BuildContext())
    assert meters[1] is meters[2]  # shared: one meter for both connectors
    reading = await meters[1].read()
    assert_reading(reading, expected)
    assert meters[1].last_good == reading
    await meters[1].close()


async def test_rtu_over_a_pty_pair(pty_pair):
    """Real RTU framing and CRC over a tty: ModbusSerialServer on one end, the driver on the other."""
    from pymodbus.server import ModbusSerialServer

    from tests.drivers.modbus_server import sim_device

    srv_path, cli_path = pty_pair
    registers, expected = MODELS["sdm630"]
    server = ModbusSerialServer(sim_device(registers, device_id=3), port=srv_path, baudrate=9600, parity="N",
                                stopbits=1, bytesize=8)
    await server.serve_forever(background=True)
    try:
        meters = await build_meters({"model": "sdm630", "transport": "rtu", "device": cli_path, "device_ids": {"1": 3}},
                                    [1], BuildContext())
        assert "9600 8N1, RTU" in meters[1].describe()
        assert_reading(await meters[1].read(), expected)
        await meters[1].close()
    finally:
        await server.shutdown()


async def test_two_meters_on_one_bus_share_the_connection(modbus_tcp):
    from pymodbus.server import ModbusTcpServer

    from tests.drivers.modbus_server import sim_device

    port = free_port()
    devices = [sim_device(MODELS["sdm630"][0], device_id=1),
               sim_device({4: {**MODELS["sdm630"][0][4], 0x0048: words(F32, 99.0)}}, device_id=2)]
    server = ModbusTcpServer(devices, address=("127.0.0.1", port))
    await server.serve_forever(background=True)
    try:
        meters = await build_meters({"transport": "tcp", "host": "127.0.0.1", "port": port,
                                     "device_ids": {"1": 1, "2": 2}}, [1, 2], BuildContext())
        assert meters[1].bus is meters[2].bus
        r1, r2 = await asyncio.gather(meters[1].read(), meters[2].read())  # serialised on the bus lock
        assert (r1.energy_wh, r2.energy_wh) == (1234500.0, 99000.0)
        for m in meters.values():
            await m.close()
    finally:
        await server.shutdown()


async def test_same_meter_for_two_connectors_needs_shared(modbus_tcp):
    port = await modbus_tcp(MODELS["sdm630"][0])
    with pytest.raises(DriverConfigError, match=r"drivers\.meter\.device_ids: connectors 1 and 2 would read the same"):
        await build_meters({"transport": "tcp", "host": "127.0.0.1", "port": port}, [1, 2], BuildContext())


@pytest.fixture
async def silent_port():
    """A socket that accepts connections and never answers (a meter dead on the bus)."""
    writers = []
    server = await asyncio.start_server(lambda r, w: writers.append(w), "127.0.0.1", 0)
    yield server.sockets[0].getsockname()[1]
    for w in writers:
        w.close()
    server.close()
    await server.wait_closed()


async def test_silent_meter_raises_driver_error_within_the_timeout(silent_port):
    bus = ModbusBus("tcp", host="127.0.0.1", port=silent_port, timeout_s=0.3)
    meter = ModbusMeter(bus, load_model("sdm630", None), 1, label="connector 1 meter")
    await bus.acquire()
    start = time.monotonic()
    with pytest.raises(DriverError, match=r"connector 1 meter: no answer from device 1 FC04 .* within 0\.3 s"):
        await meter.read()
    assert time.monotonic() - start < 0.3 + 1.0  # the outer guard is timeout + 1 s
    await meter.close()


async def test_silent_meter_at_start_fails_the_build(silent_port):
    start = time.monotonic()
    with pytest.raises(DriverError, match="no answer"):
        await build_meters({"transport": "tcp", "host": "127.0.0.1", "port": silent_port, "timeout_s": 0.3},
                           [1], BuildContext())
    assert time.monotonic() - start < 2.0


async def test_meter_that_goes_away_keeps_the_last_good_reading(modbus_tcp):
    from pymodbus.server import ModbusTcpServer

    from tests.drivers.modbus_server import sim_device

    port = free_port()
    server = ModbusTcpServer(sim_device(MODELS["sdm630"][0]), address=("127.0.0.1", port))
    await server.serve_forever(background=True)
    meters = await build_meters({"transport": "tcp", "host": "127.0.0.1", "port": port, "timeout_s": 0.3},
                                [1], BuildContext())
    good = await meters[1].read()
    await server.shutdown()
    with pytest.raises(DriverError):
        await meters[1].read()
    assert meters[1].last_good == good
    await meters[1].close()


async def test_modbus_exception_is_a_clear_driver_error(modbus_tcp):
    port = await modbus_tcp({4: {0x0000: [0, 0]}})  # an SDM630 map against a device that lacks the registers
    bus = ModbusBus("tcp", host="127.0.0.1", port=port, timeout_s=0.5)
    meter = ModbusMeter(bus, load_model("sdm630", None), 1, label="connector 1 meter")
    await bus.acquire()
    with pytest.raises(DriverError, match=r"Modbus exception 2 \(illegal data address\)"):
        await meter.read()
    await meter.close()


async def test_nobody_listening_is_a_clear_driver_error():
    with pytest.raises(DriverError, match=r"cannot open Modbus 127\.0\.0\.1:\d+ \(Modbus TCP\)"):
        await build_meters({"transport": "tcp", "host": "127.0.0.1", "port": free_port(), "timeout_s": 0.3},
                           [1], BuildContext())


async def test_missing_serial_adapter_is_named(tmp_path):
    with pytest.raises(DriverError, match=r"serial device .*ttyUSB9 not found \(is the USB RS-485 adapter plugged in\?\)"):
        await build_meters({"device": str(tmp_path / "ttyUSB9")}, [1], BuildContext())


@pytest.mark.parametrize("table, key", [
    ({"transport": "tcp"}, r"drivers\.meter\.host: required"),
    ({"transport": "udp"}, r"drivers\.meter\.transport: 'udp' is not one of"),
    ({"model": "sdm999"}, r"drivers\.meter\.model: unknown model 'sdm999'"),
    ({"model": "sdm630", "model_file": "/x.toml"}, r"drivers\.meter\.model_file: set either"),
    ({"model_file": "/nonexistent/meter.toml"}, r"drivers\.meter\.model_file: cannot read"),
    ({"transport": "tcp", "host": "h", "device_ids": {"1": 300}, "shared": False}, r"drivers\.meter\.device_ids\.1"),
    ({"parity": "X"}, r"drivers\.meter\.parity"),
])
async def test_bad_meter_config_names_the_key(table, key):
    with pytest.raises(DriverConfigError, match=key):
        await build_meters(table, [1], BuildContext())


async def test_meter_recovers_when_it_answers_again():
    from pymodbus.server import ModbusTcpServer

    from tests.drivers.modbus_server import sim_device

    port = free_port()
    server = ModbusTcpServer(sim_device(MODELS["sdm630"][0]), address=("127.0.0.1", port))
    await server.serve_forever(background=True)
    meters = await build_meters({"transport": "tcp", "host": "127.0.0.1", "port": port, "timeout_s": 0.3},
                                [1], BuildContext())
    await server.shutdown()
    with pytest.raises(DriverError):
        await meters[1].read()
    server = ModbusTcpServer(sim_device(MODELS["sdm630"][0]), address=("127.0.0.1", port))
    await server.serve_forever(background=True)
    reading = None
    try:
        for _ in range(50):  # the client reconnects on the next read; allow a few on a loaded machine
            try:
                reading = await meters[1].read()
                break
            except DriverError:
                await asyncio.sleep(0.1)
        assert reading is not None and reading.energy_wh == 1234500.0
    finally:
        await meters[1].close()
        await server.shutdown()
