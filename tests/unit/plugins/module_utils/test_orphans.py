# SPDX-License-Identifier: GPL-3.0-or-later
"""Unit tests of orphans.py (jobs whose worker process is gone) and of the current-process log window."""

from __future__ import annotations

from ansible_collections.fibreflow.qfieldcloud.plugins.module_utils import (
    database,
    docker_engine,
    logsigns,
    orphans,
    problems,
)

A = "0b5e7c1e-0000-4000-8000-00000000000a"
B = "0b5e7c1e-0000-4000-8000-00000000000b"
C = "0b5e7c1e-0000-4000-8000-00000000000c"
START = docker_engine.docker_time("2026-11-29T08:25:15.918652878Z")


def test_docker_time_reads_nanoseconds_zones_and_never_started():
    assert START is not None
    assert docker_engine.docker_time("2026-11-29T08:25:15.918652Z") == START
    assert docker_engine.docker_time("2026-11-29T09:25:15.918652878+01:00") == START
    assert docker_engine.docker_time("2026-11-29T08:25:16Z") - START > 0.08
    assert docker_engine.docker_time("0001-01-01T00:00:00Z") is None
    assert docker_engine.docker_time("") is None
    assert docker_engine.docker_time(None) is None
    assert docker_engine.docker_time("yesterday") is None


def job(job_id: str, status: str = "started", job_type: str = "delta_apply", since: float = START - 60, **over):
    row = {
        "id": job_id,
        "status": status,
        "type": job_type,
        "project_id": "p1",
        "created_at": since - 5,
        "started_at": since if status == "started" else None,
        "since": since,
        "deltas": 2 if job_type == "delta_apply" else 0,
        "updated_text": "2026-11-29 08:00:00+00",
        "started_text": "2026-11-29 08:00:05+00" if status == "started" else None,
    }
    return {**row, **over}


def worker(last_job: str | None = None, start: float = START, running: bool = True, ended=(), known: bool = True):
    return {
        "running": running,
        "process_start": start,
        "last_job": last_job,
        "last_job_known": known,
        "ended_jobs": list(ended),
    }


def test_a_job_whose_replica_was_killed_mid_job_is_orphaned_though_another_replica_is_older():
    # Replica 1 runs since long before the job; replica 2 was killed while applying B and restarted by its
    # policy: its earlier process named B last. Before, the older replica's start hid B.
    old, restarted = worker("0b5e7c1e-0000-4000-8000-0000000000ff", start=START - 3600), worker(start=START + 30)
    restarted["ended_jobs"] = [B]
    found = orphans.orphaned([job(B, since=START - 60)], [old, restarted])
    assert [(j["id"], j["action"], j["evidence"]) for j in found] == [(B, "fail", ["claimant_gone"])]
    # the same replica exited instead (not restarted): its last process is over
    stopped = {**worker(running=False, start=None), "ended_jobs": [B]}
    assert [j["id"] for j in orphans.orphaned([job(B)], [old, stopped])] == [B]


def test_a_held_job_is_never_orphaned_whatever_the_evidence():
    everything = {"ended_jobs": [A, B, C]}
    workers = [{**worker(A, start=START + 999), **everything}, worker(None, start=START + 999)]
    jobs = [job(A, "queued", "package"), job(B), job(C, "started", "package")]
    containers = [{"job_id": B.upper(), "running": True}, {"job_id": C, "running": False}]
    found = orphans.orphaned(jobs, workers, containers, timeout_s=1, now=START + 10_000)
    # A: named by a running process; B: its QGIS container runs; only C is free
    assert [(j["id"], j["action"]) for j in found] == [(C, "requeue")]
    assert set(found[0]["evidence"]) == set(orphans.EVIDENCE)


def test_a_fresh_claim_without_any_sign_of_a_dead_claimant_is_not_orphaned():
    # queued after every worker process started, nobody names it yet (its log line is on its way): no evidence
    fresh = job(A, "queued", "package", since=START + 50)
    assert orphans.orphaned([fresh], [worker(None)], timeout_s=600, now=START + 60) == []
    # the same job, queued for longer than the timeout with no live holder, is orphaned
    assert orphans.orphaned([fresh], [worker(None)], timeout_s=600, now=START + 700)[0]["evidence"] == ["overdue"]


def test_nothing_is_decided_without_a_running_worker_or_with_an_unknown_claim():
    jobs = [job(A, "queued", "package", since=START - 600)]
    assert orphans.orphaned(jobs, []) == []
    assert orphans.orphaned(jobs, [worker(running=False, ended=[A])]) == []
    assert orphans.orphaned(jobs, [worker(start=None)]) == []
    assert orphans.orphaned(jobs, [worker(known=False), worker(start=START - 9999)]) == []
    assert orphans.orphaned([{**jobs[0], "status": "pending"}], [worker()]) == []
    # the older call (problems.py): starts only, held ids
    assert [j["id"] for j in orphans.find(jobs, held=set(), process_starts=[START])] == [A]
    assert orphans.find(jobs, held={A.upper()}, process_starts=[START]) == []
    assert orphans.find(jobs, held=set(), process_starts=[None]) == []


def test_confirmed_needs_the_same_state_on_both_reads():
    first = [{**job(A), "action": "fail", "evidence": ["claimant_gone"]}, {**job(B), "action": "fail", "evidence": []}]
    second = [
        {**job(A), "action": "fail", "evidence": ["before_current_processes"]},
        {**job(B, updated_text="2026-11-29 08:00:01+00"), "action": "fail", "evidence": []},
        {**job(C), "action": "fail", "evidence": []},
    ]
    both = orphans.confirmed(first, second)
    assert [(j["id"], j["evidence"]) for j in both] == [(A, ["claimant_gone", "before_current_processes"])]


def stamped_lines(*lines: tuple[str, str]) -> str:
    return "\n".join(f"{stamp} {text}" for stamp, text in lines)


BANNER = '{"message": "Dequeue QFieldCloud Jobs from the DB"}'


def test_process_claims_reads_the_current_and_the_ended_processes():
    raw = stamped_lines(
        ("2026-11-29T08:00:00Z", "Waiting for postgres..."),
        ("2026-11-29T08:00:02Z", BANNER),
        ("2026-11-29T08:01:00Z", f'{{"message": "Dequeued job {A}, run!"}}'),
        ("2026-11-29T08:10:00Z", "Waiting for postgres..."),
        ("2026-11-29T08:10:02Z", BANNER),
        ("2026-11-29T08:11:00Z", f'{{"message": "Dequeued job {B.upper()}, run!"}}'),
        ("2026-11-29T08:25:16Z", "Waiting for postgres..."),
        ("2026-11-29T08:25:17Z", BANNER),
    )
    current = logsigns.process_claims(raw, "2026-11-29T08:25:15.918652878Z", True, 2000)
    assert current == {"last_job": None, "last_job_known": True, "ended_jobs": [A, B]}
    exited = logsigns.process_claims(raw, "2026-11-29T08:25:15Z", False, 2000)
    assert exited["ended_jobs"] == [A, B] and exited["last_job"] is None
    busy = logsigns.process_claims(
        raw + f"\n2026-11-29T08:26:00Z Dequeued job {C}, run!", "2026-11-29T08:25:15Z", True, 9
    )
    assert busy["last_job"] == C and busy["last_job_known"]
    # a full tail of the current process without its banner or a claim: its last claim is unknown
    chatter = stamped_lines(*[("2026-11-29T08:30:00Z", "Finished execution, logs: ...")] * 5)
    assert logsigns.process_claims(chatter, "2026-11-29T08:25:15Z", True, 5)["last_job_known"] is False
    assert logsigns.process_claims(chatter, "2026-11-29T08:25:15Z", True, 6)["last_job_known"] is True


class FakeCursor:
    """Answers RETURNING with a row for the ids in ``changed`` and counts the delta rows it 'updates'."""

    def __init__(self, changed: set[str], rows: list[tuple] | None = None) -> None:
        self.changed = changed
        self.rows = rows or []
        self.statements: list[tuple[str, dict | None]] = []
        self.rowcount = 0
        self._one: tuple | None = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def execute(self, sql: str, params: dict | None = None) -> None:
        self.statements.append((sql, params))
        hit = (params or {}).get("id") in self.changed
        self._one = (True, 1.0) if "to_regclass" in sql else (("2026-11-29 08:00:05+00", 7) if hit else None)
        self.rowcount = 2 if hit and "core_delta d" in sql else int(hit)

    def fetchone(self):
        return self._one

    def fetchall(self):
        return self.rows


class FakeConn:
    def __init__(self, cursor: FakeCursor) -> None:
        self.cur = cursor
        self.commits = 0

    def cursor(self):
        return self.cur

    def commit(self) -> None:
        self.commits += 1


def test_recover_fails_a_delta_job_and_its_deltas_in_one_transaction_and_skips_what_moved():
    cursor = FakeCursor(changed={A, B})
    conn = FakeConn(cursor)
    jobs = [
        {**job(A, "queued", "package"), "action": "requeue"},
        {**job(B), "action": "fail"},
        {**job(C), "action": "fail"},  # moved in between: the re-check finds nothing
    ]
    done = orphans.recover(conn, jobs)
    assert [(j["id"], j["deltas"]) for j in done] == [(A, 0), (B, 2)]
    assert conn.commits == 1
    sqls = [sql for sql, _params in cursor.statements]
    assert sqls[1] == database.REQUEUE_SQL and sqls[2] == database.FAIL_SQL
    assert sqls[3:5] == [database.FAIL_DELTAS_SQL, database.FAIL_APPLYJOBDELTAS_SQL]
    assert sqls[5:] == [database.FAIL_SQL]  # C: no delta statement after a job that did not change
    for sql in (database.REQUEUE_SQL, database.FAIL_SQL):
        assert "status = %(status)s" in sql and "updated_at = %(updated_text)s" in sql
        assert "started_at IS NOT DISTINCT FROM %(started_text)s" in sql
    assert "last_status IN ('pending', 'started')" in database.FAIL_DELTAS_SQL
    assert "status IN ('pending', 'started')" in database.FAIL_APPLYJOBDELTAS_SQL
    fail_params = cursor.statements[2][1]
    assert fail_params["updated_text"] == "2026-11-29 08:00:00+00"
    assert '"error_type": "WORKER_PROCESS_GONE"' in fail_params["feedback"]
    summary = orphans.summary({**done[1], "evidence": ["claimant_gone"]})
    assert summary == {
        "id": B,
        "status": "started",
        "type": "delta_apply",
        "project_id": "p1",
        "recovery": "fail",
        "evidence": ["claimant_gone"],
        "deltas": 2,
        "user_action": orphans.REAPPLY_HINT.format(deltas=2, project="p1"),
    }
    assert orphans.summary(done[0])["user_action"] is None


def test_read_in_flight_returns_rows_and_the_database_clock():
    row = (A.upper(), "queued", "package", "P1", 1.0, None, 3.0, 0, "2026-11-29 08:00:00+00", None)
    conn = FakeConn(FakeCursor(set(), [row]))
    jobs, now = orphans.read_in_flight(conn)
    assert now == 1.0 and conn.commits == 1
    assert jobs == [
        {
            "id": A,
            "status": "queued",
            "type": "package",
            "project_id": "p1",
            "created_at": 1.0,
            "started_at": None,
            "since": 3.0,
            "deltas": 0,
            "updated_text": "2026-11-29 08:00:00+00",
            "started_text": None,
        }
    ]


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
    whole, current = docker_engine.split_current_run(raw, "2026-11-29T08:25:15.918652878Z")
    assert whole.splitlines()[0] == 'could not translate host name "db" to address'
    assert current.splitlines() == ["Waiting for postgres...", "Postgres is ready! ✨ 💅"]
    # no stamps at all (a log driver or a test double without them): all of it is the current process
    assert docker_engine.split_current_run("a\nb", "2026-11-29T08:25:15Z") == ("a\nb", "a\nb")


def test_database_wait_signs_are_history_once_the_process_is_ready():
    waited = 'Waiting for postgres...\nPostgres isn\'t ready.\ncould not translate host name "db"\n'
    signs = logsigns.log_signs(waited + "Postgres is ready!\n" + '{"message": "Dequeue QFieldCloud Jobs from the DB"}')
    assert signs["host_unresolved"] == 0 and signs["postgres_not_ready"] == 0
    assert signs["dequeue_banner"] and signs["dequeuing"]
    lost = logsigns.log_signs(waited + "Postgres is ready!\n" + 'psycopg2: could not translate host name "db"')
    assert lost["host_unresolved"] == 1
    never = logsigns.log_signs(waited)
    assert never["host_unresolved"] == 1 and not never["dequeuing"]
    busy = logsigns.log_signs(f"Dequeued job {A}, run!\nDequeued job {B}, run!")
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
        job(A, "queued", "package", since=START - 120),
        job(B, since=START - 120),
        job(C, "started", "package", since=START + 20),  # claimed by the current process
    ]
    found = {p["code"]: p for p in problems.detect_problems(facts_with(in_flight, [replica(C)]))}
    assert found["jobs_orphaned"]["severity"] == "error"
    evidence = found["jobs_orphaned"]["evidence"]
    assert evidence["count"] == 2
    assert {(j["id"], j["recovery"]) for j in evidence["jobs"]} == {(A, "requeue"), (B, "fail")}
    assert not problems.sync_ready(list(found.values()))


def test_find_in_facts_uses_the_ended_processes_of_each_replica():
    in_flight = [job(B, since=START + 20)]  # started after the older replica's process: only its claimant tells
    older = replica(None, started_at="2026-11-29T08:00:00Z", dequeue_banner=True)
    restarted = replica(None, started_at="2026-11-29T08:30:00Z", last_job_known=True, ended_jobs=[B])
    assert [j["id"] for j in orphans.find_in_facts(facts_with(in_flight, [older, restarted]))] == [B]
    assert orphans.find_in_facts(facts_with(in_flight, [older])) == []


def test_jobs_orphaned_needs_proof():
    old = [job(A, "queued", "package", since=START - 120)]
    held_by_container = facts_with(old, [replica(None)], [{"job_id": A, "running": True}])
    no_log = facts_with(old, [{"name": "w", "running": True, "started_at": "2026-11-29T08:25:15Z"}])
    unreadable = facts_with(old, [replica(None, error="no log driver")])
    nobody = facts_with(old, [])
    for facts in (held_by_container, no_log, unreadable, nobody):
        assert "jobs_orphaned" not in {p["code"] for p in problems.detect_problems(facts)}
        assert orphans.find_in_facts(facts) == []


INSPECT_WORKER = {
    "Id": "0123456789abcdef",
    "Name": "/q-worker_wrapper-1",
    "Created": "2025-01-01T00:00:00.1Z",
    "Image": "sha256:w",
    "RestartCount": 0,
    "State": {"Status": "running", "Running": True, "Restarting": False, "StartedAt": "2025-01-01T00:00:01Z"},
    "Config": {
        "User": "root",
        "Image": "q-worker_wrapper",
        "Env": ["POSTGRES_HOST=db"],
        "Cmd": ["python3", "manage.py", "dequeue"],
        "Labels": {"com.docker.compose.service": "worker_wrapper", "com.docker.compose.project": "q"},
    },
    "HostConfig": {"RestartPolicy": {"Name": "unless-stopped"}},
    "NetworkSettings": {"Ports": {}, "Networks": {"q_default": {"IPAddress": "172.18.0.5"}}},
    "Mounts": [],
}


def test_worker_claims_inspect_no_other_compose_projects_worker():
    """On a host with several stacks, only this project's workers (and hand-started ones) are inspected."""
    import copy

    ours = copy.deepcopy(INSPECT_WORKER)
    other = copy.deepcopy(INSPECT_WORKER)
    other["Id"] = "fedcba9876543210"
    other["Config"]["Labels"]["com.docker.compose.project"] = "other"

    class Engine:
        def __init__(self):
            self.inspected: list[str] = []

        def containers(self):
            return [
                {"Id": ours["Id"], "Command": "python3 manage.py dequeue", "Labels": ours["Config"]["Labels"]},
                {"Id": other["Id"], "Command": "python3 manage.py dequeue", "Labels": other["Config"]["Labels"]},
            ]

        def inspect(self, cid):
            self.inspected.append(cid)
            return {ours["Id"]: ours, other["Id"]: other}[cid]

        def logs(self, cid, tail):
            return "2025-01-01T00:00:02.000000000Z Dequeue QFieldCloud Jobs from the DB\n"

        def job_containers(self):
            return []

    engine = Engine()
    claims = orphans.worker_claims(engine, "q")
    assert engine.inspected == [ours["Id"]]
    assert [w["name"] for w in claims["workers"]] == ["q-worker_wrapper-1"]
