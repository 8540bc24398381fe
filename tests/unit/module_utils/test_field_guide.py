# SPDX-License-Identifier: GPL-3.0-or-later
"""Unit tests of the field guide's extras on plain data: worker log evidence, the QField client's address."""

from __future__ import annotations

import copy

import pytest
from test_problems import HEALTHY

from ansible_collections.fibreflow.qfieldcloud.plugins.callback import drift_report as dr
from ansible_collections.fibreflow.qfieldcloud.plugins.module_utils import problems as pb
from ansible_collections.fibreflow.qfieldcloud.plugins.module_utils import stack, sync_facts
from ansible_collections.fibreflow.qfieldcloud.plugins.module_utils.redact import MASK, Redactor

UNRESOLVED = 'could not translate host name "postgres" to address: Name or service not known'
CRASH_LOG = "\n".join(
    ["Waiting for postgres...", "Postgres isn't ready.", UNRESOLVED] * 12
    + [
        '{"level": "INFO", "message": "Dequeue QFieldCloud Jobs from the DB"}',
        "x" * 1000 + " Permission denied docker.sock",
    ]
)


# ------------------------------------------------------------------------------------------------ log excerpt
def test_log_excerpt_keeps_only_fault_lines_bounded_and_cut():
    excerpt = stack.log_excerpt(CRASH_LOG)
    assert len(excerpt) == stack.LOG_EXCERPT_LINES
    assert all("Dequeue" not in e["line"] and "Waiting" not in e["line"] for e in excerpt)
    assert excerpt[-1]["signs"] == ["socket_denied"]
    assert len(excerpt[-1]["line"]) == stack.LOG_LINE_WIDTH and excerpt[-1]["line"].endswith("…")
    assert {"host_unresolved"} <= {s for e in excerpt for s in e["signs"]}
    assert stack.log_excerpt("") == []


def test_port_bindings_count_ipv4_and_ipv6_once():
    inspect = {
        "NetworkSettings": {
            "Ports": {
                "80/tcp": [{"HostIp": "0.0.0.0", "HostPort": "8080"}, {"HostIp": "::", "HostPort": "8080"}],
                "443/tcp": None,
                "5679/tcp": [{"HostIp": "127.0.0.1", "HostPort": "5679"}],
            }
        }
    }
    assert stack.port_bindings(inspect) == [
        {"port": 80, "proto": "tcp", "host_ip": "0.0.0.0", "host_port": 8080},
        {"port": 5679, "proto": "tcp", "host_ip": "127.0.0.1", "host_port": 5679},
    ]
    assert stack.port_bindings({}) == []


# ------------------------------------------------------------------------------------------------ log evidence
def crash_replica(**extra):
    rep = copy.deepcopy(HEALTHY["worker"]["replicas"][0])
    rep.update(
        state="restarting",
        running=False,
        restart_count=5,
        postgres_host="postgres",
        log={"host_unresolved": 12, "postgres_not_ready": 12, "dequeue_banner": False},
        log_tail=CRASH_LOG.splitlines()[-3:],
        log_excerpt=stack.log_excerpt(CRASH_LOG),
    )
    rep.update(extra)
    return rep


def test_worker_problem_carries_the_log_lines_that_explain_it():
    facts = copy.deepcopy(HEALTHY)
    facts["worker"]["replicas"] = [crash_replica()]
    facts["worker"]["replicas_running"] = 0
    found = {p["code"]: p for p in pb.detect_problems(facts)}
    log = found["worker_db_host_wrong"]["evidence"]["log"]
    assert any(line.startswith(UNRESOLVED) for line in log)
    assert all(not line.startswith("xxx") for line in log)  # only the lines that explain this problem
    assert len(log) <= pb.LOG_EVIDENCE_LINES
    assert f"{UNRESOLVED} (repeated" in " ".join(log)  # a crash loop's repeats are counted, not listed
    crash = found["worker_crash_loop"]["evidence"]["log"]
    assert any(line.startswith("xxx") for line in crash)  # any fault sign explains a crash loop


def test_stopped_worker_carries_the_last_lines_of_its_log():
    facts = copy.deepcopy(HEALTHY)
    rep = crash_replica(state="exited", restart_count=0, log=None, log_excerpt=[], log_tail=["Dequeue stopped"])
    facts["worker"]["replicas"] = [rep]
    facts["worker"]["replicas_running"] = 0
    problem = next(p for p in pb.detect_problems(facts) if p["code"] == "worker_not_running")
    assert problem["evidence"]["containers"][0]["log"] == ["Dequeue stopped"]


def test_collapse_repeats_keeps_the_order_of_last_occurrence():
    assert pb.collapse_repeats(["a", "b", "a", "c"]) == ["b", "a (repeated 2 times)", "c"]


def test_log_lines_are_redacted_with_the_rest():
    secret = "pw-0123456789abcdef"
    line = f"could not translate host name: postgresql://qfc:{secret}@postgres/qfieldcloud_db"
    facts = copy.deepcopy(HEALTHY)
    facts["worker"]["replicas"] = [crash_replica(log_excerpt=stack.log_excerpt(line))]
    redactor = Redactor([secret])
    found = redactor.value(pb.detect_problems(facts))
    log = next(p for p in found if p["code"] == "worker_db_host_wrong")["evidence"]["log"]
    assert secret not in str(found) and MASK in log[0]


def test_drift_report_markdown_shows_the_worker_log():
    problem = pb.make_problem("worker_db_host_wrong", {"container": "w-1", "log": [UNRESOLVED]})
    events = {
        "qfc1": [
            {
                "kind": "facts",
                "task": "Read the state",
                "role": None,
                "action": "fibreflow.qfieldcloud.qfc_sync_facts",
                "changed": False,
                "result": {"problems": [problem], "sync_ready": False, "invocation": {"module_args": {}}},
            }
        ]
    }
    doc = dr.build_report(events, {"qfc1": {"ok": 1, "failures": 0, "unreachable": 0}}, {"playbook": "x"}, None)
    item = doc["hosts"]["qfc1"]["items"][0]
    assert item["evidence"]["log"] == [UNRESOLVED]
    text = dr.render_markdown(doc)
    assert "Worker log behind `worker_db_host_wrong`" in text and UNRESOLVED in text


# ------------------------------------------------------------------------------------------------ client
NGINX = {"running": 1, "ports": [{"port": 80, "proto": "tcp", "host_ip": "0.0.0.0", "host_port": 80}]}


@pytest.mark.parametrize(
    ("nginx", "app", "url", "connect", "host_header"),
    [
        (NGINX, None, "http://qfc.example.org", ("127.0.0.1", 80), "qfc.example.org"),
        (
            {"running": 1, "ports": [{"port": 80, "host_port": 8080}, {"port": 443, "host_port": 443}]},
            None,
            "https://qfc.example.org",
            ("127.0.0.1", 443),
            "qfc.example.org",
        ),
        (
            {"running": 1, "ports": [{"port": 80, "host_ip": "10.0.0.5", "host_port": 8080}]},
            None,
            "http://qfc.example.org:8080",
            ("10.0.0.5", 8080),
            "qfc.example.org:8080",
        ),
        # no nginx: the app's published port, as the guide's http://<host-ip>:8011
        (
            None,
            {"running": 1, "ports": [{"port": 8000, "host_port": 8011}]},
            "http://qfc.example.org:8011",
            ("127.0.0.1", 8011),
            "qfc.example.org:8011",
        ),
        # a stopped nginx does not count
        (
            {**NGINX, "running": 0},
            {"running": 1, "ports": [{"port": 8000, "host_port": 8011}]},
            "http://qfc.example.org:8011",
            ("127.0.0.1", 8011),
            "qfc.example.org:8011",
        ),
        (None, None, None, None, None),
    ],
)
def test_client_address(nginx, app, url, connect, host_header):
    address = sync_facts.client_address("qfc.example.org", nginx, app)
    assert address["url"] == url
    if connect:
        assert (address["connect_host"], address["connect_port"]) == connect
        assert address["host_header"] == host_header


def test_client_address_on_a_remote_docker_host_connects_there():
    address = sync_facts.client_address("qfc.example.org", NGINX, None, "tcp://10.1.2.3:2376")
    assert address["connect_host"] == "10.1.2.3"


@pytest.mark.parametrize("host", ["localhost", "127.0.0.1", "127.0.1.1", "0.0.0.0", "::1", "qfc.localhost"])
def test_local_hosts(host):
    assert sync_facts.is_local_host(host)


def test_public_hosts_are_not_local():
    assert not sync_facts.is_local_host("qfc.example.org")
    assert not sync_facts.is_local_host("192.168.1.10")


def client_facts(**client):
    facts = copy.deepcopy(HEALTHY)
    facts["client"] = {
        "checked": True,
        "host": "qfc.example.org",
        "nginx_host": "qfc.example.org",
        "local_host": False,
        "url": "http://qfc.example.org:8080",
        "via": "nginx",
        "connect_host": "127.0.0.1",
        "connect_port": 8080,
        "host_header": "qfc.example.org:8080",
        "ok": True,
        **client,
    }
    return facts


def codes(facts):
    return {p["code"] for p in pb.detect_problems(facts)}


def test_client_ok_is_no_problem():
    assert codes(client_facts()) == set()


def test_nginx_with_an_old_host_is_a_mismatch():
    facts = client_facts(host="new.example.org", nginx_host="qfc.example.org", ok=False, error="closed")
    found = pb.detect_problems(facts)
    assert [p["code"] for p in found] == ["nginx_host_mismatch"]
    assert found[0]["evidence"]["nginx_host"] == "qfc.example.org"
    assert "up -d --no-deps nginx app" in found[0]["remedy"]
    # Jobs still run; devices cannot reach the server: the client verdict fails, not the sync one.
    assert pb.sync_ready(found)
    assert not pb.client_ready(found)


def test_client_unreachable_otherwise():
    assert codes(client_facts(ok=False, http_status=502, error="HTTP 502")) == {"client_url_unreachable"}
    assert codes(client_facts(url=None, via=None, connect_host=None, ok=False)) == {"client_url_unreachable"}


def test_client_failure_explained_elsewhere_is_not_repeated():
    facts = client_facts(ok=False)
    facts["app"] = {"checked": True, "reachable": False, "error": "refused"}
    assert "client_url_unreachable" not in codes(facts)
    facts = client_facts(ok=False, url=None)
    facts["services"]["nginx"].update(running=0, state="exited")
    assert "client_url_unreachable" not in codes(facts)


def test_local_host_is_a_warning():
    found = pb.detect_problems(client_facts(host="localhost", nginx_host="localhost", local_host=True))
    assert [(p["code"], p["severity"]) for p in found] == [("client_host_local", "warning")]
    assert pb.sync_ready(found)


def test_unchecked_client_yields_nothing():
    assert codes(client_facts(checked=False, ok=False)) == set()
