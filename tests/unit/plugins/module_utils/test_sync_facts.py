# SPDX-License-Identifier: GPL-3.0-or-later
"""Unit tests of the helpers of the facts gatherer."""

from __future__ import annotations

import pytest

from ansible_collections.fibreflow.qfieldcloud.plugins.module_utils import docker_engine, sync_facts


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("http://127.0.0.1:8080", "http://127.0.0.1:8080/api/v1/status/"),
        ("https://qfc.example.com/", "https://qfc.example.com/api/v1/status/"),
        ("http://app:8000/api/v1/", "http://app:8000/api/v1/status/"),
        ("http://app:8000/api/v1/status", "http://app:8000/api/v1/status/"),
        ("http://app:8000/api/v1/status/", "http://app:8000/api/v1/status/"),
    ],
)
def test_status_url(url, expected):
    assert sync_facts.status_url(url) == expected


def test_status_ok():
    assert sync_facts.status_ok(200, {"database": "ok", "storage": "ok"})
    assert sync_facts.status_ok(200, {"geodb": "ok", "storage": "ok", "version": "x"})
    assert not sync_facts.status_ok(200, {"database": "error", "storage": "ok"})
    assert not sync_facts.status_ok(500, {"database": "ok"})
    assert not sync_facts.status_ok(200, None)
    assert not sync_facts.status_ok(200, {"unrelated": 1})


def test_parse_docker_time():
    base = docker_engine.docker_time("2025-01-01T00:00:00Z")
    assert docker_engine.docker_time("2025-01-01T00:00:01.5Z") == base + 1.5
    assert docker_engine.docker_time("2025-01-01T00:00:00.123456789Z") == pytest.approx(base + 0.123456789)
    assert docker_engine.docker_time("2025-01-01T02:00:00+02:00") == base
    assert docker_engine.docker_time("0001-01-01T00:00:00Z") is None
    assert docker_engine.docker_time("") is None
    assert docker_engine.docker_time("garbage") is None


def test_default_host_header():
    assert sync_facts._default_host_header({"DJANGO_ALLOWED_HOSTS": "localhost 127.0.0.1 app nginx"}) == "app"
    assert sync_facts._default_host_header({"DJANGO_ALLOWED_HOSTS": ".example.com"}) == "example.com"
    assert sync_facts._default_host_header({"QFIELDCLOUD_HOST": "qfc.example.com"}) == "qfc.example.com"
    assert sync_facts._default_host_header({}) is None


def test_gather_with_unreachable_daemon_is_a_finding(tmp_path):
    result = sync_facts.gather({"docker_host": f"unix://{tmp_path}/nothing.sock", "timeout": 2, "skip": ["db"]})
    assert result["sync_ready"] is False
    assert [p["code"] for p in result["problems"]] == ["docker_unreachable"]
    assert result["facts"]["daemon"]["reachable"] is False


def test_database_service_is_the_one_postgres_host_resolves_to():
    names = {
        "app": {"p_default": ["app", "p-app-1"]},
        "postgres": {"p_default": ["p-postgres-1", "postgres", "db-alias"]},
    }
    assert sync_facts.database_service(names, "db-alias") == "postgres"
    assert sync_facts.database_service(names, "db.example.org") is None
    assert sync_facts.database_service(names, None) is None


def test_a_hand_started_worker_breaks_jobs_without_the_tmp_hand_off():
    assert sync_facts.breaks_jobs(["bind:/tmp", "env:EMAIL_HOST_PASSWORD"])
    assert sync_facts.breaks_jobs(["volume:/transformation_grids"])
    assert not sync_facts.breaks_jobs(["env:EMAIL_HOST_PASSWORD"])
    assert not sync_facts.breaks_jobs([])


def test_healthy_now_needs_a_dequeue_loop_without_fault_signs():
    base = {"running": True, "log": {"dequeuing": True, "host_unresolved": 0}}
    assert sync_facts.healthy_now(base)
    assert not sync_facts.healthy_now(dict(base, running=False))
    assert not sync_facts.healthy_now(dict(base, log={"dequeuing": True, "relation_missing": 3}))
    assert not sync_facts.healthy_now(dict(base, log={"dequeuing": False}))
    # no log read: running and not dying in the window
    assert sync_facts.healthy_now({"running": True, "log": {"error": "no log driver"}, "recent_deaths": 0})
    assert not sync_facts.healthy_now({"running": True, "log": {"error": "no log driver"}, "recent_deaths": 5})


NGINX = {"running": 1, "ports": [{"port": 80, "proto": "tcp", "host_ip": "0.0.0.0", "host_port": 80}]}


@pytest.mark.parametrize(
    ("nginx", "app", "url", "connect", "host_header"),
    [
        (NGINX, None, "http://qfc.example.org", ("127.0.0.1", 80), "qfc.example.org"),
        (
            {"running": 1, "ports": [{"port": 80, "host_port": 8080}, {"port": 443, "host_port": 443}]},
            None,
            "https://qfc.example.org",
            ("127.0.0.1", 443),
            "qfc.example.org",
        ),
        (
            {"running": 1, "ports": [{"port": 80, "host_ip": "10.0.0.5", "host_port": 8080}]},
            None,
            "http://qfc.example.org:8080",
            ("10.0.0.5", 8080),
            "qfc.example.org:8080",
        ),
        # no nginx: the app's published port, as the guide's http://<host-ip>:8011
        (
            None,
            {"running": 1, "ports": [{"port": 8000, "host_port": 8011}]},
            "http://qfc.example.org:8011",
            ("127.0.0.1", 8011),
            "qfc.example.org:8011",
        ),
        # a stopped nginx does not count
        (
            {**NGINX, "running": 0},
            {"running": 1, "ports": [{"port": 8000, "host_port": 8011}]},
            "http://qfc.example.org:8011",
            ("127.0.0.1", 8011),
            "qfc.example.org:8011",
        ),
        (None, None, None, None, None),
    ],
)
def test_client_address(nginx, app, url, connect, host_header):
    address = sync_facts.client_address("qfc.example.org", nginx, app)
    assert address["url"] == url
    if connect:
        assert (address["connect_host"], address["connect_port"]) == connect
        assert address["host_header"] == host_header


def test_client_address_on_a_remote_docker_host_connects_there():
    address = sync_facts.client_address("qfc.example.org", NGINX, None, "tcp://10.1.2.3:2376")
    assert address["connect_host"] == "10.1.2.3"


@pytest.mark.parametrize("host", ["localhost", "127.0.0.1", "127.0.1.1", "0.0.0.0", "::1", "qfc.localhost"])
def test_local_hosts(host):
    assert sync_facts.is_local_host(host)


def test_public_hosts_are_not_local():
    assert not sync_facts.is_local_host("qfc.example.org")
    assert not sync_facts.is_local_host("192.168.1.10")


def test_boot_files_are_read_as_find_and_the_sha1_filter_see_them(tmp_path):
    import hashlib
    from types import SimpleNamespace

    script = tmp_path / "qfieldcloud-start-demo"
    script.write_text("#!/bin/sh\nexit 0\n")
    script.chmod(0o750)
    missing = tmp_path / "qfieldcloud-demo.service"
    ctx = SimpleNamespace(opts={"boot_script_dir": str(tmp_path), "boot_unit_dir": f"{tmp_path}/"}, project="demo")
    facts: dict = {}
    sync_facts._boot_facts(ctx, facts)
    (tmp_path / "qfieldcloud-start-dir").mkdir()
    dir_state = sync_facts.file_state(str(tmp_path / "qfieldcloud-start-dir"))
    assert facts["boot"]["files"] == [
        {
            "path": str(script),
            "exists": True,
            "mode": "0750",
            "checksum": hashlib.sha1(b"#!/bin/sh\nexit 0\n").hexdigest(),
        },
        {"path": str(missing), "exists": False, "mode": None, "checksum": None},
    ]
    # A directory where a file belongs is not the file.
    assert dir_state["exists"] is False and dir_state["checksum"] is None
    assert isinstance(facts["boot"]["systemd"], bool)
    # Without the option: the paths the startup role installs by default.
    assert sync_facts.boot_paths("demo") == [
        "/usr/local/sbin/qfieldcloud-start-demo",
        "/etc/systemd/system/qfieldcloud-demo.service",
    ]


def test_default_boot_paths_are_the_startup_roles_defaults():
    from pathlib import Path

    import yaml

    defaults = yaml.safe_load((Path(__file__).resolve().parents[4] / "roles/startup/defaults/main.yml").read_text())
    assert defaults["qfieldcloud_startup_boot_script_dir"] == sync_facts.BOOT_SCRIPT_DIR
    assert defaults["qfieldcloud_startup_boot_unit_dir"] == sync_facts.BOOT_UNIT_DIR
