# SPDX-License-Identifier: GPL-3.0-or-later
"""Orphaned jobs, queue counts and the job timeout against a real stand-in, with rows shaped like upstream writes them.

Upstream (qfieldcloud-facts.md, section 7): a claim saves the status only (``updated_at`` stays the creation time), a
failed job has no ``finished_at`` unless the cron failed it, a delta_apply job's deltas and ``core_applyjobdelta``
rows are ``started`` while it runs, and the cron's end state for a dead delta job is the job ``failed`` and its
deltas ``error``. One private two-replica stack serves every test here.
"""

from __future__ import annotations

import json
import subprocess
import time
import uuid

import psycopg2
import pytest
from ansible_run import run_module
from standin import Stack

from ansible_collections.fibreflow.qfieldcloud.plugins.module_utils import codes, docker_engine, orphans, queue

pytestmark = pytest.mark.integration

MODULE = "fibreflow.qfieldcloud.qfc_worker"


@pytest.fixture(scope="module")
def stack(module_stacks):
    return module_stacks("h2", replicas=2)


def connect(stack: Stack):
    env = stack.env
    return psycopg2.connect(
        host="127.0.0.1",
        port=int(env["HOST_POSTGRES_PORT"]),
        dbname=env["POSTGRES_DB"],
        user=env["POSTGRES_USER"],
        password=env["POSTGRES_PASSWORD"],
        connect_timeout=5,
    )


def conn_params(stack: Stack) -> dict:
    env = stack.env
    return {
        "host": "127.0.0.1",
        "port": int(env["HOST_POSTGRES_PORT"]),
        "dbname": env["POSTGRES_DB"],
        "user": env["POSTGRES_USER"],
        "password": env["POSTGRES_PASSWORD"],
    }


def execute(stack: Stack, sql: str, params: dict | tuple | None = None) -> list[tuple]:
    conn = connect(stack)
    try:
        with conn, conn.cursor() as cur:
            cur.execute(sql, params)
            return cur.fetchall() if cur.description else []
    finally:
        conn.close()


def project_table(stack: Stack) -> str:
    return "core_project" if "QFIELDCLOUD_QGIS_IMAGE_NAME" in stack.env else "project_project"


def new_project(stack: Stack) -> str:
    """A copy of the probe project's row under a new id (whatever columns the schema has)."""
    table = project_table(stack)
    project = str(uuid.uuid4())
    execute(
        stack,
        f"INSERT INTO {table} SELECT (jsonb_populate_record(NULL::{table}, to_jsonb(p)"
        f" || jsonb_build_object('id', %s::uuid, 'name', %s))).* FROM {table} p WHERE p.name = 'probe-project'",
        (project, f"h2-{project[:8]}"),
    )
    return project


def lock(stack: Stack, locked: bool) -> str:
    if project_table(stack) == "core_project":
        return f"is_locked = {str(locked).lower()}"
    return "locked_at = now()" if locked else "locked_at = NULL"


def user_id(stack: Stack) -> int:
    return execute(stack, "SELECT id FROM core_user WHERE username = 'probe'")[0][0]


def insert_job(
    stack: Stack,
    project: str,
    status: str,
    job_type: str = "package",
    feedback: dict | None = None,
    **ages: float | None,
) -> str:
    """A job row as upstream leaves it: ``ages`` are seconds before now (created, started, docker_finished,
    finished); ``updated_at`` is the creation time (upstream saves with update_fields)."""
    job = str(uuid.uuid4())
    user = user_id(stack)

    def at(key: str) -> str:
        value = ages.get(key)
        return "NULL" if value is None else f"now() - make_interval(secs => {float(value)})"

    execute(
        stack,
        "INSERT INTO core_job (id, project_id, type, status, output, feedback, triggered_by_id, created_by_id,"
        " created_at, updated_at, started_at, docker_finished_at, finished_at, container_id)"
        f" VALUES (%s, %s, %s, %s, '', %s, %s, %s, {at('created')}, {at('created')}, {at('started')},"
        f" {at('docker_finished')}, {at('finished')}, '')",
        (job, project, job_type, status, json.dumps(feedback) if feedback else None, user, user),
    )
    if job_type == "package":
        execute(stack, "INSERT INTO core_packagejob (job_ptr_id) VALUES (%s)", (job,))
    if job_type == "delta_apply":
        execute(stack, "INSERT INTO core_applyjob (job_ptr_id, overwrite_conflicts) VALUES (%s, true)", (job,))
    return job


def add_deltas(stack: Stack, job: str, project: str, statuses: list[str]) -> list[str]:
    user = user_id(stack)
    deltafile = str(uuid.uuid4())
    ids = []
    for status in statuses:
        delta = str(uuid.uuid4())
        execute(
            stack,
            "INSERT INTO core_delta (id, deltafile_id, content, last_status, created_at, updated_at, project_id,"
            " created_by_id) VALUES (%s, %s, %s, %s, now(), now(), %s, %s)",
            (delta, deltafile, json.dumps({"uuid": delta, "method": "patch"}), status, project, user),
        )
        execute(
            stack,
            "INSERT INTO core_applyjobdelta (apply_job_id, delta_id, status) VALUES (%s, %s, %s)",
            (job, delta, status),
        )
        ids.append(delta)
    return ids


def delta_states(stack: Stack, job: str) -> list[tuple[str, str]]:
    return execute(
        stack,
        "SELECT d.last_status, a.status FROM core_applyjobdelta a JOIN core_delta d ON d.id = a.delta_id"
        " WHERE a.apply_job_id = %s ORDER BY d.last_status, a.status",
        (job,),
    )


def drop_jobs(stack: Stack, projects: list[str]) -> None:
    jobs = "SELECT id FROM core_job WHERE project_id = ANY(%(p)s::uuid[])"
    execute(
        stack,
        f"DELETE FROM core_applyjobdelta WHERE apply_job_id IN ({jobs});"
        " DELETE FROM core_delta WHERE project_id = ANY(%(p)s::uuid[]);"
        f" DELETE FROM core_applyjob WHERE job_ptr_id IN ({jobs});"
        f" DELETE FROM core_packagejob WHERE job_ptr_id IN ({jobs});"
        " DELETE FROM core_job WHERE project_id = ANY(%(p)s::uuid[])",
        {"p": projects},
    )


def read_queue(stack: Stack, timeout: float = 600, source: str = "default") -> tuple[dict, dict]:
    database, facts = queue.read_database(conn_params(stack), timeout, job_timeout_source=source)
    assert database["reachable"] and database["round_trips"] == 2, database
    return database, facts


# ---------------------------------------------------------------------------------------------- counts
def test_counts_and_timeout_on_rows_shaped_like_upstream(stack):
    _database, base = read_queue(stack)
    p1, p2, p3 = new_project(stack), new_project(stack), new_project(stack)
    try:
        # finished by finished_at, whenever created; updated_at never moved
        insert_job(stack, p3, "finished", created=7200, started=7150, docker_finished=1810, finished=1800)
        insert_job(stack, p3, "finished", created=10800, started=900, docker_finished=610, finished=600)
        insert_job(stack, p3, "finished", created=10800, started=7300, finished=7200)  # ended 2 h ago
        # failed without finished_at: by docker_finished_at, else started_at
        insert_job(stack, p3, "failed", created=7200, started=2400, docker_finished=2100)
        insert_job(stack, p3, "failed", created=300, started=240)
        insert_job(stack, p3, "failed", created=18000, started=14400, docker_finished=14300)  # ended 4 h ago
        # queued for 3 h with nothing since; queued 3 h ago in a project whose previous job ended 5 min ago
        q1 = insert_job(stack, p1, "queued", created=10800)
        insert_job(stack, p2, "queued", created=10800)
        insert_job(stack, p2, "finished", created=14400, started=400, docker_finished=310, finished=300)
        database, facts = read_queue(stack)
        assert facts["finished_last_hour"] - base["finished_last_hour"] == 3  # two in p3, one in p2
        assert facts["failed_last_hour"] - base["failed_last_hour"] == 2
        assert facts["overdue_queued"] - base["overdue_queued"] == 1
        assert [job["id"] for job in facts["overdue_jobs"] if job["status"] == "queued"] == [q1]
        assert (database["job_timeout_s"], database["job_timeout_source"]) == (600.0, "default")

        # Before v26.24 the timeout is the admin's constance setting: raised to a day, nothing is overdue
        created = not execute(stack, "SELECT to_regclass('public.constance_constance') IS NOT NULL")[0][0]
        if created:
            execute(
                stack,
                "CREATE TABLE constance_constance (id integer GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,"
                " key varchar(255) NOT NULL UNIQUE, value text NULL)",
            )
        saved = execute(stack, "SELECT value FROM constance_constance WHERE key = 'WORKER_TIMEOUT_S'")
        try:
            for value in ('{"__type__": "default", "__value__": 86400}', "86400"):
                execute(stack, "DELETE FROM constance_constance WHERE key = 'WORKER_TIMEOUT_S'")
                execute(stack, "INSERT INTO constance_constance (key, value) VALUES ('WORKER_TIMEOUT_S', %s)", (value,))
                database, facts = read_queue(stack)
                assert (database["job_timeout_s"], database["job_timeout_source"]) == (86400.0, "constance_constance")
                assert facts["overdue_queued"] - base["overdue_queued"] == 0
            # from v26.24 the environment variable holds, whatever the table says
            database, facts = read_queue(stack, 600, "environment")
            assert (database["job_timeout_s"], database["job_timeout_source"]) == (600.0, "environment")
            assert facts["overdue_queued"] - base["overdue_queued"] == 1
            execute(
                stack, "UPDATE constance_constance SET value = 'gASVBAAAAAAAAABLZC4=' WHERE key = 'WORKER_TIMEOUT_S'"
            )
            database, _queue = read_queue(stack)  # a value it cannot read (pickled): the caller's timeout
            assert (database["job_timeout_s"], database["job_timeout_source"]) == (600.0, "default")
        finally:
            if created:
                execute(stack, "DROP TABLE constance_constance")
            else:
                execute(stack, "DELETE FROM constance_constance WHERE key = 'WORKER_TIMEOUT_S'")
                for (value,) in saved:
                    execute(
                        stack, "INSERT INTO constance_constance (key, value) VALUES ('WORKER_TIMEOUT_S', %s)", (value,)
                    )
    finally:
        drop_jobs(stack, [p1, p2, p3])


# ---------------------------------------------------------------------------------------------- recovery
def test_a_dead_delta_job_reaches_the_crons_end_state_in_one_transaction(stack):
    project = new_project(stack)
    try:
        job = insert_job(stack, project, "started", "delta_apply", created=1260, started=1200)
        add_deltas(stack, job, project, ["started", "started", "applied"])
        args = {"project_dir": str(stack.dir)}

        check = run_module(MODULE, args, check=True)
        assert not check.get("failed"), check
        (planned,) = [j for j in check["orphaned_jobs"] if j["id"] == job]
        assert (planned["project_id"], planned["recovery"], planned["deltas"]) == (project, "fail", 2)
        assert execute(stack, "SELECT status FROM core_job WHERE id = %s", (job,)) == [("started",)]
        assert delta_states(stack, job) == [("applied", "applied"), ("started", "started"), ("started", "started")]

        # a read that is out of date by the time it is applied changes nothing
        conn = connect(stack)
        try:
            rows, _now = orphans.read_in_flight(conn)
            (row,) = [r for r in rows if r["id"] == job]
            stale = {**row, "action": "fail", "updated_text": "2000-01-01 00:00:00+00"}
            assert orphans.recover(conn, [stale]) == []
        finally:
            conn.close()
        assert delta_states(stack, job)[1] == ("started", "started")

        res = run_module(MODULE, args)
        assert not res.get("failed"), res
        (done,) = [j for j in res["orphaned_jobs"] if j["id"] == job]
        assert (done["project_id"], done["recovery"], done["deltas"]) == (project, "fail", 2)
        assert done["user_action"] == orphans.REAPPLY_HINT.format(deltas=2, project=project)
        assert set(done["evidence"]) >= {"before_current_processes"}
        ((status, feedback, finished),) = execute(
            stack, "SELECT status, feedback, finished_at IS NOT NULL FROM core_job WHERE id = %s", (job,)
        )
        assert (status, feedback["error_type"], finished) == ("failed", "WORKER_PROCESS_GONE", True)
        assert delta_states(stack, job) == [("applied", "applied"), ("error", "error"), ("error", "error")]
        ((attempt_at_is_start,),) = execute(
            stack,
            "SELECT bool_and(d.last_apply_attempt_at = j.started_at) FROM core_delta d JOIN core_applyjobdelta a"
            " ON a.delta_id = d.id JOIN core_job j ON j.id = a.apply_job_id"
            " WHERE j.id = %s AND d.last_status = 'error'",
            (job,),
        )
        assert attempt_at_is_start
        again = run_module(MODULE, args)
        assert not again.get("orphaned_jobs") and not again["changed"], again
    finally:
        drop_jobs(stack, [project])


# ---------------------------------------------------------------------------------------------- the safety rule
def worker_claims(engine: docker_engine.Engine, project: str) -> dict | None:
    return orphans.worker_claims(engine, project)


def test_a_job_held_by_a_live_process_is_never_named_over_many_claims(stack):
    """30 jobs claimed one after the other while the rule is decided again and again, with every evidence sign
    forced true (a timeout of a microsecond): only the live holders' log lines and containers stand between a
    claimed job and a false finding."""
    projects = [new_project(stack) for _n in range(6)]
    fast = {"standin_seconds": 0.2}
    jobs = [insert_job(stack, projects[n % 6], "pending", feedback=fast, created=1) for n in range(30)]
    engine = docker_engine.Engine(docker_engine.client(None, 30))
    conn = connect(stack)
    seen: set[str] = set()
    single_read_named: set[str] = set()
    named: list[dict] = []
    decisions = 0
    deadline = time.monotonic() + 300
    try:

        def read() -> list[dict]:
            rows, now = orphans.read_in_flight(conn)
            claims = worker_claims(engine, stack.name)
            assert claims is not None
            seen.update(row["id"] for row in rows)
            return orphans.orphaned(rows, claims["workers"], claims["job_containers"], timeout_s=1e-6, now=now)

        while time.monotonic() < deadline:
            first = read()
            single_read_named.update(job["id"] for job in first)
            if first:
                time.sleep(orphans.CONFIRM_S)
                named += orphans.confirmed(first, read())
            decisions += 1
            done = execute(
                stack, "SELECT count(*) FROM core_job WHERE id = ANY(%s::uuid[]) AND status = 'finished'", (jobs,)
            )
            if done[0][0] == len(jobs):
                break
            time.sleep(0.2)
    finally:
        conn.close()
    statuses = execute(
        stack, "SELECT status, count(*) FROM core_job WHERE id = ANY(%s::uuid[]) GROUP BY status", (jobs,)
    )
    drop_jobs(stack, projects)
    assert statuses == [("finished", 30)]
    # Enough claims seen in flight for the rule to have been tried on them (fewer on a loaded machine: each
    # candidate costs a 5 s confirmation read).
    assert len(seen & set(jobs)) >= 10, f"too few claims observed in flight ({len(seen & set(jobs))})"
    assert named == [], f"held jobs named orphaned: {named} (single reads named {sorted(single_read_named)})"
    print(f"{decisions} decisions, {len(seen & set(jobs))} jobs in flight, single reads named {len(single_read_named)}")


def replica_holding(stack: Stack, job: str) -> str:
    for cid in stack.containers("worker_wrapper", all_=False):
        res = subprocess.run(["docker", "logs", cid], text=True, capture_output=True, check=False)
        if f"Dequeued job {job}" in res.stdout + res.stderr:
            return cid
    raise AssertionError(f"no running replica logged job {job}")


def qgis_containers(job: str, running_only: bool = True) -> list[str]:
    cmd = ["docker", "ps", "-q", "--filter", f"label=job_id={job}"]
    if not running_only:
        cmd.insert(2, "-a")
    return subprocess.run(cmd, text=True, capture_output=True, check=True).stdout.split()


def test_a_delta_job_whose_replica_was_killed_mid_job_is_recovered_in_the_run_that_restarts_it(stack):
    """Two replicas; the one applying a delta job is killed (docker kill) while its QGIS container runs. The
    other replica's process is older than the job. qfc_worker starts the killed replica, removes the leftover QGIS
    container whose result nobody will read (its claimant's last line names the job), and the same run recovers
    the job and its deltas."""
    project = new_project(stack)
    try:
        # locked while its deltas are added, as the API adds them in the job's own transaction
        execute(stack, f"UPDATE {project_table(stack)} SET {lock(stack, True)} WHERE id = %s", (project,))
        job = insert_job(stack, project, "pending", "delta_apply", feedback={"standin_seconds": 300}, created=1)
        add_deltas(stack, job, project, ["pending", "pending"])
        execute(stack, f"UPDATE {project_table(stack)} SET {lock(stack, False)} WHERE id = %s", (project,))
        deadline = time.monotonic() + 60
        while stack.job_status(job) != "started" and time.monotonic() < deadline:
            time.sleep(0.3)
        assert stack.job_status(job) == "started"
        while not qgis_containers(job) and time.monotonic() < deadline:
            time.sleep(0.3)
        victim = replica_holding(stack, job)
        subprocess.run(["docker", "kill", victim], check=True, capture_output=True)
        time.sleep(2)
        assert qgis_containers(job), "the QGIS container should outlive its worker"

        # what qfc_sync_facts says of it now: the job is held by its QGIS container, not (yet) orphaned
        facts = run_module("fibreflow.qfieldcloud.qfc_sync_facts", {"project_dir": str(stack.dir)})
        assert job not in [j["id"] for j in orphans.find_in_facts(facts["ansible_facts"]["qfc_sync"])]

        # The restarted replica's idle loop keeps a container whose id is a job's container_id (upstream): the
        # dead process's last claim names the job, so qfc_worker removes it and recovers the job in the same run.
        res = run_module(MODULE, {"project_dir": str(stack.dir)})
        assert not res.get("failed"), res
        assert res["changed"] and any(a.startswith("start ") for a in res["actions"]), res["actions"]
        assert f"removed the QGIS container of job {job}: the worker process that ran it is gone" in res["actions"]
        assert not qgis_containers(job)
        (done,) = [j for j in res["orphaned_jobs"] if j["id"] == job]
        assert (done["project_id"], done["recovery"], done["deltas"]) == (project, "fail", 2)
        assert {"claimant_gone", "job_container_ended"} & set(done["evidence"]), done
        assert stack.job_status(job) == "failed"
        assert delta_states(stack, job) == [("error", "error"), ("error", "error")]
        found = {item["code"] for item in res["drift"]}
        assert codes.CODE_JOBS_ORPHANED in found
    finally:
        drop_jobs(stack, [project])
