"""Robustness of the adapters (link, runtime) against a misbehaving CSMS and a failing disk.

Each test states the product rule it checks: bad input gets a clear error, the station
keeps running and answering, and no transaction data is lost.
"""

from __future__ import annotations

import asyncio
import json

from twin.csms import NO_REPLY


def _remote_start(uid: str, limit: str) -> str:
    """A RemoteStartTransaction with a TxProfile whose limit is the raw JSON text ``limit``."""
    frame = json.dumps([2, uid, "RemoteStartTransaction", {
        "idTag": "TAG1", "connectorId": 1,
        "chargingProfile": {"chargingProfileId": 1, "stackLevel": 0, "chargingProfilePurpose": "TxProfile",
                            "chargingProfileKind": "Relative",
                            "chargingSchedule": {"chargingRateUnit": "A",
                                                 "chargingSchedulePeriod": [{"startPeriod": 0, "limit": "LIM"}]}}}])
    return frame.replace('"LIM"', limit)


async def _start_tx_with_raw_conf(station, csms, conf_text: str) -> None:
    """Plug, tap a card, and answer the StartTransaction with the raw CALLRESULT payload ``conf_text``."""
    csms.on("StartTransaction", lambda p: NO_REPLY)
    await station.plug(1)
    await csms.wait_for("StatusNotification", {"connectorId": 1, "status": "Preparing"})
    await station.tap("TAG1")
    start = await csms.wait_for("StartTransaction", {"connectorId": 1}, timeout=10)
    await csms.send_raw(f'[3,"{start.unique_id}",{conf_text}]')
    await asyncio.sleep(0.2)  # let the NO_REPLY handler run for this call first
    csms.on("StartTransaction", None)  # retransmissions get the default (valid) answer


# ----------------------------------------------------------------------------------------------
# CALLRESULTs to station calls with wrong JSON types / values
# ----------------------------------------------------------------------------------------------

async def test_start_transaction_conf_with_nan_transaction_id_does_not_brick_the_store(station, csms):
    """A StartTransaction.conf with transactionId NaN (Python's json accepts it) ends up in a
    tx_put op; the store refuses the whole batch (BadOpsError, not retryable) and the runtime
    keeps retrying it for ever: the station stays Faulted ("storage failure") and nothing it
    does afterwards reaches the disk."""
    await _start_tx_with_raw_conf(station, csms, '{"transactionId":NaN,"idTagInfo":{"status":"Accepted"}}')
    await asyncio.sleep(5)  # > the store-retry loop's 2 s period
    assert station.st.station_fault is None, station.st.station_fault
    assert station.rt.state()["store"]["ok"], station.rt.state()["store"]


async def test_start_transaction_conf_with_string_transaction_id_is_not_echoed(station, csms):
    """transactionId must be an integer (StartTransaction.conf schema). The station takes
    "abc" as is and later sends StopTransaction/MeterValues with "transactionId": "abc",
    which a real CSMS rejects (TypeConstraintViolation) until the StopTransaction is
    discarded: the transaction's end is lost."""
    await _start_tx_with_raw_conf(station, csms, '{"transactionId":"abc","idTagInfo":{"status":"Accepted"}}')
    await csms.wait_for("StatusNotification", {"connectorId": 1, "status": "Charging"}, timeout=10)
    await station.tap("TAG1")
    stop = await csms.wait_for("StopTransaction", timeout=10)
    assert isinstance(stop.payload["transactionId"], int), stop.payload
    assert not csms.schema_errors, csms.schema_errors


async def test_boot_notification_conf_with_non_integer_interval_still_registers(make_station, csms):
    """BootNotification.conf {"interval": "abc"}: the core raises in int(), _step swallows it,
    and boot_in_flight/next_boot_at are left so that no BootNotification is ever sent again:
    the station stays unregistered (no transaction messages, no heartbeats) until the link
    drops. It should treat the reply as a failed BootNotification and retry (or accept it)."""
    boots = []

    def boot(payload):
        boots.append(payload)
        if len(boots) == 1:
            return {"status": "Accepted", "currentTime": "2024-01-01T00:00:00Z", "interval": "abc"}
        return {"status": "Accepted", "currentTime": "2024-01-01T00:00:00Z", "interval": 300}

    csms.on("BootNotification", boot)
    handle = await make_station(wait=False)
    handle.st.spec.boot_retry_s = 1  # do not wait the default 10 s for the retry
    await csms.wait_for("BootNotification", timeout=10)
    await handle.until(lambda: handle.st.registration == "Accepted", timeout=8, what="registration")


async def test_boot_notification_conf_with_huge_interval_still_registers(make_station, csms):
    """BootNotification.conf Pending with interval 10**12 (valid per schema: integer, no bound):
    now + timedelta(seconds=10**12) overflows in the core; next_boot_at stays None and the
    station never sends BootNotification again."""
    boots = []

    def boot(payload):
        boots.append(payload)
        if len(boots) == 1:
            return {"status": "Pending", "currentTime": "2024-01-01T00:00:00Z", "interval": 10**12}
        return {"status": "Accepted", "currentTime": "2024-01-01T00:00:00Z", "interval": 300}

    csms.on("BootNotification", boot)
    handle = await make_station(wait=False)
    handle.st.spec.boot_retry_s = 1
    await csms.wait_for("BootNotification", timeout=10)
    # The interval is absurd; clamping it is fine, but the station must not be wedged: its
    # next BootNotification must at least be scheduled.
    await handle.until(lambda: handle.st.next_boot_at is not None or len(boots) > 1, timeout=3,
                       what="a scheduled BootNotification retry")


async def test_authorize_conf_with_non_object_id_tag_info_leaves_connector_usable(station, csms):
    """Authorize.conf {"idTagInfo": "x"}: the core raises inside _learn, leaving
    connector.authorizing set; the connector then ignores every later card."""
    csms.on("Authorize", lambda p: {"idTagInfo": "x"})
    await station.plug(1)
    await csms.wait_for("StatusNotification", {"connectorId": 1, "status": "Preparing"})
    await station.tap("TAG1")
    await csms.wait_for("Authorize", timeout=10)
    await asyncio.sleep(0.5)
    csms.on("Authorize", None)
    await station.tap("TAG1")
    await csms.wait_for("StartTransaction", {"connectorId": 1}, timeout=10)


# ----------------------------------------------------------------------------------------------
# Malformed CSMS CALLs
# ----------------------------------------------------------------------------------------------

async def test_remote_start_with_unvalidatable_decimal_gets_callerror_not_a_disconnect(station, csms):
    """limit 1e30 in a RemoteStartTransaction TxProfile: jsonschema's multipleOf on Decimals
    raises decimal.InvalidOperation (NaN: TypeError) out of parse_inbound; _dispatch only
    catches InboundError, so the exception tears the websocket session down. The CSMS gets
    no answer, in-flight station calls are lost, and a CSMS that repeats the call keeps the
    station in a reconnect loop. Expected: a CALLERROR for that call, connection kept."""
    before = csms.connection_count
    msg = await csms.send_raw(_remote_start("rs-1", "1e30"))
    reply = await csms.wait_reply(msg.unique_id, timeout=5)
    assert reply.kind == "error", reply
    await asyncio.sleep(0.5)
    assert csms.connection_count == before and csms.connected


async def test_set_charging_profile_with_nan_limit_gets_callerror_not_a_disconnect(station, csms):
    before = csms.connection_count
    frame = json.dumps([2, "scp-1", "SetChargingProfile", {"connectorId": 1, "csChargingProfiles": {
        "chargingProfileId": 7, "stackLevel": 0, "chargingProfilePurpose": "TxDefaultProfile",
        "chargingProfileKind": "Absolute", "chargingSchedule": {
            "chargingRateUnit": "A", "startSchedule": "2024-01-01T00:00:00Z",
            "chargingSchedulePeriod": [{"startPeriod": 0, "limit": "LIM"}]}}}]).replace('"LIM"', "NaN")
    msg = await csms.send_raw(frame)
    reply = await csms.wait_reply(msg.unique_id, timeout=5)
    assert reply.kind == "error", reply
    await asyncio.sleep(0.5)
    assert csms.connection_count == before and csms.connected


# ----------------------------------------------------------------------------------------------
# Races between link_down/link_up and calls
# ----------------------------------------------------------------------------------------------

async def test_reconnect_while_a_step_holds_the_lock_does_not_duplicate_start_transaction(station, csms):
    """A slow disk (fsync on an SD card) holds the runtime lock while the CSMS drops and the
    link reconnects. The step then executes its Send on the *new* connection (Link.connected is
    already True) although the core has not seen link_down/link_up yet; link_down then forgets
    that call and link_up sends the same StartTransaction again. The CSMS gets two
    StartTransactions (two transactionIds) for one charging session; one stays open for ever."""
    store = station.rt.store
    real_apply = store.apply
    tripped = False

    async def slow_apply(ops):
        nonlocal tripped
        starting = any(op[0] == "q_put" and op[2].get("action") == "StartTransaction" for op in ops)
        if starting and not tripped:
            tripped = True
            count = csms.connection_count
            await csms.drop_connection()
            await csms.wait_connected(timeout=10, after=count)  # the link is back before the write ends
        return await real_apply(ops)

    store.apply = slow_apply
    await station.plug(1)
    await csms.wait_for("StatusNotification", {"connectorId": 1, "status": "Preparing"})
    await station.tap("TAG1")
    await csms.wait_for("StartTransaction", timeout=15)
    await station.until(lambda: station.st.connectors[1].tx is not None and
                        station.st.txs[station.st.connectors[1].tx].get("transaction_id") is not None, timeout=15)
    await asyncio.sleep(1.0)
    assert tripped
    starts = csms.calls("StartTransaction")
    assert len(starts) == 1, [(m.raw, getattr(csms.reply_to(m), "payload", None)) for m in starts]


# ----------------------------------------------------------------------------------------------
# A core exception while handling a CSMS CALL
# ----------------------------------------------------------------------------------------------

async def test_call_that_makes_the_core_raise_still_gets_an_answer(station, csms):
    """ReserveNow with expiryDate "9999-12-31T23:59:59-14:00" (a valid date-time): parse_ts only
    catches ValueError, astimezone() raises OverflowError, _step logs it and returns, and the
    CALL is never answered: the CSMS waits out its timeout. Any core bug on any CALL does the
    same. Expected: a CALLERROR (InternalError) from the runtime, or a Rejected."""
    msg = await csms.send_raw(json.dumps([2, "rn-1", "ReserveNow", {
        "connectorId": 1, "expiryDate": "9999-12-31T23:59:59-14:00", "idTag": "TAG9", "reservationId": 42}]))
    reply = await csms.wait_reply(msg.unique_id, timeout=5)
    assert reply.kind in ("result", "error")


async def test_local_list_entry_with_out_of_range_expiry_does_not_disable_the_card(station, csms):
    """SendLocalList accepts (and persists) an idTagInfo.expiryDate of 9999-12-31T23:59:59-14:00;
    from then on every tap of that card raises OverflowError in the core (auth.effective_info ->
    parse_ts), so the card silently does nothing, also after a restart. Expected: either the
    list is refused, or the out-of-range expiry is handled and the card works."""
    reply = await csms.call("SendLocalList", {"listVersion": 5, "updateType": "Full", "localAuthorizationList": [
        {"idTag": "CARD-A", "idTagInfo": {"status": "Accepted", "expiryDate": "9999-12-31T23:59:59-14:00"}}]})
    if reply["status"] != "Accepted":
        return
    await station.plug(1)
    await csms.wait_for("StatusNotification", {"connectorId": 1, "status": "Preparing"})
    await station.tap("CARD-A")
    await csms.wait_for("StartTransaction", {"idTag": "CARD-A"}, timeout=5)


# ----------------------------------------------------------------------------------------------
# Shutdown
# ----------------------------------------------------------------------------------------------

async def test_graceful_shutdown_retries_a_transiently_failing_store_before_giving_up(station, csms):
    """SIGTERM while the disk has a transient write error: shutdown stops the transaction (the
    write fails, the ops go to ``unsaved``), the drain loop ends as soon as the CSMS confirmed
    the StopTransaction, and the one flush at the end fails too; store.close() then drops the
    unsaved batches silently (no error logged, exit 0). The disk was writable again 0.5 s later,
    well inside drain_s. On the next boot the station believes the transaction is still running
    and stops it again (PowerLoss): a second StopTransaction for a transaction the CSMS has closed."""
    from tests.octt.test_core import start_charging
    from twin.store import Store

    await start_charging(station, csms)
    from tests.conftest import FlakyStore

    disk = FlakyStore(station.rt.store, "I/O error")

    async def recover():
        await asyncio.sleep(0.5)
        disk.failing = False
    asyncio.ensure_future(recover())
    await station.rt.shutdown("Reboot", graceful=True, drain_s=5.0)
    await csms.wait_for("StopTransaction", {"reason": "Reboot"}, timeout=1, after=0)
    saved = Store.snapshot(station.rt.store.path)
    txs = list(saved["transactions"].values())
    assert txs and all(tx.get("stopped") for tx in txs), txs
