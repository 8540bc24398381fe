# SPDX-License-Identifier: GPL-3.0-or-later
"""Fixtures shared by the unit tests; the plain-data builders behind them live in ``builders.py``."""

from __future__ import annotations

import pytest
from builders import healthy


@pytest.fixture
def facts():
    """The facts of a healthy stack, fresh for each test."""
    return healthy()
