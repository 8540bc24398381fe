# SPDX-License-Identifier: GPL-3.0-or-later
"""Unit tests of stack discovery's pure parts, on Docker Engine API JSON."""

from __future__ import annotations

from builders import CRASH_LOG

from ansible_collections.fibreflow.qfieldcloud.plugins.module_utils import docker_engine, logsigns, stack

COMPOSE = {"com.docker.compose.container-number": "1", "com.docker.compose.config-hash": "abc"}


def entry(name, labels=None, image="x", networks=("qfieldcloud_default",), command="", state="running", image_id=None):
    return {
        "Id": name + "0" * 20,
        "Names": ["/" + name],
        "Image": image,
        "ImageID": image_id or f"sha256:{image}",
        "Command": command,
        "Labels": labels or {},
        "State": state,
        "NetworkSettings": {"Networks": {n: {} for n in networks}},
    }


def compose(name, project, service, **kw):
    labels = dict(COMPOSE, **{"com.docker.compose.project": project, "com.docker.compose.service": service})
    return entry(name, labels, **kw)


def classify(listing, project="qfieldcloud"):
    return stack.classify_containers(
        listing,
        project,
        f"{project}_default",
        "production",
        [f"{project}-worker_wrapper"],
        qgis_images=[f"{project}-qgis3"],
    )


def test_only_our_compose_project():
    listing = [
        compose("qfieldcloud-app-1", "qfieldcloud", "app"),
        compose("qfieldcloud-worker_wrapper-1", "qfieldcloud", "worker_wrapper"),
        compose("other-app-1", "other", "app", networks=("other_default",)),
        compose("other-worker_wrapper-1", "other", "worker_wrapper", networks=("other_default",)),
    ]
    groups = classify(listing)
    assert sorted(groups["project"]) == ["app", "worker_wrapper"]
    assert groups["hand_started"] == []
    assert groups["jobs"] == []
    # Another project's running worker is kept aside: two instances may share one ENVIRONMENT label.
    assert [docker_engine.container_name(e) for e in groups["foreign_workers"]] == ["other-worker_wrapper-1"]


def test_oneoff_is_ignored():
    one = compose("qfieldcloud-app-run-1", "qfieldcloud", "app")
    one["Labels"]["com.docker.compose.oneoff"] = "True"
    assert classify([one])["project"] == {}


def test_hand_started_from_compose_built_image_is_not_compose():
    # images built by compose carry project/service labels that `docker run` containers inherit
    labels = {"com.docker.compose.project": "qfieldcloud", "com.docker.compose.service": "worker_wrapper"}
    hand = entry("qfieldcloud-worker", labels, image="qfieldcloud-worker_wrapper", command="python3 manage.py dequeue")
    groups = classify([hand])
    assert groups["project"] == {}
    assert [docker_engine.container_name(e) for e in groups["hand_started"]] == ["qfieldcloud-worker"]


def test_hand_started_rules():
    listing = [
        # by image + command, even on another network
        entry(
            "w1", image="qfieldcloud-worker_wrapper:latest", networks=("bridge",), command="python manage.py dequeue"
        ),
        # by network + name
        entry("qfieldcloud-worker-2", image="python:3.11", command="sleep 1"),
        # by network + command
        entry("x", image="custom", command="python3 manage.py dequeue"),
        # not ours: another stack's network and image
        entry(
            "qfieldcloud-worker-other", image="b-worker_wrapper", networks=("b_default",), command="manage.py dequeue"
        ),
        # our image but a one-off shell: not a worker
        entry("shell", image="qfieldcloud-worker_wrapper", networks=("bridge",), command="python manage.py shell"),
        # unrelated container on our network
        entry("pgadmin", image="pgadmin", command="/entrypoint.sh"),
    ]
    names = [docker_engine.container_name(e) for e in classify(listing)["hand_started"]]
    assert names == ["w1", "qfieldcloud-worker-2", "x"]


def test_job_containers_only_ours():
    ours = {"app": "production_worker", "job_id": "j1", "project_id": "p", "type": "package"}
    listing = [
        entry("job1", ours, image="qfieldcloud-qgis3"),
        entry("job2", ours, image="qfieldcloud-qgis3", networks=("bridge",)),  # by image
        entry("job3", dict(ours, job_id="j3"), image="b-qgis3", networks=("b_default",)),  # other stack
        entry("job4", dict(ours, app="development_worker"), image="qfieldcloud-qgis3"),  # other ENVIRONMENT
    ]
    names = [docker_engine.container_name(e) for e in classify(listing)["jobs"]]
    assert names == ["job1", "job2"]


INSPECT = {
    "Id": "0123456789abcdef",
    "Name": "/qfieldcloud-worker_wrapper-1",
    "Created": "2025-01-01T00:00:00.1Z",
    "Image": "sha256:w",
    "RestartCount": 2,
    "State": {"Status": "running", "Running": True, "Restarting": False, "StartedAt": "2025-01-01T00:00:01Z"},
    "Config": {
        "User": "root",
        "Image": "qfieldcloud-worker_wrapper",
        "Env": ["POSTGRES_HOST=db", "POSTGRES_PASSWORD=secret"],
        "Cmd": ["python3", "manage.py", "dequeue"],
        "Entrypoint": ["/entrypoint.sh"],
        "Labels": dict(COMPOSE, **{"com.docker.compose.service": "worker_wrapper", "com.docker.compose.project": "q"}),
    },
    "HostConfig": {
        "RestartPolicy": {"Name": "unless-stopped"},
        "PortBindings": {"5679/tcp": [{"HostIp": "", "HostPort": "5679"}]},
        "CapDrop": ["ALL"],
        "SecurityOpt": ["no-new-privileges:true"],
        "ReadonlyRootfs": True,
    },
    "NetworkSettings": {
        "Ports": {"5679/tcp": [{"HostIp": "0.0.0.0", "HostPort": "5679"}], "8000/tcp": None},
        "Networks": {"qfieldcloud_default": {"IPAddress": "172.18.0.5"}},
    },
    "Mounts": [{"Type": "bind", "Source": "/var/run/docker.sock", "Destination": "/var/run/docker.sock", "RW": False}],
}


def test_replica_facts():
    rep = stack.replica_facts(INSPECT, "qfieldcloud_default")
    assert rep["name"] == "qfieldcloud-worker_wrapper-1"
    assert rep["id"] == "0123456789ab"
    assert rep["compose"] is True
    assert rep["number"] == 1
    assert rep["running"] is True
    assert rep["restart_count"] == 2
    assert rep["user"] == "root"
    assert rep["postgres_host"] == "db"
    assert rep["published_ports"] == ["0.0.0.0:5679->5679/tcp"]
    assert rep["socket_mount"] == {"present": True, "rw": False, "source": "/var/run/docker.sock"}
    assert rep["command"] == ["python3", "manage.py", "dequeue"]
    assert rep["restart_policy"] == "unless-stopped"
    assert rep["hardening"] == {"cap_drop": ["ALL"], "no_new_privileges": True, "read_only": True}
    assert rep["ips"] == {"qfieldcloud_default": "172.18.0.5"}
    assert "secret" not in repr(rep)


def test_published_ports_of_stopped_container_from_host_config():
    doc = dict(INSPECT, NetworkSettings={"Ports": {}, "Networks": {}})
    assert stack.published_ports(doc) == ["0.0.0.0:5679->5679/tcp"]
    doc = dict(INSPECT, NetworkSettings={"Ports": {"5679/tcp": None}}, HostConfig={})
    assert stack.published_ports(doc) == []


def test_restarting_is_not_running():
    doc = dict(INSPECT, State={"Status": "restarting", "Running": True, "Restarting": True})
    facts = stack.container_facts(doc)
    assert facts["running"] is False
    assert facts["restarting"] is True


def test_log_signs():
    text = "\n".join(
        [
            "Waiting for postgres...",
            "Postgres isn't ready.",
            'could not translate host name "postgres" to address: Name or service not known',
            '{"message": "Dequeue QFieldCloud Jobs from the DB"}',
            '{"message": "Dequeued job 1, run!"}',
            "docker.errors.DockerException: Error while fetching server API version: "
            "('Connection aborted.', PermissionError(13, 'Permission denied'))",
            'psycopg2.errors.UndefinedTable: relation "core_job" does not exist',
        ]
    )
    signs = logsigns.log_signs(text)
    assert signs["postgres_not_ready"] == 1
    assert signs["host_unresolved"] == 1
    assert signs["dequeue_banner"] is True
    assert signs["dequeued_jobs"] == 1
    assert signs["socket_denied"] == 1
    assert signs["relation_missing"] == 1
    assert signs["lines_scanned"] == 7
    assert logsigns.log_signs("")["dequeue_banner"] is False


def test_images_are_looked_up_by_name_once_and_an_id_prefix_is_not_a_name():
    docs = {
        "qfieldcloud-worker_wrapper": {"Id": "sha256:ab12", "RepoTags": ["qfieldcloud-worker_wrapper:latest"]},
        # The daemon resolves a bare prefix of an id too: that is not an image of that name.
        "ab": {"Id": "sha256:ab12", "RepoTags": ["qfieldcloud-worker_wrapper:latest"]},
        "opengisch/qfieldcloud-qgis:v1": {
            "Id": "sha256:cd34",
            "RepoTags": ["opengisch/qfieldcloud-qgis:v1"],
            "RepoDigests": ["opengisch/qfieldcloud-qgis@sha256:ee"],
        },
    }
    asked = []

    def inspect(name):
        asked.append(name)
        return docs.get(name)

    index = stack.ImageIndex(inspect)
    assert stack.image_fact(index, "qfieldcloud-worker_wrapper")["present"] is True
    assert stack.image_fact(index, "docker.io/library/qfieldcloud-worker_wrapper:latest")["id"] == "sha256:ab12"
    assert asked == ["qfieldcloud-worker_wrapper"], "one lookup per normalised name"
    assert index.get("ab") is None
    assert index.get("docker.io/opengisch/qfieldcloud-qgis:v1")["id"] == "sha256:cd34"
    missing = stack.image_fact(index, "qfieldcloud-qgis3", "QFIELDCLOUD_QGIS3_IMAGE_NAME")
    assert missing == {
        "name": "qfieldcloud-qgis3",
        "present": False,
        "id": None,
        "variable": "QFIELDCLOUD_QGIS3_IMAGE_NAME",
    }
    assert index.get("qfieldcloud-qgis3") is None
    assert asked == ["qfieldcloud-worker_wrapper", "ab", "opengisch/qfieldcloud-qgis:v1", "qfieldcloud-qgis3"]
    assert index.lookups == 4


def test_orphan_jobs():
    jobs = [
        {"name": "a", "job_id": "1", "running": True, "state": "running"},
        {"name": "b", "job_id": "2", "running": True, "state": "running"},
        {"name": "c", "job_id": "3", "running": False, "state": "exited"},
    ]
    orphans = stack.orphan_jobs(jobs, {"1": "started", "2": "finished"}, worker_running=True)
    assert [(o["name"], o["reason"]) for o in orphans] == [("b", "job is finished"), ("c", "container exited")]
    # without the database: a running job container is an orphan only when no worker runs
    assert [o["name"] for o in stack.orphan_jobs(jobs, None, worker_running=True)] == ["c"]
    assert [o["name"] for o in stack.orphan_jobs(jobs, None, worker_running=False)] == ["a", "b", "c"]


def test_service_address():
    containers = {
        "db": [{"name": "q-db-1", "running": True, "ips": {"other": "10.0.0.2", "q_default": "172.18.0.2"}}],
        "app": [{"name": "q-app-1", "running": False, "ips": {}}],
    }
    assert stack.service_address(containers, "db", "q_default") == "172.18.0.2"
    assert stack.service_address(containers, "q-db-1", "nope") == "10.0.0.2"
    assert stack.service_address(containers, "app", "q_default") is None
    assert stack.service_address(containers, "db.example.org", "q_default") is None
    assert stack.is_service_name(containers, "app")
    assert not stack.is_service_name(containers, "db.example.org")


def test_job_containers_on_an_external_job_network_are_ours():
    labels = {"app": "production_worker", "job_id": "j1"}
    job = entry("job1", labels, image="opengisch/qfieldcloud-qgis3:v1", networks=("qfc_jobs",))
    listing = [job]
    assert classify(listing)["jobs"] == []
    groups = stack.classify_containers(
        listing, "qfieldcloud", "qfieldcloud_default", "production", [], job_network="qfc_jobs"
    )
    assert [docker_engine.container_name(e) for e in groups["jobs"]] == ["job1"]


class Events:
    """A client whose events() returns the given events and records its arguments."""

    def __init__(self, events, error=None):
        self.events_given = events
        self.error = error
        self.calls = []

    def events(self, **kwargs):
        self.calls.append(kwargs)
        if self.error:
            raise self.error
        return iter(self.events_given)


def test_recent_deaths_counts_die_events_per_container():
    client = Events([{"Actor": {"ID": "aaaaaaaaaaaa" + "0" * 52}}] * 3 + [{"id": "bbbbbbbbbbbb" + "1" * 52}])
    counts, error = stack.recent_deaths(client, ["aaaaaaaaaaaa", "bbbbbbbbbbbb", "cccccccccccc"], 600)
    assert error is None
    assert counts == {"aaaaaaaaaaaa": 3, "bbbbbbbbbbbb": 1, "cccccccccccc": 0}
    call = client.calls[0]
    assert call["filters"] == {"type": "container", "event": "die"}
    assert 599 <= call["until"] - call["since"] <= 601  # bounded: until is now, so it returns at once


def test_recent_deaths_unknown_when_events_cannot_be_read():
    counts, error = stack.recent_deaths(Events([], error=RuntimeError("not implemented")), ["aaaaaaaaaaaa"], 600)
    assert counts == {} and "not implemented" in error
    assert stack.recent_deaths(Events([]), [], 600) == ({}, None)


def test_replica_facts_keep_mount_and_env_names_not_values():
    doc = {
        "Name": "/w",
        "Config": {"Env": ["POSTGRES_PASSWORD=secret", "ENVIRONMENT=production"], "Labels": {}},
        "HostConfig": {},
        "State": {"Status": "running", "Running": True},
        "Mounts": [
            {"Type": "volume", "Name": "qfc_grids", "Source": "/var/lib/x", "Destination": "/grids", "RW": True}
        ],
    }
    facts = stack.replica_facts(doc)
    assert facts["env_keys"] == ["ENVIRONMENT", "POSTGRES_PASSWORD"]
    assert "secret" not in repr(facts)
    assert facts["mounts"] == [{"type": "volume", "source": "qfc_grids", "target": "/grids", "rw": True}]


def test_log_excerpt_keeps_only_fault_lines_bounded_and_cut():
    excerpt = stack.log_excerpt(CRASH_LOG)
    assert len(excerpt) == stack.LOG_EXCERPT_LINES
    assert all("Dequeue" not in e["line"] and "Waiting" not in e["line"] for e in excerpt)
    assert excerpt[-1]["signs"] == ["socket_denied"]
    assert len(excerpt[-1]["line"]) == stack.LOG_LINE_WIDTH and excerpt[-1]["line"].endswith("…")
    assert {"host_unresolved"} <= {s for e in excerpt for s in e["signs"]}
    assert stack.log_excerpt("") == []


def test_port_bindings_count_ipv4_and_ipv6_once():
    inspect = {
        "NetworkSettings": {
            "Ports": {
                "80/tcp": [{"HostIp": "0.0.0.0", "HostPort": "8080"}, {"HostIp": "::", "HostPort": "8080"}],
                "443/tcp": None,
                "5679/tcp": [{"HostIp": "127.0.0.1", "HostPort": "5679"}],
            }
        }
    }
    assert stack.port_bindings(inspect) == [
        {"port": 80, "proto": "tcp", "host_ip": "0.0.0.0", "host_port": 8080},
        {"port": 5679, "proto": "tcp", "host_ip": "127.0.0.1", "host_port": 5679},
    ]
    assert stack.port_bindings({}) == []
