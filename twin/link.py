"""OCPP-J 1.6 over websockets: the wire adapter around the pure core.

Built on the ``ocpp`` package's message layer (``ocpp.messages``: framing, and the
OCPP 1.6 JSON schemas via ``get_validator``) and ``websockets``' asyncio client. The
``ocpp.ChargePoint`` class is not used because the station needs what it hides: no
reply at all while Rejected (§4.2), a fresh message id for each retransmission
(§3.7.1), and CALLERRORs for frames it cannot even unpack.

One CALL at a time (OCPP-J §4.1.1: wait for the result or the timeout before the
next CALL); replies to CSMS calls go out at once, ahead of queued calls.

A response timeout is not by itself a failure to process (§3.7.1 counts those towards
TransactionMessageAttempts): a half-open TCP connection looks the same. So the link first
checks itself with a websocket ping (RFC 6455 §5.5.2). No pong: the connection is
aborted, the core sees the link go down and resends on the next connection without
counting an attempt. A pong: the CSMS is there and did not answer, reported through
``on_timeout``. The client pings on its own schedule too, every WebSocketPingInterval
seconds or every ``keepalive_s`` when that key is 0 (the CSMS may ping from its side, but
a half-open link must still be found with no call in flight). Both checks end the same
way, so the keepalive and the message timeout no longer race to decide what a silence
means.

Every log line written here goes through ``twin.redact``: frames carry URL passwords
(UpdateFirmware, GetDiagnostics) and the AuthorizationKey (ChangeConfiguration), and the
handshake carries the Authorization header.

What each connection attempt uses (URL, Basic header, TLS context: the security profile)
comes from ``plan``, called before every attempt (twin.security.transport.plan in the
station), so a raised SecurityProfile or a new AuthorizationKey applies from the next
attempt on. ``on_connected(attempt)`` and ``on_connect_failed(attempt, exc)`` report each
outcome and are awaited before the link goes on, so the station commits or drops a pending
setting before the next plan is made; ``on_connect_failed`` returning True means "try
again at once" (a fallback to the committed settings, A05.FR.08). The link does so only
when the new plan differs from the one that just failed: a fallback that changed nothing
(or an attempt that cannot be built, touching no network) would otherwise spin.
``reconnect()`` closes the connection once the replies already handed to the link are
written, and connects again at once (A05.FR.06). Each reconnect request bumps a plan
generation: an attempt planned before it (a handshake in progress when the settings
changed) is closed as soon as it is up, and the link plans again.

The CSMS tester's toolkit lives here too (docs/faults-and-traces.md): fault rules
(twin.faults) applied to matching messages, network impairment (``impair``: latency and
jitter on every frame, frames lost at ``drop_rate``, a half-open connection, a close with
a given code) and the wire trace (twin.trace: every frame both ways, redacted, each
injected fault marked with its rule id). Every frame goes through ``_transmit`` (out) and
``_receive`` (in), so impairment and the trace see all of them. Websocket pings and pongs
take the latency too (``_pong_within``, ``_impair_pongs``), a half-open connection answers
neither side's pings, and one the station gives up on is held open without a FIN or RST
(``_hold_socket``): the liveness check of both sides sees what a real slow or dead link shows.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import logging
import os
import random
import uuid
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any, Awaitable, Callable
from urllib.parse import urlsplit

import websockets
from ocpp.messages import get_validator
from websockets.asyncio.client import connect
from websockets.frames import DATA_OPCODES, Frame, Opcode

from twin.redact import SECRET_KEY_NAMES, RedactingFilter, redact_frame, redact_text
from twin.security.transport import Attempt, AttemptImpossible, static_attempt

log = logging.getLogger("twin.link")
# The websockets library's own lines about this connection (handshake headers, close codes,
# pings). Its copies of data frames are dropped: they are cut to 75 characters, which can
# split a secret where no rule recognises it, and the full frames are logged here anyway.
ws_log = logging.getLogger("twin.link.websocket")


class _NoDataFrames(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not (isinstance(record.args, tuple) and len(record.args) == 1
                    and isinstance(record.args[0], Frame) and record.args[0].opcode in DATA_OPCODES)


ws_log.addFilter(_NoDataFrames())
for _logger in (log, ws_log):
    _logger.addFilter(RedactingFilter())

# Every action OCPP 1.6 defines for CSMS -> CP (core + the five optional profiles),
# and those the security whitepaper (edition 3) adds; the ``ocpp`` package's v16 schemas
# cover both.
CP_ACTIONS = {
    "CancelReservation", "ChangeAvailability", "ChangeConfiguration", "ClearCache", "ClearChargingProfile",
    "DataTransfer", "GetCompositeSchedule", "GetConfiguration", "GetDiagnostics", "GetLocalListVersion",
    "RemoteStartTransaction", "RemoteStopTransaction", "ReserveNow", "Reset", "SendLocalList",
    "SetChargingProfile", "TriggerMessage", "UnlockConnector", "UpdateFirmware",
}
SECURITY_ACTIONS = {
    "CertificateSigned", "DeleteCertificate", "ExtendedTriggerMessage", "GetInstalledCertificateIds", "GetLog",
    "InstallCertificate", "SignedUpdateFirmware",
}

# Calls whose schemas constrain floats with multipleOf 0.1 (see parse_inbound).
DECIMAL_CALLS = {"SetChargingProfile", "RemoteStartTransaction"}

# jsonschema validator keyword -> OCPP-J 1.6 CALLERROR code (§4.2.3).
SCHEMA_ERRORS = {
    "type": "TypeConstraintViolation",
    "required": "FormationViolation",  # as EVerest's broken.py expects for a missing field
    "additionalProperties": "FormationViolation",
    "enum": "PropertyConstraintViolation",
    "maxLength": "PropertyConstraintViolation",
    "minLength": "PropertyConstraintViolation",
    "minimum": "PropertyConstraintViolation",
    "maximum": "PropertyConstraintViolation",
    "pattern": "PropertyConstraintViolation",
    "format": "PropertyConstraintViolation",
    "multipleOf": "PropertyConstraintViolation",
}


@dataclass
class InboundError(Exception):
    unique_id: str
    code: str
    description: str


def parse_inbound(text: str | bytes) -> tuple[str, Any, ...]:
    """Classify one frame. Returns ("call", uid, action, payload) | ("result", uid, payload)
    | ("error", uid, code, desc). Raises InboundError for a frame that deserves a CALLERROR."""
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError:
            raise InboundError("-1", "GenericError", "frame is not UTF-8 text") from None
    try:
        msg = json.loads(text, parse_constant=_reject_constant)
    except (ValueError, RecursionError):
        raise InboundError(_salvage_id(text), "GenericError", "frame is not valid JSON") from None
    if not isinstance(msg, list) or len(msg) < 3 or not isinstance(msg[0], int):
        uid = msg[1] if isinstance(msg, list) and len(msg) > 1 and isinstance(msg[1], str) else "-1"
        raise InboundError(uid, "FormationViolation", "frame is not an OCPP-J message array")
    kind, uid = msg[0], msg[1]
    if not isinstance(uid, str) or not uid or len(uid) > 36 or not is_unicode(uid):
        raise InboundError(str(uid)[:36].encode("utf-8", "replace").decode() if uid else "-1",
                           "FormationViolation", "bad unique id")
    if not is_unicode(msg):
        # JSON may escape a lone UTF-16 surrogate ("\ud800"), which is no Unicode text: no
        # idTag, key or URL can hold it, and the store, the logs and the CSMS could not
        # write it back. Refused here, so nothing behind the link ever sees one.
        if kind == 2:
            raise InboundError(uid, "FormationViolation", "a string is not valid Unicode (a lone surrogate escape)")
        return ("error", uid, "FormationViolation", "the reply holds a string that is not valid Unicode")
    if kind == 2:
        if len(msg) != 4 or not isinstance(msg[2], str) or not isinstance(msg[3], dict):
            raise InboundError(uid, "FormationViolation", "CALL must be [2, id, action, {payload}]")
        action, payload = msg[2], msg[3]
        if action not in CP_ACTIONS and action not in SECURITY_ACTIONS:
            raise InboundError(uid, "NotImplemented", f"unknown action {action!r}")
        # These schemas say "multipleOf": 0.1, which binary floats fail (21.4 -> 21.3999...)
        # and jsonschema cannot even compute for a float against a Decimal schema. Like
        # ``ocpp.messages.validate_payload``, validate them on Decimals (schema and payload;
        # ``get_validator`` caches one validator per schema name, so the choice must match
        # the ``ocpp`` package's). The core still gets the payload with plain floats.
        parse_float = Decimal if action in DECIMAL_CALLS else float
        validator = get_validator(2, action, "1.6", parse_float=parse_float)
        try:
            instance = json.loads(text, parse_float=parse_float)[3] if parse_float is Decimal else payload
            errors = sorted(validator.iter_errors(instance), key=lambda e: len(list(e.path)))
        except (ArithmeticError, TypeError, ValueError) as e:  # e.g. multipleOf on 1e30 as a Decimal
            raise InboundError(uid, "PropertyConstraintViolation", f"{action}: a number out of range ({e})"[:255]) \
                from None
        if errors:
            e = errors[0]
            code = SCHEMA_ERRORS.get(e.validator, "FormationViolation")
            where = "/".join(str(p) for p in e.path) or "payload"
            # jsonschema's messages quote the offending value; not when it is the secret.
            what = f"fails {e.validator} {e.validator_value!r}" if _sets_secret_key(action, payload) else e.message
            raise InboundError(uid, code, f"{action}: {where}: {what}"[:255])
        return ("call", uid, action, payload)
    if kind == 3:
        payload = msg[2] if isinstance(msg[2], dict) else {}
        return ("result", uid, payload)
    if kind == 4:
        code = msg[2] if isinstance(msg[2], str) else "GenericError"
        desc = msg[3] if len(msg) > 3 and isinstance(msg[3], str) else ""
        return ("error", uid, code, desc)
    raise InboundError(uid, "FormationViolation", f"unknown message type {kind}")


def is_unicode(value: Any) -> bool:
    """True when every string in ``value`` (keys too) encodes as UTF-8."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return False
        return True
    if isinstance(value, dict):
        return all(is_unicode(k) and is_unicode(v) for k, v in value.items())
    if isinstance(value, list):
        return all(is_unicode(v) for v in value)
    return True


def _sets_secret_key(action: str, payload: dict) -> bool:
    """ChangeConfiguration of AuthorizationKey (key names are CiString, compared
    case-insensitively): its value is the Basic-auth password of security profile 1."""
    key = payload.get("key")
    return action == "ChangeConfiguration" and isinstance(key, str) and key.casefold() in SECRET_KEY_NAMES


def _url_password(url: str) -> str | None:
    """The password in the URL's userinfo (websockets sends it as Basic auth), if any."""
    try:
        return urlsplit(url).password
    except ValueError:  # e.g. an unclosed IPv6 bracket: connecting reports the bad URL
        return None


def _salvage_id(text: str) -> str:
    """The unique id of a frame that is JSON only to Python (NaN, Infinity), so the CALLERROR
    can still name the call it answers; "-1" when there is none."""
    try:
        msg = json.loads(text)
    except (ValueError, RecursionError):
        return "-1"
    if isinstance(msg, list) and len(msg) > 1 and isinstance(msg[1], str) and 0 < len(msg[1]) <= 36:
        return msg[1]
    return "-1"


def _reject_constant(name: str):
    raise ValueError(f"{name} is not valid JSON")  # NaN/Infinity: Python accepts them, JSON does not


class Link:
    """Keeps a websocket to the CSMS up and moves frames. Callbacks run on the loop.

    ``ping_interval`` is WebSocketPingInterval (0: the client still pings, every
    ``keepalive_s``); a ping unanswered for ``pong_timeout_s`` (after a call timed out:
    for the shorter of that and the call's timeout) means the link is dead. ``on_timeout(ref)``
    reports a call the CSMS left unanswered on a live link; without it, ``on_failed(ref,
    "timeout")`` is called instead. Calls outstanding when the link dies get neither: the
    ``on_down`` that follows aborts them.
    """

    def __init__(self, url: str, charge_point_id: str, *, on_up: Callable[[], None],
                 on_down: Callable[[], None], on_call: Callable[[str, str, dict], None],
                 on_result: Callable[[int, dict], None], on_failed: Callable[[int, str], None],
                 on_timeout: Callable[[int], None] | None = None,
                 plan: Callable[[], Attempt | Awaitable[Attempt]] | None = None,
                 on_connected: Callable[[Attempt], Any] | None = None,
                 on_connect_failed: Callable[[Attempt, BaseException], Any] | None = None,
                 on_invalid: Callable[[str], None] | None = None,
                 on_round_trip: Callable[[str, float, str], None] | None = None,
                 password: str | bytes | None = None, ca_file: Path | None = None, ping_interval: float = 10,
                 keepalive_s: float = 30.0, pong_timeout_s: float = 10.0, backoff_cap: float = 30.0):
        """``plan`` gives each attempt's URL, headers and TLS context; without it the link
        connects to ``<url>/<charge_point_id>`` with ``password`` (an AuthorizationKey:
        hex is decoded, twin.security.auth_key) and, for wss://, ``ca_file``.
        ``on_invalid(description)`` is told of every CSMS CALL refused with a CALLERROR.
        ``on_round_trip(action, seconds, outcome)`` is told of every CALL of ours answered:
        the time from its send to the answer, and "result" (CALLRESULT) or "error" (CALLERROR)."""
        if keepalive_s <= 0 or pong_timeout_s <= 0:
            raise ValueError("keepalive_s and pong_timeout_s must be positive")
        self.url = f"{url.rstrip('/')}/{charge_point_id}"  # the URL of the last attempt
        self.charge_point_id = charge_point_id
        if plan is None:
            fixed = static_attempt(self.url, password, str(ca_file) if ca_file else None)
            plan = lambda: fixed  # noqa: E731
        self.plan = plan
        self.on_connected, self.on_connect_failed, self.on_invalid = on_connected, on_connect_failed, on_invalid
        self.on_round_trip = on_round_trip
        self._sent_at: dict[str, float] = {}  # message id -> loop time its CALL went out (for on_round_trip)
        self.attempt: Attempt | None = None  # the attempt of the live connection (or the last one)
        self._warned_clear: set[str] = set()
        self._replies: set[asyncio.Future] = set()  # replies handed over and not yet written
        self._now = False  # connect again without backoff (reconnect(), a fallback)
        self._generation = 0  # bumped by every reconnect(): a plan made before it is stale
        self._ping_interval = 0.0
        self._ping_interval_changed = asyncio.Event()
        self.ping_interval = ping_interval
        self.keepalive_s = keepalive_s
        self.pong_timeout_s = pong_timeout_s
        self.backoff_cap = backoff_cap
        self.on_up, self.on_down, self.on_call = on_up, on_down, on_call
        self.on_result, self.on_failed, self.on_timeout = on_result, on_failed, on_timeout
        self.enabled = True
        self._ws = None
        self._calls: asyncio.Queue = asyncio.Queue()
        self._waiting: dict[str, asyncio.Future] = {}
        self._call_of: dict[str, tuple[int, str]] = {}  # message id -> (ref, action) of our call
        self._checking: set[str] = set()  # message ids whose timeout is being checked with a ping
        self._wake = asyncio.Event()
        self._task: asyncio.Task | None = None
        self.connected = False
        self.session = 0  # one per websocket connection, so a call is sent only on the one the core knows
        self.last_error: str | None = None
        from twin.faults import FaultSet
        from twin.trace import Tracer

        self.faults = FaultSet()
        self.tracer = Tracer()
        self.impairment = Impairment()
        self._background: set[asyncio.Future] = set()
        self._answer_faults: dict[str, tuple[Any, str]] = {}  # CSMS call id -> (rule, action) for its answer
        self._half_open_ws = None  # the connection made half-open (stops reading and writing)
        self._out_due = 0.0  # loop time the last delayed outgoing frame is due: frames keep their order
        self._in_due = 0.0
        self._in_handles: set[asyncio.TimerHandle] = set()
        self._held: dict[int, asyncio.TimerHandle] = {}  # fd -> release: sockets of abandoned half-open links

    @property
    def ping_interval(self) -> float:
        """WebSocketPingInterval in seconds; 0 means the client keepalive of ``keepalive_s``."""
        return self._ping_interval

    @ping_interval.setter
    def ping_interval(self, seconds: float | None) -> None:
        # A changed key applies to the running connection at once, not only the next one.
        self._ping_interval = max(0.0, float(seconds or 0))
        self._ping_interval_changed.set()

    # --------------------------------------------------------------- public
    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="ocpp-link")

    def peer_certificates(self) -> list[bytes] | None:
        """The CSMS's certificate chain (DER, leaf first) on the live TLS connection, None on
        ws:// or offline: which CentralSystemRootCertificate is in use (M04.FR.06). Before
        Python 3.13 only the leaf is available."""
        ws = self._ws
        if ws is None:
            return None
        ssl_object = ws.transport.get_extra_info("ssl_object")
        if ssl_object is None:
            return None
        chain = getattr(ssl_object, "get_verified_chain", None)
        if chain is not None:  # Python 3.13+
            return [c if isinstance(c, bytes) else c.public_bytes() for c in chain()]
        leaf = ssl_object.getpeercert(binary_form=True)
        return [leaf] if leaf else None

    def reconnect(self, reason: str) -> asyncio.Future:
        """Close the connection and connect again at once with a new plan (A05.FR.06-07, A01).
        The replies already handed to the link are written first: the ChangeConfiguration.conf
        that caused this must reach the CSMS before the close (A05.FR.06)."""
        return asyncio.ensure_future(self._reconnect(reason))

    async def _reconnect(self, reason: str) -> None:
        if self._replies:
            await asyncio.wait(list(self._replies), timeout=5)
        self._now = True
        # A handshake in progress (``_ws`` is still None) was planned with the old settings:
        # _run sees the new generation once it is up, closes it and plans again.
        self._generation += 1
        ws = self._ws
        log.info("reconnecting to the CSMS: %s", reason)
        if ws is not None:
            await ws.close()
        self._wake.set()  # between attempts: the next one starts now

    async def close(self) -> None:
        self.enabled = False
        if self._ws is not None:
            await self._ws.close()
        if self._task:
            self._task.cancel()
            try:
                await self._task
            except (asyncio.CancelledError, Exception):  # noqa: BLE001
                pass
        self._release_sockets()
        self.tracer.close()

    async def abort(self) -> None:
        """Stop as a power cut does: the TCP connection dies without a close frame and the
        link task ends. For the scenario runner's ``restart = "power"``."""
        self.enabled = False
        self._release_sockets()
        ws = self._ws
        if ws is not None:
            try:
                ws.transport.abort()
            except Exception:  # noqa: BLE001 - already gone
                pass
        if self._task:
            self._task.cancel()
            try:
                await self._task
            except (asyncio.CancelledError, Exception):  # noqa: BLE001
                pass

    def set_enabled(self, enabled: bool) -> None:
        """The bench's network switch: cut or restore the link without a power loss."""
        self.enabled = enabled
        ws = self._ws
        if not enabled and ws is not None:
            if self._half_open_ws is ws:
                # A dead link carries no closing handshake either: the station drops it.
                self._abort_dead(ws, "the network was switched off on a half-open connection")
            else:
                asyncio.ensure_future(ws.close())
        self._wake.set()

    def send_call(self, ref: int, action: str, payload: dict, timeout: float) -> None:
        if self.connected:
            # The answers already on their way go first: a TriggerMessage.conf precedes the
            # message it triggers (OCPP 1.6 §5.17), a RemoteStartTransaction.conf the
            # StartTransaction. Replies are written by tasks of their own, so the sender waits
            # for the ones pending now (not for an answer a fault rule delays on purpose).
            pending = tuple(t for t in self._replies if not t.done())
            self._calls.put_nowait((ref, action, payload, timeout, pending))

    def reply(self, unique_id: str, payload: dict) -> None:
        faulted = self._answer_faults.pop(unique_id, None)
        if faulted is not None:
            self._faulty_answer(faulted[0], faulted[1], [3, unique_id, payload])
            return
        self._send_now(json.dumps([3, unique_id, payload], separators=(",", ":")))

    def reply_error(self, unique_id: str, code: str, description: str, details: dict | None = None) -> None:
        frame = [4, unique_id, code, description, details or {}]
        faulted = self._answer_faults.pop(unique_id, None)
        if faulted is not None:
            self._faulty_answer(faulted[0], faulted[1], frame)
            return
        self._send_now(json.dumps(frame, separators=(",", ":")))

    # --------------------------------------------------------------- impairment (the bench)
    def impair(self, *, latency_ms: float | None = None, jitter_ms: float | None = None,
               drop_rate: float | None = None, seed: int | None = None) -> None:
        """Network impairment on every frame, both directions, from now on (None: unchanged)."""
        imp = self.impairment
        if latency_ms is not None:
            imp.latency_ms = float(latency_ms)
        if jitter_ms is not None:
            imp.jitter_ms = float(jitter_ms)
        if drop_rate is not None:
            imp.drop_rate = float(drop_rate)
        if seed is not None:
            imp.seed = int(seed)
            imp.rng = random.Random(imp.seed)

    @property
    def half_open(self) -> bool:
        return self._ws is not None and self._half_open_ws is self._ws

    def set_half_open(self, on: bool) -> bool:
        """Make the live connection half-open: nothing is read or written any more, yet the
        socket stays open, the way a dead mobile link looks. Only the link's own ping check
        (``_keepalive``, ``_after_timeout``) can find it; the next connection is healthy.
        False on a half-open connection resumes it. Returns whether a connection was there."""
        ws = self._ws
        if ws is None:
            return False
        if on and self._half_open_ws is not ws:
            self._half_open_ws = ws
            ws.transport.pause_reading()  # unread: no frames, no pings answered, no pongs seen
            log.warning("network impairment: the connection to %s is half-open now", self.url)
        elif not on and self._half_open_ws is ws:
            self._half_open_ws = None
            ws.transport.resume_reading()
        return True

    def close_now(self, code: int, reason: str = "closed by the bench (network impairment)") -> bool:
        """Close the websocket now with ``code`` (RFC 6455 §7.4); the link reconnects as after
        any close. Returns whether a connection was there."""
        ws = self._ws
        if ws is None:
            return False
        if self._half_open_ws is ws:
            # The bench asks for a real close: the connection carries frames again for its
            # closing handshake (else the close would wait close_timeout for an unread answer).
            ws.transport.resume_reading()
        self._half_open_ws = None
        self._keep(asyncio.ensure_future(self._close_with(ws, code, reason)))
        return True

    def _keep(self, task: asyncio.Future) -> None:
        """Hold a fire-and-forget task until it ends: the loop keeps only weak references,
        and a delayed answer collected half-way would look like silence."""
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    @staticmethod
    async def _close_with(ws, code: int, reason: str) -> None:
        try:
            await ws.close(code, reason)
        except Exception as e:  # noqa: BLE001 - closing a dying connection may fail any way
            log.warning("closing with code %s failed: %s", code, e)

    # --------------------------------------------------------------- internals
    def _send_now(self, frame: str, *, fault: str | None = None, do: str | None = None, ws=None) -> None:
        ws = ws or self._ws
        if ws is None:
            return
        log.debug("-> %s", frame)
        sent = asyncio.ensure_future(self._safe_send(ws, frame, fault=fault, do=do))
        self._replies.add(sent)
        sent.add_done_callback(self._replies.discard)

    async def _safe_send(self, ws, frame: str, *, fault: str | None = None, do: str | None = None) -> None:
        try:
            await self._transmit(ws, frame, fault=fault, do=do)
        except websockets.ConnectionClosed:
            pass

    async def _transmit(self, ws, text: str, *, fault: str | None = None, do: str | None = None) -> None:
        """Put one frame on the wire, through the impairment, and trace it."""
        imp = self.impairment
        conn = self.session
        if self._half_open_ws is ws:
            self.tracer.record("out", conn, text, fault=fault, do=do, lost=True)
            return  # written into a connection that carries nothing any more
        if imp.drop_rate and imp.rng.random() < imp.drop_rate:
            self.tracer.record("out", conn, text, fault=fault, do=do, lost=True)
            return
        if not await self._wire_out(ws):
            self.tracer.record("out", conn, text, fault=fault, do=do, lost=True)
            return
        self.tracer.record("out", conn, text, fault=fault, do=do)
        await ws.send(text)

    async def _wire_out(self, ws) -> bool:
        """Wait for the latency of the next outgoing frame (data or control); False when the
        connection went half-open meanwhile, so the frame is never written."""
        delay = self.impairment.delay()
        loop = asyncio.get_running_loop()
        now = loop.time()
        if delay > 0 or self._out_due > now:
            # Due times strictly increase: a frame delayed less (jitter) never overtakes one
            # before it, as on a TCP stream. Pings and pongs take their place in that order.
            due = max(now + delay, self._out_due + 1e-6)
            self._out_due = due
            await asyncio.sleep(due - now)
        return self._half_open_ws is not ws

    def _in_due_time(self) -> float:
        """When a frame read now reaches the station through the latency (loop time); frames
        read later never arrive earlier."""
        delay = self.impairment.delay()
        now = asyncio.get_running_loop().time()
        if delay <= 0 and self._in_due <= now:
            return now
        due = max(now + delay, self._in_due + 1e-6)
        self._in_due = due
        return due

    def _receive(self, frame) -> None:
        """One frame read from the socket, through the impairment, to ``_dispatch``."""
        imp = self.impairment
        if imp.drop_rate and imp.rng.random() < imp.drop_rate:
            self.tracer.record("in", self.session, frame, lost=True)
            return
        loop = asyncio.get_running_loop()
        due = self._in_due_time()
        if due > loop.time():
            session = self.session
            handle: asyncio.TimerHandle

            def later() -> None:
                self._in_handles.discard(handle)
                if self.session == session and self._ws is not None:
                    self._dispatch(frame)

            handle = loop.call_at(due, later)
            self._in_handles.add(handle)
            return
        self._dispatch(frame)

    def _faulty_answer(self, rule, action: str, frame: list) -> None:
        """The station's answer to a CSMS call, changed by an "in" fault rule."""
        text = json.dumps(frame, separators=(",", ":"))
        log.warning("fault %s: %s the answer to %s %s", rule.id, rule.do, action, frame[1],
                    extra={"ocpp_action": action})
        if rule.do == "delay":
            ws = self._ws

            async def later() -> None:
                await asyncio.sleep(rule.seconds)
                if ws is self._ws:  # the same connection: a late answer, never one on the next
                    await self._safe_send(ws, text, fault=rule.id, do=rule.do)

            asyncio.ensure_future(later())
        elif rule.do == "reply":  # a canned acceptance, after the station acted on the call
            canned = [3, frame[1], rule.payload]
            self._send_now(json.dumps(canned, separators=(",", ":")), fault=rule.id, do=rule.do)
        elif rule.do == "duplicate":
            self._send_now(text, fault=rule.id, do=rule.do)
            self._send_now(text, fault=rule.id, do=rule.do)
        elif rule.do == "garble":
            self._send_now(_garble(text), fault=rule.id, do=rule.do)
        elif rule.do == "invalid":
            from twin.faults import invalid_payload

            if frame[0] == 3:
                payload = rule.payload if rule.payload is not None else invalid_payload("result", action, frame[2])
                broken = [3, frame[1], payload]
            else:  # a CALLERROR that breaks OCPP-J §4.2.3: an unknown code, a number as description
                broken = [4, frame[1], "TwinInvalidErrorCode", 42, {}]
            self._send_now(json.dumps(broken, separators=(",", ":")), fault=rule.id, do=rule.do)
        else:
            self._send_now(text)

    async def _next_attempt(self) -> Attempt:
        attempt = self.plan()
        if inspect.isawaitable(attempt):
            attempt = await attempt
        return attempt

    async def _changed_plan(self, failed: Attempt, generation: int) -> tuple[int, Attempt] | None:
        """After a fallback: the next plan, when it differs from the one that just failed
        (then it is tried at once); None to back off: never twice in a row without backoff
        with the same plan (a fallback that changed nothing, an attempt without network)."""
        if generation != self._generation:
            return None  # a reconnect() was asked for meanwhile: it plans (and sets _now) itself
        try:
            nxt = await self._next_attempt()
        except asyncio.CancelledError:
            raise
        except Exception as e:  # noqa: BLE001 - the next turn plans again and reports it
            log.warning("planning the fallback attempt failed: %s: %s", type(e).__name__, e)
            return None
        if nxt.plan_key == failed.plan_key:
            log.warning("the fallback left the connection plan to %s unchanged: backing off", nxt.url)
            return None
        return generation, nxt

    def _warn_clear_text(self, attempt: Attempt) -> None:
        if not attempt.url.startswith("ws://") or attempt.url in self._warned_clear:
            return
        if attempt.basic_auth or _url_password(attempt.url):
            # Security profile 1 allows Basic auth without TLS (A00.FR.201: trusted networks
            # only), but then anyone on the path reads the password.
            self._warned_clear.add(attempt.url)
            log.warning("HTTP Basic auth over unencrypted ws://: the password to %s travels in clear "
                        "(use wss://, security profile 2, where the network is not trusted)", attempt.url)

    async def _outcome(self, callback: Callable[..., Any] | None, *args: Any) -> Any:
        """Run an outcome callback (sync or async); its failure must not stop the link."""
        if callback is None:
            return None
        try:
            result = callback(*args)
            if inspect.isawaitable(result):
                result = await result
            return result
        except asyncio.CancelledError:
            raise
        except Exception:  # noqa: BLE001
            log.exception("connection outcome callback failed")
            return None

    async def _run(self) -> None:
        failures = 0
        planned: tuple[int, Attempt] | None = None  # (generation, attempt) planned after a fallback
        while True:
            if not self.enabled:
                self._wake.clear()
                await self._wake.wait()
                failures = 0
                planned = None
                continue
            self._now = False
            attempt: Attempt | None = None
            up = stale = False
            try:
                if planned is not None and planned[0] == self._generation:
                    generation, attempt = planned
                else:
                    generation = self._generation
                    attempt = await self._next_attempt()
                planned = None
                self.attempt, self.url = attempt, attempt.url
                if attempt.problem is not None:
                    raise AttemptImpossible(attempt.problem)
                self._warn_clear_text(attempt)
                # websockets' own keepalive is off (ping_interval=None): _keepalive pings
                # instead, also when WebSocketPingInterval is 0, and aborts a dead
                # connection without a closing handshake that could only time out.
                async with connect(attempt.url, subprotocols=["ocpp1.6"], additional_headers=dict(attempt.headers),
                                   ssl=attempt.ssl, ping_interval=None, compression=None,
                                   open_timeout=10, close_timeout=2, proxy=None, max_size=4 * 2**20,
                                   logger=ws_log) as ws:
                    if ws.subprotocol != "ocpp1.6":
                        raise ConnectionError(f"CSMS did not accept subprotocol ocpp1.6 (got {ws.subprotocol!r})")
                    up = True
                    failures = 0
                    self.last_error = None
                    if generation != self._generation:
                        # reconnect() came during the handshake: this connection uses the old
                        # settings. Nothing is committed or sent on it; leaving the block closes it.
                        stale = True
                    else:
                        # Awaited: a pending profile or key is committed before anything is sent on it.
                        await self._outcome(self.on_connected, attempt)
                        await self._session(ws)
                if stale:
                    log.info("settings changed during the handshake with %s: closed, planning again", self.url)
                    continue
            except asyncio.CancelledError:
                raise
            except Exception as e:  # noqa: BLE001 - any failure means: back off and retry
                self.last_error = f"{type(e).__name__}: {e}"
                log.warning("link to %s failed: %s", self.url, self.last_error)
                if not up and attempt is not None:
                    # A connect error: the station maps it to a security event, and a failed
                    # pending setting falls back to the committed one, tried at once (A05.FR.08).
                    generation = self._generation
                    if await self._outcome(self.on_connect_failed, attempt, e):
                        planned = await self._changed_plan(attempt, generation)
                        if planned is not None:
                            self._now = True
            if self._now and self.enabled:
                continue
            failures += 1
            # Capped exponential backoff with jitter, so a fleet does not reconnect in lockstep.
            delay = min(self.backoff_cap, 0.5 * 2 ** min(failures, 10)) * random.uniform(0.5, 1.0)
            self._wake.clear()
            try:
                await asyncio.wait_for(self._wake.wait(), timeout=delay)
                failures = 0  # network switched back on, or a reconnect asked for: try at once
            except asyncio.TimeoutError:
                pass

    async def _session(self, ws) -> None:
        self._ws = ws
        self.session += 1
        self.connected = True
        self._calls = asyncio.Queue()
        log.info("connected to %s", self.url)
        self._impair_pongs(ws)
        self.on_up()
        helpers = [asyncio.create_task(self._sender(ws), name="ocpp-sender"),
                   asyncio.create_task(self._keepalive(ws), name="ocpp-keepalive")]
        try:
            async for frame in ws:
                self._receive(frame)
        except websockets.ConnectionClosed:
            pass
        finally:
            for task in helpers:
                task.cancel()
            self._ws = None
            self.connected = False
            self._half_open_ws = None
            self._answer_faults.clear()
            for handle in self._in_handles:
                handle.cancel()  # frames still "on the wire" of a connection that is gone
            self._in_handles.clear()
            for fut in self._waiting.values():
                if not fut.done():
                    fut.cancel()
            self._waiting.clear()
            self._call_of.clear()
            log.warning("disconnected from %s", self.url)
            self.on_down()

    async def _keepalive(self, ws) -> None:
        while True:
            interval = self.ping_interval or self.keepalive_s
            self._ping_interval_changed.clear()
            try:
                async with asyncio.timeout(interval):
                    await self._ping_interval_changed.wait()
                continue  # WebSocketPingInterval changed: wait the new interval
            except TimeoutError:
                pass
            if not await self._pong_within(ws, self.pong_timeout_s):
                self._abort_dead(ws, f"no pong within {self.pong_timeout_s:g}s to a keepalive ping")
                return

    async def _pong_within(self, ws, seconds: float) -> bool:
        """Whether the peer answers a ping within ``seconds`` (RFC 6455 §5.5.2-3).

        The ping and its pong cross the impaired network like any frame: the ping waits its
        latency (behind the frames queued before it), the pong its own on the way back, so a
        round trip longer than ``seconds`` looks dead, as it does on a real slow link. A
        half-open connection carries neither. ``drop_rate`` does not apply: on TCP a lost
        segment is retransmitted, and the knob stands for OCPP messages that vanish on a
        connection that stays up (a lost ping would turn it into a reconnect generator)."""
        if self._half_open_ws is ws:
            await asyncio.sleep(seconds)  # the ping is never written, a pong never read
            return False
        try:
            async with asyncio.timeout(seconds):
                if not await self._wire_out(ws):  # half-open while the ping waited
                    await asyncio.sleep(seconds)
                pong = await ws.ping()
                await pong
                # The pong was read now; through the latency it arrives later.
                arrive = self._in_due_time()
                await asyncio.sleep(max(0.0, arrive - asyncio.get_running_loop().time()))
                if self._half_open_ws is ws:
                    await asyncio.sleep(seconds)  # a pong still on its way into a dead link
            return True
        except (TimeoutError, websockets.ConnectionClosed):
            return False

    def _impair_pongs(self, ws) -> None:
        """Route the pongs that answer the CSMS's pings through the impairment.

        websockets answers a ping inside its sans-I/O protocol, the moment the frame is
        parsed. On an impaired network the ping reaches the station only after the latency
        and the pong needs its own latency back, so the CSMS's keepalive sees the round
        trip a real slow link has. ``recv_frame`` is replaced on this connection's protocol
        only: a ping is recorded as an event as before (RFC 6455 §5.5.2), and its pong is
        sent by :meth:`_late_pong`. Without latency pongs go at once, as before."""
        protocol = getattr(ws, "protocol", None)
        original = getattr(protocol, "recv_frame", None)
        if original is None:  # another websockets implementation: pongs are not impaired
            return

        def recv_frame(frame: Frame) -> None:
            if frame.opcode is Opcode.PING and self._impaired_timing():
                protocol.events.append(frame)
                self._keep(asyncio.ensure_future(self._late_pong(ws, bytes(frame.data))))
                return
            original(frame)

        protocol.recv_frame = recv_frame

    def _impaired_timing(self) -> bool:
        imp = self.impairment
        now = asyncio.get_running_loop().time()
        return bool(imp.latency_ms or imp.jitter_ms) or self._in_due > now or self._out_due > now

    async def _late_pong(self, ws, data: bytes) -> None:
        """The pong to a ping read now, after the ping's latency in and the pong's out."""
        loop = asyncio.get_running_loop()
        await asyncio.sleep(max(0.0, self._in_due_time() - loop.time()))
        if self._half_open_ws is ws or not await self._wire_out(ws):
            return  # the link died under it: nobody answers
        try:
            await ws.pong(data)
        except websockets.ConnectionClosed:
            pass

    def _abort_dead(self, ws, why: str) -> None:
        """Drop a connection that no longer carries frames. A closing handshake would wait
        close_timeout for a peer that cannot answer; aborting the transport ends the session
        at once (on_down), and the reconnect loop takes over."""
        self.last_error = f"dead link: {why}"
        log.warning("link to %s is dead (%s): aborting the connection", self.url, why)
        if self._half_open_ws is ws:
            self._hold_socket(ws)
        ws.transport.abort()

    def _hold_socket(self, ws) -> None:
        """A half-open connection the station gives up on: nothing of that may reach the
        CSMS, neither a FIN nor a RST (on a dead mobile link they are lost too), so the CSMS
        must find the old connection dead by itself (its pings go unanswered) or learn of it
        from the station's new one. A duplicate of the socket's descriptor keeps the TCP
        connection open while the transport is aborted; it is closed after
        HALF_OPEN_HOLD_S, when the link closes, or when more than HALF_OPEN_HELD are held."""
        sock = ws.transport.get_extra_info("socket")
        try:
            fd = os.dup(sock.fileno())
        except (AttributeError, OSError, ValueError):
            return  # no socket to hold: the abort reaches the CSMS, as before
        loop = asyncio.get_running_loop()
        self._held[fd] = loop.call_later(HALF_OPEN_HOLD_S, self._release_socket, fd)
        while len(self._held) > HALF_OPEN_HELD:
            self._release_socket(next(iter(self._held)))

    def _release_socket(self, fd: int) -> None:
        handle = self._held.pop(fd, None)
        if handle is None:
            return
        handle.cancel()
        try:
            os.close(fd)
        except OSError:
            pass

    def _release_sockets(self) -> None:
        for fd in list(self._held):
            self._release_socket(fd)

    def _dispatch(self, frame) -> None:
        log.debug("<- %s", frame)
        try:
            msg = parse_inbound(frame)
        except InboundError as e:
            self.tracer.record("in", self.session, frame)
            # Redacted before it is cut: a password cut in half is no longer recognisable.
            log.warning("malformed frame from CSMS (%s: %s): %.200s", e.code, e.description, redact_frame(frame))
            fut = self._waiting.get(e.unique_id)
            if fut is not None and not fut.done():
                # A broken answer to one of our calls: a failure to process, never answered back.
                self._deliver(e.unique_id, fut, ("error", e.unique_id, e.code, e.description))
            else:
                self.reply_error(e.unique_id, e.code, e.description)
                self._invalid(f"{e.code}: {e.description}")
            return
        except Exception as e:  # noqa: BLE001 - one bad frame must never drop the session
            self.tracer.record("in", self.session, frame)
            log.exception("unexpected error parsing a CSMS frame: %.200s", redact_frame(frame))
            self.reply_error("-1", "GenericError", f"cannot process frame: {type(e).__name__}")
            self._invalid(f"GenericError: cannot process frame: {type(e).__name__}")
            return
        if msg[0] == "call":
            _, uid, action, payload = msg
            rule = self.faults.match("in", action)
            if rule is not None and rule.do == "silence":
                self.tracer.record("in", self.session, frame, fault=rule.id, do=rule.do)
                log.warning("fault %s: %s %s left unanswered, and not handed to the station", rule.id, action, uid,
                            extra={"ocpp_action": action})
                return
            self.tracer.record("in", self.session, frame)
            if rule is not None and rule.do == "reply" and _acts_on(rule.payload):
                # A canned acceptance: the station acts on the call as it would (a canned
                # Accepted RemoteStartTransaction starts the session if it can) and the CSMS
                # gets the canned payload instead of the station's own answer.
                log.warning("fault %s: %s %s goes to the station; its answer is replaced by the canned one",
                            rule.id, action, uid, extra={"ocpp_action": action})
                self._answer_faults[uid] = (rule, action)
                self.on_call(uid, action, payload)
                return
            if rule is not None and rule.do in ("reply", "callerror"):
                # A canned refusal or error replaces the station's decision: the core never
                # sees the call, so the station acts as if it had refused it (a canned Rejected
                # RemoteStartTransaction starts nothing). docs/faults-and-traces.md.
                log.warning("fault %s: answering %s %s with a canned %s", rule.id, action, uid, rule.do,
                            extra={"ocpp_action": action})
                if rule.do == "reply":
                    text = json.dumps([3, uid, rule.payload], separators=(",", ":"))
                else:
                    text = json.dumps([4, uid, rule.code, rule.description, {}], separators=(",", ":"))
                self._send_now(text, fault=rule.id, do=rule.do)
                return
            if rule is not None:
                self._answer_faults[uid] = (rule, action)  # applied to the answer the core gives
            self.on_call(uid, action, payload)
        else:
            self.tracer.record("in", self.session, frame)
            fut = self._waiting.get(msg[1])
            if fut is not None and not fut.done():
                self._deliver(msg[1], fut, msg)
            else:
                log.warning("response to an unknown or expired call %s ignored", msg[1])

    def _invalid(self, description: str) -> None:
        """A CSMS frame refused with a CALLERROR: the station may raise InvalidMessages.
        The description is redacted: a schema message may quote a URL with a password."""
        if self.on_invalid is None:
            return
        try:
            self.on_invalid(redact_text(description)[:255])
        except Exception:  # noqa: BLE001 - a callback bug must not drop the session
            log.exception("on_invalid callback failed")

    def _deliver(self, uid: str, fut: asyncio.Future, msg: tuple) -> None:
        """Hand an answer to the station here, in the order frames arrived: a CALLRESULT
        followed by a CALL in the same read (StartTransaction.conf, then RemoteStop for its
        id) must reach the core in that order. The sender only learns that it is answered."""
        ref, action = self._call_of.pop(uid)
        if uid in self._checking:
            log.info("the response to %s came late, during the link check; accepted", action)
        fut.set_result(_ANSWERED)
        self._round_trip(uid, action, msg[0])
        if msg[0] == "result":
            self.on_result(ref, msg[2])
        else:
            log.warning("CALLERROR %s for %s: %s", msg[2], action, msg[3], extra={"ocpp_action": action})
            self.on_failed(ref, f"CALLERROR {msg[2]}: {msg[3]}")

    def _round_trip(self, uid: str, action: str, outcome: str) -> None:
        """Report an answered CALL's round trip (the metrics' histogram, twin.metrics)."""
        sent = self._sent_at.pop(uid, None)
        if sent is None or self.on_round_trip is None:
            return
        try:
            self.on_round_trip(action, asyncio.get_running_loop().time() - sent, outcome)
        except Exception:  # noqa: BLE001 - a metrics bug must not drop the answer or the session
            log.exception("on_round_trip callback failed")

    async def _sender(self, ws) -> None:
        while True:
            ref, action, payload, timeout, replies_first = await self._calls.get()
            if replies_first:
                # Each ends (sent, lost to impairment, or the connection closed); bounded anyway.
                await asyncio.wait(replies_first, timeout=timeout)
            uid = str(uuid.uuid4())  # a new message id for every (re)transmission (§3.7.1)
            fut = asyncio.get_running_loop().create_future()
            self._waiting[uid] = fut
            self._call_of[uid] = (ref, action)
            try:
                frame = json.dumps([2, uid, action, payload], separators=(",", ":"), allow_nan=False)
                rule = self.faults.match("out", action)
                if rule is not None:
                    log.warning("fault %s: %s %s %s", rule.id, rule.do, action, uid, extra={"ocpp_action": action})
                    if rule.do == "drop":
                        # Never on the wire: the station learns it as it would of a lost frame,
                        # when MessageTimeout runs out with no answer (a transaction message
                        # stays queued and goes again, §3.7.1).
                        self.tracer.record("out", self.session, frame, fault=rule.id, do=rule.do)
                        await asyncio.sleep(timeout)
                        self._timed_out(ref)
                        continue
                    if rule.do == "delay":
                        await asyncio.sleep(rule.seconds)
                log.debug("-> %s", frame)
                if self.on_round_trip is not None:
                    self._sent_at[uid] = asyncio.get_running_loop().time()
                try:
                    async with asyncio.timeout(timeout):
                        # Inside the timeout: on a half-open link the send can block.
                        await self._send_call_frame(ws, frame, uid, action, payload, rule)
                        msg = await asyncio.shield(fut)  # fut stays waiting through the link check
                except TimeoutError:
                    msg = await self._after_timeout(ws, uid, fut, action, timeout)
                    if msg is None:
                        self._timed_out(ref)
                        continue
            except (websockets.ConnectionClosed, asyncio.CancelledError, _LinkDead):
                return  # on_down follows and aborts the call
            except Exception as e:  # noqa: BLE001 - the sender must outlive one bad call
                log.exception("sending %s failed", action)
                self.on_failed(ref, f"send failed: {type(e).__name__}: {e}")
                continue
            finally:
                self._waiting.pop(uid, None)
                self._call_of.pop(uid, None)
                self._sent_at.pop(uid, None)
            # msg is _ANSWERED: _dispatch has already delivered the answer, in wire order.

    async def _send_call_frame(self, ws, frame: str, uid: str, action: str, payload: dict, rule) -> None:
        """Our CALL on the wire, as the fault rule (if any) wants it."""
        if rule is None or rule.do == "delay":
            await self._transmit(ws, frame, fault=rule.id if rule else None, do=rule.do if rule else None)
        elif rule.do == "duplicate":  # the same message id twice: the CSMS must not act twice
            await self._transmit(ws, frame, fault=rule.id, do=rule.do)
            await self._transmit(ws, frame, fault=rule.id, do=rule.do)
        elif rule.do == "garble":
            await self._transmit(ws, _garble(frame), fault=rule.id, do=rule.do)
        elif rule.do == "invalid":
            from twin.faults import invalid_payload

            broken = rule.payload if rule.payload is not None else invalid_payload("call", action, payload)
            await self._transmit(ws, json.dumps([2, uid, action, broken], separators=(",", ":")),
                                 fault=rule.id, do=rule.do)
        else:
            await self._transmit(ws, frame)

    async def _after_timeout(self, ws, uid: str, fut: asyncio.Future, action: str, timeout: float) -> tuple | None:
        """No answer to ``action`` in time: the answer if it came while the link was checked,
        None if the link is alive (the CSMS just did not answer). Raises _LinkDead after
        aborting a connection that does not answer a ping either."""
        wait = min(self.pong_timeout_s, timeout) if timeout > 0 else self.pong_timeout_s
        log.warning("no response to %s within %ss; checking the link with a ping (%gs)", action, timeout, wait,
                    extra={"ocpp_action": action})
        self._checking.add(uid)
        try:
            alive = await self._pong_within(ws, wait)
        finally:
            self._checking.discard(uid)
        if fut.done() and not fut.cancelled():
            return fut.result()  # answered during the check, and already delivered
        if not alive:
            self._abort_dead(ws, f"no pong within {wait:g}s after {action} timed out")
            raise _LinkDead
        log.warning("the link is alive but the CSMS did not answer %s within %ss", action, timeout,
                    extra={"ocpp_action": action})
        return None

    def _timed_out(self, ref: int) -> None:
        if self.on_timeout is not None:
            self.on_timeout(ref)
        else:
            self.on_failed(ref, "timeout")


def _garble(text: str) -> str:
    """A frame that is no JSON: cut before the array closes, so no parser can read it."""
    return text[: max(1, len(text) // 2)] + "#garbled~"


class Impairment:
    """Network impairment of the bench (POST /api/network), seeded so a run repeats."""

    def __init__(self) -> None:
        self.latency_ms = 0.0
        self.jitter_ms = 0.0
        self.drop_rate = 0.0
        self.seed: int | None = None
        self.rng = random.Random()

    def delay(self) -> float:
        """This frame's extra delay in seconds: latency plus a uniform 0..jitter."""
        ms = self.latency_ms + (self.rng.uniform(0.0, self.jitter_ms) if self.jitter_ms else 0.0)
        return ms / 1000.0

    def to_dict(self) -> dict:
        return {"latency_ms": self.latency_ms, "jitter_ms": self.jitter_ms, "drop_rate": self.drop_rate,
                "seed": self.seed}


# Answer statuses after which the station acts on a CSMS call: a canned reply with one of
# these lets the call through to the core (a canned refusal keeps it out).
_ACTING_STATUSES = frozenset({"Accepted", "Scheduled", "RebootRequired", "Unlocked", "AcceptedCanceled"})


def _acts_on(payload: Any) -> bool:
    return isinstance(payload, dict) and payload.get("status") in _ACTING_STATUSES


# An abandoned half-open connection's socket is held open this long at most (and at most
# this many at once), so that the CSMS finds it dead by itself: see Link._hold_socket.
HALF_OPEN_HOLD_S = 600.0
HALF_OPEN_HELD = 8

_ANSWERED = ("answered",)  # what a waiting call's future holds once _dispatch delivered its answer


class _LinkDead(Exception):
    """The connection was aborted as dead; its session is ending."""
