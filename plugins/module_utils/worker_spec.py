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

from typing import Any

DOCKER_SOCKET = "/var/run/docker.sock"
RESTART_POLICY = "unless-stopped"
WORKER_SERVICE = "worker_wrapper"
DEQUEUE_WORD = "dequeue"
DEBUG_WORDS = ("debugpy", "pydevd", "ptvsd")

# Drift codes (also problem codes in problems.py).
CODE_NOT_ROOT = "worker_socket_denied"
CODE_SOCKET_MOUNT = "worker_socket_not_mounted"
CODE_NETWORK = "worker_wrong_network"
CODE_PORTS = "worker_port_published"
CODE_DEBUG = "worker_debug_command"
CODE_COMMAND = "worker_command_wrong"
CODE_DB_HOST = "worker_db_host_wrong"
CODE_RESTART = "worker_restart_policy"
CODE_IMAGE = "worker_image_wrong"
CODE_IMAGE_OUTDATED = "worker_image_outdated"
CODE_NOT_RUNNING = "worker_not_running"
CODE_REPLICAS_LOW = "worker_replicas_low"
CODE_REPLICAS_HIGH = "worker_replicas_high"

ROOT_NAMES = ("0", "root")


def worker_image_name(project: str, compose_v1: bool = False) -> str:
    """Return the image name compose builds for the worker service of ``project``.

    Compose v2 names it ``<project>-worker_wrapper``; compose v1 ``<project>_worker_wrapper``.
    """
    sep = "_" if compose_v1 else "-"
    return f"{project}{sep}{WORKER_SERVICE}"


def expected_worker(
    project: str,
    network: str | None = None,
    db_host: str | None = None,
    image: str | None = None,
    image_id: str | None = None,
) -> dict[str, Any]:
    """Return the expected worker configuration for a compose project.

    :param project: compose project name (``qfieldcloud``).
    :param network: the project network; ``None`` means ``<project>_default``.
    :param db_host: the ``POSTGRES_HOST`` the worker must use; ``None`` skips that check.
    :param image: the worker image reference; ``None`` means ``<project>-worker_wrapper``.
    :param image_id: id of the currently built worker image; when given, a replica running an
        older build is reported as ``worker_image_outdated``.
    """
    return {
        "network": network or f"{project}_default",
        "db_host": db_host,
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
        drift.append(_item("user", "root", actual, CODE_NOT_ROOT))

    socket = expected.get("socket") or DOCKER_SOCKET
    mount = replica.get("socket_mount") or {}
    if not mount.get("present"):
        drift.append(_item("socket_mount", f"{socket}:{socket}:rw", None, CODE_SOCKET_MOUNT))
    elif not mount.get("rw", False):
        drift.append(
            _item(
                "socket_mount",
                f"{socket}:{socket}:rw",
                f"{mount.get('source') or socket}:{socket}:ro",
                CODE_SOCKET_MOUNT,
            )
        )

    network = expected.get("network")
    networks = list(replica.get("networks") or [])
    if network and network not in networks:
        drift.append(_item("networks", [network], sorted(networks), CODE_NETWORK))

    ports = list(replica.get("published_ports") or [])
    if ports:
        drift.append(_item("published_ports", [], sorted(ports), CODE_PORTS))

    command = replica.get("command")
    words = command_words(command)
    if is_debug_command(words):
        drift.append(
            _item("command", expected.get("command") or "python manage.py dequeue", " ".join(words), CODE_DEBUG)
        )
    elif not is_dequeue_command(words):
        drift.append(
            _item("command", expected.get("command") or "python manage.py dequeue", " ".join(words), CODE_COMMAND)
        )

    db_host = expected.get("db_host")
    if db_host and replica.get("postgres_host") != db_host:
        drift.append(_item("postgres_host", db_host, replica.get("postgres_host"), CODE_DB_HOST))

    policy = expected.get("restart_policy") or RESTART_POLICY
    if (replica.get("restart_policy") or "no") != policy:
        drift.append(_item("restart_policy", policy, replica.get("restart_policy") or "no", CODE_RESTART))

    image = expected.get("image")
    if image:
        names = {normalise_image_ref(image)}
        names.update(normalise_image_ref(alt) for alt in expected.get("image_aliases") or [])
        actual_image = normalise_image_ref(replica.get("image"))
        image_id = expected.get("image_id")
        if actual_image not in names and not (image_id and replica.get("image_id") == image_id):
            drift.append(_item("image", image, replica.get("image"), CODE_IMAGE))
        elif image_id and replica.get("image_id") and replica.get("image_id") != image_id:
            drift.append(_item("image_id", image_id, replica.get("image_id"), CODE_IMAGE_OUTDATED))

    if expected.get("running", True) and not replica.get("running"):
        drift.append(_item("running", True, False, CODE_NOT_RUNNING))

    return drift


def replica_count_drift(running: int, expected: int) -> list[dict[str, Any]]:
    """Compare the number of running worker replicas with the configured count.

    Returns ``[]`` when they are equal, else one item with code ``worker_replicas_low`` or
    ``worker_replicas_high``. ``running == 0`` with ``expected > 0`` is ``worker_not_running``.
    """
    if running == expected:
        return []
    if running > expected:
        code = CODE_REPLICAS_HIGH
    elif running == 0:
        code = CODE_NOT_RUNNING
    else:
        code = CODE_REPLICAS_LOW
    return [_item("replicas", expected, running, code)]
