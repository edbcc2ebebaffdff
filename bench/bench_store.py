"""Durable-append latency of twin/store.py (issue 3: "enqueue cost: durable append p50/p99").

Measures what the runtime waits for before it goes on: ``await store.apply(ops)``
end to end (event loop -> store thread -> BEGIN IMMEDIATE ... COMMIT with
synchronous=FULL + WAL fsync -> back), on a real file.

    python bench/bench_store.py [--iterations 2000] [--dir DIR]

Prints a markdown table; exits 1 if a p99 misses the target.
"""

from __future__ import annotations

import argparse
import asyncio
import platform
import sqlite3
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from twin.store import Store  # noqa: E402

TARGET_P99_MS = 5.0
WARMUP = 50


def meter_values_entry(seq: int, tx_local_id: int) -> dict:
    """A realistic periodic MeterValues queue entry (iEVQC33 default MeterValuesSampledData)."""
    at = f"2026-05-09T07:{seq // 60 % 60:02d}:{seq % 60:02d}.000Z"
    sampled = [
        {"value": f"{1000 + seq * 2.5:.1f}", "context": "Sample.Periodic", "measurand": "Energy.Active.Import.Register", "location": "Outlet", "unit": "Wh"},
        {"value": "7360.0", "context": "Sample.Periodic", "measurand": "Power.Active.Import", "location": "Outlet", "unit": "W"},
        {"value": "32.0", "context": "Sample.Periodic", "measurand": "Current.Import", "phase": "L1", "location": "Outlet", "unit": "A"},
        {"value": "230.1", "context": "Sample.Periodic", "measurand": "Voltage", "phase": "L1-N", "location": "Outlet", "unit": "V"},
        {"value": "54", "context": "Sample.Periodic", "measurand": "SoC", "location": "EV", "unit": "Percent"},
    ]
    return {
        "action": "MeterValues",
        "payload": {"connectorId": 1, "meterValue": [{"timestamp": at, "sampledValue": sampled}]},
        "tx_local_id": tx_local_id,
        "created_at": at,
        "attempts": 0,
        "next_attempt_at": None,
    }


def transaction_start_batch(local_id: int, seq: int) -> list[tuple]:
    at = f"2026-05-09T08:{seq // 60 % 60:02d}:{seq % 60:02d}.000Z"
    record = {
        "connectorId": 1, "idTag": "04A2B3C4D5E6F7", "meterStart": 123456, "startedAt": at,
        "reservationId": None, "transactionId": None, "stop": None,
    }
    entry = {
        "action": "StartTransaction",
        "payload": {"connectorId": 1, "idTag": "04A2B3C4D5E6F7", "meterStart": 123456, "timestamp": at},
        "tx_local_id": local_id, "created_at": at, "attempts": 0, "next_attempt_at": None,
    }
    return [("tx_put", local_id, record), ("q_put", seq, entry)]


def percentile(sorted_ms: list[float], p: float) -> float:
    # nearest-rank: the smallest sample with at least p% of samples at or below it
    rank = max(1, -(-len(sorted_ms) * p // 100))
    return sorted_ms[int(rank) - 1]


async def measure(store: Store, make_ops, iterations: int, start: int) -> list[float]:
    for i in range(WARMUP):
        await store.apply(make_ops(start + i))
    samples = []
    for i in range(WARMUP, WARMUP + iterations):
        ops = make_ops(start + i)
        t0 = time.perf_counter()
        await store.apply(ops)
        samples.append((time.perf_counter() - t0) * 1000)
    return sorted(samples)


async def run(directory: Path, iterations: int) -> bool:
    store = await Store.open(directory / "bench.db")
    try:
        rows = [
            ("durable append: `apply([q_put MeterValues])`", await measure(store, lambda n: [("q_put", n, meter_values_entry(n, 1))], iterations, 1)),
            ("transaction start: `apply([tx_put, q_put StartTransaction])`", await measure(store, lambda n: transaction_start_batch(n, n), iterations, 1_000_000)),
        ]
    finally:
        await store.close()
    print(f"Store durable-append latency — {iterations} iterations each, SQLite {sqlite3.sqlite_version}, "
          f"WAL + synchronous=FULL, Python {platform.python_version()}, {platform.machine()}, dir {directory}\n")
    print("| operation | p50 (ms) | p99 (ms) | max (ms) | target | result |")
    print("| --- | ---: | ---: | ---: | --- | --- |")
    ok = True
    for name, samples in rows:
        p99 = percentile(samples, 99)
        passed = p99 <= TARGET_P99_MS
        ok &= passed
        print(f"| {name} | {percentile(samples, 50):.3f} | {p99:.3f} | {samples[-1]:.3f} | p99 ≤ {TARGET_P99_MS:g} ms | {'PASS' if passed else 'FAIL'} |")
    return ok


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=2000)
    parser.add_argument("--dir", type=Path, help="where to put the database (default: a fresh temp dir; use the data dir's disk to measure it)")
    args = parser.parse_args()
    if args.dir:
        args.dir.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
            return 0 if asyncio.run(run(Path(tmp), args.iterations)) else 1
    with tempfile.TemporaryDirectory(prefix="bench-store-") as tmp:
        return 0 if asyncio.run(run(Path(tmp), args.iterations)) else 1


if __name__ == "__main__":
    sys.exit(main())
