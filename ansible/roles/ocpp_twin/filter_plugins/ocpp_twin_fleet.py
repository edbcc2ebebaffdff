"""The one place a fleet's id range is cut into slices: per host, then per shard.

``ocpp_twin_fleet_total | ocpp_twin_fleet_plan(first, hosts, host, shards, prefix, width)``
gives this host's share of the range ``first .. first + total - 1``:

- the range is split over ``hosts`` (an ordered list of inventory names) as evenly as it
  goes, the first ``total % len(hosts)`` hosts one id more; a host's slice depends only on
  its position in that list, so every host computes the same cut without seeing the others;
- the host's slice is split over its ``shards`` the same way. A shard needs at least one
  station (``twin fleet --count`` is at least 1), so a host with fewer ids than shards runs
  one shard per id, and a host with no id (more hosts than ids) runs none;
- every id is spelled with the whole range's width (``width``, default: what
  ``twin.fleet.member.member_ids`` picks for the whole range: at least 4 digits, as many as
  the last number needs), so ``P09991`` on one shard and ``P10000`` on another.

The result::

    {"hosts": 3, "host_index": 1, "first": 9991, "count": 10, "width": 5, "prefix": "P",
     "shards": [{"shard": 1, "first": 9991, "count": 5, "first_id": "P09991", "last_id": "P09995"},
                {"shard": 2, "first": 9996, "count": 5, "first_id": "P09996", "last_id": "P10000"}]}

Bad input raises ValueError (AnsibleFilterError inside Ansible) naming the variable.
Pure Python: tests/ansible/test_fleet_plan.py imports it without Ansible.
"""

from __future__ import annotations

import re
from typing import Any

MIN_ID_DIGITS = 4  # twin.fleet.member.MIN_ID_DIGITS
MAX_ID_LENGTH = 48  # OCPP 1.6 CiString48 chargePointId (twin.config.CHARGE_POINT_ID_RE)
PREFIX_RE = re.compile(r"[A-Za-z0-9._~-]*")  # the characters twin.config allows in a chargePointId


def _integer(value: Any, name: str, lowest: int) -> int:
    # Inventory values may arrive as strings ("3"); a bool is an int in Python but never meant as one.
    if isinstance(value, bool):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    if isinstance(value, str) and re.fullmatch(r"\s*[0-9]+\s*", value):
        value = int(value)
    if not isinstance(value, int):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    if value < lowest:
        raise ValueError(f"{name} must be {lowest} or more, got {value}")
    return value


def split(count: int, parts: int, index: int) -> tuple[int, int]:
    """(offset, size) of part ``index`` when ``count`` items are split into ``parts``
    contiguous parts as evenly as possible, the first ``count % parts`` one larger."""
    base, extra = divmod(count, parts)
    return index * base + min(index, extra), base + (1 if index < extra else 0)


def fleet_plan(total: Any, first: Any = 1, hosts: Any = None, host: Any = None, shards: Any = 1,
               prefix: Any = "P", width: Any = None) -> dict[str, Any]:
    total = _integer(total, "ocpp_twin_fleet_total", 1)
    first = _integer(first, "ocpp_twin_fleet_first", 0)
    shards = _integer(shards, "ocpp_twin_fleet_shards_per_host", 1)
    if not isinstance(prefix, str) or not PREFIX_RE.fullmatch(prefix):
        raise ValueError(f"ocpp_twin_fleet_id_prefix {prefix!r}: only A-Z a-z 0-9 . _ ~ - may be in a chargePointId")
    if isinstance(hosts, str) or not isinstance(hosts, (list, tuple)) or not hosts:
        raise ValueError(f"ocpp_twin_fleet_hosts must be a non-empty list of inventory hosts, got {hosts!r}")
    hosts = [str(h) for h in hosts]
    duplicates = sorted({h for h in hosts if hosts.count(h) > 1})
    if duplicates:
        raise ValueError(f"ocpp_twin_fleet_hosts names {', '.join(duplicates)} more than once: "
                         "each host would run the same slice twice")
    if host not in hosts:
        raise ValueError(f"{host!r} is not in ocpp_twin_fleet_hosts ({', '.join(hosts)}): it has no slice of the range")
    last = first + total - 1
    needed = len(str(last))
    if width is None or width == "":
        width = max(MIN_ID_DIGITS, needed)
    else:
        width = _integer(width, "ocpp_twin_fleet_id_width", 1)
        if width < needed:
            raise ValueError(f"ocpp_twin_fleet_id_width {width}: the last id number {last} needs {needed} digits")
    if len(prefix) + width > MAX_ID_LENGTH:
        raise ValueError(f"ids {prefix}{'0' * width}: {len(prefix) + width} characters, a chargePointId has at most "
                         f"{MAX_ID_LENGTH}")

    index = hosts.index(host)
    offset, count = split(total, len(hosts), index)
    host_first = first + offset
    plan: list[dict[str, Any]] = []
    used = min(shards, count)  # no empty shard: `twin fleet --count` is at least 1
    for n in range(used):
        shard_offset, size = split(count, used, n)
        start = host_first + shard_offset
        plan.append({"shard": n + 1, "first": start, "count": size,
                     "first_id": f"{prefix}{start:0{width}d}", "last_id": f"{prefix}{start + size - 1:0{width}d}"})
    return {"hosts": len(hosts), "host_index": index, "first": host_first, "count": count, "width": width,
            "prefix": prefix, "shards": plan}


def _ansible_fleet_plan(*args: Any, **kwargs: Any) -> dict[str, Any]:
    try:
        return fleet_plan(*args, **kwargs)
    except ValueError as exc:
        from ansible.errors import AnsibleFilterError

        raise AnsibleFilterError(str(exc)) from exc


class FilterModule:
    def filters(self) -> dict[str, Any]:
        return {"ocpp_twin_fleet_plan": _ansible_fleet_plan}
