# Copyright (c) 2025, fibreflow
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Job-queue health of a QFieldCloud database, read with psycopg2 in two SQL round trips.

Round trip 1 (``database.CATALOG_SQL``): ``pg_is_in_recovery()`` and which tables/columns exist, which tells
the schema generation (``project_project`` + ``locked_at`` from v26.21/v25.26, ``core_project`` +
``is_locked`` before) and whether migrations ran. Round trip 2 (``database.queue_sql``): one statement with
CTEs returning one JSON document with every number, whatever the queue length.

Public API:

- :func:`read_database` ``(conn_params, job_timeout_s, job_ids=(), connect=None) -> dict``: connect, read,
  close; never raises for an unreachable database or refused credentials (those are findings).
- :func:`classify_error` ``(message) -> str``: ``auth``, ``unreachable`` or ``other``.
- :func:`parse_catalog` ``(row) -> dict`` and :func:`summarise_queue` ``(doc) -> dict``: the pure halves.

The statements and the connection live in ``database.py``.

Unknown job status or type values are counted like any other; only ``pending``, ``queued`` and
``started`` have a meaning here.
"""

from __future__ import annotations

import contextlib
import json
import time
from typing import Any, Callable, Iterable

from ansible_collections.fibreflow.qfieldcloud.plugins.module_utils import database as db_mod

CORE_TABLES = ("core_job",)
ACTIVE_STATUSES = ("queued", "started")


def classify_error(message: str) -> str:
    """Tell a refused login (``auth``) from an unreachable server (``unreachable``) or anything else."""
    text = (message or "").lower()
    auth_signs = (
        "password authentication failed",
        "authentication failed",
        "no password supplied",
        'role "',
        "does not exist",
        "no pg_hba.conf entry",
        "permission denied for database",
    )
    if any(sign in text for sign in auth_signs) and "could not translate host name" not in text:
        return "auth"
    unreachable_signs = (
        "could not connect",
        "connection refused",
        "timeout expired",
        "timed out",
        "could not translate host name",
        "no route to host",
        "network is unreachable",
        "server closed the connection",
        "name or service not known",
        "connection to server",
        "the database system is starting up",
        "the database system is shutting down",
    )
    if any(sign in text for sign in unreachable_signs):
        return "unreachable"
    return "other"


def parse_catalog(row: Iterable[Any]) -> dict[str, Any]:
    """Turn the row of :data:`CATALOG_SQL` into the schema description used by :func:`queue_sql`."""
    values = tuple(row)
    (in_recovery, version, has_job, has_pp, has_cp, has_delta, has_migrations, has_cron) = values[:8]
    has_constance, has_applyjobdelta = values[8:-1] if len(values) == 11 else (False, False)
    columns = values[-1]
    if isinstance(columns, str):
        columns = json.loads(columns)
    cols = set(map(tuple, columns or []))
    project_table = None
    lock_column = None
    # The newer generation wins when both tables exist (an upgrade in progress keeps the old one).
    for table in ("project_project", "core_project"):
        present = has_pp if table == "project_project" else has_cp
        if not present:
            continue
        project_table = table
        if (table, "locked_at") in cols:
            lock_column = "locked_at"
        elif (table, "is_locked") in cols:
            lock_column = "is_locked"
        break
    if project_table == "project_project":
        generation = "project_project"
    elif project_table == "core_project":
        generation = "core_project"
    else:
        generation = None
    missing = [name for name, ok in (("core_job", has_job), ("project", project_table is not None)) if not ok]
    if not has_migrations:
        missing.append("django_migrations")
    return {
        "in_recovery": bool(in_recovery),
        "server_version": version,
        "generation": generation,
        "project_table": project_table,
        "lock_column": lock_column,
        # The project's QGIS version (upstream's Project.qgis_version): the worker runs 4.x projects on qgis4.
        "has_qgis_version": project_table is not None and (project_table, "qgis_version") in cols,
        "has_core_job": bool(has_job),
        "has_core_delta": bool(has_delta),
        "has_migrations": bool(has_migrations),
        "has_cronjoblog": bool(has_cron),
        "has_constance": bool(has_constance),
        "has_applyjobdelta": bool(has_applyjobdelta and has_delta),
        "missing_tables": missing,
        "tables_present": bool(has_job) and project_table is not None,
    }


def _row(item: Any) -> list[Any]:
    """An ``in_flight`` element (an object keyed by column name) in the column order of ``orphans.in_flight_row``."""
    if isinstance(item, dict):
        keys = ("id", "status", "type", "project_id", "created_at", "started_at", "since", "deltas")
        return [*(item.get(k) for k in keys), item.get("updated_text"), item.get("started_text")]
    return list(item)


def summarise_queue(doc: dict[str, Any]) -> dict[str, Any]:
    """Turn the JSON document of :func:`queue_sql` into the ``queue`` facts."""
    by_status: dict[str, int] = {}
    by_type: dict[str, int] = {}
    matrix: dict[str, dict[str, int]] = {}
    for raw_status, raw_type, count in doc.get("counts") or []:
        status = str(raw_status)
        job_type = str(raw_type)
        by_status[status] = by_status.get(status, 0) + int(count)
        by_type[job_type] = by_type.get(job_type, 0) + int(count)
        matrix.setdefault(status, {})[job_type] = int(count)

    def num(key: str) -> float | None:
        value = doc.get(key)
        return None if value is None else round(float(value), 1)

    return {
        "checked": True,
        "counts_by_status": by_status,
        "counts_by_type": by_type,
        "counts": matrix,
        "claimable_pending": int(doc.get("claimable_pending") or 0),
        "oldest_claimable_pending_age_s": num("oldest_claimable_pending_age_s"),
        "oldest_pending_age_s": num("oldest_pending_age_s"),
        "overdue_queued": int(doc.get("overdue_queued") or 0),
        "overdue_started": int(doc.get("overdue_started") or 0),
        "overdue_jobs": [
            {"id": str(i), "status": s, "type": t, "age_s": round(float(a), 1)}
            for i, s, t, a in doc.get("overdue") or []
        ],
        "in_flight_jobs": [
            {key: value for key, value in db_mod.in_flight_row(_row(item)).items() if not key.endswith("_text")}
            for item in doc.get("in_flight") or []
        ],
        "read_at": None if doc.get("read_at") is None else float(doc["read_at"]),
        "failed_last_hour": int(doc.get("failed_last_hour") or 0),
        "finished_last_hour": int(doc.get("finished_last_hour") or 0),
        "pending_deltas": None if doc.get("pending_deltas") is None else int(doc["pending_deltas"]),
        "locked_projects": int(doc.get("locked_projects") or 0),
        # None when the project table has no QGIS version (then nobody can say whether qgis4 is needed).
        "qgis4_projects": None if doc.get("qgis4_projects") is None else int(doc["qgis4_projects"]),
    }


def read_database(
    conn_params: dict[str, Any],
    job_timeout_s: float,
    job_ids: Iterable[str] = (),
    connect: Callable[..., Any] | None = None,
    job_timeout_source: str = "default",
    claims: dict[str, float] | None = None,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Read database and queue facts.

    :param conn_params: psycopg2 ``connect`` keywords (``host``, ``port``, ``dbname``, ``user``,
        ``password``, ``sslmode``, ``connect_timeout``).
    :param job_timeout_s: queued/started jobs older than this are overdue (the caller's value).
    :param job_timeout_source: where ``job_timeout_s`` comes from: ``option`` (given by the user) or
        ``environment`` (``QFIELDCLOUD_WORKER_TIMEOUT_S`` in the worker's environment, v26.24 and later) hold;
        anything else (``default``) gives way to ``WORKER_TIMEOUT_S`` in ``constance_constance`` (the setting
        before v26.24, which an admin may have raised) when the table holds it.
    :param claims: ``{job id: epoch seconds}`` of the ``Dequeued job`` lines of running workers' current processes
        (a queued job's claim time, which the database does not record).
    :param job_ids: ids of job containers' jobs whose status is wanted (orphan detection).
    :param connect: the connect function (``psycopg2.connect``); imported lazily when ``None``.
    :returns: ``(database, queue)``: ``database`` has ``checked``, ``reachable``, ``error_kind``,
        ``error``, ``in_recovery``, ``generation``, ``lock_column``, ``tables_present``,
        ``missing_tables``, ``migrations_applied``, ``cron_last``, ``job_statuses``, ``job_timeout_s``,
        ``job_timeout_source`` (``constance_constance`` or the given source), ``round_trips``, ``duration_s``;
        ``queue`` is :func:`summarise_queue`'s dict (``{}`` when unreadable).
    """
    if connect is None:
        connect = db_mod.connect
    started = time.monotonic()
    database: dict[str, Any] = {
        "checked": True,
        "host": conn_params.get("host"),
        "port": conn_params.get("port"),
        "name": conn_params.get("dbname"),
        "user": conn_params.get("user"),
        "reachable": False,
        "error_kind": None,
        "error": None,
        "round_trips": 0,
        "job_timeout_s": float(job_timeout_s),
        "job_timeout_source": job_timeout_source,
    }
    queue: dict[str, Any] = {}
    params = dict(conn_params)
    params.setdefault("connect_timeout", 5)
    params.setdefault("application_name", "fibreflow.qfieldcloud.qfc_sync_facts")
    # One timeout per statement: a database that answers too slowly (a lock, an overloaded server) is a
    # finding within about the module's timeout, not a hang.
    timeout_ms = int(max(1, params["connect_timeout"]) * 1000)
    params.setdefault("options", f"-c statement_timeout={timeout_ms}")
    conn = None
    try:
        conn = connect(**params)
    except Exception as exc:  # psycopg2.OperationalError and friends: a finding, not a failure
        message = str(exc).strip()
        database.update(error=message, error_kind=classify_error(message))
        database["duration_s"] = round(time.monotonic() - started, 3)
        return database, queue
    try:
        conn.autocommit = True
        database["reachable"] = True
        with conn.cursor() as cur:
            cur.execute(db_mod.CATALOG_SQL)
            database["round_trips"] += 1
            catalog = parse_catalog(cur.fetchone())
            database.update(
                {
                    "in_recovery": catalog["in_recovery"],
                    "server_version": catalog["server_version"],
                    "generation": catalog["generation"],
                    "lock_column": catalog["lock_column"],
                    "tables_present": catalog["tables_present"],
                    "missing_tables": catalog["missing_tables"],
                }
            )
            if catalog["tables_present"]:
                uuids = [str(i) for i in job_ids if db_mod.UUID_RE.match(str(i))]
                use_constance = job_timeout_source not in ("option", "environment")
                claimed = {
                    str(k).lower(): float(v) for k, v in (claims or {}).items() if db_mod.UUID_RE.match(str(k)) and v
                }
                query = {
                    "timeout": float(job_timeout_s),
                    "use_constance": use_constance,
                    "job_ids": uuids,
                    "claims": json.dumps(claimed),
                }
                cur.execute(db_mod.queue_sql(catalog), query)
                database["round_trips"] += 1
                doc = cur.fetchone()[0]
                if isinstance(doc, str):
                    doc = json.loads(doc)
                queue = summarise_queue(doc)
                database["migrations_applied"] = doc.get("migrations_applied")
                database["job_statuses"] = doc.get("job_statuses") or {}
                if doc.get("job_timeout_s") is not None:
                    database["job_timeout_s"] = float(doc["job_timeout_s"])
                if doc.get("job_timeout_from_constance"):
                    database["job_timeout_source"] = "constance_constance"
                cron = doc.get("cron_last")
                database["cron_last"] = cron
                if catalog["has_migrations"] and not doc.get("migrations_applied"):
                    database["tables_present"] = False
                    database["missing_tables"] = [*catalog["missing_tables"], "django_migrations rows"]
    except Exception as exc:  # a query error on a half-migrated schema: report it, do not crash
        message = str(exc).strip()
        database.update(error=message, error_kind=classify_error(message) if not database["reachable"] else "query")
    finally:
        with contextlib.suppress(Exception):
            conn.close()
    database["duration_s"] = round(time.monotonic() - started, 3)
    return database, queue
