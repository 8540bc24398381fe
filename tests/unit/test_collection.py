# SPDX-License-Identifier: GPL-3.0-or-later
"""The collection's metadata is valid and a git checkout works as the installed collection.

These are the checks Galaxy and ansible-core make when the collection is built, installed or loaded, run
early so that a broken galaxy.yml or a missing collections/ link shows up as a unit test failure instead of
an obscure error in a playbook run.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from ansible.module_utils.compat.version import LooseVersion
from ansible.utils.version import SemanticVersion

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
# Galaxy's rules for namespace, name and tags: lowercase letters, digits and underscores, not starting with
# a digit or an underscore, at most 64 characters; at most 20 tags.
GALAXY_NAME = re.compile(r"^(?!_)[a-z0-9_]{1,64}$")
GALAXY_MAX_TAGS = 20


@pytest.fixture(scope="module")
def galaxy() -> dict:
    return yaml.safe_load((ROOT / "galaxy.yml").read_text())


@pytest.fixture(scope="module")
def runtime() -> dict:
    return yaml.safe_load((ROOT / "meta" / "runtime.yml").read_text())


def ansible_env() -> dict[str, str]:
    """Environment for ansible-* commands run from the repository root with the repository's ansible.cfg."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ANSIBLE_")}
    env["ANSIBLE_CONFIG"] = str(ROOT / "ansible.cfg")
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    return env


def test_galaxy_identity(galaxy):
    assert (galaxy["namespace"], galaxy["name"]) == ("fibreflow", "qfieldcloud")
    assert GALAXY_NAME.match(galaxy["namespace"]) and not galaxy["namespace"][0].isdigit()
    assert GALAXY_NAME.match(galaxy["name"]) and not galaxy["name"][0].isdigit()


def test_galaxy_version_is_semver(galaxy):
    version = str(galaxy["version"])
    # SemanticVersion raises ValueError for anything that is not MAJOR.MINOR.PATCH[-pre][+build].
    assert SemanticVersion(version).vstring == version


def test_galaxy_tags_are_accepted_by_galaxy(galaxy):
    tags = galaxy["tags"]
    assert tags, "Galaxy search relies on tags; galaxy.yml lists none"
    assert len(tags) <= GALAXY_MAX_TAGS
    bad = [tag for tag in tags if not GALAXY_NAME.match(str(tag))]
    assert not bad, f"tags Galaxy rejects (lowercase letters, digits, underscores only): {bad}"
    assert len(set(tags)) == len(tags), "duplicate tags"


def test_galaxy_license_and_files(galaxy):
    assert galaxy["license"] == ["GPL-3.0-or-later"]
    assert "license_file" not in galaxy, "license and license_file are mutually exclusive"
    assert "GNU GENERAL PUBLIC LICENSE" in (ROOT / "LICENSE").read_text().splitlines()[0]


def test_galaxy_readme_exists(galaxy):
    """Galaxy renders this file as the collection's page; `ansible-galaxy collection build` does not check it."""
    assert (ROOT / galaxy["readme"]).is_file(), f"galaxy.yml names readme {galaxy['readme']!r}, which is missing"


def test_galaxy_urls_have_no_placeholders(galaxy):
    for key in ("repository", "documentation", "homepage", "issues"):
        url = galaxy.get(key)
        assert url, f"galaxy.yml: {key} is empty"
        assert url.startswith("https://github.com/fibreflow/qfieldcloud"), f"{key}: {url}"
    for author in galaxy["authors"]:
        assert ".example" not in author and "@example" not in author, f"authors: {author} is a placeholder"


def test_galaxy_depends_on_community_docker_4(galaxy):
    spec = galaxy["dependencies"]["community.docker"]
    assert spec.replace(" ", "") == ">=4.0.0"


def test_build_ignores_local_state(galaxy):
    """Local state must never end up in the tarball: the venv alone is 600 MB and collections/ is a loop."""
    ignored = set(galaxy["build_ignore"])
    assert {".venv", "collections", "tests/output", ".git", "*.tar.gz"} <= ignored


def test_requires_ansible_covers_the_pinned_core(runtime):
    requirement = runtime["requires_ansible"]
    assert requirement == ">=2.18.0"
    import ansible.release

    assert LooseVersion(ansible.release.__version__) >= LooseVersion(requirement.lstrip(">="))


def test_ansible_cfg_uses_the_singular_collections_path_key():
    """ansible-core 2.19 dropped `collections_paths`: with the plural the working tree would silently vanish."""
    config = (ROOT / "ansible.cfg").read_text()
    assert re.search(r"^collections_path\s*=\s*\./collections\s*$", config, re.M)
    assert not re.search(r"^collections_paths\s*=", config, re.M)


def test_checkout_is_the_installed_collection():
    """After `make setup`, ansible-* run from the repository root load fibreflow.qfieldcloud from this tree."""
    result = subprocess.run(
        [str(BIN / "ansible-galaxy"), "collection", "list", "fibreflow.qfieldcloud", "--format", "json"],
        cwd=ROOT,
        env=ansible_env(),
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    found = json.loads(result.stdout)
    paths = [Path(path) for path, collections in found.items() if "fibreflow.qfieldcloud" in collections]
    assert paths, f"fibreflow.qfieldcloud not found; run `make setup`. ansible-galaxy said: {result.stderr}"
    resolved = [(path / "fibreflow" / "qfieldcloud").resolve() for path in paths]
    assert resolved[0] == ROOT, f"fibreflow.qfieldcloud resolves to {resolved[0]}, not the working tree {ROOT}"


def test_every_module_in_the_tree_is_listed_by_ansible_doc():
    """Each plugins/modules/*.py is loadable by its FQCN from the checkout, and nothing else is listed."""
    in_tree = {
        f"fibreflow.qfieldcloud.{path.stem}"
        for path in (ROOT / "plugins" / "modules").glob("*.py")
        if path.name != "__init__.py"
    }
    result = subprocess.run(
        [str(BIN / "ansible-doc"), "--list", "--type", "module", "--json", "fibreflow.qfieldcloud"],
        cwd=ROOT,
        env=ansible_env(),
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    listed = set(json.loads(result.stdout))
    assert listed == in_tree, f"missing from ansible-doc: {in_tree - listed}; unexpected: {listed - in_tree}"


def test_the_roles_and_the_runtime_declare_the_same_oldest_ansible_core(runtime):
    oldest = runtime["requires_ansible"].removeprefix(">=")
    for meta in sorted((ROOT / "roles").glob("*/meta/main.yml")):
        declared = yaml.safe_load(meta.read_text())["galaxy_info"]["min_ansible_version"]
        assert oldest.startswith(f"{declared}."), f"{meta}: min_ansible_version {declared}, requires_ansible {oldest}"
    matrix = re.search(r"^MATRIX_CORES \?= (.+)$", (ROOT / "Makefile").read_text(), re.M).group(1).split()
    assert oldest.startswith(f"{matrix[0]}."), f"the oldest core tested ({matrix[0]}) is not the one declared"
