"""Bundles: what build_bundle makes, and everything verify_bundle must refuse."""

from __future__ import annotations

import hashlib
import io
import json
import os
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

from tests.firmware.conftest import Bundles
from twin.firmware.bundle import BundleError, Manifest, build_bundle, bump_version, unpack_bundle, verify_bundle


def read_members(bundle: Path) -> dict[str, bytes]:
    with tarfile.open(bundle, "r:gz") as tar:
        return {m.name: tar.extractfile(m).read() for m in tar}  # type: ignore[union-attr]


def write_bundle(path: Path, members: dict[str, bytes]) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def with_manifest(members: dict[str, bytes], **changes: object) -> dict[str, bytes]:
    manifest = json.loads(members["manifest.json"])
    manifest.update(changes)
    return {**members, "manifest.json": json.dumps(manifest).encode()}


def test_build_and_verify(bundles: Bundles) -> None:
    bundle = bundles.good["1.11"]
    assert bundle.name == "ocpp-twin-1.11.tar.gz"
    manifest = verify_bundle(bundle)
    assert (manifest.name, manifest.version, manifest.format) == ("ocpp-twin", "1.11", 1)
    assert manifest.wheel == "ocpp_twin-1.11-py3-none-any.whl"
    members = read_members(bundle)
    assert sorted(members) == ["manifest.json", manifest.wheel]
    assert manifest.sha256 == {manifest.wheel: hashlib.sha256(members[manifest.wheel]).hexdigest()}
    with zipfile.ZipFile(io.BytesIO(members[manifest.wheel])) as wheel:
        names = set(wheel.namelist())
        assert '__version__ = "1.11"' in wheel.read("twin/__init__.py").decode()
        metadata = wheel.read("ocpp_twin-1.11.dist-info/METADATA").decode()
    assert {"twin/__main__.py", "twin/firmware/bundle.py", "drivers/__init__.py", "drivers/base.py"} <= names
    assert not any("__pycache__" in n or n.endswith(".pyc") for n in names)
    assert "Version: 1.11" in metadata and "Requires-Dist: ocpp" in metadata


def test_two_builds_have_identical_wheels(bundles: Bundles, tmp_path: Path) -> None:
    again = build_bundle(bundles.source, "1.11", tmp_path)
    assert verify_bundle(again).sha256 == verify_bundle(bundles.good["1.11"]).sha256


def test_the_wheel_is_one_pip_installs(bundles: Bundles, tmp_path: Path) -> None:
    wheel_name = verify_bundle(bundles.good["1.12"]).wheel
    wheel = tmp_path / wheel_name
    wheel.write_bytes(read_members(bundles.good["1.12"])[wheel_name])
    done = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-index", "--quiet",
                           "--target", str(tmp_path / "site"), str(wheel)], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    assert '__version__ = "1.12"' in (tmp_path / "site" / "twin" / "__init__.py").read_text()


def test_unpack(bundles: Bundles, tmp_path: Path) -> None:
    manifest = unpack_bundle(bundles.good["1.11"], tmp_path / "slot")
    assert isinstance(manifest, Manifest)
    assert '__version__ = "1.11"' in (tmp_path / "slot" / "twin" / "__init__.py").read_text()
    assert (tmp_path / "slot" / "ocpp_twin-1.11.dist-info" / "RECORD").is_file()


def test_bump_version() -> None:
    assert bump_version("1.10") == "1.11"
    assert bump_version("2.0.9") == "2.0.10"
    with pytest.raises(ValueError, match="not dotted numbers"):
        bump_version("1.x")


def test_build_refuses_bad_input(bundles: Bundles, tmp_path: Path) -> None:
    with pytest.raises(BundleError, match="not dotted numbers"):
        build_bundle(bundles.source, "1.11-beta", tmp_path)
    with pytest.raises(BundleError, match="has no twin/ package"):
        build_bundle(tmp_path, "1.11", tmp_path)


# -- what verify_bundle refuses --------------------------------------------------------------


def test_random_bytes(tmp_path: Path) -> None:
    path = tmp_path / "download_fail.fwi"
    path.write_bytes(os.urandom(4096))
    with pytest.raises(BundleError, match="not a firmware bundle"):
        verify_bundle(path)


def test_empty_and_missing(tmp_path: Path) -> None:
    (tmp_path / "empty").write_bytes(b"")
    with pytest.raises(BundleError, match="empty"):
        verify_bundle(tmp_path / "empty")
    with pytest.raises(BundleError, match="cannot read firmware file"):
        verify_bundle(tmp_path / "missing")


def test_truncated(bundles: Bundles, tmp_path: Path) -> None:
    data = bundles.good["1.11"].read_bytes()
    path = tmp_path / "cut.tar.gz"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(BundleError, match="not a firmware bundle"):
        verify_bundle(path)


def test_foreign_tarball_without_manifest(tmp_path: Path) -> None:
    path = write_bundle(tmp_path / "other.tar.gz", {"README": b"some other product"})
    with pytest.raises(BundleError, match="no manifest.json"):
        verify_bundle(path)


def test_other_product_and_format(bundles: Bundles, tmp_path: Path) -> None:
    members = read_members(bundles.good["1.11"])
    with pytest.raises(BundleError, match="bundle is for 'other-charger'"):
        verify_bundle(write_bundle(tmp_path / "a.tar.gz", with_manifest(members, name="other-charger")))
    with pytest.raises(BundleError, match="unsupported bundle format 2"):
        verify_bundle(write_bundle(tmp_path / "b.tar.gz", with_manifest(members, format=2)))
    with pytest.raises(BundleError, match="not valid JSON"):
        verify_bundle(write_bundle(tmp_path / "c.tar.gz", {**members, "manifest.json": b"{nope"}))


def test_tampered_wheel_fails_the_checksum(bundles: Bundles, tmp_path: Path) -> None:
    members = read_members(bundles.good["1.11"])
    wheel_name = json.loads(members["manifest.json"])["wheel"]
    wheel = bytearray(members[wheel_name])
    wheel[len(wheel) // 2] ^= 0xFF
    with pytest.raises(BundleError, match=f"checksum mismatch for {wheel_name}"):
        verify_bundle(write_bundle(tmp_path / "t.tar.gz", {**members, wheel_name: bytes(wheel)}))


def test_tampered_file_inside_the_wheel_fails_the_record(bundles: Bundles, tmp_path: Path) -> None:
    # Whoever changes a module and re-signs the manifest still trips the wheel's RECORD.
    members = read_members(bundles.good["1.11"])
    wheel_name = json.loads(members["manifest.json"])["wheel"]
    source = zipfile.ZipFile(io.BytesIO(members[wheel_name]))
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as out:
        for info in source.infolist():
            data = source.read(info)
            if info.filename == "twin/firmware/slots.py":
                data += b"\nimport os; os.system('evil')\n"
            out.writestr(info, data)
    evil = buf.getvalue()
    tampered = with_manifest({**members, wheel_name: evil}, sha256={wheel_name: hashlib.sha256(evil).hexdigest()})
    with pytest.raises(BundleError, match="twin/firmware/slots.py does not match the wheel's RECORD"):
        verify_bundle(write_bundle(tmp_path / "t.tar.gz", tampered))


def test_manifest_version_must_match_the_wheel(bundles: Bundles, tmp_path: Path) -> None:
    members = read_members(bundles.good["1.11"])
    with pytest.raises(BundleError, match="no ocpp_twin-1.12.dist-info/RECORD"):
        verify_bundle(write_bundle(tmp_path / "v.tar.gz", with_manifest(members, version="1.12")))


def test_extra_or_unsafe_members(bundles: Bundles, tmp_path: Path) -> None:
    members = read_members(bundles.good["1.11"])
    with pytest.raises(BundleError, match="do not match the manifest"):
        verify_bundle(write_bundle(tmp_path / "x.tar.gz", {**members, "extra.sh": b"#!/bin/sh\n"}))
    with pytest.raises(BundleError, match="unexpected member '../evil'"):
        verify_bundle(write_bundle(tmp_path / "y.tar.gz", {**members, "../evil": b"x"}))


def bundle_with_wheel(path: Path, wheel: bytes, version: str = "1.11") -> Path:
    wheel_name = f"ocpp_twin-{version}-py3-none-any.whl"
    manifest = {"format": 1, "name": "ocpp-twin", "version": version, "wheel": wheel_name,
                "sha256": {wheel_name: hashlib.sha256(wheel).hexdigest()}, "created": "2026-12-01T00:00:00Z"}
    return write_bundle(path, {"manifest.json": json.dumps(manifest).encode(), wheel_name: wheel})


def zip_of_zeros(sizes: dict[str, int]) -> bytes:
    """A zip whose members are runs of zero bytes: deflate shrinks them about 1000:1."""
    buf = io.BytesIO()
    chunk = bytes(1024 * 1024)
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, size in sizes.items():
            info = zipfile.ZipInfo(name)
            info.compress_type = zipfile.ZIP_DEFLATED
            with zf.open(info, "w", force_zip64=True) as member:
                for _ in range(size // len(chunk)):
                    member.write(chunk)
    return buf.getvalue()


def test_zip_bomb_in_the_wheel_is_refused_before_it_is_inflated(tmp_path: Path) -> None:
    mib = 1024 * 1024
    wheel = zip_of_zeros({"twin/__init__.py": 0, "twin/huge.bin": 200 * mib})
    assert len(wheel) < mib  # a small download...
    bundle = bundle_with_wheel(tmp_path / "bomb.tar.gz", wheel)
    with pytest.raises(BundleError, match=rf"twin/huge.bin inflates to {200 * mib} bytes, over the 16 MiB"):
        verify_bundle(bundle)  # ...that would inflate to 200 MiB in memory
    with pytest.raises(BundleError, match="inflates to"):
        unpack_bundle(bundle, tmp_path / "slot")
    assert not (tmp_path / "slot").exists()
    # Many files each under the per-file limit: the total is bounded too.
    many = bundle_with_wheel(tmp_path / "many.tar.gz", zip_of_zeros({f"twin/f{i}.bin": 15 * mib for i in range(5)}))
    with pytest.raises(BundleError, match="the wheel inflates to more than 64 MiB"):
        verify_bundle(many)


def test_gzip_bomb_in_the_bundle_is_refused(tmp_path: Path) -> None:
    # Each tar member is under the per-member limit; together they are not.
    zeros = bytes(40 * 1024 * 1024)
    bundle = write_bundle(tmp_path / "bomb.tar.gz", {"manifest.json": zeros, "ocpp_twin-1.11-py3-none-any.whl": zeros})
    assert bundle.stat().st_size < 1024 * 1024
    with pytest.raises(BundleError, match="too large or too many members"):
        verify_bundle(bundle)
