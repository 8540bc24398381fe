# Copyright (c) 2025, fibreflow
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations


class ModuleDocFragment:
    """Options that locate a QFieldCloud compose project, shared by the collection's modules."""

    DOCUMENTATION = r"""
options:
  project_dir:
    description:
      - The QFieldCloud compose project directory on the managed host (the one holding C(.env) and
        C(docker-compose.yml)).
      - Its C(.env) gives C(COMPOSE_PROJECT_NAME), C(COMPOSE_FILE), C(QFIELDCLOUD_WORKER_REPLICAS),
        C(QFIELDCLOUD_DEFAULT_NETWORK) and C(QFIELDCLOUD_WORKER_TIMEOUT_S), read the way C(docker compose) reads them.
    type: path
  project_name:
    description:
      - The compose project name (label C(com.docker.compose.project) of the stack's containers).
      - Default when O(project_dir) is given is C(COMPOSE_PROJECT_NAME) of its C(.env), else the directory's name
        normalised like compose does; without O(project_dir) the default is V(qfieldcloud), upstream's name.
    type: str
"""
