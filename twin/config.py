"""The station TOML config file: identity, CSMS link, data dir, control API, drivers,
configuration-key overrides and the simulated EV.

Layout (every option is documented in ``twin/data/station.example.toml``)::

    [station]   charge_point_id, connectors, fixed_cable, data_dir, log_level
    [csms]      url, password | password_file, ca_file, client_cert_file, client_key_file,
                [csms.profile_urls] (one URL per security profile; docs/security-transport.md)
    [control]   enabled, host, port, debug, token_file, allowed_origins
    [identity]  BootNotification fields (chargePointVendor, chargePointModel, serials, ...)
    [keys]      OCPP configuration-key overrides, validated by twin.core.keys
    [ev]        the simulated EV: max_power_w, battery_wh, soc_start, phases
    [drivers]   passed through to drivers.registry (validated there)
    [firmware]  passed through to twin.firmware
    [security]  the certificate service (CSR subject, key type), checked here

Every problem is a :class:`ConfigError` whose text is ``<file>: <dotted key>: <problem>``;
unknown sections and keys are errors too, so a typo never passes silently. Relative
paths in the file are relative to the file's directory (so a unit started with cwd
``/`` finds them); relative paths on the command line are relative to the cwd.
"""

from __future__ import annotations

import ipaddress
import os
import re
import stat
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from twin.core.keys import ConfigKeys, KeyConfigError, canonical_name
from twin.security.transport import Endpoints, scheme_for, scheme_problem

DEFAULT_CSMS_URL = "ws://127.0.0.1:9000/ocpp"
DEFAULT_CHARGE_POINT_ID = "iEVQC33-TWIN-001"
DEV_DATA_DIR = Path("var/twin")  # relative to the cwd: a source checkout
SERVICE_DATA_DIR = Path("/var/lib/ocpp-twin")  # under systemd without StateDirectory=
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
CLI = "<command line>"  # the "file" named by errors in command-line overrides

# BootNotification.req fields and their CiString lengths (SPEC §6.3). firmwareVersion
# is not configurable: it is "V" + twin.__version__, bumped by firmware updates.
IDENTITY_FIELDS: dict[str, int] = {
    "chargePointVendor": 20,
    "chargePointModel": 20,
    "chargePointSerialNumber": 25,
    "chargeBoxSerialNumber": 25,
    "iccid": 20,
    "imsi": 20,
    "meterType": 25,
    "meterSerialNumber": 25,
}

# The id is the last path segment of the URL and the HTTP Basic user name (security
# profile 1, where ':' is forbidden): RFC 3986 unreserved characters only, 1..48
# (the OCPP 1.6 security whitepaper's identity length).
CHARGE_POINT_ID_RE = re.compile(r"[A-Za-z0-9._~-]{1,48}")
_LABEL = r"[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
HOSTNAME_RE = re.compile(rf"(?=.{{1,253}}$){_LABEL}(\.{_LABEL})*")

# What a credential looks like in a dotted key, for redacted(). "key" alone would hit
# "keys" (the OCPP table) and "max_length_key"; match it as a whole word part instead.
SECRET_RE = re.compile(r"password|passwd|secret|token|credential|(^|[._-])(api_?)?key([._-]|$)|authorizationkey", re.I)


class ConfigError(Exception):
    """A bad station config: ``str()`` is ``<file>: <key>: <problem>``."""

    def __init__(self, file: str | Path | None, key: str, problem: str):
        self.file = str(file) if file is not None else "<defaults>"
        self.key = key
        self.problem = problem
        super().__init__(f"{self.file}: {key}: {problem}" if key else f"{self.file}: {problem}")


@dataclass
class EvConfig:
    """The simulated EV behind each connector (twin.sim.ev.EvModel). The supply voltage is
    the charger's, in its profile ([station] voltage of docs/profiles.md)."""

    max_power_w: float = 11000.0
    battery_wh: float = 60000.0
    soc_start: float = 20.0
    phases: int = 3


@dataclass
class StationConfig:
    config_file: Path | None
    charge_point_id: str
    csms_url: str  # the station connects to ws_url (csms_url + "/" + charge_point_id)
    password: str | None  # the AuthorizationKey the config gives ([csms] password or [keys] AuthorizationKey)
    ca_file: Path | None  # CentralSystemRootCertificate(s) installed into the store at start
    data_dir: Path
    # [csms.profile_urls]: the endpoint of a security profile whose scheme csms_url lacks
    # (twin.security.transport.Endpoints); e.g. {2: "wss://csms.example:8443/ocpp"}.
    profile_urls: dict[int, str] = field(default_factory=dict)
    # A factory charge point certificate chain (leaf first) and its key, imported into the
    # certificate store at start (security profile 3).
    client_cert_file: Path | None = None
    client_key_file: Path | None = None
    # The bench control API. control_enabled False: the runtime does not start it.
    control_enabled: bool = True
    control_host: str = "127.0.0.1"
    control_port: int = 8180
    control_debug: bool = False
    control_token_file: Path | None = None
    control_token: str | None = field(default=None, repr=False)  # from control_token_file; never logged
    control_allowed_origins: tuple[str, ...] = ()  # normalized, as browsers send Origin
    # The charger model (twin.profiles.ChargerProfile): identity, connectors, rating, keys,
    # quirks. None until load_config() reads it ([station] profile or --profile).
    profile: Any = None
    connectors: int = 2  # the profile's unless [station] connectors says otherwise
    fixed_cable: bool = True
    identity: dict[str, str] = field(default_factory=dict)  # the profile's, with [identity] on top
    # Canonical key names -> normalized values; always includes NumberOfConnectors
    # (from ``connectors``), so ``ConfigKeys(cfg.keys, stored)`` is the whole profile.
    keys: dict[str, str] = field(default_factory=dict)
    drivers: dict[str, Any] = field(default_factory=dict)
    ev: EvConfig = field(default_factory=EvConfig)
    log_level: str = "INFO"
    firmware: dict[str, Any] = field(default_factory=dict)
    security: dict[str, Any] = field(default_factory=dict)  # the certificate service (twin.security.service)
    force_sim: bool = False  # --sim: drivers.registry.build_drivers(..., force_sim=...)
    # [[faults]]: fault rules installed at start (twin.faults; checked at load).
    faults: list[dict[str, Any]] = field(default_factory=list)
    trace_file: Path | None = None  # [trace] file or --trace: every frame as JSON lines (twin.trace)

    @property
    def ws_url(self) -> str:
        return f"{self.csms_url.rstrip('/')}/{self.charge_point_id}"


# ----------------------------------------------------------------------------- reading

class _Reader:
    """Takes values out of one table, checking types; remembers the file for errors."""

    def __init__(self, file: Path | None, prefix: str, table: Mapping[str, Any]):
        self.file, self.prefix, self.table = file, prefix, dict(table)
        self.known: list[str] = []

    def error(self, key: str, problem: str) -> ConfigError:
        return ConfigError(self.file, f"{self.prefix}{key}", problem)

    def take(self, key: str, types: type | tuple[type, ...], default: Any = None) -> Any:
        self.known.append(key)
        if key not in self.table:
            return default
        value = self.table.pop(key)
        # bool is an int in Python; TOML true is never a number here.
        if isinstance(value, bool) and bool not in (types if isinstance(types, tuple) else (types,)):
            raise self.error(key, f"expected {_type_names(types)}, got a boolean")
        if not isinstance(value, types):
            raise self.error(key, f"expected {_type_names(types)}, got {_toml_type(value)}")
        return value

    def number(self, key: str, default: float, check: Callable[[float], bool], rule: str) -> float:
        value = self.take(key, (int, float), default)
        if not check(value):
            raise self.error(key, f"{value} is out of range: must be {rule}")
        return float(value)

    def done(self) -> None:
        """Anything left over is unknown: a typo must not pass silently."""
        for key in self.table:
            raise self.error(key, f"unknown key (known here: {', '.join(self.known)})")


def _type_names(types: type | tuple[type, ...]) -> str:
    names = {bool: "a boolean", int: "an integer", float: "a number", str: "a string",
             dict: "a table", list: "an array"}
    types = types if isinstance(types, tuple) else (types,)
    if types == (int, float):
        return "a number"
    return " or ".join(names.get(t, t.__name__) for t in types)


def _toml_type(value: Any) -> str:
    for t in (bool, int, float, str, dict, list):
        if isinstance(value, t):
            return _type_names(t)
    return type(value).__name__  # datetime and friends


def _path(file: Path | None, text: str) -> Path:
    path = Path(text).expanduser()
    if file is not None and not path.is_absolute():
        return file.parent / path
    return path


def default_data_dir(env: Mapping[str, str]) -> Path:
    """systemd's StateDirectory= (STATE_DIRECTORY), else /var/lib/ocpp-twin when run
    as a service (INVOCATION_ID is set by systemd for every unit), else ./var/twin."""
    if env.get("STATE_DIRECTORY"):
        return Path(env["STATE_DIRECTORY"].split(":")[0])
    if env.get("INVOCATION_ID"):
        return SERVICE_DATA_DIR
    return DEV_DATA_DIR


# ------------------------------------------------------------------------- validating

def check_csms_url(url: str) -> str | None:
    """The problem with a CSMS URL, or None. Only ws:// and wss:// (OCPP-J 1.6 §3)."""
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError for a bad port
    except ValueError as exc:
        return f"{url!r} is not a valid URL ({exc})"
    if parts.scheme not in ("ws", "wss"):
        return f"{url!r}: the scheme must be ws:// or wss://, not {parts.scheme + '://' if parts.scheme else 'missing'}"
    if not parts.hostname:
        return f"{url!r} has no host"
    if parts.username is not None or parts.password is not None:
        return f"{url!r}: put credentials in csms.password, not in the URL"
    if parts.query or parts.fragment:
        return f"{url!r}: no query or fragment allowed (the charge point id is appended to the path)"
    return None


def check_charge_point_id(cp_id: str) -> str | None:
    if not CHARGE_POINT_ID_RE.fullmatch(cp_id):
        return f"{cp_id!r} must be 1 to 48 characters from A-Z a-z 0-9 . _ ~ - (it goes in the URL path and Basic auth)"
    return None


def check_host(host: str) -> str | None:
    try:
        ipaddress.ip_address(host)
        return None
    except ValueError:
        pass
    if HOSTNAME_RE.fullmatch(host):
        return None
    return f"{host!r} is not an IP address or host name"


def check_port(port: int) -> str | None:
    # 0 = any free port (tests); the runtime reports the port it got.
    return None if 0 <= port <= 65535 else f"port {port} is out of range 0..65535"


def parse_control_address(text: str) -> tuple[str, int]:
    """``HOST:PORT`` or ``[IPv6]:PORT`` -> (host, port); ValueError with the problem."""
    host, sep, port = text.rpartition(":")
    if not sep or not host:
        raise ValueError(f"{text!r} is not HOST:PORT (e.g. 127.0.0.1:8180)")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not (port.isascii() and port.isdigit()):
        raise ValueError(f"{text!r}: port {port!r} is not a number")
    problem = check_host(host) or check_port(int(port))
    if problem:
        raise ValueError(f"{text!r}: {problem}")
    return host, int(port)


def _key_value(reader: _Reader, name: str, value: Any) -> str:
    """A TOML value for an OCPP key -> its OCPP string (true -> "true", [a, b] -> "a,b")."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, str)):
        return str(value)
    if isinstance(value, list) and all(isinstance(item, str) for item in value):
        return ",".join(value)
    raise reader.error(name, f"expected a string, integer, boolean or array of strings, got {_toml_type(value)}")


# ---------------------------------------------------------------------------- loading

SECTIONS = ("station", "csms", "control", "identity", "keys", "ev", "drivers", "firmware", "security")
CLI_FLAGS = {"csms_url": "--csms", "charge_point_id": "--id", "data_dir": "--data-dir",
             "control": "--control", "sim": "--sim", "profile": "--profile", "trace": "--trace"}


def read_toml(path: Path) -> dict[str, Any]:
    try:
        text = path.read_bytes().decode("utf-8")
    except FileNotFoundError:
        raise ConfigError(path, "", "no such file") from None
    except IsADirectoryError:
        raise ConfigError(path, "", "is a directory, not a TOML file") from None
    except OSError as exc:
        raise ConfigError(path, "", f"cannot read: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(path, "", f"not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        # The message already carries "(at line L, column C)".
        raise ConfigError(path, "", f"invalid TOML: {exc}") from None


def load_config(path: Path | None, overrides: Mapping[str, Any] | None = None,
                *, env: Mapping[str, str] | None = None) -> StationConfig:
    """Read and validate the station config. ``path`` None = built-in defaults.

    ``overrides`` come from CLI flags and win over the file: ``csms_url``,
    ``charge_point_id``, ``data_dir``, ``control`` ("HOST:PORT"), ``sim`` (bool);
    a None value means "flag not given". ``env`` defaults to ``os.environ`` (used only
    to pick the default data dir).
    """
    path = Path(path) if path is not None else None
    env = os.environ if env is None else env
    doc = read_toml(path) if path is not None else {}
    top = _Reader(path, "", doc)
    tables: dict[str, _Reader] = {}
    for name in SECTIONS:
        tables[name] = _Reader(path, f"{name}.", top.take(name, dict, {}))
    # The CSMS tester's tables (docs/faults-and-traces.md): [[faults]] and [trace].
    faults = top.take("faults", list, [])
    tables["trace"] = _Reader(path, "trace.", top.take("trace", dict, {}))
    top.done()

    cfg = StationConfig(config_file=path, charge_point_id=DEFAULT_CHARGE_POINT_ID, csms_url=DEFAULT_CSMS_URL,
                        password=None, ca_file=None, data_dir=default_data_dir(env))
    _load_station(cfg, tables["station"], (overrides or {}).get("profile"))
    _load_csms(cfg, tables["csms"])
    _load_control(cfg, tables["control"])
    _load_identity(cfg, tables["identity"])
    _load_ev(cfg, tables["ev"])
    cfg.drivers = tables["drivers"].table  # validated by drivers.registry
    cfg.firmware = tables["firmware"].table  # validated by twin.firmware
    cfg.security = _load_security_table(tables["security"])
    cfg.faults = _load_faults(path, faults)
    _load_trace(cfg, tables["trace"])
    _apply_cli(cfg, dict(overrides or {}))
    _settle_control(cfg, path, doc.get("control", {}), dict(overrides or {}))
    _load_keys(cfg, tables["keys"])
    _settle_security(cfg, path, doc.get("csms", {}), dict(overrides or {}))
    return cfg


def _load_faults(path: Path | None, rules: list[Any]) -> list[dict[str, Any]]:
    """``[[faults]]``: fault rules (twin.faults), each checked now, so a typo stops
    ``twin config check`` rather than surprising a test run."""
    from twin.faults import parse_rule

    out: list[dict[str, Any]] = []
    ids: set[str] = set()
    for i, rule in enumerate(rules):
        try:
            parsed = parse_rule(rule)
        except ValueError as e:
            raise ConfigError(path, f"faults[{i}]", str(e)) from None
        if isinstance(rule, dict) and rule.get("id") is not None:
            if parsed.id in ids:
                raise ConfigError(path, f"faults[{i}].id", f"{parsed.id!r} is given twice")
            ids.add(parsed.id)
        out.append(dict(rule))
    return out


def _load_trace(cfg: StationConfig, t: _Reader) -> None:
    """``[trace] file``: the wire trace, JSON lines (twin.trace); relative to the config file."""
    file = t.take("file", str)
    t.done()
    if file is not None:
        if not file.strip():
            raise t.error("file", "must not be empty")
        cfg.trace_file = _path(t.file, file)


def _load_security_table(t: _Reader) -> dict[str, Any]:
    """``[security]``: the certificate service's settings (CSR subject CN, key type), checked now
    so a typo stops ``twin config check`` rather than the first SignCertificate."""
    from twin.security.service import SecuritySettings

    try:
        SecuritySettings.from_table(t.table, strict=True)
    except ValueError as e:
        key, _, problem = str(e).partition(": ")
        raise ConfigError(t.file, key, problem or str(e)) from None
    return dict(t.table)


def _load_station(cfg: StationConfig, t: _Reader, profile_override: Any = None) -> None:
    from twin.profiles import load_profile

    given = t.take("profile", str)
    if profile_override is not None:
        cfg.profile = load_profile(Path(profile_override).expanduser())
    else:
        cfg.profile = load_profile(_path(t.file, given) if given else None)
    cfg.connectors, cfg.fixed_cable = cfg.profile.connectors, cfg.profile.fixed_cable
    cfg.charge_point_id = t.take("charge_point_id", str, cfg.charge_point_id)
    if problem := check_charge_point_id(cfg.charge_point_id):
        raise t.error("charge_point_id", problem)
    cfg.connectors = t.take("connectors", int, cfg.connectors)
    if not 1 <= cfg.connectors <= 99:
        raise t.error("connectors", f"{cfg.connectors} is out of range: must be 1..99")
    cfg.fixed_cable = t.take("fixed_cable", bool, cfg.fixed_cable)
    data_dir = t.take("data_dir", str)
    if data_dir is not None:
        if not data_dir.strip():
            raise t.error("data_dir", "must not be empty")
        cfg.data_dir = _path(t.file, data_dir)
    level = t.take("log_level", str, cfg.log_level)
    if level.upper() not in LOG_LEVELS:
        raise t.error("log_level", f"{level!r} is not one of {', '.join(LOG_LEVELS)}")
    cfg.log_level = level.upper()
    t.done()


def _load_csms(cfg: StationConfig, t: _Reader) -> None:
    cfg.csms_url = t.take("url", str, cfg.csms_url)
    if problem := check_csms_url(cfg.csms_url):
        raise t.error("url", problem)
    password = t.take("password", str)
    password_file = t.take("password_file", str)
    if password is not None and password_file is not None:
        raise t.error("password_file", "give either password or password_file, not both")
    if password_file is not None:
        password = _read_secret(t, "password_file", _path(t.file, password_file))
    if password is not None and not password:
        raise t.error("password", "must not be empty (leave it out for no authentication)")
    cfg.password = password
    ca_file = t.take("ca_file", str)
    if ca_file is not None:
        cfg.ca_file = _path(t.file, ca_file)
        if not cfg.ca_file.is_file():
            raise t.error("ca_file", f"{cfg.ca_file} does not exist or is not a file")
        if problem := _roots_problem(cfg.ca_file):
            raise t.error("ca_file", problem)
    for name in ("client_cert_file", "client_key_file"):
        value = t.take(name, str)
        if value is not None:
            setattr(cfg, name, _path(t.file, value))
            if not getattr(cfg, name).is_file():
                raise t.error(name, f"{getattr(cfg, name)} does not exist or is not a file")
    if (cfg.client_cert_file is None) != (cfg.client_key_file is None):
        raise t.error("client_key_file" if cfg.client_key_file is None else "client_cert_file",
                      "give client_cert_file and client_key_file together")
    if cfg.client_cert_file is not None and (problem := _pair_problem(cfg.client_cert_file, cfg.client_key_file)):
        raise t.error("client_cert_file", problem)
    urls = t.take("profile_urls", dict, {})
    for raw, url in urls.items():
        key = f"profile_urls.{raw}"
        if not (raw.isascii() and raw.isdigit() and int(raw) in (0, 1, 2, 3)):
            raise t.error(key, "the key must be a security profile: 0, 1, 2 or 3")
        if not isinstance(url, str):
            raise t.error(key, f"expected a string, got {_toml_type(url)}")
        profile = int(raw)
        if profile in cfg.profile_urls:
            raise t.error(key, f"given twice (also as {profile})")
        if problem := check_csms_url(url) or scheme_problem(url, profile):
            raise t.error(key, problem)
        cfg.profile_urls[profile] = url
    t.done()


def _roots_problem(path: Path) -> str | None:
    """Why the ca_file cannot be installed as CentralSystemRootCertificates (only
    self-signed CA certificates can: twin.security.certs), or None."""
    from twin.security import pki

    try:
        certs = pki.load_certificates(path.read_bytes())
    except OSError as exc:
        return f"cannot read {path}: {exc.strerror or exc}"
    except pki.CertificateError as exc:
        return f"{path}: {exc}"
    for cert in certs:
        problem = pki.ca_problem(cert) or (None if pki.is_self_signed(cert) else "not self-signed")
        if problem:
            return (f"{path}: {cert.subject.rfc4514_string()} cannot be a CentralSystemRootCertificate ({problem}); "
                    "give the root CA of the CSMS certificate")
    return None


def _pair_problem(chain_file: Path, key_file: Path) -> str | None:
    """Why the charge point certificate and key cannot be used for profile 3, or None."""
    from cryptography.hazmat.primitives import serialization

    from twin.security import pki

    try:
        chain = pki.load_certificates(chain_file.read_bytes())
        key = serialization.load_pem_private_key(key_file.read_bytes(), password=None)
    except OSError as exc:
        return f"cannot read: {exc.strerror or exc}"
    except (pki.CertificateError, ValueError, TypeError):
        # The key's parse error is not quoted: it could hold key material.
        return "needs a PEM certificate chain (leaf first) and an unencrypted PEM private key"
    spki = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    if key.public_key().public_bytes(*spki) != chain[0].public_key().public_bytes(*spki):
        return "client_key_file is not the key of the first certificate in client_cert_file"
    return pki.key_strength_problem(chain[0].public_key())


def _read_secret(t: _Reader, key: str, path: Path) -> str:
    try:
        # Only the trailing newline an editor adds is dropped: spaces may be part of it.
        return path.read_text(encoding="utf-8").rstrip("\r\n")
    except OSError as exc:
        raise t.error(key, f"cannot read {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise t.error(key, f"{path} is not UTF-8 text") from None


def _load_control(cfg: StationConfig, t: _Reader) -> None:
    from twin.control_api import normalize_origin

    # Whether it is on by default depends on [drivers] and --sim/--control: _settle_control.
    t.take("enabled", bool)
    cfg.control_host = t.take("host", str, cfg.control_host)
    if problem := check_host(cfg.control_host):
        raise t.error("host", problem)
    cfg.control_port = t.take("port", int, cfg.control_port)
    if problem := check_port(cfg.control_port):
        raise t.error("port", problem)
    cfg.control_debug = t.take("debug", bool, cfg.control_debug)
    token_file = t.take("token_file", str)
    if token_file is not None:
        if not token_file.strip():
            raise t.error("token_file", "must not be empty (leave it out for no token)")
        cfg.control_token_file = _path(t.file, token_file)
        cfg.control_token = _read_control_token(t, "token_file", cfg.control_token_file)
    origins = t.take("allowed_origins", list, [])
    normalized = []
    for index, origin in enumerate(origins):
        if not isinstance(origin, str):
            raise t.error(f"allowed_origins[{index}]", f"expected a string, got {_toml_type(origin)}")
        try:
            normalized.append(normalize_origin(origin))
        except ValueError as exc:
            raise t.error(f"allowed_origins[{index}]", str(exc)) from None
    cfg.control_allowed_origins = tuple(dict.fromkeys(normalized))
    t.done()


# A length no one guesses over the network (the control API has no rate limit).
CONTROL_TOKEN_MIN_LEN = 16


def _read_control_token(t: _Reader, key: str, path: Path) -> str:
    """The bearer token in ``path``: a regular file only its owner can read or write."""
    from twin.control_api import BEARER_TOKEN_RE

    try:
        info = path.stat()
    except OSError as exc:
        raise t.error(key, f"cannot read {path}: {exc.strerror or exc}") from None
    if not stat.S_ISREG(info.st_mode):
        raise t.error(key, f"{path} is not a regular file")
    if info.st_mode & 0o077:
        raise t.error(key, f"{path} is accessible to group or others (mode {stat.S_IMODE(info.st_mode):04o}): "
                           f"the token would not be secret; chmod 600 {path}")
    try:
        token = path.read_text(encoding="utf-8").rstrip("\r\n")  # the newline an editor or echo adds
    except OSError as exc:
        raise t.error(key, f"cannot read {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise t.error(key, f"{path} is not UTF-8 text") from None
    if not token:
        raise t.error(key, f"{path} is empty")
    if len(token) < CONTROL_TOKEN_MIN_LEN or not BEARER_TOKEN_RE.fullmatch(token):
        raise t.error(key, f"{path} does not hold a usable bearer token: at least {CONTROL_TOKEN_MIN_LEN} of "
                           "A-Z a-z 0-9 - . _ ~ + / (then any '='), on one line; make one with: openssl rand -hex 32")
    return token


def _names_real_backend(drivers: Mapping[str, Any]) -> bool:
    """Whether [drivers] names a hardware backend (gpiozero, modbus, pcsc or a plugin's). A named
    backend drives hardware or the station does not start; "auto" may fall back to the simulator."""
    return any(isinstance(table, Mapping) and isinstance(table.get("backend"), str)
               and table["backend"] not in ("sim", "auto") for table in drivers.values())


def _is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name: where it resolves is not known here


def _settle_control(cfg: StationConfig, path: Path | None, table: Mapping[str, Any],
                    overrides: Mapping[str, Any]) -> None:
    """What needs the whole config: whether the control API is on, and that it is not
    exposed beyond loopback without a token."""
    from_cli = overrides.get("control") is not None
    if from_cli:
        cfg.control_enabled = True  # --control HOST:PORT asks for it; flags win over the file
    elif "enabled" in table:
        cfg.control_enabled = table["enabled"]
    else:
        # A rig whose drivers switch real contactors and read real cards does not take card
        # taps and plug events from anyone on the host unless the file says so.
        cfg.control_enabled = cfg.force_sim or not _names_real_backend(cfg.drivers)
    if cfg.control_enabled and cfg.control_token is None and not _is_loopback(cfg.control_host):
        where = (CLI, CLI_FLAGS["control"]) if from_cli else (path, "control.host")
        raise ConfigError(*where, f"the control API on {cfg.control_host} (not loopback) needs control.token_file: "
                                  "without a token anyone on the network can plug, present cards and cut the "
                                  "CSMS link")


def _load_identity(cfg: StationConfig, t: _Reader) -> None:
    identity = dict(cfg.profile.identity)
    for name, max_len in IDENTITY_FIELDS.items():
        value = t.take(name, str)
        if value is None:
            continue
        if not value or len(value) > max_len:
            raise t.error(name, f"must be 1 to {max_len} characters (BootNotification CiString{max_len}), "
                                f"got {len(value)}")
        identity[name] = value
    if "firmwareVersion" in t.table:
        raise t.error("firmwareVersion", "not configurable: the station reports its own version (twin.__version__)")
    t.done()
    cfg.identity = identity


def _load_ev(cfg: StationConfig, t: _Reader) -> None:
    ev = EvConfig()
    ev.max_power_w = t.number("max_power_w", ev.max_power_w, lambda v: 0 < v <= 1_000_000, "> 0 and <= 1000000 W")
    ev.battery_wh = t.number("battery_wh", ev.battery_wh, lambda v: 0 < v <= 1_000_000, "> 0 and <= 1000000 Wh")
    ev.soc_start = t.number("soc_start", ev.soc_start, lambda v: 0 <= v <= 100, "0..100 %")
    if "voltage" in t.table:
        raise t.error("voltage", "the supply voltage belongs to the charger: set [station] voltage in its profile "
                                 "(docs/profiles.md)")
    ev.phases = t.take("phases", int, ev.phases)
    if ev.phases not in (1, 2, 3):
        raise t.error("phases", f"{ev.phases} is not 1, 2 or 3")
    t.done()
    cfg.ev = ev


def _apply_cli(cfg: StationConfig, overrides: dict[str, Any]) -> None:
    for name, value in overrides.items():
        if name not in CLI_FLAGS:
            raise ConfigError(CLI, name, f"unknown override (known: {', '.join(CLI_FLAGS)})")
        if value is None:
            continue
        flag = CLI_FLAGS[name]
        problem = None
        if name == "csms_url":
            problem = check_csms_url(str(value))
            cfg.csms_url = str(value)
        elif name == "charge_point_id":
            problem = check_charge_point_id(str(value))
            cfg.charge_point_id = str(value)
        elif name == "data_dir":
            if not str(value).strip():
                problem = "must not be empty"
            cfg.data_dir = Path(value).expanduser()
        elif name == "control":
            try:
                cfg.control_host, cfg.control_port = parse_control_address(str(value))
            except ValueError as exc:
                problem = str(exc)
        elif name == "sim":
            cfg.force_sim = bool(value)
        elif name == "profile":
            pass  # read first, by _load_station: the profile gives the defaults the file overrides
        elif name == "trace":
            if not str(value).strip():
                problem = "must not be empty"
            cfg.trace_file = Path(value).expanduser()
        if problem:
            raise ConfigError(CLI, flag, problem)


def _load_keys(cfg: StationConfig, t: _Reader) -> None:
    keys: dict[str, str] = {}
    for raw, value in t.table.items():
        name = canonical_name(raw)
        if name is None:
            raise t.error(raw, "unknown OCPP configuration key")
        if name in keys:
            raise t.error(raw, f"given twice (keys are case-insensitive: also {name})")
        keys[name] = _key_value(t, raw, value)
    # NumberOfConnectors is the station's shape, set by station.connectors.
    given = keys.get("NumberOfConnectors")
    if given is not None and given.strip() != str(cfg.connectors):
        raise t.error("NumberOfConnectors", f"{given} conflicts with station.connectors = {cfg.connectors}; "
                                            "set station.connectors only")
    keys["NumberOfConnectors"] = str(cfg.connectors)
    try:
        checked = ConfigKeys(keys, profile=cfg.profile)
    except KeyConfigError as exc:
        raise t.error(exc.key, exc.problem) from None
    cfg.keys = {name: checked.get(name) for name in keys}


def _settle_security(cfg: StationConfig, path: Path | None, table: Mapping[str, Any],
                     overrides: Mapping[str, Any]) -> None:
    """The security profile the station starts on, and its credentials (whitepaper
    "Security profiles"; docs/security-transport.md).

    - ``[csms] password`` is the AuthorizationKey: given alone it becomes the
      ``[keys] AuthorizationKey`` override; both given must agree. Either way it must be an
      AuthorizationKey (16-20 bytes as hex or text). Once the CSMS changes the key over OCPP,
      the stored value wins (twin.core.keys).
    - ``[keys] SecurityProfile`` sets the starting profile. Without it the profile follows
      from the URL: ws:// is 0, or 1 with a password; wss:// is 2 with a password, 3 with a
      client certificate.
    - The starting profile needs an endpoint of its scheme (``url`` or ``[csms.profile_urls]``),
      and profiles 1 and 2 an AuthorizationKey."""
    from twin.security.auth_key import AuthorizationKeyError, authorization_key_bytes

    url_where = (CLI, CLI_FLAGS["csms_url"]) if overrides.get("csms_url") is not None else (path, "csms.url")
    password_key = "csms.password_file" if "password_file" in table else "csms.password"
    if cfg.password is not None:
        try:
            authorization_key_bytes(cfg.password)
        except AuthorizationKeyError as exc:  # the message never holds the value
            raise ConfigError(path, password_key, f"is the AuthorizationKey (Basic-auth password): {exc}") from None
        given = cfg.keys.get("AuthorizationKey")
        if given and given != cfg.password:
            raise ConfigError(path, password_key, "differs from keys.AuthorizationKey: both are the Basic-auth "
                                                  "password; give one of them")
        cfg.keys["AuthorizationKey"] = cfg.password
    elif cfg.keys.get("AuthorizationKey"):
        cfg.password = cfg.keys["AuthorizationKey"]
    endpoints = Endpoints(cfg.csms_url, cfg.profile_urls)
    if "SecurityProfile" in cfg.keys:
        profile, where = int(cfg.keys["SecurityProfile"]), (path, "keys.SecurityProfile")
    else:
        tls = cfg.csms_url.startswith("wss://")
        if not tls:
            profile = 1 if cfg.password else 0
        elif cfg.password:
            profile = 2
        elif cfg.client_cert_file is not None:
            profile = 3
        else:
            raise ConfigError(*url_where, "wss:// is security profile 2 or 3: profile 2 needs csms.password (the "
                                          "AuthorizationKey), profile 3 csms.client_cert_file and client_key_file "
                                          "(or set keys.SecurityProfile with a certificate already in the store)")
        if profile:  # 0 is the key's default "when no security profile is yet configured" (WP3 §7.6)
            cfg.keys["SecurityProfile"] = str(profile)
        where = url_where
    if endpoints.base(profile) is None:
        raise ConfigError(*where, f"security profile {profile} needs a {scheme_for(profile)}:// endpoint, but "
                                  f"csms.url is {cfg.csms_url}: give [csms.profile_urls] {profile}")
    if profile in (1, 2) and not cfg.password:
        raise ConfigError(*where, f"security profile {profile} needs an AuthorizationKey (HTTP Basic auth): "
                                  "set csms.password or keys.AuthorizationKey")
    if cfg.ca_file is not None and endpoints.base(2) is None and endpoints.base(3) is None:
        raise ConfigError(path, "csms.ca_file", f"only used with a wss:// endpoint (csms.url or "
                                                f"csms.profile_urls), but the URL is {cfg.csms_url}")


# -------------------------------------------------------------------------- diagnostics

def redacted(cfg: StationConfig) -> dict[str, Any]:
    """The config as plain JSON-able data for diagnostics, with credentials replaced
    by "***": the CSMS password and any key (at any depth, e.g. in [drivers] or
    [firmware]) whose name looks like a password, secret, token or key."""
    data = {
        "config_file": str(cfg.config_file) if cfg.config_file else None,
        "charge_point_id": cfg.charge_point_id,
        "csms_url": cfg.csms_url,
        "password": cfg.password,
        "ca_file": str(cfg.ca_file) if cfg.ca_file else None,
        "profile_urls": {str(k): v for k, v in cfg.profile_urls.items()},
        "client_cert_file": str(cfg.client_cert_file) if cfg.client_cert_file else None,
        "client_key_file": str(cfg.client_key_file) if cfg.client_key_file else None,
        "data_dir": str(cfg.data_dir),
        "control_enabled": cfg.control_enabled,
        "control_host": cfg.control_host,
        "control_port": cfg.control_port,
        "control_debug": cfg.control_debug,
        "control_token_file": str(cfg.control_token_file) if cfg.control_token_file else None,
        "control_token": cfg.control_token,
        "control_allowed_origins": list(cfg.control_allowed_origins),
        "connectors": cfg.connectors,
        "fixed_cable": cfg.fixed_cable,
        "identity": dict(cfg.identity),
        "keys": dict(cfg.keys),
        "drivers": cfg.drivers,
        "ev": vars(cfg.ev).copy(),
        "log_level": cfg.log_level,
        "firmware": cfg.firmware,
        "security": cfg.security,
        "force_sim": cfg.force_sim,
    }
    return _redact(data)


def _redact(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: ("***" if v is not None and SECRET_RE.search(str(k)) else _redact(v)) for k, v in value.items()}
    if isinstance(value, list):
        return [_redact(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value
