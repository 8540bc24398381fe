# Copyright (c) 2025, fibreflow
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Apply the QFieldCloud worker's required state (the logic behind ``qfc_worker``).

One pass: read the world through the homes (:mod:`envfile` for the project, :mod:`compose` for ``docker compose``,
:mod:`docker_engine` for the engine), let :mod:`worker_plan` decide, then (unless in check mode) drain
(:mod:`drain`), write the owned files and run ``docker compose`` (compose mode) or the Docker API (standalone
mode), and recover orphaned jobs (:mod:`orphans`).

A converged compose run costs one ``docker compose config``: the configuration hash of the worker is computed from
that read (:func:`compose.service_hash`, confirmed by compose only when it differs from the container's label), and
what only the project's own files tell (the worker's networks and command under the owned override) is kept in a
small cache beside the lock file, keyed by the digest of those files and ``.env``.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import socket
from typing import Any

from ansible_collections.fibreflow.qfieldcloud.plugins.module_utils import compose as compose_mod
from ansible_collections.fibreflow.qfieldcloud.plugins.module_utils import docker_engine as engine_mod
from ansible_collections.fibreflow.qfieldcloud.plugins.module_utils import drain as drain_mod
from ansible_collections.fibreflow.qfieldcloud.plugins.module_utils import enforced as enforced_mod
from ansible_collections.fibreflow.qfieldcloud.plugins.module_utils import envfile, logsigns, stack
from ansible_collections.fibreflow.qfieldcloud.plugins.module_utils import files as files_mod
from ansible_collections.fibreflow.qfieldcloud.plugins.module_utils import orphans as orphans_mod
from ansible_collections.fibreflow.qfieldcloud.plugins.module_utils import worker_plan as wp
from ansible_collections.fibreflow.qfieldcloud.plugins.module_utils import worker_spec as spec
from ansible_collections.fibreflow.qfieldcloud.plugins.module_utils.docker_engine import LABEL_NUMBER, Engine
from ansible_collections.fibreflow.qfieldcloud.plugins.module_utils.redact import Redactor
from ansible_collections.fibreflow.qfieldcloud.plugins.module_utils.worker_plan import WorkerError

DEFAULT_COMPOSE_TIMEOUT = 120


# ---------------------------------------------------------------------------------------------- reads
def connect(docker_host: str | None, timeout: float) -> Engine:
    """An :class:`Engine` on a daemon that answered; a :class:`WorkerError` naming ``docker_host`` otherwise."""
    base_url = engine_mod.docker_host(docker_host)
    try:
        api = engine_mod.client(base_url, timeout)
        api.ping()
    except Exception as exc:
        raise WorkerError(
            f"docker_host: cannot reach the Docker daemon at {base_url!r}: {exc}. Check that dockerd runs and"
            " that docker_host (or DOCKER_HOST) points at it.",
            option="docker_host",
        ) from exc
    return Engine(api)


def replicas_matching(engine: Engine, filters: dict[str, Any]) -> list[dict[str, Any]]:
    """Replica dicts of all containers (running or not) matching ``filters``, by number and name."""
    found = []
    for summary in engine.containers(filters=filters):
        attrs = engine.inspect(summary["Id"])
        if attrs is not None:
            found.append(stack.replica_from_inspect(attrs, engine.image_user(attrs.get("Image") or "")))
    return sorted(found, key=lambda item: (item["number"], item["name"]))


def service_replicas(engine: Engine, project: str, service: str) -> list[dict[str, Any]]:
    """The compose containers of ``project``/``service``: only those with a container number (compose sets it on
    the containers it creates; a container started by hand from a compose-built image has the project and service
    labels too) and not one-off (``docker compose run``)."""
    labels = [
        f"{engine_mod.LABEL_PROJECT}={project}",
        f"{engine_mod.LABEL_SERVICE}={service}",
        LABEL_NUMBER,
        f"{engine_mod.LABEL_ONEOFF}=False",
    ]
    return replicas_matching(engine, {"label": labels})


def db_names(engine: Engine, project: str, db_host: str | None) -> dict[str, list[str]] | None:
    """``{network: [names]}`` of the container ``db_host`` names (a container of ``project``, by service, container
    name or alias), or ``None`` when it names none: an external host."""
    if not db_host:
        return None
    summaries = engine.containers(filters={"label": f"{engine_mod.LABEL_PROJECT}={project}"})

    def named(summary: dict[str, Any]) -> bool:
        names = [n.lstrip("/") for n in summary.get("Names") or []]
        return db_host in ((summary.get("Labels") or {}).get(engine_mod.LABEL_SERVICE), *names)

    # The service or container name first (one inspect); aliases only when neither matches.
    for summary in sorted(summaries, key=lambda item: not named(item)):
        found = spec.container_dns_names(engine.inspect(summary["Id"]) or {})
        if any(db_host in dns for dns in found.values()):
            return found
    return None


def compose_db_names(engine: Engine, config: dict, project: str, db_host: str) -> dict[str, list[str]] | None:
    """``{network: [names]}`` of the database service ``db_host`` names (compose configuration, plus its container's
    own names when it exists), or ``None`` when ``db_host`` is not a service of the project."""
    db_service = compose_mod.service_for_host(config, db_host)
    if not db_service:
        return None
    names = compose_mod.service_dns_names(config, db_service)
    for net, more in (db_names(engine, project, db_host) or {}).items():
        if net in names:
            names[net] = sorted(set(names[net]) | set(more))
    return names


def hand_started(engine: Engine, params: dict, project: str, image: str, image_id: str | None) -> list[dict]:
    """Worker containers of this project that compose does not manage (started by hand)."""
    name = params.get("container_name") or wp.DEFAULT_CONTAINER_NAME
    found = []
    for summary in engine.containers():
        if (summary.get("Labels") or {}).get(LABEL_NUMBER):
            continue
        by_name = name in [n.lstrip("/") for n in summary.get("Names") or []]
        by_image = summary.get("ImageID") == image_id or spec.normalise_image_ref(summary.get("Image")) == image
        if not (by_name or by_image):
            continue
        attrs = engine.inspect(summary["Id"])
        if not attrs:
            continue
        replica = stack.replica_from_inspect(attrs)
        if not by_name and not spec.is_dequeue_command(replica["command"]):
            continue
        if not by_name and replica.get("env_project") not in (None, project):
            continue
        found.append(replica)
    return found


def check_db_host(engine: Engine, db_host: str, networks: list[str], names: dict | None, source: str) -> None:
    """Make sure ``db_host`` resolves from the worker's own ``networks``; raise naming ``db_host`` otherwise.

    Proof is the database container answering to that name on one of those networks (its service name, container
    name or an alias there, from the compose configuration or the running containers), or an external host (an
    address, or a name this host resolves). A project container's name on other networks only is no proof.
    """
    if db_host in spec.names_on(names, networks):
        return
    if any(db_host in engine.network_aliases(net) for net in networks):
        return
    if names:
        where = sorted(net for net, found in names.items() if db_host in found)
        raise WorkerError(
            f"db_host: {db_host!r} ({source}) names the database container, but it resolves only on"
            f" {', '.join(where) or 'no network'}, none of the worker's networks ({', '.join(networks)}); give"
            " the network option, or a db_host the worker resolves.",
            option="db_host",
        )
    if re.match(r"^[0-9.]+$|^[0-9a-fA-F:]+:[0-9a-fA-F:]*$", db_host):
        return
    try:
        socket.getaddrinfo(db_host, None)
    except OSError:
        raise WorkerError(
            f"db_host: {db_host!r} ({source}) is neither a container on the worker's networks"
            f" ({', '.join(networks)}) nor a name this host resolves; give db_host explicitly (the host the app"
            " uses for its database).",
            option="db_host",
        ) from None


def db_settings(engine: Engine, params: dict, network: str, env: dict[str, str] | None, redactor: Redactor) -> dict:
    """The database the drain and the orphan recovery read (from the app's environment), or ``{}``."""
    env = env or {}
    redactor.learn_env(env)
    host = params.get("db_host") or env.get("POSTGRES_HOST")
    if not host:
        return {}
    return {
        "host": engine.network_aliases(network).get(host, host),
        "port": env.get("POSTGRES_PORT") or 5432,
        "dbname": env.get("POSTGRES_DB"),
        "user": env.get("POSTGRES_USER"),
        "password": env.get("POSTGRES_PASSWORD"),
        "sslmode": env.get("POSTGRES_SSLMODE"),
    }


# ---------------------------------------------------------------------------------------------- the project's own files
def base_facts(cli: compose_mod.ComposeCli, project: dict, current: dict, override_path: str, service: str) -> dict:
    """What the project's own files (without the owned override) give the worker: ``networks`` (``[[compose key,
    Docker name], ...]``) and ``first_command`` (the command of the first compose file).

    The override hides both in the effective configuration, so they need compose reads of their own; those are
    kept in a cache file beside the lock (outside the project directory, so check mode writes it too), valid while
    the project's other compose files and ``.env`` are unchanged.
    """
    files = project.get("compose_files") or []
    real = os.path.realpath(override_path)
    others = [path for path in files if os.path.realpath(path) != real]
    fingerprint = files_mod.contents_digest(others, f"{service}\0{project.get('env_text') or ''}")
    cache = compose_mod.lock_path(project["project_name"], project.get("project_dir"))[: -len(".lock")] + ".base.json"
    try:
        with open(cache, encoding="utf-8") as handle:
            cached = json.load(handle)
        if cached.get("fingerprint") == fingerprint:
            return cached
    except (OSError, ValueError):
        pass
    base = current
    if len(others) != len(files):
        try:
            base = cli.config(files=others)
        except compose_mod.ComposeError:
            base = current
    facts = {
        "fingerprint": fingerprint,
        "networks": [[key, compose_mod.network_name(base, key)] for key in compose_mod.service_networks(base, service)],
        "first_command": None,
    }
    if files and others == files and len(files) == 1:
        facts["first_command"] = ((current.get("services") or {}).get(service) or {}).get("command")
    elif files:
        try:
            first = cli.config(files=[files[0]])
            facts["first_command"] = ((first.get("services") or {}).get(service) or {}).get("command")
        except compose_mod.ComposeError:
            facts["first_command"] = None
    with contextlib.suppress(OSError):
        files_mod.atomic_write(cache, json.dumps(facts), mode=0o600)
    return facts


def kept(base: dict[str, Any], network: str) -> tuple[list[str], list[str]]:
    """``(compose keys, Docker names)`` of the further networks the project's own files give the worker."""
    pairs = [
        (key, name) for key, name in base["networks"] if name != network and key != compose_mod.EXTERNAL_NETWORK_KEY
    ]
    return [key for key, _name in pairs], sorted(name for _key, name in pairs)


def planned_service(cli: compose_mod.ComposeCli, files: dict, current: dict, service: str, redactor: Redactor):
    """``(planned configuration, a function giving compose's own hash of the service)``: the current configuration
    when no file changes, else compose's reading of the planned files (the override from stdin)."""
    changed = files["override_changes"] or files["env_changes"]
    args = {"files": files["planned_files"], "stdin": files["override_after"]} if changed else {}

    def refused(exc: compose_mod.ComposeError) -> WorkerError:
        return WorkerError(
            "override_file: the planned override does not combine with the project's compose files:"
            f" {redactor.text(str(exc))}",
            option="override_file",
        )

    try:
        planned = cli.config(**args) if changed else current
    except compose_mod.ComposeError as exc:
        raise refused(exc) from None
    memo: dict[str, str] = {}

    def compose_hash() -> str:
        if "hash" not in memo:
            try:
                memo["hash"] = cli.config_hash(service, **args)
            except compose_mod.ComposeError as exc:
                raise refused(exc) from None
        return memo["hash"]

    return planned, compose_hash


def hash_matches(replicas: list[dict], svc: dict, compose_hash) -> dict[str, bool]:
    """Replica id -> whether its ``config-hash`` label is the planned configuration's. The hash computed from the
    configuration read decides when it equals the label; otherwise compose is asked (once)."""
    computed = compose_mod.service_hash(svc)
    result = {}
    for replica in replicas:
        label = replica.get("config_hash")
        result[replica["id"]] = label == computed or label == compose_hash()
    return result


# ---------------------------------------------------------------------------------------------- compose mode
def compose_world(run: WorkerRun, engine: Engine, project: dict, cli: compose_mod.ComposeCli) -> dict[str, Any]:
    """Read what the compose plan needs (one ``docker compose config`` when nothing changes) and check the
    inputs that name the database and its network."""
    params, service = run.params, run.params.get("service") or spec.WORKER_SERVICE
    name = project["project_name"]
    project_dir = project["project_dir"]
    override_file = wp.override_name(params)
    if not project.get("compose_files"):
        raise WorkerError(
            f"project_dir: no compose file in {project_dir!r} (COMPOSE_FILE unset and no docker-compose.yml).",
            option="project_dir",
        )
    try:
        current = cli.config()
    except compose_mod.ComposeError as exc:
        raise WorkerError(
            f"project_dir: the compose files of {project_dir!r} are invalid: {run.redactor.text(str(exc))}",
            option="project_dir",
        ) from None
    services = sorted((current.get("services") or {}).keys())
    if service not in services:
        raise WorkerError(
            f"service: {service!r} is not a service of the compose project in {project_dir!r}"
            f" (services: {', '.join(services)}).",
            option="service",
        )
    replicas = wp.desired_replicas(params, project)
    app_env = engine.service_env(name, "app")
    db_host, source = wp.choose_db_host(params, app_env, project)
    names = compose_db_names(engine, current, name, db_host)
    app_networks = [] if "app" in services else engine.service_networks(name, "app")
    network = wp.compose_network(params, project, current, names, db_host, app_networks)
    network_key = compose_mod.network_key_for(current, network)
    external = None
    if network_key is None or network_key == compose_mod.EXTERNAL_NETWORK_KEY:
        if not engine.network_exists(network):
            raise WorkerError(
                f"network: {network!r} is neither a network of the compose project nor an existing Docker"
                " network; give the network where the worker reaches the database (the db container's).",
                option="network",
            )
        external = network
    override_path = os.path.join(project_dir, override_file)
    base = base_facts(cli, project, current, override_path, service)
    keep_keys, keep_names = kept(base, network)
    planned_networks = [network, *keep_names]
    check_db_host(engine, db_host, planned_networks, names, source)
    world = {
        "service": service,
        "replicas": replicas,
        "db_host": db_host,
        "network": network,
        "network_key": network_key,
        "external": external,
        "keep_keys": keep_keys,
        "command": wp.dequeue_command(params, base["first_command"]),
        "override_before": envfile.read_text(override_path),
        "env_before": project.get("env_text"),
    }
    files = wp.files_plan(params, project, world)
    planned, compose_hash = planned_service(cli, files, current, service, run.redactor)
    svc = (planned.get("services") or {}).get(service) or {}
    # What compose resolves for the service: a prebuilt image (image:) or the local build's name. The override never
    # names an image or a build, so a repair never swaps one for the other.
    image = params.get("image") or spec.resolved_image(svc, name, service)
    image_id = (engine.image(image) or {}).get("Id")
    run.plan["details"].update(
        {
            "service": service,
            "replicas": replicas,
            "network": network,
            "db_host": db_host,
            "image": image,
            "override_file": files["override_path"],
            "compose_file": files["cf_after"],
        }
    )
    expected = wp.expected_state(params, name, network, db_host, image, image_id, names)
    expected["planned_networks"] = planned_networks
    replicas_now = service_replicas(engine, name, service)
    qgis = wp.qgis_network(run.plan, project, svc.get("environment"))
    world.update(
        {
            "project": project,
            "files": files,
            "expected": expected,
            "image": image,
            "image_present": image_id is not None,
            "image_command": cli.image_command(service, svc),
            "svc": svc,
            "replicas_now": replicas_now,
            "hand": hand_started(engine, params, name, image, image_id),
            "hash_matches": hash_matches([r for r in replicas_now if r["number"] <= replicas], svc, compose_hash),
            "qgis_network_missing": qgis if qgis and not engine.network_exists(qgis) else None,
            "app_env": app_env,
        }
    )
    return world


def run_compose(run: WorkerRun, engine: Engine, project: dict, cli: compose_mod.ComposeCli) -> dict[str, Any]:
    """Plan compose mode, then (outside check mode) drain, write the files, run compose and verify."""
    params = run.params
    world = compose_world(run, engine, project, cli)
    service, replicas = world["service"], world["replicas"]
    plan = wp.plan(params, run.check, {**world, "mode": "compose"}, run.plan)
    stuck = [
        item
        for item in plan["apply"]["stuck_candidates"]
        if logsigns.never_reached_database(engine.current_logs(item["id"], item.get("started_at")))
    ]
    up_command = cli.shell_command("up", "-d", "--no-deps", "--scale", f"{service}={replicas}", service)
    wp.compose_actions(plan, service, up_command, stuck)
    scope = {"project": project["project_name"], "network": world["network"], "env": world["app_env"]}
    scope["running"] = (params.get("state") or "started") != "stopped"
    if run.check or not plan["actions"]:
        return scope
    apply_compose(run, engine, cli, world, scope, cli.timeout)
    return scope


def apply_compose(run: WorkerRun, engine: Engine, cli: compose_mod.ComposeCli, world: dict, scope: dict, timeout):
    """Drain first (nothing changes if it times out), then the files, then compose, then verify."""
    todo, service, replicas = run.plan["apply"], world["service"], world["replicas"]
    db = db_settings(engine, run.params, world["network"], world["app_env"], run.redactor)
    run.drain(engine, todo["drain"], db)
    for item in run.plan["files"]:
        if item["backup"]:
            run.plan["details"]["backup_file"] = compose_mod.backup_file(item["path"])
        files_mod.atomic_write(item["path"], item["text"], mode=item["mode"])
    for item in todo["stuck"]:
        engine.stop(item["id"], wp.STUCK_STOP_TIMEOUT)
    stuck_ids = {item["id"] for item in todo["stuck"]}
    run.stop_idle(engine, [item for item in todo["drain"] if item["id"] not in stuck_ids], db)
    for item in todo["remove_hand"]:
        engine.remove(item["id"], _grace(engine, item))
    up_timeout = max(timeout, 60) + wp.DEFAULT_STOP_TIMEOUT
    try:
        if todo["up"]:
            cli.run(*compose_mod.up_args(service, replicas), timeout=up_timeout)
        if todo["stop"]:
            cli.run(*compose_mod.stop_args(service), timeout=up_timeout)
        if todo["restart"]:
            cli.run(*compose_mod.restart_args(service), timeout=up_timeout)
    except compose_mod.ComposeError as exc:
        raise WorkerError(f"docker compose failed: {run.redactor.text(str(exc))}", option="project_dir") from None
    if scope["running"]:
        verify(run, engine, cli, world, db, up_timeout)


def verify(run: WorkerRun, engine: Engine, cli: compose_mod.ComposeCli, world: dict, db: dict, up_timeout) -> None:
    """After ``up``: every replica must comply; one forced recreate if compose left drift behind."""
    project, service, replicas = world["project"]["project_name"], world["service"], world["replicas"]
    left: list = []
    now: list = []
    for attempt in range(2):
        now = service_replicas(engine, project, service)
        left = [
            (replica, items)
            for replica in now
            if (items := [i for i in spec.worker_drift(replica, world["expected"]) if i["field"] != "running"])
        ]
        if not left and len(now) == replicas:
            return
        if attempt == 0 and left:
            run.drain(engine, [pair[0] for pair in left], db)
            cli.run(*compose_mod.up_args(service, replicas, force_recreate=True), timeout=up_timeout)
            run.plan["actions"].append(f"force-recreate {service} (compose kept a drifted container)")
            continue
    raise WorkerError(
        f"the worker still differs from the required state after docker compose up: {left or len(now)}",
        option="project_dir",
    )


def _grace(engine: Engine, replica: dict[str, Any]) -> float:
    attrs = engine.inspect(replica["id"]) or {}
    return (attrs.get("Config") or {}).get("StopTimeout") or wp.DEFAULT_STOP_TIMEOUT


# ---------------------------------------------------------------------------------------------- standalone mode
def standalone_existing(engine: Engine, base_name: str) -> list[dict[str, Any]]:
    """The standalone replicas (``base_name``, ``base_name-N``), each with its inspect document as ``attrs``."""
    existing = []
    for summary, number in wp.standalone_existing(engine.containers(), base_name):
        attrs = engine.inspect(summary["Id"])
        if attrs:
            replica = stack.replica_from_inspect(attrs)
            replica.update({"number": number, "attrs": attrs})
            existing.append(replica)
    return sorted(existing, key=lambda r: r["number"])


def service_config(run: WorkerRun, project: dict, service: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """The compose project's configuration and the service's entry, or ``({}, {})`` without a project."""
    if not (project.get("project_dir") and project.get("compose_files")):
        return {}, {}
    cli = compose_mod.ComposeCli(project["project_dir"], run.params.get("docker_host"))
    try:
        config = cli.config()
    except compose_mod.ComposeError:
        return {}, {}
    return config, (config.get("services") or {}).get(service) or {}


def standalone_image(params: dict, svc: dict, existing: list[dict], project: str, service: str) -> str:
    """The image compose resolves for the service; without a compose project, the one the worker runs now (a
    prebuilt image is never swapped for a local build), else the local build's name."""
    image = params.get("image")
    if not image and svc:
        image = spec.resolved_image(svc, project, service)
    if not image and existing and spec.is_dequeue_command(existing[0].get("command")):
        image = existing[0].get("image")
    return image or f"{project}-{service}"


def standalone_world(run: WorkerRun, engine: Engine, project: dict, state: str) -> dict[str, Any]:
    """Read what the standalone plan needs and build the wanted container."""
    params, name = run.params, project["project_name"]
    service = params.get("service") or spec.WORKER_SERVICE
    base_name = params.get("container_name") or wp.DEFAULT_CONTAINER_NAME
    replicas = wp.desired_replicas(params, project) if state != "absent" else 0
    config, svc = service_config(run, project, service)
    existing = standalone_existing(engine, base_name)
    template = existing[0]["attrs"] if existing else None
    app_env = engine.service_env(name, "app")
    db_host = params.get("db_host") or wp.choose_db_host({}, app_env, project)[0]
    names = db_names(engine, name, db_host)
    network = params.get("network") or spec.expected_network(
        project["default_network"], names, engine.service_networks(name, "app"), db_host
    )
    if not engine.network_exists(network):
        raise WorkerError(
            f"network: Docker network {network!r} does not exist; give the network where the worker reaches the"
            " database (the db container's).",
            option="network",
        )
    image = standalone_image(params, svc, existing, name, service)
    run.plan["details"].update({"replicas": replicas, "network": network, "db_host": db_host, "image": image})
    image_id = (engine.image(image) or {}).get("Id")
    if state != "absent":
        check_db_host(engine, db_host, [network], names, "the app's POSTGRES_HOST")
    env = spec.standalone_env(template, svc.get("environment"), app_env)
    if not env:
        raise WorkerError(
            "project_dir: no environment to give the worker (no compose project, no existing worker, no app"
            " container); give project_dir.",
            option="project_dir",
        )
    env["POSTGRES_HOST"] = db_host
    run.redactor.learn_env(env)
    desired = standalone_desired(params, existing, template, svc, config, name, image, image_id, env, network)
    if project.get("project_dir") and svc:
        provide = compose_mod.ComposeCli(project["project_dir"]).image_command(service, svc)
    elif "/" in image:
        provide = f"docker pull {image}"
    else:
        provide = f"docker build -t {image} <worker build context>"
    return {
        "existing": existing,
        "replicas": replicas,
        "base_name": base_name,
        "expected": wp.expected_state(params, name, network, db_host, image, image_id, names),
        "desired": desired,
        "image_present": image_id is not None,
        "image_command": provide,
        "env": app_env or env,
        "network": network,
    }


def standalone_desired(params, existing, template, svc, config, project, image, image_id, env, network) -> dict:
    """The wanted standalone container: what the one it replaces had plus what the compose service gives."""
    command = list(params.get("command") or compose_mod.DEFAULT_COMMAND)
    for replica in existing:
        words = spec.command_words(replica.get("cmd"))
        if not params.get("command") and spec.is_dequeue_command(words) and not spec.is_debug_command(words):
            command = words
            break
    compose_binds = spec.volume_binds(svc.get("volumes"), compose_mod.volume_names(config))
    labels = spec.standalone_labels(template, dict(svc.get("labels") or {}) if svc else {})
    for own in (engine_mod.LABEL_MANAGED, engine_mod.LABEL_SPEC):
        labels.pop(own, None)
    return {
        "image": image,
        "image_id": image_id,
        "command": command,
        "user": "root",
        "env": env,
        "network": network,
        "volumes": spec.standalone_binds(template, compose_binds),
        "labels": labels,
        "stop_timeout": spec.standalone_stop_timeout(template, svc, wp.DEFAULT_STOP_TIMEOUT),
        "restart": spec.RESTART_POLICY,
    }


def run_standalone(run: WorkerRun, engine: Engine, project: dict, state: str) -> dict[str, Any]:
    """Plan standalone mode, then (outside check mode) drain and manage the containers through the Docker API."""
    world = standalone_world(run, engine, project, state)
    plan = wp.plan(run.params, run.check, {**world, "mode": "standalone"}, run.plan)
    todo = plan["apply"]
    scope = {"project": project["project_name"], "network": world["network"], "env": world["env"]}
    scope["running"] = todo["running"]
    if run.check or not plan["actions"]:
        return scope
    db = db_settings(engine, run.params, world["network"], world["env"], run.redactor)
    run.drain(engine, todo["drain"], db)
    run.stop_idle(engine, todo["drain"], db)
    for replica in todo["remove"] + todo["recreate"]:
        engine.remove(replica["id"], _grace(engine, replica))
    for replica in todo["stop"]:
        engine.stop(replica["id"], wp.DEFAULT_STOP_TIMEOUT)
    if not todo["running"]:
        return scope
    labels = {**world["desired"]["labels"], engine_mod.LABEL_MANAGED: engine_mod.MANAGED_BY}
    labels[engine_mod.LABEL_SPEC] = todo["spec_hash"]
    for name in todo["create"] + [r["name"] for r in todo["recreate"]]:
        engine.create_and_start(name, world["desired"], labels)
    for replica in todo["start"]:
        engine.api.start(replica["id"])
    for replica in todo["restart"]:
        engine.api.restart(replica["id"], timeout=wp.DEFAULT_STOP_TIMEOUT)
    return scope


# ---------------------------------------------------------------------------------------------- the run
class WorkerRun:
    """One ``qfc_worker`` run: the parameters, check mode, the plan so far (also on failure) and the redactor."""

    def __init__(self, params: dict[str, Any], check_mode: bool = False) -> None:
        self.params = params
        self.check = check_mode
        self.plan = wp.new_plan()
        self.redactor = Redactor()

    def run(self) -> dict[str, Any]:
        """Plan and apply; return the module's result (redacted)."""
        params, state = self.params, self.params.get("state") or "started"
        project = load_project(params)
        self.redactor.learn_env(project.get("dotenv") or {})
        self.plan["details"]["project_name"] = project["project_name"]
        engine = connect(params.get("docker_host"), float(params.get("timeout") or engine_mod.DEFAULT_API_TIMEOUT))
        mode = choose_mode(params, engine, project)
        self.plan["details"]["mode"] = mode
        if state == "absent" and mode != "standalone":
            raise WorkerError(
                "state: 'absent' is only for mode=standalone (hand-started workers); for the compose service use"
                " replicas: 0 or state: stopped.",
                option="state",
            )
        lock = compose_mod.ProjectLock(
            compose_mod.lock_path(project["project_name"], project.get("project_dir")),
            float(params.get("lock_timeout") or 0),
        )
        try:
            with lock:
                self.plan["details"]["lock_waited_s"] = round(lock.waited, 1)
                self._locked(engine, project, state)
        except compose_mod.LockTimeout as exc:
            raise WorkerError(str(exc), option="lock_timeout") from None
        return self.result()

    def _locked(self, engine: Engine, project: dict, state: str) -> None:
        if envfile.env_changed(project):  # another run changed .env while this one waited for the lock
            project = load_project(self.params)
            self.redactor.learn_env(project.get("dotenv") or {})
        recover = (self.params.get("orphaned_jobs") or "recover") != "keep"
        cli = None
        if self.plan["details"]["mode"] == "compose":
            timeout = float(self.params.get("compose_timeout") or DEFAULT_COMPOSE_TIMEOUT)
            cli = compose_mod.ComposeCli(project["project_dir"], self.params.get("docker_host"), timeout=timeout)
            cli.prefetch_config()  # compose reads the project while the engine is read below
        # What the workers held before this run changes them: a replaced container takes its log along.
        before = orphans_mod.worker_claims(engine, project["project_name"]) if recover and not self.check else None
        if cli is not None:
            if not self.check:
                enforced_mod.forget(project)  # a run that fails from here on proves nothing
            scope = run_compose(self, engine, project, cli)
        else:
            scope = run_standalone(self, engine, project, state)
        if scope.get("running") and recover:
            db = db_settings(engine, self.params, scope["network"], scope.get("env"), self.redactor)
            scope.update(check=self.check, changed=bool(self.plan["actions"]))
            found = orphans_mod.recover_orphans(engine, db, scope, before)
            self.plan["drift"] += found["drift"]
            self.plan["actions"] += found["actions"]
            if found["orphaned_jobs"] is not None:
                self.plan["details"]["orphaned_jobs"] = found["orphaned_jobs"]
        if cli is not None and not self.check:
            # The worker is as required now: what a later read compares with (module_utils/enforced.py).
            if self.plan["actions"]:  # the files as this run left them (COMPOSE_FILE may name the override now)
                project = load_project(self.params)
            override_path = os.path.join(project["project_dir"], wp.override_name(self.params))
            listing = engine.containers(filters={"label": f"{engine_mod.LABEL_PROJECT}={project['project_name']}"})
            enforced_mod.write(project, self.params, enforced_mod.watched_files(project, override_path), listing)

    def drain(self, engine: Engine, replicas: list[dict[str, Any]], db: dict[str, Any]) -> None:
        """Wait until ``replicas`` hold no job (:func:`drain.drain`, bounded by ``drain_timeout``)."""
        timeout = float(self.params.get("drain_timeout") or 0)
        drain_mod.drain(engine, replicas, db, timeout, self.plan["details"])

    def stop_idle(self, engine: Engine, replicas: list[dict[str, Any]], db: dict[str, Any]) -> None:
        """Stop the drained replicas that hold no job (see :func:`drain.stop_idle_replicas`)."""
        outcome = drain_mod.stop_idle_replicas(engine, replicas, db)
        if not outcome:
            return
        for name in sorted(name for name, how in outcome.items() if how == "killed"):
            self.plan["actions"].append(
                f"killed {name}: it ignored SIGTERM for {drain_mod.IDLE_STOP_WAIT:g}s and the database shows it"
                " holds no job"
            )
        self.plan["details"].setdefault("stopped", {}).update(outcome)

    def result(self) -> dict[str, Any]:
        """The module's result so far (redacted): ``changed``, ``drift``, ``actions``, ``diff``, ``warnings`` and
        the details."""
        plan = self.plan
        result = {
            "changed": bool(plan["actions"]),
            "drift": plan["drift"],
            "actions": plan["actions"],
            "diff": plan["diffs"],
            "warnings": plan["warnings"],
            **plan["details"],
        }
        return self.redactor.value(result)


def load_project(params: dict[str, Any]) -> dict[str, Any]:
    """The project, its ``.env`` read once; a missing ``project_dir`` raises naming it."""
    project_dir = params.get("project_dir")
    if project_dir:
        if not os.path.isdir(project_dir):
            raise WorkerError(
                f"project_dir: {project_dir!r} does not exist or is not a directory. Give the directory that"
                " holds the QFieldCloud docker-compose.yml and .env.",
                option="project_dir",
            )
        project_dir = os.path.realpath(project_dir)
    return envfile.load_project(project_dir, params.get("project_name"))


def choose_mode(params: dict[str, Any], engine: Engine, project: dict[str, Any]) -> str:
    """``compose`` or ``standalone`` (``auto``: compose when ``project_dir`` is given)."""
    mode = params.get("mode") or "auto"
    if mode != "auto":
        if mode == "compose" and not project.get("project_dir"):
            raise WorkerError("project_dir: required with mode=compose.", option="project_dir")
        return mode
    if project.get("project_dir"):
        # A project directory means a compose project; when it holds no compose file, compose mode says so
        # (naming project_dir) instead of silently managing a standalone container.
        return "compose"
    if service_replicas(engine, project["project_name"], params.get("service") or spec.WORKER_SERVICE):
        raise WorkerError(
            "project_dir: the compose project runs a worker service but project_dir was not given; the fix must"
            " go into the project's compose files. Give project_dir (or mode=standalone).",
            option="project_dir",
        )
    return "standalone"
