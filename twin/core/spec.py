"""The shape of the station the core runs."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class StationSpec:
    """What the charger profile says about the model (twin/profiles), plus the unit's own
    identity. Tests build one directly."""

    connectors: int = 2
    fixed_cable: bool = True
    identity: dict = field(default_factory=lambda: {
        "chargePointVendor": "XJ Power Co., Ltd.", "chargePointModel": "iEVQC33", "firmwareVersion": "V1.10"})
    max_current_a: float = 32.0  # per connector: the pilot offer and the local limit (TC_067)
    voltage: float = 230.0
    phases: int = 3
    boot_retry_s: int = 10  # BootNotification retry after a CALLERROR/timeout or interval 0
    trigger_meter_values_connector_0: bool = False  # profile quirk (docs/profiles.md)

    @classmethod
    def from_profile(cls, profile: Any, *, identity: dict, connectors: int, fixed_cable: bool) -> "StationSpec":
        return cls(connectors=connectors, fixed_cable=fixed_cable, identity=identity,
                   max_current_a=profile.max_current_a, voltage=profile.voltage, phases=profile.phases,
                   trigger_meter_values_connector_0=profile.quirks.trigger_meter_values_connector_0)
