# Copyright (c) 2025, fibreflow
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The pure planner of qfc_worker, from plain data (what worker_apply reads)."""

from __future__ import annotations

import copy

import pytest

from ansible_collections.fibreflow.qfieldcloud.plugins.module_utils import compose
from ansible_collections.fibreflow.qfieldcloud.plugins.module_utils import worker_plan as wp

PROJECT_DIR = "/srv/qfc"
PARAMS = {"state": "started", "backup": True, "override_file": compose.OVERRIDE_FILE}
COMMAND = ["python", "manage.py", "dequeue"]


def project(**extra):
    base = {
        "project_name": "qfc",
        "project_dir": PROJECT_DIR,
        "env_file": f"{PROJECT_DIR}/.env",
        "compose_files": [f"{PROJECT_DIR}/docker-compose.yml"],
        "path_separator": ":",
        "worker_replicas": 1,
        "default_network": "qfc_default",
        "job_network": "qfc_default",
        "job_network_source": "default",
        "dotenv": {"QFIELDCLOUD_WORKER_REPLICAS": "1"},
    }
    return {**base, **extra}


def replica(number=1, **extra):
    """A compliant compose replica, as stack.replica_from_inspect returns it."""
    base = {
        "id": f"id{number}",
        "name": f"qfc-worker_wrapper-{number}",
        "number": number,
        "running": True,
        "user": "root",
        "image_user": "10001",
        "networks": ["qfc_default"],
        "postgres_host": "db",
        "published_ports": [],
        "command": COMMAND,
        "cmd": COMMAND,
        "socket_mount": {"present": True, "rw": True, "source": "/var/run/docker.sock"},
        "restart_policy": "unless-stopped",
        "image": "qfc-worker_wrapper",
        "image_id": "sha256:1",
        "config_hash": "h",
    }
    return {**base, **extra}


def converged_files():
    """files_plan for a project whose override and COMPOSE_FILE are current."""
    world = {
        "service": "worker_wrapper",
        "command": COMMAND,
        "db_host": "db",
        "replicas": 1,
        "network_key": "default",
        "keep_keys": [],
    }
    override = compose.render_override("worker_wrapper", COMMAND, "db", 1)
    env = f"COMPOSE_FILE=docker-compose.yml:{compose.OVERRIDE_FILE}\n"
    return wp.files_plan(PARAMS, project(), {**world, "override_before": override, "env_before": env})


def world(**extra):
    expected = wp.expected_state(PARAMS, "qfc", "qfc_default", "db", "qfc-worker_wrapper", "sha256:1")
    expected["planned_networks"] = ["qfc_default"]
    base = {
        "mode": "compose",
        "project": project(),
        "service": "worker_wrapper",
        "replicas": 1,
        "files": converged_files(),
        "expected": expected,
        "command": COMMAND,
        "image": "qfc-worker_wrapper",
        "image_present": True,
        "image_command": "cd /srv/qfc && docker compose build worker_wrapper",
        "svc": {"environment": {"POSTGRES_HOST": "db"}, "volumes": []},
        "replicas_now": [replica()],
        "hand": [],
        "hash_matches": {"id1": True},
        "qgis_network_missing": None,
    }
    return {**base, **extra}


def codes(plan):
    return sorted(item["code"] for item in plan["drift"])


def test_a_converged_worker_plans_nothing():
    plan = wp.plan(PARAMS, False, world())
    wp.compose_actions(plan, "worker_wrapper", "up", [])
    assert plan["drift"] == [] and plan["actions"] == [] and plan["diffs"] == [] and plan["files"] == []
    assert not plan["apply"]["up"] and not plan["apply"]["stop"] and plan["apply"]["drain"] == []


def test_a_missing_override_is_written_and_put_last_in_compose_file_with_a_backup():
    files = wp.files_plan(
        PARAMS,
        project(),
        {
            "service": "worker_wrapper",
            "command": COMMAND,
            "db_host": "db",
            "replicas": 1,
            "override_before": None,
            "env_before": "COMPOSE_FILE=docker-compose.yml\nSECRET_KEY=x\n",
        },
    )
    assert files["cf_after"] == f"docker-compose.yml:{compose.OVERRIDE_FILE}"
    assert files["planned_files"] == ["docker-compose.yml", "-"]
    plan = wp.plan(PARAMS, True, world(files=files, hash_matches={"id1": False}))
    assert codes(plan) == ["worker_config_not_persistent"]
    assert plan["drift"][0]["actual"] == "missing"
    assert [(f["path"], f["mode"], f["backup"]) for f in plan["files"]] == [
        (f"{PROJECT_DIR}/{compose.OVERRIDE_FILE}", 0o644, False),
        (f"{PROJECT_DIR}/.env", 0o600, True),
    ]
    assert plan["files"][1]["text"] == f"COMPOSE_FILE=docker-compose.yml:{compose.OVERRIDE_FILE}\nSECRET_KEY=x\n"
    assert plan["actions"][:2] == [
        f"write {PROJECT_DIR}/{compose.OVERRIDE_FILE}",
        f"set COMPOSE_FILE in {PROJECT_DIR}/.env (backup kept)",
    ]
    # The planned configuration hashes differently from the container's label: compose recreates the replica.
    assert [r["name"] for r in plan["apply"]["recreate"]] == ["qfc-worker_wrapper-1"]
    assert plan["apply"]["up"] and plan["apply"]["drain"] == plan["apply"]["recreate"]


def test_a_drifted_replica_is_drained_then_recreated_and_the_diff_shows_the_fields():
    bad = replica(user="10001", published_ports=["0.0.0.0:5679->5679/tcp"])
    plan = wp.plan(PARAMS, True, world(replicas_now=[bad]))
    assert codes(plan) == ["worker_port_published", "worker_socket_denied"]
    assert {item["replica"] for item in plan["drift"]} == {"qfc-worker_wrapper-1"}
    wp.compose_actions(plan, "worker_wrapper", "cd /srv/qfc && docker compose up -d", [])
    assert plan["actions"] == [
        "recreate qfc-worker_wrapper-1 (after drain)",
        "run: cd /srv/qfc && docker compose up -d",
    ]
    assert plan["apply"]["drain"] == [bad]
    (diff,) = plan["diffs"]
    assert '"user": "10001"' in diff["before"] and '"user": "root"' in diff["after"]


def test_a_replica_that_never_reached_the_database_is_stopped_at_once():
    bad = replica(user="10001")
    plan = wp.plan(PARAMS, False, world(replicas_now=[bad]))
    assert plan["apply"]["stuck_candidates"] == [bad]
    wp.compose_actions(plan, "worker_wrapper", "up", [bad])
    assert plan["actions"][0] == "stop qfc-worker_wrapper-1 now (it never reached the database: no job)"
    assert plan["apply"]["stuck"] == [bad]


def test_state_stopped_drains_and_stops_every_running_replica():
    params = {**PARAMS, "state": "stopped"}
    expected = wp.expected_state(params, "qfc", "qfc_default", "db", "qfc-worker_wrapper", "sha256:1")
    plan = wp.plan(params, True, world(expected=expected, replicas_now=[replica(1), replica(2, running=False)]))
    # A stopped worker's extra replica is no drift of its own: every replica stops.
    assert [(item["replica"], item["code"]) for item in plan["drift"]] == [
        ("qfc-worker_wrapper-1", "worker_should_be_stopped")
    ]
    wp.compose_actions(plan, "worker_wrapper", "up", [])
    assert plan["actions"] == ["stop qfc-worker_wrapper-1 (after drain)"]
    assert not plan["apply"]["up"] and plan["apply"]["stop"]
    assert [r["name"] for r in plan["apply"]["drain"]] == ["qfc-worker_wrapper-1", "qfc-worker_wrapper-2"]


def test_scaling_down_removes_the_excess_after_draining_and_scaling_up_creates():
    down = wp.plan(PARAMS, True, world(replicas_now=[replica(1), replica(2)], hash_matches={"id1": True}))
    wp.compose_actions(down, "worker_wrapper", "up", [])
    assert codes(down) == ["worker_replicas_high"]
    assert down["actions"] == ["remove qfc-worker_wrapper-2 (scale down, after drain)", "run: up"]
    assert [r["name"] for r in down["apply"]["drain"]] == ["qfc-worker_wrapper-2"]
    up = wp.plan(PARAMS, True, world(replicas=3))
    wp.compose_actions(up, "worker_wrapper", "up", [])
    assert codes(up) == ["worker_replicas_low"]
    assert up["actions"] == ["create 2 replica(s) of worker_wrapper", "run: up"]


def test_a_missing_image_is_reported_in_check_mode_and_fails_a_real_run():
    command = "cd /srv/qfc && docker compose pull worker_wrapper"
    checked = wp.plan(PARAMS, True, world(image_present=False, image_command=command, replicas_now=[]))
    assert "worker_image_missing" in codes(checked)
    assert checked["details"]["pull_command"] == command and checked["details"]["image_missing"] is True
    with pytest.raises(wp.WorkerError) as failed:
        wp.plan(PARAMS, False, world(image_present=False, image_command=command, replicas_now=[]))
    assert (failed.value.option, failed.value.code) == ("image", "worker_image_missing")
    assert failed.value.details["image_command"] == command


def test_hand_started_workers_are_kept_with_a_warning_or_retired_when_asked():
    hand = replica(0, name="qfieldcloud-worker", id="hand", env_keys=[], mounts=[])
    kept = wp.plan(PARAMS, True, world(hand=[copy.deepcopy(hand)]))
    assert kept["details"]["hand_started"] == ["qfieldcloud-worker"]
    assert any("remove_hand_started" in warning for warning in kept["warnings"])
    assert "worker_hand_started" not in codes(kept)
    retired = wp.plan({**PARAMS, "remove_hand_started": True}, True, world(hand=[copy.deepcopy(hand)]))
    wp.compose_actions(retired, "worker_wrapper", "up", [])
    assert codes(retired) == ["worker_hand_started"]
    assert retired["actions"] == ["remove hand-started worker qfieldcloud-worker (after drain)"]
    assert [item["id"] for item in retired["apply"]["drain"]] == ["hand"]


def test_a_missing_qgis_network_is_reported_never_created():
    plan = wp.plan(PARAMS, True, world(qgis_network_missing="qfc_jobs"))
    assert codes(plan) == ["qgis_network_missing"]
    assert "docker network create qfc_jobs" in plan["details"]["qgis_network_missing"]["remedy"]
    assert plan["actions"] == [] and len(plan["warnings"]) == 1


def test_replicas_come_from_the_option_then_the_env_file_and_are_bounded():
    assert wp.desired_replicas({"replicas": 3}, project()) == 3
    assert wp.desired_replicas({}, project(dotenv={"QFIELDCLOUD_WORKER_REPLICAS": "2"})) == 2
    assert wp.desired_replicas({}, project(dotenv={}, worker_replicas=1)) == 1
    for bad in ("two", "33", "-1", "1.5"):
        with pytest.raises(wp.WorkerError) as failed:
            wp.desired_replicas({}, project(dotenv={"QFIELDCLOUD_WORKER_REPLICAS": bad}))
        assert failed.value.option == "replicas"


def test_the_dequeue_command_of_the_project_is_kept_unless_it_runs_a_debugger():
    assert wp.dequeue_command({}, "python3 manage.py dequeue") == ["python3", "manage.py", "dequeue"]
    debug = ["python3", "-m", "debugpy", "--listen", "0.0.0.0:5679", "manage.py", "dequeue"]
    assert wp.dequeue_command({}, debug) == COMMAND
    assert wp.dequeue_command({"command": ["x", "dequeue"]}, debug) == ["x", "dequeue"]
    with pytest.raises(wp.WorkerError) as failed:
        wp.override_name({"override_file": "../elsewhere.yml"})
    assert failed.value.option == "override_file"


def standalone_world(**extra):
    expected = wp.expected_state(PARAMS, "qfc", "qfc_default", "db", "qfc-worker_wrapper", "sha256:1")
    desired = {"image": "qfc-worker_wrapper", "command": COMMAND, "env": {"POSTGRES_HOST": "db"}}
    base = {
        "mode": "standalone",
        "existing": [],
        "replicas": 2,
        "base_name": "qfieldcloud-worker",
        "expected": expected,
        "desired": desired,
        "image_present": True,
        "image_command": "docker build -t qfc-worker_wrapper <worker build context>",
    }
    return {**base, **extra}


def test_standalone_creates_missing_replicas_and_recreates_one_whose_spec_changed():
    one = replica(1, name="qfieldcloud-worker", spec_hash="old")
    plan = wp.plan(PARAMS, True, standalone_world(existing=[one]))
    assert plan["actions"] == ["recreate qfieldcloud-worker (after drain)", "create qfieldcloud-worker-2"]
    assert codes(plan) == ["worker_not_running"]
    assert plan["apply"]["create"] == ["qfieldcloud-worker-2"] and plan["apply"]["drain"] == [one]
    same = replica(1, name="qfieldcloud-worker", spec_hash=plan["apply"]["spec_hash"])
    again = wp.plan(PARAMS, True, standalone_world(existing=[same], replicas=1))
    assert again["actions"] == [] and again["drift"] == []


def test_standalone_absent_and_stopped():
    one = replica(1, name="qfieldcloud-worker")
    absent = wp.plan({**PARAMS, "state": "absent"}, True, standalone_world(existing=[one], replicas=0))
    assert absent["actions"] == ["remove qfieldcloud-worker (after drain)"]
    assert codes(absent) == ["worker_replicas_high"]
    stopped = {**PARAMS, "state": "stopped"}
    expected = wp.expected_state(stopped, "qfc", "qfc_default", "db", "qfc-worker_wrapper", "sha256:1")
    hashed = replica(1, name="qfieldcloud-worker")
    plan = wp.plan(stopped, True, standalone_world(existing=[hashed], replicas=1, expected=expected))
    assert "worker_should_be_stopped" in codes(plan)
    assert "stop qfieldcloud-worker (after drain)" in plan["actions"]
