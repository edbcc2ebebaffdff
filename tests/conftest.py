"""Shared fixtures: a real CSMS on loopback and a real station runtime (sim drivers).

The station runs in-process on the test's event loop, with every real adapter (SQLite
store, websockets link, control API); only the hardware is simulated. End-to-end tests
that need a real process (crash, systemd, firmware) start ``python -m twin`` instead.
"""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

import pytest

from twin.csms import Csms

os.environ.setdefault("GPIOZERO_PIN_FACTORY", "mock")
ROOT = Path(__file__).resolve().parent.parent


def pytest_runtest_setup(item: pytest.Item) -> None:
    """Tests marked ``needs_root("why")`` skip for a normal user and say why; as root (CI) they run,
    and then a missing tool fails them, so CI cannot lose them silently."""
    marker = item.get_closest_marker("needs_root")
    if marker is not None and os.geteuid() != 0:
        why = marker.args[0] if marker.args else "see the test"
        pytest.skip(f"needs root: {why}; run the suite as root, as CI does")


@pytest.fixture
async def csms():
    server = Csms(heartbeat_interval=300)
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


class StationHandle:
    """A running station plus the verbs the OCTT cases use."""

    def __init__(self, rt, csms: Csms):
        self.rt = rt
        self.csms = csms

    @property
    def st(self):
        return self.rt.station

    def status(self, cid: int) -> str:
        return self.st.status_of(self.st.connectors[cid])[0]

    async def plug(self, cid: int = 1):
        return await self.rt.plug(cid)

    async def unplug(self, cid: int = 1):
        return await self.rt.unplug(cid)

    async def tap(self, tag: str):
        return await self.rt.rfid(tag)

    async def offline(self) -> None:
        await self.rt.network(False)
        await self.csms.wait_disconnected(timeout=10)
        await self.until(lambda: not self.st.online)

    async def online(self) -> None:
        await self.rt.network(True)
        await self.until(lambda: self.st.online and self.st.registration == "Accepted", timeout=15)

    async def until(self, check, timeout: float = 10.0, what: str = "condition") -> None:
        loop = asyncio.get_running_loop()
        end = loop.time() + timeout
        while not check():
            if loop.time() > end:
                raise TimeoutError(f"timed out waiting for {what}")
            await asyncio.sleep(0.02)

    async def configure(self, **keys: str) -> None:
        for key, value in keys.items():
            result = await self.csms.call("ChangeConfiguration", {"key": key, "value": str(value)})
            assert result["status"] in ("Accepted", "RebootRequired"), (key, value, result)


class FlakyStore:
    """Makes a running station's store fail every write (a full disk, an I/O error) until
    ``failing`` is set to False; the real store is used again from then on."""

    def __init__(self, store, message: str):
        from twin.store import StoreError

        self.real_apply = store.apply
        self.failing = True
        self.error = lambda: StoreError(f"{message} (simulated)", retryable=True)
        store.apply = self.apply

    async def apply(self, ops):
        if self.failing:
            raise self.error()
        return await self.real_apply(ops)


def station_config(csms: Csms, data_dir: Path, keys: dict | None = None, **attrs):
    """A sim-driver station config for ``csms``; ``attrs`` set StationConfig fields (e.g. fixed_cable=False)."""
    from twin.config import load_config

    cfg = load_config(None, {"csms_url": csms.url, "charge_point_id": "CP1", "data_dir": data_dir,
                             "control": "127.0.0.1:0", "sim": True})
    cfg.keys.update(keys or {})
    for name, value in attrs.items():
        if not hasattr(cfg, name):
            raise AttributeError(f"StationConfig has no field {name}")
        setattr(cfg, name, value)
    return cfg


@pytest.fixture
async def make_station(csms, tmp_path):
    """``await make_station(keys={...})`` -> a registered StationHandle (all connectors Available)."""
    from twin.runtime import Runtime

    runtimes = []

    async def make(keys: dict | None = None, data_dir: Path | None = None, wait: bool = True, **attrs):
        cfg = station_config(csms, data_dir or tmp_path / "data", keys, **attrs)
        rt = Runtime(cfg, meter_poll_s=0.2)
        mark = csms.mark()
        await rt.start()
        runtimes.append(rt)
        handle = StationHandle(rt, csms)
        if wait:
            await csms.wait_for("BootNotification", timeout=10, after=mark)
            await handle.until(lambda: rt.station.registration == "Accepted", what="registration")
            for cid in range(cfg.connectors + 1):
                await csms.wait_for("StatusNotification", {"connectorId": cid}, timeout=10, after=mark)
            csms.mark()
        return handle

    try:
        yield make
    finally:
        for rt in runtimes:
            await rt.shutdown(graceful=False)
    assert not csms.schema_errors, csms.schema_errors  # OCTT: every message validates (§1)


@pytest.fixture
async def station(make_station):
    return await make_station()


def twin_process_env(**extra: str) -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env.update(extra)
    return env


PYTHON = sys.executable


def free_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
