# Copyright (c) 2025, fibreflow
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The argument specs both modules share, documented once in the doc fragments
(``fibreflow.qfieldcloud.docker`` and ``fibreflow.qfieldcloud.project``)."""

from __future__ import annotations

from typing import Any

from ansible.module_utils.basic import env_fallback

from ansible_collections.fibreflow.qfieldcloud.plugins.module_utils.docker_engine import (
    DEFAULT_API_TIMEOUT,
    DEFAULT_DOCKER_HOST,
)

# The Docker daemon (doc fragment ``docker``).
DOCKER_COMMON_ARGS: dict[str, dict[str, Any]] = {
    "docker_host": {
        "type": "str",
        "default": DEFAULT_DOCKER_HOST,
        "aliases": ["docker_url"],
        "fallback": (env_fallback, ["DOCKER_HOST"]),
    },
    "timeout": {"type": "int", "default": DEFAULT_API_TIMEOUT},
}
# The compose project (doc fragment ``project``).
PROJECT_ARGS: dict[str, dict[str, Any]] = {
    "project_dir": {"type": "path"},
    "project_name": {"type": "str"},
}


def common_args(**own: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """A module's argument spec: the shared options, then its own."""
    return {**PROJECT_ARGS, **DOCKER_COMMON_ARGS, **own}
