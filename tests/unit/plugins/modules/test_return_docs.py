# SPDX-License-Identifier: GPL-3.0-or-later
"""The RETURN documentation of qfc_sync_facts and qfc_worker: complete, typed, sampled and free of secrets.

The RETURN strings are read from the module files with ``ast`` (the modules are not imported). What the docs must
cover comes from three places: the keys the code sets (read from ``sync_facts.py`` and the worker's plan, apply and
drain units with ``ast``), the healthy facts of ``builders.HEALTHY``, and the keys a real run on the stand-in stack
returned (``REAL_RUN_KEYS``, recorded from healthy and broken stand-in runs when these docs were written).
"""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Any

import pytest
import yaml
from builders import HEALTHY

from ansible_collections.fibreflow.qfieldcloud.plugins.module_utils.redact import MASK, is_secret_key, redact

ROOT = Path(__file__).resolve().parents[4]
MODULES = ROOT / "plugins" / "modules"
UTILS = ROOT / "plugins" / "module_utils"
MODULE_NAMES = ("qfc_sync_facts", "qfc_worker")
TYPES = {"bool": bool, "dict": dict, "float": (int, float), "int": int, "list": list, "str": str}

# Keys per section of ansible_facts.qfc_sync seen in stand-in runs (healthy, worker-not-root, a worker started by
# hand, a job running, a job orphaned by a killed replica). ``services.*`` is any service's entry.
REAL_RUN_KEYS = {
    "": [
        "api_calls", "app", "checks_skipped", "client", "cron", "daemon", "database", "duration_s", "images",
        "job_containers", "job_network", "orphan_job_containers", "project", "queue", "services",
        "shared_environment", "thresholds", "worker", "worker_timeout",
    ],
    "app": ["checked", "duration_s", "host_header", "http_status", "ok", "reachable", "status", "url"],
    "client": [
        "alternatives", "checked", "connect_host", "connect_port", "duration_s", "host", "host_header", "host_source",
        "http_status", "local_host", "nginx_host", "ok", "public_port", "reachable", "scheme", "url", "via",
    ],
    "cron": [
        "app_created_at", "checked", "last_run", "last_run_age_s", "last_run_code", "last_run_success",
        "log_readable", "ofelia_present", "ofelia_running", "ofelia_stale", "ofelia_started_at", "ofelia_up_s",
    ],
    "daemon": ["api_version", "docker_host", "os", "reachable", "version"],
    "database": [
        "address_from", "checked", "configured_host", "duration_s", "error", "error_kind", "generation", "host",
        "in_recovery", "job_timeout_s", "job_timeout_source", "lock_column", "migrations_applied", "missing_tables",
        "name", "port", "reachable", "round_trips", "server_version", "tables_present", "user",
    ],
    "images": ["app", "qgis", "worker"],
    "images.qgis": ["id", "name", "present", "variable"],
    "job_containers": ["created", "id", "image", "job_id", "name", "project_id", "running", "state", "status", "type"],
    "orphan_job_containers": [
        "created", "id", "image", "job_id", "job_status", "name", "project_id", "reason", "running", "state",
        "status", "type",
    ],
    "project": [
        "compose_files", "database_service", "dir", "env_file", "environment", "job_network", "job_network_source",
        "name", "name_source", "network",
    ],
    "queue": [
        "checked", "claimable_pending", "counts", "counts_by_status", "counts_by_type", "failed_last_hour",
        "finished_last_hour", "in_flight_jobs", "locked_projects", "oldest_claimable_pending_age_s",
        "oldest_pending_age_s", "overdue_jobs", "overdue_queued", "overdue_started", "pending_deltas",
        "qgis4_projects", "read_at",
    ],
    "services.*": [
        "containers", "created", "health", "image", "image_id", "ports", "present", "restart_count", "running",
        "started_at", "state",
    ],
    "thresholds": [
        "crash_restarts", "crash_window_s", "cron_max_age_s", "job_timeout_s", "job_timeout_source", "pending_age_s",
    ],
    "worker": [
        "expected", "hand_started", "hand_started_running", "replicas", "replicas_expected", "replicas_healthy",
        "replicas_running", "service",
    ],
    "worker.replicas": [
        "command", "compose", "created", "drift", "entrypoint", "env_keys", "exit_code", "finished_at", "hardening",
        "health", "healthy_now", "id", "image", "image_id", "image_user", "ips", "last_exit_age_s", "log",
        "log_excerpt", "log_tail", "mounts", "name", "networks", "number", "ports", "postgres_host",
        "published_ports", "recent_deaths", "restart_count", "restart_policy", "restarting", "running", "service",
        "socket_mount", "started_at", "state", "user",
    ],
    "worker.hand_started": [
        "breaks_jobs", "command", "compose", "created", "drift", "entrypoint", "env_keys", "exit_code", "finished_at",
        "gaps", "hardening", "health", "healthy_now", "id", "image", "image_id", "image_user", "ips",
        "last_exit_age_s", "log", "log_excerpt", "log_tail", "mounts", "name", "networks", "number", "ports",
        "postgres_host", "published_ports", "recent_deaths", "restart_count", "restart_policy", "restarting",
        "running", "service", "socket_mount", "started_at", "state", "user",
    ],
}  # fmt: skip
# Lists whose entries hold the fields of another list plus their own (the docs say so and document only theirs).
EXTENDS = {"worker.hand_started": "worker.replicas", "orphan_job_containers": "job_containers"}

# Keys qfc_worker returned in stand-in runs (check mode, real runs, a broken stack, a failure), beside Ansible's own.
REAL_WORKER_KEYS = [
    "actions", "backup_file", "build_command", "code", "compose_file", "db_host", "diff", "drain_waited_s", "drift",
    "hand_started", "hand_started_gaps", "image", "image_command", "image_missing", "lock_waited_s", "mode",
    "network", "option", "orphaned_jobs", "override_file", "project_name", "qgis_network_missing", "replicas",
    "service", "stopped",
]  # fmt: skip
# Set with a computed key (``{key: command}``) in worker_plan.py, so the ast scan below cannot see them.
WORKER_COMPUTED_KEYS = {"build_command", "pull_command"}
# Keys of the result that Ansible documents itself.
ANSIBLE_KEYS = {"changed", "failed", "msg", "warnings", "exception", "invocation"}


def return_docs(module: str) -> dict[str, Any]:
    """The parsed RETURN YAML of a module file."""
    tree = ast.parse((MODULES / f"{module}.py").read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "RETURN" for t in node.targets):
            return yaml.safe_load(node.value.value)
    raise AssertionError(f"{module} has no RETURN")


def walk(docs: dict[str, Any], path: str = ""):
    """Yield ``(path, spec)`` for every documented key, depth first."""
    for key, spec in docs.items():
        here = f"{path}.{key}" if path else key
        yield here, spec
        yield from walk(spec.get("contains") or {}, here)


def contains(docs: dict[str, Any], path: str) -> dict[str, Any]:
    """The ``contains`` of the key at a dotted path."""
    node = {"contains": docs}
    for part in path.split("."):
        node = node["contains"][part]
    return node.get("contains") or {}


def facts_docs() -> dict[str, Any]:
    return contains(return_docs("qfc_sync_facts"), "ansible_facts.qfc_sync")


def _subscript_key(node: ast.AST) -> str | None:
    if isinstance(node, ast.Subscript) and isinstance(node.slice, ast.Constant) and isinstance(node.slice.value, str):
        return node.slice.value
    return None


def _is_name(node: ast.AST, name: str) -> bool:
    return isinstance(node, ast.Name) and node.id == name


def sync_facts_keys() -> tuple[set[str], set[str]]:
    """Sections of the facts and keys of ``project`` that ``sync_facts.py`` sets (``facts["x"] = ...``, the dict
    literal ``gather`` starts from, ``facts["project"]["x"] = ...``)."""
    tree = ast.parse((UTILS / "sync_facts.py").read_text())
    sections: set[str] = set()
    project: set[str] = set()
    for node in ast.walk(tree):
        targets: list[ast.AST] = []
        if isinstance(node, ast.Assign):
            targets = list(node.targets)
        elif isinstance(node, ast.AnnAssign):
            targets = [node.target]
        for target in targets:
            key = _subscript_key(target)
            if key and _is_name(target.value, "facts"):
                sections.add(key)
            elif key and _subscript_key(target.value) == "project" and _is_name(target.value.value, "facts"):
                project.add(key)
            if _is_name(target, "facts") and isinstance(node.value, ast.Dict):
                for k, v in zip(node.value.keys, node.value.values, strict=True):
                    sections.add(k.value)
                    if k.value == "project" and isinstance(v, ast.Dict):
                        project.update(item.value for item in v.keys)
    return sections, project


def worker_result_keys() -> set[str]:
    """Keys the worker's plan, applier and drainer put into the result's details (``...["details"]["x"]``,
    ``["details"].update({...})``, ``.setdefault("x")``, ``details["x"]``)."""
    keys: set[str] = set()
    for name in ("worker_plan.py", "worker_apply.py", "drain.py"):
        for node in ast.walk(ast.parse((UTILS / name).read_text())):
            if isinstance(node, ast.Subscript) and (
                _subscript_key(node.value) == "details" or _is_name(node.value, "details")
            ):
                key = _subscript_key(node)
                if key:
                    keys.add(key)
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
                owner = node.func.value
                if _subscript_key(owner) != "details" or not node.args:
                    continue
                arg = node.args[0]
                if node.func.attr == "update" and isinstance(arg, ast.Dict):
                    keys.update(k.value for k in arg.keys if isinstance(k, ast.Constant))
                if node.func.attr == "setdefault" and isinstance(arg, ast.Constant):
                    keys.add(arg.value)
    return keys


def test_the_scans_find_what_they_look_for():
    sections, project = sync_facts_keys()
    assert {"project", "daemon", "worker", "database", "queue", "cron", "orphan_job_containers"} <= sections
    assert {"name", "dir", "compose_files", "database_service"} <= project
    wanted = {"mode", "project_name", "replicas", "stopped", "drain_waited_s", "hand_started_gaps"}
    assert wanted <= worker_result_keys()


@pytest.mark.parametrize("module", MODULE_NAMES)
def test_every_documented_key_has_description_type_and_sample(module):
    problems = []
    for path, spec in walk(return_docs(module)):
        if not spec.get("description"):
            problems.append(f"{path}: no description")
        kind = spec.get("type")
        if kind not in TYPES and kind != "raw":
            problems.append(f"{path}: type {kind!r}")
            continue
        if kind in ("list", "dict") and spec.get("contains"):
            pass
        elif "sample" not in spec:
            problems.append(f"{path}: no sample")
        if kind == "list" and not spec.get("elements"):
            problems.append(f"{path}: a list without elements")
        sample = spec.get("sample")
        if sample is None or kind == "raw":
            continue
        if not isinstance(sample, TYPES[kind]) or (kind in ("int", "float") and isinstance(sample, bool)):
            problems.append(f"{path}: sample {sample!r} is not a {kind}")
        elif kind == "list" and spec.get("elements") in TYPES:
            bad = [item for item in sample if not isinstance(item, TYPES[spec["elements"]])]
            if bad:
                problems.append(f"{path}: sample items {bad!r} are not {spec['elements']}")
    assert problems == []


@pytest.mark.parametrize("module", MODULE_NAMES)
def test_top_level_keys_say_when_they_are_returned(module):
    assert [key for key, spec in return_docs(module).items() if not spec.get("returned")] == []


@pytest.mark.parametrize("module", MODULE_NAMES)
def test_no_sample_holds_a_secret(module):
    leaks = []
    for path, spec in walk(return_docs(module)):
        name = path.rsplit(".", 1)[-1]
        if is_secret_key(name) and spec.get("sample") not in (None, MASK):
            leaks.append(f"{path}: secret-looking key with sample {spec['sample']!r}")
        if "sample" in spec and redact(spec["sample"]) != spec["sample"]:
            leaks.append(f"{path}: sample holds a secret-looking value")
    assert leaks == []


def test_the_secret_check_catches_a_leak():
    assert redact({"POSTGRES_PASSWORD": "hunter22"}) != {"POSTGRES_PASSWORD": "hunter22"}
    assert redact(["SECRET_KEY=abcdef123"]) != ["SECRET_KEY=abcdef123"]
    assert redact("postgres://qfc:pa55word@db/qfc") != "postgres://qfc:pa55word@db/qfc"


def test_qfc_sync_documents_exactly_the_sections_the_code_sets():
    sections = sync_facts_keys()[0]
    assert set(facts_docs()) == sections


def test_qfc_sync_project_documents_every_key_the_code_sets():
    project = sync_facts_keys()[1]
    assert project - set(contains(facts_docs(), "project")) == set()


def _undocumented(result: dict[str, Any], docs: dict[str, Any], path: str) -> list[str]:
    return [f"{path}.{key}" for key in result if key not in docs]


def test_qfc_sync_documents_every_key_of_the_healthy_facts():
    docs = facts_docs()
    missing = _undocumented(HEALTHY, docs, "qfc_sync")
    for section, value in HEALTHY.items():
        if section not in docs or not isinstance(value, dict):
            continue
        if section == "services":
            for service in value.values():
                missing += _undocumented(service, contains(docs, "services"), "services.*")
            continue
        missing += _undocumented(value, contains(docs, section), section)
    for replica in HEALTHY["worker"]["replicas"]:
        missing += _undocumented(replica, contains(docs, "worker.replicas"), "worker.replicas")
    for image in HEALTHY["images"]["qgis"]:
        missing += _undocumented(image, contains(docs, "images.qgis"), "images.qgis")
    assert missing == []


@pytest.mark.parametrize("path", sorted(REAL_RUN_KEYS))
def test_qfc_sync_documents_every_key_a_real_run_returned(path):
    docs = facts_docs()
    if path == "":
        documented = set(docs)
    elif path == "services.*":
        documented = set(contains(docs, "services"))
    else:
        documented = set(contains(docs, path))
    if path in EXTENDS:
        documented |= set(contains(docs, EXTENDS[path]))
    assert set(REAL_RUN_KEYS[path]) - documented == set()


def test_qfc_sync_sections_and_lists_of_dicts_have_contains():
    docs = facts_docs()
    flat = [name for name, spec in docs.items() if spec["type"] == "dict" and not spec.get("contains")]
    # Small sections whose keys the description names (or keyed by names, such as api_calls' call kinds).
    assert sorted(flat) == ["api_calls", "job_network", "worker_timeout"]
    for path in ("worker.replicas", "worker.hand_started", "images.qgis"):
        assert contains(docs, path), path
    assert contains(return_docs("qfc_sync_facts"), "problems")


def test_qfc_worker_documents_every_key_it_returns():
    docs = set(return_docs("qfc_worker"))
    assert set(REAL_WORKER_KEYS) - docs == set()
    assert worker_result_keys() - docs == set()
    # No documented key that nothing sets any more.
    code_keys = worker_result_keys() | WORKER_COMPUTED_KEYS | {"drift", "actions", "diff", "code", "option"}
    assert docs - code_keys - ANSIBLE_KEYS == set()
