# SPDX-License-Identifier: GPL-3.0-or-later
"""The README's controller route, followed literally in a temporary directory: no `make setup`, no checkout tools.

A venv with requirements-controller.txt only, the collection installed with `ansible-galaxy collection install`
(from the built tarball, then from a git checkout), an inventory of one's own, and
`ansible-playbook fibreflow.qfieldcloud.diagnose -i my-inventory` from a directory without ansible.cfg.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from ansible_run import REPO

pytestmark = pytest.mark.integration


def sh(cmd: list[str], cwd: Path, env: dict, timeout: float = 900) -> subprocess.CompletedProcess:
    res = subprocess.run(cmd, cwd=cwd, env=env, text=True, capture_output=True, check=False, timeout=timeout)
    assert res.returncode == 0, f"{' '.join(cmd)} exited {res.returncode}:\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}"
    return res


@pytest.fixture(scope="module")
def controller(tmp_path_factory):
    """The venv of the route, made as the README says; shared by the tests of this file."""
    home = tmp_path_factory.mktemp("controller")
    env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": str(home), "LANG": "C.UTF-8"}
    sh([sys.executable, "-m", "venv", str(home / "venv")], home, env)
    sh([str(home / "venv/bin/pip"), "install", "-q", "-r", str(REPO / "requirements-controller.txt")], home, env)
    env["PATH"] = f"{home / 'venv/bin'}:{env['PATH']}"
    return home, env


def inventory(work: Path, stack) -> Path:
    """An inventory as a user writes one: this host, its project directory, the Python that has the libraries."""
    vars_ = stack.vars
    path = work / "my-inventory"
    path.write_text(
        "[qfieldcloud]\n"
        f"field1 ansible_connection=local ansible_python_interpreter={sys.executable}"
        f" qfieldcloud_project_dir={vars_['qfieldcloud_project_dir']}"
        f" qfieldcloud_app_url={vars_['qfieldcloud_app_url']}"
        f" qfieldcloud_host_header={vars_['qfieldcloud_host_header']}\n"
    )
    return path


def diagnose(work: Path, env: dict, stack) -> str:
    res = sh(["ansible-playbook", "fibreflow.qfieldcloud.diagnose", "-i", str(inventory(work, stack))], work, env)
    assert "field1" in res.stdout and "failed=0" in res.stdout, res.stdout[-2000:]
    for secret in stack.secrets():
        assert secret not in res.stdout + res.stderr
    return res.stdout


def test_from_the_built_tarball(controller, standin, tmp_path):
    home, env = controller
    build = tmp_path / "build"
    # the release tarball, built from what is committed (a clone), as a release is
    sh(["git", "clone", "-q", str(REPO), str(tmp_path / "src")], tmp_path, env)
    sh(["ansible-galaxy", "collection", "build", "--output-path", str(build)], tmp_path / "src", env)
    (tarball,) = build.glob("fibreflow-qfieldcloud-*.tar.gz")
    work = tmp_path / "ops"
    work.mkdir()
    env = dict(env, ANSIBLE_COLLECTIONS_PATH=str(home / "collections"))
    res = sh(["ansible-galaxy", "collection", "install", str(tarball)], work, env)
    assert "fibreflow.qfieldcloud:" in res.stdout and "community.docker" in res.stdout, res.stdout
    assert not (work / "ansible.cfg").exists()
    out = diagnose(work, env, standin)
    assert "sync ready" in " ".join(out.split()).lower(), out[-2000:]
    assert "tests" not in os.listdir(home / "collections/ansible_collections/fibreflow/qfieldcloud")


def test_from_a_git_checkout(controller, standin, tmp_path):
    _home, env = controller
    work = tmp_path / "ops"
    work.mkdir()
    env = dict(env, ANSIBLE_COLLECTIONS_PATH=str(tmp_path / "collections"))
    sh(["ansible-galaxy", "collection", "install", f"git+file://{REPO},HEAD"], work, env)
    installed = tmp_path / "collections/ansible_collections/fibreflow/qfieldcloud"
    assert (installed / "plugins/modules/qfc_sync_facts.py").is_file()
    diagnose(work, env, standin)
