"""Fixtures for the driver tests: gpiozero mock pins, pymodbus servers, socat ptys, pcscd."""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from tests.conftest import free_port  # noqa: F401 - re-exported

PCSCD_COMM = Path("/run/pcscd/pcscd.comm")
PCSC_LOCK = "/tmp/ocpp-twin-pcsc-tests.lock"
SBIN_DIRS = ("/usr/local/sbin", "/usr/sbin", "/sbin")


def search_path() -> str:
    """PATH plus the sbin directories: Debian installs daemons in /usr/sbin, which is not on a
    normal user's PATH (nor always on root's, under `su` or cron)."""
    return os.pathsep.join([os.environ.get("PATH", os.defpath), *SBIN_DIRS])


def find_program(name: str) -> str | None:
    return shutil.which(name, path=search_path())


@pytest.fixture
def pins():
    """A fresh gpiozero MockFactory (PWM-capable pins), injected per device, reset afterwards."""
    from gpiozero.pins.mock import MockFactory, MockPWMPin

    factory = MockFactory(pin_class=MockPWMPin)
    yield factory
    factory.reset()  # frees pins and reservations (else GPIOPinInUse in the next test, gpiozero #1087)
    factory.close()


@pytest.fixture
def connected_pins():
    """A MockFactory whose output pins can drive an input pin: ``f.pin(5, input_pin=f.pin(23))``."""
    from gpiozero.pins.mock import MockConnectedPin, MockFactory

    factory = MockFactory(pin_class=MockConnectedPin)
    yield factory
    factory.reset()
    factory.close()


@pytest.fixture
async def modbus_tcp():
    """``await modbus_tcp(registers, device_id=1) -> port``: real ModbusTcpServer(s) on loopback."""
    from pymodbus.server import ModbusTcpServer

    from tests.drivers.modbus_server import sim_device

    servers = []

    async def start(registers, device_id: int = 1) -> int:
        port = free_port()
        server = ModbusTcpServer(sim_device(registers, device_id), address=("127.0.0.1", port))
        await server.serve_forever(background=True)
        servers.append(server)
        return port

    yield start
    for server in servers:
        await server.shutdown()


@pytest.fixture
def pty_pair(tmp_path):
    """A socat pty pair: (server end, client end) paths, RTU framing and CRC over a real tty."""
    if shutil.which("socat") is None:
        pytest.fail("socat is not installed: apt-get install -y socat")
    srv, cli = tmp_path / "ttyS_srv", tmp_path / "ttyS_cli"
    proc = subprocess.Popen(["socat", f"pty,raw,echo=0,link={srv}", f"pty,raw,echo=0,link={cli}"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 5
    while not (srv.exists() and cli.exists()):
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"socat did not create the pty pair: {proc.stderr.read().decode() if proc.stderr else ''}")
        time.sleep(0.01)
    yield str(srv), str(cli)
    proc.terminate()
    proc.wait(5)


class Pcscd:
    """pcscd in the foreground, started and stopped by pid (never by name)."""

    def __init__(self) -> None:
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        pcscd = find_program("pcscd")
        if pcscd is None:
            pytest.fail(f"pcscd is not installed (not found in {search_path()}): "
                        "apt-get install -y pcscd vsmartcard-vpcd libpcsclite-dev")
        if not Path("/usr/lib/pcsc/drivers/serial/libifdvpcd.so").exists():
            pytest.fail("vsmartcard-vpcd is not installed: apt-get install -y vsmartcard-vpcd")
        self.proc = subprocess.Popen([pcscd, "--foreground"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 10
        while not self._ready():
            if self.proc.poll() is not None:
                err = self.proc.stderr.read().decode(errors="replace") if self.proc.stderr else ""
                pytest.fail(f"pcscd exited with {self.proc.returncode} (another pcscd running?): {err[-500:]}")
            if time.monotonic() > deadline:
                self.stop()
                pytest.fail("pcscd did not list the vpcd reader within 10 s")
            time.sleep(0.02)

    @staticmethod
    def _ready() -> bool:
        if not PCSCD_COMM.exists():
            return False
        from smartcard import scard

        rc, ctx = scard.SCardEstablishContext(scard.SCARD_SCOPE_USER)
        if rc != scard.SCARD_S_SUCCESS:
            return False
        try:
            rc, readers = scard.SCardListReaders(ctx, [])
            return rc == scard.SCARD_S_SUCCESS and any("Virtual PCD 00 00" in r for r in readers)
        finally:
            scard.SCardReleaseContext(ctx)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.proc = None

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


@contextlib.contextmanager
def machine_lock(path: str, timeout_s: float):
    """pcscd, /run/pcscd/pcscd.comm and vpcd's TCP port are machine-wide singletons: two test
    sessions on one machine (developers running the suite in parallel) must take turns."""
    # Read-only is enough for flock(2), so a lock file another user created is still usable.
    with open(os.open(path, os.O_RDONLY | os.O_CREAT, 0o644)) as fh:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    pytest.fail(f"another test session has held {path} for {timeout_s:.0f} s (it runs pcscd)")
                time.sleep(0.2)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


@pytest.fixture(scope="package")
def pcscd_daemon():
    """One pcscd for the driver tests, stopped when tests/drivers is done, so that later tests in
    the same run (e.g. a station with ``auto`` drivers expecting the sim fallback) see no pcscd.

    It runs its own pcscd (with the vpcd virtual reader), which needs root for /run/pcscd:
    as a normal user these tests skip; CI runs as root, where a missing pcscd fails."""
    if os.geteuid() != 0:
        pytest.skip("needs root: runs its own pcscd (with the vsmartcard virtual reader), which writes "
                    "/run/pcscd; run the suite as root, as CI does")
    with machine_lock(PCSC_LOCK, timeout_s=600):
        daemon = Pcscd()
        daemon.start()
        try:
            yield daemon
        finally:
            daemon.stop()


@pytest.fixture
def pcscd(pcscd_daemon):
    """The session's pcscd, restarted if a test stopped it."""
    if not pcscd_daemon.running:
        pcscd_daemon.start()
    yield pcscd_daemon
    if not pcscd_daemon.running:
        pcscd_daemon.start()


async def until(check, timeout: float = 10.0, what: str = "condition") -> None:
    """Poll ``check()`` on the loop until true; generous timeouts, never a fixed sleep."""
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while not check():
        if loop.time() > end:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(0.02)


@pytest.fixture
def gpio_env_unset(monkeypatch):
    """No usable gpiozero default pin factory, as on a PC: auto must fall back."""
    from gpiozero import Device

    monkeypatch.delenv("GPIOZERO_PIN_FACTORY", raising=False)
    old = Device.pin_factory
    Device.pin_factory = None
    yield
    Device.pin_factory = old

