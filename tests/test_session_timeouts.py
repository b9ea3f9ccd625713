"""Session timeouts through `engine start`: the built-in coordinator's negotiated range (by
default a 200 ms tick and 0.4-40 s, so Kafka's 6-18 s sessions are granted), the options
that change it, and the brokers' own short timeout, granted within it."""

from __future__ import annotations

import re
import socket
from pathlib import Path

import pytest
from engine_harness import Daemon, running_daemon
from kazoo.client import KazooClient

from engine import metadata as md
from engine.datadir import DataDir


def _conf(daemon: Daemon) -> dict[str, str]:
    """The coordinator's `conf` four-letter word, as a dict."""
    host, port = daemon.runtime()["coordinator"].split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(b"conf")
        text = b"".join(iter(lambda: sock.recv(65536), b"")).decode()
    return dict(line.split("=", 1) for line in text.splitlines() if "=" in line)


def _created_sessions(daemon: Daemon) -> dict[int, int]:
    """Session id -> the timeout (ms) the coordinator granted it, from its log."""
    log = (daemon.data_dir / "logs" / "coordinator.log").read_text()
    found = re.findall(r"session created: session=0x([0-9a-f]+) timeout_ms=(\d+)", log)
    return {int(session, 16): int(timeout) for session, timeout in found}


def _granted(daemon: Daemon, asked_s: float) -> int:
    """The timeout a kazoo client asking for ``asked_s`` gets."""
    client = KazooClient(hosts=daemon.runtime()["coordinator"], timeout=asked_s)
    client.start(timeout=15)
    try:
        return _created_sessions(daemon)[client.client_id[0]]
    finally:
        client.stop()
        client.close()


def test_the_default_range_grants_kafkas_sessions_and_the_brokers_short_one(
    shared_daemon: Daemon,
) -> None:
    conf = _conf(shared_daemon)
    assert (conf["tickTime"], conf["minSessionTimeout"], conf["maxSessionTimeout"]) == (
        "200", "400", "40000")
    assert [_granted(shared_daemon, s) for s in (6, 18, 100)] == [6000, 18000, 40000]
    # Each broker's session, as the coordinator logged its creation: the brokers' own
    # choice (md.SESSION_TIMEOUT_S), granted as asked.
    zk = md.connect(DataDir.resolve(shared_daemon.data_dir))
    try:
        owners = {b: zk.exists(md.broker_path(b)).ephemeralOwner for b in (1, 2)}
    finally:
        zk.stop()
        zk.close()
    created = _created_sessions(shared_daemon)
    for owner in owners.values():
        assert created[owner] == md.SESSION_TIMEOUT_S * 1000 == 4000
    assert 400 <= md.SESSION_TIMEOUT_S * 1000 <= 40000


def test_start_sets_the_tick_and_the_session_timeout_range(tmp_path: Path) -> None:
    limits = ["--tick-ms", "100", "--min-session-timeout-ms", "1000",
              "--max-session-timeout-ms", "20000"]
    with running_daemon(tmp_path / "engine", brokers=1, start_args=limits) as daemon:
        conf = _conf(daemon)
        assert (conf["tickTime"], conf["minSessionTimeout"], conf["maxSessionTimeout"]) == (
            "100", "1000", "20000")
        assert [_granted(daemon, s) for s in (0.5, 15, 100)] == [1000, 15000, 20000]


@pytest.mark.parametrize(("args", "message"), [
    (["--min-session-timeout-ms", "5000", "--max-session-timeout-ms", "1000"],
     b"engine: session timeouts need 0 < minimum <= maximum: "
     b"min_session_timeout_ms=5000 max_session_timeout_ms=1000\n"),
    (["--tick-ms", "0"], b"engine: the tick must be positive: tick_ms=0\n"),
    (["--tick-ms", "100", "--coordinator", "127.0.0.1:2181"],
     b"engine: --tick-ms and --min/--max-session-timeout-ms set the built-in coordinator; "
     b"an external ZooKeeper has tickTime, minSessionTimeout and maxSessionTimeout in its "
     b"zoo.cfg: coordinator=127.0.0.1:2181\n"),
])
def test_start_refuses_a_range_that_does_not_hold(
    tmp_path: Path, args: list[str], message: bytes
) -> None:
    out = Daemon(tmp_path / "engine").cli(
        "start", "--data-dir", str(tmp_path / "engine"), *args, check=False)
    assert (out.returncode, out.stderr) == (1, message)
    assert not (tmp_path / "engine" / "engine.json").exists()
