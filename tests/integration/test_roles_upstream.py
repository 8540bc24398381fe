"""The roles on stacks laid out like real upstream servers: optional variables absent, a database service not
called `db`, a probe project with a package job in flight, and a probe that logs out and never shows its token."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
import uuid
from pathlib import Path

import pytest
from ansible_run import play, run_module
from standin import STANDIN, Stack
from test_roles import started_at

# Optional variables upstream's .env may leave out; the stack runs without them.
OPTIONAL = ("QFIELDCLOUD_HOST", "QFIELDCLOUD_DEFAULT_NETWORK", "DJANGO_DEV_PORT", "DEBUG_WORKER_WRAPPER_DEBUGPY_PORT")
# The roles find the app on its own address, with the Host header they discover (none without QFIELDCLOUD_HOST).
DISCOVER = {"qfieldcloud_app_url": "", "qfieldcloud_host_header": ""}
STATE = Path("/var/lib/fibreflow-qfieldcloud")


@pytest.fixture
def private(stack_factory):
    """Private stacks (see stack_factory), and the records the roles leave on the host for them removed after."""
    names: list[str] = []

    def make(prefix: str) -> Stack:
        names.append(f"{prefix}{uuid.uuid4().hex[:5]}")
        return stack_factory(names[-1])

    yield make
    for name in names:
        shutil.rmtree(STATE / name, ignore_errors=True)


def verify_result(stack: Stack) -> dict:
    return json.loads((STATE / stack.name / "verify.json").read_text())


def standin_faults() -> str:
    return subprocess.run([str(STANDIN), "faults"], text=True, capture_output=True, check=True).stdout


def remove_env(stack: Stack, names: tuple[str, ...]) -> None:
    path = stack.dir / ".env"
    keep = [line for line in path.read_text().splitlines() if line.split("=", 1)[0].strip() not in names]
    path.write_text("\n".join(keep) + "\n")


def set_env(stack: Stack, key: str, value: str) -> None:
    path = stack.dir / ".env"
    lines = [line for line in path.read_text().splitlines() if not line.startswith(f"{key}=")]
    path.write_text("\n".join([*lines, f"{key}={value}"]) + "\n")


def facts(stack: Stack) -> dict:
    res = run_module("fibreflow.qfieldcloud.qfc_sync_facts", {"project_dir": str(stack.dir)})
    assert not res.get("failed"), res.get("msg")
    return res["ansible_facts"]["qfc_sync"]


def running(stack: Stack) -> list[str]:
    return sorted(stack.compose("ps", "--services", "--status", "running").stdout.split())


def wait_status_ok(stack: Stack, timeout: float = 90) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        app = facts(stack)["app"]
        if app.get("ok") or time.monotonic() > deadline:
            return app
        time.sleep(2)


def probe_tokens(stack: Stack) -> list[str]:
    return [
        row[0]
        for row in stack.sql(
            "SELECT t.key FROM authentication_authtoken t JOIN core_user u ON u.id = t.user_id"
            " WHERE u.username = 'probe'"
        )
    ]


def test_minimal_env_site_runs_without_a_host_header(private):
    stack = private("h3m")
    if "minimal-env" in standin_faults():
        stack.break_("minimal-env")
    else:
        remove_env(stack, OPTIONAL)
        stack.compose("up", "-d")
    assert not any(stack.env.get(k) for k in ("QFIELDCLOUD_HOST",))
    app = wait_status_ok(stack)
    assert app["ok"] and app.get("host_header") is None, app  # what crashed the roles: app.host_header null

    res = play("playbooks/site.yml", stack, extra=DISCOVER)
    assert res.returncode == 0, res.output[-4000:]
    assert "NoneType" not in res.output
    result = verify_result(stack)
    assert result["outcome"] == "ok" and result["job_status"] == "finished", result

    for playbook in ("playbooks/diagnose.yml", "playbooks/worker.yml", "playbooks/maintenance.yml"):
        extra = dict(
            DISCOVER,
            qfieldcloud_diagnose_fail=False,
            qfieldcloud_maintenance_rebuild=False,
            qfieldcloud_maintenance_prune_label="none=none",
        )
        res = play(playbook, stack, extra=extra)
        assert res.returncode == 0, (playbook, res.output[-3000:])
        assert "NoneType" not in res.output, playbook


def rename_db(stack: Stack) -> None:
    """The database service renamed postgres, POSTGRES_HOST following it, as an operator may lay it out."""
    path = stack.dir / "docker-compose.override.standalone.yml"
    path.write_text(re.sub(r"^  db:$", "  postgres:", path.read_text(), flags=re.M))
    set_env(stack, "POSTGRES_HOST", "postgres")
    stack.compose("up", "-d", "--remove-orphans")


def test_database_service_is_the_one_postgres_host_names(private):
    stack = private("h3d")
    rename_db(stack)
    assert "postgres" in stack.compose("config", "--services").stdout.split()
    assert wait_status_ok(stack)["ok"]
    stack.compose("stop")
    assert running(stack) == []
    before = {c: stack.inspect(c)["State"]["Status"] for c in stack.containers("postgres") + stack.containers("app")}

    check = play("playbooks/site.yml", stack, check=True)
    assert check.returncode == 0, check.output[-4000:]
    assert "check mode: would start compose service postgres (POSTGRES_HOST=postgres)" in check.said
    assert "Unknown error" not in check.said
    assert {c: stack.inspect(c)["State"]["Status"] for c in before} == before, "check mode started something"

    t0 = time.monotonic()
    res = play("playbooks/site.yml", stack)
    assert res.returncode == 0, res.output[-4000:]
    assert time.monotonic() - t0 < 110, "site.yml waited out a timeout"
    assert {"postgres", "app", "worker_wrapper"} <= set(running(stack))
    assert started_at(stack, "postgres") < started_at(stack, "app") < started_at(stack, "worker_wrapper")
    assert verify_result(stack)["outcome"] == "ok"

    # A database that does not answer: the wait says what it waited for and what it saw last.
    subprocess.run(["docker", "pause", *stack.containers("postgres", all_=False)], check=True, capture_output=True)
    try:
        res = play("playbooks/site.yml", stack, "--tags", "startup", extra={"qfieldcloud_startup_db_timeout": 4})
    finally:
        subprocess.run(["docker", "unpause", *stack.containers("postgres")], check=False, capture_output=True)
    assert res.returncode != 0
    assert "Waited 4 s for compose service postgres (POSTGRES_HOST=postgres) to accept connections; last seen:" in (
        " ".join(res.output.split())
    ), res.output[-3000:]
    assert "Unknown error" not in res.said


def test_verify_follows_a_package_job_in_flight(private):
    stack = private("h3j")
    busy = subprocess.run(
        [
            str(STANDIN),
            "job",
            "--name",
            stack.name,
            "--dir",
            str(stack.dir),
            "--type",
            "package",
            "--wait",
            "0",
            "--seconds",
            "45",
        ],
        text=True,
        capture_output=True,
        check=True,
    )
    busy_id = json.loads(busy.stdout.strip().splitlines()[-1])["id"]
    assert stack.job_status(busy_id) in ("pending", "queued", "started")
    jobs_before = int(stack.sql("SELECT count(*) FROM core_job")[0][0])

    res = play("playbooks/site.yml", stack)
    assert res.returncode == 0, res.output[-4000:]
    result = verify_result(stack)
    assert result["outcome"] == "ok" and result["job_followed"] is True and result["job_id"] == busy_id, result
    assert stack.job_status(busy_id) == "finished"
    assert int(stack.sql("SELECT count(*) FROM core_job")[0][0]) == jobs_before  # no second package job


def test_verify_logs_out_always_and_never_shows_the_token(private):
    stack = private("h3t")
    secrets = stack.secrets()
    res = play("playbooks/verify.yml", stack, "-vvv")
    assert res.returncode == 0, res.output[-4000:]
    tokens = probe_tokens(stack)
    assert tokens
    for value in [*tokens, *secrets]:
        assert value not in res.output
    job = verify_result(stack)["job_id"]
    # Logged out: the token of the run no longer reads the job it created.
    assert all(stack.http("GET", f"/api/v1/jobs/{job}/", token=t)[0] == 401 for t in tokens)

    # A failing probe (no worker) still logs out, and still shows no token.
    stack.break_("worker-stopped")
    res = play("playbooks/verify.yml", stack, "-vvv", extra={"qfieldcloud_verify_timeout": 3})
    assert res.returncode != 0
    assert "is pending after 3 s" in " ".join(res.output.split()), res.output[-3000:]
    new = [t for t in probe_tokens(stack) if t not in tokens]
    assert new
    for value in [*new, *secrets]:
        assert value not in res.output
    job = verify_result(stack)["job_id"]
    assert all(stack.http("GET", f"/api/v1/jobs/{job}/", token=t)[0] == 401 for t in new)
