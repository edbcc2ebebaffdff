"""OCTT 1.6 Local Auth List Management cases (TC_008, TC_042_x, TC_043_x) against the loopback CSMS.

Rules: spec §3.5.3, §5.10, §5.15, §6.41, §7.1; reference
../shared/reference/ocpp16-conformance.md §2, §3.3 item 7 and §4.8 "Local list".
The station runs with its real store and link; only the hardware is simulated.
"""

from __future__ import annotations

import asyncio

import pytest

from tests.octt.test_core import start_charging


def entry(tag: str, status: str = "Accepted", **info) -> dict:
    return {"idTag": tag, "idTagInfo": {"status": status, **info}}


async def send_list(csms, version: int, update: str = "Full", items: list | None = None) -> str:
    payload: dict = {"listVersion": version, "updateType": update}
    if items is not None:
        payload["localAuthorizationList"] = items
    return (await csms.call("SendLocalList", payload))["status"]


async def list_version(csms) -> int:
    return (await csms.call("GetLocalListVersion", {}))["listVersion"]


# --------------------------------------------------------------------------- GetLocalListVersion
async def test_tc_042_1_get_local_list_version_not_supported(station, csms):
    # The iEVQC33 supports the profile; with the list disabled it answers -1 (§6.41: -1 = not supported).
    await station.configure(LocalAuthListEnabled="false")
    assert await list_version(csms) == -1


async def test_tc_042_2_get_local_list_version_empty_list(station, csms):
    assert await send_list(csms, 1, "Full") == "Accepted"  # list omitted
    assert await list_version(csms) == 0  # an empty list reads back as 0, though v1 was sent


async def test_local_list_enabled_again_reports_the_version_kept(station, csms):
    assert await send_list(csms, 3, "Full", [entry("LL1")]) == "Accepted"
    await station.configure(LocalAuthListEnabled="false")
    assert await list_version(csms) == -1
    await station.configure(LocalAuthListEnabled="true")
    assert await list_version(csms) == 3


# --------------------------------------------------------------------------- SendLocalList
async def test_tc_043_send_local_list_full_then_differential(station, csms):
    await station.configure(LocalPreAuthorize="true", AuthorizationCacheEnabled="false")
    assert await send_list(csms, 1, "Full", [entry("LL1")]) == "Accepted"
    assert await send_list(csms, 2, "Differential", [entry("LL2")]) == "Accepted"
    assert await list_version(csms) == 2
    # Both listed ids now authorize locally: no Authorize.req (LocalPreAuthorize, §3.5.3).
    mark = csms.mark()
    await station.plug(1)
    await station.tap("LL2")
    await csms.wait_for("StartTransaction", {"connectorId": 1, "idTag": "LL2"})
    await station.plug(2)
    await station.tap("LL1")
    await csms.wait_for("StartTransaction", {"connectorId": 2, "idTag": "LL1"})
    assert not csms.calls("Authorize", after=mark)


async def test_differential_without_id_tag_info_deletes_and_full_without_list_empties(station, csms):
    await station.configure(LocalPreAuthorize="true")
    assert await send_list(csms, 1, "Full", [entry("LL1"), entry("LL2")]) == "Accepted"
    assert await send_list(csms, 2, "Differential", [{"idTag": "LL1"}]) == "Accepted"  # §5.15: delete
    assert set(station.st.local_list.entries) == {"LL2"}
    assert await send_list(csms, 3, "Differential") == "Accepted"  # no list: no change
    assert set(station.st.local_list.entries) == {"LL2"} and await list_version(csms) == 3
    assert await send_list(csms, 4, "Full") == "Accepted"  # no list: empty it
    assert station.st.local_list.entries == {} and await list_version(csms) == 0


async def test_tc_043_1_send_local_list_not_supported(station, csms):
    # The certified station has the profile, and SupportedFeatureProfiles does not switch it
    # off. What it does with the list disabled is answer NotSupported (§5.15) and keep the list.
    assert await send_list(csms, 1, "Full", [entry("LL1")]) == "Accepted"
    await station.configure(LocalAuthListEnabled="false")
    assert await send_list(csms, 2, "Full", [entry("LL2")]) == "NotSupported"
    await station.configure(LocalAuthListEnabled="true")
    assert await list_version(csms) == 1 and set(station.st.local_list.entries) == {"LL1"}


async def test_tc_043_2_send_local_list_version_mismatch(station, csms):
    assert await send_list(csms, 2, "Full", [entry("LL1")]) == "Accepted"
    assert await list_version(csms) == 2
    assert await send_list(csms, 5, "Differential", [entry("LL2")]) == "Accepted"
    assert await list_version(csms) == 5
    assert await send_list(csms, 4, "Differential", [entry("LL3")]) == "VersionMismatch"
    assert await list_version(csms) == 5
    assert await send_list(csms, 5, "Differential", [entry("LL3")]) == "VersionMismatch"  # equal is not higher
    assert set(station.st.local_list.entries) == {"LL1", "LL2"}


async def test_tc_043_3_send_local_list_failed_send_max_length(make_station, csms):
    # The "failing state" the twin can be put in: an update longer than SendLocalListMaxLength (R).
    station = await make_station(keys={"SendLocalListMaxLength": "3"})
    assert await send_list(csms, 1, "Full", [entry("LL1")]) == "Accepted"
    assert await send_list(csms, 2, "Full", [entry(f"X{i}") for i in range(4)]) == "Failed"
    assert await list_version(csms) == 1 and set(station.st.local_list.entries) == {"LL1"}  # unchanged
    assert await send_list(csms, 2, "Differential", [entry(f"X{i}") for i in range(4)]) == "Failed"
    assert await send_list(csms, 2, "Full", [entry(f"X{i}") for i in range(3)]) == "Accepted"


async def test_local_auth_list_max_length_overflow_fails_atomically(make_station, csms):
    station = await make_station(keys={"LocalAuthListMaxLength": "3"})
    assert await send_list(csms, 1, "Full", [entry("LL1"), entry("LL2")]) == "Accepted"
    # 2 listed + 2 new = 4 > 3: nothing of it is applied, not even the first new one.
    assert await send_list(csms, 2, "Differential", [entry("LL3"), entry("LL4")]) == "Failed"
    assert await list_version(csms) == 1 and set(station.st.local_list.entries) == {"LL1", "LL2"}
    # A differential that deletes one and adds one stays within the length.
    assert await send_list(csms, 2, "Differential", [{"idTag": "LL1"}, entry("LL3")]) == "Accepted"
    assert set(station.st.local_list.entries) == {"LL2", "LL3"}


# --------------------------------------------------------------------------- authorization from the list
@pytest.mark.parametrize("start", ["remote", "local"])  # the tool's TC_008_1 / TC_008_2
async def test_tc_008_start_with_id_in_local_list(station, csms, start):
    await station.configure(LocalPreAuthorize="true", AuthorizationCacheEnabled="false",
                            LocalAuthListEnabled="true", AuthorizeRemoteTxRequests="true")
    await list_version(csms)
    assert await send_list(csms, 1, "Full", [entry("LL1")]) == "Accepted"
    mark = csms.mark()
    await station.plug(1)
    await csms.wait_for("StatusNotification", {"connectorId": 1, "status": "Preparing"})
    if start == "remote":
        r = await csms.call("RemoteStartTransaction", {"connectorId": 1, "idTag": "LL1"})
        assert r["status"] == "Accepted"
    else:
        await station.tap("LL1")
    await csms.wait_for("StartTransaction", {"connectorId": 1, "idTag": "LL1"})
    await csms.wait_for("StatusNotification", {"connectorId": 1, "status": "Charging"})
    assert not csms.calls("Authorize", after=mark)


async def test_listed_ids_are_never_cached(station, csms):
    await station.configure(LocalPreAuthorize="true", AuthorizationCacheEnabled="true")
    assert await send_list(csms, 1, "Full", [entry("LL1")]) == "Accepted"
    await start_charging(station, csms, tag="LL1")  # StartTransaction.conf carries idTagInfo
    await station.tap("LL1")
    await csms.wait_for("StopTransaction", {"idTag": "LL1"})  # StopTransaction.conf too
    await station.until(lambda: not station.st.queue.entries, what="the queue to drain")
    assert "LL1" not in station.st.cache.entries  # §3.5.3
    await station.unplug(1)
    # An id already cached is dropped from the cache when the list takes it over.
    await start_charging(station, csms, cid=2, tag="CACHED")
    await station.until(lambda: "CACHED" in station.st.cache.entries, what="CACHED in the cache")
    assert await send_list(csms, 2, "Differential", [entry("CACHED")]) == "Accepted"
    assert "CACHED" not in station.st.cache.entries


async def test_local_list_takes_priority_over_the_cache(station, csms):
    await station.configure(LocalAuthorizeOffline="true", AllowOfflineTxForUnknownId="false")
    # The list says Blocked; the CSMS accepts TAGX, so with the list switched off the
    # cache learns Accepted (a listed id is cached only while the list is disabled)...
    assert await send_list(csms, 1, "Full", [entry("TAGX", "Blocked")]) == "Accepted"
    await station.configure(LocalAuthListEnabled="false")
    mark = csms.mark()
    await station.tap("TAGX")
    await csms.wait_for("Authorize", {"idTag": "TAGX"}, after=mark)
    await station.until(lambda: "TAGX" in station.st.cache.entries, what="TAGX cached")
    assert station.st.cache.entries["TAGX"]["info"]["status"] == "Accepted"
    await station.tap("TAGX")  # cancel that pending authorization
    await station.until(lambda: all(c.pending is None for c in station.st.connectors.values()))
    # ... then, with the list on again (Blocked) and the station offline, the list wins.
    await station.configure(LocalAuthListEnabled="true")
    await station.offline()
    await station.plug(1)
    await station.tap("TAGX")
    await asyncio.sleep(0.3)
    assert station.st.connectors[1].tx is None and station.status(1) == "Preparing"
    # Control: a tag only in the cache (Accepted) does start offline.
    await station.online()
    await station.configure(LocalAuthListEnabled="false")
    await station.offline()
    await station.tap("TAGX")
    await station.until(lambda: station.st.connectors[1].tx is not None, what="the cached tag to start")


async def test_local_list_persists_across_restart(station, csms, make_station, tmp_path):
    await station.configure(LocalPreAuthorize="true")
    assert await send_list(csms, 7, "Full", [entry("LL1"), entry("LL2", "Blocked")]) == "Accepted"
    await station.rt.shutdown(graceful=False)
    station = await make_station(data_dir=tmp_path / "data")
    assert await list_version(csms) == 7
    assert station.st.local_list.entries["LL2"]["status"] == "Blocked"
    mark = csms.mark()
    await station.plug(1)
    await station.tap("LL1")
    await csms.wait_for("StartTransaction", {"idTag": "LL1"})
    assert not csms.calls("Authorize", after=mark)
