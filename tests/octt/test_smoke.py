async def test_smoke(station, csms):
    await station.plug(1)
    await station.tap("TAG1")
    await csms.wait_for("StartTransaction", {"connectorId": 1, "idTag": "TAG1"})
    await csms.wait_for("StatusNotification", {"connectorId": 1, "status": "Charging"})
