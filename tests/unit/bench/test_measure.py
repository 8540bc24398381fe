"""bench/measure.py: medians, ratios, and what it reads from ansible, /proc and EXPLAIN plans."""

from __future__ import annotations

import measure

RECAP = """
PLAY RECAP *********************************************************************
bnmain                     : ok=46   changed=0    unreachable=0    failed=0    skipped=18   rescued=0    ignored=0
bnf2                       : ok=3    changed=1    unreachable=0    failed=1    skipped=1    rescued=0    ignored=0
"""

SITE_OUTPUT = """
TASK [Diagnose before acting] **************************************************
ok: [bnmain]

TASK [Report the problems found (each is repaired or reported below)] **********
ok: [bnmain] => (item=worker_hand_started) =>
    msg: 'ERROR worker_hand_started: ...'
ok: [bnmain] => (item=worker_restart_policy) =>
    msg: 'WARNING worker_restart_policy: ...'

TASK [fibreflow.qfieldcloud.startup : Validate] *********************************
ok: [bnmain] => (item=not_a_problem) =>
"""


def test_median_and_ratio():
    assert measure.median([3.0, 1.0, 2.0]) == 2.0
    assert measure.median([1.0, 2.0, 3.0, 10.0]) == 2.5
    assert measure.median([]) is None
    assert measure.ratio(5.0, 1.25) == 4.0
    assert measure.ratio(1.0, 0) is None
    assert measure.ratio(None, 1.0) is None


def test_parse_recap():
    recap = measure.parse_recap(RECAP)
    assert recap["bnmain"]["changed"] == 0
    assert recap["bnmain"]["ok"] == 46
    assert recap["bnf2"]["failed"] == 1
    assert measure.parse_recap("no recap here") == {}


def test_reported_problems_only_from_the_report_task():
    assert measure.reported_problems(SITE_OUTPUT) == ["worker_hand_started", "worker_restart_policy"]
    assert measure.reported_problems("TASK [Something else]\nok: [h] => (item=x) =>") == []


def test_seq_scans_in_order_without_duplicates():
    plan = """Result
  CTE jobs
    ->  Seq Scan on core_job  (cost=0.00..2540.05 rows=100005 width=72)
  ->  Index Scan using core_job_status on core_job core_job_1
  ->  Seq Scan on project_project p
  ->  Seq Scan on core_job core_job_2"""
    assert measure.seq_scans(plan) == ["core_job", "project_project"]
    assert measure.seq_scans("Index Only Scan using core_delta_last_status on core_delta") == []


def test_parse_stat_with_spaces_and_parentheses_in_the_name():
    assert measure.parse_stat("4242 (ansible-playbook) S 4000 4242 4242 0 -1") == (4242, 4000)
    assert measure.parse_stat("77 (a (weird) name) R 1 77 77 0 -1") == (77, 1)


def test_parse_pss():
    rollup = "55d0-7ffe ---p 00000000 00:00 0 [rollup]\nRss:  51200 kB\nPss:  20480 kB\nPss_Anon: 100 kB\n"
    assert measure.parse_pss(rollup) == 20480 * 1024
    assert measure.parse_pss("Rss: 1 kB\n") == 0


def test_parse_profile():
    output = """PLAY RECAP ***
TASKS RECAP ********************************************************************
Sunday 29 November 2026  05:49:43 +0000 (0:00:00.015)       0:00:10.240 *******
===============================================================================
fibreflow.qfieldcloud.verify : Wait until the worker finishes the probe job --- 2.93s
Diagnose before acting -------------------------------------------------- 0.53s
"""
    assert measure.parse_profile(output) == [
        ("fibreflow.qfieldcloud.verify : Wait until the worker finishes the probe job", 2.93),
        ("Diagnose before acting", 0.53),
    ]
    assert measure.parse_profile("no profile") == []
