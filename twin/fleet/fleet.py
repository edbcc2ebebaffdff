"""N complete twins in one process, on one event loop (docs/fleet.md).

Each member is a :class:`twin.fleet.member.FleetMember` (a Runtime) with its own data dir
``<data_dir>/<id>/``; what they share is the interpreter, the loop, the control API, the
metrics registry and one SQLite store, ``<data_dir>/fleet.db`` (twin.fleet.store: one writer
thread, one fsync per group of batches). A supervisor task per member restarts it
when it exits (a CSMS Reset, a firmware restart, a fleet reboot), as systemd restarts a
single twin: the new Runtime boots from the same data dir, so the queue and the
transactions survive exactly as they do for ``twin run``.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from twin.fleet.member import FleetMember, member_config, member_ids
from twin.fleet.store import FLEET_DB, SharedStore
from twin.fleet.traffic import Traffic
from twin.fleet.watchdog import FleetWatchdog
from twin.runtime import RESTART_EXIT_CODE

log = logging.getLogger("twin.fleet")

RESTART_BACKOFF_S = (1.0, 30.0)  # a member that fails to start is tried again, backing off to 30 s
REBOOT_EXIT = -1  # the code a fleet reboot asks a member to exit with (never a process exit code)


@dataclass
class _Slot:
    """One member id and whichever Runtime currently runs it."""

    id: str
    cfg: Any
    rt: FleetMember | None = None
    task: asyncio.Task | None = None
    runs: int = 0  # Runtimes started so far (1 + reboots and restarts)
    error: str | None = None  # why the last start failed
    stopping: bool = False
    delay_s: float = 0.0  # the boot-spread offset of the first start
    phase: str = "waiting"  # waiting (boot spread), starting, up, stopping, backoff
    up: asyncio.Event = field(default_factory=asyncio.Event)  # the current Runtime has started


def link_text(link: dict) -> str:
    """A member's link in the words the dashboard shows (and a filter matches)."""
    if link.get("connected"):
        return "online"
    return "offline (reconnecting)" if link.get("online") else "offline (cut)"


def station_matches(row: dict, words: list[str]) -> bool:
    """Every (lower-case) word matches: the id contains it, or one of the member's statuses
    (registration, link, a connector's status or errorCode) starts with it, so "avail" finds
    Available and not Unavailable, and "p00 charging" the P00… members with a charging
    connector."""
    if not words:
        return True
    tags = [row.get("registration"), link_text(row.get("link") or {})]
    for c in row.get("connectors") or []:
        tags += [c.get("status"), c.get("errorCode")]
    tags = [t.lower() for t in tags if t]
    ident = str(row.get("id", "")).lower()
    return all(w in ident or any(t.startswith(w) for t in tags) for w in words)


class Fleet:
    def __init__(self, blueprint: Any, count: int, *, id_prefix: str = "P", first_id: int = 1,
                 id_width: int | None = None, data_dir: Path | None = None,
                 boot_spread_s: float = 0.0, seed: int | None = None, metrics: Any = "auto",
                 meter_poll_s: float = 1.0, shared_store: bool = True):
        if count < 1:
            raise ValueError("count: at least 1 station")
        if boot_spread_s < 0:
            raise ValueError("boot_spread_s: 0 or more seconds")
        self.data_dir = Path(data_dir if data_dir is not None else blueprint.data_dir)
        if metrics == "auto":
            try:
                from twin.metrics import Metrics
            except ImportError as e:
                log.warning("fleet metrics off: %s (install prometheus-client)", e)
                metrics = None
            else:
                metrics = Metrics()
        self.metrics = metrics
        self.meter_poll_s = meter_poll_s
        # False: each member opens a twin.db of its own, as before the shared store (for comparisons).
        self.shared_store = shared_store
        self.store: SharedStore | None = None  # open between start() and the end of stop()
        self.online = True  # the fleet's network switch: a member that (re)boots during a blackout stays cut
        rng = random.Random(seed)
        self.slots: dict[str, _Slot] = {}
        for cp_id in member_ids(id_prefix, count, first_id, id_width):
            cfg = member_config(blueprint, cp_id, self.data_dir)
            cfg.trace_file = None  # one trace file for N stations would interleave them; per member: the API
            self.slots[cp_id] = _Slot(cp_id, cfg, delay_s=rng.uniform(0, boot_spread_s) if boot_spread_s else 0.0)
        self.reboot_task: asyncio.Task | None = None
        self.reboot_progress: dict[str, Any] = {}
        self.started_at: float | None = None
        self.watchdog = FleetWatchdog(lambda: [s.rt for s in self.slots.values() if s.rt is not None])
        self.traffic = Traffic(self)  # the automatic sessions (twin.fleet.traffic): off until configured

    # ------------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        """Start every member's supervisor; members boot at their boot-spread offsets."""
        self.started_at = time.monotonic()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if self.shared_store and self.store is None:
            # Before any member starts: each one opens its view of it. A file that is not a healthy
            # fleet store raises StoreError here, and no member starts.
            self.store = await SharedStore.open(self.data_dir / FLEET_DB)
        await self.watchdog.start()
        for slot in self.slots.values():
            slot.task = asyncio.create_task(self._supervise(slot), name=f"fleet-{slot.id}")

    async def stop(self) -> None:
        """Stop every member gracefully (each stops its transactions and flushes its store)."""
        await self.traffic.stop()  # first: no plug or tap may reach a member that is stopping
        if self.reboot_task is not None:
            self.reboot_task.cancel()
        for slot in self.slots.values():
            slot.stopping = True
            if slot.rt is not None:
                slot.rt.request_exit(0)
        tasks = [s.task for s in self.slots.values() if s.task is not None]
        for slot in self.slots.values():  # waiting for its boot offset or its next try: nothing to stop
            if slot.phase in ("waiting", "backoff") and slot.task is not None:
                slot.task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self.watchdog.stop()
        if self.store is not None:  # after every member stopped and flushed its view
            store, self.store = self.store, None
            await store.close()

    async def _supervise(self, slot: _Slot) -> None:
        failures = 0
        if slot.delay_s:
            await asyncio.sleep(slot.delay_s)
        while not slot.stopping:
            rt = FleetMember(slot.cfg, self.metrics, meter_poll_s=self.meter_poll_s, shared_store=self.store)
            slot.rt, slot.runs, slot.phase = rt, slot.runs + 1, "starting"
            try:
                await rt.start()
            except Exception as e:  # noqa: BLE001 - one member failing (a full disk) must not stop the fleet
                slot.error = f"{type(e).__name__}: {e}"
                log.error("station %s failed to start: %s", slot.id, slot.error)
                await self._end(rt, graceful=False)
                failures += 1
                slot.phase = "backoff"
                await asyncio.sleep(min(RESTART_BACKOFF_S[1], RESTART_BACKOFF_S[0] * 2 ** min(failures, 5)))
                continue
            failures, slot.error = 0, None
            if not self.online and rt.link is not None:
                rt.link.set_enabled(False)
            slot.up.set()
            slot.phase = "up"
            if slot.stopping:  # stop() came while it was starting (before it could be asked to exit)
                rt.request_exit(0)
            code = await rt.wait()
            slot.up.clear()
            slot.phase = "stopping"
            await self._end(rt, graceful=True)
            if code not in (RESTART_EXIT_CODE, REBOOT_EXIT, 0):
                log.error("station %s exited with %s; restarting it", slot.id, code)

    async def _end(self, rt: FleetMember, *, graceful: bool) -> None:
        try:
            await rt.shutdown("Reboot", graceful=graceful)
        except Exception:  # noqa: BLE001
            log.exception("station %s: shutdown failed", rt.cfg.charge_point_id)
        if self.metrics is not None:
            self.metrics.remove_station(rt.cfg.charge_point_id)

    # ------------------------------------------------------------------ members
    def member(self, cp_id: str) -> FleetMember | None:
        """The running Runtime of ``cp_id``, or None (no such member, or it is (re)starting)."""
        slot = self.slots.get(cp_id)
        if slot is None or slot.rt is None or not slot.up.is_set():
            return None
        return slot.rt

    def registered(self) -> int:
        return sum(1 for s in self.slots.values() if s.up.is_set() and s.rt is not None and s.rt.station is not None
                   and s.rt.station.registration.value == "Accepted")

    def stations(self, *, offset: int = 0, limit: int | None = None, query: str = "") -> dict:
        """GET /api/stations: every member, or the ``limit`` from ``offset`` on of those that
        match ``query`` (see :func:`station_matches`); ``matched`` counts them all."""
        words = query.lower().split()
        rows = []
        matched = 0
        for slot in self.slots.values():
            rt = slot.rt if slot.up.is_set() else None
            row = {"id": slot.id, "runs": slot.runs}
            row.update(rt._fleet_summary() if rt is not None else
                       {"registration": "Starting", "link": {"online": False, "connected": False}, "connectors": []})
            if slot.error:
                row["error"] = slot.error
            if not station_matches(row, words):
                continue
            if matched >= offset and (limit is None or len(rows) < limit):
                rows.append(row)
            matched += 1
        return {"count": len(self.slots), "registered": self.registered(), "online": self.online,
                "reboot": dict(self.reboot_progress) or None, "traffic": self.traffic.snapshot(),
                "matched": matched, "offset": offset, "stations": rows}

    # ------------------------------------------------------------------ fleet behaviours
    def reboot(self, *, rolling: bool, batch: int = 1, interval_s: float = 0.0) -> dict:
        """Reboot every member: all at once (a boot storm) or ``batch`` at a time every
        ``interval_s``. Runs in the background; GET /api/stations shows the progress."""
        if self.reboot_task is not None and not self.reboot_task.done():
            raise RuntimeError("a fleet reboot is already running")
        ids = list(self.slots)
        size = batch if rolling else len(ids)
        batches = [ids[i:i + size] for i in range(0, len(ids), size)]
        self.reboot_progress = {"rolling": rolling, "batches": len(batches), "done": 0, "finished": False}
        self.reboot_task = asyncio.create_task(self._reboot(batches, interval_s if rolling else 0.0))
        return dict(self.reboot_progress)

    async def _reboot(self, batches: list[list[str]], interval_s: float) -> None:
        for n, ids in enumerate(batches):
            if n and interval_s:
                await asyncio.sleep(interval_s)
            for cp_id in ids:
                slot = self.slots[cp_id]
                if slot.rt is not None and slot.up.is_set():
                    # The supervisor shuts it down gracefully ("Reboot") and boots a new Runtime.
                    slot.rt.request_exit(REBOOT_EXIT)
            self.reboot_progress["done"] = n + 1
        self.reboot_progress["finished"] = True

    def set_network(self, online: bool) -> dict:
        """The whole fleet's CSMS link: a blackout (False) or the recovery (True)."""
        self.online = online
        for slot in self.slots.values():
            rt = slot.rt
            if rt is not None and rt.link is not None:
                rt.link.set_enabled(online)
        return {"online": online, "members": len(self.slots)}
