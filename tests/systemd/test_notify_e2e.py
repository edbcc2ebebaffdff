"""A real `twin run` process talks sd_notify to a socket this test owns, the way
systemd would see it with Type=notify and WatchdogSec=2 (issue 7):
READY=1, WATCHDOG=1 every WATCHDOG_USEC/2, no pings while the event loop is
blocked, STOPPING=1 and exit status 0 on SIGTERM."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import sys
import time
from itertools import pairwise
from pathlib import Path

import pytest

from tests.service.dgram import DatagramSink
from twin.csms import Csms

REPO = Path(__file__).resolve().parents[2]
WATCHDOG_USEC = 2_000_000  # -> a ping every 1 s
BLOCK_SECONDS = 5.0

pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def _post(port: int, path: str, body: dict[str, object]) -> tuple[int, str]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    data = json.dumps(body).encode()
    writer.write(f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n"
                 f"Content-Length: {len(data)}\r\nConnection: close\r\n\r\n".encode() + data)
    await writer.drain()
    raw = await reader.read()
    writer.close()
    head, _, payload = raw.decode().partition("\r\n\r\n")
    return int(head.split()[1]), payload


class Pings:
    """Every datagram the station sends, with the monotonic time it arrived."""

    def __init__(self, sink: DatagramSink) -> None:
        self.sink = sink
        self.received: list[tuple[float, str]] = []

    async def next(self, prefix: str, timeout: float) -> float:
        deadline = time.monotonic() + timeout
        while True:
            text = await self.sink.arecv_text(max(0.01, deadline - time.monotonic()))
            now = time.monotonic()
            self.received.append((now, text))
            if text.split("\n")[0].startswith(prefix):
                return now

    def times(self, message: str) -> list[float]:
        return [t for t, text in self.received if text == message]


async def test_ready_watchdog_blocked_loop_and_stopping(csms: Csms, tmp_path: Path) -> None:
    """``csms``: the loopback CSMS fixture of tests/conftest.py."""
    sink = DatagramSink()
    control_port = _free_port()
    config = tmp_path / "station.toml"
    config.write_text("[control]\ndebug = true\n")
    env = {k: v for k, v in os.environ.items() if k not in ("JOURNAL_STREAM", "WATCHDOG_PID", "LISTEN_FDS")}
    env.update(NOTIFY_SOCKET=sink.address, WATCHDOG_USEC=str(WATCHDOG_USEC), PYTHONPATH=str(REPO))
    stderr = open(tmp_path / "stderr.log", "wb")
    # As systemd does, WATCHDOG_PID names the main process: the shell's pid, which
    # exec hands on to the station.
    proc = await asyncio.create_subprocess_exec(
        "/bin/sh", "-c", 'WATCHDOG_PID=$$ exec "$@"', "sh", sys.executable, "-m", "twin", "run", "--sim", "--config", str(config),
        "--csms", f"{csms.url}/ocpp", "--id", "CP1", "--data-dir", str(tmp_path / "data"),
        "--control", f"127.0.0.1:{control_port}",
        cwd=REPO, env=env, stdout=asyncio.subprocess.DEVNULL, stderr=stderr)
    pings = Pings(sink)
    try:
        ready = asyncio.create_task(pings.next("READY=1", timeout=30))
        exited = asyncio.create_task(proc.wait())
        await asyncio.wait({ready, exited}, return_when=asyncio.FIRST_COMPLETED)
        if not ready.done() or ready.exception() is not None:
            ready.cancel()
            pytest.fail(f"no READY=1 (exit status {proc.returncode}); station stderr:\n"
                        + (tmp_path / "stderr.log").read_text())
        exited.cancel()

        # Periodic pings from the running loop.
        for _ in range(3):
            await pings.next("WATCHDOG=1", timeout=10)
        before = pings.times("WATCHDOG=1")
        assert max(b - a for a, b in pairwise(before)) < 3.0, before

        # Block the event loop (the answer comes when the block ends); keep listening meanwhile.
        block = asyncio.create_task(_post(control_port, "/api/debug/block", {"seconds": BLOCK_SECONDS}))
        while not block.done():
            try:
                await pings.next("WATCHDOG=1", timeout=0.5)
            except TimeoutError:
                pass
        status, body = block.result()
        assert status == 200, body
        await pings.next("WATCHDOG=1", timeout=10)  # the pings come back
        times = pings.times("WATCHDOG=1")
        gaps = [b - a for a, b in pairwise(times)]
        # No ping can leave a blocked loop: one gap spans the whole block.
        assert max(gaps) >= BLOCK_SECONDS - 0.5, f"pings kept coming while the loop was blocked: {gaps}"
        await pings.next("WATCHDOG=1", timeout=10)

        proc.send_signal(signal.SIGTERM)
        await pings.next("STOPPING=1", timeout=30)
        assert await asyncio.wait_for(proc.wait(), timeout=30) == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        stderr.close()
        sink.close()
