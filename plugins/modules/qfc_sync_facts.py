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
  boot_script_dir:
    description:
      - Where the start script C(qfieldcloud-start-<project>) that brings the stack up at boot is installed (the
        role fibreflow.qfieldcloud.startup's C(qfieldcloud_startup_boot_script_dir)), reported in
        RV(ansible_facts.qfc_sync.boot). Reading it changes nothing.
      - Default C(/usr/local/sbin).
    type: path
  boot_unit_dir:
    description:
      - Where the systemd unit C(qfieldcloud-<project>.service) is installed (the startup role's
        C(qfieldcloud_startup_boot_unit_dir)), reported in RV(ansible_facts.qfc_sync.boot).
      - Default C(/etc/systemd/system).
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
  sample:
    - code: worker_socket_denied
      severity: critical
      blocks: sync
      summary: The worker cannot use the Docker socket (not running as root)
      evidence:
        container: dret-worker_wrapper-1
        field: user
        expected: root
        actual: "10001"
        log:
          - "docker.errors.DockerException: Error while fetching server API version: ('Connection aborted.',
            PermissionError(13, 'Permission denied'))"
        more: [{container: dret-worker_wrapper-1, sign: Permission denied on docker.sock, log_lines_matching: 3}]
      remedy: "`ansible-playbook fibreflow.qfieldcloud.site` (qfc_worker enforces user root in its compose override),
        or set `user: root` on worker_wrapper and `cd /opt/qfieldcloud && docker compose up -d --no-deps
        worker_wrapper`."
      repaired_by: site.yml
  contains:
    code:
      description: Stable snake_case problem code.
      type: str
      sample: worker_socket_denied
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
      sample: The worker cannot use the Docker socket (not running as root)
    evidence:
      description:
        - What was observed (container names, values, counts, log sign counts). Secrets masked.
        - For a worker problem, C(log) holds the last lines of the worker's log that explain it (at most 20, each cut
          to 300 characters, secrets masked).
      type: dict
      sample: {"replicas_expected": 1, "replicas_running": 0, "containers": [{"name": "dret-worker_wrapper-1",
               "state": "restarting"}]}
    remedy:
      description: The command or the collection playbook that fixes it.
      type: str
      sample: "`ansible-playbook fibreflow.qfieldcloud.site` (role fibreflow.qfieldcloud.worker), or
        `cd /opt/qfieldcloud && docker compose up -d --no-deps worker_wrapper`."
    repaired_by:
      description:
        - The playbook of the collection that repairs it with its defaults, V(site.yml) or V(maintenance.yml); null
          when none does (the remedy says what a person does, for example starting Docker).
      type: str
      sample: site.yml
prometheus_textfile_written:
  description: Whether the metrics file was written (false in check mode or when O(prometheus_textfile) is not set).
  returned: always
  type: bool
  sample: false
ansible_facts:
  description: Facts set for later tasks.
  returned: always
  type: dict
  contains:
    qfc_sync:
      description:
        - Everything learnt about the stack, secrets masked. The sections present depend on what could be reached and
          on O(skip); a section whose check was skipped or could not run holds C(checked=false) and, when something
          stopped it, C(error).
        - The samples below come from a healthy stand-in stack named C(dret) unless said otherwise.
      returned: always
      type: dict
      contains:
        project:
          description: The compose project, as read from C(.env), the compose files and the options.
          type: dict
          contains:
            name:
              description: The compose project name.
              type: str
              sample: dret
            name_source:
              description: >-
                Where the name came from, V(argument) (O(project_name)), V(env) (C(COMPOSE_PROJECT_NAME)),
                V(compose_file), V(directory) or V(default).
              type: str
              sample: env
            dir:
              description: The project directory, or null when only O(project_name) was given.
              type: str
              sample: /opt/qfieldcloud
            env_file:
              description: Path of the C(.env) read, or null when there is none.
              type: str
              sample: /opt/qfieldcloud/.env
            compose_files:
              description: The compose files of C(COMPOSE_FILE) (or the defaults), as absolute paths, in order.
              type: list
              elements: str
              sample: ["/opt/qfieldcloud/docker-compose.yml", "/opt/qfieldcloud/docker-compose.override.standalone.yml"]
            network:
              description: The project's default network (C(<project>_default)), where the worker and the database are.
              type: str
              sample: dret_default
            job_network:
              description: The network the QGIS job containers join (C(QFIELDCLOUD_DEFAULT_NETWORK) or
                RV(ansible_facts.qfc_sync.project.network)).
              type: str
              sample: dret_default
            job_network_source:
              description: V(QFIELDCLOUD_DEFAULT_NETWORK) when that variable names another network, else V(default).
              type: str
              sample: default
            environment:
              description: The C(ENVIRONMENT) of the stack (from its containers when they run, else from C(.env)).
              type: str
              sample: production-dret
            database_service:
              description: The compose service the worker's C(POSTGRES_HOST) resolves to, or null when it is outside
                the project.
              type: str
              sample: db
            services:
              description: The services the compose files define, sorted, build-only ones (C(qgis3), C(qgis4))
                included; read from the files without running compose.
              type: list
              elements: str
              sample: [app, db, memcached, nginx, ofelia, qgis3, qgis4, worker_wrapper]
            postgres_host:
              description: C(POSTGRES_HOST) as the running app has it, else as C(.env) sets it; null when unset.
              type: str
              sample: db
            compose_checked:
              description: Whether the compose files were parsed as YAML here (PyYAML importable on the host).
              type: bool
              sample: true
            compose_error:
              description: Why a compose file is not YAML compose can read (file, line and column), or null. Syntax
                only; compose checks the rest when it runs.
              type: str
              sample: null
        thresholds:
          description: The limits the problems were judged with.
          type: dict
          contains:
            pending_age_s:
              description: O(pending_age_threshold).
              type: int
              sample: 300
            job_timeout_s:
              description: The job timeout in seconds (O(job_timeout), else what the stack configures).
              type: int
              sample: 600
            job_timeout_source:
              description: >-
                Where the job timeout came from, V(option) (O(job_timeout)), V(environment)
                (C(QFIELDCLOUD_WORKER_TIMEOUT_S)), V(constance_constance) (the database, before v26.24) or V(default).
              type: str
              sample: environment
            cron_max_age_s:
              description: O(cron_max_age).
              type: int
              sample: 300
            crash_restarts:
              description: How many deaths within the crash window make a crash loop.
              type: int
              sample: 3
            crash_window_s:
              description: O(crash_window).
              type: int
              sample: 600
        daemon:
          description: The Docker daemon.
          type: dict
          contains:
            reachable:
              description: Whether the daemon answered.
              type: bool
              sample: true
            version:
              description: Docker engine version.
              type: str
              sample: 20.10.24+dfsg1
            api_version:
              description: Docker API version of the daemon.
              type: str
              sample: "1.41"
            os:
              description: The daemon's operating system.
              type: str
              sample: linux
            docker_host:
              description: The address used (O(docker_host)).
              type: str
              sample: unix:///var/run/docker.sock
            error:
              description: Why the daemon could not be reached.
              type: str
              returned: when the daemon is unreachable
              sample: "Error while fetching server API version: ('Connection aborted.', FileNotFoundError(2, 'No \
                such file or directory'))"
        services:
          description:
            - One entry per compose service of the project (from the containers' labels), keyed by the service name
              (V(app), V(db), V(nginx), V(worker_wrapper), V(ofelia), V(memcached), V(qgis3), ...). Each entry holds
              the fields below.
          type: dict
          contains:
            present:
              description: Whether the service has at least one container.
              returned: always
              type: bool
              sample: true
            containers:
              description: Number of containers of the service.
              returned: always
              type: int
              sample: 1
            running:
              description: Number of them running.
              returned: always
              type: int
              sample: 1
            state:
              description: State of its first container (V(running), V(restarting), V(exited), ...).
              type: str
              sample: running
            health:
              description: Health status when the image has a healthcheck, else null.
              type: str
              sample: null
            restart_count:
              description: Docker's restart count of its first container (over the container's life).
              type: int
              sample: 0
            image:
              description: The image name the container runs.
              type: str
              sample: dret-app
            image_id:
              description: The image ID.
              type: str
              sample: sha256:259ed251c23cf1885c7208dde6cd5a949cb55d9411d187a9d0c52b4d5e6cbbaa
            started_at:
              description: When the container last started (Docker timestamp, UTC).
              type: str
              sample: "2026-12-01T12:20:51.767960416Z"
            created:
              description: When the container was created (Docker timestamp, UTC).
              type: str
              sample: "2026-12-01T12:20:48.431094079Z"
            ports:
              description: Published ports, each with C(port), C(proto), C(host_ip) and C(host_port).
              type: list
              elements: dict
              sample: [{"port": 80, "proto": "tcp", "host_ip": "0.0.0.0", "host_port": 42401}]
        worker:
          description: The worker service C(worker_wrapper), its replicas and the workers started by hand beside it.
          type: dict
          contains:
            service:
              description: The worker's compose service name.
              type: str
              sample: worker_wrapper
            expected:
              description: >-
                The required state each replica is compared with (C(user), C(command), C(db_host), C(network),
                C(image), C(restart_policy), C(published_ports), C(socket), C(running)); C(db_names) lists the names
                the database answers to on each network.
              type: dict
              sample: {"user": "root", "command": "python manage.py dequeue", "db_host": "db",
                "network": "dret_default",
                       "image": "dret-worker_wrapper", "restart_policy": "unless-stopped", "published_ports": [],
                       "socket": "/var/run/docker.sock", "running": true,
                       "db_names": {"dret_default": ["db", "dret-db-1"]}}
            replicas_expected:
              description: The replicas wanted (C(QFIELDCLOUD_WORKER_REPLICAS) or the compose C(scale)).
              type: int
              sample: 1
            replicas_running:
              description: The compose replicas running.
              type: int
              sample: 1
            replicas_healthy:
              description: The replicas running a healthy dequeue loop now (see C(healthy_now) of each replica).
              type: int
              sample: 1
            hand_started_running:
              description: Workers started by hand (C(docker run)) that run.
              type: int
              sample: 0
            enforced:
              description:
                - The record M(fibreflow.qfieldcloud.qfc_worker) left after its last run that ended with the worker
                  as required, compared with this read; V(null) when there is none.
                - C(current) is true when the record is of this project directory and no compose file, C(.env) or
                  override was edited and no container of the project was created, removed, stopped, started,
                  recreated or connected to another network since.
              type: dict
              sample:
                at: "2026-12-02T15:45:49Z"
                current: true
                options: {"service": "worker_wrapper", "state": "started", "replicas": null}
            replicas:
              description: One entry per compose replica of the worker service.
              type: list
              elements: dict
              contains:
                name:
                  description: Container name.
                  type: str
                  sample: dret-worker_wrapper-1
                id:
                  description: Short container ID.
                  type: str
                  sample: 94ed84101041
                number:
                  description: The compose replica number (null for a worker started by hand).
                  type: int
                  sample: 1
                service:
                  description: The compose service.
                  type: str
                  sample: worker_wrapper
                compose:
                  description: True for a compose replica, false for a worker started by hand.
                  type: bool
                  sample: true
                state:
                  description: Docker state (V(running), V(restarting), V(exited), ...).
                  type: str
                  sample: running
                running:
                  description: Whether it runs.
                  type: bool
                  sample: true
                restarting:
                  description: Whether Docker is restarting it.
                  type: bool
                  sample: false
                healthy_now:
                  description: >-
                    Whether it runs a healthy dequeue loop now (running, past the dequeue banner and no fault sign in
                    its current process's log).
                  type: bool
                  sample: true
                health:
                  description: Health status when the image has a healthcheck, else null.
                  type: str
                  sample: null
                restart_count:
                  description: Docker's restart count over the container's life (grows with every database restart).
                  type: int
                  sample: 1
                recent_deaths:
                  description: Deaths within the crash window (O(crash_window)), from the engine's events.
                  type: int
                  sample: 1
                exit_code:
                  description: Exit code of its last run.
                  type: int
                  sample: 0
                last_exit_age_s:
                  description: Seconds since it last died, or null.
                  type: float
                  sample: 26.6
                created:
                  description: When the container was created (UTC).
                  type: str
                  sample: "2026-12-01T12:20:48.428680826Z"
                started_at:
                  description: When it last started (UTC).
                  type: str
                  sample: "2026-12-01T12:21:02.701604856Z"
                finished_at:
                  description: When its last run ended (UTC; Docker's zero time when it never ended).
                  type: str
                  sample: "2026-12-01T12:21:01.770604605Z"
                user:
                  description: The user it runs as (must be V(root) to use the Docker socket).
                  type: str
                  sample: root
                image_user:
                  description: The image's own user, or null.
                  type: str
                  sample: "10001"
                networks:
                  description: Networks it is attached to.
                  type: list
                  elements: str
                  sample: ["dret_default"]
                ips:
                  description: Its address on each network.
                  type: dict
                  sample: {"dret_default": "192.168.80.3"}
                ports:
                  description: Port bindings (C(port), C(proto), C(host_ip), C(host_port)).
                  type: list
                  elements: dict
                  sample: []
                published_ports:
                  description: Container ports published on the host (should be empty).
                  type: list
                  elements: str
                  sample: []
                postgres_host:
                  description: Its C(POSTGRES_HOST).
                  type: str
                  sample: db
                socket_mount:
                  description: The Docker socket mount (C(present), C(rw), C(source)).
                  type: dict
                  sample: {"present": true, "rw": true, "source": "/var/run/docker.sock"}
                mounts:
                  description: Its mounts (C(type), C(source), C(target), C(rw)).
                  type: list
                  elements: dict
                  sample: [{"type": "bind", "source": "/tmp", "target": "/tmp", "rw": true}]
                env_keys:
                  description: Names of its environment variables (names only, never values).
                  type: list
                  elements: str
                  sample: ["ENVIRONMENT", "POSTGRES_HOST", "QFIELDCLOUD_WORKER_TIMEOUT_S", "TMP_DIRECTORY"]
                command:
                  description: Its command.
                  type: list
                  elements: str
                  sample: ["python3", "manage.py", "dequeue"]
                entrypoint:
                  description: Its entrypoint.
                  type: list
                  elements: str
                  sample: ["/opt/standin/docker-entrypoint.sh"]
                image:
                  description: Image name.
                  type: str
                  sample: dret-worker_wrapper
                image_id:
                  description: Image ID.
                  type: str
                  sample: sha256:d3e2ddd54eeef93c67d9a2a87636c634b3d17b025ccfcabd4d52c82536d820da
                restart_policy:
                  description: Docker restart policy name.
                  type: str
                  sample: unless-stopped
                hardening:
                  description: C(read_only), C(no_new_privileges) and C(cap_drop) of the container.
                  type: dict
                  sample: {"cap_drop": [], "no_new_privileges": false, "read_only": false}
                drift:
                  description: >-
                    What differs from RV(ansible_facts.qfc_sync.worker.expected), one item per field with C(field),
                    C(expected), C(actual) and the problem C(code). Sample from the stand-in with the worker's
                    C(user: root) removed.
                  type: list
                  elements: dict
                  sample: [{"field": "user", "expected": "root", "actual": "10001", "code": "worker_socket_denied"}]
                log:
                  description: >-
                    Counts of the signs found in the last O(log_lines) lines of its current process's log
                    (C(socket_denied), C(host_unresolved), C(postgres_not_ready), C(relation_missing), ...),
                    C(dequeue_banner), C(dequeuing), C(dequeued_jobs), C(ended_jobs), C(last_job) and C(lines_scanned).
                  type: dict
                  sample: {"dequeue_banner": true, "dequeuing": true, "dequeued_jobs": 0, "ended_jobs": [],
                           "last_job": null, "last_job_known": true, "lines_scanned": 108, "socket_denied": 3,
                           "host_unresolved": 0, "postgres_not_ready": 0, "postgres_ready": 1, "relation_missing": 0,
                           "replica_refused": 0, "network_not_found": 0, "pull_denied": 0, "timeout_invalid": 0}
                log_tail:
                  description: The last O(log_tail_lines) lines of its log, secrets masked.
                  type: list
                  elements: str
                  sample: ["Postgres is ready! ✨ 💅", "{\"level\": \"INFO\",
                    \"message\": \"Dequeue QFieldCloud Jobs from the DB\"}"]
                log_excerpt:
                  description: The log lines that carry a sign, each with C(line) and the C(signs) it shows.
                  type: list
                  elements: dict
                  sample: [{"line": "psycopg2.errors.UndefinedTable: relation \"core_job\" does not exist",
                            "signs": ["relation_missing"]}]
            hand_started:
              description:
                - Workers started by hand (C(docker run), no compose labels) on this project's network. Each holds the
                  fields of a replica (RV(ansible_facts.qfc_sync.worker.replicas)) plus the two below.
              type: list
              elements: dict
              contains:
                gaps:
                  description: >-
                    What it lacks of what compose gives the service, as C(bind:<target>), C(volume:<target>) and
                    C(env:<NAME>) (names only).
                  type: list
                  elements: str
                  sample: ["bind:/tmp", "volume:/transformation_grids", "env:QFIELDCLOUD_WORKER_QFIELDCLOUD_URL"]
                breaks_jobs:
                  description: True when a gap makes the jobs it claims fail (for example no C(/tmp) bind).
                  type: bool
                  sample: true
        images:
          description: The images the stack needs.
          type: dict
          contains:
            worker:
              description: >-
                The worker image, with C(name), C(present), C(id) and C(source) (V(container) when read from the
                running worker, V(compose) when from the compose files).
              type: dict
              sample: {"name": "dret-worker_wrapper", "present": true, "source": "container",
                       "id": "sha256:d3e2ddd54eeef93c67d9a2a87636c634b3d17b025ccfcabd4d52c82536d820da"}
            app:
              description: The app image, with C(name), C(present) and C(id).
              type: dict
              sample: {"name": "dret-app", "present": true,
                       "id": "sha256:259ed251c23cf1885c7208dde6cd5a949cb55d9411d187a9d0c52b4d5e6cbbaa"}
            qgis:
              description: The QGIS job images, one per C(QFIELDCLOUD_QGIS*_IMAGE_NAME) variable.
              type: list
              elements: dict
              contains:
                variable:
                  description: The C(.env) variable that names the image.
                  type: str
                  sample: QFIELDCLOUD_QGIS3_IMAGE_NAME
                name:
                  description: Image name.
                  type: str
                  sample: dret-qgis3
                present:
                  description: Whether the image exists on the engine.
                  type: bool
                  sample: true
                id:
                  description: Image ID when present.
                  type: str
                  sample: sha256:37ec9703f095e9e0de0e8e0cf686dfc5c221961ce3c3ace57ca4c8e4287abcba
        job_network:
          description: The QGIS job network, with C(name) and whether it C(exists).
          type: dict
          sample: {"name": "dret_default", "exists": true}
        shared_environment:
          description: >-
            Running workers of other compose projects with the same C(ENVIRONMENT) (they remove this stack's job
            containers), each with C(name), C(project) and C(environment).
          type: list
          elements: dict
          sample: [{"name": "dret-twin-worker_wrapper-1", "project": "dret-twin", "environment": "production-dret"}]
        worker_timeout:
          description: C(empty_in) lists where C(QFIELDCLOUD_WORKER_TIMEOUT_S) is set but empty (V(.env),
            V(worker_wrapper), V(app)).
          type: dict
          sample: {"empty_in": []}
        database:
          description: The PostgreSQL database, reached as the worker reaches it.
          type: dict
          contains:
            checked:
              description: Whether the database was checked (false with O(skip=db) or when no address is known).
              type: bool
              sample: true
            reachable:
              description: Whether a connection succeeded.
              type: bool
              sample: true
            error_kind:
              description: V(unreachable), V(auth), V(query) or V(other) when something failed, else null.
              type: str
              sample: null
            error:
              description: The error, secrets masked, else null.
              type: str
              sample: null
            configured_host:
              description: The worker's C(POSTGRES_HOST) (or O(db_host)).
              type: str
              sample: db
            address_from:
              description: How the address was found.
              type: str
              sample: container of service 'db' on dret_default
            host:
              description: The address connected to.
              type: str
              sample: 192.168.80.6
            port:
              description: The port connected to.
              type: int
              sample: 5432
            name:
              description: The database name.
              type: str
              sample: qfieldcloud_db
            user:
              description: The database user (its password is never returned).
              type: str
              sample: qfieldcloud_db_admin
            server_version:
              description: PostgreSQL server version.
              type: str
              sample: 15.18 (Debian 15.18-0+deb12u1)
            in_recovery:
              description: True on a read-only replica (C(pg_is_in_recovery())), which the worker refuses.
              type: bool
              sample: false
            generation:
              description: The schema generation, named by its project table (V(project_project) or V(core_project)).
              type: str
              sample: project_project
            lock_column:
              description: The project lock column of that generation (V(locked_at) or V(is_locked)).
              type: str
              sample: locked_at
            tables_present:
              description: Whether the job tables exist (false before C(manage.py migrate)).
              type: bool
              sample: true
            missing_tables:
              description: The tables that should exist and do not.
              type: list
              elements: str
              sample: []
            migrations_applied:
              description: Rows of C(django_migrations).
              type: int
              sample: 7
            job_timeout_s:
              description: The job timeout the stack configures, in seconds.
              type: float
              sample: 600.0
            job_timeout_source:
              description: Where it came from (V(option), V(environment), V(constance_constance) or V(default)).
              type: str
              sample: environment
            round_trips:
              description: Database round trips this run made.
              type: int
              sample: 2
            duration_s:
              description: Seconds spent on the database.
              type: float
              sample: 0.094
        queue:
          description: The job queue, read from the job tables.
          type: dict
          contains:
            checked:
              description: Whether the queue was read.
              type: bool
              sample: true
            counts_by_status:
              description: Number of jobs per status.
              type: dict
              sample: {"started": 1}
            counts_by_type:
              description: Number of jobs per type.
              type: dict
              sample: {"package": 1}
            counts:
              description: Number of jobs per status and type.
              type: dict
              sample: {"started": {"package": 1}}
            claimable_pending:
              description: Pending jobs a worker may claim now (their project has no queued or started job and is not
                locked).
              type: int
              sample: 0
            oldest_claimable_pending_age_s:
              description: Age in seconds of the oldest claimable pending job, or null.
              type: float
              sample: null
            oldest_pending_age_s:
              description: Age in seconds of the oldest pending job, or null.
              type: float
              sample: null
            overdue_queued:
              description: Jobs queued longer than the job timeout.
              type: int
              sample: 0
            overdue_started:
              description: Jobs started longer ago than the job timeout.
              type: int
              sample: 0
            overdue_jobs:
              description: The overdue jobs, each with C(id), C(status), C(type) and C(age_s).
              type: list
              elements: dict
              sample: []
            in_flight_jobs:
              description: >-
                The queued and started jobs, each with C(id), C(status), C(type), C(project_id), C(created_at),
                C(started_at), C(since) (epoch seconds) and C(deltas).
              type: list
              elements: dict
              sample: [{"id": "b133cc5d-d410-447c-90a1-5d0c36a15661", "status": "started", "type": "package",
                        "project_id": "6652bf26-0900-4dd5-a55c-a4ed2dd08cb1", "created_at": 1796127967.717963,
                        "started_at": 1796127969.783291, "since": 1796127969.783291, "deltas": 0}]
            failed_last_hour:
              description: Jobs that failed in the last hour.
              type: int
              sample: 0
            finished_last_hour:
              description: Jobs that finished in the last hour.
              type: int
              sample: 0
            pending_deltas:
              description: Deltas waiting to be applied.
              type: int
              sample: 0
            locked_projects:
              description: Projects locked now.
              type: int
              sample: 0
            qgis4_projects:
              description: Projects whose QGIS version is 4.
              type: int
              sample: 0
            read_at:
              description: When the queue was read (the database's clock, epoch seconds).
              type: float
              sample: 1796127688.409918
        app:
          description: The app's status endpoint (C(/api/v1/status/)).
          type: dict
          contains:
            checked:
              description: Whether the app was asked (false with O(skip=app)).
              type: bool
              sample: true
            url:
              description: The status URL asked.
              type: str
              sample: http://127.0.0.1:42401/api/v1/status/
            host_header:
              description: The C(Host) header sent.
              type: str
              sample: dret.standin.test
            reachable:
              description: Whether the status endpoint answered.
              type: bool
              sample: true
            http_status:
              description: HTTP status of the status endpoint's answer.
              type: int
              sample: 200
            status:
              description: The status document the app returned.
              type: dict
              sample: {"database": "ok", "storage": "ok"}
            ok:
              description: Whether the answer says every part is ok.
              type: bool
              sample: true
            error:
              description: Why it could not be asked.
              type: str
              returned: when the request failed
              sample: "[Errno 111] Connection refused"
            duration_s:
              description: Seconds the status request took.
              type: float
              sample: 0.122
        client:
          description: How QField and QGIS devices reach the server, asked from the Docker host.
          type: dict
          contains:
            checked:
              description: Whether this was checked (false with O(skip=client)).
              type: bool
              sample: true
            host:
              description: The server's public host name.
              type: str
              sample: dret.standin.test
            host_source:
              description: Where C(QFIELDCLOUD_HOST) was found, V(.env), V(app container) or V(nginx container).
              type: str
              sample: .env
            nginx_host:
              description: The C(QFIELDCLOUD_HOST) of the nginx container (the name it serves).
              type: str
              sample: dret.standin.test
            local_host:
              description: True when the host is a loopback or local name that devices cannot reach.
              type: bool
              sample: false
            url:
              description: The server URL to enter in QField.
              type: str
              sample: http://dret.standin.test:42401
            via:
              description: What serves that URL, V(nginx) or V(app) (the development port).
              type: str
              sample: nginx
            scheme:
              description: V(http) or V(https).
              type: str
              sample: http
            public_port:
              description: The published port.
              type: int
              sample: 42401
            connect_host:
              description: The address the check connected to.
              type: str
              sample: 127.0.0.1
            connect_port:
              description: The port the check connected to.
              type: int
              sample: 42401
            host_header:
              description: The C(Host) header a device sends to that URL.
              type: str
              sample: dret.standin.test:42401
            alternatives:
              description: Other URLs that also serve it.
              type: list
              elements: str
              sample: []
            reachable:
              description: Whether the server URL answered from the Docker host.
              type: bool
              sample: true
            http_status:
              description: HTTP status of the server URL's answer.
              type: int
              sample: 200
            ok:
              description: Whether the answer was the app's.
              type: bool
              sample: true
            error:
              description: Why it could not be reached, or why no URL is known.
              type: str
              returned: when the request failed or no host is known
              sample: "[Errno 111] Connection refused"
            duration_s:
              description: Seconds the request took.
              type: float
              sample: 0.045
        cron:
          description: The cron jobs (ofelia running the app's crons) and their log in the database.
          type: dict
          contains:
            checked:
              description: Whether this was checked (false with O(skip=cron) or without the database).
              type: bool
              sample: true
            ofelia_present:
              description: Whether the ofelia service has a container.
              type: bool
              sample: true
            ofelia_running:
              description: Whether it runs.
              type: bool
              sample: true
            ofelia_started_at:
              description: When ofelia last started (UTC).
              type: str
              sample: "2026-12-01T12:20:52.732767905Z"
            ofelia_up_s:
              description: Seconds ofelia has been up, or null.
              type: float
              sample: 35.9
            app_created_at:
              description: When the app container was created (UTC).
              type: str
              sample: "2026-12-01T12:20:48.431094079Z"
            ofelia_stale:
              description: True when ofelia started before the running app container was created (it may have lost its
                crons).
              type: bool
              sample: false
            log_readable:
              description: Whether the crons' log (C(django_cron_cronjoblog)) could be read.
              type: bool
              sample: true
            last_run:
              description: When the freshest cron run ended (or started), or null when none ran yet.
              type: str
              sample: null
            last_run_age_s:
              description: Its age in seconds, or null.
              type: float
              sample: null
            last_run_code:
              description: The cron code of that run, or null.
              type: str
              sample: null
            last_run_success:
              description: Whether that run succeeded, or null.
              type: bool
              sample: null
        job_containers:
          description: The QGIS job containers of this stack.
          type: list
          elements: dict
          contains:
            name:
              description: Container name.
              type: str
              sample: epic_jang
            id:
              description: Short container ID.
              type: str
              sample: 270fb1422723
            job_id:
              description: The job it runs (its C(job_id) label).
              type: str
              sample: b133cc5d-d410-447c-90a1-5d0c36a15661
            project_id:
              description: The job's project.
              type: str
              sample: 6652bf26-0900-4dd5-a55c-a4ed2dd08cb1
            type:
              description: The job type.
              type: str
              sample: package
            image:
              description: Image name.
              type: str
              sample: dret-qgis3
            state:
              description: Docker state.
              type: str
              sample: running
            running:
              description: Whether it runs.
              type: bool
              sample: true
            status:
              description: Docker's status line.
              type: str
              sample: Up 3 seconds
            created:
              description: Creation time (epoch seconds).
              type: int
              sample: 1796127969
        orphan_job_containers:
          description: >-
            The job containers left over (exited, their job no longer queued or started, or no worker running). Each
            holds the fields of RV(ansible_facts.qfc_sync.job_containers) plus the two below.
          type: list
          elements: dict
          contains:
            job_status:
              description: The job's status in the database, or null when unknown.
              type: str
              sample: started
            reason:
              description: Why it is an orphan (V(container exited), V(job is failed), V(no worker is running), ...).
              type: str
              sample: no worker is running
        boot:
          description: What brings the stack up after a reboot (the start script in O(boot_script_dir), the unit in
            O(boot_unit_dir)), and whether systemd runs the host.
          type: dict
          contains:
            systemd:
              description: Whether a systemd runs the host (C(/run/systemd/system) is a directory).
              type: bool
              sample: true
            files:
              description: The start script and the unit, as installed.
              type: list
              elements: dict
              contains:
                path:
                  description: The path.
                  type: str
                  sample: /etc/systemd/system/qfieldcloud-qfieldcloud.service
                exists:
                  description: Whether it is a regular file.
                  type: bool
                  sample: true
                mode:
                  description: Its permission bits in octal, null when absent.
                  type: str
                  sample: "0644"
                checksum:
                  description: The SHA-1 of its content, null when absent or unreadable.
                  type: str
                  sample: 7c211433f02071597741e6ff5a8ea34789abbf43
        checks_skipped:
          description: The checks skipped (O(skip)).
          type: list
          elements: str
          sample: []
        api_calls:
          description: Docker API calls this run made, per kind.
          type: dict
          sample: {"container_lists": 1, "event_reads": 1, "image_inspects": 4, "inspects": 11, "network_lists": 1}
        duration_s:
          description: Seconds the gathering took.
          type: float
          sample: 1.432
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
            boot_script_dir={"type": "path"},
            boot_unit_dir={"type": "path"},
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
