# SPDX-License-Identifier: GPL-3.0-or-later
"""playbooks/worker.yml, the field guide's worker.py as a playbook: status, logs, restart, build, start.

One private stand-in for the whole file (the actions change the worker but leave the stack healthy).
"""

from __future__ import annotations

import json
import re
import subprocess
import uuid

import pytest
from ansible_run import play
from standin import Stack

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def stack(module_stacks):
    return module_stacks("wp")


@pytest.fixture(scope="module")
def state_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("state")


def worker(stack: Stack, action: str, state_dir=None, **extra):
    variables = {"qfieldcloud_worker_action": action, "qfieldcloud_worker_build_poll": 1, **extra}
    if state_dir is not None:
        variables["qfieldcloud_state_dir"] = str(state_dir)
    res = play("playbooks/worker.yml", stack, extra=variables)  # its output is scanned for the stack's secrets
    assert res.returncode == 0, res.output[-3000:]
    return res


def worker_started_at(stack: Stack) -> str:
    return stack.inspect(stack.containers("worker_wrapper", all_=False)[0])["State"]["StartedAt"]


def test_status_prints_a_short_human_summary(stack):
    res = worker(stack, "status")
    assert f"localhost project {stack.name}: sync ready" in res.said
    assert "workers running 1/1" in res.said
    # upstream's worker restarts until migrate has run: the lifetime count is not 0, the recent one is what counts
    assert re.search(
        rf"{stack.name}-worker_wrapper-1: running, user root, restarts \d+ in the last 600 s \(\d+ in its life\), "
        "dequeuing",
        res.said,
    ), res.output[-3000:]
    assert "problems: none" in res.said


def test_logs_prints_the_recent_lines_with_secrets_masked(stack):
    cid = stack.containers("worker_wrapper", all_=False)[0]
    marker = f"marker-{uuid.uuid4().hex[:8]}"
    # A line such as a library may print, with the database password in it, on the worker's own log.
    subprocess.run(
        [
            "docker",
            "exec",
            cid,
            "sh",
            "-c",
            f'echo "{marker} connecting with password $POSTGRES_PASSWORD" >/proc/1/fd/1',
        ],
        check=True,
        capture_output=True,
    )
    res = worker(stack, "logs", qfieldcloud_worker_log_lines=3)
    assert f"{marker} connecting with password ********" in res.said
    shown = re.search(r"=> \n    msg:\n((?:    - .*\n(?:        .*\n)*)+)", res.output)
    assert shown and shown.group(1).count("\n    - ") <= 3, res.output[-2000:]


def test_restart_waits_for_the_job_in_flight(stack):
    before = worker_started_at(stack)
    job = stack.create_job(seconds=8)
    assert stack.wait_job(job, timeout=30, until=("started", "finished", "failed")) == "started"
    res = worker(stack, "restart")
    assert stack.job_status(job) == "finished", "the restart killed the job in flight"
    assert worker_started_at(stack) > before, "the worker was not restarted"
    assert "restart" in res.output
    assert stack.wait_job(stack.create_job(), timeout=60) == "finished"


def test_build_shows_progress_and_how_long_the_last_build_took(stack, state_dir):
    first = worker(stack, "build", state_dir)
    assert "No build recorded yet on this host" in first.said
    assert "Wait for the build (one line per poll)" in first.said
    record = json.loads((state_dir / stack.name / "last-build.json").read_text())
    assert record["services"][:2] == ["worker_wrapper", "qgis3"] and record["duration_s"] >= 0
    assert set(record["services"]) <= {"worker_wrapper", "qgis3", "qgis4"}
    second = worker(stack, "build", state_dir)
    took = re.search(r"The last build \(worker_wrapper, qgis3, (?:qgis4, )?([^)]+)\) took (\d+) s", second.said)
    assert took, second.output[-3000:]
    assert took.group(1) == record["finished"]
    assert abs(int(took.group(2)) - record["duration_s"]) <= 1
    assert stack.wait_job(stack.create_job(), timeout=60) == "finished"


def test_start_brings_a_stopped_worker_back(stack):
    stack.break_("worker-stopped")
    res = worker(stack, "start")
    assert stack.containers("worker_wrapper", all_=False), res.output[-3000:]
    assert stack.wait_job(stack.create_job(), timeout=60) == "finished"
