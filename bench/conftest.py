"""pytest fixtures for the peer benchmarks (bench/test_peers_bench.py).

``bench_transport`` opens one transport per test session (for Redis: starts its server in a
temporary directory) and always closes it. A transport that cannot run here is skipped
with the reason and the install command, which ``pytest -ra`` lists at the end; in CI
(CI=true) that fails instead (the `test` extras and scripts/servers install them all),
except for an ``external`` transport (a server named by the environment, not started
by the suite).
"""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Iterator
from multiprocessing.context import BaseContext
from pathlib import Path

import pytest

from bench.transports import discover
from bench.transports.base import Transport

TRANSPORTS = discover()


@pytest.fixture(scope="session")
def bench_context() -> BaseContext:
    """The multiprocessing start method of the suite (fork: see bench/README.md)."""
    return multiprocessing.get_context("fork")


@pytest.fixture(scope="session")
def bench_transport(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Transport]:
    """The transport named by the test's parameter, opened; closed after the session."""
    name: str = request.param
    cls = TRANSPORTS[name]
    missing = cls.missing()
    if missing is not None:
        if os.environ.get("CI") == "true" and not cls.external:  # CI installs every peer
            pytest.fail(f"{name}: {missing}; CI runs every peer", pytrace=False)
        pytest.skip(f"{name}: {missing}")
    if cls.checked == () and not request.config.getoption("benchmark_only"):
        pytest.skip(f"{name}: measured only (engine bench, pytest bench/ --benchmark-only)")
    transport = cls()
    workdir: Path = tmp_path_factory.mktemp(name)
    try:
        transport.open(workdir)
        yield transport
    finally:
        transport.close()
