"""How the station-wide ChargePointMaxProfile is divided between connectors.

Spec §3.13.1 / §3.13.3: a ChargePointMaxProfile limits the whole Charge Point, all
connectors combined. A naive charger applies it to every connector (2 connectors x
10 A = 20 A drawn under a 10 A station limit). We divide it by max-min fairness
("water-filling") between the connectors that share it at that instant:

* every sharing connector is first offered an equal part of the total;
* a connector whose own limit (TxProfile / TxDefaultProfile, or the hardware rating)
  is below its part keeps only what it may use, and the rest is split again among
  the others.

So the parts never add up to more than the total, a lone charging connector gets the
whole station limit (OCTT TC_066 needs exactly that), and a connector paused at 0 A
leaves its part to the other one.
"""

from __future__ import annotations

from collections.abc import Mapping


def water_fill(total: float, caps: Mapping[int, float]) -> dict[int, float]:
    """Divide ``total`` between the keys of ``caps``; no key gets more than its cap."""
    remaining = max(0.0, total)
    shares: dict[int, float] = {}
    ordered = sorted(caps.items(), key=lambda item: item[1])
    for index, (key, cap) in enumerate(ordered):
        fair = remaining / (len(ordered) - index)
        give = min(cap, fair)
        shares[key] = give
        remaining -= give
    return shares
