# SPDX-License-Identifier: GPL-3.0-or-later
"""Unit tests of the helpers of the facts gatherer."""

from __future__ import annotations

import pytest

from ansible_collections.fibreflow.qfieldcloud.plugins.module_utils import sync_facts


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
    base = sync_facts.parse_docker_time("2025-01-01T00:00:00Z")
    assert sync_facts.parse_docker_time("2025-01-01T00:00:01.5Z") == base + 1.5
    assert sync_facts.parse_docker_time("2025-01-01T00:00:00.123456789Z") == pytest.approx(base + 0.123456789)
    assert sync_facts.parse_docker_time("2025-01-01T02:00:00+02:00") == base
    assert sync_facts.parse_docker_time("0001-01-01T00:00:00Z") is None
    assert sync_facts.parse_docker_time("") is None
    assert sync_facts.parse_docker_time("garbage") is None


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
