# SPDX-License-Identifier: GPL-3.0-or-later
"""Reliability on the stand-in: service, queue and database faults, on one private stack (``rls...``).

db and app down with a stalled queue, a database that answers slowly, the database restarted during verify.yml,
overdue and locked jobs, missing migrations (last: it empties the database). For each: qfc_sync_facts names the
problems, site.yml repairs what it can and fails clearly on the rest, and every job created before ends finished.
"""

from __future__ import annotations

import json
import subprocess
import time

import pytest
from ansible_run import REPO, STATE_DIR, ansible_env, codes, flat, playbook_command, stack_args
from reliability_common import (
    LEDGER,
    crashed,
    facts,
    healthy,
    ledgered,
    play,
    scan_written_files,
    worker_ids,
    write_ledger,
)

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module", autouse=True)
def ledger():
    yield LEDGER
    write_ledger("services")


@pytest.fixture(scope="module")
def services(module_stacks):
    return ledgered(module_stacks("rls"))


@pytest.fixture
def ready(services):
    """The stack sync-ready, as every test but the migrations one leaves it; made afresh when a test left it broken
    beyond what the collection repairs (migrations-missing drops the schema), so that any order works."""
    if not facts(services)["sync_ready"]:
        services.down()
        services.up()
        ledgered(services)
    return services


# ------------------------------------------------------------------------------------------------ services group
def test_db_app_down_with_a_stalled_queue_are_repaired_in_order(ready, tmp_path):
    stack = ready
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
    assert "verify ok (latency" in res.said
    LEDGER.jobs(stack, stalled)
    healthy(stack)
    scan_written_files(stack)
    for fault in ("queue-stalled", "app-down", "db-down"):
        LEDGER.fault(fault, "repaired by site.yml (startup order, worker), pending jobs finished")


def test_slow_database_is_a_finding_within_the_timeout(ready):
    """A lock held on core_job: the queue query cannot answer. The module reports it within its timeout."""
    stack = ready
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


def test_database_restarted_during_verify(ready, tmp_path):
    """The database restarts while verify.yml's probe job waits: the worker's connection dies under it, it
    reconnects and runs the job. The worker is paused while the probe job is created and the database restarts,
    so that the restart cannot fall in the middle of the job (a restart there leaves the job `started` by a live
    worker, upstream's behaviour too: see docs/reliability.md)."""
    stack = ready
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
    assert "verify ok (latency" in flat(output)
    record = json.loads((STATE_DIR / stack.name / "verify.json").read_text())
    LEDGER.scan(stack, json.dumps(record), "verify.json")
    assert record["outcome"] == "ok"
    LEDGER.jobs(stack, [probe])
    healthy(stack)
    LEDGER.fault("database restarted during verify.yml", "verify ok: the probe job finished after the restart")


def test_orphaned_job_is_recovered_and_locked_project_fails_clearly(ready, tmp_path):
    """A job claimed 30 minutes ago by a worker process that is gone (the fault job-overdue) blocks its project:
    site.yml puts it back to pending and everything behind it runs. A locked project is not repairable: verify
    fails on it and no job is touched."""
    stack = ready
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
    assert "would " in check.said
    assert f"job {orphan} (queued package, its worker process is gone): put back to pending" in check.said
    assert stack.job_status(orphan) == "queued", "check mode changed the job"
    res = play("playbooks/site.yml", stack, report=tmp_path / "r1")
    assert res.returncode == 0, res.output[-4000:]
    assert f"job {orphan} (queued package, its worker process is gone): put back to pending" in res.said
    LEDGER.jobs(stack, [orphan, *waiting])
    healthy(stack)
    LEDGER.fault("job-overdue", "site.yml put the orphaned job back to pending; it and the jobs behind it finished")

    stack.break_("project-locked")
    locked = facts(stack)
    assert locked["problems"] == [] and locked["ansible_facts"]["qfc_sync"]["queue"]["locked_projects"] == 1
    res = play("playbooks/verify.yml", stack, extra={"qfieldcloud_verify_timeout": 5}, verbose=False)
    assert res.returncode != 0
    assert "is pending after 5 s" in res.said
    assert "1 project(s) are locked" in res.said, res.output[-3000:]
    waiting = [row[0] for row in stack.sql("SELECT id FROM core_job WHERE status = 'pending'")]
    stack.sql("UPDATE project_project SET locked_at = NULL")  # the project's own job ends the lock upstream
    LEDGER.jobs(stack, waiting)
    LEDGER.fault("project-locked", "not a problem (sync_ready); verify fails on a locked probe project, jobs kept")
    scan_written_files(stack)


def test_missing_migrations_fail_naming_the_command(ready, tmp_path):
    stack = ready
    stack.break_("migrations-missing")
    found = facts(stack)
    assert "migrations_missing" in codes(found), found["problems"]
    res = play("playbooks/site.yml", stack, verbose=False, report=tmp_path / "report")
    assert res.returncode != 0
    assert "docker compose exec app python manage.py migrate" in res.said
    assert "qfieldcloud_startup_migrate=true" in res.output
    LEDGER.fault("migrations-missing", "site.yml failed naming `docker compose exec app python manage.py migrate`")
