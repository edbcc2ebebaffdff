"""Authorization: the cache, the local authorization list and the decision rule.

Pure: every function takes ``now``; persistence happens through the ops the
methods return (see docs/architecture.md, "Store").
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, Callable

from twin.core.timeutil import parse_ts

ACCEPTED = "Accepted"

# A cache this size holds a busy lab's badges many times over; eviction rule per §3.5.1.
CACHE_CAPACITY = 1000


def tag_key(id_tag: str) -> str:
    """The identity of an idTag: IdToken is a CiString20, compared case-insensitively (§7.28).

    Used for every comparison, so a tag the CSMS sent in one letter case matches the card
    the reader reports in another. The cache and the list keep the tag as it was spelt.
    """
    return id_tag.casefold()


class _TagMap:
    """A dict keyed by idTag as spelt, looked up case-insensitively."""

    def __init__(self, entries: dict[str, Any] | None = None):
        self.entries: dict[str, Any] = {}
        self._spelling: dict[str, str] = {}  # tag_key -> the key in entries
        for tag, value in (entries or {}).items():
            self.put(tag, value)

    def find(self, id_tag: str) -> str | None:
        return self._spelling.get(tag_key(id_tag))

    def lookup(self, id_tag: str) -> Any:
        key = self.find(id_tag)
        return self.entries[key] if key is not None else None

    def put(self, id_tag: str, value: Any) -> str | None:
        """Store under ``id_tag``; returns the old spelling it replaced, if it differed."""
        old = self.pop(id_tag)
        self.entries[id_tag] = value
        self._spelling[tag_key(id_tag)] = id_tag
        return old if old is not None and old != id_tag else None

    def pop(self, id_tag: str) -> str | None:
        key = self._spelling.pop(tag_key(id_tag), None)
        if key is not None:
            del self.entries[key]
        return key

    def __len__(self) -> int:
        return len(self.entries)


def same_tag(a: str | None, b: str | None) -> bool:
    return a is not None and b is not None and tag_key(a) == tag_key(b)


def effective_info(info: dict | None, now: datetime) -> dict | None:
    """idTagInfo as it stands at ``now``: an entry past its expiryDate is Expired (§3.5.1).

    An expiryDate equal to ``now`` counts as expired (EVerest test_authorization_cache_entry_3).
    """
    if info is None:
        return None
    expiry = info.get("expiryDate")
    if expiry and info.get("status") == ACCEPTED:
        when = parse_ts(expiry)
        if when is not None and when <= now:
            return {**info, "status": "Expired"}
    return info


def is_valid(info: dict | None) -> bool:
    return info is not None and info.get("status") == ACCEPTED


class AuthCache:
    """The authorization cache (§3.5.1): valid and invalid entries, persistent across reboots and resets (errata 3.4)."""

    NS = "auth_cache"

    def __init__(self, entries: dict[str, dict] | None = None, capacity: int = CACHE_CAPACITY):
        self._map = _TagMap(entries)
        self.capacity = capacity

    @property
    def entries(self) -> dict[str, dict]:
        return self._map.entries

    def get(self, id_tag: str) -> dict | None:
        entry = self._map.lookup(id_tag)
        return entry["info"] if entry else None

    def update(self, id_tag: str, info: dict, now: datetime) -> list[tuple]:
        ops: list[tuple] = []
        if self._map.find(id_tag) is None and len(self.entries) >= self.capacity:
            victim = self._eviction_victim(now)
            self._map.pop(victim)
            ops.append(("kv_del", self.NS, victim))
        entry = {"info": dict(info), "updated": now.isoformat()}
        replaced = self._map.put(id_tag, entry)
        if replaced is not None:
            ops.append(("kv_del", self.NS, replaced))
        ops.append(("kv_put", self.NS, id_tag, entry))
        return ops

    def _eviction_victim(self, now: datetime) -> str:
        # §3.5.1: when full, remove invalid entries first, then the oldest.
        def key(item):
            tag, entry = item
            valid = is_valid(effective_info(entry["info"], now))
            return (valid, entry["updated"])

        return min(self.entries.items(), key=key)[0]

    def forget(self, which: Callable[[str], bool]) -> list[tuple]:
        """Drop the entries whose tag ``which`` selects; returns the ops."""
        dropped = [tag for tag in list(self.entries) if which(tag)]
        for tag in dropped:
            self._map.pop(tag)
        return [("kv_del", self.NS, tag) for tag in dropped]

    def clear(self) -> list[tuple]:
        self._map = _TagMap()
        return [("kv_clear", self.NS)]


class LocalList:
    """The local authorization list (§3.5.3, §5.15). The CP never changes it by any other means."""

    NS = "local_list"

    def __init__(self, version: int = 0, entries: dict[str, dict] | None = None):
        self.version = version
        self._map = _TagMap(entries)

    @property
    def entries(self) -> dict[str, dict]:
        return self._map.entries

    # The version lives in its own namespace: any CiString20, "__version__" included, is a valid idTag.
    VERSION_NS = "local_list_meta"

    @classmethod
    def from_store(cls, kv: dict[str, Any], meta: dict[str, Any] | None = None) -> "LocalList":
        return cls(int((meta or {}).get("version", 0)), dict(kv))

    def get(self, id_tag: str) -> dict | None:
        return self._map.lookup(id_tag)

    def send_local_list(
        self, version: int, update_type: str, items: list[dict] | None, *, max_send: int, max_length: int
    ) -> tuple[str, list[tuple]]:
        """Apply SendLocalList atomically: all or nothing. Returns (status, ops)."""
        items = items or []
        if len(items) > max_send:
            return "Failed", []  # SendLocalListMaxLength exceeded: list unchanged
        if update_type == "Differential":
            # §5.15: a differential update whose version is not higher is a VersionMismatch.
            if version <= self.version:
                return "VersionMismatch", []
            new = _TagMap(self.entries)
            for item in items:
                info = item.get("idTagInfo")
                if info is None:
                    new.pop(item["idTag"])  # absent idTagInfo = delete (§5.15)
                else:
                    new.put(item["idTag"], info)
        else:
            new = _TagMap()
            for item in items:
                if item.get("idTagInfo") is not None:
                    new.put(item["idTag"], item["idTagInfo"])
        if len(new) > max_length:
            return "Failed", []  # LocalAuthListMaxLength exceeded: list unchanged
        self._map = new
        # An empty list reads back as version 0 (OCTT TC_042_2; §6.41: 0 = empty).
        self.version = version if len(new) else 0
        ops: list[tuple] = [("kv_clear", self.NS)]
        ops += [("kv_put", self.NS, tag, info) for tag, info in new.entries.items()]
        ops.append(("kv_put", self.VERSION_NS, "version", self.version))
        return "Accepted", ops


@dataclass
class Lookup:
    info: dict | None  # effective idTagInfo, None if unknown locally
    source: str | None  # "list" | "cache" | None


def lookup(id_tag: str, local_list: LocalList, cache: AuthCache, *, list_enabled: bool,
           cache_enabled: bool, now: datetime) -> Lookup:
    """Local knowledge about a tag. The list has priority over the cache (§3.5.3)."""
    if list_enabled:
        info = local_list.get(id_tag)
        if info is not None:
            return Lookup(effective_info(info, now), "list")
    if cache_enabled:
        info = cache.get(id_tag)
        if info is not None:
            return Lookup(effective_info(info, now), "cache")
    return Lookup(None, None)


@dataclass
class Decision:
    verdict: str  # "accept" | "reject" | "ask" (send Authorize.req)
    info: dict | None
    source: str | None


def decide(found: Lookup, *, online: bool, local_pre_authorize: bool, local_authorize_offline: bool,
           allow_offline_unknown: bool) -> Decision:
    """The authorization decision for a presented identifier (§3.5, §9.1).

    Online: LocalPreAuthorize lets a locally valid tag start without waiting for
    Authorize.conf; anything else asks the CSMS (a NOT-valid cached id with the CP
    online => Authorize, §3.5.1). Offline: LocalAuthorizeOffline accepts locally valid
    tags; AllowOfflineTxForUnknownId accepts *unknown* tags only — list entries that are
    not Accepted and entries expired by time MUST be rejected (§3.5.4).
    """
    valid = is_valid(found.info)
    if online:
        if valid and local_pre_authorize:
            return Decision("accept", found.info, found.source)
        return Decision("ask", found.info, found.source)
    if found.info is not None:
        if valid and local_authorize_offline:
            return Decision("accept", found.info, found.source)
        return Decision("reject", found.info, found.source)
    if allow_offline_unknown:
        return Decision("accept", {"status": ACCEPTED}, None)
    return Decision("reject", None, None)
