"""Rings a dead daemon left in shared memory: drained into their logs, then removed.

A broker killed with SIGKILL leaves its rings in /dev/shm, holding every record
producers published there (acks=1 acknowledges a record once it is in the leader's
ring). A broker that comes back resumes its rings and drains them (engine.replica).
Rings nobody will resume are the daemon's to clean up, without losing what they hold:

- ``engine stop`` of a daemon that is no longer running drains every ring of its data
  dir into the log of the replica it belongs to, then removes it;
- ``engine start`` does the same, before it starts the brokers, for the rings of broker
  ids the new daemon will not run (a daemon restarted with fewer brokers).

Draining takes every published batch the log does not hold yet, above the high
watermark too, as the broker would have (a leader that comes back keeps what it held;
a replica whose tail diverges from its new leader cuts it when it starts following).
A ring with no log to go to (its partition directory is gone: a deleted topic) is
only removed. A claim whose producer is dead is reaped by the read; one whose producer
is still alive and has not published is left out, with a warning.

Who calls: the daemon process and the ``engine`` command, while no broker of the data
dir runs (the data dir's lock is held or its daemon is dead).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

from engine.datadir import DataDir
from engine.errors import EngineError, RingPermissionError
from engine.log import Log, LogConfig
from engine.ring import EMPTY, NO_LIMIT, OK, OUT_TOO_SMALL, Ring, unlink

log = logging.getLogger("engine.stale_rings")

SHM_DIR = "/dev/shm"
READ_CHUNK = 1 << 20
#: A drain accepts any batch the ring holds: the topic's real limits are in the
#: coordinator, which may be down; the brokers apply them again when they open the log.
_PERMISSIVE = LogConfig(max_message_bytes=2**31 - 1)


@dataclass(frozen=True)
class StaleRing:
    """One ring of the data dir's namespace, parsed from its name."""

    name: str  # with the leading "/"
    topic_id_prefix: str
    partition: int
    broker: int

    @classmethod
    def parse(cls, data_dir: DataDir, entry: str) -> StaleRing | None:
        prefix = data_dir.ring_prefix()
        if not entry.startswith(prefix):
            return None
        parts = entry[len(prefix) :].rsplit("-", 2)
        if len(parts) != 3 or not parts[1].isdigit() or not parts[2].isdigit():
            return None
        return cls("/" + entry, parts[0], int(parts[1]), int(parts[2]))

    def directory(self, data_dir: DataDir) -> Path | None:
        """The partition directory of this ring's replica, or None when there is none."""
        suffix = f"-{self.partition}"
        try:
            entries = list(os.scandir(data_dir.broker_dir(self.broker)))
        except OSError:
            return None
        for entry in entries:
            if not entry.name.endswith(suffix) or not entry.is_dir():
                continue
            try:
                topic_id = (Path(entry.path) / "topic.id").read_text().strip()
            except OSError:
                continue
            if topic_id[:16] == self.topic_id_prefix:
                return Path(entry.path)
        return None


@dataclass
class Cleanup:
    """What a cleanup did: rings removed, and the records drained from them."""

    rings: int = 0
    records: int = 0


def stale_rings(data_dir: DataDir) -> list[StaleRing]:
    try:
        entries = os.listdir(SHM_DIR)
    except OSError:
        return []
    found = (StaleRing.parse(data_dir, entry) for entry in sorted(entries))
    return [ring for ring in found if ring is not None]


def drain_and_remove(data_dir: DataDir, keep_brokers: set[int] | None = None) -> Cleanup:
    """Drain every ring of ``data_dir`` (but those of ``keep_brokers``) into its log and
    remove it."""
    done = Cleanup()
    for stale in stale_rings(data_dir):
        if keep_brokers is None or stale.broker not in keep_brokers:
            done.records += drain_and_remove_one(data_dir, stale)
            done.rings += 1
    return done


def drain_and_remove_one(data_dir: DataDir, stale: StaleRing) -> int:
    """Drain ``stale`` into its replica's log and remove it; how many offsets it added.
    RingPermissionError when the ring is another user's (it stays)."""
    try:
        records = _drain(data_dir, stale)
    except RingPermissionError:
        raise
    except (EngineError, OSError) as exc:
        log.warning("ring %s could not be drained, removing it: %s", stale.name, exc)
        records = 0
    unlink(stale.name)
    return records


def _drain(data_dir: DataDir, stale: StaleRing) -> int:
    """Append what ``stale`` holds past its log's end to the log; returns how many records."""
    directory = stale.directory(data_dir)
    if directory is None:
        return 0
    try:
        ring = Ring.open(stale.name, populate=False)
    except FileNotFoundError:
        return 0
    try:
        with Log.open(directory, _PERMISSIVE) as replica_log:
            start = replica_log.log_end_offset
            cursor = ring.seek(start)
            if cursor is None:  # the log holds all the ring still has, or more
                return 0
            buf = bytearray(READ_CHUNK)
            while True:
                code, n = ring.read(cursor, buf, max_offset=NO_LIMIT)
                if code == OK:
                    replica_log.append(memoryview(buf)[:n])
                elif code == OUT_TOO_SMALL:
                    buf = bytearray(max(n, 2 * len(buf)))
                else:
                    break
            if code != EMPTY:
                log.warning("ring %s: stopped draining at %s (code %d)", stale.name, cursor, code)
            elif ring.status().tail_position > cursor.position:
                log.warning("ring %s: a live producer's unpublished claim was left", stale.name)
            return replica_log.log_end_offset - start
    finally:
        ring.close()
