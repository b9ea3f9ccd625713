"""The data directory: where a daemon keeps everything, and how clients find it.

Layout (version 1)::

    <data dir>/
      engine.lock           held (flock) by the running daemon
      engine.json           runtime info: daemon pid, coordinator address, brokers
      logs/                 daemon.log, coordinator.log, broker-<id>.log
      run/                  <process>.pid, coordinator.port
      coordinator/          the coordinator's transaction log and snapshots
      broker-<id>/<topic>-<partition>/   a replica's segment files

Shared-memory rings are named ``/engine-<ns>-<topic id>-<partition>-<broker>``
where ``ns`` is a hash of the data dir's real path, so that two daemons on one
host never collide.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engine.errors import DaemonNotRunningError, DataDirError

RUNTIME_VERSION = 1


def default_data_dir() -> Path:
    env = os.environ.get("ENGINE_DATA_DIR")
    if env:
        return Path(env).expanduser()
    return Path("~/.local/state/engine").expanduser()


def make_private_dir(path: Path) -> Path:
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    return path


@contextlib.contextmanager
def data_dir_errors(root: Path) -> Iterator[None]:
    """Setting up the data dir: an OSError (read-only, not a directory, permission
    denied, cannot be created) becomes one DataDirError line naming the path and why."""
    try:
        yield
    except OSError as exc:
        if isinstance(exc, DataDirError):  # from a nested block: already the one line
            raise
        path = exc.filename if exc.filename is not None else root
        if exc.errno == errno.EEXIST:  # mkdir(exist_ok=True) of a path that is a file
            reason = "exists and is not a directory"
        elif exc.errno == errno.ENOTDIR:
            reason = "a part of the path is not a directory"
        else:
            reason = (exc.strerror or str(exc)).lower()
        raise DataDirError(
            f"cannot use the data dir: data_dir={root} ({path}: {reason})"
        ) from None


def write_private_file(path: Path | str, data: bytes) -> None:
    """Replace ``path`` atomically and durably: a temp file (mode 0600), fsync, rename,
    fsync of the directory."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    fsync_directory(path.parent)


def fsync_directory(directory: Path | str) -> None:
    """fsync a directory: makes the entries created, renamed or removed in it durable."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return True
    return state not in ("Z", "X")


@dataclass(frozen=True)
class DataDir:
    """Paths inside one data dir; creates nothing until asked."""

    root: Path

    @classmethod
    def resolve(cls, data_dir: str | os.PathLike[str] | None) -> DataDir:
        root = Path(data_dir).expanduser() if data_dir is not None else default_data_dir()
        return cls(root.absolute())

    @property
    def namespace(self) -> str:
        return hashlib.sha1(str(self.root.resolve()).encode()).hexdigest()[:10]

    @property
    def lock_file(self) -> Path:
        return self.root / "engine.lock"

    @property
    def runtime_file(self) -> Path:
        return self.root / "engine.json"

    @property
    def log_dir(self) -> Path:
        return self.root / "logs"

    @property
    def run_dir(self) -> Path:
        return self.root / "run"

    @property
    def coordinator_dir(self) -> Path:
        return self.root / "coordinator"

    def broker_dir(self, broker_id: int) -> Path:
        return self.root / f"broker-{broker_id}"

    def partition_dir(self, broker_id: int, topic: str, partition: int) -> Path:
        return self.broker_dir(broker_id) / f"{topic}-{partition}"

    def ring_name(self, topic_id: str, partition: int, broker_id: int) -> str:
        return f"/engine-{self.namespace}-{topic_id[:16]}-{partition}-{broker_id}"

    def ring_prefix(self) -> str:
        return f"engine-{self.namespace}-"

    def start_command(self) -> str:
        return f"engine start --data-dir {self.root}"

    def read_runtime(self) -> dict[str, Any]:
        """The running daemon's runtime info; DaemonNotRunningError when there is none."""
        try:
            info: dict[str, Any] = json.loads(self.runtime_file.read_text())
        except (OSError, ValueError):
            raise DaemonNotRunningError(
                f"the engine daemon is not running for data_dir={self.root}: "
                f"start it with `{self.start_command()}`"
            ) from None
        if not pid_alive(int(info.get("pid", 0))):
            raise DaemonNotRunningError(
                f"the engine daemon for data_dir={self.root} is not running (stale pid "
                f"{info.get('pid')}): start it with `{self.start_command()}`"
            )
        return info

    def coordinator_hosts(self) -> str:
        return str(self.read_runtime()["coordinator"])
