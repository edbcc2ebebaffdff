"""Typed access to one ``[drivers.<kind>]`` table, with errors that name the offending key.

Every backend reads its settings through ``KindTable`` so a typo (``activ_high``) or a
wrong type is a ``DriverConfigError("drivers.relay.activ_high: unknown key ...")``
at start-up, never a silent default on a unit wired to mains.
"""

from __future__ import annotations

import math
from typing import Any, Iterable, Mapping

from drivers.base import DriverConfigError

# Keys every kind understands; the backend adds its own.
COMMON_KEYS = frozenset({"backend", "strict"})

# The default pin map (BCM numbering) documented in hw-docs/pin-map.md. Relay coils sit on
# GPIO5/6 because GPIO0-8 idle with a weak pull-UP at boot: an active-low relay board stays
# off before the service claims the pins (hardware-and-ops.md section 4).
DEFAULT_PINS: dict[str, dict[int, int]] = {
    "relay": {1: 5, 2: 6},
    "relay_feedback": {1: 23, 2: 24},
    "ev_present": {1: 17, 2: 27},
    "pilot": {1: 12, 2: 13},  # the two hardware-PWM capable pins (PWM0/PWM1)
}


class KindTable:
    def __init__(self, kind: str, table: Any) -> None:
        if table is None:
            table = {}
        if not isinstance(table, Mapping):
            raise DriverConfigError(f"drivers.{kind}: must be a table, got {type(table).__name__}")
        self.kind = kind
        self.data: dict[str, Any] = dict(table)

    def key(self, name: str) -> str:
        return f"drivers.{self.kind}.{name}"

    def check_keys(self, allowed: Iterable[str]) -> None:
        allowed = set(allowed) | COMMON_KEYS
        unknown = sorted(set(self.data) - allowed)
        if unknown:
            raise DriverConfigError(
                f"{self.key(unknown[0])}: unknown key (known: {', '.join(sorted(allowed))})"
            )

    def get_str(self, name: str, default: str | None, choices: Iterable[str] | None = None) -> str | None:
        value = self.data.get(name, default)
        if value is None:
            return None
        if not isinstance(value, str):
            raise DriverConfigError(f"{self.key(name)}: must be a string, got {value!r}")
        if choices is not None and value not in set(choices):
            raise DriverConfigError(f"{self.key(name)}: {value!r} is not one of {', '.join(sorted(choices))}")
        return value

    def get_bool(self, name: str, default: bool) -> bool:
        value = self.data.get(name, default)
        if not isinstance(value, bool):
            raise DriverConfigError(f"{self.key(name)}: must be true or false, got {value!r}")
        return value

    def get_float(self, name: str, default: float, *, minimum: float | None = None) -> float:
        value = self.data.get(name, default)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise DriverConfigError(f"{self.key(name)}: must be a number, got {value!r}")
        if minimum is not None and value < minimum:
            raise DriverConfigError(f"{self.key(name)}: must be >= {minimum:g}, got {value!r}")
        return float(value)

    def get_int(self, name: str, default: int | None, *, minimum: int | None = None, maximum: int | None = None) -> int | None:
        value = self.data.get(name, default)
        if value is None:
            return None
        return _int_in_range(self.key(name), value, minimum, maximum)

    def connector_map(self, name: str, connectors: Iterable[int], default: Mapping[int, Any] | None) -> dict[int, Any]:
        """A ``{1 = ..., 2 = ...}`` table keyed by connector id (TOML keys are strings)."""
        raw = self.data.get(name, default)
        if raw is None:
            return {}
        if not isinstance(raw, Mapping):
            raise DriverConfigError(f"{self.key(name)}: must be a table like {{ 1 = 5, 2 = 6 }}, got {raw!r}")
        wanted = set(connectors)
        out: dict[int, Any] = {}
        for k, v in raw.items():
            try:
                cid = int(k)
            except (TypeError, ValueError):
                raise DriverConfigError(f"{self.key(name)}.{k}: keys must be connector ids (1, 2, ...)") from None
            if cid not in wanted:
                # Stale entries for connectors this station does not have are ignored on purpose:
                # the default map covers two connectors and a 1-connector unit must still start.
                continue
            out[cid] = v
        return out

    def pins(self, name: str, connectors: Iterable[int], default: Mapping[int, int] | None, *, required: bool) -> dict[int, int]:
        """BCM pin numbers per connector; ``required`` means every connector needs one."""
        connectors = list(connectors)
        raw = self.connector_map(name, connectors, default)
        pins = {cid: _int_in_range(f"{self.key(name)}.{cid}", pin, 0, 27) for cid, pin in raw.items()}
        if required:
            missing = [c for c in connectors if c not in pins]
            if missing:
                raise DriverConfigError(f"{self.key(name)}.{missing[0]}: no pin for connector {missing[0]}")
        return pins


def check_distinct_pins(groups: Mapping[str, Mapping[int, int]]) -> None:
    """Two functions on one GPIO would fight each other; say which keys collide."""
    seen: dict[int, str] = {}
    for key, pins in groups.items():
        for cid, pin in pins.items():
            where = f"{key}.{cid}"
            if pin in seen:
                raise DriverConfigError(f"{where}: GPIO{pin} is already used by {seen[pin]}")
            seen[pin] = where


def _int_in_range(key: str, value: Any, minimum: int | None, maximum: int | None) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise DriverConfigError(f"{key}: must be an integer, got {value!r}")
    if (minimum is not None and value < minimum) or (maximum is not None and value > maximum):
        raise DriverConfigError(f"{key}: {value} is out of range {minimum}..{maximum}")
    return value
