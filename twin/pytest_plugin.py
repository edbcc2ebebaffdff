"""pytest plugin for CSMS teams: a real ocpp-twin station process per test.

Installed with ocpp-twin (the ``pytest11`` entry point ``ocpp_twin``), or loaded with
``-p twin.pytest_plugin``. The ``ocpp_twin`` fixture is a factory::

    def test_my_csms_starts_a_session(ocpp_twin):
        cp = ocpp_twin("ws://127.0.0.1:9000/ocpp", id="CI-CP-1", keys={"MeterValueSampleInterval": 5})
        cp.wait_for_status(1, "Available")
        cp.plug(1)
        cp.tap("04A2B3C4")
        start = cp.wait_for_frame("StartTransaction", "out", {"connectorId": 1})   # the station's CALL
        conf = cp.answer(start)                    # and the CSMS's answer to it (the CALLRESULT)

Each call starts ``python -m twin run --sim --csms URL --id ID --control 127.0.0.1:<free
port> --data-dir <tmp>`` and returns a :class:`TwinClient` on its bench API (HTTP, through
twin.sim_client.request). Every station the test started is stopped when the test ends,
passed or failed (SIGTERM, then SIGKILL after 10 s); its log is attached to the report of
a failed test.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from twin.sim_client import SimClientError, request

START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 10.0
POLL_S = 0.1


class TwinError(AssertionError):
    """A wait ran out, or the station process is gone; the message says what was seen."""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    text = str(value).replace("\\", "\\\\").replace('"', '\\"')
    return f'"{text}"'


class TwinClient:
    """One running station process and its bench API (docs/control-api.md)."""

    def __init__(self, csms_url: str, charge_point_id: str, data_dir: Path, *, keys: dict | None = None,
                 connectors: int | None = None, python: str = sys.executable, start_timeout: float = START_TIMEOUT_S):
        self.csms_url, self.charge_point_id, self.data_dir = csms_url, charge_point_id, Path(data_dir)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.port = _free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.log_path = self.data_dir / "twin.out"
        self.cursor = 1  # wait_for_frame looks at trace records numbered from here
        args = [python, "-m", "twin", "run", "--sim", "--csms", csms_url, "--id", charge_point_id,
                "--control", f"127.0.0.1:{self.port}", "--data-dir", str(self.data_dir)]
        if keys or connectors:
            config = self.data_dir / "station.toml"
            lines = []
            if connectors:
                lines += ["[station]", f"connectors = {int(connectors)}", ""]
            if keys:
                lines += ["[keys]"] + [f"{k} = {_toml_value(v)}" for k, v in keys.items()]
            config.write_text("\n".join(lines) + "\n", encoding="utf-8")
            args += ["--config", str(config)]
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - closed by stop()
        env = dict(os.environ)
        env.setdefault("GPIOZERO_PIN_FACTORY", "mock")
        self.proc = subprocess.Popen(args, stdout=self._log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                     env=env)
        try:
            self._wait_api(start_timeout)
        except BaseException:
            self.stop()
            raise

    # ------------------------------------------------------------------ process
    def _wait_api(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise TwinError(f"the twin exited with status {self.proc.returncode} before its API came up:\n"
                                + self.log_tail())
            try:
                request(self.base_url, "GET", "/api/state", timeout=2)
                return
            except SimClientError:
                if time.monotonic() > deadline:
                    raise TwinError(f"the twin's API did not come up within {timeout:g} s:\n" + self.log_tail()) \
                        from None
                time.sleep(POLL_S)

    def log_tail(self, lines: int = 40) -> str:
        try:
            text = self.log_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    @property
    def running(self) -> bool:
        return self.proc.poll() is None

    def stop(self) -> int | None:
        """SIGTERM (the station stops its transactions and closes), SIGKILL after 10 s; the exit status."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(STOP_TIMEOUT_S)
        if not self._log.closed:
            self._log.close()
        return self.proc.returncode

    # ------------------------------------------------------------------ bench API
    def _call(self, method: str, path: str, body: dict | None = None) -> Any:
        if self.proc.poll() is not None:
            raise TwinError(f"the twin is not running (exit status {self.proc.returncode}):\n" + self.log_tail())
        return request(self.base_url, method, path, body)

    def plug(self, connector: int = 1) -> dict:
        return self._call("POST", f"/api/connectors/{int(connector)}/plug")

    def unplug(self, connector: int = 1) -> dict:
        return self._call("POST", f"/api/connectors/{int(connector)}/unplug")

    def tap(self, id_tag: str) -> dict:
        return self._call("POST", "/api/rfid", {"idTag": id_tag})

    def fault(self, rule: dict | None = None, **fields: Any) -> dict:
        """Install a protocol fault rule (POST /api/faults): ``fault(on="StartTransaction",
        direction="out", do="drop", count=1)``; returns it with its ``id``."""
        return self._call("POST", "/api/faults", {**(rule or {}), **fields})

    def clear_faults(self) -> None:
        self._call("DELETE", "/api/faults")

    def network(self, online: bool | None = None, **fields: Any) -> dict:
        """POST /api/network: ``online``, ``latency_ms``, ``jitter_ms``, ``drop_rate``,
        ``half_open``, ``close_code``, ``seed`` (any subset)."""
        body = dict(fields)
        if online is not None:
            body["online"] = online
        return self._call("POST", "/api/network", body)

    def state(self) -> dict:
        return self._call("GET", "/api/state")

    def trace(self, since: int = 0) -> dict:
        """GET /api/trace?since=N: ``{"next": n, "frames": [trace records]}``."""
        return self._call("GET", f"/api/trace?since={int(since)}")

    # ------------------------------------------------------------------ waiting
    def wait_for_status(self, connector: int, status: str, timeout: float = 10.0) -> dict:
        """Wait until the connector's status is ``status``; returns the connector's state."""
        deadline = time.monotonic() + timeout
        seen = None
        while True:
            conns = {c.get("id"): c for c in self.state().get("connectors", [])}
            conn = conns.get(connector)
            seen = conn.get("status") if conn else f"no connector {connector}"
            if seen == status:
                return conn
            if time.monotonic() > deadline:
                raise TwinError(f"connector {connector} is {seen}, not {status}, after {timeout:g} s")
            time.sleep(POLL_S)

    def wait_for_frame(self, action: str, direction: str = "out", match: dict | None = None,
                       timeout: float = 10.0) -> dict:
        """The next trace record of a CALL of ``action`` sent in ``direction`` ("out": by
        the station, "in": by the CSMS) whose payload contains ``match`` (nested subset).
        Looks at frames after the one it last returned (from the start of the station at
        first), so two calls return two frames. Returns the record (``frame`` is the
        OCPP-J array); ``answer(record)`` waits for the reply to it."""
        from twin.csms.matching import subset_match  # imported here: loading the plugin stays cheap

        deadline = time.monotonic() + timeout
        since = self.cursor
        seen: list[str] = []
        while True:
            got = self.trace(since)
            for rec in got.get("frames", []):
                frame = rec.get("frame")
                if (isinstance(frame, list) and len(frame) == 4 and frame[0] == 2 and frame[2] == action
                        and rec.get("dir") == direction and subset_match(match or {}, frame[3])
                        and not rec.get("lost") and rec.get("do") != "drop"):
                    self.cursor = rec["n"] + 1
                    return rec
                if isinstance(frame, list) and len(frame) == 4 and frame[0] == 2:
                    seen.append(f"{rec.get('dir')} {frame[2]}")
            since = max(since, got.get("next", since))
            if time.monotonic() > deadline:
                raise TwinError(f"no {action} call ({direction}) matching {match or {}} within {timeout:g} s; "
                                f"calls seen: {', '.join(seen[-15:]) or 'none'}")
            time.sleep(POLL_S)

    def answer(self, record: dict, timeout: float = 10.0) -> dict:
        """The reply (CALLRESULT or CALLERROR record) to the call in ``record``."""
        uid = record["frame"][1]
        back = "in" if record["dir"] == "out" else "out"
        deadline = time.monotonic() + timeout
        since = record["n"] + 1
        while True:
            got = self.trace(since)
            for rec in got.get("frames", []):
                frame = rec.get("frame")
                if (rec.get("dir") == back and isinstance(frame, list) and len(frame) >= 3
                        and frame[0] in (3, 4) and frame[1] == uid):
                    return rec
            since = max(since, got.get("next", since))
            if time.monotonic() > deadline:
                raise TwinError(f"no answer to {record['frame'][2]} {uid} within {timeout:g} s")
            time.sleep(POLL_S)


@pytest.hookimpl(tryfirst=True, hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if report.when == "call":
        item.stash[_REPORT_KEY] = report


_REPORT_KEY = pytest.StashKey()


@pytest.fixture
def ocpp_twin(request, tmp_path_factory):
    """Factory: ``ocpp_twin(csms_url, id=None, keys=None, connectors=None) -> TwinClient``.
    Every station started is stopped at the end of the test, also when it failed; a
    failed test gets the stations' log tails in its report."""
    started: list[TwinClient] = []

    def start(csms_url: str, id: str | None = None, keys: dict | None = None,  # noqa: A002 - the fixture's API
              connectors: int | None = None) -> TwinClient:
        cp_id = id or "TWIN-PYTEST-" + uuid.uuid4().hex[:8].upper()
        client = TwinClient(csms_url, cp_id, tmp_path_factory.mktemp("ocpp-twin"), keys=keys, connectors=connectors)
        started.append(client)
        return client

    try:
        yield start
    finally:
        report = request.node.stash.get(_REPORT_KEY, None)
        for client in started:
            client.stop()
            if report is not None and report.failed:
                report.sections.append((f"ocpp-twin {client.charge_point_id} log", client.log_tail()))
