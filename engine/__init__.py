"""engine: a single-host streaming engine (Kafka and ZooKeeper for one box of processes)."""

from engine.errors import EngineError

__all__ = ["EngineError"]
