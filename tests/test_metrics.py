"""GET /metrics: a real station against the loopback CSMS, scraped over HTTP and read back
with prometheus_client's own parser."""

from __future__ import annotations

import aiohttp
import pytest
from prometheus_client import CONTENT_TYPE_LATEST
from prometheus_client.parser import text_string_to_metric_families

from tests.octt.test_core import start_charging

TOKEN = "metrics-test-token"


async def scrape(rt, headers: dict | None = None) -> tuple[int, str, str]:
    async with aiohttp.ClientSession() as session:
        async with session.get(rt.api.url + "/metrics", headers=headers or {}) as resp:
            return resp.status, resp.headers.get("Content-Type", ""), await resp.text()


def samples(text: str) -> dict[tuple[str, tuple], float]:
    """(sample name, sorted labels) -> value, for every sample of every family."""
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def one(values: dict, name: str, **labels: str) -> float:
    key = (name, tuple(sorted(labels.items())))
    assert key in values, f"{name}{labels} not in the scrape: {sorted(k for k in values if k[0].startswith(name))}"
    return values[key]


async def test_metrics_after_a_session_and_a_network_cut(station, csms):
    rt, cp = station.rt, {"station": "CP1"}
    await start_charging(station, csms)
    start = csms.calls("StartTransaction")[-1].payload["meterStart"]
    # Some energy on the register, so the energy counter has something to agree with.
    await station.until(lambda: station.st.evse.energy(1) >= start + 3, timeout=15, what="3 Wh charged")
    await station.tap("TAG1")
    stop = (await csms.wait_for("StopTransaction")).payload["meterStop"]
    await station.until(lambda: len(station.st.queue) == 0 and station.st.active_transactions() == 0,
                        what="StopTransaction delivered")
    await station.offline()
    await station.online()

    status, content_type, text = await scrape(rt)
    assert status == 200, text
    assert content_type == CONTENT_TYPE_LATEST
    values = samples(text)

    assert one(values, "ocpp_twin_transactions_started_total", **cp) == 1
    assert one(values, "ocpp_twin_transactions_stopped_total", **cp) == 1
    assert one(values, "ocpp_twin_transactions_running", **cp) == 0
    assert one(values, "ocpp_twin_station_registered", **cp) == 1
    assert one(values, "ocpp_twin_station_connected", **cp) == 1
    assert one(values, "ocpp_twin_stations_registered") == 1
    assert one(values, "ocpp_twin_stations_connected") == 1
    assert one(values, "ocpp_twin_reconnects_total", **cp) >= 1
    assert one(values, "ocpp_twin_queue_depth", **cp) == 0
    assert one(values, "ocpp_twin_queue_oldest_age_seconds", **cp) == 0
    assert one(values, "ocpp_twin_queue_discarded_messages_total", **cp) == 0
    # meterStart/meterStop are the register rounded to Wh; the register may still move a
    # fraction between the last read of the session and the contactor opening.
    energy = one(values, "ocpp_twin_energy_delivered_wh_total", **cp)
    assert stop - start >= 3 and abs(energy - (stop - start)) <= 1.5, (energy, start, stop)

    for action in ("BootNotification", "StartTransaction", "StopTransaction"):
        count = one(values, "ocpp_twin_call_round_trip_seconds_count", action=action, outcome="result", **cp)
        assert count >= 1, action
        total = one(values, "ocpp_twin_call_round_trip_seconds_sum", action=action, outcome="result", **cp)
        assert 0 < total < 30 * count, (action, total)
        assert one(values, "ocpp_twin_call_round_trip_seconds_bucket", action=action, outcome="result",
                   le="+Inf", **cp) == count
    # No CALLERROR was answered: no such series at all.
    assert not [k for k in values if k[0].startswith("ocpp_twin_call_round_trip") and ("outcome", "error") in k[1]]

    assert one(values, "process_resident_memory_bytes") > 0
    assert one(values, "process_cpu_seconds_total") > 0


async def test_a_queued_message_shows_as_depth_and_age(station, csms):
    """Offline, the StartTransaction waits in the queue: depth 1 and an age that grows."""
    await station.plug(1)
    await station.offline()
    await station.tap("TAG1")
    await station.until(lambda: len(station.st.queue) == 1, what="StartTransaction queued")
    await station.until(lambda: (station.rt.clock() - _oldest(station)).total_seconds() >= 0.3, what="age")
    status, _, text = await scrape(station.rt)
    assert status == 200
    values = samples(text)
    assert one(values, "ocpp_twin_queue_depth", station="CP1") == 1
    assert one(values, "ocpp_twin_queue_oldest_age_seconds", station="CP1") >= 0.3
    assert one(values, "ocpp_twin_station_connected", station="CP1") == 0
    assert one(values, "ocpp_twin_stations_connected") == 0
    # Begun offline: counted when the core begins it, not when the queue drains.
    assert one(values, "ocpp_twin_transactions_started_total", station="CP1") == 1
    assert one(values, "ocpp_twin_transactions_running", station="CP1") == 1
    assert one(values, "ocpp_twin_transactions_stopped_total", station="CP1") == 0


def _oldest(station):
    from twin.core.timeutil import parse_ts

    return parse_ts(station.st.queue.oldest_created_at())


async def test_metrics_need_the_bearer_token_when_one_is_set(make_station):
    station = await make_station(control_token=TOKEN)
    status, _, text = await scrape(station.rt)
    assert status == 401 and "bearer token" in text
    status, _, _ = await scrape(station.rt, {"Authorization": "Bearer not-the-token"})
    assert status == 401
    status, content_type, text = await scrape(station.rt, {"Authorization": f"Bearer {TOKEN}"})
    assert status == 200 and content_type == CONTENT_TYPE_LATEST
    assert one(samples(text), "ocpp_twin_station_registered", station="CP1") == 1


async def test_a_foreign_host_cannot_scrape(station):
    """The DNS-rebinding check of every route: a Host that is not this server gets 421."""
    status, _, _ = await scrape(station.rt, {"Host": "evil.example"})
    assert status == 421


@pytest.mark.parametrize("outcome", ["result", "error"])
async def test_the_link_reports_round_trips_with_their_outcome(csms, outcome):
    """Link(on_round_trip=...) hears of a CALLERROR as of a CALLRESULT, with the action."""
    import asyncio

    from twin.csms.server import CsmsCallError
    from twin.link import Link

    if outcome == "error":
        def refuse(payload):
            raise CsmsCallError("NotSupported", "no heartbeats here")

        csms.on("Heartbeat", refuse)
    seen: list[tuple[str, float, str]] = []
    answered: list = []
    link = Link(csms.url, "CPRT", on_up=lambda: None, on_down=lambda: None, on_call=lambda *a: None,
                on_result=lambda ref, payload: answered.append(("result", ref)),
                on_failed=lambda ref, why: answered.append(("error", ref)),
                on_round_trip=lambda action, seconds, result: seen.append((action, seconds, result)))
    link.start()
    try:
        await csms.wait_connected(timeout=10)
        for _ in range(200):
            if link.connected:
                break
            await asyncio.sleep(0.02)
        link.send_call(7, "Heartbeat", {}, 10)
        for _ in range(500):
            if answered:
                break
            await asyncio.sleep(0.02)
        assert answered == [(outcome, 7)]
        assert len(seen) == 1 and seen[0][0] == "Heartbeat" and seen[0][2] == outcome and 0 <= seen[0][1] < 10
    finally:
        await link.close()
