# Copyright (c) 2025, fibreflow
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Scheduled QFieldCloud drift check with an exit status that cron and systemd can act on.

Run it as ``bin/qfc-drift-check`` (a shell launcher that picks the Python) or ``python3 bin/qfc_drift_check.py``.

Runs ``ansible-playbook <playbook> --check --diff`` (``--apply``: a real run that repairs) with the
``fibreflow.qfieldcloud.drift_report`` callback enabled, reads the report it wrote, and exits with:

  0  no drift: every host is as it should be
  2  drift found (check mode: something would change; real run: something was found and corrected, or is still
     there)
  1  error: a host failed or was unreachable, ansible-playbook could not run, or no report of this run was written

Everything ansible-playbook prints goes to <report-dir>/ansible-playbook.log (mode 0600). The script prints the
Markdown summary when the status is not 0 (so cron mails only when there is something to say), or always with
--verbose. Arguments after ``--`` go to ansible-playbook unchanged (``-e``, ``--limit``, ``--vault-id`` ...).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

EXIT_OK, EXIT_ERROR, EXIT_DRIFT = 0, 1, 2
CALLBACK = "fibreflow.qfieldcloud.drift_report"
COLLECTION_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_PLAYBOOK = COLLECTION_ROOT / "playbooks" / "drift_check.yml"


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="qfc-drift-check",
        description="QFieldCloud drift check for schedulers. Exit status: 0 no drift, 2 drift found, 1 error.",
        epilog="Arguments after -- are passed to ansible-playbook.",
    )
    parser.add_argument("-i", "--inventory", action="append", default=[], help="inventory (repeatable)")
    parser.add_argument(
        "-p",
        "--playbook",
        default=os.environ.get("QFC_DRIFT_PLAYBOOK", str(DEFAULT_PLAYBOOK)),
        help="playbook to run (default: the collection's playbooks/drift_check.yml; env QFC_DRIFT_PLAYBOOK)",
    )
    parser.add_argument(
        "-o",
        "--report-dir",
        default=os.environ.get("FIBREFLOW_DRIFT_REPORT_DIR", "drift-report"),
        help="where drift-report.json, drift-report.md and ansible-playbook.log go "
        "(default: env FIBREFLOW_DRIFT_REPORT_DIR, else ./drift-report)",
    )
    parser.add_argument("--apply", action="store_true", help="real run: repair what drifted (default: --check --diff)")
    parser.add_argument("-v", "--verbose", action="store_true", help="print the Markdown summary even when status is 0")
    parser.add_argument(
        "--ansible-playbook",
        default=os.environ.get("QFC_ANSIBLE_PLAYBOOK", "ansible-playbook"),
        help="the ansible-playbook command (default: env QFC_ANSIBLE_PLAYBOOK, else ansible-playbook on PATH)",
    )
    parser.add_argument("extra", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.extra and args.extra[0] == "--":
        args.extra = args.extra[1:]
    return args


def callback_env(report_dir: Path, run_id: str) -> dict[str, str]:
    """The environment that enables the report callback (keeping callbacks already enabled)."""
    env = dict(os.environ)
    enabled = [c.strip() for c in env.get("ANSIBLE_CALLBACKS_ENABLED", "").split(",") if c.strip()]
    if CALLBACK not in enabled:
        enabled.append(CALLBACK)
    env.update(
        ANSIBLE_CALLBACKS_ENABLED=",".join(enabled),
        FIBREFLOW_DRIFT_REPORT_DIR=str(report_dir),
        FIBREFLOW_DRIFT_RUN_ID=run_id,
        ANSIBLE_NOCOLOR="1",
    )
    return env


def read_report(report_dir: Path, run_id: str) -> tuple[dict | None, str]:
    """The report of this run, or None and the reason."""
    path = report_dir / "drift-report.json"
    try:
        report = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None, f"no report at {path}: is the {CALLBACK} callback installed?"
    except ValueError as exc:
        return None, f"the report {path} is not JSON: {exc}"
    if (report.get("run") or {}).get("id") != run_id:
        return None, f"the report at {path} is not from this run (another run wrote it, or the callback did not)"
    return report, ""


def exit_status(report: dict | None, playbook_rc: int) -> int:
    """Map the report and ansible-playbook's status to the contract (0 ok, 2 drift, 1 error)."""
    if report is None:
        return EXIT_ERROR
    outcome = report.get("outcome")
    if outcome == "error":
        return EXIT_ERROR
    # ansible-playbook exits 2 when a task failed: only the fail-on-drift gate may do that without an error outcome.
    if playbook_rc not in (0, 2):
        return EXIT_ERROR
    if playbook_rc == 2 and outcome != "drift":
        return EXIT_ERROR
    return EXIT_DRIFT if outcome == "drift" else EXIT_OK


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    report_dir = Path(args.report_dir).expanduser().resolve()
    report_dir.mkdir(parents=True, exist_ok=True, mode=0o750)
    command = shutil.which(args.ansible_playbook) or args.ansible_playbook
    cmd = [command, args.playbook]
    for inventory in args.inventory:
        cmd += ["-i", inventory]
    if not args.apply:
        cmd += ["--check", "--diff"]
    cmd += args.extra
    run_id = uuid.uuid4().hex
    log_path = report_dir / "ansible-playbook.log"
    fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as log:
        try:
            rc = subprocess.run(
                cmd, env=callback_env(report_dir, run_id), stdout=log, stderr=subprocess.STDOUT, check=False
            ).returncode
        except OSError as exc:
            print(f"qfc-drift-check: ERROR: cannot run {command}: {exc}", file=sys.stderr)
            return EXIT_ERROR
    report, reason = read_report(report_dir, run_id)
    status = exit_status(report, rc)
    if report is None:
        print(f"qfc-drift-check: ERROR: {reason}; ansible-playbook exited {rc}, see {log_path}", file=sys.stderr)
        return status
    summary = report.get("summary") or {}
    line = (
        f"qfc-drift-check: {report.get('outcome')} (exit {status}): hosts ok {summary.get('ok', 0)}, "
        f"drift {summary.get('drift', 0)}, error {summary.get('error', 0)}; {summary.get('items', 0)} item(s), "
        f"{summary.get('corrected', 0)} corrected; report {report_dir / 'drift-report.json'}"
    )
    if status != EXIT_OK or args.verbose:
        markdown = report_dir / "drift-report.md"
        if markdown.exists():
            print(markdown.read_text(encoding="utf-8"))
        print(line)
    return status


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
