# Copyright (c) 2025, fibreflow
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The QFieldCloud worker's required configuration and the comparison that yields drift items.

Shared by ``qfc_sync_facts`` (which reports drift as problems) and ``qfc_worker`` (which repairs it).
Everything here works on plain dicts; nothing talks to Docker.

A *replica* dict (as returned by ``stack.py`` for each worker container) carries at least::

    {
        "name": "qfieldcloud-worker_wrapper-1",
        "user": "root",                 # Config.User ('' means the image's user)
        "image_user": "10001",          # the image's Config.User, when known (else None)
        "networks": ["qfieldcloud_default"],
        "published_ports": ["0.0.0.0:5679->5679/tcp"],
        "postgres_host": "db",
        "socket_mount": {"present": True, "rw": True, "source": "/var/run/docker.sock"},
        "command": ["python", "manage.py", "dequeue"],   # entrypoint + cmd as run
        "image": "qfieldcloud-worker_wrapper",           # the image reference the container was created from
        "image_id": "sha256:...",
        "restart_policy": "unless-stopped",
        "running": True,
    }

An *expected* dict (see :func:`expected_worker`) says what the replica must look like.
A drift item is ``{"field", "expected", "actual", "code"}``; ``code`` is a problem code of ``problems.py``.
"""

from __future__ import annotations

import re
from typing import Any

from ansible_collections.fibreflow.qfieldcloud.plugins.module_utils import codes

DOCKER_SOCKET = "/var/run/docker.sock"
RESTART_POLICY = "unless-stopped"
WORKER_SERVICE = "worker_wrapper"
DEQUEUE_WORD = "dequeue"
DEBUG_WORDS = ("debugpy", "pydevd", "ptvsd")

# Drift codes (also problem codes in problems.py).

ROOT_NAMES = ("0", "root")


def worker_image_name(project: str, compose_v1: bool = False) -> str:
    """Return the image name compose builds for the worker service of ``project``.

    Compose v2 names it ``<project>-worker_wrapper``; compose v1 ``<project>_worker_wrapper``.
    """
    sep = "_" if compose_v1 else "-"
    return f"{project}{sep}{WORKER_SERVICE}"


def resolved_image(service_config: dict[str, Any] | None, project: str, service: str = WORKER_SERVICE) -> str:
    """Return the image compose runs for a service: its ``image:`` when given, else the local build's name.

    ``service_config`` is the service's entry of ``docker compose config --format json``. A stack that runs
    upstream's prebuilt images (``image: opengisch/qfieldcloud-worker-wrapper:<tag>``) gets that reference; a
    stack that builds gets ``<project>-<service>`` (compose v2's name for the built image).
    """
    image = str((service_config or {}).get("image") or "").strip()
    return image or f"{project}-{service}"


def is_prebuilt(service_config: dict[str, Any] | None) -> bool:
    """Tell whether compose pulls the service's image rather than building it (``image:`` and no ``build:``)."""
    config = service_config or {}
    return bool(str(config.get("image") or "").strip()) and not config.get("build")


def expected_network(
    default_network: str,
    db_names: dict[str, list[str]] | None,
    app_networks: list[str] | None = None,
    db_host: str | None = None,
) -> str:
    """Return the network the worker must be on: the one where it reaches the database.

    :param default_network: the project's default network (``<project>_default``).
    :param db_names: ``{network: [names the database container answers to on it]}``; ``None`` when the
        database is not a container of the project (an external host): the default network then.
    :param app_networks: the app's networks; when the database is not on the default network, a network it
        shares with the app is chosen.
    :param db_host: the ``POSTGRES_HOST`` in use; networks where it resolves are preferred.

    ``QFIELDCLOUD_DEFAULT_NETWORK`` (the QGIS job containers' network) plays no part here.
    """
    if not db_names:
        return default_network
    candidates = sorted(db_names)
    if db_host:
        resolving = [net for net in candidates if db_host in (db_names.get(net) or [])]
        candidates = resolving or candidates
    if default_network in candidates:
        return default_network
    shared = [net for net in candidates if net in (app_networks or [])]
    return (shared or candidates)[0]


def names_on(db_names: dict[str, list[str]] | None, networks: list[str] | None) -> list[str]:
    """Return the database's names resolvable on ``networks`` (sorted, without duplicates)."""
    found: set[str] = set()
    for net in networks or []:
        found.update((db_names or {}).get(net) or [])
    return sorted(found)


def container_dns_names(inspect: dict[str, Any]) -> dict[str, list[str]]:
    """Return ``{network: [names]}`` under which a container resolves on each of its networks.

    From inspect data: the container name, its compose service (compose adds it as an alias), and the
    endpoint's ``Aliases`` and ``DNSNames`` (Docker 25+).
    """
    name = str(inspect.get("Name") or "").lstrip("/")
    labels = (inspect.get("Config") or {}).get("Labels") or {}
    service = labels.get("com.docker.compose.service")
    result: dict[str, list[str]] = {}
    for net, endpoint in ((inspect.get("NetworkSettings") or {}).get("Networks") or {}).items():
        names = {item for item in [name, service] if item}
        names.update((endpoint or {}).get("Aliases") or [])
        names.update((endpoint or {}).get("DNSNames") or [])
        result[net] = sorted(names)
    return result


def expected_worker(
    project: str,
    network: str | None = None,
    db_host: str | None = None,
    image: str | None = None,
    image_id: str | None = None,
    db_names: dict[str, list[str]] | None = None,
) -> dict[str, Any]:
    """Return the expected worker configuration for a compose project.

    :param project: compose project name (``qfieldcloud``).
    :param network: the network where the worker reaches the database (see :func:`expected_network`);
        ``None`` means ``<project>_default``. Never ``QFIELDCLOUD_DEFAULT_NETWORK`` unless it is that network.
    :param db_host: the ``POSTGRES_HOST`` the worker must use; ``None`` skips that check.
    :param image: the worker image reference (see :func:`resolved_image`); ``None`` means
        ``<project>-worker_wrapper``.
    :param image_id: id of the current worker image; when given, a replica running an
        older build is reported as ``worker_image_outdated``.
    :param db_names: ``{network: [names]}`` of the database container (see :func:`container_dns_names`), or
        ``None`` when the database is external or unknown. When given, a replica is judged by whether its
        ``POSTGRES_HOST`` resolves on one of its own networks.
    """
    return {
        "network": network or f"{project}_default",
        "db_host": db_host,
        "db_names": db_names,
        "image": image or worker_image_name(project),
        "image_id": image_id,
        "restart_policy": RESTART_POLICY,
        "socket": DOCKER_SOCKET,
        "user": "root",
        "published_ports": [],
        "command": "python manage.py dequeue",
        "running": True,
    }


def is_root_user(user: str | None, image_user: str | None = None) -> bool:
    """Tell whether a container ``user`` setting runs the process as root.

    ``0``, ``root``, ``0:0``, ``root:docker`` are root. An empty user means the image's user: root
    when ``image_user`` is empty or root, otherwise not (``None`` = unknown image user: assume root,
    because Docker copies the image's user into the container's config when none is set).
    """
    value = (user or "").strip()
    if not value:
        if image_user is None:
            return True
        value = image_user.strip()
        if not value:
            return True
    name = value.split(":", 1)[0]
    return name in ROOT_NAMES


def normalise_image_ref(ref: str | None) -> str:
    """Return an image reference without a ``:latest`` tag and without the ``docker.io/library/`` prefix."""
    value = (ref or "").strip()
    for prefix in ("docker.io/library/", "docker.io/"):
        if value.startswith(prefix):
            value = value[len(prefix) :]
    if "@" not in value and value.endswith(":latest"):
        value = value[: -len(":latest")]
    return value


def command_words(command: Any) -> list[str]:
    """Return a command (list or string) as a list of words."""
    if command is None:
        return []
    if isinstance(command, str):
        return command.split()
    words: list[str] = []
    for part in command:
        words.extend(str(part).split())
    return words


def is_debug_command(command: Any) -> bool:
    """Tell whether a command runs a debugger (debugpy and friends)."""
    return any(any(dbg in word for dbg in DEBUG_WORDS) for word in command_words(command))


def is_dequeue_command(command: Any) -> bool:
    """Tell whether a command runs ``manage.py dequeue``."""
    return DEQUEUE_WORD in command_words(command)


def _item(field: str, expected: Any, actual: Any, code: str) -> dict[str, Any]:
    return {"field": field, "expected": expected, "actual": actual, "code": code}


def worker_drift(replica: dict[str, Any], expected: dict[str, Any]) -> list[dict[str, Any]]:
    """Compare one worker replica with the expected configuration.

    Returns a list of drift items ``{field, expected, actual, code}`` in a stable order; an empty
    list means the replica is compliant. Hardening (``cap_drop``, ``no-new-privileges``,
    ``read_only``) is never drift: a root process keeps the socket usable with it.
    """
    drift: list[dict[str, Any]] = []

    user = replica.get("user")
    if not is_root_user(user, replica.get("image_user")):
        actual = user if user else f"(image default: {replica.get('image_user')})"
        drift.append(_item("user", "root", actual, codes.CODE_WORKER_SOCKET_DENIED))

    socket = expected.get("socket") or DOCKER_SOCKET
    mount = replica.get("socket_mount") or {}
    if not mount.get("present"):
        drift.append(_item("socket_mount", f"{socket}:{socket}:rw", None, codes.CODE_WORKER_SOCKET_NOT_MOUNTED))
    elif not mount.get("rw", False):
        drift.append(
            _item(
                "socket_mount",
                f"{socket}:{socket}:rw",
                f"{mount.get('source') or socket}:{socket}:ro",
                codes.CODE_WORKER_SOCKET_NOT_MOUNTED,
            )
        )

    network = expected.get("network")
    networks = list(replica.get("networks") or [])
    db_names = expected.get("db_names")
    host = replica.get("postgres_host")
    reachable = names_on(db_names, networks)
    if network and network not in networks and not (db_names and host and host in reachable):
        drift.append(_item("networks", [network], sorted(networks), codes.CODE_WORKER_WRONG_NETWORK))
    elif db_names and host and host in names_on(db_names, list(db_names)) and host not in reachable:
        # The name is the database's, but on none of the worker's own networks: it does not resolve there.
        drift.append(
            _item(
                "postgres_host",
                reachable or [f"a name of the database on {network}"],
                host,
                codes.CODE_WORKER_DB_HOST_WRONG,
            )
        )

    ports = list(replica.get("published_ports") or [])
    if ports:
        drift.append(_item("published_ports", [], sorted(ports), codes.CODE_WORKER_PORT_PUBLISHED))

    command = replica.get("command")
    words = command_words(command)
    if is_debug_command(words):
        drift.append(
            _item(
                "command",
                expected.get("command") or "python manage.py dequeue",
                " ".join(words),
                codes.CODE_WORKER_DEBUG_COMMAND,
            )
        )
    elif not is_dequeue_command(words):
        drift.append(
            _item(
                "command",
                expected.get("command") or "python manage.py dequeue",
                " ".join(words),
                codes.CODE_WORKER_COMMAND_WRONG,
            )
        )

    db_host = expected.get("db_host")
    reported = any(item["field"] == "postgres_host" for item in drift)
    if db_host and replica.get("postgres_host") != db_host and not reported:
        drift.append(_item("postgres_host", db_host, replica.get("postgres_host"), codes.CODE_WORKER_DB_HOST_WRONG))

    policy = expected.get("restart_policy") or RESTART_POLICY
    if (replica.get("restart_policy") or "no") != policy:
        drift.append(
            _item("restart_policy", policy, replica.get("restart_policy") or "no", codes.CODE_WORKER_RESTART_POLICY)
        )

    image = expected.get("image")
    if image:
        names = {normalise_image_ref(image)}
        names.update(normalise_image_ref(alt) for alt in expected.get("image_aliases") or [])
        actual_image = normalise_image_ref(replica.get("image"))
        image_id = expected.get("image_id")
        if actual_image not in names and not (image_id and replica.get("image_id") == image_id):
            drift.append(_item("image", image, replica.get("image"), codes.CODE_WORKER_IMAGE_WRONG))
        elif image_id and replica.get("image_id") and replica.get("image_id") != image_id:
            drift.append(_item("image_id", image_id, replica.get("image_id"), codes.CODE_WORKER_IMAGE_OUTDATED))

    if expected.get("running", True) and not replica.get("running"):
        drift.append(_item("running", True, False, codes.CODE_WORKER_NOT_RUNNING))

    return drift


def replica_count_drift(running: int, expected: int) -> list[dict[str, Any]]:
    """Compare the number of running worker replicas with the configured count.

    Returns ``[]`` when they are equal, else one item with code ``worker_replicas_low`` or
    ``worker_replicas_high``. ``running == 0`` with ``expected > 0`` is ``worker_not_running``.
    """
    if running == expected:
        return []
    if running > expected:
        code = codes.CODE_WORKER_REPLICAS_HIGH
    elif running == 0:
        code = codes.CODE_WORKER_NOT_RUNNING
    else:
        code = codes.CODE_WORKER_REPLICAS_LOW
    return [_item("replicas", expected, running, code)]


# --------------------------------------------------------------------------------------------
# What a worker started outside compose lacks, and what its recreation must keep
# --------------------------------------------------------------------------------------------

TMP_TARGET = "/tmp"
# The environment a worker needs when compose's is unknown (a hand-started worker without any of it fails jobs).
ESSENTIAL_ENV = (
    "ENVIRONMENT",
    "QFIELDCLOUD_DEFAULT_NETWORK",
    "QFIELDCLOUD_WORKER_QFIELDCLOUD_URL",
    "SECRET_KEY",
    "STORAGES",
)
# Labels that belong to compose's own bookkeeping: a container created outside compose must not carry them.
COMPOSE_LABEL_PREFIX = "com.docker.compose."


def replica_mounts(inspect: dict[str, Any]) -> list[dict[str, Any]]:
    """Return a container's mounts as ``{type, source, target, rw}`` (``source`` is a volume's name)."""
    mounts = []
    for mount in inspect.get("Mounts") or []:
        kind = mount.get("Type") or "bind"
        source = mount.get("Name") if kind == "volume" else mount.get("Source")
        target = mount.get("Destination") or ""
        mounts.append({"type": kind, "source": source or "", "target": target, "rw": bool(mount.get("RW"))})
    return mounts


def env_keys(inspect: dict[str, Any]) -> list[str]:
    """Return the names of a container's environment variables (never their values)."""
    keys = {str(item).partition("=")[0] for item in (inspect.get("Config") or {}).get("Env") or []}
    return sorted(key for key in keys if key)


def _volume_target(volume: dict[str, Any]) -> str:
    return str(volume.get("target") or "").rstrip("/") or "/"


def hand_started_gaps(
    replica: dict[str, Any], compose_worker_env_keys: set[str] | None, compose_volumes: list[dict[str, Any]] | None
) -> list[str]:
    """Return what a worker started by hand lacks of what compose gives the worker service.

    :param replica: a replica dict with ``mounts`` (see :func:`replica_mounts`) and ``env_keys`` (see
        :func:`env_keys`).
    :param compose_worker_env_keys: the environment names of the compose worker service (``docker compose
        config``); empty or ``None``: :data:`ESSENTIAL_ENV` is used instead.
    :param compose_volumes: the compose service's ``volumes`` (``{type, source, target, read_only}`` as
        ``docker compose config --format json`` prints them); empty or ``None``: only the ``/tmp`` hand-off is
        required.

    Each gap is ``bind:<target>``, ``volume:<target>`` or ``env:<NAME>``, mounts first in compose's order, then
    the variables sorted. The ``/tmp`` bind is always required: the worker hands ``/tmp/tmpXXXX`` to the Docker
    daemon as a host path, so without it every job it claims fails (``NO_FEEDBACK``). The Docker socket is
    judged by :func:`worker_drift`, not here. An empty list: nothing compose gives is missing.
    """
    mounts = {str(m.get("target") or "").rstrip("/") or "/": m for m in replica.get("mounts") or []}
    volumes = [v for v in compose_volumes or [] if _volume_target(v) != DOCKER_SOCKET]
    if not any(_volume_target(v) == TMP_TARGET for v in volumes):
        volumes.insert(0, {"type": "bind", "source": TMP_TARGET, "target": TMP_TARGET})
    gaps = []
    for volume in volumes:
        target = _volume_target(volume)
        kind = "volume" if volume.get("type") == "volume" else "bind"
        have = mounts.get(target)
        wrong_tmp = (
            target == TMP_TARGET
            and bool(have)
            and (have.get("type"), have.get("source"))
            != (
                "bind",
                volume.get("source"),
            )
        )
        if have is None or wrong_tmp:
            gaps.append(f"{kind}:{target}")
    wanted = set(compose_worker_env_keys or ()) or set(ESSENTIAL_ENV)
    have_env = set(replica.get("env_keys") or [])
    gaps += [f"env:{key}" for key in sorted(wanted - have_env)]
    return gaps


def volume_binds(compose_volumes: list[dict[str, Any]] | None, volume_names: dict[str, str] | None = None) -> list[str]:
    """Return a compose service's ``volumes`` as Docker ``binds`` (``source:target:mode``).

    Named volumes get their Docker name from ``volume_names`` (the top-level ``volumes`` of ``docker compose
    config``: key -> ``name``, ``<project>_<key>`` by default); read-only mounts keep ``ro``. tmpfs and other
    kinds have no bind form and are left out.
    """
    binds = []
    for volume in compose_volumes or []:
        kind = volume.get("type") or "volume"
        if kind not in ("bind", "volume") or not volume.get("source") or not volume.get("target"):
            continue
        source = str(volume["source"])
        if kind == "volume":
            source = (volume_names or {}).get(source) or source
        mode = "ro" if volume.get("read_only") else "rw"
        binds.append(f"{source}:{volume['target']}:{mode}")
    return binds


def standalone_binds(existing: dict[str, Any] | None, compose_binds: list[str] | None = None) -> list[str]:
    """Return the binds of a worker recreated outside compose: everything it had, and what compose gives.

    ``existing`` is the inspect data of the container being replaced (``None`` for a new one). Its bind mounts
    and named volumes are kept with their mode (the custom CA volume stays read-only); ``compose_binds`` (see
    :func:`volume_binds`) adds what the container lacks; the Docker socket (read-write) and the ``/tmp`` hand-off
    are always there. One bind per target, in a stable order.
    """
    by_target: dict[str, str] = {
        DOCKER_SOCKET: f"{DOCKER_SOCKET}:{DOCKER_SOCKET}:rw",
        TMP_TARGET: f"{TMP_TARGET}:{TMP_TARGET}:rw",
    }
    for mount in replica_mounts(existing or {}):
        if mount["type"] not in ("bind", "volume") or not mount["source"] or mount["target"] == DOCKER_SOCKET:
            continue
        by_target[mount["target"]] = f"{mount['source']}:{mount['target']}:{'rw' if mount['rw'] else 'ro'}"
    for bind in compose_binds or []:
        parts = bind.split(":")
        target = parts[1] if len(parts) > 1 else parts[0]
        if target != DOCKER_SOCKET:
            by_target.setdefault(target, bind)
    head = [by_target.pop(DOCKER_SOCKET), by_target.pop(TMP_TARGET)]
    return head + [by_target[target] for target in sorted(by_target)]


def standalone_env(
    existing: dict[str, Any] | None, compose_env: dict[str, Any] | None = None, app_env: dict[str, str] | None = None
) -> dict[str, str]:
    """Return the environment of a worker recreated outside compose.

    Compose's service environment when known (what compose gives the worker), with whatever else the replaced
    container had on top of it kept; else the replaced container's; else the app's. The image's own variables
    (``PATH``, ``HOSTNAME``, ``HOME``) are left to the image.
    """
    had: dict[str, str] = {}
    for item in ((existing or {}).get("Config") or {}).get("Env") or []:
        key, sep, value = str(item).partition("=")
        if sep and key not in ("PATH", "HOSTNAME", "HOME"):
            had[key] = value
    if compose_env:
        env = dict(had)
        env.update({key: "" if value is None else str(value) for key, value in compose_env.items()})
        return env
    if had:
        return had
    return dict(app_env or {})


def standalone_labels(
    existing: dict[str, Any] | None, compose_labels: dict[str, Any] | None = None, own: dict[str, str] | None = None
) -> dict[str, str]:
    """Return the labels of a worker recreated outside compose.

    The replaced container's labels and compose's service labels (``ofelia.enabled: "false"``) are kept, without
    compose's bookkeeping labels (``com.docker.compose.*``: a container with a container number would pass for a
    compose replica); ``own`` (this module's labels) wins.
    """
    labels: dict[str, str] = {}
    had = ((existing or {}).get("Config") or {}).get("Labels") or {}
    for source in (had, compose_labels or {}):
        for key, value in source.items():
            if not str(key).startswith(COMPOSE_LABEL_PREFIX):
                labels[str(key)] = "" if value is None else str(value)
    labels.update(own or {})
    return labels


def duration_seconds(value: Any) -> int | None:
    """Return a compose duration (``15m``, ``1m30s``, ``900s``, ``1h``, a number of seconds) in seconds."""
    if value is None or value == "":
        return None
    if isinstance(value, (int, float)):
        return int(value)
    total = 0.0
    matched = False
    for number, unit in re.findall(r"([0-9]+(?:\.[0-9]+)?)\s*(h|ms|m|s|us|ns)?", str(value)):
        matched = True
        factor = {"h": 3600, "m": 60, "s": 1, "ms": 0.001, "us": 1e-6, "ns": 1e-9}.get(unit or "s", 1)
        total += float(number) * factor
    return int(total) if matched else None


def standalone_stop_timeout(
    existing: dict[str, Any] | None, compose_service: dict[str, Any] | None = None, default: int = 900
) -> int:
    """Return the stop timeout of a recreated worker: compose's ``stop_grace_period``, else the replaced
    container's ``StopTimeout``, else ``default`` (upstream's 15 minutes)."""
    grace = duration_seconds((compose_service or {}).get("stop_grace_period"))
    if grace is not None:
        return grace
    had = ((existing or {}).get("Config") or {}).get("StopTimeout")
    return int(had) if had else default
