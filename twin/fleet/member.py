"""One member of a fleet: an ordinary :class:`twin.runtime.Runtime` (its own core, store,
link and identity) with two differences, made by overriding two of its hooks:

- no control API of its own: the fleet's one API serves every member (``api_enabled``);
- its metrics go into the fleet's one :class:`twin.metrics.Metrics` registry instead of a
  registry of its own (``_metrics_start``), so ``GET /metrics`` on the fleet shows every member;
- no event-loop watchdog thread of its own (``_start_inputs`` runs just before the runtime
  starts the drivers' supervision): the fleet's one :class:`twin.fleet.watchdog.FleetWatchdog`
  watches the loop every member shares. The contactor feedback supervision stays per member.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
from pathlib import Path
from typing import Any

from twin.config import ConfigError, StationConfig, check_charge_point_id
from twin.runtime import Runtime

MIN_ID_DIGITS = 4


def member_ids(prefix: str, count: int) -> list[str]:
    """``P0001 … PN``: zero-padded to at least 4 digits, wider when N needs it."""
    width = max(MIN_ID_DIGITS, len(str(count)))
    return [f"{prefix}{i:0{width}d}" for i in range(1, count + 1)]


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

    def __init__(self, cfg: Any, metrics: Any, **kwargs: Any):
        super().__init__(cfg, **kwargs)
        self._fleet_metrics = metrics  # a twin.metrics.Metrics, or None without prometheus_client

    def api_enabled(self) -> bool:
        return False

    async def _start_inputs(self) -> None:
        await super()._start_inputs()
        drivers = self.drivers
        drivers.start_supervision = functools.partial(type(drivers).start_supervision, drivers,
                                                      loop_watchdog_s=None)

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
