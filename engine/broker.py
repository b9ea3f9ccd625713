"""The broker process: registers itself, hosts partition replicas, may be controller.

One OS process per broker id, started and supervised by the daemon::

    python -m engine.broker --data-dir DIR --id N [--coordinator HOST:PORT]

It registers the ephemeral ``/brokers/ids/<id>``, takes part in the controller
election, and keeps the replicas it leads in line with the partition state
znodes: a replica per partition it leads (ring + log + drain thread). All tree
reads and writes happen on the main thread; kazoo's watch callbacks only poke it.
It also serves Kafka's binary protocol on 127.0.0.1 (engine.kafka.listener, its own
threads), and names that port in its registration as Kafka's brokers do.

Crash behaviour: on kill -9 its ephemeral node vanishes when the session
expires (or at once when the next broker with the same id finds the old pid
dead); its rings stay in shared memory and are resumed by the next start.
On SIGTERM it stops gracefully: every replica is sealed, drained, flushed.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import faulthandler
import functools
import logging
import os
import shutil
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

from kazoo.client import KazooState
from kazoo.exceptions import BadVersionError, NodeExistsError, NoNodeError

from engine import metadata as md
from engine import stale_rings
from engine import transaction as txn
from engine.broker_stats import BrokerStats, stats_path
from engine.config import is_compacted, validate_topic_config
from engine.controller import Controller
from engine.daemon import DUMP_STACKS_SIGNAL
from engine.datadir import DataDir, make_private_dir, pid_alive, write_private_file
from engine.errors import EngineError, RingPermissionError, TransactionError, UnknownTopicError
from engine.kafka import listener as kafka
from engine.kafka.handlers import BrokerSide
from engine.kafka.partitions import Leadership
from engine.kafka.sasl import KafkaAuth, read_credential
from engine.replica import FollowerReplica, LeaderReplica, Replica
from engine.ring import seal_ring

log = logging.getLogger("engine.broker")

# Watches trigger every pass; this periodic pass is only a safety net.
RECONCILE_EVERY_S = 30.0
REPLICA_RESTART_BACKOFF_S = 1.0
#: A replica that failed to start is tried again after REPLICA_RESTART_BACKOFF_S, then
#: after twice as long each time, up to this: one log line per new reason, not one per
#: pass (passes run on every watch event).
MAX_START_BACKOFF_S = 30.0
#: How often the main loop looks for a stop asked by a signal (see Broker.on_signal).
STOP_CHECK_S = 0.1

ReplicaKey = tuple[str, int, str]  # topic, partition, topic id


@dataclasses.dataclass(frozen=True)
class StartFailure:
    """Why a replica could not start, how often it failed, when to try it again."""

    reason: str
    attempts: int
    retry_at: float  # time.monotonic()


class Broker:
    """A broker's state: its coordinator session, its replicas, its controller role."""

    def __init__(
        self,
        data_dir: DataDir,
        broker_id: int,
        hosts: str | None,
        kafka_port: int | None = None,
        kafka_auth: KafkaAuth | None = KafkaAuth.SASL,
    ) -> None:
        """``hosts``: an external ZooKeeper ensemble; None: the daemon's own coordinator,
        found (and followed across its restarts) through the data dir. ``kafka_port``:
        the Kafka listener's port (None: the one of this broker's last run if free,
        else any); ``kafka_auth`` None: no Kafka listener."""
        self.data_dir = data_dir
        self.broker_id = broker_id
        self.hosts = hosts
        self.replicas: dict[ReplicaKey, Replica] = {}
        #: The ring names of every replica the tree assigns to this broker, as of the last
        #: reconcile pass that read the whole tree (None before the first).
        self._assigned_rings: set[str] | None = None
        self.start_failures: dict[ReplicaKey, StartFailure] = {}
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._session_lost = threading.Event()
        self._signalled = False  # set by on_signal, which must take no lock
        self.zk = md.connect(data_dir, hosts=hosts, external=hosts is not None)
        self.zk.add_listener(self._on_state)
        self.controller = Controller(self.zk, broker_id, self.poke, self._seal_ring)
        self.txn_timeouts = txn.TimeoutAborter(data_dir.root, lambda: self.controller.active)
        self.stats = BrokerStats(
            stats_path(data_dir.run_dir, broker_id), lambda: list(self.replicas.values())
        )
        self.kafka_port = kafka_port
        self.kafka_auth = kafka_auth
        self.kafka: kafka.KafkaListener | None = None
        #: The partitions this broker leads, for the Kafka listener's threads: replaced
        #: whole (never changed in place) after each reconcile pass.
        self.leaderships: dict[tuple[str, int], Leadership] = {}
        self._leadership: dict[ReplicaKey, Leadership] = {}

    def poke(self, *_: Any) -> None:
        self._wake.set()

    def stop(self, *_: Any) -> None:
        self._stopping.set()
        self._wake.set()

    def on_signal(self, *_: Any) -> None:
        """SIGTERM, SIGINT: stop. A handler runs in the main thread between two
        bytecodes, possibly inside one of the Events' own locks (they are not
        reentrant): a second SIGTERM arriving while the first one's Event.set() held its
        lock hung a broker for good. So it only sets a flag, which the main loop looks
        at every STOP_CHECK_S."""
        self._signalled = True

    def _wait_for_work(self) -> None:
        """Until poked, RECONCILE_EVERY_S passed, or a signal asked to stop."""
        deadline = time.monotonic() + RECONCILE_EVERY_S
        while not self._signalled:
            left = deadline - time.monotonic()
            if left <= 0 or self._wake.wait(min(left, STOP_CHECK_S)):
                break
        if self._signalled:
            self.stop()
        self._wake.clear()

    def _on_state(self, state: str) -> None:
        if state == KazooState.LOST:
            self._session_lost.set()
        self._wake.set()

    # -- registration ------------------------------------------------------

    def register(self) -> None:
        path = md.broker_path(self.broker_id)
        payload = md.encode(
            {
                "version": 5,
                **kafka.registration(self.kafka),
                "pid": os.getpid(),
                "log_dir": str(self.data_dir.broker_dir(self.broker_id)),
                "timestamp": str(int(time.time() * 1000)),
            }
        )
        self.zk.ensure_path(md.BROKER_IDS)
        deadline = time.monotonic() + 2 * md.SESSION_TIMEOUT_S
        while True:
            try:
                self.zk.create(path, payload, ephemeral=True)
                log.info("broker %d registered (pid %d)", self.broker_id, os.getpid())
                return
            except NodeExistsError:
                try:
                    data, _ = self.zk.get(path)
                except NoNodeError:
                    continue
                old = md.decode(data)
                if int(old.get("pid", 0)) == os.getpid():
                    return
                if not pid_alive(int(old.get("pid", 0))):
                    # A previous incarnation died; its session has not expired yet.
                    with contextlib.suppress(NoNodeError):
                        self.zk.delete(path)
                    continue
                if time.monotonic() > deadline:
                    raise SystemExit(
                        f"broker id {self.broker_id} is registered by live pid {old.get('pid')}"
                    ) from None
                time.sleep(0.2)

    # -- the main loop -----------------------------------------------------

    def run(self) -> None:
        make_private_dir(self.data_dir.broker_dir(self.broker_id))
        self._start_kafka()
        self.register()
        self.zk.ensure_path(md.BROKER_TOPICS)  # a ChildrenWatch on a missing node never fires
        self.zk.ChildrenWatch(md.BROKER_TOPICS, self.poke, send_event=False)
        first = True
        self._wake.set()  # the first pass runs at once: election, then replicas
        self.txn_timeouts.start()
        self.stats.start()
        while not self._stopping.is_set():
            self._wait_for_work()
            if self._stopping.is_set():
                break
            if self._session_lost.is_set() and self.zk.connected:
                self._session_lost.clear()
                self.register()
            try:
                self.controller.act()
                self.reconcile()
                self._publish_leaderships()
            except Exception:  # keep serving; retry the pass shortly
                log.exception("reconcile pass failed")
                self._retry_soon()
            if first and self._assigned_rings is not None:  # after a whole pass only
                self._remove_stale_rings()
                first = False
            for key, replica in list(self.replicas.items()):
                if replica.failed is not None:
                    log.error("replica %s failed: %s; restarting it", key, replica.failed)
                    self.replicas.pop(key).stop()
                    self._retry_soon()  # the next pass starts it again
        self.shutdown()

    def reconcile(self) -> None:
        """Host exactly the replicas the tree gives this broker, each in its current role."""
        wanted: dict[ReplicaKey, tuple[md.TopicMetadata, md.PartitionState]] = {}
        existing: set[tuple[str, str]] = set()
        names = self.zk.get_children(md.BROKER_TOPICS)
        # Read before the states: the controller removes a deleted topic's partition
        # states before its node, and its deletion request last of all.
        deleting = md.topics_being_deleted(self.zk)
        assigned: set[str] = set()
        log_starts: dict[str, dict[int, int]] = {}  # Admin.delete_records
        for topic in names:
            try:
                meta = md.read_topic(self.zk, topic, watch=self.poke)  # configs, partitions
            except UnknownTopicError:  # deleted while we read it
                continue
            existing.add((topic, meta.assignment.topic_id))
            if any(self.broker_id in r for r in meta.assignment.replicas.values()):
                log_starts[topic] = md.read_log_starts(self.zk, topic, watch=self.poke)
            for p, replicas in meta.assignment.replicas.items():
                if self.broker_id not in replicas:
                    continue
                assigned.add(self.data_dir.ring_name(meta.assignment.topic_id, p, self.broker_id))
                path = md.state_path(topic, p)
                try:
                    data, _ = self.zk.get(path, watch=self.poke)  # fires on any change
                except NoNodeError:
                    # Not created yet: watch for it. If the controller created it
                    # between the two calls, the watch will not fire: look again.
                    if self.zk.exists(path, watch=self.poke) is not None:
                        self._wake.set()
                    continue
                state = md.PartitionState.from_json(md.decode(data))
                if state.leader >= 0:
                    wanted[(topic, p, meta.assignment.topic_id)] = (meta, state)
        for key in list(self.replicas):
            replica = self.replicas[key]
            if key in wanted and self._role_matches(replica, wanted[key][1]):
                if isinstance(replica, LeaderReplica):
                    replica.adopt_isr(wanted[key][1].isr)
                config = validate_topic_config(wanted[key][0].config, existing=True)
                replica.adopt_config(config)
                held = self._leadership.get(key)
                if held is not None:  # what the Kafka listener checks appends against
                    self._leadership[key] = dataclasses.replace(
                        held,
                        min_insync=int(config["min.insync.replicas"]),
                        timestamp_before_max_ms=int(config["message.timestamp.before.max.ms"]),
                        timestamp_after_max_ms=int(config["message.timestamp.after.max.ms"]),
                        compacted=is_compacted(config),
                    )
                continue
            # A topic being deleted drops its log unflushed (no fsync of what goes), and
            # so does a replica moved to other brokers (a reassignment).
            moved = self.data_dir.ring_name(key[2], key[1], self.broker_id) not in assigned
            topic_gone = (key[0], key[2]) not in existing or key[0] in deleting or moved
            log.info(
                "stopping %s of %s-%d%s",
                replica.role,
                key[0],
                key[1],
                " (deleted)" if topic_gone else "",
            )
            self.replicas.pop(key).stop(delete=topic_gone)
        self._assigned_rings = assigned
        self._remove_deleted_data(set(names), existing)
        for key in set(self.start_failures) - set(wanted):
            del self.start_failures[key]
        now = time.monotonic()
        for key, (meta, state) in wanted.items():
            failure = self.start_failures.get(key)
            if key in self.replicas or (failure is not None and now < failure.retry_at):
                continue
            try:
                self.replicas[key] = self._start_replica(key, meta, state)
            except Exception as exc:  # noqa: BLE001 - one replica must not hold up the others
                self._start_failed(key, exc)
                continue
            if failure is not None:
                del self.start_failures[key]
                log.info("started %s-%d after %d failed attempts", *key[:2], failure.attempts)
        for key, replica in self.replicas.items():
            start = log_starts.get(key[0], {}).get(key[1], 0)
            if start:
                replica.delete_records_before(start)

    def _start_failed(self, key: ReplicaKey, exc: Exception) -> None:
        """Note a replica that did not start and when to try it again. A reason is
        logged once, on one line (an unexpected kind of error with its traceback)."""
        previous = self.start_failures.get(key)
        attempts = previous.attempts + 1 if previous is not None else 1
        delay = min(MAX_START_BACKOFF_S, REPLICA_RESTART_BACKOFF_S * 2 ** (attempts - 1))
        reason = f"{type(exc).__name__}: {exc}"
        if previous is None or previous.reason != reason:
            if isinstance(exc, (EngineError, OSError)):
                log.error(
                    "cannot start the replica of %s-%d: %s (trying again after %.0f s, then "
                    "less often, up to every %.0f s)",
                    key[0], key[1], reason, delay, MAX_START_BACKOFF_S,
                )  # fmt: skip
            else:
                log.exception("cannot start the replica of %s-%d", key[0], key[1])
        self.start_failures[key] = StartFailure(reason, attempts, time.monotonic() + delay)
        self._retry_soon(delay)

    def _remove_deleted_data(self, names: set[str], existing: set[tuple[str, str]]) -> None:
        """Remove the partition directories of topics deleted from the tree.

        A replica stopped while its topic was being deleted (the controller removes
        the partition states before the topic node) could not tell that its topic
        was gone, and kept its data. A directory no replica of this broker uses goes
        once its topic's name has left ``names`` (the listing this pass read), or
        once the name stands for another topic id. Only a successful listing
        decides: a topic that could not be read is left alone.
        """
        hosted = {(key[0], key[1]) for key in self.replicas}
        ids = dict(existing)
        broker_dir = self.data_dir.broker_dir(self.broker_id)
        try:
            entries = list(os.scandir(broker_dir))
        except OSError:
            return
        for entry in entries:
            topic, _, partition = entry.name.rpartition("-")
            if not entry.is_dir() or not topic or not partition.isdigit():
                continue
            if (topic, int(partition)) in hosted:
                continue
            if topic in names:
                try:
                    claimed = (Path(entry.path) / "topic.id").read_text().strip()
                except OSError:
                    continue
                if topic not in ids or ids[topic] == claimed:
                    continue
            log.info("removing %s: its topic was deleted", entry.path)
            shutil.rmtree(entry.path, ignore_errors=True)

    def _retry_soon(self, delay_s: float = REPLICA_RESTART_BACKOFF_S) -> None:
        timer = threading.Timer(delay_s, self.poke)
        timer.daemon = True
        timer.start()

    def _role_matches(self, replica: Replica, state: md.PartitionState) -> bool:
        if replica.leader_epoch != state.leader_epoch:
            return False
        if state.leader == self.broker_id:
            return isinstance(replica, LeaderReplica)
        return isinstance(replica, FollowerReplica)

    def _start_replica(
        self, key: ReplicaKey, meta: md.TopicMetadata, state: md.PartitionState
    ) -> Replica:
        topic, partition, topic_id = key
        directory = self.data_dir.partition_dir(self.broker_id, topic, partition)
        _claim_directory(directory, topic_id)
        config = validate_topic_config(meta.config, existing=True)
        ring_name = self.data_dir.ring_name(topic_id, partition, self.broker_id)
        epoch = state.leader_epoch
        replica: Replica
        if state.leader == self.broker_id:
            log.info("leading %s-%d (epoch %d, isr %s)", topic, partition, epoch, list(state.isr))
            followers = {
                b: self.data_dir.ring_name(topic_id, partition, b)
                for b in meta.assignment.replicas[partition]
                if b != self.broker_id
            }
            replica = LeaderReplica(
                topic,
                partition,
                directory,
                ring_name,
                config,
                epoch,
                broker_id=self.broker_id,
                followers=followers,
                isr=state.isr,
                update_isr=functools.partial(self._write_isr, topic, partition, epoch),
            )
        else:
            log.info("following %s-%d (leader %d, epoch %d)", topic, partition, state.leader, epoch)
            replica = FollowerReplica(
                topic,
                partition,
                directory,
                ring_name,
                config,
                epoch,
                leader_ring=self.data_dir.ring_name(topic_id, partition, state.leader),
                leader_directory=self.data_dir.partition_dir(state.leader, topic, partition),
            )
        if isinstance(replica, LeaderReplica):
            # Before producers may append: the fences of every transactional producer
            # (its ring is new; a promoted follower's copied only some of them).
            try:
                for producer_id, producer_epoch in txn.current_epochs(self.zk):
                    replica.ring.fence(producer_id, producer_epoch)
            except TransactionError:
                log.warning(
                    "%s-%d fences only the newest 64 re-initialised producers", topic, partition
                )
        replica.start()
        if isinstance(replica, LeaderReplica):
            self._leadership[key] = Leadership(
                topic, partition, topic_id, epoch, ring_name, directory,
                int(config["min.insync.replicas"]), int(config["max.message.bytes"]),
                int(config["message.timestamp.before.max.ms"]),
                int(config["message.timestamp.after.max.ms"]),
                is_compacted(config),
            )  # fmt: skip
        return replica

    def _publish_leaderships(self) -> None:
        """Tell the Kafka listener's threads which partitions this broker leads now."""
        self._leadership = {k: v for k, v in self._leadership.items() if k in self.replicas}
        self.leaderships = {
            key[:2]: leadership
            for key, leadership in self._leadership.items()
            if isinstance(self.replicas[key], LeaderReplica)
        }

    def _start_kafka(self) -> None:
        """Open the Kafka listener (engine.kafka.listener), before the registration that
        names its port."""
        if self.kafka_auth is None:
            return
        port_file = self.data_dir.run_dir / f"kafka-{self.broker_id}.port"
        if self.kafka_port is not None:
            preferred = [self.kafka_port]
        else:
            previous = _read_port(port_file)
            preferred = [previous, 0] if previous else [0]
        try:
            sock = kafka.bind(preferred)
        except OSError as exc:
            raise SystemExit(
                f"broker {self.broker_id}: cannot listen for Kafka clients on 127.0.0.1:"
                f"{preferred[0]}: {exc.strerror or exc}"
            ) from None
        credential = read_credential(self.data_dir) if self.kafka_auth is KafkaAuth.SASL else None
        side = BrokerSide(
            self.broker_id, self.data_dir, self.zk, self.kafka_auth.security_protocol,
            lambda: self.leaderships,
        )  # fmt: skip
        self.kafka = kafka.KafkaListener(side, sock, self.kafka_auth, credential)
        self.kafka.start()
        write_private_file(port_file, f"{self.kafka.port}\n".encode())

    def _seal_ring(self, topic_id: str, partition: int, broker: int, epoch: int) -> None:
        """Seal a broker's ring of a partition (a deposed leader's, a deleted topic's):
        producers still mapping it must look the partition up again."""
        seal_ring(self.data_dir.ring_name(topic_id, partition, broker))

    def _write_isr(self, topic: str, partition: int, epoch: int, isr: tuple[int, ...]) -> bool:
        """The leader's ISR change, written only if the partition's leadership is unchanged
        and every follower it adds is registered (a frozen or dead broker's ring can look
        caught up while nothing is produced; Kafka's would not be fetching)."""
        path = md.state_path(topic, partition)
        try:
            data, stat = self.zk.get(path)
            state = md.PartitionState.from_json(md.decode(data))
            if state.leader != self.broker_id or state.leader_epoch != epoch:
                # This replica is stale: the next reconcile pass replaces or stops it.
                log.warning(
                    "%s-%d: ISR change %s not written: the partition is at leader %d epoch "
                    "%d, this replica leads epoch %d", topic, partition, list(isr),
                    state.leader, state.leader_epoch, epoch,
                )  # fmt: skip
                self.poke()
                return False
            if any(self.zk.exists(md.broker_path(b)) is None for b in set(isr) - set(state.isr)):
                return False
            new = dataclasses.replace(state, isr=isr)
            self.zk.set(path, md.encode(new.to_json()), version=stat.version)
        except (NoNodeError, BadVersionError):
            return False
        return True

    def _remove_stale_rings(self) -> None:
        """Remove the rings of this broker that no partition assigned to it owns (its
        topic was deleted, or the replica moved away), draining into the replica's log
        what one holds and the log lacks. A ring of an assigned replica stays, whether or
        not the replica runs now: an offline partition's ring holds acknowledged records
        that its leader drains when it leads again."""
        keep = {r.ring_name for r in self.replicas.values()} | (self._assigned_rings or set())
        for stale in stale_rings.stale_rings(self.data_dir):
            if stale.broker != self.broker_id or stale.name in keep:
                continue
            log.info("removing stale ring %s", stale.name)
            try:
                stale_rings.drain_and_remove_one(self.data_dir, stale)
            except RingPermissionError as exc:  # another user's, and we are not root
                log.warning("cannot remove a stale ring: %s", exc)

    def shutdown(self) -> None:
        log.info("broker %d stopping", self.broker_id)
        if self.kafka is not None:
            self.kafka.stop()
        self.txn_timeouts.stop()
        self.stats.stop()
        for key in list(self.replicas):
            self.replicas.pop(key).stop()
        try:
            self.zk.stop()
            self.zk.close()
        except Exception:
            log.exception("closing the coordinator session")
        log.info("broker %d stopped", self.broker_id)


def _read_port(path: Path) -> int | None:
    try:
        port = int(path.read_text().strip())
    except (OSError, ValueError):
        return None
    return port if 0 < port < 65536 else None


def _claim_directory(directory: Path, topic_id: str) -> None:
    """Make ``directory`` belong to this topic id, wiping data of an older topic of that name."""
    marker = directory / "topic.id"
    if directory.exists():
        try:
            if marker.read_text().strip() == topic_id:
                return
        except OSError:
            pass
        log.warning("wiping %s: it holds another topic's data", directory)
        shutil.rmtree(directory)
    make_private_dir(directory)
    write_private_file(marker, topic_id.encode())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m engine.broker")
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--id", type=int, required=True)
    parser.add_argument(
        "--coordinator",
        default=None,
        help="HOST:PORT[,HOST:PORT...] of an external ZooKeeper (default: the daemon's own)",
    )
    parser.add_argument(
        "--kafka-port", type=int, default=None, help="the Kafka listener's port (default: any)"
    )
    parser.add_argument(
        "--kafka-auth",
        choices=[a.value for a in KafkaAuth] + ["off"],
        default=KafkaAuth.SASL.value,
        help="how Kafka clients authenticate (off: no Kafka listener)",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO,
        format=f"%(asctime)s broker-{args.id} %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    logging.getLogger("engine.kazoo").setLevel(logging.WARNING)
    auth = None if args.kafka_auth == "off" else KafkaAuth(args.kafka_auth)
    broker = Broker(
        DataDir.resolve(args.data_dir), args.id, args.coordinator, args.kafka_port, auth
    )
    signal.signal(signal.SIGTERM, broker.on_signal)
    signal.signal(signal.SIGINT, broker.on_signal)
    # Every thread's stack into the log, from C (without the GIL): the daemon asks for
    # it before it kills a broker that did not stop in time.
    faulthandler.register(DUMP_STACKS_SIGNAL, all_threads=True)
    broker.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
