"""A partition replica hosted by a broker: its ring, its log, and the drain between them.

The leader replica owns the partition's shared-memory ring (producers append to
it directly) and a drain thread that copies published batches from the ring
into the log's segment files, then moves the ring's drain cursor, which frees
ring space for producers. Only the broker process that hosts the replica calls
it; the drain thread is the only writer of the log.

Crash behaviour: after a kill -9 of the broker the ring stays in shared memory
with everything producers published; the next broker reopens it, recovers the
log (cutting a torn tail) and resumes draining from the log's end, so records
the ring still holds are not lost. A graceful stop seals the ring (producers get
NotLeaderError and look the leader up again), drains it, flushes and unlinks it.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from pathlib import Path
from typing import Any

from engine.log import Log, LogConfig
from engine.ring import EMPTY, FRAME_HEADER_LENGTH, OK, OUT_TOO_SMALL, OVERWRITTEN, Ring, unlink

log = logging.getLogger("engine.replica")

DRAIN_CHUNK = 1 << 20
HOUSEKEEPING_S = 1.0
# Kafka's log.retention.check.interval.ms (default 5 min); ours is shorter, and the
# environment can set it (tests do).
RETENTION_CHECK_S = float(os.environ.get("ENGINE_RETENTION_CHECK_MS", "5000")) / 1000
POLL_SLEEP_S = 0.0005
IDLE_POLLS = 200  # 100 ms of sleep-polling before the drain blocks on the ring


class LeaderReplica:
    """The leader's ring and log of one partition, and the thread that drains one into the other."""

    def __init__(
        self,
        topic: str,
        partition: int,
        directory: Path,
        ring_name: str,
        config: dict[str, Any],
        leader_epoch: int,
    ) -> None:
        self.topic = topic
        self.partition = partition
        self.ring_name = ring_name
        self.log = Log.open(directory, LogConfig.from_mapping(config))
        self.ring = self._open_ring(config, leader_epoch)
        self._stop = threading.Event()
        self._stop_deadline = 0.0
        self._error: BaseException | None = None
        self._thread = threading.Thread(
            target=self._drain_loop, name=f"drain-{topic}-{partition}", daemon=True
        )
        self._thread.start()

    def _open_ring(self, config: dict[str, Any], leader_epoch: int) -> Ring:
        end = self.log.log_end_offset
        capacity = int(config["ring.bytes"])
        max_frame = int(config["max.message.bytes"]) + FRAME_HEADER_LENGTH
        try:
            ring = Ring.open(self.ring_name)
        except FileNotFoundError:
            ring = None
        except Exception as exc:  # noqa: BLE001 - an unusable ring is replaced, with a log line
            log.warning("replacing unusable ring %s: %s", self.ring_name, exc)
            ring = None
        if ring is not None:
            status = ring.status()
            if status.drain_offset <= end and status.capacity == capacity:
                cursor = ring.seek(end)
                if cursor is not None:
                    ring.drain_to(cursor)
                    ring.set_leader(leader_epoch, sealed=False)
                    log.info(
                        "resumed ring %s: log end %d, ring tail %d",
                        self.ring_name,
                        end,
                        status.tail_offset,
                    )
                    return ring
            log.warning(
                "ring %s does not match the log (drain offset %d, log end %d): recreating",
                self.ring_name,
                status.drain_offset,
                end,
            )
            # Producers that still map the old ring must not append into an orphan.
            ring.set_leader(status.leader_epoch, sealed=True)
            ring.close()
        return Ring.create(
            self.ring_name,
            capacity,
            base_offset=end,
            max_frame_length=max_frame,
            leader_epoch=leader_epoch,
            replace=True,
        )

    def _drain_loop(self) -> None:
        buf = bytearray(DRAIN_CHUNK)
        view = memoryview(buf)
        cursor = self.ring.drain_cursor()
        last_retention = 0.0
        idle_polls = 0
        try:
            while True:
                code, n = self.ring.read(cursor, buf)
                if code == OK:
                    idle_polls = 0
                    self.log.append(view[:n])
                    self.ring.drain_to(cursor)
                    self.log.maybe_flush()
                    continue
                if code == OUT_TOO_SMALL:
                    buf = bytearray(max(n, 2 * len(buf)))
                    view = memoryview(buf)
                    continue
                if code == OVERWRITTEN:
                    raise RuntimeError(f"drain cursor was overwritten: ring={self.ring_name}")
                assert code == EMPTY
                if self._stop.is_set():
                    # Sealed: no new claims. Claims already made publish within
                    # microseconds (or are reaped if their producer died), so wait
                    # until the drain cursor reaches the tail.
                    if self.ring.status().tail_position <= cursor.position:
                        return
                    if time.monotonic() > self._stop_deadline:
                        log.error(
                            "stopping %s-%d with unpublished claims", self.topic, self.partition
                        )
                        return
                    self.ring.wait(cursor, 0.05)
                    continue
                now = time.monotonic()
                self.log.maybe_flush()
                if now - last_retention > RETENTION_CHECK_S:
                    self.log.apply_retention(int(time.time() * 1000))
                    last_retention = now
                # Sleep-poll while producers are active, so that they do not pay a
                # futex wake per append; only a ring idle for IDLE_POLLS polls is
                # waited on (then an append wakes the drain at once).
                idle_polls += 1
                if idle_polls < IDLE_POLLS:
                    time.sleep(POLL_SLEEP_S)
                else:
                    self.ring.wait(cursor, HOUSEKEEPING_S)
        except BaseException as exc:
            self._error = exc
            log.exception("drain of %s-%d failed", self.topic, self.partition)

    @property
    def failed(self) -> BaseException | None:
        return self._error

    def status(self) -> dict[str, Any]:
        s = self.ring.status()
        return {
            "log_start_offset": self.log.log_start_offset,
            "log_end_offset": s.tail_offset,
            "drain_offset": s.drain_offset,
            "reaped_frames": s.reaped_frames,
        }

    def stop(self, delete: bool = False) -> None:
        """Seal the ring, drain what producers published, flush, close; unlink the ring."""
        self.ring.set_leader(self.ring.status().leader_epoch, sealed=True)
        self._stop_deadline = time.monotonic() + 5.0
        self._stop.set()
        self._thread.join(timeout=30)
        if self._thread.is_alive():
            log.error("drain of %s-%d did not stop in 30 s", self.topic, self.partition)
        self.log.flush()
        directory = self.log.directory
        self.log.close()
        self.ring.close()
        unlink(self.ring_name)
        if delete:
            import shutil

            shutil.rmtree(directory, ignore_errors=True)
