# SPDX-License-Identifier: GPL-3.0-or-later
"""The shipped alert rules use only metrics the collection writes, and every documented alert is there."""

from __future__ import annotations

import re
from pathlib import Path

import yaml
from builders import healthy

from ansible_collections.fibreflow.qfieldcloud.plugins.module_utils import metrics
from ansible_collections.fibreflow.qfieldcloud.plugins.module_utils import problems as pb

ROOT = Path(__file__).resolve().parents[3]
RULES = ROOT / "prometheus" / "qfieldcloud.rules.yml"
DRIFT_PLAYBOOK = ROOT / "playbooks" / "drift_check.yml"
METRIC = re.compile(r"\bqfieldcloud_[a-z_]+\b")


def alerts() -> dict[str, dict]:
    doc = yaml.safe_load(RULES.read_text(encoding="utf-8"))
    return {rule["alert"]: rule for group in doc["groups"] for rule in group["rules"]}


def written_metrics() -> set[str]:
    facts = healthy()
    facts["queue"]["pending_deltas"] = 0
    text = metrics.render_metrics(facts, pb.detect_problems(facts))
    names = {line.split()[2] for line in text.splitlines() if line.startswith("# TYPE ")}
    drift = DRIFT_PLAYBOOK.read_text(encoding="utf-8")
    names |= set(re.findall(r"# TYPE (qfieldcloud_[a-z_]+) ", drift))
    return names


def test_every_metric_in_an_expression_is_written_by_the_collection():
    written = written_metrics()
    assert {"qfieldcloud_sync_ready", "qfieldcloud_probe_success"} <= written
    for name, rule in alerts().items():
        used = set(METRIC.findall(rule["expr"]))
        assert used, name
        assert used <= written, f"{name} uses {sorted(used - written)}, which nothing in the collection writes"


def test_the_alerts_the_operations_guide_promises_are_shipped_with_severity_and_remedy():
    shipped = alerts()
    assert set(shipped) >= {
        "QFieldCloudSyncBlocked",
        "QFieldCloudNoWorker",
        "QFieldCloudQueueStalled",
        "QFieldCloudJobsOverdue",
        "QFieldCloudVerifyFailing",
        "QFieldCloudMetricsStale",
    }
    guide = (ROOT / "docs" / "operations.md").read_text(encoding="utf-8")
    for name, rule in shipped.items():
        assert rule["labels"]["severity"] in ("critical", "warning"), name
        assert rule["annotations"]["summary"] and rule["annotations"]["description"], name
        assert f"`{name}`" in guide, f"{name} is not described in docs/operations.md"
