"""Fixtures shared by the integration, harness and molecule-free playbook tests, and the order of the tests.

``--test-order=reversed`` (or ``FIBREFLOW_TEST_ORDER=reversed``) runs the collected tests last to first: the files
in reversed order and the tests of each file too; ``random:SEED`` shuffles them reproducibly. A test
that passes only after another one of its file did something to a shared stack fails there (``make test-order``).
Tests marked ``disruptive`` always come last (``make test`` runs them alone, after the others, anyway).
"""

from __future__ import annotations

import os
import random
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


def pytest_addoption(parser):
    parser.addoption(
        "--test-order",
        default=os.environ.get("FIBREFLOW_TEST_ORDER", "collected"),
        help="collected (default), reversed, or random:SEED (env FIBREFLOW_TEST_ORDER)",
    )


def pytest_collection_modifyitems(config, items):
    # Deterministic orders only: pytest-xdist's workers each collect and must find the same order.
    order = config.getoption("--test-order")
    kind, _sep, seed = order.partition(":")
    if order == "reversed":
        items.reverse()
    elif kind == "random" and seed:
        random.Random(seed).shuffle(items)
    elif order != "collected":
        raise pytest.UsageError(f"--test-order: {order!r} is none of collected, reversed, random:SEED")
    # Whatever the order and the file names: tests marked disruptive (restarting the Docker daemon) come last.
    items.sort(key=lambda item: item.get_closest_marker("disruptive") is not None)


def pytest_report_header(config):
    return f"test order: {config.getoption('--test-order')}"
