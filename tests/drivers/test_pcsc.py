"""pyscard reader against a real pcscd + vsmartcard vpcd and a virtual card (fake_vicc.py).

These RUN in CI (marker ``pcsc`` is for selection, not skipping): a missing pcscd or vpcd
fails the session fixture loudly.
"""

from __future__ import annotations

import asyncio
import logging
import shutil

import pytest

from drivers.base import BuildContext, DriverError
from drivers.pcsc import PcscReader, build_reader
from drivers.registry import build_drivers
from tests.drivers.conftest import find_program, until
from tests.drivers.fake_vicc import FakeCard

pytestmark = pytest.mark.pcsc

UID = bytes.fromhex("04A1B2C3D4E5F6")
VPCD_READER = "Virtual PCD 00 00"


@pytest.fixture
async def reader(pcscd):
    r = (await build_reader({"reader": VPCD_READER, "debounce_s": 1.0}, [0], BuildContext()))[0]
    assert isinstance(r, PcscReader)
    taps: list[str] = []
    await r.start(taps.append)
    cards: list[FakeCard] = []
    yield r, taps, cards
    for c in cards:
        c.remove()
    await r.stop()


def present(cards: list[FakeCard], uid: bytes) -> FakeCard:
    card = FakeCard(uid)
    cards.append(card)
    card.insert()
    return card


async def test_tap_reads_the_uid_as_an_id_tag(reader):
    r, taps, cards = reader
    card = present(cards, UID)
    await until(lambda: taps, what="the tap")
    assert taps == ["04A1B2C3D4E5F6"]
    assert bytes.fromhex("FFCA000000") in card.apdus  # the UID really came from the card


async def test_held_card_is_one_tap(reader):
    r, taps, cards = reader
    card = present(cards, UID)
    await until(lambda: taps, what="the tap")
    # vpcd is polled (~0.3-0.45 s per event): keep holding for several polling rounds.
    await asyncio.sleep(1.5)
    assert taps == ["04A1B2C3D4E5F6"]
    assert card.sessions == 1


async def tap_and_take_away(reader, uid: bytes) -> None:
    r, taps, cards = reader
    card = present(cards, uid)
    await until(lambda: len(taps) == 1, what="first tap")
    card.remove()
    await until(lambda: not r.debouncer.cards, what="the reader to see the card leave")


async def test_removal_then_a_new_presentation_taps_again(reader):
    r, taps, cards = reader
    await tap_and_take_away(reader, UID)
    await asyncio.sleep(1.1)  # past the debounce window: a deliberate second tap
    present(cards, UID)
    await until(lambda: len(taps) == 2, what="second tap")
    assert taps == ["04A1B2C3D4E5F6", "04A1B2C3D4E5F6"]


async def test_another_card_right_after_is_a_new_tap(reader):
    r, taps, cards = reader
    await tap_and_take_away(reader, UID)
    present(cards, bytes.fromhex("DEADBEEF"))
    await until(lambda: len(taps) == 2, what="tap of the second card")
    assert taps == ["04A1B2C3D4E5F6", "DEADBEEF"]


async def test_survives_a_pcscd_restart_with_the_card_held(reader, pcscd, caplog):
    r, taps, cards = reader
    card = present(cards, UID)
    await until(lambda: taps, what="the tap")
    reads_before = card.apdus.count(bytes.fromhex("FFCA000000"))
    with caplog.at_level(logging.WARNING, logger="drivers.pcsc"):
        await asyncio.to_thread(pcscd.stop)
        await until(lambda: not r.pcscd_up, what="the reader to notice pcscd is gone")
        await asyncio.to_thread(pcscd.start)
        # The card reconnects to the new vpcd and the watcher reads it again on a new context...
        await until(lambda: card.apdus.count(bytes.fromhex("FFCA000000")) > reads_before, timeout=15,
                    what="the held card to be read again after the restart")
    assert "pcscd is reachable again" in caplog.text
    assert taps == ["04A1B2C3D4E5F6"]  # ...but a card held through the restart is still one tap
    card.remove()
    await until(lambda: not r.debouncer.cards, what="the card to leave")
    present(cards, bytes.fromhex("0102030405060708090A"))
    await until(lambda: len(taps) == 2, what="a tap after the restart")
    assert taps[-1] == "0102030405060708090A"


async def test_pcscd_not_running_is_a_clear_error(pcscd):
    await asyncio.to_thread(pcscd.stop)
    with pytest.raises(DriverError, match=r"cannot reach pcscd: .*0x8010001d.*Is the pcscd package installed"):
        await build_reader({}, [0], BuildContext())


async def test_pcscd_not_running_auto_falls_back_to_sim_and_named_pcsc_refuses(pcscd, caplog):
    await asyncio.to_thread(pcscd.stop)
    with caplog.at_level(logging.WARNING):
        ds = await build_drivers({"reader": {"backend": "auto"}}, 1, power_sources={}, soc_sources={})
    report = ds.reports[2]
    assert (report.kind, report.requested, report.backend) == ("reader", "auto", "sim")
    assert "cannot reach pcscd" in report.warning and "FALLING BACK" in report.warning
    assert report.warning in caplog.text
    assert ds.sim_reader is ds.reader  # the control API can still tap
    await ds.close()
    # Named, with or without the old strict flag: the station refuses and says what to check.
    for table in ({"backend": "pcsc"}, {"backend": "pcsc", "strict": True}):
        with pytest.raises(DriverError, match=r'drivers\.reader: backend = "pcsc" cannot start: cannot reach pcscd: '
                                              r".*Is the pcscd package installed and the service running"):
            await build_drivers({"reader": table}, 1, power_sources={}, soc_sources={})


async def test_strict_without_a_matching_reader_names_it(pcscd):
    with pytest.raises(DriverError, match=r"no PC/SC reader matching 'ACR122' is connected"):
        await build_drivers({"reader": {"backend": "pcsc", "strict": True, "reader": "ACR122"}}, 1,
                            power_sources={}, soc_sources={})


async def test_named_pcsc_with_pcscd_up_but_no_reader_yet_starts_and_waits_for_one(pcscd, caplog):
    """Failing closed is about a backend that cannot start; pcscd answering with no reader plugged in
    yet is a started reader waiting for a hot-plugged one (nothing is simulated)."""
    with caplog.at_level(logging.WARNING):
        ds = await build_drivers({"reader": {"backend": "pcsc", "reader": "ACR122"}}, 1,
                                 power_sources={}, soc_sources={})
    try:
        report = ds.reports[2]
        assert (report.backend, report.warning) == ("pcsc", None)
        assert "no reader yet (filter 'ACR122'), waiting for one" in report.reason
        assert ds.sim_reader is None and "FALLING BACK" not in caplog.text
    finally:
        await ds.close()


async def test_probe_lists_the_readers(pcscd):
    from drivers.registry import probe

    rows = await probe({"reader": {"backend": "auto"}}, 1)
    reader_row = rows[2]
    assert reader_row.ok and reader_row.backend == "pcsc"
    assert VPCD_READER in reader_row.reason


def test_pcscd_off_path_is_still_found(monkeypatch):
    """A normal user's PATH has no /usr/sbin, where Debian puts pcscd: that is not "not installed"."""
    monkeypatch.setenv("PATH", "/usr/local/bin:/usr/bin:/bin")
    assert shutil.which("pcscd") is None
    assert find_program("pcscd") == "/usr/sbin/pcscd"
