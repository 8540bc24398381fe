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

import re
import time
from typing import Any, Callable

DEQUEUED_RE = re.compile(r"Dequeued job ([0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12})")
IN_FLIGHT = ("queued", "started")
DEQUEUE_BANNER = "Dequeue QFieldCloud Jobs"
LOG_TAIL = 2000
IDLE_STOP_WAIT = 15.0


def last_dequeued_job(log_text: str) -> str | None:
    """Return the id of the last job a worker log says it dequeued, or ``None``."""
    found = DEQUEUED_RE.findall(log_text or "")
    return found[-1].lower() if found else None


def never_reached_database(log_text: str) -> bool:
    """Tell whether a worker process is still in the entrypoint's wait for an unreachable database.

    True when its log says ``Postgres isn't ready`` but neither ``Postgres is ready`` nor the dequeue banner:
    the dequeue loop has not started, and when the wait ends it cannot claim a job from a database it
    cannot reach. Such a process holds no job, so it may be stopped without its grace period (the
    entrypoint's wait ignores SIGTERM and would otherwise delay a repair by up to 30 s).
    """
    text = log_text or ""
    return "Postgres isn't ready" in text and "Postgres is ready" not in text and DEQUEUE_BANNER not in text


def busy_replicas(
    replicas: list[dict[str, Any]],
    job_status: dict[str, str] | None,
    running_job_containers: set[str] | None = None,
) -> dict[str, str]:
    """Return ``{replica name: job id}`` for every replica that is running a job.

    :param replicas: dicts with ``name``, ``running`` and ``last_job`` (from :func:`last_dequeued_job`).
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
