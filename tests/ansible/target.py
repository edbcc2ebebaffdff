"""A throwaway Debian bookworm tree for the role to provision, and ansible-playbook runs against it.

The target is a real debootstrap'd bookworm (minbase + python3): apt installs real
packages in it, useradd creates a real user in its /etc/passwd, pip builds a real
venv. Ansible reaches it through tests/ansible/connection_plugins/twin_chroot.py.
Each playbook run happens in a private mount namespace (unshare) where /proc, /sys
and /dev/pts are mounted into the tree, so nothing stays mounted when a run ends.

Environment knobs:
  OCPP_TWIN_DEBIAN_MIRROR   the mirror for debootstrap (default http://deb.debian.org/debian)
  OCPP_TWIN_CHROOT_CACHE    a .tar path: reuse the debootstrap result kept there (made on first use)
  OCPP_TWIN_ANSIBLE_BIN     the bin/ dir with ansible-playbook and ansible-lint
                            (default <repo>/.venv-ansible/bin)
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

REPO = Path(__file__).resolve().parents[2]
PLUGINS = Path(__file__).resolve().parent / "connection_plugins"
DEFAULT_MIRROR = "http://deb.debian.org/debian"


def ansible_bin(tool: str) -> str:
    bin_dir = Path(os.environ.get("OCPP_TWIN_ANSIBLE_BIN", REPO / ".venv-ansible" / "bin"))
    path = bin_dir / tool
    if not path.is_file():
        raise RuntimeError(f"{path} not found: install the tools with "
                           f"`python3 -m venv {REPO}/.venv-ansible && {REPO}/.venv-ansible/bin/pip install "
                           "ansible-core ansible-lint` or set OCPP_TWIN_ANSIBLE_BIN")
    return str(path)


def ansible_env(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ANSIBLE_")}
    env.update(
        ANSIBLE_HOME=str(home),
        ANSIBLE_LOCAL_TEMP=str(home / "tmp"),
        ANSIBLE_CONNECTION_PLUGINS=str(PLUGINS),
        ANSIBLE_ROLES_PATH=str(REPO / "ansible" / "roles"),
        ANSIBLE_NOCOLOR="1",
        ANSIBLE_FORCE_COLOR="0",
        ANSIBLE_RETRY_FILES_ENABLED="0",
        ANSIBLE_STDOUT_CALLBACK="default",
        ANSIBLE_PIPELINING="1",
        PATH=f"{Path(ansible_bin('ansible-playbook')).parent}:{os.environ.get('PATH', '')}",
    )
    return env


def make_bookworm(root: Path) -> None:
    """debootstrap (or unpack the cached result) into ``root``, ready for Ansible."""
    cache = os.environ.get("OCPP_TWIN_CHROOT_CACHE")
    root.mkdir(parents=True, exist_ok=True)
    if cache and Path(cache).is_file():
        subprocess.run(["tar", "-C", str(root), "-xf", cache], check=True)
    else:
        mirror = os.environ.get("OCPP_TWIN_DEBIAN_MIRROR", DEFAULT_MIRROR)
        result = subprocess.run(["debootstrap", "--variant=minbase", "--include=python3", "bookworm", str(root),
                                 mirror], capture_output=True, text=True, check=False)
        if result.returncode != 0:
            raise RuntimeError(f"debootstrap failed ({result.returncode}):\n{result.stdout[-3000:]}{result.stderr}")
        if cache:
            Path(cache).parent.mkdir(parents=True, exist_ok=True)
            subprocess.run(["tar", "-C", str(root), "-cf", cache, "."], check=True)
    # Package scripts must not start daemons in the tree (policy-rc.d(8): 101 = action forbidden).
    policy = root / "usr/sbin/policy-rc.d"
    policy.write_text("#!/bin/sh\nexit 101\n")
    policy.chmod(0o755)
    shutil.copyfile("/etc/resolv.conf", root / "etc/resolv.conf")


def in_root(root: Path, *cmd: str) -> subprocess.CompletedProcess[str]:
    """Run a command inside the tree (with /proc mounted), as the checks need."""
    return subprocess.run(["unshare", "--mount", "--propagation", "private", "--", "sh", "-c",
                           'mount -t proc proc "$0/proc" && exec chroot "$0" "$@"', str(root), *cmd],
                          capture_output=True, text=True, check=False, timeout=300)


@dataclass
class PlaybookRun:
    returncode: int
    output: str

    def recap(self) -> dict[str, int]:
        match = re.search(r"^\S+\s*:\s*(ok=.*)$", self.output.split("PLAY RECAP", 1)[-1], re.MULTILINE)
        assert match, self.output[-3000:]
        return {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", match.group(1))}

    def handlers_run(self) -> list[str]:
        return re.findall(r"^RUNNING HANDLER \[ocpp_twin : ([^\]]+)\]", self.output, re.MULTILINE)


def run_playbook(root: Path, home: Path, extra_vars_file: Path, *, booted: BootedTree | None = None,
                 tags: str | None = None) -> PlaybookRun:
    """ansible-playbook ansible/site.yml against the tree, for real (no check mode);
    with ``booted``, against the running container of that tree instead; with ``tags``,
    only the role's tasks with those tags (--tags)."""
    home.mkdir(parents=True, exist_ok=True)
    inventory = home / "inventory.yml"
    host = f"'{booted.init_pid}'" if booted else str(root)
    inventory.write_text(
        "ocpp_twin_units:\n  hosts:\n    target:\n"
        f"      ansible_host: {host}\n"
        "      ansible_connection: twin_chroot\n"
        "      ansible_python_interpreter: /usr/bin/python3\n")
    playbook = [ansible_bin("ansible-playbook"), "-i", str(inventory), str(REPO / "ansible" / "site.yml"),
                "-e", f"@{extra_vars_file}", *(["--tags", tags] if tags else [])]
    if booted is None:
        mounts = ('mount -t proc proc "$0/proc" && mount -t sysfs sysfs "$0/sys" && '
                  'mount --bind /dev/pts "$0/dev/pts" && exec "$@"')
        playbook = ["unshare", "--mount", "--propagation", "private", "--", "sh", "-c", mounts, str(root), *playbook]
    result = subprocess.run(playbook, capture_output=True, text=True, check=False, env=ansible_env(home),
                            timeout=1200)
    return PlaybookRun(result.returncode, result.stdout + result.stderr)


class BootedTree:
    """The tree booted with its own systemd as init (systemd-nspawn, host network).

    Its systemd is a real service manager: Type=notify, the watchdog, the hardening
    (namespaces, seccomp, DevicePolicy) all apply to ocpp-twin.service in there.
    """

    def __init__(self, root: Path, log: Path) -> None:
        self.root, self.log = root, log
        self.init_pid = 0
        self._proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> BootedTree:
        if shutil.which("systemd-nspawn") is None:
            raise RuntimeError("systemd-nspawn not found: apt-get install systemd-container")
        with open(self.log, "wb") as log:
            self._proc = subprocess.Popen(
                ["systemd-nspawn", "--quiet", "-D", str(self.root), "--register=no", "--keep-unit", "-b",
                 "--console=pipe"], stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 60
        while not self.init_pid:
            if self._proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the container did not boot:\n{self.log.read_text(errors='replace')[-3000:]}")
            self.init_pid = _systemd_child(self._proc.pid)
            time.sleep(0.1)
        # systemctl talks to the container's systemd on its private socket, which appears a moment
        # after the process does: asked before, it fails with "Failed to connect to bus".
        private = Path(f"/proc/{self.init_pid}/root/run/systemd/private")
        while not private.exists():
            if self._proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the container's systemd opened no socket:\n"
                                   f"{self.log.read_text(errors='replace')[-3000:]}")
            time.sleep(0.1)
        state = self.run("systemctl", "is-system-running", "--wait", timeout=120)
        if state.stdout.strip() not in ("running", "degraded"):
            raise RuntimeError(f"the container's systemd is {state.stdout.strip()!r}: {state.stderr}")
        return self

    def run(self, *cmd: str, timeout: float = 120, input: str | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["nsenter", f"--target={self.init_pid}", "--all", *cmd], capture_output=True,
                              text=True, check=False, timeout=timeout, input=input)

    def show(self, unit: str, *props: str) -> dict[str, str]:
        out = self.run("systemctl", "show", unit, *(f"--property={p}" for p in props)).stdout
        return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self._proc is None:
            return
        self._proc.terminate()  # nspawn halts the container on SIGTERM
        try:
            self._proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()


def _systemd_child(pid: int) -> int:
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        return 0
    for child in children:
        try:
            if Path(f"/proc/{child}/comm").read_text().strip() == "systemd":
                return int(child)
        except OSError:
            continue
    return 0
