"""Schema-valid OCPP 1.6 payloads from the ``ocpp`` package's own JSON schemas.

A small generator over the keywords those schemas use (type, properties, required,
additionalProperties, enum, maxLength, items, format, multipleOf). Each value is either
*realistic* (an idTag or transactionId the station knows, connector 1 or 2, a timestamp
near the fake clock) so that deep paths are reached, or an *edge* value the schema still
allows: "", a maximal-length string, non-ASCII and mixed-case idTags, 0, -1, 2**31-1,
integers beyond 64 bits, past and far-future dates, a leap second. The JSON schemas put
no bounds on integers and no minLength on idTag (OCPP-J 1.6 §4.2 only constrains what the
schema says), so all of these are legal messages.

Everything is drawn from one ``random.Random``: the same seed gives the same payloads.
Why not hypothesis-jsonschema: its engine owns the randomness and the time budget, so a
run could not be replayed from a printed integer seed, nor biased by what the station
currently holds (its running transactionIds, its reservations).
"""

from __future__ import annotations

import json
import random
import string
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable

import ocpp
from ocpp.messages import get_validator

from twin.core.keys import KEYS, SUPPORTED_MEASURANDS
from twin.link import is_unicode  # noqa: F401 - what the link lets through (re-exported for the fuzzers)

SCHEMA_DIR = Path(ocpp.__file__).resolve().parent / "v16" / "schemas"

# The CSMS-initiated calls of OCPP 1.6 (core and the five optional profiles), and those the
# security whitepaper (edition 3) adds.
CSMS_ACTIONS = (
    "CancelReservation", "ChangeAvailability", "ChangeConfiguration", "ClearCache", "ClearChargingProfile",
    "DataTransfer", "GetCompositeSchedule", "GetConfiguration", "GetDiagnostics", "GetLocalListVersion",
    "RemoteStartTransaction", "RemoteStopTransaction", "ReserveNow", "Reset", "SendLocalList",
    "SetChargingProfile", "TriggerMessage", "UnlockConnector", "UpdateFirmware",
    "CertificateSigned", "DeleteCertificate", "ExtendedTriggerMessage", "GetInstalledCertificateIds", "GetLog",
    "InstallCertificate", "SignedUpdateFirmware",
)

# Schemas with "multipleOf": 0.1 are validated on Decimals, as ``ocpp.messages.validate_payload``
# (and twin.link) do; the validator cache of the ``ocpp`` package is keyed by schema name only,
# so the choice of parse_float per schema must match theirs.
_DECIMAL_CALLS = {"SetChargingProfile", "RemoteStartTransaction"}
_DECIMAL_RESULTS = {"GetCompositeSchedule"}

INT32_MAX = 2**31 - 1
EDGE_INTS = (0, -1, 1, INT32_MAX, -(2**31), 2**31, 2**63, 10**20, -(10**20))
# Numbers the schema types as "number" with multipleOf 0.1: beyond about 1e20 the Decimal
# check of the validator itself overflows (twin.link answers PropertyConstraintViolation),
# so the edges stay below that.
EDGE_NUMBERS = (0.0, 0.1, -0.1, -1.0, 5.9, 6.0, 32.1, 1e6, float(INT32_MAX), 1e15)
MEASURANDS = sorted(SUPPORTED_MEASURANDS)


@lru_cache(maxsize=None)
def schema(name: str) -> dict:
    """The ``ocpp`` package's OCPP 1.6 JSON schema ``name`` (e.g. "ReserveNow", "ReserveNowResponse"),
    with its ``#/definitions`` references inlined (the security whitepaper's schemas use them)."""
    raw = json.loads((SCHEMA_DIR / f"{name}.json").read_text(encoding="utf-8"))
    definitions = raw.get("definitions", {})

    def inline(node: Any) -> Any:
        if isinstance(node, dict):
            ref = node.get("$ref")
            if isinstance(ref, str) and ref.startswith("#/definitions/"):
                return inline(definitions[ref.rsplit("/", 1)[-1]])
            return {k: inline(v) for k, v in node.items() if k != "definitions"}
        if isinstance(node, list):
            return [inline(v) for v in node]
        return node

    return inline(raw)


def validation_errors(action: str, payload: Any, *, response: bool = False) -> list[str]:
    """What the ``ocpp`` package's validator finds wrong with ``payload`` (empty = valid).

    ``response`` selects the ``<action>Response`` schema (a CALLRESULT payload)."""
    decimal = action in (_DECIMAL_RESULTS if response else _DECIMAL_CALLS)
    validator = get_validator(3 if response else 2, action, "1.6", parse_float=Decimal if decimal else float)
    try:
        instance = json.loads(json.dumps(payload, allow_nan=False), parse_float=Decimal if decimal else float)
        return [f"{'/'.join(map(str, e.path)) or 'payload'}: {e.message}" for e in validator.iter_errors(instance)]
    except (ArithmeticError, TypeError, ValueError) as e:
        return [f"payload cannot be validated: {e}"]


def canonical_json(value: Any) -> str:
    """One text per JSON value (sorted keys): how the fuzzers tell a resent message from a new one."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def ts(when: datetime) -> str:
    when = when.astimezone(timezone.utc)
    return when.strftime("%Y-%m-%dT%H:%M:%S.") + f"{when.microsecond // 1000:03d}Z"


@dataclass
class World:
    """What the generator knows about the station, for realistic values."""

    now: datetime
    connectors: int = 2
    id_tags: list[str] = field(default_factory=lambda: ["04A2B3C4", "TAG-0001", "TAG-0002", "PARENT-1"])
    transaction_ids: list[int] = field(default_factory=list)
    running: dict[int, int] = field(default_factory=dict)  # connector -> transactionId of its running session
    reservation_ids: list[int] = field(default_factory=lambda: [1, 2])
    profile_ids: list[int] = field(default_factory=lambda: [1, 2, 3])
    # URIs for UpdateFirmware/GetDiagnostics: only loopback, and a port nothing listens on,
    # so a transfer fails fast and no traffic leaves the machine.
    closed_port: int = 9
    # False in the process-level run: keys that set waits (MessageTimeout, retry intervals...)
    # keep values of seconds, so a bounded run can still drain. The core run, on a fake
    # clock, takes the whole range.
    long_waits: bool = True


# Keys whose value is a wait in seconds (see World.long_waits).
WAIT_KEYS = {"HeartbeatInterval", "MessageTimeout", "TransactionMessageRetryInterval", "ConnectionTimeOut",
             "MeterValueSampleInterval", "ClockAlignedDataInterval", "MinimumStatusDuration",
             "WebSocketPingInterval", "TransactionMessageAttempts", "ResetRetries"}


class PayloadGen:
    """Draws payloads from the schemas. ``edge`` is the chance that a value is an edge value."""

    def __init__(self, rng: random.Random, world: World, edge: float = 0.3):
        self.rng = rng
        self.world = world
        self.edge = edge

    # ------------------------------------------------------------------ entry points
    def call(self, action: str) -> dict:
        """A payload for the CSMS-initiated call ``action`` that its schema accepts."""
        def draw() -> dict:
            realistic = REALISTIC_CALLS.get(action)
            if realistic is not None and not self.is_edge():
                return realistic(self)
            payload = self._object(schema(action), action, top=action)
            if action == "ChangeConfiguration":
                payload["value"] = self.key_value(payload["key"])  # typed for its key, not schema noise
            return payload

        return self._valid(action, draw, response=False)

    def response(self, action: str) -> dict:
        """A CALLRESULT payload for the station-initiated call ``action`` (schema-valid, possibly strange)."""
        return self._valid(action, lambda: self._object(schema(action + "Response"), action + "Response",
                                                        top=action + "Response"), response=True)

    def _valid(self, action: str, draw: Callable[[], dict], *, response: bool) -> dict:
        # The field rules below are written to stay inside the schema; this is the check
        # that they do (a generator bug must show, not send an invalid message).
        payload = draw()
        errors = validation_errors(action, payload, response=response)
        if errors:
            raise AssertionError(f"generated {action}{'Response' if response else ''} is not schema-valid: "
                                 f"{errors}: {payload!r}")
        return payload

    # ------------------------------------------------------------------ schema walk
    def _value(self, sch: dict, name: str, top: str) -> Any:
        rule = FIELD_RULES.get((top, name)) or FIELD_RULES.get(("*", name))
        if rule is not None:
            return rule(self, sch)
        if "enum" in sch:
            return self.rng.choice(sch["enum"])
        kind = sch.get("type")
        if kind == "object":
            return self._object(sch, name, top)
        if kind == "array":
            n = self.rng.choice([0, 1, 1, 2, 3]) if not self.is_edge() else self.rng.choice([0, 30])
            return [self._value(sch.get("items", {}), name, top) for _ in range(n)]
        if kind == "string":
            if sch.get("format") == "date-time":
                return self.date()
            if sch.get("format") == "uri":
                return self.location()
            return self.text(sch.get("maxLength"))
        if kind == "integer":
            return self.integer()
        if kind == "number":
            return self.number()
        if kind == "boolean":
            return self.rng.random() < 0.5
        raise NotImplementedError(f"{top}.{name}: schema keyword set not handled: {sch}")

    def _object(self, sch: dict, name: str, top: str) -> dict:
        required = set(sch.get("required", ()))
        out: dict = {}
        for prop, sub in sch.get("properties", {}).items():
            if prop in required or self.rng.random() < 0.6:
                out[prop] = self._value(sub, prop, top)
        return out

    # ------------------------------------------------------------------ value helpers
    def is_edge(self) -> bool:
        return self.rng.random() < self.edge

    def integer(self, realistic: tuple[int, ...] = (0, 1, 2, 5, 10, 60)) -> int:
        return self.rng.choice(EDGE_INTS if self.is_edge() else realistic)

    def number(self, realistic: tuple[float, ...] = (6.0, 10.0, 13.5, 16.0, 32.0, 7400.0, 11000.0)) -> float:
        return self.rng.choice(EDGE_NUMBERS if self.is_edge() else realistic)

    def text(self, max_length: int | None, realistic: tuple[str, ...] = ("x", "fuzz", "XJ Power", "n/a")) -> str:
        if not self.is_edge():
            return self.rng.choice([s for s in realistic if max_length is None or len(s) <= max_length] or [""])
        return self.rng.choice(edge_strings(max_length or 4096, self.rng))

    def id_tag(self) -> str:
        """An idTag (IdToken, CiString20): a known one, a differently-cased known one, or an edge."""
        known = self.world.id_tags
        if not self.is_edge():
            tag = self.rng.choice(known)
            return tag.lower() if self.rng.random() < 0.1 else tag
        return self.rng.choice(edge_strings(20, self.rng) + ["ÄÖÜ-Karte-ß", "カード1", "tag-0001"])

    def connector_id(self) -> int:
        if self.is_edge():
            return self.rng.choice([0, -1, self.world.connectors + 1, INT32_MAX, 2**63, -(10**20)])
        return self.rng.choice([1, 2, 1, 2, 0][: self.world.connectors + 3])

    def transaction_id(self) -> int:
        if self.world.running and not self.is_edge() and self.rng.random() < 0.7:
            return self.rng.choice(sorted(self.world.running.values()))
        if self.world.transaction_ids and not self.is_edge():
            return self.rng.choice(self.world.transaction_ids)
        return self.rng.choice(EDGE_INTS + (1, 2, 1000))

    def date(self) -> str:
        """An RFC 3339 date-time: near the fake clock, or far past / far future / odd forms."""
        now = self.world.now
        if not self.is_edge():
            delta = timedelta(seconds=self.rng.choice([-3600, -60, -1, 0, 1, 30, 60, 300, 3600, 86400, 7 * 86400]))
            when = now + delta
            form = self.rng.random()
            if form < 0.6:
                return ts(when)
            if form < 0.8:
                return when.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
            return when.astimezone(timezone(timedelta(hours=2))).isoformat(timespec="seconds")
        return self.rng.choice([
            "1970-01-01T00:00:00Z", "0001-01-01T00:00:00Z", "0001-01-01T00:00:00+14:00",
            "9999-12-31T23:59:59.999Z", "9999-12-31T23:59:59-14:00", "2038-01-19T03:14:08Z",
            "2016-12-31T23:59:60Z",  # a leap second: RFC 3339 §5.7 allows :60
            ts(now).replace("T", "t").replace("Z", "z"),  # RFC 3339 §5.6: "T" and "Z" may be lower case
            now.strftime("%Y-%m-%dT%H:%M:%S.") + "123456789Z", ts(now - timedelta(milliseconds=1)), ts(now),
        ])

    def location(self) -> str:
        port = self.world.closed_port
        return self.rng.choice([
            f"http://127.0.0.1:{port}/firmware/iEVQC33-V1.11.bin", f"https://127.0.0.1:{port}/fw.bin",
            f"ftp://user:secret@127.0.0.1:{port}/diag/", f"ftps://127.0.0.1:{port}/up",
            f"http://127.0.0.1:{port}/..%2F..%2Ftwin.db", f"http://localhost:{port}/%2Ftmp%2Fx",
            f"http://[::1]:{port}/" + "a" * 2000, "file:///nonexistent/fw.bin", f"http://127.0.0.1:{port}/?q=%00",
        ])

    def key_name(self) -> str:
        """A configuration key: a known one (sometimes differently cased), or an unknown/edge one."""
        if self.is_edge():
            return self.rng.choice(["", "UnknownKey", "k" * 50, "Heartbeat Interval", "ÄKey", "heartbeatinterval"])
        name = self.rng.choice(sorted(KEYS))
        return name.upper() if self.rng.random() < 0.05 else name

    def key_value(self, key: str) -> str:
        """A value for ChangeConfiguration (CiString500): typed for the key, or an edge."""
        d = KEYS.get(key) or next((k for n, k in KEYS.items() if n.lower() == key.lower()), None)
        if d is not None and d.name in WAIT_KEYS and not self.world.long_waits and self.is_edge():
            # The edge values below include 2**31-1 s: a legal retry interval the station
            # obeys (a 68-year wait), which no bounded run could drain. Edges of a waiting
            # key stay short unless the run allows long waits.
            return self.rng.choice(["0", "1", "-1", "10", "1.5", "", "ten"])
        if d is None or self.is_edge():
            return self.rng.choice(["", " ", "0", "-1", str(INT32_MAX), str(2**31), "9" * 40, "true", "TRUE",
                                    "1.5", "0x10", "v" * 500, "Energy.Active.Import.Register,Bogus", "ÄÖÜ"])
        kind = getattr(d, "kind", "str")
        if d.name == "AuthorizationKey":  # hex, text, and the lengths just outside 16-20 bytes
            return self.rng.choice(["4F43415F4F4354545F61646D696E5F74657374", "0123456789abcdef" * 2,
                                    "sixteen-chars-ok", "a" * 15, "a" * 21, "ab" * 21, "zz" * 16, "é" * 12])
        if d.name == "SecurityProfile":
            return self.rng.choice(["0", "1", "2", "3", "4", "-1"])
        if kind == "bool":
            return self.rng.choice(["true", "false", "True", "FALSE"])
        if kind == "int":
            if key in WAIT_KEYS:
                small = ["0", "1", "2", "5", "10", "30", "60"]
                if key == "MessageTimeout":
                    small = ["1", "2", "5", "10", "30"]
                if key == "TransactionMessageAttempts":
                    small = ["0", "1", "2", "3", "5"]
                if not self.world.long_waits:
                    return self.rng.choice([v for v in small if 1 <= int(v) <= 10])
                return self.rng.choice(small + ["3600", str(INT32_MAX)])
            low, high = getattr(d, "minimum", None), getattr(d, "maximum", None)
            return self.rng.choice([str(low or 0), "1", "10", str(high if high is not None else INT32_MAX)])
        if kind == "csl":
            allowed = sorted(getattr(d, "allowed", None) or [])
            if not allowed:  # ConnectorPhaseRotation: "<connectorId>.<rotation>" items
                return self.rng.choice(["1.RST", "1.RST,2.RTS", "0.NotApplicable", "3.RST"])
            n = self.rng.choice([0, 1, 2, len(allowed)])
            return ",".join(self.rng.sample(allowed, min(n, len(allowed))))
        return self.text(500)


def edge_strings(max_length: int, rng: random.Random) -> list[str]:
    """Strings the schema allows that a station may not expect."""
    n = max(1, max_length)
    mixed = "".join(rng.choice(string.ascii_letters) for _ in range(n))
    return [
        "", " ", mixed, "Z" * n, ("é" * n)[:n], ("🔌" * n)[:n], "\u0000", "\t\n", "'; DROP TABLE kv; --"[:n],
        ("%2F.." * n)[:n], "\ud800",  # a lone surrogate: legal JSON text (RFC 8259 §8.2), not valid UTF-8
    ]


# ---------------------------------------------------------------------- field rules
# (schema name or "*", property name) -> how to draw it. A rule returns a value that the
# property's schema accepts.

def _period_list(g: PayloadGen, sch: dict) -> list[dict]:
    item = sch["items"]
    if g.is_edge():
        n = g.rng.choice([0, 1, 25, 40])
        starts = [g.integer((0, 60, 3600)) for _ in range(n)]
    else:
        n = g.rng.choice([1, 1, 2, 3])
        starts = sorted({0} | {g.rng.choice([60, 300, 900, 3600, 7200]) for _ in range(n - 1)})
    periods = []
    for start in starts:
        p = {"startPeriod": start, "limit": g.number((6.0, 8.0, 10.0, 16.0, 32.0))}
        if g.rng.random() < 0.3:
            p["numberPhases"] = g.integer((1, 3))
        periods.append(p)
    assert set(item["properties"]) >= {"startPeriod", "limit"}
    return periods


def _local_list(g: PayloadGen, sch: dict) -> list[dict]:
    statuses = sch["items"]["properties"]["idTagInfo"]["properties"]["status"]["enum"]
    n = g.rng.choice([0, 1, 2, 3]) if not g.is_edge() else g.rng.choice([0, 101, 2])
    out = []
    for _ in range(n):
        entry: dict = {"idTag": g.id_tag()}
        if g.rng.random() < 0.85:
            info: dict = {"status": g.rng.choice(statuses)}
            if g.rng.random() < 0.3:
                info["expiryDate"] = g.date()
            if g.rng.random() < 0.3:
                info["parentIdTag"] = g.id_tag()
            entry["idTagInfo"] = info
        out.append(entry)
    if out and g.is_edge():
        out.append(dict(out[0]))  # the same idTag twice in one list
    return out


def _config_keys(g: PayloadGen, sch: dict) -> list[str]:
    if g.is_edge():
        return g.rng.choice([[], [""], ["k" * 50], sorted(KEYS) * 4])  # 4x the known keys: > GetConfigurationMaxKeys
    return [g.key_name() for _ in range(g.rng.choice([1, 2, 3]))]


def _requested_message(g: PayloadGen, sch: dict) -> str:
    # BootNotification as often as all others together in Pending: §4.2 makes TriggerMessage
    # the way a CSMS lets a Pending station re-register.
    return g.rng.choice(sch["enum"] + ["BootNotification"] * 2)


def _interval(g: PayloadGen, sch: dict) -> int:
    return g.integer((0, 1, 10, 60, 300))


FIELD_RULES: dict[tuple[str, str], Callable[[PayloadGen, dict], Any]] = {
    ("*", "connectorId"): lambda g, s: g.connector_id(),
    ("*", "idTag"): lambda g, s: g.id_tag(),
    ("*", "parentIdTag"): lambda g, s: g.id_tag(),
    ("*", "transactionId"): lambda g, s: g.transaction_id(),
    ("*", "reservationId"): lambda g, s: g.rng.choice(g.world.reservation_ids + [3]) if not g.is_edge()
    else g.integer(),
    ("*", "chargingProfileId"): lambda g, s: g.rng.choice(g.world.profile_ids) if not g.is_edge() else g.integer(),
    ("ClearChargingProfile", "id"): lambda g, s: g.rng.choice(g.world.profile_ids) if not g.is_edge()
    else g.integer(),
    ("*", "stackLevel"): lambda g, s: g.integer((0, 1, 2, 3, 10)),
    ("*", "listVersion"): lambda g, s: g.integer((1, 2, 3, 5, 10)),
    ("*", "duration"): lambda g, s: g.integer((60, 900, 3600, 86400)),
    ("*", "startPeriod"): lambda g, s: g.integer((0, 60, 3600)),
    ("*", "numberPhases"): lambda g, s: g.integer((1, 3)),
    ("*", "retries"): lambda g, s: g.integer((0, 1, 2)),
    ("*", "retryInterval"): lambda g, s: g.integer((0, 1, 5)),
    ("*", "chargingSchedulePeriod"): _period_list,
    ("*", "localAuthorizationList"): _local_list,
    ("ChangeConfiguration", "key"): lambda g, s: g.key_name(),
    ("GetConfiguration", "key"): _config_keys,
    ("TriggerMessage", "requestedMessage"): _requested_message,
    ("BootNotificationResponse", "interval"): _interval,
}



# ---------------------------------------------------------------------- realistic calls
# Whole calls as a CSMS that means it would send them, so that the paths behind the
# semantic checks (a TxProfile for the running transaction, a remote start on a free
# connector) are reached and not only their refusals.

def _schedule(g: PayloadGen, kind: str) -> dict:
    rng = g.rng
    unit = rng.choice(["A", "A", "W"])
    limits = (6.0, 10.0, 16.0, 32.0) if unit == "A" else (4140.0, 7400.0, 11000.0, 22000.0)
    starts = sorted({0} | {rng.choice([60, 300, 900, 3600]) for _ in range(rng.choice([0, 0, 1, 2]))})
    sched: dict = {"chargingRateUnit": unit,
                   "chargingSchedulePeriod": [{"startPeriod": t, "limit": rng.choice(limits)} for t in starts]}
    if kind in ("Absolute", "Recurring"):
        sched["startSchedule"] = ts(g.world.now - timedelta(seconds=rng.choice([0, 60, 600])))
    if rng.random() < 0.6:
        sched["duration"] = rng.choice([600, 3600, 86400])
    return sched


def _profile(g: PayloadGen, purpose: str, transaction_id: int | None = None) -> dict:
    rng = g.rng
    kind = rng.choices(["Absolute", "Relative", "Recurring"], weights=[5, 3, 2])[0]
    profile: dict = {"chargingProfileId": rng.choice(g.world.profile_ids), "stackLevel": rng.choice([0, 1, 2, 3]),
                     "chargingProfilePurpose": purpose, "chargingProfileKind": kind,
                     "chargingSchedule": _schedule(g, kind)}
    if kind == "Recurring":
        profile["recurrencyKind"] = rng.choice(["Daily", "Weekly"])
    if transaction_id is not None:
        profile["transactionId"] = transaction_id
    if rng.random() < 0.2:
        profile["validFrom"] = ts(g.world.now - timedelta(hours=1))
        profile["validTo"] = ts(g.world.now + timedelta(days=1))
    return profile


def _set_charging_profile(g: PayloadGen) -> dict:
    rng = g.rng
    purpose = rng.choice(["TxDefaultProfile", "TxProfile", "ChargePointMaxProfile"])
    if purpose == "ChargePointMaxProfile":
        return {"connectorId": 0, "csChargingProfiles": _profile(g, purpose)}
    if purpose == "TxProfile" and g.world.running:
        cid, tid = rng.choice(sorted(g.world.running.items()))
        return {"connectorId": cid, "csChargingProfiles": _profile(g, purpose, tid if rng.random() < 0.5 else None)}
    cid = rng.choice([0, 1, 2]) if purpose == "TxDefaultProfile" else rng.choice([1, 2])
    return {"connectorId": min(cid, g.world.connectors), "csChargingProfiles": _profile(g, purpose)}


def _remote_start(g: PayloadGen) -> dict:
    rng = g.rng
    payload: dict = {"idTag": rng.choice(g.world.id_tags)}
    if rng.random() < 0.7:
        payload["connectorId"] = rng.choice(range(1, g.world.connectors + 1))
    if rng.random() < 0.25:
        payload["chargingProfile"] = _profile(g, "TxProfile")  # no transactionId: errata 3.41/3.42
    return payload


def _clear_charging_profile(g: PayloadGen) -> dict:
    rng = g.rng
    return rng.choice([{"id": rng.choice(g.world.profile_ids)}, {},
                       {"connectorId": rng.choice([0, 1, 2]), "chargingProfilePurpose": "TxDefaultProfile"},
                       {"chargingProfilePurpose": rng.choice(["TxProfile", "ChargePointMaxProfile"]),
                        "stackLevel": rng.choice([0, 1, 2])}])


REALISTIC_CALLS: dict[str, Callable[[PayloadGen], dict]] = {
    "SetChargingProfile": _set_charging_profile,
    "RemoteStartTransaction": _remote_start,
    "ClearChargingProfile": _clear_charging_profile,
}
