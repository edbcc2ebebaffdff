"""One member of a fleet: an ordinary :class:`twin.runtime.Runtime` (its own core, durable
state, link and identity) with four differences, made by overriding its hooks:

- no control API of its own: the fleet's one API serves every member (``api_enabled``);
- its metrics go into the fleet's one :class:`twin.metrics.Metrics` registry instead of a
  registry of its own (``_metrics_start``), so ``GET /metrics`` on the fleet shows every member;
- no event-loop watchdog thread of its own (``loop_watchdog_s``): the fleet's one :class:`twin.fleet.watchdog.FleetWatchdog`
  watches the loop every member shares. The contactor feedback supervision stays per member;
- its durable state is its view of the fleet's one store (``_open_store``, twin.fleet.store), so
  its commits share fsyncs with the other members' instead of each member opening a twin.db.
"""

from __future__ import annotations

import copy
import dataclasses
from pathlib import Path
from typing import Any

from twin.config import ConfigError, StationConfig, check_charge_point_id
from twin.runtime import Runtime

MIN_ID_DIGITS = 4
MEMBER_IDLE_METER_POLL_S = 60.0


def member_ids(prefix: str, count: int, first: int = 1, width: int | None = None) -> list[str]:
    """``P0001 … PN``: ``count`` ids from number ``first``, zero-padded to ``width`` digits,
    by default to at least 4 and as many as the last number needs. Shards of one id range
    (one per host or core, docs/fleet.md) pass the whole range's width, so that every shard
    spells its ids the same way: P00001 … P10000, not P0001 on one and P10000 on another."""
    if count < 1 or first < 0:
        raise ValueError("ids: count at least 1, first number 0 or more")
    needed = len(str(first + count - 1))
    if width is None:
        width = max(MIN_ID_DIGITS, needed)
    elif width < needed:
        raise ValueError(f"id width {width}: the last id number {first + count - 1} needs {needed} digits")
    return [f"{prefix}{i:0{width}d}" for i in range(first, first + count)]


def member_config(blueprint: StationConfig, cp_id: str, data_root: Path) -> StationConfig:
    """The blueprint with this member's identity and data dir, sim drivers and no control
    API. The mutable tables are copied: a member's runtime must never see another's."""
    problem = check_charge_point_id(cp_id)
    if problem:
        raise ConfigError(None, "--id-prefix", f"{cp_id!r}: {problem}")
    cfg = dataclasses.replace(blueprint, charge_point_id=cp_id, data_dir=Path(data_root) / cp_id,
                              control_enabled=False, force_sim=True)
    for name in ("keys", "drivers", "firmware", "identity", "security", "faults"):
        value = getattr(cfg, name, None)
        if isinstance(value, (dict, list)):
            setattr(cfg, name, copy.deepcopy(value))
    return cfg


class FleetMember(Runtime):
    """A Runtime whose control API is the fleet's and whose metrics are the fleet's."""

    def __init__(self, cfg: Any, metrics: Any, *, shared_store: Any = None, **kwargs: Any):
        super().__init__(cfg, **kwargs)
        self._fleet_metrics = metrics  # a twin.metrics.Metrics, or None without prometheus_client
        self._shared_store = shared_store  # a twin.fleet.store.SharedStore; None: a twin.db of its own
        # A member's meters are always simulated (member_config forces sim drivers): with nothing
        # plugged no energy can flow, so an idle reading cannot change and the 10 s idle poll of
        # a bench twin (which may have a real meter) only costs wake-ups: 2,000 meter reads per
        # 10 s for a thousand members. A plug or a card still wakes the loop at once.
        self.idle_meter_poll_s = MEMBER_IDLE_METER_POLL_S

    async def _open_store(self, data_dir: Path):
        if self._shared_store is None:
            return await super()._open_store(data_dir)
        # The data dir still holds the member's security log, certificates and firmware slots;
        # a twin.db an earlier fleet version left there is imported into the shared store once.
        data_dir.mkdir(parents=True, exist_ok=True)
        return await self._shared_store.station(self.cfg.charge_point_id, legacy_dir=data_dir)

    def api_enabled(self) -> bool:
        return False

    def loop_watchdog_s(self) -> None:
        return None  # the fleet's one FleetWatchdog watches the loop every member shares

    def _metrics_start(self):
        metrics = self._fleet_metrics
        if metrics is None:
            return None
        # A member that rebooted is a new Runtime: its counters start again, as a restarted
        # single twin's do.
        metrics.remove_station(self.cfg.charge_point_id)
        metrics.add_station(self.cfg.charge_point_id, self._metrics_reading)
        return metrics

    def _fleet_summary(self) -> dict:
        """What GET /api/stations shows of this member: a few attributes, not a snapshot."""
        st, link = self.station, self.link
        if st is None:
            return {"registration": "Starting", "link": {"online": False, "connected": False}, "connectors": []}
        conns = []
        for cid, c in st.connectors.items():
            status = c.current or st.status_of(c)
            conns.append({"id": cid, "status": status[0], "errorCode": status[1]})
        return {"registration": st.registration.value,
                "link": {"online": bool(link is not None and link.enabled),
                         "connected": bool(link is not None and link.connected)},
                "connectors": conns}
