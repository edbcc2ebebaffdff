"""UpdateFirmware and GetDiagnostics, as the runtime wires them to OCPP.

The runtime owns the OCPP link and the connectors; this service owns the transfers,
the bundle, the slots and the ordering of the status notifications. The boundary is
:class:`FirmwareHooks`.

UpdateFirmware (OCPP 1.6 sections 5.19, 6.73; ERRATA 3.47-3.49, 3.63):

1. wait until ``retrieveDate`` ("allowed after": ERRATA 3.63). The request is kept in
   ``<data_dir>/firmware/update.json`` so a restart re-arms it (:meth:`resume`).
2. FSN Downloading; download with ``retries`` further attempts ``retryInterval`` s
   apart; then FSN Downloaded, or FSN DownloadFailed and stop. The file goes to
   ``download/run-<id>/firmware.bundle``: a fixed name, never one taken from the URL
   (whose ``%2F`` and ``..`` could point anywhere), at most ``max_download_mib`` large.
3. FSN Installing; verify the bundle and unpack + import-test it into a new slot. This
   touches nothing the station is using, so it runs while charging goes on; a bad
   file ends here with FSN InstallationFailed and the running version untouched.
4. ``hooks.wait_until_idle()``: the runtime sets idle connectors Unavailable and waits
   for running transactions to end (ERRATA 3.47-3.49).
5. switch to the new slot (atomic) on trial, and ``hooks.restart()``. After the restart
   BootNotification carries the new version, then the runtime sends FSN Installed
   from ``slots.pending_report``. A version that does not come up is rolled back by
   the launcher, and the old version reports InstallationFailed the same way.
   If the switch itself fails (disk), FSN InstallationFailed and a restart anyway.

An attempt that ends without a restart (download or install failed, replaced by a new
UpdateFirmware, an unexpected error) calls ``hooks.end_maintenance()``, which gives back
the connectors step 4 may have made Unavailable. Once the switch has begun, a new
UpdateFirmware no longer cancels the attempt: it is persisted and runs after the restart.

Nothing blocking runs on the event loop: update.json is written and removed by one
worker thread, in the order of the calls, and slot work runs in ``asyncio.to_thread``.

GetDiagnostics (section 5.9): answer the file name at once, then DSN Uploading, build
the file, upload it (``retries``/``retryInterval``), DSN Uploaded or UploadFailed.

SignedUpdateFirmware (security whitepaper L01) runs the same job with a signature
check between download and install, and reports with SignedFirmwareStatusNotification
and the request's requestId: [DownloadScheduled] -> Downloading -> Downloaded |
DownloadFailed -> SignatureVerified | InvalidSignature -> [InstallScheduled] ->
Installing -> InstallRebooting -> (restart) Installed | InstallationFailed. The signing
certificate is checked before the answer (:meth:`FirmwareService.signed_update_firmware`).

GetLog (N01): the security log or the diagnostics file, made before the answer (no
data: Rejected), then LogStatusNotification Uploading -> Uploaded or a failure status,
each with the requestId.

``firmware_status`` / ``diagnostics_status`` are what a triggered FSN/DSN reports:
"Idle" when nothing is in progress (section 4.4, 4.5: Idle only in triggered messages).
``signed_firmware_state`` / ``log_state`` are (status, requestId) for
ExtendedTriggerMessage (L01.FR.28/29, N01.FR.12).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import functools
import json
import logging
import shutil
import sys
import threading
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Protocol, TypeVar
from urllib.parse import quote, urlsplit, urlunsplit

import twin
from twin.core.timeutil import parse_ts
from twin.firmware import slots, transfer
from twin.firmware.bundle import BundleError
from twin.firmware.diagnostics import DiagnosticsError, build_archive, diagnostics_file_name
from twin.firmware.settings import FirmwareSettings
from twin.firmware.slots import SlotError
from twin.firmware.transfer import TransferError, download, redact_url, upload
from twin.security import firmware_sig
from twin.security.log import upload_file_name as security_log_file_name

__all__ = ["BUNDLE_FILE_NAME", "FirmwareHooks", "FirmwareService", "UpdateJob"]

log = logging.getLogger(__name__)

IDLE = "Idle"
#: The local name of every firmware download, whatever the URL says.
BUNDLE_FILE_NAME = "firmware.bundle"
RESULT_WAIT_S = 30.0  # how long an update waits for its request to be saved and confirmed
_T = TypeVar("_T")


class FirmwareHooks(Protocol):
    async def send_firmware_status(self, status: str) -> None: ...
    async def send_diagnostics_status(self, status: str) -> None: ...
    async def send_signed_firmware_status(self, status: str, request_id: int | None) -> None: ...
    async def send_log_status(self, status: str, request_id: int | None) -> None: ...
    async def security_event(self, name: str, tech_info: str | None) -> None:
        """Log (and, for the events that are sent, queue durably) a security event."""
    async def wait_until_idle(self) -> None:
        """Idle connectors Unavailable, running transactions end (ERRATA 3.47-3.49)."""
    async def end_maintenance(self) -> None:
        """Undo wait_until_idle: the attempt ended without a restart. Called after every
        such attempt, also when wait_until_idle was never reached: it must be idempotent."""
    async def restart(self) -> None: ...
    def diagnostics_extras(self) -> dict: ...


@dataclass
class UpdateJob:
    """One UpdateFirmware.req or SignedUpdateFirmware.req, as persisted in update.json."""

    location: str
    retrieve_date: str  # ISO 8601 UTC
    retries: int
    retry_interval: int
    staged_version: str | None = None
    #: Tells this request's update.json from a newer one's (update.json of older versions has none).
    request_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    #: SignedUpdateFirmware.req requestId; None for a plain UpdateFirmware.
    signed_request_id: int | None = None
    signature: str | None = None
    signing_certificate: str | None = None
    install_date: str | None = None  # ISO 8601 UTC, SignedUpdateFirmware firmware.installDateTime

    @property
    def signed(self) -> bool:
        return self.signed_request_id is not None


def _utcnow() -> datetime:
    return datetime.now(timezone.utc)


class _ProgressLog:
    """Logs a transfer's progress every 10 % (or every MiB when the size is unknown)."""

    def __init__(self, what: str, url: str, sink: dict[str, Any]) -> None:
        self.what, self.url, self.sink, self.step = what, url, sink, -1

    def __call__(self, done: int, total: int | None) -> None:
        self.sink.update(received=done, total=total,
                         percent=round(100 * done / total, 1) if total else None)
        step = (10 * done // total) if total else done // (1024 * 1024)
        if step != self.step:
            self.step = step
            shown = f"{done}/{total} bytes ({100 * done // total} %)" if total else f"{done} bytes"
            log.info("%s %s: %s", self.what, self.url, shown)


class FirmwareService:
    def __init__(self, data_dir: Path, hooks: FirmwareHooks, *, log_files: Callable[[], list[Path]],
                 clock: Callable[[], datetime] = _utcnow,
                 sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep,
                 charge_point_id: str = "ocpp-twin", settings: FirmwareSettings | None = None,
                 python: str = sys.executable) -> None:
        self.data_dir = Path(data_dir)
        self.hooks = hooks
        self.settings = settings or FirmwareSettings()
        self._log_files, self._clock, self._sleep = log_files, clock, sleep
        self._cpid, self._python = charge_point_id, python
        self.firmware_status: str = IDLE
        self.diagnostics_status: str = IDLE
        self.progress: dict[str, dict[str, Any] | None] = {"firmware": None, "diagnostics": None, "log": None}
        self._update_task: asyncio.Task[None] | None = None
        self._diag_task: asyncio.Task[None] | None = None
        self._log_task: asyncio.Task[None] | None = None
        self._log_running: tuple[str, int] | None = None
        self._signed_sent: tuple[str, int | None] = (IDLE, None)  # the last SignedFirmwareStatusNotification
        self._diag_seq = 0
        self._fw_dir = slots.firmware_dir(self.data_dir)
        self._job_file = self._fw_dir / "update.json"
        self._download_root = self._fw_dir / "download"
        # update.json is written and removed by this one thread, so the writes land in the
        # order of the requests even when a replaced request's write is still running.
        self._job_worker = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="firmware-job")
        self._live_run_dirs: set[Path] = set()  # download dirs of runs not yet cleaned up
        self._committing = False  # an update is switching slots and restarting
        self._background: set[asyncio.Task[None]] = set()
        self._log_seq = 0

    # -- UpdateFirmware -------------------------------------------------------------------

    async def resume(self) -> None:
        """On startup: re-arm an UpdateFirmware that was scheduled or under way.

        The runtime calls this after BootNotification Accepted, when the CSMS may already
        have sent a new UpdateFirmware: that one (running) is the job, not a second copy."""
        if self._update_task is not None:
            return
        # Nothing persisted (the usual start): answered without the job thread, which starts
        # on its first use and then idles for the life of the station (a thread per member in
        # a fleet). An UpdateFirmware arriving meanwhile runs as _update_task, checked above.
        if not await asyncio.to_thread(self._job_file.exists):
            return
        job = await self._job_io(self._read_job)
        if job is None or self._update_task is not None:
            return
        if job.staged_version is not None:
            state = await asyncio.to_thread(slots.read_state, self.data_dir)
            if state.active == job.staged_version:
                await self._drop_job(job)  # switched just before the restart; the launcher reports the result
                return
        if self._update_task is not None:
            return
        log.info("resuming %s firmware update from %s (retrieve after %s)", "signed" if job.signed else "plain",
                 redact_url(job.location), job.retrieve_date)
        self._start_update(job, replaced=None)

    def update_firmware(self, location: str, retrieve_date: datetime, retries: int | None,
                        retry_interval: int | None, *, replied: asyncio.Future | None = None) -> asyncio.Future[None]:
        """Schedule an update and return at once (UpdateFirmware.conf has no fields).

        The returned future is done once the request is in update.json (it never raises;
        a failed write is logged): a caller that awaits it before replying never confirms
        a request that a power cut would lose. ``replied``, when given, is set by the
        caller once UpdateFirmware.conf is sent: the first FirmwareStatusNotification
        waits for it, so the CSMS sees the confirmation first (§4.4)."""
        when = retrieve_date if retrieve_date.tzinfo else retrieve_date.replace(tzinfo=timezone.utc)
        defaults = self.settings
        job = UpdateJob(location, when.astimezone(timezone.utc).isoformat(),
                        defaults.default_retries if retries is None else max(0, int(retries)),
                        defaults.default_retry_interval_s if retry_interval is None else max(0, int(retry_interval)))
        persisted = self._job_io(self._write_job, job)
        running = self._update_task if self._update_task is not None and not self._update_task.done() else None
        if running is not None and self._committing:
            # Switching slots cannot be taken back halfway; the restart that follows runs
            # resume(), which picks this request up from update.json.
            log.warning("a new UpdateFirmware arrived while the station restarts into new firmware; "
                        "it runs after the restart")
            return persisted
        if running is not None:
            log.warning("a new UpdateFirmware replaces the one in progress")
            running.cancel()
        self.firmware_status, self.progress["firmware"] = IDLE, None  # scheduled is not "in progress"
        self._start_update(job, replaced=running, after=[persisted] + ([replied] if replied is not None else []))
        return persisted

    async def signed_update_firmware(self, request_id: int, location: str, retrieve_date: datetime,
                                     install_date: datetime | None, signing_certificate: str, signature: str,
                                     retries: int | None, retry_interval: int | None, *,
                                     manufacturer_roots: list[Any], replied: asyncio.Future | None = None) -> str:
        """SignedUpdateFirmware.conf status; an accepted request is in update.json on return.

        Before the answer (L01.FR.23) the signing certificate is checked against the
        installed ManufacturerRootCertificates (L01.FR.12): InvalidCertificate, or
        RevokedCertificate for a fingerprint in ``[firmware] revoked_signing_certificates``
        (L01.FR.24/25), and InvalidFirmwareSigningCertificate is raised once ``replied``
        is set (L01.FR.02). An update scheduled or under way is cancelled: AcceptedCanceled
        (L01.FR.26); one that is already switching slots cannot be: Rejected (L01.FR.27).
        The new file is not looked at before answering, so the CSMS can always cancel."""
        verdict = firmware_sig.check_signing_certificate(signing_certificate, manufacturer_roots, self._clock(),
                                                         revoked=self.settings.revoked_signing_certificates)
        if not verdict.ok:
            log.error("SignedUpdateFirmware %s: %s, signing certificate refused: %s", request_id, verdict.status,
                      verdict.reason)
            self._after_reply(replied, self._security_event(verdict.event or firmware_sig.INVALID_SIGNING_CERTIFICATE,
                                                            f"SignedUpdateFirmware {request_id}: {verdict.reason}"))
            return verdict.status
        running = self._update_task if self._update_task is not None and not self._update_task.done() else None
        if running is not None and self._committing:
            log.warning("SignedUpdateFirmware %s rejected: the station is restarting into new firmware", request_id)
            return "Rejected"
        when = retrieve_date if retrieve_date.tzinfo else retrieve_date.replace(tzinfo=timezone.utc)
        install = None
        if install_date is not None:
            install = (install_date if install_date.tzinfo else install_date.replace(tzinfo=timezone.utc))
        defaults = self.settings
        job = UpdateJob(location, when.astimezone(timezone.utc).isoformat(),
                        defaults.default_retries if retries is None else max(0, int(retries)),
                        defaults.default_retry_interval_s if retry_interval is None else max(0, int(retry_interval)),
                        signed_request_id=int(request_id), signature=signature,
                        signing_certificate=signing_certificate,
                        install_date=install.astimezone(timezone.utc).isoformat() if install else None)
        persisted = self._job_io(self._write_job, job)
        if running is not None:
            log.warning("SignedUpdateFirmware %s cancels the firmware update in progress", request_id)
            running.cancel()
        self.firmware_status, self.progress["firmware"] = IDLE, None
        self._start_update(job, replaced=running, after=[persisted] + ([replied] if replied is not None else []))
        await persisted
        return "AcceptedCanceled" if running is not None else "Accepted"

    @property
    def signed_firmware_state(self) -> tuple[str, int | None]:
        """What a triggered SignedFirmwareStatusNotification reports: Idle (no requestId)
        when the last status sent was Installed or none was sent, else the last one sent
        with its requestId (L01.FR.28/29)."""
        status, request_id = self._signed_sent
        return (IDLE, None) if status in (IDLE, slots.REPORT_INSTALLED) else (status, request_id)

    def signed_status_sent(self, status: str, request_id: int | None) -> None:
        """The runtime sent a SignedFirmwareStatusNotification itself (the outcome after a restart)."""
        self._signed_sent = (status, request_id)

    def _start_update(self, job: UpdateJob, *, replaced: asyncio.Task[None] | None,
                      after: list[asyncio.Future] | None = None) -> None:
        self._update_task = asyncio.get_running_loop().create_task(self._run_update(job, replaced, after or []),
                                                                   name="firmware-update")

    async def _run_update(self, job: UpdateJob, replaced: asyncio.Task[None] | None,
                          after: list[asyncio.Future] | None = None) -> None:
        restarting = False
        run_dir: Path | None = None
        try:
            for first in after or []:
                # On disk, and confirmed to the CSMS, before any status about it goes out.
                await asyncio.wait([first], timeout=RESULT_WAIT_S)
            if replaced is not None:
                # The replaced attempt ends (end_maintenance, its cleanup) before this one starts.
                await asyncio.wait([replaced])
            retrieve = parse_ts(job.retrieve_date) or self._clock()
            if job.signed and retrieve > self._clock():
                await self._status(job, "DownloadScheduled")  # L01.FR.13
            await self._wait_until(retrieve)
            run_dir = self._download_root / f"run-{uuid.uuid4().hex}"
            self._live_run_dirs.add(run_dir)
            bundle = await self._download(job, run_dir)
            if bundle is not None and job.signed:
                bundle = await self._check_signature(job, bundle)
            if bundle is not None:
                restarting = await self._install(job, bundle, run_dir)
            if not restarting:
                await self._drop_job(job)
        except asyncio.CancelledError:
            raise  # close() or a newer request: update.json stays for resume() / was replaced
        except Exception:  # noqa: BLE001 -- a bug here must not take the station down
            log.exception("firmware update failed unexpectedly")
            await self._status(job, "InstallationFailed")
            await self._drop_job(job)
        finally:
            if self._update_task is asyncio.current_task():  # not when a newer request took over
                self.progress["firmware"] = None
                self._committing = False
                if not restarting:
                    self.firmware_status = IDLE
            if not restarting:
                await self._end_maintenance()
            if run_dir is not None:
                await asyncio.to_thread(_remove_tree, run_dir)
                self._live_run_dirs.discard(run_dir)

    async def _wait_until(self, when: datetime) -> None:
        while (delay := (when - self._clock()).total_seconds()) > 0:
            # In slices: a wall-clock step (NTP, SetClock) is noticed within the hour.
            await self._sleep(min(delay, 3600.0))

    async def _download(self, job: UpdateJob, run_dir: Path) -> Path | None:
        """The bundle in ``run_dir``, or None after FSN DownloadFailed."""
        url = redact_url(job.location)
        shown: dict[str, Any] = {"status": "Downloading", "location": url, "received": 0, "total": None,
                                 "percent": None}
        self.progress["firmware"] = shown
        await self._status(job, "Downloading")
        try:
            dest = await asyncio.to_thread(self._prepare_run_dir, run_dir, set(self._live_run_dirs))
        except OSError as exc:
            log.error("firmware download: cannot create %s: %s", run_dir, exc.strerror or exc)
            await self._status(job, "DownloadFailed")
            return None
        progress = _ProgressLog("firmware download", url, shown)
        downloaded = await self._retrying(
            "firmware download", job, lambda: download(job.location, dest, progress=progress,
                                                       timeout=self.settings.transfer_timeout_s,
                                                       ca_file=self.settings.ca_file,
                                                       max_bytes=self.settings.max_download_bytes))
        if not downloaded:
            await self._status(job, "DownloadFailed")
            return None
        await self._status(job, "Downloaded")
        return dest

    async def _check_signature(self, job: UpdateJob, bundle: Path) -> Path | None:
        """L01.FR.03/04: the signature over the whole downloaded file. The bundle, or None
        after InvalidSignature (the slots are never touched then). Then wait for
        installDateTime (InstallScheduled, L01.FR.16)."""
        self.progress["firmware"] = None
        verdict = await asyncio.to_thread(firmware_sig.verify_file_signature, bundle, job.signature or "",
                                          job.signing_certificate or "")
        if not verdict.ok:
            log.error("firmware from %s not installed: %s", redact_url(job.location), verdict.reason)
            await self._status(job, "InvalidSignature")
            await self._security_event(verdict.event or firmware_sig.INVALID_SIGNATURE,
                                       f"SignedUpdateFirmware {job.signed_request_id}: {verdict.reason}")
            return None
        log.info("firmware signature verified (SignedUpdateFirmware %s)", job.signed_request_id)
        await self._status(job, "SignatureVerified")
        install = parse_ts(job.install_date) if job.install_date else None
        if install is not None and install > self._clock():
            await self._status(job, "InstallScheduled")
            await self._wait_until(install)
        return bundle

    def _prepare_run_dir(self, run_dir: Path, live: set[Path]) -> Path:
        """Create ``run_dir`` and return the bundle's path in it (worker thread). Removes
        what earlier processes left in download/ (a power cut mid-download); ``live`` are
        the dirs of this service's runs, which clean up after themselves."""
        self._download_root.mkdir(parents=True, exist_ok=True)
        for entry in self._download_root.iterdir():
            if entry not in live:
                _remove_tree(entry)
        run_dir.mkdir()
        dest = run_dir / BUNDLE_FILE_NAME
        # Defence in depth: whatever download/ has become (a symlink...), write only below firmware/.
        if not dest.resolve().is_relative_to(self._fw_dir.resolve()):
            raise OSError(f"{dest} resolves to {dest.resolve()}, outside {self._fw_dir}")
        return dest

    async def _install(self, job: UpdateJob, bundle: Path, run_dir: Path) -> bool:
        """Install and switch; True when the restart into the new version was asked for."""
        self.progress["firmware"] = None
        await self._status(job, "Installing")
        cancelled = threading.Event()
        try:
            manifest = await asyncio.to_thread(slots.install_slot, self.data_dir, bundle, python=self._python,
                                               cancelled=cancelled)
        except asyncio.CancelledError:
            cancelled.set()  # the worker stops before it touches slots/ and removes its staging
            raise
        except (BundleError, SlotError) as exc:
            log.error("firmware from %s not installed: %s", redact_url(job.location), exc)
            # A signed update names a failed pre-install check (the bundle's checksums,
            # its format) InstallVerificationFailed; a slot that does not import is
            # InstallationFailed. Plain FirmwareStatusNotification has only the latter.
            verification = job.signed and isinstance(exc, BundleError)
            await self._status(job, "InstallVerificationFailed" if verification else "InstallationFailed")
            return False
        finally:
            await asyncio.to_thread(_remove_tree, run_dir)  # the bundle is not kept while we wait
        log.info("firmware %s installed in its slot; waiting until the station is idle", manifest.version)
        job.staged_version = manifest.version
        await self._job_io(self._write_job, job)
        await self.hooks.wait_until_idle()
        self._committing = True
        try:
            await asyncio.to_thread(functools.partial(slots.switch_to_trial, self.data_dir, manifest.version,
                                                      signed_request_id=job.signed_request_id))
        except SlotError as exc:
            log.error("cannot switch to firmware %s: %s", manifest.version, exc)
            await self._status(job, "InstallationFailed")
            await self._drop_job(job)
            await self.hooks.restart()  # the disk is failing; a fresh start is the safest state
            return True
        await self._drop_job(job)
        log.info("restarting into firmware %s (trial)", manifest.version)
        if job.signed:
            await self._status(job, "InstallRebooting")  # L01.FR.15
        await self.hooks.restart()
        return True

    async def _end_maintenance(self) -> None:
        try:
            await self.hooks.end_maintenance()
        except Exception:  # noqa: BLE001 -- the runtime logs its own; our cleanup goes on
            log.exception("ending the firmware maintenance failed; idle connectors may stay Unavailable")

    async def _retrying(self, what: str, job: UpdateJob | _DiagnosticsJob,
                        attempt_once: Callable[[], Awaitable[Any]]) -> bool:
        """1 + ``job.retries`` attempts, ``job.retry_interval`` s apart (UpdateFirmware.req and
        GetDiagnostics.req: retries, retryInterval). True when one succeeded."""
        attempts = 1 + job.retries
        for attempt in range(1, attempts + 1):
            try:
                await attempt_once()
                return True
            except TransferError as exc:
                log.warning("%s attempt %d/%d failed: %s", what, attempt, attempts, exc)
                if attempt < attempts:
                    await self._sleep(job.retry_interval)
        return False

    async def _status(self, job: UpdateJob, status: str) -> None:
        """The job's status: SignedFirmwareStatusNotification with the requestId for a
        signed update (L01.FR.01/10), FirmwareStatusNotification for a plain one."""
        if not job.signed:
            await self._firmware_status(status)
            return
        self._signed_sent = (status, job.signed_request_id)
        log.info("SignedFirmwareStatusNotification %s (requestId %s)", status, job.signed_request_id)
        try:
            await self.hooks.send_signed_firmware_status(status, job.signed_request_id)
        except Exception:  # noqa: BLE001 -- the runtime queues/logs; our sequence goes on
            log.exception("sending SignedFirmwareStatusNotification %s failed", status)

    async def _firmware_status(self, status: str) -> None:
        self.firmware_status = status
        await _notify("FirmwareStatusNotification", self.hooks.send_firmware_status, status)

    async def _security_event(self, name: str, tech_info: str | None) -> None:
        try:
            await self.hooks.security_event(name, tech_info)
        except Exception:  # noqa: BLE001 -- logged; the update's own sequence goes on
            log.exception("raising the security event %s failed", name)

    def _after_reply(self, replied: asyncio.Future | None, work: Awaitable[None]) -> None:
        """Run ``work`` once the answer to the CSMS is out (or at once without ``replied``)."""

        async def run() -> None:
            if replied is not None:
                await asyncio.wait([replied], timeout=RESULT_WAIT_S)
            await work

        self._background.add(task := asyncio.get_running_loop().create_task(run(), name="firmware-after-reply"))
        task.add_done_callback(self._background.discard)

    # -- persisted job (update.json; these run on the job worker thread) ------------------

    def _job_io(self, work: Callable[..., _T], *args: Any) -> asyncio.Future[_T]:
        try:
            return asyncio.wrap_future(self._job_worker.submit(work, *args))
        except RuntimeError:  # close() stopped the worker; nothing is ordered after this
            return asyncio.ensure_future(asyncio.to_thread(work, *args))

    async def _drop_job(self, job: UpdateJob) -> None:
        await self._job_io(self._remove_job, job.request_id)

    def _read_job(self) -> UpdateJob | None:
        try:
            doc = json.loads(self._job_file.read_text(encoding="utf-8"))
            return UpdateJob(**doc)
        except FileNotFoundError:
            return None
        except (OSError, ValueError, TypeError) as exc:
            log.error("ignoring unreadable scheduled firmware update %s: %s", self._job_file, exc)
            with contextlib.suppress(OSError):
                self._job_file.unlink()
            return None

    def _write_job(self, job: UpdateJob) -> None:
        try:
            slots.write_json_atomic(self._job_file, asdict(job))
        except OSError as exc:
            log.error("cannot persist the scheduled firmware update (it will not survive a restart): %s", exc)

    def _remove_job(self, request_id: str) -> None:
        """Remove update.json if it holds this request (or nothing valid): a newer one's stays."""
        try:
            stored = json.loads(self._job_file.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return
        except (OSError, ValueError):
            stored = None
        if not isinstance(stored, dict) or stored.get("request_id") in (request_id, None):
            with contextlib.suppress(OSError):
                self._job_file.unlink()

    # -- GetDiagnostics -------------------------------------------------------------------

    def get_diagnostics(self, location: str, retries: int | None, retry_interval: int | None,
                        start_time: datetime | str | None, stop_time: datetime | str | None) -> str | None:
        """The fileName for GetDiagnostics.conf (None: no file can be made); uploads in the background."""
        now = self._clock()
        name = diagnostics_file_name(self._cpid, now)
        out_dir = self._fw_dir / "diagnostics"
        try:
            out_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            log.error("GetDiagnostics: cannot create %s: %s", out_dir, exc)
            return None
        if self._diag_task is not None and not self._diag_task.done():
            log.warning("a new GetDiagnostics replaces the upload in progress")
            self._diag_task.cancel()
        self._diag_seq += 1
        # The local file name is unique: two requests in one second get the same fileName.
        job = _DiagnosticsJob(location, name, out_dir / f"{self._diag_seq}-{name}", now,
                              self.settings.default_retries if retries is None else max(0, int(retries)),
                              self.settings.default_retry_interval_s if retry_interval is None
                              else max(0, int(retry_interval)),
                              _as_time(start_time), _as_time(stop_time))
        self._diag_task = asyncio.get_running_loop().create_task(self._run_diagnostics(job), name="diagnostics")
        return name

    async def _run_diagnostics(self, job: _DiagnosticsJob) -> None:
        url = redact_url(job.location)
        job.shown.update(status="Uploading", location=url, file=job.name, received=0, total=None, percent=None)
        self.progress["diagnostics"] = job.shown
        try:
            await self._diagnostics_status("Uploading")
            ok = await self._build_and_upload(job, url)
            await self._diagnostics_status("Uploaded" if ok else "UploadFailed")
        except asyncio.CancelledError:
            raise
        except Exception:  # noqa: BLE001 -- a bug here must not take the station down
            log.exception("diagnostics upload failed unexpectedly")
            await self._diagnostics_status("UploadFailed")
        finally:
            if self._diag_task is asyncio.current_task():  # not when a newer request took over
                self.progress["diagnostics"] = None
                self.diagnostics_status = IDLE
            await asyncio.to_thread(_remove_tree, job.path)

    async def _diagnostics_archive(self, what: str, path: Path, now: datetime, start: datetime | None,
                                   stop: datetime | None) -> bool:
        """Build the diagnostics archive at ``path`` off the loop (GetDiagnostics, GetLog
        DiagnosticsLog); False, logged, when it cannot be made."""
        try:
            extras = self.hooks.diagnostics_extras()
        except Exception as exc:  # noqa: BLE001 -- the file is still worth sending
            log.exception("diagnostics extras failed")
            extras = {"error": f"diagnostics_extras() failed: {exc!r}"}
        log_files = self._log_files()

        def build() -> None:
            build_archive(path, charge_point_id=self._cpid, firmware_version=twin.__version__, now=now,
                          log_files=log_files, extras=extras,
                          firmware_state=slots.read_state(self.data_dir).to_json(), start=start, stop=stop)

        try:
            await asyncio.to_thread(build)
        except DiagnosticsError as exc:
            log.error("%s: %s", what, exc)
            return False
        return True

    async def _build_and_upload(self, job: _DiagnosticsJob, url: str) -> bool:
        if not await self._diagnostics_archive("GetDiagnostics", job.path, job.requested, job.start, job.stop):
            return False
        method = self.settings.diagnostics_http_method
        target = _upload_url(job.location, job.name, method)
        progress = _ProgressLog("diagnostics upload", url, job.shown)
        uploaded = await self._retrying(
            "diagnostics upload", job, lambda: upload(target, job.path, method=method, name=job.name,
                                                      timeout=self.settings.transfer_timeout_s,
                                                      ca_file=self.settings.ca_file, progress=progress))
        if uploaded:
            log.info("diagnostics %s uploaded to %s", job.name, url)
        return uploaded

    async def _diagnostics_status(self, status: str) -> None:
        self.diagnostics_status = status
        await _notify("DiagnosticsStatusNotification", self.hooks.send_diagnostics_status, status)

    # -- GetLog ---------------------------------------------------------------------------

    async def get_log(self, log_type: str, request_id: int, remote_location: str, retries: int | None,
                      retry_interval: int | None, oldest: datetime | str | None, latest: datetime | str | None, *,
                      security_log: Any = None, replied: asyncio.Future | None = None) -> tuple[str, str | None]:
        """(GetLog.conf status, filename). The file is made before the answer, so "no data"
        is a Rejected, not a failed upload (N01.FR.01): SecurityLog is the security log's
        entries between ``oldest`` and ``latest`` (N01.FR.03, ``security_log`` is a
        :class:`twin.security.log.SecurityLog`), DiagnosticsLog the diagnostics file with
        the log lines of that window (N01.FR.04). A log upload in progress is cancelled:
        AcceptedCanceled (N01.FR.11). The upload starts once ``replied`` is set."""
        now = self._clock()
        start, stop = _as_time(oldest), _as_time(latest)
        out_dir = self._fw_dir / "logs"
        try:
            await asyncio.to_thread(out_dir.mkdir, parents=True, exist_ok=True)
        except OSError as exc:
            log.error("GetLog: cannot create %s: %s", out_dir, exc.strerror or exc)
            return "Rejected", None
        self._log_seq += 1
        if log_type == "SecurityLog":
            name = security_log_file_name(self._cpid, now)
        elif log_type == "DiagnosticsLog":
            name = diagnostics_file_name(self._cpid, now)
        else:  # the schema allows only these two; a CSMS that sends another gets a clear no
            log.error("GetLog %s: unknown logType %r", request_id, log_type)
            return "Rejected", None
        path = out_dir / f"{self._log_seq}-{name}"
        if not await self._make_log_file(log_type, path, now, start, stop, security_log):
            await asyncio.to_thread(_remove_tree, path)
            return "Rejected", None
        running = self._log_task if self._log_task is not None and not self._log_task.done() else None
        if running is not None:
            log.warning("GetLog %s cancels the log upload in progress", request_id)
            running.cancel()
        job = _LogJob(remote_location, name, path, request_id,
                      self.settings.default_retries if retries is None else max(0, int(retries)),
                      self.settings.default_retry_interval_s if retry_interval is None else max(0, int(retry_interval)))
        self._log_running = ("Uploading", request_id)  # a trigger between the answer and the first status
        self._log_task = asyncio.get_running_loop().create_task(self._run_log_upload(job, running, replied),
                                                                name="log-upload")
        return ("AcceptedCanceled" if running is not None else "Accepted"), name

    @property
    def log_state(self) -> tuple[str, int | None]:
        """What a triggered LogStatusNotification reports: the upload's status and its
        requestId, or Idle without one when none runs (N01.FR.12)."""
        return self._log_running if self._log_running is not None else (IDLE, None)

    async def _make_log_file(self, log_type: str, path: Path, now: datetime, start: datetime | None,
                             stop: datetime | None, security_log: Any) -> bool:
        """Write the file to upload; False when there is nothing to send (or it cannot be made)."""
        if log_type == "SecurityLog":
            if security_log is None:
                log.error("GetLog SecurityLog: the station has no security log")
                return False
            try:
                count = await asyncio.to_thread(security_log.export, path, start, stop)
            except OSError as exc:
                log.error("GetLog SecurityLog: cannot write %s: %s", path, exc.strerror or exc)
                return False
            if not count:
                log.info("GetLog SecurityLog: no entries between %s and %s", start, stop)
            return count > 0
        return await self._diagnostics_archive("GetLog DiagnosticsLog", path, now, start, stop)

    async def _run_log_upload(self, job: _LogJob, replaced: asyncio.Task[None] | None,
                              replied: asyncio.Future | None) -> None:
        url = redact_url(job.location)
        shown: dict[str, Any] = {"status": "Uploading", "location": url, "file": job.name, "requestId": job.request_id,
                                 "received": 0, "total": None, "percent": None}
        try:
            if replied is not None:
                await asyncio.wait([replied], timeout=RESULT_WAIT_S)  # GetLog.conf first
            if replaced is not None:
                await asyncio.wait([replaced])  # its cleanup is done before this one starts
            self.progress["log"] = shown
            await self._log_status("Uploading", job.request_id)  # N01.FR.08
            status = await self._upload_log(job, url, shown)
            await self._log_status(status, job.request_id)  # N01.FR.09/10
        except asyncio.CancelledError:
            raise
        except Exception:  # noqa: BLE001 -- a bug here must not take the station down
            log.exception("log upload failed unexpectedly")
            await self._log_status("UploadFailure", job.request_id)
        finally:
            if self._log_task is asyncio.current_task():  # not when a newer request took over
                self.progress["log"] = None
                self._log_running = None
            await asyncio.to_thread(_remove_tree, job.path)

    async def _upload_log(self, job: _LogJob, url: str, shown: dict[str, Any]) -> str:
        """The final LogStatusNotification status: Uploaded, or why not (N01.FR.10)."""
        method = self.settings.diagnostics_http_method
        target = _upload_url(job.location, job.name, method)
        progress = _ProgressLog("log upload", url, shown)
        attempts = 1 + job.retries
        for attempt in range(1, attempts + 1):
            try:
                await upload(target, job.path, method=method, name=job.name, timeout=self.settings.transfer_timeout_s,
                             ca_file=self.settings.ca_file, progress=progress)
                log.info("log %s uploaded to %s (GetLog %s)", job.name, url, job.request_id)
                return "Uploaded"
            except TransferError as exc:
                log.warning("log upload attempt %d/%d failed: %s", attempt, attempts, exc)
                if exc.kind != transfer.FAILED:
                    # Another try cannot fix a refused login, an unknown scheme or a broken URL.
                    return _LOG_FAILURE[exc.kind]
                if attempt < attempts:
                    await self._sleep(job.retry_interval)
        return "UploadFailure"

    async def _log_status(self, status: str, request_id: int) -> None:
        self._log_running = (status, request_id)
        log.info("LogStatusNotification %s (requestId %s)", status, request_id)
        try:
            await self.hooks.send_log_status(status, request_id)
        except Exception:  # noqa: BLE001 -- the runtime queues/logs; our sequence goes on
            log.exception("sending LogStatusNotification %s failed", status)

    # -- shutdown -------------------------------------------------------------------------

    async def wait_finished(self) -> None:
        """Wait until the update and the diagnostics upload in progress (if any) are over."""
        tasks = [task for task in (self._update_task, self._diag_task, self._log_task, *self._background)
                 if task is not None]
        if tasks:
            await asyncio.wait(tasks)

    async def close(self) -> None:
        """Cancel transfers in progress; a scheduled update stays persisted for resume().

        The runtime's restart() calls this from inside the update task itself (install ->
        restart -> shutdown -> close): that task is left to finish on its own."""
        current = asyncio.current_task()
        tasks = [t for t in (self._update_task, self._diag_task, self._log_task, *self._background)
                 if t is not None and not t.done() and t is not current]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._job_worker.shutdown(wait=False)  # queued update.json writes still run


@dataclass
class _DiagnosticsJob:
    location: str
    name: str
    path: Path
    requested: datetime
    retries: int
    retry_interval: int
    start: datetime | None
    stop: datetime | None
    shown: dict[str, Any] = field(default_factory=dict)  # what progress["diagnostics"] shows


@dataclass
class _LogJob:
    location: str
    name: str
    path: Path
    request_id: int
    retries: int
    retry_interval: int


#: LogStatusNotification status for a transfer failure that retrying cannot fix (N01.FR.10).
_LOG_FAILURE = {transfer.PERMISSION: "PermissionDenied", transfer.UNSUPPORTED: "NotSupportedOperation",
                transfer.BAD_REQUEST: "BadMessage", transfer.FAILED: "UploadFailure"}


async def _notify(message: str, send: Callable[[str], Awaitable[None]], status: str) -> None:
    log.info("%s %s", message, status)
    try:
        await send(status)
    except Exception:  # noqa: BLE001 -- the runtime queues/logs; our sequence goes on
        log.exception("sending %s %s failed", message, status)


def _as_time(value: datetime | str | None) -> datetime | None:
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=timezone.utc)
    return parse_ts(value)


def _remove_tree(path: Path) -> None:
    """Remove a file or a directory tree; already gone is fine (worker thread)."""
    try:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink()
    except OSError:
        pass  # gone already, or the disk is failing: nothing more to do about a leftover


def _upload_url(location: str, file_name: str, method: str) -> str:
    """GetDiagnostics.req location is a directory (section 6.31): the file goes inside it.
    An HTTP POST goes to the location itself, the name travels in the multipart body."""
    try:
        parts = urlsplit(location)
    except ValueError:
        return location  # upload() reports the malformed URL
    if method == "POST" and parts.scheme.lower() in ("http", "https"):
        return location
    return urlunsplit(parts._replace(path=parts.path.rstrip("/") + "/" + quote(file_name)))
