"""End to end: a real card on a real PC/SC stack (pcscd + vpcd + virtual card) makes the
station send Authorize.req to the loopback CSMS; a held card is one Authorize."""

from __future__ import annotations

import asyncio

import pytest

from tests.drivers.fake_vicc import FakeCard

pytestmark = pytest.mark.pcsc


async def test_card_tap_reaches_the_csms_as_authorize(pcscd, make_station):
    st = await make_station(force_sim=False, drivers={"reader": {"backend": "pcsc", "strict": True,
                                                                 "reader": "Virtual PCD 00 00"}})
    report = st.rt.drivers.reports[2]
    assert (report.kind, report.backend, report.warning) == ("reader", "pcsc", None)
    mark = st.csms.mark()
    card = FakeCard(bytes.fromhex("04A1B2C3D4E5F6"))
    card.insert()
    try:
        await st.csms.wait_for("Authorize", {"idTag": "04A1B2C3D4E5F6"}, timeout=10, after=mark)
        await asyncio.sleep(1.5)  # keep holding the card over several reader polls
    finally:
        card.remove()
    assert len(st.csms.calls("Authorize", after=mark)) == 1
