# Copyright (c) 2026, fibreflow
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The sync probe through QFieldCloud's API: status endpoint, login, a job on the probe project (or the one of that
type already in flight there, followed), polled until it ends, logout. The one home of the API calls the verify
role makes.

``run_probe`` takes the HTTP call, the clock and the sleep as callables, so that it is tested with plain data. The
token lives only inside it: nothing it returns or raises holds the token or the password.
"""

from __future__ import annotations

import json
import time
from typing import Any, Callable, Optional, Tuple

# (status, parsed JSON body or None, text of a transport error or "") of one request.
Response = Tuple[Optional[int], Any, str]
# request(method, path, body, token) -> Response; path starts with /api/v1/.
Request = Callable[[str, str, Optional[dict], Optional[str]], Response]

FINAL_STATUSES = ("finished", "failed", "stopped")
JOB_TYPES = ("package", "process_projectfile")
RECORD_VERSION = 1


def _short(value: Any, limit: int = 300) -> str:
    text = value if isinstance(value, str) else json.dumps(value, sort_keys=True)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _answer(status: int | None, error: str) -> str:
    """How a request ended, for a message: the HTTP status, or the transport error."""
    if status is not None:
        return f"HTTP {status}"
    return f"no answer ({error})" if error else "no answer"


def status_error(url: str, status: int | None, body: Any, error: str) -> str:
    """Why the status endpoint's answer is not a healthy server's, or "" when it is.

    Healthy: HTTP 200 with ``database`` (``geodb`` on older releases) ``ok``.
    """
    where = f"the status endpoint {url}/api/v1/status/"
    if status != 200:
        detail = f" ({_short(body)})" if body not in (None, "", {}) else ""
        return f"{where} gave {_answer(status, error)}{detail}"
    state = body.get("database", body.get("geodb")) if isinstance(body, dict) else None
    if state != "ok":
        return f"{where} answers database {state if state is not None else 'unknown'} ({_short(body)})"
    return ""


def job_create_error(project: str, job_type: str, username: str, status: int | None, body: Any, error: str) -> str:
    """Why creating the probe job failed, with what to do, or "" when it answered a job."""
    if status in (200, 201) and isinstance(body, dict) and body.get("id"):
        return ""
    if status == 401:
        return (
            f"creating a {job_type} job gave HTTP 401: the probe token was expired between login and use, by another"
            f" login of {username}. The probe account must be one nobody else uses."
        )
    if status in (400, 403, 404):
        return (
            f"creating a {job_type} job on project {project} gave HTTP {status} ({_short(body)}). The probe project"
            " must be one the probe account may use."
        )
    detail = body if body not in (None, "", {}) else error
    return f"creating a {job_type} job on project {project} gave {_answer(status, error)} ({_short(detail)})."


def failed_result(error: str | None = None, option: str | None = None) -> dict[str, Any]:
    """A result before anything was asked (what ``run_probe`` starts from, and a failure that asks nothing)."""
    return {
        "outcome": "failed",
        "error": error,
        "server_status": None,
        "job": None,
        "latency_s": None,
        "logout_status": None,
        "option": option,
    }


def run_probe(
    request: Request,
    *,
    url: str,
    probe: bool,
    project: str,
    job_type: str,
    username: str,
    password: str,
    timeout: float,
    poll: float,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
    wall: Callable[[], float] = time.time,
) -> dict[str, Any]:
    """Ask the status endpoint, then (with ``probe``) run the probe job to its end.

    Returns ``outcome`` (``ok``, ``failed`` or ``status_only``), ``error`` (or None), ``server_status`` (the status
    endpoint's JSON), ``job`` (id, status, followed, created_at, feedback; None when no job was answered),
    ``latency_s`` (from asking for the job to its end; None unless ``ok``), ``logout_status``
    (None when there was no login, else the logout's HTTP status, -1 when it got no answer), ``option`` (the
    option a failure concerns: ``username`` or ``project``; None for any other).
    """
    result = failed_result()
    status, body, error = request("GET", "/api/v1/status/", None, None)
    result["server_status"] = body if isinstance(body, dict) else None
    problem = status_error(url, status, body, error)
    if problem:
        result["error"] = problem
        return result
    if not probe:
        result["outcome"] = "status_only"
        return result

    status, body, error = request("POST", "/api/v1/auth/login/", {"username": username, "password": password}, None)
    token = body.get("token") if status == 200 and isinstance(body, dict) else None
    if not token:
        result["error"] = (
            f"login as {username} failed ({_answer(status, error)}): check the probe account's username and password."
        )
        result["option"] = "username"
        return result
    try:
        _follow_job(request, token, result, project, job_type, username, timeout, poll, clock, sleep, wall)
    finally:
        status, _body, _error = request("POST", "/api/v1/auth/logout/", None, token)
        result["logout_status"] = -1 if status is None else status
    return result


def _follow_job(
    request: Request,
    token: str,
    result: dict[str, Any],
    project: str,
    job_type: str,
    username: str,
    timeout: float,
    poll: float,
    clock: Callable[[], float],
    sleep: Callable[[float], None],
    wall: Callable[[], float],
) -> None:
    asked = wall()
    started = clock()
    # Upstream runs one job of a type per project at a time: while one is pending, queued or started it answers
    # 200 with that job instead of creating one (201). Both are followed to their end.
    status, body, error = request("POST", "/api/v1/jobs/", {"project_id": project, "type": job_type}, token)
    problem = job_create_error(project, job_type, username, status, body, error)
    if problem:
        result["error"] = problem
        result["option"] = {401: "username", 400: "project", 403: "project", 404: "project"}.get(status)
        return
    job = {
        "id": str(body["id"]),
        "status": body.get("status"),
        "followed": status == 200,
        "created_at": body.get("created_at"),
        "feedback": None,
    }
    result["job"] = job
    last_http = 200
    # The last poll ends the loop whatever it saw, so that the message says what the job was last.
    while True:
        status, body, _error = request("GET", f"/api/v1/jobs/{job['id']}/", None, token)
        last_http = status
        if status == 200 and isinstance(body, dict):
            job["status"] = body.get("status")
            job["feedback"] = body.get("feedback")
        if job["status"] in FINAL_STATUSES or clock() - started >= timeout:
            break
        sleep(poll)
    if job["status"] == "finished":
        result["outcome"] = "ok"
        result["latency_s"] = round(wall() - asked, 2)
        return
    followed = " (an existing job, followed)" if job["followed"] else ""
    if job["status"] in ("failed", "stopped"):
        why = f"({_short(job['feedback'] or {})})"
    else:
        last = f"; last poll: {_answer(last_http, '')}" if last_http != 200 else ""
        why = f"after {timeout:g} s (no worker picked it up or it is still running{last})"
    result["error"] = f"the probe job {job['id']}{followed} is {job['status'] or 'unknown'} {why}"


def record(result: dict[str, Any], job_type: str, fields: dict[str, Any], now: float | None = None) -> dict[str, Any]:
    """The result record of a verification (``verify.json``): what the metrics and the drift report read."""
    job = result.get("job") or {}
    stamp = time.gmtime(time.time() if now is None else now)
    return {
        "version": RECORD_VERSION,
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", stamp),
        **fields,
        "outcome": result["outcome"],
        "error": result["error"] or None,
        "job_type": job_type,
        "job_id": job.get("id"),
        "job_status": job.get("status"),
        # true when the probe project already had a job of this type in flight and verify followed it (HTTP 200).
        "job_followed": bool(job.get("followed", False)),
        "latency_s": result["latency_s"] if result["outcome"] == "ok" else None,
    }
