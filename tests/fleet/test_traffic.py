"""The fleet's automatic traffic (twin.fleet.traffic): seeded Poisson sessions on every member
against the loopback CSMS, driven through the fleet's control API over HTTP."""

from __future__ import annotations

import argparse
import asyncio
import itertools
import logging
import signal
import statistics
from collections import Counter

import aiohttp
import pytest

from tests.conftest import PYTHON, twin_process_env
from twin.config import load_config
from twin.fleet import Fleet
from twin.fleet.api import FleetApi
from twin.fleet.loopback import LoopbackCsms
from twin.fleet.traffic import (
    DEFAULT_TAGS, DURATION_CLIP, MAX_SESSIONS_PER_HOUR, MEAN_DURATION_RANGE_S, default_mean_duration_s, schedule,
)

N = 4
IDS = [f"P{i:04d}" for i in range(1, N + 1)]
RATE = 3600.0  # one arrival a second per station
MEAN_S = 1.0


def first(seed: int, station: str, n: int = 40, rate: float = RATE, mean: float = MEAN_S, pool: int = 8):
    return list(itertools.islice(schedule(seed, station, rate, mean, pool), n))


# ---------------------------------------------------------------------------- the schedule itself
def test_the_same_seed_gives_the_same_schedule_per_station():
    a = first(7, "P0001")
    assert a == first(7, "P0001")  # a pure function of (seed, station, rate, mean, pool)
    assert a != first(8, "P0001")
    assert a != first(7, "P0002")  # each station its own stream, not the fleet's one shifted
    assert [x.n for x in a] == list(range(40))
    assert all(b.at_s > x.at_s for x, b in zip(a, a[1:]))


def test_arrivals_are_poisson_at_the_rate_and_durations_bounded_around_the_mean():
    arrivals = first(1, "P0001", n=4000, rate=60.0, mean=300.0, pool=5)
    gaps = [b.at_s - a.at_s for a, b in zip(arrivals, arrivals[1:])]
    # Exponential gaps of mean 60 s (60 an hour): mean and standard deviation both 60 s.
    assert 57 < statistics.mean(gaps) < 63 and 55 < statistics.stdev(gaps) < 65
    durations = [a.duration_s for a in arrivals]
    assert min(durations) >= 300.0 * DURATION_CLIP[0] and max(durations) <= 300.0 * DURATION_CLIP[1]
    assert 285 < statistics.mean(durations) < 315  # lognormal with that mean, barely clipped
    assert statistics.median(durations) < statistics.mean(durations)  # right-skewed, as session lengths are
    assert set(Counter(a.tag for a in arrivals)) == set(range(5))
    assert list(schedule(1, "P0001", 0.0, 300.0, 5)) == []
    assert default_mean_duration_s(1.0) == 1800.0 and default_mean_duration_s(720.0) == 2.5  # half the gap
    with pytest.raises(ValueError, match="sessions_per_hour"):
        next(schedule(1, "P0001", -1.0, 300.0, 5))


# ---------------------------------------------------------------------------- a fleet with traffic
class Env:
    def __init__(self, csms: LoopbackCsms, fleet: Fleet, api: FleetApi, http: aiohttp.ClientSession):
        self.csms, self.fleet, self.api, self.http = csms, fleet, api, http

    async def get(self, path: str) -> tuple[int, dict]:
        async with self.http.get(self.api.url + path) as resp:
            return resp.status, await resp.json()

    async def post(self, path: str, body: object) -> tuple[int, dict]:
        async with self.http.post(self.api.url + path, json=body) as resp:
            return resp.status, await resp.json()

    async def until(self, check, timeout: float = 20.0) -> None:
        async with asyncio.timeout(timeout):
            while not check():
                await asyncio.sleep(0.05)

    def tx(self, action: str, station: str | None = None) -> list[tuple[str, dict]]:
        return [(cp, p) for cp, a, p in self.csms.records if a == action and (station is None or cp == station)]

    def idle(self) -> bool:
        return all(self.fleet.member(i) is not None and all(
            c["status"] == "Available" and not c["plugged"] for c in self.fleet.member(i).state()["connectors"])
            for i in IDS)


@pytest.fixture
async def env(tmp_path):
    async with LoopbackCsms(record=True) as csms:
        blueprint = load_config(None, {"csms_url": csms.url, "data_dir": tmp_path / "fleet"})
        fleet = Fleet(blueprint, N, data_dir=tmp_path / "fleet")
        api = FleetApi.from_blueprint(fleet, blueprint, port=0)
        await api.start()
        await fleet.start()
        async with aiohttp.ClientSession() as http:
            e = Env(csms, fleet, api, http)
            try:
                await e.until(lambda: fleet.registered() == N)
                yield e
            finally:
                await fleet.stop()
                await api.stop()


async def test_sessions_happen_on_every_station_and_rate_0_stops_them(env):
    status, body = await env.get("/api/stations")
    assert status == 200 and body["traffic"]["running"] is False and body["traffic"]["sessions"]["started"] == 0
    status, t = await env.post("/api/fleet/traffic", {"sessions_per_hour": RATE, "seed": 42, "mean_duration_s": MEAN_S})
    assert status == 200, t
    assert t["running"] is True and t["sessions_per_hour"] == RATE and t["seed"] == 42 and t["mean_duration_s"] == MEAN_S

    def done() -> bool:  # every station has had two whole sessions at the CSMS
        return all(len(env.tx("StopTransaction", i)) >= 2 for i in IDS)

    await env.until(done, timeout=30)
    status, t = await env.post("/api/fleet/traffic", {"sessions_per_hour": 0})
    assert status == 200 and t["running"] is False
    await env.until(lambda: env.idle() and env.fleet.traffic.snapshot()["sessions"]["active"] == 0)
    starts = len(env.tx("StartTransaction"))
    await asyncio.sleep(2.5)  # at 1 a second per station: 10 arrivals, were it still running
    assert len(env.tx("StartTransaction")) == starts and env.idle()

    _, body = await env.get("/api/stations")
    s = body["traffic"]["sessions"]
    assert s["started"] == starts and s["active"] == 0 and s["failed"] == 0, body["traffic"]
    assert s["completed"] == starts  # rate 0 ended the ones under way: stopped, then unplugged
    for i in IDS:
        begun, ended = env.tx("StartTransaction", i), env.tx("StopTransaction", i)
        assert len(begun) == len(ended) >= 2
        assert {p["idTag"] for _cp, p in begun} <= set(DEFAULT_TAGS)
        # The card that started a session stops it: reason Local (OCPP 1.6 §3.4), not a reboot or unplug.
        assert {p["reason"] for _cp, p in ended} == {"Local"}
        # Each session charged on its own connector with its own card: never two at once with one tag.
        assert {p["connectorId"] for _cp, p in begun} <= {1, 2}


async def test_the_traffic_starts_what_the_schedule_draws(env):
    await env.post("/api/fleet/traffic", {"sessions_per_hour": 60.0, "seed": 3, "mean_duration_s": 10})
    heap = sorted(env.fleet.traffic._heap)
    t0 = env.fleet.traffic._t0
    # One heap entry per station (one scheduler, no timer per station), at the schedule's first arrival.
    assert sorted(sid for _d, _s, kind, sid, _i in heap if kind == "arrive") == IDS
    for due, _seq, _kind, sid, (_epoch, arrival) in heap:
        expected = first(3, sid, n=1, rate=60.0, mean=10.0, pool=len(DEFAULT_TAGS))[0]
        assert arrival == expected and due == pytest.approx(t0 + expected.at_s)
    await env.post("/api/fleet/traffic", {"sessions_per_hour": 0})
    assert not [e for e in env.fleet.traffic._heap if e[2] == "arrive"]


async def test_bad_bodies_are_400_and_the_route_is_documented(env):
    for body in [{}, {"sessions_per_hour": -1}, {"sessions_per_hour": 1e9}, {"sessions_per_hour": "10"},
                 {"sessions_per_hour": True}, {"sessions_per_hour": 10, "seed": -1},
                 {"sessions_per_hour": 10, "seed": 1.5}, {"sessions_per_hour": 10, "mean_duration_s": 0},
                 {"sessions_per_hour": 10, "tags": []}, {"sessions_per_hour": 10, "tags": "A,B"},
                 {"sessions_per_hour": 10, "tags": ["A" * 21]}, {"sessions_per_hour": 10, "tags": ["A", "A"]},
                 {"sessions_per_hour": 10, "tags": [7]}, {"sessions_per_hour": 10, "speed": 1}, [10]]:
        status, answer = await env.post("/api/fleet/traffic", body)
        assert status == 400 and answer["error"], (body, answer)
    assert env.fleet.traffic.rate == 0 and env.fleet.traffic._task is None  # nothing was started
    status, doc = await env.get("/api/openapi.json")
    op = doc["paths"]["/api/fleet/traffic"]["post"]
    schema = op["requestBody"]["content"]["application/json"]["schema"]
    assert schema["required"] == ["sessions_per_hour"] and schema["additionalProperties"] is False
    assert set(schema["properties"]) == {"sessions_per_hour", "seed", "mean_duration_s", "tags"}
    assert "400" in op["responses"]


async def test_custom_tags_are_the_ones_presented(env):
    await env.post("/api/fleet/traffic", {"sessions_per_hour": RATE, "seed": 5, "mean_duration_s": MEAN_S,
                                          "tags": ["CARD-A", "CARD-B", "CARD-C"]})
    await env.until(lambda: len(env.tx("StopTransaction")) >= 6, timeout=30)
    await env.post("/api/fleet/traffic", {"sessions_per_hour": 0})
    assert {p["idTag"] for _cp, p in env.tx("StartTransaction")} <= {"CARD-A", "CARD-B", "CARD-C"}


async def test_a_reboot_under_traffic_does_not_stop_the_scheduler(env):
    await env.post("/api/fleet/traffic", {"sessions_per_hour": RATE, "seed": 11, "mean_duration_s": 2.0})
    await env.until(lambda: env.fleet.traffic.counts["started"] >= N, timeout=30)
    status, _ = await env.post("/api/fleet/reboot", {"rolling": False})  # a boot storm in the middle of sessions
    assert status == 200
    await env.until(lambda: env.fleet.reboot_progress.get("finished") and env.fleet.registered() == N
                    and all(s.runs == 2 for s in env.fleet.slots.values()), timeout=30)
    after_reboot = env.fleet.traffic.counts["started"]
    starts = len(env.tx("StartTransaction"))
    # The scheduler is alive and keeps starting sessions on the rebooted members.
    await env.until(lambda: env.fleet.traffic.counts["started"] >= after_reboot + N
                    and len(env.tx("StartTransaction")) > starts, timeout=30)
    assert not env.fleet.traffic._task.done()
    await env.post("/api/fleet/traffic", {"sessions_per_hour": 0})
    await env.until(lambda: env.idle() and env.fleet.traffic.snapshot()["sessions"]["active"] == 0)
    t = env.fleet.traffic.snapshot()
    # Sessions the reboot cut short count as failed ("interrupted"), the members were skipped while down.
    assert t["sessions"]["failed"] == t["failures"].get("interrupted", 0), t
    assert t["sessions"]["completed"] + t["sessions"]["failed"] == t["sessions"]["started"] + t["failures"].get(
        "plug", 0) + t["failures"].get("tap", 0), t
    reasons = Counter(p["reason"] for _cp, p in env.tx("StopTransaction"))
    assert set(reasons) <= {"Local", "Reboot"}, reasons
    for i in IDS:  # every start has its stop: nothing the reboot interrupted was left open
        assert len(env.tx("StartTransaction", i)) == len(env.tx("StopTransaction", i))


async def test_a_member_whose_reader_fails_is_counted_logged_once_and_the_rest_go_on(env, caplog):
    broken = env.fleet.member("P0002")

    async def reader_fails(id_tag: str) -> dict:  # a member failing in a way the sim cannot: its reader raises
        raise RuntimeError("reader unplugged")

    broken.rfid = reader_fails
    caplog.set_level(logging.WARNING, logger="twin.fleet.traffic")
    await env.post("/api/fleet/traffic", {"sessions_per_hour": RATE, "seed": 9, "mean_duration_s": MEAN_S})
    await env.until(lambda: env.fleet.traffic.failures["tap"] >= 3
                    and all(len(env.tx("StopTransaction", i)) >= 1 for i in IDS if i != "P0002"), timeout=30)
    assert not env.fleet.traffic._task.done()
    assert not env.tx("StartTransaction", "P0002")
    logged = [r for r in caplog.records if "reader unplugged" in r.getMessage()]
    assert len(logged) == 1, [r.getMessage() for r in logged]
    _, body = await env.get("/api/stations")
    assert body["traffic"]["failures"]["tap"] >= 3
    await env.post("/api/fleet/traffic", {"sessions_per_hour": 0})
    # Its cars are still unplugged at the end of their sessions: the connectors are free again.
    await env.until(env.idle)


def test_cli_refuses_a_bad_traffic_rate(tmp_path, capsys):
    from twin.cli import main

    base = ["fleet", "--count", "2", "--csms", "ws://127.0.0.1:9/ocpp", "--data-dir", str(tmp_path / "f"),
            "--control", "127.0.0.1:9"]
    assert main(base + ["--traffic", "-1"]) == 2
    assert "sessions_per_hour" in capsys.readouterr().err
    assert main(base + ["--traffic", "10", "--traffic-tags", "A,A"]) == 2
    assert main(base + ["--traffic", "10", "--traffic-duration", "0"]) == 2
    assert not (tmp_path / "f").exists()


async def test_a_session_ends_on_time_though_the_next_arrival_is_far(env):
    # A seed under which P0001 gets one short session in the first seconds and nothing more
    # for a long while, and no other station an arrival meanwhile: the end of that session is
    # then the scheduler's earliest entry, pushed while it sleeps until a much later one.
    rate, mean = 60.0, 1.0

    def fits(seed: int) -> bool:
        a, b = first(seed, "P0001", n=2, rate=rate, mean=mean)
        others = all(first(seed, i, n=1, rate=rate, mean=mean)[0].at_s > 40 for i in IDS[1:])
        return a.at_s < 2.0 and b.at_s > 40 and others

    seed = next(s for s in range(20_000) if fits(s))
    arrival = first(seed, "P0001", n=1, rate=rate, mean=mean)[0]
    await env.post("/api/fleet/traffic", {"sessions_per_hour": rate, "seed": seed, "mean_duration_s": mean})
    await env.until(lambda: env.tx("StopTransaction", "P0001") and env.fleet.traffic.counts["completed"] == 1,
                    timeout=arrival.at_s + arrival.duration_s + 8)
    assert env.fleet.traffic.counts["started"] == 1 and not env.tx("StartTransaction", "P0002")


# ---------------------------------------------------------------------------- refusals leave the traffic as it was
async def test_a_rate_above_1800_an_hour_gets_a_default_mean_of_at_least_1_s(env):
    assert default_mean_duration_s(2000.0) == MEAN_DURATION_RANGE_S[0]
    assert default_mean_duration_s(MAX_SESSIONS_PER_HOUR) == MEAN_DURATION_RANGE_S[0]
    assert default_mean_duration_s(1800.0) == 1.0 and default_mean_duration_s(900.0) == 2.0
    status, t = await env.post("/api/fleet/traffic", {"sessions_per_hour": 2000})
    assert status == 200, t
    assert t["running"] is True and t["mean_duration_s"] == MEAN_DURATION_RANGE_S[0]
    assert sorted(e[3] for e in env.fleet.traffic._heap if e[2] == "arrive") == IDS


async def test_a_refused_configure_changes_nothing(env):
    traffic = env.fleet.traffic
    await env.post("/api/fleet/traffic", {"sessions_per_hour": 60.0, "seed": 3, "mean_duration_s": 10})
    before, heap, epoch = traffic.snapshot(), list(traffic._heap), traffic._epoch
    for kwargs in [{"seed": "not a number"}, {"mean_duration_s": 0.5}, {"tags": ["A", "A"]}]:
        with pytest.raises(ValueError):
            traffic.configure(120.0, **kwargs)
        assert traffic.snapshot() == before and traffic._heap == heap and traffic._epoch == epoch, kwargs
    assert traffic.tags == DEFAULT_TAGS


async def test_the_traffic_cannot_restart_while_the_fleet_stops(env):
    await env.post("/api/fleet/traffic", {"sessions_per_hour": 60.0, "seed": 3})
    stopping = asyncio.create_task(env.fleet.stop())  # the API stays up while the members stop
    status, answer = await env.post("/api/fleet/traffic", {"sessions_per_hour": RATE})
    assert status == 409 and "stopping" in answer["error"], answer
    await stopping
    assert env.fleet.traffic._task is None and not env.fleet.traffic._heap
    assert env.fleet.traffic.snapshot()["running"] is False
    with pytest.raises(RuntimeError, match="stopping"):
        env.fleet.traffic.configure(RATE)


async def test_a_slow_member_skips_arrivals_as_busy_instead_of_queueing_them(env):
    slow = env.fleet.member("P0002")
    plug = slow.plug

    async def slow_plug(cid: int) -> dict:  # a member answering slowly, which the sim never does
        await asyncio.sleep(1.5)
        return await plug(cid)

    slow.plug = slow_plug
    await env.post("/api/fleet/traffic", {"sessions_per_hour": 7200.0, "seed": 21, "mean_duration_s": MEAN_S})
    st = env.fleet.traffic._stations["P0002"]
    longest = 0

    def busy_skips() -> bool:
        nonlocal longest
        longest = max(longest, len(st.todo))
        return env.fleet.traffic.skips["busy"] >= 3

    await env.until(busy_skips, timeout=20)
    # At 2 arrivals a second and 1.5 s a plug, the queue would grow by ~2 a second: it holds at
    # most one arrival and one end per connector.
    assert longest <= 1 + 2, longest
    _, body = await env.get("/api/stations")
    assert body["traffic"]["skips"]["busy"] >= 3 and body["traffic"]["sessions"]["skipped"] >= 3
    await env.post("/api/fleet/traffic", {"sessions_per_hour": 0})
    await env.until(lambda: env.idle() and env.fleet.traffic.snapshot()["sessions"]["active"] == 0)


# ---------------------------------------------------------------------------- the CLI
async def test_cli_runs_a_rate_above_1800_an_hour_and_stops_cleanly(tmp_path):
    async with LoopbackCsms() as csms:
        proc = await asyncio.create_subprocess_exec(
            PYTHON, "-m", "twin", "fleet", "--count", "2", "--csms", csms.url, "--data-dir", str(tmp_path / "f"),
            "--control", "127.0.0.1:0", "--traffic", "2000", "--seed", "4",
            stderr=asyncio.subprocess.PIPE, env=twin_process_env(), cwd=str(tmp_path))
        lines = []
        try:
            async with asyncio.timeout(30):
                while not any(line.startswith("traffic:") for line in lines):
                    line = (await proc.stderr.readline()).decode()
                    assert line, "".join(lines)  # it exited before starting the traffic
                    lines.append(line)
            proc.send_signal(signal.SIGTERM)
            async with asyncio.timeout(30):
                rest = (await proc.stderr.read()).decode()
                code = await proc.wait()
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
    out = "".join(lines) + rest
    assert code == 0 and "Traceback" not in out, out
    assert "mean 1 s" in out, out


async def test_run_fleet_stops_the_fleet_and_the_api_when_the_traffic_is_refused(tmp_path, capsys):
    from twin.fleet.cli import run_fleet

    async with LoopbackCsms() as csms:
        blueprint = load_config(None, {"csms_url": csms.url, "data_dir": tmp_path / "f", "control": "127.0.0.1:0"})
        fleet = Fleet(blueprint, 2, data_dir=tmp_path / "f")
        # Past run_fleet_command's checks (a caller of run_fleet may not have made them).
        args = argparse.Namespace(count=2, traffic=10.0, traffic_duration=0.0, seed=1)
        async with asyncio.timeout(30):
            assert await run_fleet(fleet, blueprint, args) == 2
    err = capsys.readouterr().err
    assert "mean_duration_s" in err and "Traceback" not in err, err
    assert all(s.stopping and (s.task is None or s.task.done()) for s in fleet.slots.values())
    assert fleet.store is None and fleet.traffic._task is None
    url = err.split("control API ")[1].split()[0]
    async with aiohttp.ClientSession() as http:
        with pytest.raises(aiohttp.ClientConnectionError):  # the API was stopped too: nothing listens
            await http.get(url + "/api/stations")
