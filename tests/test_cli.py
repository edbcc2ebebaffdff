"""The `twin` command line as a user runs it: real processes."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys

from tests.conftest import ROOT, free_port, twin_process_env


def twin(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "twin", *args], capture_output=True, text=True,
                          env=twin_process_env(), cwd=ROOT, timeout=timeout)


def test_bad_config_names_file_key_and_problem_and_exits_non_zero(tmp_path):
    bad = tmp_path / "station.toml"
    bad.write_text('[csms]\nurl = "http://nope"\n')
    result = twin("run", "--config", str(bad))
    assert result.returncode == 2
    assert str(bad) in result.stderr and "csms.url" in result.stderr


def test_unknown_key_override_is_refused(tmp_path):
    bad = tmp_path / "station.toml"
    bad.write_text('[keys]\nMeterValueSampleInterval = "soon"\n')
    result = twin("run", "--config", str(bad))
    assert result.returncode == 2 and "MeterValueSampleInterval" in result.stderr


def test_corrupted_store_is_refused_and_left_alone(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    db = data / "twin.db"
    db.write_bytes(b"this is not a database" * 100)
    result = twin("run", "--sim", "--data-dir", str(data), "--csms", "ws://127.0.0.1:9/ocpp", "--control",
                  "127.0.0.1:0")
    assert result.returncode == 3
    assert "twin.db" in result.stderr
    assert db.read_bytes() == b"this is not a database" * 100


async def test_queue_lists_messages_while_the_station_is_stopped(make_station, csms, tmp_path):
    station = await make_station()
    await station.offline()
    await station.plug(1)
    await station.tap("TAG1")  # AllowOfflineTxForUnknownId=true on the iEVQC33: starts offline
    await station.until(lambda: len(station.st.queue) >= 1)
    await station.rt.shutdown(graceful=False)
    result = await asyncio.to_thread(twin, "queue", "--data-dir", str(tmp_path / "data"), "--json")
    assert result.returncode == 0, result.stderr
    rows = json.loads(result.stdout)["queue"]
    assert [r["action"] for r in rows][:1] == ["StartTransaction"]
    text = await asyncio.to_thread(twin, "queue", "--data-dir", str(tmp_path / "data"))
    assert "StartTransaction" in text.stdout


def test_drivers_lists_backends_and_resolution():
    result = twin("drivers", "--sim")
    assert result.returncode == 0, result.stderr
    assert "backends:" in result.stdout and "sim" in result.stdout


def test_version():
    result = twin("--version")
    assert result.stdout.strip().endswith("1.10")


async def test_sigterm_stops_transactions_delivers_and_exits_zero(csms, tmp_path):
    """issue 7: SIGTERM opens the contactors, stops transactions with a reason, flushes, exits 0."""
    import signal
    import urllib.request

    port = free_port()
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "twin", "run", "--sim", "--csms", csms.url, "--id", "CP1", "--data-dir",
        str(tmp_path / "data"), "--control", f"127.0.0.1:{port}", env=twin_process_env(), cwd=ROOT,
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)
    try:
        await csms.wait_for("BootNotification", timeout=20)

        def post(path: str, body: dict | None = None) -> None:
            data = json.dumps(body).encode() if body is not None else b""
            req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=data, method="POST",
                                         headers={"Content-Type": "application/json"})
            urllib.request.urlopen(req, timeout=5).read()

        await asyncio.to_thread(post, "/api/connectors/1/plug")
        await asyncio.to_thread(post, "/api/rfid", {"idTag": "TAG1"})
        await csms.wait_for("StartTransaction", timeout=10)
        proc.send_signal(signal.SIGTERM)
        stop = await csms.wait_for("StopTransaction", timeout=10)
        assert stop.payload["reason"] == "Reboot" and stop.payload["transactionId"] == 1
        assert await asyncio.wait_for(proc.wait(), timeout=20) == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    from twin.store import Store

    snap = Store.snapshot(tmp_path / "data" / "twin.db")
    assert snap["queue"] == []  # delivered before exit
    assert all(tx["stopped"] for tx in snap["transactions"].values())


async def test_reset_restarts_a_standalone_process_in_place(csms, tmp_path):
    """Reset without systemd or a firmware slot: the process re-executes itself (same PID)."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "twin", "run", "--sim", "--csms", csms.url, "--id", "CP1", "--data-dir",
        str(tmp_path / "data"), "--control", "127.0.0.1:0", env=twin_process_env(), cwd=ROOT,
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL)
    try:
        await csms.wait_for("BootNotification", timeout=20)
        await csms.wait_for("StatusNotification", {"connectorId": 2}, timeout=10)
        for kind in ("Soft", "Hard"):
            mark = csms.mark()
            assert (await csms.call("Reset", {"type": kind}))["status"] == "Accepted"
            await csms.wait_for("BootNotification", timeout=20, after=mark)
            assert proc.returncode is None  # the same process, re-executed
    finally:
        proc.terminate()
        assert await asyncio.wait_for(proc.wait(), timeout=20) == 0


def test_config_check(tmp_path):
    good = ROOT / "twin" / "data" / "station.example.toml"
    ok = twin("config", "check", str(good))
    assert ok.returncode == 0 and "OK" in ok.stdout, ok.stderr
    bad = tmp_path / "bad.toml"
    bad.write_text('[drivers.relay]\nbackend = "sim"\nactiv_high = true\n')
    result = twin("config", "check", str(bad))
    assert result.returncode == 2 and "activ_high" in result.stderr


def test_csms_and_demo_refuse_bad_security_settings(tmp_path):
    short = "only-9-ch"
    bad_key = twin("csms", "--security-profile", "1", "--authorization-key", short, "--port", "0")
    assert bad_key.returncode == 2 and "--authorization-key" in bad_key.stderr
    assert short not in bad_key.stderr + bad_key.stdout  # a key is never echoed, not even a bad one
    no_profile_4 = twin("demo", "--security-profile", "4", "--once")
    assert no_profile_4.returncode == 2 and "invalid choice" in no_profile_4.stderr
    # A PKI directory that cannot be created (a file is in the way): a clear error, exit 2.
    (tmp_path / "pki").write_text("in the way")
    no_pki = twin("csms", "--security-profile", "2", "--pki", str(tmp_path / "pki"), "--port", "0")
    assert no_pki.returncode == 2 and "cannot set up security profile 2" in no_pki.stderr
