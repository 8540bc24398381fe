# Copyright (c) 2025, fibreflow
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Jobs left ``queued`` or ``started`` by a worker process that no longer exists.

A worker claims a job by setting it ``queued``, then ``started``, and ends it ``finished`` or ``failed``.
When its process dies in between (the Docker daemon restarted, the host rebooted, the container was killed),
the job stays where it was: a ``queued`` job blocks every later job of its project for ever (upstream's cron
only fails ``started`` jobs, after the job timeout), a ``started`` one blocks it until that cron runs.

The rule, shared by ``qfc_sync_facts`` (problem ``jobs_orphaned``) and ``qfc_worker`` (which recovers them):

* A job is held when the current process of a running worker replica names it in its last
  ``Dequeued job <id>`` line, or when a running QGIS job container carries its ``job_id`` label.
* A job that is ``queued``/``started``, not held, and was last touched (``updated_at``/``started_at``)
  more than ``MARGIN_S`` seconds before the *earliest* start of the running workers' current processes
  is orphaned: every process that could have claimed it has gone. (A process claims a job at the earliest
  after its entrypoint has reached the database, well after its start; the margin covers a database whose
  clock is a little off the Docker host's.) With no running worker nothing is
  decided (nobody is there to pick the job up again, and nothing proves its claimant dead).
* Recovery: a ``queued`` job never ran, so it goes back to ``pending``. A ``started`` job of a type whose
  work is repeatable (``package``, ``process_projectfile``) goes back to ``pending`` too; any other
  ``started`` job (``delta_apply`` may have written part of its deltas) is set ``failed`` now, the state
  upstream's cron gives it after the job timeout, with the reason in its ``output``.
"""

from __future__ import annotations

import re
from datetime import datetime, timezone
from typing import Any, Iterable

from ansible_collections.fibreflow.qfieldcloud.plugins.module_utils import drain as drain_mod

CODE = "jobs_orphaned"
IN_FLIGHT = drain_mod.IN_FLIGHT
REQUEUE_STARTED_TYPES = ("package", "process_projectfile")
MARGIN_S = 1.0
LIMIT = 50
FAIL_NOTE = (
    "[fibreflow.qfieldcloud] The worker process that ran this job is gone (the Docker daemon or the worker"
    " restarted); the job was set failed so that the project's later jobs can run. Run it again."
)

_TS = re.compile(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d+))?(Z|[+-]\d\d:\d\d)?$")


def docker_time(value: str | None) -> float | None:
    """Seconds since the epoch of a Docker timestamp (``2026-11-29T08:25:15.918652878Z``), else ``None``.

    ``0001-01-01T00:00:00Z`` (never started) is ``None``. Nanoseconds are kept to the microsecond.
    """
    match = _TS.match(str(value or "").strip())
    if not match or match.group(1).startswith("0001"):
        return None
    fraction = (match.group(2) or "0")[:6].ljust(6, "0")
    zone = match.group(3) or "Z"
    text = f"{match.group(1)}.{fraction}{'+00:00' if zone == 'Z' else zone}"
    return datetime.fromisoformat(text).astimezone(timezone.utc).timestamp()


def decide(job: dict[str, Any]) -> str:
    """``requeue`` or ``fail`` for an orphaned job (see the module's docstring)."""
    if job.get("status") == "queued" or job.get("type") in REQUEUE_STARTED_TYPES:
        return "requeue"
    return "fail"


def find(
    in_flight: Iterable[dict[str, Any]], held: Iterable[str], process_starts: Iterable[float | None]
) -> list[dict[str, Any]]:
    """Return the orphaned jobs among ``in_flight``, each with its ``action``.

    :param in_flight: ``{id, status, type, touched}`` (``touched``: epoch seconds of its last change).
    :param held: ids of the jobs that running replicas or running QGIS job containers hold.
    :param process_starts: epoch seconds at which each running worker replica's current process started.
    """
    starts = [start for start in process_starts if start is not None]
    if not starts:
        return []
    earliest = min(starts)
    held_ids = {str(job).lower() for job in held if job}
    found = []
    for job in in_flight:
        if job.get("status") not in IN_FLIGHT or str(job.get("id")).lower() in held_ids:
            continue
        touched = job.get("touched")
        if touched is None or float(touched) >= earliest - MARGIN_S:
            continue
        found.append({**job, "action": decide(job)})
    return found


# When a job last changed, in epoch seconds (the queue statement of queue.py reads it too).
TOUCHED_SQL = "extract(epoch FROM greatest(updated_at, started_at, created_at))"
IN_FLIGHT_SQL = (
    f"SELECT id::text, status, type, {TOUCHED_SQL}"
    " FROM core_job WHERE status IN ('queued', 'started') ORDER BY updated_at LIMIT %(limit)s"
)

# Each statement re-checks the state that was read, so a job that moved in between is left alone.
REQUEUE_SQL = (
    "UPDATE core_job SET status = 'pending', started_at = NULL, docker_started_at = NULL,"
    " docker_finished_at = NULL, container_id = '', updated_at = now()"
    " WHERE id = %(id)s::uuid AND status = %(status)s"
    f" AND {TOUCHED_SQL} <= %(touched)s"
)
FAIL_SQL = (
    "UPDATE core_job SET status = 'failed', finished_at = now(), updated_at = now(),"
    " output = concat_ws(E'\\n', nullif(output, ''), %(note)s)"
    " WHERE id = %(id)s::uuid AND status = %(status)s"
    f" AND {TOUCHED_SQL} <= %(touched)s"
)


def read_in_flight(conn: Any) -> list[dict[str, Any]]:
    """The ``queued``/``started`` jobs (at most ``LIMIT``, oldest change first) from an open connection."""
    with conn.cursor() as cur:
        cur.execute(IN_FLIGHT_SQL, {"limit": LIMIT})
        return [
            {"id": row[0].lower(), "status": row[1], "type": row[2], "touched": float(row[3])} for row in cur.fetchall()
        ]


def recover(conn: Any, jobs: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """Apply each job's ``action`` in one transaction; return the jobs actually changed."""
    done = []
    with conn.cursor() as cur:
        for job in jobs:
            params = {"id": job["id"], "status": job["status"], "touched": job["touched"] + 0.001, "note": FAIL_NOTE}
            cur.execute(REQUEUE_SQL if job["action"] == "requeue" else FAIL_SQL, params)
            if cur.rowcount == 1:
                done.append(job)
    conn.commit()
    return done
