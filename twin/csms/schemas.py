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
