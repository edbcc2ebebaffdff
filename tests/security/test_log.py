"""The rolling security log."""

from __future__ import annotations

import json
import os
import stat
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from twin.security.log import SecurityLog, upload_file_name

T0 = datetime(2026, 12, 1, 8, 0, tzinfo=timezone.utc)


def test_one_json_line_per_event(tmp_path: Path) -> None:
    log = SecurityLog(tmp_path)
    assert log.append("StartupOfTheDevice", T0) is False
    assert log.append("InvalidMessages", T0 + timedelta(seconds=1), "bad frame", secrets=["s3cr3t"]) is False
    lines = log.path.read_text().splitlines()
    assert [json.loads(line) for line in lines] == [
        {"critical": True, "timestamp": "2026-12-01T08:00:00.000Z", "type": "StartupOfTheDevice"},
        {"critical": False, "techInfo": "bad frame", "timestamp": "2026-12-01T08:00:01.000Z",
         "type": "InvalidMessages"},
    ]
    assert stat.S_IMODE(os.stat(log.path).st_mode) == 0o600


def test_secrets_are_redacted(tmp_path: Path) -> None:
    log = SecurityLog(tmp_path)
    log.append("ReconfigurationOfSecurityParameters", T0, "AuthorizationKey set to OCA_OCTT_admin_test",
               secrets=["OCA_OCTT_admin_test"])
    assert "OCA_OCTT_admin_test" not in log.path.read_text()


def test_rotation_is_bounded_and_reports_data_loss(tmp_path: Path) -> None:
    log = SecurityLog(tmp_path, max_bytes=1024, backups=2)
    lost_at = []
    for i in range(200):
        if log.append("InvalidMessages", T0 + timedelta(seconds=i), f"frame {i:04d} " + "y" * 60):
            lost_at.append(i)
    files = log.files()
    assert [p.name for p in files] == ["security.log.2", "security.log.1", "security.log"]
    assert all(p.stat().st_size <= 1024 for p in files)
    line_bytes = len(log.path.read_text().splitlines()[0]) + 1  # every line has the same length here
    per_file = 1024 // line_bytes
    # the first loss is the line that needs a fourth file; from then on one per file's worth
    assert lost_at[0] == 3 * per_file
    assert lost_at == list(range(3 * per_file, 200, per_file))
    numbers = [int(e["techInfo"].split()[1]) for e in log.entries()]
    # what is kept is the newest entries, in order, without gaps
    assert numbers == list(range(numbers[0], 200))
    assert 2 * per_file < len(numbers) <= 3 * per_file


def test_no_loss_reported_while_backups_remain(tmp_path: Path) -> None:
    log = SecurityLog(tmp_path, max_bytes=1024, backups=3)
    results = [log.append("InvalidMessages", T0, "z" * 200) for _ in range(12)]
    assert not any(results)  # 12 lines of ~280 bytes fit in 4 files of 1 KiB
    assert len(list(log.entries())) == 12


def test_window_and_export(tmp_path: Path) -> None:
    log = SecurityLog(tmp_path)
    for i in range(10):
        log.append("SettingSystemTime", T0 + timedelta(hours=i))
    window = list(log.entries(T0 + timedelta(hours=2), T0 + timedelta(hours=4)))
    assert [e["timestamp"][11:13] for e in window] == ["10", "11", "12"]
    out = tmp_path / upload_file_name("CP/01", T0)
    assert out.name == "securitylog-CP_01-20261201T080000Z.jsonl"
    assert log.export(out, T0 + timedelta(hours=8)) == 2
    assert len(out.read_text().splitlines()) == 2
    assert log.export(tmp_path / "none.jsonl", T0 + timedelta(days=1)) == 0


def test_torn_line_is_skipped(tmp_path: Path) -> None:
    log = SecurityLog(tmp_path)
    log.append("StartupOfTheDevice", T0)
    with open(log.path, "ab") as fh:
        fh.write(b'{"critical": true, "timest')  # power cut mid-write
    log.append("ResetOrReboot", T0 + timedelta(seconds=5))
    assert [e["type"] for e in log.entries()] == ["StartupOfTheDevice", "ResetOrReboot"]


def test_clear(tmp_path: Path) -> None:
    log = SecurityLog(tmp_path)
    assert log.clear() is False
    log.append("StartupOfTheDevice", T0)
    assert log.clear() is True
    assert list(log.entries()) == []


def test_bad_arguments(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        SecurityLog(tmp_path, max_bytes=10)
    with pytest.raises(ValueError, match="unknown security event"):
        SecurityLog(tmp_path).append("NoSuchEvent", T0)
