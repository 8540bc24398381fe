"""The steps of the benchmarks (see bench.py and README.md): the stand-in stacks they make and remove, the
commands each step compares, and the raw numbers each one adds to the results.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psycopg2
import yaml
from measure import (
    BENCH,
    JSON_CALLBACK,
    OUT,
    REPO,
    VENV_BIN,
    Run,
    alternate,
    log,
    median,
    parse_profile,
    parse_recap,
    reported_problems,
    seq_scans,
    sh,
    summary,
    timed,
)

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


# ------------------------------------------------------------------------------------------------ stacks
def load_module(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


standin_py = load_module("bench_standin", REPO / "tests" / "standin.py")
# ansible_run imports standin by name, as the test suites (rootdir tests/) find it.
sys.path.insert(0, str(REPO / "tests"))
# The environment the tests run ansible with (the checkout's ansible.cfg and collections/ link).
ansible_env = load_module("bench_ansible_run", REPO / "tests" / "integration" / "ansible_run.py").ansible_env
# The collection's module_utils import each other by their collection path (`make setup` links collections/).
sys.path.insert(0, str(REPO / "collections"))
queue_py = importlib.import_module("ansible_collections.fibreflow.qfieldcloud.plugins.module_utils.queue")
# every SQL statement lives in database.py; queue.py holds the decisions on what it returns
database_py = importlib.import_module("ansible_collections.fibreflow.qfieldcloud.plugins.module_utils.database")


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
                cur.execute(database_py.CATALOG_SQL)
                catalog = queue_py.parse_catalog(cur.fetchone())
                for label, sql, args in (
                    ("catalog (round trip 1)", database_py.CATALOG_SQL, None),
                    (
                        "queue (round trip 2)",
                        database_py.queue_sql(catalog),
                        {"timeout": 600.0, "use_constance": True, "job_ids": [], "claims": "{}"},
                    ),
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
