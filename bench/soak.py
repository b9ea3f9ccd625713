"""The soak: kill parts of a running engine again and again, then check every record.

    scripts/soak [--kills 100] [--seed S] [--data-dir DIR] [--producers 3] [--consumers 3]
                 [--rate 500] [--kinds broker,coordinator,producer,consumer,daemon] [--keep]

It starts a daemon of 3 brokers in a data dir of its own and creates 2 topics of 4
partitions, replication 3, ``min.insync.replicas`` 2. Producer processes (the default
Producer: acks="all", idempotent) send keyed records all along; consumer processes, one
consumer group, read them at least once (they record what they read, then commit).
Then, ``--kills`` times, it SIGKILLs one thing drawn at random:

- ``broker``: a broker process; the daemon restarts it.
- ``coordinator``: the coordinator process; the daemon restarts it.
- ``producer``: a producer process in the middle of its sends (it always has records in
  flight); a new producer process replaces it.
- ``consumer``: a consumer-group member; a new member process replaces it.
- ``daemon``: the whole daemon, its process group (the daemon, the coordinator, the
  brokers), then ``engine start`` again. The clients stay up and follow it back.

After each kill it waits until the engine has recovered: every process of the daemon
alive, every partition with a leader and an ISR of 3, and every producer and the group
making progress again (``--recovery-timeout``; a round that does not recover stops the
kills, is reported as a stall, and fails the run). Then it lets the clients run for a
moment (``--pause``) and kills again. One progress line per kill.

What is checked at the end, once the producers have stopped and the group has consumed
up to every high watermark: every partition is read from its first offset to its high
watermark (read_uncommitted), and

- **lost**: an acknowledged record (its future succeeded) that is not in the log;
- **duplicated**: a record in the log more than once (acknowledged or not: an idempotent
  producer never writes one twice);
- **out of order**: a record of a key whose sequence number is below one before it in
  the log (acknowledged or not);
- **acknowledged at an offset that holds another record**: the offset a producer's
  future reported is not where the record is;
- **never read by the group**: an acknowledged record no member read (at least once is
  the promise);
- **read by the group, not in the log** and **read at an offset that holds another
  record**: a member read a record that the log does not hold, or not there, in the
  end (a consumer must only see what the ISR holds, and that is never rewritten).

Each must be 0. The exit status is 1 if one is not, or when a round stalled, a client
process died on its own, or a client got an error that is not an EngineError. A record
whose future failed (never acknowledged) may be in the log or not; both are fine.

Records. Each producer process is one *incarnation* with its own keys (``<incarnation>.<k>``
for k < ``KEYS_PER_PRODUCER``); a key's records carry sequence numbers 0, 1, 2, ... in the
order of its sends. A record's value is its id, ``incarnation << 40 | k << 32 | seq``
(8 bytes, little-endian) and an 8-byte tag. A producer killed mid-send never comes back:
its replacement has new keys, so order per key stays checkable across kills.

Files (under the work dir, ``--data-dir`` or a new one in /tmp): ``engine/`` the daemon's
data dir (its process logs in ``engine/logs``); ``soak/acked-<inc>`` and
``soak/failed-<inc>``, rows of (id, offset) of what each producer incarnation saw
acknowledged or failed (offset -1); ``soak/consumed-<pid>``, (id, offset) of what each
member read, each poll's rows after a row (MARK, time in ns). Each batch of rows is one
write, so what a SIGKILLed process wrote survives it whole. ``soak/*.log``: the
clients' logs (errors as "ERROR <call> <class>"); ``soak/kills.log``: the progress lines
and the summary. The work dir is removed at the end unless ``--keep`` is given or the
run failed.
"""

from __future__ import annotations

import argparse
import contextlib
import enum
import logging
import multiprocessing as mp
import os
import random
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from engine import Admin, Consumer, EngineError, Producer, TopicPartition
from engine.datadir import DataDir, pid_alive
from engine.errors import CommitFailedError, DaemonNotRunningError
from engine.ring import unlink

TOPICS = ("soak-0", "soak-1")
PARTITIONS = 4
BROKERS = 3
GROUP = "soak"
TOPIC_CONFIG = {
    "min.insync.replicas": 2,
    "ring.bytes": 1 << 20,  # 2 x 4 x 3 rings of 1 MiB: 24 MiB of /dev/shm
    "max.message.bytes": 256 << 10,
    "segment.bytes": 8 << 20,  # segments roll during a long run
}
#: Keys of one producer incarnation; key k goes to TOPICS[k % len(TOPICS)].
KEYS_PER_PRODUCER = 16
TAG = b"soak-rec"
VALUE_SIZE = 8 + len(TAG)
#: A producer's options: the defaults (acks="all", idempotent), with deadlines shorter
#: than Kafka's two minutes so that a record the engine cannot deliver fails within a round.
PRODUCER_OPTIONS: dict[str, Any] = {"delivery_timeout_ms": 30_000, "max_block_ms": 30_000}
#: A producer waits for a window's futures this long at most; a future still undecided
#: then outlived its delivery_timeout_ms (a hung client) and is logged as such.
GET_SLACK_S = 15.0
CONSUMER_OPTIONS: dict[str, Any] = {
    "group_id": GROUP,
    "auto_offset_reset": "earliest",
    "enable_auto_commit": False,
    "session_timeout_ms": 3000,
    "heartbeat_interval_ms": 1000,
    "max_poll_records": 5000,
}
#: The rows of the soak's files: a record's id and the offset it was acknowledged at
#: (producers; -1 for a failed one) or read at (consumers). A consumer also writes a
#: row (MARK, time.time_ns()) before each poll's records.
ROW = np.dtype([("id", "<u8"), ("offset", "<i8")])
MARK = (1 << 64) - 1
ID = np.dtype("<u8")


class Kind(enum.Enum):
    """What a round kills."""

    BROKER = "broker"
    """One broker process (SIGKILL); the daemon restarts it."""
    COORDINATOR = "coordinator"
    """The coordinator process (SIGKILL); the daemon restarts it on the same port."""
    PRODUCER = "producer"
    """A producer process mid-send (SIGKILL); a new incarnation replaces it."""
    CONSUMER = "consumer"
    """A consumer-group member (SIGKILL); a new member process replaces it."""
    DAEMON = "daemon"
    """The daemon's whole process group (SIGKILL), then `engine start`."""


def record_id(incarnation: int, key: int, seq: int) -> int:
    return incarnation << 40 | key << 32 | seq


def describe_id(i: int) -> str:
    return f"key {i >> 40}.{(i >> 32) & 0xFF} seq {i & 0xFFFF_FFFF}"


def _clock(time_ns: int) -> str:
    return (
        time.strftime("%H:%M:%S", time.localtime(time_ns / 1e9))
        + f".{time_ns // 1_000_000 % 1000:03d}"
    )


# -- the client processes (spawned) ---------------------------------------------------


def _client_setup(log_path: str) -> logging.Logger:
    """A client process: its stderr and the engine's warnings go to its own log; Ctrl-C
    is the driver's to handle (the clients share its process group)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    os.dup2(fd, 2)
    os.close(fd)
    logging.basicConfig(
        level=logging.WARNING,
        stream=sys.stderr,
        format="%(asctime)s %(process)d %(name)s %(levelname)s %(message)s",
    )
    return logging.getLogger("soak")


def _append(fd: int, rows: list[tuple[int, int]]) -> None:
    """Append rows to a file in one write: a SIGKILL leaves whole rows or none."""
    if rows:
        os.write(fd, np.array(rows, dtype=ROW).tobytes())


def _open_append(path: Path) -> int:
    return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)


def producer_main(data_dir: str, soak_dir: str, incarnation: int, rate: int, stop: Any) -> None:
    """Send keyed records at ``rate`` records/s, in windows of 50 ms, until ``stop``;
    append each window's acknowledged (with their offsets) and failed ids to this
    incarnation's files."""
    log = _client_setup(f"{soak_dir}/producer-{incarnation}.log")
    acked_fd = _open_append(Path(soak_dir) / f"acked-{incarnation}")
    failed_fd = _open_append(Path(soak_dir) / f"failed-{incarnation}")
    keys = [b"%d.%d" % (incarnation, k) for k in range(KEYS_PER_PRODUCER)]
    seqs = [0] * KEYS_PER_PRODUCER
    per_window = max(1, rate // 20)
    rng = random.Random(incarnation)
    get_timeout = PRODUCER_OPTIONS["delivery_timeout_ms"] / 1000 + GET_SLACK_S
    with Producer(data_dir, **PRODUCER_OPTIONS) as producer:
        next_window = time.monotonic()
        while not stop.is_set():
            window: list[tuple[int, Any]] = []
            failed: list[tuple[int, int]] = []
            for _ in range(per_window):
                k = rng.randrange(KEYS_PER_PRODUCER)
                rid = record_id(incarnation, k, seqs[k])
                seqs[k] += 1
                value = struct.pack("<Q", rid) + TAG
                try:
                    future = producer.send(TOPICS[k % len(TOPICS)], value, key=keys[k])
                except Exception as exc:  # noqa: BLE001 - every error is logged and counted
                    _log_error(log, "send", exc, rid)
                    failed.append((rid, -1))
                    continue
                window.append((rid, future))
            acked: list[tuple[int, int]] = []
            for rid, future in window:
                try:
                    acked.append((rid, future.get(timeout=get_timeout).offset))
                except Exception as exc:  # noqa: BLE001 - every error is logged and counted
                    _log_error(log, "get" if future.is_done() else "undecided", exc, rid)
                    failed.append((rid, -1))
            _append(acked_fd, acked)
            _append(failed_fd, failed)
            next_window += 0.05
            delay = next_window - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            else:
                next_window = time.monotonic()


def _log_error(log: logging.Logger, what: str, exc: BaseException, rid: int | None = None) -> None:
    """One line the driver counts: "ERROR <what> <class>[ NOT-ENGINE-ERROR]: ...". An
    error that is not an EngineError is a defect of the library (it promises EngineError)."""
    foreign = "" if isinstance(exc, EngineError) else " NOT-ENGINE-ERROR"
    record = f" ({describe_id(rid)})" if rid is not None else ""
    log.warning(
        "ERROR %s %s%s: %s%s",
        what,
        type(exc).__name__,
        foreign,
        exc,
        record,
        exc_info=bool(foreign),
    )


def consumer_main(data_dir: str, soak_dir: str, stop: Any) -> None:
    """A member of the group: poll, append what it read (a time mark, then each record's
    id and offset) to its file, then commit (at least once)."""
    log = _client_setup(f"{soak_dir}/consumer-{os.getpid()}.log")
    fd = _open_append(Path(soak_dir) / f"consumed-{os.getpid()}")
    with Consumer(*TOPICS, data_dir=data_dir, **CONSUMER_OPTIONS) as consumer:
        while not stop.is_set():
            try:
                records = consumer.poll(timeout=0.2)
            except Exception as exc:  # noqa: BLE001 - every error is logged and counted
                _log_error(log, "poll", exc)
                time.sleep(0.1)
                continue
            if records:
                rows = [(MARK, time.time_ns())]
                rows += [
                    (struct.unpack_from("<Q", r.value)[0], r.offset)
                    for r in records
                    if r.value is not None and len(r.value) >= 8
                ]
                _append(fd, rows)
            try:
                consumer.commit()
            except CommitFailedError:
                pass  # a rebalance took the partitions: their new owner reads them again
            except Exception as exc:  # noqa: BLE001 - every error is logged and counted
                _log_error(log, "commit", exc)


# -- the driver -----------------------------------------------------------------------


def _start(proc: Any) -> None:
    """Start a client process ignoring SIGINT from its first instruction (Ctrl-C reaches
    the whole process group; the driver stops the clients itself)."""
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        proc.start()
    finally:
        signal.signal(signal.SIGINT, previous)


@dataclass
class Client:
    """One client process the driver started."""

    name: str
    proc: Any  # multiprocessing.Process
    incarnation: int = -1  # producers only
    killed: bool = False


@dataclass
class Round:
    number: int
    kind: Kind
    victim: str
    recovered_s: float


@dataclass
class Finding:
    """One kind of defect the final check looks for: how many, and the first few."""

    title: str
    count: int = 0
    examples: list[str] = field(default_factory=list)

    def add(self, n: int, examples: list[str]) -> None:
        self.count += n
        self.examples += examples[: 10 - len(self.examples)]


@dataclass
class Verdict:
    """What the final check found: the counts, and the findings (each must be 0)."""

    acked: int = 0
    failed: int = 0
    in_log: int = 0
    consumed: int = 0
    redelivered: int = 0
    lost: Finding = field(default_factory=lambda: Finding("lost"))
    duplicated: Finding = field(default_factory=lambda: Finding("duplicated"))
    out_of_order: Finding = field(default_factory=lambda: Finding("out of order"))
    acked_moved: Finding = field(
        default_factory=lambda: Finding("acknowledged at an offset that holds another record")
    )
    not_consumed: Finding = field(
        default_factory=lambda: Finding("acknowledged, never read by the group")
    )
    consumed_gone: Finding = field(
        default_factory=lambda: Finding("read by the group, not in the log")
    )
    consumed_moved: Finding = field(
        default_factory=lambda: Finding("read at an offset that holds another record")
    )
    foreign: Finding = field(default_factory=lambda: Finding("records that are not the soak's"))

    def findings(self) -> list[Finding]:
        return [
            self.lost,
            self.duplicated,
            self.out_of_order,
            self.acked_moved,
            self.not_consumed,
            self.consumed_gone,
            self.consumed_moved,
            self.foreign,
        ]

    @property
    def ok(self) -> bool:
        return not any(f.count for f in self.findings())


class Log:
    """Every partition as read at the end, and a look-up from record id to place."""

    def __init__(self, parts: list[tuple[TopicPartition, Any, Any]]) -> None:
        self.tps = [tp for tp, _, _ in parts]
        self.parts = parts
        self.ids = np.concatenate([ids for _, ids, _ in parts]) if parts else np.empty(0, ID)
        offsets = [offs for _, _, offs in parts]
        tp_index = [np.full(len(ids), i, np.int32) for i, (_, ids, _) in enumerate(parts)]
        order = np.argsort(self.ids, kind="stable")
        self._sorted = self.ids[order]
        self._offsets = np.concatenate(offsets)[order] if parts else np.empty(0, np.int64)
        self._tp = np.concatenate(tp_index)[order] if parts else np.empty(0, np.int32)
        # Each key lives in one partition: where a key's records are, for records that
        # are not in the log.
        keys = self._sorted >> np.uint64(32)
        self._keys, first = np.unique(keys, return_index=True)
        self._key_tp = self._tp[first]

    def find(self, ids: Any) -> tuple[Any, Any]:
        """(found, offset) of each id: whether the log holds it, and its (first) offset."""
        if not len(self._sorted):
            return np.zeros(len(ids), bool), np.full(len(ids), -1, np.int64)
        pos = np.minimum(np.searchsorted(self._sorted, ids), len(self._sorted) - 1)
        return self._sorted[pos] == ids, self._offsets[pos]

    def partition_of(self, rid: int) -> str:
        """The partition that holds ``rid``'s key, as "topic-p" ("?" if none does)."""
        i = np.searchsorted(self._keys, np.uint64(rid >> 32))
        if i < len(self._keys) and self._keys[i] == rid >> 32:
            tp = self.tps[int(self._key_tp[i])]
            return f"{tp.topic}-{tp.partition}"
        return "?"

    def places(self, rid: int) -> str:
        """Every offset at which the log holds ``rid``."""
        found = [
            f"{tp.topic}-{tp.partition}@{','.join(map(str, offs[ids == rid].tolist()))}"
            for tp, ids, offs in self.parts
            if (ids == rid).any()
        ]
        return " ".join(found) or "nowhere"


def verify(
    acked_files: list[tuple[str, Any]],
    failed_files: list[tuple[str, Any]],
    log: Log,
    consumed_files: list[tuple[str, Any]],
) -> Verdict:
    """The final check of the producers' and consumers' files (name, rows of ROW)
    against the log as read at the end (see the module docstring)."""
    v = Verdict()
    acked = np.concatenate([r for _, r in acked_files]) if acked_files else np.empty(0, ROW)
    v.acked = len(acked)
    v.failed = sum(len(r) for _, r in failed_files)
    v.in_log = len(log.ids)

    uniq, counts = np.unique(log.ids, return_counts=True)
    twice = uniq[counts > 1]
    v.duplicated.add(
        int((counts - 1).sum()),
        [f"{describe_id(i)} at {log.places(i)}" for i in twice[:10].tolist()],
    )

    found, offset = log.find(acked["id"])
    lost = acked[~found]
    v.lost.add(
        len(lost),
        [
            f"{describe_id(int(i))} (acknowledged at {log.partition_of(int(i))}@{int(o)})"
            for i, o in lost[:10]
        ],
    )
    single = np.isin(acked["id"], twice, invert=True)
    moved = acked[found & single & (offset != acked["offset"])]
    v.acked_moved.add(
        len(moved),
        [
            f"{describe_id(int(i))} acknowledged at {log.partition_of(int(i))}@{int(o)}, "
            f"in the log at {log.places(int(i))}"
            for i, o in moved[:10]
        ],
    )

    # Out of order: in each key's log order (a key lives in one partition), a seq
    # below the largest one before it. Keys ascend through the stably sorted array,
    # so one running maximum of the id (key << 32 | seq) serves every key at once.
    for _, ids, _ in log.parts:
        if len(ids) < 2:
            continue
        kv = ids[np.argsort(ids >> np.uint64(32), kind="stable")]
        bad = kv[1:] < np.maximum.accumulate(kv)[:-1]
        v.out_of_order.add(
            int(bad.sum()),
            [f"{describe_id(i)} at {log.places(i)}" for i in kv[1:][bad][:10].tolist()],
        )

    # The group: at least once, and only what the log holds, where it holds it.
    seen_ids = []
    for name, rows in consumed_files:
        is_mark = rows["id"] == np.uint64(MARK)
        marks = np.maximum.accumulate(np.where(is_mark, np.arange(len(rows)), 0))
        times = rows["offset"][marks]
        reads, times = rows[~is_mark], times[~is_mark]
        seen_ids.append(reads["id"])
        found, offset = log.find(reads["id"])
        gone = reads[~found]
        v.consumed_gone.add(
            len(gone),
            [
                f"{describe_id(int(i))} read at {log.partition_of(int(i))}@{int(o)} by {name}"
                for i, o in gone[:10]
            ],
        )
        bad = found & (offset != reads["offset"]) & np.isin(reads["id"], twice, invert=True)
        v.consumed_moved.add(
            int(bad.sum()),
            [
                f"{describe_id(int(i))} read at {log.partition_of(int(i))}@{int(o)} by {name} "
                f"at {_clock(int(t))}, in the log at {log.places(int(i))}"
                for (i, o), t in zip(reads[bad][:10], times[bad][:10], strict=True)
            ],
        )
    seen_all = np.concatenate(seen_ids) if seen_ids else np.empty(0, ID)
    v.consumed = len(seen_all)
    seen = np.unique(seen_all)
    v.redelivered = len(seen_all) - len(seen)
    unread = acked[~np.isin(acked["id"], seen)]
    v.not_consumed.add(
        len(unread),
        [f"{describe_id(int(i))} at {log.partition_of(int(i))}@{int(o)}" for i, o in unread[:10]],
    )
    return v


@dataclass
class Progress:
    """Where the clients were: acknowledged records per producer, committed offsets."""

    acked: dict[str, int]
    committed: dict[TopicPartition, int]


class Stall(Exception):
    """A round did not recover within its deadline."""


class Soak:
    """The driver: the daemon, the client processes, the rounds of kills, the check.

    Runs in one process and thread (the clients are spawned processes); ``run()`` stops
    everything it started however it ends, Ctrl-C included."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.rng = random.Random(args.seed)
        self.work = (
            Path(args.data_dir) if args.data_dir else Path(tempfile.mkdtemp(prefix="engine-soak-"))
        )
        self.engine_dir = self.work / "engine"
        self.soak_dir = self.work / "soak"
        self.soak_dir.mkdir(parents=True, exist_ok=True)
        self.ctx = mp.get_context("spawn")
        self.stop_producers = self.ctx.Event()
        self.stop_consumers = self.ctx.Event()
        self.producers: list[Client] = []
        self.consumers: list[Client] = []
        self.next_incarnation = 1
        self.rounds: list[Round] = []
        self.crashes: list[str] = []
        self.start_failures: list[str] = []
        self.stall: str | None = None
        self.t0 = time.monotonic()
        self.progress_log = open(self.soak_dir / "kills.log", "a")  # noqa: SIM115 - closed in run()

    # -- output ----------------------------------------------------------------------

    def say(self, line: str) -> None:
        print(line, flush=True)
        self.progress_log.write(line + "\n")
        self.progress_log.flush()

    def elapsed(self) -> str:
        s = int(time.monotonic() - self.t0)
        return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}"

    # -- the daemon ------------------------------------------------------------------

    def engine_cli(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "engine", *args, "--data-dir", str(self.engine_dir)],
            capture_output=True,
            text=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
        )

    def start_daemon(self) -> None:
        """`engine start`; a start that fails is reported, and tried twice more."""
        for attempt in range(3):
            proc = self.engine_cli("start", "--brokers", str(BROKERS))
            if proc.returncode == 0:
                return
            what = (proc.stderr.strip() or proc.stdout.strip()).splitlines()
            line = f"engine start failed (attempt {attempt + 1}): {what[-1] if what else proc}"
            self.start_failures.append(line)
            self.say(f"  ! {line}")
        raise Stall("engine start failed 3 times")

    def runtime(self) -> dict[str, Any]:
        return DataDir.resolve(self.engine_dir).read_runtime()

    def daemon_pids(self) -> list[int]:
        try:
            info = self.runtime()
        except DaemonNotRunningError:
            return []
        return [int(info["pid"]), *(int(p) for p in info["processes"].values())]

    def create_topics(self) -> None:
        with Admin(self.engine_dir) as admin:
            for topic in TOPICS:
                admin.create_topic(
                    topic, partitions=PARTITIONS, replication=BROKERS, config=TOPIC_CONFIG
                )

    def shut_down(self) -> list[str]:
        """Stop the clients and the daemon, whatever state they are in; the rings left
        in /dev/shm (there should be none)."""
        for c in self.producers + self.consumers:
            if c.proc.is_alive():
                c.proc.kill()
            c.proc.join(10)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.engine_cli("stop", timeout=120)
        for pid in self.daemon_pids():  # a daemon that did not stop: kill it and clean up
            if pid_alive(pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        if self.engine_dir.exists():
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.engine_cli("stop", timeout=120)  # drains and removes a dead one's rings
        return self.rings()

    def rings(self) -> list[str]:
        if not self.engine_dir.exists():
            return []
        prefix = DataDir.resolve(self.engine_dir).ring_prefix()
        return sorted(n for n in os.listdir("/dev/shm") if n.startswith(prefix))

    # -- clients ---------------------------------------------------------------------

    def start_producer(self) -> Client:
        inc = self.next_incarnation
        self.next_incarnation += 1
        proc = self.ctx.Process(
            target=producer_main,
            name=f"producer-{inc}",
            args=(
                str(self.engine_dir),
                str(self.soak_dir),
                inc,
                self.args.rate,
                self.stop_producers,
            ),
        )
        _start(proc)
        client = Client(f"producer-{inc}", proc, incarnation=inc)
        self.producers.append(client)
        return client

    def start_consumer(self) -> Client:
        proc = self.ctx.Process(
            target=consumer_main,
            name="consumer",
            args=(str(self.engine_dir), str(self.soak_dir), self.stop_consumers),
        )
        _start(proc)
        client = Client(f"consumer-{proc.pid}", proc)
        self.consumers.append(client)
        return client

    def live(self, clients: list[Client]) -> list[Client]:
        return [c for c in clients if not c.killed]

    def check_clients(self) -> None:
        """A client that exited without being killed crashed: note it, start another."""
        for c in self.live(self.producers) + self.live(self.consumers):
            if c.proc.exitcode is not None:
                c.killed = True
                log = self.soak_dir / f"{c.name}.log"
                self.crashes.append(f"{c.name} exited with {c.proc.exitcode} (see {log})")
                self.say(f"  ! {c.name} exited on its own with {c.proc.exitcode}: see {log}")
                if c in self.producers:
                    self.start_producer()
                else:
                    self.start_consumer()

    # -- counters --------------------------------------------------------------------

    def ids_in(self, pattern: str) -> int:
        """Rows in the soak's files matching ``pattern`` (consumers' include time marks)."""
        return sum(p.stat().st_size // ROW.itemsize for p in self.soak_dir.glob(pattern))

    def acked_by(self, client: Client) -> int:
        try:
            return (self.soak_dir / f"acked-{client.incarnation}").stat().st_size // ROW.itemsize
        except FileNotFoundError:
            return 0

    # -- rounds ----------------------------------------------------------------------

    def kill(self, kind: Kind) -> str:
        """SIGKILL one thing of ``kind``; returns what was killed."""
        if kind in (Kind.BROKER, Kind.COORDINATOR):
            name = "coordinator"
            if kind is Kind.BROKER:
                name = f"broker-{self.rng.randint(1, BROKERS)}"
            pid = int(self.runtime()["processes"][name])
            os.kill(pid, signal.SIGKILL)
            return f"{name} (pid {pid})"
        if kind is Kind.DAEMON:
            pids = self.daemon_pids()
            if not pids:
                raise Stall("the daemon's runtime file is gone: nothing to kill")
            os.killpg(pids[0], signal.SIGKILL)
            deadline = time.monotonic() + 10
            while any(pid_alive(p) for p in pids) and time.monotonic() < deadline:
                time.sleep(0.01)
            self.start_daemon()
            return f"the daemon (pid {pids[0]}) and its {len(pids) - 1} processes"
        clients = self.live(self.producers if kind is Kind.PRODUCER else self.consumers)
        victim = self.rng.choice(clients)
        victim.killed = True
        victim.proc.kill()
        victim.proc.join(10)
        if kind is Kind.PRODUCER:
            self.start_producer()
        else:
            self.start_consumer()
        return f"{victim.name} (pid {victim.proc.pid})"

    def not_recovered(self, admin: Admin, group: Consumer, at_kill: Progress) -> str:
        """What recovery still waits for ("" when nothing): every process of the daemon
        alive and each broker registered under its current pid, a controller, every
        partition with a leader and an ISR of 3, every producer acknowledging records
        again, and the group committing past where it was on every partition that got
        records (or caught up with the high watermark)."""
        self.check_clients()
        try:
            info = self.runtime()
        except DaemonNotRunningError:
            return "the daemon's runtime file"
        processes = {n: int(pid) for n, pid in info["processes"].items()}
        dead = [n for n, pid in processes.items() if not pid_alive(pid)]
        if dead:
            return f"{', '.join(sorted(dead))} to be restarted"
        cluster = admin.describe_cluster()
        registered = {b: int(i.get("pid", 0)) for b, i in cluster["registrations"].items()}
        unregistered = [
            b for b in range(1, BROKERS + 1) if registered.get(b) != processes.get(f"broker-{b}")
        ]
        if unregistered:
            return f"brokers {unregistered} to register"
        if cluster["controller"] is None:
            return "a controller"
        ends = {}
        for topic in TOPICS:
            for p in admin.describe_topic(topic).partitions:
                if p.leader is None:
                    return f"a leader of {topic}-{p.partition}"
                if len(p.isr) < BROKERS:
                    return f"{topic}-{p.partition}'s ISR to be whole (it is {list(p.isr)})"
                ends[TopicPartition(topic, p.partition)] = p.high_watermark
        stuck = [
            c.name
            for c in self.live(self.producers)
            if self.acked_by(c) <= at_kill.acked.get(c.name, 0)
        ]
        if stuck:
            return f"acknowledgements of {', '.join(stuck)}"
        for tp, end in ends.items():
            committed = group.committed(tp) or 0
            if committed <= at_kill.committed.get(tp, 0) and committed < end:
                return f"the group to commit on {tp.topic}-{tp.partition}"
        return ""

    def progress(self) -> Progress:
        """Where the clients are now. The group's offsets are read within a few seconds
        (the coordinator may be on its way back), else taken as 0."""
        acked = {c.name: self.acked_by(c) for c in self.live(self.producers)}
        deadline = time.monotonic() + 10
        while True:
            try:
                with Consumer(data_dir=self.engine_dir, group_id=GROUP) as group:
                    committed = {
                        TopicPartition(t, p): group.committed(TopicPartition(t, p)) or 0
                        for t in TOPICS
                        for p in range(PARTITIONS)
                    }
                return Progress(acked, committed)
            except EngineError:
                if time.monotonic() > deadline:
                    return Progress(acked, {})
                time.sleep(0.1)

    def recover(self, at_kill: Progress) -> None:
        """Wait until the engine and the clients have recovered (see not_recovered)."""
        deadline = time.monotonic() + self.args.recovery_timeout
        waiting = ""
        admin: Admin | None = None
        group: Consumer | None = None
        try:
            while True:
                try:
                    if admin is None:
                        admin = Admin(self.engine_dir)
                    if group is None:
                        group = Consumer(data_dir=self.engine_dir, group_id=GROUP)
                    waiting = self.not_recovered(admin, group, at_kill)
                except EngineError as exc:  # the daemon is on its way back
                    waiting = f"the coordinator ({type(exc).__name__}: {exc})"
                    for client in (admin, group):
                        if client is not None:
                            with contextlib.suppress(EngineError):
                                client.close()
                    admin = group = None
                if not waiting:
                    return
                if time.monotonic() > deadline:
                    raise Stall(
                        f"not recovered within {self.args.recovery_timeout:.0f} s: "
                        f"waiting for {waiting}"
                    )
                time.sleep(0.1)
        finally:
            for client in (admin, group):
                if client is not None:
                    with contextlib.suppress(EngineError):
                        client.close()

    def run_rounds(self) -> None:
        kinds = [Kind(k) for k in self.args.kinds.split(",")]
        for number in range(1, self.args.kills + 1):
            time.sleep(self.rng.uniform(0.5, 1.5) * self.args.pause)
            kind = self.rng.choice(kinds)
            t = time.monotonic()
            try:
                victim = self.kill(kind)
                self.recover(self.progress())
            except Stall as exc:
                self.stall = f"kill {number} ({kind.value}): {exc}"
                self.say(f"[{number:>5}/{self.args.kills}] {kind.value:<11} STALL: {exc}")
                return
            took = time.monotonic() - t
            self.rounds.append(Round(number, kind, victim, took))
            self.say(
                f"[{number:>5}/{self.args.kills}] {kind.value:<11} {victim:<45} "
                f"recovered in {took:5.1f} s  acked {self.ids_in('acked-*'):>11,}  "
                f"elapsed {self.elapsed()}"
            )

    # -- the end ---------------------------------------------------------------------

    def finish_clients(self) -> None:
        """Stop the producers (each finishes its window), then let the group consume up
        to every high watermark, then stop the members."""
        self.stop_producers.set()
        deadline = time.monotonic() + PRODUCER_OPTIONS["delivery_timeout_ms"] / 1000 + 30
        for c in self.live(self.producers):
            c.proc.join(max(deadline - time.monotonic(), 0.1))
            if c.proc.exitcode is None:
                self.crashes.append(f"{c.name} did not stop; killed")
                c.proc.kill()
                c.proc.join(10)
            elif c.proc.exitcode != 0:
                self.crashes.append(f"{c.name} exited with {c.proc.exitcode}")
        self.say(
            f"producers stopped; waiting for the group to reach the high watermarks "
            f"({self.elapsed()})"
        )
        with (
            Admin(self.engine_dir) as admin,
            Consumer(data_dir=self.engine_dir, group_id=GROUP) as offsets,
        ):
            ends = self.high_watermarks(admin)
            deadline = time.monotonic() + 120
            while True:
                behind = {tp: end for tp, end in ends.items() if (offsets.committed(tp) or 0) < end}
                if not behind:
                    break
                if time.monotonic() > deadline:
                    self.say(f"  ! the group did not reach the high watermarks in 120 s: {behind}")
                    break
                self.check_clients()
                time.sleep(0.2)
        self.stop_consumers.set()
        for c in self.live(self.consumers):
            c.proc.join(30)
            if c.proc.exitcode is None:
                self.crashes.append(f"{c.name} did not stop; killed")
                c.proc.kill()
                c.proc.join(10)

    def high_watermarks(self, admin: Admin) -> dict[TopicPartition, int]:
        return {
            TopicPartition(topic, p.partition): p.high_watermark
            for topic in TOPICS
            for p in admin.describe_topic(topic).partitions
        }

    def read_log(self) -> tuple[Log, int]:
        """Every partition from offset 0 to its high watermark (read_uncommitted), and
        how many records in it are not the soak's."""
        parts = []
        foreign = 0
        with Admin(self.engine_dir) as admin:
            ends = self.high_watermarks(admin)
        for tp, end in ends.items():
            values: list[bytes] = []
            offsets: list[int] = []
            with Consumer(data_dir=self.engine_dir, auto_offset_reset="earliest") as c:
                c.assign([tp])
                deadline = time.monotonic() + 300
                while c.position(tp) < end:
                    if time.monotonic() > deadline:
                        raise Stall(f"{tp} could not be read to its high watermark {end}")
                    for r in c.poll(timeout=1.0, max_records=100_000):
                        value = r.value or b""
                        if len(value) == VALUE_SIZE and value[8:] == TAG:
                            values.append(value[:8])
                            offsets.append(r.offset)
                        else:
                            foreign += 1
            ids = np.frombuffer(b"".join(values), dtype=ID)
            parts.append((tp, ids, np.asarray(offsets, dtype=np.int64)))
        return Log(parts), foreign

    def read_rows(self, pattern: str) -> list[tuple[str, Any]]:
        """(file name, rows) of each of the soak's files matching ``pattern``; a row
        torn by a SIGKILL (it cannot be, writes are whole) would be dropped."""
        out = []
        for path in sorted(self.soak_dir.glob(pattern)):
            data = path.read_bytes()
            out.append(
                (
                    path.name,
                    np.frombuffer(data[: len(data) // ROW.itemsize * ROW.itemsize], dtype=ROW),
                )
            )
        return out

    def check(self) -> Verdict:
        log, foreign = self.read_log()
        v = verify(
            self.read_rows("acked-*"), self.read_rows("failed-*"), log, self.read_rows("consumed-*")
        )
        v.foreign.add(foreign, [])
        return v

    def client_errors(self) -> Counter[str]:
        """The errors the clients logged, by what failed and the error's class."""
        errors: Counter[str] = Counter()
        for path in self.soak_dir.glob("*.log"):
            if path.name == "kills.log":
                continue
            for line in path.read_text(errors="replace").splitlines():
                _, sep, rest = line.partition(" ERROR ")
                if sep:
                    what, cls, *more = rest.split(maxsplit=2)
                    not_ours = bool(more) and more[0].startswith("NOT-ENGINE-ERROR")
                    foreign = " (not an EngineError)" if not_ours else ""
                    errors[f"{what} {cls.rstrip(':')}{foreign}"] += 1
        return errors

    def report(self, v: Verdict | None) -> bool:
        """Print the summary; whether the run had no defect."""
        by_kind = Counter(r.kind for r in self.rounds)
        say = self.say
        say("")
        say("== soak summary")
        say(
            f"kills survived        {len(self.rounds):,} of {self.args.kills:,} ("
            + ", ".join(f"{k.value} {by_kind.get(k, 0)}" for k in Kind)
            + ")"
        )
        if self.rounds:
            recover = sorted(r.recovered_s for r in self.rounds)
            by = {k: [r.recovered_s for r in self.rounds if r.kind is k] for k in Kind}
            say(
                f"recovery              median {recover[len(recover) // 2]:.1f} s, max "
                f"{recover[-1]:.1f} s; mean by kind: "
                + ", ".join(f"{k.value} {sum(x) / len(x):.1f} s" for k, x in by.items() if x)
            )
        per_kill = (time.monotonic() - self.t0) / max(len(self.rounds), 1)
        say(f"run time              {self.elapsed()} ({per_kill:.1f} s a kill)")
        defects = bool(self.stall or self.crashes or self.start_failures)
        if self.stall:
            say(f"STALLED               {self.stall}")
        for line in self.start_failures:
            say(f"start failure         {line}")
        for line in self.crashes:
            say(f"client crash          {line}")
        errors = self.client_errors()
        if errors:
            say("client errors         " + ", ".join(f"{k} {n}" for k, n in errors.most_common()))
            defects |= any("not an EngineError" in k for k in errors)
        if v is None:
            return False
        say(
            f"records acknowledged  {v.acked:,} (failed, not acknowledged: {v.failed:,}; "
            f"in the log: {v.in_log:,})"
        )
        for f in v.findings():
            if f.count or f in (v.lost, v.duplicated, v.out_of_order):
                say(
                    f"{f.title:<21} {f.count:,}" if len(f.title) < 22 else f"{f.title}: {f.count:,}"
                )
                for example in f.examples:
                    say(f"    {example}")
        say(
            f"group (at least once) read {v.consumed:,} records, {v.redelivered:,} of them "
            f"again; every acknowledged record read: {'yes' if not v.not_consumed.count else 'NO'}"
        )
        return not defects and v.ok

    def run(self) -> int:
        v: Verdict | None = None
        interrupted = False
        rings: list[str] = []
        try:
            self.say(f"soak: {self.args.kills} kills, seed {self.args.seed}, work dir {self.work}")
            self.start_daemon()
            self.create_topics()
            for _ in range(self.args.producers):
                self.start_producer()
            for _ in range(self.args.consumers):
                self.start_consumer()
            self.recover(self.progress())  # everyone is up and making progress
            self.say(
                f"engine up, {self.args.producers} producers and {self.args.consumers} "
                f"consumers running ({self.elapsed()})"
            )
            self.run_rounds()
            if self.stall is None:
                with contextlib.suppress(Stall):
                    self.recover(self.progress())
            self.finish_clients()
            self.say(f"reading every partition ({self.elapsed()})")
            v = self.check()
        except Stall as exc:
            self.stall = self.stall or str(exc)
        except KeyboardInterrupt:
            interrupted = True
            self.say("interrupted: stopping everything")
        finally:
            rings = self.shut_down()
        failed = not self.report(v) or interrupted or bool(rings)
        if rings:
            self.say(f"RINGS LEFT in /dev/shm: {len(rings)} ({rings[:3]}...): removed")
            for name in rings:
                unlink("/" + name)
        keep = self.args.keep or (failed and not interrupted)
        result = "INTERRUPTED" if interrupted else "FAILED" if failed else "OK"
        self.say(
            f"result                {result}" + (f"; work dir kept: {self.work}" if keep else "")
        )
        self.progress_log.close()
        if not keep:
            shutil.rmtree(self.work, ignore_errors=True)
        return 130 if interrupted else int(failed)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="scripts/soak",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument("--kills", type=int, default=100, help="how many kills (default 100)")
    ap.add_argument(
        "--seed",
        type=int,
        default=None,
        help="of the random choices (default: a random one, printed)",
    )
    ap.add_argument(
        "--data-dir",
        default=None,
        help="work dir (default: a new one in /tmp); the daemon's data dir is DIR/engine",
    )
    ap.add_argument("--producers", type=int, default=3, help="producer processes (default 3)")
    ap.add_argument("--consumers", type=int, default=3, help="group members (default 3)")
    ap.add_argument(
        "--rate", type=int, default=500, help="records/s of each producer (default 500)"
    )
    ap.add_argument(
        "--kinds",
        default=",".join(k.value for k in Kind),
        help="what may be killed, comma-separated (default: all five)",
    )
    ap.add_argument(
        "--pause",
        type=float,
        default=1.0,
        help="seconds the clients run between recovery and the next kill, on average (default 1)",
    )
    ap.add_argument(
        "--recovery-timeout",
        type=float,
        default=60.0,
        help="seconds a round may take to recover (default 60)",
    )
    ap.add_argument(
        "--keep",
        action="store_true",
        help="keep the work dir (it is kept anyway when the run fails)",
    )
    args = ap.parse_args(argv)
    if args.seed is None:
        args.seed = random.randrange(1 << 32)
    try:
        for k in args.kinds.split(","):
            Kind(k)
    except ValueError:
        ap.error(f"--kinds: unknown kind {k!r} (one of {', '.join(x.value for x in Kind)})")
    if args.kills < 0 or args.producers < 1 or args.consumers < 1 or args.rate < 1:
        ap.error("--kills must be >= 0, --producers, --consumers and --rate >= 1")
    # Ctrl-C and SIGTERM stop everything the soak started (a shell that runs it in the
    # background without job control would have it ignore SIGINT).
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    return Soak(args).run()


if __name__ == "__main__":
    sys.exit(main())
