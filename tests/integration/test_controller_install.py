# SPDX-License-Identifier: GPL-3.0-or-later
"""The README's "On your own server in five minutes", every command as written, in an empty home directory: no
`make setup`, no checkout tools, no ansible.cfg.

A venv with requirements-controller.txt only, the collection installed with `ansible-galaxy collection install`
(from the tarball a checkout builds, then from a git repository), the README's inventory for a fresh stand-in with no
probe account, then prerequisites, the probe account, diagnose, check, repair and the cron line's drift check.
"""

from __future__ import annotations

import re
import subprocess
import sys
import textwrap
import time
import uuid
from pathlib import Path

import pytest
import yaml
from ansible_run import REPO, assert_no_secret, remove_stack
from standin import Stack, standin

pytestmark = pytest.mark.integration


def sh(cmd: list[str], cwd: Path, env: dict, timeout: float = 900) -> subprocess.CompletedProcess:
    res = subprocess.run(cmd, cwd=cwd, env=env, text=True, capture_output=True, check=False, timeout=timeout)
    assert res.returncode == 0, f"{' '.join(cmd)} exited {res.returncode}:\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}"
    return res


FIVE_MINUTES = "## On your own server in five minutes"


def readme_blocks(title: str) -> list[tuple[str, str]]:
    """The fenced code blocks of the README section ``title``: (language, text without the list's indent)."""
    text = (REPO / "README.md").read_text()
    section = text[text.index(title) + len(title) :]
    section = section[: section.index("\n## ")]
    return [
        (lang, textwrap.dedent(body))
        for lang, body in re.findall(r"^ *```(\w+)\n(.*?)^ *```$", section, flags=re.MULTILINE | re.DOTALL)
    ]


def bash(script: str, cwd: Path, env: dict, stdin: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["bash", "-c", script], cwd=cwd, env=env, input=stdin, text=True, capture_output=True, check=False, timeout=900
    )


def test_five_minutes_on_a_fresh_server_as_the_readme_says(tmp_path):
    """Every command of the README's five-minute section, as written, against a fresh stand-in (no probe account)
    whose worker is broken: install, inventory, prerequisites, probe account, diagnose, check, repair, schedule."""
    blocks = readme_blocks(FIVE_MINUTES)
    assert [lang for lang, _body in blocks] == ["sh", "yaml", "sh", "sh", "sh", "cron"], blocks
    (install, inventory_yaml, prerequisites, probe, repair, cron) = (body for _lang, body in blocks)
    home = tmp_path / "home"
    home.mkdir()
    env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": str(home), "LANG": "C.UTF-8"}
    stack = Stack(f"fm{uuid.uuid4().hex[:5]}")
    stack.down()
    outputs: list[str] = []
    timings: list[str] = []
    try:
        standin("up", "--name", stack.name, "--dir", str(stack.dir), "--no-seed")
        # 1. In a checkout (a clone: what is committed).
        checkout = home / "qfieldcloud"
        sh(["git", "clone", "-q", str(REPO), str(checkout)], home, env)
        started = time.monotonic()
        res = bash(install, checkout, env)
        timings.append(f"{time.monotonic() - started:6.1f} s  rc={res.returncode}  (in the checkout) {install.strip()}")
        assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
        assert "fibreflow.qfieldcloud:" in res.stdout and "community.docker" in res.stdout, res.stdout[-2000:]
        assert (home / ".ansible/collections/ansible_collections/fibreflow/qfieldcloud/galaxy.yml").exists() is False
        assert (home / ".ansible/collections/ansible_collections/fibreflow/qfieldcloud/MANIFEST.json").is_file()
        venv = dict(env, PATH=f"{home / 'qfc/bin'}:{env['PATH']}")
        # 2. The inventory as the README writes it, for this host: the stand-in's directory and address, the local
        # connection with the Python that has the libraries (the SSH layer, test_ssh_fleet.py, does SSH and sudo),
        # and the start script and unit kept inside the stand-in's directory.
        doc = yaml.safe_load(inventory_yaml)
        (readme_vars,) = doc["qfieldcloud"]["hosts"].values()
        host_vars = {k: v for k, v in readme_vars.items() if k not in ("ansible_user", "ansible_become")}
        wanted = stack.vars
        host_vars.update(
            ansible_connection="local",
            ansible_python_interpreter=sys.executable,
            qfieldcloud_project_dir=wanted["qfieldcloud_project_dir"],
            qfieldcloud_app_url=wanted["qfieldcloud_app_url"],
            qfieldcloud_host_header=wanted["qfieldcloud_host_header"],
            qfieldcloud_startup_boot_script_dir=wanted["qfieldcloud_startup_boot_script_dir"],
            qfieldcloud_startup_boot_unit_dir=wanted["qfieldcloud_startup_boot_unit_dir"],
        )
        inventory = home / "my-inventory.yml"

        def write_inventory() -> None:
            inventory.write_text(yaml.safe_dump({"qfieldcloud": {"hosts": {"field1": host_vars}}}))

        write_inventory()

        def step(script: str, stdin: str | None = None, env_: dict | None = None) -> subprocess.CompletedProcess:
            started = time.monotonic()
            done = bash(script, home, env_ or venv, stdin)
            timings.append(f"{time.monotonic() - started:6.1f} s  rc={done.returncode}  {script.strip()}")
            outputs.append(done.stdout + done.stderr)
            return done

        # 3. prerequisites: this host has them; nothing is installed
        res = step(prerequisites)
        assert res.returncode == 0 and "is ready for the modules" in " ".join(res.stdout.split()), res.stdout[-3000:]
        # 4. the probe account, its password typed in; the printed project line pasted beside the other two
        password = wanted["qfieldcloud_probe_password"]
        res = step(probe, stdin=password + "\n")
        assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-2000:]
        found = re.findall(r"qfieldcloud_probe_project: ([0-9a-f-]{36})", res.stdout)
        assert found, res.stdout[-3000:]
        host_vars["qfieldcloud_probe_project"] = found[-1]
        write_inventory()
        # 5. the worker broken as in the field; diagnose says so, check mode would repair, the real run does
        stack.break_("worker-not-root")
        diagnose, check, apply = (line for line in repair.splitlines() if line.strip())
        with_password = dict(venv, QFC_PROBE_PASSWORD=password)
        res = step(diagnose, env_=with_password)
        assert res.returncode == 2, res.stdout[-3000:]
        assert "worker_socket_denied" in res.stdout, res.stdout[-3000:]
        res = step(check, env_=with_password)
        assert res.returncode == 0 and re.search(r"field1\s*: ok=\d+\s+changed=[1-9]", res.stdout), res.stdout[-3000:]
        res = step(apply, env_=with_password)
        assert res.returncode == 0 and "failed=0" in res.stdout, res.stdout[-4000:]
        assert stack.inspect(stack.containers("worker_wrapper", all_=False)[0])["Config"]["User"] in ("root", "0")
        # 6. the scheduled drift check: the command of the cron line (after its five time fields), the password in
        # its file; nothing drifted after the repair: status 0, and it prints nothing
        (cron_line,) = [line for line in cron.splitlines() if line.strip() and not line.startswith("#")]
        command = cron_line.split(None, 5)[5]
        secret_file = home / ".qfc-probe-password"
        secret_file.write_text(password)
        secret_file.chmod(0o600)
        res = step(command, env_=env)
        assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
        assert (home / "qfc-drift/drift-report.json").is_file()
        # The other route of step 1: the collection from a git repository (this one), as `ansible-galaxy` installs
        # it; its diagnose of the repaired host passes.
        git_env = dict(venv, ANSIBLE_COLLECTIONS_PATH=str(home / "from-git"))
        sh(["ansible-galaxy", "collection", "install", f"git+file://{REPO},HEAD"], home, git_env)
        assert (home / "from-git/ansible_collections/fibreflow/qfieldcloud/plugins/modules/qfc_sync_facts.py").is_file()
        res = step(diagnose, env_=dict(git_env, QFC_PROBE_PASSWORD=password))
        assert res.returncode == 0 and "from-git/ansible_collections" not in res.stderr, res.stdout[-3000:]
        for i, out in enumerate([*outputs, (home / "qfc-drift/ansible-playbook.log").read_text()]):
            assert_no_secret(stack, out, f"output {i} of the five-minute route")
    finally:
        remove_stack(stack)
        # what each command of the route took, for the record (tests/output/five-minutes.txt)
        (REPO / "tests/output").mkdir(exist_ok=True)
        (REPO / "tests/output/five-minutes.txt").write_text("\n".join(timings) + "\n")
