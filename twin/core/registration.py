"""Registration with the CSMS: BootNotification, Pending and Rejected, and the heartbeat.

Owns the link state (online or not), the registration state the last
BootNotification.conf gave, when the next BootNotification may go, and when the next
Heartbeat is due. Implements OCPP 1.6 §4.2 (BootNotification: Accepted / Pending /
Rejected, the retry interval, also across reconnects, and what may be sent before
Accepted), §4.6 (Heartbeat) and §5.17 with errata 3.35 (TriggerMessage for
BootNotification).
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any

from twin.core.limits import INT32_MAX
from twin.core.spec import StationSpec
from twin.core.timeutil import parse_ts

log = logging.getLogger("twin.station")

# A CSMS currentTime further off than this is worth a warning (the OS owns the clock).
CLOCK_DISAGREEMENT_S = 60


class Registration(StrEnum):
    """The registration state (§4.2). A StrEnum: compares equal to the OCPP word."""

    NONE = "None"  # no BootNotification.conf yet
    PENDING = "Pending"
    ACCEPTED = "Accepted"
    REJECTED = "Rejected"


class Registrar:
    def __init__(self, spec: StationSpec, heartbeat_interval: int):
        self.spec = spec  # identity and boot retry time, read when used
        self.online = False
        self.state = Registration.NONE
        self.heartbeat_interval = heartbeat_interval
        self.next_boot_at: datetime | None = None
        self.boot_in_flight = False
        self.next_heartbeat_at: datetime | None = None

    # ------------------------------------------------------------------ queries
    def connected(self) -> bool:
        """Online and Accepted: the CSMS may be sent anything."""
        return self.online and self.state is Registration.ACCEPTED

    def may_send(self, force: bool) -> bool:
        """A CALL other than BootNotification may go (§4.2); ``force``: one the CSMS triggered."""
        return self.online and (force or self.state is Registration.ACCEPTED)

    def next_deadlines(self) -> list[datetime | None]:
        # While a BootNotification is unanswered its answer, not a timer, ends the wait.
        times = [self.next_boot_at if self.online and not self.boot_in_flight else None]
        if self.connected():
            times.append(self.next_heartbeat_at)
        return times

    # ------------------------------------------------------------------ link
    def link_up(self, now: datetime) -> None:
        self.online = True
        if self.state is Registration.ACCEPTED:
            return
        # §4.2: after Pending or Rejected the next BootNotification waits for the interval the
        # CSMS gave, also across a reconnect (many CSMSs close the socket after Rejected).
        # Only a first connection, or one whose BootNotification was never answered, boots now.
        if self.next_boot_at is None:
            self.next_boot_at = now

    def link_down(self) -> None:
        # Pending and Rejected stand until the next BootNotification.conf (§4.2): while
        # Rejected, CSMS calls on a new connection are not answered either.
        self.online = False
        self.boot_in_flight = False

    # ------------------------------------------------------------------ BootNotification
    def boot_due(self, now: datetime) -> dict | None:
        """The BootNotification payload if one should go now (it is then in flight)."""
        if not self.online or self.boot_in_flight or self.state is Registration.ACCEPTED:
            return None
        if self.next_boot_at is None or self.next_boot_at > now:
            return None
        self.boot_in_flight = True
        self.next_boot_at = None
        return {k: v for k, v in self.spec.identity.items() if v}

    def trigger_boot(self, now: datetime) -> str:
        """TriggerMessage(BootNotification): the status to answer; on Accepted a
        BootNotification is due now (send it with :meth:`boot_due`)."""
        if self.state is Registration.ACCEPTED:
            return "Rejected"  # errata 3.35
        if not self.boot_in_flight:
            # One already on its way is the triggered message: asking for another now
            # would leave a boot deadline in the past that nothing consumes.
            self.next_boot_at = now
        return "Accepted"

    def boot_answered(self, payload: dict, now: datetime) -> int | None:
        """BootNotification.conf. Returns the heartbeat interval to store when Accepted
        gave one, else None."""
        self.boot_in_flight = False
        status = payload.get("status")
        # A schema-valid but absurd interval (10**12 s) must not overflow the clock arithmetic.
        interval = max(0, min(int(payload.get("interval") or 0), INT32_MAX))
        if status == "Accepted":
            self.state = Registration.ACCEPTED
            self.next_boot_at = None
            if interval > 0:
                self.heartbeat_interval = interval
            self._schedule_heartbeat(now)
            return interval if interval > 0 else None
        # Pending or Rejected: retry after the interval (§4.2); Rejected also stops answering calls.
        self.state = Registration(status) if status in ("Pending", "Rejected") else Registration.NONE
        self.next_boot_at = now + timedelta(seconds=interval if interval > 0 else self.spec.boot_retry_s)
        return None

    def boot_unanswered(self, now: datetime) -> None:
        """A CALLERROR, an unusable reply or no reply: try again after the retry time."""
        self.boot_in_flight = False
        self.next_boot_at = now + timedelta(seconds=self.spec.boot_retry_s)

    # ------------------------------------------------------------------ Heartbeat
    def heartbeat_due(self, now: datetime) -> bool:
        if not (self.connected() and self.next_heartbeat_at and now >= self.next_heartbeat_at):
            return False
        self._schedule_heartbeat(now)
        return True

    def heartbeat_interval_changed(self, interval: int, now: datetime) -> None:
        """ChangeConfiguration(HeartbeatInterval): the next heartbeat counts from now."""
        self.heartbeat_interval = interval
        self._schedule_heartbeat(now)

    def _schedule_heartbeat(self, now: datetime) -> None:
        self.next_heartbeat_at = now + timedelta(seconds=self.heartbeat_interval) if self.heartbeat_interval else None

    # ------------------------------------------------------------------ time
    def shift(self, delta: timedelta) -> None:
        """The wall clock was stepped: interval timers keep the time they had left."""
        if self.next_boot_at is not None:
            self.next_boot_at += delta
        if self.next_heartbeat_at is not None:
            self.next_heartbeat_at += delta


def compare_clock(current_time: Any, now: datetime) -> None:
    """§4.2/§4.6: the CSMS's currentTime SHOULD be used to sync the clock. The station's
    clock belongs to the OS (NTP), so the core reports a disagreement instead of setting it."""
    theirs = parse_ts(current_time) if isinstance(current_time, str) else None
    if theirs is None:
        return
    offset = (theirs - now).total_seconds()
    if abs(offset) > CLOCK_DISAGREEMENT_S:
        log.warning("station clock differs from the CSMS's currentTime by %+.0f s; check NTP", offset)
