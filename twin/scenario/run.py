"""Running a scenario: start the station, do its steps in order, and end in a verdict.

Expectations look at the frames seen after the previous step: an action step (plug, tap,
restart, wait_s, ...) moves the cursor to where the trace was when it began, so what the
action caused counts; an expectation that matched moves it just past the CALL it matched
(for ``reply = true``: the call that was answered), so the next expectation may match a
frame that came right after, even in the same read. ``reply = true`` right after an
expectation of the same call waits for the answer to *that* call and fails at once when
that answer is wrong; without one before it, any answer to such a call after the cursor.
``next = true`` takes the first such call after the cursor: one that does not match fails
the step at once (a status sequence: DownloadFailed where Downloaded was due).

Frames a fault or network impairment kept from the other side (``do = "drop"``,
``lost``) are in the report but match nothing: the CSMS never saw them.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from twin.csms.matching import subset_match
from twin.scenario.parse import Scenario, Step
from twin.scenario.station import ScenarioStation

CONTEXT_FRAMES = 20
_REF = re.compile(r"^\$\{([A-Za-z_][A-Za-z0-9_]*)\}$")


class StepFailed(Exception):
    def __init__(self, expected: str, instead: str):
        super().__init__(f"expected {expected}; {instead}")
        self.expected, self.instead = expected, instead


@dataclass
class Result:
    scenario: Scenario
    passed: bool
    seconds: float
    charge_point_id: str
    failed_step: Step | None = None
    expected: str = ""
    instead: str = ""
    error: str = ""  # the station or the scenario could not run (not a verdict on the CSMS)
    frames: list[dict] = field(default_factory=list)  # the frames around the failure (or the last ones)
    steps_done: int = 0

    @property
    def message(self) -> str:
        if self.passed:
            return "passed"
        if self.error:
            return f"error: {self.error}"
        where = f"step {self.failed_step.number}" if self.failed_step else "setup"
        return f"{where}: expected {self.expected}; {self.instead}"


def default_id() -> str:
    return "TWIN-SCN-" + uuid.uuid4().hex[:8].upper()


async def run_scenario(scenario: Scenario, csms_url: str, charge_point_id: str | None = None, *,
                       data_dir: Path | None = None) -> Result:
    cp_id = charge_point_id or default_id()
    started = time.monotonic()
    with contextlib.ExitStack() as stack:
        if data_dir is None:
            data_dir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="twin-scenario-")))
        station = ScenarioStation(csms_url, cp_id, data_dir, scenario.keys, scenario.connectors)
        result = Result(scenario, False, 0.0, cp_id)
        runner = _Runner(station)
        try:
            await station.start()
            for step in scenario.steps:
                result.failed_step = step
                await runner.step(step)
                result.steps_done += 1
            result.passed, result.failed_step = True, None
        except StepFailed as e:
            result.expected, result.instead = e.expected, e.instead
        except Exception as e:  # noqa: BLE001 - a station that cannot run is an error, reported as one
            result.error = f"{type(e).__name__}: {e}"
            if result.failed_step is not None:
                result.expected = result.failed_step.describe()
        finally:
            await station.stop()
        result.seconds = time.monotonic() - started
        result.frames = runner.context(result.passed)
        return result


class _Runner:
    def __init__(self, station: ScenarioStation):
        self.station = station
        self.cursor = 0
        self.captured: dict[str, Any] = {}
        self.last_call: tuple[str, str, str, int] | None = None  # (action, direction, uid, index) of the last match
        self.focus: int | None = None  # where the failure was looked for

    def context(self, passed: bool) -> list[dict]:
        frames = self.station.frames
        if passed or self.focus is None:
            return frames[-CONTEXT_FRAMES:]
        # Up to the failure: the frame that was wrong, or the last one before the time ran out.
        end = min(self.focus, len(frames))
        return frames[max(0, end - CONTEXT_FRAMES):end]

    async def step(self, step: Step) -> None:
        if step.kind != "expect":
            self.station.collect()
            self.cursor = len(self.station.frames)
            await self.station.do(step.kind, step.value)
            return
        self.focus = self.cursor
        deadline = time.monotonic() + step.within_s
        if step.absent:
            await self._absent(step, deadline)
            return
        bound = self._bound_call(step)
        while True:
            self.station.collect()
            hit = self._find(step, bound)
            if hit is not None:
                call_index = hit
                self.cursor = call_index + 1
                return
            left = deadline - time.monotonic()
            if left <= 0:
                raise StepFailed(step.describe(), self._instead(step, bound))
            await self.station.wait_change(min(left, 0.25))

    async def _absent(self, step: Step, deadline: float) -> None:
        """``absent = true``: the whole window passes without a matching call. The frames seen
        meanwhile stay for the next expectation (the cursor does not move)."""
        want = _resolve(step.match, self.captured, step)
        while True:
            self.station.collect()
            for rec in self.station.frames[self.cursor:]:
                call = _call(rec)
                if (call and _on_wire(rec) and rec["dir"] == step.direction and call[1] == step.action
                        and subset_match(want, call[2])):
                    self.focus = rec["i"] + 1
                    raise StepFailed(step.describe(), f"it came: {rec['dir']} {_short(rec['frame'])}")
            left = deadline - time.monotonic()
            if left <= 0:
                return
            await self.station.wait_change(min(left, 0.25))

    def _bound_call(self, step: Step) -> tuple[str, int] | None:
        last = self.last_call
        if step.reply and last is not None and last[0] == step.action and last[1] == step.direction:
            return last[2], last[3]
        return None

    # ------------------------------------------------------------------ matching
    def _find(self, step: Step, bound: tuple[str, int] | None) -> int | None:
        """The index of the CALL this step matched (for replies: the call answered), or None."""
        frames = self.station.frames
        want = _resolve(step.match, self.captured, step)
        if not step.reply:
            for rec in frames[self.cursor:]:
                call = _call(rec)
                if not call or rec["dir"] != step.direction or call[1] != step.action:
                    continue
                if subset_match(want, call[2]):
                    try:
                        self._capture(step, call[2], rec)
                    except KeyError:
                        if step.next_only:
                            self.focus = rec["i"] + 1
                            raise StepFailed(step.describe(), f"it came without {sorted(step.capture.values())}: "
                                                              f"{rec['dir']} {_short(rec['frame'])}") from None
                        continue  # a capture names a field this call lacks: not the call wanted
                    self.last_call = (step.action, step.direction, call[0], rec["i"])
                    return rec["i"]
                if step.next_only:  # a status sequence: the next one is wrong, no need to wait for the time
                    self.focus = rec["i"] + 1
                    raise StepFailed(step.describe(), f"instead: {rec['dir']} {_short(rec['frame'])}")
            return None
        answer_dir = "in" if step.direction == "out" else "out"
        calls = _calls_by_id(frames, step.direction, step.action)
        start = bound[1] + 1 if bound else self.cursor
        for rec in frames[start:]:
            frame = rec["frame"]
            if rec["dir"] != answer_dir or not _on_wire(rec) or not isinstance(frame, list) or len(frame) < 3:
                continue
            if frame[0] not in (3, 4) or not isinstance(frame[1], str):
                continue
            call_rec = calls.get(frame[1])
            if call_rec is None or (bound and frame[1] != bound[0]):
                continue
            problem = _answer_problem(step, frame, want)
            if problem is None:
                self._capture(step, frame[2], rec)
                self.last_call = None
                return call_rec["i"]
            if bound:  # the answer to that very call came, and it is wrong: fail now
                self.focus = rec["i"] + 1
                raise StepFailed(step.describe(), f"the answer was {_short(frame)} ({problem})")
        return None

    def _capture(self, step: Step, payload: Any, rec: dict) -> None:
        # All or nothing: a candidate that lacks one path must leave no value behind.
        values = {name: _path(payload, path) for name, path in step.capture.items()}
        self.captured.update(values)

    def _instead(self, step: Step, bound: tuple[str, int] | None) -> str:
        frames = self.station.frames[self.cursor:]
        self.focus = len(self.station.frames)
        if bound:
            return f"no answer to that {step.action} ({bound[0]}) came within {step.within_s:g} s"
        related = [r for r in frames if _action_of(r, self.station.frames) == step.action]
        if related:
            shown = "; ".join(f"{r['dir']} {_short(r['frame'])}" + ("" if _on_wire(r) else " (not on the wire)")
                              for r in related[-3:])
            return f"instead: {shown}"
        seen = sorted({a for r in frames if (a := _action_of(r, self.station.frames))})
        link = getattr(self.station.rt, "link", None)
        why = f"; the link: {link.last_error}" if link is not None and link.last_error and not seen else ""
        return (f"no {step.action} frame at all within {step.within_s:g} s"
                + (f" (seen: {', '.join(seen)})" if seen else " (no frames at all)") + why)


def _on_wire(rec: dict) -> bool:
    return not rec.get("lost") and rec.get("do") != "drop"


def _call(rec: dict) -> tuple[str, str, Any] | None:
    frame = rec.get("frame")
    if (_on_wire(rec) and isinstance(frame, list) and len(frame) == 4 and frame[0] == 2
            and isinstance(frame[1], str) and isinstance(frame[2], str)):
        return frame[1], frame[2], frame[3]
    return None


def _calls_by_id(frames: list[dict], direction: str, action: str) -> dict[str, dict]:
    out = {}
    for rec in frames:
        call = _call(rec)
        if call and rec["dir"] == direction and call[1] == action:
            out[call[0]] = rec
    return out


def _action_of(rec: dict, frames: list[dict]) -> str | None:
    frame = rec.get("frame")
    if not isinstance(frame, list) or len(frame) < 3:
        return None
    if frame[0] == 2:
        return frame[2] if isinstance(frame[2], str) else None
    other = "in" if rec["dir"] == "out" else "out"
    for prev in reversed(frames[:rec["i"]]):
        call = _call(prev)
        if call and prev["dir"] == other and call[0] == frame[1]:
            return call[1]
    return None


def _answer_problem(step: Step, frame: list, want: Any) -> str | None:
    from twin.csms.schemas import schema_problem

    if frame[0] == 4:
        return f"CALLERROR {frame[2] if len(frame) > 2 else '?'}"
    payload = frame[2]
    problem = schema_problem("result", step.action, payload)
    if problem is not None:
        return f"{step.action}.conf breaks the OCPP 1.6 schema: {problem}"
    if not subset_match(want, payload):
        return f"does not match {want}"
    for name, path in step.capture.items():
        try:
            _path(payload, path)
        except KeyError:
            return f"has no {path} (capture {name})"
    return None


def _path(payload: Any, path: str) -> Any:
    value = payload
    for part in path.split("."):
        if isinstance(value, list) and part.isdigit() and int(part) < len(value):
            value = value[int(part)]
        elif isinstance(value, dict) and part in value:
            value = value[part]
        else:
            raise KeyError(path)
    return value


def _resolve(pattern: Any, captured: dict[str, Any], step: Step) -> Any:
    """``"${name}"`` in a match stands for a value an earlier step captured."""
    if isinstance(pattern, dict):
        return {k: _resolve(v, captured, step) for k, v in pattern.items()}
    if isinstance(pattern, list):
        return [_resolve(v, captured, step) for v in pattern]
    if isinstance(pattern, str) and (m := _REF.match(pattern)):
        if m.group(1) not in captured:
            raise StepFailed(step.describe(), f"nothing was captured as {m.group(1)!r} before this step")
        return captured[m.group(1)]
    return pattern


def _short(frame: Any, limit: int = 300) -> str:
    import json

    text = frame if isinstance(frame, str) else json.dumps(frame, separators=(",", ":"))
    return text if len(text) <= limit else text[:limit] + "..."


async def run_all(scenarios: list[Scenario], csms_url: str, charge_point_id: str | None = None) -> list[Result]:
    results = []
    for scenario in scenarios:
        results.append(await run_scenario(scenario, csms_url, charge_point_id))
        await asyncio.sleep(0)
    return results
