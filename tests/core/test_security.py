"""The core's side of the security whitepaper (edition 3): SecurityProfile and
AuthorizationKey changes (A05, A01), security events (A04), ExtendedTriggerMessage and the
calls handed to the certificate and firmware adapters."""

from __future__ import annotations

from datetime import timedelta

import pytest

from twin.core import actions as A
from twin.core.ops import NS
from twin.core.security import SecurityFacts
from twin.core.station import Station

from .harness import Harness

KEY = "4F43415F4F4354545F61646D696E5F74657374"  # TC_073's key: 19 bytes as hex
KEY2 = "plain-text-key-17"
ROOT = SecurityFacts(central_system_roots=1)
ROOT_AND_CERT = SecurityFacts(central_system_roots=1, charge_point_certificate=True)


def change(h: Harness, key: str, value: str) -> str:
    reply = h.csms("ChangeConfiguration", {"key": key, "value": value})
    assert isinstance(reply, A.Reply)
    return reply.payload["status"]


def conf(h: Harness, key: str) -> str | None:
    entry = h.csms("GetConfiguration", {"key": [key]}).payload["configurationKey"][0]
    return entry.get("value")


def reconnects(h: Harness) -> list[str]:
    return [c.reason for c in h.controls if isinstance(c, A.Reconnect)]


def on_profile(profile: int, key: str = KEY, **keys: str) -> Harness:
    return Harness({"SecurityProfile": str(profile), "AuthorizationKey": key, **keys}).boot()


# ----------------------------------------------------------------------------- SecurityProfile (A05)
@pytest.mark.parametrize("value", ["0", "1", "-1", "4", "two", "1.5", ""])
def test_tc_084_a_lower_equal_or_impossible_profile_is_rejected_and_nothing_reconnects(value):
    h = on_profile(1)
    assert change(h, "SecurityProfile", value) == "Rejected"
    assert reconnects(h) == [] and conf(h, "SecurityProfile") == "1"
    assert h.st.security.pending_profile is None


def test_raising_the_profile_is_pending_until_a_connection_proves_it():
    h = on_profile(1)
    h.run(h.st.security_facts(ROOT, h.now))
    assert change(h, "SecurityProfile", "2") == "Accepted"
    assert reconnects(h) == ["SecurityProfile 2"]
    assert ("kv_put", NS.SECURITY, "pending_profile", 2) in h.ops
    # GetConfiguration shows the profile in use, not the one being tried.
    assert conf(h, "SecurityProfile") == "1"
    assert h.st.security.connection().pending_profile == 2
    h.run(h.st.connection_established(2, False, h.now))
    assert conf(h, "SecurityProfile") == "2" and h.st.security.pending_profile is None
    assert ("kv_put", NS.CONFIG, "SecurityProfile", "2") in h.ops
    assert change(h, "SecurityProfile", "1") == "Rejected"  # A05.FR.09: never back down


def security_state(h: Harness, since: dict | None = None) -> dict:
    """The NS.SECURITY values the ops persisted (replayed in order): what a restart reads."""
    values = dict(since or {})
    for op in h.ops:
        if op[0] == "kv_put" and op[1] == NS.SECURITY:
            values[op[2]] = op[3]
        elif op[0] == "kv_del" and op[1] == NS.SECURITY:
            values.pop(op[2], None)
    return values


def restart(h: Harness, since: dict | None = None) -> Harness:
    """A new process on the same data: the persisted security values, the same keys."""
    state = {"kv": {NS.SECURITY: security_state(h, since), NS.CONFIG: {}}}
    again = Harness({"SecurityProfile": "1", "AuthorizationKey": KEY}, state=state).boot()
    again.run(again.st.security_facts(ROOT, again.now))
    return again


def test_a_failed_switch_falls_back_for_this_run_and_is_tried_again_at_the_next_start():
    h = on_profile(1)
    h.run(h.st.security_facts(ROOT, h.now))
    assert change(h, "SecurityProfile", "2") == "Accepted"
    h.run(h.st.connection_fallback("profile", "InvalidCentralSystemCertificate", "unknown issuer", h.now))
    # A05.FR.08: the committed settings for the rest of this run ...
    assert h.st.security.connection().pending_profile is None and conf(h, "SecurityProfile") == "1"
    assert "InvalidCentralSystemCertificate" in h.security_log()
    # Sent (TC_078), after the reconnect on the old profile.
    assert [s.payload["type"] for s in h.calls("SecurityEventNotification")][-1] == "InvalidCentralSystemCertificate"
    # ... but the accepted raise is kept: TC_083 may serve only SP1 at the first try, then Reset(Hard).
    assert ("kv_del", NS.SECURITY, "pending_profile") not in h.ops
    assert security_state(h) == {"pending_profile": 2, "pending_profile_failed_starts": 1}
    # Not again in this run: every reconnect would otherwise try the new profile first.
    mark = len(h.ops)
    assert h.st.security.fallback("profile") == [] and h.ops[mark:] == []
    assert h.st.security.connection().pending_profile is None
    again = restart(h)
    assert again.st.security.connection().pending_profile == 2
    again.run(again.st.connection_established(2, False, again.now))
    assert again.st.security.pending_profile is None
    assert ("kv_del", NS.SECURITY, "pending_profile") in again.ops
    assert ("kv_del", NS.SECURITY, "pending_profile_failed_starts") in again.ops


def test_a_pending_profile_is_given_up_after_five_failed_starts(caplog):
    h = on_profile(1)
    h.run(h.st.security_facts(ROOT, h.now))
    change(h, "SecurityProfile", "2")
    state: dict = {}
    for start in range(1, 6):
        assert h.st.security.connection().pending_profile == 2, start
        h.run(h.st.connection_fallback("profile", None, None, h.now))
        assert h.st.security.connection().pending_profile is None
        state = security_state(h, state)
        if start < 5:
            assert state == {"pending_profile": 2, "pending_profile_failed_starts": start}
            h = restart(h, state)
            state = security_state(h, state)
    assert state == {} and h.st.security.pending_profile is None
    assert "giving it up" in caplog.text
    assert restart(h, state).st.security.connection().pending_profile is None
    assert conf(h, "SecurityProfile") == "1"


def test_a_new_raise_while_deferred_is_tried_at_once_with_a_fresh_count():
    h = on_profile(1)
    h.run(h.st.security_facts(ROOT_AND_CERT, h.now))
    change(h, "SecurityProfile", "2")
    h.run(h.st.connection_fallback("profile", None, None, h.now))
    assert change(h, "SecurityProfile", "3") == "Accepted"
    assert h.st.security.connection().pending_profile == 3
    assert security_state(h) == {"pending_profile": 3}


def test_a_new_key_while_the_profile_is_deferred_is_pending_on_the_committed_profile():
    h = on_profile(1)
    h.run(h.st.security_facts(ROOT_AND_CERT, h.now))
    change(h, "SecurityProfile", "3")
    h.run(h.st.connection_fallback("profile", None, None, h.now))
    # Profile 1 is what connects in this run: the key is used there, so it is pending.
    assert change(h, "AuthorizationKey", KEY2) == "Accepted"
    assert reconnects(h)[-1] == "AuthorizationKey changed"
    conn = h.st.security.connection()
    assert (conn.profile, conn.authorization_key, conn.pending_key) == (1, KEY, KEY2)


@pytest.mark.parametrize(("profile", "facts", "key", "why"), [
    (1, SecurityFacts(), "", "A05.FR.02"),
    (2, SecurityFacts(), KEY, "A05.FR.03"),
    (3, ROOT, KEY, "A05.FR.04"),
])
def test_a_profile_whose_prerequisites_are_missing_is_rejected(profile, facts, key, why):
    h = Harness({"AuthorizationKey": key} if key else {}).boot()
    h.run(h.st.security_facts(facts, h.now))
    assert change(h, "SecurityProfile", str(profile)) == "Rejected", why
    h.run(h.st.security_facts(ROOT_AND_CERT, h.now))
    if key:
        assert change(h, "SecurityProfile", str(profile)) == "Accepted"


def test_a_pending_profile_survives_a_restart_and_is_tried_again():
    h = on_profile(1)
    h.run(h.st.security_facts(ROOT, h.now))
    change(h, "SecurityProfile", "2")
    state = {"kv": {NS.SECURITY: {"pending_profile": 2}, NS.CONFIG: {}}}
    again = Station(h.spec, h.keys, h.st.smart, state)
    assert again.security.connection().pending_profile == 2


# ----------------------------------------------------------------------------- AuthorizationKey (A01)
@pytest.mark.parametrize("value", ["", "short", "g" * 32, "x" * 21, "ab" * 21])
def test_an_invalid_authorization_key_is_rejected(value):
    h = on_profile(1)
    assert change(h, "AuthorizationKey", value) == "Rejected"
    assert h.st.security.authorization_key == KEY and reconnects(h) == []


def test_tc_073_a_new_key_reconnects_and_is_committed_once_it_connects():
    h = on_profile(1)
    assert change(h, "authorizationkey", KEY2) == "Accepted"  # CiString: any letter case
    assert reconnects(h) == ["AuthorizationKey changed"]
    conn = h.st.security.connection()
    assert (conn.authorization_key, conn.pending_key) == (KEY, KEY2)
    assert KEY2 not in repr(conn) and KEY not in repr(conn)
    h.run(h.st.connection_established(1, True, h.now))
    assert h.st.security.connection().authorization_key == KEY2 and h.st.security.pending_key is None
    assert conf(h, "AuthorizationKey") is None  # write-only (WP3 §7.2)
    assert "ReconfigurationOfSecurityParameters" in h.security_log()
    assert all(KEY2 not in repr(c) for c in h.controls)


def test_a_refused_new_key_falls_back_to_the_old_one():
    h = on_profile(2)
    change(h, "AuthorizationKey", KEY2)
    h.run(h.st.connection_fallback("key", "FailedToAuthenticationAtCentralSystem", "HTTP 401", h.now))
    conn = h.st.security.connection()
    assert (conn.authorization_key, conn.pending_key) == (KEY, None)
    assert "FailedToAuthenticationAtCentralSystem" in h.security_log()


@pytest.mark.parametrize("profile", [0, 3])
def test_under_profile_0_or_3_a_new_key_is_only_stored(profile):
    h = on_profile(profile)
    assert change(h, "AuthorizationKey", KEY2) == "Accepted"
    assert reconnects(h) == [] and h.st.security.authorization_key == KEY2


# ----------------------------------------------------------------------------- security events (A04)
def test_under_profile_0_events_are_logged_not_sent():
    h = Harness().boot()
    assert h.security_log() == ["StartupOfTheDevice"]
    assert h.calls("SecurityEventNotification") == []


def test_a_boot_event_is_queued_durably_and_sent_after_the_accepted_boot():
    h = Harness({"SecurityProfile": "1", "AuthorizationKey": KEY}, auto=False)
    h.run(h.st.boot(h.now))
    queued = [op for op in h.ops if op[0] == "q_put"]
    assert queued and queued[0][2]["action"] == "SecurityEventNotification"
    assert queued[0][2]["payload"]["type"] == "StartupOfTheDevice"
    assert queued[0][2]["payload"]["timestamp"].startswith("2026-11-24T12:00:00")
    h.run(h.st.link_up(h.now))
    assert [s.action for s in h.sent] == ["BootNotification"]  # §4.2: nothing before Accepted
    h.answer("BootNotification")
    assert h.calls("SecurityEventNotification")[0].payload["type"] == "StartupOfTheDevice"


def test_a_restart_on_purpose_is_reset_or_reboot():
    h = Harness({"SecurityProfile": "1", "AuthorizationKey": KEY})
    h.run(h.st.boot(h.now, restarted=True))
    assert h.security_log() == ["ResetOrReboot"]


def test_a_callerror_counts_as_delivered_and_frees_the_queue():
    h = on_profile(1)
    h.scripts["SecurityEventNotification"] = lambda p: RuntimeError("NotImplemented")
    h.run(h.st.security_event("TamperDetectionActivated", "lid open", h.now))
    assert len(h.st.queue) == 0
    assert len(h.calls("SecurityEventNotification")) == 2  # the boot event and this one, once each


def test_an_unanswered_event_counts_attempts_and_never_blocks_transactions_for_ever():
    h = Harness({"SecurityProfile": "1", "AuthorizationKey": KEY, "TransactionMessageAttempts": "3",
                 "TransactionMessageRetryInterval": "5"})
    h.scripts["SecurityEventNotification"] = lambda p: "silence"
    h.boot()
    for _ in range(5):
        if not h.st.queue.entries:
            break
        h.run(h.st.call_timed_out(h.calls("SecurityEventNotification")[-1].ref, h.now))
        h.advance(60)
    assert len(h.calls("SecurityEventNotification")) == 3 and len(h.st.queue) == 0
    assert h.st.discarded_count == 1


def test_tech_info_never_carries_the_authorization_key():
    h = on_profile(1)
    h.run(h.st.security_event("InvalidMessages", f"frame with {KEY} inside", h.now))
    entry = [c for c in h.controls if isinstance(c, A.SecurityLogEntry)][-1]
    assert KEY not in (entry.tech_info or "")


def test_a_clock_step_is_setting_system_time_and_invalid_messages_are_rate_limited():
    h = on_profile(1)
    h.run(h.st.clock_stepped(3600, h.now))
    assert h.calls("SecurityEventNotification")[-1].payload["type"] == "SettingSystemTime"
    for _ in range(5):
        h.run(h.st.invalid_message("bad frame", h.now))
    assert h.security_log().count("InvalidMessages") == 1
    h.now += timedelta(minutes=2)
    h.run(h.st.invalid_message("bad frame", h.now))
    assert h.security_log().count("InvalidMessages") == 2
    assert h.calls("SecurityEventNotification")[-1].payload["type"] == "SettingSystemTime"  # log only


def test_a_full_disk_is_memory_exhaustion():
    h = on_profile(1)
    h.run(h.st.storage_failed(h.now))
    assert "MemoryExhaustion" in h.security_log()


# ----------------------------------------------------------------------------- ExtendedTriggerMessage
def etm(h: Harness, what: str, **extra) -> str:
    return h.csms("ExtendedTriggerMessage", {"requestedMessage": what, **extra}).payload["status"]


def test_sign_charge_point_certificate_needs_cpo_name():
    h = on_profile(1)
    assert etm(h, "SignChargePointCertificate") == "Rejected"
    assert change(h, "CpoName", "TestCPO") == "Accepted"
    assert etm(h, "SignChargePointCertificate") == "Accepted"
    assert [c.kind for c in h.controls if isinstance(c, A.SecurityTask)] == ["SignCertificate"]
    h.run(h.st.send_sign_certificate("-----BEGIN CERTIFICATE REQUEST-----", h.now))
    assert h.calls("SignCertificate")[-1].payload == {"csr": "-----BEGIN CERTIFICATE REQUEST-----"}


def test_triggered_status_and_idle_notifications():
    h = on_profile(1)
    mark = h.mark()
    assert etm(h, "StatusNotification") == "Accepted"
    assert [s.payload["connectorId"] for s in h.calls("StatusNotification", mark)] == [0, 1, 2]
    assert etm(h, "StatusNotification", connectorId=0) == "Rejected"
    assert etm(h, "StatusNotification", connectorId=3) == "Rejected"
    assert etm(h, "LogStatusNotification") == "Accepted"
    assert h.calls("LogStatusNotification")[-1].payload == {"status": "Idle"}  # N01.FR.12
    assert etm(h, "FirmwareStatusNotification") == "Accepted"
    assert h.calls("SignedFirmwareStatusNotification")[-1].payload == {"status": "Idle"}
    h.run(h.st.send_signed_firmware_status("Downloading", 7, h.now))
    etm(h, "FirmwareStatusNotification")
    assert h.calls("SignedFirmwareStatusNotification")[-1].payload == {"status": "Downloading", "requestId": 7}
    h.run(h.st.send_signed_firmware_status("Installed", 7, h.now))
    etm(h, "FirmwareStatusNotification")
    assert h.calls("SignedFirmwareStatusNotification")[-1].payload == {"status": "Idle"}  # L01.FR.28
    h.run(h.st.send_log_status("Uploading", 3, h.now))
    etm(h, "LogStatusNotification")
    assert h.calls("LogStatusNotification")[-1].payload == {"status": "Uploading", "requestId": 3}


def test_extended_trigger_works_while_pending():
    h = Harness({"SecurityProfile": "1", "AuthorizationKey": KEY})
    h.scripts["BootNotification"] = lambda p: {"status": "Pending", "currentTime": "2026-11-24T12:00:00Z",
                                               "interval": 300}
    h.boot()
    change(h, "CpoName", "TestCPO")
    assert etm(h, "SignChargePointCertificate") == "Accepted"
    h.run(h.st.send_sign_certificate("CSR", h.now))
    assert h.calls("SignCertificate")  # forced out while Pending: the CSMS asked for it
    assert etm(h, "Heartbeat") == "Accepted" and h.calls("Heartbeat")


@pytest.mark.parametrize("action", ["InstallCertificate", "GetInstalledCertificateIds", "DeleteCertificate",
                                    "CertificateSigned", "SignedUpdateFirmware", "GetLog"])
def test_certificate_firmware_and_log_calls_go_to_their_adapters(action):
    h = on_profile(1)
    assert h.csms(action, {"x": 1}) is None
    assert [(d.action, d.payload) for d in h.delegated] == [(action, {"x": 1})]
