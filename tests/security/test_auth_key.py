"""AuthorizationKey and the Basic-auth header (OCPP-J 1.6 §6.2.2, OCTT TC_073/TC_085/TC_086)."""

from __future__ import annotations

import base64
import os

import pytest

from twin.security.auth_key import (AuthorizationKeyError, authorization_key_bytes, basic_auth_header,
                                    basic_auth_headers, identity_from_url, is_valid_authorization_key)


def decode_header(value: str) -> bytes:
    scheme, _, token = value.partition(" ")
    assert scheme == "Basic"
    return base64.b64decode(token, validate=True)


def test_tc_073_hex_key_is_sent_as_its_bytes() -> None:
    key = "4F43415F4F4354545F61646D696E5F74657374"
    assert authorization_key_bytes(key) == b"OCA_OCTT_admin_test"
    header = basic_auth_headers("wss://csms.example:443/ocpp/CP001", key)["Authorization"]
    assert decode_header(header) == b"CP001:OCA_OCTT_admin_test"


def test_tc_085_plain_text_key_is_sent_as_is() -> None:
    assert authorization_key_bytes("sixteen-chars-ok") == b"sixteen-chars-ok"
    assert authorization_key_bytes("twenty-characters-ok") == b"twenty-characters-ok"


def test_random_binary_key_is_decoded_not_sent_as_hex_text() -> None:
    """libocpp decoded hex only when every byte was printable; every byte value is allowed."""
    raw = b"\x00\x01\x7f\x80\xfe\xff" + os.urandom(14)  # 20 bytes, not printable, not UTF-8
    key = raw.hex().upper()
    assert authorization_key_bytes(key) == raw
    assert decode_header(basic_auth_header("CP001", authorization_key_bytes(key))) == b"CP001:" + raw


@pytest.mark.parametrize("length", [32, 34, 40])
def test_hex_lengths_16_to_20_bytes(length: int) -> None:
    key = "ab" * (length // 2)
    assert len(authorization_key_bytes(key)) == length // 2


def test_short_hex_looking_text_is_plain_text() -> None:
    # 16 hex digits is 16 characters of text, not 8 bytes (that would be too short)
    assert authorization_key_bytes("0123456789abcdef") == b"0123456789abcdef"


@pytest.mark.parametrize("value", [
    "", "short", "fifteen-chars-x",          # < 16 characters
    "twenty-one-characters",                  # 21 characters, not hex
    "a" * 31,                                 # neither
    "ab" * 21,                                # 42 hex digits = 21 bytes
    "abc" + "ab" * 16,                        # 35 hex digits: odd
    "g" * 32,                                 # 32 characters, not hex
    "0x" + "ab" * 16,                         # prefixed
    "sixteen chars\n..",                      # a control character
    "é" * 16,                                 # 16 characters but 32 bytes
])
def test_invalid_keys_are_refused(value: str) -> None:
    assert not is_valid_authorization_key(value)
    with pytest.raises(AuthorizationKeyError) as info:
        authorization_key_bytes(value)
    assert value not in str(info.value) or not value  # the message never quotes the key


def test_not_a_string() -> None:
    assert not is_valid_authorization_key(b"0123456789abcdef")


def test_identity_is_the_url_tail() -> None:
    assert identity_from_url("ws://10.0.0.1:8080/steve/websocket/CentralSystemService/CP-01") == b"CP-01"
    assert identity_from_url("wss://csms.example/ocpp/CP%2001") == b"CP 01"
    with pytest.raises(ValueError, match="does not end"):
        identity_from_url("wss://csms.example/ocpp/")
    with pytest.raises(ValueError, match="':'"):
        identity_from_url("wss://csms.example/ocpp/a%3Ab")


def test_header_refuses_a_colon_in_the_user_name() -> None:
    with pytest.raises(ValueError, match="RFC 7617"):
        basic_auth_header("a:b", b"x" * 16)
