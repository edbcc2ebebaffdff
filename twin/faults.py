"""Protocol fault rules: what the link does to a matching OCPP-J message on purpose.

A rule names an action (or ``"*"``), a direction and what to do:

- direction ``"in"``: calls the CSMS sends to the station; the fault applies to the
  station's *answer* (``reply``, ``callerror`` and ``silence`` replace it: the core never
  sees the call; ``delay``, ``duplicate``, ``garble`` and ``invalid`` transform the
  answer the core gave).
- direction ``"out"``: calls the station sends; the fault applies to the CALL frame
  (``drop`` keeps it off the wire, and the core sees it unanswered).

A rule fires at most ``count`` times (None: until removed) and, with ``probability``
below 1, draws from its own ``random.Random(seed)``, so a run can be repeated. Rules are
checked in the order they were added; the first that matches and fires wins.

Pure data and decisions: no I/O. twin.link applies them; docs/faults-and-traces.md is
the user's description.
"""

from __future__ import annotations

import random
import threading
from dataclasses import dataclass, field
from typing import Any

from twin.link import CP_ACTIONS, SECURITY_ACTIONS

DO_KINDS = ("reply", "callerror", "silence", "delay", "duplicate", "garble", "invalid", "drop")
IN_ONLY = frozenset({"reply", "callerror", "silence"})
OUT_ONLY = frozenset({"drop"})

# OCPP-J 1.6 §4.2.3, the valid CALLERROR codes.
CALL_ERROR_CODES = frozenset({
    "NotImplemented", "NotSupported", "InternalError", "ProtocolError", "SecurityError", "FormationViolation",
    "PropertyConstraintViolation", "OccurenceConstraintViolation", "TypeConstraintViolation", "GenericError",
})

# Calls a charge point sends (OCPP 1.6 §4 and the security whitepaper).
STATION_ACTIONS = frozenset({
    "Authorize", "BootNotification", "DataTransfer", "DiagnosticsStatusNotification", "FirmwareStatusNotification",
    "Heartbeat", "MeterValues", "StartTransaction", "StatusNotification", "StopTransaction",
    "LogStatusNotification", "SecurityEventNotification", "SignCertificate", "SignedFirmwareStatusNotification",
})
CSMS_ACTIONS = frozenset(CP_ACTIONS | SECURITY_ACTIONS)

FIELDS = ("id", "on", "direction", "do", "payload", "code", "description", "seconds", "count", "probability", "seed")
MAX_DELAY_S = 3600.0

_ids = iter(range(1, 1 << 62))
_ids_lock = threading.Lock()


def _next_id() -> str:
    with _ids_lock:
        return f"f{next(_ids)}"


@dataclass
class Rule:
    id: str
    on: str
    direction: str
    do: str
    payload: Any = None
    code: str | None = None
    description: str = ""
    seconds: float = 0.0
    count: int | None = None
    probability: float = 1.0
    seed: int | None = None
    fired: int = 0
    _rng: random.Random = field(default_factory=random.Random, repr=False)

    def matches(self, direction: str, action: str) -> bool:
        return self.direction == direction and self.on in ("*", action)

    @property
    def exhausted(self) -> bool:
        return self.count is not None and self.fired >= self.count

    def fire(self) -> bool:
        """One matching message: whether the fault applies to it (a draw when
        ``probability`` < 1, and only while ``count`` is not used up)."""
        if self.exhausted:
            return False
        if self.probability < 1.0 and self._rng.random() >= self.probability:
            return False
        self.fired += 1
        return True

    def to_dict(self) -> dict:
        out: dict[str, Any] = {"id": self.id, "on": self.on, "direction": self.direction, "do": self.do}
        if self.payload is not None:
            out["payload"] = self.payload
        if self.do == "callerror":
            out["code"] = self.code
            out["description"] = self.description
        if self.do == "delay":
            out["seconds"] = self.seconds
        out["count"] = self.count
        out["probability"] = self.probability
        if self.seed is not None:
            out["seed"] = self.seed
        out["fired"] = self.fired
        out["remaining"] = None if self.count is None else max(0, self.count - self.fired)
        return out


def _number(value: Any, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"fault {name}: expected a number, got {type(value).__name__}")
    return float(value)


def _int(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"fault {name}: expected an integer, got {type(value).__name__}")
    return value


def parse_rule(data: Any, *, rule_id: str | None = None) -> Rule:
    """A validated :class:`Rule` from its JSON/TOML form; ValueError says what is wrong.
    ``data["id"]`` (or ``rule_id``) keeps a given id, else a new one is made."""
    if not isinstance(data, dict):
        raise ValueError("a fault rule is an object (JSON) or table (TOML)")
    unknown = sorted(set(data) - set(FIELDS) - {"fired", "remaining"})
    if unknown:
        raise ValueError(f"fault: unknown field(s) {', '.join(unknown)} (known: {', '.join(FIELDS)})")
    for name in ("on", "direction", "do"):
        if name not in data:
            raise ValueError(f"fault {name}: required")
        if not isinstance(data[name], str):
            raise ValueError(f"fault {name}: expected a string")
    on, direction, do = data["on"], data["direction"], data["do"]
    if direction not in ("in", "out"):
        raise ValueError(f"fault direction: {direction!r} is not 'in' (CSMS calls) or 'out' (station calls)")
    if do not in DO_KINDS:
        raise ValueError(f"fault do: {do!r} is not one of {', '.join(DO_KINDS)}")
    if do in IN_ONLY and direction != "in":
        raise ValueError(f"fault do: {do} answers a CSMS call, so it is direction 'in' only")
    if do in OUT_ONLY and direction != "out":
        raise ValueError(f"fault do: {do} keeps a station call off the wire, so it is direction 'out' only")
    actions = CSMS_ACTIONS if direction == "in" else STATION_ACTIONS
    if on != "*" and on not in actions:
        who = "the CSMS sends" if direction == "in" else "the station sends"
        raise ValueError(f"fault on: {on!r} is not an OCPP 1.6 action {who} (direction {direction!r}), nor '*'")
    given = data.get("id")
    if given is not None and (not isinstance(given, str) or not given or not given.isprintable()
                              or "/" in given or given != given.strip()):
        # It names the rule in DELETE /api/faults/{id}: a printable string without "/".
        raise ValueError("fault id: a non-empty printable string without '/' or surrounding spaces")
    rule = Rule(id=given or rule_id or _next_id(), on=on, direction=direction, do=do)
    if len(rule.id) > 64:
        raise ValueError("fault id: at most 64 characters")

    payload = data.get("payload")
    if payload is not None and do not in ("reply", "invalid"):
        raise ValueError(f"fault payload: only for do = reply or invalid, not {do}")
    if do == "reply":
        if payload is None:
            raise ValueError("fault payload: do = reply needs the payload to answer")
        if on == "*":
            raise ValueError("fault on: do = reply needs one action (its payload must fit that action's response)")
        if not isinstance(payload, dict):
            raise ValueError("fault payload: a CALLRESULT payload is an object")
        from twin.csms.schemas import schema_problem

        problem = schema_problem("result", on, payload)
        if problem is not None:
            raise ValueError(f"fault payload: not a valid {on}.conf ({problem}); use do = invalid to send a "
                             "payload that breaks the schema")
    rule.payload = payload

    if do == "callerror":
        code = data.get("code")
        if not isinstance(code, str) or code not in CALL_ERROR_CODES:
            raise ValueError(f"fault code: do = callerror needs an OCPP-J error code, one of "
                             f"{', '.join(sorted(CALL_ERROR_CODES))}")
        rule.code = code
        description = data.get("description", "")
        if not isinstance(description, str) or len(description) > 255:
            raise ValueError("fault description: a string of at most 255 characters")
        rule.description = description
    elif "code" in data or "description" in data:
        raise ValueError("fault code/description: only for do = callerror")

    if do == "delay":
        if "seconds" not in data:
            raise ValueError("fault seconds: do = delay needs seconds")
        seconds = _number(data["seconds"], "seconds")
        if not 0 <= seconds <= MAX_DELAY_S:
            raise ValueError(f"fault seconds: {seconds:g} is out of range 0..{MAX_DELAY_S:g}")
        rule.seconds = seconds
    elif "seconds" in data:
        raise ValueError("fault seconds: only for do = delay")

    if data.get("count") is not None:
        count = _int(data["count"], "count")
        if count < 1:
            raise ValueError("fault count: at least 1 (omit it for 'until removed')")
        rule.count = count
    if data.get("probability") is not None:
        probability = _number(data["probability"], "probability")
        if not 0.0 < probability <= 1.0:
            raise ValueError(f"fault probability: {probability:g} is out of range (0, 1]")
        rule.probability = probability
    if data.get("seed") is not None:
        rule.seed = _int(data["seed"], "seed")
    rule._rng = random.Random(rule.seed)
    return rule


class FaultSet:
    """The installed rules, in the order they were added."""

    def __init__(self) -> None:
        self.rules: list[Rule] = []

    def add(self, rule: Rule) -> Rule:
        if any(r.id == rule.id for r in self.rules):
            raise ValueError(f"fault id: {rule.id!r} is installed already")
        self.rules.append(rule)
        return rule

    def remove(self, rule_id: str) -> bool:
        before = len(self.rules)
        self.rules = [r for r in self.rules if r.id != rule_id]
        return len(self.rules) != before

    def clear(self) -> None:
        self.rules.clear()

    def list(self) -> list[dict]:
        return [r.to_dict() for r in self.rules]

    def match(self, direction: str, action: str | None) -> Rule | None:
        """The rule that applies to this message, if any (counted as fired). A rule whose
        count is used up stays listed (with remaining 0) until removed, so the bench sees it ran."""
        if action is None:
            return None
        for rule in self.rules:
            if rule.matches(direction, action) and rule.fire():
                return rule
        return None


def invalid_payload(kind: str, action: str, payload: Any) -> Any:
    """``payload`` changed so that it breaks the ``action`` request ("call") or response
    ("result") schema, for do = invalid: a required field of the wrong type, else an
    unknown field (the 1.6 schemas forbid additionalProperties), else not an object."""
    from twin.csms.schemas import schema_problem

    base = dict(payload) if isinstance(payload, dict) else {}
    try:
        from ocpp.messages import get_validator

        schema = get_validator(2 if kind == "call" else 3, action, "1.6").schema
    except (OSError, ValueError):
        schema = {}
    candidates: list[Any] = []
    for name in schema.get("required", []):
        for wrong in ([], 12345, "not-a-valid-value"):
            candidates.append({**base, name: wrong})
    candidates.append({**base, "twinInvalidField": True})
    for candidate in candidates:
        try:
            if schema_problem(kind, action, candidate) is not None:
                return candidate
        except Exception:  # noqa: BLE001 - e.g. an action without a schema: any candidate will do
            return candidate
    return []
