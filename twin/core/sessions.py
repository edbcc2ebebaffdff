"""Sessions: from a presented identifier to a transaction, on a station with one reader.

Owns, per connector, the authorization waiting for a cable (:class:`AwaitingCable`,
ConnectionTimeOut §9.1.6 with errata 3.20), the identifier whose Authorize.conf is
awaited, the wait for identification after a cable was plugged, and "Finishing" (the
session ended, the cable is still in); plus the tag held for the next cable while a
session runs. Implements the shared-reader routing (docs/station-behaviour.md): a card
stops the transaction it started (§3.4, §4.1) or one of the same parentIdTag (§3.5,
TC_069), else goes to the connector it can start on; reservations decide which one
(§5.13); the authorization decision and Authorize.req (§3.5, §4.1, §5.11
AuthorizeRemoteTxRequests); and RemoteStartTransaction's choice of connector (§5.11).

What it needs of the rest of the station is :class:`SessionHost`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import NamedTuple, Protocol

from twin.core import auth
from twin.core.actions import Action
from twin.core.authorization import Authorizer
from twin.core.calls import AuthorizePurpose, AuthorizeRequest, CallKind, Calls
from twin.core.reservation import Reservation, Reservations
from twin.core.settings import Settings

log = logging.getLogger("twin.station")


@dataclass
class AwaitingCable:
    """An authorized identifier waiting for a cable (ConnectionTimeOut, §9.1.6)."""

    id_tag: str
    info: dict | None
    deadline: datetime
    remote: bool = False
    reservation_id: int | None = None
    bound: bool = False  # True: remote start with an explicit connectorId, cannot move


@dataclass
class Session:
    pending: AwaitingCable | None = None
    authorizing: str | None = None  # idTag whose Authorize.conf we wait for
    plug_deadline: datetime | None = None  # plugged, waiting for identification
    wait_after_reservation: bool = False  # plugged while Reserved: ConnectionTimeOut runs once it ends
    finishing: bool = False  # the transaction ended with the cable still plugged


class RemoteClaim(NamedTuple):
    connector: int
    waiting: bool  # the same identifier already waits for the cable there


class SessionHost(Protocol):
    """What sessions read and ask of the rest of the station (twin.core.station.Station)."""

    def connected(self) -> bool: ...
    def usable(self, cid: int) -> bool: ...  # no transaction, no fault, operative
    def plugged(self, cid: int) -> bool: ...
    def in_transaction(self, cid: int) -> bool: ...
    def transaction_tags(self) -> dict[int, tuple[str, str | None]]: ...  # cid -> (idTag, parentIdTag)
    def start_transaction(self, cid: int, id_tag: str, info: dict | None, reservation_id: int | None,
                          now: datetime) -> list[Action]: ...
    def stop_transaction(self, cid: int, reason: str, id_tag: str | None, now: datetime) -> list[Action]: ...
    def discard_remote_profile(self, cid: int) -> list[Action]: ...


class Sessions:
    def __init__(self, connector_ids: list[int], settings: Settings, authorizer: Authorizer, calls: Calls,
                 reservations: Reservations, host: SessionHost):
        self.settings = settings
        self.authorizer = authorizer
        self.calls = calls
        self.reservations = reservations
        self.host = host
        self.sessions: dict[int, Session] = {cid: Session() for cid in connector_ids}
        self.held_tag: tuple[str, datetime] | None = None  # tag presented for the next cable

    def of(self, cid: int) -> Session:
        return self.sessions[cid]

    def _timeout(self, now: datetime) -> datetime:
        return now + timedelta(seconds=self.settings.get_int("ConnectionTimeOut"))

    def _idle(self, cid: int) -> bool:
        s = self.sessions[cid]
        return not self.host.in_transaction(cid) and s.pending is None and s.authorizing is None

    # ------------------------------------------------------------------ reservations in use
    def reserved_for(self, cid: int) -> Reservation | None:
        """The reservation that holds this connector, if any (connector or connector-0 reservation)."""
        r = self.reservations.for_connector(cid)
        if r is not None:
            return r
        zero = self.reservations.zero()
        if not zero:
            return None
        # A connector-0 reservation keeps one connector for its tag (§5.13): while the
        # connectors that could still take a new transaction are no more than such
        # reservations, each of them is held. A plugged one too: else another card could
        # start on the last connector left (it then shows Preparing, not Reserved).
        open_ = [x for x in self.sessions if self._could_start(x)]
        if cid in open_ and len(open_) <= len(zero):
            return zero[0]
        return None

    def _could_start(self, cid: int) -> bool:
        return self.host.usable(cid) and self.reservations.for_connector(cid) is None

    def is_free(self, cid: int) -> bool:
        """Idle, no cable, no fault, operative and not reserved: a connector-0 reservation may take it."""
        return self._idle(cid) and not self.host.plugged(cid) and self._could_start(cid)

    def _reservation_used(self, cid: int, id_tag: str, parent_id_tag: str | None) -> Reservation | None:
        """The reservation a transaction of ``id_tag`` on ``cid`` ends (§5.13, ST.reservationId §4.8):
        the connector's own, else a connector-0 reservation for this tag, whichever connector."""
        own = self.reservations.for_connector(cid)
        if own is not None:
            return own if own.admits(id_tag, parent_id_tag) else None
        return next((r for r in self.reservations.zero() if r.admits(id_tag, parent_id_tag)), None)

    # ------------------------------------------------------------------ the card reader
    def present(self, id_tag: str, now: datetime) -> list[Action]:
        """A card on the shared reader (see docs/station-behaviour.md for the routing rule)."""
        tags = self.host.transaction_tags()
        # 1. The tag that started a transaction stops it, without Authorize (§3.4, §4.1).
        for cid, (tag, _parent) in tags.items():
            if auth.same_tag(tag, id_tag):
                return self.host.stop_transaction(cid, "Local", id_tag, now)
        # 2. Presenting an authorized-but-unplugged tag again cancels it (TC_061 "swipe again").
        for cid, s in self.sessions.items():
            if s.pending is not None and auth.same_tag(s.pending.id_tag, id_tag) and not s.pending.remote:
                return self.drop_pending(cid)
        # 3. A tag with the same parentIdTag may stop (TC_069). Only possible when the
        #    running transaction's parent is known; else it cannot match (TC_068: no Authorize).
        parents = {parent for _tag, parent in tags.values()} - {None}
        if parents:
            found = self.authorizer.lookup(id_tag, now)
            parent = (found.info or {}).get("parentIdTag")
            if found.info is not None and auth.is_valid(found.info) and parent in parents:
                for cid, (_tag, p) in tags.items():
                    if p == parent:
                        return self.host.stop_transaction(cid, "Local", id_tag, now)
            if self.host.connected():
                return self._authorize(AuthorizeRequest(id_tag, AuthorizePurpose.STOP_OR_START))
        return self._route(id_tag, now)

    def _route(self, id_tag: str, now: datetime, known: dict | None = None) -> list[Action]:
        host = self.host
        plugged = [cid for cid, s in self.sessions.items() if host.usable(cid) and host.plugged(cid)
                   and s.pending is None and s.authorizing is None]
        if plugged:
            # A cable just plugged (Preparing) wins over one left plugged after a session (Finishing).
            plugged.sort(key=lambda cid: (self.sessions[cid].finishing, cid))
            return self._identify_for(plugged[0], id_tag, now, known)
        if any(host.in_transaction(cid) for cid in self.sessions):
            # One reader, a session already running: the new tag is for the next cable
            # plugged; authorize it then (avoids an Authorize the tag may not need, TC_068).
            self.held_tag = (id_tag, self._timeout(now))
            return []
        free = [cid for cid in self.sessions if host.usable(cid) and self._idle(cid)]
        held = [(cid, r) for cid in free if (r := self.reserved_for(cid)) is not None]
        info = known if known is not None else self.authorizer.lookup(id_tag, now).info
        if info is None and host.connected() and any(r.admits(id_tag, None) is None for _, r in held):
            # A reservation may be this card's through its parentIdTag: learn the parent
            # (list or cache, else Authorize, §5.13) before choosing the connector (TC_053).
            return self._authorize(AuthorizeRequest(id_tag, AuthorizePurpose.STOP_OR_START))
        mine = [cid for cid, r in held if r.admits(id_tag, (info or {}).get("parentIdTag"))]
        free = mine or [cid for cid in free if self.reserved_for(cid) is None] or free
        if not free:
            log.info("card %s presented but no connector can take it", id_tag)
            return []
        return self._identify_for(free[0], id_tag, now, known)

    def _identify_for(self, cid: int, id_tag: str, now: datetime, known: dict | None = None) -> list[Action]:
        res = self.reserved_for(cid)
        if res is not None and res.admits(id_tag, (known or {}).get("parentIdTag")) is False:
            log.info("connector %s reserved (%s); %s refused", cid, res.reservation_id, id_tag)
            return []
        if known is not None and auth.is_valid(known):
            return self._authorized(cid, id_tag, known, now)
        connected = self.host.connected()
        d = self.authorizer.decide(id_tag, now, online=connected)
        if res is not None and res.admits(id_tag, (d.info or {}).get("parentIdTag")) is None:
            if not connected:
                log.info("connector %s reserved; %s's parent cannot be learned offline", cid, id_tag)
                return []  # §5.13: only the reserved tag or its parent may start
            d = auth.Decision("ask", d.info, d.source)  # must learn the parent (§5.13)
        if d.verdict == "accept":
            return self._authorized(cid, id_tag, d.info, now)
        if d.verdict == "ask":
            self.sessions[cid].authorizing = id_tag
            return self._authorize(AuthorizeRequest(id_tag, AuthorizePurpose.START, connector=cid))
        log.info("identifier %s refused locally", id_tag, extra={"connector": cid})
        return []

    def _authorize(self, request: AuthorizeRequest) -> list[Action]:
        return self.calls.send("Authorize", {"idTag": request.id_tag}, CallKind.AUTHORIZE, authorize=request)

    def _authorized(self, cid: int, id_tag: str, info: dict | None, now: datetime, *, remote: bool = False,
                    bound: bool = False) -> list[Action]:
        res = self._reservation_used(cid, id_tag, (info or {}).get("parentIdTag"))
        reservation_id = res.reservation_id if res is not None else None
        if self.host.plugged(cid):
            return self.host.start_transaction(cid, id_tag, info, reservation_id, now)
        self.sessions[cid].pending = AwaitingCable(id_tag, info, self._timeout(now), remote=remote,
                                                   reservation_id=reservation_id, bound=bound)
        return []

    # ------------------------------------------------------------------ Authorize outcomes
    def answered(self, request: AuthorizeRequest, info: dict, now: datetime) -> list[Action]:
        """The idTagInfo for ``request``: from Authorize.conf, or decided locally when it
        got no usable answer (twin.core.authorization)."""
        purpose = request.purpose
        id_tag = request.id_tag
        if purpose is AuthorizePurpose.STOP_OR_START:
            parent = info.get("parentIdTag")
            if info.get("status") == "Accepted" and parent:
                for cid, (_tag, p) in self.host.transaction_tags().items():
                    if p == parent:
                        return self.host.stop_transaction(cid, "Local", id_tag, now)  # TC_069
            if info.get("status") != "Accepted":
                return []
            return self._route(id_tag, now, known=info)
        cid = request.connector
        if cid not in self.sessions:
            return []
        s = self.sessions[cid]
        remote = purpose is AuthorizePurpose.REMOTE
        if auth.same_tag(s.authorizing, id_tag):
            s.authorizing = None
        if not self.host.usable(cid):
            # The connector faulted, went Unavailable or got a session while we waited (TC_041, §5.2).
            log.info("connector %s can no longer take %s", cid, id_tag, extra={"connector": cid})
            return self.drop_pending(cid) if remote else []
        if info.get("status") != "Accepted":
            # TC_023: no transaction and no further status change.
            log.info("authorization of %s refused (%s)", id_tag, info.get("status"), extra={"connector": cid})
            return self.drop_pending(cid) if remote else []
        res = self.reserved_for(cid)
        if res is not None and not res.admits(id_tag, info.get("parentIdTag")):
            log.info("connector %s is reserved for another identifier; %s may not start", cid, id_tag)
            return self.drop_pending(cid) if remote else []
        return self._authorized(cid, id_tag, info, now, remote=remote, bound=request.bound)

    # ------------------------------------------------------------------ RemoteStartTransaction
    def claim_for_remote(self, cid: int | None, id_tag: str, now: datetime) -> RemoteClaim | None:
        """The connector a RemoteStartTransaction for ``id_tag`` goes to (§5.11), None to reject
        (TC_026: a session, another card being authorized, Faulted, Unavailable)."""
        host = self.host
        if cid is None:
            usable = [x for x, s in self.sessions.items() if host.usable(x) and s.pending is None and not s.authorizing]
            plugged = [x for x in usable if host.plugged(x)]
            pick = plugged or [x for x in usable if (r := self.reserved_for(x)) is None or r.admits(id_tag, None)]
            if not pick:
                return None
            cid = pick[0]
        s = self.sessions[cid]
        if not host.usable(cid) or (s.authorizing and not auth.same_tag(s.authorizing, id_tag)):
            return None
        if s.pending is not None:
            if s.pending.id_tag != id_tag:
                return None
            # The same identifier is already authorized and waiting for the cable: a repeated
            # request only restarts ConnectionTimeOut (no second Authorize).
            s.pending.deadline = self._timeout(now)
            return RemoteClaim(cid, waiting=True)
        res = self.reserved_for(cid)
        if res is not None and res.admits(id_tag, None) is False:
            return None
        return RemoteClaim(cid, waiting=False)

    def start_remote(self, cid: int, id_tag: str, *, bound: bool, now: datetime) -> list[Action] | None:
        """Authorize a claimed remote start (§5.11); None when the identifier is refused locally."""
        if not self.settings.get_bool("AuthorizeRemoteTxRequests"):
            return self._authorized(cid, id_tag, None, now, remote=True, bound=bound)
        # Behave like a local start (local list / cache with LocalPreAuthorize, else Authorize).
        d = self.authorizer.decide(id_tag, now, online=self.host.connected())
        if d.verdict == "accept":
            return self._authorized(cid, id_tag, d.info, now, remote=True, bound=bound)
        if d.verdict == "ask":
            self.sessions[cid].authorizing = id_tag
            return self._authorize(AuthorizeRequest(id_tag, AuthorizePurpose.REMOTE, connector=cid, bound=bound))
        return None

    # ------------------------------------------------------------------ cable and connector events
    def plugged_in(self, cid: int, now: datetime) -> list[Action]:
        """A cable was plugged into ``cid``: start what waited for it, or wait for identification."""
        s = self.sessions[cid]
        s.finishing = False
        if not self.host.usable(cid) or s.authorizing:
            return []  # Faulted / Unavailable / busy: the cable is noted, nothing starts (TC_041)
        if s.pending is not None:
            p, s.pending = s.pending, None
            return self.host.start_transaction(cid, p.id_tag, p.info, p.reservation_id, now)
        moved = self._take_movable_pending(cid)
        if moved is not None:
            return self.host.start_transaction(cid, moved.id_tag, moved.info, moved.reservation_id, now)
        if self.held_tag is not None:
            tag, self.held_tag = self.held_tag[0], None
            return self._identify_for(cid, tag, now)
        s.plug_deadline = self._timeout(now)
        return []

    def _take_movable_pending(self, target: int) -> AwaitingCable | None:
        """Shared reader: a tag presented first goes to the next connector plugged (docs/station-behaviour.md)."""
        if (not self.host.usable(target) or self.sessions[target].authorizing
                or self.reservations.for_connector(target) is not None):
            return None
        for cid, s in self.sessions.items():
            # A connector reservation binds the tag to its connector; a connector-0 one does not.
            movable = s.pending is not None and (s.pending.reservation_id is None or getattr(
                self.reservations.items.get(s.pending.reservation_id), "connector_id", None) == 0)
            if cid != target and movable and not s.pending.bound:
                p, s.pending = s.pending, None
                return p
        return None

    def unplugged(self, cid: int) -> None:
        s = self.sessions[cid]
        s.plug_deadline = None
        s.finishing = False

    def transaction_started(self, cid: int) -> None:
        s = self.sessions[cid]
        s.plug_deadline = None
        s.finishing = False

    def transaction_ended(self, cid: int, plugged: bool) -> None:
        self.sessions[cid].finishing = plugged

    def drop_pending(self, cid: int) -> list[Action]:
        """An authorization lapses without a transaction: a RemoteStart TxProfile held for it goes too."""
        self.sessions[cid].pending = None
        return self.host.discard_remote_profile(cid)

    def connector_lost(self, cid: int) -> list[Action]:
        """The connector faulted: what waited on it ends."""
        acts = self.drop_pending(cid) if self.sessions[cid].pending is not None else []
        self.sessions[cid].authorizing = None
        return acts

    def drop_all_pending(self) -> list[Action]:
        acts: list[Action] = []
        for cid, s in self.sessions.items():
            if s.pending is not None:
                acts += self.drop_pending(cid)
        return acts

    def after_boot(self, now: datetime) -> None:
        for cid, s in self.sessions.items():
            if self.host.plugged(cid) and not self.host.in_transaction(cid) and not s.finishing:
                # A car left plugged across the restart waits for identification again.
                s.plug_deadline = self._timeout(now)

    # ------------------------------------------------------------------ time
    def tick(self, now: datetime) -> list[Action]:
        """ConnectionTimeOut (§9.1.6, errata 3.20): an authorized tag with no cable lapses;
        a cable with no identification goes Preparing -> Finishing (B6)."""
        acts: list[Action] = []
        for cid, s in self.sessions.items():
            if s.pending and now >= s.pending.deadline:
                log.info("connector %s: no cable within ConnectionTimeOut; authorization of %s lapses",
                         cid, s.pending.id_tag, extra={"connector": cid})
                acts += self.drop_pending(cid)
            if s.plug_deadline and now >= s.plug_deadline:
                self._plug_wait_over(cid, s)
        if self.held_tag and now >= self.held_tag[1]:
            self.held_tag = None
        return acts

    def _plug_wait_over(self, cid: int, s: Session) -> None:
        """ConnectionTimeOut ran out for a cable without identification."""
        s.plug_deadline = None
        waiting = self.host.plugged(cid) and not self.host.in_transaction(cid)
        if waiting and self.reserved_for(cid) is not None:
            # Reserved, not Preparing: the wait for identification starts when the
            # reservation ends (after_reservations), for a whole ConnectionTimeOut.
            s.wait_after_reservation = True
        elif waiting:
            s.finishing = True

    def after_reservations(self, now: datetime) -> None:
        """A cable that waited on a Reserved connector: once the reservation has ended, the
        wait for identification (ConnectionTimeOut) starts."""
        for cid, s in self.sessions.items():
            if not s.wait_after_reservation:
                continue
            if not self.host.plugged(cid) or self.host.in_transaction(cid) or s.pending is not None:
                s.wait_after_reservation = False
            elif self.reserved_for(cid) is None:
                s.wait_after_reservation = False
                s.plug_deadline = self._timeout(now)
                if s.plug_deadline <= now:
                    # ConnectionTimeOut 0: the wait is over at once. This runs in the settle
                    # step after tick(now), so a deadline of ``now`` left here would never be
                    # handled and the timer loop would spin on it.
                    self._plug_wait_over(cid, s)

    def next_deadlines(self) -> list[datetime | None]:
        times: list[datetime | None] = []
        for s in self.sessions.values():
            if s.pending:
                times.append(s.pending.deadline)
            times.append(s.plug_deadline)
        if self.held_tag:
            times.append(self.held_tag[1])
        return times

    def shift(self, delta: timedelta) -> None:
        """The wall clock was stepped: the waits keep the time they had left."""
        for s in self.sessions.values():
            if s.plug_deadline is not None:
                s.plug_deadline += delta
            if s.pending is not None:
                s.pending.deadline += delta
        if self.held_tag is not None:
            self.held_tag = (self.held_tag[0], self.held_tag[1] + delta)
