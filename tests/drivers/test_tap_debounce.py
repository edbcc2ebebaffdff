"""UID -> idTag and tap debouncing (pure)."""

import pytest

from drivers.tap_debounce import TapDebouncer, uid_to_id_tag


def test_uid_to_id_tag():
    assert uid_to_id_tag(bytes.fromhex("04a1b2c3d4e5f6")) == "04A1B2C3D4E5F6"
    assert uid_to_id_tag(bytes.fromhex("deadbeef")) == "DEADBEEF"
    assert len(uid_to_id_tag(bytes(range(12)))) == 20  # CiString20
    with pytest.raises(ValueError):
        uid_to_id_tag(b"")


def test_held_card_is_one_tap():
    d = TapDebouncer(1.0)
    assert d.card_present("r", "AA", 0.0) is True
    assert d.card_present("r", "AA", 5.0) is False


def test_flicker_of_the_same_card_is_not_a_new_tap():
    d = TapDebouncer(1.0)
    d.card_present("r", "AA", 0.0)
    d.card_removed("r", 2.0)
    assert d.card_present("r", "AA", 2.5) is False
    d.card_removed("r", 3.0)
    assert d.card_present("r", "AA", 4.5) is True  # a deliberate second tap


def test_another_card_is_always_a_tap():
    d = TapDebouncer(1.0)
    d.card_present("r", "AA", 0.0)
    d.card_removed("r", 0.1)
    assert d.card_present("r", "BB", 0.2) is True


def test_readers_are_independent():
    d = TapDebouncer(1.0)
    assert d.card_present("r1", "AA", 0.0) is True
    assert d.card_present("r2", "AA", 0.0) is True
