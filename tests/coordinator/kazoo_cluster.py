"""kazoo's test harness, served by the built-in coordinator (for test_kazoo_suite.py).

kazoo's harness (``kazoo.testing.harness``) always launches a ZooKeeper cluster of its
own: ``get_global_cluster()`` builds a ``kazoo.testing.common.ZookeeperCluster`` from a
ZooKeeper install (ZOOKEEPER_PATH, ZOOKEEPER_CLASSPATH or ZOOKEEPER_VERSION), and no
setting points it at a server that already runs. It keeps the cluster it built in
``harness.CLUSTER`` for as long as the environment it read stays the same, so a test
module can put one there (:func:`install`): here, one built-in coordinator.

Importing this module first replaces ``kazoo.testing.common``, the module kazoo's
harness imports its cluster class from, by one that holds :class:`EngineCluster`, then
imports the harness. kazoo's own ``kazoo.testing.common`` would import pyOpenSSL and pyjks
(for the certificates of its ZooKeeper's TLS port), which the engine does not install,
and would set a SIGUSR1 handler in the test process. It must therefore be imported before
anything imports ``kazoo.testing``: the kazoo test modules do, and nothing else here.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import types
from collections.abc import Iterator
from pathlib import Path

from zkharness import EngineCoordinator


class EngineServer:
    """One built-in coordinator, with the interface of kazoo's ManagedZooKeeper. It
    negotiates sessions as kazoo's harness configures its ZooKeeper (tickTime 2000:
    4-40 s); its tick stays the built-in coordinator's 200 ms."""

    def __init__(self, workdir: Path) -> None:
        self.coordinator = EngineCoordinator(
            workdir, tick_ms=200, min_session_timeout_ms=4000, max_session_timeout_ms=40_000)

    @property
    def address(self) -> str:
        return self.coordinator.hosts

    @property
    def secure_address(self) -> str:
        raise NotImplementedError("the built-in coordinator has no TLS port")

    @property
    def running(self) -> bool:
        return self.coordinator.proc is not None

    @property
    def client_port(self) -> int:
        return self.coordinator.port

    def run(self) -> None:
        if not self.running:
            self.coordinator.start()

    def stop(self) -> None:
        self.coordinator.stop()

    destroy = stop
    reset = stop

    def get_logs(self, num_lines: int = 100) -> list[str]:
        return self.coordinator.log_text().splitlines()[-num_lines:]


class EngineCluster:
    """kazoo's ZookeeperCluster, served by one built-in coordinator in a temporary dir.
    kazoo's tests start it (setup_zookeeper) and stop it (tearDownClass, after each class;
    the next class starts it again, on the same port); :func:`install` stops it at the end
    and removes its dir."""

    def __init__(self, **_ignored: object) -> None:
        self.workdir = Path(tempfile.mkdtemp(prefix="kazoo-suite-"))
        self._servers = [EngineServer(self.workdir / "coordinator")]

    def __getitem__(self, index: int) -> EngineServer:
        return self._servers[index]

    def __iter__(self) -> Iterator[EngineServer]:
        return iter(self._servers)

    def start(self) -> None:
        for server in self._servers:
            server.run()

    def stop(self) -> None:
        for server in self._servers:
            server.stop()

    terminate = stop
    reset = stop

    def get_logs(self) -> list[str]:
        return [line for server in self._servers for line in server.get_logs()]

    def get_ssl_client_configuration(self) -> dict[str, bytes]:
        raise NotImplementedError("the built-in coordinator has no TLS port")


_common = types.ModuleType("kazoo.testing.common")
_common.ZookeeperCluster = EngineCluster  # type: ignore[attr-defined]
sys.modules["kazoo.testing.common"] = _common

from kazoo.testing import harness  # noqa: E402 - only once kazoo.testing.common is ours


def _harness_conf() -> dict[str, str | None]:
    """The environment as kazoo's harness reads it: it keeps its cluster while this holds."""
    keys = ["ZOOKEEPER_PATH", "ZOOKEEPER_CLASSPATH", "ZOOKEEPER_PORT_OFFSET",
            "ZOOKEEPER_CLUSTER_SIZE", "ZOOKEEPER_VERSION", "ZOOKEEPER_OBSERVER_START_ID",
            "ZOOKEEPER_JAAS_AUTH", "ZOOKEEPER_LOCAL_SESSION_RO"]
    return {key: os.environ.get(key, harness.CLUSTER_DEFAULTS.get(key)) for key in keys}


def install() -> Iterator[EngineCluster]:
    """Make a new EngineCluster the cluster of kazoo's harness; when resumed, stop it, take
    it back and remove its dir. A generator, for a fixture to yield from."""
    cluster = EngineCluster()
    harness.CLUSTER, harness.CLUSTER_CONF = cluster, _harness_conf()
    try:
        yield cluster
    finally:
        cluster.stop()
        harness.CLUSTER = harness.CLUSTER_CONF = None
        shutil.rmtree(cluster.workdir, ignore_errors=True)
