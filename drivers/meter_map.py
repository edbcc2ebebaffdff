"""Meter register maps: load a ``drivers/meters/*.toml`` data file, plan the reads, decode.

Pure (no pymodbus): a map is data, so adding a meter model is adding a file, not code
(hw-docs/meter-setup.md explains the format). Decoding is done here with ``struct``:
Modbus registers are 16-bit big-endian; only the order of the *words* in a 32/64-bit
value differs between vendors (Eastron/ABB high word first, Carlo Gavazzi low word first).
"""

from __future__ import annotations

import math
import struct
import tomllib
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Mapping

from drivers.base import DriverConfigError, DriverError, MeterReading

# data type -> (struct code, register count)
DATA_TYPES: dict[str, tuple[str, int]] = {
    "int16": ("h", 1), "uint16": ("H", 1),
    "int32": ("i", 2), "uint32": ("I", 2),
    "int64": ("q", 4), "uint64": ("Q", 4),
    "float32": ("f", 2), "float64": ("d", 4),
}
FUNCTION_CODES = {3: "holding", 4: "input"}
WORD_ORDERS = ("big", "little")

# Field names the station understands; anything else lands in MeterReading.extra.
PHASE_FIELDS = {
    "voltage": ("voltage_l1_v", "voltage_l2_v", "voltage_l3_v"),
    "current": ("current_l1_a", "current_l2_a", "current_l3_a"),
}
SCALAR_FIELDS = ("energy_import_wh", "power_w", "frequency_hz")
REQUIRED_FIELD = "energy_import_wh"  # Energy.Active.Import.Register: billing needs it (errata 3.9)

MAP_KEYS = {"name", "function_code", "data_type", "word_order", "max_registers_per_read",
            "invalid_all_ones", "phases", "serial", "registers"}
FIELD_KEYS = {"address", "function_code", "data_type", "word_order", "scale"}
SERIAL_KEYS = {"baudrate", "parity", "stopbits", "bytesize", "device_id"}


@dataclass(frozen=True)
class Field:
    name: str
    address: int
    function_code: int
    data_type: str
    word_order: str
    scale: float

    @property
    def count(self) -> int:
        return DATA_TYPES[self.data_type][1]


@dataclass(frozen=True)
class Block:
    """One Modbus request: ``count`` registers from ``start`` with function code ``function_code``."""

    function_code: int
    start: int
    count: int
    fields: tuple[Field, ...]


@dataclass
class MeterMap:
    name: str
    source: str  # the file it came from, for messages
    fields: dict[str, Field]
    phases: int = 3
    max_registers_per_read: int = 80  # Eastron: no more than 40 parameters (80 registers) per request
    invalid_all_ones: bool = False  # ABB: a value of all 0xFFFF words means "not available"
    serial: dict[str, Any] = field(default_factory=dict)  # factory defaults, used when the config omits them
    blocks: list[Block] = field(default_factory=list)

    def decode(self, registers: Mapping[int, Mapping[int, int]]) -> MeterReading:
        """``registers[fc][address] = raw word`` -> a reading in engineering units."""
        values: dict[str, float] = {}
        for f in self.fields.values():
            try:
                words = [registers[f.function_code][f.address + i] for i in range(f.count)]
            except KeyError:
                raise DriverError(f"{self.name}: register {f.address:#06x} ({f.name}) was not read") from None
            value = decode_words(words, f.data_type, f.word_order, invalid_all_ones=self.invalid_all_ones)
            if value is not None:
                values[f.name] = value * f.scale
        energy = values.get(REQUIRED_FIELD)
        if energy is None or not math.isfinite(energy) or energy < 0:
            raise DriverError(f"{self.name}: import energy register reads {energy!r}, not a valid count")
        volts = _phase_values(values, "voltage", self.phases)
        amps = _phase_values(values, "current", self.phases)
        known = set(SCALAR_FIELDS) | {n for names in PHASE_FIELDS.values() for n in names}
        return MeterReading(
            energy_wh=energy,
            power_w=values.get("power_w"),
            current_a=amps[0] if amps else None,
            voltage_v=volts[0] if volts else None,
            frequency_hz=values.get("frequency_hz"),
            currents_a=amps,
            voltages_v=volts,
            extra={k: v for k, v in values.items() if k not in known},
        )


def _phase_values(values: Mapping[str, float], quantity: str, phases: int) -> tuple[float, ...] | None:
    names = PHASE_FIELDS[quantity][:phases]
    if not all(n in values for n in names):
        return None
    return tuple(values[n] for n in names)


def decode_words(words: list[int], data_type: str, word_order: str, *, invalid_all_ones: bool = False) -> float | None:
    """Decode 16-bit words to a number; None when the meter marks it invalid (all ones)."""
    code, count = DATA_TYPES[data_type]
    if len(words) != count:
        raise ValueError(f"{data_type} needs {count} registers, got {len(words)}")
    if invalid_all_ones and all(w == 0xFFFF for w in words):
        return None
    ordered = words if word_order == "big" else list(reversed(words))
    raw = b"".join(struct.pack(">H", w & 0xFFFF) for w in ordered)
    return float(struct.unpack(">" + code, raw)[0])


def encode_value(value: float, data_type: str, word_order: str) -> list[int]:
    """The inverse of ``decode_words``: what a meter would put in its registers (tests, simulators)."""
    code, _ = DATA_TYPES[data_type]
    packed = struct.pack(">" + code, value if code in "fd" else int(round(value)))
    words = [struct.unpack(">H", packed[i:i + 2])[0] for i in range(0, len(packed), 2)]
    return words if word_order == "big" else list(reversed(words))


def plan_blocks(fields: list[Field], max_registers: int) -> list[Block]:
    """Merge fields that sit back to back into as few requests as possible.

    Only exactly adjacent registers are merged: reading a gap may hit an unmapped register,
    which some meters answer with exception 2 (illegal data address).
    """
    blocks: list[Block] = []
    for f in sorted(fields, key=lambda f: (f.function_code, f.address)):
        last = blocks[-1] if blocks else None
        if (last is not None and last.function_code == f.function_code and last.start + last.count == f.address
                and last.count + f.count <= max_registers):
            blocks[-1] = Block(last.function_code, last.start, last.count + f.count, last.fields + (f,))
        else:
            blocks.append(Block(f.function_code, f.address, f.count, (f,)))
    return blocks


# --- loading ----------------------------------------------------------------------------------


def builtin_models() -> list[str]:
    return sorted(p.name[:-5] for p in _maps_dir().iterdir() if p.name.endswith(".toml"))


def _maps_dir() -> Any:
    return resources.files("drivers").joinpath("meters")


def load_model(model: str | None, model_file: str | None) -> MeterMap:
    """Load a built-in model by name (``sdm630``) or a map file by path; errors name file and key."""
    if model_file:
        path = Path(model_file)
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise DriverConfigError(f"drivers.meter.model_file: cannot read {path}: {exc.strerror or exc}") from exc
        return parse_map(text, str(path))
    name = model or "sdm630"
    if name not in builtin_models():
        raise DriverConfigError(f"drivers.meter.model: unknown model {name!r} (built in: {', '.join(builtin_models())}; "
                                f"or set model_file to your own map)")
    text = _maps_dir().joinpath(f"{name}.toml").read_text(encoding="utf-8")
    return parse_map(text, f"drivers/meters/{name}.toml")


def parse_map(text: str, source: str) -> MeterMap:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise DriverConfigError(f"{source}: not valid TOML: {exc}") from exc
    _check_keys(source, "", data, MAP_KEYS)
    name = _typed(source, "name", data.get("name", Path(source).stem), str)
    defaults = {
        "function_code": data.get("function_code", 4),
        "data_type": data.get("data_type", "float32"),
        "word_order": data.get("word_order", "big"),
        "scale": 1.0,
    }
    regs = data.get("registers")
    if not isinstance(regs, dict) or not regs:
        raise DriverConfigError(f"{source}: registers: a [registers] table with at least {REQUIRED_FIELD} is required")
    fields = {fname: _parse_field(source, fname, spec, defaults) for fname, spec in regs.items()}
    if REQUIRED_FIELD not in fields:
        raise DriverConfigError(f"{source}: registers.{REQUIRED_FIELD}: missing (the import energy register is mandatory)")
    phases = _typed(source, "phases", data.get("phases", 3), int)
    if phases not in (1, 3):
        raise DriverConfigError(f"{source}: phases: must be 1 or 3, got {phases}")
    max_regs = _typed(source, "max_registers_per_read", data.get("max_registers_per_read", 80), int)
    if not 1 <= max_regs <= 125:  # 125 = Modbus PDU limit for FC03/FC04
        raise DriverConfigError(f"{source}: max_registers_per_read: must be 1..125, got {max_regs}")
    serial = data.get("serial", {})
    if not isinstance(serial, dict):
        raise DriverConfigError(f"{source}: serial: must be a table")
    _check_keys(source, "serial.", serial, SERIAL_KEYS)
    too_big = [f for f in fields.values() if f.count > max_regs]
    if too_big:
        raise DriverConfigError(f"{source}: registers.{too_big[0].name}: wider than max_registers_per_read")
    mm = MeterMap(name=name, source=source, fields=fields, phases=phases, max_registers_per_read=max_regs,
                  invalid_all_ones=_typed(source, "invalid_all_ones", data.get("invalid_all_ones", False), bool),
                  serial=dict(serial))
    mm.blocks = plan_blocks(list(fields.values()), max_regs)
    return mm


def _parse_field(source: str, fname: str, spec: Any, defaults: Mapping[str, Any]) -> Field:
    where = f"registers.{fname}"
    if not isinstance(spec, dict):
        raise DriverConfigError(f"{source}: {where}: must be a table like {{ address = 0x0048, scale = 1000 }}")
    _check_keys(source, where + ".", spec, FIELD_KEYS)
    merged = {**defaults, **spec}
    if "address" not in spec:
        raise DriverConfigError(f"{source}: {where}.address: missing")
    address = _typed(source, where + ".address", merged["address"], int)
    if not 0 <= address <= 0xFFFF:
        raise DriverConfigError(f"{source}: {where}.address: {address} is outside 0..65535 (use the 0-based wire address)")
    fc = _typed(source, where + ".function_code", merged["function_code"], int)
    if fc not in FUNCTION_CODES:
        raise DriverConfigError(f"{source}: {where}.function_code: {fc} is not 3 (holding) or 4 (input)")
    dt = _typed(source, where + ".data_type", merged["data_type"], str)
    if dt not in DATA_TYPES:
        raise DriverConfigError(f"{source}: {where}.data_type: {dt!r} is not one of {', '.join(DATA_TYPES)}")
    wo = _typed(source, where + ".word_order", merged["word_order"], str)
    if wo not in WORD_ORDERS:
        raise DriverConfigError(f"{source}: {where}.word_order: {wo!r} is not 'big' (high word first) or 'little'")
    scale = merged["scale"]
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not math.isfinite(scale) or scale == 0:
        raise DriverConfigError(f"{source}: {where}.scale: must be a non-zero number, got {scale!r}")
    return Field(fname, address, fc, dt, wo, float(scale))


def _check_keys(source: str, prefix: str, data: Mapping[str, Any], allowed: set[str]) -> None:
    unknown = sorted(set(data) - allowed)
    if unknown:
        raise DriverConfigError(f"{source}: {prefix}{unknown[0]}: unknown key (known: {', '.join(sorted(allowed))})")


def _typed(source: str, key: str, value: Any, typ: type) -> Any:
    if isinstance(value, bool) and typ is not bool or not isinstance(value, typ):
        raise DriverConfigError(f"{source}: {key}: must be {typ.__name__}, got {value!r}")
    return value
