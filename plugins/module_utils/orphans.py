# Copyright (c) 2025, fibreflow
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Jobs left ``queued`` or ``started`` by a worker process that no longer exists, and their recovery.

Evidence: only what upstream writes.

* The claim. The worker logs ``Dequeued job <id>, run!`` inside the claim's transaction, before the commit that
  sets the job ``queued``. The claim saves the status only: ``updated_at`` does not move, and a queued job has no
  time of its own.
* The start sets ``started`` and ``started_at``; a ``delta_apply`` job's deltas (``core_delta.last_status``) and
  its ``core_applyjobdelta`` rows become ``started``.
* A QGIS job container carries the ``job_id`` label.
* A worker process runs one job at a time, so the job it holds is the one named by the *last* ``Dequeued job``
  line of its own log (the lines since its container's ``State.StartedAt``).

The rule, shared by ``qfc_sync_facts`` (problem ``jobs_orphaned``) and ``qfc_worker`` (which recovers them). A job
``J`` is orphaned when all of these hold:

1. Someone can run it again, and every live holder is known: a worker process of the project runs, and for each
   running one its start and its current log can be read and its last claim is known (the log read shows a
   ``Dequeued job`` line, the dequeue banner, or the beginning of the process).
2. No live holder: ``J`` is ``queued``/``started``, no running worker's current process names ``J`` in its last
   ``Dequeued job`` line, and no running QGIS container carries ``J``'s label.
3. Stable (``qfc_worker``): 1 and 2 hold on two reads at least :data:`CONFIRM_S` apart, each read taking the
   database first and Docker second, and ``J``'s ``status``, ``started_at`` and ``updated_at`` are the same on
   both; the recovery statement checks them a third time, in its own transaction.
4. Its claimant is gone, by at least one :data:`EVIDENCE` sign:

   * ``claimant_gone``: the last ``Dequeued job`` line of a process that has ended names ``J`` (an earlier process
     of a worker container, read from its log before ``State.StartedAt``; the last process of a worker container
     that does not run; a process ``qfc_worker`` saw before it restarted or replaced the worker in the same run);
   * ``job_container_ended``: a QGIS container labelled ``J`` exists and does not run, or one ran when
     ``qfc_worker`` started and is gone now;
   * ``before_current_processes``: ``J``'s state began more than :data:`MARGIN_S` before every running worker's
     current process started (``started_at`` for a started job; for a queued one its most recent sign, below);
   * ``overdue``: ``J`` has been in its state for longer than the job timeout, from its most recent sign.

Why no job a live process holds is ever named (``qfc_worker``). Assumed: every process that dequeues from this
database runs on this Docker engine in a container that runs ``dequeue`` for this project (the drain rests on the
same assumption), and Docker has a line that a container wrote in its log within :data:`CONFIRM_S`. Let a live
process ``P`` hold ``J`` when the recovery runs. Only a ``pending`` job can be claimed, and ``J`` was in flight at
the first read, so ``P`` claimed ``J`` before the first read: its ``Dequeued job J`` line was written before that
read (upstream writes it before the claim commits; a worker that writes it just after the commit does so within
milliseconds), hence at least :data:`CONFIRM_S` before the second read of ``P``'s log, which therefore shows it.
``P`` runs one job at a time and logs every claim, so that line is its last. ``P`` is alive, so its container was
running when it was listed after the second database read, and condition 2 fails on that read. A log too long to
show the claim fails condition 1 instead. Condition 4 is not needed for this proof; it keeps a single read
(``qfc_sync_facts`` reads Docker before the database, so a job claimed in between looks unheld but has none of these
signs) and a worker outside the assumption (another engine on the same database) from making a false finding.

A queued job's most recent sign (``since``): the latest of its ``created_at``, its ``updated_at`` (our own requeue
sets it) and the end of the latest other job of its project that ended after it was created. A project runs one
job at a time, so such a job ended before ``J`` was claimed: this is a lower bound of the claim time, and an age
measured from it is never too long. A started job's sign is its ``started_at``.

Recovery. A ``queued`` job never ran: it goes back to ``pending``. A ``started`` job of a type whose work is
repeatable (``package``, ``process_projectfile``) goes back to ``pending`` too. Any other ``started`` job gets the
end state upstream's cron (``set_terminated_workers_to_final_status``) gives a dead job after the timeout: the job
``failed`` with ``finished_at``, a ``feedback`` and an ``output`` that say why, and for ``delta_apply`` its deltas
and ``core_applyjobdelta`` rows that are still ``pending``/``started`` set ``error``, so that the API no longer
reports them busy and an administrator can apply them again (:data:`REAPPLY_HINT`). All of it in one transaction
whose statements re-check what was read.
"""

from __future__ import annotations

import json
import re
from datetime import datetime, timezone
from typing import Any, Iterable

from ansible_collections.fibreflow.qfieldcloud.plugins.module_utils import drain as drain_mod

IN_FLIGHT = drain_mod.IN_FLIGHT
REQUEUE_STARTED_TYPES = ("package", "process_projectfile")
MARGIN_S = 1.0
CONFIRM_S = 5.0
LEFTOVER_WAIT_S = 30.0
LIMIT = 50
EVIDENCE = ("claimant_gone", "job_container_ended", "before_current_processes", "overdue")
# A worker process starts here: the entrypoint's first line, then the dequeue banner.
PROCESS_START_SIGNS = ("Waiting for postgres", drain_mod.DEQUEUE_BANNER)
FAIL_NOTE = (
    "[fibreflow.qfieldcloud] The worker process that ran this job is gone (the Docker daemon, the host or the"
    " worker restarted, or the worker was killed); the job was set failed so that the project's later jobs can run."
)
FAIL_FEEDBACK = {
    "error": FAIL_NOTE,
    "error_type": "WORKER_PROCESS_GONE",
    "error_origin": "fibreflow.qfieldcloud",
    "error_stack": "",
    "container_exit_code": -2,
}
REAPPLY_HINT = (
    "{deltas} change(s) uploaded from QField to project {project} were not applied; they are now 'error'. An"
    " administrator applies them again in the web admin: Deltas, filter the project and status 'error', select"
    " them, run 'Set status pending', then 'Apply selected deltas'. QField shows the result at its next"
    " synchronisation."
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


# ---------------------------------------------------------------------------------------------- worker logs
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
            job = drain_mod.last_dequeued_job(rest)
            current_last = job or current_last
            current_banner = current_banner or drain_mod.DEQUEUE_BANNER in rest
            continue
        saw_earlier = True
        if any(sign in rest for sign in PROCESS_START_SIGNS) and segment_last:
            ended.append(segment_last)
            segment_last = None
        segment_last = drain_mod.last_dequeued_job(rest) or segment_last
    if segment_last:
        ended.append(segment_last)
    if not running:
        return {"last_job": None, "last_job_known": True, "ended_jobs": _unique(ended)}
    known = bool(current_last or current_banner or saw_earlier or len(lines) < tail_limit)
    return {"last_job": current_last, "last_job_known": known, "ended_jobs": _unique(ended)}


def _unique(ids: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(str(i).lower() for i in ids if i))


# ---------------------------------------------------------------------------------------------- the decision
def decide(job: dict[str, Any]) -> str:
    """``requeue`` or ``fail`` for an orphaned job (see the module's docstring)."""
    if job.get("status") == "queued" or job.get("type") in REQUEUE_STARTED_TYPES:
        return "requeue"
    return "fail"


def orphaned(
    in_flight: Iterable[dict[str, Any]],
    workers: Iterable[dict[str, Any]],
    job_containers: Iterable[dict[str, Any]] = (),
    ended_jobs: Iterable[str] = (),
    gone_containers: Iterable[str] = (),
    timeout_s: float | None = None,
    now: float | None = None,
) -> list[dict[str, Any]]:
    """Conditions 1, 2 and 4 of the module's rule on one read; condition 3 is the caller's (two reads).

    :param in_flight: rows of :func:`read_in_flight` (``id``, ``status``, ``type``, ``project_id``,
        ``created_at``, ``started_at``, ``since``: epoch seconds; ``deltas``).
    :param workers: every worker container of the project: ``running``, ``process_start`` (epoch seconds of the
        current process), ``last_job``, ``last_job_known``, ``ended_jobs`` (see :func:`process_claims`).
    :param job_containers: QGIS job containers: ``job_id``, ``running``.
    :param ended_jobs: more jobs named last by processes known to have ended (seen before a restart).
    :param gone_containers: jobs whose QGIS container ran earlier and is gone now.
    :param timeout_s: the job timeout (evidence ``overdue``); ``None``: not used.
    :param now: epoch seconds of the database read (``overdue``).
    :returns: the orphaned jobs, each with ``action`` (:func:`decide`) and ``evidence`` (codes of
        :data:`EVIDENCE`); ``[]`` when nothing can be proven.
    """
    workers = list(workers)
    running = [w for w in workers if w.get("running")]
    if not running:
        return []
    if any(w.get("process_start") is None or not w.get("last_job_known") for w in running):
        return []
    earliest = min(float(w["process_start"]) for w in running)
    containers = list(job_containers)
    held = {str(w["last_job"]).lower() for w in running if w.get("last_job")}
    held |= {str(c["job_id"]).lower() for c in containers if c.get("job_id") and c.get("running")}
    ended = set(_unique(ended_jobs))
    for w in workers:
        ended |= set(_unique(w.get("ended_jobs") or []))
    container_ended = {str(c["job_id"]).lower() for c in containers if c.get("job_id") and not c.get("running")}
    container_ended |= set(_unique(gone_containers))
    found = []
    for job in in_flight:
        job_id = str(job.get("id") or "").lower()
        if job.get("status") not in IN_FLIGHT or not job_id or job_id in held:
            continue
        since = job.get("started_at") if job.get("status") == "started" else None
        since = job.get("since") if since is None else since
        evidence = []
        if job_id in ended:
            evidence.append("claimant_gone")
        if job_id in container_ended:
            evidence.append("job_container_ended")
        if since is not None and float(since) < earliest - MARGIN_S:
            evidence.append("before_current_processes")
        if since is not None and timeout_s and now is not None and now - float(since) > float(timeout_s):
            evidence.append("overdue")
        if evidence:
            found.append({**job, "id": job_id, "action": decide(job), "evidence": evidence})
    return found


def confirmed(first: Iterable[dict[str, Any]], second: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """Condition 3: the jobs orphaned on both reads whose status and timestamps did not move in between."""
    earlier = {job["id"]: job for job in first}
    keys = ("status", "started_text", "updated_text")
    return [
        {**job, "evidence": _unique([*earlier[job["id"]]["evidence"], *job["evidence"]])}
        for job in second
        if job["id"] in earlier and all(earlier[job["id"]].get(k) == job.get(k) for k in keys)
    ]


def find(
    in_flight: Iterable[dict[str, Any]], held: Iterable[str], process_starts: Iterable[float | None]
) -> list[dict[str, Any]]:
    """The older call: running processes known only by their start, ``held`` by their claims or containers."""
    starts = list(process_starts)
    workers = [{"running": True, "process_start": s, "last_job": None, "last_job_known": True} for s in starts]
    containers = [{"job_id": job, "running": True} for job in held if job]
    return orphaned(in_flight, workers, containers)


def find_in_facts(facts: dict[str, Any]) -> list[dict[str, Any]]:
    """The rule on the facts of one ``qfc_sync_facts`` pass (one read: conditions 1, 2 and 4).

    Reads ``worker.replicas`` and ``worker.hand_started`` (``running``, ``started_at``, ``log`` with ``last_job``
    and, when present, ``last_job_known`` and ``ended_jobs`` of :func:`process_claims`; without
    ``last_job_known`` a claim is known when the log shows a job or the dequeue banner), ``job_containers``
    (``job_id``, ``running``), ``queue.in_flight_jobs`` and the job timeout (``thresholds.job_timeout_s``).
    """
    worker = facts.get("worker") or {}
    workers = []
    for rep in list(worker.get("replicas") or []) + list(worker.get("hand_started") or []):
        log = rep.get("log")
        running = bool(rep.get("running"))
        if running and (not isinstance(log, dict) or "error" in log):
            return []  # a running replica whose log could not be read may hold any job: nothing is proven
        log = log or {}
        known = log.get("last_job_known")
        if known is None:
            known = bool(log.get("last_job") or log.get("dequeue_banner"))
        workers.append(
            {
                "running": running,
                "process_start": docker_time(rep.get("started_at")),
                "last_job": log.get("last_job") if running else None,
                "last_job_known": bool(known),
                "ended_jobs": log.get("ended_jobs") or [],
            }
        )
    queue = facts.get("queue") or {}
    timeout = (facts.get("thresholds") or {}).get("job_timeout_s") or (facts.get("database") or {}).get("job_timeout_s")
    return orphaned(
        queue.get("in_flight_jobs") or [],
        workers,
        facts.get("job_containers") or [],
        timeout_s=timeout,
        now=queue.get("read_at"),
    )


def user_action(job: dict[str, Any]) -> str | None:
    """What a person does after the recovery of ``job``, or ``None`` when the queue does it by itself."""
    if job.get("action") == "requeue":
        return None
    if job.get("type") == "delta_apply" and int(job.get("deltas") or 0) > 0:
        return REAPPLY_HINT.format(deltas=int(job["deltas"]), project=job.get("project_id"))
    return f"job {job.get('id')} of project {job.get('project_id')} was set failed: start it again (a new job)."


def summary(job: dict[str, Any]) -> dict[str, Any]:
    """The plain dict of one orphaned job that results and problem evidence carry."""
    return {
        "id": job["id"],
        "status": job.get("status"),
        "type": job.get("type"),
        "project_id": job.get("project_id"),
        "recovery": job.get("action"),
        "evidence": list(job.get("evidence") or []),
        "deltas": int(job.get("deltas") or 0),
        "user_action": user_action(job),
    }


# ---------------------------------------------------------------------------------------------- SQL
# The end of a job that ended: upstream gives a failed job no finished_at unless the cron or the runner's
# exception path failed it; then the time its container ended, else its start.
ENDED_SQL = "coalesce({a}.finished_at, {a}.docker_finished_at, {a}.started_at)"


def since_sql(alias: str = "j", with_claims: bool = False) -> str:
    """The most recent sign of an in-flight job's state, a timestamptz (see the module's docstring).

    ``with_claims``: the statement has a ``%(claims)s`` parameter, a JSON object ``{job id: epoch seconds}`` of
    the ``Dequeued job`` lines of running workers (the time of the claim itself, when the caller knows it).
    """
    other = ENDED_SQL.format(a="o")
    claim = f" to_timestamp((%(claims)s::jsonb ->> {alias}.id::text)::float8)," if with_claims else ""
    return (
        f"CASE WHEN {alias}.status = 'started' AND {alias}.started_at IS NOT NULL THEN {alias}.started_at"
        f" ELSE greatest({alias}.created_at, {alias}.updated_at, {alias}.started_at,{claim}"
        f" (SELECT max({other}) FROM core_job o WHERE o.project_id = {alias}.project_id AND o.id <> {alias}.id"
        f" AND o.status NOT IN ('pending', 'queued', 'started') AND {other} > {alias}.created_at)) END"
    )


def deltas_sql(has_applyjobdelta: bool, alias: str = "j") -> str:
    """How many deltas of a delta_apply job are still pending/started (what a failure leaves to re-apply)."""
    if not has_applyjobdelta:
        return "0"
    return (
        f"CASE WHEN {alias}.type = 'delta_apply' THEN (SELECT count(*) FROM core_applyjobdelta a"
        " JOIN core_delta d ON d.id = a.delta_id WHERE a.apply_job_id = "
        f"{alias}.id AND (a.status IN ('pending', 'started') OR d.last_status IN ('pending', 'started'))) ELSE 0 END"
    )


def in_flight_sql(has_applyjobdelta: bool, limit: int = LIMIT, with_claims: bool = False) -> str:
    """The in-flight jobs, oldest first, as rows for :func:`in_flight_row`."""
    return (
        "SELECT j.id::text AS id, j.status, j.type, j.project_id::text AS project_id,"
        " extract(epoch FROM j.created_at)::float8 AS created_at,"
        " extract(epoch FROM j.started_at)::float8 AS started_at,"
        f" extract(epoch FROM {since_sql('j', with_claims)})::float8 AS since,"
        f" {deltas_sql(has_applyjobdelta)} AS deltas,"
        " j.updated_at::text AS updated_text, j.started_at::text AS started_text"
        f" FROM core_job j WHERE j.status IN ('queued', 'started') ORDER BY j.created_at LIMIT {int(limit)}"
    )


def in_flight_row(row: Iterable[Any]) -> dict[str, Any]:
    """One row of :func:`in_flight_sql` as a dict."""
    job_id, status, job_type, project, created, started, since, deltas, updated_text, started_text = tuple(row)
    return {
        "id": str(job_id).lower(),
        "status": status,
        "type": job_type,
        "project_id": None if project is None else str(project).lower(),
        "created_at": None if created is None else float(created),
        "started_at": None if started is None else float(started),
        "since": None if since is None else float(since),
        "deltas": int(deltas or 0),
        "updated_text": updated_text,
        "started_text": started_text,
    }


HAS_DELTA_TABLES = (
    "to_regclass('public.core_applyjobdelta') IS NOT NULL AND to_regclass('public.core_delta') IS NOT NULL"
)
HAS_APPLYJOBDELTA_SQL = f"SELECT {HAS_DELTA_TABLES}, extract(epoch FROM now())"

# Each statement re-checks the state that was read (status, started_at, updated_at to the microsecond), so a job
# that moved in between is left alone.
_RECHECK = (
    " WHERE id = %(id)s::uuid AND status = %(status)s AND updated_at = %(updated_text)s::timestamptz"
    " AND started_at IS NOT DISTINCT FROM %(started_text)s::timestamptz"
)
REQUEUE_SQL = (
    "UPDATE core_job SET status = 'pending', started_at = NULL, docker_started_at = NULL,"
    " docker_finished_at = NULL, container_id = '', updated_at = now()" + _RECHECK + " RETURNING id"
)
FAIL_SQL = (
    "UPDATE core_job SET status = 'failed', finished_at = now(), feedback = %(feedback)s::jsonb,"
    " output = concat_ws(E'\\n', nullif(output, ''), %(note)s)" + _RECHECK + " RETURNING started_at, created_by_id"
)
FAIL_DELTAS_SQL = (
    "UPDATE core_delta d SET last_status = 'error', last_feedback = NULL, last_modified_pk = NULL,"
    " last_apply_attempt_at = %(started_at)s, last_apply_attempt_by_id = %(by)s"
    " FROM core_applyjobdelta a WHERE a.apply_job_id = %(id)s::uuid AND a.delta_id = d.id"
    " AND d.last_status IN ('pending', 'started')"
)
FAIL_APPLYJOBDELTAS_SQL = (
    "UPDATE core_applyjobdelta SET status = 'error', feedback = NULL, modified_pk = NULL"
    " WHERE apply_job_id = %(id)s::uuid AND status IN ('pending', 'started')"
)


def read_in_flight(conn: Any) -> tuple[list[dict[str, Any]], float]:
    """The ``queued``/``started`` jobs (at most ``LIMIT``, oldest first) and the database's clock (epoch s)."""
    with conn.cursor() as cur:
        cur.execute(HAS_APPLYJOBDELTA_SQL)
        has_applyjobdelta, now = cur.fetchone()
        cur.execute(in_flight_sql(bool(has_applyjobdelta)))
        rows = [in_flight_row(row) for row in cur.fetchall()]
    conn.commit()  # end the read's transaction: the second read must see later commits
    return rows, float(now)


def recover(conn: Any, jobs: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """Apply each job's ``action`` in one transaction; return the jobs actually changed.

    A failed ``delta_apply`` job's dict gets ``deltas``: how many of its deltas were set ``error``.
    """
    done = []
    with conn.cursor() as cur:
        cur.execute(f"SELECT {HAS_DELTA_TABLES}")
        has_applyjobdelta = bool(cur.fetchone()[0])
        for job in jobs:
            params = {
                "id": job["id"],
                "status": job["status"],
                "updated_text": job.get("updated_text"),
                "started_text": job.get("started_text"),
                "note": FAIL_NOTE,
                "feedback": json.dumps(FAIL_FEEDBACK),
            }
            if job["action"] == "requeue":
                cur.execute(REQUEUE_SQL, params)
                if cur.fetchone() is not None:
                    done.append({**job, "deltas": 0})
                continue
            cur.execute(FAIL_SQL, params)
            changed = cur.fetchone()
            if changed is None:
                continue
            deltas = 0
            if job.get("type") == "delta_apply" and has_applyjobdelta:
                cur.execute(FAIL_DELTAS_SQL, {"id": job["id"], "started_at": changed[0], "by": changed[1]})
                deltas = max(0, cur.rowcount)
                cur.execute(FAIL_APPLYJOBDELTAS_SQL, {"id": job["id"]})
            done.append({**job, "deltas": deltas})
    conn.commit()
    return done
