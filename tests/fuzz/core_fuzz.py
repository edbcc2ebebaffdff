"""Core-level fuzzer: the pure station core, a fake clock, the real SQLite store.

One *episode* is one station life (with restarts) driven by ``random.Random(seed)``:
generated CSMS calls (``tests.fuzz.payloads``), answers to the station's own CALLs (normal,
strange but schema-valid, CALLERROR, timeout, none), bench events (plug, unplug, card,
fault, meter), network cuts, clock steps and power losses. The fuzzer plays every adapter
itself, so it depends only on the core's public event methods; it iterates what they
return (a list of actions, or an ``Effects`` whose iteration is the execution order) and
executes it in that order: a ``Persist`` is committed to the real store when it comes.

An episode ends with a final drain (link up, every call answered, transactions stopped,
the clock advanced past every retry), then the end-of-life invariants are checked.
Episode ``k`` of a run with seed ``S`` is exactly the run of seed ``S + k``'s first
episode, so a violation names one seed that replays it alone.

Invariants (the kind names appear in every report):

- ``exception``: the core raised (also: a Station cannot be built from its own store).
- ``hang``: one core call took longer than ``hang_s`` seconds (wall time).
- ``store-refused``: the store refused a batch the core emitted.
- ``deadline``: after ``tick(now)``, ``next_deadline()`` is not None and not later than now
  (the runtime's timer loop would spin on it).
- ``reply-count``: a CSMS call got no reply, or more than one (none is right only while
  the registration is Rejected).
- ``reply-before-commit``: a reply came before a commit of the same event.
- ``relay-before-commit``: a contactor closed while the connector's transaction record was
  not in the store.
- ``schema``: a message or reply of the station that its OCPP 1.6 schema refuses, or a
  CALLERROR code OCPP-J 1.6 §4.2.3 does not define.
- ``link-refused``: ``twin.link.parse_inbound`` refused a call the schema accepts (a
  FormationViolation for a string with a lone surrogate is a clear refusal, not a violation).
- ``resent-after-confirm``: a transaction message came again after the station had
  processed a plain CALLRESULT for it (§3.7: delivered once confirmed). After a backward
  clock step MeterValues are exempt: clock-aligned samples repeat their timestamps.
- ``stop-count``: after the drain, a StartTransaction the station got a transactionId T
  for does not have exactly one StopTransaction with T (counted by distinct payload:
  resending the same message is at-least-once, not a second stop).
- ``unknown-transaction``: a StopTransaction or MeterValues with a transactionId the CSMS
  never gave (other than -1, errata 3.18).
- ``drain``: the queue did not empty although the CSMS answered everything.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import tempfile
import threading
import time
import traceback
from collections import Counter, defaultdict
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Callable, Iterator

from twin.core.security import SecurityFacts
from twin.security.events import EVENTS as SECURITY_EVENTS
from tests.fuzz.payloads import (CSMS_ACTIONS, PayloadGen, World, canonical_json, is_unicode, schema, ts,
                                 validation_errors)
from twin.core import actions as A
from twin.core.keys import ConfigKeys
from twin.core.smart_charging import SmartCharging
from twin.core.station import Station, StationSpec
from twin.store import Store

T0 = datetime(2026, 11, 24, 12, 0, 0, tzinfo=timezone.utc)
EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)  # a Pi without an RTC may start here
TX_ACTIONS = ("StartTransaction", "StopTransaction", "MeterValues")
# Cards a reader can present: the control API allows 1-20 printable characters.
TAP_TAGS = ("04A2B3C4", "TAG-0001", "TAG-0002", "PARENT-1", "tag-0001", "ÄÖÜ-Karte-ß", "Z" * 20, "0")
ERROR_CODES = {"NotImplemented", "NotSupported", "InternalError", "ProtocolError", "SecurityError",
               "FormationViolation", "PropertyConstraintViolation", "OccurenceConstraintViolation",
               "TypeConstraintViolation", "GenericError"}  # OCPP-J 1.6 §4.2.3
FAULT_CODES = ("GroundFailure", "HighTemperature", "OverCurrentFailure", "PowerMeterFailure", "ReaderFailure")
# Weights of the CSMS calls; TriggerMessage is boosted while the station is not Accepted.
CALL_WEIGHTS = {a: 1.0 for a in CSMS_ACTIONS} | {
    "RemoteStartTransaction": 4, "RemoteStopTransaction": 2.5, "TriggerMessage": 3, "ChangeConfiguration": 3,
    "SendLocalList": 2, "ReserveNow": 2.5, "SetChargingProfile": 2, "ChangeAvailability": 2, "Reset": 0.4}
# Operator [keys] overrides an episode may start with (all valid values).
KEY_CHOICES = {
    "MeterValueSampleInterval": ["0", "5", "10", "30", "60"], "ClockAlignedDataInterval": ["0", "0", "60", "900"],
    "StopTxnSampledData": ["", "Energy.Active.Import.Register"], "StopTxnAlignedData": ["", "Energy.Active.Import.Register"],
    "MinimumStatusDuration": ["0", "0", "5"], "LocalPreAuthorize": ["true", "false"],
    "LocalAuthorizeOffline": ["true", "false"], "AllowOfflineTxForUnknownId": ["true", "false"],
    "AuthorizeRemoteTxRequests": ["true", "false"], "StopTransactionOnInvalidId": ["true", "false"],
    "StopTransactionOnEVSideDisconnect": ["true", "true", "false"], "TransactionMessageAttempts": ["1", "3", "5"],
    "TransactionMessageRetryInterval": ["1", "5", "30"], "ConnectionTimeOut": ["10", "60"],
    "HeartbeatInterval": ["30", "300"], "ReserveConnectorZeroSupported": ["true", "false"],
    # Episodes on profile 1 send their security events through the queue with the transactions.
    "SecurityProfile": ["0", "1"], "AuthorizationKey": ["sixteen-chars-ok"], "CpoName": ["", "FuzzCPO"],
}

EVENT_GAP = timedelta(milliseconds=50)
JUMP_SKEW_S = 0.0137
FATAL = {"exception", "hang", "store-refused"}


@dataclass
class Reading:
    """A meter reading as the drivers deliver it."""

    energy_wh: float
    power_w: float = 0.0
    current_a: float = 0.0
    voltage_v: float = 230.0
    frequency_hz: float | None = 50.0
    soc_percent: float | None = None


@dataclass
class Violation:
    kind: str
    seed: int
    step: int
    message: str
    events: list = field(default_factory=list, repr=False)  # the episode's events up to the violation

    def __str__(self) -> str:
        return f"[{self.kind}] seed {self.seed} step {self.step}: {self.message}"


@dataclass
class EpisodeResult:
    seed: int
    events: list
    violations: list[Violation]
    stats: Counter
    workdir: Path | None = None


class EpisodeOver(Exception):
    """A fatal violation: what follows it would be undefined."""


class CoreHang(Exception):
    pass


@contextmanager
def time_limit(seconds: float) -> Iterator[None]:
    """Interrupt the block with CoreHang after ``seconds`` (main thread only: SIGALRM)."""
    if threading.current_thread() is not threading.main_thread() or not hasattr(signal, "setitimer"):
        yield
        return

    def on_alarm(signum, frame):
        raise CoreHang()

    previous = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def triggered(send: A.Send) -> bool:
    """A MeterValues answering TriggerMessage is not a queued transaction message (§5.17)."""
    return send.action == "MeterValues" and any(
        sv.get("context") == "Trigger" for mv in send.payload.get("meterValue", []) for sv in mv.get("sampledValue", []))


def _value(x: Any) -> Any:
    return getattr(x, "value", x)  # enums or strings


class Episode:
    """One station life. ``events=None`` generates ``steps`` events from the seed; a list
    of events replays exactly those (for shrinking)."""

    def __init__(self, seed: int, workdir: Path, *, steps: int | None = None, events: list | None = None,
                 station_factory: Callable[..., Any] = Station, hang_s: float = 5.0):
        self.seed = seed
        self.rng = random.Random(seed)
        self.workdir = workdir
        self.replay = events
        drawn_steps = self.rng.randint(40, 400)  # drawn always, so ``steps`` does not shift the seed's stream
        self.steps = steps if steps is not None else drawn_steps
        self.station_factory = station_factory
        self.hang_s = hang_s
        self.events: list = []
        self.violations: list[Violation] = []
        self.kinds_seen: set[str] = set()
        self.stats: Counter = Counter()
        self.step = -1
        # The station's world.
        self.start_at = T0 if self.rng.random() < 0.85 else EPOCH + timedelta(hours=self.rng.randint(0, 48))
        self.now = self.start_at
        self.overrides = {k: self.rng.choice(v) for k, v in KEY_CHOICES.items() if self.rng.random() < 0.3}
        self.fixed_cable = self.rng.random() < 0.7
        self.store: Store | None = None
        self.st: Any = None
        self.link_enabled = True
        self.online = False
        self.relays: dict[int, bool] = {}
        self.energy: dict[int, float] = {1: 0.0, 2: 0.0}
        self.restart_kind: str | None = None
        self.stepped_back = False  # the wall clock was stepped back during this episode
        # The CSMS.
        self.uids = 0
        self.call_actions: dict[str, str] = {}  # unique id -> action of the CSMS's calls
        self.outstanding: list[A.Send] = []
        self.start_ids: dict[str, int] = {}  # StartTransaction content -> transactionId (dedupe, at-least-once)
        self.next_tid = 1000
        self.edge_tids = [0, 2**31 - 1, 2**31, 10**12, -7]
        self.confirmed_starts: dict[int, dict] = {}
        self.confirmed_keys: set[str] = set()
        self.stop_keys: dict[Any, set[str]] = defaultdict(set)
        self.mv_tids: set[Any] = set()
        self.world = World(now=self.now, id_tags=list(TAP_TAGS[:4]))
        self.gen = PayloadGen(random.Random(self.rng.random()), self.world)

    # ================================================================== running
    async def run(self) -> EpisodeResult:
        self.store = await Store.open(self.workdir / "twin.db")
        try:
            await self._power_up()
            if self.replay is not None:
                for self.step, event in enumerate(self.replay):
                    self.events.append(event)
                    await self._do(event)
            else:
                for self.step in range(self.steps):
                    event = self._next_event()
                    self.events.append(event)
                    await self._do(event)
            self.step = len(self.events)
            await self._final_drain()
        except EpisodeOver:
            pass
        finally:
            await self.store.close()
        return EpisodeResult(self.seed, self.events, self.violations, self.stats)

    def violation(self, kind: str, message: str) -> None:
        self.stats[f"violation:{kind}"] += 1
        if kind not in self.kinds_seen:  # the first of each kind per episode is the one to read
            self.kinds_seen.add(kind)
            self.violations.append(Violation(kind, self.seed, self.step, message, list(self.events)))
        if kind in FATAL:
            raise EpisodeOver()

    # ================================================================== the core
    def _core(self, name: str, *args: Any) -> list:
        fn = getattr(self.st, name)
        self.stats[f"core:{name}"] += 1
        started = time.perf_counter()
        try:
            with time_limit(self.hang_s):
                result = fn(*args, self.now)
                acts = list(result) if result else []
        except CoreHang:
            self.violation("hang", f"{name}{_short(args)} at {ts(self.now)} ran for more than {self.hang_s} s")
        except Exception:  # noqa: BLE001 - that is what we are looking for
            self.violation("exception", f"{name}{_short(args)} at {ts(self.now)} raised:\n{traceback.format_exc()}")
        took = time.perf_counter() - started
        if took > self.hang_s:
            self.violation("hang", f"{name}{_short(args)} took {took:.1f} s")
        return acts

    def _new_station(self, state: dict) -> Any:
        try:
            with time_limit(self.hang_s):
                try:
                    keys = ConfigKeys(overrides=self.overrides, stored=state["kv"].get("config", {}))
                except ValueError:  # an override this key profile refuses: the operator's, not the CSMS's
                    keys = ConfigKeys(overrides={}, stored=state["kv"].get("config", {}))
                smart = SmartCharging(2, max_stack_level=keys.get_int("ChargeProfileMaxStackLevel"),
                                      max_periods=keys.get_int("ChargingScheduleMaxPeriods"),
                                      max_installed=keys.get_int("MaxChargingProfilesInstalled"))
                try:
                    spec = StationSpec(connectors=2, fixed_cable=self.fixed_cable)
                except TypeError:
                    spec = StationSpec()
                return self.station_factory(spec, keys, smart, state)
        except CoreHang:
            self.violation("hang", "building the Station from its store took too long")
        except Exception:  # noqa: BLE001
            self.violation("exception", f"Station cannot be built from its own store:\n{traceback.format_exc()}")

    async def _execute(self, acts: list, *, uid: str | None = None) -> list:
        """Carry out one event's actions in order, as the runtime does. Returns the replies to ``uid``."""
        last_commit = max((i for i, a in enumerate(acts) if isinstance(a, A.Persist) and a.ops), default=-1)
        replies = []
        for i, act in enumerate(acts):
            if isinstance(act, A.Persist):
                if act.ops:
                    await self._commit(act.ops)
            elif isinstance(act, A.SetRelay):
                if act.closed:
                    await self._check_relay(act.connector_id)
                    self.stats["relay-closed"] += 1
                self.relays[act.connector_id] = act.closed
            elif isinstance(act, (A.Reply, A.ReplyError, A.Delegate)):
                if i < last_commit:
                    self.violation("reply-before-commit",
                                   f"{type(act).__name__} to {act.unique_id} came before a commit of the same event: "
                                   f"{[type(a).__name__ for a in acts]}")
                self._check_reply(act)
                if act.unique_id == uid:
                    replies.append(act)
            elif isinstance(act, A.Send):
                self._deliver(act)
            elif isinstance(act, A.Restart):
                self.restart_kind = act.kind
        return replies

    async def _commit(self, ops: list) -> None:
        try:
            await self.store.apply(ops)
        except Exception as e:  # noqa: BLE001 - BadOpsError or anything: the core emitted a batch the store refuses
            self.violation("store-refused", f"{type(e).__name__}: {e}\nbatch: {_short(ops, 1500)}")
        self.stats["commits"] += 1

    async def _check_relay(self, cid: int) -> None:
        state = await self.store.load()
        records = state["transactions"]
        conn = next((c for c in self.st.snapshot().get("connectors", []) if c.get("id") == cid), {})
        local_id = conn.get("localTransactionId")
        if local_id is not None:
            rec = records.get(local_id) or records.get(str(local_id))
            ok = rec is not None and rec.get("connector_id") == cid and not rec.get("stopped")
        else:
            ok = any(r.get("connector_id") == cid and not r.get("stopped") for r in records.values())
        if not ok:
            self.violation("relay-before-commit", f"contactor {cid} closed, but the store holds no running "
                                                  f"transaction {local_id} for it: {_short(records, 600)}")

    def _check_reply(self, act: Any) -> None:
        self.stats["replies"] += 1
        if isinstance(act, A.Reply):
            action = self.call_actions.get(act.unique_id)
            if action is not None:
                self.stats[f"reply:{action}:{act.payload.get('status', '-')}"] += 1
                errors = validation_errors(action, act.payload, response=True)
                if errors:
                    self.violation("schema", f"{action}.conf {act.payload!r}: {errors}")
        elif isinstance(act, A.ReplyError):
            self.stats[f"reply-error:{act.code}"] += 1
            if act.code not in ERROR_CODES:
                self.violation("schema", f"CALLERROR code {act.code!r} is not an OCPP-J 1.6 error code")

    def _deliver(self, send: A.Send) -> None:
        errors = validation_errors(send.action, send.payload)
        if errors:
            self.violation("schema", f"{send.action}.req {send.payload!r}: {errors}")
        if not self.online:
            self.stats["send-while-offline"] += 1  # the runtime drops it; the core redoes it after link_up
            return
        self.stats[f"send:{send.action}"] += 1
        self.outstanding.append(send)
        if send.action not in TX_ACTIONS or triggered(send):
            return
        key = send.action + canonical_json(send.payload)
        tid = send.payload.get("transactionId")
        if key in self.confirmed_keys and tid != -1 and not (self.stepped_back and send.action == "MeterValues"):
            self.violation("resent-after-confirm", f"{send.action} sent again after its CALLRESULT was processed: "
                                                   f"{_short(send.payload, 400)}")
        if send.action == "StopTransaction":
            self.stop_keys[tid].add(canonical_json(send.payload))
        elif send.action == "MeterValues":
            self.mv_tids.add(tid)

    # ================================================================== the CSMS's answers
    def _tid_for(self, payload: dict, strange: bool) -> int:
        key = canonical_json([payload.get("connectorId"), payload.get("idTag"), payload.get("timestamp"),
                         payload.get("meterStart")])
        if key not in self.start_ids:
            if strange and self.edge_tids:
                self.start_ids[key] = self.edge_tids.pop(0)
            else:
                self.start_ids[key] = self.next_tid
                self.next_tid += 1
        return self.start_ids[key]

    def _answer_payload(self, send: A.Send, mode: str, arg: Any) -> dict:
        now = ts(self.now)
        if mode == "strange":
            gen = PayloadGen(random.Random(arg), self.world, edge=0.5)
            payload = gen.response(send.action)
            if send.action == "StartTransaction":
                payload["transactionId"] = self._tid_for(send.payload, strange=True)
            return payload
        action = send.action
        if action == "BootNotification":
            if mode in ("Pending", "Rejected"):
                return {"status": mode, "currentTime": now, "interval": arg}
            return {"status": "Accepted", "currentTime": now, "interval": 300}
        if action == "Authorize":
            return {"idTagInfo": {"status": "Accepted"}}
        if action == "StartTransaction":
            return {"transactionId": self._tid_for(send.payload, strange=False), "idTagInfo": {"status": "Accepted"}}
        if action == "StopTransaction":
            return {"idTagInfo": {"status": "Accepted"}} if "idTag" in send.payload else {}
        if action == "Heartbeat":
            return {"currentTime": now}
        return {}

    async def _answer(self, mode: str, arg: Any = None) -> None:
        if not self.outstanding:
            return
        send = self.outstanding.pop(0)
        self.stats[f"answer:{mode}"] += 1
        if mode == "error":
            await self._execute(self._core("call_failed", send.ref, "CALLERROR InternalError: fuzzing CSMS"))
            return
        if mode == "timeout":
            if hasattr(self.st, "call_timed_out"):
                await self._execute(self._core("call_timed_out", send.ref))
            else:
                await self._execute(self._core("call_failed", send.ref, "timeout"))
            return
        payload = self._answer_payload(send, mode, arg)
        parsed = self._through_link([3, f"ref{send.ref}", payload])
        if parsed is not None and parsed[0] == "error":  # the link refused the reply itself
            await self._execute(self._core("call_failed", send.ref, f"CALLERROR {parsed[2]}: {parsed[3]}"))
            return
        if parsed is not None:
            payload = parsed[2]
        acts = self._core("call_result", send.ref, payload)
        # Processed: from here on the station must not send this message again (also not
        # among the actions of this very event).
        if send.action in TX_ACTIONS and not triggered(send) and mode == "ok":
            self.confirmed_keys.add(send.action + canonical_json(send.payload))
        await self._execute(acts)
        if send.action == "StartTransaction":
            tid = payload["transactionId"]
            self.confirmed_starts[tid] = send.payload
            if tid not in self.world.transaction_ids:
                self.world.transaction_ids.append(tid)
            self.stats["transactions-confirmed"] += 1

    # ================================================================== events
    async def _do(self, event: tuple) -> None:
        kind, *args = event
        self.stats[f"event:{kind}"] += 1
        # Real time passes between two events: without it two sessions started and stopped by
        # taps at one instant would send identical messages, which a CSMS takes for one (the
        # dedupe below, and test_crash's). Deadlines passed meanwhile are handled at the next tick.
        self.now += EVENT_GAP
        self.world.now = self.now
        if kind == "csms":
            await self._csms_call(*args)
        elif kind == "answer":
            await self._answer(*args)
        elif kind in ("plug", "unplug"):
            await self._execute(self._core(kind, args[0]))
        elif kind == "tap":
            await self._execute(self._core("tap", args[0]))
        elif kind == "meter":
            cid, wh, power = args
            if self.relays.get(cid):
                self.energy[cid] += wh
            reading = Reading(self.energy[cid], power if self.relays.get(cid) else 0.0,
                              (power / 690.0) if self.relays.get(cid) else 0.0)
            await self._execute(self._core("meter_reading", cid, reading))
        elif kind == "meter_failed":
            await self._execute(self._core("meter_failed", args[0], "ModbusTimeout: no answer"))
        elif kind == "fault":
            await self._execute(self._core("fault", args[0], args[1], "fuzz"))
        elif kind == "clear_fault":
            await self._execute(self._core("clear_fault", args[0]))
        elif kind == "advance":
            await self._advance(args[0])
        elif kind == "jump":
            await self._jump(args[0])
        elif kind == "link_down":
            if self.link_enabled:
                self.link_enabled = False
                await self._link_down()
        elif kind == "link_up":
            if not self.link_enabled:
                self.link_enabled = True
                await self._link_up()
        elif kind == "power_loss":
            await self._restart("PowerLoss")
        elif kind == "adapter":
            name, *rest = args
            if name == "security_facts":  # events stay JSON (replay, shrinking): built here
                rest = [SecurityFacts(*rest[0])]
            if hasattr(self.st, name):
                await self._execute(self._core(name, *rest))
        if self.restart_kind is not None:
            await self._restart(self.restart_kind)

    def _through_link(self, frame: list) -> tuple | None:
        """What ``twin.link.parse_inbound`` makes of a frame the CSMS sends: what the core gets."""
        from twin import link

        try:
            return link.parse_inbound(json.dumps(frame))
        except link.InboundError as e:
            self.violation("link-refused", f"{_short(frame, 400)}: {e.code} {e.description}")
            return None

    async def _csms_call(self, action: str, payload: dict) -> None:
        from twin import link

        if not self.online:
            return
        self.uids += 1
        uid = f"fz{self.uids}"
        frame = json.dumps([2, uid, action, payload])
        try:
            parsed = link.parse_inbound(frame)
        except link.InboundError as e:
            if not is_unicode(payload) and e.code == "FormationViolation":
                self.stats["link-refused-not-unicode"] += 1  # a clear CALLERROR: nothing reaches the core
                return
            self.violation("link-refused", f"{action} {_short(payload, 400)}: {e.code} {e.description}")
            return
        registration = _value(self.st.snapshot().get("registration"))
        self.call_actions[uid] = action
        self.stats[f"csms:{action}"] += 1
        replies = await self._execute(self._core("csms_call", uid, action, parsed[3]), uid=uid)
        if len(replies) > 1 or (len(replies) == 0 and registration != "Rejected"):
            self.violation("reply-count", f"{action} {_short(payload, 300)} got {len(replies)} replies "
                                          f"(registration {registration})")

    async def _tick(self) -> bool:
        """tick(now); False when the deadline property fails (next_deadline() <= now)."""
        await self._execute(self._core("tick"))
        deadline = self.st.next_deadline()
        if deadline is not None and deadline <= self.now:
            self.violation("deadline", f"after tick({ts(self.now)}) next_deadline() is {ts(deadline)}: "
                                       "the timer loop would spin on it")
            return False
        return True

    async def _advance(self, seconds: float) -> None:
        end = self.now + timedelta(seconds=seconds)
        for _ in range(500):  # more deadlines than this in one advance: the last tick catches up
            deadline = self.st.next_deadline()
            if deadline is None or deadline > end:
                break
            self.now = max(self.now, deadline)
            if not await self._tick():
                break  # stuck: reported once; time goes on
        self.now = end
        await self._tick()

    async def _jump(self, seconds: float) -> None:
        target = self.now + timedelta(seconds=seconds)
        self.now = target
        self.stats["clock-steps"] += 1
        if seconds < 0:
            # Clock-aligned samples land on the same wall-clock grid again (§9.1.5 aligns
            # them to midnight), so after a backward step a new sample may equal one sent
            # before it, also one still queued at the step: no CSMS could tell them apart.
            # From here on only StartTransaction and StopTransaction are checked for resends.
            self.stepped_back = True
        if hasattr(self.st, "clock_stepped"):
            await self._execute(self._core("clock_stepped", float(seconds)))
        await self._tick()

    async def _link_down(self) -> None:
        self.online = False
        self.outstanding.clear()  # the connection is gone, and with it every answer
        await self._execute(self._core("link_down"))

    async def _link_up(self) -> None:
        self.online = True
        await self._execute(self._core("link_up"))

    async def _power_up(self) -> None:
        self.st = self._new_station(await self.store.load())
        self.relays = {cid: False for cid in (1, 2)}
        await self._execute(self._core("boot"))
        if self.link_enabled:
            await self._link_up()

    async def _restart(self, kind: str) -> None:
        """Reset or power loss: a new process builds a new Station from what is on disk."""
        self.restart_kind = None
        self.stats[f"restart:{kind}"] += 1
        if kind == "Soft" and hasattr(self.st, "stop_all"):
            await self._execute(self._core("stop_all", "SoftReset"))  # the graceful part of a soft reset
        self.online = False
        self.outstanding.clear()
        await self.store.close()
        self.store = await Store.open(self.workdir / "twin.db")
        await self._power_up()

    # ================================================================== generation
    def _snapshot(self) -> dict:
        try:
            return self.st.snapshot()
        except Exception:  # noqa: BLE001
            self.violation("exception", f"snapshot() raised:\n{traceback.format_exc()}")
            return {}

    def _next_event(self) -> tuple:
        rng = self.rng
        snap = self._snapshot()
        conns = snap.get("connectors", [])
        registration = _value(snap.get("registration"))
        if any(c.get("localTransactionId") is not None for c in conns):
            self.stats["steps-in-session"] += 1
        options: list[tuple[float, Callable[[], tuple]]] = []
        if self.online:
            options.append((22, lambda: self._gen_call(registration)))
        if self.outstanding:
            options.append((30, self._gen_answer))
        options += [
            (8, lambda: self._gen_plug(conns)), (7, lambda: self._gen_tap(conns)),
            (10, lambda: ("meter", rng.choice([1, 2]), rng.choice([0.0, 1.0, 50.0, 400.0]), 7000.0)),
            (12, lambda: ("advance", rng.choice([0.5, 1, 5, 10, 30, 60, 120, 300, 900, 3600]))),
            (2.5, lambda: ("link_down",) if self.link_enabled else ("link_up",)),
            (1.2, lambda: ("power_loss",)), (1.2, self._gen_jump),
            (1.5, lambda: ("fault", rng.choice([0, 1, 2]), rng.choice(FAULT_CODES))),
            (3, lambda: ("clear_fault", rng.choice([0, 1, 2]))),
            (0.5, lambda: ("meter_failed", rng.choice([1, 2]))),
            (1.2, self._gen_adapter),
        ]
        total = sum(w for w, _ in options)
        pick = rng.random() * total
        for weight, make in options:
            pick -= weight
            if pick <= 0:
                return make()
        return options[-1][1]()

    def _gen_call(self, registration: Any) -> tuple:
        weights = dict(CALL_WEIGHTS)
        if registration != "Accepted":
            weights["TriggerMessage"] *= 4  # §4.2: how a CSMS moves a Pending station on
        action = self.rng.choices(list(weights), weights=list(weights.values()))[0]
        self.gen.edge = self.rng.choice([0.05, 0.3, 0.6])
        self.world.now = self.now
        self.world.running = {c["id"]: c["transactionId"] for c in self._snapshot().get("connectors", [])
                              if c.get("transactionId") is not None}
        payload = self.gen.call(action)
        if action == "ReserveNow":
            self.world.reservation_ids.append(payload["reservationId"])
        if action in ("RemoteStartTransaction", "ReserveNow") and payload["idTag"] not in self.world.id_tags:
            self.world.id_tags.append(payload["idTag"])
        return ("csms", action, payload)

    def _gen_answer(self) -> tuple:
        rng = self.rng
        head = self.outstanding[0]
        roll = rng.random()
        if head.action == "BootNotification" and roll < 0.25:
            return ("answer", rng.choice(["Pending", "Rejected"]), rng.choice([0, 1, 10, 60, 300, 2**31 - 1]))
        if roll < 0.80:
            return ("answer", "ok", None)
        if roll < 0.88:
            return ("answer", "strange", rng.randrange(2**32))
        if roll < 0.95:
            return ("answer", "error", None)
        return ("answer", "timeout", None)

    def _gen_plug(self, conns: list[dict]) -> tuple:
        cid = self.rng.choice([1, 2])
        plugged = next((c.get("plugged") for c in conns if c.get("id") == cid), False)
        return ("unplug" if plugged and self.rng.random() < 0.8 else "plug", cid)

    def _gen_tap(self, conns: list[dict]) -> tuple:
        running = [c["idTag"] for c in conns if c.get("idTag")]
        if running and self.rng.random() < 0.3:
            return ("tap", self.rng.choice(running))
        return ("tap", self.rng.choice(TAP_TAGS))

    def _gen_jump(self) -> tuple:
        years56 = (T0 - EPOCH).total_seconds()
        if self.now.year < 2000:  # an RTC-less Pi whose clock NTP sets at last
            step = (T0 - self.now).total_seconds()
        else:
            step = self.rng.choice([3600.0, 86400.0, 30 * 86400.0, -1.0, -3600.0, -86400.0, -years56])
        # Every step moves the clock's millisecond grid on by JUMP_SKEW_S: after a backward
        # step, new messages must not carry the timestamps of old ones, or two sessions (or
        # two samples) would be identical messages that no CSMS could tell apart.
        return ("jump", step + JUMP_SKEW_S)

    def _gen_adapter(self) -> tuple:
        rng = self.rng
        roll = rng.random()
        if roll < 0.35:
            return ("adapter", "send_firmware_status",
                    rng.choice(schema("FirmwareStatusNotification")["properties"]["status"]["enum"]))
        if roll < 0.6:
            return ("adapter", "send_diagnostics_status",
                    rng.choice(schema("DiagnosticsStatusNotification")["properties"]["status"]["enum"]))
        if roll < 0.7:
            return ("adapter", "set_maintenance", rng.random() < 0.5)
        # The security adapters: certificate service, transport, signed firmware, logs.
        if roll < 0.78:
            return ("adapter", "security_event", rng.choice(sorted(SECURITY_EVENTS)),
                    rng.choice([None, "", "x" * 400, "key sixteen-chars-ok in text", "\u0000\n"]))
        if roll < 0.83:
            return ("adapter", "connection_established", rng.choice([0, 1, 2, 3]), rng.random() < 0.5)
        if roll < 0.87:
            return ("adapter", "connection_fallback", rng.choice(["profile", "key"]),
                    rng.choice([None, "FailedToAuthenticationAtCentralSystem", "InvalidCentralSystemCertificate"]),
                    rng.choice([None, "HTTP 401"]))
        if roll < 0.9:
            return ("adapter", "security_facts", [rng.choice([0, 1, 2]), rng.choice([0, 1]), rng.random() < 0.5])
        if roll < 0.94:
            return ("adapter", "send_signed_firmware_status",
                    rng.choice(_status_enum("SignedFirmwareStatusNotification")),
                    rng.choice([None, 1, 2**31 - 1]))
        if roll < 0.97:
            return ("adapter", "send_log_status",
                    rng.choice(_status_enum("LogStatusNotification")),
                    rng.choice([None, 0, 7]))
        if roll < 0.985:
            return ("adapter", "send_sign_certificate", "-----BEGIN CERTIFICATE REQUEST-----\nMIIB\n"
                    "-----END CERTIFICATE REQUEST-----")
        return ("adapter", "invalid_message", rng.choice(["bad frame", "x" * 1000]))

    # ================================================================== final drain
    async def _final_drain(self) -> None:
        """Link up, every transaction stopped, every call answered plainly, time past every retry."""
        if not self.link_enabled:
            self.link_enabled = True
            await self._link_up()
        while self.outstanding:
            await self._answer("ok")
        # Stop what runs before time is let pass: unplug (EVDisconnected), else RemoteStop,
        # else a power loss (stopped at boot).
        for c in self._snapshot().get("connectors", []):
            if c.get("plugged"):
                await self._execute(self._core("unplug", c["id"]))
        snap = self._snapshot()
        if _value(snap.get("registration")) == "Accepted":
            for c in snap.get("connectors", []):
                if c.get("transactionId") is not None:
                    await self._csms_call("RemoteStopTransaction", {"transactionId": c["transactionId"]})
        if self.restart_kind is not None:
            await self._restart(self.restart_kind)
        if any(c.get("localTransactionId") is not None for c in self._snapshot().get("connectors", [])):
            await self._restart("PowerLoss")
        if not await self._settle():
            snap = self._snapshot()
            self.violation("drain", f"the queue did not drain: registration {snap.get('registration')}, "
                                    f"queue {snap.get('queue')}, outstanding {[s.action for s in self.outstanding]}, "
                                    f"connectors {_short(snap.get('connectors'), 400)}")
            return
        for tid, start in self.confirmed_starts.items():
            stops = self.stop_keys.get(tid, set())
            if len(stops) != 1:
                self.violation("stop-count", f"transaction {tid} ({_short(start, 200)}) has {len(stops)} "
                                             f"StopTransactions: {sorted(stops)}")
        assigned = set(self.start_ids.values())
        for tid in set(self.stop_keys) | self.mv_tids:
            if tid not in assigned and tid != -1 and tid is not None:
                self.violation("unknown-transaction", f"StopTransaction/MeterValues with transactionId {tid}, "
                                                      f"which the CSMS never gave")

    def _drained(self) -> bool:
        snap = self._snapshot()
        return (self.online and _value(snap.get("registration")) == "Accepted" and not self.outstanding
                and not (snap.get("queue") or {}).get("length")
                and all(c.get("localTransactionId") is None for c in snap.get("connectors", [])))

    async def _settle(self) -> bool:
        """Answer everything plainly and let time pass (doubling steps) until the queue is empty."""
        step = 1.0
        limit = datetime(9000, 1, 1, tzinfo=timezone.utc)
        for _ in range(300):
            # Progress is a transaction message delivered: answered heartbeats and status
            # notifications must not keep the steps short while a retry waits far ahead.
            progress = any(s.action in TX_ACTIONS for s in self.outstanding)
            while self.outstanding:
                await self._answer("ok")
                if self.restart_kind is not None:
                    await self._restart(self.restart_kind)
            if self._drained():
                return True
            if self.now + timedelta(seconds=step) > limit:
                return False
            self.now += timedelta(seconds=step)
            await self._tick()
            step = 1.0 if progress else min(step * 2, 2.0**31)
        return self._drained()


def _status_enum(action: str) -> list[str]:
    """The status values a notification's schema allows."""
    return schema(action)["properties"]["status"]["enum"]


def _short(x: Any, n: int = 160) -> str:
    text = repr(x)
    return text if len(text) <= n else text[:n] + "..."


# ====================================================================== runs
@dataclass
class RunReport:
    seed: int
    episodes: int = 0
    steps: int = 0
    seconds: float = 0.0
    violations: list[Violation] = field(default_factory=list)
    stats: Counter = field(default_factory=Counter)

    def by_kind(self) -> dict[str, list[Violation]]:
        out: dict[str, list[Violation]] = defaultdict(list)
        for v in self.violations:
            out[v.kind].append(v)
        return dict(out)

    def summary(self) -> str:
        lines = [f"core fuzz seed {self.seed}: {self.episodes} episodes, {self.steps} events in {self.seconds:.1f} s"]
        cov = self.stats
        lines.append("  reached: " + ", ".join(f"{k.split(':', 1)[1]} {cov[k]}" for k in sorted(cov)
                                                if k.startswith("csms:")))
        lines.append("  answers: " + ", ".join(f"{k.split(':', 1)[1]} {cov[k]}" for k in sorted(cov)
                                                if k.startswith(("reply:", "reply-error:"))))
        lines.append(f"  transactions confirmed {cov['transactions-confirmed']}, contactor closes {cov['relay-closed']}, "
                     f"restarts {sum(v for k, v in cov.items() if k.startswith('restart:'))}, "
                     f"clock steps {cov['clock-steps']}, commits {cov['commits']}, "
                     f"events during a session {cov['steps-in-session']}")
        for kind, vs in sorted(self.by_kind().items()):
            seeds = sorted({v.seed for v in vs})
            lines.append(f"  VIOLATION {kind}: {len(vs)} episode(s), seeds {seeds[:10]}{' ...' if len(seeds) > 10 else ''}")
            lines.append("    first: " + str(vs[0]).replace("\n", "\n    "))
            lines.append(f"    replay: .venv/bin/python -m tests.fuzz core --seed {vs[0].seed} --episodes 1")
        if not self.violations:
            lines.append("  no violation")
        return "\n".join(lines)


async def run_episode(seed: int, workdir: Path | None = None, *, workroot: Path | None = None,
                      **kwargs: Any) -> EpisodeResult:
    """One episode in ``workdir`` (default: a new directory under ``workroot``, or /dev/shm,
    removed unless a violation was found)."""
    own = workdir is None
    workdir = Path(tempfile.mkdtemp(prefix=f"fuzz-{seed}-", dir=workroot or _fast_tmp())) if own else workdir
    workdir.mkdir(parents=True, exist_ok=True)
    result = await Episode(seed, workdir, **kwargs).run()
    if own and not result.violations:
        shutil.rmtree(workdir, ignore_errors=True)
    else:
        result.workdir = workdir
    return result


async def run_core(seed: int, *, seconds: float | None = None, episodes: int | None = None,
                   out: Callable[[str], None] | None = print, **kwargs: Any) -> RunReport:
    """Episodes ``seed, seed+1, ...`` until ``seconds`` of wall time or ``episodes`` are used up."""
    report = RunReport(seed)
    started = time.monotonic()
    k = 0
    while True:
        if episodes is not None and k >= episodes:
            break
        if seconds is not None and time.monotonic() - started >= seconds:
            break
        result = await run_episode(seed + k, **kwargs)
        report.episodes += 1
        report.steps += len(result.events)
        report.stats.update(result.stats)
        for v in result.violations:
            report.violations.append(v)
            if out:
                out(f"{v}\n  store kept in {result.workdir}")
        k += 1
    report.seconds = time.monotonic() - started
    return report


async def shrink(violation: Violation, *, budget_s: float = 60.0, **kwargs: Any) -> list:
    """A shorter event list that still shows ``violation.kind`` (ddmin over the events)."""
    events = list(violation.events)
    deadline = time.monotonic() + budget_s

    async def fails(candidate: list) -> bool:
        result = await run_episode(violation.seed, events=candidate, **kwargs)
        return any(v.kind == violation.kind for v in result.violations)

    n = 2
    while len(events) >= 2 and time.monotonic() < deadline:
        chunk = max(1, len(events) // n)
        reduced = False
        for i in range(0, len(events), chunk):
            candidate = events[:i] + events[i + chunk:]
            if time.monotonic() >= deadline:
                break
            if await fails(candidate):
                events = candidate
                n = max(n - 1, 2)
                reduced = True
                break
        if not reduced:
            if chunk == 1:
                break
            n = min(len(events), n * 2)
    return events


def _fast_tmp() -> str | None:
    """/dev/shm when there is one: the store fsyncs every batch, and tmpfs makes that cheap."""
    shm = Path("/dev/shm")
    return str(shm) if shm.is_dir() and os.access(shm, os.W_OK) else None


def events_to_json(events: list) -> str:
    return json.dumps(events)


def events_from_json(text: str) -> list:
    return [tuple(e) for e in json.loads(text)]


def format_events(events: list) -> str:
    return "\n".join(f"  {i:4d} {_short(e, 300)}" for i, e in enumerate(events))

