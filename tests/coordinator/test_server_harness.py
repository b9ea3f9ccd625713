"""The harness that starts Debian's ZooKeeper (zkharness.RealZooKeeper): a port taken by
another process between the harness picking it and ZooKeeper binding it costs a retry on
another port, not a failed test or a test talking to the wrong server."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
import zkharness
from zkharness import RealZooKeeper, require_zookeeper

from conftest import new_client, stop_client


def test_zookeeper_moves_to_another_port_when_its_port_was_taken(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    require_zookeeper()
    with socket.socket() as squatter:  # the process that binds the picked port first
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        taken = squatter.getsockname()[1]
        picks = iter([taken])
        real_free_port = zkharness.free_port
        monkeypatch.setattr(zkharness, "free_port", lambda: next(picks, None) or real_free_port())
        zk = RealZooKeeper(tmp_path / "zk")
        try:
            zk.start()
            assert zk.port != taken
            assert "Address already in use" in zk.log_text()
            client = new_client(zk.hosts)
            try:
                client.create("/moved", b"served")
                assert client.get("/moved")[0] == b"served"
            finally:
                stop_client(client)
        finally:
            zk.stop()
