# SPDX-License-Identifier: GPL-3.0-or-later
"""Unit tests of the drift report callback (assembly, outcomes, Markdown, redaction) and of qfc-drift-check."""

from __future__ import annotations

import importlib.machinery
import importlib.util
import json
from pathlib import Path

import pytest
from builders import UNRESOLVED

from ansible_collections.fibreflow.qfieldcloud.plugins.callback import drift_report as dr
from ansible_collections.fibreflow.qfieldcloud.plugins.module_utils import problems as pb
from ansible_collections.fibreflow.qfieldcloud.plugins.module_utils import sync_facts
from ansible_collections.fibreflow.qfieldcloud.plugins.module_utils.redact import MASK, Redactor

REPO = Path(__file__).resolve().parents[4]
SECRET = "s3cr3t-Pa55word-value"

PROBLEM_SOCKET = {
    "code": "worker_socket_denied",
    "severity": "critical",
    "summary": "The worker cannot use the Docker socket",
    "evidence": {"user": "10001"},
    "remedy": "ansible-playbook fibreflow.qfieldcloud.site",
}
PROBLEM_QGIS = {
    "code": "qgis_image_missing",
    "severity": "critical",
    "summary": "A QGIS image is missing",
    "evidence": {"images": ["qfieldcloud-qgis3"]},
    "remedy": "docker compose build qgis3",
}
DRIFT_USER = {
    "replica": "qfieldcloud-worker_wrapper-1",
    "field": "user",
    "expected": "root",
    "actual": "10001",
    "code": "worker_socket_denied",
}


def facts(problems, skip=(), task="Read the state", report_task=False):
    return {
        "kind": "facts",
        "task": task,
        "role": None,
        "action": "fibreflow.qfieldcloud.qfc_sync_facts",
        "changed": False,
        "report_task": report_task,
        "result": {
            "problems": problems,
            "sync_ready": not problems,
            "invocation": {"module_args": {"skip": list(skip)}},
        },
    }


def worker(drift, changed=True, failed=False, actions=("recreate qfieldcloud-worker_wrapper-1 (after drain)",)):
    return {
        "kind": "worker",
        "task": "Enforce the worker",
        "role": "fibreflow.qfieldcloud.worker",
        "action": "fibreflow.qfieldcloud.qfc_worker",
        "changed": changed,
        "failed": failed,
        "result": {"drift": drift, "actions": list(actions), "changed": changed},
    }


def changed_task(name="Start the app", role="fibreflow.qfieldcloud.startup", report_task=False):
    return {
        "kind": "changed",
        "task": name,
        "role": role,
        "action": "docker_compose_v2",
        "changed": True,
        "report_task": report_task,
    }


RECAP_OK = {"ok": 10, "changed": 0, "failures": 0, "unreachable": 0, "skipped": 1, "rescued": 0, "ignored": 0}


def report(events, check_mode=True, stats=None, redactor=None, **meta):
    return dr.build_report(
        events,
        stats if stats is not None else {host: dict(RECAP_OK) for host in events},
        {"playbook": "drift_check.yml", "check_mode": check_mode, "run_id": "abc", **meta},
        redactor,
    )


# -------------------------------------------------------------------------------------------- recognising results


@pytest.mark.parametrize(
    ("action", "result", "kind"),
    [
        ("fibreflow.qfieldcloud.qfc_sync_facts", {}, "facts"),
        ("qfc_sync_facts", {}, "facts"),
        ("fibreflow.qfieldcloud.qfc_worker", {}, "worker"),
        ("some.other.module", {"problems": [], "sync_ready": True}, "facts"),
        ("some.other.module", {"drift": [], "actions": []}, "worker"),
        ("ansible.builtin.debug", {"msg": "problems"}, None),
        (None, {"drift": "not a list", "actions": []}, None),
    ],
)
def test_module_kind(action, result, kind):
    assert dr.module_kind(action, result) == kind


def test_verify_result_is_found_in_set_fact():
    record = {"outcome": "ok", "latency_s": 2.5}
    assert dr.verify_result({"ansible_facts": {"_qfieldcloud_verify_result": record}}) == record
    assert dr.verify_result({"ansible_facts": {"other": {"outcome": "x"}}}) is None
    assert dr.verify_result({"msg": "no facts"}) is None


def test_skipped_checks_do_not_judge_their_codes():
    event = facts([], skip=["db", "app"])
    assert not dr.covers(event, "queue_stalled")
    assert not dr.covers(event, "app_status_not_ok")
    assert dr.covers(event, "worker_socket_denied")
    assert dr.covers(facts([]), "queue_stalled")


def test_what_a_skip_hides_comes_from_the_catalogue():
    for code, entry in pb.CATALOGUE.items():
        if not pb.raised_by_facts(code):
            continue
        assert dr.covers(facts([]), code), code
        for option in entry["hidden_by"]:
            assert not dr.covers(facts([], skip=[option]), code), (code, option)
        others = [option for option in sync_facts.CHECKS if option not in entry["hidden_by"]]
        assert dr.covers(facts([], skip=others), code), code
    # Without the worker's log no orphaned job is proven: such a call cannot say they are gone.
    assert not dr.covers(facts([], skip=["logs"]), "jobs_orphaned")
    assert dr.covers(facts([], skip=["logs"]), "worker_socket_denied")
    # A code outside the catalogue is judged by any call, as before.
    assert dr.covers(facts([], skip=["db"]), "some_future_code")


def test_qfc_sync_facts_never_judges_the_codes_it_does_not_raise():
    for code in ("worker_config_not_persistent", "worker_should_be_stopped", "drain_timeout", "verify_failed"):
        assert not dr.covers(facts([]), code)
    drift = {"replica": None, "field": "compose_override", "expected": "x", "actual": "missing"}
    drift["code"] = "worker_config_not_persistent"
    # qfc_worker failed: a later diagnosis, which never looks at the override, does not make it corrected.
    events = {"qfc1": [facts([]), worker([drift], changed=True, failed=True), facts([], task="After")]}
    item = report(events, check_mode=False)["hosts"]["qfc1"]["items"][0]
    assert (item["code"], item["corrected"]) == ("worker_config_not_persistent", False)
    events = {"qfc1": [facts([]), worker([drift]), facts([], task="After")]}
    assert report(events, check_mode=False)["hosts"]["qfc1"]["items"][0]["corrected"] is True


def test_items_take_severity_summary_and_remedy_from_the_one_catalogue():
    drift = {"replica": "w-1", "field": "running", "expected": False, "actual": True}
    drift["code"] = "worker_should_be_stopped"
    verify = {
        "kind": "verify",
        "task": "Compose the result",
        "role": "fibreflow.qfieldcloud.verify",
        "action": "set_fact",
        "changed": False,
        "result": {"outcome": "failed", "error": "HTTP 502"},
    }
    items = {i["code"]: i for i in report({"qfc1": [facts([]), worker([drift]), verify]})["hosts"]["qfc1"]["items"]}
    for code in ("worker_should_be_stopped", "verify_failed"):
        entry = pb.CATALOGUE[code]
        assert (items[code]["severity"], items[code]["summary"]) == (entry["severity"], entry["summary"])
        assert items[code]["remedy"] == entry["remedy"]
    unknown = dict(drift, code="some_future_code")
    item = report({"qfc1": [facts([]), worker([unknown])]})["hosts"]["qfc1"]["items"][0]
    assert (item["severity"], item["summary"], item["remedy"]) == ("error", "some future code", dr.DEFAULT_REMEDY)


# ---------------------------------------------------------------------------------------------- assembling items


def test_check_mode_lists_problems_and_drift_once_per_item_never_corrected():
    events = {
        "qfc1": [
            facts([PROBLEM_SOCKET, PROBLEM_QGIS]),
            facts([PROBLEM_SOCKET, PROBLEM_QGIS], task="Diagnose before acting"),
            changed_task("Report what will be built"),
            worker([DRIFT_USER, {**DRIFT_USER}]),
        ]
    }
    doc = report(events, check_mode=True)
    host = doc["hosts"]["qfc1"]
    assert host["outcome"] == "drift"
    assert [(i["code"], i["source"]) for i in host["items"]] == [
        ("worker_socket_denied", "qfc_worker"),
        ("qgis_image_missing", "qfc_sync_facts"),
    ]
    socket = host["items"][0]
    assert (socket["replica"], socket["field"], socket["expected"], socket["actual"]) == (
        "qfieldcloud-worker_wrapper-1",
        "user",
        "root",
        "10001",
    )
    assert socket["remedy"] == PROBLEM_SOCKET["remedy"]
    assert socket["evidence"] == PROBLEM_SOCKET["evidence"]
    assert not any(i["corrected"] for i in host["items"])
    assert host["actions"] == ["recreate qfieldcloud-worker_wrapper-1 (after drain)"]
    assert [c["task"] for c in host["changes"]] == ["Report what will be built", "Enforce the worker"]
    assert doc["outcome"] == "drift" and doc["exit_status"] == 2
    assert doc["summary"] == {
        "hosts": 1,
        "ok": 0,
        "drift": 1,
        "error": 0,
        "items": 2,
        "corrected": 0,
        "changes": 2,
        "sync_blocked": 1,
        "client_blocked": 0,
    }
    verdict = next(iter(doc["hosts"].values()))["verdict"]
    assert verdict["sync"] is False and verdict["sync_blocked_by"]
    assert verdict["client"] is True and verdict["client_blocked_by"] == []
    assert doc["schema_version"] == dr.SCHEMA_VERSION and doc["run"]["id"] == "abc"


def test_real_run_marks_what_a_later_diagnosis_no_longer_finds():
    events = {
        "qfc1": [
            facts([PROBLEM_SOCKET, PROBLEM_QGIS]),
            worker([DRIFT_USER]),
            changed_task("Build the images"),
            facts([PROBLEM_QGIS], task="Read the state after the run", report_task=True),
        ]
    }
    host = report(events, check_mode=False)["hosts"]["qfc1"]
    corrected = {i["code"]: i["corrected"] for i in host["items"]}
    assert corrected == {"worker_socket_denied": True, "qgis_image_missing": False}
    assert host["corrected"] == 1
    assert (host["sync_ready_before"], host["sync_ready_after"]) == (False, False)


def test_real_run_without_a_later_diagnosis_trusts_only_the_worker_module():
    drift = {
        "replica": None,
        "field": "compose_override",
        "expected": "x",
        "actual": "missing",
        "code": "worker_config_not_persistent",
    }
    events = {"qfc1": [facts([PROBLEM_QGIS]), worker([drift])]}
    items = {i["code"]: i for i in report(events, check_mode=False)["hosts"]["qfc1"]["items"]}
    assert items["worker_config_not_persistent"]["corrected"] is True
    assert items["worker_config_not_persistent"]["severity"] == "warning"
    assert items["qgis_image_missing"]["corrected"] is False


def test_a_diagnosis_that_skipped_the_database_cannot_clear_a_queue_problem():
    stalled = {"code": "queue_stalled", "severity": "critical", "summary": "s", "evidence": {}, "remedy": "r"}
    events = {"qfc1": [facts([stalled]), changed_task(), facts([], skip=["db"], task="Wait for the banner")]}
    item = report(events, check_mode=False)["hosts"]["qfc1"]["items"][0]
    assert item["code"] == "queue_stalled" and item["corrected"] is False


def test_healthy_host_is_ok_with_no_items():
    events = {"qfc1": [facts([]), worker([], changed=False, actions=()), facts([], report_task=True)]}
    doc = report(events)
    assert doc["hosts"]["qfc1"]["outcome"] == "ok"
    assert doc["hosts"]["qfc1"]["items"] == [] and doc["hosts"]["qfc1"]["changes"] == []
    assert (doc["outcome"], doc["exit_status"]) == ("ok", 0)


def test_reporting_tasks_never_count_as_changes():
    events = {"qfc1": [facts([]), changed_task("Write the drift metrics", role=None, report_task=True)]}
    assert report(events)["hosts"]["qfc1"]["outcome"] == "ok"


def test_failed_verify_is_an_item():
    verify = {
        "kind": "verify",
        "task": "Compose the result",
        "role": "fibreflow.qfieldcloud.verify",
        "action": "set_fact",
        "changed": False,
        "result": {"outcome": "failed", "error": "the probe job is pending after 120 s", "latency_s": None},
    }
    host = report({"qfc1": [facts([]), verify]}, check_mode=False)["hosts"]["qfc1"]
    assert host["verify"]["outcome"] == "failed"
    assert host["items"][0]["code"] == "verify_failed"
    assert host["items"][0]["actual"] == "the probe job is pending after 120 s"


# ----------------------------------------------------------------------------------------------------- outcomes


def test_unreachable_host_is_an_error_and_wins():
    events = {
        "qfc1": [facts([])],
        "ghost": [
            {
                "kind": "unreachable",
                "task": "Read the state",
                "role": None,
                "action": "x",
                "changed": False,
                "msg": "ssh: connect to host 192.0.2.1 port 22: Connection timed out",
            }
        ],
    }
    stats = {"qfc1": dict(RECAP_OK), "ghost": {**RECAP_OK, "ok": 0, "unreachable": 1}}
    doc = report(events, stats=stats)
    assert doc["hosts"]["ghost"]["outcome"] == "error" and doc["hosts"]["ghost"]["unreachable"] is True
    assert "Connection timed out" in doc["hosts"]["ghost"]["errors"][0]["msg"]
    assert doc["hosts"]["qfc1"]["outcome"] == "ok"
    assert (doc["outcome"], doc["exit_status"]) == ("error", 1)
    assert doc["summary"]["error"] == 1 and doc["summary"]["ok"] == 1


def test_failed_task_is_an_error_but_a_rescued_one_is_not():
    failure = {
        "kind": "failed",
        "task": "Ask the status endpoint",
        "role": "verify",
        "action": "uri",
        "changed": False,
        "msg": "Status code was 502",
    }
    failed = report({"qfc1": [facts([]), failure]}, stats={"qfc1": {**RECAP_OK, "failures": 1}})
    assert failed["hosts"]["qfc1"]["outcome"] == "error"
    rescued = report({"qfc1": [facts([]), failure]}, stats={"qfc1": {**RECAP_OK, "rescued": 1}})
    assert rescued["hosts"]["qfc1"]["outcome"] == "ok"
    assert rescued["hosts"]["qfc1"]["errors"] == []


def test_fail_on_drift_gate_is_drift_not_error():
    gate = {
        "kind": "failed",
        "task": "Fail on drift",
        "role": None,
        "action": "assert",
        "changed": False,
        "gate": True,
        "msg": "Drift on qfc1",
    }
    doc = report({"qfc1": [facts([PROBLEM_QGIS]), gate]}, stats={"qfc1": {**RECAP_OK, "failures": 1}})
    assert doc["hosts"]["qfc1"]["outcome"] == "drift"
    assert doc["exit_status"] == 2


def test_an_internal_error_of_the_callback_never_passes_as_ok():
    doc = report({"qfc1": [facts([])]}, internal_errors=["KeyError: 'x'"])
    assert (doc["outcome"], doc["exit_status"]) == ("error", 1)
    assert doc["run"]["internal_errors"] == ["KeyError: 'x'"]


def test_empty_run_is_ok():
    doc = dr.build_report({}, {}, {"check_mode": True})
    assert (doc["outcome"], doc["exit_status"], doc["summary"]["hosts"]) == ("ok", 0, 0)


# ---------------------------------------------------------------------------------------------------- redaction


def test_secrets_are_masked_by_value_and_by_key_in_json_and_markdown():
    redactor = Redactor()
    dr.learn_secrets(redactor, {"qfieldcloud_probe_password": SECRET, "nested": [{"db_password": "another-one"}]})
    leaky = {**PROBLEM_QGIS, "evidence": {"log": f"FATAL: password {SECRET} rejected", "POSTGRES_PASSWORD": "pw-xyz1"}}
    drift = {**DRIFT_USER, "actual": f"postgres://qfc:{SECRET}@db/qfc"}
    doc = report({"qfc1": [facts([leaky]), worker([drift])]}, redactor=redactor)
    text = json.dumps(doc)
    markdown = dr.render_markdown(doc)
    for secret in (SECRET, "another-one", "pw-xyz1"):
        assert secret not in text
        assert secret not in markdown
    assert MASK in text
    item = next(i for i in doc["hosts"]["qfc1"]["items"] if i["code"] == "qgis_image_missing")
    assert item["evidence"]["POSTGRES_PASSWORD"] == MASK


def test_learn_secrets_ignores_booleans_and_non_secret_names():
    redactor = Redactor()
    dr.learn_secrets(redactor, {"qfieldcloud_verify_probe": True, "token_enabled": True, "project": "qfieldcloud"})
    assert redactor.secrets_count == 0


# ----------------------------------------------------------------------------------------------------- markdown


def test_markdown_lists_each_item_with_its_remedy():
    events = {"qfc1": [facts([PROBLEM_SOCKET, PROBLEM_QGIS]), worker([DRIFT_USER])], "qfc2": [facts([])]}
    text = dr.render_markdown(report(events, check_mode=True, diff_mode=True))
    assert text.startswith("# QFieldCloud drift report: DRIFT\n")
    assert "check mode: what would change, diff" in text
    assert "| qfc1 | drift | 2 | 0 | 1 | no → ? |" in text
    assert "| qfc2 | ok | 0 | 0 | 0 | yes → ? |" in text
    assert "## qfc1: drift" in text and "## qfc2" not in text
    assert "| `worker_socket_denied` | critical | qfieldcloud-worker_wrapper-1 | user | root | 10001 | no |" in text
    assert "docker compose build qgis3" in text
    assert "Would do (qfc_worker):" in text


def test_markdown_of_a_clean_run_says_so_and_escapes_pipes():
    assert "No drift: every host is as it should be." in dr.render_markdown(report({"qfc1": [facts([])]}))
    assert dr._cell("a | b") == "a \\| b"
    assert dr._cell({"k": 1}) == '{"k": 1}'
    assert dr._cell("x" * 500, limit=10).endswith("…")


def test_write_atomic_replaces_and_leaves_no_temporary_file(tmp_path):
    target = tmp_path / "drift-report.json"
    target.write_text("old")
    dr.write_atomic(str(target), "new\n")
    assert target.read_text() == "new\n"
    assert [p.name for p in tmp_path.iterdir()] == ["drift-report.json"]
    assert oct(target.stat().st_mode & 0o777) == "0o644"


def test_documentation_declares_the_options():
    import yaml

    doc = yaml.safe_load(dr.DOCUMENTATION)
    assert doc["name"] == "drift_report" and doc["type"] == "aggregate"
    assert {"output_dir", "json_file", "markdown_file", "run_id", "show_summary"} <= set(doc["options"])
    assert doc["options"]["output_dir"]["env"] == [{"name": "FIBREFLOW_DRIFT_REPORT_DIR"}]


# ------------------------------------------------------------------------------------------- the cron entry point


@pytest.fixture(scope="module")
def wrapper():
    path = REPO / "bin" / "qfc-drift-check"
    loader = importlib.machinery.SourceFileLoader("qfc_drift_check", str(path))
    spec = importlib.util.spec_from_loader("qfc_drift_check", loader)
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    return module


@pytest.mark.parametrize(
    ("outcome", "playbook_rc", "status"),
    [
        ("ok", 0, 0),
        ("drift", 0, 2),
        ("drift", 2, 2),  # the qfieldcloud_fail_on_drift gate failed the hosts with drift
        ("error", 2, 1),
        ("error", 4, 1),  # unreachable
        ("ok", 2, 1),  # a task failed but the report does not know it: not "ok"
        ("ok", 5, 1),  # bad options
        ("drift", 250, 1),
    ],
)
def test_exit_status_contract(wrapper, outcome, playbook_rc, status):
    assert wrapper.exit_status({"outcome": outcome}, playbook_rc) == status


@pytest.mark.parametrize(
    ("summary", "status"),
    [
        ({"sync_blocked": 1, "client_blocked": 1}, 3),
        ({"sync_blocked": 0, "client_blocked": 2}, 4),
        ({"sync_blocked": 0, "client_blocked": 0}, 2),
    ],
)
def test_exit_status_names_what_is_blocked(wrapper, summary, status):
    assert wrapper.exit_status({"outcome": "drift", "summary": summary}, 0) == status
    # an error stays an error, whatever the verdicts
    assert wrapper.exit_status({"outcome": "error", "summary": summary}, 2) == 1


def test_verdict_tells_sync_from_client():
    result = {
        "sync_ready": True,
        "client_ready": False,
        "problems": [
            {"code": "nginx_host_mismatch", "severity": "critical", "blocks": "client"},
            {"code": "worker_port_published", "severity": "warning", "blocks": "none"},
        ],
    }
    assert dr.verdict(result) == {
        "sync": True,
        "client": False,
        "sync_blocked_by": [],
        "client_blocked_by": ["nginx_host_mismatch"],
    }
    assert dr.verdict({})["sync"] is None


def test_no_report_is_an_error(wrapper, tmp_path):
    assert wrapper.exit_status(None, 0) == 1
    report_doc, reason = wrapper.read_report(tmp_path, "run-1")
    assert report_doc is None and "no report" in reason
    (tmp_path / "drift-report.json").write_text(json.dumps({"run": {"id": "older-run"}, "outcome": "ok"}))
    report_doc, reason = wrapper.read_report(tmp_path, "run-1")
    assert report_doc is None and "not from this run" in reason
    (tmp_path / "drift-report.json").write_text(json.dumps({"run": {"id": "run-1"}, "outcome": "ok"}))
    assert wrapper.read_report(tmp_path, "run-1")[0]["outcome"] == "ok"


def test_callback_env_keeps_other_callbacks(wrapper, monkeypatch, tmp_path):
    monkeypatch.setenv("ANSIBLE_CALLBACKS_ENABLED", "ansible.posix.profile_tasks")
    env = wrapper.callback_env(tmp_path, "rid")
    assert env["ANSIBLE_CALLBACKS_ENABLED"] == "ansible.posix.profile_tasks,fibreflow.qfieldcloud.drift_report"
    assert env["FIBREFLOW_DRIFT_REPORT_DIR"] == str(tmp_path) and env["FIBREFLOW_DRIFT_RUN_ID"] == "rid"


def test_arguments_after_double_dash_go_to_ansible_playbook(wrapper):
    args = wrapper.parse_args(["-i", "inv.yml", "--apply", "--", "-e", "x=1", "--limit", "qfc1"])
    assert args.inventory == ["inv.yml"] and args.apply
    assert args.extra == ["-e", "x=1", "--limit", "qfc1"]


def test_drift_report_markdown_shows_the_worker_log():
    problem = pb.make_problem("worker_db_host_wrong", {"container": "w-1", "log": [UNRESOLVED]})
    events = {
        "qfc1": [
            {
                "kind": "facts",
                "task": "Read the state",
                "role": None,
                "action": "fibreflow.qfieldcloud.qfc_sync_facts",
                "changed": False,
                "result": {"problems": [problem], "sync_ready": False, "invocation": {"module_args": {}}},
            }
        ]
    }
    doc = dr.build_report(events, {"qfc1": {"ok": 1, "failures": 0, "unreachable": 0}}, {"playbook": "x"}, None)
    item = doc["hosts"]["qfc1"]["items"][0]
    assert item["evidence"]["log"] == [UNRESOLVED]
    text = dr.render_markdown(doc)
    assert "Worker log behind `worker_db_host_wrong`" in text and UNRESOLVED in text
    # the verdict line is a list item: the table after it needs a blank line, or Markdown renders no table
    verdict, table = text.index("- **SYNC BLOCKED**"), text.index("| Code | Severity |")
    assert verdict < table and text[text.rindex("\n", 0, table - 1) : table] == "\n\n"


def test_the_ansible_playbook_of_the_scripts_own_venv_is_the_default(wrapper, tmp_path, monkeypatch):
    """cron starts ~/qfc/bin/python .../qfc-drift-check without the venv on PATH: its ansible-playbook is found."""
    venv_bin = tmp_path / "venv" / "bin"
    venv_bin.mkdir(parents=True)
    (venv_bin / "ansible-playbook").write_text("#!/bin/sh\n")
    (venv_bin / "ansible-playbook").chmod(0o755)
    monkeypatch.setattr(wrapper.sys, "executable", str(venv_bin / "python"))
    assert wrapper.default_ansible_playbook() == str(venv_bin / "ansible-playbook")
    (venv_bin / "ansible-playbook").unlink()
    assert wrapper.default_ansible_playbook() == "ansible-playbook"
