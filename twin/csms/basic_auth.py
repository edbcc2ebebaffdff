"""HTTP Basic authentication of a charge point (security profiles 1 and 2).

OCPP-J 1.6 §6.2.2 and whitepaper A00.FR.203-205/303-304: the upgrade request carries
``Authorization: Basic base64(<identity> ":" <password>)``. The user name must be the
charge point identity at the end of the connection URL (A00.FR.204), the password the
AuthorizationKey. The CSMS decodes the configured key exactly as the station does
(`twin.security.auth_key.authorization_key_bytes`): 32-40 hex digits are the 16-20
decoded bytes, 16-20 characters of text are the text itself. The bytes on the wire are
compared with those bytes, so a station that sends the hex *text* of a hex key is
refused, as a whitepaper-conformant CSMS refuses it (the shiv3 simulator trap).

A configured password that is not a valid AuthorizationKey (e.g. shorter than 16
bytes) is compared as its UTF-8 bytes: older tests and benches use such passwords.
"""

from __future__ import annotations

import base64
import binascii
import hmac

from twin.security.auth_key import AuthorizationKeyError, authorization_key_bytes


def expected_password(password: str | bytes) -> bytes:
    """The bytes a station must send for the configured ``password`` (rule above)."""
    if isinstance(password, (bytes, bytearray)):
        return bytes(password)
    try:
        return authorization_key_bytes(password)
    except AuthorizationKeyError:
        return password.encode("utf-8")


def accepted_passwords(password: str | bytes) -> list[bytes]:
    """Kept for callers of the earlier API: the one accepted password."""
    return [expected_password(password)]


def decode_basic(header: str | bytes | None) -> tuple[bytes, bytes] | str:
    """(user, password) bytes of a Basic ``Authorization`` header, or why it is not one.

    The header is handled as bytes: websockets hands non-ASCII header bytes over as
    surrogate escapes, which ``surrogateescape`` turns back into the bytes received."""
    if not header:
        return "no Authorization header"
    raw = header if isinstance(header, bytes) else header.encode("utf-8", errors="surrogateescape")
    scheme, _, encoded = raw.strip().partition(b" ")
    if scheme.lower() != b"basic":
        return f"unsupported authorization scheme {scheme[:20].decode('ascii', errors='replace')!r}"
    try:
        decoded = base64.b64decode(encoded.strip(), validate=True)
    except (binascii.Error, ValueError):
        return "Authorization header is not valid base64"
    # RFC 7617 §2: the user-id cannot contain ":", so the first ":" ends it; a binary
    # password may itself contain b":".
    user, colon, given = decoded.partition(b":")
    if not colon:
        return "Authorization header has no ':' between user and password"
    return user, given


def check_basic_auth(header: str | bytes | None, charge_point_id: str, password: str | bytes) -> str | None:
    """None if the ``Authorization`` header authenticates the station, else the reason it
    does not (never containing the password)."""
    parsed = decode_basic(header)
    if isinstance(parsed, str):
        return parsed
    user, given = parsed
    if user != charge_point_id.encode("utf-8"):
        return "username is not the charge point identity of the URL (A00.FR.204)"
    if hmac.compare_digest(given, expected_password(password)):
        return None
    return "wrong password"


def basic_user(header: str | bytes | None) -> str | None:
    """The user name of a Basic header, for the handshake record (None if not Basic)."""
    parsed = decode_basic(header)
    if isinstance(parsed, str):
        return None
    return parsed[0].decode("utf-8", errors="replace")
