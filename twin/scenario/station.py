"""The station a scenario drives: a twin.runtime.Runtime with sim drivers, in-process, on a
data dir of its own, pointed at the CSMS under test, and the frames it exchanged.

The frames come from the runtime's wire trace (``Runtime.trace_since``), collected into
one list that outlives restarts: each record keeps its fields (twin.trace) and gets
``i``, its index in that list, and ``run``, the station start it belongs to.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from pathlib import Path
from typing import Any

log = logging.getLogger("twin.scenario")

POLL_S = 0.05


class ScenarioStation:
    def __init__(self, csms_url: str, charge_point_id: str, data_dir: Path, keys: dict[str, str] | None = None,
                 connectors: int | None = None):
        self.csms_url, self.charge_point_id, self.data_dir = csms_url, charge_point_id, Path(data_dir)
        self.keys = dict(keys or {})
        self.connectors = connectors
        self.rt = None
        self.frames: list[dict] = []
        self.runs = 0
        self.changed = asyncio.Event()
        self._since = 0
        self._poller: asyncio.Task | None = None
        self._supervisor: asyncio.Task | None = None
        # What the scenario installed: a restart (soft, hard, power, a Reset) builds a new
        # Runtime, and the rules and impairment must still hold on it.
        self._network: dict[str, Any] = {}
        self._carried_rules: list[dict] = []

    # ------------------------------------------------------------------ lifecycle
    def _config(self):
        from twin.config import load_config

        cfg = load_config(None, {"csms_url": self.csms_url, "charge_point_id": self.charge_point_id,
                                 "data_dir": self.data_dir, "control": "127.0.0.1:0", "sim": True})
        cfg.control_enabled = False  # the scenario drives the Runtime's methods directly
        cfg.keys.update(self.keys)
        if self.connectors is not None:
            cfg.connectors = self.connectors
        return cfg

    async def start(self) -> None:
        from twin.runtime import Runtime

        self.rt = None  # nothing collects from the previous runtime any more
        rt = Runtime(self._config(), meter_poll_s=0.2)
        await rt.start()
        self.runs += 1
        self._since = 0
        self.rt = rt
        if not callable(getattr(rt, "trace_since", None)):
            raise RuntimeError("this twin has no wire trace (Runtime.trace_since): cannot observe frames")
        for rule in self._carried_rules:
            rt.add_fault(rule)
        self._carried_rules = []
        if self._network:
            await rt.network(None, **self._network)
        self._poller = asyncio.create_task(self._poll(rt), name="scenario-trace")
        self._supervisor = asyncio.create_task(self._supervise(rt), name="scenario-supervisor")

    async def _poll(self, rt) -> None:
        while True:
            self.collect(rt)
            await asyncio.sleep(POLL_S)

    def collect(self, rt=None) -> None:
        rt = rt or self.rt
        if rt is None:
            return
        got = rt.trace_since(self._since)
        frames = got.get("frames", [])
        for rec in frames:
            self.frames.append({**rec, "i": len(self.frames), "run": self.runs})
        self._since = got.get("next", self._since)
        if frames:
            self.changed.set()
            self.changed = asyncio.Event()

    async def _supervise(self, rt) -> None:
        """A Reset the CSMS sent (or a firmware restart) ends the runtime with the restart
        exit code; a supervisor (systemd, twin's launcher) starts it again: so does this."""
        from twin.runtime import RESTART_EXIT_CODE

        code = await rt.wait()
        if code == RESTART_EXIT_CODE and self.rt is rt:
            log.info("the station restarted itself (Reset): starting it again")
            self._carry_rules(rt)
            await self._stop_watchers(rt)
            await self.start()

    def _carry_rules(self, rt) -> None:
        """The rules still active on ``rt``, with the count they have left, for the next runtime."""
        carried = []
        for rule in rt.faults():
            remaining = rule.get("remaining")
            if remaining == 0:
                continue
            rule = {k: v for k, v in rule.items() if k not in ("fired", "remaining")}
            rule["count"] = remaining  # None: until removed
            carried.append(rule)
        self._carried_rules = carried

    async def _stop_watchers(self, rt, *, supervisor: bool = False) -> None:
        self.collect(rt)
        tasks = [self._poller] + ([self._supervisor] if supervisor else [])
        for task in tasks:
            if task is not None and task is not asyncio.current_task():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task

    async def restart(self, kind: str) -> None:
        """soft / hard: the way a Reset restarts the station (graceful or not, OCPP 1.6
        §5.14); power: the power is cut (nothing flushed or closed politely, like kill -9)
        and the station boots again on the same data dir."""
        rt = self.rt
        self._carry_rules(rt)
        await self._stop_watchers(rt, supervisor=True)
        self.rt = None
        if kind == "power":
            await power_cut(rt)
        else:
            await rt.shutdown("SoftReset" if kind == "soft" else "HardReset", graceful=kind == "soft")
            self._collect_final(rt)
        await self.start()

    def _collect_final(self, rt) -> None:
        with contextlib.suppress(Exception):
            got = rt.trace_since(self._since)
            for rec in got.get("frames", []):
                self.frames.append({**rec, "i": len(self.frames), "run": self.runs})

    async def stop(self) -> None:
        rt = self.rt
        if rt is None:
            return
        await self._stop_watchers(rt, supervisor=True)
        self.rt = None
        with contextlib.suppress(Exception):
            await asyncio.wait_for(rt.shutdown("Reboot", graceful=False, drain_s=0), timeout=20)
        self._collect_final(rt)

    # ------------------------------------------------------------------ actions
    async def do(self, kind: str, value: Any) -> None:
        rt = self.rt
        if rt is None:
            raise RuntimeError("the station is not running")
        if kind == "plug":
            await rt.plug(value)
        elif kind == "unplug":
            await rt.unplug(value)
        elif kind == "tap":
            await rt.rfid(value)
        elif kind == "fault":
            if not callable(getattr(rt, "add_fault", None)):
                raise RuntimeError("this twin has no fault injection (Runtime.add_fault)")
            rt.add_fault(dict(value))
        elif kind == "network":
            fields = dict(value)
            online = fields.pop("online", None)
            # Impairment outlives a restart (the network is not the station); half-open and a
            # close apply to the connection of the moment only.
            self._network.update({k: v for k, v in fields.items() if k not in ("half_open", "close_code")})
            await rt.network(online, **fields) if fields else await rt.network(online)
        elif kind == "restart":
            await self.restart(value)
        elif kind == "wait_s":
            await asyncio.sleep(value)
        else:  # pragma: no cover - parse only makes the kinds above
            raise ValueError(f"unknown step kind {kind}")

    async def wait_change(self, timeout: float) -> None:
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self.changed.wait(), timeout)


async def power_cut(rt) -> None:
    """Stop ``rt`` the way a power cut does (:meth:`twin.runtime.Runtime.power_cut`)."""
    await rt.power_cut()
