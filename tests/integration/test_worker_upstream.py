"""Integration tests of qfc_worker on stacks laid out as upstream's real servers are (issue 16, items 4, 6, 7, 10).

- a job network of its own in QFIELDCLOUD_DEFAULT_NETWORK is never forced onto the worker, and a missing one is
  reported, never created;
- a database on a network of its own: the worker goes where it reaches the database;
- upstream's prebuilt worker image (``image:``) is kept, and a missing one is pulled by the operator, never built;
- a standalone recreation keeps the worker's named volumes (the custom CA volume read-only), labels, environment
  and stop timeout;
- the field guide's hand-started worker is named by what it lacks and retired (drained, then removed).

Each state-changing test follows community.postgresql's rhythm: check mode reports and moves nothing, the real run
changes, the result is verified, a second run changes nothing. One private stack (name prefix ``h4``) is changed
and put back before each test.
"""

from __future__ import annotations

import json
import os
import re
import subprocess

import pytest
from ansible_run import drift_codes, run_module
from standin import Pristine, Stack

pytestmark = pytest.mark.integration

MODULE = "fibreflow.qfieldcloud.qfc_worker"
OVERRIDE = "docker-compose.override.fibreflow-worker.yml"
SERVICE = "worker_wrapper"
PROJECT_FILES = (".env", "docker-compose.yml", "docker-compose.override.standalone.yml")
# Orphaned-job recovery has its own tests; these runs leave jobs alone.
BASE_ARGS = {"orphaned_jobs": "keep"}


def docker(*args: str, check: bool = True, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(["docker", *args], capture_output=True, text=True, check=check, env=env)


@pytest.fixture(scope="module")
def stack(module_stacks):
    made = module_stacks("h4u")
    made.pristine = Pristine(made, PROJECT_FILES)
    return made


@pytest.fixture
def fresh(stack):
    stack.pristine.restore()
    return stack


def worker(stack: Stack, check: bool = False, **args) -> dict:
    result = run_module(MODULE, {"project_dir": str(stack.dir), **BASE_ARGS, **args}, check=check)
    for secret in stack.secrets():
        assert secret not in result["_stdout"], "a secret value appeared in the module's output"
    return result


def snapshot(stack: Stack) -> dict:
    """What check mode must not touch: the project files and every container of the stack (ids and states)."""
    files = {}
    for name in (*PROJECT_FILES, OVERRIDE):
        path = stack.dir / name
        files[name] = path.read_bytes() if path.exists() else None
    ps = docker("ps", "-a", "--no-trunc", "--format", "{{.ID}} {{.Names}} {{.State}}", "--filter", f"name={stack.name}")
    # A worker that lost its database crash-loops and flips between running and restarting by itself: both are
    # "up" here; what check mode must not change is which containers exist and whether they are up.
    states = (line.replace(" restarting", " up").replace(" running", " up") for line in ps.stdout.splitlines())
    return {"files": files, "containers": sorted(states)}


def inspect(name: str) -> dict:
    return json.loads(docker("inspect", name).stdout)[0]


def worker_networks(stack: Stack) -> list[list[str]]:
    return [sorted(inspect(cid)["NetworkSettings"]["Networks"]) for cid in stack.containers(SERVICE, all_=False)]


def set_env(stack: Stack, key: str, value: str) -> None:
    path = stack.dir / ".env"
    text = re.sub(rf"(?m)^{key}=.*$", f"{key}={value}", path.read_text())
    path.write_text(text)


def assert_job_finishes(stack: Stack, timeout: float = 60) -> None:
    job = stack.create_job()
    assert stack.wait_job(job, timeout=timeout) == "finished"


def assert_converged(stack: Stack, **args) -> dict:
    again = worker(stack, **args)
    assert not again.get("failed"), again.get("msg")
    assert again["changed"] is False, again["actions"]
    return again


# ---------------------------------------------------------------------------------------------
# item 6: networks
# ---------------------------------------------------------------------------------------------


def test_own_job_network_is_never_forced_onto_the_worker(fresh):
    stack = fresh
    jobs_net = f"{stack.name}-qgisjobs"
    docker("network", "create", "--label", f"fibreflow.standin={stack.name}", jobs_net)
    try:
        set_env(stack, "QFIELDCLOUD_DEFAULT_NETWORK", jobs_net)
        stack.compose("up", "-d", "--timeout", "20")
        before = snapshot(stack)

        planned = worker(stack, check=True)
        assert not planned.get("failed"), planned.get("msg")
        assert planned["network"] == f"{stack.name}_default"
        assert "worker_wrong_network" not in drift_codes(planned), planned["drift"]
        assert drift_codes(planned) == {"worker_config_not_persistent"}
        assert snapshot(stack) == before, "check mode changed something"

        applied = worker(stack)
        assert not applied.get("failed"), applied.get("msg")
        assert applied["changed"] is True
        assert worker_networks(stack) == [[f"{stack.name}_default"]], "the worker was moved off its database network"
        assert_job_finishes(stack)
        assert assert_converged(stack)["drift"] == []
    finally:
        stack.pristine.restore()
        docker("network", "rm", jobs_net, check=False)


def test_missing_job_network_is_reported_and_never_created(fresh):
    stack = fresh
    missing = f"{stack.name}-nosuchnet"
    set_env(stack, "QFIELDCLOUD_DEFAULT_NETWORK", missing)
    stack.compose("up", "-d", "--timeout", "20")
    before = snapshot(stack)

    planned = worker(stack, check=True)
    assert not planned.get("failed"), planned.get("msg")
    item = next(item for item in planned["drift"] if item["code"] == "qgis_network_missing")
    assert item["replica"] is None
    assert f"docker network create {missing}" in item["remedy"]
    assert "worker_wrong_network" not in drift_codes(planned)
    assert snapshot(stack) == before

    applied = worker(stack)
    assert not applied.get("failed"), applied.get("msg")
    assert docker("network", "inspect", missing, check=False).returncode != 0, "the module created the network"
    assert worker_networks(stack) == [[f"{stack.name}_default"]]
    again = assert_converged(stack)
    assert drift_codes(again) == {"qgis_network_missing"}, "a missing job network must stay reported until fixed"


def test_database_on_a_network_of_its_own(fresh):
    stack = fresh
    path = stack.dir / "docker-compose.override.standalone.yml"
    text = path.read_text()
    text = text.replace(
        "    ports:\n      - ${HOST_POSTGRES_PORT}:5432\n",
        "    ports:\n      - ${HOST_POSTGRES_PORT}:5432\n    networks:\n      - backend\n"
        "\n  app:\n    networks:\n      - default\n      - backend\n",
    )
    assert "backend" in text
    path.write_text(text + "\nnetworks:\n  backend:\n")
    stack.compose("up", "-d", "--timeout", "20")
    backend = f"{stack.name}_backend"
    before = snapshot(stack)

    planned = worker(stack, check=True)
    assert not planned.get("failed"), planned.get("msg")
    assert planned["network"] == backend
    assert "worker_wrong_network" in drift_codes(planned), planned["drift"]
    assert snapshot(stack) == before

    applied = worker(stack)
    assert not applied.get("failed"), applied.get("msg")
    assert applied["changed"] is True
    # Added where it reaches the database; its other network is kept.
    assert worker_networks(stack) == [sorted([backend, f"{stack.name}_default"])]
    assert_job_finishes(stack)
    assert assert_converged(stack)["drift"] == []


# ---------------------------------------------------------------------------------------------
# item 4: prebuilt images
# ---------------------------------------------------------------------------------------------


def test_prebuilt_image_is_kept_and_a_missing_one_is_never_built(fresh):
    stack = fresh
    tag = f"opengisch/qfieldcloud-worker-wrapper:{stack.name}"
    docker("tag", f"{stack.name}-{SERVICE}", tag)
    try:
        path = stack.dir / "docker-compose.yml"
        text, count = re.subn(
            r"(  worker_wrapper:\n)    build:\n(?:      .*\n)+", rf"\g<1>    image: {tag}\n", path.read_text()
        )
        assert count == 1
        path.write_text(text)
        stack.compose("up", "-d", "--timeout", "20", SERVICE)
        before = snapshot(stack)

        planned = worker(stack, check=True)
        assert not planned.get("failed"), planned.get("msg")
        assert planned["image"] == tag
        assert not drift_codes(planned) & {"worker_image_wrong", "worker_image_missing", "worker_image_outdated"}
        assert snapshot(stack) == before

        applied = worker(stack)
        assert not applied.get("failed"), applied.get("msg")
        assert [inspect(cid)["Config"]["Image"] for cid in stack.containers(SERVICE)] == [tag]
        override = (stack.dir / OVERRIDE).read_text()
        assert "image:" not in override and "build:" not in override
        assert_job_finishes(stack)
        assert assert_converged(stack)["drift"] == []

        # The prebuilt image vanishes: the remedy is a pull, and nothing is built or started.
        stack.compose("rm", "-sf", SERVICE)
        docker("rmi", tag)
        pull = f"cd {stack.dir} && docker compose pull {SERVICE}"
        planned = worker(stack, check=True)
        assert "worker_image_missing" in drift_codes(planned)
        assert planned["pull_command"] == pull
        assert "build_command" not in planned
        failed = worker(stack)
        assert failed.get("failed") is True
        assert failed["code"] == "worker_image_missing"
        assert pull in failed["msg"]
        assert stack.containers(SERVICE) == []
        assert docker("image", "inspect", tag, check=False).returncode != 0
    finally:
        docker("rmi", "-f", tag, check=False)


# ---------------------------------------------------------------------------------------------
# item 7: standalone recreation keeps what compose gave the worker
# ---------------------------------------------------------------------------------------------


def test_standalone_recreation_keeps_named_volumes_labels_and_environment(fresh):
    stack = fresh
    name = f"{stack.name}-worker"
    ca = f"{stack.name}_custom_ca"
    docker("volume", "create", "--label", f"fibreflow.standin={stack.name}", ca)
    try:
        stack.compose("stop", "--timeout", "20", SERVICE)
        env = stack.env
        keys = ["POSTGRES_DB", "POSTGRES_USER", "POSTGRES_PASSWORD", "ENVIRONMENT", "COMPOSE_PROJECT_NAME", "STORAGES"]
        volumes = {
            f"{stack.name}_transformation_grids": "/transformation_grids",
            f"{stack.name}_static_volume": "/usr/src/app/staticfiles",
            f"{stack.name}_media_volume": "/usr/src/app/mediafiles",
        }
        args = [
            "run",
            "-d",
            "--name",
            name,
            "--label",
            f"fibreflow.standin={stack.name}",
            "--label",
            "org.example.keep=1",
        ]
        args += [
            "--user",
            "root",
            "--network",
            f"{stack.name}_default",
            "--stop-timeout",
            "45",
            "-e",
            "POSTGRES_HOST=db",
        ]
        args += ["-v", "/var/run/docker.sock:/var/run/docker.sock", "-v", "/tmp:/tmp"]
        for volume, target in volumes.items():
            args += ["-v", f"{volume}:{target}"]
        args += ["-v", f"{ca}:/usr/local/share/ca-certificates:ro"]
        for key in keys:
            args += ["-e", key]  # the value comes from the environment, never the command line
        args += [f"{stack.name}-{SERVICE}", "python3", "manage.py", "dequeue"]
        docker(*args, env={**os.environ, **{key: env[key] for key in keys}})
        module_args = {"mode": "standalone", "project_name": stack.name, "container_name": name, **BASE_ARGS}
        before = snapshot(stack)

        planned = run_module(MODULE, module_args, check=True)
        assert not planned.get("failed"), planned.get("msg")
        assert planned["changed"] is True
        assert "worker_restart_policy" in drift_codes(planned)
        assert snapshot(stack) == before

        applied = run_module(MODULE, module_args)
        assert not applied.get("failed"), applied.get("msg")
        assert applied["changed"] is True
        after = inspect(name)
        assert after["Id"] not in " ".join(before["containers"]), "the worker was not recreated"
        mounts = {m["Destination"]: m for m in after["Mounts"]}
        for volume, target in volumes.items():
            assert mounts[target]["Type"] == "volume" and mounts[target]["Name"] == volume
            assert mounts[target]["RW"] is True
        assert mounts["/usr/local/share/ca-certificates"]["Name"] == ca
        assert mounts["/usr/local/share/ca-certificates"]["RW"] is False, "the CA volume lost its read-only mode"
        assert mounts["/tmp"]["Source"] == "/tmp"
        labels = after["Config"]["Labels"]
        assert labels["org.example.keep"] == "1"
        assert labels["fibreflow.standin"] == stack.name
        assert "com.docker.compose.container-number" not in labels
        env_keys = {item.partition("=")[0] for item in after["Config"]["Env"]}
        assert set(keys) <= env_keys
        assert after["Config"]["StopTimeout"] == 45
        assert after["HostConfig"]["RestartPolicy"]["Name"] == "unless-stopped"
        assert_job_finishes(stack)
        assert run_module(MODULE, module_args)["changed"] is False
    finally:
        docker("rm", "-f", name, check=False)
        docker("volume", "rm", "-f", ca, check=False)


def test_standalone_recreation_adds_what_compose_gives(fresh):
    """The guide's worker, managed standalone with the project directory known, gets compose's volumes."""
    stack = fresh
    name = f"{stack.name}-worker"
    stack.compose("stop", "--timeout", "20", SERVICE)
    guide_worker(stack, name)
    module_args = {"mode": "standalone", "project_dir": str(stack.dir), "container_name": name, **BASE_ARGS}

    applied = run_module(MODULE, module_args)
    assert not applied.get("failed"), applied.get("msg")
    after = inspect(name)
    mounts = {m["Destination"]: m for m in after["Mounts"]}
    assert mounts["/tmp"]["Source"] == "/tmp"
    assert mounts["/transformation_grids"]["Name"] == f"{stack.name}_transformation_grids"
    assert "QFIELDCLOUD_WORKER_QFIELDCLOUD_URL" in {item.partition("=")[0] for item in after["Config"]["Env"]}
    assert after["Config"]["Labels"].get("ofelia.enabled") == "false"
    assert after["Config"]["StopTimeout"] == 900
    assert_job_finishes(stack)
    assert run_module(MODULE, module_args)["changed"] is False


# ---------------------------------------------------------------------------------------------
# item 10: the field guide's hand-started worker
# ---------------------------------------------------------------------------------------------


def guide_worker(stack: Stack, name: str) -> None:
    """Start a worker exactly as the field guide prints it (database settings only, no /tmp, no volumes)."""
    env = stack.env
    keys = ["POSTGRES_DB", "POSTGRES_USER", "POSTGRES_PASSWORD"]
    args = ["run", "-d", "--name", name, "--label", f"fibreflow.standin={stack.name}", "--user", "root"]
    args += ["--network", f"{stack.name}_default", "-v", "/var/run/docker.sock:/var/run/docker.sock"]
    args += ["-e", "POSTGRES_HOST=db", *[part for key in keys for part in ("-e", key)]]
    args += [f"{stack.name}-{SERVICE}", "python3", "manage.py", "dequeue"]
    docker(*args, env={**os.environ, **{key: env[key] for key in keys}})


def test_guide_hand_started_worker_is_named_by_its_gaps_and_retired(fresh):
    stack = fresh
    name = f"{stack.name}-qfieldcloud-worker"
    guide_worker(stack, name)
    hand_id = inspect(name)["Id"]
    before = snapshot(stack)

    kept = worker(stack, check=True)
    assert kept["hand_started"] == [name]
    assert "worker_hand_started" not in drift_codes(kept), "without remove_hand_started it is only reported"

    planned = worker(stack, check=True, remove_hand_started=True)
    assert not planned.get("failed"), planned.get("msg")
    assert planned["changed"] is True
    item = next(i for i in planned["drift"] if i["code"] == "worker_hand_started")
    assert item["replica"] == name
    assert {"bind:/tmp", "volume:/transformation_grids", "env:QFIELDCLOUD_WORKER_QFIELDCLOUD_URL"} <= set(item["gaps"])
    assert planned["hand_started_gaps"][name] == item["gaps"]
    assert f"remove hand-started worker {name} (after drain)" in planned["actions"]
    assert snapshot(stack) == before, "check mode changed something"

    applied = worker(stack, remove_hand_started=True)
    assert not applied.get("failed"), applied.get("msg")
    assert applied["changed"] is True
    assert docker("inspect", hand_id, check=False).returncode != 0, "the hand-started worker is still there"
    assert len(stack.containers(SERVICE, all_=False)) == 1
    assert_job_finishes(stack)
    again = assert_converged(stack, remove_hand_started=True)
    assert again["hand_started"] == []
