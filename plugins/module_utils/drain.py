# Copyright (c) 2025, fibreflow
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Drain QFieldCloud worker replicas before they are stopped or replaced: no job in flight is lost.

The rule (documented in ``qfc_worker``):

* A worker runs one job at a time and logs ``Dequeued job <id>, run!`` when it claims one. The
  job a replica may be running is therefore the one named by the *last* such line that the
  replica's current process wrote (its log since ``State.StartedAt``; earlier runs of a
  crash-looping container do not count).
* A replica is **busy** when it is running and that job is ``queued`` or ``started`` in the
  database. When the database cannot be read, a replica is busy when a QGIS job container
  labelled with that ``job_id`` is still running (the Docker-only fallback).
* A replica that is not running is never busy: it cannot finish anything. A ``queued``/``started``
  job that no running replica claims (left behind by a dead worker) does not block a repair;
  upstream's cron fails it after the timeout.

Waiting is bounded by ``drain_timeout``. A drained replica then gets SIGTERM and ``IDLE_STOP_WAIT``
seconds to exit, which an idle worker does at once. One still running after that is asked again: when
the database can be read and shows that it holds no job (a replica cut off from its network, stuck in a
query, cannot act on the signal), it is killed; otherwise it keeps the service's grace period, and the
worker finishes the job it holds, so a job claimed in the last poll before the stop also completes.
"""

from __future__ import annotations

import time
from typing import Any, Callable

from ansible_collections.fibreflow.qfieldcloud.plugins.module_utils import codes, database, logsigns, stack
from ansible_collections.fibreflow.qfieldcloud.plugins.module_utils.worker_plan import WorkerError

IN_FLIGHT = database.IN_FLIGHT
IDLE_STOP_WAIT = 15.0


def busy_replicas(
    replicas: list[dict[str, Any]],
    job_status: dict[str, str] | None,
    running_job_containers: set[str] | None = None,
) -> dict[str, str]:
    """Return ``{replica name: job id}`` for every replica that is running a job.

    :param replicas: dicts with ``name``, ``running`` and ``last_job`` (``logsigns.last_dequeued_job``).
    :param job_status: ``{job id: status}`` read from the database, or ``None`` when it could not be read.
    :param running_job_containers: job ids of running QGIS job containers (``job_id`` label).
    """
    busy: dict[str, str] = {}
    containers = {job.lower() for job in running_job_containers or set()}
    for replica in replicas:
        job = replica.get("last_job")
        if not job or not replica.get("running"):
            continue
        if job_status is not None:
            if job_status.get(job) in IN_FLIGHT:
                busy[replica["name"]] = job
        elif job in containers:
            busy[replica["name"]] = job
    return busy


def wait_until_idle(
    names: list[str],
    probe: Callable[[], dict[str, str]],
    timeout: float,
    poll: float = 2.0,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> tuple[dict[str, str], float]:
    """Wait until none of the replicas ``names`` is busy.

    :param probe: returns the current ``{replica name: job id}`` of busy replicas.
    :returns: ``(still busy among names, seconds waited)``; an empty dict means drained.
    """
    start = clock()
    wanted = set(names)
    while True:
        busy = {name: job for name, job in probe().items() if name in wanted}
        waited = clock() - start
        if not busy or waited >= timeout:
            return busy, waited
        sleep(min(poll, max(0.0, timeout - waited)))


def drain_message(busy: dict[str, str], timeout: float) -> str:
    """Return the error a person reads when draining timed out."""
    jobs = ", ".join(f"{name} runs job {job}" for name, job in sorted(busy.items()))
    return (
        f"worker replicas still busy after drain_timeout={timeout:g}s ({jobs}); nothing was stopped or"
        " recreated. Wait for the jobs to finish (or fail them) and run again, or raise drain_timeout."
    )


def stop_idle(
    names: list[str],
    terminate: Callable[[str], None],
    running: Callable[[str], bool],
    confirmed_idle: Callable[[list[str]], set[str] | None],
    kill: Callable[[str], None],
    wait: float = IDLE_STOP_WAIT,
    poll: float = 0.5,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> dict[str, str]:
    """Stop drained replicas without waiting out their grace period when they hold no job.

    :param terminate: sends a replica its stop signal.
    :param running: tells whether a replica still runs.
    :param confirmed_idle: the names among those given that the database shows holding no job, or ``None``
        when the database cannot be read (then nothing is killed).
    :param kill: stops a replica at once.
    :returns: ``{name: outcome}``, outcome ``exited`` (it acted on the signal), ``killed`` (it ignored the
        signal for ``wait`` seconds and holds no job) or ``left`` (it may hold a job: the caller's stop, with
        the grace period, deals with it).
    """
    outcome: dict[str, str] = {}
    for name in names:
        terminate(name)
    start = clock()
    left = list(names)
    while left:
        left = [name for name in left if running(name)]
        if not left or clock() - start >= wait:
            break
        sleep(min(poll, max(0.0, wait - (clock() - start))))
    for name in names:
        if name not in left:
            outcome[name] = "exited"
    if left:
        idle = confirmed_idle(left) or set()
        for name in left:
            if name in idle:
                kill(name)
                outcome[name] = "killed"
            else:
                outcome[name] = "left"
    return outcome


# ---------------------------------------------------------------------------------------------- the drainer
def current_replicas(engine: Any, replicas: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Re-read ``replicas`` through ``engine`` (``docker_engine.Engine``): their state now and the job each one's
    current process last dequeued (``last_job``)."""
    current = []
    for replica in replicas:
        attrs = engine.inspect(replica["id"])
        if attrs is None:
            continue
        fresh = stack.replica_from_inspect(attrs)
        fresh["last_job"] = logsigns.last_dequeued_job(engine.current_logs(fresh["id"], fresh.get("started_at")))
        current.append(fresh)
    return current


def drain(
    engine: Any, replicas: list[dict[str, Any]], db: dict[str, Any] | None, timeout: float, details: dict[str, Any]
) -> None:
    """The drainer: wait (at most ``timeout`` seconds) until none of the running ``replicas`` holds a job in flight.

    The wait is added to ``details["drain_waited_s"]``. When the time runs out a ``WorkerError`` with the code
    ``drain_timeout`` (naming the option ``drain_timeout``) is raised and nothing has been stopped.
    """
    running = [item for item in replicas if item.get("running")]
    if not running:
        return
    busy, waited = _wait_for(engine, running, db, timeout)
    details["drain_waited_s"] = round(details.get("drain_waited_s", 0) + waited, 1)
    if busy:
        raise WorkerError(drain_message(busy, timeout), option="drain_timeout", code=codes.CODE_DRAIN_TIMEOUT)


def _wait_for(
    engine: Any, running: list[dict[str, Any]], db: dict[str, Any] | None, timeout: float
) -> tuple[dict[str, str], float]:

    def probe() -> dict[str, str]:
        current = current_replicas(engine, running)
        jobs = [item["last_job"] for item in current if item.get("last_job") and item.get("running")]
        statuses = database.job_statuses(db, jobs)
        containers = engine.running_job_containers() if statuses is None else None
        return busy_replicas(current, statuses, containers)

    return wait_until_idle([item["name"] for item in running], probe, timeout)


def confirmed_idle(engine: Any, replicas: list[dict[str, Any]], db: dict[str, Any] | None) -> set[str] | None:
    """The names among ``replicas`` that the database shows holding no job, or ``None``.

    ``None`` (nothing confirmed) when the database cannot be read, or when a QGIS job container runs a job that is
    in flight in the database and none of ``replicas`` names it as its last: a replica may hold it although its log
    does not say so (or one outside ``replicas`` does; either way, nothing is killed).
    """
    current = current_replicas(engine, replicas)
    claimed = {item["last_job"] for item in current if item.get("last_job")}
    containers = engine.running_job_containers()
    statuses = database.job_statuses(db, sorted(claimed | containers), connect_always=True)
    if statuses is None:
        return None
    if any(statuses.get(job) in IN_FLIGHT for job in containers - claimed):
        return None
    busy = busy_replicas(current, statuses)
    return {item["name"] for item in current if item.get("running") and item["name"] not in busy}


def stop_idle_replicas(engine: Any, replicas: list[dict[str, Any]], db: dict[str, Any] | None) -> dict[str, str]:
    """After the drain: stop the replicas that hold no job before compose (or the caller's stop) does.

    compose stops a replica with the service's grace period (15 min upstream), which is there for a worker finishing
    its job. An idle worker exits on its stop signal at once; one that does not within :data:`IDLE_STOP_WAIT` seconds
    while the database shows it holds no job is stuck (cut off from its network in the middle of a query, say) and is
    killed. Everything else keeps its grace period. Returns :func:`stop_idle`'s outcome.
    """
    by_name = {item["name"]: item for item in replicas if item.get("running")}
    if not by_name:
        return {}

    def terminate(name: str) -> None:
        attrs = engine.inspect(by_name[name]["id"]) or {}
        engine.signal(by_name[name]["id"], (attrs.get("Config") or {}).get("StopSignal") or "SIGTERM")

    def running(name: str) -> bool:
        attrs = engine.inspect(by_name[name]["id"])
        return bool(attrs and (attrs.get("State") or {}).get("Running"))

    return stop_idle(
        sorted(by_name),
        terminate,
        running,
        lambda names: confirmed_idle(engine, [by_name[name] for name in names], db),
        lambda name: engine.signal(by_name[name]["id"]),
    )
