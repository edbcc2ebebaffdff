"""Reservations (OCPP 1.6 §5.13, §6.37, §9.3.1; reference §4.5). Pure."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import datetime

from twin.core.auth import same_tag
from twin.core.timeutil import parse_ts


@dataclass
class Reservation:
    reservation_id: int
    connector_id: int  # 0 = any connector (ReserveConnectorZeroSupported)
    id_tag: str
    parent_id_tag: str | None
    expiry: datetime

    def to_record(self) -> dict:
        rec = asdict(self)
        rec["expiry"] = self.expiry.isoformat()
        return rec

    @classmethod
    def from_record(cls, rec: dict) -> "Reservation":
        return cls(rec["reservation_id"], rec["connector_id"], rec["id_tag"], rec.get("parent_id_tag"),
                   parse_ts(rec["expiry"]))

    def admits(self, id_tag: str, parent_id_tag: str | None) -> bool | None:
        """True/False when decidable; None when the tag's parent must be learned first (Authorize, §5.13)."""
        if same_tag(id_tag, self.id_tag):
            return True
        if self.parent_id_tag is None:
            return False
        if parent_id_tag is None:
            return None
        return same_tag(parent_id_tag, self.parent_id_tag)


class Reservations:
    NS = "reservations"

    def __init__(self, items: list[Reservation] | None = None):
        self.items: dict[int, Reservation] = {r.reservation_id: r for r in items or []}

    def for_connector(self, connector_id: int) -> Reservation | None:
        for r in self.items.values():
            if r.connector_id == connector_id:
                return r
        return None

    def zero(self) -> list[Reservation]:
        return [r for r in self.items.values() if r.connector_id == 0]

    def put(self, r: Reservation) -> list[tuple]:
        self.items[r.reservation_id] = r
        return [("kv_put", self.NS, str(r.reservation_id), r.to_record())]

    def remove(self, reservation_id: int) -> list[tuple]:
        if self.items.pop(reservation_id, None) is None:
            return []
        return [("kv_del", self.NS, str(reservation_id))]

    def expired(self, now: datetime) -> list[Reservation]:
        return [r for r in self.items.values() if r.expiry <= now]

    def next_expiry(self) -> datetime | None:
        return min((r.expiry for r in self.items.values()), default=None)
