# SPDX-License-Identifier: GPL-3.0-or-later
"""The action group: `module_defaults` sets project_dir once for both modules."""

from __future__ import annotations

import subprocess
import textwrap

import pytest
from ansible_run import JSON_CALLBACK, LOCAL_ARGS, ansible_env, playbook_command, task_results

pytestmark = pytest.mark.integration

PLAYBOOK = textwrap.dedent(
    """\
    - name: Both modules take project_dir from the action group's defaults
      hosts: localhost
      gather_facts: false
      module_defaults:
        group/fibreflow.qfieldcloud.qfieldcloud:
          project_dir: "{{ qfieldcloud_project_dir }}"
      tasks:
        - name: Read the stack
          fibreflow.qfieldcloud.qfc_sync_facts:
            skip: [app, client]
          register: facts
        - name: Plan the worker (check mode)
          fibreflow.qfieldcloud.qfc_worker:
          check_mode: true
          register: worker
    """
)


def override_state(stack) -> str | None:
    path = stack.dir / "docker-compose.override.fibreflow-worker.yml"
    return path.read_text() if path.exists() else None


def test_module_defaults_of_the_group_reach_both_modules(standin, tmp_path):
    before = override_state(standin)
    playbook = tmp_path / "group.yml"
    playbook.write_text(PLAYBOOK)
    cmd = playbook_command(str(playbook), *LOCAL_ARGS, "-e", f"qfieldcloud_project_dir={standin.dir}")
    env = ansible_env(JSON_CALLBACK)
    res = subprocess.run(cmd, env=env, text=True, capture_output=True, check=False, timeout=600, cwd=tmp_path)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-2000:]
    found = dict(task_results(res.stdout))
    facts = found["Read the stack"]
    assert facts["invocation"]["module_args"]["project_dir"] == str(standin.dir)
    assert facts["ansible_facts"]["qfc_sync"]["project"]["name"] == standin.name
    assert facts["sync_ready"] is True, facts["problems"]
    worker = found["Plan the worker (check mode)"]
    assert worker["invocation"]["module_args"]["project_dir"] == str(standin.dir)
    assert worker.get("failed") is not True, worker.get("msg")
    # the shared stand-in is healthy; it may not have been enforced yet (then only the override file is missing)
    assert {item["code"] for item in worker["drift"]} <= {"worker_config_not_persistent"}, worker["drift"]
    assert worker["changed"] is bool(worker["drift"])
    assert override_state(standin) == before, "check mode wrote a file"
    for secret in standin.secrets():
        assert secret not in res.stdout
