"""The security event catalogue and the SecurityEventNotification.req payload."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from tests.security.private_ca import ec_key, key_pem, validate
from twin.security import events

# The whitepaper's table (edition 3, §8): name and criticality.
WHITEPAPER_TABLE = {
    "FirmwareUpdated": True, "FailedToAuthenticationAtCentralSystem": False,
    "CentralSystemFailedToAuthentication": False, "SettingSystemTime": True, "StartupOfTheDevice": True,
    "ResetOrReboot": True, "SecurityLogWasCleared": True, "ReconfigurationOfSecurityParameters": False,
    "MemoryExhaustion": True, "InvalidMessages": False, "AttemptedReplayAttacks": False,
    "TamperDetectionActivated": True, "InvalidFirmwareSignature": False, "InvalidFirmwareSigningCertificate": False,
    "InvalidCentralSystemCertificate": False, "InvalidChargePointCertificate": False, "InvalidTLSVersion": False,
    "InvalidTLSCipherSuite": False,
}
AT = datetime(2026, 12, 1, 10, 0, 0, 123456, tzinfo=timezone.utc)


def test_the_catalogue_is_the_whitepapers_table() -> None:
    assert {name: e.critical for name, e in events.EVENTS.items()} == WHITEPAPER_TABLE
    assert all(e.description and len(e.name) <= events.TYPE_MAX for e in events.EVENTS.values())
    assert "FailedToAuthenticateAtCsms" not in events.EVENTS  # the 2.0.1 name some 1.6 stacks send


def test_sent_events_are_the_critical_ones_and_the_four_octt_waits_for() -> None:
    sent = {name for name, e in events.EVENTS.items() if e.sent}
    critical = {name for name, critical in WHITEPAPER_TABLE.items() if critical}
    assert sent - critical == {"InvalidFirmwareSignature", "InvalidFirmwareSigningCertificate",
                               "InvalidCentralSystemCertificate", "InvalidChargePointCertificate"}


@pytest.mark.parametrize("name", sorted(WHITEPAPER_TABLE))
def test_every_payload_validates(name: str) -> None:
    payload = events.notification_payload(name, AT, "some detail")
    validate("SecurityEventNotification", payload, response=False)
    assert payload == {"type": name, "timestamp": "2026-12-01T10:00:00.123Z", "techInfo": "some detail"}


def test_timestamp_is_the_events_in_utc() -> None:
    local = AT.astimezone(timezone(timedelta(hours=2)))
    assert events.notification_payload("StartupOfTheDevice", local)["timestamp"] == "2026-12-01T10:00:00.123Z"
    with pytest.raises(ValueError, match="timezone-aware"):
        events.notification_payload("StartupOfTheDevice", datetime(2026, 12, 1))


def test_tech_info_is_optional_and_cut_to_255() -> None:
    assert "techInfo" not in events.notification_payload("ResetOrReboot", AT)
    assert "techInfo" not in events.notification_payload("ResetOrReboot", AT, "   ")
    long = events.notification_payload("InvalidMessages", AT, "x" * 1000)
    assert len(long["techInfo"]) == 255
    validate("SecurityEventNotification", long, response=False)


def test_tech_info_is_redacted_before_it_is_cut() -> None:
    key = "4F43415F4F4354545F61646D696E5F74657374"
    pem = key_pem(ec_key()).decode()
    text = ("x" * 240 + f" {key} ftp://user:hunter2@fw.example/f Authorization: Basic Q1AwMDE6c2VjcmV0 "
            + pem + '{"key": "AuthorizationKey", "value": "plain-secret-123"}')
    cleaned = events.clean_tech_info(text, secrets=[key])
    assert len(cleaned) <= 255
    full = events.clean_tech_info(text[240:], secrets=[key])
    for secret in (key, "hunter2", "Q1AwMDE6c2VjcmV0", "PRIVATE KEY", pem.splitlines()[1][:20], "plain-secret-123"):
        assert secret not in full, secret
        assert secret not in cleaned, secret
    assert "\n" not in full  # control characters become spaces


def test_secret_bytes_are_redacted_too() -> None:
    assert events.clean_tech_info("password OCA_OCTT_admin_test refused", [b"OCA_OCTT_admin_test"]) == \
        "password *** refused"


def test_unknown_event_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="unknown security event"):
        events.notification_payload("FailedToAuthenticateAtCsms", AT)


def test_failure_run_raises_once_until_connected() -> None:
    run = events.FailureRun()
    assert run.first("InvalidCentralSystemCertificate")
    assert not run.first("InvalidCentralSystemCertificate")
    assert run.first("InvalidTLSVersion")
    run.connected()
    assert run.first("InvalidCentralSystemCertificate")
