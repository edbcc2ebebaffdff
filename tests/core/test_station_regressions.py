"""Regressions from a review of the pure station core: each test pins down a bug that
was found (and fixed); the assertion states what the specification / errata / OCTT case
expects (see the docstrings)."""

from __future__ import annotations

from datetime import timedelta

import pytest

from tests.core.harness import Harness
from tests.core.test_station import _state_from_ops
from twin.core.timeutil import ts


def _reserve(h: Harness, cid: int, tag: str, rid: int, **extra) -> str:
    payload = {"connectorId": cid, "expiryDate": ts(h.now + timedelta(minutes=10)), "idTag": tag,
               "reservationId": rid, **extra}
    return h.csms("ReserveNow", payload).payload["status"]


def _cache_valid(h: Harness, tag: str) -> None:
    """Fill the authorization cache with an Accepted entry for ``tag`` (Authorize.conf), then cancel."""
    h.tap(tag)
    h.tap(tag)
    assert h.st.cache.get(tag) is not None and h.status(1) == "Available"


def _tx_tags(h: Harness) -> list[str]:
    return [s.payload["idTag"] for s in h.calls("StartTransaction")]


# ---------------------------------------------------------------------------------------------------
# 1. Two transactions on one connector; the first one is lost in memory (never stopped)
# ---------------------------------------------------------------------------------------------------
def test_remote_start_while_local_authorize_in_flight_starts_two_transactions_on_one_connector():
    """A plugged connector is waiting for Authorize.conf of a local card (c.authorizing). RemoteStart
    on it is Accepted and sends a second Authorize; both confs then start a transaction on the same
    connector, the second overwriting c.tx. The first transaction is never stopped (TC_026: a busy
    connector rejects RemoteStart; one connector carries at most one transaction)."""
    h = Harness(auto=False).boot()
    h.answer("BootNotification")
    h.plug(1)
    h.tap("LOCAL")  # Authorize(LOCAL) outstanding for connector 1
    r = h.csms("RemoteStartTransaction", {"connectorId": 1, "idTag": "REMOTE"})
    h.auto = True
    h.answer_all()
    assert r.payload["status"] == "Rejected" or len(h.calls("StartTransaction")) <= 1, _tx_tags(h)


def test_tag_moved_to_a_connector_that_waits_for_authorize_conf_starts_two_transactions():
    """Tag A (cached, LocalPreAuthorize) is pending on connector 1; tag B is being authorized on
    connector 2. Plugging connector 2 moves A's pending there and starts A; B's Authorize.conf then
    starts a second transaction on connector 2 and A's transaction is orphaned."""
    h = Harness({"LocalPreAuthorize": "true"}).boot()
    _cache_valid(h, "A")
    h.auto = False
    h.tap("A")  # locally valid: pending on connector 1, no Authorize
    assert h.st.connectors[1].pending is not None
    h.tap("B")  # unknown: Authorize for connector 2
    assert h.st.connectors[2].authorizing == "B"
    h.plug(2)  # A's pending moves to connector 2 and starts there
    h.auto = True
    h.answer_all()
    assert len(h.calls("StartTransaction")) <= 1, _tx_tags(h)
    assert all(tx.get("stopped") or tx["local_id"] == h.st.connectors[2].tx for tx in h.st.txs.values())


# ---------------------------------------------------------------------------------------------------
# 2. Transactions started on Faulted / Unavailable connectors
# ---------------------------------------------------------------------------------------------------
def test_authorize_conf_after_connector_fault_starts_transaction_on_faulted_connector():
    """The connector faults while Authorize is in flight; the late Accepted conf starts a transaction
    (StartTransaction sent) on the Faulted connector. TC_041: no transaction while Faulted."""
    h = Harness(auto=False).boot()
    h.answer("BootNotification")
    h.plug(1)
    h.tap("TAG1")
    h.run(h.st.fault(1, "GroundFailure", None, h.now))
    h.auto = True
    h.answer_all()
    assert not h.calls("StartTransaction")


def test_authorize_conf_after_change_availability_inoperative_starts_transaction():
    """ChangeAvailability(1, Inoperative) is Accepted (no transaction yet) while Authorize is in
    flight; the conf then starts a transaction on the Unavailable connector (§5.2)."""
    h = Harness(auto=False).boot()
    h.answer("BootNotification")
    h.plug(1)
    h.tap("TAG1")
    assert h.csms("ChangeAvailability", {"connectorId": 1, "type": "Inoperative"}).payload["status"] == "Accepted"
    h.auto = True
    h.answer_all()
    assert not h.calls("StartTransaction")


def test_pending_authorization_survives_inoperative_and_plug_starts_transaction():
    """Identification first (Preparing), then ChangeAvailability(1, Inoperative) Accepted: the pending
    authorization is kept and plugging the cable starts a transaction on an Unavailable connector."""
    h = Harness().boot()
    h.tap("TAG1")
    assert h.st.connectors[1].pending is not None
    assert h.csms("ChangeAvailability", {"connectorId": 1, "type": "Inoperative"}).payload["status"] == "Accepted"
    assert h.status(1) == "Unavailable"
    h.plug(1)
    assert not h.calls("StartTransaction")


def test_held_card_starts_transaction_on_faulted_connector_when_plugged():
    """Connector 1 charges, connector 2 is Faulted. A card tapped is held for the next cable;
    plugging connector 2 routes it there (plug() -> _identify_for) without any usability check and
    a transaction starts on the Faulted connector (TC_041)."""
    h = Harness().boot()
    h.plug(1)
    h.tap("TAG1")
    h.run(h.st.fault(2, "GroundFailure", None, h.now))
    h.tap("TAG2")
    h.plug(2)
    assert [s.payload["connectorId"] for s in h.calls("StartTransaction")] == [1]


# ---------------------------------------------------------------------------------------------------
# 3. Reservation bypassed offline
# ---------------------------------------------------------------------------------------------------
def test_offline_unknown_tag_starts_on_connector_reserved_with_parent_id_tag():
    """Connector 1 reserved for R (parentIdTag P). Offline, AllowOfflineTxForUnknownId=true, an unknown
    card X is accepted and starts on the reserved connector without reservationId; the reservation
    stays. §5.13: only the reserved idTag or one whose parent matches may charge; the parent must be
    learned (list/cache, else Authorize) - offline it cannot be, so X must be refused."""
    h = Harness({"AllowOfflineTxForUnknownId": "true"}).boot()
    assert _reserve(h, 1, "R", 7, parentIdTag="P") == "Accepted"
    h.go_offline()
    h.plug(1)
    h.tap("X")
    assert h.st.connectors[1].tx is None


# ---------------------------------------------------------------------------------------------------
# 4. Deadlines stuck in the past: the runtime's timer loop spins (wait = 0 forever)
# ---------------------------------------------------------------------------------------------------
def test_minimum_status_duration_offline_leaves_a_deadline_in_the_past():
    """MinimumStatusDuration>0 and a status change while offline (or Pending/Rejected): the
    'report after MSD' deadline is never consumed because nothing can be reported, so
    next_deadline() stays <= now and runtime._timer_loop ticks in a busy loop."""
    h = Harness({"MinimumStatusDuration": "5"}).boot(online=False)
    h.plug(1)
    h.now += timedelta(seconds=10)
    h.run(h.st.tick(h.now))
    deadline = h.st.next_deadline()
    assert deadline is None or deadline > h.now


def test_trigger_boot_notification_while_boot_in_flight_leaves_a_deadline_in_the_past():
    """TriggerMessage(BootNotification) while a BootNotification is in flight sets next_boot_at=now;
    the Accepted conf never clears it and _maybe_boot ignores it once Accepted, so next_deadline()
    stays in the past forever (timer loop spins)."""
    h = Harness(auto=False).boot()
    r = h.csms("TriggerMessage", {"requestedMessage": "BootNotification"})
    assert r.payload["status"] == "Accepted"
    h.answer("BootNotification")
    assert h.st.registration == "Accepted"
    h.now += timedelta(seconds=1)
    h.run(h.st.tick(h.now))
    deadline = h.st.next_deadline()
    assert deadline is None or deadline > h.now


# ---------------------------------------------------------------------------------------------------
# 5. Authorize timeout decided locally: nothing happens until some later tick
# ---------------------------------------------------------------------------------------------------
def test_authorize_timeout_accepted_locally_does_not_start_charging_until_next_tick():
    """Authorize times out; the offline decision (cached Accepted, LocalAuthorizeOffline) starts the
    transaction, but call_failed -> _authorize_unanswered never settles: no SetRelay, no
    StartTransaction, no StatusNotification, and no deadline to wake the runtime for it."""
    h = Harness().boot()
    _cache_valid(h, "T")
    h.auto = False
    h.plug(1)
    h.tap("T")
    h.fail("Authorize", "timeout")
    assert h.st.connectors[1].tx is not None  # the core did start it
    assert h.calls("StartTransaction") and h.relays.get(1) is True


# ---------------------------------------------------------------------------------------------------
# 6. Persistence
# ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("connector_id", [1, 0])
def test_scheduled_unavailability_survives_power_loss(connector_id):
    """ChangeAvailability(1 or 0, Inoperative) during a transaction answers Scheduled (§5.2:
    executed when the transaction ends). The pending change must be persisted: after a power
    loss the transaction is stopped at boot (PowerLoss) and the change then takes effect,
    instead of the connector (or station) coming back Operative."""
    h = Harness().boot()
    h.plug(1)
    h.tap("TAG1")
    r = h.csms("ChangeAvailability", {"connectorId": connector_id, "type": "Inoperative"})
    assert r.payload["status"] == "Scheduled"
    h2 = Harness(state=_state_from_ops(h.ops), now=h.now + timedelta(minutes=1))
    h2.boot()
    assert h2.calls("StopTransaction")[0].payload["reason"] == "PowerLoss"
    assert h2.status(1) == "Unavailable"
    if connector_id == 0:
        assert h2.status(2) == "Unavailable" and h2.st.availability0 == "Inoperative"


def test_queue_sequence_numbers_restart_at_one_and_overwrite_discarded_rows():
    """After a restart with an empty queue, TxQueue.next_seq is 1 again although the discarded table
    still holds seq 1..n; the store's q_discard is INSERT OR REPLACE, so the next discarded message
    silently replaces an older diagnostic record (the core owns seq assignment: architecture.md)."""
    h = Harness({"TransactionMessageAttempts": "1"}).boot()
    h.scripts["StartTransaction"] = lambda p: RuntimeError("no handler")
    h.plug(1)
    h.tap("TAG1")
    assert any(op[0] == "q_discard" for op in h.ops)
    state = _state_from_ops(h.ops)
    state["discarded"] = [{"seq": op[1]} for op in h.ops if op[0] == "q_discard"]
    assert state["queue"] == [] or all(e["action"] != "StartTransaction" for e in state["queue"])
    used = {op[1] for op in h.ops if op[0] == "q_put"}
    h2 = Harness(state=state)
    h2.boot()
    h2.plug(2)
    h2.tap("TAG2")
    new = {op[1] for op in h2.ops if op[0] == "q_put"}
    assert not (new & used), f"reused queue seq {sorted(new & used)}"


def test_local_list_tag_named_version_key_is_lost_on_restart():
    """The local list stores its version under the key '__version__' in the same namespace as the
    idTags; an idTag '__version__' (a valid CiString20) is overwritten by the version and dropped
    by LocalList.from_store after a restart."""
    h = Harness().boot()
    r = h.csms("SendLocalList", {"listVersion": 3, "updateType": "Full", "localAuthorizationList": [
        {"idTag": "__version__", "idTagInfo": {"status": "Accepted"}},
        {"idTag": "OTHER", "idTagInfo": {"status": "Accepted"}}]})
    assert r.payload["status"] == "Accepted"
    h2 = Harness(state=_state_from_ops(h.ops))
    assert h2.st.local_list.version == 3
    assert h2.st.local_list.get("__version__") == {"status": "Accepted"}


# ---------------------------------------------------------------------------------------------------
# 7. RemoteStart TxProfile does not follow the moved authorization
# ---------------------------------------------------------------------------------------------------
def _remote_profile(limit: float) -> dict:
    return {"chargingProfileId": 77, "stackLevel": 0, "chargingProfilePurpose": "TxProfile",
            "chargingProfileKind": "Relative",
            "chargingSchedule": {"chargingRateUnit": "A", "chargingSchedulePeriod": [{"startPeriod": 0, "limit": limit}]}}


def test_remote_start_profile_without_connector_stays_with_its_own_session():
    """RemoteStart without connectorId holds the TxProfile on connector 1 (the first free one).
    A RemoteStart that carries a profile is bound to that connector (docs/station-behaviour.md):
    plugging connector 2 does not take the session there (where the profile would not apply,
    §5.11), the session and its limit start on connector 1, and no unrelated later transaction
    inherits the profile."""
    h = Harness({"AuthorizeRemoteTxRequests": "false"}).boot()
    r = h.csms("RemoteStartTransaction", {"idTag": "REMOTE", "chargingProfile": _remote_profile(10.0)})
    assert r.payload["status"] == "Accepted"
    h.plug(2)
    assert h.st.connectors[2].tx is None
    h.plug(1)
    assert h.st.connectors[1].tx is not None
    assert h.st.connectors[1].limit_a == 10.0, "the RemoteStart TxProfile must limit its own transaction"
    h.tap("LOCAL")
    assert h.st.connectors[2].tx is not None
    assert h.st.connectors[2].limit_a is None, "an unrelated later transaction must not inherit it"


def test_remote_start_profile_kept_when_reservation_refuses_the_authorized_tag():
    """RemoteStart(X, profile) on connector 1 reserved for R with parentIdTag P is Accepted (parent
    unknown), Authorize(X) returns parent Q: the start is refused, but the held TxProfile is not
    discarded; the reserved tag's later transaction on connector 1 is limited by X's profile."""
    h = Harness().boot()
    h.id_tags = {"X": {"status": "Accepted", "parentIdTag": "Q"}}
    assert _reserve(h, 1, "R", 5, parentIdTag="P") == "Accepted"
    r = h.csms("RemoteStartTransaction", {"connectorId": 1, "idTag": "X", "chargingProfile": _remote_profile(8.0)})
    assert r.payload["status"] == "Accepted"
    assert h.st.connectors[1].tx is None and h.st.connectors[1].pending is None
    h.plug(1)
    h.tap("R")
    assert h.st.connectors[1].tx is not None
    assert h.st.connectors[1].limit_a is None


# ---------------------------------------------------------------------------------------------------
# 8. Smart-charging limit between 0 and 6 A is offered to the EV
# ---------------------------------------------------------------------------------------------------
def test_limit_below_minimum_charging_current_is_offered_instead_of_suspending():
    """A 3 A limit closes the contactor and sets the pilot to 3 A (status Charging). IEC 61851-1: an
    EV cannot be told to charge below 6 A (MIN_CHARGING_CURRENT_A in station.py); the EVSE is not
    offering usable energy, so it should be SuspendedEVSE with the pilot off (§7.7)."""
    h = Harness().boot()
    h.plug(1)
    h.tap("TAG1")
    prof = {"connectorId": 1, "csChargingProfiles": _remote_profile(3.0)}
    assert h.csms("SetChargingProfile", prof).payload == {"status": "Accepted"}
    assert h.st.connectors[1].pilot is None or h.st.connectors[1].pilot >= 6.0
    assert h.status(1) == "SuspendedEVSE"


# ---------------------------------------------------------------------------------------------------
# 9. Malformed CSMS replies (checked by the core before use: twin.core.station._malformed)
# ---------------------------------------------------------------------------------------------------
def test_authorize_conf_with_non_object_id_tag_info_crashes_and_leaves_authorizing_set():
    """Authorize.conf {"idTagInfo": "Accepted"} raises ValueError in the core (AuthCache.update: dict(info)) (the runtime logs
    and drops it); c.authorizing is never reset, so connector 1 is never idle again: it refuses
    every later card and every ReserveNow (Occupied) until a restart."""
    h = Harness(auto=False).boot()
    h.answer("BootNotification")
    h.plug(1)
    h.tap("TAG1")
    try:
        h.answer("Authorize", {"idTagInfo": "Accepted"})
    except (AttributeError, ValueError, TypeError):
        pass  # the runtime's _step logs and swallows this
    assert h.st.connectors[1].authorizing is None


def test_start_transaction_conf_without_id_tag_info_suspends_charging():
    """StartTransaction.conf {"transactionId": 5} (idTagInfo missing; not validated by the link)
    is treated as a refusal: the transaction is marked invalid and (MaxEnergyOnInvalidId=0) the
    contactor opens, SuspendedEVSE. A reply the CP cannot interpret is not a 'not Accepted' idTagInfo
    (errata 3.17 is about a status other than Accepted); it should not deauthorize the driver."""
    h = Harness().boot()
    h.scripts["StartTransaction"] = lambda p: {"transactionId": 5}
    h.plug(1)
    h.tap("TAG1")
    assert h.status(1) == "Charging" and h.relays[1] is True


# ---------------------------------------------------------------------------------------------------
# 10. More
# ---------------------------------------------------------------------------------------------------
def test_scheduled_station_unavailability_does_not_end_reservation_when_applied():
    """Connector 2 reserved; ChangeAvailability(0, Inoperative) is Scheduled (tx on connector 1). When
    the transaction ends the whole station becomes Unavailable, but _apply_scheduled does not end the
    reservation (§5.13: a reservation ends when the connector becomes Unavailable), so after
    ChangeAvailability(0, Operative) connector 2 is Reserved again."""
    h = Harness().boot()
    assert _reserve(h, 2, "R", 3) == "Accepted"
    h.plug(1)
    h.tap("TAG1")
    assert h.csms("ChangeAvailability", {"connectorId": 0, "type": "Inoperative"}).payload["status"] == "Scheduled"
    h.tap("TAG1")
    assert h.status(2) == "Unavailable"
    h.csms("ChangeAvailability", {"connectorId": 0, "type": "Operative"})
    assert not h.st.reservations.items and h.status(2) == "Available"


def test_clock_aligned_values_not_sampled_offline_until_first_boot_accepted():
    """After a (re)boot without a link, next_aligned_at is only scheduled on BootNotification
    Accepted, so an offline transaction gets no clock-aligned MeterValues at all, while periodic
    ones are taken (errata 3.15: SHALL send at these intervals; TC_036: sampling goes on offline)."""
    h = Harness({"ClockAlignedDataInterval": "20", "MeterValueSampleInterval": "0"}).boot(online=False)
    h.plug(1)
    h.tap("TAG1")  # AllowOfflineTxForUnknownId=true (iEVQC33 default)
    assert h.st.connectors[1].tx is not None
    h.advance(65)
    clock = [e for e in h.st.queue.entries if e.action == "MeterValues"]
    assert len(clock) == 3
