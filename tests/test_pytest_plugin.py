"""The pytest plugin, used the way a CSMS team uses it: from outside this package's tests,
in a pytest process of its own (no conftest of ours), against a CSMS on loopback."""

from __future__ import annotations

import os
import subprocess
import sys
import tomllib

from tests.conftest import ROOT, twin_process_env


def _pytest(*args: str, cwd=ROOT, timeout: float = 240) -> subprocess.CompletedProcess:
    # Autoloading off and the plugin named: the same run whether or not this checkout's
    # entry point is installed in the environment (both would register it twice).
    env = twin_process_env(PYTEST_DISABLE_PLUGIN_AUTOLOAD="1")
    return subprocess.run([sys.executable, "-m", "pytest", "-p", "twin.pytest_plugin", "-p", "no:cacheprovider",
                           "-q", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def test_the_documented_example_passes_against_a_small_csms():
    proc = _pytest("examples/csms_ci/test_my_csms.py")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "2 passed" in proc.stdout


def test_a_failing_test_gets_the_station_log_and_the_station_is_stopped(tmp_path):
    pid_file = tmp_path / "pid"
    test = tmp_path / "test_fails.py"
    test.write_text(f'''
import asyncio, threading
import pytest
from twin.csms import Csms

@pytest.fixture
def csms_url():
    loop = asyncio.new_event_loop()
    csms = Csms(heartbeat_interval=300)
    threading.Thread(target=loop.run_forever, daemon=True).start()
    asyncio.run_coroutine_threadsafe(csms.start(), loop).result(10)
    yield csms.url
    asyncio.run_coroutine_threadsafe(csms.stop(), loop).result(10)
    loop.call_soon_threadsafe(loop.stop)

def test_wrong_expectation(csms_url, ocpp_twin):
    cp = ocpp_twin(csms_url, id="CP-FAIL", keys={{"HeartbeatInterval": 300}})
    open({str(pid_file)!r}, "w").write(str(cp.proc.pid))
    cp.wait_for_status(1, "Available", timeout=20)
    cp.wait_for_status(1, "Charging", timeout=1)  # never: nothing is plugged
''')
    proc = _pytest(str(test), cwd=tmp_path)
    out = proc.stdout
    assert proc.returncode == 1 and "1 failed" in out, out + proc.stderr
    assert "connector 1 is Available, not Charging" in out
    assert "ocpp-twin CP-FAIL log" in out  # the station's log tail is in the report
    pid = int(pid_file.read_text())
    try:
        os.kill(pid, 0)
        alive = open(f"/proc/{pid}/stat").read().split()[2] != "Z"
    except (ProcessLookupError, FileNotFoundError):
        alive = False
    assert not alive, "the twin process outlived the failed test"


def test_the_plugin_is_registered_as_a_pytest11_entry_point():
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert meta["project"]["entry-points"]["pytest11"] == {"ocpp_twin": "twin.pytest_plugin"}
