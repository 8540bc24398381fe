# Copyright (c) 2025, fibreflow
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
# ruff: noqa: E402  (Ansible plugins keep DOCUMENTATION before the imports)

from __future__ import annotations

DOCUMENTATION = r"""
---
name: drift_report
type: aggregate
short_description: Write a JSON and Markdown drift report of a QFieldCloud run, for people and schedulers
version_added: 0.1.0
description:
  - Collects, across all hosts of a run, the C(problems) of M(fibreflow.qfieldcloud.qfc_sync_facts), the C(drift)
    and C(actions) of M(fibreflow.qfieldcloud.qfc_worker), the changed tasks of the roles, the result of the
    C(fibreflow.qfieldcloud.verify) role, and the hosts that failed or could not be reached.
  - At the end of the run it writes C(drift-report.json) (a versioned document, see C(schema_version)) and
    C(drift-report.md) (a Markdown summary) into O(output_dir).
  - "Each host gets an outcome: V(ok) (nothing found, nothing changed), V(drift) (problems, drift items or changed
    tasks: in check mode what would change, in a real run what was found and corrected) or V(error) (a task failed
    or the host was unreachable). The run's outcome is the worst of its hosts, and C(exit_status) in the JSON
    document maps it to the scheduler contract: V(0) ok, V(2) drift, V(1) error."
  - "Apart from the outcome, each host has a C(verdict) from the last M(fibreflow.qfieldcloud.qfc_sync_facts) of the
    run: C(sync) (V(true) when a job created now would finish) and C(client) (V(true) when devices reach the server at
    the URL they are given), each with the codes that block it. C(summary.sync_blocked) and
    C(summary.client_blocked) count the hosts where each fails."
  - "Each item has C(code) (a problem code of the catalogue in C(docs/problems.md)), C(field), C(expected),
    C(actual), C(remedy), and C(corrected): true only in a real run when the fix was applied and a later
    M(fibreflow.qfieldcloud.qfc_sync_facts) no longer reports the code; always false in check mode."
  - "An item also has the C(evidence) of its problem; for a worker problem that includes C(log), the last lines of the
    worker's log that explain it (bounded, secrets masked), which the Markdown summary shows under the host."
  - Secrets are masked with the collection's C(redact) module_utils (by key name, by the values of secret-looking
    variables of the play and its hosts, and by passwords in URLs). Environment values are never written.
  - Module results are recognised by the task's action (C(fibreflow.qfieldcloud.qfc_sync_facts),
    C(fibreflow.qfieldcloud.qfc_worker)) or, failing that, by the keys of their result.
  - Tasks tagged C(qfieldcloud_drift_report) (the reporting tasks of C(playbooks/drift_check.yml)) never count as
    changes, and a failure of a task tagged C(qfieldcloud_drift_gate) (the C(qfieldcloud_fail_on_drift) assertion)
    is drift, not an error.
author:
  - FibreFlow operations (@fibreflow)
requirements:
  - Enable it with C(callbacks_enabled = fibreflow.qfieldcloud.drift_report) in C(ansible.cfg), or with the
    environment variable C(ANSIBLE_CALLBACKS_ENABLED=fibreflow.qfieldcloud.drift_report).
options:
  output_dir:
    description:
      - Directory the report files are written to. Created when missing (mode C(0750)).
      - A relative path is relative to the working directory of C(ansible-playbook).
    type: path
    default: drift-report
    env:
      - name: FIBREFLOW_DRIFT_REPORT_DIR
    ini:
      - section: callback_drift_report
        key: output_dir
  json_file:
    description: File name of the JSON report inside O(output_dir).
    type: str
    default: drift-report.json
    env:
      - name: FIBREFLOW_DRIFT_REPORT_JSON
    ini:
      - section: callback_drift_report
        key: json_file
  markdown_file:
    description: File name of the Markdown summary inside O(output_dir). An empty value writes no Markdown.
    type: str
    default: drift-report.md
    env:
      - name: FIBREFLOW_DRIFT_REPORT_MARKDOWN
    ini:
      - section: callback_drift_report
        key: markdown_file
  run_id:
    description:
      - An identifier copied into the report (C(run.id)), so that a wrapper can tell its own report from an older one.
      - The C(qfc-drift-check) script of the collection sets it.
    type: str
    env:
      - name: FIBREFLOW_DRIFT_RUN_ID
    ini:
      - section: callback_drift_report
        key: run_id
  show_summary:
    description: Print one line with the outcome and the path of the report at the end of the run.
    type: bool
    default: true
    env:
      - name: FIBREFLOW_DRIFT_REPORT_SUMMARY
    ini:
      - section: callback_drift_report
        key: show_summary
notes:
  - "Scheduler contract (C(bin/qfc-drift-check) of the collection): exit status V(0) no drift, V(2) drift found
    (check mode: would change; real run: found and corrected or still there), V(1) error (a host failed or was
    unreachable, or no report was written)."
seealso:
  - module: fibreflow.qfieldcloud.qfc_sync_facts
  - module: fibreflow.qfieldcloud.qfc_worker
"""

import datetime
import json
import os
import time
from typing import Any

from ansible import context
from ansible.plugins.callback import CallbackBase

from ansible_collections.fibreflow.qfieldcloud.plugins.module_utils import codes, files
from ansible_collections.fibreflow.qfieldcloud.plugins.module_utils.problems import (
    CATALOGUE,
    blocking_codes,
    hidden_by,
    raised_by_facts,
)
from ansible_collections.fibreflow.qfieldcloud.plugins.module_utils.redact import Redactor, is_secret_key

SCHEMA_VERSION = 1
GENERATOR = "fibreflow.qfieldcloud.drift_report"
EXIT_STATUS = {"ok": 0, "drift": 2, "error": 1}
OUTCOME_RANK = {"ok": 0, "drift": 1, "error": 2}
FACTS_MODULE = "qfc_sync_facts"
WORKER_MODULE = "qfc_worker"
REPORT_TAG = "qfieldcloud_drift_report"
GATE_TAG = "qfieldcloud_drift_gate"
DEFAULT_REMEDY = "ansible-playbook fibreflow.qfieldcloud.site"
MAX_TEXT = 2000
FENCE = "`" * 3


# ------------------------------------------------------------------------------------------------------------
# Pure functions: plain data in, plain data out (unit-tested without Ansible running)
# ------------------------------------------------------------------------------------------------------------


def module_kind(action: str | None, result: dict[str, Any]) -> str | None:
    """Return ``facts`` or ``worker`` for a result of one of the collection's modules, else None."""
    name = (action or "").rsplit(".", 1)[-1]
    if name == FACTS_MODULE:
        return "facts"
    if name == WORKER_MODULE:
        return "worker"
    if isinstance(result.get("problems"), list) and "sync_ready" in result:
        return "facts"
    if isinstance(result.get("drift"), list) and isinstance(result.get("actions"), list):
        return "worker"
    return None


def verify_result(result: dict[str, Any]) -> dict[str, Any] | None:
    """Return the verify role's result record when this task result sets it (set_fact), else None."""
    facts = result.get("ansible_facts")
    if not isinstance(facts, dict):
        return None
    for key, value in facts.items():
        if key.endswith("verify_result") and isinstance(value, dict) and "outcome" in value:
            return value
    return None


def facts_skips(event: dict[str, Any]) -> set[str]:
    """The checks a qfc_sync_facts call skipped (its ``skip`` argument)."""
    args = (event.get("result") or {}).get("invocation", {}).get("module_args", {}) or {}
    return set(args.get("skip") or [])


def covers(event: dict[str, Any], code: str) -> bool:
    """Tell whether a qfc_sync_facts call looked at what reveals ``code`` (the catalogue's detectors and hidden_by).

    A code the call never raises (qfc_worker's own, verify_failed) is not judged by it; a code outside the
    catalogue is, as before it had an entry.
    """
    if code in CATALOGUE and not raised_by_facts(code):
        return False
    return not facts_skips(event).intersection(hidden_by(code))


def _codes(event: dict[str, Any]) -> set[str]:
    return {p.get("code") for p in (event.get("result") or {}).get("problems") or [] if isinstance(p, dict)}


def _catalogue(code: str) -> dict[str, str]:
    entry = CATALOGUE.get(code) or {}
    return {
        "severity": entry.get("severity") or "error",
        "summary": entry.get("summary") or code.replace("_", " "),
        "remedy": (entry.get("remedy") or DEFAULT_REMEDY)
        .replace("{project_dir}", "<project_dir>")
        .replace("{network}", "<project>_default"),
    }


def _item(code: str, source: str, problem: dict[str, Any] | None, **fields: Any) -> dict[str, Any]:
    known = _catalogue(code)
    problem = problem or {}
    item = {
        "code": code,
        "severity": problem.get("severity") or known["severity"],
        "summary": problem.get("summary") or known["summary"],
        "source": source,
        "replica": None,
        "field": None,
        "expected": None,
        "actual": None,
        "evidence": problem.get("evidence"),
        "remedy": problem.get("remedy") or known["remedy"],
        "corrected": False,
    }
    item.update(fields)
    return item


def host_items(events: list[dict[str, Any]], check_mode: bool) -> dict[str, Any]:
    """Assemble one host's items from its events (in run order).

    Events are dicts ``{kind, task, role, action, changed, failed, result}`` with kind ``facts``, ``worker``,
    ``verify``, ``changed``, ``failed`` or ``unreachable``. Returns ``{items, changes, actions, verify,
    sync_ready_before, sync_ready_after, errors}``.
    """
    facts = [e for e in events if e["kind"] == "facts" and not e.get("failed")]
    workers = [e for e in events if e["kind"] == "worker"]
    full = [e for e in facts if not facts_skips(e)]
    before = (full or facts or [None])[0]
    first_change = next(
        (i for i, e in enumerate(events) if e.get("changed") and e["kind"] != "facts" and not e.get("report_task")),
        None,
    )
    later_facts = (
        []
        if first_change is None
        else [e for e in events[first_change:] if e["kind"] == "facts" and not e.get("failed")]
    )

    problems: dict[str, dict[str, Any]] = {}
    if before is not None:
        for problem in before["result"].get("problems") or []:
            if isinstance(problem, dict) and problem.get("code"):
                problems.setdefault(problem["code"], problem)

    def corrected(code: str, fixed_by_worker: bool) -> bool:
        if check_mode:
            return False
        judges = [e for e in later_facts if covers(e, code)]
        if judges:
            return code not in _codes(judges[-1])
        return fixed_by_worker

    items: list[dict[str, Any]] = []
    seen: set[tuple] = set()
    drift_codes: set[str] = set()
    for event in workers:
        result = event["result"]
        applied = bool(event.get("changed")) and not event.get("failed")
        for drift in result.get("drift") or []:
            if not isinstance(drift, dict) or not drift.get("code"):
                continue
            key = (drift["code"], drift.get("replica"), drift.get("field"))
            if key in seen:
                continue
            seen.add(key)
            drift_codes.add(drift["code"])
            items.append(
                _item(
                    drift["code"],
                    "qfc_worker",
                    problems.get(drift["code"]),
                    replica=drift.get("replica"),
                    field=drift.get("field"),
                    expected=drift.get("expected"),
                    actual=drift.get("actual"),
                    corrected=corrected(drift["code"], applied),
                )
            )
    for code, problem in problems.items():
        if code in drift_codes:
            continue
        items.append(
            _item(
                code,
                "qfc_sync_facts",
                problem,
                field="problem",
                actual=problem.get("evidence"),
                corrected=corrected(code, False),
            )
        )

    verify = None
    for event in events:
        if event["kind"] == "verify":
            verify = event["result"]
    if verify and verify.get("outcome") == "failed":
        items.append(
            _item(
                codes.CODE_VERIFY_FAILED,
                "verify",
                None,
                field="probe",
                expected="finished",
                actual=verify.get("error") or verify.get("job_status"),
            )
        )

    actions: list[str] = []
    for event in workers:
        for action in event["result"].get("actions") or []:
            if action not in actions:
                actions.append(str(action))
    changes = [
        {"task": e["task"], "role": e.get("role"), "action": e.get("action")}
        for e in events
        if e["kind"] in ("changed", "worker") and e.get("changed") and not e.get("report_task")
    ]
    errors = [
        {"task": e["task"], "msg": e.get("msg")}
        for e in events
        if e["kind"] in ("failed", "unreachable") and not e.get("gate")
    ]
    after = later_facts[-1] if later_facts else None
    return {
        "items": items,
        "changes": changes,
        "actions": actions,
        "verify": verify,
        "sync_ready_before": before["result"].get("sync_ready") if before else None,
        "sync_ready_after": after["result"].get("sync_ready") if after else None,
        "verdict": verdict((after or before or {}).get("result") or {}),
        "errors": errors,
    }


def verdict(result: dict[str, Any]) -> dict[str, Any]:
    """What a qfc_sync_facts result says of the two questions: would a job finish, do devices reach the server.

    ``{sync, client, sync_blocked_by, client_blocked_by}``; ``sync``/``client`` are None without a result.
    """
    problems = [p for p in result.get("problems") or [] if isinstance(p, dict)]
    if "sync_ready" not in result:
        return {"sync": None, "client": None, "sync_blocked_by": [], "client_blocked_by": []}
    client = result.get("client_ready")
    client_codes = blocking_codes(problems, "client")
    return {
        "sync": bool(result.get("sync_ready")),
        "client": bool(client) if client is not None else not client_codes,
        "sync_blocked_by": blocking_codes(problems, "sync"),
        "client_blocked_by": client_codes,
    }


def host_outcome(assembled: dict[str, Any], failed: bool, unreachable: bool) -> str:
    """``error`` when the host failed or was unreachable, ``drift`` when anything was found or changed, else ``ok``."""
    if failed or unreachable:
        return "error"
    if assembled["items"] or assembled["changes"]:
        return "drift"
    return "ok"


def build_report(
    events_by_host: dict[str, list[dict[str, Any]]],
    stats: dict[str, dict[str, int]],
    meta: dict[str, Any],
    redactor: Redactor | None = None,
) -> dict[str, Any]:
    """Build the versioned report document from the events and the play recap counters of each host.

    ``stats`` maps host -> ``{ok, changed, failures, unreachable, skipped, rescued, ignored}`` (the recap);
    ``meta`` carries ``playbook``, ``check_mode``, ``diff_mode``, ``started``, ``finished``, ``run_id``.
    """
    check_mode = bool(meta.get("check_mode"))
    hosts: dict[str, Any] = {}
    for host in sorted(set(events_by_host) | set(stats)):
        events = events_by_host.get(host, [])
        counters = dict(stats.get(host) or {})
        gate_failures = sum(1 for e in events if e["kind"] == "failed" and e.get("gate"))
        # The recap does not count failures a block rescued; the gate's failure is drift, not an error.
        failed = (counters.get("failures") or 0) > gate_failures
        unreachable = bool(counters.get("unreachable")) or any(e["kind"] == "unreachable" for e in events)
        assembled = host_items(events, check_mode)
        outcome = host_outcome(assembled, failed, unreachable)
        hosts[host] = {
            "outcome": outcome,
            "unreachable": unreachable,
            "items": assembled["items"],
            "corrected": sum(1 for i in assembled["items"] if i["corrected"]),
            "changes": assembled["changes"],
            "actions": assembled["actions"],
            "verify": assembled["verify"],
            "sync_ready_before": assembled["sync_ready_before"],
            "sync_ready_after": assembled["sync_ready_after"],
            "verdict": assembled["verdict"],
            "errors": assembled["errors"] if outcome == "error" else [],
            "stats": counters,
        }
    outcome = max((h["outcome"] for h in hosts.values()), key=OUTCOME_RANK.__getitem__, default="ok")
    if meta.get("internal_errors"):
        outcome = "error"
    counts = {name: sum(1 for h in hosts.values() if h["outcome"] == name) for name in EXIT_STATUS}
    report = {
        "schema_version": SCHEMA_VERSION,
        "generator": GENERATOR,
        "run": {
            "id": meta.get("run_id"),
            "playbook": meta.get("playbook"),
            "check_mode": check_mode,
            "diff_mode": bool(meta.get("diff_mode")),
            "started": meta.get("started"),
            "finished": meta.get("finished"),
            "duration_s": meta.get("duration_s"),
            "internal_errors": list(meta.get("internal_errors") or []),
        },
        "outcome": outcome,
        "exit_status": EXIT_STATUS[outcome],
        "summary": {
            "hosts": len(hosts),
            "ok": counts["ok"],
            "drift": counts["drift"],
            "error": counts["error"],
            "items": sum(len(h["items"]) for h in hosts.values()),
            "corrected": sum(h["corrected"] for h in hosts.values()),
            "changes": sum(len(h["changes"]) for h in hosts.values()),
            "sync_blocked": sum(1 for h in hosts.values() if h["verdict"]["sync"] is False),
            "client_blocked": sum(1 for h in hosts.values() if h["verdict"]["client"] is False),
        },
        "hosts": hosts,
    }
    return (redactor or Redactor()).value(report)


def _cell(value: Any, limit: int = 160) -> str:
    if value is None:
        text = ""
    elif isinstance(value, str):
        text = value
    else:
        text = json.dumps(value, sort_keys=True, default=str)
    text = " ".join(text.split())
    if len(text) > limit:
        text = text[: limit - 1] + "…"
    return text.replace("|", "\\|")


def render_markdown(report: dict[str, Any]) -> str:
    """Render the report as a Markdown summary for people (e-mail, chat, AWX artifacts)."""
    run = report.get("run") or {}
    summary = report.get("summary") or {}
    mode = "check mode: what would change" if run.get("check_mode") else "real run: what was found and corrected"
    lines = [
        f"# QFieldCloud drift report: {report.get('outcome', 'unknown').upper()}",
        "",
        f"- Playbook: `{run.get('playbook')}` ({mode}{', diff' if run.get('diff_mode') else ''})",
        f"- Finished: {run.get('finished')} ({run.get('duration_s')} s)",
        f"- Hosts: {summary.get('hosts', 0)} (ok {summary.get('ok', 0)}, drift {summary.get('drift', 0)}, "
        f"error {summary.get('error', 0)}); items: {summary.get('items', 0)}, "
        f"corrected: {summary.get('corrected', 0)}; exit status {report.get('exit_status')}",
        "",
        "| Host | Outcome | Items | Corrected | Changed tasks | Sync ready (before → after) | Devices reach it |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    hosts = report.get("hosts") or {}
    for name, host in hosts.items():
        ready = f"{_yes_no(host.get('sync_ready_before'))} → {_yes_no(host.get('sync_ready_after'))}"
        client = (host.get("verdict") or {}).get("client")
        lines.append(
            f"| {_cell(name)} | {host['outcome']} | {len(host['items'])} | {host.get('corrected', 0)} "
            f"| {len(host.get('changes') or [])} | {ready} | {_yes_no(client)} |"
        )
    for name, host in hosts.items():
        if host["outcome"] == "ok":
            continue
        lines += ["", f"## {_cell(name)}: {host['outcome']}", ""]
        found = host.get("verdict") or {}
        if found.get("sync") is False:
            lines.append(
                f"- **SYNC BLOCKED**: a job created now would not finish ({', '.join(found['sync_blocked_by'])})"
            )
        if found.get("client") is False:
            lines.append(
                f"- **DEVICES CANNOT REACH THE SERVER** at its URL, although jobs run "
                f"({', '.join(found['client_blocked_by'])}); seen from the Docker host"
            )
        for error in host.get("errors") or []:
            lines.append(f"- **error** in task `{_cell(error.get('task'))}`: {_cell(error.get('msg'), 400)}")
        if host.get("items"):
            if lines[-1]:  # a table needs a blank line after the list above it
                lines.append("")
            lines += [
                "| Code | Severity | Replica | Field | Expected | Actual | Corrected | Remedy |",
                "| --- | --- | --- | --- | --- | --- | --- | --- |",
            ]
            for item in host["items"]:
                lines.append(
                    f"| `{item['code']}` | {item['severity']} | {_cell(item.get('replica'))} "
                    f"| {_cell(item.get('field'))} "
                    f"| {_cell(item.get('expected'))} | {_cell(evidence_text(item.get('actual')), 240)} "
                    f"| {'yes' if item.get('corrected') else 'no'} | {_cell(item.get('remedy'), 240)} |"
                )
        for item in host.get("items") or []:
            log = item_log(item)
            if log:
                lines += ["", f"Worker log behind `{item['code']}` (last lines, secrets masked):", "", FENCE + "text"]
                lines += [line.replace(FENCE, "'''") for line in log]
                lines.append(FENCE)
        if host.get("actions"):
            verb = "Would do" if run.get("check_mode") else "Done"
            lines += ["", f"{verb} (qfc_worker):", ""]
            lines += [f"- {_cell(action, 300)}" for action in host["actions"]]
        changes = host.get("changes") or []
        if changes:
            verb = "would change" if run.get("check_mode") else "changed"
            lines += ["", f"Tasks that {verb}:", ""]
            lines += [f"- {_cell(c['role']) + ': ' if c.get('role') else ''}{_cell(c.get('task'))}" for c in changes]
        verify = host.get("verify")
        if verify:
            latency = verify.get("latency_s")
            took = f", latency {latency} s" if latency is not None else ""
            lines += ["", f"Verify: {verify.get('outcome')}{took}"]
    if not any(h["outcome"] != "ok" for h in hosts.values()):
        lines += ["", "No drift: every host is as it should be."]
    return "\n".join(lines) + "\n"


def evidence_text(value: Any) -> Any:
    """A problem's evidence (a mapping) as ``key: value; key: value`` for a table cell, without its log lines
    (they follow the table as lines of their own); any other value as it is."""
    if not isinstance(value, dict):
        return value

    def plain(x: Any) -> str:
        if isinstance(x, dict):
            return "; ".join(f"{k}: {plain(v)}" for k, v in x.items() if k != "log")
        if isinstance(x, list):
            return ", ".join(f"({plain(v)})" if isinstance(v, dict) else plain(v) for v in x) or "none"
        if x is None:
            return "none"
        if isinstance(x, bool):
            return "true" if x else "false"
        return str(x)

    return plain(value)


def item_log(item: dict[str, Any]) -> list[str]:
    """The worker log lines a problem carries as evidence (``evidence.log``, also in ``more`` and ``containers``)."""
    evidence = item.get("evidence")
    if not isinstance(evidence, dict):
        return []
    parts = [evidence, *(evidence.get("more") or []), *(evidence.get("containers") or [])]
    found: list[str] = []
    for part in parts:
        if isinstance(part, dict):
            found += [str(line) for line in part.get("log") or [] if str(line) not in found]
    return found


def _yes_no(value: Any) -> str:
    return "?" if value is None else ("yes" if value else "no")


def write_atomic(path: str, text: str, mode: int = 0o644) -> None:
    """Write ``text`` to ``path`` atomically (the collection's one writer, in module_utils/files.py)."""
    files.atomic_write(path, text, mode=mode)


def learn_secrets(redactor: Redactor, data: Any, depth: int = 0) -> None:
    """Register the values stored under secret-looking keys anywhere in ``data`` (variables, arguments)."""
    if depth > 8:
        return
    if isinstance(data, dict):
        for key, value in data.items():
            if is_secret_key(str(key)) and isinstance(value, (str, int, float)) and not isinstance(value, bool):
                redactor.add(str(value))
            else:
                learn_secrets(redactor, value, depth + 1)
    elif isinstance(data, (list, tuple)):
        for value in data:
            learn_secrets(redactor, value, depth + 1)


# ------------------------------------------------------------------------------------------------------------
# The callback
# ------------------------------------------------------------------------------------------------------------


def _now_iso() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class CallbackModule(CallbackBase):
    """Collects drift across the hosts of a run and writes the report when the run ends."""

    CALLBACK_VERSION = 2.0
    CALLBACK_TYPE = "aggregate"
    CALLBACK_NAME = "fibreflow.qfieldcloud.drift_report"
    CALLBACK_NEEDS_ENABLED = True

    def __init__(self, display=None) -> None:
        super().__init__(display=display)
        self._events: dict[str, list[dict[str, Any]]] = {}
        self._redactor = Redactor()
        self._playbook: str | None = None
        self._started = time.time()
        self._started_iso = _now_iso()
        self._done = False
        self._internal_errors: list[str] = []

    # -- gathering ---------------------------------------------------------------------------------------
    def v2_playbook_on_start(self, playbook) -> None:
        self._playbook = os.path.basename(getattr(playbook, "_file_name", "") or "") or None
        self._started = time.time()
        self._started_iso = _now_iso()

    def v2_playbook_on_play_start(self, play) -> None:
        try:
            manager = play.get_variable_manager()
            learn_secrets(self._redactor, dict(manager.extra_vars))
            learn_secrets(self._redactor, play.get_vars())
            inventory = getattr(manager, "_inventory", None)
            if inventory is not None:
                for host in inventory.get_hosts(play.hosts):
                    learn_secrets(self._redactor, host.get_vars())
                    for group in host.get_groups():
                        learn_secrets(self._redactor, group.get_vars())
        except Exception as exc:  # a report without this extra masking is still masked by key and module
            self._display.vvv(f"drift_report: could not read the play's variables for masking: {exc}")

    @staticmethod
    def _task_info(result) -> dict[str, Any]:
        task = result._task
        tags = set(getattr(task, "tags", None) or [])
        role = getattr(task, "_role", None)
        return {
            "task": task.name or task.action,
            "role": role.get_name() if role is not None else None,
            "action": getattr(task, "resolved_action", None) or task.action,
            "report_task": REPORT_TAG in tags,
            "gate": GATE_TAG in tags,
        }

    def _add(self, task_result, kind: str, **extra: Any) -> None:
        host = task_result._host.get_name()
        event = self._task_info(task_result)
        event.update(kind=kind, **extra)
        self._events.setdefault(host, []).append(event)

    def _on_result(self, result, failed: bool = False, ignore_errors: bool = False) -> None:
        res = result._result if isinstance(result._result, dict) else {}
        learn_secrets(self._redactor, (res.get("invocation") or {}).get("module_args") or {})
        info = self._task_info(result)
        changed = bool(res.get("changed"))
        kind = module_kind(info["action"], res)
        if kind == "facts":
            self._add(result, "facts", result=res, changed=False, failed=failed)
        elif kind == "worker":
            self._add(result, "worker", result=res, changed=changed, failed=failed)
        verify = verify_result(res)
        if verify is not None:
            self._add(result, "verify", result=verify, changed=False)
        if failed and not ignore_errors:
            msg = res.get("msg") or res.get("stderr") or res.get("exception") or "failed"
            self._add(result, "failed", msg=str(msg)[:MAX_TEXT], changed=False)
        elif changed and kind is None:
            self._add(result, "changed", changed=True)

    def _guarded(self, handler, *args: Any) -> None:
        """Run a handler; a bug here must not pass as a clean run, so it makes the report's outcome an error."""
        try:
            handler(*args)
        except Exception as exc:  # recorded and reported, never swallowed silently
            self._internal_errors.append(f"{type(exc).__name__}: {exc}")
            self._display.warning(f"drift_report: could not record a result ({exc}); the report will say error")

    def v2_runner_on_ok(self, result) -> None:
        self._guarded(self._on_result, result)

    def v2_runner_on_failed(self, result, ignore_errors=False) -> None:
        self._guarded(self._on_result, result, True, ignore_errors)

    def _on_unreachable(self, result) -> None:
        res = result._result if isinstance(result._result, dict) else {}
        self._add(result, "unreachable", msg=str(res.get("msg") or "unreachable")[:MAX_TEXT], changed=False)

    def v2_runner_on_unreachable(self, result) -> None:
        self._guarded(self._on_unreachable, result)

    # -- writing -------------------------------------------------------------------------------------------
    def _stats(self, stats) -> dict[str, dict[str, int]]:
        counters = {}
        for host in sorted(stats.processed.keys()):
            summary = stats.summarize(host)
            counters[host] = {key: int(summary.get(key, 0)) for key in sorted(summary)}
        return counters

    def v2_playbook_on_stats(self, stats) -> None:
        if self._done:
            return
        self._done = True
        finished = time.time()
        meta = {
            "playbook": self._playbook,
            "check_mode": bool(context.CLIARGS.get("check")),
            "diff_mode": bool(context.CLIARGS.get("diff")),
            "started": self._started_iso,
            "finished": _now_iso(),
            "duration_s": round(finished - self._started, 1),
            "run_id": self.get_option("run_id"),
            "internal_errors": self._internal_errors,
        }
        report = build_report(self._events, self._stats(stats), meta, self._redactor)
        directory = os.path.abspath(os.path.expanduser(self.get_option("output_dir")))
        try:
            os.makedirs(directory, mode=0o750, exist_ok=True)
            json_path = os.path.join(directory, self.get_option("json_file"))
            write_atomic(json_path, json.dumps(report, indent=2, sort_keys=True, default=str) + "\n")
            markdown = self.get_option("markdown_file")
            if markdown:
                write_atomic(os.path.join(directory, markdown), self._redactor.text(render_markdown(report)))
        except OSError as exc:
            self._display.error(f"drift_report: could not write the report into {directory}: {exc}")
            return
        if self.get_option("show_summary"):
            summary = report["summary"]
            self._display.display(
                f"drift report: {report['outcome']} (exit status {report['exit_status']}; hosts ok {summary['ok']}, "
                f"drift {summary['drift']}, error {summary['error']}; {summary['items']} item(s), "
                f"{summary['corrected']} corrected) -> {json_path}"
            )
