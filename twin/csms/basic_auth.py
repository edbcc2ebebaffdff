"""HTTP Basic authentication of a charge point (OCPP 1.6 Security Whitepaper, profile 1).

The username is the charge point identity and the password its AuthorizationKey.
OCPP-J 1.6 §7 describes that key as 20 raw bytes, while the Security Whitepaper
sends the configured string as-is; when the expected password is 40 hex digits
both encodings are accepted, so stations of either reading can connect.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import re

_HEX40 = re.compile(r"[0-9A-Fa-f]{40}")


def accepted_passwords(password: str) -> list[bytes]:
    candidates = [password.encode()]
    if _HEX40.fullmatch(password):
        candidates.append(bytes.fromhex(password))
    return candidates


def check_basic_auth(header: str | None, charge_point_id: str, password: str) -> str | None:
    """None if the ``Authorization`` header authenticates the station, else the reason it does not."""
    if not header:
        return "no Authorization header"
    scheme, _, encoded = header.strip().partition(" ")
    if scheme.lower() != "basic":
        return f"unsupported authorization scheme {scheme!r}"
    try:
        decoded = base64.b64decode(encoded.strip(), validate=True)
    except (binascii.Error, ValueError):
        return "Authorization header is not valid base64"
    # Split after the known username: a binary key may itself contain b":".
    prefix = charge_point_id.encode() + b":"
    if not decoded.startswith(prefix):
        return "username is not the charge point identity"
    given = decoded[len(prefix):]
    if any(hmac.compare_digest(given, candidate) for candidate in accepted_passwords(password)):
        return None
    return "wrong password"
