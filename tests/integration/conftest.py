"""Fixtures of the integration suites; their plain helpers (play, recap, codes, facts_of) are in ansible_run.py.

``tests/conftest.py`` holds what the harness tests share too: the session's healthy ``standin`` and the per-test
``stack_factory``. Here: ``module_stacks``, the factory of the private stacks that the tests of one file share.
A file names its own stack with a one-line fixture, e.g.::

    @pytest.fixture(scope="module")
    def stack(module_stacks):
        return module_stacks("wp")

A test that needs its shared stack in a given state (healthy, broken in some way) checks it and makes it so in a
fixture of its own, so that it passes alone and in any order (``make test-order`` runs the files reversed).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator

import pytest
from ansible_run import remove_stack
from standin import Stack


@pytest.fixture(scope="module")
def module_stacks() -> Iterator[Callable[..., Stack]]:
    """Start private stacks shared by the tests of one module; all are removed when the module ends, pass or fail."""
    made: list[Stack] = []

    def make(prefix: str, replicas: int = 1, legacy: bool = False) -> Stack:
        """A fresh stand-in named ``<prefix><5 hex digits>``."""
        stack = Stack(f"{prefix}{uuid.uuid4().hex[:5]}")
        made.append(stack)  # before up: a stack that failed half-way up is removed too
        stack.down()
        return stack.up(legacy=legacy, replicas=replicas)

    yield make
    for stack in made:
        remove_stack(stack)
