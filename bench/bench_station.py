"""Station benchmarks (issue 2), printed as a markdown table.

    python bench/bench_station.py [--calls 1000] [--idle-s 60] [--boots 5]

1. RemoteStartTransaction and GetConfiguration request -> confirmation latency, p50/p99
   over ``--calls`` calls each, for the twin (a real ``twin run --sim`` process, every call
   through its core actor) and, in the same run, for a bare charge point on the same
   ``ocpp``/``websockets`` stack that only answers Accepted / a fixed list of 60 keys (also
   its own process). The CSMS is ``twin.csms.Csms`` on loopback.
2. Idle RSS and CPU of ``twin run --sim`` over ``--idle-s`` seconds (from /proc).
3. Process start -> BootNotification received by the CSMS, median of ``--boots`` starts.

Targets (2-core machine): twin p99 <= 1.5x bare p99 and <= 20 ms (each call); idle RSS <= 60 MB;
idle CPU <= 1 %; start -> BootNotification <= 1.5 s.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from twin.csms import Csms  # noqa: E402

BARE_CP = r'''
import asyncio, sys
from datetime import datetime, timezone
import websockets
from ocpp.routing import on
from ocpp.v16 import ChargePoint, call, call_result
from ocpp.v16.enums import Action, RemoteStartStopStatus

KEYS = [{"key": f"Key{i}", "readonly": False, "value": str(i)} for i in range(60)]

class Bare(ChargePoint):
    @on(Action.remote_start_transaction)
    def on_rst(self, id_tag, **kw):
        return call_result.RemoteStartTransaction(status=RemoteStartStopStatus.accepted)

    @on(Action.get_configuration)
    def on_gc(self, **kw):
        return call_result.GetConfiguration(configuration_key=KEYS)

async def main(url):
    async with websockets.connect(url + "/BARE", subprotocols=["ocpp1.6"]) as ws:
        cp = Bare("BARE", ws)
        task = asyncio.create_task(cp.start())
        await cp.call(call.BootNotification(charge_point_model="bare", charge_point_vendor="bench"))
        await task

asyncio.run(main(sys.argv[1]))
'''


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    k = max(0, min(len(values) - 1, round(q / 100 * (len(values) - 1))))
    return values[k]


def twin_cmd(url: str, data_dir: str) -> list[str]:
    return [sys.executable, "-m", "twin", "run", "--sim", "--csms", url, "--id", "TWIN",
            "--data-dir", data_dir, "--control", "127.0.0.1:0"]


def env() -> dict:
    e = dict(os.environ)
    e["PYTHONPATH"] = str(ROOT) + os.pathsep + e.get("PYTHONPATH", "")
    return e


async def wait_boot(csms: Csms, after: int, timeout: float = 20) -> float:
    msg = await csms.wait_for("BootNotification", timeout=timeout, after=after)
    return msg.t


async def latency(csms: Csms, calls: int, action: str, payload: dict) -> list[float]:
    out = []
    for _ in range(calls):
        t0 = time.perf_counter()
        await csms.call(action, payload, timeout=10)
        out.append((time.perf_counter() - t0) * 1000)
    return out


CALLS = (("RemoteStartTransaction", {"connectorId": 1, "idTag": "BENCH"}), ("GetConfiguration", {}))


async def latencies(csms: Csms, calls: int) -> dict[str, list[float]]:
    return {action: await latency(csms, calls, action, payload) for action, payload in CALLS}


async def bench_latency(calls: int, tmp: str) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    csms = Csms(heartbeat_interval=3600)
    await csms.start()
    try:
        bare = subprocess.Popen([sys.executable, "-c", BARE_CP, csms.url], env=env())
        mark = csms.mark()
        await wait_boot(csms, mark)
        await asyncio.sleep(0.5)
        bare_ms = await latencies(csms, calls)
        bare.terminate()
        bare.wait(10)
        await csms.wait_disconnected(timeout=10)
        mark = csms.mark()
        proc = subprocess.Popen(twin_cmd(csms.url, tmp), env=env(), stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        await wait_boot(csms, mark)
        await asyncio.sleep(1.0)
        # Every call runs the real path: schema validation, core, Authorize (AuthorizeRemoteTxRequests=true).
        twin_ms = await latencies(csms, calls)
        proc.terminate()
        proc.wait(20)
    finally:
        await csms.stop()
    return twin_ms, bare_ms


def proc_cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def proc_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


async def bench_idle(idle_s: float, tmp: str) -> tuple[float, float]:
    csms = Csms(heartbeat_interval=30)
    await csms.start()
    try:
        mark = csms.mark()
        proc = subprocess.Popen(twin_cmd(csms.url, tmp), env=env(), stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        await wait_boot(csms, mark)
        await asyncio.sleep(3)  # let start-up settle
        cpu0, t0 = proc_cpu_s(proc.pid), time.monotonic()
        await asyncio.sleep(idle_s)
        cpu1, t1 = proc_cpu_s(proc.pid), time.monotonic()
        rss = proc_rss_mb(proc.pid)
        proc.terminate()
        proc.wait(20)
    finally:
        await csms.stop()
    return rss, 100.0 * (cpu1 - cpu0) / (t1 - t0)


async def bench_boot(boots: int, tmp: str) -> list[float]:
    out = []
    csms = Csms(heartbeat_interval=3600)
    await csms.start()
    try:
        for i in range(boots):
            mark = csms.mark()
            t0 = time.monotonic()
            proc = subprocess.Popen(twin_cmd(csms.url, f"{tmp}/boot{i}"), env=env(), stdout=subprocess.DEVNULL,
                                    stderr=subprocess.DEVNULL)
            t_boot = await wait_boot(csms, mark)
            out.append(t_boot - t0)
            proc.terminate()
            proc.wait(20)
            await csms.wait_disconnected(timeout=10)
    finally:
        await csms.stop()
    return out


def verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


async def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--calls", type=int, default=1000)
    ap.add_argument("--idle-s", type=float, default=60.0)
    ap.add_argument("--boots", type=int, default=5)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="twin-bench-") as tmp:
        twin_ms, bare_ms = await bench_latency(args.calls, f"{tmp}/lat")
        rss, cpu = await bench_idle(args.idle_s, f"{tmp}/idle")
        boot = await bench_boot(args.boots, tmp)
    boot_med = statistics.median(boot)
    rows = []
    for action, _payload in CALLS:
        t50, t99 = pct(twin_ms[action], 50), pct(twin_ms[action], 99)
        b50, b99 = pct(bare_ms[action], 50), pct(bare_ms[action], 99)
        rows += [
            (f"{action} p50, bare ocpp stack", f"{b50:.2f} ms", "(reference)", ""),
            (f"{action} p99, bare ocpp stack", f"{b99:.2f} ms", "(reference)", ""),
            (f"{action} p50, twin", f"{t50:.2f} ms", "", ""),
            (f"{action} p99, twin", f"{t99:.2f} ms", "<= 1.5x bare p99 and <= 20 ms",
             verdict(t99 <= 1.5 * b99 and t99 <= 20)),
        ]
    rows += [
        (f"idle RSS after {args.idle_s:.0f} s", f"{rss:.1f} MB", "<= 60 MB", verdict(rss <= 60)),
        (f"idle CPU over {args.idle_s:.0f} s", f"{cpu:.2f} %", "<= 1 %", verdict(cpu <= 1.0)),
        (f"start -> BootNotification (median of {args.boots})", f"{boot_med:.2f} s", "<= 1.5 s",
         verdict(boot_med <= 1.5)),
    ]
    print(f"\n### Station benchmarks ({args.calls} calls, {os.cpu_count()} cores)\n")
    print("| measure | value | target | verdict |\n| --- | ---: | --- | --- |")
    for r in rows:
        print(f"| {r[0]} | {r[1]} | {r[2]} | {r[3]} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(asyncio.run(main()))
