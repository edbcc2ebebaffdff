"""sd_notify(3) for the station: READY, STATUS, WATCHDOG and STOPPING.

The unit is ``Type=notify`` with ``WatchdogSec=`` (see systemd/ocpp-twin.service),
so systemd considers the station started only after ``READY=1`` and restarts it
when ``WATCHDOG=1`` stops arriving. The runtime sends those pings from its own
event loop: a hung loop stops the pings, which is the point.

Two transports, same wire format (one datagram of ``KEY=value`` lines on the
AF_UNIX socket named by ``$NOTIFY_SOCKET``):

* ``systemd`` -- ``systemd.daemon.notify`` from systemd-python (a C build; it is
  in the ``pi`` extra). It reads ``NOTIFY_SOCKET`` from the process environment.
* ``builtin`` -- a few lines of stdlib socket code, so a unit without a compiler
  (and the CI's fake-driver installs) still talks to systemd.

sd_notify(3) says callers should generally ignore failures, and a station must
never crash because its supervisor went away: every method here swallows errors
and logs the first one at DEBUG.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Callable, Mapping
from typing import Literal

__all__ = ["Backend", "Notifier"]

log = logging.getLogger(__name__)

Backend = Literal["auto", "systemd", "builtin"]


def _load_systemd_notify() -> Callable[[str], bool] | None:
    try:
        from systemd import daemon  # type: ignore[import-not-found]
    except ImportError:
        return None
    return daemon.notify  # type: ignore[no-any-return]


def _status_line(text: str) -> str:
    # One datagram is a list of newline-separated assignments (sd_notify(3)),
    # so a newline inside STATUS= would start a bogus assignment.
    return "STATUS=" + " ".join(text.splitlines())


class Notifier:
    """Talks to the service manager; a silent no-op when not under systemd.

    ``environ`` defaults to ``os.environ``. ``backend`` picks the transport:
    ``"auto"`` uses systemd-python when it is importable and reads the same
    environment it would (``os.environ``), else the built-in one. Asking for
    ``"systemd"`` when systemd-python is missing raises ``RuntimeError``; that is
    a wiring mistake, not a runtime condition.
    """

    def __init__(self, environ: Mapping[str, str] | None = None, *, backend: Backend = "auto") -> None:
        self._env: Mapping[str, str] = os.environ if environ is None else environ
        self._socket: str = self._env.get("NOTIFY_SOCKET", "")
        self.enabled: bool = bool(self._socket)
        self._warned = False
        self._send_systemd: Callable[[str], bool] | None = None
        if backend not in ("auto", "systemd", "builtin"):
            raise ValueError(f"unknown sd_notify backend {backend!r}; use auto, systemd or builtin")
        if backend != "builtin":
            notify = _load_systemd_notify()
            if backend == "systemd":
                if notify is None:
                    raise RuntimeError("sd_notify backend 'systemd' asked for, but systemd-python is not installed")
                self._send_systemd = notify
            elif notify is not None and os.environ.get("NOTIFY_SOCKET", "") == self._socket:
                # libsystemd reads getenv("NOTIFY_SOCKET"); only use it when that is
                # the socket this Notifier was configured with.
                self._send_systemd = notify
        self.backend: Literal["systemd", "builtin"] = "systemd" if self._send_systemd else "builtin"

    # -- the messages -------------------------------------------------------------

    def ready(self, status: str | None = None) -> None:
        """READY=1: the store is open and the drivers have resolved (issue 7)."""
        self._notify("READY=1" if status is None else "READY=1\n" + _status_line(status))

    def status(self, text: str) -> None:
        """STATUS=: one line for `systemctl status` (registration, link, queue)."""
        self._notify(_status_line(text))

    def watchdog(self) -> None:
        """WATCHDOG=1: call from the station's event loop, every watchdog_interval()."""
        self._notify("WATCHDOG=1")

    def stopping(self) -> None:
        """STOPPING=1: shutdown has begun (SIGTERM, Reset)."""
        self._notify("STOPPING=1")

    def watchdog_interval(self) -> float | None:
        """Seconds between WATCHDOG=1 pings, or None when no watchdog is asked for.

        sd_watchdog_enabled(3): WATCHDOG_USEC is the timeout; it applies to us only
        if WATCHDOG_PID is unset or is our pid (it may have been inherited from a
        parent); ping at half the timeout.
        """
        if not self.enabled:
            return None
        raw_usec = self._env.get("WATCHDOG_USEC", "")
        raw_pid = self._env.get("WATCHDOG_PID", "")
        if not raw_usec:
            return None
        try:
            usec = int(raw_usec)
            pid = int(raw_pid) if raw_pid else None
        except ValueError:
            self._debug_once("ignoring malformed WATCHDOG_USEC=%r / WATCHDOG_PID=%r", raw_usec, raw_pid)
            return None
        if usec <= 0 or (pid is not None and pid != os.getpid()):
            return None
        return usec / 2 / 1_000_000

    # -- transport ----------------------------------------------------------------

    def _notify(self, message: str) -> None:
        if not self.enabled:
            return
        try:
            if self._send_systemd is not None:
                if not self._send_systemd(message):
                    self._debug_once("sd_notify to %s returned false", self._socket)
            else:
                self._send_builtin(message)
        except Exception as exc:  # never let the supervisor channel take the station down
            self._debug_once("sd_notify to %s failed: %s", self._socket, exc)

    def _send_builtin(self, message: str) -> None:
        address = self._socket
        if address.startswith("@"):
            address = "\0" + address[1:]  # abstract namespace, sd_notify(3)
        elif not address.startswith("/"):
            raise OSError(f"unsupported NOTIFY_SOCKET address {self._socket!r}")
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            # Non-blocking: a full receive queue must cost us one lost ping,
            # never a stalled event loop.
            sock.setblocking(False)
            sock.connect(address)
            sock.send(message.encode("utf-8"))

    def _debug_once(self, fmt: str, *args: object) -> None:
        if not self._warned:
            self._warned = True
            log.debug(fmt, *args)
