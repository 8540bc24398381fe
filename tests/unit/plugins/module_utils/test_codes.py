# SPDX-License-Identifier: GPL-3.0-or-later
"""Unit tests of codes.py: one constant per problem code, named after it, each with its catalogue entry."""

from __future__ import annotations

import re
from pathlib import Path

from ansible_collections.fibreflow.qfieldcloud.plugins.module_utils import codes
from ansible_collections.fibreflow.qfieldcloud.plugins.module_utils import problems as pb

PLUGINS = Path(__file__).resolve().parents[4] / "plugins"


def constants():
    return {name: value for name, value in vars(codes).items() if name.startswith("CODE_")}


def test_each_constant_carries_its_own_name():
    for name, value in constants().items():
        assert re.fullmatch(r"[a-z][a-z0-9_]+", value), name
        assert name == f"CODE_{value.upper()}"


def test_all_lists_every_constant_once_in_catalogue_order():
    assert len(codes.ALL) == len(set(codes.ALL)) == len(constants())
    assert set(codes.ALL) == set(constants().values())
    assert list(codes.ALL) == list(pb.CATALOGUE)


def test_no_other_module_of_the_collection_names_codes_of_its_own():
    """A constant for a code lives in codes.py only (no CODE_NOT_ROOT = "worker_socket_denied" elsewhere)."""
    values = set(codes.ALL)
    for path in PLUGINS.rglob("*.py"):
        if path.name == "codes.py":
            continue
        for name, value in re.findall(r"^([A-Z][A-Z0-9_]*)\s*=\s*\"([a-z0-9_]+)\"", path.read_text(), re.M):
            where = path.relative_to(PLUGINS)
            assert value not in values, f"{where}: {name} = {value!r}; use codes.CODE_{value.upper()}"
