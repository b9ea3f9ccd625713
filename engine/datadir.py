"""The data directory: where a daemon keeps everything, and how clients find it.

Layout (version 1)::

    <data dir>/
      engine.lock           held (flock) by the running daemon
      engine.json           runtime info: daemon pid, coordinator address, brokers
      engine.secret         the secret the engine's processes authenticate to the
                            coordinator with (ZooKeeper's digest scheme, user "engine");
                            made at the first start, never replaced (engine/acl.py)
      logs/                 daemon.log, coordinator.log, broker-<id>.log
      run/                  <process>.pid, coordinator.port
      coordinator/          the coordinator's transaction log and snapshots
      broker-<id>/<topic>-<partition>/   a replica's segment files

Every file is 0600 and every directory 0700: the data dir is its owner's alone, and
so is the coordinator's tree, through the secret.

Shared-memory rings are named ``/engine-<ns>-<topic id>-<partition>-<broker>``
where ``ns`` is a hash of the data dir's real path, so that two daemons on one
host never collide.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import logging
import os
import pwd
import re
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engine.errors import AuthorizationError, DaemonNotRunningError, DataDirError

log = logging.getLogger("engine.datadir")

RUNTIME_VERSION = 1
SECRET_BYTES = 32
_SECRET_FORM = re.compile(r"[A-Za-z0-9_-]{43}")  # SECRET_BYTES in url-safe base64, unpadded


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

    @property
    def secret_file(self) -> Path:
        return self.root / "engine.secret"

    def read_secret(self) -> str:
        """The secret the engine's processes and clients authenticate to the coordinator
        with. AuthorizationError when it cannot be read: the data dir is another user's,
        or no secret was made yet (a daemon started before secrets existed)."""
        path = self.secret_file
        try:
            text = path.read_text(encoding="ascii").strip()
        except PermissionError:
            raise self.not_yours() from None
        except FileNotFoundError:
            raise AuthorizationError(
                f"the data dir has no secret to open the coordinator with: path={path}: "
                f"restart the daemon (`engine stop --data-dir {self.root}`, then "
                f"`{self.start_command()}`) to make it"
            ) from None
        except (OSError, UnicodeDecodeError) as exc:
            raise AuthorizationError(
                f"cannot read the engine's secret: path={path} error={exc}"
            ) from None
        if not _SECRET_FORM.fullmatch(text):
            raise AuthorizationError(f"the engine's secret file is damaged: path={path}")
        return text

    def ensure_secret(self) -> str:
        """The secret, made if there is none yet (by the daemon, at its start): random
        bytes in a 0600 file, written and fsynced under a temporary name, then hard-linked
        into place, which fails if a secret exists, so a secret once made is never
        replaced (the coordinator's tree is locked with it). A secret file that others
        may read is narrowed to 0600, with a warning."""
        path = self.secret_file
        if not path.exists():
            tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
            tmp.unlink(missing_ok=True)
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
            try:
                os.write(fd, (secrets.token_urlsafe(SECRET_BYTES) + "\n").encode("ascii"))
                os.fsync(fd)
            finally:
                os.close(fd)
            try:
                os.link(tmp, path)
            except FileExistsError:
                pass  # another start made it first: that one stands
            finally:
                tmp.unlink()
            fsync_directory(self.root)
        mode = path.stat().st_mode & 0o777
        if mode & 0o077:
            os.chmod(path, 0o600)
            log.warning("the engine's secret was readable by others (mode %o): now 0600: "
                        "path=%s", mode, path)
        return self.read_secret()

    def not_yours(self) -> AuthorizationError:
        """The error for a caller that may not read inside the data dir."""
        me = os.getuid()
        try:
            owner = self.root.stat().st_uid
        except OSError:
            owner = -1
        if owner == me:
            return AuthorizationError(
                f"permission denied inside the data dir: data_dir={self.root}: its files "
                f"should be 0600 and its directories 0700, owned by {_user_name(me)}"
            )
        return AuthorizationError(
            f"the data dir belongs to another user: data_dir={self.root} "
            f"owner={_user_name(owner) if owner >= 0 else '?'} you={_user_name(me)}: its "
            f"data and coordinator are private to its owner"
        )

    def read_runtime(self) -> dict[str, Any]:
        """The running daemon's runtime info; DaemonNotRunningError when there is none."""
        try:
            info: dict[str, Any] = json.loads(self.runtime_file.read_text())
        except PermissionError:
            raise self.not_yours() from None
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


def _user_name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)
