"""The station: a pure state machine. Events plus ``now`` in, effects out.

Every public event method takes ``now`` (aware UTC datetime) and returns one
:class:`~twin.core.effects.Effects`: durable ops, outputs, replies and sends on separate
channels, which the actor (``twin.actor``) executes in a fixed order (commit, then
outputs, replies, sends). It never sleeps, reads the clock, opens sockets or touches
hardware. ``next_deadline()`` is a function of the state alone.

``Station`` is a facade. The state lives in small machines, each owning one job
(docs/architecture.md has the map): registration and heartbeat
(:mod:`~twin.core.registration`), outgoing calls (:mod:`~twin.core.calls`), the
transaction log and its queue (:mod:`~twin.core.txlog`), meter-value sampling
(:mod:`~twin.core.sampling`), sessions and the shared reader (:mod:`~twin.core.sessions`),
authorization (:mod:`~twin.core.authorization`), availability
(:mod:`~twin.core.availability`), status reporting (:mod:`~twin.core.status`) and the
EVSE's physical facts (:mod:`~twin.core.evse`). The facade routes each event to them,
runs what spans several (starting and stopping a transaction, what ends with a
connector's availability), and after every event *settles*: limits, outputs, the queue,
status notifications. CSMS calls go to :mod:`twin.core.handlers`, which see the station
only through :mod:`twin.core.ports`.
"""

from __future__ import annotations

import functools
import logging
from datetime import datetime, timedelta
from typing import Any, Callable

from twin.core import auth
from twin.core.actions import (Action, Delegate, LinkSetting, Persist, Reconnect, Reply, ReplyError, SecurityLogEntry,
                               SecurityTask)
from twin.core.authorization import Authorizer
from twin.core.availability import Availability
from twin.core.calls import AuthorizeRequest, CallKind, Calls, PendingCall, malformed
from twin.core.connector import Connector
from twin.core.effects import Effects
from twin.core.evse import Evse, EvseView
from twin.core.handlers import HANDLERS
from twin.core.keys import canonical_name
from twin.security.auth_key import is_valid_authorization_key
from twin.core.ops import NS, PROFILES_ALL, StationKey, station_put
from twin.core.ports import CallError
from twin.core.registration import Registrar, Registration, compare_clock
from twin.core.reservation import Reservation, Reservations
from twin.core.sampling import Sampling
from twin.core.security import Security, SecurityFacts
from twin.core.sessions import RemoteClaim, Sessions
from twin.core.settings import Settings
from twin.core.smart_charging import SmartCharging, TxInfo
from twin.core.spec import StationSpec
from twin.core.status import Status, StatusReporter, derive, derive_station
from twin.core.transactions import Transactions
from twin.core.txlog import TxLog
from twin.core.txqueue import Entry
from twin.security import events as security_events

log = logging.getLogger("twin.station")

STORAGE_FAULT = ("OtherError", "storage failure: not recording")
INVALID_MESSAGES_EVERY = timedelta(minutes=1)


def _with_request_id(status: str, request_id: int | None) -> dict:
    # requestId may be left out only with Idle (L01.FR.21, N01.FR.12).
    return {"status": status} if request_id is None else {"status": status, "requestId": request_id}


def _entry(call: PendingCall) -> Entry:
    if call.entry is None:  # Calls records the entry of every transaction message
        raise ValueError(f"transaction call {call.action} without its queue entry")
    return call.entry


def _request(call: PendingCall) -> AuthorizeRequest:
    if call.authorize is None:  # Calls records the request of every Authorize
        raise ValueError("Authorize call without its request")
    return call.authorize


def _event(method: Callable[..., list[Action]]) -> Callable[..., Effects]:
    """A public event: the rules return actions in any order; the caller gets channels."""

    @functools.wraps(method)
    def wrapper(self: "Station", *args: Any, **kwargs: Any) -> Effects:
        return Effects.of(method(self, *args, **kwargs))

    return wrapper


class Station:
    def __init__(self, spec: StationSpec, keys: Any, smart: SmartCharging, state: dict | None = None):
        self.spec = spec
        self.keys = keys
        self.smart = smart
        state = state or {}
        kv = state.get("kv", {})
        station_kv = kv.get(NS.STATION, {})
        self.n = spec.connectors
        ids = list(range(1, spec.connectors + 1))
        self.settings = settings = Settings(keys)
        self.registrar = Registrar(spec, settings.get_int("HeartbeatInterval"))
        self.calls = Calls(self.registrar, settings)
        self.evse = Evse(spec, station_kv, smart)
        self.availability = Availability(ids, kv.get(NS.AVAILABILITY, {}), station_kv)
        local_list = auth.LocalList.from_store(kv.get(NS.LOCAL_LIST, {}), kv.get(NS.LOCAL_LIST_META))
        self.authorization = Authorizer(settings, auth.AuthCache(dict(kv.get(NS.AUTH_CACHE, {}))), local_list)
        self.reservations = Reservations([Reservation.from_record(r) for r in kv.get(NS.RESERVATIONS, {}).values()])
        if stored_profiles := kv.get(NS.PROFILES, {}).get(PROFILES_ALL):
            for problem in smart.load_json(stored_profiles) or []:
                log.warning("stored charging profile skipped: %s", problem)
        self.txlog = TxLog(state, settings)
        self.sampling = Sampling(settings, self.evse, self.txlog)
        self.sessions = Sessions(ids, settings, self.authorization, self.calls, self.reservations, host=self)
        self.statuses = StatusReporter(ids, self.calls)
        self.transactions = Transactions(settings=settings, txlog=self.txlog, evse=self.evse, sampling=self.sampling,
                                         sessions=self.sessions, availability=self.availability,
                                         reservations=self.reservations, smart=smart)
        self.connectors: dict[int, Connector] = {
            cid: Connector(cid, self.evse.facts[cid], self.sessions.of(cid), self.availability.of(cid),
                           self.statuses.of(cid), self.txlog) for cid in ids}
        self.hard_reset_pending = bool(station_kv.get(StationKey.HARD_RESET))
        self.firmware_status = "Idle"
        self.diagnostics_status = "Idle"
        self.security = Security(settings, kv.get(NS.SECURITY, {}))
        self.invalid_messages_logged_at: datetime | None = None

    # ------------------------------------------------------------------ state, by owner
    registration = property(lambda self: self.registrar.state, doc="Registration state (§4.2)")
    online = property(lambda self: self.registrar.online)
    next_boot_at = property(lambda self: self.registrar.next_boot_at)
    next_heartbeat_at = property(lambda self: self.registrar.next_heartbeat_at)
    pending_calls = property(lambda self: self.calls.pending, doc="ref -> PendingCall")
    txs = property(lambda self: self.txlog.txs, doc="local id -> transaction record")
    queue = property(lambda self: self.txlog.queue, doc="the transaction-message queue (TxQueue)")
    discarded_count = property(lambda self: self.txlog.discarded_count)
    cache = property(lambda self: self.authorization.cache)
    local_list = property(lambda self: self.authorization.local_list)
    availability0 = property(lambda self: self.availability.availability0)
    station_fault = property(lambda self: self.evse.station_fault, doc="the Charge Point's fault (connector 0)")
    meter_floor = property(lambda self: self.evse.meter_floor, doc="connector id -> highest register seen (Wh)")
    fixed_cable = property(lambda self: self.spec.fixed_cable)
    trigger_meter_values_connector_0 = property(lambda self: self.spec.trigger_meter_values_connector_0)

    # ------------------------------------------------------------------ queries (also the sessions' host)
    def connected(self) -> bool:
        return self.registrar.connected()

    def has_connector(self, cid: Any, *, allow_zero: bool = True) -> bool:
        return isinstance(cid, int) and (1 if not allow_zero else 0) <= cid <= self.n

    def in_transaction(self, cid: int) -> bool:
        return self.txlog.local_id(cid) is not None

    def plugged(self, cid: int) -> bool:
        return self.evse.facts[cid].plugged

    def operative(self, cid: int) -> bool:
        return self.availability.operative(cid)

    def station_operative(self) -> bool:
        return self.availability.station_operative()

    def usable(self, cid: int) -> bool:
        """Can this connector take a new session now?"""
        return not self.in_transaction(cid) and self.evse.usable(cid) and self.availability.operative(cid)

    def is_free(self, cid: int) -> bool:
        return self.sessions.is_free(cid)

    def transaction_tags(self) -> dict[int, tuple[str, str | None]]:
        return {cid: (tx["id_tag"], tx.get("parent_id_tag")) for cid in self.connectors
                if (tx := self.txlog.record(cid)) is not None}

    def transaction_id(self, cid: int) -> int | None:
        return self.txlog.transaction_id(cid)

    def transaction_connector(self, transaction_id: int) -> int | None:
        return self.txlog.connector_of(transaction_id)

    def tx_info(self) -> dict[int, TxInfo]:
        return self.txlog.tx_info()

    def reserved_for(self, cid: int) -> Reservation | None:
        return self.sessions.reserved_for(cid)

    def offered_a(self, c: Connector) -> float:
        return self.evse.offered_a(c.id)

    def evse_view(self, cid: int) -> EvseView:
        """What an EV on this connector can see of the station (the simulated EV reads it)."""
        return self.evse.view(cid)

    def status_of(self, c: Connector) -> Status:
        f = self.evse.facts[c.id]
        return derive(c, operative=self.availability.operative(c.id), station_fault=self.evse.station_fault,
                      reserved=self.reserved_for(c.id) is not None,
                      evse_suspended=self.transactions.suspended_by_evse(c.id),
                      ev_drawing=f.ev_drawing is not False)  # measured, not a model of the car (§4.9)

    def station_status(self) -> Status:
        return derive_station(self.availability.availability0, self.evse.station_fault)

    def station_meter_value(self, context: str, when: datetime) -> dict | None:
        return self.sampling.station_value(context, when)

    def connector_meter_value(self, cid: int, context: str, when: datetime) -> dict | None:
        return self.sampling.connector_value(cid, context, when)

    def active_transactions(self) -> int:
        return len(self.txlog.running)

    # ------------------------------------------------------------------ boot and link
    @_event
    def boot(self, now: datetime, *, restarted: bool = False) -> list[Action]:
        """After power-up: transactions that were running are stopped (TC_032_2, TC_015).
        ``restarted``: the station went down on purpose (a Reset, a firmware restart, a
        service stop) rather than losing power; the security event says which (A04)."""
        reason = "HardReset" if self.hard_reset_pending else "PowerLoss"
        acts = self._security_event("ResetOrReboot" if restarted or self.hard_reset_pending else "StartupOfTheDevice",
                                    None, now, now)
        acts += self.transactions.stop_interrupted(reason, now)
        if self.hard_reset_pending:
            self.hard_reset_pending = False
            acts.append(Persist([station_put(StationKey.HARD_RESET, False)]))
        self.sessions.after_boot(now)
        self.sampling.schedule_aligned(now)  # from power-up, also before the first Accepted (errata 3.15)
        self.evse.refresh_limits(now, self.txlog.tx_info())
        return acts + self.transactions.drive_outputs()

    @_event
    def link_up(self, now: datetime) -> list[Action]:
        self.txlog.link_restored(now)
        self.registrar.link_up(now)
        if self.registration is Registration.ACCEPTED:
            # Reconnect: report statuses that changed while offline (§4.9), then drain.
            return self._report_statuses(now) + self._pump(now)
        return self._maybe_boot(now)

    @_event
    def link_down(self, now: datetime) -> list[Action]:
        self.registrar.link_down()
        acts: list[Action] = []
        for call in self.calls.take_all():
            if call.kind is CallKind.AUTHORIZE:  # no answer: not a failure to process; decide offline
                request = _request(call)
                acts += self.sessions.answered(request, self.authorization.unanswered(request.id_tag, now), now)
        self.txlog.link_lost(now)
        return acts + self._settle(now)

    def _maybe_boot(self, now: datetime) -> list[Action]:
        payload = self.registrar.boot_due(now)
        if payload is None:
            return []
        return self.calls.send("BootNotification", payload, CallKind.BOOT, force=True)

    def trigger_boot(self, now: datetime) -> tuple[str, list[Action]]:
        status = self.registrar.trigger_boot(now)
        return status, self._maybe_boot(now) if status == "Accepted" else []

    def send_call(self, action: str, payload: dict, kind: CallKind, *, force: bool = False) -> list[Action]:
        return self.calls.send(action, payload, kind, force=force)

    # ------------------------------------------------------------------ call outcomes
    @_event
    def call_result(self, ref: int, payload: dict, now: datetime) -> list[Action]:
        call = self.calls.take(ref)
        if call is None:
            return []
        problem = malformed(call.action, payload)
        if problem is not None:
            # A reply the station cannot interpret is a failure to process (§3.7.1), not a refusal.
            log.error("malformed %s.conf from the CSMS (%s): %s", call.action, problem, payload,
                      extra={"ocpp_action": call.action})
            return self._failed(call, f"malformed response: {problem}", now)
        if call.kind in (CallKind.BOOT, CallKind.HEARTBEAT):
            compare_clock(payload.get("currentTime"), now)
        if call.kind is CallKind.BOOT:
            return self._on_boot_conf(payload, now)
        if call.kind is CallKind.TX:
            return self._on_tx_conf(call, payload, now)
        if call.kind is CallKind.AUTHORIZE:
            return self._on_authorize_conf(call, payload["idTagInfo"], now)
        return []

    @_event
    def call_failed(self, ref: int, reason: str, now: datetime) -> list[Action]:
        """A CALLERROR, or a reply the station cannot use: a failure to process (§3.7.1)."""
        call = self.calls.take(ref)
        return self._failed(call, reason, now) if call is not None else []

    def _failed(self, call: PendingCall, reason: str, now: datetime) -> list[Action]:
        if call.kind is CallKind.BOOT:
            self.registrar.boot_unanswered(now)
            return []
        if call.kind is CallKind.TX:
            ops = self.txlog.failed(_entry(call), reason, now)
            self.txlog.collect()
            return [Persist(ops)] + self._settle(now)
        if call.kind is CallKind.AUTHORIZE:
            # A connected CSMS that answers with an error has not said yes: fail closed.
            return self._authorize_refused(call, now)
        return []

    @_event
    def call_timed_out(self, ref: int, now: datetime) -> list[Action]:
        """No answer within MessageTimeout on a link that still answers pings.

        Not a failure to process: a transaction message is sent again after the retry
        interval without counting an attempt (only CALLERRORs count, §3.7.1), so a CSMS
        that drops one answer never makes the station discard billing data.
        """
        call = self.calls.take(ref)
        if call is None:
            return []
        if call.kind is CallKind.TX:
            ops = self.txlog.unanswered(_entry(call), now)
            self.txlog.collect()
            return [Persist(ops)] + self._settle(now)
        if call.kind is CallKind.BOOT:
            self.registrar.boot_unanswered(now)
            return []
        if call.kind is CallKind.AUTHORIZE:
            return self._authorize_refused(call, now)
        return []

    def _on_boot_conf(self, payload: dict, now: datetime) -> list[Action]:
        interval = self.registrar.boot_answered(payload, now)
        if self.registration is not Registration.ACCEPTED:
            return []
        acts: list[Action] = []
        if interval is not None:
            _status, ops = self.settings.change("HeartbeatInterval", str(interval))
            acts += [Persist(ops)] if ops else []
        self.sampling.schedule_aligned(now)
        # Errata 3.22: after every BootNotification Accepted, an SN for connector 0 and every connector.
        return acts + self._report_statuses(now, force_all=True) + self._pump(now)

    def _on_tx_conf(self, call: PendingCall, payload: dict, now: datetime) -> list[Action]:
        ops, started = self.txlog.confirmed(_entry(call), payload, now, learn=self.authorization.learn)
        acts: list[Action] = [Persist(ops)]
        if started is not None:
            info = payload.get("idTagInfo") or {}
            acts += self._conflict_check(started["id_tag"], info, now)
            if info.get("status") != "Accepted" and not started.get("stopped"):
                acts += self.transactions.invalidated(started, now)
        self.txlog.collect()
        return acts + self._settle(now)

    def _on_authorize_conf(self, call: PendingCall, info: dict, now: datetime) -> list[Action]:
        request = _request(call)
        acts: list[Action] = [Persist(self.authorization.learn(request.id_tag, info, now))]
        acts += self._conflict_check(request.id_tag, info, now)
        acts += self.sessions.answered(request, info, now)
        return acts + self._settle(now)

    def _authorize_refused(self, call: PendingCall, now: datetime) -> list[Action]:
        request = _request(call)
        info = self.authorization.refused_by_error(request.id_tag, now)
        return self.sessions.answered(request, info, now) + self._settle(now)

    def _conflict_check(self, id_tag: str, info: dict, now: datetime) -> list[Action]:
        text = self.authorization.conflict(id_tag, info, now)
        return self.statuses.report_conflict(self.station_status(), text, now) if text is not None else []

    # ------------------------------------------------------------------ timers
    def next_deadline(self) -> datetime | None:
        """The earliest time ``tick`` has work to do: a function of the state alone.
        After ``tick(now)`` it is None or later than ``now`` (tests/core: the deadline property)."""
        connected = self.registrar.connected()
        times: list[datetime | None] = self.registrar.next_deadlines()
        if connected:
            times.append(self.txlog.next_deadline())
        times += self.sampling.next_deadlines()
        times += self.sessions.next_deadlines()
        times += self.statuses.next_deadlines(connected=connected,
                                              min_duration_s=self.settings.get_int("MinimumStatusDuration"))
        times.append(self.reservations.next_expiry())
        times.append(self.evse.limit_change_at)
        valid = [t for t in times if t is not None]
        return min(valid) if valid else None

    @_event
    def tick(self, now: datetime) -> list[Action]:
        acts = self._maybe_boot(now)
        if self.registrar.heartbeat_due(now):
            acts += self.calls.send("Heartbeat", {}, CallKind.HEARTBEAT)
        acts += self.sessions.tick(now)
        for r in self.reservations.expired(now):
            log.info("reservation %s expired", r.reservation_id)
            acts.append(Persist(self.reservations.remove(r.reservation_id)))
        acts += self.sampling.tick(now)
        return acts + self._settle(now)

    @_event
    def clock_stepped(self, delta_s: float, now: datetime) -> list[Action]:
        """The wall clock was stepped by ``delta_s`` (NTP sync on a Pi without an RTC, a manual
        set). Interval timers keep the time they had left; absolute ones (reservation expiry,
        clock-aligned data, charging schedules) stay on the wall clock, where the CSMS put them."""
        delta = timedelta(seconds=delta_s)
        acts = self._security_event("SettingSystemTime", f"the system clock was stepped by {delta_s:+.0f} s",
                                    now, now)
        self.registrar.shift(delta)
        self.sampling.shift(delta, now)
        self.txlog.shift(delta)
        self.sessions.shift(delta)
        self.statuses.shift(delta)
        self.evse.shift(delta)
        return acts + self._settle(now)

    def _settle(self, now: datetime) -> list[Action]:
        """After every event: limits, outputs, the queue, status notifications."""
        self.sessions.after_reservations(now)
        self.evse.refresh_limits(now, self.txlog.tx_info())
        return self.transactions.drive_outputs() + self._pump(now) + self._report_statuses(now)

    def _pump(self, now: datetime) -> list[Action]:
        return self.txlog.pump(now, self.registrar.connected(), self.calls)

    def _report_statuses(self, now: datetime, force_all: bool = False) -> list[Action]:
        statuses = {cid: self.status_of(c) for cid, c in self.connectors.items()}
        return self.statuses.report(now, self.station_status(), statuses, connected=self.registrar.connected(),
                                    min_duration_s=self.settings.get_int("MinimumStatusDuration"), force_all=force_all)

    # ------------------------------------------------------------------ transactions (the sessions' host)
    def start_transaction(self, cid: int, id_tag: str, info: dict | None, reservation_id: int | None,
                          now: datetime) -> list[Action]:
        return self.transactions.start(cid, id_tag, info, reservation_id, now)

    def stop_transaction(self, cid: int, reason: str, id_tag: str | None, now: datetime) -> list[Action]:
        return self.transactions.stop(cid, reason, id_tag, now)

    def stop_transactions(self, reason: str, now: datetime) -> list[Action]:
        return self.transactions.stop_all(reason, now)

    def change_availability(self, cid: int, target: str, now: datetime) -> tuple[str, list[Action]]:
        return self.transactions.change_availability(cid, target)

    def save_profiles(self) -> list[Action]:
        return self.transactions.save_profiles()

    def discard_remote_profile(self, cid: int) -> list[Action]:
        return self.transactions.discard_remote_profile(cid)

    def claim_for_remote(self, cid: int | None, id_tag: str, now: datetime) -> RemoteClaim | None:
        return self.sessions.claim_for_remote(cid, id_tag, now)

    def start_remote(self, cid: int, id_tag: str, *, bound: bool, now: datetime) -> list[Action] | None:
        return self.sessions.start_remote(cid, id_tag, bound=bound, now=now)

    def request_hard_reset(self) -> list[Action]:
        """Reset(Hard): after the restart, the interrupted transactions stop with reason HardReset."""
        self.hard_reset_pending = True
        return [Persist([station_put(StationKey.HARD_RESET, True)])]

    @_event
    def set_maintenance(self, on: bool, now: datetime) -> list[Action]:
        """While a firmware update waits to install, idle connectors are Unavailable and
        take no new transaction (errata 3.47-3.49). Not persisted: a restart ends it."""
        self.availability.set_maintenance(on)
        acts = self.sessions.drop_all_pending() if on else []
        return acts + self._settle(now)

    def key_changed(self, key: str, now: datetime) -> list[Action]:
        """A ChangeConfiguration was accepted: the keys the running station reads take effect now."""
        name = canonical_name(key)  # the key is CiString50 (§6.9): any letter case
        if name == "HeartbeatInterval":
            self.registrar.heartbeat_interval_changed(self.settings.get_int(name), now)
        elif name == "ClockAlignedDataInterval":
            self.sampling.schedule_aligned(now)
        elif name == "MeterValueSampleInterval":
            self.sampling.interval_changed(now)
        elif name == "WebSocketPingInterval":
            return [LinkSetting(self.settings.get_int(name))]
        return []

    # ------------------------------------------------------------------ local events
    @_event
    def plug(self, cid: int, now: datetime) -> list[Action]:
        if not self.evse.plug(cid):
            return []
        acts: list[Action] = [Persist([self.evse.plugged_op()])]
        if self.in_transaction(cid) and self.evse.facts[cid].ev_disconnected:
            self.evse.ev_back(cid)  # the EV came back; the transaction resumes
        acts += self.sessions.plugged_in(cid, now)
        return acts + self._settle(now)

    @_event
    def unplug(self, cid: int, now: datetime) -> list[Action]:
        if not self.plugged(cid):
            return []
        acts: list[Action] = []
        if self.in_transaction(cid):
            if self.settings.get_bool("StopTransactionOnEVSideDisconnect"):
                # §4.10: stop with EVDisconnected; report Finishing, then Available as the
                # fixed cable is free again (errata: Finishing -> Available on unplug).
                acts += self.stop_transaction(cid, "EVDisconnected", None, now)
                acts += self._settle(now)
            else:
                self.evse.ev_left(cid)  # SuspendedEV "EV side disconnected", tx continues
        self.evse.unplug(cid)
        self.sessions.unplugged(cid)
        acts.append(Persist([self.evse.plugged_op()]))
        return acts + self._settle(now)

    @_event
    def tap(self, id_tag: str, now: datetime) -> list[Action]:
        """A card on the shared reader (see docs/station-behaviour.md for the routing rule)."""
        return self.sessions.present(id_tag, now) + self._settle(now)

    @_event
    def fault(self, cid: int, code: str, info: str | None, now: datetime) -> list[Action]:
        self.evse.fault(cid, code, info)
        acts: list[Action] = []
        for x in (self.connectors if cid == 0 else [cid]):
            acts += self._connector_lost(x, now)
        if cid == 0:
            for r in self.reservations.zero():  # §5.13: the Charge Point Faulted ends them too
                acts.append(Persist(self.reservations.remove(r.reservation_id)))
        return acts + self._settle(now)

    def _connector_lost(self, cid: int, now: datetime) -> list[Action]:
        acts = self.stop_transaction(cid, "Other", None, now)
        acts += self.sessions.connector_lost(cid)
        res = self.reservations.for_connector(cid)
        if res is not None:  # §5.13: a Faulted connector ends its reservation
            acts.append(Persist(self.reservations.remove(res.reservation_id)))
        return acts

    @_event
    def clear_fault(self, cid: int, now: datetime) -> list[Action]:
        self.evse.clear_fault(cid)
        return self._settle(now)

    @_event
    def meter_reading(self, cid: int, reading: Any, now: datetime) -> list[Action]:
        self.evse.reading(cid, reading, now)
        return self.sampling.persist_energy(cid, now) + self._settle(now)

    @_event
    def meter_failed(self, cid: int, error: str, now: datetime) -> list[Action]:
        """The meter stopped answering: report PowerMeterFailure, keep the last good register for billing."""
        self.evse.meter_failed(cid, error)
        return self._settle(now)

    @_event
    def outputs_reset(self, now: datetime) -> list[Action]:
        """Something outside the core opened the contactors (the loop watchdog): forget what
        we commanded so the next settle drives every output again."""
        self.evse.outputs_reset()
        return self._settle(now)

    @_event
    def stop_all(self, reason: str, now: datetime) -> list[Action]:
        """A graceful stop of the station (SIGTERM, Soft reset): every transaction ends with
        ``reason`` and every contactor opens before the process goes (§5.14 Soft reset)."""
        return self.stop_transactions(reason, now) + self._settle(now)

    @_event
    def storage_failed(self, now: datetime) -> list[Action]:
        """The store could not save an event's data (disk full, I/O error). Charging on data
        a power cut would lose is not allowed: fault the station, which stops every session
        and refuses new ones, until the held data is on disk again."""
        if self.evse.station_fault is not None:
            return []
        log.critical("storage failure: faulting the station until the data is saved")
        # Queued with the data held in memory: it reaches the disk (and the CSMS) once the store
        # writes again (A04.FR.02).
        return self._security_event("MemoryExhaustion", "the store cannot save: " + STORAGE_FAULT[1], now, now) \
            + list(self.fault(0, *STORAGE_FAULT, now))

    @_event
    def storage_recovered(self, now: datetime) -> list[Action]:
        if self.evse.station_fault != STORAGE_FAULT:
            return []
        log.warning("store writable again; clearing the storage fault")
        return list(self.clear_fault(0, now))

    # ------------------------------------------------------------------ firmware adapter hooks
    @_event
    def send_firmware_status(self, status: str, now: datetime) -> list[Action]:
        self.firmware_status = status
        return self.calls.send("FirmwareStatusNotification", {"status": status}, CallKind.FIRMWARE)

    @_event
    def send_diagnostics_status(self, status: str, now: datetime) -> list[Action]:
        self.diagnostics_status = status
        return self.calls.send("DiagnosticsStatusNotification", {"status": status}, CallKind.DIAGNOSTICS)

    @_event
    def transfer_status(self, firmware: str, diagnostics: str, now: datetime, *,
                        signed_firmware: tuple[str, int | None] | None = None,
                        log: tuple[str, int | None] | None = None) -> list[Action]:
        """The firmware service's current statuses, for TriggerMessage (§4.4, §4.5) and
        ExtendedTriggerMessage (L01.FR.28/29, N01.FR.12); sends nothing."""
        self.firmware_status, self.diagnostics_status = firmware, diagnostics
        if signed_firmware is not None:
            self.security.signed_firmware = signed_firmware
        if log is not None:
            self.security.log = log
        return []

    @_event
    def send_signed_firmware_status(self, status: str, request_id: int | None, now: datetime) -> list[Action]:
        """SignedFirmwareStatusNotification (L01.FR.01/10): every state of a signed update."""
        self.security.signed_firmware = (status, request_id)
        return self.calls.send("SignedFirmwareStatusNotification", _with_request_id(status, request_id),
                               CallKind.FIRMWARE)

    @_event
    def send_log_status(self, status: str, request_id: int | None, now: datetime) -> list[Action]:
        """LogStatusNotification (N01.FR.07-10): every state of a GetLog upload."""
        self.security.log = (status, request_id)
        return self.calls.send("LogStatusNotification", _with_request_id(status, request_id), CallKind.DIAGNOSTICS)

    @_event
    def send_sign_certificate(self, csr_pem: str, now: datetime) -> list[Action]:
        """SignCertificate.req (A02.FR.03) with the CSR the certificate service made. While
        Pending it goes out only because ExtendedTriggerMessage asked for it (§4.2)."""
        force = self.registration is Registration.PENDING
        return self.calls.send("SignCertificate", {"csr": csr_pem}, CallKind.TRIGGER, force=force)

    # ------------------------------------------------------------------ security (WP3)
    @_event
    def security_event(self, name: str, tech_info: str | None, now: datetime, *,
                       occurred_at: datetime | None = None) -> list[Action]:
        """A security event (WP3 §8) raised by an adapter: logged, and sent if it is sent."""
        return self._security_event(name, tech_info, occurred_at or now, now) + self._settle(now)

    def _security_event(self, name: str, tech_info: str | None, when: datetime, now: datetime) -> list[Action]:
        """Every event goes into the rolling security log (A04.FR.04). Those that are sent are
        queued with the transaction messages: persisted in this event's commit, delivered in
        order after BootNotification Accepted, whatever happens to the link meanwhile
        (A04.FR.01/02). ``when`` is the time of the event, not of sending."""
        event = security_events.event(name)
        secrets = [s for s in (self.security.authorization_key, self.security.pending_key) if s]
        info = security_events.clean_tech_info(tech_info, secrets) if tech_info else None
        acts: list[Action] = [SecurityLogEntry(name, when, info)]
        # Sent only under a whitepaper security profile (1-3). Profile 0 is "no security
        # profile configured" (WP3 §7.6): the station talks plain OCPP 1.6 on the wire, where a
        # CSMS and OCTT's Core cases expect no SecurityEventNotification; the log has them all.
        if event.sent and self.security.profile >= 1:
            payload = security_events.notification_payload(name, when, info)
            acts.append(Persist(self.txlog.enqueue("SecurityEventNotification", payload, None, now)))
        if event.critical or event.sent:
            log.warning("security event %s%s", name, f": {info}" if info else "")
        else:
            log.info("security event %s%s", name, f": {info}" if info else "")
        return acts

    @_event
    def invalid_message(self, description: str, now: datetime) -> list[Action]:
        """The link refused a CSMS frame (InvalidMessages, WP3 §8; log only). At most one entry
        a minute: a CSMS that floods bad frames must not rotate the rest out of the log."""
        last = self.invalid_messages_logged_at
        if last is not None and timedelta(0) <= now - last < INVALID_MESSAGES_EVERY:
            return []
        self.invalid_messages_logged_at = now
        return self._security_event("InvalidMessages", description, now, now)

    @_event
    def security_facts(self, facts: SecurityFacts, now: datetime) -> list[Action]:
        """What the certificate store holds now (A05.FR.03/04 need it); sends nothing."""
        self.security.facts = facts
        return []

    def change_security_key(self, key: str, value: str, now: datetime) -> tuple[str, list[Action]]:
        """ChangeConfiguration of SecurityProfile or AuthorizationKey (A05, A01)."""
        if key == "SecurityProfile":
            problem = self.security.why_not_profile(value)
            if problem is not None:
                log.warning("ChangeConfiguration SecurityProfile=%s rejected: %s", value, problem)
                return "Rejected", []
            n = int(value.strip())
            acts: list[Action] = [Persist(self.security.raise_profile(n))]
            acts += self._security_event("ReconfigurationOfSecurityParameters",
                                         f"SecurityProfile {self.security.profile} -> {n} requested", now, now)
            return "Accepted", acts + [Reconnect(f"SecurityProfile {n}")]
        if not is_valid_authorization_key(value):
            log.warning("ChangeConfiguration AuthorizationKey rejected: not 16-20 bytes as hex or text")
            return "Rejected", []
        reconnect, ops = self.security.change_key(value)
        acts = [Persist(ops)] + self._security_event("ReconfigurationOfSecurityParameters",
                                                     "AuthorizationKey changed", now, now)
        return "Accepted", acts + ([Reconnect("AuthorizationKey changed")] if reconnect else [])

    @_event
    def connection_established(self, profile: int, used_pending_key: bool, now: datetime) -> list[Action]:
        """The CSMS accepted a websocket under ``profile``: pending settings it proved are
        committed (A05.FR.09: the lower profile is never used again)."""
        changed, ops = self.security.established(profile, used_pending_key)
        acts: list[Action] = [Persist(ops)] if ops else []
        if changed:
            acts += self._security_event("ReconfigurationOfSecurityParameters",
                                         "now in use: " + ", ".join(changed), now, now)
        return acts

    @_event
    def connection_fallback(self, kind: str, event: str | None, tech_info: str | None,
                            now: datetime) -> list[Action]:
        """The pending profile or key failed to connect: back to the committed settings
        (A05.FR.08). A profile is deferred to the next start (kept persisted), a key dropped;
        the transport asks for the key only when the CSMS refused the credentials (A01.FR.03)."""
        acts: list[Action] = [Persist(self.security.fallback(kind))]
        if event is not None:
            acts += self._security_event(event, tech_info, now, now)
        return acts + self._settle(now)

    def request_certificate(self) -> tuple[str, list[Action]]:
        """ExtendedTriggerMessage(SignChargePointCertificate): Rejected without CpoName, the
        O of the certificate (A02.FR.13; libocpp does the same); else the service makes a key
        pair and CSR, after this reply (A02)."""
        if not self.settings.get_str("CpoName"):
            log.warning("SignChargePointCertificate rejected: CpoName is not set")
            return "Rejected", []
        return "Accepted", [SecurityTask("SignCertificate")]

    # ------------------------------------------------------------------ CSMS calls
    @_event
    def csms_call(self, unique_id: str, action: str, payload: dict, now: datetime) -> list[Action]:
        if self.registration is Registration.REJECTED:
            return []  # §4.2: while Rejected the CP does not answer CSMS calls
        handler = HANDLERS.get(action)
        if handler is None:
            return [ReplyError(unique_id, "NotSupported", f"{action} is not supported by this charge point")]
        try:
            result = handler(self, payload, now)
        except CallError as e:
            return [ReplyError(unique_id, e.code, e.description)]
        if isinstance(result, Delegate):
            return [Delegate(unique_id, action, payload)]
        response, after = result
        return [Reply(unique_id, response)] + after + self._settle(now)

    # ------------------------------------------------------------------ views
    def snapshot(self) -> dict:
        """What GET /api/state shows about the station."""
        conns = []
        for cid, c in self.connectors.items():
            st = c.current or self.status_of(c)
            tx = self.txlog.record(cid)
            reading = c.reading
            conns.append({
                "id": cid, "status": st[0], "errorCode": st[1], "info": st[2],
                "transactionId": tx.get("transaction_id") if tx else None,
                "localTransactionId": tx["local_id"] if tx else None,
                "idTag": tx["id_tag"] if tx else None,
                "plugged": c.plugged, "contactorClosed": c.relay,
                "powerW": round(getattr(reading, "power_w", 0.0) or 0.0, 1) if reading else 0.0,
                "energyWh": round(self.evse.energy(cid), 1),
                "limitA": c.limit_a, "offeredA": self.evse.offered_a(cid) if tx is not None else None,
                "availability": c.availability, "scheduledAvailability": c.scheduled,
                "soc": round(s, 1) if (s := getattr(reading, "soc_percent", None)) is not None else None,
                "reservation": (r.to_record() if (r := self.reserved_for(cid)) else None),
                "pendingIdTag": c.pending.id_tag if c.pending else None,
            })
        st0 = self.station_status()
        return {
            "registration": self.registration.value, "link": "online" if self.online else "offline",
            "station": {"status": st0[0], "errorCode": st0[1], "availability": self.availability.availability0},
            "connectors": conns,
            "queue": {"length": len(self.txlog.queue), "oldestCreatedAt": self.txlog.queue.oldest_created_at(),
                      "discarded": self.txlog.discarded_count},
            "localListVersion": self.authorization.local_list.version,
            "firmwareStatus": self.firmware_status, "diagnosticsStatus": self.diagnostics_status,
            "security": {"profile": self.security.profile, "pendingProfile": self.security.pending_profile,
                         "authorizationKeySet": bool(self.security.authorization_key),
                         "pendingAuthorizationKey": self.security.pending_key is not None},
        }
