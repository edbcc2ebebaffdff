"""Crash test (issue 3): kill -9 the real ``twin run --sim`` process at random points.

The station runs as its own process against the loopback CSMS (in this test's event
loop) and is driven through the bench control API: plug, unplug, cards, network
cuts. It is SIGKILLed at random moments (during boot, while a control request is
being handled, at a random time after one), at least 30 times, and restarted on the
same data dir each time. The seed is printed; rerun a failure with
``TWIN_CRASH_SEED=<seed>`` (``TWIN_CRASH_KILLS`` changes the number of kills).

At the end, from what the CSMS received:

* every transaction the control API ever reported as started reached the CSMS;
* every StartTransaction has exactly one StopTransaction (one distinct payload per
  transactionId), and no message carries an unknown or -1 transactionId;
* per transaction: Start before its MeterValues before its Stop; MeterValues in
  chronological order with a non-decreasing energy register within meterStart..meterStop;
* no MeterValues lost: with StopTxnSampledData set, every periodic sample is also in
  the transaction record (written in the same SQLite transaction as the queued
  MeterValues), so the samples in StopTransaction.transactionData must be exactly the
  MeterValues the CSMS received;
* nothing sent twice, except at-least-once (§3.7): a message may come again only if
  its earlier copy was the last transaction message on its connection (its
  confirmation may have been lost with the process or the link);
* ``twin queue`` (reading the store of the stopped station) shows an empty queue and
  no discarded message.

The CSMS deduplicates a repeated StartTransaction (same connector, idTag, timestamp
and meterStart) to the same transactionId, as a real central system must for an
at-least-once sender.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.conftest import PYTHON, free_port, twin_process_env
from twin.csms import Csms
from twin.sim_client import SimClientError, request

pytestmark = pytest.mark.slow

KILLS = int(os.environ.get("TWIN_CRASH_KILLS", "30"))
MEASURAND = "Energy.Active.Import.Register"
TX_ACTIONS = ("StartTransaction", "MeterValues", "StopTransaction")


# ---------------------------------------------------------------------------- the CSMS's ledger
@dataclass
class Ledger:
    """Transaction messages as the CSMS received them, numbered by connection."""

    csms: Csms
    msgs: list[tuple[int, str, dict]] = field(default_factory=list)
    start_ids: dict[str, int] = field(default_factory=dict)

    def install(self) -> None:
        self.csms.on("StartTransaction", self._start)
        self.csms.on("StopTransaction", self._stop)
        self.csms.on("MeterValues", self._meter_values)

    def _log(self, action: str, payload: dict) -> None:
        self.msgs.append((self.csms.connection_count, action, payload))

    @staticmethod
    def start_key(p: dict) -> str:
        return json.dumps([p["connectorId"], p["idTag"], p["timestamp"], p["meterStart"]])

    def _start(self, p: dict) -> dict:
        self._log("StartTransaction", p)
        tid = self.start_ids.setdefault(self.start_key(p), 1000 + len(self.start_ids))
        return {"transactionId": tid, "idTagInfo": {"status": "Accepted"}}

    def _stop(self, p: dict) -> dict:
        self._log("StopTransaction", p)
        return {"idTagInfo": {"status": "Accepted"}} if "idTag" in p else {}

    def _meter_values(self, p: dict) -> dict:
        self._log("MeterValues", p)
        return {}


def first_copies(msgs: list[tuple[int, str, dict]], out: list[str], label: str = "") -> list[tuple[int, str, dict]]:
    """The first copy of each message, numbered as received. A repeat is allowed only where
    at-least-once delivery explains it (OCPP 1.6 §3.7): its earlier copy was the last
    transaction message on its connection, whose confirmation may have died with it; any
    other repeat is reported in ``out``."""
    last_on_conn = {conn: i for i, (conn, _a, _p) in enumerate(msgs)}
    previous: dict[str, int] = {}
    firsts: list[tuple[int, str, dict]] = []
    for i, (conn, action, payload) in enumerate(msgs):
        key = action + json.dumps(payload, sort_keys=True)
        j = previous.get(key)
        if j is None:
            firsts.append((i, action, payload))
        elif last_on_conn[msgs[j][0]] != j:
            out.append(f"{label}{action} #{i} sent again, though its earlier copy #{j} was followed by later "
                       f"transaction messages on connection {msgs[j][0]}: {payload}")
        previous[key] = i
    return firsts


def transaction_problems(starts: dict[int, tuple[int, dict]], firsts: list[tuple[int, str, dict]],
                         label: str = "") -> list[str]:
    """What is wrong with each transaction the CSMS saw start: exactly one StopTransaction, its
    MeterValues between Start and Stop, in order, with a non-decreasing register within
    meterStart..meterStop, and exactly the periodic samples the StopTransaction's record holds.
    ``starts``: transactionId -> (message number, StartTransaction); ``firsts``: every first copy."""
    out: list[str] = []
    stops: dict[int, list[tuple[int, dict]]] = defaultdict(list)
    mvs: dict[int, list[tuple[int, dict]]] = defaultdict(list)
    for i, a, p in firsts:
        if a == "StopTransaction":
            stops[p["transactionId"]].append((i, p))
        elif a == "MeterValues":
            mvs[p.get("transactionId")].append((i, p))
    out += [f"{label}StopTransaction for unknown transactionId {t}: {s}" for t, s in stops.items() if t not in starts]
    out += [f"{label}MeterValues for unknown transactionId {t}: {m[0][1]}" for t, m in mvs.items() if t not in starts]
    for tid, (si, start) in sorted(starts.items()):
        if len(stops[tid]) != 1:
            out.append(f"{label}transaction {tid} ({start['idTag']}) stopped {len(stops[tid])} times: {stops[tid]}")
            continue
        pi, stop = stops[tid][0]
        samples = [(i, _energy(p["meterValue"][0])) for i, p in mvs[tid]]
        if any(not si < i < pi for i, _s in samples):
            out.append(f"{label}transaction {tid}: MeterValues outside Start #{si} .. Stop #{pi}")
        stamps = [t for _i, (t, _v) in samples]
        values = [float(v) for _i, (_t, v) in samples]
        if stamps != sorted(stamps) or len(set(stamps)) != len(stamps):
            out.append(f"{label}transaction {tid}: MeterValues not in chronological order: {stamps}")
        if values != sorted(values):
            out.append(f"{label}transaction {tid}: energy register goes backwards: {values}")
        if values and not (start["meterStart"] - 0.5 <= values[0] and values[-1] <= stop["meterStop"] + 0.5):
            out.append(f"{label}transaction {tid}: samples {values[0]}..{values[-1]} outside meterStart "
                       f"{start['meterStart']} .. meterStop {stop['meterStop']}")
        if stop["meterStop"] < start["meterStart"] or stop["timestamp"] < start["timestamp"]:
            out.append(f"{label}transaction {tid}: stop {stop} before start {start}")
        recorded = {(d["timestamp"], sv["value"]) for d in stop.get("transactionData", [])
                    for sv in d["sampledValue"] if sv.get("context") == "Sample.Periodic"}
        received = {s for _i, s in samples}
        if recorded != received:
            out.append(f"{label}transaction {tid}: MeterValues lost {sorted(recorded - received)}, "
                       f"not in the record {sorted(received - recorded)}")
    return out


def _energy(mv: dict) -> tuple[str, str]:
    (value,) = [sv["value"] for sv in mv["sampledValue"] if sv.get("measurand", MEASURAND) == MEASURAND]
    return mv["timestamp"], value


def problems(ledger: Ledger, started_tags: set[str]) -> list[str]:
    """Everything wrong with what the CSMS received (empty = durable)."""
    out: list[str] = []
    msgs = ledger.msgs
    firsts = first_copies(msgs, out)

    starts = {ledger.start_ids[Ledger.start_key(p)]: (i, p) for i, a, p in firsts if a == "StartTransaction"}
    tags = Counter(p["idTag"] for _i, p in starts.values())
    out += [f"idTag {t} started {n} transactions" for t, n in tags.items() if n > 1]
    out += [f"transaction of {t} was reported started but its StartTransaction never arrived"
            for t in sorted(started_tags - set(tags))]
    out += transaction_problems(starts, firsts)
    return out


# ---------------------------------------------------------------------------- the station process


def write_config(path: Path, csms_url: str, data_dir: Path, port: int) -> None:
    path.write_text(f"""
[station]
charge_point_id = "CRASH-1"
connectors = 2
data_dir = "{data_dir}"
log_level = "INFO"

[csms]
url = "{csms_url}"

[control]
host = "127.0.0.1"
port = {port}

[keys]
MeterValueSampleInterval = 1
ClockAlignedDataInterval = 0
MeterValuesSampledData = "{MEASURAND}"
StopTxnSampledData = "{MEASURAND}"
MinimumStatusDuration = 0
""")


class Bench:
    """One station process at a time, driven like a bench rig."""

    def __init__(self, tmp: Path, csms: Csms, rng: random.Random):
        self.tmp = tmp
        self.rng = rng
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.config = tmp / "station.toml"
        self.data_dir = tmp / "data"
        write_config(self.config, csms.url, self.data_dir, self.port)
        self.proc: asyncio.subprocess.Process | None = None
        self.runs = 0
        self.tags = 0
        self.started_tags: set[str] = set()
        self.state: dict = {}
        self.online = True

    def log_path(self, n: int) -> Path:
        return self.tmp / f"run-{n:02d}.log"

    async def start(self) -> None:
        self.runs += 1
        with open(self.log_path(self.runs), "wb") as log:
            self.proc = await asyncio.create_subprocess_exec(
                PYTHON, "-m", "twin", "run", "--config", str(self.config), "--sim",
                stdout=log, stderr=asyncio.subprocess.STDOUT, env=twin_process_env(), cwd=str(self.tmp))
        self.online = True

    async def wait_api(self, timeout: float = 15) -> None:
        end = time.monotonic() + timeout
        while True:
            if self.proc.returncode is not None:
                raise AssertionError(f"station exited with {self.proc.returncode}: {self.log_tail()}")
            try:
                self.state = await asyncio.to_thread(request, self.base, "GET", "/api/state", None, 2)
                return
            except SimClientError:
                if time.monotonic() > end:
                    raise AssertionError(f"control API not up within {timeout}s: {self.log_tail()}") from None
                await asyncio.sleep(0.05)

    def log_tail(self) -> str:
        return self.log_path(self.runs).read_text(errors="replace")[-3000:]

    async def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        await self.proc.wait()

    async def post(self, path: str, body: dict | None = None) -> dict:
        """A control action; its answer is the state after the step, all of it on disk."""
        answer = await asyncio.to_thread(request, self.base, "POST", path, body, 10)
        if "connectors" in answer:
            self.state = answer
            # The runtime answers only after the step's Persist was awaited: a transaction
            # shown here is durably recorded, so the CSMS must eventually see it.
            self.started_tags |= {c["idTag"] for c in answer["connectors"] if c["localTransactionId"] is not None}
        return answer

    def choose(self) -> tuple[str, dict | None]:
        conns = self.state.get("connectors", [])
        options: list[tuple[str, dict | None]] = []
        for c in conns:
            cid = c["id"]
            if c["plugged"]:
                options.append((f"/api/connectors/{cid}/unplug", None))
                if c["idTag"] is None:
                    self.tags += 1
                    options += [("/api/rfid", {"idTag": f"T{self.tags:04d}"})] * 3
            else:
                options += [(f"/api/connectors/{cid}/plug", None)] * 2
            if c["idTag"] is not None:
                options.append(("/api/rfid", {"idTag": c["idTag"]}))
        options.append(("/api/network", {"online": not self.online}))
        return self.rng.choice(options)

    async def act(self) -> None:
        path, body = self.choose()
        if path == "/api/network":
            self.online = body["online"]
        await self.post(path, body)

    async def life(self) -> str:
        """Run the station for a while and kill it at a random point; returns how it died."""
        await self.start()
        mode = self.rng.choices(["boot", "mid-request", "after"], weights=[2, 3, 5])[0]
        if mode == "boot":
            await asyncio.sleep(self.rng.uniform(0.0, 1.5))
            await self.kill()
            return mode
        await self.wait_api()
        for _ in range(self.rng.randint(0, 5)):
            await self.act()
            await asyncio.sleep(self.rng.uniform(0.0, 1.5))
        if mode == "mid-request":
            path, body = self.choose()
            pending = asyncio.ensure_future(asyncio.to_thread(request, self.base, "POST", path, body, 5))
            await asyncio.sleep(self.rng.uniform(0.0, 0.02))
            await self.kill()
            try:
                await pending  # its answer, if any, is not evidence: the step may not have finished
            except SimClientError:
                pass
            return mode
        await asyncio.sleep(self.rng.uniform(0.0, 2.5))
        await self.kill()
        return mode

    async def wind_down(self, timeout: float = 40) -> dict:
        """Last run: stop every transaction, unplug, reconnect, let the queue drain."""
        await self.start()
        await self.wait_api()
        await self.post("/api/network", {"online": True})
        for c in self.state["connectors"]:
            if c["idTag"] is not None:
                await self.post("/api/rfid", {"idTag": c["idTag"]})
            if c["plugged"]:
                await self.post(f"/api/connectors/{c['id']}/unplug")
        end = time.monotonic() + timeout
        while True:
            state = await asyncio.to_thread(request, self.base, "GET", "/api/state", None, 2)
            idle = all(c["localTransactionId"] is None and not c["plugged"] for c in state["connectors"])
            if idle and state["queue"]["length"] == 0 and state["registration"] == "Accepted":
                break
            if time.monotonic() > end:
                raise AssertionError(f"station did not drain within {timeout}s: {state}\n{self.log_tail()}")
            await asyncio.sleep(0.1)
        self.proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(self.proc.wait(), 20) == 0, self.log_tail()
        return state


async def test_kill_9_at_random_points_loses_and_duplicates_nothing(tmp_path):
    seed = int(os.environ.get("TWIN_CRASH_SEED") or random.randrange(2**32))
    print(f"crash test seed: {seed} (rerun with TWIN_CRASH_SEED={seed})")
    rng = random.Random(seed)
    async with Csms(heartbeat_interval=300) as csms:
        ledger = Ledger(csms)
        ledger.install()
        bench = Bench(tmp_path, csms, rng)
        deaths = Counter()
        try:
            for _ in range(KILLS):
                deaths[await bench.life()] += 1
            await bench.wind_down()
        finally:
            if bench.proc is not None and bench.proc.returncode is None:
                bench.proc.kill()
                await bench.proc.wait()

        found = problems(ledger, bench.started_tags)
        counts = Counter(a for _c, a, _p in ledger.msgs)
        resent = len(ledger.msgs) - len({a + json.dumps(p, sort_keys=True) for _c, a, p in ledger.msgs})
        print(f"seed {seed}: {sum(deaths.values())} kills {dict(deaths)}, {len(ledger.start_ids)} transactions, "
              f"messages received {dict(counts)} ({resent} at-least-once resends), "
              f"connections {csms.connection_count}")
        assert not found, f"seed {seed}:\n" + "\n".join(found)
        proc = await asyncio.create_subprocess_exec(
            PYTHON, "-m", "twin", "queue", "--json", "--discarded", "--data-dir", str(bench.data_dir),
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=twin_process_env())
        out, err = await proc.communicate()
        assert proc.returncode == 0, err.decode()
        assert json.loads(out) == {"queue": [], "discarded": []}, f"seed {seed}"
        assert sum(deaths.values()) >= 30 or KILLS < 30
        assert len(ledger.start_ids) >= 3, f"seed {seed}: too few transactions to mean anything"
        assert counts["MeterValues"] > 0
        assert not csms.schema_errors, csms.schema_errors
