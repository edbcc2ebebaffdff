"""A real `twin run` on this machine (no GPIO, no RS-485 adapter): with `auto` drivers it
falls back to sim loudly, and the warnings show in GET /api/state; a named backend (with or
without `strict`) refuses to start and names the driver, the backend and the missing device."""

from __future__ import annotations

import asyncio
import json
import sys
import urllib.request

import pytest

from tests.conftest import ROOT, free_port, twin_process_env

AUTO = """
[drivers.relay]
backend = "auto"
[drivers.meter]
backend = "auto"
transport = "rtu"
device = "/dev/ttyNOPE-not-here"
shared = true
[drivers.ev_present]
backend = "auto"
pins = { 1 = 17, 2 = 27 }
"""


async def test_auto_drivers_fall_back_to_sim_with_warnings_in_api_state(csms, tmp_path):
    conf = tmp_path / "station.toml"
    conf.write_text(AUTO)
    port = free_port()
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "twin", "run", "--config", str(conf), "--csms", csms.url, "--id", "CP1",
        "--data-dir", str(tmp_path / "data"), "--control", f"127.0.0.1:{port}", env=twin_process_env(),
        cwd=ROOT, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)
    try:
        await csms.wait_for("BootNotification", timeout=30)
        body = await asyncio.to_thread(
            lambda: urllib.request.urlopen(f"http://127.0.0.1:{port}/api/state", timeout=5).read())
        state = json.loads(body)
        kinds = {w.split(":")[0] for w in state["warnings"]}
        assert {"relay", "meter", "ev_present"} <= kinds, state["warnings"]
        assert all("FALLING BACK" in w for w in state["warnings"])
        backends = {d["kind"]: d["backend"] for d in state["drivers"]}
        assert backends["relay"] == "sim" and backends["meter"] == "sim"
        # The station still works in the fallback: a session through the control API.
        for path, data in (("/api/connectors/1/plug", b""), ("/api/rfid", b'{"idTag": "TAG1"}')):
            req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=data, method="POST",
                                         headers={"Content-Type": "application/json"})
            await asyncio.to_thread(lambda r=req: urllib.request.urlopen(r, timeout=5).read())
        await csms.wait_for("StartTransaction", timeout=10)
    finally:
        proc.terminate()
        stderr = (await proc.communicate())[1].decode()
    assert "WARNING" in stderr and "FALLING BACK" in stderr


# Before, a named backend without `strict = true` fell back to the simulator like `auto`: the
# example lab unit's Modbus meter (named, no strict) would bill simulated energy while its real
# contactors switched. Now naming the backend is enough to refuse; `strict = true` changes nothing.
@pytest.mark.parametrize("strict", ["", "strict = true\n", "strict = false\n"])
def test_a_named_backend_that_cannot_start_refuses_to_start_and_names_the_device(tmp_path, strict):
    import subprocess

    conf = tmp_path / "station.toml"
    conf.write_text(f'[drivers.meter]\nbackend = "modbus"\n{strict}transport = "rtu"\n'
                    'device = "/dev/ttyNOPE-not-here"\nshared = true\n')
    result = subprocess.run(
        [sys.executable, "-m", "twin", "run", "--config", str(conf), "--csms", "ws://127.0.0.1:9/ocpp",
         "--data-dir", str(tmp_path / "data"), "--control", "127.0.0.1:0"],
        capture_output=True, text=True, env=twin_process_env(), cwd=ROOT, timeout=60)
    assert result.returncode == 4, result.stderr
    assert ('station failed to start: drivers.meter: backend = "modbus" cannot start: serial device '
            "/dev/ttyNOPE-not-here not found (is the USB RS-485 adapter plugged in?)") in result.stderr
    assert "no fallback to the simulator" in result.stderr and "FALLING BACK" not in result.stderr
