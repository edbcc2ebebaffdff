"""Smart Charging (OCPP 1.6 §3.13, §5.5, §5.7, §5.16 and errata): pure core.

``SmartCharging`` holds the profiles and answers SetChargingProfile,
ClearChargingProfile, GetCompositeSchedule and RemoteStart profiles; ``limit_at``
is what the station applies. See ``engine`` for the rules and the module docstrings
of ``parse``, ``timeline`` and ``sharing`` for the pieces.
"""

from .engine import MAX_COMPOSITE_DURATION, NEXT_CHANGE_HORIZON, SmartCharging, floor_tenth
from .model import ProfileError, TxInfo

__all__ = ["MAX_COMPOSITE_DURATION", "NEXT_CHANGE_HORIZON", "ProfileError", "SmartCharging", "TxInfo", "floor_tenth"]
