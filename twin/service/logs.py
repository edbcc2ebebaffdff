"""Where the station's logs go.

* Under systemd (our stderr is the journal stream, $JOURNAL_STREAM): journald's
  native protocol with structured fields (twin/service/journald.py).
* Otherwise: stderr, in a readable format that shows the same extras.
* Always, when a data dir is given and writable: a size-bounded rotating file
  ``<data_dir>/logs/twin.log``. GetDiagnostics uploads these files (issue 5), so
  every line starts with an ISO-8601 UTC timestamp it can filter on
  (startTime/stopTime, OCPP 1.6 section 6.31).
"""

from __future__ import annotations


import logging
import logging.handlers
import os
import sys
import time
from collections.abc import Mapping
from pathlib import Path

from twin.redact import RedactingFilter
from twin.service.journald import (
    DEFAULT_JOURNAL_SOCKET,
    STRUCTURED_EXTRAS,
    JournalHandler,
    stderr_is_journal,
)

__all__ = ["LOG_FILE_NAME", "LOG_TIME_FORMAT", "TextFormatter", "log_files", "setup_logging"]

LOG_FILE_NAME = "twin.log"
#: strftime format of the timestamp that starts every line of the log file (UTC).
LOG_TIME_FORMAT = "%Y-%m-%dT%H:%M:%S"

# Short labels for the structured extras in text output.
_TEXT_LABELS = {"connector": "connector", "transaction_id": "tx", "ocpp_action": "action", "message_id": "msg"}
assert _TEXT_LABELS.keys() == STRUCTURED_EXTRAS.keys()

# Marks the handlers setup_logging installed, so a second call replaces them.
_OURS = "_ocpp_twin_handler"


class TextFormatter(logging.Formatter):
    """``2026-11-24T19:35:01.123Z INFO twin.link [connector=1 tx=42] message``.

    UTC with milliseconds: the station's OCPP timestamps are UTC with
    milliseconds too (iEVQC33 profile), so log lines and frames line up.
    """

    converter = time.gmtime

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s %(extras)s%(message)s", datefmt=LOG_TIME_FORMAT)

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        return f"{super().formatTime(record, datefmt)}.{int(record.msecs):03d}Z"

    def format(self, record: logging.LogRecord) -> str:
        shown = [f"{label}={getattr(record, attr)}" for attr, label in _TEXT_LABELS.items()
                 if getattr(record, attr, None) is not None]
        record.extras = f"[{' '.join(shown)}] " if shown else ""
        return super().format(record)


class _BoundedRotatingFileHandler(logging.handlers.RotatingFileHandler):
    """RotatingFileHandler whose files really stay under max_bytes.

    The stdlib compares a byte offset with a character count, and writes a record
    longer than maxBytes whole; both let a file grow past the bound. Here records
    are measured in bytes and cut to fit. A write error (full disk, removed
    directory) is reported once on stderr instead of a traceback per record.
    """

    def __init__(self, path: Path, max_bytes: int, backups: int) -> None:
        super().__init__(path, maxBytes=max_bytes, backupCount=backups, encoding="utf-8")
        self._failing = False

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        limit = self.maxBytes - 1  # room for the newline
        encoded = text.encode("utf-8")
        if len(encoded) > limit:
            marker = " [truncated]"
            text = encoded[: max(0, limit - len(marker))].decode("utf-8", "ignore") + marker
        return text

    def shouldRollover(self, record: logging.LogRecord) -> bool:
        if self.stream is None:
            self.stream = self._open()
        size = len((self.format(record) + self.terminator).encode("utf-8"))
        self.stream.seek(0, os.SEEK_END)
        return self.stream.tell() > 0 and self.stream.tell() + size > self.maxBytes

    def emit(self, record: logging.LogRecord) -> None:
        try:
            if self.shouldRollover(record):
                self.doRollover()
            logging.FileHandler.emit(self, record)
            self._failing = False
        except Exception as exc:
            if not self._failing:
                self._failing = True
                _warn(f"cannot write log file {self.baseFilename}: {exc}; continuing without it until it works again")


def _warn(text: str) -> None:
    try:
        sys.stderr.write(f"ocpp-twin: WARNING: {text}\n")
        sys.stderr.flush()
    except Exception:
        pass


def _level_number(level: str) -> int:
    number = logging.getLevelName(level.strip().upper())
    if not isinstance(number, int):
        raise ValueError(f"unknown log level {level!r}; use one of DEBUG, INFO, WARNING, ERROR, CRITICAL")
    return number


def _file_handler(data_dir: Path, max_bytes: int, backups: int) -> logging.Handler | None:
    logs = Path(data_dir) / "logs"
    try:
        logs.mkdir(parents=True, exist_ok=True)
        handler = _BoundedRotatingFileHandler(logs / LOG_FILE_NAME, max_bytes, backups)
    except OSError as exc:
        _warn(f"cannot write the log file under {logs}: {exc}; logging without a log file")
        return None
    handler.setFormatter(TextFormatter())
    return handler


def setup_logging(level: str, data_dir: Path | None, *, max_bytes: int = 5_000_000, backups: int = 3,
                  environ: Mapping[str, str] | None = None,
                  journal_socket: Path = DEFAULT_JOURNAL_SOCKET) -> None:
    """Configure the root logger; calling it again replaces what it installed.

    ``environ`` (default ``os.environ``) and ``journal_socket`` are injectable so
    tests can stand in for journald without touching /run/systemd.
    Raises ValueError for an unknown level or non-positive size bounds.
    """
    number = _level_number(level)
    if max_bytes < 1024 or backups < 1:
        raise ValueError(f"log rotation needs max_bytes >= 1024 and backups >= 1 (got {max_bytes}, {backups})")
    env = os.environ if environ is None else environ

    root = logging.getLogger()
    for old in [h for h in root.handlers if getattr(h, _OURS, False)]:
        root.removeHandler(old)
        old.close()

    handlers: list[logging.Handler] = []
    if stderr_is_journal(env):
        journal = JournalHandler(journal_socket)
        # journald timestamps entries itself; the level is in PRIORITY=.
        journal.setFormatter(logging.Formatter("%(message)s"))
        handlers.append(journal)
    else:
        console = logging.StreamHandler(sys.stderr)
        console.setFormatter(TextFormatter())
        handlers.append(console)
    if data_dir is not None:
        file_handler = _file_handler(data_dir, max_bytes, backups)
        if file_handler is not None:
            handlers.append(file_handler)

    for handler in handlers:
        setattr(handler, _OURS, True)
        # Every logger's lines, not only the link's: a core error quotes the CSMS payload
        # (ChangeConfiguration of AuthorizationKey), a store error its ops (twin.redact).
        handler.addFilter(RedactingFilter())
        root.addHandler(handler)
    root.setLevel(number)


def log_files(data_dir: Path) -> list[Path]:
    """The rotating log files that exist, oldest first (twin.log.3 ... twin.log)."""
    logs = Path(data_dir) / "logs"
    found: list[tuple[int, Path]] = []
    try:
        entries = list(logs.iterdir())
    except OSError:
        return []
    for path in entries:
        if path.name == LOG_FILE_NAME:
            found.append((0, path))
        elif path.name.startswith(LOG_FILE_NAME + ".") and path.name[len(LOG_FILE_NAME) + 1:].isdigit():
            found.append((int(path.name[len(LOG_FILE_NAME) + 1:]), path))
    return [path for _, path in sorted(found, key=lambda item: item[0], reverse=True)]
