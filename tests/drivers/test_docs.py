"""hw-docs must match the code: the default [drivers] block, the pin map and the wiring diagram."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

from drivers.config import DEFAULT_PINS
from drivers.registry import KINDS, REAL_BACKEND, _allowed_keys, build_drivers, describe

DOCS = Path(__file__).resolve().parents[2] / "hw-docs"


def default_block() -> dict:
    text = (DOCS / "drivers-config.md").read_text()
    block = text.split("## The default configuration", 1)[1].split("```toml", 1)[1].split("```", 1)[0]
    return tomllib.loads(block)["drivers"]


def as_pins(table: dict) -> dict[int, int]:
    return {int(k): v for k, v in table.items()}


def test_documented_default_block_is_the_code_default():
    cfg = default_block()
    assert set(cfg) == set(KINDS)
    assert as_pins(cfg["relay"]["pins"]) == DEFAULT_PINS["relay"]
    assert as_pins(cfg["relay"]["feedback_pins"]) == DEFAULT_PINS["relay_feedback"]
    assert as_pins(cfg["ev_present"]["pins"]) == DEFAULT_PINS["ev_present"]
    assert as_pins(cfg["pilot"]["pins"]) == DEFAULT_PINS["pilot"]


def test_every_builtin_key_is_documented():
    cfg = default_block()
    text = (DOCS / "drivers-config.md").read_text()
    for kind in KINDS:
        for key in _allowed_keys(kind, REAL_BACKEND[kind]) | {"backend", "strict"}:
            assert key in cfg[kind] or re.search(rf"#\s*{key}\b|`{key}`", text), f"drivers.{kind}.{key} undocumented"


async def test_documented_default_block_builds_all_sim_without_warnings():
    cfg = default_block()
    assert [r.backend for r in describe(cfg, 2)] == ["sim"] * len(KINDS)
    ds = await build_drivers(cfg, 2, power_sources={}, soc_sources={})
    assert ds.warnings == []
    await ds.close()


def test_pin_map_and_wiring_diagram_match_the_defaults():
    pin_map = (DOCS / "pin-map.md").read_text()
    svg = (DOCS / "wiring.svg").read_text()
    header = {5: 29, 6: 31, 23: 16, 24: 18, 17: 11, 27: 13, 12: 32, 13: 33}  # BCM -> physical pin
    rows = {"relay": "contactor relay", "relay_feedback": "contactor aux contact", "ev_present": "EV-present",
            "pilot": "control-pilot PWM"}
    for group, pins in DEFAULT_PINS.items():
        row = next(line for line in pin_map.splitlines() if line.startswith(f"| {rows[group]}"))
        for cid, gpio in pins.items():
            assert f"GPIO{gpio} [{header[gpio]}]" in row
            assert re.search(rf">GPIO{gpio}\s+\[{header[gpio]}\]", svg), f"GPIO{gpio} missing in wiring.svg"
