"""A real AF_UNIX datagram socket that stands in for systemd's notify or journal socket."""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import struct
import tempfile
import uuid
from pathlib import Path


class DatagramSink:
    """Binds a SOCK_DGRAM socket at a fresh short path (sun_path holds only 108
    bytes, pytest's tmp_path can be longer) or, with ``abstract=True``, at a fresh
    abstract name. ``address`` is what goes in NOTIFY_SOCKET ('@' = abstract)."""

    def __init__(self, *, abstract: bool = False) -> None:
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._dir: str | None = None
        if abstract:
            name = f"ocpp-twin-test-{uuid.uuid4().hex}"
            self._sock.bind("\0" + name)
            self.address = "@" + name
            self.path: Path | None = None
        else:
            self._dir = tempfile.mkdtemp(prefix="twin-sd-", dir="/tmp")
            self.path = Path(self._dir) / "sock"
            self._sock.bind(os.fspath(self.path))
            self.address = os.fspath(self.path)

    def recv(self, timeout: float = 5.0) -> bytes:
        """One datagram; a journald memfd entry is read back from its descriptor."""
        self._sock.settimeout(timeout)
        data, ancdata, _flags, _addr = self._sock.recvmsg(1 << 20, socket.CMSG_SPACE(struct.calcsize("i")))
        for level, kind, payload in ancdata:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                (fd,) = struct.unpack("i", payload[: struct.calcsize("i")])
                try:
                    os.lseek(fd, 0, os.SEEK_SET)
                    chunks = []
                    while chunk := os.read(fd, 1 << 16):
                        chunks.append(chunk)
                    return b"".join(chunks)
                finally:
                    os.close(fd)
        return data

    def recv_text(self, timeout: float = 5.0) -> str:
        return self.recv(timeout).decode("utf-8")

    async def arecv_text(self, timeout: float) -> str:
        """One datagram, awaited on the running event loop (for tests that also run a server)."""
        self._sock.setblocking(False)
        data = await asyncio.wait_for(asyncio.get_running_loop().sock_recv(self._sock, 1 << 20), timeout)
        return data.decode("utf-8")

    def pending(self) -> list[bytes]:
        """Every datagram already queued, without waiting."""
        out = []
        self._sock.setblocking(False)
        try:
            while True:
                out.append(self._sock.recv(1 << 20))
        except BlockingIOError:
            return out

    def close(self) -> None:
        self._sock.close()
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
