"""twin/profiles: loading and checking charger profiles (the shipped iEVQC33, the example
second model, and every kind of bad file)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from tests.core.test_keys import IEVQC33
from twin.config import ConfigError
from twin.core.keys import KEYS, ConfigKeys
from twin.profiles import QUIRKS, ChargerProfile, ProfileError, Quirks, default_profile, load_profile

PROFILES = Path(__file__).parents[2] / "twin" / "profiles"
SHIPPED = PROFILES / "iEVQC33.toml"
EXAMPLE = PROFILES / "examples" / "generic-ac-1c.toml"

# Not on the certificate, reported by the twin (see the profile's comments).
TWIN_ADDED = {"ConnectorSwitch3to1PhaseSupported": "false", "SupportedFileTransferProtocols": "FTP,FTPS,HTTP,HTTPS",
              # security whitepaper edition 3 §7: not covered by the certificate
              "AdditionalRootCertificateCheck": "false", "AuthorizationKey": "", "CertificateSignedMaxChainSize": "10000",
              "CertificateStoreMaxLength": "20", "CpoName": "", "SecurityProfile": "0"}


# ------------------------------------------------------------------ the iEVQC33


def test_default_is_the_shipped_iEVQC33():
    profile = load_profile()
    assert profile is load_profile(None) is default_profile()  # read once
    assert dict(profile.identity) == {"chargePointVendor": "XJ Power Co., Ltd.", "chargePointModel": "iEVQC33"}
    assert (profile.connectors, profile.fixed_cable, profile.max_current_a, profile.voltage, profile.phases) == (
        2, True, 32.0, 230.0, 3)
    assert profile.quirks == Quirks(composite_start_schedule=False, trigger_meter_values_connector_0=False,
                                    unlock_key_writable_with_fixed_cable=True)
    assert Path(profile.source).name == "iEVQC33.toml"


def test_the_shipped_keys_are_the_certified_values():
    profile = load_profile()
    assert dict(profile.key_values) == {**IEVQC33, **TWIN_ADDED}
    assert set(profile.key_values) == set(KEYS)  # the iEVQC33 has every key the twin defines
    assert profile.key_access["NumberOfConnectors"] == "R"
    assert profile.key_access["UnlockConnectorOnEVSideDisconnect"] == "RW"  # the certified deviation


def test_loading_the_shipped_file_by_path_gives_the_same_profile():
    by_path = load_profile(str(SHIPPED))
    assert by_path is not default_profile()
    assert dataclasses.replace(by_path, source="") == dataclasses.replace(default_profile(), source="")


def test_a_profile_is_immutable():
    profile = load_profile()
    with pytest.raises(dataclasses.FrozenInstanceError):
        profile.connectors = 3  # type: ignore[misc]
    with pytest.raises(TypeError):
        profile.key_values["HeartbeatInterval"] = "1"  # type: ignore[index]
    with pytest.raises(TypeError):
        profile.identity["chargePointModel"] = "x"  # type: ignore[index]


# ------------------------------------------------------------------ a second model


def test_the_example_is_a_second_model():
    profile = load_profile(EXAMPLE)
    assert isinstance(profile, ChargerProfile)
    assert dict(profile.identity) == {"chargePointVendor": "Example Vendor", "chargePointModel": "Generic AC 1C"}
    assert (profile.connectors, profile.fixed_cable, profile.max_current_a, profile.voltage, profile.phases) == (
        1, False, 16.0, 230.0, 1)
    assert isinstance(profile.max_current_a, float)  # written as the integer 16
    # the quirks it changes; the one it leaves out takes the spec's behaviour
    assert profile.quirks == Quirks(composite_start_schedule=True)
    assert profile.quirks.unlock_key_writable_with_fixed_cable is False


def test_the_example_changes_keys_values_and_access():
    example, shipped = load_profile(EXAMPLE), load_profile()
    assert example.key_values["NumberOfConnectors"] == "1"
    assert example.key_values["ConnectorPhaseRotation"] == "1.NotApplicable"
    assert example.key_values["MeterValuesSampledData"] == "Energy.Active.Import.Register,Power.Active.Import"
    assert example.key_values["ChargingScheduleAllowedChargingRateUnit"] == "Current"
    assert (example.key_values["AuthorizeRemoteTxRequests"], example.key_access["AuthorizeRemoteTxRequests"]) == (
        "false", "R")
    assert shipped.key_access["AuthorizeRemoteTxRequests"] == "RW"
    missing = set(shipped.key_values) - set(example.key_values)
    assert missing == {"BlinkRepeat", "LightIntensity", "MaxEnergyOnInvalidId", "ConnectorPhaseRotationMaxLength",
                       "ReserveConnectorZeroSupported", "ConnectorSwitch3to1PhaseSupported",
                       "StopTransactionMaxMeterValues",
                       # a model without the security extensions (the core falls back to profile 0)
                       "AdditionalRootCertificateCheck", "AuthorizationKey", "CertificateSignedMaxChainSize",
                       "CertificateStoreMaxLength", "CpoName", "SecurityProfile"}
    assert "Reservation" not in example.key_values["SupportedFeatureProfiles"].split(",")


def test_config_keys_follow_the_example_model():
    keys = ConfigKeys({"HeartbeatInterval": "600"}, profile=load_profile(EXAMPLE))
    assert keys.get_int("HeartbeatInterval") == 600
    assert keys.get_int("NumberOfConnectors") == 1
    assert keys.change("LightIntensity", "10") == ("NotSupported", {})
    assert keys.change("StopTransactionOnEVSideDisconnect", "false") == ("Rejected", {})  # R in this model


# ------------------------------------------------------------------ bad files


def variant(tmp_path: Path, old: str, new: str, *, source: Path = SHIPPED) -> Path:
    """The shipped profile with one exact piece of text replaced."""
    text = source.read_text(encoding="utf-8")
    assert text.count(old) == 1, old
    path = tmp_path / "model.toml"
    path.write_text(text.replace(old, new), encoding="utf-8")
    return path


def load_error(path: Path) -> ProfileError:
    with pytest.raises(ProfileError) as raised:
        load_profile(path)
    return raised.value


HB = 'HeartbeatInterval = { value = 30, access = "RW" }'
UNLOCK = 'UnlockConnectorOnEVSideDisconnect = { value = true, access = "RW" }  # see quirks'


@pytest.mark.parametrize(
    ("old", "new", "key", "problem"),
    [
        # tables
        ("[quirks]", "[colour]\nred = true\n[quirks]", "colour", "unknown key (known here: identity, station, "
                                                                  "quirks, keys)"),
        ("\n[station]\n", "\n[stationx]\n", "station", "missing (a table)"),
        ("\n[identity]\n", '\nidentity = "XJ"\n[identityx]\n', "identity", "expected a table, got a string"),
        # [station]
        ("connectors = 2 ", 'connectors = "2" ', "station.connectors", "expected an integer, got a string"),
        ("connectors = 2 ", "connectors = 0 ", "station.connectors", "0 is out of range: must be 1..99"),
        ("fixed_cable = true ", "fixed_cable = 1 ", "station.fixed_cable", "expected a boolean, got an integer"),
        ("max_current_a = 32.0", "max_current_a = 5", "station.max_current_a",
         "5 A is out of range: must be 6..1000 A (IEC 61851-1"),
        ("max_current_a = 32.0", "max_current_a = true", "station.max_current_a", "expected a number, got a boolean"),
        ("max_current_a = 32.0", "", "station.max_current_a", "missing (a number)"),
        ("voltage = 230.0", "voltage = 0", "station.voltage", "0 V is out of range"),
        ("phases = 3 ", "phases = 4 ", "station.phases", "4 is not 1, 2 or 3"),
        ("phases = 3 ", "phases = 3\nrating = 32 ", "station.rating", "unknown key (known here: connectors, "
                                                                      "fixed_cable, max_current_a, voltage, phases)"),
        # [identity]
        ('chargePointModel = "iEVQC33"', 'chargePointModel = "iEVQC33"\nfirmwareVersion = "V1.10"',
         "identity.firmwareVersion", "not part of a profile: the station reports its own version"),
        ('chargePointModel = "iEVQC33"', 'chargePointModel = "iEVQC33"\nchargePointSerialNumber = "XJ-1"',
         "identity.chargePointSerialNumber", "describes one unit, not the model: set it in the station TOML"),
        ('chargePointModel = "iEVQC33"', "", "identity.chargePointModel", "missing (a string)"),
        ('chargePointVendor = "XJ Power Co., Ltd."', 'chargePointVendor = "XJ Power Company Limited"',
         "identity.chargePointVendor", "must be 1 to 20 characters (BootNotification CiString20), got 24"),
        ('chargePointModel = "iEVQC33"', 'chargePointModel = "iEVQC33"\ncolour = "red"', "identity.colour",
         "unknown key"),
        # [quirks]
        ("composite_start_schedule = false", "composite_start_schedule = false\nfast_boot = true",
         "quirks.fast_boot", "unknown key (known here: composite_start_schedule, trigger_meter_values_connector_0, "
                             "unlock_key_writable_with_fixed_cable)"),
        ("composite_start_schedule = false", 'composite_start_schedule = "no"', "quirks.composite_start_schedule",
         "expected a boolean, got a string"),
        # [keys]: the file's shape
        (HB, HB + '\nNumberOfConnectors = { value = 2, access = "R" }', "keys.NumberOfConnectors",
         "set station.connectors instead"),
        (HB, "HeartbeatInterval = 30", "keys.HeartbeatInterval",
         'expected a table { value = ..., access = "R" | "RW" }, got an integer'),
        (HB, 'HeartbeatInterval = { access = "RW" }', "keys.HeartbeatInterval.value", "missing"),
        (HB, 'HeartbeatInterval = { value = 1.5, access = "RW" }', "keys.HeartbeatInterval.value",
         "expected a string, integer, boolean or array of strings, got a number"),
        (HB, "HeartbeatInterval = { value = 30 }", "keys.HeartbeatInterval.access", "missing (a string)"),
        (HB, 'HeartbeatInterval = { value = 30, access = "X" }', "keys.HeartbeatInterval.access", "'X' is not R, RW or W"),
        (HB, 'HeartbeatInterval = { value = 30, access = "RW", unit = "s" }', "keys.HeartbeatInterval.unit",
         "unknown key (known here: value, access)"),
        # [keys]: the OCPP definitions
        ('GetConfigurationMaxKeys = { value = 150, access = "R" }',
         'GetConfigurationMaxKeys = { value = 150, access = "RW" }', "keys.GetConfigurationMaxKeys",
         "access RW is not allowed: §9.1.9 makes it R"),
        (HB, 'HeartbeatInterval = { value = 30, access = "R" }', "keys.HeartbeatInterval",
         "access R is not allowed: §9.1.10 makes it RW"),
        (HB, 'HeartbeatInterval = { value = -1, access = "RW" }', "keys.HeartbeatInterval",
         "-1 is below the minimum 0"),
        (HB, 'HeartbeatInterval = { value = "soon", access = "RW" }', "keys.HeartbeatInterval", "'soon' is not an integer"),
        (HB, 'HeartbeatInterval = { value = 2147483648, access = "RW" }', "keys.HeartbeatInterval",
         "above the maximum 2147483647"),
        ('LocalPreAuthorize = { value = false, access = "RW" }', 'LocalPreAuthorize = { value = "no", access = "RW" }',
         "keys.LocalPreAuthorize", "'no' is not a boolean"),
        ('MeterValuesSampledDataMaxLength = { value = 10, access = "R" }',
         'MeterValuesSampledDataMaxLength = { value = 2, access = "R" }', "keys.MeterValuesSampledData",
         "5 items, more than 2 (MeterValuesSampledDataMaxLength)"),
        (HB, HB + '\nTesting = { value = 1, access = "RW" }', "keys.Testing", "unknown configuration key"),
        (HB, 'heartbeatInterval = { value = 30, access = "RW" }', "keys.heartbeatInterval",
         "unknown configuration key (the spelling is HeartbeatInterval)"),
        (HB, "", "keys.HeartbeatInterval", "missing: §9.1.10 requires it of a station that supports Core"),
        ('ReserveConnectorZeroSupported = { value = false, access = "R" }\n', "", None, None),  # optional: fine
        # ERRATA 3.84 and the quirk that lifts it
        ("unlock_key_writable_with_fixed_cable = true", "unlock_key_writable_with_fixed_cable = false",
         "keys.UnlockConnectorOnEVSideDisconnect", "ERRATA 3.84: a fixed-cable station reports false, read-only"),
        ("fixed_cable = true ", "fixed_cable = false ", "quirks.unlock_key_writable_with_fixed_cable",
         "only applies with station.fixed_cable = true"),
    ],
)
def test_a_bad_profile_names_the_file_key_and_problem(tmp_path, old, new, key, problem):
    path = variant(tmp_path, old, new)
    if key is None:
        assert "ReserveConnectorZeroSupported" not in load_profile(path).key_values
        return
    error = load_error(path)
    assert error.file == str(path) and error.key == key
    assert problem in error.problem
    assert str(error).startswith(f"{path}: {key}: ")


def test_a_fixed_cable_model_that_follows_errata_3_84_needs_no_quirk(tmp_path):
    path = variant(tmp_path, UNLOCK, 'UnlockConnectorOnEVSideDisconnect = { value = false, access = "R" }')
    path.write_text(path.read_text().replace("unlock_key_writable_with_fixed_cable = true", ""))
    profile = load_profile(path)
    assert profile.quirks.unlock_key_writable_with_fixed_cable is False
    assert ConfigKeys(profile=profile).change("UnlockConnectorOnEVSideDisconnect", "true") == ("Rejected", {})


def test_a_profile_without_quirks_takes_the_spec_behaviour(tmp_path):
    path = variant(tmp_path, "[quirks]", "[quirks]", source=EXAMPLE)
    text = path.read_text()
    path.write_text(text.replace("composite_start_schedule = true", ""))
    assert load_profile(path).quirks == Quirks()
    assert all(getattr(Quirks(), name) is False for name in QUIRKS)


def test_csl_values_may_be_strings_or_arrays(tmp_path):
    path = variant(tmp_path, 'ChargingScheduleAllowedChargingRateUnit = { value = "Current,Power", access = "R" }',
                   'ChargingScheduleAllowedChargingRateUnit = { value = ["Current", "Power"], access = "R" }')
    assert load_profile(path).key_values["ChargingScheduleAllowedChargingRateUnit"] == "Current,Power"


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        (None, "no such file"),
        (b"[station\n", "invalid TOML: "),
        (b"\xff\xfe", "not UTF-8 text"),
    ],
)
def test_unreadable_files(tmp_path, content, problem):
    path = tmp_path / "model.toml"
    if content is not None:
        path.write_bytes(content)
    error = load_error(path)
    assert isinstance(error, ConfigError)  # the CLI reports it like a bad station TOML
    assert error.file == str(path) and problem in error.problem
    assert str(error).startswith(f"{path}: ")


def test_a_directory_is_not_a_profile(tmp_path):
    assert "is a directory" in load_error(tmp_path).problem


def test_a_key_may_also_be_written_as_its_own_table(tmp_path):
    path = variant(tmp_path, HB + "\n", "")
    path.write_text(path.read_text() + '\n[keys.HeartbeatInterval]\nvalue = 45\naccess = "RW"\n')
    profile = load_profile(path)
    assert (profile.key_values["HeartbeatInterval"], profile.key_access["HeartbeatInterval"]) == ("45", "RW")
