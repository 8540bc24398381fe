"""The stand-in's app: the API endpoints QField and the collection use, on port 8000."""

import contextlib
import email.parser
import email.policy
import json
import os
import re
import secrets
import signal
import sys
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import migrations
import psycopg2
import qfcdb

STATUS_CACHE_S = float(os.environ.get("STANDIN_STATUS_CACHE_S", "10"))
JOB_TYPES = ("package", "delta_apply", "process_projectfile")
CHILD_TABLE = {"package": "core_packagejob", "process_projectfile": "core_processprojectfilejob"}
UUID_RE = r"[0-9a-fA-F-]{36}"
SINGLE_TOKEN_CLIENTS = ("qfield", "qfieldsync")
TOKEN_HOURS = int(os.environ.get("QFIELDCLOUD_AUTH_TOKEN_EXPIRATION_HOURS", "720"))

_status_cache = {"at": 0.0, "body": None}
_status_lock = threading.Lock()
_local = threading.local()


def db():
    """One connection per server thread, reconnected after a failure."""
    conn = getattr(_local, "conn", None)
    if conn is None or conn.closed:
        conn = qfcdb.connect(timeout=3)
        conn.autocommit = False
        _local.conn = conn
    return conn


def drop_db():
    conn = getattr(_local, "conn", None)
    if conn is not None:
        with contextlib.suppress(Exception):
            conn.close()
    _local.conn = None


def status_body() -> dict:
    with _status_lock:
        if _status_cache["body"] is not None and time.monotonic() - _status_cache["at"] < STATUS_CACHE_S:
            return _status_cache["body"]
        # A fresh connection each time: a kept one can hang on a database that went away.
        try:
            conn = qfcdb.connect(timeout=3)
            with conn.cursor() as cur:
                cur.execute("SELECT 1")
            conn.close()
            database = "ok"
        except Exception:
            database = "error"
        body = {"database": database, "storage": "ok"}
        _status_cache.update(at=time.monotonic(), body=body)
        return body


def job_json(row) -> dict:
    job_id, project_id, job_type, status, created_at, updated_at, started_at, finished_at, feedback = row
    return {
        "id": str(job_id),
        "project_id": str(project_id),
        "type": job_type,
        "status": status,
        "created_at": created_at.isoformat(),
        "updated_at": updated_at.isoformat(),
        "started_at": started_at.isoformat() if started_at else None,
        "finished_at": finished_at.isoformat() if finished_at else None,
        "feedback": feedback if status in ("failed", "finished") else None,
    }


JOB_COLUMNS = "id, project_id, type, status, created_at, updated_at, started_at, finished_at, feedback"
PROJECT_COLUMNS = "p.id, p.name, u.username, p.description, p.is_public, p.created_at, p.updated_at"


def project_json(row) -> dict:
    """Upstream's ProjectSerializer fields the stand-in knows; the caller owns every project it lists."""
    project_id, name, owner, description, is_public, created_at, updated_at = row
    return {
        "id": str(project_id),
        "name": name,
        "owner": owner,
        "description": description,
        "private": not is_public,
        "is_public": is_public,
        "created_at": created_at.isoformat(),
        "updated_at": updated_at.isoformat(),
        "user_role": "admin",
        "user_role_origin": "project_owner",
    }


def insert_job(cur, project_id, job_type, user_id, feedback=None) -> uuid.UUID:
    job_id = uuid.uuid4()
    cur.execute(
        "INSERT INTO core_job (id, project_id, type, status, output, feedback, triggered_by_id, created_by_id,"
        " created_at, updated_at, container_id) VALUES (%s, %s, %s, 'pending', '', %s, %s, %s, now(), now(), '')",
        (job_id, project_id, job_type, json.dumps(feedback) if feedback else None, user_id, user_id),
    )
    if job_type in CHILD_TABLE:
        cur.execute(f"INSERT INTO {CHILD_TABLE[job_type]} (job_ptr_id) VALUES (%s)", (job_id,))
    elif job_type == "delta_apply":
        cur.execute("INSERT INTO core_applyjob (job_ptr_id, overwrite_conflicts) VALUES (%s, true)", (job_id,))
    return job_id


def client_type_of(user_agent: str) -> str:
    """Upstream's AuthToken.guess_client_type()."""
    if not user_agent:
        return "unknown"
    for prefix, client in (("qfield|", "qfield"), ("sdk|", "sdk"), ("cli|", "cli")):
        if user_agent.startswith(prefix):
            return client
    if re.search(r" QGIS/[34]\d{4}$", user_agent):
        return "qfieldsync"
    if re.search(r"Mozilla/5.0 .+ AppleWebKit/\d+.\d+ \(KHTML, like Gecko\)", user_agent):
        return "browser"
    return "unknown"


def standin_extra(fields: dict) -> dict | None:
    """Stand-in controls of the QGIS container, kept in the job's feedback until the worker runs it."""
    extra = {}
    if fields.get("standin_seconds"):
        extra["standin_seconds"] = float(fields["standin_seconds"])
    if str(fields.get("standin_no_feedback", "")).lower() in ("1", "true"):
        extra["standin_no_feedback"] = True
    return extra or None


class Handler(BaseHTTPRequestHandler):
    server_version = "qfieldcloud-standin"
    protocol_version = "HTTP/1.1"

    def log_message(self, fmt, *args):
        sys.stdout.write(f'{self.address_string()} "{self.requestline}" {args[1] if len(args) > 1 else ""}\n')
        sys.stdout.flush()

    # -- plumbing -------------------------------------------------------------
    def reply(self, code: int, body) -> None:
        data = json.dumps(body, default=str).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def body(self) -> bytes:
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def form(self) -> tuple[dict, dict]:
        """Fields and files of a JSON, urlencoded or multipart body."""
        raw = self.body()
        ctype = self.headers.get("Content-Type", "")
        if ctype.startswith("multipart/form-data"):
            msg = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
                f"Content-Type: {ctype}\r\n\r\n".encode() + raw
            )
            fields, files = {}, {}
            for part in msg.iter_parts():
                name = part.get_param("name", header="content-disposition")
                payload = part.get_payload(decode=True) or b""
                if part.get_filename():
                    files[name] = payload
                else:
                    fields[name] = payload.decode()
            return fields, files
        if ctype.startswith("application/x-www-form-urlencoded"):
            from urllib.parse import parse_qsl

            return dict(parse_qsl(raw.decode())), {}
        return (json.loads(raw) if raw else {}), {}

    def token_row(self):
        """(token id, user id) of a valid `Authorization: Token ...`, or None; marks the token used."""
        auth = self.headers.get("Authorization", "")
        if not auth.startswith("Token "):
            return None
        conn = db()
        with conn, conn.cursor() as cur:
            cur.execute(
                "UPDATE authentication_authtoken SET last_used_at = now()"
                " WHERE key = %s AND expires_at > now() RETURNING id, user_id",
                (auth[6:].strip(),),
            )
            return cur.fetchone()

    def user_id(self):
        row = self.token_row()
        return row[1] if row else None

    def handle_db(self, fn):
        try:
            fn()
        except psycopg2.Error as exc:
            drop_db()
            self.reply(500, {"code": "database_error", "message": str(exc).strip()})

    # -- routes ---------------------------------------------------------------
    def do_GET(self):
        path = self.path.split("?", 1)[0]
        if path == "/api/v1/status/":
            return self.reply(200, status_body())
        if path == "/api/v1/projects/":
            return self.handle_db(self.list_projects)
        m = re.fullmatch(rf"/api/v1/jobs/({UUID_RE})/", path)
        if m:
            return self.handle_db(lambda: self.get_job(m.group(1)))
        m = re.fullmatch(rf"/api/v1/deltas/({UUID_RE})/({UUID_RE})/", path)
        if m:
            return self.handle_db(lambda: self.get_deltas(m.group(1), m.group(2)))
        self.reply(404, {"code": "not_found"})

    def do_POST(self):
        path = self.path.split("?", 1)[0]
        if path == "/api/v1/auth/login/":
            return self.handle_db(self.login)
        if path == "/api/v1/auth/logout/":
            return self.handle_db(self.logout)
        if path == "/api/v1/jobs/":
            return self.handle_db(self.create_job)
        if path == "/api/v1/projects/":
            return self.handle_db(self.create_project)
        m = re.fullmatch(rf"/api/v1/deltas/({UUID_RE})/", path)
        if m:
            return self.handle_db(lambda: self.push_deltas(m.group(1)))
        self.reply(404, {"code": "not_found"})

    def login(self):
        fields, _ = self.form()
        user_agent = self.headers.get("User-Agent", "")
        client_type = client_type_of(user_agent)
        conn = db()
        with conn, conn.cursor() as cur:
            cur.execute(
                "SELECT id, password FROM core_user WHERE username = %s AND is_active", (fields.get("username"),)
            )
            row = cur.fetchone()
            if not row or not migrations.check_password(str(fields.get("password", "")), row[1]):
                return self.reply(400, {"code": "invalid_credentials", "message": "Unable to log in."})
            if client_type in SINGLE_TOKEN_CLIENTS:
                # upstream's AuthToken.save(): one live token per account for QField and QFieldSync
                cur.execute(
                    "UPDATE authentication_authtoken SET expires_at = now()"
                    " WHERE user_id = %s AND client_type = %s AND expires_at > now()",
                    (row[0], client_type),
                )
            token = secrets.token_hex(20)
            cur.execute(
                "INSERT INTO authentication_authtoken (key, created_at, expires_at, updated_at, user_agent,"
                " client_type, user_id) VALUES (%s, now(), now() + make_interval(hours => %s), now(), %s, %s, %s)"
                " RETURNING expires_at",
                (token, TOKEN_HOURS, user_agent, client_type, row[0]),
            )
            expires_at = cur.fetchone()[0]
        self.reply(200, {"token": token, "expires_at": expires_at.isoformat(), "username": fields.get("username")})

    def logout(self):
        """Upstream's LogoutView: every live token of the caller's account expires now."""
        row = self.token_row()
        if row:
            conn = db()
            with conn, conn.cursor() as cur:
                cur.execute(
                    "UPDATE authentication_authtoken SET expires_at = now() WHERE user_id = %s AND expires_at > now()",
                    (row[1],),
                )
        self.reply(200, {"detail": "Successfully logged out."})

    def create_job(self):
        user = self.user_id()
        if user is None:
            return self.reply(401, {"code": "not_authenticated"})
        fields, _ = self.form()
        job_type = fields.get("type")
        if job_type not in JOB_TYPES:
            return self.reply(400, {"code": "validation_error", "message": f"type must be one of {JOB_TYPES}"})
        extra = standin_extra(fields)
        conn = db()
        with conn, conn.cursor() as cur:
            cur.execute(f"SELECT owner_id FROM {qfcdb.PROJECT_TABLE} WHERE id = %s", (fields.get("project_id"),))
            if cur.fetchone() is None:
                return self.reply(404, {"code": "object_not_found", "message": "project not found"})
            if job_type == "package":
                # package jobs do not run in parallel: the one in flight is the answer (upstream: HTTP 200)
                cur.execute(
                    f"SELECT {JOB_COLUMNS} FROM core_job WHERE project_id = %s AND type = 'package'"
                    " AND status IN ('pending', 'queued', 'started')"
                    " ORDER BY started_at ASC NULLS LAST, created_at ASC LIMIT 1",
                    (fields["project_id"],),
                )
                row = cur.fetchone()
                if row:
                    return self.reply(200, job_json(row))
            job_id = insert_job(cur, fields["project_id"], job_type, user, extra)
            cur.execute(f"SELECT {JOB_COLUMNS} FROM core_job WHERE id = %s", (job_id,))
            row = cur.fetchone()
        self.reply(201, job_json(row))

    def list_projects(self):
        """Upstream's project list without public projects: here, the projects the caller owns."""
        user = self.user_id()
        if user is None:
            return self.reply(401, {"code": "not_authenticated", "message": "Not authenticated"})
        conn = db()
        with conn, conn.cursor() as cur:
            cur.execute(
                f"SELECT {PROJECT_COLUMNS} FROM {qfcdb.PROJECT_TABLE} p JOIN core_user u ON u.id = p.owner_id"
                " WHERE p.owner_id = %s ORDER BY p.name",
                (user,),
            )
            rows = cur.fetchall()
        self.reply(200, [project_json(r) for r in rows])

    def create_project(self):
        """Upstream's project create: name, owner (a username; the caller when absent), description, is_public.

        A person creates projects for itself only; a second project of one name and owner is refused.
        """
        user = self.user_id()
        if user is None:
            return self.reply(401, {"code": "not_authenticated", "message": "Not authenticated"})
        fields, _ = self.form()
        name = str(fields.get("name") or "").strip()
        if not name:
            return self.reply(
                400,
                {
                    "code": "validation_error",
                    "message": "Validation error",
                    "detail": {"name": ["This field is required."]},
                },
            )
        is_public = str(fields.get("is_public", "false")).lower() in ("1", "true")
        if fields.get("private") is not None:
            is_public = str(fields["private"]).lower() not in ("1", "true")
        conn = db()
        with conn, conn.cursor() as cur:
            owner = user
            if fields.get("owner"):
                cur.execute("SELECT id FROM core_user WHERE username = %s", (fields["owner"],))
                row = cur.fetchone()
                if row is None:
                    return self.reply(
                        400,
                        {
                            "code": "validation_error",
                            "message": "Validation error",
                            "detail": {"owner": ["Invalid owner username"]},
                        },
                    )
                owner = row[0]
            if owner != user:
                return self.reply(403, {"code": "permission_denied", "message": "Permission denied"})
            cur.execute(f"SELECT 1 FROM {qfcdb.PROJECT_TABLE} WHERE owner_id = %s AND name = %s", (owner, name))
            if cur.fetchone():
                return self.reply(
                    400,
                    {
                        "code": "project_already_exists",
                        "message": "This user already owns a project with the same name.",
                    },
                )
            project_id = uuid.uuid4()
            lock_col, lock_val = ("is_locked", False) if qfcdb.LEGACY else ("locked_at", None)
            cur.execute(
                f"INSERT INTO {qfcdb.PROJECT_TABLE} (id, name, description, owner_id, is_public, {lock_col},"
                " created_at, updated_at) VALUES (%s, %s, %s, %s, %s, %s, now(), now())",
                (project_id, name, str(fields.get("description") or ""), owner, is_public, lock_val),
            )
            cur.execute(
                f"SELECT {PROJECT_COLUMNS} FROM {qfcdb.PROJECT_TABLE} p JOIN core_user u ON u.id = p.owner_id"
                " WHERE p.id = %s",
                (project_id,),
            )
            row = cur.fetchone()
        self.reply(201, project_json(row))

    def get_job(self, job_id):
        if self.user_id() is None:
            return self.reply(401, {"code": "not_authenticated"})
        conn = db()
        with conn, conn.cursor() as cur:
            cur.execute(f"SELECT {JOB_COLUMNS} FROM core_job WHERE id = %s", (job_id,))
            row = cur.fetchone()
        if not row:
            return self.reply(404, {"code": "object_not_found"})
        self.reply(200, job_json(row))

    def push_deltas(self, project_id):
        user = self.user_id()
        if user is None:
            return self.reply(401, {"code": "not_authenticated"})
        fields, files = self.form()
        raw = files.get("file") or fields.get("file")
        try:
            deltafile = json.loads(raw)
            deltafile_id = uuid.UUID(deltafile["id"])
            deltas = deltafile["deltas"]
        except (TypeError, ValueError, KeyError):
            return self.reply(400, {"code": "invalid_deltafile", "message": "expected a JSON deltafile"})
        conn = db()
        with conn, conn.cursor() as cur:
            cur.execute(f"SELECT 1 FROM {qfcdb.PROJECT_TABLE} WHERE id = %s", (project_id,))
            if cur.fetchone() is None:
                return self.reply(404, {"code": "object_not_found", "message": "project not found"})
            job_id = insert_job(cur, project_id, "delta_apply", user, standin_extra(fields))
            for given in deltas:
                delta_id = uuid.UUID(given.get("uuid") or str(uuid.uuid4()))
                delta = {**given, "uuid": str(delta_id)}
                cur.execute(
                    "INSERT INTO core_delta (id, deltafile_id, content, last_status, created_at, updated_at,"
                    " project_id, created_by_id) VALUES (%s, %s, %s, 'pending', now(), now(), %s, %s)",
                    (delta_id, deltafile_id, json.dumps(delta), project_id, user),
                )
                cur.execute(
                    "INSERT INTO core_applyjobdelta (apply_job_id, delta_id, status) VALUES (%s, %s, 'pending')",
                    (job_id, delta_id),
                )
        self.reply(200, {"deltafile_id": str(deltafile_id), "job_id": str(job_id)})

    def get_deltas(self, project_id, deltafile_id):
        if self.user_id() is None:
            return self.reply(401, {"code": "not_authenticated"})
        conn = db()
        with conn, conn.cursor() as cur:
            cur.execute(
                "SELECT id, last_status, last_feedback FROM core_delta WHERE project_id = %s AND deltafile_id = %s"
                " ORDER BY created_at",
                (project_id, deltafile_id),
            )
            rows = cur.fetchall()
        self.reply(200, [{"id": str(r[0]), "status": r[1], "output": r[2]} for r in rows])


def main(args) -> int:
    # PID 1 in the container: without a handler SIGTERM would be ignored until the stop timeout.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    host, _, port = (args[0] if args else "0.0.0.0:8000").rpartition(":")
    httpd = ThreadingHTTPServer((host or "0.0.0.0", int(port)), Handler)
    httpd.daemon_threads = True
    print(f"Starting development server at http://{host}:{port}/", flush=True)
    httpd.serve_forever()
    return 0
