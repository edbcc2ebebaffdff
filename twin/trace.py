"""Wire traces: every OCPP-J frame the link sends or receives, as one JSON record each.

A record (docs/faults-and-traces.md)::

    {"n": 17, "t": "2025-01-01T12:00:00.123456+00:00", "mono": 1234.5678, "dir": "out",
     "conn": 1, "frame": [2, "...", "Heartbeat", {}], "fault": null}

``frame`` is the OCPP-J array as sent, or the raw text when it is not JSON (a garbled
frame). ``fault`` is the id of the fault rule that changed this frame (twin.faults), and
``do`` then says what it did; ``lost`` marks a frame network impairment lost (drop_rate,
half-open): it never reached the other side.

Secrets never reach a trace: each frame goes through twin.redact first (AuthorizationKey
values of ChangeConfiguration, passwords in URLs such as UpdateFirmware locations), the
same rules as every log line. Records are kept in a ring buffer (GET /api/trace?since=N),
written to an optional JSONL file, and handed to a ``publish(record)`` callback (the event
hub's "frame" events).

The file is written by a thread of its own (:class:`TraceFile`), never on the event loop: a
slow SD card, a full page cache or a pipe nobody reads must not stall the link and the core
behind it. Lines are flushed whenever the writer catches up, so a crash loses only what was
still queued; not fsynced: a trace is a diagnostic, not billing data. When the writer falls
more than ``FILE_QUEUE_MAX`` lines behind, lines are dropped (counted, and a ``gap`` record
written once it catches up) rather than held in memory without bound.
"""

from __future__ import annotations

import collections
import json
import logging
import os
import queue
import stat
import threading
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

from twin.redact import REDACTED, SECRET_KEY_NAMES, redact_text

log = logging.getLogger("twin.trace")

RING_SIZE = 5000


def redacted_frame(text: str | bytes) -> Any:
    """The frame as a trace holds it: the parsed OCPP-J array with secrets replaced by
    ``***``, or the redacted text when it is not JSON.

    Parsed first, redacted after: JSON may spell a secret with escapes
    (``"Authorization\\u004bey"``, ``"ftp\\u003a//user:pw@..."``) that no rule on the raw text
    sees. Every string is made valid Unicode too: a CSMS may send ``"\\ud800"`` (legal JSON
    text, no Unicode), and one such record must not break the file, /api/trace or the SSE
    stream."""
    if isinstance(text, (bytes, bytearray, memoryview)):
        text = bytes(text).decode("utf-8", errors="replace")
    try:
        parsed = json.loads(text)
    except (ValueError, RecursionError):
        return _safe(redact_text(text))
    try:
        return _clean(parsed)
    except RecursionError:  # absurdly deep nesting: keep the text, redacted
        return _safe(redact_text(text))


def _safe(text: str) -> str:
    return text.encode("utf-8", errors="replace").decode("utf-8")


def _clean(value: Any) -> Any:
    if isinstance(value, str):
        return _safe(redact_text(value))
    if isinstance(value, list):
        return [_clean(v) for v in value]
    if isinstance(value, dict):
        out = {_safe(str(k)): _clean(v) for k, v in value.items()}
        key = value.get("key")
        if isinstance(key, str) and key.casefold() in SECRET_KEY_NAMES and "value" in out:
            out["value"] = REDACTED  # ChangeConfiguration / GetConfiguration of AuthorizationKey
        return out
    return value


RING_MAX_CHARS = 16 * 2**20  # the ring also stays under ~16 MiB of frame text
SINCE_MAX = 1000  # records per trace_since answer; a reader asks again from ``next``
FILE_MAX_BYTES = 64 * 2**20  # then the file rotates to <file>.1 (one older file kept)
FILE_QUEUE_MAX = 10_000  # lines the file writer may fall behind before lines are dropped
FILE_CLOSE_WAIT_S = 5.0  # close() waits this long for the writer to write what is queued


class TraceFile:
    """The JSONL trace file, appended to by one writer thread from a bounded queue."""

    _STOP = object()

    def __init__(self, path: Path, *, max_bytes: int = FILE_MAX_BYTES, queue_max: int = FILE_QUEUE_MAX):
        self.path = path
        self.max_bytes = max_bytes
        self.dropped = 0  # lines lost because the writer was too far behind (reported in a gap record)
        self.failed: str | None = None  # why the writer stopped (a full disk...), once it has
        self._queue: queue.Queue = queue.Queue(maxsize=queue_max)
        self._lock = threading.Lock()
        # Opened here, on the caller's thread, so that a path that cannot be opened is the
        # caller's error at once (twin run logs it and runs without a trace).
        path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(path, "a", encoding="utf-8")  # noqa: SIM115 - owned by the writer thread
        # Rotation by size is for a regular file; a pipe or a device is never rotated.
        mode = os.fstat(self._file.fileno()).st_mode
        self._size: int | None = os.fstat(self._file.fileno()).st_size if stat.S_ISREG(mode) else None
        self._thread = threading.Thread(target=self._write_loop, name="twin-trace", daemon=True)
        self._thread.start()

    def put(self, line: str) -> None:
        """Queue one line; never blocks."""
        if self.failed is not None:
            return
        try:
            self._queue.put_nowait(line)
        except queue.Full:
            with self._lock:
                self.dropped += 1

    def flush(self, timeout: float = FILE_CLOSE_WAIT_S) -> bool:
        """Wait until every line queued so far is written and flushed; False on timeout."""
        done = threading.Event()
        try:
            self._queue.put(done, timeout=timeout)
        except queue.Full:
            return False
        return done.wait(timeout)

    def close(self, timeout: float = FILE_CLOSE_WAIT_S) -> None:
        """Write what is queued (waiting up to ``timeout``), then stop the writer."""
        try:
            self._queue.put(self._STOP, timeout=timeout)
        except queue.Full:
            log.error("trace file %s: the writer is stuck; %d queued line(s) not written", self.path,
                      self._queue.qsize())
            return
        self._thread.join(timeout)

    def _write_loop(self) -> None:
        f = self._file
        while True:
            item = self._queue.get()
            try:
                if item is self._STOP:
                    break
                if isinstance(item, threading.Event):
                    if f is not None:
                        f.flush()
                    item.set()
                    continue
                if f is None:
                    continue  # failed: drain the queue so put() and close() never wait on it
                with self._lock:
                    dropped, self.dropped = self.dropped, 0
                if dropped:
                    f.write(json.dumps({"gap": dropped, "t": datetime.now(timezone.utc).isoformat()}) + "\n")
                f.write(item)
                if self._queue.empty():
                    f.flush()
                if self._size is not None:
                    self._size += len(item)  # characters: bytes for the ASCII bulk of a trace
                    if self._size > self.max_bytes:
                        f = self._rotate(f)
                        self._size = 0
            except OSError as e:  # a full disk: the station carries on without its trace file
                log.error("trace file %s: cannot write (%s); tracing to the file stops", self.path, e)
                self.failed = str(e)
                try:
                    f.close()
                except OSError:
                    pass
                f = None
        if f is not None:
            try:
                f.close()
            except OSError as e:
                log.error("trace file %s: cannot close (%s)", self.path, e)

    def _rotate(self, f):
        f.close()
        self.path.replace(self.path.with_name(self.path.name + ".1"))
        return open(self.path, "a", encoding="utf-8")  # noqa: SIM115


class Tracer:
    def __init__(self, *, ring: int = RING_SIZE, file: Path | str | None = None,
                 publish: Callable[[dict], None] | None = None):
        self.ring: collections.deque[tuple[int, dict]] = collections.deque(maxlen=ring)  # (frame chars, record)
        self._ring_chars = 0
        self.next_n = 1
        self.publish = publish
        self.path: Path | None = None
        self._file: TraceFile | None = None
        if file is not None:
            self.open(file)

    def open(self, file: Path | str) -> None:
        """Append to ``file`` (a restarted station adds to the same trace; ``conn`` and
        ``mono`` tell the runs apart)."""
        self.close()
        self._file = TraceFile(Path(file))
        self.path = self._file.path

    def flush(self) -> bool:
        """Wait until the file holds every record so far (tests, ``twin trace`` after a run)."""
        return self._file.flush() if self._file is not None else True

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def record(self, direction: str, conn: int, text: str | bytes, *, fault: str | None = None,
               do: str | None = None, lost: bool = False) -> dict:
        rec: dict[str, Any] = {
            "n": self.next_n, "t": datetime.now(timezone.utc).isoformat(), "mono": round(time.monotonic(), 6),
            "dir": direction, "conn": conn, "frame": redacted_frame(text), "fault": fault,
        }
        if do is not None:
            rec["do"] = do
        if lost:
            rec["lost"] = True
        self.next_n += 1
        size = len(text) if isinstance(text, str) else len(bytes(text))
        if len(self.ring) == self.ring.maxlen:
            self._ring_chars -= self.ring[0][0]
        self.ring.append((size, rec))
        self._ring_chars += size
        while self._ring_chars > RING_MAX_CHARS and len(self.ring) > 1:
            self._ring_chars -= self.ring.popleft()[0]
        if self._file is not None:
            self._file.put(json.dumps(rec, separators=(",", ":"), ensure_ascii=False) + "\n")
        if self.publish is not None:
            try:
                self.publish(rec)
            except Exception:  # noqa: BLE001 - a subscriber's bug must not stop the link
                log.exception("publishing a trace record failed")
        return rec

    def since(self, since: int, limit: int = SINCE_MAX) -> dict:
        """Up to ``limit`` records numbered ``since`` or later still in the ring; ``next`` is
        the number to ask for next time (a reader that fell behind the ring sees a gap in ``n``)."""
        since = max(0, int(since))
        frames = []
        for _size, r in self.ring:
            if r["n"] >= since:
                frames.append(r)
                if len(frames) >= limit:
                    return {"next": frames[-1]["n"] + 1, "frames": frames}
        return {"next": max(since, self.next_n), "frames": frames}


def read_trace(path: Path | str) -> list[dict]:
    """The records of a JSONL trace file; a line that is not a record is skipped with a warning
    (the last line of a crashed run may be cut)."""
    out: list[dict] = []
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            line = line.strip()
            if not line:
                continue
            try:
                rec = json.loads(line)
            except ValueError:
                log.warning("%s:%d: not a JSON record; skipped", path, number)
                continue
            if isinstance(rec, dict) and isinstance(rec.get("gap"), int) and "dir" not in rec:
                log.warning("%s:%d: %d frame(s) missing here: the trace writer fell behind", path, number, rec["gap"])
                continue
            if isinstance(rec, dict) and rec.get("dir") in ("in", "out") and "frame" in rec:
                out.append(rec)
            else:
                log.warning("%s:%d: not a trace record; skipped", path, number)
    return out
