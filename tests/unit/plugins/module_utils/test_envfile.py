# SPDX-License-Identifier: GPL-3.0-or-later
"""Unit tests of the .env reader and project resolution."""

from __future__ import annotations

import os

import pytest

from ansible_collections.fibreflow.qfieldcloud.plugins.module_utils import envfile


def test_basic_comments_blank_export():
    text = "# a comment\n\nA=1\nexport B=two\n   C = spaced value  \n#D=4\n"
    assert envfile.parse_env(text) == {"A": "1", "B": "two", "C": "spaced value"}


def test_quotes():
    text = 'S=\'single $A # not a comment\'\nD="double\\nline \\"q\\""\nE=\'\'\nF=""\n'
    env = envfile.parse_env(text)
    assert env["S"] == "single $A # not a comment"
    assert env["D"] == 'double\nline "q"'
    assert env["E"] == ""
    assert env["F"] == ""


def test_inline_comment_only_after_whitespace():
    env = envfile.parse_env("A=value # comment\nB=pass#word\nC=#x\n")
    assert env == {"A": "value", "B": "pass#word", "C": "#x"}


def test_duplicates_last_wins():
    assert envfile.parse_env("A=1\nA=2\n") == {"A": "2"}


def test_multiline_double_quoted():
    text = 'CERT="line1\nline2"\nNEXT=ok\n'
    assert envfile.parse_env(text) == {"CERT": "line1\nline2", "NEXT": "ok"}


def test_interpolation():
    text = (
        "A=x\nB=${A}-$A\nC=${MISSING:-dflt}\nD='${A}'\nE=\"${A}y\"\n"
        "F=${EMPTY-keep}\nEMPTY=\nG=${EMPTY-no}${EMPTY:-yes}\n"
    )
    env = envfile.parse_env(text)
    assert env["B"] == "x-x"
    assert env["C"] == "dflt"
    assert env["D"] == "${A}"
    assert env["E"] == "xy"
    assert env["F"] == "keep"
    assert env["G"] == "yes"


def test_malformed_lines_are_skipped():
    assert envfile.parse_env("JUSTAKEY\n1BAD=x\nGOOD=1\n'q'=2\n") == {"GOOD": "1"}


def test_crlf_and_no_trailing_newline():
    assert envfile.parse_env("A=1\r\nB=2") == {"A": "1", "B": "2"}


def test_read_env_missing(tmp_path):
    assert envfile.read_env(str(tmp_path / "nope")) == {}


@pytest.mark.parametrize(
    ("raw", "normalised"),
    [("QFieldCloud", "qfieldcloud"), ("my.project", "myproject"), ("_x-Y_1", "x-y_1"), ("prod stack", "prodstack")],
)
def test_normalise_project_name(raw, normalised):
    assert envfile.normalise_project_name(raw) == normalised


def write(path, text):
    path.write_text(text, encoding="utf-8")


def test_project_settings_full(tmp_path):
    write(
        tmp_path / ".env",
        "COMPOSE_PROJECT_NAME=QFC2\n"
        "COMPOSE_FILE=docker-compose.yml;docker-compose.override.standalone.yml\n"
        "COMPOSE_PATH_SEPARATOR=;\n"
        "QFIELDCLOUD_WORKER_REPLICAS=3\n"
        "QFIELDCLOUD_DEFAULT_NETWORK=\n"
        "QFIELDCLOUD_WORKER_TIMEOUT_S=120\n"
        "ENVIRONMENT=production\n"
        "POSTGRES_HOST=db\nPOSTGRES_PORT=5432\nPOSTGRES_DB=qfc\nPOSTGRES_USER=admin\nPOSTGRES_PASSWORD=s3cret\n"
        "QFIELDCLOUD_QGIS3_IMAGE_NAME=qfc2-qgis3\n",
    )
    settings = envfile.project_settings(str(tmp_path))
    assert settings["project_name"] == "qfc2"
    assert settings["project_name_source"] == "env"
    assert settings["compose_files"] == [
        os.path.join(str(tmp_path), "docker-compose.yml"),
        os.path.join(str(tmp_path), "docker-compose.override.standalone.yml"),
    ]
    assert settings["worker_replicas"] == 3
    assert settings["default_network"] == "qfc2_default"
    assert settings["worker_timeout_s"] == 120
    assert settings["environment"] == "production"
    assert settings["qgis_images"] == {"QFIELDCLOUD_QGIS3_IMAGE_NAME": "qfc2-qgis3"}
    assert settings["postgres"] == {"host": "db", "port": 5432, "db": "qfc", "user": "admin"}
    assert "s3cret" not in repr(settings)


def test_project_settings_explicit_name_and_network(tmp_path):
    write(tmp_path / ".env", "COMPOSE_PROJECT_NAME=other\nQFIELDCLOUD_DEFAULT_NETWORK=shared_net\n")
    settings = envfile.project_settings(str(tmp_path), project_name="mine")
    assert settings["project_name"] == "mine"
    assert settings["project_name_source"] == "argument"
    # QFIELDCLOUD_DEFAULT_NETWORK names the QGIS job containers' network, never the worker's own.
    assert settings["default_network"] == "mine_default"
    assert settings["job_network"] == "shared_net"
    assert settings["job_network_source"] == "QFIELDCLOUD_DEFAULT_NETWORK"


def test_project_settings_directory_name_and_default_files(tmp_path):
    project = tmp_path / "My.QFC"
    project.mkdir()
    write(project / "docker-compose.yml", "services: {}\n")
    write(project / "docker-compose.override.yml", "services: {}\n")
    settings = envfile.project_settings(str(project))
    assert settings["project_name"] == "myqfc"
    assert settings["project_name_source"] == "directory"
    assert settings["env_file"] is None
    assert [os.path.basename(f) for f in settings["compose_files"]] == [
        "docker-compose.yml",
        "docker-compose.override.yml",
    ]
    assert settings["worker_replicas"] == 1
    assert settings["worker_timeout_s"] == 600


def test_project_settings_name_from_compose_file(tmp_path):
    write(tmp_path / ".env", "COMPOSE_FILE=a.yml\n")
    write(tmp_path / "a.yml", "name: fromfile\nservices: {}\n")
    settings = envfile.project_settings(str(tmp_path))
    assert settings["project_name"] == "fromfile"
    assert settings["project_name_source"] == "compose_file"


def test_project_settings_without_dir():
    settings = envfile.project_settings(None)
    assert settings["project_name"] == "qfieldcloud"
    assert settings["default_network"] == "qfieldcloud_default"
    assert settings["compose_files"] == []


def test_bad_numbers_fall_back(tmp_path):
    write(tmp_path / ".env", "QFIELDCLOUD_WORKER_REPLICAS=lots\nQFIELDCLOUD_WORKER_TIMEOUT_S=\n")
    settings = envfile.project_settings(str(tmp_path))
    assert settings["worker_replicas"] == 1
    assert settings["worker_timeout_s"] == 600


def test_compose_service_images_follow_image_keys_and_interpolation(tmp_path):
    write(
        tmp_path / "docker-compose.yml",
        "x-common: &common\n  image: not-a-service\n"
        "services:\n"
        "  app:\n    image: opengisch/qfieldcloud-app:${QFC_TAG:-v26.25}\n"
        "    environment:\n      image: not-the-image\n"
        "  worker_wrapper:\n    build:\n      context: ./docker-app\n"
        "  qgis3:\n    build: ./docker-qgis\n",
    )
    write(
        tmp_path / "docker-compose.prebuilt.yml",
        'services:\n  worker_wrapper:\n    image: "opengisch/qfieldcloud-worker-wrapper:${QFC_TAG}"  # prebuilt\n',
    )
    files = [str(tmp_path / "docker-compose.yml"), str(tmp_path / "docker-compose.prebuilt.yml")]
    assert envfile.compose_service_images(files, {"QFC_TAG": "v26.26"}) == {
        "app": "opengisch/qfieldcloud-app:v26.26",
        "worker_wrapper": "opengisch/qfieldcloud-worker-wrapper:v26.26",
    }
    assert envfile.compose_service_images(files[:1], {}) == {"app": "opengisch/qfieldcloud-app:v26.25"}
    # Every service is defined, with or without an image: build-only ones (qgis3) have no container to show them.
    assert envfile.compose_services(files, {"QFC_TAG": "v26.26"}) == {
        "app": "opengisch/qfieldcloud-app:v26.26",
        "worker_wrapper": "opengisch/qfieldcloud-worker-wrapper:v26.26",
        "qgis3": None,
    }
    write(tmp_path / ".env", "COMPOSE_FILE=docker-compose.yml:docker-compose.prebuilt.yml\n")
    assert envfile.project_settings(str(tmp_path))["services"] == ["app", "qgis3", "worker_wrapper"]


def test_interpolate_like_compose():
    env = {"SET": "x", "EMPTY": ""}
    assert envfile.interpolate("${SET}-${EMPTY:-d}-${EMPTY-d}-${UNSET-d}-$SET-$$SET", env) == "x-d--d-x-$SET"


def test_empty_worker_timeout_is_told_apart_from_an_absent_one(tmp_path):
    write(tmp_path / ".env", "QFIELDCLOUD_WORKER_TIMEOUT_S=\n")
    assert envfile.project_settings(str(tmp_path))["worker_timeout_raw"] == ""
    write(tmp_path / ".env", "COMPOSE_PROJECT_NAME=x\n")
    assert envfile.project_settings(str(tmp_path))["worker_timeout_raw"] is None


def test_load_project_reads_env_once_and_hands_on_its_text_and_values(tmp_path, monkeypatch):
    (tmp_path / "docker-compose.yml").write_text("services: {}\n")
    text = "COMPOSE_PROJECT_NAME=q1\r\nQFIELDCLOUD_WORKER_REPLICAS=2\r\nPOSTGRES_PASSWORD=secret\r\n"
    (tmp_path / ".env").write_bytes(text.encode())
    opened = []
    real_open = open

    def counting_open(path, *args, **kwargs):
        opened.append(os.path.basename(str(path)))
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr("builtins.open", counting_open)
    loaded = envfile.load_project(str(tmp_path))
    assert opened.count(".env") == 1
    assert loaded["env_text"] == text
    assert loaded["dotenv"]["POSTGRES_PASSWORD"] == "secret"
    assert (loaded["project_name"], loaded["worker_replicas"]) == ("q1", 2)
    assert loaded["compose_files"] == [str(tmp_path / "docker-compose.yml")]


def test_the_default_compose_files_are_one_list(tmp_path):
    (tmp_path / "compose.yaml").write_text("services: {}\n")
    (tmp_path / "compose.override.yaml").write_text("services: {}\n")
    assert envfile.default_compose_files(str(tmp_path)) == ["compose.yaml", "compose.override.yaml"]
    assert envfile.compose_files(str(tmp_path), {}) == [
        str(tmp_path / "compose.yaml"),
        str(tmp_path / "compose.override.yaml"),
    ]


def test_compose_files_that_are_not_yaml_are_named_with_the_place(tmp_path):
    good = tmp_path / "docker-compose.yml"
    good.write_text("services:\n  app:\n    image: x\n")
    assert envfile.compose_yaml_error([str(good)]) is None
    broken = tmp_path / "docker-compose.override.yml"
    broken.write_text("services:\n  oops: [unclosed\n  app:\n    image: y\n")
    error = envfile.compose_yaml_error([str(good), str(broken)])
    assert error.startswith(f"{broken}: not valid YAML (line ") and "column" in error, error
    scalar = tmp_path / "scalar.yml"
    scalar.write_text("just a string\n")
    assert "top level is not a mapping" in envfile.compose_yaml_error([str(scalar)])
    assert "No such file" in envfile.compose_yaml_error([str(tmp_path / "missing.yml")])


def test_the_worker_override_with_compose_merge_tags_is_valid_yaml(tmp_path):
    """The override qfc_worker writes uses compose's !override and !reset tags: a converged project must pass the
    syntax check, or every later play asks compose for what its one read already knows."""
    from ansible_collections.fibreflow.qfieldcloud.plugins.module_utils import compose

    override = tmp_path / "docker-compose.override.fibreflow-worker.yml"
    override.write_text(
        compose.render_override(
            "worker_wrapper", ["python", "manage.py", "dequeue"], "db", 2, external_network="jobs-net"
        )
    )
    assert "!override" in override.read_text() and "!reset" in override.read_text()
    assert envfile.compose_yaml_error([str(override)]) is None
    unknown = tmp_path / "unknown-tag.yml"
    unknown.write_text("services:\n  app: !nosuchtag {}\n")
    assert "not valid YAML" in envfile.compose_yaml_error([str(unknown)])
