"""Sessions: ids, passwords, negotiated timeouts, liveness and expiry.

A session outlives its TCP connections: a client that reconnects within its timeout with
the same id and password resumes it (and keeps its ephemeral nodes). Any complete packet
from the client, pings included, pushes the session's deadline forward; once the deadline
passes with no packet the session expires, which the server turns into a closeSession
transaction (deleting its ephemerals and firing watches).

The timeout a client asks for is clamped into [min, max] (:class:`SessionLimits`), as
ZooKeeper does with its minSessionTimeout and maxSessionTimeout.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Protocol

from engine.coordinator.tree import Identity
from engine.errors import ConfigError

#: The tick: the server looks for expired sessions (and due containers and TTL nodes)
#: once a tick, so a session ends within a tick of its deadline.
DEFAULT_TICK_MS = 200
#: ZooKeeper's default maximum (20 x its default tickTime of 2000 ms): long enough for
#: Kafka's sessions (zookeeper.session.timeout.ms, 18 s by default, 6 s before Kafka 2.5).
DEFAULT_MAX_SESSION_TIMEOUT_MS = 40_000


@dataclass(frozen=True, slots=True)
class SessionLimits:
    """The tick and the range of session timeouts (ZooKeeper's tickTime,
    minSessionTimeout and maxSessionTimeout), in milliseconds. Invariant:
    ``0 < min_timeout_ms <= max_timeout_ms`` and ``tick_ms > 0``; build it with
    :meth:`of`, which checks it."""

    tick_ms: int = DEFAULT_TICK_MS
    min_timeout_ms: int = 2 * DEFAULT_TICK_MS
    max_timeout_ms: int = DEFAULT_MAX_SESSION_TIMEOUT_MS

    @classmethod
    def of(cls, tick_ms: int | None = None, min_timeout_ms: int | None = None,
           max_timeout_ms: int | None = None) -> SessionLimits:
        """The limits with what was not given filled in: the tick 200 ms, the minimum 2
        ticks (as ZooKeeper), the maximum 20 ticks (as ZooKeeper) or 40 s, whichever is
        longer. ConfigError, naming the values, when they do not fit together."""
        tick = DEFAULT_TICK_MS if tick_ms is None else tick_ms
        if tick <= 0:
            raise ConfigError(f"the tick must be positive: tick_ms={tick}")
        low = 2 * tick if min_timeout_ms is None else min_timeout_ms
        high = (max(20 * tick, DEFAULT_MAX_SESSION_TIMEOUT_MS) if max_timeout_ms is None
                else max_timeout_ms)
        if not 0 < low <= high:
            raise ConfigError(
                "session timeouts need 0 < minimum <= maximum: "
                f"min_session_timeout_ms={low} max_session_timeout_ms={high}")
        return cls(tick, low, high)

    def negotiate(self, requested_ms: int) -> int:
        """The timeout a client gets: its request clamped into [min, max]."""
        return max(self.min_timeout_ms, min(self.max_timeout_ms, requested_ms))

    def argv(self) -> list[str]:
        """These limits as options of ``python -m engine.coordinator``."""
        return ["--tick-ms", str(self.tick_ms),
                "--min-session-timeout-ms", str(self.min_timeout_ms),
                "--max-session-timeout-ms", str(self.max_timeout_ms)]


class Attached(Protocol):
    """What a session knows of the connection currently serving it."""

    def close_for(self, reason: str) -> None: ...


@dataclass(slots=True, eq=False)
class Session:
    """One client session.

    ``deadline`` is a time.monotonic() value; ``identities`` are the ids added by addAuth
    on this session (ZooKeeper does not persist them: clients re-send auth on reconnect).
    ``connection`` is the connection serving it now, or None between connections.
    ``closing`` is set once a closeSession transaction for it has been issued.
    """

    session_id: int
    passwd: bytes
    timeout_ms: int
    deadline: float = 0.0
    identities: list[Identity] = field(default_factory=list)
    connection: Attached | None = None
    closing: bool = False

    def touch(self, now: float | None = None) -> None:
        self.deadline = (time.monotonic() if now is None else now) + self.timeout_ms / 1000.0


class SessionTracker:
    """All live sessions, keyed by id; owned by the server's event loop.

    Invariants: ids are unique and never reused (they start from the wall clock in ms
    shifted left by 24, like ZooKeeper's, and only grow); a session is in ``sessions``
    from its createSession transaction until its closeSession transaction. On a crash
    the sessions come back from the transaction log with fresh deadlines.
    """

    def __init__(self) -> None:
        self.sessions: dict[int, Session] = {}
        self._next_id = ((int(time.time() * 1000) << 24) & 0x00FF_FFFF_FFFF_FFFF) or 1

    def new_id(self) -> tuple[int, bytes]:
        session_id = self._next_id
        self._next_id += 1
        return session_id, secrets.token_bytes(16)

    def add(self, session_id: int, passwd: bytes, timeout_ms: int) -> Session:
        """Register a session (from a createSession transaction, live or replayed)."""
        session = Session(session_id, passwd, timeout_ms)
        session.touch()
        self.sessions[session_id] = session
        if session_id >= self._next_id:
            self._next_id = session_id + 1
        return session

    def remove(self, session_id: int) -> Session | None:
        return self.sessions.pop(session_id, None)

    def get(self, session_id: int) -> Session | None:
        return self.sessions.get(session_id)

    def expired(self, now: float | None = None) -> list[Session]:
        """Sessions past their deadline and not already closing."""
        now = time.monotonic() if now is None else now
        return [s for s in self.sessions.values() if s.deadline < now and not s.closing]

    def touch_all(self, sessions: Iterable[Session]) -> None:
        now = time.monotonic()
        for session in sessions:
            session.touch(now)
