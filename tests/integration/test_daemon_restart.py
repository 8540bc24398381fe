# SPDX-License-Identifier: GPL-3.0-or-later
"""The Docker daemon restarted in the middle of a site.yml run.

On these machines dockerd runs without systemd (scripts/setup-host.sh starts it as
``nohup dockerd >/var/log/dockerd.log 2>&1 &``). A restart here is what a package upgrade or an operator does:
SIGTERM to dockerd, wait until it has exited, start it again the same way, wait for ``docker info``. Every
container of every stack on the engine stops with it; those with ``restart: unless-stopped`` come back.

Marked ``disruptive``: tests/conftest.py runs it after every other test of a session whatever its file's name or
the order asked for, and ``make test`` runs it alone (``make test-disruptive``) after the parallel suites. The
engine is restarted in a ``finally`` block whatever happens, and the session's shared stand-in is checked (and
repaired with site.yml when the restart left it unhealthy) before the test ends.

Restarting the engine disturbs every stack on it, other people's too: outside CI it runs only when
FIBREFLOW_RESTART_DOCKERD=1 is set. CI (root, no systemd, CI=true) always runs it.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
import uuid
from pathlib import Path

import pytest
from ansible_run import FACTS, REPO, ansible_env, play, playbook_command, recap, remove_stack, run_module, stack_args
from standin import Stack

# disruptive: `make test-integration` leaves it out, `make test-disruptive` runs it alone (it restarts the engine).
pytestmark = [pytest.mark.integration, pytest.mark.disruptive]


def dockerd_pids() -> list[int]:
    """Process ids whose executable is dockerd (never containerd or shims)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                argv0 = (entry / "cmdline").read_bytes().split(b"\0", 1)[0]
            except OSError:
                continue
            if os.path.basename(argv0.decode(errors="replace")) == "dockerd":
                pids.append(int(entry.name))
    return pids


def why_not() -> str | None:
    """The reason a restart of dockerd is impossible or unwanted here, else None."""
    if os.geteuid() != 0:
        return "restarting dockerd needs root"
    if Path("/run/systemd/system").exists():
        return "dockerd is managed by systemd here; this test restarts a dockerd started by hand (as on CI)"
    if len(dockerd_pids()) != 1:
        return f"expected one dockerd process started by hand, found {len(dockerd_pids())}"
    if os.environ.get("CI") != "true" and os.environ.get("FIBREFLOW_RESTART_DOCKERD") != "1":
        return (
            "restarting dockerd stops every container on this engine, other people's stacks too: "
            "set FIBREFLOW_RESTART_DOCKERD=1 to run it here (CI runs it always)"
        )
    return None


def docker_answers() -> bool:
    return subprocess.run(["docker", "info"], capture_output=True, check=False, timeout=30).returncode == 0


def stop_dockerd(timeout: float = 90) -> None:
    (pid,) = dockerd_pids()
    os.kill(pid, 15)
    deadline = time.monotonic() + timeout
    while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not Path(f"/proc/{pid}").exists(), "dockerd did not exit after SIGTERM"


def start_dockerd(timeout: float = 90) -> None:
    """Start dockerd as scripts/setup-host.sh does, unless one is already running; wait for `docker info`."""
    if not dockerd_pids():
        with open("/var/log/dockerd.log", "ab") as log:
            subprocess.Popen(["nohup", "dockerd"], stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + timeout
    while not docker_answers():
        assert time.monotonic() < deadline, "dockerd did not answer `docker info` after its restart"
        time.sleep(0.5)


def wait_sync_ready(stack: Stack, timeout: float) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        result = run_module(FACTS, {"project_dir": str(stack.dir)})
        if result.get("sync_ready") or time.monotonic() > deadline:
            return result
        time.sleep(3)


SKIP_REASON = why_not()


@pytest.mark.skipif(SKIP_REASON is not None, reason=SKIP_REASON or "")
def test_docker_daemon_restarted_during_a_site_run(standin):
    stack = Stack(f"rlz{uuid.uuid4().hex[:5]}")
    stack.down()
    stack.up()
    try:
        stack.break_("worker-stopped")
        jobs = stack.create_jobs(2)
        log = REPO / "tests" / "output" / f"{stack.name}-site.log"
        cmd = playbook_command("playbooks/site.yml", *stack_args(stack), "-vvv")
        with log.open("w") as out:
            run = subprocess.Popen(cmd, cwd=REPO, env=ansible_env(), stdout=out, stderr=subprocess.STDOUT)
            try:
                time.sleep(6)  # the run is in the startup role by now
                stop_dockerd()
                # While the engine is down, the diagnosis is a finding, not a traceback.
                down = run_module(FACTS, {"project_dir": str(stack.dir), "timeout": 3})
                assert not down.get("failed"), down.get("msg")
                assert {p["code"] for p in down["problems"]} == {"docker_unreachable"}
                assert down["sync_ready"] is False
            finally:
                start_dockerd()
            interrupted_rc = run.wait(timeout=600)  # it must end, whatever it says
        output = log.read_text()
        for secret in stack.secrets():
            assert secret not in output, "a secret value appeared in the interrupted run's output"
        log.unlink()

        res = play("playbooks/site.yml", stack)
        # After the restart: the worker's earlier processes logged `could not translate host name "db"` while the
        # engine brought the stack back (history, not a problem), and a job in flight when the engine stopped is
        # left queued/started by a process that is gone (jobs_orphaned: qfc_worker puts it back to pending).
        assert res.returncode == 0, res.output[-4000:]
        assert "verify ok (latency" in res.said
        for job in jobs:  # pending before the restart: processed afterwards, none failed
            assert stack.wait_job(job, timeout=90) == "finished"
        again = play("playbooks/site.yml", stack)
        assert again.returncode == 0 and recap(again)["changed"] == 0, again.output[-3000:]
        print(f"\ndockerd restarted during site.yml: that run ended with rc {interrupted_rc}; the next converged")
    finally:
        if not docker_answers():
            start_dockerd()
        remove_stack(stack)

    # The shared stand-in stopped with the engine too: it must be healthy again (restart policies, else site.yml).
    shared = wait_sync_ready(standin, timeout=60)
    if not shared.get("sync_ready"):
        repaired = play("playbooks/site.yml", standin)
        assert repaired.returncode == 0, repaired.output[-4000:]
        shared = wait_sync_ready(standin, timeout=60)
    assert shared.get("sync_ready") is True, json.dumps(shared.get("problems"))
