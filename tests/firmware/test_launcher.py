"""The launcher with real processes: `python -m twin run` from a base tree, children from
slots, restart code 75, trial, rollback, signal forwarding.

The base install is a copy of this repository's twin/ and drivers/ (the test runs
``python -m twin`` with that copy as working directory); its ``twin/__main__.py`` is the
stand-in station of tests/firmware/stand_in_main.py, since the real runtime is wired in
at integration.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.firmware.conftest import Bundles
from twin.firmware import launcher, slots


def start(bundles: Bundles, data_dir: Path, behaviour: dict[str, object], *,
          boot_timeout_s: float = 30, extra_env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    data_dir.mkdir(parents=True, exist_ok=True)
    (data_dir / "behaviour.json").write_text(json.dumps(behaviour))
    config = data_dir / "twin.toml"
    config.write_text(f"[firmware]\nboot_timeout_s = {boot_timeout_s}\n")
    env = {k: v for k, v in os.environ.items() if k not in (launcher.CHILD_ENV, "NOTIFY_SOCKET")}
    env.update(extra_env or {})
    return subprocess.Popen([sys.executable, "-m", "twin", "run", "--config", str(config), "--data-dir", str(data_dir)],
                            cwd=bundles.source, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def finish(proc: subprocess.Popen[str], timeout: float = 60) -> int:
    try:
        proc.wait(timeout=timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
    return proc.returncode


def runs(data_dir: Path) -> list[str]:
    return (data_dir / "runs.log").read_text().splitlines()


def test_install_then_restart_runs_the_new_version(bundles: Bundles, tmp_path: Path) -> None:
    proc = start(bundles, tmp_path, {"1.10": [f"install:{bundles.good['1.11']}", "ok"], "1.11": "ok"})
    assert finish(proc) == 0, proc.stdout.read() if proc.stdout else ""
    # The base runs in the launcher's own process; after code 75 the new slot runs as a child.
    assert runs(tmp_path) == ["start 1.10 child=0", "start 1.11 child=1", "report Installed"]
    state = slots.read_state(tmp_path)
    assert (state.active, state.previous, state.trial) == ("1.11", slots.BASE, None)


def test_version_that_exits_with_an_error_is_rolled_back(bundles: Bundles, tmp_path: Path) -> None:
    proc = start(bundles, tmp_path, {"1.10": [f"install:{bundles.good['1.12']}", "ok"], "1.12": "crash"})
    assert finish(proc) == 0
    assert runs(tmp_path) == ["start 1.10 child=0", "start 1.12 child=1", "start 1.10 child=1",
                              "report InstallationFailed"]
    state = slots.read_state(tmp_path)
    assert state.active == slots.BASE
    assert state.failed == {"version": "1.12", "reason": "version 1.12 exited with code 1 before BootNotification "
                                                         "was accepted"}
    assert not (tmp_path / "firmware/slots/1.12").exists()


def test_version_that_never_boots_is_rolled_back_after_the_boot_timeout(bundles: Bundles, tmp_path: Path) -> None:
    began = time.monotonic()
    proc = start(bundles, tmp_path, {"1.10": [f"install:{bundles.good['1.12']}", "ok"], "1.12": "hang"},
                 boot_timeout_s=1.5)
    assert finish(proc) == 0
    assert time.monotonic() - began >= 1.5
    assert runs(tmp_path) == ["start 1.10 child=0", "start 1.12 child=1", "start 1.10 child=1",
                              "report InstallationFailed"]
    assert "within 1.5 s" in slots.read_state(tmp_path).failed["reason"]  # type: ignore[index]


def test_rollback_goes_to_the_previous_slot(bundles: Bundles, tmp_path: Path) -> None:
    slots.install_slot(tmp_path, bundles.good["1.11"])
    slots.switch_to_trial(tmp_path, "1.11")
    slots.mark_boot_ok(tmp_path, "1.11")
    slots.pending_report(tmp_path)
    proc = start(bundles, tmp_path, {"1.11": [f"install:{bundles.good['1.12']}", "ok"], "1.12": "crash"})
    assert finish(proc) == 0
    assert runs(tmp_path) == ["start 1.11 child=1", "start 1.12 child=1", "start 1.11 child=1",
                              "report InstallationFailed"]
    assert slots.read_state(tmp_path).active == "1.11"


def test_sigterm_is_forwarded_to_the_child(bundles: Bundles, tmp_path: Path) -> None:
    slots.install_slot(tmp_path, bundles.good["1.11"])
    slots.switch_to_trial(tmp_path, "1.11")
    # As systemd starts it: the watchdog variables name the launcher's pid.
    proc = start(bundles, tmp_path, {"1.11": "serve"},
                 extra_env={"NOTIFY_SOCKET": "/run/test/notify", "WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "1"})
    deadline = time.monotonic() + 30
    while not ((tmp_path / "runs.log").exists() and "serving" in runs(tmp_path)):
        assert proc.poll() is None and time.monotonic() < deadline, "the child never started serving"
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    assert finish(proc) == 0  # the child handled SIGTERM and exited 0; so does the launcher
    assert runs(tmp_path) == ["start 1.11 child=1", "report Installed", "serving", "stopped"]
    (env_file,) = tmp_path.glob("env-*.json")
    child_env = json.loads(env_file.read_text())
    # The child pings systemd itself (NotifyAccess=all): it keeps the socket and the
    # timeout, but not a WATCHDOG_PID that would tell it the watchdog is someone else's.
    assert child_env["NOTIFY_SOCKET"] == "/run/test/notify" and child_env["WATCHDOG_USEC"] == "30000000"
    assert "WATCHDOG_PID" not in child_env


def test_without_a_slot_the_station_runs_in_process(tmp_path: Path) -> None:
    assert launcher.run_with_slots(["run"], tmp_path, lambda: 3) == 3


def test_a_child_runs_in_process(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, bundles: Bundles) -> None:
    slots.install_slot(tmp_path, bundles.good["1.11"])
    slots.switch_to_trial(tmp_path, "1.11")
    monkeypatch.setenv(launcher.CHILD_ENV, "1")
    assert launcher.run_with_slots(["run"], tmp_path, lambda: 7) == 7
