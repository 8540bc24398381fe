# Copyright (c) 2025, fibreflow
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Job-queue health of a QFieldCloud database, read with psycopg2 in two SQL round trips.

Round trip 1 (:data:`CATALOG_SQL`): ``pg_is_in_recovery()`` and which tables/columns exist, which tells
the schema generation (``project_project`` + ``locked_at`` from v26.21/v25.26, ``core_project`` +
``is_locked`` before) and whether migrations ran. Round trip 2 (:func:`queue_sql`): one statement with
CTEs returning one JSON document with every number, whatever the queue length.

Public API:

- :func:`read_database` ``(conn_params, job_timeout_s, job_ids=(), connect=None) -> dict``: connect, read,
  close; never raises for an unreachable database or refused credentials (those are findings).
- :func:`classify_error` ``(message) -> str``: ``auth``, ``unreachable`` or ``other``.
- :func:`parse_catalog` ``(row) -> dict`` and :func:`queue_sql` ``(catalog, ...)`` for tests.

Unknown job status or type values are counted like any other; only ``pending``, ``queued`` and
``started`` have a meaning here.
"""

from __future__ import annotations

import contextlib
import json
import re
import time
import traceback
from typing import Any, Callable, Iterable

from ansible_collections.fibreflow.qfieldcloud.plugins.module_utils import orphans as orphans_mod

try:
    import psycopg2

    HAS_PSYCOPG2 = True
    PSYCOPG2_IMPORT_ERROR = None
except ImportError:  # reported by the module with missing_required_lib()
    psycopg2 = None
    HAS_PSYCOPG2 = False
    PSYCOPG2_IMPORT_ERROR = traceback.format_exc()

CORE_TABLES = ("core_job",)
ACTIVE_STATUSES = ("queued", "started")
# Job ids come from container labels, which anyone can set: only uuids reach the ``uuid[]`` cast.
UUID_RE = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")

CATALOG_SQL = """
SELECT pg_is_in_recovery(),
       current_setting('server_version'),
       to_regclass('public.core_job') IS NOT NULL,
       to_regclass('public.project_project') IS NOT NULL,
       to_regclass('public.core_project') IS NOT NULL,
       to_regclass('public.core_delta') IS NOT NULL,
       to_regclass('public.django_migrations') IS NOT NULL,
       to_regclass('public.django_cron_cronjoblog') IS NOT NULL,
       to_regclass('public.constance_constance') IS NOT NULL,
       to_regclass('public.core_applyjobdelta') IS NOT NULL,
       (SELECT coalesce(json_agg(json_build_array(table_name, column_name)), '[]'::json)
          FROM information_schema.columns
         WHERE table_schema = 'public'
           AND table_name IN ('project_project', 'core_project')
           AND column_name IN ('locked_at', 'is_locked', 'qgis_version'))
"""


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


def _locked_expr(catalog: dict[str, Any], alias: str = "p") -> str:
    column = catalog.get("lock_column")
    if column == "locked_at":
        return f"({alias}.locked_at IS NOT NULL)"
    if column == "is_locked":
        return f"coalesce({alias}.is_locked, false)"
    return "false"


# Jobs counted by status and type: every open job, and every job created within this window. Finished
# jobs pile up for years on a real server; counting them all would read the whole table on every call.
COUNTS_WINDOW = "24 hours"
IN_FLIGHT_LIMIT = orphans_mod.LIMIT
# Jobs that ended in the last hour are looked for among the jobs created within this window (created_at index)
# and the jobs whose row was saved in the last hour (updated_at index): a job that waited longer than this
# before it ended is not counted.
ENDED_LOOKBACK = "7 days"
CONSTANCE_KEY = "WORKER_TIMEOUT_S"
# constance's database backend stores the value as text: JSON ({"__type__": "default", "__value__": 600}) or, in
# older releases, a plain number. Read with patterns, never a cast that could fail: anything else is NULL and the
# caller's timeout holds.
CONSTANCE_VALUE_SQL = (
    "(SELECT nullif(CASE WHEN value ~ '^\\s*[0-9]+(\\.[0-9]+)?\\s*$' THEN trim(value)::numeric"
    ' ELSE substring(value FROM \'"__value__"\\s*:\\s*"?([0-9]+(?:\\.[0-9]+)?)\')::numeric END, 0)'
    f" FROM constance_constance WHERE key = '{CONSTANCE_KEY}' LIMIT 1)"
)


def ended_sql(status: str) -> str:
    """When a job of ``status`` (``finished`` or ``failed``) ended, as well as upstream records it.

    A finished job has ``finished_at``. A failed one has it only when upstream's cron or the runner's exception
    path failed it; a job whose QGIS container failed has ``docker_finished_at`` (set as the container ended,
    just before the failure is saved); one that failed before its container ran has at least ``started_at``.
    ``updated_at`` comes last: upstream saves job rows with ``update_fields`` and it rarely moves.
    """
    if status == "finished":
        return "coalesce(finished_at, docker_finished_at, updated_at)"
    return "coalesce(finished_at, docker_finished_at, started_at, updated_at)"


def _ended_last_hour(status: str) -> str:
    return (
        f"(SELECT count(*) FROM core_job WHERE (created_at > now() - interval '{ENDED_LOOKBACK}'"
        " OR updated_at > now() - interval '1 hour')"
        f" AND status = '{status}' AND {ended_sql(status)} > now() - interval '1 hour')"
    )


def queue_sql(catalog: dict[str, Any]) -> str:
    """Return the single statement that reads the whole queue state.

    Parameters: ``%(timeout)s`` (seconds, a number: the caller's job timeout), ``%(use_constance)s`` (a boolean:
    whether ``WORKER_TIMEOUT_S`` in ``constance_constance``, the setting before v26.24, overrides it when the
    table holds it), ``%(job_ids)s`` (a list of job uuid strings, possibly empty; :func:`read_database` drops
    anything that is not a uuid) and ``%(claims)s`` (JSON text ``{job id: epoch seconds}``: when running workers'
    current processes logged ``Dequeued job <id>``, possibly ``{}``).

    ``overdue_*`` measure a job's age from the most recent sign of its state (``orphans.since_sql``): a started
    job from its ``started_at``; a queued one, whose claim upstream does not record, from the latest of its
    creation, its ``updated_at``, the end of the last other job of its project (the claim came after it) and the
    time a running worker logged its claim (``claims``).
    ``finished_last_hour`` / ``failed_last_hour`` count the jobs that ended in the last hour (:func:`ended_sql`),
    whenever they were created within :data:`ENDED_LOOKBACK`.

    Every part reads ``core_job`` through one of upstream's indexes (status, created_at, updated_at,
    project_id, primary key), so the cost follows the number of open or recent jobs, not the size of the job
    history. Only the CTEs that are referenced more than once (``timeout``, ``active``, ``claim``, ``overdue``)
    are materialised, and they hold open jobs only.
    """
    table = catalog["project_table"]
    locked = _locked_expr(catalog)
    constance = CONSTANCE_VALUE_SQL if catalog.get("has_constance") else "NULL::numeric"
    parts = [
        f"WITH setting AS (SELECT CASE WHEN %(use_constance)s THEN {constance} END AS v),",
        "timeout AS (SELECT coalesce(v, %(timeout)s::numeric)::float8 AS s, v IS NOT NULL AS from_constance"
        " FROM setting),",
        "active AS (SELECT DISTINCT project_id FROM core_job WHERE status IN ('queued', 'started')),",
        f"claim AS (SELECT count(*) AS n, min(j.created_at) AS oldest FROM core_job j LEFT JOIN {table} p"
        " ON p.id = j.project_id",
        f"  WHERE j.status = 'pending' AND NOT coalesce({locked}, false)",
        "    AND j.project_id NOT IN (SELECT project_id FROM active)),",
        "overdue AS (SELECT id, status, type, extract(epoch FROM now() - since) AS age FROM",
        f"  (SELECT j.id, j.status, j.type, {orphans_mod.since_sql('j', True)} AS since",
        "     FROM core_job j WHERE j.status IN ('queued', 'started')) s",
        "  WHERE since < now() - make_interval(secs => (SELECT s FROM timeout)))",
        "SELECT json_build_object(",
        "  'read_at', extract(epoch FROM now()),",
        "  'job_timeout_s', (SELECT s FROM timeout),",
        "  'job_timeout_from_constance', (SELECT from_constance FROM timeout),",
        "  'counts', (SELECT coalesce(json_agg(json_build_array(status, type, n)), '[]'::json) FROM",
        "    (SELECT status, type, count(*) AS n FROM core_job WHERE status IN ('pending', 'queued', 'started')",
        f"       OR created_at > now() - interval '{COUNTS_WINDOW}' GROUP BY status, type) c),",
        "  'claimable_pending', (SELECT n FROM claim),",
        "  'oldest_claimable_pending_age_s', (SELECT extract(epoch FROM now() - oldest) FROM claim),",
        "  'oldest_pending_age_s', (SELECT extract(epoch FROM now() - min(created_at)) FROM core_job"
        " WHERE status = 'pending'),",
        "  'overdue', (SELECT coalesce(json_agg(json_build_array(id, status, type, age) ORDER BY age DESC),"
        " '[]'::json) FROM (SELECT * FROM overdue ORDER BY age DESC LIMIT 20) o),",
        # Open jobs with what orphan detection needs (see orphans.py).
        "  'in_flight', (SELECT coalesce(json_agg(f), '[]'::json) FROM"
        f" ({orphans_mod.in_flight_sql(bool(catalog.get('has_applyjobdelta')), IN_FLIGHT_LIMIT, True)}) f),",
        "  'overdue_queued', (SELECT count(*) FROM overdue WHERE status = 'queued'),",
        "  'overdue_started', (SELECT count(*) FROM overdue WHERE status = 'started'),",
        f"  'failed_last_hour', {_ended_last_hour('failed')},",
        f"  'finished_last_hour', {_ended_last_hour('finished')},",
        f"  'locked_projects', (SELECT count(*) FROM {table} p WHERE {locked}),",
        (
            f"  'qgis4_projects', (SELECT count(*) FROM {table} p WHERE split_part(p.qgis_version, '.', 1) = '4'),"
            if catalog.get("has_qgis_version")
            else ""
        ),
        "  'job_statuses', (SELECT coalesce(json_object_agg(id::text, status), '{}'::json) FROM core_job"
        " WHERE id = ANY(%(job_ids)s::uuid[]))",
    ]
    if catalog.get("has_core_delta"):
        parts.append(",  'pending_deltas', (SELECT count(*) FROM core_delta WHERE last_status = 'pending')")
    if catalog.get("has_migrations"):
        parts.append(",  'migrations_applied', (SELECT count(*) FROM django_migrations)")
    if catalog.get("has_cronjoblog"):
        parts.append(
            ",  'cron_last', (SELECT json_build_object('code', code, 'start_time', start_time,"
            " 'end_time', end_time, 'is_success', is_success,"
            " 'age_s', extract(epoch FROM now() - coalesce(end_time, start_time)))"
            " FROM django_cron_cronjoblog ORDER BY start_time DESC LIMIT 1)"
        )
    parts.append(")")
    return "\n".join(parts)


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
            {key: value for key, value in orphans_mod.in_flight_row(_row(item)).items() if not key.endswith("_text")}
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
        connect = psycopg2.connect
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
            cur.execute(CATALOG_SQL)
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
                uuids = [str(i) for i in job_ids if UUID_RE.match(str(i))]
                use_constance = job_timeout_source not in ("option", "environment")
                claimed = {str(k).lower(): float(v) for k, v in (claims or {}).items() if UUID_RE.match(str(k)) and v}
                query = {
                    "timeout": float(job_timeout_s),
                    "use_constance": use_constance,
                    "job_ids": uuids,
                    "claims": json.dumps(claimed),
                }
                cur.execute(queue_sql(catalog), query)
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
