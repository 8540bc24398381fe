# SPDX-License-Identifier: GPL-3.0-or-later
"""The modules under the host's own Python with the distro's libraries, installed by the prerequisites role.

On Debian 12 that is /usr/bin/python3 with python3-docker 5.0.3 and python3-psycopg2 2.9.5: the role installs
them (check mode first, which installs nothing), a second run changes nothing, then diagnose.yml, site.yml with a
repair, and verify.yml run with ansible_python_interpreter=/usr/bin/python3.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from ansible_run import assert_no_secret, flat, recap, run_playbook

pytestmark = pytest.mark.integration

SYSTEM_PYTHON = "/usr/bin/python3"


@pytest.fixture(scope="module")
def stack(module_stacks):
    return module_stacks("dl")


def system_play(playbook: str, stack, *args: str) -> subprocess.CompletedProcess:
    cmd = ["-i", "localhost,", "-c", "local", "-e", f"ansible_python_interpreter={SYSTEM_PYTHON}"]
    cmd += ["-e", f"@{stack.dir / 'standin-vars.yml'}", *args]
    res = run_playbook(playbook, *cmd)
    res.output = res.stdout + res.stderr
    res.said = flat(res.output)
    assert_no_secret(stack, res.output, f"{playbook} {' '.join(args)}")
    return res


def system_version(module: str) -> str | None:
    res = subprocess.run(
        [SYSTEM_PYTHON, "-c", f"import {module}; print({module}.__version__.split()[0])"],
        capture_output=True,
        text=True,
        check=False,
    )
    return res.stdout.strip() if res.returncode == 0 else None


@pytest.mark.skipif(not Path(SYSTEM_PYTHON).exists() or not Path("/usr/bin/apt-get").exists(), reason="Debian only")
def test_the_role_installs_the_distros_libraries_and_the_playbooks_run_with_them(stack):
    before = (system_version("docker"), system_version("psycopg2"))
    check = system_play("playbooks/prerequisites.yml", stack, "--check")
    assert check.returncode == 0, check.output[-3000:]
    if None in before:
        assert recap(check)["changed"] >= 1, "check mode did not say it would install the packages"
        assert (system_version("docker"), system_version("psycopg2")) == before, "check mode installed something"
    first = system_play("playbooks/prerequisites.yml", stack)
    assert first.returncode == 0, first.output[-3000:]
    docker_version, psycopg2_version = system_version("docker"), system_version("psycopg2")
    assert docker_version and psycopg2_version
    # Debian 12's packages: the oldest versions the README promises
    assert docker_version.startswith("5.0."), docker_version
    assert psycopg2_version.startswith("2.9."), psycopg2_version
    assert f"with docker {docker_version} and psycopg2 {psycopg2_version}" in first.said
    again = system_play("playbooks/prerequisites.yml", stack)
    assert again.returncode == 0 and recap(again)["changed"] == 0, again.output[-3000:]

    diagnose = system_play("playbooks/diagnose.yml", stack)
    assert diagnose.returncode == 0, diagnose.output[-3000:]
    assert "sync ready" in diagnose.said

    stack.break_("worker-not-root")
    site = system_play("playbooks/site.yml", stack)
    assert site.returncode == 0, site.output[-3000:]
    assert "worker_socket_denied" in site.said  # reported before the repair
    assert recap(site)["changed"] >= 1
    verify = system_play("playbooks/verify.yml", stack)
    assert verify.returncode == 0, verify.output[-3000:]
    assert stack.wait_job(stack.create_job(), timeout=90) == "finished"
