"""``twin fleet``: N twins in one process against one CSMS (docs/fleet.md)."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
from pathlib import Path

log = logging.getLogger("twin.fleet")


def add_fleet_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--count", type=int, required=True, help="how many stations (members) to run")
    p.add_argument("--csms", dest="csms_url", required=True, help="CSMS websocket URL, e.g. ws://csms:9000/ocpp")
    p.add_argument("--id-prefix", default="P", help="member ids are PREFIX0001...: default P")
    p.add_argument("--first", type=int, default=1, metavar="N",
                   help="number of the first member id (default 1); a shard of an id range starts where the "
                        "previous one ended")
    p.add_argument("--id-width", type=int, metavar="W",
                   help="zero-pad the id numbers to W digits (default: at least 4, as the last id needs); "
                        "shards of one range pass the whole range's width")
    p.add_argument("--profile", type=Path, help="charger profile TOML for every member (default: the blueprint's, "
                                                "else the iEVQC33; see docs/profiles.md)")
    p.add_argument("--config", type=Path, help="blueprint station TOML applied to every member (ids and data dirs "
                                               "are the fleet's)")
    p.add_argument("--data-dir", type=Path, help="the fleet's data dir: the shared store DIR/fleet.db, and member ID's "
                                                    "certificates, security log and firmware slots in DIR/ID/")
    p.add_argument("--control", help="fleet control API address HOST:PORT (default: the blueprint's, 127.0.0.1:8180)")
    p.add_argument("--boot-spread", type=float, default=0.0, metavar="S",
                   help="start the members spread over S seconds (seeded; default 0: all at once)")
    p.add_argument("--seed", type=int, help="seed of the boot spread and the traffic (default: random)")
    p.add_argument("--traffic", type=float, default=0.0, metavar="SESSIONS_PER_HOUR",
                   help="automatic seeded sessions at this rate per station per hour from the start (default 0: "
                        "none; POST /api/fleet/traffic changes it); see docs/fleet.md")
    p.add_argument("--traffic-duration", type=float, metavar="S",
                   help="mean session length in seconds (default: 30 min, or half the mean gap if shorter)")
    p.add_argument("--traffic-tags", metavar="TAG,TAG", help="the idTags the traffic presents (default TRAFFIC-01..08)")
    p.add_argument("--log-level", default="WARNING", help="log level of the fleet process (default WARNING: "
                                                          "N stations at INFO is a flood)")


def run_fleet_command(args) -> int:
    from twin.config import ConfigError, load_config

    overrides = {"csms_url": args.csms_url, "data_dir": args.data_dir, "control": args.control,
                 "profile": args.profile}
    try:
        if args.count < 1:
            raise ConfigError(None, "--count", "at least 1")
        if args.first < 0:
            raise ConfigError(None, "--first", "0 or more")
        if args.boot_spread < 0:
            raise ConfigError(None, "--boot-spread", "0 or more seconds")
        from twin.fleet import traffic

        tags = traffic.check_tags(args.traffic_tags.split(",")) if args.traffic_tags else None
        # The settings the traffic will run with, checked before any member starts.
        traffic.check(args.traffic, args.traffic_duration)
        traffic.check(args.traffic, args.traffic_duration if args.traffic_duration is not None
                      else traffic.default_mean_duration_s(args.traffic), len(tags or traffic.DEFAULT_TAGS))
        blueprint = load_config(args.config, overrides)
        from twin.fleet.fleet import Fleet

        # Every member's config and id is checked here, before anything is written.
        fleet = Fleet(blueprint, args.count, id_prefix=args.id_prefix, first_id=args.first, id_width=args.id_width,
                      data_dir=blueprint.data_dir,
                      boot_spread_s=args.boot_spread, seed=args.seed)
        if tags:
            fleet.traffic.tags = tags
    except (ConfigError, ValueError) as e:
        print(f"twin: configuration error: {e}", file=sys.stderr)
        return 2
    from twin.service.lock import hold_for_command
    from twin.service.logs import setup_logging

    data_dir_lock = hold_for_command(Path(blueprint.data_dir), "fleet")  # held until this returns or the process exits
    if data_dir_lock is None:
        return 3
    try:
        try:
            setup_logging(args.log_level, Path(blueprint.data_dir))
        except ValueError as e:
            print(f"twin: {e}", file=sys.stderr)
            return 2
        try:
            return asyncio.run(run_fleet(fleet, blueprint, args))
        except KeyboardInterrupt:
            return 130
    finally:
        data_dir_lock.release()


async def run_fleet(fleet, blueprint, args) -> int:
    from twin.fleet.api import FleetApi
    from twin.service.notify import Notifier

    # The fleet, not its members, talks to systemd (systemd/ocpp-twin-fleet@.service is
    # Type=notify). Each member is a Runtime whose own Notifier reads NOTIFY_SOCKET when it
    # starts: it would send READY=1 and STATUS= per station, and STOPPING=1 when one member
    # obeys an OCPP Reset, which systemd takes as the whole unit stopping (sd_notify(3)).
    # The fleet keeps the socket; its members no longer see it.
    notifier = Notifier(dict(os.environ), backend="builtin")
    for name in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"):
        os.environ.pop(name, None)
    api = FleetApi.from_blueprint(fleet, blueprint)
    try:
        await api.start()
    except OSError as e:
        print(f"twin: {e}", file=sys.stderr)
        return 4
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping.set)
    from twin.store import StoreError

    # Whatever happens once the fleet starts (an error, a cancellation), its members stop their
    # transactions and flush their store, and the API closes.
    try:
        try:
            await fleet.start()
        except (StoreError, OSError) as e:  # a fleet.db that is not ours, a data dir that cannot be written
            print(f"twin: cannot start the fleet: {e}", file=sys.stderr)
            return 3
        print(f"fleet of {args.count} stations -> {blueprint.csms_url}; control API {api.url}", file=sys.stderr,
              flush=True)
        notifier.ready(f"fleet of {args.count} stations, control API {api.url}")
        if args.traffic > 0:
            try:
                t = fleet.traffic.configure(args.traffic, seed=args.seed, mean_duration_s=args.traffic_duration)
            except ValueError as e:  # run_fleet_command checked these: only another caller gets here
                print(f"twin: configuration error: {e}", file=sys.stderr, flush=True)
                notifier.stopping()
                return 2
            print(f"traffic: {t['sessions_per_hour']:g} sessions per station per hour, "
                  f"mean {t['mean_duration_s']:.0f} s, seed {t['seed']}", file=sys.stderr, flush=True)
        await stopping.wait()
        notifier.stopping()
        log.warning("stopping the fleet: every member stops its transactions and flushes its store")
        return 0
    finally:
        try:
            await fleet.stop()
            await api.stop()
        finally:  # after the stop: a second Ctrl-C during it must not cut the members' flush short
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(sig)
