"""A real engine daemon for tests: started with `engine start`, always stopped."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from engine.datadir import DataDir, pid_alive
from engine.ring import unlink


class Daemon:
    """A daemon started with `engine start` in its own data dir."""

    def __init__(self, data_dir: Path, brokers: int = 2, start_args: Sequence[str] = ()) -> None:
        self.data_dir = data_dir
        self.brokers = brokers
        self.start_args = list(start_args)  # more options of `engine start`
        self.env = dict(os.environ, ENGINE_RETENTION_CHECK_MS="200", ENGINE_DATA_DIR=str(data_dir))

    def cli(
        self, *args: str, input: bytes | None = None, check: bool = True, timeout: float = 60
    ) -> subprocess.CompletedProcess[bytes]:
        proc = subprocess.run(
            [sys.executable, "-m", "engine", *args],
            input=input,
            capture_output=True,
            env=self.env,
            timeout=timeout,
        )
        if check and proc.returncode != 0:
            raise AssertionError(
                f"engine {' '.join(args)} exited {proc.returncode}: {proc.stderr.decode()}"
            )
        return proc

    def start(self) -> None:
        self.cli(
            "start", "--data-dir", str(self.data_dir), "--brokers", str(self.brokers),
            *self.start_args,
        )  # fmt: skip

    def stop(self) -> None:
        self.cli("stop", "--data-dir", str(self.data_dir), check=False)

    def runtime(self) -> dict:
        return DataDir.resolve(self.data_dir).read_runtime()

    def print_logs(self, lines: int = 80) -> None:
        """Print the last lines of every process log of this daemon."""
        from engine.daemon import _tail  # the daemon's own, for its start-up errors

        logs = self.data_dir / "logs"
        for path in sorted(logs.glob("*.log")) if logs.exists() else []:
            print(f"----- {path.name} (last {lines} lines at most) -----")
            print(_tail(path, lines))

    def kill_everything(self) -> None:
        """Last resort for a failed test: SIGKILL the daemon and its children, drop rings."""
        run = self.data_dir / "run"
        for pid_file in run.glob("*.pid") if run.exists() else []:
            try:
                pid = int(pid_file.read_text())
            except (OSError, ValueError):
                continue
            if pid_alive(pid):
                os.kill(pid, signal.SIGKILL)
        prefix = DataDir.resolve(self.data_dir).ring_prefix()
        for name in os.listdir("/dev/shm"):
            if name.startswith(prefix):
                unlink("/" + name)


@contextlib.contextmanager
def running_daemon(
    data_dir: Path, brokers: int = 2, start_args: Sequence[str] = ()
) -> Iterator[Daemon]:
    """A started daemon, stopped (and, if need be, killed) however the block ends."""
    d = Daemon(data_dir, brokers, start_args)
    try:
        d.start()
        yield d
    finally:
        d.stop()
        d.kill_everything()


def listening_sockets(pid: int) -> set[tuple[str, int]]:
    """The (address, port) of every TCP socket process ``pid`` has open in the LISTEN
    state, IPv4 and IPv6 (``::`` or ``0.0.0.0`` for a socket bound to every address):
    the sockets of its network namespace (/proc/<pid>/net/tcp, tcp6) whose inode is one
    of its file descriptors."""
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        with contextlib.suppress(OSError):  # closed meanwhile
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
            if target.startswith("socket:["):
                inodes.add(target[len("socket:[") : -1])
    out = set()
    for table, family in (("tcp", socket.AF_INET), ("tcp6", socket.AF_INET6)):
        with open(f"/proc/{pid}/net/{table}") as f:
            next(f)  # the column names
            for line in f:
                fields = line.split()
                local, state, inode = fields[1], fields[3], fields[9]
                if state != "0A" or inode not in inodes:  # 0A: TCP_LISTEN
                    continue
                host_hex, port_hex = local.split(":")
                # The kernel prints the address as 32-bit words in host order.
                raw = b"".join(
                    struct.pack("<I", int(host_hex[i : i + 8], 16))
                    for i in range(0, len(host_hex), 8)
                )
                out.add((socket.inet_ntop(family, raw), int(port_hex, 16)))
    return out


def wait_for(
    predicate: Callable[[], Any],
    timeout: float = 20.0,
    interval: float = 0.02,
    what: str = "condition",
) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)


@contextlib.contextmanager
def started(procs: Sequence[Any]) -> Iterator[None]:
    """Start child processes (multiprocessing); leaving the block, also by a failure,
    kills any still running. Wait for them inside the block with :func:`join_ok`."""
    for proc in procs:
        proc.start()
    try:
        yield
    finally:
        for proc in procs:
            if proc.is_alive():
                proc.kill()


def join_ok(procs: Sequence[Any], timeout: float = 30.0) -> None:
    """Join each process (``timeout`` seconds apiece); each must have exited with 0."""
    for proc in procs:
        proc.join(timeout)
        assert proc.exitcode == 0, f"{proc.name} exited with {proc.exitcode}"
