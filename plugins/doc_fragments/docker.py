# Copyright (c) 2025, fibreflow
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations


class ModuleDocFragment:
    """Connection options to the Docker daemon, shared by the collection's modules."""

    DOCUMENTATION = r"""
options:
  docker_host:
    description:
      - URL or Unix socket path of the Docker daemon API on the managed host.
      - If not given, the value of the E(DOCKER_HOST) environment variable is used, else the local socket.
    type: str
    default: unix:///var/run/docker.sock
    aliases: [docker_url]
  timeout:
    description:
      - Seconds to wait for an answer of the Docker API before giving up.
      - Also bounds the database connection and the HTTP status request where a module makes them.
    type: int
    default: 10
requirements:
  - docker (the Python SDK for the Docker Engine API) >= 5.0 on the managed host
"""
