"""Meter values: turning a reading into OCPP sampledValues.

Pure. A reading is the ``drivers.base.MeterReading`` the runtime polled; here it is
only read, never produced.
"""

from __future__ import annotations

from typing import Any

# measurand -> (reading attribute, unit, location)
MEASURANDS: dict[str, tuple[str, str | None, str | None]] = {
    "Energy.Active.Import.Register": ("energy_wh", "Wh", "Outlet"),
    "Power.Active.Import": ("power_w", "W", "Outlet"),
    "Current.Import": ("current_a", "A", "Outlet"),
    "Voltage": ("voltage_v", "V", "Outlet"),
    "Frequency": ("frequency_hz", None, "Outlet"),  # 1.6 UnitOfMeasure has no Hz: unit omitted
    "SoC": ("soc_percent", "Percent", "EV"),
    "Current.Offered": ("current_offered_a", "A", "Outlet"),
    "Power.Offered": ("power_offered_w", "W", "Outlet"),
}

DEFAULT_MEASURAND = "Energy.Active.Import.Register"  # an empty list means the register (TC_070)


def reading_values(reading: Any, offered_a: float | None, offered_w: float | None) -> dict[str, float]:
    """Flatten a MeterReading plus what the station offers into measurand -> value."""
    values: dict[str, float] = {}
    if reading is None:
        return values
    for measurand, (attr, _unit, _loc) in MEASURANDS.items():
        if attr == "current_offered_a":
            value = offered_a
        elif attr == "power_offered_w":
            value = offered_w
        else:
            value = getattr(reading, attr, None)
        if value is not None:
            values[measurand] = float(value)
    return values


def fmt(value: float) -> str:
    text = f"{value:.3f}".rstrip("0").rstrip(".")
    return text if text not in ("", "-0") else "0"


def sampled_values(values: dict[str, float], measurands: list[str], context: str) -> list[dict]:
    """sampledValue list for the configured measurands (every configured one that the
    meter can supply; an empty configuration means the energy register)."""
    wanted = measurands or [DEFAULT_MEASURAND]
    out = []
    for measurand in wanted:
        if measurand not in values:
            continue
        _attr, unit, location = MEASURANDS[measurand]
        sv = {"value": fmt(values[measurand]), "context": context, "format": "Raw", "measurand": measurand}
        if location:
            sv["location"] = location
        if unit:
            sv["unit"] = unit
        out.append(sv)
    return out
