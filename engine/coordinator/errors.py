"""Errors the coordinator raises internally.

Both derive from the engine's root, :class:`engine.errors.EngineError`::

    EngineError
    ├── KeeperError                 a request failed with a ZooKeeper error code; the
    │                               code goes back to the client in the reply header
    └── JuteError (ValueError)      bytes from a client do not decode as the record
                                    they claim to be (truncated, negative length, ...)
"""

from __future__ import annotations

from engine.errors import EngineError


class KeeperError(EngineError):
    """A request failed with a ZooKeeper error code (``code`` is a negative int)."""

    def __init__(self, code: int, message: str = "") -> None:
        super().__init__(message or f"zookeeper error: code={code}")
        self.code = code


class JuteError(EngineError, ValueError):
    """A frame or record from a client is malformed; the connection cannot trust it."""
