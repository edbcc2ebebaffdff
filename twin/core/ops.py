"""Store ops: the only way the core spells a durable change (docs/architecture.md, "Store").

Each constructor returns the plain tuple ``twin.store`` applies, so the store stays a dumb
durable map and its format does not change. Namespaces and the fixed keys of the
``station`` and ``profiles`` namespaces are named here once; a value the CSMS supplies
(an idTag, a reservation id) is only ever a *key inside* a namespace, never a namespace.
"""

from __future__ import annotations

from typing import Any


class NS:
    """Key-value namespaces of the store."""

    CONFIG = "config"  # ChangeConfiguration values (§5.3: a change survives a restart)
    AVAILABILITY = "availability"  # connector id ("0" = the Charge Point) -> Operative/Inoperative
    AUTH_CACHE = "auth_cache"  # idTag -> cache entry (§3.5.1)
    LOCAL_LIST = "local_list"  # idTag -> idTagInfo (§3.5.3)
    LOCAL_LIST_META = "local_list_meta"  # "version": the list's version, apart from its idTags
    PROFILES = "profiles"  # "all": every installed charging profile
    RESERVATIONS = "reservations"  # reservation id -> reservation record
    FIRMWARE = "firmware"  # the firmware service's state
    SECURITY = "security"  # the pending SecurityProfile / AuthorizationKey (twin.core.security)
    STATION = "station"  # the fixed keys below


class StationKey:
    """Keys of the ``station`` namespace: facts the station keeps across a restart."""

    PLUGGED = "plugged"  # connector id -> cable plugged
    METER_ENERGY = "meter_energy"  # connector id -> highest register seen (Wh)
    HARD_RESET = "hard_reset"  # a Hard Reset is under way: its transactions stop with HardReset
    SCHEDULED = "scheduled"  # connector id -> availability waiting for a transaction to end (§5.2)


PROFILES_ALL = "all"  # the one key of the profiles namespace


def kv_put(ns: str, key: str, value: Any) -> tuple:
    return ("kv_put", ns, key, value)


def kv_del(ns: str, key: str) -> tuple:
    return ("kv_del", ns, key)


def kv_clear(ns: str) -> tuple:
    return ("kv_clear", ns)


def tx_put(local_id: int, record: dict) -> tuple:
    return ("tx_put", local_id, record)


def q_put(seq: int, entry: dict) -> tuple:
    return ("q_put", seq, entry)


def q_del(seq: int) -> tuple:
    return ("q_del", seq)


def q_discard(seq: int, reason: str) -> tuple:
    return ("q_discard", seq, reason)


def station_put(key: str, value: Any) -> tuple:
    return kv_put(NS.STATION, key, value)


def profiles_put(json_text: Any) -> tuple:
    return kv_put(NS.PROFILES, PROFILES_ALL, json_text)
