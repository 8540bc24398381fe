# Copyright (c) 2025, fibreflow
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The worker's log signs, in one place: what its entrypoint and ``dequeue`` loop write, and what it means.

Upstream's worker entrypoint writes ``Waiting for postgres...``, then ``Postgres is ready!`` (or ``Postgres isn't
ready.`` every 2 s); the ``dequeue`` command writes ``Dequeue QFieldCloud Jobs from the DB`` once and ``Dequeued job
<id>, run!`` per job it claims. The functions take log text (with or without Docker's timestamps) and return plain
data; no Docker here.
"""

from __future__ import annotations

import re
from typing import Any, Iterable

from ansible_collections.fibreflow.qfieldcloud.plugins.module_utils.docker_engine import docker_time

DEQUEUED_RE = re.compile(r"Dequeued job ([0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12})")
DEQUEUE_BANNER = "Dequeue QFieldCloud Jobs"
POSTGRES_NOT_READY = "Postgres isn't ready"
POSTGRES_READY = "Postgres is ready"
# A worker process starts here: the entrypoint's first line, then the dequeue banner.
PROCESS_START_SIGNS = ("Waiting for postgres", DEQUEUE_BANNER)

LOG_PATTERNS = {
    "postgres_not_ready": re.compile(re.escape(POSTGRES_NOT_READY)),
    "postgres_ready": re.compile(re.escape(POSTGRES_READY)),
    "host_unresolved": re.compile(r"could not translate host name"),
    "socket_denied": re.compile(
        r"PermissionError\(13|Permission denied.*(docker|\.sock)|(docker|\.sock).*Permission denied", re.I
    ),
    "relation_missing": re.compile(r"relation \"[^\"]+\" does not exist"),
    "network_not_found": re.compile(r"network [^ ]+ not found"),
    "pull_denied": re.compile(r"pull access denied"),
    "dequeued_jobs": re.compile(r"Dequeued job"),
    "dequeue_banner": re.compile(r"Dequeue QFieldCloud Jobs from the DB"),
    # Upstream's worker on a replica: "Expected `worker_wrapper` to be connected to the master DB node!".
    "replica_refused": re.compile(r"connected to the master DB node|read-only replica|pg_is_in_recovery", re.I),
    # v26.24+ with an empty QFIELDCLOUD_WORKER_TIMEOUT_S: the int() parse at start fails.
    "timeout_invalid": re.compile(r"invalid literal for int\(\) with base 10: ''"),
}
# Signs that explain a fault (the others are signs of health).
FAULT_SIGNS = tuple(k for k in LOG_PATTERNS if k not in ("postgres_ready", "dequeued_jobs", "dequeue_banner"))
# The fault signs that end or stall the worker's own loop; the others (a job's network or image) fail one job.
LOOP_FAULT_SIGNS = ("host_unresolved", "socket_denied", "relation_missing", "replica_refused", "timeout_invalid")
# Signs of a database the worker could not reach: history once the same process has said it is ready.
DB_WAIT_SIGNS = ("postgres_not_ready", "host_unresolved")


def last_dequeued_job(log_text: str) -> str | None:
    """The id of the last job a worker log says it dequeued, or ``None``."""
    found = DEQUEUED_RE.findall(log_text or "")
    return found[-1].lower() if found else None


def never_reached_database(log_text: str) -> bool:
    """Whether a worker process is still in the entrypoint's wait for an unreachable database.

    True when its log says ``Postgres isn't ready`` but neither ``Postgres is ready`` nor the dequeue banner: the
    dequeue loop has not started, so the process holds no job.
    """
    text = log_text or ""
    return POSTGRES_NOT_READY in text and POSTGRES_READY not in text and DEQUEUE_BANNER not in text


def fault_signs(line: str) -> list[str]:
    """The fault signs one log line shows."""
    return [key for key in FAULT_SIGNS if LOG_PATTERNS[key].search(line)]


def log_signs(text: str) -> dict[str, Any]:
    """Count the known signs in the log of a worker's current process (see :data:`LOG_PATTERNS`).

    The database-wait signs count only after the last ``Postgres is ready`` line: the entrypoint's retries
    before the database answered are history once it has. ``last_job`` is the job of the last
    ``Dequeued job`` line.
    """
    lines = text.splitlines()
    counts: dict[str, Any] = {key: 0 for key in LOG_PATTERNS}
    for line in lines:
        for key, pattern in LOG_PATTERNS.items():
            if pattern.search(line):
                if key == "postgres_ready":
                    for sign in DB_WAIT_SIGNS:
                        counts[sign] = 0
                counts[key] += 1
    counts["last_job"] = last_dequeued_job(text)
    counts["dequeue_banner"] = counts["dequeue_banner"] > 0
    # Past the banner: it is in the log read, or a job was dequeued since (the banner may be further back).
    counts["dequeuing"] = counts["dequeue_banner"] or counts["dequeued_jobs"] > 0
    counts["lines_scanned"] = len(lines)
    return counts


def process_claims(log_text: str, started_at: str | None, running: bool, tail_limit: int) -> dict[str, Any]:
    """What a worker container's log (read with ``timestamps=True``, at most ``tail_limit`` lines) says it holds.

    :returns: ``last_job`` (the last job its current process dequeued, ``None`` when not running or none),
        ``last_job_known`` (the read shows that claim, the dequeue banner or the process's beginning, so
        ``last_job`` is the truth), ``ended_jobs`` (the last job of every ended process the read shows: the
        earlier processes of a running container, every process of one that does not run).
    """
    start = docker_time(started_at) if running else None
    lines = (log_text or "").splitlines()
    ended: list[str] = []
    segment_last: str | None = None
    current_last: str | None = None
    current_banner = False
    saw_earlier = False
    in_current = running and start is None
    for line in lines:
        stamp, _sep, rest = line.partition(" ")
        when = docker_time(stamp) if stamp[:1].isdigit() else None
        if when is None:
            rest = line
        elif running and start is not None:
            in_current = when >= start - 1e-6
        if in_current:
            current_last = last_dequeued_job(rest) or current_last
            current_banner = current_banner or DEQUEUE_BANNER in rest
            continue
        saw_earlier = True
        if any(sign in rest for sign in PROCESS_START_SIGNS) and segment_last:
            ended.append(segment_last)
            segment_last = None
        segment_last = last_dequeued_job(rest) or segment_last
    if segment_last:
        ended.append(segment_last)
    if not running:
        return {"last_job": None, "last_job_known": True, "ended_jobs": unique_ids(ended)}
    known = bool(current_last or current_banner or saw_earlier or len(lines) < tail_limit)
    return {"last_job": current_last, "last_job_known": known, "ended_jobs": unique_ids(ended)}


def unique_ids(ids: Iterable[str]) -> list[str]:
    """Job ids in first-seen order, lower case, without duplicates or empties."""
    return list(dict.fromkeys(str(i).lower() for i in ids if i))
