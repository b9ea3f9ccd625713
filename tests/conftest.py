"""Fixtures that start real engine daemons (coordinator + broker processes) and always stop them."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from engine_harness import Daemon, running_daemon


@pytest.fixture(scope="session")
def shared_daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    """One daemon for the tests that only create their own topics."""
    with running_daemon(tmp_path_factory.mktemp("engine-shared"), brokers=2) as d:
        yield d


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[Daemon]:
    """A daemon of the test's own, for tests that kill, stop or restart it."""
    with running_daemon(tmp_path / "engine", brokers=2) as d:
        yield d
