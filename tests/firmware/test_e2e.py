"""End to end (issue 5): a real `twin run` process receives UpdateFirmware from a real
CSMS, downloads a bundle made by `twin firmware build`, installs it, restarts, and its
next BootNotification reports the new version; a bundle that crashes on start is
rolled back and reported as InstallationFailed."""

from __future__ import annotations

import io
import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
from collections.abc import AsyncIterator
from datetime import datetime, timezone
from pathlib import Path

import pytest

import twin
from tests.firmware.servers import FtpServer, HttpServer, free_port
from twin.core.timeutil import ts
from twin.csms import Csms
from twin.firmware import slots
from twin.firmware.bundle import bump_version

REPO = Path(__file__).resolve().parents[2]
NEW = bump_version(twin.__version__)

pytestmark = pytest.mark.slow


def _twin_firmware_build(source: Path, out: Path, version: str | None = None) -> Path:
    cmd = [sys.executable, "-m", "twin", "firmware", "build", "--source", str(source), "--out", str(out)]
    done = subprocess.run(cmd + (["--version", version] if version else []), cwd=REPO, capture_output=True,
                          text=True, check=False, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert done.returncode == 0, done.stderr
    return Path(done.stdout.strip())


@pytest.fixture
async def csms() -> AsyncIterator[Csms]:
    server = Csms()
    await server.start()
    yield server
    await server.stop()


class Station:
    """A real `twin run --sim` process against ``csms``; ``settings`` is prepended to its TOML."""

    def __init__(self, tmp_path: Path, csms: Csms, *, settings: str = "") -> None:
        self.data_dir = tmp_path / "data"
        self.log = tmp_path / "station.log"
        config = tmp_path / "station.toml"
        config.write_text(settings + "[firmware]\nboot_timeout_s = 60\ndefault_retry_interval_s = 1\n")
        env = {k: v for k, v in os.environ.items()
               if k not in ("JOURNAL_STREAM", "WATCHDOG_PID", "WATCHDOG_USEC", "NOTIFY_SOCKET", "OCPP_TWIN_CHILD")}
        env["PYTHONPATH"] = str(REPO)
        self._out = open(self.log, "wb")  # noqa: SIM115 -- closed in stop()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "twin", "run", "--sim", "--config", str(config), "--csms", f"{csms.url}/ocpp",
             "--id", "CP1", "--data-dir", str(self.data_dir), "--control", f"127.0.0.1:{free_port()}"],
            cwd=REPO, env=env, stdout=self._out, stderr=subprocess.STDOUT)

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=40)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._out.close()
        return self.proc.returncode


@pytest.fixture
def station_factory(tmp_path: Path):
    started: list[Station] = []

    def start(csms: Csms) -> Station:
        station = Station(tmp_path, csms)
        started.append(station)
        return station

    yield start
    for station in started:
        station.stop()


async def _booted(csms: Csms) -> str:
    """The version in the BootNotification, once the station is registered (it sends
    StatusNotification only after BootNotification.conf Accepted, section 4.2)."""
    boot = await csms.wait_for("BootNotification", timeout=60)
    await csms.wait_for("StatusNotification", timeout=30)
    return str(boot.payload["firmwareVersion"])


async def _statuses(csms: Csms, after: int, until: str, timeout: float) -> list[str]:
    await csms.wait_for("FirmwareStatusNotification", {"status": until}, timeout=timeout, after=after)
    return [m.payload["status"] for m in csms.calls("FirmwareStatusNotification", after=after)]


async def test_update_firmware_installs_and_boots_the_new_version(csms: Csms, station_factory, tmp_path: Path) -> None:
    bundle = _twin_firmware_build(REPO, tmp_path / "dist")  # default: the bumped version
    with FtpServer(tmp_path / "ftp") as ftp:
        shutil.copy(bundle, ftp.home / bundle.name)
        station = station_factory(csms)
        assert await _booted(csms) == f"V{twin.__version__}"
        mark = csms.mark()
        reply = await csms.call("UpdateFirmware", {"location": ftp.url(bundle.name),
                                                   "retrieveDate": ts(datetime.now(timezone.utc)), "retries": 0})
        assert reply == {}
        reboot = await csms.wait_for("BootNotification", {"firmwareVersion": f"V{NEW}"}, timeout=120, after=mark)
        statuses = await _statuses(csms, mark, "Installed", timeout=60)
    assert statuses == ["Downloading", "Downloaded", "Installing", "Installed"]
    assert csms.calls("FirmwareStatusNotification", after=mark)[-1].index > reboot.index
    state = slots.read_state(station.data_dir)
    assert (state.active, state.trial, state.previous) == (NEW, None, slots.BASE)
    assert station.stop() == 0


async def test_a_version_that_crashes_on_start_is_rolled_back(csms: Csms, station_factory, tmp_path: Path) -> None:
    source = tmp_path / "crashing"
    for package in ("twin", "drivers"):
        shutil.copytree(REPO / package, source / package, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / "pyproject.toml", source)
    # It imports fine (the install's import test passes) but `twin run` dies at once.
    (source / "twin" / "__main__.py").write_text("raise SystemExit('this build crashes on start')\n")
    bundle = _twin_firmware_build(source, tmp_path / "dist", NEW)
    with HttpServer() as http:
        http.files["/" + bundle.name] = bundle.read_bytes()
        station = station_factory(csms)
        await _booted(csms)
        mark = csms.mark()
        await csms.call("UpdateFirmware", {"location": http.url(bundle.name),
                                           "retrieveDate": ts(datetime.now(timezone.utc))})
        statuses = await _statuses(csms, mark, "InstallationFailed", timeout=120)
    boots = csms.calls("BootNotification", after=mark)
    assert [b.payload["firmwareVersion"] for b in boots] == [f"V{twin.__version__}"]  # back on the old version
    assert statuses == ["Downloading", "Downloaded", "Installing", "InstallationFailed"]
    state = slots.read_state(station.data_dir)
    assert state.active == slots.BASE and state.failed is not None and state.failed["version"] == NEW
    assert station.proc.poll() is None  # still serving
    assert station.stop() == 0


async def test_get_diagnostics_uploads_the_station_logs(csms: Csms, station_factory, tmp_path: Path) -> None:
    with FtpServer(tmp_path / "ftp") as ftp:
        station = station_factory(csms)
        await _booted(csms)
        mark = csms.mark()
        reply = await csms.call("GetDiagnostics", {"location": ftp.url("files/"), "retries": 0})
        name = reply["fileName"]
        await csms.wait_for("DiagnosticsStatusNotification", {"status": "Uploaded"}, timeout=60, after=mark)
        statuses = [m.payload["status"] for m in csms.calls("DiagnosticsStatusNotification", after=mark)]
        uploaded = (ftp.home / "files" / name).read_bytes()
    assert statuses == ["Uploading", "Uploaded"]
    with tarfile.open(fileobj=io.BytesIO(uploaded), mode="r:gz") as tar:
        members = {m.name: tar.extractfile(m).read() for m in tar}  # type: ignore[union-attr]
    assert b"station CP1 up" in members["logs/twin.log"]
    summary = json.loads(members["diagnostics.json"])
    assert summary["chargePointId"] == "CP1" and summary["firmwareVersion"] == twin.__version__
    assert set(summary["station"]) >= {"config", "store", "drivers"}
    assert station.stop() == 0
