"""The GetDiagnostics file: logs limited to a time window, redacted station facts, one tar.gz.

OCPP 1.6 section 5.9 / 6.31: one file, its name returned in GetDiagnostics.conf, with
the log lines between ``startTime`` and ``stopTime`` when given. Layout::

    diagnostics-<chargePointId>-<YYYYmmddTHHMMSSZ>.tar.gz
      diagnostics.json   charge point id, firmware version, window, slot state,
                         the runtime's extras (config, store summary, driver status), redacted
      logs/<file>        each log file, only the lines inside the window

Log lines start with an ISO 8601 UTC timestamp (twin/service/logs.py). A line that does
not (a traceback, a wrapped message) belongs to the line before it and is kept or
dropped with it.

Redaction runs here again even though the runtime supplies redacted extras: a leaked
AuthorizationKey or FTP password in a file sent to a third-party server is the kind
of mistake defence in depth is for. The log lines go through :func:`twin.redact.redact_text`
too (URL passwords, ``Authorization:`` header values, AuthorizationKey values in quoted
frames), whatever logged them and at whatever level.
"""

from __future__ import annotations

import errno
import io
import json
import re
import tarfile
import tempfile
from collections.abc import Iterable, Iterator, Mapping
from datetime import datetime
from pathlib import Path
from typing import Any

from twin.core.timeutil import parse_ts, ts
from twin.firmware.transfer import redact_url
from twin.redact import redact_text

__all__ = ["DiagnosticsError", "build_archive", "diagnostics_file_name", "filter_log_lines", "redact"]

REDACTED = "***"
# Names whose values are secrets: config keys, TOML fields, OCPP keys (AuthorizationKey).
_SECRET_NAME = re.compile(r"pass(word|wd)?|secret|token|authorizationkey|credential|private_?key|api_?key|"
                          r"^auth(orization)?$", re.IGNORECASE)
_URL_WITH_USERINFO = re.compile(r"^[a-z][a-z0-9+.-]*://[^/@\s]*:[^/@\s]*@", re.IGNORECASE)


class DiagnosticsError(Exception):
    """The diagnostics file could not be written; the message says why."""


def diagnostics_file_name(charge_point_id: str, now: datetime) -> str:
    safe_id = re.sub(r"[^A-Za-z0-9._-]", "_", charge_point_id) or "station"
    return f"diagnostics-{safe_id}-{now.strftime('%Y%m%dT%H%M%SZ')}.tar.gz"


def redact(value: Any) -> Any:
    """A copy of ``value`` with secret-named fields and URL passwords replaced by ``***``."""
    if isinstance(value, Mapping):
        # OCPP configuration entries look like {"key": "AuthorizationKey", "value": "..."}.
        entry_is_secret = isinstance(value.get("key"), str) and bool(_SECRET_NAME.search(value["key"]))
        return {k: (REDACTED if (isinstance(k, str) and _SECRET_NAME.search(k) and v not in (None, ""))
                    or (entry_is_secret and k == "value") else redact(v))
                for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [redact(v) for v in value]
    if isinstance(value, str) and _URL_WITH_USERINFO.match(value):
        return redact_url(value)
    return value


def filter_log_lines(lines: Iterable[str], start: datetime | None, stop: datetime | None) -> Iterator[str]:
    """The lines whose leading timestamp lies in [start, stop]; unstamped lines follow the
    decision for the line before them."""
    keep = start is None
    for line in lines:
        stamp = parse_ts(line.split(" ", 1)[0]) if line[:1].isdigit() else None
        if stamp is not None:
            keep = (start is None or stamp >= start) and (stop is None or stamp <= stop)
        if keep:
            yield line


def build_archive(out: Path, *, charge_point_id: str, firmware_version: str, now: datetime,
                  log_files: Iterable[Path], extras: Mapping[str, Any], firmware_state: Mapping[str, Any],
                  start: datetime | None, stop: datetime | None) -> Path:
    """Write the diagnostics tar.gz to ``out``; raise DiagnosticsError (disk full, ...)."""
    logs: list[dict[str, Any]] = []
    try:
        with tarfile.open(out, "w:gz") as tar:
            for path in log_files:
                logs.append(_add_log(tar, Path(path), start, stop, out.parent))
            summary = {
                "chargePointId": charge_point_id,
                "firmwareVersion": firmware_version,
                "generatedAt": ts(now),
                "startTime": ts(start) if start else None,
                "stopTime": ts(stop) if stop else None,
                "firmwareSlots": redact(dict(firmware_state)),
                "station": redact(dict(extras)),
                "logs": logs,
            }
            _add_bytes(tar, "diagnostics.json", json.dumps(summary, indent=2, default=str).encode(), now)
    except OSError as exc:
        try:
            out.unlink()
        except OSError:
            pass  # nothing written, or the disk is gone too
        reason = "disk full" if exc.errno == errno.ENOSPC else (exc.strerror or str(exc))
        raise DiagnosticsError(f"cannot write diagnostics file {out}: {reason}") from exc
    return out


def _add_bytes(tar: tarfile.TarFile, name: str, data: bytes, now: datetime) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = len(data), 0o644, int(now.timestamp())
    tar.addfile(info, io.BytesIO(data))


def _add_log(tar: tarfile.TarFile, path: Path, start: datetime | None, stop: datetime | None,
             scratch: Path) -> dict[str, Any]:
    entry: dict[str, Any] = {"file": path.name}
    try:
        source = open(path, encoding="utf-8", errors="replace")
    except OSError as exc:
        entry["error"] = f"unreadable: {exc.strerror or exc}"  # rotated away meanwhile, permissions...
        return entry
    # Spool to disk past 4 MiB: a tar member needs its size before its body.
    with source, tempfile.SpooledTemporaryFile(max_size=4 * 1024 * 1024, dir=str(scratch)) as spool:
        lines = 0
        for line in filter_log_lines(source, start, stop):
            spool.write(redact_text(line).encode())
            lines += 1
        info = tarfile.TarInfo(f"logs/{path.name}")
        info.size, info.mode = spool.tell(), 0o644
        try:
            info.mtime = int(path.stat().st_mtime)
        except OSError:
            pass  # keep the default mtime
        spool.seek(0)
        tar.addfile(info, spool)
    entry["lines"] = lines
    return entry
