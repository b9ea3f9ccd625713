"""Election: one leader among the candidates of a name, a new one when it dies.

    election = Election("scheduler", on_won=start_scheduling, on_lost=stop_scheduling)
    election.campaign()            # blocks until this process leads; stays a candidate
    ...
    election.resign()

    Election("scheduler").run(schedule_forever)   # leads, runs it, resigns when it returns

Candidates queue as a Lock's contenders do (ephemeral sequential nodes under
``/engine/coordination/elections/<name>``): the first leads, each other watches the
one just before it. When the leader's process dies the coordinator ends its session a
session timeout after it last heard from it (4 s on the built-in coordinator today;
kazoo pings every third of that while idle) and deletes its node; the next candidate
leads at once after that: 3.4-4.1 s after a SIGKILL here (README, Coordination).

Leadership is only as sure as the connection: when it is lost (SUSPENDED), the leader
cannot tell whether its session still lives, so it counts itself as no longer leading
(``on_lost``); once connected again with the same session it leads again (``on_won``)
if its node is still the first. A session that expired took its node with it: the
candidate joins again, at the back. So two processes never both believe they lead for
longer than it takes a disconnected leader to notice (kazoo: two thirds of the session
timeout without an answer), while the other waits a full timeout.

A campaign thread per Election that campaigns does the waiting and calls the callbacks,
in order, never two at once; callbacks that block hold up the election's next step.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from typing import Any, TypeVar

from kazoo.client import KazooState
from kazoo.exceptions import KazooException

from engine.coordination import paths
from engine.coordination.contenders import ContenderGone, Contenders
from engine.coordination.lock import check_timeout, default_identifier
from engine.coordination.session import SESSION_TIMEOUT_S, Recipe
from engine.errors import EngineError

log = logging.getLogger("engine.coordination")

T = TypeVar("T")

#: After a failed request, the campaign thread looks again this often.
RETRY_S = 0.5


class Election(Recipe):
    """A candidate in the election of ``name``.

    Holds: the name, this candidate's identifier (shown by leader()), whether it
    leads, and while campaigning its node and campaign thread. Invariant: among the
    live candidates of a name, only the one with the first node leads, and it leads
    only while connected.

    On a crash of the leader the next candidate leads once the coordinator ends the
    crashed one's session (its timeout). ``on_won`` and ``on_lost`` (no arguments)
    run on the campaign thread, each time leadership is won or lost; resign() and
    close() count as a loss for a leader.

    Threads: any thread may call campaign(), resign(), leader(); one campaign thread
    per campaigning Election.
    """

    def __init__(
        self,
        name: str,
        data_dir: str | os.PathLike[str] | None = None,
        identifier: str | None = None,
        *,
        on_won: Callable[[], Any] | None = None,
        on_lost: Callable[[], Any] | None = None,
        session_timeout_s: float = SESSION_TIMEOUT_S,
    ) -> None:
        self.name = name
        self.path = paths.election_path(name)
        super().__init__(data_dir, session_timeout_s)
        self.identifier = identifier or default_identifier()
        self.on_won = on_won
        self.on_lost = on_lost
        self._contenders = Contenders(self._session.client, self.path, paths.LOCK_MARKER)
        self._leading = False
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._connected = bool(self._session.client.connected)
        self._session_lost = False
        self._session.add_listener(self._on_state)

    @property
    def is_leader(self) -> bool:
        """Whether this candidate leads now."""
        return self._leading

    def campaign(self, timeout: float | None = None) -> bool:
        """Become a candidate (if not one already) and wait until this one leads;
        True then, False when ``timeout`` seconds passed first (it stays a candidate
        and may lead later: ``on_won`` says when). resign() ends the candidacy."""
        check_timeout(timeout)
        self.zk  # noqa: B018  # ClosedError after close
        with self._cond:
            if self._thread is None or not self._thread.is_alive():
                self._stop.clear()
                self._thread = threading.Thread(
                    target=self._campaign, name=f"engine-election-{self.name}", daemon=True
                )
                self._thread.start()
            return self._cond.wait_for(lambda: self._leading, timeout)

    def resign(self) -> None:
        """Stop being a candidate: a leader stops leading (``on_lost`` runs first) and
        the next candidate leads. Nothing when not campaigning."""
        thread = self._thread
        if thread is None:
            return
        self._stop.set()
        self._wake.set()
        if thread is not threading.current_thread():  # (resign from a callback)
            thread.join()

    def run(self, func: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Campaign until this candidate leads, call ``func(*args, **kwargs)``, and
        resign when it returns or raises; its result. ``func`` is not stopped should
        leadership be lost meanwhile: it may look at ``is_leader``."""
        self.campaign()
        try:
            return func(*args, **kwargs)
        finally:
            self.resign()

    def leader(self) -> str | None:
        """The leader's identifier (the first candidate's); None when there is none."""
        self.zk  # noqa: B018  # ClosedError after close
        first = self._contenders.first()
        return first[1] if first else None

    def candidates(self) -> list[str]:
        """Every candidate's identifier, the leader's first."""
        self.zk  # noqa: B018  # ClosedError after close
        return self._contenders.identifiers()

    # -- the campaign thread -------------------------------------------------------------

    def _campaign(self) -> None:
        node: str | None = None
        data = self.identifier.encode()
        while not self._stop.is_set():
            self._wake.clear()  # whatever happens from here on wakes the next wait
            if self._session_lost:
                self._session_lost, node = False, None  # the node went with the session
            if not self._connected:
                self._set_leading(False)
                self._wake.wait()
                continue
            try:
                if node is None:
                    node = self._contenders.join(data)
                try:
                    before = self._contenders.predecessor(node)
                except ContenderGone:  # its session expired, or someone deleted it
                    node = None
                    continue
                self._set_leading(before is None)
                # Leading: watch its own node (deleted by hand: join again); else the
                # node just before it.
                if self._contenders.watch(before or node, self._wake):
                    self._wake.wait()
            except (EngineError, KazooException) as exc:
                log.info("election %r: %s; trying again", self.name, exc)
                self._set_leading(False)
                self._wake.wait(RETRY_S)
            except Exception:  # a bug must not end the campaign silently
                log.exception("election %r: the campaign failed; trying again", self.name)
                self._set_leading(False)
                self._wake.wait(RETRY_S)
        self._set_leading(False)
        if node is not None:
            try:
                self._contenders.leave(node)
            except (EngineError, KazooException):  # away: the node goes with the session
                log.warning("election %r: could not delete candidate node %s", self.name, node)

    def _set_leading(self, leading: bool) -> None:
        if leading == self._leading:
            return
        with self._cond:
            self._leading = leading
            self._cond.notify_all()
        callback = self.on_won if leading else self.on_lost
        log.info("election %r: %s %s", self.name, self.identifier, "leads" if leading else
                 "no longer leads")  # fmt: skip
        if callback is not None:
            try:
                callback()
            except Exception:
                log.exception("election %r: the %s callback failed", self.name,
                              "on_won" if leading else "on_lost")  # fmt: skip

    def _on_state(self, state: str) -> None:
        if state == KazooState.LOST:
            self._session_lost = True
        self._connected = state == KazooState.CONNECTED
        self._wake.set()

    def _let_go(self) -> None:
        self.resign()

    def __enter__(self) -> Election:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
