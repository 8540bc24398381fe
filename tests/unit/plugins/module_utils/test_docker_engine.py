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


def test_a_multiplexed_log_is_demultiplexed_and_a_raw_one_kept():
    frames = b"\x01\x00\x00\x00\x00\x00\x00\x06hello\n" + b"\x02\x00\x00\x00\x00\x00\x00\x04err\n"
    assert docker_engine.demux(frames) == b"hello\nerr\n"
    assert docker_engine.demux(b"plain tty output\n") == b"plain tty output\n"
    assert docker_engine.demux(b"") == b""


def test_filters_are_lists_of_strings_as_the_engine_wants_them():
    assert docker_engine.convert_filters({"label": "job_id", "status": ["running"], "dangling": True}) == (
        '{"label": ["job_id"], "status": ["running"], "dangling": ["true"]}'
    )


def test_the_client_takes_unix_and_tcp_hosts_only():
    assert docker_engine.client("unix:///run/x.sock")._target == ("unix", "/run/x.sock")
    assert docker_engine.client("tcp://10.0.0.1:2376")._target == ("tcp", ("10.0.0.1", 2376))
    with pytest.raises(docker_engine.DockerException, match="unix:///path or tcp://host:port"):
        docker_engine.client("ssh://host")


def test_an_unreachable_daemon_raises_the_engine_error(tmp_path):
    api = docker_engine.client(f"unix://{tmp_path}/missing.sock", 1)
    with pytest.raises(docker_engine.DockerException, match="cannot reach the Docker daemon") as failed:
        api.version()
    assert failed.value.status is None
