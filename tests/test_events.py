"""twin.events.EventHub: fan-out, bounded queues with an overflow marker, coalesced publishing."""

from __future__ import annotations

import asyncio

import pytest

from twin.events import EventHub


async def test_every_subscriber_gets_every_event_in_order() -> None:
    hub = EventHub()
    a, b = hub.subscribe(), hub.subscribe()
    hub.publish("frame", {"n": 1})
    hub.publish("state", {"online": True})
    for sub in (a, b):
        assert await sub.get() == {"type": "frame", "data": {"n": 1}}
        assert await sub.get() == {"type": "state", "data": {"online": True}}
    assert hub.subscribers == 2


async def test_publish_without_subscribers_is_a_no_op_and_late_subscribers_see_only_new_events() -> None:
    hub = EventHub()
    hub.publish("frame", {"n": 0})
    sub = hub.subscribe()
    hub.publish("frame", {"n": 1})
    assert await sub.get() == {"type": "frame", "data": {"n": 1}}


async def test_a_waiting_reader_is_woken_by_publish() -> None:
    hub = EventHub()
    sub = hub.subscribe()
    reader = asyncio.create_task(sub.get())
    await asyncio.sleep(0)
    assert not reader.done()
    hub.publish("frame", {"n": 1})
    assert await asyncio.wait_for(reader, 5) == {"type": "frame", "data": {"n": 1}}


async def test_a_slow_reader_loses_the_oldest_and_reads_an_overflow_marker_first() -> None:
    hub = EventHub(queue_size=3)
    slow, fast = hub.subscribe(), hub.subscribe(maxsize=100)
    for n in range(8):
        hub.publish("frame", {"n": n})
    assert slow.dropped == 5
    assert await slow.get() == {"type": "overflow", "data": {"dropped": 5}}
    assert [(await slow.get())["data"]["n"] for _ in range(3)] == [5, 6, 7]
    assert slow.dropped == 0
    hub.publish("frame", {"n": 8})
    assert await slow.get() == {"type": "frame", "data": {"n": 8}}  # no second marker without a new loss
    assert [(await fast.get())["data"]["n"] for _ in range(8)] == list(range(8))  # others lose nothing


async def test_close_ends_the_iteration_and_leaves_the_hub() -> None:
    hub = EventHub()
    sub = hub.subscribe()
    got = []

    async def read() -> None:
        async for event in sub:
            got.append(event["data"]["n"])

    reader = asyncio.create_task(read())
    hub.publish("frame", {"n": 1})
    await asyncio.sleep(0.01)
    hub.close()
    await asyncio.wait_for(reader, 5)
    assert got == [1] and hub.subscribers == 0 and sub.closed
    assert await sub.get() is None
    hub.publish("frame", {"n": 2})  # nobody left: fine


async def test_the_context_manager_unsubscribes() -> None:
    hub = EventHub()
    async with hub.subscribe() as sub:
        assert hub.subscribers == 1
        hub.publish("x", {})
        assert (await sub.get())["type"] == "x"
    assert hub.subscribers == 0


def test_a_subscription_needs_room() -> None:
    with pytest.raises(ValueError):
        EventHub().subscribe(maxsize=0)


async def test_publish_latest_coalesces_a_burst_into_one_leading_and_one_trailing_event() -> None:
    hub = EventHub()
    sub = hub.subscribe()
    counter = {"n": 0}

    def make() -> dict:
        return {"n": counter["n"]}

    for counter["n"] in range(1, 51):  # a burst of core steps
        hub.publish_latest("state", make, interval_s=0.1)
    assert await sub.get() == {"type": "state", "data": {"n": 1}}  # the first goes out at once
    # The other 49 become one event, built late, so it holds the newest state.
    assert await asyncio.wait_for(sub.get(), 5) == {"type": "state", "data": {"n": 50}}
    await asyncio.sleep(0.25)
    assert sub.dropped == 0 and not sub._queue  # nothing more


async def test_publish_latest_builds_nothing_without_subscribers_and_survives_a_failing_builder(
    caplog: pytest.LogCaptureFixture,
) -> None:
    hub = EventHub()
    calls = []
    hub.publish_latest("state", lambda: calls.append(1) or {}, interval_s=0.1)
    assert calls == []
    sub = hub.subscribe()

    def broken() -> dict:
        raise RuntimeError("snapshot failed")

    hub.publish_latest("state", broken, interval_s=0.1)
    assert "snapshot failed" in caplog.text
    hub.publish_latest("other", lambda: {"ok": True}, interval_s=0.1)  # kinds are throttled separately
    assert await sub.get() == {"type": "other", "data": {"ok": True}}


async def test_close_cancels_a_pending_trailing_publish() -> None:
    hub = EventHub()
    sub = hub.subscribe()
    hub.publish_latest("state", lambda: {"n": 1}, interval_s=0.05)
    hub.publish_latest("state", lambda: {"n": 2}, interval_s=0.05)
    assert (await sub.get())["data"] == {"n": 1}
    hub.close()
    await asyncio.sleep(0.1)
    assert await sub.get() is None
