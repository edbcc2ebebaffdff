"""Benchmark: GetCompositeSchedule computation, 10 stacked profiles x 24 periods on 2 connectors.

Run: ``python bench/bench_composite.py``. Prints a markdown table (p50/p99 per case,
the 2 ms p99 target, PASS/FAIL) and exits 0 either way; the verdict is in the table.

Setup (the heaviest the station's limits allow, scaled up): both connectors charge;
connector 1 has 10 TxProfiles and connector 2 has 10 connector-specific TxDefaultProfiles
(stack levels 0..9), connector 0 holds 10 ChargePointMaxProfiles; 30 profiles, each with
24 periods whose boundaries do not line up, A and W mixed, numberPhases mixed. Kinds mix
Absolute, Recurring Daily and Relative; each higher level ends earlier, so lower levels
show through in turn (errata 3.43), and the ChargePointMax sharing between the two
charging connectors is evaluated at every boundary. The composite covers one day
(86 400 s); the "periods out" column shows how many periods the answer has.
"""

from __future__ import annotations

import gc
import statistics
import sys
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from twin.core.smart_charging import SmartCharging, TxInfo  # noqa: E402

TARGET_P99_S = 0.002
NOW = datetime(2024, 5, 1, 12, 0, 0, tzinfo=timezone.utc)
DAY = 86_400
ROUNDS = 400  # per case; keeps the whole run to a few seconds


def _periods(seed: int) -> list[dict]:
    step = DAY // 24
    return [{"startPeriod": 0 if i == 0 else i * step + 37 * seed + 11, "limit": 6 + (i * 7 + seed * 3) % 26,
             **({"numberPhases": 1 + (i + seed) % 3} if i % 4 == 0 else {})} for i in range(24)]


def _profile(profile_id: int, purpose: str, level: int, seed: int, **extra: object) -> dict:
    kinds = ("Absolute", "Recurring", "Relative")
    kind = "Absolute" if purpose == "ChargePointMaxProfile" and level % 3 == 2 else kinds[level % 3]
    schedule: dict = {"chargingRateUnit": "A" if level % 2 else "W",
                      "chargingSchedulePeriod": _periods(seed)}
    if schedule["chargingRateUnit"] == "W":
        for period in schedule["chargingSchedulePeriod"]:
            period["limit"] = float(period["limit"] * 230 * period.get("numberPhases", 3))
    if kind != "Relative":
        schedule["startSchedule"] = (NOW - timedelta(seconds=3600 * level + 13)).strftime("%Y-%m-%dT%H:%M:%SZ")
    # Higher levels end earlier, so each lower level shows through somewhere (errata 3.43).
    schedule["duration"] = DAY - 5000 * level
    body = {"chargingProfileId": profile_id, "stackLevel": level, "chargingProfilePurpose": purpose,
            "chargingProfileKind": kind, "chargingSchedule": schedule, **extra}
    if kind == "Recurring":
        body["recurrencyKind"] = "Daily"
    return body


def build() -> tuple[SmartCharging, dict[int, TxInfo]]:
    station = SmartCharging(2, max_installed=30, max_periods=24, max_stack_level=10)
    txs = {1: TxInfo(101, NOW - timedelta(seconds=1234)), 2: TxInfo(102, NOW - timedelta(seconds=77))}
    for level in range(10):
        checks = [
            station.set_profile(0, _profile(100 + level, "ChargePointMaxProfile", level, level), NOW, txs),
            station.set_profile(1, _profile(200 + level, "TxProfile", level, level + 1, transactionId=101), NOW, txs),
            station.set_profile(2, _profile(300 + level, "TxDefaultProfile", level, level + 2), NOW, txs),
        ]
        if checks != ["Accepted"] * 3:
            raise SystemExit(f"benchmark setup rejected a profile: {checks} ({station.last_reason})")
    return station, txs


def measure(call, rounds: int) -> list[float]:
    for _ in range(20):  # warm-up
        call()
    samples = []
    gc.disable()
    try:
        for _ in range(rounds):
            start = time.perf_counter()
            call()
            samples.append(time.perf_counter() - start)
    finally:
        gc.enable()
    return samples


def fmt(seconds: float) -> str:
    return f"{seconds * 1e6:.0f} µs" if seconds < 1e-3 else f"{seconds * 1e3:.2f} ms"


def main() -> int:
    station, txs = build()
    cases = [
        ("connector 1, 86400 s, A", lambda: station.composite(1, NOW, DAY, "A", txs)),
        ("connector 2, 86400 s, W", lambda: station.composite(2, NOW, DAY, "W", txs)),
        ("connector 0 (station), 86400 s", lambda: station.composite(0, NOW, DAY, None, txs)),
        ("connector 1, 3600 s, A", lambda: station.composite(1, NOW, 3600, "A", txs)),
    ]
    periods = {name: len(call()["chargingSchedule"]["chargingSchedulePeriod"]) for name, call in cases}
    print("## Composite schedule: 10 stacked profiles x 24 periods, 2 connectors\n")
    print(f"Python {sys.version.split()[0]}, {ROUNDS} rounds per case, target p99 <= {fmt(TARGET_P99_S)}\n")
    print("| case | periods out | p50 | p99 | target p99 | result |")
    print("| --- | ---: | ---: | ---: | ---: | --- |")
    all_pass = True
    for name, call in cases:
        samples = measure(call, ROUNDS)
        p50 = statistics.median(samples)
        p99 = statistics.quantiles(samples, n=100)[98]
        verdict = "PASS" if p99 <= TARGET_P99_S else "FAIL"
        all_pass &= verdict == "PASS"
        print(f"| {name} | {periods[name]} | {fmt(p50)} | {fmt(p99)} | {fmt(TARGET_P99_S)} | {verdict} |")
    print(f"\nOverall: {'PASS' if all_pass else 'FAIL'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
