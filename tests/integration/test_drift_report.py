"""Integration tests of the drift report: bin/qfc-drift-check, playbooks/drift_check.yml and the
fibreflow.qfieldcloud.drift_report callback, against one private stand-in stack.

The tests run in file order on that stack: a real run converges it (and reports what it corrected), a check
run then finds nothing, two injected faults are found by a check run (and nothing is changed), an unreachable
host makes the run an error, the AWX gate fails the job with a readable message, and a last real run repairs
the faults and says so. A local HTTP server stands in for the webhook and the dead-man's switch.
"""

from __future__ import annotations

import http.server
import json
import subprocess
import sys
import threading
import uuid
from pathlib import Path

import pytest
import yaml
from ansible_run import REPO, ansible_env, codes, facts_of
from prometheus_client.parser import text_string_to_metric_families
from standin import Pristine, Stack

pytestmark = pytest.mark.integration

SCRIPT = REPO / "bin" / "qfc-drift-check"
FAULTS = {"worker-stopped": "worker_not_running", "qgis-image-missing": "qgis_image_missing"}


class Hook:
    """A local HTTP server that records every request (the webhook and the healthchecks-style ping)."""

    def __init__(self) -> None:
        self.requests: list[dict] = []
        hook = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def _record(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length).decode(errors="replace")
                hook.requests.append({"method": self.command, "path": self.path, "body": body})
                self.send_response(200)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"OK")

            do_GET = do_POST = _record

            def log_message(self, *args) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def take(self) -> list[dict]:
        taken, self.requests = self.requests, []
        return taken

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def stack(module_stacks):
    made = module_stacks("dr")
    made.pristine = Pristine(made)
    return made


@pytest.fixture(scope="module")
def hook():
    server = Hook()
    yield server
    server.close()


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return tmp_path_factory.mktemp("drift")


class Run:
    """One run of bin/qfc-drift-check and everything it produced."""

    def __init__(self, proc: subprocess.CompletedProcess, report_dir: Path, metrics_dir: Path, messages: list[dict]):
        self.rc = proc.returncode
        self.stdout = proc.stdout + proc.stderr
        self.report_dir = report_dir
        self.report = json.loads((report_dir / "drift-report.json").read_text())
        self.markdown = (report_dir / "drift-report.md").read_text()
        self.log = (report_dir / "ansible-playbook.log").read_text()
        self.metrics = {p.name: p.read_text() for p in metrics_dir.glob("*.prom")}
        self.messages = messages

    def host(self, name: str = "qfc") -> dict:
        return self.report["hosts"][name]

    def codes(self, name: str = "qfc") -> set[str]:
        return {item["code"] for item in self.host(name)["items"]}

    def webhooks(self) -> list[dict]:
        return [json.loads(m["body"]) for m in self.messages if m["path"] == "/hook"]

    def pings(self) -> list[str]:
        return [m["path"] for m in self.messages if m["path"].startswith("/ping")]

    def samples(self) -> dict[str, float]:
        """Every metric sample of the textfiles, by name (project label only: one stack per host)."""
        values = {}
        for text in self.metrics.values():
            for family in text_string_to_metric_families(text):
                for sample in family.samples:
                    if set(sample.labels) <= {"project"}:
                        values[sample.name] = sample.value
        return values

    def assert_no_secret(self, stack: Stack) -> None:
        outputs = {
            "report": json.dumps(self.report),
            "markdown": self.markdown,
            "metrics": "\n".join(self.metrics.values()),
            "messages": json.dumps(self.messages),
            "script output": self.stdout,
        }
        for secret in stack.secrets():
            for what, text in outputs.items():
                assert secret not in text, f"a secret value of the stand-in appeared in the {what}"


def drift_check(stack: Stack, hook: Hook, workdir: Path, *extra: str, apply: bool = False, ghost: bool = False) -> Run:
    """Run bin/qfc-drift-check against the stack (plus an unreachable host when ghost) as cron would."""
    metrics_dir = workdir / "textfile"
    metrics_dir.mkdir(exist_ok=True)
    report_dir = workdir / f"report-{uuid.uuid4().hex[:6]}"
    hosts = {
        "qfc": {
            "ansible_connection": "local",
            "ansible_python_interpreter": sys.executable,
            "qfieldcloud_metrics_dir": str(metrics_dir),
            **stack.vars,
        }
    }
    if ghost:
        hosts["ghost"] = {
            "ansible_host": "192.0.2.1",
            "ansible_connection": "ssh",
            "ansible_ssh_common_args": "-o ConnectTimeout=3 -o BatchMode=yes -o StrictHostKeyChecking=no",
            "qfieldcloud_project_dir": "/opt/qfieldcloud",
        }
    inventory = workdir / "hosts.yml"
    inventory.write_text(
        yaml.safe_dump(
            {
                "all": {
                    "hosts": hosts,
                    "vars": {
                        "qfieldcloud_notify_webhook_url": f"{hook.url}/hook",
                        "qfieldcloud_notify_ping_url": f"{hook.url}/ping",
                    },
                }
            }
        )
    )
    hook.take()
    cmd = [sys.executable, str(SCRIPT), "-i", str(inventory), "-o", str(report_dir)]
    if apply:
        cmd.append("--apply")
    env = ansible_env({"ANSIBLE_TIMEOUT": "3", "ANSIBLE_SHOW_CUSTOM_STATS": "1"})
    proc = subprocess.run(
        [*cmd, "--", *extra], cwd=REPO, env=env, text=True, capture_output=True, timeout=600, check=False
    )
    assert (report_dir / "drift-report.json").exists(), proc.stdout + proc.stderr
    run = Run(proc, report_dir, metrics_dir, hook.take())
    run.assert_no_secret(stack)
    return run


def worker_ids(stack: Stack) -> list[str]:
    return stack.containers("worker_wrapper")


# Each test takes the stack in the state it reads, checked on the stack itself (not on which tests ran before), so
# that it passes alone and in any order: untouched by the collection, converged by a real run, or broken by FAULTS.
def is_converged(stack: Stack) -> bool:
    """sync ready, the worker's settings held by the override, and a probe job of a real run finished."""
    finished = stack.sql("SELECT count(*) FROM core_job WHERE status = 'finished' AND type = 'package'")[0][0]
    return (
        facts_of(stack)["sync_ready"] is True
        and (stack.dir / "docker-compose.override.fibreflow-worker.yml").exists()
        and int(finished) >= 1
    )


@pytest.fixture
def untouched(stack):
    """The stack as the stand-in made it: its own files back, no override, every service up."""
    stack.pristine.restore()
    return stack


@pytest.fixture
def converged(stack, hook, workdir):
    """The stack after a real run of the drift check: made so by one when it is not."""
    if not is_converged(stack):
        run = drift_check(stack, hook, workdir, apply=True)
        assert run.rc in (0, 2) and is_converged(stack), run.stdout
    return stack


@pytest.fixture
def broken(stack, hook, workdir):
    """The converged stack with the FAULTS broken (nothing else): made so when it is not."""
    found = facts_of(stack)
    if not (codes(found) >= set(FAULTS.values()) and not found["sync_ready"]):
        if not is_converged(stack):
            drift_check(stack, hook, workdir, apply=True)
        for fault in FAULTS:
            stack.break_(fault)
    return stack


# ---------------------------------------------------------------------------------------------------------------


def test_real_run_reports_what_it_corrected(untouched, hook, workdir):
    stack = untouched
    run = drift_check(stack, hook, workdir, apply=True)
    assert run.rc == 2, run.stdout
    assert run.report["schema_version"] == 1
    assert run.report["run"]["check_mode"] is False
    host = run.host()
    assert host["outcome"] == "drift"
    # A stack the collection never touched: the worker's settings are not yet held by the override file.
    assert run.codes() == {"worker_config_not_persistent"}
    assert all(item["corrected"] for item in host["items"])
    assert host["verify"]["outcome"] == "ok"
    assert (stack.dir / "docker-compose.override.fibreflow-worker.yml").exists()
    [webhook] = run.webhooks()
    assert webhook["outcome"] == "drift" and webhook["check_mode"] is False
    assert webhook["hosts"]["qfc"]["corrected"] == ["worker_config_not_persistent"]
    assert run.pings() == ["/ping"]


def test_converged_check_is_ok_silent_and_writes_metrics(converged, hook, workdir):
    stack = converged
    run = drift_check(stack, hook, workdir)
    assert run.rc == 0, run.stdout
    assert run.stdout == ""  # cron mails nothing
    assert run.report["run"]["check_mode"] is True
    assert run.host()["outcome"] == "ok"
    assert run.host()["items"] == [] and run.host()["changes"] == []
    assert run.report["summary"]["items"] == 0
    assert "No drift" in run.markdown
    assert run.webhooks() == []  # nothing changed: no message
    assert run.pings() == ["/ping"]  # the dead-man's switch hears from every completed run
    assert set(run.metrics) == {"qfieldcloud.prom", "qfieldcloud_drift.prom"}
    values = run.samples()
    assert values["qfieldcloud_worker_up"] == 1
    assert values["qfieldcloud_worker_replicas_expected"] == 1
    assert values["qfieldcloud_worker_replicas_running"] == 1
    assert values["qfieldcloud_oldest_claimable_pending_age_seconds"] == 0
    assert values["qfieldcloud_drift_items"] == 0
    assert values["qfieldcloud_drift_check_mode"] == 1
    assert values["qfieldcloud_probe_success"] == 1
    assert 0 < values["qfieldcloud_probe_latency_seconds"] < 60
    assert values["qfieldcloud_probe_timestamp_seconds"] <= values["qfieldcloud_drift_check_timestamp_seconds"]
    families = {f.name: f for text in run.metrics.values() for f in text_string_to_metric_families(text)}
    jobs = {(s.labels["status"], s.labels["type"]): s.value for s in families["qfieldcloud_jobs"].samples}
    assert jobs[("finished", "package")] >= 1  # the probe job of the real run
    overdue = {s.labels["status"]: s.value for s in families["qfieldcloud_overdue_jobs"].samples}
    assert overdue == {"queued": 0, "started": 0}


def test_check_run_on_broken_stack_lists_exactly_the_faults(converged, hook, workdir):
    stack = converged
    for fault in FAULTS:
        stack.break_(fault)
    before = worker_ids(stack)
    run = drift_check(stack, hook, workdir)
    assert run.rc == 3, run.stdout  # drift, and sync is blocked: the exit status says which of the two fails
    host = run.host()
    assert host["outcome"] == "drift"
    assert host["verdict"]["sync"] is False and set(host["verdict"]["sync_blocked_by"]) == set(FAULTS.values())
    assert run.report["summary"]["sync_blocked"] == 1
    assert run.codes() == set(FAULTS.values())
    assert not any(item["corrected"] for item in host["items"])
    for item in host["items"]:
        assert item["remedy"] and item["severity"] == "critical"
        assert set(item) >= {"code", "field", "expected", "actual", "remedy", "corrected"}
    worker_item = next(i for i in host["items"] if i["code"] == "worker_not_running")
    assert (worker_item["field"], worker_item["expected"], worker_item["actual"]) == ("running", True, False)
    # check mode changed nothing
    assert worker_ids(stack) == before
    assert stack.containers("worker_wrapper", all_=False) == []
    # the Markdown (printed for cron) names each fault with its remedy
    for code in FAULTS.values():
        assert f"`{code}`" in run.markdown
        assert f"`{code}`" in run.stdout
    assert "# QFieldCloud drift report: DRIFT" in run.stdout
    [webhook] = run.webhooks()
    assert webhook["outcome"] == "drift" and webhook["check_mode"] is True
    assert webhook["hosts"]["qfc"]["found"] == sorted(FAULTS.values())
    assert run.pings() == ["/ping"]
    values = run.samples()
    assert values["qfieldcloud_worker_up"] == 0
    assert values["qfieldcloud_worker_replicas_running"] == 0
    assert values["qfieldcloud_drift_items"] == 2


def test_unreachable_host_is_an_error(broken, hook, workdir):
    stack = broken
    run = drift_check(stack, hook, workdir, ghost=True)
    assert run.rc == 1, run.stdout
    assert run.report["outcome"] == "error"
    ghost = run.host("ghost")
    assert ghost["outcome"] == "error" and ghost["unreachable"] is True
    assert ghost["errors"] and ghost["items"] == []
    assert run.host("qfc")["outcome"] == "drift"  # the other host is still reported
    assert run.codes("qfc") == set(FAULTS.values())
    [webhook] = run.webhooks()
    assert webhook["outcome"] == "error" and webhook["failed_hosts"] == ["ghost"]
    assert run.pings() == ["/ping/fail"]
    assert "| ghost | error |" in run.markdown


def test_fail_on_drift_fails_the_job_readably_and_hands_artifacts(broken, hook, workdir):
    stack = broken
    run = drift_check(stack, hook, workdir, "-e", "qfieldcloud_fail_on_drift=true")
    assert run.rc == 3, run.stdout  # sync blocked, not error: the gate's failure is the expected one
    assert run.report["outcome"] == "drift"
    assert "Drift on qfc (check mode: nothing was changed): qgis_image_missing, worker_not_running." in run.log
    assert "Repair: ansible-playbook fibreflow.qfieldcloud.site" in run.log
    assert "failed=1" in run.log
    # set_stats: AWX shows these as job artifacts
    assert "CUSTOM STATS" in run.log and "qfieldcloud_drift_outcome" in run.log


def test_real_run_repairs_and_marks_items_corrected(broken, hook, workdir):
    stack = broken
    run = drift_check(stack, hook, workdir, apply=True)
    assert run.rc == 2, run.stdout
    host = run.host()
    assert run.codes() == set(FAULTS.values())
    assert all(item["corrected"] for item in host["items"]), host["items"]
    assert host["sync_ready_before"] is False and host["sync_ready_after"] is True
    assert host["verify"]["outcome"] == "ok"
    assert stack.containers("worker_wrapper", all_=False)
    [webhook] = run.webhooks()
    assert webhook["hosts"]["qfc"]["remaining"] == []
    again = drift_check(stack, hook, workdir)
    assert again.rc == 0, again.stdout
    assert again.webhooks() == []


def test_no_report_is_an_error(workdir):
    proc = subprocess.run(
        # run as cron runs it: the script itself, found python on PATH (the venv's bin comes first)
        [str(SCRIPT), "-p", str(workdir / "missing.yml"), "-o", str(workdir / "none")],
        cwd=REPO,
        env=ansible_env(),
        text=True,
        capture_output=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 1
    assert "qfc-drift-check: ERROR" in proc.stderr
