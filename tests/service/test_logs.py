"""stderr format, the size-bounded rotating log file, and bad log locations."""

from __future__ import annotations

import logging
import re
import shutil
from pathlib import Path

import pytest

from twin.service.logs import log_files, setup_logging

NOT_JOURNAL: dict[str, str] = {}


def test_stderr_format_is_readable_and_shows_the_extras(capsys: pytest.CaptureFixture[str]) -> None:
    setup_logging("INFO", None, environ=NOT_JOURNAL)
    logging.getLogger("twin.link").info(
        "sent", extra={"connector": 1, "transaction_id": 7, "ocpp_action": "MeterValues", "message_id": "abc"})
    logging.getLogger("twin.link").debug("not shown at INFO")
    err = capsys.readouterr().err
    assert re.fullmatch(
        r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z INFO twin\.link "
        r"\[connector=1 tx=7 action=MeterValues msg=abc\] sent\n", err), err


def test_log_file_gets_the_same_lines(tmp_path: Path) -> None:
    setup_logging("INFO", tmp_path, environ=NOT_JOURNAL)
    logging.getLogger("twin").warning("contactor welded", extra={"connector": 2})
    assert log_files(tmp_path) == [tmp_path / "logs" / "twin.log"]
    text = (tmp_path / "logs" / "twin.log").read_text()
    assert re.fullmatch(r"\S+Z WARNING twin \[connector=2\] contactor welded\n", text), text


def test_rotation_keeps_every_file_under_the_bound_and_orders_them(tmp_path: Path) -> None:
    max_bytes, backups = 2048, 2
    setup_logging("INFO", tmp_path, environ=NOT_JOURNAL, max_bytes=max_bytes, backups=backups)
    log = logging.getLogger("twin")
    for i in range(400):
        log.info("line %04d %s", i, "€" * (i % 40))  # multi-byte: the bound is in bytes
    files = log_files(tmp_path)
    assert [f.name for f in files] == ["twin.log.2", "twin.log.1", "twin.log"]
    for f in files:
        assert f.stat().st_size <= max_bytes, f
    numbers = [int(n) for f in files for n in re.findall(r"line (\d{4})", f.read_text(encoding="utf-8"))]
    assert numbers == sorted(numbers)  # oldest file first, in order
    assert numbers[-1] == 399


def test_a_record_longer_than_the_bound_is_cut(tmp_path: Path) -> None:
    setup_logging("INFO", tmp_path, environ=NOT_JOURNAL, max_bytes=1024, backups=1)
    logging.getLogger("twin").info("y" * 10_000)
    logging.getLogger("twin").info("after")
    for f in log_files(tmp_path):
        assert f.stat().st_size <= 1024
    assert "[truncated]" in (tmp_path / "logs" / "twin.log.1").read_text()
    assert "after" in (tmp_path / "logs" / "twin.log").read_text()


def test_unwritable_data_dir_warns_and_carries_on(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    not_a_dir = tmp_path / "data"
    not_a_dir.write_text("a file where the data dir should be")
    setup_logging("INFO", not_a_dir, environ=NOT_JOURNAL)
    logging.getLogger("twin").info("still logging")
    err = capsys.readouterr().err
    assert "WARNING: cannot write the log file under" in err
    assert "still logging" in err


def test_log_dir_vanishing_at_run_time_is_reported_once(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    setup_logging("INFO", tmp_path, environ=NOT_JOURNAL, max_bytes=1024, backups=1)
    log = logging.getLogger("twin")
    log.info("before")
    shutil.rmtree(tmp_path / "logs")  # rollover now fails: no directory to rotate in
    for i in range(100):
        log.info("line %d %s", i, "z" * 50)
    err = capsys.readouterr().err
    assert err.count("cannot write log file") == 1
    assert "line 99" in err  # stderr logging went on


def test_setting_up_again_replaces_the_handlers(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    setup_logging("INFO", tmp_path, environ=NOT_JOURNAL)
    setup_logging("INFO", tmp_path, environ=NOT_JOURNAL)
    logging.getLogger("twin").info("once")
    assert capsys.readouterr().err.count("once") == 1
    assert (tmp_path / "logs" / "twin.log").read_text().count("once") == 1


@pytest.mark.parametrize("level", ["debug", "Warning", " ERROR "])
def test_level_names_are_case_insensitive(level: str) -> None:
    setup_logging(level, None, environ=NOT_JOURNAL)
    assert logging.getLogger().level == logging.getLevelName(level.strip().upper())


def test_bad_level_and_bounds_are_clear_errors() -> None:
    with pytest.raises(ValueError, match="unknown log level 'LOUD'"):
        setup_logging("LOUD", None)
    with pytest.raises(ValueError, match="max_bytes >= 1024"):
        setup_logging("INFO", None, max_bytes=10)


def test_log_files_of_a_missing_dir_is_empty(tmp_path: Path) -> None:
    assert log_files(tmp_path / "nowhere") == []
