# SPDX-License-Identifier: GPL-3.0-or-later
"""Unit tests of orphans.py (jobs whose worker process is gone) and of the current-process log window."""

from __future__ import annotations

from ansible_collections.fibreflow.qfieldcloud.plugins.module_utils import orphans, problems, stack

A = "0b5e7c1e-0000-4000-8000-00000000000a"
B = "0b5e7c1e-0000-4000-8000-00000000000b"
C = "0b5e7c1e-0000-4000-8000-00000000000c"
START = orphans.docker_time("2026-11-29T08:25:15.918652878Z")


def test_docker_time_reads_nanoseconds_zones_and_never_started():
    assert START is not None
    assert orphans.docker_time("2026-11-29T08:25:15.918652Z") == START
    assert orphans.docker_time("2026-11-29T09:25:15.918652878+01:00") == START
    assert orphans.docker_time("2026-11-29T08:25:16Z") - START > 0.08
    assert orphans.docker_time("0001-01-01T00:00:00Z") is None
    assert orphans.docker_time("") is None
    assert orphans.docker_time(None) is None
    assert orphans.docker_time("yesterday") is None


def test_only_jobs_older_than_every_worker_process_and_not_held_are_orphaned():
    jobs = [
        {"id": A, "status": "queued", "type": "delta_apply", "touched": START - 60},
        {"id": B, "status": "started", "type": "delta_apply", "touched": START - 60},
        {"id": C, "status": "started", "type": "package", "touched": START - 60},
    ]
    found = orphans.find(jobs, held=set(), process_starts=[START, START + 30])
    assert [(job["id"], job["action"]) for job in found] == [(A, "requeue"), (B, "fail"), (C, "requeue")]
    # held by a replica's current process or a running QGIS container: not orphaned
    assert [job["id"] for job in orphans.find(jobs, held={A.upper(), C}, process_starts=[START])] == [B]
    # changed after (or just before) one worker process started: that process may have claimed it
    assert orphans.find(jobs, held=set(), process_starts=[START - 61 + orphans.MARGIN_S, START]) == []
    late = [{**jobs[0], "touched": START - orphans.MARGIN_S + 1}]
    assert orphans.find(late, held=set(), process_starts=[START]) == []


def test_nothing_is_orphaned_without_a_running_worker_or_a_known_start():
    jobs = [{"id": A, "status": "queued", "type": "package", "touched": START - 600}]
    assert orphans.find(jobs, held=set(), process_starts=[]) == []
    assert orphans.find(jobs, held=set(), process_starts=[None]) == []
    assert orphans.find([{**jobs[0], "status": "pending"}], held=set(), process_starts=[START]) == []


class FakeCursor:
    def __init__(self, rows: list[tuple], changed: set[str]) -> None:
        self.rows = rows
        self.changed = changed
        self.statements: list[tuple[str, dict]] = []
        self.rowcount = 0

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def execute(self, sql: str, params: dict) -> None:
        self.statements.append((sql, params))
        self.rowcount = 1 if params.get("id") in self.changed else 0

    def fetchall(self):
        return self.rows


class FakeConn:
    def __init__(self, cursor: FakeCursor) -> None:
        self.cur = cursor
        self.committed = False

    def cursor(self):
        return self.cur

    def commit(self) -> None:
        self.committed = True


def test_recover_rechecks_the_state_it_read_and_reports_what_changed():
    cursor = FakeCursor([(A.upper(), "queued", "package", 1.5)], changed={A})
    conn = FakeConn(cursor)
    assert orphans.read_in_flight(conn) == [{"id": A, "status": "queued", "type": "package", "touched": 1.5}]
    jobs = [
        {"id": A, "status": "queued", "type": "package", "touched": 10.0, "action": "requeue"},
        {"id": B, "status": "started", "type": "delta_apply", "touched": 10.0, "action": "fail"},
    ]
    done = orphans.recover(conn, jobs)
    assert [job["id"] for job in done] == [A]  # B moved in between: left alone
    assert conn.committed
    requeue_sql, requeue_params = cursor.statements[1]
    fail_sql, fail_params = cursor.statements[2]
    assert "status = 'pending'" in requeue_sql and "AND status = %(status)s" in requeue_sql
    assert "status = 'failed'" in fail_sql and fail_params["note"] == orphans.FAIL_NOTE
    assert requeue_params["touched"] >= 10.0


def stamped(lines: list[tuple[str, str]]) -> str:
    return "\n".join(f"{stamp} {text}" for stamp, text in lines)


def test_split_current_run_keeps_the_current_process_and_drops_the_stamps():
    raw = stamped(
        [
            ("2026-11-29T08:20:00.1Z", 'could not translate host name "db" to address'),
            ("2026-11-29T08:25:10.77Z", "Dequeue stopped"),
            ("2026-11-29T08:25:16.0Z", "Waiting for postgres..."),
            ("2026-11-29T08:25:17.044344Z", "Postgres is ready! ✨ 💅"),
        ]
    )
    whole, current = stack.split_current_run(raw, "2026-11-29T08:25:15.918652878Z")
    assert whole.splitlines()[0] == 'could not translate host name "db" to address'
    assert current.splitlines() == ["Waiting for postgres...", "Postgres is ready! ✨ 💅"]
    # no stamps at all (a log driver or a test double without them): all of it is the current process
    assert stack.split_current_run("a\nb", "2026-11-29T08:25:15Z") == ("a\nb", "a\nb")


def test_database_wait_signs_are_history_once_the_process_is_ready():
    waited = 'Waiting for postgres...\nPostgres isn\'t ready.\ncould not translate host name "db"\n'
    signs = stack.log_signs(waited + "Postgres is ready!\n" + '{"message": "Dequeue QFieldCloud Jobs from the DB"}')
    assert signs["host_unresolved"] == 0 and signs["postgres_not_ready"] == 0
    assert signs["dequeue_banner"] and signs["dequeuing"]
    lost = stack.log_signs(waited + "Postgres is ready!\n" + 'psycopg2: could not translate host name "db"')
    assert lost["host_unresolved"] == 1
    never = stack.log_signs(waited)
    assert never["host_unresolved"] == 1 and not never["dequeuing"]
    busy = stack.log_signs(f"Dequeued job {A}, run!\nDequeued job {B}, run!")
    assert busy["dequeuing"] and not busy["dequeue_banner"] and busy["last_job"] == B


def facts_with(in_flight: list[dict], replicas: list[dict], containers: list[dict] | None = None) -> dict:
    return {
        "daemon": {"reachable": True},
        "services": {"app": {"present": True}},
        "worker": {"replicas": replicas, "hand_started": [], "replicas_expected": len(replicas)},
        "job_containers": containers or [],
        "database": {"reachable": True},
        "queue": {"checked": True, "in_flight_jobs": in_flight},
    }


def replica(last_job: str | None, started_at: str = "2026-11-29T08:25:15.918652878Z", **log) -> dict:
    return {
        "name": "q-worker_wrapper-1",
        "running": True,
        "started_at": started_at,
        "log": {"last_job": last_job, "dequeuing": True, **log},
    }


def test_jobs_orphaned_is_named_with_the_recovery_each_job_gets():
    in_flight = [
        {"id": A, "status": "queued", "type": "package", "touched": START - 120},
        {"id": B, "status": "started", "type": "delta_apply", "touched": START - 120},
        {"id": C, "status": "started", "type": "package", "touched": START + 20},  # claimed by the current process
    ]
    found = {p["code"]: p for p in problems.detect_problems(facts_with(in_flight, [replica(C)]))}
    assert found["jobs_orphaned"]["severity"] == "error"
    evidence = found["jobs_orphaned"]["evidence"]
    assert evidence["count"] == 2
    assert {(j["id"], j["recovery"]) for j in evidence["jobs"]} == {(A, "requeue"), (B, "fail")}
    assert not problems.sync_ready(list(found.values()))


def test_jobs_orphaned_needs_proof():
    old = [{"id": A, "status": "queued", "type": "package", "touched": START - 120}]
    held_by_container = facts_with(old, [replica(None)], [{"job_id": A, "running": True}])
    no_log = facts_with(old, [{"name": "w", "running": True, "started_at": "2026-11-29T08:25:15Z"}])
    unreadable = facts_with(old, [replica(None, error="no log driver")])
    nobody = facts_with(old, [])
    for facts in (held_by_container, no_log, unreadable, nobody):
        assert "jobs_orphaned" not in {p["code"] for p in problems.detect_problems(facts)}
