"""A minimal central system for many stations at once, on loopback: the fleet's tests and
``bench/bench_fleet.py`` point a whole fleet at it. (``twin.csms.server.Csms`` serves one
charge point at a time and refuses a second identity with 409, by design: it is the
single-station test CSMS.)

It answers every CALL at once with the smallest valid ``.conf`` (OCPP 1.6 §4, §5): Accepted
boots and authorizations, a fresh transactionId per StartTransaction. It keeps only counts
per station (boots, connections, calls per action), so a thousand chatty stations cost it
little.

With ``ledger=True`` (the fleet crash test, the bench's kill -9 row) it also keeps, per
station, every transaction message with the number of the connection it came on, and answers
a repeated StartTransaction (same connector, idTag, timestamp and meterStart) with the
transactionId it gave the first copy: a station delivers at least once (OCPP 1.6 §3.7: a
message whose confirmation was lost with the connection is sent again), and a central
system must take the second copy as the same transaction."""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
from collections import Counter, defaultdict
from datetime import datetime, timezone

from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed

log = logging.getLogger("twin.fleet.loopback")

SUBPROTOCOL = "ocpp1.6"
CALL, RESULT, ERROR = 2, 3, 4
TX_ACTIONS = ("StartTransaction", "MeterValues", "StopTransaction")


def start_key(payload: dict) -> str:
    """What makes two StartTransactions the same transaction sent twice."""
    return json.dumps([payload.get("connectorId"), payload.get("idTag"), payload.get("timestamp"),
                       payload.get("meterStart")])


class LoopbackCsms:
    def __init__(self, host: str = "127.0.0.1", port: int = 0, *, heartbeat_interval: int = 30,
                 record: bool = False, ledger: bool = False):
        self.host, self.port = host, port
        # record: keep every CALL as (station, action, payload), for tests; the bench keeps counts only.
        self.records: list[tuple[str, str, object]] | None = [] if record else None
        self.heartbeat_interval = heartbeat_interval
        self.boots: Counter[str] = Counter()  # BootNotifications answered Accepted, per station
        self.connections: Counter[str] = Counter()
        self.calls: defaultdict[str, Counter[str]] = defaultdict(Counter)  # station -> action -> count
        self.connected: set[str] = set()
        # ledger: station -> [(its connection number, action, payload)] of the transaction
        # messages; (station, start_key) -> the transactionId given to that StartTransaction.
        self.ledger: defaultdict[str, list[tuple[int, str, dict]]] | None = defaultdict(list) if ledger else None
        self.start_ids: dict[tuple[str, str], int] = {}
        self._tx_ids = itertools.count(1)
        self._server = None
        self._changed = asyncio.Event()

    @property
    def url(self) -> str:
        return f"ws://{self.host}:{self.port}/ocpp"

    async def start(self) -> None:
        # max_size: a station's frames are small; ping_interval None: the stations ping us.
        self._server = await serve(self._serve, self.host, self.port, subprotocols=[SUBPROTOCOL],
                                   ping_interval=None, max_size=1 << 20, backlog=4096,
                                   logger=logging.getLogger("twin.fleet.loopback.websockets"))
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None

    async def __aenter__(self) -> "LoopbackCsms":
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def wait_until(self, check, timeout: float, what: str) -> None:
        async with asyncio.timeout(timeout):
            while not check():
                self._changed.clear()
                await self._changed.wait()
        if not check():  # pragma: no cover
            raise AssertionError(what)

    def _notify(self) -> None:
        self._changed.set()

    async def _serve(self, ws: ServerConnection) -> None:
        path = ws.request.path if ws.request else ""
        cp_id = path.rstrip("/").rsplit("/", 1)[-1]
        self.connections[cp_id] += 1
        conn = self.connections[cp_id]
        self.connected.add(cp_id)
        self._notify()
        try:
            async for raw in ws:
                reply = self._answer(cp_id, raw, conn)
                if reply is not None:
                    await ws.send(reply)
        except ConnectionClosed:
            pass
        finally:
            # A newer connection of the same id may already be counted: connections per id
            # are counted, the set only says "some connection was seen closing".
            self.connected.discard(cp_id)
            self._notify()

    def _answer(self, cp_id: str, raw: str | bytes, conn: int = 0) -> str | None:
        try:
            msg = json.loads(raw)
        except ValueError:
            return None
        if not isinstance(msg, list) or len(msg) < 4 or msg[0] != CALL:
            return None  # a CALLRESULT/CALLERROR to a call we never make, or garbage
        uid, action, payload = msg[1], msg[2], msg[3]
        self.calls[cp_id][action] += 1
        if self.records is not None:
            self.records.append((cp_id, action, payload))
        if self.ledger is not None and action in TX_ACTIONS and isinstance(payload, dict):
            self.ledger[cp_id].append((conn, action, payload))
        now = datetime.now(timezone.utc).isoformat().replace("+00:00", "Z")
        accepted = {"status": "Accepted"}
        if action == "BootNotification":
            self.boots[cp_id] += 1
            conf = {"status": "Accepted", "currentTime": now, "interval": self.heartbeat_interval}
        elif action == "Heartbeat":
            conf = {"currentTime": now}
        elif action == "Authorize":
            conf = {"idTagInfo": accepted}
        elif action == "StartTransaction":
            if self.ledger is not None and isinstance(payload, dict):
                key = (cp_id, start_key(payload))
                if key not in self.start_ids:
                    self.start_ids[key] = next(self._tx_ids)
                tid = self.start_ids[key]
            else:
                tid = next(self._tx_ids)
            conf = {"transactionId": tid, "idTagInfo": accepted}
        elif action == "StopTransaction":
            conf = {"idTagInfo": accepted} if isinstance(payload, dict) and payload.get("idTag") else {}
        elif action == "DataTransfer":
            conf = {"status": "Accepted"}
        else:  # StatusNotification, MeterValues, *StatusNotification, SecurityEventNotification...
            conf = {}
        self._notify()
        return json.dumps([RESULT, uid, conf])
