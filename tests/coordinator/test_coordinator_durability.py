"""Durability: acknowledged writes, the zxid counter and unexpired sessions survive
SIGKILL of the server; snapshots and torn log tails are handled."""

from __future__ import annotations

import os
import stat
import threading
from pathlib import Path

import pytest
from kazoo.client import KazooClient
from kazoo.exceptions import KazooException
from zkharness import EngineCoordinator, RawClient, ServerProcess, wait_until

from conftest import new_client, stop_client
from engine.coordinator.jute import OPEN_ACL_UNSAFE, CreateFlag, CreateRequest, OpCode


def test_tree_and_zxid_survive_sigkill(fresh_server: ServerProcess) -> None:
    client = new_client(fresh_server.hosts)
    try:
        client.create("/config/topics/orders", b'{"partitions": 3}', makepath=True)
        for p in range(3):
            client.create(f"/brokers/topics/orders/partitions/{p}/state",
                          f'{{"leader": {p}}}'.encode(), makepath=True)
        client.set("/config/topics/orders", b'{"partitions": 4}')
        last = client.exists("/config/topics/orders")
    finally:
        stop_client(client)
    fresh_server.restart()
    client = new_client(fresh_server.hosts)
    try:
        data, after = client.get("/config/topics/orders")
        assert data == b'{"partitions": 4}'
        assert after == last
        assert sorted(client.get_children("/brokers/topics/orders/partitions")) == ["0", "1", "2"]
        created = client.create("/after-restart", b"")
        assert client.exists(created).czxid > last.mzxid
    finally:
        stop_client(client)


def test_every_acknowledged_write_survives_sigkill(fresh_server: ServerProcess) -> None:
    acked: list[str] = []
    lock = threading.Lock()
    stop = threading.Event()
    clients = [new_client(fresh_server.hosts) for _ in range(3)]
    clients[0].ensure_path("/acked")

    def writer(client: KazooClient, index: int) -> None:
        i = 0
        while not stop.is_set():
            path = f"/acked/w{index}-{i}"
            try:
                client.create(path, b"x")
            except KazooException:
                return
            with lock:
                acked.append(path)
            i += 1

    threads = [threading.Thread(target=writer, args=(c, i), daemon=True)
               for i, c in enumerate(clients)]
    for thread in threads:
        thread.start()
    wait_until(lambda: len(acked) >= 150, 30, "some acknowledged writes")
    fresh_server.kill()
    stop.set()
    with lock:
        survivors_needed = list(acked)
    for thread in threads:
        thread.join(30)
    for client in clients:
        stop_client(client)
    fresh_server.start()
    client = new_client(fresh_server.hosts)
    try:
        present = set(client.get_children("/acked"))
        missing = [p for p in survivors_needed if p.rsplit("/", 1)[1] not in present]
        assert not missing, missing[:5]
    finally:
        stop_client(client)


def test_unexpired_session_and_its_ephemerals_survive_sigkill(
        fresh_server: ServerProcess) -> None:
    raw = RawClient(fresh_server.port, timeout_ms=20 * fresh_server.tick_ms)
    assert raw.call(OpCode.CREATE, CreateRequest(
        "/brokers-eph", b"", OPEN_ACL_UNSAFE, CreateFlag.EPHEMERAL))[0] == 0
    raw.sock.close()
    fresh_server.restart()
    resumed = RawClient(fresh_server.port, session_id=raw.session_id, passwd=raw.passwd,
                        last_zxid=raw.last_zxid)
    try:
        assert resumed.connect_response.timeout_ms > 0
        assert resumed.session_id == raw.session_id
        client = new_client(fresh_server.hosts)
        try:
            assert client.exists("/brokers-eph").ephemeralOwner == raw.session_id
        finally:
            stop_client(client)
    finally:
        resumed.close()


def test_session_that_never_returns_expires_after_restart(
        fresh_server: ServerProcess) -> None:
    raw = RawClient(fresh_server.port, timeout_ms=2 * fresh_server.tick_ms)
    assert raw.call(OpCode.CREATE, CreateRequest(
        "/orphan", b"", OPEN_ACL_UNSAFE, CreateFlag.EPHEMERAL))[0] == 0
    fresh_server.restart()
    raw.sock.close()
    client = new_client(fresh_server.hosts)
    try:
        wait_until(lambda: client.exists("/orphan") is None, 15, "the orphan to expire")
    finally:
        stop_client(client)


def test_sigterm_exits_cleanly(fresh_server: ServerProcess) -> None:
    client = new_client(fresh_server.hosts)
    client.create("/before-term", b"")
    stop_client(client)
    code = fresh_server.stop()
    assert code == 0 if fresh_server.kind == "engine" else code in (0, 143)  # java: 128+15
    fresh_server.start()
    client = new_client(fresh_server.hosts)
    try:
        assert client.exists("/before-term") is not None
    finally:
        stop_client(client)


# -- our coordinator only: its own files ------------------------------------------------


@pytest.fixture
def engine_server(tmp_path: Path) -> EngineCoordinator:
    server = EngineCoordinator(tmp_path, snapshot_every=50)
    server.start()
    yield server  # type: ignore[misc]
    server.kill()


def test_snapshots_bound_the_log_and_recover(engine_server: EngineCoordinator) -> None:
    client = new_client(engine_server.hosts)
    try:
        client.ensure_path("/snap")
        for i in range(220):
            client.create(f"/snap/n{i:03d}", str(i).encode())
        client.set("/snap/n000", b"changed")
    finally:
        stop_client(client)
    names = sorted(os.listdir(engine_server.data_dir))
    snapshots = [n for n in names if n.startswith("snapshot.")]
    assert 1 <= len(snapshots) <= 2, names
    assert len([n for n in names if n.startswith("log.")]) <= 3, names
    engine_server.restart()
    client = new_client(engine_server.hosts)
    try:
        assert len(client.get_children("/snap")) == 220
        assert client.get("/snap/n000")[0] == b"changed"
        assert client.get("/snap/n219")[0] == b"219"
    finally:
        stop_client(client)


def test_null_data_stays_null_through_the_log_and_a_snapshot(
    engine_server: EngineCoordinator,
) -> None:
    """Null and empty data, created and set, survive a restart that replays the log, then
    one that loads a snapshot (snapshot_every is 50)."""
    expected = {"/c-null": None, "/c-empty": b"", "/s-null": None, "/s-empty": b""}

    def check() -> None:
        client = new_client(engine_server.hosts)
        try:
            assert {path: client.get(path)[0] for path in expected} == expected
        finally:
            stop_client(client)

    client = new_client(engine_server.hosts)
    try:
        client.create("/c-null", None)
        client.create("/c-empty", b"")
        client.create("/s-null", b"x")
        client.create("/s-empty", b"x")
        client.set("/s-null", None)
        client.set("/s-empty", b"")
    finally:
        stop_client(client)
    engine_server.restart()
    assert not [n for n in os.listdir(engine_server.data_dir) if n.startswith("snapshot.")]
    check()
    client = new_client(engine_server.hosts)
    try:
        for i in range(60):
            client.create(f"/filler-{i}", b"")
    finally:
        stop_client(client)
    assert [n for n in os.listdir(engine_server.data_dir) if n.startswith("snapshot.")]
    engine_server.restart()
    check()


def test_a_server_restarted_before_each_snapshot_is_due_still_takes_one(
    engine_server: EngineCoordinator,
) -> None:
    """Fewer transactions than snapshot_every (50) between restarts, many restarts: the
    transactions replayed at each start count toward the next snapshot, so one is taken
    and a restart replays a bounded log (it counted from 0 at each start: no snapshot
    ever, and the soak's coordinator replayed a log that grew with every kill)."""
    for round_ in range(5):
        client = new_client(engine_server.hosts)
        try:
            client.ensure_path("/rounds")
            for i in range(20):
                client.create(f"/rounds/r{round_}-{i:02d}", b"")
        finally:
            stop_client(client)
        engine_server.kill()
        engine_server.start()
    names = sorted(os.listdir(engine_server.data_dir))
    assert [n for n in names if n.startswith("snapshot.")], names
    replayed = [int(line.split("replayed=")[1].split()[0])
                for line in engine_server.log_text().splitlines() if "replayed=" in line]
    assert len(replayed) == 6 and max(replayed) < 50 + 2 * 25, replayed
    client = new_client(engine_server.hosts)
    try:
        assert len(client.get_children("/rounds")) == 100
    finally:
        stop_client(client)


def test_torn_log_tail_is_dropped(engine_server: EngineCoordinator) -> None:
    client = new_client(engine_server.hosts)
    try:
        client.create("/kept", b"yes")
    finally:
        stop_client(client)
    engine_server.kill()
    logs = sorted(p for p in engine_server.data_dir.iterdir() if p.name.startswith("log."))
    with open(logs[-1], "ab") as fh:
        fh.write(b"\x00\x00\x00\x40garbage-from-a-torn-write")
    engine_server.start()
    client = new_client(engine_server.hosts)
    try:
        assert client.get("/kept")[0] == b"yes"
        client.create("/after-torn", b"")
    finally:
        stop_client(client)
    assert "truncating torn log tail" in engine_server.log_text()


def test_data_files_are_private(engine_server: EngineCoordinator) -> None:
    client = new_client(engine_server.hosts)
    try:
        client.create("/private", b"")
    finally:
        stop_client(client)
    assert stat.S_IMODE(engine_server.data_dir.stat().st_mode) == 0o700
    for path in engine_server.data_dir.iterdir():
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path


def test_second_coordinator_on_the_same_data_dir_refuses(
        engine_server: EngineCoordinator, tmp_path: Path) -> None:
    other = EngineCoordinator(tmp_path / "other")
    other.data_dir = engine_server.data_dir
    with pytest.raises(AssertionError, match="exited early"):
        other.start()
    assert "another coordinator holds the data dir" in other.log_text()


def test_serve_runs_in_process_and_stops_on_request(tmp_path: Path) -> None:
    import asyncio

    from engine.coordinator.server import serve

    port_file = tmp_path / "port"
    result: list[int] = []
    loop_box: list[asyncio.AbstractEventLoop] = []
    stop_box: list[asyncio.Event] = []

    async def run() -> None:
        stop = asyncio.Event()
        loop_box.append(asyncio.get_running_loop())
        stop_box.append(stop)
        result.append(await serve(str(tmp_path / "data"), port_file=str(port_file),
                                  stop=stop))

    thread = threading.Thread(target=lambda: asyncio.run(run()))
    thread.start()
    try:
        wait_until(port_file.exists, 15, "the port file")
        client = new_client(f"127.0.0.1:{int(port_file.read_text())}")
        try:
            client.create("/in-process", b"yes")
        finally:
            stop_client(client)
    finally:
        wait_until(lambda: stop_box, 15, "the server to start")
        loop_box[0].call_soon_threadsafe(stop_box[0].set)
        thread.join(15)
    assert result == [0]
    assert stat.S_IMODE(port_file.stat().st_mode) == 0o600


def test_main_rejects_a_bad_tick_or_session_timeout_range(tmp_path: Path) -> None:
    from engine.coordinator import main

    assert main(["--data-dir", str(tmp_path), "--tick-ms", "0"]) == 2
    assert main(["--data-dir", str(tmp_path), "--min-session-timeout-ms", "5000",
                 "--max-session-timeout-ms", "1000"]) == 2
    assert main(["--data-dir", str(tmp_path), "--max-session-timeout-ms", "300"]) == 2


def test_log_grows_past_its_preallocation_and_recovers(
        engine_server: EngineCoordinator) -> None:
    client = new_client(engine_server.hosts)
    big = b"z" * (1000 * 1024)
    try:
        client.create("/grow", b"")
        results = [client.set_async("/grow", big[:-i] if i else big) for i in range(20)]
        for result in results:
            result.get(timeout=30)
        final = client.get("/grow")[1]
    finally:
        stop_client(client)
    logs = [p for p in engine_server.data_dir.iterdir() if p.name.startswith("log.")]
    assert max(p.stat().st_size for p in logs) > 16 * 1024 * 1024
    engine_server.restart()
    client = new_client(engine_server.hosts)
    try:
        data, stat = client.get("/grow")
        assert data == big[:-19] and stat == final
    finally:
        stop_client(client)
