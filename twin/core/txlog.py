"""The transaction log: transaction records, the transaction-message queue, late binding.

Owns every transaction record (what StartTransaction and StopTransaction say, the meter
values kept for StopTransaction.transactionData, the last register persisted), which
transaction runs on which connector, and the queue of transaction messages
(:class:`~twin.core.txqueue.TxQueue`) with the one message in flight. Implements OCPP
1.6 §3.7 and §3.7.1 (ordered delivery, TransactionMessageAttempts and
TransactionMessageRetryInterval), §4.8 (StartTransaction, reservationId), §4.10 and
§6.49 (StopTransaction), errata 3.14/3.91 (transactionData, Transaction.Begin/End kept
when StopTransactionMaxMeterValues trims) and 3.18 (late binding of transactionId:
StopTransaction and MeterValues take the id StartTransaction.conf returned at send time,
or -1 when that StartTransaction was discarded). A finished transaction whose messages
are all delivered leaves memory (:meth:`TxLog.collect`).
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta
from typing import Callable

from twin.core.actions import Action
from twin.core.calls import Calls
from twin.core.ops import tx_put
from twin.core.settings import Settings
from twin.core.smart_charging import TxInfo
from twin.core.timeutil import parse_ts, ts
from twin.core.txqueue import Entry, TxQueue

log = logging.getLogger("twin.station")

# Queued messages a CALLERROR answers for good: a security event the CSMS received but does
# not implement counts as delivered (WP3 A04; a CSMS without the security extensions).
DELIVERED_ON_ERROR = frozenset({"SecurityEventNotification"})

Learn = Callable[[str, dict, datetime], list[tuple]]  # feeds idTagInfo to the authorization cache


class TxLog:
    def __init__(self, state: dict, settings: Settings):
        self.settings = settings
        self.txs: dict[int, dict] = {int(k): dict(v) for k, v in state.get("transactions", {}).items()}
        self.next_local_id = max([0] + list(self.txs)) + 1
        # Sequence numbers are never reused: the discarded table keeps old ones for diagnostics.
        discarded = state.get("discarded", [])
        used = [r["seq"] for r in discarded if isinstance(r.get("seq"), int)]
        self.queue = TxQueue([Entry.from_record(r) for r in state.get("queue", [])], next_seq=max(used, default=0) + 1)
        self.discarded_count = len(discarded)
        self.in_flight: int | None = None  # ref of the queue entry being transmitted
        self.running: dict[int, int] = {}  # connector id -> local id of its transaction
        self.collect()

    # ------------------------------------------------------------------ queries
    def local_id(self, cid: int) -> int | None:
        return self.running.get(cid)

    def record(self, cid: int) -> dict | None:
        """The record of the transaction running on ``cid``."""
        local_id = self.running.get(cid)
        return self.txs[local_id] if local_id is not None else None

    def transaction_id(self, cid: int) -> int | None:
        tx = self.record(cid)
        return tx.get("transaction_id") if tx else None

    def connector_of(self, transaction_id: int) -> int | None:
        """The connector whose running transaction the CSMS knows as ``transaction_id``."""
        return next((cid for cid, local_id in sorted(self.running.items())
                     if self.txs[local_id].get("transaction_id") == transaction_id), None)

    def interrupted(self) -> list[tuple[int, dict]]:
        """Transactions a power loss or a Hard reset left running, oldest first."""
        return [(local_id, tx) for local_id, tx in sorted(self.txs.items()) if not tx.get("stopped")]

    def tx_info(self) -> dict[int, TxInfo]:
        """What smart charging needs of each running transaction (TxProfile, §3.13.1)."""
        return {cid: TxInfo(transaction_id=self.txs[local_id].get("transaction_id"),
                            start=parse_ts(self.txs[local_id]["start_time"]))
                for cid, local_id in sorted(self.running.items())}

    def next_deadline(self) -> datetime | None:
        return self.queue.next_deadline() if self.in_flight is None else None

    # ------------------------------------------------------------------ records
    def resume(self, cid: int, local_id: int) -> None:
        """At boot: the interrupted transaction ``local_id`` is the one on ``cid`` (to be stopped)."""
        self.running[cid] = local_id

    def start(self, cid: int, id_tag: str, parent_id_tag: str | None, meter: float, reservation_id: int | None,
              now: datetime) -> tuple[dict, list[tuple]]:
        """A new transaction on ``cid``: its record and StartTransaction.req, queued."""
        local_id = self.next_local_id
        self.next_local_id += 1
        tx = {
            "local_id": local_id, "connector_id": cid, "id_tag": id_tag,
            "parent_id_tag": parent_id_tag, "meter_start": int(round(meter)),
            "start_time": ts(now), "reservation_id": reservation_id, "transaction_id": None,
            "start_status": "queued", "stopped": False, "last_meter_wh": int(round(meter)),
            "last_meter_time": ts(now), "data": [],
        }
        self.txs[local_id] = tx
        self.running[cid] = local_id
        payload = {"connectorId": cid, "idTag": id_tag, "meterStart": tx["meter_start"], "timestamp": ts(now)}
        if reservation_id is not None:
            payload["reservationId"] = reservation_id  # §4.8: ST.req MUST carry the reservation it ends
        return tx, [tx_put(local_id, tx)] + self.enqueue("StartTransaction", payload, local_id, now)

    def keep_for_stop(self, cid: int, meter_value: dict) -> None:
        """A meter value for StopTransaction.transactionData (StopTxnSampledData, §9.1.27)."""
        self.txs[self.running[cid]].setdefault("data", []).append(meter_value)

    def stop(self, cid: int, reason: str, id_tag: str | None, meter_stop: int, when: datetime,
             end_value: dict | None, now: datetime) -> tuple[dict, list[tuple]]:
        """End the transaction on ``cid``: its record and StopTransaction.req, queued."""
        tx = self.txs[self.running.pop(cid)]
        data = list(tx.get("data", []))
        if end_value:
            data.append(end_value)
        data = self._trim(data)
        payload = {"meterStop": meter_stop, "timestamp": ts(when), "reason": reason}
        # §6.49: idTag is "the identifier which requested to stop the charging". Only a card
        # presented at the station does; a remote stop, a reset, a power loss or an EV that
        # leaves has none, and sending the start tag would feed the cache a tag nobody showed.
        if id_tag is not None:
            payload["idTag"] = id_tag
        if data:
            payload["transactionData"] = data
        tx.update(stopped=True, stop_time=ts(when), meter_stop=meter_stop, stop_reason=reason,
                  stop_id_tag=id_tag, last_meter_wh=meter_stop)
        log.info("transaction %s on connector %s stopped: %s", tx["local_id"], cid, reason, extra={"connector": cid})
        return tx, [tx_put(tx["local_id"], tx)] + self.enqueue("StopTransaction", payload, tx["local_id"], now)

    def _trim(self, data: list[dict]) -> list[dict]:
        """StopTransactionMaxMeterValues: drop intermediate values, never Begin/End (errata 3.14/3.91)."""
        limit = self.settings.get_int("StopTransactionMaxMeterValues")
        if limit <= 0 or len(data) <= limit:
            return data
        if limit < 2:
            return data[-limit:]
        return [data[0]] + data[len(data) - (limit - 1):]

    def record_meter_values(self, cid: int, payload: dict | None, stop_value: dict | None, energy: float,
                            when: datetime) -> list[tuple]:
        """A sample of the running transaction: MeterValues.req (queued) when ``payload``,
        a value kept for StopTransaction, and the register reached."""
        tx = self.txs[self.running[cid]]
        ops: list[tuple] = []
        if payload:
            ops += self.enqueue("MeterValues", payload, tx["local_id"], when)
        if stop_value:
            tx.setdefault("data", []).append(stop_value)
        tx["last_meter_wh"] = max(int(round(energy)), tx.get("last_meter_wh", 0))
        tx["last_meter_time"] = ts(when)
        return ops + [tx_put(tx["local_id"], tx)]

    def last_meter_wh(self, cid: int) -> int:
        return self.txs[self.running[cid]].get("last_meter_wh", 0)

    def save_energy(self, cid: int, energy: int, now: datetime) -> list[tuple]:
        """The register of the running transaction, persisted so a power loss bills it."""
        tx = self.txs[self.running[cid]]
        tx["last_meter_wh"] = energy
        tx["last_meter_time"] = ts(now)
        return [tx_put(tx["local_id"], tx)]

    def invalid_energy(self, cid: int) -> float | None:
        """The register when the running transaction's id turned out invalid, None if it did not."""
        tx = self.record(cid)
        if tx is None or not tx.get("invalid"):
            return None
        return tx.get("energy_at_invalid", 0.0)

    def mark_invalid(self, local_id: int, energy: float) -> list[tuple]:
        """StartTransaction.conf not Accepted and StopTransactionOnInvalidId false (errata 3.17):
        charging goes on up to MaxEnergyOnInvalidId."""
        tx = self.txs[local_id]
        tx["invalid"] = True
        tx["energy_at_invalid"] = energy
        return [tx_put(local_id, tx)]

    def collect(self) -> None:
        """Transactions that are finished and fully delivered need not stay in memory."""
        # Runs after every confirmation: scan only while some stopped transaction may still
        # be referenced; its entries sit near the head of the FIFO, so the scan usually
        # stops at the first entry (a full scan each time makes draining a backlog quadratic).
        done = {k for k, tx in self.txs.items() if tx.get("stopped")}
        for entry in self.queue.entries:
            if not done:
                return
            done.discard(entry.tx_local_id)
        for local_id in done:
            del self.txs[local_id]

    # ------------------------------------------------------------------ the queue
    def enqueue(self, action: str, payload: dict, tx_local_id: int | None, now: datetime) -> list[tuple]:
        _entry, ops = self.queue.append(action, payload, tx_local_id, ts(now))
        return ops

    def pump(self, now: datetime, connected: bool, calls: Calls) -> list[Action]:
        """Send the head of the queue if it is due (§3.7, §4.2: only once Accepted, one at a time, in order)."""
        if not connected or self.in_flight is not None:
            return []
        entry = self.queue.ready(now)
        if entry is None:
            return []
        self.in_flight, send = calls.send_transaction_message(entry, self._bind(entry))
        self.queue.mark_sent(entry)
        return [send]

    def _bind(self, entry: Entry) -> dict:
        """Late binding of transactionId at send time (errata 3.18: -1 when unknown)."""
        payload = dict(entry.payload)
        if entry.action in ("StopTransaction", "MeterValues") and entry.tx_local_id is not None:
            tx = self.txs.get(entry.tx_local_id) or {}
            tid = tx.get("transaction_id")
            payload["transactionId"] = tid if tid is not None else -1
        return payload

    def confirmed(self, entry: Entry, payload: dict, now: datetime, learn: Learn) -> tuple[list[tuple], dict | None]:
        """The CSMS confirmed ``entry``. Returns the ops and, for a StartTransaction, its
        record (the caller acts on its idTagInfo)."""
        self.in_flight = None
        ops = self.queue.confirm(entry)
        tx = self.txs.get(entry.tx_local_id) if entry.tx_local_id is not None else None
        started = None
        if entry.action == "StartTransaction" and tx is not None:
            tx["transaction_id"] = payload.get("transactionId")
            tx["start_status"] = "confirmed"
            info = payload.get("idTagInfo") or {}
            if info.get("parentIdTag"):
                tx["parent_id_tag"] = info["parentIdTag"]
            ops.append(tx_put(tx["local_id"], tx))
            ops += learn(tx["id_tag"], info, now)
            started = tx
        elif entry.action == "StopTransaction":
            info = payload.get("idTagInfo")
            if info and entry.payload.get("idTag"):
                ops += learn(entry.payload["idTag"], info, now)
            if tx is not None:
                tx["stop_confirmed"] = True
                ops.append(tx_put(tx["local_id"], tx))
        return ops, started

    def failed(self, entry: Entry, reason: str, now: datetime, *, answered: bool = True) -> list[tuple]:
        """A CALLERROR or an unusable reply: a failure to process (§3.7.1)."""
        self.in_flight = None
        if entry.action in DELIVERED_ON_ERROR and answered:
            # The CSMS has it and cannot process it (SteVe answers NotImplemented): retrying
            # could only block the transaction messages behind it.
            log.warning("%s answered with an error (%s); counted as delivered", entry.action, reason,
                        extra={"ocpp_action": entry.action})
            return self.queue.confirm(entry)
        discarded, ops = self.queue.fail(
            entry, now, max_attempts=self.settings.get_int("TransactionMessageAttempts"),
            retry_interval=self.settings.get_int("TransactionMessageRetryInterval"), reason=reason)
        if discarded:
            self.discarded_count += 1
            log.error("discarding %s after %d failed attempts (%s): %s", entry.action, entry.attempts, reason,
                      entry.payload, extra={"ocpp_action": entry.action})
            tx = self.txs.get(entry.tx_local_id) if entry.tx_local_id is not None else None
            if entry.action == "StartTransaction" and tx is not None:
                tx["start_status"] = "discarded"  # its later messages go out with transactionId -1
                ops.append(tx_put(tx["local_id"], tx))
        else:
            log.warning("%s attempt %d failed (%s); retrying at %s", entry.action, entry.attempts, reason,
                        entry.next_attempt_at, extra={"ocpp_action": entry.action})
        return ops

    def unanswered(self, entry: Entry, now: datetime) -> list[tuple]:
        """No answer within MessageTimeout on a live link: sent again, no attempt counted.
        A security event is the exception: a CSMS that ignores the unknown action would
        otherwise hold every transaction message behind it for ever, so its silences count
        as attempts (TransactionMessageAttempts) and it is discarded after the last."""
        if entry.action in DELIVERED_ON_ERROR:
            return self.failed(entry, "no answer", now, answered=False)
        self.in_flight = None
        self.queue.unanswered(entry, now, retry_interval=self.settings.get_int("TransactionMessageRetryInterval"))
        log.warning("%s got no answer in time; sending it again at %s (no attempt counted)", entry.action,
                    entry.next_attempt_at, extra={"ocpp_action": entry.action})
        return []

    def link_lost(self, now: datetime) -> None:
        self.in_flight = None
        self.queue.link_lost(now)

    def link_restored(self, now: datetime) -> None:
        self.queue.link_restored(now)

    def shift(self, delta: timedelta) -> None:
        self.queue.shift(delta)
