"""The diagnostics file's pieces: time-window filtering and redaction."""

from __future__ import annotations

from datetime import datetime, timezone

from twin.firmware.diagnostics import diagnostics_file_name, filter_log_lines, redact

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
