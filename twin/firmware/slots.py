"""Firmware slots: installed versions side by side, an atomic switch, a trial, rollback.

Layout under ``<data_dir>/firmware/``::

    slots/<version>/    an unpacked bundle wheel (twin/, drivers/, *.dist-info/)
    state.json          which slot runs, the trial, the report owed to the CSMS
    state.lock          flock(2) lock: the launcher and the station both update state.json

``state.json`` (written to a temp file, fsynced, then ``os.replace``-d, so a power cut
leaves the old or the new state, never half of one)::

    {"active": "1.11" | "base", "previous": "1.10" | "base" | null,
     "trial": "1.11" | null, "deadline": "<UTC ISO>" | null,
     "report": "Installed" | "InstallationFailed" | null, "failed": {...} | null,
     "report_for": {"signed": true, "requestId": 7} | null}

``report_for`` names the request the report answers: a SignedUpdateFirmware is reported
with SignedFirmwareStatusNotification and its requestId (L01.FR.10), a plain
UpdateFirmware (null) with FirmwareStatusNotification. :func:`switch_to_trial` sets it;
the launcher's rollback leaves it as it is, so InstallationFailed after a rollback goes
to the same request.

``"base"`` is the version installed by the OS package / pip (what systemd starts); it
is always there to fall back to. A new slot starts as a *trial*: the launcher
(twin/firmware/launcher.py) rolls back to ``previous`` unless the new version calls
:func:`mark_boot_ok` (BootNotification Accepted) in time. Then :func:`pending_report`
hands the runtime the FirmwareStatusNotification it owes, once (OCPP 1.6 section
5.19: Installed, or InstallationFailed after a rollback).

Functions the station calls never raise for a broken data dir: they log the error
and answer as if nothing was pending, because a station must keep charging.

Every function here blocks (flock, fsync, rmtree, a subprocess) and is safe to call from
a worker thread (``asyncio.to_thread``) while other threads or processes call the
others: each update of ``state.json`` and each change to ``slots/`` that depends on it
happens under the ``state.lock`` flock (a separate ``open`` per call, so threads of
one process exclude each other as processes do).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from twin.firmware.bundle import Manifest, unpack_bundle

__all__ = [
    "BASE",
    "REPORT_FAILED",
    "REPORT_INSTALLED",
    "SlotError",
    "SlotState",
    "firmware_dir",
    "install_slot",
    "mark_boot_ok",
    "PendingReport",
    "pending_outcome",
    "pending_report",
    "read_state",
    "rollback",
    "set_trial_deadline",
    "slot_path",
    "switch_to_trial",
    "write_json_atomic",
]

log = logging.getLogger(__name__)

BASE = "base"
REPORT_INSTALLED = "Installed"
REPORT_FAILED = "InstallationFailed"
#: What the import test runs in the new slot. ``-P`` (Python 3.11) keeps the current
#: directory off sys.path, so the slot, not a source tree we happen to stand in, is tested.
_IMPORT_TEST = ("import importlib.util, twin, drivers\n"
                "assert importlib.util.find_spec('twin.__main__'), "
                "'no twin/__main__.py, so python -m twin run cannot start this version'\n"
                "print(twin.__version__)\n")


class SlotError(Exception):
    """Installing or switching a slot failed; the message says why. The running version is untouched."""


@dataclass
class SlotState:
    active: str = BASE
    previous: str | None = None
    trial: str | None = None
    deadline: str | None = None
    report: str | None = None
    failed: dict[str, Any] | None = None
    report_for: dict[str, Any] | None = None
    extra: dict[str, Any] = field(default_factory=dict, repr=False)

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> SlotState:
        known = {k: doc[k] for k in ("active", "previous", "trial", "deadline", "report", "failed", "report_for")
                 if k in doc}
        state = cls(**known)
        state.extra = {k: v for k, v in doc.items() if k not in known}
        if not isinstance(state.active, str) or not state.active:
            state.active = BASE
        return state

    def to_json(self) -> dict[str, Any]:
        doc = asdict(self)
        doc.pop("extra")
        return {**self.extra, **doc}


def firmware_dir(data_dir: Path) -> Path:
    return Path(data_dir) / "firmware"


def slot_path(data_dir: Path, version: str) -> Path | None:
    """The directory to put first on PYTHONPATH for ``version``; None for the base install."""
    return None if version == BASE else firmware_dir(data_dir) / "slots" / version


def write_json_atomic(path: Path, doc: Any) -> None:
    """Write JSON so readers see the old or the new file, even across a power cut."""
    path.parent.mkdir(parents=True, exist_ok=True)
    # A temp name of its own per writer: two threads may write the same file.
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    try:
        with open(tmp, "w", encoding="utf-8") as fh:
            json.dump(doc, fh, indent=2, sort_keys=True)
            fh.write("\n")
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)  # make the rename itself durable
    finally:
        os.close(dir_fd)


@contextlib.contextmanager
def _locked(data_dir: Path) -> Iterator[Path]:
    fw = firmware_dir(data_dir)
    fw.mkdir(parents=True, exist_ok=True)
    with open(fw / "state.lock", "a+") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield fw / "state.json"
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _load(path: Path) -> SlotState:
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return SlotState()
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        # The safe reading of an unreadable state is "run the base install".
        log.error("firmware state %s is unreadable (%s); running the base install", path, exc)
        return SlotState()
    if not isinstance(doc, dict):
        log.error("firmware state %s is not a JSON object; running the base install", path)
        return SlotState()
    return SlotState.from_json(doc)


def read_state(data_dir: Path) -> SlotState:
    """The current state (base with nothing pending when there is none yet)."""
    return _load(firmware_dir(data_dir) / "state.json")


@contextlib.contextmanager
def _update(data_dir: Path) -> Iterator[SlotState]:
    with _locked(data_dir) as path:
        state = _load(path)
        before = state.to_json()
        yield state
        if state.to_json() != before:
            write_json_atomic(path, state.to_json())


# -- installing -------------------------------------------------------------------------


_STAGING_PREFIX = ".staging-"


def install_slot(data_dir: Path, bundle: Path, *, python: str = sys.executable, timeout: float = 60.0,
                 cancelled: threading.Event | None = None) -> Manifest:
    """Verify ``bundle``, unpack it into ``slots/<version>/`` and import-test it there.

    Does not switch: call :func:`switch_to_trial` next. Raises :class:`BundleError` for
    a bad file and :class:`SlotError` when the slot cannot be made or does not import.

    Each call stages in a directory of its own, so calls may overlap (a replaced
    UpdateFirmware's worker thread runs on after its task was cancelled). Once
    ``cancelled`` is set the call stops before it touches ``slots/<version>/`` and
    removes only its own staging directory.
    """
    slots = firmware_dir(data_dir) / "slots"
    staging: Path | None = None
    try:
        slots.mkdir(parents=True, exist_ok=True)
        _remove_abandoned_staging(slots)
        staging = Path(tempfile.mkdtemp(prefix=f"{_STAGING_PREFIX}{os.getpid()}-", dir=slots))
        staging.chmod(0o755)  # mkdtemp makes it 0700; the slot it becomes is readable like the base install
        manifest = unpack_bundle(bundle, staging)
        _raise_if_cancelled(cancelled, manifest.version)
        _import_test(staging, manifest.version, python, timeout)
        with _locked(data_dir) as state_path:  # against switch_to_trial and the pruning in mark_boot_ok
            _raise_if_cancelled(cancelled, manifest.version)
            state = _load(state_path)
            if manifest.version in (state.active, state.previous) and manifest.version != BASE:
                raise SlotError(f"version {manifest.version} is already installed "
                                f"({'running' if manifest.version == state.active else 'kept for rollback'})")
            target = slots / manifest.version
            if target.exists():
                shutil.rmtree(target)  # a leftover of an earlier failed attempt
            os.replace(staging, target)
        return manifest
    except OSError as exc:
        raise SlotError(f"cannot install into {slots}: {_os_reason(exc)}") from exc
    finally:
        if staging is not None and staging.exists():
            shutil.rmtree(staging, ignore_errors=True)


def _raise_if_cancelled(cancelled: threading.Event | None, version: str) -> None:
    if cancelled is not None and cancelled.is_set():
        raise SlotError(f"installing {version} was cancelled")


def _remove_abandoned_staging(slots: Path) -> None:
    """Staging directories of processes that are gone (a power cut while unpacking).
    Those of live processes may be in use, whatever they belong to."""
    for entry in slots.iterdir():
        if not entry.name.startswith(_STAGING_PREFIX):
            continue
        pid = entry.name[len(_STAGING_PREFIX):].partition("-")[0]
        if pid.isdigit() and int(pid) != os.getpid() and not _process_exists(int(pid)):
            shutil.rmtree(entry, ignore_errors=True)


def _process_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process
    return True


def _os_reason(exc: OSError) -> str:
    if exc.errno == errno.ENOSPC:
        return "disk full (ENOSPC)"
    return f"{exc.strerror or exc} ({exc.filename})" if exc.filename else str(exc.strerror or exc)


def _import_test(slot: Path, version: str, python: str, timeout: float) -> None:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(slot), env.get("PYTHONPATH", "")) if p)
    env.pop("OCPP_TWIN_CHILD", None)
    try:
        done = subprocess.run([python, "-P", "-c", _IMPORT_TEST], cwd=slot, env=env, capture_output=True,
                              text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired as exc:
        raise SlotError(f"version {version} did not import within {timeout:g} s") from exc
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["(no output)"])[-1]
        raise SlotError(f"version {version} does not import: {last}")
    if done.stdout.strip() != version:
        raise SlotError(f"the slot imported twin {done.stdout.strip()!r}, not {version!r}")


# -- switching, trial, rollback ---------------------------------------------------------


def switch_to_trial(data_dir: Path, version: str, *, signed_request_id: int | None = None) -> None:
    """Make the installed slot ``version`` the one to start next, on trial.

    ``signed_request_id``: the requestId of the SignedUpdateFirmware that installs it
    (None for a plain UpdateFirmware or a manual install), kept for the report."""
    path = slot_path(data_dir, version)
    if path is None or not (path / "twin" / "__init__.py").is_file():
        raise SlotError(f"no installed slot for version {version}")
    try:
        with _update(data_dir) as state:
            # A crash loop of a trial must not lose the known-good version: keep the
            # previous good one, not the failed trial, as the rollback target.
            if state.trial is None:
                state.previous = state.active
            state.active, state.trial, state.deadline, state.report = version, version, None, None
            state.report_for = None if signed_request_id is None else {"signed": True,
                                                                       "requestId": int(signed_request_id)}
    except OSError as exc:
        raise SlotError(f"cannot switch to {version}: {_os_reason(exc)}") from exc


def set_trial_deadline(data_dir: Path, deadline: datetime | None) -> None:
    """Informational: when the launcher gives up on the trial (shown by ``twin firmware status``)."""
    with _update(data_dir) as state:
        if state.trial is not None:
            state.deadline = deadline.isoformat() if deadline else None


def mark_boot_ok(data_dir: Path, version: str) -> bool:
    """The station calls this after BootNotification Accepted. Ends a trial of ``version``
    (True), owing FSN Installed; a no-op (False) otherwise. Never raises.

    It blocks (flock, two fsyncs, rmtree of old slots): call it off the event loop,
    ``await asyncio.to_thread(slots.mark_boot_ok, data_dir, version)``, which is safe
    while an install runs in another thread."""
    try:
        with _update(data_dir) as state:
            if state.trial != version or state.active != version:
                return False
            state.trial, state.deadline, state.report, state.failed = None, None, REPORT_INSTALLED, None
            # Under the state lock, which install_slot also holds to rename a slot into place.
            _prune(data_dir, {state.active, state.previous})
        log.info("firmware %s booted; trial over, rollback target kept: %s", version, state.previous)
        return True
    except OSError as exc:
        log.error("cannot record that firmware %s booted: %s", version, _os_reason(exc))
        return False


@dataclass(frozen=True)
class PendingReport:
    """The install outcome owed to the CSMS after a restart, and to which request."""

    status: str  # REPORT_INSTALLED or REPORT_FAILED
    signed: bool = False  # SignedUpdateFirmware: SignedFirmwareStatusNotification with request_id
    request_id: int | None = None
    version: str | None = None  # the version that runs now


def pending_report(data_dir: Path, *, consume: bool = True) -> str | None:
    """"Installed", "InstallationFailed" or None; consumed by the call unless ``consume`` is
    False (the caller consumes it once the notification is on the wire). Never raises."""
    outcome = pending_outcome(data_dir, consume=consume)
    return outcome.status if outcome is not None else None


def pending_outcome(data_dir: Path, *, consume: bool = True) -> PendingReport | None:
    """:func:`pending_report` with the request it belongs to. Never raises."""
    try:
        with _update(data_dir) as state:
            if not state.report:
                return None
            owed = state.report_for if isinstance(state.report_for, dict) else {}
            request_id = owed.get("requestId")
            signed = bool(owed.get("signed")) and isinstance(request_id, int) and not isinstance(request_id, bool)
            outcome = PendingReport(state.report, signed, request_id if signed else None, state.active)
            if consume:
                state.report, state.report_for = None, None
            return outcome
    except OSError as exc:
        log.error("cannot read the pending firmware report: %s", _os_reason(exc))
        return None


def rollback(data_dir: Path, reason: str) -> str:
    """Leave the trial version for ``previous`` (or base); owe FSN InstallationFailed.

    Returns the version that is active afterwards.
    """
    with _update(data_dir) as state:
        failed = state.trial or state.active
        state.active = state.previous if state.previous and state.previous != failed else BASE
        state.previous = None
        state.trial, state.deadline, state.report = None, None, REPORT_FAILED
        state.failed = {"version": failed, "reason": reason}
        active = state.active
    failed_slot = slot_path(data_dir, failed)
    if failed_slot is not None and failed != active:
        shutil.rmtree(failed_slot, ignore_errors=True)
    log.error("firmware %s rolled back to %s: %s", failed, active, reason)
    return active


def _prune(data_dir: Path, keep: set[str | None]) -> None:
    slots = firmware_dir(data_dir) / "slots"
    if not slots.is_dir():
        return
    for entry in slots.iterdir():
        if entry.is_dir() and entry.name not in keep and not entry.name.startswith(_STAGING_PREFIX):
            shutil.rmtree(entry, ignore_errors=True)

