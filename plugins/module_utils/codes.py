# Copyright (c) 2025, fibreflow
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Every problem code of the collection, one constant each, named after the code it holds.

The catalogue (:mod:`problems`) describes each of them; every detector raises them through these names, so that
a search for a code finds where it is raised.
"""

from __future__ import annotations

CODE_DOCKER_UNREACHABLE = "docker_unreachable"
CODE_STACK_NOT_FOUND = "stack_not_found"
CODE_SERVICE_NOT_RUNNING = "service_not_running"
CODE_WORKER_NOT_RUNNING = "worker_not_running"
CODE_WORKER_IMAGE_MISSING = "worker_image_missing"
CODE_WORKER_IMAGE_WRONG = "worker_image_wrong"
CODE_WORKER_IMAGE_OUTDATED = "worker_image_outdated"
CODE_WORKER_SOCKET_DENIED = "worker_socket_denied"
CODE_WORKER_SOCKET_NOT_MOUNTED = "worker_socket_not_mounted"
CODE_WORKER_DB_HOST_WRONG = "worker_db_host_wrong"
CODE_WORKER_PORT_PUBLISHED = "worker_port_published"
CODE_WORKER_WRONG_NETWORK = "worker_wrong_network"
CODE_WORKER_CRASH_LOOP = "worker_crash_loop"
CODE_WORKER_DEBUG_COMMAND = "worker_debug_command"
CODE_WORKER_COMMAND_WRONG = "worker_command_wrong"
CODE_WORKER_RESTART_POLICY = "worker_restart_policy"
CODE_WORKER_REPLICAS_LOW = "worker_replicas_low"
CODE_WORKER_REPLICAS_HIGH = "worker_replicas_high"
CODE_WORKER_HAND_STARTED = "worker_hand_started"
CODE_WORKER_TIMEOUT_EMPTY = "worker_timeout_empty"
CODE_QGIS_NETWORK_MISSING = "qgis_network_missing"
CODE_SHARED_ENVIRONMENT_LABEL = "shared_environment_label"
CODE_QGIS_IMAGE_MISSING = "qgis_image_missing"
CODE_QUEUE_STALLED = "queue_stalled"
CODE_JOBS_OVERDUE = "jobs_overdue"
CODE_JOBS_ORPHANED = "jobs_orphaned"
CODE_JOBS_FAILING = "jobs_failing"
CODE_DB_UNREACHABLE = "db_unreachable"
CODE_DB_AUTH_FAILED = "db_auth_failed"
CODE_DB_IS_REPLICA = "db_is_replica"
CODE_MIGRATIONS_MISSING = "migrations_missing"
CODE_APP_UNREACHABLE = "app_unreachable"
CODE_APP_STATUS_NOT_OK = "app_status_not_ok"
CODE_NGINX_HOST_MISMATCH = "nginx_host_mismatch"
CODE_CLIENT_URL_UNREACHABLE = "client_url_unreachable"
CODE_CLIENT_HOST_LOCAL = "client_host_local"
CODE_CRON_NOT_RUNNING = "cron_not_running"
CODE_ORPHAN_JOB_CONTAINERS = "orphan_job_containers"
CODE_WORKER_CONFIG_NOT_PERSISTENT = "worker_config_not_persistent"
CODE_WORKER_SHOULD_BE_STOPPED = "worker_should_be_stopped"
CODE_DRAIN_TIMEOUT = "drain_timeout"
CODE_VERIFY_FAILED = "verify_failed"

ALL = (
    CODE_DOCKER_UNREACHABLE,
    CODE_STACK_NOT_FOUND,
    CODE_SERVICE_NOT_RUNNING,
    CODE_WORKER_NOT_RUNNING,
    CODE_WORKER_IMAGE_MISSING,
    CODE_WORKER_IMAGE_WRONG,
    CODE_WORKER_IMAGE_OUTDATED,
    CODE_WORKER_SOCKET_DENIED,
    CODE_WORKER_SOCKET_NOT_MOUNTED,
    CODE_WORKER_DB_HOST_WRONG,
    CODE_WORKER_PORT_PUBLISHED,
    CODE_WORKER_WRONG_NETWORK,
    CODE_WORKER_CRASH_LOOP,
    CODE_WORKER_DEBUG_COMMAND,
    CODE_WORKER_COMMAND_WRONG,
    CODE_WORKER_RESTART_POLICY,
    CODE_WORKER_REPLICAS_LOW,
    CODE_WORKER_REPLICAS_HIGH,
    CODE_WORKER_HAND_STARTED,
    CODE_WORKER_TIMEOUT_EMPTY,
    CODE_QGIS_NETWORK_MISSING,
    CODE_SHARED_ENVIRONMENT_LABEL,
    CODE_QGIS_IMAGE_MISSING,
    CODE_QUEUE_STALLED,
    CODE_JOBS_OVERDUE,
    CODE_JOBS_ORPHANED,
    CODE_JOBS_FAILING,
    CODE_DB_UNREACHABLE,
    CODE_DB_AUTH_FAILED,
    CODE_DB_IS_REPLICA,
    CODE_MIGRATIONS_MISSING,
    CODE_APP_UNREACHABLE,
    CODE_APP_STATUS_NOT_OK,
    CODE_NGINX_HOST_MISMATCH,
    CODE_CLIENT_URL_UNREACHABLE,
    CODE_CLIENT_HOST_LOCAL,
    CODE_CRON_NOT_RUNNING,
    CODE_ORPHAN_JOB_CONTAINERS,
    CODE_WORKER_CONFIG_NOT_PERSISTENT,
    CODE_WORKER_SHOULD_BE_STOPPED,
    CODE_DRAIN_TIMEOUT,
    CODE_VERIFY_FAILED,
)
