"""Consumer groups through Kafka's protocol (engine.kafka.group_coordinator), against
real clients: confluent-kafka (librdkafka), kafka-python and aiokafka, and raw
requests where a client would hide the answer.

One daemon (two brokers, ``--kafka-auth none``) for the module. Session timeouts are
Kafka's smallest (6 s) and heartbeats every 500 ms, so that rebalances and expiries
happen within seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import signal
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiokafka
import aiokafka.errors
import confluent_kafka
import confluent_kafka.admin
import pytest
from engine_harness import Daemon, running_daemon, wait_for
from kazoo.client import KazooState
from test_kafka_listener import Raw, kafka, kafka_settings

from engine import Admin, Consumer, GroupNotEmptyError, GroupProtocolError, Producer, TopicPartition
from engine.group import describe_group, read_members
from engine.kafka import group_coordinator, schemas
from engine.kafka.error_codes import ErrorCode
from engine.kafka.group_coordinator import encode_subscription

SMALL_RING = {"ring.bytes": 1 << 20, "max.message.bytes": 500_000}
SESSION_MS = 6000
HEARTBEAT_MS = 500
CLIENTS = ["confluent-kafka", "kafka-python", "aiokafka"]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    with running_daemon(
        tmp_path_factory.mktemp("kafka-groups"), brokers=2, start_args=["--kafka-auth", "none"]
    ) as d:
        yield d


_BOOTSTRAP: dict[Path, str] = {}


def bootstrap(d: Daemon) -> str:
    """The daemon's bootstrap servers (`engine status` once per daemon: a broker that
    restarts takes its port again)."""
    if d.data_dir not in _BOOTSTRAP:
        _BOOTSTRAP[d.data_dir] = str(kafka_settings(d)["bootstrap_servers"])
    return _BOOTSTRAP[d.data_dir]


def new_topic(d: Daemon, partitions: int) -> str:
    name = f"g-{uuid.uuid4().hex[:8]}"
    with Admin(d.data_dir) as admin:
        admin.create_topic(name, partitions=partitions, replication=1, config=SMALL_RING)
    return name


def new_group() -> str:
    return f"grp-{uuid.uuid4().hex[:8]}"


def produce(d: Daemon, topic: str, partitions: int, values: list[bytes]) -> None:
    with Producer(data_dir=d.data_dir) as producer:
        for i, value in enumerate(values):
            producer.send(topic, value=value, partition=i % partitions)
        producer.flush()


def describe(d: Daemon, group: str) -> dict[str, Any]:
    """What `engine groups describe GROUP --json` prints, from the library (quicker)."""
    with Admin(d.data_dir) as admin:
        g = describe_group(admin, group)
    return {
        "state": g.state,
        "generation": g.generation,
        "protocol": g.protocol,
        "members": g.members,
        "partitions": [p.__dict__ for p in g.partitions],
    }


def kinds(d: Daemon, group: str) -> set[str]:
    """The kinds of the group's members, as `engine groups describe` shows them."""
    return {info.get("kind", "engine") for info in describe(d, group)["members"].values()}


# -- a group member in its own thread, for each client -------------------------------------


class Member(threading.Thread):
    """One consumer of a group, subscribed to one topic, in its own thread (aiokafka: its
    own event loop). It commits what it consumed after each poll and, told to stop, closes
    (and so leaves the group). ``assigned``: its partitions after its last poll."""

    def __init__(self, client: str, d: Daemon, group: str, topic: str, name: str) -> None:
        super().__init__(name=f"member-{name}", daemon=True)
        self.client = client
        self.servers = bootstrap(d)
        self.group, self.topic, self.client_id = group, topic, name
        self.assigned: frozenset[int] = frozenset()
        self.records: list[tuple[int, int, bytes]] = []  # (partition, offset, value)
        self.error: BaseException | None = None
        self.stopping = threading.Event()
        self.closed = threading.Event()

    def run(self) -> None:
        try:
            if self.client == "confluent-kafka":
                self._confluent()
            elif self.client == "kafka-python":
                self._kafka_python()
            else:
                asyncio.run(self._aiokafka())
        except BaseException as exc:  # noqa: BLE001 - the test reports it
            self.error = exc
        finally:
            self.closed.set()

    def stop(self) -> None:
        self.stopping.set()
        assert self.closed.wait(30), f"{self.client_id} did not close"
        assert self.error is None, self.error

    def values(self) -> set[bytes]:
        return {v for _, _, v in list(self.records)}

    def _confluent(self) -> None:
        c = confluent_kafka.Consumer(
            {
                "bootstrap.servers": self.servers,
                "group.id": self.group,
                "client.id": self.client_id,
                "session.timeout.ms": SESSION_MS,
                "heartbeat.interval.ms": HEARTBEAT_MS,
                "auto.offset.reset": "earliest",
                "enable.auto.commit": False,
                # A broker that died (the failover test) is tried again within a second.
                "reconnect.backoff.max.ms": 1000,
            }
        )
        try:
            c.subscribe([self.topic])
            while not self.stopping.is_set():
                got = [m for m in c.consume(500, timeout=0.1) if m.error() is None]
                self.records += [(m.partition(), m.offset(), m.value()) for m in got]
                self.assigned = frozenset(tp.partition for tp in c.assignment())
                if got:
                    # A rebalance meanwhile: the next owner reads them again.
                    with contextlib.suppress(confluent_kafka.KafkaException):
                        c.commit(asynchronous=False)
        finally:
            c.close()

    def _kafka_python(self) -> None:
        c = kafka.KafkaConsumer(
            self.topic,
            bootstrap_servers=self.servers,
            group_id=self.group,
            client_id=self.client_id,
            session_timeout_ms=SESSION_MS,
            heartbeat_interval_ms=HEARTBEAT_MS,
            auto_offset_reset="earliest",
            enable_auto_commit=False,
        )
        try:
            while not self.stopping.is_set():
                batches = c.poll(timeout_ms=100)
                for tp, msgs in batches.items():
                    self.records += [(tp.partition, m.offset, m.value) for m in msgs]
                self.assigned = frozenset(tp.partition for tp in c.assignment())
                if batches:
                    with contextlib.suppress(kafka.errors.KafkaError):
                        c.commit()
        finally:
            c.close()

    async def _aiokafka(self) -> None:
        c = aiokafka.AIOKafkaConsumer(
            self.topic,
            bootstrap_servers=self.servers,
            group_id=self.group,
            client_id=self.client_id,
            session_timeout_ms=SESSION_MS,
            heartbeat_interval_ms=HEARTBEAT_MS,
            auto_offset_reset="earliest",
            enable_auto_commit=False,
        )
        await c.start()
        try:
            while not self.stopping.is_set():
                batches = await c.getmany(timeout_ms=100)
                for tp, msgs in batches.items():
                    self.records += [(tp.partition, m.offset, m.value) for m in msgs]
                self.assigned = frozenset(tp.partition for tp in c.assignment())
                if batches:
                    with contextlib.suppress(aiokafka.errors.KafkaError):
                        await c.commit()
        finally:
            await c.stop()


def start_members(client: str, d: Daemon, group: str, topic: str, n: int) -> list[Member]:
    members = [Member(client, d, group, topic, f"m{i}") for i in range(n)]
    for m in members:
        m.start()
    return members


def stop_all(members: list[Member]) -> None:
    for m in members:
        m.stopping.set()
    for m in members:
        m.closed.wait(30)


def owned_once(members: list[Member], partitions: int) -> bool:
    """Every partition is assigned to exactly one of ``members``, each has some."""
    sets = [m.assigned for m in members]
    for m in members:
        assert m.error is None, m.error
    return (
        all(sets)
        and sum(map(len, sets)) == partitions
        and set().union(*sets) == set(range(partitions))
    )


# -- raw requests ---------------------------------------------------------------------------


def coordinator_of(d: Daemon, group: str) -> tuple[int, str]:
    """The broker id and address FindCoordinator names for the group."""
    probe = Raw(bootstrap(d))
    try:
        found = probe.request(schemas.FIND_COORDINATOR, 3, {"key": group, "key_type": 0})
    finally:
        probe.close()
    assert found is not None and found["error_code"] == 0
    return found["node_id"], f"{found['host']}:{found['port']}"


def coordinator_and_other(d: Daemon, group: str) -> tuple[Raw, Raw]:
    """Raw connections to the group's coordinator and to the other broker."""
    _, mine = coordinator_of(d, group)
    (other,) = [s for s in bootstrap(d).split(",") if s != mine]
    return Raw(mine), Raw(other)


def join_body(group: str, topic: str, member_id: str = "", session_ms: int = SESSION_MS) -> dict:
    return {
        "group_id": group,
        "session_timeout_ms": session_ms,
        "rebalance_timeout_ms": 10_000,
        "member_id": member_id,
        "group_instance_id": None,
        "protocol_type": "consumer",
        "protocols": [{"name": "range", "metadata": encode_subscription([topic])}],
    }


# -- tests ----------------------------------------------------------------------------------


@pytest.mark.parametrize("client", CLIENTS)
def test_a_group_of_three_shares_the_partitions_and_a_leavers_are_taken_over(
    cluster: Daemon, client: str
) -> None:
    partitions = 6
    topic, group = new_topic(cluster, partitions), new_group()
    first = [b"a%d" % i for i in range(300)]
    produce(cluster, topic, partitions, first)
    members = start_members(client, cluster, group, topic, 3)
    try:
        wait_for(
            lambda: owned_once(members, partitions),
            timeout=30,
            what="each partition owned by exactly one of three members",
        )
        wait_for(
            lambda: set().union(*(m.values() for m in members)) >= set(first),
            timeout=20,
            what="the first records consumed",
        )
        leaver, stayers = members[0], members[1:]
        left_behind = leaver.assigned
        leaver.stop()
        wait_for(
            lambda: owned_once(stayers, partitions),
            timeout=30,
            what="the two members left owning every partition",
        )
        assert left_behind <= stayers[0].assigned | stayers[1].assigned
        second = [b"b%d" % i for i in range(300)]
        produce(cluster, topic, partitions, second)
        wait_for(
            lambda: set().union(*(m.values() for m in members)) >= set(first + second),
            timeout=20,
            what="every record consumed by the group",
        )
    finally:
        stop_all(members)
    for m in members:
        assert m.error is None, m.error


@pytest.mark.parametrize("client", CLIENTS)
def test_a_new_member_resumes_at_the_groups_committed_offset(cluster: Daemon, client: str) -> None:
    topic, group = new_topic(cluster, 1), new_group()
    produce(cluster, topic, 1, [b"r%d" % i for i in range(10)])
    (first,) = start_members(client, cluster, group, topic, 1)
    try:
        wait_for(lambda: len(first.values()) == 10, timeout=30, what="10 records consumed")
    finally:
        first.stop()
    assert describe(cluster, group)["partitions"][0]["committed"] == 10
    produce(cluster, topic, 1, [b"r%d" % i for i in range(10, 15)])
    (second,) = start_members(client, cluster, group, topic, 1)
    try:
        wait_for(lambda: len(second.records) >= 5, timeout=30, what="the new member's records")
    finally:
        second.stop()
    assert [offset for _, offset, _ in second.records] == [10, 11, 12, 13, 14]


def test_a_kafka_commit_is_where_an_engine_consumer_of_the_group_resumes(
    cluster: Daemon,
) -> None:
    topic, group = new_topic(cluster, 2), new_group()
    produce(cluster, topic, 2, [b"k%d" % i for i in range(20)])
    (member,) = start_members("confluent-kafka", cluster, group, topic, 1)
    try:
        wait_for(lambda: len(member.values()) == 20, timeout=30, what="20 records consumed")
    finally:
        member.stop()
    produce(cluster, topic, 2, [b"k%d" % i for i in range(20, 24)])
    with Consumer(data_dir=cluster.data_dir, group_id=group, auto_offset_reset="earliest") as c:
        assert [c.committed(TopicPartition(topic, p)) for p in (0, 1)] == [10, 10]
        c.subscribe([topic])
        got: list = []
        wait_for(
            lambda: got.extend(c.poll(timeout=0.2)) or len(got) >= 4,
            timeout=30,
            what="the engine consumer's records",
        )
    assert sorted(r.value for r in got) == [b"k20", b"k21", b"k22", b"k23"]


def test_an_engine_commit_is_where_a_kafka_client_of_the_group_resumes(cluster: Daemon) -> None:
    topic, group = new_topic(cluster, 2), new_group()
    produce(cluster, topic, 2, [b"e%d" % i for i in range(20)])
    with Consumer(
        data_dir=cluster.data_dir,
        group_id=group,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    ) as c:
        c.subscribe([topic])
        got: list = []
        wait_for(
            lambda: got.extend(c.poll(timeout=0.2)) or len(got) >= 20,
            timeout=30,
            what="the engine consumer's records",
        )
        c.commit()
    produce(cluster, topic, 2, [b"e%d" % i for i in range(20, 24)])
    probe = confluent_kafka.Consumer({"bootstrap.servers": bootstrap(cluster), "group.id": group})
    try:
        committed = probe.committed(
            [confluent_kafka.TopicPartition(topic, p) for p in (0, 1)], timeout=10
        )
        assert [tp.offset for tp in committed] == [10, 10]
    finally:
        probe.close()
    (member,) = start_members("confluent-kafka", cluster, group, topic, 1)
    try:
        wait_for(lambda: len(member.records) >= 4, timeout=30, what="the Kafka client's records")
    finally:
        member.stop()
    assert sorted(member.values()) == [b"e20", b"e21", b"e22", b"e23"]


def test_engine_groups_describe_shows_the_kafka_members(cluster: Daemon) -> None:
    topic, group = new_topic(cluster, 4), new_group()
    members = start_members("confluent-kafka", cluster, group, topic, 2)
    try:
        wait_for(lambda: owned_once(members, 4), timeout=30, what="a stable group of two")
        wait_for(
            lambda: describe(cluster, group)["state"] == "Stable",
            timeout=10,
            what="the group described as Stable",
        )
        d = json.loads(cluster.cli("groups", "describe", group, "--json").stdout)
        by_client = {info["client_id"]: (mid, info) for mid, info in d["members"].items()}
        assert sorted(by_client) == ["m0", "m1"]
        assert d["protocol"] in ("range", "roundrobin") and d["generation"] >= 1
        for m in members:
            _, info = by_client[m.client_id]
            assert info["kind"] == "kafka" and info["host"] == "127.0.0.1"
            assert info["subscription"] == [topic]
            assert {p for _, p in info["assignment"]} == m.assigned
        assert {row["owner"] for row in d["partitions"]} == {mid for mid, _ in by_client.values()}
        with Admin(cluster.data_dir) as admin, pytest.raises(GroupNotEmptyError):
            admin.delete_consumer_groups([group])
        # Kafka's admin clients see the same members (DescribeGroups).
        kafka_admin = confluent_kafka.admin.AdminClient({"bootstrap.servers": bootstrap(cluster)})
        seen = kafka_admin.describe_consumer_groups([group])[group].result(timeout=10)
        assert seen.state == confluent_kafka.ConsumerGroupState.STABLE
        assert {
            (
                m.member_id,
                m.client_id,
                frozenset(tp.partition for tp in m.assignment.topic_partitions),
            )
            for m in seen.members
        } == {(by_client[m.client_id][0], m.client_id, m.assigned) for m in members}
        text = cluster.cli("groups", "describe", group).stdout.decode()
        assert "state Stable" in text and "kafka client m0" in text and "kafka client m1" in text
        assert group in cluster.cli("groups", "list").stdout.decode().split()
    finally:
        stop_all(members)
    wait_for(
        lambda: describe(cluster, group)["state"] == "Empty",
        timeout=10,
        what="the group described as Empty after its members left",
    )


def test_a_kafka_client_cannot_join_a_group_of_engine_consumers(cluster: Daemon) -> None:
    topic, group = new_topic(cluster, 2), new_group()
    coordinator, other = coordinator_and_other(cluster, group)
    other.close()
    try:
        with Consumer(data_dir=cluster.data_dir, group_id=group) as c:
            c.subscribe([topic])
            refused = coordinator.request(schemas.JOIN_GROUP, 5, join_body(group, topic))
            assert refused is not None
            assert refused["error_code"] == ErrorCode.INCONSISTENT_GROUP_PROTOCOL
            # As librdkafka tells its application.
            kafka_consumer = confluent_kafka.Consumer(
                {"bootstrap.servers": bootstrap(cluster), "group.id": group}
            )
            try:
                kafka_consumer.subscribe([topic])
                error = wait_for(
                    lambda: (m := kafka_consumer.poll(0.2)) is not None and m.error(),
                    timeout=15,
                    what="the Kafka client's join refused",
                )
            finally:
                kafka_consumer.close()
            assert error.code() == confluent_kafka.KafkaError.INCONSISTENT_GROUP_PROTOCOL
            # Nor can the group be deleted under its engine members.
            deleted = coordinator.request(schemas.DELETE_GROUPS, 2, {"groups_names": [group]})
            assert deleted is not None
            assert deleted["results"][0]["error_code"] == ErrorCode.NON_EMPTY_GROUP
            assert kinds(cluster, group) == {"engine"}
            # Kafka's DescribeGroups and ListGroups show the engine's members too.
            described = coordinator.request(schemas.DESCRIBE_GROUPS, 5, {"groups": [group]})
            assert described is not None
            (g,) = described["groups"]
            assert (g["error_code"], g["group_state"], g["protocol_type"]) == (
                0,
                "Stable",
                "consumer",
            )
            assert [m["client_id"] for m in g["members"]] == [c.client_id]
            listed = coordinator.request(schemas.LIST_GROUPS, 4, {"states_filter": []})
            assert listed is not None
            assert {
                "group_id": group,
                "protocol_type": "consumer",
                "group_state": "Stable",
                "group_type": "",
            } in listed["groups"]
        # Once they left, Kafka clients may have it.
        joined = coordinator.request(schemas.JOIN_GROUP, 5, join_body(group, topic))
        assert joined is not None and joined["error_code"] == ErrorCode.MEMBER_ID_REQUIRED
        left = coordinator.request(
            schemas.LEAVE_GROUP,
            3,
            {
                "group_id": group,
                "members": [{"member_id": joined["member_id"], "group_instance_id": None}],
            },
        )
        assert left is not None and left["members"][0]["error_code"] == ErrorCode.NONE
    finally:
        coordinator.close()


def test_an_engine_consumer_cannot_join_a_group_of_kafka_clients(cluster: Daemon) -> None:
    topic, group = new_topic(cluster, 2), new_group()
    members = start_members("confluent-kafka", cluster, group, topic, 1)
    try:
        wait_for(lambda: owned_once(members, 2), timeout=30, what="a Kafka group")
        with (
            Consumer(data_dir=cluster.data_dir, group_id=group) as c,
            pytest.raises(GroupProtocolError, match=f"group '{group}'"),
        ):
            c.subscribe([topic])
        d = describe(cluster, group)
        assert [info["client_id"] for info in d["members"].values()] == ["m0"]
        assert members[0].assigned == {0, 1}
    finally:
        stop_all(members)


def engine_joins(
    consumer: Consumer, topic: str, go: threading.Barrier, outcome: dict[str, Any]
) -> None:
    go.wait()
    time.sleep(random.uniform(0, 0.04))
    try:
        consumer.subscribe([topic])
        outcome["engine"] = True
    except GroupProtocolError:
        outcome["engine"] = False


def test_an_engine_consumer_and_a_kafka_client_joining_at_once_are_never_both_members(
    cluster: Daemon,
) -> None:
    """Each round starts both joins at once, each after a random delay of up to 40 ms
    (either may register first). Outcomes allowed: one joined and the other was refused,
    or both were refused (each saw the other's registration); never both joined."""
    topic = new_topic(cluster, 1)
    with Admin(cluster.data_dir) as admin:
        for _ in range(8):
            group = new_group()
            coordinator, other = coordinator_and_other(cluster, group)
            other.close()
            consumer = Consumer(data_dir=cluster.data_dir, group_id=group)
            outcome: dict[str, Any] = {}
            go = threading.Barrier(2)
            thread = threading.Thread(target=engine_joins, args=(consumer, topic, go, outcome))
            thread.start()
            try:
                go.wait()
                time.sleep(random.uniform(0, 0.04))
                answer = coordinator.request(schemas.JOIN_GROUP, 5, join_body(group, topic))
                assert answer is not None
                thread.join(30)
                kafka_joined = answer["error_code"] == ErrorCode.MEMBER_ID_REQUIRED
                assert kafka_joined or answer["error_code"] == ErrorCode.INCONSISTENT_GROUP_PROTOCOL
                assert not (kafka_joined and outcome["engine"]), "both kinds joined one group"
                registered = read_members(admin._cluster.zk, group).values()
                assert len({info.get("kind", "engine") for info in registered}) <= 1
            finally:
                thread.join(30)
                consumer.close()
                coordinator.close()


def test_delete_groups_refuses_a_live_group_and_deletes_an_empty_one(cluster: Daemon) -> None:
    topic, group = new_topic(cluster, 2), new_group()
    produce(cluster, topic, 2, [b"d%d" % i for i in range(4)])
    admin = confluent_kafka.admin.AdminClient({"bootstrap.servers": bootstrap(cluster)})
    members = start_members("confluent-kafka", cluster, group, topic, 1)
    try:
        wait_for(lambda: len(members[0].values()) == 4, timeout=30, what="records consumed")
        with pytest.raises(confluent_kafka.KafkaException) as live:
            admin.delete_consumer_groups([group], request_timeout=10)[group].result()
        assert live.value.args[0].code() == confluent_kafka.KafkaError.NON_EMPTY_GROUP
    finally:
        stop_all(members)
    admin.delete_consumer_groups([group], request_timeout=10)[group].result()
    assert group not in cluster.cli("groups", "list").stdout.decode().split()
    with Consumer(data_dir=cluster.data_dir, group_id=group) as c:
        assert c.committed(TopicPartition(topic, 0)) is None
    with pytest.raises(confluent_kafka.KafkaException) as unknown:
        admin.delete_consumer_groups([group], request_timeout=10)[group].result()
    assert unknown.value.args[0].code() == confluent_kafka.KafkaError.GROUP_ID_NOT_FOUND


def test_a_broker_that_does_not_coordinate_the_group_answers_not_coordinator(
    cluster: Daemon,
) -> None:
    topic, group = new_topic(cluster, 1), new_group()
    coordinator, other = coordinator_and_other(cluster, group)
    try:
        member = {"group_id": group, "generation_id": 1, "member_id": "m-1"}
        answers = {
            "JoinGroup": other.request(schemas.JOIN_GROUP, 9, join_body(group, topic)),
            "SyncGroup": other.request(schemas.SYNC_GROUP, 5, member | {"assignments": []}),
            "Heartbeat": other.request(schemas.HEARTBEAT, 4, member),
            "LeaveGroup": other.request(
                schemas.LEAVE_GROUP, 5, {"group_id": group, "members": [{"member_id": "m-1"}]}
            ),
            "OffsetFetch": other.request(
                schemas.OFFSET_FETCH, 8, {"groups": [{"group_id": group, "topics": None}]}
            )["groups"][0],
            "DeleteGroups": other.request(schemas.DELETE_GROUPS, 2, {"groups_names": [group]})[
                "results"
            ][0],
            "DescribeGroups": other.request(schemas.DESCRIBE_GROUPS, 5, {"groups": [group]})[
                "groups"
            ][0],
        }
        commit = other.request(
            schemas.OFFSET_COMMIT,
            8,
            {
                "group_id": group,
                "generation_id_or_member_epoch": -1,
                "member_id": "",
                "topics": [
                    {"name": topic, "partitions": [{"partition_index": 0, "committed_offset": 1}]}
                ],
            },
        )
        answers["OffsetCommit"] = commit["topics"][0]["partitions"][0]
        assert {api: a["error_code"] for api, a in answers.items()} == {
            api: ErrorCode.NOT_COORDINATOR for api in answers
        }
        # The coordinator takes the same simple commit.
        commit = coordinator.request(
            schemas.OFFSET_COMMIT,
            8,
            {
                "group_id": group,
                "generation_id_or_member_epoch": -1,
                "member_id": "",
                "topics": [
                    {"name": topic, "partitions": [{"partition_index": 0, "committed_offset": 1}]}
                ],
            },
        )
        assert commit["topics"][0]["partitions"][0]["error_code"] == ErrorCode.NONE
        with Consumer(data_dir=cluster.data_dir, group_id=group) as c:
            assert c.committed(TopicPartition(topic, 0)) == 1
        # OffsetFetch: v8+ batches groups (all topics, or those asked: -1 where nothing
        # was committed); v1 asks for one group.
        fetched = coordinator.request(
            schemas.OFFSET_FETCH,
            8,
            {
                "groups": [
                    {"group_id": group, "topics": None},
                    {"group_id": group, "topics": [{"name": topic, "partition_indexes": [0, 1]}]},
                ]
            },
        )
        assert [
            [(t["name"], p["partition_index"], p["committed_offset"], p["error_code"])
             for t in g["topics"] for p in t["partitions"]]
            for g in fetched["groups"]
        ] == [[(topic, 0, 1, 0)], [(topic, 0, 1, 0), (topic, 1, -1, 0)]]  # fmt: skip
        old = coordinator.request(
            schemas.OFFSET_FETCH,
            1,
            {"group_id": group, "topics": [{"name": topic, "partition_indexes": [0]}]},
        )
        assert old["topics"][0]["partitions"][0]["committed_offset"] == 1
    finally:
        coordinator.close()
        other.close()


def test_a_member_that_stops_heartbeating_is_expired_after_its_session_timeout(
    cluster: Daemon,
) -> None:
    topic, group = new_topic(cluster, 4), new_group()
    members = start_members("confluent-kafka", cluster, group, topic, 1)
    coordinator, other = coordinator_and_other(cluster, group)
    other.close()
    try:
        wait_for(lambda: owned_once(members, 4), timeout=30, what="one member owning all")
        # A raw member joins and then never sends a heartbeat (nor its SyncGroup).
        first = coordinator.request(schemas.JOIN_GROUP, 5, join_body(group, topic))
        assert first is not None and first["error_code"] == ErrorCode.MEMBER_ID_REQUIRED
        silent = first["member_id"]
        joined = coordinator.request(schemas.JOIN_GROUP, 5, join_body(group, topic, silent))
        assert joined is not None and joined["error_code"] == ErrorCode.NONE
        since = time.monotonic()
        wait_for(
            lambda: len(members[0].assigned) == 2,
            timeout=15,
            what="the partitions shared with the silent member",
        )
        assert silent in describe(cluster, group)["members"]
        wait_for(
            lambda: members[0].assigned == {0, 1, 2, 3},
            timeout=SESSION_MS / 1000 + 15,
            what="the silent member expired and its partitions taken over",
        )
        assert time.monotonic() - since >= SESSION_MS / 1000 - 1
        assert silent not in describe(cluster, group)["members"]
        hb = coordinator.request(
            schemas.HEARTBEAT,
            4,
            {"group_id": group, "generation_id": joined["generation_id"], "member_id": silent},
        )
        assert hb is not None and hb["error_code"] == ErrorCode.UNKNOWN_MEMBER_ID
    finally:
        coordinator.close()
        stop_all(members)


def test_join_group_asks_for_a_member_id_and_heartbeats_follow_the_generation(
    cluster: Daemon,
) -> None:
    topic, group = new_topic(cluster, 1), new_group()
    coordinator, other = coordinator_and_other(cluster, group)
    other.close()
    try:
        first = coordinator.request(schemas.JOIN_GROUP, 9, join_body(group, topic))
        assert first is not None and first["error_code"] == ErrorCode.MEMBER_ID_REQUIRED
        mid = first["member_id"]
        joined = coordinator.request(schemas.JOIN_GROUP, 9, join_body(group, topic, mid))
        assert joined is not None and joined["error_code"] == ErrorCode.NONE
        assert joined["leader"] == mid and joined["protocol_name"] == "range"
        assert [m["member_id"] for m in joined["members"]] == [mid]
        generation = joined["generation_id"]
        hb = {"group_id": group, "member_id": mid}
        # Before the leader's SyncGroup the group completes its rebalance.
        assert (
            coordinator.request(schemas.HEARTBEAT, 4, hb | {"generation_id": generation + 1})[
                "error_code"
            ]
            == ErrorCode.ILLEGAL_GENERATION
        )
        synced = coordinator.request(
            schemas.SYNC_GROUP,
            5,
            hb
            | {
                "generation_id": generation,
                "protocol_type": "consumer",
                "protocol_name": "range",
                "assignments": [{"member_id": mid, "assignment": b"\x00\x00"}],
            },
        )
        assert synced["error_code"] == ErrorCode.NONE and synced["assignment"] == b"\x00\x00"
        assert (
            coordinator.request(schemas.HEARTBEAT, 4, hb | {"generation_id": generation})[
                "error_code"
            ]
            == ErrorCode.NONE
        )
        bad = coordinator.request(
            schemas.JOIN_GROUP,
            9,
            join_body(group, topic) | {"protocols": [{"name": "other", "metadata": b""}]},
        )
        assert bad["error_code"] == ErrorCode.INCONSISTENT_GROUP_PROTOCOL
        unknown = coordinator.request(
            schemas.HEARTBEAT,
            4,
            hb | {"generation_id": generation, "member_id": "nobody-0000000001"},
        )
        assert unknown["error_code"] == ErrorCode.UNKNOWN_MEMBER_ID
        described = coordinator.request(schemas.DESCRIBE_GROUPS, 5, {"groups": [group]})
        g = described["groups"][0]
        assert (g["group_state"], g["protocol_type"], g["protocol_data"]) == (
            "Stable",
            "consumer",
            "range",
        )
        assert [(m["member_id"], m["client_id"]) for m in g["members"]] == [(mid, "test")]
        listed = coordinator.request(schemas.LIST_GROUPS, 4, {"states_filter": ["Stable"]})
        assert group in [x["group_id"] for x in listed["groups"]]
        left = coordinator.request(schemas.LEAVE_GROUP, 1, {"group_id": group, "member_id": mid})
        assert left["error_code"] == ErrorCode.NONE
        assert (
            coordinator.request(schemas.HEARTBEAT, 4, hb | {"generation_id": generation})[
                "error_code"
            ]
            == ErrorCode.UNKNOWN_MEMBER_ID
        )
    finally:
        coordinator.close()


def test_after_its_coordinator_dies_a_group_rejoins_elsewhere_and_keeps_its_offsets(
    tmp_path: Path,
) -> None:
    """SIGKILL the group's coordinator broker: the member rejoins at the other broker
    (a new member id: membership is not persisted) and goes on from the offsets it
    committed, which live in the coordinator's tree."""
    with running_daemon(tmp_path / "f", brokers=2, start_args=["--kafka-auth", "none"]) as d:
        topic, group = f"g-{uuid.uuid4().hex[:8]}", new_group()
        with Admin(d.data_dir) as admin:
            admin.create_topic(topic, partitions=2, replication=2, config=SMALL_RING)
        first = [b"f%d" % i for i in range(20)]
        produce(d, topic, 2, first)
        (member,) = start_members("confluent-kafka", d, group, topic, 1)
        try:
            wait_for(lambda: member.values() >= set(first), timeout=30, what="the first records")
            wait_for(
                lambda: [p["committed"] for p in describe(d, group)["partitions"]] == [10, 10],
                timeout=10,
                what="the first records committed",
            )
            (before,) = describe(d, group)["members"]
            victim, _ = coordinator_of(d, group)
            os.kill(int(d.runtime()["processes"][f"broker-{victim}"]), signal.SIGKILL)
            second = [b"s%d" % i for i in range(20)]
            produce(d, topic, 2, second)
            wait_for(
                lambda: member.values() >= set(second),
                timeout=60,
                what="the records produced after the coordinator died",
            )
            assert member.error is None, member.error
            # It resumed at the offsets committed before: nothing was read twice.
            assert sorted(v for _, _, v in member.records if v in set(first)) == sorted(first)
            after = wait_for(
                lambda: list(describe(d, group)["members"]),
                timeout=20,
                what="the member registered again",
            )
            assert after != [before]
        finally:
            stop_all([member])


def test_a_member_that_does_not_rejoin_within_the_rebalance_timeout_is_removed(
    cluster: Daemon,
) -> None:
    topic, group = new_topic(cluster, 2), new_group()
    coordinator, second_conn = coordinator_and_other(cluster, group)
    second_conn.close()
    second_conn = Raw(coordinator_of(cluster, group)[1])
    short = {"rebalance_timeout_ms": 1000}
    try:
        first = coordinator.request(schemas.JOIN_GROUP, 5, join_body(group, topic) | short)
        old = first["member_id"]
        joined = coordinator.request(schemas.JOIN_GROUP, 5, join_body(group, topic, old) | short)
        assert joined["error_code"] == ErrorCode.NONE and joined["leader"] == old
        # A second member joins (on its own connection); the first never joins again,
        # though its heartbeats are told of the rebalance.
        new = second_conn.request(schemas.JOIN_GROUP, 5, join_body(group, topic) | short)
        answer: dict[str, Any] = {}

        def second_joins() -> None:
            since = time.monotonic()
            body = join_body(group, topic, new["member_id"]) | short
            answer["join"] = second_conn.request(schemas.JOIN_GROUP, 5, body)
            answer["waited"] = time.monotonic() - since

        thread = threading.Thread(target=second_joins)
        thread.start()
        hb = {"group_id": group, "generation_id": joined["generation_id"], "member_id": old}
        wait_for(
            lambda: (
                coordinator.request(schemas.HEARTBEAT, 4, hb)["error_code"]
                == ErrorCode.REBALANCE_IN_PROGRESS
            ),
            timeout=0.8,
            what="the first member's heartbeat told of the rebalance",
        )
        thread.join(10)
        second = answer["join"]
        assert second["error_code"] == ErrorCode.NONE
        assert second["generation_id"] == joined["generation_id"] + 1
        assert second["leader"] == new["member_id"]
        assert [m["member_id"] for m in second["members"]] == [new["member_id"]]
        assert 0.9 <= answer["waited"] < 5
        assert coordinator.request(schemas.HEARTBEAT, 4, hb)["error_code"] == (
            ErrorCode.UNKNOWN_MEMBER_ID
        )
    finally:
        coordinator.close()
        second_conn.close()


def test_a_group_without_members_leaves_the_coordinators_memory_and_comes_back_from_the_tree(
    cluster: Daemon, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A GroupCoordinator in this process, on the daemon's tree (Empty groups idle for
    IDLE_EMPTY_GROUP_S are dropped; their generation is read back from the tree)."""
    monkeypatch.setattr(group_coordinator, "IDLE_EMPTY_GROUP_S", 0.3)
    topic, group = new_topic(cluster, 1), new_group()
    stopping = threading.Event()
    with Admin(cluster.data_dir) as admin:
        groups = group_coordinator.GroupCoordinator(
            admin._cluster.zk, 1, lambda _: True, stopping.is_set
        )
        try:
            first = groups.join_group(5, join_body(group, topic), "c", "127.0.0.1:1")
            mid = first["member_id"]
            joined = groups.join_group(5, join_body(group, topic, mid), "c", "127.0.0.1:1")
            # (The codec writes an absent error_code as its default, NONE.)
            assert joined.get("error_code", ErrorCode.NONE) == ErrorCode.NONE
            left = groups.leave_group(1, {"group_id": group, "member_id": mid})
            assert left["error_code"] == ErrorCode.NONE
            wait_for(lambda: group not in groups._groups, timeout=10, what="the group dropped")
            again = groups.join_group(5, join_body(group, topic), "c", "127.0.0.1:1")
            rejoined = groups.join_group(
                5, join_body(group, topic, again["member_id"]), "c", "127.0.0.1:1"
            )
            # Generations go on: 1 formed it, 2 emptied it, 3 is the new one.
            assert (joined["generation_id"], rejoined["generation_id"]) == (1, 3)
            # The session that held the members' znodes expired (kazoo says LOST): the
            # coordinator forgets the group; its member must join again.
            groups._on_session(KazooState.LOST)
            wait_for(lambda: group not in groups._groups, timeout=10, what="the group dropped")
            hb = {"group_id": group, "generation_id": 3, "member_id": again["member_id"]}
            assert groups.heartbeat(4, hb)["error_code"] == ErrorCode.UNKNOWN_MEMBER_ID
            assert read_members(admin._cluster.zk, group) == {}
        finally:
            stopping.set()


def test_a_member_whose_registration_vanished_cannot_commit_and_must_join_again(
    cluster: Daemon,
) -> None:
    topic, group = new_topic(cluster, 1), new_group()
    coordinator, other = coordinator_and_other(cluster, group)
    other.close()
    try:
        first = coordinator.request(schemas.JOIN_GROUP, 5, join_body(group, topic))
        mid = first["member_id"]
        joined = coordinator.request(schemas.JOIN_GROUP, 5, join_body(group, topic, mid))
        generation = joined["generation_id"]
        member = {"group_id": group, "generation_id": generation, "member_id": mid}
        synced = coordinator.request(schemas.SYNC_GROUP, 3, member | {"assignments": []})
        assert synced["error_code"] == ErrorCode.NONE
        commit = {
            "group_id": group,
            "generation_id_or_member_epoch": generation,
            "member_id": mid,
            "topics": [
                {"name": topic, "partitions": [{"partition_index": 0, "committed_offset": 3}]}
            ],
        }
        done = coordinator.request(schemas.OFFSET_COMMIT, 7, commit)
        assert done["topics"][0]["partitions"][0]["error_code"] == ErrorCode.NONE
        # Its znode goes (as when the broker's coordinator session expires).
        with Admin(cluster.data_dir) as admin:
            admin._cluster.zk.delete(f"/consumers/{group}/ids/{mid}")
        commit["topics"][0]["partitions"][0]["committed_offset"] = 4
        refused = coordinator.request(schemas.OFFSET_COMMIT, 7, commit)
        assert refused["topics"][0]["partitions"][0]["error_code"] == ErrorCode.UNKNOWN_MEMBER_ID
        hb = coordinator.request(schemas.HEARTBEAT, 3, member)
        assert hb["error_code"] == ErrorCode.UNKNOWN_MEMBER_ID
        with Consumer(data_dir=cluster.data_dir, group_id=group) as c:
            assert c.committed(TopicPartition(topic, 0)) == 3
    finally:
        coordinator.close()
