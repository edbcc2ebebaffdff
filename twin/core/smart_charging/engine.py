"""The station's charging profiles: install/replace/clear, composite schedule, applied limit.

Pure: every method that depends on time takes ``now`` (an aware UTC datetime); nothing
here reads the clock, sleeps or does I/O. The station core calls it and persists
:meth:`SmartCharging.to_json` after each change (errata 3.37).

How a connector's limit is made, at every instant (spec §3.13.1–3.13.3):

1. its *own* limit: while its transaction has a TxProfile, the TxProfile stack;
   otherwise the TxDefaultProfile stack (connector 0's TxDefaults, with a TxDefault set
   on this connector replacing connector 0's at the same stackLevel). In a stack the
   highest stackLevel in force wins; where it is not in force (validFrom/validTo,
   before its start, after its duration, beyond its recurrence) the next one shows
   through (errata 3.43). TxDefault changes apply to a running transaction (errata 3.8).
2. the ChargePointMaxProfile stack gives the station total, divided between the
   connectors as :mod:`.sharing` explains.
3. the result is the smaller of the two and of the connector's hardware rating
   ``station_max_amps``, with the smallest numberPhases among the profiles in force.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from typing import Any

from .model import (
    CHARGE_POINT_MAX,
    DEFAULT_PHASES,
    TX_DEFAULT,
    TX_PROFILE,
    Limit,
    Profile,
    ProfileError,
    ProfileRejected,
    TxInfo,
)
from .parse import check_unit, epoch, format_epoch, parse_profile
from .sharing import water_fill
from .timeline import Steps, paint, profile_segments, sweep

# How far next_change looks ahead: a little over the longest recurrence (Weekly).
NEXT_CHANGE_HORIZON = 8 * 86_400
# The longest GetCompositeSchedule we compute. The spec sets no bound, but a Daily profile
# over 10**12 s would keep the station busy for hours; a year is 8 784 daily runs.
MAX_COMPOSITE_DURATION = 366 * 86_400

# (amps per phase, numberPhases, whether any profile limits it at all)
Applied = tuple[float, int, bool]


@dataclass(frozen=True)
class _Installed:
    connector_id: int
    profile: Profile


def floor_tenth(value: float) -> float:
    """Round down to OCPP's 0.1 resolution (schema: multipleOf 0.1). Down, never up, so
    rounding cannot lift the result above a profile; the 1e-6 absorbs float noise of
    the W -> A -> W round trip (6000 W must stay 6000.0, not 5999.9)."""
    return math.floor(value * 10 + 1e-6) / 10


class SmartCharging:
    """Charging profiles of one Charge Point with ``number_of_connectors`` connectors.

    ``station_max_amps`` is the hardware rating of each connector (amps per phase): it
    caps every limit and is what a connector reports when no profile limits it (OCTT
    TC_067, "the local limit of the Charging Station"). Connector 0 reports the station
    total, so its own limit is ``number_of_connectors * station_max_amps``.
    """

    def __init__(self, number_of_connectors: int, *, max_stack_level: int = 10, max_periods: int = 24,
                 max_installed: int = 10, allowed_units: tuple[str, ...] = ("A", "W"),
                 station_max_amps: float = 32.0, voltage: float = 230.0, default_phases: int = DEFAULT_PHASES,
                 composite_start_schedule: bool = False) -> None:
        if number_of_connectors < 1:
            raise ValueError("number_of_connectors must be >= 1")
        self.number_of_connectors = number_of_connectors
        self.max_stack_level = max_stack_level  # ChargeProfileMaxStackLevel
        self.max_periods = max_periods  # ChargingScheduleMaxPeriods
        self.max_installed = max_installed  # MaxChargingProfilesInstalled
        self.allowed_units = tuple(allowed_units)  # ChargingScheduleAllowedChargingRateUnit: Current=A, Power=W (errata 3.88)
        self.station_max_amps = float(station_max_amps)
        self.voltage = float(voltage)
        self.default_phases = default_phases
        # Errata 3.57: GetCompositeSchedule.conf omits chargingSchedule.startSchedule. Some
        # CSMSs (and libocpp) expect it anyway; this compatibility flag puts it back.
        self.composite_start_schedule = composite_start_schedule
        self._installed: list[_Installed] = []
        self._pending: dict[int, Profile] = {}  # RemoteStartTransaction profiles waiting for their tx
        self.last_reason: str | None = None  # why the last request was Rejected, for the log

    # ------------------------------------------------------------------ requests

    def set_profile(self, connector_id: int, profile: dict[str, Any], now: datetime,
                    txs: Mapping[int, TxInfo]) -> str:
        """SetChargingProfile.req -> "Accepted" | "Rejected" (raises ProfileError for a CALLERROR).

        "NotSupported" is never returned: the iEVQC33 supports every purpose and kind.
        """
        self._check_connector(connector_id)
        received_at = epoch(now)
        try:
            parsed = self._parse(profile, received_at)
            self._check_placement(connector_id, parsed, received_at, txs)
            self._check_room(connector_id, parsed)
        except ProfileRejected as why:
            return self._reject(why)
        self._install(connector_id, parsed)
        return "Accepted"

    def set_tx_profile_from_remote_start(self, connector_id: int, profile: dict[str, Any]) -> str:
        """RemoteStartTransaction.req chargingProfile -> "Accepted" (held) | "Rejected".

        Errata 3.41/3.42: the purpose must be TxProfile and transactionId must be absent.
        The profile waits until :meth:`bind_pending_tx_profile`. Call this only when the
        rest of the RemoteStart would be accepted, and :meth:`discard_pending_tx_profile`
        if the transaction then never starts. Raises ProfileError for a malformed profile.
        """
        try:
            if not self._is_connector(connector_id, lowest=1):
                raise ProfileRejected(f"RemoteStart profile for invalid connector {connector_id!r}")
            parsed = self._parse(profile, None)
            if parsed.purpose != TX_PROFILE:
                raise ProfileRejected("a RemoteStartTransaction chargingProfile must be a TxProfile (errata 3.41)")
            if parsed.transaction_id is not None:
                raise ProfileRejected("a RemoteStartTransaction chargingProfile must not carry transactionId (errata 3.42)")
            held = len(self._installed) + len(self._pending) - (connector_id in self._pending)
            if held + 1 > self.max_installed:
                raise ProfileRejected(f"MaxChargingProfilesInstalled ({self.max_installed}) reached")
        except ProfileRejected as why:
            return self._reject(why)
        self._pending[connector_id] = parsed
        return "Accepted"

    def bind_pending_tx_profile(self, connector_id: int, transaction_id: int | None) -> None:
        """The transaction started: the held RemoteStart profile becomes its TxProfile.

        It is installed like a SetChargingProfile, so a later SetChargingProfile with the
        transactionId and the same stackLevel replaces it, another stackLevel stacks on
        it (errata 3.42). ``transaction_id`` None (not known yet) binds it to whatever
        transaction runs on the connector.
        """
        profile = self._pending.pop(connector_id, None)
        if profile is None:
            return
        if transaction_id is not None:
            profile = replace(profile, transaction_id=transaction_id,
                              raw={**profile.raw, "transactionId": transaction_id})
        self._install(connector_id, profile)

    def discard_pending_tx_profile(self, connector_id: int) -> None:
        """The RemoteStart was refused or timed out: drop its held profile."""
        self._pending.pop(connector_id, None)

    def clear(self, *, id: int | None = None, connector_id: int | None = None, purpose: str | None = None,
              stack_level: int | None = None) -> str:
        """ClearChargingProfile.req -> "Accepted" | "Unknown".

        Errata 3.25/3.26: no field clears everything; fields are ANDed; an id makes the
        other fields irrelevant; nothing matched -> Unknown. Held RemoteStart profiles
        count as installed on their connector.
        """
        def matches(where: int, profile: Profile) -> bool:
            if id is not None:
                return profile.id == id
            return ((connector_id is None or where == connector_id)
                    and (purpose is None or profile.purpose == purpose)
                    and (stack_level is None or profile.stack_level == stack_level))

        before = len(self._installed) + len(self._pending)
        self._installed = [e for e in self._installed if not matches(e.connector_id, e.profile)]
        self._pending = {c: p for c, p in self._pending.items() if not matches(c, p)}
        return "Accepted" if len(self._installed) + len(self._pending) < before else "Unknown"

    def on_transaction_end(self, connector_id: int) -> None:
        """Spec §3.13.1: a TxProfile lives as long as its transaction."""
        self._installed = [e for e in self._installed
                           if not (e.connector_id == connector_id and e.profile.purpose == TX_PROFILE)]
        self._pending.pop(connector_id, None)

    # ------------------------------------------------------------------ schedules

    def composite(self, connector_id: int, now: datetime, duration: int, unit: str | None,
                  txs: Mapping[int, TxInfo]) -> dict[str, Any] | None:
        """GetCompositeSchedule.conf payload, or None for an unknown connector (-> Rejected).

        Computed from the moment of the request, ``now`` floored to the second, to
        now + duration (errata 3.28/3.29). ``scheduleStart`` is that moment. Raises
        ProfileError(PropertyConstraintViolation) for a bad duration (negative, or over
        :data:`MAX_COMPOSITE_DURATION`) or a unit the station does not support (errata 3.24). ``duration`` 0 gives the limit in force
        now as the single period.
        """
        if not self._is_connector(connector_id):
            return None
        if isinstance(duration, bool) or not isinstance(duration, int) or duration < 0:
            raise ProfileError("PropertyConstraintViolation", f"duration must be an integer >= 0, got {duration!r}")
        if duration > MAX_COMPOSITE_DURATION:
            raise ProfileError("PropertyConstraintViolation",
                               f"duration {duration} s is longer than the {MAX_COMPOSITE_DURATION} s (366 days) "
                               "this station computes")
        unit = self._default_unit() if unit is None else check_unit(unit, self.allowed_units, "chargingRateUnit")
        t0 = epoch(now)
        periods: list[dict[str, Any]] = []
        for start, (amps, phases, _limited) in self._applied_steps(connector_id, t0, t0 + max(duration, 1), txs):
            value = amps if unit == "A" else amps * self.voltage * phases
            limit = floor_tenth(value)
            if periods and periods[-1]["limit"] == limit and periods[-1]["numberPhases"] == phases:
                continue
            periods.append({"startPeriod": start - t0, "limit": limit, "numberPhases": phases})
        schedule: dict[str, Any] = {}
        if self.composite_start_schedule:
            schedule["startSchedule"] = format_epoch(t0)
        schedule.update(duration=duration, chargingRateUnit=unit, chargingSchedulePeriod=periods)
        return {"status": "Accepted", "connectorId": connector_id, "scheduleStart": format_epoch(t0),
                "chargingSchedule": schedule}

    def limit_at(self, connector_id: int, now: datetime, txs: Mapping[int, TxInfo]) -> tuple[float | None, int]:
        """(amps per phase, numberPhases) in force on the connector now; amps None = no
        profile limits it (the station then uses its own rating). Amps are rounded down to
        0.1 A, exactly as :meth:`composite` reports them in A. Connector 0 = station total."""
        if not self._is_connector(connector_id):
            raise ValueError(f"no connector {connector_id!r} (1..{self.number_of_connectors}, 0 = station)")
        t0 = epoch(now)
        amps, phases, limited = self._applied_steps(connector_id, t0, t0 + 1, txs)[0][1]
        return (floor_tenth(amps) if limited else None), phases

    def next_change(self, now: datetime, txs: Mapping[int, TxInfo]) -> datetime | None:
        """When :meth:`limit_at` of a connector with a running transaction may change next.

        Limits only matter while a transaction runs, so idle connectors are not looked at
        (a Relative TxDefault on an idle connector counts from "now" and would never let
        the runtime sleep). The runtime must also re-evaluate after every profile change
        and transaction start/end. None = nothing to wake up for; if nothing changes within
        :data:`NEXT_CHANGE_HORIZON` it returns the horizon, to look again from there.
        """
        active = sorted(c for c in txs if 1 <= c <= self.number_of_connectors)
        if not active or not self._installed:
            return None
        t0 = epoch(now)
        t1 = t0 + NEXT_CHANGE_HORIZON
        soonest = t1
        for connector_id in active:
            steps = self._applied_steps(connector_id, t0, t1, txs)
            if len(steps) > 1:
                soonest = min(soonest, steps[1][0])
        return datetime.fromtimestamp(soonest, tz=timezone.utc)

    # ------------------------------------------------------------------ persistence and views

    def to_json(self) -> list[dict[str, Any]]:
        """Everything to persist (errata 3.37): installed profiles and held RemoteStart profiles."""
        out = [{"connectorId": e.connector_id, "chargingProfile": copy.deepcopy(e.profile.raw)}
               for e in self._installed]
        out += [{"connectorId": c, "chargingProfile": copy.deepcopy(p.raw), "pendingRemoteStart": True}
                for c, p in sorted(self._pending.items())]
        return out

    def load_json(self, data: list[dict[str, Any]]) -> list[str]:
        """Replace the state with persisted data. A damaged entry is skipped, not fatal:
        the returned list says what was skipped and why (empty = all loaded)."""
        self._installed, self._pending = [], {}
        problems: list[str] = []
        if not isinstance(data, list):
            return [f"stored charging profiles are not a list ({type(data).__name__}); none loaded"]
        for index, entry in enumerate(data):
            try:
                if not isinstance(entry, dict) or "connectorId" not in entry:
                    raise ProfileRejected("entry is not {connectorId, chargingProfile}")
                connector_id = entry["connectorId"]
                if not self._is_connector(connector_id):
                    raise ProfileRejected(f"connector {connector_id!r} does not exist")
                profile = self._parse(entry.get("chargingProfile"), None)
                if (profile.purpose == CHARGE_POINT_MAX and connector_id != 0) or \
                        (profile.purpose == TX_PROFILE and connector_id == 0):
                    raise ProfileRejected(f"{profile.purpose} cannot live on connector {connector_id}")
            except (ProfileError, ProfileRejected) as why:
                problems.append(f"stored charging profile #{index} skipped: {why}")
                continue
            if entry.get("pendingRemoteStart"):
                self._pending[connector_id] = profile
            else:
                self._install(connector_id, profile)
        return problems

    def installed(self, connector_id: int | None = None) -> list[dict[str, Any]]:
        """Installed profiles (for GET /api/state), optionally of one connector."""
        return [{"connectorId": e.connector_id, "chargingProfile": copy.deepcopy(e.profile.raw)}
                for e in self._installed if connector_id is None or e.connector_id == connector_id]

    def pending(self) -> dict[int, dict[str, Any]]:
        """RemoteStart profiles held until their transaction starts, by connector."""
        return {c: copy.deepcopy(p.raw) for c, p in self._pending.items()}

    # ------------------------------------------------------------------ internals

    def _reject(self, why: ProfileRejected) -> str:
        self.last_reason = str(why)
        return "Rejected"

    def _default_unit(self) -> str:
        return "A" if "A" in self.allowed_units else self.allowed_units[0]

    def _is_connector(self, value: Any, lowest: int = 0) -> bool:
        return not isinstance(value, bool) and isinstance(value, int) \
            and lowest <= value <= self.number_of_connectors

    def _check_connector(self, connector_id: Any) -> None:
        if isinstance(connector_id, bool) or not isinstance(connector_id, int):
            raise ProfileError("TypeConstraintViolation", f"connectorId must be an integer, got {connector_id!r}")
        if not self._is_connector(connector_id):
            # Errata 3.38: an invalid connectorId is a PropertyConstraintViolation.
            raise ProfileError("PropertyConstraintViolation",
                               f"connectorId {connector_id} is not 0..{self.number_of_connectors}")

    def _parse(self, raw: Any, received_at: int | None) -> Profile:
        profile = parse_profile(raw, voltage=self.voltage, allowed_units=self.allowed_units,
                                received_at=received_at)
        if profile.stack_level > self.max_stack_level:
            raise ProfileRejected(f"stackLevel {profile.stack_level} > ChargeProfileMaxStackLevel {self.max_stack_level}")
        if len(profile.periods) > self.max_periods:
            raise ProfileRejected(f"{len(profile.periods)} periods > ChargingScheduleMaxPeriods {self.max_periods}")
        return profile

    def _check_placement(self, connector_id: int, profile: Profile, now: int, txs: Mapping[int, TxInfo]) -> None:
        if profile.purpose == CHARGE_POINT_MAX and connector_id != 0:
            raise ProfileRejected("ChargePointMaxProfile only on connectorId 0 (spec §3.13.1)")
        if profile.purpose == TX_PROFILE:
            if connector_id == 0:
                raise ProfileRejected("TxProfile only on a connector > 0 (spec §3.13.1)")
            tx = txs.get(connector_id)
            if tx is None:
                raise ProfileRejected(f"TxProfile without a transaction on connector {connector_id} (OCTT TC_058_1)")
            if profile.transaction_id is not None and profile.transaction_id != tx.transaction_id:
                raise ProfileRejected(f"TxProfile for transaction {profile.transaction_id}, but connector "
                                      f"{connector_id} runs {tx.transaction_id} (OCTT TC_058_2)")
        if profile.valid_to is not None and profile.valid_to <= now:
            raise ProfileRejected("validTo is already past")

    def _replaced_by(self, connector_id: int, profile: Profile) -> list[_Installed]:
        """Spec §3.13.2, §5.16.3/5.16.4, errata 3.43: the same chargingProfileId (anywhere),
        or the same purpose and stackLevel on the same connector, is replaced."""
        return [e for e in self._installed
                if e.profile.id == profile.id
                or (e.connector_id == connector_id and e.profile.purpose == profile.purpose
                    and e.profile.stack_level == profile.stack_level)]

    def _check_room(self, connector_id: int, profile: Profile) -> None:
        held = len(self._installed) + len(self._pending) - len(self._replaced_by(connector_id, profile))
        held -= sum(1 for p in self._pending.values() if p.id == profile.id)
        if held + 1 > self.max_installed:
            raise ProfileRejected(f"MaxChargingProfilesInstalled ({self.max_installed}) reached")

    def _install(self, connector_id: int, profile: Profile) -> None:
        gone = {id(e) for e in self._replaced_by(connector_id, profile)}
        self._installed = [e for e in self._installed if id(e) not in gone]
        self._pending = {c: p for c, p in self._pending.items() if p.id != profile.id}
        self._installed.append(_Installed(connector_id, profile))

    def _own_profiles(self, connector_id: int, tx: tuple[int | None, int] | None) -> list[Profile]:
        """The connector's own stack, highest stackLevel first."""
        if tx is not None:
            tx_profiles = [e.profile for e in self._installed
                           if e.connector_id == connector_id and e.profile.purpose == TX_PROFILE
                           and e.profile.transaction_id in (None, tx[0])]
            if tx_profiles:
                # Spec §3.13.1: a TxProfile "SHALL overrule" the TxDefaultProfile "for the
                # duration of the current transaction". So while the transaction has a
                # TxProfile, TxDefault is out of the picture, even after the TxProfile's
                # schedule has ended: then only ChargePointMax limits. OCTT TC_066 expects
                # exactly that, [0:8, 50-x:10, 200-x:6, 240-x:10] (reference §3.4), where
                # libocpp's per-period "TxProfile else TxDefault" merge would add 260:8.
                return sorted(tx_profiles, key=lambda p: p.stack_level, reverse=True)
        by_level: dict[int, Profile] = {}
        for where in (0, connector_id):  # the connector's own TxDefault wins at the same level
            for e in self._installed:
                if e.connector_id == where and e.profile.purpose == TX_DEFAULT:
                    by_level[e.profile.stack_level] = e.profile
        return [by_level[level] for level in sorted(by_level, reverse=True)]

    def _stack_steps(self, profiles: list[Profile], t0: int, t1: int, anchor: int) -> Steps:
        return paint([profile_segments(p, t0, t1, anchor) for p in profiles], t0, t1)

    def _applied_steps(self, connector_id: int, t0: int, t1: int,
                       txs: Mapping[int, TxInfo]) -> list[tuple[int, Applied]]:
        """What the connector (or, for 0, the station) gets, as steps over [t0, t1)."""
        running = {c: (tx.transaction_id, epoch(tx.start)) for c, tx in txs.items()
                   if isinstance(c, int) and 1 <= c <= self.number_of_connectors}
        if connector_id == 0:
            members = list(range(1, self.number_of_connectors + 1))
        else:
            # The station total is shared by the connectors that charge; a connector asked
            # about without a transaction is counted as if it were about to start one.
            members = sorted(set(running) | {connector_id})
        cp_max = self._stack_steps(
            sorted((e.profile for e in self._installed if e.profile.purpose == CHARGE_POINT_MAX),
                   key=lambda p: p.stack_level, reverse=True), t0, t1, t0)
        owns = []
        for member in members:
            tx = running.get(member)
            owns.append(self._stack_steps(self._own_profiles(member, tx), t0, t1,
                                          tx[1] if tx is not None else t0))
        out: list[tuple[int, Applied]] = []
        for start, values in sweep([cp_max, *owns]):
            applied = self._combine(connector_id, members, values[0], values[1:])
            if not out or out[-1][1] != applied:
                out.append((start, applied))
        return out

    def _combine(self, connector_id: int, members: list[int], cp_max: Limit | None,
                 owns: list[Limit | None]) -> Applied:
        rating = self.station_max_amps
        caps = {m: (rating if own is None else min(own[0], rating)) for m, own in zip(members, owns)}
        if connector_id == 0:
            total = sum(caps.values())
            if cp_max is None:
                return total, self.default_phases, any(own is not None for own in owns)
            return min(cp_max[0], total), cp_max[1], True
        own = owns[members.index(connector_id)]
        amps = caps[connector_id] if cp_max is None else water_fill(cp_max[0], caps)[connector_id]
        # The smallest numberPhases in force keeps the result under every profile in W too
        # (A x V x phases); errata 3.34 lets a station use fewer phases than a profile allows.
        phases = min([limit[1] for limit in (own, cp_max) if limit is not None], default=self.default_phases)
        return amps, phases, own is not None or cp_max is not None
