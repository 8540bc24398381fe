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
    assert attrs["app"] == "production_worker"
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


def test_worker_image_missing(stack_factory):
    stack = stack_factory()
    stack.break_("worker-image-missing")
    assert stack.containers("worker_wrapper") == []
    assert not image_exists(f"{stack.name}-worker_wrapper")
    job = stack.create_job()
    assert stack.wait_job(job, 6) == "pending"


def test_worker_not_root_fails_jobs_on_the_socket(stack_factory):
    stack = stack_factory()
    stack.break_("worker-not-root")
    (cid,) = stack.containers("worker_wrapper")
    assert stack.inspect(cid)["Config"]["User"] == "10001"
    job = stack.create_job()
    assert stack.wait_job(job, 60) == "failed"
    feedback = stack.sql(f"SELECT feedback FROM core_job WHERE id = '{job}'")[0][0]
    assert "Permission denied" in feedback
    assert "Permission denied" in stack.logs("worker_wrapper")


def test_qgis_image_missing_fails_jobs_with_a_pull_error(stack_factory):
    stack = stack_factory()
    stack.break_("qgis-image-missing")
    assert not image_exists(f"{stack.name}-qgis3")
    job = stack.create_job()
    assert stack.wait_job(job, 60) == "failed"
    feedback = stack.sql(f"SELECT feedback FROM core_job WHERE id = '{job}'")[0][0]
    assert "images/create" in feedback and f"fromImage={stack.name}-qgis3" in feedback


@pytest.mark.parametrize("fault, host", [("worker-wrong-db-host", "postgres"), ("worker-wrong-network", "db")])
def test_worker_that_cannot_reach_the_db_crash_loops(stack_factory, fault, host):
    stack = stack_factory()
    stack.break_(fault)
    job = stack.create_job()
    assert wait_for(lambda: f'could not translate host name "{host}"' in stack.logs("worker_wrapper"), 20)
    (cid,) = stack.containers("worker_wrapper")
    assert wait_for(lambda: stack.inspect(cid)["RestartCount"] >= 1, 75)
    assert stack.job_status(job) == "pending"
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


def test_hand_started_worker_runs_beside_the_stopped_compose_one(stack_factory):
    stack = stack_factory()
    stack.break_("worker-hand-started")
    assert stack.containers("worker_wrapper", all_=False) == []
    info = stack.inspect(f"{stack.name}-worker")
    # it carries the labels of the compose-built image, but not those compose gives its own containers
    assert info["Config"]["Labels"]["com.docker.compose.service"] == "worker_wrapper"
    assert "com.docker.compose.config-hash" not in info["Config"]["Labels"]
    job = stack.create_job()
    assert stack.wait_job(job, 60) == "finished"
    for secret in stack.secrets():
        assert secret not in " ".join(info["Config"]["Cmd"] + info["Args"])


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
    # dequeue logs JSON lines, so the quotes around the relation's name are escaped
    assert wait_for(lambda: 'relation \\"core_job\\" does not exist' in stack.logs("worker_wrapper"), 15)
    assert stack.compose("exec", "-T", "app", "python3", "manage.py", "migrate", "--check", check=False).returncode == 1


def test_legacy_generation(stack_factory):
    stack = stack_factory(legacy=True)
    assert stack.sql("SELECT to_regclass('core_project') IS NOT NULL, to_regclass('project_project') IS NULL") == [
        ["t", "t"]
    ]
    assert "QFIELDCLOUD_QGIS_IMAGE_NAME" in stack.env
    assert image_exists(f"{stack.name}-qgis")
    job = stack.create_job()
    assert stack.wait_job(job, 60) == "finished"


def test_down_removes_everything_it_made(stack_factory):
    stack = stack_factory()
    job = stack.create_job()
    assert stack.wait_job(job, 60) == "finished"
    stack.break_("worker-hand-started")
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
    for image in ("app", "worker_wrapper", "qgis3"):
        assert not image_exists(f"{stack.name}-{image}")
    assert not stack.dir.exists()


def test_two_stacks_side_by_side(standin, stack_factory):
    other = stack_factory()
    a, b = standin.create_job(), other.create_job()
    assert standin.wait_job(a, 60) == "finished" and other.wait_job(b, 60) == "finished"
    assert other.sql(f"SELECT count(*) FROM core_job WHERE id = '{a}'") == [["0"]]
    assert standin.env["WEB_HTTP_PORT"] != other.env["WEB_HTTP_PORT"]


def test_nginx_host_mismatch_closes_connections_for_the_new_name_only(stack_factory):
    stack = stack_factory()
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
