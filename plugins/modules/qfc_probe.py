#!/usr/bin/python
# Copyright (c) 2026, fibreflow
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations

DOCUMENTATION = r"""
---
module: qfc_probe
short_description: Prove QFieldCloud sync end to end with a probe job, and record the result
version_added: 0.2.0
description:
  - Asks the status endpoint (C(GET /api/v1/status/)); a healthy server answers HTTP 200 with C(database) (or
    C(geodb) on older releases) C(ok).
  - With O(probe), logs in as the probe account, asks for a job of O(job_type) on the probe project
    (C(POST /api/v1/jobs/)) and polls it every O(poll) seconds until it is C(finished), C(failed) or C(stopped), or
    O(timeout) seconds have passed; then logs the account out, whatever happened after the login.
  - When the probe project already has a job of that type in flight (pending, queued or started), QFieldCloud
    answers HTTP 200 with that job instead of creating one (HTTP 201); the module follows that job to its end and
    says so (RV(job.followed)).
  - Upstream expires an account's other tokens of the same client type at each login, and its logout expires all of
    them; the probe account must be one nobody else uses. The token never leaves the module.
  - "With O(record_file), writes the result record (RV(record)) there atomically, the directory created when
    missing. The record is a measurement, not a change: the module always reports C(changed=false)."
  - A probe that does not end with the job C(finished) fails the task; RV(error) and RV(record) say why.
  - In check mode only the status endpoint is asked (a read), no job is created and no record is written.
author:
  - FibreFlow operations (@fibreflow)
attributes:
  check_mode:
    support: full
  diff_mode:
    support: none
  idempotent:
    support: full
    details: It changes nothing on the host but the record file; every run creates one probe job.
extends_documentation_fragment:
  - fibreflow.qfieldcloud.attributes
options:
  url:
    description:
      - Base URL of QFieldCloud as QField reaches it (C(https://qfield.example.org)), without C(/api/v1/).
      - An empty value fails the task with O(missing_url_msg) and records that failure.
    type: str
    required: true
  missing_url_msg:
    description: What the failure says when O(url) is empty (the caller knows why it is).
    type: str
    default: no QFieldCloud URL to ask
  headers:
    description: Headers of every request, such as C(Host) (C(QFIELDCLOUD_HOST) behind nginx).
    type: dict
    default: {}
  validate_certs:
    description: Verify the server's TLS certificate.
    type: bool
    default: true
  request_timeout:
    description: Seconds one request may take.
    type: int
    default: 10
  probe:
    description: Run the probe job; V(false) asks the status endpoint only.
    type: bool
    default: true
  project:
    description: UUID of the dedicated probe project. Required when O(probe) is true.
    type: str
    default: ""
  job_type:
    description: Type of the probe job. Neither changes the project's data.
    type: str
    choices: [package, process_projectfile]
    default: package
  username:
    description: The probe account. Required when O(probe) is true.
    type: str
    default: ""
  password:
    description: Its password (never printed).
    type: str
    default: ""
  timeout:
    description: Seconds the probe job may take from being asked for to C(finished).
    type: int
    default: 120
  poll:
    description: Seconds between two polls of the probe job.
    type: float
    default: 1
  record_file:
    description: Where to write the result record (JSON); none when not given.
    type: path
  record_fields:
    description: Fields added to the record after C(version) and C(time), such as the host and project directory.
    type: dict
    default: {}
seealso:
  - module: fibreflow.qfieldcloud.qfc_sync_facts
  - ref: fibreflow.qfieldcloud.verify
    description: The role that runs this module after site.yml, diagnoses a failure and prints each problem's remedy.
"""

EXAMPLES = r"""
- name: Prove sync works on this server
  fibreflow.qfieldcloud.qfc_probe:
    url: https://qfield.example.org
    project: 6652bf26-0900-4dd5-a55c-a4ed2dd08cb1
    username: fibreflow-probe
    password: "{{ vault_probe_password }}"
    record_file: /var/lib/fibreflow-qfieldcloud/qfieldcloud/verify.json
    record_fields:
      host: "{{ inventory_hostname }}"
  register: probe

- name: Only ask whether the server and its database answer
  fibreflow.qfieldcloud.qfc_probe:
    url: http://127.0.0.1:8011
    headers:
      Host: qfield.example.org
    probe: false
"""

RETURN = r"""
outcome:
  description: V(ok) (the probe job finished), V(status_only) (check mode, or O(probe) false, and the status endpoint
    is healthy) or V(failed).
  returned: always
  type: str
  sample: ok
error:
  description: Why the verification failed; null when it did not.
  returned: always
  type: str
  sample: the probe job 1b861393-bebb-4bbb-839a-df3364941daa is pending after 120 s (no worker picked it up or it is
    still running)
server_status:
  description: The status endpoint's JSON answer; null when it gave none.
  returned: always
  type: dict
  sample: {database: ok, storage: ok}
job:
  description: The probe job; null when none was answered.
  returned: always
  type: dict
  contains:
    id:
      description: Its ID.
      type: str
      sample: 1b861393-bebb-4bbb-839a-df3364941daa
    status:
      description: Its status at the last poll.
      type: str
      sample: finished
    followed:
      description: True when it was the project's job of that type already in flight (HTTP 200), not a new one.
      type: bool
      sample: false
    created_at:
      description: When the server created it.
      type: str
      sample: "2026-12-01T21:37:51.102933Z"
    feedback:
      description: The job's feedback at the last poll (what a failed job says).
      type: raw
      sample: null
latency_s:
  description: Seconds from asking for the job to seeing it finished; null unless RV(outcome) is V(ok).
  returned: always
  type: float
  sample: 2.41
logout_status:
  description: HTTP status of the logout, -1 when it got no answer; null when there was no login.
  returned: always
  type: int
  sample: 200
record:
  description: The result record (written to O(record_file) outside check mode).
  returned: always
  type: dict
  sample:
    version: 1
    time: "2026-12-01T21:37:55Z"
    host: field-1
    outcome: ok
    error: null
    job_type: package
    job_id: 1b861393-bebb-4bbb-839a-df3364941daa
    job_status: finished
    job_followed: false
    latency_s: 2.41
option:
  description: The option a failure concerns, V(username) (login refused, token expired by another login) or
    V(project) (the job refused), V(url) (empty); null for any other failure and on success.
  returned: always
  type: str
  sample: project
record_file:
  description: Where the record was written; null when it was not.
  returned: always
  type: str
  sample: /var/lib/fibreflow-qfieldcloud/qfieldcloud/verify.json
"""

import json
import os
from urllib.error import HTTPError

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.urls import open_url

from ansible_collections.fibreflow.qfieldcloud.plugins.module_utils import probe as probe_utils
from ansible_collections.fibreflow.qfieldcloud.plugins.module_utils.files import atomic_write


def _requester(base: str, headers: dict, validate_certs: bool, timeout: int) -> probe_utils.Request:
    def request(method: str, path: str, body: dict | None, token: str | None) -> probe_utils.Response:
        sent = {str(k): str(v) for k, v in headers.items()}
        data = None
        if body is not None:
            data = json.dumps(body)
            sent["Content-Type"] = "application/json"
        if token:
            sent["Authorization"] = f"Token {token}"
        try:
            answer = open_url(
                base + path, data=data, headers=sent, method=method, validate_certs=validate_certs, timeout=timeout
            )
            status, text = answer.getcode(), answer.read()
        except HTTPError as exc:
            status, text = exc.code, exc.read() if exc.fp is not None else b""
        except Exception as exc:  # any transport failure (refused, reset, TLS, timeout) is an answer of its own
            return None, None, f"{type(exc).__name__}: {exc}"
        try:
            parsed = json.loads(text) if text else None
        except ValueError:
            parsed = text.decode("utf-8", "replace")[:300]
        return status, parsed, ""

    return request


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            "url": {"type": "str", "required": True},
            "missing_url_msg": {"type": "str", "default": "no QFieldCloud URL to ask"},
            "headers": {"type": "dict", "default": {}},
            "validate_certs": {"type": "bool", "default": True},
            "request_timeout": {"type": "int", "default": 10},
            "probe": {"type": "bool", "default": True},
            "project": {"type": "str", "default": ""},
            "job_type": {"type": "str", "default": "package", "choices": list(probe_utils.JOB_TYPES)},
            "username": {"type": "str", "default": ""},
            "password": {"type": "str", "default": "", "no_log": True},
            "timeout": {"type": "int", "default": 120},
            "poll": {"type": "float", "default": 1},
            "record_file": {"type": "path"},
            "record_fields": {"type": "dict", "default": {}},
        },
        supports_check_mode=True,
    )
    p = module.params
    for option in ("timeout", "request_timeout"):
        if p[option] < 1:
            module.fail_json(msg=f"{option}: expected a number of seconds >= 1, got {p[option]}")
    if p["poll"] <= 0:
        module.fail_json(msg=f"poll: expected a number of seconds > 0, got {p['poll']}")
    probe = p["probe"] and not module.check_mode
    if probe:
        missing = [name for name in ("project", "username", "password") if not p[name]]
        if missing:
            module.fail_json(msg=f"{', '.join(missing)}: required to run the probe job (or set probe: false)")

    base = (p["url"] or "").rstrip("/")
    if not base:
        result = probe_utils.failed_result(p["missing_url_msg"], option="url")
    else:
        result = probe_utils.run_probe(
            _requester(base, p["headers"], p["validate_certs"], p["request_timeout"]),
            url=base,
            probe=probe,
            project=p["project"],
            job_type=p["job_type"],
            username=p["username"],
            password=p["password"],
            timeout=p["timeout"],
            poll=p["poll"],
        )
    result["record"] = probe_utils.record(result, p["job_type"], p["record_fields"])
    result["record_file"] = None
    if p["record_file"] and not module.check_mode:
        path = p["record_file"]
        try:
            os.makedirs(os.path.dirname(os.path.abspath(path)), mode=0o755, exist_ok=True)
            atomic_write(path, json.dumps(result["record"], indent=4, sort_keys=True) + "\n", mode=0o644)
        except OSError as exc:
            module.fail_json(msg=f"record_file: cannot write {path}: {exc}", **result)
        result["record_file"] = path
    if result["outcome"] == "failed":
        module.fail_json(msg=result["error"], changed=False, **result)
    module.exit_json(changed=False, **result)


if __name__ == "__main__":
    main()
