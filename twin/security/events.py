"""The security events of the OCPP 1.6 security whitepaper (edition 3, §8 "Security events")
and the SecurityEventNotification.req payload.

Every event goes into the security log (A04.FR.04). Critical ones SHALL be sent, queued
durably while offline (A04.FR.01/02). Four non-critical ones are sent too, because the
use cases that raise them say so and OCTT waits for them: InvalidFirmwareSignature
(L01.FR.03, TC_081), InvalidFirmwareSigningCertificate (L01.FR.02),
InvalidCentralSystemCertificate (TC_078) and InvalidChargePointCertificate (A02.FR.07,
TC_077). :attr:`SecurityEvent.sent` is that union.

The two authentication events keep the whitepaper's own spelling
(``FailedToAuthenticationAtCentralSystem``, ``CentralSystemFailedToAuthentication``), not
the OCPP 2.0.1 names (``FailedToAuthenticateAtCsms`` ...) that some 1.6 stacks send.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime

from twin.core.timeutil import ts
from twin.redact import REDACTED, redact_text

TECH_INFO_MAX = 255  # SecurityEventNotification.req techInfo, CiString255
TYPE_MAX = 50  # SecurityEventNotification.req type, CiString50


@dataclass(frozen=True)
class SecurityEvent:
    name: str
    critical: bool
    description: str
    # Sent to the CSMS although not critical: the use case asks for it (see the module text).
    sent_anyway: bool = False

    @property
    def sent(self) -> bool:
        """Whether the event goes to the CSMS (with guaranteed delivery) and not only to the log."""
        return self.critical or self.sent_anyway


_CATALOGUE = (
    SecurityEvent("FirmwareUpdated", True, "New firmware is installed and running"),
    SecurityEvent("FailedToAuthenticationAtCentralSystem", False,
                  "The Central System rejected the Charge Point's credentials"),
    SecurityEvent("CentralSystemFailedToAuthentication", False,
                  "The Charge Point rejected the Central System's credentials"),
    SecurityEvent("SettingSystemTime", True, "The system time of the Charge Point was set or stepped"),
    SecurityEvent("StartupOfTheDevice", True, "The Charge Point started after power-up"),
    SecurityEvent("ResetOrReboot", True, "The Charge Point restarted after a Reset or another reboot"),
    SecurityEvent("SecurityLogWasCleared", True, "The security log was cleared or lost entries"),
    SecurityEvent("ReconfigurationOfSecurityParameters", False,
                  "Security parameters (profile, AuthorizationKey, keys, certificates) changed"),
    SecurityEvent("MemoryExhaustion", True, "Flash or RAM is (nearly) full"),
    SecurityEvent("InvalidMessages", False, "Invalid OCPP messages were received"),
    SecurityEvent("AttemptedReplayAttacks", False, "A replayed OCPP message was received"),
    SecurityEvent("TamperDetectionActivated", True, "The physical tamper detection sensor was triggered"),
    SecurityEvent("InvalidFirmwareSignature", False, "The signature of a firmware file is invalid",
                  sent_anyway=True),
    SecurityEvent("InvalidFirmwareSigningCertificate", False, "The firmware signing certificate is invalid",
                  sent_anyway=True),
    SecurityEvent("InvalidCentralSystemCertificate", False, "The Central System's TLS certificate is invalid",
                  sent_anyway=True),
    SecurityEvent("InvalidChargePointCertificate", False,
                  "The certificate in CertificateSigned.req is invalid", sent_anyway=True),
    SecurityEvent("InvalidTLSVersion", False, "The Central System offered only TLS versions below 1.2"),
    SecurityEvent("InvalidTLSCipherSuite", False, "The Central System offered only disallowed cipher suites"),
)

EVENTS: Mapping[str, SecurityEvent] = {event.name: event for event in _CATALOGUE}

# Secrets that may end up in a techInfo built from an exception or a config dump.
_PRIVATE_KEY_PEM = re.compile(r"-----BEGIN [A-Z0-9 ]*PRIVATE KEY-----.*?(?:-----END [A-Z0-9 ]*PRIVATE KEY-----|$)",
                              re.DOTALL)


def event(name: str) -> SecurityEvent:
    """The catalogue entry for ``name``; a clear error for a name the whitepaper does not define."""
    try:
        return EVENTS[name]
    except KeyError:
        raise ValueError(f"unknown security event {name!r}") from None


def clean_tech_info(text: str, secrets: Iterable[str | bytes] = ()) -> str:
    """``text`` fit for techInfo and the security log: URL passwords, Authorization header
    values, AuthorizationKey values and private keys replaced by ``***``, every value in
    ``secrets`` (e.g. the current AuthorizationKey) too, control characters turned into
    spaces, then cut to 255 characters. Redaction comes first: a secret cut in half is no
    longer recognisable."""
    for secret in secrets:
        if isinstance(secret, (bytes, bytearray)):
            secret = bytes(secret).decode("utf-8", errors="replace")
        if secret:
            text = text.replace(secret, REDACTED)
    text = _PRIVATE_KEY_PEM.sub(REDACTED, text)
    text = redact_text(text)
    text = "".join(ch if ch.isprintable() else " " for ch in text)
    return text[:TECH_INFO_MAX]


def notification_payload(name: str, timestamp: datetime, tech_info: str | None = None,
                         secrets: Iterable[str | bytes] = ()) -> dict[str, str]:
    """The SecurityEventNotification.req payload (OCPP-J field names).

    ``timestamp`` is when the event happened, not when it is sent (the message is queued
    while offline); it must be timezone-aware. ``tech_info`` is cleaned and cut by
    :func:`clean_tech_info`; an empty one is left out."""
    event(name)
    if timestamp.tzinfo is None:
        raise ValueError("timestamp must be timezone-aware")
    payload = {"type": name, "timestamp": ts(timestamp)}
    if tech_info:
        cleaned = clean_tech_info(tech_info, secrets)
        if cleaned.strip():
            payload["techInfo"] = cleaned
    return payload


class FailureRun:
    """Raise a connection-failure event once per run of failures, not once per retry.

    A wrong clock or a replaced CSMS certificate makes every reconnect fail the same way;
    one InvalidCentralSystemCertificate per run is what the CSMS needs to see (libocpp
    had to stop raising it per attempt). A successful connection ends the run."""

    def __init__(self) -> None:
        self._raised: set[str] = set()

    def first(self, name: str) -> bool:
        """True the first time ``name`` is seen since the last :meth:`connected`."""
        event(name)
        if name in self._raised:
            return False
        self._raised.add(name)
        return True

    def connected(self) -> None:
        self._raised.clear()
