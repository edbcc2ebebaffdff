"""twin/core/keys.py: the iEVQC33 key profile, Get/ChangeConfiguration, persistence."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import ocpp.v16
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from twin.core.keys import (
    KEYS,
    SUPPORTED_MEASURANDS,
    ConfigKeys,
    KeyConfigError,
    KeyDef,
    TooManyKeys,
    normalize,
)
from twin.core.metering import MEASURANDS

SCHEMAS = Path(ocpp.v16.__file__).parent / "schemas"
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

# Read-only per SPEC §9 (+ ERRATA 3.90 for SupportedFileTransferProtocols); every other
# key the twin has is read-write.
READ_ONLY = {
    "ConnectorPhaseRotationMaxLength", "GetConfigurationMaxKeys", "MeterValuesAlignedDataMaxLength",
    "MeterValuesSampledDataMaxLength", "NumberOfConnectors", "StopTxnAlignedDataMaxLength",
    "StopTxnSampledDataMaxLength", "SupportedFeatureProfiles", "SupportedFeatureProfilesMaxLength",
    "LocalAuthListMaxLength", "SendLocalListMaxLength", "ReserveConnectorZeroSupported",
    "ChargeProfileMaxStackLevel", "ChargingScheduleAllowedChargingRateUnit", "ChargingScheduleMaxPeriods",
    "ConnectorSwitch3to1PhaseSupported", "MaxChargingProfilesInstalled", "SupportedFileTransferProtocols",
}

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
    assert KEYS[name].readonly == (name in READ_ONLY)


def test_vendor_and_errata_keys_the_twin_needs():
    keys = ConfigKeys()
    assert keys.get("SupportedFileTransferProtocols") == "FTP,FTPS,HTTP,HTTPS"
    assert KEYS["SupportedFileTransferProtocols"].readonly
    assert keys.get_int("MessageTimeout") == 30 and not KEYS["MessageTimeout"].readonly
    assert keys.get_int("StopTransactionMaxMeterValues") == 0
    assert keys.get_int("WebSocketPingInterval") == 10
    assert keys.get_int("MaxEnergyOnInvalidId") == 0


def test_definitions_are_consistent():
    for name, defn in KEYS.items():
        assert defn.name == name and len(name) <= 50  # CiString50 in the schemas
        assert defn.kind in ("bool", "int", "csl", "str")
        assert defn.profile in ("Core", "FirmwareManagement", "LocalAuthListManagement", "Reservation",
                                "SmartCharging", "RemoteTrigger", "Vendor")
        assert normalize(defn, defn.default) == defn.default, name
        if defn.max_length_key:
            assert KEYS[defn.max_length_key].readonly and KEYS[defn.max_length_key].kind == "int"


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
    assert set(by_name) == set(KEYS)
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
    assert len(conf(ConfigKeys(), [])["configurationKey"]) == len(KEYS)


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
    defs = {"Colours": KeyDef("Colours", "red", False, "csl", "Vendor", allowed=frozenset({"red", "blue"}))}
    keys = ConfigKeys(defs=defs)
    assert keys.change("Colours", "blue") == ("Accepted", {"Colours": "blue"})
    assert keys.change("Colours", "red,blue") == ("Rejected", {})


def test_reboot_required_key():
    defs = {**KEYS, "Radio": KeyDef("Radio", "4G", False, "str", "Vendor", reboot_required=True)}
    keys = ConfigKeys(defs=defs)
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
