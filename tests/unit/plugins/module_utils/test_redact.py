# SPDX-License-Identifier: GPL-3.0-or-later
"""Unit tests of secret masking."""

from __future__ import annotations

import json

import pytest

from ansible_collections.fibreflow.qfieldcloud.plugins.module_utils.redact import MASK, Redactor, is_secret_key, redact

STORAGES = json.dumps(
    {
        "default": {
            "BACKEND": "qfieldcloud.filestorage.backend.QfcS3Boto3Storage",
            "OPTIONS": {"access_key": "AKIAEXAMPLE123", "secret_key": "wJalrXUtnFEMI/K7MDENG", "endpoint_url": "x"},
        }
    }
)
ENV = [
    "POSTGRES_PASSWORD=pg-pass-123",
    "POSTGRES_HOST=db",
    "SECRET_KEY=django-secret-abc",
    "STORAGE_ACCESS_KEY_ID=AKIAEXAMPLE123",
    "STORAGE_SECRET_ACCESS_KEY=wJalrXUtnFEMI/K7MDENG",
    f"STORAGES={STORAGES}",
    "EMAIL_HOST_PASSWORD=mailpw99",
    "QFIELDCLOUD_WORKER_TIMEOUT_S=600",
    "SENTRY_DSN=https://abc@sentry.example/1",
]


@pytest.mark.parametrize(
    "name",
    [
        "POSTGRES_PASSWORD",
        "SECRET_KEY",
        "STORAGES",
        "STORAGE_ACCESS_KEY_ID",
        "STORAGE_SECRET_ACCESS_KEY",
        "EMAIL_HOST_PASSWORD",
        "GITHUB_TOKEN",
        "API_KEY",
        "SENTRY_DSN",
        "db_password",
        "KEY",
        "aws_credentials",
    ],
)
def test_secret_keys(name):
    assert is_secret_key(name)


@pytest.mark.parametrize(
    "name",
    ["POSTGRES_HOST", "POSTGRES_USER", "QFIELDCLOUD_WORKER_TIMEOUT_S", "ENVIRONMENT", "MONKEY", "claimable_pending"],
)
def test_plain_keys(name):
    assert not is_secret_key(name)


def test_env_list_and_values_in_text():
    redactor = Redactor()
    redactor.learn_env(ENV)
    out = redactor.value({"env": ENV, "log": "connecting with pg-pass-123 and AKIAEXAMPLE123 to db"})
    dumped = json.dumps(out)
    for secret in ("pg-pass-123", "django-secret-abc", "AKIAEXAMPLE123", "wJalrXUtnFEMI/K7MDENG", "mailpw99"):
        assert secret not in dumped
    assert "POSTGRES_HOST=db" in out["env"]
    assert f"POSTGRES_PASSWORD={MASK}" in out["env"]
    assert out["log"] == f"connecting with {MASK} and {MASK} to db"


def test_json_leaves_of_storages_are_learnt():
    redactor = Redactor()
    redactor.learn_env({"STORAGES": STORAGES})
    assert redactor.text("key=wJalrXUtnFEMI/K7MDENG") == f"key={MASK}"
    # non-secret leaves stay readable
    assert redactor.text("QfcS3Boto3Storage") == "QfcS3Boto3Storage"


def test_dict_keys_masked_but_empty_kept():
    out = redact({"db_password": "x", "token": None, "SECRET_KEY": "", "nested": [{"api_key": 5}], "ok": True})
    assert out == {"db_password": MASK, "token": None, "SECRET_KEY": "", "nested": [{"api_key": MASK}], "ok": True}


def test_url_password():
    assert redact("postgres://admin:hunter2@db:5432/x") == f"postgres://admin:{MASK}@db:5432/x"
    assert redact("http://app:8000/api/v1/status/") == "http://app:8000/api/v1/status/"


def test_short_values_not_registered_and_longest_first():
    redactor = Redactor(["ab", "secret", "secret-longer"])
    assert redactor.secrets_count == 2
    assert redactor.text("ab secret-longer secret") == f"ab {MASK} {MASK}"


def test_input_not_modified():
    data = {"POSTGRES_PASSWORD": "abcdef"}
    redact(data)
    assert data == {"POSTGRES_PASSWORD": "abcdef"}


def test_scalars_pass_through():
    assert redact(5) == 5
    assert redact(None) is None
    assert redact(("a", 1)) == ["a", 1]
