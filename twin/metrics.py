"""Prometheus metrics for ``GET /metrics`` (docs/control-api.md), built on ``prometheus_client``.

One :class:`Metrics` per process, holding one registry: the single twin makes one for its
station; a fleet process makes one and adds every member with :meth:`Metrics.add_station`.
Per-station series carry the label ``station`` (the charge point id); the totals over the
process's stations carry none, so a fleet dashboard need not sum thousands of series.

Most values are read when Prometheus scrapes, not updated on every event: a custom collector
asks each station's ``read()`` for a :class:`Reading` (a few attribute reads of the core and
the link), which costs nothing between scrapes. Only the call round trips are observed as
they happen (a histogram cannot be rebuilt from a snapshot); the link reports each one
through ``Link(on_round_trip=...)``.

Counters that the station only knows as a level are kept monotonic here:

- transactions started: the core's transaction log hands out a new local id for every
  transaction it begins, and that allocator only moves up within a process, so the count
  since the station was added misses none and counts none twice (a StartTransaction resent
  after a timeout or a reconnect is still one transaction, and one begun offline is counted
  when it begins, not when the queue drains);
- transactions stopped: started, plus those running when the station was added, minus those
  running now (a transaction leaves the running set only by being stopped);
- energy delivered: the sum of the increases of every connector's energy register
  (Energy.Active.Import.Register, never reset per transaction, OCPP errata 3.9). The core
  closes a contactor only for a transaction, so energy flows in transactions only; a register
  that goes backwards (a replaced meter) is taken as the new base and adds nothing.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Histogram, ProcessCollector, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

log = logging.getLogger("twin.metrics")

PREFIX = "ocpp_twin"
CONTENT_TYPE = CONTENT_TYPE_LATEST
# From a loopback CSMS (milliseconds) to one that answers at the edge of a 30 s MessageTimeout.
ROUND_TRIP_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
ROUND_TRIP_OUTCOMES = ("result", "error")  # CALLRESULT, CALLERROR


@dataclass(frozen=True)
class Reading:
    """What one station is now, as its runtime reads it at scrape time."""

    connected: bool  # the websocket to the CSMS is up
    registered: bool  # BootNotification Accepted (§4.2)
    queue_depth: int  # transaction messages waiting for the CSMS (§3.7)
    oldest_queued_age_s: float | None  # the age of the oldest of them; None when the queue is empty
    discarded: int  # transaction messages given up after TransactionMessageAttempts (§3.7.1), durable
    connections: int  # websocket connections made so far by this process (twin.link.Link.session)
    transactions_begun: int  # the core's transaction allocator: moves up by one per transaction begun
    transactions_running: int
    registers_wh: Mapping[int, float] = field(default_factory=dict)  # connector id -> energy register


class _Station:
    """The monotonic counters of one station, against the reading it was added with."""

    def __init__(self, station_id: str, read: Callable[[], Reading]):
        self.id = station_id
        self.read = read
        first = read()
        self._begun0 = first.transactions_begun
        self._running0 = first.transactions_running
        self._stopped = 0
        self._registers = {cid: float(wh) for cid, wh in first.registers_wh.items()}
        self._energy_wh = 0.0
        self.round_trip_labels: set[tuple[str, str]] = set()  # (action, outcome) seen: removed with the station

    def counters(self, r: Reading) -> tuple[int, int, float]:
        started = max(0, r.transactions_begun - self._begun0)
        self._stopped = max(self._stopped, started + self._running0 - r.transactions_running)
        for cid, value in r.registers_wh.items():
            value = float(value)
            if not math.isfinite(value):
                continue
            last = self._registers.get(cid)
            if last is not None and value > last:
                self._energy_wh += value - last
            self._registers[cid] = value
        return started, self._stopped, self._energy_wh


class Metrics:
    """The process's registry: stations, their call round trips, and the process itself."""

    def __init__(self, *, process: bool = True):
        self.registry = CollectorRegistry(auto_describe=True)
        if process:
            # process_resident_memory_bytes, process_cpu_seconds_total, open fds, start time
            # (read from /proc: Linux only; elsewhere the collector yields nothing).
            ProcessCollector(registry=self.registry)
        self._stations: dict[str, _Station] = {}
        self.round_trip = Histogram(
            f"{PREFIX}_call_round_trip_seconds",
            "Time from sending a CALL to the CSMS to its CALLRESULT or CALLERROR, per action",
            ["station", "action", "outcome"], buckets=ROUND_TRIP_BUCKETS, registry=self.registry)
        self.registry.register(_StationCollector(self))

    @property
    def content_type(self) -> str:
        return CONTENT_TYPE

    # -- stations

    def add_station(self, station_id: str, read: Callable[[], Reading]) -> None:
        """Serve ``station_id``'s series from now on; ``read`` is called at every scrape."""
        if station_id in self._stations:
            raise ValueError(f"station {station_id!r} is already in the metrics")
        self._stations[station_id] = _Station(station_id, read)

    def remove_station(self, station_id: str) -> None:
        station = self._stations.pop(station_id, None)
        if station is None:
            return
        for action, outcome in station.round_trip_labels:
            try:
                self.round_trip.remove(station_id, action, outcome)
            except KeyError:
                pass

    @property
    def stations(self) -> list[str]:
        return list(self._stations)

    def round_trip_observer(self, station_id: str) -> Callable[[str, float, str], None]:
        """The ``on_round_trip(action, seconds, outcome)`` callback for ``station_id``'s link."""

        def observe(action: str, seconds: float, outcome: str) -> None:
            station = self._stations.get(station_id)
            if station is None or not math.isfinite(seconds) or seconds < 0:
                return
            station.round_trip_labels.add((action, outcome))
            self.round_trip.labels(station_id, action, outcome).observe(seconds)

        return observe

    # -- scraping

    def exposition(self) -> bytes:
        """The registry in the Prometheus text format (``content_type``)."""
        return generate_latest(self.registry)

    def _collect_stations(self) -> Iterator[Metric]:
        g = GaugeMetricFamily
        c = CounterMetricFamily
        total_connected = g(f"{PREFIX}_stations_connected", "Stations of this process whose CSMS websocket is up")
        total_registered = g(f"{PREFIX}_stations_registered",
                             "Stations of this process whose BootNotification was Accepted")
        connected = g(f"{PREFIX}_station_connected", "1 while the station's CSMS websocket is up", labels=["station"])
        registered = g(f"{PREFIX}_station_registered", "1 while the station is registered (BootNotification "
                       "Accepted)", labels=["station"])
        depth = g(f"{PREFIX}_queue_depth", "Transaction messages queued for the CSMS", labels=["station"])
        age = g(f"{PREFIX}_queue_oldest_age_seconds", "Age of the oldest queued transaction message (0 when the "
                "queue is empty)", labels=["station"])
        discarded = c(f"{PREFIX}_queue_discarded_messages", "Transaction messages discarded after "
                      "TransactionMessageAttempts (kept on disk: counts across restarts)", labels=["station"])
        reconnects = c(f"{PREFIX}_reconnects", "CSMS websocket connections after the first one",
                       labels=["station"])
        started = c(f"{PREFIX}_transactions_started", "Transactions begun", labels=["station"])
        stopped = c(f"{PREFIX}_transactions_stopped", "Transactions stopped", labels=["station"])
        running = g(f"{PREFIX}_transactions_running", "Transactions running now", labels=["station"])
        energy = c(f"{PREFIX}_energy_delivered_wh", "Energy delivered in transactions (Wh, from the connectors' "
                   "energy registers)", labels=["station"])
        n_connected = n_registered = 0
        for station in list(self._stations.values()):
            try:
                r = station.read()
                tx_started, tx_stopped, wh = station.counters(r)
            except Exception:  # noqa: BLE001 - one station that cannot be read must not fail the scrape
                log.exception("metrics: reading station %s failed", station.id)
                continue
            sid = [station.id]
            n_connected += bool(r.connected)
            n_registered += bool(r.registered)
            connected.add_metric(sid, 1.0 if r.connected else 0.0)
            registered.add_metric(sid, 1.0 if r.registered else 0.0)
            depth.add_metric(sid, r.queue_depth)
            age.add_metric(sid, max(0.0, r.oldest_queued_age_s or 0.0))
            discarded.add_metric(sid, r.discarded)
            reconnects.add_metric(sid, max(0, r.connections - 1))
            started.add_metric(sid, tx_started)
            stopped.add_metric(sid, tx_stopped)
            running.add_metric(sid, r.transactions_running)
            energy.add_metric(sid, wh)
        total_connected.add_metric([], n_connected)
        total_registered.add_metric([], n_registered)
        yield from (total_connected, total_registered, connected, registered, depth, age, discarded, reconnects,
                    started, stopped, running, energy)


class _StationCollector(Collector):
    def __init__(self, metrics: Metrics):
        self._metrics = metrics

    def collect(self) -> Iterator[Metric]:
        return self._metrics._collect_stations()

    def describe(self) -> list[Metric]:
        return []  # no fixed names to reserve: the families are made at each scrape
