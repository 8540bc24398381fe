# Copyright (c) 2025, fibreflow
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Prometheus textfile metrics of a QFieldCloud stack (for node_exporter's textfile collector).

- :func:`render_metrics` ``(facts, problems, now=None) -> str``: the text exposition format.
- :func:`write_textfile` ``(path, text) -> bool``: atomic write (temporary file in the same directory,
  fsync, ``os.replace``); the file keeps its mode, a new one gets 0644. Returns whether the content changed
  (the timestamp sample is ignored for that comparison).

Only numbers and the label values project/code/severity/status/type/service are written: never a secret.
"""

from __future__ import annotations

import time
from typing import Any

from ansible_collections.fibreflow.qfieldcloud.plugins.module_utils import files
from ansible_collections.fibreflow.qfieldcloud.plugins.module_utils.problems import (
    CATALOGUE,
    FACTS_CODES,
    client_ready,
    sync_ready,
)

PREFIX = "qfieldcloud"
TIMESTAMP_METRIC = f"{PREFIX}_sync_facts_timestamp_seconds"
DEFAULT_MODE = 0o644


def _escape(value: Any) -> str:
    return str(value).replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(labels: dict[str, Any]) -> str:
    if not labels:
        return ""
    return "{" + ",".join(f'{k}="{_escape(v)}"' for k, v in labels.items()) + "}"


def _num(value: Any) -> str:
    if value is None:
        return "NaN"
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, int):
        return str(value)
    return repr(float(value))


class _Writer:
    def __init__(self) -> None:
        self.lines: list[str] = []
        self.seen: set[str] = set()

    def metric(self, name: str, help_text: str, samples: list[tuple[dict[str, Any], Any]], kind: str = "gauge"):
        full = f"{PREFIX}_{name}"
        if full not in self.seen:
            self.seen.add(full)
            self.lines.append(f"# HELP {full} {help_text}")
            self.lines.append(f"# TYPE {full} {kind}")
        for labels, value in samples:
            self.lines.append(f"{full}{_labels(labels)} {_num(value)}")


def render_metrics(facts: dict[str, Any], problems: list[dict[str, Any]], now: float | None = None) -> str:
    """Render the facts and problems of one stack as Prometheus text exposition."""
    project = (facts.get("project") or {}).get("name") or "qfieldcloud"
    base = {"project": project}
    out = _Writer()
    out.metric("sync_ready", "1 when a job created now would finish", [(base, sync_ready(problems))])
    out.metric(
        "client_ready", "1 when devices reach the server at the URL they are given", [(base, client_ready(problems))]
    )
    found = {p["code"]: p.get("severity") for p in problems}
    out.metric(
        "problem",
        "1 when the problem code is present (catalogue: docs/problems.md)",
        [
            (dict(base, code=code, severity=found.get(code, CATALOGUE[code]["severity"])), code in found)
            for code in FACTS_CODES
        ],
    )
    daemon = facts.get("daemon") or {}
    out.metric("docker_reachable", "1 when the Docker daemon answered", [(base, bool(daemon.get("reachable")))])
    services = facts.get("services") or {}
    out.metric(
        "service_running_containers",
        "Running containers per compose service",
        [(dict(base, service=name), int(svc.get("running") or 0)) for name, svc in sorted(services.items())],
    )
    worker = facts.get("worker") or {}
    out.metric(
        "worker_replicas_expected", "QFIELDCLOUD_WORKER_REPLICAS", [(base, int(worker.get("replicas_expected") or 0))]
    )
    out.metric(
        "worker_replicas_running", "Running compose worker replicas", [(base, int(worker.get("replicas_running") or 0))]
    )
    out.metric(
        "worker_hand_started_running",
        "Running workers started outside compose",
        [(base, int(worker.get("hand_started_running") or 0))],
    )
    out.metric(
        "worker_up",
        "1 when at least one worker (compose replica or started by hand) is running",
        [(base, int(worker.get("replicas_running") or 0) + int(worker.get("hand_started_running") or 0) > 0)],
    )
    database = facts.get("database") or {}
    if database.get("checked"):
        out.metric(
            "db_reachable", "1 when the database accepted a connection", [(base, bool(database.get("reachable")))]
        )
    queue = facts.get("queue") or {}
    if queue.get("checked"):
        out.metric(
            "jobs",
            "Jobs by status and type",
            [
                (dict(base, status=status, type=job_type), count)
                for status, types in sorted((queue.get("counts") or {}).items())
                for job_type, count in sorted(types.items())
            ],
        )
        out.metric(
            "claimable_pending_jobs", "Pending jobs a worker could claim now", [(base, queue.get("claimable_pending"))]
        )
        out.metric(
            "oldest_claimable_pending_age_seconds",
            "Age of the oldest claimable pending job (0 when none)",
            [(base, queue.get("oldest_claimable_pending_age_s") or 0)],
        )
        out.metric(
            "overdue_jobs",
            "queued/started jobs older than the job timeout",
            [
                (dict(base, status="queued"), queue.get("overdue_queued")),
                (dict(base, status="started"), queue.get("overdue_started")),
            ],
        )
        out.metric("failed_jobs_last_hour", "Jobs failed in the last hour", [(base, queue.get("failed_last_hour"))])
        out.metric(
            "finished_jobs_last_hour", "Jobs finished in the last hour", [(base, queue.get("finished_last_hour"))]
        )
        if queue.get("pending_deltas") is not None:
            out.metric("pending_deltas", "Deltas waiting to be applied", [(base, queue.get("pending_deltas"))])
        out.metric(
            "locked_projects", "Locked projects (their jobs are not picked up)", [(base, queue.get("locked_projects"))]
        )
    app = facts.get("app") or {}
    if app.get("checked"):
        out.metric("app_status_ok", "1 when /api/v1/status/ reports every component ok", [(base, bool(app.get("ok")))])
    cron = facts.get("cron") or {}
    if cron.get("checked") and cron.get("last_run_age_s") is not None:
        out.metric("cron_last_run_age_seconds", "Age of the last django_cron run", [(base, cron.get("last_run_age_s"))])
    out.metric(
        "orphan_job_containers",
        "Left-over QGIS job containers",
        [(base, len(facts.get("orphan_job_containers") or []))],
    )
    out.metric(
        "sync_facts_duration_seconds", "Time taken to gather the facts", [(base, facts.get("duration_s") or 0.0)]
    )
    out.metric(
        "sync_facts_timestamp_seconds",
        "When the facts were gathered (Unix time)",
        [(base, round(now or time.time(), 3))],
    )
    return "\n".join(out.lines) + "\n"


def _without_timestamp(text: str) -> str:
    return "\n".join(line for line in text.splitlines() if not line.startswith(TIMESTAMP_METRIC))


def write_textfile(path: str, text: str) -> bool:
    """Write ``text`` to ``path`` atomically; return whether the content (timestamp aside) changed.

    The directory must exist. The temporary file is created beside the target (same filesystem, so that
    ``os.replace`` is atomic and node_exporter never reads a half-written file) with a name starting with
    a dot and ending in ``.tmp`` (ignored by the textfile collector, which reads ``*.prom``).
    """
    try:
        with open(path, encoding="utf-8") as handle:
            previous = handle.read()
    except FileNotFoundError:
        previous = None
    files.atomic_write(path, text, mode=DEFAULT_MODE)  # an existing file keeps its own mode
    return previous is None or _without_timestamp(previous) != _without_timestamp(text)
