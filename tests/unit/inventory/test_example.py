# SPDX-License-Identifier: GPL-3.0-or-later
"""The example inventory resolves every variable it uses, the vaulted probe password included."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
EXAMPLE = ROOT / "inventory" / "example"
BIN = Path(sys.executable).parent


def ansible(*args: str, vault: bool = True) -> subprocess.CompletedProcess:
    cmd = [str(BIN / "ansible"), "-i", str(EXAMPLE / "hosts.yml"), *args]
    if vault:
        cmd += ["--vault-password-file", str(EXAMPLE / "vault-password.example")]
    env = {
        "ANSIBLE_CONFIG": str(ROOT / "ansible.cfg"),
        "ANSIBLE_NOCOLOR": "1",
        "ANSIBLE_CALLBACK_RESULT_FORMAT": "json",
        "PATH": str(BIN),
    }
    return subprocess.run(cmd, cwd=ROOT, env=env, text=True, capture_output=True, check=False, timeout=120)


def test_the_vaulted_probe_password_resolves_for_every_host():
    res = ansible("qfieldcloud", "-m", "ansible.builtin.debug", "-a", "var=qfieldcloud_probe_password")
    assert res.returncode == 0, res.stdout + res.stderr
    # the default callback (the JSON one is not in every supported ansible-core): `host | SUCCESS => {...}`
    found = dict(re.findall(r'^(\S+) \| SUCCESS => \{\s*"qfieldcloud_probe_password": "([^"]*)"', res.stdout, re.M))
    assert found == dict.fromkeys(("field-a.example.org", "field-b.example.org"), "example-probe-password-change-me")


def test_the_vault_file_is_encrypted_and_needs_its_password():
    assert (EXAMPLE / "group_vars" / "qfieldcloud" / "vault.yml").read_text().startswith("$ANSIBLE_VAULT;1.1;AES256")
    res = ansible("qfieldcloud", "-m", "ansible.builtin.debug", "-a", "var=qfieldcloud_probe_password", vault=False)
    assert res.returncode != 0
    assert "vault" in (res.stdout + res.stderr).lower()
