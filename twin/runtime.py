"""The asyncio runtime: wires the pure core to the store, the link, the drivers, the
control API, systemd and the firmware service.

All core calls go through ``_step`` under one lock, so the core sees one event at a
time, and their actions run in order: ``Persist`` is awaited before what follows it.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

import twin
from twin.core import actions as A
from twin.core.keys import ConfigKeys
from twin.core.smart_charging import SmartCharging
from twin.core.station import Station, StationSpec
from twin.link import Link
from twin.store import Store, StoreError

log = logging.getLogger("twin.runtime")

RESTART_EXIT_CODE = 75  # "restart me": Reset and firmware installs (see twin/firmware/launcher.py)
STORAGE_FAULT = ("OtherError", "storage failure: not recording")


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


class Runtime:
    """One running station. ``await start()``, then ``await wait()`` for the exit code."""

    def __init__(self, cfg: Any, *, clock: Callable[[], datetime] = utcnow, meter_poll_s: float = 1.0):
        self.cfg = cfg
        self.clock = clock
        self.meter_poll_s = meter_poll_s
        self.lock = asyncio.Lock()
        self.kick = asyncio.Event()
        self.meter_wake = asyncio.Event()
        self.idle_meter_poll_s = 10.0
        self.done: asyncio.Future | None = None
        self.tasks: list[asyncio.Task] = []
        self.unsaved: list[list[tuple]] = []
        self.store: Store | None = None
        self.station: Station | None = None
        self.drivers = None
        self.link: Link | None = None
        self.api = None
        self.firmware = None
        self.notifier = None
        self.last_status_text = ""
        self.started_monotonic = time.monotonic()
        self.registered_once = False
        self.core_session: int | None = None
        self.closing = False
        self.shutdown_done: asyncio.Event | None = None

    # ------------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        from drivers.registry import build_drivers
        from twin.service.notify import Notifier

        cfg = self.cfg
        self.done = asyncio.get_running_loop().create_future()
        self.notifier = Notifier()
        data_dir = Path(cfg.data_dir)
        self.store = await Store.open(data_dir / "twin.db")
        state = await self.store.load()
        keys = ConfigKeys(overrides=cfg.keys, stored=state["kv"].get("config", {}))
        for warning in getattr(keys, "warnings", []):
            log.warning("configuration key: %s", warning)
        smart = SmartCharging(
            cfg.connectors, max_stack_level=keys.get_int("ChargeProfileMaxStackLevel"),
            max_periods=keys.get_int("ChargingScheduleMaxPeriods"),
            max_installed=keys.get_int("MaxChargingProfilesInstalled"),
            station_max_amps=float(getattr(cfg, "max_current_a", 32.0)))
        identity = {"chargePointVendor": "XJ Power Co., Ltd.", "chargePointModel": "iEVQC33"}
        identity.update({k: v for k, v in (cfg.identity or {}).items() if v})
        identity["firmwareVersion"] = "V" + twin.__version__  # the package version is the firmware version
        ev = cfg.ev
        spec = StationSpec(connectors=cfg.connectors, fixed_cable=cfg.fixed_cable, identity=identity,
                           ev={"max_power_w": ev.max_power_w, "battery_wh": ev.battery_wh,
                               "soc_start": ev.soc_start},
                           phases=getattr(ev, "phases", 3), voltage=getattr(ev, "voltage", 230.0))
        self.station = st = Station(spec, keys, smart, state)
        floors = {cid: st.meter_floor.get(cid, 0.0) for cid in st.connectors}
        for tx in state["transactions"].values():
            cid = tx["connector_id"]
            floors[cid] = max(floors.get(cid, 0.0), float(tx.get("last_meter_wh") or 0))
        st.meter_floor.update(floors)
        self.drivers = await build_drivers(
            cfg.drivers or {}, cfg.connectors,
            power_sources={cid: (lambda cid=cid: self.station.ev_power_w(cid)) for cid in st.connectors},
            soc_sources={cid: (lambda cid=cid: self.station.ev_soc(cid)) for cid in st.connectors},
            energy_floors=floors, force_sim=bool(getattr(cfg, "force_sim", False)))
        await self._start_inputs()
        await self.drivers.start_supervision(self._on_relay_fault, on_watchdog_trip=self._on_watchdog_trip)
        await self._start_firmware(data_dir)
        # Boot: interrupted transactions are stopped (PowerLoss / HardReset) and queued.
        await self._step(st.boot)
        if self.api_enabled():
            from twin.control_api import ControlApi

            self.api = ControlApi(self, cfg.control_host, cfg.control_port, debug=cfg.control_debug)
            await self.api.start()
            log.info("control API on %s", self.api.url)
        self.link = Link(
            cfg.csms_url, cfg.charge_point_id, password=cfg.password, ca_file=cfg.ca_file,
            ping_interval=keys.get_int("WebSocketPingInterval"),
            on_up=lambda: self._spawn(self._core_link_up, self.link.session),
            on_down=lambda: self._spawn(self._core_link_down),
            on_call=self._on_csms_call,
            on_result=lambda ref, payload: self._spawn(st.call_result, ref, payload),
            on_failed=lambda ref, reason: self._spawn(st.call_failed, ref, reason))
        self.link.start()
        for coro, name in ((self._timer_loop(), "timers"), (self._meter_loop(), "meters"),
                           (self._watchdog_loop(), "watchdog"), (self._store_retry_loop(), "store-retry")):
            self.tasks.append(asyncio.create_task(coro, name=name))
        self.notifier.ready(self._status_text())
        log.info("station %s up: %d connectors, firmware %s, CSMS %s", cfg.charge_point_id, cfg.connectors,
                 identity["firmwareVersion"], self.link.url)

    def api_enabled(self) -> bool:
        return getattr(self.cfg, "control_port", None) is not None

    async def _start_inputs(self) -> None:
        reader = self.drivers.reader
        await reader.start(lambda tag: self._spawn(self.station.tap, tag))
        for cid, inp in self.drivers.ev_inputs.items():
            await inp.start(lambda present, cid=cid: self._spawn(
                self.station.plug if present else self.station.unplug, cid))

    async def _start_firmware(self, data_dir: Path) -> None:
        try:
            from twin.firmware.service import FirmwareService
        except ImportError:  # pragma: no cover - the firmware package is part of the install
            return
        from twin.service.logs import log_files

        from twin.firmware.settings import FirmwareSettings

        settings = FirmwareSettings.from_table(self.cfg.firmware or {})
        self.firmware = FirmwareService(data_dir, _FirmwareHooks(self), log_files=lambda: log_files(data_dir),
                                        charge_point_id=self.cfg.charge_point_id, settings=settings)
        self.station.firmware_status = self.firmware.firmware_status
        self.station.diagnostics_status = self.firmware.diagnostics_status

    async def wait(self) -> int:
        return await self.done

    def request_exit(self, code: int) -> None:
        if self.done is not None and not self.done.done():
            self.done.set_result(code)

    async def shutdown(self, reason: str = "Reboot", *, graceful: bool = True, drain_s: float = 5.0) -> None:
        """SIGTERM and Soft reset: open contactors, stop transactions, try to deliver, flush, close.
        A second call (e.g. SIGTERM during a Reset) waits for the first one."""
        if self.shutdown_done is not None:
            await self.shutdown_done.wait()
            return
        # Runs in the caller's task (the firmware service restarts from inside its own task
        # and must be recognised there), the Event lets a second caller wait for it.
        self.shutdown_done = asyncio.Event()
        try:
            await self._shutdown(reason, graceful, drain_s)
        finally:
            self.shutdown_done.set()

    async def _shutdown(self, reason: str, graceful: bool, drain_s: float) -> None:
        if self.notifier:
            self.notifier.stopping()
        st = self.station
        if st is not None and graceful:
            async with self.lock:
                now = self.clock()
                acts: list = []
                for c in st.connectors.values():
                    if c.tx is not None:
                        acts += st._stop_tx(c, reason, None, now)
                acts += st._settle(now)
                await self._execute(acts)
            deadline = time.monotonic() + drain_s
            while ((len(st.queue) and st.online) or self.unsaved) and time.monotonic() < deadline:
                if self.unsaved:
                    async with self.lock:
                        await self._flush_unsaved()
                await asyncio.sleep(0.1)
        for t in self.tasks:
            t.cancel()
        if self.link:
            await self.link.close()
        self.closing = True  # from here on, late link callbacks must not step the core
        if self.api:
            await self.api.stop()
        if self.firmware:
            await self.firmware.close()
        if self.drivers:
            await self.drivers.close()  # opens every contactor
        if self.store:
            if not await self._flush_unsaved():
                log.critical("store still failing at shutdown; NOT saved: %r", self.unsaved)
            await self.store.close()

    def _core_link_up(self, session: int, now: datetime) -> list:
        self.core_session = session
        return self.station.link_up(now)

    def _core_link_down(self, now: datetime) -> list:
        self.core_session = None
        return self.station.link_down(now)

    def _on_csms_call(self, uid: str, action: str, payload: dict) -> None:
        if self.firmware is not None:  # TriggerMessage reports the transfers' live status
            self.station.firmware_status = self.firmware.firmware_status
            self.station.diagnostics_status = self.firmware.diagnostics_status
        asyncio.ensure_future(self._answer_call(uid, action, payload))

    async def _answer_call(self, uid: str, action: str, payload: dict) -> None:
        acts = await self._step(self.station.csms_call, uid, action, payload)
        if acts is None and self.link is not None:  # the core failed: the CSMS still gets an answer
            self.link.reply_error(uid, "InternalError", f"the station could not process {action}")

    # ------------------------------------------------------------------ stepping the core
    def _spawn(self, fn: Callable, *args) -> None:
        asyncio.ensure_future(self._step(fn, *args))

    async def _step(self, fn: Callable, *args) -> Any:
        if self.closing:
            log.debug("station closing; ignoring %s", getattr(fn, "__name__", fn))
            return []
        async with self.lock:
            try:
                acts = fn(*args, self.clock())
            except Exception:  # noqa: BLE001 - a core bug must not take the station down
                log.exception("station core failed handling %s%r", getattr(fn, "__name__", fn), args[:3])
                return None
            await self._execute(acts or [])
        self.kick.set()
        if self.station is not None and self._busy():
            self.meter_wake.set()
        self._update_status()
        if not self.registered_once and self.station.registration == "Accepted":
            self.registered_once = True
            asyncio.ensure_future(self._after_first_accept())
        return acts

    async def _after_first_accept(self) -> None:
        """BootNotification Accepted: end a firmware trial, report its outcome, resume jobs."""
        if self.firmware is None:
            return
        from twin.firmware import slots

        data_dir = Path(self.cfg.data_dir)
        slots.mark_boot_ok(data_dir, twin.__version__)
        report = slots.pending_report(data_dir)
        if report:
            log.info("firmware: reporting %s after the restart", report)
            await self._step(self.station.send_firmware_status, report)
        await self.firmware.resume()

    async def _execute(self, acts: list) -> None:
        unsafe = False  # a failed Persist: do not close contactors on unrecorded data
        for act in acts:
            try:
                if isinstance(act, A.Persist):
                    if not act.ops:
                        continue
                    if not await self._persist(act.ops):
                        unsafe = True
                elif isinstance(act, A.Send):
                    # Only on the connection the core has seen come up: a call computed for a link
                    # that has since dropped is redone by the core after its link_down/link_up.
                    if self.link is not None and self.core_session == self.link.session:
                        self.link.send_call(act.ref, act.action, act.payload, act.timeout)
                elif isinstance(act, A.Reply):
                    self.link.reply(act.unique_id, act.payload)
                elif isinstance(act, A.ReplyError):
                    self.link.reply_error(act.unique_id, act.code, act.description, act.details)
                elif isinstance(act, A.SetRelay):
                    if act.closed and unsafe:
                        log.error("not closing contactor %s: its transaction is not on disk", act.connector_id)
                        continue
                    self.drivers.relays[act.connector_id].set(act.closed)
                elif isinstance(act, A.SetPilot):
                    pilot = self.drivers.pilots.get(act.connector_id)
                    if pilot is not None:
                        pilot.set_current_limit(act.amps)
                elif isinstance(act, A.Restart):
                    asyncio.ensure_future(self._restart(act.kind))
                elif isinstance(act, A.Delegate):
                    self._delegate(act)
                elif isinstance(act, A.LinkSetting):
                    if self.link:
                        self.link.ping_interval = act.ping_interval
            except Exception:  # noqa: BLE001
                log.exception("executing %s failed", type(act).__name__)
        if unsafe and self.station.station_fault is None:
            # Cannot record transactions: fault the station (stops charging, refuses new
            # sessions) rather than charge on data that a power cut would lose.
            more = self.station.fault(0, *STORAGE_FAULT, self.clock())
            await self._execute([a for a in more if not isinstance(a, A.Persist)] +
                                [a for a in more if isinstance(a, A.Persist)])

    async def _persist(self, ops: list[tuple]) -> bool:
        if self.unsaved and not await self._flush_unsaved():
            self.unsaved.append(ops)
            return False
        try:
            await self.store.apply(ops)
            return True
        except StoreError as e:
            if not getattr(e, "retryable", True):
                return self._refused(ops, e)
            log.error("store write failed, keeping the data in memory and retrying: %s", e)
            self.unsaved.append(ops)
            return False

    def _refused(self, ops: list[tuple], e: Exception) -> bool:
        """The store refuses this batch for good (a bug in the data, not the disk): retrying would
        block every later write, so it is logged in full and set aside."""
        log.critical("store refused a batch permanently (%s); it is NOT saved: %r", e, ops)
        return False

    async def _flush_unsaved(self) -> bool:
        while self.unsaved:
            try:
                await self.store.apply(self.unsaved[0])
            except StoreError as e:
                if getattr(e, "retryable", True):
                    return False
                self._refused(self.unsaved[0], e)
            self.unsaved.pop(0)
        if self.station and self.station.station_fault == STORAGE_FAULT:
            log.warning("store writable again; clearing the storage fault")
            acts = self.station.clear_fault(0, self.clock())
            await self._execute(acts)
        return True

    def _delegate(self, act: A.Delegate) -> None:
        p = act.payload
        from twin.core.timeutil import parse_ts

        if self.firmware is None:
            self.link.reply_error(act.unique_id, "NotSupported", "firmware management unavailable")
            return
        try:
            if act.action == "UpdateFirmware":
                self.firmware.update_firmware(p["location"], parse_ts(p["retrieveDate"]) or self.clock(),
                                              p.get("retries"), p.get("retryInterval"))
                self.link.reply(act.unique_id, {})
            elif act.action == "GetDiagnostics":
                name = self.firmware.get_diagnostics(p["location"], p.get("retries"), p.get("retryInterval"),
                                                     parse_ts(p.get("startTime")), parse_ts(p.get("stopTime")))
                self.link.reply(act.unique_id, {"fileName": name} if name else {})
        except Exception as e:  # noqa: BLE001
            log.exception("%s failed", act.action)
            self.link.reply_error(act.unique_id, "InternalError", str(e)[:200])

    async def _restart(self, kind: str) -> None:
        log.warning("%s reset: restarting the station", kind)
        if kind == "Soft":
            await self.shutdown("SoftReset", graceful=True)
        else:
            await self.shutdown("HardReset", graceful=False)
        self.request_exit(RESTART_EXIT_CODE)

    # ------------------------------------------------------------------ loops
    async def _timer_loop(self) -> None:
        while True:
            deadline = self.station.next_deadline()
            now = self.clock()
            wait = 60.0 if deadline is None else max(0.0, min(60.0, (deadline - now).total_seconds()))
            self.kick.clear()
            if wait > 0:
                try:
                    await asyncio.wait_for(self.kick.wait(), timeout=wait)
                    continue  # something happened: recompute the deadline
                except asyncio.TimeoutError:
                    pass
            await self._step(self.station.tick)

    async def _store_retry_loop(self) -> None:
        """The store failed (disk full, I/O error): retry the writes held in memory."""
        while True:
            await asyncio.sleep(2.0)
            if self.unsaved:
                async with self.lock:
                    await self._flush_unsaved()
                self.kick.set()

    async def _meter_loop(self) -> None:
        timeout = float(getattr(self.cfg, "meter_timeout_s", 3.0))
        while True:
            for cid, meter in self.drivers.meters.items():
                try:
                    reading = await asyncio.wait_for(meter.read(), timeout)
                except Exception as e:  # noqa: BLE001 - DriverError, timeout, anything: report, keep going
                    await self._step(self.station.meter_failed, cid, f"{type(e).__name__}: {e}"[:50])
                    continue
                await self._step(self.station.meter_reading, cid, reading)
            # Poll fast while a car is plugged (energy, limits, SoC matter); slowly when idle,
            # which keeps an idle station near 0 % CPU. A plug or a card wakes the loop.
            self.meter_wake.clear()
            if not self._busy():
                try:
                    await asyncio.wait_for(self.meter_wake.wait(), timeout=self.idle_meter_poll_s)
                except asyncio.TimeoutError:
                    pass
            else:
                await asyncio.sleep(self.meter_poll_s)

    def _busy(self) -> bool:
        return any(c.plugged or c.tx is not None or c.pending is not None
                   for c in self.station.connectors.values())

    def _on_relay_fault(self, cid: int, fault) -> None:
        """Contactor supervision (drivers.relay_check): a welded contactor faults the connector,
        which stops its transaction and refuses new ones; the CSMS gets the StatusNotification."""
        if fault is None:
            self._spawn(self.station.clear_fault, cid)
        else:
            log.critical("connector %s: %s", cid, fault.info, extra={"connector": cid})
            self._spawn(self.station.fault, cid, fault.error_code, fault.info)

    def _on_watchdog_trip(self) -> None:
        """The loop hung long enough for the driver watchdog to open every contactor; resync."""
        log.critical("event loop was unresponsive; contactors were opened by the watchdog")
        self._spawn(self.station.outputs_reset)

    async def _watchdog_loop(self) -> None:
        interval = self.notifier.watchdog_interval() if self.notifier else None
        while True:
            if interval:
                self.notifier.watchdog()  # from the event loop itself: a hung loop stops the pings
            await asyncio.sleep(interval or 3600)

    def _status_text(self) -> str:
        st = self.station
        return (f"registration {st.registration}, link {'online' if st.online else 'offline'}, "
                f"queue {len(st.queue)}")

    def _update_status(self) -> None:
        text = self._status_text()
        if text != self.last_status_text and self.notifier:
            self.last_status_text = text
            self.notifier.status(text)

    # ------------------------------------------------------------------ control API backend
    @property
    def connector_count(self) -> int:
        return self.cfg.connectors

    def state(self) -> dict:
        st = self.station
        snap = st.snapshot()
        oldest = st.queue.oldest_created_at()
        if oldest:
            from twin.core.timeutil import parse_ts

            snap["queue"]["oldestAgeS"] = round((self.clock() - parse_ts(oldest)).total_seconds(), 1)
        snap["chargePointId"] = self.cfg.charge_point_id
        snap["firmwareVersion"] = "V" + twin.__version__
        snap["drivers"] = [r.__dict__ for r in self.drivers.reports] if self.drivers else []
        snap["warnings"] = [r.warning for r in (self.drivers.reports if self.drivers else []) if r.warning]
        snap["store"] = {"ok": not self.unsaved, "unsavedBatches": len(self.unsaved)}
        if self.firmware is not None:
            snap["firmware"] = {"status": self.firmware.firmware_status,
                                "diagnostics": self.firmware.diagnostics_status,
                                "progress": getattr(self.firmware, "progress", {})}
        if self.link is not None:
            snap["linkError"] = self.link.last_error
            snap["csmsUrl"] = self.link.url
        return snap

    def _conn(self, cid: int, *, allow_station: bool = False) -> int:
        from twin.control_api import ApiError

        if cid not in self.station.connectors and not (allow_station and cid == 0):
            raise ApiError(404, f"no connector {cid}")
        return cid

    async def plug(self, connector_id: int) -> dict:
        await self._step(self.station.plug, self._conn(connector_id))
        return self.state()

    async def unplug(self, connector_id: int) -> dict:
        await self._step(self.station.unplug, self._conn(connector_id))
        return self.state()

    async def rfid(self, id_tag: str) -> dict:
        await self._step(self.station.tap, id_tag)
        return self.state()

    async def fault(self, connector_id: int, error_code: str, info: str | None) -> dict:
        await self._step(self.station.fault, self._conn(connector_id, allow_station=True), error_code, info)
        return self.state()

    async def clear_fault(self, connector_id: int) -> dict:
        await self._step(self.station.clear_fault, self._conn(connector_id, allow_station=True))
        return self.state()

    async def ev(self, connector_id: int, suspended: bool | None, max_power_w: float | None) -> dict:
        await self._step(self.station.ev_update, self._conn(connector_id), suspended, max_power_w)
        return self.state()

    async def network(self, online: bool) -> dict:
        self.link.set_enabled(online)
        return {"online": online}

    async def debug_block(self, seconds: float) -> dict:
        log.warning("debug: blocking the event loop for %.1f s", seconds)
        time.sleep(seconds)  # deliberately blocking: proves the watchdog pings come from the loop
        return {"blocked": seconds}


class _FirmwareHooks:
    """The firmware service's view of the station (twin.firmware.service.FirmwareHooks)."""

    def __init__(self, rt: Runtime):
        self.rt = rt

    async def send_firmware_status(self, status: str) -> None:
        await self.rt._step(self.rt.station.send_firmware_status, status)

    async def send_diagnostics_status(self, status: str) -> None:
        await self.rt._step(self.rt.station.send_diagnostics_status, status)

    async def wait_until_idle(self) -> None:
        st = self.rt.station
        await self.rt._step(st.set_maintenance, True)
        while st.active_transactions():
            await asyncio.sleep(0.5)

    async def restart(self) -> None:
        await self.rt._restart("Soft")

    def diagnostics_extras(self) -> dict:
        from twin.config import redacted

        rt = self.rt
        return {"config": redacted(rt.cfg), "store": rt.store.summary() if rt.store else {},
                "drivers": [r.__dict__ for r in rt.drivers.reports] if rt.drivers else [],
                "state": rt.state(), "pid": os.getpid()}
