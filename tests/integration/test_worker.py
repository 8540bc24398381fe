"""Integration tests of fibreflow.qfieldcloud.qfc_worker against the stand-in QFieldCloud.

Every state-changing test follows community.postgresql's rhythm: check mode reports the change and
moves nothing (container ids, file contents and mtimes); the real run changes; the result is verified
(a job created through the API finishes); a second run reports no change; a person's plain
`docker compose up -d` afterwards changes nothing either.

To stay fast, one private stack is broken and repaired fault after fault: before each fault the
project files are put back as the stand-in wrote them (the override removed), as on a host where
the module never ran.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest
from ansible_run import ansible_env, drift_codes, run_module
from standin import Pristine, Stack

pytestmark = pytest.mark.integration

MODULE = "fibreflow.qfieldcloud.qfc_worker"
OVERRIDE = "docker-compose.override.fibreflow-worker.yml"
WATCHED = (".env", "docker-compose.yml", OVERRIDE)
SERVICE = "worker_wrapper"

# fault -> drift codes the module must report for it
FAULTS = {
    "worker-stopped": {"worker_not_running"},
    "worker-removed": {"worker_not_running"},
    "worker-not-root": {"worker_socket_denied"},
    "worker-wrong-db-host": {"worker_db_host_wrong"},
    "worker-port-published": {"worker_port_published"},
    "worker-wrong-network": {"worker_wrong_network"},
    "worker-debug-command": {"worker_debug_command", "worker_port_published"},
}
REPAIR_TIMES: dict[str, float] = {}


@pytest.fixture(scope="module")
def stack(module_stacks):
    """One private stack for this module, broken and repaired in sequence (each test starts from ``fresh``)."""
    made = module_stacks("wkt")
    made.pristine = Pristine(made, services=(SERVICE,))
    yield made
    if REPAIR_TIMES:
        lines = "\n".join(f"  {fault:24s} {seconds:5.1f} s" for fault, seconds in REPAIR_TIMES.items())
        print(f"\nqfc_worker repair times (real run, broken -> compliant):\n{lines}")


@pytest.fixture
def fresh(stack):
    """The stack as the stand-in made it, healthy, module never run."""
    stack.pristine.restore()
    return stack


def worker(stack: Stack, check: bool = False, diff: bool = False, **args) -> dict:
    result = run_module(MODULE, {"project_dir": str(stack.dir), **args}, check=check, diff=diff)
    for secret in stack.secrets():
        assert secret not in result["_stdout"], "a secret value appeared in the module's output"
    return result


def snapshot(stack: Stack) -> dict:
    """Everything a run must not touch in check mode: worker container ids and states, files and mtimes."""
    files = {}
    for name in WATCHED:
        path = stack.dir / name
        files[name] = (path.read_bytes(), path.stat().st_mtime_ns) if path.exists() else None
    ps = subprocess.run(
        [
            "docker",
            "ps",
            "-a",
            "--no-trunc",
            "--format",
            "{{.ID}} {{.Names}} {{.State}}",
            "--filter",
            f"name={stack.name}-worker",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    # A crash-looping worker (upstream's worker without the socket exits and is restarted) flips between running
    # and restarting by itself: both are "up" here, what check mode must not change is which containers exist.
    containers = sorted(line.replace(" restarting", " up").replace(" running", " up") for line in ps.split("\n"))
    return {"files": files, "containers": containers, "backups": sorted(stack.dir.glob(".env.*.bak"))}


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def descendants(pid: int) -> list[int]:
    """Process ids below ``pid`` (children, grandchildren...)."""
    parents: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        parents.setdefault(ppid, []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        for child in parents.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def running_workers(stack: Stack) -> list[str]:
    return stack.containers(SERVICE, all_=False)


def assert_job_finishes(stack: Stack, timeout: float = 60) -> None:
    job = stack.create_job()
    assert stack.wait_job(job, timeout=timeout) == "finished"


def assert_converged(stack: Stack, **args) -> None:
    """Second run: no change. Then a person's `docker compose up -d`: nothing recreated, still no change."""
    again = worker(stack, **args)
    assert not again.get("failed"), again.get("msg")
    assert again["changed"] is False, again["actions"]
    assert again["drift"] == []
    ids = stack.containers(SERVICE)
    stack.compose("up", "-d")
    assert stack.containers(SERVICE) == ids
    after = worker(stack, **args)
    assert after["changed"] is False, after["actions"]


# ---------------------------------------------------------------------------------------------
# one test per worker fault
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("fault", list(FAULTS))
def test_fault_is_repaired(fresh, fault):
    stack = fresh
    stack.break_(fault)
    before = snapshot(stack)

    planned = worker(stack, check=True, diff=True)
    assert not planned.get("failed"), planned.get("msg")
    assert planned["changed"] is True
    assert FAULTS[fault] <= drift_codes(planned), planned["drift"]
    assert "worker_config_not_persistent" in drift_codes(planned)
    assert any(action.startswith("write ") for action in planned["actions"])
    assert {d["before_header"] for d in planned["diff"]} >= {str(stack.dir / OVERRIDE)}
    assert snapshot(stack) == before, "check mode changed something"

    started = time.monotonic()
    applied = worker(stack)
    REPAIR_TIMES[fault] = time.monotonic() - started
    assert not applied.get("failed"), applied.get("msg")
    assert applied["changed"] is True
    assert applied["actions"] == planned["actions"]
    env = (stack.dir / ".env").read_text()
    assert f":{OVERRIDE}\n" in env
    assert oct((stack.dir / ".env").stat().st_mode & 0o777) == "0o600"
    assert list(stack.dir.glob(".env.*.bak")), "no backup of .env"
    assert len(running_workers(stack)) == 1

    assert_job_finishes(stack)
    assert_converged(stack)


def test_worker_image_missing_fails_with_build_command(fresh):
    stack = fresh
    stack.break_("worker-image-missing")
    before = snapshot(stack)
    build = f"cd {stack.dir} && docker compose build {SERVICE}"

    planned = worker(stack, check=True)
    assert not planned.get("failed"), planned.get("msg")
    assert "worker_image_missing" in drift_codes(planned)
    assert planned["build_command"] == build

    failed = worker(stack)
    assert failed.get("failed") is True
    assert failed["code"] == "worker_image_missing"
    assert build in failed["msg"]
    assert failed["_rc"] != 0
    assert snapshot(stack) == before, "a failed run changed something"

    subprocess.run(build, shell=True, capture_output=True, check=True)
    repaired = worker(stack)
    assert repaired["changed"] is True, repaired.get("msg")
    assert_job_finishes(stack)


# ---------------------------------------------------------------------------------------------
# no job lost, scaling
# ---------------------------------------------------------------------------------------------


def test_job_in_flight_survives_a_repair(fresh):
    stack = fresh
    stack.break_("worker-port-published")
    job = stack.create_job(seconds=12)
    assert stack.wait_job(job, timeout=30, until=("started", "finished", "failed")) == "started"

    applied = worker(stack)
    assert not applied.get("failed"), applied.get("msg")
    assert applied["changed"] is True
    assert applied["drain_waited_s"] > 1, "the module did not wait for the job in flight"
    assert stack.wait_job(job, timeout=60) == "finished"
    assert_job_finishes(stack)


def test_drain_timeout_leaves_the_worker_as_it_was(fresh):
    stack = fresh
    stack.break_("worker-port-published")
    job = stack.create_job(seconds=15)
    assert stack.wait_job(job, timeout=30, until=("started", "finished", "failed")) == "started"
    before = snapshot(stack)

    failed = worker(stack, drain_timeout=2)
    assert failed.get("failed") is True
    assert failed["option"] == "drain_timeout"
    assert job in failed["msg"]
    assert snapshot(stack) == before
    assert stack.wait_job(job, timeout=60) == "finished"


def test_replicas_one_three_one(fresh):
    stack = fresh
    worker(stack)
    before = snapshot(stack)
    planned = worker(stack, check=True, replicas=3)
    assert planned["changed"] is True
    assert "worker_replicas_low" in drift_codes(planned)
    assert snapshot(stack) == before

    assert worker(stack, replicas=3)["changed"] is True
    assert len(running_workers(stack)) == 3
    # Package jobs of one project never run in parallel (upstream answers 200 with the job in flight): one per project.
    projects = [
        None,
        stack.add_project(f"replicas-{uuid.uuid4().hex[:6]}"),
        stack.add_project(f"replicas-{uuid.uuid4().hex[:6]}"),
    ]
    jobs = [stack.create_job(project=project) for project in projects]
    assert [stack.wait_job(job, timeout=60) for job in jobs] == ["finished"] * 3
    assert_converged(stack, replicas=3)

    planned = worker(stack, check=True, replicas=1)
    assert "worker_replicas_high" in drift_codes(planned)
    assert len(running_workers(stack)) == 3
    job = stack.create_job(seconds=6)
    assert worker(stack, replicas=1)["changed"] is True
    assert stack.wait_job(job, timeout=60) == "finished"
    assert len(running_workers(stack)) == 1
    assert_converged(stack, replicas=1)


@pytest.mark.parametrize("value", [33, -1])
def test_replicas_out_of_range_is_refused(stack, value):
    result = worker(stack, replicas=value)
    assert result.get("failed") is True
    assert "replicas" in result["msg"]
    assert "0 to 32" in result["msg"]


# ---------------------------------------------------------------------------------------------
# hand-started workers, standalone mode
# ---------------------------------------------------------------------------------------------


def test_hand_started_worker_standalone_then_removed(fresh):
    stack = fresh
    stack.break_("worker-hand-started")
    hand = f"{stack.name}-worker"
    args = {"mode": "standalone", "project_name": stack.name, "container_name": hand}
    before = snapshot(stack)

    planned = run_module(MODULE, args, check=True)
    assert not any(secret in planned["_stdout"] for secret in stack.secrets())
    assert planned["changed"] is True, planned
    assert "worker_restart_policy" in drift_codes(planned)
    assert snapshot(stack) == before

    applied = run_module(MODULE, args)
    assert applied["changed"] is True, applied.get("msg")
    policy = subprocess.run(
        ["docker", "inspect", "-f", "{{.HostConfig.RestartPolicy.Name}}", hand],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    assert policy == "unless-stopped"
    assert_job_finishes(stack)
    assert run_module(MODULE, args)["changed"] is False

    # Compose mode sees the hand-started worker beside the (stopped) compose one.
    reported = worker(stack, check=True)
    assert reported["hand_started"] == [hand]
    removed = worker(stack, remove_hand_started=True)
    assert removed["changed"] is True, removed.get("msg")
    assert "worker_hand_started" in drift_codes(removed)
    gone = subprocess.run(["docker", "inspect", hand], capture_output=True, check=False)
    assert gone.returncode != 0
    assert len(running_workers(stack)) == 1
    assert_job_finishes(stack)
    assert_converged(stack, remove_hand_started=True)


# ---------------------------------------------------------------------------------------------
# concurrency, interrupted runs
# ---------------------------------------------------------------------------------------------


def test_two_concurrent_runs_serialise(fresh):
    stack = fresh
    stack.break_("worker-not-root")
    results: list[dict] = []

    def one() -> None:
        results.append(worker(stack))

    threads = [threading.Thread(target=one) for _number in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert all(not r.get("failed") for r in results), [r.get("msg") for r in results]
    assert sorted(r["changed"] for r in results) == [False, True]
    assert len(running_workers(stack)) == 1
    assert_job_finishes(stack)


def test_lock_timeout_fails_clearly(fresh):
    from ansible_collections.fibreflow.qfieldcloud.plugins.module_utils import compose

    stack = fresh
    stack.break_("worker-stopped")
    before = snapshot(stack)
    with compose.ProjectLock(compose.lock_path(stack.name), timeout=5):
        result = worker(stack, lock_timeout=1)
    assert result.get("failed") is True
    assert "lock_timeout" in result["msg"]
    assert snapshot(stack) == before


def test_killed_run_then_good_run(fresh):
    stack = fresh
    stack.break_("worker-port-published")
    job = stack.create_job(seconds=25)
    assert stack.wait_job(job, timeout=30, until=("started", "finished", "failed")) == "started"
    env_before = (stack.dir / ".env").read_bytes()

    cmd = [
        str(Path(sys.executable).parent / "ansible"),
        "localhost",
        "-c",
        "local",
        "-i",
        "localhost,",
        "-m",
        MODULE,
        "-a",
        f"project_dir={stack.dir}",
    ]
    proc = subprocess.Popen(cmd, env=ansible_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    # The run drains while the job in flight (25 s) runs: wait until the module runs (ansible starts slowly on a
    # loaded machine), then give it a moment inside the drain.
    deadline = time.monotonic() + 15
    tree = descendants(proc.pid)
    while not any("AnsiballZ_qfc_worker" in cmdline(pid) for pid in tree) and time.monotonic() < deadline:
        time.sleep(0.2)
        tree = descendants(proc.pid)
    assert any("AnsiballZ_qfc_worker" in cmdline(pid) for pid in tree), "the module was not running"
    time.sleep(2)
    tree = descendants(proc.pid)
    for pid in [proc.pid, *tree]:  # the module runs in its own session under ansible: kill it too
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    proc.wait()

    # The run was killed while draining, before writing anything: .env is whole and unchanged.
    assert (stack.dir / ".env").read_bytes() == env_before
    assert not list(stack.dir.glob(".*.tmp")), "a temporary file was left behind"
    assert stack.wait_job(job, timeout=60) == "finished"

    applied = worker(stack)
    assert not applied.get("failed"), applied.get("msg")
    assert applied["changed"] is True
    assert_job_finishes(stack)
    assert_converged(stack)


# ---------------------------------------------------------------------------------------------
# bad input: clear error naming the option, nothing changed
# ---------------------------------------------------------------------------------------------


def test_missing_project_dir(tmp_path):
    result = run_module(MODULE, {"project_dir": str(tmp_path / "nowhere")})
    assert result.get("failed") is True
    assert result["msg"].startswith("project_dir:")
    assert result["_rc"] != 0


def test_compose_syntax_error(stack, tmp_path):
    project = tmp_path / "broken"
    project.mkdir()
    (project / "docker-compose.yml").write_text("services:\n  worker_wrapper:\n    image: [unclosed\n")
    (project / ".env").write_text("COMPOSE_PROJECT_NAME=wkbroken\n")
    before = {p.name: p.read_bytes() for p in project.iterdir()}
    result = run_module(MODULE, {"project_dir": str(project)})
    assert result.get("failed") is True
    assert result["msg"].startswith("project_dir:")
    assert "invalid" in result["msg"]
    assert {p.name: p.read_bytes() for p in project.iterdir()} == before


def test_unknown_service(fresh):
    stack = fresh
    before = snapshot(stack)
    result = worker(stack, service="nosuchservice")
    assert result.get("failed") is True
    assert result["msg"].startswith("service:")
    assert snapshot(stack) == before


def test_unreachable_docker_host(fresh):
    stack = fresh
    before = snapshot(stack)
    result = worker(stack, docker_host="tcp://127.0.0.1:9", timeout=3)
    assert result.get("failed") is True
    assert result["msg"].startswith("docker_host:")
    assert snapshot(stack) == before
