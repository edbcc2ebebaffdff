"""The ``[firmware]`` table of the station config.

::

    [firmware]
    boot_timeout_s = 120             # a new version must reach BootNotification Accepted within this
    transfer_timeout_s = 30          # socket timeout of one download/upload connection
    ca_file = "/etc/ocpp-twin/ca.pem"  # extra CA bundle for https/ftps (default: the system store)
    diagnostics_http_method = "PUT"  # or "POST" (multipart/form-data, field "file")
    default_retries = 2              # UpdateFirmware/GetDiagnostics without retries
    default_retry_interval_s = 30    # ... without retryInterval
    max_download_mib = 256           # a firmware download larger than this fails (DownloadFailed)
    secure_update_only = false       # true: plain UpdateFirmware gets CALLERROR NotSupported (L01.FR.20)
    revoked_signing_certificates = []  # SHA-256 fingerprints (hex) of revoked firmware signing certificates

The launcher reads it straight from the TOML file named by ``--config`` because it runs
before the station's own config loading; the runtime passes the parsed table to
:meth:`FirmwareSettings.from_table`.
"""

from __future__ import annotations

import argparse
import logging
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["FirmwareSettings", "SettingsError", "settings_from_argv"]

log = logging.getLogger(__name__)


class SettingsError(ValueError):
    """A bad value in the [firmware] table; the message names it."""


@dataclass(frozen=True)
class FirmwareSettings:
    boot_timeout_s: float = 120.0
    transfer_timeout_s: float = 30.0
    ca_file: Path | None = None
    diagnostics_http_method: str = "PUT"
    default_retries: int = 2
    default_retry_interval_s: int = 30
    #: Firmware downloads share the disk with the store (twin.db): one that could fill it
    #: would stop every session with a storage fault. A bundle is a few hundred kB.
    max_download_mib: int = 256
    #: WP3 L01.FR.20: a station that implements signed updates SHALL refuse plain
    #: UpdateFirmware. Off by default: the FirmwareManagement OCTT cases need UpdateFirmware.
    secure_update_only: bool = False
    #: OCPP 1.6 gives the station no revocation source (no CRL, no OCSP). These SHA-256
    #: fingerprints (lower-case hex of the DER) are the signing certificates the operator
    #: declares revoked: SignedUpdateFirmware with one is RevokedCertificate (L01.FR.25).
    revoked_signing_certificates: tuple[str, ...] = ()

    @property
    def max_download_bytes(self) -> int:
        return self.max_download_mib * 1024 * 1024

    @classmethod
    def from_table(cls, table: Mapping[str, Any] | None) -> FirmwareSettings:
        table = dict(table or {})
        unknown = set(table) - set(cls.__dataclass_fields__)
        if unknown:
            raise SettingsError(f"[firmware]: unknown key(s) {sorted(unknown)}")
        values: dict[str, Any] = {}
        for key in ("boot_timeout_s", "transfer_timeout_s"):
            if key in table:
                value = table[key]
                if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
                    raise SettingsError(f"[firmware] {key} must be a number of seconds > 0, not {value!r}")
                values[key] = float(value)
        for key in ("default_retries", "default_retry_interval_s"):
            if key in table:
                value = table[key]
                if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                    raise SettingsError(f"[firmware] {key} must be an integer >= 0, not {value!r}")
                values[key] = value
        if "max_download_mib" in table:
            value = table["max_download_mib"]
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise SettingsError(f"[firmware] max_download_mib must be a whole number of MiB >= 1, not {value!r}")
            values["max_download_mib"] = value
        if "secure_update_only" in table:
            if not isinstance(table["secure_update_only"], bool):
                raise SettingsError("[firmware] secure_update_only must be true or false")
            values["secure_update_only"] = table["secure_update_only"]
        if "revoked_signing_certificates" in table:
            listed = table["revoked_signing_certificates"]
            if not isinstance(listed, list) or not all(isinstance(v, str) for v in listed):
                raise SettingsError("[firmware] revoked_signing_certificates must be a list of SHA-256 fingerprints")
            cleaned = tuple(v.replace(":", "").strip().lower() for v in listed)
            bad = [v for v in cleaned if len(v) != 64 or any(c not in "0123456789abcdef" for c in v)]
            if bad:
                raise SettingsError(f"[firmware] revoked_signing_certificates: {bad[0]!r} is not a SHA-256 "
                                    "fingerprint (64 hex digits)")
            values["revoked_signing_certificates"] = cleaned
        if "ca_file" in table:
            if not isinstance(table["ca_file"], str) or not table["ca_file"]:
                raise SettingsError("[firmware] ca_file must be a path")
            values["ca_file"] = Path(table["ca_file"])
        if "diagnostics_http_method" in table:
            method = str(table["diagnostics_http_method"]).upper()
            if method not in ("PUT", "POST"):
                raise SettingsError(f"[firmware] diagnostics_http_method must be PUT or POST, not {method!r}")
            values["diagnostics_http_method"] = method
        return cls(**values)

    @classmethod
    def from_file(cls, path: Path) -> FirmwareSettings:
        try:
            doc = tomllib.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
            raise SettingsError(f"cannot read config {path}: {exc}") from exc
        table = doc.get("firmware", {})
        if not isinstance(table, dict):
            raise SettingsError(f"{path}: [firmware] must be a table")
        return cls.from_table(table)


def settings_from_argv(argv: list[str]) -> FirmwareSettings:
    """Settings from the ``--config`` in a ``twin run`` command line; defaults when there is
    none or it is unreadable (logged: the station's own config loading reports it properly)."""
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--config")
    known, _ = parser.parse_known_args(argv)
    if not known.config:
        return FirmwareSettings()
    try:
        return FirmwareSettings.from_file(Path(known.config))
    except SettingsError as exc:
        log.error("%s; using the default firmware settings", exc)
        return FirmwareSettings()
