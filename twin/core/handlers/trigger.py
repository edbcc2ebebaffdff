"""Remote Trigger profile: TriggerMessage (§5.17, §6.51; errata 3.16, 3.35, 3.46)."""

from __future__ import annotations

from datetime import datetime

from twin.core.actions import Action
from twin.core.calls import CallKind
from twin.core.ports import Result, TriggerOps
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
    force = st.registration == Registration.PENDING
    if what == "Heartbeat":
        acts = st.send_call("Heartbeat", {}, CallKind.HEARTBEAT, force=force)
    elif what == "StatusNotification":
        acts = []
        for i in [cid] if cid is not None else [0, *st.connectors]:
            status = st.station_status() if i == 0 else st.status_of(st.connectors[i])
            acts += st.send_call("StatusNotification", notification(i, status, now), CallKind.STATUS, force=force)
    elif what == "MeterValues":
        if cid == 0 and not st.trigger_meter_values_connector_0:
            return {"status": "Rejected"}, []  # §6.51 types connectorId > 0 (profile quirk)
        acts = _meter_values(st, cid, now, force)
    elif what == "DiagnosticsStatusNotification":
        status = _idle_or(st.diagnostics_status, ("Uploading",))
        acts = st.send_call("DiagnosticsStatusNotification", {"status": status}, CallKind.DIAGNOSTICS, force=force)
    elif what == "FirmwareStatusNotification":
        status = _idle_or(st.firmware_status, ("Downloading", "Downloaded", "Installing"))
        acts = st.send_call("FirmwareStatusNotification", {"status": status}, CallKind.FIRMWARE, force=force)
    else:
        return {"status": "NotImplemented"}, []
    return {"status": "Accepted"}, acts


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


HANDLERS = {"TriggerMessage": trigger_message}
