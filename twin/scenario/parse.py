"""Scenario files: TOML with ``[scenario] name`` and ``[[step]]``s, parsed into plain data.

A step does one thing (``plug``, ``unplug``, ``tap``, ``fault``, ``network``, ``restart``,
``wait_s``) or expects one thing (``expect`` with ``direction``, ``reply``, ``match``,
``capture``, ``within_s``). Every error names the file, the step number and the field, so
a CSMS team fixes a broken scenario without reading this code.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ACTIONS = ("plug", "unplug", "tap", "fault", "network", "restart", "wait_s")
EXPECT_FIELDS = ("expect", "direction", "reply", "match", "capture", "within_s", "absent", "next")
RESTARTS = ("soft", "hard", "power")
NETWORK_FIELDS = {"online": bool, "latency_ms": (int, float), "jitter_ms": (int, float), "drop_rate": (int, float),
                  "half_open": bool, "close_code": int, "seed": int}
DEFAULT_WITHIN_S = 10.0
# What the built-in CSMS (twin.scenario.library.builtin_csms) is set to for a scenario; a CSMS
# under test must behave that way by itself (csms_behaviour says it in words).
CSMS_FIELDS = {"boot_status": str, "heartbeat_interval": int, "reject_invalid": bool}


class ScenarioError(ValueError):
    """A scenario file that cannot be run: ``file``, ``step`` (1-based, or None) and ``field``."""

    def __init__(self, file: str, message: str, step: int | None = None, field: str | None = None):
        where = file + (f": step {step}" if step is not None else "") + (f": {field}" if field else "")
        super().__init__(f"{where}: {message}")
        self.file, self.step, self.field = file, step, field


@dataclass(frozen=True)
class Step:
    number: int  # 1-based, as the file counts them
    kind: str  # one of ACTIONS, or "expect"
    value: Any = None  # the action's argument (connector, tag, rule, network fields, restart kind, seconds)
    action: str | None = None  # expect: the OCPP action of the call
    direction: str = "out"  # expect: who sends the CALL ("out": the station)
    reply: bool = False  # expect: wait for the answer to that call instead
    match: dict = field(default_factory=dict)  # expect: a subset of the payload ("${name}" = a captured value)
    capture: dict = field(default_factory=dict)  # expect: name -> dotted path into the matched payload
    within_s: float = DEFAULT_WITHIN_S
    absent: bool = False  # expect: NO such call may come within within_s (e.g. nothing while Pending)
    next_only: bool = False  # expect (TOML ``next``): the next such call must match; another one fails at once

    def describe(self) -> str:
        """What the step does or expects, in the words a report uses."""
        if self.kind != "expect":
            return f"{self.kind} = {self.value!r}"
        who = "the station" if self.direction == "out" else "the CSMS"
        what = (f"the answer to a {self.action} sent by {who}" if self.reply
                else f"a {self.action} call sent by {who}")
        if self.absent:
            what = "no " + what.removeprefix("a ")
        if self.next_only:
            what = "the next " + what.removeprefix("a ")
        return what + (f" matching {self.match}" if self.match else "") + f" within {self.within_s:g} s"


@dataclass(frozen=True)
class Scenario:
    name: str
    source: str  # the file (or builtin:NAME) it came from
    description: str = ""
    csms_behaviour: str = ""  # what the CSMS under test must do for the scenario to pass
    csms: dict = field(default_factory=dict)  # the same, for the built-in CSMS (boot_status, heartbeat_interval)
    keys: dict = field(default_factory=dict)  # station configuration keys (strings, as ChangeConfiguration sets them)
    connectors: int | None = None
    steps: tuple[Step, ...] = ()


def load(path: str | Path, source: str | None = None) -> Scenario:
    path = Path(path)
    source = source or str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise ScenarioError(source, f"cannot read the file: {e.strerror or e}") from None
    except UnicodeDecodeError:
        raise ScenarioError(source, "the file is not UTF-8 text") from None
    return parse(text, source)


def parse(text: str, source: str = "<scenario>") -> Scenario:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ScenarioError(source, f"not valid TOML: {e}") from None
    unknown = set(data) - {"scenario", "step"}
    if unknown:
        raise ScenarioError(source, f"unknown table(s) {', '.join(sorted(unknown))} (expected [scenario] and [[step]])")
    head = data.get("scenario")
    if not isinstance(head, dict):
        raise ScenarioError(source, "missing [scenario] table", field="scenario")
    name = head.get("name")
    if not isinstance(name, str) or not name.strip():
        raise ScenarioError(source, "must be a non-empty string", field="scenario.name")
    extra = set(head) - {"name", "description", "csms_behaviour", "csms", "keys", "connectors"}
    if extra:
        raise ScenarioError(source, f"unknown key(s) {', '.join(sorted(extra))}", field="scenario")
    for key in ("description", "csms_behaviour"):
        if not isinstance(head.get(key, ""), str):
            raise ScenarioError(source, "must be a string", field=f"scenario.{key}")
    keys = head.get("keys", {})
    if not isinstance(keys, dict):
        raise ScenarioError(source, "must be a table of configuration keys", field="scenario.keys")
    for key, value in keys.items():
        if isinstance(value, (dict, list)):
            raise ScenarioError(source, "must be a string, number or boolean", field=f"scenario.keys.{key}")
    csms = head.get("csms", {})
    if not isinstance(csms, dict):
        raise ScenarioError(source, "must be a table", field="scenario.csms")
    for key, value in csms.items():
        kind = CSMS_FIELDS.get(key)
        if kind is None:
            raise ScenarioError(source, f"unknown key (known: {', '.join(CSMS_FIELDS)})", field=f"scenario.csms.{key}")
        if not isinstance(value, kind) or (kind is not bool and isinstance(value, bool)):
            raise ScenarioError(source, f"must be {kind.__name__}", field=f"scenario.csms.{key}")
    connectors = head.get("connectors")
    if connectors is not None and (not isinstance(connectors, int) or isinstance(connectors, bool)
                                   or not 1 <= connectors <= 8):
        raise ScenarioError(source, "must be an integer 1..8", field="scenario.connectors")
    raw_steps = data.get("step", [])
    if not isinstance(raw_steps, list) or not raw_steps:
        raise ScenarioError(source, "a scenario needs at least one [[step]]", field="step")
    steps = tuple(_step(source, i, raw) for i, raw in enumerate(raw_steps, 1))
    return Scenario(name.strip(), source, head.get("description", "").strip(), head.get("csms_behaviour", "").strip(),
                    dict(csms), {k: _key_text(v) for k, v in keys.items()}, connectors, steps)


def _key_text(value: Any) -> str:
    # Configuration keys are strings on the wire (ChangeConfiguration.req value, §6.9).
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _step(source: str, n: int, raw: Any) -> Step:
    def fail(message: str, name: str | None = None) -> ScenarioError:
        return ScenarioError(source, message, step=n, field=name)

    if not isinstance(raw, dict):
        raise fail("a step must be a table")
    actions = [k for k in ACTIONS if k in raw]
    if "expect" in raw and actions:
        raise fail(f"a step does one thing: it has both expect and {actions[0]}", actions[0])
    if len(actions) > 1:
        raise fail(f"a step does one thing: it has {' and '.join(actions)}", actions[1])
    if not actions and "expect" not in raw:
        raise fail(f"a step needs one of {', '.join(ACTIONS)} or expect")
    if actions:
        kind = actions[0]
        extra = set(raw) - {kind}
        if extra:
            raise fail(f"not allowed on a {kind} step (only on expect steps)" if extra & set(EXPECT_FIELDS)
                       else "unknown field", sorted(extra)[0])
        return Step(n, kind, _action_value(kind, raw[kind], fail))
    extra = set(raw) - set(EXPECT_FIELDS)
    if extra:
        raise fail("unknown field", sorted(extra)[0])
    action = raw["expect"]
    if not isinstance(action, str) or not action.isidentifier():
        raise fail("must be an OCPP action name, e.g. \"StartTransaction\"", "expect")
    direction = raw.get("direction", "out")
    if direction not in ("in", "out"):
        raise fail("must be \"out\" (the station sends the call) or \"in\" (the CSMS sends it)", "direction")
    reply = raw.get("reply", False)
    if not isinstance(reply, bool):
        raise fail("must be true or false", "reply")
    match = raw.get("match", {})
    if not isinstance(match, dict):
        raise fail("must be a table: a subset of the payload", "match")
    capture = raw.get("capture", {})
    if not isinstance(capture, dict) or not all(isinstance(v, str) and v for v in capture.values()):
        raise fail("must be a table of name = \"dotted.path\" into the payload", "capture")
    within = raw.get("within_s", DEFAULT_WITHIN_S)
    if isinstance(within, bool) or not isinstance(within, (int, float)) or not 0 < within <= 3600:
        raise fail("must be a number of seconds, 0 < within_s <= 3600", "within_s")
    absent = raw.get("absent", False)
    if not isinstance(absent, bool):
        raise fail("must be true or false", "absent")
    if absent and (reply or capture):
        raise fail("an absent call has no answer and nothing to capture", "absent")
    next_only = raw.get("next", False)
    if not isinstance(next_only, bool):
        raise fail("must be true or false", "next")
    if next_only and (reply or absent):
        raise fail("next is for a call (the next one must match), not for an answer or an absent call", "next")
    return Step(n, "expect", None, action, direction, reply, match, dict(capture), float(within), absent,
                next_only)


def _action_value(kind: str, value: Any, fail) -> Any:
    if kind in ("plug", "unplug"):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise fail("must be a connector number (1, 2, ...)", kind)
        return value
    if kind == "tap":
        if not isinstance(value, str) or not 0 < len(value) <= 20:
            raise fail("must be an idTag string of 1..20 characters (CiString20Type)", kind)
        return value
    if kind == "fault":
        if not isinstance(value, dict) or "on" not in value or "do" not in value:
            raise fail("must be a fault rule table with at least on and do, e.g. "
                       "{on = \"StartTransaction\", direction = \"out\", do = \"drop\"}", kind)
        return dict(value)
    if kind == "network":
        if not isinstance(value, dict) or not value:
            raise fail(f"must be a table of {', '.join(NETWORK_FIELDS)}", kind)
        for key, item in value.items():
            types = NETWORK_FIELDS.get(key)
            if types is None:
                raise fail(f"unknown network field {key!r} (known: {', '.join(NETWORK_FIELDS)})", f"network.{key}")
            if not isinstance(item, types) or (types is not bool and isinstance(item, bool)):
                raise fail("has the wrong type", f"network.{key}")
        return dict(value)
    if kind == "restart":
        if value not in RESTARTS:
            raise fail("must be \"soft\", \"hard\" or \"power\"", kind)
        return value
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 3600:
        raise fail("must be a number of seconds, 0..3600", kind)
    return float(value)
