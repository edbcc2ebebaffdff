"""Contactor feedback supervision: compare the auxiliary contact with the coil.

``FeedbackCheck`` is pure (``now`` is a monotonic float passed in). ``RelaySupervisor``
polls every relay that has an aux contact and reports changes through a callback on the
event loop. Works for any ``Relay`` backend (sim or gpiozero), so the same rules are
tested once.

Rules (after OpenEVSE's stuck-relay check and Tinkerforge WARP's contactor_check, see
hardware-and-ops.md section 7):
* after every command the contact gets ``timeout_s`` to follow (contactors settle in
  ~100-250 ms); only a mismatch that lasts that long counts;
* aux closed while the coil is off = **welded**. Latched: a welded contactor needs a
  person, so only ``reset()`` (service / hard reset) clears it;
* aux open while the coil is on = **failed to close**. Clears by itself once the
  contact agrees again (e.g. after the station opens the coil).
Both are reported as OCPP ChargePointErrorCode PowerSwitchFailure (spec 7.6).

A relay backend whose coil and contact change only through calls to it (the simulated
one) may offer ``watch(on_change) -> unwatch``: the supervisor then samples it on each
change, and once more when a mismatch has lasted ``timeout_s``, instead of polling it four
times a second. The rules and the moment a fault is reported are the same; an idle station
has no supervision timer at all (a fleet of a thousand simulated stations in one process
would otherwise run 4,000 timers a second for nothing). Relays without ``watch`` (GPIO: the
contact is a real input that can change by itself) are polled every ``poll_s``.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from typing import Callable, Mapping

from drivers.asyncutil import cancel_and_wait
from drivers.base import Relay, RelayFault

log = logging.getLogger(__name__)

DEFAULT_FEEDBACK_TIMEOUT_S = 0.5
# The aux contact is sampled 4 times a second, as Tinkerforge WARP evaluates its
# contactor check every 250 ms: a weld is still caught well within the feedback
# timeout's order of magnitude, and an idle station stays near 0 % CPU.
DEFAULT_POLL_S = 0.25

WELDED_INFO = "Contactor welded: aux closed while coil off"  # <= 50 chars (CiString50)
NOT_CLOSED_INFO = "Contactor did not close: aux open, coil on"


def welded_fault(connector_id: int) -> RelayFault:
    return RelayFault(connector_id, "welded", WELDED_INFO, vendor_error_code="ContactorWelded")


def not_closed_fault(connector_id: int) -> RelayFault:
    return RelayFault(connector_id, "failed_to_close", NOT_CLOSED_INFO, vendor_error_code="ContactorNotClosed")


class FeedbackCheck:
    """One relay's supervision state. Pure."""

    def __init__(self, connector_id: int, timeout_s: float = DEFAULT_FEEDBACK_TIMEOUT_S) -> None:
        self.connector_id = connector_id
        self.timeout_s = timeout_s
        self.fault: RelayFault | None = None
        self._last_commanded: bool | None = None
        self._mismatch_since: float | None = None

    def observe(self, commanded: bool, feedback: bool | None, now: float) -> RelayFault | None:
        """Feed one sample; returns the current fault (or None)."""
        if feedback is None:  # no aux contact wired: nothing to supervise
            return self.fault
        if commanded != self._last_commanded:
            # A new command restarts the settle time; a latched weld stays latched.
            self._last_commanded = commanded
            self._mismatch_since = None
            if self.fault is not None and self.fault.kind == "failed_to_close":
                self.fault = None
        if feedback == commanded:
            self._mismatch_since = None
            if self.fault is not None and self.fault.kind == "failed_to_close":
                self.fault = None
            return self.fault
        if self._mismatch_since is None:
            self._mismatch_since = now
        if now - self._mismatch_since >= self.timeout_s and self.fault is None:
            self.fault = welded_fault(self.connector_id) if feedback else not_closed_fault(self.connector_id)
        return self.fault

    def reset(self) -> None:
        """Clear a latched fault (after a person has inspected the contactor)."""
        self.fault = None
        self._mismatch_since = None

    def due(self) -> float | None:
        """When a mismatch seen so far becomes a fault if it lasts (the time ``observe``
        must be fed again at), or None when nothing is settling."""
        if self._mismatch_since is None or self.fault is not None:
            return None
        return self._mismatch_since + self.timeout_s


class RelaySupervisor:
    """Supervises relays' aux contacts on the event loop and calls ``on_fault(cid, fault_or_None)``
    on changes: polled every ``poll_s``, or, for relays that offer ``watch``, sampled when
    they change and when a settling mismatch is due."""

    # A timer may fire a hair before its time; sampling this much later keeps one due
    # check from finding the mismatch a nanosecond short of ``timeout_s`` and re-arming.
    DUE_SLACK_S = 0.001

    def __init__(
        self,
        relays: Mapping[int, Relay],
        on_fault: Callable[[int, RelayFault | None], None],
        *,
        timeout_s: float = DEFAULT_FEEDBACK_TIMEOUT_S,
        poll_s: float = DEFAULT_POLL_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._relays = dict(relays)
        self._on_fault = on_fault
        self._poll_s = poll_s
        self._clock = clock
        self._checks = {cid: FeedbackCheck(cid, timeout_s) for cid in self._relays}
        self._task: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread: int | None = None
        self._unwatch: list[Callable[[], None]] = []
        self._sample_pending = False  # a sample is queued on the loop (changes coalesce into one)
        self._due: asyncio.TimerHandle | None = None  # the next due check of a settling mismatch

    @property
    def faults(self) -> dict[int, RelayFault]:
        return {cid: c.fault for cid, c in self._checks.items() if c.fault is not None}

    def poll_once(self) -> None:
        now = self._clock()
        for cid, relay in self._relays.items():
            check = self._checks[cid]
            before = check.fault
            try:
                fb = relay.feedback()
            except Exception as exc:  # a flaky input must not kill supervision of the others
                log.error("relay %s: reading the aux contact failed: %s", cid, exc)
                continue
            after = check.observe(relay.commanded, fb, now)
            if after != before:
                if after is not None:
                    log.error("connector %s: %s", cid, after.info)
                else:
                    log.warning("connector %s: contactor feedback agrees again", cid)
                self._notify(cid, after)

    def _notify(self, cid: int, fault: RelayFault | None) -> None:
        try:
            self._on_fault(cid, fault)
        except Exception:  # the station's handler failing must not stop the supervision loop
            log.exception("relay fault handler failed for connector %s", cid)

    def reset(self, connector_id: int) -> None:
        check = self._checks.get(connector_id)
        if check is not None and check.fault is not None:
            check.reset()
            self._notify(connector_id, None)
            self._changed()  # the contact may still disagree: a new settle time starts now

    async def start(self) -> None:
        if self._task is not None or self._unwatch:
            return
        supervised = {cid: r for cid, r in self._relays.items() if r.feedback() is not None}
        if not supervised:
            return
        self._loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()
        polled = False
        for relay in supervised.values():
            watch = getattr(relay, "watch", None)
            if callable(watch):
                self._unwatch.append(watch(self._changed))
            else:
                polled = True
        if polled:
            self._task = asyncio.create_task(self._run(), name="relay-supervisor")
        else:
            self._sample()  # the state the relays start in (a contact welded before the start)

    async def _run(self) -> None:
        while True:
            self._sample()
            await asyncio.sleep(self._poll_s)

    def _changed(self) -> None:
        """A watched relay changed (in whatever thread changed it): sample it on the loop."""
        loop = self._loop
        if loop is None or self._sample_pending or loop.is_closed():
            return
        self._sample_pending = True
        if threading.get_ident() == self._loop_thread:
            loop.call_soon(self._sample)
        else:  # a loop watchdog opening every contactor from its thread
            loop.call_soon_threadsafe(self._sample)

    def _sample(self) -> None:
        self._sample_pending = False
        if self._due is not None:
            self._due.cancel()
            self._due = None
        if self._loop is None:
            return  # stopped: a sample queued before the stop reports nothing
        self.poll_once()
        if self._task is not None:
            return  # polled: the next poll comes anyway
        due = [d for d in (c.due() for c in self._checks.values()) if d is not None]
        if due:
            delay = max(0.0, min(due) - self._clock()) + self.DUE_SLACK_S
            self._due = self._loop.call_later(delay, self._sample)

    async def stop(self) -> None:
        for unwatch in self._unwatch:
            unwatch()
        self._unwatch = []
        if self._due is not None:
            self._due.cancel()
            self._due = None
        self._loop = None
        await cancel_and_wait(self._task)
        self._task = None
