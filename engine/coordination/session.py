"""The coordinator session the coordination objects of one process share.

A lock, an election or a registration lives as long as the session that holds it: the
coordinator deletes its ephemeral znodes once the session has been silent for its
timeout (a process killed, a machine gone). Every coordination object of a process
made for the same data dir (and session timeout) uses one kazoo client, opened with the
engine's credentials (metadata.connect: the data dir's secret, the engine's ACL on
every znode it creates) when the first object is made and closed when the last one is
closed or collected. ``with Lock("jobs"):`` in a loop so opens one session, not one per
pass, as long as one coordination object stays alive in between.

An object that holds something in the coordinator (a lock, a lease, a registration, a
watch) is kept alive by its session until it lets go of it (release, unregister,
cancel, close), so ``ServiceRegistry("api").register(data)`` keeps the instance
registered although nothing refers to the registry. An election is kept alive by its
campaign thread while it campaigns.

Threads: objects may be used from any thread. kazoo's connection thread calls the
session's state listener, which hands the state (CONNECTED, SUSPENDED, LOST) to each
live object's listener; those only set flags and events. Watch callbacks run on
kazoo's callback thread.

After a fork the child has no kazoo threads: an object made before the fork raises
ClosedError in the child, and the child's first object opens the child's own session.
"""

from __future__ import annotations

import logging
import os
import threading
import weakref
from collections.abc import Callable
from typing import Any, ClassVar

from kazoo.client import KazooClient

from engine import metadata as md
from engine.datadir import DataDir
from engine.errors import ClosedError

log = logging.getLogger("engine.coordination")

#: The session timeout the recipes ask for. The coordinator decides what it grants
#: (ZooKeeper: between 2 and 20 ticks); the built-in coordinator's tick is 200 ms.
SESSION_TIMEOUT_S = md.SESSION_TIMEOUT_S

StateListener = Callable[[str], None]


class Session:
    """One kazoo client shared by the coordination objects of one process, one data dir
    and one requested session timeout; counted references, closed with the last."""

    _open: ClassVar[dict[tuple[int, str, float], Session]] = {}
    _lock: ClassVar[threading.Lock] = threading.Lock()

    def __init__(self, data_dir: DataDir, session_timeout_s: float) -> None:
        self.key = (os.getpid(), str(data_dir.root), session_timeout_s)
        self.client: KazooClient = md.connect(data_dir, session_timeout_s=session_timeout_s)
        self.refs = 0
        self.pinned: set[object] = set()  # objects that hold something (Recipe._pin)
        self._listeners: list[weakref.WeakMethod[StateListener]] = []
        self._listeners_lock = threading.Lock()
        self.client.add_listener(self._on_state)

    @classmethod
    def open(cls, data_dir: DataDir, session_timeout_s: float) -> Session:
        """The process's session for ``data_dir``, opened if there is none; one more
        reference to it (give it back with :meth:`release`)."""
        key = (os.getpid(), str(data_dir.root), session_timeout_s)
        with cls._lock:
            session = cls._open.get(key)
            if session is None:
                session = cls(data_dir, session_timeout_s)
                cls._open[key] = session
            session.refs += 1
            return session

    def release(self) -> None:
        """One reference fewer; the last closes the client (its ephemeral znodes go at
        once). Nothing in a forked child: the client is the parent's."""
        if os.getpid() != self.key[0]:
            return
        with Session._lock:
            self.refs -= 1
            if self.refs > 0:
                return
            Session._open.pop(self.key, None)
        if self._in_kazoo_thread():  # (a finalizer run there) stopping joins that thread
            threading.Thread(target=self._close, name="engine-session-close", daemon=True).start()
        else:
            self._close()

    def _close(self) -> None:
        self.client.stop()
        self.client.close()

    def _in_kazoo_thread(self) -> bool:
        client: Any = self.client  # kazoo is untyped
        me = threading.current_thread()
        return me in client.handler._workers or me is client._connection._connection_routine

    def add_listener(self, listener: StateListener) -> None:
        """Call the bound method ``listener`` with each state change (KazooState) while
        its object lives; it runs on kazoo's connection thread and must not block."""
        with self._listeners_lock:
            self._listeners.append(weakref.WeakMethod(listener))

    def _on_state(self, state: str) -> None:
        with self._listeners_lock:
            alive = [(ref, ref()) for ref in self._listeners]
            self._listeners = [ref for ref, method in alive if method is not None]
        for _, method in alive:
            if method is not None:
                try:
                    method(state)
                except Exception:  # a listener's bug must not break kazoo's thread
                    log.exception("a coordination state listener failed")


class Recipe:
    """Base of the coordination objects: a reference to the process's session for the
    data dir, given back by close() (or when the object is collected)."""

    def __init__(
        self,
        data_dir: str | os.PathLike[str] | None,
        session_timeout_s: float = SESSION_TIMEOUT_S,
    ) -> None:
        self.data_dir = DataDir.resolve(data_dir)
        self._session = Session.open(self.data_dir, session_timeout_s)
        self._pid = os.getpid()
        self._closed = False
        self._release = weakref.finalize(self, self._session.release)

    @property
    def zk(self) -> KazooClient:
        """The session's client; ClosedError after close() or in a forked child."""
        if self._closed:
            raise ClosedError(f"{type(self).__name__} is closed")
        if os.getpid() != self._pid:
            raise ClosedError(
                f"{type(self).__name__} was made in another process (before a fork): make "
                "a new one in this process"
            )
        return self._session.client

    def close(self) -> None:
        """Let go of what the object holds (locks, candidacies, registrations, watches)
        and of its reference to the session. Idempotent."""
        if self._closed:
            return
        try:
            if os.getpid() == self._pid:
                self._let_go()
        finally:
            self._closed = True
            self._unpin()
            self._release()

    def _let_go(self) -> None:
        """What close() gives up besides the session; subclasses extend it."""

    def _pin(self) -> None:
        """Keep this object alive while it holds something in the coordinator."""
        self._session.pinned.add(self)

    def _unpin(self) -> None:
        """It holds nothing any more: a reference from the user's code is all it has."""
        self._session.pinned.discard(self)
