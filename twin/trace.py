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
written to an optional JSONL file (flushed per line, so a crash loses at most the line
being written; not fsynced: a trace is a diagnostic, not billing data), and handed to a
``publish(record)`` callback (the event hub's "frame" events).
"""

from __future__ import annotations

import collections
import json
import logging
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


class Tracer:
    def __init__(self, *, ring: int = RING_SIZE, file: Path | str | None = None,
                 publish: Callable[[dict], None] | None = None):
        self.ring: collections.deque[tuple[int, dict]] = collections.deque(maxlen=ring)  # (frame chars, record)
        self._ring_chars = 0
        self.next_n = 1
        self.publish = publish
        self.path: Path | None = None
        self._file = None
        if file is not None:
            self.open(file)

    def open(self, file: Path | str) -> None:
        """Append to ``file`` (a restarted station adds to the same trace; ``conn`` and
        ``mono`` tell the runs apart)."""
        self.close()
        self.path = Path(file)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 - kept open for the run

    def close(self) -> None:
        if self._file is not None:
            try:
                self._file.close()
            except OSError:
                pass
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
            try:
                line = json.dumps(rec, separators=(",", ":"), ensure_ascii=False) + "\n"
                self._file.write(line)
                self._file.flush()
                if self._file.tell() > FILE_MAX_BYTES:
                    self._rotate()
            except OSError as e:  # a full disk: the station carries on without its trace
                log.error("trace file %s: cannot write (%s); tracing to the file stops", self.path, e)
                self.close()
        if self.publish is not None:
            try:
                self.publish(rec)
            except Exception:  # noqa: BLE001 - a subscriber's bug must not stop the link
                log.exception("publishing a trace record failed")
        return rec

    def _rotate(self) -> None:
        path = self.path
        self.close()
        path.replace(path.with_name(path.name + ".1"))
        self.open(path)

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
            if isinstance(rec, dict) and rec.get("dir") in ("in", "out") and "frame" in rec:
                out.append(rec)
            else:
                log.warning("%s:%d: not a trace record; skipped", path, number)
    return out
