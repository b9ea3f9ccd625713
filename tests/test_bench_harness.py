"""The benchmark's harness (bench/transports/harness.py): a Session keeps the producer and
consumer processes of one workload for all its runs, counts each run's records apart,
reports a failing child at once, and leaves no process behind."""

from __future__ import annotations

import io
import multiprocessing
import struct
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pytest

from bench import hdr, report, suite
from bench.transports.base import Producer, RunSpec, Transport, Unsupported
from bench.transports.engine_acks import EngineAcks1, EngineAcksAll
from bench.transports.harness import RunError, Session
from bench.transports.mpqueue import MultiprocessingQueue, QueueProducer
from bench.transports.spinfloor import SLOTS, SpinFloor
from bench.workload import TIMESTAMP
from engine.datadir import DataDir
from engine.errors import DaemonNotRunningError

CTX = multiprocessing.get_context("fork")
TIMEOUT_S = 60.0


def spec(producers: int = 2, batch: int = 1, rate: float | None = None) -> RunSpec:
    return RunSpec("fleet", producers, 1, 0, 100, batch=batch, rate=rate, run_id=1)


def assert_all_stopped(
    session: Session, processes: list[multiprocessing.process.BaseProcess]
) -> None:
    assert processes, "the session started no process"
    assert not session.processes and not session.pipes
    assert [p.name for p in processes if p.is_alive()] == []


@pytest.mark.parametrize("batch", [1, 100])
def test_a_session_measures_every_run_with_the_same_processes(batch: int) -> None:
    transport = MultiprocessingQueue()
    with Session(transport, spec(batch=batch), CTX) as session:
        first = session.run(1_000, TIMEOUT_S)
        processes = list(session.processes)
        pids = [p.pid for p in processes]
        results = [first] + [session.run(n, TIMEOUT_S) for n in (2_000, 500, 3_000)]
        assert [p.pid for p in session.processes] == pids
        assert all(p.is_alive() for p in processes)
    assert [r.records for r in results] == [2_000, 4_000, 1_000, 6_000]
    assert all(r.wall_s > 0 and r.send_s > 0 for r in results)
    assert_all_stopped(session, processes)


def test_each_latency_run_has_its_own_histogram() -> None:
    with Session(MultiprocessingQueue(), spec(producers=1, rate=20_000), CTX) as session:
        results = [session.run(n, TIMEOUT_S) for n in (200, 400)]
    counts = [hdr.decode(r.latency_hdr).get_total_count() for r in results if r.latency_hdr]
    assert counts == [200, 400]


class _FailsOnSecondRun(QueueProducer):
    def __init__(self, q: object) -> None:
        super().__init__(q)
        self.sent = 0

    def send(self, value: bytes, key: bytes) -> None:
        self.sent += 1
        if self.sent > 100:
            raise ValueError("refusing record 101")
        super().send(value, key)


class FailingQueue(MultiprocessingQueue):
    def producer(self, spec: RunSpec, index: int) -> Producer:
        return _FailsOnSecondRun(self.queue) if index == 1 else super().producer(spec, index)


def test_a_failing_child_fails_the_run_and_the_session_stops_everything() -> None:
    transport: Transport = FailingQueue()
    with Session(transport, spec(), CTX) as session:
        assert session.run(100, TIMEOUT_S).records == 200
        processes = list(session.processes)
        with pytest.raises(RunError, match=r"producer-1 failed:(.|\n)*refusing record 101"):
            session.run(100, TIMEOUT_S)
        with pytest.raises(RunError, match="an earlier run of this session failed"):
            session.run(100, TIMEOUT_S)
    assert_all_stopped(session, processes)


@pytest.fixture
def engine_transport() -> Iterator[EngineAcks1]:
    transport = EngineAcks1()
    with tempfile.TemporaryDirectory(prefix="engine-bench-test-") as workdir:
        try:
            transport.open(Path(workdir))
            yield transport
        finally:
            transport.close()


def test_engine_sessions_each_count_their_own_records(engine_transport: EngineAcks1) -> None:
    """Each workload of an engine transport gets a fresh topic, deleted after its runs,
    whose data is gone before the next workload starts."""
    data_dir = Path(engine_transport.data_dir)
    for batch, runs in ((1, (500, 1_500)), (100, (1_000, 2_000))):
        with Session(engine_transport, spec(batch=batch), CTX) as session:
            results = [session.run(n, TIMEOUT_S) for n in runs]
            assert list(data_dir.glob("broker-*/bench-*"))
        assert [r.records for r in results] == [2 * n for n in runs]
        assert not list(data_dir.glob("broker-*/bench-*"))


def test_engine_modes_share_one_daemon_until_the_last_closes() -> None:
    first, second = EngineAcks1(), EngineAcksAll()
    with tempfile.TemporaryDirectory(prefix="engine-bench-test-") as workdir:
        try:
            first.open(Path(workdir) / "a")
            second.open(Path(workdir) / "b")
            data_dir = DataDir.resolve(second.data_dir)
            assert second.data_dir == first.data_dir
            pid = data_dir.read_runtime()["pid"]
            first.close()
            assert data_dir.read_runtime()["pid"] == pid
            with Session(second, spec(batch=100), CTX) as session:
                assert session.run(500, TIMEOUT_S).records == 1_000
        finally:
            first.close()
            second.close()
        with pytest.raises(DaemonNotRunningError):
            data_dir.read_runtime()


class _Recorded(MultiprocessingQueue):
    """Appends its name and what the suite did to it to ``events``."""

    events: ClassVar[list[str]] = []
    fails_to_open: ClassVar[bool] = False

    def open(self, workdir: Path) -> None:
        self.events.append(f"open {self.name}")
        if self.fails_to_open:
            raise RuntimeError("no server here")

    def close(self) -> None:
        self.events.append(f"close {self.name}")

    def prepare(self, spec: RunSpec, ctx: Any) -> None:
        self.events.append(f"measure {self.name}")
        super().prepare(spec, ctx)


def _recorded(name: str, fails: bool = False) -> type[_Recorded]:
    return type(name, (_Recorded,), {"name": name, "fails_to_open": fails})


def test_the_suite_closes_a_transport_once_the_next_has_opened(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """So that transports may share a server (the engine modes share their daemon); a
    transport that cannot start is reported, and closed like the others."""
    names = ("one", "broken", "two")
    registry = {n: _recorded(n, fails=n == "broken") for n in names}
    monkeypatch.setattr(suite, "discover", lambda: registry)
    _Recorded.events.clear()
    settings = suite.Settings(
        quick=True, reps=1, duration_s=0.01, workloads=("sweep",), only=names,
        reference="one",
    )  # fmt: skip
    rows, _, _ = suite.run_suite(settings, io.StringIO())
    assert _Recorded.events == [
        "open one", "measure one", "measure one",
        "open broken", "close one",
        "open two", "close broken", "measure two", "measure two",
        "close two",
    ]  # fmt: skip
    assert {r.transport: r.status for r in rows} == {"one": "ok", "broken": "failed", "two": "ok"}


class _DiesAfterItsFirstWorkload(_Recorded):
    """Its server dies during the first workload: cleaning up after it fails."""

    def finish(self) -> None:
        super().finish()
        raise TimeoutError("the server does not answer")


def test_a_transport_that_breaks_fails_its_other_workloads_and_the_suite_goes_on(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A peer's server that dies mid-suite (Kafka's JVMs did once) costs its own rows only,
    not the whole run."""
    registry = {
        "dies": type("dies", (_DiesAfterItsFirstWorkload,), {"name": "dies"}),
        "two": _recorded("two"),
    }
    monkeypatch.setattr(suite, "discover", lambda: registry)
    _Recorded.events.clear()
    settings = suite.Settings(
        quick=True, reps=1, duration_s=0.01, workloads=("sweep",), only=("dies", "two"),
        reference="two",
    )  # fmt: skip
    rows, _, _ = suite.run_suite(settings, io.StringIO())
    assert _Recorded.events == [
        "open dies", "measure dies", "open two", "close dies", "measure two", "measure two",
        "close two",
    ]  # fmt: skip
    dies = [r for r in rows if r.transport == "dies"]
    assert [r.status for r in dies] == ["failed", "failed"]
    assert "could not clean up after the workload: TimeoutError" in dies[0].reason
    assert dies[1].reason.startswith("not run: dies: could not clean up")
    assert [r.status for r in rows if r.transport == "two"] == ["ok", "ok"]


def _floor_send(transport: SpinFloor, floor_spec: RunSpec, count: int) -> None:
    producer = transport.producer(floor_spec, 0)
    for seq in range(count):
        producer.send(TIMESTAMP.pack(seq) + struct.pack("<Q", 3 * seq), b"")


def test_the_spin_floor_hands_every_record_over_in_order_across_laps() -> None:
    """The floor's producer (another process) sends 2.5 laps of its array while the
    consumer falls a lap behind at first: the producer waits, nothing is overwritten."""
    floor_spec = RunSpec("latency", 1, 1, 0, 16, rate=1_000.0, run_id=1)
    transport = SpinFloor()
    transport.prepare(floor_spec, CTX)
    count = SLOTS * 5 // 2
    child = CTX.Process(target=_floor_send, args=(transport, floor_spec, count))
    child.start()
    try:
        consumer = transport.consumer(floor_spec, 0)
        ring = consumer.ring  # type: ignore[attr-defined]
        deadline = time.monotonic() + TIMEOUT_S
        while int(ring.written[0]) < SLOTS:  # the producer fills one lap, then must wait
            assert time.monotonic() < deadline, "the producer did not fill the array"
            time.sleep(0.001)
        time.sleep(0.05)  # it would overwrite unread slots meanwhile if it did not wait
        assert int(ring.written[0]) == SLOTS
        got: list[np.ndarray] = []
        received = 0
        while received < count:
            assert time.monotonic() < deadline, f"received {received} of {count}"
            for chunk in consumer.poll(0.1):
                got.append(chunk)
                received += len(chunk)
        records = np.concatenate(got)
        assert np.array_equal(records["ts_ns"], np.arange(count))
        assert np.array_equal(records["seq"], 3 * np.arange(count, dtype=np.uint64))
        assert consumer.poll(0.01) == []
    finally:
        child.join(TIMEOUT_S)
        if child.is_alive():
            child.kill()
            child.join()
    assert child.exitcode == 0


def test_the_spin_floor_measures_latency_only() -> None:
    transport = SpinFloor()
    with pytest.raises(Unsupported, match="latency floor only"):
        transport.prepare(spec(producers=1), CTX)
    with pytest.raises(Unsupported, match="producers=2"):
        transport.prepare(spec(producers=2, rate=1_000.0), CTX)
    with Session(transport, spec(producers=1, rate=20_000.0), CTX) as session:
        result = session.run(2_000, TIMEOUT_S)
    assert result.records == 2_000
    assert hdr.decode(result.latency_hdr).get_total_count() == 2_000


def test_what_did_not_run_is_one_line_per_transport_and_reason() -> None:
    fleet = suite.Workload("fleet-p1-record", "fleet", "P=1 per-record", 1, 1, 100, 1)
    sweep = suite.Workload("sweep-16384", "sweep", "16384 B batched", 1, 1, 16384, 16)
    latency = suite.Workload("latency-20000", "latency", "20k records/s", 1, 1, 100, 1, 20000.0)
    rows = [
        suite.Row(fleet, "spin-floor", "unsupported", "the latency floor only"),
        suite.Row(sweep, "spin-floor", "unsupported", "the latency floor only"),
        suite.Row(latency, "spin-floor"),
        suite.Row(sweep, "posix-mq", "unsupported", "record larger than a message"),
        suite.Row(latency, "memcopy", "unsupported", "no end-to-end latency"),
    ]
    statuses = {name: {"status": "available"} for name in ("spin-floor", "posix-mq", "memcopy")}
    assert report._notes(rows, statuses, every=False) == [
        "- **spin-floor**, P=1 per-record, 16384 B batched: unsupported: the latency floor only",
        "- **posix-mq**, 16384 B batched: unsupported: record larger than a message",
        "- **memcopy**, 20k records/s: unsupported: no end-to-end latency",
    ]


def test_the_redis_peer_moves_to_another_port_when_its_port_was_taken(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Its port is picked by binding and closing it: when another process binds it first,
    redis-server exits and the transport starts it again on another port."""
    import socket

    from bench.transports import redis_streams

    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        taken = squatter.getsockname()[1]
        picks = iter([taken])
        real = redis_streams._free_port
        monkeypatch.setattr(redis_streams, "_free_port", lambda: next(picks, None) or real())
        transport = redis_streams.RedisStreams()
        try:
            transport.open(tmp_path)
            assert transport.port != taken
            assert transport.admin.ping()
        finally:
            transport.close()
