"""A link that dies silently: a half-open TCP connection, a CSMS that answers pings but not
a CALL, and the client keepalive when WebSocketPingInterval is 0.

The Link runs against the real CSMS on loopback, through a TCP proxy the test controls:
``freeze()`` makes the proxy swallow the bytes of the open connections both ways without
closing anything, which is what a half-open link looks like from the station (no FIN, no
RST; frames vanish). New connections through the proxy work again, so the station can
reconnect. The proxy also parses the client's websocket frames, to count its pings.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from twin.csms import Csms
from twin.csms.frames import NO_REPLY
from twin.link import Link
from websockets.frames import Opcode
from websockets.protocol import Protocol, Side, State


class ClientFrames:
    """The websocket frames a client sends, parsed with websockets' sans-I/O protocol once
    the HTTP upgrade request has gone by."""

    def __init__(self) -> None:
        self._head = bytearray()
        self._protocol: Protocol | None = None
        self.pings = 0

    def feed(self, data: bytes) -> None:
        if self._protocol is None:
            self._head += data
            end = self._head.find(b"\r\n\r\n")
            if end < 0:
                return
            data = bytes(self._head[end + 4:])
            self._protocol = Protocol(Side.SERVER, state=State.OPEN, max_size=None)
        self._protocol.receive_data(data)
        for frame in self._protocol.events_received():
            if frame.opcode is Opcode.PING:
                self.pings += 1


class Pair:
    def __init__(self) -> None:
        self.frozen = False
        self.client_frames = ClientFrames()
        self.server_to_client_delay_s = 0.0


class FreezingProxy:
    """A loopback TCP proxy in front of ``upstream``; see the module docstring."""

    def __init__(self, upstream_host: str, upstream_port: int) -> None:
        self.upstream = (upstream_host, upstream_port)
        self.pairs: list[Pair] = []
        self.server_to_client_delay_s = 0.0
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task] = set()
        self._writers: list[asyncio.StreamWriter] = []
        self.port = 0

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    @property
    def pings(self) -> int:
        return sum(pair.client_frames.pings for pair in self.pairs)

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for writer in self._writers:
            writer.transport.abort()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def freeze(self) -> None:
        """The open connections go half-open: nothing gets through, nothing is closed."""
        for pair in self.pairs:
            pair.frozen = True

    async def _accept(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        server_reader, server_writer = await asyncio.open_connection(*self.upstream)
        self._writers += [client_writer, server_writer]
        pair = Pair()
        pair.server_to_client_delay_s = self.server_to_client_delay_s
        self.pairs.append(pair)
        for coro in (self._pump(client_reader, server_writer, pair, pair.client_frames.feed),
                     self._pump(server_reader, client_writer, pair, None)):
            task = asyncio.create_task(coro)
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _pump(self, reader, writer, pair: Pair, inspect) -> None:
        to_client = inspect is None
        try:
            while data := await reader.read(65536):
                if pair.frozen:
                    continue  # swallowed, as by a dead route
                if inspect is not None:
                    inspect(data)
                if to_client and pair.server_to_client_delay_s:
                    await asyncio.sleep(pair.server_to_client_delay_s)
                writer.write(data)
                await writer.drain()
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            if not pair.frozen:
                writer.close()


class Recorder:
    """The Link's callbacks, in the order they came."""

    def __init__(self) -> None:
        self.events: list[tuple] = []

    def link(self, url: str, *, with_on_timeout: bool = True, **settings) -> Link:
        settings.setdefault("backoff_cap", 0.2)  # reconnect within 0.2 s
        return Link(
            url, "CP1",
            on_up=lambda: self.events.append(("up",)),
            on_down=lambda: self.events.append(("down",)),
            on_call=lambda uid, action, payload: self.events.append(("call", uid, action, payload)),
            on_result=lambda ref, payload: self.events.append(("result", ref, payload)),
            on_failed=lambda ref, reason: self.events.append(("failed", ref, reason)),
            on_timeout=(lambda ref: self.events.append(("timeout", ref))) if with_on_timeout else None,
            **settings)

    def count(self, name: str) -> int:
        return sum(1 for event in self.events if event[0] == name)

    def about(self, ref: int) -> list[tuple]:
        return [e for e in self.events if e[0] in ("result", "failed", "timeout") and e[1] == ref]


async def until(check, timeout: float, what: str) -> float:
    """Wait for ``check()``; return how long it took."""
    loop = asyncio.get_running_loop()
    start = loop.time()
    while not check():
        if loop.time() - start > timeout:
            raise TimeoutError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.01)
    return loop.time() - start


@contextlib.asynccontextmanager
async def proxied(csms: Csms):
    proxy = FreezingProxy(csms.host, csms.port)
    await proxy.start()
    try:
        yield proxy
    finally:
        await proxy.stop()


@contextlib.asynccontextmanager
async def running(link: Link, rec: Recorder):
    link.start()
    try:
        await until(lambda: rec.count("up") == 1, 5, "the link to come up")
        yield link
    finally:
        await link.close()


async def test_a_call_on_a_half_open_link_is_aborted_and_the_link_reconnects(csms, caplog):
    caplog.set_level(logging.WARNING, logger="twin.link")
    rec = Recorder()
    async with proxied(csms) as proxy, running(rec.link(proxy.url, keepalive_s=60, pong_timeout_s=0.3), rec) as link:
        proxy.freeze()
        link.send_call(1, "Heartbeat", {}, timeout=0.3)
        # Declared dead after the call timeout plus the bounded ping wait, long before the
        # keepalive (60 s) or TCP (minutes) would notice.
        took = await until(lambda: rec.count("down") == 1, 3, "the dead link to be dropped")
        assert 0.5 <= took < 1.5, took
        await until(lambda: rec.count("up") == 2 and csms.connection_count == 2, 3, "a reconnect")
        assert rec.about(1) == [], rec.events  # aborted with the link: no failure, no timeout
        assert not csms.calls("Heartbeat")  # the frozen proxy swallowed it
        assert any("is dead" in r.getMessage() and "after Heartbeat timed out" in r.getMessage()
                   for r in caplog.records), [r.getMessage() for r in caplog.records]
        # The new connection carries calls again.
        link.send_call(2, "Heartbeat", {}, timeout=2)
        await until(lambda: rec.about(2), 3, "the Heartbeat result")
        assert rec.about(2)[0][0] == "result"


async def test_a_call_the_csms_ignores_on_a_live_link_times_out(csms):
    csms.on("Heartbeat", lambda payload: NO_REPLY)
    rec = Recorder()
    async with running(rec.link(csms.url, keepalive_s=60, pong_timeout_s=0.5), rec) as link:
        link.send_call(7, "Heartbeat", {}, timeout=0.3)
        await until(lambda: rec.about(7), 3, "the call to end")
        assert rec.about(7) == [("timeout", 7)]
        await asyncio.sleep(0.3)
        assert rec.count("down") == 0 and link.connected and link.session == 1
        csms.on("Heartbeat", None)
        link.send_call(8, "Heartbeat", {}, timeout=2)
        await until(lambda: rec.about(8), 3, "the next call's result")
        assert rec.about(8)[0][0] == "result"


async def test_without_on_timeout_an_ignored_call_is_reported_as_failed(csms):
    csms.on("Heartbeat", lambda payload: NO_REPLY)
    rec = Recorder()
    async with running(rec.link(csms.url, with_on_timeout=False, keepalive_s=60, pong_timeout_s=0.5), rec) as link:
        link.send_call(3, "Heartbeat", {}, timeout=0.3)
        await until(lambda: rec.about(3), 3, "the call to end")
        assert rec.about(3) == [("failed", 3, "timeout")]


async def test_an_answer_that_comes_during_the_link_check_is_accepted(csms, caplog):
    """A slow link, not a dead one: the result reaches the station after the call timeout
    but before the pong; the CSMS processed the call, so it is a result, not a retry."""
    caplog.set_level(logging.INFO, logger="twin.link")
    rec = Recorder()
    async with proxied(csms) as proxy:
        proxy.server_to_client_delay_s = 0.1
        async with running(rec.link(proxy.url, keepalive_s=60, pong_timeout_s=1.5), rec) as link:
            proxy.pairs[-1].server_to_client_delay_s = 0.5
            link.send_call(4, "Heartbeat", {}, timeout=0.3)
            await until(lambda: rec.about(4), 3, "the call to end")
            assert rec.about(4)[0][0] == "result", rec.events
            assert rec.count("down") == 0
            assert any("came late" in r.getMessage() for r in caplog.records)


async def test_keepalive_pings_with_ping_interval_0_find_a_half_open_link(csms):
    rec = Recorder()
    async with proxied(csms) as proxy, \
            running(rec.link(proxy.url, ping_interval=0, keepalive_s=0.2, pong_timeout_s=0.3), rec):
        await asyncio.sleep(1.0)
        assert proxy.pings >= 3, proxy.pings  # about 5 in 1 s
        proxy.freeze()
        took = await until(lambda: rec.count("down") == 1, 3, "the dead link to be dropped")
        assert took < 0.2 + 0.3 + 0.4, took  # one interval plus the pong wait, with no call in flight
        await until(lambda: rec.count("up") == 2 and csms.connection_count == 2, 3, "a reconnect")
        assert not any(e[0] in ("failed", "timeout") for e in rec.events), rec.events


async def test_ping_interval_is_used_when_set_and_applies_to_the_open_connection(csms):
    rec = Recorder()
    async with proxied(csms) as proxy, running(rec.link(proxy.url, ping_interval=0, keepalive_s=60), rec) as link:
        await asyncio.sleep(0.5)
        assert proxy.pings == 0  # the 60 s keepalive has not come round yet
        link.ping_interval = 0.2  # what a ChangeConfiguration of WebSocketPingInterval does
        await asyncio.sleep(1.0)
        assert proxy.pings >= 3, proxy.pings
        assert rec.count("up") == 1  # same connection
