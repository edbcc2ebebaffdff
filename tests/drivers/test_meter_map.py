"""Register-map files: loading, validation messages, read planning, decoding."""

from __future__ import annotations

import struct

import pytest

from drivers.base import DriverConfigError, DriverError
from drivers.meter_map import (
    Field,
    builtin_models,
    decode_words,
    encode_value,
    load_model,
    parse_map,
    plan_blocks,
)


def test_builtin_models_are_shipped_and_valid():
    assert builtin_models() == ["abb_b23", "custom", "em340", "sdm120", "sdm630"]
    for name in builtin_models():
        mm = load_model(name, None)
        assert "energy_import_wh" in mm.fields


def test_sdm630_reads_in_three_requests():
    mm = load_model("sdm630", None)
    assert [(b.function_code, b.start, b.count) for b in mm.blocks] == [(4, 0x00, 12), (4, 0x34, 2), (4, 0x46, 4)]


@pytest.mark.parametrize("words, dt, order, value", [
    ([0x4366, 0x199A], "float32", "big", 230.1),
    ([0x199A, 0x4366], "float32", "little", 230.1),
    ([0xFFFF, 0xFFFE], "int32", "big", -2),
    ([0xFFFE, 0xFFFF], "int32", "little", -2),
    ([0x0001, 0x0000], "uint32", "big", 65536),
    ([0x0000, 0x0000, 0x0001, 0xE240], "uint64", "big", 123456),
    ([0xFFC9], "int16", "big", -55),
    ([0x1389], "uint16", "big", 5001),
])
def test_decode_words(words, dt, order, value):
    assert decode_words(words, dt, order) == pytest.approx(value, rel=1e-6)


def test_encode_is_the_inverse_of_decode():
    for dt in ("int16", "uint16", "int32", "uint32", "int64", "uint64", "float32", "float64"):
        for order in ("big", "little"):
            assert decode_words(encode_value(1234, dt, order), dt, order) == 1234


def test_all_ones_is_invalid_only_when_the_map_says_so():
    assert decode_words([0xFFFF], "uint16", "big", invalid_all_ones=True) is None
    assert decode_words([0xFFFF], "uint16", "big") == 65535


def test_plan_blocks_merges_only_adjacent_registers_and_respects_the_limit():
    f = [Field(f"r{a}", a, 4, "float32", "big", 1.0) for a in (0, 2, 4, 10)] + [Field("h", 4, 3, "uint16", "big", 1.0)]
    blocks = plan_blocks(f, max_registers=4)
    assert [(b.function_code, b.start, b.count) for b in blocks] == [(3, 4, 1), (4, 0, 4), (4, 4, 2), (4, 10, 2)]


def test_energy_register_is_required_and_must_be_valid():
    mm = parse_map('[registers]\nenergy_import_wh = { address = 0, data_type = "uint16" }\n', "x.toml")
    assert mm.decode({4: {0: 42}}).energy_wh == 42
    mm_invalid = parse_map('invalid_all_ones = true\n[registers]\nenergy_import_wh = { address = 0, data_type = "uint16" }\n', "x.toml")
    with pytest.raises(DriverError, match="import energy register reads None"):
        mm_invalid.decode({4: {0: 0xFFFF}})
    mm_f = parse_map("[registers]\nenergy_import_wh = { address = 0 }\n", "x.toml")
    nan = [int.from_bytes(struct.pack(">f", float("nan"))[i:i + 2], "big") for i in (0, 2)]
    with pytest.raises(DriverError, match="not a valid count"):
        mm_f.decode({4: {0: nan[0], 1: nan[1]}})


def test_custom_map_file_by_path(tmp_path):
    p = tmp_path / "mine.toml"
    p.write_text('name = "Mine"\nphases = 1\n[registers]\nenergy_import_wh = { address = 5, function_code = 3, data_type = "uint32" }\n'
                 'power_w = { address = 7, function_code = 3, data_type = "int16", scale = 10 }\n')
    mm = load_model(None, str(p))
    reading = mm.decode({3: {5: 0, 6: 500, 7: 0xFFFF}})
    assert (mm.name, reading.energy_wh, reading.power_w, reading.voltage_v) == ("Mine", 500, -10, None)


@pytest.mark.parametrize("text, msg", [
    ("registers = 3", r"x\.toml: registers: a \[registers\] table"),
    ("[registers]\npower_w = { address = 1 }", r"registers\.energy_import_wh: missing"),
    ('[registers]\nenergy_import_wh = { address = 0, data_type = "flaot32" }', r"registers\.energy_import_wh\.data_type: 'flaot32'"),
    ("[registers]\nenergy_import_wh = { address = 0, function_code = 6 }", r"function_code: 6 is not 3"),
    ('[registers]\nenergy_import_wh = { address = 0, word_order = "middle" }', r"word_order: 'middle'"),
    ("[registers]\nenergy_import_wh = { address = 70000 }", r"address: 70000 is outside"),
    ("[registers]\nenergy_import_wh = { adress = 0 }", r"registers\.energy_import_wh\.adress: unknown key"),
    ("[registers]\nenergy_import_wh = { address = 0, scale = 0 }", r"scale: must be a non-zero number"),
    ("phases = 2\n[registers]\nenergy_import_wh = { address = 0 }", r"phases: must be 1 or 3"),
    ("baud = 1\n[registers]\nenergy_import_wh = { address = 0 }", r"x\.toml: baud: unknown key"),
    ("[registers\n", r"x\.toml: not valid TOML"),
])
def test_bad_map_files_name_file_and_key(text, msg):
    with pytest.raises(DriverConfigError, match=msg):
        parse_map(text, "x.toml")
