"""CALLs the station sends, and what each outstanding one is waiting for.

Owns the reference numbers of outgoing CALLs and, per reference, a :class:`PendingCall`
saying what its answer is for. Whether a CALL may go at all is the registration's rule
(§4.2: nothing but BootNotification before Accepted; in Pending only what the CSMS
triggers), asked through :class:`CallGate`. Also checks a .conf before the core uses it
(:func:`malformed`): a reply the station cannot interpret is a failure to process
(§3.7.1), not an answer.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Protocol

from twin.core.actions import Action, Send
from twin.core.settings import Settings
from twin.core.txqueue import Entry


class CallKind(StrEnum):
    """What an outgoing CALL is, which decides what its answer (or its failure) does."""

    BOOT = "boot"
    TX = "tx"  # a transaction message from the queue (§3.7)
    AUTHORIZE = "authorize"
    STATUS = "status"
    FIRMWARE = "fw"
    DIAGNOSTICS = "diag"
    TRIGGER = "trigger"  # a message sent because of TriggerMessage, answer unused
    HEARTBEAT = "heartbeat"


class AuthorizePurpose(StrEnum):
    """Why an Authorize.req was sent: what its idTagInfo decides."""

    START = "start"  # a card presented for a chosen connector
    REMOTE = "remote"  # RemoteStartTransaction with AuthorizeRemoteTxRequests (§5.11)
    STOP_OR_START = "stop-or-start"  # a card that may stop by parentIdTag, else start (§3.4)


@dataclass
class AuthorizeRequest:
    id_tag: str
    purpose: AuthorizePurpose
    connector: int | None = None
    bound: bool = False  # a remote start that must stay on its connector


@dataclass
class PendingCall:
    kind: CallKind
    action: str
    entry: Entry | None = None  # kind TX: the queue entry being transmitted
    authorize: AuthorizeRequest | None = None  # kind AUTHORIZE


class CallGate(Protocol):
    """The registration's rule for sending (twin.core.registration.Registrar)."""

    def may_send(self, force: bool) -> bool: ...


class Calls:
    def __init__(self, gate: CallGate, settings: Settings):
        self.gate = gate
        self.settings = settings
        self.pending: dict[int, PendingCall] = {}
        self.next_ref = 1

    def _ref(self) -> int:
        ref = self.next_ref
        self.next_ref += 1
        return ref

    def timeout(self) -> float:
        return float(max(1, self.settings.get_int("MessageTimeout")))

    def send(self, action: str, payload: dict, kind: CallKind, *, force: bool = False,
             authorize: AuthorizeRequest | None = None) -> list[Action]:
        """A non-transaction CALL, if the link and the registration allow it (§4.2);
        ``force``: in Pending, a message the CSMS triggered."""
        if not self.gate.may_send(force):
            return []
        ref = self._ref()
        self.pending[ref] = PendingCall(kind, action, authorize=authorize)
        return [Send(ref, action, payload, timeout=self.timeout())]

    def send_transaction_message(self, entry: Entry, payload: dict) -> tuple[int, Send]:
        """A queued transaction message; the queue owner has checked that it may go."""
        ref = self._ref()
        self.pending[ref] = PendingCall(CallKind.TX, entry.action, entry=entry)
        return ref, Send(ref, entry.action, payload, timeout=self.timeout())

    def take(self, ref: int) -> PendingCall | None:
        """The call ``ref`` answered, failed or timed out: it is no longer outstanding."""
        return self.pending.pop(ref, None)

    def take_all(self) -> list[PendingCall]:
        """The link went down: every outstanding call is abandoned."""
        calls = list(self.pending.values())
        self.pending.clear()
        return calls


def malformed(action: str, payload: Any) -> str | None:
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
