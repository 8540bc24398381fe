# Copyright (c) 2025, fibreflow
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The applier's pure helpers: what compose must be asked, and only when."""

from __future__ import annotations

from ansible_collections.fibreflow.qfieldcloud.plugins.module_utils import compose
from ansible_collections.fibreflow.qfieldcloud.plugins.module_utils import worker_apply as wa


def test_compose_is_asked_for_the_hash_only_when_the_computed_one_differs_from_the_label():
    svc = {"command": ["python", "manage.py", "dequeue"], "image": "qfc-worker_wrapper"}
    asked = []

    def compose_hash():
        asked.append(1)
        return "from-compose"

    same = [{"id": "a", "config_hash": compose.service_hash(svc)}]
    assert wa.hash_matches(same, svc, compose_hash) == {"a": True} and asked == []
    other = [{"id": "b", "config_hash": "from-compose"}, {"id": "c", "config_hash": "old"}]
    assert wa.hash_matches(other, svc, compose_hash) == {"b": True, "c": False}
    assert asked


def test_the_worker_keeps_the_further_networks_of_the_project_files():
    base = {"networks": [["default", "qfc_default"], ["extra", "qfc_extra"], [compose.EXTERNAL_NETWORK_KEY, "ext"]]}
    assert wa.kept(base, "qfc_default") == (["extra"], ["qfc_extra"])
    assert wa.kept(base, "qfc_extra") == (["default"], ["qfc_default"])
