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


# ---------------------------------------------------------------------------------------------
# images compose resolves (issue 16, item 4)
# ---------------------------------------------------------------------------------------------


def test_resolved_image_prebuilt_and_local_build():
    prebuilt = {"image": "opengisch/qfieldcloud-worker-wrapper:v26.25"}
    assert ws.resolved_image(prebuilt, "qfieldcloud") == "opengisch/qfieldcloud-worker-wrapper:v26.25"
    assert ws.is_prebuilt(prebuilt)
    built = {"image": None, "build": {"context": "./docker-app", "target": "worker_wrapper_runtime"}}
    assert ws.resolved_image(built, "qfc2") == "qfc2-worker_wrapper"
    assert not ws.is_prebuilt(built)
    assert not ws.is_prebuilt({"image": "myorg/worker:1", "build": {"context": "."}})
    assert ws.resolved_image(None, "qfc2", "app") == "qfc2-app"


def test_prebuilt_image_running_is_no_drift():
    image = "opengisch/qfieldcloud-worker-wrapper:v26.25"
    exp = ws.expected_worker("qfieldcloud", db_host="db", image=ws.resolved_image({"image": image}, "qfieldcloud"))
    assert ws.worker_drift(replica(image=image), exp) == []
    assert codes(ws.worker_drift(replica(image="qfieldcloud-worker_wrapper"), exp)) == ["worker_image_wrong"]


# ---------------------------------------------------------------------------------------------
# the worker's network is where it reaches the database (issue 16, item 6)
# ---------------------------------------------------------------------------------------------

DB_ON_DEFAULT = {"qfieldcloud_default": ["db", "qfieldcloud-db-1"]}


def test_expected_network_is_the_default_one_when_the_database_is_on_it():
    assert ws.expected_network("qfieldcloud_default", DB_ON_DEFAULT, ["qfieldcloud_default"], "db") == (
        "qfieldcloud_default"
    )
    both = {"qfieldcloud_default": ["db"], "qfieldcloud_backend": ["db"]}
    assert ws.expected_network("qfieldcloud_default", both, ["qfieldcloud_backend"], "db") == "qfieldcloud_default"


def test_expected_network_for_an_external_database_is_the_default_one():
    assert ws.expected_network("qfieldcloud_default", None, ["elsewhere"], "pg.example.org") == "qfieldcloud_default"


def test_expected_network_is_shared_with_the_app_when_the_database_is_elsewhere():
    names = {"qfieldcloud_backend": ["db"], "qfieldcloud_storage": ["db"]}
    got = ws.expected_network("qfieldcloud_default", names, ["qfieldcloud_default", "qfieldcloud_storage"], "db")
    assert got == "qfieldcloud_storage"


def test_expected_network_prefers_where_the_host_resolves():
    names = {"qfieldcloud_default": ["db"], "qfieldcloud_backend": ["db", "postgres"]}
    assert ws.expected_network("qfieldcloud_default", names, [], "postgres") == "qfieldcloud_backend"


def test_job_network_is_never_expected_of_the_worker():
    # QFIELDCLOUD_DEFAULT_NETWORK names the QGIS containers' own network: a healthy worker stays on the default.
    exp = ws.expected_worker("qfieldcloud", network="qfieldcloud_default", db_host="db", db_names=DB_ON_DEFAULT)
    assert ws.worker_drift(replica(networks=["qfieldcloud_default"]), exp) == []


def test_worker_off_the_database_network_is_wrong_network():
    exp = ws.expected_worker("qfieldcloud", db_host="db", db_names=DB_ON_DEFAULT)
    items = ws.worker_drift(replica(networks=["qfieldcloud_jobs"]), exp)
    assert items == [
        {
            "field": "networks",
            "expected": ["qfieldcloud_default"],
            "actual": ["qfieldcloud_jobs"],
            "code": "worker_wrong_network",
        }
    ]


def test_worker_reaching_the_database_on_another_network_is_fine():
    names = {"qfieldcloud_default": ["db"], "qfieldcloud_backend": ["db"]}
    exp = ws.expected_worker("qfieldcloud", db_host="db", db_names=names)
    assert ws.worker_drift(replica(networks=["qfieldcloud_backend"]), exp) == []


def test_service_name_alone_is_no_proof_of_reachability():
    # "postgres" is the database's alias on the backend network only: from the default network it does not resolve.
    names = {"qfieldcloud_default": ["db"], "qfieldcloud_backend": ["db", "postgres"]}
    exp = ws.expected_worker("qfieldcloud", db_host="postgres", db_names=names)
    items = ws.worker_drift(replica(networks=["qfieldcloud_default"], postgres_host="postgres"), exp)
    assert items == [
        {"field": "postgres_host", "expected": ["db"], "actual": "postgres", "code": "worker_db_host_wrong"}
    ]


def test_container_dns_names_from_inspect():
    attrs = {
        "Name": "/qfieldcloud-db-1",
        "Config": {"Labels": {"com.docker.compose.service": "db"}},
        "NetworkSettings": {
            "Networks": {
                "qfieldcloud_default": {"Aliases": ["qfieldcloud-db-1", "db", "3f2a"]},
                "qfieldcloud_backend": {"Aliases": ["postgres"], "DNSNames": ["qfieldcloud-db-1"]},
            }
        },
    }
    assert ws.container_dns_names(attrs) == {
        "qfieldcloud_default": ["3f2a", "db", "qfieldcloud-db-1"],
        "qfieldcloud_backend": ["db", "postgres", "qfieldcloud-db-1"],
    }
    assert ws.names_on(ws.container_dns_names(attrs), ["qfieldcloud_backend"]) == ["db", "postgres", "qfieldcloud-db-1"]


# ---------------------------------------------------------------------------------------------
# hand-started workers and standalone recreation (issue 16, items 7 and 10)
# ---------------------------------------------------------------------------------------------

COMPOSE_VOLUMES = [
    {"type": "bind", "source": "/var/run/docker.sock", "target": "/var/run/docker.sock"},
    {"type": "bind", "source": "/tmp", "target": "/tmp"},
    {"type": "volume", "source": "transformation_grids", "target": "/transformation_grids"},
    {"type": "volume", "source": "static_volume", "target": "/usr/src/app/staticfiles"},
    {"type": "volume", "source": "media_volume", "target": "/usr/src/app/mediafiles/"},
    {"type": "volume", "source": "custom_ca", "target": "/usr/local/share/ca-certificates", "read_only": True},
]
COMPOSE_ENV = {"ENVIRONMENT", "POSTGRES_HOST", "POSTGRES_PASSWORD", "QFIELDCLOUD_WORKER_QFIELDCLOUD_URL", "STORAGES"}

# The field guide's worker: docker run --user root --network ... -v /var/run/docker.sock:... -e POSTGRES_*
GUIDE_INSPECT = {
    "Name": "/qfieldcloud-worker",
    "Config": {
        "Env": ["POSTGRES_HOST=db", "POSTGRES_PASSWORD=s3cret", "PATH=/usr/bin"],
        "Labels": {"com.docker.compose.project": "qfieldcloud", "fibreflow.standin": "qfieldcloud"},
        "StopTimeout": None,
    },
    "Mounts": [
        {"Type": "bind", "Source": "/var/run/docker.sock", "Destination": "/var/run/docker.sock", "RW": True},
    ],
}


def test_guide_worker_gaps():
    guide = {"mounts": ws.replica_mounts(GUIDE_INSPECT), "env_keys": ws.env_keys(GUIDE_INSPECT)}
    assert ws.env_keys(GUIDE_INSPECT) == ["PATH", "POSTGRES_HOST", "POSTGRES_PASSWORD"]
    assert ws.hand_started_gaps(guide, COMPOSE_ENV, COMPOSE_VOLUMES) == [
        "bind:/tmp",
        "volume:/transformation_grids",
        "volume:/usr/src/app/staticfiles",
        "volume:/usr/src/app/mediafiles",
        "volume:/usr/local/share/ca-certificates",
        "env:ENVIRONMENT",
        "env:QFIELDCLOUD_WORKER_QFIELDCLOUD_URL",
        "env:STORAGES",
    ]


def test_gaps_without_compose_knowledge_still_need_the_tmp_hand_off():
    guide = {"mounts": ws.replica_mounts(GUIDE_INSPECT), "env_keys": ["ENVIRONMENT"]}
    gaps = ws.hand_started_gaps(guide, None, None)
    assert gaps[0] == "bind:/tmp"
    assert "env:QFIELDCLOUD_WORKER_QFIELDCLOUD_URL" in gaps
    assert "env:ENVIRONMENT" not in gaps


def test_complete_hand_started_worker_has_no_gaps():
    full = {
        "mounts": [
            {"type": "bind", "source": "/tmp", "target": "/tmp", "rw": True},
            {"type": "volume", "source": "p_transformation_grids", "target": "/transformation_grids", "rw": True},
            {"type": "volume", "source": "p_static_volume", "target": "/usr/src/app/staticfiles", "rw": True},
            {"type": "volume", "source": "p_media_volume", "target": "/usr/src/app/mediafiles", "rw": True},
            {"type": "volume", "source": "p_custom_ca", "target": "/usr/local/share/ca-certificates", "rw": False},
        ],
        "env_keys": sorted(COMPOSE_ENV),
    }
    assert ws.hand_started_gaps(full, COMPOSE_ENV, COMPOSE_VOLUMES) == []
    # /tmp mounted from elsewhere breaks the hand-off just as much as no /tmp.
    other_tmp = copy.deepcopy(full)
    other_tmp["mounts"][0]["source"] = "/srv/tmp"
    assert ws.hand_started_gaps(other_tmp, COMPOSE_ENV, COMPOSE_VOLUMES) == ["bind:/tmp"]


def test_volume_binds_name_volumes_and_keep_read_only():
    names = {"transformation_grids": "p_transformation_grids", "custom_ca": "p_custom_ca"}
    assert ws.volume_binds(COMPOSE_VOLUMES[1:3] + COMPOSE_VOLUMES[5:], names) == [
        "/tmp:/tmp:rw",
        "p_transformation_grids:/transformation_grids:rw",
        "p_custom_ca:/usr/local/share/ca-certificates:ro",
    ]


def test_standalone_binds_keep_named_volumes_and_modes():
    existing = {
        "Mounts": [
            {"Type": "bind", "Source": "/var/run/docker.sock", "Destination": "/var/run/docker.sock", "RW": False},
            {
                "Type": "volume",
                "Name": "p_custom_ca",
                "Source": "/var/lib/docker/volumes/p_custom_ca/_data",
                "Destination": "/usr/local/share/ca-certificates",
                "RW": False,
            },
            {"Type": "volume", "Name": "p_transformation_grids", "Destination": "/transformation_grids", "RW": True},
            {"Type": "bind", "Source": "/srv/certs", "Destination": "/certs", "RW": False},
        ]
    }
    compose_binds = ["p_static_volume:/usr/src/app/staticfiles:rw", "other_grids:/transformation_grids:rw"]
    assert ws.standalone_binds(existing, compose_binds) == [
        "/var/run/docker.sock:/var/run/docker.sock:rw",
        "/tmp:/tmp:rw",
        "/srv/certs:/certs:ro",
        "p_transformation_grids:/transformation_grids:rw",
        "p_custom_ca:/usr/local/share/ca-certificates:ro",
        "p_static_volume:/usr/src/app/staticfiles:rw",
    ]
    assert ws.standalone_binds(None) == ["/var/run/docker.sock:/var/run/docker.sock:rw", "/tmp:/tmp:rw"]


def test_standalone_env_takes_compose_and_keeps_the_rest():
    env = ws.standalone_env(GUIDE_INSPECT, {"ENVIRONMENT": "production", "EMPTY": None, "POSTGRES_HOST": "db"})
    assert env == {"POSTGRES_HOST": "db", "POSTGRES_PASSWORD": "s3cret", "ENVIRONMENT": "production", "EMPTY": ""}
    assert ws.standalone_env(GUIDE_INSPECT) == {"POSTGRES_HOST": "db", "POSTGRES_PASSWORD": "s3cret"}
    assert ws.standalone_env(None, None, {"A": "1"}) == {"A": "1"}


def test_standalone_labels_drop_compose_bookkeeping():
    labels = ws.standalone_labels(GUIDE_INSPECT, {"ofelia.enabled": "false"}, {"fibreflow.qfieldcloud.managed-by": "x"})
    assert labels == {
        "fibreflow.standin": "qfieldcloud",
        "ofelia.enabled": "false",
        "fibreflow.qfieldcloud.managed-by": "x",
    }


@pytest.mark.parametrize(
    ("value", "seconds"), [("15m0s", 900), ("15m", 900), ("1m30s", 90), ("1h", 3600), (20, 20), ("", None)]
)
def test_duration_seconds(value, seconds):
    assert ws.duration_seconds(value) == seconds


def test_standalone_stop_timeout():
    assert ws.standalone_stop_timeout(GUIDE_INSPECT, {"stop_grace_period": "15m0s"}) == 900
    assert ws.standalone_stop_timeout({"Config": {"StopTimeout": 120}}, {}) == 120
    assert ws.standalone_stop_timeout(GUIDE_INSPECT, None, 900) == 900
