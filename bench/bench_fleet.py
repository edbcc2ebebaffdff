"""Fleet benchmark: ``twin fleet`` processes of N stations, printed as a markdown table.

    python bench/bench_fleet.py [--stations 100,500,1000] [--idle-s 30]

For each N: a real ``python -m twin fleet --count N --boot-spread 0`` process against a
minimal loopback CSMS that runs in this (the bench's) process (twin.fleet.loopback: Accepted
boots, heartbeat interval 30 s, the default). Measured, from /proc of the fleet process:

- time from spawning the process until the CSMS has answered every member's BootNotification
  Accepted (interpreter start-up included), then checked against the fleet's own
  ``GET /api/stations`` count of registered members;
- RSS after ``--idle-s`` seconds of idling (heartbeats, websocket pings, idle meter polls);
- idle CPU: utime + stime over those ``--idle-s`` seconds, in % of one core (nothing polls
  the fleet meanwhile).

Targets (issue): 1,000 stations in one process: <= 250 MiB RSS, all registered <= 20 s,
idle CPU <= 5 % of one core. Reference row: the biggest peer runs 100 simulated stations in
about 490 MiB in one Node process (its published figure; not measured here).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from twin.fleet.loopback import LoopbackCsms  # noqa: E402

TARGET_N, TARGET_RSS_MIB, TARGET_REG_S, TARGET_CPU = 1000, 250.0, 20.0, 5.0
CLK_TCK = os.sysconf("SC_CLK_TCK")


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime, stime


def threads(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/task"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def api_registered(port: int) -> int:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/stations", timeout=30) as resp:
        return json.load(resp)["registered"]


async def one(n: int, idle_s: float, timeout_s: float) -> dict:
    async with LoopbackCsms(heartbeat_interval=30) as csms:
        with tempfile.TemporaryDirectory(prefix="bench-fleet-") as tmp:
            port = free_port()
            t0 = time.monotonic()
            proc = subprocess.Popen(
                [sys.executable, "-m", "twin", "fleet", "--count", str(n), "--csms", csms.url,
                 "--data-dir", str(Path(tmp) / "fleet"), "--control", f"127.0.0.1:{port}", "--boot-spread", "0",
                 "--log-level", "ERROR"],
                cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
            row: dict = {"n": n}
            try:
                try:
                    await csms.wait_until(lambda: len(csms.boots) >= n, timeout_s, "every boot")
                    row["reg_s"] = time.monotonic() - t0
                except TimeoutError:
                    row["reg_s"] = None
                    row["note"] = f"{len(csms.boots)}/{n} registered after {timeout_s:.0f} s"
                row["api_registered"] = await asyncio.to_thread(api_registered, port)
                await asyncio.sleep(2.0)  # the post-boot StatusNotifications settle
                c0, w0 = cpu_s(proc.pid), time.monotonic()
                await asyncio.sleep(idle_s)
                c1, w1 = cpu_s(proc.pid), time.monotonic()
                row["cpu_pct"] = 100.0 * (c1 - c0) / (w1 - w0)
                row["rss_mib"] = rss_mib(proc.pid)
                row["threads"] = threads(proc.pid)
                row["heartbeats"] = sum(c["Heartbeat"] for c in csms.calls.values())
            finally:
                # A graceful stop closes every websocket: the CSMS (this loop) must keep answering.
                proc.send_signal(signal.SIGTERM)
                t_stop = time.monotonic()
                try:
                    await asyncio.to_thread(proc.wait, 120)
                    row["stop_s"] = time.monotonic() - t_stop
                except subprocess.TimeoutExpired:
                    proc.kill()
                    await asyncio.to_thread(proc.wait)
                    row["note"] = (row.get("note", "") + " did not stop within 120 s of SIGTERM").strip()
            if proc.returncode not in (0, -signal.SIGTERM):
                row["note"] = (row.get("note", "") + f" exit {proc.returncode}: {proc.stderr.read()[-300:]}").strip()
            return row


def verdict(ok: bool) -> str:
    return "met" if ok else "**missed**"


def table(rows: list[dict], idle_s: float) -> str:
    out = [f"| stations | RSS total (MiB) | RSS per station (MiB) | all registered (s) | idle CPU, {idle_s:g} s "
           "(% of one core) | threads | graceful stop (s) | notes |",
           "|---:|---:|---:|---:|---:|---:|---:|---|",
           "| 100 (peer: one Node process) | ≈ 490 | ≈ 4.9 | – | – | – | – | published figure, not measured here |"]
    for r in rows:
        reg = f"{r['reg_s']:.1f}" if r.get("reg_s") is not None else "not all"
        notes = [r.get("note", "")] if r.get("note") else []
        if r.get("api_registered") is not None and r["api_registered"] != r["n"]:
            notes.append(f"API says {r['api_registered']} registered")
        stop = f"{r['stop_s']:.1f}" if r.get("stop_s") is not None else "–"
        out.append(f"| {r['n']} | {r['rss_mib']:.0f} | {r['rss_mib'] / r['n']:.2f} | {reg} | {r['cpu_pct']:.1f} | "
                   f"{r['threads']} | {stop} | {'; '.join(notes)} |")
    target = next((r for r in rows if r["n"] == TARGET_N), None)
    out.append(f"| target: {TARGET_N} | ≤ {TARGET_RSS_MIB:.0f} | ≤ 0.25 | ≤ {TARGET_REG_S:.0f} | ≤ {TARGET_CPU:.0f} | "
               "| | |")
    if target is not None:
        out.append("")
        out.append(f"Targets at {TARGET_N}: RSS {verdict(target['rss_mib'] <= TARGET_RSS_MIB)}, "
                   f"registration {verdict(target.get('reg_s') is not None and target['reg_s'] <= TARGET_REG_S)}, "
                   f"idle CPU {verdict(target['cpu_pct'] <= TARGET_CPU)}.")
    return "\n".join(out)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--stations", default="100,500,1000", help="comma-separated fleet sizes (default 100,500,1000)")
    p.add_argument("--idle-s", type=float, default=30.0, help="idle CPU window (default 30 s)")
    p.add_argument("--timeout-s", type=float, default=300.0, help="give up waiting for registration after this")
    args = p.parse_args()
    sizes = [int(x) for x in args.stations.split(",") if x.strip()]
    rows = []
    for n in sizes:
        print(f"fleet of {n}...", file=sys.stderr, flush=True)
        rows.append(asyncio.run(one(n, args.idle_s, args.timeout_s)))
        print(f"  {rows[-1]}", file=sys.stderr, flush=True)
    print(table(rows, args.idle_s))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
