"""Settings of the stand-in's app, worker and cron, read from the environment when a command starts.

Like upstream's settings module they are evaluated before any command runs: from v26.24 the job timeout is
``int(QFIELDCLOUD_WORKER_TIMEOUT_S)``, so an empty value stops `runserver`, `dequeue` and `runcrons` with a
``ValueError`` traceback. The older generation has no such variable: its timeout is the admin-editable
django-constance setting ``WORKER_TIMEOUT_S`` in ``constance_constance`` (see ``worker_timeout_s``).
"""

import json
import os

# The schema generation is part of the code version, so it comes with the image (Dockerfile ENV).
LEGACY = os.environ.get("STANDIN_SCHEMA", "current") == "legacy"
PROJECT = os.environ.get("COMPOSE_PROJECT_NAME") or os.environ.get("STANDIN_PROJECT", "qfieldcloud")
ENVIRONMENT = os.environ.get("ENVIRONMENT", "development")
DEFAULT_NETWORK = os.environ.get("QFIELDCLOUD_DEFAULT_NETWORK") or f"{PROJECT}_default"
CONSTANCE_DEFAULT_TIMEOUT_S = 600

if LEGACY:
    WORKER_TIMEOUT_S = None  # read from constance_constance
    QGIS_IMAGES = {3: os.environ.get("QFIELDCLOUD_QGIS_IMAGE_NAME") or os.environ.get("STANDIN_DEFAULT_QGIS3_IMAGE")}
else:
    WORKER_TIMEOUT_S = int(os.environ.get("QFIELDCLOUD_WORKER_TIMEOUT_S", "600"))
    QGIS_IMAGES = {
        3: os.environ.get("QFIELDCLOUD_QGIS3_IMAGE_NAME") or os.environ.get("STANDIN_DEFAULT_QGIS3_IMAGE"),
        4: os.environ.get("QFIELDCLOUD_QGIS4_IMAGE_NAME") or os.environ.get("STANDIN_DEFAULT_QGIS4_IMAGE"),
    }


def worker_timeout_s(conn) -> int:
    """The job timeout in seconds: the environment from v26.24, django-constance before."""
    if WORKER_TIMEOUT_S is not None:
        return WORKER_TIMEOUT_S
    import psycopg2

    try:
        with conn, conn.cursor() as cur:
            cur.execute("SELECT value FROM constance_constance WHERE key = 'WORKER_TIMEOUT_S'")
            row = cur.fetchone()
    except psycopg2.errors.UndefinedTable:
        return CONSTANCE_DEFAULT_TIMEOUT_S  # constance falls back to its default without a table
    if not row or row[0] is None:
        return CONSTANCE_DEFAULT_TIMEOUT_S
    value = json.loads(row[0])
    return int(value["__value__"] if isinstance(value, dict) else value)


def qgis_major(version) -> int:
    """QGIS major version of a project's ``qgis_version`` ("3.40.1", "4.0"); QGIS 3 when unknown."""
    if not version:
        return 3
    try:
        return int(str(version).split(".", 1)[0])
    except ValueError:
        return 3
