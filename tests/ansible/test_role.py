"""The ocpp_twin role applied for real to a throwaway debootstrap'd bookworm tree.

Run 1 installs; run 2 must change nothing; a bad config value is refused by the
template validation and leaves the installed config alone; an upgrade through the
index path (a wheelhouse holding a newer version) changes things and restarts, and
the run after it changes nothing again. Chrooted, the tree has no systemd as init,
so the role skips starting the service and its live checks but still checks the
files, the venv and the unit. Last, the tree is booted with its own systemd
(systemd-nspawn): the role then enables and starts the service and checks it is
active and registered with a real CSMS on loopback, and the unit's watchdog,
journald logging and SIGTERM stop are exercised under that real systemd. In the same
booted runs the role also runs fleet shards (ocpp-twin-fleet@.service): the tree is host 2
of 3 of a fleet's id range, 2 shards, then 1 (the stale shard goes, the other restarts
with the larger slice).
"""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import socket
import stat
import subprocess
import sys
import time
import tomllib
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.ansible.target import (
    REPO,
    BootedTree,
    PlaybookRun,
    in_root,
    make_bookworm,
    run_playbook,
)
from twin.csms import Csms
from twin.fleet.loopback import LoopbackCsms

pytestmark = [pytest.mark.slow,
              pytest.mark.needs_root("debootstraps a bookworm tree, chroots into it and boots it with systemd-nspawn")]

CP_ID = "LAB-TEST-1"
PASSWORD = "s3cret-password-0123"
# The control API's bearer token: written by the role, sent by its verify step.
TOKEN = "c0ffee-bench-token-0123456789abcdef"
# The container has no GPIO: "auto" lets the booted service fall back to the simulated relays with
# a warning (a named "gpiozero" would, rightly, refuse to start there).
DRIVERS = {"relay": {"backend": "auto", "pins": {"1": 5, "2": 6}, "active_high": False},
           "meter": {"backend": "sim"}}


@dataclass
class Lab:
    root: Path
    home: Path
    work: Path
    wheel: Path
    wheelhouse: Path
    version: str
    next_version: str
    next_house: Path
    first: PlaybookRun
    second: PlaybookRun


def write_vars(path: Path, **values: object) -> Path:
    """Extra vars for `-e @file` (JSON is YAML)."""
    path.write_text(json.dumps(values, indent=1, sort_keys=True))
    return path


def base_vars(wheel: Path, wheelhouse: Path) -> dict[str, object]:
    return {
        "ocpp_twin_charge_point_id": CP_ID,
        "ocpp_twin_csms_url": "ws://127.0.0.1:9/ocpp",
        "ocpp_twin_csms_password": PASSWORD,
        "ocpp_twin_control_token": TOKEN,
        "ocpp_twin_wheel": str(wheel),
        "ocpp_twin_wheelhouse": str(wheelhouse),
        "ocpp_twin_keys": {"HeartbeatInterval": 60, "MeterValuesSampledData": ["Energy.Active.Import.Register", "SoC"]},
        "ocpp_twin_identity": {"chargePointSerialNumber": "XJ-LAB-0001"},
        "ocpp_twin_drivers": DRIVERS,
        "ocpp_twin_unit_overrides": {"PrivateUsers": False, "IPAddressAllow": ["localhost", "192.0.2.0/24"]},
    }


def _pip(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "pip", "--disable-pip-version-check", *args], check=True,
                   capture_output=True, text=True)


def build_wheels(work: Path) -> tuple[Path, Path, str, Path]:
    """The twin's wheel, the dependency wheelhouse, and a newer version's wheel."""
    dist = work / "dist"
    _pip("wheel", "--no-deps", str(REPO), "-w", str(dist))
    (wheel,) = dist.glob("ocpp_twin-*.whl")
    requirements = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    wheelhouse = work / "wheelhouse"
    _pip("download", "--only-binary=:all:", "-d", str(wheelhouse), *requirements)

    # The same tree with a bumped version, as a release would be.
    src = work / "next-src"
    for name in ("pyproject.toml", "README.md"):
        if (REPO / name).exists():
            src.mkdir(parents=True, exist_ok=True)
            shutil.copy(REPO / name, src / name)
    for package in ("twin", "drivers"):
        shutil.copytree(REPO / package, src / package, ignore=shutil.ignore_patterns("__pycache__"))
    init = src / "twin" / "__init__.py"
    current = re.search(r'__version__ = "([^"]+)"', init.read_text())
    assert current
    bumped = current.group(1) + ".1"
    init.write_text(init.read_text().replace(current.group(0), f'__version__ = "{bumped}"'))
    next_house = work / "wheelhouse-next"
    shutil.copytree(wheelhouse, next_house)
    _pip("wheel", "--no-deps", str(src), "-w", str(next_house))
    return wheel, wheelhouse, bumped, next_house


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    work = tmp_path_factory.mktemp("ansible-lab")
    wheel, wheelhouse, bumped, next_house = build_wheels(work)
    root = work / "bookworm"
    make_bookworm(root)
    home = work / "ansible-home"
    values = base_vars(wheel, wheelhouse)
    first = run_playbook(root, home, write_vars(work / "run1.json", **values))
    assert first.returncode == 0, first.output[-6000:]
    second = run_playbook(root, home, write_vars(work / "run2.json", **values))
    version = re.search(r'__version__ = "([^"]+)"', (REPO / "twin" / "__init__.py").read_text())
    assert version
    yield Lab(root, home, work, wheel, wheelhouse, version.group(1), bumped, next_house, first, second)
    shutil.rmtree(root, ignore_errors=True)


def _owner(lab: Lab, path: str) -> tuple[str, str, int]:
    out = in_root(lab.root, "stat", "-c", "%U %G %a", path)
    assert out.returncode == 0, out.stderr
    user, group, mode = out.stdout.split()
    return user, group, int(mode, 8)


def test_first_run_changes_and_second_run_changes_nothing(lab: Lab) -> None:
    assert lab.first.recap()["changed"] > 0
    assert lab.second.returncode == 0, lab.second.output[-6000:]
    recap = lab.second.recap()
    assert (recap["changed"], recap["failed"]) == (0, 0), lab.second.output[-6000:]
    assert lab.second.handlers_run() == []  # nothing changed, so no restart


def test_service_checks_are_skipped_without_systemd_but_files_are_checked(lab: Lab) -> None:
    out = lab.second.output
    assert "service not managed here" in out
    for checked in ("Check that the twin imports from its virtual environment",
                    "Check that the installed unit verifies without any output",
                    "Check that the installed config loads"):
        assert re.search(re.escape(checked) + r"\] \*+\nok: \[target\]", out), checked


def test_os_packages_are_installed(lab: Lab) -> None:
    out = in_root(lab.root, "dpkg-query", "-W", "-f=${Package} ${db:Status-Status}\n",
                  "pcscd", "libpcsclite1", "python3-venv", "systemd", "libccid", "udev")
    assert out.returncode == 0, out.stderr
    assert sorted(out.stdout.split("\n")[:-1]) == sorted(
        f"{p} installed" for p in ("pcscd", "libpcsclite1", "python3-venv", "systemd", "libccid", "udev"))


def test_service_user_and_groups(lab: Lab) -> None:
    passwd = in_root(lab.root, "getent", "passwd", "ocpp-twin").stdout.strip().split(":")
    assert passwd[5:] == ["/var/lib/ocpp-twin", "/usr/sbin/nologin"]
    assert int(passwd[2]) < 1000  # a system account
    groups = in_root(lab.root, "id", "-nG", "ocpp-twin").stdout.split()
    assert set(groups) == {"ocpp-twin", "gpio", "dialout"}
    rule = (lab.root / "etc/udev/rules.d/60-ocpp-twin-gpio.rules").read_text()
    assert 'KERNEL=="gpiochip*", GROUP="gpio", MODE="0660"' in rule


def test_venv_runs_the_installed_twin(lab: Lab) -> None:
    out = in_root(lab.root, "/opt/ocpp-twin/venv/bin/python", "-I", "-c",
                  "import twin, twin.config, ocpp, websockets; print(twin.__version__, twin.__file__)")
    assert out.returncode == 0, out.stderr
    version, location = out.stdout.split()
    assert version == lab.version
    assert location.startswith("/opt/ocpp-twin/venv/lib/python3.11/site-packages/twin/")
    twin_help = in_root(lab.root, "/opt/ocpp-twin/venv/bin/twin", "--help")
    assert twin_help.returncode == 0, twin_help.stderr
    assert (lab.root / "opt/ocpp-twin/wheels" / lab.wheel.name).read_bytes() == lab.wheel.read_bytes()


def test_station_config_is_rendered_and_loads(lab: Lab) -> None:
    assert _owner(lab, "/etc/ocpp-twin/station.toml") == ("root", "ocpp-twin", 0o640)
    assert _owner(lab, "/etc/ocpp-twin/csms-password") == ("root", "ocpp-twin", 0o640)
    assert _owner(lab, "/var/lib/ocpp-twin") == ("ocpp-twin", "ocpp-twin", 0o750)
    doc = tomllib.loads((lab.root / "etc/ocpp-twin/station.toml").read_text())
    assert doc["station"]["charge_point_id"] == CP_ID
    assert doc["csms"] == {"url": "ws://127.0.0.1:9/ocpp", "password_file": "/etc/ocpp-twin/csms-password"}
    assert doc["drivers"] == DRIVERS
    assert doc["keys"]["MeterValuesSampledData"] == ["Energy.Active.Import.Register", "SoC"]
    assert (lab.root / "etc/ocpp-twin/csms-password").read_text() == PASSWORD + "\n"
    # The station refuses a token file others may read, so it is the service user's own.
    assert _owner(lab, "/etc/ocpp-twin/control-token") == ("ocpp-twin", "ocpp-twin", 0o600)
    assert (lab.root / "etc/ocpp-twin/control-token").read_text() == TOKEN + "\n"
    assert doc["control"]["token_file"] == "/etc/ocpp-twin/control-token"
    assert TOKEN not in lab.first.output and TOKEN not in lab.second.output
    # The twin's own loader, in the target's venv, reads it the way the service will.
    out = in_root(lab.root, "/opt/ocpp-twin/venv/bin/python", "-I", "-c",
                  "from twin.config import load_config; c = load_config('/etc/ocpp-twin/station.toml'); "
                  "print(c.charge_point_id, c.ws_url, c.password, c.connectors, c.control_token)")
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == [CP_ID, f"ws://127.0.0.1:9/ocpp/{CP_ID}", PASSWORD, "2", TOKEN]


def test_unit_and_drop_in_are_installed_and_verify_clean(lab: Lab) -> None:
    unit = lab.root / "etc/systemd/system/ocpp-twin.service"
    assert unit.read_bytes() == (REPO / "systemd/ocpp-twin.service").read_bytes()
    assert _owner(lab, "/etc/systemd/system/ocpp-twin.service") == ("root", "root", 0o644)
    dropin = (lab.root / "etc/systemd/system/ocpp-twin.service.d/ansible.conf").read_text()
    assert "\nPrivateUsers=false\n" in dropin
    assert "\nIPAddressAllow=localhost\nIPAddressAllow=192.0.2.0/24\n" in dropin
    # The real ExecStart binary exists in the tree, so verify runs without any stand-in.
    binary = lab.root / "opt/ocpp-twin/venv/bin/twin"
    assert binary.stat().st_mode & stat.S_IXUSR
    out = in_root(lab.root, "systemd-analyze", "verify", "--man=no", "/etc/systemd/system/ocpp-twin.service")
    assert (out.returncode, out.stdout + out.stderr) == (0, "")


def test_a_bad_config_value_is_refused_and_the_old_config_stays(lab: Lab) -> None:
    before = (lab.root / "etc/ocpp-twin/station.toml").read_bytes()
    values = base_vars(lab.wheel, lab.wheelhouse)
    values["ocpp_twin_keys"] = {"HeartbeatInterval": "soon"}
    run = run_playbook(lab.root, lab.home, write_vars(lab.work / "bad.json", **values))
    assert run.returncode != 0
    failed_task = run.output.split("TASK [ocpp_twin : Write the station config]")[1].split("PLAY RECAP")[0]
    assert '"msg": "failed to validate"' in failed_task, run.output[-4000:]
    assert "keys.HeartbeatInterval: 'soon' is not an integer" in failed_task
    assert (lab.root / "etc/ocpp-twin/station.toml").read_bytes() == before
    assert (lab.root / "etc/ocpp-twin/control-token").read_text() == TOKEN + "\n"  # the old config names it


def test_upgrade_from_an_index_changes_and_restarts_then_settles(lab: Lab) -> None:
    """Re-running the playbook is the upgrade; here through the index path
    (ocpp_twin_pip_spec with a wheelhouse standing in for the index)."""
    values = base_vars(lab.wheel, lab.next_house)
    # ... and drops the control API token: its file goes once the config no longer names it.
    values.update(ocpp_twin_wheel="", ocpp_twin_pip_spec=f"ocpp-twin=={lab.next_version}", ocpp_twin_unit_overrides={},
                  ocpp_twin_control_token="")
    upgrade = run_playbook(lab.root, lab.home, write_vars(lab.work / "run3.json", **values))
    assert upgrade.returncode == 0, upgrade.output[-6000:]
    assert upgrade.recap()["changed"] > 0
    assert set(upgrade.handlers_run()) == {"Reload systemd", "Restart ocpp-twin"}
    out = in_root(lab.root, "/opt/ocpp-twin/venv/bin/python", "-I", "-c", "import twin; print(twin.__version__)")
    assert out.stdout.strip() == lab.next_version
    assert not (lab.root / "etc/systemd/system/ocpp-twin.service.d/ansible.conf").exists()
    assert not (lab.root / "etc/ocpp-twin/control-token").exists()
    assert "token_file" not in (lab.root / "etc/ocpp-twin/station.toml").read_text()

    again = run_playbook(lab.root, lab.home, write_vars(lab.work / "run4.json", **values))
    assert again.returncode == 0, again.output[-6000:]
    assert again.recap()["changed"] == 0, again.output[-6000:]
    assert again.handlers_run() == []


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _api_status(port: int, headers: dict[str, str]) -> int:
    request = urllib.request.Request(f"http://127.0.0.1:{port}/api/state", headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=10) as answer:
            return int(answer.status)
    except urllib.error.HTTPError as exc:
        return exc.code


def _block_event_loop(port: int, seconds: float) -> None:
    request = urllib.request.Request(f"http://127.0.0.1:{port}/api/debug/block", method="POST",
                                     data=json.dumps({"seconds": seconds}).encode(),
                                     headers={"Content-Type": "application/json", "Authorization": f"Bearer {TOKEN}"})
    try:
        urllib.request.urlopen(request, timeout=seconds + 30).read()
    except (urllib.error.URLError, ConnectionError):
        pass  # the watchdog kills the station mid-request: no answer is the expected outcome


def _wait(check: object, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():  # type: ignore[operator]
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.5)


# The booted tree is the middle one of three fleet hosts: ids 9981..10010 cut into 10 per host,
# so it runs 9991..10000, with the whole range's width (5 digits) on every shard.
FLEET_HOSTS = ["lab-a", "target", "lab-c"]


def fleet_vars(csms_url: str, port_base: int, shards: int) -> dict[str, object]:
    return {"ocpp_twin_fleet_enabled": True, "ocpp_twin_fleet_total": 30, "ocpp_twin_fleet_first": 9981,
            "ocpp_twin_fleet_id_prefix": "LAB-F", "ocpp_twin_fleet_hosts": FLEET_HOSTS,
            "ocpp_twin_fleet_shards_per_host": shards, "ocpp_twin_fleet_csms_url": csms_url,
            "ocpp_twin_fleet_control_port_base": port_base, "ocpp_twin_fleet_verify_timeout": 60}


def _free_port_pair() -> int:
    """A base port whose next two ports are free (shard n listens on base + n)."""
    for _ in range(50):
        base = _free_port() - 1
        try:
            for port in (base + 1, base + 2):
                with socket.socket() as sock:
                    sock.bind(("127.0.0.1", port))
        except OSError:
            continue
        return base
    raise RuntimeError("no two free ports in a row")


def _stations(port: int) -> dict:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/stations", timeout=10) as answer:
        return json.loads(answer.read())


def _ids(port: int) -> list[str]:
    return [row["id"] for row in _stations(port)["stations"]]


async def test_under_a_real_systemd_the_role_starts_and_verifies_the_registered_service(lab: Lab) -> None:
    csms = Csms(charge_point_id=CP_ID, require_password=PASSWORD)
    await csms.start()
    fleet_csms = LoopbackCsms()  # the fleet shards' CSMS: it takes any station id
    await fleet_csms.start()
    port = _free_port()
    fleet_base = _free_port_pair()
    values = base_vars(lab.wheel, lab.next_house)
    values.update(ocpp_twin_wheel="", ocpp_twin_pip_spec=f"ocpp-twin=={lab.next_version}",
                  ocpp_twin_csms_url=f"{csms.url}/ocpp", ocpp_twin_control_port=port, ocpp_twin_control_debug=True,
                  ocpp_twin_verify_timeout=60,
                  # a short watchdog, so the hung-loop check below takes seconds, not half a minute
                  ocpp_twin_unit_overrides={"WatchdogSec": 3})
    values.update(fleet_vars(fleet_csms.url, fleet_base, shards=2))
    extra = write_vars(lab.work / "booted.json", **values)
    try:
        with BootedTree(lab.root, lab.work / "nspawn.log") as booted:
            run = await asyncio.to_thread(run_playbook, lab.root, lab.home, extra, booted=booted)
            assert run.returncode == 0, run.output[-6000:]
            for checked in ("Enable and start the ocpp-twin service", "Check that the service is active",
                            "Wait for systemd to report the station registered with the CSMS",
                            "Ask the control API for the station state",
                            "Check that the control API answers and reports the station registered"):
                assert re.search(re.escape(checked) + r"\] \*+\n(ok|changed): \[target\]", run.output), checked
            assert "service: registration Accepted" in run.output
            assert "control API on 127.0.0.1:" + str(port) + " with a token" in run.output
            assert TOKEN not in run.output
            # The token the role wrote is the one the station requires (RFC 6750 §3: 401 without it).
            assert await asyncio.to_thread(_api_status, port, {}) == 401
            assert await asyncio.to_thread(_api_status, port, {"Authorization": "Bearer wrong-token-0123456789"}) == 401
            assert await asyncio.to_thread(_api_status, port, {"Authorization": f"Bearer {TOKEN}"}) == 200
            boots = [m for m in csms.messages if m.action == "BootNotification" and m.kind == "call"]
            assert boots and boots[0].payload["chargePointModel"] == "iEVQC33"

            state = booted.show("ocpp-twin.service", "ActiveState", "UnitFileState", "MainPID", "NRestarts",
                                "StatusText", "WatchdogUSec")
            assert (state["ActiveState"], state["UnitFileState"], state["WatchdogUSec"]) == ("active", "enabled", "3s")
            assert state["StatusText"].startswith("registration Accepted")

            # The fleet shards: the role verified each one lists its slice, registered; so does the fleet's CSMS.
            for checked in ("Enable and start the fleet shards", "Check that every fleet shard is active",
                            "Wait for each shard's control API to list its stations registered",
                            "Check that each shard lists its stations, registered"):
                section = run.output.split(f"TASK [ocpp_twin : {checked}]")[1].split("TASK [")[0]
                for n in (1, 2):
                    assert re.search(r"^(ok|changed): \[target\] => \(item=ocpp-twin-fleet@%d\)" % n, section,
                                     re.MULTILINE), (checked, section)
            assert "fleet: host 2 of 3 runs 10 of 30 ids in 2 shard(s): LAB-F09991..LAB-F09995, LAB-F09996..LAB-F10000" \
                in " ".join(run.output.split())
            assert await asyncio.to_thread(_ids, fleet_base + 1) == [f"LAB-F{n:05d}" for n in range(9991, 9996)]
            assert await asyncio.to_thread(_ids, fleet_base + 2) == [f"LAB-F{n:05d}" for n in range(9996, 10001)]
            assert sorted(fleet_csms.boots) == [f"LAB-F{n:05d}" for n in range(9991, 10001)]
            shards = {n: booted.show(f"ocpp-twin-fleet@{n}.service", "ActiveState", "UnitFileState", "MainPID",
                                     "StatusText", "Slice") for n in (1, 2)}
            for n, shard in shards.items():
                assert (shard["ActiveState"], shard["UnitFileState"], shard["Slice"]) == (
                    "active", "enabled", "ocpp-twin-fleet.slice"), shard
                assert shard["StatusText"].startswith("fleet of 5 stations"), shard  # READY=1 from the fleet
            env1 = (lab.root / "etc/ocpp-twin/fleet/1.env").read_text()

            # Re-running changes nothing and restarts nothing.
            again = await asyncio.to_thread(run_playbook, lab.root, lab.home, extra, booted=booted)
            assert again.returncode == 0, again.output[-6000:]
            assert again.recap()["changed"] == 0, again.output[-6000:]
            assert booted.show("ocpp-twin.service", "MainPID")["MainPID"] == state["MainPID"]
            for n, shard in shards.items():
                assert booted.show(f"ocpp-twin-fleet@{n}.service", "MainPID")["MainPID"] == shard["MainPID"]

            # One shard fewer, through the role's fleet tasks only (--tags fleet): shard 2 is stopped, disabled
            # and its arguments removed; shard 1 restarts with the host's whole slice; the station is left alone.
            values.update(fleet_vars(fleet_csms.url, fleet_base, shards=1))
            shrink = await asyncio.to_thread(run_playbook, lab.root, lab.home,
                                             write_vars(lab.work / "shrink.json", **values), booted=booted,
                                             tags="fleet")
            assert shrink.returncode == 0, shrink.output[-6000:]
            assert "TASK [ocpp_twin : Install the twin and its dependencies]" not in shrink.output
            assert shrink.handlers_run() == ["Stop the fleet shards whose arguments changed", "Start the fleet shards"]
            assert booted.show("ocpp-twin-fleet@2.service", "ActiveState", "UnitFileState") == {
                "ActiveState": "inactive", "UnitFileState": "disabled"}
            assert not (lab.root / "etc/ocpp-twin/fleet/2.env").exists()
            assert (lab.root / "etc/ocpp-twin/fleet/1.env").read_text() != env1
            assert booted.show("ocpp-twin-fleet@1.service", "MainPID")["MainPID"] != shards[1]["MainPID"]
            assert await asyncio.to_thread(_ids, fleet_base + 1) == [f"LAB-F{n:05d}" for n in range(9991, 10001)]
            assert booted.show("ocpp-twin.service", "MainPID")["MainPID"] == state["MainPID"]

            # Structured logs reach the container's journald through the native protocol.
            journal = booted.run("journalctl", "-u", "ocpp-twin.service", "-o", "verbose", "--no-pager").stdout
            assert "SYSLOG_IDENTIFIER=ocpp-twin" in journal and "_TRANSPORT=journal" in journal

            # A blocked event loop stops the pings: systemd kills it and Restart= brings it back.
            await asyncio.to_thread(_block_event_loop, port, 10)
            await asyncio.to_thread(
                _wait, lambda: booted.show("ocpp-twin.service", "NRestarts", "ActiveState")
                == {"NRestarts": "1", "ActiveState": "active"}, 60, "a watchdog restart")
            log = booted.run("journalctl", "-u", "ocpp-twin.service", "--no-pager").stdout
            assert "Failed with result 'watchdog'" in log

            # The hardening leaves pcscd reachable: systemd/sandbox-probe (installed by the role)
            # runs a command in the unit's sandbox; pcscd is socket-activated in the container.
            assert booted.run("systemctl", "is-active", "pcscd.socket").stdout.strip() == "active"
            connect = ("import os, pwd, socket; s = socket.socket(socket.AF_UNIX); s.connect('/run/pcscd/pcscd.comm'); "
                       "print('pcscd reachable as', pwd.getpwuid(os.getuid()).pw_name, os.getgroups() != [])")
            probe = booted.run("/opt/ocpp-twin/bin/sandbox-probe", "/opt/ocpp-twin/venv/bin/python", "-I", "-c", connect)
            assert probe.returncode == 0, probe.stdout + probe.stderr
            assert "pcscd reachable as ocpp-twin True" in probe.stdout
            # ... and it reports failures with the command's exit status.
            refused = booted.run("/opt/ocpp-twin/bin/sandbox-probe", "/opt/ocpp-twin/venv/bin/python", "-c",
                                 "import sys; print('giving up'); sys.exit(3)")
            assert refused.returncode == 3, refused.stdout + refused.stderr
            assert refused.stdout.strip() == "giving up"
            assert "the command failed (exit status 3)" in refused.stderr
            # The default probe: the station's drivers, from inside the sandbox.
            drivers = booted.run("/opt/ocpp-twin/bin/sandbox-probe")
            assert "relay" in drivers.stdout and "meter" in drivers.stdout, drivers.stdout + drivers.stderr
            assert "ocpp-twin-sandbox-probe" not in booted.run("systemctl", "list-units", "--all", "--no-legend").stdout

            # SIGTERM (systemctl stop): a clean exit 0.
            assert booted.run("systemctl", "stop", "ocpp-twin.service").returncode == 0
            stopped = booted.show("ocpp-twin.service", "ActiveState", "Result", "ExecMainStatus")
            assert stopped == {"ActiveState": "inactive", "Result": "success", "ExecMainStatus": "0"}
    finally:
        await csms.stop()
        await fleet_csms.stop()
