"""Python access to stand-in stacks for the test suites (wraps tests/harness/standin)."""

from __future__ import annotations

import json
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent
STANDIN = REPO / "tests" / "harness" / "standin"
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
        standin(*args, *(["--legacy"] if legacy else []))
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
        return res

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
    def http(self, method: str, path: str, data: dict | None = None, token: str | None = None) -> tuple[int, dict]:
        v = self.vars
        headers = {"Host": v["qfieldcloud_host_header"], "Content-Type": "application/json"}
        if token:
            headers["Authorization"] = f"Token {token}"
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

    def token(self) -> str:
        v = self.vars
        code, body = self.http(
            "POST",
            "/api/v1/auth/login/",
            {"username": v["qfieldcloud_probe_username"], "password": v["qfieldcloud_probe_password"]},
        )
        assert code == 200, body
        return body["token"]

    def create_job(self, job_type: str = "package", seconds: float | None = None) -> str:
        payload = {"project_id": self.vars["qfieldcloud_probe_project"], "type": job_type}
        if seconds is not None:
            payload["standin_seconds"] = seconds
        code, body = self.http("POST", "/api/v1/jobs/", payload, token=self.token())
        assert code == 201, body
        return body["id"]

    def job_status(self, job_id: str) -> str:
        return self.sql(f"SELECT status FROM core_job WHERE id = '{job_id}'")[0][0]

    def wait_job(self, job_id: str, timeout: float = 60, until=("finished", "failed")) -> str:
        deadline = time.monotonic() + timeout
        status = self.job_status(job_id)
        while status not in until and time.monotonic() < deadline:
            time.sleep(0.5)
            status = self.job_status(job_id)
        return status
