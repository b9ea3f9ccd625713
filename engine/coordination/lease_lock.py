"""LeaseLock: a lock that expires ``ttl_s`` after its last renew, even while its holder lives.

    lease = LeaseLock("compaction", ttl_s=10)
    if lease.acquire(timeout=0):
        for chunk in work:
            do(chunk)
            lease.renew()          # LeaseExpiredError: it ran out, stop
        lease.release()

The lease is a TTL znode (ZooKeeper's CreateTTL, engine/coordination/requests.py) under
``/engine/coordination/leases/<name>``: the coordinator deletes it once it has gone
``ttl_s`` without a change, whether or not its holder's process or session lives on
(a hung holder loses the lock; a Lock would keep it). renew() sets the node's data,
which restarts its TTL. The sweep runs every tick (200 ms) on the built-in coordinator,
every ``znode.container.checkIntervalMs`` on a real ZooKeeper (60 s unless set), so the
lock is free between ``ttl_s`` and ``ttl_s`` plus one sweep after the last renew.

Contenders: each acquire() creates its own TTL sequential node; the lowest holds the
lease, any other steps out at once and waits for the lowest to go (no queue: a waiter's
node would need renewing too). Every node is a new name (its uuid and sequence), so a
renew or release can only ever touch this holder's own node: once the lease expired,
renew() finds the node gone and raises LeaseExpiredError, never taking the lock back
from whoever holds it since. A contender that dies between its create and its step out
leaves a node that holds the lease for one TTL, as a holder that dies does.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from typing import Any

from kazoo.exceptions import KazooException, NoNodeError

from engine import metadata as md
from engine.coordination import paths
from engine.coordination.contenders import Contenders
from engine.coordination.lock import check_timeout, default_identifier
from engine.coordination.requests import MAX_TTL_MS
from engine.coordination.session import SESSION_TIMEOUT_S, Recipe
from engine.errors import ConfigError, EngineError, LeaseExpiredError, LockStateError

log = logging.getLogger("engine.coordination")


class LeaseLock(Recipe):
    """A lock held until release(), or until ``ttl_s`` passed without a renew().

    Holds: the name, ``ttl_s``, this object's identifier (shown by holder()) and, while
    held, its lease node and when the lease ends by this process's clock (counted from
    before the acquire's or renew's request, so never later than the coordinator's).
    Invariants: at most one live lease node of the name is the lowest; renew() and
    release() touch only this object's own node.

    On a crash of the holder the lock is free ``ttl_s`` after its last renew. The
    session's expiry does not end a lease: only time does.

    Threads: any thread may call it, one call at a time per object.
    """

    def __init__(
        self,
        name: str,
        ttl_s: float,
        data_dir: str | os.PathLike[str] | None = None,
        identifier: str | None = None,
        *,
        session_timeout_s: float = SESSION_TIMEOUT_S,
    ) -> None:
        if not isinstance(ttl_s, (int, float)) or not 0.001 <= ttl_s <= MAX_TTL_MS / 1000:
            raise ConfigError(f"ttl_s must be a number from 0.001 to {MAX_TTL_MS // 1000}: "
                              f"ttl_s={ttl_s!r}")  # fmt: skip
        self.name = name
        self.path = paths.lease_path(name)
        self.ttl_s = float(ttl_s)
        super().__init__(data_dir, session_timeout_s)
        self.identifier = identifier or default_identifier()
        self._contenders = Contenders(self._session.client, self.path, paths.LEASE_MARKER)
        self._node: str | None = None
        self._ends_at = 0.0  # time.monotonic() when the lease ends at the latest
        self._mutex = threading.Lock()

    @property
    def _ttl_ms(self) -> int:
        return max(1, round(self.ttl_s * 1000))

    @property
    def is_held(self) -> bool:
        """Whether this object holds the lease and, by its clock, it has not ended."""
        return self._node is not None and time.monotonic() < self._ends_at

    def remaining(self) -> float:
        """Seconds left of the lease by this process's clock; 0 when not held."""
        if self._node is None:
            return 0.0
        return max(0.0, self._ends_at - time.monotonic())

    def acquire(self, timeout: float | None = None) -> bool:
        """Take the lease; True once held (for ``ttl_s`` from now), False when
        ``timeout`` seconds passed first (0: only if free now; None: as long as it
        takes). TtlNodesDisabledError on a real ZooKeeper without TTL nodes."""
        check_timeout(timeout)
        with self._mutex:
            if self._node is not None:
                if time.monotonic() < self._ends_at:
                    raise LockStateError(
                        f"the lease is held by this object already: lease={self.name!r}"
                    )
                old, self._node = self._node, None  # run out by our clock: a new one
                self._unpin()
                with contextlib.suppress(EngineError, KazooException):
                    self._contenders.leave(old)  # its name is ours alone: safe to delete
            self.zk  # noqa: B018  # ClosedError after close
            deadline = None if timeout is None else time.monotonic() + timeout
            bound = (
                contextlib.nullcontext()
                if timeout is None
                else md.deadline(timeout + md.MIN_REQUEST_S, f"acquiring lease {self.name!r}")
            )
            with bound:
                while True:
                    sent = time.monotonic()
                    node = self._contenders.join(self.identifier.encode(), self._ttl_ms)
                    try:
                        nodes = self._contenders.ordered()
                    except BaseException:
                        self._step_out(node)
                        raise
                    if nodes and nodes[0] == node:
                        self._node, self._ends_at = node, sent + self.ttl_s
                        self._pin()
                        return True
                    self._step_out(node)  # not first: wait outside
                    if nodes and not self._wait_gone(nodes[0], deadline):
                        return False

    def _step_out(self, node: str) -> None:
        """Delete a contender's node that does not hold the lease. One that cannot be
        deleted now (the coordinator away) ends by its TTL; until then, should it be the
        first, it holds the lease for nobody."""
        try:
            self._contenders.leave(node)
        except (EngineError, KazooException):
            log.warning("could not step out of lease %r: node=%s ends in ttl_s=%g",
                        self.name, node, self.ttl_s)  # fmt: skip

    def _wait_gone(self, node: str, deadline: float | None) -> bool:
        """Wait until ``node`` is gone; False when ``deadline`` came first. The watch
        also fires at each renew of the holder: then it is set again."""
        while True:
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                return False
            wake = threading.Event()
            if not self._contenders.watch(node, wake):
                return True
            wake.wait(left)

    def renew(self) -> None:
        """Start the lease's ``ttl_s`` again. LeaseExpiredError when it ran out first
        (the coordinator deleted it: another may hold the lock now; it is not taken
        back); LockStateError when this object does not hold it."""
        with self._mutex:
            node = self._held_node("renew")
            sent = time.monotonic()
            try:
                self._contenders.retried(
                    self.zk.set, f"{self.path}/{node}", self.identifier.encode()
                )
            except NoNodeError:
                self._node = None
                self._unpin()
                raise self._expired("renew") from None
            self._ends_at = sent + self.ttl_s

    def release(self) -> None:
        """Give the lease up now. LeaseExpiredError when it had run out already;
        LockStateError when this object does not hold it."""
        with self._mutex:
            node = self._held_node("release")
            self._node = None
            self._unpin()
            if not self._contenders.leave(node):
                raise self._expired("release")

    def holder(self) -> str | None:
        """The identifier of the lease's holder; None when nobody holds it."""
        self.zk  # noqa: B018  # ClosedError after close
        first = self._contenders.first()
        return first[1] if first else None

    def _held_node(self, what: str) -> str:
        if self._node is None:
            raise LockStateError(
                f"{what} of a lease this object does not hold: lease={self.name!r}"
            )
        return self._node

    def _expired(self, what: str) -> LeaseExpiredError:
        return LeaseExpiredError(
            f"the lease ran out before its {what}: no renew within ttl_s={self.ttl_s:g}; "
            f"another may hold it now: lease={self.name!r}"
        )

    def _let_go(self) -> None:
        if self._node is not None:
            try:
                self.release()
            except Exception:  # closing: an expired lease needs nothing more
                log.warning("releasing lease %r at close failed", self.name, exc_info=True)

    def __enter__(self) -> LeaseLock:
        self.acquire()
        return self

    def __exit__(self, exc_type: Any, *exc: object) -> None:
        if self._node is None:  # released in the block, or its loss reported there
            return
        try:
            self.release()
        except LeaseExpiredError:
            if exc_type is None:
                raise
            log.warning("lease %r ran out while the block failed", self.name)
