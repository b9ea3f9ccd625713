"""The suite's workloads as pytest-benchmark cases: ``pytest bench/ --benchmark-only``.

Every transport runs every workload of ``python bench/suite.py --quick`` with the same
number of records, so that pytest-benchmark's times compare transports on equal work.
As in the suite, one session (bench.transports.harness.Session) holds a case's producer
and consumer processes: a warm-up run, then pytest-benchmark's rounds, each one run
from the first send to the last receipt plus the parent's hand-off to the children
(process start-up and tear-down are not in it). The figures the suite reports (records/s
and MB/s from the first send to the last receive, latency percentiles) are in each
case's ``extra_info`` (``--benchmark-json`` writes them out).
"""

from __future__ import annotations

import itertools
import statistics
from multiprocessing.context import BaseContext
from typing import Any

import pytest

from bench import hdr
from bench.suite import Settings, Workload, plan
from bench.transports.base import Transport, Unsupported
from bench.transports.harness import RunResult, Session

from .conftest import TRANSPORTS

WORKLOADS = plan(Settings(quick=True))
ROUNDS = 3
#: Records per run: per-record sends, batched sends (also the byte budget of the sweep).
PER_RECORD_RECORDS = 20_000
BATCHED_BYTES = 50_000_000
LATENCY_SECONDS = 0.25
TIMEOUT_S = 120.0

_run_ids = itertools.count(1_000_000)


def records_per_producer(workload: Workload) -> int:
    """The same amount of work for every transport."""
    if workload.rate is not None:
        total = int(workload.rate * LATENCY_SECONDS)
    elif workload.batch == 1:
        total = PER_RECORD_RECORDS
    else:
        total = BATCHED_BYTES // workload.record_size
    per_producer = total // workload.producers
    return max(per_producer // workload.batch, 1) * workload.batch


@pytest.mark.parametrize("bench_transport", list(TRANSPORTS), indirect=True)
@pytest.mark.parametrize("workload", WORKLOADS, ids=[w.key for w in WORKLOADS])
def test_peer(
    benchmark: Any, bench_transport: Transport, workload: Workload, bench_context: BaseContext
) -> None:
    if workload.kind == "latency" and not bench_transport.supports_latency:
        pytest.skip(f"{bench_transport.name}: no end-to-end latency")
    per_producer = records_per_producer(workload)
    results: list[RunResult] = []
    with Session(bench_transport, workload.spec(per_producer, next(_run_ids)), bench_context) as s:

        def once() -> None:
            results.append(s.run(per_producer, TIMEOUT_S))

        try:
            once()  # warm-up, and finds out whether the workload is supported
        except Unsupported as error:
            pytest.skip(f"{bench_transport.name}: {error}")
        results.clear()
        benchmark.pedantic(once, rounds=ROUNDS, iterations=1)
    assert all(r.records == workload.producers * per_producer for r in results)
    benchmark.extra_info["transport"] = bench_transport.name
    benchmark.extra_info["records_per_run"] = workload.producers * per_producer
    benchmark.extra_info["records_per_s"] = statistics.median(r.records_per_s for r in results)
    benchmark.extra_info["mb_per_s"] = statistics.median(r.mb_per_s for r in results)
    if workload.rate is not None:
        merged = hdr.merge(r.latency_hdr for r in results if r.latency_hdr)
        benchmark.extra_info["latency_us"] = hdr.percentiles_us(merged)
