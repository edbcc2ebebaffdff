"""One process per data dir (twin.service.lock): real flocks, real processes."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys

import pytest

from tests.conftest import ROOT, twin_process_env
from twin.fleet.loopback import LoopbackCsms
from twin.service.lock import LOCK_NAME, DataDirBusy, held_descriptors, hold

HOLDER = ("import sys, time\nfrom twin.service.lock import hold\nhold(sys.argv[1])\n"
          "print('held', flush=True)\ntime.sleep(60)\n")


def _holder(data_dir) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(data_dir)], stdout=subprocess.PIPE, text=True,
                            cwd=ROOT, env=twin_process_env())
    assert proc.stdout is not None and proc.stdout.readline().strip() == "held"
    return proc


def test_a_second_hold_is_refused_and_names_the_holder(tmp_path):
    lock = hold(tmp_path / "data")
    try:
        with pytest.raises(DataDirBusy) as refused:
            hold(tmp_path / "data")
        assert f"process {os.getpid()}" in str(refused.value) and LOCK_NAME in str(refused.value)
        assert lock.fd in held_descriptors()
    finally:
        lock.release()
    assert held_descriptors() == ()
    hold(tmp_path / "data").release()  # free again once released


def test_kill_9_of_the_holder_frees_the_dir_at_once(tmp_path):
    proc = _holder(tmp_path)
    try:
        with pytest.raises(DataDirBusy, match=f"process {proc.pid}"):
            hold(tmp_path)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    hold(tmp_path).release()  # no stale lock after a crash: nothing to clean up by hand


def test_a_child_that_inherits_the_lock_keeps_the_dir_held_after_the_parent_lets_go(tmp_path):
    """What the firmware launcher does for its child (pass_fds): killing the launcher alone
    must not free the dir under the station that still runs."""
    lock = hold(tmp_path)
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], pass_fds=held_descriptors())
    try:
        lock.release()
        with pytest.raises(DataDirBusy):
            hold(tmp_path)
    finally:
        child.kill()
        child.wait()
    hold(tmp_path).release()


def test_the_firmware_launcher_hands_the_lock_to_its_child(tmp_path):
    """_Supervisor._spawn, as it starts a slot's station: its child keeps the dir held after
    the launcher's own descriptor is gone (a launcher killed alone)."""
    from twin.firmware.launcher import _Supervisor

    stand_in = tmp_path / "python"  # the "interpreter" the launcher runs: sleeps, whatever its arguments
    stand_in.write_text("#!/bin/sh\nexec sleep 60\n")
    stand_in.chmod(0o755)
    lock = hold(tmp_path / "data")
    child = _Supervisor(["run"], tmp_path / "data", 10.0, str(stand_in), 0.1)._spawn(None)
    try:
        lock.release()
        with pytest.raises(DataDirBusy):
            hold(tmp_path / "data")
    finally:
        child.kill()
        child.wait()
    hold(tmp_path / "data").release()


@pytest.mark.needs_root("mounts a tmpfs for a real ENOSPC")
def test_a_full_disk_does_not_keep_the_station_from_starting(tmp_path):
    from tests.test_store_faults import tmpfs

    with tmpfs(tmp_path / "small", "size=64k,nr_inodes=64") as fs:
        kept = fs / "kept"  # a dir whose lock file exists from an earlier start
        hold(kept).release()
        fresh = fs / "fresh"
        fresh.mkdir()
        filler = fs / "filler"
        with open(filler, "wb", buffering=0) as out:  # fill every block, then every inode
            try:
                while True:
                    out.write(b"x" * 4096)
            except OSError:
                pass
        n = 0
        try:
            while True:
                (fs / f"inode-{n}").touch()
                n += 1
        except OSError:
            pass
        # The lock file exists: the lock is taken, whether or not its pid could be written.
        lock = hold(kept)
        try:
            assert lock.fd is not None and not lock.unlocked_reason
            with pytest.raises(DataDirBusy):
                hold(kept)
        finally:
            lock.release()
        # No room for the file at all: the station runs without the lock, and says so.
        unlocked = hold(fresh)
        assert unlocked.fd is None and "running without the data-dir lock" in unlocked.unlocked_reason
        unlocked.release()


async def _run(*args: str, timeout: float = 30) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "twin", *args, env=twin_process_env(),
                                                cwd=ROOT, stdout=asyncio.subprocess.DEVNULL,
                                                stderr=asyncio.subprocess.PIPE)
    _, err = await asyncio.wait_for(proc.communicate(), timeout)
    return proc.returncode, err.decode()


async def test_a_second_twin_run_on_a_running_stations_data_dir_exits_3_and_the_first_keeps_going(tmp_path):
    data = tmp_path / "data"
    async with LoopbackCsms(heartbeat_interval=1) as csms:
        first = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "twin", "run", "--sim", "--csms", csms.url, "--id", "CP1", "--data-dir", str(data),
            "--control", "127.0.0.1:0", env=twin_process_env(), cwd=ROOT,
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL)
        try:
            await csms.wait_until(lambda: csms.boots["CP1"] == 1, 20, "CP1 registered")
            code, err = await _run("run", "--sim", "--csms", csms.url, "--id", "CP2", "--data-dir", str(data),
                                   "--control", "127.0.0.1:0")
            assert code == 3, err
            assert f"in use by process {first.pid}" in err and "--data-dir" in err, err
            code, err = await _run("fleet", "--count", "2", "--id-prefix", "F", "--csms", csms.url,
                                   "--data-dir", str(data), "--control", "127.0.0.1:0")
            assert code == 3 and f"in use by process {first.pid}" in err, err
            assert not [cp for cp in csms.connections if cp != "CP1"]  # neither got as far as the CSMS
            beats = csms.calls["CP1"]["Heartbeat"]
            await csms.wait_until(lambda: csms.calls["CP1"]["Heartbeat"] > beats, 10, "CP1 still beating")
            assert first.returncode is None and csms.connections["CP1"] == 1
        finally:
            first.send_signal(signal.SIGTERM)
            assert await asyncio.wait_for(first.wait(), timeout=20) == 0
    hold(data).release()  # and, the holder gone, there is nothing to clean up


async def test_a_twin_run_on_a_running_fleets_data_dir_is_refused(tmp_path):
    data = tmp_path / "fleet"
    async with LoopbackCsms() as csms:
        fleet = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "twin", "fleet", "--count", "2", "--id-prefix", "F", "--csms", csms.url,
            "--data-dir", str(data), "--control", "127.0.0.1:0", env=twin_process_env(), cwd=ROOT,
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL)
        try:
            await csms.wait_until(lambda: len(csms.boots) == 2, 30, "the fleet registered")
            code, err = await _run("run", "--sim", "--csms", csms.url, "--id", "X", "--data-dir", str(data),
                                   "--control", "127.0.0.1:0")
            assert code == 3 and f"in use by process {fleet.pid}" in err, err
            assert "X" not in csms.connections
        finally:
            fleet.send_signal(signal.SIGTERM)
            await asyncio.wait_for(fleet.wait(), timeout=30)
