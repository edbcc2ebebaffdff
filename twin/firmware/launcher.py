"""The launcher: runs the station from the active firmware slot and rolls a bad one back.

``twin run`` calls :func:`run_with_slots` before anything else. The launcher is always
the *base* install's code (what systemd or the shell started); it plays the role a
bootloader plays for A/B firmware slots:

* No slot active, no trial: the station runs in this process (``run_in_process()``),
  exactly as without firmware management.
* A slot is active: the station runs as a child, ``python -P -m twin <argv>`` with
  ``PYTHONPATH=<slot>`` and ``OCPP_TWIN_CHILD=1`` (the child then runs in-process).
  ``-P`` keeps the working directory off ``sys.path`` so a source tree we happen to
  stand in cannot shadow the slot. SIGTERM, SIGINT and SIGHUP are forwarded to it.
* Exit code :data:`RESTART_EXIT_CODE` (75, ``EX_TEMPFAIL`` of sysexits.h) from the
  station means "start me again": the runtime exits with it after a firmware install
  and for Reset (OCPP 1.6 section 5.14). The launcher re-reads the slot state and
  starts whatever is active now, so an install takes effect on that restart.
* Trial (a freshly installed version): if the child exits before it called
  :func:`twin.firmware.slots.mark_boot_ok` (BootNotification Accepted), or has not
  called it within ``[firmware] boot_timeout_s``, the launcher stops it, rolls back to
  the previous slot or the base install, records that InstallationFailed is owed
  (sent by the previous version after its boot, from ``slots.pending_report``), and
  starts the previous version.

Under systemd the unit needs ``NotifyAccess=all``: READY=1 and WATCHDOG=1 come from
the child, which is not the unit's main PID. ``KillMode=mixed`` is recommended so that
``systemctl stop`` signals the launcher only and the launcher forwards the signal once
(with the default ``control-group`` the child receives SIGTERM twice, which the
runtime must then tolerate).
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from pathlib import Path
from types import FrameType

from twin.firmware import slots
from twin.firmware.settings import settings_from_argv

__all__ = ["CHILD_ENV", "RESTART_EXIT_CODE", "run_with_slots"]

log = logging.getLogger(__name__)

RESTART_EXIT_CODE = 75
CHILD_ENV = "OCPP_TWIN_CHILD"
_FORWARDED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
# How long a stopped child gets between SIGTERM and SIGKILL (systemd's default
# TimeoutStopSec is 90 s, so this stays well inside it).
_STOP_GRACE_S = 20.0


def run_with_slots(argv: list[str], data_dir: Path, run_in_process: Callable[[], int], *,
                   boot_timeout_s: float | None = None, python: str = sys.executable,
                   poll_s: float = 0.2) -> int:
    """Run the station; return the process exit code.

    ``argv`` is the command line after the program name (``["run", "--config", F, ...]``);
    a child gets the same. ``boot_timeout_s`` defaults to ``[firmware] boot_timeout_s``
    from the ``--config`` file (120 s).
    """
    if os.environ.get(CHILD_ENV) == "1":
        return run_in_process()
    data_dir = Path(data_dir)
    state = slots.read_state(data_dir)
    if state.active == slots.BASE and state.trial is None:
        code = run_in_process()
        if code != RESTART_EXIT_CODE:
            return code
        log.info("station asked to be restarted; continuing as its supervisor")
    if boot_timeout_s is None:
        boot_timeout_s = settings_from_argv(argv).boot_timeout_s
    return _Supervisor(list(argv), data_dir, boot_timeout_s, python, poll_s).run()


class _Supervisor:
    def __init__(self, argv: list[str], data_dir: Path, boot_timeout_s: float, python: str, poll_s: float) -> None:
        self.argv, self.data_dir, self.boot_timeout_s = argv, data_dir, boot_timeout_s
        self.python, self.poll_s = python, poll_s
        self.child: subprocess.Popen[bytes] | None = None
        self.stop_signal: int | None = None

    def run(self) -> int:
        restore = self._install_signal_handlers()
        try:
            while True:
                if self.stop_signal is not None:  # arrived while no child was running
                    return 128 + self.stop_signal
                code = self._run_once()
                if code is not None:
                    return code
        finally:
            for signum, handler in restore.items():
                signal.signal(signum, handler)

    def _run_once(self) -> int | None:
        """Start the active version once; an exit code to return, or None to start again."""
        state = slots.read_state(self.data_dir)
        version = state.active
        slot = slots.slot_path(self.data_dir, version)
        if slot is not None and not (slot / "twin" / "__init__.py").is_file():
            slots.rollback(self.data_dir, f"slot {slot} is missing")
            return None
        on_trial = state.trial == version
        self.child = self._spawn(slot)
        log.info("started station %s (pid %d)%s", version, self.child.pid, " on trial" if on_trial else "")
        failure = self._watch(version, on_trial)
        code = self.child.wait()
        if self.stop_signal is not None:
            return code if code >= 0 else 128 - code
        on_trial = on_trial and slots.read_state(self.data_dir).trial == version
        if on_trial and failure is None and code != RESTART_EXIT_CODE:
            failure = f"exited with code {code} before BootNotification was accepted"
        if failure is not None:
            slots.rollback(self.data_dir, f"version {version} {failure}")
            return None
        if code == RESTART_EXIT_CODE:
            log.info("station %s asked to be restarted", version)
            return None
        return code if code >= 0 else 128 - code

    def _spawn(self, slot: Path | None) -> subprocess.Popen[bytes]:
        env = dict(os.environ)
        env[CHILD_ENV] = "1"
        # WATCHDOG_PID names this launcher; a child that inherited it would conclude the
        # watchdog is not its business (sd_watchdog_enabled(3)) and never ping.
        env.pop("WATCHDOG_PID", None)
        if slot is None:
            # The base install: resolve `twin` exactly as this process did (same cwd, same env).
            cmd = [self.python, "-m", "twin", *self.argv]
        else:
            env["PYTHONPATH"] = os.pathsep.join(p for p in (str(slot), env.get("PYTHONPATH", "")) if p)
            cmd = [self.python, "-P", "-m", "twin", *self.argv]
        from twin.service.lock import held_descriptors

        return subprocess.Popen(cmd, env=env, pass_fds=held_descriptors())

    def _watch(self, version: str, on_trial: bool) -> str | None:
        """Wait for the child; during a trial also for mark_boot_ok or the deadline."""
        assert self.child is not None
        started = time.monotonic()
        if on_trial:
            slots.set_trial_deadline(self.data_dir, datetime.now(timezone.utc) + timedelta(seconds=self.boot_timeout_s))
        while True:
            try:
                self.child.wait(timeout=self.poll_s if on_trial else None)
                return None
            except subprocess.TimeoutExpired:
                pass
            if self.stop_signal is not None:
                continue
            if slots.read_state(self.data_dir).trial != version:
                on_trial = False  # mark_boot_ok ended the trial; now just wait
                continue
            if time.monotonic() - started > self.boot_timeout_s:
                self._stop_child()
                return f"did not reach BootNotification Accepted within {self.boot_timeout_s:g} s"

    def _stop_child(self) -> None:
        assert self.child is not None
        self.child.terminate()
        try:
            self.child.wait(timeout=_STOP_GRACE_S)
        except subprocess.TimeoutExpired:
            self.child.kill()
            self.child.wait()

    def _install_signal_handlers(self) -> dict[int, signal.Handlers | Callable | int | None]:
        if threading.current_thread() is not threading.main_thread():
            return {}  # signal.signal only works there; embedders then handle signals themselves

        def forward(signum: int, _frame: FrameType | None) -> None:
            self.stop_signal = signum
            if self.child is not None and self.child.poll() is None:
                self.child.send_signal(signum)

        return {signum: signal.signal(signum, forward) for signum in _FORWARDED}
