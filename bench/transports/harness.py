"""Runs one measurement: starts producer and consumer processes, times them, stops them.

Order of events in one run::

    parent: transport.prepare(spec, ctx)
    parent: start C consumer processes; each creates its Consumer, reports "ready", polls
    parent: start P producer processes; each creates its Producer and pool, reports "ready"
    parent: set the "go" event: every producer takes its first-send time and sends
    producers: flush, report (first_send_ns, last_send_ns)
    consumers: stop once all consumers together hold P*N records; close; report last_recv_ns
    parent: set the "done" event: producers close their Producer and exit
    parent: join (terminate, then kill what is left), transport.finish()

Producers close only once every record has arrived, because closing early can lose
records in flight (a ZeroMQ PUSH socket closed and terminated right after its last send
loses some of them even with an infinite linger, measured here).

Wall time is ``max(last_recv_ns) - min(first_send_ns)``: process start-up and tear-down are
not measured. All times come from ``time.perf_counter_ns()``, which is CLOCK_MONOTONIC and
so comparable between processes on Linux.

Every child reports over its own pipe; a child that raises sends its traceback, a child
that dies silently is seen as an early end-of-file, and the parent then stops the run at
once. Nothing survives a run: children are joined, terminated or killed in ``finally``.
"""

from __future__ import annotations

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

__all__ = ["RunError", "RunResult", "run"]

#: Consumers poll with this timeout while waiting, so they notice the end of a run.
POLL_TIMEOUT_S = 0.02
#: Per-record pools hold this many distinct records (a power of two).
POOL_RECORDS = 4096
#: Batched pools hold about this many bytes.
POOL_BYTES = 8 << 20
#: Paced producers sleep until this close to the next send, then spin. Sleeping, not
#: spinning, most of the time matters: it lets helper threads (multiprocessing.Queue's
#: feeder) take the GIL, and leaves the consumer a core.
SPIN_NS = 20_000


#: A paced run whose producers sent at less than this fraction of the rate is flagged.
SUSTAINED = 0.95
#: Producers wait at most this long for the consumers before they close anyway.
CLOSE_WAIT_S = 600.0


class RunError(Exception):
    """A run failed: a child raised or died, or the run timed out."""


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


def run(transport: Transport, spec: RunSpec, ctx: BaseContext, timeout_s: float) -> RunResult:
    """Measure ``spec`` on ``transport`` (already opened). Raises RunError on failure."""
    in_process = transport.run_in_process(spec)
    if in_process is not None:
        return RunResult(
            records=in_process["records"],
            record_size=spec.record_size,
            wall_s=(in_process["last_recv_ns"] - in_process["first_send_ns"]) / 1e9,
            send_s=(in_process["last_recv_ns"] - in_process["first_send_ns"]) / 1e9,
        )
    transport.prepare(spec, ctx)
    processes: list[BaseProcess] = []
    pipes: dict[Any, str] = {}
    try:
        slots = ctx.RawArray("q", spec.consumers)
        go = ctx.Event()
        done = ctx.Event()
        deadline = time.monotonic() + timeout_s
        for i in range(spec.consumers):
            _start(
                ctx, _consumer_main, (transport, spec, i, slots), f"consumer-{i}", processes, pipes
            )
        _wait_ready(pipes, deadline)
        for i in range(spec.producers):
            args = (transport, spec, i, go, done)
            _start(ctx, _producer_main, args, f"producer-{i}", processes, pipes)
        producer_pipes = {c: n for c, n in pipes.items() if n.startswith("producer")}
        _wait_ready(producer_pipes, deadline)
        go.set()
        reports = _collect(pipes, deadline, slots, spec)
        done.set()
    finally:
        _stop(processes)
        for pipe in pipes:
            pipe.close()
        transport.finish()
    return _result(spec, reports)


def _start(
    ctx: Any,
    target: Any,
    args: tuple[Any, ...],
    name: str,
    processes: list[BaseProcess],
    pipes: dict[Any, str],
) -> None:
    reader, writer = ctx.Pipe(duplex=False)
    process = ctx.Process(target=target, args=(*args, writer), name=name, daemon=True)
    process.start()
    writer.close()
    processes.append(process)
    pipes[reader] = name


def _wait_ready(pipes: dict[Any, str], deadline: float) -> None:
    """Wait for a "ready" message on every pipe."""
    waiting = set(pipes)
    while waiting:
        ready = connection.wait(list(waiting), timeout=max(deadline - time.monotonic(), 0))
        if not ready:
            names = sorted(pipes[c] for c in waiting)
            raise RunError(f"timed out while starting: {', '.join(names)}")
        for conn in ready:
            message = _receive(conn, pipes)
            if message.get("ready"):
                waiting.discard(conn)


def _collect(
    pipes: dict[Any, str], deadline: float, slots: Any, spec: RunSpec
) -> dict[str, dict[str, Any]]:
    """Wait for the final report of every child."""
    reports: dict[str, dict[str, Any]] = {}
    waiting = set(pipes)
    while waiting:
        ready = connection.wait(list(waiting), timeout=max(deadline - time.monotonic(), 0))
        if not ready:
            received = sum(slots)
            names = sorted(pipes[c] for c in waiting)
            raise RunError(
                f"timed out: received={received} expected={spec.total_records} "
                f"waiting for {', '.join(names)}"
            )
        for conn in ready:
            reports[pipes[conn]] = _receive(conn, pipes)
            waiting.discard(conn)
    return reports


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
    transport: Transport,
    spec: RunSpec,
    index: int,
    go: Any,
    done: Any,
    pipe: connection.Connection,
) -> None:
    try:
        producer = transport.producer(spec, index)
        n = spec.records_per_producer
        if spec.batch == 1:
            pool, pool_keys = record_pool(spec.record_size, min(POOL_RECORDS, n), index)
            values = [record.tobytes() for record in pool]
            keys = [bytes(key) for key in pool_keys]
        else:
            count = max(1, min(POOL_BYTES // (spec.batch * spec.record_size), n // spec.batch))
            pool, pool_keys = record_pool(spec.record_size, count * spec.batch, index)
        pipe.send({"ready": True})
        go.wait()
        max_late_ns = 0
        first_send_ns = time.perf_counter_ns()
        if spec.rate is not None:
            max_late_ns = _send_paced(producer, spec, values[0], keys[0], first_send_ns)
        elif spec.batch == 1:
            send = producer.send
            size = len(values)
            for i in range(n):
                j = i % size
                send(values[j], keys[j])
        else:
            batches = [
                (pool[k : k + spec.batch], pool_keys[k : k + spec.batch])
                for k in range(0, len(pool), spec.batch)
            ]
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
        done.wait(CLOSE_WAIT_S)
        producer.close()
    except BaseException:  # noqa: BLE001 - the child reports any failure to the parent
        pipe.send({"error": traceback.format_exc()})
    finally:
        pipe.close()


def _send_paced(producer: Any, spec: RunSpec, template: bytes, key: bytes, start_ns: int) -> int:
    """Send at ``spec.rate / spec.producers`` records/s, each stamped with its send time.

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
    for i in range(spec.records_per_producer):
        due = start_ns + int(i * interval_ns)
        now = clock()
        while now < due:
            if due - now > SPIN_NS:
                time.sleep((due - now - SPIN_NS) / 1e9)
            now = clock()
        max_late_ns = max(max_late_ns, now - due)
        pack_into(record, 0, clock())
        send(bytes(record), key)
        push()
    return max_late_ns


def _consumer_main(
    transport: Transport, spec: RunSpec, index: int, slots: Any, pipe: connection.Connection
) -> None:
    try:
        consumer = transport.consumer(spec, index)
        total = spec.total_records
        latency = spec.rate is not None
        latencies = np.empty(total if latency else 0, dtype=np.int64)
        pipe.send({"ready": True})
        poll = consumer.poll
        clock = time.perf_counter_ns
        unpack_from = TIMESTAMP.unpack_from
        alone = spec.consumers == 1
        count = 0
        last_recv_ns = 0
        while True:
            got = poll(POLL_TIMEOUT_S)
            if got:
                now = clock()
                if isinstance(got[0], np.ndarray):
                    n = 0
                    for array in got:
                        if latency:
                            latencies[count + n : count + n + len(array)] = now - array["ts_ns"]
                        n += len(array)
                else:
                    n = len(got)
                    if latency:
                        for k, record in enumerate(got):
                            latencies[count + k] = now - unpack_from(record)[0]
                count += n
                last_recv_ns = now
                if alone:
                    if count >= total:
                        break
                    continue
            slots[index] = count  # after every idle poll, and after every poll if not alone
            if not alone and sum(slots) >= total:
                break
        consumer.close()
        report: dict[str, Any] = {"count": count, "last_recv_ns": last_recv_ns}
        if latency:
            report["latency_hdr"] = hdr.encode(hdr.from_latencies(latencies[:count]))
        pipe.send(report)
    except BaseException:  # noqa: BLE001 - the child reports any failure to the parent
        pipe.send({"error": traceback.format_exc()})
    finally:
        pipe.close()
