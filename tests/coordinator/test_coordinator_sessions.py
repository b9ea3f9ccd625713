"""Sessions: negotiation, expiry (ephemerals deleted, watches fired), resumption."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from kazoo.client import KazooClient
from kazoo.protocol.connection import _CONNECTION_DROP
from kazoo.protocol.states import KazooState
from zkharness import (
    RawClient,
    ServerProcess,
    kazoo_session_timeout_ms,
    make_server,
    wait_until,
)

from engine.coordinator.jute import OPEN_ACL_UNSAFE, CreateFlag, CreateRequest, OpCode
from engine.coordinator.session import SessionLimits
from engine.errors import ConfigError


def test_timeout_is_clamped_to_two_and_twenty_ticks(server: ServerProcess) -> None:
    low = RawClient(server.port, timeout_ms=1)
    high = RawClient(server.port, timeout_ms=10_000_000)
    try:
        assert low.connect_response.timeout_ms == 2 * server.tick_ms
        assert high.connect_response.timeout_ms == 20 * server.tick_ms
        assert low.session_id != high.session_id
        assert len(low.passwd) == 16
    finally:
        low.close()
        high.close()


def test_limits_default_to_a_200_ms_tick_and_sessions_of_two_ticks_to_40_s() -> None:
    assert SessionLimits.of() == SessionLimits(200, 400, 40_000) == SessionLimits()
    assert SessionLimits.of(tick_ms=2000) == SessionLimits(2000, 4000, 40_000)  # ZooKeeper's
    assert SessionLimits.of(tick_ms=5000) == SessionLimits(5000, 10_000, 100_000)  # 20 ticks
    assert SessionLimits.of(100, 300, 20_000) == SessionLimits(100, 300, 20_000)
    limits = SessionLimits()
    assert [limits.negotiate(ms) for ms in (10, 15_000, 100_000)] == [400, 15_000, 40_000]
    with pytest.raises(ConfigError, match="tick_ms=0"):
        SessionLimits.of(tick_ms=0)
    with pytest.raises(ConfigError, match="min_session_timeout_ms=400 max_session_timeout_ms=300"):
        SessionLimits.of(max_timeout_ms=300)


@pytest.fixture
def wide_range_server(kind: str, tmp_path: Path) -> Iterator[ServerProcess]:
    """A server of the test's own with the built-in coordinator's default range: a 200 ms
    tick, sessions of 2 ticks to 40 s."""
    proc = make_server(kind, tmp_path / kind, tick_ms=200, max_session_timeout_ms=40_000)
    try:
        proc.start()
        yield proc
    finally:
        proc.kill()


def test_kazoo_timeouts_are_negotiated_into_the_configured_range(
        wide_range_server: ServerProcess) -> None:
    hosts = wide_range_server.hosts
    assert kazoo_session_timeout_ms(hosts, 15) == 15_000
    assert kazoo_session_timeout_ms(hosts, 100) == 40_000
    # kazoo waits for the answer to its connect request no longer than the timeout it
    # asks for, and 10 ms may be less than the fsync of the session's creation: raw jute
    raw = RawClient(wide_range_server.port, timeout_ms=10)
    try:
        assert raw.connect_response.timeout_ms == 400
    finally:
        raw.close()


def test_silent_session_expires_deleting_ephemerals_and_firing_watches(
        server: ServerProcess, chroot: str, zk: KazooClient) -> None:
    silent = RawClient(server.port, timeout_ms=2 * server.tick_ms)
    path = f"{chroot}/lease"
    assert silent.call(OpCode.CREATE, CreateRequest(
        path, b"", OPEN_ACL_UNSAFE, CreateFlag.EPHEMERAL))[0] == 0
    deleted = []
    zk.exists("/lease", watch=lambda event: deleted.append(time.monotonic()))
    went_silent = time.monotonic()
    wait_until(lambda: deleted, 10, "the ephemeral of a silent session to go")
    elapsed = deleted[0] - went_silent
    # the timeout plus a tick or two of expiry granularity, plus scheduling slack
    assert elapsed < 2 * server.tick_ms / 1000 + 3.0, elapsed
    assert zk.exists("/lease") is None
    silent.sock.close()


def test_pings_keep_a_session_alive(server: ServerProcess, chroot: str, zk: KazooClient) -> None:
    timeout_ms = 5 * server.tick_ms
    client = RawClient(server.port, timeout_ms=timeout_ms)
    try:
        assert client.call(OpCode.CREATE, CreateRequest(
            f"{chroot}/alive", b"", OPEN_ACL_UNSAFE, CreateFlag.EPHEMERAL))[0] == 0
        deadline = time.monotonic() + 4 * timeout_ms / 1000
        while time.monotonic() < deadline:  # four timeouts long, pinging ten times each
            client.ping()
            time.sleep(timeout_ms / 10_000)
        assert zk.exists("/alive") is not None
    finally:
        client.close()


def test_reconnect_with_id_and_password_resumes_the_session(
        server: ServerProcess, chroot: str, zk: KazooClient) -> None:
    first = RawClient(server.port)
    path = f"{chroot}/mine"
    assert first.call(OpCode.CREATE, CreateRequest(
        path, b"", OPEN_ACL_UNSAFE, CreateFlag.EPHEMERAL))[0] == 0
    first.close(end_session=False)
    second = RawClient(server.port, session_id=first.session_id, passwd=first.passwd,
                       last_zxid=first.last_zxid)
    try:
        assert second.session_id == first.session_id
        assert second.connect_response.timeout_ms > 0
        stat = zk.exists("/mine")
        assert stat is not None and stat.ephemeralOwner == first.session_id
    finally:
        second.close()
    wait_until(lambda: zk.exists("/mine") is None, 5, "close to delete the ephemeral")


def test_wrong_password_is_told_the_session_expired(server: ServerProcess) -> None:
    first = RawClient(server.port)
    try:
        wrong = RawClient(server.port, session_id=first.session_id, passwd=b"x" * 16)
        assert wrong.connect_response.timeout_ms == 0
        wrong.sock.close()
    finally:
        first.close()


def test_unknown_session_is_told_it_expired(server: ServerProcess) -> None:
    stale = RawClient(server.port, session_id=0x1234, passwd=b"\1" * 16)
    assert stale.connect_response.timeout_ms == 0
    stale.sock.close()


def test_kazoo_reconnect_keeps_session_and_ephemerals(
        make_client: Callable[..., KazooClient], zk: KazooClient) -> None:
    client = make_client()
    client.create("/brokers/ids/7", b"", ephemeral=True, makepath=True)
    session_id = client.client_id[0]
    states: list[str] = []
    client.add_listener(states.append)
    client._call(_CONNECTION_DROP, client.handler.async_result())
    wait_until(lambda: KazooState.SUSPENDED in states, 10, "the drop to be noticed")
    wait_until(lambda: client.state == KazooState.CONNECTED, 10, "kazoo to reconnect")
    assert client.client_id[0] == session_id
    assert zk.exists("/brokers/ids/7").ephemeralOwner == session_id
    assert KazooState.LOST not in states


def test_closed_session_cannot_be_resumed(server: ServerProcess) -> None:
    first = RawClient(server.port)
    first.close(end_session=True)
    again = RawClient(server.port, session_id=first.session_id, passwd=first.passwd)
    assert again.connect_response.timeout_ms == 0
    again.sock.close()
