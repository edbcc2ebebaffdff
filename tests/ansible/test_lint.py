"""ansible-lint at the production profile, offline, must pass without a warning."""

from __future__ import annotations

import subprocess
from pathlib import Path

from tests.ansible.target import REPO, ansible_bin, ansible_env


def test_ansible_lint_production_profile_is_clean(tmp_path: Path) -> None:
    result = subprocess.run(
        [ansible_bin("ansible-lint"), "--offline", "--profile", "production", "-c", ".ansible-lint", "--nocolor",
         "site.yml", "roles/ocpp_twin", "inventory"],
        cwd=REPO / "ansible", capture_output=True, text=True, check=False, timeout=300,
        env=ansible_env(tmp_path))
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "Passed: 0 failure(s), 0 warning(s)" in output, output
    assert "Profile 'production' was required, and it passed." in output, output
