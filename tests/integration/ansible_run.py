"""Run the collection's modules and playbooks from the working tree, as a user would."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
VENV_BIN = Path(sys.executable).parent


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


def run_module(module: str, args: dict, check: bool = False, diff: bool = False, timeout: float = 600) -> dict:
    """Run one module on localhost through `ansible` and return its result dict.

    The result carries `failed`, `changed`, `msg` and the module's own keys, plus `_stdout`
    (the raw output, for secret scans) and `_rc`.
    """
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
    env = ansible_env({"ANSIBLE_LOAD_CALLBACK_PLUGINS": "1", "ANSIBLE_STDOUT_CALLBACK": "ansible.builtin.json"})
    res = subprocess.run(cmd, cwd=REPO, env=env, text=True, check=False, capture_output=True, timeout=timeout)
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
    return subprocess.run(
        playbook_command(playbook, *args),
        cwd=REPO,
        env=ansible_env(extra_env),
        text=True,
        check=False,
        capture_output=True,
        timeout=timeout,
    )
