"""Fleet benchmark: ``twin fleet`` processes of N stations, printed as a markdown table.

    python bench/bench_fleet.py [--stations 100,500,1000] [--idle-s 30] [--traffic-s 30]

For each N: a real ``python -m twin fleet --count N --boot-spread 0`` process against a
minimal loopback CSMS that runs in this (the bench's) process (twin.fleet.loopback: Accepted
boots, heartbeat interval 30 s, the default). Measured, from /proc of the fleet process:

- time from spawning the process until the CSMS has answered every member's BootNotification
  Accepted (interpreter start-up included), then checked against the fleet's own
  ``GET /api/stations`` count of registered members;
- RSS after ``--idle-s`` seconds of idling (heartbeats, websocket pings, idle meter polls);
- idle CPU: utime + stime over those ``--idle-s`` seconds, in % of one core (nothing polls
  the fleet meanwhile);
- the CPU cost of traffic (twin.fleet.traffic, ``POST /api/fleet/traffic``) at 1 session per
  station per hour, mean session 30 min, in its steady state: about 0.5 sessions under way per
  station (arrival rate x mean length). Reaching that from an idle fleet takes hours, so a
  warm-up of ``--warmup-s`` seconds runs the traffic at the rate that starts 0.5 sessions per
  station in that time (the same 30 min mean), then the rate drops to 1 per hour (the sessions
  under way keep their drawn ends) and the CPU is measured over ``--traffic-s`` seconds;
- kill -9 of the fleet under that traffic, a restart on the same data dir (no traffic): the
  time from spawning the new process until every member's BootNotification was accepted
  again, and until every interrupted transaction's StopTransaction (PowerLoss) has come; then,
  once every member's queue (``GET /api/stations/{id}/state``) is empty, what was lost (a
  StartTransaction without a StopTransaction) or duplicated (a message received twice: allowed
  once for the last transaction message of a connection, at-least-once, OCPP 1.6 §3.7);
- the traffic scheduler alone for ``--scheduler-stations`` (default 10,000) stations at 1
  session per station per hour, in this process, over members that are all down (every arrival
  is drawn, scheduled and skipped): the fixed cost of the one heap and its task, without the
  stations' own work.

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
TRAFFIC_RATE, TRAFFIC_MEAN_S, STEADY_ACTIVE = 1.0, 1800.0, 0.5  # per station: 1/h x 0.5 h = 0.5 under way
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
    return api_get(port, "/api/stations")["registered"]


def api_get(port: int, path: str) -> dict:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=30) as resp:
        return json.load(resp)


def api_post(port: int, path: str, body: dict) -> dict:
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"}, method="POST")
    with urllib.request.urlopen(req, timeout=30) as resp:
        return json.load(resp)


def queues_empty(port: int, ids: list[str]) -> bool:
    return all(api_get(port, f"/api/stations/{i}/state")["queue"]["length"] == 0 for i in ids)


def stopped(csms: LoopbackCsms) -> set[int]:
    return {p["transactionId"] for msgs in csms.ledger.values() for _c, a, p in msgs if a == "StopTransaction"}


def ledger_check(csms: LoopbackCsms) -> dict:
    """Lost and duplicated transaction messages in the CSMS's ledger (twin.fleet.loopback)."""
    resent = other_dups = 0
    for msgs in csms.ledger.values():
        last_on_conn = {conn: i for i, (conn, _a, _p) in enumerate(msgs)}
        seen: dict[str, int] = {}
        for i, (_conn, action, payload) in enumerate(msgs):
            key = action + json.dumps(payload, sort_keys=True)
            j = seen.get(key)
            if j is not None:
                if last_on_conn[msgs[j][0]] == j:
                    resent += 1  # its confirmation may have died with the process: at-least-once
                else:
                    other_dups += 1
            seen[key] = i
    done = stopped(csms)
    return {"lost": sum(1 for tid in csms.start_ids.values() if tid not in done), "resent": resent,
            "other_dups": other_dups}


def spawn(n: int, csms_url: str, data_dir: Path, port: int) -> subprocess.Popen:
    # stderr to a file, not a pipe: a pipe nobody reads until the end fills up (64 KiB) and
    # blocks the fleet's next log line, and the whole fleet with it.
    data_dir.parent.mkdir(parents=True, exist_ok=True)
    with open(data_dir.parent / "fleet.stderr", "a") as err:
        return subprocess.Popen(
            [sys.executable, "-m", "twin", "fleet", "--count", str(n), "--csms", csms_url,
             "--data-dir", str(data_dir), "--control", f"127.0.0.1:{port}", "--boot-spread", "0",
             "--log-level", "ERROR"],
            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=err, text=True)


async def traffic_and_kill(csms: LoopbackCsms, proc: subprocess.Popen, n: int, data_dir: Path, port: int,
                           warmup_s: float, traffic_s: float, timeout_s: float, row: dict) -> subprocess.Popen:
    """The traffic CPU row and the kill -9 row; returns the process that runs at the end."""
    warmup_rate = STEADY_ACTIVE / warmup_s * 3600.0
    await asyncio.to_thread(api_post, port, "/api/fleet/traffic",
                            {"sessions_per_hour": warmup_rate, "seed": 1, "mean_duration_s": TRAFFIC_MEAN_S})
    await asyncio.sleep(warmup_s)
    t = await asyncio.to_thread(api_post, port, "/api/fleet/traffic",
                                {"sessions_per_hour": TRAFFIC_RATE, "seed": 2, "mean_duration_s": TRAFFIC_MEAN_S})
    row["active_start"] = t["sessions"]["active"]
    c0, w0 = cpu_s(proc.pid), time.monotonic()
    await asyncio.sleep(traffic_s)
    c1, w1 = cpu_s(proc.pid), time.monotonic()
    row["traffic_cpu_pct"] = 100.0 * (c1 - c0) / (w1 - w0)
    t = (await asyncio.to_thread(api_get, port, "/api/stations"))["traffic"]
    row["active_end"], row["traffic_started"] = t["sessions"]["active"], t["sessions"]["started"]
    row["traffic_failed"] = t["sessions"]["failed"]
    # kill -9 with the sessions under way, then a restart on the same data dir.
    proc.send_signal(signal.SIGKILL)
    await asyncio.to_thread(proc.wait)
    boots = dict(csms.boots)
    row["interrupted"] = len(set(csms.start_ids.values()) - stopped(csms))
    t0 = time.monotonic()
    proc = spawn(n, csms.url, data_dir, port)
    ids = sorted(boots)
    try:
        await csms.wait_until(lambda: all(csms.boots[i] > boots[i] for i in ids), timeout_s, "every re-boot")
        row["rereg_s"] = time.monotonic() - t0
    except TimeoutError:
        row["rereg_s"] = None
        row["note"] = (row.get("note", "") + f" {sum(csms.boots[i] > boots[i] for i in ids)}/{n} re-registered").strip()
        return proc
    try:
        await csms.wait_until(lambda: len(stopped(csms)) >= len(csms.start_ids), timeout_s, "every interrupted stop")
        row["stops_s"] = time.monotonic() - t0
    except TimeoutError:
        row["stops_s"] = None
    # Then every member's queue, through the API (not timed: N requests take a while themselves).
    end = time.monotonic() + timeout_s
    while not (empty := await asyncio.to_thread(queues_empty, port, ids)) and time.monotonic() < end:
        await asyncio.sleep(1.0)
    row["queues_empty"] = empty
    row.update(ledger_check(csms))
    return proc


async def one(n: int, idle_s: float, timeout_s: float, warmup_s: float = 0.0, traffic_s: float = 0.0) -> dict:
    async with LoopbackCsms(heartbeat_interval=30, ledger=traffic_s > 0) as csms:
        with tempfile.TemporaryDirectory(prefix="bench-fleet-") as tmp:
            port = free_port()
            t0 = time.monotonic()
            proc = spawn(n, csms.url, Path(tmp) / "fleet", port)
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
                if traffic_s > 0:
                    proc = await traffic_and_kill(csms, proc, n, Path(tmp) / "fleet", port, warmup_s, traffic_s,
                                                  timeout_s, row)
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
                row["note"] = (row.get("note", "") + f" exit {proc.returncode}: "
                               f"{(Path(tmp) / 'fleet.stderr').read_text(errors='replace')[-300:]}").strip()
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


async def scheduler_only(n: int, seconds: float) -> dict:
    from types import SimpleNamespace

    from twin.fleet.member import member_ids
    from twin.fleet.traffic import Traffic

    fleet = SimpleNamespace(slots=dict.fromkeys(member_ids("P", n)), member=lambda _sid: None)
    traffic = Traffic(fleet)
    c0 = time.process_time()
    traffic.configure(TRAFFIC_RATE, seed=1, mean_duration_s=TRAFFIC_MEAN_S)
    configure_s = time.process_time() - c0
    c0, w0 = time.process_time(), time.monotonic()
    await asyncio.sleep(seconds)
    c1, w1 = time.process_time(), time.monotonic()
    arrivals = traffic.counts["skipped"]
    await traffic.stop()
    return {"n": n, "configure_s": configure_s, "cpu_pct": 100.0 * (c1 - c0) / (w1 - w0), "arrivals": arrivals,
            "seconds": w1 - w0}


def traffic_table(rows: list[dict], idle_s: float, traffic_s: float) -> str:
    out = [f"| stations | idle CPU, {idle_s:g} s (% of one core) | traffic CPU, {traffic_s:g} s, 1 session/station/h "
           "(% of one core) | sessions under way (start → end of window) | kill -9 → all re-registered (s) | "
           "→ every interrupted transaction's StopTransaction in (s) | transactions interrupted | lost | "
           "sent twice (at-least-once / other) | queues empty after |",
           "|---:|---:|---:|---:|---:|---:|---:|---:|---|---|"]
    for r in rows:
        if "traffic_cpu_pct" not in r:
            continue
        rereg = f"{r['rereg_s']:.1f}" if r.get("rereg_s") is not None else "not all"
        drained = f"{r['stops_s']:.1f}" if r.get("stops_s") is not None else "not all"
        out.append(f"| {r['n']} | {r['cpu_pct']:.1f} | {r['traffic_cpu_pct']:.1f} | {r['active_start']} → "
                   f"{r['active_end']} | {rereg} | {drained} | {r.get('interrupted', '–')} | {r.get('lost', '–')} | "
                   f"{r.get('resent', '–')} / {r.get('other_dups', '–')} | {'yes' if r.get('queues_empty') else '**no**'} |")
    return "\n".join(out)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--stations", default="100,500,1000", help="comma-separated fleet sizes (default 100,500,1000)")
    p.add_argument("--idle-s", type=float, default=30.0, help="idle CPU window (default 30 s)")
    p.add_argument("--timeout-s", type=float, default=300.0, help="give up waiting for registration after this")
    p.add_argument("--traffic-s", type=float, default=30.0,
                   help="traffic CPU window, then the kill -9 row (default 30 s; 0: neither)")
    p.add_argument("--warmup-s", type=float, default=20.0, help="traffic warm-up to its steady state (default 20 s)")
    p.add_argument("--scheduler-stations", type=int, default=10_000,
                   help="stations for the scheduler-alone row (default 10000; 0: skip it)")
    args = p.parse_args()
    sizes = [int(x) for x in args.stations.split(",") if x.strip()]
    rows = []
    for n in sizes:
        print(f"fleet of {n}...", file=sys.stderr, flush=True)
        rows.append(asyncio.run(one(n, args.idle_s, args.timeout_s, args.warmup_s, args.traffic_s)))
        print(f"  {rows[-1]}", file=sys.stderr, flush=True)
    print(table(rows, args.idle_s))
    if args.traffic_s > 0:
        print()
        print(traffic_table(rows, args.idle_s, args.traffic_s))
        if args.scheduler_stations > 0:
            r = asyncio.run(scheduler_only(args.scheduler_stations, args.traffic_s))
            print()
            print(f"Traffic scheduler alone, {r['n']} stations at {TRAFFIC_RATE:g} session/station/h "
                  f"(members down, arrivals skipped): {r['cpu_pct']:.2f} % of one core over {r['seconds']:.0f} s "
                  f"({r['arrivals']} arrivals); configure: {r['configure_s'] * 1000:.0f} ms CPU.")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
