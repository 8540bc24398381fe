# Copyright (c) 2025, fibreflow
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Discover a QFieldCloud compose project on a Docker host, in one pass, as plain dicts.

Cost of :func:`discover`, whatever the host runs: one ``/version`` call, ONE container listing (the
engine's ``/containers/json?all=1``, which carries names, labels, state, image and networks of every
container, so that compose containers, hand-started workers and QGIS job containers are all found
in the same call), ONE image listing, one inspect per container of the project and per hand-started
worker (job containers need none), and one bounded log read (``tail=N``) per worker container.

Only the named project's containers count: compose containers by the label
``com.docker.compose.project=<project>``; hand-started workers and QGIS job containers only when they
use the project's worker image / network (a second QFieldCloud on the same engine is ignored).

The pure functions (``classify_containers``, ``container_facts``, ``replica_facts``, ``log_signs``)
take the Docker Engine API's JSON as plain dicts and are unit-tested without Docker.
"""

from __future__ import annotations

import fnmatch
import time
from typing import Any, Iterable

from ansible_collections.fibreflow.qfieldcloud.plugins.module_utils import docker_engine as engine_mod
from ansible_collections.fibreflow.qfieldcloud.plugins.module_utils import enforced, logsigns
from ansible_collections.fibreflow.qfieldcloud.plugins.module_utils.docker_engine import (
    LABEL_CONFIG_HASH,
    LABEL_MANAGED,
    LABEL_NUMBER,
    LABEL_ONEOFF,
    LABEL_PROJECT,
    LABEL_SERVICE,
    LABEL_SPEC,
    container_name,
    env_dict,
    split_current_run,
)
from ansible_collections.fibreflow.qfieldcloud.plugins.module_utils.worker_spec import (
    DOCKER_SOCKET,
    WORKER_SERVICE,
    command_words,
    container_dns_names,
    env_keys,
    normalise_image_ref,
    replica_mounts,
)

EXPECTED_SERVICES = ("app", "db", "memcached", "nginx", "ofelia", WORKER_SERVICE)
QGIS_SERVICES = ("qgis3", "qgis4", "qgis")

LOG_EXCERPT_LINES = 20
LOG_LINE_WIDTH = 300


# ---------------------------------------------------------------------------------------------- pure
def _networks_of_list_entry(entry: dict[str, Any]) -> list[str]:
    return sorted(((entry.get("NetworkSettings") or {}).get("Networks") or {}).keys())


def is_compose_container(labels: dict[str, Any]) -> bool:
    """Whether compose created the container.

    Images built by compose carry ``com.docker.compose.project``/``.service`` labels, and a container
    started by hand from such an image inherits them; only compose sets the container number and the
    config hash.
    """
    return LABEL_PROJECT in labels and (LABEL_NUMBER in labels or LABEL_CONFIG_HASH in labels)


def worker_name_patterns(project: str) -> list[str]:
    """Container-name patterns of hand-started workers (``docker run --name qfieldcloud-worker ...``)."""
    patterns = [f"{project}-worker*", f"{project}_worker*"]
    if project != "qfieldcloud":
        patterns.append("qfieldcloud-worker*")
    return patterns


def classify_containers(
    containers: Iterable[dict[str, Any]],
    project: str,
    network: str,
    environment: str | None,
    worker_images: Iterable[str],
    worker_image_ids: Iterable[str] = (),
    qgis_images: Iterable[str] = (),
    job_network: str | None = None,
) -> dict[str, Any]:
    """Sort the engine's container listing into the project's containers.

    :param containers: entries of ``GET /containers/json?all=1``.
    :param job_network: the QGIS job containers' network (``QFIELDCLOUD_DEFAULT_NETWORK``), when not ``network``.
    :returns: ``{"project": {service: [entry, ...]}, "hand_started": [entry], "jobs": [entry],
        "foreign_workers": [entry]}``; ``foreign_workers`` are the worker containers of other compose projects.
    """
    images = {normalise_image_ref(i) for i in worker_images if i}
    image_ids = {i for i in worker_image_ids if i}
    qgis = {normalise_image_ref(i) for i in qgis_images if i}
    job_label = f"{environment}_worker" if environment else None
    patterns = worker_name_patterns(project)
    result: dict[str, Any] = {"project": {}, "hand_started": [], "jobs": [], "foreign_workers": []}
    for entry in containers:
        labels = entry.get("Labels") or {}
        name = container_name(entry)
        nets = _networks_of_list_entry(entry)
        on_network = network in nets
        if is_compose_container(labels):
            if labels.get(LABEL_PROJECT) != project:
                if labels.get(LABEL_SERVICE) == WORKER_SERVICE and entry.get("State") == "running":
                    result["foreign_workers"].append(entry)
                continue  # another compose project
            if labels.get(LABEL_ONEOFF) == "True":
                continue  # `docker compose run` one-off containers are not services
            result["project"].setdefault(labels.get(LABEL_SERVICE) or "", []).append(entry)
            continue
        if labels.get(LABEL_PROJECT) not in (None, project):
            continue  # started by hand from another project's image
        image = normalise_image_ref(entry.get("Image"))
        our_image = image in images or (entry.get("ImageID") in image_ids)
        if "job_id" in labels and str(labels.get("app", "")).endswith("_worker"):
            if job_label and labels.get("app") != job_label:
                continue
            if on_network or (job_network and job_network in nets) or image in qgis:
                result["jobs"].append(entry)
            continue
        command = str(entry.get("Command") or "")
        runs_dequeue = "dequeue" in command_words(command)
        name_matches = any(fnmatch.fnmatch(name, pat) for pat in patterns)
        if (our_image and (runs_dequeue or name_matches)) or (on_network and (runs_dequeue or name_matches)):
            result["hand_started"].append(entry)
    return result


def _state(inspect: dict[str, Any]) -> dict[str, Any]:
    return inspect.get("State") or {}


def container_facts(inspect: dict[str, Any], network: str | None = None) -> dict[str, Any]:
    """Plain facts of one container from its inspect document (no environment, no secrets)."""
    state = _state(inspect)
    config = inspect.get("Config") or {}
    labels = config.get("Labels") or {}
    nets = (inspect.get("NetworkSettings") or {}).get("Networks") or {}
    health = (state.get("Health") or {}).get("Status")
    number = labels.get(LABEL_NUMBER)
    return {
        "name": str(inspect.get("Name") or "").lstrip("/"),
        "id": str(inspect.get("Id") or "")[:12],
        "service": labels.get(LABEL_SERVICE),
        "number": int(number) if str(number or "").isdigit() else None,
        "compose": is_compose_container(labels),
        "state": state.get("Status"),
        "running": bool(state.get("Running")) and not state.get("Restarting"),
        "restarting": bool(state.get("Restarting")),
        "health": health,
        "exit_code": state.get("ExitCode"),
        "restart_count": int(inspect.get("RestartCount") or 0),
        "started_at": state.get("StartedAt"),
        "finished_at": state.get("FinishedAt"),
        "created": inspect.get("Created"),
        "image": config.get("Image"),
        "image_id": inspect.get("Image"),
        "networks": sorted(nets.keys()),
        "ips": {net: (info or {}).get("IPAddress") for net, info in nets.items() if (info or {}).get("IPAddress")},
        "ports": port_bindings(inspect),
    }


def port_bindings(inspect: dict[str, Any]) -> list[dict[str, Any]]:
    """Published ports as ``{port, proto, host_ip, host_port}``, one entry per container port and host port.

    The IPv4 and IPv6 bindings Docker makes for one ``ports:`` entry count once (the IPv4 one is kept).
    """
    bindings = (inspect.get("NetworkSettings") or {}).get("Ports") or {}
    if not any(bindings.values()):
        bindings = (inspect.get("HostConfig") or {}).get("PortBindings") or {}
    result: dict[tuple[int, str, str], dict[str, Any]] = {}
    for spec, binds in sorted(bindings.items()):
        port, _sep, proto = str(spec).partition("/")
        if not port.isdigit():
            continue
        for bind in binds or []:
            host_port = str((bind or {}).get("HostPort") or "")
            if not host_port.isdigit():
                continue
            host_ip = (bind or {}).get("HostIp") or "0.0.0.0"
            key = (int(port), proto or "tcp", host_port)
            if key not in result or result[key]["host_ip"] in ("::", "[::]"):
                result[key] = {
                    "port": int(port),
                    "proto": proto or "tcp",
                    "host_ip": host_ip,
                    "host_port": int(host_port),
                }
    return sorted(result.values(), key=lambda b: (b["port"], b["host_port"]))


def published_ports(inspect: dict[str, Any]) -> list[str]:
    """Host port bindings as ``host_ip:host_port->port/proto`` strings (running or configured)."""
    bindings = (inspect.get("NetworkSettings") or {}).get("Ports") or {}
    if not any(bindings.values()):
        bindings = (inspect.get("HostConfig") or {}).get("PortBindings") or {}
    result = set()
    for port, binds in bindings.items():
        for bind in binds or []:
            host_port = (bind or {}).get("HostPort")
            host_ip = (bind or {}).get("HostIp") or "0.0.0.0"
            result.add(f"{host_ip}:{host_port or '?'}->{port}")
    return sorted(result)


def socket_mount(inspect: dict[str, Any]) -> dict[str, Any]:
    """Whether ``/var/run/docker.sock`` is mounted into the container, and read-write."""
    for mount in inspect.get("Mounts") or []:
        if mount.get("Destination") == DOCKER_SOCKET:
            return {"present": True, "rw": bool(mount.get("RW")), "source": mount.get("Source")}
    return {"present": False, "rw": False, "source": None}


def replica_facts(inspect: dict[str, Any], network: str | None = None, image_user: str | None = None) -> dict[str, Any]:
    """The worker replica dict of ``worker_spec`` (effective configuration of one worker container)."""
    facts = container_facts(inspect, network)
    config = inspect.get("Config") or {}
    host = inspect.get("HostConfig") or {}
    env = env_dict(config.get("Env"))
    security = [str(opt) for opt in host.get("SecurityOpt") or []]
    facts.update(
        {
            "user": config.get("User") or "",
            "image_user": image_user,
            "published_ports": published_ports(inspect),
            "postgres_host": env.get("POSTGRES_HOST"),
            "socket_mount": socket_mount(inspect),
            "command": list(config.get("Cmd") or []),
            "entrypoint": list(config.get("Entrypoint") or []),
            "restart_policy": ((host.get("RestartPolicy") or {}).get("Name")) or "no",
            # Names only, never values: what a hand-started worker lacks is judged from these.
            "env_keys": env_keys(inspect),
            "mounts": replica_mounts(inspect),
            "hardening": {
                "cap_drop": list(host.get("CapDrop") or []),
                "no_new_privileges": any(
                    opt.startswith("no-new-privileges") and not opt.endswith(":false") for opt in security
                ),
                "read_only": bool(host.get("ReadonlyRootfs")),
            },
        }
    )
    return facts


def replica_from_inspect(attrs: dict[str, Any], image_user: str | None = None) -> dict[str, Any]:
    """The replica dict ``qfc_worker`` plans with: :func:`replica_facts` (what ``qfc_sync_facts`` reports) plus the
    full id, compose's configuration hash and container number, this collection's own labels and the project named
    in the container's environment."""
    config = attrs.get("Config") or {}
    labels = config.get("Labels") or {}
    replica = replica_facts(attrs, None, image_user)
    replica.update(
        {
            "id": attrs.get("Id"),
            "cmd": list(config.get("Cmd") or []),
            "status": (attrs.get("State") or {}).get("Status"),
            "config_hash": labels.get(LABEL_CONFIG_HASH),
            "number": int(labels.get(LABEL_NUMBER) or 0),
            "compose_project": labels.get(LABEL_PROJECT),
            "managed_by": labels.get(LABEL_MANAGED),
            "spec_hash": labels.get(LABEL_SPEC),
            "env_project": env_dict(config.get("Env")).get("COMPOSE_PROJECT_NAME"),
        }
    )
    return replica


def clip_line(line: str, width: int = LOG_LINE_WIDTH) -> str:
    """One log line without trailing blanks, cut to ``width`` characters (an ellipsis marks the cut)."""
    line = line.rstrip()
    return line if len(line) <= width else line[: width - 1] + "…"


def log_excerpt(text: str, max_lines: int = LOG_EXCERPT_LINES, width: int = LOG_LINE_WIDTH) -> list[dict[str, Any]]:
    """The last ``max_lines`` lines of a log tail that show a fault sign, in log order, each cut to ``width``.

    Each entry is ``{"signs": [sign, ...], "line": text}`` so that a problem can pick the lines that explain it.
    The lines are not redacted here: the caller redacts everything it returns.
    """
    found = []
    for line in text.splitlines():
        signs = logsigns.fault_signs(line)
        if signs:
            found.append({"signs": signs, "line": clip_line(line, width)})
    return found[-max_lines:] if max_lines > 0 else []


class ImageIndex:
    """The images a read asks about, each looked up by name or id on first use and kept for the read.

    Not a listing of the host's images: ``GET /images/json`` costs the daemon time in proportion to every image it
    holds (0.4 s with about 2,500 images, as a long-lived build host or a test machine collects them), where the few
    names a read asks about cost a few milliseconds each. ``inspect(name)`` returns the image's inspect document
    or ``None`` when there is no such image (:meth:`docker_engine.Engine.image`). A name counts only when it is one
    of the image's tags or digests, or its id: the daemon also resolves a bare prefix of an id, which is not a name.
    """

    def __init__(self, inspect: Any) -> None:
        self._inspect = inspect
        self._found: dict[str, dict[str, Any] | None] = {}

    @property
    def lookups(self) -> int:
        """How many image inspects the read made: one per name asked about."""
        return len(self._found)

    def get(self, name: str | None) -> dict[str, Any] | None:
        """``{id, tags}`` of the image called ``name`` (normalised, see ``normalise_image_ref``), or ``None``."""
        key = normalise_image_ref(name)
        if not key:
            return None
        if key not in self._found:
            self._found[key] = self._info(key, self._inspect(key))
        return self._found[key]

    @staticmethod
    def _info(key: str, doc: dict[str, Any] | None) -> dict[str, Any] | None:
        if not doc:
            return None
        tags = list(doc.get("RepoTags") or [])
        names = {normalise_image_ref(t) for t in [*tags, *(doc.get("RepoDigests") or [])]}
        image_id = doc.get("Id") or ""
        if key not in names and key != image_id and key != image_id.split(":", 1)[-1]:
            return None
        return {"id": image_id or None, "tags": tags}


def image_fact(index: ImageIndex, name: str, variable: str | None = None) -> dict[str, Any]:
    """Presence of one image by name (or id)."""
    info = index.get(name)
    fact: dict[str, Any] = {"name": name, "present": info is not None, "id": info["id"] if info else None}
    if variable:
        fact["variable"] = variable
    return fact


def orphan_jobs(
    jobs: list[dict[str, Any]], job_statuses: dict[str, str] | None, worker_running: bool
) -> list[dict[str, Any]]:
    """QGIS job containers left over: exited, or whose job is no longer queued/started, or no worker runs.

    ``job_statuses`` maps job id -> status (from the database); ``None`` when the database was not read.
    """
    orphans = []
    for job in jobs:
        status = (job_statuses or {}).get(job["job_id"]) if job_statuses is not None else None
        reason = None
        if not job.get("running"):
            reason = f"container {job.get('state')}"
        elif job_statuses is not None and status not in ("queued", "started"):
            reason = f"job is {status or 'unknown to the database'}"
        elif not worker_running:
            reason = "no worker is running"
        if reason:
            orphans.append(dict(job, job_status=status, reason=reason))
    return orphans


def job_container_facts(entry: dict[str, Any]) -> dict[str, Any]:
    """Plain facts of a QGIS job container from its listing entry (no inspect needed)."""
    labels = entry.get("Labels") or {}
    return {
        "name": container_name(entry),
        "id": str(entry.get("Id") or "")[:12],
        "job_id": labels.get("job_id"),
        "project_id": labels.get("project_id"),
        "type": labels.get("type"),
        "image": entry.get("Image"),
        "state": entry.get("State"),
        "running": entry.get("State") == "running",
        "status": entry.get("Status"),
        "created": entry.get("Created"),
    }


# ---------------------------------------------------------------------------------------------- engine
def service_address(containers: dict[str, list[dict[str, Any]]], host: str | None, network: str) -> str | None:
    """Return the IP (on ``network`` preferably) of the running container that ``host`` names.

    ``host`` may be a compose service name (``db``) or a container name of the project; ``None`` when it
    names none of them (an external host, to be used as is).
    """
    if not host:
        return None
    for service, facts in containers.items():
        for fact in facts:
            if host in (service, fact.get("name")) and fact.get("running"):
                ips = fact.get("ips") or {}
                return ips.get(network) or next(iter(ips.values()), None)
    return None


def is_service_name(containers: dict[str, list[dict[str, Any]]], host: str | None) -> bool:
    """Whether ``host`` is a service or container name of the project (running or not)."""
    return bool(host) and any(host == s or any(host == f.get("name") for f in fs) for s, fs in containers.items())


def _inspect(client: Any, container_id: str) -> dict[str, Any] | None:
    """Inspect one container; ``None`` when it vanished between the listing and the inspect."""
    try:
        return client.inspect_container(container_id)
    except engine_mod.NotFound:
        return None


def _service_facts(inspected: dict[str, list[dict[str, Any]]], network: str) -> tuple[dict, dict, dict]:
    """``(services, containers, dns_names)`` of the inspected project containers, by service."""
    services: dict[str, Any] = {}
    containers: dict[str, list[dict[str, Any]]] = {}
    # The names each service's (first running) container answers to on each of its networks: where POSTGRES_HOST
    # resolves, and so which network the worker must be on.
    dns_names: dict[str, dict[str, list[str]]] = {}
    for service, docs in inspected.items():
        live = [d for d in docs if (d.get("State") or {}).get("Running")]
        if live:
            dns_names[service] = container_dns_names(live[0])
    for service in sorted(set(EXPECTED_SERVICES) | set(inspected)):
        docs = inspected.get(service, [])
        facts = [container_facts(d, network) for d in docs]
        containers[service] = facts
        running = [f for f in facts if f["running"]]
        first = (running or facts or [{}])[0]
        services[service] = {
            "present": bool(facts),
            "containers": len(facts),
            "running": len(running),
            "state": first.get("state"),
            "health": first.get("health"),
            "restart_count": sum(f["restart_count"] for f in facts),
            "image": first.get("image"),
            "image_id": first.get("image_id"),
            "started_at": first.get("started_at"),
            "created": first.get("created"),
            "ports": first.get("ports") or [],
        }
    return services, containers, dns_names


def _read_worker_logs(client: Any, reps: list[dict[str, Any]], log_lines: int, log_tail_lines: int) -> None:
    """Add ``log`` (signs and claims), ``log_tail`` and ``log_excerpt`` to each worker replica (one bounded read)."""
    for rep in reps:
        # A live worker's log gives the signs; a stopped one's only says why it stopped (no signs: its old
        # lines must not raise problems about the present).
        live = rep["running"] or rep["restarting"] or rep["restart_count"]
        ever_started = not str(rep.get("started_at") or "0001").startswith("0001")
        if log_lines <= 0 or not (live or ever_started):
            continue
        try:
            raw = client.logs(rep["id"], stdout=True, stderr=True, tail=int(log_lines), timestamps=True)
            raw = engine_mod.decode(raw)
        except Exception as exc:  # a log driver without read support: not a finding
            rep["log"] = {"error": str(exc)}
            continue
        text, current = split_current_run(raw, rep.get("started_at"))
        running_now = bool(rep["running"] and not rep["restarting"])
        # What the replica's processes hold or held (orphan detection): the current one's last claim, and the
        # last claim of each process that ended (earlier runs of this container, or all of a stopped one).
        claims = logsigns.process_claims(raw, rep.get("started_at"), running_now, int(log_lines))
        rep["log"] = dict(logsigns.log_signs(current), **claims) if live else claims
        tail = text.splitlines()[-log_tail_lines:] if log_tail_lines > 0 else []
        rep["log_tail"] = [clip_line(line) for line in tail]
        # The lines that explain a problem come from the current process; from earlier runs only when it has
        # said nothing yet (a crash loop just restarted).
        rep["log_excerpt"] = log_excerpt(current) or log_excerpt(text)


def _image_facts(
    images: ImageIndex,
    replicas: list[dict[str, Any]],
    names: list[str],
    envs: dict[str, dict[str, str]],
    qgis_images: dict[str, str] | None,
    inspected: dict[str, list[dict[str, Any]]],
    project: str,
) -> dict[str, Any]:
    """The worker, app and QGIS images: present or not, by name."""
    # Images: worker (what compose resolved for the service: an existing replica's image reference, else the
    # compose files' `image:`, else the local build names), app, QGIS (by the variables the worker uses).
    resolved = [r["image"] for r in replicas if r.get("image")]
    candidates = resolved[:1] or names
    worker_name = next((n for n in candidates if images.get(n)), candidates[0])
    qgis_vars: dict[str, str] = {}
    for source in (envs.get(WORKER_SERVICE), envs.get("app"), envs.get("hand_started"), qgis_images):
        for key, value in (source or {}).items():
            if key.startswith("QFIELDCLOUD_QGIS") and key.endswith("IMAGE_NAME") and value:
                qgis_vars.setdefault(key, value)
    if not qgis_vars:
        built = [s for s in QGIS_SERVICES if s in inspected]
        for service in built or ["qgis3"]:
            qgis_vars[f"compose service {service}"] = f"{project}-{service}"
    image_facts = {
        "worker": dict(image_fact(images, worker_name), source="container" if resolved else "compose"),
        "app": image_fact(images, f"{project}-app"),
        "qgis": [image_fact(images, name, var) for var, name in sorted(qgis_vars.items())],
    }
    return image_facts


def _foreign_and_job_network(client: Any, groups: dict[str, Any], job_network: str | None) -> tuple[list, dict]:
    """The running workers of other compose projects (with their ``ENVIRONMENT``), and whether the QGIS job
    network exists."""
    foreign = []
    for entry in groups["foreign_workers"]:
        doc = _inspect(client, entry["Id"])
        if doc:
            labels = (doc.get("Config") or {}).get("Labels") or {}
            foreign.append(
                {
                    "name": container_name(entry),
                    "project": labels.get(LABEL_PROJECT),
                    "environment": env_dict((doc.get("Config") or {}).get("Env")).get("ENVIRONMENT"),
                }
            )
    network_facts = {}
    if job_network:
        try:
            listed = client.networks(names=[job_network])
            network_facts = {"name": job_network, "exists": any(n.get("Name") == job_network for n in listed)}
        except Exception as exc:  # not a finding about the stack; the network stays unknown
            network_facts = {"name": job_network, "exists": None, "error": str(exc)}
    return foreign, network_facts


def discover(
    client: Any,
    project: str,
    network: str,
    environment: str | None = None,
    worker_images: Iterable[str] = (),
    qgis_images: dict[str, str] | None = None,
    log_lines: int = 200,
    log_tail_lines: int = 5,
    job_network: str | None = None,
    crash_window: float = 600,
) -> dict[str, Any]:
    """Discover the project on the engine behind ``client`` (a ``docker.APIClient``).

    :param worker_images: the worker image names the compose files resolve to (``image:``), first; the local
        build names ``<project>-worker_wrapper`` and the compose v1 ``<project>_worker_wrapper`` follow. An
        existing compose replica's image reference wins over all of them.
    :param job_network: the QGIS job containers' network; its existence is checked (``job_network``).
    :param crash_window: seconds back in which the ``die`` events of each worker container are counted
        (``recent_deaths``); Docker keeps a bounded number of events, so this is a lower bound.
    :param qgis_images: variable -> QGIS image name (from ``.env``); completed from the containers'
        environment.
    :param log_lines: how many lines at the end of each worker's log are read (0: none).
    :param log_tail_lines: how many of them each replica returns as ``log_tail``; the lines that show a fault
        sign are returned as ``log_excerpt`` (at most :data:`LOG_EXCERPT_LINES`, cut to :data:`LOG_LINE_WIDTH`).
    :returns: ``{daemon, environment, services, containers, worker, images, job_containers, envs,
        project_rows, api_calls}``; ``project_rows`` are the project's containers as :func:`enforced.container_rows`
        gives them.
        ``envs`` (service -> environment dict of the first container) holds secrets: it is for the
        caller's use (database credentials, redaction) and must never be returned as is. ``foreign_workers``
        lists the running workers of other compose projects with their ``ENVIRONMENT`` (not a secret).
    """
    version = client.version()
    daemon = {
        "reachable": True,
        "version": version.get("Version"),
        "api_version": version.get("ApiVersion"),
        "os": version.get("Os"),
    }
    listing = client.containers(all=True)
    images = ImageIndex(engine_mod.Engine(client).image)

    names = [*[n for n in worker_images if n], f"{project}-{WORKER_SERVICE}", f"{project}_{WORKER_SERVICE}"]
    ids = [info["id"] for info in map(images.get, names) if info]
    qgis_names = list((qgis_images or {}).values()) + [f"{project}-{s}" for s in QGIS_SERVICES]
    # A first pass without environment to learn the project's containers (and their ENVIRONMENT).
    groups = classify_containers(listing, project, network, environment, names, ids, qgis_names, job_network)

    inspected: dict[str, list[dict[str, Any]]] = {}
    for service, entries in groups["project"].items():
        docs = [_inspect(client, e["Id"]) for e in entries]
        inspected[service] = [d for d in docs if d]
    envs: dict[str, dict[str, str]] = {}
    for service in (WORKER_SERVICE, "app", "db", "ofelia", "nginx"):
        for doc in inspected.get(service, []):
            envs.setdefault(service, env_dict((doc.get("Config") or {}).get("Env")))
    if environment is None:
        environment = (envs.get(WORKER_SERVICE) or envs.get("app") or {}).get("ENVIRONMENT")
        if environment:
            groups = classify_containers(listing, project, network, environment, names, ids, qgis_names, job_network)

    services, containers, dns_names = _service_facts(inspected, network)

    # Workers: compose replicas and hand-started ones, with their effective configuration and log signs.
    replicas = []
    for doc in sorted(inspected.get(WORKER_SERVICE, []), key=lambda d: str(d.get("Name"))):
        replicas.append(replica_facts(doc, network))
    hand = []
    for entry in groups["hand_started"]:
        doc = _inspect(client, entry["Id"])
        if not doc:
            continue
        envs.setdefault("hand_started", env_dict((doc.get("Config") or {}).get("Env")))
        envs.setdefault(f"hand_started:{container_name(entry)}", env_dict((doc.get("Config") or {}).get("Env")))
        hand.append(replica_facts(doc, network))
    _read_worker_logs(client, replicas + hand, log_lines, log_tail_lines)

    deaths, events_error = recent_deaths(client, [r["id"] for r in replicas + hand], crash_window)
    for rep in replicas + hand:
        rep["recent_deaths"] = deaths.get(rep["id"]) if events_error is None else None

    image_facts = _image_facts(images, replicas, names, envs, qgis_images, inspected, project)

    jobs = [job_container_facts(e) for e in groups["jobs"]]
    foreign, network_facts = _foreign_and_job_network(client, groups, job_network)
    return {
        "daemon": daemon,
        "environment": environment,
        "services": services,
        "containers": containers,
        "worker": {"replicas": replicas, "hand_started": hand},
        "images": image_facts,
        "job_containers": jobs,
        "foreign_workers": foreign,
        "dns_names": dns_names,
        "job_network": network_facts,
        "events_error": events_error,
        "envs": envs,
        # What the record of the last enforcement is compared with (module_utils/enforced.py).
        "project_rows": enforced.container_rows(listing, project),
        "api_calls": {
            "container_lists": 1,
            "image_inspects": images.lookups,
            "inspects": sum(len(v) for v in inspected.values()) + len(hand) + len(foreign),
            "event_reads": 1 if replicas or hand else 0,
            "network_lists": 1 if job_network else 0,
        },
    }


def recent_deaths(client: Any, container_ids: list[str], window: float) -> tuple[dict[str, int], str | None]:
    """Count the ``die`` events of each container (short ids) in the last ``window`` seconds.

    One bounded events read (``until`` now, so it returns at once). Returns ``(counts, error)``; ``error`` is
    the reason when the events could not be read (counts are then unknown, not zero).
    """
    if not container_ids:
        return {}, None
    now = time.time()
    counts: dict[str, int] = {cid: 0 for cid in container_ids}
    try:
        stream = client.events(
            since=int(now - window),
            until=int(now),
            filters={"type": "container", "event": "die"},
            decode=True,
        )
        for event in stream:
            short = str((event.get("Actor") or {}).get("ID") or event.get("id") or "")[:12]
            if short in counts:
                counts[short] += 1
    except Exception as exc:  # an engine without the events endpoint: the counts are unknown
        return {}, str(exc)
    return counts, None
