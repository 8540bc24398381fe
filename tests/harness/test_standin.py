"""The stand-in behaves like QFieldCloud: a healthy stack syncs, and every fault shows its real symptom."""

from __future__ import annotations

import json
import socket
import subprocess
import time
import uuid

import pytest
from standin import standin

pytestmark = pytest.mark.harness


def wait_for(fn, timeout: float = 60, interval: float = 1.0):
    deadline = time.monotonic() + timeout
    value = fn()
    while not value and time.monotonic() < deadline:
        time.sleep(interval)
        value = fn()
    return value


def image_exists(name: str) -> bool:
    return subprocess.run(["docker", "image", "inspect", name], check=False, capture_output=True).returncode == 0


def test_faults_lists_every_fault_with_a_line():
    out = standin("faults").stdout.splitlines()
    names = [line.split()[0] for line in out]
    assert len(names) == len(set(names)) >= 15
    assert all(len(line.split(None, 1)) == 2 for line in out)
    assert {"worker-stopped", "worker-not-root", "qgis-image-missing", "migrations-missing"} <= set(names)


def test_unknown_fault_is_refused(standin):
    res = subprocess.run(
        [str(standin_path()), "break", "no-such-fault", "--name", standin.name],
        check=False,
        capture_output=True,
        text=True,
    )
    assert res.returncode != 0
    assert "standin faults" in res.stderr


def standin_path():
    from standin import STANDIN

    return STANDIN


def test_healthy_job_runs_in_a_sibling_qgis_container(standin):
    events = subprocess.Popen(
        ["docker", "events", "--filter", "event=create", "--filter", "label=job_id", "--format", "{{json .}}"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        job_id = standin.create_job("package")
        assert standin.wait_job(job_id, 60) == "finished"
        time.sleep(1)
    finally:
        events.terminate()
    created = [json.loads(line) for line in events.communicate(timeout=10)[0].splitlines()]
    mine = [e for e in created if e["Actor"]["Attributes"].get("job_id") == job_id]
    assert len(mine) == 1
    attrs = mine[0]["Actor"]["Attributes"]
    assert attrs["app"] == f"{standin.env['ENVIRONMENT']}_worker"
    assert attrs["type"] == "package"
    assert attrs["project_id"] == standin.vars["qfieldcloud_probe_project"]
    assert attrs["image"] == f"{standin.name}-qgis3"
    row = standin.sql(
        f"SELECT started_at IS NOT NULL, finished_at IS NOT NULL, container_id <> '',"
        f" position('QGIS job package done' in output) > 0"
        f" FROM core_job WHERE id = '{job_id}'"
    )[0]
    assert row == ["t", "t", "t", "t"]
    assert f"Dequeued job {job_id}, run!" in standin.logs("worker_wrapper")


def test_delta_upload_is_applied_by_the_worker(standin):
    token = standin.token()
    project = standin.vars["qfieldcloud_probe_project"]
    deltafile = str(uuid.uuid4())
    delta = str(uuid.uuid4())
    code, body = standin.http(
        "POST",
        f"/api/v1/deltas/{project}/",
        {"file": json.dumps({"id": deltafile, "deltas": [{"uuid": delta, "method": "create"}]})},
        token=token,
    )
    assert code == 200, body
    assert standin.wait_job(body["job_id"], 60) == "finished"
    code, deltas = standin.http("GET", f"/api/v1/deltas/{project}/{deltafile}/", token=token)
    assert code == 200
    assert [d["status"] for d in deltas] == ["applied"]
    assert standin.sql(f"SELECT type FROM core_job WHERE id = '{body['job_id']}'") == [["delta_apply"]]


def test_status_endpoint_and_nginx_host_check(standin):
    code, body = standin.http("GET", "/api/v1/status/")
    assert code == 200 and body == {"database": "ok", "storage": "ok"}
    port = standin.env["WEB_HTTP_PORT"]
    with socket.create_connection(("127.0.0.1", int(port)), timeout=5) as s:
        s.sendall(b"GET /api/v1/status/ HTTP/1.1\r\nHost: wrong.example\r\n\r\n")
        assert s.recv(100) == b""  # 444: the connection is closed without an answer


def test_login_refuses_a_wrong_password(standin):
    code, _body = standin.http("POST", "/api/v1/auth/login/", {"username": "probe", "password": "wrong"})
    assert code == 400


def test_createuser_then_the_project_api_as_upstream(standin):
    """`manage.py createuser` makes a user once (idempotent by username), who logs in and finds or creates projects."""
    name, password = f"u{uuid.uuid4().hex[:8]}", uuid.uuid4().hex
    argv = ["exec", "-T", "app", "python3", "manage.py", "createuser", "--username", name, "--email", f"{name}@x.test"]
    made = standin.compose(*argv, "--password", password)
    again = standin.compose(*argv, "--password", "another")
    empty = standin.compose(*argv[:7], "", "--email", "e@x.test", "--password", "p", check=False)
    assert made.stdout.strip() == f"User {name} has been successfully created"
    assert again.stdout.strip() == f"User {name} already exists"
    assert empty.returncode == 1 and empty.stdout.startswith("ERROR: Unable to create user")
    user = standin.sql(f"SELECT email, is_superuser FROM core_user WHERE username = '{name}'")
    assert user == [[f"{name}@x.test", "f"]]
    code, body = standin.http("POST", "/api/v1/auth/login/", {"username": name, "password": password})
    assert code == 200
    token = body["token"]
    assert standin.http("GET", "/api/v1/projects/", token=token) == (200, [])
    assert standin.http("GET", "/api/v1/projects/")[0] == 401
    new = {"name": "p1", "owner": name, "description": "d", "is_public": False}
    code, project = standin.http("POST", "/api/v1/projects/", new, token=token)
    assert code == 201 and (project["name"], project["owner"], project["is_public"]) == ("p1", name, False)
    assert standin.http("POST", "/api/v1/projects/", new, token=token)[1]["code"] == "project_already_exists"
    assert standin.http("POST", "/api/v1/projects/", {**new, "owner": "probe"}, token=token)[0] == 403
    assert [p["id"] for p in standin.http("GET", "/api/v1/projects/", token=token)[1]] == [project["id"]]
    # In the table the stand-in's jobs look projects up in.
    assert standin.sql(f"SELECT owner_id FROM project_project WHERE id = '{project['id']}'") != []
    standin.http("POST", "/api/v1/auth/logout/", token=token)


def test_worker_stopped_and_removed_leave_jobs_pending(stack_factory):
    stack = stack_factory()
    stack.break_("worker-stopped")
    assert stack.containers("worker_wrapper", all_=False) == []
    job = stack.create_job()
    assert stack.wait_job(job, 8) == "pending"
    stack.break_("worker-removed")
    assert stack.containers("worker_wrapper") == []
    assert stack.wait_job(job, 3) == "pending"
    stack.compose("up", "-d", "worker_wrapper")
    assert stack.wait_job(job, 60) == "finished"
    stack.break_("worker-image-missing")
    assert stack.containers("worker_wrapper") == []
    assert not image_exists(f"{stack.name}-worker_wrapper")
    job = stack.create_job()
    assert stack.wait_job(job, 6) == "pending"


def test_qgis_image_missing_then_worker_without_the_socket(stack_factory):
    """A missing QGIS image fails jobs (pull attempt); a worker without the socket crashes before claiming."""
    stack = stack_factory()
    stack.break_("qgis-image-missing")
    assert not image_exists(f"{stack.name}-qgis3")
    job = stack.create_job()
    assert stack.wait_job(job, 60) == "failed"
    feedback = stack.sql(f"SELECT feedback FROM core_job WHERE id = '{job}'")[0][0]
    assert "images/create" in feedback and f"fromImage={stack.name}-qgis3" in feedback
    # the idle loop lists job containers through the socket: a worker that may not use it never claims
    stack.break_("worker-not-root")
    (cid,) = stack.containers("worker_wrapper")
    assert stack.inspect(cid)["Config"]["User"] == "10001"
    job = stack.create_job()
    assert wait_for(lambda: stack.inspect(cid)["RestartCount"] >= 2, 60)
    assert "Permission denied" in stack.logs("worker_wrapper")
    assert stack.job_status(job) == "pending"


def test_worker_that_cannot_reach_the_db_crash_loops(stack_factory):
    # two stacks broken at once: the waits (the entrypoint tries for 30 s) overlap
    cases = {"worker-wrong-db-host": ("postgres", stack_factory()), "worker-wrong-network": ("db", stack_factory())}
    jobs = {}
    for fault, (_host, stack) in cases.items():
        stack.break_(fault)
        jobs[fault] = stack.create_job()
    for fault, (host, stack) in cases.items():
        assert wait_for(lambda s=stack, h=host: f'could not translate host name "{h}"' in s.logs("worker_wrapper"), 20)
        (cid,) = stack.containers("worker_wrapper")
        assert wait_for(lambda s=stack, c=cid: s.inspect(c)["RestartCount"] >= 1, 75)
        assert stack.job_status(jobs[fault]) == "pending"
        if fault == "worker-wrong-network":
            assert list(stack.inspect(cid)["NetworkSettings"]["Networks"]) == [f"{stack.name}_isolated"]


def test_published_port_and_debug_command(stack_factory):
    stack = stack_factory()
    stack.break_("worker-port-published")
    (cid,) = stack.containers("worker_wrapper")
    assert "5679/tcp" in stack.inspect(cid)["NetworkSettings"]["Ports"]
    stack.compose("stop", "-t", "10", "worker_wrapper")
    stack.compose("rm", "-f", "worker_wrapper")
    stack.break_("worker-debug-command")
    (cid,) = stack.containers("worker_wrapper")
    info = stack.inspect(cid)
    assert "debugpy" in info["Config"]["Cmd"]
    assert info["NetworkSettings"]["Ports"]["5679/tcp"]
    assert "docker-compose.override.local.yml" in stack.env["COMPOSE_FILE"]
    job = stack.create_job()
    assert stack.wait_job(job, 60) == "finished"  # the development set works; it is just not production


def test_db_and_app_down(stack_factory):
    stack = stack_factory()
    stack.break_("db-down")
    assert wait_for(lambda: stack.http("GET", "/api/v1/status/")[1].get("database") == "error", 20)
    stack.compose("start", "db")
    assert wait_for(lambda: stack.http("GET", "/api/v1/status/")[1].get("database") == "ok", 30)
    stack.break_("app-down")
    code, _ = stack.http("GET", "/api/v1/status/")
    # 502 once nginx knows the app is gone; 504 while it still holds the old address (resolver cache 10 s)
    assert code in (502, 504)


def test_queue_faults(stack_factory):
    stack = stack_factory()
    stack.break_("job-overdue")
    rows = stack.sql("SELECT status, count(*) FROM core_job GROUP BY status ORDER BY status")
    assert rows == [["pending", "1"], ["queued", "1"]]
    time.sleep(7)  # the worker polls every 5 s: the pending job stays parked behind the queued one
    assert stack.sql("SELECT count(*) FROM core_job WHERE status = 'pending'") == [["1"]]
    stack.sql("DELETE FROM core_job")
    stack.break_("project-locked")
    time.sleep(7)
    assert stack.sql("SELECT count(*) FROM core_job WHERE status = 'pending'") == [["1"]]
    stack.sql("DELETE FROM core_job")
    stack.break_("queue-stalled")
    assert stack.containers("worker_wrapper", all_=False) == []
    assert stack.sql(
        "SELECT count(*), min(created_at) < now() - interval '14 minutes' FROM core_job WHERE status = 'pending'"
    ) == [["3", "t"]]


def test_migrations_missing_makes_the_worker_loop_on_a_missing_relation(stack_factory):
    stack = stack_factory()
    stack.break_("migrations-missing")
    # the worker has no error handling: the error ends it with a plain traceback, and its policy restarts it
    assert wait_for(lambda: 'relation "core_job" does not exist' in stack.logs("worker_wrapper", tail=40), 15)
    (cid,) = stack.containers("worker_wrapper")
    before = stack.inspect(cid)["RestartCount"]
    assert wait_for(lambda: stack.inspect(cid)["RestartCount"] > before, 30)
    assert stack.compose("exec", "-T", "app", "python3", "manage.py", "migrate", "--check", check=False).returncode == 1


def test_legacy_generation_and_its_constance_timeout(stack_factory):
    """Before v26.24 the worker and the cron take WORKER_TIMEOUT_S from constance_constance, not the env."""
    stack = stack_factory(legacy=True)
    assert stack.sql("SELECT to_regclass('core_project') IS NOT NULL, to_regclass('project_project') IS NULL") == [
        ["t", "t"]
    ]
    assert "QFIELDCLOUD_QGIS_IMAGE_NAME" in stack.env
    assert image_exists(f"{stack.name}-qgis")
    job = stack.create_job()
    assert stack.wait_job(job, 60) == "finished"
    value = stack.sql("SELECT value FROM constance_constance WHERE key = 'WORKER_TIMEOUT_S'")[0][0]
    assert json.loads(value) == {"__type__": "default", "__value__": 600}
    (cid,) = stack.containers("worker_wrapper")
    assert not any(e.startswith("QFIELDCLOUD_WORKER_TIMEOUT_S=") for e in stack.inspect(cid)["Config"]["Env"])
    assert "QFIELDCLOUD_WORKER_TIMEOUT_S" not in stack.env
    # an admin lowers it; the worker reads it when it starts
    stack.sql("""UPDATE constance_constance SET value = '{"__type__": "default", "__value__": 2}'""")
    stack.compose("restart", "-t", "10", "worker_wrapper")
    job = stack.create_job(seconds=15)
    assert stack.wait_job(job, 40) == "failed"
    assert stack.sql(f"SELECT feedback->>'error_type', finished_at IS NULL FROM core_job WHERE id = '{job}'") == [
        ["TIMEOUT", "t"]
    ]
    # the cron fails a started job older than constance's timeout + 10 s
    project, user = stack.vars["qfieldcloud_probe_project"], "(SELECT id FROM core_user WHERE username = 'probe')"
    stale = insert_started_job(stack, project, user, age_s=30)
    stack.compose("exec", "-T", "app", "python3", "manage.py", "runcrons", "--force")
    assert stack.job_status(stale) == "failed"


def test_down_removes_everything_it_made(stack_factory):
    stack = stack_factory()
    job = stack.create_job()
    assert stack.wait_job(job, 60) == "finished"
    stack.break_("worker-hand-started")
    # the hand-started worker runs beside the stopped compose one
    assert stack.containers("worker_wrapper", all_=False) == []
    info = stack.inspect(f"{stack.name}-worker")
    # it carries the labels of the compose-built image, but not those compose gives its own containers
    assert info["Config"]["Labels"]["com.docker.compose.service"] == "worker_wrapper"
    assert "com.docker.compose.config-hash" not in info["Config"]["Labels"]
    job = stack.create_job()
    assert stack.wait_job(job, 60) == "finished"
    for secret in stack.secrets():
        assert secret not in " ".join(info["Config"]["Cmd"] + info["Args"])
    stack.down(images=True)
    label = f"label=com.docker.compose.project={stack.name}"
    for kind in (["ps", "-a"], ["network", "ls"], ["volume", "ls"]):
        out = subprocess.run(
            ["docker", *kind, "-q", "--filter", label], check=False, capture_output=True, text=True
        ).stdout
        assert out.strip() == "", kind
    assert (
        subprocess.run(
            ["docker", "ps", "-aq", "--filter", f"name={stack.name}-worker"],
            check=False,
            capture_output=True,
            text=True,
        ).stdout.strip()
        == ""
    )
    for image in ("app", "worker_wrapper", "qgis3", "qgis4"):
        assert not image_exists(f"{stack.name}-{image}")
    assert not stack.dir.exists()


def test_two_stacks_side_by_side_then_nginx_host_mismatch(standin, stack_factory):
    stack = stack_factory()
    a, b = standin.create_job(), stack.create_job()
    assert standin.wait_job(a, 60) == "finished" and stack.wait_job(b, 60) == "finished"
    assert stack.sql(f"SELECT count(*) FROM core_job WHERE id = '{a}'") == [["0"]]
    assert standin.env["WEB_HTTP_PORT"] != stack.env["WEB_HTTP_PORT"]
    assert standin.env["ENVIRONMENT"] != stack.env["ENVIRONMENT"]
    # nginx-host-mismatch closes connections for the new name only
    old = stack.env["QFIELDCLOUD_HOST"]
    stack.break_("nginx-host-mismatch")
    new = stack.env["QFIELDCLOUD_HOST"]
    assert new != old
    nginx = stack.inspect(stack.containers("nginx", all_=False)[0])
    assert f"QFIELDCLOUD_HOST={old}" in nginx["Config"]["Env"]  # restart kept the old environment
    port = int(stack.env["WEB_HTTP_PORT"])

    def status(host: str) -> bytes:
        deadline = time.monotonic() + 30
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
                    s.sendall(f"GET /api/v1/status/ HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
                    return s.recv(100)
            except ConnectionError:  # nginx is still restarting
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)

    assert status(new) == b""  # 444 for the name the users now enter
    assert status(old).startswith(b"HTTP/1.1 200")
    assert stack.wait_job(stack.create_job(), 60) == "finished"  # app and worker are not affected


# ---------------------------------------------------------------------------- behaving like upstream
def insert_started_job(stack, project: str, user_sql: str, age_s: int, deltas: int = 0) -> str:
    """A job a worker started `age_s` seconds ago (and, for deltas > 0, a delta_apply job with its deltas)."""
    job = str(uuid.uuid4())
    job_type = "delta_apply" if deltas else "package"
    stack.sql(
        "INSERT INTO core_job (id, project_id, type, status, output, triggered_by_id, created_by_id, created_at,"
        f" updated_at, started_at, container_id) SELECT '{job}', '{project}', '{job_type}', 'started', '', u.id, u.id,"
        f" now() - make_interval(secs => {age_s + 1}), now() - make_interval(secs => {age_s + 1}),"
        f" now() - make_interval(secs => {age_s}), '' FROM {user_sql} AS u"
    )
    if deltas:
        stack.sql(f"INSERT INTO core_applyjob (job_ptr_id, overwrite_conflicts) VALUES ('{job}', true)")
        for _ in range(deltas):
            delta = str(uuid.uuid4())
            stack.sql(
                "INSERT INTO core_delta (id, deltafile_id, content, last_status, created_at, updated_at,"
                f" project_id, created_by_id) SELECT '{delta}', gen_random_uuid(), '{{}}', 'started', now(), now(),"
                f" '{project}', u.id"
                f" FROM {user_sql} AS u"
            )
            stack.sql(
                "INSERT INTO core_applyjobdelta (apply_job_id, delta_id, status)"
                f" VALUES ('{job}', '{delta}', 'started')"
            )
    return job


def delta_states(stack, job: str) -> list[list[str]]:
    """[core_delta.last_status, core_applyjobdelta.status] of each delta of a delta_apply job."""
    return stack.sql(
        "SELECT d.last_status, a.status FROM core_applyjobdelta a JOIN core_delta d ON d.id = a.delta_id"
        f" WHERE a.apply_job_id = '{job}' ORDER BY d.id"
    )


def test_fresh_stack_worker_restarts_until_migrate(standin):
    """Upstream's order is `up -d`, then `migrate`: the worker crashes on the missing tables meanwhile."""
    (cid,) = standin.containers("worker_wrapper")
    info = standin.inspect(cid)
    assert info["RestartCount"] >= 1
    assert info["State"]["Running"]
    logs = subprocess.run(["docker", "logs", cid], capture_output=True, text=True, check=True)
    assert 'relation "core_job" does not exist' in logs.stderr


def test_job_rows_are_saved_with_update_fields(standin):
    """Claim, start and finish name their columns: updated_at stays the creation time (auto_now skipped)."""
    job = standin.create_job()
    assert standin.wait_job(job, 60) == "finished"
    row = standin.sql(
        "SELECT updated_at = created_at, started_at > created_at, finished_at >= started_at,"
        " docker_started_at IS NOT NULL, docker_finished_at IS NOT NULL, length(container_id)"
        f" FROM core_job WHERE id = '{job}'"
    )
    assert row == [["t", "t", "t", "t", "t", "64"]]


def test_exit_0_without_feedback_fails_the_job_without_finished_at(standin):
    job = standin.create_job(no_feedback=True)
    assert standin.wait_job(job, 60) == "failed"
    row = standin.sql(
        "SELECT finished_at IS NULL, updated_at = created_at, feedback->>'container_exit_code',"
        " feedback->>'error_origin', position('feedback.json' in feedback->>'error') > 0"
        f" FROM core_job WHERE id = '{job}'"
    )
    assert row == [["t", "t", "0", "worker_wrapper", "t"]]


def test_delta_apply_sets_its_deltas_started_while_it_runs(standin):
    pushed = standin.push_deltas(2, seconds=4)
    job = pushed["job_id"]
    assert standin.wait_job(job, 30, until=("started", "finished", "failed")) == "started"
    assert wait_for(lambda: delta_states(standin, job) == [["started", "started"]] * 2, 5, 0.2)
    assert standin.wait_job(job, 60) == "finished"
    assert delta_states(standin, job) == [["applied", "applied"]] * 2


def test_second_package_job_answers_the_one_in_flight(standin):
    code, first = standin.post_job(seconds=4)
    assert code == 201
    code, again = standin.post_job()
    assert (code, again["id"]) == (200, first["id"])
    code, other = standin.post_job("process_projectfile")  # other job types run in parallel
    assert code == 201 and other["id"] != first["id"]
    assert standin.wait_job(first["id"], 60) == "finished"
    assert standin.wait_job(other["id"], 60) == "finished"
    code, new = standin.post_job()
    assert code == 201 and new["id"] != first["id"]
    assert standin.wait_job(new["id"], 60) == "finished"


def test_login_expires_the_other_tokens_of_the_same_client_type(standin):
    job = standin.create_job()
    path = f"/api/v1/jobs/{job}/"
    qfield = "qfield|3.5.0|android"
    old, new = standin.token(qfield), standin.token(qfield)
    assert standin.http("GET", path, token=old)[0] == 401
    assert standin.http("GET", path, token=new)[0] == 200
    # clients that may hold several tokens (sdk, cli, unknown) keep theirs
    a, b = standin.token(), standin.token()
    assert standin.http("GET", path, token=a)[0] == standin.http("GET", path, token=b)[0] == 200
    assert standin.http("POST", "/api/v1/auth/logout/", token=b) == (200, {"detail": "Successfully logged out."})
    # upstream's logout expires every live token of the account
    assert [standin.http("GET", path, token=t)[0] for t in (a, b, new)] == [401, 401, 401]
    standin.wait_job(job, 60)


def test_project_qgis_version_chooses_the_qgis_image(standin):
    q4 = standin.add_project("standin-qgis4", "4.0.2")
    q3 = standin.add_project("standin-qgis3", "3.40.5")
    unknown = standin.add_project("standin-unknown", None)
    jobs = {p: standin.create_job(project=p) for p in (q4, q3, unknown)}
    for job in jobs.values():
        assert standin.wait_job(job, 60) == "finished"
    versions = {
        p: standin.sql(f"SELECT feedback->'outputs'->>'qgis_version' FROM core_job WHERE id = '{j}'")[0][0]
        for p, j in jobs.items()
    }
    assert versions == {q4: "4.0-standin", q3: "3.40-standin", unknown: "3.40-standin"}
    assert standin.env["QFIELDCLOUD_QGIS4_IMAGE_NAME"] == f"{standin.name}-qgis4"


def test_idle_worker_removes_job_containers_it_does_not_know(standin):
    runtime = standin.inspect(standin.containers("db")[0])["Config"]["Image"]
    label = f"app={standin.env['ENVIRONMENT']}_worker"

    def run(*labels: str) -> str:
        args = ["docker", "run", "-d", "--label", "fibreflow.standin=" + standin.name]
        for item in labels:
            args += ["--label", item]
        return subprocess.run(
            [*args, runtime, "sleep", "120"], capture_output=True, text=True, check=True
        ).stdout.strip()

    unknown, foreign = run(label, "job_id=not-a-job"), run("app=someone-else_worker", "job_id=x")
    try:
        assert wait_for(lambda: not standin_container_exists(unknown), 10, 0.5)
        assert f"Cancel orphaned worker {unknown}" in standin.logs("worker_wrapper")
        assert standin_container_exists(foreign)
    finally:
        subprocess.run(["docker", "rm", "-f", unknown, foreign], capture_output=True, check=False)


def standin_container_exists(cid: str) -> bool:
    return subprocess.run(["docker", "inspect", cid], capture_output=True, check=False).returncode == 0


def runcrons(stack, *args: str) -> None:
    stack.compose("exec", "-T", "app", "python3", "manage.py", "runcrons", *args)


def test_every_minute_cron_writes_a_row_each_run(standin):
    (app,) = standin.containers("app")
    labels = standin.inspect(app)["Config"]["Labels"]
    assert labels["ofelia.job-exec.runcrons.schedule"] == "@every 1m"
    count = "SELECT count(*) FROM django_cron_cronjoblog WHERE code = 'qfieldcloud.send_notifications'"
    # a minute passes since the last runs
    standin.sql("UPDATE django_cron_cronjoblog SET start_time = start_time - interval '70 seconds'")
    before = int(standin.sql(count)[0][0])
    runcrons(standin)
    assert int(standin.sql(count)[0][0]) == before + 1
    runcrons(standin)  # within the same minute: nothing is due
    assert int(standin.sql(count)[0][0]) == before + 1
    codes = {r[0] for r in standin.sql("SELECT DISTINCT code FROM django_cron_cronjoblog")}
    assert codes == {
        "qfieldcloud.send_notifications",
        "qfieldcloud.delete_expired_confirmations",
        "qfieldcloud.set_terminated_workers_to_final_status",
        "qfieldcloud.delete_obsolete_project_packages",
    }


def test_stale_job_cron_fails_dead_jobs_and_their_deltas(standin):
    project = standin.add_project("standin-stale")
    user = "(SELECT id FROM core_user WHERE username = 'probe')"
    dead = insert_started_job(standin, project, user, age_s=700, deltas=2)  # 600 s timeout + 10 s passed
    other = standin.add_project("standin-young")
    young = insert_started_job(standin, other, user, age_s=30)
    try:
        runcrons(standin, "--force")
        row = standin.sql(f"SELECT status, feedback->>'error', output FROM core_job WHERE id = '{dead}'")
        assert row == [["failed", "Job unexpectedly terminated.", "Job unexpectedly terminated."]]
        assert delta_states(standin, dead) == [["error", "error"]] * 2
        assert standin.job_status(young) == "started"
    finally:
        standin.sql(f"UPDATE core_job SET status = 'failed' WHERE id = '{young}'")


def test_healthy_faults_job_network_prebuilt_images_minimal_env(stack_factory):
    stack = stack_factory()
    stack.break_("qgis-network-external")
    net = f"{stack.name}_jobs"
    assert stack.env["QFIELDCLOUD_DEFAULT_NETWORK"] == net
    job = stack.create_job(seconds=3)
    assert wait_for(lambda: job_container(job), 20, 0.3)
    assert list(stack.inspect(job_container(job))["NetworkSettings"]["Networks"]) == [net]
    assert stack.wait_job(job, 60) == "finished"
    (worker,) = stack.containers("worker_wrapper", all_=False)
    assert list(stack.inspect(worker)["NetworkSettings"]["Networks"]) == [f"{stack.name}_default"]

    stack.break_("prebuilt-images")
    compose = (stack.dir / "docker-compose.yml").read_text()
    assert "build:" not in compose
    (worker,) = stack.containers("worker_wrapper", all_=False)
    assert stack.inspect(worker)["Config"]["Image"] == f"opengisch/qfieldcloud-worker-wrapper:standin-{stack.name}"
    for service in ("app", "worker_wrapper", "qgis3", "qgis4"):
        assert not image_exists(f"{stack.name}-{service}")
    assert stack.env["QFIELDCLOUD_QGIS3_IMAGE_NAME"] == f"opengisch/qfieldcloud-qgis3:standin-{stack.name}"
    assert stack.wait_job(stack.create_job(), 60) == "finished"

    stack.break_("minimal-env")
    env = stack.env
    for absent in (
        "QFIELDCLOUD_HOST",
        "DJANGO_DEV_PORT",
        "DEBUG_WORKER_WRAPPER_DEBUGPY_PORT",
        "QFIELDCLOUD_DEFAULT_NETWORK",
        "EMAIL_HOST_PASSWORD",
    ):
        assert absent not in env
    assert "qfieldcloud_host_header" not in stack.vars
    assert stack.http("GET", "/api/v1/status/") == (200, {"database": "ok", "storage": "ok"})
    assert stack.wait_job(stack.create_job(), 60) == "finished"


def job_container(job: str) -> str | None:
    out = subprocess.run(
        ["docker", "ps", "-aq", "--no-trunc", "--filter", f"label=job_id={job}"],
        check=False,
        capture_output=True,
        text=True,
    ).stdout.split()
    return out[0] if out else None


def test_worker_exits_on_database_errors_and_other_broken_states(stack_factory):
    stack = stack_factory()
    (cid,) = stack.containers("worker_wrapper")
    before = stack.inspect(cid)["RestartCount"]
    stack.compose("restart", "db")
    assert wait_for(lambda: stack.inspect(cid)["RestartCount"] > before, 30)
    assert wait_for(lambda: standin("sql", "SELECT 1", "--name", stack.name, check=False).returncode == 0, 30)
    assert stack.wait_job(stack.create_job(), 60) == "finished"  # the restart policy brought it back

    stack.compose("stop", "-t", "10", "worker_wrapper")
    job = stack.create_job()  # before: a replica refuses the login's token write
    stack.break_("db-read-only-replica")
    stack.compose("start", "worker_wrapper")
    message = "Expected `worker_wrapper` to be connected to the master DB node!"
    assert wait_for(lambda: message in stack.logs("worker_wrapper", tail=20), 30)
    restarts = stack.inspect(cid)["RestartCount"]
    assert wait_for(lambda: stack.inspect(cid)["RestartCount"] > restarts, 30)
    assert stack.job_status(job) == "pending"
    stack.sql("SELECT pg_promote()")
    assert stack.wait_job(job, 60) == "finished"

    stack.break_("cron-dead")
    assert stack.containers("ofelia", all_=False) == []
    assert stack.sql("SELECT max(end_time) < now() - interval '9 minutes' FROM django_cron_cronjoblog") == [["t"]]

    stack.break_("timeout-env-empty")
    assert stack.env["QFIELDCLOUD_WORKER_TIMEOUT_S"] == ""
    error = "ValueError: invalid literal for int() with base 10: ''"
    for service in ("app", "worker_wrapper"):
        (container,) = stack.containers(service)
        assert wait_for(lambda c=container: stack.inspect(c)["RestartCount"] >= 1, 30), service
        assert wait_for(lambda s=service: error in stack.logs(s, tail=20), 20), service


def test_app_recreated_then_worker_killed_mid_delta(stack_factory):
    stack = stack_factory(replicas=2)
    (app,) = stack.containers("app")
    (ofelia,) = stack.containers("ofelia")
    name = stack.inspect(app)["Name"]
    stack.break_("app-recreated")
    (new_app,) = stack.containers("app")
    assert new_app != app and stack.inspect(new_app)["Name"] == name
    recreated = stack.sql("SELECT now()")[0][0]
    assert stack.wait_job(stack.create_job(), 60) == "finished"

    stack.break_("worker-killed-mid-delta")
    (job,) = stack.sql("SELECT id FROM core_job WHERE type = 'delta_apply'")[0]
    assert stack.job_status(job) == "started"
    assert delta_states(stack, job) == [["started", "started"]] * 2
    states = {stack.inspect(c)["Name"]: stack.inspect(c)["State"] for c in stack.containers("worker_wrapper")}
    killed = [n for n, s in states.items() if not s["Running"]]
    assert len(killed) == 1 and states[killed[0]]["ExitCode"] == 137
    assert (
        f"Dequeued job {job}, run!"
        in subprocess.run(["docker", "logs", killed[0].lstrip("/")], check=True, capture_output=True, text=True).stdout
    )
    container = job_container(job)
    assert container and stack.inspect(container)["State"]["Running"]  # its QGIS container runs on
    # the other replica still works, for other projects
    other = stack.add_project("standin-other")
    assert stack.wait_job(stack.create_job(project=other), 60) == "finished"
    assert stack.job_status(job) == "started"

    # ofelia read the labels once at start and execs by name: the recreated app still runs the crons
    assert wait_for(
        lambda: stack.sql(f"SELECT count(*) FROM django_cron_cronjoblog WHERE start_time > '{recreated}'")[0][0] != "0",
        75,
        2,
    )
    assert stack.containers("ofelia") == [ofelia]  # the same ofelia, started before app was recreated
    assert "No such container" not in stack.logs("ofelia")


def test_worker_restarted_often_and_the_guides_hand_started_worker(stack_factory):
    stack = stack_factory()
    stack.break_("worker-restarted-often")
    (cid,) = stack.containers("worker_wrapper")
    info = stack.inspect(cid)
    assert info["RestartCount"] >= 5 and info["State"]["Running"]
    assert stack.wait_job(stack.create_job(), 60) == "finished"

    stack.break_("guide-hand-started")
    name = f"qfieldcloud-worker-{stack.name}"
    guide = stack.inspect(name)
    assert {e.split("=", 1)[0] for e in guide["Config"]["Env"]} >= {"POSTGRES_HOST", "POSTGRES_PASSWORD"}
    assert not any(e.startswith(("TMP_DIRECTORY=", "ENVIRONMENT=")) for e in guide["Config"]["Env"])
    assert [m["Destination"] for m in guide["Mounts"]] == ["/var/run/docker.sock"]
    assert guide["Config"]["Cmd"] == ["python", "manage.py", "dequeue"]
    assert stack.containers("worker_wrapper", all_=False) == [cid]  # beside the compose worker
    stack.compose("stop", "-t", "10", "worker_wrapper")
    job = stack.create_job()
    assert stack.wait_job(job, 60) == "failed"
    row = stack.sql(
        "SELECT feedback->>'container_exit_code', position('feedback.json' in feedback->>'error') > 0"
        f" FROM core_job WHERE id = '{job}'"
    )
    assert row == [["0", "t"]]


def test_shared_environment_label_kills_the_other_stacks_jobs(stack_factory):
    stack = stack_factory()
    stack.break_("shared-environment-label")
    from standin import Stack

    twin = Stack(f"{stack.name}-twin")
    assert twin.env["ENVIRONMENT"] == stack.env["ENVIRONMENT"]
    job = twin.create_job(seconds=30)
    assert twin.wait_job(job, 40) == "failed"  # killed by the first stack's idle worker
    assert twin.sql(f"SELECT feedback->>'error_type' FROM core_job WHERE id = '{job}'") == [["DOCKER_ENGINE_SIGKILL"]]
    container = twin.sql(f"SELECT container_id FROM core_job WHERE id = '{job}'")[0][0]
    assert f"Cancel orphaned worker {container}" in stack.logs("worker_wrapper")
    stack.down()
    assert twin.containers("app") == [] and not twin.dir.exists()
