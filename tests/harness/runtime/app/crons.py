"""`manage.py runcrons [--force]`: upstream's four django-cron jobs, run by ofelia every minute.

django-cron runs a job when its period has passed since its last successful run and writes one
``django_cron_cronjoblog`` row per run, so the every-minute job leaves a row every minute while anything runs
the crons. The stale-job cron is upstream's: fail ``queued``/``started`` jobs whose ``started_at`` is older than
the timeout + 10 s, with a feedback message, and set their deltas and ``core_applyjobdelta`` rows to ``error``.
"""

import datetime
import json

import qfcdb
import settings

# A run a few seconds early still counts: ofelia's minute and the previous run's start drift by a little.
EARLY_S = 5
STALE_FEEDBACK = {
    "error_stack": "",
    "error": "Job unexpectedly terminated.",
    "error_origin": "worker_wrapper",
    "container_exit_code": -2,
}
_state = {"timeout_s": 600}


def _nothing_to_do(cur) -> str:
    return ""


def set_terminated_workers_to_final_status(cur) -> str:
    cur.execute(
        "SELECT id, type FROM core_job WHERE status IN ('queued', 'started')"
        " AND started_at < now() - make_interval(secs => %s) FOR UPDATE",
        (_state["timeout_s"] + 10,),
    )
    jobs = cur.fetchall()
    for job_id, job_type in jobs:
        if job_type == "delta_apply":
            cur.execute(
                "UPDATE core_delta d SET last_status = 'error', last_feedback = NULL, last_modified_pk = NULL,"
                " last_apply_attempt_at = j.started_at, last_apply_attempt_by_id = j.created_by_id"
                " FROM core_applyjobdelta a, core_job j"
                " WHERE a.apply_job_id = %s AND d.id = a.delta_id AND j.id = a.apply_job_id",
                (job_id,),
            )
            cur.execute(
                "UPDATE core_applyjobdelta SET status = 'error', feedback = NULL, modified_pk = NULL"
                " WHERE apply_job_id = %s",
                (job_id,),
            )
    if jobs:
        # a queryset update(): the named columns only (upstream's cron does set finished_at)
        cur.execute(
            "UPDATE core_job SET status = 'failed', finished_at = now(), feedback = %s, output = %s WHERE id = ANY(%s)",
            (json.dumps(STALE_FEEDBACK), "Job unexpectedly terminated.", [j[0] for j in jobs]),
        )
    return f"{len(jobs)} job(s) set to failed" if jobs else ""


# (code, run every N minutes, what it does)
CRONS = [
    ("qfieldcloud.send_notifications", 1, _nothing_to_do),
    ("qfieldcloud.delete_expired_confirmations", 60, _nothing_to_do),
    ("qfieldcloud.set_terminated_workers_to_final_status", 3, set_terminated_workers_to_final_status),
    ("qfieldcloud.delete_obsolete_project_packages", 60, _nothing_to_do),
]


def main(args) -> int:
    force = "--force" in args
    conn = qfcdb.connect()
    _state["timeout_s"] = settings.worker_timeout_s(conn)
    print("Running Crons\n========================================")
    for code, minutes, do in CRONS:
        with conn, conn.cursor() as cur:
            cur.execute(
                "SELECT max(start_time) > now() - make_interval(secs => %s) FROM django_cron_cronjoblog"
                " WHERE code = %s AND is_success",
                (minutes * 60 - EARLY_S, code),
            )
            if cur.fetchone()[0] and not force:
                continue
        start = datetime.datetime.now(datetime.UTC)
        try:
            with conn, conn.cursor() as cur:
                message, ok = do(cur), True
        except Exception as exc:
            message, ok = str(exc), False
        with conn, conn.cursor() as cur:
            cur.execute(
                "INSERT INTO django_cron_cronjoblog (code, start_time, end_time, is_success, message)"
                " VALUES (%s, %s, now(), %s, %s)",
                (code, start, ok, message),
            )
        print(f"[{'✔' if ok else '✘'}] {code}")
    return 0
