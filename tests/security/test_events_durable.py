"""Security events survive what transactions survive (WP3 A04.FR.02, "queued with guaranteed
delivery"): raised while the CSMS is unreachable, through a kill -9 of the real ``twin run``
process, and delivered after the next Accepted boot, in the order they happened, with the
time they happened. A restart on purpose is ResetOrReboot, a power cut StartupOfTheDevice.
"""

from __future__ import annotations

import asyncio
import signal
import time
from pathlib import Path

import pytest

from tests.conftest import PYTHON, free_port, twin_process_env
from twin.csms import Csms
from twin.sim_client import SimClientError, request

pytestmark = pytest.mark.slow

KEY = "sixteen-chars-ok"  # AuthorizationKey as plain text (16 bytes)


def write_config(path: Path, csms_port: int, data_dir: Path, api_port: int) -> None:
    path.write_text(f"""
[station]
charge_point_id = "SEC-1"
connectors = 2
data_dir = "{data_dir}"
log_level = "INFO"

[csms]
url = "ws://127.0.0.1:{csms_port}"

[control]
host = "127.0.0.1"
port = {api_port}

[keys]
SecurityProfile = 1
AuthorizationKey = "{KEY}"
""")


class Station:
    def __init__(self, tmp: Path, csms_port: int):
        self.tmp = tmp
        self.api_port = free_port()
        self.base = f"http://127.0.0.1:{self.api_port}"
        self.config = tmp / "station.toml"
        write_config(self.config, csms_port, tmp / "data", self.api_port)
        self.proc: asyncio.subprocess.Process | None = None
        self.runs = 0

    async def start(self) -> None:
        self.runs += 1
        log = open(self.tmp / f"run-{self.runs}.log", "wb")
        self.proc = await asyncio.create_subprocess_exec(
            PYTHON, "-m", "twin", "run", "--config", str(self.config), "--sim",
            stdout=log, stderr=asyncio.subprocess.STDOUT, env=twin_process_env(), cwd=str(self.tmp))
        log.close()
        await self.wait_api()

    def log_tail(self) -> str:
        return (self.tmp / f"run-{self.runs}.log").read_text(errors="replace")[-3000:]

    async def wait_api(self, timeout: float = 20) -> dict:
        end = time.monotonic() + timeout
        while True:
            if self.proc.returncode is not None:
                raise AssertionError(f"station exited with {self.proc.returncode}: {self.log_tail()}")
            try:
                return await asyncio.to_thread(request, self.base, "GET", "/api/state", None, 2)
            except SimClientError:
                if time.monotonic() > end:
                    raise AssertionError(f"control API not up: {self.log_tail()}") from None
                await asyncio.sleep(0.05)

    async def post(self, path: str, body: dict | None = None) -> dict:
        return await asyncio.to_thread(request, self.base, "POST", path, body, 10)

    async def kill9(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        await self.proc.wait()

    async def stop(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(self.proc.wait(), 20)
            except asyncio.TimeoutError:
                self.proc.kill()
                await self.proc.wait()


def events(csms: Csms) -> list[dict]:
    return [m.payload for m in csms.calls("SecurityEventNotification")]


async def test_events_raised_offline_survive_kill_9_and_arrive_after_the_accepted_boot(tmp_path):
    csms_port = free_port()
    station = Station(tmp_path, csms_port)
    csms = Csms("127.0.0.1", csms_port, require_password=KEY, heartbeat_interval=300)
    try:
        # No CSMS yet: the boot's StartupOfTheDevice and a tamper alarm wait on disk.
        await station.start()
        state = await station.post("/api/tamper", {"info": "lid opened"})
        assert state["queue"]["length"] >= 2, state["queue"]  # answered after the commit
        await station.kill9()
        # A power cut (kill -9 leaves no restart marker): a second StartupOfTheDevice.
        await station.start()
        await asyncio.sleep(0.5)
        await csms.start()
        await csms.wait_until(lambda: len(events(csms)) >= 3 or None, timeout=30, what="three security events")
        got = events(csms)
        assert [e["type"] for e in got] == ["StartupOfTheDevice", "TamperDetectionActivated", "StartupOfTheDevice"]
        assert got[1].get("techInfo") == "lid opened"
        # The time each happened, not the time it was sent (A04; the order they happened in).
        stamps = [e["timestamp"] for e in got]
        assert stamps == sorted(stamps) and len(set(stamps)) == 3
        boot = csms.calls("BootNotification")
        assert boot and csms.calls("BootNotification")[0].index < csms.calls("SecurityEventNotification")[0].index
        # A restart on purpose (SIGTERM: the service stopping) boots as ResetOrReboot.
        await station.stop()
        await station.start()
        await csms.wait_until(lambda: len(events(csms)) >= 4 or None, timeout=30, what="the reboot event")
        assert events(csms)[3]["type"] == "ResetOrReboot"
        state = await station.wait_api()
        assert state["queue"]["length"] == 0 and state["queue"]["discarded"] == 0
        assert state["security"]["profile"] == 1
    finally:
        await station.stop()
        await csms.stop()
    log_text = "".join(p.read_text(errors="replace") for p in tmp_path.glob("run-*.log"))
    assert KEY not in log_text  # the AuthorizationKey is never logged (A01.FR.12)
    security_log = (tmp_path / "data" / "security.log").read_text()
    for name in ("StartupOfTheDevice", "TamperDetectionActivated", "ResetOrReboot"):
        assert name in security_log
    assert KEY not in security_log
