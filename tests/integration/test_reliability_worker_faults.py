# SPDX-License-Identifier: GPL-3.0-or-later
"""Reliability on the stand-in: the worker faults, on one private stack (``rlw...``) broken at the start.

A crash loop with the guide's worker faults, repaired by one run; a worker cut off from its network; a worker killed
in the middle of a job; missing images; a hand-started worker replaced without killing its job.
"""

from __future__ import annotations

import os
import subprocess
import time

import pytest
from ansible_run import REPO, WORKER, ansible_env, codes, playbook_command, run_module, stack_args
from reliability_common import (
    LEDGER,
    OVERRIDE,
    SERVICE,
    assert_mode_0600,
    facts,
    healthy,
    ledgered,
    play,
    scan_written_files,
    worker_ids,
    write_ledger,
)
from standin import Pristine

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module", autouse=True)
def ledger():
    yield LEDGER
    write_ledger("worker-faults")


@pytest.fixture(scope="module")
def workers(module_stacks):
    """Private stack for the worker faults, healthy when made; each test takes it in the state it needs from
    ``crash_looping`` or ``enforced`` below, so that it passes alone and in any order."""
    stack = ledgered(module_stacks("rlw"))
    stack.pristine = Pristine(stack)
    return stack


# The faults that make the worker crash-loop, each named at once; the loop itself takes about 30 s per restart.
CRASH_LOOP_CODES = {"worker_db_host_wrong", "worker_wrong_network", "worker_debug_command", "worker_port_published"}


def break_into_a_crash_loop(stack) -> None:
    """Wrong db host, published port, wrong network and the debugpy command at once, with 3 jobs waiting."""
    stack.pristine.restore()
    for fault in ("worker-port-published", "worker-debug-command", "worker-wrong-network"):
        stack.break_(fault)
    # The worker on the wrong network waits for postgres and ignores SIGTERM meanwhile (as upstream's
    # entrypoint): kill it, so that compose recreates it at once with the wrong db host.
    subprocess.run(["docker", "kill", *stack.containers(SERVICE, all_=False)], capture_output=True, check=True)
    stack.break_("worker-wrong-db-host")
    stack.jobs_before = stack.create_jobs(3)  # nothing can run them: they wait
    stack.broken_at = time.monotonic()


@pytest.fixture
def crash_looping(workers):
    """The stack with the crash loop's faults in place: broken by the first test that needs it (first in the file,
    because Docker needs about 30 s per restart to show the loop: the services tests run meanwhile) and broken
    again, from the stand-in's own files, when it is not broken that way (a test repaired it, or ran before)."""
    if not codes(facts(workers)) >= CRASH_LOOP_CODES:
        break_into_a_crash_loop(workers)
    return workers


@pytest.fixture
def enforced(workers):
    """The stack healthy with the override of one site.yml run in place (mode 0600), as after the crash loop's
    repair. When it is not (the test runs alone, or after the crash loop was injected), the stand-in's own
    files are put back and the worker enforced once."""
    override = workers.dir / OVERRIDE
    found = facts(workers)
    if not (found["sync_ready"] and override.exists() and override.stat().st_mode & 0o777 == 0o600):
        workers.pristine.restore()
        result = run_module(WORKER, {"project_dir": str(workers.dir)})
        LEDGER.scan(workers, result["_stdout"], "qfc_worker result")
        assert not result.get("failed"), result.get("msg")
        os.chmod(override, 0o600)
        deadline = time.monotonic() + 60
        while not facts(workers)["sync_ready"] and time.monotonic() < deadline:
            time.sleep(2)
        healthy(workers)
    return workers


# ------------------------------------------------------------------------------------------------ the crash loop
def test_crash_loop_is_named_while_it_loops(crash_looping):
    """Wrong db host, published port, wrong network and the debugpy command at once: the worker crash-loops."""
    stack = crash_looping
    first = facts(stack)
    assert codes(first) >= CRASH_LOOP_CODES, first["problems"]
    assert first["sync_ready"] is False
    for job in stack.jobs_before:
        assert stack.job_status(job) == "pending"


# ------------------------------------------------------------------------------------------------ workers group
def test_worker_faults_and_crash_loop_are_repaired_by_one_run(crash_looping, tmp_path):
    stack = crash_looping
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
    assert "verify ok (latency" in res.said
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


def test_worker_cut_off_from_its_network(enforced, tmp_path):
    """Named at once and repaired without waiting out the grace period: cut off in the middle of a query, the
    replica cannot act on SIGTERM until TCP gives up; the database shows it holds no job, so qfc_worker kills it
    after drain.IDLE_STOP_WAIT seconds instead of letting compose wait up to the service's 15 min. Bounded here:
    a run still going after 240 s (the grace period is 900 s) is the old defect; the stuck replica is then killed by
    hand and the test fails. The run includes verify's probe job, which a loaded 2-core machine makes slow."""
    stack = enforced
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
            rc, hung = proc.wait(timeout=240), False
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


def test_worker_killed_in_the_middle_of_a_job(enforced, tmp_path):
    """What a Docker daemon or host restart does to a job in flight, made deterministic: the worker and the job's
    QGIS container are SIGKILLed while the job runs, and a person starts the worker again. The job stays
    `started` by a process that is gone and blocks its project (upstream's cron would fail it after the job
    timeout); qfc_sync_facts names it, site.yml puts it back to pending, and it and the job behind it finish."""
    stack = enforced
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
    (found_job,) = problem["evidence"]["jobs"]
    assert (found_job["id"], found_job["status"], found_job["type"], found_job["recovery"]) == (
        job,
        "started",
        "package",
        "requeue",
    )
    assert "claimant_gone" in found_job["evidence"] and found_job["user_action"] is None
    res = play("playbooks/site.yml", stack, report=tmp_path / "r1")
    assert res.returncode == 0, res.output[-4000:]
    assert f"job {job} (started package, its worker process is gone): put back to pending" in res.said
    LEDGER.jobs(stack, [job, behind])
    healthy(stack)  # the killed QGIS container is left over: a warning (orphan_job_containers), not a blocker
    subprocess.run(["docker", "rm", "-f", *qgis], check=True, capture_output=True)  # later tests remove its image
    LEDGER.fault(
        "worker and the job's QGIS container killed in the middle of a job",
        "named jobs_orphaned; site.yml put the job back to pending; it and the job behind it finished",
    )


def test_missing_images_and_removed_worker_are_rebuilt(enforced, tmp_path):
    stack = enforced
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


def test_hand_started_worker_is_replaced_without_killing_its_job(enforced, tmp_path):
    stack = enforced
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
