"""The core-level fuzzer in CI: a bounded run with a printed seed, and proof that every
invariant it checks can fail (each one against a station broken in exactly that way).

``TWIN_FUZZ_SEED`` picks the first seed (default fixed, so CI is repeatable),
``TWIN_FUZZ_CORE_EPISODES`` how many episodes (default 40, 10-45 s depending on the
machine). An episode is a pure function of its seed, so a fixed count makes the run, and
whether it reached its floors, the same on every machine; a wall-time budget made the depth
hang on the machine's speed (25 s once held 25 episodes and 745 CSMS calls on a slow CI
runner, against 100 episodes here). A longer run is
``.venv/bin/python -m tests.fuzz core --seconds 600``.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

from tests.fuzz.core_fuzz import Episode, run_core, run_episode, shrink
from twin.core import actions as A
from twin.core.station import Station

SEED = int(os.environ.get("TWIN_FUZZ_SEED", "20261201"))
EPISODES = int(os.environ.get("TWIN_FUZZ_CORE_EPISODES", "40"))


@pytest.fixture
def fast_dir() -> Iterator[Path]:
    """Episodes' stores on tmpfs when there is one: the store fsyncs every batch."""
    shm = Path("/dev/shm")
    path = Path(tempfile.mkdtemp(prefix="twin-fuzz-", dir=shm if shm.is_dir() and os.access(shm, os.W_OK) else None))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


async def test_core_fuzz_fixed_episodes(fast_dir) -> None:
    print(f"core fuzz seed {SEED}, {EPISODES} episodes (rerun: .venv/bin/python -m tests.fuzz core --seed {SEED} "
          f"--episodes {EPISODES}; one failing seed alone: --seed N --episodes 1)")
    report = await run_core(SEED, episodes=EPISODES, workroot=fast_dir)
    print(report.summary())
    assert not report.violations, report.summary()
    # The run must have gone deep enough to mean something.
    assert report.episodes >= 20, report.summary()
    assert report.stats["transactions-confirmed"] >= 100, report.summary()
    assert report.stats["relay-closed"] >= 100, report.summary()
    assert sum(v for k, v in report.stats.items() if k.startswith("csms:")) >= 1000, report.summary()


# ---------------------------------------------------------------------- broken stations
EVENTS = ("boot", "link_up", "link_down", "call_result", "call_failed", "call_timed_out", "csms_call", "plug",
          "unplug", "tap", "fault", "clear_fault", "meter_reading", "meter_failed", "tick", "clock_stepped",
          "stop_all")


def broken(transform: Callable[[Any, str, tuple, list], list]) -> type:
    """A Station whose every event's actions pass through ``transform(station, name, args, actions)``."""

    class Broken(Station):
        pass

    for name in EVENTS:
        if not hasattr(Station, name):
            continue

        def method(self, *args, _name=name):
            return transform(self, _name, args, list(getattr(Station, _name)(self, *args)))

        setattr(Broken, name, method)
    return Broken


def stuck_deadline() -> type:
    class StuckDeadline(Station):  # a deadline that tick() never consumes: the spin of a hung loop
        def tick(self, now):
            self.fuzz_last_tick = now
            return super().tick(now)

        def next_deadline(self):
            return getattr(self, "fuzz_last_tick", None) or super().next_deadline()

    return StuckDeadline


def refused_batch(st, name, args, acts):
    return acts + [A.Persist([("no_such_op", 1)])] if name == "boot" else acts


def raising(st, name, args, acts):
    if name == "csms_call" and args[1] == "TriggerMessage":
        raise RuntimeError("broken station")
    return acts


def slow(st, name, args, acts):
    if name == "tick":
        time.sleep(1.0)
    return acts


def closes_first(st, name, args, acts):
    return [a for a in acts if isinstance(a, A.SetRelay) and a.closed] + \
        [a for a in acts if not (isinstance(a, A.SetRelay) and a.closed)]


def replies_first(st, name, args, acts):
    replies = [a for a in acts if isinstance(a, A.Reply)]
    return replies + [a for a in acts if not isinstance(a, A.Reply)]


def no_reply(st, name, args, acts):
    return [a for a in acts if not isinstance(a, A.Reply)] if name == "csms_call" else acts


def bad_status(st, name, args, acts):
    return [A.Send(a.ref, a.action, dict(a.payload, status="Broken")) if isinstance(a, A.Send)
            and a.action == "StatusNotification" else a for a in acts]


def second_stop(st, name, args, acts):
    extra = [A.Send(10**9 + a.ref, a.action, dict(a.payload, reason="Other")) for a in acts
             if isinstance(a, A.Send) and a.action == "StopTransaction"]
    return acts + extra


def unknown_id(st, name, args, acts):
    return [A.Send(a.ref, a.action, dict(a.payload, transactionId=424242)) if isinstance(a, A.Send)
            and a.action == "StopTransaction" else a for a in acts]


def lost_stop(st, name, args, acts):
    return [a for a in acts if not (isinstance(a, A.Send) and a.action == "StopTransaction")]


def resent_start(st, name, args, acts):
    sent = st.__dict__.setdefault("fuzz_sent", {})
    for a in acts:
        if isinstance(a, A.Send):
            sent[a.ref] = a
    if name == "call_result" and getattr(sent.get(args[0]), "action", None) == "StartTransaction":
        acts = acts + [A.Send(10**9 + args[0], "StartTransaction", sent[args[0]].payload)]
    return acts


@pytest.mark.parametrize("station, kind", [
    (stuck_deadline(), "deadline"),
    (broken(refused_batch), "store-refused"),
    (broken(raising), "exception"),
    (broken(slow), "hang"),
    (broken(closes_first), "relay-before-commit"),
    (broken(replies_first), "reply-before-commit"),
    (broken(no_reply), "reply-count"),
    (broken(bad_status), "schema"),
    (broken(second_stop), "stop-count"),
    (broken(unknown_id), "unknown-transaction"),
    (broken(lost_stop), "drain"),
    (broken(resent_start), "resent-after-confirm"),
], ids=lambda x: x if isinstance(x, str) else "")
async def test_each_invariant_catches_a_station_broken_that_way(station: type, kind: str, fast_dir) -> None:
    report = await run_core(SEED, episodes=3, steps=150, station_factory=station, hang_s=0.3, workroot=fast_dir,
                            out=None)
    assert kind in report.by_kind(), report.summary()


async def test_a_seed_replays_its_episode_exactly(fast_dir) -> None:
    first = await run_episode(SEED, workroot=fast_dir)
    again = await run_episode(SEED, workroot=fast_dir)
    assert first.events == again.events
    assert first.stats == again.stats
    replayed = await run_episode(SEED, events=first.events, workroot=fast_dir)
    generation_only = {"steps-in-session"}
    assert {k: v for k, v in replayed.stats.items() if k not in generation_only} == \
        {k: v for k, v in first.stats.items() if k not in generation_only}


async def test_shrinking_finds_the_short_story(fast_dir) -> None:
    # The A.1 shape: TriggerMessage(BootNotification) while the station's BootNotification
    # is unanswered, on a station broken to show it whatever the core does meanwhile.
    class BootDeadlineNeverConsumed(Station):
        def csms_call(self, unique_id, action, payload, now):
            if action == "TriggerMessage" and payload.get("requestedMessage") == "BootNotification":
                self.fuzz_stuck_at = now
            return super().csms_call(unique_id, action, payload, now)

        def next_deadline(self):
            stuck = getattr(self, "fuzz_stuck_at", None)
            return stuck if stuck is not None else super().next_deadline()

    trigger = ("csms", "TriggerMessage", {"requestedMessage": "BootNotification"})
    noise = [("meter", 1, 50.0, 7000.0), ("plug", 2), ("tap", "04A2B3C4"), ("answer", "ok", None)] * 10
    result = await run_episode(SEED, events=noise + [trigger] + noise + [("advance", 30)],
                               station_factory=BootDeadlineNeverConsumed, workroot=fast_dir)
    (violation,) = [v for v in result.violations if v.kind == "deadline"]
    events = await shrink(violation, station_factory=BootDeadlineNeverConsumed, workroot=fast_dir)
    assert trigger in events and len(events) <= 3, events


def test_episode_draws_do_not_depend_on_the_steps_argument(tmp_path) -> None:
    a, b = Episode(7, tmp_path), Episode(7, tmp_path, steps=5)
    assert (a.start_at, a.overrides, a.fixed_cable) == (b.start_at, b.overrides, b.fixed_cable)
