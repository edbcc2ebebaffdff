"""twin fleet: 20 complete twins in one process against a loopback CSMS that serves many
stations at once (twin.fleet.loopback), driven through the fleet's control API over HTTP."""

from __future__ import annotations

import asyncio
import json

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from twin.config import load_config
from twin.fleet import Fleet, member_ids
from twin.fleet.api import FleetApi
from twin.fleet.loopback import LoopbackCsms
from twin.security.log import SecurityLog

N = 20
IDS = [f"P{i:04d}" for i in range(1, N + 1)]


class Env:
    def __init__(self, csms: LoopbackCsms, fleet: Fleet, api: FleetApi, http: aiohttp.ClientSession):
        self.csms, self.fleet, self.api, self.http = csms, fleet, api, http

    async def get(self, path: str, **kw) -> tuple[int, object]:
        async with self.http.get(self.api.url + path, **kw) as resp:
            body = await resp.text()
            return resp.status, (await resp.json() if resp.content_type == "application/json" else body)

    async def post(self, path: str, body: dict | None = None) -> tuple[int, object]:
        async with self.http.post(self.api.url + path, json=body if body is not None else {}) as resp:
            return resp.status, await resp.json()

    async def until(self, check, timeout: float = 20.0, what: str = "condition") -> None:
        async with asyncio.timeout(timeout):
            while not check():
                await asyncio.sleep(0.05)

    def all_registered(self) -> bool:
        return self.fleet.registered() == N


@pytest.fixture
async def env(tmp_path):
    async with LoopbackCsms(record=True) as csms:
        blueprint = load_config(None, {"csms_url": csms.url, "data_dir": tmp_path / "fleet"})
        fleet = Fleet(blueprint, N, data_dir=tmp_path / "fleet", boot_spread_s=0.5, seed=7)
        api = FleetApi.from_blueprint(fleet, blueprint, port=0)
        await api.start()
        await fleet.start()
        async with aiohttp.ClientSession() as http:
            e = Env(csms, fleet, api, http)
            try:
                await e.until(e.all_registered, what="every member registered")
                yield e
            finally:
                await fleet.stop()
                await api.stop()


def test_member_ids_are_zero_padded_to_four_digits_at_least():
    assert member_ids("P", 3) == ["P0001", "P0002", "P0003"]
    assert member_ids("CP-", 12000)[-1] == "CP-12000" and member_ids("CP-", 12000)[0] == "CP-00001"


def test_a_shard_of_an_id_range_numbers_from_its_first_id_at_the_range_width():
    assert member_ids("P", 3, first=5001) == ["P5001", "P5002", "P5003"]
    # Two shards of 1..10000: both spell ids with the range's five digits.
    assert member_ids("P", 5000, first=1, width=5)[0] == "P00001"
    assert member_ids("P", 5000, first=5001, width=5)[-1] == "P10000"
    with pytest.raises(ValueError, match="needs 5 digits"):
        member_ids("P", 5000, first=5001, width=4)


async def test_every_member_registers_and_is_listed(env):
    assert sorted(env.csms.boots) == IDS and set(env.csms.boots.values()) == {1}
    status, body = await env.get("/api/stations")
    assert status == 200
    assert body["count"] == N and body["registered"] == N
    assert [s["id"] for s in body["stations"]] == IDS
    for s in body["stations"]:
        assert s["registration"] == "Accepted"
        assert s["link"] == {"online": True, "connected": True}
        assert [c["status"] for c in s["connectors"]] == ["Available", "Available"]
    # Each member has its own data dir; their durable state is in the fleet's one store.
    assert sorted(p.name for p in env.fleet.data_dir.iterdir() if p.is_dir()) == IDS
    assert not list(env.fleet.data_dir.glob("*/twin.db")) and (env.fleet.data_dir / "fleet.db").is_file()
    assert env.fleet.store.summary()["views_open"] == N

    status, state = await env.get("/api/stations/P0013/state")
    assert status == 200 and state["chargePointId"] == "P0013" and state["registration"] == "Accepted"
    assert (await env.get("/api/stations/Q9999/state"))[0] == 404
    assert (await env.post("/api/stations/P0001/connectors/3/plug"))[0] == 404  # 2 connectors
    status, doc = await env.get("/api/openapi.json")
    assert status == 200
    assert {"/api/stations", "/api/fleet/reboot", "/api/fleet/network", "/metrics",
            "/api/stations/{station}/connectors/{id}/plug", "/api/stations/{station}/rfid"} <= set(doc["paths"])
    assert "/api/events" not in doc["paths"] and "/api/state" not in doc["paths"]
    # The single twin's hardening is the fleet's too: a rebinding Host is refused before routing.
    status, body = await env.get("/api/stations", headers={"Host": "evil.example"})
    assert status == 421, body


async def test_a_session_on_one_member_through_its_routes(env):
    status, state = await env.post("/api/stations/P0007/connectors/1/plug")
    assert status == 200 and state["connectors"][0]["plugged"] is True
    status, state = await env.post("/api/stations/P0007/rfid", {"idTag": "FLEETTAG"})
    assert status == 200, state
    starts = lambda: [r for r in env.csms.records if r[1] == "StartTransaction"]  # noqa: E731
    await env.until(lambda: starts(), what="StartTransaction")
    assert [(cp, p["connectorId"], p["idTag"]) for cp, _, p in starts()] == [("P0007", 1, "FLEETTAG")]
    await env.until(lambda: env.fleet.member("P0007").state()["connectors"][0]["status"] == "Charging",
                    what="Charging")
    status, body = await env.get("/api/stations")
    row = next(s for s in body["stations"] if s["id"] == "P0007")
    assert row["connectors"][0]["status"] == "Charging"
    assert all(c["status"] == "Available" for s in body["stations"] if s["id"] != "P0007" for c in s["connectors"])
    await env.post("/api/stations/P0007/rfid", {"idTag": "FLEETTAG"})
    await env.until(lambda: any(r[0] == "P0007" and r[1] == "StopTransaction" for r in env.csms.records),
                    what="StopTransaction")
    status, state = await env.post("/api/stations/P0007/connectors/1/unplug")
    assert status == 200 and state["connectors"][0]["plugged"] is False
    assert (await env.post("/api/stations/P0007/rfid", {"idTag": ""}))[0] == 400  # the single twin's validation


async def test_the_list_pages_and_filters_on_the_server(env):
    status, body = await env.get("/api/stations?offset=5&limit=4")
    assert status == 200, body
    assert [s["id"] for s in body["stations"]] == IDS[5:9]
    assert (body["count"], body["matched"], body["offset"]) == (N, N, 5)
    assert (await env.get("/api/stations?offset=18&limit=10"))[1]["stations"][-1]["id"] == IDS[-1]
    assert (await env.get("/api/stations?offset=99"))[1]["stations"] == []
    # Words: each in the id, or the start of a status; all must match.
    _, body = await env.get("/api/stations?q=p001")
    assert [s["id"] for s in body["stations"]] == IDS[9:19] and body["matched"] == 10
    assert (await env.get("/api/stations?q=preparing"))[1]["matched"] == 0
    await env.post("/api/stations/P0012/connectors/2/plug")
    await env.until(lambda: env.fleet.member("P0012").state()["connectors"][1]["status"] == "Preparing")
    _, body = await env.get("/api/stations?q=PREP%20p001")
    assert [s["id"] for s in body["stations"]] == ["P0012"] and body["matched"] == 1
    assert (await env.get("/api/stations?q=prep%20p002"))[1]["matched"] == 0
    assert (await env.get("/api/stations?q=avail"))[1]["matched"] == N  # P0012's connector 1 still is
    assert (await env.get("/api/stations?q=unavail"))[1]["matched"] == 0
    assert (await env.get("/api/stations?q=online&limit=3"))[1]["matched"] == N
    for bad in ("limit=0", "limit=-1", "limit=x", "offset=1.5", "limit=10001", "page=2", "q=" + "x" * 201,
                "offset=" + "9" * 5000):
        status, answer = await env.get("/api/stations?" + bad)
        assert status == 400 and "error" in answer, (bad, answer)


async def test_an_unchanged_answer_is_304_by_its_etag(env):
    async with env.http.get(env.api.url + "/api/stations?limit=5") as resp:
        assert resp.status == 200
        tag = resp.headers["ETag"]
        assert tag.startswith('"') and tag.endswith('"')
    async with env.http.get(env.api.url + "/api/stations?limit=5", headers={"If-None-Match": tag}) as resp:
        assert resp.status == 304 and resp.headers["ETag"] == tag and await resp.read() == b""
    async with env.http.get(env.api.url + "/api/stations?limit=5",
                            headers={"If-None-Match": f'"other", W/{tag}'}) as resp:
        assert resp.status == 304  # a list of tags; weak comparison
    await env.post("/api/stations/P0003/connectors/1/plug")
    await env.until(lambda: env.fleet.member("P0003").state()["connectors"][0]["status"] == "Preparing")
    async with env.http.get(env.api.url + "/api/stations?limit=5", headers={"If-None-Match": tag}) as resp:
        assert resp.status == 200 and resp.headers["ETag"] != tag  # the list changed: the new body
        assert (await resp.json())["stations"][2]["connectors"][0]["status"] == "Preparing"
    # A member's state route has one too; a POST never answers 304.
    async with env.http.get(env.api.url + "/api/stations/P0003/state") as resp:
        assert "ETag" in resp.headers
    async with env.http.post(env.api.url + "/api/stations/P0003/connectors/1/unplug", json={},
                             headers={"If-None-Match": "*"}) as resp:
        assert resp.status == 200


async def test_the_dashboard_and_one_member_s_event_stream(env):
    status, page = await env.get("/")
    assert status == 200 and "<html" in page.lower()
    assert (await env.get("/dashboard/app.js"))[0] == 200
    async with env.http.get(env.api.url + "/api/stations/P0004/events") as resp:
        assert resp.status == 200 and resp.content_type == "text/event-stream"
        assert (await resp.content.readline()).startswith(b": ocpp-twin events")
        # P0002's StatusNotification goes out first (its trace shows it sent), then P0004's:
        # a stream that also carried P0002's frames would show P0002's connector 2 first.
        await env.post("/api/stations/P0002/connectors/2/plug")

        async def p0002_sent() -> bool:
            _, trace = await env.get("/api/stations/P0002/trace")
            return any(f["dir"] == "out" and f["frame"][2:3] == ["StatusNotification"] for f in trace["frames"])

        async with asyncio.timeout(10):
            while not await p0002_sent():
                await asyncio.sleep(0.05)
        await env.post("/api/stations/P0004/connectors/1/plug")
        seen = []
        async with asyncio.timeout(10):
            while not any('"StatusNotification"' in line for line in seen):
                seen.append((await resp.content.readline()).decode())
        frames = [json.loads(line[5:]) for line in seen if line.startswith("data:") and "StatusNotification" in line]
        assert [f["frame"][3]["connectorId"] for f in frames] == [1], frames
    assert (await env.get("/api/stations/Q1/events"))[0] == 404


async def test_rolling_reboot_then_a_boot_storm_re_register_everyone(env):
    status, body = await env.post("/api/fleet/reboot", {"rolling": True, "batch": 5, "interval_s": 0.3})
    assert status == 200 and body["batches"] == 4
    # While it runs, a second reboot is refused.
    assert (await env.post("/api/fleet/reboot", {"rolling": False}))[0] == 409
    await env.until(lambda: env.fleet.reboot_progress.get("finished") and env.all_registered()
                    and all(env.csms.boots[i] == 2 for i in IDS), what="every member booted twice")
    assert all(s.runs == 2 for s in env.fleet.slots.values())

    status, body = await env.post("/api/fleet/reboot", {"rolling": False})
    assert status == 200 and body["batches"] == 1
    await env.until(lambda: env.all_registered() and all(env.csms.boots[i] == 3 for i in IDS),
                    what="every member booted three times")
    status, body = await env.get("/api/stations")
    assert body["registered"] == N and {s["runs"] for s in body["stations"]} == {3}
    # A reboot is a graceful restart: the next boot is a ResetOrReboot, not a StartupOfTheDevice.
    # (WP3 §8; the member's own security log in its own data dir.)
    log = SecurityLog(env.fleet.data_dir / "P0001")
    await env.until(lambda: len([e for e in log.entries() if e.get("type") == "ResetOrReboot"]) == 2,
                    what="two ResetOrReboot entries")
    kinds = [e.get("type") for e in log.entries()]
    assert kinds.count("StartupOfTheDevice") == 1, kinds

    assert (await env.post("/api/fleet/reboot", {"rolling": False, "batch": 2}))[0] == 400
    assert (await env.post("/api/fleet/reboot", {"rolling": True, "batch": 0}))[0] == 400
    assert (await env.post("/api/fleet/reboot", {}))[0] == 400


async def test_blackout_and_recovery(env):
    before = {i: env.csms.connections[i] for i in IDS}
    status, body = await env.post("/api/fleet/network", {"online": False})
    assert status == 200 and body == {"online": False, "members": N}
    await env.until(lambda: not env.csms.connected and all(not env.fleet.member(i).link.connected for i in IDS),
                    what="every link down")
    status, body = await env.get("/api/stations")
    assert body["online"] is False
    assert all(s["link"] == {"online": False, "connected": False} for s in body["stations"])
    # A session during the blackout is queued on the member, not lost.
    await env.post("/api/stations/P0003/connectors/2/plug")
    await env.post("/api/stations/P0003/rfid", {"idTag": "OFFLINE1"})
    await env.until(lambda: env.fleet.member("P0003").state()["queue"]["length"] >= 1, what="queued offline")

    assert (await env.post("/api/fleet/network", {"online": True}))[0] == 200
    await env.until(lambda: all(env.csms.connections[i] == before[i] + 1 for i in IDS)
                    and len(env.csms.connected) == N and env.all_registered(), what="every member back")
    await env.until(lambda: any(cp == "P0003" and a == "StartTransaction" and p["idTag"] == "OFFLINE1"
                                for cp, a, p in env.csms.records), what="the offline StartTransaction delivered")
    assert (await env.post("/api/fleet/network", {"online": "yes"}))[0] == 400


async def test_metrics_show_every_member(env):
    status, text = await env.get("/metrics")
    assert status == 200
    families = {f.name: f for f in text_string_to_metric_families(text)}
    assert [s.value for s in families["ocpp_twin_stations_registered"].samples] == [N]
    assert [s.value for s in families["ocpp_twin_stations_connected"].samples] == [N]
    per_station = {s.labels["station"]: s.value for s in families["ocpp_twin_station_registered"].samples}
    assert per_station == {i: 1.0 for i in IDS}
    boots = {s.labels["station"]: s.value for s in families["ocpp_twin_call_round_trip_seconds"].samples
             if s.name.endswith("_count") and s.labels["action"] == "BootNotification"}
    assert boots == {i: 1.0 for i in IDS}
    assert families["process_resident_memory_bytes"].samples[0].value > 0


def test_cli_refuses_a_bad_fleet_before_starting_anything(tmp_path, capsys):
    from twin.cli import main

    base = ["fleet", "--csms", "ws://127.0.0.1:9/ocpp", "--data-dir", str(tmp_path / "f"), "--control", "127.0.0.1:9"]
    assert main(base + ["--count", "0"]) == 2
    assert main(base + ["--count", "2", "--id-prefix", "bad id/"]) == 2
    assert "--id-prefix" in capsys.readouterr().err
    assert not (tmp_path / "f").exists() or not any((tmp_path / "f").iterdir())


def test_cli_refuses_a_fleet_db_that_is_not_a_fleet_store_without_a_traceback(tmp_path):
    import subprocess
    import sys

    from tests.conftest import free_port, twin_process_env

    data = tmp_path / "f"
    data.mkdir()
    (data / "fleet.db").write_bytes(b"not a database, and maybe the only copy of something" * 40)
    before = (data / "fleet.db").read_bytes()
    proc = subprocess.run([sys.executable, "-m", "twin", "fleet", "--count", "2", "--csms", "ws://127.0.0.1:9/ocpp",
                           "--data-dir", str(data), "--control", f"127.0.0.1:{free_port()}"],
                          capture_output=True, text=True, timeout=60, env=twin_process_env())
    assert proc.returncode == 3, proc.stderr
    assert "cannot start the fleet" in proc.stderr and "fleet.db" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert (data / "fleet.db").read_bytes() == before  # refused, never repaired


async def test_twin_fleet_profile_gives_every_member_that_charger_model(tmp_path):
    """``twin fleet --profile FILE``: the members are that charger (here the one-connector
    example wallbox), as ``twin run --profile`` makes a single twin."""
    import sys

    from tests.conftest import ROOT, free_port, twin_process_env

    profile = ROOT / "twin" / "profiles" / "examples" / "generic-ac-1c.toml"
    port = free_port()
    async with LoopbackCsms(record=True) as csms:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "twin", "fleet", "--count", "3", "--csms", csms.url, "--profile", str(profile),
            "--data-dir", str(tmp_path / "f"), "--control", f"127.0.0.1:{port}", env=twin_process_env(), cwd=ROOT,
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)
        try:
            await csms.wait_until(lambda: len(csms.boots) == 3, 30, "three members registered")
            boots = [p for _cp, a, p in csms.records if a == "BootNotification"]
            assert {b["chargePointModel"] for b in boots} == {"Generic AC 1C"}
            async with aiohttp.ClientSession() as http:
                async with http.get(f"http://127.0.0.1:{port}/api/stations") as resp:
                    body = await resp.json()
            assert [len(s["connectors"]) for s in body["stations"]] == [1, 1, 1]
        finally:
            proc.terminate()
            await asyncio.wait_for(proc.wait(), 30)
    bad = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "twin", "fleet", "--count", "1", "--csms", "ws://127.0.0.1:9/ocpp",
        "--profile", str(tmp_path / "missing.toml"), "--data-dir", str(tmp_path / "g"),
        "--control", f"127.0.0.1:{free_port()}", env=twin_process_env(), cwd=ROOT,
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)
    _, err = await bad.communicate()
    assert bad.returncode == 2 and b"missing.toml" in err and b"Traceback" not in err
