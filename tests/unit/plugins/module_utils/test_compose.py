"""Unit tests of compose.py (override rendering, .env editing, atomic writes, the lock) and drain.py."""

from __future__ import annotations

import multiprocessing
import os
import stat
import time
from pathlib import Path

import pytest
import yaml

from ansible_collections.fibreflow.qfieldcloud.plugins.module_utils import compose, drain, files, logsigns


class _ComposeLoader(yaml.SafeLoader):
    """A YAML loader that understands compose's !reset and !override tags."""


def _tagged(loader, node):
    if isinstance(node, yaml.SequenceNode):
        return {"tag": node.tag, "value": loader.construct_sequence(node)}
    if isinstance(node, yaml.MappingNode):
        return {"tag": node.tag, "value": loader.construct_mapping(node)}
    return {"tag": node.tag, "value": loader.construct_scalar(node)}


_ComposeLoader.add_constructor("!reset", _tagged)
_ComposeLoader.add_constructor("!override", _tagged)


def load(text: str) -> dict:
    return yaml.load(text, Loader=_ComposeLoader)


# ---------------------------------------------------------------------------------------------
# override rendering
# ---------------------------------------------------------------------------------------------


def test_override_sets_every_required_field():
    text = compose.render_override("worker_wrapper", ["python", "manage.py", "dequeue"], "db", 2)
    assert text.startswith(compose.HEADER)
    svc = load(text)["services"]["worker_wrapper"]
    assert svc["user"] == "root"
    assert svc["command"] == {"tag": "!override", "value": ["python", "manage.py", "dequeue"]}
    assert svc["ports"] == {"tag": "!reset", "value": []}
    assert svc["networks"] == {"tag": "!override", "value": {"default": None}}
    assert svc["environment"] == {"POSTGRES_HOST": "db"}
    assert svc["volumes"] == ["/var/run/docker.sock:/var/run/docker.sock"]
    assert svc["restart"] == "unless-stopped"
    assert svc["scale"] == 2


def test_override_is_deterministic():
    args = ("worker_wrapper", ["python3", "manage.py", "dequeue"], "db", 1)
    assert compose.render_override(*args) == compose.render_override(*args)


def test_override_escapes_dollar_and_quotes():
    text = compose.render_override("w", ["sh", "-c", 'echo "$HOME"'], "h$x", 1)
    svc = load(text)["services"]["w"]
    # compose turns $$ back into a literal $.
    assert svc["environment"]["POSTGRES_HOST"] == "h$$x"
    assert svc["command"]["value"] == ["sh", "-c", 'echo "$$HOME"']


def test_override_external_network_is_declared():
    text = compose.render_override("w", ["dequeue"], "db", 1, external_network="shared_net")
    doc = load(text)
    key = compose.EXTERNAL_NETWORK_KEY
    assert doc["services"]["w"]["networks"]["value"] == {key: None}
    assert doc["networks"][key] == {"name": "shared_net", "external": True}


def test_network_key_for_project_default_and_named():
    config = {"name": "qfc", "networks": {"default": {"name": "qfc_default"}, "isolated": {"name": "qfc_isolated"}}}
    assert compose.network_key_for(config, "qfc_default") == "default"
    assert compose.network_key_for(config, "qfc_isolated") == "isolated"
    assert compose.network_key_for(config, "elsewhere") is None


def test_override_keeps_the_workers_other_networks_and_names_no_image():
    text = compose.render_override(
        "w", ["dequeue"], "db", 1, network_key="default", keep_network_keys=["jobs", "default"]
    )
    svc = load(text)["services"]["w"]
    assert svc["networks"] == {"tag": "!override", "value": {"default": None, "jobs": None}}
    # A repair never swaps a prebuilt image for a local build: the override names neither.
    assert "image" not in svc and "build" not in svc


CONFIG = {
    "name": "qfc",
    "services": {
        "app": {"networks": {"default": None, "backend": None}},
        "db": {"networks": {"backend": {"aliases": ["postgres"]}}},
        "pg": {"container_name": "qfc-postgis", "network_mode": "host"},
        "worker_wrapper": {},
    },
    "networks": {"default": {"name": "qfc_default"}, "backend": {"name": "qfc_backend"}},
    "volumes": {"transformation_grids": {"name": "qfc_transformation_grids"}, "custom_ca": {}},
}


def test_service_networks_and_dns_names():
    assert compose.service_networks(CONFIG, "worker_wrapper") == {"default": {}}
    assert compose.service_networks(CONFIG, "pg") == {}
    assert compose.service_dns_names(CONFIG, "db") == {"qfc_backend": ["db", "postgres", "qfc-db-1"]}
    assert compose.service_dns_names(CONFIG, "app") == {
        "qfc_default": ["app", "qfc-app-1"],
        "qfc_backend": ["app", "qfc-app-1"],
    }


@pytest.mark.parametrize(
    ("host", "service"),
    [("db", "db"), ("postgres", "db"), ("qfc-db-1", "db"), ("qfc_db_2", "db"), ("pg.example.org", None), (None, None)],
)
def test_service_for_host(host, service):
    assert compose.service_for_host(CONFIG, host) == service


def test_volume_names():
    assert compose.volume_names(CONFIG) == {
        "transformation_grids": "qfc_transformation_grids",
        "custom_ca": "qfc_custom_ca",
    }


def test_image_command_pulls_a_prebuilt_image_and_builds_a_local_one():
    cli = compose.ComposeCli("/opt/qfieldcloud")
    prebuilt = {"image": "opengisch/qfieldcloud-worker-wrapper:v26.25"}
    assert cli.image_command("worker_wrapper", prebuilt) == "cd /opt/qfieldcloud && docker compose pull worker_wrapper"
    built = {"image": None, "build": {"context": "./docker-app"}}
    assert cli.image_command("worker_wrapper", built) == "cd /opt/qfieldcloud && docker compose build worker_wrapper"


# ---------------------------------------------------------------------------------------------
# .env editing
# ---------------------------------------------------------------------------------------------

ENV_TEXT = (
    "# QFieldCloud settings\n"
    "COMPOSE_PROJECT_NAME=qfieldcloud\n"
    "\n"
    "  # indented comment with COMPOSE_FILE=nothing\n"
    "SECRET_KEY='x=y # not a comment'\n"
    "COMPOSE_FILE=docker-compose.yml:docker-compose.override.standalone.yml  # prod set\n"
    'STORAGES="{\\"a\\": 1}"\n'
    "QFIELDCLOUD_WORKER_REPLICAS=1"
)


def _other_lines(text: str) -> list[str]:
    return [line for line in text.splitlines(keepends=True) if not line.startswith("COMPOSE_FILE=")]


def test_compose_file_appended_last_keeping_comment_and_other_lines():
    new, old, value = compose.planned_env_text(ENV_TEXT, "/nonexistent", compose.OVERRIDE_FILE)
    assert old == "docker-compose.yml:docker-compose.override.standalone.yml"
    assert value == f"{old}:{compose.OVERRIDE_FILE}"
    assert f"COMPOSE_FILE={value}  # prod set\n" in new
    assert _other_lines(new) == _other_lines(ENV_TEXT)
    # No newline was added at the end of the file.
    assert new.endswith("QFIELDCLOUD_WORKER_REPLICAS=1")


def test_compose_file_planning_is_idempotent():
    once, _old, _new = compose.planned_env_text(ENV_TEXT, "/nonexistent", compose.OVERRIDE_FILE)
    twice, old, new = compose.planned_env_text(once, "/nonexistent", compose.OVERRIDE_FILE)
    assert twice == once
    assert old == new


def test_override_moved_to_the_end():
    text = f"COMPOSE_FILE=a.yml:{compose.OVERRIDE_FILE}:b.yml\n"
    new, _old, value = compose.planned_env_text(text, "/nonexistent", compose.OVERRIDE_FILE)
    assert value == f"a.yml:b.yml:{compose.OVERRIDE_FILE}"
    assert new == f"COMPOSE_FILE={value}\n"


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ('export COMPOSE_FILE="a.yml:b.yml"\n', 'export COMPOSE_FILE="a.yml:b.yml:{o}"\n'),
        ("COMPOSE_FILE='a.yml'\r\n", "COMPOSE_FILE='a.yml:{o}'\r\n"),
        ("  COMPOSE_FILE = a.yml\n", "  COMPOSE_FILE = a.yml:{o}\n"),
        ('COMPOSE_FILE="a.yml" # quoted, then a comment\n', 'COMPOSE_FILE="a.yml:{o}" # quoted, then a comment\n'),
    ],
)
def test_compose_file_line_keeps_its_shape(line, expected):
    text = "A=1\n" + line + "B=2\n"
    new, _old, _new = compose.planned_env_text(text, "/nonexistent", compose.OVERRIDE_FILE)
    assert new == "A=1\n" + expected.format(o=compose.OVERRIDE_FILE) + "B=2\n"


def test_last_assignment_is_the_one_edited():
    text = "COMPOSE_FILE=old.yml\nX=1\nCOMPOSE_FILE=a.yml\n"
    new, old, _new = compose.planned_env_text(text, "/nonexistent", compose.OVERRIDE_FILE)
    assert old == "a.yml"
    assert new == f"COMPOSE_FILE=old.yml\nX=1\nCOMPOSE_FILE=a.yml:{compose.OVERRIDE_FILE}\n"


def test_custom_path_separator():
    text = "COMPOSE_PATH_SEPARATOR=;\nCOMPOSE_FILE=a.yml;b.yml\n"
    _text, _old, value = compose.planned_env_text(text, "/nonexistent", compose.OVERRIDE_FILE)
    assert value == f"a.yml;b.yml;{compose.OVERRIDE_FILE}"


def test_missing_compose_file_uses_compose_defaults(tmp_path):
    (tmp_path / "docker-compose.yml").write_text("services: {}\n")
    (tmp_path / "docker-compose.override.yml").write_text("services: {}\n")
    new, old, value = compose.planned_env_text("A=1", str(tmp_path), compose.OVERRIDE_FILE)
    assert old is None
    assert value == f"docker-compose.yml:docker-compose.override.yml:{compose.OVERRIDE_FILE}"
    assert new == f"A=1\nCOMPOSE_FILE={value}\n"


def test_find_env_line_ignores_comments_and_other_keys():
    text = "# COMPOSE_FILE=x\nCOMPOSE_FILES=y\n"
    assert compose.find_env_line(text, "COMPOSE_FILE") is None


# ---------------------------------------------------------------------------------------------
# atomic write, backup
# ---------------------------------------------------------------------------------------------


def test_atomic_write_keeps_mode_and_leaves_no_temp_file(tmp_path):
    path = tmp_path / ".env"
    path.write_text("A=1\n")
    os.chmod(path, 0o600)
    files.atomic_write(str(path), "A=2\n")
    assert path.read_text() == "A=2\n"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == [".env"]


def test_atomic_write_new_file_gets_given_mode(tmp_path):
    path = tmp_path / "override.yml"
    files.atomic_write(str(path), "x: 1\n", mode=0o640)
    assert stat.S_IMODE(path.stat().st_mode) == 0o640


def test_atomic_write_failure_keeps_old_file(tmp_path, monkeypatch):
    path = tmp_path / ".env"
    path.write_text("A=1\n")

    def boom(*_args):
        raise OSError("disk full")

    monkeypatch.setattr(files.os, "replace", boom)
    with pytest.raises(OSError):
        files.atomic_write(str(path), "A=2\n")
    assert path.read_text() == "A=1\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == [".env"]


def test_backup_keeps_content_and_mode(tmp_path):
    path = tmp_path / ".env"
    path.write_text("A=1\n")
    os.chmod(path, 0o600)
    first = compose.backup_file(str(path))
    second = compose.backup_file(str(path))
    assert first != second
    for copy in (first, second):
        assert Path(copy).read_text() == "A=1\n"
        assert stat.S_IMODE(os.stat(copy).st_mode) == 0o600


# ---------------------------------------------------------------------------------------------
# lock
# ---------------------------------------------------------------------------------------------


def _hold_lock(path: str, seconds: float, ready) -> None:
    with compose.ProjectLock(path, timeout=5):
        ready.set()
        time.sleep(seconds)


def test_lock_times_out_while_another_process_holds_it(tmp_path):
    path = str(tmp_path / "x.lock")
    ready = multiprocessing.Event()
    holder = multiprocessing.Process(target=_hold_lock, args=(path, 3, ready))
    holder.start()
    try:
        assert ready.wait(5)
        with pytest.raises(compose.LockTimeout, match="lock_timeout"), compose.ProjectLock(path, timeout=0.5):
            pass
    finally:
        holder.join()


def test_lock_waits_for_release(tmp_path):
    path = str(tmp_path / "x.lock")
    ready = multiprocessing.Event()
    holder = multiprocessing.Process(target=_hold_lock, args=(path, 1, ready))
    holder.start()
    try:
        assert ready.wait(5)
        with compose.ProjectLock(path, timeout=10) as lock:
            assert lock.waited > 0.3
    finally:
        holder.join()


def test_lock_released_when_holder_dies(tmp_path):
    path = str(tmp_path / "x.lock")
    ready = multiprocessing.Event()
    holder = multiprocessing.Process(target=_hold_lock, args=(path, 60, ready))
    holder.start()
    assert ready.wait(5)
    holder.kill()
    holder.join()
    with compose.ProjectLock(path, timeout=2):
        pass


def test_lock_path_is_outside_the_project(tmp_path):
    path = compose.lock_path("qfieldcloud", str(tmp_path))
    assert not path.startswith(str(tmp_path))
    assert compose.lock_path("qfieldcloud") == path
    assert compose.lock_path("other") != path


# ---------------------------------------------------------------------------------------------
# compose CLI (argument vectors only; running compose is covered by the integration tests)
# ---------------------------------------------------------------------------------------------


def test_cli_never_uses_dry_run_and_scales_the_service():
    cli = compose.ComposeCli("/srv/qfc")
    seen = [tuple(compose.up_args("worker_wrapper", 3))]
    assert seen == [
        (
            "up",
            "-d",
            "--no-deps",
            "--no-build",
            "--pull",
            "never",
            "--scale",
            "worker_wrapper=3",
            "worker_wrapper",
        )
    ]
    assert "--dry-run" not in seen[0]
    assert cli.command("config")[:4] == ["docker", "compose", "--project-directory", "/srv/qfc"]


def test_commands_are_built_apart_from_being_run():
    forced = compose.up_args("worker_wrapper", 2, force_recreate=True)
    assert forced[:7] == ["up", "-d", "--no-deps", "--no-build", "--pull", "never", "--force-recreate"]
    assert forced[-3:] == ["--scale", "worker_wrapper=2", "worker_wrapper"]
    assert compose.stop_args("worker_wrapper") == ["stop", "worker_wrapper"]
    assert compose.restart_args("worker_wrapper") == ["restart", "worker_wrapper"]
    assert compose.config_args() == ["config", "--format", "json"]
    assert compose.config_args("worker_wrapper") == ["config", "--hash", "worker_wrapper"]
    argv = compose.ComposeCli("/srv/qfc").command(*compose.config_args(), files=["a.yml", "-"])
    assert argv == [
        "docker",
        "compose",
        "--project-directory",
        "/srv/qfc",
        "-f",
        "a.yml",
        "-f",
        "-",
        "config",
        "--format",
        "json",
    ]


def test_service_hash_is_composes_digest_of_the_service_without_its_scale():
    # Compose v2 hashes the service's compact JSON in its own key order, without build/scale/deploy.replicas, with
    # Go's HTML escaping; the expected digest was printed by `docker compose config --hash` (2.26) for this service.
    svc = {"command": ["a", "<b>"], "image": "x", "scale": 3, "build": {"context": "."}, "deploy": {"replicas": 2}}
    plain = '{"command":["a","\\u003cb\\u003e"],"image":"x","deploy":{}}'
    import hashlib

    assert compose.service_hash(svc) == hashlib.sha256(plain.encode()).hexdigest()
    assert compose.service_hash({**svc, "scale": 1, "depends_on": {"db": {}}}) == compose.service_hash(svc)
    assert compose.service_hash({**svc, "user": "root"}) != compose.service_hash(svc)


def test_cli_environment_drops_compose_file(monkeypatch):
    monkeypatch.setenv("COMPOSE_FILE", "elsewhere.yml")
    env = compose.ComposeCli("/srv/qfc", docker_host="tcp://h:2375")._env()
    assert "COMPOSE_FILE" not in env
    assert env["DOCKER_HOST"] == "tcp://h:2375"


def test_build_command_is_exact():
    cli = compose.ComposeCli("/srv/qfc")
    assert cli.build_command("worker_wrapper") == "cd /srv/qfc && docker compose build worker_wrapper"
    assert compose.ComposeCli("/srv/my qfc").build_command("w") == "cd '/srv/my qfc' && docker compose build w"


# ---------------------------------------------------------------------------------------------
# drain
# ---------------------------------------------------------------------------------------------

JOB_A = "0b5f2a52-3c1e-4a43-9d7e-5d8d6a0c1a01"
JOB_B = "1c6e3b63-4d2f-4b54-8e8f-6e9e7b1d2b02"


def test_last_dequeued_job_is_the_latest_line():
    log = (
        '{"message": "Dequeue QFieldCloud Jobs from the DB"}\n'
        f'{{"message": "Dequeued job {JOB_A}, run!"}}\n'
        f'{{"message": "Job {JOB_A} finished"}}\n'
        f'{{"message": "Dequeued job {JOB_B.upper()}, run!"}}\n'
    )
    assert logsigns.last_dequeued_job(log) == JOB_B
    assert logsigns.last_dequeued_job("Waiting for postgres...\n") is None


def test_busy_by_database_status():
    replicas = [
        {"name": "w-1", "running": True, "last_job": JOB_A},
        {"name": "w-2", "running": True, "last_job": JOB_B},
        {"name": "w-3", "running": False, "last_job": JOB_A},
        {"name": "w-4", "running": True, "last_job": None},
    ]
    statuses = {JOB_A: "started", JOB_B: "finished"}
    assert drain.busy_replicas(replicas, statuses) == {"w-1": JOB_A}
    assert drain.busy_replicas(replicas, {JOB_A: "queued"}) == {"w-1": JOB_A}


def test_busy_falls_back_to_job_containers_without_database():
    replicas = [
        {"name": "w-1", "running": True, "last_job": JOB_A},
        {"name": "w-2", "running": True, "last_job": JOB_B},
    ]
    assert drain.busy_replicas(replicas, None, {JOB_B}) == {"w-2": JOB_B}
    assert drain.busy_replicas(replicas, None, set()) == {}


def test_wait_until_idle_returns_when_jobs_end():
    states = iter([{"w-1": JOB_A, "w-9": JOB_B}, {"w-1": JOB_A}, {}])
    clock = iter(range(100))
    busy, waited = drain.wait_until_idle(
        ["w-1"], lambda: next(states), 30, sleep=lambda _s: None, clock=lambda: next(clock)
    )
    assert busy == {}
    assert waited > 0


def test_wait_until_idle_times_out_with_the_busy_replicas():
    clock = iter(range(0, 1000, 5))
    busy, waited = drain.wait_until_idle(
        ["w-1"], lambda: {"w-1": JOB_A}, 12, sleep=lambda _s: None, clock=lambda: next(clock)
    )
    assert busy == {"w-1": JOB_A}
    assert waited >= 12
    message = drain.drain_message(busy, 12)
    assert "drain_timeout=12" in message
    assert JOB_A in message
    assert "nothing was stopped" in message


def test_replicas_not_draining_are_ignored():
    busy, waited = drain.wait_until_idle(["w-2"], lambda: {"w-1": JOB_A}, 10)
    assert busy == {}
    assert waited < 1


def test_never_reached_database():
    waiting = 'Waiting for postgres...\nPostgres isn\'t ready.\ncould not translate host name "postgres"\n'
    assert logsigns.never_reached_database(waiting)
    assert not logsigns.never_reached_database("Waiting for postgres...\n")
    assert not logsigns.never_reached_database(waiting + "Postgres is ready! ✨ 💅\n")
    assert not logsigns.never_reached_database(waiting + '{"message": "Dequeue QFieldCloud Jobs from the DB"}\n')


class FakeReplicas:
    """Replicas for drain.stop_idle: which ones exit on the signal, which ones the database shows idle."""

    def __init__(self, exits_on_term: set[str], idle: set[str] | None) -> None:
        self.exits_on_term = exits_on_term
        self.idle = idle
        self.alive = {"w-1", "w-2", "w-3"}
        self.terminated: list[str] = []
        self.killed: list[str] = []
        self.asked: list[list[str]] = []
        self.now = 0.0

    def terminate(self, name: str) -> None:
        self.terminated.append(name)
        if name in self.exits_on_term:
            self.alive.discard(name)

    def running(self, name: str) -> bool:
        return name in self.alive

    def confirmed_idle(self, names: list[str]) -> set[str] | None:
        self.asked.append(list(names))
        return None if self.idle is None else self.idle & set(names)

    def kill(self, name: str) -> None:
        self.killed.append(name)
        self.alive.discard(name)

    def sleep(self, seconds: float) -> None:
        self.now += seconds

    def run(self, names: list[str]) -> dict[str, str]:
        return drain.stop_idle(
            names,
            self.terminate,
            self.running,
            self.confirmed_idle,
            self.kill,
            wait=15,
            sleep=self.sleep,
            clock=lambda: self.now,
        )


def test_stop_idle_replicas_that_exit_are_never_asked_about_or_killed():
    fake = FakeReplicas(exits_on_term={"w-1", "w-2"}, idle={"w-1", "w-2"})
    assert fake.run(["w-1", "w-2"]) == {"w-1": "exited", "w-2": "exited"}
    assert fake.terminated == ["w-1", "w-2"]
    assert fake.killed == [] and fake.asked == []
    assert fake.now == 0


def test_stop_idle_kills_only_a_stuck_replica_the_database_shows_idle():
    # w-2 ignores SIGTERM and holds no job (cut off from its network); w-3 ignores it while finishing a job.
    fake = FakeReplicas(exits_on_term={"w-1"}, idle={"w-1", "w-2"})
    assert fake.run(["w-1", "w-2", "w-3"]) == {"w-1": "exited", "w-2": "killed", "w-3": "left"}
    assert fake.killed == ["w-2"]
    assert fake.asked == [["w-2", "w-3"]]  # asked once, after the wait, about those still running
    assert fake.now >= 15
    assert "w-3" in fake.alive  # left to the grace period of the caller's stop


def test_stop_idle_kills_nothing_when_the_database_cannot_be_read():
    fake = FakeReplicas(exits_on_term=set(), idle=None)
    assert fake.run(["w-1", "w-2"]) == {"w-1": "left", "w-2": "left"}
    assert fake.killed == []


def fake_docker(tmp_path, body: str):
    """A ``docker`` that appends its arguments to calls.log and then runs ``body`` (sh)."""
    script = tmp_path / "docker"
    script.write_text(f'#!/bin/sh\necho "$*" >> {tmp_path}/calls.log\n{body}\n')
    script.chmod(0o755)
    return str(script)


def test_prefetched_config_is_run_once_and_its_errors_raised_when_taken(tmp_path):
    cli = compose.ComposeCli(str(tmp_path), docker_bin=fake_docker(tmp_path, 'echo \'{"services": {"app": {}}}\''))
    cli.prefetch_config()
    assert cli.config() == {"services": {"app": {}}}
    # the next config runs compose again (the files may have changed meanwhile)
    assert cli.config() == {"services": {"app": {}}}
    assert len((tmp_path / "calls.log").read_text().splitlines()) == 2
    failing = compose.ComposeCli(str(tmp_path), docker_bin=fake_docker(tmp_path, "echo 'yaml: line 3' >&2; exit 15"))
    failing.prefetch_config()
    with pytest.raises(compose.ComposeError, match=r"failed \(exit 15\): yaml: line 3"):
        failing.config()


def test_a_prefetch_not_taken_is_not_used_for_another_command(tmp_path):
    cli = compose.ComposeCli(str(tmp_path), docker_bin=fake_docker(tmp_path, 'echo "$*"'))
    cli.prefetch_config()
    assert cli.run("config", "--hash", "app").strip().endswith("config --hash app")
