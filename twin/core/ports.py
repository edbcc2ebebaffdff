"""What the CSMS-call handlers (twin.core.handlers) may see of the station.

One Protocol per OCPP feature profile lists exactly the attributes and methods its
handler module uses; :class:`StationOps` is all of them, and
:class:`twin.core.station.Station` implements it. A handler changes state only through
these methods (or through the public methods of the objects they return: the
reservations, the smart-charging engine, the authorization store), never by writing
another object's fields. This module imports no station code, so there is no cycle:
station -> handlers -> ports.

A handler takes ``(station, payload, now)`` and returns ``(response payload, actions)``,
or :data:`DELEGATE` for a call an adapter answers (firmware and diagnostics), or raises
:class:`CallError` for a CALLERROR (OCPP-J §4.2.3).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Callable, Mapping, Protocol

from twin.core.actions import Action, Delegate
from twin.core.authorization import Authorizer
from twin.core.calls import CallKind
from twin.core.connector import Connector
from twin.core.registration import Registration
from twin.core.reservation import Reservation, Reservations
from twin.core.security import Security
from twin.core.sessions import RemoteClaim
from twin.core.settings import Settings
from twin.core.smart_charging import SmartCharging, TxInfo
from twin.core.status import Fault, Status

DELEGATE = Delegate("", "", {})

Result = tuple[dict, list[Action]]


class CallError(Exception):
    """Answer the CSMS call with a CALLERROR ``code`` (OCPP-J 1.6 §4.2.3)."""

    def __init__(self, code: str, description: str):
        super().__init__(description)
        self.code = code
        self.description = description


class StationShape(Protocol):
    """Read by every profile."""

    @property
    def registration(self) -> Registration: ...

    def has_connector(self, cid: Any, *, allow_zero: bool = True) -> bool: ...


class CoreOps(StationShape, Protocol):
    @property
    def settings(self) -> Settings: ...
    @property
    def authorization(self) -> Authorizer: ...
    @property
    def smart(self) -> SmartCharging: ...
    @property
    def fixed_cable(self) -> bool: ...

    def save_profiles(self) -> list[Action]: ...
    def change_availability(self, cid: int, target: str, now: datetime) -> tuple[str, list[Action]]: ...
    def key_changed(self, key: str, now: datetime) -> list[Action]: ...
    def claim_for_remote(self, cid: int | None, id_tag: str, now: datetime) -> RemoteClaim | None: ...
    def start_remote(self, cid: int, id_tag: str, *, bound: bool, now: datetime) -> list[Action] | None: ...
    def transaction_connector(self, transaction_id: int) -> int | None: ...
    def stop_transaction(self, cid: int, reason: str, id_tag: str | None, now: datetime) -> list[Action]: ...
    def stop_transactions(self, reason: str, now: datetime) -> list[Action]: ...
    def request_hard_reset(self) -> list[Action]: ...
    def change_security_key(self, key: str, value: str, now: datetime) -> tuple[str, list[Action]]: ...


class LocalListOps(StationShape, Protocol):
    @property
    def authorization(self) -> Authorizer: ...


class ReservationOps(StationShape, Protocol):
    @property
    def settings(self) -> Settings: ...
    @property
    def reservations(self) -> Reservations: ...
    @property
    def connectors(self) -> Mapping[int, Connector]: ...
    @property
    def station_fault(self) -> Fault | None: ...

    def station_operative(self) -> bool: ...
    def operative(self, cid: int) -> bool: ...
    def is_free(self, cid: int) -> bool: ...
    def reserved_for(self, cid: int) -> Reservation | None: ...


class TriggerOps(StationShape, Protocol):
    @property
    def connectors(self) -> Mapping[int, Connector]: ...
    @property
    def firmware_status(self) -> str: ...
    @property
    def diagnostics_status(self) -> str: ...
    @property
    def trigger_meter_values_connector_0(self) -> bool: ...

    def trigger_boot(self, now: datetime) -> tuple[str, list[Action]]: ...
    def send_call(self, action: str, payload: dict, kind: CallKind, *, force: bool) -> list[Action]: ...
    def status_of(self, c: Connector) -> Status: ...
    def station_status(self) -> Status: ...
    def station_meter_value(self, context: str, when: datetime) -> dict | None: ...
    def connector_meter_value(self, cid: int, context: str, when: datetime) -> dict | None: ...
    def transaction_id(self, cid: int) -> int | None: ...


class SecurityTriggerOps(TriggerOps, Protocol):
    """ExtendedTriggerMessage (security whitepaper): TriggerMessage's reads plus the security state."""

    @property
    def security(self) -> Security: ...

    def request_certificate(self) -> tuple[str, list[Action]]: ...


class SmartChargingOps(StationShape, Protocol):
    @property
    def smart(self) -> SmartCharging: ...

    def tx_info(self) -> dict[int, TxInfo]: ...
    def save_profiles(self) -> list[Action]: ...


class StationOps(CoreOps, LocalListOps, ReservationOps, SecurityTriggerOps, SmartChargingOps, Protocol):
    """Everything a handler may use."""


Handler = Callable[[Any, dict, datetime], "Result | Delegate"]
