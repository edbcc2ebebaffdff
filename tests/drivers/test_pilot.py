"""Control-pilot duty for a current limit (IEC 61851-1 table A.8)."""

import pytest

from drivers.pilot import duty_for_current


@pytest.mark.parametrize("amps, duty", [
    (None, 1.0), (0, 1.0), (5.9, 1.0), (float("nan"), 1.0),  # cannot be signalled: no charging
    (6, 0.10), (16, 0.26667), (32, 0.53333), (51, 0.85),
    (60, 0.88), (80, 0.96), (100, 0.96),
])
def test_duty_for_current(amps, duty):
    assert duty_for_current(amps) == pytest.approx(duty, abs=1e-5)
