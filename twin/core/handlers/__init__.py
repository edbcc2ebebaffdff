"""CSMS-initiated calls: the action -> handler table, one module per OCPP 1.6 feature profile.

Each handler takes ``(station, payload, now)`` and sees the station only through its
profile's Protocol in :mod:`twin.core.ports`. The payload has already passed the OCPP 1.6
JSON schema (``twin.link``); the checks in the handlers are the semantic ones the schema
cannot express.
"""

from __future__ import annotations

from twin.core.handlers import core, firmware, local_list, reservation, security, smart_charging, trigger
from twin.core.ports import Handler

HANDLERS: dict[str, Handler] = {
    **core.HANDLERS,
    **local_list.HANDLERS,
    **reservation.HANDLERS,
    **trigger.HANDLERS,
    **smart_charging.HANDLERS,
    **firmware.HANDLERS,
    **security.HANDLERS,
}
