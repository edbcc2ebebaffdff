"""The one owner of the station core: a single task, an inbound queue, ordered effects.

Every producer (link callbacks, the meter loop, the control API, the card reader, the
EV inputs, contactor supervision, firmware, shutdown) *posts* an event; only this task
ever calls the core. That gives three guarantees by construction:

* **No step is cancelled half-way.** A caller awaits a future that the actor resolves;
  a caller's timeout or cancellation ends its wait, never the step (the core has already
  changed its state; the hardware and the link must follow it).
* **Time is explicit.** The actor reads the clock once per event and passes it in. It
  waits for the next event *or* ``station.next_deadline()``, whichever comes first, and it
  always awaits, so a core that returned a stale deadline could not starve the event loop.
  Intervals survive wall-clock steps: the actor compares the wall clock with the monotonic
  clock and tells the core when the wall clock was stepped (NTP on a Pi without an RTC).
* **Ordered output channels.** Each event's :class:`~twin.core.effects.Effects` is
  executed as: contactor opens, one store commit (one fsync per event), outputs that
  energise, replies, sends, process control.

The storage-fault *policy* (a write failed: stop charging on unrecorded data) is the
core's (``Station.storage_failed``); the actor only reports what the store did and keeps
unsaved ops in memory, in order, retrying them until the disk takes them.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Callable, Protocol

from twin.core import actions as A
from twin.core.effects import Effects
from twin.store import StoreError, invalid_ops
from twin.redact import RedactingFilter, redact_op

log = logging.getLogger("twin.actor")
log.addFilter(RedactingFilter())  # its lines quote CSMS payloads and store ops

# A wall clock that disagrees with the monotonic clock by more than this has been stepped.
CLOCK_STEP_THRESHOLD_S = 2.0
# The longest the actor sleeps without looking at the clock (a backward step is noticed
# within this time even when no event and no deadline is due).
MAX_IDLE_S = 60.0
STORE_RETRY_S = 2.0
COMMIT_TIMEOUT_S = 10.0  # a commit that takes longer counts as failed (held, retried, station faulted)


class EffectsSink(Protocol):
    """What the adapters do with each channel (twin.runtime implements it)."""

    def drive(self, output: A.SetRelay | A.SetPilot) -> None: ...
    def reply(self, reply: A.Reply | A.ReplyError | A.Delegate) -> None: ...
    def send(self, call: A.Send) -> None: ...
    def control(self, request: A.Control) -> None: ...


@dataclass
class _Event:
    fn: Callable[..., Any]
    args: tuple
    done: asyncio.Future | None


class _Inbox:
    """The actor's queue: any number of producers on the loop, one consumer (the actor).
    An asyncio.Queue keeps three deques and an Event for what needs one deque and one
    waiter: about 3 KiB per station, 3 MiB in a fleet of a thousand."""

    __slots__ = ("_items", "_waiter")

    def __init__(self) -> None:
        self._items: collections.deque[_Event | None] = collections.deque()
        self._waiter: asyncio.Future | None = None

    def put_nowait(self, item: _Event | None) -> None:
        self._items.append(item)
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def empty(self) -> bool:
        return not self._items

    def qsize(self) -> int:
        return len(self._items)

    def get_nowait(self) -> _Event | None:
        """The oldest item; IndexError when there is none."""
        return self._items.popleft()

    async def get(self) -> _Event | None:
        """The oldest item, waiting for one. Cancelled while waiting, it takes nothing: every
        item stays queued for the next call."""
        while not self._items:
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        return self._items.popleft()


class CoreActor:
    def __init__(self, station: Any, store: Any, sink: EffectsSink, *, clock: Callable[[], datetime],
                 monotonic: Callable[[], float] = time.monotonic, detect_clock_steps: bool = True,
                 after_step: Callable[[], None] | None = None):
        self.station = station
        self.store = store
        self.sink = sink
        self.clock = clock
        self.monotonic = monotonic
        self.after_step = after_step
        # Off when the clock is a test's or a benchmark's own (it moves without monotonic time).
        self.detect_clock_steps = detect_clock_steps
        self.inbox = _Inbox()
        self.unsaved: list[list[tuple]] = []  # batches the disk refused for now, in commit order
        self.closed = False
        self.steps = 0
        self.commits = 0
        self.task: asyncio.Task | None = None
        self.last_iteration = monotonic()  # the runtime's watchdog checks the actor is turning
        self.held_replies: list = []  # replies whose state is not on disk yet (sent once it is)
        self._offset: float | None = None  # wall - monotonic, to notice clock steps
        self._next_retry: float | None = None
        self._recovered = False  # a backlog of held data was just saved

    # ------------------------------------------------------------------ producers
    def post(self, fn: Callable[..., Any], *args: Any) -> asyncio.Future | None:
        """Queue ``fn(*args, now)`` to run on the actor; returns its future (None once closed)."""
        if self.closed:
            log.debug("actor closed; ignoring %s", getattr(fn, "__name__", fn))
            return None
        done = asyncio.get_running_loop().create_future()
        self.inbox.put_nowait(_Event(fn, args, done))
        return done

    async def call(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Run ``fn(*args, now)`` on the actor and wait for its effects to be executed.
        Cancelling the caller does not cancel the step. None if the core failed or the
        actor is closed."""
        done = self.post(fn, *args)
        if done is None:
            return None
        return await asyncio.shield(done)

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> asyncio.Task:
        self.task = asyncio.create_task(self.run(), name="core-actor")
        return self.task

    async def close(self) -> None:
        """Finish the events already queued, then stop; later posts are ignored."""
        if self.closed:
            return
        self.closed = True
        self.inbox.put_nowait(None)
        if self.task is not None:
            try:
                await asyncio.wait_for(asyncio.shield(self.task), timeout=10)
            except asyncio.TimeoutError:
                log.error("core actor did not finish its queue in 10 s; cancelling it")
                self.task.cancel()

    async def run(self) -> None:
        while True:
            try:
                if not await self._iteration():
                    return
            except Exception:  # noqa: BLE001 - the actor must outlive any bug in one step
                log.exception("core actor: an iteration failed; going on")
            self.last_iteration = self.monotonic()
            # Always yield: even a core that kept a deadline in the past cannot spin the loop.
            await asyncio.sleep(0)

    async def _iteration(self) -> bool:
        """One turn: a due tick, then one queued event (or wait for one). False to stop."""
        timeout = self._wait_s()
        if timeout <= 0:
            # A due deadline never starves the inbox: the tick runs, then the next event
            # (asyncio.wait_for(get(), 0) would time out even with events queued).
            await self._step(_Event(self.station.tick, (), None))
            if self.inbox.empty():
                return True
            event = self.inbox.get_nowait()
        elif not self.inbox.empty():
            event = self.inbox.get_nowait()  # no wait: no timer, no task
        else:
            try:
                # asyncio.timeout rather than wait_for: no Task per wait (a fleet's thousand
                # actors would create one for every event). A timeout that races an arriving
                # event loses nothing: the event stays queued for the next turn.
                async with asyncio.timeout(timeout):
                    event = await self.inbox.get()
            except TimeoutError:
                await self._step(_Event(self.station.tick, (), None))
                return True
        if event is None:
            return False
        await self._step(event)
        return True

    async def _step(self, event: _Event) -> None:
        await self._retry_unsaved()
        await self._check_clock()
        await self._run_event(event)

    def _wait_s(self) -> float:
        waits = [MAX_IDLE_S]
        try:
            deadline = self.station.next_deadline()
        except Exception:  # noqa: BLE001 - a core bug: look again in a second
            log.exception("station core failed computing its next deadline")
            deadline = None
            waits.append(1.0)
        if deadline is not None:
            waits.append((deadline - self.clock()).total_seconds())
        if self.unsaved and self._next_retry is not None:
            waits.append(self._next_retry - self.monotonic())
        return max(0.0, min(waits))

    # ------------------------------------------------------------------ stepping
    async def _run_event(self, event: _Event) -> None:
        name = getattr(event.fn, "__name__", repr(event.fn))
        try:
            result = event.fn(*event.args, self.clock())
        except Exception:  # noqa: BLE001 - a core bug must not take the station down
            log.exception("station core failed handling %s%r", name, event.args[:3])
            result = None
        self.steps += 1
        if isinstance(result, list):
            result = Effects.of(result)
        if isinstance(result, Effects):
            await self.execute(result)
        if event.done is not None and not event.done.done():
            event.done.set_result(result)
        if self.after_step is not None:
            try:
                self.after_step()
            except Exception:  # noqa: BLE001
                log.exception("after-step hook failed")

    async def execute(self, fx: Effects) -> None:
        """Carry out one event's effects in channel order (twin.core.effects)."""
        for output in fx.safety:
            self._guard(self.sink.drive, output)
        committed = await self._commit(fx.persist)
        for output in fx.outputs:
            if isinstance(output, A.SetRelay) and output.closed and not committed:
                log.error("not closing contactor %s: its transaction is not on disk", output.connector_id)
                continue
            self._guard(self.sink.drive, output)
        if committed and not self.unsaved:
            for reply in fx.replies:
                self._guard(self.sink.reply, reply)
        else:
            # A reply never confirms what a power cut could lose: held until the data is on
            # disk. A CSMS that gave up by then ignores the late answer (§4.1.3 unique ids).
            self.held_replies.extend(fx.replies)
        for call in fx.sends:
            self._guard(self.sink.send, call)
        for request in fx.control:
            self._guard(self.sink.control, request)
        if not committed:
            # The store policy is the core's: it faults the station (charging stops).
            more = self._core(self.station.storage_failed)
            if more:
                await self.execute(more)
        else:
            await self._report_recovery()

    async def _report_recovery(self) -> None:
        if not self._recovered or self.unsaved:
            return
        self._recovered = False
        log.warning("store writable again; all held data saved")
        held, self.held_replies = self.held_replies, []
        for reply in held:
            self._guard(self.sink.reply, reply)
        more = self._core(self.station.storage_recovered)
        if more:
            await self.execute(more)

    def _core(self, fn: Callable[..., Effects], *args: Any) -> Effects | None:
        try:
            return fn(*args, self.clock())
        except Exception:  # noqa: BLE001
            log.exception("station core failed handling %s", getattr(fn, "__name__", fn))
            return None

    @staticmethod
    def _guard(fn: Callable[[Any], None], item: Any) -> None:
        try:
            fn(item)
        except Exception:  # noqa: BLE001 - one failing output must not stop the others
            log.exception("executing %s failed", type(item).__name__)

    # ------------------------------------------------------------------ the store
    async def _commit(self, ops: list[tuple]) -> bool:
        """One store transaction for the whole event. True when it is on disk."""
        if not ops:
            return True
        ops = self._drop_invalid(ops)
        if self.unsaved:
            await self._flush()
            if self.unsaved:  # order matters: never write past data still held in memory
                self.unsaved.append(ops)
                return False
        try:
            await self._apply(ops)
        except StoreError as e:
            log.error("store write failed, keeping the data in memory and retrying: %s", e)
            self.unsaved.append(ops)
            self._recovered = False
            self._next_retry = self.monotonic() + STORE_RETRY_S
            return False
        self.commits += 1
        return True

    async def _apply(self, ops: list[tuple]) -> None:
        """One commit, bounded: a hung SD card must not hold every later event (an unplug's
        contactor opening among them) for ever. A commit that took too long is held and
        retried like a failed one; ops are idempotent, so a late success does no harm."""
        try:
            await asyncio.wait_for(asyncio.shield(self.store.apply(ops)), timeout=COMMIT_TIMEOUT_S)
        except asyncio.TimeoutError:
            raise StoreError(f"store commit took longer than {COMMIT_TIMEOUT_S:g} s", retryable=True) from None

    @staticmethod
    def _drop_invalid(ops: list[tuple]) -> list[tuple]:
        """An op the store would refuse is a bug in the core, not an outage: log it loudly and
        save the rest of the event's data instead of refusing the whole batch."""
        bad = invalid_ops(ops)
        if not bad:
            return ops
        for index, problem in bad:
            log.critical("BUG: store op refused, not saved: %r: %s", redact_op(ops[index]), problem)
        skip = {index for index, _ in bad}
        return [op for i, op in enumerate(ops) if i not in skip]

    async def _flush(self) -> None:
        while self.unsaved:
            try:
                await self._apply(self.unsaved[0])
            except StoreError as e:
                log.debug("store still failing: %s", e)
                self._recovered = False
                self._next_retry = self.monotonic() + STORE_RETRY_S
                return
            self.unsaved.pop(0)
            self.commits += 1
            self._recovered = not self.unsaved  # a backlog was there and is now all on disk
        self._next_retry = None

    async def _retry_unsaved(self) -> None:
        if not self.unsaved or self._next_retry is None or self.monotonic() < self._next_retry:
            return
        await self._flush()
        await self._report_recovery()

    async def flush(self) -> bool:
        """Try once more to save what is held (shutdown). True when nothing is held."""
        await self._flush()
        return not self.unsaved

    # ------------------------------------------------------------------ the clock
    async def _check_clock(self) -> None:
        if not self.detect_clock_steps:
            return
        offset = self.clock().timestamp() - self.monotonic()
        if self._offset is None:
            self._offset = offset
            return
        step = offset - self._offset
        if abs(step) < CLOCK_STEP_THRESHOLD_S:
            # Slow drift (NTP slewing) is followed, never reported.
            self._offset = offset
            return
        self._offset = offset
        log.warning("wall clock stepped by %+.1f s; interval timers keep their remaining time", step)
        more = self._core(self.station.clock_stepped, step)
        if more:
            await self.execute(more)
