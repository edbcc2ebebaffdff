"""twin/config.py: loading the station TOML, and errors that name file, key and problem."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

import twin
from twin.config import (
    IDENTITY_FIELDS,
    SECTIONS,
    ConfigError,
    StationConfig,
    load_config,
    parse_control_address,
    redacted,
)
from tests.security.private_ca import CLIENT_AUTH, key_pem, make_root, pem, rsa_key
from twin.core.keys import ConfigKeys

EXAMPLE = Path(twin.__file__).parent / "data" / "station.example.toml"
NO_ENV: dict[str, str] = {}


def write(tmp_path: Path, text: str, name: str = "station.toml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def load_text(tmp_path: Path, text: str, **kw) -> StationConfig:
    return load_config(write(tmp_path, text), env=NO_ENV, **kw)


def error_for(tmp_path: Path, text: str, **kw) -> ConfigError:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as raised:
        load_config(path, env=NO_ENV, **kw)
    return raised.value


# ----------------------------------------------------------------------- good files


def test_built_in_defaults():
    cfg = load_config(None, env=NO_ENV)
    assert cfg.config_file is None
    assert cfg.csms_url == "ws://127.0.0.1:9000/ocpp"
    assert cfg.charge_point_id == "iEVQC33-TWIN-001"
    assert cfg.ws_url == "ws://127.0.0.1:9000/ocpp/iEVQC33-TWIN-001"
    assert cfg.password is None and cfg.ca_file is None
    assert cfg.data_dir == Path("var/twin")
    assert (cfg.control_host, cfg.control_port, cfg.control_debug) == ("127.0.0.1", 8180, False)
    assert cfg.connectors == 2 and cfg.fixed_cable is True
    assert cfg.identity == {"chargePointVendor": "XJ Power Co., Ltd.", "chargePointModel": "iEVQC33"}
    assert cfg.keys == {"NumberOfConnectors": "2"}
    assert cfg.drivers == {} and cfg.firmware == {}
    assert (cfg.ev.max_power_w, cfg.ev.battery_wh, cfg.ev.soc_start, cfg.ev.phases) == (
        11000.0, 60000.0, 20.0, 3)
    assert cfg.profile.voltage == 230.0  # the supply voltage is the charger's
    assert cfg.log_level == "INFO" and cfg.force_sim is False


def test_the_example_file_loads_and_documents_every_option():
    cfg = load_config(EXAMPLE, env=NO_ENV)
    defaults = load_config(None, env=NO_ENV)
    assert cfg.config_file == EXAMPLE
    for name in vars(defaults):
        if name != "config_file":
            assert getattr(cfg, name) == getattr(defaults, name), name
    text = EXAMPLE.read_text()
    for section in SECTIONS:
        assert f"[{section}]" in text
    options = ["charge_point_id", "connectors", "fixed_cable", "data_dir", "log_level", "url", "password",
               "password_file", "ca_file", "host", "port", "debug", "max_power_w", "battery_wh", "soc_start",
               "phases", *IDENTITY_FIELDS]
    for option in options:
        assert re.search(rf"^#? ?{option} = ", text, re.M), option


def test_a_full_file(tmp_path):
    (tmp_path / "certs").mkdir()
    (tmp_path / "certs" / "ca.pem").write_text(make_root().pem)
    cfg = load_text(tmp_path, """
[station]
charge_point_id = "CP_42"
connectors = 1
fixed_cable = false
data_dir = "state"
log_level = "debug"
[csms]
url = "wss://csms.example.org:8443/ocpp/"
password = "0123456789abcdef"
ca_file = "certs/ca.pem"
[control]
host = "::1"
port = 0
debug = true
[identity]
chargePointSerialNumber = "XJ-0001"
meterType = "SDM630"
[keys]
heartbeatinterval = 60
LocalPreAuthorize = true
MeterValuesSampledData = ["Voltage", "SoC"]
ConnectorPhaseRotation = "1.RST"
[ev]
max_power_w = 7400
phases = 1
soc_start = 0
[drivers.relay]
backend = "gpio"
pins = {1 = 17}
[firmware]
boot_timeout_s = 30
""")
    assert cfg.ws_url == "wss://csms.example.org:8443/ocpp/CP_42"
    assert cfg.password == "0123456789abcdef"
    assert cfg.ca_file == tmp_path / "certs" / "ca.pem"  # relative to the file
    assert cfg.data_dir == tmp_path / "state"
    assert (cfg.control_host, cfg.control_port, cfg.control_debug) == ("::1", 0, True)
    assert cfg.connectors == 1 and cfg.fixed_cable is False and cfg.log_level == "DEBUG"
    assert cfg.identity["chargePointSerialNumber"] == "XJ-0001" and cfg.identity["chargePointModel"] == "iEVQC33"
    assert cfg.keys == {"HeartbeatInterval": "60", "LocalPreAuthorize": "true", "MeterValuesSampledData": "Voltage,SoC",
                        "ConnectorPhaseRotation": "1.RST", "NumberOfConnectors": "1",
                        # wss:// with a password: security profile 2, the password is the AuthorizationKey
                        "AuthorizationKey": "0123456789abcdef", "SecurityProfile": "2"}
    assert ConfigKeys(cfg.keys).get_int("NumberOfConnectors") == 1
    assert (cfg.ev.max_power_w, cfg.ev.phases, cfg.ev.soc_start) == (7400.0, 1, 0.0)
    assert cfg.drivers == {"relay": {"backend": "gpio", "pins": {"1": 17}}}
    assert cfg.firmware == {"boot_timeout_s": 30}


def test_password_file_drops_only_the_trailing_newline(tmp_path):
    (tmp_path / "pw").write_text(" secret with spaces \n")
    cfg = load_text(tmp_path, '[csms]\npassword_file = "pw"\n')
    assert cfg.password == " secret with spaces "


def test_default_data_dir_under_systemd():
    assert load_config(None, env={"INVOCATION_ID": "abc"}).data_dir == Path("/var/lib/ocpp-twin")
    assert load_config(None, env={"INVOCATION_ID": "abc", "STATE_DIRECTORY": "/var/lib/twin2:/x"}).data_dir == Path(
        "/var/lib/twin2")


def test_command_line_overrides_win(tmp_path):
    cfg = load_text(tmp_path, '[csms]\nurl = "ws://a:1/ocpp"\n[station]\ncharge_point_id = "A"\n', overrides={
        "csms_url": "ws://127.0.0.1:9999/", "charge_point_id": "CP1", "data_dir": "rel/dir",
        "control": "[::1]:8181", "sim": True})
    assert cfg.ws_url == "ws://127.0.0.1:9999/CP1"
    assert cfg.data_dir == Path("rel/dir")  # relative to the cwd, as typed
    assert (cfg.control_host, cfg.control_port) == ("::1", 8181)
    assert cfg.force_sim is True


def test_flags_not_given_are_none():
    cfg = load_config(None, {"csms_url": None, "charge_point_id": None, "data_dir": None, "control": None,
                             "sim": None}, env=NO_ENV)
    assert cfg.ws_url == "ws://127.0.0.1:9000/ocpp/iEVQC33-TWIN-001" and cfg.force_sim is False


@pytest.mark.parametrize(("text", "expected"), [
    ("127.0.0.1:8180", ("127.0.0.1", 8180)),
    ("localhost:0", ("localhost", 0)),
    ("[::1]:80", ("::1", 80)),
    ("0.0.0.0:65535", ("0.0.0.0", 65535)),
])
def test_parse_control_address(text, expected):
    assert parse_control_address(text) == expected


@pytest.mark.parametrize("text", ["8180", ":8180", "host:", "host:http", "host:70000", "bad host:1", "[::1]:-1"])
def test_parse_control_address_rejects(text):
    with pytest.raises(ValueError, match="port|HOST:PORT|host name"):
        parse_control_address(text)


# ------------------------------------------------------------------------- bad files


@pytest.mark.parametrize(
    ("text", "key", "problem"),
    [
        # unknown names: typos must not pass silently
        ('[sation]\nconnectors = 2\n', "sation", "unknown key (known here: station, csms"),
        ('csms_url = "ws://x/ocpp"\n', "csms_url", "unknown key"),
        ('[station]\nconectors = 2\n', "station.conectors", "unknown key (known here: profile, charge_point_id, connectors"),
        ('[control]\naddress = "1.2.3.4:5"\n', "control.address", "unknown key"),
        ('[ev]\nmax_power = 1\n', "ev.max_power", "unknown key"),
        ('[identity]\nchargePointVender = "X"\n', "identity.chargePointVender", "unknown key"),
        ('[identity]\nfirmwareVersion = "V9"\n', "identity.firmwareVersion", "not configurable"),
        # wrong types
        ('station = "x"\n', "station", "expected a table, got a string"),
        ('[station]\nconnectors = "2"\n', "station.connectors", "expected an integer, got a string"),
        ('[station]\nconnectors = true\n', "station.connectors", "expected an integer, got a boolean"),
        ('[station]\nconnectors = 2.0\n', "station.connectors", "expected an integer, got a number"),
        ('[station]\nfixed_cable = "yes"\n', "station.fixed_cable", "expected a boolean, got a string"),
        ('[csms]\nurl = 1979-05-27\n', "csms.url", "expected a string, got date"),
        ('[control]\nport = "8180"\n', "control.port", "expected an integer, got a string"),
        ('[ev]\nvoltage = 230\n', "ev.voltage", "the supply voltage belongs to the charger"),
        ('[ev]\nsoc_start = true\n', "ev.soc_start", "got a boolean"),
        ('drivers = 3\n', "drivers", "expected a table"),
        # values
        ('[station]\nconnectors = 0\n', "station.connectors", "0 is out of range: must be 1..99"),
        ('[station]\nconnectors = -1\n', "station.connectors", "out of range"),
        ('[station]\ncharge_point_id = "CP/1"\n', "station.charge_point_id", "must be 1 to 48 characters"),
        ('[station]\ncharge_point_id = ""\n', "station.charge_point_id", "must be 1 to 48 characters"),
        ('[station]\nlog_level = "LOUD"\n', "station.log_level", "'LOUD' is not one of DEBUG"),
        ('[station]\ndata_dir = " "\n', "station.data_dir", "must not be empty"),
        ('[csms]\nurl = "http://127.0.0.1:9000/ocpp"\n', "csms.url", "the scheme must be ws:// or wss://, not http://"),
        ('[csms]\nurl = "127.0.0.1:9000/ocpp"\n', "csms.url", "the scheme must be ws:// or wss://"),
        ('[csms]\nurl = "ws:///ocpp"\n', "csms.url", "has no host"),
        ('[csms]\nurl = "ws://h:99999/ocpp"\n', "csms.url", "not a valid URL"),
        ('[csms]\nurl = "ws://u:p@h/ocpp"\n', "csms.url", "put credentials in csms.password"),
        ('[csms]\nurl = "ws://h/ocpp?x=1"\n', "csms.url", "no query or fragment"),
        ('[csms]\npassword = ""\n', "csms.password", "must not be empty"),
        ('[csms]\npassword = "a"\npassword_file = "b"\n', "csms.password_file", "either password or password_file"),
        ('[csms]\npassword_file = "missing"\n', "csms.password_file", "cannot read"),
        ('[csms]\nurl = "wss://h/ocpp"\nca_file = "missing.pem"\n', "csms.ca_file", "does not exist"),
        ('[control]\nhost = "not a host"\n', "control.host", "is not an IP address or host name"),
        ('[control]\nport = 70000\n', "control.port", "port 70000 is out of range 0..65535"),
        ('[identity]\nchargePointModel = "iEVQC33-with-a-long-name"\n', "identity.chargePointModel",
         "must be 1 to 20 characters (BootNotification CiString20), got 24"),
        ('[ev]\nphases = 4\n', "ev.phases", "4 is not 1, 2 or 3"),
        ('[ev]\nsoc_start = 101\n', "ev.soc_start", "101 is out of range: must be 0..100 %"),
        ('[ev]\nbattery_wh = 0\n', "ev.battery_wh", "out of range"),
        # OCPP key overrides
        ('[keys]\nTesting = true\n', "keys.Testing", "unknown OCPP configuration key"),
        ('[keys]\nHeartbeatInterval = -5\n', "keys.HeartbeatInterval", "-5 is below the minimum 0"),
        ('[keys]\nMeterValueSampleInterval = "often"\n', "keys.MeterValueSampleInterval", "'often' is not an integer"),
        ('[keys]\nMeterValuesSampledData = ["Temperature"]\n', "keys.MeterValuesSampledData", "not supported"),
        ('[keys]\nHeartbeatInterval = 1.5\n', "keys.HeartbeatInterval", "got a number"),
        ('[keys]\nLocalPreAuthorize = "yes"\n', "keys.LocalPreAuthorize", "not a boolean"),
        ('[keys]\nHeartbeatInterval = 1\nheartbeatinterval = 2\n', "keys.heartbeatinterval", "given twice"),
        ('[keys]\nNumberOfConnectors = 3\n', "keys.NumberOfConnectors", "conflicts with station.connectors = 2"),
    ],
)
def test_errors_name_the_file_the_key_and_the_problem(tmp_path, text, key, problem):
    error = error_for(tmp_path, text)
    path = tmp_path / "station.toml"
    assert error.key == key
    assert problem in error.problem
    assert str(error) == f"{path}: {key}: {error.problem}"


def test_ca_file_needs_a_wss_endpoint(tmp_path):
    (tmp_path / "ca.pem").write_text(make_root().pem)
    error = error_for(tmp_path, '[csms]\nca_file = "ca.pem"\n')
    assert (error.key, error.problem) == ("csms.ca_file", "only used with a wss:// endpoint (csms.url or "
                                                          "csms.profile_urls), but the URL is ws://127.0.0.1:9000/ocpp")
    # A root for a later raise to profile 2 (TC_083) is fine once profile 2 has an endpoint.
    cfg = load_text(tmp_path, '[csms]\nca_file = "ca.pem"\n[csms.profile_urls]\n2 = "wss://localhost:8443/ocpp"\n')
    assert cfg.ca_file == tmp_path / "ca.pem" and cfg.profile_urls == {2: "wss://localhost:8443/ocpp"}


def test_invalid_toml_gives_line_and_column(tmp_path):
    error = error_for(tmp_path, '[station]\nconnectors = 2\ncharge_point_id = "unterminated\n')
    assert str(error).startswith(f"{tmp_path / 'station.toml'}: invalid TOML: ")
    assert "line 3" in str(error) and "column" in str(error)


def test_duplicate_toml_key_is_invalid_toml(tmp_path):
    assert "invalid TOML" in str(error_for(tmp_path, "[station]\nconnectors = 1\nconnectors = 2\n"))


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError, match=re.escape(f"{tmp_path / 'nope.toml'}: no such file")):
        load_config(tmp_path / "nope.toml", env=NO_ENV)


def test_directory_and_binary_files(tmp_path):
    with pytest.raises(ConfigError, match="is a directory"):
        load_config(tmp_path, env=NO_ENV)
    (tmp_path / "bin.toml").write_bytes(b"\xff\xfe\x00")
    with pytest.raises(ConfigError, match="not UTF-8"):
        load_config(tmp_path / "bin.toml", env=NO_ENV)


@pytest.mark.parametrize(("overrides", "flag", "problem"), [
    ({"csms_url": "http://x/ocpp"}, "--csms", "the scheme must be ws:// or wss://"),
    ({"charge_point_id": "a b"}, "--id", "must be 1 to 48 characters"),
    ({"control": "localhost"}, "--control", "is not HOST:PORT"),
    ({"control": "localhost:99999"}, "--control", "out of range"),
    ({"data_dir": ""}, "--data-dir", "must not be empty"),
    ({"verbose": True}, "verbose", "unknown override"),
])
def test_bad_command_line_overrides(overrides, flag, problem):
    with pytest.raises(ConfigError) as raised:
        load_config(None, overrides, env=NO_ENV)
    assert raised.value.key == flag and problem in raised.value.problem
    assert str(raised.value).startswith(f"<command line>: {flag}: ")


# ---------------------------------------------------------------------- diagnostics


def test_redacted_hides_credentials_only(tmp_path):
    cfg = load_text(tmp_path, """
[csms]
password = "s3cret-s3cret-s3cret"
[keys]
HeartbeatInterval = 45
[drivers.meter]
backend = "modbus"
api_token = "t0ken"
[drivers.reader]
ssh_key = "k"
secret = "x"
[firmware]
ftp_password = "p"
servers = [{url = "ftp://h", Authorization_Key = "a"}]
""")
    data = redacted(cfg)
    dumped = repr(data)
    for secret in ("s3cret", "t0ken", "'k'", "'x'", "'p'", "'a'"):
        assert secret not in dumped
    assert data["password"] == "***"
    assert data["drivers"]["meter"] == {"backend": "modbus", "api_token": "***"}
    assert data["firmware"]["servers"][0] == {"url": "ftp://h", "Authorization_Key": "***"}
    # OCPP "keys" are not secrets, but the AuthorizationKey (the password's twin) is
    assert data["keys"] == {"HeartbeatInterval": "45", "NumberOfConnectors": "2", "AuthorizationKey": "***",
                            "SecurityProfile": "1"}
    assert data["csms_url"] == "ws://127.0.0.1:9000/ocpp" and data["data_dir"] == str(cfg.data_dir)
    assert cfg.password == "s3cret-s3cret-s3cret" and cfg.drivers["meter"]["api_token"] == "t0ken"  # not mutated


def test_redacted_without_password_says_so():
    assert redacted(load_config(None, env=NO_ENV))["password"] is None


def test_a_profile_sets_the_model_and_the_station_file_can_override_its_shape(tmp_path):
    """The charger is data: --profile (or [station] profile) loads another model."""
    from pathlib import Path as _P

    import twin.profiles

    example = _P(twin.profiles.__file__).parent / "examples" / "generic-ac-1c.toml"
    cfg = load_config(None, {"profile": str(example)})
    assert cfg.profile.source.endswith("generic-ac-1c.toml")
    assert cfg.connectors == 1 and cfg.fixed_cable is False
    assert cfg.identity["chargePointModel"] == cfg.profile.identity["chargePointModel"] != "iEVQC33"
    assert cfg.keys["NumberOfConnectors"] == "1"
    station_file = tmp_path / "station.toml"
    station_file.write_text(f'[station]\nprofile = "{example}"\nconnectors = 2\n')
    cfg = load_config(station_file)
    assert cfg.connectors == 2 and cfg.profile.connectors == 1
    default = load_config(None)
    assert default.profile.identity["chargePointModel"] == "iEVQC33" and default.connectors == 2


def test_a_bad_profile_names_its_file(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[identity]\nchargePointVendor = 3\n")
    with pytest.raises(ConfigError) as err:
        load_config(None, {"profile": str(bad)})
    assert str(bad) in str(err.value)


# ------------------------------------------------------------ security profiles ([csms])

KEY_HEX = "4F43415F4F4354545F61646D696E5F74657374"  # OCTT TC_073's AuthorizationKey


@pytest.mark.parametrize(("text", "profile", "password"), [
    ('[csms]\nurl = "ws://h/ocpp"\n', 0, None),
    ('[csms]\nurl = "ws://h/ocpp"\npassword = "0123456789abcdef"\n', 1, "0123456789abcdef"),
    ('[csms]\nurl = "wss://h/ocpp"\npassword = "0123456789abcdef"\n', 2, "0123456789abcdef"),
    (f'[csms]\nurl = "ws://h/ocpp"\n[keys]\nAuthorizationKey = "{KEY_HEX}"\n', 1, KEY_HEX),
    (f'[csms]\nurl = "ws://h/ocpp"\npassword = "{KEY_HEX}"\n[keys]\nauthorizationkey = "{KEY_HEX}"\n', 1, KEY_HEX),
    ('[csms]\nurl = "ws://h/ocpp"\n[csms.profile_urls]\n2 = "wss://h:8443/ocpp"\n[keys]\nSecurityProfile = 0\n', 0,
     None),
])
def test_the_starting_profile_and_the_password(tmp_path, text, profile, password):
    cfg = load_text(tmp_path, text)
    assert ConfigKeys(cfg.keys, profile=cfg.profile).get_int("SecurityProfile") == profile
    assert cfg.password == password
    assert cfg.keys.get("AuthorizationKey") == password  # the one value both name


def test_profile_urls_give_each_profile_its_endpoint(tmp_path):
    cfg = load_text(tmp_path, '[csms]\nurl = "ws://h:9000/ocpp"\npassword = "0123456789abcdef"\n'
                              '[csms.profile_urls]\n2 = "wss://h:8443/ocpp"\n3 = "wss://h:8444/ocpp"\n'
                              '[keys]\nSecurityProfile = 2\n')
    from twin.security.transport import Endpoints

    endpoints = Endpoints(cfg.csms_url, cfg.profile_urls)
    assert [endpoints.url_for(n, "CP1") for n in range(4)] == [
        "ws://h:9000/ocpp/CP1", "ws://h:9000/ocpp/CP1", "wss://h:8443/ocpp/CP1", "wss://h:8444/ocpp/CP1"]


def _pair(tmp_path: Path, bits: int = 2048) -> None:
    root = make_root()
    key = rsa_key(bits)
    _, cert = root.leaf("SERIAL-1", CLIENT_AUTH, key=key)
    (tmp_path / "cp.pem").write_text(pem(cert))
    (tmp_path / "cp.key").write_bytes(key_pem(key))


def test_a_client_certificate_makes_wss_profile_3(tmp_path):
    _pair(tmp_path)
    cfg = load_text(tmp_path, '[csms]\nurl = "wss://h/ocpp"\nclient_cert_file = "cp.pem"\nclient_key_file = "cp.key"\n')
    assert cfg.keys["SecurityProfile"] == "3" and cfg.password is None
    assert cfg.client_cert_file == tmp_path / "cp.pem" and redacted(cfg)["client_key_file"] == "***"


@pytest.mark.parametrize(("text", "key", "problem"), [
    # the scheme must agree with the profile (ws:// 0 and 1, wss:// 2 and 3)
    ('[csms]\nurl = "ws://h/ocpp"\npassword = "0123456789abcdef"\n[keys]\nSecurityProfile = 2\n',
     "keys.SecurityProfile", "security profile 2 needs a wss:// endpoint, but csms.url is ws://h/ocpp"),
    ('[csms]\nurl = "wss://h/ocpp"\n[keys]\nSecurityProfile = 0\n', "keys.SecurityProfile",
     "security profile 0 needs a ws:// endpoint"),
    ('[csms]\nurl = "wss://h/ocpp"\n', "csms.url", "wss:// is security profile 2 or 3"),
    ('[csms.profile_urls]\n2 = "ws://h:9000/ocpp"\n', "csms.profile_urls.2",
     "security profile 2 connects with wss://, but the URL is ws://"),
    ('[csms.profile_urls]\n1 = "wss://h:9000/ocpp"\n', "csms.profile_urls.1",
     "security profile 1 connects with ws://, but the URL is wss://"),
    ('[csms.profile_urls]\n4 = "wss://h:9000/ocpp"\n', "csms.profile_urls.4", "must be a security profile"),
    ('[csms.profile_urls]\n2 = "https://h/ocpp"\n', "csms.profile_urls.2", "the scheme must be ws:// or wss://"),
    ('[csms.profile_urls]\n2 = 3\n', "csms.profile_urls.2", "expected a string"),
    # profiles 1 and 2 need the AuthorizationKey
    ('[keys]\nSecurityProfile = 1\n', "keys.SecurityProfile", "security profile 1 needs an AuthorizationKey"),
    # the password is the AuthorizationKey: its rules, and one value
    ('[csms]\npassword = "short"\n', "csms.password", "is the AuthorizationKey (Basic-auth password)"),
    ('[csms]\npassword = "0123456789abcdef"\n[keys]\nAuthorizationKey = "fedcba9876543210"\n', "csms.password",
     "differs from keys.AuthorizationKey"),
    ('[csms]\nclient_cert_file = "cp.pem"\n', "csms.client_key_file", "together"),
])
def test_security_config_errors(tmp_path, text, key, problem):
    (tmp_path / "cp.pem").write_text("x")
    error = error_for(tmp_path, text)
    assert error.key == key and problem in error.problem, str(error)
    assert "0123456789abcdef" not in str(error) and "fedcba9876543210" not in str(error)


def test_a_cli_wss_url_without_credentials_names_the_flag(tmp_path):
    with pytest.raises(ConfigError) as raised:
        load_config(None, {"csms_url": "wss://localhost:1/ocpp"}, env=NO_ENV)
    assert raised.value.key == "--csms" and "profile 2 needs csms.password" in raised.value.problem


def test_ca_file_and_client_pair_are_checked_at_load(tmp_path):
    leaf_key, leaf = make_root().leaf("localhost", CLIENT_AUTH)
    (tmp_path / "leaf.pem").write_text(pem(leaf))
    error = error_for(tmp_path, '[csms]\nurl = "wss://h/ocpp"\npassword = "0123456789abcdef"\nca_file = "leaf.pem"\n')
    assert error.key == "csms.ca_file" and "cannot be a CentralSystemRootCertificate" in error.problem
    _pair(tmp_path)
    (tmp_path / "other.key").write_bytes(key_pem(rsa_key()))
    error = error_for(tmp_path, '[csms]\nurl = "wss://h/ocpp"\nclient_cert_file = "cp.pem"\n'
                                'client_key_file = "other.key"\n')
    assert error.key == "csms.client_cert_file" and "is not the key of the first certificate" in error.problem
    (tmp_path / "bad.key").write_text("-----BEGIN PRIVATE KEY-----\nc2VjcmV0\n-----END PRIVATE KEY-----\n")
    error = error_for(tmp_path, '[csms]\nurl = "wss://h/ocpp"\nclient_cert_file = "cp.pem"\nclient_key_file = "bad.key"\n')
    assert "unencrypted PEM private key" in error.problem and "c2VjcmV0" not in str(error)
    _pair(tmp_path, bits=1024)
    error = error_for(tmp_path, '[csms]\nurl = "wss://h/ocpp"\nclient_cert_file = "cp.pem"\nclient_key_file = "cp.key"\n')
    assert error.key == "csms.client_cert_file" and "2048" in error.problem
