# SPDX-License-Identifier: GPL-3.0-or-later
"""qfc_sync_facts on stacks shaped like real upstream servers: healthy variants and faults upstream really has.

A healthy variant must give ``sync_ready: true`` and no error or critical problem; a job must still finish on it.
The faults must be named with their own code, and must block exactly what they block (sync or the devices).
Each test has its own stack: the variants are applied one after the other to one private stack (each leaves it
healthy), the breaking faults get theirs.
"""

from __future__ import annotations

import subprocess
import time

import pytest
from ansible_run import facts_of, run_playbook, stack_args
from standin import Stack

pytestmark = pytest.mark.integration

MODULE = "fibreflow.qfieldcloud.qfc_sync_facts"
HEALTHY_VARIANTS = (
    "app-recreated",
    "worker-restarted-often",
    "prebuilt-images",
    "qgis-network-external",
    "minimal-env",
)


def serious(result: dict) -> list[tuple[str, str]]:
    return [(p["code"], p["severity"]) for p in result["problems"] if p["severity"] in ("critical", "error")]


def by_code(result: dict) -> dict[str, dict]:
    return {p["code"]: p for p in result["problems"]}


def test_healthy_variants_of_real_servers_raise_no_alarm(stack_factory):
    stack = stack_factory()
    for fault in HEALTHY_VARIANTS:
        stack.break_(fault)
        result = facts_of(stack)
        assert serious(result) == [], (fault, result["problems"])
        assert result["sync_ready"] is True, fault
        job = stack.create_job("package")
        assert stack.wait_job(job, 120) == "finished", fault
        qfc = result["ansible_facts"]["qfc_sync"]
        if fault == "worker-restarted-often":
            rep = qfc["worker"]["replicas"][0]
            assert rep["restart_count"] >= 5  # a lifetime count that says nothing about now
            assert rep["healthy_now"] is True
        if fault == "prebuilt-images":
            assert qfc["images"]["worker"]["name"].startswith("opengisch/qfieldcloud-worker-wrapper")
            assert qfc["images"]["worker"]["present"] is True
        if fault == "qgis-network-external":
            assert qfc["project"]["job_network_source"] == "QFIELDCLOUD_DEFAULT_NETWORK"
            assert qfc["job_network"]["exists"] is True
            # the worker stays on the network where its database is
            assert qfc["worker"]["replicas"][0]["networks"] == [f"{stack.name}_default"]
    # After all of them, the crons still run (ofelia addresses the recreated app by name): a run starts after the
    # last variant (ofelia's schedule is every minute, and a variant that recreates ofelia starts its minute again;
    # a run while the app was being recreated fails and leaves no row), and qfc_sync_facts reports it.
    since = stack.sql("SELECT now()")[0][0]
    deadline = time.monotonic() + 150
    while not stack.sql(f"SELECT 1 FROM django_cron_cronjoblog WHERE start_time >= '{since}' LIMIT 1"):
        assert time.monotonic() < deadline, "no cron run in the 150 s after the last variant"
        time.sleep(5)
    cron = facts_of(stack)["ansible_facts"]["qfc_sync"]["cron"]
    assert cron["last_run_age_s"] is not None and cron["last_run_age_s"] < 150, cron


def test_dead_cron_is_reported_but_does_not_block_sync(stack_factory):
    stack = stack_factory()
    stack.break_("cron-dead")
    result = facts_of(stack)
    problem = by_code(result)["cron_not_running"]
    assert (problem["severity"], problem["blocks"]) == ("error", "none")
    assert problem["evidence"]["last_run_age_s"] >= 590
    assert result["sync_ready"] is True
    # then the empty timeout of an .env kept from before v26.24: app and worker crash at start
    stack.break_("timeout-env-empty")
    result = facts_of(stack)
    problem = by_code(result)["worker_timeout_empty"]
    assert problem["blocks"] == "sync" and ".env" in problem["evidence"]["empty_in"]
    assert result["sync_ready"] is False


def test_two_instances_with_one_environment_are_named_on_both(stack_factory):
    stack = stack_factory()
    twin = Stack(f"{stack.name}-twin")
    try:
        stack.break_("shared-environment-label")
        for one, other in ((stack, twin), (twin, stack)):
            result = facts_of(one)
            problem = by_code(result)["shared_environment_label"]
            assert problem["evidence"]["other_projects"] == [other.name]
            assert problem["evidence"]["job_label"] == f"app={stack.env['ENVIRONMENT']}_worker"
            assert result["sync_ready"] is False
    finally:
        twin.down()


def test_the_guides_hand_started_worker_is_judged_by_what_it_lacks(stack_factory):
    stack = stack_factory()
    stack.break_("guide-hand-started")
    result = facts_of(stack)
    problem = by_code(result)["worker_hand_started"]
    assert (problem["severity"], problem["blocks"]) == ("critical", "sync")
    [lacks] = problem["evidence"]["lacks"].values()
    assert any("/tmp" in gap for gap in lacks), lacks
    assert result["sync_ready"] is False

    # site.yml retires it by default (drained first), and sync works again through the compose worker.
    res = run_playbook("playbooks/site.yml", *stack_args(stack))
    assert res.returncode == 0, (res.stdout + res.stderr)[-3000:]
    left = subprocess.run(
        ["docker", "ps", "-aq", "--filter", f"name=qfieldcloud-worker-{stack.name}"],
        text=True,
        capture_output=True,
        check=True,
    ).stdout.split()
    assert left == []
    after = facts_of(stack)
    assert "worker_hand_started" not in by_code(after) and after["sync_ready"] is True
    assert stack.wait_job(stack.create_job("package"), 120) == "finished"
