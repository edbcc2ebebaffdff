"""How the ocpp_twin role cuts a fleet's id range over hosts and shards.

The cut lives in one place, the role's filter plugin (filter_plugins/ocpp_twin_fleet.py),
tested here as Python against twin.fleet.member.member_ids (what each shard's `twin fleet`
then makes of its --first/--count/--id-width). Then the role itself, through ansible-playbook
on the local connection, for an inventory of 3 hosts × 2 shards: its fleet checks, its plan
and its env-file template; every rendered shard's TWIN_FLEET_ARGS is parsed by the twin's
own `twin fleet` arguments (and by the role's env-file check, tasks/fleet.yml), and all of
them together must name every id of the range exactly once, spelled the same way.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from tests.ansible.target import REPO, ansible_bin, ansible_env
from twin.config import load_config
from twin.fleet.cli import add_fleet_arguments
from twin.fleet.member import MIN_ID_DIGITS, member_ids

ROLE = REPO / "ansible" / "roles" / "ocpp_twin"
_spec = importlib.util.spec_from_file_location("ocpp_twin_fleet", ROLE / "filter_plugins" / "ocpp_twin_fleet.py")
assert _spec and _spec.loader
plugin = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(plugin)
fleet_plan = plugin.fleet_plan


def all_ids(total: int, first: int, hosts: list[str], shards: int | dict[str, int], prefix: str = "P",
            width: int | None = None) -> list[str]:
    """Every id every shard of every host runs, as its `twin fleet` spells them."""
    ids: list[str] = []
    for host in hosts:
        per_host = shards[host] if isinstance(shards, dict) else shards
        plan = fleet_plan(total, first, hosts, host, per_host, prefix, width)
        for shard in plan["shards"]:
            shard_ids = member_ids(prefix, shard["count"], shard["first"], plan["width"])
            assert (shard_ids[0], shard_ids[-1]) == (shard["first_id"], shard["last_id"])
            ids += shard_ids
    return ids


@pytest.mark.parametrize(("total", "first", "hosts", "shards"), [
    (10_000, 1, 3, 2),     # uneven over hosts: 3334 + 3333 + 3333
    (10_001, 1, 4, 3),     # uneven over hosts and shards
    (7, 1, 1, 1),          # one host, one shard
    (30, 9981, 3, 2),      # the range crosses 9999 -> 10000: one width for all
    (5, 0, 2, 4),          # more shards than stations on each host
    (2, 1, 3, 2),          # more hosts than stations
])
def test_the_shards_of_all_hosts_cover_the_range_exactly_once(total: int, first: int, hosts: int, shards: int) -> None:
    names = [f"lab{i}" for i in range(hosts)]
    ids = all_ids(total, first, names, shards)
    assert ids == member_ids("P", total, first)  # the whole range, in order, each id once, one spelling


def test_hosts_with_different_shard_counts_still_cover_the_range() -> None:
    names = ["big", "small", "tiny"]
    assert all_ids(1000, 1, names, {"big": 16, "small": 2, "tiny": 1}) == member_ids("P", 1000, 1)


def test_an_uneven_range_gives_the_first_hosts_and_shards_one_id_more() -> None:
    hosts = ["a", "b", "c"]
    counts = [fleet_plan(10_000, 1, hosts, h, 2)["count"] for h in hosts]
    assert counts == [3334, 3333, 3333]
    b = fleet_plan(10_000, 1, hosts, "b", 2)
    assert b["first"] == 3335
    assert [(s["shard"], s["first"], s["count"]) for s in b["shards"]] == [(1, 3335, 1667), (2, 5002, 1666)]
    assert (b["shards"][0]["first_id"], b["shards"][1]["last_id"]) == ("P03335", "P06667")
    assert b["width"] == 5


def test_every_shard_spells_ids_with_the_whole_ranges_width() -> None:
    plan = fleet_plan(30, 9981, ["a", "b", "c"], "b", 2)
    # On its own the first shard's ids (9991..9995) would be 4 digits wide.
    assert [s["first_id"] for s in plan["shards"]] == ["P09991", "P09996"]
    assert len(str(9995)) == MIN_ID_DIGITS
    assert fleet_plan(30, 1, ["a"], "a", 2, width=6)["shards"][1]["first_id"] == "P000016"


def test_more_shards_than_stations_runs_one_shard_per_station_and_no_empty_one() -> None:
    plan = fleet_plan(3, 1, ["a"], "a", 8)
    assert [(s["shard"], s["count"]) for s in plan["shards"]] == [(1, 1), (2, 1), (3, 1)]


def test_a_host_left_without_ids_runs_no_shard() -> None:
    hosts = ["a", "b", "c"]
    assert [fleet_plan(2, 1, hosts, h, 2)["count"] for h in hosts] == [1, 1, 0]
    assert fleet_plan(2, 1, hosts, "c", 2)["shards"] == []


def test_the_cut_depends_only_on_the_host_list_so_every_host_agrees() -> None:
    hosts = ["a", "b", "c"]
    assert fleet_plan(100, 1, hosts, "b", 2) == fleet_plan("100", "1", tuple(hosts), "b", "2")
    assert fleet_plan(100, 1, hosts, "b", 2) != fleet_plan(100, 1, ["b", "a", "c"], "b", 2)


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"total": 0}, "ocpp_twin_fleet_total must be 1 or more"),
    ({"total": "many"}, "ocpp_twin_fleet_total must be an integer"),
    ({"total": True}, "ocpp_twin_fleet_total must be an integer"),
    ({"first": -1}, "ocpp_twin_fleet_first must be 0 or more"),
    ({"shards": 0}, "ocpp_twin_fleet_shards_per_host must be 1 or more"),
    ({"hosts": []}, "ocpp_twin_fleet_hosts must be a non-empty list"),
    ({"hosts": "a,b"}, "ocpp_twin_fleet_hosts must be a non-empty list"),
    ({"hosts": ["a", "b", "a"]}, "names a more than once"),
    ({"host": "z"}, "'z' is not in ocpp_twin_fleet_hosts (a, b)"),
    ({"width": 3, "total": 10_000}, "ocpp_twin_fleet_id_width 3: the last id number 10000 needs 5 digits"),
    ({"prefix": "LOAD/"}, "ocpp_twin_fleet_id_prefix 'LOAD/'"),
    ({"prefix": "X" * 45}, "49 characters, a chargePointId has at most 48"),
])
def test_bad_input_is_refused_naming_the_variable(kwargs: dict[str, Any], message: str) -> None:
    args: dict[str, Any] = {"total": 100, "first": 1, "hosts": ["a", "b"], "host": "a", "shards": 2, "prefix": "P"}
    args.update(kwargs)
    with pytest.raises(ValueError) as refused:
        fleet_plan(**args)
    assert message in str(refused.value)


# --- the role, rendered for 3 hosts × 2 shards --------------------------------------------------

INVENTORY = """\
fleet:
  hosts:
    load-a: {}
    load-b: {}
    load-c: {}
"""

PLAYBOOK = """\
- name: Run the ocpp_twin role's fleet checks and render each shard's arguments
  hosts: all
  gather_facts: false
  tasks:
    - name: Include the fleet checks
      ansible.builtin.include_role:
        name: ocpp_twin
        tasks_from: fleet_checks
        public: true
    - name: Make the host's directory
      ansible.builtin.file:
        path: "%(out)s/{{ inventory_hostname }}"
        state: directory
        mode: "0700"
    - name: Render each shard's arguments
      ansible.builtin.template:
        src: %(template)s
        dest: "%(out)s/{{ inventory_hostname }}/{{ item.shard }}.env"
        mode: "0600"
      loop: "{{ ocpp_twin_fleet_shards }}"
    - name: Render the blueprint
      ansible.builtin.template:
        src: %(blueprint)s
        dest: "%(out)s/{{ inventory_hostname }}/blueprint.toml"
        mode: "0600"
"""

FLEET_VARS = {
    "ocpp_twin_fleet_enabled": True, "ocpp_twin_fleet_total": 10_001, "ocpp_twin_fleet_first": 5000,
    "ocpp_twin_fleet_id_prefix": "LOAD-", "ocpp_twin_fleet_shards_per_host": 2,
    "ocpp_twin_fleet_csms_url": "wss://csms.lab.example/ocpp", "ocpp_twin_fleet_control_port_base": 8280,
    "ocpp_twin_fleet_boot_spread_s": 120, "ocpp_twin_fleet_seed": 7, "ocpp_twin_fleet_traffic": 2.5,
    "ocpp_twin_fleet_keys": {"HeartbeatInterval": 300},
    # wss:// is security profile 2: the members need the AuthorizationKey (twin.config refuses it without).
    "ocpp_twin_fleet_csms_password": "fleet-password-0123",
}
UNIT_PASSWORD_FILE = "/etc/ocpp-twin/fleet/csms-password"


def render(tmp_path: Path, **values: object) -> tuple[subprocess.CompletedProcess[str], Path]:
    out = tmp_path / "rendered"
    out.mkdir(exist_ok=True)
    (tmp_path / "inventory.yml").write_text(INVENTORY)
    (tmp_path / "play.yml").write_text(PLAYBOOK % {"out": out, "template": ROLE / "templates" / "fleet-shard.env.j2",
                                                  "blueprint": ROLE / "templates" / "fleet-blueprint.toml.j2"})
    python = Path(ansible_bin("ansible")).parent / "python"
    result = subprocess.run(
        [ansible_bin("ansible-playbook"), "-i", str(tmp_path / "inventory.yml"), str(tmp_path / "play.yml"),
         "-e", json.dumps({**FLEET_VARS, **values}),
         "-e", json.dumps({"ansible_connection": "local", "ansible_python_interpreter": str(python)})],
        capture_output=True, text=True, check=False, env=ansible_env(tmp_path / "home"), timeout=300)
    return result, out


def parse_env(path: Path) -> Any:
    """The shard's command line as its unit runs it: TWIN_FLEET_ARGS split at whitespace,
    parsed by `twin fleet`'s own arguments."""
    lines = [line for line in path.read_text().splitlines() if line and not line.startswith("#")]
    assert len(lines) == 1 and lines[0].startswith("TWIN_FLEET_ARGS="), lines
    parser = argparse.ArgumentParser(prog="twin fleet", exit_on_error=False)
    add_fleet_arguments(parser)
    return parser.parse_args(lines[0].partition("=")[2].split())


def test_the_role_renders_3_hosts_x_2_shards_that_cover_the_range_exactly_once(tmp_path: Path) -> None:
    result, out = render(tmp_path)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "fleet-password-0123" not in output
    password = tmp_path / "csms-password"
    password.write_text("fleet-password-0123\n")
    for blueprint in out.glob("*/blueprint.toml"):  # the unit's password file, stood in under tmp_path
        assert json.dumps(UNIT_PASSWORD_FILE) in blueprint.read_text()
        blueprint.write_text(blueprint.read_text().replace(UNIT_PASSWORD_FILE, str(password)))
    ids: list[str] = []
    ports: dict[str, set[str]] = {}
    for host in ("load-a", "load-b", "load-c"):
        files = sorted((out / host).glob("*.env"))
        assert [f.name for f in files] == ["1.env", "2.env"], host
        for env in files:
            args = parse_env(env)
            assert args.traffic == 2.5
            assert (args.csms_url, args.id_prefix, args.id_width, args.boot_spread) == (
                "wss://csms.lab.example/ocpp", "LOAD-", 5, 120.0)
            assert args.config == Path("/etc/ocpp-twin/fleet/blueprint.toml")
            assert args.seed == 7 + args.first  # each shard its own, stable boot order
            ports.setdefault(host, set()).add(args.control)
            ids += member_ids(args.id_prefix, args.count, args.first, args.id_width)
    # The role's own check of an env file, as its template task runs it, passes one (with the
    # host's rendered blueprint where the unit's would be).
    env, blueprint = out / "load-b" / "2.env", out / "load-b" / "blueprint.toml"
    env.write_text(env.read_text().replace("/etc/ocpp-twin/fleet/blueprint.toml", str(blueprint)))
    check = subprocess.run([sys.executable, "-I", str(ROLE / "files" / "check-fleet-env"), str(env), "1667"],
                           capture_output=True, text=True, check=False, timeout=60)
    assert check.returncode == 0, check.stderr
    counts = Counter(ids)
    assert [i for i, n in counts.items() if n > 1] == []
    assert ids == member_ids("LOAD-", 10_001, 5000)  # every id of the range once, in host order, one width
    assert ports == {h: {"127.0.0.1:8281", "127.0.0.1:8282"} for h in ports}
    blueprint = load_config(out / "load-b" / "blueprint.toml")
    assert (blueprint.csms_url, blueprint.control_host, blueprint.password) == (
        "wss://csms.lab.example/ocpp", "127.0.0.1", "fleet-password-0123")
    assert blueprint.keys["HeartbeatInterval"] == "300"
    assert "fleet: host 2 of 3 runs 3334 of 10001 ids in 2 shard(s): LOAD-08334..LOAD-10000, LOAD-10001..LOAD-11667" \
        in " ".join(output.split())


def test_a_limited_run_without_an_explicit_host_list_is_refused(tmp_path: Path) -> None:
    result, _ = render(tmp_path, ansible_limit="load-b")
    assert result.returncode != 0
    assert "the range would be cut differently. Set ocpp_twin_fleet_hosts" in " ".join(result.stdout.split())


def test_a_bad_range_stops_the_role_with_the_filters_message(tmp_path: Path) -> None:
    result, _ = render(tmp_path, ocpp_twin_fleet_id_width=4)
    assert result.returncode != 0
    assert "ocpp_twin_fleet_id_width 4: the last id number 15000 needs 5 digits" in result.stdout + result.stderr


def test_the_env_check_refuses_what_twin_fleet_would_refuse(tmp_path: Path) -> None:
    checker = ROLE / "files" / "check-fleet-env"
    good = "--csms ws://127.0.0.1:9/ocpp --first 1 --count 3 --id-width 4 --control 127.0.0.1:8281"
    cases = {
        "good": (good, 0, ""),
        "count": (good, 2, "--count 3, expected 4"),
        "unknown": (good + " --no-such-flag 1", 2, "unrecognized arguments: --no-such-flag"),
        "width": (good.replace("--first 1", "--first 98").replace("--id-width 4", "--id-width 2"), 2,
                  "id width 2: the last id number 100 needs 3 digits"),
        "prefix": (good + " --id-prefix LOAD/", 2, "must be 1 to 48 characters"),
        "control": (good.replace("127.0.0.1:8281", "0.0.0.0:8281"), 2, "needs control.token_file"),
    }
    for name, (args, status, message) in cases.items():
        env = tmp_path / f"{name}.env"
        env.write_text(f"# a comment\nTWIN_FLEET_ARGS={args}\n")
        expected = "4" if name == "count" else "3"
        check = subprocess.run([sys.executable, "-I", str(checker), str(env), expected], capture_output=True,
                               text=True, check=False, timeout=60)
        assert check.returncode == status, (name, check.stderr)
        assert message in check.stderr, (name, check.stderr)
