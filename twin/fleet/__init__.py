"""Fleet mode: many complete twins in one process (docs/fleet.md)."""

from twin.fleet.fleet import Fleet
from twin.fleet.member import FleetMember, member_ids

__all__ = ["Fleet", "FleetMember", "member_ids"]
