"""Verdicts for people and for CI: a text summary and a JUnit XML file.

JUnit: one ``<testsuite name="ocpp-twin scenarios">``, one ``<testcase>`` per scenario
(classname ``ocpp_twin.scenario``, name the scenario's), a ``<failure>`` naming the step,
what was expected and what came instead (``<error>`` when the station could not run),
and the frames around it (the last trace records) in ``<system-out>``, one JSON record a
line, so a CI system shows them next to the red test.
"""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path

from twin.scenario.run import Result


def junit_xml(results: list[Result]) -> ET.ElementTree:
    failures = sum(1 for r in results if not r.passed and not r.error)
    errors = sum(1 for r in results if r.error)
    suite = ET.Element("testsuite", name="ocpp-twin scenarios", tests=str(len(results)), failures=str(failures),
                       errors=str(errors), skipped="0", time=f"{sum(r.seconds for r in results):.3f}")
    for r in results:
        case = ET.SubElement(suite, "testcase", classname="ocpp_twin.scenario", name=r.scenario.name,
                             time=f"{r.seconds:.3f}", file=r.scenario.source)
        if not r.passed:
            tag = "error" if r.error else "failure"
            node = ET.SubElement(case, tag, message=_clean(r.message)[:1000],
                                 type="ScenarioError" if r.error else "StepFailed")
            lines = [f"scenario: {r.scenario.name} ({r.scenario.source})", f"chargePointId: {r.charge_point_id}"]
            if r.failed_step is not None:
                lines.append(f"failing step: {r.failed_step.number} ({r.failed_step.describe()})")
            lines += [f"expected: {r.expected}" if r.expected else "", f"instead: {r.instead}" if r.instead else "",
                      f"error: {r.error}" if r.error else ""]
            if r.scenario.csms_behaviour:
                lines.append(f"the CSMS must: {r.scenario.csms_behaviour}")
            node.text = _clean("\n".join(line for line in lines if line))
        out = ET.SubElement(case, "system-out")
        out.text = _clean("\n".join(json.dumps(f, separators=(",", ":"), ensure_ascii=False, default=str)
                                    for f in r.frames))
    tree = ET.ElementTree(suite)
    ET.indent(tree)
    return tree


def write_junit(results: list[Result], path: Path | str) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    junit_xml(results).write(path, encoding="utf-8", xml_declaration=True)


def _clean(text: str) -> str:
    # XML 1.0 (§2.2 Char) cannot carry most control characters, surrogates, U+FFFE or U+FFFF;
    # a garbled or hostile frame may hold them, and a report a CI system cannot parse is no report.
    return "".join(ch if _xml_char(ch) else f"\\x{{{ord(ch):x}}}" for ch in text)


def _xml_char(ch: str) -> bool:
    o = ord(ch)
    return ch in "\t\n\r" or 0x20 <= o <= 0xD7FF or 0xE000 <= o <= 0xFFFD or 0x10000 <= o <= 0x10FFFF


def summary(results: list[Result]) -> str:
    lines = []
    for r in results:
        mark = "PASS" if r.passed else ("ERROR" if r.error else "FAIL")
        lines.append(f"{mark:<5} {r.scenario.name}  ({r.seconds:.1f} s, {r.charge_point_id})")
        if not r.passed:
            lines.append(f"      {r.message}")
            for f in r.frames[-8:]:
                lines.append(f"      {f.get('dir', '?'):>3} {json.dumps(f.get('frame'), separators=(',', ':'))[:160]}")
    passed = sum(r.passed for r in results)
    lines.append(f"{passed}/{len(results)} scenario(s) passed")
    return "\n".join(lines)
