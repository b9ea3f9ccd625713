"""Test harness: start our coordinator, Debian's ZooKeeper or a 3-server ensemble of it as
real OS processes, wait on conditions with deadlines, and talk raw jute to a server when
kazoo has no API for an op.

Used by conftest.py and by bench/bench_coordinator.py.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from engine.coordinator import jute

ROOT = Path(__file__).resolve().parents[2]
ZOOKEEPER_JARS = Path("/usr/share/java")
ZOOKEEPER_JAR = ZOOKEEPER_JARS / "zookeeper.jar"


def zookeeper_installed() -> bool:
    return ZOOKEEPER_JAR.exists() and shutil.which("java") is not None


def require_zookeeper() -> None:
    """For a test that runs against Debian's ZooKeeper: without it the test is skipped
    with the reason, except in CI (CI=true), where the missing server fails the run."""
    if zookeeper_installed():
        return
    import pytest

    reason = (
        f"Debian's zookeeper package is not installed ({ZOOKEEPER_JAR} and java): "
        "scripts/servers installs it"
    )
    if os.environ.get("CI") == "true":
        pytest.fail(f"{reason}; CI runs every real-ZooKeeper test", pytrace=False)
    pytest.skip(reason)


def wait_until(predicate: Callable[[], Any], timeout: float, what: str = "condition",
               interval: float = 0.01) -> Any:
    """Poll ``predicate`` until it returns something truthy; fail after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def four_letter_word(port: int, word: bytes, timeout: float = 5.0) -> str:
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(word)
        chunks = []
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                break
            chunks.append(chunk)
    return b"".join(chunks).decode("utf-8", "replace")


class ServerProcess:
    """A coordinator-compatible server in its own OS process and its own data dir.

    Both kinds get the same tick and session timeout range: by default ZooKeeper's, 2 and
    20 ticks (the built-in coordinator's own default maximum is longer)."""

    kind = "?"

    def __init__(self, workdir: Path, tick_ms: int = 200,
                 min_session_timeout_ms: int | None = None,
                 max_session_timeout_ms: int | None = None) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        self.tick_ms = tick_ms
        self.min_session_timeout_ms = min_session_timeout_ms or 2 * tick_ms
        self.max_session_timeout_ms = max_session_timeout_ms or 20 * tick_ms
        self.workdir = workdir
        self.data_dir = workdir / "data"
        self.log_path = workdir / "server.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.port = 0

    @property
    def hosts(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> None:
        raise NotImplementedError

    def kill(self) -> None:
        """SIGKILL, as a crash would."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)
        self.proc = None

    def stop(self) -> int | None:
        """SIGTERM and wait; SIGKILL if it does not go. Returns the exit code."""
        if self.proc is None:
            return None
        proc, self.proc = self.proc, None
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
        return proc.returncode

    def restart(self) -> None:
        self.kill()
        self.start()

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def _wait_ready(self, timeout: float = 60.0) -> None:
        def ready() -> bool:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(f"{self.kind} exited early:\n{self.log_text()[-3000:]}")
            try:
                return self._serving()
            except OSError:
                return False

        wait_until(ready, timeout, f"{self.kind} to serve", 0.05)
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise AssertionError(f"{self.kind} exited early:\n{self.log_text()[-3000:]}")

    def _serving(self) -> bool:
        # ZooKeeper answers ruok before it serves sessions; srvr says when it does
        return "Mode:" in four_letter_word(self.port, b"srvr", 1.0)


class EngineCoordinator(ServerProcess):
    """``python -m engine.coordinator`` on a free port picked by the server itself."""

    kind = "engine"

    def __init__(self, workdir: Path, tick_ms: int = 200, snapshot_every: int = 10000,
                 min_session_timeout_ms: int | None = None,
                 max_session_timeout_ms: int | None = None) -> None:
        super().__init__(workdir, tick_ms, min_session_timeout_ms, max_session_timeout_ms)
        self.snapshot_every = snapshot_every
        self.port_file = workdir / "port"
        self.fixed_port = 0

    def start(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.port_file.unlink()
        env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "engine.coordinator", "--data-dir", str(self.data_dir),
                 "--port", str(self.fixed_port), "--port-file", str(self.port_file),
                 "--tick-ms", str(self.tick_ms),
                 "--min-session-timeout-ms", str(self.min_session_timeout_ms),
                 "--max-session-timeout-ms", str(self.max_session_timeout_ms),
                 "--snapshot-every", str(self.snapshot_every)],
                stdout=log, stderr=log, env=env, cwd=str(self.workdir))

        def port_written() -> bool:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(f"coordinator exited early:\n{self.log_text()[-3000:]}")
            return self.port_file.exists()

        wait_until(port_written, 30, "the port file", 0.02)
        self.port = int(self.port_file.read_text())
        self.fixed_port = self.port  # a restart keeps the address, as clients expect
        self._wait_ready()


class RealZooKeeper(ServerProcess):
    """Debian's ZooKeeper 3.8 standalone, with TTL nodes enabled and every 4lw allowed.

    ZooKeeper cannot be told to pick its own port, so the harness picks a free one; should
    another process bind it first, ZooKeeper fails to bind and exits, and the harness
    tries again with another port (a restart keeps its port: clients expect the address).
    It counts as serving only once the server on the port reports this one's data dir.
    ``extended_types=False`` starts it as ZooKeeper's default does, without TTL nodes."""

    kind = "zookeeper"
    bind_attempts = 5

    def __init__(self, workdir: Path, tick_ms: int = 200,
                 min_session_timeout_ms: int | None = None,
                 max_session_timeout_ms: int | None = None,
                 extended_types: bool = True) -> None:
        super().__init__(workdir, tick_ms, min_session_timeout_ms, max_session_timeout_ms)
        self.extended_types = extended_types
        self._log_start = 0  # where this launch's lines begin in the log

    def start(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        restart = self.port != 0
        for attempt in range(self.bind_attempts):
            if not restart:
                self.port = free_port()
            self._launch()
            try:
                self._wait_ready()
                return
            except AssertionError:
                lost_the_port = "Address already in use" in self.log_text()[self._log_start :]
                self.kill()
                if not lost_the_port or attempt == self.bind_attempts - 1:
                    raise
                if restart:
                    time.sleep(0.5)  # the same port again, once its holder lets it go

    def _launch(self) -> None:
        config = self.workdir / "zoo.cfg"
        config.write_text(
            f"tickTime={self.tick_ms}\ndataDir={self.data_dir}\nclientPort={self.port}\n"
            f"minSessionTimeout={self.min_session_timeout_ms}\n"
            f"maxSessionTimeout={self.max_session_timeout_ms}\n"
            "clientPortAddress=127.0.0.1\nadmin.enableServer=false\n"
            "4lw.commands.whitelist=*\nmaxClientCnxns=0\n")
        jars = ["zookeeper.jar", "zookeeper-jute.jar", "slf4j-api.jar", "slf4j-simple.jar",
                "netty-all.jar", "metrics-core.jar", "commons-cli.jar", "snappy-java.jar"]
        classpath = ":".join(str(ZOOKEEPER_JARS / jar) for jar in jars)
        self._log_start = len(self.log_text())
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                ["java", "-Xmx256m", "-XX:+UseSerialGC", "-XX:TieredStopAtLevel=1",
                 f"-Dzookeeper.extendedTypesEnabled={str(self.extended_types).lower()}",
                 "-Dznode.container.checkIntervalMs=100",
                 "-Dzookeeper.admin.enableServer=false",
                 "-cp", classpath, "org.apache.zookeeper.server.ZooKeeperServerMain",
                 str(config)],
                stdout=log, stderr=log, cwd=str(self.workdir))

    def _serving(self) -> bool:
        # Another server may answer on the port while this one fails to bind it.
        return super()._serving() and str(self.data_dir) in four_letter_word(
            self.port, b"conf", 1.0)


class RealZooKeeperEnsemble:
    """Three of Debian's ZooKeeper 3.8 servers in a quorum on 127.0.0.1, run by
    scripts/zk-ensemble in ``workdir`` (tickTime 2000: sessions of 4-40 s). A test kills
    single servers (SIGKILL, as a crash would), starts them again, and stops them all in
    its finally.

    The script derives all nine ports (client, quorum, election) from one base port; the
    harness picks a base below the kernel's ephemeral range whose nine ports are free,
    and should another process take one first, tries another base."""

    script = ROOT / "scripts" / "zk-ensemble"
    servers = (1, 2, 3)
    attempts = 5

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.base_port = 0

    @property
    def hosts(self) -> str:
        return ",".join(f"127.0.0.1:{self.client_port(sid)}" for sid in self.servers)

    def client_port(self, sid: int) -> int:
        return self.base_port + sid - 1

    def _run(self, *args: str, timeout: float = 90.0) -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(self.script), *args, "--dir", str(self.workdir)],
                              capture_output=True, text=True, timeout=timeout)

    def start(self) -> None:
        """Start the three servers and wait for their quorum (the script's deadline)."""
        import random

        for attempt in range(self.attempts):
            self.base_port = random.randrange(10_000, 30_000)
            ports = [self.base_port + offset + i for offset in (0, 707, 1707) for i in range(3)]
            if not all(_port_free(port) for port in ports):
                continue
            proc = self._run("start", "--base-port", str(self.base_port))
            if proc.returncode == 0:
                assert proc.stdout.strip() == self.hosts, proc.stdout
                return
            self.stop()
            lost_a_port = "in use" in proc.stderr
            if not lost_a_port or attempt == self.attempts - 1:
                raise AssertionError(f"zk-ensemble start failed:\n{proc.stderr[-4000:]}")
            shutil.rmtree(self.workdir)
        raise AssertionError("no free base port for the ensemble")

    def restart(self, sid: int | None = None) -> None:
        """Start the servers that are down (or only ``sid``) and wait until they serve,
        in a quorum."""
        proc = self._run("start", *(["--server", str(sid)] if sid is not None else []))
        if proc.returncode != 0:
            raise AssertionError(f"zk-ensemble start failed:\n{proc.stderr[-4000:]}")

    def stop(self) -> None:
        """Stop every server (SIGTERM, then SIGKILL); a no-op when none runs."""
        if self.workdir.exists():
            self._run("stop")

    def pid(self, sid: int) -> int | None:
        """The server's pid while it runs (not a zombie), else None."""
        try:
            pid = int((self.workdir / f"zk{sid}" / "pid").read_text())
            stat = Path(f"/proc/{pid}/stat").read_text()
        except (OSError, ValueError):
            return None
        return None if stat.rsplit(")", 1)[1].split()[0] in ("Z", "X") else pid

    def kill(self, sid: int) -> None:
        """SIGKILL server ``sid`` and wait until it is gone."""
        pid = self.pid(sid)
        assert pid is not None, f"server {sid} is not running"
        os.kill(pid, signal.SIGKILL)
        wait_until(lambda: self.pid(sid) is None, 10, f"server {sid} to die", 0.01)

    def mode(self, sid: int) -> str:
        """leader, follower, down, or not serving (up without a quorum)."""
        if self.pid(sid) is None:
            return "down"
        try:
            reply = four_letter_word(self.client_port(sid), b"srvr", 1.0)
        except OSError:
            return "not serving"
        for line in reply.splitlines():
            if line.startswith("Mode:"):
                return line.split(":", 1)[1].strip()
        return "not serving"

    def modes(self) -> dict[int, str]:
        return {sid: self.mode(sid) for sid in self.servers}

    def leader(self) -> int | None:
        return next((sid for sid, m in self.modes().items() if m == "leader"), None)

    def serves(self) -> bool:
        """A leader and a majority of the servers leading or following."""
        modes = self.modes().values()
        serving = [m for m in modes if m in ("leader", "follower")]
        return "leader" in serving and len(serving) > len(self.servers) // 2

    def log_text(self, sid: int) -> str:
        try:
            return (self.workdir / f"zk{sid}" / "server.log").read_text(errors="replace")
        except OSError:
            return ""


def _port_free(port: int) -> bool:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def make_server(kind: str, workdir: Path | None = None, tick_ms: int = 200,
                min_session_timeout_ms: int | None = None,
                max_session_timeout_ms: int | None = None) -> ServerProcess:
    workdir = workdir or Path(tempfile.mkdtemp(prefix=f"coord-{kind}-"))
    limits = (min_session_timeout_ms, max_session_timeout_ms)
    if kind == "engine":
        return EngineCoordinator(workdir, tick_ms, 10000, *limits)
    return RealZooKeeper(workdir, tick_ms, *limits)


class _SessionCreated(logging.Handler):
    """Keeps the negotiated timeouts kazoo logs, at its BLATHER level, on each connect."""

    def __init__(self) -> None:
        super().__init__(level=1)
        self.timeouts: list[int] = []

    def emit(self, record: logging.LogRecord) -> None:
        if str(record.msg).startswith("Session created"):
            self.timeouts.append(int(record.args[2]))  # type: ignore[index]


def kazoo_session_timeout_ms(hosts: str, timeout_s: float) -> int:
    """The session timeout the server grants a kazoo client that asks for ``timeout_s``
    (kazoo keeps it nowhere but in that log line)."""
    from kazoo.client import KazooClient

    logger = logging.getLogger(f"zkharness.kazoo.{next(_loggers)}")
    logger.setLevel(1)
    logger.propagate = False
    handler = _SessionCreated()
    logger.addHandler(handler)
    client = KazooClient(hosts=hosts, timeout=timeout_s, logger=logger)
    try:
        client.start(timeout=15)
        client.stop()
    finally:
        client.close()
        logger.removeHandler(handler)
    return handler.timeouts[0]


_loggers = itertools.count()


# ---------------------------------------------------------------------------- raw jute


class RawClient:
    """A minimal blocking ZooKeeper client speaking jute directly (for ops kazoo lacks:
    addWatch, setWatches, createTTL, getEphemerals, raw frames). Not thread-safe."""

    def __init__(self, port: int, timeout_ms: int = 4000, session_id: int = 0,
                 passwd: bytes = b"\0" * 16, last_zxid: int = 0) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.events: list[tuple[int, int, str]] = []
        self.last_zxid = last_zxid
        self.xid = 0
        self.send_frame(jute.ConnectRequest(0, last_zxid, timeout_ms, session_id, passwd).encode())
        self.connect_response = jute.ConnectResponse.decode(self.read_frame())
        self.session_id = self.connect_response.session_id
        self.passwd = self.connect_response.passwd

    def send_frame(self, payload: bytes) -> None:
        self.sock.sendall(jute.frame(payload))

    def _read_exact(self, length: int) -> bytes:
        chunks = []
        while length:
            chunk = self.sock.recv(length)
            if not chunk:
                raise ConnectionError("server closed the connection")
            chunks.append(chunk)
            length -= len(chunk)
        return b"".join(chunks)

    def read_frame(self) -> bytes:
        length = int.from_bytes(self._read_exact(4), "big", signed=True)
        return self._read_exact(length)

    def call(self, op: int, record: jute.Record, xid: int | None = None
             ) -> tuple[int, int, jute.Reader]:
        """Send one request; return (err, zxid, reader over the body); collect events."""
        if xid is None:
            self.xid += 1
            xid = self.xid
        self.sock.sendall(jute.encode_request(xid, op, record))
        while True:
            reader = jute.Reader(self.read_frame())
            reply_xid, zxid, err = jute.decode_reply_header(reader)
            if reply_xid == jute.NOTIFICATION_XID:
                event_type, state = reader.read_int(), reader.read_int()
                self.events.append((event_type, state, reader.read_path()))
                continue
            if zxid > 0:
                self.last_zxid = zxid
            assert reply_xid == xid, (reply_xid, xid)
            return err, zxid, reader

    def poll_events(self, timeout: float) -> None:
        """Read any watch notifications that arrive within ``timeout`` seconds."""
        self.sock.settimeout(timeout)
        try:
            while True:
                reader = jute.Reader(self.read_frame())
                reply_xid, _zxid, _err = jute.decode_reply_header(reader)
                if reply_xid == jute.NOTIFICATION_XID:
                    event_type, state = reader.read_int(), reader.read_int()
                    self.events.append((event_type, state, reader.read_path()))
        except TimeoutError:
            pass
        finally:
            self.sock.settimeout(10)

    def wait_events(self, count: int, timeout: float = 5.0) -> list[tuple[int, int, str]]:
        """Wait for ``count`` events in all (pinging, so the session stays alive)."""
        deadline = time.monotonic() + timeout
        next_ping = time.monotonic() + 0.5
        while len(self.events) < count and time.monotonic() < deadline:
            if time.monotonic() > next_ping:
                self.sock.sendall(jute.encode_request(jute.PING_XID, jute.OpCode.PING,
                                                      jute.EmptyRequest()))
                next_ping = time.monotonic() + 0.5
            self.poll_events(0.05)
        return self.events

    def ping(self) -> None:
        self.call(jute.OpCode.PING, jute.EmptyRequest(), xid=jute.PING_XID)

    def close(self, end_session: bool = True) -> None:
        with contextlib.suppress(OSError):
            if end_session:
                self.call(jute.OpCode.CLOSE_SESSION, jute.EmptyRequest())
        self.sock.close()
