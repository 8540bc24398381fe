"""`manage.py dequeue`: the job loop of upstream's worker_wrapper, with its failure modes.

Each turn: remove orphaned QGIS job containers (Docker socket), refuse a replica database (raise), claim the
oldest pending job whose project has no queued/started job and is not locked (FOR UPDATE SKIP LOCKED), and run
it in a sibling QGIS container. While idle the orphan clean-up runs about every second.

As upstream, the loop has no error handling: a database error, a socket it may not use or a replica ends the
process with a traceback, and the restart policy brings the container back. Job rows are written with Django's
``update_fields`` semantics: only the named columns change, so ``updated_at`` keeps its creation time.
SIGTERM/SIGINT let the current job finish first.
"""

import datetime
import json
import logging
import os
import shutil
import signal
import socket
import sys
import tempfile
import time
import traceback

import docker
import qfcdb
import settings

POLL_S = int(float(os.environ.get("STANDIN_POLL_S", "5")))
SIGKILL_EXIT_CODE = 137
TIMEOUT_EXIT_CODE = -1
_state = {"alive": True}


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


def _stop(signum, frame):
    _state["alive"] = False


def save(conn, job_id, **fields) -> None:
    """Update only the given columns of one job (Django's ``save(update_fields=...)``); ``now`` means now()."""
    sets, values = [], []
    for column, value in fields.items():
        if value == "now":
            sets.append(f"{column} = now()")
        else:
            sets.append(f"{column} = %s")
            values.append(json.dumps(value) if column == "feedback" and value is not None else value)
    with conn, conn.cursor() as cur:
        cur.execute(f"UPDATE core_job SET {', '.join(sets)} WHERE id = %s", (*values, job_id))


def cancel_orphaned_workers(conn, client) -> None:
    """Kill and remove running containers labelled ``app=<ENVIRONMENT>_worker`` that no job row knows.

    The rule looks at the label and this database only, never at the compose project: a second QFieldCloud on
    the same engine with the same ENVIRONMENT loses its job containers to this worker (upstream issue #1822).
    """
    try:
        running = client.containers.list(filters={"label": f"app={settings.ENVIRONMENT}_worker"})
    except docker.errors.NotFound:
        return  # a container went away while it was listed: nothing to cancel
    if not running:
        return
    ids = [c.id for c in running]
    with conn, conn.cursor() as cur:
        cur.execute("SELECT container_id FROM core_job WHERE container_id = ANY(%s)", (ids,))
        known = {row[0] for row in cur.fetchall()}
    for container_id in sorted(set(ids) - known):
        container = client.containers.get(container_id)
        try:
            container.kill()
            container.remove()
            log.info(f"Cancel orphaned worker {container_id}")
        except docker.errors.APIError:
            pass  # already gone


def claim(conn):
    """Claim the next job: only ``status`` is saved (``updated_at`` does not move)."""
    with conn, conn.cursor() as cur:
        cur.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        cur.execute(
            f"SELECT j.id, j.project_id, j.type, j.feedback, j.created_by_id"
            f" FROM core_job j JOIN {qfcdb.PROJECT_TABLE} p ON p.id = j.project_id"
            " WHERE j.status = 'pending' AND NOT (" + qfcdb.PROJECT_LOCKED + ")"
            "   AND j.project_id NOT IN (SELECT project_id FROM core_job WHERE status IN ('queued', 'started'))"
            " ORDER BY j.created_at LIMIT 1 FOR UPDATE SKIP LOCKED"
        )
        job = cur.fetchone()
        if job:
            log.info(f"Dequeued job {job[0]}, run!")
            cur.execute("UPDATE core_job SET status = 'queued' WHERE id = %s", (job[0],))
    return job


class JobRun:
    """One job, run as upstream's JobRun.run() does (hooks for delta_apply)."""

    def __init__(self, conn, client, row, timeout_s: int):
        self.conn, self.client, self.timeout_s = conn, client, timeout_s
        self.job_id, self.project_id, self.type, extra, self.created_by = row
        self.extra = extra or {}
        self.tmpdir = tempfile.mkdtemp(dir="/tmp")
        os.chmod(self.tmpdir, 0o777)
        self.delta_ids: list = []

    # -- hooks -----------------------------------------------------------------
    def before_docker_run(self) -> None:
        if self.type != "delta_apply":
            return
        with self.conn, self.conn.cursor() as cur:
            cur.execute(
                "SELECT d.id, d.content FROM core_applyjobdelta a JOIN core_delta d ON d.id = a.delta_id"
                " WHERE a.apply_job_id = %s ORDER BY d.created_at",
                (self.job_id,),
            )
            rows = cur.fetchall()
            self.delta_ids = [r[0] for r in rows]
            cur.execute(
                "UPDATE core_applyjobdelta SET status = 'started' WHERE apply_job_id = %s AND delta_id = ANY(%s)",
                (self.job_id, self.delta_ids),
            )
            cur.execute("UPDATE core_delta SET last_status = 'started' WHERE id = ANY(%s)", (self.delta_ids,))
        with open(os.path.join(self.tmpdir, "deltafile.json"), "w") as fh:
            json.dump({"deltas": [r[1] for r in rows], "project": str(self.project_id), "version": "1.0"}, fh)

    def after_docker_run(self, feedback: dict) -> None:
        if self.type != "delta_apply":
            return
        statuses = {"status_applied": "applied", "status_conflict": "conflict", "status_apply_failed": "not_applied"}
        with self.conn, self.conn.cursor() as cur:
            for item in feedback["outputs"]["apply_deltas"]["delta_feedback"]:
                status = statuses.get(item["status"], "error")
                cur.execute(
                    "UPDATE core_delta SET last_status = %s, last_feedback = %s, last_modified_pk = %s,"
                    " last_apply_attempt_at = (SELECT started_at FROM core_job WHERE id = %s),"
                    " last_apply_attempt_by_id = %s WHERE id = %s",
                    (status, json.dumps(item), item.get("modified_pk"), self.job_id, self.created_by, item["delta_id"]),
                )
                cur.execute(
                    "UPDATE core_applyjobdelta SET status = %s, feedback = %s, modified_pk = %s"
                    " WHERE apply_job_id = %s AND delta_id = %s",
                    (status, json.dumps(item), item.get("modified_pk"), self.job_id, item["delta_id"]),
                )

    def after_docker_exception(self) -> None:
        if self.type != "delta_apply" or not self.delta_ids:
            return
        with self.conn, self.conn.cursor() as cur:
            cur.execute(
                "UPDATE core_delta SET last_status = 'error', last_feedback = NULL, last_modified_pk = NULL,"
                " last_apply_attempt_at = (SELECT started_at FROM core_job WHERE id = %s),"
                " last_apply_attempt_by_id = %s WHERE id = ANY(%s)",
                (self.job_id, self.created_by, self.delta_ids),
            )
            cur.execute(
                "UPDATE core_applyjobdelta SET status = 'error', feedback = NULL, modified_pk = NULL"
                " WHERE apply_job_id = %s AND delta_id = ANY(%s)",
                (self.job_id, self.delta_ids),
            )

    # -- the run ---------------------------------------------------------------
    def concurrent_jobs(self) -> int:
        with self.conn, self.conn.cursor() as cur:
            cur.execute(
                "SELECT count(*) FROM core_job WHERE project_id = %s AND status IN ('queued', 'started') AND id <> %s",
                (self.project_id, self.job_id),
            )
            return cur.fetchone()[0]

    def run(self) -> None:
        feedback: dict = {}
        try:
            save(self.conn, self.job_id, status="started", started_at="now")
            if self.concurrent_jobs() > 0:
                save(self.conn, self.job_id, status="pending", started_at=None)
                log.warning(f"Concurrent jobs occured for job {self.job_id}.")
                return
            self.before_docker_run()
            exit_code, output = self.run_docker()
            if exit_code == SIGKILL_EXIT_CODE:
                feedback = {
                    "error": "Docker engine sigkill.",
                    "error_type": "DOCKER_ENGINE_SIGKILL",
                    "error_class": "",
                    "error_origin": "container",
                    "error_stack": "",
                }
            elif exit_code == TIMEOUT_EXIT_CODE:
                feedback = {
                    "error": "Worker timeout error.",
                    "error_type": "TIMEOUT",
                    "error_class": "",
                    "error_origin": "container",
                    "error_stack": "",
                }
            else:
                try:
                    with open(os.path.join(self.tmpdir, "feedback.json")) as fh:
                        feedback = json.load(fh)
                    if feedback.get("error"):
                        feedback["error_origin"] = "container"
                except Exception as err:
                    if not isinstance(feedback, dict):
                        feedback = {"error_feedback": feedback}
                    feedback["error"] = str(err)
                    feedback["error_origin"] = "worker_wrapper"
                    feedback["error_stack"] = traceback.format_tb(sys.exc_info()[2])
            feedback["container_exit_code"] = exit_code
            save(self.conn, self.job_id, output=output, feedback=feedback)
            if exit_code != 0 or feedback.get("error") is not None:
                save(self.conn, self.job_id, status="failed")  # no finished_at, as upstream
                try:
                    self.after_docker_exception()
                except Exception:
                    log.error("Failed to run the `after_docker_exception` handler.")
                return
            self.after_docker_run(feedback)
            save(self.conn, self.job_id, status="finished", finished_at="now")
        except Exception as err:
            feedback = {
                "error": str(err),
                "error_origin": "worker_wrapper",
                "error_stack": traceback.format_tb(sys.exc_info()[2]),
            }
            log.error(f"Failed job run:\n{json.dumps(feedback, sort_keys=True)}")
            try:
                try:
                    self.after_docker_exception()
                except Exception:
                    log.error("Failed to run the `after_docker_exception` handler.")
                # upstream's exception branch is the one place a failed job gets finished_at
                save(self.conn, self.job_id, status="failed", feedback=feedback, finished_at="now")
            except Exception:
                log.error("Failed to handle exception and update the job status")
        finally:
            shutil.rmtree(self.tmpdir, ignore_errors=True)

    def qgis_image(self) -> str:
        major = 3
        if not qfcdb.LEGACY:
            with self.conn, self.conn.cursor() as cur:
                cur.execute(f"SELECT qgis_version FROM {qfcdb.PROJECT_TABLE} WHERE id = %s", (self.project_id,))
                row = cur.fetchone()
            major = settings.qgis_major(row[0] if row else None)
        if major not in settings.QGIS_IMAGES:
            raise Exception(f"Unsupported QGIS major version {major} for project {self.project_id}.")
        return settings.QGIS_IMAGES[major]

    def run_docker(self) -> tuple[int, str]:
        image = self.qgis_image()
        save(self.conn, self.job_id, docker_started_at="now")
        spec = {
            "command": ["python3", "/opt/standin/app/qgis_job.py", self.type, str(self.project_id)],
            "environment": {
                "JOB_ID": str(self.job_id),
                "QFIELDCLOUD_URL": os.environ.get("QFIELDCLOUD_WORKER_QFIELDCLOUD_URL", "http://app:8000/api/v1/"),
                "STANDIN_SECONDS": str(self.extra.get("standin_seconds", os.environ.get("STANDIN_JOB_SECONDS", "1"))),
                "STANDIN_FEEDBACK": "0" if self.extra.get("standin_no_feedback") else "1",
            },
            "volumes": {self.tmpdir: {"bind": "/io/", "mode": "rw"}},
            "network": settings.DEFAULT_NETWORK,
            "labels": {
                "app": f"{settings.ENVIRONMENT}_worker",
                "type": self.type,
                "job_id": str(self.job_id),
                "project_id": str(self.project_id),
            },
            "mem_limit": "1000m",
            "cpu_shares": 512,
            "detach": True,
        }
        try:
            container = self.client.containers.create(image, **spec)
        except docker.errors.ImageNotFound:
            self.client.images.pull(image)  # what containers.run does: a missing local image means a pull
            container = self.client.containers.create(image, **spec)
        # The container id is saved before the container runs, so no idle loop ever sees it unknown.
        save(self.conn, self.job_id, docker_started_at="now", container_id=container.id)
        container.start()
        log.info(f"Starting worker {container.id} ...")
        status_code = TIMEOUT_EXIT_CODE
        try:
            status_code = container.wait(timeout=self.timeout_s)["StatusCode"]
            if status_code == SIGKILL_EXIT_CODE:
                log.info("Job canceled, probably due to deleted Project and Jobs.")
                return status_code, "Job has been cancelled by parent process!"
        except Exception:
            log.error("Timeout error.")
        save(self.conn, self.job_id, docker_finished_at="now")
        output = container.logs().decode(errors="replace")
        container.stop()
        container.remove()
        log.info(f"Finished execution with code {status_code}, logs:\n{output}")
        if status_code == TIMEOUT_EXIT_CODE:
            output += f"\nTimeout error! The job failed to finish within {self.timeout_s} seconds!\n"
        return status_code, output


def main(args) -> int:
    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    log.info("Dequeue QFieldCloud Jobs from the DB")
    conn = qfcdb.connect()
    timeout_s = settings.worker_timeout_s(conn)  # read once at start, like upstream's class attribute
    client = docker.from_env()
    while _state["alive"]:
        cancel_orphaned_workers(conn, client)
        with conn, conn.cursor() as cur:
            cur.execute("SELECT pg_is_in_recovery()")
            if cur.fetchone()[0]:
                raise Exception("Expected `worker_wrapper` to be connected to the master DB node!")
        job = claim(conn)
        if job:
            JobRun(conn, client, job, timeout_s).run()
            continue
        for _ in range(POLL_S):
            if _state["alive"]:
                cancel_orphaned_workers(conn, client)
                time.sleep(1)
    return 0
