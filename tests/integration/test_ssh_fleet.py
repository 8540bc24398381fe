# SPDX-License-Identifier: GPL-3.0-or-later
"""Two field servers of one inventory reached over real SSH, as an operator's controller reaches them.

The test starts its own ``sshd`` on two loopback addresses (127.0.0.2 and 127.0.0.3, one port), with a host key
and a client key made here, a non-root user ``qfcssh`` that becomes root through sudo (a file in /etc/sudoers.d),
and a known_hosts file holding the host key (host key checking stays on). Each inventory host points at its own
stand-in stack; no ``ansible_python_interpreter`` is set, so interpreter discovery finds the server's system
Python (ansible-core 2.19 names /usr/bin/python3.11 on Debian 12, the file /usr/bin/python3 points to), whose
libraries the prerequisites playbook installs first, as a user would: the distro's python3-docker 5.0.x and
python3-psycopg2 2.9.x (check mode first where they are missing, which installs nothing; a second run changes
nothing). Every module call of the layer runs with those versions; verify.yml at the end runs a probe job.

Then, over ``ansible_connection: ssh`` with ``-f 5``: site.yml converges both hosts, one host's worker is broken
(``worker-stopped``), diagnose.yml reports that host and not the other, site.yml repairs it (changed there,
nothing on the healthy host; a job then finishes there), and drift_check.yml in check mode (the scheduled form)
finds no drift on either. The sshd log shows the user's key logins on both addresses. Everything the test made
(sshd and its sessions, the user, the sudoers file, the keys) is removed at the end, pass or fail.

Without sshd (or sudo, or root) the test is skipped, except on CI (CI=true), where it fails.
"""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import yaml
from ansible_run import JSON_CALLBACK, assert_no_secret, run_playbook

pytestmark = pytest.mark.integration

SSHD = shutil.which("sshd") or "/usr/sbin/sshd"
USER = "qfcssh"
SUDOERS = Path("/etc/sudoers.d/fibreflow-qfcssh-test")
ADDRESSES = {"field-a": "127.0.0.2", "field-b": "127.0.0.3"}
BROKEN, HEALTHY = "field-b", "field-a"
# A fault a converged host can get (worker-not-root cannot: the collection's override holds user: root).
FAULT, CODE = "worker-stopped", "worker_not_running"
NO_VERIFY = ("--skip-tags", "verify")
SYSTEM_PYTHON_FILE = os.path.realpath("/usr/bin/python3")


def require(ok: bool, reason: str) -> None:
    """Skip when the host cannot run the layer; on CI that is a failure (the layer must run there)."""
    if ok:
        return
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{reason}: CI must run the SSH layer (scripts/setup-host.sh installs openssh-server and sudo)")
    pytest.skip(reason)


def free_port() -> int:
    """A TCP port free on both loopback addresses."""
    for _attempt in range(50):
        with socket.socket() as first:
            first.bind((ADDRESSES["field-a"], 0))
            port = first.getsockname()[1]
            with socket.socket() as second:
                try:
                    second.bind((ADDRESSES["field-b"], port))
                except OSError:
                    continue
        return port
    raise RuntimeError("no port free on both loopback addresses")


def run(*argv: str) -> subprocess.CompletedProcess:
    res = subprocess.run(argv, text=True, capture_output=True, check=False)
    assert res.returncode == 0, f"{' '.join(argv)}: {res.stdout}{res.stderr}"
    return res


def children_of(pid: int) -> list[int]:
    """The processes whose parent is ``pid`` (sshd's per-connection processes)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            stat = (entry / "stat").read_text()
            # "pid (comm) state ppid ...": comm may hold spaces, so split after its closing parenthesis
            if int(stat.rpartition(")")[2].split()[1]) == pid:
                found.append(int(entry.name))
    return found


class Sshd:
    """The test's own sshd and what it needs; ``close`` removes all of it (safe after a half-done start)."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.port = free_port()
        self.log = tmp / "sshd.log"
        self.client_key = tmp / "client_ed25519"
        self.known_hosts = tmp / "known_hosts"
        self.control_dir = tmp / "cp"
        self.proc: subprocess.Popen | None = None
        self.made_user = False
        self.made_privsep = False
        self.made_sudoers = False

    def start(self) -> None:
        tmp = self.tmp
        tmp.chmod(0o755)  # the user's home is inside (a user made here); the keys stay 0600
        self.control_dir.mkdir(mode=0o700)
        host_key = tmp / "host_ed25519"
        run("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "qfcssh-host", "-f", str(host_key))
        run("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "qfcssh-client", "-f", str(self.client_key))
        host_public = (tmp / "host_ed25519.pub").read_text().split()
        self.known_hosts.write_text(
            "".join(f"[{addr}]:{self.port} {host_public[0]} {host_public[1]}\n" for addr in ADDRESSES.values())
        )
        keys = tmp / "authorized_keys"
        keys.mkdir(mode=0o755)
        (keys / USER).write_text((tmp / "client_ed25519.pub").read_text())
        (keys / USER).chmod(0o644)

        try:
            pwd.getpwnam(USER)
        except KeyError:
            # password "*": no password login, yet not a locked account (sshd without PAM refuses "!")
            run("useradd", "--create-home", "--home-dir", str(tmp / "home"), "--shell", "/bin/bash", "-p", "*", USER)
            self.made_user = True
        SUDOERS.write_text(f"{USER} ALL=(ALL:ALL) NOPASSWD: ALL\n")
        self.made_sudoers = True
        SUDOERS.chmod(0o440)
        run("visudo", "-c", "-q", "-f", str(SUDOERS))

        privsep = Path("/run/sshd")  # sshd's privilege separation directory, made by its service unit normally
        if not privsep.exists():
            privsep.mkdir(mode=0o755)
            self.made_privsep = True
        config = tmp / "sshd_config"
        listen = "".join(f"ListenAddress {addr}:{self.port}\n" for addr in ADDRESSES.values())
        config.write_text(
            f"{listen}"
            f"HostKey {host_key}\n"
            f"PidFile {tmp / 'sshd.pid'}\n"
            f"AuthorizedKeysFile {keys}/%u\n"
            # the key files are root's, under /tmp (world-writable): StrictModes would refuse the path
            "StrictModes no\n"
            "PubkeyAuthentication yes\n"
            "PasswordAuthentication no\n"
            "KbdInteractiveAuthentication no\n"
            "PermitRootLogin no\n"
            f"AllowUsers {USER}\n"
            "UsePAM no\n"
            "LogLevel VERBOSE\n"
            "Subsystem sftp internal-sftp\n"
        )
        run(SSHD, "-t", "-f", str(config))
        with self.log.open("w") as log:
            self.proc = subprocess.Popen([SSHD, "-D", "-e", "-f", str(config)], stdout=log, stderr=log)
        deadline = time.monotonic() + 20
        waiting = set(ADDRESSES.values())
        while waiting and time.monotonic() < deadline:
            assert self.proc.poll() is None, f"sshd exited: {self.log.read_text()}"
            for addr in list(waiting):
                with contextlib.suppress(OSError), socket.create_connection((addr, self.port), timeout=2) as conn:
                    if conn.recv(64).startswith(b"SSH-2.0-"):
                        waiting.discard(addr)
            if waiting:
                time.sleep(0.2)
        assert not waiting, f"sshd does not answer on {waiting}: {self.log.read_text()}"

    def close(self) -> None:
        if self.proc is not None:
            sessions = children_of(self.proc.pid)
            self.proc.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=10)
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait(timeout=10)
            # the listener's end leaves open sessions (ControlPersist masters keep one per host): end those too
            for pid in sessions:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGTERM)
        if self.made_sudoers:
            SUDOERS.unlink(missing_ok=True)
        if self.made_user:
            subprocess.run(["userdel", USER], capture_output=True, check=False)
        if self.made_privsep:
            with contextlib.suppress(OSError):
                Path("/run/sshd").rmdir()

    def logins(self) -> dict[str, int]:
        """Accepted public-key logins of the user, by the address the client connected to (from sshd's log)."""
        text = self.log.read_text()
        # "Connection from 127.0.0.1 port 51234 on 127.0.0.3 port 2222 rdomain ..." then
        # "Accepted publickey for qfcssh from 127.0.0.1 port 51234 ssh2: ED25519 SHA256:..."
        target = {m[1]: m[2] for m in re.finditer(r"Connection from \S+ port (\d+) on (\S+) port \d+", text)}
        counts = dict.fromkeys(ADDRESSES.values(), 0)
        for m in re.finditer(rf"Accepted publickey for {USER} from \S+ port (\d+)", text):
            if target.get(m[1]) in counts:
                counts[target[m[1]]] += 1
        return counts


@pytest.fixture(scope="module")
def sshd() -> Iterator[Sshd]:
    have = Path(SSHD).exists()
    require(have, f"no sshd ({SSHD}): apt-get install openssh-server (scripts/setup-host.sh does)")
    require(os.geteuid() == 0, "the SSH layer makes a user and a sudoers file: run it as root")
    require(bool(shutil.which("sudo")), "no sudo: apt-get install sudo (scripts/setup-host.sh does)")
    # under /tmp whatever TMPDIR says: ssh's control sockets (cp/<40 hex digits>) must fit in 108 characters
    tmp = Path(tempfile.mkdtemp(prefix="qfcssh-", dir="/tmp"))
    server = Sshd(tmp)
    try:
        server.start()
        yield server
    finally:
        server.close()
        shutil.rmtree(tmp, ignore_errors=True)


@pytest.fixture(scope="module")
def stacks(module_stacks):
    """Two stand-ins, started side by side (most of a start is waiting on the database and the worker)."""
    with ThreadPoolExecutor(2) as pool:
        healthy, broken = pool.map(module_stacks, ["sa", "sb"])
    return {HEALTHY: healthy, BROKEN: broken}


@pytest.fixture(scope="module")
def inventory(sshd, stacks) -> Path:
    """One inventory of two SSH hosts, each with its own stack's variables (no interpreter set)."""
    hosts = {name: {"ansible_host": addr, **stacks[name].vars} for name, addr in ADDRESSES.items()}
    connection = {
        "ansible_connection": "ssh",
        "ansible_user": USER,
        "ansible_port": sshd.port,
        "ansible_ssh_private_key_file": str(sshd.client_key),
        "ansible_ssh_common_args": (
            f"-o UserKnownHostsFile={sshd.known_hosts} -o GlobalKnownHostsFile=/dev/null"
            " -o StrictHostKeyChecking=yes -o IdentitiesOnly=yes -o BatchMode=yes"
        ),
        "ansible_become": True,
    }
    path = sshd.tmp / "hosts.yml"
    path.write_text(yaml.safe_dump({"all": {"vars": connection, "hosts": hosts}}))
    return path


def fleet_play(playbook: str, inventory: Path, sshd: Sshd, stacks: dict, *args: str, env: dict | None = None) -> dict:
    """A playbook over SSH with forks 5 and interpreter discovery; returns the JSON callback's document."""
    extra = {
        **JSON_CALLBACK,
        # what a user's ansible.cfg gives (ansible_env pins the test venv's Python for the local layers)
        "ANSIBLE_PYTHON_INTERPRETER": "auto_silent",
        "ANSIBLE_SSH_CONTROL_PATH_DIR": str(sshd.control_dir),
        "ANSIBLE_HOST_KEY_CHECKING": "True",
        **(env or {}),
    }
    started = time.monotonic()
    res = run_playbook(playbook, "-i", str(inventory), "-f", "5", *args, extra_env=extra)
    print(f"{playbook} {' '.join(args)}: {time.monotonic() - started:.1f} s")
    output = res.stdout + res.stderr
    for stack in stacks.values():
        assert_no_secret(stack, output, f"{playbook} over ssh")
    try:
        # the first document: a callback may print a line after it (drift_report: "drift report: ok ...")
        doc, _end = json.JSONDecoder().raw_decode(res.stdout.lstrip())
    except ValueError as exc:
        raise AssertionError(f"{playbook}: no JSON document (rc {res.returncode}):\n{output[-3000:]}") from exc
    doc["rc"] = res.returncode
    doc["output"] = output
    return doc


def by_host(doc: dict) -> dict[str, list[tuple[str, dict]]]:
    """``(task name, result)`` of every task, per host, in order."""
    results: dict[str, list[tuple[str, dict]]] = {}
    for p in doc["plays"]:
        for t in p["tasks"]:
            for host, result in t["hosts"].items():
                results.setdefault(host, []).append((t["task"]["name"], result))
    return results


def first_result(doc: dict, host: str, task: str) -> dict:
    """The first result of a task (named with or without its role's prefix) on a host."""
    found = [r for name, r in by_host(doc)[host] if name == task or name.endswith(f" : {task}")]
    assert found, [name for name, _r in by_host(doc)[host]]
    return found[0]


def recap_of(doc: dict) -> dict[str, dict]:
    return {host: doc["stats"][host] for host in ADDRESSES}


def changed_tasks(doc: dict, host: str) -> list[str]:
    return [name for name, r in by_host(doc)[host] if r.get("changed")]


def recap_lines(doc: dict) -> str:
    return "\n".join(
        f"{h}: ok={s['ok']} changed={s['changed']} unreachable={s['unreachable']} failed={s['failures']}"
        for h, s in recap_of(doc).items()
    )


def system_version(module: str) -> str | None:
    """The version of ``module`` under the server's system Python (None: it cannot import it)."""
    res = subprocess.run(
        [SYSTEM_PYTHON_FILE, "-c", f"import {module}; print({module}.__version__.split()[0])"],
        capture_output=True,
        text=True,
        check=False,
    )
    return res.stdout.strip() if res.returncode == 0 else None


def test_two_field_servers_over_ssh_diagnose_repair_and_drift_check(sshd, stacks, inventory):
    # The prerequisites first, as a user does on new servers: the distro's libraries for the discovered Python.
    # Where they are missing (a fresh CI machine), check mode says it would install them and installs nothing.
    before = (system_version("docker"), system_version("psycopg2"))
    if None in before:
        check = fleet_play("playbooks/prerequisites.yml", inventory, sshd, stacks, "--check")
        assert check["rc"] == 0, check["output"][-3000:]
        assert all(s["changed"] >= 1 for s in recap_of(check).values()), recap_lines(check)
        assert (system_version("docker"), system_version("psycopg2")) == before, "check mode installed something"
    prereq = fleet_play("playbooks/prerequisites.yml", inventory, sshd, stacks)
    assert prereq["rc"] == 0, prereq["output"][-3000:]
    # The distro's own packages (Debian 12: python3-docker 5.0.3, python3-psycopg2 2.9.5), the oldest versions the
    # README promises, are what the modules run with from here on; the role names them, and a second run changes
    # nothing.
    docker_version, psycopg2_version = system_version("docker"), system_version("psycopg2")
    assert docker_version and docker_version.startswith("5.0."), docker_version
    assert psycopg2_version and psycopg2_version.startswith("2.9."), psycopg2_version
    assert f"with docker {docker_version} and psycopg2 {psycopg2_version}" in " ".join(prereq["output"].split())
    again = fleet_play("playbooks/prerequisites.yml", inventory, sshd, stacks)
    assert again["rc"] == 0 and all(s["changed"] == 0 for s in recap_of(again).values()), recap_lines(again)
    for host, results in by_host(prereq).items():
        discovered = [
            r["ansible_facts"]["discovered_interpreter_python"]
            for _name, r in results
            if "discovered_interpreter_python" in r.get("ansible_facts", {})
        ]
        # ansible-core 2.19 names the versioned file it found first (Debian 12: /usr/bin/python3.11): the system
        # Python that /usr/bin/python3 is, not the controller's venv
        assert len(discovered) == 1 and os.path.realpath(discovered[0]) == SYSTEM_PYTHON_FILE, (host, discovered)
        setup = first_result(prereq, host, "Learn the OS family and the Python the modules run under")
        assert setup["ansible_facts"]["ansible_python"]["executable"] == discovered[0]
        assert setup["ansible_facts"]["ansible_user_id"] == "root", "become did not make the tasks root"
    logins = sshd.logins()
    assert all(logins.values()), f"no ssh login of {USER} on some address: {logins}\n{sshd.log.read_text()[-2000:]}"
    print(f"key logins of {USER} by address after prerequisites.yml: {logins}")

    # Converge both (a fresh stand-in gets the worker override and the boot files), so that the repair below is the
    # only change. The verify role's probe job is left out of both site.yml runs (time); a job is run after the repair.
    converge = fleet_play("playbooks/site.yml", inventory, sshd, stacks, *NO_VERIFY)
    assert converge["rc"] == 0, converge["output"][-3000:]

    stacks[BROKEN].break_(FAULT)
    diagnose = fleet_play("playbooks/diagnose.yml", inventory, sshd, stacks)
    assert diagnose["rc"] != 0, "diagnose.yml did not fail on the broken host"
    read = {host: first_result(diagnose, host, "Read the state of the stack") for host in ADDRESSES}
    assert read[HEALTHY]["sync_ready"] is True, read[HEALTHY]["problems"]
    assert read[HEALTHY]["problems"] == []
    assert read[BROKEN]["sync_ready"] is False
    assert CODE in {p["code"] for p in read[BROKEN]["problems"]}, read[BROKEN]["problems"]
    print("diagnose.yml over ssh:\n" + recap_lines(diagnose))
    stats = recap_of(diagnose)
    assert stats[BROKEN]["failures"] == 1 and stats[HEALTHY]["failures"] == 0, recap_lines(diagnose)

    site = fleet_play("playbooks/site.yml", inventory, sshd, stacks, *NO_VERIFY)
    assert site["rc"] == 0, site["output"][-3000:]
    print("site.yml over ssh:\n" + recap_lines(site))
    stats = recap_of(site)
    assert stats[BROKEN]["changed"] > 0 and stats[BROKEN]["failures"] == 0, recap_lines(site)
    assert stats[HEALTHY]["changed"] == 0 and stats[HEALTHY]["failures"] == 0, (
        recap_lines(site),
        changed_tasks(site, HEALTHY),
    )
    before = first_result(site, BROKEN, "Diagnose before acting")
    assert CODE in {p["code"] for p in before["problems"]}
    assert stacks[BROKEN].wait_job(stacks[BROKEN].create_job(), timeout=90) == "finished", "the repair did not hold"

    # The scheduled form (bin/qfc-drift-check, AWX check jobs): check mode, with the report callback.
    report_dir = sshd.tmp / "drift-report"
    drift = fleet_play(
        "playbooks/drift_check.yml",
        inventory,
        sshd,
        stacks,
        "--check",
        "--diff",
        env={
            "ANSIBLE_CALLBACKS_ENABLED": "fibreflow.qfieldcloud.drift_report",
            "FIBREFLOW_DRIFT_REPORT_DIR": str(report_dir),
        },
    )
    assert drift["rc"] == 0, drift["output"][-3000:]
    print("drift_check.yml over ssh:\n" + recap_lines(drift))
    report = json.loads((report_dir / "drift-report.json").read_text())
    assert set(report["hosts"]) == set(ADDRESSES)
    for host, entry in report["hosts"].items():
        assert entry["items"] == [] and entry["outcome"] == "ok", (host, entry)
        assert entry["verdict"]["sync"] is True, (host, entry["verdict"])
    assert report["exit_status"] == 0 and report["run"]["check_mode"] is True
    assert all(s["changed"] == 0 and s["failures"] == 0 for s in recap_of(drift).values()), recap_lines(drift)

    # verify.yml on the repaired host, over SSH with the distro's libraries: the probe job finishes.
    verify = fleet_play("playbooks/verify.yml", inventory, sshd, stacks, "--limit", BROKEN)
    assert verify["rc"] == 0, verify["output"][-3000:]
    assert verify["stats"][BROKEN]["failures"] == 0 and HEALTHY not in verify["stats"], verify["stats"]
