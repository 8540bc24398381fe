"""The benchmark's files are scripts beside each other in bench/, not a package: their tests import them from there.

``results()`` builds raw results shaped as ``steps.Bench`` writes them (tests/output/bench/results.json), every
step present, for the report's tests.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

BENCH_DIR = Path(__file__).resolve().parents[3] / "bench"
if str(BENCH_DIR) not in sys.path:
    sys.path.insert(0, str(BENCH_DIR))


def summary(*seconds: float, rc: int = 0) -> dict:
    ordered = sorted(seconds)
    return {
        "n": len(seconds),
        "median": ordered[len(ordered) // 2],
        "min": ordered[0],
        "max": ordered[-1],
        "rcs": [rc],
        "seconds": list(seconds),
    }


def recap(changed: int = 0) -> dict:
    return {"ok": 40, "changed": changed, "unreachable": 0, "failed": 0, "skipped": 12, "rescued": 0, "ignored": 0}


QUEUE_PLAN = """Result  (actual time=151.768..151.792 rows=1 loops=1)
  Buffers: shared hit=1557, temp read=4936 written=1320
  CTE jobs
    ->  Seq Scan on core_job  (cost=0.00..2540.05 rows=100005 width=72)
  ->  CTE Scan on jobs j
  ->  CTE Scan on jobs jobs_2"""


def queue_size(rows: int, read_s: float, module_s: float) -> dict:
    plans = {"catalog (round trip 1)": "Seq Scan on pg_class", "queue (round trip 2)": QUEUE_PLAN}
    return {
        "rows_in_core_job": rows,
        "read_database": summary(read_s, read_s * 1.1, read_s * 0.9),
        "statements": [2],
        "module_round_trips": [2],
        "module": summary(module_s + 1.4, module_s + 1.5, module_s + 1.3),
        "module_duration_s": module_s,
        "module_db_duration_s": read_s,
        "pending_seen": rows,
        "claimable_seen": rows,
        "database_error": None,
        "plans": plans,
        "seq_scans": {"catalog (round trip 1)": ["pg_class"], "queue (round trip 2)": ["core_job"]},
    }


def build_results() -> dict:
    repair_row = {
        "total": 20.5,
        "site": 15.0,
        "verify": 5.5,
        "site_rc": 0,
        "verify_rc": 0,
        "changed": 3,
        "problems": ["worker_not_running"],
        "images_present": True,
    }
    failed_row = {**repair_row, "site_rc": 2, "log": "tests/output/bench/repair-worker-removed-1.log"}
    fleet = {
        n: summary(seconds, seconds + 0.1) | {"peak_rss_mib": mib, "peak_pss_mib": mib / 2, "failed_hosts": [0, 0]}
        for n, seconds, mib in (("1", 1.3, 150.0), ("4", 2.9, 420.0), ("8", 4.4, 790.0))
    }
    fleet |= {
        "per_extra_host_s": 0.44,
        "per_extra_host_s_1_to_4": 0.51,
        "per_extra_host_s_4_to_8": 0.38,
        "per_extra_host_mib": 91.4,
        "per_extra_host_pss_mib": 45.7,
    }
    results = {
        "rounds": {"diagnose": 7, "site": 4, "repair": 3, "fleet": 3, "queue": 7},
        "quick": False,
        "diagnose": {
            "empty.yml (floor)": summary(0.46, 0.47, 0.45),
            "ad-hoc ping": summary(0.9, 0.95, 0.85),
            "ad-hoc qfc_sync_facts": summary(1.3, 1.35, 1.25),
            "diagnose.yml": summary(1.28, 1.3, 1.2),
            "community_docker_diagnose.yml": summary(7.34, 7.5, 7.2),
            "module_duration_s": 0.11,
            "module_api_calls": 9,
            "module_round_trips": 2,
            "diagnose_problems": ["0"],
            "community_tasks": {"bnmain": recap()},
            "community_items": 12,
        },
        "site": {
            "site.yml": summary(16.1, 16.5, 15.9) | {"changed": [0, 0, 0]},
            "site.yml --skip-tags verify": summary(9.0, 9.2, 8.9) | {"changed": [0, 0, 0]},
            "manual_sequence.sh": summary(10.3, 10.4, 10.2),
            "diagnose.yml": summary(1.2, 1.25, 1.15),
            "first_run": {"seconds": 40.2, "recap": recap(changed=2)},
            "profile": {
                "seconds": 9.1,
                "recap": recap(),
                "tasks": [["fibreflow.qfieldcloud.worker : Enforce the worker's configuration", 2.9], ["Diag", 0.4]],
            },
        },
        "repair": {
            "worker-stopped": {
                "rounds": [repair_row, repair_row, repair_row],
                "median": 20.5,
                "worst": 20.5,
                "site_median": 15.0,
                "verify_median": 5.5,
                "repaired": 3,
            },
            "worker-removed": {
                "rounds": [failed_row],
                "median": None,
                "worst": None,
                "site_median": 15.0,
                "verify_median": 5.5,
                "repaired": 0,
            },
        },
        "fleet": fleet,
        "queue": {"10": queue_size(10, 0.012, 0.12), "100000": queue_size(100_000, 0.192, 0.32)},
        "meta": {
            "started": "2026-12-01 10:00 UTC",
            "command": ".venv/bin/python bench/bench.py",
            "machine": {"cpu": "a CPU, 2 cores", "memory": "7.8 GiB", "os": "Debian, kernel 6", "load": "1 / 1 / 1"},
            "versions": {"python": "3.11.7", "ansible-core": "ansible [core 2.19.14]"},
            "wall_min": 15.2,
            "load_end": "2 / 2 / 2",
        },
        "failed_steps": [],
    }
    return json.loads(json.dumps(results))  # as --render-only reads it back: tuples as lists, keys as strings


@pytest.fixture
def results() -> dict:
    return build_results()
