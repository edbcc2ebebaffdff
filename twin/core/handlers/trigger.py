"""Remote Trigger profile: TriggerMessage (§5.17, §6.51; errata 3.16, 3.35, 3.46), and the
security whitepaper's ExtendedTriggerMessage (edition 3; the OCPP 2.0.1 TriggerMessage
under a 1.6 name), which adds LogStatusNotification, SignedFirmwareStatusNotification (as
"FirmwareStatusNotification") and SignChargePointCertificate, and drops
DiagnosticsStatusNotification."""

from __future__ import annotations

from datetime import datetime

from twin.core.actions import Action
from twin.core.calls import CallKind
from twin.core.ports import Result, SecurityTriggerOps, TriggerOps
from twin.core.registration import Registration
from twin.core.status import notification


def trigger_message(st: TriggerOps, p: dict, now: datetime) -> Result:
    what = p["requestedMessage"]
    cid = p.get("connectorId")
    if cid is not None and not st.has_connector(cid):
        return {"status": "Rejected"}, []  # TC_055
    if what == "BootNotification":
        status, acts = st.trigger_boot(now)
        return {"status": status}, acts
    # §4.2: in Pending, TriggerMessage is how the CSMS lets the CP send. Before any
    # BootNotification.conf (registration None) nothing but a BootNotification may go out.
    if st.registration not in (Registration.ACCEPTED, Registration.PENDING):
        return {"status": "Rejected"}, []
    if what == "MeterValues" and cid == 0 and not st.trigger_meter_values_connector_0:
        return {"status": "Rejected"}, []  # §6.51 types connectorId > 0 (profile quirk)
    force = st.registration == Registration.PENDING
    if what == "DiagnosticsStatusNotification":
        status = _idle_or(st.diagnostics_status, ("Uploading",))
        acts = st.send_call("DiagnosticsStatusNotification", {"status": status}, CallKind.DIAGNOSTICS, force=force)
    elif what == "FirmwareStatusNotification":
        # The plain UpdateFirmware status, also while a signed update runs (whitepaper: 1.6
        # TriggerMessage is unchanged).
        status = _idle_or(st.firmware_status, ("Downloading", "Downloaded", "Installing"))
        acts = st.send_call("FirmwareStatusNotification", {"status": status}, CallKind.FIRMWARE, force=force)
    else:
        acts = _common(st, what, cid, now, force)
        if acts is None:
            return {"status": "NotImplemented"}, []
    return {"status": "Accepted"}, acts


def extended_trigger_message(st: SecurityTriggerOps, p: dict, now: datetime) -> Result:
    """ExtendedTriggerMessage: answered first, then the message goes out (sends follow replies).
    Works while Pending (the CSMS may replace credentials then: A00.FR.806, A01.FR.05)."""
    what = p["requestedMessage"]
    cid = p.get("connectorId")
    if cid is not None and not st.has_connector(cid, allow_zero=False):
        return {"status": "Rejected"}, []  # connectorId > 0 and <= NumberOfConnectors (libocpp)
    if what == "BootNotification":
        status, acts = st.trigger_boot(now)
        return {"status": status}, acts
    if st.registration not in (Registration.ACCEPTED, Registration.PENDING):
        return {"status": "Rejected"}, []
    force = st.registration == Registration.PENDING
    if what == "SignChargePointCertificate":
        status, acts = st.request_certificate()
        return {"status": status}, acts
    if what == "LogStatusNotification":
        # N01.FR.12: Idle without requestId when no upload runs.
        status, request_id = st.security.log
        if status != "Uploading":
            status, request_id = "Idle", None
        payload = {"status": status} if request_id is None else {"status": status, "requestId": request_id}
        acts = st.send_call("LogStatusNotification", payload, CallKind.TRIGGER, force=force)
    elif what == "FirmwareStatusNotification":
        # SignedFirmwareStatusNotification: Idle when the last status sent was Installed,
        # else that status (L01.FR.28/29); requestId only with a status other than Idle (L01.FR.21).
        status, request_id = st.security.signed_firmware
        if status == "Installed":
            status, request_id = "Idle", None
        payload = {"status": status} if request_id is None or status == "Idle" else \
            {"status": status, "requestId": request_id}
        acts = st.send_call("SignedFirmwareStatusNotification", payload, CallKind.TRIGGER, force=force)
    else:
        acts = _common(st, what, cid, now, force)
        if acts is None:
            return {"status": "NotImplemented"}, []
    return {"status": "Accepted"}, acts


def _common(st: TriggerOps, what: str, cid: int | None, now: datetime, force: bool) -> list[Action] | None:
    """What both triggers send alike; None for a message they do not trigger."""
    if what == "Heartbeat":
        return st.send_call("Heartbeat", {}, CallKind.HEARTBEAT, force=force)
    if what == "StatusNotification":
        acts: list[Action] = []
        for i in [cid] if cid is not None else [0, *st.connectors]:
            status = st.station_status() if i == 0 else st.status_of(st.connectors[i])
            acts += st.send_call("StatusNotification", notification(i, status, now), CallKind.STATUS, force=force)
        return acts
    if what == "MeterValues":
        return _meter_values(st, cid, now, force)
    return None


def _meter_values(st: TriggerOps, cid: int | None, now: datetime, force: bool) -> list[Action]:
    if cid == 0:
        # Errata 3.16: connector 0 is the whole station: its readings, no transactionId.
        mv = st.station_meter_value("Trigger", now)
        if mv is None:
            return []
        return st.send_call("MeterValues", {"connectorId": 0, "meterValue": [mv]}, CallKind.TRIGGER, force=force)
    acts: list[Action] = []
    for i in [cid] if cid is not None else list(st.connectors):
        # Errata 3.46: the most recent value of every MeterValuesSampledData measurand.
        mv = st.connector_meter_value(i, "Trigger", now)
        if mv is None:
            continue
        payload: dict = {"connectorId": i, "meterValue": [mv]}
        tid = st.transaction_id(i)
        if tid is not None:
            payload["transactionId"] = tid
        acts += st.send_call("MeterValues", payload, CallKind.TRIGGER, force=force)
    return acts


def _idle_or(status: str, busy: tuple[str, ...]) -> str:
    """§4.4/4.5: report Idle when nothing is in progress (a finished status is not 'in progress')."""
    return status if status in busy else "Idle"


HANDLERS = {"TriggerMessage": trigger_message, "ExtendedTriggerMessage": extended_trigger_message}
