"""Stand-in for ``twin/__main__.py`` in the launcher tests, copied into test source trees.

The real entry point (``twin run`` -> runtime) is wired in at integration; this one plays
a station whose behaviour the test chooses per version in ``<data_dir>/behaviour.json``:
``{"1.11": ["install:/path/bundle.tar.gz", "ok"]}`` -- the n-th start of a version takes
the n-th entry (the last one repeats):

* ``ok``      BootNotification accepted: mark_boot_ok, send the pending report, exit 0
* ``serve``   like ok, then run until SIGTERM
* ``crash``   exit 1 before BootNotification
* ``hang``    never reach BootNotification
* ``install:<bundle>``  install the bundle into a slot, switch, exit with the restart code

Each start and each report is appended to ``<data_dir>/runs.log``.
"""

import json
import os
import signal
import sys
import time
from pathlib import Path

import twin
from twin.firmware import launcher, slots


def _log(data_dir: Path, line: str) -> None:
    with open(data_dir / "runs.log", "a") as fh:
        fh.write(line + "\n")


def _behaviour(data_dir: Path) -> str:
    table = json.loads((data_dir / "behaviour.json").read_text())
    plan = table.get(twin.__version__, "ok")
    if isinstance(plan, str):
        return plan
    runs = (data_dir / "runs.log").read_text().splitlines() if (data_dir / "runs.log").exists() else []
    starts = sum(1 for line in runs if line.startswith(f"start {twin.__version__} "))
    return plan[min(starts, len(plan) - 1)]


def station(data_dir: Path) -> int:
    behaviour = _behaviour(data_dir)
    _log(data_dir, f"start {twin.__version__} child={os.environ.get('OCPP_TWIN_CHILD', '0')}")
    (data_dir / f"env-{os.getpid()}.json").write_text(json.dumps(dict(os.environ)))
    if behaviour == "crash":
        return 1
    if behaviour == "hang":
        time.sleep(600)
        return 0
    if behaviour.startswith("install:"):
        manifest = slots.install_slot(data_dir, Path(behaviour.split(":", 1)[1]))
        slots.switch_to_trial(data_dir, manifest.version)
        return launcher.RESTART_EXIT_CODE
    slots.mark_boot_ok(data_dir, twin.__version__)
    _log(data_dir, f"report {slots.pending_report(data_dir)}")
    if behaviour == "serve":
        stopped: list[int] = []
        signal.signal(signal.SIGTERM, lambda signum, frame: stopped.append(signum))
        _log(data_dir, "serving")
        while not stopped:
            time.sleep(0.02)
        _log(data_dir, "stopped")
    return 0


if __name__ == "__main__":
    argv = sys.argv[1:]
    data_dir = Path(argv[argv.index("--data-dir") + 1])
    sys.exit(launcher.run_with_slots(argv, data_dir, lambda: station(data_dir)))
