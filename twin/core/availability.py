"""Availability: Operative or Inoperative, for the Charge Point and each connector.

Owns the availability of connector 0 and of each connector, the changes that wait for a
transaction to end (ChangeAvailability answered Scheduled), and firmware maintenance
(an update waiting to install). Implements OCPP 1.6 §5.2 and §6.7 (ChangeAvailability:
Accepted, Rejected, Scheduled; the change persists across a restart; connector 0 stands
for the whole Charge Point) and errata 3.47-3.49 (while a firmware update waits, idle
connectors are Unavailable). What ends with a connector's availability (its reservation,
an authorization waiting for a cable, §5.13) is for the caller: the change says which
connectors became Inoperative.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from twin.core.ops import NS, StationKey, kv_put, station_put

OPERATIVE = "Operative"
INOPERATIVE = "Inoperative"


@dataclass
class ConnectorAvailability:
    availability: str = OPERATIVE
    scheduled: str | None = None  # ChangeAvailability waiting for the transaction to end


@dataclass
class AvailabilityChange:
    status: str  # ChangeAvailability.conf status ("" when applying a scheduled change)
    ops: list[tuple] = field(default_factory=list)
    unavailable: list[int] = field(default_factory=list)  # connectors that just became Inoperative
    station_unavailable: bool = False  # the Charge Point just became Inoperative


class Availability:
    def __init__(self, connector_ids: list[int], kv: dict, station_kv: dict):
        self.connectors = {cid: ConnectorAvailability(kv.get(str(cid), OPERATIVE)) for cid in connector_ids}
        self.availability0: str = kv.get("0", OPERATIVE)
        scheduled = station_kv.get(StationKey.SCHEDULED) or {}  # answered Scheduled before a restart (§5.2)
        self.scheduled0: str | None = scheduled.get("0")
        for cid, c in self.connectors.items():
            c.scheduled = scheduled.get(str(cid))
        # A firmware install waiting: idle connectors Unavailable. Not persisted: a restart ends it.
        self.maintenance = False

    def of(self, cid: int) -> ConnectorAvailability:
        return self.connectors[cid]

    def operative(self, cid: int) -> bool:
        return (self.availability0 == OPERATIVE and self.connectors[cid].availability == OPERATIVE
                and not self.maintenance)

    def station_operative(self) -> bool:
        return self.availability0 == OPERATIVE

    def set_maintenance(self, on: bool) -> None:
        self.maintenance = on

    def change(self, cid: int, target: str, busy: set[int]) -> AvailabilityChange:
        """ChangeAvailability.req for a known ``cid``; ``busy``: connectors with a transaction."""
        if cid == 0:
            return self._change_station(target, busy)
        c = self.connectors[cid]
        if c.availability == target and c.scheduled is None:
            return AvailabilityChange("Accepted")
        if cid in busy and target == INOPERATIVE:
            c.scheduled = target  # §5.2: during a transaction the change waits until it ends
            return AvailabilityChange("Scheduled", [self.scheduled_op()])
        c.availability, c.scheduled = target, None
        return AvailabilityChange("Accepted", [kv_put(NS.AVAILABILITY, str(cid), target), self.scheduled_op()],
                                  unavailable=[cid] if target == INOPERATIVE else [])

    def _change_station(self, target: str, busy: set[int]) -> AvailabilityChange:
        if self.availability0 == target and self.scheduled0 is None and all(
                c.availability == target and c.scheduled is None for c in self.connectors.values()):
            return AvailabilityChange("Accepted")  # same state: Accepted, no new StatusNotification
        waits = target == INOPERATIVE and bool(busy)
        ops: list[tuple] = []
        # Idle connectors change now; busy ones when their transaction ends (§5.2), and
        # connector 0 once none is busy. So an idle connector takes no new session meanwhile.
        for cid, c in self.connectors.items():
            if cid in busy and target == INOPERATIVE:
                c.scheduled = target
            else:
                c.availability, c.scheduled = target, None
                ops.append(kv_put(NS.AVAILABILITY, str(cid), c.availability))
        if waits:
            self.scheduled0 = target
        else:
            self.availability0, self.scheduled0 = target, None
            ops.append(kv_put(NS.AVAILABILITY, "0", target))
        ops.append(self.scheduled_op())
        unavailable = [cid for cid, c in self.connectors.items() if c.availability == INOPERATIVE]
        return AvailabilityChange("Scheduled" if waits else "Accepted", ops,
                                  unavailable=unavailable if target == INOPERATIVE else [],
                                  station_unavailable=target == INOPERATIVE and not waits)

    def apply_scheduled(self, cid: int, busy: set[int]) -> AvailabilityChange:
        """A transaction on ``cid`` ended: the changes that waited for it apply now (§5.2)."""
        ops: list[tuple] = []
        changed: list[int] = []
        c = self.connectors[cid]
        if c.scheduled is not None and cid not in busy:
            c.availability, c.scheduled = c.scheduled, None
            ops.append(kv_put(NS.AVAILABILITY, str(cid), c.availability))
            changed.append(cid)
        if self.scheduled0 and not busy:
            self.availability0, self.scheduled0 = self.scheduled0, None
            ops.append(kv_put(NS.AVAILABILITY, "0", self.availability0))
            for xid, x in self.connectors.items():
                x.availability, x.scheduled = self.availability0, None
                ops.append(kv_put(NS.AVAILABILITY, str(xid), x.availability))
            changed = list(self.connectors)
        if not ops:
            return AvailabilityChange("")
        ops.append(self.scheduled_op())
        unavailable = [x for x in changed if self.connectors[x].availability != OPERATIVE]
        return AvailabilityChange("", ops, unavailable=unavailable, station_unavailable=self.availability0 != OPERATIVE)

    def scheduled_op(self) -> tuple:
        """The changes waiting (Scheduled), persisted so a power loss keeps them (§5.2)."""
        scheduled = {str(cid): c.scheduled for cid, c in self.connectors.items() if c.scheduled}
        if self.scheduled0:
            scheduled["0"] = self.scheduled0
        return station_put(StationKey.SCHEDULED, scheduled)
