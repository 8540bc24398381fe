# Copyright (c) 2025, fibreflow
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Everything ``qfc_sync_facts`` learns about a QFieldCloud stack, in one pass, redacted.

:func:`gather` ``(options) -> {"facts", "problems", "sync_ready"}`` is what the module calls; it never
raises for a sick stack (unreachable daemon, database or app are findings). Options are the module's
parameters (see ``plugins/modules/qfc_sync_facts.py``); missing keys take the module's defaults.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import ssl
import stat
import time
import urllib.error
import urllib.parse
import urllib.request
from types import SimpleNamespace
from typing import Any

from ansible_collections.fibreflow.qfieldcloud.plugins.module_utils import database as db_mod
from ansible_collections.fibreflow.qfieldcloud.plugins.module_utils import docker_engine as engine_mod
from ansible_collections.fibreflow.qfieldcloud.plugins.module_utils import enforced, envfile, logsigns, stack
from ansible_collections.fibreflow.qfieldcloud.plugins.module_utils import problems as problems_mod
from ansible_collections.fibreflow.qfieldcloud.plugins.module_utils import queue as queue_mod
from ansible_collections.fibreflow.qfieldcloud.plugins.module_utils import worker_spec as ws
from ansible_collections.fibreflow.qfieldcloud.plugins.module_utils.docker_engine import docker_time
from ansible_collections.fibreflow.qfieldcloud.plugins.module_utils.redact import Redactor

DEFAULTS: dict[str, Any] = {
    "project_name": None,
    "project_dir": None,
    "docker_host": engine_mod.DEFAULT_DOCKER_HOST,
    "timeout": engine_mod.DEFAULT_API_TIMEOUT,
    "db_host": None,
    "db_port": None,
    "db_name": None,
    "db_user": None,
    "db_password": None,
    "db_sslmode": None,
    "app_url": None,
    "app_host_header": None,
    "pending_age_threshold": 300,
    "job_timeout": None,
    "cron_max_age": 300,
    "crash_restarts": 3,
    "crash_window": 600,
    "log_lines": 200,
    "log_tail_lines": 5,
    "boot_script_dir": None,
    "boot_unit_dir": None,
    "skip": [],
}
# Where the startup role installs the start script and the unit by default (its qfieldcloud_startup_boot_*_dir).
BOOT_SCRIPT_DIR = "/usr/local/sbin"
BOOT_UNIT_DIR = "/etc/systemd/system"
# There when systemd runs the host (what sd_booted(3) checks).
SYSTEMD_RUNTIME_DIR = "/run/systemd/system"
CHECKS = ("db", "queue", "app", "client", "cron", "logs", "orphans")
STATUS_PATH = "/api/v1/status/"
STATUS_COMPONENTS = ("database", "geodb", "storage")
# Host names that a QField device cannot use to reach the server.
LOCAL_HOSTS = ("localhost", "0.0.0.0", "::1", "[::1]")


def status_url(app_url: str) -> str:
    """The status endpoint for an app base URL (``http://host:port``, ``.../api/v1/`` or the full URL)."""
    parts = urllib.parse.urlsplit(app_url)
    path = parts.path or "/"
    if path.rstrip("/").endswith("/status"):
        full = path if path.endswith("/") else path + "/"
    elif path.rstrip("/").endswith("/api/v1"):
        full = path.rstrip("/") + "/status/"
    else:
        full = path.rstrip("/") + STATUS_PATH
    return urllib.parse.urlunsplit((parts.scheme or "http", parts.netloc, full, "", ""))


def status_ok(http_status: int | None, body: Any) -> bool:
    """True when the status endpoint answered 200 with every known component ``ok``."""
    if http_status != 200 or not isinstance(body, dict):
        return False
    known = [body[k] for k in STATUS_COMPONENTS if k in body]
    if not known:
        return False
    return all(str(v).lower() == "ok" for v in known)


def check_app(url: str, host_header: str | None, timeout: float) -> dict[str, Any]:
    """GET the status endpoint (no proxy, bounded); return the ``app`` facts."""
    fact: dict[str, Any] = {"checked": True, "url": url, "host_header": host_header, "reachable": False}
    headers = {"Accept": "application/json", "User-Agent": "fibreflow.qfieldcloud.qfc_sync_facts"}
    if host_header:
        headers["Host"] = host_header
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    started = time.monotonic()
    try:
        with opener.open(urllib.request.Request(url, headers=headers), timeout=timeout) as resp:
            code, raw = resp.status, resp.read(65536)
    except urllib.error.HTTPError as exc:
        code, raw = exc.code, exc.read(65536) if exc.fp else b""
    except Exception as exc:  # refused, timeout, closed connection (nginx 444), bad URL
        fact.update(error=str(getattr(exc, "reason", exc)) or type(exc).__name__, ok=False)
        fact["duration_s"] = round(time.monotonic() - started, 3)
        return fact
    fact["duration_s"] = round(time.monotonic() - started, 3)
    try:
        body = json.loads(raw.decode("utf-8", errors="replace") or "null")
    except ValueError:
        body = None
    fact.update(reachable=True, http_status=code, status=body if isinstance(body, dict) else None)
    fact["ok"] = status_ok(code, body)
    if not fact["ok"] and body is None:
        fact["error"] = "the answer is not JSON"
    return fact


def is_local_host(host: str | None) -> bool:
    """True for names and addresses that only the server itself reaches (localhost, 127.x, ::1)."""
    name = (host or "").strip().lower()
    return name in LOCAL_HOSTS or name.startswith("127.") or name.endswith(".localhost")


def _binding(ports: list[dict[str, Any]], port: int) -> dict[str, Any] | None:
    return next((b for b in ports if b.get("port") == port and b.get("proto", "tcp") == "tcp"), None)


def client_address(
    host: str | None, nginx: dict[str, Any] | None, app: dict[str, Any] | None, docker_host: str | None = None
) -> dict[str, Any]:
    """The server URL a QField user enters, and where the Docker host itself reaches it.

    ``nginx`` and ``app`` are service facts (``running``, ``ports`` as from ``stack.port_bindings``). nginx
    wins when it runs and publishes 443 (https) or 80 (http); else the app's published 8000 (the development
    override's ``DJANGO_DEV_PORT``, the guide's ``http://<host-ip>:8011``). Returns ``{url, via, scheme,
    public_port, connect_host, connect_port, host_header, alternatives}``; ``url`` is None when no port is
    published or no host is known.
    """
    candidates: list[tuple[str, str, int, dict[str, Any]]] = []
    nginx_ports = ((nginx or {}).get("ports") or []) if (nginx or {}).get("running") else []
    app_ports = ((app or {}).get("ports") or []) if (app or {}).get("running") else []
    for via, ports, port, scheme in (("nginx", nginx_ports, 443, "https"), ("nginx", nginx_ports, 80, "http")):
        bind = _binding(ports, port)
        if bind:
            candidates.append((via, scheme, port, bind))
    bind = _binding(app_ports, 8000)
    if bind:
        candidates.append(("app", "http", 0, bind))
    parsed = urllib.parse.urlsplit(docker_host or "")
    remote = parsed.hostname if parsed.scheme in ("tcp", "http", "https") else None
    result: dict[str, Any] = {"url": None, "via": None, "alternatives": []}
    for via, scheme, default_port, bind in candidates:
        public = int(bind["host_port"])
        netloc = host if public == default_port else f"{host}:{public}"
        url = f"{scheme}://{netloc}" if host else None
        if result["via"] is None:
            bound = str(bind.get("host_ip") or "")
            result.update(
                url=url,
                via=via,
                scheme=scheme,
                public_port=public,
                connect_host=remote or (bound if bound not in ("", "0.0.0.0", "::", "[::]") else "127.0.0.1"),
                connect_port=public,
                host_header=netloc if host else None,
            )
        elif url:
            result["alternatives"].append(url)
    return result


def check_client(scheme: str, connect_host: str, port: int, host_header: str, timeout: float) -> dict[str, Any]:
    """GET the status endpoint at ``connect_host:port`` with the ``Host`` header a QField device sends.

    For https the certificate is not verified (this checks that nginx routes the name, not the certificate).
    Returns ``{reachable, http_status, ok, error, duration_s}``; ``ok`` means HTTP 200 with a JSON object.
    """
    fact: dict[str, Any] = {"reachable": False, "ok": False}
    if scheme == "https":
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        conn: http.client.HTTPConnection = http.client.HTTPSConnection(
            connect_host, port, timeout=timeout, context=context
        )
    else:
        conn = http.client.HTTPConnection(connect_host, port, timeout=timeout)
    started = time.monotonic()
    try:
        headers = {
            "Host": host_header,
            "Accept": "application/json",
            "User-Agent": "fibreflow.qfieldcloud.qfc_sync_facts",
        }
        conn.request("GET", STATUS_PATH, headers=headers)
        resp = conn.getresponse()
        code, raw = resp.status, resp.read(65536)
    except http.client.RemoteDisconnected:
        fact["error"] = (
            f"the connection was closed without an answer: nginx does this (444) when the Host header "
            f"({host_header}) is not the name it serves"
        )
        fact["closed_without_answer"] = True
    except Exception as exc:  # refused, timeout, TLS error
        fact["error"] = str(exc) or type(exc).__name__
    else:
        try:
            body = json.loads(raw.decode("utf-8", errors="replace") or "null")
        except ValueError:
            body = None
        fact.update(reachable=True, http_status=code, ok=code == 200 and isinstance(body, dict))
        if not fact["ok"]:
            fact["error"] = f"HTTP {code}" + ("" if isinstance(body, dict) else ", the answer is not JSON")
    finally:
        conn.close()
    fact["duration_s"] = round(time.monotonic() - started, 3)
    return fact


def client_facts(
    dotenv: dict[str, str], envs: dict[str, dict[str, str]], services: dict[str, Any], opts: dict[str, Any]
) -> dict[str, Any]:
    """The ``client`` facts: the URL to type into QField, and whether the host reaches the API there."""
    host, source = None, None
    for name, env in ((".env", dotenv), ("app container", envs.get("app")), ("nginx container", envs.get("nginx"))):
        if (env or {}).get("QFIELDCLOUD_HOST"):
            host, source = env["QFIELDCLOUD_HOST"].strip(), name
            break
    nginx_host = (envs.get("nginx") or {}).get("QFIELDCLOUD_HOST")
    address = client_address(host, services.get("nginx"), services.get("app"), opts.get("docker_host"))
    fact: dict[str, Any] = {
        "checked": True,
        "host": host,
        "host_source": source,
        "nginx_host": nginx_host,
        "local_host": is_local_host(host) if host else None,
        **address,
    }
    if not host:
        fact["error"] = "QFIELDCLOUD_HOST is set neither in .env nor in the app's environment"
    elif not address["url"]:
        fact["error"] = "neither nginx (80/443) nor the app (8000) publishes a port on the host"
    else:
        fact.update(
            check_client(
                address["scheme"],
                address["connect_host"],
                address["connect_port"],
                address["host_header"],
                float(opts["timeout"]),
            )
        )
    return fact


def _default_host_header(app_env: dict[str, str]) -> str | None:
    allowed = (app_env.get("DJANGO_ALLOWED_HOSTS") or "").replace(",", " ").split()
    if "app" in allowed:
        return "app"
    named = [h for h in allowed if h not in ("*",)]
    if named:
        return named[0].lstrip(".")
    return app_env.get("QFIELDCLOUD_HOST") or None


def _db_params(
    opts: dict[str, Any], sources: list[dict[str, str]], containers: dict[str, Any], network: str
) -> tuple[dict[str, Any] | None, dict[str, Any]]:
    """Connection parameters for the app's database, and facts about where they came from."""
    source = next((s for s in sources if s.get("POSTGRES_HOST") or s.get("POSTGRES_DB")), {})
    configured_host = opts.get("db_host") or source.get("POSTGRES_HOST")
    port = opts.get("db_port") or source.get("POSTGRES_PORT") or 5432
    info: dict[str, Any] = {"configured_host": source.get("POSTGRES_HOST"), "address_from": None}
    if not configured_host:
        info["error"] = "no database host: give db_host, or run the app/worker container with POSTGRES_HOST"
        return None, info
    host = configured_host
    if not opts.get("db_host") and stack.is_service_name(containers, configured_host):
        address = stack.service_address(containers, configured_host, network)
        if not address:
            info["error"] = f"the container of service '{configured_host}' is not running"
            return None, info
        host = address
        info["address_from"] = f"container of service '{configured_host}' on {network}"
    else:
        info["address_from"] = "db_host option" if opts.get("db_host") else "POSTGRES_HOST"
    params = {
        "host": host,
        "port": int(port),
        "dbname": opts.get("db_name") or source.get("POSTGRES_DB") or "qfieldcloud_db",
        "user": opts.get("db_user") or source.get("POSTGRES_USER") or "qfieldcloud_db_admin",
        "password": opts.get("db_password") or source.get("POSTGRES_PASSWORD") or "",
        "sslmode": opts.get("db_sslmode") or source.get("POSTGRES_SSLMODE") or "prefer",
        "connect_timeout": max(2, int(opts.get("timeout") or 10)),
    }
    return params, info


# What a worker cannot run a job without: the /tmp hand-off (the daemon mounts /tmp/tmpXXXX of the host into the
# QGIS container), the project files' storage, the callback URL and the job network.
JOB_ESSENTIALS = (
    "bind:/tmp",
    "env:STORAGES",
    "env:QFIELDCLOUD_WORKER_QFIELDCLOUD_URL",
    "env:QFIELDCLOUD_DEFAULT_NETWORK",
    "env:ENVIRONMENT",
)


def breaks_jobs(gaps: list[str]) -> bool:
    """Whether a hand-started worker's gaps make every job it claims fail (see :data:`JOB_ESSENTIALS`)."""
    return any(gap in JOB_ESSENTIALS or gap.startswith("volume:") for gap in gaps)


def database_service(dns_names: dict[str, dict[str, list[str]]], db_host: str | None) -> str | None:
    """The compose service whose running container answers to ``db_host`` on one of its networks, else None."""
    if not db_host:
        return None
    for service in sorted(dns_names):
        if any(db_host in names for names in dns_names[service].values()):
            return service
    return None


def healthy_now(replica: dict[str, Any]) -> bool:
    """Whether a worker replica runs a healthy dequeue loop now.

    Running, its current process past the dequeue banner (or it dequeued a job), and no fault sign in the
    current process's log. A replica whose log was not read counts as healthy when it runs and its restarts
    in the recent window stay below two.
    """
    if not replica.get("running"):
        return False
    log = replica.get("log")
    if not log or "error" in log:
        return int(replica.get("recent_deaths") or 0) < 2
    return bool(log.get("dequeuing")) and not any(int(log.get(sign) or 0) for sign in logsigns.LOOP_FAULT_SIGNS)


def _docker_facts(ctx: SimpleNamespace, facts: dict[str, Any]) -> None:
    """The Docker half: one discovery pass (a daemon that cannot be reached is a finding)."""
    discovery: dict[str, Any] | None = None
    try:
        client = engine_mod.client(ctx.opts["docker_host"], ctx.timeout)
        discovery = stack.discover(
            client,
            ctx.project,
            ctx.network,
            environment=ctx.settings["environment"],
            worker_images=[ctx.settings["service_images"].get(ws.WORKER_SERVICE) or ""],
            qgis_images=ctx.settings["qgis_images"],
            log_lines=0 if "logs" in ctx.skip else int(ctx.opts["log_lines"]),
            log_tail_lines=int(ctx.opts["log_tail_lines"]),
            job_network=ctx.settings["job_network"],
            crash_window=float(ctx.opts["crash_window"]),
        )
    except Exception as exc:  # daemon down, socket missing, permission denied: a finding
        facts["daemon"] = {"reachable": False, "docker_host": ctx.opts["docker_host"], "error": str(exc)}
    envs: dict[str, dict[str, str]] = {}
    containers: dict[str, Any] = {}
    if discovery is not None:
        envs = discovery.pop("envs")
        for env in envs.values():
            ctx.redactor.learn_env(env)
        containers = discovery.pop("containers")
        facts["daemon"] = dict(discovery["daemon"], docker_host=ctx.opts["docker_host"])
        facts["project"]["environment"] = discovery["environment"] or ctx.settings["environment"]
        facts["services"] = discovery["services"]
        facts["images"] = discovery["images"]
        facts["api_calls"] = discovery["api_calls"]
        facts["job_network"] = discovery["job_network"]
        environment = facts["project"]["environment"]
        facts["shared_environment"] = [
            w for w in discovery["foreign_workers"] if environment and w.get("environment") == environment
        ]
    vars(ctx).update(discovery=discovery, envs=envs, containers=containers)


def _thresholds(ctx: SimpleNamespace, facts: dict[str, Any]) -> None:
    """The thresholds, the job timeout as the server has it and where it comes from."""
    app_env = ctx.envs.get("app") or {}
    worker_env = ctx.envs.get(ws.WORKER_SERVICE) or {}
    # The job timeout as the server has it: the option; from v26.24 QFIELDCLOUD_WORKER_TIMEOUT_S in the worker's
    # own environment; before v26.24 WORKER_TIMEOUT_S of constance_constance, which the database read prefers
    # over anything but those two (an admin may have raised it); else .env or 600.
    job_timeout = ctx.opts.get("job_timeout")
    timeout_source = "option"
    if job_timeout is None:
        timeout_source = "default"
        raw = str(worker_env.get("QFIELDCLOUD_WORKER_TIMEOUT_S") or "").strip()
        if raw.isdigit():
            job_timeout, timeout_source = int(raw), "environment"
        else:
            job_timeout = ctx.settings["worker_timeout_s"]
    facts["thresholds"] = {
        "pending_age_s": int(ctx.opts["pending_age_threshold"]),
        "job_timeout_s": int(job_timeout),
        "cron_max_age_s": int(ctx.opts["cron_max_age"]),
        "crash_restarts": int(ctx.opts["crash_restarts"]),
        "crash_window_s": int(ctx.opts["crash_window"]),
    }
    # Present but empty: v26.24+ compose files pass it on, and app and worker crash parsing it.
    empty_in = [
        where
        for where, env in ((".env", ctx.dotenv), ("worker_wrapper", worker_env), ("app", app_env))
        if "QFIELDCLOUD_WORKER_TIMEOUT_S" in env and not str(env["QFIELDCLOUD_WORKER_TIMEOUT_S"]).strip()
    ]
    facts["worker_timeout"] = {"empty_in": empty_in}
    vars(ctx).update(app_env=app_env, worker_env=worker_env, job_timeout=job_timeout, timeout_source=timeout_source)


def _worker_facts(ctx: SimpleNamespace, facts: dict[str, Any]) -> None:
    """Each worker replica and hand-started worker against the expected configuration."""
    if ctx.discovery is not None:
        worker_image = facts["images"]["worker"]
        db_host = ctx.app_env.get("POSTGRES_HOST") or ctx.dotenv.get("POSTGRES_HOST") or None
        dns_names = ctx.discovery["dns_names"]
        # A stopped database answers to no name: then the service that POSTGRES_HOST names literally.
        db_service = database_service(dns_names, db_host) or (db_host if db_host in facts["services"] else None)
        db_names = dns_names.get(db_service) if db_service else None
        app_networks = [n for c in ctx.containers.get("app") or [] if c.get("running") for n in c.get("networks") or []]
        facts["project"]["database_service"] = db_service
        facts["project"]["postgres_host"] = db_host
        expected = ws.expected_worker(
            ctx.project,
            network=ws.expected_network(ctx.network, db_names, app_networks, db_host),
            db_host=db_host,
            image=worker_image["name"],
            image_id=worker_image.get("id"),
            db_names=db_names,
        )
        expected["image_aliases"] = [
            ws.worker_image_name(ctx.project),
            ws.worker_image_name(ctx.project, compose_v1=True),
        ]
        replicas = ctx.discovery["worker"]["replicas"]
        hand = ctx.discovery["worker"]["hand_started"]
        now = time.time()
        for rep in replicas + hand:
            rep["drift"] = ws.worker_drift(rep, expected)
            rep["healthy_now"] = healthy_now(rep)
            # When its previous process ended (State.FinishedAt stays set while it runs again).
            ended = docker_time(rep.get("finished_at"))
            rep["last_exit_age_s"] = round(now - ended, 1) if ended else None
        # What compose gives the worker, as its own replica shows it: a hand-started one is judged against that.
        model = replicas[0] if replicas else None
        model_env = set(model["env_keys"]) if model else None
        model_volumes = [dict(m) for m in model["mounts"]] if model else None
        for rep in hand:
            rep["gaps"] = ws.hand_started_gaps(rep, model_env, model_volumes)
            rep["breaks_jobs"] = breaks_jobs(rep["gaps"])
        if ctx.settings["env_file"]:
            replicas_expected = ctx.settings["worker_replicas"]
        elif str(ctx.worker_env.get("QFIELDCLOUD_WORKER_REPLICAS", "")).strip().isdigit():
            replicas_expected = int(ctx.worker_env["QFIELDCLOUD_WORKER_REPLICAS"])
        else:
            replicas_expected = max(1, len(replicas))
        facts["worker"] = {
            "service": ws.WORKER_SERVICE,
            "expected": {k: v for k, v in expected.items() if k != "image_aliases"},
            "replicas_expected": replicas_expected,
            "replicas_running": sum(1 for r in replicas if r["running"]),
            # Running and in a healthy dequeue loop now: a crash-looping replica that is up for a moment is not.
            "replicas_healthy": sum(1 for r in replicas if r["healthy_now"]),
            "hand_started_running": sum(1 for r in hand if r["running"]),
            "replicas": replicas,
            "hand_started": hand,
            # qfc_worker's record of its last enforcement, and whether nothing changed since (None: no record).
            "enforced": enforced.check(ctx.project, ctx.settings["project_dir"], ctx.discovery["project_rows"]),
        }


def _database_facts(ctx: SimpleNamespace, facts: dict[str, Any]) -> None:
    """The database and the queue (one connection, two round trips)."""
    job_containers = (ctx.discovery or {}).get("job_containers") or []
    if "db" in ctx.skip:
        facts["database"] = {"checked": False}
    elif ctx.discovery is None and not ctx.opts.get("db_host"):
        facts["database"] = {"checked": False, "error": "the Docker daemon is unreachable and no db_host was given"}
    else:
        sources = [ctx.app_env, ctx.worker_env, ctx.dotenv, ctx.envs.get("hand_started") or {}]
        params, info = _db_params(ctx.opts, sources, ctx.containers, ctx.network)
        if params is None:
            facts["database"] = dict(info, checked=True, reachable=False, error_kind="unreachable")
        elif not db_mod.HAS_PSYCOPG2:
            facts["database"] = dict(info, checked=False, error="psycopg2 is not installed")
        else:
            ctx.redactor.add(params.get("password"))
            database, queue = queue_mod.read_database(
                params,
                ctx.job_timeout,
                [j["job_id"] for j in job_containers if j.get("job_id")],
                job_timeout_source=ctx.timeout_source,
            )
            database.update(info)
            facts["database"] = database
            if "queue" not in ctx.skip:
                facts["queue"] = queue
            if database.get("job_timeout_s"):
                facts["thresholds"]["job_timeout_s"] = int(database["job_timeout_s"])
            facts["thresholds"]["job_timeout_source"] = database.get("job_timeout_source") or ctx.timeout_source
    ctx.job_containers = job_containers


def _app_facts(ctx: SimpleNamespace, facts: dict[str, Any]) -> None:
    """The app's status endpoint."""
    if "app" in ctx.skip:
        facts["app"] = {"checked": False}
    else:
        host_header = ctx.opts.get("app_host_header")
        if ctx.opts.get("app_url"):
            facts["app"] = check_app(status_url(ctx.opts["app_url"]), host_header, ctx.timeout)
        else:
            address = stack.service_address(ctx.containers, "app", ctx.network) if ctx.containers else None
            if address:
                url = f"http://{address}:8000{STATUS_PATH}"
                facts["app"] = check_app(url, host_header or _default_host_header(ctx.app_env), ctx.timeout)
            elif ctx.discovery is not None:
                facts["app"] = {
                    "checked": True,
                    "reachable": False,
                    "url": None,
                    "ok": False,
                    "error": "the app container is not running",
                }
            else:
                facts["app"] = {"checked": False, "error": "the Docker daemon is unreachable"}


def _client_facts(ctx: SimpleNamespace, facts: dict[str, Any]) -> None:
    """The QField client's address, checked from the host."""
    # The address QField devices use, checked from the host with the Host header they send (nginx answers
    # only for QFIELDCLOUD_HOST). Skipped with the app check: it is the same endpoint seen from outside.
    if "client" in ctx.skip or "app" in ctx.skip or ctx.discovery is None:
        facts["client"] = {"checked": False}
    else:
        facts["client"] = client_facts(ctx.dotenv, ctx.envs, facts["services"], ctx.opts)


def _cron_facts(ctx: SimpleNamespace, facts: dict[str, Any]) -> None:
    """The cron runner and the crons' own log."""
    db = facts["database"]
    if "cron" in ctx.skip or ctx.discovery is None:
        facts["cron"] = {"checked": False}
    else:
        ofelia = facts["services"].get("ofelia") or {}
        app_svc = facts["services"].get("app") or {}
        ofelia_started = docker_time(ofelia.get("started_at"))
        app_created = docker_time(app_svc.get("created"))
        stale = bool(
            ofelia.get("running")
            and app_svc.get("running")
            and ofelia_started
            and app_created
            and ofelia_started < app_created
        )
        cron_last = db.get("cron_last") if db.get("reachable") else None
        facts["cron"] = {
            "checked": True,
            "ofelia_present": bool(ofelia.get("present")),
            "ofelia_running": bool(ofelia.get("running")),
            "ofelia_started_at": ofelia.get("started_at"),
            "app_created_at": app_svc.get("created"),
            "ofelia_stale": stale,
            # The crons' own log could be read: its freshest run decides, whatever runs the crons.
            "log_readable": bool(db.get("reachable") and db.get("tables_present") and "cron_last" in db),
            "ofelia_up_s": round(time.time() - ofelia_started, 1) if ofelia.get("running") and ofelia_started else None,
            "last_run": (cron_last or {}).get("end_time") or (cron_last or {}).get("start_time"),
            "last_run_code": (cron_last or {}).get("code"),
            "last_run_success": (cron_last or {}).get("is_success"),
            "last_run_age_s": None
            if not cron_last or cron_last.get("age_s") is None
            else round(float(cron_last["age_s"]), 1),
        }


def _orphan_container_facts(ctx: SimpleNamespace, facts: dict[str, Any]) -> None:
    """Leftover QGIS job containers."""
    db = facts["database"]
    if ctx.discovery is not None:
        worker_running = bool(facts["worker"]["replicas_running"] or facts["worker"]["hand_started_running"])
        statuses = db.get("job_statuses") if db.get("reachable") and db.get("tables_present") else None
        facts["job_containers"] = ctx.job_containers
        facts["orphan_job_containers"] = (
            [] if "orphans" in ctx.skip else stack.orphan_jobs(ctx.job_containers, statuses, worker_running)
        )


def boot_paths(project: str, script_dir: str | None = None, unit_dir: str | None = None) -> list[str]:
    """The start script and the systemd unit the startup role installs for ``project`` (in its default
    directories unless given)."""
    script_dir = (script_dir or BOOT_SCRIPT_DIR).rstrip("/") or "/"
    unit_dir = (unit_dir or BOOT_UNIT_DIR).rstrip("/") or "/"
    return [
        os.path.join(script_dir, f"qfieldcloud-start-{project}"),
        os.path.join(unit_dir, f"qfieldcloud-{project}.service"),
    ]


def file_state(path: str) -> dict[str, Any]:
    """``path`` as installed: whether it is a file, its permission bits (``"0755"``) and its SHA-1 (as
    ``ansible.builtin.find`` and the ``hash('sha1')`` filter give them); ``None`` for what cannot be read."""
    state: dict[str, Any] = {"path": path, "exists": False, "mode": None, "checksum": None}
    try:
        found = os.stat(path)
    except OSError:
        return state
    state.update(exists=stat.S_ISREG(found.st_mode), mode=f"{stat.S_IMODE(found.st_mode):04o}")
    if state["exists"]:
        try:
            with open(path, "rb") as handle:
                state["checksum"] = hashlib.sha1(handle.read()).hexdigest()
        except OSError:
            pass
    return state


def _boot_facts(ctx: SimpleNamespace, facts: dict[str, Any]) -> None:
    """What brings the stack up at boot: the start script and the unit as installed, and a running systemd."""
    paths = boot_paths(ctx.project, ctx.opts.get("boot_script_dir"), ctx.opts.get("boot_unit_dir"))
    facts["boot"] = {"systemd": os.path.isdir(SYSTEMD_RUNTIME_DIR), "files": [file_state(p) for p in paths]}


def gather(options: dict[str, Any]) -> dict[str, Any]:
    """Gather facts, detect problems; return ``{"facts", "problems", "sync_ready"}``, all redacted."""
    opts = dict(DEFAULTS)
    opts.update({k: v for k, v in options.items() if v is not None})
    started = time.monotonic()
    skip = set(opts.get("skip") or [])
    timeout = float(opts["timeout"])
    redactor = Redactor()
    redactor.add(opts.get("db_password"))

    settings = envfile.load_project(opts.get("project_dir"), opts.get("project_name"))
    project = settings["project_name"]
    network = settings["default_network"]
    dotenv: dict[str, str] = settings["dotenv"]
    redactor.learn_env(dotenv)

    # What the steps below share: the options, the project and what each step found.
    ctx = SimpleNamespace(
        opts=opts,
        skip=skip,
        timeout=timeout,
        redactor=redactor,
        settings=settings,
        project=project,
        network=network,
        dotenv=dotenv,
    )
    facts: dict[str, Any] = {
        "project": {
            "name": project,
            "name_source": settings["project_name_source"],
            "dir": settings["project_dir"],
            "env_file": settings["env_file"],
            "compose_files": settings["compose_files"],
            "network": network,
            "job_network": settings["job_network"],
            "job_network_source": settings["job_network_source"],
            "environment": settings["environment"],
            # What the compose files define (build-only services such as qgis3 included) and the database host
            # the app is given; the database service is added from the engine's names (_worker_facts).
            "services": settings["services"],
            "postgres_host": dotenv.get("POSTGRES_HOST") or None,
            # Whether the compose files were checked to be YAML (PyYAML present), and why they are not.
            "compose_checked": envfile.HAS_YAML,
            "compose_error": envfile.compose_yaml_error(settings["compose_files"]) if envfile.HAS_YAML else None,
        },
        "checks_skipped": sorted(skip),
    }
    _docker_facts(ctx, facts)
    _thresholds(ctx, facts)
    _worker_facts(ctx, facts)
    _database_facts(ctx, facts)
    _app_facts(ctx, facts)
    _client_facts(ctx, facts)
    _cron_facts(ctx, facts)
    _orphan_container_facts(ctx, facts)
    _boot_facts(ctx, facts)
    db = facts["database"]
    db.pop("job_statuses", None)
    db.pop("cron_last", None)

    facts["duration_s"] = round(time.monotonic() - started, 3)
    found = problems_mod.detect_problems(facts)
    return {
        "facts": redactor.value(facts),
        "problems": redactor.value(found),
        "sync_ready": problems_mod.sync_ready(found),
        "client_ready": problems_mod.client_ready(found),
    }
