# SPDX-License-Identifier: GPL-3.0-or-later
"""Unit tests of the worker's required configuration and drift comparison."""

from __future__ import annotations

import copy

import pytest

from ansible_collections.fibreflow.qfieldcloud.plugins.module_utils import worker_spec as ws

GOOD = {
    "name": "qfieldcloud-worker_wrapper-1",
    "user": "root",
    "image_user": "10001",
    "networks": ["qfieldcloud_default"],
    "published_ports": [],
    "postgres_host": "db",
    "socket_mount": {"present": True, "rw": True, "source": "/var/run/docker.sock"},
    "command": ["python", "manage.py", "dequeue"],
    "image": "qfieldcloud-worker_wrapper",
    "image_id": "sha256:aaa",
    "restart_policy": "unless-stopped",
    "running": True,
    "hardening": {"cap_drop": [], "no_new_privileges": False, "read_only": False},
}


def replica(**changes):
    data = copy.deepcopy(GOOD)
    data.update(changes)
    return data


@pytest.fixture
def expected():
    return ws.expected_worker("qfieldcloud", db_host="db")


def codes(items):
    return [item["code"] for item in items]


def test_expected_defaults():
    exp = ws.expected_worker("qfc2")
    assert exp["network"] == "qfc2_default"
    assert exp["image"] == "qfc2-worker_wrapper"
    assert exp["restart_policy"] == "unless-stopped"
    assert exp["db_host"] is None
    assert ws.worker_image_name("qfc2", compose_v1=True) == "qfc2_worker_wrapper"


def test_compliant_replica_has_no_drift(expected):
    assert ws.worker_drift(replica(), expected) == []


@pytest.mark.parametrize("user", ["root", "0", "0:0", "root:root", "root:docker"])
def test_root_users_are_fine(expected, user):
    assert ws.worker_drift(replica(user=user), expected) == []


def test_empty_user_with_root_image_is_fine(expected):
    assert ws.worker_drift(replica(user="", image_user=""), expected) == []
    assert ws.worker_drift(replica(user="", image_user="root"), expected) == []


def test_empty_user_with_unprivileged_image_is_drift(expected):
    items = ws.worker_drift(replica(user="", image_user="10001"), expected)
    assert codes(items) == ["worker_socket_denied"]
    assert "10001" in items[0]["actual"]


def test_non_root_user_is_drift(expected):
    items = ws.worker_drift(replica(user="10001"), expected)
    assert items == [{"field": "user", "expected": "root", "actual": "10001", "code": "worker_socket_denied"}]


def test_hardening_is_not_drift(expected):
    hardened = replica(hardening={"cap_drop": ["ALL"], "no_new_privileges": True, "read_only": True})
    assert ws.worker_drift(hardened, expected) == []


def test_socket_missing_and_read_only(expected):
    assert codes(ws.worker_drift(replica(socket_mount={"present": False}), expected)) == ["worker_socket_not_mounted"]
    ro = replica(socket_mount={"present": True, "rw": False, "source": "/var/run/docker.sock"})
    items = ws.worker_drift(ro, expected)
    assert codes(items) == ["worker_socket_not_mounted"]
    assert items[0]["actual"].endswith(":ro")


def test_wrong_network(expected):
    items = ws.worker_drift(replica(networks=["bridge"]), expected)
    assert items == [
        {"field": "networks", "expected": ["qfieldcloud_default"], "actual": ["bridge"], "code": "worker_wrong_network"}
    ]


def test_extra_network_is_fine(expected):
    assert ws.worker_drift(replica(networks=["qfieldcloud_default", "monitoring"]), expected) == []


def test_published_port(expected):
    items = ws.worker_drift(replica(published_ports=["0.0.0.0:5679->5679/tcp"]), expected)
    assert codes(items) == ["worker_port_published"]


def test_debug_command(expected):
    cmd = ["python3", "-m", "debugpy", "--listen", "0.0.0.0:5679", "manage.py", "dequeue"]
    assert codes(ws.worker_drift(replica(command=cmd), expected)) == ["worker_debug_command"]
    assert codes(ws.worker_drift(replica(command=" ".join(cmd)), expected)) == ["worker_debug_command"]


def test_other_command(expected):
    assert codes(ws.worker_drift(replica(command=["sleep", "infinity"]), expected)) == ["worker_command_wrong"]
    assert codes(ws.worker_drift(replica(command=None), expected)) == ["worker_command_wrong"]


def test_entrypoint_wrapped_command_is_fine(expected):
    cmd = ["/entrypoint.sh", "python", "manage.py", "dequeue"]
    assert ws.worker_drift(replica(command=cmd), expected) == []


def test_db_host(expected):
    items = ws.worker_drift(replica(postgres_host="dbx"), expected)
    assert items == [{"field": "postgres_host", "expected": "db", "actual": "dbx", "code": "worker_db_host_wrong"}]
    assert codes(ws.worker_drift(replica(postgres_host=None), expected)) == ["worker_db_host_wrong"]


def test_db_host_unknown_is_not_checked():
    exp = ws.expected_worker("qfieldcloud")
    assert ws.worker_drift(replica(postgres_host="anything"), exp) == []


def test_restart_policy(expected):
    assert codes(ws.worker_drift(replica(restart_policy="no"), expected)) == ["worker_restart_policy"]
    assert codes(ws.worker_drift(replica(restart_policy=None), expected)) == ["worker_restart_policy"]
    assert codes(ws.worker_drift(replica(restart_policy="always"), expected)) == ["worker_restart_policy"]


def test_image_names(expected):
    assert ws.worker_drift(replica(image="qfieldcloud-worker_wrapper:latest"), expected) == []
    assert ws.worker_drift(replica(image="docker.io/library/qfieldcloud-worker_wrapper"), expected) == []
    assert codes(ws.worker_drift(replica(image="python:3.11"), expected)) == ["worker_image_wrong"]


def test_image_by_id_and_outdated():
    exp = ws.expected_worker("qfieldcloud", image_id="sha256:new")
    # created from the id of the built image: fine
    assert ws.worker_drift(replica(image="sha256:new", image_id="sha256:new"), exp) == []
    items = ws.worker_drift(replica(image_id="sha256:old"), exp)
    assert codes(items) == ["worker_image_outdated"]


def test_image_aliases():
    exp = ws.expected_worker("qfieldcloud")
    exp["image_aliases"] = ["qfieldcloud_worker_wrapper"]
    assert ws.worker_drift(replica(image="qfieldcloud_worker_wrapper"), exp) == []


def test_not_running(expected):
    assert codes(ws.worker_drift(replica(running=False), expected)) == ["worker_not_running"]


def test_many_faults_in_stable_order(expected):
    bad = replica(
        user="10001",
        networks=["bridge"],
        published_ports=["5679/tcp"],
        command="python3 -m debugpy manage.py dequeue",
        postgres_host="dbx",
        restart_policy="no",
        running=False,
    )
    assert codes(ws.worker_drift(bad, expected)) == [
        "worker_socket_denied",
        "worker_wrong_network",
        "worker_port_published",
        "worker_debug_command",
        "worker_db_host_wrong",
        "worker_restart_policy",
        "worker_not_running",
    ]


@pytest.mark.parametrize(
    ("running", "wanted", "code"),
    [
        (1, 1, None),
        (0, 0, None),
        (0, 1, "worker_not_running"),
        (1, 3, "worker_replicas_low"),
        (3, 1, "worker_replicas_high"),
    ],
)
def test_replica_count_drift(running, wanted, code):
    items = ws.replica_count_drift(running, wanted)
    if code is None:
        assert items == []
    else:
        assert items == [{"field": "replicas", "expected": wanted, "actual": running, "code": code}]


def test_is_root_user_edge_cases():
    assert ws.is_root_user(None)
    assert ws.is_root_user("", None)
    assert not ws.is_root_user("nobody")
    assert not ws.is_root_user("1000:0")
