# Copyright (c) 2025, fibreflow
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Compose-side plumbing of ``qfc_worker``: the owned override file, ``COMPOSE_FILE`` in ``.env``,
atomic writes, the per-project lock and the ``docker compose`` command line.

Nothing here imports Ansible; everything a caller needs back is plain data.

Decisions (documented in the module):

* The collection owns exactly one file in the project directory, :data:`OVERRIDE_FILE`
  (``docker-compose.override.fibreflow-worker.yml``). It starts with :data:`HEADER` and is always
  the *last* entry of ``COMPOSE_FILE``, so that its ``!override``/``!reset`` tags win over every
  other file, including upstream's development override that publishes the debug port.
* ``.env`` is edited line by line: only the ``COMPOSE_FILE`` line changes; its ``export`` prefix,
  quote style and trailing comment are kept, every other byte of the file stays as it was.
* Writes are atomic: a temporary file in the same directory, ``fsync``, ``os.replace``, then an
  ``fsync`` of the directory. The mode and owner of the replaced file are kept.
* Runs are serialised per compose project with ``fcntl.flock`` on a lock file under
  ``/run/lock`` (never in the project directory, so that check mode writes nothing there).
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import os
import re
import shlex
import shutil
import subprocess
import tempfile
import time
from typing import Any

from ansible_collections.fibreflow.qfieldcloud.plugins.module_utils import envfile

OVERRIDE_FILE = "docker-compose.override.fibreflow-worker.yml"
HEADER = (
    "# Managed by the fibreflow.qfieldcloud Ansible collection (module qfc_worker). Do not edit:\n"
    "# the next run rewrites it. It must stay the last file of COMPOSE_FILE in .env so that the\n"
    "# worker's required settings survive a later 'docker compose up -d'.\n"
)
DEFAULT_COMMAND = ["python", "manage.py", "dequeue"]
DOCKER_SOCKET = "/var/run/docker.sock"
EXTERNAL_NETWORK_KEY = "fibreflow_worker_network"
LOCK_DIRS = ("/run/lock", "/run", tempfile.gettempdir())
# Variables of the caller's environment that would override the project's .env in compose.
COMPOSE_ENV_VARS = (
    "COMPOSE_FILE",
    "COMPOSE_PROJECT_NAME",
    "COMPOSE_PATH_SEPARATOR",
    "COMPOSE_PROFILES",
    "COMPOSE_ENV_FILES",
)


class ComposeError(Exception):
    """A ``docker compose`` call failed; ``str()`` names the command and compose's own message."""


class LockTimeout(Exception):
    """Another run holds the project's lock for longer than ``lock_timeout``."""


# --------------------------------------------------------------------------------------------
# Override file
# --------------------------------------------------------------------------------------------


def _compose_escape(value: str) -> str:
    """Escape ``$`` so that compose does not interpolate a literal value."""
    return value.replace("$", "$$")


def _yaml_str(value: str) -> str:
    """Return ``value`` as a YAML double-quoted scalar (JSON strings are valid YAML)."""
    return json.dumps(_compose_escape(value))


def render_override(
    service: str,
    command: list[str],
    db_host: str,
    replicas: int,
    network_key: str = "default",
    external_network: str | None = None,
    socket: str = DOCKER_SOCKET,
    keep_network_keys: list[str] | None = None,
) -> str:
    """Return the text of the owned override file.

    :param service: the worker service (``worker_wrapper``).
    :param command: the dequeue command as a list of words.
    :param db_host: the ``POSTGRES_HOST`` the worker must use.
    :param replicas: the ``scale`` a later plain ``docker compose up -d`` keeps.
    :param network_key: the key of the project network in the compose files (``default``).
    :param external_network: when the wanted network is not one of the project's, its Docker name;
        it is then declared as an external network under :data:`EXTERNAL_NETWORK_KEY`.
    :param socket: the Docker socket path, mounted read-write at the same path.
    :param keep_network_keys: further networks of the service (compose keys) that it keeps: a worker on extra
        networks is fine, so the override adds the wanted network without cutting the worker off the others.

    The override never names an image or a build: the worker runs what compose resolves for the service.
    """
    if external_network:
        network_key = EXTERNAL_NETWORK_KEY
    keys = [network_key, *sorted({key for key in keep_network_keys or [] if key and key != network_key})]
    words = ", ".join(_yaml_str(word) for word in command)
    lines = [
        HEADER.rstrip("\n"),
        "services:",
        f"  {service}:",
        "    user: root",
        f"    command: !override [{words}]",
        "    ports: !reset []",
        "    networks: !override",
        *[f"      {key}:" for key in keys],
        "    environment:",
        f"      POSTGRES_HOST: {_yaml_str(db_host)}",
        "    volumes:",
        f"      - {socket}:{socket}",
        "    restart: unless-stopped",
        f"    scale: {int(replicas)}",
    ]
    if external_network:
        lines += [
            "networks:",
            f"  {EXTERNAL_NETWORK_KEY}:",
            f"    name: {_yaml_str(external_network)}",
            "    external: true",
        ]
    return "\n".join(lines) + "\n"


def network_key_for(project_config: dict[str, Any], network: str) -> str | None:
    """Return the compose key of the project network whose Docker name is ``network``, else ``None``.

    ``project_config`` is the output of ``docker compose config --format json``.
    """
    for key, spec in (project_config.get("networks") or {}).items():
        name = (spec or {}).get("name") or f"{project_config.get('name')}_{key}"
        if network in (name, key):
            return key
    return None


def network_name(project_config: dict[str, Any], key: str) -> str:
    """Return the Docker name of the project network ``key`` (its ``name``, else ``<project>_<key>``)."""
    spec = (project_config.get("networks") or {}).get(key) or {}
    return spec.get("name") or f"{project_config.get('name')}_{key}"


def service_networks(project_config: dict[str, Any], service: str) -> dict[str, dict[str, Any]]:
    """Return ``{compose key: endpoint settings}`` of a service's networks (``default`` when it names none).

    A service with ``network_mode`` has no compose networks: ``{}``.
    """
    svc = (project_config.get("services") or {}).get(service) or {}
    if svc.get("network_mode"):
        return {}
    networks = svc.get("networks")
    if networks is None:
        return {"default": {}}
    if isinstance(networks, list):
        return {str(key): {} for key in networks}
    return {str(key): dict(value or {}) for key, value in networks.items()}


def service_dns_names(project_config: dict[str, Any], service: str) -> dict[str, list[str]]:
    """Return ``{Docker network name: [names]}`` under which the service's containers resolve on each network.

    Compose gives every container of a service its service name and container name as aliases on each of its
    networks, plus the ``aliases`` the file lists for that network. Without a ``container_name`` the container
    names are ``<project>-<service>-<n>``; the first one is listed.
    """
    svc = (project_config.get("services") or {}).get(service) or {}
    container = svc.get("container_name") or f"{project_config.get('name')}-{service}-1"
    result: dict[str, list[str]] = {}
    for key, endpoint in service_networks(project_config, service).items():
        names = {service, container, *((endpoint or {}).get("aliases") or [])}
        result[network_name(project_config, key)] = sorted(names)
    return result


def service_for_host(project_config: dict[str, Any], host: str | None) -> str | None:
    """Return the compose service that ``host`` (a ``POSTGRES_HOST``) names, or ``None`` (an external host).

    ``host`` may be the service name, its ``container_name``, one of its aliases or a compose container name
    (``<project>-<service>-<n>``).
    """
    if not host:
        return None
    services = project_config.get("services") or {}
    if host in services:
        return host
    for service in sorted(services):
        names = {name for names in service_dns_names(project_config, service).values() for name in names}
        if host in names or re.fullmatch(
            rf"{re.escape(str(project_config.get('name')))}[-_]{re.escape(service)}[-_]\d+", host
        ):
            return service
    return None


def volume_names(project_config: dict[str, Any]) -> dict[str, str]:
    """Return ``{compose key: Docker name}`` of the project's named volumes (``<project>_<key>`` by default)."""
    return {
        str(key): (spec or {}).get("name") or f"{project_config.get('name')}_{key}"
        for key, spec in (project_config.get("volumes") or {}).items()
    }


# --------------------------------------------------------------------------------------------
# .env editing
# --------------------------------------------------------------------------------------------

_ENV_LINE = re.compile(
    r"^(?P<lead>[ \t]*)(?P<export>export[ \t]+)?(?P<key>[A-Za-z_][A-Za-z0-9_.-]*)(?P<eq>[ \t]*=[ \t]*)"
    r"(?P<rest>.*?)(?P<eol>\r?\n)?$",
    re.DOTALL,
)


def _split_value(rest: str) -> tuple[str, str, str]:
    """Split the part after ``=`` into (quote, value, tail).

    ``quote`` is ``'``, ``"`` or ``''`` (unquoted); ``tail`` keeps whatever followed the value
    (spaces and an inline ``# comment``) byte for byte.
    """
    if rest[:1] in ("'", '"'):
        quote = rest[0]
        index = envfile.find_closing(rest, 1, quote)
        return (quote, rest[1:index], rest[index + 1 :]) if index >= 0 else (quote, rest[1:], "")
    match = re.search(r"[ \t]+#", rest)
    if match:
        value, tail = rest[: match.start()], rest[match.start() :]
    else:
        value, tail = rest, ""
    stripped = value.rstrip(" \t")
    return "", stripped, value[len(stripped) :] + tail


def find_env_line(text: str, key: str) -> tuple[int, dict[str, str]] | None:
    """Return ``(line index, parts)`` of the last assignment of ``key`` in an env file, else ``None``.

    ``parts`` holds ``lead``, ``export``, ``key``, ``eq``, ``quote``, ``value``, ``tail``, ``eol``.
    Compose reads the last assignment when a key repeats, so that is the one that counts.
    """
    found = None
    for index, line in enumerate(text.splitlines(keepends=True)):
        match = _ENV_LINE.match(line)
        if not match or match.group("key") != key:
            continue
        quote, value, tail = _split_value(match.group("rest"))
        found = (
            index,
            {
                "lead": match.group("lead"),
                "export": match.group("export") or "",
                "key": key,
                "eq": match.group("eq"),
                "quote": quote,
                "value": value,
                "tail": tail,
                "eol": match.group("eol") or "",
            },
        )
    return found


def set_env_value(text: str, key: str, value: str) -> str:
    """Return ``text`` with the last assignment of ``key`` set to ``value``.

    The line keeps its indentation, ``export`` prefix, spacing around ``=``, quote style, trailing
    comment and line ending; every other line is unchanged. When ``key`` is absent a line
    ``KEY=value`` is appended (after a newline if the file does not end with one).
    """
    found = find_env_line(text, key)
    if found is None:
        sep = "" if not text or text.endswith("\n") else ("\r\n" if "\r\n" in text else "\n")
        eol = "\r\n" if "\r\n" in text else "\n"
        return f"{text}{sep}{key}={value}{eol}"
    index, parts = found
    lines = text.splitlines(keepends=True)
    quote = parts["quote"]
    lines[index] = (
        f"{parts['lead']}{parts['export']}{key}{parts['eq']}{quote}{value}{quote}{parts['tail']}{parts['eol']}"
    )
    return "".join(lines)


def compose_files_with_override(files: list[str], override: str) -> list[str]:
    """Return ``files`` with ``override`` as the last entry (moved there if it appears earlier)."""
    wanted = os.path.normpath(override)
    kept = [item for item in files if item and os.path.normpath(item) != wanted]
    return [*kept, override]


def planned_env_text(
    text: str, project_dir: str, override: str, separator: str | None = None
) -> tuple[str, str | None, str]:
    """Return ``(new text, old COMPOSE_FILE value or None, new COMPOSE_FILE value)`` for ``.env``.

    The separator is ``COMPOSE_PATH_SEPARATOR`` from the file, else ``:``.
    """
    if separator is None:
        sep_line = find_env_line(text, "COMPOSE_PATH_SEPARATOR")
        separator = (sep_line[1]["value"] if sep_line else "") or ":"
    found = find_env_line(text, "COMPOSE_FILE")
    old = found[1]["value"] if found else None
    files = old.split(separator) if old else envfile.default_compose_files(project_dir)
    new = separator.join(compose_files_with_override(files, override))
    if old == new:
        return text, old, new
    return set_env_value(text, "COMPOSE_FILE", new), old, new


# --------------------------------------------------------------------------------------------
# Files: atomic write, backup
# --------------------------------------------------------------------------------------------


def backup_file(path: str) -> str:
    """Copy ``path`` to ``<path>.<timestamp>.bak`` (mode and times kept) and return the copy's path."""
    stamp = time.strftime("%Y%m%dT%H%M%S", time.localtime())
    target = f"{path}.{stamp}.bak"
    counter = 1
    while os.path.exists(target):
        counter += 1
        target = f"{path}.{stamp}-{counter}.bak"
    shutil.copy2(path, target)
    return target


# --------------------------------------------------------------------------------------------
# Lock
# --------------------------------------------------------------------------------------------


def lock_path(project: str, project_dir: str | None = None) -> str:
    """Return the lock file path for a compose project (same project name -> same lock)."""
    digest = hashlib.sha256(project.encode("utf-8")).hexdigest()[:12]
    safe = re.sub(r"[^A-Za-z0-9_.-]", "_", project)[:40]
    for directory in LOCK_DIRS:
        if os.path.isdir(directory) and os.access(directory, os.W_OK):
            return os.path.join(directory, f"fibreflow-qfc-worker-{safe}-{digest}.lock")
    return os.path.join(project_dir or ".", ".fibreflow-worker.lock")


class ProjectLock:
    """``fcntl.flock`` on a lock file, waiting up to ``timeout`` seconds.

    Used as a context manager. The kernel drops the lock when the process dies, so a killed run
    never leaves a stale lock behind.
    """

    def __init__(self, path: str, timeout: float, poll: float = 0.2) -> None:
        self.path = path
        self.timeout = timeout
        self.poll = poll
        self.waited = 0.0
        self._fd: int | None = None

    def __enter__(self) -> ProjectLock:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        start = time.monotonic()
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError as exc:
                if exc.errno not in (errno.EAGAIN, errno.EACCES):
                    os.close(fd)
                    raise
                if time.monotonic() - start >= self.timeout:
                    os.close(fd)
                    raise LockTimeout(
                        f"another qfc_worker run holds {self.path} for more than lock_timeout={self.timeout:g}s;"
                        " wait for it to finish or raise lock_timeout"
                    ) from None
                time.sleep(self.poll)
        self.waited = time.monotonic() - start
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd
        return self

    def __exit__(self, *exc: object) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None


# --------------------------------------------------------------------------------------------
# docker compose CLI
# --------------------------------------------------------------------------------------------


# Each command is built by a pure function (its arguments after ``docker compose``); :class:`ComposeCli` runs it.
def config_args(hash_service: str | None = None) -> list[str]:
    """``config --format json`` (the effective project), or ``config --hash SERVICE``."""
    return ["config", "--hash", hash_service] if hash_service else ["config", "--format", "json"]


def up_args(service: str, replicas: int, force_recreate: bool = False) -> list[str]:
    """``up -d --no-deps --no-build --pull never [--force-recreate] --scale SERVICE=N SERVICE``: apply the service
    (compose recreates what changed) without building or pulling, so a repair never swaps the image."""
    force = ["--force-recreate"] if force_recreate else []
    return [
        "up",
        "-d",
        "--no-deps",
        "--no-build",
        "--pull",
        "never",
        *force,
        "--scale",
        f"{service}={int(replicas)}",
        service,
    ]


def stop_args(service: str) -> list[str]:
    """``stop SERVICE``: every container of the service, with its grace period."""
    return ["stop", service]


def restart_args(service: str) -> list[str]:
    """``restart SERVICE``."""
    return ["restart", service]


def service_hash(service_config: dict[str, Any]) -> str:
    """Compose v2's configuration hash of a service (the ``com.docker.compose.config-hash`` label) from its entry
    of ``docker compose config --format json``: the SHA-256 of the service's compact JSON, in compose's own key
    order, without ``build``, ``pull_policy``, ``scale``, ``depends_on``, ``profiles`` and ``deploy.replicas``.

    Compose serialises with Go's HTML escaping of ``<``, ``>`` and ``&``. A value that differs from the label is
    not proof of drift: the caller asks compose itself (``config --hash``) before recreating.
    """
    config = {key: value for key, value in service_config.items() if key not in HASH_EXCLUDED}
    if isinstance(config.get("deploy"), dict):
        config["deploy"] = {key: value for key, value in config["deploy"].items() if key != "replicas"}
    text = json.dumps(config, separators=(",", ":"), ensure_ascii=False)
    text = text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


HASH_EXCLUDED = ("build", "pull_policy", "scale", "depends_on", "profiles")


class ComposeCli:
    """Run ``docker compose --project-directory DIR ...`` with the project's ``.env`` in charge.

    Variables of the caller's environment that would shadow ``.env`` (``COMPOSE_FILE`` and friends)
    are removed, so what runs is what a person running ``docker compose`` in the directory gets.
    """

    def __init__(
        self,
        project_dir: str,
        docker_host: str | None = None,
        timeout: float = 120,
        docker_bin: str = "docker",
    ) -> None:
        self.project_dir = project_dir
        self.docker_host = docker_host
        self.timeout = timeout
        self.docker_bin = docker_bin
        self.calls: list[list[str]] = []
        # A `config --format json` started ahead (prefetch_config) and not yet collected.
        self._prefetched: subprocess.Popen | None = None

    def _env(self) -> dict[str, str]:
        env = {key: value for key, value in os.environ.items() if key not in COMPOSE_ENV_VARS}
        if self.docker_host:
            env["DOCKER_HOST"] = self.docker_host
        return env

    def command(self, *args: str, files: list[str] | None = None) -> list[str]:
        """Return the argument vector for ``docker compose`` with ``args``."""
        argv = [self.docker_bin, "compose", "--project-directory", self.project_dir]
        for name in files or []:
            argv += ["-f", name]
        return [*argv, *args]

    def prefetch_config(self) -> None:
        """Start ``docker compose config --format json`` now, so that it runs while the caller reads the engine;
        the next :meth:`config` without files or stdin takes its output (errors are raised there)."""
        argv = self.command(*config_args())
        try:
            self._prefetched = subprocess.Popen(
                argv,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                env=self._env(),
                cwd=self.project_dir,
            )
        except OSError:
            self._prefetched = None  # config() runs it again and reports why it cannot
        else:
            self.calls.append(argv)

    def run(
        self,
        *args: str,
        files: list[str] | None = None,
        stdin: str | None = None,
        timeout: float | None = None,
    ) -> str:
        """Run compose and return its stdout; raise :class:`ComposeError` on a non-zero exit."""
        argv = self.command(*args, files=files)
        limit = timeout or self.timeout
        proc, self._prefetched = self._prefetched, None
        if proc is not None and (list(args) != config_args() or files or stdin is not None):
            proc.kill()  # not what was asked for after all
            proc.communicate()
            proc = None
        try:
            if proc is None:
                self.calls.append(argv)
                proc = subprocess.Popen(
                    argv,
                    stdin=subprocess.PIPE if stdin is not None else subprocess.DEVNULL,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                    text=True,
                    env=self._env(),
                    cwd=self.project_dir,
                )
            try:
                stdout, stderr = proc.communicate(input=stdin, timeout=limit)
            except subprocess.TimeoutExpired as exc:
                proc.kill()
                proc.communicate()
                raise ComposeError(f"'{' '.join(argv)}' did not finish within {limit:g}s") from exc
        except FileNotFoundError as exc:
            raise ComposeError(f"cannot run '{self.docker_bin}': {exc}") from exc
        if proc.returncode != 0:
            message = (stderr or stdout or "").strip()
            raise ComposeError(f"'{' '.join(argv)}' failed (exit {proc.returncode}): {message}")
        return stdout

    def config(self, files: list[str] | None = None, stdin: str | None = None) -> dict[str, Any]:
        """Return the effective project configuration (``docker compose config --format json``)."""
        return json.loads(self.run(*config_args(), files=files, stdin=stdin))

    def config_hash(self, service: str, files: list[str] | None = None, stdin: str | None = None) -> str:
        """Return compose's configuration hash of ``service`` (the ``com.docker.compose.config-hash`` label)."""
        out = self.run(*config_args(service), files=files, stdin=stdin)
        for line in out.splitlines():
            parts = line.split()
            if len(parts) == 2 and parts[0] == service:
                return parts[1]
        raise ComposeError(f"'docker compose config --hash {service}' printed no hash for {service!r}")

    def shell_command(self, *args: str) -> str:
        """Return ``docker compose ARGS`` as a person types it (compose 2.26 resolves ``COMPOSE_FILE`` from
        the current directory, so the command changes into the project directory first)."""
        return f"cd {shlex.quote(self.project_dir)} && docker compose {' '.join(shlex.quote(a) for a in args)}"

    def build_command(self, service: str) -> str:
        """Return the command a person runs to build the service's image."""
        return self.shell_command("build", service)

    def pull_command(self, service: str) -> str:
        """Return the command a person runs to fetch the service's prebuilt image."""
        return self.shell_command("pull", service)

    def image_command(self, service: str, service_config: dict[str, Any] | None) -> str:
        """Return the command that provides the service's image: ``pull`` for a prebuilt image (``image:`` and no
        ``build:``), else ``build``. A prebuilt image is never replaced by a local build."""
        config = service_config or {}
        if str(config.get("image") or "").strip() and not config.get("build"):
            return self.pull_command(service)
        return self.build_command(service)
