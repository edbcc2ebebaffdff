"""What the link writes to the log: frames at DEBUG and malformed frames at WARNING carry
no URL password, AuthorizationKey value or Authorization header; Basic auth over ws://
is worth one WARNING. Against the real CSMS on loopback, with Basic auth on."""

from __future__ import annotations

import asyncio
import base64
import json
import logging

import pytest

from tests.test_link_liveness import Recorder, running, until
from twin.csms import Csms
from twin.link import InboundError, parse_inbound

PASSWORD = "basic-auth-pw-7f3a91"  # an AuthorizationKey as text: 16-20 characters
FTP_PASSWORD = "ftp-pass-98x7q"
AUTH_KEY = "0a1b2c3d4e5f60718293a4b5c6d7e8f9"
AUTH_KEY_IN_BAD_FRAME = "feedfacecafebeef0011"
AUTH_KEY_AS_NUMBER = 987654321987
AUTH_KEY_BEFORE_ITS_NAME = "c0ffee00c0ffee00c0ff"
SECRETS = [PASSWORD, FTP_PASSWORD, AUTH_KEY, AUTH_KEY_IN_BAD_FRAME, str(AUTH_KEY_AS_NUMBER), AUTH_KEY_BEFORE_ITS_NAME,
           base64.b64encode(f"CP1:{PASSWORD}".encode()).decode()]


def link_lines(caplog) -> list[str]:
    lines = []
    for record in caplog.records:
        if record.name == "twin.link" or record.name.startswith("twin.link."):
            lines.append(record.getMessage() + (record.exc_text or ""))
    return lines


async def test_no_secret_reaches_the_log(caplog):
    caplog.set_level(logging.DEBUG, logger="twin.link")
    rec = Recorder()
    csms = Csms(require_password=PASSWORD)
    await csms.start()

    def answer(uid: str, action: str, payload: dict) -> None:
        rec.events.append(("call", uid, action, payload))
        reply = {"UpdateFirmware": {}, "GetDiagnostics": {"fileName": "diag.tar.gz"},
                 "ChangeConfiguration": {"status": "Accepted"}}[action]
        link.reply(uid, reply)

    link = rec.link(csms.url, password=PASSWORD, keepalive_s=60)
    link.on_call = answer
    try:
        async with running(link, rec):
            location = f"ftp://diag:{FTP_PASSWORD}@files.example/fw/ievqc33-2.1.bin"
            await csms.call("UpdateFirmware", {"location": location, "retrieveDate": "2026-12-01T10:00:00Z"})
            await csms.call("GetDiagnostics", {"location": f"ftp://diag:{FTP_PASSWORD}@files.example/up/"})
            await csms.call("ChangeConfiguration", {"key": "authorizationKEY", "value": AUTH_KEY})
            # Frames the link cannot accept: logged at WARNING and answered with a CALLERROR.
            for n, payload in enumerate(({"key": "AuthorizationKey", "value": AUTH_KEY_IN_BAD_FRAME, "extra": 1},
                            {"key": "AuthorizationKey", "value": AUTH_KEY_AS_NUMBER},
                            # The WARNING shows the first 200 characters: the key's name is cut off.
                            {"value": AUTH_KEY_BEFORE_ITS_NAME, "pad": "p" * 300, "key": "AuthorizationKey"},
                            {"location": f"ftp://diag:{FTP_PASSWORD}@files.example/up/", "retries": "x"})):
                action = "ChangeConfiguration" if "key" in payload else "GetDiagnostics"
                sent = await csms.send_raw(json.dumps([2, f"bad-{n}", action, payload]))
                reply = await csms.wait_reply(sent.unique_id, timeout=3)
                assert reply.kind == "error"
            await until(lambda: rec.count("call") == 3, 3, "the three good calls")
    finally:
        await csms.stop()

    lines = link_lines(caplog)
    leaks = [(secret, line) for line in lines for secret in SECRETS if secret in line]
    assert not leaks, leaks
    # Not vacuous: the frames, the WARNINGs and the handshake headers were logged, redacted.
    text = "\n".join(lines)
    assert "<- " in text and "ftp://diag:***@files.example/fw/ievqc33-2.1.bin" in text
    assert '"key":"authorizationKEY","value":"***"' in text
    assert text.count("malformed frame from CSMS") == 4
    assert "Authorization: Basic ***" in text
    assert sum("travels in clear" in line for line in lines) == 1


async def test_no_clear_text_warning_without_a_password(csms, caplog):
    caplog.set_level(logging.WARNING, logger="twin.link")
    rec = Recorder()
    async with running(rec.link(csms.url, keepalive_s=60), rec):
        await asyncio.sleep(0.05)
    assert not any("travels in clear" in line for line in link_lines(caplog))


@pytest.mark.parametrize("payload", [
    {"key": "AuthorizationKey", "value": AUTH_KEY_AS_NUMBER},
    {"key": "authorizationkey", "value": "x" * 501},
])
def test_a_callerror_for_an_authorization_key_does_not_quote_it(payload):
    with pytest.raises(InboundError) as info:
        parse_inbound(json.dumps([2, "id", "ChangeConfiguration", payload]))
    assert str(payload["value"]) not in info.value.description
    assert info.value.description.startswith("ChangeConfiguration: value: fails ")


def test_a_callerror_for_another_key_still_quotes_the_value():
    with pytest.raises(InboundError) as info:
        parse_inbound(json.dumps([2, "id", "ChangeConfiguration", {"key": "HeartbeatInterval", "value": 12}]))
    assert "12 is not of type 'string'" in info.value.description


async def test_a_password_in_the_csms_url_is_warned_about_and_hidden(caplog):
    caplog.set_level(logging.DEBUG, logger="twin.link")
    csms = Csms(require_password=PASSWORD)
    await csms.start()
    rec = Recorder()
    try:
        async with running(rec.link(f"ws://CP1:{PASSWORD}@127.0.0.1:{csms.port}", keepalive_s=60), rec):
            pass
    finally:
        await csms.stop()
    lines = link_lines(caplog)
    assert [line for line in lines if PASSWORD in line] == []
    assert any(f"connected to ws://CP1:***@127.0.0.1:{csms.port}/CP1" in line for line in lines), lines
    assert sum("travels in clear" in line for line in lines) == 1
