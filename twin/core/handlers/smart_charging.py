"""Smart Charging profile: SetChargingProfile (§5.16), ClearChargingProfile (§5.5),
GetCompositeSchedule (§5.7). The rules are twin.core.smart_charging's."""

from __future__ import annotations

from datetime import datetime

from twin.core.actions import Action
from twin.core.ports import CallError, Result, SmartChargingOps
from twin.core.smart_charging import ProfileError


def set_charging_profile(st: SmartChargingOps, p: dict, now: datetime) -> Result:
    cid = p["connectorId"]
    if not st.has_connector(cid):
        raise CallError("PropertyConstraintViolation", f"connectorId {cid} does not exist")  # errata 3.38
    try:
        status = st.smart.set_profile(cid, p["csChargingProfiles"], now, st.tx_info())
    except ProfileError as e:
        raise CallError(e.code, str(e)) from e
    acts: list[Action] = st.save_profiles() if status == "Accepted" else []  # errata 3.37
    return {"status": status}, acts


def clear_charging_profile(st: SmartChargingOps, p: dict, now: datetime) -> Result:
    status = st.smart.clear(id=p.get("id"), connector_id=p.get("connectorId"),
                            purpose=p.get("chargingProfilePurpose"), stack_level=p.get("stackLevel"))
    return {"status": status}, st.save_profiles() if status == "Accepted" else []


def get_composite_schedule(st: SmartChargingOps, p: dict, now: datetime) -> Result:
    cid = p["connectorId"]
    if not st.has_connector(cid):
        return {"status": "Rejected"}, []
    try:
        result = st.smart.composite(cid, now, p["duration"], p.get("chargingRateUnit"), st.tx_info())
    except ProfileError as e:
        raise CallError(e.code, str(e)) from e
    if result is None:
        return {"status": "Rejected"}, []
    return result, []


HANDLERS = {
    "SetChargingProfile": set_charging_profile,
    "ClearChargingProfile": clear_charging_profile,
    "GetCompositeSchedule": get_composite_schedule,
}
