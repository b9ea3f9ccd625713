"""Checks that apply to every test of the project (tests/ and bench/)."""

from __future__ import annotations

import signal
from collections.abc import Iterator

import pytest


@pytest.fixture(autouse=True)
def _sigint_left_as_found() -> Iterator[None]:
    """A test that changes the test process's SIGINT handler fails (and the handler is
    put back): children inherit an ignored SIGINT, and Ctrl-C then does nothing in them
    (tests/test_top.py's pty test failed only in the full suite because of it)."""
    before = signal.getsignal(signal.SIGINT)
    yield
    after = signal.getsignal(signal.SIGINT)
    if after is not before:
        signal.signal(signal.SIGINT, before)
        pytest.fail(f"the test left SIGINT's handler changed: {before!r} -> {after!r}")

