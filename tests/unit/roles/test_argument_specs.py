"""Each role's meta/argument_specs.yml documents exactly the variables of its defaults/main.yml."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

ROLES = Path(__file__).resolve().parents[3] / "roles"
ROLE_NAMES = sorted(p.name for p in ROLES.iterdir() if (p / "defaults" / "main.yml").exists())


def load(path: Path) -> dict:
    return yaml.safe_load(path.read_text()) or {}


def test_every_role_is_checked():
    assert set(ROLE_NAMES) >= {"startup", "worker", "maintenance", "verify"}


@pytest.mark.parametrize("role", ROLE_NAMES)
def test_spec_keys_equal_default_keys(role):
    defaults = load(ROLES / role / "defaults" / "main.yml")
    options = load(ROLES / role / "meta" / "argument_specs.yml")["argument_specs"]["main"]["options"]
    optional = {name for name, spec in options.items() if not spec.get("required")}
    assert optional == set(defaults), (
        f"{role}: documented but no default: {sorted(optional - set(defaults))}; "
        f"default but undocumented: {sorted(set(defaults) - optional)}"
    )
    # The one variable without default is the project directory, required by every role that acts on a project
    # (prerequisites makes the host ready, whatever project it runs).
    wanted = set() if role == "prerequisites" else {"qfieldcloud_project_dir"}
    assert {n for n, s in options.items() if s.get("required")} == wanted


@pytest.mark.parametrize("role", ROLE_NAMES)
def test_spec_defaults_match_defaults(role):
    defaults = load(ROLES / role / "defaults" / "main.yml")
    options = load(ROLES / role / "meta" / "argument_specs.yml")["argument_specs"]["main"]["options"]
    for name, value in defaults.items():
        assert options[name].get("default") == value, f"{role}: {name} default differs"


@pytest.mark.parametrize("role", ROLE_NAMES)
def test_variables_carry_the_prefix(role):
    shared = {
        "qfieldcloud_project_dir",
        "qfieldcloud_app_url",
        "qfieldcloud_host_header",
        "qfieldcloud_validate_certs",
        "qfieldcloud_probe_project",
        "qfieldcloud_probe_username",
        "qfieldcloud_probe_password",
        "qfieldcloud_state_dir",
        "qfieldcloud_facts",
    }
    for name in load(ROLES / role / "defaults" / "main.yml"):
        assert name in shared or name.startswith(f"qfieldcloud_{role}_"), f"{role}: {name} lacks the role prefix"
