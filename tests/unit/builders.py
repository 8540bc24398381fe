# SPDX-License-Identifier: GPL-3.0-or-later
"""Plain-data builders shared by the unit tests: a healthy stack's facts and the crash log of a worker.

Import them (``from builders import HEALTHY``); ``conftest.py`` hands a fresh copy out as the ``facts`` fixture.
"""

from __future__ import annotations

import copy

REPLICA = {
    "name": "qfieldcloud-worker_wrapper-1",
    "compose": True,
    "user": "root",
    "image_user": "10001",
    "networks": ["qfieldcloud_default"],
    "published_ports": [],
    "postgres_host": "db",
    "socket_mount": {"present": True, "rw": True, "source": "/var/run/docker.sock"},
    "command": ["python", "manage.py", "dequeue"],
    "image": "qfieldcloud-worker_wrapper",
    "image_id": "sha256:w",
    "restart_policy": "unless-stopped",
    "running": True,
    "state": "running",
    "restart_count": 0,
    "log": {"dequeue_banner": True, "dequeued_jobs": 0},
}

HEALTHY = {
    "project": {
        "name": "qfieldcloud",
        "dir": "/srv/qfc",
        "network": "qfieldcloud_default",
        "environment": "production",
    },
    "thresholds": {"pending_age_s": 300, "job_timeout_s": 600, "cron_max_age_s": 300, "crash_restarts": 3},
    "daemon": {"reachable": True, "version": "20.10.24"},
    "services": {
        "app": {"present": True, "containers": 1, "running": 1, "state": "running"},
        "db": {"present": True, "containers": 1, "running": 1, "state": "running"},
        "memcached": {"present": True, "containers": 1, "running": 1, "state": "running"},
        "nginx": {"present": True, "containers": 1, "running": 1, "state": "running"},
        "ofelia": {"present": True, "containers": 1, "running": 1, "state": "running"},
        "worker_wrapper": {"present": True, "containers": 1, "running": 1, "state": "running"},
    },
    "worker": {
        "replicas_expected": 1,
        "replicas_running": 1,
        "replicas": [dict(REPLICA, drift=[])],
        "hand_started": [],
    },
    "images": {
        "worker": {"name": "qfieldcloud-worker_wrapper", "present": True},
        "qgis": [{"variable": "QFIELDCLOUD_QGIS3_IMAGE_NAME", "name": "qfieldcloud-qgis3", "present": True}],
    },
    "database": {"checked": True, "reachable": True, "in_recovery": False, "tables_present": True, "host": "db"},
    "queue": {
        "checked": True,
        "claimable_pending": 0,
        "oldest_claimable_pending_age_s": None,
        "overdue_queued": 0,
        "overdue_started": 0,
        "failed_last_hour": 0,
        "finished_last_hour": 3,
    },
    "app": {"checked": True, "reachable": True, "ok": True, "http_status": 200, "status": {"database": "ok"}},
    "cron": {
        "checked": True,
        "ofelia_present": True,
        "ofelia_running": True,
        "ofelia_stale": False,
        "last_run_age_s": 30,
    },
    "orphan_job_containers": [],
}

UNRESOLVED = 'could not translate host name "postgres" to address: Name or service not known'
CRASH_LOG = "\n".join(
    ["Waiting for postgres...", "Postgres isn't ready.", UNRESOLVED] * 12
    + [
        '{"level": "INFO", "message": "Dequeue QFieldCloud Jobs from the DB"}',
        "x" * 1000 + " Permission denied docker.sock",
    ]
)


def crash_replica(log_excerpt, **extra):
    """A replica restarting on an unresolved database host; ``log_excerpt`` is stack.log_excerpt(CRASH_LOG)."""
    rep = copy.deepcopy(HEALTHY["worker"]["replicas"][0])
    rep.update(
        state="restarting",
        running=False,
        restart_count=5,
        postgres_host="postgres",
        log={"host_unresolved": 12, "postgres_not_ready": 12, "dequeue_banner": False},
        log_tail=CRASH_LOG.splitlines()[-3:],
        log_excerpt=log_excerpt,
    )
    rep.update(extra)
    return rep


def healthy():
    """A fresh copy of HEALTHY."""
    return copy.deepcopy(HEALTHY)
