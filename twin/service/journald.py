"""A logging handler that speaks journald's native protocol.

Why not ``systemd.journal.JournalHandler``: libsystemd hard-codes the socket
path (/run/systemd/journal/socket), so its structured fields cannot be tested
without taking over the host's journal socket, and it needs a C build on every
unit. The native protocol is small, stable and documented
(https://systemd.io/JOURNAL_NATIVE_PROTOCOL/): one datagram per entry, each field
either ``KEY=value\\n`` or, when the value holds a newline,
``KEY\\n`` + 64-bit little-endian length + value + ``\\n``. Entries too big for a
datagram go in a sealed memfd whose descriptor is passed instead.

Structured fields come from ``LogRecord`` extras, so call sites write
``log.info("started", extra={"connector": 1, "transaction_id": 42})`` and
`journalctl CONNECTOR_ID=1 TRANSACTION_ID=42` finds the line.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import socket
import struct
import sys
from collections.abc import Mapping
from pathlib import Path

__all__ = ["DEFAULT_JOURNAL_SOCKET", "STRUCTURED_EXTRAS", "SYSLOG_IDENTIFIER", "JournalHandler", "stderr_is_journal"]

DEFAULT_JOURNAL_SOCKET = Path("/run/systemd/journal/socket")
SYSLOG_IDENTIFIER = "ocpp-twin"

#: LogRecord extra attribute -> journal field. The one place these names live.
STRUCTURED_EXTRAS: Mapping[str, str] = {
    "connector": "CONNECTOR_ID",
    "transaction_id": "TRANSACTION_ID",
    "ocpp_action": "OCPP_ACTION",
    "message_id": "OCPP_MESSAGE_ID",
}

# syslog(3) priorities, which journald stores as PRIORITY=.
_PRIORITY = ((logging.CRITICAL, 2), (logging.ERROR, 3), (logging.WARNING, 4), (logging.INFO, 6))


def _priority(levelno: int) -> int:
    for threshold, priority in _PRIORITY:
        if levelno >= threshold:
            return priority
    return 7  # debug


def stderr_is_journal(environ: Mapping[str, str], stderr_fd: int = 2) -> bool:
    """True when our stderr is the journal stream systemd connected us to.

    systemd.exec(5), $JOURNAL_STREAM: "device and inode number of the file
    descriptor ... separated by a colon"; a program should compare it with its own
    stderr before switching to the native protocol, because a child of a service
    whose stderr was redirected inherits the variable but not the connection.
    """
    value = environ.get("JOURNAL_STREAM", "")
    if not value:
        return False
    try:
        st = os.fstat(stderr_fd)
    except OSError:
        return False
    return value == f"{st.st_dev}:{st.st_ino}"


def _field(name: str, value: object) -> bytes:
    data = str(value).encode("utf-8", "replace")
    key = name.encode("ascii")
    if b"\n" in data:
        return key + b"\n" + struct.pack("<Q", len(data)) + data + b"\n"
    return key + b"=" + data + b"\n"


class JournalHandler(logging.Handler):
    """Sends each record to journald with MESSAGE, PRIORITY, SYSLOG_IDENTIFIER,
    LOGGER, CODE_* and the STRUCTURED_EXTRAS that the record carries.

    If the socket cannot be reached the record goes to stderr (under systemd that
    is the journal's stream socket, so nothing is lost), with a one-time note.
    """

    def __init__(self, socket_path: Path = DEFAULT_JOURNAL_SOCKET, *, identifier: str = SYSLOG_IDENTIFIER,
                 level: int = logging.NOTSET) -> None:
        super().__init__(level)
        self.socket_path = Path(socket_path)
        self.identifier = identifier
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        # A wedged journald must not wedge the station's event loop for long.
        self._sock.settimeout(1.0)
        self._fallback_noted = False

    def entry(self, record: logging.LogRecord) -> bytes:
        """The datagram for one record (public for tests and diagnostics)."""
        fields = [
            _field("MESSAGE", self.format(record)),
            _field("PRIORITY", _priority(record.levelno)),
            _field("SYSLOG_IDENTIFIER", self.identifier),
            _field("LOGGER", record.name),
            _field("CODE_FILE", record.pathname),
            _field("CODE_LINE", record.lineno),
            _field("CODE_FUNC", record.funcName),
        ]
        for attr, journal_field in STRUCTURED_EXTRAS.items():
            value = getattr(record, attr, None)
            if value is not None:
                fields.append(_field(journal_field, value))
        if record.exc_info and record.exc_info[0] is not None:
            fields.append(_field("EXCEPTION_TYPE", record.exc_info[0].__name__))
        return b"".join(fields)

    def emit(self, record: logging.LogRecord) -> None:
        try:
            data = self.entry(record)
        except Exception:
            self.handleError(record)
            return
        try:
            self._send(data)
        except OSError as exc:
            self._to_stderr(record, exc)

    def _send(self, data: bytes) -> None:
        path = os.fspath(self.socket_path)
        try:
            self._sock.sendto(data, path)
        except OSError as exc:
            if exc.errno not in (errno.EMSGSIZE, errno.ENOBUFS):
                raise
            self._send_memfd(data, path)

    def _send_memfd(self, data: bytes, path: str) -> None:
        # JOURNAL_NATIVE_PROTOCOL: big entries travel as a sealed memfd.
        fd = os.memfd_create("journal-entry", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
        try:
            os.write(fd, data)
            fcntl.fcntl(fd, fcntl.F_ADD_SEALS, fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_WRITE
                        | fcntl.F_SEAL_SEAL)
            self._sock.sendmsg([b""], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, struct.pack("i", fd))], 0, path)
        finally:
            os.close(fd)

    def _to_stderr(self, record: logging.LogRecord, exc: OSError) -> None:
        try:
            if not self._fallback_noted:
                self._fallback_noted = True
                sys.stderr.write(f"ocpp-twin: journald socket {self.socket_path} not usable ({exc}); "
                                 "logging to stderr\n")
            sys.stderr.write(self.format(record) + "\n")
            sys.stderr.flush()
        except Exception:
            self.handleError(record)

    def close(self) -> None:
        try:
            self._sock.close()
        finally:
            super().close()
