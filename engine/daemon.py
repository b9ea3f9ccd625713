"""The daemon: starts and supervises the coordinator and the broker processes.

``engine start`` runs it in the background (a new session, logs in the data
dir) and returns once every broker is registered; ``--foreground`` runs it in
the calling terminal. It holds an exclusive lock on ``engine.lock`` for its
whole life, so a second daemon on the same data dir is refused. It writes
``engine.json`` (its pid, the coordinator's address, the broker ids, the metrics
URL), through which clients find it, and pid files under ``run/``. It serves the
Prometheus metrics on 127.0.0.1 (engine.metrics) from a thread of its own.

Supervision: a child that exits while the daemon runs is restarted after a
short backoff (the coordinator on the same port, so clients' addresses stay
valid). SIGTERM or SIGINT stops everything gracefully: brokers first (they
seal, drain and flush their partitions), then the coordinator; a child that
does not exit within its grace period is killed.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from kazoo.client import KazooClient
from kazoo.exceptions import NoNodeError

from engine import acl, shm, stale_rings
from engine import metadata as md
from engine.coordinator.session import SessionLimits
from engine.datadir import (
    DataDir,
    data_dir_errors,
    make_private_dir,
    pid_alive,
    write_private_file,
)
from engine.errors import (
    ConfigError,
    DaemonAlreadyRunningError,
    DaemonNotRunningError,
    EngineError,
    EngineTimeoutError,
    UnknownTopicError,
)
from engine.kafka.sasl import KafkaAuth, ensure_credential
from engine.ring import Ring

if TYPE_CHECKING:
    from engine.metrics import MetricsServer

log = logging.getLogger("engine.daemon")

START_TIMEOUT_S = 30.0
STOP_GRACE_S = 30.0
SUPERVISE_EVERY_S = 0.5
STOP_CHECK_S = 0.1  # how often the supervisor looks for a stop asked by a signal
#: A broker that does not stop in time is sent this first: it writes every thread's
#: stack to its log (faulthandler), so that the log says where it hung.
DUMP_STACKS_SIGNAL = signal.SIGUSR1


@dataclass
class Child:
    """A supervised process: how to start it, and its current incarnation."""

    name: str
    argv: list[str]
    log_path: Path
    proc: subprocess.Popen[bytes] | None = None
    restarts: int = 0
    started_at: float = 0.0
    log_file: IO[bytes] | None = field(default=None, repr=False)

    def start(self, run_dir: Path) -> None:
        if self.log_file is None:
            fd = os.open(self.log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
            self.log_file = os.fdopen(fd, "ab", buffering=0)
        self.proc = subprocess.Popen(
            self.argv,
            stdin=subprocess.DEVNULL,
            stdout=self.log_file,
            stderr=self.log_file,
        )
        self.started_at = time.monotonic()
        write_private_file(run_dir / f"{self.name}.pid", f"{self.proc.pid}\n".encode())

    def stop(self, grace_s: float) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(grace_s)
        except subprocess.TimeoutExpired:
            if self.name.startswith("broker-"):
                log.error(
                    "%s did not stop in %.0f s: killing it (its threads' stacks are at "
                    "the end of %s)", self.name, grace_s, self.log_path,
                )  # fmt: skip
                self.proc.send_signal(DUMP_STACKS_SIGNAL)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    self.proc.wait(0.5)  # written at once, from the signal handler
            else:
                log.error("%s did not stop in %.0f s: killing it", self.name, grace_s)
            self.proc.kill()
            self.proc.wait()


class Daemon:
    """The supervisor process of one data dir."""

    def __init__(
        self,
        data_dir: DataDir,
        brokers: int,
        coordinator: str | None,
        cluster_config: dict[str, Any] | None = None,
        session_limits: SessionLimits | None = None,
        metrics_port: int | None = None,
        kafka_port: int | None = None,
        kafka_auth: KafkaAuth = KafkaAuth.SASL,
    ) -> None:
        """``kafka_port``: broker N's Kafka listener takes port kafka_port + N - 1 (None:
        any free port, the same across its restarts where it can)."""
        self.data_dir = data_dir
        self.broker_count = brokers
        #: The metrics' port: None takes the last run's where it is free (a Prometheus
        #: configured for it keeps finding it), else any; 0 any.
        self.metrics_port = metrics_port
        self.metrics: MetricsServer | None = None
        self.kafka_port = kafka_port
        self.kafka_auth = kafka_auth
        self.external_coordinator = coordinator
        self.cluster_config = cluster_config or {}
        # The built-in coordinator's tick and session timeout range (engine start's
        # --tick-ms, --min/--max-session-timeout-ms); an external one has its own.
        self.session_limits = session_limits or SessionLimits()
        self.children: list[Child] = []
        self.hosts = coordinator or ""
        self._stop_requested = False  # set by _on_signal
        self._lock_fd = -1

    # -- lock --------------------------------------------------------------

    def acquire_lock(self) -> None:
        with data_dir_errors(self.data_dir.root):
            make_private_dir(self.data_dir.root)
            fd = os.open(self.data_dir.lock_file, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise DaemonAlreadyRunningError(
                f"an engine daemon already runs for data_dir={self.data_dir.root} "
                f"(lock {self.data_dir.lock_file}); stop it with "
                f"`engine stop --data-dir {self.data_dir.root}`"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._lock_fd = fd

    # -- run ---------------------------------------------------------------

    def run(self) -> int:
        """Start everything, supervise until SIGTERM/SIGINT, stop everything."""
        self.acquire_lock()
        dd = self.data_dir
        with data_dir_errors(dd.root):
            for d in (dd.log_dir, dd.run_dir, dd.coordinator_dir):
                make_private_dir(d)
            dd.ensure_secret()
            ensure_credential(dd)  # the Kafka clients' (engine.kafka.sasl)
            write_private_file(dd.run_dir / "daemon.pid", f"{os.getpid()}\n".encode())
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)
        try:
            self._start_metrics()
            self._start_children()
            self._write_runtime(ready=True)
            log.info("engine ready: coordinator %s, %d brokers", self.hosts, self.broker_count)
            self._supervise()
        finally:
            if self.metrics is not None:
                self.metrics.close()
            self._stop_children()
            with contextlib.suppress(FileNotFoundError):
                dd.runtime_file.unlink()
            log.info("engine stopped")
        return 0

    def _start_children(self) -> None:
        dd = self.data_dir
        py = sys.executable
        if self.external_coordinator is None:
            port_file = dd.run_dir / "coordinator.port"
            # The port of the last run, kept where it is free: clients that were open
            # across a restart find the coordinator where it was (and follow it through
            # the runtime file when it had to move).
            previous = _read_port(port_file)
            port_file.unlink(missing_ok=True)
            coordinator = Child(
                "coordinator",
                [
                    py, "-m", "engine.coordinator",
                    "--data-dir", str(dd.coordinator_dir),
                    "--port", str(previous or 0), "--port-fallback",
                    "--port-file", str(port_file),
                    *self.session_limits.argv(),
                ],
                dd.log_dir / "coordinator.log",
            )  # fmt: skip
            coordinator.start(dd.run_dir)
            self.children.append(coordinator)
            self._coordinator_started(coordinator)
        self._write_runtime(ready=False)
        self._secure_tree()
        zk = md.connect(
            self.data_dir,
            hosts=self.hosts,
            timeout_s=START_TIMEOUT_S,
            external=self.external_coordinator is not None,
        )
        try:
            config = dict(self.cluster_config)
            config.setdefault(shm.BUDGET_KEY, shm.default_budget())
            md.write_cluster_config(zk, config)
            budget, used = int(config[shm.BUDGET_KEY]), md.shm_used(zk)
            log.info(
                "shared-memory budget %s; the rings of the topics take %s",
                shm.format_size(budget),
                shm.format_size(used),
            )
            if used > budget:
                log.warning(
                    "the topics' rings take more than the shared-memory budget (%s > %s): "
                    "no topic can be created until some are deleted",
                    shm.format_size(used),
                    shm.format_size(budget),
                )
            self._forget_dead_registrations(zk)
            wanted = set(range(1, self.broker_count + 1))
            cleaned = stale_rings.drain_and_remove(self.data_dir, keep_brokers=wanted)
            if cleaned.rings:
                log.info(
                    "drained %d rings of brokers this daemon does not run (%d offsets) into "
                    "their logs and removed them", cleaned.rings, cleaned.records,
                )  # fmt: skip
            for broker_id in sorted(wanted):
                argv = [py, "-m", "engine.broker", "--data-dir", str(dd.root)]
                argv += ["--id", str(broker_id), "--kafka-auth", self.kafka_auth.value]
                if self.kafka_port is not None:
                    argv += ["--kafka-port", str(self.kafka_port + broker_id - 1)]
                if self.external_coordinator is not None:
                    argv += ["--coordinator", self.hosts]  # else: the data dir says where
                child = Child(f"broker-{broker_id}", argv, dd.log_dir / f"broker-{broker_id}.log")
                child.start(dd.run_dir)
                self.children.append(child)
            self._write_runtime(ready=False)
            self._wait_until_ready(zk)
        finally:
            zk.stop()
            zk.close()

    def _start_metrics(self) -> None:
        """Serve the Prometheus metrics on 127.0.0.1 (engine.metrics)."""
        from engine.metrics import EngineCollector, MetricsServer  # the daemon's only

        port_file = self.data_dir.run_dir / "metrics.port"
        collector = EngineCollector(
            self.data_dir,
            processes=lambda: {"daemon": os.getpid()}
            | {c.name: c.proc.pid for c in self.children if c.proc is not None},
            brokers=lambda: list(range(1, self.broker_count + 1)),
        )
        port = self.metrics_port if self.metrics_port is not None else _read_port(port_file)
        try:
            self.metrics = MetricsServer(collector, port or 0)
        except OSError as exc:
            if self.metrics_port:  # asked for that port: say why it cannot be had
                raise ConfigError(
                    f"cannot serve metrics on that port: port={self.metrics_port} "
                    f"reason={exc.strerror or exc}"
                ) from None
            self.metrics = MetricsServer(collector, 0)  # the last run's port is taken
        write_private_file(port_file, f"{self.metrics.port}\n".encode())
        log.info("metrics at %s", self.metrics.url)

    def _secure_tree(self) -> None:
        """The engine's ACL on all of its znodes and its paths made, before any broker
        starts (engine/acl.py)."""
        zk = md.connect(
            self.data_dir,
            hosts=self.hosts,
            timeout_s=START_TIMEOUT_S,
            external=self.external_coordinator is not None,
        )
        try:
            acl.secure_tree(zk, self.data_dir)
        finally:
            zk.stop()
            zk.close()

    def _coordinator_started(self, coordinator: Child) -> None:
        """Wait for a (re)started coordinator's port; point the daemon and its runtime file
        there, and keep that port for its next restart."""
        port_file = self.data_dir.run_dir / "coordinator.port"
        port = _wait_for_file(port_file, coordinator, START_TIMEOUT_S)
        self.hosts = f"127.0.0.1:{port}"
        coordinator.argv[coordinator.argv.index("--port") + 1] = port

    def _forget_dead_registrations(self, zk: KazooClient) -> None:
        """Remove broker registrations and the controller node left by the brokers of a
        daemon that died: none of them runs (this daemon holds the data dir's lock), but
        their coordinator sessions may not have expired yet, and the controller election
        would wait for them."""
        for child in md.broker_children(zk):
            with contextlib.suppress(NoNodeError):
                zk.delete(f"{md.BROKER_IDS}/{child}")
        with contextlib.suppress(NoNodeError):
            zk.delete(md.CONTROLLER)

    def _wait_until_ready(self, zk: KazooClient) -> None:
        """Until the brokers this daemon started are registered (their own pids), one of
        them is the controller, and every partition led by one of them has its ring open
        to producers at the partition's leader epoch."""
        deadline = time.monotonic() + START_TIMEOUT_S
        brokers = {
            int(c.name.removeprefix("broker-")): c
            for c in self.children
            if c.name.startswith("broker-")
        }
        waiting_for = "the brokers to register"
        while True:
            for child in self.children:
                if child.proc is not None and child.proc.poll() is not None:
                    raise DaemonNotRunningError(
                        f"{child.name} exited with code {child.proc.returncode} during "
                        f"start-up: see {child.log_path}"
                    )
            pending = self._not_ready(zk, brokers)
            if not pending:
                return
            waiting_for = pending
            if time.monotonic() > deadline:
                raise EngineTimeoutError(
                    f"the daemon was not ready within {START_TIMEOUT_S:.0f} s, waiting for "
                    f"{waiting_for}: see {self.data_dir.log_dir}"
                )
            time.sleep(0.02)

    def _not_ready(self, zk: KazooClient, brokers: dict[int, Child]) -> str:
        """What start-up still waits for ("" when nothing)."""
        registered = md.live_brokers_with_sessions(zk)
        mine = {
            b for b, (info, _) in registered.items()
            if b in brokers and brokers[b].proc is not None
            and int(info.get("pid", 0)) == brokers[b].proc.pid  # type: ignore[union-attr]
        }  # fmt: skip
        if mine != set(brokers):
            return f"brokers {sorted(set(brokers) - mine)} to register"
        try:
            _, stat = zk.get(md.CONTROLLER)
        except NoNodeError:
            return "a controller to be elected"
        if stat.ephemeralOwner not in {session for _, session in registered.values()}:
            return "a controller to be elected"
        unready: list[str] = []
        for topic in md.list_topics(zk):
            try:
                meta = md.read_topic(zk, topic)
            except UnknownTopicError:
                continue
            for p in meta.assignment.replicas:
                state = meta.states.get(p)
                if state is None or state.leader < 0:
                    continue  # not created yet (the controller will), or offline
                ring_name = self.data_dir.ring_name(meta.assignment.topic_id, p, state.leader)
                if state.leader not in brokers or not _ring_ready(ring_name, state.leader_epoch):
                    unready.append(f"{topic}-{p}")
        if unready:
            more = f" and {len(unready) - 5} more" if len(unready) > 5 else ""
            return f"the leaders of {', '.join(unready[:5])}{more}"
        return ""

    def _write_runtime(self, ready: bool) -> None:
        info: dict[str, Any] = {
            "version": 1,
            "pid": os.getpid(),
            "ready": ready,
            "data_dir": str(self.data_dir.root),
            "coordinator": self.hosts,
            "external_coordinator": self.external_coordinator is not None,
            "brokers": list(range(1, self.broker_count + 1)),
            "processes": {c.name: c.proc.pid for c in self.children if c.proc is not None},
            "metrics": self.metrics.url if self.metrics is not None else None,
            "started_at": time.time(),
        }
        write_private_file(self.data_dir.runtime_file, md.encode(info))

    def _on_signal(self, *_: Any) -> None:
        """SIGTERM, SIGINT: stop. Only a flag: a handler may run inside a lock's own
        code in the main thread, and taking that lock again would hang (see
        engine.broker.Broker.on_signal)."""
        self._stop_requested = True

    def _stopped(self, wait_s: float) -> bool:
        """Whether a stop was asked, looking every STOP_CHECK_S for up to wait_s."""
        deadline = time.monotonic() + wait_s
        while not self._stop_requested and time.monotonic() < deadline:
            time.sleep(min(STOP_CHECK_S, max(deadline - time.monotonic(), 0.0)))
        return self._stop_requested

    def _supervise(self) -> None:
        while not self._stopped(SUPERVISE_EVERY_S):
            changed = False
            for child in self.children:
                if child.proc is None or child.proc.poll() is None:
                    continue
                backoff = min(5.0, 0.1 * 2 ** min(child.restarts, 6))
                if time.monotonic() - child.started_at < backoff:
                    continue
                log.warning(
                    "%s exited with code %s: restarting it (restart %d)",
                    child.name,
                    child.proc.returncode,
                    child.restarts + 1,
                )
                child.restarts += 1
                if child.name == "coordinator":
                    (self.data_dir.run_dir / "coordinator.port").unlink(missing_ok=True)
                child.start(self.data_dir.run_dir)
                if child.name == "coordinator":
                    try:
                        self._coordinator_started(child)
                    except EngineError as exc:  # it died again: the next pass restarts it
                        log.warning("the coordinator did not come back: %s", exc)
                changed = True
            if changed:
                self._write_runtime(ready=True)

    def _stop_children(self) -> None:
        brokers = [c for c in self.children if c.name.startswith("broker-")]
        for child in brokers:
            if child.proc is not None and child.proc.poll() is None:
                child.proc.send_signal(signal.SIGTERM)
        for child in brokers:
            child.stop(STOP_GRACE_S)
        for child in self.children:
            child.stop(STOP_GRACE_S)
            (self.data_dir.run_dir / f"{child.name}.pid").unlink(missing_ok=True)
            if child.log_file is not None:
                child.log_file.close()


def _read_port(path: Path) -> int | None:
    try:
        port = int(path.read_text().strip())
    except (OSError, ValueError):
        return None
    return port if 0 < port < 65536 else None


def _ring_ready(name: str, leader_epoch: int) -> bool:
    """Whether the ring ``name`` is open to producers at ``leader_epoch``."""
    try:
        ring = Ring.open(name, populate=False)
    except (FileNotFoundError, EngineError):
        return False
    try:
        status = ring.status()
        return not status.sealed and status.leader_epoch == leader_epoch
    finally:
        ring.close()


def _wait_for_file(path: Path, child: Child, timeout_s: float) -> str:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            text = path.read_text().strip()
            if text:
                return text
        except FileNotFoundError:
            pass
        if child.proc is not None and child.proc.poll() is not None:
            raise DaemonNotRunningError(
                f"{child.name} exited with code {child.proc.returncode} during start-up: "
                f"see {child.log_path}"
            )
        time.sleep(0.01)
    raise EngineTimeoutError(f"{child.name} did not become ready within {timeout_s:.0f} s")


#: Daemons this process started with start_background, by pid: stop() reaps them. (A
#: Popen dropped while its child runs warns "subprocess ... is still running", an
#: error under -W error, as in `pytest bench/`.)
_STARTED: dict[int, subprocess.Popen[bytes]] = {}


def start_background(
    data_dir: DataDir,
    brokers: int,
    coordinator: str | None,
    cluster_config: dict[str, Any] | None = None,
    session_limits: SessionLimits | None = None,
    metrics_port: int | None = None,
    kafka_port: int | None = None,
    kafka_auth: KafkaAuth = KafkaAuth.SASL,
) -> dict[str, Any]:
    """Spawn the daemon detached and wait until it is ready; returns its runtime info."""
    probe = Daemon(data_dir, brokers, coordinator)
    probe.acquire_lock()  # fail fast, with the clear message, if one already runs
    os.close(probe._lock_fd)
    with data_dir_errors(data_dir.root):
        make_private_dir(data_dir.log_dir)
        data_dir.runtime_file.unlink(missing_ok=True)
        log_fd = os.open(
            data_dir.log_dir / "daemon.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600
        )
    argv = [
        sys.executable,
        "-m",
        "engine",
        "start",
        "--foreground",
        "--data-dir",
        str(data_dir.root),
        "--brokers",
        str(brokers),
    ]
    if coordinator:
        argv += ["--coordinator", coordinator]
    config = cluster_config or {}
    if config.get("auto.create.topics.enable"):
        argv += ["--auto-create-topics"]
    if "num.partitions" in config:
        argv += ["--num-partitions", str(config["num.partitions"])]
    if shm.BUDGET_KEY in config:
        argv += ["--shm-budget", str(config[shm.BUDGET_KEY])]
    if session_limits is not None:
        argv += session_limits.argv()  # the same option names as engine start's
    if metrics_port is not None:
        argv += ["--metrics-port", str(metrics_port)]
    argv += ["--kafka-auth", kafka_auth.value]
    if kafka_port is not None:
        argv += ["--kafka-port", str(kafka_port)]
    try:
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=log_fd,
            stderr=log_fd,
            start_new_session=True,
        )
    finally:
        os.close(log_fd)
    deadline = time.monotonic() + START_TIMEOUT_S + 5
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = _tail(data_dir.log_dir / "daemon.log")
            raise DaemonNotRunningError(
                f"the engine daemon exited with code {proc.returncode} during start-up; "
                f"the end of {data_dir.log_dir / 'daemon.log'}:\n{tail}"
            )
        try:
            info = data_dir.read_runtime()
            if info.get("ready") and info.get("pid") == proc.pid:
                _STARTED[proc.pid] = proc
                return info
        except DaemonNotRunningError:
            pass
        time.sleep(0.01)
    proc.terminate()
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(5.0)  # reaped, unless its stop takes longer than that
    raise EngineTimeoutError(f"the engine daemon did not become ready in {START_TIMEOUT_S:.0f} s")


def stop(data_dir: DataDir, timeout_s: float = 60.0) -> bool:
    """SIGTERM the daemon and wait for it to exit; False when none was running."""
    try:
        info = data_dir.read_runtime()
    except DaemonNotRunningError:
        return False
    pid = int(info["pid"])
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    child = _STARTED.get(pid)
    while child.poll() is None if child is not None else pid_alive(pid):
        if time.monotonic() > deadline:
            raise EngineTimeoutError(
                f"the engine daemon (pid {pid}) did not stop in {timeout_s:.0f} s"
            )
        time.sleep(0.02)
    _STARTED.pop(pid, None)  # reaped by poll()
    return True


def clean_up_after_crash(data_dir: DataDir) -> stale_rings.Cleanup:
    """What `engine stop` does when the daemon is not running: stop the processes it left
    (a broker or coordinator whose daemon was killed), drain the rings it left into their
    logs and remove them (engine.stale_rings), remove its runtime file."""
    if not data_dir.root.is_dir():
        return stale_rings.Cleanup()
    probe = Daemon(data_dir, 0, None)
    try:
        probe.acquire_lock()  # no daemon may start meanwhile
    except DaemonAlreadyRunningError:
        return stale_rings.Cleanup()  # one is starting: it cleans up itself
    try:
        orphans = [pid for pid in _pids_left(data_dir) if pid_alive(pid)]
        for pid in orphans:
            log.warning("stopping pid %d, left by a daemon that died", pid)
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + STOP_GRACE_S
        for pid in orphans:
            while pid_alive(pid) and time.monotonic() < deadline:
                time.sleep(0.02)
            if pid_alive(pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        cleaned = stale_rings.drain_and_remove(data_dir)
        data_dir.runtime_file.unlink(missing_ok=True)
        return cleaned
    finally:
        os.close(probe._lock_fd)


def _pids_left(data_dir: DataDir) -> list[int]:
    """Pids in the data dir's pid files whose command line is an engine process of it."""
    out = []
    for pid_file in sorted(data_dir.run_dir.glob("*.pid")):
        try:
            pid = int(pid_file.read_text().strip())
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                argv = f.read().split(b"\0")
        except (OSError, ValueError):
            continue
        if pid != os.getpid() and any(str(data_dir.root).encode() in arg for arg in argv):
            out.append(pid)
    return out


def _tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"
