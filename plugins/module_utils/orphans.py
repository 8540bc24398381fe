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

import time
from typing import Any, Iterable

from ansible_collections.fibreflow.qfieldcloud.plugins.module_utils import codes, database, logsigns, stack
from ansible_collections.fibreflow.qfieldcloud.plugins.module_utils import worker_spec as spec
from ansible_collections.fibreflow.qfieldcloud.plugins.module_utils.docker_engine import (
    LABEL_PROJECT,
    LOG_TAIL,
    docker_time,
)
from ansible_collections.fibreflow.qfieldcloud.plugins.module_utils.logsigns import unique_ids

IN_FLIGHT = database.IN_FLIGHT
REQUEUE_STARTED_TYPES = ("package", "process_projectfile")
MARGIN_S = 1.0
CONFIRM_S = 5.0
LEFTOVER_WAIT_S = 30.0
EVIDENCE = ("claimant_gone", "job_container_ended", "before_current_processes", "overdue")
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
    ended = set(unique_ids(ended_jobs))
    for w in workers:
        ended |= set(unique_ids(w.get("ended_jobs") or []))
    container_ended = {str(c["job_id"]).lower() for c in containers if c.get("job_id") and not c.get("running")}
    container_ended |= set(unique_ids(gone_containers))
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
        {**job, "evidence": unique_ids([*earlier[job["id"]]["evidence"], *job["evidence"]])}
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


def read_in_flight(conn: Any) -> tuple[list[dict[str, Any]], float]:
    """The rule's database read: the in-flight jobs (``database.read_in_flight``) and the database's clock."""
    return database.read_in_flight(conn)


def recover(conn: Any, jobs: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """Recover ``jobs`` (each with its ``action``) in one transaction, a failed one saying why (:data:`FAIL_NOTE`);
    the statements re-check what was read (``database.recover``). Returns the jobs actually changed."""
    return database.recover(conn, jobs, FAIL_NOTE, FAIL_FEEDBACK)


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


# ---------------------------------------------------------------------------------------------- recovery (qfc_worker)
def worker_claims(engine: Any, project: str) -> dict[str, Any] | None:
    """What the engine shows of the holders of ``project``'s jobs (the Docker half of the rule).

    Every dequeue worker container of the project (compose replicas and hand-started ones, running or not) with
    :func:`logsigns.process_claims` of its log, and every QGIS job container (``job_id`` label) with its state.
    ``None`` when a running worker's start or log cannot be read: it may hold any job.
    """
    workers = []
    for summary in engine.containers():
        if "dequeue" not in str(summary.get("Command") or ""):
            continue
        # Another compose project's container is that project's (as stack.classify_containers sorts the listing):
        # not inspected.
        if (summary.get("Labels") or {}).get(LABEL_PROJECT) not in (None, project):
            continue
        attrs = engine.inspect(summary["Id"])
        if attrs is None:
            continue
        replica = stack.replica_from_inspect(attrs)
        if project not in (replica.get("compose_project"), replica.get("env_project")):
            continue
        if not spec.is_dequeue_command(replica["command"]):
            continue
        # A container waiting to be restarted by its policy has no live process.
        running = bool(replica.get("running")) and not replica.get("restarting")
        start = docker_time(replica.get("started_at"))
        if running and start is None:
            return None
        text = engine.logs(replica["id"], LOG_TAIL)
        if text is None:
            if running:
                return None
            continue
        claims = logsigns.process_claims(text, replica.get("started_at"), running, LOG_TAIL)
        workers.append(
            {
                "id": replica["id"],
                "name": replica["name"],
                "running": running,
                "started_at": replica.get("started_at"),
                "process_start": start,
                **claims,
            }
        )
    return {"workers": workers, "job_containers": engine.job_containers()}


def ended_since(before: dict[str, Any] | None, now: dict[str, Any]) -> tuple[list[str], list[str]]:
    """Evidence only a look before this run's changes gives: ``(jobs named last by worker processes that ran then
    and have ended since, jobs whose QGIS container ran then and does not now)``. A replaced container takes its
    log with it; a worker that restarts may remove a leftover QGIS container."""
    if not before:
        return [], []
    later = {item["id"]: item for item in now["workers"]}
    ended = []
    for item in before["workers"]:
        if not item.get("running") or not item.get("last_job"):
            continue
        same = later.get(item["id"])
        if same is None or not same["running"] or same.get("started_at") != item.get("started_at"):
            ended.append(item["last_job"])
    running_now = {c["job_id"] for c in now["job_containers"] if c["running"]}
    gone = [c["job_id"] for c in before["job_containers"] if c["running"] and c["job_id"] not in running_now]
    return ended, gone


def read_once(engine: Any, conn: Any, scope: dict[str, Any], before: dict[str, Any] | None) -> dict[str, Any] | None:
    """One read of the rule: the database first, then Docker. ``None``: nothing can be proven.

    ``scope``: ``project`` and ``env`` (the app's environment: ``QFIELDCLOUD_WORKER_TIMEOUT_S``).
    """
    jobs, db_now = read_in_flight(conn)
    claims = worker_claims(engine, scope["project"])
    if claims is None:
        return None
    ended, gone = ended_since(before, claims)
    raw_timeout = str((scope.get("env") or {}).get("QFIELDCLOUD_WORKER_TIMEOUT_S") or "").strip()
    timeout = float(raw_timeout) if raw_timeout.isdigit() and int(raw_timeout) > 0 else None
    found = orphaned(jobs, claims["workers"], claims["job_containers"], ended, gone, timeout, db_now)
    named = {item["last_job"] for item in claims["workers"] if item["running"] and item.get("last_job")}
    in_flight = {job["id"] for job in jobs}
    leftovers = sorted(
        {c["job_id"] for c in claims["job_containers"] if c["running"] and c["job_id"] in in_flight} - named
    )
    # Jobs last named by a worker process that has ended: their QGIS container's result is never read.
    claimant_gone = set(ended)
    for item in claims["workers"]:
        claimant_gone.update(item.get("ended_jobs") or [])
    stale = sorted(job for job in leftovers if job in claimant_gone)
    return {"found": found, "leftovers": leftovers, "stale": stale, "at": time.monotonic()}


def _retire_stale(engine: Any, conn: Any, scope: dict, before: dict | None, first: dict, out: dict) -> dict:
    """Remove the QGIS containers that still run a job whose worker process is proven gone (on two reads
    :data:`CONFIRM_S` apart): the process that would read their result is dead, so they only hold the job, and its
    project, until they end. Check mode says it would. Returns a fresh read."""
    time.sleep(max(0.0, CONFIRM_S - (time.monotonic() - first["at"])))
    second = read_once(engine, conn, scope, before)
    stale = sorted(set(first["stale"]) & set((second or {}).get("stale") or []))
    for job in stale:
        verb = "would remove" if scope["check"] else "removed"
        out["actions"].append(f"{verb} the QGIS container of job {job}: the worker process that ran it is gone")
        if not scope["check"]:
            engine.remove_job_container(job)
    if not stale or scope["check"]:
        return second if second is not None else first
    return read_once(engine, conn, scope, before) or first


def _confirmed_read(engine: Any, conn: Any, scope: dict, before: dict | None, out: dict) -> list[dict[str, Any]]:
    """The orphaned jobs two reads :data:`CONFIRM_S` apart agree on (after retiring stale leftovers and, when this
    run changed workers, waiting for the new ones to remove leftover QGIS containers)."""
    first = read_once(engine, conn, scope, before)
    if first is not None and first["stale"]:
        first = _retire_stale(engine, conn, scope, before, first, out)
    if first is not None and first["leftovers"] and scope["changed"] and not scope["check"]:
        deadline = time.monotonic() + LEFTOVER_WAIT_S
        while first is not None and first["leftovers"] and time.monotonic() < deadline:
            time.sleep(1.0)
            first = read_once(engine, conn, scope, before)
    if first is None or not first["found"]:
        return []
    time.sleep(max(0.0, CONFIRM_S - (time.monotonic() - first["at"])))
    second = read_once(engine, conn, scope, before)
    return confirmed(first["found"], second["found"]) if second else []


def recover_orphans(engine: Any, db: dict[str, Any], scope: dict[str, Any], before: dict | None) -> dict[str, Any]:
    """Recover the jobs whose worker process is gone; in check mode only report them.

    Runs after the worker set is right (or would be, in check mode), so the running workers' processes are the ones
    that pick the jobs up again. ``scope``: ``project``, ``env``, ``check`` (check mode) and ``changed`` (this run
    restarted or replaced workers: a QGIS container still running a job no live process names is waited for, at
    most :data:`LEFTOVER_WAIT_S`, so that its job is recovered in this run). ``before`` is :func:`worker_claims`
    from before this run's changes.

    :returns: ``{drift, actions, orphaned_jobs}`` (``orphaned_jobs`` is ``None`` when none was recovered).
    """
    out: dict[str, Any] = {"drift": [], "actions": [], "orphaned_jobs": None}
    conn = database.open_db(db)
    if conn is None:  # the database cannot be read: nothing to prove; qfc_sync_facts reports it
        return out
    try:
        found = _confirmed_read(engine, conn, scope, before, out)
        if not found:
            return out
        for job in found:
            lost = decide(job) == "fail" and job.get("deltas")
            lost = f"; its {job['deltas']} delta(s) need re-applying" if lost else ""
            out["drift"].append(
                {
                    "replica": None,
                    "field": "job",
                    "expected": f"{job['id']} held by a running worker, or pending",
                    "actual": f"{job['status']} ({job['type']}) of project {job['project_id']} by a worker"
                    f" process that is gone{lost}",
                    "code": codes.CODE_JOBS_ORPHANED,
                }
            )
        done = found if scope["check"] else recover(conn, found)
    finally:
        conn.close()
    for job in done:
        out["actions"].append(
            f"job {job['id']} ({job['status']} {job['type']}, its worker process is gone): {what(job, scope['check'])}"
        )
    out["orphaned_jobs"] = [summary(job) for job in done]
    return out


def what(job: dict[str, Any], check: bool) -> str:
    """What the recovery does (or would do) to ``job``, as the action says it."""
    if job["action"] == "requeue":
        return f"put back to pending (project {job['project_id']})"
    text = f"set failed (it may have run in part; project {job['project_id']}"
    if job.get("type") == "delta_apply":
        text += f", {job['deltas']} delta(s) {'would be ' if check else ''}set error to re-apply"
    return text + ")"
