"""Timestamps in OCPP form. Pure helpers: the clock itself is always passed in."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone


def ts(when: datetime) -> str:
    """OCPP timestamp, UTC, with milliseconds (the iEVQC33 reports milliseconds)."""
    when = when.astimezone(timezone.utc)
    return when.strftime("%Y-%m-%dT%H:%M:%S.") + f"{when.microsecond // 1000:03d}Z"


def parse_ts(text: str | None) -> datetime | None:
    """Parse an ISO 8601 timestamp; naive times are taken as UTC. None for bad input."""
    if not text or not isinstance(text, str):
        return None
    try:
        when = datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
        if when.tzinfo is None:
            when = when.replace(tzinfo=timezone.utc)
        return when.astimezone(timezone.utc)
    except (ValueError, OverflowError):  # e.g. 9999-12-31T23:59:59-14:00 is past datetime.max in UTC
        return None


def next_aligned(now: datetime, interval_s: int) -> datetime:
    """The next instant strictly after ``now`` on the clock grid of ``interval_s`` seconds
    counted from midnight UTC (§9.1.2 ClockAlignedDataInterval: e.g. 900 => :00, :15, ...)."""
    midnight = now.replace(hour=0, minute=0, second=0, microsecond=0)
    elapsed = (now - midnight).total_seconds()
    k = int(elapsed // interval_s) + 1
    return midnight + timedelta(seconds=k * interval_s)
