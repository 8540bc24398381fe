# SPDX-License-Identifier: GPL-3.0-or-later
"""Unit tests of enforced.py: the record of the worker's last enforcement and the read's comparison with it."""

from __future__ import annotations

import json

import pytest

from ansible_collections.fibreflow.qfieldcloud.plugins.module_utils import compose, enforced

PROJECT = "qfc"


def entry(cid: str, project: str = PROJECT, state: str = "running", networks=("qfc_default",), config_hash="h1"):
    """A container as the engine's listing gives it."""
    return {
        "Id": cid,
        "State": state,
        "ImageID": "sha256:img",
        "Labels": {"com.docker.compose.project": project, "com.docker.compose.config-hash": config_hash},
        "NetworkSettings": {"Networks": {name: {} for name in networks}},
    }


@pytest.fixture
def project(tmp_path, monkeypatch):
    """A project directory with its files, and the records kept in a directory of the test."""
    locks = tmp_path / "locks"
    locks.mkdir()
    monkeypatch.setattr(compose, "LOCK_DIRS", [str(locks)])
    directory = tmp_path / "project"
    directory.mkdir()
    (directory / "docker-compose.yml").write_text("services: {}\n")
    (directory / ".env").write_text("POSTGRES_PASSWORD=hunter2-secret\n")
    return {
        "project_name": PROJECT,
        "project_dir": str(directory),
        "compose_files": [str(directory / "docker-compose.yml")],
    }


def paths_of(project):
    return enforced.watched_files(project, f"{project['project_dir']}/docker-compose.override.fibreflow-worker.yml")


PARAMS = {"service": "worker_wrapper", "state": "started", "db_password": "hunter2-secret", "drain_timeout": 900}


def test_rows_are_the_projects_containers_sorted_with_what_a_change_touches():
    listing = [entry("b"), entry("a", networks=("z", "qfc_default")), entry("c", project="other")]
    assert enforced.container_rows(listing, PROJECT) == [
        ["a", "running", "h1", ["qfc_default", "z"], "sha256:img"],
        ["b", "running", "h1", ["qfc_default"], "sha256:img"],
    ]


def test_the_record_is_current_until_a_file_or_a_container_changes(project):
    listing = [entry("a"), entry("db")]
    enforced.write(project, PARAMS, paths_of(project), listing)
    rows = enforced.container_rows(listing, PROJECT)
    seen = enforced.check(PROJECT, project["project_dir"], rows)
    assert seen["current"] is True and seen["at"]
    assert seen["options"] == {**dict.fromkeys(enforced.PLAN_OPTIONS), "service": "worker_wrapper", "state": "started"}
    # the same directory by another path spelling counts as the same
    assert enforced.check(PROJECT, project["project_dir"] + "/.", rows)["current"] is True
    changed = [
        [entry("a", state="exited"), entry("db")],  # stopped
        [entry("a2"), entry("db")],  # recreated
        [entry("a"), entry("db"), entry("hand")],  # one more
        [entry("a", networks=("qfc_default", "bridge")), entry("db")],  # connected elsewhere
        [entry("a", config_hash="h2"), entry("db")],  # recreated from another configuration
        [entry("a")],  # the database container is gone
    ]

    def current(containers) -> bool:
        return enforced.check(PROJECT, project["project_dir"], enforced.container_rows(containers, PROJECT))["current"]

    assert not any(current(other) for other in changed)
    assert current([*listing, entry("x", "o")])  # a container of another project does not count
    # another directory, or an edited file (the override appearing included)
    assert enforced.check(PROJECT, "/elsewhere", rows)["current"] is False
    env = f"{project['project_dir']}/.env"
    with open(env, "a", encoding="utf-8") as handle:
        handle.write("QFIELDCLOUD_WORKER_REPLICAS=2\n")
    assert enforced.check(PROJECT, project["project_dir"], rows)["current"] is False
    enforced.write(project, PARAMS, paths_of(project), listing)
    assert enforced.check(PROJECT, project["project_dir"], rows)["current"] is True
    with open(f"{project['project_dir']}/docker-compose.override.fibreflow-worker.yml", "w", encoding="utf-8") as f:
        f.write("services: {}\n")
    assert enforced.check(PROJECT, project["project_dir"], rows)["current"] is False


def test_the_record_holds_no_secret_and_forget_removes_it(project):
    enforced.write(project, PARAMS, paths_of(project), [entry("a")])
    path = enforced.record_path(PROJECT, project["project_dir"])
    with open(path, encoding="utf-8") as handle:
        text = handle.read()
    assert "hunter2" not in text and "drain_timeout" not in text
    assert json.loads(text)["version"] == enforced.VERSION
    enforced.forget(project)
    assert enforced.check(PROJECT, project["project_dir"], []) is None
    enforced.forget(project)  # no record: nothing to do


@pytest.mark.parametrize("content", ["not json", "[]", json.dumps({"version": 0, "key": "k"})])
def test_an_unreadable_or_foreign_record_is_no_record(project, content):
    path = enforced.record_path(PROJECT, project["project_dir"])
    with open(path, "w", encoding="utf-8") as handle:
        handle.write(content)
    assert enforced.check(PROJECT, project["project_dir"], []) is None
