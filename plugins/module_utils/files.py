# Copyright (c) 2025, fibreflow
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The one way the collection writes a file: atomically, keeping an existing file's mode and owner; and the one
digest of files' contents.

Used for the worker's compose override and ``.env`` (compose.py), the Prometheus textfiles (metrics.py)
and the drift reports (the drift_report callback); the digest keys qfc_worker's cache of the project's own files
and its record of the last enforcement (worker_apply.py, enforced.py).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile


def atomic_write(path: str, text: str, mode: int | None = None) -> None:
    """Replace ``path`` with ``text`` so that a reader sees either the old or the new file.

    The temporary file lives in the same directory; it is written, ``fsync``-ed and renamed over
    ``path``; then the directory is ``fsync``-ed. An existing file's mode and owner are kept; a new
    file gets ``mode`` (default 0644). On any error the temporary file is removed.
    """
    directory = os.path.dirname(os.path.abspath(path))
    try:
        current = os.stat(path)
    except FileNotFoundError:
        current = None
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=directory)
    try:
        if current is not None:
            os.fchmod(fd, current.st_mode & 0o7777)
            with contextlib.suppress(PermissionError):
                os.fchown(fd, current.st_uid, current.st_gid)
        else:
            os.fchmod(fd, 0o644 if mode is None else mode)
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as handle:
            fd = -1
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
        tmp = ""
        dir_fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    finally:
        if fd >= 0:
            os.close(fd)
        if tmp:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)


def contents_digest(paths: list[str], extra: str = "") -> str:
    """The SHA-256 over each path and its file's bytes (a missing or unreadable file counts as missing), then
    ``extra``: equal digests mean none of the files changed."""
    digest = hashlib.sha256()
    for path in paths:
        digest.update(path.encode() + b"\0")
        try:
            with open(path, "rb") as handle:
                digest.update(handle.read())
        except OSError:
            digest.update(b"<missing>")
        digest.update(b"\0")
    digest.update(extra.encode())
    return digest.hexdigest()
