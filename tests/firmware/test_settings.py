from __future__ import annotations

from pathlib import Path

import pytest

from twin.firmware.settings import FirmwareSettings, SettingsError, settings_from_argv


def test_defaults_and_table() -> None:
    assert FirmwareSettings.from_table(None) == FirmwareSettings()
    s = FirmwareSettings.from_table({"boot_timeout_s": 5, "ca_file": "/etc/ca.pem", "diagnostics_http_method": "post",
                                     "default_retries": 0})
    assert (s.boot_timeout_s, s.ca_file, s.diagnostics_http_method, s.default_retries) == (5.0, Path("/etc/ca.pem"),
                                                                                          "POST", 0)
    assert FirmwareSettings().max_download_bytes == 256 * 1024 * 1024
    assert FirmwareSettings.from_table({"max_download_mib": 8}).max_download_bytes == 8 * 1024 * 1024


@pytest.mark.parametrize("table, message", [
    ({"boot_timeout_s": 0}, "boot_timeout_s must be a number of seconds > 0"),
    ({"boot_timeout_s": True}, "boot_timeout_s"),
    ({"default_retries": -1}, "default_retries must be an integer >= 0"),
    ({"diagnostics_http_method": "PATCH"}, "must be PUT or POST"),
    ({"bot_timeout_s": 3}, "unknown key"),
    ({"max_download_mib": 0}, "max_download_mib must be a whole number of MiB >= 1"),
    ({"max_download_mib": 1.5}, "max_download_mib"),
    ({"max_download_mib": "256"}, "max_download_mib"),
])
def test_bad_values(table: dict, message: str) -> None:
    with pytest.raises(SettingsError, match=message):
        FirmwareSettings.from_table(table)


def test_from_argv(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    config = tmp_path / "twin.toml"
    config.write_text('[station]\nid = "CP1"\n[firmware]\nboot_timeout_s = 7.5\n')
    assert settings_from_argv(["run", "--config", str(config), "--data-dir", "d"]).boot_timeout_s == 7.5
    assert settings_from_argv(["run"]) == FirmwareSettings()
    config.write_text("[firmware\n")
    assert settings_from_argv(["run", "--config", str(config)]) == FirmwareSettings()
    assert "cannot read config" in caplog.text
