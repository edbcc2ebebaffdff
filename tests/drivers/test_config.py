"""KindTable: typed access to [drivers.<kind>] with errors that name the key."""

import pytest

from drivers.base import DriverConfigError
from drivers.config import KindTable, check_distinct_pins


def test_values_and_defaults():
    t = KindTable("meter", {"timeout_s": 2, "shared": True, "transport": "tcp", "port": 1502})
    assert t.get_float("timeout_s", 1.0) == 2.0
    assert t.get_bool("shared", False) is True
    assert t.get_str("transport", "rtu", choices=("rtu", "tcp")) == "tcp"
    assert t.get_int("port", 502, minimum=1, maximum=65535) == 1502
    assert t.get_int("device_id", None) is None


@pytest.mark.parametrize("call, msg", [
    (lambda t: t.get_float("x", 1.0), r"drivers\.relay\.x: must be a number, got 'a'"),
    (lambda t: t.get_bool("x", False), r"drivers\.relay\.x: must be true or false"),
    (lambda t: t.get_int("x", 1), r"drivers\.relay\.x: must be an integer"),
    (lambda t: t.get_str("n", None), r"drivers\.relay\.n: must be a string"),
    (lambda t: t.get_str("x", None, choices=("b",)), r"drivers\.relay\.x: 'a' is not one of b"),
    (lambda t: t.check_keys({"y"}), r"drivers\.relay\.n: unknown key"),
    (lambda t: t.pins("p", [1], None, required=True), r"drivers\.relay\.p\.1: no pin for connector 1"),
])
def test_errors_name_the_key(call, msg):
    t = KindTable("relay", {"x": "a", "n": 3})
    with pytest.raises(DriverConfigError, match=msg):
        call(t)


def test_a_table_must_be_a_table():
    with pytest.raises(DriverConfigError, match=r"drivers\.relay: must be a table"):
        KindTable("relay", [1, 2])


def test_pins_ignore_connectors_the_station_does_not_have():
    assert KindTable("relay", {}).pins("pins", [1], {1: 5, 2: 6}, required=True) == {1: 5}


def test_distinct_pins():
    with pytest.raises(DriverConfigError, match=r"b\.1: GPIO5 is already used by a\.1"):
        check_distinct_pins({"a": {1: 5}, "b": {1: 5}})
