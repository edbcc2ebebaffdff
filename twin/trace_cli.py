"""``twin trace show|replay``: read a wire trace (twin.trace), or play its station side
against a CSMS and report where that CSMS answers differently (docs/faults-and-traces.md).

Replay sends the station's CALLs of the recording in order, with the recorded gaps
divided by ``--speed``, each once its predecessors are answered (OCPP-J §4.1.1: one CALL
at a time) and once the CSMS has sent as many CALLs as it had by then in the recording
(so a StartTransaction follows the RemoteStartTransaction that caused it). The CSMS's
CALLs get the station's recorded answers, in order per action. Ids are mapped to the new
CSMS's: message ids are new, a transactionId comes from the new StartTransaction.conf and
a reservationId from the new ReserveNow; timestamps move by the time since the recording.
Each recorded connection is replayed on a connection of its own.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import sys
import time
import uuid
from collections import defaultdict, deque
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from twin.trace import read_trace

_TS = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?(Z|[+-]\d{2}:?\d{2})?$")
IGNORED_KEYS = frozenset({"currentTime"})  # a clock, never a behaviour


def add_trace_subcommands(sub) -> None:
    p = sub.add_parser("trace", help="read a wire trace (twin run --trace), or replay it against a CSMS")
    tsub = p.add_subparsers(dest="trace_command", required=True)
    show = tsub.add_parser("show", help="print the frames of a trace file as a readable sequence")
    show.add_argument("file", type=Path)
    show.add_argument("--action", help="only this action (its calls and their answers)")
    show.add_argument("--connector", type=int, help="only frames about this connectorId")
    show.add_argument("--transaction", type=int, help="only frames about this transactionId")
    replay = tsub.add_parser("replay", help="play the station's side of a trace against a CSMS; "
                                            "exit 1 when its answers differ from the recording")
    replay.add_argument("file", type=Path)
    replay.add_argument("--csms", required=True, dest="csms", help="CSMS websocket URL, e.g. ws://127.0.0.1:9000/ocpp")
    replay.add_argument("--id", required=True, dest="cp_id", help="chargePointId to connect as")
    replay.add_argument("--speed", type=float, default=1.0, help="time scale: 2 plays twice as fast (default 1)")
    replay.add_argument("--timeout", type=float, default=10.0, help="seconds to wait for each answer (default 10)")


def run_trace_command(args) -> int:
    try:
        records = read_trace(args.file)
    except OSError as e:
        print(f"twin trace: {args.file}: {e.strerror or e}", file=sys.stderr)
        return 2
    if args.trace_command == "show":
        for line in show_lines(records, action=args.action, connector=args.connector, transaction=args.transaction):
            print(line)
        return 0
    if args.speed <= 0:
        print("twin trace: --speed must be positive", file=sys.stderr)
        return 2
    from websockets.exceptions import WebSocketException

    try:
        report = asyncio.run(replay(records, args.csms, args.cp_id, speed=args.speed, timeout=args.timeout))
    except (OSError, ValueError, TimeoutError, WebSocketException) as e:
        print(f"twin trace replay: {type(e).__name__}: {e}", file=sys.stderr)
        return 2
    print(f"replayed {report['sent']} station call(s) and answered {report['answered']} CSMS call(s) "
          f"over {report['connections']} connection(s); transactionIds {report['transaction_ids'] or '{}'}")
    for diff in report["differences"]:
        print(f"DIFFERS: {diff}")
    print("same answers as the recording" if not report["differences"]
          else f"{len(report['differences'])} difference(s) from the recording")
    return 1 if report["differences"] else 0


# ------------------------------------------------------------------------------ show
def _is_frame(rec: dict) -> bool:
    f = rec.get("frame")
    return isinstance(f, list) and len(f) >= 3 and f[0] in (2, 3, 4) and isinstance(f[1], str)


def _index(records: list[dict]) -> tuple[dict, dict]:
    """(calls, answers): (conn, dir, uid) -> the CALL record, and -> its first answer record."""
    calls: dict[tuple, dict] = {}
    answers: dict[tuple, dict] = {}
    for rec in records:
        if not _is_frame(rec):
            continue
        f = rec["frame"]
        if f[0] == 2:
            calls.setdefault((rec.get("conn"), rec["dir"], f[1]), rec)
        else:
            caller = "out" if rec["dir"] == "in" else "in"
            answers.setdefault((rec.get("conn"), caller, f[1]), rec)
    return calls, answers


def _facts(rec: dict, calls: dict, answers: dict) -> tuple[str | None, Any, set]:
    """(action, connectorId, transactionIds) a record is about."""
    if not _is_frame(rec):
        return None, None, set()
    f = rec["frame"]
    if f[0] == 2:
        call, answer = rec, answers.get((rec.get("conn"), rec["dir"], f[1]))
    else:
        call, answer = calls.get((rec.get("conn"), "out" if rec["dir"] == "in" else "in", f[1])), rec
    action = call["frame"][2] if call else None
    payload = call["frame"][3] if call and len(call["frame"]) > 3 and isinstance(call["frame"][3], dict) else {}
    txids = {payload["transactionId"]} if "transactionId" in payload else set()
    if answer is not None and answer["frame"][0] == 3 and isinstance(answer["frame"][2], dict):
        if "transactionId" in answer["frame"][2]:
            txids.add(answer["frame"][2]["transactionId"])
    return action, payload.get("connectorId"), txids


def _label(rec: dict, calls: dict) -> str:
    f = rec.get("frame")
    if not _is_frame(rec):
        return f"not OCPP-J: {str(f)[:160]}"
    if f[0] == 2:
        return f"{f[2]} {json.dumps(f[3], separators=(',', ':')) if len(f) > 3 else ''}"
    call = calls.get((rec.get("conn"), "out" if rec["dir"] == "in" else "in", f[1]))
    action = call["frame"][2] if call else "?"
    if f[0] == 3:
        return f"{action}.conf {json.dumps(f[2], separators=(',', ':'))}"
    return f"CALLERROR to {action}: {f[2]} {f[3] if len(f) > 3 else ''}"


def show_lines(records: list[dict], *, action: str | None = None, connector: int | None = None,
               transaction: int | None = None) -> list[str]:
    calls, answers = _index(records)
    # A StartTransaction belongs to the transaction its .conf named; the station's later
    # frames for that connector until the StopTransaction carry the id themselves.
    lines = []
    for rec in records:
        act, cid, txids = _facts(rec, calls, answers)
        if action is not None and act != action:
            continue
        if connector is not None and cid != connector:
            continue
        if transaction is not None and transaction not in txids:
            continue
        arrow = "->" if rec["dir"] == "out" else "<-"
        who = "station -> CSMS" if rec["dir"] == "out" else "CSMS -> station"
        marks = ""
        if rec.get("fault"):
            marks += f"  [fault {rec['fault']}: {rec.get('do', '?')}]"
        if rec.get("lost"):
            marks += "  [lost]"
        t = str(rec.get("t", ""))[11:23]
        lines.append(f"{rec.get('n', ''):>6} {t:<12} c{rec.get('conn', '?')} {arrow} {who}: "
                     f"{_label(rec, calls)[:400]}{marks}")
    return lines


# ------------------------------------------------------------------------------ replay
def _wire_records(records: list[dict]) -> list[dict]:
    """What went over the wire: no frame that was lost or dropped."""
    return [r for r in records if not r.get("lost") and r.get("do") != "drop"]


class _Ids:
    def __init__(self, shift_s: float):
        self.tx: dict[int, int] = {}
        self.reservation: dict[int, int] = {}
        self.shift_s = shift_s

    def out(self, value: Any, key: str | None = None) -> Any:
        """A recorded value as the new session has it."""
        if isinstance(value, dict):
            return {k: self.out(v, k) for k, v in value.items()}
        if isinstance(value, list):
            return [self.out(v, key) for v in value]
        if key == "transactionId" and isinstance(value, int) and value in self.tx:
            return self.tx[value]
        if key == "reservationId" and isinstance(value, int) and value in self.reservation:
            return self.reservation[value]
        if isinstance(value, str) and _TS.match(value) and self.shift_s:
            try:
                when = datetime.fromisoformat(value.replace("Z", "+00:00"))
            except ValueError:
                return value
            moved = datetime.fromtimestamp(when.timestamp() + self.shift_s, tz=when.tzinfo or timezone.utc)
            text = moved.isoformat()
            return text.replace("+00:00", "Z") if value.endswith("Z") else text
        return value


def _differences(recorded: Any, new: Any, where: str = "") -> list[str]:
    if isinstance(recorded, dict) and isinstance(new, dict):
        out = []
        for key in sorted(set(recorded) | set(new)):
            if key in IGNORED_KEYS:
                continue
            path = f"{where}.{key}" if where else key
            if key not in new:
                out.append(f"{path}: missing (recorded {json.dumps(recorded[key])})")
            elif key not in recorded:
                out.append(f"{path}: {json.dumps(new[key])} not in the recording")
            else:
                out += _differences(recorded[key], new[key], path)
        return out
    if isinstance(recorded, list) and isinstance(new, list) and len(recorded) == len(new):
        return [d for i, (a, b) in enumerate(zip(recorded, new)) for d in _differences(a, b, f"{where}[{i}]")]
    if isinstance(recorded, str) and isinstance(new, str) and _TS.match(recorded) and _TS.match(new):
        return []  # both timestamps: a clock, compared by nobody
    if recorded != new or type(recorded) is not type(new):
        return [f"{where or 'payload'}: {json.dumps(new)} (recorded {json.dumps(recorded)})"]
    return []


async def replay(records: list[dict], csms_url: str, cp_id: str, *, speed: float = 1.0,
                 timeout: float = 10.0) -> dict:
    """Play the station's side of ``records`` against ``csms_url``; the report's
    ``differences`` list where the CSMS answered differently from the recording."""
    from websockets.asyncio.client import connect

    wire = _wire_records(records)
    if not wire:
        raise ValueError("the trace holds no frames")
    first_t = next((r["t"] for r in wire if r.get("t")), None)
    shift = 0.0
    if first_t:
        try:
            shift = time.time() - datetime.fromisoformat(first_t).timestamp()
        except ValueError:
            shift = 0.0
    ids = _Ids(shift)
    report: dict[str, Any] = {"sent": 0, "answered": 0, "connections": 0, "differences": [], "transaction_ids": {}}
    conns: dict[Any, list[dict]] = {}
    for rec in wire:
        conns.setdefault(rec.get("conn"), []).append(rec)
    url = f"{csms_url.rstrip('/')}/{cp_id}"
    for conn, group in conns.items():
        calls, answers = _index(group)
        if not any(_is_frame(r) for r in group):
            continue
        report["connections"] += 1
        async with connect(url, subprotocols=["ocpp1.6"], open_timeout=timeout, ping_interval=None) as ws:
            await _replay_connection(ws, group, calls, answers, ids, report, speed, timeout, conn)
    report["transaction_ids"] = dict(ids.tx)
    return report


async def _replay_connection(ws, group: list[dict], calls: dict, answers: dict, ids: _Ids, report: dict,
                             speed: float, timeout: float, conn: Any) -> None:
    diffs: list[str] = report["differences"]
    # The CSMS's recorded CALLs, per action in order, with the station's recorded answers.
    expected: dict[str, deque] = defaultdict(deque)
    station_calls: list[tuple[dict, int]] = []  # (record, number of CSMS calls recorded before it)
    seen_uids: set[str] = set()
    csms_before = 0
    for rec in group:
        if not _is_frame(rec) or rec["frame"][0] != 2:
            continue
        uid = rec["frame"][1]
        if rec["dir"] == "in":
            if (rec["dir"], uid) in seen_uids:
                continue
            seen_uids.add((rec["dir"], uid))
            csms_before += 1
            expected[rec["frame"][2]].append((rec, answers.get((conn, "in", uid))))
        elif ("out", uid) not in seen_uids:  # a recorded duplicate goes once
            seen_uids.add(("out", uid))
            station_calls.append((rec, csms_before))
    received = 0
    changed = asyncio.Event()
    pending: dict[str, asyncio.Future] = {}

    async def answer_csms(frame: list) -> None:
        nonlocal received
        action, uid = frame[2], frame[1]
        payload = frame[3] if len(frame) > 3 else {}
        queue = expected.get(action)
        if not queue:
            diffs.append(f"CSMS sent {action} {json.dumps(payload)}, which the recording does not have")
            await ws.send(json.dumps([4, uid, "NotSupported", "not in the replayed recording", {}]))
        else:
            rec, ans = queue.popleft()
            recorded = rec["frame"][3]
            if action == "ReserveNow" and isinstance(recorded.get("reservationId"), int) \
                    and isinstance(payload.get("reservationId"), int):
                ids.reservation[recorded["reservationId"]] = payload["reservationId"]
            for d in _differences(ids.out(recorded), payload):
                diffs.append(f"CSMS call {action} (recorded #{rec.get('n')}): {d}")
            if ans is None:
                diffs.append(f"CSMS call {action}: the recording has no answer to it; answering NotSupported")
                await ws.send(json.dumps([4, uid, "NotSupported", "no answer in the recording", {}]))
            else:
                reply = list(ans["frame"])
                reply[1] = uid
                if reply[0] == 3:
                    reply[2] = ids.out(reply[2])
                await ws.send(json.dumps(reply, separators=(",", ":")))
            report["answered"] += 1
        received += 1
        changed.set()

    async def reader() -> None:
        async for text in ws:
            try:
                frame = json.loads(text)
            except ValueError:
                diffs.append(f"CSMS sent a frame that is not JSON: {str(text)[:120]}")
                continue
            if not isinstance(frame, list) or len(frame) < 3 or not isinstance(frame[1], str):
                diffs.append(f"CSMS sent a frame that is not OCPP-J: {str(text)[:120]}")
                continue
            if frame[0] == 2:
                await answer_csms(frame)
            elif frame[0] in (3, 4) and frame[1] in pending and not pending[frame[1]].done():
                pending[frame[1]].set_result(frame)

    reading = asyncio.create_task(reader())
    loop = asyncio.get_running_loop()
    start_loop, start_mono = loop.time(), (station_calls[0][0].get("mono") if station_calls else 0) or 0
    try:
        for rec, csms_before in station_calls:
            due = start_loop + max(0.0, ((rec.get("mono") or start_mono) - start_mono) / speed)
            if due > loop.time():
                await asyncio.sleep(due - loop.time())
            try:
                async with asyncio.timeout(timeout):
                    while received < csms_before and not reading.done():
                        changed.clear()
                        await changed.wait()
            except TimeoutError:
                diffs.append(f"before {rec['frame'][2]} (recorded #{rec.get('n')}) the CSMS had sent {received} "
                             f"call(s), the recording {csms_before}")
            action, payload = rec["frame"][2], rec["frame"][3] if len(rec["frame"]) > 3 else {}
            uid = str(uuid.uuid4())
            fut = loop.create_future()
            pending[uid] = fut
            await ws.send(json.dumps([2, uid, action, ids.out(payload)], separators=(",", ":")))
            report["sent"] += 1
            recorded = answers.get((conn, "out", rec["frame"][1]))
            try:
                async with asyncio.timeout(timeout):
                    got = await fut
            except TimeoutError:
                if recorded is not None:
                    diffs.append(f"{action} (recorded #{rec.get('n')}): no answer within {timeout:g}s")
                continue
            finally:
                pending.pop(uid, None)
            if recorded is None:
                continue  # the recording ended before its answer: nothing to compare
            old = recorded["frame"]
            if got[0] != old[0]:
                diffs.append(f"{action} (recorded #{rec.get('n')}): answered {_kind(got)}, recorded {_kind(old)}")
                continue
            if got[0] == 4:
                if got[2] != old[2]:
                    diffs.append(f"{action} (recorded #{rec.get('n')}): CALLERROR {got[2]}, recorded {old[2]}")
                continue
            new_payload = got[2] if isinstance(got[2], dict) else {}
            old_payload = dict(old[2]) if isinstance(old[2], dict) else {}
            if action == "StartTransaction" and isinstance(old_payload.get("transactionId"), int) \
                    and isinstance(new_payload.get("transactionId"), int):
                ids.tx[old_payload["transactionId"]] = new_payload["transactionId"]
                old_payload["transactionId"] = new_payload["transactionId"]
            for d in _differences(ids.out(old_payload), new_payload):
                diffs.append(f"{action}.conf (recorded #{recorded.get('n')}): {d}")
        # The CSMS's calls the recording has after the station's last one.
        remaining = sum(len(q) for q in expected.values())
        if remaining:
            try:
                async with asyncio.timeout(timeout):
                    while sum(len(q) for q in expected.values()) and not reading.done():
                        changed.clear()
                        await changed.wait()
            except TimeoutError:
                pass
        for action, queue in expected.items():
            for rec, _ in queue:
                diffs.append(f"CSMS did not send {action} (recorded #{rec.get('n')})")
    finally:
        reading.cancel()
        try:
            await reading
        except (asyncio.CancelledError, Exception):  # noqa: BLE001 - the connection closes anyway
            pass


def _kind(frame: list) -> str:
    return {3: "a CALLRESULT", 4: f"CALLERROR {frame[2] if len(frame) > 2 else ''}"}.get(frame[0], "?")


if __name__ == "__main__":  # pragma: no cover
    parser = argparse.ArgumentParser(prog="twin")
    add_trace_subcommands(parser.add_subparsers(dest="command", required=True))
    raise SystemExit(run_trace_command(parser.parse_args()))
