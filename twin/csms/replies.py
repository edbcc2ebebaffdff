"""The CSMS's default answers to charge-point calls (OCPP 1.6 §6), and its id-tag table.

Tests override any of them per action with `Csms.on`; these defaults are what a
friendly central system answers so a station can boot and charge.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

Handler = Callable[[dict[str, Any]], "dict[str, Any] | object | Awaitable[dict[str, Any] | object]"]

# OCPP 1.6 §4 / §6: the operations a charge point initiates (Core, Firmware
# Management, plus the 1.6 Security Whitepaper's four). Anything else arriving from
# a charge point is answered NotImplemented and recorded as a violation.
CP_INITIATED_ACTIONS: frozenset[str] = frozenset(
    {
        "Authorize",
        "BootNotification",
        "DataTransfer",
        "DiagnosticsStatusNotification",
        "FirmwareStatusNotification",
        "Heartbeat",
        "MeterValues",
        "StartTransaction",
        "StatusNotification",
        "StopTransaction",
        "LogStatusNotification",
        "SecurityEventNotification",
        "SignCertificate",
        "SignedFirmwareStatusNotification",
    }
)


def ocpp_timestamp(now: datetime) -> str:
    """An OCPP dateTime: ISO 8601 in UTC with a Z, to the millisecond, as most central systems send it."""
    return now.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class DefaultReplies:
    """Default handlers; ``id_tags`` maps an idTag to its idTagInfo (unknown tags get ``unknown_id_tag``)."""

    def __init__(
        self,
        *,
        boot_status: str,
        heartbeat_interval: int,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.boot_status = boot_status
        self.heartbeat_interval = heartbeat_interval
        self.id_tags: dict[str, dict[str, Any]] = {}
        self.unknown_id_tag: dict[str, Any] = {"status": "Accepted"}
        self._clock = clock
        self._transaction_ids = itertools.count(1)

    def id_tag_info(self, id_tag: str) -> dict[str, Any]:
        return dict(self.id_tags.get(id_tag, self.unknown_id_tag))

    def handlers(self) -> dict[str, Handler]:
        return {
            "BootNotification": self.boot_notification,
            "Heartbeat": self.heartbeat,
            "Authorize": self.authorize,
            "StartTransaction": self.start_transaction,
            "StopTransaction": self.stop_transaction,
            "MeterValues": _empty,
            "StatusNotification": _empty,
            "FirmwareStatusNotification": _empty,
            "DiagnosticsStatusNotification": _empty,
            # Security whitepaper §5: the three notifications are answered with an empty .conf.
            "SecurityEventNotification": _empty,
            "LogStatusNotification": _empty,
            "SignedFirmwareStatusNotification": _empty,
            # §4.3: a recipient with no implementation for the vendorId answers UnknownVendorId.
            "DataTransfer": lambda payload: {"status": "UnknownVendorId"},
        }

    def boot_notification(self, payload: dict[str, Any]) -> dict[str, Any]:
        # §6.4: "interval" is the heartbeat interval when Accepted, the retry delay otherwise.
        return {
            "status": self.boot_status,
            "currentTime": ocpp_timestamp(self._clock()),
            "interval": self.heartbeat_interval,
        }

    def heartbeat(self, payload: dict[str, Any]) -> dict[str, Any]:
        return {"currentTime": ocpp_timestamp(self._clock())}

    def authorize(self, payload: dict[str, Any]) -> dict[str, Any]:
        return {"idTagInfo": self.id_tag_info(str(payload.get("idTag", "")))}

    def start_transaction(self, payload: dict[str, Any]) -> dict[str, Any]:
        return {
            "transactionId": next(self._transaction_ids),
            "idTagInfo": self.id_tag_info(str(payload.get("idTag", ""))),
        }

    def stop_transaction(self, payload: dict[str, Any]) -> dict[str, Any]:
        # §6.50: idTagInfo is optional; it is only meaningful (and OCTT only expects it) when the
        # request carries an idTag; the station updates its cache from it.
        if "idTag" in payload:
            return {"idTagInfo": self.id_tag_info(str(payload["idTag"]))}
        return {}


def _empty(payload: dict[str, Any]) -> dict[str, Any]:
    return {}
