# SPDX-License-Identifier: GPL-3.0-or-later
"""Unit tests of problem detection on plain facts."""

from __future__ import annotations

import copy
import importlib
import importlib.util
import inspect
import re
import sys
from pathlib import Path

import pytest
from builders import CRASH_LOG, HEALTHY, REPLICA, UNRESOLVED, crash_replica

from ansible_collections.fibreflow.qfieldcloud.plugins.module_utils import codes as codes_mod
from ansible_collections.fibreflow.qfieldcloud.plugins.module_utils import orphans, stack, sync_facts
from ansible_collections.fibreflow.qfieldcloud.plugins.module_utils import problems as pb
from ansible_collections.fibreflow.qfieldcloud.plugins.module_utils import worker_spec as ws
from ansible_collections.fibreflow.qfieldcloud.plugins.module_utils.redact import MASK, Redactor


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
    assert set(problem) == {"code", "severity", "blocks", "summary", "evidence", "remedy", "repaired_by"}
    assert problem["repaired_by"] == "site.yml"
    assert problem["severity"] == "critical"
    assert problem["blocks"] == "sync"
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
    # A published port, the debugger and an unexpected image are worth fixing, but a job created now finishes.
    assert pb.sync_ready(problems) is (code in ("worker_port_published", "worker_debug_command", "worker_image_wrong"))


def test_restart_policy_is_a_warning(facts):
    set_replica(facts, restart_policy="no")
    problems = pb.detect_problems(facts)
    assert [p["code"] for p in problems] == ["worker_restart_policy"]
    assert pb.sync_ready(problems)


def test_log_signs(facts):
    facts["worker"]["replicas"][0]["log"] = {"socket_denied": 2, "host_unresolved": 5, "relation_missing": 1}
    assert codes(facts) == ["migrations_missing", "worker_db_host_wrong", "worker_socket_denied"]


def test_crash_loop(facts):
    set_replica(facts, state="restarting", running=False, restart_count=7, recent_deaths=7, healthy_now=False)
    assert codes(facts) == ["worker_crash_loop", "worker_not_running"]
    # Upstream's worker exits on every database error: a high lifetime count alone is history.
    facts = copy.deepcopy(HEALTHY)
    set_replica(facts, restart_count=400, recent_deaths=0, healthy_now=True)
    assert codes(facts) == []
    # Died 4 times in the window and not in a healthy dequeue loop now: a crash loop that blocks sync.
    set_replica(facts, restart_count=400, recent_deaths=4, healthy_now=False)
    problems = pb.detect_problems(facts)
    assert [p["code"] for p in problems] == ["worker_crash_loop"]
    assert problems[0]["evidence"]["deaths_in_window"] == 4
    assert not pb.sync_ready(problems)
    # The same deaths, but the current process dequeues: it recovered (e.g. after migrate ran).
    set_replica(facts, recent_deaths=4, healthy_now=True)
    assert codes(facts) == []
    # The events rotated out of Docker's buffer, but its last process ended 40 s ago and this one is unhealthy.
    set_replica(facts, restart_count=2, recent_deaths=0, last_exit_age_s=40.0, healthy_now=False)
    assert codes(facts) == ["worker_crash_loop"]
    # A stopped worker is not looping, whatever its recent deaths: worker_not_running says it.
    set_replica(facts, running=False, state="exited", recent_deaths=5, healthy_now=False)
    assert "worker_crash_loop" not in codes(facts)


def test_crash_loop_beside_a_healthy_replica_does_not_block_sync(facts):
    second = dict(copy.deepcopy(REPLICA), name="qfieldcloud-worker_wrapper-2", recent_deaths=5, healthy_now=False)
    facts["worker"]["replicas"][0]["healthy_now"] = True
    facts["worker"]["replicas"].append(second)
    facts["worker"]["replicas_expected"] = 2
    problems = pb.detect_problems(facts)
    assert [p["code"] for p in problems] == ["worker_crash_loop"]
    assert problems[0]["blocks"] == "none"
    assert pb.sync_ready(problems)


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
    assert pb.sync_ready(problems)  # it has all a job needs: jobs finish, but the next compose up fights it


def test_hand_started_worker_that_breaks_jobs_is_critical(facts):
    hand = dict(copy.deepcopy(REPLICA), name="qfieldcloud-worker", compose=False, drift=[])
    hand["gaps"] = ["bind:/tmp", "volume:/transformation_grids"]
    hand["breaks_jobs"] = True
    facts["worker"]["hand_started"] = [hand]
    problems = pb.detect_problems(facts)
    assert [(p["code"], p["severity"], p["blocks"]) for p in problems] == [("worker_hand_started", "critical", "sync")]
    assert problems[0]["evidence"]["lacks"] == {"qfieldcloud-worker": hand["gaps"]}
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


def test_cron_is_judged_by_its_own_log(facts):
    facts["cron"].update(log_readable=True, ofelia_present=True, ofelia_running=False, last_run_age_s=30)
    assert codes(facts) == []  # whatever runs the crons, they ran 30 s ago
    facts["cron"].update(ofelia_running=True, ofelia_stale=True)
    assert codes(facts) == []  # ofelia addresses app by name: a recreated app keeps its crons
    facts["cron"].update(last_run_age_s=3600, ofelia_up_s=7200)
    problems = pb.detect_problems(facts)
    assert [(p["code"], p["severity"]) for p in problems] == [("cron_not_running", "error")]
    assert pb.sync_ready(problems)  # jobs still run
    facts["cron"]["ofelia_up_s"] = 20
    assert codes(facts) == []  # just restarted: its first run is still to come
    facts["cron"].update(ofelia_present=False, ofelia_running=False, ofelia_up_s=None)
    problems = pb.detect_problems(facts)
    assert [(p["code"], p["severity"]) for p in problems] == [("cron_not_running", "warning")]
    facts["cron"]["checked"] = False
    assert codes(facts) == []


def test_cron_without_its_log_falls_back_to_ofelia(facts):
    facts["cron"].update(log_readable=False, ofelia_present=True, ofelia_running=False)
    assert codes(facts) == ["cron_not_running"]
    facts["cron"].update(ofelia_running=True)
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
    doc = Path(__file__).resolve().parents[4] / "docs" / "problems.md"
    text = doc.read_text(encoding="utf-8")
    for code in pb.CATALOGUE:
        assert f"`{code}`" in text, f"{code} missing from docs/problems.md"
    # The table is the generated one (regenerate: keep the header, append problems.catalogue_markdown()).
    assert text.endswith("\n\n" + pb.catalogue_markdown()), "docs/problems.md is not problems.catalogue_markdown()"


def test_every_code_says_what_repairs_it():
    for code, entry in pb.CATALOGUE.items():
        assert "repaired_by" in entry, code
        assert entry["repaired_by"] in pb.REPAIRED_BY, code
        # a playbook that repairs it is named in its remedy, the same way the closing message of diagnose.yml names it
        if entry["repaired_by"] is not None:
            assert pb.REPAIR_COMMAND[entry["repaired_by"]] in entry["remedy"], code
    # what the playbooks cannot repair: Docker itself, settings and data only a person can choose
    for code in (
        "docker_unreachable",
        "worker_timeout_empty",
        "qgis_network_missing",
        "shared_environment_label",
        "db_auth_failed",
        "db_is_replica",
        "migrations_missing",
        "nginx_host_mismatch",
        "drain_timeout",
    ):
        assert pb.CATALOGUE[code]["repaired_by"] is None, code
    for code in ("worker_not_running", "worker_socket_denied", "worker_db_host_wrong", "qgis_image_missing"):
        assert pb.CATALOGUE[code]["repaired_by"] == "site.yml", code
    assert pb.CATALOGUE["orphan_job_containers"]["repaired_by"] == "maintenance.yml"
    docs = pb.catalogue_markdown()
    assert "- **Repaired by:** no playbook of the collection: follow the remedy" in docs
    assert "- **Repaired by:** `ansible-playbook fibreflow.qfieldcloud.site`" in docs


def test_problem_carries_what_repairs_it(facts):
    facts["daemon"] = {"reachable": False, "docker_host": "unix:///nowhere.sock", "error": "refused"}
    problems = pb.detect_problems(facts)
    assert [(p["code"], p["repaired_by"]) for p in problems] == [("docker_unreachable", None)]


def test_summaries_and_remedies_quote_with_backticks_not_single_quotes():
    # A one-line message with ": " in it is rendered by Ansible's YAML output in single quotes, which doubles
    # every single quote inside it (worker''s, ''error''): the texts people read in results have none.
    for code, entry in pb.CATALOGUE.items():
        for field in ("summary", "remedy"):
            assert "'" not in entry[field], (code, field, entry[field])
    for name, value in vars(pb).items():
        if name.isupper() and isinstance(value, str):
            assert "'" not in value, name


def test_empty_worker_timeout_is_critical(facts):
    facts["worker_timeout"] = {"empty_in": [".env", "worker_wrapper"]}
    problems = pb.detect_problems(facts)
    assert [(p["code"], p["blocks"]) for p in problems] == [("worker_timeout_empty", "sync")]
    assert problems[0]["evidence"]["empty_in"] == [".env", "worker_wrapper"]
    assert "QFIELDCLOUD_WORKER_TIMEOUT_S=600" in problems[0]["remedy"]


def test_missing_job_network_blocks_sync(facts):
    facts["job_network"] = {"name": "qfc_jobs", "exists": False}
    facts["project"]["job_network_source"] = "QFIELDCLOUD_DEFAULT_NETWORK"
    problems = pb.detect_problems(facts)
    assert [p["code"] for p in problems] == ["qgis_network_missing"]
    assert problems[0]["evidence"] == {"network": "qfc_jobs", "source": "QFIELDCLOUD_DEFAULT_NETWORK"}
    assert not pb.sync_ready(problems)
    facts["job_network"] = {"name": "qfc_jobs", "exists": True}
    assert codes(facts) == []


def test_two_instances_with_one_environment(facts):
    facts["project"]["environment"] = "production"
    facts["shared_environment"] = [{"name": "other-worker_wrapper-1", "project": "other", "environment": "production"}]
    problems = pb.detect_problems(facts)
    assert [p["code"] for p in problems] == ["shared_environment_label"]
    evidence = problems[0]["evidence"]
    assert evidence["other_projects"] == ["other"]
    assert evidence["job_label"] == "app=production_worker"
    assert not pb.sync_ready(problems)


def test_missing_qgis4_image_matters_only_for_qgis4_projects(facts):
    facts["images"]["qgis"].append(
        {"variable": "QFIELDCLOUD_QGIS4_IMAGE_NAME", "name": "qfieldcloud-qgis4", "present": False}
    )
    facts["queue"]["qgis4_projects"] = 0
    problems = pb.detect_problems(facts)
    assert [(p["code"], p["severity"], p["blocks"]) for p in problems] == [("qgis_image_missing", "warning", "none")]
    facts["queue"]["qgis4_projects"] = 2
    problems = pb.detect_problems(facts)
    assert [(p["code"], p["severity"], p["blocks"]) for p in problems] == [("qgis_image_missing", "critical", "sync")]


def test_missing_worker_image_beside_a_running_worker_does_not_block(facts):
    facts["images"]["worker"]["present"] = False
    problems = pb.detect_problems(facts)
    assert [(p["code"], p["severity"], p["blocks"]) for p in problems] == [("worker_image_missing", "error", "none")]
    facts["worker"]["replicas"] = []
    problems = pb.detect_problems(facts)
    assert sorted((p["code"], p["blocks"]) for p in problems) == [
        ("worker_image_missing", "sync"),
        ("worker_not_running", "sync"),
    ]


def test_nginx_down_blocks_the_client_not_sync(facts):
    facts["services"]["nginx"].update(running=0, state="exited")
    problems = pb.detect_problems(facts)
    assert [(p["code"], p["blocks"]) for p in problems] == [("service_not_running", "client")]
    assert pb.sync_ready(problems) and not pb.client_ready(problems)
    assert pb.blocking_codes(problems, "client") == ["service_not_running"]


def test_every_catalogue_entry_says_what_it_blocks():
    for code, entry in pb.CATALOGUE.items():
        assert entry["blocks"] in pb.BLOCKS, code
        if entry["severity"] == "critical":
            assert entry["blocks"] in ("sync", "client"), code


# ------------------------------------------------------------------------------------------------ log evidence
def test_worker_problem_carries_the_log_lines_that_explain_it():
    facts = copy.deepcopy(HEALTHY)
    facts["worker"]["replicas"] = [
        crash_replica(
            stack.log_excerpt(CRASH_LOG),
        )
    ]
    facts["worker"]["replicas_running"] = 0
    found = {p["code"]: p for p in pb.detect_problems(facts)}
    log = found["worker_db_host_wrong"]["evidence"]["log"]
    assert any(line.startswith(UNRESOLVED) for line in log)
    assert all(not line.startswith("xxx") for line in log)  # only the lines that explain this problem
    assert len(log) <= pb.LOG_EVIDENCE_LINES
    assert f"{UNRESOLVED} (repeated" in " ".join(log)  # a crash loop's repeats are counted, not listed
    crash = found["worker_crash_loop"]["evidence"]["log"]
    assert any(line.startswith("xxx") for line in crash)  # any fault sign explains a crash loop


def test_stopped_worker_carries_the_last_lines_of_its_log():
    facts = copy.deepcopy(HEALTHY)
    rep = crash_replica(
        [],
        state="exited",
        restart_count=0,
        log=None,
        log_tail=["Dequeue stopped"],
    )
    facts["worker"]["replicas"] = [rep]
    facts["worker"]["replicas_running"] = 0
    problem = next(p for p in pb.detect_problems(facts) if p["code"] == "worker_not_running")
    assert problem["evidence"]["containers"][0]["log"] == ["Dequeue stopped"]


def test_collapse_repeats_keeps_the_order_of_last_occurrence():
    assert pb.collapse_repeats(["a", "b", "a", "c"]) == ["b", "a (repeated 2 times)", "c"]


def test_log_lines_are_redacted_with_the_rest():
    secret = "pw-0123456789abcdef"
    line = f"could not translate host name: postgresql://qfc:{secret}@postgres/qfieldcloud_db"
    facts = copy.deepcopy(HEALTHY)
    facts["worker"]["replicas"] = [crash_replica(stack.log_excerpt(line))]
    redactor = Redactor([secret])
    found = redactor.value(pb.detect_problems(facts))
    log = next(p for p in found if p["code"] == "worker_db_host_wrong")["evidence"]["log"]
    assert secret not in str(found) and MASK in log[0]


# ------------------------------------------------------------------------------------------------ client
def client_facts(**client):
    facts = copy.deepcopy(HEALTHY)
    facts["client"] = {
        "checked": True,
        "host": "qfc.example.org",
        "nginx_host": "qfc.example.org",
        "local_host": False,
        "url": "http://qfc.example.org:8080",
        "via": "nginx",
        "connect_host": "127.0.0.1",
        "connect_port": 8080,
        "host_header": "qfc.example.org:8080",
        "ok": True,
        **client,
    }
    return facts


def test_client_ok_is_no_problem():
    assert set(codes(client_facts())) == set()


def test_nginx_with_an_old_host_is_a_mismatch():
    facts = client_facts(host="new.example.org", nginx_host="qfc.example.org", ok=False, error="closed")
    found = pb.detect_problems(facts)
    assert [p["code"] for p in found] == ["nginx_host_mismatch"]
    assert found[0]["evidence"]["nginx_host"] == "qfc.example.org"
    assert "up -d --no-deps nginx app" in found[0]["remedy"]
    # Jobs still run; devices cannot reach the server: the client verdict fails, not the sync one.
    assert pb.sync_ready(found)
    assert not pb.client_ready(found)


def test_client_unreachable_otherwise():
    assert set(codes(client_facts(ok=False, http_status=502, error="HTTP 502"))) == {"client_url_unreachable"}
    assert set(codes(client_facts(url=None, via=None, connect_host=None, ok=False))) == {"client_url_unreachable"}


def test_client_failure_explained_elsewhere_is_not_repeated():
    facts = client_facts(ok=False)
    facts["app"] = {"checked": True, "reachable": False, "error": "refused"}
    assert "client_url_unreachable" not in codes(facts)
    facts = client_facts(ok=False, url=None)
    facts["services"]["nginx"].update(running=0, state="exited")
    assert "client_url_unreachable" not in codes(facts)


def test_local_host_is_a_warning():
    found = pb.detect_problems(client_facts(host="localhost", nginx_host="localhost", local_host=True))
    assert [(p["code"], p["severity"]) for p in found] == [("client_host_local", "warning")]
    assert pb.sync_ready(found)


def test_unchecked_client_yields_nothing():
    assert set(codes(client_facts(checked=False, ok=False))) == set()


# ------------------------------------------------------------------------------------------------ one catalogue
MODULE_UTILS = "ansible_collections.fibreflow.qfieldcloud.plugins"
DETECTORS = [(code, name) for code, entry in pb.CATALOGUE.items() for name in entry["detectors"]]


def resolve_detector(name):
    """The function a detector name points at; a name whose module or function does not exist fails."""
    kind, _sep, rest = name.rpartition("/")
    module, _dot, function = rest.rpartition(".")
    dotted = f"{MODULE_UTILS}.{kind or 'module_utils'}.{module}"
    assert importlib.util.find_spec(dotted) is not None, f"{name}: there is no module {dotted}"
    found = getattr(importlib.import_module(dotted), function, None)
    assert found is not None, f"{dotted} has no {function}"
    return found


@pytest.mark.parametrize(("code", "name"), DETECTORS, ids=[f"{c}-{n}" for c, n in DETECTORS])
def test_each_detector_raises_its_code_through_the_constant(code, name):
    function = resolve_detector(name)
    assert f"codes.CODE_{code.upper()}" in inspect.getsource(function)


def test_every_entry_names_its_detectors_and_the_skip_options_that_hide_it():
    for code, entry in pb.CATALOGUE.items():
        assert entry["detectors"] and all(isinstance(n, str) and "." in n for n in entry["detectors"]), code
        assert isinstance(entry["hidden_by"], tuple), code
        assert set(entry["hidden_by"]) <= set(sync_facts.CHECKS), code
        assert pb.hidden_by(code) == entry["hidden_by"]
    assert set(pb.CATALOGUE) == set(codes_mod.ALL)
    assert pb.hidden_by("no_such_code") == ()
    # The codes qfc_sync_facts never raises: qfc_worker's own and the verify role's.
    assert set(pb.CATALOGUE) - set(pb.FACTS_CODES) == {
        codes_mod.CODE_WORKER_CONFIG_NOT_PERSISTENT,
        codes_mod.CODE_WORKER_SHOULD_BE_STOPPED,
        codes_mod.CODE_DRAIN_TIMEOUT,
        codes_mod.CODE_VERIFY_FAILED,
    }


def test_the_worker_and_verify_codes_say_what_they_block():
    entry = pb.CATALOGUE
    # The override is missing: jobs run, a later compose up may undo the repair.
    assert (entry["worker_config_not_persistent"]["severity"], entry["worker_config_not_persistent"]["blocks"]) == (
        "warning",
        "none",
    )
    # The module refused to stop a busy worker and changed nothing: the worker goes on with its job.
    assert entry["drain_timeout"]["blocks"] == "none"
    assert entry["worker_should_be_stopped"]["blocks"] == "none"
    # The end-to-end probe failed: a job created now did not finish.
    assert (entry["verify_failed"]["severity"], entry["verify_failed"]["blocks"]) == ("critical", "sync")


def test_every_drift_code_of_a_replica_is_raised():
    """A drift code that worker_spec.worker_drift gains must reach the problems (or be judged elsewhere)."""
    drift_codes = set(re.findall(r"codes\.(CODE_[A-Z_]+)", inspect.getsource(ws.worker_drift)))
    raised = set(re.findall(r"codes\.(CODE_[A-Z_]+)", inspect.getsource(pb._detect_replica_drift)))
    assert drift_codes - {"CODE_WORKER_NOT_RUNNING"} <= raised
    assert "CODE_WORKER_NOT_RUNNING" in inspect.getsource(pb._detect_replica_count)


def _drift(facts, expected=None, **changes):
    rep = facts["worker"]["replicas"][0]
    rep.update(changes)
    rep["drift"] = ws.worker_drift(rep, expected or ws.expected_worker("qfieldcloud", db_host="db"))


def _hand(facts, **extra):
    facts["worker"]["hand_started"] = [dict(copy.deepcopy(REPLICA), name="qfieldcloud-worker", compose=False, **extra)]


def _log(facts, **signs):
    facts["worker"]["replicas"][0]["log"] = dict(signs, dequeue_banner=True)


def _orphaned(facts):
    """A queued job older than the one running worker process, which names no job: its claimant is gone."""
    started = "2026-11-29T08:25:15Z"
    since = orphans.docker_time(started) - 120
    facts["worker"]["replicas"][0]["started_at"] = started
    row = {"id": "j1", "status": "queued", "type": "package", "project_id": "p1", "deltas": 0}
    facts["queue"]["in_flight_jobs"] = [dict(row, created_at=since - 5, started_at=None, since=since)]


# (code, detector) -> a small change of HEALTHY that makes detect_problems raise the code there.
CASES = {
    ("docker_unreachable", "problems.detect_problems"): lambda f: f.update(daemon={"reachable": False, "error": "x"}),
    ("stack_not_found", "problems.detect_problems"): lambda f: (
        f.update(services={}),
        f["worker"].update(replicas=[]),
    ),
    ("service_not_running", "problems._detect_services"): lambda f: f["services"]["memcached"].update(running=0),
    ("worker_not_running", "problems._detect_replica_count"): lambda f: f["worker"].update(replicas=[]),
    ("worker_image_missing", "problems._detect_worker_image"): lambda f: f["images"]["worker"].update(present=False),
    ("worker_image_wrong", "problems._detect_replica_drift"): lambda f: _drift(
        f, ws.expected_worker("qfieldcloud", db_host="db", image="qfieldcloud-worker_wrapper"), image="python:3"
    ),
    ("worker_image_outdated", "problems._detect_replica_drift"): lambda f: _drift(
        f, ws.expected_worker("qfieldcloud", db_host="db", image="qfieldcloud-worker_wrapper", image_id="sha256:new")
    ),
    ("worker_socket_denied", "problems._detect_replica_drift"): lambda f: _drift(f, user="10001"),
    ("worker_socket_denied", "problems._detect_log_signs"): lambda f: _log(f, socket_denied=3),
    ("worker_socket_not_mounted", "problems._detect_replica_drift"): lambda f: _drift(f, socket_mount={}),
    ("worker_db_host_wrong", "problems._detect_replica_drift"): lambda f: _drift(f, postgres_host="dbx"),
    ("worker_db_host_wrong", "problems._detect_log_signs"): lambda f: _log(f, host_unresolved=5),
    ("worker_port_published", "problems._detect_replica_drift"): lambda f: _drift(f, published_ports=["5679"]),
    ("worker_wrong_network", "problems._detect_replica_drift"): lambda f: _drift(f, networks=["bridge"]),
    ("worker_crash_loop", "problems._detect_crash_loop"): lambda f: f["worker"]["replicas"][0].update(
        state="restarting", running=False, restart_count=7
    ),
    ("worker_debug_command", "problems._detect_replica_drift"): lambda f: _drift(
        f, command="python -m debugpy manage.py dequeue"
    ),
    ("worker_command_wrong", "problems._detect_replica_drift"): lambda f: _drift(f, command=["sleep", "inf"]),
    ("worker_restart_policy", "problems._detect_replica_drift"): lambda f: _drift(f, restart_policy="no"),
    ("worker_replicas_low", "problems._detect_replica_count"): lambda f: f["worker"].update(replicas_expected=2),
    ("worker_replicas_high", "problems._detect_replica_count"): lambda f: f["worker"].update(replicas_expected=0),
    ("worker_hand_started", "problems._detect_hand_started"): lambda f: _hand(f, drift=[]),
    ("worker_timeout_empty", "problems._detect_worker_timeout"): lambda f: f.update(
        worker_timeout={"empty_in": [".env"]}
    ),
    ("qgis_network_missing", "problems._detect_job_network"): lambda f: f.update(
        job_network={"name": "qfc_jobs", "exists": False}
    ),
    ("shared_environment_label", "problems._detect_shared_environment"): lambda f: f.update(
        shared_environment=[{"name": "other-worker_wrapper-1", "project": "other", "environment": "production"}]
    ),
    ("qgis_image_missing", "problems._detect_qgis_images"): lambda f: f["images"]["qgis"][0].update(present=False),
    ("queue_stalled", "problems._detect_queue"): lambda f: f["queue"].update(oldest_claimable_pending_age_s=900.0),
    ("jobs_overdue", "problems._detect_queue"): lambda f: f["queue"].update(overdue_started=1),
    ("jobs_orphaned", "problems._detect_queue"): _orphaned,
    ("jobs_failing", "problems._detect_queue"): lambda f: f["queue"].update(failed_last_hour=5),
    ("db_unreachable", "problems._detect_database"): lambda f: f["database"].update(reachable=False),
    ("db_auth_failed", "problems._detect_database"): lambda f: f["database"].update(reachable=False, error_kind="auth"),
    ("db_is_replica", "problems._detect_database"): lambda f: f["database"].update(in_recovery=True),
    ("migrations_missing", "problems._detect_database"): lambda f: f["database"].update(tables_present=False),
    ("migrations_missing", "problems._detect_log_signs"): lambda f: _log(f, relation_missing=1),
    ("app_unreachable", "problems._detect_app"): lambda f: f["app"].update(reachable=False),
    ("app_status_not_ok", "problems._detect_app"): lambda f: f["app"].update(ok=False),
    ("nginx_host_mismatch", "problems._detect_client"): lambda f: f.update(
        client=client_facts(host="new.example.org", ok=False)["client"]
    ),
    ("client_url_unreachable", "problems._detect_client"): lambda f: f.update(client=client_facts(ok=False)["client"]),
    ("client_host_local", "problems._detect_client"): lambda f: f.update(
        client=client_facts(host="localhost", nginx_host="localhost", local_host=True)["client"]
    ),
    ("cron_not_running", "problems._detect_cron"): lambda f: f["cron"].update(ofelia_running=False),
    ("orphan_job_containers", "problems._detect_orphans"): lambda f: f.update(orphan_job_containers=[{"name": "c1"}]),
}
FACTS_DETECTORS = [(code, name) for code, name in DETECTORS if name.startswith(pb.FACTS_DETECTOR)]


def test_every_code_of_the_facts_has_a_case_for_each_of_its_detectors():
    assert set(FACTS_DETECTORS) == set(CASES)
    assert {code for code, _name in FACTS_DETECTORS} == set(pb.FACTS_CODES)


@pytest.mark.parametrize(("code", "name"), FACTS_DETECTORS, ids=[f"{c}-{n}" for c, n in FACTS_DETECTORS])
def test_each_code_of_the_facts_is_raised_by_its_named_detector(monkeypatch, code, name):
    raised = []
    add = pb._Collector.add

    def spy(self, found, *args, **kwargs):
        raised.append((found, sys._getframe(1).f_code.co_name))
        return add(self, found, *args, **kwargs)

    monkeypatch.setattr(pb._Collector, "add", spy)
    facts = copy.deepcopy(HEALTHY)
    CASES[(code, name)](facts)
    assert code in {p["code"] for p in pb.detect_problems(facts)}
    assert (code, name.rpartition(".")[2]) in raised, raised


@pytest.mark.parametrize(("code", "name"), FACTS_DETECTORS, ids=[f"{c}-{n}" for c, n in FACTS_DETECTORS])
def test_the_catalogue_names_every_evidence_key_a_problem_carries(code, name):
    facts = copy.deepcopy(HEALTHY)
    CASES[(code, name)](facts)
    problem = next(p for p in pb.detect_problems(facts) if p["code"] == code)
    documented = pb.CATALOGUE[code]["evidence"]
    missing = [key for key in problem["evidence"] if f"`{key}`" not in documented]
    assert not missing, f"{code}: evidence keys {missing} are not described in the catalogue's evidence"
