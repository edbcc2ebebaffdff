"""The event-loop watchdog opens every contactor when the loop stops turning."""

from __future__ import annotations

import asyncio
import time

from drivers.sim import SimRelay
from drivers.watchdog import LoopWatchdog
from tests.drivers.conftest import until


def test_check_trips_once_when_the_heartbeat_is_stale():
    now = [0.0]
    relays = {1: SimRelay(), 2: SimRelay()}
    for r in relays.values():
        r.set(True)
    trips = []
    wd = LoopWatchdog(relays, 2.0, clock=lambda: now[0], on_trip=lambda: trips.append(now[0]))
    now[0] = 1.9
    assert wd.check() is False and relays[1].commanded
    now[0] = 2.1
    assert wd.check() is True
    assert not relays[1].commanded and not relays[2].commanded
    assert wd.check() is False and trips == [2.1]


async def test_a_blocked_loop_opens_the_contactors_from_the_watchdog_thread():
    relay = SimRelay()
    relay.set(True)
    loop = asyncio.get_running_loop()
    trips = []
    wd = LoopWatchdog({1: relay}, 0.2, on_trip=lambda: loop.call_soon_threadsafe(trips.append, "tripped"))
    await wd.start()
    time.sleep(1.0)  # deliberately block the event loop, like a hung station would
    assert relay.commanded is False  # opened by the thread while the loop was stuck
    await until(lambda: trips == ["tripped"], what="the trip to reach the loop")
    await until(lambda: not wd.tripped, what="the heartbeat to re-arm")
    await wd.stop()
