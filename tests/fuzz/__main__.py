"""``python -m tests.fuzz core|process``: a longer fuzzing run, or the replay of one seed.

    .venv/bin/python -m tests.fuzz core --seconds 600 --seed 7
    .venv/bin/python -m tests.fuzz core --seed 7031 --episodes 1 --events --shrink
    .venv/bin/python -m tests.fuzz process --seconds 600 --seed 7

Exit status 1 when an invariant failed, 0 otherwise. See docs/fuzzing.md.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import random
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.fuzz", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="level", required=True)
    core = sub.add_parser("core", help="fuzz the pure core (fake clock, real store)")
    core.add_argument("--seed", type=int, help="first episode's seed (default: random, printed)")
    core.add_argument("--seconds", type=float, help="wall-time budget (default 60 unless --episodes)")
    core.add_argument("--episodes", type=int, help="number of episodes (seeds SEED, SEED+1, ...)")
    core.add_argument("--steps", type=int, help="events per episode (default: drawn from the seed)")
    core.add_argument("--events", action="store_true", help="print the events leading to each violation")
    core.add_argument("--shrink", action="store_true", help="shrink each violation to a short event list")
    core.add_argument("--replay", type=Path, metavar="FILE",
                      help="replay the JSON event list in FILE (as --shrink prints it) with --seed's episode setup")
    proc = sub.add_parser("process", help="fuzz a real `twin run` process on loopback")
    proc.add_argument("--seed", type=int, help="seed (default: random, printed)")
    proc.add_argument("--seconds", type=float, default=60.0, help="fuzzing time before the final drain")
    proc.add_argument("--keep", action="store_true", help="keep the data dir and logs")
    args = parser.parse_args(argv)
    logging.disable(logging.CRITICAL)  # the station's own log lines would drown the report
    seed = args.seed if args.seed is not None else random.randrange(2**31)
    print(f"fuzz {args.level} seed {seed}", flush=True)
    if args.level == "core":
        return asyncio.run(_core(args, seed))
    return asyncio.run(_process(args, seed))


async def _core(args, seed: int) -> int:
    from tests.fuzz.core_fuzz import events_from_json, events_to_json, format_events, run_core, run_episode, shrink

    if args.replay is not None:
        events = events_from_json(args.replay.read_text(encoding="utf-8"))
        result = await run_episode(seed, events=events, steps=args.steps)
        for v in result.violations:
            print(v)
        print(f"replayed {len(events)} events: {len(result.violations)} violation(s)")
        return 1 if result.violations else 0
    seconds = args.seconds if args.seconds is not None or args.episodes is not None else 60.0
    report = await run_core(seed, seconds=seconds, episodes=args.episodes, steps=args.steps)
    print(report.summary())
    for kind, violations in sorted(report.by_kind().items()):
        first = violations[0]
        if args.shrink:
            events = await shrink(first, steps=args.steps)
            print(f"\n[{kind}] seed {first.seed}: {len(first.events)} events shrunk to {len(events)}:")
            print(format_events(events))
            print(f"  as JSON (for --seed {first.seed} --replay FILE): {events_to_json(events)}")
        elif args.events:
            print(f"\n[{kind}] seed {first.seed}: the {len(first.events)} events up to step {first.step}:")
            print(format_events(first.events))
    return 1 if report.violations else 0


async def _process(args, seed: int) -> int:
    from tests.fuzz.process_fuzz import run_process

    report = await run_process(seed, seconds=args.seconds, keep=args.keep)
    print(report.summary())
    return 1 if report.violations else 0


if __name__ == "__main__":
    sys.exit(main())
