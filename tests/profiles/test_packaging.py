"""The profile files ship in the wheel, and the default profile loads from an installed
copy (not only from a source checkout)."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # builds a wheel with pip

REPO = Path(__file__).resolve().parents[2]


def _pip(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "pip", "--disable-pip-version-check", "-q", *args], check=True,
                   capture_output=True, text=True)


def test_the_wheel_carries_the_profiles_and_the_installed_copy_loads_them(tmp_path):
    # Build from a copy: pip builds in the tree and would leave build/ in the checkout.
    tree = tmp_path / "tree"
    tree.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, tree / name)
    for package in ("twin", "drivers"):
        shutil.copytree(REPO / package, tree / package, ignore=shutil.ignore_patterns("__pycache__"))
    _pip("wheel", "--no-deps", str(tree), "-w", str(tmp_path / "dist"))
    (wheel,) = (tmp_path / "dist").glob("ocpp_twin-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert {"twin/profiles/iEVQC33.toml", "twin/profiles/examples/generic-ac-1c.toml"} <= names

    target = tmp_path / "site"
    _pip("install", "--no-deps", "--target", str(target), str(wheel))
    # -I: neither the cwd nor PYTHONPATH, so only the installed copy can be imported.
    code = (f"import sys; sys.path.insert(0, {str(target)!r}); "
            "from twin.profiles import load_profile; p = load_profile(); "
            "print(p.source); print(p.identity['chargePointModel'], p.connectors)")
    out = subprocess.run([sys.executable, "-I", "-c", code], check=True, capture_output=True, text=True).stdout
    source, summary = out.splitlines()
    assert Path(source).is_relative_to(target)
    assert summary == "iEVQC33 2"
