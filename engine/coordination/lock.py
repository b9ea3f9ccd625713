"""Lock: a perpetual lock, held for as long as its holder's session (ZooKeeper's recipe).

    with Lock("nightly-report"):
        ...                        # one process on the machine at a time

Each acquire() adds an ephemeral sequential node to the lock's queue
(``/engine/coordination/locks/<name>``, engine/coordination/paths.py); the first node
holds the lock, and each waiter watches the node just before its own, so the lock
passes in the order it was asked for, one waiter woken per release. A holder that
dies (SIGKILL, a machine gone) stops its session's heartbeats; the coordinator ends
the session after its timeout (4 s on the built-in coordinator today) and deletes its
node, which hands the lock to the next waiter.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from typing import Any

from kazoo.client import KazooClient, KazooState
from kazoo.exceptions import KazooException

from engine import metadata as md
from engine.coordination import paths
from engine.coordination.contenders import ContenderGone, Contenders
from engine.coordination.session import SESSION_TIMEOUT_S, Recipe
from engine.errors import ConfigError, EngineError, LockLostError, LockStateError

log = logging.getLogger("engine.coordination")


def default_identifier() -> str:
    """``<host>:<pid>``: what a holder or candidate is shown as unless given a name."""
    return f"{os.uname().nodename}:{os.getpid()}"


def session_id_of(zk: KazooClient) -> int | None:
    """The id of the client's session; None between an expired one and the next."""
    client_id = zk.client_id
    return int(client_id[0]) if client_id else None


def check_timeout(timeout: float | None) -> float | None:
    if timeout is not None and (not isinstance(timeout, (int, float)) or timeout < 0):
        raise ConfigError(f"timeout must be None or a number >= 0: timeout={timeout!r}")
    return timeout


class Lock(Recipe):
    """A lock held until release() or the end of the holder's coordinator session.

    Holds: the name, this object's identifier (shown by holder() and ``engine coord
    locks``) and, while held, its node in the lock's queue. Invariants: at most one
    contender of the name holds it; waiters get it in the order their acquire() began.
    Not re-entrant: acquire() of a lock this object holds raises LockStateError.

    On a crash of the holder the lock is free again once the coordinator ends its
    session (its timeout). If the session of a live holder expires (the daemon away
    longer than the timeout) the lock is lost: ``is_held`` turns False and release()
    raises LockLostError.

    Threads: any thread may call acquire() and release() (one at a time per object);
    use one Lock object per concurrent contender.
    """

    def __init__(
        self,
        name: str,
        data_dir: str | os.PathLike[str] | None = None,
        identifier: str | None = None,
        *,
        session_timeout_s: float = SESSION_TIMEOUT_S,
    ) -> None:
        self.name = name
        self.path = paths.lock_path(name)
        super().__init__(data_dir, session_timeout_s)
        self.identifier = identifier or default_identifier()
        self._contenders = Contenders(self._session.client, self.path, paths.LOCK_MARKER)
        self._node: str | None = None
        self._session_id: int | None = None  # the session that holds _node
        self._lost = False
        self._mutex = threading.Lock()
        self._wake: threading.Event | None = None  # what a waiting acquire waits on
        self._orphans: list[str] = []  # nodes of given-up acquires not deleted yet
        self._session.add_listener(self._on_state)

    @property
    def is_held(self) -> bool:
        """Whether this object holds the lock (False once its session was lost)."""
        return self._node is not None and not self._lost

    def acquire(self, timeout: float | None = None) -> bool:
        """Wait for the lock, in turn; True once held, False when ``timeout`` seconds
        passed first (0: only if free now; None: as long as it takes).
        CoordinatorTimeoutError when the coordinator did not answer within the wait
        (and a second more)."""
        check_timeout(timeout)
        with self._mutex:
            if self._node is not None and not self._lost:
                raise LockStateError(f"the lock is held by this object already: lock={self.name!r}")
            if self._node is not None:  # lost with its session: gone with it
                self._node = None
                self._unpin()
            zk = self.zk
            self._leave_orphans()
            deadline = None if timeout is None else time.monotonic() + timeout
            bound = (
                contextlib.nullcontext()
                if timeout is None
                else md.deadline(timeout + md.MIN_REQUEST_S, f"acquiring lock {self.name!r}")
            )
            node = None
            try:
                with bound:
                    node = self._contenders.join(self.identifier.encode())
                    while True:
                        wake = self._wake = threading.Event()
                        try:
                            before = self._contenders.predecessor(node)
                        except ContenderGone:  # the session expired while waiting
                            node = self._contenders.join(self.identifier.encode())
                            continue
                        if before is None:
                            self._node, self._lost = node, False
                            self._session_id = session_id_of(zk)
                            self._pin()
                            return True
                        left = None if deadline is None else deadline - time.monotonic()
                        if left is not None and left <= 0:
                            break
                        if self._contenders.watch(before, wake):
                            wake.wait(left)
            except BaseException:
                if node is not None:
                    self._give_up(node)
                raise
            finally:
                self._wake = None
            self._give_up(node)
            return False

    def release(self) -> None:
        """Let the lock go (the next waiter gets it). LockStateError when this object
        does not hold it; LockLostError when it was lost meanwhile (its session
        expired: another may have held it)."""
        with self._mutex:
            node, session_id = self._node, self._session_id
            if node is None:
                raise LockStateError(f"the lock is not held by this object: lock={self.name!r}")
            self._node = self._session_id = None
            self._unpin()
            deleted = self._contenders.leave(node)
            lost = self._lost or not deleted or session_id_of(self.zk) != session_id
            self._lost = False
            if lost:
                raise LockLostError(
                    f"the lock was lost while held: its coordinator session expired, and "
                    f"another may have held it since: lock={self.name!r}"
                )

    def holder(self) -> str | None:
        """The identifier of the lock's holder; None when nobody holds it."""
        first = self._contenders_of().first()
        return first[1] if first else None

    def contenders(self) -> list[str]:
        """The identifiers of the holder and then of the waiters, in turn."""
        return self._contenders_of().identifiers()

    def _contenders_of(self) -> Contenders:
        self.zk  # noqa: B018  # ClosedError after close
        return self._contenders

    def _give_up(self, node: str) -> None:
        """Leave the queue after a failed or timed-out acquire. A node that cannot be
        deleted now (the coordinator away) is deleted once the session is connected
        again, or goes with the session: left there, it would hold the lock for nobody."""
        try:
            self._contenders.leave(node)
        except (EngineError, KazooException):  # the coordinator is away: again once back
            log.warning("could not leave the queue of lock %r yet: node=%s", self.name, node)
            self._orphans.append(node)

    def _leave_orphans(self) -> None:
        while self._orphans:
            node = self._orphans[0]
            try:
                self._contenders.leave(node)
            except (EngineError, KazooException):
                log.warning("could not leave the queue of lock %r yet: node=%s",
                            self.name, node)  # fmt: skip
                return
            self._orphans.pop(0)

    def _on_state(self, state: str) -> None:
        if state == KazooState.LOST and self._node is not None:
            self._lost = True
        wake = self._wake
        if wake is not None:  # an acquire waiting on a watch that a new session lacks
            wake.set()
        if state == KazooState.CONNECTED and self._orphans:
            threading.Thread(
                target=self._leave_orphans_now, name="engine-lock-orphans", daemon=True
            ).start()

    def _leave_orphans_now(self) -> None:
        with self._mutex:
            self._leave_orphans()

    def _let_go(self) -> None:
        self._leave_orphans()
        if self._node is not None:
            try:
                self.release()
            except Exception:  # closing: the lock goes with the session anyway
                log.warning("releasing lock %r at close failed", self.name, exc_info=True)

    def __enter__(self) -> Lock:
        self.acquire()
        return self

    def __exit__(self, exc_type: Any, *exc: object) -> None:
        if self._node is None:  # released in the block, or its loss reported there
            return
        try:
            self.release()
        except LockLostError:
            if exc_type is None:
                raise
            log.warning("lock %r was lost while the block failed", self.name)
