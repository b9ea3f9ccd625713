"""The daemon's Prometheus metrics, gathered from the engine's processes at scrape time.

The brokers and the coordinator are separate processes, and the hot path keeps no
counter of its own beyond the ring header's. So nothing is pushed: a scrape of
``http://127.0.0.1:<port>/metrics`` (prometheus_client's HTTP server, in a thread of
the daemon) reads, through :class:`EngineCollector`:

- the coordinator's tree (one client kept across scrapes): topics, each partition's
  leader, replicas and ISR, the brokers registered, and each consumer group's
  committed offsets and members;
- each partition leader's ring header (engine.ring, mapped lazily: the header only):
  log end offset, high watermark, fill, and the records and bytes in (the ring's tail)
  and out (the counters consumers' reads add, see native/ring.h);
- the leader's segment listing: the log start offset;
- each broker's stats file (engine.broker_stats): drain and replication passes, their
  time and CPU time;
- the coordinator's ``mntr`` four-letter word: sessions, watches, znodes, connections,
  and (the built-in coordinator's) requests by type and the time spent handling them;
- ``/proc/<pid>/stat`` of the daemon and each of its children: CPU time and memory.

A scrape costs a few pipelined coordinator reads per topic and group and one ring
header and one directory listing per partition: 46 ms at the median for 100 partitions
and a group with 100 committed offsets on the 2-core VM (the
``engine_scrape_duration_seconds`` gauge says). Scrapes are serialised by a lock.

Counters are per incarnation: the in and out counters are the leader ring's, labelled
with the leader's broker id (a new leader's ring starts a new series); a broker's
counts start at 0 when it starts. Prometheus' rate() handles both.

The endpoint binds 127.0.0.1 only, without authentication: any local user can read it.
It shows names and counts (topics, groups, offsets, lag, pids, CPU and memory), never
records, keys or values, nor the data dir's secret.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from kazoo.client import KazooClient
from kazoo.exceptions import KazooException, NoNodeError
from prometheus_client import start_http_server
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
)
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector, CollectorRegistry

from engine import metadata as md
from engine.broker_stats import read_stats, stats_path
from engine.datadir import DataDir
from engine.errors import EngineError
from engine.log import LogReader
from engine.offset_store import CONSUMERS
from engine.ring import Ring, RingStatus

log = logging.getLogger("engine.metrics")

#: A scrape gives the coordinator this long for its tree's reads, and MNTR_TIMEOUT_S for
#: the mntr that follows: a scrape while it does not answer takes about 2 s.
COORDINATOR_TIMEOUT_S = 2.0
MNTR_TIMEOUT_S = 1.0
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")


@dataclass
class _Partition:
    topic: str
    partition: int
    topic_id: str
    replicas: tuple[int, ...]
    leader: int = -1
    isr: tuple[int, ...] = ()
    ring: RingStatus | None = None
    log_start_offset: int = -1


@dataclass
class _Tree:
    """What one scrape read from the coordinator's tree."""

    partitions: list[_Partition] = field(default_factory=list)
    brokers: set[int] = field(default_factory=set)
    #: group -> (topic, partition) -> committed offset
    offsets: dict[str, dict[tuple[str, int], int]] = field(default_factory=dict)
    members: dict[str, int] = field(default_factory=dict)


class EngineCollector(Collector):
    """A custom collector: every scrape reads the engine's state anew (see the module).

    ``processes`` names the daemon's processes and their pids ("daemon", "coordinator",
    "broker-1", ...); ``brokers`` the broker ids the daemon runs. Called by the HTTP
    server's threads, one scrape at a time."""

    def __init__(
        self,
        data_dir: DataDir,
        processes: Callable[[], dict[str, int]],
        brokers: Callable[[], list[int]],
    ) -> None:
        self.data_dir = data_dir
        self._processes = processes
        self._brokers = brokers
        self._zk: KazooClient | None = None
        self._lock = threading.Lock()

    def describe(self) -> Iterable[Metric]:
        return []  # no fixed set of names to check at registration

    def close(self) -> None:
        with self._lock:
            self.close_client()

    def collect(self) -> Iterator[Metric]:
        with self._lock:
            started = time.monotonic()
            families = list(self._collect())
        duration = GaugeMetricFamily(
            "engine_scrape_duration_seconds", "How long gathering these metrics took."
        )
        duration.add_metric([], time.monotonic() - started)
        yield from families
        yield duration

    # -- gathering -----------------------------------------------------------------------

    def _collect(self) -> Iterator[Metric]:
        tree: _Tree | None = None
        try:
            with md.deadline(COORDINATOR_TIMEOUT_S, "gathering metrics"):
                tree = self._read_tree()
        except (EngineError, KazooException) as exc:
            log.warning("metrics without the coordinator's tree: %s", exc)
            self.close_client()
        up = GaugeMetricFamily(
            "engine_coordinator_up", "1 when the coordinator answered this scrape's reads."
        )
        up.add_metric([], 1 if tree is not None else 0)
        yield up
        if tree is not None:
            yield from self._partition_metrics(tree)
            yield from self._group_metrics(tree)
        yield from self._broker_metrics(tree)
        if tree is not None:  # else its mntr would only make the scrape wait longer
            yield from self._coordinator_metrics()
        yield from self._process_metrics()

    def close_client(self) -> None:
        """Drop the coordinator client (the next scrape connects anew)."""
        if self._zk is not None:
            with contextlib.suppress(Exception):
                self._zk.stop()
                self._zk.close()
            self._zk = None

    def _client(self) -> KazooClient:
        if self._zk is None:
            self._zk = md.connect(self.data_dir, timeout_s=COORDINATOR_TIMEOUT_S)
        return self._zk

    def _read_tree(self) -> _Tree:
        zk = self._client()
        tree = _Tree()
        topics = md.list_topics(zk)
        topic_reads = {t: zk.get_async(md.topic_path(t)) for t in topics}
        assignments: dict[str, md.TopicAssignment] = {}
        for topic, result in topic_reads.items():
            with contextlib.suppress(NoNodeError):
                data, _ = result.get()
                assignments[topic] = md.TopicAssignment.from_json(topic, md.decode(data))
        state_reads = {
            (t, p): zk.get_async(md.state_path(t, p))
            for t, a in assignments.items()
            for p in sorted(a.replicas)
        }
        group_names = _children(zk, CONSUMERS)
        group_reads = {
            g: (
                zk.get_children_async(f"{CONSUMERS}/{g}/offsets"),
                zk.get_children_async(f"{CONSUMERS}/{g}/ids"),
            )
            for g in group_names
        }
        tree.brokers = {int(b) for b in md.broker_children(zk) if b.isdigit()}
        for (topic, p), result in state_reads.items():
            a = assignments[topic]
            part = _Partition(topic, p, a.topic_id, tuple(a.replicas[p]))
            with contextlib.suppress(NoNodeError):
                data, _ = result.get()
                state = md.PartitionState.from_json(md.decode(data))
                part.leader, part.isr = state.leader, tuple(state.isr)
            tree.partitions.append(part)
        offset_topics: dict[tuple[str, str], Any] = {}
        for group, (offsets, ids) in group_reads.items():
            with contextlib.suppress(NoNodeError):
                tree.members[group] = len(ids.get())
            with contextlib.suppress(NoNodeError):
                for topic in offsets.get():
                    path = f"{CONSUMERS}/{group}/offsets/{topic}"
                    offset_topics[(group, topic)] = zk.get_children_async(path)
        offset_reads: dict[tuple[str, str, int], Any] = {}
        for (group, topic), result in offset_topics.items():
            with contextlib.suppress(NoNodeError):
                for p in result.get():
                    if p.isdigit():
                        path = f"{CONSUMERS}/{group}/offsets/{topic}/{p}"
                        offset_reads[(group, topic, int(p))] = zk.get_async(path)
        for (group, topic, p), result in offset_reads.items():
            with contextlib.suppress(NoNodeError, ValueError):
                data, _ = result.get()
                if data:
                    tree.offsets.setdefault(group, {})[(topic, p)] = int(data)
        for part in tree.partitions:
            self._read_leader(part)
        return tree

    def _read_leader(self, part: _Partition) -> None:
        """The leader's ring header and log start offset (left unknown when missing)."""
        if part.leader < 0:
            return
        name = self.data_dir.ring_name(part.topic_id, part.partition, part.leader)
        try:
            with Ring.open(name, populate=False) as ring:
                part.ring = ring.status()
        except (FileNotFoundError, EngineError):
            pass
        directory = self.data_dir.partition_dir(part.leader, part.topic, part.partition)
        try:
            with LogReader(directory) as reader:
                part.log_start_offset = reader.log_start_offset
        except (OSError, EngineError):
            pass

    # -- families ------------------------------------------------------------------------

    def _partition_metrics(self, tree: _Tree) -> Iterator[Metric]:
        labels = ["topic", "partition"]

        def gauge(name: str, doc: str, extra: list[str] | None = None) -> GaugeMetricFamily:
            return GaugeMetricFamily(name, doc, labels=labels + (extra or []))

        def counter(name: str, doc: str) -> CounterMetricFamily:
            return CounterMetricFamily(name, doc, labels=[*labels, "broker"])

        start = gauge("engine_partition_log_start_offset", "The leader's log start offset.")
        end = gauge("engine_partition_log_end_offset", "The leader's log end offset.")
        hw = gauge(
            "engine_partition_high_watermark",
            "The last committed offset + 1 (the log end offset without replication).",
        )
        leader = gauge("engine_partition_leader", "The leader's broker id (-1: offline).")
        replicas = gauge("engine_partition_replicas", "Replicas assigned (replication factor).")
        isr = gauge("engine_partition_isr_size", "In-sync replicas, the leader included.")
        under = gauge(
            "engine_partition_under_replicated", "1 when the ISR is smaller than the replicas."
        )
        offline = gauge("engine_partition_offline", "1 when the partition has no leader.")
        fill = gauge(
            "engine_partition_ring_fill_ratio",
            "Share of the leader's ring holding what is not drained into the log yet.",
        )
        capacity = gauge("engine_partition_ring_capacity_bytes", "The leader's ring size.")
        records_in = counter(
            "engine_partition_records_in", "Offsets appended to the leader's ring."
        )
        bytes_in = counter(
            "engine_partition_bytes_in", "Bytes of frames appended to the leader's ring."
        )
        records_out = counter(
            "engine_partition_records_out",
            "Offsets consumers read from the leader's ring (not followers' copies).",
        )
        bytes_out = counter(
            "engine_partition_bytes_out", "Bytes of frames consumers read from the leader's ring."
        )
        for part in tree.partitions:
            values = [part.topic, str(part.partition)]
            leader.add_metric(values, part.leader)
            replicas.add_metric(values, len(part.replicas))
            isr.add_metric(values, len(part.isr))
            under.add_metric(values, 1 if len(part.isr) < len(part.replicas) else 0)
            offline.add_metric(values, 1 if part.leader < 0 else 0)
            if part.log_start_offset >= 0:
                start.add_metric(values, part.log_start_offset)
            s = part.ring
            if s is None:
                continue
            end.add_metric(values, s.tail_offset)
            hw.add_metric(values, s.readable_end)
            fill.add_metric(values, (s.tail_position - s.drain_position) / s.capacity)
            capacity.add_metric(values, s.capacity)
            by_leader = [*values, str(part.leader)]
            records_in.add_metric(by_leader, s.tail_offset - s.base_offset)
            bytes_in.add_metric(by_leader, s.tail_position)
            records_out.add_metric(by_leader, s.read_offsets)
            bytes_out.add_metric(by_leader, s.read_bytes)
        yield from (start, end, hw, leader, replicas, isr, under, offline, fill, capacity)
        yield from (records_in, bytes_in, records_out, bytes_out)

    def _group_metrics(self, tree: _Tree) -> Iterator[Metric]:
        labels = ["group", "topic", "partition"]
        committed = GaugeMetricFamily(
            "engine_group_committed_offset", "The group's committed offset.", labels=labels
        )
        lag = GaugeMetricFamily(
            "engine_group_lag",
            "Records between the committed offset and the high watermark.",
            labels=labels,
        )
        members = GaugeMetricFamily(
            "engine_group_members", "The group's live members.", labels=["group"]
        )
        ends = {(p.topic, p.partition): p.ring.readable_end for p in tree.partitions if p.ring}
        for group in sorted(set(tree.offsets) | set(tree.members)):
            members.add_metric([group], tree.members.get(group, 0))
            for (topic, p), offset in sorted(tree.offsets.get(group, {}).items()):
                values = [group, topic, str(p)]
                committed.add_metric(values, offset)
                if (topic, p) in ends:
                    lag.add_metric(values, max(0, ends[(topic, p)] - offset))
        yield from (committed, lag, members)

    def _broker_metrics(self, tree: _Tree | None) -> Iterator[Metric]:
        b = ["broker"]
        up = GaugeMetricFamily(
            "engine_broker_up", "1 when the broker is registered with the coordinator.", labels=b
        )
        counters = {
            "drain_passes": CounterMetricFamily(
                "engine_broker_drain_passes",
                "Drain passes that moved batches to the log.",
                labels=b,
            ),
            "drain_seconds": CounterMetricFamily(
                "engine_broker_drain_seconds", "Wall time of those drain passes.", labels=b
            ),
            "drain_cpu_seconds": CounterMetricFamily(
                "engine_broker_drain_cpu_seconds", "CPU time of the drain threads.", labels=b
            ),
            "replication_passes": CounterMetricFamily(
                "engine_broker_replication_passes",
                "Returns of the replication loops (leaders' high-watermark tracking, "
                "followers' fetches).",
                labels=b,
            ),
            "replication_cpu_seconds": CounterMetricFamily(
                "engine_broker_replication_cpu_seconds",
                "CPU time of the replication threads.",
                labels=b,
            ),
        }
        replicas = GaugeMetricFamily("engine_broker_replicas", "Replicas hosted.", labels=b)
        led = GaugeMetricFamily("engine_broker_leader_partitions", "Partitions led.", labels=b)
        for broker in sorted(set(self._brokers()) | (tree.brokers if tree else set())):
            values = [str(broker)]
            if tree is not None:
                up.add_metric(values, 1 if broker in tree.brokers else 0)
                led.add_metric(values, sum(1 for p in tree.partitions if p.leader == broker))
            stats = read_stats(stats_path(self.data_dir.run_dir, broker))
            if stats is None:
                continue
            replicas.add_metric(values, stats.get("replicas", 0))
            for key, family in counters.items():
                family.add_metric(values, float(stats.get(key, 0)))
        if tree is not None:
            yield up
            yield led
        yield replicas
        yield from counters.values()

    def _coordinator_metrics(self) -> Iterator[Metric]:
        stats = self._mntr()
        if not stats:
            return
        for key, name, doc in (
            ("zk_global_sessions", "engine_coordinator_sessions", "Sessions open."),
            ("zk_watch_count", "engine_coordinator_watches", "Watches set."),
            ("zk_znode_count", "engine_coordinator_znodes", "Znodes in the tree."),
            ("zk_num_alive_connections", "engine_coordinator_connections", "Client connections."),
            ("zk_ephemerals_count", "engine_coordinator_ephemerals", "Ephemeral znodes."),
        ):
            if key in stats:
                g = GaugeMetricFamily(name, doc)
                g.add_metric([], _number(stats[key]))
                yield g
        requests = HistogramMetricFamily(
            "engine_coordinator_request_seconds",
            "Requests handled by the coordinator, by type, and the time spent handling them "
            "(the wait for the transaction log's fsync not included).",
            labels=["op"],
        )
        buckets: dict[str, list[tuple[float, float]]] = {}
        prefix = "engine_request_bucket_"
        for key, value in stats.items():
            if key.startswith(prefix):
                op, _, bound = key[len(prefix) :].rpartition("_")
                buckets.setdefault(op, []).append((float(bound), _number(value)))
        prefix = "engine_request_count_"
        for key, value in sorted(stats.items()):
            if key.startswith(prefix):
                op = key[len(prefix) :]
                count = _number(value)
                below = [(str(b), n) for b, n in sorted(buckets.get(op, []))]
                seconds = _number(stats.get(f"engine_request_seconds_{op}", "0"))
                requests.add_metric([op], [*below, ("+Inf", count)], seconds)
        yield requests

    def _mntr(self) -> dict[str, str]:
        """The coordinator's `mntr` answer, key -> value ({} when none answered)."""
        try:
            hosts = str(self.data_dir.read_runtime()["coordinator"])
        except (EngineError, KeyError):
            return {}
        for host_port in hosts.split(","):
            host, _, port = host_port.strip().rpartition(":")
            try:
                with socket.create_connection((host, int(port)), MNTR_TIMEOUT_S) as sock:
                    sock.settimeout(MNTR_TIMEOUT_S)
                    sock.sendall(b"mntr")
                    chunks = []
                    while chunk := sock.recv(65536):
                        chunks.append(chunk)
            except (OSError, ValueError):
                continue
            out = {}
            for line in b"".join(chunks).decode("utf-8", "replace").splitlines():
                key, _, value = line.partition("\t")
                if value:
                    out[key.strip()] = value.strip()
            if out:
                return out
        return {}

    def _process_metrics(self) -> Iterator[Metric]:
        labels = ["process"]
        cpu = CounterMetricFamily(
            "engine_process_cpu_seconds", "User and system CPU time.", labels=labels
        )
        rss = GaugeMetricFamily(
            "engine_process_resident_memory_bytes", "Resident memory.", labels=labels
        )
        vsize = GaugeMetricFamily(
            "engine_process_virtual_memory_bytes", "Virtual memory.", labels=labels
        )
        threads = GaugeMetricFamily("engine_process_threads", "Threads.", labels=labels)
        for name, pid in sorted(self._processes().items()):
            try:
                with open(f"/proc/{pid}/stat", "rb") as f:
                    fields = f.read().rsplit(b")", 1)[1].split()
            except OSError:
                continue
            # proc(5) numbers the fields from 1; here field N is fields[N - 3].
            values = [name]
            cpu.add_metric(values, (int(fields[11]) + int(fields[12])) / CLOCK_TICKS)
            threads.add_metric(values, int(fields[17]))
            vsize.add_metric(values, int(fields[20]))
            rss.add_metric(values, int(fields[21]) * PAGE_SIZE)
        yield from (cpu, rss, vsize, threads)


def _children(zk: KazooClient, path: str) -> list[str]:
    try:
        return list(zk.get_children(path))
    except NoNodeError:
        return []


def _number(text: str) -> float:
    try:
        return float(int(text, 0)) if text.startswith("0x") else float(text)
    except ValueError:
        return 0.0


class MetricsServer:
    """prometheus_client's HTTP server on 127.0.0.1, serving an EngineCollector.

    ``port`` 0 takes a free one; ``url`` says where it listens."""

    def __init__(self, collector: EngineCollector, port: int = 0) -> None:
        self.collector = collector
        registry = CollectorRegistry(auto_describe=False)
        registry.register(collector)
        self._httpd, self._thread = start_http_server(port, addr="127.0.0.1", registry=registry)

    @property
    def port(self) -> int:
        return int(self._httpd.server_port)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/metrics"

    def close(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)
        self.collector.close()
