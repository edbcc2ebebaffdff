"""Every unit of ansible/inventory/lab.example.yml gets a station config that the
twin's own loader accepts and whose [drivers] table the driver registry accepts
(probed against gpiozero mock pins: config mistakes raise, missing devices don't)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from gpiozero.pins.mock import MockFactory

from drivers.registry import probe
from tests.ansible.target import REPO, ansible_bin, ansible_env
from twin.config import load_config

ROLE = REPO / "ansible" / "roles" / "ocpp_twin"
INVENTORY = REPO / "ansible" / "inventory" / "lab.example.yml"
PASSWORDS = {"bay1-pi": "bay1-password-0001", "bay2-pi": "bay2-password-0002", "bench-sim": "sim-password-00003"}
VAULT = {"vault_bay1_csms_password": PASSWORDS["bay1-pi"], "vault_bay2_csms_password": PASSWORDS["bay2-pi"],
         "vault_sim_csms_password": PASSWORDS["bench-sim"]}


def _yaml(path: Path) -> dict:
    python = Path(ansible_bin("ansible")).parent / "python"  # the ansible venv has PyYAML
    out = subprocess.run([str(python), "-c", "import json, sys, yaml; print(json.dumps(yaml.safe_load(open(sys.argv[1]))))",
                          str(path)], capture_output=True, text=True, check=True)
    return json.loads(out.stdout)


def _hosts(env: dict[str, str]) -> dict[str, dict]:
    listing = subprocess.run([ansible_bin("ansible-inventory"), "-i", str(INVENTORY), "--list"],
                             capture_output=True, text=True, check=True, env=env)
    return json.loads(listing.stdout)["_meta"]["hostvars"]


def render(tmp_path: Path) -> dict[str, Path]:
    """The role's template for each unit, with the role's variable precedence:
    defaults < inventory < vars/main.yml."""
    env = ansible_env(tmp_path / "home")
    defaults, fixed = _yaml(ROLE / "defaults" / "main.yml"), _yaml(ROLE / "vars" / "main.yml")
    rendered = {}
    for host, hostvars in _hosts(env).items():
        merged = {**defaults, **hostvars, **fixed, **VAULT}
        merged = {k: v for k, v in merged.items() if not k.startswith("ansible_")}
        extra = tmp_path / f"{host}.json"
        extra.write_text(json.dumps(merged))
        dest = tmp_path / f"{host}.toml"
        result = subprocess.run(
            [ansible_bin("ansible"), "localhost", "-c", "local", "-m", "ansible.builtin.template",
             "-a", f"src={ROLE / 'templates' / 'station.toml.j2'} dest={dest} mode=0644", "-e", f"@{extra}"],
            capture_output=True, text=True, check=False, env=env)
        assert result.returncode == 0, result.stdout + result.stderr
        rendered[host] = dest
    return rendered


async def test_every_example_unit_gets_a_config_the_twin_and_its_drivers_accept(tmp_path: Path) -> None:
    rendered = render(tmp_path)
    assert set(rendered) == {"bay1-pi", "bay2-pi", "bench-sim"}
    for host, path in rendered.items():
        # password_file points at the unit's /etc; stand a copy in for the loader here.
        text = path.read_text()
        password = tmp_path / f"{host}.password"
        password.write_text(PASSWORDS[host] + "\n")
        path.write_text(text.replace('"/etc/ocpp-twin/csms-password"', json.dumps(str(password))))
        cfg = load_config(path)
        assert cfg.csms_url == "wss://csms.lab.example/ocpp"
        assert cfg.password == PASSWORDS[host]
        factory = MockFactory()
        try:
            reports = await probe(dict(cfg.drivers), cfg.connectors, pin_factory=factory)
        finally:
            factory.close()
        assert {r.kind for r in reports} >= {"relay", "meter", "reader"}, host
    bay1 = load_config(rendered["bay1-pi"])
    assert (bay1.charge_point_id, bay1.connectors) == ("LAB-BAY1", 2)
    assert bay1.drivers["relay"]["pins"] == {"1": 5, "2": 6}
    bench = load_config(rendered["bench-sim"])
    assert bench.control_host == "0.0.0.0"
