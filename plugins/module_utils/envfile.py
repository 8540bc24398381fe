# Copyright (c) 2025, fibreflow
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Read a compose project's ``.env`` the way ``docker compose`` does, and resolve the project settings.

Public API (pure Python, no Docker):

- :func:`parse_env` ``(text) -> dict``: parse ``.env`` text.
- :func:`read_env` ``(path) -> dict``: parse a ``.env`` file (``{}`` when it does not exist).
- :func:`normalise_project_name` ``(name) -> str``: compose's project-name normalisation.
- :func:`project_settings` ``(project_dir, project_name=None) -> dict``: what the collection needs to
  know about the project (name, compose files, worker replicas, network, timeouts), without secrets.

Parsing rules (those of compose v2's dotenv reader that matter in practice): blank lines and lines
starting with ``#`` are ignored; an optional ``export`` prefix is dropped; ``KEY=VALUE`` with
whitespace around the key and unquoted values trimmed; an unquoted value ends at `` #`` (inline comment);
single-quoted values are literal; double-quoted values understand ``\\n``, ``\\t``, ``\\"``, ``\\\\`` and
may span lines; ``$VAR``, ``${VAR}``, ``${VAR:-default}`` and ``${VAR-default}`` in unquoted and
double-quoted values are replaced with earlier values of the same file; the last duplicate wins.
"""

from __future__ import annotations

import os
import re
from typing import Any

try:  # PyYAML is not always on a server's Python: without it the compose files are not checked here
    import yaml

    HAS_YAML = True
except ImportError:  # pragma: no cover - depends on the host
    HAS_YAML = False

# The tags compose adds to YAML for merging override files: ``!reset`` (drop what earlier files set) and
# ``!override`` (replace instead of merge). A syntax check must take them as the values they tag.
COMPOSE_YAML_TAGS = ("!reset", "!override")

if HAS_YAML:

    class _ComposeLoader(yaml.SafeLoader):  # pylint: disable=too-many-ancestors
        """PyYAML's safe loader that also reads compose's merge tags."""

    def _tagged(loader, node):
        if isinstance(node, yaml.MappingNode):
            return loader.construct_mapping(node)
        if isinstance(node, yaml.SequenceNode):
            return loader.construct_sequence(node)
        return loader.construct_scalar(node)

    for _tag in COMPOSE_YAML_TAGS:
        _ComposeLoader.add_constructor(_tag, _tagged)

DEFAULT_PROJECT_NAME = "qfieldcloud"
DEFAULT_WORKER_REPLICAS = 1
DEFAULT_WORKER_TIMEOUT_S = 600
DEFAULT_COMPOSE_FILES = ("compose.yaml", "compose.yml", "docker-compose.yaml", "docker-compose.yml")
QGIS_IMAGE_VARIABLES = (
    "QFIELDCLOUD_QGIS3_IMAGE_NAME",
    "QFIELDCLOUD_QGIS4_IMAGE_NAME",
    "QFIELDCLOUD_QGIS_IMAGE_NAME",
)

_KEY_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_.\-]*$")
_VAR_RE = re.compile(
    r"\$(?:\{(?P<braced>[A-Za-z_][A-Za-z0-9_]*)(?P<op>:?-)?(?P<default>[^}]*)\}|(?P<plain>[A-Za-z_][A-Za-z0-9_]*))"
)
_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", '"': '"', "\\": "\\", "$": "$"}


def _interpolate(value: str, known: dict[str, str]) -> str:
    def repl(match: re.Match) -> str:
        name = match.group("braced") or match.group("plain")
        current = known.get(name)
        op = match.group("op")
        if op == ":-" and not current:
            return match.group("default") or ""
        if op == "-" and current is None:
            return match.group("default") or ""
        return current or ""

    return _VAR_RE.sub(repl, value)


def _unescape_double(raw: str) -> str:
    out = []
    i = 0
    while i < len(raw):
        char = raw[i]
        if char == "\\" and i + 1 < len(raw) and raw[i + 1] in _ESCAPES:
            out.append(_ESCAPES[raw[i + 1]])
            i += 2
            continue
        out.append(char)
        i += 1
    return "".join(out)


def find_closing(text: str, start: int, quote: str) -> int:
    """Return the index of the closing ``quote`` after ``start``, or -1."""
    i = start
    while i < len(text):
        char = text[i]
        if quote == '"' and char == "\\":
            i += 2
            continue
        if char == quote:
            return i
        i += 1
    return -1


def parse_env(text: str) -> dict[str, str]:
    """Parse ``.env`` text into a dict (see the module docstring for the rules).

    Malformed lines (no ``=``, invalid key) are skipped, as compose would refuse them rather than
    guess; this function is used for reading, never for validation.
    """
    result: dict[str, str] = {}
    pos = 0
    length = len(text)
    while pos < length:
        end = text.find("\n", pos)
        if end == -1:
            end = length
        line = text[pos:end]
        next_pos = end + 1
        stripped = line.strip()
        if not stripped or stripped.startswith("#") or "=" not in stripped:
            pos = next_pos
            continue
        if stripped.startswith("export ") or stripped.startswith("export\t"):
            stripped = stripped[len("export") :].lstrip()
        key, _sep, rest = stripped.partition("=")
        key = key.strip()
        if not _KEY_RE.match(key):
            pos = next_pos
            continue
        rest = rest.lstrip()
        if rest[:1] in ("'", '"'):
            quote = rest[0]
            # The value may continue on the following lines: search in the whole remaining text.
            offset = pos + line.index(quote)
            close = find_closing(text, offset + 1, quote)
            if close == -1:
                # Unterminated quote: take the rest of the line literally, like a lenient reader.
                value = rest[1:]
            else:
                raw = text[offset + 1 : close]
                value = raw if quote == "'" else _interpolate(_unescape_double(raw), result)
                line_end = text.find("\n", close)
                next_pos = length if line_end == -1 else line_end + 1
        else:
            comment = re.search(r"\s#", rest)
            if comment:
                rest = rest[: comment.start()]
            value = _interpolate(rest.strip(), result)
        result[key] = value
        pos = next_pos
    return result


def read_env(path: str) -> dict[str, str]:
    """Read and parse a ``.env`` file; return ``{}`` when it does not exist."""
    try:
        with open(path, encoding="utf-8") as handle:
            return parse_env(handle.read())
    except FileNotFoundError:
        return {}


def normalise_project_name(name: str) -> str:
    """Normalise a project name like compose v2: lower case, keep ``[a-z0-9_-]``, no leading ``_``/``-``."""
    kept = "".join(re.findall(r"[a-z0-9_\-]", name.lower()))
    return kept.lstrip("_-")


def _compose_name_from_file(path: str) -> str | None:
    """Return the top-level ``name:`` of a compose file, when it has a literal one."""
    try:
        with open(path, encoding="utf-8") as handle:
            for line in handle:
                match = re.match(r"^name:\s*['\"]?([^'\"#\s]+)['\"]?\s*(#.*)?$", line.rstrip("\n"))
                if match and "$" not in match.group(1):
                    return match.group(1)
    except OSError:
        return None
    return None


_SERVICE_KEY = re.compile(r"^(\s+)([A-Za-z0-9._-]+):\s*(#.*)?$")
_IMAGE_KEY = re.compile(r"^(\s+)image:\s*(.+?)\s*(#.*)?$")
_VARIABLE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?])([^}]*))?\}|\$([A-Za-z_][A-Za-z0-9_]*)")


def interpolate(value: str, env: dict[str, str]) -> str:
    """Expand ``${VAR}``, ``${VAR:-default}``, ``${VAR-default}`` and ``$VAR`` as compose does (``$$`` is ``$``)."""

    def expand(match: re.Match) -> str:
        name = match.group(1) or match.group(4)
        op, default = match.group(2), match.group(3) or ""
        current = env.get(name)
        if op == ":-":
            return current if current else default
        if op == "-":
            return default if current is None else current
        return current or ""

    return "\0".join(_VARIABLE.sub(expand, part) for part in value.split("$$")).replace("\0", "$")


def compose_services(files: list[str], env: dict[str, str]) -> dict[str, str | None]:
    """Each service the compose files define (later files add to earlier ones), with its ``image:`` interpolated
    with ``env`` (``None`` without one: compose names its build ``<project>-<service>``; a later file's image wins).

    A line reader, not a YAML parser (PyYAML is not always on a server's Python): services are the keys one level
    below the top-level ``services:``, images the ``image:`` keys one level below a service key.
    """
    services: dict[str, str | None] = {}
    for path in files:
        try:
            with open(path, encoding="utf-8") as handle:
                lines = handle.read().splitlines()
        except OSError:
            continue
        in_services, service, service_indent, child_indent = False, None, 0, None
        for line in lines:
            if not line.strip() or line.lstrip().startswith("#"):
                continue
            if not line[0].isspace():
                in_services = line.split("#")[0].strip() == "services:"
                service = None
                continue
            if not in_services:
                continue
            indent = len(line) - len(line.lstrip())
            key = _SERVICE_KEY.match(line)
            if key and (service is None or indent <= service_indent):
                service, service_indent, child_indent = key.group(2), indent, None
                services.setdefault(service, None)
                continue
            if service and child_indent is None and indent > service_indent:
                child_indent = indent  # the indent of the service's own keys
            image = _IMAGE_KEY.match(line)
            if service and image and indent == child_indent:
                value = image.group(2).strip().strip("'\"")
                if value:
                    services[service] = interpolate(value, env)
    return services


def compose_yaml_error(files: list[str]) -> str | None:
    """Why the compose files are not YAML compose can read (the first file that fails, and where), or ``None``.

    Syntax only: compose itself checks the schema and the interpolation when it runs. Call it only with
    :data:`HAS_YAML`.
    """
    for path in files:
        try:
            with open(path, encoding="utf-8") as handle:
                doc = yaml.load(handle, Loader=_ComposeLoader)  # a SafeLoader that also reads two tags
        except OSError as exc:
            return f"{path}: {exc.strerror or exc}"
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
            return f"{path}: not valid YAML{where}: {getattr(exc, 'problem', None) or exc}"
        if doc is not None and not isinstance(doc, dict):
            return f"{path}: not a compose file (its top level is not a mapping)"
    return None


def compose_service_images(files: list[str], env: dict[str, str]) -> dict[str, str]:
    """The ``image:`` of each service of the compose files that has one (:func:`compose_services`)."""
    return {name: image for name, image in compose_services(files, env).items() if image}


def _as_int(value: str | None, default: int) -> int:
    try:
        return int(str(value).strip())
    except (TypeError, ValueError):
        return default


def default_compose_files(project_dir: str) -> list[str]:
    """The files compose reads when ``COMPOSE_FILE`` is unset, relative to ``project_dir``: the first of
    :data:`DEFAULT_COMPOSE_FILES` that exists, and its ``.override`` file when that exists too."""
    for name in DEFAULT_COMPOSE_FILES:
        if os.path.isfile(os.path.join(project_dir, name)):
            stem, ext = os.path.splitext(name)
            override = f"{stem}.override{ext}"
            return [name, override] if os.path.isfile(os.path.join(project_dir, override)) else [name]
    return []


def compose_files(project_dir: str, env: dict[str, str]) -> list[str]:
    """The compose files of the project as absolute paths (``COMPOSE_FILE`` or compose's defaults)."""
    raw = env.get("COMPOSE_FILE", "")
    if raw.strip():
        separator = env.get("COMPOSE_PATH_SEPARATOR") or ":"
        names = [part.strip() for part in raw.split(separator) if part.strip()]
    else:
        names = default_compose_files(project_dir)
    return [os.path.normpath(os.path.join(project_dir, name)) for name in names]


def read_text(path: str) -> str | None:
    """The text of ``path`` as it is on disk (line endings kept), or ``None`` when it does not exist."""
    try:
        with open(path, encoding="utf-8", newline="") as handle:
            return handle.read()
    except FileNotFoundError:
        return None


def load_project(project_dir: str | None, project_name: str | None = None) -> dict[str, Any]:
    """Read the project once: :func:`project_settings` plus ``env_text`` (the ``.env`` text, ``None`` when
    absent) and ``dotenv`` (its parsed values). Both hold secrets: for the caller's use, never returned as is."""
    text = None
    if project_dir:
        project_dir = os.path.abspath(project_dir)
        text = read_text(os.path.join(project_dir, ".env"))
    dotenv = parse_env(text.replace("\r\n", "\n")) if text is not None else {}
    settings = project_settings(project_dir, project_name, dotenv if text is not None else None)
    return {**settings, "env_text": text, "dotenv": dotenv, "env_stat": _stat(project_dir)}


def _stat(project_dir: str | None) -> tuple[int, int, int] | None:
    try:
        found = os.stat(os.path.join(project_dir, ".env")) if project_dir else None
    except OSError:
        return None
    return (found.st_ino, found.st_mtime_ns, found.st_size) if found else None


def env_changed(project: dict[str, Any]) -> bool:
    """Whether ``.env`` changed since :func:`load_project` read it (another run replaced it meanwhile)."""
    return _stat(project.get("project_dir")) != project.get("env_stat")


def project_settings(
    project_dir: str | None, project_name: str | None = None, env: dict[str, str] | None = None
) -> dict[str, Any]:
    """Resolve what the collection needs to know about a compose project.

    :param project_dir: the compose project directory (holding ``.env``), or ``None``.
    :param project_name: an explicit project name; wins over ``COMPOSE_PROJECT_NAME``.
    :param env: the parsed ``.env`` when the caller read it already (:func:`load_project`); else it is read here.
    :returns: a dict with ``project_name``, ``project_name_source`` (``argument``, ``env``,
        ``compose_file``, ``directory`` or ``default``), ``project_dir``, ``env_file`` (path or
        ``None``), ``compose_files``, ``path_separator``, ``worker_replicas``, ``default_network`` (the project's
        ``<name>_default``, where the worker and the database are), ``job_network`` (the QGIS job containers'
        network: ``QFIELDCLOUD_DEFAULT_NETWORK`` or the default network), ``job_network_source``,
        ``worker_timeout_s``, ``worker_timeout_raw``, ``services`` (the services the compose files define,
        sorted), ``service_images`` (service -> the ``image:`` of the compose files), ``environment``,
        ``qgis_images`` (variable -> image name) and ``postgres`` (``host``, ``port``, ``db``, ``user``; never the
        password). No secret values.
    """
    env_file = None
    if project_dir:
        project_dir = os.path.abspath(project_dir)
        candidate = os.path.join(project_dir, ".env")
        if env is not None or os.path.exists(candidate):
            env_file = candidate
            env = read_env(candidate) if env is None else env
    env = env or {}

    files = compose_files(project_dir, env) if project_dir else []
    if project_name:
        name, source = project_name, "argument"
    elif env.get("COMPOSE_PROJECT_NAME", "").strip():
        name, source = env["COMPOSE_PROJECT_NAME"].strip(), "env"
    else:
        from_file = None
        for path in files:
            from_file = _compose_name_from_file(path) or from_file
        if from_file:
            name, source = from_file, "compose_file"
        elif project_dir:
            name, source = os.path.basename(project_dir.rstrip(os.sep)), "directory"
        else:
            name, source = DEFAULT_PROJECT_NAME, "default"
    name = normalise_project_name(name)

    # The project's default network is where compose puts every service, the worker and the database
    # included. QFIELDCLOUD_DEFAULT_NETWORK only names the network of the QGIS job containers (empty: the
    # project's default network); it is never the worker's own network.
    network = f"{name}_default"
    job_network = env.get("QFIELDCLOUD_DEFAULT_NETWORK", "").strip() or network
    timeout_raw = env.get("QFIELDCLOUD_WORKER_TIMEOUT_S")
    services = compose_services(files, env)
    return {
        "project_name": name,
        "project_name_source": source,
        "project_dir": project_dir,
        "env_file": env_file,
        "compose_files": files,
        "path_separator": env.get("COMPOSE_PATH_SEPARATOR") or ":",
        "worker_replicas": max(0, _as_int(env.get("QFIELDCLOUD_WORKER_REPLICAS"), DEFAULT_WORKER_REPLICAS)),
        "default_network": network,
        "job_network": job_network,
        "job_network_source": "QFIELDCLOUD_DEFAULT_NETWORK" if job_network != network else "default",
        "worker_timeout_s": _as_int(timeout_raw, DEFAULT_WORKER_TIMEOUT_S),
        # None: absent from .env; "": present but empty (v26.24+ compose files then crash app and worker).
        "worker_timeout_raw": None if timeout_raw is None else timeout_raw.strip(),
        "environment": env.get("ENVIRONMENT") or None,
        "qgis_images": {var: env[var] for var in QGIS_IMAGE_VARIABLES if env.get(var)},
        "services": sorted(services),
        "service_images": {name: image for name, image in services.items() if image},
        "postgres": {
            "host": env.get("POSTGRES_HOST") or None,
            "port": _as_int(env.get("POSTGRES_PORT"), 5432),
            "db": env.get("POSTGRES_DB") or None,
            "user": env.get("POSTGRES_USER") or None,
        },
    }
