"""The fleet's automatic traffic: seeded random charging sessions on every member
(docs/fleet.md, "Traffic").

Per station, arrivals are a Poisson process at ``sessions_per_hour``: the gaps between them
are exponential. An arrival takes the lowest free connector (none free: the driver leaves,
counted as skipped, as in a loss system), plugs it, presents a tag drawn from the pool, and
after a drawn duration presents the tag again (the card that started a transaction stops it,
reason Local: OCPP 1.6 §3.4, §4.10) and unplugs. The car draws what the station offers (the member's simulated
EV, under the station's limits and any charging profile): the traffic only decides when.

Reproducible: station ``S`` under seed ``K`` draws from its own ``random.Random`` derived from
(K, S), in a fixed order per arrival (gap, duration, tag), whatever happens to the arrival
(served, skipped, failed). The schedule (:func:`schedule`) is therefore a pure function of
seed, station id, rate, mean duration and pool size, and never of event-loop timing.

Cheap: one scheduler task for the whole fleet over a heap of due times (10,000 stations are
10,000 heap entries, not 10,000 timers). Only while a station has an action to carry out does
a short-lived worker task run for it, so the station's actions stay in order (plug before
tap, tap before the stop) without blocking the scheduler on a slow member.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import logging
import math
import random
from collections import Counter, deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger("twin.fleet.traffic")

# idTags the loopback CSMS (twin.fleet.loopback) accepts, as it accepts every tag. A real CSMS
# may refuse a tag already in a transaction elsewhere (idTagInfo ConcurrentTx, OCPP 1.6 §7.2): give
# it a pool of at least as many tags as sessions run at once.
DEFAULT_TAGS = tuple(f"TRAFFIC-{i:02d}" for i in range(1, 9))
MAX_SESSIONS_PER_HOUR = 36_000.0  # 10 a second per station: far past what 2 connectors take
MAX_TAGS = 10_000
ID_TAG_MAX_LEN = 20  # an IdToken is a CiString20Type (OCPP 1.6 §7)
# The session length: lognormal with this shape around the mean, clipped to
# [mean * DURATION_CLIP[0], mean * DURATION_CLIP[1]]. The default mean is
# DEFAULT_MEAN_DURATION_S, or half the mean gap between arrivals when that is shorter, so
# that a station's connectors are free more often than not; never under the shortest mean
# allowed (above 1,800 sessions/h half the gap is under 1 s, and the connectors fill up).
DEFAULT_MEAN_DURATION_S = 1800.0
MEAN_DURATION_RANGE_S = (1.0, 86_400.0)
DURATION_SIGMA = 0.5
DURATION_CLIP = (0.25, 4.0)
ACTION_TIMEOUT_S = 30.0  # a member that does not answer a plug or tap in this long: failed
RETRY_S = 1.0  # how soon the end of a session on a member that is down is tried again
END_TRIES = 120  # then the session is given up (its member never came back)


@dataclass(frozen=True)
class Arrival:
    """One drawn session: ``at_s`` after the traffic (re)started, charging for ``duration_s``,
    with tag number ``tag`` of the pool."""

    n: int
    at_s: float
    duration_s: float
    tag: int


def default_mean_duration_s(sessions_per_hour: float) -> float:
    if sessions_per_hour <= 0:
        return DEFAULT_MEAN_DURATION_S
    return max(MEAN_DURATION_RANGE_S[0], min(DEFAULT_MEAN_DURATION_S, 0.5 * 3600.0 / sessions_per_hour))


def station_rng(seed: int, station_id: str) -> random.Random:
    # A str seed is hashed with SHA-512 (random.seed version 2): the same for every run and
    # Python process, unlike hash(), which PYTHONHASHSEED randomizes.
    return random.Random(f"ocpp-twin traffic/{seed}/{station_id}")


def schedule(seed: int, station_id: str, sessions_per_hour: float, mean_duration_s: float,
             pool_size: int) -> Iterator[Arrival]:
    """Station ``station_id``'s arrivals, forever. Draws per arrival, in this order: the gap
    (exponential, mean 3600/rate s), the duration (lognormal, mean ``mean_duration_s``
    before clipping) and the tag (uniform over the pool)."""
    check(sessions_per_hour, mean_duration_s, pool_size)
    if sessions_per_hour <= 0:
        return
    rng = station_rng(seed, station_id)
    rate_per_s = sessions_per_hour / 3600.0
    mu = math.log(mean_duration_s) - DURATION_SIGMA ** 2 / 2  # E[lognormal(mu, s)] = exp(mu + s^2/2)
    low, high = mean_duration_s * DURATION_CLIP[0], mean_duration_s * DURATION_CLIP[1]
    t = 0.0
    for n in itertools.count():
        t += rng.expovariate(rate_per_s)
        duration = min(high, max(low, rng.lognormvariate(mu, DURATION_SIGMA)))
        yield Arrival(n, t, duration, rng.randrange(pool_size))


def check(sessions_per_hour: float, mean_duration_s: float | None = None, pool_size: int | None = None) -> None:
    """ValueError for settings the traffic refuses."""
    if not (isinstance(sessions_per_hour, (int, float)) and math.isfinite(sessions_per_hour)
            and 0 <= sessions_per_hour <= MAX_SESSIONS_PER_HOUR):
        raise ValueError(f"sessions_per_hour: 0 (off) to {MAX_SESSIONS_PER_HOUR:g} per station, "
                         f"got {sessions_per_hour!r}")
    if mean_duration_s is not None and not (
            isinstance(mean_duration_s, (int, float)) and math.isfinite(mean_duration_s)
            and MEAN_DURATION_RANGE_S[0] <= mean_duration_s <= MEAN_DURATION_RANGE_S[1]):
        raise ValueError(f"mean_duration_s: {MEAN_DURATION_RANGE_S[0]:g} to {MEAN_DURATION_RANGE_S[1]:g} s, "
                         f"got {mean_duration_s!r}")
    if pool_size is not None and not 1 <= pool_size <= MAX_TAGS:
        raise ValueError(f"tags: 1 to {MAX_TAGS} idTags, got {pool_size}")


def check_tags(tags: Sequence[str]) -> tuple[str, ...]:
    tags = tuple(tags)
    check(0, None, len(tags))
    for tag in tags:
        if not isinstance(tag, str) or not tag or len(tag) > ID_TAG_MAX_LEN or not tag.isprintable():
            raise ValueError(f"tags: each an idTag of 1 to {ID_TAG_MAX_LEN} printable characters, got {tag!r}")
    if len(set(tags)) != len(tags):
        raise ValueError("tags: each idTag once")
    return tags


@dataclass
class _Session:
    cid: int
    tag: str
    rt: Any  # the member's Runtime that started it: another one at the end means it rebooted
    failed: str | None = None  # why it cannot complete, once known
    ended: bool = False
    end_tries: int = 0


@dataclass
class _Station:
    id: str
    arrivals: Iterator[Arrival] | None = None
    sessions: dict[int, _Session] = field(default_factory=dict)  # connector -> the session on it
    todo: deque = field(default_factory=deque)  # actions to carry out in order
    worker: asyncio.Task | None = None
    arriving: bool = False  # an arrival is queued or under way: the next ones are skipped (busy)


class Traffic:
    """The automatic sessions of one :class:`twin.fleet.fleet.Fleet`. ``configure`` starts,
    changes or (rate 0) stops them; ``snapshot`` is what GET /api/stations shows."""

    def __init__(self, fleet: Any, *, tags: Sequence[str] = DEFAULT_TAGS):
        self.fleet = fleet
        self.tags = check_tags(tags)
        self.rate = 0.0
        self.seed: int | None = None
        self.mean_duration_s: float | None = None
        self.counts: Counter[str] = Counter()  # started, completed, failed, skipped
        self.failures: Counter[str] = Counter()  # why sessions failed
        self.skips: Counter[str] = Counter()  # why arrivals were skipped
        self._stations: dict[str, _Station] = {}
        self._heap: list[tuple[float, int, str, str, Any]] = []  # (due, seq, kind, station, item)
        self._seq = itertools.count()
        self._epoch = 0  # arrivals of an earlier configuration are dropped when they come due
        self._t0 = 0.0
        self._task: asyncio.Task | None = None
        self._wake: asyncio.Event | None = None
        self._logged: set[str] = set()
        self._closed = False  # stop() ran: the fleet is stopping, the traffic never restarts

    # ------------------------------------------------------------------ control
    def configure(self, sessions_per_hour: float, *, seed: int | None = None, mean_duration_s: float | None = None,
                  tags: Sequence[str] | None = None) -> dict:
        """Start or change the traffic (the schedule restarts now from the seed); rate 0 stops
        it: no new arrivals, and the sessions under way end now (stop, unplug).

        ValueError for settings it refuses, RuntimeError once :meth:`stop` ran; either way
        nothing changed: the new settings and schedules are all checked and built first."""
        if self._closed:
            raise RuntimeError("the fleet is stopping: its traffic can no longer be started or changed")
        check(sessions_per_hour, mean_duration_s)
        new_tags = check_tags(tags) if tags is not None else self.tags
        rate = float(sessions_per_hour)
        if seed is not None:
            if isinstance(seed, bool) or not isinstance(seed, int):
                raise ValueError(f"seed: an integer, got {seed!r}")
            new_seed = seed
        else:  # keep the seed, or pick one (shown by snapshot(): a run can be repeated)
            new_seed = self.seed if self.seed is not None else random.randrange(2 ** 32)
        mean = float(mean_duration_s) if mean_duration_s is not None else default_mean_duration_s(rate)
        check(rate, mean, len(new_tags))
        firsts: dict[str, tuple[Iterator[Arrival], Arrival]] = {}
        if rate > 0:
            for sid in self.fleet.slots:
                arrivals = schedule(new_seed, sid, rate, mean, len(new_tags))
                firsts[sid] = (arrivals, next(arrivals))
        # Nothing below refuses: from here on the new configuration replaces the old one.
        loop = asyncio.get_running_loop()
        self._epoch += 1
        self.tags, self.rate, self.seed, self.mean_duration_s = new_tags, rate, new_seed, mean
        # The arrivals of the last configuration go; the sessions under way keep their end.
        self._heap = [e for e in self._heap if e[2] != "arrive"]
        now = self._t0 = loop.time()
        for sid in self.fleet.slots:
            st = self._stations.setdefault(sid, _Station(sid))
            if self.rate > 0:
                st.arrivals, first = firsts[sid]
                self._push_arrival(st, first)
            else:
                st.arrivals = None
                for session in st.sessions.values():
                    self._push(now, "end", sid, session)
        heapq.heapify(self._heap)
        if self._task is None or self._task.done():
            self._wake = asyncio.Event()
            self._task = asyncio.create_task(self._run(), name="fleet-traffic")
        self._wake.set()
        if self.rate > 0:
            log.warning("fleet traffic: %g sessions per station per hour, mean %.0f s, seed %d, %d tags",
                        self.rate, self.mean_duration_s, self.seed, len(self.tags))
        else:
            log.warning("fleet traffic stopped: the %d sessions under way end now",
                        sum(len(s.sessions) for s in self._stations.values()))
        return self.snapshot()

    async def stop(self) -> None:
        """Stop everything now (the fleet is stopping: its members stop their transactions).
        For good: a later :meth:`configure` raises, so nothing plugs into a stopping member."""
        self._closed = True  # before the first await: a POST in the stop's window is refused
        self._epoch += 1
        self.rate = 0.0
        self._heap.clear()
        tasks = [t for t in [self._task, *(s.worker for s in self._stations.values())] if t is not None]
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._task = None

    def snapshot(self) -> dict:
        active = sum(len(s.sessions) for s in self._stations.values())
        return {"sessions_per_hour": self.rate, "seed": self.seed, "mean_duration_s": self.mean_duration_s,
                "tags": len(self.tags), "running": self.rate > 0,
                "sessions": {"started": self.counts["started"], "completed": self.counts["completed"],
                             "failed": self.counts["failed"], "skipped": self.counts["skipped"], "active": active},
                "failures": dict(self.failures), "skips": dict(self.skips)}

    # ------------------------------------------------------------------ the one scheduler
    def _push(self, due: float, kind: str, sid: str, item: Any) -> None:
        entry = (due, next(self._seq), kind, sid, item)
        heapq.heappush(self._heap, entry)
        if self._heap[0] is entry and self._wake is not None:
            self._wake.set()  # now the first due: the scheduler may be asleep until a later one

    def _push_arrival(self, st: _Station, arrival: Arrival | None = None) -> None:
        if arrival is None:
            arrival = next(st.arrivals)
        self._push(self._t0 + arrival.at_s, "arrive", st.id, (self._epoch, arrival))

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            self._wake.clear()
            if not self._heap:
                await self._wake.wait()
                continue
            due = self._heap[0][0]
            if due > loop.time():
                try:
                    async with asyncio.timeout_at(due):
                        await self._wake.wait()  # a new configuration may bring an earlier entry
                except TimeoutError:
                    pass
                continue
            while self._heap and self._heap[0][0] <= loop.time():
                due, _seq, kind, sid, item = heapq.heappop(self._heap)
                try:
                    self._due(due, kind, sid, item)
                except Exception:  # noqa: BLE001 - one bad entry must not end every station's traffic
                    log.exception("fleet traffic: %s for %s failed", kind, sid)

    def _due(self, due: float, kind: str, sid: str, item: Any) -> None:
        st = self._stations[sid]
        if kind == "arrive":
            epoch, arrival = item
            if epoch != self._epoch:
                return
            self._push_arrival(st)  # the next one first: its draws never depend on this one's fate
            if st.arriving:
                # The last arrival is still queued or under way (a slow member: each action may
                # take ACTION_TIMEOUT_S): the driver leaves rather than the queue growing for good.
                self.counts["skipped"] += 1
                self.skips["busy"] += 1
                return
            st.arriving = True
            self._enqueue(st, ("arrive", due, arrival))
        else:
            if not item.ended:
                self._enqueue(st, ("end", item))

    def _enqueue(self, st: _Station, action: tuple) -> None:
        st.todo.append(action)
        if st.worker is None or st.worker.done():
            st.worker = asyncio.create_task(self._work(st), name=f"fleet-traffic-{st.id}")

    async def _work(self, st: _Station) -> None:
        while st.todo:
            action = st.todo.popleft()
            try:
                async with asyncio.timeout(ACTION_TIMEOUT_S):
                    if action[0] == "arrive":
                        try:
                            await self._arrive(st, action[1], action[2])
                        finally:
                            st.arriving = False
                    else:
                        await self._end(st, action[1])
            except Exception as e:  # noqa: BLE001 - a member's failure is counted, never raised
                self._trouble(f"{action[0]} on {st.id}", e)
                if action[0] == "end":
                    session = action[1]
                    session.failed = session.failed or "end"
                    self._retry_end(st, session)

    # ------------------------------------------------------------------ one station's actions
    def _member(self, sid: str) -> tuple[Any, str | None]:
        """The member's Runtime, or None and why it cannot take a session now."""
        rt = self.fleet.member(sid)
        if rt is None or rt.station is None or rt.actor is None:
            return None, "member down"
        if rt.station.registration.value != "Accepted":
            return None, "not registered"
        if rt.link is None or not rt.link.connected:
            return None, "offline"
        return rt, None

    async def _clear_left_cars(self, st: _Station, rt: Any) -> None:
        """Unplug the cars earlier sessions left behind on this station: a session of an
        earlier Runtime (the member rebooted, or the fleet process restarted: the boot stopped
        its transaction) whose car is still plugged, and a connector plugged with no
        transaction, no card waiting and no session of ours. Left there, such a car would hold
        its connector for good, and the next card presented would go to it (a card goes to
        the connector plugged and waiting for one: docs/station-behaviour.md)."""
        core = rt.station
        for cid in sorted(core.connectors):
            session = st.sessions.get(cid)
            if session is not None and session.rt is rt:
                continue  # a session of this Runtime: it ends when it is due
            c = core.connectors[cid]
            left = core.plugged(cid) and not core.in_transaction(cid) and c.pending is None and c.authorizing is None
            if left:
                await rt.unplug(cid)
            if session is not None:
                session.failed = session.failed or "interrupted"
                self._finish(st, session)

    def _free_connector(self, st: _Station, rt: Any) -> int | None:
        core = rt.station
        for cid in sorted(core.connectors):
            if cid not in st.sessions and core.is_free(cid) and core.usable(cid):
                return cid
        return None

    def _tag(self, st: _Station, rt: Any, drawn: int) -> str | None:
        """The drawn tag, or the next one of the pool not in use at this station: one card
        per running session, since presenting a card that started a transaction stops it."""
        used = {s.tag for s in st.sessions.values()} | {t for t, _p in rt.station.transaction_tags().values()}
        for k in range(len(self.tags)):
            tag = self.tags[(drawn + k) % len(self.tags)]
            if tag not in used:
                return tag
        return None

    async def _arrive(self, st: _Station, due: float, arrival: Arrival) -> None:
        rt, why = self._member(st.id)
        cid = None
        if rt is not None:
            await self._clear_left_cars(st, rt)
            cid = self._free_connector(st, rt)
            why = None if cid is not None else "no free connector"
        tag = self._tag(st, rt, arrival.tag) if cid is not None else None
        if rt is not None and cid is not None and tag is None:
            why = "no free tag"
        if why is not None:
            self.counts["skipped"] += 1
            self.skips[why] += 1
            return
        session = _Session(cid, tag, rt)
        st.sessions[cid] = session
        self._push(due + arrival.duration_s, "end", st.id, session)
        try:
            await rt.plug(cid)
        except Exception as e:  # noqa: BLE001
            self._trouble(f"plug on {st.id}", e)
            session.failed = "plug"
            return
        try:
            await rt.rfid(tag)
        except Exception as e:  # noqa: BLE001
            self._trouble(f"tap on {st.id}", e)
            session.failed = "tap"
            return
        self.counts["started"] += 1

    async def _end(self, st: _Station, session: _Session) -> None:
        if session.ended:
            return
        rt = self.fleet.member(st.id)
        if rt is None or rt.station is None or rt.actor is None:
            self._retry_end(st, session)  # rebooting: the car is unplugged once it is back
            return
        if rt is not session.rt:
            session.failed = session.failed or "interrupted"  # the reboot stopped its transaction
        core = rt.station
        if core.connectors[session.cid].authorizing is not None and rt is session.rt:
            self._retry_end(st, session)  # the card's Authorize is under way: end what it starts
            return
        running = any(tag == session.tag for tag, _p in core.transaction_tags().values())
        if running:
            await rt.rfid(session.tag)  # the card that started it stops it (reason Local)
        elif session.failed is None:
            session.failed = "no transaction"  # refused, never authorized, or stopped by the CSMS
        if core.plugged(session.cid):
            await rt.unplug(session.cid)
        self._finish(st, session)

    def _finish(self, st: _Station, session: _Session) -> None:
        session.ended = True
        if st.sessions.get(session.cid) is session:
            del st.sessions[session.cid]
        if session.failed is None:
            self.counts["completed"] += 1
        else:
            self.counts["failed"] += 1
            self.failures[session.failed] += 1

    def _retry_end(self, st: _Station, session: _Session) -> None:
        session.end_tries += 1
        if session.end_tries >= END_TRIES:
            session.failed = session.failed or "member down"
            self._finish(st, session)
            return
        self._push(asyncio.get_running_loop().time() + RETRY_S, "end", st.id, session)

    def _trouble(self, what: str, exc: BaseException) -> None:
        """Log the first failure of each kind; count them all (snapshot)."""
        kind = f"{what.split(' on ')[0]}: {type(exc).__name__}"
        if kind not in self._logged:
            self._logged.add(kind)
            log.warning("fleet traffic: %s failed: %s: %s (counted; further %s failures are not logged)",
                        what, type(exc).__name__, exc, kind)
