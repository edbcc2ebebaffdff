"""Many stations on one machine, one ``twin fleet`` shard per core: the 10,000-station run.

    python bench/bench_fleet_shards.py                      # 10,000 stations, 2 shards
    python bench/bench_fleet_shards.py --stations 2000 --hold-s 60

Each shard is a real ``twin fleet`` process with its slice of one id range
(``--first``/``--id-width``, as the systemd template and the Ansible role start them), the
default profile (heartbeat 30 s, ``WebSocketPingInterval`` 10 s) and the automatic traffic at
``--traffic`` sessions per station per hour. The CSMS is the minimal loopback one
(``twin.fleet.loopback``) in this process, which also runs on the same two cores. The table:
time until every station's BootNotification was accepted, then over the hold window each
shard's RSS and CPU, the heartbeats and sessions the CSMS received against what the
configuration asks for, and how many stations are still connected at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from bench_fleet import cpu_s, free_port, rss_mib, threads  # noqa: E402

from twin.fleet.loopback import LoopbackCsms  # noqa: E402

HEARTBEAT_S = 30


def spawn(first: int, count: int, width: int, url: str, data: Path, port: int, args) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "twin", "fleet", "--count", str(count), "--first", str(first),
           "--id-width", str(width), "--csms", url, "--data-dir", str(data), "--control", f"127.0.0.1:{port}",
           "--boot-spread", str(args.boot_spread), "--seed", str(first)]
    if args.traffic:
        cmd += ["--traffic", str(args.traffic)]
    return subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=open(data.parent / f"{data.name}.log", "w"),
                            env={**os.environ, "PYTHONPATH": str(ROOT)})


def total(csms: LoopbackCsms, action: str) -> int:
    return sum(c[action] for c in csms.calls.values())


async def main(args) -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # the CSMS holds every station's socket
    if hard < args.stations + 100:
        print(f"open files limit {hard} < {args.stations} stations: raise it (ulimit -Hn)", file=sys.stderr)
        return 2
    n, shards = args.stations, args.shards
    width = max(4, len(str(n)))
    sizes = [n // shards + (1 if i < n % shards else 0) for i in range(shards)]
    procs: list[subprocess.Popen] = []
    with tempfile.TemporaryDirectory(prefix="bench-shards-") as tmp:
        async with LoopbackCsms(heartbeat_interval=HEARTBEAT_S) as csms:
            t0 = time.monotonic()
            first = 1
            for k, size in enumerate(sizes):
                procs.append(spawn(first, size, width, csms.url, Path(tmp) / f"shard{k}", free_port(), args))
                first += size
            try:
                registered_s = None
                while time.monotonic() - t0 < args.timeout_s:
                    if len(csms.boots) >= n:
                        registered_s = time.monotonic() - t0
                        break
                    if any(p.poll() is not None for p in procs):
                        print("a shard exited early; see its log in", tmp, file=sys.stderr)
                        return 1
                    await asyncio.sleep(0.5)
                registered = len(csms.boots)
                # The hold window: heartbeats, pings and the traffic, as configured.
                hb0, st0, sp0 = total(csms, "Heartbeat"), total(csms, "StartTransaction"), total(csms, "StopTransaction")
                cpu0 = [cpu_s(p.pid) for p in procs]
                h0 = time.monotonic()
                await asyncio.sleep(args.hold_s)
                held = time.monotonic() - h0
                cpu = [100 * (cpu_s(p.pid) - c) / held for p, c in zip(procs, cpu0)]
                rss = [rss_mib(p.pid) for p in procs]
                thr = [threads(p.pid) for p in procs]
                hb = total(csms, "Heartbeat") - hb0
                starts = total(csms, "StartTransaction") - st0
                stops = total(csms, "StopTransaction") - sp0
                connected = len(csms.connected)
                reboots = sum(1 for c in csms.boots.values() if c > 1)
            finally:
                for p in procs:
                    if p.poll() is None:
                        p.send_signal(signal.SIGTERM)
                stop0 = time.monotonic()
                for p in procs:
                    try:
                        p.wait(timeout=120)
                    except subprocess.TimeoutExpired:
                        p.kill()
                        p.wait()
                stop_s = time.monotonic() - stop0
    print(f"\n{n} stations in {shards} shards (ids width {width}), boot spread {args.boot_spread:g} s, "
          f"traffic {args.traffic:g} session/station/h, hold {held:.0f} s\n")
    print("| shard | stations | RSS (MiB) | RSS per station (MiB) | CPU, hold (% of one core) | threads |")
    print("|---:|---:|---:|---:|---:|---:|")
    for k, size in enumerate(sizes):
        print(f"| {k} | {size} | {rss[k]:.0f} | {rss[k] / size:.3f} | {cpu[k]:.1f} | {thr[k]} |")
    print(f"| all | {n} | {sum(rss):.0f} | {sum(rss) / n:.3f} | {sum(cpu):.1f} | {sum(thr)} |\n")
    reg = f"{registered_s:.1f} s" if registered_s is not None else f"NOT within {args.timeout_s:g} s ({registered}/{n})"
    expected_sessions = n * args.traffic / 3600 * held
    print("| measure | measured | configured |")
    print("|---|---:|---:|")
    print(f"| all registered after start | {reg} | boot spread {args.boot_spread:g} s |")
    print(f"| heartbeats received per s | {hb / held:.0f} | ≤ {n / HEARTBEAT_S:.0f} (one per idle station per {HEARTBEAT_S} s) |")
    print(f"| sessions started in the hold | {starts} | ≈ {expected_sessions:.0f} (Poisson arrivals) |")
    print(f"| sessions stopped in the hold | {stops} | |")
    print(f"| connected at the end | {connected} | {n} |")
    print(f"| stations that booted twice | {reboots} | 0 |")
    print(f"| graceful stop of every shard | {stop_s:.1f} s | |")
    return 0 if registered_s is not None and connected == n and reboots == 0 else 1


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--stations", type=int, default=10_000)
    p.add_argument("--shards", type=int, default=os.cpu_count() or 2, help="fleet processes (default: one per core)")
    p.add_argument("--traffic", type=float, default=1.0, help="sessions per station per hour (default 1)")
    p.add_argument("--boot-spread", type=float, default=60.0, help="each shard's boot spread in s (default 60)")
    p.add_argument("--hold-s", type=float, default=120.0, help="the measured window after registration")
    p.add_argument("--timeout-s", type=float, default=600.0)
    sys.exit(asyncio.run(main(p.parse_args())))
