"""Check frames against the OCPP 1.6 JSON schemas shipped with the `ocpp` package.

OCTT §1.2: every message must validate against the 1.6 schemas, so the CSMS checks
each charge-point call and reply and reports problems as text instead of raising.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from decimal import Decimal
from typing import Any

from jsonschema import Draft4Validator
from ocpp.messages import MessageType, get_validator

# These three schemas constrain floats with "multipleOf": 0.1, which binary floats
# fail (21.4 -> 21.399999...); `ocpp` validates them on Decimals, and so must we,
# with the same choice: `get_validator` caches one validator per schema name.
_DECIMAL_SCHEMAS = {
    (MessageType.Call, "SetChargingProfile"),
    (MessageType.Call, "RemoteStartTransaction"),
    (MessageType.CallResult, "GetCompositeSchedule"),
}


def schema_problem(kind: str, action: str, payload: Any) -> str | None:
    """None if ``payload`` is a valid 1.6 request ("call") or response ("result") of ``action``, else why not."""
    type_id = MessageType.Call if kind == "call" else MessageType.CallResult
    parse_float: Callable[[str], Any] = Decimal if (type_id, action) in _DECIMAL_SCHEMAS else float
    try:
        validator: Draft4Validator = get_validator(type_id, action, "1.6", parse_float=parse_float)
    except OSError:
        return f"{action} is not an OCPP 1.6 action (no schema)"
    instance = json.loads(json.dumps(payload), parse_float=parse_float)
    errors = sorted(validator.iter_errors(instance), key=lambda e: list(e.absolute_path))
    if not errors:
        return None
    return "; ".join(_describe(e) for e in errors)


def _describe(error: Any) -> str:
    where = "/".join(str(p) for p in error.absolute_path)
    return f"{where or '<payload>'}: {error.message}"


# OCPP 2.0.1 names that some 1.6 stacks send for the whitepaper's events (libocpp sent
# InvalidCsmsCertificate until its PR #680 and still sends FailedToAuthenticateAtCsms).
_OCPP201_EVENT_NAMES = {
    "FailedToAuthenticateAtCsms": "FailedToAuthenticationAtCentralSystem",
    "CsmsFailedToAuthenticate": "CentralSystemFailedToAuthentication",
    "InvalidCsmsCertificate": "InvalidCentralSystemCertificate",
}


def semantic_problem(kind: str, action: str, payload: Any) -> str | None:
    """Whitepaper rules the JSON schemas cannot express; None if the payload keeps them.

    Only called for payloads that passed the schema, so the fields have their types."""
    if not isinstance(payload, dict):
        return None
    if kind == "call":
        if action in ("LogStatusNotification", "SignedFirmwareStatusNotification"):
            # N01.FR.07/12, L01.FR.21: requestId is optional in the schema, but may only be
            # left out for Idle (the triggered "nothing running" answer).
            if "requestId" not in payload and payload.get("status") != "Idle":
                return f"requestId is missing with status {payload.get('status')!r} (only Idle may omit it)"
        elif action == "SecurityEventNotification":
            wp3 = _OCPP201_EVENT_NAMES.get(str(payload.get("type")))
            if wp3 is not None:
                return f"type {payload['type']!r} is the OCPP 2.0.1 name; OCPP 1.6 (WP3 §8) calls it {wp3!r}"
        elif action == "SignCertificate":
            return csr_problem(str(payload.get("csr", "")))
    elif kind == "result" and action == "GetInstalledCertificateIds":
        has_data = "certificateHashData" in payload
        if payload.get("status") == "Accepted" and not has_data:
            return "status Accepted without certificateHashData (M03.FR.02)"
        if payload.get("status") == "NotFound" and has_data:
            return "status NotFound with certificateHashData"
    return None


def csr_problem(csr_pem: str) -> str | None:
    """Why a SignCertificate.req ``csr`` is not a usable PEM PKCS#10 request (A02.FR.03,
    A02.FR.13, A00.FR.405), or None."""
    from cryptography import x509
    from cryptography.x509.oid import NameOID

    try:
        csr = x509.load_pem_x509_csr(csr_pem.replace("\r\n", "\n").encode("ascii", errors="replace"))
    except ValueError as exc:
        return f"csr is not a PEM PKCS#10 request: {exc}"
    if not csr.is_signature_valid:
        return "csr signature does not verify with its own key"
    if len(csr.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)) != 1:
        return "csr subject has no single O (CpoName, A02.FR.13)"
    if len(csr.subject.get_attributes_for_oid(NameOID.COMMON_NAME)) != 1:
        return "csr subject has no single CN (the serial number, A00.FR.405)"
    return None
