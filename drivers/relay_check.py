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
"""

from __future__ import annotations

import asyncio
import logging
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


class RelaySupervisor:
    """Polls relays' aux contacts on the event loop and calls ``on_fault(cid, fault_or_None)`` on changes."""

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

    async def start(self) -> None:
        if self._task is None and any(r.feedback() is not None for r in self._relays.values()):
            self._task = asyncio.create_task(self._run(), name="relay-supervisor")

    async def _run(self) -> None:
        while True:
            self.poll_once()
            await asyncio.sleep(self._poll_s)

    async def stop(self) -> None:
        await cancel_and_wait(self._task)
        self._task = None
