"""Secrets out of log text: URL passwords, the AuthorizationKey value, Authorization headers.

Pure functions on strings, for log lines that quote OCPP frames or HTTP headers:

- UpdateFirmware ``location`` and GetDiagnostics ``location`` are URLs that may carry
  ``user:password@`` (RFC 3986 §3.2.1 userinfo; OCPP 1.6 §5.6 and §5.17 leave the
  credentials to the URL).
- ChangeConfiguration of ``AuthorizationKey`` carries the Basic-auth password of security
  profile 1 (OCPP 1.6 security whitepaper §3.1; key names are case-insensitive, CiString).
- ``Authorization:`` headers carry the same password, base64-encoded (RFC 7617).

The text may be cut off or elided by a logger, so the rules lean towards hiding too much:
a URL whose authority looks like ``user:something`` loses ``something`` even without the
``@`` that the cut removed. ``twin.firmware.transfer.redact_url`` handles one whole URL;
``redact_text`` finds URLs anywhere in a line.
"""

from __future__ import annotations

import logging
import re

REDACTED = "***"

# A URL scheme (RFC 3986 §3.1) followed by "://", also as "\/\/" inside JSON text (JSON
# allows escaping "/"). The scheme is bounded and must start a word, so a long run of
# letters costs linear time, not quadratic.
_URL_START = re.compile(r"(?<![A-Za-z0-9+.-])[A-Za-z][A-Za-z0-9+.-]{0,31}:(?:\\?/){2}")
# What every URL start above contains: ":" then "/" or "\/". A text without it has no URL,
# and is answered without running _URL_START, which tries up to 32 scheme characters at every
# letter (about 0.1 ms for a 36-character message id: the trace redacts every string of every
# frame, and at a thousand stations that was most of an idle fleet's CPU).
_URL_HINT = re.compile(r":\\?/")
# Where a URL ends in a log line: whitespace, quotes, angle brackets.
_URL_END = re.compile(r"[\s\"'<>]|\\\"")
# Where the authority ends (RFC 3986 §3.2): "/", "?" or "#" (or an escaped "\/").
_AUTHORITY_END = re.compile(r"[/?#\\]")

# An Authorization (or Proxy-Authorization) header in "Name: value" or "'Name': 'value'"
# form; \b keeps "AuthorizationKey" out.
_AUTH_HEADER = re.compile(
    r"(?i)(\b(?:proxy-)?authorization\b\\?[\"']?\s*[:=]\s*\\?[\"']?)(?:(basic|bearer|digest)\s+)?[^\s\"',;\\]+")

# A flat JSON object or Python dict, e.g. {"key":"AuthorizationKey","value":"..."}.
_FLAT_OBJECT = re.compile(r"\{[^{}]*\}")
SECRET_KEY_NAMES = ("authorizationkey",)  # configuration keys whose values are secrets (case-folded)
_SECRET_KEY = re.compile(r"(?i)\\?[\"']key\\?[\"']\s*:\s*\\?[\"'](?:" + "|".join(SECRET_KEY_NAMES) + r")\\?[\"']")
_MENTIONS_SECRET_KEY = re.compile(r"(?i)" + "|".join(SECRET_KEY_NAMES))
# The "value" member: a quoted string (ends at its quote followed by "," or "}"), or a bare token.
_VALUE_MEMBER = re.compile(
    r"(\\?[\"']value\\?[\"']\s*:\s*)(?:(?P<q>\\?[\"']).*?(?P=q)(?=\s*[,}])|[^,}\s]+)", re.DOTALL)


# The repr of a store op that holds the key: ('kv_put', 'config', 'AuthorizationKey', '...')
# or ('kv_put', 'security', 'pending_key', '...') (twin.core.security).
_SECRET_OP = re.compile(r"(?i)([\"']kv_put[\"']\s*,\s*[\"'][^\"']*[\"']\s*,\s*[\"'](?:authorizationkey|pending_key)[\"']\s*,\s*)"
                        r"([\"']).*?\2")
# Store namespaces / keys whose values are secrets (twin.core.ops NS.SECURITY, AuthorizationKey).
_SECRET_OP_NAMESPACES = frozenset({"security"})


def redact_text(text: str) -> str:
    """``text`` with URL passwords, AuthorizationKey values and Authorization header values
    replaced by ``***``. Never raises for any str."""
    text = _redact_urls(text)
    text = _AUTH_HEADER.sub(lambda m: f"{m.group(1)}{m.group(2) + ' ' if m.group(2) else ''}{REDACTED}", text)
    text = _SECRET_OP.sub(lambda m: f"{m.group(1)}{m.group(2)}{REDACTED}{m.group(2)}", text)
    return _redact_secret_values(text)


def redact_op(op: tuple) -> tuple:
    """A store op fit for a log line: the value of a secret (the AuthorizationKey, in the
    ``config`` namespace or pending in ``security``) replaced by ``***``."""
    if (len(op) == 4 and op[0] == "kv_put"
            and (op[1] in _SECRET_OP_NAMESPACES or str(op[2]).casefold() in SECRET_KEY_NAMES)):
        return (*op[:3], REDACTED)
    return op


def redact_ops(batches: object) -> object:
    """:func:`redact_op` over an op list, or a list of op lists (the actor's held batches)."""
    if isinstance(batches, tuple):
        return redact_op(batches)
    if isinstance(batches, list):
        return [redact_ops(b) for b in batches]
    return batches


def redact_frame(frame: str | bytes) -> str:
    """One OCPP-J frame as text fit for a log line (bytes are decoded with replacement)."""
    if isinstance(frame, (bytes, bytearray, memoryview)):
        frame = bytes(frame).decode("utf-8", errors="replace")
    return redact_text(frame)


def _redact_urls(text: str) -> str:
    if _URL_HINT.search(text) is None:
        return text
    out: list[str] = []
    pos = 0
    for start in _URL_START.finditer(text):
        if start.start() < pos:
            continue  # inside a URL already handled
        rest_from = start.end()
        end = _URL_END.search(text, rest_from)
        url_end = end.start() if end else len(text)
        out.append(text[pos:rest_from])
        out.append(_redact_authority(text[rest_from:url_end]))
        pos = url_end
    out.append(text[pos:])
    return "".join(out)


def _redact_authority(rest: str) -> str:
    """``rest`` is a URL after "scheme://"; hide the password in its userinfo."""
    cut = _AUTHORITY_END.search(rest)
    authority_end = cut.start() if cut else len(rest)
    authority = rest[:authority_end]
    if "@" in authority:
        # As urllib.parse.urlsplit reads it: userinfo up to the last "@" of the authority.
        userinfo, _, _ = authority.rpartition("@")
        if ":" not in userinfo:
            return rest
        user = userinfo.partition(":")[0]
        return f"{user}:{REDACTED}{rest[len(userinfo):]}"
    host_part = authority
    if host_part.startswith("["):  # an IPv6 literal (RFC 3986 §3.2.2): its colons are not userinfo
        host_part = host_part.partition("]")[2]
    user, colon, after = host_part.partition(":")
    if not colon or after.isdigit() or after == "":
        return rest  # host, or host:port
    # "user:pa/ss@host" (an unencoded "/", "?" or "#" in the password) or a line cut off
    # after "user:pa": not a port, so treat it as a password and hide it up to the last "@".
    at = rest.rfind("@")
    if at == -1:
        return f"{user}:{REDACTED}"
    return f"{user}:{REDACTED}{rest[at:]}"


def _redact_secret_values(text: str) -> str:
    if not _MENTIONS_SECRET_KEY.search(text):
        return text
    found = False

    def one_object(m: re.Match[str]) -> str:
        nonlocal found
        obj = m.group(0)
        if not _SECRET_KEY.search(obj):
            return obj
        found = True
        return _VALUE_MEMBER.sub(lambda v: f'{v.group(1)}"{REDACTED}"', obj)

    redacted = _FLAT_OBJECT.sub(one_object, text)
    if found:
        return redacted
    # The key is named but not in a flat {"key": ..., "value": ...} object (nested, cut
    # off, or a bare mention): hide every "value" member rather than guess which one.
    return _VALUE_MEMBER.sub(lambda v: f'{v.group(1)}"{REDACTED}"', text)


class RedactingFilter(logging.Filter):
    """A logger filter that rewrites each record's message (and traceback) through
    ``redact_text`` before any handler sees it."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # noqa: BLE001 - a bad format string: let logging report it as usual
            return True
        clean = redact_text(message)
        if clean != message:
            record.msg, record.args = clean, ()
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact_text(record.exc_text)
        return True
