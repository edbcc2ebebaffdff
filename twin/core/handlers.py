"""CSMS-initiated calls: each handler takes (station, payload, now) and returns
``(response_payload, actions)``, or ``DELEGATE`` for calls an adapter answers
(firmware and diagnostics), or raises ``CallError`` for a CALLERROR. Pure.

The payload has already passed the OCPP 1.6 JSON schema (``twin.link``); the checks
here are the semantic ones the schema cannot express.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, Callable

from twin.core import auth
from twin.core.actions import Action, Delegate, LinkSetting, Persist, Restart
from twin.core.reservation import Reservation
from twin.core.timeutil import parse_ts

if TYPE_CHECKING:
    from twin.core.station import Station

log = logging.getLogger("twin.station")

DELEGATE = Delegate("", "", {})


class CallError(Exception):
    def __init__(self, code: str, description: str):
        super().__init__(description)
        self.code = code
        self.description = description


Result = tuple[dict, list[Action]]
HANDLERS: dict[str, Callable[["Station", dict, datetime], Any]] = {}


def handles(action: str):
    def register(fn):
        HANDLERS[action] = fn
        return fn
    return register


def _connector(st: "Station", cid: Any, *, allow_zero: bool = True):
    if not isinstance(cid, int) or cid < 0 or cid > st.n or (cid == 0 and not allow_zero):
        return None
    return cid


# ---------------------------------------------------------------- Core profile
@handles("ChangeAvailability")
def change_availability(st: "Station", p: dict, now: datetime) -> Result:
    cid, target = p["connectorId"], p["type"]
    if _connector(st, cid) is None:
        return {"status": "Rejected"}, []
    if cid == 0:
        if st.availability0 == target and st.scheduled0 is None and all(
                c.availability == target and c.scheduled is None for c in st.connectors.values()):
            return {"status": "Accepted"}, []  # same state: Accepted, no new StatusNotification
        busy = target == "Inoperative" and any(c.tx is not None for c in st.connectors.values())
        ops: list[tuple] = []
        # Idle connectors change now; busy ones when their transaction ends (§5.2), and
        # connector 0 once none is busy. So an idle connector takes no new session meanwhile.
        for c in st.connectors.values():
            if c.tx is not None and target == "Inoperative":
                c.scheduled = target
            else:
                c.availability, c.scheduled = target, None
                ops.append(("kv_put", "availability", str(c.id), c.availability))
        if busy:
            st.scheduled0 = target
        else:
            st.availability0, st.scheduled0 = target, None
            ops.append(("kv_put", "availability", "0", target))
        ops.append(st.scheduled_op())
        acts = [Persist(ops)] + _end_reservations(st, target, list(st.connectors.values()), station=not busy)
        return {"status": "Scheduled" if busy else "Accepted"}, acts
    c = st.connectors[cid]
    if c.availability == target and c.scheduled is None:
        return {"status": "Accepted"}, []
    if c.tx is not None and target == "Inoperative":
        c.scheduled = target  # §5.2: during a transaction the change waits until it ends
        return {"status": "Scheduled"}, [Persist([st.scheduled_op()])]
    c.availability, c.scheduled = target, None
    ops = [("kv_put", "availability", str(cid), target), st.scheduled_op()]
    return {"status": "Accepted"}, [Persist(ops)] + _end_reservations(st, target, [c])


def _end_reservations(st: "Station", target: str, conns, station: bool = False) -> list[Action]:
    # §5.13: a connector (or the Charge Point: its connector-0 reservations) that becomes
    # Unavailable ends its reservation; an authorization waiting for a cable there lapses.
    if target != "Inoperative":
        return []
    conns = [c for c in conns if c.availability == "Inoperative"]
    ops: list[tuple] = []
    held = [st.reservations.for_connector(c.id) for c in conns] + (st.reservations.zero() if station else [])
    for r in held:
        if r is not None:
            ops += st.reservations.remove(r.reservation_id)
    acts: list[Action] = [Persist(ops)] if ops else []
    for c in conns:
        if c.pending is not None:
            acts += st._drop_pending(c)
    return acts


@handles("ChangeConfiguration")
def change_configuration(st: "Station", p: dict, now: datetime) -> Result:
    key, value = p["key"], p["value"]
    status, changes = st.keys.change(key, value)
    acts: list[Action] = [Persist([("kv_put", "config", k, v) for k, v in changes.items()])] if changes else []
    if status == "Accepted" and changes:
        acts += _key_side_effects(st, key, now)
    return {"status": status}, acts


def _key_side_effects(st: "Station", key: str, now: datetime) -> list[Action]:
    if key == "HeartbeatInterval":
        st.heartbeat_interval = st.keys.get_int(key)
        st.next_heartbeat_at = now + timedelta(seconds=st.heartbeat_interval) if st.heartbeat_interval else None
    elif key == "ClockAlignedDataInterval":
        st._schedule_aligned(now)
    elif key == "MeterValueSampleInterval":
        interval = st.keys.get_int(key)
        for c in st.connectors.values():
            if c.tx is not None and interval > 0:
                st.sample_at[c.id] = now + timedelta(seconds=interval)
            else:
                st.sample_at.pop(c.id, None)
    elif key == "WebSocketPingInterval":
        return [LinkSetting(st.keys.get_int(key))]
    return []


@handles("GetConfiguration")
def get_configuration(st: "Station", p: dict, now: datetime) -> Result:
    from twin.core.keys import TooManyKeys

    try:
        return st.keys.get_configuration(p.get("key")), []
    except TooManyKeys as e:  # more keys than GetConfigurationMaxKeys
        raise CallError(e.code, str(e)) from e


@handles("ClearCache")
def clear_cache(st: "Station", p: dict, now: datetime) -> Result:
    return {"status": "Accepted"}, [Persist(st.cache.clear())]


@handles("DataTransfer")
def data_transfer(st: "Station", p: dict, now: datetime) -> Result:
    return {"status": "UnknownVendorId"}, []  # §4.3: no vendor extensions on this station


@handles("RemoteStartTransaction")
def remote_start(st: "Station", p: dict, now: datetime) -> Result:
    rejected = {"status": "Rejected"}, []
    if st.registration != "Accepted":
        return rejected  # §4.2: not allowed while Pending
    cid = p.get("connectorId")
    id_tag = p["idTag"]
    if cid is not None and _connector(st, cid, allow_zero=False) is None:
        return rejected  # TC_027: connectorId 0 (the schema has no minimum, reference §3.3 item 17)
    profile = p.get("chargingProfile")
    if profile is not None and (profile.get("chargingProfilePurpose") != "TxProfile" or "transactionId" in profile):
        return rejected  # TC_060, errata 3.41/3.42
    if cid is None:
        usable = [c for c in st.connectors.values() if st._usable(c) and c.pending is None and not c.authorizing]
        plugged = [c for c in usable if c.plugged]
        pick = plugged or [c for c in usable if (r := st._reserved_for(c)) is None or r.admits(id_tag, None)]
        if not pick:
            return rejected
        c = pick[0]
    else:
        c = st.connectors[cid]
    if not st._usable(c) or (c.authorizing and not auth.same_tag(c.authorizing, id_tag)):
        return rejected  # TC_026: busy (a session, or another card being authorized), Faulted, Unavailable
    if c.pending is not None:
        if c.pending.id_tag != id_tag:
            return rejected
        # The same identifier is already authorized and waiting for the cable: a repeated
        # request only restarts ConnectionTimeOut (no second Authorize).
        c.pending.deadline = now + timedelta(seconds=st._key_int("ConnectionTimeOut", 60))
        return {"status": "Accepted"}, []
    res = st._reserved_for(c)
    if res is not None and res.admits(id_tag, None) is False:
        return rejected
    if profile is not None:
        from twin.core.smart_charging import ProfileError

        try:
            if st.smart.set_tx_profile_from_remote_start(c.id, profile) != "Accepted":
                return rejected
        except ProfileError as e:
            raise CallError(e.code, str(e)) from e
    acts: list[Action] = []
    if profile is not None:
        acts.append(Persist([("kv_put", "profiles", "all", st.smart.to_json())]))
    # A session started with a TxProfile stays on the connector the profile was stored for.
    bound = cid is not None or profile is not None
    if st._key_bool("AuthorizeRemoteTxRequests", True):
        # §5.11: behave like a local start (local list / cache with LocalPreAuthorize, else Authorize).
        d = st._decide(id_tag, now)
        if d.verdict == "accept":
            acts += st._authorized(c, id_tag, d.info, now, remote=True, bound=bound)
        elif d.verdict == "ask":
            c.authorizing = id_tag
            acts += st._authorize(id_tag, {"purpose": "remote", "connector": c.id, "bound": bound})
        else:
            return rejected
    else:
        acts += st._authorized(c, id_tag, None, now, remote=True, bound=bound)
    return {"status": "Accepted"}, acts


@handles("RemoteStopTransaction")
def remote_stop(st: "Station", p: dict, now: datetime) -> Result:
    if st.registration != "Accepted":
        return {"status": "Rejected"}, []
    tid = p["transactionId"]
    for c in st.connectors.values():
        if c.tx is not None and st.txs[c.tx].get("transaction_id") == tid:
            return {"status": "Accepted"}, st._stop_tx(c, "Remote", None, now)
    return {"status": "Rejected"}, []  # TC_028


@handles("Reset")
def reset(st: "Station", p: dict, now: datetime) -> Result:
    kind = p["type"]
    acts: list[Action] = []
    if kind == "Soft":
        # §5.14: stop transactions gracefully (SoftReset), then restart the application.
        for c in st.connectors.values():
            if c.tx is not None:
                acts += st._stop_tx(c, "SoftReset", None, now)
        acts.append(Restart("Soft"))
    else:
        # Hard: restart at once; the interrupted transactions are stopped with reason
        # HardReset after the new BootNotification (errata 3.36 / 3.82, TC_015).
        st.hard_reset_pending = True
        acts += [Persist([("kv_put", "station", "hard_reset", True)]), Restart("Hard")]
    return {"status": "Accepted"}, acts


@handles("UnlockConnector")
def unlock_connector(st: "Station", p: dict, now: datetime) -> Result:
    cid = p["connectorId"]
    if _connector(st, cid, allow_zero=False) is None or st.spec.fixed_cable:
        # Errata 3.87: unknown connector or no lock (fixed cable) => NotSupported.
        return {"status": "NotSupported"}, []
    c = st.connectors[cid]
    acts: list[Action] = []
    if c.tx is not None:
        acts += st._stop_tx(c, "UnlockCommand", None, now)  # §5.18: finish the transaction first
    return {"status": "Unlocked"}, acts


# ---------------------------------------------------------------- Local Auth List Management
@handles("GetLocalListVersion")
def get_local_list_version(st: "Station", p: dict, now: datetime) -> Result:
    if not st._key_bool("LocalAuthListEnabled", True):
        return {"listVersion": -1}, []
    return {"listVersion": st.local_list.version}, []


@handles("SendLocalList")
def send_local_list(st: "Station", p: dict, now: datetime) -> Result:
    if not st._key_bool("LocalAuthListEnabled", True):
        return {"status": "NotSupported"}, []
    status, ops = st.local_list.send_local_list(
        p["listVersion"], p["updateType"], p.get("localAuthorizationList"),
        max_send=st._key_int("SendLocalListMaxLength", 100), max_length=st._key_int("LocalAuthListMaxLength", 100))
    acts: list[Action] = [Persist(ops)] if ops else []
    if ops:
        # Listed ids are never cached (§3.5.3): drop cache entries the list now covers.
        dropped = st.cache.forget(lambda tag: st.local_list.get(tag) is not None)
        if dropped:
            acts.append(Persist(dropped))
    return {"status": status}, acts


# ---------------------------------------------------------------- Reservation
@handles("ReserveNow")
def reserve_now(st: "Station", p: dict, now: datetime) -> Result:
    cid = p["connectorId"]
    expiry = parse_ts(p["expiryDate"])
    rid = p["reservationId"]
    if _connector(st, cid) is None or expiry is None:
        return {"status": "Rejected"}, []
    if "Reservation" not in st._key_list("SupportedFeatureProfiles"):
        return {"status": "Rejected"}, []
    existing = st.reservations.items.get(rid)
    acts: list[Action] = []
    if cid == 0:
        if not st._key_bool("ReserveConnectorZeroSupported", False):
            return {"status": "Rejected"}, []  # §5.13 / TC_050_4
        if st.station_fault:
            return {"status": "Faulted"}, []
        if st.availability0 != "Operative":
            return {"status": "Unavailable"}, []
        free = [c for c in st.connectors.values() if st._is_free(c)]
        others = [r for r in st.reservations.zero() if r.reservation_id != rid]
        if len(free) <= len(others):
            faulted = [c for c in st.connectors.values() if c.fault]
            unavailable = [c for c in st.connectors.values() if not st._operative(c)]
            if len(faulted) == st.n:
                return {"status": "Faulted"}, []
            if len(unavailable) == st.n:
                return {"status": "Unavailable"}, []
            return {"status": "Occupied"}, []
    else:
        c = st.connectors[cid]
        if c.fault or st.station_fault:
            return {"status": "Faulted"}, []
        if not st._operative(c):
            return {"status": "Unavailable"}, []
        holder = st._reserved_for(c)  # its own reservation, or kept free for a connector-0 one
        if c.tx is not None or c.plugged or not c.idle() or (holder is not None and holder.reservation_id != rid):
            return {"status": "Occupied"}, []  # includes "already reserved" (reference §4.5)
    if existing is not None:
        acts.append(Persist(st.reservations.remove(rid)))  # same reservationId => replace
    r = Reservation(rid, cid, p["idTag"], p.get("parentIdTag"), expiry)
    acts.append(Persist(st.reservations.put(r)))
    return {"status": "Accepted"}, acts


@handles("CancelReservation")
def cancel_reservation(st: "Station", p: dict, now: datetime) -> Result:
    ops = st.reservations.remove(p["reservationId"])
    if not ops:
        return {"status": "Rejected"}, []  # TC_052
    return {"status": "Accepted"}, [Persist(ops)]


# ---------------------------------------------------------------- Remote Trigger
@handles("TriggerMessage")
def trigger_message(st: "Station", p: dict, now: datetime) -> Result:
    what = p["requestedMessage"]
    cid = p.get("connectorId")
    if cid is not None and (not isinstance(cid, int) or cid < 0 or cid > st.n):
        return {"status": "Rejected"}, []  # TC_055
    # §4.2: in Pending, TriggerMessage is how the CSMS lets the CP send. Before any
    # BootNotification.conf (registration None) nothing but a BootNotification may go out.
    force = st.registration == "Pending"
    acts: list[Action]
    if what == "BootNotification":
        if st.registration == "Accepted":
            return {"status": "Rejected"}, []  # errata 3.35
        if st.boot_in_flight:
            # The BootNotification already on its way is the triggered message: asking for
            # another now would leave a boot deadline in the past that nothing consumes.
            return {"status": "Accepted"}, []
        st.next_boot_at = now
        return {"status": "Accepted"}, st._maybe_boot(now)
    if st.registration not in ("Accepted", "Pending"):
        return {"status": "Rejected"}, []  # nothing may precede the BootNotification (§4.2)
    if what == "Heartbeat":
        acts = st._call("Heartbeat", {}, {"kind": "heartbeat"}, force=force)
    elif what == "StatusNotification":
        ids = [cid] if cid is not None else [0] + list(st.connectors)
        acts = []
        for i in ids:
            if i == 0:
                from twin.core.connector import derive_station
                s = derive_station(st.availability0, st.station_fault)
            else:
                s = st.status_of(st.connectors[i])
            acts += st._call("StatusNotification", _sn(i, s, now), {"kind": "status"}, force=force)
    elif what == "MeterValues":
        if cid == 0:
            if not st.spec.trigger_meter_values_connector_0:
                return {"status": "Rejected"}, []  # §6.51 types connectorId > 0 (profile quirk)
            # Errata 3.16: connector 0 is the whole station: its readings, no transactionId.
            mv = st.station_meter_value("Trigger", now)
            acts = st._call("MeterValues", {"connectorId": 0, "meterValue": [mv]}, {"kind": "trigger"},
                            force=force) if mv else []
            return {"status": "Accepted"}, acts
        ids = [cid] if cid is not None else list(st.connectors)
        acts = []
        for i in ids:
            c = st.connectors[i]
            # Errata 3.46: the most recent value of every MeterValuesSampledData measurand.
            mv = st._meter_value(st._values(c), st._key_list("MeterValuesSampledData"), "Trigger", now)
            if mv is None:
                continue
            payload: dict = {"connectorId": i, "meterValue": [mv]}
            if c.tx is not None and st.txs[c.tx].get("transaction_id") is not None:
                payload["transactionId"] = st.txs[c.tx]["transaction_id"]
            acts += st._call("MeterValues", payload, {"kind": "trigger"}, force=force)
    elif what == "DiagnosticsStatusNotification":
        acts = st._call("DiagnosticsStatusNotification", {"status": _idle_or(st.diagnostics_status, "Uploading")},
                        {"kind": "diag"}, force=force)
    elif what == "FirmwareStatusNotification":
        acts = st._call("FirmwareStatusNotification", {"status": _idle_or(st.firmware_status, (
            "Downloading", "Downloaded", "Installing"))}, {"kind": "fw"}, force=force)
    else:
        return {"status": "NotImplemented"}, []
    return {"status": "Accepted"}, acts


def _idle_or(status: str, busy) -> str:
    """§4.4/4.5: report Idle when nothing is in progress (a finished status is not 'in progress')."""
    busy = (busy,) if isinstance(busy, str) else busy
    return status if status in busy else "Idle"


def _sn(cid: int, s, now: datetime) -> dict:
    from twin.core.timeutil import ts

    payload = {"connectorId": cid, "errorCode": s[1], "status": s[0], "timestamp": ts(now)}
    if s[2]:
        payload["info"] = s[2][:50]
    return payload


# ---------------------------------------------------------------- Smart Charging
@handles("SetChargingProfile")
def set_charging_profile(st: "Station", p: dict, now: datetime) -> Result:
    from twin.core.smart_charging import ProfileError

    cid = p["connectorId"]
    if _connector(st, cid) is None:
        raise CallError("PropertyConstraintViolation", f"connectorId {cid} does not exist")  # errata 3.38
    try:
        status = st.smart.set_profile(cid, p["csChargingProfiles"], now, st._tx_info())
    except ProfileError as e:
        raise CallError(e.code, str(e)) from e
    acts: list[Action] = []
    if status == "Accepted":
        acts.append(Persist([("kv_put", "profiles", "all", st.smart.to_json())]))  # errata 3.37
    return {"status": status}, acts


@handles("ClearChargingProfile")
def clear_charging_profile(st: "Station", p: dict, now: datetime) -> Result:
    status = st.smart.clear(id=p.get("id"), connector_id=p.get("connectorId"),
                            purpose=p.get("chargingProfilePurpose"), stack_level=p.get("stackLevel"))
    acts: list[Action] = []
    if status == "Accepted":
        acts.append(Persist([("kv_put", "profiles", "all", st.smart.to_json())]))
    return {"status": status}, acts


@handles("GetCompositeSchedule")
def get_composite_schedule(st: "Station", p: dict, now: datetime) -> Result:
    from twin.core.smart_charging import ProfileError

    cid = p["connectorId"]
    if _connector(st, cid) is None:
        return {"status": "Rejected"}, []
    try:
        result = st.smart.composite(cid, now, p["duration"], p.get("chargingRateUnit"), st._tx_info())
    except ProfileError as e:
        raise CallError(e.code, str(e)) from e
    if result is None:
        return {"status": "Rejected"}, []
    return result, []


# ---------------------------------------------------------------- Firmware Management (adapter answers)
@handles("UpdateFirmware")
def update_firmware(st: "Station", p: dict, now: datetime):
    return DELEGATE


@handles("GetDiagnostics")
def get_diagnostics(st: "Station", p: dict, now: datetime):
    return DELEGATE
