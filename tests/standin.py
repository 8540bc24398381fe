"""Python access to stand-in stacks for the test suites (wraps tests/harness/standin)."""

from __future__ import annotations

import json
import os
import subprocess
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent
STANDIN = REPO / "tests" / "harness" / "standin"
# The stand-in labels every container it starts outside compose (hand-started workers) with its stack's name.
STANDIN_LABEL = "fibreflow.standin"
# What the collection writes into a project directory: the worker override and the .env backups.
WORKER_OVERRIDE = "docker-compose.override.fibreflow-worker.yml"
# Services whose containers exit by themselves right after starting: upstream's qgis services only build images.
ONE_SHOT_SERVICES = ("qgis3", "qgis4")
SECRET_KEYS = (
    "POSTGRES_PASSWORD",
    "SECRET_KEY",
    "STORAGE_ACCESS_KEY_ID",
    "STORAGE_SECRET_ACCESS_KEY",
    "EMAIL_HOST_PASSWORD",
)


def standin(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    res = subprocess.run([str(STANDIN), *args], text=True, check=False, capture_output=True)
    if check and res.returncode != 0:
        raise RuntimeError(f"standin {' '.join(args)} failed ({res.returncode}):\n{res.stdout}\n{res.stderr}")
    return res


def read_env(path: Path) -> dict:
    env = {}
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if line and not line.startswith("#") and "=" in line:
            key, _sep, value = line.partition("=")
            env[key.strip()] = value.strip().strip("'\"")
    return env


def _sql(value: str | None) -> str:
    return "NULL" if value is None else "'" + value.replace("'", "''") + "'"


def _json_or_text(raw: bytes):
    """The body as JSON, or {"text": ...} when it is not JSON (nginx error pages)."""
    try:
        return json.loads(raw or b"null")
    except ValueError:
        return {"text": raw.decode(errors="replace")}


class Stack:
    """One stand-in stack: its name, directory, settings and helpers to use it."""

    def __init__(self, name: str, directory: Path | None = None):
        self.name = name
        self.dir = directory or REPO / "tests" / "output" / "standin" / name

    # -- lifecycle -------------------------------------------------------------
    def up(self, legacy: bool = False, replicas: int = 1) -> Stack:
        args = ["up", "--name", self.name, "--dir", str(self.dir), "--replicas", str(replicas)]
        started = time.monotonic()
        standin(*args, *(["--legacy"] if legacy else []))
        record_run("stack", "up", time.monotonic() - started)
        return self

    def down(self, images: bool = False) -> None:
        standin("down", "--name", self.name, "--dir", str(self.dir), *(["--images"] if images else []), check=False)

    def break_(self, fault: str) -> None:
        standin("break", fault, "--name", self.name, "--dir", str(self.dir))

    # -- settings --------------------------------------------------------------
    @property
    def env(self) -> dict:
        return read_env(self.dir / ".env")

    @property
    def vars(self) -> dict:
        return yaml.safe_load((self.dir / "standin-vars.yml").read_text())

    def secrets(self) -> list[str]:
        """Every secret value of this stack: none may ever appear in the collection's output."""
        env = self.env
        values = [env[k] for k in SECRET_KEYS if env.get(k)]
        values.append(self.vars["qfieldcloud_probe_password"])
        return values

    # -- docker ----------------------------------------------------------------
    def compose(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        res = subprocess.run(["docker", "compose", *args], cwd=self.dir, text=True, check=False, capture_output=True)
        if check and res.returncode != 0:
            raise RuntimeError(f"docker compose {' '.join(args)} failed:\n{res.stderr}")
        if res.returncode == 0 and args[:1] == ("up",) and "-d" in args:
            self.settle_one_shots()
        return res

    def settle_one_shots(self, timeout: float = 30) -> None:
        """Wait until the QGIS services' containers have exited, as they do right after ``compose up``.

        Upstream's qgis services only build the image; ``compose up -d`` starts their containers anyway and
        they exit a moment later. A test that snapshots the stack right after ``up`` must not see that exit
        as a change made by what it tests.
        """
        deadline = time.monotonic() + timeout
        # One listing per poll: the services of this stack's running containers.
        cmd = ["docker", "ps", "--filter", f"label=com.docker.compose.project={self.name}"]
        cmd += ["--filter", "status=running", "--format", '{{.Label "com.docker.compose.service"}}']
        while True:
            running = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.split()
            if not set(running) & set(ONE_SHOT_SERVICES) or time.monotonic() > deadline:
                return
            time.sleep(0.2)

    def containers(self, service: str, all_: bool = True) -> list[str]:
        """Full ids of the service's containers (running only when all_ is false)."""
        cmd = [
            "docker",
            "ps",
            "-q",
            "--no-trunc",
            "--filter",
            f"label=com.docker.compose.project={self.name}",
            "--filter",
            f"label=com.docker.compose.service={service}",
            # compose labels its images too: a container started by hand from a compose-built image carries
            # the project and service labels, but only compose's own containers have a config hash.
            "--filter",
            "label=com.docker.compose.config-hash",
        ]
        if all_:
            cmd.insert(2, "-a")
        return sorted(subprocess.run(cmd, text=True, capture_output=True, check=True).stdout.split())

    def logs(self, service: str, tail: int = 200) -> str:
        ids = self.containers(service)
        out = []
        for cid in ids:
            res = subprocess.run(
                ["docker", "logs", "--tail", str(tail), cid], text=True, check=False, capture_output=True
            )
            out.append(res.stdout + res.stderr)
        return "\n".join(out)

    def inspect(self, cid: str) -> dict:
        res = subprocess.run(["docker", "inspect", cid], text=True, capture_output=True, check=True)
        return json.loads(res.stdout)[0]

    # -- database --------------------------------------------------------------
    def sql(self, query: str) -> list[list[str]]:
        """Rows of a query run with psql in the db container (fields as text)."""
        res = standin("sql", query, "--name", self.name, "--dir", str(self.dir))
        return [line.split("|") for line in res.stdout.splitlines() if line]

    # -- API -------------------------------------------------------------------
    def http(
        self,
        method: str,
        path: str,
        data: dict | None = None,
        token: str | None = None,
        user_agent: str | None = None,
    ) -> tuple[int, dict]:
        v = self.vars
        headers = {"Content-Type": "application/json"}
        if v.get("qfieldcloud_host_header"):  # absent when the stack has no QFIELDCLOUD_HOST (minimal-env)
            headers["Host"] = v["qfieldcloud_host_header"]
        if token:
            headers["Authorization"] = f"Token {token}"
        if user_agent:
            headers["User-Agent"] = user_agent
        req = urllib.request.Request(
            v["qfieldcloud_app_url"] + path,
            method=method,
            headers=headers,
            data=json.dumps(data).encode() if data is not None else None,
        )
        try:
            with urllib.request.urlopen(req, timeout=10) as resp:
                return resp.status, _json_or_text(resp.read())
        except urllib.error.HTTPError as exc:
            return exc.code, _json_or_text(exc.read())

    def token(self, user_agent: str | None = None) -> str:
        v = self.vars
        code, body = self.http(
            "POST",
            "/api/v1/auth/login/",
            {"username": v["qfieldcloud_probe_username"], "password": v["qfieldcloud_probe_password"]},
            user_agent=user_agent,
        )
        assert code == 200, body
        return body["token"]

    def post_job(
        self,
        job_type: str = "package",
        seconds: float | None = None,
        project: str | None = None,
        no_feedback: bool = False,
        token: str | None = None,
    ) -> tuple[int, dict]:
        """POST /api/v1/jobs/ as the probe account: (HTTP status, body). 200 means a job already in flight."""
        payload: dict = {"project_id": project or self.vars["qfieldcloud_probe_project"], "type": job_type}
        if seconds is not None:
            payload["standin_seconds"] = seconds
        if no_feedback:
            payload["standin_no_feedback"] = True
        return self.http("POST", "/api/v1/jobs/", payload, token=token or self.token())

    def create_job(
        self, job_type: str = "package", seconds: float | None = None, project: str | None = None, **kw
    ) -> str:
        """Create a new job (HTTP 201) and return its id."""
        code, body = self.post_job(job_type, seconds, project, **kw)
        assert code == 201, body
        return body["id"]

    def push_deltas(self, count: int = 1, seconds: float | None = None, project: str | None = None) -> dict:
        """Upload a deltafile of `count` deltas as QField does; returns {"deltafile_id", "job_id", "deltas"}."""
        project = project or self.vars["qfieldcloud_probe_project"]
        deltas = [str(uuid.uuid4()) for _n in range(count)]
        deltafile = {"id": str(uuid.uuid4()), "deltas": [{"uuid": d, "method": "create"} for d in deltas]}
        payload: dict = {"file": json.dumps(deltafile)}
        if seconds is not None:
            payload["standin_seconds"] = seconds
        code, body = self.http("POST", f"/api/v1/deltas/{project}/", payload, token=self.token())
        assert code == 200, body
        return {**body, "deltas": deltas}

    def add_project(self, name: str, qgis_version: str | None = None) -> str:
        """A project of the probe account made in the database (the stand-in has no project API)."""
        project = str(uuid.uuid4())
        table = "core_project" if "QFIELDCLOUD_QGIS_IMAGE_NAME" in self.env else "project_project"
        lock = "is_locked" if table == "core_project" else "locked_at"
        extra_col, extra_val = ("", "") if table == "core_project" else (", qgis_version", f", {_sql(qgis_version)}")
        self.sql(
            f"INSERT INTO {table} (id, name, owner_id, is_public, {lock}, created_at, updated_at{extra_col})"
            f" SELECT '{project}', {_sql(name)}, id, false, {'false' if lock == 'is_locked' else 'NULL'}, now(), now()"
            f"{extra_val} FROM core_user WHERE username = 'probe'"
        )
        return project

    def create_jobs(self, count: int, job_type: str = "package", seconds: float | None = None) -> list[str]:
        """``count`` new jobs, each in a project of its own: upstream answers a second package job of one project
        with the one in flight (HTTP 200), so jobs that must all exist at once need their own projects."""
        return [
            self.create_job(job_type, seconds, project=self.add_project(f"jobs-{uuid.uuid4().hex[:8]}"))
            for _n in range(count)
        ]

    def job_status(self, job_id: str) -> str:
        return self.sql(f"SELECT status FROM core_job WHERE id = '{job_id}'")[0][0]

    def wait_job(self, job_id: str, timeout: float = 60, until=("finished", "failed")) -> str:
        deadline = time.monotonic() + timeout
        status = self.job_status(job_id)
        while status not in until and time.monotonic() < deadline:
            time.sleep(0.5)
            status = self.job_status(job_id)
        return status


class Pristine:
    """A stack's project files as the stand-in wrote them, to put the stack back before a test.

    ``restore`` removes the containers the stand-in started outside compose (a hand-started worker), writes the
    files back, gives .env its mode 0600, removes what the collection wrote (its override, .env backups) and runs
    ``docker compose up -d`` for ``services`` (every service when empty; ``--no-deps`` when named).
    """

    def __init__(
        self, stack: Stack, names: tuple[str, ...] = (".env", "docker-compose.yml"), services: tuple[str, ...] = ()
    ) -> None:
        self.stack = stack
        self.services = services
        self.files = {name: (stack.dir / name).read_bytes() for name in names}

    def restore(self) -> None:
        d = self.stack.dir
        mine = _docker_ids("--filter", f"label={STANDIN_LABEL}={self.stack.name}")
        compose_made = set(_docker_ids("--filter", "label=com.docker.compose.config-hash"))
        leftovers = [cid for cid in mine if cid not in compose_made]
        if leftovers:
            subprocess.run(["docker", "rm", "-f", *leftovers], capture_output=True, check=False)
        for name, data in self.files.items():
            (d / name).write_bytes(data)
        os.chmod(d / ".env", 0o600)
        for path in [d / WORKER_OVERRIDE, *d.glob(".env.*.bak")]:
            path.unlink(missing_ok=True)
        if self.services:
            self.stack.compose("up", "-d", "--timeout", "20", "--no-deps", *self.services)
        else:
            self.stack.compose("up", "-d", "--timeout", "20")


def record_run(kind: str, what: str, seconds: float) -> None:
    """One line per playbook, module run or stack start in $FIBREFLOW_RUN_LOG when set: where the suites' time goes."""
    path = os.environ.get("FIBREFLOW_RUN_LOG")
    if path:
        test = os.environ.get("PYTEST_CURRENT_TEST", "").split(" ")[0]
        with open(path, "a", encoding="utf-8") as fh:
            fh.write(json.dumps({"kind": kind, "what": what, "seconds": round(seconds, 2), "test": test}) + "\n")


def _docker_ids(*filters: str) -> list[str]:
    return subprocess.run(["docker", "ps", "-aq", *filters], capture_output=True, text=True, check=True).stdout.split()
