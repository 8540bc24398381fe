# SPDX-License-Identifier: GPL-3.0-or-later
"""Reliability on the stand-in: bad input, concurrency, interrupted runs and an .env written by hand (``rli...``).

Bad module arguments and role variables fail naming the option and change nothing; two site.yml runs at once end with
one worker set; killed runs never leave half-written files; an .env with comments, quotes, exports, blanks and
duplicates is read and edited as a person would expect.
"""

from __future__ import annotations

import contextlib
import difflib
import json
import os
import re
import shutil
import signal
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import yaml
from ansible_run import FACTS, REPO, WORKER, ansible_env, playbook_command, recap, run_module, stack_args
from reliability_common import (
    ENFORCE_TASK,
    LEDGER,
    OVERRIDE,
    SERVICE,
    assert_mode_0600,
    containers,
    crashed,
    facts,
    files,
    healthy,
    ledgered,
    play,
    scan_written_files,
    worker_ids,
    write_ledger,
)
from standin import Stack

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module", autouse=True)
def ledger():
    yield LEDGER
    write_ledger("inputs")


@pytest.fixture(scope="module")
def workers(module_stacks):
    """A private healthy stack whose worker the collection has enforced once (the override file exists, mode 0600),
    as after any first site.yml run."""
    stack = ledgered(module_stacks("rli"))
    result = run_module(WORKER, {"project_dir": str(stack.dir)})
    assert not result.get("failed"), result.get("msg")
    os.chmod(stack.dir / OVERRIDE, 0o600)
    return stack


# ------------------------------------------------------------------------------------------------ bad input
# (module, args, option the message must name). Each one must fail, name the option, and touch nothing.
BAD_MODULE_ARGS = [
    (WORKER, {"replicas": "three"}, "replicas"),
    (WORKER, {"replicas": 10**9}, "replicas"),
    (WORKER, {"replicas": -3}, "replicas"),
    (WORKER, {"drain_timeout": "soon"}, "drain_timeout"),
    (WORKER, {"drain_timeout": -1}, "drain_timeout"),
    (WORKER, {"lock_timeout": -5}, "lock_timeout"),
    (WORKER, {"backup": "perhaps"}, "backup"),
    (WORKER, {"state": "running"}, "state"),
    (WORKER, {"mode": "swarm"}, "mode"),
    (WORKER, {"replica": 2}, "replica"),
    (WORKER, {"db_host": "no-such-db.invalid"}, "db_host"),
    (WORKER, {"service": "worker"}, "service"),
    (WORKER, {"docker_host": "tcp://127.0.0.1:9", "timeout": 3}, "docker_host"),
    (FACTS, {"timeout": 0}, "timeout"),
    (FACTS, {"timeout": "fast"}, "timeout"),
    (FACTS, {"log_lines": -1}, "log_lines"),
    (FACTS, {"pending_age_threshold": -60}, "pending_age_threshold"),
    (FACTS, {"skip": ["db", "everything"]}, "skip"),
    (FACTS, {"prometheus_textfile": "/nonexistent-dir/qfc.prom"}, "prometheus_textfile"),
]


def test_bad_module_arguments_fail_naming_the_option_and_change_nothing(workers):
    stack = workers
    before, ids = files(stack), containers(stack)
    for module, args, option in BAD_MODULE_ARGS:
        result = run_module(module, {"project_dir": str(stack.dir), **args})
        LEDGER.scan(stack, result["_stdout"], f"{module} {args}")
        LEDGER.bad_inputs.append(f"{module.rsplit('.', 1)[1]} {json.dumps(args)}")
        assert result.get("failed") is True, (module, args)
        assert result["_rc"] != 0
        assert option in result["msg"], (args, result["msg"])
        assert not crashed(result["_stdout"])  # a clean fail_json, not a module crash
    # a project directory that is a file, and one whose compose file does not parse
    not_a_dir = stack.dir / "docker-compose.yml"
    for module in (WORKER, FACTS):
        result = run_module(module, {"project_dir": str(not_a_dir)})
        LEDGER.bad_inputs.append(f"{module.rsplit('.', 1)[1]} project_dir=<a file>")
        assert result.get("failed") is True and "project_dir" in result["msg"], result.get("msg")
    assert files(stack) == before, "a failed run changed a file of the project"
    assert containers(stack) == ids, "a failed run changed a container"


def test_compose_syntax_error_changes_nothing(workers, tmp_path):
    stack = workers
    broken = tmp_path / "broken"
    shutil.copytree(stack.dir, broken, symlinks=True)
    compose = broken / "docker-compose.yml"
    compose.write_text(compose.read_text().replace("services:\n", "services:\n  oops: [unclosed\n", 1))
    before = files(Stack(stack.name, broken))
    result = run_module(WORKER, {"project_dir": str(broken)})
    LEDGER.scan(stack, result["_stdout"], "qfc_worker on a broken compose file")
    assert result.get("failed") is True and result["msg"].startswith("project_dir:"), result.get("msg")
    res = play("playbooks/site.yml", stack, extra={"qfieldcloud_project_dir": str(broken)}, verbose=False)
    assert res.returncode != 0
    assert "qfieldcloud_project_dir: docker compose finds no valid project" in res.said
    LEDGER.bad_inputs += ["qfc_worker compose file with a syntax error", "site.yml compose file with a syntax error"]
    assert files(Stack(stack.name, broken)) == before


# (variables, text the failure must contain): role argument specs (types, choices) and range checks
BAD_ROLE_VARS = [
    ({"qfieldcloud_worker_replicas": "three"}, "qfieldcloud_worker_replicas"),
    ({"qfieldcloud_worker_replicas": -1}, "qfieldcloud_worker_replicas: expected 0"),
    ({"qfieldcloud_worker_replicas": 100000}, "qfieldcloud_worker_replicas: expected 0"),
    ({"qfieldcloud_worker_state": "running"}, "qfieldcloud_worker_state must be one of"),
    ({"qfieldcloud_worker_service": "worker"}, "qfieldcloud_worker_service: worker is not a service"),
    ({"qfieldcloud_worker_drain_timeout": "1h"}, "qfieldcloud_worker_drain_timeout"),
    ({"qfieldcloud_startup_db_timeout": -5}, "qfieldcloud_startup_db_timeout: expected a number of seconds"),
    ({"qfieldcloud_verify_timeout": "soon"}, "qfieldcloud_verify_timeout"),
    ({"qfieldcloud_verify_poll": 0}, "qfieldcloud_verify_poll: expected a number of seconds"),
    ({"qfieldcloud_validate_certs": "perhaps"}, "qfieldcloud_validate_certs"),
    ({"qfieldcloud_verify_job_type": "delta_apply"}, "qfieldcloud_verify_job_type"),
]


def test_bad_role_variables_fail_early_naming_the_variable(workers):
    stack = workers
    before, ids = files(stack), containers(stack)

    def one(case):
        return case, play(
            "playbooks/site.yml", stack, extra=case[0], verbose=False, env={"ANSIBLE_DISPLAY_ARGS_TO_STDOUT": "0"}
        )

    with ThreadPoolExecutor(max_workers=3) as pool:
        runs = list(pool.map(one, BAD_ROLE_VARS))
    for (variables, expected), res in runs:
        LEDGER.bad_inputs.append(f"site.yml -e {json.dumps(variables)}")
        assert res.returncode != 0, variables
        assert expected in res.output, (variables, res.output[-3000:])
        assert not crashed(res.output)
    # an unreachable Docker daemon: a clear failure, nothing written
    res = play("playbooks/site.yml", stack, env={"DOCKER_HOST": "tcp://127.0.0.1:9"}, verbose=False)
    LEDGER.bad_inputs.append("site.yml with DOCKER_HOST=tcp://127.0.0.1:9")
    assert res.returncode != 0
    assert "docker_unreachable" in res.output and "Cannot connect to the Docker daemon" in res.said
    assert files(stack) == before, "a failed run changed a file of the project"
    assert containers(stack) == ids, "a failed run changed a container"


# ------------------------------------------------------------------------------------------------ concurrency
def enforce_outcome(output: str) -> str:
    """``changed`` or ``ok``: what qfc_worker reported in one site.yml output."""
    block = output.split(f"TASK [fibreflow.qfieldcloud.worker : {ENFORCE_TASK}", 1)[1]
    line = next(ln for ln in block.splitlines() if ln.startswith(("changed:", "ok:", "fatal:")))
    return line.split(":", 1)[0]


def test_two_site_runs_at_once_end_with_one_worker_set(workers, tmp_path):
    stack = workers
    stack.break_("worker-stopped")
    jobs = stack.create_jobs(2)
    results = {}

    def one(number: int) -> None:
        # Without verify: the probe account is one nobody else uses (upstream's logout expires all its tokens, so
        # two probes at once end each other's sessions); the sync is verified once, after both runs.
        results[number] = play(
            "playbooks/site.yml",
            stack,
            "--skip-tags",
            "verify",
            verbose=False,
            extra={"qfieldcloud_worker_replicas": 2},
            report=tmp_path / f"r{number}",
        )

    threads = [threading.Thread(target=one, args=(n,)) for n in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for res in results.values():
        assert res.returncode == 0, res.output[-4000:]
    # qfc_worker serialises on its lock: one run repaired, the other waited and found nothing to do
    assert sorted(enforce_outcome(res.output) for res in results.values()) == ["changed", "ok"]
    assert len(worker_ids(stack)) == 2
    found = healthy(stack)
    assert found["ansible_facts"]["qfc_sync"]["worker"]["replicas_running"] == 2
    assert_mode_0600(stack)  # the override was rewritten (scale 2): its mode 0600 was kept
    assert "scale: 2" in (stack.dir / OVERRIDE).read_text()
    verified = play("playbooks/verify.yml", stack, verbose=False)
    assert verified.returncode == 0 and "verify ok (latency" in verified.said, verified.output[-3000:]
    LEDGER.jobs(stack, jobs)
    LEDGER.fault("two site.yml runs at once (worker stopped)", "one repaired, the other waited; 2 replicas")


# ------------------------------------------------------------------------------------------------ interruption
def descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, IndexError):
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
                children.setdefault(ppid, []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def module_running(pid: int) -> bool:
    for child in descendants(pid):
        with contextlib.suppress(OSError):
            if b"AnsiballZ_qfc_worker" in Path(f"/proc/{child}/cmdline").read_bytes():
                return True
    return False


def kill_tree(proc: subprocess.Popen) -> None:
    """SIGKILL ansible-playbook and everything below it (the module runs in a session of its own).

    The tree is frozen first, SIGSTOP until no new process appears: a shell that forks the module between the
    listing and the kill would otherwise leave the module running on its own, writing files after the test has
    read them.
    """
    frozen: set[int] = set()
    while True:
        new = {proc.pid, *descendants(proc.pid)} - frozen
        if not new:
            break
        for pid in new:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGSTOP)
        frozen |= new
    for pid in frozen:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    proc.wait()


class ComposeLoader(yaml.SafeLoader):
    """YAML as compose reads it: its tags (!override, !reset) keep the value they tag."""


ComposeLoader.add_multi_constructor(
    "!",
    lambda loader, _suffix, node: (
        loader.construct_sequence(node)
        if isinstance(node, yaml.SequenceNode)
        else loader.construct_mapping(node)
        if isinstance(node, yaml.MappingNode)
        else loader.construct_scalar(node)
    ),
)


def env_compose_file(text: str) -> str:
    from ansible_collections.fibreflow.qfieldcloud.plugins.module_utils import envfile

    return envfile.parse_env(text)["COMPOSE_FILE"]


def test_killed_runs_never_leave_half_written_files(workers):
    """ansible-playbook killed (SIGKILL, whole tree) at different moments of a worker repair that rewrites both
    .env (COMPOSE_FILE) and the override (scale): each file is always parseable and either old or new."""
    stack = workers
    env_path, override_path = stack.dir / ".env", stack.dir / OVERRIDE
    if not override_path.exists():  # run alone (-k): repair first, as the tests before it do
        assert play("playbooks/site.yml", stack, verbose=False).returncode == 0
        os.chmod(override_path, 0o600)
    new_env = env_path.read_bytes()  # COMPOSE_FILE with the override: what a repair writes
    job = stack.create_job(seconds=3)
    kills = 0
    for number, delay in enumerate((0.0, 0.5, 1.0, 1.6, 2.4, 3.5)):
        replicas = 1 if number % 2 == 0 else 2
        old_env = new_env.replace(f":{OVERRIDE}".encode(), b"")  # someone edited COMPOSE_FILE back
        assert old_env != new_env
        env_path.write_bytes(old_env)
        old_override = override_path.read_bytes()
        cmd = playbook_command(
            "playbooks/worker.yml",
            *stack_args(stack),
            "-e",
            "qfieldcloud_worker_action=start",
            "-e",
            f"qfieldcloud_worker_replicas={replicas}",
        )
        proc = subprocess.Popen(cmd, cwd=REPO, env=ansible_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 60
        while not module_running(proc.pid) and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(delay)
        finished = proc.poll() is not None
        kill_tree(proc)
        kills += 0 if finished else 1
        env_now, override_now = env_path.read_bytes(), override_path.read_bytes()
        assert env_now in (old_env, new_env), f"kill {number}: .env is neither old nor new"
        new_override = re.sub(rb"scale: \d+", f"scale: {replicas}".encode(), old_override)
        assert override_now in (old_override, new_override), (
            f"kill {number}: the override is neither old nor new:\n"
            + (
                "".join(
                    difflib.unified_diff(
                        old_override.decode().splitlines(True), override_now.decode().splitlines(True), "old", "now"
                    )
                )
            )
        )
        assert yaml.load(override_now, Loader=ComposeLoader)["services"][SERVICE]  # parseable
        assert OVERRIDE in env_compose_file(env_now.decode()) or env_now == old_env
        assert not [p for p in stack.dir.iterdir() if p.name.endswith(".tmp")], "a temporary file was left"
        assert stack.compose("config", "-q", check=False).returncode == 0, "compose cannot read the project"
        assert_mode_0600(stack)
    assert kills >= 3, "the runs ended before they could be killed"
    # the next run converges: both files new, one worker set, the job created before finished
    res = play(
        "playbooks/site.yml",
        stack,
        verbose=False,
        extra={"qfieldcloud_worker_replicas": 1, "qfieldcloud_worker_banner_timeout": 20},
    )
    # (The worker role's banner wait once timed out here: after the scale-down, the kept replica's banner had
    # scrolled out of the log lines it read. A job dequeued since the banner now counts.)
    assert res.returncode == 0, res.output[-4000:]
    assert env_path.read_bytes() == new_env
    again = play("playbooks/site.yml", stack, verbose=False, extra={"qfieldcloud_worker_replicas": 1})
    assert again.returncode == 0 and recap(again)["changed"] == 0, again.output[-4000:]
    assert len(worker_ids(stack)) == 1
    LEDGER.jobs(stack, [job, stack.create_job("process_projectfile")])  # a package job could answer with job
    healthy(stack)
    assert_mode_0600(stack)
    scan_written_files(stack)
    LEDGER.fault(
        f"ansible-playbook SIGKILLed during a worker repair ({kills} times)",
        "files always whole (old or new); the next run converged",
    )


# ------------------------------------------------------------------------------------------------ .env by hand
def test_env_with_comments_quotes_exports_blanks_and_duplicates(workers):
    """Not an error: read as compose reads it (last assignment wins) and edited on one line only."""
    stack = workers
    env_path = stack.dir / ".env"
    lines = env_path.read_text().splitlines()
    out = ["# QFieldCloud settings, edited by hand", "", "QFIELDCLOUD_WORKER_REPLICAS=4  # raised once, see below", ""]
    for line in lines:
        key, _sep, value = line.partition("=")
        if key == "COMPOSE_FILE":
            # a stale assignment first, then the one that counts, quoted, without the override
            out.append("COMPOSE_FILE=docker-compose.yml")
            out.append(f'export COMPOSE_FILE="{value.replace(":" + OVERRIDE, "")}"  # production')
        elif key in ("SECRET_KEY", "QFIELDCLOUD_HOST"):
            out.append(f"export {key}='{value}'")
        elif key == "POSTGRES_HOST":
            out += ["", f'{key}="{value}"', "   "]
        else:
            out.append(line)
    out.append("QFIELDCLOUD_WORKER_REPLICAS=1")
    text = "\n".join(out) + "\n"
    env_path.write_text(text)
    os.chmod(env_path, 0o600)
    assert stack.compose("config", "-q", check=False).returncode == 0, "compose itself refuses this .env"

    found = facts(stack)
    qfc = found["ansible_facts"]["qfc_sync"]
    assert qfc["project"]["name"] == stack.name
    assert qfc["worker"]["replicas_expected"] == 1  # the last assignment wins, as in compose
    result = run_module(WORKER, {"project_dir": str(stack.dir)}, diff=True)
    LEDGER.scan(stack, result["_stdout"], "qfc_worker diff on a hand-written .env")
    assert not result.get("failed"), result.get("msg")
    assert result["changed"] is True  # COMPOSE_FILE lost the override
    new = env_path.read_text()
    changed = [(a, b) for a, b in zip(text.splitlines(), new.splitlines(), strict=True) if a != b]
    assert len(changed) == 1 and changed[0][0].startswith("export COMPOSE_FILE="), changed
    assert changed[0][1].startswith('export COMPOSE_FILE="') and f':{OVERRIDE}"  # production' in changed[0][1]
    assert oct(env_path.stat().st_mode & 0o777) == "0o600"
    assert run_module(WORKER, {"project_dir": str(stack.dir)})["changed"] is False
    LEDGER.jobs(stack, [stack.create_job()])
    LEDGER.bad_inputs.append(".env with comments, quotes, export prefixes, blank and duplicate lines (handled)")
