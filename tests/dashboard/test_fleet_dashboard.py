"""The dashboard served by a fleet (docs/dashboard.md, "A fleet"): the station list, one
member's page under /api/stations/{id}, and the contactor feedback per connector, in Debian's
headless Chromium against real fleets (in-process and a ``twin fleet`` process) and a real
``twin run --sim``, with the loopback CSMSs.
"""

from __future__ import annotations

import asyncio
import re
import signal
import time
from pathlib import Path

import aiohttp
import pytest

from tests.conftest import PYTHON, free_port, twin_process_env
from tests.dashboard.test_dashboard import CARD, IMAGES, TOKEN, Station, browser_page
from twin.config import load_config
from twin.csms import Csms
from twin.fleet import Fleet
from twin.fleet.api import FleetApi
from twin.fleet.loopback import LoopbackCsms

from playwright.async_api import expect  # noqa: E402  (test_dashboard skipped the module without it)
from playwright.async_api import async_playwright  # noqa: E402

pytestmark = pytest.mark.slow

N = 5
IDS = [f"P{i:04d}" for i in range(1, N + 1)]
# A short backend timeout (the API's default is 30 s): a member's event stream must outlive it,
# as the single twin's does (a stream has its own keepalive and write timeouts, not a deadline).
BACKEND_TIMEOUT_S = 4.0


async def until(check, timeout: float, what: str) -> None:
    async with asyncio.timeout(timeout):
        while not check():
            await asyncio.sleep(0.05)


@pytest.fixture
async def fleet_env(tmp_path):
    """A fleet of 5 in this process (as ``twin fleet`` runs it), so a test can reach a member's
    simulated relay; the page talks to it only over HTTP."""
    async with LoopbackCsms(record=True) as csms:
        blueprint = load_config(None, {"csms_url": csms.url, "data_dir": tmp_path / "fleet"})
        fleet = Fleet(blueprint, N, data_dir=tmp_path / "fleet", metrics=None)
        api = FleetApi(fleet, "127.0.0.1", 0, backend_timeout=BACKEND_TIMEOUT_S)
        await api.start()
        await fleet.start()
        try:
            await until(lambda: fleet.registered() == N, 20, "every member registered")
            yield csms, fleet, api
        finally:
            await fleet.stop()
            await api.stop()


async def poll_starts(page) -> list[float]:
    """When this document asked for the list, in seconds of the browser's own clock (Resource
    Timing): the test's view of the requests lags the browser by a variable delay."""
    return await page.evaluate("""() => performance.getEntriesByType("resource")
        .filter((e) => new URL(e.name).pathname === "/api/stations").map((e) => e.startTime / 1000)""")


def rows(page):
    return page.locator("#fleet-rows tr")


def chip(page, cp_id: str, conn: int):
    return page.locator(f"#fleet-rows tr[data-station='{cp_id}'] .chip[data-conn='{conn}']")


async def test_fleet_list_opens_one_station_drives_it_and_comes_back(fleet_env):
    csms, fleet, api = fleet_env
    base = api.url
    requests: list[tuple[float, str]] = []
    async with async_playwright() as pw:
        browser, page = await browser_page(pw)
        errors: list[str] = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.on("request", lambda r: requests.append((time.monotonic(), r.url[len(base):])))
        answers: list[tuple[float, str, int]] = []
        page.on("response", lambda r: answers.append((time.monotonic(), r.url[len(base):], r.status)))
        await page.goto(base + "/")

        # The list: every member, registered and online, each connector Available.
        await expect(rows(page)).to_have_count(N)
        assert await rows(page).evaluate_all("rs => rs.map(r => r.dataset.station)") == IDS
        await expect(page.get_by_label("Registered stations")).to_have_text(f"registered {N} / {N}")
        for cp_id in IDS:
            row = page.locator(f"#fleet-rows tr[data-station='{cp_id}']")
            await expect(row.locator("td").nth(1)).to_have_text("Accepted")
            await expect(row.locator("td").nth(2)).to_have_text("online")
            await expect(row.locator(".chip")).to_have_text(["1 Available", "2 Available"])
        await expect(page.locator("#station-id")).to_have_text("fleet")
        await expect(page.locator("#main")).to_be_hidden()
        await expect(page.get_by_role("button", name="Back to fleet")).to_be_hidden()
        # The filter, by id.
        await page.get_by_label("Filter stations").fill("p0003")
        await expect(rows(page)).to_have_count(1)
        await expect(page.get_by_label("Registered stations")).to_have_text(f"registered {N} / {N}, 1 match")
        await page.get_by_label("Filter stations").fill("")
        await expect(rows(page)).to_have_count(N)

        # One station's page, at its own URL.
        opened = time.monotonic()
        await page.get_by_role("link", name="Open station P0003").click()
        await expect(page).to_have_url(re.compile(r"#/stations/P0003$"))
        await expect(page.locator("#station-id")).to_have_text("P0003")
        await expect(page.get_by_label("Event stream")).to_have_text("live")
        await expect(page.locator("#st-registration")).to_have_text("Accepted")
        await expect(page.locator("#fleet")).to_be_hidden()
        status = page.get_by_label("Status of connector 1")
        await expect(status).to_have_text("Available")
        await expect(page.get_by_label("Contactor feedback of connector 1")).to_have_text("open")
        await page.get_by_role("button", name="Plug connector 1", exact=True).click()
        await expect(status).to_have_text("Preparing")
        await page.get_by_label("Card idTag").fill(CARD)
        await page.get_by_role("button", name="Tap card").click()
        await expect(status).to_have_text("Charging")
        await expect(page.get_by_label("Contactor feedback of connector 1")).to_have_text("closed")
        start_row = page.locator("#frame-log li[data-action='StartTransaction'][data-kind='CALL']")
        await expect(start_row).to_have_count(1)
        await expect(start_row).to_contain_text("→ out")
        starts = [(cp, p["connectorId"], p["idTag"]) for cp, action, p in csms.records if action == "StartTransaction"]
        assert starts == [("P0003", 1, CARD)]  # that member's, and no other's
        # Every request of the station's page went to that member's routes; the list was not polled.
        station_reqs = [path for t, path in requests if t > opened and path.startswith("/api/")]
        assert station_reqs and all(p.startswith("/api/stations/P0003/") for p in station_reqs), station_reqs

        # A reload (a bookmark) opens the same station's page.
        first_document = await poll_starts(page)
        await page.reload()
        await expect(page.locator("#station-id")).to_have_text("P0003")
        await expect(status).to_have_text("Charging")
        await expect(page.locator("#frame-log li[data-action='StartTransaction'][data-kind='CALL']")).to_have_count(1)

        # Back to the list: P0003 is charging, the others are not.
        await page.get_by_role("button", name="Back to fleet").click()
        back = time.monotonic()
        await expect(page).to_have_url(re.compile(r"#/$"))
        await expect(chip(page, "P0003", 1)).to_have_text("1 Charging")
        for cp_id in IDS:
            if cp_id != "P0003":
                await expect(chip(page, cp_id, 1)).to_have_text("1 Available")
        await expect(chip(page, "P0003", 2)).to_have_text("2 Available")
        await page.get_by_label("Filter stations").fill("charging")
        await expect(rows(page)).to_have_count(1)
        await expect(rows(page)).to_have_attribute("data-station", "P0003")
        await page.get_by_label("Filter stations").fill("")
        await expect(rows(page)).to_have_count(N)
        quiet = time.monotonic()
        await page.wait_for_timeout(4500)  # two or three polls
        # Nothing changed meanwhile: the server answered the page's ETag with 304, no body.
        quiet_answers = [st for t, path, st in answers if t > quiet and path.startswith("/api/stations?")]
        assert quiet_answers and set(quiet_answers) == {304}, quiet_answers
        assert all("limit=50" in path for _, path, _ in answers if path.startswith("/api/stations?"))
        await expect(rows(page)).to_have_count(N)  # and the list still shows

        # A welded contactor on P0002 (its simulated aux contact stays closed, coil open): the
        # supervisor's fault shows on the list and in the connector panel.
        fleet.member("P0002").drivers.relays[2].weld()
        await expect(chip(page, "P0002", 2)).to_have_text("2 Faulted PowerSwitchFailure", timeout=10_000)
        box = await page.locator("#fleet").bounding_box()
        await page.screenshot(path=str(IMAGES / "dashboard-fleet.png"),
                              clip={"x": 0, "y": 0, "width": 1280, "height": box["y"] + box["height"] + 16})
        await page.get_by_label("Filter stations").fill("fault")
        await expect(rows(page)).to_have_count(1)
        await page.get_by_label("Filter stations").fill("")
        listed = time.monotonic()
        await page.locator("#fleet-rows tr[data-station='P0002'] td").nth(2).click()  # a click on the row
        await expect(page).to_have_url(re.compile(r"#/stations/P0002$"))
        feedback = page.get_by_label("Contactor feedback of connector 2")
        await expect(feedback).to_have_text("closed (coil open) — welded: aux closed while coil off")
        await expect(feedback).to_have_class("bad")
        await expect(page.get_by_label("Status of connector 2")).to_have_text("Faulted")
        await page.screenshot(path=str(IMAGES / "dashboard-fleet-station.png"), full_page=True)
        await expect(page.get_by_label("Contactor feedback of connector 1")).to_have_text("open")
        await expect(page.get_by_label("Status of connector 1")).to_have_text("Available")  # not P0003's
        assert await page.locator("#frame-log li[data-action='StartTransaction']").count() == 0
        # Past the backend timeout the member's stream is still the same one, still live.
        await expect(page.get_by_label("Event stream")).to_have_text("live")
        await page.evaluate("""() => { const live = document.getElementById("live"); window.liveSeen = [];
            new MutationObserver(() => liveSeen.push(live.textContent)).observe(live, { childList: true }); }""")
        await page.wait_for_timeout(BACKEND_TIMEOUT_S * 1000 + 1500)
        async with aiohttp.ClientSession() as http:
            async with http.post(base + "/api/stations/P0002/connectors/1/plug", json={}) as resp:
                assert resp.status == 200
        await expect(page.get_by_label("Status of connector 1")).to_have_text("Preparing", timeout=2000)
        assert "reconnecting…" not in await page.evaluate("liveSeen")
        assert len([p for t, p in requests if t > listed and p.startswith("/api/stations/P0002/events")]) == 1
        left = time.monotonic()
        second_document = await poll_starts(page)
        assert errors == [], errors
        await browser.close()

    # At most one read of the list every 2 s, none while a station's page showed.
    for starts in (first_document, second_document):
        gaps = [b - a for a, b in zip(starts, starts[1:])]
        assert all(g >= 1.99 for g in gaps), gaps
    polls = [t for t, path in requests if path.split("?")[0] == "/api/stations"]
    assert not [t for t in polls if opened + 0.5 < t < back - 2.5], "polled while P0003's page showed"
    assert not [t for t in polls if listed + 0.5 < t < left], "polled while P0002's page showed"
    assert len([t for t in polls if back < t < listed]) >= 2  # but polled while the list showed


class FleetProcess:
    """``twin fleet`` as an operator starts it, with the blueprint's [control] token."""

    def __init__(self, tmp: Path, csms_url: str, blueprint: str) -> None:
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.config = tmp / "blueprint.toml"
        self.config.write_text(blueprint)
        self.args = [PYTHON, "-m", "twin", "fleet", "--count", str(N), "--csms", csms_url,
                     "--control", f"127.0.0.1:{self.port}", "--config", str(self.config),
                     "--data-dir", str(tmp / "fleet")]
        self.log = tmp / "fleet.log"
        self.proc: asyncio.subprocess.Process | None = None

    async def start(self, http: aiohttp.ClientSession, token: str) -> None:
        with open(self.log, "wb") as out:
            self.proc = await asyncio.create_subprocess_exec(*self.args, stdout=out, stderr=asyncio.subprocess.STDOUT,
                                                             env=twin_process_env())
        end = time.monotonic() + 30
        while True:
            if self.proc.returncode is not None:
                raise AssertionError(f"twin fleet exited with {self.proc.returncode}: {self.log.read_text()[-3000:]}")
            try:
                async with http.get(self.base + "/api/stations", headers={"Authorization": f"Bearer {token}"}) as r:
                    if r.status == 200 and (await r.json())["registered"] == N:
                        return
            except aiohttp.ClientError:
                pass
            if time.monotonic() > end:
                raise AssertionError(f"the fleet did not register: {self.log.read_text()[-3000:]}")
            await asyncio.sleep(0.1)

    async def stop(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(self.proc.wait(), 20)
            except asyncio.TimeoutError:
                self.proc.kill()
                await self.proc.wait()


async def test_twin_fleet_with_a_bearer_token_asks_once(tmp_path):
    token_file = tmp_path / "control.token"
    token_file.write_text(TOKEN + "\n")
    token_file.chmod(0o600)
    # No aux contact wired on these members' relays: the page says so rather than guessing.
    blueprint = f'[control]\ntoken_file = "{token_file}"\n\n[drivers.relay]\nsim_feedback = false\n'
    async with LoopbackCsms(record=True) as csms, aiohttp.ClientSession() as http:
        fleet = FleetProcess(tmp_path, csms.url, blueprint)
        try:
            await fleet.start(http, TOKEN)
            async with http.get(fleet.base + "/api/stations") as r:
                assert r.status == 401  # the list needs the token too
            async with async_playwright() as pw:
                browser, page = await browser_page(pw)
                errors: list[str] = []
                page.on("pageerror", lambda e: errors.append(str(e)))
                posts = []
                page.on("request", lambda r: posts.append(r) if r.method == "POST" else None)
                await page.goto(fleet.base + "/")
                form = page.get_by_role("form", name="Bearer token")
                await expect(form).to_be_visible()
                await page.get_by_label("Bearer token", exact=True).last.fill(TOKEN)
                await page.get_by_role("button", name="Use token").click()
                await expect(form).to_be_hidden()
                await expect(rows(page)).to_have_count(N)
                await expect(page.get_by_label("Registered stations")).to_have_text(f"registered {N} / {N}")

                await page.get_by_role("link", name="Open station P0004").click()
                await expect(page.get_by_label("Event stream")).to_have_text("live")  # ?access_token= on its stream
                await expect(page.get_by_label("Contactor feedback of connector 1")).to_have_text("not wired")
                await page.get_by_role("button", name="Plug connector 1", exact=True).click()
                await expect(page.get_by_label("Status of connector 1")).to_have_text("Preparing")
                origins = [(await r.all_headers()).get("origin") for r in posts]
                assert origins == [fleet.base], origins
                status_notes = [(cp, p["connectorId"], p["status"]) for cp, a, p in csms.records
                                if a == "StatusNotification" and p.get("status") == "Preparing"]
                assert status_notes == [("P0004", 1, "Preparing")]

                # Asked once: a reload of the station's page, then the list, need no second entry.
                await page.reload()
                await expect(page.get_by_label("Event stream")).to_have_text("live")
                await expect(page.get_by_label("Status of connector 1")).to_have_text("Preparing")
                await page.get_by_role("button", name="Back to fleet").click()
                await expect(chip(page, "P0004", 1)).to_have_text("1 Preparing")
                await expect(form).to_be_hidden()
                assert errors == [], errors
                await browser.close()
        finally:
            await fleet.stop()
    assert fleet.proc.returncode == 0, fleet.log.read_text()[-3000:]


async def test_single_station_page_shows_the_contactor_feedback(tmp_path):
    """On ``twin run --sim`` (no fleet) the page is the single station's, and each connector
    shows its relay's aux contact: open, then closed with the coil once charging starts."""
    csms_port = free_port()
    csms = Csms("127.0.0.1", csms_port, heartbeat_interval=300)
    await csms.start()
    station = Station(tmp_path, csms_port)
    try:
        await station.start()
        async with async_playwright() as pw:
            browser, page = await browser_page(pw)
            urls: list[str] = []
            page.on("request", lambda r: urls.append(r.url[len(station.base):]))
            await page.goto(station.base + "/")
            await expect(page.get_by_label("Event stream")).to_have_text("live")
            await expect(page.locator("#station-id")).to_have_text("DASH-1")
            for cid in (1, 2):
                await expect(page.get_by_label(f"Contactor feedback of connector {cid}")).to_have_text("open")
            await page.get_by_role("button", name="Plug connector 1", exact=True).click()
            await page.get_by_role("button", name="Tap card").click()
            await expect(page.get_by_label("Status of connector 1")).to_have_text("Charging")
            await expect(page.get_by_label("Contactor feedback of connector 1")).to_have_text("closed")
            await expect(page.get_by_label("Contactor feedback of connector 2")).to_have_text("open")
            # A single twin: no list, no way back to one, and its own routes.
            await expect(page.locator("#fleet")).to_be_hidden()
            await expect(page.get_by_role("button", name="Back to fleet")).to_be_hidden()
            assert "/api/state" in urls and not any(u.startswith("/api/stations/") for u in urls), urls
            await browser.close()
        from twin.sim_client import request

        state = await asyncio.to_thread(request, station.base, "GET", "/api/state")
        assert [c["contactor"] for c in state["connectors"]] == [
            {"commanded": True, "feedback": "closed", "fault": None},
            {"commanded": False, "feedback": "open", "fault": None}]
    finally:
        await station.stop()
        await csms.stop()


async def test_station_page_follows_its_member_through_a_fleet_reboot(fleet_env):
    """A reboot replaces the member's Runtime and its event hub while the fleet's API stays up:
    the page's stream must end with the old Runtime and come back, by itself, on the new one."""
    csms, fleet, api = fleet_env
    base = api.url
    old = fleet.member("P0003")
    async with async_playwright() as pw, aiohttp.ClientSession() as http:
        browser, page = await browser_page(pw)
        errors: list[str] = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        await page.goto(base + "/#/stations/P0003")
        live = page.get_by_label("Event stream")
        await expect(live).to_have_text("live")
        status = page.get_by_label("Status of connector 1")
        await expect(status).to_have_text("Available")
        assert old.events.subscribers == 1
        await page.evaluate("""() => { const live = document.getElementById("live"); window.liveSeen = [];
            new MutationObserver(() => liveSeen.push(live.textContent)).observe(live, { childList: true }); }""")

        async with http.post(base + "/api/fleet/reboot", json={"rolling": True, "batch": 5}) as resp:
            assert resp.status == 200, await resp.text()
        await until(lambda: fleet.member("P0003") not in (None, old), 10, "P0003 rebooted")
        new = fleet.member("P0003")
        # Off the old hub (its stream ended), then live again: the page reconnected by itself.
        await until(lambda: old.events.subscribers == 0, 5, "the old Runtime's stream ended")
        await page.wait_for_function("liveSeen.includes('reconnecting…')", timeout=5000)
        await expect(live).to_have_text("live", timeout=10_000)
        await until(lambda: new.events.subscribers == 1, 5, "the page subscribed to the new Runtime")

        # The new stream carries the new Runtime's events: a plug over HTTP, not from the page.
        async with http.post(base + "/api/stations/P0003/connectors/1/plug", json={}) as resp:
            assert resp.status == 200, await resp.text()
        await expect(status).to_have_text("Preparing", timeout=3000)
        assert (await page.evaluate("liveSeen"))[-1] == "live"
        assert errors == [], errors
        await browser.close()
