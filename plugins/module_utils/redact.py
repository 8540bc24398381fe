# Copyright (c) 2025, fibreflow
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The one place that masks secrets in anything the collection returns or writes.

Two mechanisms, used together:

- by *key*: a value stored under a name that looks secret (``POSTGRES_PASSWORD``, ``SECRET_KEY``,
  ``STORAGES``, ``..._TOKEN``, ``..._ACCESS_KEY_ID`` ...) is replaced by :data:`MASK`, in dicts and in
  ``NAME=value`` strings (container environments);
- by *value*: every secret value learnt from the containers' environments (and any extra value the
  caller registers, such as a ``db_password`` option) is replaced by :data:`MASK` wherever it occurs in
  any string (log lines, URLs, error messages). Passwords in URLs (``scheme://user:pass@host``) are
  masked too.

Typical use::

    redactor = Redactor()
    redactor.learn_env(container_env)        # dict or ["K=V", ...]
    redactor.add(module.params["db_password"])
    safe = redactor.value(result)            # deep copy with secrets masked
"""

from __future__ import annotations

import json
import re
from typing import Any, Iterable

from ansible_collections.fibreflow.qfieldcloud.plugins.module_utils.docker_engine import env_dict

MASK = "********"
MIN_SECRET_LENGTH = 4

SECRET_KEY_RE = re.compile(
    r"PASSWORD|PASSWD|PASSPHRASE|SECRET|TOKEN|STORAGES|ACCESS|CREDENTIAL|PRIVATE|(?:^|_)KEY(?:$|_)|API_?KEY"
    r"|(?:^|_)DSN$|(?:^|_)SALT$|(?:^|_)AUTH(?:$|_)|(?:^|_)PASS$|(?:^|_)PWD$|COOKIE|SESSION_?ID",
    re.IGNORECASE,
)
_URL_PASSWORD_RE = re.compile(r"(?P<head>[A-Za-z][A-Za-z0-9+.\-]*://[^/\s:@]*:)(?P<pw>[^@\s/]+)(?P<tail>@)")
_ENV_ITEM_RE = re.compile(r"^(?P<key>[A-Za-z_][A-Za-z0-9_.\-]*)=(?P<value>.*)$", re.DOTALL)


def is_secret_key(name: str) -> bool:
    """Tell whether a variable or field name looks like it holds a secret."""
    return bool(SECRET_KEY_RE.search(str(name)))


def _json_secret_leaves(value: str) -> list[str]:
    """Return string leaves stored under secret-looking keys inside a JSON value (for ``STORAGES``)."""
    try:
        data = json.loads(value)
    except (TypeError, ValueError):
        return []
    found: list[str] = []

    def walk(node: Any, secret_parent: bool) -> None:
        if isinstance(node, dict):
            for key, child in node.items():
                walk(child, secret_parent or is_secret_key(key))
        elif isinstance(node, list):
            for child in node:
                walk(child, secret_parent)
        elif isinstance(node, str) and secret_parent:
            found.append(node)

    walk(data, False)
    return found


class Redactor:
    """Masks secrets by key and by known value. Cheap to build; use one per module run."""

    def __init__(self, secrets: Iterable[str] | None = None) -> None:
        self._secrets: set[str] = set()
        self._pattern: re.Pattern | None = None
        for secret in secrets or ():
            self.add(secret)

    @property
    def secrets_count(self) -> int:
        """How many secret values are known (the values themselves are never exposed)."""
        return len(self._secrets)

    def add(self, secret: Any) -> None:
        """Register one secret value (ignored when empty or shorter than :data:`MIN_SECRET_LENGTH`)."""
        if secret is None:
            return
        text = str(secret)
        if len(text) >= MIN_SECRET_LENGTH and text != MASK:
            if text not in self._secrets:
                self._secrets.add(text)
                self._pattern = None
            stripped = text.strip()
            if stripped != text and len(stripped) >= MIN_SECRET_LENGTH:
                self._secrets.add(stripped)
                self._pattern = None

    def learn_env(self, env: Any) -> None:
        """Register the secret values of an environment (dict or ``["K=V", ...]``)."""
        for key, value in env_dict(env).items():
            if is_secret_key(key):
                self.add(value)
                for leaf in _json_secret_leaves(value):
                    self.add(leaf)

    def _compiled(self) -> re.Pattern | None:
        if self._pattern is None and self._secrets:
            ordered = sorted(self._secrets, key=len, reverse=True)
            self._pattern = re.compile("|".join(re.escape(s) for s in ordered))
        return self._pattern

    def text(self, value: str) -> str:
        """Return ``value`` with every known secret and URL password replaced by :data:`MASK`."""
        if not value:
            return value
        pattern = self._compiled()
        if pattern is not None:
            value = pattern.sub(MASK, value)
        return _URL_PASSWORD_RE.sub(lambda m: m.group("head") + MASK + m.group("tail"), value)

    def _env_item(self, item: str) -> str:
        match = _ENV_ITEM_RE.match(item)
        if match and is_secret_key(match.group("key")):
            return f"{match.group('key')}={MASK}"
        return self.text(item)

    def value(self, data: Any, key: str | None = None) -> Any:
        """Return a redacted deep copy of ``data`` (dicts, lists, tuples, strings, scalars).

        Dict values under secret-looking keys become :data:`MASK` (unless empty/``None``, which stay
        as they are so a missing setting remains visible); strings are scanned for known secrets;
        ``KEY=value`` strings with a secret key are masked.
        """
        if key is not None and is_secret_key(key) and data not in (None, "", [], {}) and not isinstance(data, bool):
            return MASK
        if isinstance(data, dict):
            return {k: self.value(v, str(k)) for k, v in data.items()}
        if isinstance(data, (list, tuple)):
            return [self.value(v) for v in data]
        if isinstance(data, str):
            return self._env_item(data)
        return data


def redact(data: Any, secrets: Iterable[str] | None = None) -> Any:
    """Convenience: redact ``data`` with a fresh :class:`Redactor` knowing ``secrets``."""
    return Redactor(secrets).value(data)
