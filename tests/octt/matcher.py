"""OCTT-style expectations for tests that play the CSMS (`twin.csms.Csms`).

- `expect_sequence`: CP->CSMS calls in order, with only the swaps OCTT allows
  (OCTT §1.2: StatusNotification(Charging) <-> StartTransaction.req and
  StatusNotification(Finishing) <-> StopTransaction.req, when written next to each
  other) plus explicit `any_order(...)` groups for the per-case "may be reversed" notes.
- `forbid`: no such call in a window (TC_068 step 1, TC_023/041, TC_028).
- `wait_status`: the connector's latest reported status.
- The OCTT reusable/memory states a CSMS can establish by itself (Tables 103-116),
  plus `charging`/`authorized`, which take the bench action (plug, swipe) as a callable.

Steps are ``(action, pattern)``; ``pattern`` is a dict the payload must contain
(recursive subset match, values may be predicates) or a predicate on the payload.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from twin.csms import CallErrorReceived, Csms, Msg
from twin.csms.matching import PayloadPattern, payload_matches

Step = tuple[str, PayloadPattern]


@dataclass(frozen=True)
class AnyOrder:
    steps: tuple[Step, ...]


def any_order(*steps: Step) -> AnyOrder:
    """These steps may arrive in any order among themselves (but all after the previous step)."""
    return AnyOrder(tuple(steps))


def _swap_key(step: Step) -> str:
    action, pattern = step
    if action == "StatusNotification" and isinstance(pattern, Mapping):
        return f"StatusNotification:{pattern.get('status')}"
    return action


# OCTT §1.2: the only two swaps allowed in every test case.
_OCTT_SWAPS = (
    {"StatusNotification:Charging", "StartTransaction"},
    {"StatusNotification:Finishing", "StopTransaction"},
)


def _groups(steps: Sequence[Step | AnyOrder]) -> list[list[Step]]:
    """Split the expectation into groups that must come in order; inside a group, any order."""
    groups: list[list[Step]] = []
    i = 0
    while i < len(steps):
        step = steps[i]
        following = steps[i + 1] if i + 1 < len(steps) else None
        if isinstance(step, AnyOrder):
            groups.append(list(step.steps))
            i += 1
        elif isinstance(following, tuple) and {_swap_key(step), _swap_key(following)} in _OCTT_SWAPS:
            groups.append([step, following])
            i += 2
        else:
            groups.append([step])
            i += 1
    return groups


def _step_matches(step: Step, msg: Msg) -> bool:
    return msg.action == step[0] and payload_matches(step[1], msg.payload)


def _match(groups: list[list[Step]], calls: list[Msg]) -> tuple[list[Msg], int]:
    """Greedy in-order match; returns (matched messages in expectation order, groups completed).

    A call that matches no step of the current group but a step of a later group is
    an ordering violation (AssertionError). Calls matching no open step are ignored
    (Heartbeats, MeterValues, repeated notifications).
    """
    matched: dict[tuple[int, int], Msg] = {}
    g = 0
    for msg in calls:
        if g == len(groups):
            break
        open_steps = [j for j in range(len(groups[g])) if (g, j) not in matched]
        hit = next((j for j in open_steps if _step_matches(groups[g][j], msg)), None)
        if hit is not None:
            matched[(g, hit)] = msg
            if len(open_steps) == 1:
                g += 1
            continue
        for later in range(g + 1, len(groups)):
            for step in groups[later]:
                if _step_matches(step, msg):
                    waiting = [groups[g][j] for j in open_steps]
                    raise AssertionError(
                        f"out of order: {msg} (expected step {step}) arrived while still waiting for {waiting}"
                    )
    ordered = [matched[key] for key in sorted(matched)]
    return ordered, g


async def expect_sequence(
    csms: Csms, steps: Sequence[Step | AnyOrder], *, since: int | None = None, timeout: float = 30
) -> list[Msg]:
    """Wait until ``steps`` are seen among the CP->CSMS calls from ``since`` (default: the csms cursor).

    Returns the matched calls in expectation order. Fails at once on an order
    violation, and with the progress so far on timeout.
    """
    start = csms.cursor if since is None else since
    groups = _groups(steps)

    def check() -> list[Msg] | None:
        ordered, done = _match(groups, csms.calls(after=start))
        return ordered if done == len(groups) else None

    try:
        return await csms.wait_until(check, timeout, "an expected sequence")
    except TimeoutError:
        _, done = _match(groups, csms.calls(after=start))
        seen = "\n  ".join(str(m) for m in csms.calls(after=start))
        raise AssertionError(
            f"sequence incomplete after {timeout}s: {done}/{len(groups)} groups matched, "
            f"next expected {groups[done]}; CP calls since #{start}:\n  {seen}"
        ) from None


def forbid(
    csms: Csms,
    actions: str | Iterable[str],
    from_mark: int,
    pred: PayloadPattern = None,
    *,
    until: int | None = None,
) -> None:
    """Assert that no CP->CSMS call of ``actions`` (matching ``pred``) arrived in messages[from_mark:until]."""
    wanted = {actions} if isinstance(actions, str) else set(actions)
    end = len(csms.messages) if until is None else until
    offending = [
        m for m in csms.calls(after=from_mark)
        if m.index < end and m.action in wanted and payload_matches(pred, m.payload)
    ]
    assert not offending, "forbidden calls arrived: " + "; ".join(str(m) for m in offending)


def latest_status(csms: Csms, connector_id: int, since: int = 0) -> Msg | None:
    notes = csms.calls("StatusNotification", after=since)
    return next((m for m in reversed(notes) if m.payload.get("connectorId") == connector_id), None)


async def wait_status(csms: Csms, connector_id: int, status: str, timeout: float = 30, since: int = 0) -> Msg:
    """Wait until the latest StatusNotification (from ``since``) of ``connector_id`` reports ``status``."""

    def check() -> Msg | None:
        note = latest_status(csms, connector_id, since)
        return note if note is not None and note.payload.get("status") == status else None

    return await csms.wait_until(check, timeout, f"connector {connector_id} to report {status}")


# --------------------------------------------------------------------------------------
# OCTT reusable and memory states (Tables 103-116) a CSMS can reach on its own.

Action = Callable[[], Awaitable[Any]]


async def call_expecting(csms: Csms, action: str, payload: dict[str, Any], status: str = "Accepted") -> dict[str, Any]:
    conf = await csms.call(action, payload)
    assert conf.get("status") == status, f"{action} {payload} answered {conf}, expected status {status}"
    return conf


async def set_unavailable(csms: Csms, connector_id: int, connectors: Iterable[int] = (1,)) -> None:
    """SetConnectorUnavailable / SetChargePointUnavailable (connector_id 0): SN Unavailable for each."""
    mark = len(csms.messages)
    await call_expecting(csms, "ChangeAvailability", {"connectorId": connector_id, "type": "Inoperative"})
    targets = [0, *connectors] if connector_id == 0 else [connector_id]
    for target in targets:
        await wait_status(csms, target, "Unavailable", since=mark)


async def reserved(
    csms: Csms, connector_id: int, id_tag: str, reservation_id: int = 1, expiry: datetime | None = None
) -> Msg:
    """Reserved: ReserveNow(conn, valid tag) Accepted -> SN Reserved; returns that notification.

    For connector 0 (TC_049) the station keeps one connector for the tag, so the
    Reserved notification may come from any connector.
    """
    mark = len(csms.messages)
    expiry = expiry or datetime.now(UTC) + timedelta(hours=1)
    await call_expecting(
        csms,
        "ReserveNow",
        {
            "connectorId": connector_id,
            "expiryDate": expiry.isoformat().replace("+00:00", "Z"),
            "idTag": id_tag,
            "reservationId": reservation_id,
        },
    )
    pattern: dict[str, Any] = {"status": "Reserved"}
    if connector_id != 0:
        pattern["connectorId"] = connector_id
    return await csms.wait_for("StatusNotification", pattern, after=mark)


async def id_tag_local_auth_list(csms: Csms, id_tag: str, list_version: int = 1) -> None:
    """IdTagLocalAuthList: SendLocalList(Full, version 1, [tag Accepted]) Accepted."""
    await call_expecting(
        csms,
        "SendLocalList",
        {
            "listVersion": list_version,
            "updateType": "Full",
            "localAuthorizationList": [{"idTag": id_tag, "idTagInfo": {"status": "Accepted"}}],
        },
    )


async def set_charging_profile(csms: Csms, connector_id: int, profile: dict[str, Any]) -> None:
    """SetChargingProfile memory state: SetChargingProfile(conn, profile) Accepted."""
    await call_expecting(csms, "SetChargingProfile", {"connectorId": connector_id, "csChargingProfiles": profile})


async def authorized(csms: Csms, connector_id: int, id_tag: str, present_id_tag: Action) -> Msg:
    """Authorized: [present tag] -> Authorize (Accepted) and SN Preparing, either order. Returns the Authorize."""
    mark = len(csms.messages)
    note = latest_status(csms, connector_id)
    already_preparing = note is not None and note.payload.get("status") == "Preparing"
    await present_id_tag()
    steps: list[Step] = [("Authorize", {"idTag": id_tag})]
    if not already_preparing:
        steps.append(("StatusNotification", {"connectorId": connector_id, "status": "Preparing"}))
    matched = await expect_sequence(csms, [any_order(*steps)], since=mark)
    return matched[0]


async def charging(csms: Csms, connector_id: int, id_tag: str, plug_in: Action, *, was_reserved: bool = False) -> int:
    """Charging (Table 104): returns the transactionId the CSMS gave in StartTransaction.conf."""
    keys = (await csms.call("GetConfiguration", {"key": ["AuthorizeRemoteTxRequests"]})).get("configurationKey", [])
    authorize_remote = any(k.get("key") == "AuthorizeRemoteTxRequests" and k.get("value") == "true" for k in keys)
    mark = len(csms.messages)
    await plug_in()
    if not was_reserved:
        await wait_status(csms, connector_id, "Preparing", since=mark)
    mark = len(csms.messages)
    await call_expecting(csms, "RemoteStartTransaction", {"connectorId": connector_id, "idTag": id_tag})
    steps: list[Step] = []
    if was_reserved:
        steps.append(("StatusNotification", {"connectorId": connector_id, "status": "Preparing"}))
    if authorize_remote:
        steps.append(("Authorize", {"idTag": id_tag}))
    steps += [
        ("StartTransaction", {"connectorId": connector_id, "idTag": id_tag}),
        ("StatusNotification", {"connectorId": connector_id, "status": "Charging"}),
    ]
    matched = await expect_sequence(csms, steps, since=mark)
    start = next(m for m in matched if m.action == "StartTransaction")
    conf = await csms.wait_until(lambda: csms.reply_to(start), 10, "the StartTransaction.conf")
    assert conf.kind == "result", f"StartTransaction was answered {conf}"
    return int(conf.payload["transactionId"])


def open_transactions(csms: Csms) -> list[int]:
    """transactionIds the CSMS handed out whose StopTransaction has not arrived."""
    started = []
    for start in csms.calls("StartTransaction"):
        reply = csms.reply_to(start)
        if reply is not None and reply.kind == "result":
            started.append(reply.payload["transactionId"])
    stopped = {m.payload.get("transactionId") for m in csms.calls("StopTransaction")}
    return [t for t in started if t not in stopped]


async def restore_idle(csms: Csms, *, stop_timeout: float = 30) -> None:
    """The suite's teardown towards the OCTT default preconditions (OCTT §1.2).

    Stops open transactions, cancels reservations, empties the cache and local list,
    makes everything Operative, clears profiles, sets MinimumStatusDuration 0. A
    feature the station does not implement (NotSupported/NotImplemented) is skipped.
    """
    for transaction_id in open_transactions(csms):
        mark = len(csms.messages)
        await csms.call("RemoteStopTransaction", {"transactionId": transaction_id})
        await csms.wait_for("StopTransaction", {"transactionId": transaction_id}, timeout=stop_timeout, after=mark)
    reservation_ids = sorted({m.payload["reservationId"] for m in csms.messages
                              if m.direction == "out" and m.kind == "call" and m.action == "ReserveNow"})
    requests: list[tuple[str, dict[str, Any]]] = [
        *[("CancelReservation", {"reservationId": r}) for r in reservation_ids],
        ("ClearCache", {}),
        # Errata 3.52: listVersion must not be 0 or -1; a Full update without a list
        # empties it (TC_042_2), after which GetLocalListVersion reports 0.
        ("SendLocalList", {"listVersion": 1, "updateType": "Full"}),
        ("ChangeAvailability", {"connectorId": 0, "type": "Operative"}),
        ("ClearChargingProfile", {}),
        ("ChangeConfiguration", {"key": "MinimumStatusDuration", "value": "0"}),
    ]
    for action, payload in requests:
        try:
            await csms.call(action, payload)
        except CallErrorReceived as err:
            if err.code not in ("NotSupported", "NotImplemented"):
                raise
