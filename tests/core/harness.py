"""A fake-clock harness around the pure station core: no sockets, no sleeping.

It plays the adapters: records every action, answers CALLs like a default CSMS
(optionally scripted per action), and advances a fake clock through the core's own
deadlines. Tests stay instant and exhaustive.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Any, Callable

from twin.core import actions as A
from twin.core.keys import ConfigKeys
from twin.core.smart_charging import SmartCharging
from twin.core.station import Station, StationSpec

T0 = datetime(2026, 11, 24, 12, 0, 0, tzinfo=timezone.utc)


class Reading:
    def __init__(self, energy_wh: float, power_w: float = 0.0):
        self.energy_wh = energy_wh
        self.power_w = power_w
        self.current_a = power_w / 690.0
        self.voltage_v = 230.0
        self.frequency_hz = None
        self.soc_percent = None


class Harness:
    def __init__(self, keys: dict[str, str] | None = None, state: dict | None = None, *, auto: bool = True,
                 now: datetime = T0, spec: StationSpec | None = None):
        self.now = now
        self.keys = ConfigKeys(overrides=keys or {})
        self.spec = spec or StationSpec()
        self.st = Station(self.spec, self.keys, SmartCharging(self.spec.connectors), state)
        self.auto = auto
        self.sent: list[A.Send] = []  # every CALL, in order
        self.outstanding: dict[int, A.Send] = {}
        self.replies: list[A.Reply | A.ReplyError] = []
        self.ops: list[tuple] = []
        self.relays: dict[int, bool] = {}
        self.restarts: list[str] = []
        self.delegated: list[A.Delegate] = []
        self.controls: list[A.Control] = []  # everything on the control channel but restarts
        self.scripts: dict[str, Callable[[dict], Any]] = {}
        self.next_tx_id = 1
        self.id_tags: dict[str, dict] = {}

    # ----------------------------------------------------------------- plumbing
    def run(self, acts: list) -> None:
        for act in acts or []:
            if isinstance(act, A.Send):
                self.sent.append(act)
                self.outstanding[act.ref] = act
            elif isinstance(act, (A.Reply, A.ReplyError)):
                self.replies.append(act)
            elif isinstance(act, A.Persist):
                self.ops += act.ops
            elif isinstance(act, A.SetRelay):
                self.relays[act.connector_id] = act.closed
            elif isinstance(act, A.Restart):
                self.restarts.append(act.kind)
            elif isinstance(act, A.Delegate):
                self.delegated.append(act)
            elif isinstance(act, (A.SecurityLogEntry, A.Reconnect, A.SecurityTask, A.LinkSetting)):
                self.controls.append(act)
        if self.auto:
            self.answer_all()

    def default_reply(self, send: A.Send) -> Any:
        if send.action in self.scripts:
            return self.scripts[send.action](send.payload)
        if send.action == "BootNotification":
            return {"status": "Accepted", "currentTime": "2026-11-24T12:00:00Z", "interval": 300}
        if send.action == "Authorize":
            return {"idTagInfo": self.id_tags.get(send.payload["idTag"], {"status": "Accepted"})}
        if send.action == "StartTransaction":
            tid = self.next_tx_id
            self.next_tx_id += 1
            return {"transactionId": tid,
                    "idTagInfo": self.id_tags.get(send.payload["idTag"], {"status": "Accepted"})}
        if send.action == "StopTransaction":
            return {"idTagInfo": {"status": "Accepted"}}
        if send.action == "Heartbeat":
            return {"currentTime": "2026-11-24T12:00:00Z"}
        return {}

    def answer_all(self) -> None:
        while self.outstanding:
            ref, send = next(iter(self.outstanding.items()))
            del self.outstanding[ref]
            reply = self.default_reply(send)
            if reply == "silence":
                continue
            if isinstance(reply, Exception):
                self.run(self.st.call_failed(ref, f"CALLERROR {reply}", self.now))
            else:
                self.run(self.st.call_result(ref, reply, self.now))

    def answer(self, action: str, payload: Any = None) -> A.Send:
        """Answer the oldest outstanding CALL of ``action`` (manual mode)."""
        ref, send = next((r, s) for r, s in self.outstanding.items() if s.action == action)
        del self.outstanding[ref]
        reply = self.default_reply(send) if payload is None else payload
        if isinstance(reply, Exception):
            self.run(self.st.call_failed(ref, f"CALLERROR {reply}", self.now))
        else:
            self.run(self.st.call_result(ref, reply, self.now))
        return send

    def fail(self, action: str, reason: str = "timeout") -> A.Send:
        ref, send = next((r, s) for r, s in self.outstanding.items() if s.action == action)
        del self.outstanding[ref]
        self.run(self.st.call_failed(ref, reason, self.now))
        return send

    # ----------------------------------------------------------------- scenario verbs
    def boot(self, online: bool = True) -> "Harness":
        self.run(self.st.boot(self.now))
        if online:
            self.run(self.st.link_up(self.now))
        return self

    def go_offline(self) -> None:
        self.outstanding.clear()
        self.run(self.st.link_down(self.now))

    def go_online(self) -> None:
        self.run(self.st.link_up(self.now))

    def advance(self, seconds: float) -> None:
        end = self.now + timedelta(seconds=seconds)
        while True:
            deadline = self.st.next_deadline()
            if deadline is None or deadline > end:
                break
            self.now = max(self.now, deadline)
            self.run(self.st.tick(self.now))
        self.now = end
        self.run(self.st.tick(self.now))

    def plug(self, cid: int = 1) -> None:
        self.run(self.st.plug(cid, self.now))

    def unplug(self, cid: int = 1) -> None:
        self.run(self.st.unplug(cid, self.now))

    def tap(self, tag: str) -> None:
        self.run(self.st.tap(tag, self.now))

    def meter(self, cid: int, energy_wh: float, power_w: float = 7000.0) -> None:
        self.run(self.st.meter_reading(cid, Reading(energy_wh, power_w), self.now))

    def csms(self, action: str, payload: dict) -> A.Reply | A.ReplyError | None:
        before = len(self.replies)
        self.run(self.st.csms_call(f"u{len(self.replies)}", action, payload, self.now))
        return self.replies[before] if len(self.replies) > before else None

    # ----------------------------------------------------------------- queries
    def calls(self, action: str | None = None, since: int = 0) -> list[A.Send]:
        return [s for s in self.sent[since:] if action is None or s.action == action]

    def statuses(self, cid: int | None = None, since: int = 0) -> list[str]:
        return [s.payload["status"] for s in self.calls("StatusNotification", since)
                if cid is None or s.payload["connectorId"] == cid]

    def security_log(self) -> list[str]:
        return [c.name for c in self.controls if isinstance(c, A.SecurityLogEntry)]

    def mark(self) -> int:
        return len(self.sent)

    def status(self, cid: int) -> str:
        return self.st.status_of(self.st.connectors[cid])[0]
