"""Wire traces (twin.trace) from a real station and CSMS, `twin trace show`, and a replay of a
recorded session against a second CSMS with remapped ids (twin.trace_cli)."""

from __future__ import annotations

import asyncio
import json
import sys

from tests.conftest import ROOT, twin_process_env
from twin.csms import Csms
from twin.trace import Tracer, read_trace
from twin.trace_cli import replay, show_lines

SECRET = "s3cr3t-Pa55word"
KEY = "00112233445566778899aabbccddeeff"


def test_tracer_redacts_numbers_ring_and_file(tmp_path):
    path = tmp_path / "t.jsonl"
    published = []
    tracer = Tracer(ring=3, file=path, publish=published.append)
    change = json.dumps([2, "u1", "ChangeConfiguration", {"key": "AuthorizationKey", "value": KEY}])
    tracer.record("in", 1, change)
    tracer.record("in", 1, json.dumps([2, "u2", "GetDiagnostics", {"location": f"ftp://me:{SECRET}@h/d"}]))
    tracer.record("out", 1, "[2,\"u3\",garbage", fault="f9", do="garble")
    tracer.record("out", 1, json.dumps([3, "u2", {}]))
    assert tracer.flush()
    text = path.read_text(encoding="utf-8")
    assert KEY not in text and SECRET not in text
    records = read_trace(path)
    assert [r["n"] for r in records] == [1, 2, 3, 4]
    assert records[0]["frame"] == [2, "u1", "ChangeConfiguration", {"key": "AuthorizationKey", "value": "***"}]
    assert records[1]["frame"][3]["location"] == "ftp://me:***@h/d"
    assert records[2]["frame"] == "[2,\"u3\",garbage" and records[2]["fault"] == "f9"
    assert published == records
    got = tracer.since(0)
    assert [r["n"] for r in got["frames"]] == [2, 3, 4] and got["next"] == 5  # the ring holds 3
    assert tracer.since(5) == {"next": 5, "frames": []}


async def test_station_trace_file_events_and_redaction(make_station, csms, tmp_path):
    path = tmp_path / "trace.jsonl"
    s = await make_station(trace_file=path)
    sub = s.rt.events.subscribe()
    rule = s.rt.add_fault({"on": "GetConfiguration", "direction": "in", "do": "delay", "seconds": 0.1, "count": 1})
    await csms.call("GetConfiguration", {"key": ["HeartbeatInterval"]})
    location = f"ftp://fw:{SECRET}@127.0.0.1:1/fw.bin"
    await csms.call("UpdateFirmware", {"location": location, "retrieveDate": "2099-01-01T00:00:00Z"})
    assert s.rt.link.tracer.flush()
    records = read_trace(path)
    text = path.read_text(encoding="utf-8")
    assert SECRET not in text and "ftp://fw:***@127.0.0.1:1/fw.bin" in text
    frames = [r["frame"] for r in records]
    assert frames[0][0] == 2 and frames[0][2] == "BootNotification" and records[0]["dir"] == "out"
    assert all(r["conn"] == 1 and r["dir"] in ("in", "out") and r["t"] and r["mono"] > 0 for r in records)
    assert [r["n"] for r in records] == sorted(r["n"] for r in records)
    delayed = [r for r in records if r["fault"]]
    assert len(delayed) == 1 and delayed[0]["fault"] == rule["id"] and delayed[0]["frame"][0] == 3
    ring = s.rt.trace_since(0)
    assert ring["frames"] == records and ring["next"] == records[-1]["n"] + 1
    assert s.rt.trace_since(ring["next"])["frames"] == []
    events = []
    while len(events) < 4:
        event = await asyncio.wait_for(sub.get(), 5)
        if event and event["type"] == "frame":
            events.append(event["data"])
    assert events == [r for r in records if r["n"] >= events[0]["n"]][:4]
    sub.close()

    lines = show_lines(records, action="GetConfiguration")
    assert len(lines) == 2 and "GetConfiguration" in lines[0] and f"[fault {rule['id']}: delay]" in lines[1]
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "twin", "trace", "show", str(path),
                                                "--action", "UpdateFirmware", env=twin_process_env(), cwd=ROOT,
                                                stdout=asyncio.subprocess.PIPE)
    out, _ = await proc.communicate()
    assert proc.returncode == 0
    shown = out.decode().splitlines()
    assert len(shown) == 2 and "UpdateFirmware" in shown[0] and SECRET not in out.decode()


async def _record_session(make_station, csms, path) -> tuple[list[dict], int]:
    """Boot, a local session (card on, card off), all traced; returns the records and the transactionId."""
    s = await make_station(trace_file=path)
    mark = csms.mark()
    await s.plug(1)
    await s.tap("TAG1")
    await csms.wait_for("StartTransaction", timeout=10, after=mark)
    await s.until(lambda: s.st.txlog.transaction_id(1) is not None)
    tid = s.st.txlog.transaction_id(1)
    await s.tap("TAG1")
    await csms.wait_for("StopTransaction", {"transactionId": tid}, timeout=10, after=mark)
    await s.until(lambda: len(s.st.queue) == 0)
    await s.rt.shutdown(graceful=False)
    return read_trace(path), tid


async def test_replay_against_a_second_csms_remaps_transaction_ids(make_station, csms, tmp_path):
    path = tmp_path / "session.jsonl"
    records, tid = await _record_session(make_station, csms, path)
    assert [r["frame"][2] for r in records if r["dir"] == "out" and r["frame"][0] == 2].count("StopTransaction") == 1

    second = Csms(heartbeat_interval=300)
    second.on("StartTransaction", lambda p: {"transactionId": tid + 776, "idTagInfo": {"status": "Accepted"}})
    await second.start()
    try:
        report = await replay(records, second.url, "CP1", speed=20, timeout=5)
        assert report["differences"] == [], report["differences"]
        assert report["transaction_ids"] == {tid: tid + 776}
        stop = await second.wait_for("StopTransaction", timeout=5, after=0)
        assert stop.payload["transactionId"] == tid + 776
        assert [m.action for m in second.calls()] == [r["frame"][2] for r in records
                                                      if r["dir"] == "out" and r["frame"][0] == 2]
        assert not second.schema_errors, second.schema_errors
    finally:
        await second.stop()

    # A CSMS that answers differently: the replay says where, and the command exits 1.
    third = Csms(heartbeat_interval=300)
    third.id_tags["TAG1"] = {"status": "Blocked"}
    await third.start()
    try:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "twin", "trace", "replay", str(path), "--csms", third.url, "--id", "CP1",
            "--speed", "20", "--timeout", "5", env=twin_process_env(), cwd=ROOT,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        out, err = await proc.communicate()
        text = out.decode()
        assert proc.returncode == 1, (text, err.decode())
        assert "DIFFERS" in text and "idTagInfo.status" in text and '"Blocked"' in text
    finally:
        await third.stop()


def test_trace_file_from_the_toml_and_the_flag(tmp_path):
    import pytest

    from twin.config import ConfigError, load_config

    toml = tmp_path / "station.toml"
    toml.write_text('[trace]\nfile = "traces/wire.jsonl"\n', encoding="utf-8")
    assert load_config(toml).trace_file == tmp_path / "traces" / "wire.jsonl"
    assert load_config(toml, {"trace": tmp_path / "other.jsonl"}).trace_file == tmp_path / "other.jsonl"
    assert load_config(None).trace_file is None
    toml.write_text('[trace]\nfile = "x"\nformat = "pcap"\n', encoding="utf-8")
    with pytest.raises(ConfigError, match="trace.format"):
        load_config(toml)


async def test_twin_run_trace_flag_writes_the_session(csms, tmp_path):
    import signal

    from tests.conftest import free_port

    path = tmp_path / "run.jsonl"
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "twin", "run", "--sim", "--csms", csms.url, "--id", "CP1", "--data-dir",
        str(tmp_path / "data"), "--control", f"127.0.0.1:{free_port()}", "--trace", str(path),
        env=twin_process_env(), cwd=ROOT, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL)
    try:
        await csms.wait_for("BootNotification", timeout=20)
        await csms.wait_for("StatusNotification", {"connectorId": 2}, timeout=10)
        await csms.call("TriggerMessage", {"requestedMessage": "Heartbeat"})
        await csms.wait_for("Heartbeat", timeout=10)
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), timeout=20) == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    records = read_trace(path)
    calls = [(r["dir"], r["frame"][2]) for r in records if isinstance(r["frame"], list) and r["frame"][0] == 2]
    assert calls[0] == ("out", "BootNotification")
    assert ("in", "TriggerMessage") in calls and ("out", "Heartbeat") in calls
    uids = {m.unique_id for m in csms.messages}
    assert {r["frame"][1] for r in records} <= uids  # the frames the CSMS saw, as sent


# ------------------------------------------------------------------ hostile frames (a review)
def test_a_lone_surrogate_or_an_escaped_secret_cannot_break_or_leak_the_trace(tmp_path):
    import json as _json

    from twin.trace import Tracer

    tracer = Tracer(file=tmp_path / "t.jsonl")
    tracer.record("in", 1, '[2,"a","DataTransfer",{"vendorId":"\\ud800x"}]')
    tracer.record("in", 1, '[2,"b","ChangeConfiguration",{"key":"Authorization\\u004bey","value":"s3cret-value-16c"}]')
    tracer.record("in", 1, '[2,"c","UpdateFirmware",{"location":"ftp\\u003a//user:pw1234@host/fw",'
                           '"retrieveDate":"2026-01-01T00:00:00Z"}]')
    tracer.record("out", 1, "not json \ud800")
    assert tracer.flush()
    text = (tmp_path / "t.jsonl").read_text(encoding="utf-8")
    assert len(text.splitlines()) == 4  # the file survived all four
    assert "s3cret-value-16c" not in text and "pw1234" not in text
    served = _json.dumps(tracer.since(0), ensure_ascii=False).encode("utf-8")  # what /api/trace sends
    assert b"s3cret" not in served and b"pw1234" not in served
    tracer.close()


def test_the_ring_is_bounded_by_size_and_answers_in_pages():
    from twin import trace

    tracer = trace.Tracer(ring=10_000)
    big = '[2,"x","DataTransfer",{"vendorId":"v","data":"' + "z" * (2**20) + '"}]'
    for _ in range(40):
        tracer.record("in", 1, big)
    assert sum(size for size, _ in tracer.ring) <= trace.RING_MAX_CHARS
    for _ in range(2500):
        tracer.record("out", 1, '[3,"x",{}]')
    page = tracer.since(0)
    assert len(page["frames"]) == trace.SINCE_MAX
    rest = tracer.since(page["next"])
    assert rest["frames"][0]["n"] == page["frames"][-1]["n"] + 1


def test_a_trace_file_nobody_drains_never_blocks_the_link_and_the_gap_is_recorded(tmp_path, caplog):
    """The file is written by its own thread: a pipe nobody reads (a stalled SD card looks the
    same to the writer) must not block record(), which runs on the event loop."""
    import os
    import threading

    from twin import trace

    fifo = tmp_path / "stalled"
    os.mkfifo(fifo)
    reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)  # so the writer's open succeeds; never read yet
    try:
        tracer = trace.Tracer(file=fifo)
        tracer._file._queue.maxsize = 50  # a short queue: the pipe's 64 KiB fill it quickly
        frame = json.dumps([2, "x", "DataTransfer", {"vendorId": "v", "data": "y" * 1000}])
        finished = threading.Event()

        def record_many() -> None:
            for _ in range(500):
                tracer.record("out", 1, frame)
            finished.set()

        threading.Thread(target=record_many, daemon=True).start()
        assert finished.wait(10), "record() blocked on a stalled trace file"
        assert tracer._file.dropped > 0
        assert len(tracer.since(0)["frames"]) == 500  # the ring has them all regardless
        chunks = []

        def drain() -> None:
            import select

            while True:
                ready, _, _ = select.select([reader], [], [], 2.0)
                if not ready:
                    return
                data = os.read(reader, 1 << 16)
                if not data:
                    return
                chunks.append(data)

        drainer = threading.Thread(target=drain, daemon=True)
        drainer.start()
        assert tracer.flush()  # the writer caught up once the pipe is read
        tracer.record("out", 1, json.dumps([3, "last", {}]))  # written after the gap record
        tracer.close()
        drainer.join(10)
    finally:
        os.close(reader)
    out = tmp_path / "drained.jsonl"
    out.write_bytes(b"".join(chunks))
    with caplog.at_level("WARNING", logger="twin.trace"):
        records = read_trace(out)
    assert records[-1]["frame"] == [3, "last", {}]
    assert len(records) + sum(json.loads(line).get("gap", 0) for line in out.read_text().splitlines()) == 501
    assert "frame(s) missing here" in caplog.text
