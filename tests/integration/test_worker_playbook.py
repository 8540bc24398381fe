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
from ansible_run import JSON_CALLBACK, play, task_results
from standin import Stack

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def stack(module_stacks):
    return module_stacks("wp")


@pytest.fixture(scope="module")
def state_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("state")


def worker(stack: Stack, action: str, state_dir=None, env=None, ok=True, **extra):
    variables = {"qfieldcloud_worker_action": action, "qfieldcloud_worker_build_poll": 1, **extra}
    if state_dir is not None:
        variables["qfieldcloud_state_dir"] = str(state_dir)
    res = play("playbooks/worker.yml", stack, extra=variables, env=env)  # its output is scanned for the secrets
    if ok:
        assert res.returncode == 0, res.output[-3000:]
    return res


PROGRESS_TASK = "Build progress (one line every qfieldcloud_worker_build_poll seconds)"
# A progress line: "<services>: building for 1m05s, the last build took 12m03s; step #7 [qgis3 2/3] RUN ..."
PROGRESS = re.compile(
    r"^(?P<services>[\w, ]+): (?:building for|build (?P<end>done|FAILED \(exit \d+\)) after) (?P<elapsed>[\dms]+), "
    r"(?:the last build took (?P<expected>[\dms]+)|no build recorded before on this host \(.*\)); "
    r"(?:step (?P<step>#\d+ \[.*)|no build step yet)$"
)


def seconds(duration: str) -> int:
    """12m03s or 45s as seconds."""
    m = re.fullmatch(r"(?:(\d+)m)?(\d+)s", duration)
    assert m, duration
    return int(m[1] or 0) * 60 + int(m[2])


def progress_lines(stdout: str) -> list[dict]:
    """The progress lines of a build run with JSON_CALLBACK, each parsed (PROGRESS), with no line saying FAILED."""
    assert "FAILED - RETRYING" not in stdout
    results = task_results(stdout)
    assert not any("FAILED - RETRYING" in json.dumps(r) for _name, r in results)
    polls = [r for name, r in results if name.endswith(PROGRESS_TASK) and not r.get("skipped")]
    assert len(polls) == 1, [name for name, _r in results]
    lines = [item["_ansible_item_label"] for item in polls[0]["results"]]
    parsed = [PROGRESS.match(line) for line in lines]
    assert all(parsed), lines
    return [m.groupdict() for m in parsed]


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
    first = worker(stack, "build", state_dir, env=JSON_CALLBACK)
    assert "No build recorded yet on this host" in first.stdout
    lines = progress_lines(first.stdout)
    # one line per poll; the last says it is done, no line says FAILED (none failed)
    assert lines[-1]["end"] == "done" and all(line["end"] is None for line in lines[:-1]), lines
    assert not any("FAILED" in str(line) for line in lines)
    assert all(line["expected"] is None for line in lines), lines  # nothing recorded before
    assert lines[-1]["step"], lines  # the build's own output names its steps (BuildKit's plain progress)
    assert [seconds(line["elapsed"]) for line in lines] == sorted(seconds(line["elapsed"]) for line in lines)
    record = json.loads((state_dir / stack.name / "last-build.json").read_text())
    assert record["services"][:2] == ["worker_wrapper", "qgis3"] and record["duration_s"] >= 0
    assert set(record["services"]) <= {"worker_wrapper", "qgis3", "qgis4"}
    assert seconds(lines[-1]["elapsed"]) == int(record["duration_s"])

    second = worker(stack, "build", state_dir, env=JSON_CALLBACK)
    said = " ".join(" ".join(str(r.get("msg", "")).split()) for _name, r in task_results(second.stdout))
    took = re.search(r"The last build \(worker_wrapper, qgis3, (?:qgis4, )?([^)]+)\) took (\d+) s", said)
    assert took, said[-3000:]
    assert took.group(1) == record["finished"]
    assert abs(int(took.group(2)) - record["duration_s"]) <= 1
    again = progress_lines(second.stdout)
    # every line of the second build says how long the first took: elapsed seconds, expected, the latest step
    assert all(seconds(line["expected"]) == int(record["duration_s"]) for line in again), again
    assert again[-1]["end"] == "done" and again[-1]["step"], again
    assert stack.wait_job(stack.create_job(), timeout=60) == "finished"


def test_a_failed_build_fails_with_its_last_lines(stack, state_dir):
    dockerfile = stack.dir / "docker-qgis" / "Dockerfile"
    original = dockerfile.read_text()
    dockerfile.write_text(original + "RUN echo standin-broken-build && exit 7\n")
    try:
        res = worker(stack, "build", state_dir, env=JSON_CALLBACK, ok=False)
    finally:
        dockerfile.write_text(original)
    assert res.returncode == 2, res.output[-3000:]
    lines = progress_lines(res.stdout)
    assert lines[-1]["end"].startswith("FAILED (exit ") and all(line["end"] is None for line in lines[:-1]), lines
    failed = [(name, r) for name, r in task_results(res.stdout) if r.get("failed")]
    assert [name.split(" : ")[-1] for name, _r in failed] == ["Fail when the build failed or did not finish in time"]
    msg = failed[0][1]["msg"]
    assert isinstance(msg, list) and "failed with exit code" in msg[0], msg
    assert any("standin-broken-build" in line for line in msg[1:]), msg
    assert len(msg) <= 21, msg
    # the images of the build before are still there: the worker still runs jobs
    assert stack.wait_job(stack.create_job(), timeout=60) == "finished"


def test_start_brings_a_stopped_worker_back(stack):
    stack.break_("worker-stopped")
    res = worker(stack, "start")
    assert stack.containers("worker_wrapper", all_=False), res.output[-3000:]
    assert stack.wait_job(stack.create_job(), timeout=60) == "finished"
