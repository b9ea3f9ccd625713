"""Fixtures: a real coordinator process (and, where installed, a real ZooKeeper) per test
session, a fresh one per test where a test kills or restarts it, and kazoo clients.

Every test that takes ``server``/``fresh_server``/``zk`` runs twice: against our
coordinator and against Debian's ZooKeeper (skipped, with the reason, when it is not
installed; in CI, CI=true, that fails the run). Processes are always stopped, even when
a test fails.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from kazoo.client import KazooClient
from zkharness import ServerProcess, make_server, require_zookeeper

SESSION_TIMEOUT = 4.0  # seconds; the tick is 200 ms, so this is the 20-tick maximum

_counter = itertools.count()

logging.getLogger("kazoo").setLevel(logging.ERROR)


@pytest.fixture(
    scope="session",
    params=["engine", pytest.param("zookeeper", marks=pytest.mark.zookeeper)],
)
def kind(request: pytest.FixtureRequest) -> str:
    if request.param == "zookeeper":
        require_zookeeper()  # skipped with the reason; in CI (CI=true) a failure
    value: str = request.param
    return value


@pytest.fixture(scope="session")
def server(kind: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """One server process shared by the session's tests (each test uses its own chroot)."""
    proc = make_server(kind, tmp_path_factory.mktemp(f"shared-{kind}"))
    try:
        proc.start()
        yield proc
    finally:
        proc.stop()


@pytest.fixture
def fresh_server(kind: str, tmp_path: Path) -> Iterator[ServerProcess]:
    """A server of the test's own, for tests that kill or restart it."""
    proc = make_server(kind, tmp_path / kind)
    try:
        proc.start()
        yield proc
    finally:
        proc.kill()


def new_client(hosts: str, timeout: float = SESSION_TIMEOUT, **kwargs: Any) -> KazooClient:
    client = KazooClient(hosts=hosts, timeout=timeout, **kwargs)
    client.start(timeout=15)
    return client


def stop_client(client: KazooClient) -> None:
    try:
        client.stop()
    finally:
        client.close()


@pytest.fixture
def chroot(server: ServerProcess) -> Iterator[str]:
    """A fresh, empty path for this test, so tests sharing a server do not meet."""
    path = f"/t{next(_counter)}"
    root = new_client(server.hosts)
    root.ensure_path(path)
    stop_client(root)
    yield path


@pytest.fixture
def make_client(server: ServerProcess, chroot: str
                ) -> Iterator[Callable[..., KazooClient]]:
    """Factory for kazoo clients chrooted to the test's path; all closed at the end."""
    clients: list[KazooClient] = []

    def make(timeout: float = SESSION_TIMEOUT, chrooted: bool = True,
             **kwargs: Any) -> KazooClient:
        client = new_client(server.hosts + (chroot if chrooted else ""), timeout, **kwargs)
        clients.append(client)
        return client

    yield make
    for client in clients:
        stop_client(client)


@pytest.fixture
def zk(make_client: Callable[..., KazooClient]) -> KazooClient:
    """A connected kazoo client, chrooted to the test's own path."""
    return make_client()
