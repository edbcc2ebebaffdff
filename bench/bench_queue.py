"""Benchmark of the durable transaction-message queue (issue 3), printed as a markdown table.

    python bench/bench_queue.py [--messages 10000] [--dir DIR]

One run, everything real except the hardware (sim drivers) and the clock of the
station, which the benchmark advances itself so that 10,000 one-second samples do
not take 10,000 seconds:

1. A station runtime (``twin.runtime.Runtime``: real SQLite store, real websocket
   link) registers at the loopback CSMS (``twin.csms.Csms``) and starts a
   transaction; then its link is cut.
2. **Enqueue cost.** Offline, the benchmark steps the station's clock one
   MeterValueSampleInterval (1 s) at a time and runs the core's tick, as the runtime's
   timer loop does: each tick samples the meter and the runtime awaits the durable
   append of that MeterValues (``Store.apply`` of the batch the core emits: queue entry,
   transaction record, meter floor; one SQLite transaction, WAL + synchronous=FULL).
   Every ``Store.apply`` is timed where the runtime awaits it. 10,000 samples queued.
3. **Drain rate.** The link is restored; the station sends the 10,000 queued
   MeterValues one at a time (§3.7), each removed from the store when confirmed.
   Measured at the CSMS: from the first MeterValues received to the last.
4. **Reference.** A bare ``ocpp`` stack client (``ocpp.v16.ChargePoint``, client role,
   schema validation on as by default) sends the same 10,000 payloads to the same
   CSMS, one ``call`` at a time, once before and once after the station's drain; the
   faster of the two is the reference (the stricter comparison).

Targets (issue 3): durable append p99 <= 5 ms; drain rate >= 0.8 x the bare client.
Exits 1 if a target is missed.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import platform
import sqlite3
import sys
import tempfile
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from bench_store import percentile  # noqa: E402
from ocpp.v16 import ChargePoint, call  # noqa: E402
from websockets.asyncio.client import connect  # noqa: E402

from twin.config import load_config  # noqa: E402
from twin.csms import Csms  # noqa: E402
from twin.runtime import Runtime  # noqa: E402

APPEND_P99_TARGET_MS = 5.0
DRAIN_RATIO_TARGET = 0.8
SAMPLE_INTERVAL_S = 1


class SteppedClock:
    """The station's clock: starts at the real time, moves only when told to."""

    def __init__(self) -> None:
        self.now = datetime.now(timezone.utc)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


class MeterValuesTimer:
    """The CSMS's MeterValues handler: answers at once and notes when each call arrived."""

    def __init__(self, expected: int) -> None:
        self.expected = expected
        self.times: list[float] = []
        self.payloads: list[dict] = []
        self.done = asyncio.Event()

    def __call__(self, payload: dict) -> dict:
        self.times.append(time.perf_counter())
        self.payloads.append(payload)
        if len(self.times) >= self.expected:
            self.done.set()
        return {}

    def rate(self) -> float:
        return (len(self.times) - 1) / (self.times[-1] - self.times[0])


async def until(check, timeout: float, what: str) -> None:
    end = time.monotonic() + timeout
    while not check():
        if time.monotonic() > end:
            raise TimeoutError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.01)


def timed_store(rt: Runtime, samples_ms: list[float]) -> None:
    """Time every Store.apply that carries a queued MeterValues, where the runtime awaits it."""
    apply = rt.store.apply

    async def timed(ops):
        t0 = time.perf_counter()
        try:
            return await apply(ops)
        finally:
            if any(op[0] == "q_put" and op[2]["action"] == "MeterValues" for op in ops):
                samples_ms.append((time.perf_counter() - t0) * 1000)

    rt.store.apply = timed


async def fill_queue_offline(rt: Runtime, clock: SteppedClock, n: int) -> tuple[list[float], float]:
    """Queue n MeterValues samples while offline; returns the append latencies and the wall time."""
    st = rt.station
    samples_ms: list[float] = []
    timed_store(rt, samples_ms)

    t0 = time.perf_counter()
    while len(st.queue) < n:
        clock.advance(SAMPLE_INTERVAL_S)
        # What the core's actor does at a sample deadline.
        await rt.actor.call(st.tick)
    elapsed = time.perf_counter() - t0
    actions = {e.action for e in st.queue.entries}
    if len(st.queue) != n or actions != {"MeterValues"} or len(samples_ms) != n:
        raise RuntimeError(f"expected {n} queued MeterValues, got {len(st.queue)} {actions}, {len(samples_ms)} appends")
    return samples_ms, elapsed


async def bare_client(csms: Csms, payloads: list[dict]) -> float:
    """Send the payloads with a bare ocpp ChargePoint, one call at a time; the CSMS-side rate."""
    timer = MeterValuesTimer(len(payloads))
    csms.on("MeterValues", timer)
    async with connect(f"{csms.url}/BARE-CLIENT", subprotocols=["ocpp1.6"], compression=None) as ws:
        cp = ChargePoint("BARE-CLIENT", ws)
        reader = asyncio.create_task(cp.start())
        try:
            for p in payloads:
                await cp.call(call.MeterValues(connector_id=p["connectorId"], meter_value=p["meterValue"],
                                               transaction_id=p["transactionId"]))
        finally:
            reader.cancel()
    await csms.wait_disconnected()
    return timer.rate()


async def run(directory: Path, n: int) -> bool:
    csms = Csms(heartbeat_interval=3600)
    await csms.start()
    cfg = load_config(None, {"csms_url": csms.url, "charge_point_id": "BENCH-1", "data_dir": directory / "data",
                             "sim": True})
    cfg.control_enabled = False  # no control API needed
    cfg.keys.update({"MeterValueSampleInterval": str(SAMPLE_INTERVAL_S), "ClockAlignedDataInterval": "0"})
    clock = SteppedClock()
    rt = Runtime(cfg, clock=clock, meter_poll_s=0.5)
    await rt.start()
    try:
        st = rt.station
        await until(lambda: st.registration == "Accepted", 15, "registration")
        await rt.plug(1)
        await rt.rfid("BENCH-TAG")
        await until(lambda: (rt.state()["connectors"][0]["transactionId"] is not None and len(st.queue) == 0),
                    15, "the transaction to start")
        tx_id = rt.state()["connectors"][0]["transactionId"]
        await rt.network(False)
        await csms.wait_disconnected()
        await until(lambda: not st.online, 10, "the station to see the link down")

        append_ms, fill_s = await fill_queue_offline(rt, clock, n)
        payloads = [{**e.payload, "transactionId": tx_id} for e in st.queue.entries]

        bare_before = await bare_client(csms, payloads)

        timer = MeterValuesTimer(n)
        csms.on("MeterValues", timer)
        t_restore = time.perf_counter()
        await rt.network(True)
        await asyncio.wait_for(timer.done.wait(), timeout=600)
        await until(lambda: len(st.queue) == 0, 30, "the queue to empty")
        t_empty = time.perf_counter()
        if timer.payloads != payloads:
            raise RuntimeError("the station did not send the queued MeterValues as queued, in order")
        station_rate = timer.rate()
        await rt.network(False)
        await csms.wait_disconnected()

        bare_after = await bare_client(csms, payloads)
    finally:
        await rt.shutdown(graceful=False)
        await csms.stop()

    append_ms.sort()
    p50, p99 = percentile(append_ms, 50), percentile(append_ms, 99)
    bare = max(bare_before, bare_after)
    ratio = station_rate / bare
    append_ok = p99 <= APPEND_P99_TARGET_MS
    drain_ok = ratio >= DRAIN_RATIO_TARGET

    def verdict(ok: bool) -> str:
        return "PASS" if ok else "FAIL"

    print(f"Durable transaction queue — {n} MeterValues, SQLite {sqlite3.sqlite_version} (WAL, synchronous=FULL), "
          f"Python {platform.python_version()}, {platform.machine()}, dir {directory}\n")
    print("| measure | value | target | result |")
    print("| --- | ---: | --- | --- |")
    print(f"| durable append p50 (`Store.apply` of one MeterValues sample) | {p50:.3f} ms | | |")
    print(f"| durable append p99 | {p99:.3f} ms | ≤ {APPEND_P99_TARGET_MS:g} ms | {verdict(append_ok)} |")
    print(f"| durable append max | {append_ms[-1]:.3f} ms | | |")
    print(f"| queueing {n} samples offline (core tick + append, wall) | {fill_s:.1f} s | | |")
    print(f"| station drain after reconnect (first to last MeterValues at the CSMS) | {station_rate:.0f} msg/s | "
          f"≥ {DRAIN_RATIO_TARGET:g} × bare | {verdict(drain_ok)} |")
    print(f"| station: link restored to queue empty | {t_empty - t_restore:.1f} s | | |")
    print(f"| bare `ocpp.v16.ChargePoint` client, one call at a time (before / after) | "
          f"{bare_before:.0f} / {bare_after:.0f} msg/s | reference: {bare:.0f} | |")
    print(f"| drain ratio station / bare | {ratio:.2f} | ≥ {DRAIN_RATIO_TARGET:g} | {verdict(drain_ok)} |")
    return append_ok and drain_ok


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=10_000, help="queued MeterValues (default 10000)")
    parser.add_argument("--dir", type=Path, help="where to put the store (default: a fresh temp dir; use the data "
                                                 "dir's disk to measure that disk)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)
    if args.dir:
        args.dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="bench-queue-", dir=args.dir) as tmp:
        return 0 if asyncio.run(run(Path(tmp), args.messages)) else 1


if __name__ == "__main__":
    sys.exit(main())
