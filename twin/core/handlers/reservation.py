"""Reservation profile: ReserveNow (§5.13, §6.37) and CancelReservation (§5.1)."""

from __future__ import annotations

from datetime import datetime

from twin.core.actions import Action, Persist
from twin.core.ports import ReservationOps, Result
from twin.core.reservation import Reservation
from twin.core.timeutil import parse_ts


def _answer(status: str) -> Result:
    return {"status": status}, []


def reserve_now(st: ReservationOps, p: dict, now: datetime) -> Result:
    cid = p["connectorId"]
    expiry = parse_ts(p["expiryDate"])
    rid = p["reservationId"]
    if not st.has_connector(cid) or expiry is None:
        return _answer("Rejected")
    if "Reservation" not in st.settings.get_list("SupportedFeatureProfiles"):
        return _answer("Rejected")
    if cid == 0:
        refused = _refuse_connector_zero(st, rid)
    else:
        refused = _refuse_connector(st, cid, rid)
    if refused is not None:
        return _answer(refused)
    acts: list[Action] = []
    if rid in st.reservations.items:
        acts.append(Persist(st.reservations.remove(rid)))  # same reservationId => replace
    acts.append(Persist(st.reservations.put(Reservation(rid, cid, p["idTag"], p.get("parentIdTag"), expiry))))
    return {"status": "Accepted"}, acts


def _refuse_connector_zero(st: ReservationOps, rid: int) -> str | None:
    """Why a reservation of any connector is refused, None if it is not (§5.13, TC_050_4)."""
    if not st.settings.get_bool("ReserveConnectorZeroSupported"):
        return "Rejected"
    if st.station_fault:
        return "Faulted"
    if not st.station_operative():
        return "Unavailable"
    free = [cid for cid in st.connectors if st.is_free(cid)]
    others = [r for r in st.reservations.zero() if r.reservation_id != rid]
    if len(free) > len(others):
        return None
    if all(c.fault for c in st.connectors.values()):
        return "Faulted"
    if not any(st.operative(cid) for cid in st.connectors):
        return "Unavailable"
    return "Occupied"


def _refuse_connector(st: ReservationOps, cid: int, rid: int) -> str | None:
    c = st.connectors[cid]
    if c.fault or st.station_fault:
        return "Faulted"
    if not st.operative(cid):
        return "Unavailable"
    holder = st.reserved_for(cid)  # its own reservation, or kept free for a connector-0 one
    if c.tx is not None or c.plugged or not c.idle() or (holder is not None and holder.reservation_id != rid):
        return "Occupied"  # includes "already reserved"
    return None


def cancel_reservation(st: ReservationOps, p: dict, now: datetime) -> Result:
    ops = st.reservations.remove(p["reservationId"])
    if not ops:
        return _answer("Rejected")  # TC_052
    return {"status": "Accepted"}, [Persist(ops)]


HANDLERS = {"ReserveNow": reserve_now, "CancelReservation": cancel_reservation}
