"""The link hands the station what the CSMS sent in the order it arrived.

A CSMS may send the answer to our CALL and its own next CALL back to back (StartTransaction.conf
then RemoteStopTransaction for the new id; BootNotification.conf then TriggerMessage). The
result used to reach the station only when the sender task next ran, after the CALL: the
RemoteStop was Rejected for a transaction the station did not know yet.
"""

from __future__ import annotations

import asyncio
import json

import websockets

from twin.link import Link


async def test_a_result_followed_by_a_call_in_one_read_arrives_in_that_order():
    events: list[tuple] = []

    async def csms(ws):
        frame = json.loads(await ws.recv())  # the station's CALL
        await ws.send(json.dumps([3, frame[1], {"transactionId": 42, "idTagInfo": {"status": "Accepted"}}]))
        await ws.send(json.dumps([2, "rs-1", "RemoteStopTransaction", {"transactionId": 42}]))
        await asyncio.sleep(1.0)

    server = await websockets.serve(csms, "127.0.0.1", 0, subprotocols=["ocpp1.6"])
    port = server.sockets[0].getsockname()[1]
    up = asyncio.Event()
    link = Link(f"ws://127.0.0.1:{port}", "CP1", on_up=up.set, on_down=lambda: None,
                on_call=lambda uid, action, payload: events.append(("call", action)),
                on_result=lambda ref, payload: events.append(("result", ref)),
                on_failed=lambda ref, reason: events.append(("failed", ref)))
    link.start()
    try:
        await asyncio.wait_for(up.wait(), 5)
        link.send_call(7, "StartTransaction", {"connectorId": 1, "idTag": "T", "meterStart": 0,
                                               "timestamp": "2026-12-01T12:00:00Z"}, 5.0)
        for _ in range(50):
            if len(events) == 2:
                break
            await asyncio.sleep(0.05)
        assert events == [("result", 7), ("call", "RemoteStopTransaction")], events
    finally:
        await link.close()
        server.close()
        await server.wait_closed()
