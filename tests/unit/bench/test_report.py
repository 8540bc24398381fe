"""bench/report.py: RESULTS.md from the raw results, every step's section present and no figure lost."""

from __future__ import annotations

import report


def test_table():
    assert report.table(["a", "b"], [[1, "2 s"]]) == ["| a | b |", "|---|---:|", "| 1 | 2 s |", ""]


def test_plan_notes_name_the_materialised_cte_and_the_text_cast():
    plan = """Result  (actual time=151.768..151.792 rows=1 loops=1)
  Buffers: shared hit=1557, temp read=4936 written=1320
  CTE jobs
    ->  Seq Scan on core_job  (cost=0.00..2540.05 rows=100005 width=72)
  ->  CTE Scan on jobs j
  ->  CTE Scan on jobs jobs_2
          Filter: ((id)::text = ANY ('{}'::text[]))"""
    notes = " ".join(report.plan_notes(plan))
    assert "`jobs`" in notes
    assert "referenced 2 times" in notes
    assert "temp read=4936" in notes
    assert "uuid[]" in notes
    assert report.plan_notes("Index Scan using core_job_status on core_job") == []


def test_render_has_every_section_and_the_headline_figures(results):
    text = report.render(results)
    for heading in ("# Benchmark results", "## Headline"):
        assert heading in text
    assert "- Date: 2026-12-01 10:00 UTC (the run took 15.2 min)" in text
    assert "7.34 s" in text and "1.28 s" in text  # the community.docker playbook against diagnose.yml
    assert "0.44 s" in text  # per extra host
    assert "worker-removed" in text and "repair-worker-removed-1.log" in text  # the failed round keeps its log
    assert "## Steps that failed" not in text


def test_render_lists_failed_steps_and_skips_missing_ones(results):
    for step in ("site", "repair", "fleet", "queue"):
        del results[step]
    results["failed_steps"] = ["step 3: boom"]
    text = report.render(results)
    assert "## Steps that failed" in text and "- step 3: boom" in text
    assert "manual_sequence.sh" not in text and "100000" not in text.replace(",", "")
