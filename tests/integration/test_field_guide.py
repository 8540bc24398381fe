# SPDX-License-Identifier: GPL-3.0-or-later
"""The rest of the field guide: back after a reboot in order, the QField server URL, worker logs as evidence.

One private stand-in serves the boot tests (it is stopped and started again, healthy at the end); the faults
get private stacks of their own from ``stack_factory``.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import time

import pytest
from ansible_run import JSON_CALLBACK, codes, facts_of, play, recap, task_results

pytestmark = pytest.mark.integration


def changed(res) -> int:
    counts = recap(res)
    assert counts["failed"] == 0, res.output[-3000:]
    return counts["changed"]


@pytest.fixture(scope="module")
def stack(module_stacks):
    return module_stacks("fg")


@pytest.fixture(scope="module")
def boot(stack, tmp_path_factory):
    """The startup role with the boot files pointed into a temporary directory: check mode, real, again."""
    root = tmp_path_factory.mktemp("boot")
    extra = {
        "qfieldcloud_startup_boot_script_dir": str(root / "sbin"),
        "qfieldcloud_startup_boot_unit_dir": str(root / "systemd"),
    }
    runs = {}
    for name, args in (("check", ("--check", "--diff")), ("real", ()), ("again", ())):
        runs[name] = play("playbooks/site.yml", stack, "--tags", "startup", *args, extra=extra)
        if name == "check":
            runs["exists_after_check"] = (root / "sbin").exists()
    return {
        "runs": runs,
        "script": root / "sbin" / f"qfieldcloud-start-{stack.name}",
        "unit": root / "systemd" / f"qfieldcloud-{stack.name}.service",
    }


# ------------------------------------------------------------------------------------------------ boot
def test_boot_files_check_mode_then_installed_then_converged(stack, boot):
    runs = boot["runs"]
    assert changed(runs["check"]) > 0
    assert not runs["exists_after_check"], "check mode installed something"
    assert f"+ExecStart={boot['script']}" in runs["check"].output  # the diff shows what would be installed
    assert "would install" in runs["check"].said
    assert changed(runs["real"]) > 0
    assert os.access(boot["script"], os.X_OK)
    unit = boot["unit"].read_text()
    for line in (
        "Type=oneshot",
        "RemainAfterExit=yes",
        "Requires=docker.service",
        "After=docker.service network-online.target",
        "WantedBy=multi-user.target",
        f"ExecStart={boot['script']}",
    ):
        assert line in unit.splitlines(), line
    # no running systemd on these machines: the files are installed, nothing is enabled, and the role says so
    assert "No running systemd on localhost" in runs["real"].said and "enabled nothing" in runs["real"].said
    assert changed(runs["again"]) == 0


def test_unit_passes_systemd_analyze_verify(boot, tmp_path):
    env = dict(os.environ, SYSTEMD_LOG_LEVEL="notice", SYSTEMD_LOG_COLOR="0")
    res = subprocess.run(
        ["systemd-analyze", "verify", str(boot["unit"])], env=env, capture_output=True, text=True, check=False
    )
    assert res.returncode == 0 and res.stderr == "", res.stderr
    # the same check fails a unit whose ExecStart is missing: the verification really looks at the unit
    broken = tmp_path / boot["unit"].name
    broken.write_text(boot["unit"].read_text().replace(str(boot["script"]), str(tmp_path / "missing")))
    res = subprocess.run(
        ["systemd-analyze", "verify", str(broken)], env=env, capture_output=True, text=True, check=False
    )
    assert res.returncode != 0 and "missing" in res.stderr


def test_start_script_brings_a_stopped_stack_up_in_order(stack, boot):
    stack.compose("stop")
    assert not stack.containers("db", all_=False)
    res = subprocess.run([str(boot["script"])], capture_output=True, text=True, timeout=600, check=False)
    assert res.returncode == 0, res.stdout + res.stderr
    started = {
        s: stack.inspect(stack.containers(s, all_=False)[0])["State"]["StartedAt"]
        for s in ("db", "app", "worker_wrapper", "ofelia")
    }
    assert started["db"] < started["app"] < started["worker_wrapper"] < started["ofelia"], started
    steps = [line.split(": ", 1)[1] for line in res.stdout.splitlines() if "qfieldcloud-start[" in line]
    assert re.fullmatch(r"docker: ready after \d+ s", steps[0]), steps
    assert steps[1:4] == ["starting db", steps[2], "starting app memcached nginx"], steps
    assert steps[2].startswith("db accepts connections: ready")
    assert steps[-1] == "QFieldCloud is up"
    assert stack.wait_job(stack.create_job(), timeout=60) == "finished"


# ------------------------------------------------------------------------------------------------ client
def test_client_url_is_reported_and_answers_from_the_host(stack):
    env = stack.env
    client = facts_of(stack)["ansible_facts"]["qfc_sync"]["client"]
    url = f"http://{env['QFIELDCLOUD_HOST']}:{env['WEB_HTTP_PORT']}"
    assert client["url"] == url and client["via"] == "nginx"
    assert client["ok"] is True and client["connect_host"] == "127.0.0.1"
    res = play("playbooks/diagnose.yml", stack)
    assert res.returncode == 0, res.output[-3000:]
    assert f"QField server URL for localhost: {url} (through nginx; the status endpoint answers" in res.said


def test_nginx_host_mismatch_is_named_and_its_remedy_works(stack_factory):
    stack = stack_factory()
    old = stack.env["QFIELDCLOUD_HOST"]
    stack.break_("nginx-host-mismatch")
    new = stack.env["QFIELDCLOUD_HOST"]
    result = facts_of(stack)
    assert codes(result) == {"nginx_host_mismatch"}, result["problems"]
    # jobs still run; the devices cannot reach the server: the client verdict fails, not the sync one
    assert result["sync_ready"] is True
    assert result["client_ready"] is False
    problem = result["problems"][0]
    assert problem["evidence"]["nginx_host"] == old and problem["evidence"]["configured_host"] == new
    assert "closed without an answer" in problem["evidence"]["error"]
    # the remedy as written
    stack.compose("up", "-d", "--no-deps", "nginx", "app")
    stack.compose("restart", "ofelia")
    deadline = time.monotonic() + 30
    while codes(result := facts_of(stack)) and time.monotonic() < deadline:
        time.sleep(1)
    assert codes(result) == set(), result["problems"]
    assert result["ansible_facts"]["qfc_sync"]["client"]["url"].startswith(f"http://{new}:")
    # a local name works from the host but not for devices: a warning, sync still ready
    env_file = stack.dir / ".env"
    env_file.write_text(env_file.read_text().replace(f"QFIELDCLOUD_HOST={new}", "QFIELDCLOUD_HOST=localhost"))
    stack.compose("up", "-d", "--no-deps", "nginx", "app")
    stack.compose("restart", "ofelia")
    deadline = time.monotonic() + 30
    while codes(result := facts_of(stack)) != {"client_host_local"} and time.monotonic() < deadline:
        time.sleep(1)
    assert [(p["code"], p["severity"]) for p in result["problems"]] == [("client_host_local", "warning")]
    assert result["sync_ready"] is True


# ------------------------------------------------------------------------------------------------ worker logs
def test_worker_problem_carries_its_log_lines_masked_into_the_drift_report(stack_factory, tmp_path):
    stack = stack_factory()
    stack.break_("worker-wrong-db-host")
    password = stack.env["POSTGRES_PASSWORD"]
    line = f'could not translate host name "postgres" (dsn postgresql://qfieldcloud_db_admin:{password}@postgres/x)'
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:  # the worker crash-loops: write while its entrypoint waits for postgres
        cids = stack.containers("worker_wrapper", all_=False)
        if cids:
            cmd = ["docker", "exec", cids[0], "sh", "-c", f"echo '{line}' >/proc/1/fd/1"]
            if subprocess.run(cmd, capture_output=True, check=False).returncode == 0:
                break
        time.sleep(1)
    else:
        pytest.fail("could not write to the worker's log")
    problem = next(p for p in facts_of(stack)["problems"] if p["code"] == "worker_db_host_wrong")
    log = problem["evidence"]["log"]
    assert 0 < len(log) <= 20
    assert any(entry.startswith('could not translate host name "postgres" to address') for entry in log), log
    assert any("qfieldcloud_db_admin:********@postgres" in entry for entry in log), log

    report_dir = tmp_path / "report"
    env = {
        "ANSIBLE_CALLBACKS_ENABLED": "fibreflow.qfieldcloud.drift_report",
        "FIBREFLOW_DRIFT_REPORT_DIR": str(report_dir),
        "FIBREFLOW_DRIFT_REPORT_SUMMARY": "false",  # stdout is the JSON callback's document alone
        **JSON_CALLBACK,
    }
    res = play("playbooks/diagnose.yml", stack, extra={"qfieldcloud_diagnose_fail": False}, env=env)
    assert res.returncode == 0, res.output[-3000:]
    # diagnose.yml prints the evidence as text: the scalars as `key: value`, each log line on a line of its own
    results = task_results(res.stdout)
    found = next(r for name, r in results if name == "Read the state of the stack")
    shown = printed_problems(results)
    problem = next(p for p in found["problems"] if p["code"] == "worker_db_host_wrong")
    text = shown["worker_db_host_wrong"].splitlines()
    assert text[0] == f"CRITICAL worker_db_host_wrong: {problem['summary']}", text
    assert text[1] == "Evidence:" and text[-1] == f"Remedy: {problem['remedy']}", text
    assert f"  container: {problem['evidence']['container']}" in text, text
    assert "  log:" in text, text
    assert all(f"    - {entry}" in text for entry in problem["evidence"]["log"]), (problem["evidence"]["log"], text)
    assert not any(line.lstrip().startswith(("{", "[")) for line in text), text  # no JSON
    doc = json.loads((report_dir / "drift-report.json").read_text())
    item = next(i for i in doc["hosts"]["localhost"]["items"] if i["code"] == "worker_db_host_wrong")
    assert any("could not translate host name" in entry for entry in item["evidence"]["log"])
    markdown = (report_dir / "drift-report.md").read_text()
    assert "Worker log behind `worker_db_host_wrong`" in markdown
    # the table shows the evidence as text, its log lines below the table
    row = next(line for line in markdown.splitlines() if line.startswith("| `worker_db_host_wrong` |"))
    assert f"| container: {problem['evidence']['container']}; field: " in row and '{"' not in row, row
    for text in (json.dumps(doc), markdown, res.output):
        for secret in stack.secrets():
            assert secret not in text

    # the closing message names site.yml for what it repairs...
    failing = play("playbooks/diagnose.yml", stack, env=JSON_CALLBACK)
    assert failing.returncode == 2, failing.output[-3000:]
    closing = closing_message(task_results(failing.stdout))
    assert closing[0].startswith("SYNC BLOCKED on localhost: a job created now would not finish ("), closing
    assert closing[-1].startswith("Repair: ansible-playbook fibreflow.qfieldcloud.site (it repairs "), closing
    assert "worker_db_host_wrong" in closing[-1], closing
    # ...and only for that: site.yml does not start a Docker daemon that does not answer
    dead = play("playbooks/diagnose.yml", stack, env={**JSON_CALLBACK, "DOCKER_HOST": f"unix://{tmp_path}/no.sock"})
    assert dead.returncode == 2, dead.output[-3000:]
    results = task_results(dead.stdout)
    text = printed_problems(results)["docker_unreachable"].splitlines()
    assert f"  docker_host: unix://{tmp_path}/no.sock" in text, text
    closing = closing_message(results)
    assert closing[0] == "SYNC BLOCKED on localhost: a job created now would not finish (docker_unreachable).", closing
    assert closing[1].startswith("docker_unreachable: Start Docker (`systemctl start docker`"), closing
    assert len(closing) == 2 and "fibreflow.qfieldcloud.site" not in "\n".join(closing), closing


def printed_problems(results: list[tuple[str, dict]]) -> dict[str, str]:
    """The text diagnose.yml prints for each problem, by code."""
    printed = next(r for name, r in results if name == "Print each problem with its remedy")
    return {item["item"]["code"]: item["msg"] for item in printed["results"]}


def closing_message(results: list[tuple[str, dict]]) -> list[str]:
    """The lines of the message diagnose.yml fails with."""
    [failed] = [r for _name, r in results if r.get("failed")]
    return failed["msg"].splitlines()
