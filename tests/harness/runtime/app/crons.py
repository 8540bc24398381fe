"""`manage.py runcrons`: upstream's stale-job cron (fail started jobs past the timeout)."""

import datetime
import os

import qfcdb

CODE = "qfieldcloud.set_terminated_workers_to_final_status"


def main(args) -> int:
    timeout = int(os.environ.get("QFIELDCLOUD_WORKER_TIMEOUT_S", "600")) + 10
    start = datetime.datetime.now(datetime.UTC)
    conn = qfcdb.connect()
    with conn, conn.cursor() as cur:
        cur.execute(
            "UPDATE core_job SET status = 'failed', finished_at = now(), updated_at = now(),"
            ' feedback = \'{"error": "Worker terminated without finishing the job"}\'::jsonb'
            " WHERE status IN ('queued', 'started') AND started_at < now() - make_interval(secs => %s)"
            " RETURNING id",
            (timeout,),
        )
        failed = cur.rowcount
        cur.execute(
            "INSERT INTO django_cron_cronjoblog (code, start_time, end_time, is_success, message)"
            " VALUES (%s, %s, now(), true, %s)",
            (CODE, start, f"{failed} job(s) set to failed"),
        )
    print(f"Running Crons\n[\u2714] {CODE} ({failed} stale jobs)")
    return 0
