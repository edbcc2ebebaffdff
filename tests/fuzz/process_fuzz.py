"""Process-level fuzzer: a real ``twin run --sim`` process on loopback, for a bounded time.

The fuzzer is the station's whole world: a small websockets CSMS (``FuzzCsms``) that
answers the station's calls (mostly plainly; sometimes a CALLERROR, no answer, Pending,
Rejected, or a schema-valid but strange reply) and sends generated calls of every
CSMS-initiated action (``tests.fuzz.payloads``, URIs on loopback only), and a bench that
drives the control API (plug, unplug, cards, faults, the EV, network cuts) and pulls the
plug (SIGKILL, then a restart on the same data dir). A Reset the station accepts is
expected to restart the process (exit 75, or the re-exec of ``twin run``).

The bench also installs protocol fault rules (``POST /api/faults``: every ``do`` kind, both
directions, on one action or ``*``, with counts and probabilities) and removes them, and
impairs the network (``POST /api/network``: latency, jitter, drop_rate, half_open,
close_code). What a rule or an impairment explains is not a violation (``Disturbances``):
an unanswered call while an "in" silence/delay/garble rule or a lossy network was there, a
garbled or schema-breaking frame while a garble/invalid rule matched it, a resent
transaction message whose CALLRESULT a lossy network may have eaten. Everything else is
judged as before, and the final drain clears every rule and impairment first.

Invariants (the kind names appear in every report):

- ``died``: the process exited when nobody asked it to (75 after an accepted Reset is a restart).
- ``api``: ``GET /api/state`` did not answer within 1 s (outside a restart the fuzzer caused),
  or the control API answered 500 (the core raised).
- ``unanswered``: a CSMS call got no reply within 10 s on a connection that stayed up, while
  the station was not Rejected. ``internal-error``: a reply was CALLERROR InternalError
  (the runtime's answer when the core raised).
- ``reset-ignored``: an accepted Reset did not restart the station within 15 s.
- ``schema``: a frame of the station that its OCPP 1.6 schema refuses.
- ``latched-fault``: after the drain (bench faults cleared, ChangeAvailability(0, Operative))
  a connector is still Faulted or Unavailable.
- after the final drain (network up, plain answers, transactions stopped, the queue empty,
  SIGTERM): ``stop-count`` (each transactionId the CSMS gave has exactly one distinct
  StopTransaction), ``unknown-transaction``, ``lost-start`` (a session the control API
  showed never reached the CSMS), ``resent-after-confirm``, ``drain``.

What counts as "sent twice": a transaction message (StartTransaction, StopTransaction, a
queued MeterValues) whose content the CSMS already received may come again only if the
earlier copy was not answered with a CALLRESULT (a CALLERROR or no answer: the station must
retry, §3.7.1), or if it was the last transaction message on its connection (the
CALLRESULT may have been lost with the link or the process: at-least-once, §3.7). The CSMS
gives a repeated StartTransaction (same connector, idTag, timestamp, meterStart) the same
transactionId, as a real central system must for an at-least-once sender.

A seed fixes the sequence of choices (bench actions, calls, answers); the timing, and so the
interleaving with the station's own timers, is the machine's.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import shutil
import signal
import tempfile
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed

from tests.conftest import PYTHON, free_port, twin_process_env
from tests.fuzz.payloads import CSMS_ACTIONS, PayloadGen, World, canonical_json, validation_errors
from twin.faults import CALL_ERROR_CODES, STATION_ACTIONS
from twin.sim_client import SimClientError, request

TX_ACTIONS = ("StartTransaction", "StopTransaction", "MeterValues")
CHARGE_POINT_ID = "FUZZ-1"
TAGS = ("04A2B3C4", "TAG-0001", "TAG-0002", "ÄÖÜ-Karte-ß", "Z" * 20)
FAULT_CODES = ("GroundFailure", "HighTemperature", "OverCurrentFailure", "PowerMeterFailure")
CALL_WEIGHTS = {a: 1.0 for a in CSMS_ACTIONS} | {
    "RemoteStartTransaction": 4, "RemoteStopTransaction": 2.5, "TriggerMessage": 3, "ChangeConfiguration": 2,
    "SendLocalList": 2, "ReserveNow": 2, "SetChargingProfile": 2, "ChangeAvailability": 1.5, "Reset": 0.3}
# Set by the CSMS at the first registration, so that an unanswered call, a retry and a
# sample come within seconds in a bounded run.
FAST_KEYS = {"MessageTimeout": "3", "TransactionMessageRetryInterval": "1", "MeterValueSampleInterval": "5",
             "MeterValuesSampledData": "Energy.Active.Import.Register",
             "StopTxnSampledData": "Energy.Active.Import.Register"}
API_DEADLINE_S = 1.0
CALL_TIMEOUT_S = 10.0
RESTART_GRACE_S = 15.0
# Fault rules and impairment (docs/faults-and-traces.md). Delays and latency stay below
# MessageTimeout (FAST_KEYS: 3 s) round trip, so that they slow the station without looking
# like silence; what does look like silence is forgiven only while it could cause it.
IN_KINDS = ("reply", "callerror", "silence", "delay", "duplicate", "garble", "invalid")
OUT_KINDS = ("delay", "duplicate", "garble", "invalid", "drop")
LET_THROUGH = ("delay", "duplicate", "garble", "invalid")  # "in": the core still handles the call
RULE_ERROR_CODES = tuple(sorted(CALL_ERROR_CODES - {"InternalError"}))  # InternalError: the core raised
DISTURBANCE_GRACE_S = 4.0  # what a rule or impairment did may still arrive this long after it went
MAX_RULES = 6


@dataclass
class ProcViolation:
    kind: str
    seed: int
    at_s: float
    message: str

    def __str__(self) -> str:
        return f"[{self.kind}] seed {self.seed} at {self.at_s:.1f} s: {self.message}"


@dataclass
class ProcessReport:
    seed: int
    seconds: float = 0.0
    violations: list[ProcViolation] = field(default_factory=list)
    stats: Counter = field(default_factory=Counter)
    log_dir: Path | None = None

    def summary(self) -> str:
        s = self.stats
        lines = [f"process fuzz seed {self.seed}: {self.seconds:.1f} s, {s['csms-calls']} CSMS calls, "
                 f"{s['bench']} bench actions, {s['kills']} power cuts, {s['resets']} resets, "
                 f"{s['connections']} connections, {s['transactions']} transactions, "
                 f"{s['availability-restored']} returns to service, "
                 f"state polls {s['polls']} (slowest {s['slowest-poll-ms']} ms)"
                 + (f"; run {s['extended-s']} s past its budget for coverage" if s["extended-s"] else "")]
        lines.append("  call outcomes: " + ", ".join(f"{k[8:]} {v}" for k, v in sorted(s.items())
                                                       if k.startswith("outcome:")))
        lines.append("  calls answered: " + ", ".join(f"{k[6:]} {v}" for k, v in sorted(s.items())
                                                        if k.startswith("reply:")))
        lines.append("  fault rules: " + (", ".join(f"{k[11:]} {v}" for k, v in sorted(s.items())
                                                     if k.startswith("fault-rule:")) or "none")
                     + f"; removed {s['fault-rules-removed']}, cleared {s['fault-rules-cleared']}; impairment: "
                     + (", ".join(f"{k[11:]} {v}" for k, v in sorted(s.items()) if k.startswith("impairment:"))
                        or "none"))
        by_kind: dict[str, list[ProcViolation]] = defaultdict(list)
        for v in self.violations:
            by_kind[v.kind].append(v)
        for kind, vs in sorted(by_kind.items()):
            lines.append(f"  VIOLATION {kind} ({len(vs)}): " + str(vs[0]).replace("\n", "\n    "))
        if not self.violations:
            lines.append("  no violation")
        else:
            lines.append(f"  rerun: .venv/bin/python -m tests.fuzz process --seed {self.seed} --seconds "
                         f"{round(self.seconds)} --keep   (logs: {self.log_dir})")
        return "\n".join(lines)


@dataclass
class TxMsg:
    conn: int
    action: str
    key: str
    payload: dict
    answer: str = "none"  # result | error | none
    maybe_lost: bool = False  # its CALLRESULT went out while the network could lose it


@dataclass
class Disturbance:
    what: str  # "rule" or an impairment: "drop", "half_open", "latency", "close"
    began: float
    ended: float | None = None  # None: still there
    conn: int | None = None  # impairment: the CSMS connection it began on (half_open ends with it)
    direction: str | None = None
    on: str | None = None
    do: str | None = None
    rule_id: str | None = None

    def overlaps(self, t0: float, t1: float) -> bool:
        return self.began <= t1 and (self.ended is None or self.ended + DISTURBANCE_GRACE_S >= t0)


class Disturbances:
    """What the bench did on purpose, and when: the fault rules it installed and the network
    impairment it set, as intervals. A rule counts from its POST until it is removed (or the
    process that held it died); a count used up early only makes the interval too long,
    which forgives more, never less."""

    def __init__(self) -> None:
        self.items: list[Disturbance] = []

    def begin(self, what: str, **fields: Any) -> Disturbance:
        item = Disturbance(what, time.monotonic(), **fields)
        self.items.append(item)
        return item

    def end(self, item: Disturbance) -> None:
        if item.ended is None:
            item.ended = time.monotonic()

    def end_all(self, what: str | None = None) -> None:
        for item in self.items:
            if what is None or item.what == what:
                self.end(item)

    def live(self, what: str) -> list[Disturbance]:
        return [i for i in self.items if i.what == what and i.ended is None]

    def rule(self, t0: float, t1: float, direction: str, action: str | None, kinds: tuple[str, ...]) -> bool:
        """A rule of one of ``kinds`` matching ``action`` (None: any action) was there in [t0, t1]."""
        return any(i.what == "rule" and i.direction == direction and i.do in kinds
                   and (action is None or i.on in ("*", action)) and i.overlaps(t0, t1) for i in self.items)

    def lossy(self, t0: float, t1: float) -> bool:
        """The network could lose or hold back a frame in [t0, t1]."""
        return any(i.what in ("drop", "half_open", "close") and i.overlaps(t0, t1) for i in self.items)


class FuzzCsms:
    """A websockets CSMS that records every frame, answers the station and sends calls."""

    def __init__(self, fuzz: "ProcessFuzz", rng: random.Random):
        self.fuzz = fuzz
        self.rng = rng
        self.server = None
        self.port = 0
        self.ws: ServerConnection | None = None
        self.conn = 0
        self.frames: list[tuple[int, str, str]] = []  # (connection, "in"/"out", raw)
        self.pending: dict[str, asyncio.Future] = {}
        self.sent_actions: dict[str, str] = {}
        self.tx_log: list[TxMsg] = []
        self.start_ids: dict[str, int] = {}
        self.next_tid = 5000
        self.registration = "None"  # what this CSMS last answered to BootNotification
        self.plain = False  # final drain: answer everything plainly
        self.configured = False
        self.configured_done = False  # FAST_KEYS are in: fault rules may go in from now on
        self.uids = 0
        self.answered: dict[tuple[int, str], list | None] = {}  # (connection, message id) -> our answer
        self.last_entry: TxMsg | None = None  # the ledger entry of the call _answer just answered

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ocpp"

    async def start(self) -> None:
        self.server = await serve(self._serve, "127.0.0.1", 0, subprotocols=["ocpp1.6"])
        self.port = self.server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()

    async def _serve(self, ws: ServerConnection) -> None:
        self.conn += 1
        self.fuzz.stats["connections"] += 1
        for item in self.fuzz.disturbances.live("half_open"):
            self.fuzz.disturbances.end(item)  # the next connection is healthy
        previous, self.ws = self.ws, ws
        if previous is not None:
            asyncio.ensure_future(previous.close(1000, "replaced"))
        conn = self.conn
        if not self.plain and self.rng.random() < 0.15:
            # Some CSMSs trigger a BootNotification as their first frame on a new connection,
            # while the station's own BootNotification is still unanswered.
            asyncio.ensure_future(self.call("TriggerMessage", {"requestedMessage": "BootNotification"}, 5))
        try:
            async for raw in ws:
                self.frames.append((conn, "in", raw if isinstance(raw, str) else raw.decode("utf-8", "replace")))
                await self._receive(ws, conn, raw)
        except ConnectionClosed:
            pass
        finally:
            if self.ws is ws:
                self.ws = None
            for uid, fut in list(self.pending.items()):
                if not fut.done():
                    fut.set_result(("closed", None))

    async def _send_later(self, ws: ServerConnection, conn: int, msg: list, delay: float) -> None:
        await asyncio.sleep(delay)
        await self._send(ws, conn, msg)

    async def _send(self, ws: ServerConnection, conn: int, msg: list) -> None:
        raw = json.dumps(msg)
        self.frames.append((conn, "out", raw))
        try:
            await ws.send(raw)
        except ConnectionClosed:
            pass

    async def _receive(self, ws: ServerConnection, conn: int, raw: Any) -> None:
        now = time.monotonic()
        dist = self.fuzz.disturbances
        try:
            msg = json.loads(raw)
            kind = msg[0]
        except (ValueError, TypeError, IndexError):
            # A garble rule in either direction sends text that is no JSON (a CALL, or the
            # answer to one of our calls).
            if not (dist.rule(now, now, "out", None, ("garble",)) or dist.rule(now, now, "in", None, ("garble",))):
                self.fuzz.violation("schema", f"not an OCPP-J frame: {str(raw)[:200]}")
            return
        if kind == 2:
            _, uid, action, payload = msg
            if (conn, uid) in self.answered:
                # The same message id again (do = duplicate, or a bug): a CSMS acts once and
                # may answer the copy the same way (OCPP-J §4.1.2 message ids).
                again = self.answered[(conn, uid)]
                if again is not None:
                    await self._send(ws, conn, again)
                return
            errors = validation_errors(action, payload)
            if errors:
                if not dist.rule(now, now, "out", action, ("invalid",)):
                    self.fuzz.violation("schema", f"{action}.req {str(payload)[:300]}: {errors}")
                # As a CSMS must (OCPP-J §4.2.3): a CALLERROR, and the call is not processed.
                frame = [4, uid, "FormationViolation", f"fuzzing CSMS: {action} breaks its schema", {}]
                self.answered[(conn, uid)] = frame
                await self._send(ws, conn, frame)
                return
            answer = self._answer(conn, action, payload)
            self.answered[(conn, uid)] = None
            if answer is not None:
                frame = [3, uid, answer[1]] if answer[0] == 3 else [4, uid, *answer[1:]]
                self.answered[(conn, uid)] = frame
                if frame[0] == 3 and self.last_entry is not None and dist.lossy(now, now):
                    self.last_entry.maybe_lost = True  # this answer may never reach the station
                if not self.plain and self.rng.random() < 0.1:
                    # A slow CSMS: the station's call stays outstanding while other frames come.
                    asyncio.ensure_future(self._send_later(ws, conn, frame, self.rng.choice([0.2, 0.5, 1.0, 2.0])))
                else:
                    await self._send(ws, conn, frame)
        elif kind in (3, 4):
            uid = msg[1]
            action = self.sent_actions.get(uid)
            if kind == 3 and action is not None:
                errors = validation_errors(action, msg[2], response=True)
                if errors and not dist.rule(now, now, "in", action, ("invalid",)):
                    self.fuzz.violation("schema", f"{action}.conf {str(msg[2])[:300]}: {errors}")
            fut = self.pending.get(uid)
            if fut is not None and not fut.done():
                fut.set_result(("result", msg[2]) if kind == 3 else ("error", msg[2:]))

    def _answer(self, conn: int, action: str, payload: dict) -> tuple | None:
        """(3, payload) for a CALLRESULT, (4, code, description, details) for a CALLERROR, None: no answer."""
        rng = self.rng
        now = datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")
        entry = None
        if action in TX_ACTIONS and not _triggered(action, payload):
            entry = TxMsg(conn, action, action + canonical_json(payload), payload)
            self.tx_log.append(entry)
        self.last_entry = entry
        roll = 1.0 if self.plain else rng.random()
        if action == "BootNotification":
            if roll < 0.03:
                return None  # the station retries after MessageTimeout
            if roll < 0.08:
                self.registration = "Pending"
                return (3, {"status": "Pending", "currentTime": now, "interval": rng.choice([1, 2, 3])})
            if roll < 0.12:
                self.registration = "Rejected"
                return (3, {"status": "Rejected", "currentTime": now, "interval": rng.choice([1, 2])})
            self.registration = "Accepted"
            if not self.configured:
                self.configured = True
                asyncio.ensure_future(self.fuzz.configure())
            return (3, {"status": "Accepted", "currentTime": now, "interval": 300})
        if action == "StartTransaction":
            key = canonical_json([payload.get("connectorId"), payload.get("idTag"), payload.get("timestamp"),
                                  payload.get("meterStart")])
            if key not in self.start_ids:  # a StartTransaction it already recorded always gets its id
                if roll < 0.05:
                    entry.answer = "error"
                    return (4, "InternalError", "fuzzing CSMS: StartTransaction failed", {})
                if roll < 0.07:
                    return None
                self.start_ids[key] = self.next_tid
                self.next_tid += 1
                self.fuzz.stats["transactions"] += 1
            entry.answer = "result"
            status = "Accepted" if roll < 0.95 else rng.choice(["Invalid", "Blocked"])
            return (3, {"transactionId": self.start_ids[key], "idTagInfo": {"status": status}})
        if entry is not None:
            if roll < 0.04:
                entry.answer = "error"
                return (4, "GenericError", "fuzzing CSMS: not now", {})
            if roll < 0.06:
                return None
            entry.answer = "result"
            if action == "StopTransaction":
                return (3, {"idTagInfo": {"status": "Accepted"}} if "idTag" in payload else {})
            return (3, {})
        if roll < 0.04:
            return (4, "InternalError", "fuzzing CSMS failed", {})
        if roll < 0.09:
            gen = PayloadGen(random.Random(rng.random()), self.fuzz.world, edge=0.5)
            return (3, gen.response(action))
        if action == "Authorize":
            return (3, {"idTagInfo": {"status": "Accepted" if roll < 0.9 else "Invalid"}})
        if action == "Heartbeat":
            return (3, {"currentTime": now})
        return (3, {})

    async def call(self, action: str, payload: dict, timeout: float = CALL_TIMEOUT_S) -> tuple[str, Any]:
        """Send a CALL; ("result", payload) | ("error", [code, desc, details]) | ("timeout"|"closed"|"offline", None)."""
        ws = self.ws
        if ws is None:
            return ("offline", None)
        self.uids += 1
        uid = f"csms-{self.uids}"
        self.sent_actions[uid] = action
        fut = asyncio.get_running_loop().create_future()
        self.pending[uid] = fut
        await self._send(ws, self.conn, [2, uid, action, payload])
        try:
            return await asyncio.wait_for(fut, timeout)
        except asyncio.TimeoutError:
            return ("timeout", None)
        finally:
            self.pending.pop(uid, None)


def _triggered(action: str, payload: dict) -> bool:
    return action == "MeterValues" and any(sv.get("context") == "Trigger" for mv in payload.get("meterValue", [])
                                           for sv in mv.get("sampledValue", []))


class ProcessFuzz:
    def __init__(self, seed: int, workdir: Path):
        self.seed = seed
        self.rng = random.Random(seed)
        self.workdir = workdir
        self.data_dir = workdir / "data"
        self.api_port = free_port()
        self.base = f"http://127.0.0.1:{self.api_port}"
        self.world = World(now=datetime.now(timezone.utc), id_tags=list(TAGS[:3]), closed_port=free_port(),
                           long_waits=False)
        self.gen = PayloadGen(random.Random(self.rng.random()), self.world)
        self.csms = FuzzCsms(self, random.Random(self.rng.random()))
        self.proc: asyncio.subprocess.Process | None = None
        self.runs = 0
        self.started = time.monotonic()
        self.violations: list[ProcViolation] = []
        self.stats: Counter = Counter()
        self.state: dict = {}
        self.restart_until: float | None = None  # API may be down until then (a restart we caused)
        self.reset_conn: int | None = None  # CSMS connection count when a Reset was accepted
        self.expect_exit = False
        self.online = True
        self.started_tags: set[str] = set()
        self.call_task: asyncio.Task | None = None
        self.aborted = False
        self.seen_kinds: Counter = Counter()
        self.disturbances = Disturbances()
        # Rules and impairment draw from their own generator: the bench's and the CSMS's
        # choices stay the sequence the seed gave them before these existed.
        self.drng = random.Random(seed * 7919 + 1)
        self.rule_seq = 0
        self.disturbance_deck: list[str] = []
        # connectorId -> when the CSMS puts it back in service (see _restore_availability),
        # drawn from a generator of its own so the seed's other choices stay as they were.
        self.inoperative_until: dict[int, float] = {}
        self.arng = random.Random(seed * 7919 + 2)
        self.background: set[asyncio.Future] = set()
        self.stop_disturbing = asyncio.Event()

    def violation(self, kind: str, message: str, *, fatal: bool = False) -> None:
        """Record a violation; a fatal one (the station no longer answers) ends the run."""
        self.aborted = self.aborted or fatal
        self.seen_kinds[kind] += 1
        if self.seen_kinds[kind] <= 3:  # the first few of each kind; the rest are counted
            self.violations.append(ProcViolation(kind, self.seed, time.monotonic() - self.started, message))

    # ------------------------------------------------------------------ the process
    def log_path(self) -> Path:
        return self.workdir / f"run-{self.runs:02d}.log"

    def log_tail(self, n: int = 2500) -> str:
        try:
            return self.log_path().read_text(errors="replace")[-n:]
        except OSError:
            return ""

    async def start_station(self) -> None:
        self.runs += 1
        with open(self.log_path(), "wb") as log:
            self.proc = await asyncio.create_subprocess_exec(
                PYTHON, "-m", "twin", "run", "--sim", "--csms", self.csms.url, "--id", CHARGE_POINT_ID,
                "--data-dir", str(self.data_dir), "--control", f"127.0.0.1:{self.api_port}",
                stdout=log, stderr=asyncio.subprocess.STDOUT, env=twin_process_env(), cwd=str(self.workdir),
                # Its own process group: after a Reset ``twin run`` supervises the station as a
                # child (twin/firmware/launcher.py), and a power cut must take both, as systemd's
                # KillMode=control-group does.
                start_new_session=True)
        self.restart_until = time.monotonic() + RESTART_GRACE_S
        self.online = True

    async def wait_api(self, timeout: float = RESTART_GRACE_S) -> bool:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if self.proc is not None and self.proc.returncode is not None:
                return False
            try:
                self.state = await asyncio.to_thread(request, self.base, "GET", "/api/state", None, 2)
                self.api_answered()
                return True
            except SimClientError:
                await asyncio.sleep(0.05)
        return False

    async def power_cut(self) -> None:
        self.stats["kills"] += 1
        # expect_exit stays set until the new process is in self.proc: the watcher must not
        # take the killed one for a crash (and start a second station on the same data dir).
        self.expect_exit = True
        self.restart_until = time.monotonic() + RESTART_GRACE_S
        try:
            self.kill_group()
            await self.proc.wait()
            self.disturbances.end_all()  # rules and impairment lived in the dead process
            await self.start_station()
        finally:
            self.expect_exit = False
        if not await self.wait_api():
            self.violation("died", f"station did not come back after a power cut: {self.log_tail()}")

    def kill_group(self) -> None:
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)  # the group this fuzzer started (start_new_session)
        except ProcessLookupError:
            pass

    async def watch(self) -> None:
        """The process lives, and GET /api/state answers within 1 s."""
        while True:
            await asyncio.sleep(0.25)
            proc = self.proc
            if proc is None or self.expect_exit:
                continue
            if proc.returncode is not None:
                self.expect_exit = True
                try:
                    if proc.returncode == 75:  # a restart request, as under a supervisor
                        self.stats["exit-75"] += 1
                    else:
                        self.violation("died", f"station exited with {proc.returncode}: {self.log_tail()}")
                    await self.start_station()
                finally:
                    self.expect_exit = False
                continue
            began = time.monotonic()
            run = self.runs
            try:
                state = await asyncio.to_thread(request, self.base, "GET", "/api/state", None, API_DEADLINE_S + 0.5)
                took = time.monotonic() - began
                self.stats["polls"] += 1
                self.stats["slowest-poll-ms"] = max(self.stats["slowest-poll-ms"], round(took * 1000))
                self.state = state
                self._note_sessions(state)
                if self.stats["polls"] % 8 == 0:
                    # The wire trace holds every hostile frame the fuzzer sent (lone surrogates,
                    # escaped secrets): it must still serve, and leak no AuthorizationKey.
                    trace = await asyncio.to_thread(request, self.base, "GET", "/api/trace?since=0", None, 5)
                    self.stats["trace-polls"] += 1
                    if "sixteen-chars-ok" in json.dumps(trace):
                        self.violation("secret", "the AuthorizationKey value is in GET /api/trace")
                if took > API_DEADLINE_S and self.restart_until is None and self.runs == run and not self.expect_exit:
                    self.violation("api", f"GET /api/state took {took:.2f} s")
                self.api_answered()
            except SimClientError as e:
                if self.expect_exit or self.runs != run:
                    continue  # a power cut the fuzzer made while the request was on its way
                if self.restart_until is not None and time.monotonic() < self.restart_until:
                    continue
                if self.restart_until is not None:
                    self.violation("api", f"control API still down {RESTART_GRACE_S} s after a restart: {e}\n"
                                          f"{self.log_tail(1500)}", fatal=True)
                    self.restart_until = None
                else:
                    self.violation("api", f"GET /api/state failed: {e} (after {time.monotonic() - began:.2f} s)\n"
                                          f"{self.log_tail(1500)}", fatal=True)

    def api_answered(self) -> None:
        """The API answered: a restart window ends, unless it waits for an accepted Reset to
        happen (the old process answers until it goes): that one ends with a new connection."""
        if self.restart_until is None:
            return
        if self.reset_conn is None or self.csms.conn > self.reset_conn:
            self.restart_until = self.reset_conn = None
        elif time.monotonic() > self.restart_until:
            self.violation("reset-ignored", f"a Reset was accepted, but the station has not restarted within "
                                            f"{RESTART_GRACE_S} s")
            self.restart_until = self.reset_conn = None

    def _note_sessions(self, state: dict) -> None:
        for c in state.get("connectors", []):
            if c.get("localTransactionId") is not None and c.get("idTag") is not None:
                self.started_tags.add(c["idTag"])

    async def post(self, path: str, body: dict | None = None, *, expect_error: bool = False) -> dict | None:
        self.stats["bench"] += 1
        try:
            answer = await asyncio.to_thread(request, self.base, "POST", path, body, 5)
        except SimClientError as e:
            if e.status == 500 or (e.status is None and self.restart_until is None and "timed out" in str(e)):
                self.violation("api", f"POST {path} {body}: {e}")
            elif expect_error and e.status == 400:
                # The generator makes only rules the docs allow: a refusal is a bug on one side.
                self.violation("fault-refused", f"POST {path} {body}: {e}")
            return None
        if isinstance(answer, dict) and "connectors" in answer:
            self.state = answer
            self._note_sessions(answer)
        return answer

    async def configure(self) -> None:
        for key, value in FAST_KEYS.items():
            await self.csms.call("ChangeConfiguration", {"key": key, "value": value}, timeout=5)
        self.csms.configured_done = True

    # ------------------------------------------------------------------ fault rules, impairment
    def random_rule(self) -> dict:
        """A rule the station must take: every ``do`` kind, both directions, one action or
        ``*``, a count, a probability. Rules that could make the station discard a
        transaction message (an "out" invalid that the CSMS refuses with a CALLERROR, which
        counts an attempt, §3.7.1) fire once, and only one of them is live at a time, so the
        ledger can still demand that no transaction is lost."""
        rng = self.drng
        direction = rng.choice(["in", "out"])
        do = rng.choice(IN_KINDS if direction == "in" else OUT_KINDS)
        actions = sorted(CSMS_ACTIONS) if direction == "in" else sorted(STATION_ACTIONS)
        on = rng.choice(actions) if do == "reply" or rng.random() < 0.7 else "*"
        self.rule_seq += 1
        rule: dict[str, Any] = {"id": f"fz{self.rule_seq}", "on": on, "direction": direction, "do": do}
        count = rng.choice([None, 1, 1, 2, 3, 5])
        if count is not None:
            rule["count"] = count
        if rng.random() < 0.4:
            rule["probability"] = rng.choice([0.1, 0.3, 0.5, 0.9])
            rule["seed"] = rng.randrange(2**31)
        if do == "reply":
            gen = PayloadGen(random.Random(rng.random()), self.world, edge=0.0)
            rule["payload"] = gen.response(on)
        elif do == "callerror":
            rule["code"] = rng.choice(RULE_ERROR_CODES)
            rule["description"] = rng.choice(["", "fuzz", "ä" * 40])
        elif do == "delay":
            rule["seconds"] = rng.choice([0.1, 0.3, 0.8, 1.2])
        if direction == "in" and do in ("silence", "garble") and on == "*":
            rule["count"] = rng.choice([1, 2, 3])  # not every call of a storm unanswered
        tx_risk = direction == "out" and do == "invalid" and on in ("*",) + TX_ACTIONS
        if tx_risk:
            if any(i.direction == "out" and i.do == "invalid" and i.on in ("*",) + TX_ACTIONS
                   for i in self.disturbances.live("rule")):
                rule["on"] = "Heartbeat"  # one such rule at a time: this one is harmless
            else:
                rule["count"] = 1
                rule.pop("probability", None)
                rule.pop("seed", None)
        return rule

    async def fault_action(self) -> None:
        rng = self.drng
        live = self.disturbances.live("rule")
        roll = rng.random()
        if live and (roll < 0.3 or len(live) >= MAX_RULES):
            item = rng.choice(live)
            await self.delete(f"/api/faults/{item.rule_id}")
            self.disturbances.end(item)
            self.stats["fault-rules-removed"] += 1
        elif live and roll < 0.4:
            await self.delete("/api/faults")
            self.disturbances.end_all("rule")
            self.stats["fault-rules-cleared"] += 1
        else:
            rule = self.random_rule()
            item = self.disturbances.begin("rule", direction=rule["direction"], on=rule["on"], do=rule["do"],
                                           rule_id=rule["id"])
            answer = await self.post("/api/faults", rule, expect_error=True)
            if isinstance(answer, dict) and answer.get("id") == rule["id"]:
                self.stats[f"fault-rule:{rule['direction']}:{rule['do']}"] += 1
            else:
                self.disturbances.end(item)  # not installed (refused, or the station was restarting)

    async def impairment_action(self) -> None:
        """Impair the network for a while: most impairments are lifted again after 1-6 s (a
        bad patch); a half-open link is sometimes left for the station's own ping check to
        find (the connection is replaced, docs/faults-and-traces.md)."""
        rng = self.drng
        dist = self.disturbances
        roll = rng.random()
        lift: dict[str, Any] | None = None
        if roll < 0.3:
            body: dict[str, Any] = {"latency_ms": rng.choice([50, 200, 600]),
                                    "jitter_ms": rng.choice([0, 0, 100, 300]), "seed": rng.randrange(2**31)}
            what, lift = "latency", {"latency_ms": 0, "jitter_ms": 0}
        elif roll < 0.55:
            body = {"drop_rate": rng.choice([0.05, 0.2, 0.5, 1.0]), "seed": rng.randrange(2**31)}
            what, lift = "drop", {"drop_rate": 0}
        elif roll < 0.8:
            body = {"half_open": True}
            what, lift = "half_open", ({"half_open": False} if rng.random() < 0.75 else None)
        else:
            body = {"close_code": rng.choice([1000, 1001, 1011, 3000, 4000, 4999])}
            what = "close"
        dist.end_all(what)
        item = dist.begin(what, conn=self.csms.conn)
        self.stats[f"impairment:{next(iter(body))}"] += 1
        await self.post("/api/network", body)
        if what == "close":
            dist.end(item)
        elif lift is not None:
            self._keep(asyncio.ensure_future(self._lift_later(item, lift, rng.uniform(1.0, 6.0))))

    async def _lift_later(self, item: Disturbance, lift: dict, seconds: float) -> None:
        await asyncio.sleep(seconds)
        if item.ended is None:
            await self.post("/api/network", lift)
            self.disturbances.end(item)

    def _keep(self, task: asyncio.Future) -> None:
        self.background.add(task)
        task.add_done_callback(self.background.discard)

    def disturbed(self, action: str) -> bool:
        """Something the bench did may keep ``action``'s answer from coming now."""
        now = time.monotonic()
        return self.disturbances.lossy(now, now) or self.disturbances.rule(now, now, "in", action,
                                                                            ("silence", "delay", "garble"))

    async def clear_disturbances(self, *, drain: bool = False, keep_half_open: bool = False) -> None:
        """Every fault rule removed and the network plain again: the drain's first step (which
        also switches the network on), and the end of a storm (which leaves the bench's
        switch alone and, sometimes, a half-open link for the station's ping check)."""
        await self.delete("/api/faults")
        body: dict[str, Any] = {"latency_ms": 0, "jitter_ms": 0, "drop_rate": 0}
        if drain:
            body["online"] = True
        if drain or not keep_half_open:
            body["half_open"] = False
        await self.post("/api/network", body)
        for item in self.disturbances.items:
            if item.what != "half_open" or "half_open" in body:
                self.disturbances.end(item)

    async def delete(self, path: str) -> None:
        self.stats["bench"] += 1
        try:
            await asyncio.to_thread(request, self.base, "DELETE", path, None, 5)
        except SimClientError as e:
            if e.status == 500:
                self.violation("api", f"DELETE {path}: {e}")

    # ------------------------------------------------------------------ choices
    async def bench_action(self) -> None:
        rng = self.rng
        conns = self.state.get("connectors") or [{"id": 1, "plugged": False}, {"id": 2, "plugged": False}]
        c = rng.choice(conns)
        roll = rng.random()
        if roll < 0.35:
            await self.post(f"/api/connectors/{c['id']}/{'unplug' if c.get('plugged') else 'plug'}")
        elif roll < 0.65:
            running = [x["idTag"] for x in conns if x.get("idTag")]
            tag = rng.choice(running) if running and rng.random() < 0.4 else rng.choice(TAGS)
            await self.post("/api/rfid", {"idTag": tag})
        elif roll < 0.72:
            await self.post(f"/api/connectors/{rng.choice([0, 1, 2])}/fault",
                            {"errorCode": rng.choice(FAULT_CODES), "info": "fuzz"})
        elif roll < 0.82:
            cid = rng.choice([0, 1, 2])
            self.stats["bench"] += 1
            try:
                await asyncio.to_thread(request, self.base, "DELETE", f"/api/connectors/{cid}/fault", None, 10)
            except SimClientError as e:
                if e.status == 500:
                    self.violation("api", f"DELETE fault {cid}: {e}")
        elif roll < 0.9:
            await self.post(f"/api/connectors/{c['id']}/ev", {"suspended": rng.random() < 0.3,
                                                               "maxPowerW": rng.choice([0, 3680, 11000, 22000])})
        else:
            self.online = not self.online
            await self.post("/api/network", {"online": self.online})

    async def csms_call(self) -> None:
        weights = dict(CALL_WEIGHTS)
        if self.csms.registration != "Accepted":
            weights["TriggerMessage"] *= 4
        action = self.rng.choices(list(weights), weights=list(weights.values()))[0]
        self.world.now = datetime.now(timezone.utc)
        self.world.transaction_ids = sorted(set(self.csms.start_ids.values()))[-5:]
        self.world.running = {c["id"]: c["transactionId"] for c in self.state.get("connectors", [])
                              if c.get("transactionId") is not None}
        self.gen.edge = self.rng.choice([0.05, 0.3, 0.6])
        payload = self.gen.call(action)
        if action == "ReserveNow":
            self.world.reservation_ids.append(payload["reservationId"])
        conn = self.csms.conn
        registration = self.csms.registration
        self.stats["csms-calls"] += 1
        began = time.monotonic()
        # While the bench may be keeping the answer away, a shorter wait: the silence proves
        # nothing then, and one CALL at a time must not stall the run for 10 s.
        outcome, reply = await self.csms.call(action, payload, 2.5 if self.disturbed(action) else CALL_TIMEOUT_S)
        ended = time.monotonic()
        dist = self.disturbances
        self.stats[f"outcome:{outcome}"] += 1
        clean = outcome == "result" and isinstance(reply, dict) and reply.get("status") == "Accepted"
        if action == "Reset" and not clean and dist.rule(began, ended, "in", action, LET_THROUGH):
            # The rule changed only the answer: the core took the Reset (always Accepted) and
            # the station restarts, whatever the CSMS heard.
            self.stats["resets"] += 1
            self.restart_until = time.monotonic() + RESTART_GRACE_S
            self.reset_conn = conn
        if outcome == "result":
            self.stats[f"reply:{action}:{reply.get('status', 'ok') if isinstance(reply, dict) else '?'}"] += 1
            if action == "ChangeAvailability" and payload.get("type") == "Inoperative" and isinstance(reply, dict) \
                    and reply.get("status") in ("Accepted", "Scheduled") and payload.get("connectorId") in (0, 1, 2):
                self.inoperative_until[payload["connectorId"]] = ended + self.arng.uniform(2.0, 8.0)
            if action == "Reset" and clean:
                self.stats["resets"] += 1
                self.restart_until = time.monotonic() + RESTART_GRACE_S
                self.reset_conn = self.csms.conn
        elif outcome == "error":
            self.stats[f"reply:{action}:CALLERROR {reply[0]}"] += 1
            if reply[0] == "InternalError":
                self.violation("internal-error", f"{action} {str(payload)[:300]} -> CALLERROR {reply}")
        elif outcome == "timeout":
            explained = (dist.rule(began, ended, "in", action, ("silence", "delay", "garble"))
                         or dist.lossy(began, ended))
            if self.csms.conn == conn and self.csms.ws is not None and registration != "Rejected" \
                    and self.csms.registration != "Rejected" and not explained:
                self.violation("unanswered", f"{action} {str(payload)[:300]} got no reply within {CALL_TIMEOUT_S} s")

    async def _restore_availability(self) -> bool:
        """Put a connector the CSMS took out of service back in after a few seconds, as an
        operator would. Inoperative persists over restarts (OCPP 1.6 §5.2), so without this
        one early ChangeAvailability(0, Inoperative) kept a whole run from charging: a 60 s
        run once saw one transaction."""
        due = [cid for cid, at in self.inoperative_until.items() if at <= time.monotonic()]
        if not due or self.csms.ws is None or self.csms.registration != "Accepted" \
                or not (self.call_task is None or self.call_task.done()):
            return False
        cid = min(due)
        del self.inoperative_until[cid]

        async def restore() -> None:
            outcome, reply = await self.csms.call("ChangeAvailability", {"connectorId": cid, "type": "Operative"})
            self.stats[f"outcome:{outcome}"] += 1
            if outcome == "error" and reply[0] == "InternalError":
                self.violation("internal-error", f"ChangeAvailability({cid}, Operative) -> CALLERROR {reply}")
            if outcome == "result" and isinstance(reply, dict) and reply.get("status") in ("Accepted", "Scheduled"):
                self.stats["availability-restored"] += 1
            else:  # dropped, garbled, refused meanwhile: ask again in a while
                self.inoperative_until.setdefault(cid, time.monotonic() + 2.0)

        self.call_task = asyncio.ensure_future(restore())  # one CALL at a time (OCPP-J §4.1.1)
        return True

    async def step(self) -> None:
        rng = self.rng
        if await self._restore_availability():
            await asyncio.sleep(0.05)
            return
        roll = rng.random()
        if roll < 0.45:
            await self.bench_action()
        elif roll < 0.90:
            if self.csms.ws is not None and (self.call_task is None or self.call_task.done()):
                self.call_task = asyncio.ensure_future(self.csms_call())  # one CALL at a time (OCPP-J §4.1.1)
        elif roll < 0.91 and self.restart_until is None:
            await self.power_cut()
        await asyncio.sleep(rng.choice([0.02, 0.05, 0.1, 0.2, 0.4]))

    async def disturb(self) -> None:
        """The bench's misbehaviour, beside the steps and on its own generator, once the
        station has its FAST_KEYS (before that a silenced ChangeConfiguration would keep the
        run slow). Storms of 2-5 s (a fault rule added, removed or cleared, or the network
        impaired, every 0.3-1.5 s) end with every rule removed and the network plain again,
        and calm spells of 3-7 s follow: there the checks are as strict as without rules,
        and the station must recover from what the storm left (a queue to drain, a link to
        find dead)."""
        while not await self._pause(self.drng.uniform(3.0, 7.0)):
            storm_end = time.monotonic() + self.drng.uniform(2.0, 5.0)
            self.stats["storms"] += 1
            while time.monotonic() < storm_end:
                if await self._pause(self.drng.uniform(0.3, 1.5)):
                    return
                if not self.csms.configured_done or self.restart_until is not None or self.expect_exit:
                    continue
                if self._next_disturbance() == "rule":
                    await self.fault_action()
                else:
                    await self.impairment_action()
            if self.restart_until is None and not self.expect_exit:
                await self.clear_disturbances(keep_half_open=self.drng.random() < 0.25)

    def _next_disturbance(self) -> str:
        """"rule" or "impairment", dealt from a shuffled deck of two rules and one
        impairment, so every three ticks hold one impairment: the mix of a run does not hang
        on how many storm ticks a slow machine fits into the budget (a coin per tick once
        gave a 28 s run a single impairment)."""
        if not self.disturbance_deck:
            self.disturbance_deck = ["rule", "rule", "impairment"]
            self.drng.shuffle(self.disturbance_deck)
        return self.disturbance_deck.pop()

    async def _pause(self, seconds: float) -> bool:
        """Sleep ``seconds``; True when the run wants the disturbances to stop."""
        try:
            await asyncio.wait_for(self.stop_disturbing.wait(), seconds)
            return True
        except asyncio.TimeoutError:
            return False

    # ------------------------------------------------------------------ the end
    async def drain(self, timeout: float = 40.0) -> bool:
        """Plain answers, network up, faults cleared, every transaction stopped, the queue empty."""
        self.csms.plain = True
        if self.call_task is not None:
            await self.call_task
        await self.ensure_running()
        await self.clear_disturbances(drain=True)
        for cid in (0, 1, 2):
            try:
                await asyncio.to_thread(request, self.base, "DELETE", f"/api/connectors/{cid}/fault", None, 10)
            except SimClientError:
                pass
        end = time.monotonic() + timeout
        stop_asked: set[int] = set()
        operative_asked = cut = False
        while time.monotonic() < end:
            await asyncio.sleep(0.2)
            if not await self.wait_api(5):
                continue
            st = self.state
            conns = st.get("connectors", [])
            accepted = self.csms.registration == "Accepted" and self.csms.ws is not None
            if accepted and not operative_asked:
                operative_asked = True
                await self.csms.call("ChangeAvailability", {"connectorId": 0, "type": "Operative"}, 5)
            for c in conns:
                if c.get("plugged"):
                    await self.post(f"/api/connectors/{c['id']}/unplug")
                tid = c.get("transactionId")
                if accepted and tid is not None and tid not in stop_asked:
                    stop_asked.add(tid)
                    await self.csms.call("RemoteStopTransaction", {"transactionId": tid}, 5)
            running = [c for c in conns if c.get("localTransactionId") is not None]
            if running and not cut and time.monotonic() > end - timeout / 2:
                cut = True
                await self.power_cut()  # whatever still runs is stopped (PowerLoss) at boot
                continue
            if not running and self.drained(st):
                return True
        self.violation("drain", f"the queue did not drain in {timeout} s: {json.dumps(self.state)[:800]}\n"
                                f"{self.log_tail(1500)}")
        return False

    @staticmethod
    def drained(st: dict) -> bool:
        return (st.get("registration") == "Accepted" and st.get("link") == "online"
                and not (st.get("queue") or {}).get("length")
                and all(c.get("localTransactionId") is None for c in st.get("connectors", [])))

    async def ensure_running(self) -> None:
        if self.proc.returncode is not None:
            self.expect_exit = True
            try:
                await self.start_station()
            finally:
                self.expect_exit = False
        await self.wait_api()

    async def check_usable(self, timeout: float = 5.0) -> None:
        """After the drain nothing may be left latched: with bench faults cleared and the
        station Operative, no connector is Faulted or Unavailable."""
        end = time.monotonic() + timeout
        while True:
            await self.wait_api(5)
            stuck = [(c.get("id"), c.get("status"), c.get("errorCode"), c.get("info"))
                     for c in self.state.get("connectors", []) if c.get("status") in ("Faulted", "Unavailable")]
            if not stuck:
                return
            if time.monotonic() > end:
                self.violation("latched-fault", f"after the drain, connectors are not usable: {stuck}")
                return
            await asyncio.sleep(0.2)

    async def after_drain_power_cut(self, timeout: float = 20.0) -> bool:
        """Pull the plug on the drained station: what it confirmed must stay confirmed."""
        await self.power_cut()
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            await asyncio.sleep(0.2)
            if await self.wait_api(5) and self.drained(self.state):
                return True
        self.violation("drain", f"after a power cut the drained station did not settle: "
                                f"{json.dumps(self.state)[:800]}\n{self.log_tail(1500)}")
        return False

    def check_ledger(self) -> None:
        log = self.csms.tx_log
        last_on_conn: dict[int, int] = {}
        for i, m in enumerate(log):
            last_on_conn[m.conn] = i
        first: dict[str, int] = {}
        for i, m in enumerate(log):
            j = first.get(m.key)
            if j is None:
                first[m.key] = i
                continue
            earlier = log[j]
            if (earlier.answer == "result" and not earlier.maybe_lost and last_on_conn[earlier.conn] != j
                    and m.payload.get("transactionId") != -1):
                self.violation("resent-after-confirm",
                               f"{m.action} #{i} (connection {m.conn}) repeats #{j} (connection {earlier.conn}), "
                               f"which was confirmed and followed by other transaction messages: {str(m.payload)[:300]}")
            first[m.key] = i
        stops: dict[Any, set[str]] = defaultdict(set)
        for m in log:
            if m.action == "StopTransaction":
                stops[m.payload.get("transactionId")].add(m.key)
        assigned = set(self.csms.start_ids.values())
        for tid in sorted(assigned):
            if len(stops.get(tid, ())) != 1:
                self.violation("stop-count", f"transaction {tid} has {len(stops.get(tid, ()))} StopTransactions: "
                                             f"{sorted(stops.get(tid, ()))}")
        for m in log:
            tid = m.payload.get("transactionId")
            if m.action != "StartTransaction" and tid is not None and tid != -1 and tid not in assigned:
                self.violation("unknown-transaction", f"{m.action} with transactionId {tid}: {str(m.payload)[:200]}")
        sent_tags = {m.payload.get("idTag") for m in log if m.action == "StartTransaction"}
        for tag in sorted(self.started_tags - sent_tags):
            self.violation("lost-start", f"a session of {tag!r} showed in /api/state but its StartTransaction "
                                         f"never reached the CSMS")

    async def run(self, seconds: float, *, extend_s: float = 0.0) -> None:
        """Fuzz for ``seconds``; with ``extend_s``, go on for up to that much longer while
        :func:`coverage_gaps` still names something the run has not done (a slow machine fits
        fewer steps into the budget; the floors must not hang on its speed)."""
        await self.csms.start()
        await self.start_station()
        watcher = asyncio.ensure_future(self.watch())
        try:
            if not await self.wait_api():
                kind = "died" if self.proc.returncode is not None else "api"
                self.violation(kind, f"the control API did not come up: {self.log_tail()}", fatal=True)
                return
            end = time.monotonic() + seconds
            disturber = asyncio.ensure_future(self.disturb())
            self._keep(disturber)
            hard_end = end + extend_s
            while not self.aborted and (time.monotonic() < end
                                        or (time.monotonic() < hard_end and coverage_gaps(self.stats))):
                await self.step()
            self.stats["extended-s"] = max(0, round(time.monotonic() - end))
            # Let a rule or impairment on its way land before the drain clears them all.
            self.stop_disturbing.set()
            await disturber
            if self.aborted:
                return  # the station stopped answering: a drain cannot tell anything more
            if await self.drain():
                await self.check_usable()
            if await self.after_drain_power_cut():
                self.expect_exit = True
                self.proc.send_signal(signal.SIGTERM)
                try:
                    code = await asyncio.wait_for(self.proc.wait(), 20)
                    if code != 0:
                        self.violation("died", f"SIGTERM after the drain: exit {code}: {self.log_tail()}")
                except asyncio.TimeoutError:
                    self.violation("died", f"no exit within 20 s of SIGTERM: {self.log_tail()}")
            self.check_ledger()
        finally:
            watcher.cancel()
            for task in list(self.background):
                task.cancel()
            if self.proc is not None:
                self.kill_group()  # also a station child left by a supervisor
                if self.proc.returncode is None:
                    await self.proc.wait()
            await self.csms.stop()


def coverage_gaps(stats: Counter) -> list[str]:
    """What a bounded run must have done to count (the CI test's floors): enough CSMS calls,
    bench actions, sessions, a power cut, state polls, fault rules of both directions and
    several kinds, and impairment. Empty once all are met."""
    gaps = []
    for key, floor in (("csms-calls", 40), ("bench", 40), ("transactions", 3), ("kills", 1), ("polls", 50)):
        if stats[key] < floor:
            gaps.append(f"{key} {stats[key]} < {floor}")
    rules = {k for k, v in stats.items() if k.startswith("fault-rule:") and v}
    if len(rules) < 3 or {k.split(":")[1] for k in rules} != {"in", "out"}:
        gaps.append(f"fault rules {sorted(rules)}: fewer than 3 kinds or not both directions")
    impairments = sum(v for k, v in stats.items() if k.startswith("impairment:"))
    if impairments < 2:
        gaps.append(f"impairments {impairments} < 2")
    return gaps


async def run_process(seed: int, *, seconds: float = 30.0, workdir: Path | None = None,
                      keep: bool = False, extend_s: float = 0.0) -> ProcessReport:
    own = workdir is None
    workdir = Path(tempfile.mkdtemp(prefix=f"fuzz-process-{seed}-")) if own else workdir
    fuzz = ProcessFuzz(seed, workdir)
    began = time.monotonic()
    await fuzz.run(seconds, extend_s=extend_s)
    report = ProcessReport(seed, time.monotonic() - began, fuzz.violations, fuzz.stats, workdir)
    if keep or fuzz.violations:  # every frame both ways, for reading what led to it
        with open(workdir / "frames.jsonl", "w", encoding="utf-8") as out:
            for conn, direction, raw in fuzz.csms.frames:
                out.write(json.dumps({"connection": conn, "direction": direction, "frame": raw}) + "\n")
    if own and not keep and not fuzz.violations:
        shutil.rmtree(workdir, ignore_errors=True)
    return report

