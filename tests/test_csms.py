"""The CSMS and the OCTT matcher against small scripted charge points over real loopback websockets.

Two kinds of charge point: `ScriptedCp`, an `ocpp.v16.ChargePoint` (client role)
that validates its own messages, and `RawCp`, a bare websocket that sends and
receives exact frames, for the cases the library would refuse to produce.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import os
import ssl
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from ocpp.exceptions import NotSupportedError
from ocpp.routing import after, on
from ocpp.v16 import ChargePoint, call, call_result
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import InvalidStatus

from twin.csms import NO_REPLY, CallErrorReceived, Csms, CsmsCallError

REPO = Path(__file__).resolve().parents[1]


from tests.octt import matcher as octt  # noqa: E402


class ScriptedCp(ChargePoint):
    """Answers the CSMS calls the tests use; remote start runs a short transaction start."""

    authorize_remote = "false"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.profiles: list[dict[str, Any]] = []

    @on("Reset")
    def on_reset(self, type: str) -> call_result.Reset:
        return call_result.Reset(status="Accepted")

    @on("GetConfiguration")
    def on_get_configuration(self, key: list[str] | None = None) -> call_result.GetConfiguration:
        return call_result.GetConfiguration(
            configuration_key=[{"key": "AuthorizeRemoteTxRequests", "readonly": False, "value": self.authorize_remote}]
        )

    @on("RemoteStartTransaction")
    def on_remote_start(self, id_tag: str, connector_id: int | None = None) -> call_result.RemoteStartTransaction:
        return call_result.RemoteStartTransaction(status="Accepted")

    @after("RemoteStartTransaction")
    async def after_remote_start(self, id_tag: str, connector_id: int | None = None) -> None:
        if self.authorize_remote == "true":
            await self.call(call.Authorize(id_tag=id_tag))
        # OCTT allows SN Charging before StartTransaction; this station does that.
        await self.call(call.StatusNotification(connector_id=connector_id, error_code="NoError", status="Charging"))
        await self.call(call.StartTransaction(connector_id=connector_id, id_tag=id_tag, meter_start=0,
                                              timestamp="2024-01-01T00:00:00Z"))

    @on("ChangeAvailability")
    def on_change_availability(self, connector_id: int, type: str) -> call_result.ChangeAvailability:
        return call_result.ChangeAvailability(status="Accepted")

    @after("ChangeAvailability")
    async def after_change_availability(self, connector_id: int, type: str) -> None:
        status = "Unavailable" if type == "Inoperative" else "Available"
        for connector in [0, 1] if connector_id == 0 else [connector_id]:
            await self.status(connector, status)

    @on("ReserveNow")
    def on_reserve_now(self, **_: Any) -> call_result.ReserveNow:
        return call_result.ReserveNow(status="Accepted")

    @after("ReserveNow")
    async def after_reserve_now(self, connector_id: int, **_: Any) -> None:
        # Connector 0: this one-connector station keeps connector 1 for the tag.
        await self.status(connector_id or 1, "Reserved")

    @on("SetChargingProfile")
    def on_set_charging_profile(self, connector_id: int, cs_charging_profiles: dict) -> call_result.SetChargingProfile:
        self.profiles.append(cs_charging_profiles)
        return call_result.SetChargingProfile(status="Accepted")

    @on("RemoteStopTransaction")
    def on_remote_stop(self, transaction_id: int) -> call_result.RemoteStopTransaction:
        return call_result.RemoteStopTransaction(status="Accepted")

    @after("RemoteStopTransaction")
    async def after_remote_stop(self, transaction_id: int) -> None:
        await self.call(call.StopTransaction(transaction_id=transaction_id, meter_stop=10,
                                             timestamp="2024-01-01T01:00:00Z", reason="Remote"))

    @on("CancelReservation")
    def on_cancel_reservation(self, reservation_id: int) -> call_result.CancelReservation:
        return call_result.CancelReservation(status="Accepted")

    @on("ClearCache")
    def on_clear_cache(self) -> call_result.ClearCache:
        return call_result.ClearCache(status="Accepted")

    @on("SendLocalList")
    def on_send_local_list(self, **_: Any) -> call_result.SendLocalList:
        # A station without the Local Auth List Management profile.
        raise NotSupportedError("no local list")

    @on("ClearChargingProfile")
    def on_clear_charging_profile(self, **_: Any) -> call_result.ClearChargingProfile:
        return call_result.ClearChargingProfile(status="Unknown")

    @on("ChangeConfiguration")
    def on_change_configuration(self, key: str, value: str) -> call_result.ChangeConfiguration:
        return call_result.ChangeConfiguration(status="Accepted")

    async def status(self, connector_id: int, status: str) -> None:
        await self.call(call.StatusNotification(connector_id=connector_id, error_code="NoError", status=status))

    async def boot(self) -> Any:
        return await self.call(call.BootNotification(charge_point_vendor="XJ Power", charge_point_model="iEVQC33"))


@asynccontextmanager
async def scripted_cp(csms: Csms, cp_id: str = "CP1", response_timeout: float = 5) -> AsyncIterator[ScriptedCp]:
    async with connect(f"{csms.url}/{cp_id}", subprotocols=["ocpp1.6"]) as ws:
        cp = ScriptedCp(cp_id, ws, response_timeout=response_timeout)
        task = asyncio.create_task(cp.start())
        try:
            yield cp
        finally:
            task.cancel()


class RawCp:
    """A charge point that sends and receives exact frames."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws

    async def send(self, frame: Any) -> None:
        await self.ws.send(frame if isinstance(frame, str) else json.dumps(frame))

    async def recv(self, timeout: float = 5) -> Any:
        return json.loads(await asyncio.wait_for(self.ws.recv(), timeout))


@asynccontextmanager
async def raw_cp(csms: Csms, cp_id: str = "CP1", **kwargs: Any) -> AsyncIterator[RawCp]:
    async with connect(f"{csms.url}/{cp_id}", subprotocols=["ocpp1.6"], **kwargs) as ws:
        yield RawCp(ws)


@pytest.fixture
async def csms() -> AsyncIterator[Csms]:
    async with Csms() as server:
        yield server


# ------------------------------------------------------------------ default replies


async def test_boot_is_accepted_recorded_validated_and_logged(csms: Csms, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="twin.csms")
    async with scripted_cp(csms) as cp:
        conf = await cp.boot()
        assert await csms.wait_connected() == "CP1"
    assert conf.status == "Accepted" and conf.interval == 30 and conf.current_time.endswith("Z")
    boot = csms.calls("BootNotification")[0]
    assert boot.payload == {"chargePointVendor": "XJ Power", "chargePointModel": "iEVQC33"}
    reply = csms.reply_to(boot)
    assert reply is not None and reply.direction == "out" and reply.kind == "result"
    assert reply.action == "BootNotification" and json.loads(reply.raw)[2] == reply.payload
    assert csms.schema_errors == []
    assert any(r.getMessage().startswith("CSMS <- BootNotification {") for r in caplog.records)
    assert any(r.getMessage().startswith("CSMS -> BootNotification.conf {") for r in caplog.records)


async def test_boot_status_and_interval_are_settable() -> None:
    async with Csms(boot_status="Pending", heartbeat_interval=7) as csms, scripted_cp(csms) as cp:
        first = await cp.boot()
        csms.boot_status = "Rejected"
        second = await cp.boot()
    assert (first.status, first.interval, second.status) == ("Pending", 7, "Rejected")


async def test_id_tag_table_and_transaction_ids(csms: Csms) -> None:
    csms.id_tags["BLOCKED"] = {"status": "Blocked", "parentIdTag": "P1"}
    async with scripted_cp(csms) as cp:
        assert (await cp.call(call.Authorize(id_tag="ANY"))).id_tag_info == {"status": "Accepted"}
        await cp.call(call.Authorize(id_tag="BLOCKED"))
        assert wire_reply(csms, "Authorize", -1) == {"idTagInfo": {"status": "Blocked", "parentIdTag": "P1"}}
        ids = []
        for tag in ("A", "BLOCKED"):
            conf = await cp.call(call.StartTransaction(connector_id=1, id_tag=tag, meter_start=0,
                                                       timestamp="2024-01-01T00:00:00Z"))
            ids.append((conf.transaction_id, conf.id_tag_info["status"]))
        with_tag = await cp.call(call.StopTransaction(meter_stop=5, timestamp="2024-01-01T00:01:00Z",
                                                      transaction_id=1, id_tag="BLOCKED"))
        without_tag = await cp.call(call.StopTransaction(meter_stop=5, timestamp="2024-01-01T00:01:00Z",
                                                         transaction_id=2))
        heartbeat = await cp.call(call.Heartbeat())
        data = await cp.call(call.DataTransfer(vendor_id="com.example"))
    assert ids == [(1, "Accepted"), (2, "Blocked")]
    assert with_tag.id_tag_info["status"] == "Blocked" and without_tag.id_tag_info is None
    assert wire_reply(csms, "StopTransaction", 0) == {"idTagInfo": {"status": "Blocked", "parentIdTag": "P1"}}
    assert wire_reply(csms, "StopTransaction", 1) == {}
    assert heartbeat.current_time.endswith("Z") and data.status == "UnknownVendorId"
    assert csms.schema_errors == []


def wire_reply(csms: Csms, action: str, n: int) -> Any:
    """The payload the CSMS sent back to the n-th ``action`` call."""
    reply = csms.reply_to(csms.calls(action)[n])
    assert reply is not None
    return reply.payload


# ------------------------------------------------------------------ scripting


async def test_scripted_callerror_silence_async_and_broken_handlers(csms: Csms) -> None:
    async def slow_authorize(payload: dict[str, Any]) -> dict[str, Any]:
        await asyncio.sleep(0)
        return {"idTagInfo": {"status": "Expired"}}

    def fail(payload: dict[str, Any]) -> dict[str, Any]:
        raise CsmsCallError("GenericError", "scripted failure")

    csms.on("StartTransaction", fail)
    csms.on("MeterValues", lambda payload: NO_REPLY)
    csms.on("Authorize", slow_authorize)
    csms.on("Heartbeat", lambda payload: 1 / 0)
    async with scripted_cp(csms) as cp:
        with pytest.raises(Exception) as failed:
            await cp.call(call.StartTransaction(connector_id=1, id_tag="A", meter_start=0,
                                                timestamp="2024-01-01T00:00:00Z"), suppress=False)
        assert failed.value.code == "GenericError"
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(cp.call(call.MeterValues(connector_id=1, meter_value=[
                {"timestamp": "2024-01-01T00:00:00Z", "sampledValue": [{"value": "10"}]}])), 0.3)
        assert (await cp.call(call.Authorize(id_tag="A"))).id_tag_info == {"status": "Expired"}
        with pytest.raises(Exception) as broken:
            await cp.call(call.Heartbeat(), suppress=False)
        assert broken.value.code == "InternalError"
        csms.on("StartTransaction", None)  # back to the default
        conf = await cp.call(call.StartTransaction(connector_id=1, id_tag="A", meter_start=0,
                                                   timestamp="2024-01-01T00:00:00Z"))
        # A known action whose handler was taken away: NotSupported (OCPP-J §4.2.3).
        csms._handlers.pop("SignCertificate")
        with pytest.raises(Exception) as unknown:
            await cp.call(call.SignCertificate(csr="x"), suppress=False)
    assert conf.transaction_id == 1 and unknown.value.code == "NotSupported"
    meter_values = csms.calls("MeterValues")[0]
    assert csms.reply_to(meter_values) is None
    # The only complaint is the CSR that is not one.
    assert len(csms.schema_errors) == 1 and "csr is not a PEM PKCS#10" in csms.schema_errors[0]


async def test_call_returns_conf_and_raises_on_callerror_and_silence(csms: Csms) -> None:
    async with raw_cp(csms) as cp:
        await csms.wait_connected()
        reset = asyncio.create_task(csms.call("Reset", {"type": "Hard"}))
        request = await cp.recv()
        assert request[0] == 2 and request[2:] == ["Reset", {"type": "Hard"}]
        await cp.send([3, request[1], {"status": "Rejected"}])
        assert await reset == {"status": "Rejected"}

        unlock = asyncio.create_task(csms.call("UnlockConnector", {"connectorId": 1}))
        request = await cp.recv()
        await cp.send([4, request[1], "NotSupported", "no lock", {"why": "fixed cable"}])
        with pytest.raises(CallErrorReceived) as err:
            await unlock
        assert (err.value.code, err.value.description, err.value.details) == ("NotSupported", "no lock", {"why": "fixed cable"})

        with pytest.raises(TimeoutError, match="no reply to ClearCache"):
            await csms.call("ClearCache", {}, timeout=0.2)
        late = await cp.recv()
        await cp.send([3, late[1], {"status": "Accepted"}])  # a late answer is still recorded, labelled
        reply = await csms.wait_reply(late[1])
    assert reply.action == "ClearCache" and reply.kind == "result"
    assert csms.schema_errors == []


async def test_schema_and_protocol_violations_are_recorded(csms: Csms) -> None:
    async with raw_cp(csms) as cp:
        await cp.send([2, "b1", "BootNotification", {"chargePointVendor": "X"}])
        boot_conf = await cp.recv()  # the CSMS still answers, so the station is not stuck
        assert boot_conf[0] == 3 and boot_conf[2]["status"] == "Accepted"
        await cp.send("this is not json")
        await cp.send([3, "never-sent", {}])
        await cp.send([2, "x1", "RemoteStartTransaction", {"idTag": "A"}])
        assert (await cp.recv())[2] == "NotImplemented"

        reset = asyncio.create_task(csms.call("Reset", {"type": "Soft"}))
        request = await cp.recv()
        await cp.send([3, request[1], {"status": "Maybe"}])
        assert await reset == {"status": "Maybe"}  # returned as received; the violation is recorded

        unlock = asyncio.create_task(csms.call("UnlockConnector", {"connectorId": 1}))
        request = await cp.recv()
        await cp.send([4, request[1], "FormatViolation", "2.x spelling", {}])
        with pytest.raises(CallErrorReceived):
            await unlock
    errors = csms.schema_errors
    assert len(errors) == 6, errors
    assert "BootNotification" in errors[0] and "chargePointModel" in errors[0]
    assert errors[1].startswith("invalid frame: not JSON")
    assert "unknown uniqueId 'never-sent'" in errors[2]
    assert "RemoteStartTransaction is not a call a charge point sends" in errors[3]
    assert "Reset.conf" in errors[4] and "Maybe" in errors[4]
    assert "'FormatViolation', not an OCPP-J 1.6 code" in errors[5]
    assert [m.kind for m in csms.messages if m.direction == "in"][:3] == ["call", "invalid", "result"]


async def test_send_raw_frames_and_their_answers(csms: Csms) -> None:
    async with scripted_cp(csms):
        await csms.wait_connected()
        sent = await csms.send_raw('[2,"raw-1","Reset",{}]')  # missing the required "type"
        error = await csms.wait_reply("raw-1")
        assert sent.kind == "call" and sent.action == "Reset"
        assert error.kind == "error" and error.action == "Reset" and error.payload["errorCode"]
        mark = csms.mark()
        await csms.send_raw('[2,"raw-2","NoSuchAction",{}]')
        answer = await csms.wait_frame(lambda m: m.kind == "error")
    assert answer.index >= mark and answer.unique_id == "raw-2"
    assert csms.messages[sent.index].raw == '[2,"raw-1","Reset",{}]'


# ------------------------------------------------------------------ wait_for and mark


async def test_wait_for_consumes_in_order_and_mark_starts_fresh(csms: Csms) -> None:
    async with scripted_cp(csms) as cp:
        for status in ("Preparing", "Charging", "Finishing"):
            await cp.status(1, status)
        first = await csms.wait_for("StatusNotification")
        second = await csms.wait_for("StatusNotification")
        finishing = await csms.wait_for("StatusNotification", lambda p: p["status"] == "Finishing")
        again = await csms.wait_for("StatusNotification", {"status": "Preparing"}, after=0)
        csms.mark()
        waiter = asyncio.create_task(csms.wait_for("StatusNotification", {"connectorId": 1}, timeout=5))
        await cp.status(1, "Available")
        fresh = await waiter
        with pytest.raises(TimeoutError, match="no StatusNotification matching"):
            await csms.wait_for("StatusNotification", timeout=0.1)
    assert [m.payload["status"] for m in (first, second, finishing, again, fresh)] == [
        "Preparing", "Charging", "Finishing", "Preparing", "Available"]


# ------------------------------------------------------------------ connections


async def test_basic_auth_accepts_good_and_rejects_bad_credentials() -> None:
    async with Csms(require_password="s3cret:pw") as csms:
        async with raw_cp(csms, additional_headers={"Authorization": _basic("CP1", b"s3cret:pw")}):
            assert await csms.wait_connected() == "CP1"
        await csms.wait_disconnected()
        for user, password in [("CP1", b"wrong"), ("OTHER", b"s3cret:pw")]:
            with pytest.raises(InvalidStatus) as refused:
                async with raw_cp(csms, additional_headers={"Authorization": _basic(user, password)}):
                    pass
            assert refused.value.response.status_code == 401
            assert refused.value.response.headers["WWW-Authenticate"].startswith("Basic")
        with pytest.raises(InvalidStatus) as missing:
            async with raw_cp(csms):
                pass
        assert missing.value.response.status_code == 401
    assert csms.connection_count == 1


async def test_basic_auth_with_a_hex_authorization_key_wants_the_decoded_bytes() -> None:
    # OCPP-J 1.6 §6.2.2 / A00.FR.205: the password on the wire is the decoded key, not its hex text.
    key = "0123456789abcdef0123456789abcdef01234567"
    async with Csms(require_password=key) as csms:
        async with raw_cp(csms, additional_headers={"Authorization": _basic("CP1", bytes.fromhex(key))}):
            await csms.wait_connected()
        await csms.wait_disconnected()
        with pytest.raises(InvalidStatus) as refused:
            async with raw_cp(csms, additional_headers={"Authorization": _basic("CP1", key.encode())}):
                pass
        assert refused.value.response.status_code == 401
    assert csms.connection_count == 1


async def test_wrong_subprotocol_busy_and_unknown_identity_are_refused() -> None:
    async with Csms(charge_point_id="CP1") as csms:
        for protocols in (None, ["ocpp2.0.1"]):
            with pytest.raises(InvalidStatus) as wrong:
                async with connect(f"{csms.url}/CP1", subprotocols=protocols):
                    pass
            assert wrong.value.response.status_code == 400
        with pytest.raises(InvalidStatus) as unknown:
            async with raw_cp(csms, "CP2"):
                pass
        assert unknown.value.response.status_code == 404
    async with Csms() as csms, raw_cp(csms, "CP1"):
        await csms.wait_connected()
        with pytest.raises(InvalidStatus) as busy:
            async with raw_cp(csms, "CP2"):
                pass
        assert busy.value.response.status_code == 409


async def test_reconnect_of_the_same_station_replaces_the_old_connection(csms: Csms) -> None:
    async with raw_cp(csms) as old:
        await csms.wait_connected()
        async with raw_cp(csms) as new:
            await csms.wait_connected(after=1)
            await old.ws.wait_closed()
            reset = asyncio.create_task(csms.call("Reset", {"type": "Soft"}))
            request = await new.recv()
            await new.send([3, request[1], {"status": "Accepted"}])
            assert await reset == {"status": "Accepted"}
    assert old.ws.close_code == 1000 and csms.connection_count == 2


async def test_drop_connection_fails_pending_calls_and_allows_reconnect(csms: Csms) -> None:
    with pytest.raises(ConnectionError, match="no charge point connected"):
        await csms.call("Reset", {"type": "Soft"})
    async with raw_cp(csms) as cp:
        await csms.wait_connected()
        pending = asyncio.create_task(csms.call("Reset", {"type": "Soft"}))
        await cp.recv()
        await csms.drop_connection()
        with pytest.raises(ConnectionError):
            await pending
        assert not csms.connected
    async with raw_cp(csms) as cp:
        await csms.wait_connected(after=1)
        await csms.drop_connection(clean=False)
        await csms.wait_disconnected()
    with pytest.raises(TimeoutError, match="a charge point connection"):
        await csms.wait_connected(timeout=0.1)


@pytest.fixture
def self_signed(tmp_path: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 made with the openssl CLI: (cert, key)."""
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
         "-keyout", str(key), "-out", str(cert), "-days", "1", "-subj", "/CN=localhost",
         "-addext", "subjectAltName=IP:127.0.0.1"],
        check=True, capture_output=True,
    )
    return cert, key


async def test_tls(self_signed: tuple[Path, Path]) -> None:
    cert, key = self_signed
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(cert, key)
    client_ctx = ssl.create_default_context(cafile=str(cert))
    async with Csms(ssl_context=server_ctx) as csms:
        assert csms.url.startswith("wss://")
        async with raw_cp(csms, ssl=client_ctx) as cp:
            await cp.send([2, "h1", "Heartbeat", {}])
            assert (await cp.recv())[0] == 3


async def test_console_entry_runs_a_standalone_csms() -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "twin.csms", "--port", "0", "--heartbeat-interval", "11",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT, env=env,
    )
    try:
        assert proc.stdout is not None
        line = ""
        while "CSMS ready" not in line:
            line = (await asyncio.wait_for(proc.stdout.readline(), 10)).decode()
            assert line, "the CSMS exited early"
        url = line.split("point a station at ")[1].split("/<")[0]
        async with connect(f"{url}/CP9", subprotocols=["ocpp1.6"]) as ws:
            await ws.send('[2,"1","BootNotification",{"chargePointVendor":"X","chargePointModel":"Y"}]')
            assert json.loads(await asyncio.wait_for(ws.recv(), 5))[2]["interval"] == 11
        proc.terminate()
        output = (await asyncio.wait_for(proc.stdout.read(), 10)).decode()
        assert await proc.wait() == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert "CSMS <- BootNotification" in output and "CSMS -> BootNotification.conf" in output


def _basic(user: str, password: bytes) -> str:
    return "Basic " + base64.b64encode(user.encode() + b":" + password).decode()


# ------------------------------------------------------------------ the OCTT matcher


async def send_statuses(cp: ScriptedCp, *steps: tuple[str, Any]) -> None:
    """Send CP calls in this order: ("SN", status) or an ocpp call dataclass."""
    for kind, value in steps:
        if kind == "SN":
            await cp.status(1, value)
        else:
            await cp.call(value)


START = call.StartTransaction(connector_id=1, id_tag="T", meter_start=0, timestamp="2024-01-01T00:00:00Z")
STOP = call.StopTransaction(meter_stop=9, timestamp="2024-01-01T00:10:00Z", transaction_id=1)
AUTH = call.Authorize(id_tag="T")
SESSION = [
    ("StatusNotification", {"connectorId": 1, "status": "Preparing"}),
    ("Authorize", {"idTag": "T"}),
    ("StartTransaction", {"connectorId": 1}),
    ("StatusNotification", {"status": "Charging"}),
    ("StopTransaction", {"transactionId": 1}),
    ("StatusNotification", {"status": "Finishing"}),
]


async def test_expect_sequence_allows_the_octt_swaps_and_ignores_unrelated(csms: Csms) -> None:
    async with scripted_cp(csms) as cp:
        since = csms.mark()
        waiter = asyncio.create_task(octt.expect_sequence(csms, SESSION, timeout=5))
        await send_statuses(cp, ("SN", "Preparing"), ("call", call.Heartbeat()), ("call", AUTH),
                            ("SN", "Charging"), ("call", START), ("SN", "Finishing"), ("call", STOP))
        matched = await waiter
    assert [m.action for m in matched] == [a for a, _ in SESSION]
    assert matched[3].payload["status"] == "Charging" and matched[3].index < matched[2].index
    assert matched[5].payload["status"] == "Finishing" and matched[5].index < matched[4].index
    assert all(m.index >= since for m in matched)


async def test_expect_sequence_rejects_other_reorderings(csms: Csms) -> None:
    async with scripted_cp(csms) as cp:
        await send_statuses(cp, ("call", AUTH), ("SN", "Preparing"))
        with pytest.raises(AssertionError, match="out of order: CSMS <- Authorize"):
            await octt.expect_sequence(csms, SESSION[:2], since=0, timeout=5)
        # The swap is only allowed between neighbours: Charging may not precede Authorize.
        mark = csms.mark()
        await send_statuses(cp, ("SN", "Preparing"), ("SN", "Charging"), ("call", AUTH), ("call", START))
        with pytest.raises(AssertionError, match="out of order"):
            await octt.expect_sequence(csms, SESSION[:4], since=mark, timeout=5)


async def test_any_order_groups_and_timeout_report(csms: Csms) -> None:
    async with scripted_cp(csms) as cp:
        await send_statuses(cp, ("call", AUTH), ("SN", "Preparing"), ("call", START))
        matched = await octt.expect_sequence(
            csms, [octt.any_order(SESSION[0], SESSION[1]), SESSION[2]], since=0, timeout=5)
        assert [m.action for m in matched] == ["StatusNotification", "Authorize", "StartTransaction"]
        with pytest.raises(AssertionError, match=r"sequence incomplete after 0.1s: 1/2 groups.*StopTransaction"):
            await octt.expect_sequence(csms, [SESSION[2], SESSION[4]], since=0, timeout=0.1)


async def test_forbid_windows_and_wait_status(csms: Csms) -> None:
    async with scripted_cp(csms) as cp:
        await cp.status(1, "Preparing")
        mark = len(csms.messages)
        await cp.call(call.Heartbeat())
        end = len(csms.messages)
        await cp.call(START)
        octt.forbid(csms, ["StartTransaction", "Authorize"], mark, until=end)
        octt.forbid(csms, "StatusNotification", mark, {"status": "Charging"})
        with pytest.raises(AssertionError, match="forbidden calls arrived: CSMS <- StartTransaction"):
            octt.forbid(csms, "StartTransaction", mark)
        assert (await octt.wait_status(csms, 1, "Preparing", timeout=1)).payload["status"] == "Preparing"
        waiter = asyncio.create_task(octt.wait_status(csms, 1, "Charging", timeout=5))
        await cp.status(2, "Charging")  # another connector does not count
        await cp.status(1, "Charging")
        note = await waiter
    assert note.payload["connectorId"] == 1


# ------------------------------------------------------------------ OCTT building blocks


async def test_building_blocks_against_the_scripted_station(csms: Csms) -> None:
    async with scripted_cp(csms) as cp:
        await cp.boot()
        cp.authorize_remote = "true"
        transaction_id = await octt.charging(csms, 1, "TAG", plug_in=lambda: cp.status(1, "Preparing"))
        assert transaction_id == 1 and octt.open_transactions(csms) == [1]
        await octt.set_unavailable(csms, 0, connectors=[1])
        await octt.reserved(csms, 1, "TAG", reservation_id=7)
        await octt.restore_idle(csms, stop_timeout=5)  # SendLocalList is NotSupported here: skipped
        with pytest.raises(AssertionError, match="ClearChargingProfile"):
            await octt.call_expecting(csms, "ClearChargingProfile", {})
    assert octt.open_transactions(csms) == []
    assert csms.schema_errors == []
    sent = [m.action for m in csms.messages if m.direction == "out" and m.kind == "call"]
    assert sent[-7:-1] == ["CancelReservation", "ClearCache", "SendLocalList", "ChangeAvailability",
                           "ClearChargingProfile", "ChangeConfiguration"]
    assert [m.action for m in csms.calls()].count("Authorize") == 1
    assert csms.schema_errors == []


async def test_authorized_local_list_profile_and_reserving_connector_zero(csms: Csms) -> None:
    profile = {
        "chargingProfileId": 1, "stackLevel": 0, "chargingProfilePurpose": "TxDefaultProfile",
        "chargingProfileKind": "Absolute",
        "chargingSchedule": {"chargingRateUnit": "A", "startSchedule": "2024-01-01T00:00:00Z",
                             "chargingSchedulePeriod": [{"startPeriod": 0, "limit": 16.1}]},
    }
    async with scripted_cp(csms) as cp:
        async def swipe() -> None:
            await cp.status(1, "Preparing")
            await cp.call(call.Authorize(id_tag="TAG"))

        auth = await octt.authorized(csms, 1, "TAG", present_id_tag=swipe)
        assert auth.action == "Authorize"
        # Already Preparing: only the Authorize is expected now.
        await octt.authorized(csms, 1, "TAG", present_id_tag=lambda: cp.call(call.Authorize(id_tag="TAG")))
        with pytest.raises(CallErrorReceived, match="NotSupported"):
            await octt.id_tag_local_auth_list(csms, "TAG")
        await octt.set_charging_profile(csms, 1, profile)
        note = await octt.reserved(csms, 0, "TAG", reservation_id=3)
    assert cp.profiles[0]["charging_schedule"]["charging_schedule_period"][0]["limit"] == Decimal("16.1")
    assert note.payload == {"connectorId": 1, "errorCode": "NoError", "status": "Reserved"}
    assert csms.schema_errors == []
