"""Network impairment in the link (Runtime.network), measured against a real loopback CSMS."""

from __future__ import annotations

import asyncio
import time

import pytest


async def test_latency_shows_in_the_round_trip(make_station, csms):
    s = await make_station()
    state = await s.rt.network(latency_ms=300, jitter_ms=50, seed=3)
    assert state["latency_ms"] == 300 and state["online"] is True
    mark = csms.mark()
    await csms.call("TriggerMessage", {"requestedMessage": "Heartbeat"})
    trigger = next(m for m in csms.messages[mark:] if m.action == "TriggerMessage" and m.kind == "call")
    beat = await csms.wait_for("Heartbeat", timeout=10, after=mark)
    # The TriggerMessage in and the Heartbeat out are each delayed at least the latency.
    assert beat.t - trigger.t >= 0.6
    await s.rt.network(latency_ms=0, jitter_ms=0)
    mark = csms.mark()
    await csms.call("TriggerMessage", {"requestedMessage": "Heartbeat"})
    await csms.wait_for("Heartbeat", timeout=10, after=mark)


async def test_jitter_keeps_frame_order(make_station, csms):
    s = await make_station()
    await s.rt.network(latency_ms=20, jitter_ms=200, seed=11)
    mark = csms.mark()
    for cid in (0, 1, 2):
        await csms.call("TriggerMessage", {"requestedMessage": "StatusNotification", "connectorId": cid})
    for cid in (0, 1, 2):
        await csms.wait_for("StatusNotification", {"connectorId": cid}, timeout=10, after=mark)
    seen = [m.payload["connectorId"] for m in csms.calls("StatusNotification", after=mark)]
    assert seen == [0, 1, 2]


async def test_drop_rate_loses_frames_without_closing(make_station, csms):
    s = await make_station()
    count = csms.connection_count
    await s.rt.network(drop_rate=1.0, seed=1)
    with pytest.raises(TimeoutError):
        await csms.call("TriggerMessage", {"requestedMessage": "Heartbeat"}, timeout=1.0)
    assert csms.connected and csms.connection_count == count and s.rt.link.connected
    await s.rt.network(drop_rate=0.0)
    assert (await csms.call("TriggerMessage", {"requestedMessage": "Heartbeat"}))["status"] == "Accepted"
    lost = [r for r in s.rt.trace_since(0)["frames"] if r.get("lost")]
    assert lost and lost[0]["dir"] == "in" and lost[0]["frame"][2] == "TriggerMessage"


async def test_half_open_is_found_dead_and_no_transaction_message_is_lost(make_station, csms, caplog):
    s = await make_station(keys={"MessageTimeout": "2"})
    s.rt.link.pong_timeout_s = 1.0
    s.rt.link.ping_interval = 1  # the station's own check, as WebSocketPingInterval = 1
    mark = csms.mark()
    await s.plug(1)
    await s.tap("TAG1")
    await csms.wait_for("StartTransaction", timeout=10, after=mark)
    await s.until(lambda: s.st.txlog.transaction_id(1) is not None)
    tid = s.st.txlog.transaction_id(1)
    count = csms.connection_count
    state = await s.rt.network(half_open=True)
    assert state["half_open"] is True and state["connected"] is True
    mark = csms.mark()
    await s.tap("TAG1")  # stops the transaction: its StopTransaction goes into a dead socket
    await csms.wait_connected(timeout=15, after=count)
    stop = await csms.wait_for("StopTransaction", {"transactionId": tid}, timeout=15, after=mark)
    await s.until(lambda: len(s.st.queue) == 0, timeout=10, what="the queue delivered")
    assert len(csms.calls("StopTransaction", after=mark)) == 1 and stop is not None
    assert "no pong within 1s" in caplog.text  # found by the station's own ping check
    out = [r for r in s.rt.trace_since(0)["frames"]
           if isinstance(r["frame"], list) and r["frame"][0] == 2 and r["frame"][2] == "StopTransaction"]
    assert out[0].get("lost") is True and not out[-1].get("lost")
    assert (await s.rt.network())["half_open"] is False  # the new connection is healthy


async def test_close_code_closes_now_and_the_link_comes_back(make_station, csms):
    s = await make_station()
    old, count = csms._ws, csms.connection_count
    await s.rt.network(close_code=4001)
    await csms.wait_connected(timeout=15, after=count)
    assert old.close_code == 4001
    await s.until(lambda: s.st.online, timeout=10)
    assert (await csms.call("TriggerMessage", {"requestedMessage": "Heartbeat"}))["status"] == "Accepted"


@pytest.mark.parametrize("kwargs, message", [
    ({"latency_ms": -1}, "latency_ms"), ({"jitter_ms": 60001}, "jitter_ms"), ({"drop_rate": 1.5}, "drop_rate"),
    ({"close_code": 1005}, "close_code"), ({"close_code": 999}, "close_code"), ({"half_open": "yes"}, "half_open"),
    ({"seed": 1.5}, "seed"),
])
async def test_network_refuses_values_out_of_range(make_station, kwargs, message):
    s = await make_station()
    with pytest.raises(ValueError, match=message):
        await s.rt.network(**kwargs)
    assert (await s.rt.network(True))["online"] is True  # the old body {"online": b} still works
    await asyncio.sleep(0)


# ---------------------------------------------------------------- pings and pongs
# The liveness check (docs/station-behaviour.md) runs on websocket pings (RFC 6455 §5.5.2):
# an impaired network must impair them as it does OCPP frames, or a slow or dead link would
# look healthy to one side.


async def _csms_ping_rtt(csms, timeout: float = 5.0) -> float:
    """The round trip of one ping the CSMS sends (its websocket's own ping and pong)."""
    pong = await csms._ws.ping()
    return await asyncio.wait_for(pong, timeout)


async def test_latency_delays_the_pong_to_a_csms_ping(make_station, csms):
    s = await make_station()
    assert await _csms_ping_rtt(csms) < 0.2
    await s.rt.network(latency_ms=300, seed=5)
    # The ping reaches the station 300 ms late, and its pong needs 300 ms back.
    assert 0.6 <= await _csms_ping_rtt(csms) < 2.0
    await s.rt.network(latency_ms=0)
    assert await _csms_ping_rtt(csms) < 0.2


async def test_a_round_trip_longer_than_the_pong_timeout_looks_dead_to_the_station(make_station, csms, caplog):
    s = await make_station()
    link = s.rt.link
    link.pong_timeout_s = 1.0
    count = csms.connection_count
    await s.rt.network(latency_ms=200, seed=2)
    link.ping_interval = 0.5  # WebSocketPingInterval, applied to the open connection
    await asyncio.sleep(2.5)  # several keepalive pings, each 0.4 s round trip: alive
    assert csms.connection_count == count and link.connected
    assert "no pong" not in caplog.text
    await s.rt.network(latency_ms=700)  # 1.4 s round trip > 1 s pong timeout
    await csms.wait_connected(timeout=10, after=count)
    assert "no pong within 1s to a keepalive ping" in caplog.text
    await s.rt.network(latency_ms=0)


async def test_half_open_looks_dead_to_both_sides(make_station, csms, caplog):
    """The CSMS's pings go unanswered; the station's own check finds the link dead and
    reconnects, and nothing of the abandoned connection (no close frame, no FIN, no RST)
    reaches the CSMS before the new connection does: it must find the old one dead itself."""
    s = await make_station()
    link = s.rt.link
    link.pong_timeout_s = 1.0
    old, count = csms._ws, csms.connection_count
    closed_at: list[float] = []

    async def watch_old() -> None:
        await old.wait_closed()
        closed_at.append(time.monotonic())

    watcher = asyncio.ensure_future(watch_old())
    await s.rt.network(half_open=True)
    with pytest.raises(TimeoutError):
        await _csms_ping_rtt(csms, timeout=1.5)
    assert not closed_at and link.connected  # nothing noticed yet: no ping check has run
    link.ping_interval = 0.5
    await csms.wait_connected(timeout=10, after=count)
    assert "no pong within 1s to a keepalive ping" in caplog.text
    # Still open on the CSMS's side when the new connection came: it closes the older one
    # itself now (a newer connection replaces it), and no peer answers that close.
    assert not closed_at, "the abandoned connection reached the CSMS as a close"
    watcher.cancel()
    assert await _csms_ping_rtt(csms) < 0.5  # the new connection is healthy
    await link.close()
    assert not link._held  # the held socket is released with the link


async def test_drop_rate_spares_pings_so_the_connection_stays_up(make_station, csms):
    s = await make_station()
    link = s.rt.link
    link.pong_timeout_s = 0.5
    count = csms.connection_count
    await s.rt.network(drop_rate=1.0, seed=4)
    link.ping_interval = 0.3
    await asyncio.sleep(2.0)
    assert csms.connection_count == count and link.connected
    assert await _csms_ping_rtt(csms) < 0.5
    await s.rt.network(drop_rate=0.0)
