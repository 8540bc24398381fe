# Copyright (c) 2025, fibreflow
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The Docker engine's home: the host default, timestamps, current-process logs, aliases (plain data)."""

from __future__ import annotations

import pytest

from ansible_collections.fibreflow.qfieldcloud.plugins.module_utils import database, docker_engine


def test_docker_host_is_the_option_then_docker_host_then_the_local_socket(monkeypatch):
    monkeypatch.delenv("DOCKER_HOST", raising=False)
    assert docker_engine.docker_host(None) == "unix:///var/run/docker.sock"
    monkeypatch.setenv("DOCKER_HOST", "tcp://10.0.0.1:2375")
    assert docker_engine.docker_host(None) == "tcp://10.0.0.1:2375"
    assert docker_engine.docker_host("unix:///run/other.sock") == "unix:///run/other.sock"


def test_the_current_process_log_starts_at_its_start():
    log = (
        "2026-11-29T08:00:00.000000001Z Dequeued job 00000000-0000-0000-0000-000000000001, run!\n"
        "continued line\n"
        "2026-11-29T09:00:00.5Z Dequeue QFieldCloud Jobs from the DB\n"
    )
    whole, current = docker_engine.split_current_run(log, "2026-11-29T09:00:00.4Z")
    assert whole.splitlines() == [
        "Dequeued job 00000000-0000-0000-0000-000000000001, run!",
        "continued line",
        "Dequeue QFieldCloud Jobs from the DB",
    ]
    assert current == "Dequeue QFieldCloud Jobs from the DB"
    assert docker_engine.split_current_run("no stamps\n", "2026-11-29T09:00:00Z")[1] == "no stamps"


def test_network_aliases_come_from_the_network_and_each_endpoint():
    network = {
        "Name": "qfc_default",
        "Containers": {"c1": {"Name": "qfc-db-1", "IPv4Address": "172.18.0.2/16"}},
    }
    inspects = {"c1": {"NetworkSettings": {"Networks": {"qfc_default": {"Aliases": ["db", "qfc-db-1"]}}}}}
    assert docker_engine.network_aliases_of(network, inspects) == {"qfc-db-1": "172.18.0.2", "db": "172.18.0.2"}


def test_environment_lists_and_names():
    assert docker_engine.env_dict(["A=1", "B=x=y", "broken"]) == {"A": "1", "B": "x=y"}
    assert docker_engine.env_dict({"A": None}) == {"A": ""}
    assert docker_engine.container_name({"Names": ["/qfc-app-1"]}) == "qfc-app-1"
    assert docker_engine.container_name({"Name": "/x"}) == "x"


def test_connection_params_bound_every_statement_by_the_connect_timeout():
    params = database.connection_params({"host": "10.0.0.2", "dbname": "q", "user": "u", "password": "p"}, 3)
    assert params["port"] == 5432 and params["sslmode"] == "prefer" and params["connect_timeout"] == 3
    assert params["options"] == "-c statement_timeout=3000"
    assert database.job_statuses(None, []) == {}
    assert database.job_statuses({}, ["x"]) is None


def test_the_client_is_the_sdks_low_level_client_made_on_first_use():
    api = docker_engine.client("tcp://10.0.0.1:2376")
    assert api._api is None  # nothing is sent, nothing is made, until the first call
    assert api.api.base_url == "http://10.0.0.1:2376"
    assert api.api._version == docker_engine.MIN_API_VERSION


def test_sdk_errors_become_the_engine_errors(monkeypatch):
    from docker import errors

    api = docker_engine.client(None)

    class Fake:
        def inspect_container(self, name):
            raise errors.NotFound(f"No such container: {name}", response=None)

        def kill(self, name, signal=None):
            response = type("Response", (), {"status_code": 409, "reason": "Conflict", "url": "/kill"})()
            raise errors.APIError("is not running", response=response)

    monkeypatch.setattr(api, "_api", Fake())
    with pytest.raises(docker_engine.NotFound) as missing:
        api.inspect_container("x")
    assert missing.value.status == 404
    with pytest.raises(docker_engine.DockerException) as conflict:
        api.kill("x")
    assert conflict.value.status == 409 and not isinstance(conflict.value, docker_engine.NotFound)


def test_an_unreachable_daemon_raises_the_engine_error(tmp_path):
    api = docker_engine.client(f"unix://{tmp_path}/missing.sock", 1)
    with pytest.raises(docker_engine.DockerException, match="cannot reach the Docker daemon") as failed:
        api.version()
    assert failed.value.status is None
