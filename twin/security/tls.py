"""TLS for security profiles 2 and 3: the client ``ssl.SSLContext``, and which security
event a failed connection attempt means.

The context (whitepaper §"Security profiles", A00.FR.3xx/4xx):
- TLS 1.2 or later (A00.FR.312/416); compression off (A00.FR.320/424);
- for TLS 1.2 exactly the suites the whitepaper names (A00.FR.318/422):
  TLS_ECDHE_ECDSA_WITH_AES_128/256_GCM_SHA256/384 and TLS_RSA_WITH_AES_128/256_GCM_SHA256/384.
  TLS 1.3 suites are not affected by ``set_ciphers`` and stay OpenSSL's (all AEAD);
- the server certificate is checked against the installed CentralSystemRootCertificates
  only, never the system's CAs (``ssl.create_default_context()`` would add those), and its
  name against the URL's host. CSMS certificates carry the FQDN in the CN and SHOULD NOT
  have a dNSName SAN (A00.FR.510/511): OpenSSL falls back to the CN when there is no SAN,
  but not for IP addresses, so the URL must name the CSMS by DNS name;
- profile 3 presents the charge point's certificate chain and key from the store.

The context is built per connection, so a certificate stored by CertificateSigned (or a
root installed since) is used from the next connection on.
"""

from __future__ import annotations

import ssl
from collections.abc import Iterator
from datetime import datetime

from websockets.exceptions import InvalidMessage, InvalidStatus

from twin.security.certs import CertificateStore
from twin.security.pki import CENTRAL_SYSTEM_ROOT

# OpenSSL names of the four TLS 1.2 suites of A00.FR.318/422.
TLS12_CIPHERS = ("ECDHE-ECDSA-AES128-GCM-SHA256", "ECDHE-ECDSA-AES256-GCM-SHA384",
                 "AES128-GCM-SHA256", "AES256-GCM-SHA384")

INVALID_CSMS_CERTIFICATE = "InvalidCentralSystemCertificate"
INVALID_TLS_VERSION = "InvalidTLSVersion"
INVALID_TLS_CIPHER_SUITE = "InvalidTLSCipherSuite"
FAILED_TO_AUTHENTICATE = "FailedToAuthenticationAtCentralSystem"

# OpenSSL reasons (SSLError.reason) on the client, by what they mean. An "ALERT" reason is
# an alert the server sent; the client's own verification failures are
# SSLCertVerificationError.
_VERSION_REASONS = frozenset({"TLSV1_ALERT_PROTOCOL_VERSION", "UNSUPPORTED_PROTOCOL", "WRONG_SSL_VERSION",
                              "NO_PROTOCOLS_AVAILABLE", "VERSION_TOO_LOW"})
# RFC 5246 §7.2.2: handshake_failure is also what a TLS 1.2 server sends when a required
# client certificate is missing, so it is read as a cipher problem: a profile 3 station
# always presents its certificate (client_context refuses to build without one).
_CIPHER_REASONS = frozenset({"SSLV3_ALERT_HANDSHAKE_FAILURE", "TLSV1_ALERT_INSUFFICIENT_SECURITY",
                             "WRONG_CIPHER_RETURNED"})
# The server refused the charge point's certificate.
_CLIENT_CERT_REASONS = frozenset({"TLSV1_ALERT_UNKNOWN_CA", "SSLV3_ALERT_BAD_CERTIFICATE",
                                  "SSLV3_ALERT_CERTIFICATE_UNKNOWN", "SSLV3_ALERT_CERTIFICATE_EXPIRED",
                                  "SSLV3_ALERT_CERTIFICATE_REVOKED", "SSLV3_ALERT_UNSUPPORTED_CERTIFICATE",
                                  "TLSV1_ALERT_ACCESS_DENIED", "TLSV13_ALERT_CERTIFICATE_REQUIRED"})


class TlsConfigError(ValueError):
    """The store lacks what the profile needs; the message says what."""


def client_context(profile: int, roots_pem: str, client_chain_file: str | None = None,
                   client_key_file: str | None = None) -> ssl.SSLContext:
    """The client context for ``profile`` (2 or 3), trusting only ``roots_pem`` (the
    installed CentralSystemRootCertificates as one PEM text). Profile 3 needs the
    charge point's chain (leaf first) and key files."""
    if profile not in (2, 3):
        raise TlsConfigError(f"security profile {profile} does not use TLS (2 and 3 do)")
    if not roots_pem.strip():
        raise TlsConfigError(f"security profile {profile} needs an installed CentralSystemRootCertificate")
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # check_hostname and CERT_REQUIRED
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.set_ciphers(":".join(TLS12_CIPHERS))
    ctx.options |= ssl.OP_NO_COMPRESSION
    ctx.hostname_checks_common_name = True  # CN-only CSMS certificates (A00.FR.510)
    ctx.load_verify_locations(cadata=roots_pem)
    if profile == 3:
        if not client_chain_file or not client_key_file:
            raise TlsConfigError("security profile 3 needs a charge point certificate and key")
        ctx.load_cert_chain(client_chain_file, client_key_file)
    return ctx


def context_from_store(store: CertificateStore, profile: int, now: datetime) -> ssl.SSLContext:
    """:func:`client_context` with the store's CentralSystemRootCertificates and, for
    profile 3, the charge point pair valid at ``now`` with the newest notBefore."""
    chain_file = key_file = None
    if profile == 3:
        credentials = store.charge_point_credentials(now)
        if credentials is None:
            raise TlsConfigError("security profile 3 needs a valid charge point certificate in the store")
        chain_file, key_file = str(credentials.chain_file), str(credentials.key_file)
    return client_context(profile, store.roots_pem(CENTRAL_SYSTEM_ROOT), chain_file, key_file)


def _chain(exc: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


def security_event_for_connect_error(exc: BaseException, profile: int) -> str | None:
    """The security event a failed connection attempt under ``profile`` means, or None
    (refused, reset, timed out, DNS ...: not a security event).

    - the server's certificate failed our check (unknown root, expired, wrong name):
      InvalidCentralSystemCertificate (A00.FR.309/413);
    - the server offers only TLS < 1.2: InvalidTLSVersion (A00.FR.315/419);
    - no suite in common: InvalidTLSCipherSuite (A00.FR.322/426);
    - the server refused our certificate, or HTTP 401/403 on the upgrade (a wrong Basic
      password): FailedToAuthenticationAtCentralSystem.

    Under TLS 1.3 a server checks the client certificate after the handshake has completed
    for the client, so a refused or missing certificate shows up as the connection closing
    before any HTTP response (websockets' InvalidMessage; the alert itself is lost to the
    reset that follows it). On a wss:// connection (profiles 2 and 3) that is read as
    FailedToAuthenticationAtCentralSystem, a non-critical event that is only logged.

    The server's alert only arrives if the server flushes it before closing; asyncio TLS
    servers abort instead, and the client sees a reset, which maps to None."""
    for link in _chain(exc):
        if isinstance(link, ssl.SSLCertVerificationError):
            return INVALID_CSMS_CERTIFICATE
        if isinstance(link, ssl.SSLError):
            reason = getattr(link, "reason", None) or ""  # absent on an SSLError built by hand
            if reason in _VERSION_REASONS:
                return INVALID_TLS_VERSION
            if reason in _CIPHER_REASONS:
                return INVALID_TLS_CIPHER_SUITE
            if reason in _CLIENT_CERT_REASONS:
                return FAILED_TO_AUTHENTICATE
            return None
        if isinstance(link, InvalidStatus):
            return FAILED_TO_AUTHENTICATE if link.response.status_code in (401, 403) else None
        if isinstance(link, InvalidMessage):
            closed_early = any(isinstance(inner, EOFError) for inner in _chain(link))
            return FAILED_TO_AUTHENTICATE if profile in (2, 3) and closed_early else None
    return None
