# SPDX-License-Identifier: GPL-3.0-or-later
"""Unit tests of files.py: the digest of files' contents (qfc_worker's cache and record key on it)."""

from __future__ import annotations

from ansible_collections.fibreflow.qfieldcloud.plugins.module_utils import files


def test_the_cache_of_the_project_files_changes_with_any_of_them(tmp_path):
    first = tmp_path / "docker-compose.yml"
    first.write_text("services: {}\n")
    before = files.contents_digest([str(first)], "worker_wrapper\0COMPOSE_FILE=docker-compose.yml\n")
    assert before == files.contents_digest([str(first)], "worker_wrapper\0COMPOSE_FILE=docker-compose.yml\n")
    assert before != files.contents_digest([str(first)], "worker_wrapper\0COMPOSE_FILE=other.yml\n")
    first.write_text("services: {worker_wrapper: {}}\n")
    assert before != files.contents_digest([str(first)], "worker_wrapper\0COMPOSE_FILE=docker-compose.yml\n")
    first.unlink()
    assert before != files.contents_digest([str(first)], "worker_wrapper\0COMPOSE_FILE=docker-compose.yml\n")
