"""``twin firmware ...``: build, verify, install and inspect firmware bundles.

The ``twin`` CLI calls :func:`add_firmware_subcommands` with its subparsers and
:func:`run_firmware_command` when the ``firmware`` command was chosen::

    twin firmware build [--version V] [--out DIR] [--source DIR]
    twin firmware verify BUNDLE
    twin firmware status --data-dir D
    twin firmware install BUNDLE --data-dir D     # manual install (lab): next start runs it on trial

Exit codes: 0 ok, 1 the operation failed (message on stderr), 2 usage.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import twin
from twin.firmware import slots
from twin.firmware.bundle import BundleError, build_bundle, bump_version, verify_bundle

__all__ = ["add_firmware_subcommands", "run_firmware_command"]


def _default_source() -> Path:
    # The tree this `twin` was imported from: the working tree when run from a checkout.
    return Path(twin.__file__).resolve().parent.parent


def add_firmware_subcommands(subparsers: Any) -> argparse.ArgumentParser:
    parser = subparsers.add_parser("firmware", help="build, verify, install and inspect firmware bundles",
                                   description="Firmware bundles of ocpp-twin (docs/firmware.md).")
    commands = parser.add_subparsers(dest="firmware_command", metavar="COMMAND", required=True)

    build = commands.add_parser("build", help="build a release bundle from the working tree")
    build.add_argument("--version", help=f"version to stamp (default: {bump_version(twin.__version__)}, "
                                         "the running one with its last component bumped)")
    build.add_argument("--out", type=Path, default=Path("dist"), help="output directory (default: dist)")
    build.add_argument("--source", type=Path, default=None,
                       help="directory holding twin/ and drivers/ (default: where this twin is imported from)")

    verify = commands.add_parser("verify", help="check a bundle and print its manifest")
    verify.add_argument("bundle", type=Path)

    status = commands.add_parser("status", help="show the firmware slots and any trial or pending report")
    status.add_argument("--data-dir", type=Path, required=True)

    install = commands.add_parser("install", help="install a bundle into a slot; the next start runs it on trial")
    install.add_argument("bundle", type=Path)
    install.add_argument("--data-dir", type=Path, required=True)
    return parser


def run_firmware_command(args: argparse.Namespace) -> int:
    try:
        if args.firmware_command == "build":
            version = args.version or bump_version(twin.__version__)
            path = build_bundle(args.source or _default_source(), version, args.out)
            print(path)
        elif args.firmware_command == "verify":
            print(verify_bundle(args.bundle).to_json(), end="")
        elif args.firmware_command == "status":
            print(json.dumps(_status(args.data_dir), indent=2))
        elif args.firmware_command == "install":
            manifest = slots.install_slot(args.data_dir, args.bundle)
            slots.switch_to_trial(args.data_dir, manifest.version)
            print(f"installed {manifest.version}; it runs on trial at the next start of the station")
        else:
            print(f"twin firmware: unknown command {args.firmware_command!r}", file=sys.stderr)
            return 2
    except (BundleError, slots.SlotError, ValueError, OSError) as exc:
        print(f"twin firmware {args.firmware_command}: {exc}", file=sys.stderr)
        return 1
    return 0


def _status(data_dir: Path) -> dict[str, Any]:
    state = slots.read_state(data_dir)
    slot_dir = slots.firmware_dir(data_dir) / "slots"
    installed = sorted(p.name for p in slot_dir.iterdir() if p.is_dir() and not p.name.startswith(".")) \
        if slot_dir.is_dir() else []
    return {"base_version": twin.__version__, **state.to_json(), "installed_slots": installed}
