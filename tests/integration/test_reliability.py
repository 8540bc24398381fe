# SPDX-License-Identifier: GPL-3.0-or-later
"""Reliability and security on the stand-in: faults, bad input, concurrency, interrupted runs, secrets.

Two private stacks live for the whole module (the budget allows two at once):
- ``workers`` (``rlw...``): the worker faults, a crash loop, a worker cut off from its network, bad input,
  two concurrent site.yml runs, killed runs, an ``.env`` written the way people write them.
- ``services`` (``rls...``): the service, queue and database faults: db and app down with a stalled queue, a
  database that answers slowly, the database restarted during verify.yml, overdue and locked jobs, missing
  migrations (last: it empties the database).

Faults are grouped and site.yml runs once per group. For each group: qfc_sync_facts names the problems,
site.yml repairs what it can and fails clearly on the rest, and every job created before the repair ends
``finished``. Every output the suite produces goes through ``Ledger.scan`` (the stack's secret values must
never appear); the counts are printed at the end and written to ``tests/output/reliability.json`` for
docs/reliability.md.
"""

from __future__ import annotations

import contextlib
import difflib
import json
import os
import re
import shutil
import signal
import subprocess
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import yaml
from ansible_run import REPO, ansible_env, playbook_command, run_module, run_playbook, stack_args
from standin import Stack

pytestmark = pytest.mark.integration

FACTS = "fibreflow.qfieldcloud.qfc_sync_facts"
WORKER = "fibreflow.qfieldcloud.qfc_worker"
OVERRIDE = "docker-compose.override.fibreflow-worker.yml"
SERVICE = "worker_wrapper"
STATE_DIR = Path("/var/lib/fibreflow-qfieldcloud")
ENFORCE_TASK = "Enforce the worker's configuration"


class Ledger:
    """What the suite tried and what held: the figures of docs/reliability.md."""

    def __init__(self) -> None:
        self.faults: dict[str, str] = {}  # fault -> how it ended ("repaired", "failed clearly: ...")
        self.bad_inputs: list[str] = []
        self.outputs_scanned = 0
        self.bytes_scanned = 0
        self.secrets_found = 0
        self.jobs_watched = 0
        self.jobs_lost = 0

    def scan(self, stack: Stack, text: str, where: str) -> None:
        """Fail when any secret value of the stack appears in ``text`` (and count the scan)."""
        self.outputs_scanned += 1
        self.bytes_scanned += len(text)
        found = [where for secret in SECRETS.get(stack.name, stack.secrets()) if secret and secret in text]
        self.secrets_found += len(found)
        assert not found, f"a secret value of {stack.name} appeared in {where}"

    def fault(self, name: str, outcome: str) -> None:
        self.faults[name] = outcome

    def jobs(self, stack: Stack, ids: list[str], timeout: float = 90) -> None:
        """Every job must end finished: pending ones are processed, none fails because of a repair."""
        deadline = time.monotonic() + timeout
        statuses = {}
        for job in ids:
            statuses[job] = stack.wait_job(job, timeout=max(1, deadline - time.monotonic()))
        self.jobs_watched += len(ids)
        lost = {job: status for job, status in statuses.items() if status != "finished"}
        self.jobs_lost += len(lost)
        assert not lost, f"jobs not finished: {lost}"

    def summary(self) -> dict:
        return {
            "faults_injected": len(self.faults),
            "faults_survived": sum(1 for outcome in self.faults.values() if not outcome.startswith("NOT")),
            "faults": self.faults,
            "bad_inputs_tried": len(self.bad_inputs),
            "bad_inputs": self.bad_inputs,
            "outputs_scanned": self.outputs_scanned,
            "bytes_scanned": self.bytes_scanned,
            "secrets_found": self.secrets_found,
            "jobs_watched": self.jobs_watched,
            "jobs_lost": self.jobs_lost,
        }


LEDGER = Ledger()
# Secret values per stack, read once while .env is still in the stand-in's own format.
SECRETS: dict[str, list[str]] = {}


@pytest.fixture(scope="module", autouse=True)
def ledger():
    yield LEDGER
    summary = LEDGER.summary()
    out = REPO / "tests" / "output" / "reliability.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(summary, indent=2) + "\n")
    print("\nreliability suite:", json.dumps({k: v for k, v in summary.items() if k not in ("faults", "bad_inputs")}))


def private_stack(prefix: str) -> Stack:
    stack = Stack(f"{prefix}{uuid.uuid4().hex[:5]}")
    stack.down()
    stack.up()
    SECRETS[stack.name] = stack.secrets()
    os.chmod(stack.dir / ".env", 0o600)
    return stack


def remove_stack(stack: Stack) -> None:
    stack.down(images=True)  # the stack's own images only; the shared runtime images stay
    shutil.rmtree(STATE_DIR / stack.name, ignore_errors=True)


@pytest.fixture(scope="module")
def workers():
    """Private stack for the worker faults. The crash loop is injected here, first, because Docker needs
    about 30 s per restart to show one: the services tests run meanwhile."""
    stack = private_stack("rlw")
    for fault in ("worker-port-published", "worker-debug-command", "worker-wrong-network"):
        stack.break_(fault)
    # The worker on the wrong network waits for postgres and ignores SIGTERM meanwhile (as upstream's
    # entrypoint): kill it, so that compose recreates it at once with the wrong db host.
    subprocess.run(["docker", "kill", *stack.containers(SERVICE, all_=False)], capture_output=True, check=True)
    stack.break_("worker-wrong-db-host")
    stack.jobs_before = stack.create_jobs(3)  # nothing can run them: they wait
    stack.broken_at = time.monotonic()
    yield stack
    remove_stack(stack)


@pytest.fixture(scope="module")
def services():
    stack = private_stack("rls")
    yield stack
    remove_stack(stack)


# ------------------------------------------------------------------------------------------------ helpers
def play(
    playbook: str,
    stack: Stack,
    *args: str,
    extra: dict | None = None,
    env: dict | None = None,
    verbose: bool = True,
    report: Path | None = None,
    timeout: float = 600,
):
    """ansible-playbook on localhost with the stack's variables (-vvv by default); the output is scanned."""
    cmd = stack_args(stack)
    if extra:
        cmd += ["-e", json.dumps(extra)]
    if verbose:
        cmd.append("-vvv")
    extra_env = dict(env or {})
    if report is not None:
        extra_env.update(
            ANSIBLE_CALLBACKS_ENABLED="fibreflow.qfieldcloud.drift_report", FIBREFLOW_DRIFT_REPORT_DIR=str(report)
        )
    res = run_playbook(playbook, *cmd, *args, extra_env=extra_env, timeout=timeout)
    res.output = res.stdout + res.stderr
    LEDGER.scan(stack, res.output, f"{playbook} {' '.join(args)} output")
    if report is not None:
        for path in sorted(report.glob("*")):
            LEDGER.scan(stack, path.read_text(errors="replace"), f"drift report {path.name}")
    return res


def facts(stack: Stack, **args) -> dict:
    result = run_module(FACTS, {"project_dir": str(stack.dir), **args})
    LEDGER.scan(stack, result["_stdout"], "qfc_sync_facts result")
    assert not result.get("failed"), result.get("msg")
    assert not crashed(result["_stdout"]) and "exception" not in result
    return result


def crashed(text: str) -> bool:
    """True when a module or ansible itself crashed (a Python traceback of the worker in a log tail is data)."""
    return "MODULE FAILURE" in text or "An exception occurred during task execution" in text


def flat(text: str) -> str:
    """Output with its line wrapping undone (the default callback folds long messages)."""
    return " ".join(text.split())


def codes(result: dict) -> set[str]:
    return {p["code"] for p in result["problems"]}


def recap(res) -> dict:
    m = re.search(r"localhost\s+:\s+ok=(\d+)\s+changed=(\d+)\s+unreachable=(\d+)\s+failed=(\d+)", res.output)
    assert m, res.output[-3000:]
    return {"ok": int(m[1]), "changed": int(m[2]), "failed": int(m[4])}


def files(stack: Stack) -> dict:
    """Content, mtime and mode of every file of the project directory (none may move on bad input)."""
    out = {}
    for path in sorted(stack.dir.iterdir()):
        if path.is_file():
            st = path.stat()
            out[path.name] = (path.read_bytes(), st.st_mtime_ns, st.st_mode & 0o777)
    return out


def containers(stack: Stack) -> list[str]:
    ps = subprocess.run(
        [
            "docker",
            "ps",
            "-a",
            "--no-trunc",
            "--format",
            "{{.ID}} {{.State}}",
            "--filter",
            f"label=com.docker.compose.project={stack.name}",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    return sorted(ps.stdout.split("\n"))


def scan_written_files(stack: Stack) -> None:
    """Files the collection writes: the override, verify and build records; .env backups keep .env's mode."""
    override = stack.dir / OVERRIDE
    if override.exists():
        LEDGER.scan(stack, override.read_text(), OVERRIDE)
    for path in sorted((STATE_DIR / stack.name).glob("*")) if (STATE_DIR / stack.name).exists() else []:
        LEDGER.scan(stack, path.read_text(errors="replace"), str(path))
    for backup in stack.dir.glob(".env.*.bak"):
        assert backup.stat().st_mode & 0o777 == 0o600, f"{backup} lost the mode of .env"


def assert_mode_0600(stack: Stack) -> None:
    for name in (".env", OVERRIDE):
        path = stack.dir / name
        if path.exists():
            assert oct(path.stat().st_mode & 0o777) == "0o600", f"{name} lost its mode 0600"


def healthy(stack: Stack) -> dict:
    result = facts(stack)
    assert result["sync_ready"] is True, result["problems"]
    return result


def worker_ids(stack: Stack) -> list[str]:
    return stack.containers(SERVICE, all_=False)


# ------------------------------------------------------------------------------------------------ the crash loop
def test_crash_loop_is_named_while_it_loops(workers):
    """Wrong db host, published port, wrong network and the debugpy command at once: the worker crash-loops."""
    stack = workers
    first = facts(stack)
    required = {"worker_db_host_wrong", "worker_wrong_network", "worker_debug_command", "worker_port_published"}
    assert required <= codes(first), first["problems"]
    assert first["sync_ready"] is False
    for job in stack.jobs_before:
        assert stack.job_status(job) == "pending"


# ------------------------------------------------------------------------------------------------ services group
def test_db_app_down_with_a_stalled_queue_are_repaired_in_order(services, tmp_path):
    stack = services
    stack.break_("queue-stalled")  # worker stopped, 3 claimable jobs 15 minutes old
    stalled = [row[0] for row in stack.sql("SELECT id FROM core_job WHERE status = 'pending'")]
    assert len(stalled) == 3
    textfile = tmp_path / "qfc.prom"
    before = facts(stack, prometheus_textfile=str(textfile))
    LEDGER.scan(stack, textfile.read_text(), "prometheus textfile")
    assert {"queue_stalled", "worker_not_running"} <= codes(before), before["problems"]

    stack.break_("app-down")
    stack.break_("db-down")
    down = facts(stack, timeout=3)
    assert {"db_unreachable", "service_not_running"} <= codes(down), down["problems"]
    assert codes(down) & {"app_unreachable", "app_status_not_ok"}, down["problems"]
    assert down["sync_ready"] is False

    res = play("playbooks/site.yml", stack, report=tmp_path / "report")
    assert res.returncode == 0, res.output[-4000:]
    assert "verify ok (latency" in res.output
    LEDGER.jobs(stack, stalled)
    healthy(stack)
    scan_written_files(stack)
    for fault in ("queue-stalled", "app-down", "db-down"):
        LEDGER.fault(fault, "repaired by site.yml (startup order, worker), pending jobs finished")


def test_slow_database_is_a_finding_within_the_timeout(services):
    """A lock held on core_job: the queue query cannot answer. The module reports it within its timeout."""
    stack = services
    env = stack.env
    holder = subprocess.Popen(
        [
            "docker",
            "compose",
            "exec",
            "-T",
            "db",
            "psql",
            "-U",
            env["POSTGRES_USER"],
            "-d",
            env["POSTGRES_DB"],
            "-c",
            "BEGIN; LOCK TABLE core_job IN ACCESS EXCLUSIVE MODE; SELECT pg_sleep(30); COMMIT;",
        ],
        cwd=stack.dir,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:  # wait until the lock is held
            held = stack.sql(
                "SELECT count(*) FROM pg_locks l JOIN pg_class c ON c.oid = l.relation"
                " WHERE c.relname = 'core_job' AND l.mode = 'AccessExclusiveLock' AND l.granted"
            )
            if held and held[0][0] == "1":
                break
            time.sleep(0.2)
        else:
            pytest.fail("the lock on core_job was not taken")
    except BaseException:
        holder.kill()
        raise
    try:
        started = time.monotonic()
        slow = facts(stack, timeout=3)
        took = time.monotonic() - started
        database = slow["ansible_facts"]["qfc_sync"]["database"]
        assert "db_unreachable" in codes(slow), slow["problems"]
        problem = next(p for p in slow["problems"] if p["code"] == "db_unreachable")
        assert problem["evidence"]["slow"] is True
        assert "statement timeout" in problem["evidence"]["error"]
        assert database["duration_s"] <= 3 + 1.5, database
        assert took < 3 + 12, f"the module took {took:.1f} s with timeout 3"
        assert slow["sync_ready"] is False
    finally:
        holder.kill()
        holder.wait()
        stack.sql(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE query LIKE '%pg_sleep(30)%'"
            " AND pid <> pg_backend_pid()"
        )
    LEDGER.jobs(stack, [stack.create_job()])  # the queue works again once the lock is gone
    healthy(stack)
    LEDGER.fault("database answers slowly (core_job locked)", "named db_unreachable (slow) within the timeout")


def test_database_restarted_during_verify(services, tmp_path):
    """The database restarts while verify.yml's probe job waits: the worker's connection dies under it, it
    reconnects and runs the job. The worker is paused while the probe job is created and the database restarts,
    so that the restart cannot fall in the middle of the job (a restart there leaves the job `started` by a live
    worker, upstream's behaviour too: see docs/reliability.md)."""
    stack = services
    before = {row[0] for row in stack.sql("SELECT id FROM core_job")}
    (worker,) = worker_ids(stack)
    subprocess.run(["docker", "pause", worker], check=True, capture_output=True)
    cmd = playbook_command("playbooks/verify.yml", *stack_args(stack), "-vvv")
    log = tmp_path / "verify.log"
    with log.open("w") as out:
        proc = subprocess.Popen(cmd, cwd=REPO, env=ansible_env(), stdout=out, stderr=subprocess.STDOUT)
        probe = None
        deadline = time.monotonic() + 60
        while probe is None and time.monotonic() < deadline and proc.poll() is None:
            rows = [row[0] for row in stack.sql("SELECT id FROM core_job") if row[0] not in before]
            probe = rows[0] if rows else None
            time.sleep(0.2)
        try:
            assert probe, "verify.yml created no probe job"
            stack.compose("restart", "db")  # while the probe job waits
        finally:
            subprocess.run(["docker", "unpause", worker], check=True, capture_output=True)
        rc = proc.wait(timeout=300)
    output = log.read_text()
    LEDGER.scan(stack, output, "verify.yml -vvv output (db restarted)")
    assert not crashed(output)
    assert rc == 0, output[-4000:]
    assert "verify ok (latency" in output
    record = json.loads((STATE_DIR / stack.name / "verify.json").read_text())
    LEDGER.scan(stack, json.dumps(record), "verify.json")
    assert record["outcome"] == "ok"
    LEDGER.jobs(stack, [probe])
    healthy(stack)
    LEDGER.fault("database restarted during verify.yml", "verify ok: the probe job finished after the restart")


def test_orphaned_job_is_recovered_and_locked_project_fails_clearly(services, tmp_path):
    """A job claimed 30 minutes ago by a worker process that is gone (the fault job-overdue) blocks its project:
    site.yml puts it back to pending and everything behind it runs. A locked project is not repairable: verify
    fails on it and no job is touched."""
    stack = services
    stack.break_("job-overdue")
    (orphan,) = [row[0] for row in stack.sql("SELECT id FROM core_job WHERE status = 'queued'")]
    waiting = [row[0] for row in stack.sql("SELECT id FROM core_job WHERE status = 'pending'")]
    found = facts(stack)
    assert (
        {"jobs_overdue", "jobs_orphaned"} <= codes(found) <= {"jobs_overdue", "jobs_orphaned", "orphan_job_containers"}
    )
    (problem,) = [p for p in found["problems"] if p["code"] == "jobs_orphaned"]
    (job,) = problem["evidence"]["jobs"]
    assert (job["id"], job["status"], job["type"], job["recovery"]) == (orphan, "queued", "package", "requeue")
    assert "overdue" in job["evidence"] and job["user_action"] is None  # the queue runs it again by itself
    check = play("playbooks/site.yml", stack, "--check", verbose=False)
    assert check.returncode == 0, check.output[-3000:]
    assert "would " in check.output
    assert f"job {orphan} (queued package, its worker process is gone): put back to pending" in flat(check.output)
    assert stack.job_status(orphan) == "queued", "check mode changed the job"
    res = play("playbooks/site.yml", stack, report=tmp_path / "r1")
    assert res.returncode == 0, res.output[-4000:]
    assert f"job {orphan} (queued package, its worker process is gone): put back to pending" in flat(res.output)
    LEDGER.jobs(stack, [orphan, *waiting])
    healthy(stack)
    LEDGER.fault("job-overdue", "site.yml put the orphaned job back to pending; it and the jobs behind it finished")

    stack.break_("project-locked")
    locked = facts(stack)
    assert locked["problems"] == [] and locked["ansible_facts"]["qfc_sync"]["queue"]["locked_projects"] == 1
    res = play("playbooks/verify.yml", stack, extra={"qfieldcloud_verify_timeout": 5}, verbose=False)
    assert res.returncode != 0
    assert "is pending after 5 s" in res.output
    assert "1 project(s) are locked" in flat(res.output), res.output[-3000:]
    waiting = [row[0] for row in stack.sql("SELECT id FROM core_job WHERE status = 'pending'")]
    stack.sql("UPDATE project_project SET locked_at = NULL")  # the project's own job ends the lock upstream
    LEDGER.jobs(stack, waiting)
    LEDGER.fault("project-locked", "not a problem (sync_ready); verify fails on a locked probe project, jobs kept")
    scan_written_files(stack)


def test_missing_migrations_fail_naming_the_command(services, tmp_path):
    stack = services
    stack.break_("migrations-missing")
    found = facts(stack)
    assert "migrations_missing" in codes(found), found["problems"]
    res = play("playbooks/site.yml", stack, verbose=False, report=tmp_path / "report")
    assert res.returncode != 0
    assert "docker compose exec app python manage.py migrate" in res.output
    assert "qfieldcloud_startup_migrate=true" in res.output
    LEDGER.fault("migrations-missing", "site.yml failed naming `docker compose exec app python manage.py migrate`")


# ------------------------------------------------------------------------------------------------ workers group
def test_worker_faults_and_crash_loop_are_repaired_by_one_run(workers, tmp_path):
    stack = workers
    # The crash loop: a restart every ~30 s (the entrypoint waits 30 s for postgres); wait for the threshold.
    deadline = stack.broken_at + 150
    found = facts(stack)
    while "worker_crash_loop" not in codes(found) and time.monotonic() < deadline:
        time.sleep(5)
        found = facts(stack)
    expected = {
        "worker_crash_loop",
        "worker_db_host_wrong",
        "worker_wrong_network",
        "worker_debug_command",
        "worker_port_published",
    }
    assert expected <= codes(found), found["problems"]
    os.chmod(stack.dir / ".env", 0o600)
    env_before = (stack.dir / ".env").read_bytes()

    check = play("playbooks/site.yml", stack, "--check", "--diff", report=tmp_path / "check")
    assert check.returncode == 0, check.output[-4000:]
    assert (stack.dir / ".env").read_bytes() == env_before

    res = play("playbooks/site.yml", stack, report=tmp_path / "report")
    assert res.returncode == 0, res.output[-4000:]
    assert "verify ok (latency" in res.output
    assert oct((stack.dir / ".env").stat().st_mode & 0o777) == "0o600", ".env lost its mode 0600"
    LEDGER.jobs(stack, stack.jobs_before)
    healthy(stack)
    scan_written_files(stack)
    os.chmod(stack.dir / OVERRIDE, 0o600)  # the override's mode must be kept from now on
    for fault in (
        "worker-wrong-db-host (crash loop)",
        "worker-port-published",
        "worker-wrong-network",
        "worker-debug-command",
    ):
        LEDGER.fault(fault, "repaired by one site.yml run, waiting jobs finished")


def test_worker_cut_off_from_its_network(workers, tmp_path):
    """Named at once and repaired without waiting out the grace period: cut off in the middle of a query, the
    replica cannot act on SIGTERM until TCP gives up; the database shows it holds no job, so qfc_worker kills it
    after drain.IDLE_STOP_WAIT seconds instead of letting compose wait up to the service's 15 min. Bounded here:
    a run still going after 90 s is the old defect; the stuck replica is then killed by hand and the test fails."""
    stack = workers
    (worker,) = worker_ids(stack)
    name = stack.inspect(worker)["Name"].lstrip("/")
    subprocess.run(["docker", "network", "disconnect", f"{stack.name}_default", name], check=True)
    job = stack.create_job()
    found = facts(stack)
    assert "worker_wrong_network" in codes(found), found["problems"]
    cmd = playbook_command("playbooks/site.yml", *stack_args(stack))
    log = tmp_path / "site.log"
    with log.open("w") as out:
        proc = subprocess.Popen(cmd, cwd=REPO, env=ansible_env(), stdout=out, stderr=subprocess.STDOUT)
        try:
            rc, hung = proc.wait(timeout=90), False
        except subprocess.TimeoutExpired:
            hung = True
            subprocess.run(["docker", "kill", name], capture_output=True, check=False)
            rc = proc.wait(timeout=300)
    output = log.read_text()
    LEDGER.scan(stack, output, "site.yml output (worker cut off)")
    assert not hung, "site.yml waited for the stuck replica's grace period:\n" + output[-4000:]
    assert rc == 0, output[-4000:]
    LEDGER.jobs(stack, [job])
    healthy(stack)
    assert_mode_0600(stack)
    LEDGER.fault("worker cut off from its network (docker network disconnect)", "repaired by site.yml")


def test_worker_killed_in_the_middle_of_a_job(workers, tmp_path):
    """What a Docker daemon or host restart does to a job in flight, made deterministic: the worker and the job's
    QGIS container are SIGKILLed while the job runs, and a person starts the worker again. The job stays
    `started` by a process that is gone and blocks its project (upstream's cron would fail it after the job
    timeout); qfc_sync_facts names it, site.yml puts it back to pending, and it and the job behind it finish."""
    stack = workers
    job = stack.create_job(seconds=30)
    assert stack.wait_job(job, timeout=60, until=("started",)) == "started"
    behind = stack.create_job("process_projectfile")  # a second package job would be answered with the first
    time.sleep(2)
    (worker,) = worker_ids(stack)
    subprocess.run(["docker", "kill", worker], check=True, capture_output=True)
    qgis = subprocess.run(
        ["docker", "ps", "-q", "--filter", f"label=job_id={job}"], capture_output=True, text=True, check=True
    ).stdout.split()
    assert qgis, "the job's QGIS container was not running"
    subprocess.run(["docker", "kill", *qgis], check=True, capture_output=True)
    subprocess.run(["docker", "start", worker], check=True, capture_output=True)
    time.sleep(3)
    assert stack.job_status(job) == "started" and stack.job_status(behind) == "pending"
    found = facts(stack)
    assert "jobs_orphaned" in codes(found), found["problems"]
    (problem,) = [p for p in found["problems"] if p["code"] == "jobs_orphaned"]
    assert problem["evidence"]["jobs"] == [{"id": job, "status": "started", "type": "package", "recovery": "requeue"}]
    res = play("playbooks/site.yml", stack, report=tmp_path / "r1")
    assert res.returncode == 0, res.output[-4000:]
    assert f"job {job} (started package, its worker process is gone): put back to pending" in flat(res.output)
    LEDGER.jobs(stack, [job, behind])
    healthy(stack)  # the killed QGIS container is left over: a warning (orphan_job_containers), not a blocker
    subprocess.run(["docker", "rm", "-f", *qgis], check=True, capture_output=True)  # later tests remove its image
    LEDGER.fault(
        "worker and the job's QGIS container killed in the middle of a job",
        "named jobs_orphaned; site.yml put the job back to pending; it and the job behind it finished",
    )


def test_missing_images_and_removed_worker_are_rebuilt(workers, tmp_path):
    stack = workers
    for fault in ("worker-removed", "worker-image-missing", "qgis-image-missing"):
        stack.break_(fault)
    jobs = stack.create_jobs(2)
    found = facts(stack)
    assert {"worker_not_running", "worker_image_missing", "qgis_image_missing"} <= codes(found), found["problems"]
    res = play(
        "playbooks/site.yml",
        stack,
        verbose=False,
        report=tmp_path / "report",
        extra={"qfieldcloud_worker_build_poll": 2},
    )
    assert res.returncode == 0, res.output[-4000:]
    LEDGER.jobs(stack, jobs)  # nothing ran them with the QGIS image missing: none failed
    healthy(stack)
    assert_mode_0600(stack)
    scan_written_files(stack)
    for fault in ("worker-removed", "worker-image-missing", "qgis-image-missing"):
        LEDGER.fault(fault, "images built and worker started by site.yml, waiting jobs finished")


def test_hand_started_worker_is_replaced_without_killing_its_job(workers, tmp_path):
    stack = workers
    stack.break_("worker-not-root")  # the compose worker recreated without user: root...
    stack.break_("worker-hand-started")  # ...then stopped, and a worker started by hand beside it
    found = facts(stack)
    assert "worker_hand_started" in codes(found), found["problems"]
    job = stack.create_job(seconds=6)  # the hand-started worker takes it
    assert stack.wait_job(job, timeout=30, until=("started", "finished", "failed")) == "started"
    res = play("playbooks/site.yml", stack, verbose=False, extra={"qfieldcloud_worker_remove_hand_started": True})
    assert res.returncode == 0, res.output[-4000:]
    LEDGER.jobs(stack, [job])
    gone = subprocess.run(["docker", "inspect", f"{stack.name}-worker"], capture_output=True, check=False)
    assert gone.returncode != 0, "the hand-started worker is still there"
    assert len(worker_ids(stack)) == 1
    healthy(stack)
    assert_mode_0600(stack)
    for fault in ("worker-not-root", "worker-hand-started"):
        LEDGER.fault(fault, "repaired by site.yml; the job the hand-started worker held finished")
    stack.break_("worker-stopped")
    job = stack.create_job()
    assert "worker_not_running" in codes(facts(stack))
    res = play("playbooks/site.yml", stack, "--tags", "startup", verbose=False)
    assert res.returncode == 0, res.output[-4000:]
    LEDGER.jobs(stack, [job])
    LEDGER.fault("worker-stopped", "started by site.yml --tags startup, the waiting job finished")


# ------------------------------------------------------------------------------------------------ bad input
# (module, args, option the message must name). Each one must fail, name the option, and touch nothing.
BAD_MODULE_ARGS = [
    (WORKER, {"replicas": "three"}, "replicas"),
    (WORKER, {"replicas": 10**9}, "replicas"),
    (WORKER, {"replicas": -3}, "replicas"),
    (WORKER, {"drain_timeout": "soon"}, "drain_timeout"),
    (WORKER, {"drain_timeout": -1}, "drain_timeout"),
    (WORKER, {"lock_timeout": -5}, "lock_timeout"),
    (WORKER, {"backup": "perhaps"}, "backup"),
    (WORKER, {"state": "running"}, "state"),
    (WORKER, {"mode": "swarm"}, "mode"),
    (WORKER, {"replica": 2}, "replica"),
    (WORKER, {"db_host": "no-such-db.invalid"}, "db_host"),
    (WORKER, {"service": "worker"}, "service"),
    (WORKER, {"docker_host": "tcp://127.0.0.1:9", "timeout": 3}, "docker_host"),
    (FACTS, {"timeout": 0}, "timeout"),
    (FACTS, {"timeout": "fast"}, "timeout"),
    (FACTS, {"log_lines": -1}, "log_lines"),
    (FACTS, {"pending_age_threshold": -60}, "pending_age_threshold"),
    (FACTS, {"skip": ["db", "everything"]}, "skip"),
    (FACTS, {"prometheus_textfile": "/nonexistent-dir/qfc.prom"}, "prometheus_textfile"),
]


def test_bad_module_arguments_fail_naming_the_option_and_change_nothing(workers):
    stack = workers
    before, ids = files(stack), containers(stack)
    for module, args, option in BAD_MODULE_ARGS:
        result = run_module(module, {"project_dir": str(stack.dir), **args})
        LEDGER.scan(stack, result["_stdout"], f"{module} {args}")
        LEDGER.bad_inputs.append(f"{module.rsplit('.', 1)[1]} {json.dumps(args)}")
        assert result.get("failed") is True, (module, args)
        assert result["_rc"] != 0
        assert option in result["msg"], (args, result["msg"])
        assert not crashed(result["_stdout"])  # a clean fail_json, not a module crash
    # a project directory that is a file, and one whose compose file does not parse
    not_a_dir = stack.dir / "docker-compose.yml"
    for module in (WORKER, FACTS):
        result = run_module(module, {"project_dir": str(not_a_dir)})
        LEDGER.bad_inputs.append(f"{module.rsplit('.', 1)[1]} project_dir=<a file>")
        assert result.get("failed") is True and "project_dir" in result["msg"], result.get("msg")
    assert files(stack) == before, "a failed run changed a file of the project"
    assert containers(stack) == ids, "a failed run changed a container"


def test_compose_syntax_error_changes_nothing(workers, tmp_path):
    stack = workers
    broken = tmp_path / "broken"
    shutil.copytree(stack.dir, broken, symlinks=True)
    compose = broken / "docker-compose.yml"
    compose.write_text(compose.read_text().replace("services:\n", "services:\n  oops: [unclosed\n", 1))
    before = files(Stack(stack.name, broken))
    result = run_module(WORKER, {"project_dir": str(broken)})
    LEDGER.scan(stack, result["_stdout"], "qfc_worker on a broken compose file")
    assert result.get("failed") is True and result["msg"].startswith("project_dir:"), result.get("msg")
    res = play("playbooks/site.yml", stack, extra={"qfieldcloud_project_dir": str(broken)}, verbose=False)
    assert res.returncode != 0
    assert "qfieldcloud_project_dir: docker compose finds no valid project" in res.output
    LEDGER.bad_inputs += ["qfc_worker compose file with a syntax error", "site.yml compose file with a syntax error"]
    assert files(Stack(stack.name, broken)) == before


# (variables, text the failure must contain): role argument specs (types, choices) and range checks
BAD_ROLE_VARS = [
    ({"qfieldcloud_worker_replicas": "three"}, "qfieldcloud_worker_replicas"),
    ({"qfieldcloud_worker_replicas": -1}, "qfieldcloud_worker_replicas: expected 0"),
    ({"qfieldcloud_worker_replicas": 100000}, "qfieldcloud_worker_replicas: expected 0"),
    ({"qfieldcloud_worker_state": "running"}, "qfieldcloud_worker_state must be one of"),
    ({"qfieldcloud_worker_service": "worker"}, "qfieldcloud_worker_service: worker is not a service"),
    ({"qfieldcloud_worker_drain_timeout": "1h"}, "qfieldcloud_worker_drain_timeout"),
    ({"qfieldcloud_startup_db_timeout": -5}, "qfieldcloud_startup_db_timeout: expected a number of seconds"),
    ({"qfieldcloud_verify_timeout": "soon"}, "qfieldcloud_verify_timeout"),
    ({"qfieldcloud_verify_poll": 0}, "qfieldcloud_verify_poll: expected a number of seconds"),
    ({"qfieldcloud_validate_certs": "perhaps"}, "qfieldcloud_validate_certs"),
    ({"qfieldcloud_verify_job_type": "delta_apply"}, "qfieldcloud_verify_job_type"),
]


def test_bad_role_variables_fail_early_naming_the_variable(workers):
    stack = workers
    before, ids = files(stack), containers(stack)

    def one(case):
        return case, play(
            "playbooks/site.yml", stack, extra=case[0], verbose=False, env={"ANSIBLE_DISPLAY_ARGS_TO_STDOUT": "0"}
        )

    with ThreadPoolExecutor(max_workers=3) as pool:
        runs = list(pool.map(one, BAD_ROLE_VARS))
    for (variables, expected), res in runs:
        LEDGER.bad_inputs.append(f"site.yml -e {json.dumps(variables)}")
        assert res.returncode != 0, variables
        assert expected in res.output, (variables, res.output[-3000:])
        assert not crashed(res.output)
    # an unreachable Docker daemon: a clear failure, nothing written
    res = play("playbooks/site.yml", stack, env={"DOCKER_HOST": "tcp://127.0.0.1:9"}, verbose=False)
    LEDGER.bad_inputs.append("site.yml with DOCKER_HOST=tcp://127.0.0.1:9")
    assert res.returncode != 0
    assert "docker_unreachable" in res.output and "Cannot connect to the Docker daemon" in res.output
    assert files(stack) == before, "a failed run changed a file of the project"
    assert containers(stack) == ids, "a failed run changed a container"


# ------------------------------------------------------------------------------------------------ concurrency
def enforce_outcome(output: str) -> str:
    """``changed`` or ``ok``: what qfc_worker reported in one site.yml output."""
    block = output.split(f"TASK [fibreflow.qfieldcloud.worker : {ENFORCE_TASK}", 1)[1]
    line = next(ln for ln in block.splitlines() if ln.startswith(("changed:", "ok:", "fatal:")))
    return line.split(":", 1)[0]


def test_two_site_runs_at_once_end_with_one_worker_set(workers, tmp_path):
    stack = workers
    stack.break_("worker-stopped")
    jobs = stack.create_jobs(2)
    results = {}

    def one(number: int) -> None:
        results[number] = play(
            "playbooks/site.yml",
            stack,
            verbose=False,
            extra={"qfieldcloud_worker_replicas": 2},
            report=tmp_path / f"r{number}",
        )

    threads = [threading.Thread(target=one, args=(n,)) for n in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for res in results.values():
        assert res.returncode == 0, res.output[-4000:]
    # qfc_worker serialises on its lock: one run repaired, the other waited and found nothing to do
    assert sorted(enforce_outcome(res.output) for res in results.values()) == ["changed", "ok"]
    assert len(worker_ids(stack)) == 2
    found = healthy(stack)
    assert found["ansible_facts"]["qfc_sync"]["worker"]["replicas_running"] == 2
    assert_mode_0600(stack)  # the override was rewritten (scale 2): its mode 0600 was kept
    assert "scale: 2" in (stack.dir / OVERRIDE).read_text()
    LEDGER.jobs(stack, jobs)
    LEDGER.fault("two site.yml runs at once (worker stopped)", "one repaired, the other waited; 2 replicas")


# ------------------------------------------------------------------------------------------------ interruption
def descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, IndexError):
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
                children.setdefault(ppid, []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def module_running(pid: int) -> bool:
    for child in descendants(pid):
        with contextlib.suppress(OSError):
            if b"AnsiballZ_qfc_worker" in Path(f"/proc/{child}/cmdline").read_bytes():
                return True
    return False


def kill_tree(proc: subprocess.Popen) -> None:
    """SIGKILL ansible-playbook and everything below it (the module runs in a session of its own).

    The tree is frozen first, SIGSTOP until no new process appears: a shell that forks the module between the
    listing and the kill would otherwise leave the module running on its own, writing files after the test has
    read them.
    """
    frozen: set[int] = set()
    while True:
        new = {proc.pid, *descendants(proc.pid)} - frozen
        if not new:
            break
        for pid in new:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGSTOP)
        frozen |= new
    for pid in frozen:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    proc.wait()


class ComposeLoader(yaml.SafeLoader):
    """YAML as compose reads it: its tags (!override, !reset) keep the value they tag."""


ComposeLoader.add_multi_constructor(
    "!",
    lambda loader, _suffix, node: (
        loader.construct_sequence(node)
        if isinstance(node, yaml.SequenceNode)
        else loader.construct_mapping(node)
        if isinstance(node, yaml.MappingNode)
        else loader.construct_scalar(node)
    ),
)


def env_compose_file(text: str) -> str:
    from ansible_collections.fibreflow.qfieldcloud.plugins.module_utils import envfile

    return envfile.parse_env(text)["COMPOSE_FILE"]


def test_killed_runs_never_leave_half_written_files(workers):
    """ansible-playbook killed (SIGKILL, whole tree) at different moments of a worker repair that rewrites both
    .env (COMPOSE_FILE) and the override (scale): each file is always parseable and either old or new."""
    stack = workers
    env_path, override_path = stack.dir / ".env", stack.dir / OVERRIDE
    if not override_path.exists():  # run alone (-k): repair first, as the tests before it do
        assert play("playbooks/site.yml", stack, verbose=False).returncode == 0
        os.chmod(override_path, 0o600)
    new_env = env_path.read_bytes()  # COMPOSE_FILE with the override: what a repair writes
    job = stack.create_job(seconds=3)
    kills = 0
    for number, delay in enumerate((0.0, 0.5, 1.0, 1.6, 2.4, 3.5)):
        replicas = 1 if number % 2 == 0 else 2
        old_env = new_env.replace(f":{OVERRIDE}".encode(), b"")  # someone edited COMPOSE_FILE back
        assert old_env != new_env
        env_path.write_bytes(old_env)
        old_override = override_path.read_bytes()
        cmd = playbook_command(
            "playbooks/worker.yml",
            *stack_args(stack),
            "-e",
            "qfieldcloud_worker_action=start",
            "-e",
            f"qfieldcloud_worker_replicas={replicas}",
        )
        proc = subprocess.Popen(cmd, cwd=REPO, env=ansible_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 60
        while not module_running(proc.pid) and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(delay)
        finished = proc.poll() is not None
        kill_tree(proc)
        kills += 0 if finished else 1
        env_now, override_now = env_path.read_bytes(), override_path.read_bytes()
        assert env_now in (old_env, new_env), f"kill {number}: .env is neither old nor new"
        new_override = re.sub(rb"scale: \d+", f"scale: {replicas}".encode(), old_override)
        assert override_now in (old_override, new_override), (
            f"kill {number}: the override is neither old nor new:\n"
            + (
                "".join(
                    difflib.unified_diff(
                        old_override.decode().splitlines(True), override_now.decode().splitlines(True), "old", "now"
                    )
                )
            )
        )
        assert yaml.load(override_now, Loader=ComposeLoader)["services"][SERVICE]  # parseable
        assert OVERRIDE in env_compose_file(env_now.decode()) or env_now == old_env
        assert not [p for p in stack.dir.iterdir() if p.name.endswith(".tmp")], "a temporary file was left"
        assert stack.compose("config", "-q", check=False).returncode == 0, "compose cannot read the project"
        assert_mode_0600(stack)
    assert kills >= 3, "the runs ended before they could be killed"
    # the next run converges: both files new, one worker set, the job created before finished
    res = play(
        "playbooks/site.yml",
        stack,
        verbose=False,
        extra={"qfieldcloud_worker_replicas": 1, "qfieldcloud_worker_banner_timeout": 20},
    )
    # (The worker role's banner wait once timed out here: after the scale-down, the kept replica's banner had
    # scrolled out of the log lines it read. A job dequeued since the banner now counts.)
    assert res.returncode == 0, res.output[-4000:]
    assert env_path.read_bytes() == new_env
    again = play("playbooks/site.yml", stack, verbose=False, extra={"qfieldcloud_worker_replicas": 1})
    assert again.returncode == 0 and recap(again)["changed"] == 0, again.output[-4000:]
    assert len(worker_ids(stack)) == 1
    LEDGER.jobs(stack, [job, stack.create_job("process_projectfile")])  # a package job could answer with job
    healthy(stack)
    assert_mode_0600(stack)
    scan_written_files(stack)
    LEDGER.fault(
        f"ansible-playbook SIGKILLed during a worker repair ({kills} times)",
        "files always whole (old or new); the next run converged",
    )


# ------------------------------------------------------------------------------------------------ .env by hand
def test_env_with_comments_quotes_exports_blanks_and_duplicates(workers):
    """Not an error: read as compose reads it (last assignment wins) and edited on one line only."""
    stack = workers
    env_path = stack.dir / ".env"
    lines = env_path.read_text().splitlines()
    out = ["# QFieldCloud settings, edited by hand", "", "QFIELDCLOUD_WORKER_REPLICAS=4  # raised once, see below", ""]
    for line in lines:
        key, _sep, value = line.partition("=")
        if key == "COMPOSE_FILE":
            # a stale assignment first, then the one that counts, quoted, without the override
            out.append("COMPOSE_FILE=docker-compose.yml")
            out.append(f'export COMPOSE_FILE="{value.replace(":" + OVERRIDE, "")}"  # production')
        elif key in ("SECRET_KEY", "QFIELDCLOUD_HOST"):
            out.append(f"export {key}='{value}'")
        elif key == "POSTGRES_HOST":
            out += ["", f'{key}="{value}"', "   "]
        else:
            out.append(line)
    out.append("QFIELDCLOUD_WORKER_REPLICAS=1")
    text = "\n".join(out) + "\n"
    env_path.write_text(text)
    os.chmod(env_path, 0o600)
    assert stack.compose("config", "-q", check=False).returncode == 0, "compose itself refuses this .env"

    found = facts(stack)
    qfc = found["ansible_facts"]["qfc_sync"]
    assert qfc["project"]["name"] == stack.name
    assert qfc["worker"]["replicas_expected"] == 1  # the last assignment wins, as in compose
    result = run_module(WORKER, {"project_dir": str(stack.dir)}, diff=True)
    LEDGER.scan(stack, result["_stdout"], "qfc_worker diff on a hand-written .env")
    assert not result.get("failed"), result.get("msg")
    assert result["changed"] is True  # COMPOSE_FILE lost the override
    new = env_path.read_text()
    changed = [(a, b) for a, b in zip(text.splitlines(), new.splitlines(), strict=True) if a != b]
    assert len(changed) == 1 and changed[0][0].startswith("export COMPOSE_FILE="), changed
    assert changed[0][1].startswith('export COMPOSE_FILE="') and f':{OVERRIDE}"  # production' in changed[0][1]
    assert oct(env_path.stat().st_mode & 0o777) == "0o600"
    assert run_module(WORKER, {"project_dir": str(stack.dir)})["changed"] is False
    LEDGER.jobs(stack, [stack.create_job()])
    LEDGER.bad_inputs.append(".env with comments, quotes, export prefixes, blank and duplicate lines (handled)")
