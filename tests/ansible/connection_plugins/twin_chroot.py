"""A minimal Ansible connection plugin that runs tasks inside a chroot directory,
or inside a booted systemd-nspawn container of that directory.

The role is tested against a throwaway debootstrap'd Debian bookworm tree. Ansible
core has no chroot connection (it lives in community.general, which only Galaxy or
the 470 MB `ansible` package would bring), and this is all the tests need: every
command and every file transfer goes through `chroot <dir>`, so absolute symlinks
inside the tree can never write to the host.

Inventory: ``ansible_connection=twin_chroot`` with ``ansible_host`` either the tree's
directory (commands run as ``chroot <dir> /bin/sh -c <cmd>``) or the pid of a container's
init (``nsenter --target <pid> --all /bin/sh -c <cmd>``: the container's own mounts,
pid namespace and systemd, so the role's service tasks run for real).
"""

from __future__ import annotations

import os
import shlex
import subprocess
import typing as t

from ansible.errors import AnsibleConnectionFailure, AnsibleError
from ansible.plugins.connection import ConnectionBase

DOCUMENTATION = """
    name: twin_chroot
    short_description: run tasks inside a local chroot directory (ocpp-twin tests)
    description:
        - Runs every command as C(chroot <dir> /bin/sh -c <cmd>) on the controller, as root,
          or as C(nsenter --target <pid> --all /bin/sh -c <cmd>) when the host is a pid.
    author: ocpp-twin
    options: {}
    extends_documentation_fragment:
        - connection_pipelining
"""


class Connection(ConnectionBase):
    transport = "twin_chroot"
    has_pipelining = True
    default_user = "root"

    def __init__(self, *args: t.Any, **kwargs: t.Any) -> None:
        super().__init__(*args, **kwargs)
        self.root = self._play_context.remote_addr

    def _connect(self) -> Connection:
        if os.geteuid() != 0:
            raise AnsibleConnectionFailure("the twin_chroot connection needs root")
        if self.root.isdigit():
            if not os.path.exists(f"/proc/{self.root}/ns/mnt"):
                raise AnsibleConnectionFailure(f"no process {self.root} to enter")
        elif not os.path.isfile(os.path.join(self.root, "bin/sh")):
            raise AnsibleConnectionFailure(f"{self.root} is not a chroot tree (no /bin/sh)")
        self._connected = True
        return self

    def _enter(self) -> list[str]:
        if self.root.isdigit():
            return ["nsenter", f"--target={self.root}", "--all"]
        return ["chroot", self.root]

    def _run(self, cmd: str, in_data: bytes | None) -> tuple[int, bytes, bytes]:
        proc = subprocess.run([*self._enter(), "/bin/sh", "-c", cmd], input=in_data or b"",
                              capture_output=True, check=False, env=_clean_env())
        return proc.returncode, proc.stdout, proc.stderr

    def exec_command(self, cmd: str, in_data: bytes | None = None, sudoable: bool = True) -> tuple[int, bytes, bytes]:
        super().exec_command(cmd, in_data=in_data, sudoable=sudoable)
        return self._run(cmd, in_data)

    def put_file(self, in_path: str, out_path: str) -> None:
        super().put_file(in_path, out_path)
        with open(in_path, "rb") as source:
            rc, _, err = self._run(f"cat > {shlex.quote(out_path)}", source.read())
        if rc != 0:
            raise AnsibleError(f"failed to put {in_path} to {out_path} in {self.root}: {err.decode(errors='replace')}")

    def fetch_file(self, in_path: str, out_path: str) -> None:
        super().fetch_file(in_path, out_path)
        rc, out, err = self._run(f"cat {shlex.quote(in_path)}", None)
        if rc != 0:
            raise AnsibleError(f"failed to fetch {in_path} from {self.root}: {err.decode(errors='replace')}")
        with open(out_path, "wb") as target:
            target.write(out)

    def close(self) -> None:
        self._connected = False


def _clean_env() -> dict[str, str]:
    """The controller's environment minus what would mislead programs in the tree
    (the controller's venv, pip configuration and Python paths)."""
    drop = ("VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME")
    env = {k: v for k, v in os.environ.items() if k not in drop and not k.startswith("PIP_")}
    env["PATH"] = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
    return env
