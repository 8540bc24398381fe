#!/usr/bin/python
# Copyright (c) 2025, fibreflow
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations

DOCUMENTATION = r"""
---
module: qfc_sync_facts
short_description: Tell whether a self-hosted QFieldCloud can sync, and why not
version_added: 0.1.0
description:
  - One read-only call on the Docker host returns everything that decides whether QField can sync with a
    QFieldCloud compose stack, and names each problem with a stable code, the evidence and the remedy.
  - "It learns the stack in one pass: one container listing and one image listing on the Docker Engine API, one
    inspect per container of the project (and per worker started by hand), a bounded log read per worker, two SQL
    round trips whatever the queue length, and two HTTP requests to the status endpoint (on the project network, and
    at the server URL QField users enter, from the host). It never shells out."
  - Only the named project's containers count. Workers started by hand and QGIS job containers belong to it only
    when they use its worker image or its network, so a second QFieldCloud on the same host is never mixed in.
  - "Database credentials and host come from the environment of the app (else the worker) container, so nothing has
    to be configured on a default install. When C(POSTGRES_HOST) is a compose service (C(db)), the module connects
    to that container's address on the project network (the Docker host reaches bridge addresses)."
  - The module never fails because the stack is sick; an unreachable Docker daemon, database or app is a finding.
    It fails only for bad arguments or a missing Python library.
  - No secret value (passwords, C(SECRET_KEY), C(STORAGE_*) keys, C(STORAGES), tokens, e-mail password) appears in
    the result or in the metrics file. Secrets are masked by name and by value, also inside log lines and URLs.
  - The problem catalogue (codes, meaning, detection, fix) is in C(docs/problems.md) of the collection.
author:
  - FibreFlow operations (@fibreflow)
extends_documentation_fragment:
  - fibreflow.qfieldcloud.attributes
  - fibreflow.qfieldcloud.docker
  - fibreflow.qfieldcloud.project
requirements:
  - the Docker SDK for Python 5.0 or newer (Debian/Ubuntu C(python3-docker)) on the managed host
  - psycopg2 (or psycopg2-binary; Debian/Ubuntu C(python3-psycopg2)) on the managed host, unless O(skip) contains V(db)
attributes:
  check_mode:
    support: full
    details: The module only reads. In check mode the O(prometheus_textfile) is not written.
  diff_mode:
    support: none
  idempotent:
    support: full
  facts:
    description: Action returns an C(ansible_facts) dictionary that will update existing host facts.
    support: full
options:
  db_host:
    description:
      - Address of the database server to connect to.
      - Default is C(POSTGRES_HOST) of the app (else worker) container; a compose service name is resolved to that
        container's address on the project network.
    type: str
  db_port:
    description:
      - Port of the database server. Default is C(POSTGRES_PORT) of the app container, else V(5432).
    type: int
  db_name:
    description: Database name. Default is C(POSTGRES_DB) of the app container.
    type: str
  db_user:
    description: Database user. Default is C(POSTGRES_USER) of the app container.
    type: str
  db_password:
    description: Database password. Default is C(POSTGRES_PASSWORD) of the app container.
    type: str
  db_sslmode:
    description: libpq C(sslmode). Default is C(POSTGRES_SSLMODE) of the app container, else V(prefer).
    type: str
  app_url:
    description:
      - Base URL of QFieldCloud, or the full URL of its status endpoint (C(/api/v1/status/) is appended when missing).
      - Default is the app container's address on the project network, port 8000.
    type: str
  app_host_header:
    description:
      - C(Host) header for the status request. Behind nginx it must equal C(QFIELDCLOUD_HOST), else nginx closes
        the connection.
      - Default when the app container is queried directly is a host from its C(DJANGO_ALLOWED_HOSTS), else
        C(QFIELDCLOUD_HOST).
    type: str
  pending_age_threshold:
    description:
      - Seconds a claimable pending job (its project has no queued or started job and is not locked) may wait
        before the queue counts as stalled (problem C(queue_stalled)).
    type: int
    default: 300
  job_timeout:
    description:
      - Seconds after which a queued or started job is overdue (problem C(jobs_overdue)).
      - Default is the timeout the server itself uses. Before v26.24 that is the admin setting C(WORKER_TIMEOUT_S) in
        table C(constance_constance), when the database has it; from v26.24 C(QFIELDCLOUD_WORKER_TIMEOUT_S) of the
        worker container or of C(.env); else V(600).
    type: int
  crash_window:
    description:
      - Seconds back in which a worker's deaths (Docker C(die) events) are counted for problem C(worker_crash_loop).
        Upstream's worker exits on every database error, so its lifetime restart count says nothing about now.
    type: int
    default: 600
  cron_max_age:
    description:
      - Seconds since the last C(django_cron_cronjoblog) run after which the cron counts as not running.
    type: int
    default: 300
  log_lines:
    description:
      - How many lines at the end of each worker's log to scan for known signs. V(0) reads no log.
    type: int
    default: 200
  log_tail_lines:
    description:
      - How many of the last lines of each worker's log to return as C(log_tail) (redacted, each cut to 300
        characters). The lines that show a known fault sign are returned as C(log_excerpt) (at most 20) and the
        problems they explain carry them as C(evidence.log).
    type: int
    default: 5
  prometheus_textfile:
    description:
      - Path of a Prometheus textfile (for node_exporter's textfile collector, C(*.prom)) to write the metrics to.
      - Written atomically (temporary file in the same directory, then rename); an existing file keeps its mode, a
        new one gets C(0644). The directory must exist. Not written in check mode.
    type: path
  skip:
    description:
      - Checks a site does not have or does not want.
      - V(db) skips the database (and with it the queue), V(queue) keeps the connection check only, V(app) skips
        the status endpoint (and with it the client check), V(client) the check of the server URL QField users
        enter, V(cron) the ofelia/cron check, V(logs) the worker log scan, V(orphans) the job container check.
    type: list
    elements: str
    choices: [db, queue, app, client, cron, logs, orphans]
    default: []
seealso:
  - module: fibreflow.qfieldcloud.qfc_worker
  - module: community.docker.docker_container_info
notes:
  - Run it on the Docker host (the module's target), as a user that may use the Docker socket.
  - "The client check connects from the Docker host to the port nginx publishes (443, else 80; without nginx the
    app's published 8000) with the C(Host) header a QField device sends (C(QFIELDCLOUD_HOST), with the port when it
    is not the scheme's default). For https the certificate is not verified: the check is about nginx routing the
    name, not about TLS."
"""

EXAMPLES = r"""
- name: Diagnose the default install (project qfieldcloud), nothing to configure
  fibreflow.qfieldcloud.qfc_sync_facts:
  register: qfc

- name: Fail with the reasons when sync is blocked
  ansible.builtin.assert:
    that:
      - qfc.sync_ready
    fail_msg: >-
      {{ qfc.problems | map(attribute='code') | join(', ') }}:
      {{ qfc.problems | map(attribute='remedy') | first }}
    quiet: true

- name: A project directory alone is enough; write metrics for node_exporter too
  fibreflow.qfieldcloud.qfc_sync_facts:
    project_dir: /opt/qfieldcloud
    prometheus_textfile: /var/lib/node_exporter/textfile_collector/qfieldcloud.prom
  register: qfc

- name: Alert only on the worker problems of the field guide
  ansible.builtin.assert:
    that: >-
      qfc.problems | map(attribute='code') | intersect(['worker_not_running', 'worker_image_missing',
      'worker_socket_denied', 'worker_db_host_wrong', 'worker_port_published']) | length == 0

- name: External database and the public URL through nginx; no cron on this site
  fibreflow.qfieldcloud.qfc_sync_facts:
    project_name: qfieldcloud
    db_host: db.internal.example
    db_port: 5432
    db_password: "{{ vault_qfc_db_password }}"
    app_url: https://qfield.example.com
    app_host_header: qfield.example.com
    skip: [cron]

- name: The facts are also set for later tasks
  ansible.builtin.debug:
    msg: >-
      {{ ansible_facts.qfc_sync.queue.claimable_pending }} claimable jobs,
      oldest waits {{ ansible_facts.qfc_sync.queue.oldest_claimable_pending_age_s }} s
"""

RETURN = r"""
sync_ready:
  description:
    - True only when no problem blocks sync, that is when a job created now would finish (no problem whose
      C(blocks) is V(sync)).
  returned: always
  type: bool
  sample: false
client_ready:
  description:
    - True only when no problem says that devices cannot reach the server at the URL they are given (no problem whose
      C(blocks) is V(client)). This is seen from the Docker host, and a firewall or hairpin question may look
      different from a phone.
  returned: always
  type: bool
  sample: true
problems:
  description:
    - The problems found, most severe first, one entry per code. Codes are stable (catalogue in C(docs/problems.md)).
  returned: always
  type: list
  elements: dict
  contains:
    code:
      description: Stable snake_case problem code.
      type: str
      sample: worker_not_running
    severity:
      description: V(critical) (sync blocked now), V(error) (breaks sync for some jobs or soon), V(warning).
      type: str
      sample: critical
    blocks:
      description:
        - What the problem stops. V(sync) (a job created now would not finish), V(client) (devices cannot reach the
          server at its URL, although jobs run) or V(none).
      type: str
      sample: sync
    summary:
      description: One line for a person.
      type: str
      sample: "No worker_wrapper is running: jobs stay pending forever"
    evidence:
      description:
        - What was observed (container names, values, counts, log sign counts). Secrets masked.
        - For a worker problem, C(log) holds the last lines of the worker's log that explain it (at most 20, each cut
          to 300 characters, secrets masked).
      type: dict
      sample: {"replicas_expected": 1, "replicas_running": 0, "containers": []}
    remedy:
      description: The command or the collection playbook that fixes it.
      type: str
      sample: "ansible-playbook fibreflow.qfieldcloud.site (role fibreflow.qfieldcloud.worker), or ..."
prometheus_textfile_written:
  description: Whether the metrics file was written (false in check mode or when not asked).
  returned: always
  type: bool
ansible_facts:
  description: Facts set for later tasks.
  returned: always
  type: dict
  contains:
    qfc_sync:
      description:
        - Everything learnt about the stack. Keys present depend on what could be reached and on O(skip).
        - C(project) (name, name_source, dir, env_file, compose_files, network, environment);
          C(daemon) (reachable, version, api_version, docker_host, error);
          C(services) (per service - present, containers, running, state, health, restart_count, image, image_id,
          started_at, created);
          C(worker) (expected, replicas_expected, replicas_running, hand_started_running, replicas, hand_started;
          each replica has name, state, running, restart_count, started_at, user, networks, published_ports,
          postgres_host, socket_mount, command, entrypoint, image, image_id, restart_policy, hardening, drift, log,
          log_tail, log_excerpt);
          C(images) (worker, app, qgis - name, present, id, variable);
          C(database) (checked, reachable, error_kind, error, host, port, name, user, in_recovery, generation,
          lock_column, tables_present, missing_tables, migrations_applied, round_trips);
          C(queue) (counts_by_status, counts_by_type, counts, claimable_pending, oldest_claimable_pending_age_s,
          oldest_pending_age_s, overdue_queued, overdue_started, overdue_jobs, failed_last_hour,
          finished_last_hour, pending_deltas, locked_projects);
          C(app) (checked, url, host_header, reachable, http_status, status, ok, error);
          C(client) (checked, host, host_source, nginx_host, local_host, url - the server URL to enter in QField,
          via - nginx or app, scheme, public_port, connect_host, connect_port, host_header, alternatives, reachable,
          http_status, ok, error);
          C(cron) (checked, ofelia_present, ofelia_running, ofelia_stale, last_run, last_run_age_s);
          C(job_containers), C(orphan_job_containers), C(thresholds), C(checks_skipped), C(api_calls), C(duration_s).
      type: dict
      returned: always
      sample:
        project: {name: qfieldcloud, network: qfieldcloud_default}
        worker: {replicas_expected: 1, replicas_running: 1}
        queue: {claimable_pending: 0, oldest_claimable_pending_age_s: null}
"""

import os
import traceback

from ansible.module_utils.basic import AnsibleModule, missing_required_lib

from ansible_collections.fibreflow.qfieldcloud.plugins.module_utils import database, docker_engine
from ansible_collections.fibreflow.qfieldcloud.plugins.module_utils.argspec import common_args
from ansible_collections.fibreflow.qfieldcloud.plugins.module_utils.sync_facts import CHECKS, gather


def main() -> None:
    module = AnsibleModule(
        argument_spec=common_args(
            db_host={"type": "str"},
            db_port={"type": "int"},
            db_name={"type": "str"},
            db_user={"type": "str"},
            db_password={"type": "str", "no_log": True},
            db_sslmode={"type": "str"},
            app_url={"type": "str"},
            app_host_header={"type": "str"},
            pending_age_threshold={"type": "int", "default": 300},
            job_timeout={"type": "int"},
            crash_window={"type": "int", "default": 600},
            cron_max_age={"type": "int", "default": 300},
            log_lines={"type": "int", "default": 200},
            log_tail_lines={"type": "int", "default": 5},
            prometheus_textfile={"type": "path"},
            skip={"type": "list", "elements": "str", "choices": list(CHECKS), "default": []},
        ),
        supports_check_mode=True,
    )
    params = module.params
    if not docker_engine.HAS_DOCKER:
        module.fail_json(
            msg=missing_required_lib("docker") + " Debian/Ubuntu: apt-get install python3-docker; RHEL-like: dnf"
            " install python3-docker (EPEL); or run the role fibreflow.qfieldcloud.prerequisites.",
            exception=docker_engine.DOCKER_IMPORT_ERROR,
        )
    if "db" not in params["skip"] and not database.HAS_PSYCOPG2:
        module.fail_json(
            msg=missing_required_lib("psycopg2") + " Debian/Ubuntu: apt-get install python3-psycopg2; RHEL-like:"
            " dnf install python3-psycopg2. Or set skip: [db] to diagnose without the database.",
            exception=database.PSYCOPG2_IMPORT_ERROR,
        )
    for name in ("timeout", "pending_age_threshold", "cron_max_age", "crash_window"):
        if params[name] is not None and params[name] <= 0:
            module.fail_json(msg=f"{name} must be a positive number of seconds, got {params[name]}.")
    if params["job_timeout"] is not None and params["job_timeout"] <= 0:
        module.fail_json(msg=f"job_timeout must be a positive number of seconds, got {params['job_timeout']}.")
    if params["log_lines"] < 0:
        module.fail_json(msg=f"log_lines must be 0 (no log read) or more, got {params['log_lines']}.")
    if params["log_tail_lines"] < 0:
        module.fail_json(msg=f"log_tail_lines must be 0 or more, got {params['log_tail_lines']}.")
    if params["project_dir"] and not os.path.isdir(params["project_dir"]):
        module.fail_json(
            msg=f"project_dir {params['project_dir']} is not a directory on this host: give the directory that holds "
            "the stack's .env and docker-compose.yml, or use project_name instead."
        )
    textfile = params["prometheus_textfile"]
    if textfile and not os.path.isdir(os.path.dirname(os.path.abspath(textfile))):
        module.fail_json(msg=f"prometheus_textfile: the directory of {textfile} does not exist; create it first.")

    result = gather(dict(params))
    written = False
    if textfile and not module.check_mode:
        # Imported here: only a run that writes metrics pays for it.
        from ansible_collections.fibreflow.qfieldcloud.plugins.module_utils import metrics  # noqa: PLC0415

        text = metrics.render_metrics(result["facts"], result["problems"])
        try:
            metrics.write_textfile(textfile, text)
            written = True
        except OSError as exc:
            module.fail_json(
                msg=f"could not write prometheus_textfile {textfile}: {exc}",
                exception=traceback.format_exc(),
                problems=result["problems"],
                sync_ready=result["sync_ready"],
                client_ready=result["client_ready"],
            )
    module.exit_json(
        changed=False,
        ansible_facts={"qfc_sync": result["facts"]},
        problems=result["problems"],
        sync_ready=result["sync_ready"],
        client_ready=result["client_ready"],
        prometheus_textfile_written=written,
    )


if __name__ == "__main__":
    main()
