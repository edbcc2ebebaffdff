"""The station: a pure state machine. Events plus ``now`` in, effects out.

Every public event method takes ``now`` (aware UTC datetime) and returns one
:class:`~twin.core.effects.Effects`: durable ops, outputs, replies and sends on separate
channels, which the actor (``twin.actor``) executes in a fixed order (commit, then
outputs, replies, sends). It never sleeps, reads the clock, opens sockets or touches
hardware. ``next_deadline()`` is a function of the state alone.

The rules and their sources are cited where they are applied. The shared-reader rule
(one RFID reader, two connectors) is documented in docs/station-behaviour.md.
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Callable

from twin.core import auth
from twin.core.actions import (Action, Delegate, LinkSetting, Persist, Reply, ReplyError, Restart, Send,
                               SetPilot, SetRelay)
from twin.core.connector import Connector, Pending, Status, derive, derive_station
from twin.core.effects import Effects
from twin.core.limits import INT32_MAX, MIN_CHARGING_CURRENT_A
from twin.core.metering import reading_values, sampled_values
from twin.core.reservation import Reservation, Reservations
from twin.core.timeutil import next_aligned, parse_ts, ts
from twin.core.txqueue import Entry, TxQueue

log = logging.getLogger("twin.station")

STORAGE_FAULT = ("OtherError", "storage failure: not recording")
CLOCK_DISAGREEMENT_S = 60
# Below this measured power an EV behind a closed contactor is not charging (SuspendedEV):
# standby loads of an on-board charger stay well under it; 6 A on one phase is 1380 W.
EV_DRAWING_MIN_W = 100.0


@dataclass
class EvseView:
    plugged: bool
    contactor_closed: bool
    offered_a: float
    voltage: float
    phases: int
    energy_wh: float
# A power loss must not lose more energy than this much time of charging: the register is
# persisted at least this often while a transaction runs (also with MeterValueSampleInterval 0).
ENERGY_PERSIST_MAX_S = 60


def _event(method: Callable[..., list[Action]]) -> Callable[..., Effects]:
    """A public event: the rules return actions in any order; the caller gets channels."""

    @functools.wraps(method)
    def wrapper(self: "Station", *args: Any, **kwargs: Any) -> Effects:
        return Effects.of(method(self, *args, **kwargs))

    return wrapper


@dataclass
class StationSpec:
    """The shape of the station the core runs: what the charger profile says about the
    model (twin/profiles), plus the unit's own identity. Tests build one directly."""

    connectors: int = 2
    fixed_cable: bool = True
    identity: dict = field(default_factory=lambda: {
        "chargePointVendor": "XJ Power Co., Ltd.", "chargePointModel": "iEVQC33", "firmwareVersion": "V1.10"})
    max_current_a: float = 32.0  # per connector: the pilot offer and the local limit (TC_067)
    voltage: float = 230.0
    phases: int = 3
    boot_retry_s: int = 10  # BootNotification retry after a CALLERROR/timeout or interval 0
    trigger_meter_values_connector_0: bool = False  # profile quirk (docs/profiles.md)

    @classmethod
    def from_profile(cls, profile: Any, *, identity: dict, connectors: int, fixed_cable: bool) -> "StationSpec":
        return cls(connectors=connectors, fixed_cable=fixed_cable, identity=identity,
                   max_current_a=profile.max_current_a, voltage=profile.voltage, phases=profile.phases,
                   trigger_meter_values_connector_0=profile.quirks.trigger_meter_values_connector_0)


class Station:
    def __init__(self, spec: StationSpec, keys: Any, smart: Any, state: dict | None = None):
        self.spec = spec
        self.keys = keys
        self.smart = smart
        state = state or {}
        kv = state.get("kv", {})
        n = spec.connectors
        self.n = n
        self.connectors: dict[int, Connector] = {
            cid: Connector(cid, phases=spec.phases) for cid in range(1, n + 1)}
        avail = kv.get("availability", {})
        self.availability0: str = avail.get("0", "Operative")
        for cid, c in self.connectors.items():
            c.availability = avail.get(str(cid), "Operative")
        station_kv = kv.get("station", {})
        for cid, plugged in (station_kv.get("plugged") or {}).items():
            if int(cid) in self.connectors:
                self.connectors[int(cid)].plugged = bool(plugged)
        self.meter_floor: dict[int, float] = {int(k): v for k, v in (station_kv.get("meter_energy") or {}).items()}
        self.hard_reset_pending = bool(station_kv.get("hard_reset"))
        self.station_fault: tuple[str, str | None] | None = None
        scheduled = station_kv.get("scheduled") or {}  # ChangeAvailability answered Scheduled (§5.2)
        self.scheduled0: str | None = scheduled.get("0")
        for cid, c in self.connectors.items():
            c.scheduled = scheduled.get(str(cid))
        self.maintenance = False  # firmware install waiting: idle connectors Unavailable (errata 3.47-3.49)
        self.reported0: Status | None = None
        self.current0: Status | None = None
        self.since0: datetime | None = None

        self.cache = auth.AuthCache({k: v for k, v in kv.get("auth_cache", {}).items()})
        self.local_list = auth.LocalList.from_store(kv.get("local_list", {}), kv.get(auth.LocalList.VERSION_NS))
        self.reservations = Reservations([Reservation.from_record(r) for r in kv.get("reservations", {}).values()])
        if kv.get("profiles", {}).get("all"):
            for problem in self.smart.load_json(kv["profiles"]["all"]) or []:
                log.warning("stored charging profile skipped: %s", problem)

        self.txs: dict[int, dict] = {int(k): dict(v) for k, v in state.get("transactions", {}).items()}
        self.next_local_id = max([0] + list(self.txs)) + 1
        # Transactions that are finished and fully delivered need not stay in memory.
        # Sequence numbers are never reused: the discarded table keeps old ones for diagnostics.
        used = [r["seq"] for r in state.get("discarded", []) if isinstance(r.get("seq"), int)]
        self.queue = TxQueue([Entry.from_record(r) for r in state.get("queue", [])], next_seq=max(used, default=0) + 1)
        self.discarded_count = len(state.get("discarded", []))
        self._gc_txs()

        self.online = False
        self.registration = "None"  # None | Pending | Accepted | Rejected
        self.heartbeat_interval = self.keys.get_int("HeartbeatInterval")
        self.next_boot_at: datetime | None = None
        self.boot_in_flight = False
        self.next_heartbeat_at: datetime | None = None
        self.next_aligned_at: datetime | None = None
        self.pending_calls: dict[int, dict] = {}
        self.next_ref = 1
        self.tx_in_flight: int | None = None  # ref of the queue entry being transmitted
        self.held_tag: tuple[str, datetime] | None = None
        self.sample_at: dict[int, datetime] = {}
        self.firmware_status = "Idle"
        self.diagnostics_status = "Idle"
        self.booted = False
        self.limit_change_at: datetime | None = None  # next smart-charging limit change (a deadline)
        self.energy_saved_at: dict[int, datetime] = {}  # when each running register was last persisted

    # ------------------------------------------------------------------ helpers
    def _ref(self) -> int:
        ref = self.next_ref
        self.next_ref += 1
        return ref

    def _connected(self) -> bool:
        return self.online and self.registration == "Accepted"

    def _call(self, action: str, payload: dict, ctx: dict, *, force: bool = False) -> list[Action]:
        """Send a non-transaction CALL if the link and registration allow it (§4.2)."""
        if not self.online or not (force or self.registration == "Accepted"):
            return []
        ref = self._ref()
        ctx = dict(ctx, action=action)
        self.pending_calls[ref] = ctx
        return [Send(ref, action, payload, timeout=self._message_timeout())]

    def _message_timeout(self) -> float:
        return float(max(1, self._key_int("MessageTimeout", 30)))

    def _key_int(self, name: str, default: int) -> int:
        try:
            return self.keys.get_int(name)
        except (KeyError, ValueError):
            return default

    def _key_bool(self, name: str, default: bool) -> bool:
        try:
            return self.keys.get_bool(name)
        except (KeyError, ValueError):
            return default

    def _key_list(self, name: str) -> list[str]:
        try:
            return self.keys.get_list(name)
        except (KeyError, ValueError):
            return []

    def _operative(self, c: Connector) -> bool:
        return self.availability0 == "Operative" and c.availability == "Operative" and not self.maintenance

    @staticmethod
    def _has_energy(c: Connector) -> bool:
        return c.reading is not None and getattr(c.reading, "energy_wh", None) is not None

    def _energy(self, c: Connector) -> float:
        if self._has_energy(c):
            return float(c.reading.energy_wh)
        return float(self.meter_floor.get(c.id, 0.0))

    def _tx_info(self) -> dict:
        from twin.core.smart_charging import TxInfo

        out = {}
        for cid, c in self.connectors.items():
            if c.tx is not None:
                tx = self.txs[c.tx]
                out[cid] = TxInfo(transaction_id=tx.get("transaction_id"), start=parse_ts(tx["start_time"]))
        return out

    def _reserved_for(self, c: Connector) -> Reservation | None:
        """The reservation that holds this connector, if any (connector or connector-0 reservation)."""
        r = self.reservations.for_connector(c.id)
        if r is not None:
            return r
        zero = self.reservations.zero()
        if not zero:
            return None
        # A connector-0 reservation keeps one connector for its tag (§5.13): while the
        # connectors that could still take a new transaction are no more than such
        # reservations, each of them is held. A plugged one too: else another card could
        # start on the last connector left (it then shows Preparing, not Reserved).
        open_ = [x for x in self.connectors.values() if self._could_start(x)]
        if c in open_ and len(open_) <= len(zero):
            return zero[0]
        return None

    def _could_start(self, c: Connector) -> bool:
        return (c.tx is None and c.fault is None and self.station_fault is None and self._operative(c)
                and self.reservations.for_connector(c.id) is None)

    def _reservation_used(self, c: Connector, id_tag: str, parent: str | None) -> Reservation | None:
        """The reservation a transaction of ``id_tag`` on ``c`` ends (§5.13, ST.reservationId §4.8):
        the connector's own, else a connector-0 reservation for this tag, whichever connector."""
        own = self.reservations.for_connector(c.id)
        if own is not None:
            return own if own.admits(id_tag, parent) else None
        return next((r for r in self.reservations.zero() if r.admits(id_tag, parent)), None)

    def _is_free(self, c: Connector) -> bool:
        return (c.idle() and not c.plugged and c.fault is None and self.station_fault is None
                and self._operative(c) and self.reservations.for_connector(c.id) is None)

    def _usable(self, c: Connector) -> bool:
        """Can this connector take a new session now?"""
        return (c.tx is None and c.fault is None and self.station_fault is None and self._operative(c))

    def _evse_suspended(self, c: Connector) -> bool:
        if c.tx is None:
            return False
        tx = self.txs[c.tx]
        if tx.get("invalid"):
            allowed = self._key_int("MaxEnergyOnInvalidId", 0)
            if self._energy(c) - tx.get("energy_at_invalid", 0.0) >= allowed:
                return True
        return c.limit_a is not None and c.limit_a < MIN_CHARGING_CURRENT_A

    def offered_a(self, c: Connector) -> float:
        limit = self.spec.max_current_a
        if c.limit_a is not None:
            limit = min(limit, c.limit_a)
        return max(0.0, limit)

    def evse_view(self, cid: int) -> "EvseView":
        """What an EV on this connector can see of the station (the simulated EV reads it)."""
        c = self.connectors[cid]
        return EvseView(plugged=c.plugged, contactor_closed=c.relay,
                        offered_a=self.offered_a(c) if c.relay else 0.0, voltage=self.spec.voltage,
                        phases=c.phases, energy_wh=self._energy(c))

    @staticmethod
    def _ev_drawing(c: Connector) -> bool:
        # Charging vs SuspendedEV (§4.9) from what the meter measures, not from a model of the car.
        return c.ev_drawing is not False

    def status_of(self, c: Connector) -> Status:
        r = self._reserved_for(c)
        return derive(c, operative=self._operative(c), station_fault=self.station_fault,
                      reserved=r is not None, evse_suspended=self._evse_suspended(c),
                      ev_drawing=self._ev_drawing(c))

    # ------------------------------------------------------------------ boot and link
    @_event
    def boot(self, now: datetime) -> list[Action]:
        """After power-up: transactions that were running are stopped (TC_032_2, TC_015)."""
        acts: list[Action] = []
        reason = "HardReset" if self.hard_reset_pending else "PowerLoss"
        for local_id, tx in sorted(self.txs.items()):
            if tx.get("stopped"):
                continue
            c = self.connectors.get(tx["connector_id"])
            if c is None:
                continue
            c.tx = local_id
            log.warning("transaction %s on connector %s was interrupted; stopping it with reason %s",
                        local_id, c.id, reason, extra={"connector": c.id})
            # The meter keeps counting across a power loss: its register read at boot is the
            # energy of the transaction (a simulated meter restarts from its persisted register).
            last = float(tx.get("last_meter_wh", tx["meter_start"]))
            meter = max(last, float(c.reading.energy_wh)) if self._has_energy(c) else last
            acts += self._stop_tx(c, reason, None, now, when=parse_ts(tx.get("last_meter_time")) or now, meter=meter)
        if self.hard_reset_pending:
            self.hard_reset_pending = False
            acts.append(Persist([("kv_put", "station", "hard_reset", False)]))
        for c in self.connectors.values():
            if c.plugged and c.tx is None and not c.finishing:
                # A car left plugged across the restart waits for identification again.
                c.plug_deadline = now + timedelta(seconds=self._key_int("ConnectionTimeOut", 60))
        # Clock-aligned sampling runs from power-up, also before the first Accepted (errata 3.15).
        self._schedule_aligned(now)
        self.booted = True
        self._refresh_limits(now)
        acts += self._outputs()
        return acts

    @_event
    def link_up(self, now: datetime) -> list[Action]:
        self.online = True
        self.queue.link_restored(now)
        if self.registration == "Accepted":
            # Reconnect: report statuses that changed while offline (§4.9), then drain.
            acts = self._report_statuses(now)
            return acts + self._pump(now)
        # §4.2: after Pending or Rejected the next BootNotification waits for the interval the
        # CSMS gave, also across a reconnect (many CSMSs close the socket after Rejected).
        # Only a first connection, or one whose BootNotification was never answered, boots now.
        if self.next_boot_at is None:
            self.next_boot_at = now
        return self._maybe_boot(now)

    @_event
    def link_down(self, now: datetime) -> list[Action]:
        self.online = False
        self.boot_in_flight = False
        acts: list[Action] = []
        for ref, ctx in list(self.pending_calls.items()):
            acts += self._call_aborted(ref, ctx, now)
        self.pending_calls.clear()
        self.tx_in_flight = None
        self.queue.link_lost(now)
        # Pending and Rejected stand until the next BootNotification.conf (§4.2): while
        # Rejected, CSMS calls on a new connection are not answered either.
        return acts + self._settle(now)

    def _maybe_boot(self, now: datetime) -> list[Action]:
        if not self.online or self.boot_in_flight or self.registration == "Accepted":
            return []
        if self.next_boot_at is None or self.next_boot_at > now:
            return []
        self.boot_in_flight = True
        self.next_boot_at = None
        payload = {k: v for k, v in self.spec.identity.items() if v}
        return self._call("BootNotification", payload, {"kind": "boot"}, force=True)

    # ------------------------------------------------------------------ call outcomes
    @_event
    def call_result(self, ref: int, payload: dict, now: datetime) -> list[Action]:
        ctx = self.pending_calls.pop(ref, None)
        if ctx is None:
            return []
        problem = _malformed(ctx["action"], payload)
        if problem is not None:
            # A reply the station cannot interpret is a failure to process (§3.7.1), not a refusal.
            log.error("malformed %s.conf from the CSMS (%s): %s", ctx["action"], problem, payload,
                      extra={"ocpp_action": ctx["action"]})
            self.pending_calls[ref] = ctx
            return self.call_failed(ref, f"malformed response: {problem}", now)
        kind = ctx["kind"]
        if kind in ("boot", "heartbeat"):
            self._compare_clock(payload.get("currentTime"), now)
        if kind == "boot":
            return self._on_boot_conf(payload, now)
        if kind == "tx":
            return self._on_tx_conf(ctx["entry"], payload, now)
        if kind == "authorize":
            return self._on_authorize_conf(ctx, payload["idTagInfo"], now)
        return []

    @_event
    def call_failed(self, ref: int, reason: str, now: datetime) -> list[Action]:
        """A CALLERROR, or a reply the station cannot use: a failure to process (§3.7.1)."""
        ctx = self.pending_calls.pop(ref, None)
        if ctx is None:
            return []
        kind = ctx["kind"]
        if kind == "boot":
            self.boot_in_flight = False
            self.next_boot_at = now + timedelta(seconds=self.spec.boot_retry_s)
            return []
        if kind == "tx":
            return self._on_tx_failed(ctx["entry"], reason, now)
        if kind == "authorize":
            # A connected CSMS that answers with an error has not said yes: fail closed.
            return self._authorize_refused_by_error(ctx, now) + self._settle(now)
        return []

    @_event
    def call_timed_out(self, ref: int, now: datetime) -> list[Action]:
        """No answer within MessageTimeout on a link that still answers pings.

        Not a failure to process: a transaction message is sent again after the retry
        interval without counting an attempt (only CALLERRORs count, §3.7.1), so a CSMS
        that drops one answer never makes the station discard billing data.
        """
        ctx = self.pending_calls.pop(ref, None)
        if ctx is None:
            return []
        kind = ctx["kind"]
        if kind == "tx":
            self.tx_in_flight = None
            entry = ctx["entry"]
            self.queue.unanswered(entry, now, retry_interval=self._key_int("TransactionMessageRetryInterval", 5))
            log.warning("%s got no answer in time; sending it again at %s (no attempt counted)", entry.action,
                        entry.next_attempt_at, extra={"ocpp_action": entry.action})
            return self._settle(now)
        if kind == "boot":
            self.boot_in_flight = False
            self.next_boot_at = now + timedelta(seconds=self.spec.boot_retry_s)
            return []
        if kind == "authorize":
            return self._authorize_refused_by_error(ctx, now) + self._settle(now)
        return []

    def _call_aborted(self, ref: int, ctx: dict, now: datetime) -> list[Action]:
        """The link went down with the call outstanding: not a failure to process."""
        if ctx["kind"] == "authorize":
            return self._authorize_unanswered(ctx, now)
        return []

    def _compare_clock(self, current_time: Any, now: datetime) -> None:
        """§4.2/§4.6: the CSMS's currentTime SHOULD be used to sync the clock. The station's
        clock belongs to the OS (NTP), so the core reports a disagreement instead of setting it."""
        theirs = parse_ts(current_time) if isinstance(current_time, str) else None
        if theirs is None:
            return
        offset = (theirs - now).total_seconds()
        if abs(offset) > CLOCK_DISAGREEMENT_S:
            log.warning("station clock differs from the CSMS's currentTime by %+.0f s; check NTP", offset)

    def _on_boot_conf(self, payload: dict, now: datetime) -> list[Action]:
        self.boot_in_flight = False
        status = payload.get("status")
        # A schema-valid but absurd interval (10**12 s) must not overflow the clock arithmetic.
        interval = max(0, min(int(payload.get("interval") or 0), INT32_MAX))
        acts: list[Action] = []
        if status == "Accepted":
            self.registration = "Accepted"
            self.next_boot_at = None
            if interval > 0:
                self.heartbeat_interval = interval
                acts += self._set_key("HeartbeatInterval", str(interval))
            self.next_heartbeat_at = now + timedelta(seconds=self.heartbeat_interval) if self.heartbeat_interval else None
            self._schedule_aligned(now)
            # Errata 3.22: after every BootNotification Accepted, an SN for connector 0 and every connector.
            acts += self._report_statuses(now, force_all=True)
            acts += self._pump(now)
            return acts
        # Pending or Rejected: retry after the interval (§4.2); Rejected also stops answering calls.
        self.registration = status if status in ("Pending", "Rejected") else "None"
        self.next_boot_at = now + timedelta(seconds=interval if interval > 0 else self.spec.boot_retry_s)
        return acts

    def _set_key(self, name: str, value: str) -> list[Action]:
        try:
            status, changes = self.keys.change(name, value)
        except Exception:  # noqa: BLE001 - a key the profile lacks must not break the flow
            return []
        return [Persist([("kv_put", "config", k, v) for k, v in changes.items()])] if changes else []

    # ------------------------------------------------------------------ timers
    def next_deadline(self) -> datetime | None:
        """The earliest time ``tick`` has work to do: a function of the state alone.
        After ``tick(now)`` it is None or later than ``now`` (tests/core: the deadline property)."""
        # While a BootNotification is unanswered its answer, not a timer, ends the wait.
        times: list[datetime | None] = [self.next_boot_at if self.online and not self.boot_in_flight else None]
        if self._connected():
            times += [self.next_heartbeat_at, self.queue.next_deadline() if self.tx_in_flight is None else None]
        times.append(self.next_aligned_at)
        times += list(self.sample_at.values())
        for c in self.connectors.values():
            if c.pending:
                times.append(c.pending.deadline)
            times.append(c.plug_deadline)
            msd = self._key_int("MinimumStatusDuration", 0)
            if self._connected() and c.since and c.current != c.reported and msd > 0:
                times.append(c.since + timedelta(seconds=msd))
        if self.held_tag:
            times.append(self.held_tag[1])
        times.append(self.reservations.next_expiry())
        times.append(self.limit_change_at)
        valid = [t for t in times if t is not None]
        return min(valid) if valid else None

    @_event
    def tick(self, now: datetime) -> list[Action]:
        acts: list[Action] = []
        acts += self._maybe_boot(now)
        if self._connected() and self.next_heartbeat_at and now >= self.next_heartbeat_at:
            self.next_heartbeat_at = now + timedelta(seconds=self.heartbeat_interval) if self.heartbeat_interval else None
            acts += self._call("Heartbeat", {}, {"kind": "heartbeat"})
        # ConnectionTimeOut (§9.1.6, errata 3.20): an authorized tag with no cable lapses.
        for c in self.connectors.values():
            if c.pending and now >= c.pending.deadline:
                log.info("connector %s: no cable within ConnectionTimeOut; authorization of %s lapses",
                         c.id, c.pending.id_tag, extra={"connector": c.id})
                acts += self._drop_pending(c)
            if c.plug_deadline and now >= c.plug_deadline:
                c.plug_deadline = None
                if c.plugged and c.tx is None and self._reserved_for(c) is not None:
                    # Reserved, not Preparing: the wait for identification starts when the
                    # reservation ends; until then look again after ConnectionTimeOut.
                    c.plug_deadline = now + timedelta(seconds=self._key_int("ConnectionTimeOut", 60))
                elif c.plugged and c.tx is None:
                    c.finishing = True  # B6: Preparing -> Finishing (errata 3.20)
        if self.held_tag and now >= self.held_tag[1]:
            self.held_tag = None
        for r in self.reservations.expired(now):
            log.info("reservation %s expired", r.reservation_id)
            acts.append(Persist(self.reservations.remove(r.reservation_id)))
        acts += self._sample(now)
        acts += self._clock_aligned(now)
        acts += self._settle(now)
        return acts

    def _schedule_aligned(self, now: datetime) -> None:
        interval = self._key_int("ClockAlignedDataInterval", 0)
        self.next_aligned_at = next_aligned(now, interval) if interval > 0 else None

    def _settle(self, now: datetime) -> list[Action]:
        """After every event: limits, outputs, status notifications, queue."""
        self._refresh_limits(now)
        acts = self._outputs()
        acts += self._pump(now)
        acts += self._report_statuses(now)
        return acts

    # ------------------------------------------------------------------ status notifications
    def _report_statuses(self, now: datetime, force_all: bool = False) -> list[Action]:
        acts: list[Action] = []
        msd = self._key_int("MinimumStatusDuration", 0)
        cur0 = derive_station(self.availability0, self.station_fault)
        if cur0 != self.current0:
            self.current0, self.since0 = cur0, now
        if self._connected() and (force_all or cur0 != self.reported0):
            acts += self._send_status(0, cur0, now)
            self.reported0 = cur0
        for c in self.connectors.values():
            cur = self.status_of(c)
            if cur != c.current:
                if c.current is not None:
                    log.info("connector %s: %s -> %s", c.id, c.current[0], cur[0], extra={"connector": c.id})
                c.current, c.since = cur, now
            if not self._connected():
                continue
            # MinimumStatusDuration (§4.9): a state must last this long before it is reported.
            due = force_all or (cur != c.reported and (msd <= 0 or now - c.since >= timedelta(seconds=msd)))
            if due:
                acts += self._send_status(c.id, cur, now)
                c.reported, c.reported_at = cur, now
        return acts

    def _send_status(self, cid: int, st: Status, now: datetime) -> list[Action]:
        status, code, info = st
        payload = {"connectorId": cid, "errorCode": code, "status": status, "timestamp": ts(now)}
        if info:
            payload["info"] = info[:50]
        return self._call("StatusNotification", payload, {"kind": "status"})

    # ------------------------------------------------------------------ outputs
    def _refresh_limits(self, now: datetime) -> None:
        self.limit_change_at = None
        try:
            txs = self._tx_info()
            for c in self.connectors.values():
                c.limit_a, phases = self.smart.limit_at(c.id, now, txs)
                c.phases = phases or self.spec.phases
            change = self.smart.next_change(now, txs)
            # Kept as state, so next_deadline() needs no clock; a change not after `now` would
            # be a smart-charging bug and must not become a deadline that never passes.
            self.limit_change_at = change if change is not None and change > now else None
        except Exception:  # noqa: BLE001 - a smart-charging bug must never stop charging control
            log.exception("smart charging limit evaluation failed; charging unconstrained")

    def _outputs(self) -> list[Action]:
        acts: list[Action] = []
        for c in self.connectors.values():
            want = (c.tx is not None and c.plugged and not c.ev_disconnected and c.fault is None
                    and self.station_fault is None and not self._evse_suspended(c))
            if want != c.relay:
                c.relay = want
                c.ev_drawing = None  # to be measured anew behind this contactor state
                acts.append(SetRelay(c.id, want))
            pilot = self.offered_a(c) if c.tx is not None and want else None
            if pilot != c.pilot:
                c.pilot = pilot
                acts.append(SetPilot(c.id, pilot))
        return acts

    # ------------------------------------------------------------------ transaction queue
    def _enqueue(self, action: str, payload: dict, tx_local_id: int | None, now: datetime) -> list[tuple]:
        _entry, ops = self.queue.append(action, payload, tx_local_id, ts(now))
        return ops

    def _pump(self, now: datetime) -> list[Action]:
        # §3.7 / §4.2: transaction messages only once Accepted, one at a time, in order.
        if not self._connected() or self.tx_in_flight is not None:
            return []
        entry = self.queue.ready(now)
        if entry is None:
            return []
        payload = self._bind(entry)
        ref = self._ref()
        self.pending_calls[ref] = {"kind": "tx", "entry": entry, "action": entry.action}
        self.tx_in_flight = ref
        self.queue.mark_sent(entry)
        return [Send(ref, entry.action, payload, timeout=self._message_timeout())]

    def _bind(self, entry: Entry) -> dict:
        """Late binding of transactionId at send time (errata 3.18: -1 when unknown)."""
        payload = dict(entry.payload)
        if entry.action in ("StopTransaction", "MeterValues") and entry.tx_local_id is not None:
            tx = self.txs.get(entry.tx_local_id) or {}
            tid = tx.get("transaction_id")
            payload["transactionId"] = tid if tid is not None else -1
        return payload

    def _on_tx_conf(self, entry: Entry, payload: dict, now: datetime) -> list[Action]:
        self.tx_in_flight = None
        ops = self.queue.confirm(entry)
        acts: list[Action] = []
        tx = self.txs.get(entry.tx_local_id) if entry.tx_local_id is not None else None
        if entry.action == "StartTransaction" and tx is not None:
            tx["transaction_id"] = payload.get("transactionId")
            tx["start_status"] = "confirmed"
            info = payload.get("idTagInfo") or {}
            if info.get("parentIdTag"):
                tx["parent_id_tag"] = info["parentIdTag"]
            ops.append(("tx_put", tx["local_id"], tx))
            ops += self._learn(tx["id_tag"], info, now)
            acts.append(Persist(ops))
            acts += self._conflict_check(tx["id_tag"], info, now)
            if info.get("status") != "Accepted" and not tx.get("stopped"):
                acts += self._invalidated(tx, now)
        elif entry.action == "StopTransaction":
            info = payload.get("idTagInfo")
            if info and entry.payload.get("idTag"):
                ops += self._learn(entry.payload["idTag"], info, now)
            if tx is not None:
                tx["stop_confirmed"] = True
                ops.append(("tx_put", tx["local_id"], tx))
            acts.append(Persist(ops))
        else:
            acts.append(Persist(ops))
        self._gc_txs()
        return acts + self._settle(now)

    def _on_tx_failed(self, entry: Entry, reason: str, now: datetime) -> list[Action]:
        self.tx_in_flight = None
        discarded, ops = self.queue.fail(
            entry, now, max_attempts=self._key_int("TransactionMessageAttempts", 3),
            retry_interval=self._key_int("TransactionMessageRetryInterval", 5), reason=reason)
        acts: list[Action] = []
        if discarded:
            self.discarded_count += 1
            log.error("discarding %s after %d failed attempts (%s): %s", entry.action, entry.attempts, reason,
                      entry.payload, extra={"ocpp_action": entry.action})
            tx = self.txs.get(entry.tx_local_id) if entry.tx_local_id is not None else None
            if entry.action == "StartTransaction" and tx is not None:
                tx["start_status"] = "discarded"  # its later messages go out with transactionId -1
                ops.append(("tx_put", tx["local_id"], tx))
        else:
            log.warning("%s attempt %d failed (%s); retrying at %s", entry.action, entry.attempts, reason,
                        entry.next_attempt_at, extra={"ocpp_action": entry.action})
        acts.append(Persist(ops))
        self._gc_txs()
        return acts + self._settle(now)

    def _gc_txs(self) -> None:
        # Runs after every confirmation: scanning the whole queue each time made draining
        # a backlog quadratic (10,000 queued MeterValues: half the drain time, bench_queue).
        # Scan only while some stopped transaction may still be referenced; its entries
        # sit near the head of the FIFO, so the scan usually stops at the first entry.
        done = {k for k, tx in self.txs.items() if tx.get("stopped")}
        for entry in self.queue.entries:
            if not done:
                return
            done.discard(entry.tx_local_id)
        for local_id in done:
            del self.txs[local_id]

    # ------------------------------------------------------------------ authorization
    def _lookup(self, id_tag: str, now: datetime) -> auth.Lookup:
        return auth.lookup(id_tag, self.local_list, self.cache,
                           list_enabled=self._key_bool("LocalAuthListEnabled", True),
                           cache_enabled=self._key_bool("AuthorizationCacheEnabled", True), now=now)

    def _decide(self, id_tag: str, now: datetime) -> auth.Decision:
        return auth.decide(self._lookup(id_tag, now), online=self._connected(),
                           local_pre_authorize=self._key_bool("LocalPreAuthorize", False),
                           local_authorize_offline=self._key_bool("LocalAuthorizeOffline", True),
                           allow_offline_unknown=self._key_bool("AllowOfflineTxForUnknownId", False))

    def _learn(self, id_tag: str, info: dict, now: datetime) -> list[tuple]:
        """Feed the cache from Authorize/StartTransaction/StopTransaction idTagInfo; local-list ids are never cached (§3.5.3)."""
        if not info or not self._key_bool("AuthorizationCacheEnabled", True):
            return []
        if self._key_bool("LocalAuthListEnabled", True) and self.local_list.get(id_tag) is not None:
            return []
        return self.cache.update(id_tag, info, now)

    def _conflict_check(self, id_tag: str, info: dict, now: datetime) -> list[Action]:
        """§3.5.2: the local list disagrees with the CSMS -> StatusNotification LocalListConflict on connector 0."""
        if not self._key_bool("LocalAuthListEnabled", True):
            return []
        listed = auth.effective_info(self.local_list.get(id_tag), now)
        if listed is None or info.get("status") is None or listed.get("status") == info.get("status"):
            return []
        log.warning("local list conflict for %s: list %s, CSMS %s", id_tag, listed.get("status"), info.get("status"))
        status = derive_station(self.availability0, self.station_fault)
        payload = {"connectorId": 0, "errorCode": "LocalListConflict", "status": status[0], "timestamp": ts(now),
                   "info": f"{id_tag}: list {listed.get('status')}"[:50]}
        acts = self._call("StatusNotification", payload, {"kind": "status"})
        if acts:
            # The CSMS now holds connector 0 in LocalListConflict: the next status report
            # clears it with the real state (NoError), as for any other error code.
            self.reported0 = (status[0], "LocalListConflict", payload["info"])
        return acts

    def _authorize(self, id_tag: str, ctx: dict) -> list[Action]:
        return self._call("Authorize", {"idTag": id_tag}, dict(ctx, kind="authorize", id_tag=id_tag))

    def _on_authorize_conf(self, ctx: dict, info: dict, now: datetime) -> list[Action]:
        id_tag = ctx["id_tag"]
        acts: list[Action] = [Persist(self._learn(id_tag, info, now))]
        acts += self._conflict_check(id_tag, info, now)
        acts += self._authorized_outcome(ctx, info, now)
        return acts + self._settle(now)

    def _authorize_unanswered(self, ctx: dict, now: datetime) -> list[Action]:
        """Authorize got no answer: decide as if offline (§3.5.4)."""
        found = self._lookup(ctx["id_tag"], now)
        d = auth.decide(found, online=False, local_pre_authorize=False,
                        local_authorize_offline=self._key_bool("LocalAuthorizeOffline", True),
                        allow_offline_unknown=self._key_bool("AllowOfflineTxForUnknownId", False))
        info = d.info if d.verdict == "accept" else {"status": "Invalid"}
        return self._authorized_outcome(ctx, info, now)

    def _authorize_refused_by_error(self, ctx: dict, now: datetime) -> list[Action]:
        """Authorize answered with a CALLERROR or an unusable reply by a connected CSMS.
        Not "offline" (§3.5.4 is for a CP that cannot reach the CSMS): only the local list or
        a valid cache entry may still authorize the tag; AllowOfflineTxForUnknownId does not."""
        found = self._lookup(ctx["id_tag"], now)
        info = found.info if auth.is_valid(found.info) else {"status": "Invalid"}
        log.warning("Authorize for %s failed at the CSMS; %s", ctx["id_tag"],
                    "authorized by the " + found.source if auth.is_valid(found.info) else "not authorized")
        return self._authorized_outcome(ctx, info, now)

    def _authorized_outcome(self, ctx: dict, info: dict, now: datetime) -> list[Action]:
        purpose = ctx.get("purpose")
        id_tag = ctx["id_tag"]
        if purpose == "stop-or-start":
            parent = info.get("parentIdTag")
            if info.get("status") == "Accepted" and parent:
                for c in self.connectors.values():
                    tx = self.txs.get(c.tx) if c.tx is not None else None
                    if tx and tx.get("parent_id_tag") == parent:
                        return self._stop_tx(c, "Local", id_tag, now)  # TC_069
            if info.get("status") != "Accepted":
                return []
            return self._route_identification(id_tag, now, known=info)
        c = self.connectors.get(ctx.get("connector"))
        if c is None:
            return []
        if auth.same_tag(c.authorizing, id_tag):
            c.authorizing = None
        if not self._usable(c):
            # The connector faulted, went Unavailable or got a session while we waited (TC_041, §5.2).
            log.info("connector %s can no longer take %s", c.id, id_tag, extra={"connector": c.id})
            return self._drop_pending(c) if purpose == "remote" else []
        if info.get("status") != "Accepted":
            # TC_023 / reference §3.3 item 4: no transaction and no further status change.
            log.info("authorization of %s refused (%s)", id_tag, info.get("status"), extra={"connector": c.id})
            if purpose == "remote":
                return self._drop_pending(c)
            return []
        res = self._reserved_for(c)
        if res is not None:
            ok = res.admits(id_tag, info.get("parentIdTag"))
            if not ok:
                log.info("connector %s is reserved for another identifier; %s may not start", c.id, id_tag)
                return self._drop_pending(c) if purpose == "remote" else []
        return self._authorized(c, id_tag, info, now, remote=purpose == "remote", bound=ctx.get("bound", False))

    def _authorized(self, c: Connector, id_tag: str, info: dict | None, now: datetime, *, remote: bool = False,
                    bound: bool = False) -> list[Action]:
        res = self._reservation_used(c, id_tag, (info or {}).get("parentIdTag"))
        reservation_id = res.reservation_id if res is not None else None
        if c.plugged:
            return self._start_tx(c, id_tag, info, reservation_id, now)
        timeout = self._key_int("ConnectionTimeOut", 60)
        c.pending = Pending(id_tag, info, now + timedelta(seconds=timeout), remote=remote,
                            reservation_id=reservation_id, bound=bound)
        return []

    def _drop_pending(self, c: Connector) -> list[Action]:
        """An authorization lapses without a transaction: a RemoteStart TxProfile held for it goes too."""
        c.pending = None
        try:
            self.smart.discard_pending_tx_profile(c.id)
        except Exception:  # noqa: BLE001
            log.exception("discarding the held TxProfile failed")
            return []
        return [Persist([("kv_put", "profiles", "all", self.smart.to_json())])]

    # ------------------------------------------------------------------ local events
    @_event
    def plug(self, cid: int, now: datetime) -> list[Action]:
        c = self.connectors[cid]
        acts: list[Action] = []
        if c.plugged:
            return acts
        c.plugged = True
        c.finishing = False
        acts.append(Persist(self._plug_ops()))
        if c.tx is not None and c.ev_disconnected:
            c.ev_disconnected = False  # the EV came back; the transaction resumes
        elif not self._usable(c) or c.authorizing:
            pass  # Faulted / Unavailable / busy: the cable is noted, nothing starts (TC_041)
        elif c.pending is not None:
            p, c.pending = c.pending, None
            acts += self._start_tx(c, p.id_tag, p.info, p.reservation_id, now)
        else:
            moved = self._take_movable_pending(c)
            if moved is not None:
                acts += self._start_tx(c, moved.id_tag, moved.info, moved.reservation_id, now)
            elif self.held_tag is not None:
                tag, self.held_tag = self.held_tag[0], None
                acts += self._identify_for(c, tag, now)
            else:
                c.plug_deadline = now + timedelta(seconds=self._key_int("ConnectionTimeOut", 60))
        return acts + self._settle(now)

    def _take_movable_pending(self, target: Connector) -> Pending | None:
        """Shared reader: a tag presented first goes to the next connector plugged (docs/station-behaviour.md)."""
        if not self._usable(target) or target.authorizing or self.reservations.for_connector(target.id):
            return None
        for c in self.connectors.values():
            # A connector reservation binds the tag to its connector; a connector-0 one does not.
            movable = c.pending is not None and (c.pending.reservation_id is None or getattr(
                self.reservations.items.get(c.pending.reservation_id), "connector_id", None) == 0)
            if c is not target and movable and not c.pending.bound:
                p, c.pending = c.pending, None
                return p
        return None

    def _plug_ops(self) -> list[tuple]:
        return [("kv_put", "station", "plugged", {str(c.id): c.plugged for c in self.connectors.values()})]

    @_event
    def unplug(self, cid: int, now: datetime) -> list[Action]:
        c = self.connectors[cid]
        if not c.plugged:
            return []
        acts: list[Action] = []
        c.plug_deadline = None
        if c.tx is not None:
            if self._key_bool("StopTransactionOnEVSideDisconnect", True):
                # §4.10: stop with EVDisconnected; report Finishing, then Available as the
                # fixed cable is free again (errata: Finishing -> Available on unplug).
                acts += self._stop_tx(c, "EVDisconnected", None, now)
                acts += self._settle(now)
            else:
                c.ev_disconnected = True  # SuspendedEV "EV side disconnected", tx continues
        c.plugged = False
        c.finishing = False
        acts.append(Persist(self._plug_ops()))
        return acts + self._settle(now)

    @_event
    def tap(self, id_tag: str, now: datetime) -> list[Action]:
        """A card on the shared reader (see docs/station-behaviour.md for the routing rule)."""
        # 1. The tag that started a transaction stops it, without Authorize (§3.4, §4.1).
        for c in self.connectors.values():
            if c.tx is not None and auth.same_tag(self.txs[c.tx]["id_tag"], id_tag):
                return self._stop_tx(c, "Local", id_tag, now) + self._settle(now)
        # 2. Presenting an authorized-but-unplugged tag again cancels it (TC_061 "swipe again").
        for c in self.connectors.values():
            if c.pending is not None and auth.same_tag(c.pending.id_tag, id_tag) and not c.pending.remote:
                return self._drop_pending(c) + self._settle(now)
        # 3. A tag with the same parentIdTag may stop (TC_069). Only possible when the
        #    running transaction's parent is known; else it cannot match (TC_068: no Authorize).
        parents = {self.txs[c.tx].get("parent_id_tag") for c in self.connectors.values() if c.tx is not None}
        parents.discard(None)
        if parents:
            found = self._lookup(id_tag, now)
            parent = (found.info or {}).get("parentIdTag")
            if found.info is not None and auth.is_valid(found.info) and parent in parents:
                for c in self.connectors.values():
                    if c.tx is not None and self.txs[c.tx].get("parent_id_tag") == parent:
                        return self._stop_tx(c, "Local", id_tag, now) + self._settle(now)
            if self._connected():
                return self._authorize(id_tag, {"purpose": "stop-or-start"}) + self._settle(now)
        return self._route_identification(id_tag, now) + self._settle(now)

    def _route_identification(self, id_tag: str, now: datetime, known: dict | None = None) -> list[Action]:
        def usable(c: Connector) -> bool:
            return c.tx is None and c.fault is None and self.station_fault is None and self._operative(c)

        plugged = [c for c in self.connectors.values() if usable(c) and c.plugged and c.pending is None
                   and c.authorizing is None]
        if plugged:
            # A cable just plugged (Preparing) wins over one left plugged after a session (Finishing).
            plugged.sort(key=lambda c: (c.finishing, c.id))
            return self._identify_for(plugged[0], id_tag, now, known)
        if any(c.tx is not None for c in self.connectors.values()):
            # One reader, a session already running: the new tag is for the next cable
            # plugged; authorize it then (avoids an Authorize the tag may not need, TC_068).
            self.held_tag = (id_tag, now + timedelta(seconds=self._key_int("ConnectionTimeOut", 60)))
            return []
        free = [c for c in self.connectors.values() if usable(c) and c.idle()]
        held = [(c, r) for c in free if (r := self._reserved_for(c)) is not None]
        info = known if known is not None else self._lookup(id_tag, now).info
        if info is None and self._connected() and any(r.admits(id_tag, None) is None for _, r in held):
            # A reservation may be this card's through its parentIdTag: learn the parent
            # (list or cache, else Authorize, §5.13) before choosing the connector (TC_053).
            return self._authorize(id_tag, {"purpose": "stop-or-start"})
        mine = [c for c, r in held if r.admits(id_tag, (info or {}).get("parentIdTag"))]
        free = mine or [c for c in free if self._reserved_for(c) is None] or free
        if not free:
            log.info("card %s presented but no connector can take it", id_tag)
            return []
        return self._identify_for(free[0], id_tag, now, known)

    def _identify_for(self, c: Connector, id_tag: str, now: datetime, known: dict | None = None) -> list[Action]:
        res = self._reserved_for(c)
        if res is not None and res.admits(id_tag, (known or {}).get("parentIdTag")) is False:
            log.info("connector %s reserved (%s); %s refused", c.id, res.reservation_id, id_tag)
            return []
        if known is not None and auth.is_valid(known):
            return self._authorized(c, id_tag, known, now)
        d = self._decide(id_tag, now)
        if res is not None and res.admits(id_tag, (d.info or {}).get("parentIdTag")) is None:
            if not self._connected():
                log.info("connector %s reserved; %s's parent cannot be learned offline", c.id, id_tag)
                return []  # §5.13: only the reserved tag or its parent may start
            d = auth.Decision("ask", d.info, d.source)  # must learn the parent (§5.13)
        if d.verdict == "accept":
            return self._authorized(c, id_tag, d.info, now)
        if d.verdict == "ask":
            c.authorizing = id_tag
            return self._authorize(id_tag, {"purpose": "start", "connector": c.id})
        log.info("identifier %s refused locally", id_tag, extra={"connector": c.id})
        return []

    @_event
    def fault(self, cid: int, code: str, info: str | None, now: datetime) -> list[Action]:
        acts: list[Action] = []
        if cid == 0:
            self.station_fault = (code, info)
            for c in self.connectors.values():
                acts += self._fault_effects(c, now)
            for r in self.reservations.zero():  # §5.13: the Charge Point Faulted ends them too
                acts.append(Persist(self.reservations.remove(r.reservation_id)))
        else:
            c = self.connectors[cid]
            c.fault = (code, info)
            acts += self._fault_effects(c, now)
        return acts + self._settle(now)

    def _fault_effects(self, c: Connector, now: datetime) -> list[Action]:
        acts: list[Action] = []
        if c.tx is not None:
            acts += self._stop_tx(c, "Other", None, now)
        if c.pending is not None:
            acts += self._drop_pending(c)
        c.authorizing = None
        res = self.reservations.for_connector(c.id)
        if res is not None:  # §5.13: a Faulted connector ends its reservation
            acts.append(Persist(self.reservations.remove(res.reservation_id)))
        return acts

    @_event
    def clear_fault(self, cid: int, now: datetime) -> list[Action]:
        if cid == 0:
            self.station_fault = None
        else:
            self.connectors[cid].fault = None
        return self._settle(now)

    @_event
    def meter_reading(self, cid: int, reading: Any, now: datetime) -> list[Action]:
        c = self.connectors[cid]
        acts: list[Action] = []
        if c.meter_error is not None:
            log.info("connector %s: meter answers again", cid, extra={"connector": cid})
            c.meter_error = None
        c.reading = reading
        if c.relay:
            power = getattr(reading, "power_w", None)
            if power is not None:
                c.ev_drawing = float(power) >= EV_DRAWING_MIN_W
        acts += self._persist_energy(c, now)
        return acts + self._settle(now)

    def _persist_energy(self, c: Connector, now: datetime) -> list[Action]:
        """Keep the register of a running transaction on disk at least every sample interval
        (ENERGY_PERSIST_MAX_S at most), so a power loss bills what was delivered."""
        if c.tx is None or not self._has_energy(c):
            return []
        tx = self.txs[c.tx]
        energy = int(round(float(c.reading.energy_wh)))
        if energy <= tx.get("last_meter_wh", 0):
            return []
        interval = self._key_int("MeterValueSampleInterval", 0)
        every = min(interval, ENERGY_PERSIST_MAX_S) if interval > 0 else ENERGY_PERSIST_MAX_S
        saved = self.energy_saved_at.get(c.id)
        if saved is not None and now - saved < timedelta(seconds=every):
            return []
        self.energy_saved_at[c.id] = now
        tx["last_meter_wh"] = energy
        tx["last_meter_time"] = ts(now)
        return [Persist([("tx_put", tx["local_id"], tx)] + self._floor_ops(c, energy))]

    @_event
    def meter_failed(self, cid: int, error: str, now: datetime) -> list[Action]:
        """The meter stopped answering: report PowerMeterFailure, keep the last good register for billing."""
        c = self.connectors[cid]
        if c.meter_error is None:
            log.error("connector %s: meter failure: %s", cid, error, extra={"connector": cid})
        c.meter_error = (error or "meter not answering")[:50]
        return self._settle(now)

    # ------------------------------------------------------------------ transactions
    def _start_tx(self, c: Connector, id_tag: str, info: dict | None, reservation_id: int | None,
                  now: datetime) -> list[Action]:
        c.plug_deadline = None
        c.finishing = False
        if reservation_id is not None and reservation_id not in self.reservations.items:
            # Authorized while the reservation stood, started after it was cancelled or
            # expired: the transaction no longer ends it, so ST.req must not name it (§4.8).
            log.info("reservation %s ended before the cable came; starting without it", reservation_id)
            reservation_id = None
        local_id = self.next_local_id
        self.next_local_id += 1
        meter = self._energy(c)
        tx = {
            "local_id": local_id, "connector_id": c.id, "id_tag": id_tag,
            "parent_id_tag": (info or {}).get("parentIdTag"), "meter_start": int(round(meter)),
            "start_time": ts(now), "reservation_id": reservation_id, "transaction_id": None,
            "start_status": "queued", "stopped": False, "last_meter_wh": int(round(meter)),
            "last_meter_time": ts(now), "data": [],
        }
        self.txs[local_id] = tx
        c.tx = local_id
        payload = {"connectorId": c.id, "idTag": id_tag, "meterStart": tx["meter_start"], "timestamp": ts(now)}
        if reservation_id is not None:
            payload["reservationId"] = reservation_id  # §4.8: ST.req MUST carry the reservation it ends
        stop_measurands = self._key_list("StopTxnSampledData")
        # §3.16.5: an empty StopTxnSampledData means no meter values in StopTransaction.
        begin = self._meter_value(self._values(c), stop_measurands, "Transaction.Begin", now) if stop_measurands else None
        if begin:
            tx["data"].append(begin)
        ops = [("tx_put", local_id, tx)] + self._enqueue("StartTransaction", payload, local_id, now)
        if reservation_id is not None:
            ops += self.reservations.remove(reservation_id)
        ops += self._floor_ops(c, meter)
        try:
            self.smart.bind_pending_tx_profile(c.id, None)
        except Exception:  # noqa: BLE001
            log.exception("binding the remote-start TxProfile failed")
        interval = self._key_int("MeterValueSampleInterval", 0)
        if interval > 0:
            self.sample_at[c.id] = now + timedelta(seconds=interval)
        self.energy_saved_at[c.id] = now
        log.info("transaction %s started on connector %s for %s", local_id, c.id, id_tag,
                 extra={"connector": c.id})
        # Persist first: the contactor closes only after this is on disk (issue 3).
        return [Persist(ops)]

    def _floor_ops(self, c: Connector, meter: float) -> list[tuple]:
        self.meter_floor[c.id] = max(self.meter_floor.get(c.id, 0.0), meter)
        return [("kv_put", "station", "meter_energy", {str(k): v for k, v in self.meter_floor.items()})]

    def _stop_tx(self, c: Connector, reason: str, id_tag: str | None, now: datetime, *, when: datetime | None = None,
                 meter: float | None = None) -> list[Action]:
        tx = self.txs[c.tx]
        when = when or now
        meter_stop = int(round(meter if meter is not None else max(self._energy(c), tx.get("last_meter_wh", 0))))
        stop_measurands = self._key_list("StopTxnSampledData")
        data = list(tx.get("data", []))
        if stop_measurands:  # errata 3.14/3.91: Transaction.Begin and .End values are included
            end = self._meter_value({**self._values(c), "Energy.Active.Import.Register": float(meter_stop)},
                                    stop_measurands, "Transaction.End", when)
            if end:
                data.append(end)
        data = self._trim(data)
        payload = {"meterStop": meter_stop, "timestamp": ts(when), "reason": reason}
        # §6.49: idTag is "the identifier which requested to stop the charging". Only a card
        # presented at the station does; a remote stop, a reset, a power loss or an EV that
        # leaves has none, and sending the start tag would feed the cache a tag nobody showed.
        stop_tag = id_tag
        if stop_tag is not None:
            payload["idTag"] = stop_tag
        if data:
            payload["transactionData"] = data
        tx.update(stopped=True, stop_time=ts(when), meter_stop=meter_stop, stop_reason=reason,
                  stop_id_tag=stop_tag, last_meter_wh=meter_stop)
        ops = [("tx_put", tx["local_id"], tx)] + self._enqueue("StopTransaction", payload, tx["local_id"], now)
        ops += self._floor_ops(c, meter_stop)
        log.info("transaction %s on connector %s stopped: %s", tx["local_id"], c.id, reason, extra={"connector": c.id})
        c.tx = None
        c.ev_disconnected = False
        c.finishing = c.plugged
        self.sample_at.pop(c.id, None)
        acts: list[Action] = []
        if c.relay:
            c.relay = False
            c.ev_drawing = None
            acts.append(SetRelay(c.id, False))  # opens before the commit (twin.core.effects)
        acts.append(Persist(ops))
        try:
            self.smart.on_transaction_end(c.id)
            acts.append(Persist([("kv_put", "profiles", "all", self.smart.to_json())]))
        except Exception:  # noqa: BLE001
            log.exception("removing the TxProfile failed")
        acts += self._apply_scheduled(c, now)
        return acts

    def _trim(self, data: list[dict]) -> list[dict]:
        """StopTransactionMaxMeterValues: drop intermediate values, never Begin/End (errata 3.14/3.91)."""
        limit = self._key_int("StopTransactionMaxMeterValues", 0)
        if limit <= 0 or len(data) <= limit:
            return data
        if limit < 2:
            return data[-limit:]
        return [data[0]] + data[len(data) - (limit - 1):]

    def _invalidated(self, tx: dict, now: datetime) -> list[Action]:
        """StartTransaction.conf not Accepted (errata 3.17, online too; TC_037_2/3)."""
        c = self.connectors[tx["connector_id"]]
        if c.tx != tx["local_id"]:
            return []
        if self._key_bool("StopTransactionOnInvalidId", False):
            return self._stop_tx(c, "DeAuthorized", None, now)
        tx["invalid"] = True
        tx["energy_at_invalid"] = self._energy(c)
        return [Persist([("tx_put", tx["local_id"], tx)])]

    def _apply_scheduled(self, c: Connector, now: datetime) -> list[Action]:
        ops: list[tuple] = []
        changed: list[Connector] = []
        if c.scheduled is not None and c.tx is None:
            c.availability, c.scheduled = c.scheduled, None
            ops.append(("kv_put", "availability", str(c.id), c.availability))
            changed.append(c)
        if self.scheduled0 and all(x.tx is None for x in self.connectors.values()):
            self.availability0, self.scheduled0 = self.scheduled0, None
            ops.append(("kv_put", "availability", "0", self.availability0))
            for x in self.connectors.values():
                x.availability, x.scheduled = self.availability0, None
                ops.append(("kv_put", "availability", str(x.id), x.availability))
            changed = list(self.connectors.values())
        if not ops:
            return []
        ops.append(self.scheduled_op())
        for x in changed:
            if x.availability != "Operative":
                # §5.13: a connector that becomes Unavailable ends its reservation.
                if (r := self.reservations.for_connector(x.id)) is not None:
                    ops += self.reservations.remove(r.reservation_id)
                if x.pending is not None:
                    ops += [op for a in self._drop_pending(x) for op in a.ops]
        if self.availability0 != "Operative":
            for r in self.reservations.zero():
                ops += self.reservations.remove(r.reservation_id)
        return [Persist(ops)]

    def scheduled_op(self) -> tuple:
        """The pending (Scheduled) availability changes, persisted so a power loss keeps them (§5.2)."""
        scheduled = {str(c.id): c.scheduled for c in self.connectors.values() if c.scheduled}
        if self.scheduled0:
            scheduled["0"] = self.scheduled0
        return ("kv_put", "station", "scheduled", scheduled)

    # ------------------------------------------------------------------ meter values
    def _values(self, c: Connector) -> dict[str, float]:
        offered = self.offered_a(c) if c.tx is not None else 0.0
        values = reading_values(c.reading, offered, offered * self.spec.voltage * c.phases)
        if c.reading is None:
            values["Energy.Active.Import.Register"] = self._energy(c)
        return values  # SoC only when the meter measures it (reading.soc_percent)

    def station_meter_value(self, context: str, when: datetime) -> dict | None:
        """The whole station as one meter (connector 0): the sum of what adds up over the
        connectors (energy, power, current), of the MeterValuesSampledData measurands."""
        total: dict[str, float] = {}
        for c in self.connectors.values():
            for name, value in self._values(c).items():
                if name.startswith(("Energy.", "Power.", "Current.")):
                    total[name] = total.get(name, 0.0) + value
        return self._meter_value(total, self._key_list("MeterValuesSampledData"), context, when)

    def _meter_value(self, values: dict, measurands: list[str], context: str, when: datetime) -> dict | None:
        sv = sampled_values(values, measurands, context)
        return {"timestamp": ts(when), "sampledValue": sv} if sv else None

    def _sample(self, now: datetime) -> list[Action]:
        """Periodic samples (MeterValueSampleInterval, Sample.Periodic), also while offline (TC_036)."""
        acts: list[Action] = []
        interval = self._key_int("MeterValueSampleInterval", 0)
        for cid, due in list(self.sample_at.items()):
            if due > now:
                continue
            c = self.connectors[cid]
            if c.tx is None or interval <= 0:
                self.sample_at.pop(cid, None)
                continue
            while due <= now:
                due += timedelta(seconds=interval)
            self.sample_at[cid] = due
            acts += self._tx_meter_values(c, "Sample.Periodic", self._key_list("MeterValuesSampledData"),
                                          self._key_list("StopTxnSampledData"), now)
        return acts

    def _clock_aligned(self, now: datetime) -> list[Action]:
        if self.next_aligned_at is None or now < self.next_aligned_at:
            return []
        when = self.next_aligned_at
        self._schedule_aligned(now)
        acts: list[Action] = []
        for c in self.connectors.values():
            if c.tx is not None:
                acts += self._tx_meter_values(c, "Sample.Clock", self._key_list("MeterValuesAlignedData"),
                                              self._key_list("StopTxnAlignedData"), when)
        return acts

    def _tx_meter_values(self, c: Connector, context: str, measurands: list[str], stop_measurands: list[str],
                         when: datetime) -> list[Action]:
        tx = self.txs[c.tx]
        values = self._values(c)
        energy = values.get("Energy.Active.Import.Register", self._energy(c))
        mv = self._meter_value(values, measurands, context, when)
        ops: list[tuple] = []
        if mv:
            payload = {"connectorId": c.id, "meterValue": [mv]}
            ops += self._enqueue("MeterValues", payload, tx["local_id"], when)
        if stop_measurands:
            stop_mv = self._meter_value(values, stop_measurands, context, when)
            if stop_mv:
                tx.setdefault("data", []).append(stop_mv)
        tx["last_meter_wh"] = max(int(round(energy)), tx.get("last_meter_wh", 0))
        tx["last_meter_time"] = ts(when)
        ops.append(("tx_put", tx["local_id"], tx))
        ops += self._floor_ops(c, energy)
        return [Persist(ops)]

    # ------------------------------------------------------------------ firmware adapter hooks
    @_event
    def send_firmware_status(self, status: str, now: datetime) -> list[Action]:
        self.firmware_status = status
        return self._call("FirmwareStatusNotification", {"status": status}, {"kind": "fw"})

    @_event
    def send_diagnostics_status(self, status: str, now: datetime) -> list[Action]:
        self.diagnostics_status = status
        return self._call("DiagnosticsStatusNotification", {"status": status}, {"kind": "diag"})

    @_event
    def set_maintenance(self, on: bool, now: datetime) -> list[Action]:
        """While a firmware update waits to install, idle connectors are Unavailable and
        take no new transaction (errata 3.47-3.49). Not persisted: a restart ends it."""
        self.maintenance = on
        acts: list[Action] = []
        if on:
            for c in self.connectors.values():
                if c.pending is not None:
                    acts += self._drop_pending(c)
        return acts + self._settle(now)

    @_event
    def outputs_reset(self, now: datetime) -> list[Action]:
        """Something outside the core opened the contactors (the loop watchdog): forget what
        we commanded so the next settle drives every output again."""
        for c in self.connectors.values():
            c.relay = False
            c.pilot = None
        return self._settle(now)

    @_event
    def storage_failed(self, now: datetime) -> list[Action]:
        """The store could not save an event's data (disk full, I/O error). Charging on data
        a power cut would lose is not allowed: fault the station, which stops every session
        and refuses new ones, until the held data is on disk again."""
        if self.station_fault is not None:
            return []
        log.critical("storage failure: faulting the station until the data is saved")
        return self.fault(0, *STORAGE_FAULT, now)

    @_event
    def storage_recovered(self, now: datetime) -> list[Action]:
        if self.station_fault != STORAGE_FAULT:
            return []
        log.warning("store writable again; clearing the storage fault")
        return self.clear_fault(0, now)

    @_event
    def clock_stepped(self, delta_s: float, now: datetime) -> list[Action]:
        """The wall clock was stepped by ``delta_s`` (NTP sync on a Pi without an RTC, a manual
        set). Interval timers keep the time they had left; absolute ones (reservation expiry,
        clock-aligned data, charging schedules) stay on the wall clock, where the CSMS put them."""
        delta = timedelta(seconds=delta_s)

        def shift(t: datetime | None) -> datetime | None:
            return t + delta if t is not None else None

        self.next_boot_at = shift(self.next_boot_at)
        self.next_heartbeat_at = shift(self.next_heartbeat_at)
        self.sample_at = {cid: t + delta for cid, t in self.sample_at.items()}
        self.queue.shift(delta)
        for c in self.connectors.values():
            c.plug_deadline = shift(c.plug_deadline)
            if c.pending is not None:
                c.pending.deadline = c.pending.deadline + delta
            if c.since is not None:
                c.since = c.since + delta  # MinimumStatusDuration counts elapsed time
        if self.held_tag is not None:
            self.held_tag = (self.held_tag[0], self.held_tag[1] + delta)
        self._schedule_aligned(now)
        return self._settle(now)

    @_event
    def stop_all(self, reason: str, now: datetime) -> list[Action]:
        """A graceful stop of the station (SIGTERM, Soft reset): every transaction ends with
        ``reason`` and every contactor opens before the process goes (§5.14 Soft reset)."""
        acts: list[Action] = []
        for c in self.connectors.values():
            if c.tx is not None:
                acts += self._stop_tx(c, reason, None, now)
        return acts + self._settle(now)

    @_event
    def transfer_status(self, firmware: str, diagnostics: str, now: datetime) -> list[Action]:
        """The firmware service's current statuses, for TriggerMessage (§4.4, §4.5); sends nothing."""
        self.firmware_status, self.diagnostics_status = firmware, diagnostics
        return []

    def active_transactions(self) -> int:
        return sum(1 for c in self.connectors.values() if c.tx is not None)

    # ------------------------------------------------------------------ CSMS calls
    @_event
    def csms_call(self, unique_id: str, action: str, payload: dict, now: datetime) -> list[Action]:
        if self.registration == "Rejected":
            return []  # §4.2: while Rejected the CP does not answer CSMS calls
        from twin.core import handlers

        handler: Callable | None = handlers.HANDLERS.get(action)
        if handler is None:
            return [ReplyError(unique_id, "NotSupported", f"{action} is not supported by this charge point")]
        try:
            result = handler(self, payload, now)
        except handlers.CallError as e:
            return [ReplyError(unique_id, e.code, e.description)]
        if isinstance(result, Delegate):
            return [Delegate(unique_id, action, payload)]
        response, after = result
        return [Reply(unique_id, response)] + after + self._settle(now)

    # ------------------------------------------------------------------ views
    def snapshot(self) -> dict:
        """What GET /api/state shows about the station."""
        conns = []
        for c in self.connectors.values():
            st = c.current or self.status_of(c)
            tx = self.txs.get(c.tx) if c.tx is not None else None
            reading = c.reading
            conns.append({
                "id": c.id, "status": st[0], "errorCode": st[1], "info": st[2],
                "transactionId": tx.get("transaction_id") if tx else None,
                "localTransactionId": tx["local_id"] if tx else None,
                "idTag": tx["id_tag"] if tx else None,
                "plugged": c.plugged, "contactorClosed": c.relay,
                "powerW": round(getattr(reading, "power_w", 0.0) or 0.0, 1) if reading else 0.0,
                "energyWh": round(self._energy(c), 1),
                "limitA": c.limit_a, "offeredA": self.offered_a(c) if c.tx is not None else None,
                "availability": c.availability, "scheduledAvailability": c.scheduled,
                "soc": round(s, 1) if (s := getattr(reading, "soc_percent", None)) is not None else None,
                "reservation": (r.to_record() if (r := self._reserved_for(c)) else None),
                "pendingIdTag": c.pending.id_tag if c.pending else None,
            })
        st0 = derive_station(self.availability0, self.station_fault)
        return {
            "registration": self.registration, "link": "online" if self.online else "offline",
            "station": {"status": st0[0], "errorCode": st0[1], "availability": self.availability0},
            "connectors": conns,
            "queue": {"length": len(self.queue), "oldestCreatedAt": self.queue.oldest_created_at(),
                      "discarded": self.discarded_count},
            "localListVersion": self.local_list.version,
            "firmwareStatus": self.firmware_status, "diagnosticsStatus": self.diagnostics_status,
        }


def _malformed(action: str, payload: Any) -> str | None:
    """What the core reads from a .conf, checked before it is used (the link does not
    schema-check replies, to keep the drain fast). None when it is usable."""
    if not isinstance(payload, dict):
        return "payload is not an object"

    def tag_info(required: bool) -> str | None:
        info = payload.get("idTagInfo")
        if info is None:
            return "idTagInfo missing" if required else None
        if not isinstance(info, dict) or not isinstance(info.get("status"), str):
            return "idTagInfo is not an object with a status"
        if info.get("parentIdTag") is not None and not isinstance(info["parentIdTag"], str):
            return "parentIdTag is not a string"
        return None

    if action == "BootNotification":
        if payload.get("status") not in ("Accepted", "Pending", "Rejected"):
            return "status is not Accepted/Pending/Rejected"
        if not isinstance(payload.get("interval"), int) or isinstance(payload.get("interval"), bool):
            return "interval is not an integer"
    elif action == "Authorize":
        return tag_info(required=True)
    elif action == "StartTransaction":
        tid = payload.get("transactionId")
        if not isinstance(tid, int) or isinstance(tid, bool):
            return "transactionId is not an integer"
        return tag_info(required=True)
    elif action == "StopTransaction":
        return tag_info(required=False)
    return None
