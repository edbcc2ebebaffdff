"""systemd/ocpp-twin.service: verify clean, hardened to exposure <= 2.0, and the
hardening still leaves GPIO, serial and pcscd reachable (as far as can be read
off the unit here; docs/deploy.md lists what needs a Pi)."""

from __future__ import annotations

import re
from pathlib import Path

from tests.systemd.unitfile import UNIT, parse_unit, security, verify_in_root

UNIT_TEXT = UNIT.read_text()
SERVICE = parse_unit(UNIT_TEXT)["Service"]


def _one(key: str) -> str:
    values = SERVICE[key]
    return values[-1]


def test_verify_prints_nothing(tmp_path: Path) -> None:
    result = verify_in_root(UNIT_TEXT, tmp_path)
    assert (result.returncode, result.stdout + result.stderr) == (0, "")


def test_verify_harness_does_report_problems(tmp_path: Path) -> None:
    """systemd-analyze warns about typos with exit status 0: the output is what fails."""
    broken = UNIT_TEXT.replace("ProtectSystem=strict", "ProtectSytem=strict").replace("WatchdogSec=30",
                                                                                   "WatchdogSec=thirty")
    result = verify_in_root(broken, tmp_path)
    assert result.returncode == 0
    assert "Unknown key 'ProtectSytem'" in result.stderr
    assert "Failed to parse sec value" in result.stderr


def test_exposure_is_at_most_2_0() -> None:
    result = security(UNIT, threshold=20)
    assert result.returncode == 0, result.stdout + result.stderr
    match = re.search(r"Overall exposure level for ocpp-twin\.service: (\d+\.\d)", result.stdout)
    assert match, result.stdout
    assert float(match.group(1)) <= 2.0


def test_threshold_really_gates() -> None:
    """The same unit fails a threshold below its score, so the gate is not vacuous."""
    assert security(UNIT, threshold=5).returncode != 0


def test_notify_watchdog_restart_contract() -> None:
    assert _one("Type") == "notify"
    assert _one("NotifyAccess") == "all"  # the firmware launcher's child notifies
    assert _one("WatchdogSec") == "30"
    assert _one("Restart") == "on-failure"
    assert _one("KillMode") == "mixed"
    assert "75" in _one("RestartForceExitStatus").split()  # twin.runtime.RESTART_EXIT_CODE
    assert _one("ExecStart") == ("/opt/ocpp-twin/venv/bin/twin run --config /etc/ocpp-twin/station.toml "
                                 "--data-dir /var/lib/ocpp-twin")


def test_restart_exit_code_matches_the_runtime() -> None:
    from twin.runtime import RESTART_EXIT_CODE

    assert str(RESTART_EXIT_CODE) in _one("RestartForceExitStatus").split()
    assert str(RESTART_EXIT_CODE) in _one("SuccessExitStatus").split()


def test_hardening_leaves_gpio_serial_and_pcscd_reachable() -> None:
    assert _one("User") == "ocpp-twin"
    assert set(_one("SupplementaryGroups").split()) >= {"gpio", "dialout"}
    assert _one("DevicePolicy") == "closed"
    allowed = {entry.split()[0]: entry.split()[1] for entry in SERVICE["DeviceAllow"]}
    for device in ("char-gpiochip", "char-ttyUSB", "char-ttyAMA"):
        assert allowed.get(device) == "rw", device
    assert "PrivateDevices" not in SERVICE  # would hide /dev/gpiochip*
    assert "AF_UNIX" in _one("RestrictAddressFamilies").split()  # /run/pcscd/pcscd.comm, journald, notify
    assert "ProcSubset" not in SERVICE  # gpiozero reads /proc/device-tree and /proc/cpuinfo
    assert _one("ProtectSystem") == "strict"  # still leaves /run/pcscd connectable
    assert "InaccessiblePaths" not in SERVICE
    assert _one("StateDirectory") == "ocpp-twin"
    assert _one("ConfigurationDirectory") == "ocpp-twin"
    assert _one("WorkingDirectory") == "/var/lib/ocpp-twin"  # writable cwd (lgpio notification files)
