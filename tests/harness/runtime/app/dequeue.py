"""`manage.py dequeue`: the job loop of upstream's worker_wrapper.

Every few seconds: refuse to work on a read-only replica; claim the oldest pending job whose
project has no queued/started job and is not locked (FOR UPDATE SKIP LOCKED); run it in a
sibling QGIS container through the Docker socket; record finished or failed. SIGTERM lets the
current job finish first.
"""

import datetime
import json
import logging
import os
import signal
import socket
import sys
import tempfile
import time
import traceback

import psycopg2
import qfcdb

POLL_S = float(os.environ.get("STANDIN_POLL_S", "5"))
TIMEOUT_S = int(os.environ.get("QFIELDCLOUD_WORKER_TIMEOUT_S", "600"))
_state = {"stop": False}


class JsonFormatter(logging.Formatter):
    def format(self, record):
        return json.dumps(
            {
                "ts": datetime.datetime.now(datetime.UTC).isoformat(),
                "level": record.levelname,
                "name": record.name,
                "message": record.getMessage(),
                "host": socket.gethostname(),
            },
            ensure_ascii=False,
        )


handler = logging.StreamHandler(sys.stdout)
handler.setFormatter(JsonFormatter())
log = logging.getLogger("qfieldcloud.worker_wrapper.dequeue")
log.addHandler(handler)
log.setLevel(logging.INFO)


def _on_sigterm(signum, frame):
    _state["stop"] = True
    log.info("Received SIGTERM, finishing the current job before exiting")


def claim_sql() -> str:
    return f"""
UPDATE core_job SET status = 'queued', updated_at = now()
WHERE id = (
  SELECT j.id FROM core_job j JOIN {qfcdb.PROJECT_TABLE} p ON p.id = j.project_id
  WHERE j.status = 'pending' AND NOT ({qfcdb.PROJECT_LOCKED})
    AND NOT EXISTS (SELECT 1 FROM core_job b WHERE b.project_id = j.project_id AND b.status IN ('queued', 'started'))
  ORDER BY j.created_at
  LIMIT 1
  FOR UPDATE OF j SKIP LOCKED)
RETURNING id, project_id, type, feedback"""


def qgis_image() -> str:
    name = os.environ.get("QFIELDCLOUD_QGIS3_IMAGE_NAME") or os.environ.get("QFIELDCLOUD_QGIS_IMAGE_NAME")
    return name or f"{os.environ.get('COMPOSE_PROJECT_NAME', 'qfieldcloud')}-qgis3"


def job_network() -> str:
    return (
        os.environ.get("QFIELDCLOUD_DEFAULT_NETWORK")
        or f"{os.environ.get('COMPOSE_PROJECT_NAME', 'qfieldcloud')}_default"
    )


def run_in_container(job_id, project_id, job_type, seconds: float) -> tuple[str, dict, str]:
    """Run one job in a sibling container; returns (status, feedback, output)."""
    import docker  # imported here: a worker without the socket still starts, like upstream

    tmpdir = tempfile.mkdtemp(dir="/tmp")
    os.chmod(tmpdir, 0o777)
    with open(os.path.join(tmpdir, "job.json"), "w") as fh:
        json.dump({"job_id": str(job_id), "project_id": str(project_id), "type": job_type, "seconds": seconds}, fh)
    client = docker.from_env(timeout=TIMEOUT_S + 60)
    container = client.containers.run(
        qgis_image(),
        command=["python3", "/opt/standin/app/qgis_job.py", "/io/job.json"],
        detach=True,
        network=job_network(),
        volumes={tmpdir: {"bind": "/io/", "mode": "rw"}},
        labels={
            "app": f"{os.environ.get('ENVIRONMENT', 'production')}_worker",
            "job_id": str(job_id),
            "project_id": str(project_id),
            "type": job_type,
        },
        mem_limit="1000m",
        cpu_shares=512,
    )
    conn = qfcdb.connect()
    with conn, conn.cursor() as cur:
        cur.execute(
            "UPDATE core_job SET container_id = %s, docker_started_at = now(), updated_at = now() WHERE id = %s",
            (container.id[:64], job_id),
        )
    conn.close()
    try:
        result = container.wait(timeout=TIMEOUT_S)
        exit_code = result.get("StatusCode", -1)
    except Exception:
        container.kill()
        exit_code = -1
    output = container.logs().decode(errors="replace")
    container.remove(force=True)
    if exit_code == 0:
        try:
            with open(os.path.join(tmpdir, "feedback.json")) as fh:
                feedback = json.load(fh)
        except (OSError, ValueError):
            feedback = {}
        return "finished", feedback, output
    if exit_code == 137:
        return "failed", {"error_type": "DOCKER_ENGINE_SIGKILL", "error": "killed"}, output
    if exit_code == -1:
        return "failed", {"error_type": "TIMEOUT", "error": f"timeout after {TIMEOUT_S} s"}, output
    return "failed", {"error_type": "QGIS_ERROR", "error": f"exit code {exit_code}"}, output


def run_job(conn, job_id, project_id, job_type, feedback) -> None:
    with conn, conn.cursor() as cur:
        cur.execute(
            "UPDATE core_job SET status = 'started', started_at = now(), updated_at = now() WHERE id = %s", (job_id,)
        )
    seconds = float((feedback or {}).get("standin_seconds", os.environ.get("STANDIN_JOB_SECONDS", "1")))
    try:
        status, fb, output = run_in_container(job_id, project_id, job_type, seconds)
    except Exception as exc:
        log.error(f"Failed job run:\n{traceback.format_exc()}")
        status, fb, output = "failed", {"error_type": type(exc).__name__, "error": str(exc)}, ""
    with conn, conn.cursor() as cur:
        cur.execute(
            "UPDATE core_job SET status = %s, feedback = %s, output = %s, finished_at = now(),"
            " docker_finished_at = now(), updated_at = now() WHERE id = %s",
            (status, json.dumps(fb), output, job_id),
        )
        if job_type == "delta_apply":
            delta_status = "applied" if status == "finished" else "error"
            cur.execute(
                "UPDATE core_applyjobdelta SET status = %s WHERE apply_job_id = %s RETURNING delta_id",
                (delta_status, job_id),
            )
            ids = [r[0] for r in cur.fetchall()]
            if ids:
                cur.execute(
                    "UPDATE core_delta SET last_status = %s, last_apply_attempt_at = now(), updated_at = now()"
                    " WHERE id = ANY(%s)",
                    (delta_status, ids),
                )
    log.info(f"Job {job_id} {status}")


def main(args) -> int:
    signal.signal(signal.SIGTERM, _on_sigterm)
    log.info("Dequeue QFieldCloud Jobs from the DB")
    conn = qfcdb.connect()  # fails (and the container restarts) when the database is unreachable
    while not _state["stop"]:
        try:
            with conn, conn.cursor() as cur:
                cur.execute("SELECT pg_is_in_recovery()")
                if cur.fetchone()[0]:
                    log.error("Database is a read-only replica (pg_is_in_recovery), not dequeuing jobs")
                    job = None
                else:
                    cur.execute(claim_sql())
                    job = cur.fetchone()
            if job:
                log.info(f"Dequeued job {job[0]}, run!")
                run_job(conn, *job)
                continue
        except psycopg2.Error as exc:
            log.error(f"Database error: {str(exc).strip()}")
            if conn.closed:
                conn = qfcdb.connect()
        waited = 0.0
        while waited < POLL_S and not _state["stop"]:
            time.sleep(0.5)
            waited += 0.5
    log.info("Dequeue stopped")
    return 0
