# Copyright (c) 2025, fibreflow
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The plan of one ``qfc_worker`` run, from plain data: no Docker, no compose, no file access.

:mod:`worker_apply` reads the world (the parsed project, the compose configuration, the inspected replicas, the
images, the database's DNS names, the current files' text) and hands it here; the functions return a plan dict:

``drift`` (``{replica, field, expected, actual, code}`` items), ``actions`` (what a real run does), ``diffs``
(before/after of the override, ``COMPOSE_FILE`` and the containers), ``warnings``, ``details`` (result keys),
and what to apply: ``files`` to write, replicas to ``drain`` and to stop now, whether compose must run.

Errors a person must act on raise :class:`WorkerError` with the option they concern.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from typing import Any

from ansible_collections.fibreflow.qfieldcloud.plugins.module_utils import codes
from ansible_collections.fibreflow.qfieldcloud.plugins.module_utils import compose as compose_mod
from ansible_collections.fibreflow.qfieldcloud.plugins.module_utils import worker_spec as spec

DEFAULT_STOP_TIMEOUT = 900
STUCK_STOP_TIMEOUT = 3
MAX_REPLICAS = 32
DEFAULT_CONTAINER_NAME = "qfieldcloud-worker"


class WorkerError(Exception):
    """An error a person acts on. ``option`` names the module option concerned, ``code`` a problem code."""

    def __init__(self, msg: str, option: str | None = None, code: str | None = None, **details: Any) -> None:
        super().__init__(msg)
        self.option = option
        self.code = code
        self.details = details


def new_plan() -> dict[str, Any]:
    """An empty plan."""
    return {"drift": [], "actions": [], "diffs": [], "warnings": [], "details": {}}


def add_drift(plan: dict[str, Any], replica: str | None, item: dict[str, Any]) -> None:
    """Record one drift item of ``replica`` (``None``: project-wide)."""
    plan["drift"].append({"replica": replica, **item})


# ---------------------------------------------------------------------------------------------- inputs
def validate_replicas(value: Any, source: str) -> int:
    """``value`` as an integer 0..32, else a :class:`WorkerError` naming ``replicas``."""
    try:
        number = int(str(value).strip())
        if str(number) != str(value).strip().lstrip("+"):
            raise ValueError(value)
    except (TypeError, ValueError):
        raise WorkerError(
            f"replicas: expected an integer from 0 to {MAX_REPLICAS}, got {value!r} (from {source})", option="replicas"
        ) from None
    if not 0 <= number <= MAX_REPLICAS:
        raise WorkerError(
            f"replicas: expected an integer from 0 to {MAX_REPLICAS}, got {number} (from {source})", option="replicas"
        )
    return number


def desired_replicas(params: dict[str, Any], project: dict[str, Any]) -> int:
    """The wanted replica count: the option, else ``QFIELDCLOUD_WORKER_REPLICAS`` of ``.env``, else 1."""
    if params.get("replicas") is not None:
        return validate_replicas(params["replicas"], "the replicas option")
    raw = (project.get("dotenv") or {}).get("QFIELDCLOUD_WORKER_REPLICAS") if project.get("env_file") else None
    if raw is None or str(raw).strip() == "":
        return project.get("worker_replicas", 1)
    return validate_replicas(raw, f"QFIELDCLOUD_WORKER_REPLICAS in {project['env_file']}")


def choose_db_host(params: dict[str, Any], app_env: dict[str, str] | None, project: dict[str, Any]) -> tuple[str, str]:
    """``(db_host, where it comes from)``: the option, else the app container's ``POSTGRES_HOST``, else ``.env``'s,
    else ``db``."""
    if params.get("db_host"):
        return params["db_host"], "the db_host option"
    host = (app_env or {}).get("POSTGRES_HOST") or (project.get("postgres") or {}).get("host") or "db"
    return host, "POSTGRES_HOST of the app container" if app_env else "POSTGRES_HOST in .env"


def override_name(params: dict[str, Any]) -> str:
    """The owned override's file name; a path is refused (naming ``override_file``)."""
    name = params.get("override_file") or compose_mod.OVERRIDE_FILE
    if os.sep in name or name in (".", ".."):
        raise WorkerError(
            f"override_file: give a file name inside project_dir, not a path ({name!r}).", option="override_file"
        )
    return name


def dequeue_command(params: dict[str, Any], base_command: Any) -> list[str]:
    """The worker's command: the option, else ``base_command`` (the first compose file's) when it runs ``dequeue``
    without a debugger, else ``python manage.py dequeue``."""
    if params.get("command"):
        return list(params["command"])
    words = spec.command_words(base_command)
    if words and spec.is_dequeue_command(words) and not spec.is_debug_command(words):
        return words
    return list(compose_mod.DEFAULT_COMMAND)


# ---------------------------------------------------------------------------------------------- views and diffs
def replica_view(replica: dict[str, Any]) -> dict[str, Any]:
    """The fields of a replica the container diff shows."""
    return {
        "user": replica.get("user") or "",
        "networks": replica.get("networks"),
        "published_ports": replica.get("published_ports"),
        "postgres_host": replica.get("postgres_host"),
        "command": " ".join(spec.command_words(replica.get("cmd") or replica.get("command"))),
        "socket_mount": replica.get("socket_mount"),
        "restart_policy": replica.get("restart_policy"),
        "image": replica.get("image"),
        "running": replica.get("running"),
    }


def expected_view(expected: dict[str, Any], command: list[str], running: bool) -> dict[str, Any]:
    """The same fields as :func:`replica_view` for a compliant replica."""
    return {
        "user": "root",
        "networks": expected.get("planned_networks") or [expected["network"]],
        "published_ports": [],
        "postgres_host": expected.get("db_host"),
        "command": " ".join(command),
        "socket_mount": {"present": True, "rw": True, "source": spec.DOCKER_SOCKET},
        "restart_policy": spec.RESTART_POLICY,
        "image": expected.get("image"),
        "running": running,
    }


def container_diff(plan: dict[str, Any], before: dict[str, Any], after: dict[str, Any]) -> None:
    """Add the containers' before/after to the plan's diffs when they differ."""
    if before != after:
        plan["diffs"].append(
            {
                "before_header": "worker containers (before)",
                "after_header": "worker containers (after)",
                "before": json.dumps(before, indent=2, sort_keys=True) + "\n",
                "after": json.dumps(after, indent=2, sort_keys=True) + "\n",
            }
        )


def expected_state(
    params: dict[str, Any],
    project: str,
    network: str,
    db_host: str,
    image: str,
    image_id: str | None,
    db_names: dict[str, list[str]] | None = None,
) -> dict[str, Any]:
    """What every replica must be (:func:`worker_spec.expected_worker`) and whether it runs."""
    expected = spec.expected_worker(
        project, network=network, db_host=db_host, image=image, image_id=image_id, db_names=db_names
    )
    expected["running"] = params.get("state") != "stopped"
    return expected


# ---------------------------------------------------------------------------------------------- project-wide
def image_missing(plan: dict[str, Any], image: str, command: str, check_mode: bool) -> None:
    """Report the missing worker image with the command that provides it (``pull`` for a prebuilt image, else
    ``build``); outside check mode, raise. Never builds."""
    pull = " pull " in f" {command} "
    key = "pull_command" if pull else "build_command"
    add_drift(
        plan, None, {"field": "image", "expected": image, "actual": None, "code": codes.CODE_WORKER_IMAGE_MISSING}
    )
    plan["details"].update({"image_missing": True, key: command, "image_command": command})
    if not check_mode:
        raise WorkerError(
            f"{codes.CODE_WORKER_IMAGE_MISSING}: the worker image {image!r} does not exist;"
            f" {'pull' if pull else 'build'} it first: {command}",
            option="image",
            code=codes.CODE_WORKER_IMAGE_MISSING,
            drift=plan["drift"],
            image_missing=True,
            **{key: command, "image_command": command},
        )


def qgis_network(plan: dict[str, Any], project: dict[str, Any], worker_env: dict[str, Any] | None) -> str | None:
    """The ``QFIELDCLOUD_DEFAULT_NETWORK`` value whose existence must be checked, or ``None``."""
    value = str((worker_env or {}).get("QFIELDCLOUD_DEFAULT_NETWORK") or "").strip()
    if not value and project.get("job_network_source") == "QFIELDCLOUD_DEFAULT_NETWORK":
        value = project.get("job_network") or ""
    return value or None


def qgis_network_missing(plan: dict[str, Any], project: dict[str, Any], value: str) -> None:
    """Report the QGIS job network that does not exist (never created: it is the job containers' network)."""
    where = project.get("env_file") or ".env"
    remedy = f"docker network create {value}, or set QFIELDCLOUD_DEFAULT_NETWORK in {where} to an existing network"
    add_drift(
        plan,
        None,
        {
            "field": "qgis_network",
            "expected": f"Docker network {value!r} exists (QFIELDCLOUD_DEFAULT_NETWORK)",
            "actual": None,
            "code": codes.CODE_QGIS_NETWORK_MISSING,
            "remedy": remedy,
        },
    )
    plan["details"]["qgis_network_missing"] = {"network": value, "remedy": remedy}
    plan["warnings"].append(
        f"{codes.CODE_QGIS_NETWORK_MISSING}: QFIELDCLOUD_DEFAULT_NETWORK names {value!r}, which does not"
        f" exist: every QGIS job container fails to start. Not created by this module; {remedy}."
    )


def hand_started_plan(plan: dict[str, Any], params: dict[str, Any], hand: list[dict[str, Any]], svc: dict) -> list:
    """Judge the workers started by hand beside the compose service; return those to retire (drained first)."""
    env_keys = set((svc.get("environment") or {}).keys())
    for item in hand:
        item["gaps"] = spec.hand_started_gaps(item, env_keys, svc.get("volumes") or [])
    plan["details"]["hand_started"] = [item["name"] for item in hand]
    if hand:
        plan["details"]["hand_started_gaps"] = {item["name"]: item["gaps"] for item in hand}
    if hand and not params.get("remove_hand_started"):
        lacking = "; ".join(
            f"{item['name']} lacks {', '.join(item['gaps'][:6])}{' ...' if len(item['gaps']) > 6 else ''}"
            for item in hand
            if item["gaps"]
        )
        plan["warnings"].append(
            f"hand-started worker(s) beside the compose service: {', '.join(i['name'] for i in hand)}"
            + (f" ({lacking}: the jobs it claims fail)" if lacking else "")
            + "; set remove_hand_started: true to retire them (drained first)"
        )
    remove = hand if params.get("remove_hand_started") else []
    for item in remove:
        add_drift(
            plan,
            item["name"],
            {
                "field": "hand_started",
                "expected": "absent",
                "actual": item.get("status"),
                "code": codes.CODE_WORKER_HAND_STARTED,
                "gaps": item["gaps"],
            },
        )
    return remove


# ---------------------------------------------------------------------------------------------- compose mode
def compose_network(
    params: dict[str, Any],
    project: dict[str, Any],
    config: dict[str, Any],
    db_names: dict[str, list[str]] | None,
    db_host: str,
    app_networks: list[str],
) -> str:
    """The network the worker must be on: the option, else where it reaches the database
    (:func:`worker_spec.expected_network`); ``app_networks`` are the app container's when ``app`` is no service."""
    if params.get("network"):
        return params["network"]
    if "app" in (config.get("services") or {}):
        app_networks = [compose_mod.network_name(config, key) for key in compose_mod.service_networks(config, "app")]
    return spec.expected_network(project["default_network"], db_names, app_networks, db_host)


def kept_networks(base: dict[str, Any], service: str, network: str) -> tuple[list[str], list[str]]:
    """``(compose keys, Docker names)`` of the further networks the project's own files give the worker (a worker
    on extra networks is fine: the override keeps them)."""
    keys = [
        key
        for key in compose_mod.service_networks(base, service)
        if compose_mod.network_name(base, key) != network and key != compose_mod.EXTERNAL_NETWORK_KEY
    ]
    return keys, sorted(compose_mod.network_name(base, key) for key in keys)


def files_plan(
    params: dict[str, Any],
    project: dict[str, Any],
    world: dict[str, Any],
) -> dict[str, Any]:
    """The owned override's and ``.env``'s planned text, and the files compose reads after the change.

    ``world`` holds ``service``, ``command``, ``db_host``, ``replicas``, ``network_key``, ``external``,
    ``keep_keys``, ``override_before`` and ``env_before`` (the files' current text, ``None`` when absent).
    """
    project_dir = project["project_dir"]
    name = override_name(params)
    override_after = compose_mod.render_override(
        world["service"],
        world["command"],
        world["db_host"],
        world["replicas"],
        network_key=world.get("network_key") or "default",
        external_network=world.get("external"),
        keep_network_keys=world.get("keep_keys") or [],
    )
    env_before = world.get("env_before")
    env_after, cf_before, cf_after = compose_mod.planned_env_text(
        env_before or "", project_dir, name, project.get("path_separator")
    )
    sep = project.get("path_separator") or ":"
    return {
        "override_name": name,
        "override_path": os.path.join(project_dir, name),
        "env_path": os.path.join(project_dir, ".env"),
        "override_before": world.get("override_before"),
        "override_after": override_after,
        "env_before": env_before,
        "env_after": env_after,
        "cf_before": cf_before,
        "cf_after": cf_after,
        "override_changes": world.get("override_before") != override_after,
        "env_changes": env_before is None or env_after != env_before,
        # The files of the planned configuration, the override read from stdin ("-").
        "planned_files": [("-" if item == name else item) for item in cf_after.split(sep)],
    }


def _file_actions(plan: dict[str, Any], params: dict[str, Any], files: dict[str, Any]) -> None:
    override_path, env_path = files["override_path"], files["env_path"]
    writes = []
    if files["override_changes"]:
        plan["actions"].append(f"write {override_path}")
        plan["diffs"].append(
            {
                "before_header": override_path,
                "after_header": override_path,
                "before": files["override_before"] or "",
                "after": files["override_after"],
            }
        )
        writes.append({"path": override_path, "text": files["override_after"], "mode": 0o644, "backup": False})
    if files["env_changes"]:
        backup = bool(params.get("backup", True)) and files["env_before"] is not None
        plan["actions"].append(f"set COMPOSE_FILE in {env_path}" + (" (backup kept)" if backup else ""))
        plan["diffs"].append(
            {
                "before_header": f"{env_path} (COMPOSE_FILE)",
                "after_header": f"{env_path} (COMPOSE_FILE)",
                "before": "" if files["cf_before"] is None else f"COMPOSE_FILE={files['cf_before']}\n",
                "after": f"COMPOSE_FILE={files['cf_after']}\n",
            }
        )
        writes.append({"path": env_path, "text": files["env_after"], "mode": 0o600, "backup": backup})
    plan["files"] = writes


def _replica_drift(
    plan: dict[str, Any], replicas_now: list[dict], expected: dict, replicas: int, want_running: bool, planned_hash
) -> tuple[list[dict], list[dict], list[str]]:
    """Drift of each compose replica; ``(to recreate, to start, names running although the worker should be
    stopped)``. ``planned_hash(replica)`` tells whether the replica's config-hash label is the planned one's."""
    recreate: list[dict[str, Any]] = []
    start: list[dict[str, Any]] = []
    should_stop: list[str] = []
    for replica in replicas_now:
        items = spec.worker_drift(replica, {**expected, "running": want_running and replica["number"] <= replicas})
        for item in items:
            add_drift(plan, replica["name"], item)
        if replica["number"] > replicas:
            continue
        if [item for item in items if item["field"] != "running"] or not planned_hash(replica):
            recreate.append(replica)
        elif want_running and not replica.get("running"):
            start.append(replica)
        elif not want_running and replica.get("running"):
            should_stop.append(replica["name"])
    if want_running:
        running_count = sum(1 for item in replicas_now if item.get("running"))
        for item in spec.replica_count_drift(running_count, replicas):
            if not any(d["field"] == "running" for d in plan["drift"]) or item["code"] != codes.CODE_WORKER_NOT_RUNNING:
                add_drift(plan, None, item)
    return recreate, start, should_stop


def compose_plan(
    params: dict[str, Any], check_mode: bool, world: dict[str, Any], into: dict[str, Any] | None = None
) -> dict[str, Any]:
    """The plan of compose mode from what :mod:`worker_apply` read.

    ``world``: ``project`` (the parsed project), ``service``, ``replicas`` (wanted count), ``files``
    (:func:`files_plan`), ``expected`` (:func:`expected_state` with ``planned_networks``), ``command``,
    ``image``, ``image_present``, ``image_command``, ``svc`` (the planned service configuration),
    ``replicas_now`` (inspected compose replicas), ``hand`` (hand-started workers), ``hash_matches``
    (replica id -> whether its config-hash is the planned one), ``qgis_network_missing`` (a name or ``None``).

    The plan's ``apply`` holds what to do: ``recreate``, ``start``, ``excess``, ``remove_hand``, ``up``, ``stop``,
    ``restart``, ``drain`` and ``stuck_candidates`` (running replicas compose replaces: one that never reached the
    database is stopped at once). ``into``: the run's plan so far, extended in place (a new one when ``None``).
    """
    plan = new_plan() if into is None else into
    state = params.get("state") or "started"
    want_running = state != "stopped"
    service, replicas, files = world["service"], world["replicas"], world["files"]
    expected, project = world["expected"], world["project"]
    replicas_now = world["replicas_now"]
    if world.get("qgis_network_missing"):
        qgis_network_missing(plan, project, world["qgis_network_missing"])
    hashes = world.get("hash_matches") or {}
    recreate, start, should_stop = _replica_drift(
        plan, replicas_now, expected, replicas, want_running, lambda r: hashes.get(r["id"], True)
    )
    remove_hand = hand_started_plan(plan, params, world.get("hand") or [], world.get("svc") or {})
    if not world.get("image_present") and want_running and replicas > 0:
        image_missing(plan, world["image"], world["image_command"], check_mode)
    _file_actions(plan, params, files)
    excess = [item for item in replicas_now if item["number"] > replicas]
    missing = max(0, replicas - len([item for item in replicas_now if item["number"] <= replicas]))
    up_needed = bool(want_running and (recreate or start or excess or missing))
    to_stop = list(recreate) + list(excess) + list(remove_hand)
    if excess and recreate:
        # compose removes out-of-date containers first when scaling down: any replica may go.
        to_stop = list(replicas_now) + list(remove_hand)
    if not want_running or state == "restarted":
        to_stop = list(replicas_now) + list(remove_hand)
    plan["apply"] = {
        "recreate": recreate,
        "start": start,
        "excess": excess,
        "missing": missing,
        "remove_hand": remove_hand,
        "up": up_needed,
        "stop": not want_running and any(item.get("running") for item in replicas_now),
        "restart": state == "restarted",
        "drain": to_stop,
        "stuck_candidates": [item for item in [*recreate, *excess] if item.get("running")] if up_needed else [],
        "running_now": [item for item in replicas_now if item.get("running")],
        "should_stop": should_stop,
    }
    plan["details"].update({"service": service, "replicas": replicas})
    before_view = {item["name"]: replica_view(item) for item in replicas_now}
    after_view = {
        f"{project['project_name']}-{service}-{n}": expected_view(expected, world["command"], want_running)
        for n in range(1, replicas + 1)
    }
    if not want_running:
        stopped = {k: v for k, v in expected_view(expected, world["command"], False).items() if k != "running"}
        after_view = {name: {**view, "running": False, **stopped} for name, view in before_view.items()}
    container_diff(plan, before_view, after_view)
    return plan


def compose_actions(plan: dict[str, Any], service: str, up_command: str, stuck: list[dict[str, Any]]) -> None:
    """Add the container actions of a compose plan (after the files' actions), ``stuck`` being the replicas that
    never reached the database (stopped at once, they hold no job)."""
    todo, actions = plan["apply"], plan["actions"]
    for item in todo["remove_hand"]:
        actions.append(f"remove hand-started worker {item['name']} (after drain)")
    if todo["up"]:
        actions += [f"stop {item['name']} now (it never reached the database: no job)" for item in stuck]
        actions += [f"recreate {item['name']} (after drain)" for item in todo["recreate"]]
        actions += [f"start {item['name']}" for item in todo["start"]]
        actions += [f"remove {item['name']} (scale down, after drain)" for item in todo["excess"]]
        if todo["missing"]:
            actions.append(f"create {todo['missing']} replica(s) of {service}")
        actions.append("run: " + up_command)
    if todo["stop"]:
        actions.append(f"stop {', '.join(i['name'] for i in todo['running_now'])} (after drain)")
    if todo["restart"]:
        actions.append(f"restart {service} (after drain)")
    todo["stuck"] = stuck if todo["up"] else []


# ---------------------------------------------------------------------------------------------- standalone mode
def standalone_name(base: str, number: int) -> str:
    """The name of standalone replica ``number`` (1: ``base``, then ``base-2``, ...)."""
    return base if number == 1 else f"{base}-{number}"


def standalone_existing(summaries: list[dict[str, Any]], base: str) -> list[tuple[dict[str, Any], int]]:
    """``(listing entry, replica number)`` of the hand-started containers named ``base`` or ``base-N``."""
    pattern = re.compile(rf"^{re.escape(base)}(?:-(\d+))?$")
    found = []
    for summary in summaries:
        names = [n.lstrip("/") for n in summary.get("Names") or []]
        match = next((pattern.match(n) for n in names if pattern.match(n)), None)
        if match and not (summary.get("Labels") or {}).get("com.docker.compose.container-number"):
            found.append((summary, int(match.group(1) or 1)))
    return found


def spec_hash(desired: dict[str, Any]) -> str:
    """The digest of a standalone worker's wanted configuration (label ``fibreflow.qfieldcloud.spec-hash``)."""
    return hashlib.sha256(json.dumps(desired, sort_keys=True).encode()).hexdigest()[:32]


def standalone_plan(
    params: dict[str, Any], check_mode: bool, world: dict[str, Any], into: dict[str, Any] | None = None
) -> dict[str, Any]:
    """The plan of standalone mode. ``world``: ``existing`` (replica dicts with ``number``), ``replicas``,
    ``expected``, ``desired`` (image, command, env, ...), ``image_present``, ``image_command``, ``base_name``."""
    plan = new_plan() if into is None else into
    state = params.get("state") or "started"
    want_running = state not in ("stopped", "absent")
    existing, replicas, expected = world["existing"], world["replicas"], world["expected"]
    wanted_hash = spec_hash(world["desired"])
    create, recreate, start = [], [], []
    for number in range(1, replicas + 1):
        name = standalone_name(world["base_name"], number)
        replica = next((r for r in existing if r["name"] == name), None)
        if replica is None:
            create.append(name)
            add_drift(
                plan,
                name,
                {"field": "present", "expected": True, "actual": False, "code": codes.CODE_WORKER_NOT_RUNNING},
            )
            continue
        items = spec.worker_drift(replica, {**expected, "running": want_running})
        for item in items:
            add_drift(plan, name, item)
        if [i for i in items if i["field"] != "running"] or replica.get("spec_hash") != wanted_hash:
            recreate.append(replica)
        elif want_running and not replica.get("running"):
            start.append(replica)
    remove = [r for r in existing if r["number"] > replicas]
    for replica in remove:
        add_drift(
            plan,
            replica["name"],
            {"field": "present", "expected": False, "actual": True, "code": codes.CODE_WORKER_REPLICAS_HIGH},
        )
    stop = [r for r in existing if r["number"] <= replicas and r.get("running") and not want_running]
    if want_running and (create or recreate) and not world["image_present"]:
        image_missing(plan, world["desired"]["image"], world["image_command"], check_mode)
    restart = state == "restarted" and not (recreate or create)
    actions = plan["actions"]
    actions += [f"recreate {r['name']} (after drain)" for r in recreate if want_running]
    actions += [f"create {n}" for n in create if want_running]
    actions += [f"start {r['name']}" for r in start]
    actions += [f"remove {r['name']} (after drain)" for r in remove]
    actions += [f"stop {r['name']} (after drain)" for r in stop]
    if restart:
        actions += [f"restart {r['name']} (after drain)" for r in existing if r["number"] <= replicas]
    before_view = {r["name"]: replica_view(r) for r in existing}
    after_view = {}
    if state != "absent":
        for number in range(1, replicas + 1):
            after_view[standalone_name(world["base_name"], number)] = expected_view(
                expected, world["desired"]["command"], want_running
            )
    container_diff(plan, before_view, after_view)
    drain = recreate + remove + stop + (list(existing) if state == "restarted" else [])
    plan["apply"] = {
        "create": create if want_running else [],
        "recreate": recreate,
        "start": start,
        "remove": remove,
        "stop": stop,
        "restart": [r for r in existing if r["number"] <= replicas] if restart else [],
        "drain": drain,
        "running": want_running,
        "spec_hash": wanted_hash,
        "should_stop": [r["name"] for r in stop],
    }
    return plan


# ---------------------------------------------------------------------------------------------- the entry point
def plan(params: dict[str, Any], check_mode: bool, world: dict[str, Any], into: dict[str, Any] | None = None) -> dict:
    """The plan of one run from what :mod:`worker_apply` read (``world``, with ``mode``): :func:`compose_plan` or
    :func:`standalone_plan`, plus the two rules of the worker's own codes. ``into``: the run's plan so far,
    extended in place (a new one when ``None``), so that a failure still returns what was found.

    * ``worker_config_not_persistent``: the owned override is missing, outdated or not last in ``COMPOSE_FILE``.
    * ``worker_should_be_stopped``: a replica runs although the wanted state is ``stopped``.
    """
    plan = new_plan() if into is None else into
    files = world.get("files")
    if files and (files["override_changes"] or files["env_changes"]):
        add_drift(
            plan,
            None,
            {
                "field": "compose_override",
                "expected": f"{files['override_name']} current and last in COMPOSE_FILE",
                "actual": "missing"
                if files["override_before"] is None
                else ("outdated" if files["override_changes"] else "not last in COMPOSE_FILE"),
                "code": codes.CODE_WORKER_CONFIG_NOT_PERSISTENT,
            },
        )
    if world.get("mode", "compose") == "compose":
        compose_plan(params, check_mode, world, plan)
    else:
        standalone_plan(params, check_mode, world, plan)
    for name in plan["apply"]["should_stop"]:
        item = {"field": "running", "expected": False, "actual": True, "code": codes.CODE_WORKER_SHOULD_BE_STOPPED}
        add_drift(plan, name, item)
    return plan
