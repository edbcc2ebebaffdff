"""Charger profiles: one TOML data file per charger model.

A profile says what a model *is*: its BootNotification identity, its connectors and
rating, the configuration keys it has with their values and the access it reports,
and its quirks (behaviour that differs between models). The OCPP definitions of the
keys (type, range, what access the spec allows) stay in :mod:`twin.core.keys`; a
profile can only choose within them. ``iEVQC33.toml`` beside this module is the
default; ``examples/`` holds a second model. The format is in docs/profiles.md.

Every problem is a :class:`ProfileError` (a :class:`twin.config.ConfigError`) whose
text is ``<file>: <table>.<key>: <problem>``; unknown tables and keys are errors.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass, fields
from importlib import resources
from pathlib import Path
from types import MappingProxyType
from typing import Any

from twin.config import IDENTITY_FIELDS, ConfigError, read_toml
from twin.core.keys import KeyConfigError, check_key_profile
from twin.core.limits import MIN_CHARGING_CURRENT_A

DEFAULT_PROFILE = "iEVQC33.toml"
# BootNotification.req fields that describe the model; chargePointVendor and
# chargePointModel are required by the schema (SPEC §6.3). The serial numbers, iccid,
# imsi and meterSerialNumber describe one unit: they belong in the station TOML.
MODEL_IDENTITY_FIELDS = ("chargePointVendor", "chargePointModel", "meterType")
REQUIRED_IDENTITY_FIELDS = ("chargePointVendor", "chargePointModel")
ACCESS = ("R", "RW", "W")  # W: write-only (AuthorizationKey, WP3 §7.2)
_UNLOCK_KEY = "UnlockConnectorOnEVSideDisconnect"


class ProfileError(ConfigError):
    """A bad charger profile: ``str()`` is ``<file>: <table>.<key>: <problem>``."""


@dataclass(frozen=True)
class Quirks:
    """Behaviour that differs between models. The defaults are what the spec and the
    errata say, so a profile lists only where its model departs from them."""

    # GetCompositeSchedule.conf carries chargingSchedule.startSchedule, which ERRATA
    # 3.57 says to omit; some CSMSs expect it.
    composite_start_schedule: bool = False
    # TriggerMessage(MeterValues) for connectorId 0 is Accepted and answered with the
    # whole station's readings, without transactionId (ERRATA 3.16). False: Rejected,
    # as §6.51 types connectorId > 0 (the spec is ambiguous here).
    trigger_meter_values_connector_0: bool = False
    # A fixed-cable station reports UnlockConnectorOnEVSideDisconnect with a value and
    # access of its own choosing; without this quirk ERRATA 3.84 applies (false, R).
    unlock_key_writable_with_fixed_cable: bool = False


QUIRKS = tuple(f.name for f in fields(Quirks))


@dataclass(frozen=True)
class ChargerProfile:
    """One charger model, as loaded and checked from its profile file."""

    source: str  # the file it was read from, for logs
    identity: Mapping[str, str]  # BootNotification fields of the model (no firmwareVersion)
    connectors: int  # also the NumberOfConnectors key
    fixed_cable: bool
    max_current_a: float  # rating of each connector, A per phase
    voltage: float  # supply voltage, phase to neutral (W <-> A, errata 3.69)
    phases: int
    key_values: Mapping[str, str]  # canonical key name -> normalized OCPP value
    key_access: Mapping[str, str]  # canonical key name -> "R" | "RW" | "W"
    quirks: Quirks


def load_profile(path: str | Path | None = None) -> ChargerProfile:
    """Read and check a charger profile; None = the shipped iEVQC33 profile."""
    if path is None:
        return default_profile()
    return _load(Path(path))


@functools.cache
def default_profile() -> ChargerProfile:
    """The shipped iEVQC33 profile, read once."""
    with resources.as_file(resources.files(__name__) / DEFAULT_PROFILE) as path:
        return _load(path)


# ----------------------------------------------------------------------------- reading

_TYPE_NAMES = {bool: "a boolean", int: "an integer", float: "a number", str: "a string", dict: "a table",
               list: "an array"}


def _toml_type(value: Any) -> str:
    for t, name in _TYPE_NAMES.items():
        if isinstance(value, t):
            return name
    return type(value).__name__  # datetime and friends


class _Table:
    """Takes values out of one table, checking types; errors name the file and key."""

    def __init__(self, file: Path, name: str, table: Mapping[str, Any]):
        self.file, self.name, self.table = file, name, dict(table)
        self.known: list[str] = []

    def error(self, key: str, problem: str) -> ProfileError:
        return ProfileError(self.file, f"{self.name}.{key}" if self.name else key, problem)

    def take(self, key: str, kind: type, *, required: bool = True, default: Any = None) -> Any:
        self.known.append(key)
        if key not in self.table:
            if required:
                raise self.error(key, f"missing ({_TYPE_NAMES[kind]})")
            return default
        value = self.table.pop(key)
        ok = isinstance(value, (int, float)) if kind is float else isinstance(value, kind)
        if isinstance(value, bool) and kind is not bool:  # TOML true is never a number here
            ok = False
        if not ok:
            raise self.error(key, f"expected {_TYPE_NAMES[kind]}, got {_toml_type(value)}")
        return float(value) if kind is float else value

    def done(self) -> None:
        """Anything left over is unknown: a typo must not pass silently."""
        for key in self.table:
            raise self.error(key, f"unknown key (known here: {', '.join(self.known)})")


def _load(path: Path) -> ChargerProfile:
    try:
        doc = read_toml(path)
    except ConfigError as exc:
        raise ProfileError(path, exc.key, exc.problem) from None
    top = _Table(path, "", doc)
    identity = _identity(_Table(path, "identity", top.take("identity", dict)))
    station = _Table(path, "station", top.take("station", dict))
    quirks = _quirks(_Table(path, "quirks", top.take("quirks", dict, required=False, default={})))
    keys_table = top.take("keys", dict)
    top.done()

    connectors = station.take("connectors", int)
    if not 1 <= connectors <= 99:
        raise station.error("connectors", f"{connectors} is out of range: must be 1..99")
    fixed_cable = station.take("fixed_cable", bool)
    max_current_a = station.take("max_current_a", float)
    if not MIN_CHARGING_CURRENT_A <= max_current_a <= 1000:
        raise station.error("max_current_a", f"{max_current_a:g} A is out of range: must be "
                                             f"{MIN_CHARGING_CURRENT_A:g}..1000 A (IEC 61851-1: an EV cannot "
                                             f"be told to charge below {MIN_CHARGING_CURRENT_A:g} A)")
    voltage = station.take("voltage", float)
    if not 0 < voltage <= 1000:
        raise station.error("voltage", f"{voltage:g} V is out of range: must be > 0 and <= 1000 V")
    phases = station.take("phases", int)
    if phases not in (1, 2, 3):
        raise station.error("phases", f"{phases} is not 1, 2 or 3")
    station.done()

    values, access = _keys(path, keys_table, connectors)
    try:
        values = check_key_profile(values, access)
    except KeyConfigError as exc:
        raise ProfileError(path, f"keys.{exc.key}", exc.problem) from None
    _check_unlock_key(path, fixed_cable, quirks, values, access)
    return ChargerProfile(
        source=str(path), identity=MappingProxyType(identity), connectors=connectors, fixed_cable=fixed_cable,
        max_current_a=max_current_a, voltage=voltage, phases=phases, key_values=MappingProxyType(values),
        key_access=MappingProxyType(access), quirks=quirks)


def _identity(t: _Table) -> dict[str, str]:
    identity: dict[str, str] = {}
    if "firmwareVersion" in t.table:
        raise t.error("firmwareVersion", "not part of a profile: the station reports its own version "
                                         "(twin.__version__)")
    for name in IDENTITY_FIELDS:
        if name in t.table and name not in MODEL_IDENTITY_FIELDS:
            raise t.error(name, "describes one unit, not the model: set it in the station TOML [identity]")
    for name in MODEL_IDENTITY_FIELDS:
        value = t.take(name, str, required=name in REQUIRED_IDENTITY_FIELDS)
        if value is None:
            continue
        max_len = IDENTITY_FIELDS[name]
        if not value or len(value) > max_len:
            raise t.error(name, f"must be 1 to {max_len} characters (BootNotification CiString{max_len}), "
                                f"got {len(value)}")
        identity[name] = value
    t.done()
    return identity


def _quirks(t: _Table) -> Quirks:
    chosen = {name: t.take(name, bool, required=False, default=getattr(Quirks, name)) for name in QUIRKS}
    t.done()
    return Quirks(**chosen)


def _key_value(value: Any) -> str | None:
    """A TOML value for an OCPP key -> its OCPP string (true -> "true", [a, b] -> "a,b")."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, str)):
        return str(value)
    if isinstance(value, list) and all(isinstance(item, str) for item in value):
        return ",".join(value)
    return None


def _keys(path: Path, table: Mapping[str, Any], connectors: int) -> tuple[dict[str, str], dict[str, str]]:
    values: dict[str, str] = {}
    access: dict[str, str] = {}
    for name, entry in table.items():
        where = f"keys.{name}"
        if name == "NumberOfConnectors":
            raise ProfileError(path, where, "set station.connectors instead (the key reports it)")
        if not isinstance(entry, dict):
            raise ProfileError(path, where, f'expected a table {{ value = ..., access = "R" | "RW" }}, '
                                            f"got {_toml_type(entry)}")
        t = _Table(path, where, entry)
        t.known.append("value")
        if "value" not in t.table:
            raise t.error("value", "missing")
        raw = t.table.pop("value")
        value = _key_value(raw)
        if value is None:
            raise t.error("value", f"expected a string, integer, boolean or array of strings, got {_toml_type(raw)}")
        chosen = t.take("access", str)
        if chosen not in ACCESS:
            raise t.error("access", f"{chosen!r} is not R, RW or W")
        t.done()
        values[name], access[name] = value, chosen
    values["NumberOfConnectors"], access["NumberOfConnectors"] = str(connectors), "R"
    return values, access


def _check_unlock_key(path: Path, fixed_cable: bool, quirks: Quirks, values: Mapping[str, str],
                      access: Mapping[str, str]) -> None:
    if quirks.unlock_key_writable_with_fixed_cable:
        if not fixed_cable:
            raise ProfileError(path, "quirks.unlock_key_writable_with_fixed_cable",
                               "only applies with station.fixed_cable = true")
        return
    if fixed_cable and (values.get(_UNLOCK_KEY) != "false" or access.get(_UNLOCK_KEY) != "R"):
        raise ProfileError(path, f"keys.{_UNLOCK_KEY}",
                           "ERRATA 3.84: a fixed-cable station reports false, read-only "
                           "(set quirks.unlock_key_writable_with_fixed_cable = true if the model does not)")


__all__ = ["ACCESS", "DEFAULT_PROFILE", "QUIRKS", "ChargerProfile", "ProfileError", "Quirks",
           "default_profile", "load_profile"]
