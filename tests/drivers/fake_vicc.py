"""A virtual contactless card for vsmartcard's vpcd reader, in pure stdlib (hardware-and-ops.md 1.4).

vpcd (loaded by pcscd) listens on TCP 35963 for reader "Virtual PCD 00 00". Connecting is
inserting the card, closing is removing it. Each message is a 2-byte big-endian length plus
payload: a 1-byte payload is a control code (0 power off, 1 power on, 2 reset, 4 get ATR),
anything longer is a C-APDU that gets an R-APDU back. This card answers the PC/SC
"Get Data UID" command ``FF CA 00 00 00`` with its UID + 90 00, anything else with 6D 00.

While inserted it reconnects by itself when pcscd restarts (the card "stays on the reader").
"""

from __future__ import annotations

import socket
import struct
import threading

VPCD_PORT = 35963
ATR = bytes.fromhex("3B8F8001804F0CA000000306030001000000006A")  # PC/SC part 3 MIFARE Classic 1K


def _recv_exact(s: socket.socket, n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        chunk = s.recv(n - len(buf))
        if not chunk:
            raise ConnectionError("vpcd closed the connection")
        buf += chunk
    return buf


class FakeCard:
    def __init__(self, uid: bytes, port: int = VPCD_PORT) -> None:
        self.uid = uid
        self.port = port
        self.apdus: list[bytes] = []
        self.sessions = 0  # connections made to vpcd
        self._sock: socket.socket | None = None
        self._inserted = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def insert(self) -> None:
        self._inserted.set()
        self._thread = threading.Thread(target=self._run, name=f"fake-card-{self.uid.hex()}", daemon=True)
        self._thread.start()

    def remove(self) -> None:
        self._inserted.clear()
        with self._lock:
            if self._sock is not None:
                try:
                    self._sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
        if self._thread is not None:
            self._thread.join(5)
            self._thread = None

    def _run(self) -> None:
        while self._inserted.is_set():
            try:
                s = socket.create_connection(("127.0.0.1", self.port), timeout=1)
            except OSError:
                self._inserted.wait(0.05)  # pcscd not (yet) there: keep trying while inserted
                if not self._inserted.is_set():
                    return
                threading.Event().wait(0.05)
                continue
            s.settimeout(None)
            with self._lock:
                self._sock = s
            self.sessions += 1
            try:
                self._serve(s)
            except (ConnectionError, OSError):
                pass
            finally:
                with self._lock:
                    self._sock = None
                s.close()
            threading.Event().wait(0.05)

    def _serve(self, s: socket.socket) -> None:
        while self._inserted.is_set():
            (n,) = struct.unpack("!H", _recv_exact(s, 2))
            msg = _recv_exact(s, n)
            if n == 1:
                if msg[0] == 4:  # get ATR
                    self._send(s, ATR)
                continue  # power off / on / reset: no answer
            self.apdus.append(msg)
            if msg[:3] == b"\xFF\xCA\x00":
                self._send(s, self.uid + b"\x90\x00")
            else:
                self._send(s, b"\x6D\x00")

    @staticmethod
    def _send(s: socket.socket, payload: bytes) -> None:
        s.sendall(struct.pack("!H", len(payload)) + payload)
