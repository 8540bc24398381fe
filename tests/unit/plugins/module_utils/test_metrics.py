# SPDX-License-Identifier: GPL-3.0-or-later
"""Unit tests of the Prometheus textfile writer."""

from __future__ import annotations

import os
import stat

from ansible_collections.fibreflow.qfieldcloud.plugins.module_utils import metrics

FACTS = {
    "project": {"name": 'q"fc'},
    "daemon": {"reachable": True},
    "services": {"app": {"running": 1}},
    "worker": {"replicas_expected": 2, "replicas_running": 1},
    "database": {"checked": True, "reachable": True},
    "queue": {
        "checked": True,
        "counts": {"pending": {"package": 3}},
        "claimable_pending": 3,
        "oldest_claimable_pending_age_s": 12.5,
        "overdue_queued": 0,
        "overdue_started": 1,
        "failed_last_hour": 0,
        "finished_last_hour": 4,
        "pending_deltas": 2,
        "locked_projects": 0,
    },
    "app": {"checked": True, "ok": True},
    "cron": {"checked": True, "last_run_age_s": 30.0},
    "orphan_job_containers": [],
}
PROBLEMS = [
    {"code": "worker_replicas_low", "severity": "error", "blocks": "none"},
    {"code": "queue_stalled", "severity": "critical", "blocks": "sync"},
]


def test_render():
    text = metrics.render_metrics(FACTS, PROBLEMS, now=1000.0)
    assert 'qfieldcloud_sync_ready{project="q\\"fc"} 0' in text
    assert 'qfieldcloud_problem{project="q\\"fc",code="worker_replicas_low",severity="error"} 1' in text
    assert 'qfieldcloud_problem{project="q\\"fc",code="queue_stalled",severity="critical"} 1' in text
    assert 'qfieldcloud_client_ready{project="q\\"fc"} 1' in text
    assert 'qfieldcloud_problem{project="q\\"fc",code="db_unreachable",severity="critical"} 0' in text
    assert 'qfieldcloud_jobs{project="q\\"fc",status="pending",type="package"} 3' in text
    assert 'qfieldcloud_oldest_claimable_pending_age_seconds{project="q\\"fc"} 12.5' in text
    assert 'qfieldcloud_overdue_jobs{project="q\\"fc",status="started"} 1' in text
    assert "qfieldcloud_sync_facts_timestamp_seconds" in text
    # HELP/TYPE once per metric
    assert text.count("# TYPE qfieldcloud_problem gauge") == 1
    assert text.endswith("\n")


def test_render_minimal_facts():
    text = metrics.render_metrics(
        {"daemon": {"reachable": False}}, [{"code": "docker_unreachable", "severity": "critical"}]
    )
    assert 'qfieldcloud_docker_reachable{project="qfieldcloud"} 0' in text
    assert "qfieldcloud_jobs" not in text


def test_write_atomic_mode_and_change(tmp_path):
    path = tmp_path / "qfc.prom"
    first = metrics.render_metrics(FACTS, PROBLEMS, now=1.0)
    assert metrics.write_textfile(str(path), first) is True
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o644
    # same content but a new timestamp: not a change
    assert metrics.write_textfile(str(path), metrics.render_metrics(FACTS, PROBLEMS, now=2.0)) is False
    assert path.read_text().count("sync_facts_timestamp_seconds{") == 1
    os.chmod(path, 0o640)
    assert metrics.write_textfile(str(path), metrics.render_metrics(FACTS, [], now=3.0)) is True
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o640
    assert [p.name for p in tmp_path.iterdir()] == ["qfc.prom"]
