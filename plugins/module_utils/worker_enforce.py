# Copyright (c) 2025, fibreflow
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Former names of ``qfc_worker``'s logic, kept only for ``tests/integration/test_orphans_upstream.py``.

The logic lives in ``worker_plan.py`` (the plan), ``worker_apply.py`` (the run), ``docker_engine.py`` (the engine),
``drain.py`` and ``orphans.py``. Remove this file once that test uses ``docker_engine.Engine``,
``docker_engine.client`` and ``orphans.worker_claims``.
"""

from __future__ import annotations

from typing import Any

from ansible_collections.fibreflow.qfieldcloud.plugins.module_utils import docker_engine, orphans

Engine = docker_engine.Engine


def docker_client(docker_host: str | None, timeout: float) -> Any:
    """``docker_engine.client``."""
    return docker_engine.client(docker_host, timeout)


class WorkerRun:
    """Only what the test calls: :func:`orphans.worker_claims`."""

    def __init__(self, params: dict[str, Any]) -> None:
        self.params = params

    def _worker_claims(self, engine: Any, project: str) -> dict[str, Any] | None:
        return orphans.worker_claims(engine, project)
