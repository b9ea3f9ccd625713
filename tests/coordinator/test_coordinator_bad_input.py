"""Bad input: oversized, negative, malformed and half frames, unknown op codes, garbage.
The offending connection gets an error or is closed; everyone else is served; nothing
is lost. A hypothesis test fuzzes the frame decoder, pure and live."""

from __future__ import annotations

import contextlib
import random
import socket
import struct
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from kazoo.client import KazooClient
from zkharness import EngineCoordinator, RawClient, ServerProcess, wait_until

from conftest import new_client, stop_client
from engine.coordinator import jute
from engine.coordinator.errors import JuteError
from engine.coordinator.jute import ConnectRequest, EmptyRequest, OpCode


def _closed(sock: socket.socket, timeout: float = 5.0) -> bool:
    """True once the server has closed the socket (EOF or reset) within ``timeout``."""
    sock.settimeout(timeout)
    try:
        while True:
            if not sock.recv(65536):
                return True
    except (ConnectionResetError, BrokenPipeError):
        return True
    except TimeoutError:
        return False


def _connected_socket(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    sock.sendall(jute.frame(ConnectRequest(0, 0, 4000, 0, bytes(16)).encode()))
    length = struct.unpack("!i", sock.recv(4))[0]
    while length:
        length -= len(sock.recv(length))
    return sock


@pytest.mark.parametrize("length", [jute.MAX_PACKET_LENGTH + 1, 0x7FFFFFFF, -1, -5])
def test_bad_frame_length_closes_only_that_connection(
        server: ServerProcess, zk: KazooClient, length: int) -> None:
    zk.create("/safe", b"kept")
    sock = _connected_socket(server.port)
    sock.sendall(struct.pack("!i", length) + b"\0" * 64)
    assert _closed(sock)
    sock.close()
    assert zk.get("/safe")[0] == b"kept"


def test_garbage_instead_of_a_handshake_is_closed(server: ServerProcess,
                                                   zk: KazooClient) -> None:
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=5)
    sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    assert _closed(sock)
    sock.close()
    zk.create("/after-garbage", b"")


def test_unknown_op_code_gets_unimplemented_then_a_close(server: ServerProcess,
                                                         zk: KazooClient) -> None:
    client = RawClient(server.port)
    err, _, _ = client.call(999, EmptyRequest())
    assert err == jute.Err.UNIMPLEMENTED
    assert _closed(client.sock)
    client.sock.close()
    zk.create("/after-unknown-op", b"")


def test_truncated_record_gets_an_error_or_a_close(server: ServerProcess,
                                                   zk: KazooClient) -> None:
    sock = _connected_socket(server.port)
    # a create whose path claims 100 bytes but carries 3
    sock.sendall(jute.frame(struct.pack("!ii", 1, OpCode.CREATE) + struct.pack("!i", 100) + b"/ab"))
    sock.settimeout(5)
    try:
        reply = sock.recv(64)
    except (ConnectionResetError, TimeoutError):
        reply = b""
    if reply:  # ZooKeeper's way: an error reply for that xid
        _xid, _zxid, err = struct.unpack("!iqi", reply[4:20])
        assert err != 0
    sock.close()
    zk.create("/after-truncated", b"")


def test_half_frame_then_silence_does_not_block_others(server: ServerProcess,
                                                       zk: KazooClient) -> None:
    hung = _connected_socket(server.port)
    hung.sendall(struct.pack("!i", 1000) + b"\0" * 10)  # and nothing more
    half_hello = socket.create_connection(("127.0.0.1", server.port), timeout=5)
    half_hello.sendall(struct.pack("!i", 44) + b"\0" * 5)
    started = time.monotonic()
    for i in range(20):
        zk.create(f"/busy{i}", b"")
    assert time.monotonic() - started < 5
    if server.kind == "engine":  # the silent session times out, the handshake too
        assert _closed(hung, 20 * server.tick_ms / 1000 + 5)
        assert _closed(half_hello, 20 * server.tick_ms / 1000 + 5)
    hung.close()
    half_hello.close()


def test_bad_connections_log_one_line_each(tmp_path: object) -> None:
    from pathlib import Path

    assert isinstance(tmp_path, Path)
    server = EngineCoordinator(tmp_path)
    server.start()
    try:
        for _ in range(3):
            sock = socket.create_connection(("127.0.0.1", server.port), timeout=5)
            sock.sendall(struct.pack("!i", -7))
            assert _closed(sock)
            sock.close()
        wait_until(lambda: server.log_text().count("closing connection") >= 3, 5, "log lines")
        assert server.log_text().count("bad frame length") == 3
    finally:
        server.stop()


# -- fuzzing -------------------------------------------------------------------------------


@settings(max_examples=2000, deadline=None)
@given(st.binary(max_size=300))
def test_decoder_raises_only_jute_error(payload: bytes) -> None:
    with contextlib.suppress(JuteError):
        jute.decode_request(payload)
    with contextlib.suppress(JuteError):
        ConnectRequest.decode(payload)


_REQUEST_OPS = [op for op in OpCode if jute.is_known_op(op)]


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(_REQUEST_OPS), st.binary(max_size=80), st.integers(0, 80))
def test_decoder_survives_mutated_valid_requests(op: int, noise: bytes, cut: int) -> None:
    valid = {
        OpCode.CREATE: jute.CreateRequest("/a", b"d", jute.OPEN_ACL_UNSAFE, 0),
        OpCode.SET_DATA: jute.SetDataRequest("/a", b"d", -1),
        OpCode.MULTI: jute.MultiRequest(((OpCode.DELETE, jute.DeleteRequest("/a", -1)),)),
    }.get(op)
    body = jute.encode_request(1, op, valid)[4:] if valid else struct.pack("!ii", 1, op)
    mutated = body[:cut] + noise
    with contextlib.suppress(JuteError):
        jute.decode_request(mutated)


@pytest.fixture(scope="module")
def fuzz_target(tmp_path_factory: pytest.TempPathFactory) -> EngineCoordinator:
    server = EngineCoordinator(tmp_path_factory.mktemp("fuzz"))
    server.start()
    yield server  # type: ignore[misc]
    server.stop()


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(handshake=st.booleans(), frames=st.lists(st.binary(max_size=64), max_size=4),
       tail=st.binary(max_size=16))
def test_live_server_survives_garbage(fuzz_target: EngineCoordinator, handshake: bool,
                                      frames: list[bytes], tail: bytes) -> None:
    sock = (_connected_socket(fuzz_target.port) if handshake
            else socket.create_connection(("127.0.0.1", fuzz_target.port), timeout=5))
    with contextlib.suppress(OSError):  # the server may already have closed it
        sock.sendall(b"".join(jute.frame(f) for f in frames) + tail)
    sock.close()
    client = RawClient(fuzz_target.port)
    try:
        err, _, _ = client.call(OpCode.EXISTS, jute.WatchRequest("/", False))
        assert err == 0
    finally:
        client.close()


def test_fuzzed_server_still_has_its_data(fuzz_target: EngineCoordinator) -> None:
    """Data written and a session opened before a round of garbage connections (raw,
    and after a handshake) are all still there after it, in the same server process."""
    before = new_client(fuzz_target.hosts)
    try:
        before.create("/fuzz-survivor", b"written before the garbage", makepath=True)
        before.create("/fuzz-survivor/child", b"c")
        session = before.client_id
        assert fuzz_target.proc is not None
        pid = fuzz_target.proc.pid
        rng = random.Random(17)
        for i in range(100):
            garbage = rng.randbytes(rng.randrange(1, 200))
            if i % 2:
                sock = _connected_socket(fuzz_target.port)
                garbage = jute.frame(garbage) if i % 4 == 1 else garbage
            else:
                sock = socket.create_connection(("127.0.0.1", fuzz_target.port), timeout=5)
            with contextlib.suppress(OSError):  # the server may already have closed it
                sock.sendall(garbage)
            sock.close()
        assert fuzz_target.proc.poll() is None and fuzz_target.proc.pid == pid
        assert before.client_id == session and before.connected
        assert before.get("/fuzz-survivor")[0] == b"written before the garbage"
        assert before.get_children("/fuzz-survivor") == ["child"]
        after = new_client(fuzz_target.hosts)
        try:
            assert after.get("/fuzz-survivor/child")[0] == b"c"
        finally:
            stop_client(after)
    finally:
        stop_client(before)
