"""The ``twin`` command line."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import sys
from pathlib import Path

import twin

log = logging.getLogger("twin.cli")


def _add_station_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", type=Path, help="station TOML file (see twin/data/station.example.toml)")
    p.add_argument("--csms", dest="csms_url", help="CSMS websocket URL, e.g. ws://127.0.0.1:9000/ocpp")
    p.add_argument("--id", dest="charge_point_id", help="chargePointId (appended to the CSMS URL)")
    p.add_argument("--data-dir", type=Path, help="where the store, logs and firmware slots live")
    p.add_argument("--control", help="bench control API address HOST:PORT (default 127.0.0.1:8180)")
    p.add_argument("--sim", action="store_true", help="simulate every driver (fake-driver mode)")
    p.add_argument("--profile", type=Path, help="charger profile TOML (default: the iEVQC33; see docs/profiles.md)")


def _overrides(args) -> dict:
    out = {}
    for name in ("csms_url", "charge_point_id", "data_dir", "control", "profile", "trace"):
        value = getattr(args, name, None)
        if value is not None:
            out[name] = value
    if getattr(args, "sim", False):
        out["sim"] = True
    return out


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="twin", description="ocpp-twin: an OCPP 1.6J charging station (XJ Power iEVQC33 twin)")
    parser.add_argument("--version", action="version", version=f"ocpp-twin {twin.__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run one station in the foreground")
    _add_station_args(run)
    run.add_argument("--trace", type=Path, metavar="FILE",
                     help="append every OCPP-J frame, both directions, to FILE as JSON lines (secrets redacted)")

    demo = sub.add_parser("demo", help="start a built-in CSMS and a simulated station, and run a charging session")
    demo.add_argument("--control", default="127.0.0.1:8180", help="control API address (default 127.0.0.1:8180)")
    demo.add_argument("--csms-port", type=int, default=0, help="port of the built-in CSMS (default: any free port)")
    demo.add_argument("--data-dir", type=Path, help="data dir (default: a temporary directory)")
    demo.add_argument("--once", action="store_true", help="exit after the scripted session")
    demo.add_argument("--session-s", type=float, default=20.0, help="how long the demo EV charges")
    demo.add_argument("--security-profile", type=int, choices=[0, 1, 2, 3], default=0,
                      help="OCPP security profile: 1 = HTTP Basic, 2 = TLS + Basic, 3 = TLS client certificate "
                           "(2 and 3 make a private PKI; default 0)")
    demo.add_argument("--pki", type=Path, metavar="DIR",
                      help="the CSMS's private PKI for profiles 2 and 3 (default: <data dir>/csms-pki)")

    queue = sub.add_parser("queue", help="list queued transaction messages from the store (station may be stopped)")
    queue.add_argument("--config", type=Path)
    queue.add_argument("--data-dir", type=Path)
    queue.add_argument("--station", metavar="ID",
                       help="a fleet's data dir (--data-dir holding fleet.db): list this member's messages")
    queue.add_argument("--discarded", action="store_true", help="also list discarded messages")
    queue.add_argument("--json", action="store_true", help="print JSON")

    drv = sub.add_parser("drivers", help="list driver backends and what each configured driver resolves to")
    drv.add_argument("--config", type=Path)
    drv.add_argument("--probe", action="store_true", help="check the configured hardware without starting the station")
    drv.add_argument("--sim", action="store_true")

    try:
        from twin.sim_client import add_sim_subcommands

        add_sim_subcommands(sub)
    except ImportError:  # pragma: no cover
        pass
    try:
        from twin.firmware.bundle import add_firmware_subcommands

        add_firmware_subcommands(sub)
    except ImportError:  # pragma: no cover
        pass
    from twin.security.cli import add_certs_subcommands

    add_certs_subcommands(sub)
    from twin.trace_cli import add_trace_subcommands

    add_trace_subcommands(sub)
    check = sub.add_parser("config", help="check a station TOML file without starting anything")
    check.add_argument("action", choices=["check"])
    check.add_argument("file", type=Path)

    from twin.scenario.cli import add_scenario_subcommands

    add_scenario_subcommands(sub)
    csms = sub.add_parser("csms", help="run a standalone CSMS that logs every message (security profiles 0-3)")
    from twin.csms.cli import add_csms_arguments

    add_csms_arguments(csms)
    from twin.fleet.cli import add_fleet_arguments

    add_fleet_arguments(sub.add_parser("fleet", help="run N stations in one process against one CSMS (docs/fleet.md)"))
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    commands = {
        "run": lambda: cmd_run(args, argv), "demo": lambda: cmd_demo(args), "queue": lambda: cmd_queue(args),
        "drivers": lambda: cmd_drivers(args), "sim": lambda: _sim(args), "firmware": lambda: _firmware(args),
        "csms": lambda: cmd_csms(args), "config": lambda: cmd_config_check(args),
        "certs": lambda: args.run_certs(args), "scenario": lambda: _scenario(args),
        "trace": lambda: _trace(args), "fleet": lambda: _fleet(args),
    }
    try:
        return commands[args.command]()
    except KeyboardInterrupt:
        return 130


def _fleet(args) -> int:
    from twin.fleet.cli import run_fleet_command

    return run_fleet_command(args)


def _trace(args) -> int:
    from twin.trace_cli import run_trace_command

    return run_trace_command(args)


def _sim(args) -> int:
    from twin.sim_client import run_sim_command

    return run_sim_command(args)


def _scenario(args) -> int:
    from twin.scenario.cli import run_scenario_command

    return run_scenario_command(args)


def _firmware(args) -> int:
    from twin.firmware.bundle import run_firmware_command

    return run_firmware_command(args)


def _load(args) -> "object":
    from twin.config import ConfigError, load_config

    try:
        return load_config(getattr(args, "config", None), _overrides(args))
    except ConfigError as e:
        print(f"twin: configuration error: {e}", file=sys.stderr)
        raise SystemExit(2) from e


# ------------------------------------------------------------------------------ run
def cmd_run(args, argv: list[str]) -> int:
    cfg = _load(args)
    from twin.service.lock import hold_for_command
    from twin.service.logs import setup_logging

    data_dir_lock = None
    if os.environ.get("OCPP_TWIN_CHILD") != "1":
        # The launcher (this process) holds the data dir for the firmware slot's child; held
        # until this returns, the process exits or execs.
        data_dir_lock = hold_for_command(Path(cfg.data_dir))
        if data_dir_lock is None:
            return 3
    try:
        setup_logging(cfg.log_level, Path(cfg.data_dir))
        if os.environ.get("OCPP_TWIN_CHILD") != "1":
            try:
                from twin.firmware.launcher import run_with_slots
            except ImportError:  # pragma: no cover
                run_with_slots = None
            if run_with_slots is not None:
                code = run_with_slots(["run"] + [a for a in argv if a != "run"], Path(cfg.data_dir),
                                      lambda: _run_in_process(cfg))
                return _maybe_reexec(code, argv)
        return _maybe_reexec(_run_in_process(cfg), argv)
    finally:
        if data_dir_lock is not None:
            data_dir_lock.release()


def _maybe_reexec(code: int, argv: list[str]) -> int:
    from twin.runtime import RESTART_EXIT_CODE

    if code == RESTART_EXIT_CODE and os.environ.get("OCPP_TWIN_CHILD") != "1":
        # Reset / firmware restart without a supervisor: replace this process (same PID under systemd).
        log.warning("restarting: exec %s -m twin %s", sys.executable, " ".join(argv))
        logging.shutdown()
        os.execv(sys.executable, [sys.executable, "-m", "twin"] + argv)
    return code


def _run_in_process(cfg) -> int:
    return asyncio.run(run_station(cfg))


async def run_station(cfg) -> int:
    from twin.runtime import Runtime
    from twin.store import StoreError

    rt = Runtime(cfg)
    loop = asyncio.get_running_loop()
    stopping = asyncio.Event()

    def on_signal(signame: str) -> None:
        log.warning("%s received: stopping transactions and shutting down", signame)
        stopping.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal, sig.name)
    try:
        await rt.start()
    except StoreError as e:
        log.critical("cannot open the store: %s", e)
        print(f"twin: {e}", file=sys.stderr)
        await rt.shutdown(graceful=False)
        return 3
    except Exception as e:  # noqa: BLE001 - e.g. strict drivers missing hardware
        log.critical("station failed to start: %s", e)
        print(f"twin: station failed to start: {e}", file=sys.stderr)
        await rt.shutdown(graceful=False)
        return 4
    if getattr(rt, "api", None) is not None:
        print(f"twin: dashboard on {rt.api.url}/   (control API: {rt.api.url}/api)", flush=True)
    stop_task = asyncio.ensure_future(stopping.wait())
    done_task = asyncio.ensure_future(rt.wait())
    await asyncio.wait({stop_task, done_task}, return_when=asyncio.FIRST_COMPLETED)
    if done_task.done():
        stop_task.cancel()
        return done_task.result()
    await rt.shutdown("Reboot", graceful=True)
    if done_task.done() and not done_task.cancelled():
        return done_task.result()  # a Reset was already restarting the station: keep its exit code
    done_task.cancel()
    return 0


# ------------------------------------------------------------------------------ queue
def cmd_queue(args) -> int:
    from twin.store import Store, StoreError

    data_dir = args.data_dir
    if data_dir is None:
        data_dir = Path(_load(args).data_dir)
    source = Path(data_dir) / "twin.db"
    try:
        if getattr(args, "station", None) is not None:
            from twin.fleet.store import SharedStore, check_station

            try:
                check_station(args.station)
            except ValueError as e:  # a usage error, like argparse's: exit code 2
                print(f"twin: --station: {e}", file=sys.stderr)
                return 2
            # Read-only (mode=ro), like Store.snapshot: safe while the fleet runs.
            snap, source = SharedStore.snapshot(Path(data_dir), args.station)
        elif not source.exists() and (Path(data_dir) / "fleet.db").exists():
            raise StoreError(f"{data_dir}: a fleet's data dir (it holds fleet.db): name the member with --station ID")
        elif not source.exists() and (Path(data_dir) / "twin.db.imported").exists():
            here = Path(data_dir).absolute()
            raise StoreError(f"{data_dir}: this fleet member's store was moved into {here.parent / 'fleet.db'}: "
                             f"twin queue --data-dir {here.parent} --station {here.name}")
        elif not source.exists() and (Path(data_dir).absolute().parent / "fleet.db").exists():
            here = Path(data_dir).absolute()
            raise StoreError(f"{data_dir}: no {source.name} here, and {here.parent} is a fleet's data dir (it holds "
                             f"fleet.db): twin queue --data-dir {here.parent} --station {here.name}")
        else:
            snap = Store.snapshot(source)
    except StoreError as e:
        print(f"twin: {e}", file=sys.stderr)
        return 1
    rows = snap["queue"]
    if args.json:
        print(json.dumps({"queue": rows, "discarded": snap["discarded"] if args.discarded else []}, indent=2))
        return 0
    station = f" of station {args.station}" if getattr(args, "station", None) is not None else ""
    print(f"{len(rows)} queued transaction message(s){station} in {source}")
    print(f"{'seq':>6}  {'action':<17} {'tx':>5} {'attempts':>8}  created_at")
    for r in rows:
        print(f"{r['seq']:>6}  {r['action']:<17} {str(r.get('tx_local_id') or ''):>5} {r.get('attempts', 0):>8}  "
              f"{r['created_at']}")
    if args.discarded:
        print(f"\n{len(snap['discarded'])} discarded message(s)")
        for r in snap["discarded"]:
            print(f"{r['seq']:>6}  {r['action']:<17} {r.get('reason', '')}  {json.dumps(r['payload'])}")
    return 0


# ------------------------------------------------------------------------------ drivers
def cmd_drivers(args) -> int:
    from drivers.registry import list_backends, probe

    cfg = _load(args)
    print("backends:")
    for kind, names in list_backends().items():
        print(f"  {kind:<12} {', '.join(names)}")
    reports = asyncio.run(probe(cfg.drivers or {}, cfg.connectors)) if args.probe else None
    if reports is None:
        from drivers.registry import describe

        reports = describe(cfg.drivers or {}, cfg.connectors)
    print("\nconfigured drivers:")
    failed = False
    for r in reports:
        print(f"  {r.kind:<12} {r.name:<14} requested {r.requested:<8} -> {r.backend:<10} {r.reason}")
        if r.warning:
            print(f"  {'':<12} WARNING: {r.warning}")
            failed = failed or args.probe
    return 1 if failed else 0


# ------------------------------------------------------------------------------ config check
def cmd_config_check(args) -> int:
    """Load the file exactly as `twin run` would, including the [drivers] and [firmware] tables."""
    from drivers.registry import DriverConfigError, describe
    from twin.config import ConfigError, load_config
    from twin.firmware.settings import FirmwareSettings

    try:
        cfg = load_config(args.file)
        describe(cfg.drivers or {}, cfg.connectors)
        FirmwareSettings.from_table(cfg.firmware or {})
    except (ConfigError, DriverConfigError, ValueError) as e:
        print(f"twin: configuration error: {e}", file=sys.stderr)
        return 2
    print(f"{args.file}: OK ({cfg.charge_point_id} -> {cfg.ws_url}, {cfg.connectors} connectors)")
    return 0


# ------------------------------------------------------------------------------ csms
def cmd_csms(args) -> int:
    from twin.csms.cli import run as csms_run

    return csms_run(args)


# ------------------------------------------------------------------------------ demo
def cmd_demo(args) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)-7s %(name)s: %(message)s")
    return asyncio.run(_demo(args))


async def _demo(args) -> int:
    # The built-in CSMS, the station's certificate provisioning and the session: twin/csms/demo.py.
    from twin.csms.demo import run_demo

    return await run_demo(args)


if __name__ == "__main__":
    raise SystemExit(main())
