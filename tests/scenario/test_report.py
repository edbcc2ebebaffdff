"""The JUnit report stays parseable whatever the frames around a failure hold."""

from __future__ import annotations

import xml.etree.ElementTree as ET

from twin.scenario.report import _clean


def test_characters_xml_1_0_cannot_carry_are_escaped_and_the_rest_kept():
    hostile = "ok \ud800 \ufffe \uffff \x01 é 🔌"
    element = ET.Element("system-out")
    element.text = _clean(hostile)
    parsed = ET.fromstring(ET.tostring(element, encoding="utf-8"))  # what a CI system does
    assert parsed.text == "ok \\x{d800} \\x{fffe} \\x{ffff} \\x{1} é 🔌"
