"""Store commits (fsyncs) per core event, through the real actor and the real SQLite store.

    python bench/bench_actor.py [--repeat 200]

Each row drives one kind of event through ``twin.actor.CoreActor`` (the station's only
owner) into a real ``twin.store.Store`` in a temporary directory and counts the SQLite
transactions it committed. With ``journal_mode=WAL`` and ``synchronous=FULL`` each commit
is one fsync of the WAL, so commits per event = fsyncs per event. The time column is the
median wall time of the whole event (core step, commit, outputs, replies, sends).

Target: at most one commit per event (an event is one atomic durable transition). The
review of commit 733ebda counted two for a tap that stops a session and two for
Authorize.conf -> start, when each Persist action was its own transaction.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from twin.actor import CoreActor  # noqa: E402
from twin.core import actions as A  # noqa: E402
from twin.core.keys import ConfigKeys  # noqa: E402
from twin.core.smart_charging import SmartCharging  # noqa: E402
from twin.core.station import Station, StationSpec  # noqa: E402
from twin.store import Store  # noqa: E402


class Reading:
    def __init__(self, energy_wh: float, power_w: float):
        self.energy_wh, self.power_w = energy_wh, power_w
        self.current_a, self.voltage_v, self.frequency_hz, self.soc_percent = power_w / 690, 230.0, 50.0, None


class CountingStore:
    def __init__(self, store: Store):
        self.store, self.commits = store, 0

    async def apply(self, ops):
        await self.store.apply(ops)
        self.commits += 1


class Sink:
    def __init__(self):
        self.calls: dict[int, A.Send] = {}

    def drive(self, output):
        pass

    def reply(self, reply):
        pass

    def send(self, call):
        self.calls[call.ref] = call

    def control(self, request):
        pass


class Clock:
    def __init__(self):
        self.t = datetime(2026, 12, 1, 12, tzinfo=timezone.utc)

    def __call__(self):
        return self.t


async def rig(tmp: Path):
    store = await Store.open(tmp / "twin.db")
    counting, sink, clock = CountingStore(store), Sink(), Clock()
    station = Station(StationSpec(), ConfigKeys({"MeterValueSampleInterval": "0"}), SmartCharging(2), await store.load())
    actor = CoreActor(station, counting, sink, clock=clock, detect_clock_steps=False)
    actor.start()
    await actor.call(station.boot)
    await actor.call(station.link_up)
    await answer(actor, station, sink)
    return store, counting, sink, clock, station, actor


async def answer(actor, station, sink, action: str | None = None):
    for ref, call in list(sink.calls.items()):
        if ref not in station.pending_calls or (action and call.action != action):
            continue
        payload = {"status": "Accepted", "currentTime": "2026-12-01T12:00:00Z", "interval": 3600}
        if call.action == "Authorize":
            payload = {"idTagInfo": {"status": "Accepted"}}
        elif call.action == "StartTransaction":
            payload = {"transactionId": ref, "idTagInfo": {"status": "Accepted"}}
        elif call.action == "StopTransaction":
            payload = {"idTagInfo": {"status": "Accepted"}}
        elif call.action in ("StatusNotification", "Heartbeat", "MeterValues"):
            payload = {} if call.action != "Heartbeat" else {"currentTime": "2026-12-01T12:00:00Z"}
        await actor.call(station.call_result, ref, payload)


async def measure(repeat: int) -> list[tuple[str, float, float]]:
    rows: dict[str, list[tuple[int, float]]] = {}

    async def timed(name: str, counting: CountingStore, coro) -> None:
        before, t0 = counting.commits, time.perf_counter()
        await coro
        rows.setdefault(name, []).append((counting.commits - before, (time.perf_counter() - t0) * 1000))

    with tempfile.TemporaryDirectory(prefix="twin-bench-actor-") as tmp:
        store, counting, sink, clock, st, actor = await rig(Path(tmp))
        try:
            for i in range(repeat):
                clock.t += timedelta(seconds=5)
                await timed("plug", counting, actor.call(st.plug, 1))
                await timed("tap (Authorize.req)", counting, actor.call(st.tap, "TAG1"))
                auth = next(r for r, c in sink.calls.items() if c.action == "Authorize" and r in st.pending_calls)
                await timed("Authorize.conf -> transaction starts", counting,
                            actor.call(st.call_result, auth, {"idTagInfo": {"status": "Accepted"}}))
                start = next(r for r, c in sink.calls.items() if c.action == "StartTransaction" and r in st.pending_calls)
                await timed("StartTransaction.conf", counting,
                            actor.call(st.call_result, start, {"transactionId": i + 1, "idTagInfo": {"status": "Accepted"}}))
                clock.t += timedelta(seconds=61)
                await timed("meter reading (register persisted)", counting,
                            actor.call(st.meter_reading, 1, Reading(1000.0 * (i + 1), 7000.0)))
                await timed("RemoteStartTransaction (connector 2)", counting, actor.call(
                    st.csms_call, f"rs{i}", "RemoteStartTransaction", {"connectorId": 2, "idTag": "R1"}))
                await timed("ChangeConfiguration", counting, actor.call(
                    st.csms_call, f"cc{i}", "ChangeConfiguration", {"key": "MeterValueSampleInterval", "value": "0"}))
                await timed("tap that stops the session", counting, actor.call(st.tap, "TAG1"))
                await answer(actor, st, sink)
                await timed("unplug", counting, actor.call(st.unplug, 1))
                await answer(actor, st, sink)
                sink.calls = {r: c for r, c in sink.calls.items() if r in st.pending_calls}
        finally:
            await actor.close()
            await store.close()
    out = []
    for name, samples in rows.items():
        commits = [c for c, _ in samples]
        out.append((name, max(commits), statistics.mean(commits), statistics.median(t for _, t in samples)))
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeat", type=int, default=200)
    args = ap.parse_args()
    rows = asyncio.run(measure(args.repeat))
    worst = max(r[1] for r in rows)
    print(f"\n### Store commits per core event ({args.repeat} sessions)\n")
    print("| event | commits (max) | commits (mean) | median event time | target | verdict |")
    print("| --- | ---: | ---: | ---: | --- | --- |")
    for name, cmax, cmean, t in rows:
        print(f"| {name} | {cmax} | {cmean:.2f} | {t:.2f} ms | <= 1 | {'PASS' if cmax <= 1 else 'FAIL'} |")
    print(f"\nworst: {worst} commit(s) per event")
    return 0 if worst <= 1 else 1


if __name__ == "__main__":
    raise SystemExit(main())
