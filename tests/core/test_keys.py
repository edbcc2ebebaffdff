"""twin/core/keys.py: the OCPP key definitions, the charger profile's keys, Get/ChangeConfiguration,
persistence."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import jsonschema
import ocpp.v16
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from twin.core.keys import (
    INT32_MAX,
    KEYS,
    R,
    R_OR_RW,
    RW,
    W,
    SUPPORTED_MEASURANDS,
    ConfigKeys,
    KeyConfigError,
    KeyDef,
    TooManyKeys,
    check_key_profile,
    normalize,
)
from twin.core import limits
from twin.core.metering import MEASURANDS
from twin.profiles import load_profile

SCHEMAS = Path(ocpp.v16.__file__).parent / "schemas"
EXAMPLE = Path(__file__).parents[2] / "twin" / "profiles" / "examples" / "generic-ac-1c.toml"
GET_CONF_SCHEMA = json.loads((SCHEMAS / "GetConfigurationResponse.json").read_text())

MEASURAND_LIST = "Energy.Active.Import.Register,Current.Import,Voltage,SoC,Power.Active.Import"

# The certified values, copied from ../shared/reference/iEVQC33-profile.md (key -> value);
# "illegible" rows carry the twin's documented default.
IEVQC33 = {
    "AllowOfflineTxForUnknownId": "true",
    "AuthorizationCacheEnabled": "true",
    "AuthorizeRemoteTxRequests": "true",
    "BlinkRepeat": "10",
    "ClockAlignedDataInterval": "0",
    "ConnectionTimeOut": "60",
    "ConnectorPhaseRotation": "1.RST,2.RST,3.RST",
    "ConnectorPhaseRotationMaxLength": "3",
    "GetConfigurationMaxKeys": "150",
    "HeartbeatInterval": "30",
    "LightIntensity": "50",
    "LocalAuthorizeOffline": "true",
    "LocalPreAuthorize": "false",
    "MaxEnergyOnInvalidId": "0",
    "MessageTimeout": "30",
    "MeterValuesAlignedData": MEASURAND_LIST,
    "MeterValuesAlignedDataMaxLength": "10",
    "MeterValuesSampledData": MEASURAND_LIST,
    "MeterValuesSampledDataMaxLength": "10",
    "MeterValueSampleInterval": "30",
    "MinimumStatusDuration": "0",
    "NumberOfConnectors": "2",
    "ResetRetries": "0",
    "StopTransactionMaxMeterValues": "0",
    "StopTransactionOnEVSideDisconnect": "true",
    "StopTransactionOnInvalidId": "false",
    "StopTxnAlignedData": "",
    "StopTxnAlignedDataMaxLength": "10",
    "StopTxnSampledData": "",
    "StopTxnSampledDataMaxLength": "10",
    "SupportedFeatureProfiles":
        "Core,FirmwareManagement,LocalAuthListManagement,Reservation,SmartCharging,RemoteTrigger",
    "SupportedFeatureProfilesMaxLength": "6",
    "TransactionMessageAttempts": "3",
    "TransactionMessageRetryInterval": "5",
    "UnlockConnectorOnEVSideDisconnect": "true",
    "WebSocketPingInterval": "10",
    "LocalAuthListEnabled": "true",
    "LocalAuthListMaxLength": "100",
    "SendLocalListMaxLength": "100",
    "ReserveConnectorZeroSupported": "false",
    "ChargeProfileMaxStackLevel": "10",
    "ChargingScheduleAllowedChargingRateUnit": "Current,Power",
    "ChargingScheduleMaxPeriods": "24",
    "MaxChargingProfilesInstalled": "10",
}

# Read-only per SPEC §9 (+ ERRATA 3.90 for SupportedFileTransferProtocols); the iEVQC33
# reports every other key read-write.
READ_ONLY = {
    "ConnectorPhaseRotationMaxLength", "GetConfigurationMaxKeys", "MeterValuesAlignedDataMaxLength",
    "MeterValuesSampledDataMaxLength", "NumberOfConnectors", "StopTxnAlignedDataMaxLength",
    "StopTxnSampledDataMaxLength", "SupportedFeatureProfiles", "SupportedFeatureProfilesMaxLength",
    "LocalAuthListMaxLength", "SendLocalListMaxLength", "ReserveConnectorZeroSupported",
    "ChargeProfileMaxStackLevel", "ChargingScheduleAllowedChargingRateUnit", "ChargingScheduleMaxPeriods",
    "ConnectorSwitch3to1PhaseSupported", "MaxChargingProfilesInstalled", "SupportedFileTransferProtocols",
    # Security whitepaper edition 3 §7
    "AdditionalRootCertificateCheck", "CertificateSignedMaxChainSize", "CertificateStoreMaxLength",
}
WRITE_ONLY = {"AuthorizationKey"}  # WP3 §7.2

# OCTT Table 25 (conformance §4.8): key -> allowed accessibility ("R", "RW" or both).
TC_019_REQUIRED = {
    "AuthorizeRemoteTxRequests": {"R", "RW"}, "ClockAlignedDataInterval": {"RW"}, "ConnectionTimeOut": {"RW"},
    "ConnectorPhaseRotation": {"RW"}, "GetConfigurationMaxKeys": {"R"}, "HeartbeatInterval": {"RW"},
    "LocalAuthorizeOffline": {"RW"}, "LocalPreAuthorize": {"RW"}, "MeterValuesAlignedData": {"RW"},
    "MeterValuesSampledData": {"RW"}, "MeterValueSampleInterval": {"RW"}, "NumberOfConnectors": {"R"},
    "ResetRetries": {"RW"}, "StopTransactionOnInvalidId": {"RW"}, "StopTxnAlignedData": {"RW"},
    "StopTxnSampledData": {"RW"}, "SupportedFeatureProfiles": {"R"}, "TransactionMessageAttempts": {"RW"},
    "TransactionMessageRetryInterval": {"RW"}, "UnlockConnectorOnEVSideDisconnect": {"R", "RW"},
}
# Required keys of the other reported profiles (conformance §4.8).
PROFILE_REQUIRED = {
    "LocalAuthListManagement": {"LocalAuthListEnabled": "RW", "LocalAuthListMaxLength": "R",
                                "SendLocalListMaxLength": "R"},
    "SmartCharging": {"ChargeProfileMaxStackLevel": "R", "ChargingScheduleAllowedChargingRateUnit": "R",
                      "ChargingScheduleMaxPeriods": "R", "MaxChargingProfilesInstalled": "R"},
    "Reservation": {}, "RemoteTrigger": {}, "FirmwareManagement": {},
}


def access(entry: dict) -> str:
    return "R" if entry["readonly"] else "RW"


@dataclass(frozen=True)
class KeysOnly:
    """The part of a charger profile ConfigKeys reads (twin.core.keys.KeyProfile)."""

    key_values: Mapping[str, str]
    key_access: Mapping[str, str]


def shipped_with(values: dict[str, str] | None = None, access: dict[str, str] | None = None,
                 drop: tuple[str, ...] = ()) -> KeysOnly:
    """The shipped profile's keys with some values/access changed or keys left out."""
    default = load_profile()
    new_values = {k: v for k, v in {**default.key_values, **(values or {})}.items() if k not in drop}
    new_access = {k: v for k, v in {**default.key_access, **(access or {})}.items() if k not in drop}
    return KeysOnly(new_values, new_access)


def conf(keys: ConfigKeys, requested: list[str] | None = None) -> dict:
    """GetConfiguration.conf, checked against the OCPP 1.6 schema the link uses."""
    payload = keys.get_configuration(requested)
    jsonschema.validate(payload, GET_CONF_SCHEMA)
    return payload


# ------------------------------------------------------------------ the key profile


@pytest.mark.parametrize("name", sorted(IEVQC33))
def test_default_is_the_certified_iEVQC33_value(name):
    assert ConfigKeys().get(name) == IEVQC33[name]


@pytest.mark.parametrize("name", sorted(KEYS))
def test_read_only_flags_follow_the_spec(name):
    assert ConfigKeys().readonly(name) == (name in READ_ONLY)
    assert ConfigKeys().write_only(name) == (name in WRITE_ONLY)
    if name in READ_ONLY:
        assert KEYS[name].access == R and not KEYS[name].spec_allows_rw
    elif name in WRITE_ONLY:
        assert KEYS[name].access == W
    else:
        assert KEYS[name].spec_allows_rw


# SPEC §9.1.3 / §9.1.33 and ERRATA 3.80 let the station choose; the vendor key is the model's.
EITHER = {"AuthorizeRemoteTxRequests", "UnlockConnectorOnEVSideDisconnect", "StopTransactionOnEVSideDisconnect",
          "StopTransactionMaxMeterValues"}


@pytest.mark.parametrize("name", sorted(KEYS))
def test_spec_access_is_r_rw_or_either(name):
    expected = R if name in READ_ONLY else W if name in WRITE_ONLY else R_OR_RW if name in EITHER else RW
    assert KEYS[name].access == expected


def test_required_keys_are_the_ones_octt_checks():
    # OCTT Table 25 plus the required keys of the other feature profiles.
    required = set(TC_019_REQUIRED) | {k for keys in PROFILE_REQUIRED.values() for k in keys} | {"NumberOfConnectors"}
    assert {name for name, defn in KEYS.items() if defn.required} == required


def test_int32_max_has_one_home():
    assert INT32_MAX is limits.INT32_MAX == 2**31 - 1
    assert KEYS["HeartbeatInterval"].maximum == INT32_MAX


def test_vendor_and_errata_keys_the_twin_needs():
    keys = ConfigKeys()
    assert keys.get("SupportedFileTransferProtocols") == "FTP,FTPS,HTTP,HTTPS"
    assert keys.readonly("SupportedFileTransferProtocols")
    assert keys.get_int("MessageTimeout") == 30 and not keys.readonly("MessageTimeout")
    assert keys.get_int("StopTransactionMaxMeterValues") == 0
    assert keys.get_int("WebSocketPingInterval") == 10
    assert keys.get_int("MaxEnergyOnInvalidId") == 0


def test_definitions_are_consistent():
    values = load_profile().key_values
    for name, defn in KEYS.items():
        assert defn.name == name and len(name) <= 50  # CiString50 in the schemas
        assert defn.kind in ("bool", "int", "csl", "str")
        assert defn.feature_profile in ("Core", "FirmwareManagement", "LocalAuthListManagement", "Reservation",
                                        "SmartCharging", "RemoteTrigger", "Vendor", "Security")
        assert defn.section.startswith(("§9.", "ERRATA 3.", "vendor", "WP3 §7."))
        assert defn.access in (R, RW, R_OR_RW, W)
        assert normalize(defn, values[name]) == values[name], name
        if defn.max_length_key:
            assert KEYS[defn.max_length_key].access == R and KEYS[defn.max_length_key].kind == "int"


def test_supported_measurands_are_the_ones_metering_can_render():
    assert SUPPORTED_MEASURANDS <= set(MEASURANDS)
    assert set(MEASURAND_LIST.split(",")) <= SUPPORTED_MEASURANDS  # the iEVQC33 measurands


def test_typed_getters():
    keys = ConfigKeys()
    assert keys.get_int("HeartbeatInterval") == 30
    assert keys.get_bool("AuthorizeRemoteTxRequests") is True
    assert keys.get_bool("LocalPreAuthorize") is False
    assert keys.get_list("MeterValuesSampledData") == MEASURAND_LIST.split(",")
    assert keys.get_list("StopTxnSampledData") == []
    assert keys.get("heartbeatinterval") == "30"  # CiString: case-insensitive
    with pytest.raises(KeyError):
        keys.get("Testing")


# -------------------------------------------------------------- GetConfiguration


def test_tc_019_retrieve_configuration():
    keys = ConfigKeys()
    profiles = conf(keys, ["SupportedFeatureProfiles"])["configurationKey"][0]["value"].split(",")
    everything = conf(keys)
    assert everything["unknownKey"] == []
    by_name = {e["key"]: e for e in everything["configurationKey"]}
    assert set(by_name) == set(KEYS) - WRITE_ONLY  # never read back (WP3 §7.2)
    assert all(e["value"] == keys.get(e["key"]) for e in everything["configurationKey"])
    for name, allowed in TC_019_REQUIRED.items():
        assert access(by_name[name]) in allowed, name
    assert profiles[0] == "Core" and set(profiles) <= set(PROFILE_REQUIRED) | {"Core"}
    for profile in profiles[1:]:
        for name, acc in PROFILE_REQUIRED[profile].items():
            assert access(by_name[name]) == acc, name
    max_keys = int(conf(keys, ["GetConfigurationMaxKeys"])["configurationKey"][0]["value"])
    asked = list(by_name)[: min(max_keys, len(by_name))]
    answer = conf(keys, asked)
    assert [e["key"] for e in answer["configurationKey"]] == asked and answer["unknownKey"] == []


def test_tc_019_when_max_keys_is_below_the_number_of_keys():
    keys = ConfigKeys({"GetConfigurationMaxKeys": "5"})
    asked = list(KEYS)[:5]
    answer = conf(keys, asked)
    assert [e["key"] for e in answer["configurationKey"]] == asked


def test_more_keys_than_get_configuration_max_keys_is_a_call_error():
    keys = ConfigKeys({"GetConfigurationMaxKeys": "3"})
    with pytest.raises(TooManyKeys) as raised:
        keys.get_configuration(["HeartbeatInterval", "ResetRetries", "BlinkRepeat", "LightIntensity"])
    assert raised.value.code == "OccurenceConstraintViolation"
    assert "4 keys requested, GetConfigurationMaxKeys is 3" in str(raised.value)
    # repeats are counted once, so this is 3 keys
    answer = conf(keys, ["HeartbeatInterval", "heartbeatinterval", "ResetRetries", "BlinkRepeat"])
    assert len(answer["configurationKey"]) == 3


def test_unknown_keys_are_echoed_and_known_ones_answered_in_order():
    answer = conf(ConfigKeys(), ["Testing", "meterValueSampleInterval", "NumberOfConnectors", "testing", "Other",
                                 "MeterValueSampleInterval"])
    assert answer["configurationKey"] == [
        {"key": "MeterValueSampleInterval", "readonly": False, "value": "30"},
        {"key": "NumberOfConnectors", "readonly": True, "value": "2"},
    ]
    assert answer["unknownKey"] == ["Testing", "Other"]


def test_only_unknown_keys():
    assert conf(ConfigKeys(), ["Nope"]) == {"configurationKey": [], "unknownKey": ["Nope"]}


def test_empty_key_list_means_all_keys():
    assert len(conf(ConfigKeys(), [])["configurationKey"]) == len(KEYS) - len(WRITE_ONLY)


def test_the_authorization_key_is_never_read_back():
    """WP3 §7.2: write-only. Left out of the full list; asked for by name, listed without a value."""
    keys = ConfigKeys(overrides={"AuthorizationKey": "0123456789abcdef0123456789abcdef"})
    everything = conf(keys)
    assert "AuthorizationKey" not in {e["key"] for e in everything["configurationKey"]}
    assert "0123456789abcdef" not in repr(everything)
    asked = conf(keys, ["authorizationkey", "CpoName"])
    assert asked["configurationKey"][0] == {"key": "AuthorizationKey", "readonly": False}
    assert asked["configurationKey"][1]["key"] == "CpoName" and asked["unknownKey"] == []


@pytest.mark.parametrize("value", ["short", "g" * 32, "ab" * 21, "x" * 21])
def test_a_bad_authorization_key_override_is_a_config_error_without_the_value(value):
    with pytest.raises(KeyConfigError) as err:
        ConfigKeys(overrides={"AuthorizationKey": value})
    assert err.value.key == "AuthorizationKey" and value not in str(err.value)


# ------------------------------------------------------------- ChangeConfiguration


def test_tc_021_change_then_get():
    keys = ConfigKeys()
    assert keys.change("MeterValueSampleInterval", "15") == ("Accepted", {"MeterValueSampleInterval": "15"})
    assert conf(keys, ["MeterValueSampleInterval"])["configurationKey"][0]["value"] == "15"
    assert keys.get_int("MeterValueSampleInterval") == 15


def test_tc_040_1_unknown_key_is_not_supported():
    assert ConfigKeys().change("Testing", "true") == ("NotSupported", {})


def test_tc_040_2_negative_interval_is_rejected_and_nothing_changes():
    keys = ConfigKeys()
    assert keys.change("MeterValueSampleInterval", "-1") == ("Rejected", {})
    assert keys.get("MeterValueSampleInterval") == "30"
    assert keys.stored_values() == {}
    assert "below the minimum 0" in keys.why_rejected("MeterValueSampleInterval", "-1")


def test_read_only_key_is_rejected():
    keys = ConfigKeys()
    assert keys.change("NumberOfConnectors", "3") == ("Rejected", {})
    assert keys.change("GetConfigurationMaxKeys", "150") == ("Rejected", {})
    assert keys.why_rejected("NumberOfConnectors", "3") == "NumberOfConnectors is read-only"


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("HeartbeatInterval", "abc"),
        ("HeartbeatInterval", "1.5"),
        ("HeartbeatInterval", ""),
        ("HeartbeatInterval", "-"),
        ("HeartbeatInterval", "²"),  # str.isdigit() says yes, int() says no
        ("HeartbeatInterval", str(2**31)),  # would overflow a timedelta later
        ("HeartbeatInterval", "9" * 40),
        ("ConnectionTimeOut", "-5"),
        ("ClockAlignedDataInterval", "-1"),
        ("TransactionMessageAttempts", "-1"),
        ("TransactionMessageRetryInterval", "-1"),
        ("MinimumStatusDuration", "-1"),
        ("WebSocketPingInterval", "-1"),
        ("ResetRetries", "-1"),
        ("MessageTimeout", "0"),
        ("LightIntensity", "101"),
        ("LocalAuthListEnabled", "yes"),
        ("LocalPreAuthorize", "1"),
        ("AuthorizeRemoteTxRequests", ""),
        ("MeterValuesSampledData", "Temperature"),  # unsupported measurand (§9.1.17, issue 2)
        ("MeterValuesSampledData", "Energy.Active.Import.Register,Bogus"),
        ("MeterValuesAlignedData", "Current.Import.L1"),  # no phase suffixes
        ("StopTxnSampledData", "Voltage,Voltage"),
        ("StopTxnAlignedData", "Voltage,,SoC"),
        ("ConnectorPhaseRotation", ""),
        ("ConnectorPhaseRotation", "1.XYZ"),
        ("ConnectorPhaseRotation", "RST"),
        ("ConnectorPhaseRotation", "A.RST"),
        ("ConnectorPhaseRotation", "1.RST,1.RST"),
        ("ConnectorPhaseRotation", "1.RST,01.TSR"),  # one rotation per connector
        ("ConnectorPhaseRotation", "0.RST,1.RST,2.RST,3.RST"),  # 4 > ConnectorPhaseRotationMaxLength 3
        ("StopTransactionMaxMeterValues", "x"),
        ("MeterValuesSampledData", "x" * 501),
    ],
)
def test_bad_values_are_rejected_without_change(name, value):
    keys = ConfigKeys()
    before = keys.get(name)
    assert keys.change(name, value) == ("Rejected", {})
    assert keys.get(name) == before
    assert keys.stored_values() == {}
    assert keys.why_rejected(name, value).startswith(name + ":")


def test_unsupported_measurand_reason_names_it():
    reason = ConfigKeys().why_rejected("MeterValuesSampledData", "Temperature")
    assert "measurand 'Temperature' is not supported" in reason


@pytest.mark.parametrize(
    ("name", "value", "stored"),
    [
        ("LocalPreAuthorize", "TRUE", "true"),
        ("StopTransactionOnInvalidId", " True ", "true"),
        ("HeartbeatInterval", "0", "0"),
        ("HeartbeatInterval", "+60", "60"),
        ("MeterValueSampleInterval", str(2**31 - 1), str(2**31 - 1)),
        ("MeterValuesSampledData", "Voltage, SoC ,Frequency", "Voltage,SoC,Frequency"),
        ("MeterValuesSampledData", "", ""),  # empty = the energy register (TC_070)
        ("StopTxnSampledData", "Energy.Active.Import.Register,Current.Offered,Power.Offered", None),
        ("ConnectorPhaseRotation", "0.RST,1.NotApplicable,2.Unknown", None),
        ("LightIntensity", "100", "100"),
        ("WebSocketPingInterval", "0", "0"),
    ],
)
def test_good_values_are_accepted_normalized_and_persisted(name, value, stored):
    stored = value if stored is None else stored
    keys = ConfigKeys()
    assert keys.change(name, value) == ("Accepted", {name: stored})
    assert keys.get(name) == stored


def test_key_names_are_case_insensitive_and_persist_canonically():
    keys = ConfigKeys()
    assert keys.change("heartbeatINTERVAL", "45") == ("Accepted", {"HeartbeatInterval": "45"})


def test_list_longer_than_its_max_length_is_rejected():
    keys = ConfigKeys({"MeterValuesSampledDataMaxLength": "2", "MeterValuesSampledData": "Voltage"})
    assert keys.change("MeterValuesSampledData", "Voltage,SoC") == (
        "Accepted", {"MeterValuesSampledData": "Voltage,SoC"})
    assert keys.change("MeterValuesSampledData", "Voltage,SoC,Frequency") == ("Rejected", {})
    assert "3 items, more than 2 (MeterValuesSampledDataMaxLength)" in keys.why_rejected(
        "MeterValuesSampledData", "Voltage,SoC,Frequency")
    assert keys.get("MeterValuesSampledData") == "Voltage,SoC"


def test_writable_list_without_max_length_key_holds_one_item():
    # SPEC §5.3: a CSL key without [Key]MaxLength is assumed to hold 1 item.
    defs = {"Colours": KeyDef("Colours", "csl", "Vendor", "vendor", RW, allowed=frozenset({"red", "blue"}))}
    keys = ConfigKeys(defs=defs, profile=KeysOnly({"Colours": "red"}, {"Colours": "RW"}))
    assert keys.change("Colours", "blue") == ("Accepted", {"Colours": "blue"})
    assert keys.change("Colours", "red,blue") == ("Rejected", {})


def test_reboot_required_key():
    defs = {**KEYS, "Radio": KeyDef("Radio", "str", "Vendor", "vendor", RW, reboot_required=True)}
    default = load_profile()
    profile = KeysOnly({**default.key_values, "Radio": "4G"}, {**default.key_access, "Radio": "RW"})
    keys = ConfigKeys(defs=defs, profile=profile)
    assert keys.change("Radio", "5G") == ("RebootRequired", {"Radio": "5G"})
    assert keys.get("Radio") == "5G"


def test_same_value_again_is_accepted_without_a_new_write():
    keys = ConfigKeys()
    assert keys.change("HeartbeatInterval", "60") == ("Accepted", {"HeartbeatInterval": "60"})
    assert keys.change("HeartbeatInterval", "60") == ("Accepted", {})


@settings(max_examples=300, deadline=None)
@given(name=st.sampled_from(sorted(KEYS) + ["Testing"]), value=st.text(max_size=60))
def test_change_never_raises_and_keeps_values_valid(name, value):
    keys = ConfigKeys()
    before = keys.get_configuration()
    status, persist = keys.change(name, value)
    assert status in ("Accepted", "Rejected", "NotSupported")
    if status == "Accepted":
        canonical = KEYS[name]
        assert normalize(canonical, keys.get(name)) == keys.get(name)
        assert persist in ({}, {name: keys.get(name)})
        assert ConfigKeys(stored=keys.stored_values()).get(name) == keys.get(name)
    else:
        assert persist == {} and keys.get_configuration() == before


# ----------------------------------------------------------- overrides and storage


def test_persistence_round_trip():
    keys = ConfigKeys({"HeartbeatInterval": "90"})
    keys.change("MeterValueSampleInterval", "15")
    keys.change("LocalPreAuthorize", "true")
    keys.change("MeterValuesSampledData", "Voltage,SoC")
    keys.change("MeterValueSampleInterval", "-1")  # Rejected: not stored
    stored = keys.stored_values()
    assert stored == {"MeterValueSampleInterval": "15", "LocalPreAuthorize": "true",
                      "MeterValuesSampledData": "Voltage,SoC"}
    again = ConfigKeys({"HeartbeatInterval": "90"}, stored)
    assert again.get_configuration() == keys.get_configuration()
    assert again.stored_values() == stored and again.warnings == []


def test_stored_value_wins_over_the_toml_override():
    keys = ConfigKeys({"HeartbeatInterval": "90"}, {"HeartbeatInterval": "20"})
    assert keys.get_int("HeartbeatInterval") == 20


def test_stored_values_that_no_longer_fit_are_ignored_with_a_warning():
    stored = {
        "Retired": "1",  # a key from another version
        "NumberOfConnectors": "4",  # read-only: cannot have come from the CSMS
        "HeartbeatInterval": "soon",
        "MeterValuesSampledData": "Voltage,SoC,Frequency",  # longer than the new MaxLength
        "ResetRetries": "2",
    }
    keys = ConfigKeys({"MeterValuesSampledDataMaxLength": "2", "MeterValuesSampledData": "Voltage"}, stored)
    assert keys.stored_values() == {"ResetRetries": "2"}
    assert keys.get_int("NumberOfConnectors") == 2 and keys.get_int("HeartbeatInterval") == 30
    assert keys.get("MeterValuesSampledData") == "Voltage"
    text = "\n".join(keys.warnings)
    for name in ("'Retired'", "read-only key NumberOfConnectors", "HeartbeatInterval", "MeterValuesSampledData"):
        assert name in text
    assert len(keys.warnings) == 4


def test_overrides_may_set_read_only_keys():
    keys = ConfigKeys({"NumberOfConnectors": "1", "GetConfigurationMaxKeys": "20", "SupportedFeatureProfiles": "Core"})
    assert keys.get_int("NumberOfConnectors") == 1
    assert keys.get_list("SupportedFeatureProfiles") == ["Core"]


@pytest.mark.parametrize(
    ("overrides", "key", "problem"),
    [
        ({"Testing": "true"}, "Testing", "unknown configuration key"),
        ({"HeartbeatInterval": "-5"}, "HeartbeatInterval", "-5 is below the minimum 0"),
        ({"LocalPreAuthorize": "maybe"}, "LocalPreAuthorize", "not a boolean"),
        ({"NumberOfConnectors": "0"}, "NumberOfConnectors", "below the minimum 1"),
        ({"MeterValuesSampledData": "Temperature"}, "MeterValuesSampledData", "not supported"),
        ({"SupportedFeatureProfiles": "Core,Security"}, "SupportedFeatureProfiles", "'Security' is not one of"),
        # the default 5-item list no longer fits: the MaxLength override is the culprit
        ({"MeterValuesSampledDataMaxLength": "2"}, "MeterValuesSampledDataMaxLength", "5 items, more than 2"),
        ({"MeterValuesSampledDataMaxLength": "2", "MeterValuesSampledData": "Voltage,SoC,Frequency"},
         "MeterValuesSampledData", "3 items, more than 2"),
    ],
)
def test_bad_override_names_the_key_and_problem(overrides, key, problem):
    with pytest.raises(KeyConfigError) as raised:
        ConfigKeys(overrides)
    assert raised.value.key == key
    assert problem in raised.value.problem
    assert str(raised.value).startswith(f"{key}: ")


# ------------------------------------------------------------------ the charger profile


def test_the_profile_decides_values_and_access():
    profile = shipped_with({"HeartbeatInterval": "120", "AuthorizeRemoteTxRequests": "false"},
                           {"AuthorizeRemoteTxRequests": "R"})
    keys = ConfigKeys(profile=profile)
    assert keys.get_int("HeartbeatInterval") == 120
    assert keys.readonly("AuthorizeRemoteTxRequests")
    entry = conf(keys, ["AuthorizeRemoteTxRequests"])["configurationKey"][0]
    assert entry == {"key": "AuthorizeRemoteTxRequests", "readonly": True, "value": "false"}
    # the default profile reports it read-write
    assert not ConfigKeys().readonly("AuthorizeRemoteTxRequests")


def test_profile_then_toml_override_then_stored_value():
    profile = shipped_with({"HeartbeatInterval": "120", "ResetRetries": "2", "BlinkRepeat": "4"})
    assert ConfigKeys(profile=profile).get_int("HeartbeatInterval") == 120
    keys = ConfigKeys({"HeartbeatInterval": "90", "ResetRetries": "3"}, {"HeartbeatInterval": "20"}, profile=profile)
    assert keys.get_int("HeartbeatInterval") == 20  # stored wins
    assert keys.get_int("ResetRetries") == 3  # the override wins over the profile
    assert keys.get_int("BlinkRepeat") == 4  # the profile's value where nothing else says
    assert keys.stored_values() == {"HeartbeatInterval": "20"}


def test_a_key_the_profile_narrows_to_read_only_cannot_be_changed_or_restored():
    keys = ConfigKeys(stored={"StopTransactionOnEVSideDisconnect": "false"},
                      profile=shipped_with(access={"StopTransactionOnEVSideDisconnect": "R"}))
    assert keys.get("StopTransactionOnEVSideDisconnect") == "true"
    assert keys.warnings == ["stored value for read-only key StopTransactionOnEVSideDisconnect ignored"]
    assert keys.change("StopTransactionOnEVSideDisconnect", "false") == ("Rejected", {})
    assert keys.why_rejected("StopTransactionOnEVSideDisconnect", "false") == (
        "StopTransactionOnEVSideDisconnect is read-only")


@pytest.mark.parametrize(
    ("values", "access", "drop", "key", "problem"),
    [
        ({}, {"NumberOfConnectors": "RW"}, (), "NumberOfConnectors", "access RW is not allowed: §9.1.21 makes it R"),
        ({}, {"GetConfigurationMaxKeys": "RW"}, (), "GetConfigurationMaxKeys", "§9.1.9 makes it R"),
        ({}, {"HeartbeatInterval": "R"}, (), "HeartbeatInterval", "access R is not allowed: §9.1.10 makes it RW"),
        ({}, {"HeartbeatInterval": "rw"}, (), "HeartbeatInterval", "access 'rw' is not R, RW or W"),
        ({"HeartbeatInterval": "-1"}, {}, (), "HeartbeatInterval", "-1 is below the minimum 0"),
        ({"MeterValuesSampledData": "Temperature"}, {}, (), "MeterValuesSampledData", "not supported"),
        ({"MeterValuesSampledDataMaxLength": "2"}, {}, (), "MeterValuesSampledData", "5 items, more than 2"),
        ({"Testing": "1"}, {"Testing": "RW"}, (), "Testing", "unknown configuration key"),
        ({"heartbeatinterval": "30"}, {"heartbeatinterval": "RW"}, ("HeartbeatInterval",), "heartbeatinterval",
         "unknown configuration key (the spelling is HeartbeatInterval)"),
        ({}, {}, ("HeartbeatInterval",), "HeartbeatInterval", "missing: §9.1.10 requires it of a station that "
                                                              "supports Core"),
        ({}, {}, ("SendLocalListMaxLength",), "SendLocalListMaxLength", "requires it of a station that supports "
                                                                        "LocalAuthListManagement"),
        ({"SupportedFeatureProfiles": "Core,RemoteTrigger"}, {}, (), "LocalAuthListEnabled",
         "belongs to the LocalAuthListManagement feature profile, which SupportedFeatureProfiles does not list"),
        ({"SupportedFeatureProfiles": "RemoteTrigger"}, {}, (), "SupportedFeatureProfiles", "must list Core"),
        ({}, {}, ("SupportedFeatureProfiles",), "SupportedFeatureProfiles", "missing"),
    ],
)
def test_a_bad_profile_names_the_key_and_problem(values, access, drop, key, problem):
    profile = shipped_with(values, access, drop)
    with pytest.raises(KeyConfigError) as raised:
        check_key_profile(profile.key_values, profile.key_access)
    assert raised.value.key == key
    assert problem in raised.value.problem
    with pytest.raises(KeyConfigError):
        ConfigKeys(profile=profile)


def test_a_value_without_access_and_an_access_without_value_are_errors():
    values = dict(load_profile().key_values)
    access = dict(load_profile().key_access)
    with pytest.raises(KeyConfigError, match="BlinkRepeat: has a value but no access"):
        check_key_profile(values, {k: v for k, v in access.items() if k != "BlinkRepeat"})
    with pytest.raises(KeyConfigError, match="BlinkRepeat: has an access but no value"):
        check_key_profile({k: v for k, v in values.items() if k != "BlinkRepeat"}, access)


def test_a_key_the_model_does_not_have_is_not_supported_anywhere():
    profile = shipped_with(drop=("BlinkRepeat", "ConnectorPhaseRotationMaxLength"),
                           values={"ConnectorPhaseRotation": "1.RST"})
    keys = ConfigKeys(stored={"BlinkRepeat": "3"}, profile=profile)
    assert "BlinkRepeat" not in keys.names()
    assert keys.change("BlinkRepeat", "3") == ("NotSupported", {})  # TC_040_1
    answer = conf(keys, ["BlinkRepeat", "HeartbeatInterval"])
    assert answer["unknownKey"] == ["BlinkRepeat"] and len(answer["configurationKey"]) == 1
    assert "BlinkRepeat" not in {e["key"] for e in conf(keys)["configurationKey"]}
    assert keys.warnings == ["stored value for unknown key 'BlinkRepeat' ignored"]
    with pytest.raises(KeyConfigError) as raised:
        ConfigKeys({"blinkrepeat": "3"}, profile=profile)
    assert raised.value.problem == "this charger model has no BlinkRepeat key (its profile does not list it)"
    # SPEC §5.3: without its MaxLength key, a writable list holds 1 item
    assert keys.change("ConnectorPhaseRotation", "1.RTS") == ("Accepted", {"ConnectorPhaseRotation": "1.RTS"})
    assert keys.change("ConnectorPhaseRotation", "1.RST,2.RST") == ("Rejected", {})
    assert "2 items, more than 1 (a list key without MaxLength)" in keys.why_rejected(
        "ConnectorPhaseRotation", "1.RST,2.RST")


def test_a_profile_list_longer_than_one_item_without_max_length_is_an_error():
    profile = shipped_with(drop=("ConnectorPhaseRotationMaxLength",))  # keeps "1.RST,2.RST,3.RST"
    with pytest.raises(KeyConfigError) as raised:
        ConfigKeys(profile=profile)
    assert raised.value.key == "ConnectorPhaseRotation" and "3 items, more than 1" in raised.value.problem


def test_the_example_profile_keys():
    keys = ConfigKeys(profile=load_profile(EXAMPLE))
    assert keys.get_int("NumberOfConnectors") == 1
    assert keys.get_list("SupportedFeatureProfiles") == [
        "Core", "FirmwareManagement", "LocalAuthListManagement", "SmartCharging", "RemoteTrigger"]
    assert keys.change("ReserveConnectorZeroSupported", "true") == ("NotSupported", {})
    assert keys.change("AuthorizeRemoteTxRequests", "true") == ("Rejected", {})  # the model reports it R
    assert keys.change("HeartbeatInterval", "60") == ("Accepted", {"HeartbeatInterval": "60"})
    assert len(conf(keys)["configurationKey"]) == len(keys.names()) < len(KEYS)
