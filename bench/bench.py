"""Benchmarks of fibreflow.qfieldcloud against what an operator would otherwise do (issue 7).

Run from the collection root after ``make setup``::

    .venv/bin/python bench/bench.py            # one complete run (about 15 minutes), writes bench/RESULTS.md
    .venv/bin/python bench/bench.py --quick    # fewer rounds (about 6 minutes), writes tests/output/bench/RESULTS.md

Steps (``--steps 1,3`` runs a subset):

1. diagnose: ``playbooks/diagnose.yml`` against ``bench/community_docker_diagnose.yml`` (the same information
   through community.docker modules), ``bench/empty.yml`` (the floor), an ad-hoc ``ping`` and the bare
   ``qfc_sync_facts`` module call, run alternately on one healthy stand-in.
2. converged ``playbooks/site.yml`` (``changed=0``) against ``bench/manual_sequence.sh`` (the field guide).
3. time to repair each worker fault of the stand-in: from broken to ``playbooks/verify.yml`` passing.
4. fleet: ``diagnose.yml`` over 1, 4 and 8 stand-in stacks (one inventory host each, local connection),
   wall time and peak memory of the ansible process tree.
5. queue size: ``qfc_sync_facts`` and ``queue.read_database`` with 10 and 100,000 pending jobs, SQL statements
   counted in-process, ``EXPLAIN ANALYZE`` of each statement.

Commands of one step run alternately (round robin), so that the noise of a shared machine spreads over all of
them; compare ratios, not absolute times. Every stack the script makes is named ``bn...`` and removed at the end,
also when a step fails or the run is interrupted. Raw numbers go to ``tests/output/bench/results.json``.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import importlib.util
import json
import os
import platform
import re
import shutil
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
import yaml

REPO = Path(__file__).resolve().parent.parent
BENCH = REPO / "bench"
OUT = REPO / "tests" / "output" / "bench"
VENV_BIN = Path(sys.executable).parent
STANDIN = REPO / "tests" / "harness" / "standin"

WORKER_FAULTS = (
    "worker-stopped",
    "worker-removed",
    "worker-not-root",
    "worker-wrong-db-host",
    "worker-port-published",
    "worker-wrong-network",
    "worker-debug-command",
    "worker-hand-started",
)
# A worker started by hand is only reported by default; the role removes it when asked to.
FAULT_EXTRA_VARS = {"worker-hand-started": {"qfieldcloud_worker_remove_hand_started": True}}

FULL = {"diagnose": 7, "site": 4, "repair": 3, "fleet": 3, "queue": 7}
QUICK = {"diagnose": 3, "site": 2, "repair": 1, "fleet": 1, "queue": 3}

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


def fmt_s(value: float | None, digits: int = 2) -> str:
    return "n/a" if value is None else f"{value:.{digits}f} s"


def fmt_list(values: list[Any]) -> str:
    return "/".join(str(v) for v in values) or "n/a"


def fmt_x(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}x"


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


# ------------------------------------------------------------------------------------------------ stacks
def load_module(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


standin_py = load_module("bench_standin", REPO / "tests" / "standin.py")
# The environment the tests run ansible with (the checkout's ansible.cfg and collections/ link).
ansible_env = load_module("bench_ansible_run", REPO / "tests" / "integration" / "ansible_run.py").ansible_env
# The collection's module_utils import each other by their collection path (`make setup` links collections/).
sys.path.insert(0, str(REPO / "collections"))
queue_py = importlib.import_module("ansible_collections.fibreflow.qfieldcloud.plugins.module_utils.queue")


class Stacks:
    """The stand-in stacks of this run; every one is removed by close(), whatever happened."""

    def __init__(self, prefix: str):
        self.prefix = prefix
        self.live: dict[str, Any] = {}

    def up(self, suffix: str) -> Any:
        name = f"{self.prefix}{suffix}"
        stack = standin_py.Stack(name)
        self.live[name] = stack
        stack.down(images=True)  # a leftover of an interrupted run with the same name
        start = time.perf_counter()
        stack.up()
        log(f"stack {name} up in {time.perf_counter() - start:.1f} s")
        return stack

    def down(self, stack: Any) -> None:
        stack.down(images=True)
        self.live.pop(stack.name, None)
        log(f"stack {stack.name} removed")

    def close(self) -> None:
        for stack in list(self.live.values()):
            with contextlib.suppress(Exception):
                self.down(stack)


def write_inventory(path: Path, stacks: list[Any], state_dir: Path) -> Path:
    hosts = {}
    for stack in stacks:
        hostvars = {
            "ansible_connection": "local",
            "ansible_python_interpreter": sys.executable,
            "qfieldcloud_state_dir": str(state_dir / stack.name),
        }
        hostvars.update(stack.vars)
        hosts[stack.name] = hostvars
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump({"all": {"hosts": hosts}}, sort_keys=False))
    return path


def playbook(
    inventory: Path,
    book: str,
    *args: str,
    sample_memory: bool = False,
    timeout: float = 600,
    extra_env: dict[str, str] | None = None,
) -> Run:
    cmd = [str(VENV_BIN / "ansible-playbook"), "-i", str(inventory), book, *args]
    return timed(cmd, env=ansible_env(extra_env), sample_memory=sample_memory, timeout=timeout)


def adhoc(inventory: Path, host: str, module: str, args: dict | None = None) -> Run:
    cmd = [str(VENV_BIN / "ansible"), host, "-i", str(inventory), "-m", module]
    if args:
        cmd += ["-a", json.dumps(args)]
    return timed(cmd, env=ansible_env(JSON_CALLBACK))


def adhoc_result(run: Run, host: str) -> dict:
    """The module result of an ad-hoc run made with the json callback ({} when unreadable)."""
    try:
        start = run.output.index("{")
        doc = json.loads(run.output[start:])
        return doc["plays"][0]["tasks"][0]["hosts"][host]
    except (ValueError, KeyError, IndexError):
        return {}


def images_present(images: list[str]) -> bool:
    return subprocess.run(["docker", "image", "inspect", *images], capture_output=True, check=False).returncode == 0


def wait_worker_running(stack: Any, timeout: float = 60) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if stack.containers("worker_wrapper", all_=False):
            return True
        time.sleep(0.5)
    return False


# -------------------------------------------------------------------------------------------------- steps
class Bench:
    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.rounds = QUICK if args.quick else FULL
        self.stacks = Stacks(args.prefix)
        self.results: dict[str, Any] = {"rounds": self.rounds, "quick": args.quick}
        self.main: Any = None
        self.pristine: dict[str, str] = {}
        self.state_dir = OUT / "state"
        self.inv = OUT / "inventory-main.yml"

    # -- shared stack --------------------------------------------------------------------------------
    def main_stack(self) -> Any:
        if self.main is None:
            self.main = self.stacks.up("main")
            # The files as a fresh install has them: step 3 puts them back before each fault.
            self.pristine = {name: (self.main.dir / name).read_text() for name in ("docker-compose.yml", ".env")}
            write_inventory(self.inv, [self.main], self.state_dir)
        return self.main

    # -- 1 ----------------------------------------------------------------------------------------------
    def step_diagnose(self) -> None:
        log("step 1: diagnose.yml vs community.docker playbook vs empty playbook vs the bare module call")
        stack = self.main_stack()
        host = stack.name
        v = stack.vars
        module_args = {
            "project_dir": v["qfieldcloud_project_dir"],
            "app_url": v["qfieldcloud_app_url"],
            "app_host_header": v["qfieldcloud_host_header"],
        }
        commands = {
            "empty.yml (floor)": lambda: playbook(self.inv, "bench/empty.yml"),
            "ad-hoc ping": lambda: adhoc(self.inv, host, "ansible.builtin.ping"),
            "ad-hoc qfc_sync_facts": lambda: adhoc(self.inv, host, "fibreflow.qfieldcloud.qfc_sync_facts", module_args),
            "diagnose.yml": lambda: playbook(self.inv, "playbooks/diagnose.yml"),
            "community_docker_diagnose.yml": lambda: playbook(self.inv, "bench/community_docker_diagnose.yml"),
        }
        runs = alternate(commands, self.rounds["diagnose"])
        res = {label: summary(r) for label, r in runs.items()}
        facts = [
            adhoc_result(r, host).get("ansible_facts", {}).get("qfc_sync", {}) for r in runs["ad-hoc qfc_sync_facts"]
        ]
        res["module_duration_s"] = median([f["duration_s"] for f in facts if "duration_s" in f])
        res["module_api_calls"] = facts[-1].get("api_calls") if facts else None
        res["module_round_trips"] = facts[-1].get("database", {}).get("round_trips") if facts else None
        res["diagnose_problems"] = re.findall(r"(\d+) problem\(s\)", runs["diagnose.yml"][-1].output)
        res["community_tasks"] = parse_recap(runs["community_docker_diagnose.yml"][-1].output)
        res["community_items"] = len(
            re.findall(r"^ok: \[[^\]]+\] => \(item=", runs["community_docker_diagnose.yml"][-1].output, re.MULTILINE)
        )
        self.results["diagnose"] = res

    # -- 2 ----------------------------------------------------------------------------------------------
    def step_site(self) -> None:
        log("step 2: converged site.yml vs the field guide's manual sequence")
        stack = self.main_stack()
        first = playbook(self.inv, "playbooks/site.yml")
        log(f"  converging run of site.yml: {first.seconds:.2f} s rc={first.rc} recap={parse_recap(first.output)}")
        if first.rc != 0:
            raise RuntimeError(f"site.yml does not converge the healthy stand-in:\n{first.output[-4000:]}")
        commands = {
            "site.yml": lambda: playbook(self.inv, "playbooks/site.yml"),
            "site.yml --skip-tags verify": lambda: playbook(self.inv, "playbooks/site.yml", "--skip-tags", "verify"),
            "manual_sequence.sh": lambda: timed([str(BENCH / "manual_sequence.sh"), str(stack.dir)], env=ansible_env()),
            "diagnose.yml": lambda: playbook(self.inv, "playbooks/diagnose.yml"),
        }
        runs = alternate(commands, self.rounds["site"], warmup=False)
        res = {label: summary(r) for label, r in runs.items()}
        for label in ("site.yml", "site.yml --skip-tags verify"):
            res[label]["changed"] = [parse_recap(r.output).get(stack.name, {}).get("changed") for r in runs[label]]
        res["first_run"] = {"seconds": first.seconds, "recap": parse_recap(first.output).get(stack.name)}
        profiled = playbook(
            self.inv,
            "playbooks/site.yml",
            "--skip-tags",
            "verify",
            extra_env={
                "ANSIBLE_CALLBACKS_ENABLED": "ansible.posix.profile_tasks",
                "PROFILE_TASKS_TASK_OUTPUT_LIMIT": "12",
            },
        )
        res["profile"] = {
            "seconds": profiled.seconds,
            "recap": parse_recap(profiled.output).get(stack.name),
            "tasks": parse_profile(profiled.output),
        }
        self.results["site"] = res

    # -- 3 ----------------------------------------------------------------------------------------------
    def reset_main(self) -> None:
        """Put the stack back as a fresh install has it: the original files, no override, compose up -d."""
        stack = self.main
        for name, text in self.pristine.items():
            (stack.dir / name).write_text(text)
        (stack.dir / ".env").chmod(0o600)
        for extra in stack.dir.glob("docker-compose.override.fibreflow-*.yml"):
            extra.unlink()
        sh(["docker", "rm", "-f", f"{stack.name}-worker"], check=False)
        stack.compose("up", "-d", "--remove-orphans")
        if not wait_worker_running(stack):
            raise RuntimeError(f"the worker of {stack.name} does not run after the reset")

    def step_repair(self) -> None:
        log("step 3: time to repair each worker fault (site.yml, then verify.yml passing)")
        stack = self.main_stack()
        images = [f"{stack.name}-worker_wrapper", f"{stack.name}-app", f"{stack.name}-qgis3"]
        res: dict[str, Any] = {}
        for fault in self.args.faults:
            rounds = []
            for n in range(self.rounds["repair"]):
                self.reset_main()
                stack.break_(fault)
                extra = FAULT_EXTRA_VARS.get(fault, {})
                extra_args = ["-e", json.dumps(extra)] if extra else []
                start = time.perf_counter()
                site = playbook(self.inv, "playbooks/site.yml", "--skip-tags", "verify", *extra_args)
                verify = playbook(self.inv, "playbooks/verify.yml")
                total = time.perf_counter() - start
                present = images_present(images)
                row = {
                    "total": total,
                    "site": site.seconds,
                    "verify": verify.seconds,
                    "site_rc": site.rc,
                    "verify_rc": verify.rc,
                    "changed": parse_recap(site.output).get(stack.name, {}).get("changed"),
                    "problems": reported_problems(site.output),
                    "images_present": present,
                }
                if site.rc != 0 or verify.rc != 0:
                    fail_log = OUT / f"repair-{fault}-{n + 1}.log"
                    fail_log.write_text(site.output + "\n\n===== verify.yml\n\n" + verify.output)
                    row["log"] = str(fail_log.relative_to(REPO))
                log(
                    f"  {fault:<24} round {n + 1}: {total:6.2f} s"
                    f" (site {site.seconds:.2f}, verify {verify.seconds:.2f}) rc={site.rc}/{verify.rc}"
                    f" changed={row['changed']} problems={','.join(row['problems'])}"
                )
                rounds.append(row)
            ok = [r["total"] for r in rounds if r["site_rc"] == 0 and r["verify_rc"] == 0]
            res[fault] = {
                "rounds": rounds,
                "median": median(ok),
                "worst": max(ok) if ok else None,
                "site_median": median([r["site"] for r in rounds]),
                "verify_median": median([r["verify"] for r in rounds]),
                "repaired": len(ok),
            }
        self.reset_main()
        self.results["repair"] = res

    # -- 4 ----------------------------------------------------------------------------------------------
    def step_fleet(self) -> None:
        log("step 4: diagnose.yml over a fleet of 1, 4 and 8 stacks on one engine")
        stack = self.main_stack()
        fleet = [stack]
        try:
            for i in range(2, 9):
                fleet.append(self.stacks.up(f"f{i}"))
            inventories = {
                n: write_inventory(OUT / f"inventory-fleet-{n}.yml", fleet[:n], self.state_dir) for n in (1, 4, 8)
            }
            commands = {
                f"{n} host(s)": (
                    lambda inv=inv: playbook(inv, "playbooks/diagnose.yml", "--forks", "8", sample_memory=True)
                )
                for n, inv in inventories.items()
            }
            runs = alternate(commands, self.rounds["fleet"])
        finally:
            for extra in fleet[1:]:
                with contextlib.suppress(Exception):
                    self.stacks.down(extra)
        res: dict[str, Any] = {}
        for n in (1, 4, 8):
            r = runs[f"{n} host(s)"]
            res[str(n)] = summary(r) | {
                "peak_rss_mib": median([x.peak_rss / 2**20 for x in r]),
                "peak_pss_mib": median([x.peak_pss / 2**20 for x in r]),
                "failed_hosts": [sum(1 for h in parse_recap(x.output).values() if h["failed"]) for x in r],
            }
        t1, t4, t8 = (res[str(n)]["median"] for n in (1, 4, 8))
        m1, m8 = res["1"]["peak_rss_mib"], res["8"]["peak_rss_mib"]
        res["per_extra_host_s"] = (t8 - t1) / 7
        res["per_extra_host_s_1_to_4"] = (t4 - t1) / 3
        res["per_extra_host_s_4_to_8"] = (t8 - t4) / 4
        res["per_extra_host_mib"] = (m8 - m1) / 7
        res["per_extra_host_pss_mib"] = (res["8"]["peak_pss_mib"] - res["1"]["peak_pss_mib"]) / 7
        self.results["fleet"] = res

    # -- 5 ----------------------------------------------------------------------------------------------
    def conn_params(self, stack: Any) -> dict[str, Any]:
        env = stack.env
        db = stack.containers("db", all_=False)[0]
        networks = stack.inspect(db)["NetworkSettings"]["Networks"]
        address = (networks.get(f"{stack.name}_default") or next(iter(networks.values())))["IPAddress"]
        return {
            "host": address,
            "port": 5432,
            "dbname": env["POSTGRES_DB"],
            "user": env["POSTGRES_USER"],
            "password": env["POSTGRES_PASSWORD"],
        }

    def read_database_counted(self, params: dict[str, Any]) -> tuple[float, int, dict, dict]:
        """queue.read_database in this process, with every cursor.execute counted."""
        statements: list[str] = []

        class Cursor:
            def __init__(self, cur):
                self._cur = cur

            def __enter__(self):
                return self

            def __exit__(self, *exc):
                self._cur.close()

            def execute(self, sql, args=None):
                statements.append(sql)
                return self._cur.execute(sql, args)

            def __getattr__(self, name):
                return getattr(self._cur, name)

        class Conn:
            def __init__(self, conn):
                self._conn = conn

            def cursor(self, *a, **kw):
                return Cursor(self._conn.cursor(*a, **kw))

            def __setattr__(self, name, value):
                if name == "_conn":
                    object.__setattr__(self, name, value)
                else:
                    setattr(self._conn, name, value)

            def __getattr__(self, name):
                return getattr(self._conn, name)

        start = time.perf_counter()
        database, queue = queue_py.read_database(params, 600, connect=lambda **kw: Conn(psycopg2.connect(**kw)))
        return time.perf_counter() - start, len(statements), database, queue

    def explain(self, params: dict[str, Any]) -> dict[str, str]:
        plans = {}
        with contextlib.closing(psycopg2.connect(**params)) as conn:
            conn.autocommit = True
            with conn.cursor() as cur:
                cur.execute(queue_py.CATALOG_SQL)
                catalog = queue_py.parse_catalog(cur.fetchone())
                for label, sql, args in (
                    ("catalog (round trip 1)", queue_py.CATALOG_SQL, None),
                    ("queue (round trip 2)", queue_py.queue_sql(catalog), {"timeout": 600.0, "job_ids": []}),
                ):
                    cur.execute("EXPLAIN (ANALYZE, BUFFERS) " + sql, args)
                    plans[label] = "\n".join(row[0] for row in cur.fetchall())
        return plans

    def step_queue(self) -> None:
        log("step 5: qfc_sync_facts with 10 and with 100,000 pending jobs")
        stack = self.main_stack()
        # The worker would claim the jobs (and start a QGIS container for each): stop it first.
        stack.compose("stop", "worker_wrapper")
        project, user = self.probe_ids(stack)
        params = self.conn_params(stack)
        v = stack.vars
        module_args = {
            "project_dir": v["qfieldcloud_project_dir"],
            "app_url": v["qfieldcloud_app_url"],
            "app_host_header": v["qfieldcloud_host_header"],
        }
        res: dict[str, Any] = {}
        have = 0
        for pending in (10, 100_000):
            stack.sql(
                "INSERT INTO core_job (id, project_id, type, status, output, container_id, triggered_by_id,"
                " created_by_id, created_at, updated_at) SELECT gen_random_uuid(),"
                f" '{project}', 'package', 'pending', '', '', {user}, {user},"
                " now() - make_interval(secs => g), now() - make_interval(secs => g)"
                f" FROM generate_series(1, {pending - have}) AS g"
            )
            have = pending
            stack.sql("ANALYZE core_job")
            # The first of each (a warm-up: caches, the connection) is not counted.
            rounds = range(self.rounds["queue"] + 1)
            counted = [self.read_database_counted(params) for _round in rounds][1:]
            module = "fibreflow.qfieldcloud.qfc_sync_facts"
            module_runs = [adhoc(self.inv, stack.name, module, module_args) for _round in rounds][1:]
            facts = [adhoc_result(r, stack.name).get("ansible_facts", {}).get("qfc_sync", {}) for r in module_runs]
            plans = self.explain(params)
            database, queue = counted[-1][2], counted[-1][3]
            res[str(pending)] = {
                "rows_in_core_job": int(stack.sql("SELECT count(*) FROM core_job")[0][0]),
                "read_database": summary([Run([], c[0], 0, "") for c in counted]),
                "statements": sorted({c[1] for c in counted}),
                "module_round_trips": sorted({f.get("database", {}).get("round_trips") for f in facts}, key=str),
                "module": summary(module_runs),
                "module_duration_s": median([f["duration_s"] for f in facts if "duration_s" in f]),
                "module_db_duration_s": median(
                    [f["database"]["duration_s"] for f in facts if "duration_s" in f.get("database", {})]
                ),
                "pending_seen": queue.get("counts_by_status", {}).get("pending"),
                "claimable_seen": queue.get("claimable_pending"),
                "database_error": database.get("error"),
                "plans": plans,
                "seq_scans": {label: seq_scans(plan) for label, plan in plans.items()},
            }
            r = res[str(pending)]
            log(
                f"  {pending:>7} pending: read_database {r['read_database']['median'] * 1000:.1f} ms,"
                f" {r['statements']} statements; module {r['module']['median']:.2f} s"
                f" (its own work {r['module_duration_s']} s); seq scans {r['seq_scans']}"
            )
        self.results["queue"] = res

    @staticmethod
    def probe_ids(stack: Any) -> tuple[str, str]:
        table = "core_project" if "QFIELDCLOUD_QGIS_IMAGE_NAME" in stack.env else "project_project"
        project = stack.sql(f"SELECT id FROM {table} WHERE name = 'probe-project'")[0][0]
        user = stack.sql("SELECT id FROM core_user WHERE username = 'probe'")[0][0]
        return project, user


# ------------------------------------------------------------------------------------------------ report
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


def verdict(ok: bool | None) -> str:
    return "n/a" if ok is None else ("**met**" if ok else "**MISSED**")


def table(header: list[str], rows: list[list[Any]]) -> list[str]:
    """A Markdown table; the first column is left-aligned, the others right-aligned."""
    lines = ["| " + " | ".join(header) + " |", "|---|" + "---:|" * (len(header) - 1)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return [*lines, ""]


def timing_row(label: str, s: dict[str, Any], base: float | None) -> list[Any]:
    return [label, fmt_s(s["median"]), fmt_s(s["min"]), fmt_s(s["max"]), s["n"], fmt_x(ratio(s["median"], base))]


TIMING_HEADER = ["Command", "Median", "Min", "Max", "Runs"]


def render_meta(results: dict[str, Any]) -> list[str]:
    meta = results["meta"]
    out = [
        "# Benchmark results",
        "",
        "One complete run of `bench/bench.py` (see [README.md](README.md) for what each step does and how to repeat"
        " it). The machine is shared with other work and has 2 cores: compare the **ratios**; absolute times move"
        " with the load. Times are wall-clock medians of runs made alternately (round robin) in one session.",
        "",
        f"- Date: {meta['started']} (the run took {meta['wall_min']:.1f} min)",
        f"- Command: `{meta['command']}`",
    ]
    names = {"cpu": "CPU", "memory": "Memory", "os": "OS", "load": "Load average (1/5/15 min)"}
    for key, value in meta["machine"].items():
        extra = f" at the start, {meta['load_end']} at the end" if key == "load" else ""
        out.append(f"- {names.get(key, key)}: {value}{extra}")
    out += [f"- {key}: {value}" for key, value in meta["versions"].items()]
    out += [f"- Rounds per command: {', '.join(f'{k} {v}' for k, v in results['rounds'].items())}", ""]
    return out


def render_diagnose(d: dict[str, Any]) -> list[str]:
    floor = d["empty.yml (floor)"]["median"]
    diag = d["diagnose.yml"]["median"]
    comm = d["community_docker_diagnose.yml"]["median"]
    one_call = d["ad-hoc qfc_sync_facts"]["median"]
    labels = (
        "empty.yml (floor)",
        "ad-hoc ping",
        "ad-hoc qfc_sync_facts",
        "diagnose.yml",
        "community_docker_diagnose.yml",
    )
    rows = [[*timing_row(label, d[label], floor), d[label]["rcs"]] for label in labels]
    speedup = ratio(comm, diag)
    community_ok = "/".join(str(h["ok"]) for h in d["community_tasks"].values()) or "?"
    community_items = d.get("community_items", "?")
    return [
        "## 1. Diagnose a healthy stand-in",
        "",
        *table([*TIMING_HEADER, "vs floor", "exit codes"], rows),
        f"- community.docker playbook / diagnose.yml: **{fmt_x(speedup)}**"
        f" (target at least 4x: {verdict(speedup >= 4 if speedup else None)}).",
        f"- diagnose.yml minus the floor: **{fmt_s(diag - floor)}**; one module call (ad-hoc qfc_sync_facts minus"
        f" the floor): {fmt_s(one_call - floor)}; diagnose.yml / ad-hoc qfc_sync_facts: {fmt_x(ratio(diag, one_call))}"
        f" (target diagnose.yml no more than the floor plus one module call, 10 % noise allowed:"
        f" {verdict(diag <= one_call * 1.10)}).",
        f"- community.docker playbook minus the floor: {fmt_s(comm - floor)}, that is"
        f" {fmt_x(ratio(comm - floor, diag - floor))} the work of diagnose.yml above the floor.",
        f"- Work inside the module (its `duration_s`, median): {fmt_s(d['module_duration_s'], 3)};"
        f" Docker API calls {d['module_api_calls']}, SQL round trips {d['module_round_trips']}.",
        f"- diagnose.yml found {', '.join(d['diagnose_problems']) or '?'} problem(s) on the stand-in; the"
        f" community.docker playbook ran {community_ok} tasks, one of them docker_container_info {community_items}"
        " times (once per container of the project).",
        "",
    ]


def render_site(s2: dict[str, Any]) -> list[str]:
    manual = s2["manual_sequence.sh"]["median"]
    labels = ("site.yml", "site.yml --skip-tags verify", "manual_sequence.sh", "diagnose.yml")
    rows = [[*timing_row(label, s2[label], manual), s2[label].get("changed", ""), s2[label]["rcs"]] for label in labels]
    changed = s2["site.yml"]["changed"] + s2["site.yml --skip-tags verify"]["changed"]
    site, bare = s2["site.yml"]["median"], s2["site.yml --skip-tags verify"]["median"]
    first = s2["first_run"]
    vs_facts = ratio(bare, s2["diagnose.yml"]["median"])
    return [
        "## 2. Converged site.yml against the field guide's manual sequence",
        "",
        *table([*TIMING_HEADER, "vs manual sequence", "changed=", "exit codes"], rows),
        f"- Converged re-runs report `changed=0`: {verdict(all(c == 0 for c in changed))} ({changed}).",
        f"- site.yml / manual sequence: **{fmt_x(ratio(site, manual))}**; without its verification (the probe job"
        f" through the worker): **{fmt_x(ratio(bare, manual))}**. The manual sequence is mostly the guide's fixed"
        f" `sleep 10`: its commands take about {fmt_s(manual - 10)}, and it checks nothing (no readiness, no worker"
        " configuration, no sync proof).",
        f"- Converged site.yml without verification / diagnose.yml: {fmt_x(vs_facts)} (design target: a converged"
        f" re-run costs little more than the facts call, read here as at most 2x: {verdict(vs_facts <= 2)}).",
        f"- The first, converging run of site.yml on the fresh stand-in: {fmt_s(first['seconds'])},"
        f" changed={first['recap'].get('changed') if first['recap'] else '?'}.",
        *render_profile(s2.get("profile")),
        "",
    ]


def render_profile(profile: dict[str, Any] | None) -> list[str]:
    if not profile or not profile["tasks"]:
        return []
    recap = profile["recap"] or {}
    out = [
        f"- Where a converged `site.yml --skip-tags verify` spends its time (one extra run with"
        f" ansible.posix.profile_tasks, {fmt_s(profile['seconds'])}, ok={recap.get('ok')}"
        f" skipped={recap.get('skipped')}; the slowest tasks):",
        "",
    ]
    out += [f"  - {seconds:.2f} s {task}" for task, seconds in profile["tasks"]]
    return out


def render_repair(rep: dict[str, Any]) -> list[str]:
    out = [
        "## 3. Time to repair each worker fault (images present)",
        "",
        "From the injected fault (`tests/harness/standin break FAULT` on the stack with the files of a fresh"
        " install) to `playbooks/verify.yml` passing: `ansible-playbook playbooks/site.yml --skip-tags verify`"
        " (the repair), then `ansible-playbook playbooks/verify.yml` (status, login, a probe job that the worker"
        " must finish). site.yml run whole verifies too; the split only keeps the probe job from running twice.",
        "",
    ]
    rows = []
    for fault, r in rep.items():
        problems = sorted({p for row in r["rounds"] for p in row["problems"]})
        images = all(row["images_present"] for row in r["rounds"])
        logs = [row["log"] for row in r["rounds"] if "log" in row]
        rows.append(
            [
                fault,
                fmt_s(r["median"], 1),
                fmt_s(r["worst"], 1),
                fmt_s(r["site_median"], 1),
                fmt_s(r["verify_median"], 1),
                f"{r['repaired']}/{len(r['rounds'])}" + (f" (logs: {', '.join(logs)})" if logs else ""),
                ", ".join(problems) or "none",
                "yes" if images else "NO",
            ]
        )
    header = ["Fault", "Median", "Worst", "repair (median)", "verify.yml (median)", "repaired", "reported", "images"]
    out += table(header, rows)
    ok_rounds = [row for r in rep.values() for row in r["rounds"] if row["site_rc"] == 0 and row["verify_rc"] == 0]
    every = [row["total"] for row in ok_rounds]
    all_ok = len(ok_rounds) == sum(len(r["rounds"]) for r in rep.values())
    worst = max(every) if every else None
    out += [
        f"- Over all faults: median {fmt_s(median(every), 1)}, worst {fmt_s(worst, 1)} (target: well under a"
        f" minute: {verdict(all_ok and worst is not None and worst < 60)}).",
        "- `reported` lists the problem codes that site.yml printed before repairing (evidence that the fault was"
        " there).",
    ]
    if "worker-hand-started" in rep:
        out.append(
            "- worker-hand-started is repaired with `-e qfieldcloud_worker_remove_hand_started=true`"
            " (by default the role only reports the hand-started container)."
        )
    return [*out, ""]


def render_fleet(fl: dict[str, Any]) -> list[str]:
    rows = []
    for n in ("1", "4", "8"):
        s = fl[n]
        memory = [f"{s['peak_rss_mib']:.0f} MiB", f"{s['peak_pss_mib']:.0f} MiB"]
        rows.append([*timing_row(n, s, None)[:5], *memory, s["failed_hosts"]])
    return [
        "## 4. Fleet: diagnose.yml over several stacks on one engine",
        "",
        "One inventory host per stand-in stack, `ansible_connection: local`, `--forks 8`. Peak memory: the highest"
        " sum over the `ansible-playbook` process and all its descendants, sampled from /proc every 50 ms, of RSS"
        " (what the brief asks for; pages that forked workers share are counted once per process) and of PSS"
        " (`/proc/PID/smaps_rollup`, shared pages split between their users: closer to the real use).",
        "",
        *table(["Hosts", "Median wall", "Min", "Max", "Runs", "Peak RSS", "Peak PSS", "failed hosts"], rows),
        f"- Time per extra host: **{fmt_s(fl['per_extra_host_s'])}** from 1 to 8 hosts"
        f" ({fmt_s(fl['per_extra_host_s_1_to_4'])} from 1 to 4, {fmt_s(fl['per_extra_host_s_4_to_8'])} from 4 to"
        f" 8); 8 hosts / 1 host: {fmt_x(ratio(fl['8']['median'], fl['1']['median']))}.",
        f"- Memory per extra host: {fl['per_extra_host_mib']:.0f} MiB of summed RSS,"
        f" {fl['per_extra_host_pss_mib']:.0f} MiB of summed PSS.",
        "- All stacks share one Docker engine and one 2-core machine: each extra host adds a module process on the"
        " same CPUs, so the cost per host here is an upper bound for hosts that run their own modules.",
        "",
    ]


def plan_notes(plan: str) -> list[str]:
    """What a queue plan shows, in words, for the patterns that make it grow with the queue."""
    notes = []
    cte = re.search(r"CTE (\w+)\n\s+->  Seq Scan on core_job\b", plan)
    if cte:
        uses = len(re.findall(rf"CTE Scan on {cte[1]}\b", plan))
        notes.append(
            f"  - The CTE `{cte[1]}` copies all of core_job (one sequential scan, every row materialised because it"
            f" is referenced {uses} times), and each subquery then scans that copy: none of core_job's indexes"
            " (status, created_at, pkey) can be used for the status filters, the oldest pending job or the job ids."
        )
    spill = re.search(r"temp read=(\d+) written=(\d+)", plan)
    if spill:
        notes.append(
            f"  - The materialised rows exceed work_mem and spill to disk (temp read={spill[1]} written={spill[2]}"
            " blocks)."
        )
    if "id)::text = ANY" in plan:
        notes.append("  - `id::text = ANY(...)` cannot use the primary key; `id = ANY(%(job_ids)s::uuid[])` can.")
    return notes


def render_queue(q: dict[str, Any]) -> list[str]:
    out = [
        "## 5. Queue size: 10 against 100,000 pending jobs",
        "",
        "Pending jobs inserted into the stand-in's `core_job` with one `INSERT ... SELECT ... generate_series`"
        " (the worker stopped first, so that nothing claims them), then `ANALYZE core_job`. `read_database` is"
        " `plugins/module_utils/queue.py` called in the benchmark's own process with `cursor.execute` wrapped to"
        " count statements; the module run is the ad-hoc `qfc_sync_facts` call (with Ansible's start-up).",
        "",
    ]
    rows = []
    for n in ("10", "100000"):
        r = q[n]
        rows.append(
            [
                f"{int(n):,}",
                f"{r['rows_in_core_job']:,}",
                f"{r['read_database']['median'] * 1000:.1f} ms",
                fmt_list(r["statements"]),
                fmt_s(r["module"]["median"]),
                fmt_s(r["module_duration_s"], 3),
                fmt_s(r["module_db_duration_s"], 3),
                fmt_list(r["module_round_trips"]),
                f"{r['pending_seen']} / {r['claimable_seen']}",
            ]
        )
    header = ["Pending", "core_job rows", "read_database", "statements", "module run", "module's work"]
    out += table([*header, "its DB part", "module round_trips", "pending / claimable seen"], rows)
    small, big = q["10"], q["100000"]
    read_ratio = ratio(big["read_database"]["median"], small["read_database"]["median"])
    module_ratio = ratio(big["module"]["median"], small["module"]["median"])
    work_ratio = ratio(big["module_duration_s"], small["module_duration_s"])
    db_ratio = ratio(big["module_db_duration_s"], small["module_db_duration_s"])
    out += [
        f"- SQL statements per read: {fmt_list(small['statements'])} with 10, {fmt_list(big['statements'])} with"
        f" 100,000: flat {verdict(small['statements'] == big['statements'])}.",
        f"- 100,000 / 10 pending: read_database **{fmt_x(read_ratio)}**, the module's DB part {fmt_x(db_ratio)},"
        f" the module's own work (`duration_s`) **{fmt_x(work_ratio)}**, the whole ad-hoc module run"
        f" {fmt_x(module_ratio)} (Ansible's start-up hides most of it). Run time flat, judged on the module's own"
        f" work, within 25 %: {verdict(work_ratio is not None and work_ratio <= 1.25)}.",
    ]
    scans = [label for label, s in big["seq_scans"].items() if "core_job" in s]
    if scans:
        out.append(
            f"- **Sequential scan of core_job with 100,000 rows** in: {', '.join(scans)}. The database time grows"
            " with the queue; see the plans below."
        )
        out += plan_notes(big["plans"].get("queue (round trip 2)", ""))
    else:
        out.append("- No sequential scan of core_job in the plans with 100,000 rows.")
    out.append("")
    for n in ("100000", "10"):
        for label, plan in q[n]["plans"].items():
            scans_here = ", ".join(q[n]["seq_scans"][label]) or "none"
            out += [
                f"<details><summary>EXPLAIN (ANALYZE, BUFFERS) with {int(n):,} pending jobs: {label}"
                f" (sequential scans: {scans_here})</summary>",
                "",
                "```",
                plan,
                "```",
                "</details>",
                "",
            ]
    return out


def headline(results: dict[str, Any]) -> list[str]:
    """The few figures quoted in bench/README.md."""
    out = []
    d = results.get("diagnose")
    if d:
        diag, comm = d["diagnose.yml"]["median"], d["community_docker_diagnose.yml"]["median"]
        floor, one = d["empty.yml (floor)"]["median"], d["ad-hoc qfc_sync_facts"]["median"]
        out.append(
            f"- Diagnose: diagnose.yml {fmt_s(diag)} against {fmt_s(comm)} for the community.docker playbook"
            f" (**{fmt_x(ratio(comm, diag))} faster**); floor (empty playbook) {fmt_s(floor)}, bare qfc_sync_facts"
            f" call {fmt_s(one)} (diagnose.yml / bare call {fmt_x(ratio(diag, one))}); the module's own work"
            f" {fmt_s(d['module_duration_s'], 3)}."
        )
    s2 = results.get("site")
    if s2:
        manual = s2["manual_sequence.sh"]["median"]
        site, bare = s2["site.yml"]["median"], s2["site.yml --skip-tags verify"]["median"]
        out.append(
            f"- Converged site.yml (changed=0): {fmt_s(site)} with its probe-job verification, {fmt_s(bare)} without,"
            f" against {fmt_s(manual)} for the field guide's manual sequence (ratios {fmt_x(ratio(site, manual))}"
            f" and {fmt_x(ratio(bare, manual))}); without verification it costs"
            f" {fmt_x(ratio(bare, s2['diagnose.yml']['median']))} diagnose.yml."
        )
    rep = results.get("repair")
    if rep:
        every = [
            row["total"] for r in rep.values() for row in r["rounds"] if row["site_rc"] == 0 and row["verify_rc"] == 0
        ]
        rounds = sum(len(r["rounds"]) for r in rep.values())
        slowest = max(rep, key=lambda f: rep[f]["worst"] or 0)
        out.append(
            f"- Repair, from broken to verify.yml passing: median {fmt_s(median(every), 1)} over {len(rep)} worker"
            f" faults, worst {fmt_s(max(every) if every else None, 1)} ({slowest}); {len(every)}/{rounds} rounds"
            " repaired."
        )
    fl = results.get("fleet")
    if fl:
        out.append(
            f"- Fleet: diagnose.yml over 1 / 4 / 8 stacks {fmt_s(fl['1']['median'])} / {fmt_s(fl['4']['median'])} /"
            f" {fmt_s(fl['8']['median'])}, **{fmt_s(fl['per_extra_host_s'])} per extra host**; peak memory"
            f" {fl['1']['peak_pss_mib']:.0f} / {fl['4']['peak_pss_mib']:.0f} / {fl['8']['peak_pss_mib']:.0f} MiB PSS"
            f" ({fl['1']['peak_rss_mib']:.0f} / {fl['4']['peak_rss_mib']:.0f} / {fl['8']['peak_rss_mib']:.0f} MiB"
            " summed RSS)."
        )
    q = results.get("queue")
    if q:
        small, big = q["10"], q["100000"]
        scans = [label for label, s in big["seq_scans"].items() if "core_job" in s]
        ms_small, ms_big = small["read_database"]["median"] * 1000, big["read_database"]["median"] * 1000
        out.append(
            f"- Queue: {fmt_list(small['statements'])} / {fmt_list(big['statements'])} SQL statements with 10 /"
            " 100,000 pending jobs;"
            f" read_database {ms_small:.0f} ms / {ms_big:.0f} ms ({fmt_x(ratio(ms_big, ms_small))}), the module's own"
            f" work {fmt_s(small['module_duration_s'], 3)} / {fmt_s(big['module_duration_s'], 3)}"
            f" ({fmt_x(ratio(big['module_duration_s'], small['module_duration_s']))}), the ad-hoc module call"
            f" {fmt_s(small['module']['median'])} / {fmt_s(big['module']['median'])}"
            f" ({fmt_x(ratio(big['module']['median'], small['module']['median']))})"
            + (f"; sequential scan of core_job in the {', '.join(scans)} statement." if scans else "; no seq scan.")
        )
    return out


def render(results: dict[str, Any]) -> str:
    out = render_meta(results)
    if headline(results):
        out += ["## Headline", "", *headline(results), ""]
    for key, fn in (
        ("diagnose", render_diagnose),
        ("site", render_site),
        ("repair", render_repair),
        ("fleet", render_fleet),
        ("queue", render_queue),
    ):
        if results.get(key):
            out += fn(results[key])
    if results.get("failed_steps"):
        out += ["## Steps that failed", "", *(f"- {f}" for f in results["failed_steps"]), ""]
    return "\n".join(out)


# -------------------------------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", maxsplit=1)[0])
    parser.add_argument("--quick", action="store_true", help="fewer rounds (a check that everything runs)")
    parser.add_argument("--steps", default="1,2,3,4,5", help="comma-separated steps to run (default: all)")
    parser.add_argument("--faults", default=",".join(WORKER_FAULTS), help="worker faults for step 3")
    parser.add_argument(
        "--output", type=Path, help="report path (default bench/RESULTS.md; --quick: tests/output/bench)"
    )
    parser.add_argument("--prefix", default=f"bn{os.getpid() % 10000:04d}", help="stack name prefix (starts with bn)")
    parser.add_argument("--render-only", type=Path, metavar="RESULTS_JSON", help="only write the report of a raw file")
    args = parser.parse_args(argv)
    if args.render_only:
        output = args.output or BENCH / "RESULTS.md"
        output.write_text(render(json.loads(args.render_only.read_text())))
        return 0
    args.faults = [f for f in args.faults.split(",") if f]
    steps = {int(s) for s in args.steps.split(",") if s}
    if not args.prefix.startswith("bn"):
        parser.error("--prefix must start with bn")
    output = args.output or (OUT / "RESULTS.md" if args.quick else BENCH / "RESULTS.md")
    if not (REPO / "collections" / "ansible_collections" / "fibreflow" / "qfieldcloud").exists():
        parser.error("run `make setup` first (collections/ link missing)")

    OUT.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(OUT / "state", ignore_errors=True)

    def terminate(signum, _frame):
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, terminate)
    signal.signal(signal.SIGHUP, terminate)

    bench = Bench(args)
    started = dt.datetime.now(dt.UTC)
    t0 = time.perf_counter()
    meta = {
        "started": started.strftime("%Y-%m-%d %H:%M UTC"),
        "command": " ".join([".venv/bin/python", "bench/bench.py", *(argv if argv is not None else sys.argv[1:])]),
        "machine": machine(),
        "versions": versions(),
    }
    order = [
        (1, bench.step_diagnose),
        (2, bench.step_site),
        (3, bench.step_repair),
        (4, bench.step_fleet),
        (5, bench.step_queue),
    ]
    failed = []
    try:
        for number, step in order:
            if number not in steps:
                continue
            try:
                step()
            except Exception as exc:  # one broken step must not lose the others' numbers
                log(f"step {number} failed: {exc}")
                failed.append(f"step {number}: {exc}")
    finally:
        bench.stacks.close()
    meta["wall_min"] = (time.perf_counter() - t0) / 60
    meta["load_end"] = " / ".join(f"{x:.2f}" for x in os.getloadavg())
    bench.results["meta"] = meta
    bench.results["failed_steps"] = failed
    raw = OUT / "results.json"
    raw.write_text(json.dumps(bench.results, indent=1, default=str))
    report = render(bench.results)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(report)
    shown = output.relative_to(REPO) if output.is_relative_to(REPO) else output
    log(f"report: {shown}; raw numbers: {raw.relative_to(REPO)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
