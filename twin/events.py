"""The station's event hub: a fan-out of small JSON-able events (``{"type": kind, "data": ...}``)
to whoever listens, the bench API's Server-Sent Events stream (``GET /api/events``) first.

Pure asyncio, for the event loop's thread only (no locks). Publishing never blocks and never
fails because of a listener: every subscriber has its own bounded queue, and a slow one loses
its *oldest* events, then reads one ``{"type": "overflow", "data": {"dropped": n}}`` marker where
the gap is, so a reader always knows that it missed something (and can re-read ``/api/state``).

Kinds published today: ``"state"`` (the ``/api/state`` dict after a core step, coalesced by
:meth:`EventHub.publish_latest`) and ``"frame"`` (one wire-trace record per OCPP-J frame).
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

log = logging.getLogger(__name__)

DEFAULT_QUEUE_SIZE = 256


class Subscription:
    """One listener's bounded queue. ``async for event in sub`` until :meth:`close` (or the hub's)."""

    def __init__(self, hub: EventHub, maxsize: int) -> None:
        if maxsize < 1:
            raise ValueError("a subscription needs room for at least one event")
        self._hub = hub
        self._queue: collections.deque[dict] = collections.deque()
        self._maxsize = maxsize
        self._dropped = 0
        self._closed = False
        self._wakeup: asyncio.Future[None] | None = None

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def dropped(self) -> int:
        """Events lost to overflow and not yet reported by a marker."""
        return self._dropped

    def _put(self, event: dict) -> None:
        if self._closed:
            return
        if len(self._queue) >= self._maxsize:
            self._queue.popleft()  # the slow reader loses the oldest, never the newest
            self._dropped += 1
        self._queue.append(event)
        self._wake()

    def _wake(self) -> None:
        if self._wakeup is not None and not self._wakeup.done():
            self._wakeup.set_result(None)

    def close(self) -> None:
        """End the iteration (what is still queued is dropped) and leave the hub."""
        if self._closed:
            return
        self._closed = True
        self._queue.clear()
        self._hub._subscribers.discard(self)
        self._wake()

    async def get(self) -> dict | None:
        """The next event, the overflow marker first after a loss; None once closed."""
        while True:
            if self._closed:
                return None
            if self._dropped:
                dropped, self._dropped = self._dropped, 0
                return {"type": "overflow", "data": {"dropped": dropped}}
            if self._queue:
                return self._queue.popleft()
            self._wakeup = asyncio.get_running_loop().create_future()
            try:
                await self._wakeup
            finally:
                self._wakeup = None

    def __aiter__(self) -> AsyncIterator[dict]:
        return self

    async def __anext__(self) -> dict:
        event = await self.get()
        if event is None:
            raise StopAsyncIteration
        return event

    async def __aenter__(self) -> Subscription:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()


class EventHub:
    """``publish(kind, data)`` to every current subscriber; ``subscribe()`` for an async iterator."""

    def __init__(self, queue_size: int = DEFAULT_QUEUE_SIZE) -> None:
        self.queue_size = queue_size
        self._subscribers: set[Subscription] = set()
        # publish_latest(): per kind, when it last published and the pending trailing publish.
        self._last_published: dict[str, float] = {}
        self._pending: dict[str, asyncio.TimerHandle] = {}

    @property
    def subscribers(self) -> int:
        return len(self._subscribers)

    def subscribe(self, maxsize: int | None = None) -> Subscription:
        sub = Subscription(self, self.queue_size if maxsize is None else maxsize)
        self._subscribers.add(sub)
        return sub

    def publish(self, kind: str, data: Any) -> None:
        """Hand ``data`` (JSON-able; listeners must not mutate it) to every subscriber. Never blocks."""
        if not self._subscribers:
            return
        event = {"type": kind, "data": data}
        for sub in tuple(self._subscribers):
            sub._put(event)

    def publish_latest(self, kind: str, make: Callable[[], Any], *, interval_s: float) -> None:
        """Publish ``make()`` as ``kind`` at most once per ``interval_s``, coalescing the calls in
        between into one trailing publish of the value at that time (the newest state, not a
        stale one). ``make`` is only called when someone listens, so an unwatched station pays
        nothing for it."""
        if not self._subscribers or kind in self._pending:
            return
        now = time.monotonic()
        wait = self._last_published.get(kind, -float("inf")) + interval_s - now
        if wait <= 0:
            self._publish_made(kind, make)
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # no loop (a synchronous caller): publish now rather than never
            self._publish_made(kind, make)
            return
        self._pending[kind] = loop.call_later(wait, self._trailing, kind, make)

    def _trailing(self, kind: str, make: Callable[[], Any]) -> None:
        self._pending.pop(kind, None)
        if self._subscribers:
            self._publish_made(kind, make)

    def _publish_made(self, kind: str, make: Callable[[], Any]) -> None:
        self._last_published[kind] = time.monotonic()
        try:
            data = make()
        except Exception:  # noqa: BLE001 - an observer must never break the step that fed it
            log.exception("event hub: building the %r event failed", kind)
            return
        self.publish(kind, data)

    def close(self) -> None:
        """End every subscription (their iterators stop) and drop pending coalesced publishes."""
        for handle in self._pending.values():
            handle.cancel()
        self._pending.clear()
        for sub in tuple(self._subscribers):
            sub.close()
