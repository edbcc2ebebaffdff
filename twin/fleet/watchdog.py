"""One event-loop watchdog for the whole fleet process.

A single twin runs drivers.watchdog.LoopWatchdog: a thread that opens every contactor when
the loop stops turning. In a fleet every member shares one loop, so one watchdog covers them
all; a thread per member would be a thousand threads waking four times per timeout to watch
the same loop. This one, when the loop is stale, opens every member's contactors from its
thread (the loop cannot), and once the loop turns again tells each member, as the single
twin's watchdog does (Runtime._on_watchdog_trip: the core resyncs its outputs).
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable, Iterable

log = logging.getLogger("twin.fleet.watchdog")


class FleetWatchdog:
    def __init__(self, members: Callable[[], Iterable[object]], timeout_s: float = 5.0):
        self._members = members  # the running FleetMembers, read from the thread at a trip
        self.timeout_s = timeout_s
        self._beat = time.monotonic()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._task: asyncio.Task | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.tripped = False
        self.trips = 0

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._beat = time.monotonic()
        self._task = asyncio.create_task(self._heartbeat(), name="fleet-loop-watchdog")
        self._thread = threading.Thread(target=self._watch, name="fleet-loop-watchdog", daemon=True)
        self._thread.start()

    async def stop(self) -> None:
        self._stop.set()
        if self._task is not None:
            self._task.cancel()
        if self._thread is not None:
            await asyncio.to_thread(self._thread.join, 2.0)

    async def _heartbeat(self) -> None:
        while True:
            self._beat = time.monotonic()
            if self.tripped:
                self.tripped = False
                log.warning("event loop responsive again after a watchdog trip")
            await asyncio.sleep(self.timeout_s / 4)

    def _watch(self) -> None:
        while not self._stop.wait(self.timeout_s / 4):
            if self.tripped or time.monotonic() - self._beat < self.timeout_s:
                continue
            self.tripped = True
            self.trips += 1
            members = list(self._members())
            log.critical("event loop unresponsive for %.1f s: opening the contactors of %d stations",
                         self.timeout_s, len(members))
            for rt in members:
                drivers = getattr(rt, "drivers", None)
                if drivers is not None:
                    drivers.open_all_relays()  # sync, thread-safe per relay (drivers.watchdog)
            loop = self._loop
            if loop is not None and not loop.is_closed():
                for rt in members:
                    if getattr(rt, "actor", None) is not None:  # one still starting has no core to resync
                        loop.call_soon_threadsafe(rt._on_watchdog_trip)
