"""The link's side of the security transport: a plan per attempt, each outcome reported
(and awaited) before the link goes on, reconnect() after the reply that asked for it, and
on_invalid for every CSMS CALL refused with a CALLERROR. Against small websockets servers
on loopback that record what they get."""

from __future__ import annotations

import asyncio
import json

import websockets
from websockets.asyncio.server import serve

from tests.test_link_liveness import until
from twin.link import Link
from twin.security.transport import Attempt


class Recorder:
    """A CSMS that records each connection's Authorization header and every frame."""

    def __init__(self, refuse: set[str] | None = None):
        self.connections: list[str | None] = []
        self.frames: list[tuple[int, str]] = []  # (connection number, frame)
        self.closed: list[int] = []
        self.refuse = refuse or set()
        self.sockets: list = []

    def check(self, connection, request):
        auth = request.headers.get("Authorization")
        if auth in self.refuse:
            return connection.respond(401, "no\n")
        return None

    async def handler(self, ws):
        self.connections.append(ws.request.headers.get("Authorization"))
        n = len(self.connections)
        self.sockets.append(ws)
        try:
            async for frame in ws:
                self.frames.append((n, frame))
        except websockets.ConnectionClosed:
            pass
        self.closed.append(n)

    async def __aenter__(self):
        self.server = await serve(self.handler, "127.0.0.1", 0, subprotocols=["ocpp1.6"], process_request=self.check)
        self.url = f"ws://127.0.0.1:{self.server.sockets[0].getsockname()[1]}/CP1"
        return self

    async def __aexit__(self, *exc):
        self.server.close()
        await self.server.wait_closed()


def make_link(plan, **callbacks) -> Link:
    defaults = dict(on_up=lambda: None, on_down=lambda: None, on_call=lambda uid, action, payload: None,
                    on_result=lambda ref, payload: None, on_failed=lambda ref, reason: None)
    defaults.update(callbacks)
    return Link("ws://unused", "CP1", plan=plan, backoff_cap=30, keepalive_s=60, **defaults)


async def test_reconnect_sends_the_reply_first_then_connects_at_once_with_the_new_plan():
    async with Recorder() as csms:
        headers = {"Authorization": "Basic Q1AxOm9sZA=="}
        plans = []

        def plan():
            plans.append(dict(headers))
            return Attempt(csms.url, 1, headers=dict(headers))

        calls = []
        link = make_link(plan, on_call=lambda uid, action, payload: calls.append(uid))
        link.start()
        try:
            await until(lambda: len(csms.connections) == 1 and link.connected, 5, "the first connection")
            await csms.sockets[0].send(json.dumps([2, "cc-1", "ChangeConfiguration",
                                                   {"key": "AuthorizationKey", "value": "new-key-0123456789"}]))
            await until(lambda: calls, 5, "the call")
            headers["Authorization"] = "Basic Q1AxOm5ldw=="
            # What the runtime does on the core's A.Reconnect, right after the reply.
            link.reply("cc-1", {"status": "Accepted"})
            link.reconnect("AuthorizationKey changed")
            # No backoff (backoff_cap is 30 s): connected again within the wait below.
            await until(lambda: len(csms.connections) == 2 and link.connected, 5, "the reconnect")
        finally:
            await link.close()
    assert csms.frames[0] == (1, '[3,"cc-1",{"status":"Accepted"}]')  # the .conf went out first (A05.FR.06)
    assert 1 in csms.closed
    assert csms.connections == ["Basic Q1AxOm9sZA==", "Basic Q1AxOm5ldw=="]


async def test_a_failed_attempt_is_reported_and_a_fallback_is_tried_at_once():
    async with Recorder(refuse={"Basic bmV3"}) as csms:
        state = {"pending": True}
        outcome: list = []

        def plan():
            header = "Basic bmV3" if state["pending"] else "Basic b2xk"
            return Attempt(csms.url, 1, headers={"Authorization": header},
                           trying=frozenset({"key"}) if state["pending"] else frozenset())

        async def failed(attempt, exc):
            await asyncio.sleep(0.05)  # awaited: the next plan is made after this returns
            outcome.append(("failed", attempt.used_pending_key, type(exc).__name__))
            state["pending"] = False
            return True  # fall back now

        async def connected(attempt):
            await asyncio.sleep(0.05)
            outcome.append(("connected", attempt.used_pending_key))

        link = make_link(plan, on_connect_failed=failed, on_connected=connected,
                         on_up=lambda: outcome.append(("up",)))
        link.start()
        try:
            await until(lambda: ("up",) in outcome, 5, "the fallback connection")  # well before any backoff
        finally:
            await link.close()
    assert outcome == [("failed", True, "InvalidStatus"), ("connected", False), ("up",)]
    assert csms.connections == ["Basic b2xk"]


async def test_an_impossible_attempt_is_a_failure_without_network():
    reports = []
    link = make_link(lambda: Attempt("<no wss:// endpoint>", 2, problem="no wss:// endpoint for security profile 2"),
                     on_connect_failed=lambda attempt, exc: reports.append(str(exc)))
    link.backoff_cap = 0.05
    link.start()
    try:
        await until(lambda: len(reports) >= 2, 5, "two reports")
    finally:
        await link.close()
    assert reports[0] == "no wss:// endpoint for security profile 2"
    assert "no wss:// endpoint" in link.last_error


async def test_invalid_csms_calls_are_reported_redacted():
    async with Recorder() as csms:
        invalid: list[str] = []
        link = make_link(lambda: Attempt(csms.url, 0), on_invalid=invalid.append)
        link.start()
        try:
            await until(lambda: link.connected and csms.sockets, 5, "the connection")
            ws = csms.sockets[0]
            await ws.send(json.dumps([2, "g-1", "GetDiagnostics",
                                      {"location": "ftp://h/x", "retries": "ftp://u:hunter2hunter2@h/x"}]))
            await ws.send("not json")
            await ws.send(json.dumps([2, "r-1", "Reset", {"type": "Soft"}]))  # valid: not reported
            await until(lambda: len(invalid) >= 2, 5, "two reports")
            await asyncio.sleep(0.1)
        finally:
            await link.close()
    assert len(invalid) == 2
    assert invalid[0].startswith("TypeConstraintViolation: GetDiagnostics: retries")
    assert invalid[1] == "GenericError: frame is not valid JSON"
    assert "ftp://u:***@h/x" in invalid[0]  # jsonschema quoted the value: redacted
    assert not any("hunter2" in text for text in invalid)


async def test_a_fallback_that_leaves_the_plan_unchanged_backs_off():
    """A fallback step that changed nothing (the actor closed, the core failed, nothing was
    pending) and an attempt without network must not spin: never twice in a row at once
    with the same plan."""
    reports = []

    def failed(attempt, exc):
        reports.append(attempt)
        return True  # "fall back now", but the plan below does not change

    link = make_link(lambda: Attempt("<no wss:// endpoint>", 2, trying=frozenset({"profile"}),
                                     problem="no wss:// endpoint for security profile 2"),
                     on_connect_failed=failed)
    link.start()  # backoff_cap 30: the first backoff is 0.5-1 s
    try:
        await until(lambda: reports, 5, "the first report")
        await asyncio.sleep(0.3)
    finally:
        await link.close()
    assert len(reports) == 1  # a spinning link reports thousands in 0.3 s


async def test_a_fallback_that_changes_the_plan_is_tried_at_once_and_then_backs_off():
    reports = []
    plans = iter([("Basic bmV3", frozenset({"key"}))])

    def plan():
        header, trying = next(plans, ("Basic b2xk", frozenset()))
        return Attempt("ws://127.0.0.1:1/CP1", 1, headers={"Authorization": header}, trying=trying)

    def failed(attempt, exc):
        reports.append(attempt.headers["Authorization"])
        return True

    link = make_link(plan, on_connect_failed=failed)
    link.start()
    try:
        await until(lambda: len(reports) >= 2, 5, "the fallback attempt")  # at once: well before 0.5 s
        await asyncio.sleep(0.3)
    finally:
        await link.close()
    assert reports == ["Basic bmV3", "Basic b2xk"]  # then the same plan again: backoff


async def test_a_reconnect_during_the_handshake_closes_that_connection_and_plans_again():
    """reconnect() while an attempt is still in its handshake (no websocket yet): that
    attempt was planned with the old settings, so it is closed as soon as it is up (nothing
    committed or sent on it) and the link connects again with the new plan."""
    gate = asyncio.Event()
    arrived = asyncio.Event()
    requests: list[str | None] = []

    async def slow_first(connection, request):
        requests.append(request.headers.get("Authorization"))
        if len(requests) == 1:
            arrived.set()
            await gate.wait()  # the first upgrade hangs until the settings have changed
        return None

    async with Recorder() as csms:
        csms.server.close()
        await csms.server.wait_closed()
        csms.server = await serve(csms.handler, "127.0.0.1", 0, subprotocols=["ocpp1.6"], process_request=slow_first)
        url = f"ws://127.0.0.1:{csms.server.sockets[0].getsockname()[1]}/CP1"
        header = {"Authorization": "Basic b2xk"}
        connected, ups = [], []
        link = make_link(lambda: Attempt(url, 1, headers=dict(header)),
                         on_connected=lambda attempt: connected.append(attempt.headers["Authorization"]),
                         on_up=lambda: ups.append(link.attempt.headers["Authorization"]))
        link.start()
        try:
            await asyncio.wait_for(arrived.wait(), 5)
            header["Authorization"] = "Basic bmV3"  # the core's new settings
            await link.reconnect("AuthorizationKey changed")
            gate.set()
            await until(lambda: link.connected and len(requests) == 2, 5, "the connection with the new plan")
            await until(lambda: 1 in csms.closed, 5, "the stale connection closed")
        finally:
            await link.close()
    assert requests == ["Basic b2xk", "Basic bmV3"]
    assert connected == ["Basic bmV3"] and ups == ["Basic bmV3"]  # the stale one was never used
    assert link.attempt.headers["Authorization"] == "Basic bmV3"
