"""Day-to-day administration as a user does it: the Admin API and `engine topics ...`,
against a real daemon with real producers and consumers."""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import signal
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import admin_procs
import group_procs
import pytest
from engine_harness import Daemon, join_ok, running_daemon, started, wait_for

from engine import (
    Admin,
    ConfigError,
    Consumer,
    EngineTimeoutError,
    GroupNotEmptyError,
    NotEnoughReplicasError,
    OffsetAndTimestamp,
    OffsetOutOfRangeError,
    Producer,
    TopicPartition,
    UnknownGroupError,
)
from engine import consumer as consumer_module
from engine import metadata as md
from engine.datadir import DataDir
from engine.log import LogReader

SPAWN = mp.get_context("spawn")

SMALL = {"ring.bytes": 1 << 16, "max.message.bytes": 4096}


def one_line_error(out: object, *parts: str) -> str:
    """The single `engine: ...` line a failed command printed; it names every part."""
    assert out.returncode == 1, out  # type: ignore[attr-defined]
    err = out.stderr.decode().strip()  # type: ignore[attr-defined]
    assert err.startswith("engine: ") and "\n" not in err, err
    for part in parts:
        assert part in err, err
    return err


@pytest.fixture
def small_topic(admin: Admin) -> Iterator[str]:
    """A 1-partition topic with 2 replicas, small rings and 4 KiB segments."""
    name = f"adm-{uuid.uuid4().hex[:8]}"
    admin.create_topic(name, partitions=1, replication=2, config={**SMALL, "segment.bytes": 4096})
    yield name
    if name in admin.list_topics():
        admin.delete_topic(name)


def replica_log_starts(data_dir: Path, admin: Admin, topic: str, partition: int) -> list[int]:
    """The log start offset of every replica of the partition, read from its directory."""
    desc = admin.describe_topic(topic).partitions[partition]
    dd = admin._cluster.data_dir
    starts = []
    for broker in desc.replicas:
        with LogReader(dd.partition_dir(broker, topic, partition)) as reader:
            starts.append(reader.log_start_offset)
    return starts


# -- alter topic configs ----------------------------------------------------------


def test_altered_retention_applies_to_the_running_replicas(
    shared_daemon: Daemon, admin: Admin, small_topic: str
) -> None:
    with Producer(shared_daemon.data_dir, acks="all") as p:
        for i in range(400):
            p.send(small_topic, b"%05d" % i + b"v" * 100, partition=0)
    wait_for(
        lambda: admin.describe_topic(small_topic).partitions[0].log_end_offset == 400,
        what="400 records in the log",
    )
    assert replica_log_starts(shared_daemon.data_dir, admin, small_topic, 0) == [0, 0]

    config = admin.incremental_alter_configs(small_topic, {"retention.bytes": 8192})

    assert config["retention.bytes"] == 8192
    assert config["segment.bytes"] == 4096  # the keys not named stay
    assert admin.describe_topic(small_topic).config["retention.bytes"] == 8192
    # Both replicas, leader and follower, drop their oldest segments without a restart.
    starts = wait_for(
        lambda: (s := replica_log_starts(shared_daemon.data_dir, admin, small_topic, 0))
        and all(x > 0 for x in s)
        and s,
        what="retention.bytes to move every replica's log start",
    )
    assert all(0 < s < 400 for s in starts)


def test_an_altered_min_insync_replicas_applies_to_a_running_producer(daemon: Daemon) -> None:
    """Producers enforce min.insync.replicas: one made before the alter takes it too."""
    with Admin(daemon.data_dir) as admin:
        admin.create_topic("isr", partitions=1, replication=2, config=SMALL)
        state = admin.describe_topic("isr").partitions[0]
        follower = next(b for b in state.replicas if b != state.leader)
        pid = daemon.runtime()["processes"][f"broker-{follower}"]
        with Producer(daemon.data_dir, acks="all", delivery_timeout_ms=2000) as p:
            p.send("isr", b"before").get(10)
            os.kill(pid, signal.SIGSTOP)  # its session ends: it leaves the ISR
            try:
                wait_for(lambda: admin.describe_topic("isr").partitions[0].isr == (state.leader,),
                         timeout=20, what="the frozen follower to leave the ISR")  # fmt: skip
                p.send("isr", b"alone").get(10)  # min.insync.replicas=1: acknowledged

                admin.incremental_alter_configs("isr", {"min.insync.replicas": 2})

                def refused() -> bool:
                    try:
                        p.send("isr", b"refused").get(10)
                    except (NotEnoughReplicasError, EngineTimeoutError) as exc:
                        # Retried until delivery_timeout_ms, then it fails naming why.
                        assert "min.insync.replicas=2" in str(exc)
                        return True
                    return False

                wait_for(refused, timeout=20, what="the producer to refuse with one in sync")
            finally:
                os.kill(pid, signal.SIGCONT)


def test_deleting_a_config_returns_it_to_its_default(admin: Admin, small_topic: str) -> None:
    admin.incremental_alter_configs(small_topic, {"retention.ms": 60_000})
    config = admin.incremental_alter_configs(small_topic, delete=["retention.ms", "segment.bytes"])
    assert config["retention.ms"] == 7 * 24 * 3600 * 1000
    assert config["segment.bytes"] == 1 << 30
    assert admin.describe_topic(small_topic).config == config


@pytest.mark.parametrize(
    ("change", "delete", "words"),
    [
        ({"ring.bytes": 1 << 17}, [], ["cannot change on an existing topic", "key='ring.bytes'"]),
        ({"max.message.bytes": 2048}, [], ["key='max.message.bytes'"]),
        ([], ["ring.bytes"], ["key='ring.bytes'", "current=65536"]),
        ({"min.insync.replicas": 3}, [], ["min.insync.replicas=3 replication=2"]),
        ({"retention.ms": "soon"}, [], ["must be an integer", "key='retention.ms'"]),
        ({"no.such.key": 1}, [], ["unknown topic config", "key='no.such.key'"]),
        ({"retention.ms": 1}, ["retention.ms"], ["both set and deleted"]),
    ],
)
def test_an_alter_that_would_be_refused_changes_nothing(
    admin: Admin, small_topic: str, change: dict, delete: list, words: list
) -> None:
    before = admin.describe_topic(small_topic).config
    with pytest.raises(ConfigError) as refused:
        admin.incremental_alter_configs(small_topic, change or None, delete)
    message = str(refused.value)
    assert "\n" not in message
    for word in words:
        assert word in message
    assert admin.describe_topic(small_topic).config == before


def test_topics_alter_sets_and_deletes_configs_from_the_command_line(
    shared_daemon: Daemon, small_topic: str
) -> None:
    out = shared_daemon.cli(
        "topics", "alter", small_topic, "--config", "retention.ms=60000",
        "--delete-config", "segment.bytes",
    )  # fmt: skip
    assert out.stdout.decode().strip() == (
        f"altered topic {small_topic}: retention.ms=60000 segment.bytes=1073741824"
    )
    described = json.loads(shared_daemon.cli("topics", "describe", small_topic, "--json").stdout)
    assert described["config"]["retention.ms"] == 60000
    assert described["config"]["segment.bytes"] == 1 << 30

    refused = shared_daemon.cli(
        "topics", "alter", small_topic, "--config", "ring.bytes=131072", check=False
    )
    one_line_error(refused, "key='ring.bytes'")
    unknown = shared_daemon.cli("topics", "alter", "no-such-topic", "--config", "retention.ms=1",
                                check=False)  # fmt: skip
    one_line_error(unknown, "unknown topic", "no-such-topic")


# -- add partitions -------------------------------------------------------------------


def lines_of(paths: list[Path]) -> list[tuple[int, int, str]]:
    out = []
    for path in paths:
        if path.exists():
            for line in path.read_text().splitlines():
                partition, offset, value = line.split(" ", 2)
                out.append((int(partition), int(offset), value))
    return out


def test_added_partitions_take_new_records_and_the_group_reads_them(
    shared_daemon: Daemon, admin: Admin, tmp_path: Path
) -> None:
    """A producer that sends all along and a group of two consumer processes: after the
    topic grows from 2 to 4 partitions, the producer sends to all four (a key may land
    elsewhere than before, as in Kafka), and the group rebalances and reads every record."""
    topic = f"grow-{uuid.uuid4().hex[:8]}"
    admin.create_topic(topic, partitions=2, replication=2, config=SMALL)
    outs = [tmp_path / f"member{i}.txt" for i in range(2)]
    members = [
        SPAWN.Process(
            target=group_procs.consume_to_file,
            args=(str(shared_daemon.data_dir), topic, "growers", str(out)),
        )
        for out in outs
    ]
    try:
        with started(members), Producer(shared_daemon.data_dir, acks="all") as p:
            keys = [b"key-%d" % k for k in range(40)]
            before = {k: p.send(topic, b"before", key=k).get(10).partition for k in keys}
            assert set(before.values()) == {0, 1}

            grown = admin.create_partitions({topic: 4})[topic]

            assert [q.partition for q in grown.partitions] == [0, 1, 2, 3]
            assert all(q.leader is not None and len(q.replicas) == 2 for q in grown.partitions)
            sent = 0

            def placed_everywhere() -> bool:
                nonlocal sent
                metas = [p.send(topic, b"after-%d" % (sent + i), key=k) for i, k in
                         enumerate(keys)]  # fmt: skip
                sent += len(keys)
                return {m.get(10).partition for m in metas} == {0, 1, 2, 3}

            wait_for(placed_everywhere, what="the producer to send to the new partitions")
            after = {k: p.send(topic, b"after-last", key=k).get(10).partition for k in keys}
            moved = [k for k in keys if after[k] != before[k]]
            assert moved, "no key changed partition"  # hash modulo 4, not 2
            total = 2 * len(keys) + sent

            def all_read() -> bool:
                return len({(q, o) for q, o, _ in lines_of(outs)}) == total

            wait_for(all_read, timeout=60, what=f"the group to read all {total} records")
            seen = lines_of(outs)
            assert {q for q, _, _ in seen} == {0, 1, 2, 3}
            by_partition = {q: sum(1 for x, _, _ in seen if x == q) for q in range(4)}
            assert all(by_partition[q] > 0 for q in (2, 3)), by_partition
    finally:
        admin.delete_topic(topic)


def test_add_partitions_refuses_fewer_and_past_the_budget_writing_nothing(
    tmp_path: Path,
) -> None:
    footprint = (1 << 16) + 4096  # one ring: its data area and its header
    with (
        running_daemon(tmp_path / "engine", start_args=["--shm-budget", "272K"]) as daemon,
        Admin(daemon.data_dir) as admin,
    ):
        admin.create_topic("few", partitions=2, config=SMALL)
        with pytest.raises(ConfigError, match="partitions can only be added"):
            admin.create_partitions({"few": 2})
        out = daemon.cli("topics", "add-partitions", "few", "--count", "4")
        assert out.stdout.decode().strip() == "topic few: 2 -> 4 partitions"
        prefix = DataDir.resolve(daemon.data_dir).ring_prefix()
        wait_for(
            lambda: sum(n.startswith(prefix) for n in os.listdir("/dev/shm")) == 4,
            what="the rings of 4 partitions",
        )
        assert md.shm_used(admin._cluster.zk) == 4 * footprint

        refused = daemon.cli("topics", "add-partitions", "few", "--count", "5", check=False)
        one_line_error(
            refused, "shared-memory budget", f"used={4 * footprint} ", f"asked={footprint} "
        )
        assert len(admin.describe_topic("few").partitions) == 4
        assert md.shm_used(admin._cluster.zk) == 4 * footprint
        # A reassignment that adds a replica adds a ring: refused too, nothing written.
        (only,) = admin.describe_topic("few").partitions[0].replicas
        with pytest.raises(ConfigError, match=f"budget={4 * footprint} "):
            admin.alter_partition_reassignments(
                {TopicPartition("few", 0): [only, 3 - only]}, timeout=5
            )
        assert admin.describe_topic("few").partitions[0].replicas == (only,)
        assert md.shm_used(admin._cluster.zk) == 4 * footprint


# -- delete records ---------------------------------------------------------------------


def segment_bases(admin: Admin, broker: int, topic: str, partition: int) -> list[int]:
    from engine.log import list_segment_bases

    return list_segment_bases(str(admin._cluster.data_dir.partition_dir(broker, topic, partition)))


def test_deleted_records_are_gone_from_every_replica_and_stay_gone_across_a_restart(
    daemon: Daemon,
) -> None:
    topic = "deletes"
    with Admin(daemon.data_dir) as admin:
        admin.create_topic(
            topic, partitions=1, replication=2, config={**SMALL, "segment.bytes": 4096}
        )
        with Producer(daemon.data_dir, acks="all") as p:
            for i in range(400):
                p.send(topic, b"%05d" % i + b"v" * 100, partition=0)
        replicas = admin.describe_topic(topic).partitions[0].replicas
        wait_for(
            lambda: all(len(segment_bases(admin, b, topic, 0)) > 5 for b in replicas),
            what="several segments on each replica",
        )

        starts = admin.delete_records({TopicPartition(topic, 0): 250})

        assert starts == {TopicPartition(topic, 0): 250}
        assert admin.describe_topic(topic).partitions[0].log_start_offset == 250
        for broker in replicas:
            bases = segment_bases(admin, broker, topic, 0)
            # The segments wholly below 250 are removed; the one holding 250 stays.
            assert bases[0] <= 250 and (len(bases) == 1 or bases[1] > 250), bases
        with Consumer(data_dir=daemon.data_dir, auto_offset_reset="earliest") as c:
            tp = TopicPartition(topic, 0)
            c.assign([tp])
            assert c.beginning_offsets([tp]) == {tp: 250}
            c.seek(tp, 10)  # out of range now: auto_offset_reset says where to go
            first = wait_for(lambda: c.poll(timeout=0.2), what="records after the reset")
            assert first[0].offset == 250 and first[0].value.startswith(b"00250")
        with Consumer(data_dir=daemon.data_dir, auto_offset_reset="none") as c:
            c.assign([tp])
            c.seek(tp, 10)
            with pytest.raises(OffsetOutOfRangeError):
                c.poll(timeout=0.5)
        with pytest.raises(OffsetOutOfRangeError, match="past the high watermark"):
            admin.delete_records({tp: 401})

    daemon.stop()
    daemon.start()
    with Admin(daemon.data_dir) as admin:
        wait_for(
            lambda: admin.describe_topic(topic).partitions[0].leader is not None,
            what="a leader after the restart",
        )
        assert admin.describe_topic(topic).partitions[0].log_start_offset == 250
        with Consumer(data_dir=daemon.data_dir, auto_offset_reset="earliest") as c:
            c.assign([tp])
            got = wait_for(lambda: c.poll(timeout=0.2), what="records after the restart")
            assert got[0].offset == 250


def test_delete_records_from_the_command_line(shared_daemon: Daemon, admin: Admin) -> None:
    topic = f"delrec-{uuid.uuid4().hex[:8]}"
    admin.create_topic(topic, partitions=2, config=SMALL)
    try:
        with Producer(shared_daemon.data_dir, acks="all") as p:
            for i in range(30):
                p.send(topic, b"%d" % i, partition=i % 2)
        out = shared_daemon.cli("topics", "delete-records", topic, "--offset", "-1")
        assert out.stdout.decode().splitlines() == [
            f"{topic}-0: log start offset 15",
            f"{topic}-1: log start offset 15",
        ]
        refused = shared_daemon.cli(
            "topics", "delete-records", topic, "--partition", "0", "--offset", "99", check=False
        )
        one_line_error(refused, "past the high watermark", "offset=99", "high_watermark=15")
        assert [q.log_start_offset for q in admin.describe_topic(topic).partitions] == [15, 15]
    finally:
        admin.delete_topic(topic)


def test_a_consumer_reading_below_a_new_log_start_resets_as_kafka_does(
    shared_daemon: Daemon, admin: Admin, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Records read out of the leader's ring: a consumer at offset 10 when the records
    before 50 are deleted goes on at 50 (auto_offset_reset='earliest'), not at 10. (It
    looks once a second; here at every poll.)"""
    monkeypatch.setattr(consumer_module, "LOG_START_CHECK_S", 0.0, raising=False)
    topic = f"lagging-{uuid.uuid4().hex[:8]}"
    admin.create_topic(topic, partitions=1, config=SMALL)
    tp = TopicPartition(topic, 0)
    try:
        with Producer(shared_daemon.data_dir, acks="all") as p:
            for i in range(100):
                p.send(topic, b"%d" % i, partition=0)
        with Consumer(data_dir=shared_daemon.data_dir, auto_offset_reset="earliest") as c:
            c.assign([tp])
            first: list = []
            wait_for(lambda: first.extend(c.poll(timeout=0.2, max_records=10 - len(first)))
                     or len(first) == 10, what="the first 10 records")  # fmt: skip
            assert c.position(tp) == 10

            admin.delete_records({tp: 50})

            nxt = wait_for(lambda: c.poll(timeout=0.2, max_records=1), what="the next record")
            assert nxt[0].offset == 50 and nxt[0].value == b"50"
    finally:
        admin.delete_topic(topic)


# -- delete a consumer group ------------------------------------------------------------


def test_a_group_with_members_is_not_deleted_and_one_without_goes_with_its_offsets(
    shared_daemon: Daemon, admin: Admin, topic: str
) -> None:
    group = f"g-{uuid.uuid4().hex[:8]}"
    with Producer(shared_daemon.data_dir, acks="all") as p:
        for i in range(12):
            p.send(topic, b"%d" % i, partition=i % 3)
    with Consumer(
        topic, data_dir=shared_daemon.data_dir, group_id=group,
        auto_offset_reset="earliest", enable_auto_commit=False,
    ) as c:  # fmt: skip
        got: list = []
        wait_for(lambda: got.extend(c.poll(timeout=0.2)) or len(got) == 12, what="12 records")
        c.commit()
        with pytest.raises(GroupNotEmptyError, match="1 live member"):
            admin.delete_consumer_groups([group])
        refused = shared_daemon.cli("groups", "delete", group, check=False)
        one_line_error(refused, f"group {group!r} has 1 live member", "stop them first")
        assert c.committed(TopicPartition(topic, 0)) == 4  # nothing was deleted

    out = shared_daemon.cli("groups", "delete", group)

    assert out.stdout.decode() == f"deleted group {group}\n"
    assert group not in shared_daemon.cli("groups", "list").stdout.decode().split()
    with pytest.raises(UnknownGroupError):
        admin.delete_consumer_groups([group])
    with Consumer(
        topic, data_dir=shared_daemon.data_dir, group_id=group, auto_offset_reset="earliest"
    ) as c:
        assert c.committed(TopicPartition(topic, 0)) is None
        again: list = []
        wait_for(lambda: again.extend(c.poll(timeout=0.2)) or len(again) == 12,
                 what="the whole topic again, from no committed offset")  # fmt: skip


# -- describe the cluster -----------------------------------------------------------


def test_describe_cluster_gives_kafka_pythons_keys_and_a_stable_cluster_id(
    shared_daemon: Daemon, admin: Admin
) -> None:
    described = admin.describe_cluster()
    assert [b["node_id"] for b in described["brokers"]] == [1, 2]
    assert all(b["host"] == "127.0.0.1" and b["rack"] is None for b in described["brokers"])
    assert all(0 < b["port"] < 65536 for b in described["brokers"])  # its Kafka listener
    assert described["controller_id"] in (1, 2)
    assert described["controller_id"] == described["controller"]
    cluster_id = described["cluster_id"]
    assert isinstance(cluster_id, str) and len(cluster_id) == 22
    with Admin(shared_daemon.data_dir) as other:
        assert other.describe_cluster()["cluster_id"] == cluster_id


# -- preferred-leader election --------------------------------------------------------


def test_a_preferred_leader_election_moves_leadership_back_and_loses_nothing(
    daemon: Daemon,
) -> None:
    """The preferred leader's broker restarts, so the other replica leads; a producer
    sends with acks='all' all along; the election moves leadership back to the preferred
    replica; every acknowledged record is read back once, in order."""
    with Admin(daemon.data_dir) as admin:
        admin.create_topic("pref", partitions=1, replication=2, config=SMALL)
        state = admin.describe_topic("pref").partitions[0]
        preferred, other = state.replicas
        assert state.leader == preferred
        pid = daemon.runtime()["processes"][f"broker-{preferred}"]
        os.kill(pid, signal.SIGTERM)  # the daemon starts it again; it comes back a follower
        wait_for(lambda: admin.describe_topic("pref").partitions[0].leader == other,
                 what="the other replica to lead")  # fmt: skip
        wait_for(
            lambda: sorted(admin.describe_topic("pref").partitions[0].isr)
            == sorted((preferred, other)),
            what="the restarted broker to rejoin the ISR",
        )

        acked: list[int] = []
        stop = threading.Event()

        def produce() -> None:
            with Producer(daemon.data_dir, acks="all") as p:
                i = 0
                while not stop.is_set():
                    p.send("pref", b"%d" % i).get(timeout=30)
                    acked.append(i)
                    i += 1

        sender = threading.Thread(target=produce)
        sender.start()
        try:
            wait_for(lambda: len(acked) > 50, what="records before the election")
            leaders = admin.perform_leader_election("preferred", [TopicPartition("pref", 0)])
            assert leaders == {TopicPartition("pref", 0): preferred}
            after = len(acked)
            wait_for(lambda: len(acked) > after + 50, what="records after the election")
        finally:
            stop.set()
            sender.join()
        moved = admin.describe_topic("pref").partitions[0]
        assert moved.leader == preferred and moved.leader_epoch > state.leader_epoch + 1
        out = daemon.cli("topics", "elect-leaders", "--topic", "pref")
        assert out.stdout.decode() == f"pref-0: leader {preferred}\n"  # nothing to move
    with Consumer(data_dir=daemon.data_dir, auto_offset_reset="earliest") as c:
        c.assign([TopicPartition("pref", 0)])
        values: list[int] = []
        wait_for(
            lambda: values.extend(int(r.value) for r in c.poll(timeout=0.2))
            or len(values) >= len(acked),
            what="every acknowledged record",
        )
    assert values[: len(acked)] == acked


# -- consumer pause / resume, offsets_for_times -------------------------------------------


def test_paused_partitions_return_nothing_while_the_member_stays_in_its_group(
    shared_daemon: Daemon, admin: Admin, topic: str
) -> None:
    group = f"p-{uuid.uuid4().hex[:8]}"
    with Producer(shared_daemon.data_dir, acks="all") as p:
        for i in range(30):
            p.send(topic, b"%d" % i, partition=i % 3)
    tp0 = TopicPartition(topic, 0)
    with Consumer(
        topic, data_dir=shared_daemon.data_dir, group_id=group, auto_offset_reset="earliest",
        session_timeout_ms=2000, heartbeat_interval_ms=500,
    ) as c:  # fmt: skip
        wait_for(lambda: c.poll(timeout=0.1) is not None and len(c.assignment()) == 3,
                 what="the three partitions")  # fmt: skip
        c.seek_to_beginning()
        c.pause(tp0)
        assert c.paused() == {tp0}
        got: list = []
        wait_for(lambda: got.extend(c.poll(timeout=0.2)) or len(got) == 20,
                 what="the 20 records of the partitions not paused")  # fmt: skip
        for _ in range(15):  # 3 s: longer than the session timeout
            got.extend(c.poll(timeout=0.2))
        assert {r.partition for r in got} == {1, 2} and len(got) == 20
        assert c.assignment() == {TopicPartition(topic, p) for p in range(3)}
        assert c.position(tp0) == 0
        with pytest.raises(ConfigError, match="not assigned"):
            c.pause(TopicPartition(topic, 9))

        c.resume(tp0)

        assert c.paused() == set()
        rest: list = []
        wait_for(lambda: rest.extend(c.poll(timeout=0.2)) or len(rest) == 10,
                 what="the 10 records of the resumed partition")  # fmt: skip
        assert {r.partition for r in rest} == {0}


def test_offsets_for_times_gives_offset_and_timestamp_of_partitions_not_assigned(
    shared_daemon: Daemon, topic: str
) -> None:
    with Producer(shared_daemon.data_dir, acks="all") as p:
        for i in range(10):
            p.send(topic, b"%d" % i, partition=1, timestamp_ms=5_000_000 + 10 * i)
    tp = TopicPartition(topic, 1)
    with Consumer(data_dir=shared_daemon.data_dir) as c:  # nothing assigned
        found = c.offsets_for_times({tp: 5_000_035, TopicPartition(topic, 2): 0})
        assert found[tp] is not None
        assert (found[tp].offset, found[tp].timestamp) == (4, 5_000_040)
        assert isinstance(found[tp], OffsetAndTimestamp)
        assert found[TopicPartition(topic, 2)] is None  # an empty partition
        assert c.offsets_for_times({tp: 6_000_000}) == {tp: None}
        assert c.assignment() == set()


# -- move a partition's replicas ------------------------------------------------------


def test_a_partition_moves_to_other_brokers_while_written_and_read_losing_nothing(
    tmp_path: Path,
) -> None:
    """Replicas (a, b) move to (c, b) on a 3-broker daemon, the leader a among those that
    go, while a producer process sends acks='all' records one after another and a
    consumer reads them: every acknowledged record is read once, at the offset its ack
    named, in order; a's copy is removed; the CLI moves it back."""
    with (
        running_daemon(tmp_path / "engine", brokers=3) as daemon,
        Admin(daemon.data_dir) as admin,
    ):
        admin.create_topic("moving", partitions=1, replication=2, config=SMALL)
        tp = TopicPartition("moving", 0)
        old = admin.describe_topic("moving").partitions[0]
        a, b = old.replicas
        assert old.leader == a
        c = ({1, 2, 3} - {a, b}).pop()
        acked_path, stop_path = tmp_path / "acked.txt", tmp_path / "stop"
        producer = SPAWN.Process(
            target=admin_procs.produce_paced,
            args=(str(daemon.data_dir), "moving", str(acked_path), str(stop_path)),
        )

        def acked() -> list[tuple[int, int]]:
            if not acked_path.exists():
                return []
            return [tuple(map(int, line.split())) for line in acked_path.read_text().split("\n")
                    if line]  # type: ignore[misc]  # fmt: skip

        read: list[tuple[int, int]] = []  # (seq, offset)
        done = threading.Event()

        def consume() -> None:
            with Consumer(data_dir=daemon.data_dir, auto_offset_reset="earliest") as consumer:
                consumer.assign([tp])
                while not done.is_set():
                    read.extend((int(r.value), r.offset) for r in consumer.poll(timeout=0.1))

        reader = threading.Thread(target=consume)
        reader.start()
        try:
            with started([producer]):
                wait_for(lambda: len(acked()) > 200, what="records before the move")

                moved = admin.alter_partition_reassignments({tp: [c, b]})

                assert moved == {tp: (c, b)}
                now = len(acked())
                # A deadline, not a speed: under a loaded machine the move takes longer.
                wait_for(lambda: len(acked()) > now + 200, 60, what="records after the move")
                stop_path.touch()
                join_ok([producer], timeout=60)
            everything = acked()
            wait_for(lambda: len(read) >= len(everything), what="the consumer to read them all")
        finally:
            done.set()
            reader.join()
        assert [seq for seq, _ in everything] == list(range(len(everything)))
        assert read[: len(everything)] == everything  # each once, where its ack said
        state = admin.describe_topic("moving").partitions[0]
        assert state.replicas == (c, b) and state.leader in (c, b)
        assert sorted(state.isr) == sorted((b, c))
        assert state.leader_epoch > old.leader_epoch
        gone = admin._cluster.data_dir.partition_dir(a, "moving", 0)
        wait_for(lambda: not gone.exists(), what="the old replica's data to go")

        out = daemon.cli("topics", "reassign", "moving", "--partition", "0", "--replicas",
                         f"{a},{c}")  # fmt: skip
        assert out.stdout.decode().startswith(f"moving-0: replicas [{a}, {c}], leader ")
        assert admin.describe_topic("moving").partitions[0].replicas == (a, c)
        refused = daemon.cli("topics", "reassign", "moving", "--partition", "0", "--replicas",
                             "1,9", check=False)  # fmt: skip
        one_line_error(refused, "replicas must be live brokers", "not_live=[9]")


def test_a_new_replica_starts_its_log_at_the_leaders_log_start(tmp_path: Path) -> None:
    """A partition whose records before 1000 were deleted (and whose ring moved past 0)
    gets a replica on a third broker: it cannot fetch offset 0, so it starts its log at
    1000, as Kafka's truncate-fully does, catches up and joins the ISR."""
    with (
        running_daemon(tmp_path / "engine", brokers=3) as daemon,
        Admin(daemon.data_dir) as admin,
    ):
        admin.create_topic("trimmed", partitions=1, config={**SMALL, "segment.bytes": 4096})
        tp = TopicPartition("trimmed", 0)
        with Producer(daemon.data_dir, acks="all") as p:
            for i in range(1500):
                p.send("trimmed", b"%05d" % i + b"v" * 100, partition=0)
        assert admin.delete_records({tp: 1000}) == {tp: 1000}
        (a,) = admin.describe_topic("trimmed").partitions[0].replicas
        c = min({1, 2, 3} - {a})

        assert admin.alter_partition_reassignments({tp: [a, c]}, timeout=20) == {tp: (a, c)}

        state = admin.describe_topic("trimmed").partitions[0]
        assert sorted(state.isr) == sorted((a, c))
        with LogReader(admin._cluster.data_dir.partition_dir(c, "trimmed", 0)) as reader:
            assert reader.log_start_offset == 1000
            first = reader.read(1000, 1, 1500)  # the batch holding 1000
        assert b"01000" in first
