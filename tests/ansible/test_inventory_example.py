"""Every unit of ansible/inventory/lab.example.yml gets a station config that the
twin's own loader accepts and whose [drivers] table the driver registry accepts
(probed against gpiozero mock pins: config mistakes raise, missing devices don't).

The role's own early checks (tasks/checks.yml) and its idea of whether a unit runs
its control API (vars/main.yml) are held against twin.config: for the example units
and for a table of hosts, switches and drivers, the role refuses exactly what the
station would refuse, and expects the API on exactly where the station turns it on.
"""

from __future__ import annotations

import json
import re
import subprocess
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import pytest
from gpiozero.pins.mock import MockFactory

from drivers.registry import probe
from tests.ansible.target import REPO, ansible_bin, ansible_env
from twin.config import ConfigError, StationConfig, load_config

ROLE = REPO / "ansible" / "roles" / "ocpp_twin"
INVENTORY = REPO / "ansible" / "inventory" / "lab.example.yml"
VAULT_EXAMPLE = REPO / "ansible" / "inventory" / "vault.example.yml"
PASSWORD_VARS = {"bay1-pi": "vault_bay1_csms_password", "bay2-pi": "vault_bay2_csms_password",
                 "bench-sim": "vault_sim_csms_password"}
UNIT_PASSWORD_FILE = "/etc/ocpp-twin/csms-password"
UNIT_TOKEN_FILE = "/etc/ocpp-twin/control-token"

# Runs the role's checks on each host (a refusal is recorded, not fatal), then renders the
# role's template and writes down what the role computed, with the role's own variables.
PLAYBOOK = """\
- name: Run the ocpp_twin role's checks and render its station config
  hosts: all
  gather_facts: false
  tasks:
    - name: Run the role's checks
      block:
        - name: Include the checks
          ansible.builtin.include_role:
            name: ocpp_twin
            tasks_from: checks
            public: true
      rescue:
        - name: Record the refusal
          ansible.builtin.set_fact:
            refused: "{{ ansible_failed_result.msg }}"
    - name: Render the station config
      ansible.builtin.template:
        src: %(template)s
        dest: "%(out)s/{{ inventory_hostname }}.toml"
        mode: "0600"
    - name: Write what the role computed
      ansible.builtin.copy:
        content: "{{ {'on': ocpp_twin_control_on | bool, 'refused': refused | default(none)} | to_json }}"
        dest: "%(out)s/{{ inventory_hostname }}.json"
        mode: "0600"
"""


def ansible_python() -> Path:
    return Path(ansible_bin("ansible")).parent / "python"  # the ansible venv's: it has PyYAML


@cache
def _yaml(path: Path) -> dict:
    out = subprocess.run([str(ansible_python()), "-c", "import json, sys, yaml; print(json.dumps(yaml.safe_load(open(sys.argv[1]))))",
                          str(path)], capture_output=True, text=True, check=True)
    return json.loads(out.stdout)


def vault() -> dict[str, str]:
    return _yaml(VAULT_EXAMPLE)


@dataclass
class Unit:
    toml: Path
    control_on: bool  # what the role expects: its verify step asks the API only then
    refused: str | None  # the role's early-check message, None if the checks passed


@dataclass
class RoleRun:
    units: dict[str, Unit]
    output: str


def run_role_checks(tmp_path: Path, inventory: Path, *extra_vars: str) -> RoleRun:
    """The playbook above against ``inventory``, every host on the local connection."""
    out = tmp_path / "rendered"
    out.mkdir(parents=True, exist_ok=True)
    playbook = tmp_path / "checks.yml"
    playbook.write_text(PLAYBOOK % {"template": ROLE / "templates" / "station.toml.j2", "out": out})
    extra = [arg for value in extra_vars for arg in ("-e", value)]
    result = subprocess.run(
        [ansible_bin("ansible-playbook"), "-i", str(inventory), str(playbook), *extra,
         "-e", json.dumps({"ansible_connection": "local", "ansible_python_interpreter": str(ansible_python())})],
        capture_output=True, text=True, check=False, env=ansible_env(tmp_path / "home"), timeout=300)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    units = {}
    for computed in out.glob("*.json"):
        facts = json.loads(computed.read_text())
        units[computed.stem] = Unit(computed.with_suffix(".toml"), facts["on"], facts["refused"])
    return RoleRun(units, output)


def load_on_unit(tmp_path: Path, unit: Unit, files: dict[str, str]) -> StationConfig:
    """twin.config on the rendered file, with the unit's secret files stood in under tmp_path
    (``files``: the path on the unit -> its content, written as the role writes it)."""
    text = unit.toml.read_text()
    for unit_path, content in files.items():
        stand_in = tmp_path / f"{unit.toml.stem}-{Path(unit_path).name}"
        stand_in.write_text(content + "\n")
        stand_in.chmod(0o600)
        text = text.replace(json.dumps(unit_path), json.dumps(str(stand_in)))
    unit.toml.write_text(text)
    return load_config(unit.toml)


async def test_every_example_unit_gets_a_config_the_twin_and_its_drivers_accept(tmp_path: Path) -> None:
    secrets = vault()
    run = run_role_checks(tmp_path, INVENTORY, f"@{VAULT_EXAMPLE}")
    assert set(run.units) == {"bay1-pi", "bay2-pi", "bench-sim"}
    configs = {}
    for host, unit in run.units.items():
        assert unit.refused is None, (host, unit.refused)
        files = {UNIT_PASSWORD_FILE: secrets[PASSWORD_VARS[host]], UNIT_TOKEN_FILE: secrets["vault_sim_control_token"]}
        cfg = configs[host] = load_on_unit(tmp_path, unit, files)
        assert cfg.csms_url == "wss://csms.lab.example/ocpp"
        assert cfg.password == secrets[PASSWORD_VARS[host]]
        assert cfg.control_enabled is unit.control_on, host
        factory = MockFactory()
        try:
            reports = await probe(dict(cfg.drivers), cfg.connectors, pin_factory=factory)
        finally:
            factory.close()
        assert {r.kind for r in reports} >= {"relay", "meter", "reader"}, host
    bay1 = configs["bay1-pi"]
    assert (bay1.charge_point_id, bay1.connectors) == ("LAB-BAY1", 2)
    assert bay1.drivers["relay"]["pins"] == {"1": 5, "2": 6}
    # Real contactors: the API is off, and so the role checks registration through systemd.
    for bay in ("bay1-pi", "bay2-pi"):
        assert (configs[bay].control_enabled, configs[bay].control_token) == (False, None)
        assert "\nenabled = false\n" in run.units[bay].toml.read_text()
        assert "token_file" not in run.units[bay].toml.read_text()
    bench = configs["bench-sim"]
    assert (bench.control_enabled, bench.control_host) == (True, "0.0.0.0")
    assert bench.control_token == secrets["vault_sim_control_token"]
    assert bench.control_allowed_origins == ("http://198.51.100.10:8080",)
    assert "enabled" not in bench.config_file.read_text().split("[control]")[1].split("\n[")[0]
    assert secrets["vault_sim_control_token"] not in run.output


def test_the_example_bench_unit_without_its_token_is_refused_by_the_role_and_the_station(tmp_path: Path) -> None:
    run = run_role_checks(tmp_path, INVENTORY, f"@{VAULT_EXAMPLE}", "vault_sim_control_token=")
    bench = run.units["bench-sim"]
    assert bench.refused is not None
    assert "would listen on 0.0.0.0 (not loopback) without a token" in bench.refused
    assert "Set ocpp_twin_control_token" in bench.refused
    assert "token_file" not in bench.toml.read_text()
    with pytest.raises(ConfigError, match=r"control\.host: the control API on 0\.0\.0\.0 \(not loopback\) needs"):
        load_on_unit(tmp_path, bench, {UNIT_PASSWORD_FILE: vault()["vault_sim_csms_password"]})
    assert (run.units["bay1-pi"].refused, run.units["bay2-pi"].refused) == (None, None)


TOKEN = "0123456789abcdef0123456789abcdef"
GPIO_RELAY = {"relay": {"backend": "gpiozero", "pins": {1: 5, 2: 6}}}
# name: (host, [control] enabled (None: unset), [drivers], token, what both must make of it)
CASES = {
    "loopback-v4": ("127.0.0.1", None, {}, "", "on"),
    "loopback-v4-net": ("127.8.9.10", None, {}, "", "on"),
    "loopback-name": ("localhost", None, {}, "", "on"),
    "loopback-name-case": ("LocalHost", None, {}, "", "on"),
    "loopback-v6": ("::1", None, {}, "", "on"),
    "loopback-v6-long": ("0:0:0:0:0:0:0:1", None, {}, "", "on"),
    "loopback-v6-zeros": ("0000::0001", None, {}, "", "on"),
    "all-v4": ("0.0.0.0", None, {}, "", "refused"),
    "all-v6": ("::", None, {}, "", "refused"),
    "lan": ("192.0.2.5", None, {}, "", "refused"),
    "lan-name": ("bench.lab.example", None, {}, "", "refused"),
    "leading-zero": ("127.0.0.01", None, {}, "", "refused"),  # not an address to the twin: a host name
    "lan-token": ("192.0.2.5", None, {}, TOKEN, "on"),
    "lan-off": ("0.0.0.0", False, {}, "", "off"),
    "lan-gpio": ("0.0.0.0", None, GPIO_RELAY, "", "off"),  # the station's default for hardware
    "lan-gpio-on": ("0.0.0.0", True, GPIO_RELAY, "", "refused"),
    "lan-gpio-on-string": ("0.0.0.0", "true", GPIO_RELAY, "", "refused"),  # as -e key=value gives it
    "lan-auto": ("0.0.0.0", None, {"relay": {"backend": "auto", "pins": {1: 5, 2: 6}}}, "", "refused"),
    "lan-sim": ("0.0.0.0", None, {"meter": {"backend": "sim"}}, "", "refused"),
    "loopback-gpio": ("127.0.0.1", None, GPIO_RELAY, "", "off"),
    "short-token": ("127.0.0.1", None, {}, "too-short-token", "refused"),
    "token-with-space": ("127.0.0.1", None, {}, "0123456789abcdef 0123456789abcdef", "refused"),
    "token-padded": ("127.0.0.1", None, {}, "0123456789abcdef0123==", "on"),
}


def test_the_role_refuses_what_the_station_refuses_and_expects_the_api_where_it_runs(tmp_path: Path) -> None:
    hosts = {}
    for name, (host, enabled, drivers, token, _) in CASES.items():
        hostvars = {"ocpp_twin_charge_point_id": "LAB-CASE", "ocpp_twin_csms_url": "ws://127.0.0.1:9/ocpp",
                    "ocpp_twin_control_host": host, "ocpp_twin_drivers": drivers, "ocpp_twin_control_token": token}
        if enabled is not None:
            hostvars["ocpp_twin_control_enabled"] = enabled
        hosts[name] = hostvars
    inventory = tmp_path / "cases.yml"
    inventory.write_text(json.dumps({"all": {"hosts": hosts}}))  # JSON is YAML
    run = run_role_checks(tmp_path, inventory)
    assert set(run.units) == set(CASES)
    for name, unit in run.units.items():
        token, expected = CASES[name][3], CASES[name][4]
        try:
            cfg = load_on_unit(tmp_path, unit, {UNIT_TOKEN_FILE: token} if token else {})
            station, why = ("on" if cfg.control_enabled else "off"), ""
        except ConfigError as exc:
            station, why = "refused", str(exc)
        role = "refused" if unit.refused else ("on" if unit.control_on else "off")
        assert (role, station) == (expected, expected), (name, unit.refused, why)
        if token:
            assert token not in run.output, name
    assert "is not a usable bearer token" in (run.units["short-token"].refused or "")
    assert "is not a usable bearer token" in (run.units["token-with-space"].refused or "")
    assert "would listen on bench.lab.example (not loopback) without a token" in (run.units["lan-name"].refused or "")


def test_the_vault_example_holds_every_vault_variable_the_inventory_names() -> None:
    named = set(re.findall(r"\{\{ *(vault_[a-z0-9_]+) *\}\}", INVENTORY.read_text()))
    assert named == set(vault())
    assert all(isinstance(value, str) and value for value in vault().values())
