"""Piecewise-constant limits over a time window ``[t0, t1)`` (epoch seconds).

* :func:`profile_segments` — where one profile is in force and with which limit;
* :func:`paint` — a stack: the highest layer in force wins, lower layers show through
  where higher ones are not in force (spec §3.13.2, errata 3.43);
* :func:`sweep` — the elementary intervals of several step functions at once.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Iterator, Sequence

from .model import RECURRING, Limit, Profile

Segment = tuple[int, int, Limit]  # [start, end) with a limit
Steps = list[tuple[int, Limit | None]]  # (start, value) holding until the next start or t1

_FOREVER = 1 << 62


def profile_segments(profile: Profile, t0: int, t1: int, anchor: int) -> list[Segment]:
    """The sorted, disjoint pieces of ``[t0, t1)`` in which ``profile`` sets a limit.

    ``anchor`` is where a Relative schedule starts: the transaction start, or the
    evaluation moment when there is no transaction.
    """
    lo = t0 if profile.valid_from is None else max(t0, profile.valid_from)
    hi = t1 if profile.valid_to is None else min(t1, profile.valid_to)
    if lo >= hi:
        return []
    out: list[Segment] = []
    if profile.kind == RECURRING:
        cycle = profile.recurrence
        origin = profile.start_schedule
        assert cycle is not None and origin is not None
        # Errata 3.44/3.45: periods beyond the recurrence length are cut off. Before the
        # first occurrence (startSchedule in the future) the profile is not in force.
        length = cycle if profile.duration is None else min(profile.duration, cycle)
        if hi <= origin:
            return []
        base = origin + max(0, (lo - origin) // cycle) * cycle
        while base < hi:
            _one_run(profile, base, length, lo, hi, out)
            base += cycle
    else:
        # No startSchedule = relative (Relative, or Absolute without one, spec §7.13).
        base = anchor if profile.start_schedule is None else profile.start_schedule
        _one_run(profile, base, profile.duration, lo, hi, out)
    return out


def _one_run(profile: Profile, base: int, length: int | None, lo: int, hi: int, out: list[Segment]) -> None:
    end = _FOREVER if length is None else base + length
    a, b = max(lo, base), min(hi, end)
    if a >= b:
        return
    periods = profile.periods
    index = max(0, bisect_right(profile.period_starts, a - base) - 1)
    while index < len(periods):
        period = periods[index]
        start = base + period.start
        if start >= b:
            break
        stop = base + periods[index + 1].start if index + 1 < len(periods) else _FOREVER
        s, e = max(a, start), min(b, stop)
        if s < e:
            out.append((s, e, (period.amps, period.phases)))
        index += 1


def paint(layers: Sequence[list[Segment]], t0: int, t1: int) -> Steps:
    """Overlay ``layers`` (highest priority first): each instant takes the value of the
    first layer that has a segment there, else None. Equal neighbours are merged."""
    free = [(t0, t1)]
    placed: list[Segment] = []
    for layer in layers:
        if not free:
            break
        if not layer:
            continue
        still_free: list[tuple[int, int]] = []
        i = 0
        for fs, fe in free:
            cursor = fs
            while i < len(layer) and layer[i][1] <= fs:
                i += 1
            j = i
            while j < len(layer) and layer[j][0] < fe:
                s, e, value = layer[j]
                a, b = max(s, cursor), min(e, fe)
                if a < b:
                    if a > cursor:
                        still_free.append((cursor, a))
                    placed.append((a, b, value))
                    cursor = b
                j += 1
            if cursor < fe:
                still_free.append((cursor, fe))
        free = still_free
    pieces: list[tuple[int, Limit | None]] = [(s, v) for s, _e, v in placed]
    pieces.extend((s, None) for s, _e in free)
    pieces.sort(key=lambda item: item[0])
    return merge_steps(pieces)


def merge_steps(pieces: list[tuple[int, Limit | None]]) -> Steps:
    steps: Steps = []
    for start, value in pieces:
        if steps and steps[-1][1] == value:
            continue
        steps.append((start, value))
    return steps


def sweep(functions: Sequence[Steps]) -> Iterator[tuple[int, list[Limit | None]]]:
    """Yield (start, [value of each function]) for every elementary interval, in order.
    Every function must start at the same t0."""
    starts = sorted({start for steps in functions for start, _ in steps})
    cursors = [0] * len(functions)
    current: list[Limit | None] = [steps[0][1] for steps in functions]
    for start in starts:
        for k, steps in enumerate(functions):
            c = cursors[k]
            while c + 1 < len(steps) and steps[c + 1][0] <= start:
                c += 1
            cursors[k] = c
            current[k] = steps[c][1]
        yield start, list(current)
