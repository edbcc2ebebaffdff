"""The built-in scenarios (TOML files shipped in twin/scenario/library/) and how a name
on the command line becomes a scenario: ``builtin:NAME`` or a file path."""

from __future__ import annotations

from importlib import resources

from twin.scenario.parse import Scenario, ScenarioError, load, parse

PREFIX = "builtin:"


def names() -> list[str]:
    root = resources.files("twin.scenario") / "library"
    return sorted(p.name[:-5] for p in root.iterdir() if p.name.endswith(".toml"))


def builtin(name: str) -> Scenario:
    if name not in names():
        raise ScenarioError(PREFIX + name, f"no built-in scenario {name!r} (twin scenario list shows them)")
    text = (resources.files("twin.scenario") / "library" / f"{name}.toml").read_text(encoding="utf-8")
    return parse(text, PREFIX + name)


def resolve(ref: str) -> Scenario:
    if ref.startswith(PREFIX):
        return builtin(ref[len(PREFIX):])
    return load(ref)


def all_builtins() -> list[Scenario]:
    return [builtin(n) for n in names()]


def csms_sends(scenario: Scenario) -> list[str]:
    """The calls the CSMS under test must send by itself for ``scenario`` to pass (its
    ``direction = "in"`` expectations), in order, once each. A station cannot make a CSMS
    send a call: the CSMS team triggers these (their API, an operator action) while the
    scenario runs, and the tests of the built-ins do it with twin.csms."""
    seen: list[str] = []
    for step in scenario.steps:
        if step.kind == "expect" and step.direction == "in" and not step.absent and step.action not in seen:
            seen.append(step.action)
    return seen


def builtin_csms(scenario: Scenario, **kwargs):
    """A twin.csms.server.Csms (not started) that behaves as ``[scenario.csms]`` asks:
    ``boot_status``, ``heartbeat_interval`` (the BootNotification interval) and
    ``reject_invalid`` (a station call that breaks its 1.6 schema is answered with a
    CALLERROR, as OCPP-J §4.2.3 requires, instead of the default answer)."""
    from twin.csms import Csms, CsmsCallError
    from twin.csms.replies import CP_INITIATED_ACTIONS
    from twin.csms.schemas import schema_problem

    wanted = dict(scenario.csms)
    reject = wanted.pop("reject_invalid", False)
    csms = Csms(**{"heartbeat_interval": 300, **wanted, **kwargs})
    if reject:
        for action in CP_INITIATED_ACTIONS:
            default = csms.handler(action)
            if default is None:
                continue

            def checked(payload, action=action, default=default):
                problem = schema_problem("call", action, payload)
                if problem is not None:
                    raise CsmsCallError("FormationViolation", f"{action} breaks its schema: {problem}"[:250])
                return default(payload)

            csms.on(action, checked)
    return csms
