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
      - URL of the Docker daemon API on the managed host, V(unix:///path/to/socket) or V(tcp://host:port) (plain
        HTTP; no TLS).
      - If not given, the value of the E(DOCKER_HOST) environment variable is used, else the local socket.
    type: str
    default: unix:///var/run/docker.sock
    aliases: [docker_url]
  timeout:
    description:
      - Seconds to wait for one answer of the Docker API before giving up. A call that stops a container waits
        additionally for the container's grace period.
      - Also bounds the database connection and the HTTP status request where a module makes them.
      - It does not bound C(docker compose) calls; M(fibreflow.qfieldcloud.qfc_worker) has C(compose_timeout)
        for those.
    type: int
    default: 10
requirements:
  - read and write access to the Docker daemon's API (its socket) on the managed host, through the Docker SDK for
    Python 5.0 or newer there
"""
