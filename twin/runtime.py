"""The asyncio runtime: wiring only. It builds the store, the core, the drivers, the link,
the control API, systemd and the firmware service, and hands the core to its one owner,
:class:`twin.actor.CoreActor`. Adapters reach the core only through the actor: they post
events (``actor.post``) or await them (``actor.call``); the runtime executes each event's
effects on the hardware and the link (it is the actor's :class:`~twin.actor.EffectsSink`).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

import twin
from twin.events import EventHub
from twin.actor import CoreActor
from twin.core import actions as A
from twin.core.effects import Effects
from twin.core.keys import ConfigKeys
from twin.core.smart_charging import SmartCharging
from twin.core.station import Station, StationSpec
from twin.firmware.launcher import RESTART_EXIT_CODE
from twin.link import Link
from twin.redact import RedactingFilter, redact_ops
from twin.sim.ev import EvModel, SimulatedEv
from twin.store import Store

log = logging.getLogger("twin.runtime")
log.addFilter(RedactingFilter())  # its lines quote CSMS payloads and store ops

# CSMS calls the certificate service answers (the rest of the Delegates go to the firmware service).
SECURITY_DELEGATES = frozenset({"InstallCertificate", "GetInstalledCertificateIds", "DeleteCertificate",
                                "CertificateSigned"})

BOOT_METER_READ_S = 3.0  # how long boot waits for a meter register before it stops interrupted sessions
FIRMWARE_REPORT_RETRY_S = 2.0  # how often an install's outcome is offered again until it is sent
STOP_ALL_S = 15.0  # a graceful stop waits this long for the core to stop the sessions


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


RESTART_MARKER = "restarted-on-purpose"


def _put_restart_marker(data_dir: Path) -> None:
    try:
        (data_dir / RESTART_MARKER).touch()
    except OSError as e:  # a full disk: the next boot reports StartupOfTheDevice instead
        log.warning("cannot write the restart marker: %s", e)


def _take_restart_marker(data_dir: Path) -> bool:
    marker = data_dir / RESTART_MARKER
    try:
        marker.unlink()
    except FileNotFoundError:
        return False
    except OSError as e:
        log.warning("cannot remove the restart marker: %s", e)
    return True


class Runtime:
    """One running station. ``await start()``, then ``await wait()`` for the exit code."""

    def __init__(self, cfg: Any, *, clock: Callable[[], datetime] = utcnow, meter_poll_s: float = 1.0):
        self.cfg = cfg
        self.clock = clock
        self.meter_poll_s = meter_poll_s
        self.meter_wake = asyncio.Event()
        self.idle_meter_poll_s = 10.0
        self._meter_delivered: dict[int, Any] = {}  # per connector: the last reading the core got
        self.done: asyncio.Future | None = None
        self.tasks: list[asyncio.Task] = []
        self.store: Store | None = None
        self.station: Station | None = None
        self.actor: CoreActor | None = None
        self.sim_evs: dict[int, SimulatedEv] = {}
        self.drivers = None
        self.link: Link | None = None
        self.api = None
        self.firmware = None
        self.certs = None  # twin.security.certs.CertificateStore
        self.security_log = None  # twin.security.log.SecurityLog
        self.security = None  # the certificate service (twin.security.service)
        self._security_log_write: asyncio.Future | None = None
        self.notifier = None
        self.last_status_text = ""
        self.started_monotonic = time.monotonic()
        self.registered_once = False
        self.core_session: int | None = None
        self.shutdown_done: asyncio.Event | None = None
        self.events = EventHub()  # GET /api/events: "state" after core steps, "frame" per wire frame
        self.metrics = None  # GET /metrics: a twin.metrics.Metrics, made with the link (_metrics_start)

    # ------------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        from drivers.registry import build_drivers
        from twin.service.notify import Notifier

        cfg = self.cfg
        self.done = asyncio.get_running_loop().create_future()
        self.notifier = Notifier()
        data_dir = Path(cfg.data_dir)
        self.store = await self._open_store(data_dir)
        state = await self.store.load()
        keys = ConfigKeys(overrides=cfg.keys, stored=state["kv"].get("config", {}), profile=cfg.profile)
        for warning in getattr(keys, "warnings", []):
            log.warning("configuration key: %s", warning)
        spec = self._spec()
        smart = SmartCharging(
            cfg.connectors, max_stack_level=keys.get_int("ChargeProfileMaxStackLevel"),
            max_periods=keys.get_int("ChargingScheduleMaxPeriods"),
            max_installed=keys.get_int("MaxChargingProfilesInstalled"),
            station_max_amps=spec.max_current_a,
            composite_start_schedule=cfg.profile.quirks.composite_start_schedule)
        self.station = st = Station(spec, keys, smart, state)
        from twin.security.certs import CertificateStore
        from twin.security.log import SecurityLog

        self.certs = CertificateStore(data_dir)
        self.security_log = SecurityLog(data_dir)
        self.actor = CoreActor(st, self.store, self, clock=self.clock, detect_clock_steps=self.clock is utcnow,
                               after_step=self._after_step)
        # The simulated cars: only the sim meter asks them what they draw; a real meter measures.
        ev = cfg.ev
        self.sim_evs = {cid: SimulatedEv(EvModel(max_power_w=ev.max_power_w, battery_wh=ev.battery_wh,
                                                 soc_start=ev.soc_start, phases=ev.phases),
                                         lambda cid=cid: st.evse_view(cid))
                        for cid in st.connectors}
        floors = {cid: st.meter_floor.get(cid, 0.0) for cid in st.connectors}
        for tx in state["transactions"].values():
            cid = tx["connector_id"]
            floors[cid] = max(floors.get(cid, 0.0), float(tx.get("last_meter_wh") or 0))
        self.drivers = await build_drivers(
            cfg.drivers or {}, cfg.connectors,
            power_sources={cid: car.power_w for cid, car in self.sim_evs.items()},
            soc_sources={cid: car.soc for cid, car in self.sim_evs.items()},
            energy_floors=floors, force_sim=bool(getattr(cfg, "force_sim", False)))
        self.actor.start().add_done_callback(self._actor_ended)
        await self._start_inputs()
        await self.drivers.start_supervision(self._on_relay_fault, on_watchdog_trip=self._on_watchdog_trip,
                                             loop_watchdog_s=self.loop_watchdog_s())
        await self._start_firmware(data_dir)
        # The registers at boot are the energy of sessions a power loss interrupted.
        await self._read_meters(timeout=BOOT_METER_READ_S)
        # Boot: interrupted transactions are stopped (PowerLoss / HardReset) and queued.
        restarted = await asyncio.to_thread(_take_restart_marker, data_dir)
        await self.actor.call(functools.partial(st.boot, restarted=restarted))
        if self.api_enabled():
            from twin.control_api import ControlApi

            self.api = ControlApi.from_config(self, cfg)
            await self.api.start()
            log.info("control API on %s", self.api.url)
        else:
            log.info("control API off ([control] enabled = false, or the drivers name real hardware)")
        # The certificate service before the link: the core knows what the store holds
        # (A05.FR.03/04) before the first CSMS call can ask.
        await self._security_start()
        self._start_link(keys)
        self.tasks.append(asyncio.create_task(self._meter_loop(), name="meters"))
        if self.notifier.watchdog_interval():  # systemd's WatchdogSec=; without it the loop has nothing to do
            self.tasks.append(asyncio.create_task(self._watchdog_loop(), name="watchdog"))
        self.notifier.ready(self._status_text())
        log.info("station %s up: %d connectors, firmware %s, CSMS %s", cfg.charge_point_id, cfg.connectors,
                 spec.identity["firmwareVersion"], self.link.url)

    async def _open_store(self, data_dir: Path) -> Store:
        """The durable store the core writes through. A fleet member overrides it with its
        view of the fleet's shared store (twin.fleet.store)."""
        return await Store.open(data_dir / "twin.db")

    def loop_watchdog_s(self) -> float | None:
        """How long the event loop may stall before the drivers' watchdog thread opens every
        contactor (drivers.registry). None: no thread of this runtime's own (a fleet member:
        the fleet's one watchdog watches the loop they all share)."""
        from drivers.registry import LOOP_WATCHDOG_S

        return LOOP_WATCHDOG_S

    def _start_link(self, keys: ConfigKeys) -> None:
        """The websocket to the CSMS (twin.link), on the station's security profile: every
        attempt's URL, Basic header and TLS context come from twin.security.transport.plan,
        and each outcome commits or drops a pending profile or key (A05.FR.07-09, A01)."""
        from twin.security import transport

        cfg, st, post = self.cfg, self.station, self.actor.post
        self._link_endpoints = transport.Endpoints(cfg.csms_url, dict(getattr(cfg, "profile_urls", None) or {}))
        self._link_monitor = transport.Monitor()
        self._link_provision()
        # The URL of the committed profile, for the start-up log line; every attempt asks the plan.
        base = self._link_endpoints.base(st.security.connection().profile) or cfg.csms_url
        self.metrics = self._metrics_start()
        self.link = Link(
            base, cfg.charge_point_id, plan=self._link_plan,
            on_connected=self._link_connected, on_connect_failed=self._link_connect_failed,
            # A CSMS CALL refused with a CALLERROR: InvalidMessages (WP3 §8, rate-limited by the core).
            on_invalid=lambda description: post(st.invalid_message, description),
            on_round_trip=self.metrics.round_trip_observer(cfg.charge_point_id) if self.metrics else None,
            ping_interval=keys.get_int("WebSocketPingInterval"),
            on_up=lambda: post(self._core_link_up, self.link.session),
            on_down=lambda: post(self._core_link_down),
            on_call=self._on_csms_call,
            on_result=lambda ref, payload: post(st.call_result, ref, payload),
            on_failed=lambda ref, reason: post(st.call_failed, ref, reason),
            # No answer on a link that still answers pings (a dead one ends in on_down instead).
            on_timeout=lambda ref: post(st.call_timed_out, ref))
        self._wire_start()  # the [[faults]], the trace file and the event hub, before it connects
        self.link.start()

    def _metrics_start(self):
        """The process's metrics (twin.metrics) with this station in them, or None when
        prometheus_client is missing: the station runs without ``GET /metrics`` then."""
        try:
            from twin.metrics import Metrics
        except ImportError as e:
            log.warning("metrics off: %s (install prometheus-client)", e)
            return None
        metrics = Metrics()
        metrics.add_station(self.cfg.charge_point_id, self._metrics_reading)
        return metrics

    def _metrics_reading(self):
        """What the metrics read at each scrape: a few attributes of the core and the link,
        read between actor steps (as state() does), never a whole snapshot."""
        from twin.core.timeutil import parse_ts
        from twin.metrics import Reading

        st, link = self.station, self.link
        oldest = st.queue.oldest_created_at()
        created = parse_ts(oldest) if oldest else None
        return Reading(
            connected=bool(link is not None and link.connected), registered=st.registration == "Accepted",
            queue_depth=len(st.queue),
            oldest_queued_age_s=(self.clock() - created).total_seconds() if created else None,
            discarded=st.discarded_count, connections=link.session if link is not None else 0,
            transactions_begun=st.txlog.next_local_id, transactions_running=st.active_transactions(),
            registers_wh={cid: st.evse.energy(cid) for cid in st.connectors})

    def _link_store(self):
        """The certificate store the TLS profiles take their anchors and client pair from."""
        if self.certs is None:
            from twin.security.certs import CertificateStore

            self.certs = CertificateStore(Path(self.cfg.data_dir))
        return self.certs

    def _link_provision(self) -> None:
        """Factory provisioning from the config: ``[csms] ca_file`` roots become installed
        CentralSystemRootCertificates and ``[csms] client_cert_file``/``client_key_file`` a
        charge point pair, so a station can start on profile 2 or 3. The TLS profiles trust
        the store only, never a file or the system's CAs.

        Once per data dir: ``<data_dir>/csms-provisioned.json`` names the fingerprints
        already provisioned, and they are never installed again. After that the store is
        the CSMS's to manage: a DeleteCertificate (M04) stays deleted across restarts, and
        the store does not fill up with the file's roots. A ca_file that names new roots
        provisions those, once."""
        from cryptography.hazmat.primitives import serialization

        from twin.security import pki
        from twin.security.certs import CertificateError

        cfg, store, now = self.cfg, self._link_store(), self.clock()
        marker = Path(cfg.data_dir) / "csms-provisioned.json"
        done = self._link_read_provisioned(marker)
        changed = recorded = False
        if getattr(cfg, "ca_file", None):
            try:
                roots = pki.load_certificates(Path(cfg.ca_file).read_bytes())
            except (OSError, CertificateError) as e:
                roots = []
                log.error("csms.ca_file %s: %s", cfg.ca_file, e)
            limit = self.station.settings.get_int("CertificateStoreMaxLength") or 20
            for cert in roots:
                fp = pki.fingerprint(cert)
                if fp in done["ca_file"]:
                    continue  # provisioned before: installed, or deleted by the CSMS since
                text = cert.public_bytes(serialization.Encoding.PEM).decode("ascii")
                outcome = store.install_root(pki.CENTRAL_SYSTEM_ROOT, text, now, limit)
                if outcome.status != "Accepted":
                    # Not recorded: not installed, so the next start tries again.
                    log.error("csms.ca_file %s: %s not installed: %s", cfg.ca_file, cert.subject.rfc4514_string(),
                              outcome.reason)
                    continue
                done["ca_file"].append(fp)
                recorded = True
                changed = changed or outcome.reason != "already installed"
        chain_file, key_file = getattr(cfg, "client_cert_file", None), getattr(cfg, "client_key_file", None)
        if chain_file and key_file:
            try:
                chain = pki.load_certificates(Path(chain_file).read_bytes())
                fp = pki.fingerprint(chain[0])
                if fp not in done["client"]:
                    known = {c.id for c in store.all_charge_point_credentials()}
                    if fp not in known:
                        store.import_charge_point_credentials(Path(chain_file).read_bytes(),
                                                              Path(key_file).read_bytes())
                        changed = True
                    done["client"].append(fp)
                    recorded = True
            except (OSError, CertificateError) as e:
                log.error("csms.client_cert_file %s: not installed: %s", chain_file, e)
        if recorded:
            try:
                self._link_write_provisioned(marker, done)
            except OSError as e:  # the next start provisions again ("already installed"): no harm
                log.error("cannot record the provisioned certificates in %s: %s", marker, e)
        if changed:
            from twin.core.security import SecurityFacts

            def valid(use: str) -> int:
                return sum(pki.validity_problem(cert, now) is None for cert in store.roots(use))

            # What ChangeConfiguration(SecurityProfile) checks (A05.FR.03/04) now includes these.
            facts = SecurityFacts(valid(pki.CENTRAL_SYSTEM_ROOT), valid(pki.MANUFACTURER_ROOT),
                                  store.charge_point_credentials(now) is not None)
            self.actor.post(self.station.security_facts, facts)
            if self.security is not None:
                self.security.store_changed()  # its inventory (GET /api/state) sees them too

    @staticmethod
    def _link_read_provisioned(marker: Path) -> dict[str, list[str]]:
        """The fingerprints ``_link_provision`` installed before (none when the file is
        missing; an unreadable one is reported and read as none: provisioning again only
        finds the roots "already installed", unless the CSMS deleted them)."""
        import json

        done: dict[str, list[str]] = {"ca_file": [], "client": []}
        try:
            data = json.loads(marker.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return done
        except (OSError, ValueError) as e:
            log.error("%s is unreadable (%s): provisioning from the config again", marker, e)
            return done
        for name in done:
            values = data.get(name) if isinstance(data, dict) else None
            if isinstance(values, list):
                done[name] = [v for v in values if isinstance(v, str)]
        return done

    @staticmethod
    def _link_write_provisioned(marker: Path, done: dict[str, list[str]]) -> None:
        import json

        from twin.security.certs import fsync_dir, write_atomic

        marker.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(marker, (json.dumps(done, indent=1, sort_keys=True) + "\n").encode(), 0o644)
        fsync_dir(marker.parent)

    async def _link_plan(self):
        """The next connection attempt: read between actor steps, the files off the loop."""
        from twin.security import transport

        connection = self.station.security.connection()
        return await asyncio.to_thread(transport.plan, connection, self._link_endpoints, self.cfg.charge_point_id,
                                       self._link_store(), self.clock())

    async def _link_connected(self, attempt) -> None:
        """The CSMS accepted the websocket: what the attempt tried is committed, before
        anything is sent on it (A05.FR.09: the lower profile is never used again)."""
        profile, used_pending_key = self._link_monitor.connected(attempt)
        await self.actor.call(self.station.connection_established, profile, used_pending_key)

    async def _link_connect_failed(self, attempt, exc: BaseException) -> bool:
        """A failed connection attempt: its security event, once per run of failures; a
        pending profile or key falls back to the committed one (A05.FR.08), and True asks
        the link to connect again at once."""
        failure = self._link_monitor.failed(attempt, exc)
        st = self.station
        if failure.fallbacks:
            log.warning("connecting with the new %s failed (%s): back to the previous settings",
                        " and ".join(failure.fallbacks), failure.tech_info)
            before = st.security.connection()
            event, ran = failure.event, True
            for kind in failure.fallbacks:
                # None: the actor is closed (shutting down) or the core failed; the step did not run.
                done = await self.actor.call(st.connection_fallback, kind, event, failure.tech_info if event else None)
                ran = ran and done is not None
                event = None
            # At once only when the fallback really changed what the next attempt uses: else
            # the same plan again, and an attempt that touches no network would spin.
            return ran and st.security.connection() != before
        if failure.event is not None:
            await self.actor.call(st.security_event, failure.event, failure.tech_info)
        return False

    def _spec(self) -> StationSpec:
        cfg = self.cfg
        identity = {**cfg.profile.identity, **{k: v for k, v in (cfg.identity or {}).items() if v}}
        identity["firmwareVersion"] = "V" + twin.__version__  # the package version is the firmware version
        return StationSpec.from_profile(cfg.profile, identity=identity, connectors=cfg.connectors,
                                        fixed_cable=cfg.fixed_cable)

    def api_enabled(self) -> bool:
        return self.cfg.control_enabled

    async def _start_inputs(self) -> None:
        reader = self.drivers.reader
        post = self.actor.post
        await reader.start(lambda tag: post(self.station.tap, tag))
        for cid, inp in self.drivers.ev_inputs.items():
            await inp.start(lambda present, cid=cid: post(
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
        await self.actor.call(self.station.transfer_status, self.firmware.firmware_status,
                              self.firmware.diagnostics_status)

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
            # The event streams end with the Runtime that feeds them: a fleet member is replaced
            # by a new Runtime (and hub) while the fleet's API stays up, and a stream left on
            # this hub would carry keepalives and never an event again. Ended, the reader
            # reconnects (WHATWG HTML §9.2.3) and subscribes to the new one.
            self.events.close()
            self.shutdown_done.set()

    async def power_cut(self) -> None:
        """Stop the way a power cut does: no StopTransaction, no flush, no restart marker, no
        close handshake; the CSMS sees the TCP connection die. What the store committed is on
        disk (synchronous=FULL); what it was about to commit may or may not be, as on a real
        cut. The scenario runner's ``restart = "power"``; a new Runtime on the same data dir
        then boots as after power-up."""
        actor = self.actor
        if actor is not None:
            actor.closed = True  # nothing steps the core any more
        if self.link is not None:
            await self.link.abort()
        tasks = [t for t in [*self.tasks, getattr(actor, "task", None)] if t is not None]
        for t in tasks:
            t.cancel()
        for t in tasks:
            try:
                await t
            except (asyncio.CancelledError, Exception):  # noqa: BLE001
                pass
        for closer in (self._security_close, getattr(self.firmware, "close", None),
                       getattr(self.api, "stop", None), getattr(self.drivers, "close", None)):
            if closer is not None:
                try:
                    await closer()
                except Exception:  # noqa: BLE001 - a cut does not wait for anything
                    pass
        if self.link is not None:
            self.link.tracer.close()
        if self.store is not None:
            try:
                await self.store.close()  # the handle; a real cut leaves the WAL, which recovers the same
            except Exception:  # noqa: BLE001
                pass
        self.events.close()  # as at a shutdown: the streams reconnect to the next Runtime

    async def _shutdown(self, reason: str, graceful: bool, drain_s: float) -> None:
        if self.notifier:
            self.notifier.stopping()
        st, actor = self.station, self.actor
        if st is not None and actor is not None and graceful:
            try:
                await asyncio.wait_for(actor.call(st.stop_all, reason), timeout=STOP_ALL_S)
            except asyncio.TimeoutError:
                # A stuck store or core: the drivers open every contactor below regardless.
                log.error("stopping the transactions took longer than %.0f s; opening the contactors", STOP_ALL_S)
                drain_s = 0.0
            deadline = time.monotonic() + drain_s
            while ((len(st.queue) and st.online) or actor.unsaved) and time.monotonic() < deadline:
                if actor.unsaved:
                    await actor.call(st.tick)  # the actor retries held writes before each event
                await asyncio.sleep(0.1)
        for t in self.tasks:
            t.cancel()
        if actor is not None:
            await actor.close()  # finishes what is queued; from here on nothing steps the core
        await self._security_close()
        if self._security_log_write is not None:
            await asyncio.wait([self._security_log_write], timeout=5)  # the last entries reach the file
        if self.link:
            await self.link.close()
        if self.api:
            await self.api.stop()
        if self.firmware:
            await self.firmware.close()
        if self.drivers:
            await self.drivers.close()  # opens every contactor
        if self.store:
            if actor is not None and not await actor.flush():
                log.critical("store still failing at shutdown; NOT saved: %r", redact_ops(actor.unsaved))
            await self.store.close()
        if self.cfg is not None and self.store is not None:
            # Gone down on purpose (a Reset, a firmware restart, a service stop): the next boot is
            # ResetOrReboot, not StartupOfTheDevice (WP3 §8). A power cut or kill -9 leaves none.
            await asyncio.to_thread(_put_restart_marker, Path(self.cfg.data_dir))

    # ------------------------------------------------------------------ events into the core
    def _core_link_up(self, session: int, now: datetime) -> Effects:
        self.core_session = session
        return self.station.link_up(now)

    def _core_link_down(self, now: datetime) -> Effects:
        self.core_session = None
        return self.station.link_down(now)

    def _on_csms_call(self, uid: str, action: str, payload: dict) -> None:
        if self.firmware is not None:  # (Extended)TriggerMessage reports the transfers' live status
            fw = self.firmware
            self.actor.post(functools.partial(self.station.transfer_status, fw.firmware_status, fw.diagnostics_status,
                                              signed_firmware=getattr(fw, "signed_firmware_state", None),
                                              log=getattr(fw, "log_state", None)))
        self.actor.post(self._answer_call, uid, action, payload)

    def _answer_call(self, uid: str, action: str, payload: dict, now: datetime) -> Effects:
        try:
            return self.station.csms_call(uid, action, payload, now)
        except Exception:  # noqa: BLE001 - a core bug must not take the station down
            log.exception("station core failed handling %s %r", action, payload)
            # The CSMS still gets an answer (§4.1.3: every CALL gets a CALLRESULT or CALLERROR).
            return Effects(replies=[A.ReplyError(uid, "InternalError", f"the station could not process {action}")])

    def _after_step(self) -> None:
        if self.station is not None and self._busy():
            self.meter_wake.set()
        self._update_status()
        if not self.registered_once and self.station.registration == "Accepted":
            self.registered_once = True
            asyncio.ensure_future(self._after_first_accept())
        self._events_state()

    def _events_state(self) -> None:
        """Publish the /api/state dict as a "state" event, at most every 100 ms: the calls in
        between coalesce into one trailing publish of the newest state, so a busy station does
        not flood the stream (and nobody listening costs no snapshot)."""
        self.events.publish_latest("state", self.state, interval_s=0.1)

    async def _after_first_accept(self) -> None:
        """BootNotification Accepted: end a firmware trial, report its outcome, resume jobs."""
        if self.firmware is None:
            return
        from twin.firmware import slots

        data_dir = Path(self.cfg.data_dir)
        await asyncio.to_thread(slots.mark_boot_ok, data_dir, twin.__version__)
        reported = await self._report_install_outcome(data_dir)
        await self.firmware.resume()
        while not reported and not self.actor.closed:
            await asyncio.sleep(FIRMWARE_REPORT_RETRY_S)
            reported = await self._report_install_outcome(data_dir)

    async def _report_install_outcome(self, data_dir: Path) -> bool:
        """Send the outcome of the install before the restart; True once nothing is owed.
        It is consumed only when the notification went out: a link that drops between the
        Accepted and the send must not lose it (§4.5)."""
        from twin.firmware import slots

        owed = await asyncio.to_thread(slots.pending_outcome, data_dir, consume=False)
        if owed is None:
            return True
        if owed.signed:  # L01.FR.10: the SignedUpdateFirmware's requestId, also after the restart
            fx = await self.actor.call(self.station.send_signed_firmware_status, owed.status, owed.request_id)
        else:
            fx = await self.actor.call(self.station.send_firmware_status, owed.status)
        if fx is None or not fx.sends or self.link is None or self.core_session != self.link.session:
            return False
        log.info("firmware: reported %s after the restart%s", owed.status,
                 f" (SignedUpdateFirmware {owed.request_id})" if owed.signed else "")
        if owed.signed and self.firmware is not None:
            self.firmware.signed_status_sent(owed.status, owed.request_id)
        if owed.status == slots.REPORT_INSTALLED:
            # Critical (WP3 section 8): new firmware is installed and running. The core
            # queues it durably, so once is enough.
            await self.actor.call(self.station.security_event, "FirmwareUpdated",
                                  f"firmware {owed.version} installed and running")
        await asyncio.to_thread(slots.pending_report, data_dir)
        return True

    # ------------------------------------------------------------------ executing effects (EffectsSink)
    def drive(self, output: A.SetRelay | A.SetPilot) -> None:
        if isinstance(output, A.SetRelay):
            self.drivers.relays[output.connector_id].set(output.closed)
        else:
            pilot = self.drivers.pilots.get(output.connector_id)
            if pilot is not None:
                pilot.set_current_limit(output.amps)

    def reply(self, reply: A.Reply | A.ReplyError | A.Delegate) -> None:
        if isinstance(reply, A.Reply):
            self.link.reply(reply.unique_id, reply.payload)
        elif isinstance(reply, A.ReplyError):
            self.link.reply_error(reply.unique_id, reply.code, reply.description, reply.details)
        else:
            asyncio.ensure_future(self._delegate(reply))

    def send(self, call: A.Send) -> None:
        # Only on the connection the core has seen come up: a call computed for a link that
        # has since dropped is redone by the core after its link_down/link_up.
        if self.link is not None and self.core_session == self.link.session:
            self.link.send_call(call.ref, call.action, call.payload, call.timeout)

    def control(self, request: A.Control) -> None:
        if isinstance(request, A.Restart):
            asyncio.ensure_future(self._restart(request.kind))
        elif isinstance(request, A.LinkSetting):
            if self.link:
                self.link.ping_interval = request.ping_interval
        elif isinstance(request, A.SecurityLogEntry):
            self._write_security_log(request)
        elif isinstance(request, A.Reconnect):
            self._reconnect(request.reason)
        elif isinstance(request, A.SecurityTask):
            if self.security is not None:
                self.security.task(request.kind)
            else:
                log.warning("security task %s: certificate management unavailable", request.kind)

    def _write_security_log(self, entry: A.SecurityLogEntry) -> None:
        """The rolling security log (A04.FR.04): written off the loop, in order."""
        if self.security_log is None:
            return
        previous = self._security_log_write

        async def write() -> None:
            if previous is not None:
                # Entries stay in order; one that failed does not stop those after it.
                await asyncio.wait([previous])
            secrets = [key] if (key := self.station.security.connection().authorization_key) else []
            try:
                dropped = await asyncio.to_thread(self.security_log.append, entry.name, entry.timestamp,
                                                  entry.tech_info, secrets)
            except Exception as e:  # noqa: BLE001 - a full disk, or anything: the station carries on
                log.error("security log: cannot write %s: %s", entry.name, e)
                return
            if dropped and entry.name != "SecurityLogWasCleared" and not self.actor.closed:
                self.actor.post(self.station.security_event, "SecurityLogWasCleared",
                                "the rolling security log dropped its oldest entries")

        self._security_log_write = asyncio.ensure_future(write())

    async def _delegate(self, act: A.Delegate) -> None:
        """A CSMS call the core hands over: certificates to the security service, firmware,
        diagnostics and logs to the firmware service. Each adapter replies itself."""
        try:
            if act.action in SECURITY_DELEGATES:
                await self._security_call(act)
            else:
                await self._firmware_call(act)
        except Exception as e:  # noqa: BLE001 - an adapter bug must still answer the CALL (§4.1.3)
            log.exception("%s failed", act.action)
            self.link.reply_error(act.unique_id, "InternalError", str(e)[:200])

    async def _security_call(self, act: A.Delegate) -> None:
        """InstallCertificate, GetInstalledCertificateIds, DeleteCertificate, CertificateSigned:
        the certificate service (twin.security.service) answers them itself."""
        if self.security is None:
            self.link.reply_error(act.unique_id, "NotSupported", "certificate management unavailable")
            return
        await self.security.handle(act)

    async def _security_start(self) -> None:
        """The certificate service on ``self.certs``. Called after the actor starts and
        before the link does: the core learns what the store holds (A05.FR.03/04) before
        the first CSMS call can ask."""
        from twin.security.certs import CertificateStore
        from twin.security.service import SecurityService, SecuritySettings

        if self.certs is None:
            self.certs = CertificateStore(Path(self.cfg.data_dir))
        self.security = SecurityService(self, self.certs, SecuritySettings.from_config(self.cfg))
        await self.security.start()

    async def _security_close(self) -> None:
        if self.security is not None:
            await self.security.close()

    def _security_snapshot(self) -> dict:
        """The certificate store for GET /api/state (no key material)."""
        return self.security.snapshot() if self.security is not None else {}

    async def _firmware_call(self, act: A.Delegate) -> None:
        """UpdateFirmware, GetDiagnostics, SignedUpdateFirmware, GetLog: the firmware service."""
        p = act.payload
        from twin.core.timeutil import parse_ts

        if self.firmware is None:
            self.link.reply_error(act.unique_id, "NotSupported", "firmware management unavailable")
            return
        if act.action == "UpdateFirmware":
            if self.firmware.settings.secure_update_only:
                # WP3 L01.FR.20: a station that implements signed updates refuses plain ones.
                self.link.reply_error(act.unique_id, "NotSupported",
                                      "UpdateFirmware is disabled here; use SignedUpdateFirmware")
                return
            # Reply once the request is on disk: a confirmed update survives a power cut.
            replied = asyncio.get_running_loop().create_future()
            try:
                await self.firmware.update_firmware(p["location"], parse_ts(p["retrieveDate"]) or self.clock(),
                                                    p.get("retries"), p.get("retryInterval"), replied=replied)
                self.link.reply(act.unique_id, {})
            finally:
                replied.set_result(None)  # the update's first status may go out now
        elif act.action == "GetDiagnostics":
            name = self.firmware.get_diagnostics(p["location"], p.get("retries"), p.get("retryInterval"),
                                                 parse_ts(p.get("startTime")), parse_ts(p.get("stopTime")))
            self.link.reply(act.unique_id, {"fileName": name} if name else {})
        elif act.action == "SignedUpdateFirmware":
            await self._firmware_signed_update(act)
        elif act.action == "GetLog":
            await self._firmware_get_log(act)
        else:
            self.link.reply_error(act.unique_id, "NotSupported", f"{act.action} is not available")

    async def _firmware_signed_update(self, act: A.Delegate) -> None:
        """SignedUpdateFirmware (L01): the signing certificate is checked against the
        installed ManufacturerRootCertificates before the answer (L01.FR.23); an accepted
        request is on disk before the answer, like UpdateFirmware."""
        from twin.core.timeutil import parse_ts

        from twin.security.certs import CertificateStore

        p, fw = act.payload, act.payload["firmware"]
        store = self.certs if self.certs is not None else CertificateStore(Path(self.cfg.data_dir))
        roots = await asyncio.to_thread(store.roots, "ManufacturerRootCertificate")
        replied = asyncio.get_running_loop().create_future()
        try:
            status = await self.firmware.signed_update_firmware(
                p["requestId"], fw["location"], parse_ts(fw["retrieveDateTime"]) or self.clock(),
                parse_ts(fw.get("installDateTime")), fw["signingCertificate"], fw["signature"],
                p.get("retries"), p.get("retryInterval"), manufacturer_roots=roots, replied=replied)
            self.link.reply(act.unique_id, {"status": status})
        finally:
            replied.set_result(None)  # statuses and the security event may go out now

    async def _firmware_get_log(self, act: A.Delegate) -> None:
        """GetLog (N01): Accepted with the filename when there is something to upload."""
        p, target = act.payload, act.payload["log"]
        replied = asyncio.get_running_loop().create_future()
        try:
            status, name = await self.firmware.get_log(
                p["logType"], p["requestId"], target["remoteLocation"], p.get("retries"), p.get("retryInterval"),
                target.get("oldestTimestamp"), target.get("latestTimestamp"),
                security_log=self.security_log, replied=replied)
            self.link.reply(act.unique_id, {"status": status, **({"filename": name} if name else {})})
        finally:
            replied.set_result(None)  # LogStatusNotification Uploading may go out now

    def _reconnect(self, reason: str) -> None:
        """Security settings changed (SecurityProfile, AuthorizationKey, the charge point
        certificate): close the websocket once the reply that caused it is written (the
        core emits this after its reply, A05.FR.06) and connect again at once, no backoff,
        with the new plan (A05.FR.07)."""
        log.info("reconnecting: %s", reason)
        if self.link is not None:
            asyncio.ensure_future(self._link_reconnect(reason))

    async def _link_reconnect(self, reason: str) -> None:
        # A reply held while the store cannot write (twin.actor) goes out once the data is
        # on disk: wait a little for it, so the .conf is not lost to the close.
        for _ in range(50):
            if self.actor is None or not self.actor.held_replies:
                break
            await asyncio.sleep(0.1)
        await self.link.reconnect(reason)

    async def _restart(self, kind: str) -> None:
        log.warning("%s reset: restarting the station", kind)
        if kind == "Soft":
            await self.shutdown("SoftReset", graceful=True)
        else:
            await self.shutdown("HardReset", graceful=False)
        self.request_exit(RESTART_EXIT_CODE)

    # ------------------------------------------------------------------ loops
    async def _read_meters(self, timeout: float) -> None:
        idle = not self._busy()
        for cid, meter in self.drivers.meters.items():
            try:
                # asyncio.timeout, not wait_for: no Task per read (a fleet reads thousands).
                async with asyncio.timeout(timeout):
                    reading = await meter.read()
            except Exception as e:  # noqa: BLE001 - DriverError, timeout, anything: report, keep going
                self._meter_delivered.pop(cid, None)  # the next good reading clears the failure
                await self.actor.call(self.station.meter_failed, cid, f"{type(e).__name__}: {e}"[:50])
                continue
            if idle and self._unchanged_idle_reading(cid, reading):
                continue
            self._meter_delivered[cid] = reading
            await self.actor.call(self.station.meter_reading, cid, reading)

    def _unchanged_idle_reading(self, cid: int, reading) -> bool:
        """A reading the core needs no step for: the connector is idle (no car, no session,
        nothing pending, contactor open: no sampling, no status from power, no energy to
        persist) and the meter says exactly what the core already holds. Stepping the core on
        it would change nothing (it re-evaluates smart charging for the same inputs), and a
        fleet's idle members would spend most of their CPU doing so. A driver that hands out
        the same object again is always delivered: it might have changed in place."""
        last = self._meter_delivered.get(cid)
        relay = self.drivers.relays.get(cid) if self.drivers else None
        return (last is not None and reading is not last and reading == last
                and not (relay is not None and relay.commanded))

    async def _meter_loop(self) -> None:
        timeout = float(getattr(self.cfg, "meter_timeout_s", 3.0))
        while True:
            await self._read_meters(timeout)
            # Poll fast while a car is plugged (energy, limits, SoC matter); slowly when idle,
            # which keeps an idle station near 0 % CPU. A plug or a card wakes the loop.
            self.meter_wake.clear()
            if not self._busy():
                try:
                    async with asyncio.timeout(self.idle_meter_poll_s):  # no Task per wait, unlike wait_for
                        await self.meter_wake.wait()
                except TimeoutError:
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
            self.actor.post(self.station.clear_fault, cid)
        else:
            log.critical("connector %s: %s", cid, fault.info, extra={"connector": cid})
            self.actor.post(self.station.fault, cid, fault.error_code, fault.info)

    def _on_watchdog_trip(self) -> None:
        """The loop hung long enough for the driver watchdog to open every contactor; resync."""
        log.critical("event loop was unresponsive; contactors were opened by the watchdog")
        self.actor.post(self.station.outputs_reset)

    def _actor_ended(self, task: asyncio.Task) -> None:
        if self.actor is not None and self.actor.closed:
            return  # shutdown
        problem = "cancelled" if task.cancelled() else repr(task.exception())
        log.critical("the core actor stopped (%s): nothing can drive the station; exiting", problem)
        self.request_exit(1)

    def _actor_alive(self) -> bool:
        """The actor turns at least every MAX_IDLE_S; one that has not for much longer is stuck
        (a commit hung despite its bound, a core step that never returns)."""
        from twin.actor import MAX_IDLE_S

        actor = self.actor
        return (actor is not None and actor.task is not None and not actor.task.done()
                and time.monotonic() - actor.last_iteration < MAX_IDLE_S + 30)

    async def _watchdog_loop(self) -> None:
        interval = self.notifier.watchdog_interval() if self.notifier else None
        while True:
            if interval and self._actor_alive():
                # From the event loop itself, and only while the core's owner turns: a hung
                # loop or a stuck actor stops the pings and systemd restarts the station.
                self.notifier.watchdog()
            elif interval:
                log.error("the core actor has not turned for %.0f s; not pinging the watchdog",
                          time.monotonic() - self.actor.last_iteration if self.actor else -1)
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
        simulated = self._simulated_meter()
        for conn in snap["connectors"]:
            car = self.sim_evs.get(conn["id"])
            if car is not None and simulated:
                conn["ev"] = car.snapshot()  # the simulated car: only a simulated meter asks it
            conn["contactor"] = self._contactor(conn["id"])
        snap["chargePointId"] = self.cfg.charge_point_id
        snap["firmwareVersion"] = "V" + twin.__version__
        snap["drivers"] = [r.__dict__ for r in self.drivers.reports] if self.drivers else []
        snap["warnings"] = [r.warning for r in (self.drivers.reports if self.drivers else []) if r.warning]
        held = self.actor.unsaved if self.actor else []
        snap["store"] = {"ok": not held, "unsavedBatches": len(held)}
        if self.firmware is not None:
            snap["firmware"] = {"status": self.firmware.firmware_status,
                                "diagnostics": self.firmware.diagnostics_status,
                                "progress": getattr(self.firmware, "progress", {})}
        if self.link is not None:
            snap["linkError"] = self.link.last_error
            snap["csmsUrl"] = self.link.url
        if self.security is not None:
            snap["security"].update(self.security.snapshot())
        return snap

    def _contactor(self, cid: int) -> dict | None:
        """The relay driver's coil and aux contact, and the feedback supervisor's fault
        (drivers.relay_check: "welded" or "failed_to_close", reported as PowerSwitchFailure,
        OCPP 1.6 §7.6). The supervisor keeps a latched weld after the connector's fault is
        cleared by hand: this shows what it holds, not the OCPP status."""
        relay = self.drivers.relays.get(cid) if self.drivers else None
        if relay is None:
            return None
        try:
            aux = relay.feedback()
        except Exception:  # noqa: BLE001 - a flaky input must not break /api/state (the supervisor logs it)
            feedback = "unreadable"
        else:
            feedback = "not wired" if aux is None else ("closed" if aux else "open")
        fault = self.drivers.relay_faults.get(cid)
        return {"commanded": bool(relay.commanded), "feedback": feedback,
                "fault": fault.kind if fault is not None else None}

    def _simulated_meter(self) -> bool:
        reports = self.drivers.reports if self.drivers else []
        return any(r.kind == "meter" and r.backend == "sim" for r in reports)

    def _conn(self, cid: int, *, allow_station: bool = False) -> int:
        from twin.control_api import ApiError

        if cid not in self.station.connectors and not (allow_station and cid == 0):
            raise ApiError(404, f"no connector {cid}")
        return cid

    async def plug(self, connector_id: int) -> dict:
        await self.actor.call(self.station.plug, self._conn(connector_id))
        return self.state()

    async def unplug(self, connector_id: int) -> dict:
        await self.actor.call(self.station.unplug, self._conn(connector_id))
        return self.state()

    async def rfid(self, id_tag: str) -> dict:
        await self.actor.call(self.station.tap, id_tag)
        return self.state()

    async def fault(self, connector_id: int, error_code: str, info: str | None) -> dict:
        await self.actor.call(self.station.fault, self._conn(connector_id, allow_station=True), error_code, info)
        return self.state()

    async def clear_fault(self, connector_id: int) -> dict:
        await self.actor.call(self.station.clear_fault, self._conn(connector_id, allow_station=True))
        return self.state()

    async def ev(self, connector_id: int, suspended: bool | None, max_power_w: float | None) -> dict:
        """The simulated car's demand. The station learns of it as a real one would: from
        the power its meter measures (read at once, so the status follows within a poll)."""
        self.sim_evs[self._conn(connector_id)].set(suspended=suspended, max_power_w=max_power_w)
        await self._read_meters(timeout=float(getattr(self.cfg, "meter_timeout_s", 3.0)))
        return self.state()

    async def network(self, online: bool | None = None, *, latency_ms: float | None = None,
                      jitter_ms: float | None = None, drop_rate: float | None = None,
                      half_open: bool | None = None, close_code: int | None = None,
                      seed: int | None = None) -> dict:
        """The bench's network: the switch (``online``) and impairment of the link
        (twin.link.Link.impair, docs/faults-and-traces.md). Any subset; ValueError for a
        value out of range. Returns the network state."""
        self._wire_check_network(online, latency_ms, jitter_ms, drop_rate, half_open, close_code, seed)
        link = self.link
        if link is None:
            raise ValueError("the station's link is not running")
        if online is not None:
            link.set_enabled(online)
        link.impair(latency_ms=latency_ms, jitter_ms=jitter_ms, drop_rate=drop_rate, seed=seed)
        if half_open is not None:
            link.set_half_open(half_open)
        if close_code is not None:
            link.close_now(close_code)
        return {"online": link.enabled, "connected": link.connected, "half_open": link.half_open,
                **link.impairment.to_dict()}

    @staticmethod
    def _wire_check_network(online, latency_ms, jitter_ms, drop_rate, half_open, close_code, seed) -> None:
        from websockets.frames import EXTERNAL_CLOSE_CODES

        def number(name: str, value, low: float, high: float) -> None:
            if value is None:
                return
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
                raise ValueError(f"{name}: a number from {low:g} to {high:g}")

        for name, value in (("online", online), ("half_open", half_open)):
            if value is not None and not isinstance(value, bool):
                raise ValueError(f"{name}: true or false")
        number("latency_ms", latency_ms, 0, 60000)
        number("jitter_ms", jitter_ms, 0, 60000)
        number("drop_rate", drop_rate, 0, 1)
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
            raise ValueError("seed: an integer")
        if close_code is not None:
            # RFC 6455 §7.4: 1004-1006 and 1015 are never sent; 3000-4999 are for applications.
            if (isinstance(close_code, bool) or not isinstance(close_code, int) or not 1000 <= close_code <= 4999
                    or not (close_code in EXTERNAL_CLOSE_CODES or close_code >= 3000)):
                raise ValueError("close_code: 1000-1003, 1007-1014 or 3000-4999 (RFC 6455 §7.4)")

    # -------------------------------------------------------------- faults and traces
    def add_fault(self, rule: dict) -> dict:
        """Install a fault rule (twin.faults.parse_rule checks it; ValueError says why not)."""
        from twin.faults import parse_rule

        parsed = parse_rule(rule)
        return self._wire_link().faults.add(parsed).to_dict()

    def faults(self) -> list[dict]:
        return self.link.faults.list() if self.link is not None else []

    def remove_fault(self, rule_id: str) -> bool:
        return self.link.faults.remove(rule_id) if self.link is not None else False

    def clear_faults(self) -> None:
        if self.link is not None:
            self.link.faults.clear()

    def trace_since(self, since: int) -> dict:
        if isinstance(since, bool) or not isinstance(since, int) or since < 0:
            raise ValueError("since: a non-negative integer")
        if self.link is None:
            return {"next": since, "frames": []}
        return self.link.tracer.since(since)

    def _wire_link(self) -> Link:
        if self.link is None:
            raise ValueError("the station's link is not running")
        return self.link

    def _wire_start(self) -> None:
        """The trace file ([trace] file, ``twin run --trace``), the event hub and the
        ``[[faults]]`` of the station TOML, on the link before it connects."""
        from twin.faults import parse_rule

        link, cfg = self.link, self.cfg
        trace_file = getattr(cfg, "trace_file", None)
        if trace_file:
            try:
                link.tracer.open(trace_file)
                log.info("tracing every frame to %s", trace_file)
            except OSError as e:  # the station runs without its trace rather than not at all
                log.error("cannot open the trace file %s: %s", trace_file, e)
        link.tracer.publish = self._wire_publish
        for rule in getattr(cfg, "faults", None) or []:
            installed = link.faults.add(parse_rule(rule))  # checked at load (twin.config)
            log.warning("fault rule %s installed from the configuration: %s %s %s", installed.id,
                        installed.direction, installed.on, installed.do)

    def _wire_publish(self, record: dict) -> None:
        hub = getattr(self, "events", None)
        if hub is not None:
            hub.publish("frame", record)

    async def tamper(self, info: str | None) -> dict:
        """The bench's tamper switch (WP3 §8 TamperDetectionActivated): critical, so it is
        queued on disk before this answers and sent after the next Accepted boot."""
        await self.actor.call(self.station.security_event, "TamperDetectionActivated", info or "tamper switch")
        if self._security_log_write is not None:  # and in the security log, before the bench hears back
            await asyncio.wait([self._security_log_write], timeout=5)
        return self.state()

    async def debug_block(self, seconds: float) -> dict:
        log.warning("debug: blocking the event loop for %.1f s", seconds)
        time.sleep(seconds)  # deliberately blocking: proves the watchdog pings come from the loop
        return {"blocked": seconds}


class _FirmwareHooks:
    """The firmware service's view of the station (twin.firmware.service.FirmwareHooks)."""

    def __init__(self, rt: Runtime):
        self.rt = rt

    async def send_firmware_status(self, status: str) -> None:
        await self.rt.actor.call(self.rt.station.send_firmware_status, status)

    async def send_diagnostics_status(self, status: str) -> None:
        await self.rt.actor.call(self.rt.station.send_diagnostics_status, status)

    async def send_signed_firmware_status(self, status: str, request_id: int | None) -> None:
        await self.rt.actor.call(self.rt.station.send_signed_firmware_status, status, request_id)

    async def send_log_status(self, status: str, request_id: int | None) -> None:
        await self.rt.actor.call(self.rt.station.send_log_status, status, request_id)

    async def security_event(self, name: str, tech_info: str | None) -> None:
        await self.rt.actor.call(self.rt.station.security_event, name, tech_info)

    async def wait_until_idle(self) -> None:
        st = self.rt.station
        await self.rt.actor.call(st.set_maintenance, True)
        while st.active_transactions():
            await asyncio.sleep(0.5)

    async def end_maintenance(self) -> None:
        """An install ended without a restart (failed, replaced, cancelled): the idle
        connectors that waited for it are available again."""
        await self.rt.actor.call(self.rt.station.set_maintenance, False)

    async def restart(self) -> None:
        await self.rt._restart("Soft")

    def diagnostics_extras(self) -> dict:
        from twin.config import redacted

        rt = self.rt
        return {"config": redacted(rt.cfg), "store": rt.store.summary() if rt.store else {},
                "drivers": [r.__dict__ for r in rt.drivers.reports] if rt.drivers else [],
                "state": rt.state(), "pid": os.getpid()}
