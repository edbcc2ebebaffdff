"""The station's security settings (OCPP 1.6 security whitepaper, edition 3): the security
profile and AuthorizationKey in use and the ones waiting to be proven, what the certificate
store holds, and the live statuses of signed firmware and log uploads.

Pure: no clock, no I/O. The certificate store and the TLS connection are adapters
(twin.security, twin.link); they tell the core what it needs to decide (``SecurityFacts``)
and how a connection attempt went (``established`` / ``fallback``).

Two values per setting. The *committed* profile and key are the configuration keys
SecurityProfile and AuthorizationKey: the last ones a connection succeeded with (or the
configured ones before any). A ChangeConfiguration that raises the profile or replaces the
key under profile 1/2 makes a *pending* value: the next connection tries it, and only a
connection the CSMS accepts commits it (A05.FR.07-09; A01). Both are persisted.

A failed attempt on a pending value:

- key: dropped only when the CSMS refused the credentials (HTTP 401/403 on the upgrade,
  FailedToAuthenticationAtCentralSystem). Any other failure (refused TCP, timeout, a CSMS
  restarting) keeps it: from the Accepted on, the CSMS may take the new key only
  (A01.FR.03), so going back to the old one on a network glitch could lock the station out.
- profile: the station falls back to the committed settings for the rest of this run
  (A05.FR.08) but keeps the pending profile persisted and tries it again at the next start
  of the process (TC_083: the CSMS may still serve only the old profile when the station
  first tries, then sends Reset(Hard); the station must come back trying the new one). Not
  on every reconnect of the run, or the link would alternate for ever. After
  ``MAX_PROFILE_STARTS`` failed starts (counted, persisted) it is given up.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from twin.core.ops import NS, kv_del, kv_put
from twin.core.settings import Settings
from twin.security.auth_key import is_valid_authorization_key

PENDING_PROFILE = "pending_profile"  # NS.SECURITY keys
PENDING_KEY = "pending_key"
PENDING_PROFILE_FAILED_STARTS = "pending_profile_failed_starts"
MAX_PROFILE = 3
MAX_PROFILE_STARTS = 5  # failed starts after which a pending profile is given up

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SecurityFacts:
    """What the certificate store holds, as far as the core's decisions need it."""

    central_system_roots: int = 0
    manufacturer_roots: int = 0
    charge_point_certificate: bool = False


@dataclass(frozen=True)
class SecurityConnection:
    """What the next connection should use. ``repr`` never shows a key."""

    profile: int
    authorization_key: str = field(repr=False)
    pending_profile: int | None = None
    pending_key: str | None = field(default=None, repr=False)

    @property
    def has_pending(self) -> bool:
        return self.pending_profile is not None or self.pending_key is not None


class Security:
    def __init__(self, settings: Settings, state: dict):
        self.settings = settings
        self.pending_profile: int | None = state.get(PENDING_PROFILE)
        self.pending_key: str | None = state.get(PENDING_KEY)
        self.profile_failed_starts: int = int(state.get(PENDING_PROFILE_FAILED_STARTS) or 0)
        if self.pending_profile is not None and not self._raises(self.pending_profile):
            self.pending_profile = None  # an old pending value the committed one has caught up with
        # The pending profile failed in this run: not tried again before the next start
        # (not persisted: a new process tries it again).
        self.profile_deferred = False
        self.facts = SecurityFacts()
        # Live statuses of the adapters, for ExtendedTriggerMessage (L01.FR.28/29, N01.FR.12).
        self.signed_firmware: tuple[str, int | None] = ("Idle", None)
        self.log: tuple[str, int | None] = ("Idle", None)

    # ------------------------------------------------------------------ queries
    @property
    def profile(self) -> int:
        return self.settings.get_int("SecurityProfile")

    @property
    def authorization_key(self) -> str:
        return self.settings.get_str("AuthorizationKey")

    def connection(self) -> SecurityConnection:
        return SecurityConnection(self.profile, self.authorization_key, self._trying_profile(), self.pending_key)

    def _trying_profile(self) -> int | None:
        """The pending profile the next connection tries: none while deferred in this run."""
        return None if self.profile_deferred else self.pending_profile

    def _raises(self, n: int) -> bool:
        return n > self.profile

    # ------------------------------------------------------------------ ChangeConfiguration
    def why_not_profile(self, value: str) -> str | None:
        """Why ChangeConfiguration(SecurityProfile, value) is Rejected (A05.FR.01-04), or None."""
        text = value.strip()
        if not (text.isascii() and text.isdigit()):
            return f"{value!r} is not a security profile (0-{MAX_PROFILE})"
        n = int(text)
        if n > MAX_PROFILE:
            return f"security profile {n} does not exist (0-{MAX_PROFILE})"
        if n <= self.profile:
            # A05.FR.01 / TC_084: lowering (or repeating) the profile over OCPP is refused.
            return f"security profile {n} is not above the current profile {self.profile}"
        if self.pending_profile is not None and n < self.pending_profile:
            return f"security profile {self.pending_profile} is already being switched to"
        key = self.pending_key or self.authorization_key
        if n in (1, 2) and not is_valid_authorization_key(key):
            return f"security profile {n} needs a valid AuthorizationKey (A05.FR.02)"
        if n in (2, 3) and self.facts.central_system_roots < 1:
            return f"security profile {n} needs an installed CentralSystemRootCertificate (A05.FR.03)"
        if n == 3 and not self.facts.charge_point_certificate:
            return "security profile 3 needs a charge point certificate (A05.FR.04)"
        return None

    def raise_profile(self, n: int) -> list[tuple]:
        # A new Accepted change is tried now, with a fresh count of failed starts.
        self.pending_profile = n
        self.profile_deferred = False
        self.profile_failed_starts = 0
        return [kv_put(NS.SECURITY, PENDING_PROFILE, n), kv_del(NS.SECURITY, PENDING_PROFILE_FAILED_STARTS)]

    def change_key(self, value: str) -> tuple[bool, list[tuple]]:
        """A new AuthorizationKey (already validated). Returns (reconnect, ops): under
        profile 1/2 (or on the way to one) it is pending until the CSMS accepts it; under
        0/3 it is only stored (A01: the key is not used on those profiles)."""
        # The profile the key will be used under next: the committed one while a pending
        # profile is deferred in this run.
        trying = self._trying_profile()
        target = trying if trying is not None else self.profile
        if target in (1, 2):
            self.pending_key = value
            return True, [kv_put(NS.SECURITY, PENDING_KEY, value)]
        return False, self._commit_key(value)

    def _commit_key(self, value: str) -> list[tuple]:
        _status, ops = self.settings.change("AuthorizationKey", value)
        self.pending_key = None
        return ops + [kv_del(NS.SECURITY, PENDING_KEY)]

    # ------------------------------------------------------------------ connection outcomes
    def established(self, profile: int, used_pending_key: bool) -> tuple[list[str], list[tuple]]:
        """A connection the CSMS accepted under ``profile``: what it proved is committed.
        Returns (what changed, ops)."""
        changed: list[str] = []
        ops: list[tuple] = []
        if profile > self.profile:
            _status, put = self.settings.change("SecurityProfile", str(profile))
            ops += put
            changed.append(f"SecurityProfile {profile}")
        if self.pending_profile is not None and self.pending_profile <= self.profile:
            ops += self._drop_profile()
        if used_pending_key and self.pending_key is not None:
            ops += self._commit_key(self.pending_key)
            changed.append("AuthorizationKey")
        return changed, ops

    def _drop_profile(self) -> list[tuple]:
        self.pending_profile = None
        self.profile_deferred = False
        self.profile_failed_starts = 0
        return [kv_del(NS.SECURITY, PENDING_PROFILE), kv_del(NS.SECURITY, PENDING_PROFILE_FAILED_STARTS)]

    def fallback(self, kind: str) -> list[tuple]:
        """The pending ``kind`` ("profile" or "key") failed to connect: back to the committed
        settings (A05.FR.08). The caller decides which failures count (a key only on a
        refusal of the credentials). A profile is deferred to the next start, and given up
        after MAX_PROFILE_STARTS failed starts; a key is dropped. No ops (and no change)
        when there is nothing to fall back from."""
        if kind == "profile" and self._trying_profile() is not None:
            self.profile_failed_starts += 1
            if self.profile_failed_starts >= MAX_PROFILE_STARTS:
                log.warning("security profile %d failed to connect in %d starts: giving it up, staying on "
                            "profile %d", self.pending_profile, self.profile_failed_starts, self.profile)
                return self._drop_profile()
            self.profile_deferred = True
            log.warning("security profile %d failed to connect (start %d of %d): profile %d for the rest of this "
                        "run, profile %d is tried again at the next start", self.pending_profile,
                        self.profile_failed_starts, MAX_PROFILE_STARTS, self.profile, self.pending_profile)
            return [kv_put(NS.SECURITY, PENDING_PROFILE_FAILED_STARTS, self.profile_failed_starts)]
        if kind == "key" and self.pending_key is not None:
            self.pending_key = None
            return [kv_del(NS.SECURITY, PENDING_KEY)]
        return []
