# SPDX-License-Identifier: GPL-3.0-or-later
"""Unit tests of the sync probe (module_utils/probe.py) with a scripted server, clock and sleep. The real API runs
in tests/integration (the verify role against the stand-in)."""

from __future__ import annotations

import json

import pytest

from ansible_collections.fibreflow.qfieldcloud.plugins.module_utils import probe

JOB = "1b861393-bebb-4bbb-839a-df3364941daa"
TOKEN = "token-that-never-leaves"
PASSWORD = "password-that-never-leaves"


class Server:
    """Answers the probe's requests from a script and remembers them; the clock moves by each sleep."""

    def __init__(self, job_answer=(201, {"id": JOB, "status": "pending"}), polls=("finished",), **answers):
        self.answers = {
            ("GET", "/api/v1/status/"): (200, {"database": "ok", "storage": "ok"}, ""),
            ("POST", "/api/v1/auth/login/"): (200, {"token": TOKEN}, ""),
            ("POST", "/api/v1/auth/logout/"): (200, {"detail": "Successfully logged out."}, ""),
            ("POST", "/api/v1/jobs/"): (*job_answer, ""),
            **answers,
        }
        self.polls = list(polls)
        self.asked: list[tuple[str, str, str | None]] = []
        self.now = 1000.0

    def request(self, method, path, body, token):
        self.asked.append((method, path, token))
        if path == f"/api/v1/jobs/{JOB}/":
            status = self.polls.pop(0) if len(self.polls) > 1 else self.polls[0]
            return 200, {"id": JOB, "status": status, "feedback": {"error": "boom"} if status == "failed" else None}, ""
        return self.answers[(method, path)]

    def sleep(self, seconds):
        self.now += seconds

    def run(self, **overrides):
        args = {
            "url": "http://qfc",
            "probe": True,
            "project": "p1",
            "job_type": "package",
            "username": "probe",
            "password": PASSWORD,
            "timeout": 5,
            "poll": 1,
            **overrides,
        }
        result = probe.run_probe(self.request, clock=lambda: self.now, sleep=self.sleep, wall=lambda: self.now, **args)
        assert TOKEN not in json.dumps(result) and PASSWORD not in json.dumps(result)
        return result


def test_created_job_is_polled_to_its_end_then_logged_out():
    server = Server(polls=("pending", "started", "finished"))
    result = server.run()
    assert result["outcome"] == "ok" and result["error"] is None
    assert result["job"] == {"id": JOB, "status": "finished", "followed": False, "created_at": None, "feedback": None}
    assert result["latency_s"] == 2.0 and result["logout_status"] == 200 and result["option"] is None
    assert [a[1] for a in server.asked].count(f"/api/v1/jobs/{JOB}/") == 3
    assert server.asked[-1] == ("POST", "/api/v1/auth/logout/", TOKEN)


def test_job_in_flight_is_followed():
    server = Server(job_answer=(200, {"id": JOB, "status": "started", "created_at": "2026-12-01T10:00:00Z"}))
    result = server.run()
    assert result["outcome"] == "ok" and result["job"]["followed"] is True
    assert result["job"]["created_at"] == "2026-12-01T10:00:00Z"


def test_pending_job_fails_after_the_timeout_with_a_last_poll_and_logs_out():
    server = Server(polls=("pending",))
    result = server.run(timeout=3)
    assert result["outcome"] == "failed" and result["latency_s"] is None
    assert result["error"] == (
        f"the probe job {JOB} is pending after 3 s (no worker picked it up or it is still running)"
    )
    assert [a[1] for a in server.asked].count(f"/api/v1/jobs/{JOB}/") == 4  # at 0, 1, 2 and 3 s
    assert server.asked[-1][1] == "/api/v1/auth/logout/"


def test_failed_job_says_its_feedback():
    result = Server(polls=("queued", "failed")).run()
    assert result["error"] == f'the probe job {JOB} is failed ({{"error": "boom"}})'


@pytest.mark.parametrize(
    ("answer", "expected"),
    [
        ((502, None, ""), "the status endpoint http://qfc/api/v1/status/ gave HTTP 502"),
        ((None, None, "URLError: refused"), "the status endpoint http://qfc/api/v1/status/ gave no answer"),
        ((200, {"database": "error"}, ""), "the status endpoint http://qfc/api/v1/status/ answers database error"),
        ((200, {"geodb": "ok"}, ""), ""),
    ],
)
def test_status_endpoint(answer, expected):
    server = Server()
    server.answers[("GET", "/api/v1/status/")] = answer
    result = server.run(probe=False)
    if expected:
        assert result["outcome"] == "failed" and result["error"].startswith(expected)
        assert result["logout_status"] is None
    else:
        assert result["outcome"] == "status_only" and result["error"] is None
    assert [a[1] for a in server.asked] == ["/api/v1/status/"]  # no login without the probe


def test_refused_login_makes_no_job_and_no_logout():
    server = Server()
    server.answers[("POST", "/api/v1/auth/login/")] = (400, {"non_field_errors": ["no"]}, "")
    result = server.run()
    assert result["error"] == "login as probe failed (HTTP 400): check the probe account's username and password."
    assert result["option"] == "username"
    assert [a[1] for a in server.asked] == ["/api/v1/status/", "/api/v1/auth/login/"]


@pytest.mark.parametrize(
    ("answer", "phrase", "option"),
    [
        ((401, {"detail": "Invalid token."}), "the probe token was expired between login and use", "username"),
        ((404, {"detail": "Not found."}), "The probe project must be one the probe account may use.", "project"),
        ((500, "Server Error"), "gave HTTP 500 (Server Error)", None),
    ],
)
def test_refused_job_is_named_and_still_logs_out(answer, phrase, option):
    server = Server(job_answer=answer)
    result = server.run()
    assert result["outcome"] == "failed" and phrase in result["error"] and result["job"] is None
    assert result["option"] == option
    assert result["logout_status"] == 200


def test_logout_without_answer_is_minus_one():
    server = Server()
    server.answers[("POST", "/api/v1/auth/logout/")] = (None, None, "ConnectionResetError")
    assert server.run()["logout_status"] == -1


def test_record_holds_the_outcome_and_the_given_fields():
    result = Server(job_answer=(200, {"id": JOB, "status": "started"})).run()
    rec = probe.record(result, "package", {"host": "field-1", "project_dir": "/srv/qfc"}, now=0)
    assert rec == {
        "version": 1,
        "time": "1970-01-01T00:00:00Z",
        "host": "field-1",
        "project_dir": "/srv/qfc",
        "outcome": "ok",
        "error": None,
        "job_type": "package",
        "job_id": JOB,
        "job_status": "finished",
        "job_followed": True,
        "latency_s": result["latency_s"],
    }
    failed = probe.record({**result, "outcome": "failed", "error": "x"}, "package", {}, now=0)
    assert failed["latency_s"] is None and failed["error"] == "x"
