"""Slots: install + import test, the atomic switch, the trial, rollback, the report owed."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from tests.firmware.conftest import Bundles, paused_python, staging_dirs, wait_for
from twin.firmware import slots
from twin.firmware.bundle import BundleError


def slot_dirs(data_dir: Path) -> list[str]:
    return sorted(p.name for p in (data_dir / "firmware" / "slots").iterdir())


def test_fresh_data_dir_runs_the_base(tmp_path: Path) -> None:
    state = slots.read_state(tmp_path)
    assert (state.active, state.trial, state.report) == (slots.BASE, None, None)
    assert slots.slot_path(tmp_path, slots.BASE) is None
    assert slots.pending_report(tmp_path) is None


def test_install_switch_boot_report(bundles: Bundles, tmp_path: Path) -> None:
    manifest = slots.install_slot(tmp_path, bundles.good["1.11"])
    assert manifest.version == "1.11"
    assert '__version__ = "1.11"' in (tmp_path / "firmware/slots/1.11/twin/__init__.py").read_text()
    assert slots.read_state(tmp_path).active == slots.BASE  # installing does not switch

    slots.switch_to_trial(tmp_path, "1.11")
    state = json.loads((tmp_path / "firmware/state.json").read_text())
    assert state | {"deadline": None} == {"active": "1.11", "previous": "base", "trial": "1.11", "deadline": None,
                                          "report": None, "failed": None, "report_for": None}

    assert slots.mark_boot_ok(tmp_path, "1.10") is False  # not the version on trial
    assert slots.mark_boot_ok(tmp_path, "1.11") is True
    assert slots.read_state(tmp_path).trial is None
    assert slots.pending_report(tmp_path) == "Installed"
    assert slots.pending_report(tmp_path) is None  # consumed
    assert slots.mark_boot_ok(tmp_path, "1.11") is False  # ordinary boots change nothing
    assert [p.name for p in (tmp_path / "firmware").iterdir() if p.name.endswith(".tmp")] == []


def test_rollback_to_base_owes_installation_failed(bundles: Bundles, tmp_path: Path) -> None:
    slots.install_slot(tmp_path, bundles.good["1.11"])
    slots.switch_to_trial(tmp_path, "1.11")
    assert slots.rollback(tmp_path, "exited with code 1") == slots.BASE
    state = slots.read_state(tmp_path)
    assert (state.active, state.trial, state.previous) == (slots.BASE, None, None)
    assert state.failed == {"version": "1.11", "reason": "exited with code 1"}
    assert slot_dirs(tmp_path) == []  # the failed slot is removed
    assert slots.pending_report(tmp_path) == "InstallationFailed"


def test_previous_good_slot_is_the_rollback_target_and_old_ones_are_pruned(bundles: Bundles, tmp_path: Path) -> None:
    for version in ("1.11", "1.12"):
        slots.install_slot(tmp_path, bundles.good[version])
        slots.switch_to_trial(tmp_path, version)
        assert slots.mark_boot_ok(tmp_path, version)
    assert slots.read_state(tmp_path).previous == "1.11"
    assert slot_dirs(tmp_path) == ["1.11", "1.12"]

    slots.install_slot(tmp_path, bundles.good["1.13"])
    slots.switch_to_trial(tmp_path, "1.13")
    assert slots.rollback(tmp_path, "did not boot") == "1.12"
    assert slot_dirs(tmp_path) == ["1.11", "1.12"]

    slots.install_slot(tmp_path, bundles.good["1.13"])
    slots.switch_to_trial(tmp_path, "1.13")
    assert slots.mark_boot_ok(tmp_path, "1.13")
    assert slot_dirs(tmp_path) == ["1.12", "1.13"]  # 1.11 is no longer needed


def test_a_trial_switched_again_keeps_the_known_good_previous(bundles: Bundles, tmp_path: Path) -> None:
    slots.install_slot(tmp_path, bundles.good["1.11"])
    slots.switch_to_trial(tmp_path, "1.11")
    slots.install_slot(tmp_path, bundles.good["1.12"])
    slots.switch_to_trial(tmp_path, "1.12")  # 1.11 never booted: it is no rollback target
    assert slots.read_state(tmp_path).previous == slots.BASE


def test_version_that_does_not_import_is_not_installed(bundles: Bundles, tmp_path: Path) -> None:
    with pytest.raises(slots.SlotError, match="version 1.19 does not import: RuntimeError: broken build"):
        slots.install_slot(tmp_path, bundles.broken_import)
    assert slot_dirs(tmp_path) == []  # neither the slot nor the staging dir is left
    assert slots.read_state(tmp_path).active == slots.BASE


def test_bad_bundle_is_a_bundle_error(tmp_path: Path) -> None:
    junk = tmp_path / "junk.fwi"
    junk.write_bytes(b"\x00" * 1000)
    with pytest.raises(BundleError):
        slots.install_slot(tmp_path / "data", junk)


def test_running_version_is_not_reinstalled(bundles: Bundles, tmp_path: Path) -> None:
    slots.install_slot(tmp_path, bundles.good["1.11"])
    slots.switch_to_trial(tmp_path, "1.11")
    with pytest.raises(slots.SlotError, match="1.11 is already installed \\(running\\)"):
        slots.install_slot(tmp_path, bundles.good["1.11"])
    assert (tmp_path / "firmware/slots/1.11/twin/__init__.py").is_file()


def test_switch_to_a_missing_slot(tmp_path: Path) -> None:
    with pytest.raises(slots.SlotError, match="no installed slot for version 9.9"):
        slots.switch_to_trial(tmp_path, "9.9")


def test_disk_full_while_unpacking(bundles: Bundles, tiny_disk: Path) -> None:
    with pytest.raises(slots.SlotError, match="disk full"):
        slots.install_slot(tiny_disk, bundles.good["1.11"])
    assert slot_dirs(tiny_disk) == []


def test_unreadable_state_falls_back_to_base(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    (tmp_path / "firmware").mkdir()
    (tmp_path / "firmware/state.json").write_text("{half a fi")
    with caplog.at_level(logging.ERROR):
        assert slots.read_state(tmp_path).active == slots.BASE
    assert "unreadable" in caplog.text


def test_station_calls_never_raise_on_a_broken_data_dir(tmp_path: Path) -> None:
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("x")
    assert slots.mark_boot_ok(not_a_dir, "1.11") is False
    assert slots.pending_report(not_a_dir) is None


def test_overlapping_installs_do_not_share_a_staging_directory(bundles: Bundles, tmp_path: Path) -> None:
    data = tmp_path / "data"
    python, started, go = paused_python(tmp_path, "first")
    results: dict[str, object] = {}

    def install(version: str, **kw: object) -> None:
        try:
            results[version] = slots.install_slot(data, bundles.good[version], **kw).version  # type: ignore[arg-type]
        except Exception as exc:  # noqa: BLE001 -- reported by the assertion below
            results[version] = exc

    first = threading.Thread(target=install, args=("1.11",), kwargs={"python": python})
    first.start()
    wait_for(started)  # 1.11 is unpacked and in its import test
    install("1.12")  # a second install runs from start to end meanwhile
    go.touch()
    first.join(timeout=30)
    assert results == {"1.11": "1.11", "1.12": "1.12"}
    for version in ("1.11", "1.12"):
        assert f'__version__ = "{version}"' in (data / f"firmware/slots/{version}/twin/__init__.py").read_text()
    assert staging_dirs(data) == []


def test_a_cancelled_install_removes_its_own_staging_only(bundles: Bundles, tmp_path: Path) -> None:
    data = tmp_path / "data"
    slot_root = data / "firmware" / "slots"
    live = slot_root / f".staging-{os.getpid()}-another-run"  # an overlapping install's, in use
    live.mkdir(parents=True)
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True,
                          check=True)
    abandoned = slot_root / f".staging-{gone.stdout.strip()}-power-cut"  # its process is gone
    abandoned.mkdir()
    python, started, go = paused_python(tmp_path, "cancelled")
    cancelled = threading.Event()
    outcome: list[BaseException] = []

    def install() -> None:
        try:
            slots.install_slot(data, bundles.good["1.11"], python=python, cancelled=cancelled)
        except slots.SlotError as exc:
            outcome.append(exc)

    worker = threading.Thread(target=install)
    worker.start()
    wait_for(started)
    cancelled.set()
    go.touch()
    worker.join(timeout=30)
    assert [str(e) for e in outcome] == ["installing 1.11 was cancelled"]
    assert not (slot_root / "1.11").exists()  # a cancelled run never touches the slots
    assert staging_dirs(data) == [live.name]


async def test_mark_boot_ok_from_a_worker_thread_while_an_install_runs(bundles: Bundles, tmp_path: Path) -> None:
    # What the runtime does after BootNotification Accepted, while an early UpdateFirmware installs.
    data = tmp_path / "data"
    slots.install_slot(data, bundles.good["1.11"])
    slots.switch_to_trial(data, "1.11")
    python, started, go = paused_python(tmp_path, "install")
    installing = asyncio.create_task(asyncio.to_thread(slots.install_slot, data, bundles.good["1.12"], python=python))
    await asyncio.to_thread(wait_for, started)
    assert await asyncio.to_thread(slots.mark_boot_ok, data, "1.11")
    assert len(staging_dirs(data)) == 1  # the install in progress keeps its staging directory
    go.touch()
    assert (await installing).version == "1.12"
    assert slot_dirs(data) == ["1.11", "1.12"]
    assert await asyncio.to_thread(slots.pending_report, data) == slots.REPORT_INSTALLED
