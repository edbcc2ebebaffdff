"""pymodbus meter backend: Modbus RTU (RS-485) or TCP meters described by a register-map file.

pymodbus is imported lazily (``hw`` extra). Meters on one bus (one serial port, or one
TCP endpoint) share a connection, and requests on it are serialised: RS-485 is half
duplex and a second master request would garble the first.

A meter that does not answer raises DriverError within ``timeout_s``; the station then
reports PowerMeterFailure and keeps the last good register for billing (issue 6), and
``ModbusMeter.last_good`` holds it here as well.
"""

from __future__ import annotations

import asyncio
import importlib.util
import logging
import os
from typing import Any

from drivers.base import BuildContext, DriverConfigError, DriverError, MeterReading
from drivers.config import KindTable
from drivers.meter_map import MeterMap, load_model

log = logging.getLogger(__name__)

INSTALL_HINT = "pip install 'ocpp-twin[hw]'"
DEFAULT_TIMEOUT_S = 1.0

# Modbus exception codes (Modbus Application Protocol v1.1b3, section 7).
MODBUS_EXCEPTIONS = {
    1: "illegal function", 2: "illegal data address", 3: "illegal data value", 4: "device failure",
    5: "acknowledge", 6: "device busy", 10: "gateway path unavailable", 11: "gateway target did not respond",
}


def _pymodbus() -> Any:
    try:
        import pymodbus.client
        import pymodbus.exceptions  # noqa: F401
    except ImportError as exc:
        raise DriverError(f"the pymodbus package is not installed ({exc}); {INSTALL_HINT}") from exc
    return pymodbus


class ModbusBus:
    """One Modbus connection, shared by every meter behind it."""

    def __init__(self, transport: str, *, host: str | None = None, port: int = 502, device: str | None = None,
                 baudrate: int = 9600, parity: str = "N", stopbits: int = 1, bytesize: int = 8,
                 timeout_s: float = DEFAULT_TIMEOUT_S) -> None:
        self.transport = transport
        self.host, self.port, self.device = host, port, device
        self.baudrate, self.parity, self.stopbits, self.bytesize = baudrate, parity, stopbits, bytesize
        self.timeout_s = timeout_s
        self._client: Any = None
        self._lock = asyncio.Lock()
        self._users = 0

    @property
    def label(self) -> str:
        if self.transport == "rtu":
            return f"{self.device} ({self.baudrate} {self.bytesize}{self.parity}{self.stopbits}, RTU)"
        framing = "RTU over TCP" if self.transport == "rtu_over_tcp" else "Modbus TCP"
        return f"{self.host}:{self.port} ({framing})"

    def _make_client(self) -> Any:
        pm = _pymodbus()
        from pymodbus import FramerType

        common = dict(timeout=self.timeout_s, retries=0, reconnect_delay=0.5, reconnect_delay_max=30)
        if self.transport == "rtu":
            if not self.device or not os.path.exists(self.device):
                raise DriverError(f"serial device {self.device} not found (is the USB RS-485 adapter plugged in?)")
            if importlib.util.find_spec("serial") is None:  # pyserial, from pymodbus[serial]
                raise DriverError(f"pyserial is not installed, RTU needs it; {INSTALL_HINT}")
            return pm.client.AsyncModbusSerialClient(
                self.device, framer=FramerType.RTU, baudrate=self.baudrate, parity=self.parity,
                stopbits=self.stopbits, bytesize=self.bytesize, **common)
        framer = FramerType.RTU if self.transport == "rtu_over_tcp" else FramerType.SOCKET
        return pm.client.AsyncModbusTcpClient(self.host, port=self.port, framer=framer, **common)

    async def acquire(self) -> None:
        self._users += 1
        await self._ensure_connected()

    async def _ensure_connected(self) -> None:
        if self._client is None:
            self._client = self._make_client()
        if self._client.connected:
            return
        try:
            ok = await asyncio.wait_for(self._client.connect(), self.timeout_s + 1.0)
        except (asyncio.TimeoutError, OSError) as exc:
            ok, why = False, f"{type(exc).__name__} {exc}".strip()
        else:
            why = "connection refused or port not available"
        if not ok:
            raise DriverError(f"cannot open Modbus {self.label}: {why}")

    async def read(self, function_code: int, start: int, count: int, device_id: int) -> list[int]:
        pm = _pymodbus()
        async with self._lock:
            await self._ensure_connected()
            call = (self._client.read_holding_registers if function_code == 3 else self._client.read_input_registers)
            what = f"device {device_id} FC{function_code:02d} {start:#06x}+{count} on {self.label}"
            try:
                # pymodbus enforces timeout_s itself (retries=0); the outer bound only guards against a hang.
                rr = await asyncio.wait_for(call(start, count=count, device_id=device_id), self.timeout_s + 1.0)
            except (asyncio.TimeoutError, pm.exceptions.ModbusException, OSError) as exc:
                raise DriverError(f"no answer from {what} within {self.timeout_s:g} s ({type(exc).__name__})") from exc
        if rr.isError():
            code = getattr(rr, "exception_code", None)
            raise DriverError(f"{what}: Modbus exception {code} ({MODBUS_EXCEPTIONS.get(code, 'unknown')})")
        regs = list(rr.registers)
        if len(regs) < count:
            raise DriverError(f"{what}: short answer, {len(regs)} registers")
        return regs[:count]

    async def release(self) -> None:
        self._users -= 1
        if self._users <= 0 and self._client is not None:
            client, self._client = self._client, None
            client.close()


class ModbusMeter:
    def __init__(self, bus: ModbusBus, meter_map: MeterMap, device_id: int, *, label: str) -> None:
        self.bus = bus
        self.map = meter_map
        self.device_id = device_id
        self.label = label
        self.last_good: MeterReading | None = None

    async def read(self) -> MeterReading:
        regs: dict[int, dict[int, int]] = {3: {}, 4: {}}
        try:
            for block in self.map.blocks:
                words = await self.bus.read(block.function_code, block.start, block.count, self.device_id)
                regs[block.function_code].update(zip(range(block.start, block.start + block.count), words))
        except DriverError as exc:
            raise DriverError(f"{self.label}: {exc}") from exc
        reading = self.map.decode(regs)
        self.last_good = reading
        return reading

    async def close(self) -> None:
        await self.bus.release()

    def describe(self) -> str:
        return f"{self.label}: {self.map.name}, id {self.device_id} on {self.bus.label}"


# --- factory (see drivers.base.BuildContext) --------------------------------------------------

CONFIG_KEYS = frozenset({
    "model", "model_file", "models", "transport", "device", "baudrate", "parity", "stopbits", "bytesize",
    "host", "port", "hosts", "device_id", "device_ids", "shared", "timeout_s",
})


async def build_meters(table: dict, connectors: list[int], ctx: BuildContext) -> dict[int, ModbusMeter]:
    _pymodbus()
    t = KindTable("meter", table)
    maps = _maps_per_connector(t, connectors)
    first_map = maps[connectors[0]]
    transport = t.get_str("transport", "rtu", choices=("rtu", "tcp", "rtu_over_tcp"))
    timeout = t.get_float("timeout_s", DEFAULT_TIMEOUT_S, minimum=0.05)
    shared = t.get_bool("shared", False)
    owners = connectors[:1] if shared else connectors
    ids = t.connector_map("device_ids", connectors, None)
    hosts = t.connector_map("hosts", connectors, None)
    default_id = t.get_int("device_id", first_map.serial.get("device_id", 1), minimum=1, maximum=247)

    buses: dict[tuple, ModbusBus] = {}
    meters: dict[int, ModbusMeter] = {}
    seen: dict[tuple, int] = {}
    for cid in owners:
        bus_args = _bus_args(t, transport, maps[cid], hosts.get(cid), timeout, cid)
        key = tuple(sorted(bus_args.items()))
        bus = buses.setdefault(key, ModbusBus(transport, **bus_args))
        dev_id = _device_id(t, ids.get(cid, default_id), cid)
        where = (key, dev_id)
        if where in seen:
            raise DriverConfigError(
                f"{t.key('device_ids')}: connectors {seen[where]} and {cid} would read the same meter "
                f"(id {dev_id} on {bus.label}); give each its own device id, or set shared = true")
        seen[where] = cid
        label = "shared meter" if shared else f"connector {cid} meter"
        meters[cid] = ModbusMeter(bus, maps[cid], dev_id, label=label)
    acquired: list[ModbusMeter] = []
    try:
        for m in meters.values():
            acquired.append(m)
            await m.bus.acquire()
            try:
                await m.read()  # the meter must answer now: a named backend refuses to start, "auto" falls back
            except DriverError as exc:
                raise DriverError(f"{exc}; check {_what_to_check(m.bus)} (hw-docs/meter-setup.md)") from exc
    except BaseException:
        for m in acquired:
            await m.bus.release()
        raise
    if shared:
        return {c: meters[owners[0]] for c in connectors}
    return meters


build_meters.config_keys = CONFIG_KEYS  # type: ignore[attr-defined]


def _what_to_check(bus: ModbusBus) -> str:
    if bus.transport == "rtu":
        return "the meter's power, the A/B wiring and termination, its address, baud rate and parity, and that model matches it"
    return "the meter or gateway's power, the host and port, the device id, and that model matches the meter"


def _maps_per_connector(t: KindTable, connectors: list[int]) -> dict[int, MeterMap]:
    model = t.get_str("model", None)
    model_file = t.get_str("model_file", None)
    if model and model_file:
        raise DriverConfigError(f"{t.key('model_file')}: set either model or model_file, not both")
    base = load_model(model, model_file)
    per = t.connector_map("models", connectors, None)
    out = {}
    for cid in connectors:
        name = per.get(cid)
        if name is not None and not isinstance(name, str):
            raise DriverConfigError(f"{t.key('models')}.{cid}: must be a model name, got {name!r}")
        out[cid] = load_model(name, None) if name else base
    return out


def _bus_args(t: KindTable, transport: str | None, mm: MeterMap, host: Any, timeout: float, cid: int) -> dict[str, Any]:
    if transport == "rtu":
        parity = t.get_str("parity", mm.serial.get("parity", "N"), choices=("N", "E", "O"))
        return {
            "device": t.get_str("device", "/dev/ttyUSB0"),
            "baudrate": t.get_int("baudrate", mm.serial.get("baudrate", 9600), minimum=300, maximum=921600),
            "parity": parity,
            "stopbits": t.get_int("stopbits", mm.serial.get("stopbits", 1), minimum=1, maximum=2),
            "bytesize": t.get_int("bytesize", mm.serial.get("bytesize", 8), minimum=7, maximum=8),
            "timeout_s": timeout,
        }
    host = host if host is not None else t.get_str("host", None)
    if not isinstance(host, str) or not host:
        raise DriverConfigError(f"{t.key('host')}: required for transport = {transport!r} (connector {cid})")
    return {"host": host, "port": t.get_int("port", 502, minimum=1, maximum=65535), "timeout_s": timeout}


def _device_id(t: KindTable, value: Any, cid: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 247:
        raise DriverConfigError(f"{t.key('device_ids')}.{cid}: Modbus device id must be 1..247, got {value!r}")
    return value
