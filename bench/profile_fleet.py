"""Where an idle fleet's memory, threads and wake-ups go, member by member.

    python bench/profile_fleet.py [--stations 100,1000] [--idle-s 20] [--tracemalloc]

For each N: a fleet (twin.fleet.Fleet, plus its control API, as ``twin fleet`` runs it) in
THIS process, against the minimal loopback CSMS (twin.fleet.loopback) in a child process, so
that the CPU and RSS read from /proc/self are the fleet's alone. After every member is
registered and the post-boot traffic has settled, three windows of ``--idle-s`` each:

1. clean: idle CPU (utime + stime of this process, % of one core), RSS, threads (by name);
2. instrumented: the event loop's ``_run_once`` iterations per second (each one is a return
   from ``select``: a wake-up) and every timer scheduled (``loop.call_at``, which
   ``call_later``, ``asyncio.sleep``, ``wait_for`` and ``asyncio.timeout`` all go through),
   attributed to the innermost project frame (twin/, drivers/) that asked for it;
3. with ``--tracemalloc`` (a separate fleet, traced from before it starts): the Python heap
   per member grouped by the project file that allocated it (innermost twin/ or drivers/
   frame) and by the allocating file itself; plus SQLite's own heap (sqlite3_memory_used,
   not seen by tracemalloc) and glibc's arenas (mallinfo2).

bench/bench_fleet.py measures a real ``twin fleet`` process; this script explains its numbers.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import ctypes
import gc
import json
import os
import re
import socket
import subprocess
import sys
import tempfile
import threading
import time
import tracemalloc
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
PROJECT_DIRS = (str(ROOT / "twin") + os.sep, str(ROOT / "drivers") + os.sep)
CLK_TCK = os.sysconf("SC_CLK_TCK")


# ---------------------------------------------------------------------------- /proc
def rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def cpu_s() -> float:
    fields = Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def thread_cpu_s() -> dict[str, float]:
    """CPU seconds per thread name (the kernel's comm: Python sets it from the thread name)."""
    out: collections.Counter[str] = collections.Counter()
    for tid in os.listdir("/proc/self/task"):
        try:
            comm = Path(f"/proc/self/task/{tid}/comm").read_text().strip()
            fields = Path(f"/proc/self/task/{tid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        out[_thread_group(comm)] += (int(fields[11]) + int(fields[12])) / CLK_TCK
    return dict(out)


def _thread_group(name: str) -> str:
    return re.sub(r"[_-]?\d+(_\d+)?$", "", name) or name


def _task_group(task: asyncio.Task) -> str:
    name = _thread_group(task.get_name())
    if name == "Task":  # unnamed: say which coroutine it runs
        coro = task.get_coro()
        name = f"Task {getattr(coro, '__qualname__', type(coro).__name__)}"
    return name


def threads_by_name() -> dict[str, int]:
    return dict(collections.Counter(_thread_group(t.name) for t in threading.enumerate()))


def sqlite_heap_mib() -> float | None:
    """SQLite's own allocator in use (page caches, schemas, statements): invisible to tracemalloc."""
    try:
        import _sqlite3

        lib = ctypes.CDLL(_sqlite3.__file__)
        fn = lib.sqlite3_memory_used
        fn.restype = ctypes.c_int64
        return fn() / 2**20
    except (OSError, AttributeError):
        return None


class _Mallinfo2(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks",
                 "keepcost")]


def glibc_heap() -> dict | None:
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallinfo2.restype = _Mallinfo2
        m = libc.mallinfo2()
    except (OSError, AttributeError):
        return None
    return {"arena_mib": m.arena / 2**20, "in_use_mib": m.uordblks / 2**20, "free_mib": m.fordblks / 2**20,
            "mmap_mib": m.hblkhd / 2**20}


# ---------------------------------------------------------------------------- the CSMS child
def serve_csms() -> None:
    from twin.fleet.loopback import LoopbackCsms

    async def main() -> None:
        async with LoopbackCsms(heartbeat_interval=30) as csms:
            print(csms.port, flush=True)
            await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)  # until the parent closes it

    asyncio.run(main())


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---------------------------------------------------------------------------- loop instrumentation
def _caller(depth_limit: int = 40) -> str:
    """The innermost project frame (file:function) on the stack, with the library frame below it."""
    f = sys._getframe(2)
    lib = None
    n = 0
    while f is not None and n < depth_limit:
        name = f.f_code.co_filename
        if name.startswith(PROJECT_DIRS):
            where = f"{os.path.relpath(name, ROOT)}:{f.f_code.co_name}"
            return where + (f" via {lib}" if lib else "")
        if lib is None and "asyncio" not in name:
            lib = f"{Path(name).parent.name}/{Path(name).name}:{f.f_code.co_name}"
        f = f.f_back
        n += 1
    return f"(no project frame) {lib}"


class LoopCounter:
    def __init__(self, loop: asyncio.AbstractEventLoop):
        self.loop = loop
        self.iterations = 0
        self.blocking = 0  # iterations that waited in select (nothing was ready)
        self.timers: collections.Counter[str] = collections.Counter()
        self._orig_run_once = loop._run_once  # type: ignore[attr-defined]
        self._orig_call_at = loop.call_at

    def __enter__(self) -> "LoopCounter":
        loop, counter = self.loop, self
        run_once, call_at = self._orig_run_once, self._orig_call_at

        def counted_run_once() -> None:
            counter.iterations += 1
            if not loop._ready:  # type: ignore[attr-defined]
                counter.blocking += 1
            run_once()

        def counted_call_at(when, callback, *args, context=None):
            counter.timers[_caller()] += 1
            return call_at(when, callback, *args, context=context)

        loop._run_once = counted_run_once  # type: ignore[attr-defined]
        loop.call_at = counted_call_at  # type: ignore[method-assign]
        return self

    def __exit__(self, *exc: object) -> None:
        del self.loop._run_once  # type: ignore[attr-defined]
        del self.loop.call_at


# ---------------------------------------------------------------------------- tracemalloc
def _project_frame(tb: tracemalloc.Traceback, line: bool = False) -> str:
    for frame in reversed(tb):  # a Traceback runs from the oldest frame to the most recent
        if frame.filename.startswith(PROJECT_DIRS):
            return os.path.relpath(frame.filename, ROOT) + (f":{frame.lineno}" if line else "")
    return "(outside twin/, drivers/)"


def heap_table(before: tracemalloc.Snapshot, after: tracemalloc.Snapshot, n: int, top: int) -> dict:
    """Per member: bytes by innermost project file, and by allocating file."""
    filt = [tracemalloc.Filter(False, tracemalloc.__file__)]
    before, after = before.filter_traces(filt), after.filter_traces(filt)
    by_project: collections.Counter[str] = collections.Counter()
    by_file: collections.Counter[str] = collections.Counter()
    base_project: collections.Counter[str] = collections.Counter()
    base_file: collections.Counter[str] = collections.Counter()
    by_line: collections.Counter[str] = collections.Counter()
    base_line: collections.Counter[str] = collections.Counter()
    for snap, proj, fil, lin in ((before, base_project, base_file, base_line), (after, by_project, by_file, by_line)):
        # Grouped by whole traceback first: far fewer entries than traces.
        for stat in snap.statistics("traceback"):
            tb = stat.traceback
            proj[_project_frame(tb)] += stat.size
            lin[_project_frame(tb, line=True)] += stat.size
            name = tb[-1].filename  # the frame that allocated
            fil[os.path.relpath(name, ROOT) if name.startswith(str(ROOT)) else _short(name)] += stat.size
    by_project.subtract(base_project)
    by_file.subtract(base_file)
    by_line.subtract(base_line)
    total = sum(by_project.values())
    return {"total_kib_per_member": total / 1024 / n,
            "by_project_file_kib": [(k, round(v / 1024 / n, 1)) for k, v in by_project.most_common(top)],
            "by_alloc_file_kib": [(k, round(v / 1024 / n, 1)) for k, v in by_file.most_common(top)],
            "by_project_line_kib": [(k, round(v / 1024 / n, 1)) for k, v in by_line.most_common(top)]}


def _short(path: str) -> str:
    parts = Path(path).parts
    for anchor in ("site-packages", "lib"):
        if anchor in parts:
            i = len(parts) - 1 - parts[::-1].index(anchor)
            return "/".join(parts[i + 1:])
    return path


async def profile_window(idle_s: float, top: int) -> list:
    """The event loop thread's time by function over one idle window (cProfile: own time
    and cumulative, in ms per second of wall time)."""
    import cProfile
    import pstats

    prof = cProfile.Profile()
    w0 = time.monotonic()
    prof.enable()
    await asyncio.sleep(idle_s)
    prof.disable()
    dt = time.monotonic() - w0
    stats = pstats.Stats(prof)
    rows = []
    for (file, line, func), (cc, nc, tt, ct, _callers) in stats.stats.items():  # type: ignore[attr-defined]
        where = os.path.relpath(file, ROOT) if file.startswith(str(ROOT)) else _short(file)
        rows.append((f"{where}:{line}({func})", round(1000 * tt / dt, 2), round(1000 * ct / dt, 2), round(nc / dt, 1)))
    rows.sort(key=lambda r: -r[1])
    by_cum = sorted(rows, key=lambda r: -r[2])
    return {"own_ms_per_s": rows[:top], "cumulative_ms_per_s": by_cum[:top]}


# ---------------------------------------------------------------------------- one fleet
def _fleet(blueprint, n: int, data_dir: Path, per_member_store: bool):
    import inspect

    from twin.fleet.fleet import Fleet

    kwargs = {}
    if "shared_store" in inspect.signature(Fleet).parameters:  # the fleet's one store (twin.fleet.store)
        kwargs["shared_store"] = not per_member_store
    elif per_member_store is False:
        print("(this tree has no shared fleet store: every member opens its own twin.db)", file=sys.stderr)
    return Fleet(blueprint, n, data_dir=data_dir, boot_spread_s=0, **kwargs)


async def warm_up(csms_port: int, per_member_store: bool) -> None:
    """Start and stop a fleet of 2, so that every module a member imports is loaded before
    tracemalloc starts: the per-member heap then holds no one-time import costs."""
    from twin.config import load_config

    with tempfile.TemporaryDirectory(prefix="profile-fleet-warm-") as tmp:
        blueprint = load_config(None, {"csms_url": f"ws://127.0.0.1:{csms_port}/ocpp", "data_dir": Path(tmp)})
        fleet = _fleet(blueprint, 2, Path(tmp) / "fleet", per_member_store)
        await fleet.start()
        deadline = time.monotonic() + 30
        while fleet.registered() < 2 and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        await asyncio.sleep(1.0)
        await fleet.stop()


async def run_one(n: int, idle_s: float, settle_s: float, traced: bool, top: int, csms_port: int,
                  per_member_store: bool = False, frames: int = 20, cprofile: bool = False) -> dict:
    from twin.config import load_config
    from twin.fleet.api import FleetApi
    row: dict = {"n": n, "tracemalloc": traced, "per_member_store": per_member_store}
    if traced:
        await warm_up(csms_port, per_member_store)
        tracemalloc.start(frames)
    loop = asyncio.get_running_loop()
    with tempfile.TemporaryDirectory(prefix="profile-fleet-") as tmp:
        blueprint = load_config(None, {"csms_url": f"ws://127.0.0.1:{csms_port}/ocpp", "data_dir": Path(tmp),
                                       "control": f"127.0.0.1:{free_port()}"})
        gc.collect()
        row["rss_before_mib"] = rss_mib()
        snap0 = tracemalloc.take_snapshot() if traced else None
        fleet = _fleet(blueprint, n, Path(tmp) / "fleet", per_member_store)
        api = FleetApi.from_blueprint(fleet, blueprint)
        await api.start()
        t0 = time.monotonic()
        await fleet.start()
        try:
            deadline = t0 + 300
            while fleet.registered() < n and time.monotonic() < deadline:
                await asyncio.sleep(0.2)
            row["registered"] = fleet.registered()
            row["reg_s"] = round(time.monotonic() - t0, 1)
            await asyncio.sleep(settle_s)  # the post-boot StatusNotifications, first meter reads
            gc.collect()
            if traced:
                snap1 = tracemalloc.take_snapshot()
                row["heap"] = heap_table(snap0, snap1, n, top)
                row["traced_mib"] = tracemalloc.get_traced_memory()[0] / 2**20
            # 1. clean
            c0, w0, tc0 = cpu_s(), time.monotonic(), thread_cpu_s()
            await asyncio.sleep(idle_s)
            c1, w1, tc1 = cpu_s(), time.monotonic(), thread_cpu_s()
            row["cpu_pct"] = round(100.0 * (c1 - c0) / (w1 - w0), 2)
            row["cpu_by_thread_pct"] = {k: round(100.0 * (tc1.get(k, 0) - v) / (w1 - w0), 2)
                                        for k, v in tc0.items() if tc1.get(k, 0) - v > 0}
            row["rss_mib"] = round(rss_mib(), 1)
            row["rss_fleet_mib"] = round(row["rss_mib"] - row["rss_before_mib"], 1)
            row["threads"] = len(os.listdir("/proc/self/task"))
            row["threads_by_name"] = threads_by_name()
            row["tasks"] = len(asyncio.all_tasks())
            row["tasks_by_name"] = dict(collections.Counter(
                _task_group(t) for t in asyncio.all_tasks()).most_common(top))
            row["sqlite_heap_mib"] = sqlite_heap_mib()
            row["glibc"] = glibc_heap()
            # 2. instrumented
            with LoopCounter(loop) as lc:
                w0 = time.monotonic()
                await asyncio.sleep(idle_s)
                w1 = time.monotonic()
            dt = w1 - w0
            row["wakeups_per_s"] = round(lc.iterations / dt, 1)
            row["blocking_wakeups_per_s"] = round(lc.blocking / dt, 1)
            row["timers_per_s"] = round(sum(lc.timers.values()) / dt, 1)
            row["timers_per_s_by_caller"] = [(k, round(v / dt, 2)) for k, v in lc.timers.most_common(top)]
            if cprofile:
                row["cprofile_top"] = await profile_window(idle_s, top)
        finally:
            t1 = time.monotonic()
            await fleet.stop()
            await api.stop()
            row["stop_s"] = round(time.monotonic() - t1, 1)
    return row


def run_size(n: int, args) -> dict:
    csms = subprocess.Popen([sys.executable, __file__, "--serve-csms"], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        port = int(csms.stdout.readline())
        try:
            return asyncio.run(run_one(n, args.idle_s, args.settle_s, args.tracemalloc, args.top, port,
                                       args.per_member_store, args.frames, args.cprofile))
        finally:
            if tracemalloc.is_tracing():
                tracemalloc.stop()
    finally:
        csms.stdin.close()
        try:
            csms.wait(10)
        except subprocess.TimeoutExpired:
            csms.kill()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--stations", default="100,1000")
    p.add_argument("--idle-s", type=float, default=20.0)
    p.add_argument("--settle-s", type=float, default=5.0)
    p.add_argument("--tracemalloc", action="store_true", help="trace the Python heap (slow; one fleet per size)")
    p.add_argument("--cprofile", action="store_true",
                   help="a fourth window under cProfile: the loop thread's CPU by function (own time)")
    p.add_argument("--per-member-store", action="store_true",
                   help="each member opens its own twin.db (the fleet before its shared store), to compare")
    p.add_argument("--frames", type=int, default=20, help="tracemalloc frames kept per allocation")
    p.add_argument("--top", type=int, default=25)
    p.add_argument("--json", type=Path, help="also write the rows here")
    p.add_argument("--serve-csms", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.serve_csms:
        serve_csms()
        return 0
    import logging

    logging.basicConfig(level=logging.ERROR)
    rows = []
    for n in [int(x) for x in args.stations.split(",") if x.strip()]:
        print(f"fleet of {n}{' (tracemalloc)' if args.tracemalloc else ''}...", file=sys.stderr, flush=True)
        row = run_size(n, args)
        rows.append(row)
        print(json.dumps(row, indent=1), flush=True)
    print("\n| stations | RSS (MiB) | fleet RSS/station (MiB) | threads | wake-ups/s | timers/s | idle CPU (% of one core) |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['n']} | {r['rss_mib']:.0f} | {r['rss_fleet_mib'] / r['n']:.3f} | {r['threads']} | "
              f"{r['wakeups_per_s']:.0f} | {r['timers_per_s']:.0f} | {r['cpu_pct']:.1f} |")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
