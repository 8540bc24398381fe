"""Run the collection's modules and playbooks from the working tree, as a user would: the plain helpers of the
integration suites (the fixtures are in ``conftest.py`` beside this file).

``run_module`` and ``facts_of`` return a module's result; ``play`` runs a playbook on localhost against a stand-in
stack and scans its output for the stack's secrets; ``recap``, ``codes``, ``drift_codes`` and ``flat`` read what
came back.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from standin import record_run

REPO = Path(__file__).resolve().parents[2]
VENV_BIN = Path(sys.executable).parent
FACTS = "fibreflow.qfieldcloud.qfc_sync_facts"
WORKER = "fibreflow.qfieldcloud.qfc_worker"
# Where the roles keep their per-project records (verify, build); the stack fixtures remove a stack's directory.
STATE_DIR = Path("/var/lib/fibreflow-qfieldcloud")


def ansible_env(extra: dict | None = None) -> dict:
    env = dict(os.environ)
    env.update(
        ANSIBLE_CONFIG=str(REPO / "ansible.cfg"),
        ANSIBLE_COLLECTIONS_PATH=str(REPO / "collections"),
        ANSIBLE_PYTHON_INTERPRETER=sys.executable,
        ANSIBLE_NOCOLOR="1",
        ANSIBLE_FORCE_COLOR="0",
        ANSIBLE_RETRY_FILES_ENABLED="0",
        PATH=f"{VENV_BIN}:{env.get('PATH', '')}",
    )
    env.update(extra or {})
    return env


# The JSON stdout callback: a run's task results as data (see task_results).
JSON_CALLBACK = {"ANSIBLE_LOAD_CALLBACK_PLUGINS": "1", "ANSIBLE_STDOUT_CALLBACK": "ansible.builtin.json"}


def task_results(stdout: str) -> list[tuple[str, dict]]:
    """``(task name, result)`` of every host of every task, in order, from a run with :data:`JSON_CALLBACK`."""
    doc = json.loads(stdout)
    return [(t["task"]["name"], r) for p in doc["plays"] for t in p["tasks"] for r in t["hosts"].values()]


def ran(results: list[tuple[str, dict]], action: str) -> list[dict]:
    """The results of ``action`` that ran (were not skipped)."""
    return [r for _name, r in results if r.get("action") == action and not r.get("skipped")]


def _recorded_run(
    kind: str, what: str, cmd: list[str], env: dict, timeout: float, stdin: str | None = None
) -> subprocess.CompletedProcess:
    """Run a command in the checkout and record its seconds in the run log (FIBREFLOW_RUN_LOG)."""
    started = time.monotonic()
    res = subprocess.run(
        cmd, input=stdin, cwd=REPO, env=env, text=True, check=False, capture_output=True, timeout=timeout
    )
    record_run(kind, what, time.monotonic() - started)
    return res


def run_module(
    module: str, args: dict, check: bool = False, diff: bool = False, timeout: float = 600, via_ansible: bool = False
) -> dict:
    """Run one module of this collection on this host and return its result dict.

    The module runs as its own process under the test venv's Python with its arguments on stdin, as ansible's
    module wrapper hands them over (check and diff mode as ``_ansible_check_mode`` / ``_ansible_diff``): the
    module's code, the Docker engine and the database are the real ones, without the ``ansible`` command's own
    start-up (about 1.5 CPU-seconds a run; across some 200 module runs, about a fifth of the integration layer's CPU).
    ``via_ansible`` runs it through ``ansible localhost -m`` instead, as a user's ad-hoc command does; the
    playbook tests run every module through ansible anyway.

    The result carries ``failed``, ``changed``, ``msg`` and the module's own keys, plus ``_stdout`` (the raw output,
    for secret scans) and ``_rc``; a crash gives ``failed``, ``msg`` and ``module_stderr`` as ansible reports it.
    """
    if via_ansible:
        return _run_module_via_ansible(module, args, check, diff, timeout)
    namespace, collection, name = module.split(".")
    payload = {"ANSIBLE_MODULE_ARGS": {**args, "_ansible_check_mode": check, "_ansible_diff": diff}}
    env = ansible_env()
    env["PYTHONPATH"] = str(REPO / "collections")
    res = _recorded_run(
        "module",
        module + (" --check" if check else ""),
        [sys.executable, "-m", f"ansible_collections.{namespace}.{collection}.plugins.modules.{name}"],
        env,
        timeout,
        stdin=json.dumps(payload),
    )
    try:
        result = json.loads(res.stdout)
    except ValueError:
        # What ansible makes of a module that printed no result: a failed task with its stderr.
        result = {"failed": True, "msg": "MODULE FAILURE", "module_stdout": res.stdout, "module_stderr": res.stderr}
    result.setdefault("changed", False)
    result.setdefault("failed", False)
    result["_stdout"] = res.stdout + res.stderr
    result["_rc"] = res.returncode
    return result


def _run_module_via_ansible(module: str, args: dict, check: bool, diff: bool, timeout: float) -> dict:
    cmd = [
        str(VENV_BIN / "ansible"),
        "localhost",
        "-c",
        "local",
        "-i",
        "localhost,",
        "-m",
        module,
        "-a",
        json.dumps(args),
    ]
    if check:
        cmd.append("--check")
    if diff:
        cmd.append("--diff")
    what = f"ansible -m {module}" + (" --check" if check else "")
    res = _recorded_run("module", what, cmd, ansible_env(JSON_CALLBACK), timeout)
    try:
        doc = json.loads(res.stdout)
        result = doc["plays"][0]["tasks"][0]["hosts"]["localhost"]
    except (ValueError, KeyError, IndexError) as exc:
        raise RuntimeError(
            f"could not read the result of {module} (rc {res.returncode}):\n{res.stdout}\n{res.stderr}"
        ) from exc
    result["_stdout"] = res.stdout + res.stderr
    result["_rc"] = res.returncode
    return result


LOCAL_ARGS = ["-i", "localhost,", "-c", "local", "-e", f"ansible_python_interpreter={VENV_BIN / 'python'}"]


def stack_args(stack) -> list[str]:
    """The arguments that run a playbook on this host against a stand-in stack (its standin-vars.yml)."""
    return [*LOCAL_ARGS, "-e", f"@{stack.dir / 'standin-vars.yml'}"]


def playbook_command(playbook: str, *args: str) -> list[str]:
    """The ansible-playbook command line for a playbook of the checkout (run it with cwd=REPO, env=ansible_env())."""
    return [str(VENV_BIN / "ansible-playbook"), playbook, *args]


def run_playbook(
    playbook: str, *args: str, extra_env: dict | None = None, timeout: float = 900
) -> subprocess.CompletedProcess:
    """Run a playbook of the checkout; returns the completed process (stdout, stderr, returncode)."""
    flags = " ".join(a for a in args if a.startswith("--"))
    return _recorded_run(
        "playbook", f"{playbook} {flags}".strip(), playbook_command(playbook, *args), ansible_env(extra_env), timeout
    )


# ------------------------------------------------------------------------------------------------ reading results
def flat(text: str) -> str:
    """Output with its line folding undone. The results are printed as YAML (ansible.cfg: callback_result_format),
    which folds a long string at a space near column 80: where a phrase folds depends on what comes before it on
    the line, a path or a stack name, so assertions on phrases read ``flat`` output (``play(...).said``)."""
    return " ".join(text.split())


def recap(res) -> dict:
    """The PLAY RECAP counts of localhost in a playbook run's output: ok, changed, failed."""
    m = re.search(r"localhost\s+:\s+ok=(\d+)\s+changed=(\d+)\s+unreachable=(\d+)\s+failed=(\d+)", res.output)
    assert m, res.output[-3000:]
    return {"ok": int(m[1]), "changed": int(m[2]), "failed": int(m[4])}


def codes(result: dict) -> set[str]:
    """The problem codes of a qfc_sync_facts result."""
    return {p["code"] for p in result["problems"]}


def drift_codes(result: dict) -> set[str]:
    """The drift codes of a qfc_worker result."""
    return {item["code"] for item in result["drift"]}


def secrets_of(stack) -> list[str]:
    """The stack's secret values; none while its .env is gone (a test may remove it: nothing left to leak)."""
    if not (stack.dir / ".env").exists() or not (stack.dir / "standin-vars.yml").exists():
        return []
    return stack.secrets()


def assert_no_secret(stack, text: str, where: str) -> None:
    assert not [s for s in secrets_of(stack) if s and s in text], f"a secret value of {stack.name} appeared in {where}"


# ------------------------------------------------------------------------------------------------ running
def remove_stack(stack) -> None:
    """Containers, networks, volumes, the stack's own images (the shared runtime images stay) and its records."""
    stack.down(images=True)
    shutil.rmtree(STATE_DIR / stack.name, ignore_errors=True)


def facts_of(stack, via_ansible: bool = False, **args) -> dict:
    """qfc_sync_facts on the stack: a result that did not fail, crash or show a secret."""
    result = run_module(FACTS, {"project_dir": str(stack.dir), **args}, via_ansible=via_ansible)
    assert not result.get("failed"), result.get("msg")
    # No traceback of the module's own: none in what it says or in a crash report. The log lines it carries as
    # evidence are the stack's: a worker that crashes at start prints its own traceback there.
    own = {key: result.get(key) for key in ("msg", "warnings", "deprecations", "exception", "module_stderr")}
    assert "Traceback" not in json.dumps(own), own
    assert_no_secret(stack, result["_stdout"], "the qfc_sync_facts result")
    return result


def play(
    playbook: str,
    stack,
    *args: str,
    extra: dict | None = None,
    env: dict | None = None,
    check: bool = False,
    verbose: bool = False,
    scan: Callable[[str, str], None] | None = None,
    timeout: float = 900,
) -> subprocess.CompletedProcess:
    """A playbook of the checkout on localhost with the stack's variables (none when ``stack`` is None).

    ``check`` adds --check --diff, ``verbose`` -vvv. The result has ``output`` (stdout and stderr) and ``said``
    (the output with the callback's wrapping undone). The output is scanned for the stack's secrets, or by
    ``scan(text, where)`` when given.
    """
    cmd = stack_args(stack) if stack is not None else list(LOCAL_ARGS)
    if extra:
        cmd += ["-e", json.dumps(extra)]
    if check:
        cmd += ["--check", "--diff"]
    if verbose:
        cmd.append("-vvv")
    res = run_playbook(playbook, *cmd, *args, extra_env=env, timeout=timeout)
    res.output = res.stdout + res.stderr
    res.said = flat(res.output)
    where = f"{playbook} {' '.join(args)} output"
    if scan is not None:
        scan(res.output, where)
    elif stack is not None:
        assert_no_secret(stack, res.output, where)
    return res
