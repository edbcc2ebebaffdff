"""The security log: every security event, critical or not, one JSON line each, in a
rolling file in the data dir (whitepaper A04.FR.04, N01.FR.05), for GetLog(SecurityLog).

``<data_dir>/security.log`` is the current file; ``security.log.1`` ... ``.N`` the older
ones. When a line would take the current file past ``max_bytes`` the files shift by one
and the oldest is dropped. Dropping entries is "the security log was cleared or rotated
with data loss": :meth:`SecurityLog.append` and :meth:`SecurityLog.clear` then return True
and the caller raises SecurityLogWasCleared (critical) like any other event, which logs it
in the new file.

A line is ``{"critical": bool, "techInfo": str?, "timestamp": "...Z", "type": name}``.
techInfo goes through :func:`twin.security.events.clean_tech_info` (secrets redacted, 255
characters). Each line is fsynced: security events are rare and a power cut right after
one is exactly when the log matters. A torn last line is skipped on reading.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import threading
from collections.abc import Iterable, Iterator
from datetime import datetime, timezone
from pathlib import Path

from twin.core.timeutil import parse_ts, ts
from twin.security.certs import fsync_dir
from twin.security.events import clean_tech_info, event

FILE_NAME = "security.log"
DEFAULT_MAX_BYTES = 256 * 1024
DEFAULT_BACKUPS = 3


class SecurityLog:
    def __init__(self, data_dir: Path | str, max_bytes: int = DEFAULT_MAX_BYTES, backups: int = DEFAULT_BACKUPS):
        if max_bytes < 1024:
            raise ValueError("the security log needs max_bytes of at least 1024")
        if backups < 0:
            raise ValueError("backups must be 0 or more")
        self.path = Path(data_dir) / FILE_NAME
        self.max_bytes = max_bytes
        self.backups = backups
        self._lock = threading.Lock()

    def _file(self, n: int) -> Path:
        return self.path if n == 0 else self.path.with_name(f"{FILE_NAME}.{n}")

    def files(self) -> list[Path]:
        """The log files that exist, oldest first."""
        return [p for p in (self._file(n) for n in range(self.backups, -1, -1)) if p.exists()]

    def append(self, name: str, timestamp: datetime, tech_info: str | None = None,
               secrets: Iterable[str | bytes] = ()) -> bool:
        """Log one event (``name`` from the catalogue, ``timestamp`` when it happened).
        Returns True when making room dropped older entries: raise SecurityLogWasCleared."""
        entry: dict[str, object] = {"critical": event(name).critical, "timestamp": ts(timestamp), "type": name}
        if tech_info:
            entry["techInfo"] = clean_tech_info(tech_info, secrets)
        line = (json.dumps(entry, ensure_ascii=False, sort_keys=True, separators=(",", ":")) + "\n").encode("utf-8")
        with self._lock:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            lost = False
            try:
                size = self.path.stat().st_size
            except FileNotFoundError:
                size = 0
            if size and size + len(line) > self.max_bytes:
                lost = self._rotate()
            fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o600)
            try:
                end = os.lseek(fd, 0, os.SEEK_END)
                if end and os.pread(fd, 1, end - 1) != b"\n":
                    line = b"\n" + line  # a line torn by a power cut stays apart from this one
                os.write(fd, line)
                os.fsync(fd)
            finally:
                os.close(fd)
            return lost

    def _rotate(self) -> bool:
        oldest = self._file(self.backups)
        lost = oldest.exists()
        with contextlib.suppress(FileNotFoundError):
            oldest.unlink()
        for n in range(self.backups - 1, -1, -1):
            with contextlib.suppress(FileNotFoundError):
                os.replace(self._file(n), self._file(n + 1))
        fsync_dir(self.path.parent)
        return lost

    def clear(self) -> bool:
        """Delete every entry. Returns whether there was any: raise SecurityLogWasCleared."""
        with self._lock:
            removed = False
            for path in self.files():
                removed = removed or path.stat().st_size > 0
                path.unlink()
            if removed:
                fsync_dir(self.path.parent)
            return removed

    def entries(self, oldest: datetime | None = None, latest: datetime | None = None) -> Iterator[dict]:
        """The entries, oldest first, with ``oldest <= timestamp <= latest`` where given
        (GetLog log.oldestTimestamp / latestTimestamp)."""
        for _line, entry in self._lines(oldest, latest):
            yield entry

    def _lines(self, oldest: datetime | None, latest: datetime | None) -> Iterator[tuple[str, dict]]:
        with self._lock:
            files = self.files()
            contents = []
            for path in files:
                with contextlib.suppress(FileNotFoundError):
                    contents.append(path.read_bytes())
        for data in contents:
            for raw in data.decode("utf-8", errors="replace").splitlines():
                try:
                    entry = json.loads(raw)
                except ValueError:
                    continue  # a line torn by a power cut
                when = parse_ts(entry.get("timestamp")) if isinstance(entry, dict) else None
                if when is None:
                    continue
                if (oldest is not None and when < oldest) or (latest is not None and when > latest):
                    continue
                yield raw, entry

    def export(self, destination: Path | str, oldest: datetime | None = None,
               latest: datetime | None = None) -> int:
        """Write the entries in the window to one file for the GetLog upload (N01.FR.02).
        Returns how many; 0 means there is nothing to upload (GetLog is then Rejected,
        N01.FR.01)."""
        count = 0
        with open(destination, "w", encoding="utf-8") as fh:
            for raw, _entry in self._lines(oldest, latest):
                fh.write(raw + "\n")
                count += 1
        return count


def upload_file_name(charge_point_id: str, now: datetime) -> str:
    """The GetLog.conf ``filename`` (at most 255 characters)."""
    safe_id = re.sub(r"[^A-Za-z0-9._-]", "_", charge_point_id)[:64] or "station"
    return f"securitylog-{safe_id}-{now.astimezone(timezone.utc).strftime('%Y%m%dT%H%M%SZ')}.jsonl"
