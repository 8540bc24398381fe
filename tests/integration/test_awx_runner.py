# SPDX-License-Identifier: GPL-3.0-or-later
"""This repository as an AWX project, run the way AWX runs a job: with ansible-runner, from a private data directory.

AWX copies the project (a clean clone: no ``collections/ansible_collections`` link), installs
``collections/requirements.yml`` from the project's root into the job's ``requirements_collections``, writes
``inventory/``, ``env/extravars``, ``env/envvars`` (``ANSIBLE_COLLECTIONS_PATH`` with that directory first),
``env/cmdline`` (``--check --diff`` for a check job with Show Changes, ``--ask-vault-pass`` with a Vault credential)
and ``env/passwords`` (the answer to the vault prompt), then runs ``ansible-runner run <dir> -p <playbook>``.
The tests do the same, with no Galaxy in reach, against one private stand-in stack, and read what AWX reads:
``artifacts/<ident>/rc``, ``status``, the ``playbook_on_stats`` event of ``job_events/`` with the ``set_stats``
data (the job's artifacts in AWX), and the drift report the callback wrote.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
import yaml
from ansible_run import REPO, VENV_BIN, codes, facts_of
from standin import Pristine

pytestmark = pytest.mark.integration

HOST = "field1"
CALLBACK = "fibreflow.qfieldcloud.drift_report"
# A port nothing listens on: any request to Galaxy fails at once.
NO_GALAXY = "http://127.0.0.1:9/api/"


@pytest.fixture(scope="module")
def stack(module_stacks):
    made = module_stacks("awx")
    made.pristine = Pristine(made)
    return made


def clean_env(home: Path) -> dict:
    """The environment of AWX's task runner: no ANSIBLE_* of this checkout, a home of its own, no Galaxy."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ANSIBLE_")}
    env.update(
        HOME=str(home),
        PATH=f"{VENV_BIN}:{env.get('PATH', '/usr/bin:/bin')}",
        ANSIBLE_GALAXY_SERVER=NO_GALAXY,
        ANSIBLE_NOCOLOR="1",
        ANSIBLE_FORCE_COLOR="0",
    )
    return env


def vault_encrypt(value: str, password_file: Path, name: str, env: dict) -> str:
    """``name: !vault |`` and its block, as `ansible-vault encrypt_string` prints it (the value read from stdin)."""
    vault = [str(VENV_BIN / "ansible-vault"), "encrypt_string", "--vault-password-file", str(password_file)]
    res = subprocess.run(
        [*vault, "--stdin-name", name],
        input=value,
        env=env,
        text=True,
        capture_output=True,
        check=True,
    )
    return res.stdout


class Job:
    """One ansible-runner run of the private data directory and the artifacts it left."""

    def __init__(self, root: Path, ident: str, proc: subprocess.CompletedProcess) -> None:
        self.dir = root / "artifacts" / ident
        self.proc = proc
        self.output = proc.stdout + proc.stderr
        assert (self.dir / "rc").is_file(), f"ansible-runner left no artifacts/{ident}/rc:\n{self.output[-3000:]}"
        self.rc = int((self.dir / "rc").read_text())
        self.status = (self.dir / "status").read_text().strip()
        self.events = [json.loads(p.read_text()) for p in sorted((self.dir / "job_events").glob("*.json"))]

    @property
    def stats(self) -> dict:
        """The event_data of the playbook_on_stats event (one per run)."""
        (stats,) = [e["event_data"] for e in self.events if e.get("event") == "playbook_on_stats"]
        return stats

    def artifacts_text(self) -> str:
        return "\n".join(p.read_text(errors="replace") for p in self.dir.rglob("*") if p.is_file())


@pytest.fixture(scope="module")
def awx(tmp_path_factory, stack):
    """The job's private data directory, made as AWX makes it; ``run(ident, playbook, ...)`` runs a job in it."""
    work = tmp_path_factory.mktemp("awx")
    root = work / "job"
    home = work / "home"
    home.mkdir()
    env = clean_env(home)
    project = root / "project"
    subprocess.run(["git", "clone", "--quiet", str(REPO), str(project)], env=env, check=True, capture_output=True)
    # The project update: from the project's root, into the job's requirements_collections.
    collections = root / "requirements_collections"
    update = subprocess.run(
        [
            str(VENV_BIN / "ansible-galaxy"),
            "collection",
            "install",
            "-r",
            "collections/requirements.yml",
            "-p",
            str(collections),
        ],
        cwd=project,
        env=env,
        text=True,
        capture_output=True,
        check=False,
        timeout=300,
    )
    password_file = work / "vault-password"
    vault_password = f"vault-{uuid.uuid4().hex}"
    password_file.write_text(vault_password)
    vars_ = stack.vars
    probe_password = vault_encrypt(
        vars_["qfieldcloud_probe_password"], password_file, "qfieldcloud_probe_password", env
    )
    host_vars = {
        "ansible_connection": "local",
        "ansible_python_interpreter": sys.executable,
        **{k: v for k, v in vars_.items() if k != "qfieldcloud_probe_password"},
    }
    (root / "inventory").mkdir(parents=True)
    # YAML inventory; the probe password is a vaulted host variable (the !vault block of encrypt_string).
    (root / "inventory" / "hosts").write_text(
        yaml.safe_dump({"qfieldcloud": {"hosts": {HOST: host_vars}}}, sort_keys=False).rstrip("\n")
        + "\n"
        + "".join(f"      {line}\n" for line in probe_password.splitlines())
    )
    (root / "env").mkdir()
    reports = work / "reports"  # a persistent volume: outside the private data directory, which AWX removes

    def run(
        ident: str, playbook: str, cmdline: str = "", extravars: dict | None = None, envvars: dict | None = None
    ) -> Job:
        (root / "env" / "extravars").write_text(yaml.safe_dump(extravars or {}))
        (root / "env" / "envvars").write_text(
            yaml.safe_dump(
                {
                    # As AWX sets it: requirements_collections first, then the project's ansible.cfg value.
                    "ANSIBLE_COLLECTIONS_PATH": f"{root / 'requirements_collections'}:./collections",
                    **(envvars or {}),
                }
            )
        )
        (root / "env" / "cmdline").write_text(f"--ask-vault-pass {cmdline}".strip())
        (root / "env" / "passwords").write_text(yaml.safe_dump({r"^Vault password:\s*?$": vault_password}))
        proc = subprocess.run(
            [str(VENV_BIN / "ansible-runner"), "run", str(root), "-p", playbook, "--ident", ident],
            env=env,
            text=True,
            capture_output=True,
            check=False,
            timeout=600,
        )
        job = Job(root, ident, proc)
        for secret in [*stack.secrets(), vault_password]:
            assert secret not in job.output, f"a secret appeared in the output of {ident}"
            assert secret not in job.artifacts_text(), f"a secret appeared in artifacts/{ident}/"
        return job

    return {"root": root, "update": update, "run": run, "reports": reports, "project": project}


@pytest.fixture
def healthy(stack):
    if not facts_of(stack)["sync_ready"]:
        stack.pristine.restore()
    return stack


def test_project_update_installs_the_requirements_offline(awx):
    update, root = awx["update"], awx["root"]
    assert update.returncode == 0, update.stdout + update.stderr
    # a clean clone: the collection comes from requirements.yml, not from a link back to the tree
    assert not (awx["project"] / "collections" / "ansible_collections").exists()
    installed = root / "requirements_collections" / "ansible_collections" / "fibreflow" / "qfieldcloud"
    manifest = json.loads((installed / "MANIFEST.json").read_text())["collection_info"]
    galaxy = yaml.safe_load((REPO / "galaxy.yml").read_text())
    assert (manifest["namespace"], manifest["name"], manifest["version"]) == (
        "fibreflow",
        "qfieldcloud",
        galaxy["version"],
    )
    assert (installed / "plugins" / "modules" / "qfc_sync_facts.py").is_file()
    # built from the checkout: its build_ignore applies (no tests, no collections/ inside the installed copy)
    assert not (installed / "tests").exists() and not (installed / "collections").exists()
    # community.docker is satisfied by the ansible package of the venv (an EE's own copy on AWX): Galaxy is not asked
    assert "'community.docker:" in update.stdout and "is already installed, skipping" in update.stdout, update.stdout


def test_diagnose_of_a_healthy_stack_is_successful(awx, healthy):
    job = awx["run"]("diagnose", "playbooks/diagnose.yml", envvars={"ANSIBLE_CALLBACKS_ENABLED": CALLBACK})
    assert (job.rc, job.status) == (0, "successful"), job.output[-3000:]
    stats = job.stats
    assert stats["ok"].get(HOST) and not stats["failures"] and not stats["dark"], stats
    facts = [
        e["event_data"]["res"]
        for e in job.events
        if e.get("event") == "runner_on_ok"
        and e["event_data"].get("task_action") == "fibreflow.qfieldcloud.qfc_sync_facts"
    ]
    assert facts and facts[0]["sync_ready"] is True and facts[0]["problems"] == [], facts
    # No FIBREFLOW_DRIFT_REPORT_DIR: the report goes to drift-report/ in the working directory, the project copy.
    report = json.loads((awx["project"] / "drift-report" / "drift-report.json").read_text())
    assert (report["outcome"], report["exit_status"], report["run"]["playbook"]) == ("ok", 0, "diagnose.yml"), report


def test_drift_check_job_fails_on_a_stopped_worker(awx, stack, healthy):
    stack.break_("worker-stopped")
    job = awx["run"](
        "drift-check",
        "playbooks/drift_check.yml",
        cmdline="--check --diff",  # job type Check, Show Changes on
        extravars={"qfieldcloud_fail_on_drift": True},
        envvars={"ANSIBLE_CALLBACKS_ENABLED": CALLBACK, "FIBREFLOW_DRIFT_REPORT_DIR": str(awx["reports"])},
    )
    assert (job.rc, job.status) == (2, "failed"), job.output[-3000:]
    data = job.stats["artifact_data"]
    assert data["qfieldcloud_drift_outcome"] == "drift", data
    assert data["qfieldcloud_drift_failed_hosts"] == [], data
    summary = data["qfieldcloud_drift"][HOST]
    assert summary["check_mode"] is True and summary["outcome"] == "drift", summary
    assert "worker_not_running" in summary["found"] and summary["corrected"] == [], summary
    assert "worker_not_running" in data["qfieldcloud_drift_text"], data
    failed = [e["event_data"] for e in job.events if e.get("event") == "runner_on_failed"]
    assert [f["task"] for f in failed] == ["Fail on drift (qfieldcloud_fail_on_drift, for AWX check jobs)"], failed
    # the vaulted probe password was decrypted (the runner answered the vault prompt) and checked by the verify role
    ok = [e["event_data"]["task"] for e in job.events if e.get("event") == "runner_on_ok"]
    assert "Fail early when the probe is not configured" in ok, ok
    report = json.loads((awx["reports"] / "drift-report.json").read_text())
    assert (report["outcome"], report["exit_status"], report["run"]["check_mode"]) == ("drift", 2, True), report
    assert "worker_not_running" in {item["code"] for item in report["hosts"][HOST]["items"]}, report["hosts"]
    assert (awx["reports"] / "drift-report.md").read_text().startswith("#")
    assert "worker_not_running" in codes(facts_of(stack)), "a check job changed the stack"
