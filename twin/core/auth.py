"""Authorization: the cache, the local authorization list and the decision rule.

Pure: every function takes ``now``; persistence happens through the ops the
methods return (see docs/architecture.md, "Store").
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from twin.core.timeutil import parse_ts

ACCEPTED = "Accepted"

# A cache this size holds a busy lab's badges many times over; eviction rule per §3.5.1.
CACHE_CAPACITY = 1000


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
        self.entries: dict[str, dict] = dict(entries or {})
        self.capacity = capacity

    def get(self, id_tag: str) -> dict | None:
        entry = self.entries.get(id_tag)
        return entry["info"] if entry else None

    def update(self, id_tag: str, info: dict, now: datetime) -> list[tuple]:
        ops: list[tuple] = []
        if id_tag not in self.entries and len(self.entries) >= self.capacity:
            victim = self._eviction_victim(now)
            del self.entries[victim]
            ops.append(("kv_del", self.NS, victim))
        entry = {"info": dict(info), "updated": now.isoformat()}
        self.entries[id_tag] = entry
        ops.append(("kv_put", self.NS, id_tag, entry))
        return ops

    def _eviction_victim(self, now: datetime) -> str:
        # §3.5.1: when full, remove invalid entries first, then the oldest.
        def key(item):
            tag, entry = item
            valid = is_valid(effective_info(entry["info"], now))
            return (valid, entry["updated"])

        return min(self.entries.items(), key=key)[0]

    def clear(self) -> list[tuple]:
        self.entries.clear()
        return [("kv_clear", self.NS)]


class LocalList:
    """The local authorization list (§3.5.3, §5.15). The CP never changes it by any other means."""

    NS = "local_list"

    def __init__(self, version: int = 0, entries: dict[str, dict] | None = None):
        self.version = version
        self.entries: dict[str, dict] = dict(entries or {})

    # The version lives in its own namespace: any CiString20, "__version__" included, is a valid idTag.
    VERSION_NS = "local_list_meta"

    @classmethod
    def from_store(cls, kv: dict[str, Any], meta: dict[str, Any] | None = None) -> "LocalList":
        return cls(int((meta or {}).get("version", 0)), dict(kv))

    def get(self, id_tag: str) -> dict | None:
        return self.entries.get(id_tag)

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
            new = dict(self.entries)
            for item in items:
                info = item.get("idTagInfo")
                if info is None:
                    new.pop(item["idTag"], None)  # absent idTagInfo = delete (§5.15)
                else:
                    new[item["idTag"]] = info
        else:
            new = {item["idTag"]: item["idTagInfo"] for item in items if item.get("idTagInfo") is not None}
        if len(new) > max_length:
            return "Failed", []  # LocalAuthListMaxLength exceeded: list unchanged
        self.entries = new
        # An empty list reads back as version 0 (OCTT TC_042_2; §6.41: 0 = empty).
        self.version = version if new else 0
        ops: list[tuple] = [("kv_clear", self.NS)]
        ops += [("kv_put", self.NS, tag, info) for tag, info in new.items()]
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
