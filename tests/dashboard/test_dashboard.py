"""The bench dashboard (twin/dashboard/, docs/dashboard.md) in a real headless Chromium,
against a real ``twin run --sim`` process and the loopback CSMS: the page's buttons go
through the same control API routes a script uses, with the API's hardening on (Host,
same-origin Origin, bearer token).

Chromium is Debian's package (scripts/test installs it), driven by Playwright's Python
package with its path given: no browser is downloaded.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import os
import re
import signal
import time
from pathlib import Path

import pytest

from tests.conftest import PYTHON, ROOT, free_port, twin_process_env
from twin.csms import Csms
from twin.sim_client import SimClientError, request

pytestmark = pytest.mark.slow

CHROMIUM = Path(os.environ.get("TWIN_TEST_CHROMIUM", "/usr/bin/chromium"))
playwright_api = pytest.importorskip("playwright.async_api", reason="pip install playwright (the test extra)")
if not CHROMIUM.exists():
    pytest.skip(f"{CHROMIUM} is missing: apt-get install chromium (scripts/test does)", allow_module_level=True)

from playwright.async_api import async_playwright, expect  # noqa: E402

IMAGES = ROOT / "docs" / "images"
TOKEN = "bench-token-0123456789abcdef"
CARD = "DASH-CARD-1"


class Station:
    """A real ``twin run --sim`` process with its control API on a free loopback port."""

    def __init__(self, tmp: Path, csms_port: int, *, token: str | None = None) -> None:
        self.tmp = tmp
        self.api_port = free_port()
        self.base = f"http://127.0.0.1:{self.api_port}"
        self.token = token
        control = f'host = "127.0.0.1"\nport = {self.api_port}\n'
        if token is not None:
            token_file = tmp / "control.token"
            token_file.write_text(token + "\n")
            token_file.chmod(0o600)
            control += f'token_file = "{token_file}"\n'
        self.config = tmp / "station.toml"
        # MeterValues every second: a charging station that loses its link queues them.
        self.config.write_text(f"""
[station]
charge_point_id = "DASH-1"
connectors = 2
data_dir = "{tmp / 'data'}"
log_level = "INFO"

[csms]
url = "ws://127.0.0.1:{csms_port}"

[control]
{control}
[keys]
MeterValueSampleInterval = 1
""")
        self.proc: asyncio.subprocess.Process | None = None
        self.log = tmp / "twin.log"

    async def start(self) -> None:
        with open(self.log, "wb") as out:
            self.proc = await asyncio.create_subprocess_exec(
                PYTHON, "-m", "twin", "run", "--config", str(self.config), "--sim",
                stdout=out, stderr=asyncio.subprocess.STDOUT, env=twin_process_env(), cwd=str(self.tmp))
        end = time.monotonic() + 20
        while True:
            if self.proc.returncode is not None:
                raise AssertionError(f"station exited with {self.proc.returncode}: {self.log_tail()}")
            try:
                await asyncio.to_thread(request, self.base, "GET", "/api/state", None, 2, token=self.token)
                return
            except SimClientError:
                if time.monotonic() > end:
                    raise AssertionError(f"control API not up: {self.log_tail()}") from None
                await asyncio.sleep(0.05)

    def log_tail(self) -> str:
        return self.log.read_text(errors="replace")[-3000:]

    async def stop(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(self.proc.wait(), 15)
            except asyncio.TimeoutError:
                self.proc.kill()
                await self.proc.wait()


def raw(port: int, method: str, path: str, headers: dict[str, str], body: dict | None = None) -> tuple[int, str]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        data = json.dumps(body).encode() if body is not None else None
        hdrs = {"Host": f"127.0.0.1:{port}", **headers}
        if data is not None:
            hdrs["Content-Type"] = "application/json"
        conn.request(method, path, body=data, headers=hdrs)
        resp = conn.getresponse()
        # The event stream does not end: its first line is enough.
        text = resp.read1(4096).decode(errors="replace") if resp.status == 200 and path.startswith("/api/events") \
            else resp.read().decode(errors="replace")
        return resp.status, text
    finally:
        conn.close()


async def browser_page(pw):
    # --no-sandbox: CI runs the suite as root, where Chromium's sandbox refuses to start.
    browser = await pw.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=["--no-sandbox"])
    page = await browser.new_page(viewport={"width": 1280, "height": 1000})
    return browser, page


def number(text: str) -> float:
    match = re.search(r"-?\d+(\.\d+)?", text)
    assert match, f"no number in {text!r}"
    return float(match.group())


async def test_dashboard_drives_a_charging_session_and_shows_the_queue_grow_offline(tmp_path):
    csms_port = free_port()
    csms = Csms("127.0.0.1", csms_port, heartbeat_interval=300)
    await csms.start()
    station = Station(tmp_path, csms_port)
    requests: list[tuple[float, str]] = []
    try:
        await station.start()
        async with async_playwright() as pw:
            browser, page = await browser_page(pw)
            page.on("request", lambda r: requests.append((time.monotonic(), r.url)))
            errors: list[str] = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            started = time.monotonic()
            await page.goto(station.base + "/")
            await expect(page.get_by_label("Event stream")).to_have_text("live")
            await expect(page.locator("#station-id")).to_have_text("DASH-1")
            await expect(page.locator("#st-registration")).to_have_text("Accepted")
            await expect(page.locator("#st-link")).to_have_text("online")
            status = page.get_by_label("Status of connector 1")
            await expect(status).to_have_text("Available")

            await page.get_by_role("button", name="Plug connector 1", exact=True).click()
            await expect(status).to_have_text("Preparing")
            await page.get_by_label("Card idTag").fill(CARD)
            await page.get_by_role("button", name="Tap card").click()
            await expect(status).to_have_text("Charging")
            await expect(page.get_by_label("Relay of connector 1")).to_have_text("closed")
            await expect(page.get_by_label("Transaction of connector 1")).to_contain_text(CARD)

            # The StartTransaction the station sent, in the frame log; a click shows its payload.
            start_row = page.locator("#frame-log li[data-action='StartTransaction'][data-kind='CALL']").first
            await expect(start_row).to_be_visible()
            await expect(start_row).to_contain_text("→ out")
            await start_row.locator("summary").first.click()
            await expect(start_row.locator("pre").first).to_be_visible()
            await expect(start_row.locator("pre").first).to_contain_text(CARD)
            # What the CSMS received, the same transaction.
            assert [m.payload["idTag"] for m in csms.calls("StartTransaction")] == [CARD]

            # The filter by action leaves only that action's rows.
            await page.get_by_label("Filter frames by action").fill("StartTransaction")
            visible = page.locator("#frame-log li:visible")
            assert await visible.count() >= 1
            assert set(await visible.evaluate_all("rows => rows.map(r => r.dataset.action)")) == {"StartTransaction"}
            await page.get_by_label("Filter frames by action").fill("")
            await page.get_by_label("Filter frames by connector").select_option("2")
            assert await page.locator("#frame-log li[data-conn='1']:visible").count() == 0
            await page.get_by_label("Filter frames by connector").select_option("")

            # A rising energy figure.
            energy = page.get_by_label("Energy of connector 1")
            first = number(await energy.inner_text())
            await page.wait_for_function(
                "([id, v]) => parseFloat(document.getElementById(id).textContent) > v", arg=["c1-energy", first])
            assert number(await energy.inner_text()) > first
            await page.wait_for_timeout(2500)  # a few chart points for the screenshot
            await page.screenshot(path=str(IMAGES / "dashboard.png"), full_page=True)

            # A protocol fault rule from the page: listed, then removed.
            await page.get_by_label("Fault rule action").fill("Heartbeat")
            await page.get_by_label("Fault rule direction").select_option("out")
            await page.get_by_label("Fault rule effect").select_option("drop")
            await page.get_by_role("button", name="Add fault rule").click()
            rule = page.locator("#rule-list li")
            await expect(page.locator("#error")).to_have_text("")
            await expect(rule).to_have_count(1)
            await expect(rule).to_contain_text("Heartbeat")
            rule_id = await rule.locator("code").inner_text()
            status, listed = await asyncio.to_thread(raw, station.api_port, "GET", "/api/faults", {})
            assert status == 200 and [r["id"] for r in json.loads(listed)] == [rule_id]
            await page.get_by_role("button", name=f"Remove fault rule {rule_id}").click()
            await expect(rule).to_have_count(0)

            # Cut the network from the page: MeterValues queue up on disk.
            queue = page.get_by_label("Queue depth")
            before = int(number(await queue.inner_text()))
            await page.get_by_role("button", name="Cut network").click()
            await expect(page.locator("#st-link")).not_to_have_text("online")
            await expect(page.get_by_label("Network state")).to_contain_text("offline")
            await page.wait_for_function(
                "v => parseInt(document.getElementById('st-queue').textContent) > v + 1", arg=before)
            await page.wait_for_timeout(1200)
            await page.screenshot(path=str(IMAGES / "dashboard-offline.png"), full_page=True)
            state = await asyncio.to_thread(request, station.base, "GET", "/api/state")
            assert state["queue"]["length"] > before + 1 and state["link"] != "online"
            assert errors == [], errors
            elapsed = time.monotonic() - started
            await browser.close()
        # No polling: /api/state is read on load and after each (re)connect, never once a second.
        state_reads = [t for t, url in requests if url.endswith("/api/state")]
        assert len(state_reads) <= 3, (len(state_reads), elapsed)
        assert sum(1 for _, url in requests if "/api/events" in url) == 1  # one stream, kept open
    finally:
        await station.stop()
        await csms.stop()


async def test_dashboard_with_a_bearer_token_asks_once_and_keeps_foreign_pages_out(tmp_path):
    csms_port = free_port()
    csms = Csms("127.0.0.1", csms_port, heartbeat_interval=300)
    await csms.start()
    station = Station(tmp_path, csms_port, token=TOKEN)
    port = station.api_port
    try:
        await station.start()
        # The page's own files load without the token (a browser cannot send one on a
        # navigation); they hold no data. Every API route still needs it, however spelled.
        status, html = await asyncio.to_thread(raw, port, "GET", "/", {})
        assert status == 200 and "/dashboard/app.js" in html
        assert (await asyncio.to_thread(raw, port, "GET", "/dashboard/app.js", {}))[0] == 200
        assert (await asyncio.to_thread(raw, port, "GET", "/api/state", {}))[0] == 401
        for sneaky in ("/dashboard/../api/state", "/dashboard/%2e%2e/api/state", "/dashboard/..%2fapi%2fstate",
                       "/dashboard/nope.js", "/dashboard/"):
            status, text = await asyncio.to_thread(raw, port, "GET", sneaky, {})
            assert status in (401, 404) and "connectors" not in text, (sneaky, status, text)
        ok = {"Authorization": f"Bearer {TOKEN}"}
        # ?access_token= is accepted on the event stream only, and only the right one.
        status, text = await asyncio.to_thread(raw, port, "GET", f"/api/events?access_token={TOKEN}", {})
        assert status == 200 and text.startswith(": ocpp-twin events")
        assert (await asyncio.to_thread(raw, port, "GET", "/api/events?access_token=wrong-token", {}))[0] == 401
        assert (await asyncio.to_thread(raw, port, "GET", f"/api/state?access_token={TOKEN}", {}))[0] == 401
        assert (await asyncio.to_thread(raw, port, "POST", f"/api/connectors/1/plug?access_token={TOKEN}", {},
                                        {}))[0] == 401
        # A foreign page is refused even with the token; the API's own origin is let through.
        foreign = {**ok, "Origin": "http://evil.example"}
        assert (await asyncio.to_thread(raw, port, "POST", "/api/connectors/2/plug", foreign, {}))[0] == 403
        other_port = {**ok, "Origin": f"http://127.0.0.1:{free_port()}"}
        assert (await asyncio.to_thread(raw, port, "POST", "/api/connectors/2/plug", other_port, {}))[0] == 403
        assert (await asyncio.to_thread(raw, port, "GET", f"/api/events?access_token={TOKEN}",
                                        {"Origin": "http://evil.example"}))[0] == 403
        rebinding = {**ok, "Host": f"evil.example:{port}", "Origin": f"http://evil.example:{port}"}
        assert (await asyncio.to_thread(raw, port, "POST", "/api/connectors/2/plug", rebinding, {}))[0] == 421
        state = await asyncio.to_thread(request, station.base, "GET", "/api/state", None, 5, token=TOKEN)
        assert state["connectors"][1]["plugged"] is False  # none of the refused requests reached the station

        async with async_playwright() as pw:
            browser, page = await browser_page(pw)
            posts = []
            page.on("request", lambda r: posts.append(r) if r.method == "POST" else None)
            await page.goto(station.base + "/")
            form = page.get_by_role("form", name="Bearer token")
            await expect(form).to_be_visible()
            await page.get_by_label("Bearer token", exact=True).last.fill(TOKEN)
            await page.get_by_role("button", name="Use token").click()
            await expect(form).to_be_hidden()
            await expect(page.get_by_label("Event stream")).to_have_text("live")
            await expect(page.locator("#st-registration")).to_have_text("Accepted")
            await page.get_by_role("button", name="Plug connector 1", exact=True).click()
            await expect(page.get_by_label("Status of connector 1")).to_have_text("Preparing")
            # The POST carried the page's own Origin, and it was let through.
            origins = [(await r.all_headers()).get("origin") for r in posts]  # as sent on the wire
            assert origins == [station.base], origins
            # Asked once: a reload in the same tab needs no second entry.
            await page.reload()
            await expect(page.get_by_label("Event stream")).to_have_text("live")
            await expect(form).to_be_hidden()
            await browser.close()
        state = await asyncio.to_thread(request, station.base, "GET", "/api/state", None, 5, token=TOKEN)
        assert state["connectors"][0]["plugged"] is True
    finally:
        await station.stop()
        await csms.stop()
