"""What one core event asks the adapters to do, on separate, ordered channels.

Every public event method of the station returns one :class:`Effects`. The executor
(``twin.actor``) carries it out in a fixed order, the same for every event:

1. ``safety``: contactors that open. Opening makes the station safe and never waits for
   the disk (IEC 61851-1: de-energise first).
2. ``persist``: every durable op of the event, committed in **one** store transaction
   (one fsync per event).
3. ``outputs``: contactors that close and pilot changes, only after the commit, so a
   contactor never closes before its transaction is on disk.
4. ``replies``: answers to CSMS calls (and calls handed to an adapter to answer), only
   after the commit, so a reply never confirms state that a power cut could lose.
5. ``sends``: CALLs to the CSMS. A TriggerMessage.conf therefore precedes the message it
   triggers (§5.17), and a RemoteStartTransaction.conf the StartTransaction.req.
6. ``control``: process-level requests (restart, link settings, reconnect, security log and
   certificate work), last: a reconnect never overtakes the reply that caused it (A05.FR.06).

The core's rules append actions to a list in whatever order they produce them;
:meth:`Effects.of` sorts that list into channels, so the channel, not the list position,
decides when each runs.
Iterating an ``Effects`` yields its actions in execution order (with the commit as one
``Persist``), which is what tests and the fuzzer check.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable, Iterator

from twin.core.actions import (Action, Control, Delegate, LinkSetting, Persist, Reconnect, Reply, ReplyError, Restart,
                               SecurityLogEntry, SecurityTask, Send, SetPilot, SetRelay)


@dataclass
class Effects:
    safety: list[SetRelay] = field(default_factory=list)
    persist: list[tuple] = field(default_factory=list)
    outputs: list[SetRelay | SetPilot] = field(default_factory=list)
    replies: list[Reply | ReplyError | Delegate] = field(default_factory=list)
    sends: list[Send] = field(default_factory=list)
    control: list[Control] = field(default_factory=list)

    @classmethod
    def of(cls, actions: Iterable[Action]) -> "Effects":
        """Sort actions into channels. A SetRelay(open) is a safety output unless a later
        action of the same event closes that contactor again (then only the final, closing
        command is kept, after the commit)."""
        acts = [a for item in actions for a in (item if isinstance(item, Effects) else (item,))]
        final_relay: dict[int, bool] = {}
        for a in acts:
            if isinstance(a, SetRelay):
                final_relay[a.connector_id] = a.closed
        fx = cls()
        for a in acts:
            if isinstance(a, Persist):
                fx.persist.extend(a.ops)
            elif isinstance(a, SetRelay):
                if final_relay[a.connector_id] != a.closed:
                    continue  # superseded within this event
                (fx.outputs if a.closed else fx.safety).append(a)
            elif isinstance(a, SetPilot):
                fx.outputs.append(a)
            elif isinstance(a, (Reply, ReplyError, Delegate)):
                fx.replies.append(a)
            elif isinstance(a, Send):
                fx.sends.append(a)
            elif isinstance(a, (Restart, LinkSetting, SecurityLogEntry, Reconnect, SecurityTask)):
                fx.control.append(a)
            else:  # pragma: no cover - a new action type must be given a channel here
                raise TypeError(f"no channel for {type(a).__name__}")
        return fx

    def __iter__(self) -> Iterator[Action]:
        yield from self.safety
        if self.persist:
            yield Persist(list(self.persist))
        yield from self.outputs
        yield from self.replies
        yield from self.sends
        yield from self.control

    def __len__(self) -> int:
        return (len(self.safety) + (1 if self.persist else 0) + len(self.outputs) + len(self.replies)
                + len(self.sends) + len(self.control))

    def __bool__(self) -> bool:
        return len(self) > 0

    def merge(self, other: "Effects") -> "Effects":
        """Effects of two events executed as one (the second's channels after the first's)."""
        return Effects.of([*self, *other])
