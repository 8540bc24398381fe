# Copyright (c) 2025, fibreflow
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The catalogue of QFieldCloud sync problems, and their detection on plain facts.

Every failure mode has one stable snake_case *code* (a constant of ``codes.py`` named after it, also used as drift
code by ``worker_spec.py`` and ``qfc_worker``), a *severity*, a one-line *summary*, what it *means*, how it is
*detected*, a *remedy* naming the exact command or the collection playbook that fixes it, the *detectors* that
raise it and the qfc_sync_facts ``skip`` options that hide it (*hidden_by*). The codes of ``qfc_worker`` alone
(``worker_config_not_persistent``, ``worker_should_be_stopped``, ``drain_timeout``) and of the verify role
(``verify_failed``, reported by the drift report) are entries like the others; :data:`FACTS_CODES` are the ones
:func:`detect_problems` can raise.

Severities:

- ``critical``: sync is blocked now (jobs cannot run at all);
- ``error``: a misconfiguration that breaks sync for some jobs or will break it soon;
- ``warning``: worth fixing, does not stop sync.

Apart from its severity, every problem says what it *blocks*:

- ``sync``: a job created now would not finish (the worker, its database, its images, the app);
- ``client``: devices cannot reach the server at the URL they are given, although jobs run (nginx, DNS,
  firewall: a question that may look different from the Docker host than from a phone);
- ``none``: worth fixing, but neither of the two.

``sync_ready`` is true only when no problem blocks ``sync``; ``client_ready`` only when none blocks ``client``.

Every entry also says what repairs it (*repaired_by*): ``site.yml`` or ``maintenance.yml`` when that playbook of the
collection, run with its defaults, repairs the problem, None when none does (Docker itself down, a setting only a
person can choose: the remedy says what to do). diagnose.yml names site.yml only for the problems it repairs.
Summaries and remedies are quoted with backticks, never with single quotes (a one-line YAML rendering would double
them).

:func:`detect_problems` reads the ``facts`` dict that ``qfc_sync_facts`` gathers (the same dict it returns
as ``ansible_facts.qfc_sync``); every section is optional, a missing or skipped section yields no finding.
The shape it reads::

    project:   {name, dir, network, environment}
    thresholds: {pending_age_s, job_timeout_s, cron_max_age_s, crash_restarts}
    daemon:    {reachable, version, error}
    services:  {<service>: {present, containers, running, state, restart_count, ...}}
    worker:    {replicas_expected, replicas_running, replicas: [replica], hand_started: [replica]}
               replica = worker_spec replica dict + {drift: [...], state, restart_count, log: {...},
                         log_tail: [line], log_excerpt: [{signs, line}]}
    images:    {worker: {name, present}, qgis: [{variable, name, present}]}
    database:  {checked, reachable, error_kind (unreachable|auth|other), error, in_recovery,
                tables_present, missing_tables, generation}
    queue:     {claimable_pending, oldest_claimable_pending_age_s, overdue_queued, overdue_started,
                overdue_jobs, failed_last_hour, finished_last_hour}
    app:       {checked, url, reachable, http_status, status, ok, error}
    client:    {checked, host, host_source, nginx_host, local_host, url, via, connect_host, connect_port,
                host_header, reachable, http_status, ok, error}
    cron:      {checked, ofelia_present, ofelia_running, ofelia_stale, last_run_age_s}
    orphan_job_containers: [{name, job_id, state, reason}]
"""

from __future__ import annotations

from typing import Any

from ansible_collections.fibreflow.qfieldcloud.plugins.module_utils import codes
from ansible_collections.fibreflow.qfieldcloud.plugins.module_utils import orphans as orphans_mod
from ansible_collections.fibreflow.qfieldcloud.plugins.module_utils import worker_spec as ws

SEVERITIES = ("critical", "error", "warning")
# What a problem blocks, most blocking first (see the module docstring).
BLOCKS = ("sync", "client", "none")

PLAY_SITE = "ansible-playbook fibreflow.qfieldcloud.site"
PLAY_DIAGNOSE = "ansible-playbook fibreflow.qfieldcloud.diagnose"
PLAY_MAINT = "ansible-playbook fibreflow.qfieldcloud.maintenance"
# What a catalogue entry's ``repaired_by`` names: the collection playbook that repairs the problem when run with its
# defaults, or None when no playbook does (the remedy says what a person has to do).
REPAIR_SITE = "site.yml"
REPAIR_MAINT = "maintenance.yml"
REPAIRED_BY = (REPAIR_SITE, REPAIR_MAINT, None)
# The command that runs each playbook of REPAIRED_BY.
REPAIR_COMMAND = {REPAIR_SITE: PLAY_SITE, REPAIR_MAINT: PLAY_MAINT}
COMPOSE = "cd {project_dir} && docker compose"

# code -> catalogue entry. Placeholders: {project}, {project_dir}, {network}, {environment}.
#
# ``detectors``: where the code is raised, as ``<module>.<function>`` of plugins/module_utils (this module's
# detectors for what qfc_sync_facts finds; qfc_worker's planner and drainer for its own codes), or
# ``<kind>/<file>.<function>`` elsewhere in plugins. ``hidden_by``: the ``skip`` options of qfc_sync_facts
# (``sync_facts.CHECKS``) any one of which keeps a call from looking for the code, so that such a call cannot say
# the problem is gone (empty: every call looks for it, or no call ever raises it).
# ``repaired_by``: the playbook of :data:`REPAIRED_BY` that repairs the problem with its defaults, or None.
CATALOGUE: dict[str, dict[str, Any]] = {
    codes.CODE_DOCKER_UNREACHABLE: {
        "severity": "critical",
        "blocks": "sync",
        "repaired_by": None,
        "detectors": ("problems.detect_problems",),
        "hidden_by": (),
        "summary": "The Docker daemon cannot be reached",
        "meaning": "Nothing about the stack can be known; on this host no QFieldCloud job can run without Docker.",
        "detection": "The Docker API (docker_host) does not answer a version request within the timeout.",
        "evidence": "`docker_host` (the address tried), `error` (the daemon's or the socket's answer).",
        "remedy": "Start Docker (`systemctl start docker` or `dockerd &`), or point docker_host at the right "
        "socket (DOCKER_HOST).",
    },
    codes.CODE_STACK_NOT_FOUND: {
        "severity": "critical",
        "blocks": "sync",
        "repaired_by": REPAIR_SITE,
        "detectors": ("problems.detect_problems",),
        "hidden_by": (),
        "summary": "No container of the compose project was found",
        "meaning": "The project is not running on this host, or it has another name.",
        "detection": "No container carries the label com.docker.compose.project=<project>.",
        "evidence": "`project` (the compose project name looked for).",
        "remedy": "Check project_name/project_dir (COMPOSE_PROJECT_NAME in .env); start the stack with "
        f"`{PLAY_SITE}` or `{COMPOSE} up -d`.",
    },
    codes.CODE_SERVICE_NOT_RUNNING: {
        "severity": "error",
        "blocks": "sync",
        "repaired_by": REPAIR_SITE,
        "detectors": ("problems._detect_services",),
        "hidden_by": (),
        "summary": "A QFieldCloud service container is not running",
        "meaning": "One of app, db, memcached, nginx is stopped or missing: sync or its API is degraded.",
        "detection": "The service has a container of the project but none is running.",
        "evidence": "`service`, `state` (the container's state: exited, restarting, created).",
        "remedy": f"`{PLAY_SITE}` (role fibreflow.qfieldcloud.startup starts services in order), or "
        f"`{COMPOSE} up -d <service>`.",
    },
    codes.CODE_WORKER_NOT_RUNNING: {
        "severity": "critical",
        "blocks": "sync",
        "repaired_by": REPAIR_SITE,
        "detectors": ("problems._detect_replica_count",),
        "hidden_by": (),
        "summary": "No worker_wrapper is running: jobs stay pending forever",
        "meaning": "Nothing dequeues jobs. QField shows 'applying the latest uploaded changes' for ever.",
        "detection": "No running container of the worker_wrapper service (nor a hand-started worker) while "
        "QFIELDCLOUD_WORKER_REPLICAS > 0.",
        "evidence": "`replicas_expected`, `replicas_running`, `containers` (each stopped worker with its state, "
        "exit code and the last lines of its log).",
        "remedy": f"`{PLAY_SITE}` (role fibreflow.qfieldcloud.worker), or `{COMPOSE} up -d --no-deps worker_wrapper`.",
    },
    codes.CODE_WORKER_IMAGE_MISSING: {
        "severity": "critical",
        "blocks": "sync",
        "repaired_by": REPAIR_SITE,
        "detectors": ("problems._detect_worker_image",),
        "hidden_by": (),
        "summary": "The worker image is not on the host",
        "meaning": "The worker container cannot be (re)created: the image compose resolves for worker_wrapper "
        "(its `image:`, or the local build <project>-worker_wrapper) is not on the host. Blocks sync when no worker "
        "runs; otherwise the running worker goes on, but cannot be recreated.",
        "detection": "No local image of the name the worker's compose service resolves to (the existing container's "
        "image reference, else `image:` in the compose files, else <project>-worker_wrapper or the v1 name).",
        "evidence": "`image` (the name looked for), `resolved_from` (the container, `image:` in compose, or the "
        "local build name).",
        "remedy": f"For a local build `{COMPOSE} build worker_wrapper` (10-15 min), or `{PLAY_SITE}` (the worker role "
        f"builds missing images); for a prebuilt image (`image:` in compose) `{COMPOSE} pull worker_wrapper`.",
    },
    codes.CODE_WORKER_IMAGE_WRONG: {
        "severity": "error",
        "blocks": "none",
        "repaired_by": REPAIR_SITE,
        "detectors": ("problems._detect_replica_drift",),
        "hidden_by": (),
        "summary": "A worker runs an image other than the worker image of the project",
        "meaning": "The worker was started from another image; job handling may not match the app's version.",
        "detection": "The container's image is neither the image its compose service resolves to (a prebuilt "
        "`image:` or the local build <project>-worker_wrapper) nor that image's id.",
        "evidence": "`container`, `field`, `expected`, `actual` (the replica and the setting that differs).",
        "remedy": f"`{PLAY_SITE}` (module fibreflow.qfieldcloud.qfc_worker recreates it from the built image).",
    },
    codes.CODE_WORKER_IMAGE_OUTDATED: {
        "severity": "warning",
        "blocks": "none",
        "repaired_by": REPAIR_MAINT,
        "detectors": ("problems._detect_replica_drift",),
        "hidden_by": (),
        "summary": "A worker runs an older build of the worker image",
        "meaning": "The image was rebuilt but the worker was not recreated: app, worker and QGIS versions may "
        "differ and break process_projectfile.",
        "detection": "The worker container's image id differs from the id of the image <project>-worker_wrapper.",
        "evidence": "`container`, `field`, `expected`, `actual` (the replica and the setting that differs); "
        "`expected` is the id of the current build.",
        "remedy": f"`{COMPOSE} up -d --no-deps worker_wrapper`, or `{PLAY_MAINT}` (restarts it without killing jobs).",
    },
    codes.CODE_WORKER_SOCKET_DENIED: {
        "severity": "critical",
        "blocks": "sync",
        "repaired_by": REPAIR_SITE,
        "detectors": ("problems._detect_replica_drift", "problems._detect_log_signs"),
        "hidden_by": (),
        "summary": "The worker cannot use the Docker socket (not running as root)",
        "meaning": "The worker image runs as user 10001; without `user: root` it gets 'Permission denied' on "
        "/var/run/docker.sock and cannot start QGIS job containers.",
        "detection": "The worker's user is not root (0, root, 0:0), or its log shows 'Permission denied' on the "
        "Docker socket.",
        "evidence": "`container`, `field`, `expected`, `actual` (the replica and the setting that differs); with "
        "a worker log, `sign` and `log_lines_matching` (the lines that show it, redacted).",
        "remedy": f"`{PLAY_SITE}` (qfc_worker enforces user root in its compose override), or set `user: root` "
        f"on worker_wrapper and `{COMPOSE} up -d --no-deps worker_wrapper`.",
    },
    codes.CODE_WORKER_SOCKET_NOT_MOUNTED: {
        "severity": "critical",
        "blocks": "sync",
        "repaired_by": REPAIR_SITE,
        "detectors": ("problems._detect_replica_drift",),
        "hidden_by": (),
        "summary": "The Docker socket is not mounted read-write in the worker",
        "meaning": "The worker cannot start QGIS job containers.",
        "detection": "No read-write bind mount of /var/run/docker.sock in the worker container.",
        "evidence": "`container`, `field`, `expected`, `actual` (the replica and the setting that differs).",
        "remedy": f"`{PLAY_SITE}`, or add `/var/run/docker.sock:/var/run/docker.sock` to the volumes of the worker and "
        f"`{COMPOSE} up -d --no-deps worker_wrapper`.",
    },
    codes.CODE_WORKER_DB_HOST_WRONG: {
        "severity": "critical",
        "blocks": "sync",
        "repaired_by": REPAIR_SITE,
        "detectors": ("problems._detect_replica_drift", "problems._detect_log_signs"),
        "hidden_by": (),
        "summary": "The POSTGRES_HOST of the worker does not reach the database of the app",
        "meaning": "The worker waits 'Postgres isn't ready' for 30 s, then crashes and restarts: no job runs.",
        "detection": "POSTGRES_HOST of the worker differs from the app's, or its log shows 'could not translate "
        "host name'.",
        "evidence": "`container`, `field`, `expected`, `actual` (the replica and the setting that differs); with "
        "a worker log, `sign` and `log_lines_matching` (the lines that show it, redacted).",
        "remedy": f"`{PLAY_SITE}` (qfc_worker sets POSTGRES_HOST to the database host of the app), or fix "
        f"POSTGRES_HOST in .env and `{COMPOSE} up -d --no-deps worker_wrapper`.",
    },
    codes.CODE_WORKER_PORT_PUBLISHED: {
        "severity": "warning",
        "blocks": "none",
        "repaired_by": REPAIR_SITE,
        "detectors": ("problems._detect_replica_drift",),
        "hidden_by": (),
        "summary": "The worker publishes a port on the host",
        "meaning": "Usually the development override's debugpy port 5679: a debugger open to the network, and "
        "more than one replica cannot start (port already allocated).",
        "detection": "The worker container has host port bindings.",
        "evidence": "`container`, `field`, `expected`, `actual` (the replica and the setting that differs); "
        "`actual` lists the published ports.",
        "remedy": "Remove docker-compose.override.local.yml from COMPOSE_FILE in .env and "
        f"`{COMPOSE} up -d --no-deps worker_wrapper`, or `{PLAY_SITE}`.",
    },
    codes.CODE_WORKER_WRONG_NETWORK: {
        "severity": "critical",
        "blocks": "sync",
        "repaired_by": REPAIR_SITE,
        "detectors": ("problems._detect_replica_drift",),
        "hidden_by": (),
        "summary": "The worker is on no network where it reaches its database",
        "meaning": "The worker cannot reach db/app, and its QGIS containers fail with 'network ... not found'.",
        "detection": "The database container (the compose service POSTGRES_HOST names) is on none of the "
        "worker's networks, so POSTGRES_HOST does not resolve there. QFIELDCLOUD_DEFAULT_NETWORK is the QGIS job "
        "containers' network and is not required on the worker.",
        "evidence": "`container`, `field`, `expected`, `actual` (the replica and the setting that differs); "
        "`actual` lists the container's networks.",
        "remedy": f"`{PLAY_SITE}` (qfc_worker attaches it to the network it shares with the database, normally "
        f"{{network}}), or fix the networks of the worker and `{COMPOSE} up -d --no-deps worker_wrapper`.",
    },
    codes.CODE_WORKER_CRASH_LOOP: {
        "severity": "error",
        "blocks": "sync",
        "repaired_by": None,
        "detectors": ("problems._detect_crash_loop",),
        "hidden_by": (),
        "summary": "The worker keeps restarting",
        "meaning": "The worker crashes shortly after start (database unreachable, migrations missing, bad "
        "configuration) and Docker restarts it again and again. Upstream's worker exits on every database error, so "
        "a lifetime restart count says nothing: only recent restarts count. Blocks sync when no replica is healthy.",
        "detection": "The worker is 'restarting' now, or it died at least crash_restarts times within the last "
        "crash_window seconds (Docker events) and its current process is not in a healthy dequeue loop.",
        "evidence": "`container`, `state`, `deaths_in_window` within `window_s`, `restart_count_lifetime`, "
        "`last_exit_age_s`, and the worker's fault lines as `log`.",
        "remedy": "Read its log (`docker logs --tail 50 <container>`) and fix the cause named by the other "
        f"problems; then `{PLAY_SITE}`.",
    },
    codes.CODE_WORKER_DEBUG_COMMAND: {
        "severity": "error",
        "blocks": "none",
        "repaired_by": REPAIR_SITE,
        "detectors": ("problems._detect_replica_drift",),
        "hidden_by": (),
        "summary": "The worker runs under the debugger (debugpy)",
        "meaning": "The development override is in use in production: slower jobs and an open debug port.",
        "detection": "The worker's command contains debugpy.",
        "evidence": "`container`, `field`, `expected`, `actual` (the replica and the setting that differs).",
        "remedy": "Remove docker-compose.override.local.yml from COMPOSE_FILE in .env, then "
        f"`{COMPOSE} up -d --no-deps worker_wrapper`, or `{PLAY_SITE}`.",
    },
    codes.CODE_WORKER_COMMAND_WRONG: {
        "severity": "critical",
        "blocks": "sync",
        "repaired_by": REPAIR_SITE,
        "detectors": ("problems._detect_replica_drift",),
        "hidden_by": (),
        "summary": "The worker does not run `manage.py dequeue`",
        "meaning": "The container is up but does not process jobs.",
        "detection": "The worker's entrypoint and command do not contain 'dequeue'.",
        "evidence": "`container`, `field`, `expected`, `actual` (the replica and the setting that differs).",
        "remedy": f"`{PLAY_SITE}` (qfc_worker restores `python manage.py dequeue`).",
    },
    codes.CODE_WORKER_RESTART_POLICY: {
        "severity": "warning",
        "blocks": "none",
        "repaired_by": REPAIR_SITE,
        "detectors": ("problems._detect_replica_drift",),
        "hidden_by": (),
        "summary": "The worker does not restart by itself",
        "meaning": "After a crash or a reboot, the worker stays down and sync stops.",
        "detection": "The worker's restart policy is not unless-stopped.",
        "evidence": "`container`, `field`, `expected`, `actual` (the replica and the setting that differs).",
        "remedy": f"`{PLAY_SITE}`, or set `restart: unless-stopped` and `{COMPOSE} up -d --no-deps worker_wrapper`.",
    },
    codes.CODE_WORKER_REPLICAS_LOW: {
        "severity": "error",
        "blocks": "none",
        "repaired_by": REPAIR_SITE,
        "detectors": ("problems._detect_replica_count",),
        "hidden_by": (),
        "summary": "Fewer worker replicas run than configured",
        "meaning": "Jobs are processed more slowly than the configuration intends.",
        "detection": "Running worker_wrapper containers < QFIELDCLOUD_WORKER_REPLICAS.",
        "evidence": "`replicas_expected`, `replicas_running`.",
        "remedy": f"`{PLAY_SITE}`, or `{COMPOSE} up -d --no-deps --scale worker_wrapper=<n> worker_wrapper`.",
    },
    codes.CODE_WORKER_REPLICAS_HIGH: {
        "severity": "warning",
        "blocks": "none",
        "repaired_by": REPAIR_SITE,
        "detectors": ("problems._detect_replica_count",),
        "hidden_by": (),
        "summary": "More worker replicas run than configured",
        "meaning": "More jobs run at once than the host was sized for.",
        "detection": "Running worker_wrapper containers > QFIELDCLOUD_WORKER_REPLICAS.",
        "evidence": "`replicas_expected`, `replicas_running`.",
        "remedy": f"`{PLAY_SITE}` (scales down without stopping a replica that runs a job).",
    },
    codes.CODE_WORKER_HAND_STARTED: {
        "severity": "warning",
        "blocks": "none",
        "repaired_by": REPAIR_SITE,
        "detectors": ("problems._detect_hand_started",),
        "hidden_by": (),
        "summary": "A worker was started by hand outside compose",
        "meaning": "It lacks compose's environment and volumes, and the next `docker compose up` fights it. "
        "Critical when it lacks what jobs need (the /tmp hand-off of TMP_DIRECTORY, the named volumes): every job it "
        "claims fails; error when it runs instead of the compose worker.",
        "detection": "A container not from compose runs the image <project>-worker_wrapper, is named "
        "qfieldcloud-worker*, or runs `manage.py dequeue` on the project network.",
        "evidence": "`containers` (each hand-started worker with its drift and what it lacks), "
        "`compose_replicas_running`, `failed_last_hour`.",
        "remedy": f"`{PLAY_SITE}` (retires it once it holds no job, unless "
        "qfieldcloud_worker_remove_hand_started=false), or `docker stop -t 900 <container> && docker rm <container>` "
        f"and `{COMPOSE} up -d --no-deps worker_wrapper`.",
    },
    codes.CODE_WORKER_TIMEOUT_EMPTY: {
        "severity": "critical",
        "blocks": "sync",
        "repaired_by": None,
        "detectors": ("problems._detect_worker_timeout",),
        "hidden_by": (),
        "summary": "QFIELDCLOUD_WORKER_TIMEOUT_S is empty: app and worker crash at start",
        "meaning": "From v26.24 the compose file passes QFIELDCLOUD_WORKER_TIMEOUT_S from .env; an .env kept from an "
        "older release leaves it empty, and app and worker fail to parse it ('invalid literal for int()').",
        "detection": "QFIELDCLOUD_WORKER_TIMEOUT_S is present but empty in .env, or in the worker's or the app's "
        "environment.",
        "evidence": "`empty_in` (where the empty value is: .env, the worker's environment), "
        "`containers_with_parse_error`.",
        "remedy": "Set `QFIELDCLOUD_WORKER_TIMEOUT_S=600` (or the timeout you want) in .env, then "
        f"`{COMPOSE} up -d app worker_wrapper`.",
    },
    codes.CODE_QGIS_NETWORK_MISSING: {
        "severity": "critical",
        "blocks": "sync",
        "repaired_by": None,
        "detectors": ("problems._detect_job_network",),
        "hidden_by": (),
        "summary": "The network for QGIS job containers does not exist",
        "meaning": "The worker starts each QGIS container on QFIELDCLOUD_DEFAULT_NETWORK; when that network does not "
        "exist every job fails with 'network ... not found'.",
        "detection": "The network QFIELDCLOUD_DEFAULT_NETWORK names (empty: <project>_default) is not on the host.",
        "evidence": "`network` (the name QFIELDCLOUD_DEFAULT_NETWORK gives), `source` (where it was read).",
        "remedy": "Create it (`docker network create <name>`) or empty QFIELDCLOUD_DEFAULT_NETWORK in .env, then "
        f"`{COMPOSE} up -d --no-deps worker_wrapper`.",
    },
    codes.CODE_SHARED_ENVIRONMENT_LABEL: {
        "severity": "critical",
        "blocks": "sync",
        "repaired_by": None,
        "detectors": ("problems._detect_shared_environment",),
        "hidden_by": (),
        "summary": "Another QFieldCloud on this Docker engine has the same ENVIRONMENT: each kills the jobs of the "
        "other",
        "meaning": "An idle worker removes every QGIS container labelled app=<ENVIRONMENT>_worker whose job it does "
        "not know; two projects with the same ENVIRONMENT on one engine remove each other's running job containers "
        "(upstream issue #1822), and their jobs fail at random.",
        "detection": "A worker container of another compose project on the engine runs with the same ENVIRONMENT.",
        "evidence": "`environment`, `job_label`, `this_project`, `other_projects`, `other_workers` (the workers "
        "of other projects with the same ENVIRONMENT).",
        "remedy": "Give each instance its own ENVIRONMENT in .env (e.g. `ENVIRONMENT=production-<name>`), then "
        f"`{COMPOSE} up -d` in each project directory; or run them on separate Docker engines.",
    },
    codes.CODE_QGIS_IMAGE_MISSING: {
        "severity": "critical",
        "blocks": "sync",
        "repaired_by": REPAIR_SITE,
        "detectors": ("problems._detect_qgis_images",),
        "hidden_by": (),
        "summary": "A QGIS image the worker needs is missing",
        "meaning": "Every job fails with 'pull access denied' (often after `docker system prune -a`). The qgis4 "
        "image is used only for projects on QGIS 4: when no project needs it, its absence is a warning.",
        "detection": "The image named by QFIELDCLOUD_QGIS3_IMAGE_NAME / QFIELDCLOUD_QGIS4_IMAGE_NAME / "
        "QFIELDCLOUD_QGIS_IMAGE_NAME (default <project>-qgis3) is not present locally.",
        "evidence": "`images` (each QGIS image variable, name and whether it is present), `qgis4_projects` "
        "(projects that need QGIS 4).",
        "remedy": f"`{COMPOSE} build qgis3` (and qgis4), or `{PLAY_SITE}` (the worker role builds missing images).",
    },
    codes.CODE_QUEUE_STALLED: {
        "severity": "critical",
        "blocks": "sync",
        "repaired_by": REPAIR_SITE,
        "detectors": ("problems._detect_queue",),
        "hidden_by": ("db", "queue"),
        "summary": "Claimable jobs wait longer than the threshold: nothing processes the queue",
        "meaning": "A pending job whose project has no running job and is not locked should be picked up within "
        "seconds; it is not.",
        "detection": "Age of the oldest claimable pending job > pending_age_threshold.",
        "evidence": "`claimable_pending`, `oldest_claimable_pending_age_s`, `threshold_s`, "
        "`dequeued_lines_in_worker_logs`.",
        "remedy": f"Fix the worker problems listed beside this one; `{PLAY_SITE}` repairs the worker and proves "
        "sync with a probe job.",
    },
    codes.CODE_JOBS_OVERDUE: {
        "severity": "error",
        "blocks": "sync",
        "repaired_by": None,
        "detectors": ("problems._detect_queue",),
        "hidden_by": ("db", "queue"),
        "summary": "Jobs are queued or started for longer than the job timeout",
        "meaning": "A stuck job blocks every later job of its project (sync is blocked for that project's "
        "users); the cron only fails 'started' ones.",
        "detection": "Started jobs whose started_at, or queued jobs whose most recent sign (their creation, "
        "or the end of the project's previous job: a claim writes no time of its own), is older than the job timeout.",
        "evidence": "`queued`, `started`, `job_timeout_s`, `jobs` (id, type, status, age of the oldest ones).",
        "remedy": "When their worker process is gone the jobs are also listed as `jobs_orphaned`, which "
        f"`{PLAY_SITE}` recovers. A job a running worker still holds is running long: look at its QGIS container "
        "(`docker ps --filter label=job_id=<id>`); the cron of upstream fails a started job after the job timeout "
        f"(`{COMPOSE} exec app python manage.py runcrons`), never a queued one.",
    },
    codes.CODE_JOBS_ORPHANED: {
        "severity": "error",
        "blocks": "sync",
        "repaired_by": REPAIR_SITE,
        "detectors": ("problems._detect_queue",),
        "hidden_by": ("db", "queue", "logs"),
        "summary": "Jobs are queued or started by a worker process that no longer exists",
        "meaning": "The worker that claimed them died (Docker daemon or host restarted, container killed): a "
        "queued job blocks its project for ever, a started one until the cron fails it after the job timeout; a "
        "delta_apply job's deltas stay 'started' and the API reports them busy.",
        "detection": "queued/started jobs that no running worker's current process names in its last "
        "'Dequeued job' line and no running QGIS container carries, with a sign that their claimant is gone: an ended "
        "process last named them, their QGIS container ended, they predate every running process, or they are "
        "overdue. qfc_worker confirms it on a second read 5 s later before it changes anything.",
        "evidence": "`count`, `jobs` (id, type, project, the evidence that no live process holds it), `projects`, "
        "`deltas_to_reapply`.",
        "remedy": f"`{PLAY_SITE}` (qfc_worker puts queued jobs and started package/process_projectfile jobs back "
        "to pending; other started jobs get the end state the cron of upstream gives them: the job failed, the "
        "deltas of a delta_apply job `error`). Deltas set `error` are applied again by an administrator: web admin, "
        "Deltas, filter the project and status `error`, action `Set status pending`, then `Apply selected deltas`.",
    },
    codes.CODE_JOBS_FAILING: {
        "severity": "warning",
        "blocks": "none",
        "repaired_by": None,
        "detectors": ("problems._detect_queue",),
        "hidden_by": ("db", "queue"),
        "summary": "More jobs failed than finished in the last hour",
        "meaning": "The worker runs jobs but they fail (QGIS image, network, storage).",
        "detection": "failed jobs in the last hour > finished jobs in the last hour.",
        "evidence": "`failed_last_hour`, `finished_last_hour`.",
        "remedy": "Read the feedback of a failed job (core_job.feedback) and the worker log; "
        f"`{PLAY_DIAGNOSE}` lists related problems.",
    },
    codes.CODE_DB_UNREACHABLE: {
        "severity": "critical",
        "blocks": "sync",
        "repaired_by": REPAIR_SITE,
        "detectors": ("problems._detect_database",),
        "hidden_by": ("db",),
        "summary": "The database cannot be reached",
        "meaning": "Neither app nor worker can work.",
        "detection": "A PostgreSQL connection to the app's POSTGRES_HOST/PORT fails (timeout, refused, unknown host), "
        "or the queue query does not answer within the timeout (a lock or an overloaded server; evidence slow).",
        "evidence": "`host`, `port`, `database`, `error` (libpq's message, redacted).",
        "remedy": f"Start the database (`{COMPOSE} up -d db` for the standalone setup) or check the external "
        f"database; `{PLAY_SITE}` starts the stack in order.",
    },
    codes.CODE_DB_AUTH_FAILED: {
        "severity": "critical",
        "blocks": "sync",
        "repaired_by": None,
        "detectors": ("problems._detect_database",),
        "hidden_by": ("db",),
        "summary": "The database refuses the credentials",
        "meaning": "POSTGRES_USER/POSTGRES_PASSWORD do not match the database.",
        "detection": "PostgreSQL answers 'password authentication failed' or 'role ... does not exist'.",
        "evidence": "`host`, `port`, `database`, `error` (libpq's message, redacted).",
        "remedy": "Make POSTGRES_USER/POSTGRES_PASSWORD in .env match the database, then "
        f"`{COMPOSE} up -d app worker_wrapper`.",
    },
    codes.CODE_DB_IS_REPLICA: {
        "severity": "critical",
        "blocks": "sync",
        "repaired_by": None,
        "detectors": ("problems._detect_database",),
        "hidden_by": ("db",),
        "summary": "The database is a read-only replica",
        "meaning": "The worker refuses to run jobs on a replica (pg_is_in_recovery()).",
        "detection": "SELECT pg_is_in_recovery() returns true, or the worker logs 'Expected `worker_wrapper` to "
        "be connected to the master DB node!'.",
        "evidence": "`host`, `port`, `database`.",
        "remedy": "Point POSTGRES_HOST at the primary, or promote the server (`pg_ctl promote`).",
    },
    codes.CODE_MIGRATIONS_MISSING: {
        "severity": "critical",
        "blocks": "sync",
        "repaired_by": None,
        "detectors": ("problems._detect_database", "problems._detect_log_signs"),
        "hidden_by": ("db",),
        "summary": "The database has no QFieldCloud tables (migrations not applied)",
        "meaning": "The worker loops on 'relation \"...\" does not exist'.",
        "detection": "core_job or the project table does not exist, or django_migrations is empty.",
        "evidence": "`host`, `port`, `database`, `missing_tables`; with a worker log, `sign` and "
        "`log_lines_matching` (the lines that show it, redacted) (and `container`).",
        "remedy": f"`{COMPOSE} exec app python manage.py migrate`.",
    },
    codes.CODE_APP_UNREACHABLE: {
        "severity": "critical",
        "blocks": "sync",
        "repaired_by": REPAIR_SITE,
        "detectors": ("problems._detect_app",),
        "hidden_by": ("app",),
        "summary": "The status endpoint of the app does not answer",
        "meaning": "QField cannot reach the API: no upload, no sync.",
        "detection": "GET /api/v1/status/ fails (connection refused, timeout, closed).",
        "evidence": "`url`, `error`.",
        "remedy": f"`{COMPOSE} up -d app nginx`, or `{PLAY_SITE}`; behind nginx the Host header must equal "
        "QFIELDCLOUD_HOST (app_host_header).",
    },
    codes.CODE_APP_STATUS_NOT_OK: {
        "severity": "critical",
        "blocks": "sync",
        "repaired_by": None,
        "detectors": ("problems._detect_app",),
        "hidden_by": ("app",),
        "summary": "The status endpoint of the app reports a failing component",
        "meaning": "The app cannot use its database or storage.",
        "detection": "GET /api/v1/status/ does not return 200 with every component 'ok'.",
        "evidence": "`url`, `http_status`, `status` (the components the endpoint reported).",
        "remedy": "Fix the component reported (database, storage); `docker logs <app container>` shows the error.",
    },
    codes.CODE_NGINX_HOST_MISMATCH: {
        "severity": "critical",
        "blocks": "client",
        "repaired_by": None,
        "detectors": ("problems._detect_client",),
        "hidden_by": ("app", "client"),
        "summary": "nginx does not serve the QFIELDCLOUD_HOST that QField users enter",
        "meaning": "QFIELDCLOUD_HOST in .env was changed but nginx still runs with the old name (`docker compose "
        "restart` does not read .env again): nginx closes every connection whose Host header is the new name "
        "(444), so QField cannot log in or sync although the app and the worker are fine.",
        "detection": "The status endpoint does not answer at the client URL (QFIELDCLOUD_HOST on nginx's published "
        "port, requested from the Docker host with the Host header a device sends), and the nginx container's "
        "QFIELDCLOUD_HOST differs from the one of .env.",
        "evidence": "`configured_host` (QFIELDCLOUD_HOST), `nginx_host` (the host nginx was started with), `url`, "
        "`connect`, `host_header`, `http_status`, `error`.",
        "remedy": f"Recreate nginx and app so that they read .env again: `{COMPOSE} up -d --no-deps nginx app`, then "
        f"`{COMPOSE} restart ofelia`; or set QFIELDCLOUD_HOST in .env back to the name nginx serves.",
    },
    codes.CODE_CLIENT_URL_UNREACHABLE: {
        "severity": "error",
        "blocks": "client",
        "repaired_by": None,
        "detectors": ("problems._detect_client",),
        "hidden_by": ("app", "client"),
        "summary": "The server URL QField users enter does not answer",
        "meaning": "The app answers on the container network, but not at the address devices use: QField cannot "
        "log in or sync.",
        "detection": "GET /api/v1/status/ at the client URL (QFIELDCLOUD_HOST on nginx's published 80/443, else the "
        "app's published 8000), requested from the Docker host with that Host header, is refused, closed "
        "without an answer (nginx 444), or not HTTP 200 with JSON; or no port is published at all.",
        "evidence": "`url`, `connect` (the address tried from the Docker host), `host_header`, `http_status`, `error`.",
        "remedy": f"Make QFIELDCLOUD_HOST in .env the name devices use and recreate nginx "
        f"(`{COMPOSE} up -d --no-deps nginx app`); check that nginx publishes 80/443 (WEB_HTTP_PORT, "
        f"WEB_HTTPS_PORT); `{PLAY_DIAGNOSE}` prints the URL to enter.",
    },
    codes.CODE_CLIENT_HOST_LOCAL: {
        "severity": "warning",
        "blocks": "none",
        "repaired_by": None,
        "detectors": ("problems._detect_client",),
        "hidden_by": ("app", "client"),
        "summary": "QFIELDCLOUD_HOST is a local name that QField devices cannot reach",
        "meaning": "localhost or 127.0.0.1 works on the server itself only: a phone or tablet that enters it "
        "talks to itself, and links the server generates point nowhere.",
        "detection": "QFIELDCLOUD_HOST is localhost, *.localhost, 127.x.x.x, 0.0.0.0 or ::1.",
        "evidence": "`host`, `host_source` (where the host was read).",
        "remedy": "Set QFIELDCLOUD_HOST in .env to the DNS name or LAN address of the server, then "
        f"`{COMPOSE} up -d --no-deps nginx app` and `{COMPOSE} restart ofelia`.",
    },
    codes.CODE_CRON_NOT_RUNNING: {
        "severity": "error",
        "blocks": "none",
        "repaired_by": REPAIR_SITE,
        "detectors": ("problems._detect_cron",),
        "hidden_by": ("cron",),
        "summary": "The QFieldCloud cron is not running its jobs",
        "meaning": "Stuck jobs are never set failed and later jobs of their project wait for ever; expired "
        "data is never cleaned. Jobs still run: it never blocks sync. A project that defines no cron runner (no "
        "ofelia container) gets a warning.",
        "detection": "The freshest django_cron_cronjoblog run (whatever runs the crons) is older than "
        "cron_max_age, or there is none; when the database cannot tell, ofelia is not running.",
        "evidence": "`last_run`, `last_run_age_s`, `threshold_s`, `ofelia_present`, `ofelia_running`.",
        "remedy": f"`{COMPOSE} up -d ofelia` (or `{COMPOSE} restart ofelia`), or `{PLAY_SITE}`; without "
        f"ofelia, run `{COMPOSE} exec -T app python manage.py runcrons` every minute from the cron of the host.",
    },
    codes.CODE_ORPHAN_JOB_CONTAINERS: {
        "severity": "warning",
        "blocks": "none",
        "repaired_by": REPAIR_MAINT,
        "detectors": ("problems._detect_orphans",),
        "hidden_by": ("orphans",),
        "summary": "QGIS job containers of this project are left over",
        "meaning": "Containers of jobs that are no longer queued/started (or whose worker is gone) use resources.",
        "detection": "Containers labelled app=<ENVIRONMENT>_worker with a job_id, on the project's network or "
        "image, that are exited or whose job is finished.",
        "evidence": "`count`, `containers` (name, job id, state, why it is a leftover).",
        "remedy": f"`docker rm -f <container>`, or `{PLAY_MAINT}` (prunes them safely).",
    },
    # Raised by qfc_worker only (drift items and failures), and by the drift report for the verify role.
    codes.CODE_WORKER_CONFIG_NOT_PERSISTENT: {
        "severity": "warning",
        "blocks": "none",
        "repaired_by": REPAIR_SITE,
        "detectors": ("worker_plan.plan",),
        "hidden_by": (),
        "summary": "The configuration of the worker is not held by the override file of the collection (a later "
        "compose up may undo it)",
        "meaning": "qfc_worker keeps what the worker needs (user root, the Docker socket, its network, POSTGRES_HOST, "
        "the dequeue command, the restart policy, no published port, the replica count) in its compose override "
        "file, the last entry of COMPOSE_FILE in .env. Without it a worker that is right now is right only until "
        "the next `docker compose up`, which recreates it from the project's files alone and may bring the "
        "faults back. Jobs run meanwhile.",
        "detection": "qfc_worker (compose mode) finds its override file (docker-compose.override.fibreflow-worker.yml "
        "by default) missing, different from what it would write, or not the last entry of COMPOSE_FILE in .env.",
        "evidence": "A drift item of qfc_worker: `replica`, `field` (`compose_override` or `compose_file`), "
        "`expected`, `actual` (missing, outdated, not last).",
        "remedy": f"`{PLAY_SITE}` (qfc_worker writes the override and puts it last in COMPOSE_FILE, keeping a copy of "
        ".env); keep that file and its COMPOSE_FILE entry when editing .env.",
    },
    codes.CODE_WORKER_SHOULD_BE_STOPPED: {
        "severity": "warning",
        "blocks": "none",
        "repaired_by": REPAIR_SITE,
        "detectors": ("worker_plan.plan",),
        "hidden_by": (),
        "summary": "A worker replica runs although the worker should be stopped",
        "meaning": "qfc_worker was asked for state stopped (qfieldcloud_worker_state: stopped) and a replica still "
        "runs and claims jobs. Sync goes on; the stop, usually for maintenance, has not happened yet.",
        "detection": "qfc_worker with state stopped finds a running replica (compose or standalone) among those it "
        "manages.",
        "evidence": "A drift item of qfc_worker: `replica`, `field` (`running`), `expected` false, `actual` true.",
        "remedy": f"Run the play again with the worker stopped (`{PLAY_SITE} -e qfieldcloud_worker_state=stopped`): "
        "qfc_worker drains the replica (waits for its job), then stops it.",
    },
    codes.CODE_DRAIN_TIMEOUT: {
        "severity": "warning",
        "blocks": "none",
        "repaired_by": None,
        "detectors": ("drain.drain",),
        "hidden_by": (),
        "summary": "A worker replica still ran a job when drain_timeout ran out: nothing was stopped or recreated",
        "meaning": "Before it stops, recreates or removes a replica, qfc_worker waits until that replica holds no "
        "queued or started job. The wait ran out: the module failed and changed nothing, so the busy worker goes on "
        "with its job, and whatever it was to fix (the drift it reported) is still there.",
        "detection": "qfc_worker's drain: after drain_timeout seconds a replica's last 'Dequeued job' of its current "
        "process is still queued or started in the database (or, when the database cannot be read, a QGIS job "
        "container with that job_id runs). The task fails with code drain_timeout and option drain_timeout.",
        "evidence": "qfc_worker fails with `code` drain_timeout and a `msg` naming each busy replica and its job; "
        "nothing was stopped.",
        "remedy": "Wait for the job to finish (or fail it), then run again; or raise drain_timeout "
        f"(qfieldcloud_worker_drain_timeout, `{PLAY_SITE} -e qfieldcloud_worker_drain_timeout=1800`).",
    },
    codes.CODE_VERIFY_FAILED: {
        "severity": "critical",
        "blocks": "sync",
        "repaired_by": None,
        "detectors": ("callback/drift_report.host_items",),
        "hidden_by": (),
        "summary": "The end-to-end sync probe did not succeed",
        "meaning": "The verify role asked the status endpoint and, unless told not to, created a probe job as the "
        "probe account and waited for it: one of these failed, so a job created now did not finish (or the API did "
        "not answer).",
        "detection": "The verify role's result record (roles/verify, `_qfieldcloud_verify_result`) has outcome "
        "failed; the drift_report callback reports it under this code, with the role's error as the actual value.",
        "evidence": "A drift report item: `field` probe, `expected` finished, `actual` (the probe's error or the "
        "job's status); the verify record on the host has the rest.",
        "remedy": f"`{PLAY_DIAGNOSE}` names what fails, each problem with its remedy; fix it, then `{PLAY_SITE}`.",
    },
}

# Fields of the catalogue rendered in docs/problems.md.
DOC_FIELDS = ("severity", "summary", "meaning", "detection", "evidence", "remedy")
# The prefix of the detectors in this module: their codes are the ones qfc_sync_facts can report.
FACTS_DETECTOR = "problems."


def raised_by_facts(code: str) -> bool:
    """Whether :func:`detect_problems` (so qfc_sync_facts) can raise ``code``: a detector of it is in this module."""
    return any(name.startswith(FACTS_DETECTOR) for name in (CATALOGUE.get(code) or {}).get("detectors") or ())


# The codes qfc_sync_facts can report, in catalogue order (the others come from qfc_worker or the verify role).
FACTS_CODES = tuple(code for code in CATALOGUE if raised_by_facts(code))


def hidden_by(code: str) -> tuple[str, ...]:
    """The ``skip`` options of qfc_sync_facts any one of which keeps it from looking for ``code``."""
    return tuple((CATALOGUE.get(code) or {}).get("hidden_by") or ())


def _context(facts: dict[str, Any]) -> dict[str, str]:
    project = facts.get("project") or {}
    name = project.get("name") or "qfieldcloud"
    return {
        "project": name,
        "project_dir": project.get("dir") or "<project_dir>",
        "network": project.get("network") or f"{name}_default",
        "environment": project.get("environment") or "production",
    }


def make_problem(
    code: str,
    evidence: Any = None,
    facts: dict[str, Any] | None = None,
    summary: str | None = None,
    severity: str | None = None,
    blocks: str | None = None,
) -> dict[str, Any]:
    """One problem dict ``{code, severity, blocks, summary, evidence, remedy, repaired_by}`` from the catalogue."""
    entry = CATALOGUE[code]
    ctx = _context(facts or {})
    remedy = entry["remedy"].replace("{project_dir}", ctx["project_dir"])
    for key in ("project", "network", "environment"):
        remedy = remedy.replace("{" + key + "}", ctx[key])
    return {
        "code": code,
        "severity": severity or entry["severity"],
        "blocks": blocks or entry["blocks"],
        "summary": summary or entry["summary"],
        "evidence": evidence if evidence is not None else {},
        "remedy": remedy,
        "repaired_by": entry["repaired_by"],
    }


def _threshold(facts: dict[str, Any], name: str, default: float) -> float:
    value = (facts.get("thresholds") or {}).get(name)
    return default if value is None else value


class _Collector:
    """Collects problems, merging repeated codes (one problem per code, evidence listed per item)."""

    def __init__(self, facts: dict[str, Any]) -> None:
        self.facts = facts
        self.items: dict[str, dict[str, Any]] = {}

    def add(
        self,
        code: str,
        evidence: dict[str, Any],
        summary: str | None = None,
        severity: str | None = None,
        blocks: str | None = None,
    ):
        if code in self.items:
            problem = self.items[code]
            first = problem["evidence"]
            if "log" in evidence and first.get("log") and first.get("container") == evidence.get("container"):
                evidence = {k: v for k, v in evidence.items() if k != "log"}  # the same container's log once
            first.setdefault("more", []).append(evidence)
            if severity and SEVERITIES.index(severity) < SEVERITIES.index(problem["severity"]):
                problem["severity"] = severity
                if summary:
                    problem["summary"] = summary
            if blocks and BLOCKS.index(blocks) < BLOCKS.index(problem["blocks"]):
                problem["blocks"] = blocks
            return
        self.items[code] = make_problem(code, dict(evidence), self.facts, summary, severity, blocks)

    def result(self) -> list[dict[str, Any]]:
        order = {code: i for i, code in enumerate(CATALOGUE)}
        return sorted(self.items.values(), key=lambda p: (SEVERITIES.index(p["severity"]), order.get(p["code"], 999)))


# The log signs (``stack.LOG_PATTERNS``) that explain a problem of a worker; None: any fault sign, else the
# last lines of the log (a crash loop or a stopped worker whose log shows no known sign).
LOG_SIGNS_OF = {
    codes.CODE_WORKER_DB_HOST_WRONG: ("host_unresolved", "postgres_not_ready"),
    codes.CODE_WORKER_WRONG_NETWORK: ("network_not_found", "host_unresolved", "postgres_not_ready"),
    codes.CODE_WORKER_SOCKET_DENIED: ("socket_denied",),
    codes.CODE_MIGRATIONS_MISSING: ("relation_missing",),
    codes.CODE_DB_IS_REPLICA: ("replica_refused",),
    codes.CODE_WORKER_CRASH_LOOP: None,
    codes.CODE_WORKER_NOT_RUNNING: None,
}
LOG_EVIDENCE_LINES = 20


def log_evidence(replica: dict[str, Any], code: str) -> list[str]:
    """The last lines of a replica's log that explain ``code`` (at most :data:`LOG_EVIDENCE_LINES`).

    Reads ``log_excerpt`` (lines with a fault sign, see ``stack.log_excerpt``) and ``log_tail``; the lines are
    already cut to a bounded width, and the caller redacts them with everything else.
    """
    if code not in LOG_SIGNS_OF:
        return []
    wanted = LOG_SIGNS_OF[code]
    excerpt = replica.get("log_excerpt") or []
    lines = [e["line"] for e in excerpt if wanted is None or set(e.get("signs") or []) & set(wanted)]
    if not lines and wanted is None:
        lines = list(replica.get("log_tail") or [])
    return collapse_repeats(lines)[-LOG_EVIDENCE_LINES:]


def collapse_repeats(lines: list[str]) -> list[str]:
    """Each distinct line once, where it last occurred, marked with its count when it repeats.

    A crash loop prints the same two lines every two seconds: the evidence says so in two lines, not twenty.
    """
    counts: dict[str, int] = {}
    for line in lines:
        counts[line] = counts.get(line, 0) + 1
    seen: set[str] = set()
    last: list[str] = []
    for line in reversed(lines):
        if line not in seen:
            seen.add(line)
            last.append(line)
    return [f"{line} (repeated {counts[line]} times)" if counts[line] > 1 else line for line in reversed(last)]


def _with_log(evidence: dict[str, Any], replica: dict[str, Any], code: str) -> dict[str, Any]:
    lines = log_evidence(replica, code)
    if lines:
        evidence["log"] = lines
    return evidence


def database_service(facts: dict[str, Any]) -> str:
    """The compose service that POSTGRES_HOST names (``project.database_service``), ``db`` when it is not known."""
    return (facts.get("project") or {}).get("database_service") or "db"


def _workers(facts: dict[str, Any]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    worker = facts.get("worker") or {}
    return list(worker.get("replicas") or []), list(worker.get("hand_started") or [])


def _detect_workers(facts: dict[str, Any], out: _Collector) -> None:
    """The worker's problems: its image, its replicas, hand-started workers, each replica, and what jobs need."""
    _detect_worker_image(facts, out)
    _detect_replica_count(facts, out)
    _detect_hand_started(facts, out)
    replicas, hand = _workers(facts)
    running = [r for r in replicas + hand if r.get("running")]
    healthy = [r for r in running if r.get("healthy_now", r.get("running"))]
    for rep in replicas + hand:
        _detect_crash_loop(facts, rep, bool(healthy), out)
        if rep in hand and not rep.get("running"):
            # a stopped hand-started container does no harm; its configuration does not matter
            continue
        _detect_replica_drift(rep, out)
        _detect_log_signs(facts, rep, out)
    _detect_qgis_images(facts, out)
    _detect_worker_timeout(facts, out)
    _detect_job_network(facts, out)
    _detect_shared_environment(facts, out)


def _detect_worker_image(facts: dict[str, Any], out: _Collector) -> None:
    worker_image = (facts.get("images") or {}).get("worker") or {}
    if not worker_image or worker_image.get("present") is not False:
        return
    replicas, hand = _workers(facts)
    evidence = {"image": worker_image.get("name"), "resolved_from": worker_image.get("source")}
    if any(r.get("running") for r in replicas + hand):
        # The running worker goes on; only a recreation would fail.
        out.add(codes.CODE_WORKER_IMAGE_MISSING, evidence, severity="error", blocks="none")
    else:
        out.add(codes.CODE_WORKER_IMAGE_MISSING, evidence)


def _detect_replica_count(facts: dict[str, Any], out: _Collector) -> None:
    replicas, hand = _workers(facts)
    expected = int((facts.get("worker") or {}).get("replicas_expected") or 0)
    running_compose = [r for r in replicas if r.get("running")]
    running_hand = [r for r in hand if r.get("running")]
    if expected > 0 and not running_compose and not running_hand:
        evidence: dict[str, Any] = {"replicas_expected": expected, "replicas_running": 0}
        evidence["containers"] = [
            _with_log({"name": r.get("name"), "state": r.get("state")}, r, codes.CODE_WORKER_NOT_RUNNING)
            for r in replicas + hand
        ]
        out.add(codes.CODE_WORKER_NOT_RUNNING, evidence)
    elif running_compose or not running_hand:
        for item in ws.replica_count_drift(len(running_compose), expected):
            if item["code"] in (codes.CODE_WORKER_REPLICAS_LOW, codes.CODE_WORKER_REPLICAS_HIGH):
                out.add(item["code"], {"replicas_expected": expected, "replicas_running": len(running_compose)})


def _detect_hand_started(facts: dict[str, Any], out: _Collector) -> None:
    replicas, hand = _workers(facts)
    running_compose = [r for r in replicas if r.get("running")]
    running_hand = [r for r in hand if r.get("running")]
    if not running_hand:
        return
    gaps = {r.get("name"): list(r.get("gaps") or []) for r in running_hand if r.get("breaks_jobs")}
    evidence = {
        "containers": [r.get("name") for r in running_hand],
        "compose_replicas_running": len(running_compose),
        "failed_last_hour": (facts.get("queue") or {}).get("failed_last_hour"),
    }
    if gaps:
        out.add(
            codes.CODE_WORKER_HAND_STARTED,
            dict(evidence, lacks=gaps),
            summary="A worker started by hand lacks what jobs need: every job it claims fails",
            severity="critical",
            blocks="sync",
        )
    elif running_compose:
        out.add(codes.CODE_WORKER_HAND_STARTED, evidence)
    else:
        out.add(
            codes.CODE_WORKER_HAND_STARTED,
            evidence,
            summary="A worker started by hand runs instead of the compose worker",
            severity="error",
        )


def _detect_crash_loop(facts: dict[str, Any], rep: dict[str, Any], any_healthy: bool, out: _Collector) -> None:
    state = rep.get("state")
    deaths = rep.get("recent_deaths")
    window = _threshold(facts, "crash_window_s", 600)
    exit_age = rep.get("last_exit_age_s")
    # Restarted by its policy, and its previous process ended within the window: the events may have rotated
    # out of Docker's bounded buffer on a busy engine, this stays.
    died_recently = int(rep.get("restart_count") or 0) > 0 and exit_age is not None and exit_age <= window
    up = rep.get("running") or state == "restarting"
    looping = state == "restarting" or bool(
        up
        and not rep.get("healthy_now", False)
        and ((deaths is not None and deaths >= _threshold(facts, "crash_restarts", 3)) or died_recently)
    )
    if not looping:
        return
    evidence = {
        "container": rep.get("name"),
        "state": state,
        "deaths_in_window": deaths,
        "window_s": window,
        "last_exit_age_s": exit_age,
        "restart_count_lifetime": int(rep.get("restart_count") or 0),
    }
    out.add(
        codes.CODE_WORKER_CRASH_LOOP,
        _with_log(evidence, rep, codes.CODE_WORKER_CRASH_LOOP),
        blocks="none" if any_healthy else "sync",
    )


def _detect_replica_drift(rep: dict[str, Any], out: _Collector) -> None:
    """Raise the drift ``worker_spec.worker_drift`` found on one replica (``rep["drift"]``), one problem per code."""
    # worker_not_running, the other code of worker_drift, is judged over all replicas by _detect_replica_count.
    raised = (
        codes.CODE_WORKER_SOCKET_DENIED,
        codes.CODE_WORKER_SOCKET_NOT_MOUNTED,
        codes.CODE_WORKER_WRONG_NETWORK,
        codes.CODE_WORKER_DB_HOST_WRONG,
        codes.CODE_WORKER_PORT_PUBLISHED,
        codes.CODE_WORKER_DEBUG_COMMAND,
        codes.CODE_WORKER_COMMAND_WRONG,
        codes.CODE_WORKER_RESTART_POLICY,
        codes.CODE_WORKER_IMAGE_WRONG,
        codes.CODE_WORKER_IMAGE_OUTDATED,
    )
    for item in rep.get("drift") or []:
        code = item.get("code")
        if code not in raised:
            continue
        evidence = {
            "container": rep.get("name"),
            "field": item.get("field"),
            "expected": item.get("expected"),
            "actual": item.get("actual"),
        }
        out.add(code, _with_log(evidence, rep, code))


def _detect_log_signs(facts: dict[str, Any], rep: dict[str, Any], out: _Collector) -> None:
    """Raise the problems the fault signs of one replica's log name (``stack.LOG_PATTERNS``)."""
    log = rep.get("log") or {}

    def evidence(key: str, code: str, sign: str) -> dict[str, Any]:
        return _with_log({"container": rep.get("name"), "log_lines_matching": log[key], "sign": sign}, rep, code)

    if log.get("socket_denied"):
        code = codes.CODE_WORKER_SOCKET_DENIED
        out.add(code, evidence("socket_denied", code, "Permission denied on docker.sock"))
    # A stopped database container leaves Docker's DNS: the worker's "could not translate host name" then says the
    # database is down (service_not_running), not that POSTGRES_HOST is wrong.
    db_service = (facts.get("services") or {}).get(database_service(facts)) or {}
    database_down = bool(db_service.get("present") and not db_service.get("running"))
    wrong_network = any(i.get("code") == codes.CODE_WORKER_WRONG_NETWORK for i in rep.get("drift") or [])
    if log.get("host_unresolved") and not wrong_network and not database_down:
        code = codes.CODE_WORKER_DB_HOST_WRONG
        out.add(code, evidence("host_unresolved", code, "could not translate host name"))
    if log.get("relation_missing"):
        code = codes.CODE_MIGRATIONS_MISSING
        out.add(code, evidence("relation_missing", code, "relation does not exist"))


def _detect_qgis_images(facts: dict[str, Any], out: _Collector) -> None:
    missing = [img for img in (facts.get("images") or {}).get("qgis") or [] if img.get("present") is False]
    if not missing:
        return
    needs_qgis4 = _qgis4_needed(facts)
    evidence = {
        "images": [{"variable": i.get("variable"), "name": i.get("name")} for i in missing],
        "qgis4_projects": (facts.get("queue") or {}).get("qgis4_projects"),
    }
    # only the QGIS 4 image, and no project known to need it: a warning
    unused = {"summary": "The QGIS 4 image is missing; no project is known to use QGIS 4", "severity": "warning"}
    needed = any(not is_qgis4_image(i) or needs_qgis4 for i in missing)
    out.add(codes.CODE_QGIS_IMAGE_MISSING, evidence, **({} if needed else dict(unused, blocks="none")))


def _detect_worker_timeout(facts: dict[str, Any], out: _Collector) -> None:
    empty_in = (facts.get("worker_timeout") or {}).get("empty_in")
    if not empty_in:
        return
    replicas, _hand = _workers(facts)
    signs = [r.get("name") for r in replicas if int((r.get("log") or {}).get("timeout_invalid") or 0)]
    out.add(codes.CODE_WORKER_TIMEOUT_EMPTY, {"empty_in": empty_in, "containers_with_parse_error": signs})


def _detect_job_network(facts: dict[str, Any], out: _Collector) -> None:
    network = facts.get("job_network") or {}
    if network.get("exists") is False:
        out.add(
            codes.CODE_QGIS_NETWORK_MISSING,
            {"network": network.get("name"), "source": (facts.get("project") or {}).get("job_network_source")},
        )


def _detect_shared_environment(facts: dict[str, Any], out: _Collector) -> None:
    shared = facts.get("shared_environment") or []
    if not shared:
        return
    project = facts.get("project") or {}
    out.add(
        codes.CODE_SHARED_ENVIRONMENT_LABEL,
        {
            "environment": project.get("environment"),
            "job_label": f"app={project.get('environment')}_worker",
            "this_project": project.get("name"),
            "other_projects": sorted({str(w.get("project")) for w in shared}),
            "other_workers": sorted(str(w.get("name")) for w in shared),
        },
    )


def is_qgis4_image(image: dict[str, Any]) -> bool:
    """Whether an image fact is the QGIS 4 image (by its variable or compose service)."""
    return "QGIS4" in str(image.get("variable") or "").upper() or str(image.get("variable") or "").endswith("qgis4")


def _qgis4_needed(facts: dict[str, Any]) -> bool | None:
    """True when a project uses QGIS 4, False when none does, None when the database did not say."""
    count = (facts.get("queue") or {}).get("qgis4_projects")
    return None if count is None else int(count) > 0


def _detect_services(facts: dict[str, Any], out: _Collector) -> None:
    services = facts.get("services") or {}
    skipped = set(facts.get("checks_skipped") or [])
    # What each service's absence stops: app and database stop jobs; nginx only the devices' way in.
    blocks = {"app": "sync", "db": "sync", "nginx": "client", "memcached": "none"}
    # The database is whichever service POSTGRES_HOST names (`db` in upstream's standalone override).
    database = database_service(facts)
    blocks[database] = "sync"
    for name in ("app", database, "memcached", "nginx"):
        svc = services.get(name) or {}
        if name == database and "db" in skipped:
            continue
        if svc.get("present") and not svc.get("running"):
            out.add(codes.CODE_SERVICE_NOT_RUNNING, {"service": name, "state": svc.get("state")}, blocks=blocks[name])


def _is_timeout(error: str | None) -> bool:
    """True when a query error says the statement (or a lock wait) ran out of time."""
    text = (error or "").lower()
    return "statement timeout" in text or "lock timeout" in text


def _detect_database(facts: dict[str, Any], out: _Collector) -> None:
    db = facts.get("database") or {}
    if not db.get("checked"):
        return
    where = {"host": db.get("host"), "port": db.get("port"), "database": db.get("name")}
    if not db.get("reachable"):
        code = codes.CODE_DB_AUTH_FAILED if db.get("error_kind") == "auth" else codes.CODE_DB_UNREACHABLE
        out.add(code, dict(where, error=db.get("error")))
        return
    if db.get("error_kind") == "query" and _is_timeout(db.get("error")):
        # Connected, but the queue could not be read in time (a lock, an overloaded server): as blocking as down.
        out.add(codes.CODE_DB_UNREACHABLE, dict(where, error=db.get("error"), slow=True))
        return
    if db.get("in_recovery"):
        out.add(codes.CODE_DB_IS_REPLICA, where)
    if db.get("tables_present") is False:
        out.add(codes.CODE_MIGRATIONS_MISSING, dict(where, missing_tables=db.get("missing_tables") or []))


def _log_silence(facts: dict[str, Any]) -> dict[str, Any]:
    replicas, hand = _workers(facts)
    dequeued = {}
    for rep in replicas + hand:
        if rep.get("running"):
            dequeued[rep.get("name")] = int((rep.get("log") or {}).get("dequeued_jobs") or 0)
    return dequeued


def _detect_queue(facts: dict[str, Any], out: _Collector) -> None:
    db = facts.get("database") or {}
    queue = facts.get("queue") or {}
    if not db.get("reachable") or not queue or not queue.get("checked", True):
        return
    pending_age = _threshold(facts, "pending_age_s", 300)
    age = queue.get("oldest_claimable_pending_age_s")
    if age is not None and age > pending_age:
        evidence = {
            "claimable_pending": queue.get("claimable_pending"),
            "oldest_claimable_pending_age_s": round(float(age), 1),
            "threshold_s": pending_age,
            "dequeued_lines_in_worker_logs": _log_silence(facts),
        }
        out.add(codes.CODE_QUEUE_STALLED, evidence)
    overdue_q = int(queue.get("overdue_queued") or 0)
    overdue_s = int(queue.get("overdue_started") or 0)
    if overdue_q or overdue_s:
        out.add(
            codes.CODE_JOBS_OVERDUE,
            {
                "queued": overdue_q,
                "started": overdue_s,
                "job_timeout_s": _threshold(facts, "job_timeout_s", 600),
                "jobs": list(queue.get("overdue_jobs") or [])[:10],
            },
        )
    orphaned = find_orphaned_jobs(facts)
    if orphaned:
        jobs = [orphans_mod.summary(job) for job in orphaned]
        out.add(
            codes.CODE_JOBS_ORPHANED,
            {
                "count": len(jobs),
                "deltas_to_reapply": sum(job["deltas"] for job in jobs if job["recovery"] == "fail"),
                "projects": sorted({str(job["project_id"]) for job in jobs if job.get("project_id")}),
                "jobs": jobs[:10],
            },
        )
    failed = int(queue.get("failed_last_hour") or 0)
    finished = int(queue.get("finished_last_hour") or 0)
    if failed and failed > finished:
        out.add(codes.CODE_JOBS_FAILING, {"failed_last_hour": failed, "finished_last_hour": finished})


def find_orphaned_jobs(facts: dict[str, Any]) -> list[dict[str, Any]]:
    """The open jobs whose worker process is gone (``orphans.find_in_facts`` on the facts of one pass)."""
    return orphans_mod.find_in_facts(facts)


def _detect_app(facts: dict[str, Any], out: _Collector) -> None:
    app = facts.get("app") or {}
    if not app.get("checked"):
        return
    if not app.get("reachable"):
        out.add(codes.CODE_APP_UNREACHABLE, {"url": app.get("url"), "error": app.get("error")})
    elif not app.get("ok"):
        out.add(
            codes.CODE_APP_STATUS_NOT_OK,
            {"url": app.get("url"), "http_status": app.get("http_status"), "status": app.get("status")},
        )


def _detect_client(facts: dict[str, Any], out: _Collector) -> None:
    client = facts.get("client") or {}
    if not client.get("checked") or not client.get("host"):
        return
    if client.get("local_host"):
        out.add(codes.CODE_CLIENT_HOST_LOCAL, {"host": client.get("host"), "host_source": client.get("host_source")})
    app = facts.get("app") or {}
    nginx = (facts.get("services") or {}).get("nginx") or {}
    if app.get("checked") and not app.get("reachable"):
        return  # app_unreachable explains it
    if not client.get("url") and nginx.get("present") and not nginx.get("running"):
        return  # service_not_running explains it
    if client.get("ok"):
        return
    evidence = {
        "url": client.get("url"),
        "connect": f"{client['connect_host']}:{client['connect_port']}" if client.get("connect_host") else None,
        "host_header": client.get("host_header"),
        "http_status": client.get("http_status"),
        "error": client.get("error"),
    }
    nginx_host = client.get("nginx_host")
    if client.get("via") == "nginx" and nginx_host and nginx_host != client.get("host"):
        evidence.update(configured_host=client.get("host"), nginx_host=nginx_host)
        out.add(codes.CODE_NGINX_HOST_MISMATCH, evidence)
    else:
        out.add(codes.CODE_CLIENT_URL_UNREACHABLE, evidence)


NO_CRON_RUNNER = "No cron runner is defined for this project, and the crons have not run lately"


def _detect_cron(facts: dict[str, Any], out: _Collector) -> None:
    cron = facts.get("cron") or {}
    if not cron.get("checked"):
        return
    # The crons' own log is the evidence, whatever runs them (ofelia by container name, the host's cron, a
    # Kubernetes CronJob): a fresh run means they run. Only when the database cannot tell does ofelia's state.
    max_age = _threshold(facts, "cron_max_age_s", 300)
    age = cron.get("last_run_age_s")
    evidence = {
        "last_run": cron.get("last_run"),
        "last_run_age_s": None if age is None else round(float(age), 1),
        "threshold_s": max_age,
        "ofelia_present": cron.get("ofelia_present"),
        "ofelia_running": cron.get("ofelia_running"),
    }
    if cron.get("log_readable"):
        if age is not None and age <= max_age:
            return
        up = cron.get("ofelia_up_s")
        if up is not None and up <= max_age:
            return  # the runner (re)started lately: its first runs are still to come
        if not cron.get("ofelia_present"):
            out.add(codes.CODE_CRON_NOT_RUNNING, evidence, summary=NO_CRON_RUNNER, severity="warning")
        else:
            out.add(codes.CODE_CRON_NOT_RUNNING, evidence)
    elif cron.get("ofelia_present") is False:
        out.add(codes.CODE_CRON_NOT_RUNNING, evidence, summary=NO_CRON_RUNNER, severity="warning")
    elif cron.get("ofelia_running") is False:
        out.add(codes.CODE_CRON_NOT_RUNNING, evidence)


def _detect_orphans(facts: dict[str, Any], out: _Collector) -> None:
    orphans = facts.get("orphan_job_containers") or []
    if orphans:
        out.add(
            codes.CODE_ORPHAN_JOB_CONTAINERS,
            {
                "containers": [
                    {
                        "name": o.get("name"),
                        "job_id": o.get("job_id"),
                        "state": o.get("state"),
                        "reason": o.get("reason"),
                    }
                    for o in orphans[:20]
                ],
                "count": len(orphans),
            },
        )


def detect_problems(facts: dict[str, Any]) -> list[dict[str, Any]]:
    """Return the problems found in ``facts``, most severe first, one entry per code.

    Each problem is ``{code, severity, summary, evidence, remedy}``. The function is pure: it reads plain
    data and never talks to Docker or PostgreSQL. Evidence is not redacted here; callers pass the result
    through ``redact.py`` with everything else.
    """
    out = _Collector(facts)
    daemon = facts.get("daemon") or {}
    if daemon and daemon.get("reachable") is False:
        out.add(codes.CODE_DOCKER_UNREACHABLE, {"docker_host": daemon.get("docker_host"), "error": daemon.get("error")})
    elif daemon:
        services = facts.get("services") or {}
        replicas, hand = _workers(facts)
        if not any(s.get("present") for s in services.values()) and not replicas and not hand:
            out.add(codes.CODE_STACK_NOT_FOUND, {"project": (facts.get("project") or {}).get("name")})
        else:
            _detect_services(facts, out)
            _detect_workers(facts, out)
            _detect_cron(facts, out)
            _detect_orphans(facts, out)
    _detect_database(facts, out)
    _detect_queue(facts, out)
    _detect_app(facts, out)
    _detect_client(facts, out)
    return out.result()


def blocks_of(problem: dict[str, Any]) -> str:
    """What ``problem`` blocks: its own ``blocks``, else its catalogue entry's, else ``none``."""
    value = problem.get("blocks") or (CATALOGUE.get(str(problem.get("code"))) or {}).get("blocks")
    return value if value in BLOCKS else "none"


def sync_ready(problems: list[dict[str, Any]]) -> bool:
    """True only when no problem blocks sync: a job created now would finish."""
    return not any(blocks_of(p) == "sync" for p in problems)


def client_ready(problems: list[dict[str, Any]]) -> bool:
    """True only when no problem says devices cannot reach the server at the URL they are given."""
    return not any(blocks_of(p) == "client" for p in problems)


def blocking_codes(problems: list[dict[str, Any]], what: str) -> list[str]:
    """The codes of the problems that block ``what`` (``sync`` or ``client``), in the problems' order."""
    return [str(p.get("code")) for p in problems if blocks_of(p) == what]


def _doc_text(text: str) -> str:
    return text.replace("{project_dir}", "<project_dir>").replace("{network}", "<project>_default")


def repaired_by_text(playbook: str | None) -> str:
    """How docs/problems.md says what repairs a problem: the playbook's command, or that none does."""
    if playbook is None:
        return "no playbook of the collection: follow the remedy"
    return f"`{REPAIR_COMMAND[playbook]}`"


def catalogue_markdown() -> str:
    """Render the catalogue as docs/problems.md shows it: one short table, then a section per code."""
    lines = ["| Code | Severity | Blocks | Summary |", "| --- | --- | --- | --- |"]
    for code, entry in CATALOGUE.items():
        summary = entry["summary"].replace("|", "\\|")
        lines.append(f"| [`{code}`](#{code}) | {entry['severity']} | {entry['blocks']} | {summary} |")
    for code, entry in CATALOGUE.items():
        hidden = ", ".join(f"`{option}`" for option in entry["hidden_by"]) or "none"
        lines += [
            "",
            f"## {code}",
            "",
            f"**{entry['summary']}.** Severity `{entry['severity']}`, blocks `{entry['blocks']}`.",
            "",
            entry["meaning"],
            "",
            f"- **Detection:** {entry['detection']}",
            f"- **Evidence:** {entry['evidence']}",
            f"- **Remedy:** {_doc_text(entry['remedy'])}",
            f"- **Repaired by:** {repaired_by_text(entry['repaired_by'])}",
            f"- **Raised by:** {', '.join(f'`{name}`' for name in entry['detectors'])}; hidden by `skip`: {hidden}.",
        ]
    return "\n".join(lines) + "\n"
