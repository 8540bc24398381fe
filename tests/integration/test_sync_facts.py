# SPDX-License-Identifier: GPL-3.0-or-later
"""qfc_sync_facts against the stand-in QFieldCloud on the real Docker engine.

Read-only checks share the session's healthy stand-in; each fault gets a private stack from
``stack_factory`` (torn down after the test). The module is run through ``ansible`` from the working tree.
"""

from __future__ import annotations

import json
import os
import stat
import uuid

import pytest
from ansible_run import codes, facts_of, run_module

pytestmark = pytest.mark.integration

MODULE = "fibreflow.qfieldcloud.qfc_sync_facts"


def private_name():
    return f"sf{uuid.uuid4().hex[:6]}"


# ------------------------------------------------------------------------------------------------ healthy
def test_healthy_stack_has_no_problems(standin):
    result = facts_of(standin)
    assert result["problems"] == []
    assert result["sync_ready"] is True
    assert result["changed"] is False
    qfc = result["ansible_facts"]["qfc_sync"]
    assert qfc["project"]["name"] == standin.name
    assert qfc["worker"]["replicas_expected"] == 1
    assert qfc["worker"]["replicas_running"] == 1
    rep = qfc["worker"]["replicas"][0]
    assert rep["drift"] == []
    assert rep["user"] == "root"
    assert rep["socket_mount"]["rw"] is True
    assert rep["postgres_host"] == "db"
    assert rep["networks"] == [f"{standin.name}_default"]
    assert qfc["database"]["reachable"] is True
    assert qfc["database"]["generation"] == "project_project"
    assert qfc["database"]["round_trips"] == 2
    assert qfc["app"]["ok"] is True
    assert qfc["cron"]["ofelia_running"] is True
    assert qfc["images"]["qgis"][0]["present"] is True
    # one listing, one inspect per project container
    assert qfc["api_calls"]["container_lists"] == 1


def test_zero_configuration_by_project_name(standin):
    # As a user's ad-hoc command runs it: through `ansible localhost -m`.
    result = run_module(MODULE, {"project_name": standin.name}, via_ansible=True)
    assert not result.get("failed"), result.get("msg")
    assert result["problems"] == []
    assert result["sync_ready"] is True


def test_job_is_counted_and_leaves_no_orphan(standin):
    job_id = standin.create_job("package")
    assert standin.wait_job(job_id, 60) == "finished"
    qfc = facts_of(standin)["ansible_facts"]["qfc_sync"]
    assert qfc["queue"]["counts_by_status"].get("finished", 0) >= 1
    assert qfc["queue"]["counts_by_type"].get("package", 0) >= 1
    assert qfc["orphan_job_containers"] == []
    log = qfc["worker"]["replicas"][0]["log"]
    assert log["dequeue_banner"] is True
    assert log["dequeued_jobs"] >= 1


def test_no_secret_in_result_or_textfile(standin, tmp_path):
    textfile = tmp_path / "qfc.prom"
    result = facts_of(standin, via_ansible=True, prometheus_textfile=str(textfile), log_lines=1000)
    assert result["prometheus_textfile_written"] is True
    text = textfile.read_text()
    assert f'qfieldcloud_sync_ready{{project="{standin.name}"}} 1' in text
    assert stat.S_IMODE(os.stat(textfile).st_mode) == 0o644
    dumped = json.dumps(result) + result["_stdout"] + text
    secrets = standin.secrets()
    assert len(secrets) >= 5
    for secret in secrets:
        assert secret not in dumped


def test_check_mode_writes_no_textfile(standin, tmp_path):
    textfile = tmp_path / "qfc.prom"
    result = run_module(MODULE, {"project_dir": str(standin.dir), "prometheus_textfile": str(textfile)}, check=True)
    assert not result.get("failed"), result.get("msg")
    assert result["prometheus_textfile_written"] is False
    assert not textfile.exists()


def test_app_through_nginx_with_host_header(standin):
    v = standin.vars
    result = facts_of(standin, app_url=v["qfieldcloud_app_url"], app_host_header=v["qfieldcloud_host_header"])
    assert result["ansible_facts"]["qfc_sync"]["app"]["ok"] is True
    wrong = facts_of(standin, app_url=v["qfieldcloud_app_url"], app_host_header="wrong.example")
    assert "app_unreachable" in codes(wrong)


# ------------------------------------------------------------------------------------------------ unreachable
@pytest.mark.parametrize("docker_host", ["unix:///nonexistent/docker.sock", "tcp://127.0.0.1:1"])
def test_daemon_unreachable_is_a_finding(docker_host):
    result = run_module(MODULE, {"project_name": "qfieldcloud", "docker_host": docker_host, "timeout": 3})
    assert not result.get("failed"), result.get("msg")
    assert "Traceback" not in result["_stdout"]
    assert codes(result) == {"docker_unreachable"}
    assert result["sync_ready"] is False


def test_wrong_db_password_is_auth_finding(standin):
    result = facts_of(standin, db_password="not-the-password")
    assert "db_auth_failed" in codes(result)
    assert result["sync_ready"] is False


def test_bad_arguments_fail_with_a_message(tmp_path):
    result = run_module(MODULE, {"project_dir": str(tmp_path / "missing")})
    assert result.get("failed") is True
    assert "is not a directory" in result["msg"]
    result = run_module(MODULE, {"skip": ["nonsense"]})
    assert result.get("failed") is True
    assert "skip" in result["msg"]


# ------------------------------------------------------------------------------------------------ faults
# fault(s) injected together -> (codes that must be found, codes that may also be found)
FAULT_CASES = {
    "worker-stopped": ({"worker_not_running"}, set()),
    "worker-removed": ({"worker_not_running"}, set()),
    "worker-image-missing": ({"worker_image_missing", "worker_not_running"}, set()),
    # upstream's worker without the socket crashes in its idle loop before it claims anything: it loops
    "worker-not-root+qgis-image-missing": (
        {"worker_socket_denied", "qgis_image_missing"},
        {"worker_crash_loop", "worker_not_running"},
    ),
    "worker-wrong-db-host": ({"worker_db_host_wrong"}, {"worker_crash_loop"}),
    "worker-port-published+app-down": (
        {"worker_port_published", "app_unreachable"},
        {"service_not_running", "cron_not_running"},
    ),
    "worker-wrong-network": ({"worker_wrong_network"}, {"worker_crash_loop"}),
    "worker-debug-command": ({"worker_debug_command", "worker_port_published"}, set()),
    "worker-hand-started": ({"worker_hand_started"}, {"worker_restart_policy"}),
    # upstream's worker exits on every database error: with the database down it crash-loops
    "db-down": (
        {"db_unreachable"},
        {"service_not_running", "app_status_not_ok", "worker_crash_loop", "worker_not_running"},
    ),
    "queue-stalled": ({"queue_stalled", "worker_not_running"}, set()),
    # claimed 30 minutes ago by a worker process that is gone (the running worker started after it)
    "job-overdue": ({"jobs_overdue", "jobs_orphaned"}, set()),
    # the worker loops on the missing relation (upstream's worker exits on every database error)
    "migrations-missing": ({"migrations_missing"}, {"app_status_not_ok", "worker_crash_loop", "worker_not_running"}),
}
# Worth reporting, but a job created now still finishes: the debugger and its published port stop no job.
SYNC_STILL_WORKS = {"worker-debug-command"}


@pytest.mark.parametrize("faults", list(FAULT_CASES))
def test_fault_gives_its_codes(stack_factory, faults):
    required, allowed = FAULT_CASES[faults]
    stack = stack_factory(private_name())
    for fault in faults.split("+"):
        stack.break_(fault)
    result = facts_of(stack)
    found = codes(result)
    assert required <= found, result["problems"]
    assert found <= required | allowed, result["problems"]
    assert result["sync_ready"] is (faults in SYNC_STILL_WORKS), result["problems"]
    for problem in result["problems"]:
        assert problem["remedy"]
        assert problem["severity"] in ("critical", "error", "warning")
    dumped = result["_stdout"]
    for secret in stack.secrets():
        assert secret not in dumped


def test_locked_project_is_not_a_stalled_queue(stack_factory):
    stack = stack_factory(private_name())
    stack.break_("project-locked")
    result = facts_of(stack)
    queue = result["ansible_facts"]["qfc_sync"]["queue"]
    assert queue["locked_projects"] == 1
    assert queue["counts_by_status"]["pending"] == 1
    assert queue["claimable_pending"] == 0
    assert result["problems"] == []
    assert result["sync_ready"] is True


def test_legacy_generation(stack_factory):
    stack = stack_factory(private_name(), legacy=True)
    result = facts_of(stack)
    assert result["problems"] == []
    assert result["sync_ready"] is True
    qfc = result["ansible_facts"]["qfc_sync"]
    assert qfc["database"]["generation"] == "core_project"
    assert qfc["database"]["lock_column"] == "is_locked"
    assert [i["variable"] for i in qfc["images"]["qgis"]] == ["QFIELDCLOUD_QGIS_IMAGE_NAME"]
    stack.break_("job-overdue")
    stack.break_("project-locked")
    result = facts_of(stack)
    assert codes(result) == {"jobs_overdue", "jobs_orphaned"}
    assert result["ansible_facts"]["qfc_sync"]["queue"]["locked_projects"] == 1


def test_second_stack_does_not_leak(standin, stack_factory):
    other = stack_factory(private_name())
    other.break_("worker-hand-started")
    mine = facts_of(standin)
    assert mine["problems"] == []
    qfc = mine["ansible_facts"]["qfc_sync"]
    assert qfc["worker"]["hand_started"] == []
    names = [r["name"] for r in qfc["worker"]["replicas"]]
    assert names == [f"{standin.name}-worker_wrapper-1"]
    theirs = facts_of(other)
    assert "worker_hand_started" in codes(theirs)
    hand = theirs["ansible_facts"]["qfc_sync"]["worker"]["hand_started"]
    assert [h["name"] for h in hand] == [f"{other.name}-worker"]
