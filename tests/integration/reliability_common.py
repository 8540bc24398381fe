# SPDX-License-Identifier: GPL-3.0-or-later
"""What the reliability suites share: the ledger of what they tried and helpers that feed it.

The suites (``test_reliability_services.py``, ``test_reliability_worker_faults.py``, ``test_reliability_inputs.py``)
each use one private stack for their whole module (from the ``module_stacks`` fixture, made ready by ``ledgered``),
so pytest-xdist runs them side by side. Every output they produce
goes through ``Ledger.scan`` (the stack's secret values must never appear); each suite writes its counts to
``tests/output/reliability-<suite>.json`` for docs/reliability.md.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

from ansible_run import FACTS, REPO, STATE_DIR, run_module
from ansible_run import play as shared_play
from standin import Stack

OVERRIDE = "docker-compose.override.fibreflow-worker.yml"
SERVICE = "worker_wrapper"
ENFORCE_TASK = "Enforce the worker's configuration"


class Ledger:
    """What the suite tried and what held: the figures of docs/reliability.md."""

    def __init__(self) -> None:
        self.faults: dict[str, str] = {}  # fault -> how it ended ("repaired", "failed clearly: ...")
        self.bad_inputs: list[str] = []
        self.outputs_scanned = 0
        self.bytes_scanned = 0
        self.secrets_found = 0
        self.jobs_watched = 0
        self.jobs_lost = 0

    def scan(self, stack: Stack, text: str, where: str) -> None:
        """Fail when any secret value of the stack appears in ``text`` (and count the scan)."""
        self.outputs_scanned += 1
        self.bytes_scanned += len(text)
        found = [where for secret in SECRETS.get(stack.name, stack.secrets()) if secret and secret in text]
        self.secrets_found += len(found)
        assert not found, f"a secret value of {stack.name} appeared in {where}"

    def fault(self, name: str, outcome: str) -> None:
        self.faults[name] = outcome

    def jobs(self, stack: Stack, ids: list[str], timeout: float = 90) -> None:
        """Every job must end finished: pending ones are processed, none fails because of a repair."""
        deadline = time.monotonic() + timeout
        statuses = {}
        for job in ids:
            statuses[job] = stack.wait_job(job, timeout=max(1, deadline - time.monotonic()))
        self.jobs_watched += len(ids)
        lost = {job: status for job, status in statuses.items() if status != "finished"}
        self.jobs_lost += len(lost)
        assert not lost, f"jobs not finished: {lost}"

    def summary(self) -> dict:
        return {
            "faults_injected": len(self.faults),
            "faults_survived": sum(1 for outcome in self.faults.values() if not outcome.startswith("NOT")),
            "faults": self.faults,
            "bad_inputs_tried": len(self.bad_inputs),
            "bad_inputs": self.bad_inputs,
            "outputs_scanned": self.outputs_scanned,
            "bytes_scanned": self.bytes_scanned,
            "secrets_found": self.secrets_found,
            "jobs_watched": self.jobs_watched,
            "jobs_lost": self.jobs_lost,
        }


LEDGER = Ledger()
# Secret values per stack, read once while .env is still in the stand-in's own format.
SECRETS: dict[str, list[str]] = {}


def ledgered(stack: Stack) -> Stack:
    """A fresh stack of ``module_stacks`` made ready for a suite: its secrets noted, its .env of mode 0600."""
    SECRETS[stack.name] = stack.secrets()
    os.chmod(stack.dir / ".env", 0o600)
    return stack


# ------------------------------------------------------------------------------------------------ helpers
def play(
    playbook: str,
    stack: Stack,
    *args: str,
    extra: dict | None = None,
    env: dict | None = None,
    verbose: bool = True,
    report: Path | None = None,
    timeout: float = 600,
):
    """``ansible_run.play`` (-vvv by default) with every output and drift report scanned by the ledger."""
    extra_env = dict(env or {})
    if report is not None:
        extra_env.update(
            ANSIBLE_CALLBACKS_ENABLED="fibreflow.qfieldcloud.drift_report", FIBREFLOW_DRIFT_REPORT_DIR=str(report)
        )

    def scan(text: str, where: str) -> None:
        LEDGER.scan(stack, text, where)

    res = shared_play(playbook, stack, *args, extra=extra, env=extra_env, verbose=verbose, scan=scan, timeout=timeout)
    if report is not None:
        for path in sorted(report.glob("*")):
            LEDGER.scan(stack, path.read_text(errors="replace"), f"drift report {path.name}")
    return res


def facts(stack: Stack, **args) -> dict:
    result = run_module(FACTS, {"project_dir": str(stack.dir), **args})
    LEDGER.scan(stack, result["_stdout"], "qfc_sync_facts result")
    assert not result.get("failed"), result.get("msg")
    assert not crashed(result["_stdout"]) and "exception" not in result
    return result


def crashed(text: str) -> bool:
    """True when a module or ansible itself crashed (a Python traceback of the worker in a log tail is data)."""
    return "MODULE FAILURE" in text or "An exception occurred during task execution" in text


def files(stack: Stack) -> dict:
    """Content, mtime and mode of every file of the project directory (none may move on bad input)."""
    out = {}
    for path in sorted(stack.dir.iterdir()):
        if path.is_file():
            st = path.stat()
            out[path.name] = (path.read_bytes(), st.st_mtime_ns, st.st_mode & 0o777)
    return out


def containers(stack: Stack) -> list[str]:
    ps = subprocess.run(
        [
            "docker",
            "ps",
            "-a",
            "--no-trunc",
            "--format",
            "{{.ID}} {{.State}}",
            "--filter",
            f"label=com.docker.compose.project={stack.name}",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    return sorted(ps.stdout.split("\n"))


def scan_written_files(stack: Stack) -> None:
    """Files the collection writes: the override, verify and build records; .env backups keep .env's mode."""
    override = stack.dir / OVERRIDE
    if override.exists():
        LEDGER.scan(stack, override.read_text(), OVERRIDE)
    for path in sorted((STATE_DIR / stack.name).glob("*")) if (STATE_DIR / stack.name).exists() else []:
        LEDGER.scan(stack, path.read_text(errors="replace"), str(path))
    for backup in stack.dir.glob(".env.*.bak"):
        assert backup.stat().st_mode & 0o777 == 0o600, f"{backup} lost the mode of .env"


def assert_mode_0600(stack: Stack) -> None:
    for name in (".env", OVERRIDE):
        path = stack.dir / name
        if path.exists():
            assert oct(path.stat().st_mode & 0o777) == "0o600", f"{name} lost its mode 0600"


def healthy(stack: Stack) -> dict:
    result = facts(stack)
    assert result["sync_ready"] is True, result["problems"]
    return result


def worker_ids(stack: Stack) -> list[str]:
    return stack.containers(SERVICE, all_=False)


def write_ledger(suite: str) -> None:
    """Write the ledger's counts for ``suite`` (``tests/output/reliability-<suite>.json``) and print them."""
    summary = LEDGER.summary()
    out = REPO / "tests" / "output" / f"reliability-{suite}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(summary, indent=2) + "\n")
    counts = {k: v for k, v in summary.items() if k not in ("faults", "bad_inputs")}
    print(f"\nreliability suite {suite}:", json.dumps(counts))
