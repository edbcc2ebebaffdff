"""Queue policy for transaction-related messages (OCPP 1.6 §3.7, §3.7.1, §4.2; errata 3.18).

Which messages: StartTransaction, StopTransaction, periodic or clock-aligned
MeterValues, and the security events that must be delivered (SecurityEventNotification,
whitepaper A04.FR.02: "queued with guaranteed delivery", which libocpp too treats as a
transaction message). They are delivered in chronological order, one at a time; a new one
waits until those before it are confirmed or discarded.

Retry (§3.7.1): a CALLERROR or a response timeout while online is a failed attempt.
Before retransmission k the station waits ``TransactionMessageRetryInterval × k``
(k = number of preceding transmissions), and after ``TransactionMessageAttempts``
failures the message is discarded (kept in the store for diagnostics). A lost link is
not a failure to process: going offline pauses both the clock and the attempt count.

Late binding: StopTransaction and MeterValues are stored *without* transactionId and
completed at send time with the id StartTransaction.conf returned — or -1 if that
StartTransaction was finally discarded (errata 3.18). Nothing is serialised with a
placeholder id.

Pure: no clock reads; every method takes ``now``; persistence happens through returned ops.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta

from twin.core.ops import q_del, q_discard, q_put
from twin.core.timeutil import parse_ts

TX_ACTIONS = ("StartTransaction", "StopTransaction", "MeterValues", "SecurityEventNotification")


@dataclass
class Entry:
    seq: int
    action: str
    payload: dict
    tx_local_id: int | None
    created_at: str
    attempts: int = 0  # transmissions that ended in a failure to process
    next_attempt_at: datetime | None = None
    in_flight: bool = field(default=False, compare=False)
    paused_remaining: float | None = field(default=None, compare=False)

    def to_record(self) -> dict:
        return {
            "action": self.action,
            "payload": self.payload,
            "tx_local_id": self.tx_local_id,
            "created_at": self.created_at,
            "attempts": self.attempts,
            "next_attempt_at": self.next_attempt_at.isoformat() if self.next_attempt_at else None,
        }

    @classmethod
    def from_record(cls, rec: dict) -> "Entry":
        return cls(
            seq=rec["seq"],
            action=rec["action"],
            payload=rec["payload"],
            tx_local_id=rec.get("tx_local_id"),
            created_at=rec["created_at"],
            attempts=rec.get("attempts", 0),
            next_attempt_at=parse_ts(rec.get("next_attempt_at")),
        )


class TxQueue:
    def __init__(self, entries: list[Entry] | None = None, next_seq: int = 1):
        self.entries: list[Entry] = sorted(entries or [], key=lambda e: e.seq)
        self.next_seq = max([next_seq] + [e.seq + 1 for e in self.entries])

    def __len__(self) -> int:
        return len(self.entries)

    def append(self, action: str, payload: dict, tx_local_id: int | None, created_at: str) -> tuple[Entry, list[tuple]]:
        entry = Entry(self.next_seq, action, payload, tx_local_id, created_at)
        self.next_seq += 1
        self.entries.append(entry)
        return entry, [q_put(entry.seq, entry.to_record())]

    def head(self) -> Entry | None:
        return self.entries[0] if self.entries else None

    def ready(self, now: datetime) -> Entry | None:
        """The entry to transmit now, if any (the caller checks the link and registration)."""
        head = self.head()
        if head is None or head.in_flight:
            return None
        if head.next_attempt_at is not None and head.next_attempt_at > now:
            return None
        return head

    def next_deadline(self) -> datetime | None:
        head = self.head()
        if head is None or head.in_flight:
            return None
        return head.next_attempt_at

    def mark_sent(self, entry: Entry) -> None:
        entry.in_flight = True

    def confirm(self, entry: Entry) -> list[tuple]:
        self.entries.remove(entry)
        return [q_del(entry.seq)]

    def fail(self, entry: Entry, now: datetime, *, max_attempts: int, retry_interval: int,
             reason: str) -> tuple[bool, list[tuple]]:
        """A failure to process (CALLERROR or response timeout). Returns (discarded, ops)."""
        entry.in_flight = False
        entry.attempts += 1
        # TransactionMessageAttempts counts transmissions; 0 would mean "never retry"
        # and is treated as 1 transmission.
        if entry.attempts >= max(1, max_attempts):
            self.entries.remove(entry)
            # Record the final attempt count first: the discarded copy is kept for diagnostics.
            return True, [q_put(entry.seq, entry.to_record()), q_discard(entry.seq, reason)]
        entry.next_attempt_at = now + timedelta(seconds=retry_interval * entry.attempts)
        return False, [q_put(entry.seq, entry.to_record())]

    def unanswered(self, entry: Entry, now: datetime, *, retry_interval: int) -> None:
        """No answer on a link that is still alive: not a failure to process (§3.7.1 counts
        CALLERRORs), so no attempt is counted; send it again after the retry interval."""
        entry.in_flight = False
        entry.next_attempt_at = now + timedelta(seconds=max(1, retry_interval))

    def shift(self, delta: timedelta) -> None:
        """The wall clock was stepped: retry times keep the wait they had left."""
        for entry in self.entries:
            if entry.next_attempt_at is not None:
                entry.next_attempt_at += delta

    def link_lost(self, now: datetime) -> None:
        """Offline pauses the clock and the attempt count (a lost link is not a failure to process)."""
        for entry in self.entries:
            entry.in_flight = False
            if entry.next_attempt_at is not None:
                entry.paused_remaining = max(0.0, (entry.next_attempt_at - now).total_seconds())

    def link_restored(self, now: datetime) -> None:
        for entry in self.entries:
            if entry.paused_remaining is not None:
                entry.next_attempt_at = now + timedelta(seconds=entry.paused_remaining)
                entry.paused_remaining = None

    def oldest_created_at(self) -> str | None:
        head = self.head()
        return head.created_at if head else None
