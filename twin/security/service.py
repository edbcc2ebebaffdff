"""The certificate service: the adapter between the station core and the certificate store
(OCPP 1.6 security whitepaper, edition 3, use cases A02/A03, M03, M04, M05).

- It answers the four CSMS calls the core delegates (``A.Delegate``): InstallCertificate,
  GetInstalledCertificateIds, DeleteCertificate and CertificateSigned, through
  ``rt.link.reply``.
- It runs ``A.SecurityTask("SignCertificate")``: a new key pair and CSR, sent with
  ``station.send_sign_certificate`` (A02), and asks for one by itself when the charge
  point certificate is within a month of its expiry (A03.FR.02).
- It tells the core what the store holds (``station.security_facts``, for the
  SecurityProfile prerequisites A05.FR.03/04) at start and after every change, and raises
  the security events through ``station.security_event``.

Every file and crypto operation runs off the event loop (``asyncio.to_thread``); one lock
keeps them in order, so a CertificateSigned never races the CSR it answers. A store that
cannot be written (a full disk) gives Failed/Rejected and a log line; the station keeps
running. Private keys are never logged and never part of :meth:`SecurityService.snapshot`.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any, Callable

from cryptography import x509

from twin.security import csr as csr_mod
from twin.security import pki
from twin.security.certs import CertificateStore, Inventory, Outcome
from twin.security.pki import CENTRAL_SYSTEM_ROOT, CERTIFICATE_USES, MANUFACTURER_ROOT, CertificateError

log = logging.getLogger("twin.security")

SIGN_CERTIFICATE = "SignCertificate"
# Fallbacks for keys a charger profile may lack (the iEVQC33 reports 20 and 10000).
DEFAULT_STORE_MAX_LENGTH = 20
# A03.FR.02: renew when the certificate expires within "one month"; libocpp uses 30 days.
RENEW_BEFORE = timedelta(days=30)
RENEW_AT_MOST_EVERY = timedelta(days=1)


@dataclass(frozen=True)
class SecuritySettings:
    """The ``[security]`` entries the certificate service reads.

    ``certificate_cn``: the CN of the CSR. Empty: the BootNotification
    chargePointSerialNumber, else the charge point id (A00.FR.405/511 want the serial; some
    CSMSs compare the CN with the identity instead, hence the choice).
    ``key_algorithm``: "ec" (ECDSA P-256, for the ECDHE-ECDSA suites) or "rsa";
    ``rsa_bits``: at least 2048 (A00.FR.501-503)."""

    certificate_cn: str | None = None
    key_algorithm: str = "ec"
    rsa_bits: int = 2048
    renew_check_s: float = 3600.0  # how often the expiry is looked at (a request is at most daily)
    reconnect_delay_s: float = 1.0  # profile 3: the CertificateSigned.conf leaves before the reconnect

    KEYS = ("certificate_cn", "key_algorithm", "rsa_bits")

    @classmethod
    def from_table(cls, table: Mapping[str, Any] | None, *, strict: bool = False) -> SecuritySettings:
        """From the station TOML's ``[security]`` table. Entries this service does not read
        are left to the others sharing the table, unless ``strict``. Raises ValueError
        naming the entry for a bad value."""
        table = dict(table or {})
        if strict:
            unknown = sorted(set(table) - set(cls.KEYS))
            if unknown:
                raise ValueError(f"security.{unknown[0]}: unknown key (known here: {', '.join(cls.KEYS)})")
        cn = table.get("certificate_cn")
        if cn is not None:
            if not isinstance(cn, str):
                raise ValueError("security.certificate_cn: must be a string")
            if len(cn) > csr_mod.NAME_MAX:
                raise ValueError(f"security.certificate_cn: longer than {csr_mod.NAME_MAX} characters")
        algorithm = table.get("key_algorithm", "ec")
        if algorithm not in ("ec", "rsa"):
            raise ValueError(f"security.key_algorithm: {algorithm!r} is not \"ec\" or \"rsa\"")
        bits = table.get("rsa_bits", 2048)
        if not isinstance(bits, int) or isinstance(bits, bool) or bits < pki.MIN_RSA_BITS or bits > 16384:
            raise ValueError(f"security.rsa_bits: {bits!r} is not a whole number from {pki.MIN_RSA_BITS} to 16384")
        return cls(certificate_cn=cn or None, key_algorithm=algorithm, rsa_bits=bits)

    @classmethod
    def from_config(cls, cfg: Any) -> SecuritySettings:
        """From a StationConfig: its ``security`` table (a mapping, or an object with
        these attributes), or the defaults when the config has none."""
        section = getattr(cfg, "security", None)
        if section is None:
            return cls()
        if isinstance(section, Mapping):
            return cls.from_table(section)
        return cls.from_table({k: getattr(section, k) for k in cls.KEYS if getattr(section, k, None) is not None})


# ------------------------------------------------------------------ the store, described
def _iso(moment: datetime) -> str:
    return moment.astimezone(timezone.utc).isoformat().replace("+00:00", "Z")


def _serial(cert: x509.Certificate) -> str:
    try:
        return pki.serial_hex(cert.serial_number)
    except CertificateError:
        return "-" + pki.serial_hex(-cert.serial_number)


def describe_certificate(cert: x509.Certificate) -> dict[str, Any]:
    return {"subject": cert.subject.rfc4514_string(), "issuer": cert.issuer.rfc4514_string(),
            "serialNumber": _serial(cert), "notBefore": _iso(cert.not_valid_before_utc),
            "notAfter": _iso(cert.not_valid_after_utc), "sha256Fingerprint": pki.fingerprint(cert)}


def charge_point_states(leaves: list[x509.Certificate], now: datetime) -> list[str]:
    """The state of each charge point certificate (newest notBefore first, as the store
    lists them): "active" is the one the next connection presents (the valid one with the
    newest notBefore, A02.FR.09), "fallback" an older valid one (A02.FR.10), "future" one
    whose validity has not started (A02.FR.08), "expired"."""
    states, active = [], False
    for cert in leaves:
        if now > cert.not_valid_after_utc:
            states.append("expired")
        elif now < cert.not_valid_before_utc:
            states.append("future")
        elif not active:
            active = True
            states.append("active")
        else:
            states.append("fallback")
    return states


def describe_inventory(inventory: Inventory, now: datetime) -> dict[str, Any]:
    """The store for /api/state and ``twin certs list``: per root type each certificate's
    subject, issuer, validity and SHA256 CertificateHashData (what
    GetInstalledCertificateIds reports); the charge point certificates with their state;
    whether a CSR awaits its certificate. Certificates only: no key material."""
    roots: dict[str, list[dict[str, Any]]] = {}
    for use in CERTIFICATE_USES:
        entries = []
        for cert in inventory.roots.get(use, []):
            entry = describe_certificate(cert)
            try:
                entry["hashData"] = pki.hash_data(cert, cert, "SHA256")
            except (CertificateError, ValueError):
                entry["hashData"] = None
            entries.append(entry)
        roots[use] = entries
    charge_point = []
    for cert, state in zip(inventory.charge_point, charge_point_states(inventory.charge_point, now)):
        entry = describe_certificate(cert)
        entry["state"] = state
        charge_point.append(entry)
    return {
        "installedCertificates": roots,
        "chargePointCertificates": charge_point,
        "pendingCsr": inventory.pending,
        "pendingCsrSince": _iso(inventory.pending_requested_at) if inventory.pending_requested_at else None,
    }


def renewal_due(inventory: Inventory, now: datetime, before: timedelta = RENEW_BEFORE) -> bool:
    """A03.FR.02: the charge point has a certificate and none it holds is valid beyond
    ``now + before`` (a renewed one that starts later counts as renewed)."""
    if not inventory.charge_point:
        return False
    return all(cert.not_valid_after_utc - now <= before for cert in inventory.charge_point)


# ------------------------------------------------------------------ the service
@dataclass
class _Cache:
    inventory: Inventory | None = None
    error: str | None = None
    tasks: set[asyncio.Task] = field(default_factory=set)


class SecurityService:
    """One station's certificate service. ``rt`` is the runtime: ``rt.link`` (reply,
    reply_error, connected, and ``peer_certificates()`` once the link has it), ``rt.actor``
    and ``rt.station`` (the core), ``rt.cfg``, ``rt.clock``."""

    def __init__(self, rt: Any, store: CertificateStore, settings: SecuritySettings | None = None,
                 clock: Callable[[], datetime] | None = None):
        self.rt = rt
        self.store = store
        self.settings = settings or SecuritySettings()
        self.clock = clock or rt.clock
        self._lock = asyncio.Lock()
        self._cache = _Cache()
        self._renewal: asyncio.Task | None = None
        self._last_renewal: datetime | None = None
        self._unregistered = False
        self._closed = False

    # -------------------------------------------------------------- lifecycle
    async def start(self, *, renewal: bool = True) -> None:
        """Tell the core what the store holds (before the link connects: a
        ChangeConfiguration(SecurityProfile) may come first thing) and start the timer."""
        await self._refresh()
        await self._post_facts()
        if renewal:
            self._renewal = asyncio.create_task(self._renewal_loop(), name="certificate-renewal")

    async def close(self) -> None:
        self._closed = True
        pending = [t for t in (self._renewal, *self._cache.tasks) if t is not None and not t.done()]
        for t in pending:
            t.cancel()
        for t in pending:
            try:
                await t
            except (asyncio.CancelledError, Exception):  # noqa: BLE001 - closing
                pass

    def store_changed(self) -> asyncio.Task:
        """Another part of the station changed the store (e.g. provisioning from the config
        files at start): re-read it and tell the core, in the background."""
        async def refresh() -> None:
            async with self._lock:
                await self._refresh()
                await self._post_facts()

        return self._spawn(refresh())

    def _spawn(self, coro) -> asyncio.Task:
        task = asyncio.ensure_future(coro)
        self._cache.tasks.add(task)
        task.add_done_callback(self._cache.tasks.discard)
        return task

    # -------------------------------------------------------------- the core's view
    def _station(self):
        return self.rt.station

    async def _core(self, method: str, *args: Any) -> Any:
        """Call a core event through the actor; a core without it (older wiring) is logged."""
        fn = getattr(self._station(), method, None)
        if fn is None:
            log.warning("certificate service: the station core has no %s; not reported", method)
            return None
        return await self.rt.actor.call(fn, *args)

    def _key(self, name: str) -> str | None:
        try:
            return self._station().settings.keys.get(name)
        except (KeyError, AttributeError):
            return None

    def _int_key(self, name: str, default: int) -> int:
        try:
            return int(self._key(name) or default)
        except ValueError:
            return default

    def _profile(self) -> int:
        security = getattr(self._station(), "security", None)
        try:
            return int(security.connection().profile) if security is not None else 0
        except (AttributeError, TypeError, ValueError):
            return 0

    def certificate_cn(self) -> str:
        """The CSR's CN: ``[security] certificate_cn``, else the BootNotification
        chargePointSerialNumber, else the charge point id (A00.FR.405/511)."""
        if self.settings.certificate_cn:
            return self.settings.certificate_cn
        spec = getattr(self._station(), "spec", None)
        identity = dict(getattr(self.rt.cfg, "identity", None) or {})
        identity.update(getattr(spec, "identity", None) or {})
        serial = identity.get("chargePointSerialNumber")
        return serial or self.rt.cfg.charge_point_id

    async def _post_facts(self) -> None:
        from twin.core.security import SecurityFacts

        inventory = self._cache.inventory
        if inventory is None:
            return
        now = self.clock()
        # A05.FR.03/04 ask for *valid* certificates: an expired root or pair does not count.
        valid = {use: sum(1 for c in inventory.roots.get(use, []) if pki.validity_problem(c, now) is None)
                 for use in CERTIFICATE_USES}
        has_pair = any(pki.validity_problem(c, now) is None for c in inventory.charge_point)
        await self._core("security_facts", SecurityFacts(central_system_roots=valid[CENTRAL_SYSTEM_ROOT],
                                                         manufacturer_roots=valid[MANUFACTURER_ROOT],
                                                         charge_point_certificate=has_pair))

    async def _event(self, name: str, tech_info: str | None) -> None:
        await self._core("security_event", name, tech_info)

    async def _refresh(self) -> None:
        try:
            self._cache.inventory = await asyncio.to_thread(self.store.inventory)
            self._cache.error = None
        except OSError as exc:
            self._cache.error = f"cannot read the certificate store: {exc.strerror or exc}"
            log.error("certificate service: %s", self._cache.error)

    def snapshot(self) -> dict[str, Any]:
        """For GET /api/state: what :func:`describe_inventory` says of the store (as last
        read, off the loop, after each change), the states computed for now."""
        inventory = self._cache.inventory
        if inventory is None:
            snap: dict[str, Any] = describe_inventory(Inventory({}, [], False), self.clock())
        else:
            snap = describe_inventory(inventory, self.clock())
        if self._cache.error:
            snap["error"] = self._cache.error
        return snap

    # -------------------------------------------------------------- CSMS calls
    async def handle(self, act: Any) -> None:
        """Answer one delegated call (``act.unique_id``, ``act.action``, ``act.payload``)."""
        handlers = {"InstallCertificate": self._install, "GetInstalledCertificateIds": self._installed_ids,
                    "DeleteCertificate": self._delete, "CertificateSigned": self._certificate_signed}
        handler = handlers.get(act.action)
        if handler is None:
            self.rt.link.reply_error(act.unique_id, "NotSupported", f"{act.action} is not a certificate call")
            return
        await handler(act.unique_id, act.payload)

    def _reply(self, uid: str, payload: dict) -> None:
        self.rt.link.reply(uid, payload)

    async def _after_change(self) -> None:
        """The store changed: re-read it and tell the core, before the reply goes out, so
        a ChangeConfiguration(SecurityProfile) right after sees it (A05.FR.03/04)."""
        await self._refresh()
        await self._post_facts()

    async def _install(self, uid: str, payload: dict) -> None:
        """InstallCertificate (M05): Accepted / Rejected (invalid, store full: M05.FR.03/06) /
        Failed (valid but not stored: M05.FR.04)."""
        use, pem = payload.get("certificateType"), payload.get("certificate", "")
        max_length = self._int_key("CertificateStoreMaxLength", DEFAULT_STORE_MAX_LENGTH)
        async with self._lock:
            try:
                outcome = await asyncio.to_thread(self.store.install_root, use, pem, self.clock(), max_length)
            except ValueError as exc:  # an unknown certificateType (the schema's enum lets none through)
                outcome = Outcome("Rejected", reason=str(exc))
            except Exception as exc:  # noqa: BLE001 - whatever the disk did, answer and keep running
                log.exception("InstallCertificate: the store failed")
                outcome = Outcome("Failed", reason=f"the certificate store failed: {type(exc).__name__}")
            if outcome.status == "Accepted" and outcome.event:
                await self._after_change()
        if outcome.status == "Failed":
            log.error("InstallCertificate %s Failed: %s", use, outcome.reason)
        elif outcome.status == "Rejected":
            log.warning("InstallCertificate %s Rejected: %s", use, outcome.reason)
        else:
            log.info("InstallCertificate %s Accepted: %s", use, outcome.reason)
        self._reply(uid, {"status": outcome.status})
        if outcome.event:
            await self._event(outcome.event, outcome.reason)

    async def _installed_ids(self, uid: str, payload: dict) -> None:
        """GetInstalledCertificateIds (M03): NotFound without certificateHashData when none
        (minItems 1)."""
        use = payload.get("certificateType")
        try:
            response = await asyncio.to_thread(self.store.installed_ids_response, use)
        except ValueError:
            response = {"status": "NotFound"}
        self._reply(uid, response)

    async def roots_in_use(self, now: datetime) -> set[str]:
        """The CentralSystemRootCertificates validating the live connection (M04.FR.06).
        The link's ``peer_certificates()`` gives the server chain (DER, leaf first; None
        when not on TLS). A link without that method: every root counts as in use while
        connected over TLS or under profile 2/3, as ``CertificateStore.roots_in_use`` does
        for a chain it cannot place."""
        link = self.rt.link
        if link is None or not getattr(link, "connected", False):
            return set()
        getter = getattr(link, "peer_certificates", None)
        if callable(getter):
            chain = getter()
            if not chain:
                return set()
            return await asyncio.to_thread(self.store.roots_in_use, list(chain), now)
        if self._profile() >= 2 or str(getattr(link, "url", "")).startswith("wss://"):
            roots = await asyncio.to_thread(self.store.roots, CENTRAL_SYSTEM_ROOT)
            return {pki.fingerprint(root) for root in roots}
        return set()

    async def _delete(self, uid: str, payload: dict) -> None:
        """DeleteCertificate (M04): Accepted / NotFound (FR.04; the charge point's own
        certificate is never found, FR.05) / Failed (FR.03; the root in use, FR.06)."""
        hash_data = payload.get("certificateHashData") or {}
        async with self._lock:
            now = self.clock()
            try:
                in_use = await self.roots_in_use(now)
                outcome = await asyncio.to_thread(self.store.delete, hash_data, in_use)
            except ValueError as exc:  # a hashAlgorithm outside the enum
                outcome = Outcome("NotFound", reason=str(exc))
            except Exception as exc:  # noqa: BLE001
                log.exception("DeleteCertificate: the store failed")
                outcome = Outcome("Failed", reason=f"the certificate store failed: {type(exc).__name__}")
            if outcome.status == "Accepted":
                await self._after_change()
        log.log(logging.WARNING if outcome.status == "Failed" else logging.INFO,
                "DeleteCertificate %s: %s", outcome.status, outcome.reason)
        self._reply(uid, {"status": outcome.status})
        if outcome.event:
            await self._event(outcome.event, outcome.reason)

    async def _certificate_signed(self, uid: str, payload: dict) -> None:
        """CertificateSigned (A02.FR.06-08): Accepted and stored for the next connection, or
        Rejected with InvalidChargePointCertificate (sent: A02.FR.07, TC_077)."""
        chain = payload.get("certificateChain", "")
        max_chain = self._int_key("CertificateSignedMaxChainSize", csr_mod.CHAIN_MAX_CHARS)
        async with self._lock:
            now = self.clock()
            try:
                outcome = await asyncio.to_thread(csr_mod.certificate_signed, self.store, chain, now, max_chain)
            except Exception as exc:  # noqa: BLE001
                log.exception("CertificateSigned: the store failed")
                outcome = Outcome("Rejected", reason=f"the certificate store failed: {type(exc).__name__}")
            if outcome.status == "Accepted":
                await self._after_change()
        if outcome.status == "Accepted":
            log.info("CertificateSigned Accepted: %s", outcome.reason)
        elif outcome.event:
            log.warning("CertificateSigned Rejected: %s", outcome.reason)
        else:
            log.error("CertificateSigned Rejected: %s", outcome.reason)
        self._reply(uid, {"status": outcome.status})
        if outcome.event:
            await self._event(outcome.event, outcome.reason)
        if outcome.status == "Accepted":
            self._use_new_certificate(now)

    def _use_new_certificate(self, now: datetime) -> None:
        """Under profile 3 the new certificate is presented from the next connection on
        (A02.FR.08); TC_074 expects that reconnection. Under 1/2 it waits for an upgrade to
        profile 3. A certificate whose validity starts later is taken up then."""
        if self._profile() != 3:
            return
        inventory = self._cache.inventory
        newest = inventory.charge_point[0] if inventory and inventory.charge_point else None
        delay = self.settings.reconnect_delay_s
        if newest is not None and newest.not_valid_before_utc > now:
            delay = max(delay, (newest.not_valid_before_utc - now).total_seconds() + 1)
            log.info("the new charge point certificate is valid from %s; reconnecting then",
                     _iso(newest.not_valid_before_utc))
        self._spawn(self._reconnect_later(delay, "new charge point certificate"))

    async def _reconnect_later(self, delay: float, reason: str) -> None:
        await asyncio.sleep(delay)  # the CertificateSigned.conf goes out first
        reconnect = getattr(self.rt, "_reconnect", None)
        if reconnect is None or self._closed:
            log.warning("%s: the link cannot reconnect by itself; used from the next connection", reason)
            return
        result = reconnect(reason)
        if inspect.isawaitable(result):
            await result

    # -------------------------------------------------------------- SignCertificate
    def task(self, kind: str) -> asyncio.Task:
        """Run a control action's task (``A.SecurityTask(kind)``) in the background."""
        if kind == SIGN_CERTIFICATE:
            return self._spawn(self.request_certificate("the CSMS asked (ExtendedTriggerMessage)"))
        log.warning("certificate service: unknown security task %r", kind)
        return self._spawn(asyncio.sleep(0))

    async def request_certificate(self, why: str) -> str | None:
        """A new key pair and CSR, sent as SignCertificate.req (A02.FR.02/03/13): O =
        CpoName, CN = :meth:`certificate_cn`. Returns the CSR, or None when it could not be
        made (no CpoName, the key not stored); the log says why."""
        organization = (self._key("CpoName") or "").strip()
        if not organization:
            log.warning("SignCertificate (%s): CpoName is not set; no CSR", why)
            return None
        cn = self.certificate_cn()
        async with self._lock:
            now = self.clock()
            try:
                csr = await asyncio.to_thread(csr_mod.request_certificate, self.store, cn, organization,
                                              self.settings.key_algorithm, self.settings.rsa_bits, now)
            except ValueError as exc:
                log.error("SignCertificate (%s): no CSR: %s", why, exc)
                return None
            except OSError as exc:
                log.error("SignCertificate (%s): cannot store the new key: %s", why, exc.strerror or exc)
                return None
            await self._refresh()
        log.info("SignCertificate (%s): CSR for CN=%s, O=%s", why, cn, organization)
        await self._core("send_sign_certificate", csr)
        return csr

    async def renew_if_due(self) -> bool:
        """A03.FR.02: ask for a new certificate when the charge point's expires within 30
        days, at most once a day (also across restarts: the pending CSR records its time).
        Returns whether a CSR was sent. Also removes pairs no longer needed (A02.FR.10)."""
        now = self.clock()
        try:
            removed = await asyncio.to_thread(self.store.prune_charge_point_certificates, now)
        except OSError as exc:
            log.warning("certificate store: cannot remove old charge point certificates: %s", exc.strerror or exc)
            removed = []
        if removed:
            log.info("certificate store: removed %d expired or superseded charge point certificate(s)", len(removed))
        await self._refresh()
        if removed:
            await self._post_facts()
        inventory = self._cache.inventory
        if inventory is None or not renewal_due(inventory, now):
            return False
        last = max((t for t in (self._last_renewal, inventory.pending_requested_at) if t is not None), default=None)
        if last is not None and now - last < RENEW_AT_MOST_EVERY:
            return False
        if getattr(self._station(), "registration", None) != "Accepted":
            self._unregistered = True  # checked again soon: a CSR is only useful to a CSMS that listens
            return False
        self._unregistered = False
        self._last_renewal = now
        expiry = min(c.not_valid_after_utc for c in inventory.charge_point)
        return await self.request_certificate(f"the charge point certificate expires on {_iso(expiry)}") is not None

    async def _renewal_loop(self) -> None:
        while not self._closed:
            try:
                await self.renew_if_due()
            except asyncio.CancelledError:
                raise
            except Exception:  # noqa: BLE001 - the timer must survive a bad day
                log.exception("certificate renewal check failed")
            await asyncio.sleep(min(self.settings.renew_check_s, 60.0) if self._unregistered
                                else self.settings.renew_check_s)
