# SPDX-License-Identifier: GPL-3.0-or-later
"""Unit tests of the queue reader's pure parts (the SQL itself runs against the stand-in's PostgreSQL
in tests/integration/test_sync_facts.py)."""

from __future__ import annotations

import json

import pytest

from ansible_collections.fibreflow.qfieldcloud.plugins.module_utils import database as db_sql
from ansible_collections.fibreflow.qfieldcloud.plugins.module_utils import queue


@pytest.mark.parametrize(
    ("message", "kind"),
    [
        ('FATAL:  password authentication failed for user "qfc"', "auth"),
        ('FATAL:  role "nobody" does not exist', "auth"),
        ('FATAL:  database "nope" does not exist', "auth"),
        ("FATAL:  no pg_hba.conf entry for host", "auth"),
        ('could not translate host name "dbx" to address: Name or service not known', "unreachable"),
        ('connection to server at "172.18.0.2", port 5432 failed: Connection refused', "unreachable"),
        ('connection to server at "10.0.0.1", port 5432 failed: timeout expired', "unreachable"),
        ("something odd", "other"),
    ],
)
def test_classify_error(message, kind):
    assert queue.classify_error(message) == kind


def row(**over):
    base = {
        "rec": False,
        "ver": "15.4",
        "job": True,
        "pp": True,
        "cp": False,
        "delta": True,
        "mig": True,
        "cron": True,
        "constance": False,
        "applyjobdelta": True,
        "cols": [["project_project", "locked_at"]],
    }
    base.update(over)
    return list(base.values())


def test_parse_catalog_current_generation():
    cat = queue.parse_catalog(row())
    assert cat["generation"] == "project_project"
    assert cat["lock_column"] == "locked_at"
    assert cat["tables_present"] is True
    assert cat["missing_tables"] == []


def test_parse_catalog_legacy_generation():
    cat = queue.parse_catalog(row(pp=False, cp=True, cols='[["core_project", "is_locked"]]'))
    assert cat["generation"] == "core_project"
    assert cat["lock_column"] == "is_locked"
    assert "p.is_locked" in db_sql.queue_sql(cat)
    assert "core_project p" in db_sql.queue_sql(cat)


def test_parse_catalog_empty_database():
    cat = queue.parse_catalog(
        row(job=False, pp=False, mig=False, cron=False, delta=False, constance=False, applyjobdelta=False, cols=[])
    )
    assert cat["tables_present"] is False
    assert cat["missing_tables"] == ["core_job", "project", "django_migrations"]


def test_queue_sql_is_one_statement_with_optional_parts():
    cat = queue.parse_catalog(row(delta=False, cron=False))
    sql = db_sql.queue_sql(cat)
    assert sql.count("SELECT json_build_object(") == 1
    assert "core_delta" not in sql
    assert "django_cron_cronjoblog" not in sql
    assert "locked_at IS NOT NULL" in sql
    full = db_sql.queue_sql(queue.parse_catalog(row()))
    assert "core_delta" in full
    assert "django_cron_cronjoblog" in full


def test_summarise_queue_handles_unknown_status():
    doc = {
        "counts": [["pending", "package", 2], ["weird_status", "package", 1], ["finished", "delta_apply", 5]],
        "claimable_pending": 1,
        "oldest_claimable_pending_age_s": 12.345,
        "overdue": [["id1", "queued", "package", 1900.2]],
        "overdue_queued": 1,
        "overdue_started": 0,
        "failed_last_hour": 0,
        "locked_projects": 1,
        "pending_deltas": 0,
    }
    q = queue.summarise_queue(doc)
    assert q["counts_by_status"] == {"pending": 2, "weird_status": 1, "finished": 5}
    assert q["counts_by_type"] == {"package": 3, "delta_apply": 5}
    assert q["counts"]["weird_status"] == {"package": 1}
    assert q["oldest_claimable_pending_age_s"] == 12.3
    assert q["overdue_jobs"] == [{"id": "id1", "status": "queued", "type": "package", "age_s": 1900.2}]
    assert q["pending_deltas"] == 0
    assert q["oldest_pending_age_s"] is None


def test_read_database_connect_failure_is_a_finding():
    def refuse(**kwargs):
        assert kwargs["connect_timeout"] == 3
        assert "statement_timeout" in kwargs["options"]
        raise RuntimeError('FATAL:  password authentication failed for user "u"')

    database, q = queue.read_database({"host": "h", "connect_timeout": 3, "password": "pw"}, 600, connect=refuse)
    assert database["reachable"] is False
    assert database["error_kind"] == "auth"
    assert q == {}


class FakeCursor:
    def __init__(self, results):
        self.results = results
        self.queries = []

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def execute(self, sql, params=None):
        self.queries.append((sql, params))

    def fetchone(self):
        return self.results.pop(0)


class FakeConn:
    def __init__(self, results):
        self.cur = FakeCursor(results)
        self.closed = False
        self.autocommit = False

    def cursor(self):
        return self.cur

    def close(self):
        self.closed = True


def test_read_database_two_round_trips():
    doc = {"counts": [], "claimable_pending": 0, "migrations_applied": 7, "job_statuses": {"j": "started"}}
    conn = FakeConn([row(), [doc]])
    job = "0b0e8a6e-4f3c-4d7a-9c55-2f1f8e0f6a11"
    database, q = queue.read_database({"host": "h"}, 600, [job, "not-a-uuid"], connect=lambda **kw: conn)
    assert database["reachable"] is True
    assert database["round_trips"] == 2
    assert database["job_statuses"] == {"j": "started"}
    assert q["claimable_pending"] == 0
    assert conn.closed
    # a label value that is not a uuid never reaches the uuid[] cast
    assert conn.cur.queries[1][1] == {"timeout": 600.0, "use_constance": True, "job_ids": [job], "claims": "{}"}
    assert (database["job_timeout_s"], database["job_timeout_source"]) == (600.0, "default")


def test_read_database_without_tables_stops_after_catalog():
    conn = FakeConn([row(job=False, pp=False, cols=[])])
    database, q = queue.read_database({"host": "h"}, 600, connect=lambda **kw: conn)
    assert database["round_trips"] == 1
    assert database["tables_present"] is False
    assert q == {}


def test_read_database_migrations_table_empty():
    conn = FakeConn([row(), [{"counts": [], "migrations_applied": 0}]])
    database = queue.read_database({"host": "h"}, 600, connect=lambda **kw: conn)[0]
    assert database["tables_present"] is False


def test_the_timeout_comes_from_constance_before_v26_24_and_from_the_environment_after():
    sql = db_sql.queue_sql(queue.parse_catalog(row(constance=True)))
    assert "FROM constance_constance WHERE key = 'WORKER_TIMEOUT_S'" in sql
    assert "CASE WHEN %(use_constance)s THEN" in sql
    assert "make_interval(secs => (SELECT s FROM timeout))" in sql
    assert "constance_constance" not in db_sql.queue_sql(queue.parse_catalog(row()))
    doc = {"counts": [], "migrations_applied": 3, "job_timeout_s": 3600, "job_timeout_from_constance": True}
    conn = FakeConn([row(constance=True), [doc]])
    database = queue.read_database({"host": "h"}, 600, connect=lambda **kw: conn)[0]
    assert (database["job_timeout_s"], database["job_timeout_source"]) == (3600.0, "constance_constance")
    conn = FakeConn([row(constance=True), [{**doc, "job_timeout_s": 900, "job_timeout_from_constance": False}]])
    database = queue.read_database({"host": "h"}, 900, connect=lambda **kw: conn, job_timeout_source="environment")[0]
    assert (database["job_timeout_s"], database["job_timeout_source"]) == (900.0, "environment")
    assert conn.cur.queries[1][1]["use_constance"] is False


def test_ended_jobs_are_counted_by_when_they_ended_within_a_bounded_scan():
    sql = db_sql.queue_sql(queue.parse_catalog(row()))
    assert "coalesce(finished_at, docker_finished_at, started_at, updated_at) > now() - interval '1 hour'" in sql
    assert f"created_at > now() - interval '{db_sql.ENDED_LOOKBACK}' OR updated_at > now() - interval '1 hour'" in sql
    assert "'in_flight'" in sql and "core_applyjobdelta" in sql


def test_summarise_queue_keeps_the_in_flight_rows_without_the_recheck_texts():
    item = {
        "id": "A",
        "status": "queued",
        "type": "package",
        "project_id": "P",
        "created_at": 1.0,
        "started_at": None,
        "since": 2.0,
        "deltas": 0,
        "updated_text": "x",
        "started_text": None,
    }
    q = queue.summarise_queue({"in_flight": [item], "read_at": 5})
    assert q["in_flight_jobs"] == [
        {
            "id": "a",
            "status": "queued",
            "type": "package",
            "project_id": "p",
            "created_at": 1.0,
            "started_at": None,
            "since": 2.0,
            "deltas": 0,
        }
    ]
    assert q["read_at"] == 5.0


def test_a_queued_jobs_claim_time_from_the_worker_log_is_a_sign():
    conn = FakeConn([row(), [{"counts": [], "migrations_applied": 1}]])
    job = "0b0e8a6e-4f3c-4d7a-9c55-2f1f8e0f6a11"
    queue.read_database({"host": "h"}, 600, connect=lambda **kw: conn, claims={job.upper(): 12.5, "nope": 1.0})
    sql, params = conn.cur.queries[1]
    assert json.loads(params["claims"]) == {job: 12.5}
    assert sql.count("%(claims)s::jsonb ->> j.id::text") == 2  # overdue and in_flight


def test_qgis4_projects_are_counted_only_where_projects_have_a_qgis_version():
    with_version = queue.parse_catalog(
        row(cols='[["project_project", "locked_at"], ["project_project", "qgis_version"]]')
    )
    assert with_version["has_qgis_version"] is True
    assert "split_part(p.qgis_version, '.', 1) = '4'" in db_sql.queue_sql(with_version)
    without = queue.parse_catalog(row())
    assert without["has_qgis_version"] is False
    assert "qgis4_projects" not in db_sql.queue_sql(without)
    assert queue.summarise_queue({"qgis4_projects": 2})["qgis4_projects"] == 2
    assert queue.summarise_queue({})["qgis4_projects"] is None
