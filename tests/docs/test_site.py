# SPDX-License-Identifier: GPL-3.0-or-later
"""The documentation site that `make docs` built (run by `make test-docs`, which builds it first).

Every module, callback and role of the tree has its page, with the options it really has; every guide and the
problem catalogue are pages; the picture of the playbooks is on the start page.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
HTML = ROOT / "tests" / "output" / "docs" / "html"


def page(rel: str) -> str:
    path = HTML / rel
    assert path.is_file(), f"{rel} was not built (run `make docs`)"
    return path.read_text(encoding="utf-8")


def plugins(kind: str) -> list[str]:
    return sorted(p.stem for p in (ROOT / "plugins" / kind).glob("*.py") if not p.name.startswith("__"))


def roles() -> list[str]:
    return sorted(p.parent.parent.name for p in (ROOT / "roles").glob("*/meta/argument_specs.yml"))


def test_the_site_was_built_from_this_tree():
    assert HTML.is_dir(), "run `make docs` first"
    assert plugins("modules") and roles()


@pytest.mark.parametrize("module", plugins("modules"))
def test_every_module_has_its_page_with_its_options(module):
    text = page(f"collection/{module}_module.html")
    source = (ROOT / "plugins" / "modules" / f"{module}.py").read_text(encoding="utf-8")
    options = yaml.safe_load(re.search(r'DOCUMENTATION = r?"""(.*?)"""', source, re.S).group(1))["options"]
    for option in options:
        assert f"parameter-{option}" in text, f"{module}: option {option} is not on its page"


@pytest.mark.parametrize("callback", plugins("callback"))
def test_every_callback_has_its_page(callback):
    assert "fibreflow.qfieldcloud." + callback in page(f"collection/{callback}_callback.html")


@pytest.mark.parametrize("role", roles())
def test_every_role_has_its_page_with_every_entry_point(role):
    text = page(f"collection/{role}_role.html")
    spec = yaml.safe_load((ROOT / "roles" / role / "meta" / "argument_specs.yml").read_text(encoding="utf-8"))
    for entry_point, body in spec["argument_specs"].items():
        assert entry_point in text, f"{role}: entry point {entry_point} is not on its page"
        for option in body.get("options") or {}:
            assert option in text, f"{role}: {option} is not on its page"


def test_the_guides_and_the_catalogue_are_pages_and_the_start_page_shows_the_picture():
    for guide in ("problems", "field-guide", "operations", "reliability"):
        assert "<h1>" in page(f"{guide}.html"), guide
    catalogue = page("problems.html")
    for code in re.findall(r"^    \"([a-z0-9_]+)\": \{", (ROOT / "plugins/module_utils/problems.py").read_text(), re.M):
        assert code in catalogue, f"problem code {code} is not in the catalogue page"
    start = page("index.html")
    assert "_images/playbooks.svg" in start
    assert (HTML / "_images" / "playbooks.svg").read_text(encoding="utf-8").lstrip().startswith("<?xml")
