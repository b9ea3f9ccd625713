"""The suite's workloads as pytest-benchmark cases: ``pytest bench/ --benchmark-only``.

Without ``--benchmark-only`` (the test suite: ``scripts/test``, CI) every case runs once
on a small amount of work, as a check that each transport delivers every record of
every workload; the timing is not looked at then.

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


#: The test suite's check: this share of the benchmark's work, one round.
CHECK_SHARE = 0.05


def records_per_producer(workload: Workload, share: float = 1.0) -> int:
    """The same amount of work for every transport (``share`` of it for a check)."""
    if workload.rate is not None:
        total = int(workload.rate * LATENCY_SECONDS * share)
    elif workload.batch == 1:
        total = int(PER_RECORD_RECORDS * share)
    else:
        total = int(BATCHED_BYTES * share) // workload.record_size
    per_producer = total // workload.producers
    return max(per_producer // workload.batch, 1) * workload.batch


@pytest.mark.parametrize("bench_transport", list(TRANSPORTS), indirect=True)
@pytest.mark.parametrize("workload", WORKLOADS, ids=[w.key for w in WORKLOADS])
def test_peer(
    benchmark: Any,
    bench_transport: Transport,
    workload: Workload,
    bench_context: BaseContext,
    request: pytest.FixtureRequest,
) -> None:
    if workload.kind == "latency" and not bench_transport.supports_latency:
        pytest.skip(f"{bench_transport.name}: no end-to-end latency")
    measuring = bool(request.config.getoption("benchmark_only"))
    checked = bench_transport.checked
    if not measuring and checked is not None and workload.key not in checked:
        pytest.skip(f"{bench_transport.name}: the check runs {', '.join(checked)} only")
    rounds = ROUNDS if measuring else 1
    per_producer = records_per_producer(workload, 1.0 if measuring else CHECK_SHARE)
    results: list[RunResult] = []
    with Session(bench_transport, workload.spec(per_producer, next(_run_ids)), bench_context) as s:

        def once() -> None:
            results.append(s.run(per_producer, TIMEOUT_S))

        try:
            once()  # warm-up, and finds out whether the workload is supported
        except Unsupported as error:
            pytest.skip(f"{bench_transport.name}: {error}")
        results.clear()
        benchmark.pedantic(once, rounds=rounds, iterations=1)
    assert len(results) == rounds
    assert all(r.records == workload.producers * per_producer for r in results)
    benchmark.extra_info["transport"] = bench_transport.name
    benchmark.extra_info["records_per_run"] = workload.producers * per_producer
    benchmark.extra_info["records_per_s"] = statistics.median(r.records_per_s for r in results)
    benchmark.extra_info["mb_per_s"] = statistics.median(r.mb_per_s for r in results)
    if workload.rate is not None:
        merged = hdr.merge(r.latency_hdr for r in results if r.latency_hdr)
        benchmark.extra_info["latency_us"] = hdr.percentiles_us(merged)
