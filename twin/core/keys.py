"""OCPP 1.6 configuration keys: the spec's definitions, validation, and the
Get/ChangeConfiguration logic.

This module holds what OCPP defines about each key: its type, range or allowed members,
the accessibility the spec allows (R, RW, or either), whether a station supporting the
key's feature profile must have it, and the section that defines it. The OCPP 1.6 spec
gives no default values for its keys (SPEC §9 lists type, accessibility and
required/optional only), so every value is a charger model's choice and comes from its
charger profile (``twin/profiles/*.toml``, see docs/profiles.md), together with the
access the model reports and which keys it has at all.

No clock and no I/O of its own. The station owns a :class:`ConfigKeys`; the runtime
gives it the charger profile, the ``[keys]`` overrides of the station TOML and the values
persisted earlier by ChangeConfiguration, and stores whatever :meth:`ConfigKeys.change`
says to persist. ``ConfigKeys()`` without a profile takes the shipped iEVQC33 profile
from :mod:`twin.profiles` (read from the package once and cached), which is what tests
and tools want.

Where values come from, lowest to highest precedence:

1. the charger profile: the model's values (the iEVQC33 certified values by default);
2. the ``[keys]`` table of the station TOML (may also set read-only keys: it is how a
   bench describes the station it emulates);
3. values set by the CSMS with ChangeConfiguration and persisted (SPEC §5.3 says a
   changed value must survive a restart). *Stored wins over the TOML*, always: a
   CSMS change is the most recent intent. To make a TOML edit win again, delete
   the key from the ``config`` namespace of the store (or the whole data dir).

A stored value that is no longer acceptable (unknown key after an upgrade, now
read-only, out of range, list longer than a lowered MaxLength) is ignored and
explained in :attr:`ConfigKeys.warnings`, never a crash.

Keys are CiString (SPEC §7.21 / §6.9 ``key`` is CiString50Type), so every lookup by
name is case-insensitive; the answer always uses the canonical spelling.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

from twin.core.limits import INT32_MAX
from twin.security.auth_key import AuthorizationKeyError, authorization_key_bytes

CPO_NAME_MAX = 64  # RFC 5280 ub-organization-name

FEATURE_PROFILES = (
    "Core",
    "FirmwareManagement",
    "LocalAuthListManagement",
    "Reservation",
    "SmartCharging",
    "RemoteTrigger",
)
VENDOR = "Vendor"  # the feature of a vendor-specific key: present whatever the feature profiles
# The keys of the security whitepaper (edition 3 §7). It adds no feature profile to
# SupportedFeatureProfiles, so its keys may be present whatever the list says.
SECURITY = "Security"
KINDS = ("bool", "int", "csl", "str")

R = frozenset({"R"})
RW = frozenset({"RW"})
R_OR_RW = frozenset({"R", "RW"})  # the spec lets the station choose
W = frozenset({"W"})  # write-only (WP3 §7.2 AuthorizationKey): never returned by GetConfiguration
ACCESS_VALUES = ("R", "RW", "W")

VALUE_MAX_CHARS = 500  # GetConfiguration.conf value is CiString500Type (SPEC §7.19)

# What the twin can actually measure: the simulated meter and the Modbus meter maps
# supply energy, power, current, voltage and frequency; the EV model supplies SoC; the
# station itself knows what it offers (Current.Offered / Power.Offered, §7.31).
# Not supported, hence Rejected in ChangeConfiguration (SPEC §9.1.15/17):
# Temperature (no sensor in the sim or on the meter), reactive/export registers,
# Power.Factor, RPM, and per-phase suffixes such as "Current.Import.L1" - the
# readings are single-valued, so the twin cannot honour a phase-qualified measurand.
SUPPORTED_MEASURANDS: frozenset[str] = frozenset(
    {
        "Energy.Active.Import.Register",
        "Power.Active.Import",
        "Current.Import",
        "Voltage",
        "Frequency",
        "SoC",
        "Current.Offered",
        "Power.Offered",
    }
)

# SPEC §9.1.7: ConnectorPhaseRotation items are "<connectorId>.<rotation>".
PHASE_ROTATIONS = frozenset({"NotApplicable", "Unknown", "RST", "RTS", "SRT", "STR", "TRS", "TSR"})

FILE_TRANSFER_PROTOCOLS = frozenset({"FTP", "FTPS", "HTTP", "HTTPS"})  # ERRATA 3.90


@dataclass(frozen=True)
class KeyDef:
    """One configuration key as OCPP defines it. Values and the access a model reports
    come from its charger profile."""

    name: str
    kind: str  # "bool" | "int" | "csl" | "str"
    feature_profile: str  # one of FEATURE_PROFILES, or VENDOR
    section: str  # where it is defined: "§9.1.10", "ERRATA 3.90", "vendor"
    access: frozenset[str]  # what the spec allows a station to report: R, RW or R_OR_RW
    required: bool = False  # a station supporting feature_profile must have it
    minimum: int | None = None
    maximum: int | None = None
    allowed: frozenset[str] | None = None  # csl: allowed members
    max_length_key: str | None = None  # csl: the key holding the maximum number of items
    reboot_required: bool = False
    min_items: int = 0  # csl: an empty list is meaningful for measurand lists only

    @property
    def spec_allows_rw(self) -> bool:
        return "RW" in self.access


def _bool(name: str, section: str, access: frozenset[str], *, feature: str = "Core",
          required: bool = False) -> KeyDef:
    return KeyDef(name, "bool", feature, section, access, required)


def _int(name: str, section: str, access: frozenset[str], *, feature: str = "Core", required: bool = False,
         minimum: int = 0, maximum: int = INT32_MAX) -> KeyDef:
    return KeyDef(name, "int", feature, section, access, required, minimum, maximum)


def _csl(name: str, section: str, access: frozenset[str], allowed: frozenset[str] | None,
         max_length_key: str | None, *, feature: str = "Core", required: bool = False,
         min_items: int = 0) -> KeyDef:
    return KeyDef(name, "csl", feature, section, access, required, allowed=allowed,
                  max_length_key=max_length_key, min_items=min_items)


def _measurands(name: str, section: str) -> KeyDef:
    return _csl(name, section, RW, SUPPORTED_MEASURANDS, name + "MaxLength", required=True)


# Accessibility and required/optional per SPEC §9 and the errata; the required Core keys
# are the ones OCTT TC_019 checks (conformance Table 25).
_DEFS: tuple[KeyDef, ...] = (
    # --- Core (SPEC §9.1) ---
    _bool("AllowOfflineTxForUnknownId", "§9.1.1", RW),
    _bool("AuthorizationCacheEnabled", "§9.1.2", RW),
    _bool("AuthorizeRemoteTxRequests", "§9.1.3", R_OR_RW, required=True),
    _int("BlinkRepeat", "§9.1.4", RW),
    _int("ClockAlignedDataInterval", "§9.1.5", RW, required=True),  # 0 = no clock-aligned data
    _int("ConnectionTimeOut", "§9.1.6", RW, required=True),  # ERRATA 3.77, 3.89
    # Connector ids in the items are not checked against NumberOfConnectors: a certified
    # model may print more rotations than it has connectors (see the iEVQC33 profile).
    _csl("ConnectorPhaseRotation", "§9.1.7", RW, None, "ConnectorPhaseRotationMaxLength", required=True,
         min_items=1),
    _int("ConnectorPhaseRotationMaxLength", "§9.1.8", R, minimum=1),
    _int("GetConfigurationMaxKeys", "§9.1.9", R, required=True, minimum=1),
    _int("HeartbeatInterval", "§9.1.10", RW, required=True),
    _int("LightIntensity", "§9.1.11", RW, maximum=100),  # percent
    _bool("LocalAuthorizeOffline", "§9.1.12", RW, required=True),
    _bool("LocalPreAuthorize", "§9.1.13", RW, required=True),
    _int("MaxEnergyOnInvalidId", "§9.1.14", RW),  # Wh
    _measurands("MeterValuesAlignedData", "§9.1.15"),
    _int("MeterValuesAlignedDataMaxLength", "§9.1.16", R, minimum=1),
    _measurands("MeterValuesSampledData", "§9.1.17"),
    _int("MeterValuesSampledDataMaxLength", "§9.1.18", R, minimum=1),
    _int("MeterValueSampleInterval", "§9.1.19", RW, required=True),  # 0 = no sampled data; TC_040_2: -1 Rejected
    _int("MinimumStatusDuration", "§9.1.20", RW),
    _int("NumberOfConnectors", "§9.1.21", R, required=True, minimum=1),
    _int("ResetRetries", "§9.1.22", RW, required=True),
    _bool("StopTransactionOnEVSideDisconnect", "§9.1.23", R_OR_RW),  # ERRATA 3.80: optional, R or RW
    _bool("StopTransactionOnInvalidId", "§9.1.24", RW, required=True),
    _measurands("StopTxnAlignedData", "§9.1.25"),
    _int("StopTxnAlignedDataMaxLength", "§9.1.26", R, minimum=1),
    _measurands("StopTxnSampledData", "§9.1.27"),
    _int("StopTxnSampledDataMaxLength", "§9.1.28", R, minimum=1),
    _csl("SupportedFeatureProfiles", "§9.1.29", R, frozenset(FEATURE_PROFILES), "SupportedFeatureProfilesMaxLength",
         required=True, min_items=1),
    _int("SupportedFeatureProfilesMaxLength", "§9.1.30", R, minimum=1),
    _int("TransactionMessageAttempts", "§9.1.31", RW, required=True),  # §3.7.1
    _int("TransactionMessageRetryInterval", "§9.1.32", RW, required=True),  # seconds
    # R or RW; ERRATA 3.84: a fixed-cable station reports false, read-only (the charger
    # profile loader enforces that unless the model's quirk says otherwise).
    _bool("UnlockConnectorOnEVSideDisconnect", "§9.1.33", R_OR_RW, required=True),
    _int("WebSocketPingInterval", "§9.1.34", RW),  # seconds, 0 = no pings
    _int("MessageTimeout", "ERRATA 3.83", RW, minimum=1),  # seconds
    # --- Local Auth List Management (SPEC §9.2) ---
    _bool("LocalAuthListEnabled", "§9.2.1", RW, feature="LocalAuthListManagement", required=True),
    _int("LocalAuthListMaxLength", "§9.2.2", R, feature="LocalAuthListManagement", required=True, minimum=1),
    _int("SendLocalListMaxLength", "§9.2.3", R, feature="LocalAuthListManagement", required=True, minimum=1),
    # --- Reservation (SPEC §9.3) ---
    _bool("ReserveConnectorZeroSupported", "§9.3.1", R, feature="Reservation"),
    # --- Smart Charging (SPEC §9.4); all read-only ---
    _int("ChargeProfileMaxStackLevel", "§9.4.1", R, feature="SmartCharging", required=True),
    _csl("ChargingScheduleAllowedChargingRateUnit", "§9.4.2", R, frozenset({"Current", "Power"}), None,
         feature="SmartCharging", required=True, min_items=1),  # ERRATA 3.88: Current = A, Power = W
    _int("ChargingScheduleMaxPeriods", "§9.4.3", R, feature="SmartCharging", required=True, minimum=1),
    _bool("ConnectorSwitch3to1PhaseSupported", "§9.4.4", R, feature="SmartCharging"),
    _int("MaxChargingProfilesInstalled", "§9.4.5", R, feature="SmartCharging", required=True, minimum=1),
    # --- Firmware Management: ERRATA 3.90 adds this optional key ---
    _csl("SupportedFileTransferProtocols", "ERRATA 3.90", R, FILE_TRANSFER_PROTOCOLS, None,
         feature="FirmwareManagement", min_items=1),
    # --- Vendor keys (the model chooses R or RW) ---
    # Max MeterValues carried in StopTransaction.transactionData; 0 = no limit.
    _int("StopTransactionMaxMeterValues", "vendor", R_OR_RW, feature=VENDOR),
    # --- Security whitepaper edition 3 §7 ---
    _bool("AdditionalRootCertificateCheck", "WP3 §7.1", R, feature=SECURITY),
    # 16-20 bytes as hex or text (twin.security.auth_key); "" = none configured.
    KeyDef("AuthorizationKey", "str", SECURITY, "WP3 §7.2", W),
    _int("CertificateSignedMaxChainSize", "WP3 §7.3", R, feature=SECURITY, maximum=10000),
    _int("CertificateStoreMaxLength", "WP3 §7.4", R, feature=SECURITY),
    KeyDef("CpoName", "str", SECURITY, "WP3 §7.5", RW),  # the O of the charge point certificate (A02.FR.13)
    # Only upwards over OCPP (A05.FR.01); ChangeConfiguration goes through twin.core.security.
    _int("SecurityProfile", "WP3 §7.6", RW, feature=SECURITY, maximum=3),
)

KEYS: dict[str, KeyDef] = {d.name: d for d in _DEFS}
_CANONICAL: dict[str, str] = {name.lower(): name for name in KEYS}


class KeyConfigError(ValueError):
    """A bad ``[keys]`` override or charger-profile key: names the key and the problem."""

    def __init__(self, key: str, problem: str):
        super().__init__(f"{key}: {problem}")
        self.key = key
        self.problem = problem


class TooManyKeys(ValueError):
    """GetConfiguration.req asked for more keys than GetConfigurationMaxKeys allows
    (SPEC §9.1.9: it is the maximum number of keys *in a request*). The station
    answers with a CALLERROR of :attr:`code` (OCPP-J 1.6 §4.2.3: the payload is
    well-formed but a field violates an occurrence constraint) rather than a
    silently truncated answer that would look complete."""

    code = "OccurenceConstraintViolation"  # sic: OCPP-J 1.6 spelling

    def __init__(self, requested: int, maximum: int):
        super().__init__(f"{requested} keys requested, GetConfigurationMaxKeys is {maximum}")
        self.requested = requested
        self.maximum = maximum


def canonical_name(name: str) -> str | None:
    """The canonical spelling of a key (CiString: case-insensitive), or None."""
    return _CANONICAL.get(name.lower())


def split_csl(value: str) -> list[str]:
    """Items of a comma-separated list; blanks around items are ignored, "" is []."""
    return [item.strip() for item in value.split(",")] if value.strip() else []


def normalize(defn: KeyDef, value: str) -> str:
    """Check ``value`` for ``defn`` on its own (type, range, members) and return the
    canonical text to store. Raises ValueError with the problem. The list length
    against [Key]MaxLength needs the other keys: see :func:`_length_problem`."""
    if not isinstance(value, str):
        raise ValueError(f"value must be a string, got {type(value).__name__}")
    if len(value) > VALUE_MAX_CHARS:
        raise ValueError(f"value is longer than {VALUE_MAX_CHARS} characters")
    if defn.kind == "bool":
        lowered = value.strip().lower()
        if lowered not in ("true", "false"):
            raise ValueError(f"{value!r} is not a boolean (true or false)")
        return lowered
    if defn.kind == "int":
        return str(_parse_int(defn, value))
    if defn.kind == "csl":
        return ",".join(_check_items(defn, split_csl(value)))
    if defn.name == "AuthorizationKey" and value:
        try:
            authorization_key_bytes(value)
        except AuthorizationKeyError as exc:  # the message never holds the value
            raise ValueError(str(exc)) from None
    if defn.name == "CpoName" and len(value) > CPO_NAME_MAX:
        raise ValueError(f"CpoName is longer than {CPO_NAME_MAX} characters (the certificate's O, RFC 5280)")
    return value


def _parse_int(defn: KeyDef, value: str) -> int:
    text = value.strip()
    digits = text[1:] if text[:1] in "+-" else text
    # str.isdigit() also accepts e.g. superscripts, which int() refuses: use ASCII only.
    if not digits or not (digits.isascii() and digits.isdigit()):
        raise ValueError(f"{value!r} is not an integer")
    number = int(text)
    if defn.minimum is not None and number < defn.minimum:
        raise ValueError(f"{number} is below the minimum {defn.minimum}")
    if defn.maximum is not None and number > defn.maximum:
        raise ValueError(f"{number} is above the maximum {defn.maximum}")
    return number


def _check_items(defn: KeyDef, items: list[str]) -> list[str]:
    if len(items) < defn.min_items:
        raise ValueError("the list must not be empty")
    seen: set[str] = set()
    for item in items:
        if not item:
            raise ValueError("empty item in the list")
        identity = item
        if defn.name == "ConnectorPhaseRotation":
            identity = _phase_rotation_connector(item)
        elif defn.allowed is not None and item not in defn.allowed:
            if defn.allowed is SUPPORTED_MEASURANDS:
                # SPEC §9.1.15/17: a measurand the station cannot measure is Rejected.
                raise ValueError(f"measurand {item!r} is not supported (supported: {', '.join(sorted(defn.allowed))})")
            raise ValueError(f"{item!r} is not one of {', '.join(sorted(defn.allowed))}")
        if identity in seen:
            what = f"connector {identity}" if identity != item else repr(item)
            raise ValueError(f"{what} appears twice")
        seen.add(identity)
    return items


def _phase_rotation_connector(item: str) -> str:
    """Check one ConnectorPhaseRotation item; return its connector id (one rotation each)."""
    connector, dot, rotation = item.partition(".")
    if not dot or not (connector.isascii() and connector.isdigit()) or rotation not in PHASE_ROTATIONS:
        raise ValueError(
            f"{item!r} is not <connectorId>.<rotation> with rotation one of {', '.join(sorted(PHASE_ROTATIONS))}"
        )
    return str(int(connector))


def _max_items(defn: KeyDef, values: Mapping[str, str], readonly: bool) -> int | None:
    """How many items a csl key may hold. SPEC §5.3: a CSL key without a
    [Key]MaxLength (in the definition, or because the model does not have that key)
    holds 1 item. Read-only keys are only set by the charger profile or the station
    TOML, so without a MaxLength they are not limited."""
    if defn.max_length_key is not None and defn.max_length_key in values:
        return int(values[defn.max_length_key])
    return None if readonly else 1


def _length_problem(defn: KeyDef, value: str, values: Mapping[str, str], readonly: bool) -> str | None:
    if defn.kind != "csl":
        return None
    limit = _max_items(defn, values, readonly)
    count = len(split_csl(value))
    if limit is not None and count > limit:
        source = defn.max_length_key if defn.max_length_key in values else "a list key without MaxLength"
        return f"{count} items, more than {limit} ({source})"
    return None


class KeyProfile(Protocol):
    """What :class:`ConfigKeys` needs from a charger profile
    (:class:`twin.profiles.ChargerProfile`): the keys the model has, with their values
    and the access it reports ("R" or "RW"), both by canonical key name."""

    @property
    def key_values(self) -> Mapping[str, str]: ...

    @property
    def key_access(self) -> Mapping[str, str]: ...


def check_key_profile(values: Mapping[str, str], access: Mapping[str, str],
                      defs: Mapping[str, KeyDef] = KEYS) -> dict[str, str]:
    """Check a charger model's keys against the OCPP definitions and return the
    normalized values. Raises :class:`KeyConfigError` naming the first bad key.

    The rules: every key is defined (canonical spelling) and has an access; the access
    is one the spec allows for that key (a profile may choose R for an "R or RW" key,
    never RW for an R key, nor R for an RW key); every value passes the key's
    validation, lists fit their [Key]MaxLength; a key belongs to a feature profile the
    model lists in SupportedFeatureProfiles (vendor keys always may), and every key the
    spec requires for a listed feature profile is there.
    """
    for name in values:
        if name not in defs:
            known = {n.lower(): n for n in defs}.get(name.lower())
            hint = f" (the spelling is {known})" if known else ""
            raise KeyConfigError(name, f"unknown configuration key{hint}")
        if name not in access:
            raise KeyConfigError(name, "has a value but no access (R or RW)")
    for name in access:
        if name not in values:
            raise KeyConfigError(name, "has an access but no value")
    normalized: dict[str, str] = {}
    for name, value in values.items():
        defn = defs[name]
        chosen = access[name]
        if chosen not in ACCESS_VALUES:
            raise KeyConfigError(name, f"access {chosen!r} is not R, RW or W")
        if chosen not in defn.access:
            allowed = " or ".join(sorted(defn.access))
            raise KeyConfigError(name, f"access {chosen} is not allowed: {defn.section} makes it {allowed}")
        try:
            normalized[name] = normalize(defn, value)
        except ValueError as exc:
            raise KeyConfigError(name, str(exc)) from None
    for name, value in normalized.items():
        problem = _length_problem(defs[name], value, normalized, access[name] == "R")
        if problem:
            raise KeyConfigError(name, problem)
    if "SupportedFeatureProfiles" in defs:
        if "SupportedFeatureProfiles" not in normalized:
            raise KeyConfigError("SupportedFeatureProfiles", "missing: every station reports its feature profiles "
                                 f"({defs['SupportedFeatureProfiles'].section})")
        features = set(split_csl(normalized["SupportedFeatureProfiles"]))
        if "Core" not in features:
            raise KeyConfigError("SupportedFeatureProfiles", "must list Core (every station supports it)")
    else:
        features = set(FEATURE_PROFILES)
    for name in normalized:
        feature = defs[name].feature_profile
        if feature not in (VENDOR, SECURITY) and feature not in features:
            raise KeyConfigError(name, f"belongs to the {feature} feature profile, which SupportedFeatureProfiles "
                                 "does not list")
    missing = [d for d in defs.values() if d.required and d.feature_profile in features and d.name not in normalized]
    if missing:
        first = missing[0]
        also = f"; also missing: {', '.join(d.name for d in missing[1:])}" if missing[1:] else ""
        raise KeyConfigError(first.name, f"missing: {first.section} requires it of a station that supports "
                             f"{first.feature_profile}{also}")
    return normalized


def _default_profile() -> KeyProfile:
    # Imported here, not at the top: twin.profiles validates its keys with this module.
    from twin.profiles import default_profile

    return default_profile()


class ConfigKeys:
    """One station's configuration keys. See the module docstring for precedence.

    ``profile`` is the charger model (None = the shipped iEVQC33); it decides which keys
    exist, their values and their access. ``overrides`` are the station TOML's
    ``[keys]``, ``stored`` the values persisted after ChangeConfiguration.
    """

    def __init__(self, overrides: Mapping[str, str] | None = None, stored: Mapping[str, str] | None = None,
                 *, profile: KeyProfile | None = None, defs: Mapping[str, KeyDef] = KEYS):
        profile = _default_profile() if profile is None else profile
        values = check_key_profile(profile.key_values, profile.key_access, defs)
        self._defs = {name: defs[name] for name in defs if name in values}  # definition order
        self._canon = {name.lower(): name for name in self._defs}
        self._all_defs = defs
        self._readonly: dict[str, bool] = {name: profile.key_access[name] == "R" for name in self._defs}
        self._write_only = frozenset(name for name in self._defs if profile.key_access[name] == "W")
        self._values: dict[str, str] = {name: values[name] for name in self._defs}
        self._stored: dict[str, str] = {}
        self.warnings: list[str] = []  # ignored stored values, for the runtime to log
        self._apply_overrides(dict(overrides or {}))
        self._apply_stored(dict(stored or {}))

    # --- building ---

    def _unknown(self, raw_name: str) -> str:
        known = {name.lower(): name for name in self._all_defs}.get(raw_name.lower())
        if known is not None:
            return f"this charger model has no {known} key (its profile does not list it)"
        return "unknown configuration key"

    def _apply_overrides(self, overrides: dict[str, str]) -> None:
        resolved: dict[str, str] = {}
        for raw_name, value in overrides.items():
            name = self._canon.get(str(raw_name).lower())
            if name is None:
                raise KeyConfigError(str(raw_name), self._unknown(str(raw_name)))
            try:
                resolved[name] = normalize(self._defs[name], value)
            except ValueError as exc:
                raise KeyConfigError(name, str(exc)) from None
        self._values.update(resolved)
        # Lengths last: a MaxLength override applies to the list whatever the order.
        for name, defn in self._defs.items():
            problem = _length_problem(defn, self._values[name], self._values, self._readonly[name])
            if problem:
                where = name if name in resolved or defn.max_length_key not in resolved else defn.max_length_key
                raise KeyConfigError(where, problem)

    def _apply_stored(self, stored: dict[str, str]) -> None:
        for raw_name, value in stored.items():
            name = self._canon.get(str(raw_name).lower())
            if name is None:
                self.warnings.append(f"stored value for unknown key {raw_name!r} ignored")
                continue
            defn = self._defs[name]
            if self._readonly[name]:
                self.warnings.append(f"stored value for read-only key {name} ignored")
                continue
            try:
                normalized = normalize(defn, value)
            except ValueError as exc:
                self.warnings.append(f"stored value for {name} ignored: {exc}")
                continue
            problem = _length_problem(defn, normalized, self._values, False)
            if problem:
                self.warnings.append(f"stored value for {name} ignored: {problem}")
                continue
            self._values[name] = normalized
            self._stored[name] = normalized

    # --- reading ---

    def definition(self, name: str) -> KeyDef:
        canonical = self._canon.get(name.lower())
        if canonical is None:
            raise KeyError(name)
        return self._defs[canonical]

    def names(self) -> list[str]:
        """The keys this station has, in definition order."""
        return list(self._defs)

    def write_only(self, name: str) -> bool:
        """Whether the key is never read back (AuthorizationKey, WP3 §7.2)."""
        return self.definition(name).name in self._write_only

    def readonly(self, name: str) -> bool:
        """Whether this station reports the key read-only (the profile's access)."""
        return self._readonly[self.definition(name).name]

    def get(self, name: str) -> str:
        return self._values[self.definition(name).name]

    def get_int(self, name: str) -> int:
        return int(self.get(name))

    def get_bool(self, name: str) -> bool:
        return self.get(name) == "true"

    def get_list(self, name: str) -> list[str]:
        return split_csl(self.get(name))

    def get_configuration(self, keys: list[str] | None = None) -> dict:
        """GetConfiguration.conf payload (SPEC §5.8, §6.23).

        No keys (absent or empty list) = every key. Requested keys are answered in the
        order asked, each once; unknown ones are echoed in ``unknownKey``. Both lists are
        always present (empty arrays are valid per the schema). Raises
        :class:`TooManyKeys` if more keys are asked than GetConfigurationMaxKeys (counted
        after removing repeats) - OCTT TC_019 asks exactly min(maxKeys, all) keys and
        gets a complete answer.
        """
        if not keys:
            # A write-only key is left out of the full list, as OCPP-J §6.2.2 allows for
            # AuthorizationKey (WP3 §7.2); asked for by name it is listed without a value.
            names = [n for n in self._defs if n not in self._write_only]
            unknown: list[str] = []
        else:
            # Repeats (in any letter case: CiString) count once.
            first: dict[str, str] = {}
            for key in keys:
                first.setdefault(key.lower(), key)
            wanted = list(first.values())
            maximum = self.get_int("GetConfigurationMaxKeys")
            if len(wanted) > maximum:
                raise TooManyKeys(len(wanted), maximum)
            names, unknown = [], []
            for key in wanted:
                canonical = self._canon.get(key.lower())
                if canonical is None:
                    unknown.append(key)
                else:
                    names.append(canonical)
        entries = [{"key": n, "readonly": self._readonly[n]} if n in self._write_only
                   else {"key": n, "readonly": self._readonly[n], "value": self._values[n]} for n in names]
        return {"configurationKey": entries, "unknownKey": unknown}

    # --- changing ---

    def change(self, name: str, value: str) -> tuple[str, dict[str, str]]:
        """ChangeConfiguration (SPEC §5.3, §6.9): returns (status, changes to persist).

        Unknown key (or one this model does not have) -> NotSupported (TC_040_1).
        Read-only -> Rejected. A value of the wrong type, out of range, not an allowed
        member, an unsupported measurand, or a list longer than its [Key]MaxLength ->
        Rejected and nothing changes (TC_040_2). Otherwise Accepted (or RebootRequired
        for keys that only apply at start) and ``{name: value}`` to persist, unless it
        is already the stored value.
        """
        status, canonical, normalized, _problem = self._evaluate(name, value)
        if status not in ("Accepted", "RebootRequired"):
            return status, {}
        self._values[canonical] = normalized
        if self._stored.get(canonical) == normalized:
            return status, {}
        self._stored[canonical] = normalized
        return status, {canonical: normalized}

    def why_rejected(self, name: str, value: str) -> str | None:
        """Why :meth:`change` would refuse ``value`` (for the log), or None if it would not."""
        return self._evaluate(name, value)[3]

    def _evaluate(self, name: str, value: str) -> tuple[str, str, str, str | None]:
        """(status, canonical name, normalized value, problem) for a ChangeConfiguration."""
        canonical = self._canon.get(name.lower()) if isinstance(name, str) else None
        if canonical is None:
            return "NotSupported", str(name), "", f"unknown configuration key {name!r}"
        defn = self._defs[canonical]
        if self._readonly[canonical]:
            return "Rejected", canonical, "", f"{canonical} is read-only"
        try:
            normalized = normalize(defn, value)
        except ValueError as exc:
            return "Rejected", canonical, "", f"{canonical}: {exc}"
        problem = _length_problem(defn, normalized, self._values, False)
        if problem:
            return "Rejected", canonical, "", f"{canonical}: {problem}"
        return ("RebootRequired" if defn.reboot_required else "Accepted"), canonical, normalized, None

    def stored_values(self) -> dict[str, str]:
        """The values set by ChangeConfiguration: what must persist across restarts."""
        return dict(self._stored)
