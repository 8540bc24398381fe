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

    def user_id(self):
        auth = self.headers.get("Authorization", "")
        if not auth.startswith("Token "):
            return None
        with db().cursor() as cur:
            cur.execute("SELECT user_id FROM authtoken_token WHERE key = %s", (auth[6:].strip(),))
            row = cur.fetchone()
        return row[0] if row else None

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
        if path == "/api/v1/jobs/":
            return self.handle_db(self.create_job)
        m = re.fullmatch(rf"/api/v1/deltas/({UUID_RE})/", path)
        if m:
            return self.handle_db(lambda: self.push_deltas(m.group(1)))
        self.reply(404, {"code": "not_found"})

    def login(self):
        fields, _ = self.form()
        conn = db()
        with conn, conn.cursor() as cur:
            cur.execute(
                "SELECT id, password FROM core_user WHERE username = %s AND is_active", (fields.get("username"),)
            )
            row = cur.fetchone()
            if not row or not migrations.check_password(str(fields.get("password", "")), row[1]):
                return self.reply(400, {"code": "invalid_credentials", "message": "Unable to log in."})
            token = secrets.token_hex(20)
            cur.execute("INSERT INTO authtoken_token (key, user_id, created) VALUES (%s, %s, now())", (token, row[0]))
        self.reply(200, {"token": token, "username": fields.get("username")})

    def create_job(self):
        user = self.user_id()
        if user is None:
            return self.reply(401, {"code": "not_authenticated"})
        fields, _ = self.form()
        job_type = fields.get("type")
        if job_type not in JOB_TYPES:
            return self.reply(400, {"code": "validation_error", "message": f"type must be one of {JOB_TYPES}"})
        extra = {"standin_seconds": float(fields["standin_seconds"])} if fields.get("standin_seconds") else None
        conn = db()
        with conn, conn.cursor() as cur:
            cur.execute(f"SELECT owner_id FROM {qfcdb.PROJECT_TABLE} WHERE id = %s", (fields.get("project_id"),))
            if cur.fetchone() is None:
                return self.reply(404, {"code": "object_not_found", "message": "project not found"})
            job_id = insert_job(cur, fields["project_id"], job_type, user, extra)
            cur.execute(f"SELECT {JOB_COLUMNS} FROM core_job WHERE id = %s", (job_id,))
            row = cur.fetchone()
        self.reply(201, job_json(row))

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
            job_id = insert_job(cur, project_id, "delta_apply", user)
            for delta in deltas:
                delta_id = uuid.UUID(delta.get("uuid") or str(uuid.uuid4()))
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
