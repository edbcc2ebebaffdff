"""Firmware release bundles: build one from a source tree, verify one before installing it.

A bundle is a gzip-compressed tar archive (``ocpp-twin-<version>.tar.gz``; the file
name does not matter, the content is checked) holding exactly two regular files:

* ``manifest.json`` -- ``{"format": 1, "name": "ocpp-twin", "version": "1.11",
  "wheel": "ocpp_twin-1.11-py3-none-any.whl", "sha256": {"<file>": "<hex>"},
  "created": "<UTC ISO 8601>"}``
* the wheel it names: a pure-Python wheel (PEP 427) of the ``twin`` and ``drivers``
  packages whose ``twin/__init__.py`` carries ``__version__ = "<version>"``.

The wheel is written here with :mod:`zipfile` (a wheel is a zip with
``*.dist-info/{METADATA,WHEEL,RECORD}``), so building a release needs neither a build
backend nor the network, and it is an ordinary wheel ``pip`` can install too.

OCPP 1.6 leaves the firmware format to the vendor (section 5.19); what it does ask is
that a file that is not valid firmware ends in FirmwareStatusNotification
InstallationFailed with the running firmware untouched (TC_044_3). So
:func:`verify_bundle` rejects, with a :class:`BundleError` that says why: a file that is
not a gzip tar, a truncated one, a foreign one (no manifest, another product name,
unknown format), a tampered one (checksum mismatch in the manifest or in the wheel's
RECORD), and a wheel whose ``twin.__version__`` is not the manifest's version.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import re
import tarfile
import tomllib
import zipfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path, PurePosixPath
from typing import Any

__all__ = [
    "BUNDLE_FORMAT",
    "MANIFEST_NAME",
    "PRODUCT_NAME",
    "BundleError",
    "Manifest",
    "add_firmware_subcommands",
    "build_bundle",
    "bump_version",
    "bundle_file_name",
    "run_firmware_command",
    "unpack_bundle",
    "verify_bundle",
]

BUNDLE_FORMAT = 1
PRODUCT_NAME = "ocpp-twin"
MANIFEST_NAME = "manifest.json"
#: The packages a bundle carries; both must exist in the source tree.
PACKAGES = ("twin", "drivers")

_DIST = "ocpp_twin"  # the distribution name normalised for file names (PEP 427)
_VERSION_RE = re.compile(r"^\d+(\.\d+){0,3}$")
_VERSION_LINE_RE = re.compile(r'^__version__\s*=\s*["\']([^"\']*)["\']\s*$', re.MULTILINE)
# Fixed zip timestamps make two builds of the same tree byte-identical wheels.
_ZIP_EPOCH = (1980, 1, 1, 0, 0, 0)
# Refuse absurd sizes before reading anything into memory (a bundle is a few hundred kB,
# its largest source file some tens of kB). The limits hold for what the archive says a
# member *decompresses* to, and the readers never take more than that (a zip or gzip
# bomb is a small file with a huge declared or actual inflated size).
_MAX_MEMBER_BYTES = 64 * 1024 * 1024         # one tar member
_MAX_BUNDLE_BYTES = 64 * 1024 * 1024         # all tar members together
_MAX_WHEEL_FILE_BYTES = 16 * 1024 * 1024     # one file inside the wheel
_MAX_WHEEL_TOTAL_BYTES = 64 * 1024 * 1024    # all files of the wheel together
_MAX_WHEEL_FILES = 5000
_SKIP_DIRS = {"__pycache__", ".pytest_cache", ".mypy_cache"}
_SKIP_SUFFIXES = {".pyc", ".pyo", ".swp"}


class BundleError(Exception):
    """The file is not a valid ocpp-twin firmware bundle; the message says why."""


@dataclass(frozen=True)
class Manifest:
    format: int
    name: str
    version: str
    wheel: str
    sha256: dict[str, str]
    created: str

    def to_json(self) -> str:
        return json.dumps({"format": self.format, "name": self.name, "version": self.version,
                           "wheel": self.wheel, "sha256": self.sha256, "created": self.created},
                          indent=2, sort_keys=True) + "\n"


def bump_version(version: str) -> str:
    """``"1.10"`` -> ``"1.11"``: the last numeric component plus one."""
    if not _VERSION_RE.match(version):
        raise ValueError(f"version {version!r} is not dotted numbers like 1.10")
    parts = version.split(".")
    parts[-1] = str(int(parts[-1]) + 1)
    return ".".join(parts)


def bundle_file_name(version: str) -> str:
    return f"{PRODUCT_NAME}-{version}.tar.gz"


# -- building ---------------------------------------------------------------------------


def build_bundle(source_root: Path, version: str, out: Path, *, now: datetime | None = None) -> Path:
    """Build ``out/ocpp-twin-<version>.tar.gz`` from ``source_root`` (the directory that
    holds ``twin/`` and ``drivers/``); ``out`` may also be the bundle's file path.

    ``now`` only fills the manifest's ``created`` field (default: the current UTC time;
    this is a CLI-side function, not core logic).
    """
    source_root = Path(source_root)
    if not _VERSION_RE.match(version):
        raise BundleError(f"version {version!r} is not dotted numbers like 1.11")
    for package in PACKAGES:
        if not (source_root / package).is_dir():
            raise BundleError(f"{source_root} has no {package}/ package; "
                              "give the directory that holds twin/ and drivers/")
    if not (source_root / "twin" / "__init__.py").is_file():
        raise BundleError(f"{source_root / 'twin' / '__init__.py'} is missing")

    wheel_name = f"{_DIST}-{version}-py3-none-any.whl"
    wheel = _build_wheel(source_root, version)
    when = (now or datetime.now(timezone.utc)).astimezone(timezone.utc)
    created = when.strftime("%Y-%m-%dT%H:%M:%SZ")
    manifest = Manifest(BUNDLE_FORMAT, PRODUCT_NAME, version, wheel_name,
                        {wheel_name: hashlib.sha256(wheel).hexdigest()}, created)

    out = Path(out)
    target = out if out.name.endswith(".tar.gz") else out / bundle_file_name(version)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(target.name + ".tmp")
    with tarfile.open(tmp, "w:gz") as tar:
        for name, data in ((MANIFEST_NAME, manifest.to_json().encode()), (wheel_name, wheel)):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode, info.mtime = 0o644, int(when.timestamp())
            tar.addfile(info, io.BytesIO(data))
    tmp.replace(target)
    return target


def _source_files(source_root: Path) -> Iterator[tuple[str, Path]]:
    for package in PACKAGES:
        for path in sorted((source_root / package).rglob("*")):
            rel = path.relative_to(source_root)
            if not path.is_file() or _SKIP_DIRS.intersection(rel.parts) or path.suffix in _SKIP_SUFFIXES:
                continue
            yield rel.as_posix(), path


def _set_version(init_source: str, version: str) -> str:
    new, count = _VERSION_LINE_RE.subn(f'__version__ = "{version}"', init_source, count=1)
    if count != 1:
        raise BundleError("twin/__init__.py has no __version__ = \"...\" line to set")
    return new


def _record_hash(data: bytes) -> str:
    # PEP 376/427 RECORD: urlsafe base64 without padding.
    return "sha256=" + base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()


def _metadata(source_root: Path, version: str) -> tuple[str, str]:
    """METADATA and entry_points.txt, taken from pyproject.toml when it is there."""
    project: dict = {}
    pyproject = source_root / "pyproject.toml"
    if pyproject.is_file():
        try:
            project = tomllib.loads(pyproject.read_text()).get("project", {})
        except (tomllib.TOMLDecodeError, OSError) as exc:
            raise BundleError(f"cannot read {pyproject}: {exc}") from exc
    lines = ["Metadata-Version: 2.1", f"Name: {PRODUCT_NAME}", f"Version: {version}"]
    if project.get("description"):
        lines.append(f"Summary: {project['description']}")
    if project.get("requires-python"):
        lines.append(f"Requires-Python: {project['requires-python']}")
    lines += [f"Requires-Dist: {dep}" for dep in project.get("dependencies", [])]
    groups = dict(project.get("entry-points", {}))
    if project.get("scripts"):
        groups = {"console_scripts": project["scripts"], **groups}
    entry_points = "".join(f"[{group}]\n" + "".join(f"{k} = {v}\n" for k, v in entries.items()) + "\n"
                           for group, entries in groups.items())
    return "\n".join(lines) + "\n", entry_points


def _build_wheel(source_root: Path, version: str) -> bytes:
    files: dict[str, bytes] = {}
    for arcname, path in _source_files(source_root):
        data = path.read_bytes()
        if arcname == "twin/__init__.py":
            data = _set_version(data.decode(), version).encode()
        files[arcname] = data
    # In the working tree drivers/ may be a namespace package. In a slot it must be a
    # regular one, or Python would merge the slot's drivers/ with the base install's.
    files.setdefault("drivers/__init__.py", b"")
    dist_info = f"{_DIST}-{version}.dist-info"
    metadata, entry_points = _metadata(source_root, version)
    files[f"{dist_info}/METADATA"] = metadata.encode()
    files[f"{dist_info}/WHEEL"] = (b"Wheel-Version: 1.0\nGenerator: ocpp-twin firmware build\n"
                                   b"Root-Is-Purelib: true\nTag: py3-none-any\n")
    if entry_points:
        files[f"{dist_info}/entry_points.txt"] = entry_points.encode()
    record = "".join(f"{name},{_record_hash(data)},{len(data)}\n" for name, data in files.items())
    files[f"{dist_info}/RECORD"] = (record + f"{dist_info}/RECORD,,\n").encode()

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in files.items():
            info = zipfile.ZipInfo(name, _ZIP_EPOCH)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            zf.writestr(info, data)
    return buf.getvalue()


# -- verifying --------------------------------------------------------------------------


def verify_bundle(path: Path) -> Manifest:
    """Check everything about the bundle at ``path``; return its manifest or raise BundleError."""
    manifest, _ = _read_verified(Path(path))
    return manifest


def unpack_bundle(path: Path, dest: Path) -> Manifest:
    """Verify the bundle and unpack its wheel's files into the (new, empty) directory ``dest``.

    Verification and unpacking use the same bytes read once, so the file cannot change
    between the check and the install.
    """
    manifest, files = _read_verified(Path(path))
    dest = Path(dest)
    for name, data in files.items():
        target = dest.joinpath(*PurePosixPath(name).parts)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
    return manifest


def _read_verified(path: Path) -> tuple[Manifest, dict[str, bytes]]:
    """The manifest and the wheel's files (name -> bytes), all checked."""
    members = _read_tar(path)
    if MANIFEST_NAME not in members:
        raise BundleError(f"{path.name}: no {MANIFEST_NAME}; this is not an ocpp-twin firmware bundle")
    manifest = _parse_manifest(members[MANIFEST_NAME], path.name)
    listed = set(manifest.sha256)
    present = set(members) - {MANIFEST_NAME}
    if listed != present:
        raise BundleError(f"{path.name}: files {sorted(present)} do not match the manifest's {sorted(listed)}")
    for name, expected in manifest.sha256.items():
        actual = hashlib.sha256(members[name]).hexdigest()
        if actual != expected.lower():
            raise BundleError(f"{path.name}: checksum mismatch for {name} (manifest {expected}, file {actual}); "
                              "the bundle was corrupted or tampered with")
    return manifest, _check_wheel(members[manifest.wheel], manifest)


def _read_tar(path: Path) -> dict[str, bytes]:
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise BundleError(f"cannot read firmware file {path}: {exc.strerror or exc}") from exc
    if size == 0:
        raise BundleError(f"{path.name}: the file is empty")
    members: dict[str, bytes] = {}
    total = 0
    try:
        with tarfile.open(path, "r:gz") as tar:
            for info in tar:
                if not info.isreg():
                    raise BundleError(f"{path.name}: member {info.name!r} is not a regular file")
                if "/" in info.name or info.name in ("", ".", ".."):
                    raise BundleError(f"{path.name}: unexpected member {info.name!r} (a bundle is flat)")
                total += info.size
                if info.size > _MAX_MEMBER_BYTES or total > _MAX_BUNDLE_BYTES or len(members) >= 8:
                    raise BundleError(f"{path.name}: too large or too many members for a firmware bundle")
                # tarfile reads exactly the declared size, however far the gzip stream inflates.
                extracted = tar.extractfile(info)
                assert extracted is not None  # a regular file always has a body
                members[info.name] = extracted.read()
    except BundleError:
        raise
    except (tarfile.TarError, EOFError, zlib.error, OSError) as exc:
        raise BundleError(f"{path.name}: not a firmware bundle (expected a complete gzip-compressed tar "
                          f"archive): {exc}") from exc
    return members


def _parse_manifest(raw: bytes, label: str) -> Manifest:
    try:
        doc = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BundleError(f"{label}: {MANIFEST_NAME} is not valid JSON: {exc}") from exc
    if not isinstance(doc, dict):
        raise BundleError(f"{label}: {MANIFEST_NAME} is not a JSON object")
    if doc.get("name") != PRODUCT_NAME:
        raise BundleError(f"{label}: bundle is for {doc.get('name')!r}, not {PRODUCT_NAME!r}")
    if doc.get("format") != BUNDLE_FORMAT:
        raise BundleError(f"{label}: unsupported bundle format {doc.get('format')!r} (this firmware reads "
                          f"format {BUNDLE_FORMAT})")
    version, wheel, sha256 = doc.get("version"), doc.get("wheel"), doc.get("sha256")
    if not isinstance(version, str) or not _VERSION_RE.match(version):
        raise BundleError(f"{label}: manifest version {version!r} is not dotted numbers like 1.11")
    if not isinstance(sha256, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in sha256.items()):
        raise BundleError(f"{label}: manifest sha256 must map file names to hex digests")
    if not isinstance(wheel, str) or wheel not in sha256 or not wheel.endswith(".whl"):
        raise BundleError(f"{label}: manifest names no wheel with a checksum")
    return Manifest(BUNDLE_FORMAT, PRODUCT_NAME, version, wheel, dict(sha256), str(doc.get("created", "")))


def _check_wheel(data: bytes, manifest: Manifest) -> dict[str, bytes]:
    """The wheel's files (name -> bytes) once they pass every check."""
    label = manifest.wheel
    try:
        zf = zipfile.ZipFile(io.BytesIO(data))
    except zipfile.BadZipFile as exc:
        raise BundleError(f"{label}: not a wheel (bad zip: {exc})") from exc
    with zf:
        names = zf.namelist()
        if len(names) > _MAX_WHEEL_FILES:
            raise BundleError(f"{label}: {len(names)} files is too many for a firmware wheel")
        for name in names:
            parts = PurePosixPath(name).parts
            if name.startswith("/") or ".." in parts or "\\" in name:
                raise BundleError(f"{label}: unsafe path {name!r} in the wheel")
        contents = _read_wheel_files(zf, label)
    dist_info = f"{_DIST}-{manifest.version}.dist-info"
    record = contents.get(f"{dist_info}/RECORD")
    if record is None:
        raise BundleError(f"{label}: no {dist_info}/RECORD; not a wheel of ocpp-twin {manifest.version}")
    _check_record(record, contents, label)
    init = contents.get("twin/__init__.py")
    if init is None or "drivers/__init__.py" not in contents:
        raise BundleError(f"{label}: the wheel lacks the twin or drivers package")
    found = _VERSION_LINE_RE.search(init.decode("utf-8", "replace"))
    if not found or found.group(1) != manifest.version:
        raise BundleError(f"{label}: twin/__init__.py says version {found.group(1) if found else None!r}, "
                          f"the manifest {manifest.version!r}")
    return contents


def _read_wheel_files(zf: zipfile.ZipFile, label: str) -> dict[str, bytes]:
    """Every file of the wheel, refusing one whose inflated size is over the limits before
    inflating it. zipfile stops a member at its declared size (and then fails its CRC
    when the data goes on), so the declared sizes bound the memory; the bounded read is
    there so that stays true whatever the zip says."""
    files = [info for info in zf.infolist() if not info.filename.endswith("/")]
    declared = 0
    for info in files:
        declared += info.file_size
        if info.file_size > _MAX_WHEEL_FILE_BYTES:
            raise BundleError(f"{label}: {info.filename} inflates to {info.file_size} bytes, over the "
                              f"{_MAX_WHEEL_FILE_BYTES // (1024 * 1024)} MiB a file of a firmware wheel may have")
        if declared > _MAX_WHEEL_TOTAL_BYTES:
            raise BundleError(f"{label}: the wheel inflates to more than "
                              f"{_MAX_WHEEL_TOTAL_BYTES // (1024 * 1024)} MiB, too much for a firmware wheel")
    contents: dict[str, bytes] = {}
    try:
        for info in files:
            with zf.open(info) as member:
                data = member.read(info.file_size + 1)
            if len(data) > info.file_size:
                raise BundleError(f"{label}: {info.filename} inflates past its declared size")
            contents[info.filename] = data
    except (zipfile.BadZipFile, zlib.error, OSError, EOFError) as exc:
        raise BundleError(f"{label}: corrupt wheel: {exc}") from exc
    return contents


def _check_record(record: bytes, contents: dict[str, bytes], label: str) -> None:
    listed: set[str] = set()
    for line in record.decode("utf-8", "replace").splitlines():
        if not line.strip():
            continue
        name, _, rest = line.partition(",")
        digest = rest.partition(",")[0]
        listed.add(name)
        if not digest:
            continue  # RECORD itself
        if name not in contents or _record_hash(contents[name]) != digest:
            raise BundleError(f"{label}: {name} does not match the wheel's RECORD; the wheel was altered")
    unlisted = set(contents) - listed
    if unlisted:
        raise BundleError(f"{label}: files not in RECORD: {sorted(unlisted)[:5]}")


# -- CLI hooks ----------------------------------------------------------------------------
# twin/cli.py looks for these here; the commands themselves live in twin/firmware/cli.py
# (imported lazily: that module imports this one).


def add_firmware_subcommands(subparsers: Any) -> Any:
    from twin.firmware.cli import add_firmware_subcommands as add

    return add(subparsers)


def run_firmware_command(args: Any) -> int:
    from twin.firmware.cli import run_firmware_command as run

    return run(args)
