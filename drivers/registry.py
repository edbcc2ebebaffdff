"""Find driver backends, resolve the ``[drivers]`` config to a ``DriverSet``, probe hardware.

Backends are plugins, like gpiozero's pin factories: an ``ocpp_twin.drivers`` entry point
named ``<kind>.<backend>`` (e.g. ``relay.gpiozero``) whose value is a factory (contract in
``drivers.base.BuildContext``). The built-in ones are also registered here in code, so a
source checkout that was never pip-installed works the same. A lab adds its own backend
by declaring an entry point in its own package; no fork needed.

Per kind the config chooses ``backend = "sim" | "auto" | "<name>"``:
* ``sim`` (the default): simulated, no warning (chosen, not a fallback).
* ``auto``: the kind's real backend; if the hardware or library is missing, the simulated
  one with a loud WARNING that also lands in ``DriverReport.warning`` (GET /api/state).
  ``auto`` is the only way to get a fallback, and ``strict = true`` turns it off.
* ``<name>`` (``gpiozero``, ``modbus``, ``pcsc`` or a plugin's name): that backend or
  nothing. A named backend that cannot load or start raises DriverError naming the
  driver, the backend and the cause: a unit wired to real contactors must not bill
  simulated energy because an RS-485 adapter enumerated late.
* ``strict``: accepted for compatibility. ``true`` is what every named backend does now;
  ``strict = false`` on a named backend no longer enables a fallback (logged as a WARNING).
Config mistakes (unknown backend, typo'd key, bad pin) always raise DriverConfigError.
"""

from __future__ import annotations

import asyncio
import functools
import importlib
import logging
import sys
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from typing import Any, Callable, Mapping

from drivers.base import (
    BuildContext,
    CardReader,
    DriverConfigError,
    DriverError,
    EvPresentInput,
    Meter,
    PilotPwm,
    Relay,
    RelayFault,
)
from drivers.config import KindTable
from drivers.relay_check import DEFAULT_FEEDBACK_TIMEOUT_S, RelaySupervisor
from drivers.sim import SimCardReader
from drivers.watchdog import LoopWatchdog

__all__ = [
    "DriverConfigError",
    "DriverError",
    "DriverReport",
    "DriverSet",
    "ENTRY_POINT_GROUP",
    "KINDS",
    "build_drivers",
    "describe",
    "list_backends",
    "probe",
]

log = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "ocpp_twin.drivers"
# How long the event loop may stall before the watchdog thread opens every contactor.
LOOP_WATCHDOG_S = 5.0
KINDS = ("relay", "meter", "reader", "ev_present", "pilot")

# What "auto" means for each kind.
REAL_BACKEND = {"relay": "gpiozero", "meter": "modbus", "reader": "pcsc", "ev_present": "gpiozero", "pilot": "gpiozero"}

# What a fallback means in practice, for the warning text.
_FALLBACK_MEANS = {
    "relay": "no real contactor is switched",
    "meter": "energy figures are simulated, not measured",
    "reader": "real cards are not read, taps come only from the control API",
    "ev_present": "plug/unplug comes only from the control API",
    "pilot": "no control-pilot signal is generated",
}

# The built-in backends, "<kind>.<backend>" -> "module:factory". The same lines are declared as
# entry points in pyproject.toml; this table makes a source checkout work without installing.
BUILTIN_BACKENDS: dict[str, str] = {
    "relay.sim": "drivers.sim:build_relays",
    "relay.gpiozero": "drivers.gpio:build_relays",
    "meter.sim": "drivers.sim:build_meters",
    "meter.modbus": "drivers.modbus:build_meters",
    "reader.sim": "drivers.sim:build_reader",
    "reader.pcsc": "drivers.pcsc:build_reader",
    "ev_present.sim": "drivers.sim:build_ev_inputs",
    "ev_present.gpiozero": "drivers.gpio:build_ev_inputs",
    "pilot.sim": "drivers.sim:build_pilots",
    "pilot.gpiozero": "drivers.gpio:build_pilots",
}

Factory = Callable[[dict, list, BuildContext], Any]


@dataclass
class DriverReport:
    """One row per driver kind, for `twin drivers` and GET /api/state."""

    kind: str
    name: str  # what was built, e.g. "connectors 1, 2" or "reader"
    requested: str  # the configured backend: "sim", "auto" or a name
    backend: str  # what it resolved to ("sim" after a fallback; "unavailable" in a failed probe)
    reason: str  # why, in words
    warning: str | None  # set when auto fell back to sim (or a probe found a problem)
    ok: bool = True  # False only in probe() rows whose hardware check failed


@dataclass
class DriverSet:
    relays: dict[int, Relay]
    meters: dict[int, Meter]
    reader: CardReader
    sim_reader: SimCardReader | None
    ev_inputs: dict[int, EvPresentInput]
    pilots: dict[int, PilotPwm]
    reports: list[DriverReport]
    relay_feedback_timeout_s: float = DEFAULT_FEEDBACK_TIMEOUT_S
    _supervisor: RelaySupervisor | None = field(default=None, repr=False)
    _watchdog: LoopWatchdog | None = field(default=None, repr=False)
    _closed: bool = field(default=False, repr=False)

    @property
    def warnings(self) -> list[str]:
        return [r.warning for r in self.reports if r.warning]

    @property
    def relay_faults(self) -> dict[int, RelayFault]:
        """Current contactor faults (welded / failed to close) by connector id."""
        return self._supervisor.faults if self._supervisor is not None else {}

    async def start_supervision(
        self,
        on_relay_fault: Callable[[int, RelayFault | None], None],
        *,
        loop_watchdog_s: float | None = LOOP_WATCHDOG_S,
        on_watchdog_trip: Callable[[], None] | None = None,
    ) -> None:
        """Start the contactor feedback checks and the event-loop watchdog.

        ``on_relay_fault(connector_id, fault)`` runs on the loop when a fault appears (fault)
        or clears (None). ``on_watchdog_trip()`` runs on the loop once it turns again after
        the watchdog thread had to open every contactor.
        """
        self._supervisor = RelaySupervisor(self.relays, on_relay_fault, timeout_s=self.relay_feedback_timeout_s)
        await self._supervisor.start()
        if loop_watchdog_s:
            loop = asyncio.get_running_loop()
            trip = (lambda: loop.call_soon_threadsafe(on_watchdog_trip)) if on_watchdog_trip else None
            self._watchdog = LoopWatchdog(self.relays, loop_watchdog_s, on_trip=trip)
            await self._watchdog.start()

    def reset_relay_fault(self, connector_id: int) -> None:
        """Clear a latched weld after service (e.g. on a hard Reset the operator triggers)."""
        if self._supervisor is not None:
            self._supervisor.reset(connector_id)

    def open_all_relays(self) -> None:
        """Open every contactor now. Sync on purpose: usable from a signal handler."""
        for cid, relay in self.relays.items():
            try:
                relay.set(False)
            except Exception as exc:
                log.critical("connector %s: could not open contactor: %s", cid, exc)

    async def close(self) -> None:
        """Open all contactors first, then release every device. Never raises; idempotent."""
        if self._closed:
            return
        self._closed = True
        self.open_all_relays()
        for stopper in (self._supervisor, self._watchdog):
            if stopper is not None:
                await _quietly("supervision", stopper.stop())
        for relay in _unique(self.relays):
            _quietly_sync("relay", relay.close_driver)
        for pilot in _unique(self.pilots):
            _quietly_sync("pilot", pilot.close_driver)
        for meter in _unique(self.meters):
            await _quietly("meter", meter.close())
        await _quietly("card reader", self.reader.stop())
        for ev in _unique(self.ev_inputs):
            await _quietly("EV-present input", ev.stop())


def _unique(drivers: Mapping[int, Any]) -> list[Any]:
    seen: dict[int, Any] = {}
    for d in drivers.values():
        seen.setdefault(id(d), d)
    return list(seen.values())


async def _quietly(what: str, aw: Any) -> None:
    try:
        await aw
    except Exception as exc:  # shutdown must go on for the other devices
        log.error("closing %s failed: %s", what, exc)


def _quietly_sync(what: str, fn: Callable[[], None]) -> None:
    try:
        fn()
    except Exception as exc:
        log.error("closing %s failed: %s", what, exc)


# --- discovery ------------------------------------------------------------------------------


def _discovered() -> dict[str, Any]:
    """``"<kind>.<backend>"`` -> an EntryPoint or a "module:attr" string (built-ins).

    Reading every installed distribution's metadata is slow (a fleet of a thousand twins
    spent most of its start-up here), so it is done once per import path: the installed
    plugins only change when ``sys.path`` does."""
    return dict(_discovered_on(tuple(sys.path)))


@functools.lru_cache(maxsize=4)
def _discovered_on(_path: tuple[str, ...]) -> dict[str, Any]:
    found: dict[str, Any] = dict(BUILTIN_BACKENDS)
    try:
        eps = entry_points(group=ENTRY_POINT_GROUP)
    except Exception as exc:  # broken metadata of some unrelated distribution
        log.error("reading %s entry points failed: %s", ENTRY_POINT_GROUP, exc)
        return found
    for ep in eps:
        kind, _, backend = ep.name.partition(".")
        if kind not in KINDS or not backend:
            log.warning("ignoring entry point %r in %s: the name must be <kind>.<backend>, kind one of %s",
                        ep.name, ENTRY_POINT_GROUP, ", ".join(KINDS))
            continue
        if ep.name in BUILTIN_BACKENDS and ep.value.replace(" ", "") == BUILTIN_BACKENDS[ep.name]:
            continue
        found[ep.name] = ep  # a plugin may replace a built-in on purpose
    return found


def list_backends() -> dict[str, list[str]]:
    """kind -> backend names, for `twin drivers`."""
    out: dict[str, list[str]] = {k: [] for k in KINDS}
    for name in _discovered():
        kind, _, backend = name.partition(".")
        out[kind].append(backend)
    return {k: sorted(v, key=lambda b: (b != "sim", b)) for k, v in out.items()}


def _load(kind: str, backend: str) -> Factory:
    target = _discovered().get(f"{kind}.{backend}")
    if target is None:
        known = ", ".join(["auto", *list_backends()[kind]])
        raise DriverConfigError(f"drivers.{kind}.backend: unknown backend {backend!r} (known: {known})")
    try:
        if isinstance(target, str):
            module, _, attr = target.partition(":")
            return getattr(importlib.import_module(module), attr)
        return target.load()
    except ImportError as exc:
        raise DriverError(f"backend {kind}.{backend} cannot be imported: {exc}") from exc
    except Exception as exc:  # a broken plugin: its module raised, or the entry point names nothing
        raise DriverError(f"backend {kind}.{backend} cannot be loaded: {type(exc).__name__}: {exc}") from exc


def _allowed_keys(kind: str, backend: str) -> set[str] | None:
    """Keys valid in ``[drivers.<kind>]``: the sim's, the built-in real backend's and the chosen one's.

    A table may carry hardware keys while ``backend = "sim"`` (switching back and forth is
    normal on a bench), so those are accepted, but anything else is a typo.
    """
    keys: set[str] = set()
    for name in {"sim", REAL_BACKEND[kind], backend}:
        try:
            factory = _load(kind, name)
        except DriverError:
            continue  # a backend that cannot import still must not make its keys typos
        ck = getattr(factory, "config_keys", None)
        if ck is None:
            return None  # a plugin that does not declare its keys: cannot validate
        keys |= set(ck)
    return keys


# --- resolution -----------------------------------------------------------------------------


@dataclass
class _Resolved:
    drivers: dict[int, Any]
    report: DriverReport


def _describe(drivers: Mapping[int, Any]) -> str:
    parts = [getattr(d, "describe", lambda: type(d).__name__)() for d in _unique(drivers)]
    return "; ".join(parts)


def _target_ids(kind: str, connectors: int) -> list[int]:
    return [0] if kind == "reader" else list(range(1, connectors + 1))


def _label(kind: str, ids: list[int]) -> str:
    return "reader" if kind == "reader" else "connectors " + ", ".join(map(str, ids))


def _selection(kind: str, raw: Any) -> tuple[KindTable, str, str, bool]:
    """Validate ``[drivers.<kind>]`` and return (table, requested, backend to try, strict)."""
    table = KindTable(kind, raw)
    requested = table.get_str("backend", "sim")
    assert requested is not None
    strict = table.get_bool("strict", False)  # type-checked whatever the backend
    if requested not in ("sim", "auto"):
        _load_or_config_error(kind, requested)
        strict = True  # a named backend never falls back; only "auto" may
    backend = REAL_BACKEND[kind] if requested == "auto" else requested
    allowed = _allowed_keys(kind, backend)
    if allowed is not None:
        table.check_keys(allowed)
    if kind == "relay":
        _feedback_timeout(table)  # used by the DriverSet's supervisor whatever the backend
    return table, requested, backend, strict


def _feedback_timeout(table: KindTable) -> float:
    return table.get_float("feedback_timeout_s", DEFAULT_FEEDBACK_TIMEOUT_S, minimum=0.0)


async def _resolve(kind: str, raw: Any, connectors: int, ctx: BuildContext, *, force_sim: bool, probing: bool) -> _Resolved:
    table, requested, backend, strict = _selection(kind, raw)
    ids = _target_ids(kind, connectors)
    label = _label(kind, ids)

    async def build_sim() -> dict[int, Any]:
        return await _load(kind, "sim")(table.data, ids, ctx)

    if force_sim:
        drivers = await build_sim()
        return _Resolved(drivers, DriverReport(kind, label, requested, "sim", "fake-driver mode: every driver simulated", None))
    if requested == "sim":
        drivers = await build_sim()
        return _Resolved(drivers, DriverReport(kind, label, requested, "sim", f"configured: {_describe(drivers)}", None))
    if not probing and _ignored_strict_false(table, requested):
        log.warning("drivers.%s.strict = false is ignored: the named backend %r never falls back to the "
                    "simulator; set backend = \"auto\" to allow a fallback", kind, requested)
    try:
        drivers = await _start(kind, backend, table, ids, ctx)
    except DriverError as exc:
        if probing:
            return _Resolved({}, DriverReport(kind, label, requested, "unavailable", str(exc), f"{kind}: {backend} unavailable: {exc}", ok=False))
        if strict:
            raise DriverError(_cannot_start(kind, requested, backend, exc)) from exc
        warning = (f"{kind}: {backend} backend unavailable ({exc}); FALLING BACK TO THE SIMULATED {kind.upper()}: "
                   f"{_FALLBACK_MEANS[kind]}")
        log.warning("%s", warning)
        drivers = await build_sim()
        return _Resolved(drivers, DriverReport(kind, label, requested, "sim", f"fallback from {backend}: {exc}", warning))
    return _Resolved(drivers, DriverReport(kind, label, requested, backend, _describe(drivers), None))


async def _start(kind: str, backend: str, table: KindTable, ids: list[int], ctx: BuildContext) -> dict[int, Any]:
    """Build one kind's drivers; anything but a config error comes out as a DriverError."""
    factory = _load(kind, backend)
    try:
        return await factory(table.data, ids, ctx)
    except (DriverError, DriverConfigError):
        raise
    except Exception as exc:  # a plugin or library failing in a way it did not declare
        raise DriverError(f"{type(exc).__name__}: {exc}") from exc


def _cannot_start(kind: str, requested: str, backend: str, exc: Exception) -> str:
    """The start-up error for a driver that must be real: which driver, which backend, why, what next."""
    if requested == "auto":
        chosen, instead = f'backend = "auto" ({backend}) with strict = true', 'set backend = "sim" or drop strict = true'
    else:
        chosen = f'backend = "{backend}"'
        instead = 'set backend = "sim", or "auto" (the real one when present, else the simulator with a warning)'
    return (f"drivers.{kind}: {chosen} cannot start: {exc} -- the station does not start without a "
            f"{kind} driver its config requires (no fallback to the simulator). Fix the device or install "
            f"what is missing, then check with `twin drivers --probe`; to run without it, {instead}.")


def _ignored_strict_false(table: KindTable, requested: str) -> bool:
    return requested not in ("sim", "auto") and table.data.get("strict") is False


def _load_or_config_error(kind: str, backend: str) -> None:
    """An unknown backend name is a config error even when its module would not import."""
    if f"{kind}.{backend}" not in _discovered():
        _load(kind, backend)  # raises DriverConfigError listing the known ones


def _check_cfg(cfg: Any, connectors: int) -> Mapping[str, Any]:
    if cfg is None:
        cfg = {}
    if not isinstance(cfg, Mapping):
        raise DriverConfigError(f"drivers: must be a table, got {type(cfg).__name__}")
    unknown = sorted(set(cfg) - set(KINDS))
    if unknown:
        raise DriverConfigError(f"drivers.{unknown[0]}: unknown driver kind (known: {', '.join(KINDS)})")
    if isinstance(connectors, bool) or not isinstance(connectors, int) or connectors < 1:
        raise DriverConfigError(f"connectors must be a positive integer, got {connectors!r}")
    return cfg


async def build_drivers(
    cfg: dict,
    connectors: int,
    *,
    power_sources: dict[int, Callable[[], float]],
    soc_sources: dict[int, Callable[[], float | None]],
    force_sim: bool = False,
    energy_floors: dict[int, float] | None = None,
    pin_factory: object | None = None,
) -> DriverSet:
    """Build every driver from the ``[drivers]`` table. Raises DriverConfigError, or DriverError
    when a named (or ``auto`` + strict) backend cannot start.

    ``energy_floors``: per connector, the last import register the station stored; the
    simulated meters start from it so the register never goes backwards across restarts.
    ``pin_factory``: a gpiozero pin factory to inject (tests use MockFactory).
    On any error the drivers already built are released again (their contactors opened).
    """
    cfg = _check_cfg(cfg, connectors)
    ctx = BuildContext(power_sources=dict(power_sources), soc_sources=dict(soc_sources),
                       initial_energy_wh=dict(energy_floors or {}), pin_factory=pin_factory)
    built: dict[str, _Resolved] = {}
    try:
        for kind in KINDS:
            built[kind] = await _resolve(kind, cfg.get(kind), connectors, ctx, force_sim=force_sim, probing=False)
    except BaseException:
        await _release(built)
        raise
    reader = built["reader"].drivers[0]
    return DriverSet(
        relays=built["relay"].drivers,
        meters=built["meter"].drivers,
        reader=reader,
        sim_reader=reader if isinstance(reader, SimCardReader) else None,
        ev_inputs=built["ev_present"].drivers,
        pilots=built["pilot"].drivers,
        reports=[built[k].report for k in KINDS],
        relay_feedback_timeout_s=_feedback_timeout(KindTable("relay", cfg.get("relay"))),
    )


async def _release(built: Mapping[str, _Resolved]) -> None:
    for kind, res in built.items():
        for d in _unique(res.drivers):
            for method in ("set", "close_driver", "close", "stop"):
                fn = getattr(d, method, None)
                if fn is None:
                    continue
                try:
                    out = fn(False) if method == "set" else fn()
                    if asyncio.iscoroutine(out):
                        await out
                except Exception as exc:
                    log.error("releasing %s driver failed: %s", kind, exc)


def describe(cfg: dict, connectors: int) -> list[DriverReport]:
    """`twin drivers` without --probe: what each driver is configured to resolve to.

    Touches no hardware, so for ``auto``/named backends it says what will be tried; only
    ``probe()`` or a real start knows whether the device is there.
    """
    cfg = _check_cfg(cfg, connectors)
    reports = []
    for kind in KINDS:
        table, requested, backend, strict = _selection(kind, cfg.get(kind))
        label = _label(kind, _target_ids(kind, connectors))
        if requested == "sim":
            reports.append(DriverReport(kind, label, requested, "sim", "configured: simulated", None))
            continue
        then = "the station refuses to start" if strict else "it falls back to sim with a WARNING"
        reason = f"tries {backend} at start; if unavailable {then} (check with --probe)"
        if _ignored_strict_false(table, requested):
            reason += '; strict = false is ignored (only backend = "auto" falls back)'
        reports.append(DriverReport(kind, label, requested, backend, reason, None))
    return reports


async def probe(cfg: dict, connectors: int, *, pin_factory: object | None = None) -> list[DriverReport]:
    """`twin drivers --probe`: build each configured real driver, read meters once, release everything.

    Never falls back and never raises for missing hardware: each row says what was found
    (``ok=False`` + ``warning`` when the device is missing). Config errors still raise.
    """
    cfg = _check_cfg(cfg, connectors)
    ctx = BuildContext(pin_factory=pin_factory, probe=True)
    reports: list[DriverReport] = []
    for kind in KINDS:
        res = await _resolve(kind, cfg.get(kind), connectors, ctx, force_sim=False, probing=True)
        if kind == "meter" and res.report.backend not in ("sim", "unavailable"):
            await _probe_meters(res)
        await _release({kind: res})
        reports.append(res.report)
    return reports


async def _probe_meters(res: _Resolved) -> None:
    readings = []
    for cid, meter in res.drivers.items():
        try:
            r = await meter.read()
            readings.append(f"connector {cid}: {r.energy_wh / 1000:.3f} kWh, {r.power_w if r.power_w is not None else '-'} W")
        except (DriverError, asyncio.TimeoutError, OSError) as exc:
            res.report.ok = False
            res.report.warning = f"meter connector {cid}: {exc or 'timeout'}"
            readings.append(f"connector {cid}: NO ANSWER ({exc or 'timeout'})")
    res.report.reason = f"{res.report.reason} -> " + "; ".join(readings)
