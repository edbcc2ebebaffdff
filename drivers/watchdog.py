"""Open every contactor if the asyncio event loop stops turning (issue 6).

The station decides when a contactor may be closed, and it lives on the event loop. If
the loop hangs (a blocking call, a deadlock), nothing would ever open a closed contactor,
so a plain thread watches a heartbeat the loop bumps and, when it goes stale, commands all
relays open itself. GPIO writes from another thread are fine for gpiozero (one write
per pin). systemd's WatchdogSec= covers the whole process dying (issue 7); this covers
the process alive but its loop stuck.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from typing import Callable, Mapping

from drivers.asyncutil import cancel_and_wait
from drivers.base import Relay

log = logging.getLogger(__name__)


class LoopWatchdog:
    def __init__(
        self,
        relays: Mapping[int, Relay],
        timeout_s: float,
        *,
        clock: Callable[[], float] = time.monotonic,
        on_trip: Callable[[], None] | None = None,
    ) -> None:
        if timeout_s <= 0:
            raise ValueError(f"loop watchdog timeout must be > 0, got {timeout_s!r}")
        self._relays = dict(relays)
        self._timeout_s = timeout_s
        self._clock = clock
        self._on_trip = on_trip
        self._beat = clock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._task: asyncio.Task[None] | None = None
        self.tripped = False

    def beat(self) -> None:
        self._beat = self._clock()

    def check(self) -> bool:
        """Trip if the heartbeat is stale. Returns True when it tripped now. Runs in the thread."""
        if self.tripped or self._clock() - self._beat < self._timeout_s:
            return False
        self.tripped = True
        log.critical("event loop unresponsive for %.1f s: opening all contactors", self._timeout_s)
        for cid, relay in self._relays.items():
            try:
                relay.set(False)
            except Exception as exc:
                log.critical("connector %s: could not open contactor from the watchdog: %s", cid, exc)
        if self._on_trip is not None:
            self._on_trip()
        return True

    async def start(self) -> None:
        self.beat()
        self._task = asyncio.create_task(self._heartbeat(), name="loop-watchdog-heartbeat")
        self._thread = threading.Thread(target=self._watch, name="loop-watchdog", daemon=True)
        self._thread.start()

    async def _heartbeat(self) -> None:
        while True:
            self.beat()
            if self.tripped:
                # The loop is back; the station will re-close what it wants through its own logic.
                log.warning("event loop responsive again after a watchdog trip")
                self.tripped = False
            await asyncio.sleep(self._timeout_s / 4)

    def _watch(self) -> None:
        while not self._stop.wait(self._timeout_s / 4):
            self.check()

    async def stop(self) -> None:
        self._stop.set()
        await cancel_and_wait(self._task)
        self._task = None
        if self._thread is not None:
            await asyncio.to_thread(self._thread.join, 2.0)
            self._thread = None
