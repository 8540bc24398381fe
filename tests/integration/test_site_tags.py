# SPDX-License-Identifier: GPL-3.0-or-later
"""The roles' tags reach their tasks through site.yml; the prerequisites role costs nothing on a healthy host."""

from __future__ import annotations

import pytest
from ansible_run import JSON_CALLBACK, play, ran, task_results

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("tag", ["qfieldcloud_worker_enforce", "qfieldcloud_worker"])
def test_the_worker_roles_tags_reach_its_tasks_through_site(standin, tag):
    res = play(
        "playbooks/site.yml",
        standin,
        "--tags",
        tag,
        check=True,
        env=JSON_CALLBACK,
        # the module runs even when its record of the last run is current (a converged stand-in leaves it out)
        extra={"qfieldcloud_worker_enforce_always": True},
    )
    assert res.returncode == 0, res.output[-3000:]
    results = task_results(res.stdout)
    assert ran(results, "fibreflow.qfieldcloud.qfc_worker"), [name for name, _r in results]
    # nothing of the startup role's own steps or of verify ran: only the worker's
    assert not ran(results, "ansible.builtin.uri")
    assert not ran(results, "community.docker.docker_compose_v2")


def test_prerequisites_in_site_skip_their_checks_when_the_first_read_worked(standin):
    res = play(
        "playbooks/site.yml",
        standin,
        "--skip-tags",
        "verify",
        env=JSON_CALLBACK,
        check=True,
    )
    assert res.returncode == 0, res.output[-3000:]
    results = task_results(res.stdout)
    names = [name for name, r in results if not r.get("skipped")]
    assert any(name.endswith("Tell whether this play's read proves the host ready") for name in names), names
    assert not ran(results, "ansible.builtin.setup")
    assert not ran(results, "ansible.builtin.package")
