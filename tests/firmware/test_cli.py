"""`twin firmware ...` through the argparse glue the twin CLI uses."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

import twin
from tests.firmware.conftest import Bundles
from twin.firmware.bundle import bump_version, verify_bundle
from twin.firmware.cli import add_firmware_subcommands, run_firmware_command


def run(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="twin")
    add_firmware_subcommands(parser.add_subparsers(dest="command"))
    return run_firmware_command(parser.parse_args(argv))


def test_build_defaults_to_the_bumped_version(bundles: Bundles, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert run(["firmware", "build", "--source", str(bundles.source), "--out", str(tmp_path)]) == 0
    path = Path(capsys.readouterr().out.strip())
    assert verify_bundle(path).version == bump_version(twin.__version__)


def test_verify_install_status(bundles: Bundles, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert run(["firmware", "verify", str(bundles.good["1.12"])]) == 0
    assert json.loads(capsys.readouterr().out)["version"] == "1.12"
    assert run(["firmware", "install", str(bundles.good["1.12"]), "--data-dir", str(tmp_path)]) == 0
    capsys.readouterr()
    assert run(["firmware", "status", "--data-dir", str(tmp_path)]) == 0
    status = json.loads(capsys.readouterr().out)
    assert (status["active"], status["trial"], status["installed_slots"]) == ("1.12", "1.12", ["1.12"])


def test_errors_are_messages(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    junk = tmp_path / "junk.tar.gz"
    junk.write_bytes(b"junk")
    assert run(["firmware", "verify", str(junk)]) == 1
    assert "twin firmware verify: junk.tar.gz: not a firmware bundle" in capsys.readouterr().err
    assert run(["firmware", "build", "--version", "x", "--source", str(tmp_path), "--out", str(tmp_path)]) == 1


def test_the_twin_cli_reaches_these_commands(bundles: Bundles, capsys: pytest.CaptureFixture) -> None:
    from twin.cli import main

    assert main(["firmware", "verify", str(bundles.good["1.13"])]) == 0
    assert json.loads(capsys.readouterr().out)["version"] == "1.13"
