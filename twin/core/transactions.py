"""Starting and stopping a transaction, and what follows from either.

Owns no state of its own: it is the one place that knows what each machine does when a
transaction starts or ends, so no machine reaches into another. A start records the
transaction (txlog) with its Transaction.Begin value (sampling), ends the reservation it
uses (§4.8, §5.13), keeps the register (EVSE), binds a RemoteStart TxProfile (§5.11) and
starts periodic sampling. A stop records StopTransaction (§6.49) with its
Transaction.End value, opens the contactor before anything is committed, drops the
TxProfile (it lives as long as its transaction, §3.13.1), and applies a
ChangeAvailability that was Scheduled for it (§5.2); a connector that becomes
Unavailable ends its reservation and the authorization waiting for a cable there
(§5.13). At boot, transactions a power loss interrupted stop with PowerLoss or
HardReset (§5.14, errata 3.36). StartTransaction.conf not Accepted (errata 3.17) stops
or marks the transaction according to StopTransactionOnInvalidId. And the contactor
rule: closed only while a transaction may draw power (SuspendedEVSE otherwise, §4.9).
"""

from __future__ import annotations

import logging
from datetime import datetime

from twin.core.actions import Action, Persist
from twin.core.availability import Availability, AvailabilityChange
from twin.core.evse import Evse
from twin.core.ops import profiles_put
from twin.core.reservation import Reservations
from twin.core.sampling import Sampling
from twin.core.sessions import Sessions
from twin.core.settings import Settings
from twin.core.smart_charging import SmartCharging
from twin.core.timeutil import parse_ts
from twin.core.txlog import TxLog

log = logging.getLogger("twin.station")


class Transactions:
    def __init__(self, *, settings: Settings, txlog: TxLog, evse: Evse, sampling: Sampling, sessions: Sessions,
                 availability: Availability, reservations: Reservations, smart: SmartCharging):
        self.settings = settings
        self.txlog = txlog
        self.evse = evse
        self.sampling = sampling
        self.sessions = sessions
        self.availability = availability
        self.reservations = reservations
        self.smart = smart

    def start(self, cid: int, id_tag: str, info: dict | None, reservation_id: int | None,
              now: datetime) -> list[Action]:
        self.sessions.transaction_started(cid)
        if reservation_id is not None and reservation_id not in self.reservations.items:
            # Authorized while the reservation stood, started after it was cancelled or
            # expired: the transaction no longer ends it, so ST.req must not name it (§4.8).
            log.info("reservation %s ended before the cable came; starting without it", reservation_id)
            reservation_id = None
        meter = self.evse.energy(cid)
        tx, ops = self.txlog.start(cid, id_tag, (info or {}).get("parentIdTag"), meter, reservation_id, now)
        begin = self.sampling.transaction_value(cid, "Transaction.Begin", now)
        if begin:
            self.txlog.keep_for_stop(cid, begin)
        if reservation_id is not None:
            ops += self.reservations.remove(reservation_id)
        ops += self.evse.floor_ops(cid, meter)
        try:
            self.smart.bind_pending_tx_profile(cid, None)
        except Exception:  # noqa: BLE001
            log.exception("binding the remote-start TxProfile failed")
        self.sampling.started(cid, now)
        log.info("transaction %s started on connector %s for %s", tx["local_id"], cid, id_tag, extra={"connector": cid})
        # One commit: the contactor closes only after this is on disk (twin.core.effects).
        return [Persist(ops)]

    def stop(self, cid: int, reason: str, id_tag: str | None, now: datetime, *, when: datetime | None = None,
             meter: float | None = None) -> list[Action]:
        """Stop the transaction on ``cid`` (nothing if none runs there). ``when`` and
        ``meter``: the time and register of a transaction a power loss interrupted."""
        if self.txlog.local_id(cid) is None:
            return []
        when = when or now
        if meter is None:
            meter = max(self.evse.energy(cid), self.txlog.last_meter_wh(cid))
        meter_stop = int(round(meter))
        # Errata 3.14/3.91: Transaction.Begin and .End values are included.
        end = self.sampling.transaction_value(cid, "Transaction.End", when, energy=float(meter_stop))
        _tx, ops = self.txlog.stop(cid, reason, id_tag, meter_stop, when, end, now)
        ops += self.evse.floor_ops(cid, meter_stop)
        self.sessions.transaction_ended(cid, plugged=self.evse.facts[cid].plugged)
        self.sampling.stopped(cid)
        acts = self.evse.transaction_ended(cid)  # the contactor opens before the commit
        acts.append(Persist(ops))
        try:
            self.smart.on_transaction_end(cid)
            acts += self.save_profiles()
        except Exception:  # noqa: BLE001
            log.exception("removing the TxProfile failed")
        return acts + self._apply_scheduled(cid)

    def stop_interrupted(self, reason: str, now: datetime) -> list[Action]:
        """At boot: transactions a power loss or a Hard reset interrupted end with ``reason``
        (TC_032_2, TC_015), at the time and register last persisted."""
        acts: list[Action] = []
        for local_id, tx in self.txlog.interrupted():
            cid = tx["connector_id"]
            if cid not in self.evse.facts:
                continue
            self.txlog.resume(cid, local_id)
            log.warning("transaction %s on connector %s was interrupted; stopping it with reason %s",
                        local_id, cid, reason, extra={"connector": cid})
            # The meter keeps counting across a power loss: its register read at boot is the
            # energy of the transaction (a simulated meter restarts from its persisted register).
            last = float(tx.get("last_meter_wh", tx["meter_start"]))
            meter = max(last, self.evse.energy(cid)) if self.evse.has_energy(cid) else last
            acts += self.stop(cid, reason, None, now, when=parse_ts(tx.get("last_meter_time")) or now, meter=meter)
        return acts

    def stop_all(self, reason: str, now: datetime) -> list[Action]:
        return [a for cid in self.evse.facts for a in self.stop(cid, reason, None, now)]

    def invalidated(self, tx: dict, now: datetime) -> list[Action]:
        """StartTransaction.conf not Accepted (errata 3.17, online too; TC_037_2/3)."""
        cid = tx["connector_id"]
        if self.txlog.local_id(cid) != tx["local_id"]:
            return []
        if self.settings.get_bool("StopTransactionOnInvalidId"):
            return self.stop(cid, "DeAuthorized", None, now)
        return [Persist(self.txlog.mark_invalid(tx["local_id"], self.evse.energy(cid)))]

    def suspended_by_evse(self, cid: int) -> bool:
        """SuspendedEVSE: the id turned out invalid and MaxEnergyOnInvalidId is used up, or the
        smart-charging limit is below what a pilot can offer."""
        if self.txlog.local_id(cid) is None:
            return False
        invalid_at = self.txlog.invalid_energy(cid)
        if invalid_at is not None and (
                self.evse.energy(cid) - invalid_at >= self.settings.get_int("MaxEnergyOnInvalidId")):
            return True
        return self.evse.limited_below_charging(cid)

    def drive_outputs(self) -> list[Action]:
        """The contactor is closed only while a transaction runs, its EV is plugged, nothing
        is faulted and the EVSE does not suspend it; the pilot offers the limit meanwhile."""
        acts: list[Action] = []
        for cid, f in self.evse.facts.items():
            running = self.txlog.local_id(cid) is not None
            energise = (running and f.plugged and not f.ev_disconnected and self.evse.usable(cid)
                        and not self.suspended_by_evse(cid))
            acts += self.evse.drive(cid, energise, running)
        return acts

    # ------------------------------------------------------------------ availability
    def change_availability(self, cid: int, target: str) -> tuple[str, list[Action]]:
        """ChangeAvailability.req (§5.2) and what the change ends."""
        change = self.availability.change(cid, target, busy=set(self.txlog.running))
        acts: list[Action] = [Persist(change.ops)] if change.ops else []
        return change.status, acts + self._ended_by(change)

    def _apply_scheduled(self, cid: int) -> list[Action]:
        change = self.availability.apply_scheduled(cid, busy=set(self.txlog.running))
        if not change.ops:
            return []
        return [Persist(change.ops)] + self._ended_by(change)

    def _ended_by(self, change: AvailabilityChange) -> list[Action]:
        # §5.13: a connector (or the Charge Point: its connector-0 reservations) that becomes
        # Unavailable ends its reservation; an authorization waiting for a cable there lapses.
        held = [self.reservations.for_connector(cid) for cid in change.unavailable]
        if change.station_unavailable:
            held += self.reservations.zero()
        ops = [op for r in held if r is not None for op in self.reservations.remove(r.reservation_id)]
        acts: list[Action] = [Persist(ops)] if ops else []
        for cid in change.unavailable:
            if self.sessions.of(cid).pending is not None:
                acts += self.sessions.drop_pending(cid)
        return acts

    # ------------------------------------------------------------------ charging profiles
    def save_profiles(self) -> list[Action]:
        return [Persist([profiles_put(self.smart.to_json())])]

    def discard_remote_profile(self, cid: int) -> list[Action]:
        """An authorization lapsed: a RemoteStart TxProfile held for it goes too."""
        try:
            self.smart.discard_pending_tx_profile(cid)
        except Exception:  # noqa: BLE001
            log.exception("discarding the held TxProfile failed")
            return []
        return self.save_profiles()
