"""twin.redact: secrets out of log text (URL passwords, AuthorizationKey values,
Authorization headers), including text that a logger has cut short."""

from __future__ import annotations

import logging

import pytest

from twin.redact import RedactingFilter, redact_frame, redact_text


@pytest.mark.parametrize("text,expected", [
    # URL userinfo (RFC 3986 §3.2.1), as urllib.parse.urlsplit reads it
    ("ftp://user:hunter2@host/fw.bin", "ftp://user:***@host/fw.bin"),
    ("get ftps://u:p%40ss@10.0.0.2:2121/a and http://x:y@h/", "get ftps://u:***@10.0.0.2:2121/a and http://x:***@h/"),
    ("ftp://u:p@ss@host/f", "ftp://u:***@host/f"),  # an unencoded "@": up to the last "@" of the authority
    ('"location":"ftp:\\/\\/user:hunter2@host\\/fw"', '"location":"ftp:\\/\\/user:***@host\\/fw"'),  # JSON "\/"
    ("[2,\"a\",\"UpdateFirmware\",{\"location\":\"ftp://u:pw@h/x\"}]",
     "[2,\"a\",\"UpdateFirmware\",{\"location\":\"ftp://u:***@h/x\"}]"),
    # a password with an unencoded "/", or cut off by a logger: still hidden
    ("ftp://u:pa/ss@host/f", "ftp://u:***@host/f"),
    ("ftp://user:hunt", "ftp://user:***"),
    # nothing secret: left alone
    ("ftps://u@h/x", "ftps://u@h/x"),
    ("http://host:8080/a@b", "http://host:8080/a@b"),
    ("http://[::1]:80/x", "http://[::1]:80/x"),
    ("ws://127.0.0.1:9000/CP1", "ws://127.0.0.1:9000/CP1"),
    ("no url: here, user:pass@host", "no url: here, user:pass@host"),
    # Authorization headers (RFC 7617), not the OCPP key AuthorizationKey
    ("> Authorization: Basic Q1AxOnNlY3JldA==", "> Authorization: Basic ***"),
    ("{'Authorization': 'Bearer abc.def'}", "{'Authorization': 'Bearer ***'}"),
    ("Proxy-Authorization: Basic eHl6", "Proxy-Authorization: Basic ***"),
    ("AuthorizationKey accepted", "AuthorizationKey accepted"),
    # ChangeConfiguration / GetConfiguration entries for AuthorizationKey (CiString: any case)
    ('{"key":"authorizationKEY","value":"abc\\"def"},{"key":"Other","value":"seen"}',
     '{"key":"authorizationKEY","value":"***"},{"key":"Other","value":"seen"}'),
    ("{'key': 'AuthorizationKey', 'value': 12345}", "{'key': 'AuthorizationKey', 'value': \"***\"}"),
    ('{"value": "s3", "readonly": false, "key": "AuthorizationKey"}',
     '{"value": "***", "readonly": false, "key": "AuthorizationKey"}'),
    ('"{\\"key\\":\\"AuthorizationKey\\",\\"value\\":\\"s3\\"}"', '"{\\"key\\":\\"AuthorizationKey\\",\\"value\\":\"***\"}"'),
    # named but not in a flat object (nested, or the closing brace cut off): every value goes
    ('{"key":"AuthorizationKey","value":"s3cr', '{"key":"AuthorizationKey","value":"***"'),
    ('{"key":"AuthorizationKey","value":{"a":"s3"}}', '{"key":"AuthorizationKey","value":"***"}}'),
    ('{"key":"HeartbeatInterval","value":"300"}', '{"key":"HeartbeatInterval","value":"300"}'),
])
def test_redact_text(text, expected):
    assert redact_text(text) == expected


def test_redact_frame_decodes_bytes():
    assert redact_frame(b'[2,"a","GetDiagnostics",{"location":"ftp://u:pw@h/\xff"}]') == \
        '[2,"a","GetDiagnostics",{"location":"ftp://u:***@h/\ufffd"}]'


def test_redaction_is_idempotent():
    text = 'ftp://u:pw@h/x {"key":"AuthorizationKey","value":"k"} Authorization: Basic abc'
    once = redact_text(text)
    assert redact_text(once) == once


def test_a_4_mib_frame_is_redacted_in_linear_time():
    import time

    frames = ["a" * 4 * 2**20, "ftp://" * (2**20 // 2), '{"value":"' * (2**20 // 3) + "AuthorizationKey"]
    start = time.perf_counter()
    for frame in frames:
        redact_text(frame)
    assert time.perf_counter() - start < 5  # quadratic backtracking would take hours


def test_the_filter_rewrites_message_args_and_traceback(caplog):
    logger = logging.getLogger("tests.redact.filtered")
    logger.addFilter(RedactingFilter())
    caplog.set_level(logging.DEBUG, logger=logger.name)
    logger.debug("<- %s", '[2,"a","ChangeConfiguration",{"key":"AuthorizationKey","value":"topsecret1"}]')
    try:
        raise ValueError("cannot fetch ftp://diag:topsecret2@h/x")
    except ValueError:
        logger.exception("download of %s failed", "ftp://diag:topsecret3@h/x")
    records = [r for r in caplog.records if r.name == logger.name]
    assert records[0].getMessage() == '<- [2,"a","ChangeConfiguration",{"key":"AuthorizationKey","value":"***"}]'
    assert records[1].getMessage() == "download of ftp://diag:***@h/x failed"
    assert "ftp://diag:***@h/x" in records[1].exc_text and "topsecret2" not in records[1].exc_text
    handler_text = logging.Formatter().format(records[1])
    assert "topsecret" not in handler_text


def test_the_filter_lets_a_broken_record_through():
    record = logging.LogRecord("x", logging.INFO, __file__, 1, "two %s %s", ("one",), None)
    assert RedactingFilter().filter(record) is True  # logging itself reports the bad format


# ---------------------------------------------------------------- store ops (the AuthorizationKey)
def test_store_ops_holding_the_authorization_key_are_redacted():
    from twin.redact import redact_ops

    key = "0123456789abcdef0123456789abcdef"
    batches = [[("kv_put", "config", "AuthorizationKey", key), ("kv_put", "config", "HeartbeatInterval", "30")],
               [("kv_put", "security", "pending_key", key), ("q_put", 1, {"action": "Heartbeat"})]]
    clean = redact_ops(batches)
    assert key not in repr(clean)
    assert clean[0][1] == ("kv_put", "config", "HeartbeatInterval", "30") and clean[1][1] == batches[1][1]
    # And the repr of a raw op in any log line, for a logger that did not mask it first.
    for op in (batches[0][0], batches[1][0]):
        assert key not in redact_text(f"NOT saved: {op!r}")


def test_every_log_handler_redacts_whatever_logger_writes(tmp_path, capsys):
    """The handlers setup_logging installs redact lines of any logger (a core error quoting a
    ChangeConfiguration of AuthorizationKey), not only those of loggers with their own filter."""
    import logging

    from twin.service.logs import setup_logging

    root = logging.getLogger()
    before, level = list(root.handlers), root.level
    setup_logging("INFO", tmp_path, environ={})
    key = "sixteen-chars-ok"
    try:
        logging.getLogger("some.module").error("failed handling %r", {"key": "AuthorizationKey", "value": key})
        for handler in root.handlers:
            handler.flush()
    finally:
        for handler in [h for h in root.handlers if h not in before]:
            root.removeHandler(handler)
            handler.close()
        root.setLevel(level)
    assert key not in capsys.readouterr().err
    assert key not in (tmp_path / "logs" / "twin.log").read_text()
