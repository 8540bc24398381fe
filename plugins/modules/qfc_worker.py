#!/usr/bin/python
# Copyright (c) 2025, fibreflow
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations

DOCUMENTATION = r"""
---
module: qfc_worker
short_description: Enforce the QFieldCloud worker's configuration without losing a job
version_added: 0.1.0
description:
  - Makes the QFieldCloud job processor (the C(worker_wrapper) service) run as it must for sync to work,
    and keeps it so.
  - "Enforced per replica: running as root (hardening such as C(cap_drop), C(no-new-privileges) or C(read_only)
    that keeps the socket usable is not drift), on the network where it reaches the database (see O(network); a
    worker on extra networks is fine), no published ports, the C(manage.py dequeue) command without a debugger,
    C(POSTGRES_HOST) reaching the app's database from the worker's own networks, C(/var/run/docker.sock) mounted
    read-write, C(restart: unless-stopped), the worker image compose resolves for the service, running; plus the
    wanted number of replicas."
  - "C(QFIELDCLOUD_DEFAULT_NETWORK) is the QGIS job containers' network: it is never put on the worker. When it
    names a network that does not exist, the module reports it (RV(drift) code C(qgis_network_missing), with the
    remedy) and a warning; it never creates it."
  - "Images: the worker runs what compose resolves for the service, the C(image:) of the compose files when they
    give one (upstream's prebuilt C(opengisch/qfieldcloud-worker-wrapper:<tag>)), else the local build
    C(<project>-worker_wrapper). The override never names an image or a build, and C(docker compose up) runs with
    C(--no-build --pull never): a repair never swaps a prebuilt image for a local build or the reverse."
  - "Compose mode: the module owns one override file in the project directory
    (C(docker-compose.override.fibreflow-worker.yml) by default) whose first lines say it is managed by this
    collection. It sets the settings above with the C(!override) and C(!reset) tags of compose (C(ports: !reset [])
    removes ports that earlier files publish), and C(scale) so that a later plain C(docker compose up -d) keeps the
    replica count. The module keeps that file the last entry of C(COMPOSE_FILE) in C(.env) (backup of C(.env)
    when it changes, the file mode kept, every other byte of the file unchanged) and applies with
    C(docker compose --project-directory DIR up -d --no-deps --scale SERVICE=N SERVICE), run in the project
    directory. It never patches a compose
    container directly and never uses C(--dry-run). A person's later C(docker compose up -d) changes nothing."
  - "Standalone mode: manages workers started by hand (C(docker run --name qfieldcloud-worker ...)) through the
    Docker API with the same rules: replica 1 is named O(container_name), further replicas
    O(container_name)-2, -3 and so on. A recreated container keeps everything the one it replaces had and adds
    what the compose service gives (when O(project_dir) holds one): bind mounts and named volumes with their mode
    (the custom CA volume stays read-only), the C(/tmp) hand-off, the environment, the labels (without compose's
    own bookkeeping labels), the stop timeout (C(stop_grace_period)); the restart policy is C(unless-stopped)."
  - "No job is lost: before stopping, recreating or removing a replica the module waits, at most O(drain_timeout)
    seconds, until that replica has no job C(queued) or C(started). The job a replica may be running is the one of
    the last C(Dequeued job <id>, run!) line of its current process's log; the replica is busy while that job is
    C(queued) or C(started) in the database (or, when the database cannot be read, while a QGIS job container
    labelled with that C(job_id) runs). If the time runs out the module fails and changes nothing. A drained
    replica then gets SIGTERM and 15 seconds to exit; one that ignores it while the database shows it holds no job
    (cut off from its network in the middle of a query) is killed. Every other stop uses the service's grace period,
    and the worker finishes the job it holds when it receives SIGTERM."
  - Concurrent runs for one compose project on one host serialise on an C(fcntl) lock file under C(/run/lock);
    a second run waits up to O(lock_timeout) seconds, then fails. Files are written atomically (temporary file in
    the same directory, fsync, rename), so a run killed midway leaves C(.env) and the override whole and the next
    run converges.
  - "After a compose-mode run that leaves the worker as required (not in check mode), the module writes a record
    beside the lock: the options that shape its plan, and a SHA-256 key over the project's compose files, C(.env),
    the override and the project's containers (id, state, configuration hash, networks, image). It holds no
    secret. M(fibreflow.qfieldcloud.qfc_sync_facts) reports whether the record is still current
    (C(worker.enforced)); the C(fibreflow.qfieldcloud.worker) role leaves this module out of a play whose read found
    no problem and shows the record current with the role's options. A run that fails removes the record."
  - In check mode no file of the project directory is written and no container is created, started, stopped or
    removed (only the lock file under C(/run/lock) and the cache beside it may be created), yet C(changed),
    C(drift), C(actions) and C(diff) say exactly what a real run would do.
  - A missing worker image fails the task with the problem code C(worker_image_missing) and the exact command that
    provides it, C(docker compose pull SERVICE) for a prebuilt image, C(docker compose build SERVICE) for a local
    build (in check mode it is reported only). The module never pulls or builds; building is the job of the
    C(fibreflow.qfieldcloud.worker) role.
author:
  - FibreFlow operations (@fibreflow)
requirements:
  - the Docker SDK for Python 5.0 or newer (Debian/Ubuntu C(python3-docker)) on the managed host
  - the docker CLI with the compose v2 plugin (compose mode)
  - psycopg2 (optional; without it the drain uses the Docker-only rule)
attributes:
  check_mode:
    support: full
  diff_mode:
    support: full
  idempotent:
    support: full
options:
  service:
    description: The worker service of the compose project.
    type: str
    default: worker_wrapper
  mode:
    description:
      - V(compose) manages the compose service through an override file and C(docker compose).
      - V(standalone) manages hand-started containers through the Docker API.
      - V(auto) picks V(compose) when O(project_dir) is given, else V(standalone).
    type: str
    choices: [auto, compose, standalone]
    default: auto
  state:
    description:
      - V(started) makes O(replicas) compliant replicas run.
      - V(stopped) writes the configuration and stops the replicas (after draining them).
      - V(restarted) converges, then restarts the replicas (after draining them); always reports a change.
      - V(absent) removes the standalone worker containers (O(mode=standalone) only; use O(replicas=0) for the
        compose service).
    type: str
    choices: [started, stopped, restarted, absent]
    default: started
  replicas:
    description:
      - Number of worker replicas, an integer from 0 to 32.
      - Defaults to C(QFIELDCLOUD_WORKER_REPLICAS) of C(.env), else 1.
    type: int
  db_host:
    description:
      - The C(POSTGRES_HOST) the worker must use.
      - Defaults to C(POSTGRES_HOST) of the app container (the host the app itself uses), else of C(.env), else
        C(db). The module fails naming this option when the worker could not resolve the host from its own
        networks. A name of the database container (its service name, container name or an alias) counts only on
        the networks where the container answers to it; any other host must be an address or a name the Docker
        host resolves (an external database).
    type: str
  network:
    description:
      - The network the worker must be on, where it reaches the database. Given, it wins.
      - Defaults to the project's default network C(<project>_default) when the database service's container (the
        compose service O(db_host) names) is on it, or when the database is external; otherwise a network the
        database container and the app share (one where O(db_host) resolves).
      - Never defaults to C(QFIELDCLOUD_DEFAULT_NETWORK), the QGIS job containers' network.
      - In compose mode the override adds this network to those the project's files give the worker and keeps
        the others.
    type: str
  override_file:
    description: Name of the override file the module owns inside O(project_dir).
    type: str
    default: docker-compose.override.fibreflow-worker.yml
  command:
    description:
      - The dequeue command as a list of words.
      - Defaults to the worker's command of the first compose file when it runs C(dequeue) without a debugger,
        else C(python manage.py dequeue).
    type: list
    elements: str
  image:
    description:
      - The worker image. Defaults to what compose resolves for the service (its C(image:), else the local build
        C(<project>-worker_wrapper)); in standalone mode without a compose project, to the image the existing
        worker runs.
    type: str
  container_name:
    description:
      - Name of the (first) standalone worker container, also the name of a hand-started worker that runs beside
        the compose service.
    type: str
    default: qfieldcloud-worker
  remove_hand_started:
    description:
      - In compose mode, retire workers started by hand beside the compose service (the field guide's
        C(docker run --name qfieldcloud-worker ...)). Each is drained first like any replica (the module waits
        until it holds no job), then stopped and removed. In check mode this is only reported.
      - They are reported in RV(hand_started), with what each lacks of what compose gives the worker in
        RV(hand_started_gaps), and in a warning when they are kept. The C(fibreflow.qfieldcloud.worker) role
        sets this to true.
    type: bool
    default: false
  orphaned_jobs:
    description:
      - What to do, once the worker runs as it must, with jobs left C(queued) or C(started) by a worker process
        that no longer exists (the Docker daemon or the host restarted, a container was killed). A job is
        orphaned when no running worker's current process names it in its last C(Dequeued job) line, no running
        QGIS job container carries it, and it last changed before every running worker's process started.
      - V(recover) puts C(queued) jobs (they never ran) and C(started) C(package) and C(process_projectfile) jobs
        (their work is repeatable) back to C(pending), and sets other C(started) jobs (a C(delta_apply) may have
        written part of its deltas) C(failed) with the reason in their C(output), as upstream's cron does after
        the job timeout. Each update re-checks the state it read. Reported in RV(drift) as C(jobs_orphaned).
      - V(keep) leaves them (a C(queued) one then blocks its project until someone acts).
    type: str
    choices: [recover, keep]
    default: recover
  drain_timeout:
    description: Seconds to wait for a replica's job in flight to finish before stopping or replacing it.
    type: int
    default: 900
  lock_timeout:
    description: Seconds to wait for another run on the same project to finish.
    type: int
    default: 300
  backup:
    description: Keep a timestamped copy of C(.env) (C(.env.<time>.bak), same mode) before changing it.
    type: bool
    default: true
  compose_timeout:
    description:
      - Seconds for one C(docker compose) call (C(config), C(up), C(stop), C(restart)). Calls that stop or replace
        replicas additionally get the service's grace period (C(stop_grace_period), 900 seconds by default).
      - O(timeout) bounds each Docker API call instead.
    type: int
    default: 120
extends_documentation_fragment:
  - fibreflow.qfieldcloud.attributes
  - fibreflow.qfieldcloud.docker
  - fibreflow.qfieldcloud.project
notes:
  - Runs on the Docker host (the Ansible target).
  - O(project_dir) is required in compose mode. When the directory does not exist the module fails naming this
    option and changes nothing.
  - "When O(project_dir) is not where the project is (missing directory, no compose file, a compose syntax error,
    an unknown O(service)), the module fails with a message naming the option and leaves every file and container
    as it was."
seealso:
  - module: fibreflow.qfieldcloud.qfc_sync_facts
"""

EXAMPLES = r"""
- name: Make the worker of a default install run as it must
  fibreflow.qfieldcloud.qfc_worker:
    project_dir: /opt/qfieldcloud

- name: Show what would change, without changing anything
  fibreflow.qfieldcloud.qfc_worker:
    project_dir: /opt/qfieldcloud
  check_mode: true
  diff: true
  register: worker

- name: Fail the play when the worker drifted (for a scheduled drift report)
  ansible.builtin.assert:
    that: worker.drift | length == 0
    fail_msg: "{{ worker.drift | map(attribute='code') | unique | join(', ') }}"

- name: Three replicas, the database on an external host
  fibreflow.qfieldcloud.qfc_worker:
    project_dir: /opt/qfieldcloud
    replicas: 3
    db_host: pg.internal.example.org

- name: Remove the worker someone started by hand beside the compose one
  fibreflow.qfieldcloud.qfc_worker:
    project_dir: /opt/qfieldcloud
    remove_hand_started: true

- name: Manage a hand-started worker container (no compose project)
  fibreflow.qfieldcloud.qfc_worker:
    mode: standalone
    project_name: qfieldcloud
    container_name: qfieldcloud-worker
    image: qfieldcloud-worker_wrapper
"""

RETURN = r"""
drift:
  description:
    - What differs from the required state, one item per replica and field. C(code) is a problem code of the
      catalogue shared with M(fibreflow.qfieldcloud.qfc_sync_facts) (for example C(worker_socket_denied),
      C(worker_port_published), C(worker_replicas_low)); C(worker_config_not_persistent) means the override file or
      C(COMPOSE_FILE) does not yet hold the configuration.
    - Items of code C(qgis_network_missing) also carry C(remedy); items of code C(worker_hand_started) carry
      C(gaps) (see RV(hand_started_gaps)).
    - The sample is a check-mode run on a stand-in stack whose worker lost its C(user) setting.
  returned: always
  type: list
  elements: dict
  sample:
    - {replica: null, field: compose_override, expected: "docker-compose.override.fibreflow-worker.yml current and last
       in COMPOSE_FILE", actual: missing, code: worker_config_not_persistent}
    - {replica: dret-worker_wrapper-1, field: user, expected: root, actual: "10001", code: worker_socket_denied}
  contains:
    replica:
      description: The container name, or null for project-wide items (replica count, override file, image, the
        QGIS job network, orphaned jobs).
      type: str
      sample: dret-worker_wrapper-1
    field:
      description: What differs (V(user), V(running), V(replicas), V(compose_override), V(image), V(qgis_network),
        V(job), ...).
      type: str
      sample: user
    expected:
      description: The required value.
      type: raw
      sample: root
    actual:
      description: The value found (null when there is none).
      type: raw
      sample: "10001"
    code:
      description: The problem code.
      type: str
      sample: worker_socket_denied
    remedy:
      description: What a person does (only on items the module does not fix itself, such as C(qgis_network_missing)).
      type: str
      returned: on items of code C(qgis_network_missing)
      sample: docker network create dret_jobs, or set QFIELDCLOUD_DEFAULT_NETWORK in /opt/qfieldcloud/.env to an
        existing network
    gaps:
      description: See RV(hand_started_gaps).
      type: list
      elements: str
      returned: on items of code C(worker_hand_started)
      sample: ["bind:/tmp", "volume:/transformation_grids"]
actions:
  description: The actions taken, or in check mode the actions a real run would take.
  returned: always
  type: list
  elements: str
  sample: ["write /opt/qfieldcloud/docker-compose.override.fibreflow-worker.yml",
           "set COMPOSE_FILE in /opt/qfieldcloud/.env (backup kept)",
           "recreate dret-worker_wrapper-1 (after drain)",
           "run: cd /opt/qfieldcloud && docker compose up -d --no-deps --scale worker_wrapper=1 worker_wrapper"]
diff:
  description:
    - Before and after of the override file, the C(COMPOSE_FILE) line and the worker containers' fields, one item per
      file or set (shown by C(--diff)).
  returned: always
  type: list
  elements: dict
  sample:
    - before: "COMPOSE_FILE=docker-compose.yml:docker-compose.override.standalone.yml\n"
      after: "COMPOSE_FILE=docker-compose.yml:docker-compose.override.standalone.yml:\
        docker-compose.override.fibreflow-worker.yml\n"
      before_header: /opt/qfieldcloud/.env (COMPOSE_FILE)
      after_header: /opt/qfieldcloud/.env (COMPOSE_FILE)
  contains:
    before:
      description: The text before (empty for a file that does not exist yet).
      type: str
      sample: "COMPOSE_FILE=docker-compose.yml:docker-compose.override.standalone.yml\n"
    after:
      description: The text after.
      type: str
      sample: "COMPOSE_FILE=docker-compose.yml:docker-compose.override.standalone.yml:\
        docker-compose.override.fibreflow-worker.yml\n"
    before_header:
      description: What the text is (a path, or V(worker containers (before))).
      type: str
      sample: /opt/qfieldcloud/.env (COMPOSE_FILE)
    after_header:
      description: What the text is after.
      type: str
      sample: /opt/qfieldcloud/.env (COMPOSE_FILE)
mode:
  description: The mode used (V(compose) or V(standalone)).
  returned: success
  type: str
  sample: compose
project_name:
  description: The compose project name.
  returned: success
  type: str
  sample: dret
service:
  description: The worker's compose service (O(service)).
  returned: success
  type: str
  sample: worker_wrapper
replicas:
  description: The wanted number of replicas.
  returned: success
  type: int
  sample: 1
db_host:
  description: The C(POSTGRES_HOST) enforced.
  returned: success
  type: str
  sample: db
network:
  description: The network enforced.
  returned: success
  type: str
  sample: dret_default
image:
  description: The worker image.
  returned: success
  type: str
  sample: dret-worker_wrapper
override_file:
  description: Path of the owned override file.
  returned: compose mode
  type: str
  sample: /opt/qfieldcloud/docker-compose.override.fibreflow-worker.yml
compose_file:
  description: The C(COMPOSE_FILE) value enforced.
  returned: compose mode
  type: str
  sample: docker-compose.yml:docker-compose.override.standalone.yml:docker-compose.override.fibreflow-worker.yml
backup_file:
  description: Path of the copy of C(.env) made before changing it.
  returned: when .env changed and O(backup=true)
  type: str
  sample: /opt/qfieldcloud/.env.20261201T122307.bak
hand_started:
  description: Names of workers started by hand beside the compose service.
  returned: compose mode
  type: list
  elements: str
  sample: ["qfieldcloud-worker-dret"]
image_missing:
  description: True when the worker image does not exist.
  returned: when the image is missing
  type: bool
  sample: true
build_command:
  description: The command that builds the missing worker image (a locally built image).
  returned: when a locally built image is missing
  type: str
  sample: cd /opt/qfieldcloud && docker compose build worker_wrapper
pull_command:
  description: The command that fetches the missing worker image (a prebuilt image, C(image:) without C(build:)).
  returned: when a prebuilt image is missing
  type: str
  sample: cd /opt/qfieldcloud && docker compose pull worker_wrapper
image_command:
  description: The command that provides the missing worker image (the pull or build command above).
  returned: when the image is missing
  type: str
  sample: cd /opt/qfieldcloud && docker compose build worker_wrapper
hand_started_gaps:
  description: Per hand-started worker, what it lacks of what compose gives the worker service, as
    C(bind:<target>), C(volume:<target>) and C(env:<NAME>) (names only, never values). A missing C(bind:/tmp)
    makes every job it claims fail.
  returned: when hand-started workers were found (compose mode)
  type: dict
  sample: {qfieldcloud-worker-dret: ["bind:/tmp", "volume:/transformation_grids",
    "env:QFIELDCLOUD_WORKER_QFIELDCLOUD_URL"]}
qgis_network_missing:
  description: The QGIS job network (C(QFIELDCLOUD_DEFAULT_NETWORK)) that does not exist, and the remedy.
  returned: when that network is missing
  type: dict
  sample:
    network: dret_jobs
    remedy: docker network create dret_jobs, or set QFIELDCLOUD_DEFAULT_NETWORK in /opt/qfieldcloud/.env to an
      existing network
  contains:
    network:
      description: The missing network.
      type: str
      sample: dret_jobs
    remedy:
      description: What to do.
      type: str
      sample: docker network create dret_jobs, or set QFIELDCLOUD_DEFAULT_NETWORK in /opt/qfieldcloud/.env to an
        existing network
code:
  description: The problem code of a failure (C(worker_image_missing), C(drain_timeout)).
  returned: on some failures
  type: str
  sample: worker_image_missing
option:
  description: The option a failure concerns.
  returned: on failure caused by an option's value
  type: str
  sample: image
orphaned_jobs:
  description: The jobs recovered (or, in check mode, that would be). See O(orphaned_jobs).
  returned: when orphaned jobs were found
  type: list
  elements: dict
  contains:
    id:
      description: The job ID.
      type: str
      sample: 1b861393-bebb-4bbb-839a-df3364941daa
    status:
      description: Its status before the recovery.
      type: str
      sample: started
    type:
      description: The job type.
      type: str
      sample: delta_apply
    project_id:
      description: The job's project.
      type: str
      sample: 6652bf26-0900-4dd5-a55c-a4ed2dd08cb1
    recovery:
      description: V(requeue) (set back to pending) or V(fail) (set failed; it may have run in part).
      type: str
      sample: fail
    evidence:
      description: Why it counts as orphaned.
      type: list
      elements: str
      sample: ["claimant_gone", "job_container_ended", "before_current_processes"]
    deltas:
      description: The deltas of a C(delta_apply) job, set to error so they can be applied again.
      type: int
      sample: 2
    user_action:
      description: What a person does next, or null when the queue does it by itself.
      type: str
      sample: "2 change(s) uploaded from QField to project 6652bf26-0900-4dd5-a55c-a4ed2dd08cb1 were not applied; they
        are now 'error'. An administrator applies them again in the web admin ..."
stopped:
  description: How each drained replica stopped before compose replaced it, V(exited) on SIGTERM, V(killed) (it
    ignored SIGTERM and held no job) or V(left) (stopped by compose with the grace period).
  returned: when replicas were stopped
  type: dict
  sample: {dret-worker_wrapper-1: exited}
drain_waited_s:
  description: Seconds spent waiting for jobs in flight.
  returned: when replicas were drained
  type: float
  sample: 0.0
lock_waited_s:
  description: Seconds spent waiting for another run's lock.
  returned: success
  type: float
  sample: 0.0
"""

from ansible.module_utils.basic import AnsibleModule, missing_required_lib

from ansible_collections.fibreflow.qfieldcloud.plugins.module_utils import docker_engine, worker_apply
from ansible_collections.fibreflow.qfieldcloud.plugins.module_utils.argspec import common_args
from ansible_collections.fibreflow.qfieldcloud.plugins.module_utils.worker_plan import WorkerError, validate_replicas


def main() -> None:
    module = AnsibleModule(
        argument_spec=common_args(
            service={"type": "str", "default": "worker_wrapper"},
            mode={"type": "str", "default": "auto", "choices": ["auto", "compose", "standalone"]},
            state={"type": "str", "default": "started", "choices": ["started", "stopped", "restarted", "absent"]},
            replicas={"type": "int"},
            db_host={"type": "str"},
            network={"type": "str"},
            override_file={"type": "str", "default": "docker-compose.override.fibreflow-worker.yml"},
            command={"type": "list", "elements": "str"},
            image={"type": "str"},
            container_name={"type": "str", "default": "qfieldcloud-worker"},
            remove_hand_started={"type": "bool", "default": False},
            orphaned_jobs={"type": "str", "default": "recover", "choices": ["recover", "keep"]},
            drain_timeout={"type": "int", "default": 900},
            lock_timeout={"type": "int", "default": 300},
            backup={"type": "bool", "default": True},
            compose_timeout={"type": "int", "default": worker_apply.DEFAULT_COMPOSE_TIMEOUT},
        ),
        supports_check_mode=True,
    )
    if not docker_engine.HAS_DOCKER:
        module.fail_json(
            msg=missing_required_lib("docker") + " Debian/Ubuntu: apt-get install python3-docker; RHEL-like: dnf"
            " install python3-docker (EPEL); or run the role fibreflow.qfieldcloud.prerequisites.",
            exception=docker_engine.DOCKER_IMPORT_ERROR,
        )
    for option in ("drain_timeout", "lock_timeout", "timeout", "compose_timeout"):
        if module.params[option] < 0:
            module.fail_json(msg=f"{option}: expected a number of seconds >= 0, got {module.params[option]}")
    if module.params["replicas"] is not None:
        try:
            validate_replicas(module.params["replicas"], "the replicas option")
        except WorkerError as exc:
            module.fail_json(msg=str(exc), option=exc.option)

    run = worker_apply.WorkerRun(module.params, check_mode=module.check_mode)
    try:
        result = run.run()
    except WorkerError as exc:
        failure = run.result()
        failure.pop("changed", None)
        for warning in failure.pop("warnings", []):
            module.warn(warning)
        failure.update(exc.details)
        failure["option"] = exc.option
        if exc.code:
            failure["code"] = exc.code
        failure = run.redactor.value(failure)
        module.fail_json(msg=run.redactor.text(str(exc)), **failure)
    warnings = result.pop("warnings", [])
    for warning in warnings:
        module.warn(warning)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
