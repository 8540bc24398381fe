# Copyright (c) 2025, fibreflow
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The Docker engine, the one home of everything both modules ask it.

One client factory (:func:`client`), the compose labels, the one Docker
timestamp parser (:func:`docker_time`), the split of a timestamped log into the current process's part
(:func:`split_current_run`), and :class:`Engine`: inspect, logs, networks and container actions of one run,
returning plain dicts. The client (:class:`EngineClient`) is the Docker SDK for Python's low-level
``docker.APIClient`` (5.0 or newer: Debian 12's ``python3-docker`` is 5.0.3), with its errors turned into
:class:`DockerException` and :class:`NotFound`.
"""

from __future__ import annotations

import contextlib
import os
import re
import traceback
from datetime import datetime, timezone
from typing import Any

try:
    import docker
    from docker import errors as docker_errors

    HAS_DOCKER = True
    DOCKER_IMPORT_ERROR = None
except ImportError:  # reported by the modules with missing_required_lib
    HAS_DOCKER = False
    DOCKER_IMPORT_ERROR = traceback.format_exc()


class DockerException(Exception):
    """An Engine API call failed; ``status`` is the HTTP status (``None``: the daemon did not answer)."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class NotFound(DockerException):
    """The object does not exist (HTTP 404)."""


DEFAULT_DOCKER_HOST = "unix:///var/run/docker.sock"
DEFAULT_API_TIMEOUT = 10
# The oldest Engine API the collection speaks (Docker 20.10); "auto" would cost a request per client.
MIN_API_VERSION = "1.41"

LABEL_PROJECT = "com.docker.compose.project"
LABEL_SERVICE = "com.docker.compose.service"
LABEL_NUMBER = "com.docker.compose.container-number"
LABEL_ONEOFF = "com.docker.compose.oneoff"
LABEL_CONFIG_HASH = "com.docker.compose.config-hash"
LABEL_PREFIX = "com.docker.compose."
LABEL_MANAGED = "fibreflow.qfieldcloud.managed-by"
LABEL_SPEC = "fibreflow.qfieldcloud.spec-hash"
LABEL_JOB = "job_id"
MANAGED_BY = "qfc_worker"
# How many lines at the end of a worker's log are read to find what its current process holds.
LOG_TAIL = 2000


def docker_host(value: str | None) -> str:
    """The daemon to talk to: ``value``, else ``DOCKER_HOST``, else :data:`DEFAULT_DOCKER_HOST`."""
    return value or os.environ.get("DOCKER_HOST") or DEFAULT_DOCKER_HOST


def client(host: str | None, timeout: float = DEFAULT_API_TIMEOUT) -> EngineClient:
    """The one Engine API client of both modules, for ``host`` (see :func:`docker_host`). Nothing is sent until
    the first call."""
    return EngineClient(docker_host(host), float(max(1, timeout)))


class EngineClient:
    """The Docker Engine API calls the collection makes, through ``docker.APIClient``; plain dicts out.

    Every method is the SDK's method of the same name; an error of the SDK is raised as :class:`NotFound` (404),
    :class:`DockerException` with the HTTP status (other API errors) or without one (the daemon did not answer).
    """

    def __init__(self, base_url: str, timeout: float) -> None:
        self.base_url = base_url
        self.timeout = timeout
        self._api: Any = None

    @property
    def api(self) -> Any:
        """The SDK client, made on first use."""
        if self._api is None:
            if not HAS_DOCKER:
                raise DockerException(
                    "the Docker SDK for Python is not installed on this host (Debian/Ubuntu: apt-get install"
                    " python3-docker; RHEL-like: dnf install python3-docker; or pip install docker)"
                )
            try:
                self._api = docker.APIClient(base_url=self.base_url, timeout=int(self.timeout), version=MIN_API_VERSION)
            except docker_errors.DockerException as exc:
                raise DockerException(f"docker_host {self.base_url!r}: {exc}") from exc
        return self._api

    def _call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        try:
            return getattr(self.api, method)(*args, **kwargs)
        except docker_errors.NotFound as exc:
            raise NotFound(str(exc), 404) from exc
        except docker_errors.APIError as exc:
            raise DockerException(str(exc), exc.status_code) from exc
        except (docker_errors.DockerException, OSError) as exc:  # requests' errors are OSErrors
            raise DockerException(f"cannot reach the Docker daemon at {self.base_url}: {exc}") from exc

    # reads
    def ping(self) -> bool:
        return bool(self._call("ping"))

    def version(self) -> dict[str, Any]:
        return self._call("version", api_version=False)

    def containers(self, all: bool = False, filters: dict[str, Any] | None = None) -> list[dict[str, Any]]:
        return self._call("containers", all=all, filters=filters) or []

    def images(self) -> list[dict[str, Any]]:
        return self._call("images") or []

    def networks(self, names: list[str] | None = None) -> list[dict[str, Any]]:
        return self._call("networks", names=list(names) if names else None) or []

    def inspect_container(self, container: str) -> dict[str, Any]:
        return self._call("inspect_container", container)

    def inspect_image(self, image: str) -> dict[str, Any]:
        return self._call("inspect_image", image)

    def inspect_network(self, network: str) -> dict[str, Any]:
        return self._call("inspect_network", network)

    def logs(self, container: str, stdout: bool = True, stderr: bool = True, tail: int | str = "all",
             timestamps: bool = False) -> bytes:  # fmt: skip
        return self._call("logs", container, stdout=stdout, stderr=stderr, tail=tail, timestamps=timestamps) or b""

    def events(self, since: int, until: int, filters: dict[str, Any] | None = None, decode: bool = True) -> list:
        """The events between ``since`` and ``until`` (epoch seconds; the answer ends at ``until``)."""
        return list(self._call("events", since=since, until=until, filters=filters, decode=decode))

    # writes
    def start(self, container: str) -> None:
        self._call("start", container)

    def stop(self, container: str, timeout: int = 10) -> None:
        self._call("stop", container, timeout=int(timeout))

    def restart(self, container: str, timeout: int = 10) -> None:
        self._call("restart", container, timeout=int(timeout))

    def kill(self, container: str, signal: str | None = None) -> None:
        self._call("kill", container, signal=signal)

    def remove_container(self, container: str, force: bool = False) -> None:
        self._call("remove_container", container, force=force)

    def create_container(self, name: str, body: dict[str, Any]) -> dict[str, Any]:
        return self._call("create_container_from_config", body, name=name)


_TS = re.compile(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d+))?(Z|[+-]\d\d:\d\d)?$")


def docker_time(value: str | None) -> float | None:
    """Seconds since the epoch of a Docker timestamp (``2026-11-29T08:25:15.918652878Z``), else ``None``.

    ``0001-01-01T00:00:00Z`` (never started), empty and malformed values are ``None``. Nanoseconds are kept to
    the microsecond.
    """
    match = _TS.match(str(value or "").strip())
    if not match or match.group(1).startswith("0001"):
        return None
    fraction = (match.group(2) or "0")[:6].ljust(6, "0")
    zone = match.group(3) or "Z"
    text = f"{match.group(1)}.{fraction}{'+00:00' if zone == 'Z' else zone}"
    try:
        return datetime.fromisoformat(text).astimezone(timezone.utc).timestamp()
    except ValueError:
        return None


def split_current_run(text: str, started_at: str | None) -> tuple[str, str]:
    """Split a log read with ``timestamps=True`` into ``(whole log, current process's log)``, stamps removed.

    The current process's log is the lines stamped at or after ``started_at`` (the container's
    ``State.StartedAt``): the earlier runs of a restarted container must not speak for the present. Lines
    without a stamp go with the line before them; a log without stamps is the current process's whole.
    """
    start = docker_time(started_at)
    whole: list[str] = []
    current: list[str] = []
    in_current = True
    for line in text.splitlines():
        stamp, _sep, rest = line.partition(" ")
        when = docker_time(stamp) if stamp[:1].isdigit() else None
        if when is None:
            rest = line
        elif start is not None:
            in_current = when >= start - 1e-6
        whole.append(rest)
        if in_current:
            current.append(rest)
    return "\n".join(whole), "\n".join(current)


def env_dict(env: Any) -> dict[str, str]:
    """A container environment (``["K=V", ...]`` or a dict) as a dict."""
    if isinstance(env, dict):
        return {str(k): "" if v is None else str(v) for k, v in env.items()}
    result: dict[str, str] = {}
    for item in env or []:
        key, sep, value = str(item).partition("=")
        if sep:
            result[key] = value
    return result


def decode(data: Any) -> str:
    """Log bytes as text."""
    if isinstance(data, bytes):
        return data.decode("utf-8", errors="replace")
    return str(data or "")


def container_name(summary: dict[str, Any]) -> str:
    """The name of a container listing entry (or inspect document), without the leading ``/``."""
    names = summary.get("Names") or []
    if names:
        return str(names[0]).lstrip("/")
    return str(summary.get("Name") or "").lstrip("/")


def network_aliases_of(network_doc: dict[str, Any], inspects: dict[str, dict[str, Any] | None]) -> dict[str, str]:
    """``{name or alias: IPv4}`` on one network from its inspect document and its containers' inspect documents."""
    name = network_doc.get("Name")
    names: dict[str, str] = {}
    for container_id, info in (network_doc.get("Containers") or {}).items():
        address = (info.get("IPv4Address") or "").split("/")[0]
        names[info.get("Name") or container_id] = address
        attrs = inspects.get(container_id) or {}
        endpoint = ((attrs.get("NetworkSettings") or {}).get("Networks") or {}).get(name) or {}
        for alias in endpoint.get("Aliases") or []:
            names.setdefault(alias, address)
    return names


class Engine:
    """The Docker-side reads and writes of one run over one ``APIClient``; plain dicts out.

    Inspect documents are cached per run only by callers that ask for it (:meth:`inspect` reads afresh).
    """

    def __init__(self, api: Any) -> None:
        self.api = api
        self._images: dict[str, dict[str, Any] | None] = {}

    # ---- reads ---------------------------------------------------------------------------------------------
    def containers(self, filters: dict[str, Any] | None = None, stopped: bool = True) -> list[dict[str, Any]]:
        """The engine's container listing (``GET /containers/json``), stopped containers too unless ``stopped`` is
        false."""
        return self.api.containers(all=stopped, filters=filters or {})

    def inspect(self, container_id: str) -> dict[str, Any] | None:
        """Inspect a container; ``None`` when it vanished meanwhile."""
        try:
            return self.api.inspect_container(container_id)
        except NotFound:
            return None

    def image(self, name: str) -> dict[str, Any] | None:
        """An image's inspect document (cached for the run), or ``None`` when it does not exist."""
        if name not in self._images:
            try:
                self._images[name] = self.api.inspect_image(name)
            except NotFound:
                self._images[name] = None
        return self._images[name]

    def image_user(self, image_id: str) -> str | None:
        """The ``USER`` of an image, or ``None``."""
        data = self.image(image_id) if image_id else None
        return ((data or {}).get("Config") or {}).get("User") if data else None

    def logs(self, container_id: str, tail: int = LOG_TAIL) -> str | None:
        """The last ``tail`` lines of a container's log with timestamps; ``None`` when they cannot be read."""
        try:
            raw = self.api.logs(container_id, stdout=True, stderr=True, tail=int(tail), timestamps=True)
        except DockerException:
            return None
        return decode(raw)

    def current_logs(self, container_id: str, started_at: str | None, tail: int = LOG_TAIL) -> str:
        """The log of a container's current process (since ``State.StartedAt``), stamps removed; ``""`` unread."""
        text = self.logs(container_id, tail)
        return split_current_run(text, started_at)[1] if text else ""

    def network_exists(self, network: str) -> bool:
        """Whether a Docker network of that name or id exists."""
        try:
            self.api.inspect_network(network)
        except NotFound:
            return False
        return True

    def network_aliases(self, network: str) -> dict[str, str]:
        """``{name or alias: IPv4}`` of the containers attached to ``network``."""
        try:
            data = self.api.inspect_network(network)
        except NotFound:
            return {}
        inspects = {cid: self.inspect(cid) for cid in data.get("Containers") or {}}
        return network_aliases_of({**data, "Name": data.get("Name") or network}, inspects)

    def first_of_service(self, project: str, service: str) -> dict[str, Any] | None:
        """The inspect document of the first compose container of ``project``/``service``, or ``None``."""
        filters = {"label": [f"{LABEL_PROJECT}={project}", f"{LABEL_SERVICE}={service}", LABEL_NUMBER]}
        for summary in self.containers(filters=filters):
            attrs = self.inspect(summary["Id"])
            if attrs:
                return attrs
        return None

    def service_env(self, project: str, service: str) -> dict[str, str] | None:
        """The environment of the first container of ``project``/``service`` (``app``), or ``None``."""
        attrs = self.first_of_service(project, service)
        return env_dict((attrs.get("Config") or {}).get("Env")) if attrs else None

    def service_networks(self, project: str, service: str) -> list[str]:
        """The networks of the first container of ``project``/``service``."""
        attrs = self.first_of_service(project, service) or {}
        return sorted(((attrs.get("NetworkSettings") or {}).get("Networks") or {}).keys())

    def running_job_containers(self) -> set[str]:
        """The ``job_id`` labels of running QGIS job containers."""
        jobs = set()
        for summary in self.containers(stopped=False, filters={"label": LABEL_JOB, "status": "running"}):
            job = (summary.get("Labels") or {}).get(LABEL_JOB)
            if job:
                jobs.add(job.lower())
        return jobs

    def job_containers(self) -> list[dict[str, Any]]:
        """Every QGIS job container as ``{job_id, running}``."""
        found = []
        for summary in self.containers(filters={"label": LABEL_JOB}):
            job = (summary.get("Labels") or {}).get(LABEL_JOB)
            if job:
                found.append({"job_id": job.lower(), "running": summary.get("State") == "running"})
        return found

    # ---- writes --------------------------------------------------------------------------------------------
    def stop(self, container_id: str, timeout: float) -> None:
        """Stop a container with ``timeout`` seconds of grace; a vanished one is stopped."""
        with contextlib.suppress(NotFound):
            self.api.stop(container_id, timeout=int(timeout))

    def signal(self, container_id: str, signal: str | None = None) -> None:
        """Send a signal (``SIGKILL`` when ``None``); errors (it exited meanwhile) are ignored."""
        with contextlib.suppress(DockerException):
            if signal:
                self.api.kill(container_id, signal=signal)
            else:
                self.api.kill(container_id)

    def remove(self, container_id: str, grace: float | None = None) -> None:
        """Stop (with ``grace`` seconds, when given and it runs) and remove a container; a vanished one is gone."""
        with contextlib.suppress(NotFound):
            attrs = self.inspect(container_id) or {}
            if grace is not None and (attrs.get("State") or {}).get("Running"):
                self.api.stop(container_id, timeout=int(grace))
            self.api.remove_container(container_id, force=True)

    def remove_job_container(self, job: str) -> None:
        """Remove the running QGIS container(s) of ``job``."""
        for summary in self.containers(stopped=False, filters={"label": f"{LABEL_JOB}={job}", "status": "running"}):
            with contextlib.suppress(DockerException):
                self.api.remove_container(summary["Id"], force=True)

    def create_and_start(self, name: str, desired: dict[str, Any], labels: dict[str, str]) -> None:
        """Create and start a standalone worker container from ``desired`` (image, command, env, network, ...)."""
        body = {
            "Image": desired["image"],
            "Cmd": list(desired["command"]),
            "User": desired.get("user") or "root",
            "Env": [f"{key}={value}" for key, value in desired["env"].items()],
            "Labels": labels,
            "StopTimeout": desired["stop_timeout"],
            "HostConfig": {
                "Binds": list(desired["volumes"]),
                "RestartPolicy": {"Name": desired["restart"]},
                "NetworkMode": desired["network"],
            },
            "NetworkingConfig": {"EndpointsConfig": {desired["network"]: {"Aliases": [name]}}},
        }
        created = self.api.create_container(name, body)
        self.api.start(created["Id"])
