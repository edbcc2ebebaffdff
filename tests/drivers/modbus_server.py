"""A real pymodbus server on loopback (TCP) or on a pty (RTU) serving hand-written registers."""

from __future__ import annotations

import struct
from typing import Mapping

from pymodbus.simulator import DataType, SimData, SimDevice


def words(fmt: str, value: float, *, little: bool = False) -> list[int]:
    """Encode like a meter does, with struct (independent of drivers.meter_map): big-endian
    bytes in each register, words high-first unless ``little``."""
    raw = struct.pack(">" + fmt, value)
    w = [int.from_bytes(raw[i:i + 2], "big") for i in range(0, len(raw), 2)]
    return list(reversed(w)) if little else w


def sim_device(registers: Mapping[int, Mapping[int, list[int]]], device_id: int = 1) -> SimDevice:
    """``registers[fc][address] = [words]`` -> a SimDevice (fc 3 holding, 4 input).

    Adjacent entries are merged into one SimData block; gaps stay unmapped (exception 2).
    """
    blocks: dict[int, list[SimData]] = {3: [], 4: []}
    for fc, table in registers.items():
        flat: dict[int, int] = {}
        for addr, ws in table.items():
            for i, w in enumerate(ws):
                flat[addr + i] = w
        run_start, run = None, []
        for addr in sorted(flat):
            if run_start is not None and addr == run_start + len(run):
                run.append(flat[addr])
                continue
            if run:
                blocks[fc].append(SimData(run_start, values=run, datatype=DataType.UINT16))
            run_start, run = addr, [flat[addr]]
        if run:
            blocks[fc].append(SimData(run_start, values=run, datatype=DataType.UINT16))
    # pymodbus 3.16.1 SimDevice rejects an empty block list; a lone register far away is harmless.
    filler = [SimData(0xFFF0, values=[0], datatype=DataType.UINT16)]
    bits = [SimData(0, values=[0], datatype=DataType.BITS)]
    return SimDevice(id=device_id, simdata=(bits, bits, blocks[3] or filler, blocks[4] or filler))
