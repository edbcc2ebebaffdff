"""The diagnostics file's pieces: time-window filtering and redaction."""

from __future__ import annotations

import tarfile
from datetime import datetime, timezone
from pathlib import Path

from twin.firmware.diagnostics import build_archive, diagnostics_file_name, filter_log_lines, redact

T = datetime(2026, 11, 24, 11, 0, tzinfo=timezone.utc)


def test_filter_keeps_continuation_lines_with_their_line() -> None:
    lines = ["junk before any stamp\n",
             "2026-11-24T10:59:59.999Z INFO a\n", "  continued a\n",
             "2026-11-24T11:00:00.000Z INFO b\n", "  continued b\n",
             "2026-11-24T11:00:01.000Z INFO c\n"]
    assert list(filter_log_lines(lines, T, T)) == lines[3:5]
    assert list(filter_log_lines(lines, None, T)) == lines[:5]
    assert list(filter_log_lines(lines, None, None)) == lines


def test_redact() -> None:
    config = {"csms": {"url": "wss://CP1:pw@csms/ocpp", "password": "pw", "password_file": ""},
              "ftp": ["ftp://u:p@host/x", "ftp://host/x"],
              "keys": [{"key": "AuthorizationKey", "value": "0011", "readonly": False},
                       {"key": "HeartbeatInterval", "value": "300"}],
              "api_token": "t0k", "secret": None, "connectors": 2}
    assert redact(config) == {
        "csms": {"url": "wss://CP1:***@csms/ocpp", "password": "***", "password_file": ""},
        "ftp": ["ftp://u:***@host/x", "ftp://host/x"],
        "keys": [{"key": "AuthorizationKey", "value": "***", "readonly": False},
                 {"key": "HeartbeatInterval", "value": "300"}],
        "api_token": "***", "secret": None, "connectors": 2}


def test_file_name_is_safe() -> None:
    assert diagnostics_file_name("CP 1/../x", T) == "diagnostics-CP_1_.._x-20261124T110000Z.tar.gz"


def test_log_lines_in_the_archive_are_redacted(tmp_path: Path) -> None:
    secret_lines = [
        '2026-11-24T11:00:00.000Z DEBUG twin.link < [2,"7","UpdateFirmware",{"location":'
        '"ftp://fw:s3cret@files.example/fw.tar.gz","retrieveDate":"2026-11-24T11:00:00Z"}]\n',
        "2026-11-24T11:00:01.000Z DEBUG twin.link.websocket > Authorization: Basic Q1AxOmh1bnRlcjI=\n",
        '2026-11-24T11:00:02.000Z DEBUG twin.link < [2,"8","ChangeConfiguration",'
        '{"key":"AuthorizationKey","value":"00112233445566778899"}]\n',
        "Traceback (most recent call last):\n",
        "  ftplib.error_perm: 530 login failed for ftps://fw:s3cret@files.example/\n",
    ]
    plain = "2026-11-24T11:00:03.000Z INFO twin.link connected to wss://csms.example:443/ocpp/CP1\n"
    log = tmp_path / "twin.log"
    log.write_text("".join(secret_lines) + plain)
    out = build_archive(tmp_path / "diag.tar.gz", charge_point_id="CP1", firmware_version="1.10", now=T,
                        log_files=[log], extras={}, firmware_state={}, start=None, stop=None)
    with tarfile.open(out, "r:gz") as tar:
        text = tar.extractfile("logs/twin.log").read().decode()  # type: ignore[union-attr]
    for secret in ("s3cret", "Q1AxOmh1bnRlcjI=", "00112233445566778899"):
        assert secret not in text
    assert "ftp://fw:***@files.example/fw.tar.gz" in text and "Authorization: Basic ***" in text
    assert text.endswith(plain)  # lines without secrets are kept as they are
    assert len(text.splitlines()) == len(secret_lines) + 1
