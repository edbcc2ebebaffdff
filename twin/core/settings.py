"""Typed access to the configuration keys, as the station core reads them.

The OCPP definitions (type, range, section) live in :mod:`twin.core.keys`; a charger
profile supplies the values. The core reads a key through :class:`Settings`:

* by its canonical spelling only (``"ConnectionTimeOut"``, §9.1.6). A name that is not an
  OCPP key, or is spelt in another letter case, raises :class:`KeyError`: a misspelt name
  in the core is a bug, not a reason to fall back silently;
* as the type its definition gives (``get_int`` on a boolean key is an error too);
* with one fallback, from :data:`FALLBACKS`, for a key a charger profile may leave out:
  an optional key (§9 "Required: no"), or one of a feature profile the model may not
  support. A key every profile must have has no fallback.
"""

from __future__ import annotations

from typing import Mapping

from twin.core.keys import KEYS, ConfigKeys, split_csl
from twin.core.ops import NS, kv_put

# What the station does when its charger profile lacks the key. Each value is the
# behaviour the twin had before the key was configurable, chosen to be the spec's
# neutral reading of an absent key.
FALLBACKS: Mapping[str, int | bool | list[str]] = {
    "AllowOfflineTxForUnknownId": False,  # §9.1.1: unknown ids are not accepted offline
    "AuthorizationCacheEnabled": True,  # §9.1.2 (the cache is part of Core, §3.5.1)
    "MaxEnergyOnInvalidId": 0,  # §9.1.14: no energy after an id turns out invalid
    "MinimumStatusDuration": 0,  # §9.1.20: every status is reported at once
    "StopTransactionOnEVSideDisconnect": True,  # §9.1.23, errata 3.80: the usual behaviour
    "MessageTimeout": 30,  # errata 3.83
    "LocalAuthListEnabled": True,  # §9.2.1: an empty list authorizes nobody
    "LocalAuthListMaxLength": 100,  # §9.2.2
    "SendLocalListMaxLength": 100,  # §9.2.3
    "ReserveConnectorZeroSupported": False,  # §9.3.1
    "StopTransactionMaxMeterValues": 0,  # vendor key: no limit
    # Security whitepaper edition 3 §7, for a model whose profile leaves them out:
    "SecurityProfile": 0,  # §7.6: 0 "when no security profile is yet configured"
    "AuthorizationKey": "",  # none configured
    "CpoName": "",  # A02: SignCertificate is refused until it is set
    "CertificateStoreMaxLength": 20,
    "AdditionalRootCertificateCheck": False,
    "CertificateSignedMaxChainSize": 10000,  # §7.3: at most 10 000 characters
}

_PYTHON_KIND = {"int": int, "bool": bool, "csl": list, "str": str}


def _check_fallbacks() -> None:
    for name, value in FALLBACKS.items():
        defn = KEYS[name]  # a KeyError here names a misspelt fallback
        if defn.required and defn.feature_profile == "Core":
            raise ValueError(f"{name} is required of every station; it needs no fallback")
        if type(value) is not _PYTHON_KIND[defn.kind]:
            raise ValueError(f"fallback for {name} is not a {defn.kind}")


_check_fallbacks()


class Settings:
    """The station's configuration keys, typed, with changes returned as store ops."""

    def __init__(self, keys: ConfigKeys):
        self.keys = keys

    def _raw(self, name: str, kind: str) -> str | None:
        defn = KEYS.get(name)
        if defn is None:
            raise KeyError(f"{name!r} is not an OCPP configuration key (spelling and letter case must match)")
        if defn.kind != kind:
            raise KeyError(f"{name} is a {defn.kind} key, not {kind}")
        try:
            return self.keys.get(name)
        except KeyError:  # this charger model does not have the key
            if name not in FALLBACKS:
                raise KeyError(f"the charger profile has no {name} and the core has no fallback for it") from None
            return None

    def get_int(self, name: str) -> int:
        raw = self._raw(name, "int")
        return int(raw) if raw is not None else int(FALLBACKS[name])

    def get_bool(self, name: str) -> bool:
        raw = self._raw(name, "bool")
        return raw == "true" if raw is not None else bool(FALLBACKS[name])

    def get_str(self, name: str) -> str:
        raw = self._raw(name, "str")
        return raw if raw is not None else str(FALLBACKS[name])

    def has(self, name: str) -> bool:
        """Whether this charger model has the key (its profile lists it)."""
        try:
            self.keys.definition(name)
        except KeyError:
            return False
        return True

    def get_list(self, name: str) -> list[str]:
        raw = self._raw(name, "csl")
        return split_csl(raw) if raw is not None else list(FALLBACKS[name])  # type: ignore[arg-type]

    def change(self, name: str, value: str) -> tuple[str, list[tuple]]:
        """ChangeConfiguration (§5.3): the status and the ops that persist the change."""
        status, changes = self.keys.change(name, value)
        return status, [kv_put(NS.CONFIG, k, v) for k, v in changes.items()]

    def configuration(self, requested: list[str] | None) -> dict:
        """GetConfiguration.conf (§5.8). Raises keys.TooManyKeys past GetConfigurationMaxKeys."""
        return self.keys.get_configuration(requested)
