"""Reading systemd unit files and running systemd-analyze on them, for the tests."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
UNIT = REPO / "systemd" / "ocpp-twin.service"
UNIT_NAME = "ocpp-twin.service"
# Stock units that `verify` resolves default dependencies (sysinit.target, ...) against.
HOST_UNITS = Path("/usr/lib/systemd/system")


def parse_unit(text: str) -> dict[str, dict[str, list[str]]]:
    """{section: {key: [values in order]}}; systemd allows a key more than once."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] | None = None
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], {})
            continue
        assert current is not None, f"assignment outside a section: {raw!r}"
        key, sep, value = line.partition("=")
        assert sep, f"not KEY=value: {raw!r}"
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


def exec_start_binary(unit_text: str) -> str:
    return parse_unit(unit_text)["Service"]["ExecStart"][-1].split()[0].lstrip("@-:+!")


def verify_in_root(unit_text: str, root: Path) -> subprocess.CompletedProcess[str]:
    """`systemd-analyze verify --man=no` on the unit, installed under a throwaway --root.

    verify checks that ExecStart's binary exists and is executable, and resolves the
    unit's default dependencies; --root points both at ``root`` instead of the host:
    the stock units are copied in, and an executable stands at the ExecStart path.
    Nothing is run; systemd only stats the binary.
    """
    units = root / "usr/lib/systemd/system"
    if not units.exists():
        units.parent.mkdir(parents=True, exist_ok=True)
        shutil.copytree(HOST_UNITS, units, symlinks=True)
    binary = root / exec_start_binary(unit_text).lstrip("/")
    binary.parent.mkdir(parents=True, exist_ok=True)
    binary.write_text("#!/bin/sh\nexit 0\n")
    binary.chmod(0o755)
    target = root / "etc/systemd/system" / UNIT_NAME
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(unit_text)
    return subprocess.run(["systemd-analyze", "verify", "--man=no", f"--root={root}", UNIT_NAME],
                          capture_output=True, text=True, timeout=60, check=False)


def security(unit_path: Path, threshold: int = 20) -> subprocess.CompletedProcess[str]:
    """`systemd-analyze security --offline=true`; --threshold is exposure x 10 (0..100)."""
    if unit_path.suffix != ".service":
        raise ValueError(f"{unit_path} must be named *.service for systemd-analyze")
    return subprocess.run(["systemd-analyze", "security", "--offline=true", f"--threshold={threshold}",
                           "--no-pager", str(unit_path)], capture_output=True, text=True, timeout=60, check=False)
