"""OCPP-J 1.6 frames as the CSMS records them, and the errors it raises or scripts.

A frame is one websocket text message: CALL ``[2, id, action, payload]``,
CALLRESULT ``[3, id, payload]`` or CALLERROR ``[4, id, code, description, details]``
(OCPP-J 1.6 §4.1-4.2). The CSMS records every frame both ways as a `Msg`, also the
ones it cannot parse, so a test can see exactly what went over the wire.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Literal

Direction = Literal["in", "out"]
# "invalid": a frame that is not a well-formed OCPP-J message (not JSON, not a list,
# unknown MessageTypeId, wrong arity or element types).
Kind = Literal["call", "result", "error", "invalid"]

# OCPP-J 1.6 §4.2.3, table "Valid Error Codes". 1.6 spells FormationViolation and
# OccurenceConstraintViolation this way (OCPP 2.x renamed them); a 1.6 charge
# point that sends the 2.x names is not conformant.
CALL_ERROR_CODES: frozenset[str] = frozenset(
    {
        "NotImplemented",
        "NotSupported",
        "InternalError",
        "ProtocolError",
        "SecurityError",
        "FormationViolation",
        "PropertyConstraintViolation",
        "OccurenceConstraintViolation",
        "TypeConstraintViolation",
        "GenericError",
    }
)


@dataclass(frozen=True)
class Msg:
    """One recorded frame.

    ``action`` of a result/error is the action of the call it answers (None when the
    unique id matches no call). ``payload`` of an error is
    ``{"errorCode", "errorDescription", "errorDetails"}``; of an invalid frame, None.
    ``t`` is ``time.monotonic()`` when the frame was sent or received.
    """

    index: int
    direction: Direction
    kind: Kind
    action: str | None
    payload: Any
    unique_id: str | None
    t: float
    raw: str

    def __str__(self) -> str:
        arrow = "<-" if self.direction == "in" else "->"
        label = {
            "call": f"{self.action}",
            "result": f"{self.action}.conf",
            "error": f"CALLERROR to {self.action}",
            "invalid": "invalid frame",
        }[self.kind]
        body = self.raw if self.kind == "invalid" else json.dumps(self.payload, separators=(",", ":"))
        return f"CSMS {arrow} {label} {body}"


class _NoReply:
    """Marker a handler returns to make the CSMS stay silent (no CALLRESULT, no CALLERROR)."""

    def __repr__(self) -> str:
        return "NO_REPLY"


NO_REPLY = _NoReply()


class CsmsCallError(Exception):
    """Raised by a scripted handler: the CSMS answers the call with this CALLERROR."""

    def __init__(self, code: str, description: str = "", details: dict[str, Any] | None = None) -> None:
        super().__init__(f"{code}: {description}")
        self.code = code
        self.description = description
        self.details = details or {}


class CallErrorReceived(Exception):
    """The charge point answered a CSMS call with a CALLERROR."""

    def __init__(self, code: str, description: str = "", details: Any = None) -> None:
        super().__init__(f"{code}: {description}")
        self.code = code
        self.description = description
        self.details = details


@dataclass(frozen=True)
class Parsed:
    """A decoded frame; ``problem`` says why it is not a valid OCPP-J message."""

    kind: Kind
    unique_id: str | None
    action: str | None
    payload: Any
    problem: str | None = None


def parse_frame(raw: str) -> Parsed:
    """Classify one text frame without raising (bad input becomes ``kind="invalid"``)."""
    try:
        data = json.loads(raw)
    except (ValueError, TypeError) as exc:
        return Parsed("invalid", None, None, None, f"not JSON: {exc}")
    if not isinstance(data, list) or not data:
        return Parsed("invalid", None, None, None, "not a non-empty JSON array")
    type_id = data[0]
    unique_id = data[1] if len(data) > 1 and isinstance(data[1], str) else None
    if type_id == 2 and len(data) == 4 and unique_id is not None and isinstance(data[2], str) and isinstance(data[3], dict):
        return Parsed("call", unique_id, data[2], data[3])
    if type_id == 3 and len(data) == 3 and unique_id is not None and isinstance(data[2], dict):
        return Parsed("result", unique_id, None, data[2])
    if (
        type_id == 4
        and len(data) == 5
        and unique_id is not None
        and isinstance(data[2], str)
        and isinstance(data[3], str)
        and isinstance(data[4], dict)
    ):
        error = {"errorCode": data[2], "errorDescription": data[3], "errorDetails": data[4]}
        return Parsed("error", unique_id, None, error)
    return Parsed("invalid", unique_id, None, None, f"not a valid CALL/CALLRESULT/CALLERROR: {raw[:200]}")


def dump_call(unique_id: str, action: str, payload: dict[str, Any]) -> str:
    return json.dumps([2, unique_id, action, payload], separators=(",", ":"))


def dump_result(unique_id: str, payload: dict[str, Any]) -> str:
    return json.dumps([3, unique_id, payload], separators=(",", ":"))


def dump_error(unique_id: str, code: str, description: str, details: dict[str, Any]) -> str:
    return json.dumps([4, unique_id, code, description, details], separators=(",", ":"))
