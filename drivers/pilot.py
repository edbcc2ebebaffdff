"""Control-pilot duty cycle for a current limit (IEC 61851-1 Annex A, same table as SAE J1772).

Pure: no GPIO here, so the sim and gpiozero pilots share the exact same mapping.
"""

from __future__ import annotations

import math

PILOT_FREQUENCY_HZ = 1000  # IEC 61851-1 A.2: 1 kHz +/- 12 V square wave

# IEC 61851-1 table A.8: the EV may not draw current below 6 A, and the PWM encodes at most 80 A.
MIN_SIGNALLED_A = 6.0
MAX_SIGNALLED_A = 80.0


def duty_for_current(amps: float | None) -> float:
    """Duty cycle (0..1) that offers ``amps`` to the EV.

    * ``None``, 0 or anything below 6 A: 1.0, i.e. a constant +12/+9 V with no PWM,
      which tells the EV that charging is not available right now (a smart-charging
      limit below 6 A cannot be signalled, so the EV must stop, not draw 6 A).
    * 6..51 A: duty % = A / 0.6            (10 %..85 %)
    * 51..80 A: duty % = A / 2.5 + 64      (85 %..96 %)
    * above 80 A: clamped to 80 A.
    """
    if amps is None or not math.isfinite(amps) or amps < MIN_SIGNALLED_A:
        return 1.0
    amps = min(float(amps), MAX_SIGNALLED_A)
    percent = amps / 0.6 if amps <= 51.0 else amps / 2.5 + 64.0
    return percent / 100.0
