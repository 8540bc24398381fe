# Copyright (c) 2025, fibreflow
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The QFieldCloud database, the one home of the psycopg2 connection and of every SQL statement.

Statements: the schema catalogue (:data:`CATALOG_SQL`) and the one queue statement (:func:`queue_sql`) that
``qfc_sync_facts`` reads, the job statuses the drain reads (:func:`job_statuses`), the in-flight jobs and the
recovery transaction of orphaned jobs (:func:`read_in_flight`, :func:`recover`). What the numbers mean lives beside
the callers (``queue.py``, ``orphans.py``, ``drain.py``); psycopg2 is imported behind a guard.
"""

from __future__ import annotations

import json
import re
import traceback
from typing import Any, Iterable

try:
    import psycopg2

    HAS_PSYCOPG2 = True
    PSYCOPG2_IMPORT_ERROR = None
except ImportError:  # reported by the module with missing_required_lib()
    psycopg2 = None
    HAS_PSYCOPG2 = False
    PSYCOPG2_IMPORT_ERROR = traceback.format_exc()

DEFAULT_PORT = 5432
# Job ids come from container labels, which anyone can set: only uuids reach the ``uuid[]`` cast.
UUID_RE = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")
# The job statuses of a job a worker holds (claimed or running).
IN_FLIGHT = ("queued", "started")
# At most this many in-flight jobs are read (oldest first).
IN_FLIGHT_LIMIT = 50


# ---------------------------------------------------------------------------------------------- connection
def connection_params(db: dict[str, Any], timeout: float = 5, application_name: str = "fibreflow.qfieldcloud") -> dict:
    """psycopg2 ``connect`` keywords from ``{host, port, dbname, user, password, sslmode}``.

    Every statement gets a ``statement_timeout`` of the connect timeout: a database that answers too slowly (a
    lock, an overloaded server) is a finding within about the module's timeout, not a hang.
    """
    connect_timeout = int(max(1, timeout))
    return {
        "host": db["host"],
        "port": int(db.get("port") or DEFAULT_PORT),
        "dbname": db.get("dbname"),
        "user": db.get("user"),
        "password": db.get("password"),
        "sslmode": db.get("sslmode") or "prefer",
        "connect_timeout": connect_timeout,
        "application_name": application_name,
        "options": f"-c statement_timeout={connect_timeout * 1000}",
    }


def connect(**params: Any) -> Any:
    """Open a psycopg2 connection (raises what psycopg2 raises)."""
    return psycopg2.connect(**params)


def open_db(db: dict[str, Any], timeout: float = 5, application_name: str = "fibreflow-qfc_worker") -> Any:
    """A connection to ``db`` (see :func:`connection_params`), or ``None`` when it cannot be opened."""
    if not db or not HAS_PSYCOPG2:
        return None
    try:
        return connect(**connection_params(db, timeout, application_name))
    except Exception:  # the database cannot be read: callers fall back (qfc_sync_facts reports it)
        return None


JOB_STATUSES_SQL = "SELECT id::text, status FROM core_job WHERE id::text = ANY(%s)"


def job_statuses(
    db: dict[str, Any] | None, job_ids: list[str], timeout: float = 5, connect_always: bool = False
) -> dict[str, str] | None:
    """``{job id: status}`` for ``job_ids`` with one query, or ``None`` when the database cannot be read.

    With no ids it returns ``{}`` without connecting, unless ``connect_always`` asks to know that the database
    answers."""
    if not job_ids and not connect_always:
        return {}
    conn = open_db(db or {}, timeout)
    if conn is None:
        return None
    try:
        with conn.cursor() as cur:
            cur.execute(JOB_STATUSES_SQL, (list(job_ids),))
            return {row[0].lower(): row[1] for row in cur.fetchall()}
    except Exception:
        return None
    finally:
        conn.close()


# ---------------------------------------------------------------------------------------------- facts
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
        f"  (SELECT j.id, j.status, j.type, {since_sql('j', True)} AS since",
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
        f" ({in_flight_sql(bool(catalog.get('has_applyjobdelta')), IN_FLIGHT_LIMIT, True)}) f),",
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


# ---------------------------------------------------------------------------------------------- orphans
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


def in_flight_sql(has_applyjobdelta: bool, limit: int = IN_FLIGHT_LIMIT, with_claims: bool = False) -> str:
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


def recover(conn: Any, jobs: Iterable[dict[str, Any]], note: str, feedback: dict[str, Any]) -> list[dict[str, Any]]:
    """Apply each job's ``action`` in one transaction; return the jobs actually changed. A failed job gets ``note``
    appended to its ``output`` and ``feedback`` as its feedback.

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
                "note": note,
                "feedback": json.dumps(feedback),
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
