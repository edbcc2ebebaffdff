"""An example CI test for a CSMS, with the ocpp-twin pytest plugin.

The ``my_csms`` fixture stands in for *your* CSMS: here it is ocpp-twin's small built-in
central system (twin.csms.server.Csms) on a loopback port, in a thread of its own. In
your repository, start your CSMS the way your tests already do and give its websocket
URL to ``ocpp_twin``. The station connects to ``<url>/<id>``.

Run it (with ocpp-twin installed the plugin loads by itself)::

    python -m pytest examples/csms_ci/test_my_csms.py

``ocpp_twin(url, id=..., keys=...)`` starts a real simulated charging station process;
the client it returns drives it (plug, unplug, tap, fault, network) and watches it
(state, wait_for_status, wait_for_frame on the wire trace). Every station is stopped at
the end of the test, also when the test fails.
"""

from __future__ import annotations

import asyncio
import threading

import pytest


@pytest.fixture
def my_csms():
    """Your CSMS, listening on ws://127.0.0.1:<port>; yields (url, csms object)."""
    from twin.csms import Csms

    loop = asyncio.new_event_loop()
    csms = Csms(heartbeat_interval=300)
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    asyncio.run_coroutine_threadsafe(csms.start(), loop).result(10)
    try:
        yield csms.url + "/ocpp", csms
    finally:
        asyncio.run_coroutine_threadsafe(csms.stop(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)


def test_a_card_session_gets_a_transaction_id_and_is_stopped(my_csms, ocpp_twin):
    url, csms = my_csms
    cp = ocpp_twin(url, id="CI-CP-1", keys={"MeterValueSampleInterval": 1})

    # The station booted, and the CSMS accepted it.
    boot = cp.wait_for_frame("BootNotification", "out", timeout=20)
    assert cp.answer(boot)["frame"][2]["status"] == "Accepted"
    cp.wait_for_status(1, "Available")

    cp.plug(1)
    cp.tap("04A2B3C4")
    start = cp.wait_for_frame("StartTransaction", "out", {"connectorId": 1, "idTag": "04A2B3C4"})
    conf = cp.answer(start)["frame"]
    assert conf[0] == 3, f"the CSMS refused the StartTransaction: {conf}"
    tx = conf[2]["transactionId"]
    cp.wait_for_status(1, "Charging")
    cp.wait_for_frame("MeterValues", "out", {"transactionId": tx})

    cp.tap("04A2B3C4")
    stop = cp.wait_for_frame("StopTransaction", "out", {"transactionId": tx, "reason": "Local"})
    assert cp.answer(stop)["frame"][0] == 3
    cp.unplug(1)
    cp.wait_for_status(1, "Available")


def test_a_lost_stop_transaction_is_delivered_once_later(my_csms, ocpp_twin):
    """A fault rule drops the first StopTransaction before it reaches the wire: the
    station sends it again, and the CSMS must bill it once."""
    url, csms = my_csms
    cp = ocpp_twin(url, id="CI-CP-2", keys={"MessageTimeout": 1, "TransactionMessageRetryInterval": 1,
                                            "MeterValueSampleInterval": 0})
    cp.wait_for_status(1, "Available", timeout=20)
    rule = cp.fault(on="StopTransaction", direction="out", do="drop", count=1)
    assert rule["id"]

    cp.plug(1)
    cp.tap("04A2B3C4")
    cp.wait_for_status(1, "Charging")
    cp.tap("04A2B3C4")
    stop = cp.wait_for_frame("StopTransaction", "out", timeout=20)  # the retransmission: the first was dropped
    assert cp.answer(stop)["frame"][0] == 3
    assert len(csms.calls("StopTransaction")) == 1  # what your CSMS received: exactly one
