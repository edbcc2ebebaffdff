"""The CSMS's TLS server context for security profiles 2 and 3.

- TLS 1.2 or later (A00.FR.312/416), compression off (A00.FR.320/424).
- TLS 1.2 suites: the four the whitepaper mandates (A00.FR.318/422) plus the ECDHE-RSA
  GCM pair. The CSMS must support all four mandated ones, which needs an ECDSA *and* an
  RSA server certificate (A00.FR.317 note): ``load_cert_chain`` once per key type, and
  OpenSSL picks the one that fits the negotiated suite.
- Profile 3: ``CERT_REQUIRED`` with the CSMS's own root as the only client CA, so only a
  charge point certificate the CSMS (or its CPO CA) issued gets in (A00.FR.401-402).
"""

from __future__ import annotations

import ssl
from collections.abc import Iterable
from pathlib import Path

from cryptography import x509

# OpenSSL names: TLS_ECDHE_ECDSA_WITH_AES_128/256_GCM_SHA256/384, TLS_RSA_WITH_AES_128/256_GCM_SHA256/384.
MANDATED_TLS12_CIPHERS = ("ECDHE-ECDSA-AES128-GCM-SHA256", "ECDHE-ECDSA-AES256-GCM-SHA384",
                          "AES128-GCM-SHA256", "AES256-GCM-SHA384")
EXTRA_TLS12_CIPHERS = ("ECDHE-RSA-AES128-GCM-SHA256", "ECDHE-RSA-AES256-GCM-SHA384")


def server_context(pairs: Iterable[tuple[str | Path, str | Path]], *, client_ca: str | Path | None = None,
                   minimum_version: ssl.TLSVersion = ssl.TLSVersion.TLSv1_2) -> ssl.SSLContext:
    """A server context serving every (certificate chain, key) pair in ``pairs`` (one per
    key type); with ``client_ca`` a client certificate issued by it is required
    (profile 3). Raises ``ssl.SSLError`` / ``OSError`` for unusable files."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = minimum_version
    ctx.options |= ssl.OP_NO_COMPRESSION
    ctx.set_ciphers(":".join(MANDATED_TLS12_CIPHERS + EXTRA_TLS12_CIPHERS))
    loaded = 0
    for cert, key in pairs:
        ctx.load_cert_chain(str(cert), str(key))
        loaded += 1
    if not loaded:
        raise ValueError("a TLS server needs at least one certificate and key")
    if client_ca is not None:
        ctx.verify_mode = ssl.CERT_REQUIRED
        ctx.load_verify_locations(cafile=str(client_ca))
    return ctx


def tls_facts(ssl_object: ssl.SSLObject | ssl.SSLSocket | None) -> tuple[str | None, str | None, str | None, bytes | None]:
    """(TLS version, cipher name, client certificate subject as RFC 4514, client
    certificate DER) of a server-side TLS connection; Nones for plain ws://."""
    if ssl_object is None:
        return None, None, None, None
    cipher = ssl_object.cipher()
    der = ssl_object.getpeercert(binary_form=True)
    subject = None
    if der:
        try:
            subject = x509.load_der_x509_certificate(der).subject.rfc4514_string()
        except ValueError:
            subject = "<unparseable certificate>"
    return ssl_object.version(), cipher[0] if cipher else None, subject, der or None
