"""The daemon's Prometheus metrics, scraped over HTTP and read with Prometheus' own parser."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import threading
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from engine_harness import Daemon, listening_sockets, running_daemon, wait_for
from prometheus_client.parser import text_string_to_metric_families

from engine import Admin, Consumer, Producer, TopicPartition

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def metrics_url(daemon: Daemon) -> str:
    report = json.loads(daemon.cli("status", "--json").stdout)
    url = report["metrics"]
    assert isinstance(url, str) and url.startswith("http://127.0.0.1:")
    return url


def scrape(url: str) -> Samples:
    with urllib.request.urlopen(url, timeout=10) as response:
        assert response.headers["Content-Type"].startswith("text/plain")
        text = response.read().decode()
    out: Samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def value(samples: Samples, name: str, **labels: object) -> float | None:
    """The sample ``name`` whose labels include ``labels`` (None when none; the sum when
    several, e.g. over the leader label of the in and out counters)."""
    want = {k: str(v) for k, v in labels.items()}
    found = [v for (n, ls), v in samples.items() if n == name and want.items() <= dict(ls).items()]
    return sum(found) if found else None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_partition_and_group_metrics_match_what_was_produced_consumed_and_committed(
    shared_daemon: Daemon, topic: str
) -> None:
    url = metrics_url(shared_daemon)
    values = [b"v" * (10 + i) for i in range(50)]
    tp = TopicPartition(topic, 1)
    group = f"g-{uuid.uuid4().hex[:8]}"
    with Consumer(
        data_dir=shared_daemon.data_dir, group_id=group, enable_auto_commit=False
    ) as consumer:
        # Tailing: placed before the records come, it reads them from the ring (a read
        # of the segment files counts too: the test after this one).
        consumer.assign([tp])
        consumer.seek(tp, 0)
        assert consumer.poll(timeout=0.1) == []
        with Producer(shared_daemon.data_dir, acks=1) as p:
            for v in values:
                p.send(topic, v, partition=1)
            p.flush(timeout=10)
        got: list[bytes] = []
        wait_for(
            lambda: got.extend(r.value for r in consumer.poll(timeout=0.1)) or len(got) >= 50,
            what="the 50 records read back",
        )
        assert got == values
        consumer.commit({tp: 30})

    s = wait_for(
        lambda: (
            (x := scrape(url))
            and value(x, "engine_group_lag", group=group, topic=topic, partition=1) is not None
            and x
        ),
        what="the group's committed offset in the metrics",
    )
    part = {"topic": topic, "partition": 1}
    assert value(s, "engine_partition_log_start_offset", **part) == 0
    assert value(s, "engine_partition_log_end_offset", **part) == 50
    assert value(s, "engine_partition_high_watermark", **part) == 50
    assert value(s, "engine_partition_records_in_total", **part) == 50
    assert value(s, "engine_partition_bytes_in_total", **part) >= sum(map(len, values))
    assert value(s, "engine_partition_records_out_total", **part) == 50  # the consumer's read
    assert value(s, "engine_partition_bytes_out_total", **part) == value(
        s, "engine_partition_bytes_in_total", **part
    )
    assert value(s, "engine_partition_isr_size", **part) == 1
    assert value(s, "engine_partition_replicas", **part) == 1
    assert value(s, "engine_partition_under_replicated", **part) == 0
    assert 0 <= value(s, "engine_partition_ring_fill_ratio", **part) <= 1
    # The other partitions saw nothing.
    assert value(s, "engine_partition_log_end_offset", topic=topic, partition=0) == 0
    assert value(s, "engine_partition_records_in_total", topic=topic, partition=2) == 0
    # Lag: the high watermark minus the committed offset.
    assert value(s, "engine_group_committed_offset", group=group, topic=topic, partition=1) == 30
    assert value(s, "engine_group_lag", group=group, topic=topic, partition=1) == 20
    with Producer(shared_daemon.data_dir, acks=1) as p:
        for _ in range(5):
            p.send(topic, b"more", partition=1)
        p.flush(timeout=10)
    wait_for(
        lambda: value(scrape(url), "engine_group_lag", group=group, topic=topic, partition=1) == 25,
        what="the lag to grow by the 5 records produced since",
    )


def test_broker_coordinator_and_process_metrics_count_the_work_done(
    shared_daemon: Daemon, topic: str
) -> None:
    url = metrics_url(shared_daemon)
    before = scrape(url)
    with Producer(shared_daemon.data_dir, acks=1) as p:
        for i in range(200):
            p.send(topic, b"%d" % i, partition=i % 3)  # every partition: every leader
        p.flush(timeout=10)
    with Admin(shared_daemon.data_dir) as admin:
        leaders = {p.leader for p in admin.describe_topic(topic).partitions}

    def drained() -> Samples | None:
        s = scrape(url)
        moved = all(
            (value(s, "engine_broker_drain_passes_total", broker=b) or 0)
            > (value(before, "engine_broker_drain_passes_total", broker=b) or 0)
            for b in leaders
        )
        return s if moved else None

    s = wait_for(drained, what="the leaders' drain passes in their stats files")
    for b in (1, 2):
        assert value(s, "engine_broker_up", broker=b) == 1
        assert value(s, "engine_broker_drain_seconds_total", broker=b) >= 0
        assert value(s, "engine_broker_drain_cpu_seconds_total", broker=b) is not None
    assert value(s, "engine_coordinator_up") == 1
    assert value(s, "engine_coordinator_sessions") >= 3  # two brokers and the collector
    assert value(s, "engine_coordinator_znodes") > 10
    assert value(s, "engine_coordinator_watches") >= 1
    assert value(s, "engine_coordinator_request_seconds_count", op="get_data") > 0
    assert value(s, "engine_coordinator_request_seconds_sum", op="get_data") > 0
    count = value(s, "engine_coordinator_request_seconds_count", op="get_data")
    assert value(s, "engine_coordinator_request_seconds_bucket", op="get_data", le="+Inf") == count
    within = [
        value(s, "engine_coordinator_request_seconds_bucket", op="get_data", le=le)
        for le in ("0.0001", "0.001", "0.01", "1.0")
    ]
    assert within == sorted(within) and 0 < within[-1] <= count  # cumulative
    processes = shared_daemon.runtime()["processes"]
    for name in ("daemon", "coordinator", "broker-1", "broker-2"):
        assert name == "daemon" or name in processes
        assert value(s, "engine_process_cpu_seconds_total", process=name) >= 0
        assert value(s, "engine_process_resident_memory_bytes", process=name) > 1 << 20
    assert value(s, "engine_scrape_duration_seconds") < 5


def test_the_endpoint_listens_on_loopback_only(shared_daemon: Daemon) -> None:
    url = metrics_url(shared_daemon)
    port = int(url.rsplit(":", 1)[1].split("/")[0])
    sockets = listening_sockets(shared_daemon.runtime()["pid"])
    assert ("127.0.0.1", port) in sockets
    assert all(host == "127.0.0.1" for host, _ in sockets)


@pytest.fixture
def stopped_follower_daemon(tmp_path: Path) -> Iterator[tuple[Daemon, int]]:
    """A 2-broker daemon whose metrics port was set with --metrics-port."""
    port = free_port()
    with running_daemon(
        tmp_path / "engine", brokers=2, start_args=["--metrics-port", str(port)]
    ) as d:
        yield d, port


def test_a_frozen_follower_shows_as_under_replicated_until_it_resumes(
    stopped_follower_daemon: tuple[Daemon, int],
) -> None:
    daemon, port = stopped_follower_daemon
    url = metrics_url(daemon)
    assert url == f"http://127.0.0.1:{port}/metrics"  # --metrics-port
    with Admin(daemon.data_dir) as admin:
        admin.create_topic(
            "replicated", partitions=1, replication=2, config={"replica.lag.time.max.ms": 500}
        )
        state = admin.describe_topic("replicated").partitions[0]
    follower = next(b for b in state.replicas if b != state.leader)
    part = {"topic": "replicated", "partition": 0}
    s = scrape(url)
    assert value(s, "engine_partition_isr_size", **part) == 2
    assert value(s, "engine_partition_under_replicated", **part) == 0
    assert value(s, "engine_partition_leader", **part) == state.leader
    stop = threading.Event()

    def produce() -> None:  # the follower lags only while records keep coming
        with Producer(daemon.data_dir, acks=1) as p:
            while not stop.is_set():
                p.send("replicated", b"x" * 100)
                stop.wait(0.001)

    sender = threading.Thread(target=produce)
    sender.start()
    pid = daemon.runtime()["processes"][f"broker-{follower}"]
    os.kill(pid, signal.SIGSTOP)
    try:
        wait_for(
            lambda: value(scrape(url), "engine_partition_under_replicated", **part) == 1,
            timeout=10,
            what="the partition under-replicated in the metrics",
        )
        assert value(scrape(url), "engine_partition_isr_size", **part) == 1
    finally:
        os.kill(pid, signal.SIGCONT)
    try:
        wait_for(
            lambda: value(scrape(url), "engine_partition_under_replicated", **part) == 0,
            timeout=30,
            what="the follower back in the ISR in the metrics",
        )
    finally:
        stop.set()
        sender.join()
    s = scrape(url)
    assert value(s, "engine_partition_isr_size", **part) == 2
    # A follower's copies are not counted as read out of the leader's ring.
    assert value(s, "engine_partition_records_out_total", **part) == 0
    wait_for(  # its stats file is rewritten every second
        lambda: value(scrape(url), "engine_broker_replication_passes_total", broker=follower),
        what="the follower's replication passes in the metrics",
    )


DASHBOARD = Path(__file__).resolve().parent.parent / "contrib" / "grafana" / "engine.json"


def test_the_grafana_dashboard_reads_only_metrics_the_endpoint_serves(
    shared_daemon: Daemon,
) -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    panels = [p for p in dashboard["panels"] if p["type"] != "row"]
    titles = " | ".join(p["title"].lower() for p in panels)
    for subject in ("records in", "bytes in", "lag", "isr", "ring fill", "latency"):
        assert subject in titles
    used = {
        name
        for p in panels
        for target in p["targets"]
        for name in re.findall(r"\bengine_[a-z_]+", target["expr"])
    }
    with urllib.request.urlopen(metrics_url(shared_daemon), timeout=10) as response:
        text = response.read().decode()
    served = set()
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split()
            parts = {"summary": ("_count", "_sum"), "histogram": ("_bucket", "_count", "_sum")}
            served |= {name} | {name + suffix for suffix in parts.get(kind, ())}
    assert used and used <= served, sorted(used - served)


def test_a_scrape_answers_while_the_coordinator_is_frozen_and_recovers_after(
    daemon: Daemon,
) -> None:
    url = metrics_url(daemon)
    with Admin(daemon.data_dir) as admin:
        admin.create_topic("frozen", partitions=1)
    assert value(scrape(url), "engine_partition_log_end_offset", topic="frozen", partition=0) == 0
    pid = daemon.runtime()["processes"]["coordinator"]
    os.kill(pid, signal.SIGSTOP)
    try:
        s = scrape(url)  # answers (within urlopen's 10 s), without the tree's metrics
        assert value(s, "engine_coordinator_up") == 0
        assert value(s, "engine_partition_log_end_offset", topic="frozen", partition=0) is None
        assert value(s, "engine_process_resident_memory_bytes", process="broker-1") > 0
        assert value(s, "engine_broker_replicas", broker=1) is not None  # its stats file
    finally:
        os.kill(pid, signal.SIGCONT)
    wait_for(
        lambda: (
            value(scrape(url), "engine_coordinator_up") == 1
            and value(scrape(url), "engine_partition_log_end_offset", topic="frozen", partition=0)
            == 0
        ),
        timeout=30,
        what="the tree's metrics back after the coordinator resumed",
    )


def test_records_read_from_the_segment_files_count_as_out(shared_daemon: Daemon) -> None:
    """A consumer that catches up from the segment files (its records gone from the
    ring's window) counts there too: records out are every record a consumer read."""
    topic = f"out-{uuid.uuid4().hex[:8]}"
    with Admin(shared_daemon.data_dir) as admin:
        admin.create_topic(topic, partitions=1,
                           config={"ring.bytes": 1 << 16, "max.message.bytes": 1 << 14})
    with Producer(shared_daemon.data_dir, acks=1) as p:
        for i in range(200):  # 200 KiB through a 64 KiB ring
            p.send(topic, b"%04d" % i + b"x" * 1020, partition=0)
        p.flush(timeout=10)
    url = metrics_url(shared_daemon)
    part = {"topic": topic, "partition": 0}
    wait_for(lambda: value(scrape(url), "engine_partition_log_end_offset", **part) == 200,
             what="the 200 records drained")  # fmt: skip
    tp = TopicPartition(topic, 0)
    with Consumer(data_dir=shared_daemon.data_dir) as consumer:
        consumer.assign([tp])
        consumer.seek(tp, 0)
        got: list[int] = []
        wait_for(lambda: got.extend(r.offset for r in consumer.poll(timeout=0.1))
                 or len(got) >= 200, what="the 200 records read back")  # fmt: skip
    assert got == list(range(200))
    s = scrape(url)
    assert value(s, "engine_partition_records_out_total", **part) == 200
    assert value(s, "engine_partition_bytes_out_total", **part) >= 200 * 1024
