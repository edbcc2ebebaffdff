"""One connector as the rest of the station (handlers, views, tests) reads it.

A read-only view: each fact is read from the machine that owns it (the EVSE, the
transaction log, sessions, availability, the status reporter) and can only be changed
through that machine. Status derivation is in :mod:`twin.core.status`.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from twin.core.availability import ConnectorAvailability
from twin.core.evse import EvseFacts, Fault
from twin.core.sessions import AwaitingCable, Session
from twin.core.status import Status, StatusRecord
from twin.core.txlog import TxLog


class Connector:
    __slots__ = ("id", "_evse", "_session", "_availability", "_status", "_txlog")

    def __init__(self, cid: int, evse: EvseFacts, session: Session, availability: ConnectorAvailability,
                 status: StatusRecord, txlog: TxLog):
        self.id = cid
        self._evse = evse
        self._session = session
        self._availability = availability
        self._status = status
        self._txlog = txlog

    def __repr__(self) -> str:
        return (f"Connector({self.id}, plugged={self.plugged}, tx={self.tx}, relay={self.relay}, "
                f"pending={self.pending}, availability={self.availability!r})")

    # the EVSE
    @property
    def plugged(self) -> bool:
        return self._evse.plugged

    @property
    def ev_disconnected(self) -> bool:
        return self._evse.ev_disconnected

    @property
    def relay(self) -> bool:
        return self._evse.relay

    @property
    def pilot(self) -> float | None:
        return self._evse.pilot

    @property
    def reading(self) -> Any:
        return self._evse.reading

    @property
    def ev_drawing(self) -> bool | None:
        return self._evse.ev_drawing

    @property
    def limit_a(self) -> float | None:
        return self._evse.limit_a

    @property
    def phases(self) -> int:
        return self._evse.phases

    @property
    def fault(self) -> Fault | None:
        return self._evse.fault

    @property
    def meter_error(self) -> str | None:
        return self._evse.meter_error

    # the transaction log
    @property
    def tx(self) -> int | None:
        """Local id of the running transaction."""
        return self._txlog.local_id(self.id)

    # sessions
    @property
    def pending(self) -> AwaitingCable | None:
        return self._session.pending

    @property
    def authorizing(self) -> str | None:
        return self._session.authorizing

    @property
    def plug_deadline(self) -> datetime | None:
        return self._session.plug_deadline

    @property
    def finishing(self) -> bool:
        return self._session.finishing

    # availability
    @property
    def availability(self) -> str:
        return self._availability.availability

    @property
    def scheduled(self) -> str | None:
        return self._availability.scheduled

    # status reporting
    @property
    def current(self) -> Status | None:
        return self._status.current

    @property
    def since(self) -> datetime | None:
        return self._status.since

    @property
    def reported(self) -> Status | None:
        return self._status.reported

    @property
    def reported_at(self) -> datetime | None:
        return self._status.reported_at

    def idle(self) -> bool:
        """No transaction, nothing authorized or being authorized."""
        return self.tx is None and self.pending is None and self.authorizing is None
