"""The roles and playbooks against real stand-in stacks: check mode, repair, order, safe prune, early failures."""

from __future__ import annotations

import hashlib
import json
import subprocess
import uuid
from pathlib import Path

import pytest
from ansible_run import JSON_CALLBACK, REPO, facts_of, play, ran, recap, task_results
from standin import Stack


def snapshot(stack: Stack) -> dict:
    """Every container (id, state, start time), every project image and every project file (content, mtime)."""
    out = subprocess.run(
        ["docker", "ps", "-aq", "--no-trunc", "--filter", f"label=com.docker.compose.project={stack.name}"],
        text=True,
        capture_output=True,
        check=True,
    ).stdout.split()
    containers = {c: (i["State"]["Status"], i["State"]["StartedAt"]) for c in out for i in [stack.inspect(c)]}
    images = subprocess.run(
        [
            "docker",
            "images",
            "--no-trunc",
            "--filter",
            f"reference={stack.name}-*",
            "--format",
            "{{.Repository}} {{.ID}}",
        ],
        text=True,
        capture_output=True,
        check=True,
    ).stdout
    files = {
        p.name: (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns)
        for p in sorted(stack.dir.iterdir())
        if p.is_file()
    }
    return {"containers": containers, "images": sorted(images.split("\n")), "files": files}


def started_at(stack: Stack, service: str) -> str:
    return max(stack.inspect(c)["State"]["StartedAt"] for c in stack.containers(service, all_=False))


@pytest.fixture(scope="module")
def stack(module_stacks):
    return module_stacks("ro")


def test_bad_project_dir_fails_early_naming_the_variable(tmp_path):
    res = play("playbooks/site.yml", None, extra={"qfieldcloud_project_dir": str(tmp_path / "nowhere")})
    assert res.returncode != 0
    assert "qfieldcloud_project_dir" in res.output and "is not a directory" in res.said
    (tmp_path / "empty").mkdir()
    res = play("playbooks/site.yml", None, extra={"qfieldcloud_project_dir": str(tmp_path / "empty")})
    assert res.returncode != 0
    assert "qfieldcloud_project_dir: docker compose finds no valid project" in res.said


def test_unknown_probe_project_fails_naming_the_variable(stack):
    res = play("playbooks/verify.yml", stack, extra={"qfieldcloud_probe_project": str(uuid.uuid4())})
    assert res.returncode != 0
    assert "qfieldcloud_probe_project:" in res.output and "HTTP 404" in res.said
    res = play("playbooks/verify.yml", stack, extra={"qfieldcloud_probe_project": "probe"})
    assert res.returncode != 0 and "qfieldcloud_probe_project: expected the uuid" in res.said


def test_site_check_changes_nothing_then_repairs_then_converged(stack):
    for fault in (
        "worker-not-root",
        "worker-wrong-db-host",
        "worker-port-published",
        "qgis-image-missing",
        "worker-stopped",
    ):
        stack.break_(fault)
    subprocess.run(["docker", "rmi", "-f", f"{stack.name}-worker_wrapper"], check=True, capture_output=True)
    before = snapshot(stack)

    check = play("playbooks/site.yml", stack, check=True)
    assert check.returncode == 0, check.output[-3000:]
    for code in (
        "worker_not_running",
        "worker_image_missing",
        "worker_socket_denied",
        "worker_db_host_wrong",
        "worker_port_published",
        "qgis_image_missing",
    ):
        assert code in check.output, code
    assert "check mode: would run" in check.said  # the build it would start
    assert recap(check)["changed"] > 0
    assert snapshot(stack) == before, "check mode changed the stack"

    real = play("playbooks/site.yml", stack)
    assert real.returncode == 0, real.output[-3000:]
    assert "verify ok (latency" in real.said
    record = json.loads((Path("/var/lib/fibreflow-qfieldcloud") / stack.name / "last-build.json").read_text())
    assert record["services"] and record["duration_s"] >= 0
    # Converged: nothing changes, and the play reads the stack once (site.yml's first read serves every role).
    again = play("playbooks/site.yml", stack, env=JSON_CALLBACK)
    assert again.returncode == 0, again.output[-3000:]
    doc = json.loads(again.stdout)
    assert sum(host["changed"] for host in doc["stats"].values()) == 0, doc["stats"]
    reads = ran(task_results(again.stdout), "fibreflow.qfieldcloud.qfc_sync_facts")
    assert len(reads) == 1, [r.get("invocation") for r in reads]
    # ... and leaves qfc_worker out: its record of the repair is current (nothing changed since)
    assert not ran(task_results(again.stdout), "fibreflow.qfieldcloud.qfc_worker")
    result = json.loads((Path("/var/lib/fibreflow-qfieldcloud") / stack.name / "verify.json").read_text())
    assert result["outcome"] == "ok" and result["latency_s"] > 0
    assert stack.wait_job(stack.create_job(), timeout=60) == "finished"


def worker_runs(res) -> list[dict]:
    assert res.returncode == 0, res.output[-3000:]
    return ran(task_results(res.stdout), "fibreflow.qfieldcloud.qfc_worker")


def test_a_converged_site_leaves_qfc_worker_out_until_a_file_or_container_changes(stack):
    site = ("playbooks/site.yml", stack, "--skip-tags", "verify")
    worker_runs(play(*site, env=JSON_CALLBACK))  # converged, and qfc_worker's record written (if it ran)
    assert worker_runs(play(*site, env=JSON_CALLBACK)) == []
    facts = facts_of(stack)
    enforced = facts["ansible_facts"]["qfc_sync"]["worker"]["enforced"]
    assert enforced["current"] is True and enforced["options"]["service"] == "worker_wrapper", enforced
    # a person edits the owned override: the record no longer matches, the module runs and rewrites it
    override = stack.dir / "docker-compose.override.fibreflow-worker.yml"
    owned = override.read_text()
    override.write_text(owned + "# edited by hand\n")
    runs = worker_runs(play(*site, env=JSON_CALLBACK))
    assert len(runs) == 1 and runs[0]["changed"], runs
    assert override.read_text() == owned
    assert worker_runs(play(*site, env=JSON_CALLBACK)) == []
    # a container of the project moved to another network: the module runs (and finds nothing to do here)
    worker = stack.containers("worker_wrapper", all_=False)[0]
    subprocess.run(["docker", "network", "connect", "bridge", worker], check=True, capture_output=True)
    try:
        runs = worker_runs(play(*site, env=JSON_CALLBACK))
        assert len(runs) == 1, runs
    finally:
        subprocess.run(["docker", "network", "disconnect", "bridge", worker], check=True, capture_output=True)
    # other options than the record's (replicas given), or qfieldcloud_worker_enforce_always: the module runs
    runs = worker_runs(play(*site, env=JSON_CALLBACK, extra={"qfieldcloud_worker_replicas": 1}))
    assert len(runs) == 1 and not runs[0]["changed"], runs
    runs = worker_runs(play(*site, env=JSON_CALLBACK, extra={"qfieldcloud_worker_enforce_always": True}))
    assert len(runs) == 1 and not runs[0]["changed"], runs
    # check mode with the record current: nothing to run, nothing changed
    check = play(*site, env=JSON_CALLBACK, check=True)
    assert worker_runs(check) == [] and sum(h["changed"] for h in json.loads(check.stdout)["stats"].values()) == 0


def test_startup_brings_services_up_in_order(stack):
    stack.compose("stop", "worker_wrapper", "app", "db")
    res = play("playbooks/site.yml", stack, "--tags", "startup")
    assert res.returncode == 0, res.output[-3000:]
    db, app, worker = (started_at(stack, s) for s in ("db", "app", "worker_wrapper"))
    assert db < app < worker, (db, app, worker)
    ofelia = started_at(stack, "ofelia")
    assert ofelia > app, "ofelia was not restarted after app was recreated"
    again = play("playbooks/site.yml", stack, "--tags", "startup")
    assert recap(again)["changed"] == 0, again.output[-3000:]


def test_missing_migrations_fail_naming_the_command(stack, tmp_path):
    # Not on the shared stack: the schema is dropped, then restored by the role itself (qfieldcloud_startup_migrate).
    stack.break_("migrations-missing")
    res = play("playbooks/site.yml", stack, "--tags", "startup")
    assert res.returncode != 0
    assert "docker compose exec app python manage.py migrate" in res.said
    res = play("playbooks/site.yml", stack, "--tags", "startup", extra={"qfieldcloud_startup_migrate": True})
    assert res.returncode == 0, res.output[-3000:]
    subprocess.run([str(REPO / "tests/harness/standin"), "down", "--name", stack.name], check=True, capture_output=True)
    stack.up()  # the probe account went with the schema: start afresh for later tests


def test_maintenance_prunes_only_what_is_not_the_project(stack, tmp_path):
    label = f"fibreflow.test={stack.name}"
    runtime = stack.inspect(stack.containers("db")[0])["Config"]["Image"]
    foreign = subprocess.run(
        ["docker", "create", "--label", label, runtime, "true"], text=True, capture_output=True, check=True
    ).stdout.strip()
    for i in range(2):  # the second build takes the tag: the first image is dangling
        (tmp_path / "Dockerfile").write_text(f"FROM {runtime}\nLABEL {label}\nRUN echo {i} {uuid.uuid4()} > /x\n")
        subprocess.run(
            ["docker", "build", "-q", "-t", f"{stack.name}-foreign", str(tmp_path)], check=True, capture_output=True
        )
    dangling = subprocess.run(
        ["docker", "images", "-q", "--no-trunc", "-f", "dangling=true", "-f", f"label={label}"],
        text=True,
        capture_output=True,
        check=True,
    ).stdout.split()
    assert dangling
    volumes = subprocess.run(
        ["docker", "volume", "ls", "-q", "-f", f"label=com.docker.compose.project={stack.name}"],
        text=True,
        capture_output=True,
        check=True,
    ).stdout.split()
    project_images = subprocess.run(
        ["docker", "images", "-q", "--no-trunc", "--filter", f"reference={stack.name}-*"],
        text=True,
        capture_output=True,
        check=True,
    ).stdout.split()
    qgis_container = stack.containers("qgis3")  # stopped, build-only: must stay, and its image must stay
    extra = {"qfieldcloud_maintenance_prune_label": label}

    check = play("playbooks/maintenance.yml", stack, check=True, extra=extra)
    assert check.returncode == 0, check.output[-3000:]
    assert "check mode: would remove 1 stopped container(s) and 1 dangling image(s)" in check.said
    assert subprocess.run(["docker", "inspect", foreign], capture_output=True, check=False).returncode == 0

    res = play("playbooks/maintenance.yml", stack, extra=extra)
    assert res.returncode == 0, res.output[-3000:]
    assert subprocess.run(["docker", "inspect", foreign], capture_output=True, check=False).returncode != 0
    assert all(
        subprocess.run(["docker", "image", "inspect", i], capture_output=True, check=False).returncode != 0
        for i in dangling
    )
    for image in project_images:
        assert subprocess.run(["docker", "image", "inspect", image], capture_output=True, check=False).returncode == 0
    assert stack.containers("qgis3") == qgis_container
    after = subprocess.run(
        ["docker", "volume", "ls", "-q", "-f", f"label=com.docker.compose.project={stack.name}"],
        text=True,
        capture_output=True,
        check=True,
    ).stdout.split()
    assert sorted(after) == sorted(volumes)
    subprocess.run(["docker", "rmi", "-f", f"{stack.name}-foreign"], capture_output=True, check=False)


def test_maintenance_rebuild_restarts_worker_without_killing_a_job(stack):
    job = stack.create_job(seconds=8)
    deadline_status = stack.wait_job(job, timeout=30, until=("started", "finished", "failed"))
    assert deadline_status == "started"
    res = play(
        "playbooks/maintenance.yml",
        stack,
        extra={
            "qfieldcloud_maintenance_rebuild_days": 0,
            "qfieldcloud_maintenance_prune_label": "none=none",
            "qfieldcloud_maintenance_build_poll": 1,
        },
    )
    assert res.returncode == 0, res.output[-3000:]
    assert "without cache" in res.said and "restart" in res.output
    assert stack.job_status(job) == "finished"
    assert (Path("/var/lib/fibreflow-qfieldcloud") / stack.name / "last-rebuild.json").exists()
    assert stack.wait_job(stack.create_job(), timeout=60) == "finished"
