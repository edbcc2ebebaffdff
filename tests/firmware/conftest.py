from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.firmware.certs import TlsFiles, make_tls_files
from tests.firmware.servers import FtpServer, HttpServer
from twin.firmware.bundle import build_bundle


@pytest.fixture(scope="session")
def tls(tmp_path_factory: pytest.TempPathFactory) -> TlsFiles:
    return make_tls_files(tmp_path_factory.mktemp("tls"))


@pytest.fixture
def ftp_server(tmp_path: Path) -> Iterator[FtpServer]:
    with FtpServer(tmp_path / "ftp-root") as server:
        yield server


@pytest.fixture
def ftps_server(tmp_path: Path, tls: TlsFiles) -> Iterator[FtpServer]:
    with FtpServer(tmp_path / "ftps-root", tls) as server:
        yield server


@pytest.fixture
def http_server() -> Iterator[HttpServer]:
    with HttpServer() as server:
        yield server


@pytest.fixture
def https_server(tls: TlsFiles) -> Iterator[HttpServer]:
    with HttpServer(tls) as server:
        yield server


@pytest.fixture
def tiny_disk(tmp_path: Path) -> Iterator[Path]:
    """A 256 KiB tmpfs: writing more gives a real ENOSPC. Needs root (CI and the dev
    machines run as root); a normal user's run skips these tests and says why."""
    if os.geteuid() != 0:
        pytest.skip("needs root: mounts a tmpfs for a real ENOSPC; run the suite as root, as CI does")
    mount_point = tmp_path / "tiny-disk"
    mount_point.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mount_point)],
                          capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"the full-disk tests mount a tmpfs and need root: {done.stderr.strip()}")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], check=False)


ROOT = Path(__file__).resolve().parents[2]
STAND_IN_MAIN = Path(__file__).with_name("stand_in_main.py")


def make_source_tree(target: Path, *, broken_import: bool = False) -> Path:
    """A copy of this repository's twin/ and drivers/ with the stand-in entry point
    (tests/firmware/stand_in_main.py) as twin/__main__.py."""
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for package in ("twin", "drivers"):
        shutil.copytree(ROOT / package, target / package, ignore=ignore)
    shutil.copy(STAND_IN_MAIN, target / "twin" / "__main__.py")
    shutil.copy(ROOT / "pyproject.toml", target / "pyproject.toml")
    if broken_import:
        with open(target / "twin" / "__init__.py", "a") as fh:
            fh.write('\nraise RuntimeError("broken build")\n')
    return target


@dataclass(frozen=True)
class Bundles:
    source: Path          # the good source tree (also usable as a "base install" cwd)
    good: dict[str, Path]  # version -> bundle built from the good tree
    broken_import: Path   # version 1.19, whose twin/__init__.py raises


@pytest.fixture(scope="session")
def bundles(tmp_path_factory: pytest.TempPathFactory) -> Bundles:
    root = tmp_path_factory.mktemp("bundles")
    source = make_source_tree(root / "src")
    broken = make_source_tree(root / "src-broken", broken_import=True)
    out = root / "out"
    good = {v: build_bundle(source, v, out) for v in ("1.11", "1.12", "1.13")}
    return Bundles(source, good, build_bundle(broken, "1.19", out))


def paused_python(directory: Path, name: str) -> tuple[str, Path, Path]:
    """A "python" for the import test that says when it starts and waits for a go file:
    the test decides what happens while an install is in its import test."""
    started, go = directory / f"{name}.started", directory / f"{name}.go"
    script = directory / f"{name}.sh"
    script.write_text(f"#!/bin/sh\ntouch '{started}'\n"
                      f"i=0; while [ ! -e '{go}' ] && [ $i -lt 600 ]; do sleep 0.05; i=$((i+1)); done\n"
                      f"exec '{sys.executable}' \"$@\"\n")
    script.chmod(0o755)
    return str(script), started, go


def wait_for(path: Path) -> None:
    deadline = time.monotonic() + 30
    while not path.exists():
        assert time.monotonic() < deadline, f"{path.name} never appeared"
        time.sleep(0.02)


def staging_dirs(data_dir: Path) -> list[str]:
    return sorted(p.name for p in (data_dir / "firmware" / "slots").iterdir() if p.name.startswith(".staging-"))
