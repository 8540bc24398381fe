# Copyright (c) 2025, fibreflow
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The record of the worker's last enforcement: what ``qfc_worker`` left behind, so that a read can tell that
nothing has changed since.

``qfc_worker`` writes it after a compose-mode run that ended with the worker as required (not in check mode):
the options it ran with, the project directory, the files it read (compose files, ``.env``, its override) and a
key over those files' contents and the project's containers as the engine lists them (id, state, the compose
configuration hash, networks, image id). ``qfc_sync_facts`` reads it and computes the key again from its own
container listing: equal keys mean no file was edited, no container of the project was created, removed,
recreated, stopped, started or moved to another network since. The worker role then leaves ``qfc_worker``
out of a converged play (when the read also found no problem).

The record holds no secret: file contents and container ids go into the key only as SHA-256 digests, the
options kept are those that shape the plan (no password, no timeout). It lives beside the project's lock
(:func:`compose.lock_path`), outside the project directory.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from typing import Any

from ansible_collections.fibreflow.qfieldcloud.plugins.module_utils import files as files_mod
from ansible_collections.fibreflow.qfieldcloud.plugins.module_utils.compose import lock_path
from ansible_collections.fibreflow.qfieldcloud.plugins.module_utils.docker_engine import (
    LABEL_CONFIG_HASH,
    LABEL_PROJECT,
)

VERSION = 1
# The qfc_worker options that shape what it plans (the timeouts, backup and the connection do not).
PLAN_OPTIONS = (
    "service",
    "mode",
    "state",
    "replicas",
    "db_host",
    "network",
    "override_file",
    "command",
    "image",
    "container_name",
    "remove_hand_started",
    "orphaned_jobs",
    "project_name",
)


def record_path(project: str, project_dir: str | None) -> str:
    """Where the record of ``project`` lives: beside its lock file."""
    return lock_path(project, project_dir)[: -len(".lock")] + ".enforced.json"


def container_rows(listing: list[dict[str, Any]], project: str) -> list[list[Any]]:
    """The project's containers from an engine listing (``GET /containers/json?all=1`` entries), as sorted
    ``[id, state, config hash, networks, image id]`` rows."""
    rows = []
    for entry in listing:
        labels = entry.get("Labels") or {}
        if labels.get(LABEL_PROJECT) != project:
            continue
        networks = sorted(((entry.get("NetworkSettings") or {}).get("Networks") or {}).keys())
        rows.append(
            [entry.get("Id"), entry.get("State"), labels.get(LABEL_CONFIG_HASH), networks, entry.get("ImageID")]
        )
    return sorted(rows, key=lambda row: str(row[0]))


def key(paths: list[str], rows: list[list[Any]]) -> str:
    """The SHA-256 over the files' contents (a missing file counts as missing) and the container rows."""
    return files_mod.contents_digest(paths, json.dumps(rows))


def watched_files(project: dict[str, Any], override_path: str) -> list[str]:
    """The files whose edit can change the worker: the compose files, ``.env`` and the owned override."""
    paths = list(project.get("compose_files") or [])
    if project.get("project_dir"):
        paths.append(os.path.join(project["project_dir"], ".env"))
    paths.append(override_path)
    return sorted(set(paths))


def plan_options(params: dict[str, Any]) -> dict[str, Any]:
    """The options of a ``qfc_worker`` run that shape its plan."""
    return {name: params.get(name) for name in PLAN_OPTIONS}


def write(project: dict[str, Any], params: dict[str, Any], paths: list[str], listing: list[dict[str, Any]]) -> None:
    """Record an enforcement that ended with the worker as required (best effort: a host where the file cannot
    be written only loses the shortcut)."""
    name = project["project_name"]
    record = {
        "version": VERSION,
        "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "project_dir": project.get("project_dir"),
        "options": plan_options(params),
        "files": paths,
        "key": key(paths, container_rows(listing, name)),
    }
    with contextlib.suppress(OSError):
        files_mod.atomic_write(record_path(name, project.get("project_dir")), json.dumps(record), mode=0o600)


def forget(project: dict[str, Any]) -> None:
    """Remove the record (a run that failed, or left the worker differing, proves nothing)."""
    with contextlib.suppress(OSError):
        os.unlink(record_path(project["project_name"], project.get("project_dir")))


def check(project: str, project_dir: str | None, rows: list[list[Any]]) -> dict[str, Any] | None:
    """What a read says about the record, given the project's :func:`container_rows` now: ``None`` without one (or
    an unreadable one), else ``{"at", "options", "current"}``; ``current`` is true when the record is of this
    project directory and nothing changed since."""
    try:
        with open(record_path(project, project_dir), encoding="utf-8") as handle:
            record = json.load(handle)
    except (OSError, ValueError):
        return None
    if not isinstance(record, dict) or record.get("version") != VERSION:
        return None
    paths = [str(path) for path in record.get("files") or []]
    same_dir = bool(project_dir) and os.path.realpath(str(record.get("project_dir"))) == os.path.realpath(project_dir)
    current = same_dir and record.get("key") == key(paths, rows)
    return {"at": record.get("at"), "options": record.get("options") or {}, "current": current}
