"""The measuring half of the benchmarks: timed commands, memory sampling of a process tree, medians, and what
is read back from ansible's output, /proc and EXPLAIN plans. Nothing here knows a step or a stand-in stack.

``bench.py`` is the entry point; ``steps.py`` uses these to run the steps, ``report.py`` renders their results.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import re
import signal
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg2

REPO = Path(__file__).resolve().parent.parent
BENCH = REPO / "bench"
OUT = REPO / "tests" / "output" / "bench"
VENV_BIN = Path(sys.executable).parent
STANDIN = REPO / "tests" / "harness" / "standin"

RECAP_RE = re.compile(
    r"^(?P<host>\S+)\s+:\s+ok=(?P<ok>\d+)\s+changed=(?P<changed>\d+)\s+unreachable=(?P<unreachable>\d+)\s+"
    r"failed=(?P<failed>\d+)\s+skipped=(?P<skipped>\d+)\s+rescued=(?P<rescued>\d+)\s+ignored=(?P<ignored>\d+)",
    re.MULTILINE,
)
ITEM_RE = re.compile(r"^\w+: \[[^\]]+\] => \(item=([a-z0-9_]+)\)", re.MULTILINE)


# ------------------------------------------------------------------------------------------------ pure logic
def median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def ratio(a: float | None, b: float | None) -> float | None:
    """a / b, or None when either is missing or b is zero."""
    if a is None or b is None or b == 0:
        return None
    return a / b


def parse_recap(output: str) -> dict[str, dict[str, int]]:
    """The PLAY RECAP counters of an ansible-playbook run, per host (the last recap line of a host wins)."""
    return {m["host"]: {k: int(v) for k, v in m.groupdict().items() if k != "host"} for m in RECAP_RE.finditer(output)}


def reported_problems(output: str) -> list[str]:
    """Problem codes that site.yml printed in its first task ("Report the problems found ...")."""
    start = output.find("TASK [Report the problems found")
    if start < 0:
        return []
    end = output.find("\nTASK [", start + 1)
    return ITEM_RE.findall(output[start : end if end > 0 else None])


def parse_profile(output: str) -> list[tuple[str, float]]:
    """(task, seconds) from the TASKS RECAP of the ansible.posix.profile_tasks callback, slowest first."""
    recap = output.partition("TASKS RECAP")[2]
    return [(m[1].strip(), float(m[2])) for m in re.finditer(r"^(.+?) -{2,} (\d+\.\d+)s\s*$", recap, re.MULTILINE)]


def seq_scans(plan: str) -> list[str]:
    """Relations read by a sequential scan in an EXPLAIN text plan, in order, without duplicates."""
    found: list[str] = []
    for name in re.findall(r"Seq Scan on (\w+)", plan):
        if name not in found:
            found.append(name)
    return found


def parse_stat(text: str) -> tuple[int, int]:
    """(pid, ppid) from the content of /proc/PID/stat (the command name may hold spaces and parentheses)."""
    head, _sep, tail = text.rpartition(")")
    pid = int(head.split("(", 1)[0])
    return pid, int(tail.split()[1])


def parse_pss(text: str) -> int:
    """Bytes of the Pss line of /proc/PID/smaps_rollup (0 when absent)."""
    m = re.search(r"^Pss:\s+(\d+) kB", text, re.MULTILINE)
    return int(m.group(1)) * 1024 if m else 0


# ---------------------------------------------------------------------------------------------- measuring
class TreeSampler:
    """Peaks of the summed RSS and PSS of a process and all its descendants, sampled from /proc."""

    def __init__(self, root: int, interval: float = 0.05):
        self.root = root
        self.interval = interval
        self.peak = 0
        self.peak_pss = 0
        self.peak_procs = 0
        self._stop = threading.Event()
        self._page = os.sysconf("SC_PAGE_SIZE")
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> TreeSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _tree(self) -> list[int]:
        children: dict[int, list[int]] = {}
        for entry in os.scandir("/proc"):
            if not entry.name.isdigit():
                continue
            try:
                pid, ppid = parse_stat(Path(entry.path, "stat").read_text())
            except (OSError, ValueError, IndexError):
                continue
            children.setdefault(ppid, []).append(pid)
        tree, todo = [], [self.root]
        while todo:
            pid = todo.pop()
            tree.append(pid)
            todo.extend(children.get(pid, ()))
        return tree

    def sample(self) -> None:
        total = pss = procs = 0
        for pid in self._tree():
            try:
                total += int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * self._page
                pss += parse_pss(Path(f"/proc/{pid}/smaps_rollup").read_text())
                procs += 1
            except (OSError, ValueError, IndexError):
                continue
        if total > self.peak:
            self.peak, self.peak_procs = total, procs
        self.peak_pss = max(self.peak_pss, pss)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(self.interval)


JSON_CALLBACK = {"ANSIBLE_STDOUT_CALLBACK": "ansible.builtin.json", "ANSIBLE_LOAD_CALLBACK_PLUGINS": "1"}


class Run:
    """One timed command: wall seconds, exit code, output and (when sampled) peak RSS of its process tree."""

    def __init__(self, cmd: list[str], seconds: float, rc: int, output: str, peak_rss: int = 0, peak_pss: int = 0):
        self.cmd, self.seconds, self.rc, self.output = cmd, seconds, rc, output
        self.peak_rss, self.peak_pss = peak_rss, peak_pss


def timed(
    cmd: list[str],
    env: dict[str, str] | None = None,
    cwd: Path = REPO,
    timeout: float = 600,
    sample_memory: bool = False,
) -> Run:
    start = time.perf_counter()
    proc = subprocess.Popen(
        cmd, cwd=cwd, env=env, text=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True
    )
    sampler = TreeSampler(proc.pid) if sample_memory else contextlib.nullcontext()
    with sampler:
        try:
            output = proc.communicate(timeout=timeout)[0]
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            output = proc.communicate()[0]
            output += f"\n[bench] killed after {timeout} s"
    seconds = time.perf_counter() - start
    if sample_memory:
        return Run(cmd, seconds, proc.returncode, output, sampler.peak, sampler.peak_pss)
    return Run(cmd, seconds, proc.returncode, output)


def alternate(commands: dict[str, Callable[[], Run]], rounds: int, warmup: bool = True) -> dict[str, list[Run]]:
    """Run every command once per round, in the same order each round; a first warm-up round is not counted."""
    results: dict[str, list[Run]] = {label: [] for label in commands}
    for n in range(rounds + (1 if warmup else 0)):
        for label, fn in commands.items():
            run = fn()
            tag = "warm-up" if warmup and n == 0 else f"round {n if warmup else n + 1}"
            log(f"  {label:<34} {tag:<9} {run.seconds:7.2f} s  rc={run.rc}")
            if not (warmup and n == 0):
                results[label].append(run)
    return results


def summary(runs: list[Run]) -> dict[str, Any]:
    secs = [r.seconds for r in runs]
    return {
        "n": len(secs),
        "median": median(secs),
        "min": min(secs) if secs else None,
        "max": max(secs) if secs else None,
        "rcs": sorted({r.rc for r in runs}),
        "seconds": [round(s, 3) for s in secs],
    }


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def sh(cmd: list[str], cwd: Path = REPO, check: bool = True) -> str:
    res = subprocess.run(cmd, cwd=cwd, text=True, capture_output=True, check=False)
    if check and res.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({res.returncode}):\n{res.stdout}\n{res.stderr}")
    return res.stdout


# ------------------------------------------------------------------------------------------- the machine
def versions() -> dict[str, str]:
    def first_line(cmd: list[str]) -> str:
        try:
            return subprocess.run(cmd, capture_output=True, text=True, check=False).stdout.strip().splitlines()[0]
        except (OSError, IndexError):
            return "n/a"

    cd_manifest = Path(sys.prefix).glob("lib/python*/site-packages/ansible_collections/community/docker/MANIFEST.json")
    cd_version = next((json.loads(p.read_text())["collection_info"]["version"] for p in cd_manifest), "n/a")
    return {
        "python": platform.python_version(),
        "ansible-core": first_line([str(VENV_BIN / "ansible"), "--version"]),
        "community.docker": cd_version,
        "psycopg2": psycopg2.__version__.split()[0],
        "docker engine": first_line(
            ["docker", "version", "--format", "{{.Server.Version}} (API {{.Server.APIVersion}})"]
        ),
        "docker compose": first_line(["docker", "compose", "version", "--short"]),
        "collection commit": first_line(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"])
        + (" (with uncommitted changes)" if sh(["git", "status", "--porcelain"], check=False).strip() else ""),
    }


def machine() -> dict[str, str]:
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if "model name" in line
        ),
        "n/a",
    )
    mem = next(
        line.split()[1] for line in Path("/proc/meminfo").read_text().splitlines() if line.startswith("MemTotal")
    )
    os_name = next(
        (
            line.split("=", 1)[1].strip('"')
            for line in Path("/etc/os-release").read_text().splitlines()
            if line.startswith("PRETTY_NAME=")
        ),
        platform.system(),
    )
    return {
        "cpu": f"{cpu}, {os.cpu_count()} cores",
        "memory": f"{int(mem) / 2**20:.1f} GiB",
        "os": f"{os_name}, kernel {platform.release()}",
        "load": " / ".join(f"{x:.2f}" for x in os.getloadavg()),
    }
