"""Meter values of running transactions: when they are taken and what they say.

Owns the sampling schedule: the next periodic sample per running transaction
(MeterValueSampleInterval, §9.1.19, context Sample.Periodic), the next clock-aligned
instant (ClockAlignedDataInterval, §9.1.5, Sample.Clock; it runs from power-up, also
before the first Accepted, errata 3.15), and when each running register was last
persisted (a power loss must not lose more than a sample interval of energy). Builds the
sampledValues from the EVSE's readings (twin.core.metering) and hands them to the
transaction log: MeterValues.req queued, StopTxn*Data values kept for
StopTransaction.transactionData (§9.1.25, §9.1.27). Samples are taken offline too (TC_036).
"""

from __future__ import annotations

from datetime import datetime, timedelta

from twin.core.actions import Action, Persist
from twin.core.evse import Evse
from twin.core.metering import reading_values, sampled_values
from twin.core.settings import Settings
from twin.core.timeutil import next_aligned, ts
from twin.core.txlog import TxLog

ENERGY = "Energy.Active.Import.Register"
# A power loss must not lose more energy than this much time of charging: the register is
# persisted at least this often while a transaction runs (also with MeterValueSampleInterval 0).
ENERGY_PERSIST_MAX_S = 60


def meter_value(values: dict[str, float], measurands: list[str], context: str, when: datetime) -> dict | None:
    """One meterValue of the configured measurands, None when none is available."""
    sv = sampled_values(values, measurands, context)
    return {"timestamp": ts(when), "sampledValue": sv} if sv else None


class Sampling:
    def __init__(self, settings: Settings, evse: Evse, txlog: TxLog):
        self.settings = settings
        self.evse = evse
        self.txlog = txlog
        self.sample_at: dict[int, datetime] = {}
        self.next_aligned_at: datetime | None = None
        self.energy_saved_at: dict[int, datetime] = {}

    # ------------------------------------------------------------------ values
    def values(self, cid: int) -> dict[str, float]:
        """Measurand -> value of the connector now (SoC only when the meter measures it)."""
        offered = self.evse.offered_a(cid) if self.txlog.local_id(cid) is not None else 0.0
        f = self.evse.facts[cid]
        values = reading_values(f.reading, offered, offered * self.evse.spec.voltage * f.phases)
        if f.reading is None:
            values[ENERGY] = self.evse.energy(cid)
        return values

    def transaction_value(self, cid: int, context: str, when: datetime, *, energy: float | None = None) -> dict | None:
        """Transaction.Begin/End value for StopTransaction (StopTxnSampledData; §3.16.5:
        an empty list means none)."""
        measurands = self.settings.get_list("StopTxnSampledData")
        if not measurands:
            return None
        values = self.values(cid)
        if energy is not None:
            values = {**values, ENERGY: energy}
        return meter_value(values, measurands, context, when)

    def connector_value(self, cid: int, context: str, when: datetime) -> dict | None:
        """The most recent value of every MeterValuesSampledData measurand (errata 3.46)."""
        return meter_value(self.values(cid), self.settings.get_list("MeterValuesSampledData"), context, when)

    def station_value(self, context: str, when: datetime) -> dict | None:
        """The whole station as one meter (connector 0): the sum of what adds up over the
        connectors (energy, power, current), of the MeterValuesSampledData measurands."""
        total: dict[str, float] = {}
        for cid in self.evse.facts:
            for name, value in self.values(cid).items():
                if name.startswith(("Energy.", "Power.", "Current.")):
                    total[name] = total.get(name, 0.0) + value
        return meter_value(total, self.settings.get_list("MeterValuesSampledData"), context, when)

    # ------------------------------------------------------------------ schedule
    def schedule_aligned(self, now: datetime) -> None:
        interval = self.settings.get_int("ClockAlignedDataInterval")
        self.next_aligned_at = next_aligned(now, interval) if interval > 0 else None

    def started(self, cid: int, now: datetime) -> None:
        interval = self.settings.get_int("MeterValueSampleInterval")
        if interval > 0:
            self.sample_at[cid] = now + timedelta(seconds=interval)
        self.energy_saved_at[cid] = now

    def stopped(self, cid: int) -> None:
        self.sample_at.pop(cid, None)

    def interval_changed(self, now: datetime) -> None:
        """ChangeConfiguration(MeterValueSampleInterval): running transactions sample anew from now."""
        interval = self.settings.get_int("MeterValueSampleInterval")
        for cid in self.evse.facts:
            if self.txlog.local_id(cid) is not None and interval > 0:
                self.sample_at[cid] = now + timedelta(seconds=interval)
            else:
                self.sample_at.pop(cid, None)

    def next_deadlines(self) -> list[datetime | None]:
        return [self.next_aligned_at, *self.sample_at.values()]

    def shift(self, delta: timedelta, now: datetime) -> None:
        """The wall clock was stepped: periodic samples keep their interval; clock-aligned
        ones stay on the (new) clock grid."""
        self.sample_at = {cid: t + delta for cid, t in self.sample_at.items()}
        self.energy_saved_at = {cid: t + delta for cid, t in self.energy_saved_at.items()}
        self.schedule_aligned(now)

    # ------------------------------------------------------------------ samples
    def tick(self, now: datetime) -> list[Action]:
        return self._periodic(now) + self._clock_aligned(now)

    def _periodic(self, now: datetime) -> list[Action]:
        acts: list[Action] = []
        interval = self.settings.get_int("MeterValueSampleInterval")
        for cid, due in list(self.sample_at.items()):
            if due > now:
                continue
            if self.txlog.local_id(cid) is None or interval <= 0:
                self.sample_at.pop(cid, None)
                continue
            # The next slot after now, in one step: a clock jump of years must not loop.
            missed = int((now - due).total_seconds() // interval) + 1
            self.sample_at[cid] = due + timedelta(seconds=interval * missed)
            acts += self._sample(cid, "Sample.Periodic", self.settings.get_list("MeterValuesSampledData"),
                                 self.settings.get_list("StopTxnSampledData"), now)
        return acts

    def _clock_aligned(self, now: datetime) -> list[Action]:
        if self.next_aligned_at is None or now < self.next_aligned_at:
            return []
        when = self.next_aligned_at
        self.schedule_aligned(now)
        acts: list[Action] = []
        for cid in self.evse.facts:
            if self.txlog.local_id(cid) is not None:
                acts += self._sample(cid, "Sample.Clock", self.settings.get_list("MeterValuesAlignedData"),
                                     self.settings.get_list("StopTxnAlignedData"), when)
        return acts

    def _sample(self, cid: int, context: str, measurands: list[str], stop_measurands: list[str],
                when: datetime) -> list[Action]:
        values = self.values(cid)
        energy = values.get(ENERGY, self.evse.energy(cid))
        mv = meter_value(values, measurands, context, when)
        payload = {"connectorId": cid, "meterValue": [mv]} if mv else None
        stop_mv = meter_value(values, stop_measurands, context, when) if stop_measurands else None
        ops = self.txlog.record_meter_values(cid, payload, stop_mv, energy, when)
        return [Persist(ops + self.evse.floor_ops(cid, energy))]

    def persist_energy(self, cid: int, now: datetime) -> list[Action]:
        """Keep the register of a running transaction on disk at least every sample interval
        (ENERGY_PERSIST_MAX_S at most), so a power loss bills what was delivered."""
        if self.txlog.local_id(cid) is None or not self.evse.has_energy(cid):
            return []
        energy = int(round(self.evse.energy(cid)))
        if energy <= self.txlog.last_meter_wh(cid):
            return []
        interval = self.settings.get_int("MeterValueSampleInterval")
        every = min(interval, ENERGY_PERSIST_MAX_S) if interval > 0 else ENERGY_PERSIST_MAX_S
        saved = self.energy_saved_at.get(cid)
        if saved is not None and timedelta(0) <= now - saved < timedelta(seconds=every):
            return []  # (a negative elapsed time is a clock that went back: save now)
        self.energy_saved_at[cid] = now
        return [Persist(self.txlog.save_energy(cid, energy, now) + self.evse.floor_ops(cid, energy))]
