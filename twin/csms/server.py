"""A small real CSMS (central system) for OCPP 1.6J, for `twin demo` and the test suite.

It speaks raw OCPP-J frames over `websockets` instead of `ocpp.v16.ChargePoint`, so a
test has full control: any number of calls in flight, silence, scripted CALLERRORs,
malformed frames. Every frame both ways is recorded in `Csms.messages` and logged at
INFO on the "twin.csms" logger; every charge-point call and reply is checked against
the OCPP 1.6 schemas and problems land in `Csms.schema_errors`.

Consuming CP calls. `wait_for(action)` returns the first matching CP->CSMS call at or
after the cursor that no earlier `wait_for` returned, and marks it consumed; so two
`wait_for("StatusNotification")` in a row return two different notifications, and
messages that arrive in swapped order are still found. `mark()` moves the cursor to
"from now on" and returns it. `wait_for(..., after=i)` ignores cursor and consumption
and returns the first match at index >= i.

Security (OCPP 1.6 security whitepaper, edition 3). Profile 1 is ``require_password``
(HTTP Basic, the AuthorizationKey decoded as the station decodes it), profile 2 adds a
TLS ``ssl_context``, profile 3 is an ``ssl_context`` that requires a client certificate
(`twin.csms.tls.server_context`); `Csms.for_profile` builds each from a `CsmsPki`. Every
handshake's facts (user, TLS version, cipher, client certificate subject) land in
`Csms.handshakes` / `Csms.last_handshake`. With a ``pki`` the CSMS plays the CPO CA: an
accepted SignCertificate is followed by CertificateSigned with the signed CSR.
"""

from __future__ import annotations

import asyncio
import copy
import inspect
import logging
import ssl
import time
import uuid
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any, Self, TypeVar
from urllib.parse import unquote, urlsplit

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response
from websockets.typing import Subprotocol

from twin.csms.basic_auth import basic_user, check_basic_auth
from twin.csms.frames import (
    CALL_ERROR_CODES,
    NO_REPLY,
    CallErrorReceived,
    CsmsCallError,
    Direction,
    Kind,
    Msg,
    dump_call,
    dump_error,
    dump_result,
    parse_frame,
)
from twin.csms.matching import PayloadPattern, payload_matches
from twin.csms.replies import CP_INITIATED_ACTIONS, DefaultReplies, Handler
from twin.csms.pki import CsmsPki, CsrError
from twin.csms.schemas import schema_problem, semantic_problem
from twin.csms.tls import tls_facts
from twin.redact import redact_text

log = logging.getLogger("twin.csms")

SUBPROTOCOL = Subprotocol("ocpp1.6")
T = TypeVar("T")


@dataclass(frozen=True)
class Handshake:
    """What one websocket upgrade request showed, accepted or not.

    ``auth_user`` is the Basic user name sent (None without a Basic header; the password
    is never kept); ``client_subject`` the RFC 4514 subject of the TLS client certificate
    (profile 3); ``refused`` the HTTP status and reason when the CSMS refused it."""

    charge_point_id: str
    auth_user: str | None
    tls_version: str | None
    cipher: str | None
    client_subject: str | None
    client_certificate: bytes | None
    refused: str | None
    t: float

    @property
    def profile(self) -> int:
        """The security profile the station connected with (whitepaper §2)."""
        if self.client_subject is not None:
            return 3
        if self.tls_version is not None:
            return 2 if self.auth_user is not None else 0
        return 1 if self.auth_user is not None else 0

    def __repr__(self) -> str:
        return (f"Handshake({self.charge_point_id!r}, profile {self.profile}, user={self.auth_user!r}, "
                f"{self.tls_version}, {self.cipher}, client={self.client_subject!r}, refused={self.refused!r})")


class Csms:
    """An OCPP 1.6J central system serving one charge point at a time."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        heartbeat_interval: int = 30,
        boot_status: str = "Accepted",
        require_password: str | None = None,
        ssl_context: ssl.SSLContext | None = None,
        charge_point_id: str | None = None,
        pki: CsmsPki | None = None,
        url_host: str | None = None,
    ) -> None:
        """``charge_point_id``, when set, is the only identity accepted (other paths get 404).

        ``require_password`` is the AuthorizationKey of profiles 1 and 2 (see
        `twin.csms.basic_auth`); ``pki`` makes the CSMS sign SignCertificate CSRs with its
        root; ``url_host`` is the host name `url` shows (for TLS the name in the server
        certificate, e.g. "localhost", while ``host`` is the address listened on)."""
        self.host = host
        self.port = port
        self.require_password = require_password
        self.ssl_context = ssl_context
        self.expected_charge_point_id = charge_point_id
        self.pki = pki
        self.url_host = url_host
        # After an Accepted SignCertificate, send CertificateSigned with the signed CSR
        # (needs ``pki``). Tests that script their own CertificateSigned turn it off.
        self.auto_sign_certificates = True
        # Every CertificateSigned the CSMS sent on its own: (chain, .conf payload or the exception).
        self.certificate_signed_results: list[tuple[str, dict[str, Any] | Exception]] = []
        self.handshakes: list[Handshake] = []
        self.last_handshake: Handshake | None = None
        self._request_ids = iter(range(1, 1 << 31))
        self._signed_chains: dict[str, str] = {}
        self._replies = DefaultReplies(boot_status=boot_status, heartbeat_interval=heartbeat_interval)
        self._handlers: dict[str, Handler] = self._default_handlers()
        # Tests fill this: csms.id_tags["TAG"] = {"status": "Blocked", "parentIdTag": "P"}.
        self.id_tags: dict[str, dict[str, Any]] = self._replies.id_tags
        self.messages: list[Msg] = []
        self.schema_errors: list[str] = []
        self.charge_point_id: str | None = None
        self.connection_count = 0
        self._ws: ServerConnection | None = None
        self._server: Server | None = None
        self._pending: dict[str, asyncio.Future[Msg]] = {}
        # Action of every call we sent (also raw ones and timed-out ones), so a late
        # or raw-provoked reply is still labelled and validated.
        self._sent_actions: dict[str, str] = {}
        self._cursor = 0
        self._consumed: set[int] = set()
        self._changed = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()

    # ----------------------------------------------------------------- settings
    @property
    def boot_status(self) -> str:
        return self._replies.boot_status

    @boot_status.setter
    def boot_status(self, value: str) -> None:
        self._replies.boot_status = value

    @property
    def heartbeat_interval(self) -> int:
        return self._replies.heartbeat_interval

    @heartbeat_interval.setter
    def heartbeat_interval(self, value: int) -> None:
        self._replies.heartbeat_interval = value

    @property
    def unknown_id_tag(self) -> dict[str, Any]:
        """idTagInfo for tags missing from `id_tags` (default Accepted)."""
        return self._replies.unknown_id_tag

    @unknown_id_tag.setter
    def unknown_id_tag(self, value: dict[str, Any]) -> None:
        self._replies.unknown_id_tag = value

    def on(self, action: str, handler: Handler | None) -> None:
        """Script the answer to a CP->CSMS ``action``; None restores the default.

        ``handler(payload)`` (sync or async) returns the .conf payload, or `NO_REPLY`
        to stay silent, or raises `CsmsCallError(code, description)` to answer CALLERROR.
        """
        if handler is None:
            default = self._default_handlers().get(action)
            if default is None:
                self._handlers.pop(action, None)
            else:
                self._handlers[action] = default
        else:
            self._handlers[action] = handler

    def handler(self, action: str) -> Handler | None:
        """The current answer to a CP->CSMS ``action`` (a scripted one, else the default)."""
        return self._handlers.get(action)

    def _default_handlers(self) -> dict[str, Handler]:
        handlers = self._replies.handlers()
        handlers["SignCertificate"] = self._sign_certificate
        return handlers

    # ---------------------------------------------------------------- profiles
    @classmethod
    def for_profile(
        cls,
        profile: int,
        *,
        pki: CsmsPki | None = None,
        authorization_key: str | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        **kwargs: Any,
    ) -> Csms:
        """A CSMS serving security ``profile`` (0-3): 1 = ws:// + Basic, 2 = wss:// + Basic,
        3 = wss:// + client certificate issued by ``pki``'s root. Profiles 2 and 3 need
        ``pki`` (made with `CsmsPki.ensure`); 1 and 2 need ``authorization_key``."""
        from twin.csms.tls import server_context

        if profile not in (0, 1, 2, 3):
            raise ValueError(f"security profile {profile} is not 0, 1, 2 or 3")
        if profile in (1, 2) and not authorization_key:
            raise ValueError(f"security profile {profile} needs an AuthorizationKey")
        ssl_context = None
        url_host = kwargs.pop("url_host", None)
        if profile in (2, 3):
            if pki is None:
                raise ValueError(f"security profile {profile} needs a PKI (server certificate)")
            ssl_context = server_context(pki.server_pairs, client_ca=pki.csms_root if profile == 3 else None)
            url_host = url_host or pki.host
        return cls(host, port, require_password=authorization_key if profile in (1, 2) else None,
                   ssl_context=ssl_context, pki=pki, url_host=url_host, **kwargs)

    @property
    def security_profile(self) -> int:
        """The profile this CSMS serves, from its settings (TLS without any client
        authentication is no whitepaper profile: 0, as `Handshake.profile` says)."""
        if self.ssl_context is not None and self.ssl_context.verify_mode == ssl.CERT_REQUIRED:
            return 3
        if self.require_password is None:
            return 0
        return 2 if self.ssl_context is not None else 1

    # ---------------------------------------------------------------- lifecycle
    @property
    def url(self) -> str:
        scheme = "wss" if self.ssl_context is not None else "ws"
        return f"{scheme}://{self.url_host or self.host}:{self.port}"

    @property
    def connected(self) -> bool:
        return self._ws is not None

    async def start(self) -> None:
        self._server = await serve(
            self._serve_connection,
            self.host,
            self.port,
            subprotocols=[SUBPROTOCOL],
            process_request=self._process_request,
            ssl=self.ssl_context,
            logger=logging.getLogger("twin.csms.websockets"),
        )
        if self.port == 0:
            self.port = self._server.sockets[0].getsockname()[1]
        log.info("CSMS listening on %s", self.url)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        for task in list(self._tasks):
            task.cancel()
        self._fail_pending(ConnectionError("CSMS stopped"))

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def _process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        """Reject a handshake before it upgrades, and record what it showed."""
        response = self._check_request(connection, request)
        ssl_object = connection.transport.get_extra_info("ssl_object")
        version, cipher, subject, der = tls_facts(ssl_object)
        handshake = Handshake(_charge_point_id(request.path), basic_user(request.headers.get("Authorization")),
                              version, cipher, subject, der,
                              None if response is None else f"{response.status_code} {response.reason_phrase}",
                              time.monotonic())
        self.handshakes.append(handshake)
        self.last_handshake = handshake
        log.info("CSMS: handshake %r", handshake)
        return response

    def _check_request(self, connection: ServerConnection, request: Request) -> Response | None:
        """Unknown identity, busy, bad credentials: the response refusing the handshake, or None."""
        cp_id = _charge_point_id(request.path)
        if not cp_id:
            return _refuse(connection, HTTPStatus.NOT_FOUND, "the path must end with the charge point id")
        if self.expected_charge_point_id is not None and cp_id != self.expected_charge_point_id:
            return _refuse(connection, HTTPStatus.NOT_FOUND, f"unknown charge point {cp_id!r}")
        if self._ws is not None and self.charge_point_id != cp_id:
            return _refuse(connection, HTTPStatus.CONFLICT, f"CSMS busy with charge point {self.charge_point_id!r}")
        if self.require_password is not None:
            problem = check_basic_auth(request.headers.get("Authorization"), cp_id, self.require_password)
            if problem is not None:
                response = _refuse(connection, HTTPStatus.UNAUTHORIZED, f"authentication failed: {problem}")
                response.headers["WWW-Authenticate"] = 'Basic realm="ocpp-twin CSMS", charset="UTF-8"'
                return response
        return None

    async def _serve_connection(self, ws: ServerConnection) -> None:
        cp_id = _charge_point_id(ws.request.path if ws.request else "")
        previous = self._ws
        self._ws, self.charge_point_id = ws, cp_id
        self.connection_count += 1
        self._notify()
        log.info("CSMS: charge point %r connected (connection %d)", cp_id, self.connection_count)
        if previous is not None:
            # The same station reconnected before its old socket was noticed dead:
            # the newer connection wins, as real central systems do.
            log.warning("CSMS: closing the older connection of %r", cp_id)
            self._fail_pending(ConnectionError(f"the connection of {cp_id!r} was replaced"))
            # In the background: a dead peer would hold the close handshake for
            # close_timeout while the new connection's frames wait unread.
            self._spawn(previous.close(1000, "replaced by a newer connection"))
        try:
            async for raw in ws:
                self._receive(ws, raw)
        except ConnectionClosed:
            pass
        finally:
            if self._ws is ws:
                self._ws = None
                self._fail_pending(ConnectionError(f"connection to {cp_id!r} closed"))
            log.info("CSMS: charge point %r disconnected (code %s)", cp_id, ws.close_code)
            self._notify()

    async def wait_connected(self, timeout: float = 10, *, after: int | None = None) -> str:
        """Wait for an open connection (numbered > ``after``, a past `connection_count`); return the id."""

        def check() -> str | None:
            if self._ws is None or (after is not None and self.connection_count <= after):
                return None
            return self.charge_point_id

        return await self.wait_until(check, timeout, "a charge point connection")

    async def wait_disconnected(self, timeout: float = 10) -> None:
        await self.wait_until(lambda: True if self._ws is None else None, timeout, "the charge point to disconnect")

    async def drop_connection(self, *, clean: bool = True) -> None:
        """Close the current connection from the CSMS side and wait until it is gone.

        ``clean=False`` aborts the TCP connection without a close handshake, like a
        network cut. A station that reconnects at once may already be connected again
        when this returns; use `wait_connected(after=...)` to wait for that.
        """
        ws = self._ws
        if ws is None:
            return
        if clean:
            await ws.close(1000, "closed by CSMS")
        else:
            ws.transport.abort()
        await self.wait_until(lambda: True if self._ws is not ws else None, 10, "the connection to close")

    # ---------------------------------------------------------------- receiving
    def _receive(self, ws: ServerConnection, raw: str | bytes) -> None:
        if isinstance(raw, bytes):
            # OCPP-J §3: messages are sent as websocket text frames.
            text = raw.decode("utf-8", errors="replace")
            self._violation(f"binary websocket frame (OCPP-J uses text frames): {text[:200]}")
            self._record("in", "invalid", None, None, None, text)
            return
        frame = parse_frame(raw)
        if frame.kind == "invalid":
            self._violation(f"invalid frame: {frame.problem}")
            self._record("in", "invalid", None, None, frame.unique_id, raw)
        elif frame.kind == "call":
            assert frame.action is not None
            if frame.action not in CP_INITIATED_ACTIONS:
                self._violation(f"{frame.action} is not a call a charge point sends (OCPP 1.6 §4)")
            else:
                self._check_schema("call", frame.action, frame.payload)
            msg = self._record("in", "call", frame.action, frame.payload, frame.unique_id, raw)
            self._spawn(self._answer(ws, msg))
        else:
            assert frame.unique_id is not None
            action = self._sent_actions.get(frame.unique_id)
            if action is None:
                self._violation(f"{frame.kind} for unknown uniqueId {frame.unique_id!r}: {raw[:200]}")
            elif frame.kind == "result":
                self._check_schema("result", action, frame.payload)
            elif frame.payload["errorCode"] not in CALL_ERROR_CODES:
                self._violation(f"CALLERROR to {action} has errorCode {frame.payload['errorCode']!r}, not an OCPP-J 1.6 code")
            msg = self._record("in", frame.kind, action, frame.payload, frame.unique_id, raw)
            future = self._pending.get(frame.unique_id)
            if future is not None and not future.done():
                future.set_result(msg)

    def _check_schema(self, kind: str, action: str, payload: Any) -> None:
        label = action if kind == "call" else f"{action}.conf"
        problem = schema_problem(kind, action, payload)
        if problem is not None:
            self._violation(f"{label} does not validate against the OCPP 1.6 schema: {problem}")
            return
        problem = semantic_problem(kind, action, payload)
        if problem is not None:
            self._violation(f"{label} breaks the security whitepaper: {problem}")

    def _violation(self, text: str) -> None:
        log.warning("CSMS: %s", redact_text(text))
        self.schema_errors.append(text)

    async def _answer(self, ws: ServerConnection, call: Msg) -> None:
        assert call.action is not None and call.unique_id is not None
        handler = self._handlers.get(call.action)
        try:
            if handler is None:
                # OCPP-J §4.2.3: NotSupported = action recognised but not supported,
                # NotImplemented = action not known.
                code = "NotSupported" if call.action in CP_INITIATED_ACTIONS else "NotImplemented"
                raise CsmsCallError(code, f"{call.action} is not handled by this CSMS")
            reply = handler(copy.deepcopy(call.payload))
            if inspect.isawaitable(reply):
                reply = await reply
        except CsmsCallError as err:
            await self._send_error(ws, call, err.code, err.description, err.details)
            return
        except Exception as exc:  # a broken test handler must not kill the CSMS
            log.exception("CSMS: handler for %s failed", call.action)
            await self._send_error(ws, call, "InternalError", f"handler failed: {exc}")
            return
        if reply is NO_REPLY:
            log.info("CSMS: not answering %s %s (scripted silence)", call.action, call.unique_id)
            return
        if not isinstance(reply, dict):
            log.error("CSMS: handler for %s returned %r, not a dict", call.action, reply)
            await self._send_error(ws, call, "InternalError", "handler returned no payload")
            return
        _warn_if_invalid("result", call.action, reply)
        await self._send(ws, "result", call.action, reply, call.unique_id, dump_result(call.unique_id, reply))
        if call.action == "SignCertificate":
            await self._after_sign_certificate(call.payload, reply)

    async def _send_error(
        self, ws: ServerConnection, call: Msg, code: str, description: str, details: dict[str, Any] | None = None
    ) -> None:
        assert call.unique_id is not None
        details = details or {}
        error = {"errorCode": code, "errorDescription": description, "errorDetails": details}
        await self._send(ws, "error", call.action, error, call.unique_id,
                         dump_error(call.unique_id, code, description, details))

    # ------------------------------------------------------------------ sending
    async def _send(
        self, ws: ServerConnection, kind: Kind, action: str | None, payload: Any, unique_id: str | None, raw: str
    ) -> Msg | None:
        """Record and send one frame on ``ws``, unless that connection is no longer the current one."""
        if ws is not self._ws:
            log.warning("CSMS: not sending %s %s: the connection it belongs to is gone", kind, action)
            return None
        msg = self._record("out", kind, action, payload, unique_id, raw)
        try:
            await ws.send(raw)
        except ConnectionClosed as exc:
            log.warning("CSMS: sending %s %s failed: %s", kind, action, exc)
        return msg

    async def call(self, action: str, payload: dict[str, Any], timeout: float = 10) -> dict[str, Any]:
        """Send a CSMS->CP call and return the .conf payload.

        Raises `CallErrorReceived` on CALLERROR, `TimeoutError` (= asyncio.TimeoutError)
        on silence, `ConnectionError` if no station is connected or it disconnects.
        """
        ws = self._ws
        if ws is None:
            raise ConnectionError(f"cannot send {action}: no charge point connected")
        unique_id = str(uuid.uuid4())
        _warn_if_invalid("call", action, payload)
        future: asyncio.Future[Msg] = asyncio.get_running_loop().create_future()
        self._pending[unique_id] = future
        self._sent_actions[unique_id] = action
        try:
            await self._send(ws, "call", action, payload, unique_id, dump_call(unique_id, action, payload))
            try:
                async with asyncio.timeout(timeout):
                    reply = await future
            except TimeoutError:
                raise TimeoutError(f"no reply to {action} within {timeout}s") from None
        finally:
            self._pending.pop(unique_id, None)
        if reply.kind == "error":
            raise CallErrorReceived(
                reply.payload["errorCode"], reply.payload["errorDescription"], reply.payload["errorDetails"]
            )
        return dict(reply.payload)

    async def send_raw(self, text: str) -> Msg:
        """Send ``text`` as one frame, as is; return its record.

        If it parses as a CALL, the reply is labelled with its action; await it with
        `wait_reply(unique_id)`, or any answer with `wait_frame`.
        """
        ws = self._ws
        if ws is None:
            raise ConnectionError("cannot send a raw frame: no charge point connected")
        frame = parse_frame(text)
        if frame.kind == "call" and frame.unique_id is not None and frame.action is not None:
            self._sent_actions[frame.unique_id] = frame.action
        msg = await self._send(ws, frame.kind, frame.action, frame.payload, frame.unique_id, text)
        assert msg is not None
        return msg

    # ----------------------------------------------------------------- security
    def _sign_certificate(self, payload: dict[str, Any]) -> dict[str, Any]:
        """SignCertificate.req: Accepted = the CSMS will process the CSR (A02.FR.11),
        Rejected when it cannot: the CSR is unusable (A02.FR.12)."""
        if self.pki is not None and self.auto_sign_certificates:
            try:
                self._signed_chains[str(payload.get("csr", ""))] = self.pki.sign_csr(str(payload.get("csr", "")))
            except (CsrError, OSError) as exc:
                log.warning("CSMS: not signing the CSR: %s", exc)
                return {"status": "Rejected"}
        return {"status": "Accepted"}

    async def _after_sign_certificate(self, payload: dict[str, Any], reply: dict[str, Any]) -> None:
        """After the .conf, as a CPO CA would: CertificateSigned with the signed CSR (A02)."""
        csr = str(payload.get("csr", ""))
        chain = self._signed_chains.pop(csr, None)
        if reply.get("status") != "Accepted" or self.pki is None or not self.auto_sign_certificates:
            return
        if chain is None:  # a scripted SignCertificate handler answered Accepted
            try:
                chain = self.pki.sign_csr(csr)
            except (CsrError, OSError) as exc:
                log.warning("CSMS: cannot sign the CSR of an accepted SignCertificate: %s", exc)
                return
        try:
            result: dict[str, Any] | Exception = await self.certificate_signed(chain)
        except (CallErrorReceived, TimeoutError, ConnectionError) as exc:
            result = exc
        log.info("CSMS: CertificateSigned answered %s", result)
        self.certificate_signed_results.append((chain, result))
        self._notify()

    def next_request_id(self) -> int:
        """A fresh requestId for GetLog / SignedUpdateFirmware."""
        return next(self._request_ids)

    async def install_certificate(self, certificate_type: str, certificate: str, timeout: float = 10) -> dict[str, Any]:
        """InstallCertificate (M05): ``certificate_type`` is CentralSystemRootCertificate
        or ManufacturerRootCertificate, ``certificate`` one PEM certificate."""
        return await self.call("InstallCertificate", {"certificateType": certificate_type,
                                                      "certificate": certificate}, timeout)

    async def get_installed_certificate_ids(self, certificate_type: str, timeout: float = 10) -> dict[str, Any]:
        """GetInstalledCertificateIds (M03)."""
        return await self.call("GetInstalledCertificateIds", {"certificateType": certificate_type}, timeout)

    async def delete_certificate(self, certificate_hash_data: dict[str, Any], timeout: float = 10) -> dict[str, Any]:
        """DeleteCertificate (M04) of the certificate ``certificate_hash_data`` names."""
        return await self.call("DeleteCertificate", {"certificateHashData": certificate_hash_data}, timeout)

    async def extended_trigger_message(self, requested_message: str, connector_id: int | None = None,
                                       timeout: float = 10) -> dict[str, Any]:
        """ExtendedTriggerMessage, e.g. "SignChargePointCertificate" to start A02."""
        payload: dict[str, Any] = {"requestedMessage": requested_message}
        if connector_id is not None:
            payload["connectorId"] = connector_id
        return await self.call("ExtendedTriggerMessage", payload, timeout)

    async def get_log(self, remote_location: str, *, log_type: str = "SecurityLog", request_id: int | None = None,
                      oldest_timestamp: str | None = None, latest_timestamp: str | None = None,
                      retries: int | None = None, retry_interval: int | None = None,
                      timeout: float = 10) -> dict[str, Any]:
        """GetLog (N01): the station uploads ``log_type`` (SecurityLog or DiagnosticsLog) to
        ``remote_location`` and reports LogStatusNotification with ``request_id``
        (a fresh one when None; read it back from the sent frame or pass your own)."""
        log_params: dict[str, Any] = {"remoteLocation": remote_location}
        if oldest_timestamp is not None:
            log_params["oldestTimestamp"] = oldest_timestamp
        if latest_timestamp is not None:
            log_params["latestTimestamp"] = latest_timestamp
        payload: dict[str, Any] = {"logType": log_type,
                                   "requestId": self.next_request_id() if request_id is None else request_id,
                                   "log": log_params}
        if retries is not None:
            payload["retries"] = retries
        if retry_interval is not None:
            payload["retryInterval"] = retry_interval
        return await self.call("GetLog", payload, timeout)

    async def signed_update_firmware(self, location: str, retrieve_date_time: str, signing_certificate: str,
                                     signature: str, *, request_id: int | None = None,
                                     install_date_time: str | None = None, retries: int | None = None,
                                     retry_interval: int | None = None, timeout: float = 10) -> dict[str, Any]:
        """SignedUpdateFirmware (L01): ``signature`` is Base64 over the whole file,
        ``signing_certificate`` PEM, issued by a ManufacturerRootCertificate."""
        firmware: dict[str, Any] = {"location": location, "retrieveDateTime": retrieve_date_time,
                                    "signingCertificate": signing_certificate, "signature": signature}
        if install_date_time is not None:
            firmware["installDateTime"] = install_date_time
        payload: dict[str, Any] = {"requestId": self.next_request_id() if request_id is None else request_id,
                                   "firmware": firmware}
        if retries is not None:
            payload["retries"] = retries
        if retry_interval is not None:
            payload["retryInterval"] = retry_interval
        return await self.call("SignedUpdateFirmware", payload, timeout)

    async def certificate_signed(self, certificate_chain: str, timeout: float = 10) -> dict[str, Any]:
        """CertificateSigned (A02/A03): the PEM chain, leaf first."""
        return await self.call("CertificateSigned", {"certificateChain": certificate_chain}, timeout)

    async def change_configuration(self, key: str, value: str, timeout: float = 10) -> dict[str, Any]:
        """ChangeConfiguration, e.g. ("SecurityProfile", "2") or ("AuthorizationKey", key)."""
        return await self.call("ChangeConfiguration", {"key": key, "value": value}, timeout)

    # ------------------------------------------------------------------ waiting
    def _notify(self) -> None:
        # Wake every waiter; each re-checks its condition and waits on the new event.
        self._changed.set()
        self._changed = asyncio.Event()

    async def wait_until(self, check: Callable[[], T | None], timeout: float, what: str = "a condition") -> T:
        """Re-run ``check`` after every frame or connection change until it returns non-None.

        Exceptions from ``check`` propagate (a matcher can fail fast); on timeout,
        `TimeoutError` names ``what`` was awaited.
        """
        try:
            async with asyncio.timeout(timeout):
                while True:
                    result = check()
                    if result is not None:
                        return result
                    await self._changed.wait()
        except TimeoutError:
            raise TimeoutError(f"timed out after {timeout}s waiting for {what}") from None

    @property
    def cursor(self) -> int:
        """Where `wait_for` starts looking by default (set by `mark`)."""
        return self._cursor

    def mark(self) -> int:
        """Move the `wait_for` cursor to "from now on"; return it (an index into `messages`)."""
        self._cursor = len(self.messages)
        return self._cursor

    def calls(self, action: str | None = None, *, after: int = 0) -> list[Msg]:
        """CP->CSMS calls received (at index >= ``after``), optionally of one action."""
        return [
            m for m in self.messages[after:]
            if m.direction == "in" and m.kind == "call" and (action is None or m.action == action)
        ]

    async def wait_for(
        self, action: str, pred: PayloadPattern = None, timeout: float = 30, after: int | None = None
    ) -> Msg:
        """The first matching CP->CSMS call (see the module doc for cursor and consumption).

        ``pred`` is a dict the payload must contain (subset match) or a predicate on it.
        """
        start = self._cursor if after is None else after

        def check() -> Msg | None:
            for msg in self.calls(action, after=start):
                if (after is not None or msg.index not in self._consumed) and payload_matches(pred, msg.payload):
                    self._consumed.add(msg.index)
                    return msg
            return None

        try:
            return await self.wait_until(check, timeout)
        except TimeoutError:
            seen = [str(m) for m in self.calls(after=start)]
            raise TimeoutError(
                f"no {action} matching {pred!r} from #{start} within {timeout}s; CP calls seen: {seen}"
            ) from None

    async def wait_frame(self, pred: Callable[[Msg], bool], timeout: float = 10, after: int | None = None) -> Msg:
        """The first incoming frame of any kind (also invalid ones) at index >= ``after`` (default: the cursor)."""
        start = self._cursor if after is None else after

        def check() -> Msg | None:
            return next((m for m in self.messages[start:] if m.direction == "in" and pred(m)), None)

        return await self.wait_until(check, timeout, "a matching frame from the charge point")

    def reply_to(self, msg: Msg) -> Msg | None:
        """The recorded answer (result or error) to the call ``msg``, in the other direction, if any yet."""
        direction = "out" if msg.direction == "in" else "in"
        return next(
            (
                m for m in self.messages[msg.index + 1:]
                if m.direction == direction and m.kind in ("result", "error") and m.unique_id == msg.unique_id
            ),
            None,
        )

    async def wait_reply(self, unique_id: str, timeout: float = 10) -> Msg:
        """The CALLRESULT or CALLERROR the station sent for ``unique_id``."""
        return await self.wait_frame(
            lambda m: m.kind in ("result", "error") and m.unique_id == unique_id, timeout, after=0
        )

    # ------------------------------------------------------------------ helpers
    def _record(
        self, direction: Direction, kind: Kind, action: str | None, payload: Any, unique_id: str | None, raw: str
    ) -> Msg:
        msg = Msg(len(self.messages), direction, kind, action, payload, unique_id, time.monotonic(), raw)
        self.messages.append(msg)
        # The record keeps the frame as sent; the log hides AuthorizationKey values and URL passwords.
        log.info("%s", redact_text(str(msg)))
        self._notify()
        return msg

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _fail_pending(self, exc: Exception) -> None:
        for future in self._pending.values():
            if not future.done():
                future.set_exception(exc)


def _charge_point_id(path: str) -> str:
    """The last path segment, URL-decoded: OCPP-J §3.1.1 puts the identity at the end of the URL."""
    return unquote(urlsplit(path).path.rstrip("/").rpartition("/")[2])


def _refuse(connection: ServerConnection, status: HTTPStatus, text: str) -> Response:
    log.warning("CSMS: refusing a connection: %s %s", status.value, text)
    return connection.respond(status, text + "\n")


def _warn_if_invalid(kind: str, action: str, payload: Any) -> None:
    """CSMS-side payloads are the test's choice (it may send invalid ones on purpose): only warn."""
    problem = schema_problem(kind, action, payload)
    if problem is not None:
        log.warning("CSMS: outgoing %s %s does not validate: %s", action, kind, problem)

