"""Structured journald entries, captured on a datagram socket the test binds
(the journal socket path is injected; /run/systemd is never touched)."""

from __future__ import annotations

import logging
import os
import struct
from collections.abc import Iterator

import pytest

from tests.service.dgram import DatagramSink
from twin.service.logs import setup_logging


def parse_entry(data: bytes) -> dict[str, str]:
    """Decode journald's native protocol (https://systemd.io/JOURNAL_NATIVE_PROTOCOL/)."""
    fields: dict[str, str] = {}
    pos = 0
    while pos < len(data):
        newline = data.index(b"\n", pos)
        line = data[pos:newline]
        if b"=" in line:
            key, value = line.split(b"=", 1)
            pos = newline + 1
        else:
            key = line
            (size,) = struct.unpack("<Q", data[newline + 1:newline + 9])
            value = data[newline + 9:newline + 9 + size]
            assert data[newline + 9 + size:newline + 10 + size] == b"\n"
            pos = newline + 10 + size
        fields[key.decode("ascii")] = value.decode("utf-8")
    return fields


def journal_env() -> dict[str, str]:
    st = os.fstat(2)
    return {"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"}


@pytest.fixture
def journal() -> Iterator[DatagramSink]:
    sink = DatagramSink()
    yield sink
    sink.close()


def test_extras_become_journal_fields(journal: DatagramSink) -> None:
    assert journal.path is not None
    setup_logging("INFO", None, environ=journal_env(), journal_socket=journal.path)
    logging.getLogger("twin.link").warning(
        "StartTransaction sent", extra={"connector": 2, "transaction_id": 42, "ocpp_action": "StartTransaction",
                                        "message_id": "9f0c"})
    entry = parse_entry(journal.recv())
    assert entry["MESSAGE"] == "StartTransaction sent"
    assert entry["PRIORITY"] == "4"
    assert entry["SYSLOG_IDENTIFIER"] == "ocpp-twin"
    assert entry["LOGGER"] == "twin.link"
    assert entry["CONNECTOR_ID"] == "2"
    assert entry["TRANSACTION_ID"] == "42"
    assert entry["OCPP_ACTION"] == "StartTransaction"
    assert entry["OCPP_MESSAGE_ID"] == "9f0c"
    assert entry["CODE_FILE"] == __file__
    assert entry["CODE_FUNC"] == "test_extras_become_journal_fields"


def test_records_without_extras_carry_no_empty_fields(journal: DatagramSink) -> None:
    assert journal.path is not None
    setup_logging("DEBUG", None, environ=journal_env(), journal_socket=journal.path)
    logging.getLogger("twin.core").debug("tick")
    entry = parse_entry(journal.recv())
    assert entry["PRIORITY"] == "7"
    assert not {"CONNECTOR_ID", "TRANSACTION_ID", "OCPP_ACTION", "OCPP_MESSAGE_ID"} & entry.keys()


def test_multiline_message_with_traceback_uses_the_binary_field_form(journal: DatagramSink) -> None:
    assert journal.path is not None
    setup_logging("INFO", None, environ=journal_env(), journal_socket=journal.path)
    try:
        raise ValueError("bad frame\nsecond line")
    except ValueError:
        logging.getLogger("twin.link").exception("frame rejected", extra={"message_id": "m1"})
    data = journal.recv()
    assert b"MESSAGE\n" in data  # length-prefixed, not KEY=value
    entry = parse_entry(data)
    assert entry["MESSAGE"].startswith("frame rejected\nTraceback")
    assert "second line" in entry["MESSAGE"]
    assert entry["PRIORITY"] == "3"
    assert entry["EXCEPTION_TYPE"] == "ValueError"
    assert entry["OCPP_MESSAGE_ID"] == "m1"


def test_an_entry_too_big_for_a_datagram_goes_through_a_sealed_memfd(journal: DatagramSink) -> None:
    assert journal.path is not None
    setup_logging("INFO", None, environ=journal_env(), journal_socket=journal.path)
    big = "x" * 600_000  # over the default AF_UNIX datagram limit (wmem_max)
    logging.getLogger("twin.firmware").info(big)
    entry = parse_entry(journal.recv())
    assert entry["MESSAGE"] == big


def test_journal_stream_of_another_descriptor_means_plain_stderr(journal: DatagramSink,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    """A child whose stderr was redirected inherits JOURNAL_STREAM but not the stream."""
    assert journal.path is not None
    setup_logging("INFO", None, environ={"JOURNAL_STREAM": "1:2"}, journal_socket=journal.path)
    logging.getLogger("twin").info("hello", extra={"connector": 1})
    assert journal.pending() == []
    assert "INFO twin [connector=1] hello" in capsys.readouterr().err


def test_unreachable_journal_socket_falls_back_to_stderr(tmp_path, capsys: pytest.CaptureFixture[str]) -> None:
    setup_logging("INFO", None, environ=journal_env(), journal_socket=tmp_path / "no-journal")
    log = logging.getLogger("twin")
    log.info("first")
    log.info("second")
    err = capsys.readouterr().err
    assert err.count("not usable") == 1
    assert "first\n" in err and "second\n" in err
