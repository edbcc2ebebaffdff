"""Scenarios with verdicts: TOML files of steps a station does and frames it expects
(twin.scenario.parse), run against a CSMS by an in-process station (twin.scenario.run),
reported as text or JUnit XML (twin.scenario.report); a built-in library
(twin.scenario.library). ``twin scenario`` is the command (twin.scenario.cli)."""

from twin.scenario.parse import Scenario, ScenarioError, Step, load, parse

__all__ = ["Scenario", "ScenarioError", "Step", "load", "parse"]
