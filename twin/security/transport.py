"""The transport of the OCPP 1.6 security whitepaper (edition 3): what the next connection
attempt uses, and what a failed or successful attempt means.

- :class:`Endpoints`: one CSMS URL per security profile. OCPP 1.6 has no URL key, and a
  CSMS may serve each profile on its own port or path (A00.FR.006), so the station config
  gives ``[csms] url`` and optionally ``[csms.profile_urls]``. The scheme is tied to the
  profile: ws:// for 0 and 1, wss:// for 2 and 3. That is all A00.FR.003 needs on the
  charge point side: a CSMS cannot answer a ws:// request under a TLS profile or the
  other way round, so there is nothing left to compare once connected.
- :func:`plan`: from the station's :class:`~twin.core.security.SecurityConnection`
  (committed and pending profile and key), the endpoints and the certificate store, the
  :class:`Attempt`: URL, ``Authorization: Basic`` header (profiles 1 and 2 only, built
  from the decoded AuthorizationKey bytes, user = the identity at the end of the URL,
  A00.FR.203-205/303-304), and the TLS context (profiles 2 and 3, twin.security.tls). A
  pending profile or key is tried first (A05.FR.07, A01).
- :class:`Monitor`: the outcome of each attempt. A failed attempt on a pending profile
  falls back to the committed settings (A05.FR.08; the core defers the profile to the next
  start). A pending key falls back only when the CSMS refused the credentials (HTTP
  401/403 on the upgrade): on any other failure it is kept and retried with the normal
  backoff, since the CSMS may already take the new key only (A01.FR.03). A connect error
  maps to its security event, raised once per run of failures
  (twin.security.events.FailureRun).

Pure apart from :func:`plan` reading the certificate store (a few small files).
"""

from __future__ import annotations

import ssl
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from urllib.parse import urlsplit

from websockets.exceptions import InvalidStatus

from twin.security import tls
from twin.security.auth_key import AuthorizationKeyError, authorization_key_bytes, basic_auth_header, identity_from_url
from twin.security.certs import CertificateStore
from twin.security.events import FailureRun, clean_tech_info

PROFILES = (0, 1, 2, 3)
BASIC_AUTH_PROFILES = (1, 2)  # profile 3 authenticates by client certificate: no header
TLS_PROFILES = (2, 3)


def scheme_for(profile: int) -> str:
    """The URL scheme of a security profile (whitepaper "Security profiles" table)."""
    if profile not in PROFILES:
        raise ValueError(f"security profile {profile} does not exist (0-3)")
    return "wss" if profile in TLS_PROFILES else "ws"


def scheme_problem(url: str, profile: int) -> str | None:
    """Why ``url`` cannot serve ``profile``, or None."""
    scheme = urlsplit(url).scheme
    want = scheme_for(profile)
    if scheme != want:
        return (f"security profile {profile} connects with {want}://, but the URL is {scheme}:// "
                f"({'TLS' if profile in TLS_PROFILES else 'no TLS'} on profile {profile})")
    return None


@dataclass(frozen=True)
class Endpoints:
    """The CSMS URL (without the charge point identity) of each security profile.

    ``url`` serves every profile whose scheme it has; ``by_profile`` (``[csms.profile_urls]``)
    names the endpoint of a profile explicitly and wins."""

    url: str
    by_profile: Mapping[int, str] = field(default_factory=dict)

    def base(self, profile: int) -> str | None:
        explicit = self.by_profile.get(profile)
        if explicit is not None:
            return explicit
        return self.url if scheme_problem(self.url, profile) is None else None

    def url_for(self, profile: int, charge_point_id: str) -> str | None:
        base = self.base(profile)
        return None if base is None else f"{base.rstrip('/')}/{charge_point_id}"

    def problems(self) -> list[str]:
        """Configuration mistakes: an explicit endpoint whose scheme is not its profile's."""
        found = []
        for profile, url in sorted(self.by_profile.items()):
            if profile not in PROFILES:
                found.append(f"{profile}: no such security profile (0-3)")
            elif problem := scheme_problem(url, profile):
                found.append(f"{profile}: {problem}")
        return found


@dataclass(frozen=True)
class Attempt:
    """One connection attempt. ``repr`` never shows the header or the password."""

    url: str
    profile: int
    ssl: ssl.SSLContext | None = field(default=None, repr=False)
    headers: Mapping[str, str] = field(default_factory=dict, repr=False)
    # The pending values this attempt tries ("profile", "key"): what falls back if it fails.
    trying: frozenset[str] = frozenset()
    # Why the attempt cannot be made at all (no endpoint, no root installed ...); the link
    # reports it as a failed attempt without touching the network.
    problem: str | None = None
    password: bytes = field(default=b"", repr=False)  # for redacting techInfo

    @property
    def used_pending_key(self) -> bool:
        return "key" in self.trying

    @property
    def basic_auth(self) -> bool:
        return "Authorization" in self.headers

    @property
    def plan_key(self) -> tuple:
        """What makes two plans the same attempt (the TLS context aside, a new object each
        time): the link never retries at once with the plan that just failed. Holds the
        header: compare it, never log it."""
        return (self.url, self.profile, tuple(sorted(self.headers.items())), self.trying, self.problem)


class AttemptImpossible(ConnectionError):
    """The attempt could not even be built (``Attempt.problem``)."""


def plan(connection, endpoints: Endpoints, charge_point_id: str, store: CertificateStore | None,
         now: datetime) -> Attempt:
    """The next attempt for ``connection`` (a twin.core.security.SecurityConnection).

    A pending profile above the committed one is tried first, and a pending key with it
    (A05.FR.07; A01). The committed profile is never lowered here: once a connection
    under a raised profile succeeded, the core commits it, and every later plan starts
    from it (A05.FR.09, TC_083)."""
    trying: set[str] = set()
    profile = connection.profile
    if connection.pending_profile is not None and connection.pending_profile > connection.profile:
        profile = connection.pending_profile
        trying.add("profile")
    key = connection.authorization_key
    if connection.pending_key is not None and profile in BASIC_AUTH_PROFILES:
        key = connection.pending_key
        trying.add("key")
    frozen = frozenset(trying)
    url = endpoints.url_for(profile, charge_point_id)
    if url is None:
        return Attempt(f"<no {scheme_for(profile)}:// endpoint>", profile, trying=frozen,
                       problem=f"no {scheme_for(profile)}:// endpoint for security profile {profile} "
                               f"(set [csms.profile_urls] {profile} in the station config)")
    headers: dict[str, str] = {}
    password = b""
    if profile in BASIC_AUTH_PROFILES:
        try:
            password = authorization_key_bytes(key or "")
            headers["Authorization"] = basic_auth_header(identity_from_url(url), password)
        except (AuthorizationKeyError, ValueError) as exc:  # the messages never hold the key
            return Attempt(url, profile, trying=frozen,
                           problem=f"security profile {profile} needs a valid AuthorizationKey: {exc}")
    context = None
    if profile in TLS_PROFILES:
        if store is None:
            return Attempt(url, profile, trying=frozen, problem="no certificate store for a TLS profile")
        try:
            context = tls.context_from_store(store, profile, now)
        except (tls.TlsConfigError, ssl.SSLError, OSError) as exc:
            return Attempt(url, profile, headers=headers, trying=frozen, password=password,
                           problem=f"cannot set up TLS for security profile {profile}: {exc}")
    return Attempt(url, profile, ssl=context, headers=headers, trying=frozen, password=password)


def static_attempt(url: str, password: str | bytes | None = None, ca_file: str | None = None) -> Attempt:
    """A fixed attempt for a bare Link (no station behind it): Basic auth with ``password``
    (an AuthorizationKey text, decoded by the whitepaper's rule, or the bytes themselves),
    and for wss:// the server checked against ``ca_file`` only, or the system's CAs
    without one. The station always uses :func:`plan`."""
    headers: dict[str, str] = {}
    secret = b""
    if password:
        secret = password if isinstance(password, bytes) else authorization_key_bytes(password)
        headers["Authorization"] = basic_auth_header(identity_from_url(url), secret)
    context = None
    tls_url = url.startswith("wss://")
    if tls_url:
        if ca_file:
            with open(ca_file, encoding="ascii") as f:
                context = tls.client_context(2, f.read())
        else:
            context = ssl.create_default_context()
            context.minimum_version = ssl.TLSVersion.TLSv1_2
    profile = (2 if tls_url else 1) if headers else (2 if tls_url else 0)
    return Attempt(url, profile, ssl=context, headers=headers, password=secret)


def describe(exc: BaseException, attempt: Attempt) -> str:
    """The techInfo of a failed attempt: what failed, and where (redacted, at most 255)."""
    text = f"{type(exc).__name__}: {exc}".strip()
    return clean_tech_info(f"{text} ({attempt.url})", secrets=[attempt.password] if attempt.password else ())


def credentials_refused(exc: BaseException) -> bool:
    """Whether the CSMS refused the credentials: HTTP 401 or 403 on the websocket upgrade
    (FailedToAuthenticationAtCentralSystem). The only failure that proves a pending
    AuthorizationKey wrong; a refused TCP connection, a timeout or a TLS failure does not."""
    seen: set[int] = set()
    link: BaseException | None = exc
    while link is not None and id(link) not in seen:
        seen.add(id(link))
        if isinstance(link, InvalidStatus):
            return link.response.status_code in (401, 403)
        link = link.__cause__ or link.__context__
    return False


@dataclass(frozen=True)
class Failure:
    """What one failed attempt asks of the station."""

    event: str | None  # the security event to raise now (None: none, or already raised in this run)
    tech_info: str
    fallbacks: tuple[str, ...]  # pending values to fall back from ("key", "profile"): connect again at once


class Monitor:
    """The outcomes of connection attempts: fallback and security events, once per run."""

    def __init__(self) -> None:
        self.run = FailureRun()

    def failed(self, attempt: Attempt, exc: BaseException) -> Failure:
        name = None if attempt.problem is not None else tls.security_event_for_connect_error(exc, attempt.profile)
        if name is not None and not self.run.first(name):
            name = None
        fallbacks = set(attempt.trying)
        if "key" in fallbacks and not credentials_refused(exc):
            fallbacks.discard("key")  # kept: retried with the normal backoff (A01.FR.03)
        return Failure(name, describe(exc, attempt), tuple(sorted(fallbacks)))

    def connected(self, attempt: Attempt) -> tuple[int, bool]:
        """A websocket the CSMS accepted: the run of failures ends. Returns what the core
        commits: (profile, used_pending_key)."""
        self.run.connected()
        return attempt.profile, attempt.used_pending_key
