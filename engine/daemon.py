"""The daemon: starts and supervises the coordinator and the broker processes.

``engine start`` runs it in the background (a new session, logs in the data
dir) and returns once every broker is registered; ``--foreground`` runs it in
the calling terminal. It holds an exclusive lock on ``engine.lock`` for its
whole life, so a second daemon on the same data dir is refused. It writes
``engine.json`` (its pid, the coordinator's address, the broker ids), through
which clients find it, and pid files under ``run/``.

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
from typing import IO, Any

from engine import acl
from engine import metadata as md
from engine.datadir import DataDir, make_private_dir, pid_alive, write_private_file
from engine.errors import DaemonAlreadyRunningError, DaemonNotRunningError, EngineTimeoutError

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
    ) -> None:
        self.data_dir = data_dir
        self.broker_count = brokers
        self.external_coordinator = coordinator
        self.cluster_config = cluster_config or {}
        self.children: list[Child] = []
        self.hosts = coordinator or ""
        self._stop_requested = False  # set by _on_signal
        self._lock_fd = -1

    # -- lock --------------------------------------------------------------

    def acquire_lock(self) -> None:
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
        for d in (dd.log_dir, dd.run_dir, dd.coordinator_dir):
            make_private_dir(d)
        dd.ensure_secret()
        write_private_file(dd.run_dir / "daemon.pid", f"{os.getpid()}\n".encode())
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)
        try:
            self._start_children()
            self._write_runtime(ready=True)
            log.info("engine ready: coordinator %s, %d brokers", self.hosts, self.broker_count)
            self._supervise()
        finally:
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
            port_file.unlink(missing_ok=True)
            coordinator = Child(
                "coordinator",
                [
                    py,
                    "-m",
                    "engine.coordinator",
                    "--data-dir",
                    str(dd.coordinator_dir),
                    "--port",
                    "0",
                    "--port-file",
                    str(port_file),
                ],
                dd.log_dir / "coordinator.log",
            )
            coordinator.start(dd.run_dir)
            self.children.append(coordinator)
            port = _wait_for_file(port_file, coordinator, START_TIMEOUT_S)
            self.hosts = f"127.0.0.1:{port}"
            # Restarts keep the port, so clients' addresses stay valid.
            coordinator.argv[coordinator.argv.index("--port") + 1] = port
        self._write_runtime(ready=False)
        self._secure_tree()
        for broker_id in range(1, self.broker_count + 1):
            child = Child(
                f"broker-{broker_id}",
                [
                    py,
                    "-m",
                    "engine.broker",
                    "--data-dir",
                    str(dd.root),
                    "--id",
                    str(broker_id),
                    "--coordinator",
                    self.hosts,
                ],
                dd.log_dir / f"broker-{broker_id}.log",
            )
            child.start(dd.run_dir)
            self.children.append(child)
        self._wait_for_brokers()

    def _secure_tree(self) -> None:
        """The engine's ACL on all of its znodes and its paths made, before any broker
        starts (engine/acl.py)."""
        zk = md.connect(self.data_dir, hosts=self.hosts, timeout_s=START_TIMEOUT_S)
        try:
            acl.secure_tree(zk, self.data_dir)
        finally:
            zk.stop()
            zk.close()

    def _wait_for_brokers(self) -> None:
        zk = md.connect(self.data_dir, hosts=self.hosts, timeout_s=START_TIMEOUT_S)
        try:
            md.write_cluster_config(zk, self.cluster_config)
            deadline = time.monotonic() + START_TIMEOUT_S
            want = set(range(1, self.broker_count + 1))
            while True:
                registered = set(md.live_brokers(zk))
                if want <= registered and md.controller_id(zk) is not None:
                    return
                for child in self.children:
                    if child.proc is not None and child.proc.poll() is not None:
                        raise DaemonNotRunningError(
                            f"{child.name} exited with code {child.proc.returncode} during "
                            f"start-up: see {child.log_path}"
                        )
                if time.monotonic() > deadline:
                    raise EngineTimeoutError(
                        f"brokers {sorted(want - registered)} did not register within "
                        f"{START_TIMEOUT_S:.0f} s: see {self.data_dir.log_dir}"
                    )
                time.sleep(0.02)
        finally:
            zk.stop()
            zk.close()

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
                child.start(self.data_dir.run_dir)
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
) -> dict[str, Any]:
    """Spawn the daemon detached and wait until it is ready; returns its runtime info."""
    make_private_dir(data_dir.root)
    make_private_dir(data_dir.log_dir)
    probe = Daemon(data_dir, brokers, coordinator)
    probe.acquire_lock()  # fail fast, with the clear message, if one already runs
    os.close(probe._lock_fd)
    data_dir.runtime_file.unlink(missing_ok=True)
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
    fd = os.open(data_dir.log_dir / "daemon.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=fd,
            stderr=fd,
            start_new_session=True,
        )
    finally:
        os.close(fd)
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


def _tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"
