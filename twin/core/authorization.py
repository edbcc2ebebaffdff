"""Authorization plumbing: the configuration keys applied to the cache and the local list.

Owns nothing but the station's :class:`~twin.core.auth.AuthCache` and
:class:`~twin.core.auth.LocalList` (the rules themselves are in :mod:`twin.core.auth`).
Applies LocalAuthListEnabled, AuthorizationCacheEnabled, LocalPreAuthorize,
LocalAuthorizeOffline and AllowOfflineTxForUnknownId (§3.5, §9.1, §9.2) to a lookup or a
decision; feeds idTagInfo from the CSMS to the cache (§3.5.1; listed ids are never
cached, §3.5.3); tells when the list disagrees with the CSMS (§3.5.2); and applies
SendLocalList and ClearCache (§5.4, §5.15).
"""

from __future__ import annotations

import logging
from datetime import datetime

from twin.core import auth
from twin.core.settings import Settings

log = logging.getLogger("twin.station")

INVALID = {"status": "Invalid"}


class Authorizer:
    def __init__(self, settings: Settings, cache: auth.AuthCache, local_list: auth.LocalList):
        self.settings = settings
        self.cache = cache
        self.local_list = local_list

    def _list_enabled(self) -> bool:
        return self.settings.get_bool("LocalAuthListEnabled")

    def lookup(self, id_tag: str, now: datetime) -> auth.Lookup:
        return auth.lookup(id_tag, self.local_list, self.cache, list_enabled=self._list_enabled(),
                           cache_enabled=self.settings.get_bool("AuthorizationCacheEnabled"), now=now)

    def decide(self, id_tag: str, now: datetime, *, online: bool) -> auth.Decision:
        return auth.decide(self.lookup(id_tag, now), online=online,
                           local_pre_authorize=self.settings.get_bool("LocalPreAuthorize"),
                           local_authorize_offline=self.settings.get_bool("LocalAuthorizeOffline"),
                           allow_offline_unknown=self.settings.get_bool("AllowOfflineTxForUnknownId"))

    def unanswered(self, id_tag: str, now: datetime) -> dict:
        """Authorize got no answer (the link went): decide as if offline (§3.5.4)."""
        d = auth.decide(self.lookup(id_tag, now), online=False, local_pre_authorize=False,
                        local_authorize_offline=self.settings.get_bool("LocalAuthorizeOffline"),
                        allow_offline_unknown=self.settings.get_bool("AllowOfflineTxForUnknownId"))
        return d.info if d.verdict == "accept" else INVALID

    def refused_by_error(self, id_tag: str, now: datetime) -> dict:
        """Authorize answered with a CALLERROR or an unusable reply by a connected CSMS.
        Not "offline" (§3.5.4 is for a CP that cannot reach the CSMS): only the local list or
        a valid cache entry may still authorize the tag; AllowOfflineTxForUnknownId does not."""
        found = self.lookup(id_tag, now)
        valid = auth.is_valid(found.info)
        log.warning("Authorize for %s failed at the CSMS; %s", id_tag,
                    "authorized by the " + found.source if valid else "not authorized")
        return found.info if valid else INVALID

    def learn(self, id_tag: str, info: dict, now: datetime) -> list[tuple]:
        """Feed the cache from Authorize, StartTransaction and StopTransaction idTagInfo;
        local-list ids are never cached (§3.5.3)."""
        if not info or not self.settings.get_bool("AuthorizationCacheEnabled"):
            return []
        if self._list_enabled() and self.local_list.get(id_tag) is not None:
            return []
        return self.cache.update(id_tag, info, now)

    def conflict(self, id_tag: str, info: dict, now: datetime) -> str | None:
        """§3.5.2: what the local list says when it disagrees with the CSMS's idTagInfo, else None."""
        if not self._list_enabled():
            return None
        listed = auth.effective_info(self.local_list.get(id_tag), now)
        if listed is None or info.get("status") is None or listed.get("status") == info.get("status"):
            return None
        log.warning("local list conflict for %s: list %s, CSMS %s", id_tag, listed.get("status"), info.get("status"))
        return f"{id_tag}: list {listed.get('status')}"

    # ------------------------------------------------------------------ CSMS calls
    def list_version(self) -> int:
        """GetLocalListVersion (§5.10): -1 while the list is disabled."""
        return self.local_list.version if self._list_enabled() else -1

    def send_local_list(self, version: int, update_type: str, items: list[dict] | None) -> tuple[str, list[tuple]]:
        """SendLocalList (§5.15): the status and the ops. NotSupported while the list is disabled."""
        if not self._list_enabled():
            return "NotSupported", []
        status, ops = self.local_list.send_local_list(
            version, update_type, items, max_send=self.settings.get_int("SendLocalListMaxLength"),
            max_length=self.settings.get_int("LocalAuthListMaxLength"))
        if ops:
            # Listed ids are never cached (§3.5.3): drop cache entries the list now covers.
            ops = ops + self.cache.forget(lambda tag: self.local_list.get(tag) is not None)
        return status, ops

    def clear_cache(self) -> list[tuple]:
        """ClearCache (§5.4)."""
        return self.cache.clear()
