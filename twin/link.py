"""OCPP-J 1.6 over websockets: the wire adapter around the pure core.

Built on the ``ocpp`` package's message layer (``ocpp.messages``: framing, and the
OCPP 1.6 JSON schemas via ``get_validator``) and ``websockets``' asyncio client. The
``ocpp.ChargePoint`` class is not used because the station needs what it hides: no
reply at all while Rejected (§4.2), a fresh message id for each retransmission
(§3.7.1), and CALLERRORs for frames it cannot even unpack.

One CALL at a time (OCPP-J §4.1.1: wait for the result or the timeout before the
next CALL); replies to CSMS calls go out at once, ahead of queued calls.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import random
import ssl
import uuid
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any, Callable

import websockets
from ocpp.messages import get_validator
from websockets.asyncio.client import connect

log = logging.getLogger("twin.link")

# Every action OCPP 1.6 defines for CSMS -> CP (core + the five optional profiles),
# and the security-whitepaper ones this station does not implement (-> NotSupported).
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
    if not isinstance(uid, str) or not uid or len(uid) > 36:
        raise InboundError(str(uid)[:36] if uid else "-1", "FormationViolation", "bad unique id")
    if kind == 2:
        if len(msg) != 4 or not isinstance(msg[2], str) or not isinstance(msg[3], dict):
            raise InboundError(uid, "FormationViolation", "CALL must be [2, id, action, {payload}]")
        action, payload = msg[2], msg[3]
        if action in SECURITY_ACTIONS:
            raise InboundError(uid, "NotSupported", f"{action} is not supported (no security extensions)")
        if action not in CP_ACTIONS:
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
            raise InboundError(uid, code, f"{action}: {where}: {e.message}"[:255])
        return ("call", uid, action, payload)
    if kind == 3:
        payload = msg[2] if isinstance(msg[2], dict) else {}
        return ("result", uid, payload)
    if kind == 4:
        code = msg[2] if isinstance(msg[2], str) else "GenericError"
        desc = msg[3] if len(msg) > 3 and isinstance(msg[3], str) else ""
        return ("error", uid, code, desc)
    raise InboundError(uid, "FormationViolation", f"unknown message type {kind}")


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
    """Keeps a websocket to the CSMS up and moves frames. Callbacks run on the loop."""

    def __init__(self, url: str, charge_point_id: str, *, on_up: Callable[[], None],
                 on_down: Callable[[], None], on_call: Callable[[str, str, dict], None],
                 on_result: Callable[[int, dict], None], on_failed: Callable[[int, str], None],
                 password: str | None = None, ca_file: Path | None = None, ping_interval: int = 10,
                 backoff_cap: float = 30.0):
        self.url = f"{url.rstrip('/')}/{charge_point_id}"
        self.charge_point_id = charge_point_id
        self.password = password
        self.ca_file = ca_file
        self.ping_interval = ping_interval
        self.backoff_cap = backoff_cap
        self.on_up, self.on_down, self.on_call = on_up, on_down, on_call
        self.on_result, self.on_failed = on_result, on_failed
        self.enabled = True
        self._ws = None
        self._calls: asyncio.Queue = asyncio.Queue()
        self._waiting: dict[str, asyncio.Future] = {}
        self._wake = asyncio.Event()
        self._task: asyncio.Task | None = None
        self.connected = False
        self.session = 0  # one per websocket connection, so a call is sent only on the one the core knows
        self.last_error: str | None = None

    # --------------------------------------------------------------- public
    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="ocpp-link")

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

    def set_enabled(self, enabled: bool) -> None:
        """The bench's network switch: cut or restore the link without a power loss."""
        self.enabled = enabled
        if not enabled and self._ws is not None:
            asyncio.ensure_future(self._ws.close())
        self._wake.set()

    def send_call(self, ref: int, action: str, payload: dict, timeout: float) -> None:
        if self.connected:
            self._calls.put_nowait((ref, action, payload, timeout))

    def reply(self, unique_id: str, payload: dict) -> None:
        self._send_now(json.dumps([3, unique_id, payload], separators=(",", ":")))

    def reply_error(self, unique_id: str, code: str, description: str, details: dict | None = None) -> None:
        self._send_now(json.dumps([4, unique_id, code, description, details or {}], separators=(",", ":")))

    # --------------------------------------------------------------- internals
    def _send_now(self, frame: str) -> None:
        ws = self._ws
        if ws is None:
            return
        log.debug("-> %s", frame)
        asyncio.ensure_future(self._safe_send(ws, frame))

    async def _safe_send(self, ws, frame: str) -> None:
        try:
            await ws.send(frame)
        except websockets.ConnectionClosed:
            pass

    def _ssl(self) -> ssl.SSLContext | None:
        if not self.url.startswith("wss://"):
            return None
        ctx = ssl.create_default_context(cafile=str(self.ca_file) if self.ca_file else None)
        return ctx  # server certificate and host name verified (security profile 2)

    def _headers(self) -> dict:
        if not self.password:
            return {}
        # OCPP security profile 1: HTTP Basic, user = chargePointId.
        token = base64.b64encode(f"{self.charge_point_id}:{self.password}".encode()).decode()
        return {"Authorization": f"Basic {token}"}

    async def _run(self) -> None:
        failures = 0
        while True:
            if not self.enabled:
                self._wake.clear()
                await self._wake.wait()
                failures = 0
                continue
            try:
                async with connect(self.url, subprotocols=["ocpp1.6"], additional_headers=self._headers(),
                                   ssl=self._ssl(), ping_interval=self.ping_interval or None,
                                   ping_timeout=(self.ping_interval or 10) * 2, compression=None,
                                   open_timeout=10, close_timeout=2, proxy=None, max_size=4 * 2**20) as ws:
                    if ws.subprotocol != "ocpp1.6":
                        raise ConnectionError(f"CSMS did not accept subprotocol ocpp1.6 (got {ws.subprotocol!r})")
                    failures = 0
                    self.last_error = None
                    await self._session(ws)
            except asyncio.CancelledError:
                raise
            except Exception as e:  # noqa: BLE001 - any failure means: back off and retry
                self.last_error = f"{type(e).__name__}: {e}"
                log.warning("link to %s failed: %s", self.url, self.last_error)
            failures += 1
            # Capped exponential backoff with jitter, so a fleet does not reconnect in lockstep.
            delay = min(self.backoff_cap, 0.5 * 2 ** min(failures, 10)) * random.uniform(0.5, 1.0)
            self._wake.clear()
            try:
                await asyncio.wait_for(self._wake.wait(), timeout=delay)
                failures = 0  # network switched back on: try at once
            except asyncio.TimeoutError:
                pass

    async def _session(self, ws) -> None:
        self._ws = ws
        self.session += 1
        self.connected = True
        self._calls = asyncio.Queue()
        log.info("connected to %s", self.url)
        self.on_up()
        sender = asyncio.create_task(self._sender(ws), name="ocpp-sender")
        try:
            async for frame in ws:
                self._dispatch(frame)
        except websockets.ConnectionClosed:
            pass
        finally:
            sender.cancel()
            self._ws = None
            self.connected = False
            for fut in self._waiting.values():
                if not fut.done():
                    fut.cancel()
            self._waiting.clear()
            log.warning("disconnected from %s", self.url)
            self.on_down()

    def _dispatch(self, frame) -> None:
        log.debug("<- %s", frame)
        try:
            msg = parse_inbound(frame)
        except InboundError as e:
            log.warning("malformed frame from CSMS (%s: %s): %.200s", e.code, e.description, frame)
            fut = self._waiting.get(e.unique_id)
            if fut is not None and not fut.done():
                # A broken answer to one of our calls: a failure to process, never answered back.
                fut.set_result(("error", e.unique_id, e.code, e.description))
            else:
                self.reply_error(e.unique_id, e.code, e.description)
            return
        except Exception as e:  # noqa: BLE001 - one bad frame must never drop the session
            log.exception("unexpected error parsing a CSMS frame: %.200s", frame)
            self.reply_error("-1", "GenericError", f"cannot process frame: {type(e).__name__}")
            return
        if msg[0] == "call":
            _, uid, action, payload = msg
            self.on_call(uid, action, payload)
        else:
            fut = self._waiting.get(msg[1])
            if fut is not None and not fut.done():
                fut.set_result(msg)
            else:
                log.warning("response to an unknown or expired call %s ignored", msg[1])

    async def _sender(self, ws) -> None:
        while True:
            ref, action, payload, timeout = await self._calls.get()
            uid = str(uuid.uuid4())  # a new message id for every (re)transmission (§3.7.1)
            fut = asyncio.get_running_loop().create_future()
            self._waiting[uid] = fut
            try:
                frame = json.dumps([2, uid, action, payload], separators=(",", ":"), allow_nan=False)
                log.debug("-> %s", frame)
                await ws.send(frame)
                msg = await asyncio.wait_for(fut, timeout)
            except asyncio.TimeoutError:
                log.warning("no response to %s within %ss", action, timeout, extra={"ocpp_action": action})
                self.on_failed(ref, "timeout")
                continue
            except (websockets.ConnectionClosed, asyncio.CancelledError):
                return
            except Exception as e:  # noqa: BLE001 - the sender must outlive one bad call
                log.exception("sending %s failed", action)
                self.on_failed(ref, f"send failed: {type(e).__name__}: {e}")
                continue
            finally:
                self._waiting.pop(uid, None)
            if msg[0] == "result":
                self.on_result(ref, msg[2])
            else:
                log.warning("CALLERROR %s for %s: %s", msg[2], action, msg[3], extra={"ocpp_action": action})
                self.on_failed(ref, f"CALLERROR {msg[2]}: {msg[3]}")
