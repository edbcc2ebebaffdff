"""Crash test of a fleet: kill -9 a real ``twin fleet`` process while its traffic runs.

A fleet of MEMBERS stations (``python -m twin fleet --traffic``: seeded automatic sessions,
twin.fleet.traffic) runs against the loopback CSMS in this test's event loop, which keeps a
ledger of every transaction message per station and per connection (twin.fleet.loopback,
``ledger=True``). The process is SIGKILLed a few times at seeded random moments (while the
members boot, or after some seconds of sessions) and restarted on the same data dir. The seed
is printed; rerun a failure with ``TWIN_FLEET_CRASH_SEED=<seed>`` (``TWIN_FLEET_CRASH_KILLS``
changes the number of kills). The last run stops the traffic, unplugs what is left plugged,
waits until every member is registered with an empty queue, and stops with SIGTERM.

Everything is read through the fleet's API and ``twin queue``, never from the store's files,
so the test holds whatever the fleet's storage is. Then per member, from what the CSMS got
(the rules of tests/test_crash.py, which does the same to one ``twin run``):

* every transaction the member's API showed (a localTransactionId on a connector, seen at
  least SEEN_MARGIN_S before the kill: its record was on disk by then) reached the CSMS;
* every StartTransaction has exactly one StopTransaction; no message carries an unknown
  transactionId;
* per transaction: Start before its MeterValues before its Stop, the samples in order with a
  non-decreasing register within meterStart..meterStop, and no MeterValues lost: with
  StopTxnSampledData set, the samples in StopTransaction.transactionData are exactly the
  MeterValues the CSMS received;
* nothing sent twice, except at-least-once (OCPP 1.6 §3.7): a message may come again only if
  its earlier copy was the last transaction message on its connection;
* ``twin queue`` shows an empty queue and no discarded message.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import subprocess
import time
from collections import Counter
from pathlib import Path

import aiohttp
import pytest

from tests.conftest import PYTHON, free_port, twin_process_env
from tests.test_crash import first_copies, transaction_problems
from twin.fleet.loopback import LoopbackCsms, start_key

pytestmark = pytest.mark.slow

MEMBERS = 8
IDS = [f"P{i:04d}" for i in range(1, MEMBERS + 1)]
KILLS = int(os.environ.get("TWIN_FLEET_CRASH_KILLS", "4"))
RATE = 2400.0  # sessions per station per hour: one every 1.5 s on each member
MEAN_S = 2.5  # mean session length: 1.7 connectors busy on average, sessions cut by every kill
SEEN_MARGIN_S = 1.0  # a transaction the API showed this long before a kill is durably recorded
MEASURAND = "Energy.Active.Import.Register"


def blueprint(path: Path, csms_url: str) -> None:
    path.write_text(f"""
[station]
connectors = 2
log_level = "WARNING"

[csms]
url = "{csms_url}"

[keys]
MeterValueSampleInterval = 1
ClockAlignedDataInterval = 0
MeterValuesSampledData = "{MEASURAND}"
StopTxnSampledData = "{MEASURAND}"
MinimumStatusDuration = 0
""")


# ---------------------------------------------------------------------------- the checks
def problems(station: str, msgs: list[tuple[int, str, dict]], start_ids: dict[str, int],
             seen: Counter) -> list[str]:
    """Everything wrong with what the CSMS received from one member (empty = durable).
    ``seen``: (connectorId, idTag) -> how many distinct transactions the API showed."""
    out: list[str] = []
    firsts = first_copies(msgs, out, f"{station}: ")

    starts = {start_ids[start_key(p)]: (i, p) for i, a, p in firsts if a == "StartTransaction"}
    if len(starts) != len([1 for _i, a, _p in firsts if a == "StartTransaction"]):
        out.append(f"{station}: two different StartTransactions got one transactionId")
    at_csms = Counter((p["connectorId"], p["idTag"]) for _i, p in starts.values())
    for (cid, tag), n in sorted(seen.items()):
        if at_csms[(cid, tag)] < n:
            out.append(f"{station}: the API showed {n} transactions of {tag} on connector {cid}, "
                       f"the CSMS got {at_csms[(cid, tag)]} StartTransactions")
    out += transaction_problems(starts, firsts, f"{station}: ")
    return out


# ---------------------------------------------------------------------------- the fleet process
class FleetProcess:
    def __init__(self, tmp: Path, csms: LoopbackCsms, seed: int):
        self.tmp, self.seed, self.csms_url = tmp, seed, csms.url
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.config = tmp / "blueprint.toml"
        self.data_dir = tmp / "fleet"
        blueprint(self.config, csms.url)
        self.proc: asyncio.subprocess.Process | None = None
        self.runs = 0
        # (station, connector, localTransactionId, idTag) -> when the API first showed it, this run
        self.sightings: dict[tuple[str, int, int, str], float] = {}
        self.known: set[tuple[str, int, int, str]] = set()  # shown long enough before a kill or stop

    def log_path(self) -> Path:
        return self.tmp / f"run-{self.runs:02d}.log"

    def log_tail(self) -> str:
        return self.log_path().read_text(errors="replace")[-3000:]

    async def start(self) -> None:
        self.runs += 1
        self.sightings = {}
        with open(self.log_path(), "wb") as log:
            self.proc = await asyncio.create_subprocess_exec(
                PYTHON, "-m", "twin", "fleet", "--count", str(MEMBERS), "--csms", self.csms_url,
                "--config", str(self.config), "--data-dir", str(self.data_dir), "--control", f"127.0.0.1:{self.port}",
                "--seed", str(self.seed + self.runs), "--traffic", str(RATE), "--traffic-duration", str(MEAN_S),
                stdout=log, stderr=asyncio.subprocess.STDOUT, env=twin_process_env(), cwd=str(self.tmp))

    async def get(self, http: aiohttp.ClientSession, path: str) -> tuple[int, dict]:
        async with http.get(self.base + path, timeout=aiohttp.ClientTimeout(total=5)) as resp:
            return resp.status, await resp.json()

    async def post(self, http: aiohttp.ClientSession, path: str, body: dict) -> dict:
        async with http.post(self.base + path, json=body, timeout=aiohttp.ClientTimeout(total=10)) as resp:
            answer = await resp.json()
            assert resp.status == 200, (path, body, answer)
            return answer

    async def wait_registered(self, http: aiohttp.ClientSession, timeout: float = 30) -> None:
        end = time.monotonic() + timeout
        while True:
            if self.proc.returncode is not None:
                raise AssertionError(f"fleet exited with {self.proc.returncode}: {self.log_tail()}")
            try:
                status, body = await self.get(http, "/api/stations")
                if status == 200 and body["registered"] == MEMBERS:
                    return
            except (aiohttp.ClientError, asyncio.TimeoutError):
                pass
            if time.monotonic() > end:
                raise AssertionError(f"not every member registered within {timeout}s: {self.log_tail()}")
            await asyncio.sleep(0.1)

    async def states(self, http: aiohttp.ClientSession) -> dict[str, dict]:
        """Every member's GET /api/stations/{id}/state; what it shows of transactions is noted."""
        out = {}
        for sid in IDS:
            try:
                status, state = await self.get(http, f"/api/stations/{sid}/state")
            except (aiohttp.ClientError, asyncio.TimeoutError):
                continue
            if status != 200:
                continue  # 503 while a member (re)starts
            out[sid] = state
            now = time.monotonic()
            for c in state["connectors"]:
                if c["localTransactionId"] is not None:
                    self.sightings.setdefault((sid, c["id"], c["localTransactionId"], c["idTag"]), now)
        return out

    async def watch(self, http: aiohttp.ClientSession, seconds: float) -> None:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            await self.states(http)
            await asyncio.sleep(0.2)

    def settle_sightings(self, until: float) -> None:
        self.known |= {k for k, t in self.sightings.items() if t <= until - SEEN_MARGIN_S}

    async def kill(self) -> None:
        killed_at = time.monotonic()
        self.proc.send_signal(signal.SIGKILL)
        await self.proc.wait()
        self.settle_sightings(killed_at)

    async def life(self, http: aiohttp.ClientSession, rng: random.Random) -> str:
        await self.start()
        if rng.random() < 0.25:
            await asyncio.sleep(rng.uniform(0.3, 2.0))  # while the interpreter loads or the members boot
            await self.kill()
            return "boot"
        await self.wait_registered(http)
        await self.watch(http, rng.uniform(1.5, 4.0))
        await self.kill()
        return "traffic"

    async def wind_down(self, http: aiohttp.ClientSession, timeout: float = 40) -> dict:
        await self.start()
        await self.wait_registered(http)
        await self.watch(http, 1.0)  # sessions after the last restart too
        await self.post(http, "/api/fleet/traffic", {"sessions_per_hour": 0})
        end = time.monotonic() + timeout
        while True:
            states = await self.states(http)
            _, body = await self.get(http, "/api/stations")
            for sid, state in states.items():  # cars an interrupted session left behind
                for c in state["connectors"]:
                    if c["plugged"] and c["localTransactionId"] is None and body["traffic"]["sessions"]["active"] == 0:
                        await self.post(http, f"/api/stations/{sid}/connectors/{c['id']}/unplug", {})
            idle = len(states) == MEMBERS and all(
                s["registration"] == "Accepted" and s["link"] == "online" and s["queue"]["length"] == 0
                and all(c["localTransactionId"] is None and not c["plugged"] for c in s["connectors"])
                for s in states.values())
            if idle and body["traffic"]["sessions"]["active"] == 0:
                break
            if time.monotonic() > end:
                raise AssertionError(f"the fleet did not drain within {timeout}s: {states}\n{self.log_tail()}")
            await asyncio.sleep(0.2)
        self.settle_sightings(time.monotonic() + SEEN_MARGIN_S)  # a clean stop: everything shown counts
        self.proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(self.proc.wait(), 30) == 0, self.log_tail()
        return body["traffic"]


def queue_command(data_dir: Path, station: str, with_station: bool) -> list[str]:
    """``twin queue`` for one member: ``--station`` on the fleet's data dir where the CLI has
    it (a fleet's shared store), else the member's own data dir (a store per member)."""
    base = [PYTHON, "-m", "twin", "queue", "--json", "--discarded"]
    if with_station:
        return base + ["--data-dir", str(data_dir), "--station", station]
    return base + ["--data-dir", str(data_dir / station)]


def test_the_checks_find_a_lost_stop_a_resend_a_lost_sample_and_an_unsent_start():
    start = {"connectorId": 1, "idTag": "T1", "timestamp": "2026-01-01T00:00:00Z", "meterStart": 0}
    mv = {"connectorId": 1, "transactionId": 1, "meterValue": [{"timestamp": "2026-01-01T00:00:01Z", "sampledValue": [
        {"value": "5", "context": "Sample.Periodic", "measurand": MEASURAND}]}]}
    stop = {"transactionId": 1, "timestamp": "2026-01-01T00:00:02Z", "meterStop": 9, "reason": "Local",
            "transactionData": mv["meterValue"]}
    ids = {start_key(start): 1}
    good = [(1, "StartTransaction", start), (1, "MeterValues", mv), (1, "StopTransaction", stop)]
    assert problems("P1", good, ids, Counter({(1, "T1"): 1})) == []
    # The last message of a connection may come again on the next one (at-least-once)...
    assert problems("P1", good + [(2, "StopTransaction", stop)], ids, Counter()) == []
    # ...any other only once.
    assert "sent again" in problems("P1", [good[0], *good, (1, "MeterValues", {**mv, "x": 1})], ids, Counter())[0]
    assert "stopped 0 times" in problems("P1", good[:2], ids, Counter())[0]
    assert "MeterValues lost" in problems("P1", [good[0], good[2]], ids, Counter())[0]
    assert "the CSMS got 1" in problems("P1", good, ids, Counter({(1, "T1"): 2}))[0]


async def test_kill_9_under_traffic_loses_and_duplicates_nothing_on_any_member(tmp_path):
    seed = int(os.environ.get("TWIN_FLEET_CRASH_SEED") or random.randrange(2**32))
    print(f"fleet crash test seed: {seed} (rerun with TWIN_FLEET_CRASH_SEED={seed})")
    rng = random.Random(seed)
    async with LoopbackCsms(heartbeat_interval=300, ledger=True) as csms:
        fleet = FleetProcess(tmp_path, csms, seed)
        deaths: Counter[str] = Counter()
        async with aiohttp.ClientSession() as http:
            try:
                for _ in range(KILLS):
                    deaths[await fleet.life(http, rng)] += 1
                traffic = await fleet.wind_down(http)
            finally:
                if fleet.proc is not None and fleet.proc.returncode is None:
                    fleet.proc.kill()
                    await fleet.proc.wait()

        found: list[str] = []
        transactions = Counter()
        for sid in IDS:
            msgs = csms.ledger.get(sid, [])
            start_ids = {key: tid for (cp, key), tid in csms.start_ids.items() if cp == sid}
            seen = Counter((cid, tag) for s, cid, _local, tag in fleet.known if s == sid)
            found += problems(sid, msgs, start_ids, seen)
            transactions[sid] = len(start_ids)
        all_msgs = [(a, p) for sid in IDS for _c, a, p in csms.ledger.get(sid, [])]
        counts = Counter(a for a, _p in all_msgs)
        resent = len(all_msgs) - len({a + json.dumps(p, sort_keys=True) for a, p in all_msgs})
        print(f"seed {seed}: {sum(deaths.values())} kills {dict(deaths)}, {sum(transactions.values())} transactions "
              f"{dict(transactions)}, {len(fleet.known)} seen through the API, messages {dict(counts)} "
              f"({resent} at-least-once resends), boots {sum(csms.boots.values())}; last run's traffic {traffic}")
        assert not found, f"seed {seed}:\n" + "\n".join(found)
        async def queue_of(sid: str, command: list[str]) -> tuple[str, int, bytes, bytes]:
            proc = await asyncio.create_subprocess_exec(
                *command, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=twin_process_env())
            out, err = await proc.communicate()
            return sid, proc.returncode, out, err

        with_station = "--station" in subprocess.run([PYTHON, "-m", "twin", "queue", "--help"], capture_output=True,
                                                     text=True, env=twin_process_env()).stdout
        for sid, code, out, err in await asyncio.gather(
                *(queue_of(sid, queue_command(fleet.data_dir, sid, with_station)) for sid in IDS)):
            assert code == 0, err.decode()
            assert json.loads(out) == {"queue": [], "discarded": []}, f"seed {seed}: {sid}"
        # Enough happened for the checks to mean something: sessions on every member, some of
        # them cut by a kill (a PowerLoss stop at the next boot), samples sent.
        assert sum(transactions.values()) >= 3 * MEMBERS and all(transactions.values()), f"seed {seed}: {transactions}"
        reasons = Counter(p["reason"] for a, p in all_msgs if a == "StopTransaction")
        assert reasons["PowerLoss"] >= 1 or deaths["traffic"] == 0, reasons
        assert counts["MeterValues"] > 0 and len(fleet.known) >= MEMBERS
