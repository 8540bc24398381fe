"""Fixtures shared by the integration, harness and molecule-free playbook tests."""

from __future__ import annotations

import os
import uuid

import pytest
from standin import Stack

# One shared stack per pytest session; the pid keeps concurrent sessions on one engine apart.
SHARED_NAME = os.environ.get("FIBREFLOW_SHARED_STACK", f"ffshared{os.getpid()}")


@pytest.fixture(scope="session")
def standin():
    """A healthy stand-in shared by every test that does not break it. Tests must leave it healthy."""
    stack = Stack(SHARED_NAME)
    stack.down()
    stack.up()
    yield stack
    stack.down()


@pytest.fixture
def stack_factory():
    """Start private stacks that a test may break; all are removed after the test, pass or fail."""
    made: list[Stack] = []

    def make(name: str | None = None, legacy: bool = False, replicas: int = 1) -> Stack:
        stack = Stack(name or f"ff{uuid.uuid4().hex[:6]}")
        made.append(stack)
        stack.down()
        return stack.up(legacy=legacy, replicas=replicas)

    yield make
    for stack in made:
        stack.down()
