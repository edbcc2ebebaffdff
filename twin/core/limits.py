"""Numeric limits shared by the core. Each lives here only, so the key validation and
the station cannot disagree about them."""

from __future__ import annotations

# The OCPP-J 1.6 schemas type integers without bounds; the twin keeps every integer a
# CSMS can set (configuration keys, BootNotification.conf interval) to a signed 32-bit
# range, so an absurd value (e.g. a 40-digit interval) is refused at the edge instead of
# overflowing a timedelta deep in the station.
INT32_MAX = 2**31 - 1

# IEC 61851-1: below 6 A the control pilot cannot tell an EV to charge, so a lower
# limit pauses charging and a connector rated below it could never charge.
MIN_CHARGING_CURRENT_A = 6.0
