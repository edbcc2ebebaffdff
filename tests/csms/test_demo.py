"""`twin demo --security-profile N --once` as a real subprocess: built-in CSMS, simulated
station, the station's real configuration, certificate store and link."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("profile", [1, 2, 3])
def test_demo_runs_a_session_on_each_security_profile(profile: int, tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    result = subprocess.run(
        [sys.executable, "-m", "twin", "demo", "--security-profile", str(profile), "--once", "--session-s", "0.5",
         "--control", "127.0.0.1:0", "--data-dir", str(tmp_path)],
        capture_output=True, text=True, env=env, timeout=90)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-3000:]
    verdict = next(line for line in output.splitlines() if line.startswith("demo: security profile"))
    assert verdict.startswith(f"demo: security profile {profile} worked: the CSMS saw profile {profile}")
    assert "protocol problem" not in output
    config = tmp_path / "demo-station.toml"
    assert stat.S_IMODE(config.stat().st_mode) == 0o600
    station = tomllib.loads(config.read_text())
    assert station["keys"]["SecurityProfile"] == profile
    if profile in (1, 2):
        key = station["csms"]["password"]
        assert len(key) == 40 and key not in output  # the AuthorizationKey is never logged
        assert "Basic user iEVQC33-DEMO" in verdict
    if profile in (2, 3):
        assert "TLSv1.2" in verdict or "TLSv1.3" in verdict
        assert all(stat.S_IMODE(k.stat().st_mode) == 0o600 for k in (tmp_path / "csms-pki").glob("*.key.pem"))
    if profile == 3:
        assert "client certificate CN=IEVQC33-DEMO-0001,O=ocpp-twin demo CPO" in verdict
        assert "password" not in station["csms"]
