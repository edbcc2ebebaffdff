"""``twin scenario run FILE... --csms URL [--id ID] [--junit OUT.xml]`` and ``twin scenario list``.

Exit status: 0 when every scenario passed, 1 when one failed (or its station could not
run), 2 when a scenario file is broken (nothing is run then).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys


def add_scenario_subcommands(sub) -> None:
    p = sub.add_parser("scenario", help="run scenarios against a CSMS and report PASS/FAIL (JUnit for CI)")
    ssub = p.add_subparsers(dest="scenario_command", required=True)
    run = ssub.add_parser("run", help="run scenario files (or builtin:NAME) against a CSMS")
    run.add_argument("files", nargs="+", metavar="FILE", help="a scenario TOML file, or builtin:NAME")
    run.add_argument("--csms", dest="csms_url", required=True, help="the CSMS under test, e.g. ws://127.0.0.1:9000/ocpp")
    run.add_argument("--id", dest="charge_point_id", help="chargePointId (default: a generated TWIN-SCN-xxxxxxxx)")
    run.add_argument("--junit", metavar="OUT.xml", help="write a JUnit XML report here")
    run.add_argument("-v", "--verbose", action="store_true", help="log the station's own lines too")
    ssub.add_parser("list", help="list the built-in scenarios")


def run_scenario_command(args: argparse.Namespace) -> int:
    from twin.scenario import library
    from twin.scenario.parse import ScenarioError

    if args.scenario_command == "list":
        for name in library.names():
            sc = library.builtin(name)
            print(f"builtin:{name:<28} {sc.description.splitlines()[0] if sc.description else sc.name}")
            if sc.csms_behaviour:
                print(f"{'':<37} CSMS must: {sc.csms_behaviour}")
            sends = library.csms_sends(sc)
            if sends:
                print(f"{'':<37} CSMS sends: {', '.join(sends)} (triggered on your side while it runs)")
        return 0
    try:
        scenarios = [library.resolve(f) for f in args.files]
    except ScenarioError as e:
        print(f"twin scenario: {e}", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO if args.verbose else logging.CRITICAL,
                        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s")
    from twin.scenario.report import summary, write_junit
    from twin.scenario.run import run_all

    results = asyncio.run(run_all(scenarios, args.csms_url, args.charge_point_id))
    print(summary(results))
    if args.junit:
        try:
            write_junit(results, args.junit)
        except OSError as e:
            print(f"twin scenario: cannot write {args.junit}: {e}", file=sys.stderr)
            return 1
    return 0 if all(r.passed for r in results) else 1
