# SPDX-License-Identifier: GPL-3.0-or-later
"""Unit tests of problem detection on plain facts."""

from __future__ import annotations

import copy
import re
from pathlib import Path

import pytest

from ansible_collections.fibreflow.qfieldcloud.plugins.module_utils import problems as pb
from ansible_collections.fibreflow.qfieldcloud.plugins.module_utils import worker_spec as ws

REPLICA = {
    "name": "qfieldcloud-worker_wrapper-1",
    "compose": True,
    "user": "root",
    "image_user": "10001",
    "networks": ["qfieldcloud_default"],
    "published_ports": [],
    "postgres_host": "db",
    "socket_mount": {"present": True, "rw": True, "source": "/var/run/docker.sock"},
    "command": ["python", "manage.py", "dequeue"],
    "image": "qfieldcloud-worker_wrapper",
    "image_id": "sha256:w",
    "restart_policy": "unless-stopped",
    "running": True,
    "state": "running",
    "restart_count": 0,
    "log": {"dequeue_banner": True, "dequeued_jobs": 0},
}

HEALTHY = {
    "project": {
        "name": "qfieldcloud",
        "dir": "/srv/qfc",
        "network": "qfieldcloud_default",
        "environment": "production",
    },
    "thresholds": {"pending_age_s": 300, "job_timeout_s": 600, "cron_max_age_s": 300, "crash_restarts": 3},
    "daemon": {"reachable": True, "version": "20.10.24"},
    "services": {
        "app": {"present": True, "containers": 1, "running": 1, "state": "running"},
        "db": {"present": True, "containers": 1, "running": 1, "state": "running"},
        "memcached": {"present": True, "containers": 1, "running": 1, "state": "running"},
        "nginx": {"present": True, "containers": 1, "running": 1, "state": "running"},
        "ofelia": {"present": True, "containers": 1, "running": 1, "state": "running"},
        "worker_wrapper": {"present": True, "containers": 1, "running": 1, "state": "running"},
    },
    "worker": {
        "replicas_expected": 1,
        "replicas_running": 1,
        "replicas": [dict(REPLICA, drift=[])],
        "hand_started": [],
    },
    "images": {
        "worker": {"name": "qfieldcloud-worker_wrapper", "present": True},
        "qgis": [{"variable": "QFIELDCLOUD_QGIS3_IMAGE_NAME", "name": "qfieldcloud-qgis3", "present": True}],
    },
    "database": {"checked": True, "reachable": True, "in_recovery": False, "tables_present": True, "host": "db"},
    "queue": {
        "checked": True,
        "claimable_pending": 0,
        "oldest_claimable_pending_age_s": None,
        "overdue_queued": 0,
        "overdue_started": 0,
        "failed_last_hour": 0,
        "finished_last_hour": 3,
    },
    "app": {"checked": True, "reachable": True, "ok": True, "http_status": 200, "status": {"database": "ok"}},
    "cron": {
        "checked": True,
        "ofelia_present": True,
        "ofelia_running": True,
        "ofelia_stale": False,
        "last_run_age_s": 30,
    },
    "orphan_job_containers": [],
}


@pytest.fixture
def facts():
    return copy.deepcopy(HEALTHY)


def codes(facts):
    return sorted(p["code"] for p in pb.detect_problems(facts))


def set_replica(facts, **changes):
    rep = facts["worker"]["replicas"][0]
    rep.update(changes)
    rep["drift"] = ws.worker_drift(rep, ws.expected_worker("qfieldcloud", db_host="db"))
    return rep


def test_healthy_has_no_problems(facts):
    problems = pb.detect_problems(facts)
    assert problems == []
    assert pb.sync_ready(problems)


def test_problem_shape(facts):
    facts["worker"]["replicas"] = []
    problems = pb.detect_problems(facts)
    assert [p["code"] for p in problems] == ["worker_not_running"]
    problem = problems[0]
    assert set(problem) == {"code", "severity", "summary", "evidence", "remedy"}
    assert problem["severity"] == "critical"
    assert "cd /srv/qfc && docker compose up -d --no-deps worker_wrapper" in problem["remedy"]
    assert not pb.sync_ready(problems)


def test_worker_stopped(facts):
    set_replica(facts, running=False, state="exited")
    assert codes(facts) == ["worker_not_running"]


def test_idle_silent_worker_is_fine(facts):
    facts["worker"]["replicas"][0]["log"] = {"dequeue_banner": False, "dequeued_jobs": 0}
    assert codes(facts) == []


def test_claimable_jobs_waiting_with_silent_worker(facts):
    facts["worker"]["replicas"][0]["log"] = {"dequeue_banner": True, "dequeued_jobs": 0}
    facts["queue"].update(claimable_pending=4, oldest_claimable_pending_age_s=900.0)
    problems = pb.detect_problems(facts)
    assert [p["code"] for p in problems] == ["queue_stalled"]
    assert problems[0]["evidence"]["dequeued_lines_in_worker_logs"] == {"qfieldcloud-worker_wrapper-1": 0}
    assert not pb.sync_ready(problems)


def test_young_pending_job_is_fine(facts):
    facts["queue"].update(claimable_pending=1, oldest_claimable_pending_age_s=12.0)
    assert codes(facts) == []


@pytest.mark.parametrize(
    ("changes", "code"),
    [
        ({"user": "10001"}, "worker_socket_denied"),
        ({"postgres_host": "dbx"}, "worker_db_host_wrong"),
        ({"published_ports": ["0.0.0.0:5679->5679/tcp"]}, "worker_port_published"),
        ({"networks": ["bridge"]}, "worker_wrong_network"),
        ({"command": "python3 -m debugpy --listen 0.0.0.0:5679 manage.py dequeue"}, "worker_debug_command"),
        ({"command": ["sleep", "inf"]}, "worker_command_wrong"),
        ({"socket_mount": {"present": False}}, "worker_socket_not_mounted"),
        ({"image": "python:3"}, "worker_image_wrong"),
    ],
)
def test_worker_drift_becomes_problem(facts, changes, code):
    set_replica(facts, **changes)
    problems = pb.detect_problems(facts)
    assert [p["code"] for p in problems] == [code]
    assert problems[0]["evidence"]["container"] == "qfieldcloud-worker_wrapper-1"
    assert not pb.sync_ready(problems)


def test_restart_policy_is_a_warning(facts):
    set_replica(facts, restart_policy="no")
    problems = pb.detect_problems(facts)
    assert [p["code"] for p in problems] == ["worker_restart_policy"]
    assert pb.sync_ready(problems)


def test_log_signs(facts):
    facts["worker"]["replicas"][0]["log"] = {"socket_denied": 2, "host_unresolved": 5, "relation_missing": 1}
    assert codes(facts) == ["migrations_missing", "worker_db_host_wrong", "worker_socket_denied"]


def test_crash_loop(facts):
    set_replica(facts, state="restarting", running=False, restart_count=7)
    assert codes(facts) == ["worker_crash_loop", "worker_not_running"]
    facts = copy.deepcopy(HEALTHY)
    set_replica(facts, restart_count=4)
    assert codes(facts) == ["worker_crash_loop"]


def test_replicas_low_and_high(facts):
    facts["worker"]["replicas_expected"] = 3
    assert codes(facts) == ["worker_replicas_low"]
    facts["worker"]["replicas_expected"] = 0
    problems = pb.detect_problems(facts)
    assert [p["code"] for p in problems] == ["worker_replicas_high"]
    assert pb.sync_ready(problems)


def test_one_code_per_problem_with_more_evidence(facts):
    second = dict(copy.deepcopy(REPLICA), name="qfieldcloud-worker_wrapper-2")
    facts["worker"]["replicas"].append(second)
    facts["worker"]["replicas_expected"] = 2
    for rep in facts["worker"]["replicas"]:
        rep["user"] = "10001"
        rep["drift"] = ws.worker_drift(rep, ws.expected_worker("qfieldcloud", db_host="db"))
    problems = pb.detect_problems(facts)
    assert [p["code"] for p in problems] == ["worker_socket_denied"]
    assert problems[0]["evidence"]["more"][0]["container"] == "qfieldcloud-worker_wrapper-2"


def test_hand_started_beside_and_instead(facts):
    hand = dict(copy.deepcopy(REPLICA), name="qfieldcloud-worker", compose=False, drift=[])
    facts["worker"]["hand_started"] = [hand]
    problems = pb.detect_problems(facts)
    assert [(p["code"], p["severity"]) for p in problems] == [("worker_hand_started", "warning")]
    facts["worker"]["replicas"] = []
    problems = pb.detect_problems(facts)
    assert [(p["code"], p["severity"]) for p in problems] == [("worker_hand_started", "error")]
    assert not pb.sync_ready(problems)


def test_stopped_hand_started_worker_is_ignored(facts):
    hand = dict(copy.deepcopy(REPLICA), name="qfieldcloud-worker", compose=False, running=False, state="exited")
    hand["drift"] = [{"field": "user", "expected": "root", "actual": "10001", "code": "worker_socket_denied"}]
    facts["worker"]["hand_started"] = [hand]
    assert codes(facts) == []


def test_images_missing(facts):
    facts["images"]["worker"]["present"] = False
    facts["images"]["qgis"][0]["present"] = False
    assert codes(facts) == ["qgis_image_missing", "worker_image_missing"]


def test_database_findings(facts):
    facts["database"].update(reachable=False, error_kind="auth", error="password authentication failed")
    assert codes(facts) == ["db_auth_failed"]
    facts["database"].update(error_kind="unreachable")
    assert codes(facts) == ["db_unreachable"]
    facts["database"].update(reachable=True, in_recovery=True, tables_present=False, missing_tables=["core_job"])
    assert codes(facts) == ["db_is_replica", "migrations_missing"]


def test_queue_not_read_when_db_unreachable(facts):
    facts["database"].update(reachable=False, error_kind="unreachable")
    facts["queue"].update(oldest_claimable_pending_age_s=10000, overdue_queued=3)
    assert codes(facts) == ["db_unreachable"]


def test_overdue_and_failing(facts):
    facts["queue"].update(overdue_queued=1, overdue_started=2, overdue_jobs=[{"id": "x"}], failed_last_hour=5)
    problems = pb.detect_problems(facts)
    assert [p["code"] for p in problems] == ["jobs_overdue", "jobs_failing"]
    assert problems[0]["evidence"]["queued"] == 1
    assert problems[0]["evidence"]["started"] == 2


def test_app_findings(facts):
    facts["app"].update(reachable=False, error="connection refused")
    assert codes(facts) == ["app_unreachable"]
    facts["app"].update(reachable=True, ok=False, status={"database": "error"})
    assert codes(facts) == ["app_status_not_ok"]
    facts["app"]["checked"] = False
    assert codes(facts) == []


def test_cron_findings(facts):
    facts["cron"]["ofelia_running"] = False
    assert codes(facts) == ["cron_not_running"]
    facts["cron"].update(ofelia_running=True, ofelia_stale=True)
    assert codes(facts) == ["cron_not_running"]
    facts["cron"].update(ofelia_stale=False, last_run_age_s=3600)
    assert codes(facts) == ["cron_not_running"]
    facts["cron"]["checked"] = False
    assert codes(facts) == []


def test_orphans_are_a_warning(facts):
    facts["orphan_job_containers"] = [{"name": "c1", "job_id": "j", "state": "exited", "reason": "exited"}]
    problems = pb.detect_problems(facts)
    assert [p["code"] for p in problems] == ["orphan_job_containers"]
    assert pb.sync_ready(problems)


def test_service_down(facts):
    facts["services"]["memcached"].update(running=0, state="exited")
    assert codes(facts) == ["service_not_running"]


def test_daemon_unreachable(facts):
    facts = {"daemon": {"reachable": False, "error": "connection refused"}, "project": HEALTHY["project"]}
    assert codes(facts) == ["docker_unreachable"]


def test_stack_not_found():
    assert codes({"daemon": {"reachable": True}, "services": {}, "worker": {"replicas": []}}) == ["stack_not_found"]


def test_severity_order(facts):
    facts["orphan_job_containers"] = [{"name": "c1"}]
    facts["worker"]["replicas"] = []
    severities = [p["severity"] for p in pb.detect_problems(facts)]
    assert severities == sorted(severities, key=pb.SEVERITIES.index)


def test_catalogue_is_complete_and_documented():
    required = {
        "worker_not_running",
        "worker_image_missing",
        "worker_socket_denied",
        "worker_db_host_wrong",
        "worker_port_published",
        "worker_wrong_network",
        "worker_crash_loop",
        "worker_debug_command",
        "qgis_image_missing",
        "worker_replicas_low",
        "queue_stalled",
        "jobs_overdue",
        "db_unreachable",
        "db_auth_failed",
        "db_is_replica",
        "migrations_missing",
        "app_status_not_ok",
        "app_unreachable",
        "cron_not_running",
        "orphan_job_containers",
        "worker_hand_started",
    }
    assert required <= set(pb.CATALOGUE)
    for code, entry in pb.CATALOGUE.items():
        assert re.fullmatch(r"[a-z][a-z0-9_]+", code)
        assert entry["severity"] in pb.SEVERITIES
        assert all(entry[field] for field in pb.DOC_FIELDS)
    # every drift code of worker_spec is a catalogue code
    for name in dir(ws):
        if name.startswith("CODE_"):
            assert getattr(ws, name) in pb.CATALOGUE
    doc = Path(__file__).resolve().parents[3] / "docs" / "problems.md"
    text = doc.read_text(encoding="utf-8")
    for code in pb.CATALOGUE:
        assert f"`{code}`" in text, f"{code} missing from docs/problems.md"
