# Copyright (c) 2025, fibreflow
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Plan and apply the QFieldCloud worker's required state (the logic behind ``qfc_worker``).

One pass: list the project's worker containers once, inspect them once, compare them with the
required configuration (:mod:`worker_spec`), plan the actions, and (unless in check mode) drain,
write the owned files and run ``docker compose`` (compose mode) or the Docker API (standalone mode).

The caller gets a plain dict: ``changed``, ``drift``, ``actions``, ``diff`` and a few details.
Errors a person must act on raise :class:`WorkerError` with the option they concern.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import socket
import time
import traceback
from typing import Any

from ansible_collections.fibreflow.qfieldcloud.plugins.module_utils import codes, envfile
from ansible_collections.fibreflow.qfieldcloud.plugins.module_utils import compose as compose_mod
from ansible_collections.fibreflow.qfieldcloud.plugins.module_utils import drain as drain_mod
from ansible_collections.fibreflow.qfieldcloud.plugins.module_utils import files as files_mod
from ansible_collections.fibreflow.qfieldcloud.plugins.module_utils import orphans as orphans_mod
from ansible_collections.fibreflow.qfieldcloud.plugins.module_utils import stack as stack_mod
from ansible_collections.fibreflow.qfieldcloud.plugins.module_utils import worker_spec as spec
from ansible_collections.fibreflow.qfieldcloud.plugins.module_utils.redact import Redactor

try:
    import docker
    from docker.errors import DockerException, NotFound

    HAS_DOCKER = True
    DOCKER_IMPORT_TRACEBACK = None
except ImportError:  # pragma: no cover - reported by the module
    HAS_DOCKER = False
    DOCKER_IMPORT_TRACEBACK = traceback.format_exc()

    class DockerException(Exception):  # type: ignore[no-redef]
        """Stand-in so that ``except DockerException`` works without the SDK."""

    class NotFound(DockerException):  # type: ignore[no-redef]
        """Stand-in so that ``except NotFound`` works without the SDK."""


try:
    import psycopg2

    HAS_PSYCOPG2 = True
except ImportError:  # the drain falls back to the Docker-only rule
    HAS_PSYCOPG2 = False

LABEL_PROJECT = "com.docker.compose.project"
LABEL_SERVICE = "com.docker.compose.service"
LABEL_NUMBER = "com.docker.compose.container-number"
LABEL_HASH = "com.docker.compose.config-hash"
LABEL_ONEOFF = "com.docker.compose.oneoff"
LABEL_MANAGED = "fibreflow.qfieldcloud.managed-by"
LABEL_SPEC = "fibreflow.qfieldcloud.spec-hash"
MANAGED_BY = "qfc_worker"
DEFAULT_STOP_TIMEOUT = 900
STUCK_STOP_TIMEOUT = 3
MAX_REPLICAS = 32


class WorkerError(Exception):
    """An error a person acts on. ``option`` names the module option concerned, ``code`` a problem code."""

    def __init__(self, msg: str, option: str | None = None, code: str | None = None, **details: Any) -> None:
        super().__init__(msg)
        self.option = option
        self.code = code
        self.details = details


# --------------------------------------------------------------------------------------------
# Docker helpers
# --------------------------------------------------------------------------------------------


def docker_client(docker_host: str | None, timeout: float) -> Any:
    """Return a Docker SDK client that answered a ping; raise :class:`WorkerError` naming ``docker_host``."""
    base_url = docker_host or os.environ.get("DOCKER_HOST") or "unix:///var/run/docker.sock"
    try:
        client = docker.DockerClient(base_url=base_url, timeout=int(timeout), version="auto")
        client.ping()
    except Exception as exc:
        raise WorkerError(
            f"docker_host: cannot reach the Docker daemon at {base_url!r}: {exc}. Check that dockerd runs and"
            " that docker_host (or DOCKER_HOST) points at it.",
            option="docker_host",
        ) from exc
    return client


def _env_dict(env_list: list[str] | None) -> dict[str, str]:
    result: dict[str, str] = {}
    for item in env_list or []:
        key, sep, value = item.partition("=")
        if sep:
            result[key] = value
    return result


def replica_from_inspect(attrs: dict[str, Any], image_user: str | None = None) -> dict[str, Any]:
    """Return the replica dict of :mod:`worker_spec` for a container's inspect data.

    The effective configuration comes from :func:`stack.replica_facts` (the same facts ``qfc_sync_facts``
    reports); this adds what enforcing needs: the full id, compose's configuration hash and container
    number, this module's own labels and the project named in the container's environment.
    """
    config = attrs.get("Config") or {}
    labels = config.get("Labels") or {}
    env = _env_dict(config.get("Env"))
    replica = stack_mod.replica_facts(attrs, None, image_user)
    replica.update(
        {
            "id": attrs.get("Id"),
            "cmd": list(config.get("Cmd") or []),
            "status": (attrs.get("State") or {}).get("Status"),
            "config_hash": labels.get(LABEL_HASH),
            "number": int(labels.get(LABEL_NUMBER) or 0),
            "compose_project": labels.get(LABEL_PROJECT),
            "managed_by": labels.get(LABEL_MANAGED),
            "spec_hash": labels.get(LABEL_SPEC),
            "env_project": env.get("COMPOSE_PROJECT_NAME"),
            "mounts": spec.replica_mounts(attrs),
            "env_keys": spec.env_keys(attrs),
        }
    )
    return replica


class Engine:
    """The Docker-side reads and writes of one run (one listing, one inspect per container)."""

    def __init__(self, client: Any) -> None:
        self.client = client
        self.api = client.api
        self._image_users: dict[str, str | None] = {}

    def image(self, name: str) -> dict[str, Any] | None:
        """Return an image's inspect data, or ``None`` when it does not exist."""
        try:
            return self.api.inspect_image(name)
        except NotFound:
            return None

    def _image_user(self, image_id: str) -> str | None:
        if image_id not in self._image_users:
            data = self.image(image_id)
            self._image_users[image_id] = ((data or {}).get("Config") or {}).get("User") if data else None
        return self._image_users[image_id]

    def inspect(self, container_id: str) -> dict[str, Any] | None:
        """Inspect a container; ``None`` when it vanished meanwhile."""
        try:
            return self.api.inspect_container(container_id)
        except NotFound:
            return None

    def replicas(self, filters: dict[str, Any]) -> list[dict[str, Any]]:
        """Return replica dicts of all containers (running or not) matching ``filters``."""
        found = []
        for summary in self.api.containers(all=True, filters=filters):
            attrs = self.inspect(summary["Id"])
            if attrs is None:
                continue
            found.append(replica_from_inspect(attrs, self._image_user(attrs.get("Image") or "")))
        return sorted(found, key=lambda item: (item["number"], item["name"]))

    def service_replicas(self, project: str, service: str) -> list[dict[str, Any]]:
        """Return the compose containers of ``project``/``service``.

        Images built by compose carry the project and service labels too, so a container started by hand
        from the worker image has them: only containers with a container number (set by compose on the
        containers it creates) and not one-off (``docker compose run``) count.
        """
        labels = [f"{LABEL_PROJECT}={project}", f"{LABEL_SERVICE}={service}", LABEL_NUMBER, f"{LABEL_ONEOFF}=False"]
        return self.replicas({"label": labels})

    def service_env(self, project: str, service: str) -> dict[str, str] | None:
        """Return the environment of the first container of ``project``/``service`` (``app``), or ``None``."""
        filters = {"label": [f"{LABEL_PROJECT}={project}", f"{LABEL_SERVICE}={service}", LABEL_NUMBER]}
        for summary in self.api.containers(all=True, filters=filters):
            attrs = self.inspect(summary["Id"])
            if attrs:
                return _env_dict((attrs.get("Config") or {}).get("Env"))
        return None

    def network_aliases(self, network: str) -> dict[str, str]:
        """Return ``{name or alias: IPv4}`` of the containers attached to ``network``."""
        try:
            data = self.api.inspect_network(network)
        except NotFound:
            return {}
        names: dict[str, str] = {}
        for container_id, info in (data.get("Containers") or {}).items():
            address = (info.get("IPv4Address") or "").split("/")[0]
            names[info.get("Name") or container_id] = address
            attrs = self.inspect(container_id)
            endpoint = (((attrs or {}).get("NetworkSettings") or {}).get("Networks") or {}).get(network) or {}
            for alias in endpoint.get("Aliases") or []:
                names.setdefault(alias, address)
        return names

    def network_exists(self, network: str) -> bool:
        try:
            self.api.inspect_network(network)
        except NotFound:
            return False
        return True

    def db_names(self, project: str, db_host: str | None) -> dict[str, list[str]] | None:
        """Return ``{network: [names]}`` of the container ``db_host`` names (a container of ``project``, by service,
        container name or alias), or ``None`` when it names none: an external host."""
        if not db_host:
            return None
        summaries = self.api.containers(all=True, filters={"label": f"{LABEL_PROJECT}={project}"})

        def named(summary: dict[str, Any]) -> bool:
            names = [n.lstrip("/") for n in summary.get("Names") or []]
            return db_host in ((summary.get("Labels") or {}).get(LABEL_SERVICE), *names)

        # The service or container name first (one inspect); aliases only when neither matches.
        for summary in sorted(summaries, key=lambda item: not named(item)):
            found = spec.container_dns_names(self.inspect(summary["Id"]) or {})
            if any(db_host in dns for dns in found.values()):
                return found
        return None

    def service_networks(self, project: str, service: str) -> list[str]:
        """Return the networks of the first container of ``project``/``service``."""
        filters = {"label": [f"{LABEL_PROJECT}={project}", f"{LABEL_SERVICE}={service}", LABEL_NUMBER]}
        for summary in self.api.containers(all=True, filters=filters):
            attrs = self.inspect(summary["Id"])
            if attrs:
                return sorted(((attrs.get("NetworkSettings") or {}).get("Networks") or {}).keys())
        return []

    def logs_since_start(self, replica: dict[str, Any]) -> str:
        """Return the log of a replica's current process (bounded tail), split as qfc_sync_facts splits it."""
        try:
            raw = self.api.logs(replica["id"], stdout=True, stderr=True, tail=drain_mod.LOG_TAIL, timestamps=True)
        except DockerException:
            return ""
        text = raw.decode("utf-8", errors="replace") if isinstance(raw, bytes) else str(raw)
        return stack_mod.split_current_run(text, replica.get("started_at"))[1]

    def running_job_containers(self) -> set[str]:
        """Return the ``job_id`` labels of running QGIS job containers."""
        jobs = set()
        for summary in self.api.containers(filters={"label": "job_id", "status": "running"}):
            job = (summary.get("Labels") or {}).get("job_id")
            if job:
                jobs.add(job.lower())
        return jobs


# --------------------------------------------------------------------------------------------
# Database (for the drain)
# --------------------------------------------------------------------------------------------


def _connect(db: dict[str, Any], timeout: float = 5) -> Any:
    """Open a psycopg2 connection to the project's database (raises what psycopg2 raises)."""
    return psycopg2.connect(
        host=db["host"],
        port=int(db.get("port") or 5432),
        dbname=db.get("dbname"),
        user=db.get("user"),
        password=db.get("password"),
        sslmode=db.get("sslmode") or "prefer",
        connect_timeout=int(max(1, timeout)),
        application_name="fibreflow-qfc_worker",
    )


def job_statuses(
    db: dict[str, Any] | None, job_ids: list[str], timeout: float = 5, connect_always: bool = False
) -> dict[str, str] | None:
    """Return ``{job id: status}`` for ``job_ids`` with one query, or ``None`` when the DB cannot be read.

    With no ids it returns ``{}`` without connecting, unless ``connect_always`` asks to know that the database
    answers."""
    if not job_ids and not connect_always:
        return {}
    if not db or not HAS_PSYCOPG2:
        return None
    try:
        conn = _connect(db, timeout)
    except Exception:
        return None
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT id::text, status FROM core_job WHERE id::text = ANY(%s)", (list(job_ids),))
            return {row[0].lower(): row[1] for row in cur.fetchall()}
    except Exception:
        return None
    finally:
        conn.close()


# --------------------------------------------------------------------------------------------
# The run
# --------------------------------------------------------------------------------------------


def validate_replicas(value: Any, source: str) -> int:
    """Return ``value`` as an integer 0..32, else raise a :class:`WorkerError` naming ``replicas``."""
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


class WorkerRun:
    """One ``qfc_worker`` run. ``params`` are the module's parameters; ``check_mode`` changes nothing."""

    def __init__(self, params: dict[str, Any], check_mode: bool = False) -> None:
        self.p = params
        self.check = check_mode
        self.drift: list[dict[str, Any]] = []
        self.actions: list[str] = []
        self.diffs: list[dict[str, Any]] = []
        self.changed = False
        self.warnings: list[str] = []
        self.redactor = Redactor()
        self.details: dict[str, Any] = {}
        self._scope: dict[str, Any] = {}

    # ---- shared ------------------------------------------------------------------------

    def _drift(self, replica: str | None, item: dict[str, Any]) -> None:
        self.drift.append({"replica": replica, **item})

    def _settings(self) -> dict[str, Any]:
        project_dir = self.p.get("project_dir")
        if project_dir:
            if not os.path.isdir(project_dir):
                raise WorkerError(
                    f"project_dir: {project_dir!r} does not exist or is not a directory. Give the directory that"
                    " holds the QFieldCloud docker-compose.yml and .env.",
                    option="project_dir",
                )
            project_dir = os.path.realpath(project_dir)
        settings = envfile.project_settings(project_dir, self.p.get("project_name"))
        return settings

    def _desired_replicas(self, settings: dict[str, Any]) -> int:
        if self.p.get("replicas") is not None:
            return validate_replicas(self.p["replicas"], "the replicas option")
        raw = None
        if settings.get("env_file"):
            raw = envfile.read_env(settings["env_file"]).get("QFIELDCLOUD_WORKER_REPLICAS")
        if raw is None or str(raw).strip() == "":
            return settings.get("worker_replicas", 1)
        return validate_replicas(raw, f"QFIELDCLOUD_WORKER_REPLICAS in {settings['env_file']}")

    def _db_settings(self, engine: Engine, project: str, network: str, app_env: dict[str, str] | None) -> dict:
        env = app_env or {}
        self.redactor.learn_env(env)
        host = self.p.get("db_host") or env.get("POSTGRES_HOST")
        if not host:
            return {}
        address = engine.network_aliases(network).get(host, host)
        return {
            "host": address,
            "port": env.get("POSTGRES_PORT") or 5432,
            "dbname": env.get("POSTGRES_DB"),
            "user": env.get("POSTGRES_USER"),
            "password": env.get("POSTGRES_PASSWORD"),
            "sslmode": env.get("POSTGRES_SSLMODE"),
        }

    def _check_db_host(
        self,
        engine: Engine,
        db_host: str,
        networks: list[str],
        db_names: dict[str, list[str]] | None,
        source: str,
    ) -> None:
        """Make sure ``db_host`` resolves from the worker's own ``networks``; raise naming ``db_host`` otherwise.

        Proof is the database container answering to that name on one of those networks (its service name,
        container name or an alias there, from the compose configuration or the running containers), or an
        external host (an address, or a name this host resolves). A project container's name on other networks
        only is no proof: the worker would not resolve it.
        """
        if db_host in spec.names_on(db_names, networks):
            return
        if any(db_host in engine.network_aliases(net) for net in networks):
            return
        if db_names:
            where = sorted(net for net, names in db_names.items() if db_host in names)
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

    def _qgis_network(self, engine: Engine, settings: dict[str, Any], worker_env: dict[str, Any] | None) -> None:
        """Report a ``QFIELDCLOUD_DEFAULT_NETWORK`` that names a network that does not exist (never create it).

        It is the QGIS job containers' network, never forced onto the worker; a job container cannot start
        without it (``network ... not found``).
        """
        value = str((worker_env or {}).get("QFIELDCLOUD_DEFAULT_NETWORK") or "").strip()
        if not value and settings.get("job_network_source") == "QFIELDCLOUD_DEFAULT_NETWORK":
            value = settings.get("job_network") or ""
        if not value or engine.network_exists(value):
            return
        where = settings.get("env_file") or ".env"
        remedy = f"docker network create {value}, or set QFIELDCLOUD_DEFAULT_NETWORK in {where} to an existing network"
        self._drift(
            None,
            {
                "field": "qgis_network",
                "expected": f"Docker network {value!r} exists (QFIELDCLOUD_DEFAULT_NETWORK)",
                "actual": None,
                "code": codes.CODE_QGIS_NETWORK_MISSING,
                "remedy": remedy,
            },
        )
        self.details["qgis_network_missing"] = {"network": value, "remedy": remedy}
        self.warnings.append(
            f"{codes.CODE_QGIS_NETWORK_MISSING}: QFIELDCLOUD_DEFAULT_NETWORK names {value!r}, which does not"
            f" exist: every QGIS job container fails to start. Not created by this module; {remedy}."
        )

    def _current(self, engine: Engine, replicas: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Re-read ``replicas``: their state now and the job each one's current process last dequeued."""
        current = []
        for replica in replicas:
            attrs = engine.inspect(replica["id"])
            if attrs is None:
                continue
            fresh = replica_from_inspect(attrs)
            fresh["last_job"] = drain_mod.last_dequeued_job(engine.logs_since_start(fresh))
            current.append(fresh)
        return current

    def _busy_probe(self, engine: Engine, replicas: list[dict[str, Any]], db: dict[str, Any]):
        def probe() -> dict[str, str]:
            current = self._current(engine, replicas)
            jobs = [item["last_job"] for item in current if item.get("last_job") and item.get("running")]
            statuses = job_statuses(db, jobs)
            containers = engine.running_job_containers() if statuses is None else None
            return drain_mod.busy_replicas(current, statuses, containers)

        return probe

    def _confirmed_idle(self, engine: Engine, replicas: list[dict[str, Any]], db: dict[str, Any] | None):
        """Return the names among ``replicas`` that the database shows holding no job, or ``None``.

        ``None`` (nothing confirmed) when the database cannot be read, or when a QGIS job container runs a job
        that is in flight in the database and none of ``replicas`` names it as its last: a replica may hold it
        although its log does not say so (or one outside ``replicas`` does; either way, nothing is killed).
        """
        current = self._current(engine, replicas)
        claimed = {item["last_job"] for item in current if item.get("last_job")}
        containers = engine.running_job_containers()
        statuses = job_statuses(db, sorted(claimed | containers), connect_always=True)
        if statuses is None:
            return None
        if any(statuses.get(job) in drain_mod.IN_FLIGHT for job in containers - claimed):
            return None
        busy = drain_mod.busy_replicas(current, statuses)
        return {item["name"] for item in current if item.get("running") and item["name"] not in busy}

    def _stop_idle(self, engine: Engine, replicas: list[dict[str, Any]], db: dict[str, Any] | None) -> None:
        """After the drain: stop the replicas that hold no job before compose (or the stop below) does.

        compose stops a replica with the service's grace period (15 min upstream), which is there for a worker
        finishing its job. An idle worker exits on SIGTERM at once; one that does not within
        ``drain.IDLE_STOP_WAIT`` seconds while the database shows it holds no job is stuck (cut off from its
        network in the middle of a query, say) and is killed. Everything else keeps its grace period.
        """
        by_name = {item["name"]: item for item in replicas if item.get("running")}
        if not by_name:
            return

        def terminate(name: str) -> None:
            attrs = engine.inspect(by_name[name]["id"]) or {}
            signal = (attrs.get("Config") or {}).get("StopSignal") or "SIGTERM"
            with contextlib.suppress(DockerException):
                engine.api.kill(by_name[name]["id"], signal=signal)

        def running(name: str) -> bool:
            attrs = engine.inspect(by_name[name]["id"])
            return bool(attrs and (attrs.get("State") or {}).get("Running"))

        def confirmed_idle(names: list[str]) -> set[str] | None:
            return self._confirmed_idle(engine, [by_name[name] for name in names], db)

        def kill(name: str) -> None:
            with contextlib.suppress(DockerException):
                engine.api.kill(by_name[name]["id"])

        outcome = drain_mod.stop_idle(sorted(by_name), terminate, running, confirmed_idle, kill)
        for name in sorted(name for name, how in outcome.items() if how == "killed"):
            self.actions.append(
                f"killed {name}: it ignored SIGTERM for {drain_mod.IDLE_STOP_WAIT:g}s and the database shows it"
                " holds no job"
            )
        self.details.setdefault("stopped", {}).update(outcome)

    def _worker_claims(self, engine: Engine, project: str) -> dict[str, Any] | None:
        """What the engine shows of the holders of ``project``'s jobs (the Docker half of ``orphans.py``'s rule).

        Every dequeue worker container of the project (compose replicas and hand-started ones, running or not)
        with :func:`orphans.process_claims` of its log, and every QGIS job container (``job_id`` label) with its
        state. ``None`` when a running worker's start or log cannot be read: it may hold any job.
        """
        workers = []
        for summary in engine.api.containers(all=True):
            if "dequeue" not in str(summary.get("Command") or ""):
                continue
            attrs = engine.inspect(summary["Id"])
            if attrs is None:
                continue
            replica = replica_from_inspect(attrs)
            if project not in (replica.get("compose_project"), replica.get("env_project")):
                continue
            if not spec.is_dequeue_command(replica["command"]):
                continue
            # A container waiting to be restarted by its policy has no live process.
            running = bool(replica.get("running")) and not replica.get("restarting")
            start = orphans_mod.docker_time(replica.get("started_at"))
            if running and start is None:
                return None
            try:
                raw = engine.api.logs(replica["id"], stdout=True, stderr=True, tail=drain_mod.LOG_TAIL, timestamps=True)
            except DockerException:
                if running:
                    return None
                continue
            text = raw.decode("utf-8", errors="replace") if isinstance(raw, bytes) else str(raw)
            claims = orphans_mod.process_claims(text, replica.get("started_at"), running, drain_mod.LOG_TAIL)
            workers.append(
                {
                    "id": replica["id"],
                    "name": replica["name"],
                    "running": running,
                    "started_at": replica.get("started_at"),
                    "process_start": start,
                    **claims,
                }
            )
        containers = []
        for summary in engine.api.containers(all=True, filters={"label": "job_id"}):
            job = (summary.get("Labels") or {}).get("job_id")
            if job:
                containers.append({"job_id": job.lower(), "running": summary.get("State") == "running"})
        return {"workers": workers, "job_containers": containers}

    @staticmethod
    def _ended_since(before: dict[str, Any] | None, now: dict[str, Any]) -> tuple[list[str], list[str]]:
        """Evidence that only a look before this run's changes gives: ``(jobs named last by worker processes that
        ran then and have ended since, jobs whose QGIS container ran then and does not now)``. A replaced
        container takes its log with it; a worker that restarts may remove a leftover QGIS container."""
        if not before:
            return [], []
        later = {item["id"]: item for item in now["workers"]}
        ended = []
        for item in before["workers"]:
            if not item.get("running") or not item.get("last_job"):
                continue
            same = later.get(item["id"])
            if same is None or not same["running"] or same.get("started_at") != item.get("started_at"):
                ended.append(item["last_job"])
        running_now = {c["job_id"] for c in now["job_containers"] if c["running"]}
        gone = [c["job_id"] for c in before["job_containers"] if c["running"] and c["job_id"] not in running_now]
        return ended, gone

    def _orphan_read(self, engine: Engine, conn: Any, before: dict[str, Any] | None) -> dict[str, Any] | None:
        """One read of ``orphans.py``'s rule: the database first, then Docker. ``None``: nothing can be proven."""
        jobs, db_now = orphans_mod.read_in_flight(conn)
        claims = self._worker_claims(engine, self._scope["project"])
        if claims is None:
            return None
        ended, gone = self._ended_since(before, claims)
        raw_timeout = str((self._scope.get("env") or {}).get("QFIELDCLOUD_WORKER_TIMEOUT_S") or "").strip()
        timeout = float(raw_timeout) if raw_timeout.isdigit() and int(raw_timeout) > 0 else None
        found = orphans_mod.orphaned(jobs, claims["workers"], claims["job_containers"], ended, gone, timeout, db_now)
        named = {item["last_job"] for item in claims["workers"] if item["running"] and item.get("last_job")}
        in_flight = {job["id"] for job in jobs}
        leftovers = sorted(
            {c["job_id"] for c in claims["job_containers"] if c["running"] and c["job_id"] in in_flight} - named
        )
        # Jobs last named by a worker process that has ended: their QGIS container's result is never read.
        claimant_gone = set(ended)
        for item in claims["workers"]:
            claimant_gone.update(item.get("ended_jobs") or [])
        stale = sorted(job for job in leftovers if job in claimant_gone)
        return {"found": found, "leftovers": leftovers, "stale": stale, "at": time.monotonic()}

    def _retire_stale_leftovers(self, engine: Engine, conn: Any, before: dict[str, Any] | None, first: dict) -> dict:
        """Remove the QGIS containers that still run a job whose worker process is proven gone (on two reads
        ``orphans.CONFIRM_S`` apart): the process that would read their result is dead, so they only hold the
        job, and its project, until they end. Check mode says it would. Returns a fresh read."""
        time.sleep(max(0.0, orphans_mod.CONFIRM_S - (time.monotonic() - first["at"])))
        second = self._orphan_read(engine, conn, before)
        stale = sorted(set(first["stale"]) & set((second or {}).get("stale") or []))
        for job in stale:
            verb = "would remove" if self.check else "removed"
            self.actions.append(f"{verb} the QGIS container of job {job}: the worker process that ran it is gone")
            if self.check:
                continue
            for summary in engine.api.containers(filters={"label": f"job_id={job}", "status": "running"}):
                with contextlib.suppress(DockerException):
                    engine.api.remove_container(summary["Id"], force=True)
        if not stale or self.check:
            return second if second is not None else first
        return self._orphan_read(engine, conn, before) or first

    def _orphaned_jobs(self, engine: Engine, before: dict[str, Any] | None = None) -> None:
        """Recover the jobs whose worker process is gone (see ``orphans.py``); in check mode only report them.

        Runs after the worker set is right (or would be, in check mode), so the running workers' processes are
        the ones that will pick the jobs up again. ``before`` is :meth:`_worker_claims` from before this run's
        changes. When this run restarted or replaced workers and a QGIS container still runs a job no live
        process names, it waits (at most ``orphans.LEFTOVER_WAIT_S``) for the new worker to remove it, so that
        its job is recovered in this run. A job is acted on only when two reads ``orphans.CONFIRM_S`` apart
        agree.
        """
        scope = self._scope
        db = self._db_settings(engine, scope["project"], scope["network"], scope.get("env"))
        if not db or not HAS_PSYCOPG2:
            return
        try:
            conn = _connect(db)
        except Exception:  # the database cannot be read: nothing to prove; qfc_sync_facts reports it
            return
        try:
            first = self._orphan_read(engine, conn, before)
            if first is not None and first["stale"]:
                first = self._retire_stale_leftovers(engine, conn, before, first)
            if first is not None and first["leftovers"] and self.actions and not self.check:
                deadline = time.monotonic() + orphans_mod.LEFTOVER_WAIT_S
                while first is not None and first["leftovers"] and time.monotonic() < deadline:
                    time.sleep(1.0)
                    first = self._orphan_read(engine, conn, before)
            if first is None or not first["found"]:
                return
            time.sleep(max(0.0, orphans_mod.CONFIRM_S - (time.monotonic() - first["at"])))
            second = self._orphan_read(engine, conn, before)
            found = orphans_mod.confirmed(first["found"], second["found"]) if second else []
            if not found:
                return
            for job in found:
                lost = orphans_mod.decide(job) == "fail" and job.get("deltas")
                lost = f"; its {job['deltas']} delta(s) need re-applying" if lost else ""
                self._drift(
                    None,
                    {
                        "field": "job",
                        "expected": f"{job['id']} held by a running worker, or pending",
                        "actual": f"{job['status']} ({job['type']}) of project {job['project_id']} by a worker"
                        f" process that is gone{lost}",
                        "code": codes.CODE_JOBS_ORPHANED,
                    },
                )
            done = found if self.check else orphans_mod.recover(conn, found)
        finally:
            conn.close()
        for job in done:
            if job["action"] == "requeue":
                what = f"put back to pending (project {job['project_id']})"
            else:
                what = f"set failed (it may have run in part; project {job['project_id']}"
                if job.get("type") == "delta_apply":
                    what += f", {job['deltas']} delta(s) {'would be ' if self.check else ''}set error to re-apply"
                what += ")"
            self.actions.append(f"job {job['id']} ({job['status']} {job['type']}, its worker process is gone): {what}")
        self.details["orphaned_jobs"] = [orphans_mod.summary(job) for job in done]

    def _drain(self, engine: Engine, replicas: list[dict[str, Any]], db: dict[str, Any]) -> None:
        running = [item for item in replicas if item.get("running")]
        if not running:
            return
        timeout = float(self.p.get("drain_timeout") or 0)
        busy, waited = drain_mod.wait_until_idle(
            [item["name"] for item in running], self._busy_probe(engine, running, db), timeout
        )
        self.details["drain_waited_s"] = round(self.details.get("drain_waited_s", 0) + waited, 1)
        if busy:
            raise WorkerError(drain_mod.drain_message(busy, timeout), option="drain_timeout", code="drain_timeout")

    def _expected(
        self,
        project: str,
        network: str,
        db_host: str,
        image: str,
        image_id: str | None,
        db_names: dict[str, list[str]] | None = None,
    ) -> dict:
        expected = spec.expected_worker(
            project, network=network, db_host=db_host, image=image, image_id=image_id, db_names=db_names
        )
        expected["running"] = self.p.get("state") != "stopped"
        return expected

    def _replica_view(self, replica: dict[str, Any]) -> dict[str, Any]:
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

    def _expected_view(self, expected: dict[str, Any], command: list[str], running: bool) -> dict[str, Any]:
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

    def _image_missing(self, image: str, command: str) -> None:
        """Report the missing worker image with the command that provides it (``docker compose pull`` for a
        prebuilt image, ``docker compose build`` for a local build); outside check mode, fail. Never builds."""
        pull = " pull " in f" {command} "
        key = "pull_command" if pull else "build_command"
        self._drift(
            None, {"field": "image", "expected": image, "actual": None, "code": codes.CODE_WORKER_IMAGE_MISSING}
        )
        self.details.update({"image_missing": True, key: command, "image_command": command})
        if not self.check:
            raise WorkerError(
                f"{codes.CODE_WORKER_IMAGE_MISSING}: the worker image {image!r} does not exist;"
                f" {'pull' if pull else 'build'} it first: {command}",
                option="image",
                code=codes.CODE_WORKER_IMAGE_MISSING,
                drift=self.drift,
                **{key: command, "image_command": command},
            )

    def _container_diff(self, before: dict[str, Any], after: dict[str, Any]) -> None:
        if before != after:
            self.diffs.append(
                {
                    "before_header": "worker containers (before)",
                    "after_header": "worker containers (after)",
                    "before": json.dumps(before, indent=2, sort_keys=True) + "\n",
                    "after": json.dumps(after, indent=2, sort_keys=True) + "\n",
                }
            )

    def result(self) -> dict[str, Any]:
        result = {
            "changed": self.changed,
            "drift": self.drift,
            "actions": self.actions,
            "diff": self.diffs,
            "warnings": self.warnings,
            **self.details,
        }
        return self.redactor.value(result)

    # ---- entry point ---------------------------------------------------------------------

    def run(self) -> dict[str, Any]:
        state = self.p.get("state") or "started"
        timeout = float(self.p.get("timeout") or 60)
        settings = self._settings()
        project = settings["project_name"]
        self.details["project_name"] = project
        engine = Engine(docker_client(self.p.get("docker_host"), timeout))
        mode = self._mode(engine, settings)
        self.details["mode"] = mode
        if state == "absent" and mode != "standalone":
            raise WorkerError(
                "state: 'absent' is only for mode=standalone (hand-started workers); for the compose service use"
                " replicas: 0 or state: stopped.",
                option="state",
            )
        lock = compose_mod.ProjectLock(
            compose_mod.lock_path(project, settings.get("project_dir")), float(self.p.get("lock_timeout") or 0)
        )
        try:
            with lock:
                self.details["lock_waited_s"] = round(lock.waited, 1)
                recover = (self.p.get("orphaned_jobs") or "recover") != "keep"
                # What the workers held before this run changes them: a replaced container takes its log along.
                before = self._worker_claims(engine, project) if recover and not self.check else None
                if mode == "compose":
                    self._run_compose(engine, settings, state, timeout)
                else:
                    self._run_standalone(engine, settings, state, timeout)
                if self._scope.get("running") and recover:
                    self._orphaned_jobs(engine, before)
        except compose_mod.LockTimeout as exc:
            raise WorkerError(str(exc), option="lock_timeout") from None
        self.changed = bool(self.actions)
        return self.result()

    def _mode(self, engine: Engine, settings: dict[str, Any]) -> str:
        mode = self.p.get("mode") or "auto"
        if mode != "auto":
            if mode == "compose" and not settings.get("project_dir"):
                raise WorkerError("project_dir: required with mode=compose.", option="project_dir")
            return mode
        if settings.get("project_dir"):
            # A project directory means a compose project; when it holds no compose file, compose mode says so
            # (naming project_dir) instead of silently managing a standalone container.
            return "compose"
        if engine.service_replicas(settings["project_name"], self.p.get("service") or spec.WORKER_SERVICE):
            raise WorkerError(
                "project_dir: the compose project runs a worker service but project_dir was not given; the fix must"
                " go into the project's compose files. Give project_dir (or mode=standalone).",
                option="project_dir",
            )
        return "standalone"

    # ---- compose mode ----------------------------------------------------------------------

    def _run_compose(self, engine: Engine, settings: dict[str, Any], state: str, timeout: float) -> None:
        project_dir = settings["project_dir"]
        project = settings["project_name"]
        service = self.p.get("service") or spec.WORKER_SERVICE
        cli = compose_mod.ComposeCli(project_dir, self.p.get("docker_host"), timeout=max(timeout, 120))
        override_name = self.p.get("override_file") or compose_mod.OVERRIDE_FILE
        if os.sep in override_name or override_name in (".", ".."):
            raise WorkerError(
                f"override_file: give a file name inside project_dir, not a path ({override_name!r}).",
                option="override_file",
            )
        override_path = os.path.join(project_dir, override_name)
        env_path = os.path.join(project_dir, ".env")
        if not settings.get("compose_files"):
            raise WorkerError(
                f"project_dir: no compose file in {project_dir!r} (COMPOSE_FILE unset and no docker-compose.yml).",
                option="project_dir",
            )

        try:
            current = cli.config()
        except compose_mod.ComposeError as exc:
            raise WorkerError(
                f"project_dir: the compose files of {project_dir!r} are invalid: {self.redactor.text(str(exc))}",
                option="project_dir",
            ) from None
        services = sorted((current.get("services") or {}).keys())
        if service not in services:
            raise WorkerError(
                f"service: {service!r} is not a service of the compose project in {project_dir!r}"
                f" (services: {', '.join(services)}).",
                option="service",
            )

        replicas = self._desired_replicas(settings)
        app_env = engine.service_env(project, "app")
        db_host = self.p.get("db_host")
        source = "the db_host option"
        if not db_host:
            db_host = (app_env or {}).get("POSTGRES_HOST") or (settings.get("postgres") or {}).get("host") or "db"
            source = "POSTGRES_HOST of the app container" if app_env else "POSTGRES_HOST in .env"
        db_names = self._compose_db_names(engine, current, project, db_host)
        network = self.p.get("network")
        if not network:
            if "app" in services:
                app_networks = [
                    compose_mod.network_name(current, key) for key in compose_mod.service_networks(current, "app")
                ]
            else:
                app_networks = engine.service_networks(project, "app")
            network = spec.expected_network(settings["default_network"], db_names, app_networks, db_host)
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
        # A worker on extra networks is fine: the override adds the wanted one and keeps those the project's own
        # files give the worker.
        base = self._base_config(cli, settings, current, override_path)
        keep = [
            key
            for key in compose_mod.service_networks(base, service)
            if compose_mod.network_name(base, key) != network and key != compose_mod.EXTERNAL_NETWORK_KEY
        ]
        planned_networks = [network, *sorted(compose_mod.network_name(base, key) for key in keep)]
        self._check_db_host(engine, db_host, planned_networks, db_names, source)
        command = self._dequeue_command(cli, settings, service)

        # Files: planned content.
        override_before = compose_mod.read_text(override_path)
        override_after = compose_mod.render_override(
            service,
            command,
            db_host,
            replicas,
            network_key=network_key or "default",
            external_network=external,
            keep_network_keys=keep,
        )
        env_before = compose_mod.read_text(env_path)
        env_after, cf_before, cf_after = compose_mod.planned_env_text(
            env_before or "", project_dir, override_name, settings.get("path_separator")
        )
        override_changes = override_before != override_after
        env_changes = env_before is None or env_after != env_before

        # The configuration compose will apply, computed without touching a file.
        sep = settings.get("path_separator") or ":"
        files = [("-" if name == override_name else name) for name in cf_after.split(sep)]
        try:
            planned = cli.config(files=files, stdin=override_after)
            planned_hash = cli.config_hash(service, files=files, stdin=override_after)
        except compose_mod.ComposeError as exc:
            raise WorkerError(
                f"override_file: the planned override does not combine with the project's compose files:"
                f" {self.redactor.text(str(exc))}",
                option="override_file",
            ) from None
        svc = (planned.get("services") or {}).get(service) or {}
        # What compose resolves for the service: a prebuilt image (image:) or the local build's name. The override
        # never names an image or a build, so a repair never swaps one for the other.
        image = self.p.get("image") or spec.resolved_image(svc, project, service)
        image_data = engine.image(image)
        image_id = (image_data or {}).get("Id")
        self.details.update(
            {
                "service": service,
                "replicas": replicas,
                "network": network,
                "db_host": db_host,
                "image": image,
                "override_file": override_path,
                "compose_file": cf_after,
            }
        )

        # Containers.
        replicas_now = engine.service_replicas(project, service)
        expected = self._expected(project, network, db_host, image, image_id, db_names)
        expected["planned_networks"] = planned_networks
        self._qgis_network(engine, settings, svc.get("environment"))
        want_running = state != "stopped"
        recreate: list[dict[str, Any]] = []
        start: list[dict[str, Any]] = []
        for replica in replicas_now:
            items = spec.worker_drift(replica, {**expected, "running": want_running and replica["number"] <= replicas})
            for item in items:
                self._drift(replica["name"], item)
            config_items = [item for item in items if item["field"] != "running"]
            if replica["number"] > replicas:
                continue
            if config_items or replica.get("config_hash") != planned_hash:
                recreate.append(replica)
            elif want_running and not replica.get("running"):
                start.append(replica)
            elif not want_running and replica.get("running"):
                self._drift(
                    replica["name"],
                    {
                        "field": "running",
                        "expected": False,
                        "actual": True,
                        "code": codes.CODE_WORKER_SHOULD_BE_STOPPED,
                    },
                )
        running_count = sum(1 for item in replicas_now if item.get("running"))
        if want_running:
            for item in spec.replica_count_drift(running_count, replicas):
                if (
                    not any(d["field"] == "running" for d in self.drift)
                    or item["code"] != codes.CODE_WORKER_NOT_RUNNING
                ):
                    self._drift(None, item)
        if override_changes or env_changes:
            self._drift(
                None,
                {
                    "field": "compose_override",
                    "expected": f"{override_name} current and last in COMPOSE_FILE",
                    "actual": "missing"
                    if override_before is None
                    else ("outdated" if override_changes else "not last in COMPOSE_FILE"),
                    "code": codes.CODE_WORKER_CONFIG_NOT_PERSISTENT,
                },
            )

        hand = self._hand_started(engine, project, image, image_id)
        env_keys = set((svc.get("environment") or {}).keys())
        for item in hand:
            item["gaps"] = spec.hand_started_gaps(item, env_keys, svc.get("volumes") or [])
        self.details["hand_started"] = [item["name"] for item in hand]
        if hand:
            self.details["hand_started_gaps"] = {item["name"]: item["gaps"] for item in hand}
        if hand and not self.p.get("remove_hand_started"):
            lacking = "; ".join(
                f"{item['name']} lacks {', '.join(item['gaps'][:6])}{' ...' if len(item['gaps']) > 6 else ''}"
                for item in hand
                if item["gaps"]
            )
            self.warnings.append(
                f"hand-started worker(s) beside the compose service: {', '.join(i['name'] for i in hand)}"
                + (f" ({lacking}: the jobs it claims fail)" if lacking else "")
                + "; set remove_hand_started: true to retire them (drained first)"
            )
        remove_hand = hand if self.p.get("remove_hand_started") else []
        for item in remove_hand:
            self._drift(
                item["name"],
                {
                    "field": "hand_started",
                    "expected": "absent",
                    "actual": item.get("status"),
                    "code": codes.CODE_WORKER_HAND_STARTED,
                    "gaps": item["gaps"],
                },
            )

        # Plan.
        if image_data is None and want_running and replicas > 0:
            self._image_missing(image, cli.image_command(service, svc))
        if override_changes:
            self.actions.append(f"write {override_path}")
            self.diffs.append(
                {
                    "before_header": override_path,
                    "after_header": override_path,
                    "before": override_before or "",
                    "after": override_after,
                }
            )
        if env_changes:
            self.actions.append(
                f"set COMPOSE_FILE in {env_path}"
                + (" (backup kept)" if self.p.get("backup", True) and env_before is not None else "")
            )
            self.diffs.append(
                {
                    "before_header": f"{env_path} (COMPOSE_FILE)",
                    "after_header": f"{env_path} (COMPOSE_FILE)",
                    "before": "" if cf_before is None else f"COMPOSE_FILE={cf_before}\n",
                    "after": f"COMPOSE_FILE={cf_after}\n",
                }
            )
        excess = [item for item in replicas_now if item["number"] > replicas]
        missing = max(0, replicas - len([item for item in replicas_now if item["number"] <= replicas]))
        up_needed = want_running and (recreate or start or excess or missing)
        for item in remove_hand:
            self.actions.append(f"remove hand-started worker {item['name']} (after drain)")
        stuck = [
            item
            for item in [*recreate, *excess]
            if item.get("running") and drain_mod.never_reached_database(engine.logs_since_start(item))
        ]
        if up_needed:
            self.actions += [f"stop {item['name']} now (it never reached the database: no job)" for item in stuck]
            self.actions += [f"recreate {item['name']} (after drain)" for item in recreate]
            self.actions += [f"start {item['name']}" for item in start]
            self.actions += [f"remove {item['name']} (scale down, after drain)" for item in excess]
            if missing:
                self.actions.append(f"create {missing} replica(s) of {service}")
            self.actions.append(
                "run: " + cli.shell_command("up", "-d", "--no-deps", "--scale", f"{service}={replicas}", service)
            )
        if not want_running:
            running = [item for item in replicas_now if item.get("running")]
            if running:
                self.actions.append(f"stop {', '.join(i['name'] for i in running)} (after drain)")
        if state == "restarted":
            self.actions.append(f"restart {service} (after drain)")

        before_view = {item["name"]: self._replica_view(item) for item in replicas_now}
        after_view = {}
        for number in range(1, replicas + 1):
            name = f"{project}-{service}-{number}"
            after_view[name] = self._expected_view(expected, command, want_running)
        if not want_running:
            after_view = {name: {**view, "running": False} for name, view in before_view.items()}
            for name in after_view:
                after_view[name].update(
                    {k: v for k, v in self._expected_view(expected, command, False).items() if k != "running"}
                )
        self._container_diff(before_view, after_view)
        self._scope = {"project": project, "network": network, "env": app_env, "running": want_running}

        if self.check or not self.actions:
            return

        # Apply: drain first (nothing changes if it times out), then files, then compose.
        db = self._db_settings(engine, project, network, app_env)
        to_stop = list(recreate) + list(excess) + list(remove_hand)
        if excess and recreate:
            # compose removes out-of-date containers first when scaling down: any replica may go.
            to_stop = list(replicas_now) + list(remove_hand)
        if not want_running or state == "restarted":
            to_stop = list(replicas_now) + list(remove_hand)
        self._drain(engine, to_stop, db)
        if env_changes and env_before is not None and self.p.get("backup", True):
            self.details["backup_file"] = compose_mod.backup_file(env_path)
        if override_changes:
            files_mod.atomic_write(override_path, override_after, mode=0o644)
        if env_changes:
            files_mod.atomic_write(env_path, env_after, mode=0o600)
        for item in stuck if up_needed else []:
            with contextlib.suppress(NotFound):
                engine.api.stop(item["id"], timeout=STUCK_STOP_TIMEOUT)
        stuck_ids = {item["id"] for item in stuck} if up_needed else set()
        self._stop_idle(engine, [item for item in to_stop if item["id"] not in stuck_ids], db)
        for item in remove_hand:
            self._remove_container(engine, item)
        up_timeout = max(timeout, 60) + DEFAULT_STOP_TIMEOUT
        try:
            if up_needed:
                cli.up(service, replicas, timeout=up_timeout)
            if not want_running and any(item.get("running") for item in replicas_now):
                cli.stop(service, timeout=up_timeout)
            if state == "restarted":
                cli.run("restart", service, timeout=up_timeout)
        except compose_mod.ComposeError as exc:
            raise WorkerError(f"docker compose failed: {self.redactor.text(str(exc))}", option="project_dir") from None
        if want_running:
            self._verify(engine, project, service, replicas, expected, cli, db, up_timeout)

    def _verify(self, engine, project, service, replicas, expected, cli, db, up_timeout) -> None:
        """After ``up``: every replica must comply; one forced recreate if compose left drift behind."""
        for attempt in range(2):
            now = engine.service_replicas(project, service)
            left = []
            for replica in now:
                items = [i for i in spec.worker_drift(replica, expected) if i["field"] != "running"]
                if items:
                    left.append((replica, items))
            if not left and len(now) == replicas:
                return
            if attempt == 0 and left:
                self._drain(engine, [pair[0] for pair in left], db)
                cli.run(
                    "up",
                    "-d",
                    "--no-deps",
                    "--no-build",
                    "--pull",
                    "never",
                    "--force-recreate",
                    "--scale",
                    f"{service}={replicas}",
                    service,
                    timeout=up_timeout,
                )
                self.actions.append(f"force-recreate {service} (compose kept a drifted container)")
                continue
        raise WorkerError(
            f"the worker still differs from the required state after docker compose up: {left or len(now)}",
            option="project_dir",
        )

    def _compose_db_names(
        self, engine: Engine, config: dict[str, Any], project: str, db_host: str
    ) -> dict[str, list[str]] | None:
        """Return ``{network: [names]}`` of the database service ``db_host`` names (compose configuration, plus its
        container's own names when it exists), or ``None`` when ``db_host`` is not a service of the project."""
        db_service = compose_mod.service_for_host(config, db_host)
        if not db_service:
            return None
        names = compose_mod.service_dns_names(config, db_service)
        for net, more in (engine.db_names(project, db_host) or {}).items():
            if net in names:
                names[net] = sorted(set(names[net]) | set(more))
        return names

    def _base_config(
        self, cli: compose_mod.ComposeCli, settings: dict[str, Any], current: dict[str, Any], override_path: str
    ) -> dict[str, Any]:
        """Return the project's configuration without the owned override (``current`` when it is not in use)."""
        files = settings.get("compose_files") or []
        if os.path.realpath(override_path) not in [os.path.realpath(path) for path in files]:
            return current
        others = [path for path in files if os.path.realpath(path) != os.path.realpath(override_path)]
        try:
            return cli.config(files=others)
        except compose_mod.ComposeError:
            return current

    def _dequeue_command(self, cli: compose_mod.ComposeCli, settings: dict[str, Any], service: str) -> list[str]:
        """Return the dequeue command of the project's base compose file (no debugger), else the default."""
        if self.p.get("command"):
            return list(self.p["command"])
        files = settings.get("compose_files") or []
        if files:
            try:
                base = cli.config(files=[files[0]])
                command = ((base.get("services") or {}).get(service) or {}).get("command")
            except compose_mod.ComposeError:
                command = None
            words = spec.command_words(command)
            if words and spec.is_dequeue_command(words) and not spec.is_debug_command(words):
                return words
        return list(compose_mod.DEFAULT_COMMAND)

    def _hand_started(self, engine: Engine, project: str, image: str, image_id: str | None) -> list[dict]:
        """Return worker containers of this project that compose does not manage (started by hand)."""
        name = self.p.get("container_name") or "qfieldcloud-worker"
        found = []
        for summary in engine.api.containers(all=True):
            labels = summary.get("Labels") or {}
            if labels.get(LABEL_NUMBER):
                continue
            names = [n.lstrip("/") for n in summary.get("Names") or []]
            by_name = name in names
            by_image = summary.get("ImageID") == image_id or spec.normalise_image_ref(summary.get("Image")) == image
            if not (by_name or by_image):
                continue
            attrs = engine.inspect(summary["Id"])
            if not attrs:
                continue
            replica = replica_from_inspect(attrs)
            if not spec.is_dequeue_command(replica["command"]) and not by_name:
                continue
            if replica.get("env_project") not in (None, project) and not by_name:
                continue
            found.append(replica)
        return found

    def _remove_container(self, engine: Engine, replica: dict[str, Any]) -> None:
        try:
            attrs = engine.inspect(replica["id"]) or {}
            grace = (attrs.get("Config") or {}).get("StopTimeout") or DEFAULT_STOP_TIMEOUT
            if replica.get("running") or (attrs.get("State") or {}).get("Running"):
                engine.api.stop(replica["id"], timeout=int(grace))
            engine.api.remove_container(replica["id"], force=True)
        except NotFound:
            pass

    # ---- standalone mode -------------------------------------------------------------------

    def _run_standalone(self, engine: Engine, settings: dict[str, Any], state: str, timeout: float) -> None:
        project = settings["project_name"]
        service = self.p.get("service") or spec.WORKER_SERVICE
        base_name = self.p.get("container_name") or "qfieldcloud-worker"
        replicas = self._desired_replicas(settings) if state != "absent" else 0
        project_config, svc = self._service_config(settings, service)
        pattern = re.compile(rf"^{re.escape(base_name)}(?:-(\d+))?$")
        existing = []
        for summary in engine.api.containers(all=True):
            names = [n.lstrip("/") for n in summary.get("Names") or []]
            match = next((pattern.match(n) for n in names if pattern.match(n)), None)
            if match and not (summary.get("Labels") or {}).get(LABEL_NUMBER):
                attrs = engine.inspect(summary["Id"])
                if attrs:
                    replica = replica_from_inspect(attrs)
                    replica["number"] = int(match.group(1) or 1)
                    replica["attrs"] = attrs
                    existing.append(replica)
        existing.sort(key=lambda r: r["number"])
        template = existing[0]["attrs"] if existing else None
        app_env = engine.service_env(project, "app")
        db_host = self.p.get("db_host")
        if not db_host:
            db_host = (app_env or {}).get("POSTGRES_HOST") or (settings.get("postgres") or {}).get("host") or "db"
        db_names = engine.db_names(project, db_host)
        network = self.p.get("network") or spec.expected_network(
            settings["default_network"], db_names, engine.service_networks(project, "app"), db_host
        )
        if not engine.network_exists(network):
            raise WorkerError(
                f"network: Docker network {network!r} does not exist; give the network where the worker reaches the"
                " database (the db container's).",
                option="network",
            )
        # The image compose resolves for the service; without a compose project, the one the worker runs now (a
        # prebuilt image is never swapped for a local build), else the local build's name.
        image = self.p.get("image")
        if not image and svc:
            image = spec.resolved_image(svc, project, service)
        if not image and existing and spec.is_dequeue_command(existing[0].get("command")):
            image = existing[0].get("image")
        image = image or f"{project}-{service}"
        self.details.update({"replicas": replicas, "network": network, "db_host": db_host, "image": image})
        image_data = engine.image(image)
        image_id = (image_data or {}).get("Id")
        if state != "absent":
            self._check_db_host(engine, db_host, [network], db_names, "the app's POSTGRES_HOST")
        expected = self._expected(project, network, db_host, image, image_id, db_names)
        want_running = state not in ("stopped", "absent")

        env = spec.standalone_env(template, svc.get("environment"), app_env)
        if not env:
            raise WorkerError(
                "project_dir: no environment to give the worker (no compose project, no existing worker, no app"
                " container); give project_dir.",
                option="project_dir",
            )
        env["POSTGRES_HOST"] = db_host
        self.redactor.learn_env(env)
        command = list(self.p.get("command") or compose_mod.DEFAULT_COMMAND)
        for replica in existing:
            words = spec.command_words(replica.get("cmd"))
            if not self.p.get("command") and spec.is_dequeue_command(words) and not spec.is_debug_command(words):
                command = words
                break
        compose_binds = spec.volume_binds(svc.get("volumes"), compose_mod.volume_names(project_config))
        volumes = spec.standalone_binds(template, compose_binds)
        carried = dict(svc.get("labels") or {}) if svc else {}
        labels = spec.standalone_labels(template, carried)
        for own in (LABEL_MANAGED, LABEL_SPEC):
            labels.pop(own, None)
        desired = {
            "image": image,
            "image_id": image_id,
            "command": command,
            "user": "root",
            "env": env,
            "network": network,
            "volumes": volumes,
            "labels": labels,
            "stop_timeout": spec.standalone_stop_timeout(template, svc, DEFAULT_STOP_TIMEOUT),
            "restart": spec.RESTART_POLICY,
        }
        spec_hash = hashlib.sha256(json.dumps(desired, sort_keys=True).encode()).hexdigest()[:32]

        create_names = []
        recreate, start, remove = [], [], []
        for number in range(1, replicas + 1):
            name = base_name if number == 1 else f"{base_name}-{number}"
            replica = next((r for r in existing if r["name"] == name), None)
            if replica is None:
                create_names.append(name)
                self._drift(
                    name, {"field": "present", "expected": True, "actual": False, "code": codes.CODE_WORKER_NOT_RUNNING}
                )
                continue
            items = spec.worker_drift(replica, {**expected, "running": want_running})
            for item in items:
                self._drift(name, item)
            config_items = [i for i in items if i["field"] != "running"]
            if config_items or replica.get("spec_hash") != spec_hash:
                recreate.append(replica)
            elif want_running and not replica.get("running"):
                start.append(replica)
        for replica in existing:
            if replica["number"] > replicas:
                remove.append(replica)
                self._drift(
                    replica["name"],
                    {"field": "present", "expected": False, "actual": True, "code": codes.CODE_WORKER_REPLICAS_HIGH},
                )
        stop = [r for r in existing if r["number"] <= replicas and r.get("running") and not want_running]
        for replica in stop:
            self._drift(
                replica["name"],
                {"field": "running", "expected": False, "actual": True, "code": codes.CODE_WORKER_SHOULD_BE_STOPPED},
            )
        if want_running and (create_names or recreate) and image_data is None:
            if settings.get("project_dir") and svc:
                provide = compose_mod.ComposeCli(settings["project_dir"]).image_command(service, svc)
            elif "/" in image:
                provide = f"docker pull {image}"
            else:
                provide = f"docker build -t {image} <worker build context>"
            self._image_missing(image, provide)
        self.actions += [f"recreate {r['name']} (after drain)" for r in recreate if want_running]
        self.actions += [f"create {n}" for n in create_names if want_running]
        self.actions += [f"start {r['name']}" for r in start]
        self.actions += [f"remove {r['name']} (after drain)" for r in remove]
        self.actions += [f"stop {r['name']} (after drain)" for r in stop]
        if state == "restarted" and not (recreate or create_names):
            self.actions += [f"restart {r['name']} (after drain)" for r in existing if r["number"] <= replicas]

        before_view = {r["name"]: self._replica_view(r) for r in existing}
        after_view = {}
        if state != "absent":
            for number in range(1, replicas + 1):
                name = base_name if number == 1 else f"{base_name}-{number}"
                after_view[name] = self._expected_view(expected, command, want_running)
        self._container_diff(before_view, after_view)
        self._scope = {"project": project, "network": network, "env": app_env or env, "running": want_running}
        if self.check or not self.actions:
            return
        db = self._db_settings(engine, project, network, app_env or env)
        self._drain(engine, recreate + remove + stop + (list(existing) if state == "restarted" else []), db)
        self._stop_idle(engine, recreate + remove + stop + (list(existing) if state == "restarted" else []), db)
        for replica in remove + recreate:
            self._remove_container(engine, replica)
        for replica in stop:
            engine.api.stop(replica["id"], timeout=DEFAULT_STOP_TIMEOUT)
        if not want_running:
            return
        for name in create_names + [r["name"] for r in recreate]:
            self._create_standalone(engine, name, desired, spec_hash)
        for replica in start:
            engine.api.start(replica["id"])
        if state == "restarted" and not (recreate or create_names):
            for replica in existing:
                if replica["number"] <= replicas:
                    engine.api.restart(replica["id"], timeout=DEFAULT_STOP_TIMEOUT)

    def _service_config(self, settings: dict[str, Any], service: str) -> tuple[dict[str, Any], dict[str, Any]]:
        """Return the compose project's configuration and the service's entry, or ``({}, {})`` without a project."""
        if not (settings.get("project_dir") and settings.get("compose_files")):
            return {}, {}
        cli = compose_mod.ComposeCli(settings["project_dir"], self.p.get("docker_host"))
        try:
            config = cli.config()
        except compose_mod.ComposeError:
            return {}, {}
        return config, (config.get("services") or {}).get(service) or {}

    def _create_standalone(self, engine: Engine, name: str, desired: dict[str, Any], spec_hash: str) -> None:
        api = engine.api
        binds = desired["volumes"]
        host_config = api.create_host_config(
            binds=binds,
            restart_policy={"Name": desired["restart"]},
            network_mode=desired["network"],
        )
        container = api.create_container(
            image=desired["image"],
            command=desired["command"],
            name=name,
            user="root",
            environment=desired["env"],
            labels={**desired["labels"], LABEL_MANAGED: MANAGED_BY, LABEL_SPEC: spec_hash},
            host_config=host_config,
            stop_timeout=desired["stop_timeout"],
            networking_config=api.create_networking_config(
                {desired["network"]: api.create_endpoint_config(aliases=[name])}
            ),
        )
        api.start(container["Id"])
