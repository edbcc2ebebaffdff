"""The fleet's shared store (twin/fleet/store.py) against one twin.db per member.

N stations (default 1000) apply MeterValues batches through what a fleet member writes
through: ``await view.apply(ops)`` end to end (event loop -> writer thread -> group commit
with synchronous=FULL + WAL fsync -> back on the loop), on real files. The same workload runs
on N single stores (twin/store.py: N files, N worker threads), as fleets did before.

Two loads:

* **burst**: every station applies ``--rounds`` batches back to back, all stations at once
  (a boot storm, or a blackout's recovery when every member writes);
* **paced**: batches arrive at random moments at ``--rate`` per second in total over
  ``--seconds`` (steady sampling: 1000 stations with MeterValueSampleInterval 10 s are 100/s).

    python bench/bench_fleet_store.py [--stations 1000] [--rounds 10] [--rate 1000] [--seconds 5] [--dir DIR]

Prints a markdown table. "fsyncs per batch" counts commits (one WAL fsync each): the shared
store's own counter, and one per batch for single stores by construction.
"""

from __future__ import annotations

import argparse
import asyncio
import platform
import random
import sqlite3
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench_store import meter_values_entry, percentile  # noqa: E402

from twin.fleet.store import FLEET_DB, SharedStore  # noqa: E402
from twin.store import Store  # noqa: E402


def batch(seq: int) -> list[tuple]:
    # A sample (q_put) and the confirmation of the previous one (q_del): the steady state of a
    # charging station whose CSMS answers.
    ops = [("q_put", seq, meter_values_entry(seq, 1))]
    if seq > 1:
        ops.append(("q_del", seq - 1))
    return ops


async def burst(stores: list, rounds: int) -> tuple[list[float], float]:
    samples: list[float] = []

    async def station(store) -> None:
        for seq in range(1, rounds + 1):
            t0 = time.perf_counter()
            await store.apply(batch(seq))
            samples.append((time.perf_counter() - t0) * 1000)

    t0 = time.perf_counter()
    await asyncio.gather(*(station(s) for s in stores))
    return sorted(samples), time.perf_counter() - t0


async def paced(stores: list, rate: float, seconds: float, seed: int) -> tuple[list[float], float]:
    rng = random.Random(seed)
    samples: list[float] = []
    next_seq = {id(s): 1000 for s in stores}
    locks = {id(s): asyncio.Lock() for s in stores}  # a member writes one batch at a time (its actor)
    start = time.perf_counter() + 0.05
    arrivals, t = [], 0.0
    while True:
        t += rng.expovariate(rate)
        if t >= seconds:
            break
        arrivals.append((t, rng.choice(stores)))

    async def one(at: float, store) -> None:
        await asyncio.sleep(max(0.0, start + at - time.perf_counter()))
        async with locks[id(store)]:
            seq = next_seq[id(store)]
            next_seq[id(store)] += 1
            t0 = time.perf_counter()
            await store.apply(batch(seq))
            samples.append((time.perf_counter() - t0) * 1000)

    await asyncio.gather(*(one(at, s) for at, s in arrivals))
    return sorted(samples), time.perf_counter() - start


async def run_shared(directory: Path, n: int, args) -> dict:
    shared = await SharedStore.open(directory / FLEET_DB)
    try:
        views = list(await asyncio.gather(*(shared.station(f"P{i:04d}") for i in range(1, n + 1))))
        threads = threading.active_count()
        out = {}
        for name, coro in (("burst", burst(views, args.rounds)), ("paced", paced(views, args.rate, args.seconds, 1))):
            before = shared.summary()
            samples, wall = await coro
            after = shared.summary()
            out[name] = (samples, wall, (after["commits"] - before["commits"]) / len(samples))
        out["threads"] = threads
        return out
    finally:
        await shared.close()


async def run_single(directory: Path, n: int, args) -> dict:
    stores = list(await asyncio.gather(*(Store.open(directory / f"P{i:04d}" / "twin.db") for i in range(1, n + 1))))
    try:
        for s in stores:  # each worker thread exists once it ran a job
            await s.load()
        threads = threading.active_count()
        out = {}
        for name, coro in (("burst", burst(stores, args.rounds)), ("paced", paced(stores, args.rate, args.seconds, 1))):
            samples, wall = await coro
            out[name] = (samples, wall, 1.0)
        out["threads"] = threads
        return out
    finally:
        await asyncio.gather(*(s.close() for s in stores))


def row(kind: str, load: str, result: tuple, threads: int) -> str:
    samples, wall, fsyncs = result
    return (f"| {kind} | {load} | {len(samples)} | {len(samples) / wall:,.0f} | {fsyncs:.3f} | "
            f"{percentile(samples, 50):.1f} | {percentile(samples, 99):.1f} | {samples[-1]:.1f} | {threads} |")


async def main_async(directory: Path, args) -> None:
    n = args.stations
    shared = await run_shared(directory / "shared", n, args)
    single = await run_single(directory / "single", n, args)
    print(f"Fleet store — {n} stations, burst: {args.rounds} batches each at once; paced: {args.rate:g} batches/s "
          f"for {args.seconds:g} s; SQLite {sqlite3.sqlite_version}, WAL + synchronous=FULL, Python "
          f"{platform.python_version()}, {platform.machine()}, dir {directory}\n")
    print("| store | load | batches | batches/s | fsyncs per batch | p50 (ms) | p99 (ms) | max (ms) | threads |")
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for load in ("burst", "paced"):
        print(row("shared fleet.db (group commit)", load, shared[load], shared["threads"]))
        print(row(f"{n} twin.db (one per member)", load, single[load], single["threads"]))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stations", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=10, help="burst: batches per station (default 10)")
    parser.add_argument("--rate", type=float, default=1000.0, help="paced: batches per second, all stations (default 1000)")
    parser.add_argument("--seconds", type=float, default=5.0, help="paced: how long (default 5)")
    parser.add_argument("--dir", type=Path, help="where to put the databases (default: a fresh temp dir; use the "
                                                 "data dir's disk to measure it)")
    args = parser.parse_args()
    if args.stations < 1 or args.rounds < 1 or args.rate <= 0 or args.seconds <= 0:
        parser.error("--stations, --rounds, --rate and --seconds must be positive")
    if args.dir:
        args.dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="bench-fleet-store-", dir=args.dir) as tmp:
        asyncio.run(main_async(Path(tmp), args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
