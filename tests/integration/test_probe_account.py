"""The probe account and project on a fresh QFieldCloud (a stand-in up with --no-seed: no account, no project):
playbooks/probe_account.yml in check mode, for real, again, then verify.yml with the uuid it printed."""

from __future__ import annotations

import json
import uuid

import pytest
from ansible_run import JSON_CALLBACK, assert_no_secret, play, recap, remove_stack, task_results
from standin import Stack, standin

pytestmark = pytest.mark.integration

PLAYBOOK = "playbooks/probe_account.yml"


@pytest.fixture(scope="module")
def fresh():
    """A stand-in with nothing prepared; its standin-vars.yml names the account to make (probe) and its password."""
    stack = Stack(f"pa{uuid.uuid4().hex[:5]}")
    stack.down()
    try:
        standin("up", "--name", stack.name, "--dir", str(stack.dir), "--no-seed")
        yield stack
    finally:
        remove_stack(stack)


def rows(stack: Stack) -> dict:
    """What the route writes: accounts, projects, tokens (all of them, expired or not)."""
    return {
        "users": stack.sql("SELECT username, email, is_superuser, is_active FROM core_user ORDER BY id"),
        "projects": stack.sql(
            "SELECT p.id, p.name, u.username, p.is_public FROM project_project p JOIN core_user u ON u.id = p.owner_id"
            " ORDER BY p.created_at"
        ),
        "tokens": stack.sql("SELECT key, expires_at > now() FROM authentication_authtoken ORDER BY id"),
    }


def stats(res) -> dict:
    return json.loads(res.stdout)["stats"]["localhost"]


def result_of(res, name: str) -> dict:
    found = [r for task, r in task_results(res.stdout) if task.endswith(name)]
    assert len(found) == 1, [task for task, _r in task_results(res.stdout)]
    return found[0]


def test_probe_account_on_a_fresh_server_then_verify_passes(fresh):
    outputs: list[str] = []
    before = rows(fresh)
    assert before["users"] == [] and before["projects"] == [] and before["tokens"] == []

    # Check mode: reports a change it would make, makes nothing (no account, no project, not even a token).
    check = play(PLAYBOOK, fresh, check=True, env=JSON_CALLBACK)
    outputs.append(check.output)
    assert check.returncode == 0, check.output[-3000:]
    assert stats(check)["changed"] == 1 and stats(check)["failures"] == 0
    assert result_of(check, "Say what check mode would do")["changed"] is True
    assert rows(fresh) == before

    # For real: the account (a normal user) and its private project exist; the printed uuid is the project's.
    first = play(PLAYBOOK, fresh, env={**JSON_CALLBACK, "ANSIBLE_SHOW_CUSTOM_STATS": "1"})
    outputs.append(first.output)
    assert first.returncode == 0, first.output[-3000:]
    assert stats(first)["changed"] == 2
    after = rows(fresh)
    assert after["users"] == [["probe", "probe@localhost", "f", "t"]]
    assert len(after["projects"]) == 1
    project_id, name, owner, is_public = after["projects"][0]
    assert (name, owner, is_public) == ("fibreflow-probe", "probe", "f")
    printed = result_of(first, "Print the line for the inventory")["msg"]
    assert printed[-1] == f"qfieldcloud_probe_project: {project_id}"
    handed = result_of(first, "Hand on the probe project")["ansible_facts"]
    assert handed["qfieldcloud_probe_project"] == project_id
    assert handed["qfieldcloud_verify_probe_account"] == {
        "username": "probe",
        "email": "probe@localhost",
        "account_created": True,
        "project_name": "fibreflow-probe",
        "project_id": project_id,
        "project_created": True,
    }
    doc = json.loads(first.stdout)
    assert doc["global_custom_stats"]["qfieldcloud_probe_project"] == {"localhost": project_id}
    # Logged out: the one token of the run has expired.
    assert [live for _key, live in after["tokens"]] == ["f"]

    # Again, at the highest verbosity: nothing changes, the same project is found and printed.
    again = play(PLAYBOOK, fresh, verbose=True)
    outputs.append(again.output)
    assert again.returncode == 0, again.output[-3000:]
    assert recap(again)["changed"] == 0
    assert f"qfieldcloud_probe_project: {project_id}" in again.output
    third = rows(fresh)
    assert third["users"] == after["users"] and third["projects"] == after["projects"]
    assert [live for _key, live in third["tokens"]] == ["f", "f"]

    # verify.yml with the printed uuid and the account's credentials: a probe job finishes.
    verify = play("playbooks/verify.yml", fresh, extra={"qfieldcloud_probe_project": project_id}, env=JSON_CALLBACK)
    outputs.append(verify.output)
    assert verify.returncode == 0, verify.output[-3000:]
    assert ["finished"] in fresh.sql(f"SELECT status FROM core_job WHERE project_id = '{project_id}'")

    # No output holds the password (play scans for the stack's secrets) or any token the runs were given.
    tokens = [key for key, _live in rows(fresh)["tokens"]]
    assert len(tokens) == 3
    for text in outputs:
        assert not [t for t in tokens if t in text], "a token appeared in the output"
        assert_no_secret(fresh, text, "the outputs")


@pytest.mark.parametrize("variable", ["qfieldcloud_probe_username", "qfieldcloud_probe_password"])
def test_empty_account_values_fail_before_anything_is_done(fresh, variable):
    before = rows(fresh)
    res = play(PLAYBOOK, fresh, extra={variable: ""}, env=JSON_CALLBACK)
    assert res.returncode != 0
    failed = [(task, r) for task, r in task_results(res.stdout) if r.get("failed")]
    assert len(failed) == 1
    task, result = failed[0]
    assert task.endswith("Fail early when the probe account is not given")
    assert result["msg"].startswith(f"{variable}: set ")
    # Nothing ran after it, and nothing before it touched the server: no exec, no API call.
    results = task_results(res.stdout)
    assert results[-1][0] == task
    assert not [
        t for t, r in results if r.get("action") in ("community.docker.docker_compose_v2_exec", "ansible.builtin.uri")
    ]
    assert rows(fresh) == before
