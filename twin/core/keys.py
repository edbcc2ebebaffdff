"""OCPP 1.6 configuration keys: definitions, iEVQC33 defaults, validation, and the
Get/ChangeConfiguration logic.

Pure: no I/O, no clock. The station owns a :class:`ConfigKeys`; the runtime feeds
it the ``[keys]`` overrides of the station TOML and the values persisted earlier by
ChangeConfiguration, and stores whatever :meth:`ConfigKeys.change` says to persist.

Where values come from, lowest to highest precedence:

1. the built-in default: the iEVQC33 certified value (``iEVQC33-profile.md``);
2. the ``[keys]`` table of the station TOML (may also set read-only keys: it is how a
   bench describes the station it emulates, e.g. ``NumberOfConnectors``);
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

PROFILES = (
    "Core",
    "FirmwareManagement",
    "LocalAuthListManagement",
    "Reservation",
    "SmartCharging",
    "RemoteTrigger",
)
KINDS = ("bool", "int", "csl", "str")

# The OCPP-J schemas type integers without bounds; the twin keeps them to a signed
# 32-bit range so an absurd value (e.g. a 40-digit interval) is Rejected here instead
# of overflowing a timedelta deep in the station.
INT32_MAX = 2**31 - 1
VALUE_MAX_CHARS = 500  # GetConfiguration.conf value is CiString500Type (SPEC §7.19)

# What the twin can actually measure: the simulated meter and the Modbus meter maps
# supply energy, power, current, voltage and frequency; the EV model supplies SoC; the
# station itself knows what it offers (Current.Offered / Power.Offered, §7.31).
# Not supported, hence Rejected in ChangeConfiguration (SPEC §9.1.15/17, issue 2):
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

IEVQC33_MEASURANDS = "Energy.Active.Import.Register,Current.Import,Voltage,SoC,Power.Active.Import"


@dataclass(frozen=True)
class KeyDef:
    name: str
    default: str
    readonly: bool
    kind: str  # "bool" | "int" | "csl" | "str"
    profile: str  # one of PROFILES, or "Vendor"
    minimum: int | None = None
    maximum: int | None = None
    allowed: frozenset[str] | None = None  # csl: allowed members
    max_length_key: str | None = None  # csl: the key holding the maximum number of items
    reboot_required: bool = False
    min_items: int = 0  # csl: an empty list is meaningful for measurand lists only


def _bool(name: str, default: bool, profile: str = "Core", readonly: bool = False) -> KeyDef:
    return KeyDef(name, "true" if default else "false", readonly, "bool", profile)


def _int(name: str, default: int, profile: str = "Core", readonly: bool = False,
         minimum: int = 0, maximum: int = INT32_MAX) -> KeyDef:
    return KeyDef(name, str(default), readonly, "int", profile, minimum, maximum)


def _csl(name: str, default: str, allowed: frozenset[str] | None, max_length_key: str | None,
         profile: str = "Core", readonly: bool = False, min_items: int = 0) -> KeyDef:
    return KeyDef(name, default, readonly, "csl", profile, allowed=allowed,
                  max_length_key=max_length_key, min_items=min_items)


def _measurands(name: str, default: str) -> KeyDef:
    return _csl(name, default, SUPPORTED_MEASURANDS, name + "MaxLength")


# Access (R/RW) per SPEC §9 and the errata; values per the iEVQC33 certificate.
_DEFS: tuple[KeyDef, ...] = (
    # --- Core (SPEC §9.1) ---
    _bool("AllowOfflineTxForUnknownId", True),  # §9.1.1, optional RW
    _bool("AuthorizationCacheEnabled", True),  # §9.1.2, optional RW
    _bool("AuthorizeRemoteTxRequests", True),  # §9.1.3, R or RW: RW so OCTT can set it
    _int("BlinkRepeat", 10),  # §9.1.4
    _int("ClockAlignedDataInterval", 0),  # §9.1.5, 0 = no clock-aligned data
    _int("ConnectionTimeOut", 60),  # §9.1.6 / ERRATA 3.77, 3.89
    # §9.1.7. The certificate prints "1.RST,2.RST,3.RST" for a 2-connector station; kept
    # verbatim, so connector ids in this key are not checked against NumberOfConnectors.
    _csl("ConnectorPhaseRotation", "1.RST,2.RST,3.RST", None, "ConnectorPhaseRotationMaxLength", min_items=1),
    _int("ConnectorPhaseRotationMaxLength", 3, readonly=True, minimum=1),
    _int("GetConfigurationMaxKeys", 150, readonly=True, minimum=1),  # §9.1.9, R
    _int("HeartbeatInterval", 30),  # §9.1.10
    _int("LightIntensity", 50, maximum=100),  # §9.1.11, percent
    _bool("LocalAuthorizeOffline", True),  # §9.1.12
    _bool("LocalPreAuthorize", False),  # §9.1.13
    _int("MaxEnergyOnInvalidId", 0),  # §9.1.14, Wh
    _measurands("MeterValuesAlignedData", IEVQC33_MEASURANDS),  # §9.1.15
    _int("MeterValuesAlignedDataMaxLength", 10, readonly=True, minimum=1),
    _measurands("MeterValuesSampledData", IEVQC33_MEASURANDS),  # §9.1.17
    _int("MeterValuesSampledDataMaxLength", 10, readonly=True, minimum=1),
    _int("MeterValueSampleInterval", 30),  # §9.1.19, 0 = no sampled data; TC_040_2: -1 Rejected
    _int("MinimumStatusDuration", 0),  # §9.1.20; OCTT expects 0
    _int("NumberOfConnectors", 2, readonly=True, minimum=1),  # §9.1.21, R
    _int("ResetRetries", 0),  # §9.1.22
    _bool("StopTransactionOnEVSideDisconnect", True),  # §9.1.23, R or RW (ERRATA 3.80); TC_005_x set it
    _bool("StopTransactionOnInvalidId", False),  # §9.1.24
    _measurands("StopTxnAlignedData", ""),  # §9.1.25; the certificate's "false" is read as empty
    _int("StopTxnAlignedDataMaxLength", 10, readonly=True, minimum=1),
    _measurands("StopTxnSampledData", ""),  # §9.1.27
    _int("StopTxnSampledDataMaxLength", 10, readonly=True, minimum=1),
    _csl("SupportedFeatureProfiles", ",".join(PROFILES), frozenset(PROFILES),
         "SupportedFeatureProfilesMaxLength", readonly=True, min_items=1),  # §9.1.29, R
    _int("SupportedFeatureProfilesMaxLength", 6, readonly=True, minimum=1),
    _int("TransactionMessageAttempts", 3),  # §9.1.31 / §3.7.1
    _int("TransactionMessageRetryInterval", 5),  # §9.1.32, seconds
    # §9.1.33, R or RW. ERRATA 3.84 says a fixed-cable station reports false/read-only,
    # but the certified iEVQC33 (fixed cable) reports true, and OCTT TC_005_1 sets it;
    # the twin mirrors the certified station.
    _bool("UnlockConnectorOnEVSideDisconnect", True),
    _int("WebSocketPingInterval", 10),  # §9.1.34, seconds, 0 = no pings
    # ERRATA 3.83: optional RW; illegible on the certificate, twin default 30 s.
    _int("MessageTimeout", 30, minimum=1),
    # --- Local Auth List Management (SPEC §9.2) ---
    _bool("LocalAuthListEnabled", True, "LocalAuthListManagement"),
    _int("LocalAuthListMaxLength", 100, "LocalAuthListManagement", readonly=True, minimum=1),
    _int("SendLocalListMaxLength", 100, "LocalAuthListManagement", readonly=True, minimum=1),
    # --- Reservation (SPEC §9.3) ---
    _bool("ReserveConnectorZeroSupported", False, "Reservation", readonly=True),
    # --- Smart Charging (SPEC §9.4); all read-only ---
    _int("ChargeProfileMaxStackLevel", 10, "SmartCharging", readonly=True),
    _csl("ChargingScheduleAllowedChargingRateUnit", "Current,Power", frozenset({"Current", "Power"}), None,
         "SmartCharging", readonly=True, min_items=1),  # ERRATA 3.88: Current = A, Power = W
    _int("ChargingScheduleMaxPeriods", 24, "SmartCharging", readonly=True, minimum=1),  # illegible: twin 24
    _bool("ConnectorSwitch3to1PhaseSupported", False, "SmartCharging", readonly=True),  # the twin cannot switch
    _int("MaxChargingProfilesInstalled", 10, "SmartCharging", readonly=True, minimum=1),  # illegible: twin 10
    # --- Firmware Management: ERRATA 3.90 adds this optional R key ---
    _csl("SupportedFileTransferProtocols", "FTP,FTPS,HTTP,HTTPS", FILE_TRANSFER_PROTOCOLS, None,
         "FirmwareManagement", readonly=True, min_items=1),
    # --- Vendor keys ---
    # Max MeterValues carried in StopTransaction.transactionData; illegible on the
    # certificate, twin default 0 = no limit.
    _int("StopTransactionMaxMeterValues", 0, "Vendor"),
)

KEYS: dict[str, KeyDef] = {d.name: d for d in _DEFS}
_CANONICAL: dict[str, str] = {name.lower(): name for name in KEYS}


class KeyConfigError(ValueError):
    """A bad ``[keys]`` override: names the key and the problem."""

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
    against [Key]MaxLength needs the other keys: see :meth:`ConfigKeys._check_length`."""
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
                # SPEC §9.1.15/17 + issue 2: an unsupported measurand is Rejected.
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


def _max_items(defn: KeyDef, values: Mapping[str, str]) -> int | None:
    """How many items a csl key may hold. SPEC §5.3: a CSL key without a
    [Key]MaxLength holds 1 item. Read-only keys are only set by the station profile,
    so without a MaxLength key they are not limited."""
    if defn.max_length_key is not None:
        return int(values[defn.max_length_key])
    return None if defn.readonly else 1


class ConfigKeys:
    """The station's configuration keys. See the module docstring for precedence."""

    def __init__(self, overrides: Mapping[str, str] | None = None, stored: Mapping[str, str] | None = None,
                 *, defs: Mapping[str, KeyDef] = KEYS):
        self._defs = dict(defs)
        self._canon = {name.lower(): name for name in self._defs}
        self._values: dict[str, str] = {name: d.default for name, d in self._defs.items()}
        self._stored: dict[str, str] = {}
        self.warnings: list[str] = []  # ignored stored values, for the runtime to log
        self._apply_overrides(dict(overrides or {}))
        self._apply_stored(dict(stored or {}))

    # --- building ---

    def _apply_overrides(self, overrides: dict[str, str]) -> None:
        resolved: dict[str, str] = {}
        for raw_name, value in overrides.items():
            name = self._canon.get(str(raw_name).lower())
            if name is None:
                raise KeyConfigError(str(raw_name), "unknown configuration key")
            try:
                resolved[name] = normalize(self._defs[name], value)
            except ValueError as exc:
                raise KeyConfigError(name, str(exc)) from None
        self._values.update(resolved)
        # Lengths last: a MaxLength override applies to the list whatever the order.
        for name, defn in self._defs.items():
            if defn.kind == "csl":
                problem = self._length_problem(defn, self._values[name], self._values)
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
            if defn.readonly:
                self.warnings.append(f"stored value for read-only key {name} ignored")
                continue
            try:
                normalized = normalize(defn, value)
            except ValueError as exc:
                self.warnings.append(f"stored value for {name} ignored: {exc}")
                continue
            problem = self._length_problem(defn, normalized, self._values)
            if problem:
                self.warnings.append(f"stored value for {name} ignored: {problem}")
                continue
            self._values[name] = normalized
            self._stored[name] = normalized

    def _length_problem(self, defn: KeyDef, value: str, values: Mapping[str, str]) -> str | None:
        if defn.kind != "csl":
            return None
        limit = _max_items(defn, values)
        count = len(split_csl(value))
        if limit is not None and count > limit:
            source = defn.max_length_key or "a list key without MaxLength"
            return f"{count} items, more than {limit} ({source})"
        return None

    # --- reading ---

    def definition(self, name: str) -> KeyDef:
        canonical = self._canon.get(name.lower())
        if canonical is None:
            raise KeyError(name)
        return self._defs[canonical]

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
            names = list(self._defs)
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
        entries = [{"key": n, "readonly": self._defs[n].readonly, "value": self._values[n]} for n in names]
        return {"configurationKey": entries, "unknownKey": unknown}

    # --- changing ---

    def change(self, name: str, value: str) -> tuple[str, dict[str, str]]:
        """ChangeConfiguration (SPEC §5.3, §6.9): returns (status, changes to persist).

        Unknown key -> NotSupported (TC_040_1). Read-only -> Rejected. A value of the
        wrong type, out of range, not an allowed member, an unsupported measurand, or a
        list longer than its [Key]MaxLength -> Rejected and nothing changes (TC_040_2).
        Otherwise Accepted (or RebootRequired for keys that only apply at start) and
        ``{name: value}`` to persist, unless it is already the stored value.
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
        if defn.readonly:
            return "Rejected", canonical, "", f"{canonical} is read-only"
        try:
            normalized = normalize(defn, value)
        except ValueError as exc:
            return "Rejected", canonical, "", f"{canonical}: {exc}"
        problem = self._length_problem(defn, normalized, self._values)
        if problem:
            return "Rejected", canonical, "", f"{canonical}: {problem}"
        return ("RebootRequired" if defn.reboot_required else "Accepted"), canonical, normalized, None

    def stored_values(self) -> dict[str, str]:
        """The values set by ChangeConfiguration: what must persist across restarts."""
        return dict(self._stored)
