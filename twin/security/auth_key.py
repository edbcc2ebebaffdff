"""The AuthorizationKey and the HTTP Basic header of security profiles 1 and 2.

OCPP-J 1.6 §6.2.2 and whitepaper A00.FR.203-205: every WebSocket upgrade request carries
``Authorization: Basic base64(<identity> ":" <password>)`` (RFC 7617), where the user name
is the charge point identity at the end of the connection URL and the password is the
value of AuthorizationKey: 16 to 20 bytes, "hexadecimal represented" (up to 40 hex
digits). The bytes on the wire are the decoded bytes, not the hex text (the OCPP-J §6.2.2
example uses a binary key).

How a configured value is read, the rule OCTT applies (TC_085: "configured (non hex
representation of) BasicAuthPassword"; TC_086: "hex form 20-40 chars, key >= 16 chars"):

- 32 to 40 characters, an even number, all hex digits: hex, decoded to its 16-20 bytes
  (TC_073 sends ``4F43415F4F4354545F61646D696E5F74657374``, the 19 bytes
  ``OCA_OCTT_admin_test``);
- otherwise 16 to 20 printable characters (16-20 bytes in UTF-8): the text itself;
- anything else is refused (ChangeConfiguration answers Rejected).

Every decoded byte value is allowed, so the header is built from bytes; building it from
``f"{id}:{key}".encode()`` sends the hex text (or breaks on a binary key). The key is
write-only: never returned by GetConfiguration, never logged (A01.FR.12).
"""

from __future__ import annotations

import base64
import re
from urllib.parse import unquote_to_bytes, urlsplit

KEY_MIN_BYTES = 16
KEY_MAX_BYTES = 20
_HEX = re.compile(r"[0-9A-Fa-f]*")


class AuthorizationKeyError(ValueError):
    """A value that is not a valid AuthorizationKey; the message says why (never the value)."""


def authorization_key_bytes(value: str) -> bytes:
    """The Basic-auth password bytes of the AuthorizationKey text ``value`` (rule above)."""
    if not isinstance(value, str):
        raise AuthorizationKeyError("AuthorizationKey must be a string")
    if 2 * KEY_MIN_BYTES <= len(value) <= 2 * KEY_MAX_BYTES and len(value) % 2 == 0 and _HEX.fullmatch(value):
        return bytes.fromhex(value)
    if KEY_MIN_BYTES <= len(value) <= KEY_MAX_BYTES:
        if not value.isprintable():
            raise AuthorizationKeyError("AuthorizationKey as plain text must be printable characters")
        raw = value.encode("utf-8")
        if not KEY_MIN_BYTES <= len(raw) <= KEY_MAX_BYTES:
            raise AuthorizationKeyError(f"AuthorizationKey as plain text is {len(raw)} bytes in UTF-8, "
                                        f"{KEY_MIN_BYTES}-{KEY_MAX_BYTES} allowed")
        return raw
    raise AuthorizationKeyError(
        f"AuthorizationKey must be {2 * KEY_MIN_BYTES}-{2 * KEY_MAX_BYTES} hex digits (an even number) or "
        f"{KEY_MIN_BYTES}-{KEY_MAX_BYTES} characters of text; got {len(value)} characters")


def is_valid_authorization_key(value: object) -> bool:
    """Whether ChangeConfiguration(AuthorizationKey, value) may be Accepted."""
    try:
        authorization_key_bytes(value)  # type: ignore[arg-type]
    except AuthorizationKeyError:
        return False
    return True


def identity_from_url(url: str) -> bytes:
    """The charge point identity at the end of the connection URL: the Basic-auth user
    name (A00.FR.204). The URL carries it percent-encoded (OCPP-J 1.6 §3.1.1)."""
    path = urlsplit(url).path
    segment = path.rsplit("/", 1)[-1]
    if not segment:
        raise ValueError(f"the URL {url!r} does not end with a charge point identity")
    identity = unquote_to_bytes(segment)
    if b":" in identity:
        raise ValueError("a charge point identity with ':' cannot be a Basic-auth user name (RFC 7617 §2)")
    return identity


def basic_auth_header(identity: str | bytes, password: bytes) -> str:
    """The ``Authorization`` header value ``Basic base64(identity ":" password)``, built
    from bytes."""
    user = identity.encode("utf-8") if isinstance(identity, str) else bytes(identity)
    if not user or b":" in user:
        raise ValueError("the Basic-auth user name must be non-empty and without ':' (RFC 7617 §2)")
    return "Basic " + base64.b64encode(user + b":" + bytes(password)).decode("ascii")


def basic_auth_headers(url: str, authorization_key: str) -> dict[str, str]:
    """The extra upgrade-request headers for profiles 1 and 2."""
    return {"Authorization": basic_auth_header(identity_from_url(url), authorization_key_bytes(authorization_key))}
