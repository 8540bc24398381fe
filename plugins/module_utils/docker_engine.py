# Copyright (c) 2025, fibreflow
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The Docker engine, the one home of everything both modules ask it.

One client factory (:func:`client`), the compose labels, the one Docker
timestamp parser (:func:`docker_time`), the split of a timestamped log into the current process's part
(:func:`split_current_run`), and :class:`Engine`: inspect, logs, networks and container actions of one run,
returning plain dicts. The client (:class:`EngineClient`) speaks the Engine API with the standard library.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import re
import socket
import struct
import urllib.parse
from datetime import datetime, timezone
from typing import Any


class DockerException(Exception):
    """An Engine API call failed; ``status`` is the HTTP status (``None``: the daemon did not answer)."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class NotFound(DockerException):
    """The object does not exist (HTTP 404)."""


# The Engine API is spoken over the daemon's socket with the standard library: no SDK to import (the ``docker``
# package and ``requests`` cost about a third of a module's start), nothing to install on the Docker host.


DEFAULT_DOCKER_HOST = "unix:///var/run/docker.sock"
DEFAULT_API_TIMEOUT = 10

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
    """The one Engine API client of both modules, for ``host`` (see :func:`docker_host`): ``unix://`` paths and
    ``tcp://``/``http://`` addresses. Nothing is sent until the first call."""
    return EngineClient(docker_host(host), float(max(1, timeout)))


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self.socket_path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        sock.connect(self.socket_path)
        self.sock = sock


def convert_filters(filters: dict[str, Any]) -> str:
    """Engine API ``filters``: every value a list of strings (``{"label": "a"}`` is ``{"label": ["a"]}``)."""
    result = {}
    for key, value in filters.items():
        values = value if isinstance(value, (list, tuple)) else [value]
        result[key] = [("true" if item else "false") if isinstance(item, bool) else str(item) for item in values]
    return json.dumps(result)


def demux(data: bytes) -> bytes:
    """The payload of a multiplexed log stream (8-byte frame headers: stream, 0, 0, 0, size), or ``data`` as it
    is when it is a raw stream (a container with a TTY)."""
    out, pos = [], 0
    while pos + 8 <= len(data) and data[pos] in (0, 1, 2) and data[pos + 1 : pos + 4] == b"\0\0\0":
        (size,) = struct.unpack(">I", data[pos + 4 : pos + 8])
        out.append(data[pos + 8 : pos + 8 + size])
        pos += 8 + size
    return b"".join(out) + data[pos:] if out else data


class EngineClient:
    """The Docker Engine API calls the collection makes, over ``http.client``; JSON in, plain dicts out.

    Method names and arguments follow the low-level API of the Docker SDK for Python (``docker.APIClient``).
    """

    def __init__(self, base_url: str, timeout: float) -> None:
        self.base_url = base_url
        self.timeout = timeout
        parsed = urllib.parse.urlsplit(base_url)
        if parsed.scheme == "unix":
            self._target = ("unix", parsed.path or "/var/run/docker.sock")
        elif parsed.scheme in ("tcp", "http"):
            self._target = ("tcp", (parsed.hostname or "localhost", parsed.port or 2375))
        else:
            raise DockerException(f"unsupported docker_host {base_url!r}: give unix:///path or tcp://host:port")

    def _connection(self, timeout: float) -> http.client.HTTPConnection:
        kind, where = self._target
        if kind == "unix":
            return _UnixConnection(where, timeout)
        return http.client.HTTPConnection(where[0], where[1], timeout=timeout)

    def _call(
        self, method: str, path: str, query: dict | None = None, body: Any = None, wait: float = 0, raw: bool = False
    ) -> Any:
        """Send one request; return the decoded JSON (``None`` for an empty answer), else (or with ``raw``) the
        bytes."""
        params = {k: v for k, v in (query or {}).items() if v is not None}
        url = path + ("?" + urllib.parse.urlencode(params) if params else "")
        conn = self._connection(self.timeout + wait)
        try:
            payload = None if body is None else json.dumps(body).encode()
            headers = {"Content-Type": "application/json"} if payload is not None else {}
            conn.request(method, url, body=payload, headers=headers)
            resp = conn.getresponse()
            data = resp.read()
            kind = resp.getheader("Content-Type") or ""
        except (OSError, http.client.HTTPException) as exc:
            raise DockerException(f"cannot reach the Docker daemon at {self.base_url}: {exc}") from exc
        finally:
            conn.close()
        if resp.status >= 400:
            try:
                message = json.loads(data).get("message") or data.decode(errors="replace")
            except ValueError:
                message = data.decode("utf-8", errors="replace")
            error = NotFound if resp.status == 404 else DockerException
            raise error(f"{resp.status} {method} {path}: {message.strip()}", resp.status)
        if "json" in kind and not raw:
            return json.loads(data) if data.strip() else None
        return data

    # reads
    def ping(self) -> bool:
        return self._call("GET", "/_ping") == b"OK"

    def version(self) -> dict[str, Any]:
        return self._call("GET", "/version")

    def containers(self, all: bool = False, filters: dict[str, Any] | None = None) -> list[dict[str, Any]]:
        query = {"all": "1" if all else None, "filters": convert_filters(filters) if filters else None}
        return self._call("GET", "/containers/json", query) or []

    def images(self) -> list[dict[str, Any]]:
        return self._call("GET", "/images/json") or []

    def networks(self, names: list[str] | None = None) -> list[dict[str, Any]]:
        query = {"filters": convert_filters({"name": list(names)})} if names else None
        return self._call("GET", "/networks", query) or []

    def inspect_container(self, container: str) -> dict[str, Any]:
        return self._call("GET", f"/containers/{urllib.parse.quote(container)}/json")

    def inspect_image(self, image: str) -> dict[str, Any]:
        return self._call("GET", f"/images/{urllib.parse.quote(image, safe='/:@')}/json")

    def inspect_network(self, network: str) -> dict[str, Any]:
        return self._call("GET", f"/networks/{urllib.parse.quote(network)}")

    def logs(self, container: str, stdout: bool = True, stderr: bool = True, tail: int | str = "all",
             timestamps: bool = False) -> bytes:  # fmt: skip
        query = {"stdout": int(stdout), "stderr": int(stderr), "tail": tail, "timestamps": int(timestamps)}
        return demux(self._call("GET", f"/containers/{urllib.parse.quote(container)}/logs", query, raw=True) or b"")

    def events(self, since: int, until: int, filters: dict[str, Any] | None = None, decode: bool = True) -> list:
        """The events between ``since`` and ``until`` (epoch seconds; the answer ends at ``until``)."""
        query = {"since": since, "until": until, "filters": convert_filters(filters) if filters else None}
        data = self._call("GET", "/events", query, raw=True)
        return [json.loads(line) for line in (data or b"").splitlines() if line.strip()]

    # writes
    def start(self, container: str) -> None:
        self._call("POST", f"/containers/{urllib.parse.quote(container)}/start")

    def stop(self, container: str, timeout: int = 10) -> None:
        self._call("POST", f"/containers/{urllib.parse.quote(container)}/stop", {"t": int(timeout)}, wait=timeout)

    def restart(self, container: str, timeout: int = 10) -> None:
        self._call("POST", f"/containers/{urllib.parse.quote(container)}/restart", {"t": int(timeout)}, wait=timeout)

    def kill(self, container: str, signal: str | None = None) -> None:
        self._call("POST", f"/containers/{urllib.parse.quote(container)}/kill", {"signal": signal})

    def remove_container(self, container: str, force: bool = False) -> None:
        self._call("DELETE", f"/containers/{urllib.parse.quote(container)}", {"force": "1" if force else None})

    def create_container(self, name: str, body: dict[str, Any]) -> dict[str, Any]:
        return self._call("POST", "/containers/create", {"name": name}, body)


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
