"""A partition replica hosted by a broker: its ring, its log, and the threads between them.

Every replica has its own shared-memory ring and its own log, and a drain thread
that copies published batches from the ring into the log's segment files, then
moves the ring's drain cursor, which frees ring space. The drain thread is the
only writer of the log; only the hosting broker process calls a replica.

- The leader's ring takes producers' appends. With followers, a replicate thread
  computes the high watermark (the least log end offset over the ISR), publishes
  it in the ring header (readers and acks="all" producers wait on it; the drain
  never writes past it), and shrinks or expands the ISR in the coordinator.
- A follower's ring is sealed against producers; a fetch thread copies the
  leader's batches into it byte for byte (from the leader's ring, or from the
  leader's segments when the ring has moved on) and so publishes the follower's
  log end offset in its own ring header, where the leader reads it. On start it
  first truncates what its log holds beyond the leader's (a divergent tail).

Crash behaviour: after a kill -9 of the broker the ring stays in shared memory
with everything producers published; the next broker reopens it, recovers the
log (cutting a torn tail) and resumes draining from the log's end, so records
the ring still holds are not lost. A follower resumes its ring only when the ring
holds nothing beyond its log (else it makes it anew and fetches again: see
Replica.keeps_undrained_tail). A ring that is not the engine user's own with
mode 0600 is never resumed: it is removed and made anew (see engine.ring). A
graceful stop seals the ring (producers get NotLeaderError and look the leader up
again), drains it, flushes and unlinks it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from engine import cleaner
from engine.errors import EngineError, RingPermissionError
from engine.log import Log, LogConfig, LogReader
from engine.record_batch import (
    BATCH_HEADER_LENGTH,
    BATCH_INFO_DTYPE,
    encode_empty_batch,
    read_batch_header,
    scan_batches,
)
from engine.ring import (
    FRAME_HEADER_LENGTH,
    FULL,
    NO_LIMIT,
    OK,
    OUT_TOO_SMALL,
    OVERWRITTEN,
    SEALED,
    Cursor,
    Interrupt,
    Ring,
    follow,
    track_high_watermark,
    unlink,
)

log = logging.getLogger("engine.replica")

DRAIN_CHUNK = 1 << 20  # bytes of batches a drain pass takes at most
DRAIN_BATCHES = 4096  # batches a drain pass takes at most
HOUSEKEEPING_S = 1.0
# Kafka's log.retention.check.interval.ms (default 5 min); ours is shorter, and the
# environment can set it (tests do).
RETENTION_CHECK_S = float(os.environ.get("ENGINE_RETENTION_CHECK_MS", "5000")) / 1000
# The drain sleep-polls a busy ring (so that producers pay no futex wake per append):
# between passes it sleeps about as long as the ring takes to fill a quarter at the
# rate of the last pass (the shorter bound after the ring was empty: a burst may
# follow a quiet spell), within these bounds. Each look costs its broker some CPU
# (with replication, a dozen drains per broker set), so not more often than needed:
# the ring holds what arrives meanwhile (5 ms at 1 GB/s is 5 MB of a 16 MiB ring),
# and consumers read the ring, not the segments. A producer that finds the ring full
# ends the sleep (Ring.wait_full), so a burst never waits out a long one.
POLL_SLEEP_S = 0.005
MAX_POLL_SLEEP_S = 0.05
STOP_GRACE_S = 5.0
STOP_COMMIT_WAIT_S = 0.5  # how long a stopping leader waits for followers to commit
LAG_CHECK_S = 0.05  # while a follower lags, look at the ISR this often
FOLLOWER_RING_RETRY_S = 0.01  # while a follower's ring is missing or stale, look again
FETCH_CHUNK = 1 << 20
IDLE_POLLS = 20  # 100 ms of sleep-polling before the drain blocks on the ring
# The replication loops (native/replicate.c) pause this long between passes while
# records keep coming (doubling while they keep coming, to 16 times this), so that a
# pass copies or commits what gathered meanwhile and producers pay no futex wake per
# append; acks="all" waits up to 1.6 ms longer per hop under sustained load. An idle
# ring is waited on: the first record after a quiet spell is copied at once.
REPLICA_PAUSE_S = 0.0001
FOLLOW_TIMEOUT_S = 0.1  # a follower's fetch looks at its stop flag at least this often
FOLLOW_APPEND_TIMEOUT_S = 1.0  # a full follower ring: seek again after this long
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")  # /proc's unit of CPU time, per second
CLEAN_RETRY_S = 60.0  # after a failed clean (a corrupt batch), ask again this much later
LEADER = -1  # a follower's key for its leader's ring among its peers (a leader keys by broker)


class Replica:
    """One replica of a partition: its ring, its log, the drain thread between them.

    Subclasses add the leader's replicate thread or the follower's fetch thread.
    """

    role = "replica"
    #: Whether a ring resumed after a restart keeps what it holds beyond the log (not
    #: yet drained). A leader's does: its records (the ISR's own copies of the
    #: committed ones among them) go nowhere else. A follower's does not: its tail may
    #: have been written when it led, in an epoch whose leader lost it (never committed,
    #: not the new leader's), and the leader would count it as held; the follower makes
    #: its ring anew at its (truncated) log end and fetches the rest again.
    keeps_undrained_tail = True

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
        self.leader_epoch = leader_epoch
        self.config = dict(config)
        #: Records before this offset are to be deleted (Admin.delete_records): the
        #: drain thread moves the log start offset up to it, as far as its log reaches.
        self.log_start_wanted = 0
        self.log = Log.open(directory, LogConfig.from_mapping(config))
        try:
            self._prepare_log()
            self.ring = self._open_ring(config, leader_epoch)
        except BaseException:
            self.log.close()  # the broker tries again later, with a new Log
            raise
        self._stop = threading.Event()
        # Set (then the rings woken) to make the C replication loops return to Python.
        self._interrupt = Interrupt()
        # Other replicas' rings the C loops wait on (a leader's followers, a follower's
        # leader): _wake() wakes them too, so that a stop or an ISR change is seen at
        # once rather than after the loop's timeout. The loop holds the lock while it
        # opens or closes one (a closed ring must not be woken).
        self._peers: dict[int, Ring] = {}
        self._peers_lock = threading.Lock()
        self._stop_deadline = 0.0
        self._error: BaseException | None = None
        #: For the metrics (engine.broker_stats reads them): the drain's passes that
        #: moved batches and their wall time, and the returns of the C replication loop
        #: (a leader's high-watermark tracking, a follower's fetch). Each is written by
        #: one thread only.
        self.drain_passes = 0
        self.drain_seconds = 0.0
        self.replication_passes = 0
        self._threads: list[threading.Thread] = []
        self._add_thread("drain", self._drain_loop)
        if self.log.config.compact:
            self._add_thread("cleaner", self._clean_loop)

    def _prepare_log(self) -> None:
        """Hook run after the log is open and before the ring: followers truncate here."""

    def start(self) -> None:
        """Start the threads; a leader's ring then opens to producers (until now it was
        sealed, so that no producer appended before the ISR count and high watermark
        were in place)."""
        for thread in self._threads:
            thread.start()
        if self.role == "leader":
            self.ring.set_leader(self.leader_epoch, sealed=False)

    def _add_thread(self, kind: str, body: Callable[[], None]) -> None:
        """A daemon thread running body; a failure is kept for the broker's supervision."""

        def run() -> None:
            try:
                body()
            except BaseException as exc:
                self._error = exc
                log.exception("%s of %s-%d failed", kind, self.topic, self.partition)

        name = f"{kind}-{self.topic}-{self.partition}"
        self._threads.append(threading.Thread(target=run, name=name, daemon=True))

    def _open_ring(self, config: dict[str, Any], leader_epoch: int) -> Ring:
        end = self.log.log_end_offset
        capacity = int(config["ring.bytes"])
        max_frame = int(config["max.message.bytes"]) + FRAME_HEADER_LENGTH
        try:
            ring = Ring.open(self.ring_name)
        except FileNotFoundError:
            ring = None
        except RingPermissionError as exc:
            # Another user made it (or opened it up): whatever it holds is not ours to
            # resume, and whoever maps it keeps their mapping of that object only. When
            # this process may not remove it (neither root nor its owner), unlink raises
            # and the replica stays down (the broker says why and tries again later).
            unlink(self.ring_name)
            log.warning("removed a ring that was not this user's alone, to make its own: %s", exc)
            ring = None
        except Exception as exc:  # noqa: BLE001 - an unusable ring is replaced, with a log line
            log.warning("replacing unusable ring %s: %s", self.ring_name, exc)
            ring = None
        if ring is not None:
            status = ring.status()
            beyond = status.tail_offset > end and not self.keeps_undrained_tail
            if beyond:
                log.warning(
                    "ring %s holds offsets %d-%d beyond the log, which the leader may not "
                    "hold: recreating it (the fetch copies what the leader has)",
                    self.ring_name,
                    end,
                    status.tail_offset - 1,
                )
            elif status.drain_offset <= end and status.capacity == capacity:
                cursor = ring.seek(end)
                if cursor is not None:
                    ring.drain_to(cursor)
                    ring.set_leader(leader_epoch, sealed=True)  # start() opens a leader's
                    log.info(
                        "resumed ring %s: log end %d, ring tail %d",
                        self.ring_name,
                        end,
                        status.tail_offset,
                    )
                    return ring
            if not beyond:
                log.warning(
                    "ring %s does not match the log (drain offset %d, log end %d): recreating",
                    self.ring_name,
                    status.drain_offset,
                    end,
                )
            # Producers that still map the old ring must not append into an orphan;
            # consumers that map it see the seal and look the leader up again.
            ring.set_leader(status.leader_epoch, sealed=True)
            ring.close()
        ring = Ring.create(
            self.ring_name,
            capacity,
            base_offset=end,
            max_frame_length=max_frame,
            leader_epoch=leader_epoch,
            replace=True,
            sealed=True,  # start() opens a leader's
        )
        return ring

    def _drain_loop(self) -> None:
        # Batches are written from the ring into the segment where they lie (peek, then
        # Log.append_checked): no copy on the way.
        infos = np.empty(DRAIN_BATCHES, dtype=BATCH_INFO_DTYPE)
        data = self.ring.data
        cursor = self.ring.drain_cursor()
        quarter = self.ring.status().capacity / 4
        longest = min(MAX_POLL_SLEEP_S, max(POLL_SLEEP_S, self.log.config.flush_ms / 1000))
        last_retention = 0.0
        last_pass: float | None = None  # None: the ring was empty since (rate unknown)
        idle_polls = 0
        full_waits = 0
        # A leader drains what the ISR holds (below its high watermark); a follower all
        # it copied (its ring's high watermark is kept low for the readers: see
        # FollowerReplica).
        limit, respect_hw = (-1, True) if self.role == "leader" else (NO_LIMIT, False)
        while True:
            wanted = self.log_start_wanted
            if wanted > self.log.log_start_offset and self.log.log_end_offset >= wanted:
                self.log.delete_records_before(wanted)  # once the log holds that far
            count = self.ring.peek(cursor, limit, DRAIN_CHUNK, infos)
            if count:
                started = time.monotonic()
                idle_polls = 0
                batches = infos[:count]
                n = int(batches["length"].sum())
                self.log.append_checked(data, batches)
                self.ring.drain_to(cursor)
                self.log.maybe_flush()
                now = time.monotonic()
                self.drain_passes += 1
                self.drain_seconds += now - started
                sleep = POLL_SLEEP_S  # after an empty ring: the rate is yet to be seen
                if last_pass is not None:  # bytes/s since the previous pass
                    rate = n / max(now - last_pass, 1e-6)
                    sleep = min(longest, max(POLL_SLEEP_S, quarter / rate))
                last_pass = now
                if n < DRAIN_CHUNK // 2 and count < DRAIN_BATCHES and not self._stop.is_set():
                    # Caught up with the producers: let the next chunk gather instead
                    # of chasing them a batch at a time (each pass costs about the same
                    # work, big or small), unless a producer found the ring full
                    # meanwhile; one that finds it full while the drain sleeps ends
                    # the sleep at once (a burst waits a pass, not the whole sleep).
                    now_full_waits = self.ring.status().full_waits
                    if now_full_waits == full_waits:
                        self.ring.wait_full(now_full_waits, sleep)
                    full_waits = now_full_waits
                continue
            last_pass = None
            if self._stop.is_set():
                # Sealed: no new claims. Claims already made publish within
                # microseconds (or are reaped if their producer died), so wait
                # until the drain cursor reaches the tail.
                status = self.ring.status()
                if status.tail_position <= cursor.position:
                    return
                uncommitted = respect_hw and 0 <= status.high_watermark <= cursor.offset
                waited = time.monotonic() - (self._stop_deadline - STOP_GRACE_S)
                if uncommitted and waited > STOP_COMMIT_WAIT_S:
                    return  # what is left never reached the ISR: not acknowledged
                if time.monotonic() > self._stop_deadline:
                    log.error("stopping %s-%d with unpublished claims", self.topic, self.partition)
                    return
                self.ring.wait(cursor, 0.05, respect_hw)
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
                self.ring.wait(cursor, HOUSEKEEPING_S, respect_hw)

    def _clean_loop(self) -> None:
        """A compacted topic's replica cleans its own log (engine/cleaner.py) every
        cleaner.BACKOFF_S, on this thread: the drain goes on meanwhile."""
        log_cleaner = cleaner.LogCleaner(self.log)
        delay = cleaner.BACKOFF_S
        while not self._stop.wait(delay):
            delay = cleaner.BACKOFF_S
            if not self.log.config.compact:
                continue  # altered back to delete only
            try:
                committed = self._committed_offset()
                log_cleaner.clean(should_stop=self._stop.is_set, committed_offset=committed)
            except (EngineError, OSError) as exc:
                log.error(
                    "cleaning %s-%d failed: %s (trying again in %.0f s)",
                    self.topic, self.partition, exc, CLEAN_RETRY_S,
                )  # fmt: skip
                delay = CLEAN_RETRY_S

    def _committed_offset(self) -> int:
        """Below this offset this replica's log holds only records the ISR committed (the
        cleaner cleans nothing above it). A leader's own high watermark (its log, when
        it has no followers); a follower's leader's, while it reads the leader's ring."""
        if self.role == "leader":
            high_watermark = self.ring.status().high_watermark
            return self.log.log_end_offset if high_watermark < 0 else high_watermark
        with self._peers_lock:
            leader = self._peers.get(LEADER)
            high_watermark = leader.status().high_watermark if leader is not None else -1
        return max(high_watermark, 0)

    def adopt_config(self, config: dict[str, Any]) -> None:
        """The topic's config was altered (the broker's thread): the log takes its new
        settings (retention, segment rolls, flushes, index interval) from its next append
        or retention check on the drain thread, which reads ``log.config`` afresh each
        time. ring.bytes and max.message.bytes never change here (engine.config
        FIXED_AT_CREATION: an alter refuses them)."""
        if config == self.config:
            return
        self.config = dict(config)
        self.log.config = LogConfig.from_mapping(config)
        if self.log.config.compact and not self._stop.is_set() and not any(
            thread.name.startswith("cleaner-") for thread in self._threads
        ):  # altered to compact: this replica's cleaner starts now
            self._add_thread("cleaner", self._clean_loop)
            self._threads[-1].start()
        self._wake()

    def delete_records_before(self, offset: int) -> None:
        """Ask the drain thread to delete the records before ``offset`` (the broker's
        thread): Log.delete_records_before, at its next pass."""
        if offset > self.log_start_wanted:
            self.log_start_wanted = offset
            self._wake()

    def _wake(self) -> None:
        """Wake whatever this replica's threads wait on: its ring and its peers' rings."""
        self.ring.wake()
        with self._peers_lock:
            for ring in self._peers.values():
                ring.wake()

    def _set_peer(self, key: int, ring: Ring | None) -> None:
        """Keep ``ring`` as the peer ``key`` (None: forget it), closing the one it replaces."""
        with self._peers_lock:
            old = self._peers.pop(key, None)
            if ring is not None:
                self._peers[key] = ring
            if old is not None and old is not ring:
                old.close()

    @property
    def failed(self) -> BaseException | None:
        return self._error

    def thread_cpu_seconds(self) -> dict[str, float]:
        """CPU seconds each kind of this replica's threads used so far ("drain",
        "replicate", "fetch"), from /proc (by thread id: safe for a thread that ended
        meanwhile, which counts nothing)."""
        out: dict[str, float] = {}
        for thread in self._threads:
            kind = thread.name.split("-", 1)[0]
            if thread.native_id is None:
                continue  # not started
            try:
                with open(f"/proc/self/task/{thread.native_id}/stat", "rb") as f:
                    fields = f.read().rsplit(b")", 1)[1].split()
            except OSError:
                continue
            # utime and stime: fields 14 and 15 of proc(5), the 12th and 13th after ")".
            used = (int(fields[11]) + int(fields[12])) / CLOCK_TICKS
            out[kind] = out.get(kind, 0.0) + used
        return out

    def status(self) -> dict[str, Any]:
        s = self.ring.status()
        return {
            "log_start_offset": self.log.log_start_offset,
            "log_end_offset": s.tail_offset,
            "drain_offset": s.drain_offset,
            "reaped_frames": s.reaped_frames,
        }

    def stop(self, delete: bool = False) -> None:
        """Seal the ring, drain what producers published, flush, close; unlink the ring.

        ``delete`` (the topic was deleted) removes the log instead of flushing it: an
        fsync of what is about to be removed would only make the deletion slow (a second
        per 600 MB here)."""
        self.ring.set_leader(self.ring.status().leader_epoch, sealed=True)
        self._stop_deadline = time.monotonic() + STOP_GRACE_S
        self._stop.set()
        self._interrupt.set()
        self._wake()
        for thread in self._threads:
            if thread.ident is not None:
                thread.join(timeout=30)
            if thread.is_alive():
                log.error("%s did not stop in 30 s", thread.name)
        if not delete:
            self.log.flush()
        directory = self.log.directory
        self.log.close(flush=not delete)
        self.ring.close()
        unlink(self.ring_name)
        if delete:
            import shutil

            shutil.rmtree(directory, ignore_errors=True)


class LeaderReplica(Replica):
    """The leader: producers append to its ring; with followers it keeps the high watermark.

    ``followers`` maps each follower broker id to its ring's name; ``isr`` is the ISR
    the coordinator holds; ``update_isr(isr)`` writes a new ISR there (False when the
    write lost a race, for example against a new leader epoch).
    """

    role = "leader"

    def __init__(
        self,
        topic: str,
        partition: int,
        directory: Path,
        ring_name: str,
        config: dict[str, Any],
        leader_epoch: int,
        broker_id: int = 0,
        followers: dict[int, str] | None = None,
        isr: tuple[int, ...] = (),
        update_isr: Callable[[tuple[int, ...]], bool] | None = None,
    ) -> None:
        super().__init__(topic, partition, directory, ring_name, config, leader_epoch)
        self.broker_id = broker_id
        self.followers = dict(followers or {})
        self.isr = set(isr) | {broker_id}
        self.update_isr = update_isr
        self.lag_max_s = int(config.get("replica.lag.time.max.ms", 30_000)) / 1000
        if self.followers:
            status = self.ring.status()
            if status.high_watermark < 0:
                # A ring new to leadership (a promoted follower's holds records the old
                # ISR may not have committed): start low, the loop raises it as soon as
                # the ISR holds what the leader holds.
                self.ring.set_high_watermark(self.log.log_start_offset)
            self.ring.set_isr_count(len(self.isr))
            self._add_thread("replicate", self._replicate_loop)
        else:
            self.ring.set_high_watermark(-1)
            self.ring.set_isr_count(1)

    def _replicate_loop(self) -> None:
        published = self.ring.drain_cursor()
        brokers = list(self.followers)
        seen: dict[int, tuple[int, float]] = {}  # follower -> (log end, since)
        ends = [-1] * len(brokers)
        caught_up_ns = [time.monotonic_ns()] * len(brokers)  # the lag clocks start now
        refused: dict[int, float] = {}  # follower -> when adding it to the ISR was refused
        while not self._stop.is_set():
            self._interrupt.clear()  # before reading the ISR: adopt_isr sets it after
            isr = set(self.isr)
            now = time.monotonic()
            followers = [
                self._follower_ring(b, seen, now, stale=ends[i] < 0) for i, b in enumerate(brokers)
            ]
            for i, b in enumerate(brokers):
                if followers[i] is None:
                    ends[i] = seen[b][0]
            now_ns = time.monotonic_ns()
            if any(ends[i] < 0 and b in isr for i, b in enumerate(brokers)):
                timeout = FOLLOWER_RING_RETRY_S  # the high watermark waits for that ring
            elif any(now_ns - c > LAG_CHECK_S * 1e9 for c in caught_up_ns):
                timeout = LAG_CHECK_S
            else:
                timeout = HOUSEKEEPING_S
            called_ns = now_ns
            membership = [
                1 if b in isr else 2 if now - refused.get(b, -1e9) < HOUSEKEEPING_S else 0
                for b in brokers
            ]
            track_high_watermark(
                self.ring, published, followers, membership,
                self.leader_epoch, ends, caught_up_ns,
                timeout, REPLICA_PAUSE_S, self._interrupt,
            )  # fmt: skip
            self.replication_passes += 1
            now, now_ns = time.monotonic(), time.monotonic_ns()
            for i, b in enumerate(brokers):
                if ends[i] >= 0 and ends[i] != seen[b][0]:
                    seen[b] = (ends[i], now)
            # Kafka's rule: an ISR member stays while it caught up with the leader within
            # replica.lag.time.max.ms; a follower outside rejoins once it caught up.
            lag_max_ns = int(self.lag_max_s * 1e9)  # an altered config takes effect here
            wanted = {self.broker_id} | {
                b
                for i, b in enumerate(brokers)
                if (b in isr and now_ns - caught_up_ns[i] <= lag_max_ns)
                or (membership[i] == 0 and caught_up_ns[i] >= called_ns)
            }
            if wanted != isr:
                if self._write_isr(wanted):
                    log.info(
                        "%s-%d: ISR %s -> %s",
                        self.topic,
                        self.partition,
                        sorted(isr),
                        sorted(wanted),
                    )
                    self.isr = wanted
                    self.ring.set_isr_count(len(wanted))
                else:  # lost a race, a follower not registered, or no coordinator
                    refused.update((b, now) for b in wanted - isr)
        for b in brokers:
            self._set_peer(b, None)

    def adopt_config(self, config: dict[str, Any]) -> None:
        """The log's settings (Replica.adopt_config) and replica.lag.time.max.ms, which
        the replicate loop reads at each pass."""
        self.lag_max_s = int(config.get("replica.lag.time.max.ms", 30_000)) / 1000
        super().adopt_config(config)

    def adopt_isr(self, isr: tuple[int, ...]) -> None:
        """The coordinator's ISR changed underneath (the controller dropped a dead broker)."""
        new = set(isr) | {self.broker_id}
        if new != self.isr:
            self.isr = new
            self.ring.set_isr_count(len(new))
            self._interrupt.set()  # the high-watermark loop looks at the new ISR
            self._wake()

    def _write_isr(self, isr: set[int]) -> bool:
        return self.update_isr is not None and self.update_isr(tuple(sorted(isr)))

    def _follower_ring(
        self,
        broker: int,
        seen: dict[int, tuple[int, float]],
        now: float,
        stale: bool,
    ) -> Ring | None:
        """The open ring of a follower (None: not there yet). Reopened when ``stale`` (it
        was not a follower ring of this leadership) or after a second without progress:
        the follower may have recreated it."""
        ring = self._peers.get(broker)
        last, since = seen.setdefault(broker, (-1, now))
        if ring is not None and (stale or now - since > 1.0):
            self._set_peer(broker, None)
            ring = None
            seen[broker] = (last, now)
        if ring is None:
            try:
                ring = Ring.open(self.followers[broker], populate=False)  # its header only
            except (FileNotFoundError, EngineError):
                seen[broker] = (last, now)
                return None
            self._set_peer(broker, ring)
        return ring


class FollowerReplica(Replica):
    """A follower: copies the leader's batches into its own ring, sealed against producers."""

    role = "follower"
    keeps_undrained_tail = False

    def __init__(
        self,
        topic: str,
        partition: int,
        directory: Path,
        ring_name: str,
        config: dict[str, Any],
        leader_epoch: int,
        leader_ring: str = "",
        leader_directory: Path | None = None,
    ) -> None:
        self.leader_ring_name = leader_ring
        self.leader_directory = leader_directory
        super().__init__(topic, partition, directory, ring_name, config, leader_epoch)
        # Consumers never read a follower's ring, but one may still map this ring from
        # when it led (a daemon restarted under it), before it sees the seal: what it
        # may read is bounded by the high watermark, which must then say only what was
        # committed. A ring it led keeps the one it had (the ISR held that much); a new
        # ring gets the log start (nothing). The drain ignores it (see _drain_loop).
        if self.ring.status().high_watermark < 0:
            self.ring.set_high_watermark(self.log.log_start_offset)
        self._add_thread("fetch", self._fetch_loop)

    def _prepare_log(self) -> None:
        """Cut what this log holds beyond the leader's: a tail no ISR ever committed."""
        end = self.log.log_end_offset
        start = self.log.log_start_offset
        leader_reader: LogReader | None = None
        leader_ring: Ring | None = None
        try:
            leader_ring = Ring.open(self.leader_ring_name, populate=False)
        except (FileNotFoundError, EngineError):
            leader_ring = None
        try:
            if self.leader_directory is not None:
                with contextlib.suppress(OSError, EngineError):  # the leader's log not made yet
                    leader_reader = LogReader(self.leader_directory)
            while end > start:
                mine = self.log.read(end - 1, 1)
                info = scan_batches(mine, verify_crc=False)[0]
                if not len(info):
                    break
                base = int(info["base_offset"][0])
                ours = bytes(mine[: int(info["length"][0])])
                theirs = self._leader_batch(base, leader_ring, leader_reader)
                if theirs is None or _same_batch(ours, theirs, self.log.config.compact):
                    break  # the leader has it (or cannot tell us): keep it
                end = base
            if end < self.log.log_end_offset:
                log.warning(
                    "%s-%d: truncating a divergent tail from %d to %d",
                    self.topic,
                    self.partition,
                    self.log.log_end_offset,
                    end,
                )
                self.log.truncate_to(end)
            leader_start = leader_reader.log_start_offset if leader_reader is not None else -1
            if leader_start > self.log.log_end_offset and leader_ring is not None:
                # What lies between is gone from the leader (retention, deleted records):
                # Kafka's truncate-fully. The log starts again at the first batch the
                # leader still holds (it may begin below the leader's log start, which
                # this log takes too once it holds that far: delete_records_before).
                assert leader_reader is not None
                first = leader_reader.read(leader_start, 1, leader_ring.status().drain_offset)
                infos = scan_batches(first, verify_crc=False)[0]
                base = int(infos["base_offset"][0]) if len(infos) else leader_start
                log.warning(
                    "%s-%d: the log ends at %d, below the leader's log start %d: starting "
                    "it anew at %d", self.topic, self.partition, self.log.log_end_offset,
                    leader_start, base,
                )  # fmt: skip
                self.log.truncate_fully_and_start_at(base)
                self.log_start_wanted = max(self.log_start_wanted, leader_start)
        finally:
            if leader_reader is not None:
                leader_reader.close()
            if leader_ring is not None:
                leader_ring.close()

    @staticmethod
    def _leader_batch(base: int, ring: Ring | None, reader: LogReader | None) -> bytes | None:
        """The leader's batch at base offset ``base``; b"" if it has none; None if unknown."""
        if ring is not None:
            cursor = ring.seek(base)
            if cursor is not None:
                buf = bytearray(FETCH_CHUNK)
                code, n = ring.read(cursor, buf, max_offset=NO_LIMIT)
                return bytes(buf[:n]) if code == OK else b""
        if reader is not None and ring is not None:
            try:
                return reader.read(base, 1, ring.status().drain_offset)
            except EngineError:
                return b""
        return None

    def _fetch_loop(self) -> None:
        leader: Ring | None = None
        reader: LogReader | None = None
        cursor: Cursor | None = None
        buf = bytearray(FETCH_CHUNK)
        try:
            while not self._stop.is_set():
                if leader is None:
                    try:
                        leader = Ring.open(self.leader_ring_name)
                    except (FileNotFoundError, EngineError):
                        self._stop.wait(0.05)
                        continue
                    self._set_peer(LEADER, leader)
                    cursor = None
                if cursor is None:
                    mine = self.ring.status().tail_offset
                    cursor = leader.seek(mine)
                    if cursor is None:  # the leader's ring has moved on: its segments
                        if reader is None and self.leader_directory is not None:
                            with contextlib.suppress(OSError, EngineError):
                                reader = LogReader(self.leader_directory)
                        if reader is None:
                            self._stop.wait(0.05)
                            continue
                        # From this log's start (a restart at the leader's first batch
                        # may begin below the leader's log start: _prepare_log).
                        at = max(mine, self.log_start_wanted)
                        data = reader.read(at, FETCH_CHUNK, leader.status().drain_offset)
                        if data:
                            self.ring.append_raw(_starting_at(data, mine))
                        else:
                            self._stop.wait(0.01)
                        continue
                code, needed = follow(
                    leader, cursor, self.ring, buf, FOLLOW_TIMEOUT_S, REPLICA_PAUSE_S,
                    FOLLOW_APPEND_TIMEOUT_S, self._interrupt,
                )  # fmt: skip
                self.replication_passes += 1
                if code == OUT_TOO_SMALL:
                    buf = bytearray(max(needed, 2 * len(buf)))
                elif code in (OVERWRITTEN, FULL):
                    cursor = None  # seek again from what this ring holds
                elif code == SEALED:
                    self._set_peer(LEADER, None)  # the leader stepped down or restarted
                    leader = None
                    self._stop.wait(0.05)
        finally:
            self._set_peer(LEADER, None)
            if reader is not None:
                reader.close()


def _same_batch(ours: bytes, theirs: bytes, compacted: bool) -> bool:
    """Whether the leader's batch ``theirs`` (and what follows it) is the batch ``ours``:
    the same bytes; in a compacted topic, whose replicas clean their logs each on its
    own, the same offsets and partition leader epoch (one leader wrote both: a batch of
    a divergent tail was written in another epoch). A false "not the same" only costs
    a fetch of what is cut."""
    if theirs[: len(ours)] == ours:
        return True
    if not compacted or min(len(ours), len(theirs)) < BATCH_HEADER_LENGTH:
        return False
    # base_offset @0, partition_leader_epoch @12, last_offset_delta @23 (native/batch.h).
    fields = (slice(0, 8), slice(12, 16), slice(23, 27))
    return all(ours[f] == theirs[f] for f in fields)


def _starting_at(data: bytes, offset: int) -> bytes:
    """``data``, whole batches a leader's segments gave for a read at ``offset``, made to
    start there. In a compacted log an empty batch may cover offsets on both sides of
    ``offset``: the cleaner merges runs of emptied batches, which this replica may hold
    only the first of (its log end is always a batch boundary of the leader's writes,
    and batches that keep records keep their boundaries). That batch is cut to start at
    ``offset``: a batch of no record over the rest of its offsets."""
    header = read_batch_header(data)
    if header.base_offset >= offset or header.last_offset < offset:
        return data  # (the ring refuses the latter, as it must)
    records_count = int.from_bytes(data[57:61], "big", signed=True)
    control = data[22] & 0x20  # attributes @21 (int16): the control bit is in its low byte
    if records_count or control:
        return data
    leader_epoch = int.from_bytes(data[12:16], "big", signed=True)
    cut = encode_empty_batch(
        offset,
        header.last_offset - offset + 1,
        leader_epoch=leader_epoch,
        timestamp=header.max_timestamp,
    )
    return cut + data[header.length :]
