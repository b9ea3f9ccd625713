"""Measures runs: starts producer and consumer processes, times them, stops them.

A ``Session`` holds the processes of one workload (one transport, one record size, one
process count) for all its runs: the warm-ups and the measured runs that follow. Order
of events::

    parent: transport.prepare(spec, ctx)                              once per session
    parent: start C consumer processes; each creates its Consumer, reports "ready"
            start P producer processes meanwhile; each makes its record pool
    parent: once every consumer is ready, tell the producers to connect; each creates
            its Producer, reports "ready"
    every run:
      parent: tell the consumers how many records this run brings; they report "armed"
      parent: tell every producer to send N records: each takes its first-send time, sends
      producers: flush, report (first_send_ns, last_send_ns)
      consumers: stop counting once all consumers together hold the run's P*N records;
                 report this run's count and last_recv_ns, then wait for the next run
    parent: tell every child to stop: producers close their Producer, consumers their
            Consumer; join (terminate, then kill what is left), transport.finish()

The runs of a session are back to back on the same queue, socket or topic, as in a
system that has been running for a while; each starts once every record of the one
before has arrived. Producers close only once every record has arrived, because closing
early can lose records in flight (a ZeroMQ PUSH socket closed and terminated right after
its last send loses some of them even with an infinite linger, measured here).

Wall time is ``max(last_recv_ns) - min(first_send_ns)`` per run: process start-up and
tear-down are not measured. All times come from ``time.perf_counter_ns()``, which is
CLOCK_MONOTONIC and so comparable between processes on Linux.

Every child talks to the parent over its own pipe; a child that raises sends its
traceback, a child that dies silently is seen as an early end-of-file, and the parent
then fails the run at once. Nothing survives a session: ``close`` (always called, from a
``with`` block) joins, terminates or kills the children.
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
import traceback
from dataclasses import dataclass, field
from multiprocessing import connection
from multiprocessing.context import BaseContext
from multiprocessing.process import BaseProcess
from typing import Any

import numpy as np

from bench import hdr
from bench.transports.base import RunSpec, Transport
from bench.workload import TIMESTAMP, record_pool

__all__ = ["RunError", "RunResult", "Session", "run"]

#: Consumers poll with this timeout while waiting, so they notice the end of a run.
POLL_TIMEOUT_S = 0.02
#: Per-record pools hold this many distinct records (a power of two).
POOL_RECORDS = 4096
#: Batched pools hold about this many bytes.
POOL_BYTES = 8 << 20
#: Paced producers sleep until this close to the next send, then spin in sleep(0)
#: calls. Sleeping most of the time leaves the consumer a core; both let helper threads
#: (multiprocessing.Queue's feeder, the engine's sender) take the GIL.
SPIN_NS = 20_000


#: A paced run whose producers sent at less than this fraction of the rate is flagged.
SUSTAINED = 0.95


class RunError(Exception):
    """A run failed: a child raised or died, or the run timed out."""


class TransportBroken(RunError):
    """The transport could not undo a workload's ``prepare`` (its server died, say): its
    later workloads are not run."""


@dataclass
class RunResult:
    """What one run measured. Rates are over the wall time (first send to last receive)."""

    records: int
    record_size: int
    wall_s: float
    send_s: float
    latency_hdr: str | None = None
    #: Latency runs: how far the producers fell behind their schedule at worst.
    max_late_s: float = 0.0
    notes: list[str] = field(default_factory=list)

    @property
    def records_per_s(self) -> float:
        return self.records / self.wall_s if self.wall_s > 0 else 0.0

    @property
    def mb_per_s(self) -> float:
        return self.records_per_s * self.record_size / 1e6


class Session:
    """The producer and consumer processes of one workload, kept for several runs.

    ``transport.prepare`` is called once, the children are started at the first run and
    stopped by ``close`` (a ``with`` block closes the session, also after failures).
    ``spec.records_per_producer`` is not used: each run says how many records it sends.
    A run that fails leaves the session unusable (the next run raises RunError at once).
    """

    def __init__(self, transport: Transport, spec: RunSpec, ctx: BaseContext) -> None:
        self.transport = transport
        self.spec = spec
        self.ctx: Any = ctx  # a multiprocessing context (BaseContext has no Process type)
        self.processes: list[BaseProcess] = []
        self.pipes: dict[Any, str] = {}
        self.slots: Any = None
        self.received = 0  # records the consumers received in all runs so far
        self.prepared = False
        self.failed: str | None = None

    def __enter__(self) -> Session:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def run(self, records_per_producer: int, timeout_s: float) -> RunResult:
        """One measured run of ``records_per_producer`` records from every producer."""
        spec = dataclasses.replace(self.spec, records_per_producer=records_per_producer)
        in_process = self.transport.run_in_process(spec)
        if in_process is not None:
            return RunResult(
                records=in_process["records"],
                record_size=spec.record_size,
                wall_s=(in_process["last_recv_ns"] - in_process["first_send_ns"]) / 1e9,
                send_s=(in_process["last_recv_ns"] - in_process["first_send_ns"]) / 1e9,
            )
        if self.failed is not None:
            raise RunError(f"an earlier run of this session failed: {self.failed}")
        try:
            deadline = time.monotonic() + timeout_s
            if not self.processes:
                self._start(deadline)
            consumers = self._children("consumer")
            self.received += spec.total_records
            for conn in consumers:
                conn.send({"until": self.received, "records": spec.total_records})
            self._wait_for(consumers, "armed", deadline)
            for conn in self._children("producer"):
                conn.send({"records": records_per_producer})
            return _result(spec, self._collect(deadline, spec))
        except BaseException as error:
            self.failed = _first_line(error)
            raise

    def close(self) -> None:
        """Stop the children (they close their clients) and undo ``prepare``."""
        try:
            for conn in self.pipes:
                with contextlib.suppress(OSError, ValueError):
                    conn.send({"stop": True})
            _stop(self.processes)
        finally:
            for conn in self.pipes:
                conn.close()
            self.pipes.clear()
            self.processes.clear()
            if self.prepared:
                self.prepared = False
                try:
                    self.transport.finish()
                except Exception as error:
                    raise TransportBroken(
                        f"{self.transport.name}: could not clean up after the workload: "
                        f"{type(error).__name__}: {error}"
                    ) from error

    def _start(self, deadline: float) -> None:
        spec = self.spec
        self.transport.prepare(spec, self.ctx)
        self.prepared = True
        self.slots = self.ctx.RawArray("q", spec.consumers)
        for i in range(spec.consumers):
            self._spawn(_consumer_main, (self.transport, spec, i, self.slots), f"consumer-{i}")
        # Producers make their pools while the consumers start; they create their
        # Producer only once every consumer is ready (the transports rely on it).
        for i in range(spec.producers):
            self._spawn(_producer_main, (self.transport, spec, i), f"producer-{i}")
        self._wait_for(self._children("consumer"), "ready", deadline)
        for conn in self._children("producer"):
            conn.send({"connect": True})
        self._wait_for(self._children("producer"), "ready", deadline)

    def _spawn(self, target: Any, args: tuple[Any, ...], name: str) -> None:
        parent_end, child_end = self.ctx.Pipe()
        process = self.ctx.Process(target=target, args=(*args, child_end), name=name, daemon=True)
        process.start()
        child_end.close()
        self.processes.append(process)
        self.pipes[parent_end] = name

    def _children(self, kind: str) -> list[Any]:
        return [conn for conn, name in self.pipes.items() if name.startswith(kind)]

    def _wait_for(self, conns: list[Any], what: str, deadline: float) -> None:
        """Wait for a ``what`` message from every one of ``conns``."""
        waiting = set(conns)
        while waiting:
            ready = connection.wait(list(waiting), timeout=max(deadline - time.monotonic(), 0))
            if not ready:
                names = sorted(self.pipes[c] for c in waiting)
                raise RunError(f"timed out waiting for {what}: {', '.join(names)}")
            for conn in ready:
                if _receive(conn, self.pipes).get(what):
                    waiting.discard(conn)

    def _collect(self, deadline: float, spec: RunSpec) -> dict[str, dict[str, Any]]:
        """Wait for the report of every child on this run."""
        reports: dict[str, dict[str, Any]] = {}
        waiting = set(self.pipes)
        while waiting:
            ready = connection.wait(list(waiting), timeout=max(deadline - time.monotonic(), 0))
            if not ready:
                received = sum(self.slots) - (self.received - spec.total_records)
                names = sorted(self.pipes[c] for c in waiting)
                raise RunError(
                    f"timed out: received={received} expected={spec.total_records} "
                    f"waiting for {', '.join(names)}"
                )
            for conn in ready:
                reports[self.pipes[conn]] = _receive(conn, self.pipes)
                waiting.discard(conn)
        return reports


def run(transport: Transport, spec: RunSpec, ctx: BaseContext, timeout_s: float) -> RunResult:
    """Measure ``spec`` on ``transport`` (already opened) in a session of one run."""
    with Session(transport, spec, ctx) as session:
        return session.run(spec.records_per_producer, timeout_s)


def _first_line(error: BaseException) -> str:
    text = str(error).strip() or type(error).__name__
    return text.splitlines()[0]


def _receive(conn: Any, pipes: dict[Any, str]) -> Any:
    try:
        message = conn.recv()
    except EOFError:
        raise RunError(f"{pipes[conn]} exited without reporting") from None
    if "error" in message:
        raise RunError(f"{pipes[conn]} failed:\n{message['error']}")
    return message


def _stop(processes: list[BaseProcess]) -> None:
    deadline = time.monotonic() + 2.0
    for process in processes:
        process.join(max(deadline - time.monotonic(), 0.01))
    for process in processes:
        if process.is_alive():
            process.terminate()
            process.join(1.0)
        if process.is_alive():
            process.kill()
            process.join(1.0)


def _result(spec: RunSpec, reports: dict[str, dict[str, Any]]) -> RunResult:
    producers = [r for n, r in reports.items() if n.startswith("producer")]
    consumers = [r for n, r in reports.items() if n.startswith("consumer")]
    received = sum(r["count"] for r in consumers)
    if received != spec.total_records:
        raise RunError(f"record count mismatch: received={received} sent={spec.total_records}")
    first_send = min(r["first_send_ns"] for r in producers)
    last_send = max(r["last_send_ns"] for r in producers)
    last_recv = max(r["last_recv_ns"] for r in consumers)
    result = RunResult(
        records=received,
        record_size=spec.record_size,
        wall_s=(last_recv - first_send) / 1e9,
        send_s=(last_send - first_send) / 1e9,
    )
    if spec.rate is not None:
        result.latency_hdr = hdr.encode(hdr.merge(r["latency_hdr"] for r in consumers))
        result.max_late_s = max(r["max_late_ns"] for r in producers) / 1e9
        sent_per_s = received / result.send_s if result.send_s > 0 else 0.0
        if sent_per_s < SUSTAINED * spec.rate:
            result.notes.append(
                f"rate not sustained: sent {sent_per_s:,.0f}/s of {spec.rate:,.0f}/s"
            )
    return result


# --- child processes -----------------------------------------------------------------------


def _producer_main(
    transport: Transport, spec: RunSpec, index: int, pipe: connection.Connection
) -> None:
    """Make the record pool, then (told to connect) the producer; send one run per command."""
    try:
        if spec.batch == 1:
            pool, pool_keys = record_pool(spec.record_size, POOL_RECORDS, index)
            values = [record.tobytes() for record in pool]
            keys = [bytes(key) for key in pool_keys]
        else:
            count = max(1, POOL_BYTES // (spec.batch * spec.record_size))
            pool, pool_keys = record_pool(spec.record_size, count * spec.batch, index)
            batches = [
                (pool[k : k + spec.batch], pool_keys[k : k + spec.batch])
                for k in range(0, len(pool), spec.batch)
            ]
        if pipe.recv().get("stop"):
            return
        producer = transport.producer(spec, index)
        pipe.send({"ready": True})
        while True:
            command = pipe.recv()
            if command.get("stop"):
                break
            n = command["records"]
            max_late_ns = 0
            first_send_ns = time.perf_counter_ns()
            if spec.rate is not None:
                max_late_ns = _send_paced(producer, spec, n, values[0], keys[0], first_send_ns)
            elif spec.batch == 1:
                send = producer.send
                size = len(values)
                for i in range(n):
                    j = i % size
                    send(values[j], keys[j])
            else:
                send_batch = producer.send_batch
                for i in range(n // spec.batch):
                    batch, batch_keys = batches[i % len(batches)]
                    send_batch(batch, batch_keys)
            producer.flush()
            last_send_ns = time.perf_counter_ns()
            pipe.send(
                {
                    "first_send_ns": first_send_ns,
                    "last_send_ns": last_send_ns,
                    "max_late_ns": max_late_ns,
                }
            )
        producer.close()
    except BaseException:  # noqa: BLE001 - the child reports any failure to the parent
        with contextlib.suppress(OSError):
            pipe.send({"error": traceback.format_exc()})
    finally:
        pipe.close()


def _send_paced(
    producer: Any, spec: RunSpec, n: int, template: bytes, key: bytes, start_ns: int
) -> int:
    """Send ``n`` records at ``spec.rate / spec.producers`` records/s, each stamped with
    its send time.

    The stamp is the time of the send call, not the scheduled time; the largest lag behind
    the schedule is returned so that a producer that could not keep up is reported.
    """
    interval_ns = 1e9 * spec.producers / (spec.rate or 1.0)
    record = bytearray(template)
    pack_into = TIMESTAMP.pack_into
    send = producer.send
    push = producer.push
    clock = time.perf_counter_ns
    max_late_ns = 0
    for i in range(n):
        due = start_ns + int(i * interval_ns)
        now = clock()
        while now < due:
            # Waiting, the GIL is let go (sleep(0) too), as an application waiting for
            # its next reading lets it go: a spin that held it starved the producer's
            # own threads (acks="all"'s sender: a p50 of 1 s at 100,000 records/s).
            time.sleep(max(due - now - SPIN_NS, 0) / 1e9)
            now = clock()
        max_late_ns = max(max_late_ns, now - due)
        pack_into(record, 0, clock())
        send(bytes(record), key)
        push()
    return max_late_ns


def _consumer_main(
    transport: Transport, spec: RunSpec, index: int, slots: Any, pipe: connection.Connection
) -> None:
    """Make the consumer, then count one run per command: until the consumers together
    hold ``until`` records since the start of the session."""
    try:
        consumer = transport.consumer(spec, index)
        pipe.send({"ready": True})
        count = 0
        while True:
            command = pipe.recv()
            if command.get("stop"):
                break
            start = count
            latencies = np.empty(command["records"] if spec.rate is not None else 0, np.int64)
            pipe.send({"armed": True})
            count, last_recv_ns = _receive_run(consumer, spec, index, slots, count,
                                               command["until"], latencies)  # fmt: skip
            report: dict[str, Any] = {"count": count - start, "last_recv_ns": last_recv_ns}
            if spec.rate is not None:
                report["latency_hdr"] = hdr.encode(hdr.from_latencies(latencies[: count - start]))
            pipe.send(report)
        consumer.close()
    except BaseException:  # noqa: BLE001 - the child reports any failure to the parent
        with contextlib.suppress(OSError):
            pipe.send({"error": traceback.format_exc()})
    finally:
        pipe.close()


def _receive_run(
    consumer: Any,
    spec: RunSpec,
    index: int,
    slots: Any,
    count: int,
    until: int,
    latencies: np.ndarray,
) -> tuple[int, int]:
    """Poll until the consumers hold ``until`` records in all; return this consumer's
    count and the time of its last receipt (0 if it received nothing in this run)."""
    start = count
    latency = spec.rate is not None
    poll = consumer.poll
    clock = time.perf_counter_ns
    unpack_from = TIMESTAMP.unpack_from
    alone = spec.consumers == 1
    last_recv_ns = 0
    while True:
        got = poll(POLL_TIMEOUT_S)
        if got:
            now = clock()
            k = count - start
            if isinstance(got[0], np.ndarray):
                n = 0
                for array in got:
                    if latency:
                        latencies[k + n : k + n + len(array)] = now - array["ts_ns"]
                    n += len(array)
            else:
                n = len(got)
                if latency:
                    for j, record in enumerate(got):
                        latencies[k + j] = now - unpack_from(record)[0]
            count += n
            last_recv_ns = now
            if alone:
                if count >= until:
                    break
                continue
        slots[index] = count  # after every idle poll, and after every poll if not alone
        if not alone and sum(slots) >= until:
            break
    slots[index] = count
    return count, last_recv_ns
